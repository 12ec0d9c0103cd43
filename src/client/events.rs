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
            browser::run(&url, &|s| state.set(s), &mut on_event, &|_| {}).await;
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

    use super::super::liveness::Liveness;
    use super::super::retry::{Backoff, Wakeups, CONNECT_TIMEOUT};
    use super::{ConnState, Received};
    use crate::protocol::{StreamPing, PING_EVENT};

    /// How often the stream's state is looked at (gloo-net reports an
    /// EventSource's errors only once the browser has given up).
    const LOOK: Duration = Duration::from_millis(250);

    /// Follows the stream for ever (until the future is dropped), handing
    /// each heartbeat's interval to `on_ping`. A stream that is dead by the
    /// one rule of [`Liveness`] is closed and opened again.
    pub async fn run(
        url: &dyn Fn() -> String,
        report: &dyn Fn(ConnState),
        on_event: &mut dyn FnMut(Received),
        on_ping: &dyn Fn(Duration),
    ) {
        let mut backoff = Backoff::default();
        let mut wake = Wakeups::new();
        loop {
            if let Ok(mut source) = EventSource::new(&url()) {
                if let (Ok(mut events), Ok(mut pings)) =
                    (source.subscribe("message"), source.subscribe(PING_EVENT))
                {
                    let mut waited = Duration::ZERO;
                    let mut opened = false;
                    // Not dead by silence until its first heartbeat says
                    // how often it speaks.
                    let mut alive = Liveness::new(f64::INFINITY);
                    // One timer for the stream's life (one per turn of the
                    // loop would restart with every event).
                    let mut look = IntervalStream::new(LOOK.as_millis() as u32).fuse();
                    loop {
                        futures::select! {
                            event = events.next().fuse() => match event {
                                Some(Ok((_, event))) => {
                                    alive.heard();
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
                            ping = pings.next().fuse() => match ping {
                                Some(Ok((_, ping))) => {
                                    alive.heard();
                                    let ping = ping.data().as_string().and_then(|data| {
                                        serde_json::from_str::<StreamPing>(&data).ok()
                                    });
                                    if let Some(ping) = ping {
                                        alive.set_interval(ping.interval_ms as f64);
                                        on_ping(Duration::from_millis(ping.interval_ms));
                                    }
                                }
                                Some(Err(_)) | None => break,
                            },
                            _ = wake.went_offline().fuse() => break,
                            _ = look.next() => match source.state() {
                                State::Open if !opened => {
                                    opened = true;
                                    backoff.reset();
                                    report(ConnState::Live);
                                }
                                State::Open => {
                                    if alive.dead() {
                                        break;
                                    }
                                }
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
    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;
    use std::time::Duration;

    use super::super::tabs::{locks, request_lock, Ask, Channel};
    use super::{browser, ConnState, Received};
    use crate::protocol::LAST_EVENT_ID_PARAM;
    use futures::channel::mpsc;
    use futures::{FutureExt, StreamExt};
    use gloo_timers::future::IntervalStream;
    use leptos::prelude::*;

    /// Events the holder keeps to replay to a tab that just arrived.
    const REPLAY: usize = 64;

    /// How many of the holder's beats may go unheard before a follower
    /// takes the lock: more than the two after which the holder itself
    /// gives its stream up, so that a live holder that reconnects (and says
    /// so) is never overtaken.
    const HOLDER_SILENCE: u32 = 3;

    /// How long a follower that has not heard a beat yet waits for one.
    const FIRST_BEAT: Duration = Duration::from_secs(45);

    /// How often a follower checks on the holder.
    const LOOK: Duration = Duration::from_secs(1);

    /// What tabs tell each other about one topic.
    #[derive(serde::Serialize, serde::Deserialize)]
    enum Relay {
        /// An event, from the holder.
        Event(Received),
        /// The holder's connection state.
        State(ConnState),
        /// The holder's stream is alive and hears from its server at least
        /// this often (ms): the holder's sign of life.
        Beat(u64),
        /// A tab arrived and has seen events up to this id: the holder
        /// answers with its state, its beat and the events after it.
        Hello(Option<u64>),
    }

    /// This tab's membership of the tabs following one topic.
    pub struct Tabs {
        /// The Web Lock's name (also the channel's).
        lock: String,
        /// Where relays go.
        channel: Channel<Relay>,
        /// Relays from other tabs.
        relays: mpsc::UnboundedReceiver<Relay>,
    }

    impl Tabs {
        /// Joins the tabs following `topic`; `None` where the browser cannot
        /// share (no Web Locks or no BroadcastChannel).
        pub fn join(topic: &str) -> Option<Tabs> {
            locks()?;
            let name = format!("pulse:{topic}");
            let (channel, relays) = Channel::open(&name)?;
            Some(Tabs {
                lock: name,
                channel,
                relays,
            })
        }

        /// Follows the topic: from the holder's relays while another tab
        /// holds the stream; holding it (and relaying) once this tab gets
        /// the lock. A holder that falls silent (its tab was frozen, or
        /// hangs) has its lock taken; if it wakes up, it learns so and goes
        /// back to following.
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
            // The holder's last events (to replay) and heartbeat interval.
            let recent = RefCell::new(VecDeque::<(Option<u64>, Received)>::new());
            let every = Cell::new(None::<Duration>);
            loop {
                let Some(mut turn) = request_lock(&lock, Ask::Wait) else {
                    return browser::run(&url, &|s| state.set(s), &mut on_event, &|_| {}).await;
                };
                // Until the lock comes: follow the holder.
                channel.post(&Relay::Hello(last_id(&url)));
                let mut heard = js_sys::Date::now();
                let mut beat = None::<Duration>;
                let mut look = IntervalStream::new(LOOK.as_millis() as u32).fuse();
                let held = loop {
                    futures::select! {
                        held = (&mut turn.granted).fuse() => break held,
                        relay = relays.next() => match relay {
                            Some(Relay::Event(event)) => {
                                heard = js_sys::Date::now();
                                on_event(event);
                            }
                            Some(Relay::State(s)) => {
                                heard = js_sys::Date::now();
                                state.set(s);
                            }
                            Some(Relay::Beat(ms)) => {
                                heard = js_sys::Date::now();
                                beat = Some(Duration::from_millis(ms));
                            }
                            // Another tab arriving says nothing of the holder.
                            Some(Relay::Hello(_)) | None => {}
                        },
                        _ = look.next() => {
                            let silent = js_sys::Date::now() - heard;
                            let limit = beat.map_or(FIRST_BEAT, |beat| beat * HOLDER_SILENCE);
                            if silent > limit.as_millis() as f64 {
                                // The holder is gone without letting go: take
                                // its lock (the request still queued is
                                // answered later and let go at once).
                                if let Some(stolen) = request_lock(&lock, Ask::Steal) {
                                    turn = stolen;
                                }
                                heard = js_sys::Date::now();
                            }
                        }
                    }
                };
                // The lock is released when `_held` is dropped.
                let Ok(_held) = held else { return };

                // This tab holds the stream now; it resumes from its own last id.
                recent.borrow_mut().clear();
                let mut relaying = |event: Received| {
                    channel.post(&Relay::Event(event.clone()));
                    {
                        let mut recent = recent.borrow_mut();
                        recent.push_back((event.last_event_id.parse().ok(), event.clone()));
                        if recent.len() > REPLAY {
                            recent.pop_front();
                        }
                    }
                    on_event(event);
                };
                let report = |s: ConnState| {
                    state.set(s);
                    channel.post(&Relay::State(s));
                };
                let on_ping = |interval: Duration| {
                    every.set(Some(interval));
                    channel.post(&Relay::Beat(interval.as_millis() as u64));
                };
                let stream = browser::run(&url, &report, &mut relaying, &on_ping).fuse();
                futures::pin_mut!(stream);
                loop {
                    futures::select! {
                        _ = stream => return,
                        // Another tab took the lock while this one was
                        // frozen: it holds the stream now.
                        _ = (&mut turn.lost).fuse() => break,
                        relay = relays.next() => {
                            // A tab arrived: tell it the state, the beat and
                            // what it missed.
                            if let Some(Relay::Hello(after)) = relay {
                                channel.post(&Relay::State(state.get_untracked()));
                                if let Some(every) = every.get() {
                                    channel.post(&Relay::Beat(every.as_millis() as u64));
                                }
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
}
