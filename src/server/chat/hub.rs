//! The rooms: who is in which, their history, and delivery to their members.
//!
//! Every change to a room and every delivery from it happens under one lock,
//! so all members see the same order of events (a `joined` reply always comes
//! before the first message that follows the join). Nothing under the lock
//! waits: frames are encoded once and pushed onto each member's bounded queue
//! with `try_send`; a member whose queue is full is marked too slow and its
//! connection closes, so it never holds up the others.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, Utf8Bytes};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::protocol::{
    is_valid_room, ChatMessage, ErrorCode, ServerMessage, DEFAULT_ROOMS, HISTORY_LEN, MAX_ROOM_NAME,
};
use crate::server::broker::{Broker, BusEvent};
use crate::server::feed::now_ms;
use crate::server::metrics;

/// Identifies one WebSocket connection for the life of the process.
pub type ConnId = u64;

/// The sending end of one connection's outbound queue.
#[derive(Clone)]
pub struct Outbox {
    /// Bounded queue drained by the connection's writer task.
    tx: mpsc::Sender<Message>,
    /// Cancelled when the queue overflows: the connection then closes.
    too_slow: CancellationToken,
}

impl Outbox {
    /// A queue of `capacity` frames, with its receiving end.
    pub fn new(capacity: usize) -> (Outbox, mpsc::Receiver<Message>) {
        let (tx, rx) = mpsc::channel(capacity);
        let outbox = Outbox {
            tx,
            too_slow: CancellationToken::new(),
        };
        (outbox, rx)
    }

    /// Queues `frame` without waiting; a full queue marks the client too slow.
    pub fn push(&self, frame: Message) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.too_slow.is_cancelled() {
                    self.too_slow.cancel();
                    metrics::slow_client_dropped();
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queues a server message.
    pub fn send(&self, msg: &ServerMessage) -> bool {
        self.push(encode(msg))
    }

    /// Resolves once the client has been found too slow.
    pub fn too_slow(&self) -> &CancellationToken {
        &self.too_slow
    }
}

/// Encodes a server message as a text frame. The bytes are shared, so the
/// clones sent to each member of a room cost a reference count, not a copy.
pub fn encode(msg: &ServerMessage) -> Message {
    // Serialising these plain structs cannot fail.
    let json = serde_json::to_string(msg).unwrap_or_default();
    Message::Text(Utf8Bytes::from(json))
}

/// An error frame.
pub fn error(code: ErrorCode, message: impl Into<String>) -> ServerMessage {
    ServerMessage::Error {
        code,
        message: message.into(),
        retry_after_ms: None,
    }
}

/// One connection in a room.
struct Member {
    /// Display name, from the connection's token.
    user: Arc<str>,
    /// Where its frames go.
    outbox: Outbox,
}

/// One room.
#[derive(Default)]
struct Room {
    /// The connections in the room.
    members: HashMap<ConnId, Member>,
    /// Connections per display name: a user with two tabs is one member, who
    /// joins with the first and leaves with the last.
    presence: BTreeMap<Arc<str>, usize>,
    /// The latest messages, oldest first.
    history: VecDeque<ChatMessage>,
    /// When the last member left (for dropping idle rooms).
    empty_since: Option<Instant>,
}

impl Room {
    /// Sends `msg` to every member except `skip`; returns how many got it.
    fn broadcast(&self, msg: &ServerMessage, skip: Option<ConnId>) -> u64 {
        let frame = encode(msg);
        let mut delivered = 0;
        for (id, member) in &self.members {
            if Some(*id) != skip && member.outbox.push(frame.clone()) {
                delivered += 1;
            }
        }
        delivered
    }

    fn member_names(&self) -> Vec<String> {
        self.presence.keys().map(|u| u.to_string()).collect()
    }
}

/// Every room of this server.
pub struct Hub {
    /// Rooms by name.
    rooms: Mutex<HashMap<String, Room>>,
    /// Most rooms held at once.
    max_rooms: usize,
    /// How long an empty non-default room is kept.
    room_idle: Duration,
    /// Other instances (a no-op with one instance).
    broker: Broker,
}

/// A room's history and members across instances, read from the broker.
pub type Snapshot = (Vec<ChatMessage>, Vec<String>);

impl Hub {
    /// A hub with the default rooms.
    pub fn new(max_rooms: usize, room_idle: Duration, broker: Broker) -> Self {
        let rooms = DEFAULT_ROOMS
            .iter()
            .map(|name| (name.to_string(), Room::default()))
            .collect();
        metrics::set_rooms(DEFAULT_ROOMS.len());
        Hub {
            rooms: Mutex::new(rooms),
            max_rooms,
            room_idle,
            broker,
        }
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<String, Room>> {
        // A panic elsewhere while holding the lock leaves the map usable.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a connection to `room` (creating it if needed), answers it with
    /// `joined` and tells the others. Joining a room again just answers again.
    /// With several instances, `shared` is the room's history and members
    /// across all of them (read just before).
    pub fn join(
        &self,
        conn: ConnId,
        user: &Arc<str>,
        outbox: &Outbox,
        room: &str,
        shared: Option<Snapshot>,
    ) -> Result<(), ServerMessage> {
        if !is_valid_room(room) {
            return Err(error(
                ErrorCode::InvalidRoom,
                format!("room names are 1-{MAX_ROOM_NAME} characters of a-z, 0-9, - and _"),
            ));
        }
        let mut rooms = self.rooms();
        if !rooms.contains_key(room) {
            if rooms.len() >= self.max_rooms {
                return Err(error(
                    ErrorCode::InvalidRoom,
                    "the server holds as many rooms as it may; join an existing one",
                ));
            }
            rooms.insert(room.to_string(), Room::default());
            metrics::set_rooms(rooms.len());
        }
        let Some(r) = rooms.get_mut(room) else {
            return Ok(());
        };
        let first_of_user = match r.members.entry(conn) {
            Entry::Occupied(_) => false,
            Entry::Vacant(slot) => {
                slot.insert(Member {
                    user: user.clone(),
                    outbox: outbox.clone(),
                });
                r.empty_since = None;
                let count = r.presence.entry(user.clone()).or_insert(0);
                *count += 1;
                *count == 1
            }
        };
        let (history, members) = match shared {
            Some((history, mut members)) => {
                members.extend(r.member_names());
                members.sort();
                members.dedup();
                (history, members)
            }
            None => (r.history.iter().cloned().collect(), r.member_names()),
        };
        outbox.send(&ServerMessage::Joined {
            room: room.to_string(),
            members,
            history,
        });
        if first_of_user {
            let notice = ServerMessage::UserJoined {
                room: room.to_string(),
                user: user.to_string(),
                timestamp: now_ms(),
            };
            r.broadcast(&notice, Some(conn));
            self.broker.presence(room, user, true);
            self.broker.publish(BusEvent::Room {
                room: room.to_string(),
                msg: notice,
            });
        }
        Ok(())
    }

    /// Removes a connection from `room`, answering it with `left`.
    /// Returns false if it was not in the room.
    pub fn leave(&self, conn: ConnId, outbox: &Outbox, room: &str) -> bool {
        let mut rooms = self.rooms();
        let Some(r) = rooms.get_mut(room) else {
            return false;
        };
        if !self.remove_member(r, conn, room) {
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
            if let Some(r) = rooms.get_mut(room.as_str()) {
                self.remove_member(r, conn, room);
            }
        }
    }

    fn remove_member(&self, r: &mut Room, conn: ConnId, room: &str) -> bool {
        let Some(member) = r.members.remove(&conn) else {
            return false;
        };
        let last_of_user = match r.presence.get_mut(&member.user) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            _ => {
                r.presence.remove(&member.user);
                true
            }
        };
        if r.members.is_empty() {
            r.empty_since = Some(Instant::now());
        }
        if last_of_user {
            let notice = ServerMessage::UserLeft {
                room: room.to_string(),
                user: member.user.to_string(),
                timestamp: now_ms(),
            };
            r.broadcast(&notice, None);
            self.broker.presence(room, &member.user, false);
            self.broker.publish(BusEvent::Room {
                room: room.to_string(),
                msg: notice,
            });
        }
        true
    }

    /// Posts `text` by `user` in `room` to every member, the sender included.
    /// Returns false if the connection is not in the room.
    pub fn say(&self, conn: ConnId, user: &str, room: &str, text: &str) -> bool {
        let mut rooms = self.rooms();
        let Some(r) = rooms.get_mut(room) else {
            return false;
        };
        if !r.members.contains_key(&conn) {
            return false;
        }
        let message = ChatMessage {
            room: room.to_string(),
            id: uuid::Uuid::now_v7().simple().to_string(),
            user: user.to_string(),
            text: text.to_string(),
            timestamp: now_ms(),
        };
        if r.history.len() == HISTORY_LEN {
            r.history.pop_front();
        }
        r.history.push_back(message.clone());
        self.broker.push_history(&message);
        let frame = ServerMessage::Message(message);
        let delivered = r.broadcast(&frame, None);
        metrics::messages_delivered(delivered);
        self.broker.publish(BusEvent::Room {
            room: room.to_string(),
            msg: frame,
        });
        true
    }

    /// Delivers a room event from another instance to this one's members (a
    /// message is also kept in the local history, the fallback while the
    /// broker is down).
    pub fn deliver_remote(&self, room: &str, msg: &ServerMessage) {
        let mut rooms = self.rooms();
        let Some(r) = rooms.get_mut(room) else {
            return; // nobody here is in it
        };
        if let ServerMessage::Message(m) = msg {
            if r.history.iter().any(|h| h.id == m.id) {
                return;
            }
            if r.history.len() == HISTORY_LEN {
                r.history.pop_front();
            }
            r.history.push_back(m.clone());
        }
        let delivered = r.broadcast(msg, None);
        if matches!(msg, ServerMessage::Message(_)) {
            metrics::messages_delivered(delivered);
        }
    }

    /// This instance's present users as `(room, user)`.
    pub fn local_presence(&self) -> Vec<(String, String)> {
        self.rooms()
            .iter()
            .flat_map(|(name, r)| {
                r.presence
                    .keys()
                    .map(move |u| (name.clone(), u.to_string()))
            })
            .collect()
    }

    /// Drops non-default rooms that have been empty for longer than the idle
    /// time. Returns how many were dropped.
    pub fn sweep(&self) -> usize {
        let mut rooms = self.rooms();
        let before = rooms.len();
        let idle = self.room_idle;
        rooms.retain(|name, r| {
            DEFAULT_ROOMS.contains(&name.as_str())
                || r.empty_since.is_none_or(|since| since.elapsed() < idle)
        });
        metrics::set_rooms(rooms.len());
        before - rooms.len()
    }

    /// Number of rooms held.
    pub fn room_count(&self) -> usize {
        self.rooms().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next(rx: &mut mpsc::Receiver<Message>) -> ServerMessage {
        match rx.try_recv() {
            Ok(Message::Text(t)) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    #[test]
    fn presence_counts_users_not_connections() {
        let hub = Hub::new(10, Duration::from_secs(60), Broker::local());
        let ada: Arc<str> = Arc::from("Ada");
        let (o1, mut r1) = Outbox::new(16);
        let (o2, mut r2) = Outbox::new(16);
        hub.join(1, &ada, &o1, "tech", None).unwrap();
        assert!(
            matches!(next(&mut r1), ServerMessage::Joined { members, .. } if members == ["Ada"])
        );
        hub.join(2, &ada, &o2, "tech", None).unwrap();
        // Same user, second tab: no "user-joined" to the first.
        assert!(matches!(next(&mut r2), ServerMessage::Joined { .. }));
        assert!(r1.try_recv().is_err());
        hub.disconnect(2, &["tech".to_string()]);
        assert!(r1.try_recv().is_err(), "Ada is still there");
    }

    #[test]
    fn history_is_bounded_and_idle_rooms_go() {
        let hub = Hub::new(10, Duration::ZERO, Broker::local());
        let u: Arc<str> = Arc::from("u");
        let (o, _r) = Outbox::new(1024);
        hub.join(1, &u, &o, "x", None).unwrap();
        for i in 0..(HISTORY_LEN + 5) {
            assert!(hub.say(1, "u", "x", &i.to_string()));
        }
        let len = hub.rooms().get("x").map(|r| r.history.len());
        assert_eq!(len, Some(HISTORY_LEN));
        assert!(hub.leave(1, &o, "x"));
        assert_eq!(hub.sweep(), 1);
        assert_eq!(hub.room_count(), DEFAULT_ROOMS.len());
    }

    #[test]
    fn a_full_queue_marks_the_member_too_slow_without_blocking() {
        let hub = Hub::new(10, Duration::from_secs(60), Broker::local());
        let u: Arc<str> = Arc::from("u");
        let (slow, _keep) = Outbox::new(1);
        let (fast, mut fast_rx) = Outbox::new(1024);
        hub.join(1, &u, &slow, "general", None).unwrap();
        hub.join(2, &u, &fast, "general", None).unwrap();
        for _ in 0..10 {
            hub.say(2, "u", "general", "hi");
        }
        assert!(slow.too_slow().is_cancelled());
        let mut got = 0;
        while fast_rx.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, 11, "joined + 10 messages");
    }
}
