//! A server-sent event stream that keeps itself connected (the feed, the
//! dashboard's figures), on gloo-net's `EventSource`.
//!
//! The browser's EventSource retries by itself, without a countdown and
//! without caring whether the network is back; so when a stream drops, this
//! closes it and reconnects on the common schedule instead, asking `url()`
//! again so that a resuming stream can say where it left off.
//!
//! [`follow_shared`] shares one stream among all the tabs of a browser: over
//! HTTP/1.1 a browser opens at most six connections to a host, and a stream
//! per tab would leave the seventh tab unable to load at all. One tab holds
//! the stream (the holder of a Web Lock named for it) and relays what it
//! receives on a `BroadcastChannel`; when it closes, the lock passes to
//! another tab, which opens the stream from its own last event id, so no
//! event is lost (and the pages drop any they already have).

use leptos::prelude::*;

use super::{ConnState, Running};

/// An event as it arrived.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Received {
    /// The `data:` of the event.
    pub data: String,
    /// Its `id:` (or the last one seen, as the browser reports it).
    pub last_event_id: String,
}

/// Follows the stream at `url()` until stopped, handing every event to
/// `on_event` and keeping `state` up to date. On the server: does nothing.
pub fn follow(
    url: impl Fn() -> String + 'static,
    state: RwSignal<ConnState>,
    on_event: impl FnMut(Received) + 'static,
) -> Running {
    #[cfg(feature = "hydrate")]
    {
        let mut on_event = on_event;
        Running::spawn(async move {
            browser::run(&url, &|s| state.set(s), &mut on_event).await;
        })
    }
    #[cfg(not(feature = "hydrate"))]
    {
        let _ = (url, state, on_event);
        Running::inert()
    }
}

/// Like [`follow`], with one connection for every tab of the browser that
/// follows `topic` (where the browser has Web Locks; else a connection of
/// this tab's own).
pub fn follow_shared(
    topic: &'static str,
    url: impl Fn() -> String + 'static,
    state: RwSignal<ConnState>,
    on_event: impl FnMut(Received) + 'static,
) -> Running {
    #[cfg(feature = "hydrate")]
    {
        match shared::Tabs::join(topic) {
            Some(tabs) => Running::spawn(tabs.run(url, state, on_event)),
            None => follow(url, state, on_event),
        }
    }
    #[cfg(not(feature = "hydrate"))]
    {
        let _ = topic;
        follow(url, state, on_event)
    }
}

#[cfg(feature = "hydrate")]
mod browser {
    use std::time::Duration;

    use futures::{FutureExt, StreamExt};
    use gloo_net::eventsource::futures::EventSource;
    use gloo_net::eventsource::State;

    use gloo_timers::future::IntervalStream;

    use super::super::retry::{Backoff, Wakeups, CONNECT_TIMEOUT};
    use super::{ConnState, Received};

    /// How often the stream's state is looked at (gloo-net reports an
    /// EventSource's errors only once the browser has given up).
    const LOOK: Duration = Duration::from_millis(250);

    /// Follows the stream for ever (until the future is dropped).
    pub async fn run(
        url: &dyn Fn() -> String,
        report: &dyn Fn(ConnState),
        on_event: &mut dyn FnMut(Received),
    ) {
        let mut backoff = Backoff::default();
        let mut wake = Wakeups::new();
        loop {
            if let Ok(mut source) = EventSource::new(&url()) {
                if let Ok(mut events) = source.subscribe("message") {
                    let mut waited = Duration::ZERO;
                    let mut opened = false;
                    // One timer for the stream's life (one per turn of the
                    // loop would restart with every event).
                    let mut look = IntervalStream::new(LOOK.as_millis() as u32).fuse();
                    loop {
                        futures::select! {
                            event = events.next().fuse() => match event {
                                Some(Ok((_, event))) => {
                                    if !opened {
                                        opened = true;
                                        backoff.reset();
                                        report(ConnState::Live);
                                    }
                                    on_event(Received {
                                        data: event.data().as_string().unwrap_or_default(),
                                        last_event_id: event.last_event_id(),
                                    });
                                }
                                // The browser gave up (e.g. an HTTP error).
                                Some(Err(_)) | None => break,
                            },
                            _ = wake.went_offline().fuse() => break,
                            _ = look.next() => match source.state() {
                                State::Open if !opened => {
                                    opened = true;
                                    backoff.reset();
                                    report(ConnState::Live);
                                }
                                State::Open => {}
                                // Dropped: reconnect on our schedule, not the browser's.
                                State::Connecting if opened => break,
                                State::Connecting => {
                                    waited += LOOK;
                                    if waited >= CONNECT_TIMEOUT {
                                        break;
                                    }
                                }
                                State::Closed => break,
                            },
                        }
                    }
                }
                source.close();
            }
            backoff.wait(report, &mut wake).await;
        }
    }
}

#[cfg(feature = "hydrate")]
mod shared {
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::rc::Rc;

    use futures::channel::{mpsc, oneshot};
    use futures::{FutureExt, StreamExt};
    use js_sys::{Function, Promise, Reflect};
    use leptos::prelude::*;
    use wasm_bindgen::closure::Closure;
    use wasm_bindgen::{JsCast, JsValue};
    use web_sys::{BroadcastChannel, MessageEvent};

    use super::{browser, ConnState, Received};
    use crate::protocol::LAST_EVENT_ID_PARAM;

    /// Events the holder keeps to replay to a tab that just arrived.
    const REPLAY: usize = 64;

    /// What tabs tell each other about one topic.
    #[derive(serde::Serialize, serde::Deserialize)]
    enum Relay {
        /// An event, from the holder.
        Event(Received),
        /// The holder's connection state.
        State(ConnState),
        /// A tab arrived and has seen events up to this id: the holder
        /// answers with its state and the events after it.
        Hello(Option<u64>),
    }

    /// This tab's end of the channel between the tabs following one topic.
    struct Channel {
        /// The channel.
        channel: BroadcastChannel,
        /// Keeps its listener alive.
        _listener: Closure<dyn FnMut(MessageEvent)>,
    }

    impl Channel {
        fn post(&self, relay: &Relay) {
            if let Ok(text) = serde_json::to_string(relay) {
                let _ = self.channel.post_message(&JsValue::from_str(&text));
            }
        }
    }

    impl Drop for Channel {
        fn drop(&mut self) {
            self.channel.set_onmessage(None);
            self.channel.close();
        }
    }

    /// This tab's membership of the tabs following one topic.
    pub struct Tabs {
        /// The Web Lock's name (also the channel's).
        lock: String,
        /// Where relays go.
        channel: Rc<Channel>,
        /// Relays from other tabs.
        relays: mpsc::UnboundedReceiver<Relay>,
    }

    impl Tabs {
        /// Joins the tabs following `topic`; `None` where the browser cannot
        /// share (no Web Locks or no BroadcastChannel).
        pub fn join(topic: &str) -> Option<Tabs> {
            locks()?;
            let name = format!("pulse:{topic}");
            let channel = BroadcastChannel::new(&name).ok()?;
            let (tx, relays) = mpsc::unbounded();
            let listener = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
                if let Some(relay) = e
                    .data()
                    .as_string()
                    .and_then(|text| serde_json::from_str::<Relay>(&text).ok())
                {
                    let _ = tx.unbounded_send(relay);
                }
            });
            channel.set_onmessage(Some(listener.as_ref().unchecked_ref()));
            Some(Tabs {
                lock: name,
                channel: Rc::new(Channel {
                    channel,
                    _listener: listener,
                }),
                relays,
            })
        }

        /// Follows the topic: from the holder's relays while another tab
        /// holds the stream; holding it (and relaying) once this tab gets
        /// the lock.
        pub async fn run(
            self,
            url: impl Fn() -> String + 'static,
            state: RwSignal<ConnState>,
            mut on_event: impl FnMut(Received) + 'static,
        ) {
            let Tabs {
                lock,
                channel,
                mut relays,
            } = self;
            let Some(mut granted) = request_lock(&lock) else {
                return browser::run(&url, &|s| state.set(s), &mut on_event).await;
            };
            // Until the lock comes: follow the holder.
            channel.post(&Relay::Hello(last_id(&url)));
            let held = loop {
                futures::select! {
                    held = (&mut granted).fuse() => break held,
                    relay = relays.next() => match relay {
                        Some(Relay::Event(event)) => on_event(event),
                        Some(Relay::State(s)) => state.set(s),
                        Some(Relay::Hello(_)) | None => {}
                    },
                }
            };
            // The lock is released when `_held` is dropped (this future is).
            let Ok(_held) = held else { return };

            // This tab holds the stream now; it resumes from its own last id.
            let recent = Rc::new(RefCell::new(VecDeque::<(Option<u64>, Received)>::new()));
            let mut relaying = {
                let channel = channel.clone();
                let recent = recent.clone();
                move |event: Received| {
                    channel.post(&Relay::Event(event.clone()));
                    {
                        let mut recent = recent.borrow_mut();
                        recent.push_back((event.last_event_id.parse().ok(), event.clone()));
                        if recent.len() > REPLAY {
                            recent.pop_front();
                        }
                    }
                    on_event(event);
                }
            };
            let report = {
                let channel = channel.clone();
                move |s: ConnState| {
                    state.set(s);
                    channel.post(&Relay::State(s));
                }
            };
            let stream = browser::run(&url, &report, &mut relaying).fuse();
            futures::pin_mut!(stream);
            loop {
                futures::select! {
                    _ = stream => return,
                    relay = relays.next() => {
                        // A tab arrived: tell it the state and what it missed.
                        if let Some(Relay::Hello(after)) = relay {
                            channel.post(&Relay::State(state.get_untracked()));
                            for (id, event) in recent.borrow().iter() {
                                if after.is_none_or(|after| id.is_some_and(|id| id > after)) {
                                    channel.post(&Relay::Event(event.clone()));
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The id a stream opened now would resume after, if `url` says one.
    fn last_id(url: &dyn Fn() -> String) -> Option<u64> {
        let url = url();
        let (_, query) = url.split_once('?')?;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            (key == LAST_EVENT_ID_PARAM).then(|| value.parse().ok())?
        })
    }

    /// The browser's LockManager, if it has one.
    fn locks() -> Option<JsValue> {
        let navigator = window().navigator();
        let locks = Reflect::get(&navigator, &JsValue::from_str("locks")).ok()?;
        (!locks.is_undefined() && !locks.is_null()).then_some(locks)
    }

    /// Asks for the lock `name`; the receiver resolves (with the lock's
    /// release) once this tab holds it.
    fn request_lock(name: &str) -> Option<oneshot::Receiver<Release>> {
        let locks = locks()?;
        let request: Function = Reflect::get(&locks, &JsValue::from_str("request"))
            .ok()?
            .dyn_into()
            .ok()?;
        let (tx, rx) = oneshot::channel::<Release>();
        let granted = Closure::once_into_js(move |_lock: JsValue| -> Promise {
            let mut tx = Some(tx);
            Promise::new(&mut |resolve, _reject| {
                // If nobody waits any more (the page moved on), the Release
                // comes back and is dropped at once: the lock goes.
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Release(resolve));
                }
            })
        });
        request
            .call2(&locks, &JsValue::from_str(name), &granted)
            .ok()?;
        Some(rx)
    }

    /// A held lock: released when dropped (the tab stops following; a tab
    /// that closes releases it anyway).
    pub struct Release(Function);

    impl Drop for Release {
        fn drop(&mut self) {
            let _ = self.0.call0(&JsValue::UNDEFINED);
        }
    }
}
