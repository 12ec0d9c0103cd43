//! A server-sent event stream that keeps itself connected (the feed, the
//! dashboard's figures), on gloo-net's `EventSource`.
//!
//! The browser's EventSource retries by itself, without a countdown and
//! without caring whether the network is back; so when a stream drops, this
//! closes it and reconnects on the common schedule instead, asking `url()`
//! again so that a resuming stream can say where it left off.

use leptos::prelude::*;

use super::{ConnState, Running};

/// An event as it arrived.
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
        Running::spawn(browser::run(url, state, on_event))
    }
    #[cfg(not(feature = "hydrate"))]
    {
        let _ = (url, state, on_event);
        Running::inert()
    }
}

#[cfg(feature = "hydrate")]
mod browser {
    use std::time::Duration;

    use futures::{FutureExt, StreamExt};
    use gloo_net::eventsource::futures::EventSource;
    use gloo_net::eventsource::State;
    use leptos::prelude::*;

    use super::super::retry::{sleep, Backoff, Wakeups, CONNECT_TIMEOUT};
    use super::{ConnState, Received};

    /// How often the stream's state is looked at (gloo-net reports an
    /// EventSource's errors only once the browser has given up).
    const LOOK: Duration = Duration::from_millis(250);

    pub async fn run(
        url: impl Fn() -> String,
        state: RwSignal<ConnState>,
        mut on_event: impl FnMut(Received),
    ) {
        let mut backoff = Backoff::default();
        let mut wake = Wakeups::new();
        loop {
            if let Ok(mut source) = EventSource::new(&url()) {
                if let Ok(mut events) = source.subscribe("message") {
                    let mut waited = Duration::ZERO;
                    let mut opened = false;
                    loop {
                        futures::select! {
                            event = events.next().fuse() => match event {
                                Some(Ok((_, event))) => {
                                    if !opened {
                                        opened = true;
                                        backoff.reset();
                                        state.set(ConnState::Live);
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
                            _ = sleep(LOOK).fuse() => match source.state() {
                                State::Open if !opened => {
                                    opened = true;
                                    backoff.reset();
                                    state.set(ConnState::Live);
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
            backoff.wait(state, &mut wake).await;
        }
    }
}
