//! What both transports do with what comes and goes: the page's place in
//! each room's stream, one's own messages, the session's renewal.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leptos::prelude::*;

use super::super::positions::{Arrival, Positions};
use super::super::{stored, ConnState};
use super::{lock, Command, Seen, Signals};
use crate::protocol::{ChatMessage, ClientMessage, ServerMessage};
use crate::session::{current_session, renew_session};

/// Renew the session this long before it expires.
const RENEW_BEFORE_S: u64 = 300;

/// How often a tab says (in local storage) that its kept messages are
/// still its own; another tab takes over those of a tab silent three times
/// as long (it was closed).
const KEEP_BEAT_MS: f64 = 5_000.0;

/// The connection's bookkeeping, owned by its loop.
pub(super) struct Core {
    /// What the page sees.
    pub signals: Signals,
    /// Rooms to be in (shared with the handle).
    rooms: Arc<Mutex<Vec<String>>>,
    /// Rooms joined on this connection (their `joined` came).
    joined: HashSet<String>,
    /// The page's place in each room's stream.
    positions: Positions,
    /// Frames to send, for the transport to take.
    outgoing: VecDeque<ClientMessage>,
    /// Where what the server says goes.
    on_seen: Box<dyn Fn(Seen)>,
    /// When the session is next renewed (ms since the epoch).
    renew_at: f64,
    /// When this tab last said its kept messages are its own.
    kept_at: f64,
}

/// Now, in ms since the epoch.
fn now() -> f64 {
    js_sys::Date::now()
}

impl Core {
    pub fn new(
        signals: Signals,
        rooms: Arc<Mutex<Vec<String>>>,
        on_seen: impl Fn(Seen) + 'static,
    ) -> Core {
        let mut core = Core {
            signals,
            rooms,
            joined: HashSet::new(),
            positions: Positions::default(),
            outgoing: VecDeque::new(),
            on_seen: Box::new(on_seen),
            renew_at: 0.0,
            kept_at: 0.0,
        };
        core.schedule_renewal();
        core
    }

    /// Takes in what this tab typed before a reload, and what closed tabs
    /// left. Not in `new`: the page is hydrated from a server rendering
    /// that has none of them, so they may only appear once it has been.
    pub fn restore_kept(&mut self) {
        if let Some(user) = self.user() {
            let kept = stored::kept_sends(&user);
            self.signals.sends.update(|s| s.restore(kept));
        }
    }

    fn user(&self) -> Option<String> {
        self.signals
            .session
            .with_untracked(|s| s.as_ref().map(|s| s.user_id.clone()))
    }

    /// The connection opened: rejoin every room, recovering from the page's
    /// place where it has one; the frames to send first.
    pub fn opened(&mut self, over_http: bool) -> Vec<ClientMessage> {
        self.signals.over_http.set(over_http);
        self.signals.state.set(ConnState::Live);
        self.joined.clear();
        lock(&self.rooms)
            .iter()
            .map(|room| ClientMessage::Join {
                room: room.clone(),
                since: self.positions.since(room),
            })
            .collect()
    }

    /// The connection ended: what was in flight may not have arrived, and is
    /// sent again (same `client_id`) on the next one.
    pub fn lost(&mut self) {
        self.joined.clear();
        self.signals.sends.update(|s| s.connection_lost());
        self.outgoing.clear();
    }

    /// The frames queued for the transport.
    pub fn outgoing(&mut self) -> Vec<ClientMessage> {
        self.outgoing.drain(..).collect()
    }

    /// A command of the handle's.
    pub fn command(&mut self, command: Command) {
        let live = self.signals.state.get_untracked().is_live();
        match command {
            Command::Join(room) if live => {
                let since = self.positions.since(&room);
                self.outgoing.push_back(ClientMessage::Join { room, since });
            }
            Command::Leave(room) => {
                self.positions.forget(&room);
                self.joined.remove(&room);
                if live {
                    self.outgoing.push_back(ClientMessage::Leave { room });
                }
            }
            Command::Join(_) => {}
            Command::Pump => self.pump(),
        }
    }

    /// Queues what of one's own messages is due, in the rooms joined.
    fn pump(&mut self) {
        if self.signals.state.get_untracked().is_live() {
            let joined = &self.joined;
            let mut due = Vec::new();
            self.signals
                .sends
                .update(|s| due = s.due(now(), |room| joined.contains(room)));
            for o in due {
                self.outgoing.push_back(ClientMessage::Message {
                    room: o.room,
                    text: o.text,
                    client_id: o.client_id,
                });
            }
        }
        self.keep();
    }

    /// Writes what is unsent to local storage.
    fn keep(&mut self) {
        self.signals.keep();
        self.kept_at = now();
    }

    /// Every tick of the transport's clock: messages whose wait is over
    /// are sent; the kept ones are said to be this tab's still.
    pub fn tick(&mut self) {
        let t = now();
        let waited = self
            .signals
            .sends
            .with_untracked(|s| s.next_wait().is_some_and(|at| at <= t));
        if waited {
            self.pump();
        } else if t - self.kept_at > KEEP_BEAT_MS {
            self.keep();
        }
    }

    /// A frame from the server.
    pub fn receive(&mut self, msg: ServerMessage) {
        match msg {
            ServerMessage::Joined {
                ref room,
                ref epoch,
                offset,
                recovered,
                ref history,
                ..
            } => {
                if self.positions.since(room).is_some() && !recovered {
                    (self.on_seen)(Seen::Missing { room: room.clone() });
                }
                self.positions.joined(room, epoch, offset);
                self.joined.insert(room.clone());
                for m in history {
                    self.echoed(m);
                }
                (self.on_seen)(Seen::Frame(msg));
                self.pump();
            }
            ServerMessage::Message(ref m) => {
                match self.positions.message(&m.room, m.offset) {
                    Arrival::Repeat => return,
                    Arrival::Gap(since) => {
                        // Missed some: join again from before them (the
                        // server answers with what came since; the page
                        // drops what it has already).
                        self.outgoing.push_back(ClientMessage::Join {
                            room: m.room.clone(),
                            since: Some(since),
                        });
                    }
                    Arrival::Next => {}
                }
                self.echoed(m);
                (self.on_seen)(Seen::Frame(msg));
            }
            ServerMessage::Ack {
                client_id, offset, ..
            } => {
                self.signals.sends.update(|s| s.acked(&client_id, offset));
                self.pump();
            }
            ServerMessage::Nack {
                client_id,
                code,
                message,
                retry_after_ms,
                ..
            } => {
                self.signals
                    .sends
                    .update(|s| s.nacked(&client_id, code, &message, retry_after_ms, now()));
                self.pump();
            }
            ServerMessage::Left { ref room } => {
                self.positions.forget(room);
                self.joined.remove(room);
                (self.on_seen)(Seen::Frame(msg));
            }
            ServerMessage::Health { other_servers } => self.signals.state.update(|state| {
                if state.is_live() {
                    *state = if other_servers {
                        ConnState::Live
                    } else {
                        ConnState::LiveAlone
                    };
                }
            }),
            // The connection's own business.
            ServerMessage::Pong { .. }
            | ServerMessage::Hello { .. }
            | ServerMessage::Closed { .. } => {}
            msg => (self.on_seen)(Seen::Frame(msg)),
        }
    }

    /// One's own message `m` is in the room's stream and about to be shown:
    /// it needs no showing as pending any more.
    fn echoed(&mut self, m: &ChatMessage) {
        let mine = self
            .signals
            .session
            .with_untracked(|s| s.as_ref().is_some_and(|s| s.user_id == m.user_id));
        if let (true, Some(client_id)) = (mine, &m.client_id) {
            self.signals.sends.update(|s| s.echoed(client_id));
        }
    }

    fn schedule_renewal(&mut self) {
        let expires_at = self
            .signals
            .session
            .with_untracked(|s| s.as_ref().map_or(0, |s| s.expires_at));
        self.renew_at = now() + renewal_delay(expires_at).as_millis() as f64;
    }

    /// Whether the session is due for renewal (the transport renews it, then
    /// reconnects quietly with the fresh cookie before the old token's `exp`
    /// closes the connection).
    pub fn renewal_due(&self) -> bool {
        now() >= self.renew_at
    }

    /// Renews the session; true once renewed. On failure, tries again in
    /// two minutes: the connection lives until `exp` anyway.
    pub async fn renew(&mut self) -> bool {
        let renewed = self.renew_now().await;
        if !renewed {
            self.renew_at = now() + 120_000.0;
        }
        renewed
    }

    /// The session ended under the connection: renew it at once; false if
    /// it cannot be (signed out).
    pub async fn renew_now(&mut self) -> bool {
        match renew_session().await {
            Ok(session) => {
                self.signals.session.set(Some(session));
                self.schedule_renewal();
                true
            }
            Err(e) => {
                leptos::logging::warn!("cannot renew the session: {e}");
                false
            }
        }
    }

    /// Whether the server still knows the session (asked after a refusal).
    pub async fn still_signed_in(&self) -> bool {
        !matches!(current_session().await, Ok(info) if info.session.is_none())
    }

    /// The session is gone: stop, and show the sign-in form.
    pub fn session_lost(&self) {
        self.signals.state.set(ConnState::Stopped);
        self.signals.session.set(None);
    }
}

/// How long until the session ending at `expires_at` should be renewed:
/// five minutes before the end, or half-way through a short session.
fn renewal_delay(expires_at: u64) -> Duration {
    let now = (js_sys::Date::now() / 1000.0) as u64;
    let lifetime = expires_at.saturating_sub(now);
    Duration::from_secs(
        lifetime
            .saturating_sub(RENEW_BEFORE_S.min(lifetime / 2))
            .max(1),
    )
}
