//! Talking to the other tabs of this browser (same origin), so that they
//! share one connection instead of holding one each (see [`super::events`]
//! and the chat's HTTP fallback in [`super::chat`]): a `BroadcastChannel` of
//! typed messages, and Web Locks to decide which tab holds a connection.

use std::marker::PhantomData;

use futures::channel::{mpsc, oneshot};
use js_sys::{Function, Promise, Reflect};
use leptos::prelude::window;
use serde::de::DeserializeOwned;
use serde::Serialize;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{BroadcastChannel, MessageEvent};

/// This tab's end of a channel between the tabs of the browser.
pub struct Channel<T> {
    /// The channel.
    channel: BroadcastChannel,
    /// Keeps its listener alive.
    _listener: Closure<dyn FnMut(MessageEvent)>,
    /// What goes over it.
    _kind: PhantomData<T>,
}

impl<T: Serialize + DeserializeOwned + 'static> Channel<T> {
    /// Opens the channel `name`, with what the other tabs post to it;
    /// `None` where the browser has no `BroadcastChannel`.
    pub fn open(name: &str) -> Option<(Channel<T>, mpsc::UnboundedReceiver<T>)> {
        let channel = BroadcastChannel::new(name).ok()?;
        let (tx, rx) = mpsc::unbounded();
        let listener = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
            // Whatever does not read as a T (another version of the page)
            // is not for this tab.
            if let Some(message) = e
                .data()
                .as_string()
                .and_then(|text| serde_json::from_str::<T>(&text).ok())
            {
                let _ = tx.unbounded_send(message);
            }
        });
        channel.set_onmessage(Some(listener.as_ref().unchecked_ref()));
        let channel = Channel {
            channel,
            _listener: listener,
            _kind: PhantomData,
        };
        Some((channel, rx))
    }

    /// Tells the other tabs (not this one).
    pub fn post(&self, message: &T) {
        if let Ok(text) = serde_json::to_string(message) {
            let _ = self.channel.post_message(&JsValue::from_str(&text));
        }
    }
}

impl<T> Drop for Channel<T> {
    fn drop(&mut self) {
        self.channel.set_onmessage(None);
        self.channel.close();
    }
}

/// A random id of `words` × 32 bits, in hex: a tab's, or a message's
/// `client_id`.
pub fn random_id(words: usize) -> String {
    (0..words)
        .map(|_| {
            format!(
                "{:08x}",
                (js_sys::Math::random() * f64::from(u32::MAX)) as u32
            )
        })
        .collect()
}

/// A random id for this tab's part in a shared connection.
pub fn tab_id() -> String {
    random_id(2)
}

/// The browser's LockManager, if it has one.
pub fn locks() -> Option<JsValue> {
    let navigator = window().navigator();
    let locks = Reflect::get(&navigator, &JsValue::from_str("locks")).ok()?;
    (!locks.is_undefined() && !locks.is_null()).then_some(locks)
}

/// How to ask for a lock.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// Wait in line for it.
    Wait,
    /// Take it from its holder at once.
    Steal,
    /// Take it only if nobody holds it (or waits for it) now.
    IfFree,
}

/// One request for a lock.
pub struct Turn {
    /// Resolves (with the lock's release) once this tab holds it; cancelled
    /// if it was asked [`Ask::IfFree`] and was not free.
    pub granted: oneshot::Receiver<Release>,
    /// Resolves if the lock is taken from this tab.
    pub lost: oneshot::Receiver<()>,
}

/// Asks for the lock `name`; `None` where the browser has no Web Locks.
pub fn request_lock(name: &str, ask: Ask) -> Option<Turn> {
    let locks = locks()?;
    let request: Function = Reflect::get(&locks, &JsValue::from_str("request"))
        .ok()?
        .dyn_into()
        .ok()?;
    let (tx, granted) = oneshot::channel::<Release>();
    let callback = Closure::once_into_js(move |lock: JsValue| -> Promise {
        if lock.is_null() {
            // Not free (`ifAvailable`): dropping `tx` says so.
            return Promise::resolve(&JsValue::UNDEFINED);
        }
        let mut tx = Some(tx);
        Promise::new(&mut |resolve, _reject| {
            // If nobody waits any more (the page moved on), the Release
            // comes back and is dropped at once: the lock goes.
            if let Some(tx) = tx.take() {
                let _ = tx.send(Release(resolve));
            }
        })
    });
    let options = js_sys::Object::new();
    let option = match ask {
        Ask::Wait => None,
        Ask::Steal => Some("steal"),
        Ask::IfFree => Some("ifAvailable"),
    };
    if let Some(option) = option {
        Reflect::set(&options, &JsValue::from_str(option), &JsValue::TRUE).ok()?;
    }
    let done = request
        .call3(&locks, &JsValue::from_str(name), &options, &callback)
        .ok()?;
    // The request's promise fails when the lock is stolen.
    let (tx, lost) = oneshot::channel::<()>();
    let on_lost = Closure::once_into_js(move |_error: JsValue| {
        let _ = tx.send(());
    });
    let catch: Function = Reflect::get(&done, &JsValue::from_str("catch"))
        .ok()?
        .dyn_into()
        .ok()?;
    catch.call1(&done, &on_lost).ok()?;
    Some(Turn { granted, lost })
}

/// A held lock: released when dropped (a tab that closes releases it
/// anyway).
pub struct Release(Function);

impl Drop for Release {
    fn drop(&mut self) {
        let _ = self.0.call0(&JsValue::UNDEFINED);
    }
}
