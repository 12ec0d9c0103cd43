//! This instance's rooms: who is connected to which, and fan-out to them.
//!
//! Every change to a room and every delivery to it happens under one lock,
//! so all of a room's connections get its publications in offset order (and
//! a `joined` always comes before the publications that follow what it
//! accounts for). Nothing under the lock waits: frames are encoded once and
//! pushed onto each connection's byte-bounded queue; a connection whose
//! queue is over its bound is marked too slow and closes, so it never holds
//! up the others.
//!
//! The hub subscribes the instance to a room's channel while it has a
//! connection in it, and unsubscribes when the last one leaves: those
//! requests are made under the lock, so they reach the broker in the order
//! the hub decided them.
//!
//! Who enters and leaves is not told one by one: changes (from the
//! presence store, through the broker) gather per room and go out as one
//! `presence` frame every [`PRESENCE_INTERVAL`], so a crowd of N joining at
//! once costs each member O(N) bytes, not N frames.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::outbox::{error, rate_limited, Outbox};
use super::room::{Arrival, Conn, Room};
use super::user::{ConnId, User};
use crate::protocol::{
    is_valid_room, ChatMessage, ErrorCode, Member, ServerMessage, StreamPosition, DEFAULT_ROOMS,
    MAX_ROOM_NAME,
};
use crate::server::clock::now_ms;
use crate::server::cluster::{Broker, PresenceChange, Unavailable};
use crate::server::metrics;

/// How often gathered presence changes are sent.
pub const PRESENCE_INTERVAL: Duration = Duration::from_millis(100);

/// How soon a room that nobody but its creator ever joined is dropped once
/// empty: a user who creates rooms and leaves them cannot fill the server.
pub const LONELY_ROOM_IDLE: Duration = Duration::from_secs(60);

/// What [`Hub::admit`] did.
pub enum Admission {
    /// The connection is in the room, waiting for its `joined`; the future
    /// resolves once the instance receives the room's publications.
    Joining(BoxFuture<'static, Result<(), Unavailable>>),
    /// The connection was in the room already.
    AlreadyIn,
}

/// What a join read, for its `joined`.
pub struct JoinAnswer {
    /// Everyone present in the room.
    pub members: Vec<Member>,
    /// The messages to send with it.
    pub history: Vec<ChatMessage>,
    /// The stream's position the answer accounts for.
    pub top: StreamPosition,
    /// Whether `history` is exactly what the member missed.
    pub recovered: bool,
}

/// How many rooms there may be, and who may create them.
pub struct RoomLimits {
    /// Most rooms held at once (`PULSE_MAX_ROOMS`).
    pub max_rooms: usize,
    /// How long an empty room is kept (`PULSE_ROOM_IDLE`).
    pub room_idle: Duration,
    /// New rooms per user per hour (`PULSE_ROOMS_PER_USER`).
    pub per_user: u32,
    /// New rooms per client address per hour (`PULSE_ROOMS_PER_IP`).
    pub per_address: u32,
}

/// The rooms and the presence changes not yet sent, under one lock.
#[derive(Default)]
struct Rooms {
    /// Rooms by name.
    by_name: HashMap<String, Room>,
    /// Rooms with presence changes to send.
    dirty: BTreeSet<String>,
}

/// Every room of this instance.
pub struct Hub {
    /// The rooms.
    rooms: Mutex<Rooms>,
    /// Where the room subscriptions go.
    broker: Arc<dyn Broker>,
    /// Most rooms held at once.
    max_rooms: usize,
    /// How long an empty non-default room is kept.
    room_idle: Duration,
    /// Rooms each user may create, per hour.
    creations: DefaultKeyedRateLimiter<Arc<str>>,
    /// Rooms the users of one client address may create together, per hour.
    creations_per_address: DefaultKeyedRateLimiter<IpAddr>,
}

/// Sorts members by name then id, each user once.
fn sort_members(members: &mut Vec<Member>) {
    members.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    members.dedup_by(|a, b| a.id == b.id);
}

impl Hub {
    /// A hub with the default rooms, subscribing through `broker`.
    pub fn new(broker: Arc<dyn Broker>, limits: RoomLimits) -> Self {
        let RoomLimits {
            max_rooms,
            room_idle,
            per_user: rooms_per_user_per_hour,
            per_address,
        } = limits;
        let by_name = DEFAULT_ROOMS
            .iter()
            .map(|name| (name.to_string(), Room::default()))
            .collect();
        metrics::set_rooms(DEFAULT_ROOMS.len());
        let per_hour = NonZeroU32::new(rooms_per_user_per_hour).unwrap_or(NonZeroU32::MIN);
        Hub {
            rooms: Mutex::new(Rooms {
                by_name,
                dirty: BTreeSet::new(),
            }),
            broker,
            max_rooms,
            room_idle,
            creations: RateLimiter::keyed(Quota::per_hour(per_hour)),
            creations_per_address: RateLimiter::keyed(Quota::per_hour(
                NonZeroU32::new(per_address).unwrap_or(NonZeroU32::MIN),
            )),
        }
    }

    fn rooms(&self) -> MutexGuard<'_, Rooms> {
        // A panic elsewhere while holding the lock leaves the map usable.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts a connection into `room` (creating it if needed, within the
    /// limits), waiting for its `joined` ([`Hub::complete`]): what the room
    /// delivers meanwhile is kept for after it.
    pub fn admit(
        &self,
        conn: ConnId,
        user: &User,
        outbox: &Outbox,
        room: &str,
    ) -> Result<Admission, Box<ServerMessage>> {
        if !is_valid_room(room) {
            return Err(Box::new(error(
                ErrorCode::InvalidRoom,
                format!("room names are 1-{MAX_ROOM_NAME} characters of a-z, 0-9, - and _"),
            )));
        }
        let mut rooms = self.rooms();
        if !rooms.by_name.contains_key(room) {
            if rooms.by_name.len() >= self.max_rooms {
                return Err(Box::new(error(
                    ErrorCode::InvalidRoom,
                    "the server holds as many rooms as it may; join an existing one",
                )));
            }
            // The address's budget first, so that a user refused for their
            // address's sake keeps their own.
            if let Err(not_until) = self.creations_per_address.check_key(&user.address) {
                let wait = not_until.wait_time_from(self.creations.clock().now());
                return Err(Box::new(rate_limited(
                    "as many rooms have been created from your address as may be this hour; \
                     join an existing one",
                    wait,
                )));
            }
            if let Err(not_until) = self.creations.check_key(&user.id) {
                let wait = not_until.wait_time_from(self.creations.clock().now());
                return Err(Box::new(rate_limited(
                    "you have created as many rooms as you may this hour; join an existing one",
                    wait,
                )));
            }
            let created = Room {
                creator: Some(user.id.clone()),
                ..Room::default()
            };
            rooms.by_name.insert(room.to_string(), created);
            metrics::set_rooms(rooms.by_name.len());
        }
        let Some(r) = rooms.by_name.get_mut(room) else {
            return Err(Box::new(error(ErrorCode::InvalidRoom, "no such room")));
        };
        let Entry::Vacant(slot) = r.connections.entry(conn) else {
            return Ok(Admission::AlreadyIn);
        };
        slot.insert(Conn {
            user: user.clone(),
            outbox: outbox.clone(),
            seen: 0,
            waiting: Some(Vec::new()),
        });
        r.empty_since = None;
        if r.creator.as_ref() != Some(&user.id) {
            r.visited = true;
        }
        r.users
            .entry(user.id.clone())
            .or_insert_with(|| (user.name.clone(), 0))
            .1 += 1;
        // Asked for on every join (a no-op once subscribed), so that each
        // joiner waits until the subscription holds.
        Ok(Admission::Joining(
            self.broker.subscribe(&[room.to_string()]),
        ))
    }

    /// Answers an admitted connection with its `joined`, then sends what
    /// came for it meanwhile and is not in the answer. `Resync` if the room
    /// must read its stream again.
    pub fn complete(&self, conn: ConnId, room: &str, answer: JoinAnswer) -> Arrival {
        let mut rooms = self.rooms();
        let Some(r) = rooms.by_name.get_mut(room) else {
            return Arrival::Done;
        };
        let Some(c) = r.connections.get_mut(&conn) else {
            return Arrival::Done; // it went away meanwhile
        };
        let JoinAnswer {
            mut members,
            history,
            top,
            recovered,
        } = answer;
        sort_members(&mut members);
        c.outbox.send(&ServerMessage::Joined {
            room: room.to_string(),
            members,
            history,
            epoch: top.epoch.clone(),
            offset: top.offset,
            recovered,
        });
        for (offset, frame) in c.waiting.take().unwrap_or_default() {
            if offset.is_none_or(|o| o > top.offset) {
                c.outbox.push(frame);
            }
        }
        c.seen = c.seen.max(top.offset);
        match &r.position {
            None => {
                r.position = Some(top);
                r.release()
            }
            Some(p) if p.epoch != top.epoch => Arrival::Resync,
            Some(_) => Arrival::Done,
        }
    }

    /// Answers a connection that joins a room it is in with `joined` again:
    /// with what a read of the stream found (`(history, top, recovered)`,
    /// when it asked with `since`), else without history.
    pub fn answer_again(
        &self,
        conn: ConnId,
        room: &str,
        mut members: Vec<Member>,
        read: Option<(Vec<ChatMessage>, StreamPosition, bool)>,
    ) {
        let rooms = self.rooms();
        let Some(r) = rooms.by_name.get(room) else {
            return;
        };
        let (Some(c), Some(position)) = (r.connections.get(&conn), &r.position) else {
            return;
        };
        sort_members(&mut members);
        let (history, offset, recovered) = match read {
            Some((history, top, recovered)) if top.epoch == position.epoch => {
                (history, c.seen.max(top.offset), recovered)
            }
            Some(_) => (Vec::new(), c.seen, false),
            None => (Vec::new(), c.seen, true),
        };
        c.outbox.send(&ServerMessage::Joined {
            room: room.to_string(),
            members,
            history,
            epoch: position.epoch.clone(),
            offset,
            recovered,
        });
    }

    /// Takes a connection out of `room`. `Some(true)` if it was its user's
    /// last connection in the room here, `None` if it was not in it.
    pub fn remove(&self, conn: ConnId, room: &str) -> Option<bool> {
        let mut rooms = self.rooms();
        let r = rooms.by_name.get_mut(room)?;
        let gone = r.connections.remove(&conn)?;
        let last_of_user = match r.users.get_mut(&gone.user.id) {
            Some((_, count)) if *count > 1 => {
                *count -= 1;
                false
            }
            _ => {
                r.users.remove(&gone.user.id);
                true
            }
        };
        if r.connections.is_empty() {
            // Nobody here: the instance stops following the room.
            r.empty_since = Some(Instant::now());
            r.position = None;
            r.held_back.clear();
            r.resyncing = false;
            r.pending.clear();
            rooms.dirty.remove(room);
            self.broker.unsubscribe(&[room.to_string()]);
        }
        Some(last_of_user)
    }

    /// A publication from the broker.
    pub fn arrive(&self, room: &str, epoch: &str, message: ChatMessage) -> Arrival {
        let mut rooms = self.rooms();
        match rooms.by_name.get_mut(room) {
            Some(r) => r.arrive(epoch, message),
            None => Arrival::Done,
        }
    }

    /// Where `room` is in its stream, if this instance follows it.
    pub fn position(&self, room: &str) -> Option<StreamPosition> {
        self.rooms().by_name.get(room)?.position.clone()
    }

    /// The stream was read after `from`: delivers what followed it (unless
    /// the room moved meanwhile).
    pub fn fill(&self, room: &str, from: &StreamPosition, messages: Vec<ChatMessage>) -> Arrival {
        let mut rooms = self.rooms();
        match rooms.by_name.get_mut(room) {
            Some(r) if r.position.as_ref() == Some(from) => r.fill(messages),
            Some(r) => r.release(),
            None => Arrival::Done,
        }
    }

    /// Starts `room` over at `top`, telling every connection (see
    /// [`Room::reset`]).
    pub fn reset(
        &self,
        room: &str,
        top: StreamPosition,
        history: Vec<ChatMessage>,
        mut members: Vec<Member>,
    ) -> Arrival {
        sort_members(&mut members);
        let mut rooms = self.rooms();
        match rooms.by_name.get_mut(room) {
            Some(r) if !r.connections.is_empty() => r.reset(room, top, history, members),
            _ => Arrival::Done,
        }
    }

    /// Someone entered or left `room` (told in the next presence frame).
    pub fn presence(&self, room: &str, change: PresenceChange) {
        let mut guard = self.rooms();
        let rooms = &mut *guard;
        let Some(r) = rooms.by_name.get_mut(room) else {
            return;
        };
        if r.connections.is_empty() {
            return;
        }
        let (member, present) = match change {
            PresenceChange::Joined { member } => (member, true),
            PresenceChange::Left { member } => (member, false),
        };
        r.pending.insert(member.id.clone(), (member, present));
        rooms.dirty.insert(room.to_string());
    }

    /// Sends every room's gathered presence changes to its connections.
    /// Called every [`PRESENCE_INTERVAL`].
    pub fn flush_presence(&self) {
        let mut guard = self.rooms();
        let rooms = &mut *guard;
        if rooms.dirty.is_empty() {
            return;
        }
        let timestamp = now_ms();
        for name in std::mem::take(&mut rooms.dirty) {
            let Some(r) = rooms.by_name.get_mut(&name) else {
                continue;
            };
            let (mut joined, mut left) = (Vec::new(), Vec::new());
            for (_, (member, present)) in std::mem::take(&mut r.pending) {
                if present {
                    joined.push(member);
                } else {
                    left.push(member);
                }
            }
            sort_members(&mut joined);
            sort_members(&mut left);
            r.broadcast(&ServerMessage::Presence {
                room: name.clone(),
                joined,
                left,
                timestamp,
            });
        }
    }

    /// The rooms this instance follows (has a connection in).
    pub fn followed(&self) -> Vec<String> {
        self.rooms()
            .by_name
            .iter()
            .filter(|(_, r)| !r.connections.is_empty())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The users with a joined (not joining) connection here, as
    /// `(room, member)`: their presence entries are this instance's to renew.
    pub fn present_here(&self) -> Vec<(String, Member)> {
        let rooms = self.rooms();
        let mut here = Vec::new();
        for (name, r) in &rooms.by_name {
            let mut users: Vec<&User> = r
                .connections
                .values()
                .filter(|c| c.waiting.is_none())
                .map(|c| &c.user)
                .collect();
            users.sort_by(|a, b| a.id.cmp(&b.id));
            users.dedup_by(|a, b| a.id == b.id);
            here.extend(users.into_iter().map(|u| (name.clone(), u.member())));
        }
        here
    }

    /// Drops non-default rooms that have been empty for longer than they may
    /// (a room only its creator ever joined goes sooner), and forgets the
    /// creation limit's state of users who have been quiet. Returns how many
    /// rooms were dropped.
    pub fn sweep(&self) -> usize {
        self.creations.retain_recent();
        self.creations.shrink_to_fit();
        self.creations_per_address.retain_recent();
        self.creations_per_address.shrink_to_fit();
        let mut rooms = self.rooms();
        let before = rooms.by_name.len();
        let idle = self.room_idle;
        rooms.by_name.retain(|name, r| {
            let allowance = if r.visited {
                idle
            } else {
                idle.min(LONELY_ROOM_IDLE)
            };
            DEFAULT_ROOMS.contains(&name.as_str())
                || r.empty_since
                    .is_none_or(|since| since.elapsed() < allowance)
        });
        let after = rooms.by_name.len();
        metrics::set_rooms(after);
        before - after
    }

    /// Number of rooms held.
    pub fn room_count(&self) -> usize {
        self.rooms().by_name.len()
    }

    /// Makes a room look as if it emptied `ago` (for tests of the sweep).
    #[cfg(test)]
    fn emptied(&self, room: &str, ago: Duration) {
        if let Some(r) = self.rooms().by_name.get_mut(room) {
            r.empty_since = Some(Instant::now() - ago);
        }
    }
}

#[cfg(test)]
#[path = "hub_tests.rs"]
mod tests;
