//! Talking to the other tabs of this browser (same origin): a
//! `BroadcastChannel` of typed messages, which tabs use to share one
//! connection instead of holding one each (see [`super::events`] and the
//! chat's HTTP fallback in [`super::chat`]).

use std::marker::PhantomData;

use futures::channel::mpsc;
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

/// A random id for this tab's part in a shared connection.
pub fn tab_id() -> String {
    let part = || (js_sys::Math::random() * f64::from(u32::MAX)) as u32;
    format!("{:08x}{:08x}", part(), part())
}
