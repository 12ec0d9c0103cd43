//! Waiting between attempts: exponential backoff with full jitter (the rule
//! in [`crate::backoff`]), shown as a countdown, and cut short by the
//! browser's own signs that the network is worth trying again.

use std::future::Future;
use std::time::Duration;

use futures::channel::mpsc;
use futures::{FutureExt, StreamExt};
use gloo_timers::future::TimeoutFuture;
use leptos::prelude::*;
use wasm_bindgen::JsCast;

use super::ConnState;
use crate::backoff;

/// Longest an attempt may take to open before it counts as failed (a proxy
/// that swallows the upgrade, a server that accepts and never answers).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the countdown is redrawn.
const TICK: Duration = Duration::from_millis(250);

/// Resolves after `d`; dropping it cancels the timer.
pub fn sleep(d: Duration) -> TimeoutFuture {
    TimeoutFuture::new(u32::try_from(d.as_millis()).unwrap_or(u32::MAX))
}

/// `work`'s output, or `None` if it takes longer than `limit`.
pub async fn timeout<T>(limit: Duration, work: impl Future<Output = T>) -> Option<T> {
    futures::select! {
        out = work.fuse() => Some(out),
        _ = sleep(limit).fuse() => None,
    }
}

/// Whether the browser believes it is online.
pub fn online() -> bool {
    window().navigator().on_line()
}

/// The browser's signs that a connection is worth trying now: it came back
/// online, the tab became visible, or the page came back from the
/// back/forward cache.
pub struct Wakeups {
    /// One `()` per sign.
    rx: mpsc::UnboundedReceiver<()>,
    /// One `()` each time the browser goes offline.
    offline: mpsc::UnboundedReceiver<()>,
    /// The window listeners, removed on drop.
    listeners: Vec<WindowListenerHandle>,
}

impl Wakeups {
    /// Starts listening.
    pub fn new() -> Wakeups {
        // (The `offline` listener is last: `on` borrows `tx` for the others.)
        let (tx, rx) = mpsc::unbounded();
        let (gone, offline) = mpsc::unbounded();
        let on = |name: &str, wanted: fn(&web_sys::Event) -> bool| {
            let tx = tx.clone();
            window_event_listener_untyped(name, move |e| {
                if wanted(&e) {
                    let _ = tx.unbounded_send(());
                }
            })
        };
        let listeners = vec![
            on("online", |_| true),
            on("visibilitychange", |_| {
                document().visibility_state() == web_sys::VisibilityState::Visible
            }),
            on("pageshow", |e| {
                e.dyn_ref::<web_sys::PageTransitionEvent>()
                    .is_some_and(|e| e.persisted())
            }),
            window_event_listener_untyped("offline", move |_| {
                let _ = gone.unbounded_send(());
            }),
        ];
        Wakeups {
            rx,
            offline,
            listeners,
        }
    }

    /// Resolves when the browser goes offline: its connections are as good
    /// as gone, even if no error has reached them yet.
    pub async fn went_offline(&mut self) {
        if self.offline.next().await.is_none() {
            futures::future::pending::<()>().await;
        }
    }

    /// Resolves at the next sign.
    pub async fn next(&mut self) {
        if self.rx.next().await.is_none() {
            futures::future::pending::<()>().await;
        }
    }

    /// Resolves at the next sign of either kind: true when the browser went
    /// offline, false for a sign that the network is worth trying.
    pub async fn any(&mut self) -> bool {
        futures::select! {
            gone = self.offline.next() => gone.is_some(),
            _ = self.rx.next() => false,
        }
    }

    /// Forgets signs that came while the connection was up.
    fn forget(&mut self) {
        while self.rx.try_recv().is_ok() {}
        while self.offline.try_recv().is_ok() {}
    }
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        for listener in self.listeners.drain(..) {
            listener.remove();
        }
    }
}

/// Failed attempts in a row, and the wait they call for.
#[derive(Default)]
pub struct Backoff {
    /// Attempts since the connection was last up.
    attempts: u32,
}

impl Backoff {
    /// The connection is up: the next failure starts from the shortest wait.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }

    /// Waits before the next attempt, counting down through `report`; a wake-up
    /// ends the wait at once (and starts the backoff over). While the
    /// browser is offline, waits for it to come back (or the longest wait).
    pub async fn wait(&mut self, report: &dyn Fn(ConnState), wake: &mut Wakeups) {
        wake.forget();
        let delay = backoff::delay_ms(self.attempts, js_sys::Math::random()).max(100.0);
        self.attempts = self.attempts.saturating_add(1);
        if !online() {
            report(ConnState::Offline);
            futures::select! {
                _ = wake.next().fuse() => self.attempts = 0,
                _ = sleep(Duration::from_millis(backoff::MAX_MS as u64)).fuse() => {}
            }
            report(ConnState::Retrying);
            return;
        }
        let deadline = js_sys::Date::now() + delay;
        loop {
            let left = deadline - js_sys::Date::now();
            if left <= 0.0 {
                break;
            }
            report(ConnState::Reconnecting(
                (left / 1000.0).ceil().max(1.0) as u32
            ));
            let step = Duration::from_millis(left.min(TICK.as_millis() as f64) as u64);
            let woken = futures::select! {
                _ = wake.next().fuse() => true,
                _ = sleep(step).fuse() => false,
            };
            if woken {
                self.attempts = 0;
                break;
            }
        }
        report(ConnState::Retrying);
    }
}
