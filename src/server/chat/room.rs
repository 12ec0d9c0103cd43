//! One room as this instance holds it: its local connections, where this
//! instance is in the room's stream, and delivery to the connections.
//!
//! Publications come from the broker in the stream's order; the room keeps
//! the position of the last one it delivered, so it can tell a duplicate
//! (already delivered: skipped), the next one (delivered), a gap (held back
//! until the missing ones are read from the stream) and a new epoch (the
//! stream was lost: every member is told). Each connection also keeps the
//! offset of the last publication it got, so that what a joining member
//! read from the stream is never sent to it again live.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use super::outbox::{encode, Outbox};
use super::user::{ConnId, User};
use crate::protocol::{ChatMessage, Member, ServerMessage, StreamPosition};
use crate::server::metrics;

/// Frames a joining connection may have waiting before its `joined` is sent.
const MAX_WAITING: usize = 4096;

/// Publications a room holds back while it reads a gap from the stream.
const MAX_HELD_BACK: usize = 4096;

/// One connection in a room.
pub struct Conn {
    /// Whose it is.
    pub user: User,
    /// Where its frames go.
    pub outbox: Outbox,
    /// The offset of the last publication it got.
    pub seen: u64,
    /// While it joins: what came for it before its `joined`, in order
    /// (publications with their offsets, and presence frames).
    pub waiting: Option<Vec<(Option<u64>, axum::extract::ws::Message)>>,
}

/// What a publication did to the room.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Delivered, or skipped as already delivered (or nobody is here).
    Done,
    /// Some publications before it did not arrive (or the epoch changed):
    /// read the stream after the room's position.
    Resync,
}

/// One room.
#[derive(Default)]
pub struct Room {
    /// The connections in the room.
    pub connections: HashMap<ConnId, Conn>,
    /// Connections per user id: a user with two tabs is one member, who
    /// enters with the first and goes with the last.
    pub users: BTreeMap<Arc<str>, (Arc<str>, usize)>,
    /// Presence changes not yet sent: each user's latest state (true: in).
    pub pending: BTreeMap<String, (Member, bool)>,
    /// The last publication delivered here (`None` until the first join
    /// has read the stream, and again once nobody is here).
    pub position: Option<StreamPosition>,
    /// Publications that came ahead of a gap, by offset, with their epoch.
    pub held_back: BTreeMap<u64, (String, ChatMessage)>,
    /// Whether a read of the stream after `position` is under way.
    pub resyncing: bool,
    /// When the last connection left (for dropping idle rooms).
    pub empty_since: Option<Instant>,
    /// Who created the room (`None` for the default rooms).
    pub creator: Option<Arc<str>>,
    /// Whether anyone but its creator ever joined.
    pub visited: bool,
}

impl Room {
    /// Sends a frame to every connection (joining ones keep it for after
    /// their `joined`); `offset` for a publication, which each connection
    /// gets once. Returns how many connections got it.
    fn fan_out(&mut self, frame: axum::extract::ws::Message, offset: Option<u64>) -> u64 {
        let mut delivered = 0;
        for member in self.connections.values_mut() {
            if let Some(offset) = offset {
                if offset <= member.seen {
                    continue;
                }
                member.seen = offset;
            }
            match &mut member.waiting {
                Some(waiting) if waiting.len() >= MAX_WAITING => {
                    // It cannot catch up: as if its queue overflowed.
                    member.outbox.too_slow().cancel();
                }
                Some(waiting) => waiting.push((offset, frame.clone())),
                None => {
                    if member.outbox.push(frame.clone()) {
                        delivered += 1;
                    }
                }
            }
        }
        delivered
    }

    /// Sends a presence (or any other non-stream) frame to everyone here.
    pub fn broadcast(&mut self, msg: &ServerMessage) {
        self.fan_out(encode(msg), None);
    }

    /// Delivers one message of the stream to everyone here, and moves the
    /// room's position to it.
    fn deliver(&mut self, message: ChatMessage) {
        let offset = message.offset;
        if let Some(position) = &mut self.position {
            position.offset = offset;
        }
        let delivered = self.fan_out(encode(&ServerMessage::Message(message)), Some(offset));
        metrics::messages_delivered(delivered);
    }

    /// A publication of epoch `epoch` from the broker.
    pub fn arrive(&mut self, epoch: &str, message: ChatMessage) -> Arrival {
        if self.connections.is_empty() {
            return Arrival::Done;
        }
        let next = match &self.position {
            // The first join has not read the stream yet: it will be
            // delivered after what the join read.
            None => None,
            Some(p) if p.epoch == epoch && message.offset <= p.offset => return Arrival::Done,
            Some(p) if p.epoch == epoch && !self.resyncing => Some(p.offset + 1),
            Some(_) => None,
        };
        if next == Some(message.offset) {
            self.deliver(message);
            return Arrival::Done;
        }
        if self.held_back.len() < MAX_HELD_BACK {
            self.held_back
                .insert(message.offset, (epoch.to_string(), message));
        }
        if self.position.is_none() || self.resyncing {
            return Arrival::Done;
        }
        self.resyncing = true;
        Arrival::Resync
    }

    /// Delivers what was held back and now follows the position; `Resync`
    /// if what remains still does not follow.
    pub fn release(&mut self) -> Arrival {
        let Some(position) = self.position.clone() else {
            return Arrival::Done;
        };
        let held = std::mem::take(&mut self.held_back);
        let mut next = position.offset + 1;
        for (offset, (epoch, message)) in held {
            if epoch != position.epoch || offset < next {
                continue;
            }
            if offset == next {
                self.deliver(message);
                next += 1;
            } else {
                self.held_back.insert(offset, (epoch, message));
            }
        }
        self.resyncing = !self.held_back.is_empty();
        if self.resyncing {
            Arrival::Resync
        } else {
            Arrival::Done
        }
    }

    /// The stream was read after the room's position: delivers what was
    /// read (`whole`: exactly all that followed it), then what was held back.
    pub fn fill(&mut self, messages: Vec<ChatMessage>) -> Arrival {
        for message in messages {
            let follows = self
                .position
                .as_ref()
                .is_some_and(|p| message.offset == p.offset + 1);
            if follows {
                self.deliver(message);
            }
        }
        self.resyncing = false;
        self.release()
    }

    /// The stream moved on without this room (a new epoch, or more missed
    /// than can be read): every connection is answered `joined` again, as
    /// after a join that could not recover, and the room starts at `top`.
    pub fn reset(
        &mut self,
        name: &str,
        top: StreamPosition,
        history: Vec<ChatMessage>,
        members: Vec<Member>,
    ) -> Arrival {
        self.held_back
            .retain(|_, (epoch, m)| *epoch == top.epoch && m.offset > top.offset);
        self.resyncing = false;
        for conn in self.connections.values_mut() {
            conn.seen = top.offset;
        }
        let frame = encode(&ServerMessage::Joined {
            room: name.to_string(),
            members,
            history,
            epoch: top.epoch.clone(),
            offset: top.offset,
            recovered: false,
        });
        self.position = Some(top);
        self.fan_out(frame, None);
        self.release()
    }
}
