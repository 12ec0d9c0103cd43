//! The rooms: who is in which, their history, and delivery to their members.
//!
//! Every change to a room and every delivery from it happens under one lock,
//! so all members see the same order of events (a `joined` reply always comes
//! before the first message that follows the join). Nothing under the lock
//! waits: frames are encoded once and pushed onto each member's queue, which
//! is bounded in bytes; a member whose queue is over its bound is marked too
//! slow and its connection closes, so it never holds up the others.
//!
//! Who enters and leaves is not told one by one: changes gather per room and
//! go out as one `presence` frame every [`PRESENCE_INTERVAL`], so a crowd of
//! N joining at once costs each member O(N) bytes, not N frames.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::outbox::{encode, error, rate_limited, Outbox};
use crate::protocol::{
    is_valid_room, ChatMessage, ErrorCode, Member, ServerMessage, DEFAULT_ROOMS, HISTORY_LEN,
    MAX_ROOM_NAME,
};
use crate::server::clock::now_ms;
use crate::server::metrics;

/// Identifies one WebSocket connection for the life of the process.
pub type ConnId = u64;

/// How often gathered presence changes are sent.
pub const PRESENCE_INTERVAL: Duration = Duration::from_millis(100);

/// Bytes of message text (and authors' names) a room keeps in its history,
/// besides the count bound: a room of long messages keeps fewer.
pub const HISTORY_BYTES: usize = 32 * 1024;

/// How soon a room that nobody but its creator ever joined is dropped once
/// empty: a user who creates rooms and leaves them cannot fill the server.
pub const LONELY_ROOM_IDLE: Duration = Duration::from_secs(60);

/// Who a connection belongs to, from its token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The user's id: every limit and presence entry is keyed by it.
    pub id: Arc<str>,
    /// Their display name: only shown.
    pub name: Arc<str>,
}

impl User {
    /// The user as a room member.
    pub fn member(&self) -> Member {
        Member {
            id: self.id.to_string(),
            name: self.name.to_string(),
        }
    }
}

/// One connection in a room.
struct Connection {
    /// Whose it is.
    user: User,
    /// Where its frames go.
    outbox: Outbox,
}

/// One room.
#[derive(Default)]
struct Room {
    /// The connections in the room.
    connections: HashMap<ConnId, Connection>,
    /// Connections per user id, with the user's name: a user with two tabs
    /// is one member, who joins with the first and leaves with the last.
    presence: BTreeMap<Arc<str>, (Arc<str>, usize)>,
    /// Presence changes not yet sent: each user's latest state (true: in).
    pending: BTreeMap<Arc<str>, (Member, bool)>,
    /// The latest messages, oldest first.
    history: VecDeque<ChatMessage>,
    /// Bytes of text and names in `history`.
    history_bytes: usize,
    /// When the last member left (for dropping idle rooms).
    empty_since: Option<Instant>,
    /// Who created the room (`None` for the default rooms).
    creator: Option<Arc<str>>,
    /// Whether anyone but its creator ever joined.
    visited: bool,
}

impl Room {
    /// Sends `msg` to every connection except `skip`; returns how many got it.
    fn broadcast(&self, msg: &ServerMessage, skip: Option<ConnId>) -> u64 {
        let frame = encode(msg);
        let mut delivered = 0;
        for (id, conn) in &self.connections {
            if Some(*id) != skip && conn.outbox.push(frame.clone()) {
                delivered += 1;
            }
        }
        delivered
    }

    fn members(&self) -> Vec<Member> {
        self.presence
            .iter()
            .map(|(id, (name, _))| Member {
                id: id.to_string(),
                name: name.to_string(),
            })
            .collect()
    }

    /// Keeps `m` in the history, within its count and byte bounds; false if
    /// it is there already (a message that came back over the bus).
    fn remember(&mut self, m: &ChatMessage) -> bool {
        if self.history.iter().any(|h| h.id == m.id) {
            return false;
        }
        self.history_bytes += history_bytes(m);
        self.history.push_back(m.clone());
        while self.history.len() > HISTORY_LEN || self.history_bytes > HISTORY_BYTES {
            let Some(gone) = self.history.pop_front() else {
                break;
            };
            self.history_bytes -= history_bytes(&gone);
        }
        true
    }

    /// How long the room may stay empty before it is dropped.
    fn idle_allowance(&self, room_idle: Duration) -> Duration {
        if self.visited {
            room_idle
        } else {
            room_idle.min(LONELY_ROOM_IDLE)
        }
    }
}

/// What a message counts for in a history's byte bound.
fn history_bytes(m: &ChatMessage) -> usize {
    m.text.len() + m.user.len() + m.user_id.len() + m.id.len() + m.room.len()
}

/// Sorts members by name then id, each user once.
fn sort_members(members: &mut Vec<Member>) {
    members.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    members.dedup_by(|a, b| a.id == b.id);
}

/// The rooms and the presence changes not yet sent, under one lock.
#[derive(Default)]
struct Rooms {
    /// Rooms by name.
    by_name: HashMap<String, Room>,
    /// Rooms with presence changes to send.
    dirty: BTreeSet<String>,
}

/// Every room of this server.
pub struct Hub {
    /// The rooms.
    rooms: Mutex<Rooms>,
    /// Most rooms held at once.
    max_rooms: usize,
    /// How long an empty non-default room is kept.
    room_idle: Duration,
    /// Rooms each user may create, per hour.
    creations: DefaultKeyedRateLimiter<Arc<str>>,
}

/// A room's history and members across instances, read from Redis.
pub type Snapshot = (Vec<ChatMessage>, Vec<Member>);

impl Hub {
    /// A hub with the default rooms.
    pub fn new(max_rooms: usize, room_idle: Duration, rooms_per_user_per_hour: u32) -> Self {
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
            max_rooms,
            room_idle,
            creations: RateLimiter::keyed(Quota::per_hour(per_hour)),
        }
    }

    fn rooms(&self) -> MutexGuard<'_, Rooms> {
        // A panic elsewhere while holding the lock leaves the map usable.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a connection to `room` (creating it if needed, within the limits)
    /// and answers it with `joined`; the others hear of it in the next
    /// `presence` frame. A connection already in the room is answered again,
    /// without the history it has. With several instances, `shared` is the
    /// room's history and members across all of them (read just before).
    pub fn join(
        &self,
        conn: ConnId,
        user: &User,
        outbox: &Outbox,
        room: &str,
        shared: Option<Snapshot>,
    ) -> Result<(), Box<ServerMessage>> {
        if !is_valid_room(room) {
            return Err(Box::new(error(
                ErrorCode::InvalidRoom,
                format!("room names are 1-{MAX_ROOM_NAME} characters of a-z, 0-9, - and _"),
            )));
        }
        let mut guard = self.rooms();
        let rooms = &mut *guard;
        if !rooms.by_name.contains_key(room) {
            if rooms.by_name.len() >= self.max_rooms {
                return Err(Box::new(error(
                    ErrorCode::InvalidRoom,
                    "the server holds as many rooms as it may; join an existing one",
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
            return Ok(());
        };
        let already_in = match r.connections.entry(conn) {
            Entry::Occupied(_) => true,
            Entry::Vacant(slot) => {
                slot.insert(Connection {
                    user: user.clone(),
                    outbox: outbox.clone(),
                });
                r.empty_since = None;
                if r.creator.as_ref() != Some(&user.id) {
                    r.visited = true;
                }
                let (_, count) = r
                    .presence
                    .entry(user.id.clone())
                    .or_insert_with(|| (user.name.clone(), 0));
                *count += 1;
                if *count == 1 {
                    r.pending.insert(user.id.clone(), (user.member(), true));
                    rooms.dirty.insert(room.to_string());
                }
                false
            }
        };
        let (history, mut members) = match shared {
            Some((history, mut members)) => {
                members.extend(r.members());
                (history, members)
            }
            // Copied only for a connection new to the room: one already in
            // it has the history.
            None if already_in => (Vec::new(), r.members()),
            None => (r.history.iter().cloned().collect(), r.members()),
        };
        sort_members(&mut members);
        outbox.send(&ServerMessage::Joined {
            room: room.to_string(),
            members,
            history: if already_in { Vec::new() } else { history },
        });
        Ok(())
    }

    /// Removes a connection from `room`, answering it with `left`.
    /// Returns false if it was not in the room.
    pub fn leave(&self, conn: ConnId, outbox: &Outbox, room: &str) -> bool {
        let mut rooms = self.rooms();
        if !self.remove(&mut rooms, conn, room) {
            return false;
        }
        outbox.send(&ServerMessage::Left {
            room: room.to_string(),
        });
        true
    }

    /// Removes a connection that went away from all its rooms.
    pub fn disconnect<'a>(&self, conn: ConnId, joined: impl IntoIterator<Item = &'a String>) {
        let mut rooms = self.rooms();
        for room in joined {
            self.remove(&mut rooms, conn, room);
        }
    }

    fn remove(&self, rooms: &mut Rooms, conn: ConnId, room: &str) -> bool {
        let Some(r) = rooms.by_name.get_mut(room) else {
            return false;
        };
        let Some(gone) = r.connections.remove(&conn) else {
            return false;
        };
        let last_of_user = match r.presence.get_mut(&gone.user.id) {
            Some((_, count)) if *count > 1 => {
                *count -= 1;
                false
            }
            _ => {
                r.presence.remove(&gone.user.id);
                true
            }
        };
        if r.connections.is_empty() {
            r.empty_since = Some(Instant::now());
        }
        if last_of_user {
            r.pending
                .insert(gone.user.id.clone(), (gone.user.member(), false));
            rooms.dirty.insert(room.to_string());
        }
        true
    }

    /// Sends every room's gathered presence changes to its members, and
    /// returns them as `(room, frame)` for the other instances. Called every
    /// [`PRESENCE_INTERVAL`].
    pub fn flush_presence(&self) -> Vec<(String, ServerMessage)> {
        let mut guard = self.rooms();
        let rooms = &mut *guard;
        let mut frames = Vec::new();
        if rooms.dirty.is_empty() {
            return frames;
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
            let frame = ServerMessage::Presence {
                room: name.clone(),
                joined,
                left,
                timestamp,
            };
            r.broadcast(&frame, None);
            frames.push((name, frame));
        }
        frames
    }

    /// Posts `text` by `user` in `room` to every member, the sender
    /// included, and returns the message (`None` if the connection is not
    /// in the room).
    pub fn say(&self, conn: ConnId, user: &User, room: &str, text: &str) -> Option<ChatMessage> {
        let mut rooms = self.rooms();
        let r = rooms.by_name.get_mut(room)?;
        if !r.connections.contains_key(&conn) {
            return None;
        }
        let message = ChatMessage {
            room: room.to_string(),
            id: uuid::Uuid::now_v7().simple().to_string(),
            user_id: user.id.to_string(),
            user: user.name.to_string(),
            text: text.to_string(),
            timestamp: now_ms(),
        };
        r.remember(&message);
        let delivered = r.broadcast(&ServerMessage::Message(message.clone()), None);
        metrics::messages_delivered(delivered);
        Some(message)
    }

    /// Delivers a room event from another instance to this one's members (a
    /// message is also kept in the local history, the fallback while Redis
    /// is down).
    pub fn deliver_remote(&self, room: &str, msg: &ServerMessage) {
        let mut rooms = self.rooms();
        let Some(r) = rooms.by_name.get_mut(room) else {
            return; // nobody here is in it
        };
        if let ServerMessage::Message(m) = msg {
            if !r.remember(m) {
                return;
            }
        }
        let delivered = r.broadcast(msg, None);
        if matches!(msg, ServerMessage::Message(_)) {
            metrics::messages_delivered(delivered);
        }
    }

    /// This instance's present users as `(room, member)`.
    pub fn local_presence(&self) -> Vec<(String, Member)> {
        self.rooms()
            .by_name
            .iter()
            .flat_map(|(name, r)| r.members().into_iter().map(move |m| (name.clone(), m)))
            .collect()
    }

    /// Drops non-default rooms that have been empty for longer than they may
    /// (a room only its creator ever joined goes sooner), and forgets the
    /// creation limit's state of users who have been quiet. Returns how many
    /// rooms were dropped.
    pub fn sweep(&self) -> usize {
        self.creations.retain_recent();
        self.creations.shrink_to_fit();
        let mut rooms = self.rooms();
        let before = rooms.by_name.len();
        let idle = self.room_idle;
        rooms.by_name.retain(|name, r| {
            DEFAULT_ROOMS.contains(&name.as_str())
                || r.empty_since
                    .is_none_or(|since| since.elapsed() < r.idle_allowance(idle))
        });
        let after = rooms.by_name.len();
        metrics::set_rooms(after);
        before - after
    }

    /// Number of rooms held.
    pub fn room_count(&self) -> usize {
        self.rooms().by_name.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::outbox::Queue;
    use super::*;
    use axum::extract::ws::Message;

    fn next(q: &mut Queue) -> ServerMessage {
        match q.try_recv() {
            Some(Message::Text(t)) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    fn user(id: &str, name: &str) -> User {
        User {
            id: Arc::from(id),
            name: Arc::from(name),
        }
    }

    fn hub(idle: Duration) -> Hub {
        Hub::new(10, idle, 20)
    }

    #[test]
    fn presence_counts_users_not_connections_and_is_sent_gathered() {
        let hub = hub(Duration::from_secs(60));
        let ada = user("a1", "Ada");
        let (o1, mut r1) = Outbox::new(1 << 20);
        let (o2, mut r2) = Outbox::new(1 << 20);
        hub.join(1, &ada, &o1, "tech", None).unwrap();
        match next(&mut r1) {
            ServerMessage::Joined { members, .. } => assert_eq!(members, [ada.member()]),
            other => panic!("{other:?}"),
        }
        hub.join(2, &ada, &o2, "tech", None).unwrap();
        assert!(matches!(next(&mut r2), ServerMessage::Joined { .. }));
        // Nothing is told until the flush, then one frame with Ada in it.
        assert!(r1.try_recv().is_none());
        hub.flush_presence();
        match next(&mut r1) {
            ServerMessage::Presence { joined, left, .. } => {
                assert_eq!(joined, [ada.member()]);
                assert!(left.is_empty());
            }
            other => panic!("{other:?}"),
        }
        // Same user, second tab gone: Ada is still there, nothing to tell.
        hub.disconnect(2, &["tech".to_string()]);
        hub.flush_presence();
        assert!(r1.try_recv().is_none(), "Ada is still there");
        // Her last connection gone: she has left.
        hub.disconnect(1, &["tech".to_string()]);
        let (o3, mut r3) = Outbox::new(1 << 20);
        hub.join(3, &user("b1", "Bob"), &o3, "tech", None).unwrap();
        let _ = next(&mut r3);
        hub.flush_presence();
        match next(&mut r3) {
            ServerMessage::Presence { joined, left, .. } => {
                assert_eq!(left, [ada.member()]);
                assert_eq!(joined.len(), 1, "Bob himself");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn two_users_with_one_name_are_two_members() {
        let hub = hub(Duration::from_secs(60));
        let (o1, mut r1) = Outbox::new(1 << 20);
        let (o2, _r2) = Outbox::new(1 << 20);
        hub.join(1, &user("a1", "Ada"), &o1, "tech", None).unwrap();
        hub.join(2, &user("a2", "Ada"), &o2, "tech", None).unwrap();
        let _ = next(&mut r1);
        hub.flush_presence();
        match next(&mut r1) {
            ServerMessage::Presence { joined, .. } => {
                let ids: Vec<_> = joined.iter().map(|m| m.id.as_str()).collect();
                assert_eq!(ids, ["a1", "a2"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejoining_does_not_resend_history() {
        let hub = hub(Duration::from_secs(60));
        let u = user("u", "U");
        let (o, mut q) = Outbox::new(1 << 20);
        hub.join(1, &u, &o, "x", None).unwrap();
        hub.say(1, &u, "x", "hello");
        while q.try_recv().is_some() {}
        hub.join(1, &u, &o, "x", None).unwrap();
        match next(&mut q) {
            ServerMessage::Joined {
                history, members, ..
            } => {
                assert!(history.is_empty());
                assert_eq!(members.len(), 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn history_is_bounded_in_count_and_bytes() {
        let hub = hub(Duration::ZERO);
        let u = user("u", "u");
        let (o, _q) = Outbox::new(usize::MAX);
        hub.join(1, &u, &o, "x", None).unwrap();
        for i in 0..(HISTORY_LEN + 5) {
            assert!(hub.say(1, &u, "x", &i.to_string()).is_some());
        }
        let len = hub.rooms().by_name.get("x").map(|r| r.history.len());
        assert_eq!(len, Some(HISTORY_LEN));
        for _ in 0..HISTORY_LEN {
            hub.say(1, &u, "x", &"y".repeat(2000));
        }
        let rooms = hub.rooms();
        let r = &rooms.by_name["x"];
        assert!(r.history_bytes <= HISTORY_BYTES, "{}", r.history_bytes);
        assert!(r.history.len() < HISTORY_LEN);
    }

    #[test]
    fn idle_rooms_go_and_room_creation_is_limited_per_user() {
        let hub = Hub::new(100, Duration::ZERO, 2);
        let u = user("u", "u");
        let (o, _q) = Outbox::new(usize::MAX);
        hub.join(1, &u, &o, "a", None).unwrap();
        hub.join(1, &u, &o, "b", None).unwrap();
        let refused = hub.join(1, &u, &o, "c", None).unwrap_err();
        assert!(matches!(
            *refused,
            ServerMessage::Error {
                code: ErrorCode::RateLimited,
                retry_after_ms: Some(_),
                ..
            }
        ));
        // Another user is not affected; joining existing rooms never is.
        hub.join(2, &user("v", "v"), &o, "c", None).unwrap();
        hub.join(1, &u, &o, "c", None).unwrap();
        assert!(hub.leave(1, &o, "a"));
        assert_eq!(hub.sweep(), 1);
    }

    #[test]
    fn a_room_only_its_creator_joined_goes_sooner() {
        let hub = Hub::new(100, Duration::from_secs(300), 20);
        let (ada, bob) = (user("a", "Ada"), user("b", "Bob"));
        let (o, _q) = Outbox::new(usize::MAX);
        hub.join(1, &ada, &o, "lonely", None).unwrap();
        hub.join(1, &ada, &o, "visited", None).unwrap();
        hub.join(2, &bob, &o, "visited", None).unwrap();
        hub.disconnect(1, &["lonely".to_string(), "visited".to_string()]);
        hub.disconnect(2, &["visited".to_string()]);
        // Both emptied a bit over a minute ago.
        let then = Instant::now() - LONELY_ROOM_IDLE - Duration::from_secs(1);
        for r in hub.rooms().by_name.values_mut() {
            if r.empty_since.is_some() {
                r.empty_since = Some(then);
            }
        }
        assert_eq!(hub.sweep(), 1);
        let rooms = hub.rooms();
        assert!(!rooms.by_name.contains_key("lonely"));
        assert!(
            rooms.by_name.contains_key("visited"),
            "kept for PULSE_ROOM_IDLE"
        );
    }

    #[test]
    fn a_full_queue_marks_the_member_too_slow_without_blocking() {
        let hub = hub(Duration::from_secs(60));
        let u = user("u", "u");
        let (slow, _keep) = Outbox::new(1024);
        let (fast, mut fast_rx) = Outbox::new(1 << 20);
        hub.join(1, &u, &slow, "general", None).unwrap();
        hub.join(2, &u, &fast, "general", None).unwrap();
        for _ in 0..10 {
            hub.say(2, &u, "general", &"hi".repeat(100));
        }
        assert!(slow.too_slow().is_cancelled());
        let mut got = 0;
        while fast_rx.try_recv().is_some() {
            got += 1;
        }
        assert_eq!(got, 11, "joined + 10 messages");
        assert_eq!(fast_rx.queued_bytes(), 0, "bytes given back");
    }
}
