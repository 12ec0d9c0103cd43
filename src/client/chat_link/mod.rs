//! The chat connection: one [`connect`] that returns signals (the
//! connection's state, one's own messages until the server has them) and a
//! handle to act with (join, leave, send), in the shape of leptos-use's
//! hooks; what the server says comes to the one callback given to it, as
//! [`Seen`]. It knows nothing of the pages.
//!
//! Under it, one lifecycle for both transports — a WebSocket
//! ([`websocket`]), or the HTTP fallback ([`fallback`]) where WebSockets do
//! not get through — with the connect timeout, liveness (a silent
//! connection is a dead one), session renewal, backoff with full jitter,
//! wake-ups on online / visibility / pageshow, and (for the fallback's
//! shared stream) tab leadership. [`core`] is what both transports do with
//! what comes and goes: positions in each room's stream (rejoins recover
//! with `since`; a skipped offset is a gap), and the own messages of
//! [`crate::client::sends`] (sent one at a time per room, acked, nacked,
//! sent again after a wait, kept in local storage).
//!
//! On the server the same functions exist and do nothing.

#[cfg(feature = "hydrate")]
mod core;
#[cfg(feature = "hydrate")]
mod fallback;
#[cfg(feature = "hydrate")]
mod websocket;

use std::sync::{Arc, Mutex, MutexGuard};

use leptos::prelude::*;

use super::sends::{Full, Sends};
use super::{ConnState, Running};
use crate::protocol::ServerMessage;
use crate::session::Session;

/// What the server says, as the page is to see it.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    /// A frame for the page (repeats of messages already seen are not
    /// passed on; the connection's own frames are kept back).
    Frame(ServerMessage),
    /// The rejoin of `room` could not recover everything the page missed:
    /// messages may be missing here (comes just before that `joined`).
    Missing {
        /// The room.
        room: String,
    },
}

/// The signals a connection keeps up to date.
#[derive(Clone, Copy)]
pub struct Signals {
    /// The connection, as the badge shows it.
    pub state: RwSignal<ConnState>,
    /// Whether it runs over the HTTP fallback.
    pub over_http: RwSignal<bool>,
    /// One's own messages the server does not have yet, or whose echo has
    /// not come yet (queued, in flight, waiting, failed, sent).
    pub sends: RwSignal<Sends>,
    /// The session; renewed by the connection, `None` once it is lost.
    pub session: RwSignal<Option<Session>>,
}

impl Signals {
    /// Writes one's unsent messages to local storage (this tab's), so that
    /// a reload does not lose them.
    pub fn keep(&self) {
        #[cfg(feature = "hydrate")]
        if let Some(user) = self
            .session
            .with_untracked(|s| s.as_ref().map(|s| s.user_id.clone()))
        {
            let kept = self.sends.with_untracked(|s| s.unsent());
            super::stored::keep_sends(&user, &kept);
        }
    }
}

/// A chat connection; stopped by [`ChatLink::close`].
pub struct ChatLink {
    /// Its signals.
    pub signals: Signals,
    /// Its loop.
    running: Running,
    /// Rooms to be in: joined again after every reconnect. (Send + Sync,
    /// like the rest, so that pages keep the handle in ordinary reactive
    /// storage, also while rendering on the server.)
    rooms: Arc<Mutex<Vec<String>>>,
    /// To the loop.
    #[cfg(feature = "hydrate")]
    commands: futures::channel::mpsc::UnboundedSender<Command>,
}

/// What the handle asks of the loop.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
#[derive(Debug)]
enum Command {
    /// Join this room (now, if connected).
    Join(String),
    /// Leave it.
    Leave(String),
    /// Something was queued: send what is due.
    Pump,
}

/// Connects as the signed-in user of `session`, handing what the server
/// says to `on_seen`. On the server: does nothing.
pub fn connect(session: RwSignal<Option<Session>>, on_seen: impl Fn(Seen) + 'static) -> ChatLink {
    let signals = Signals {
        state: RwSignal::new(ConnState::Connecting),
        over_http: RwSignal::new(false),
        sends: RwSignal::new(Sends::default()),
        session,
    };
    let rooms = Arc::new(Mutex::new(Vec::new()));
    #[cfg(feature = "hydrate")]
    {
        let (commands, queue) = futures::channel::mpsc::unbounded();
        let core = core::Core::new(signals, rooms.clone(), on_seen);
        let running = Running::spawn(browser::run(core, queue));
        ChatLink {
            signals,
            running,
            rooms,
            commands,
        }
    }
    #[cfg(not(feature = "hydrate"))]
    {
        let _ = on_seen;
        ChatLink {
            signals,
            running: Running::inert(),
            rooms,
        }
    }
}

impl ChatLink {
    fn rooms(&self) -> MutexGuard<'_, Vec<String>> {
        lock(&self.rooms)
    }

    fn tell(&self, command: Command) {
        #[cfg(feature = "hydrate")]
        let _ = self.commands.unbounded_send(command);
        #[cfg(not(feature = "hydrate"))]
        let _ = command;
    }

    /// Joins `room` now (if connected) and after every reconnect.
    pub fn join(&self, room: &str) {
        {
            let mut rooms = self.rooms();
            if !rooms.iter().any(|r| r == room) {
                rooms.push(room.to_string());
            }
        }
        self.tell(Command::Join(room.to_string()));
    }

    /// Leaves `room`.
    pub fn leave(&self, room: &str) {
        self.rooms().retain(|r| r != room);
        self.tell(Command::Leave(room.to_string()));
    }

    /// Says `text` in `room`: shown at once as pending, sent when it can
    /// be (kept across reloads until then); refused when the room's queue
    /// is full.
    pub fn send(&self, room: &str, text: &str) -> Result<(), Full> {
        let client_id = new_client_id();
        let mut queued = Ok(());
        self.signals
            .sends
            .update(|s| queued = s.push(room, client_id, text.to_string()));
        queued?;
        self.changed();
        Ok(())
    }

    /// Sends a failed message again.
    pub fn retry(&self, client_id: &str) {
        self.signals.sends.update(|s| s.retry(client_id));
        self.changed();
    }

    /// Forgets a failed message.
    pub fn discard(&self, client_id: &str) {
        self.signals.sends.update(|s| s.discard(client_id));
        self.changed();
    }

    /// One's messages changed: kept at once (the loop may be waiting out a
    /// backoff, offline, and a reload meanwhile must not lose what was
    /// typed), and the loop sends what is due.
    fn changed(&self) {
        self.signals.keep();
        self.tell(Command::Pump);
    }

    /// Closes the connection and stops reconnecting.
    pub fn close(&self) {
        self.running.stop();
    }
}

/// A fresh `client_id` for a message (random; on the server, never used).
fn new_client_id() -> String {
    #[cfg(feature = "hydrate")]
    {
        super::tabs::random_id(3)
    }
    #[cfg(not(feature = "hydrate"))]
    String::new()
}

/// The list, even if a panic left its lock poisoned (each change is whole).
fn lock(rooms: &Mutex<Vec<String>>) -> MutexGuard<'_, Vec<String>> {
    rooms.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(feature = "hydrate")]
mod browser {
    use futures::channel::mpsc::UnboundedReceiver;
    use gloo_net::websocket::futures::WebSocket;
    use leptos::prelude::Set;

    use super::super::retry::{Backoff, Wakeups};
    use super::core::Core;
    use super::{fallback, websocket, Command};
    use crate::protocol::CLOSE_TOKEN_EXPIRED;

    /// WebSocket attempts in a row that end before a single frame, after
    /// which the HTTP fallback is used.
    const SWITCH_AFTER: u32 = 2;

    /// How one connection's life ended.
    pub(super) enum End {
        /// It never opened.
        Refused,
        /// It opened, but ended before a single frame came.
        Silent,
        /// (HTTP fallback) A WebSocket opens again: carry on over it.
        Upgrade(WebSocket),
        /// It closed with this code (1006 when the browser saw no close frame).
        Closed(u16),
        /// The session was renewed: open a new connection with the new cookie now.
        Renewed,
    }

    /// What one connection's life works with, borrowed from the loop.
    pub(super) struct Link<'a> {
        /// What comes and goes, and the signals.
        pub core: &'a mut Core,
        /// The handle's commands.
        pub queue: &'a mut UnboundedReceiver<Command>,
        /// Reset once the connection opens.
        pub backoff: &'a mut Backoff,
        /// Going offline ends the connection.
        pub wake: &'a mut Wakeups,
    }

    /// The lifecycle, once for both transports: open (a WebSocket, or the
    /// fallback after WebSockets failed twice before a single frame), serve
    /// until it ends, renew the session or back off, open again.
    pub async fn run(mut core: Core, mut queue: UnboundedReceiver<Command>) {
        // A spawned task starts after the page's hydration.
        core.restore_kept();
        let mut backoff = Backoff::default();
        let mut wake = Wakeups::new();
        // WebSocket attempts in a row that ended before a single frame: a
        // network that does not let WebSockets through looks like this.
        let mut silent = 0;
        // A WebSocket the fallback found open again.
        let mut upgraded: Option<WebSocket> = None;
        loop {
            let mut link = Link {
                core: &mut core,
                queue: &mut queue,
                backoff: &mut backoff,
                wake: &mut wake,
            };
            let over_http = upgraded.is_none() && silent >= SWITCH_AFTER;
            let end = match upgraded.take() {
                Some(ws) => websocket::serve(ws, &mut link).await,
                None if over_http => fallback::serve(&mut link).await,
                None => match websocket::open() {
                    Some(ws) => websocket::serve(ws, &mut link).await,
                    None => End::Refused,
                },
            };
            core.lost();
            match (&end, over_http) {
                (End::Upgrade(_), _) => {}
                // The fallback itself failed: try WebSockets again.
                (End::Refused, true) => silent = 0,
                (End::Refused | End::Silent, false) => silent += 1,
                (_, false) => silent = 0,
                (_, true) => {}
            }
            match end {
                End::Upgrade(ws) => {
                    upgraded = Some(ws);
                    continue;
                }
                End::Renewed => continue,
                // The session ran out (or was signed out) under us: renew
                // it, then come straight back.
                End::Closed(CLOSE_TOKEN_EXPIRED) => match core.renew_now().await {
                    true => continue,
                    false => return core.session_lost(),
                },
                // Refused before it opened: maybe the session is no longer
                // valid (e.g. the server's secret changed).
                End::Refused if !core.still_signed_in().await => return core.session_lost(),
                End::Refused | End::Closed(_) | End::Silent => {}
            }
            // Frames queued while down are not sent late into another
            // connection (what must be sent again is the core's to resend).
            while let Ok(command) = queue.try_recv() {
                core.command(command);
            }
            let state = core.signals.state;
            backoff.wait(&|s| state.set(s), &mut wake).await;
        }
    }
}
