//! What the Chat and Rooms pages show, as signals, and how what the
//! connection sees changes it: each room's members and its stream on
//! screen (messages in offset order, each once; join and leave notices;
//! "Some messages may be missing" where a rejoin could not recover).

use std::collections::BTreeMap;

use leptos::prelude::*;

use crate::client::chat_link::Seen;
use crate::protocol::{user_tag, ChatMessage, Member, ServerMessage};
use crate::session::Session;

/// Most entries kept per room on screen.
const MAX_ENTRIES: usize = 200;

/// One line of a room's stream on screen.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Unique key: the message id, or a local one for notices.
    pub key: String,
    /// Server time, ms since the epoch.
    pub timestamp: u64,
    /// What it is.
    pub kind: EntryKind,
}

/// A message or a notice.
#[derive(Clone, Debug, PartialEq)]
pub enum EntryKind {
    /// Someone said something.
    Message {
        /// Its stream's epoch.
        epoch: String,
        /// Its offset there.
        offset: u64,
        /// Author's display name.
        user: String,
        /// The tag that tells authors of one name apart.
        tag: String,
        /// Text (always rendered as text).
        text: String,
    },
    /// Someone joined or left.
    Notice(String),
    /// Messages may be missing here (a rejoin could not recover them all).
    Missing,
}

/// What the page knows of one joined room.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoomView {
    /// Members, sorted by name then id.
    pub members: Vec<Member>,
    /// Messages and notices, in order.
    pub entries: Vec<Entry>,
    /// The epoch of the room's stream the latest messages are from.
    pub epoch: String,
}

impl RoomView {
    /// Shows `m` (of the current epoch) at its offset; once.
    fn add_message(&mut self, m: ChatMessage) {
        if self.entries.iter().any(|e| e.key == m.id) {
            return; // shown already (history after a rejoin)
        }
        let epoch = self.epoch.clone();
        // After the last entry that comes before it: a notice, a message of
        // another epoch, or one of a lower offset.
        let at = self
            .entries
            .iter()
            .rposition(|e| match &e.kind {
                EntryKind::Message {
                    epoch: of, offset, ..
                } => *of != epoch || *offset < m.offset,
                _ => true,
            })
            .map_or(0, |i| i + 1);
        let entry = Entry {
            key: m.id,
            timestamp: m.timestamp,
            kind: EntryKind::Message {
                epoch,
                offset: m.offset,
                tag: user_tag(&m.user_id),
                user: m.user,
                text: m.text,
            },
        };
        self.entries.insert(at, entry);
        self.trim();
    }

    fn add(&mut self, key: String, timestamp: u64, kind: EntryKind) {
        self.entries.push(Entry {
            key,
            timestamp,
            kind,
        });
        self.trim();
    }

    fn trim(&mut self) {
        let excess = self.entries.len().saturating_sub(MAX_ENTRIES);
        self.entries.drain(..excess);
    }

    /// The offsets of the messages shown, in order (for tests).
    pub fn offsets(&self) -> Vec<u64> {
        self.entries
            .iter()
            .filter_map(|e| match e.kind {
                EntryKind::Message { offset, .. } => Some(offset),
                _ => None,
            })
            .collect()
    }
}

/// Everything the chat pages render, as signals.
#[derive(Clone, Copy)]
pub struct ChatState {
    /// The signed-in user; `None` shows the sign-in form.
    pub session: RwSignal<Option<Session>>,
    /// Joined rooms by name.
    pub rooms: RwSignal<BTreeMap<String, RoomView>>,
    /// The last error the server reported (or the composer's), shown until
    /// the next action.
    pub error: RwSignal<Option<String>>,
    /// Set by signing in here, so the composer takes the focus.
    pub just_signed_in: RwSignal<bool>,
    /// Keys for notices.
    next_notice: StoredValue<u64>,
}

impl ChatState {
    /// The state of a page whose visitor has `session`.
    pub fn new(session: Option<Session>) -> Self {
        ChatState {
            session: RwSignal::new(session),
            rooms: RwSignal::new(BTreeMap::new()),
            error: RwSignal::new(None),
            just_signed_in: RwSignal::new(false),
            next_notice: StoredValue::new(0),
        }
    }

    fn notice_key(&self) -> String {
        let key = self.next_notice.get_value();
        self.next_notice.set_value(key + 1);
        format!("notice-{key}")
    }

    /// Applies what the connection saw.
    pub fn apply(&self, seen: Seen) {
        match seen {
            Seen::Missing { room } => {
                let key = self.notice_key();
                self.rooms.update(|rooms| {
                    if let Some(view) = rooms.get_mut(&room) {
                        let at = view.entries.last().map_or(0, |e| e.timestamp);
                        view.add(key, at, EntryKind::Missing);
                    }
                });
            }
            Seen::Frame(msg) => self.apply_frame(msg),
        }
    }

    fn apply_frame(&self, msg: ServerMessage) {
        match msg {
            ServerMessage::Joined {
                room,
                members,
                history,
                epoch,
                ..
            } => self.rooms.update(|rooms| {
                let view = rooms.entry(room).or_default();
                // The list after a rejoin replaces the one before.
                view.members = members;
                view.epoch = epoch;
                for m in history {
                    view.add_message(m);
                }
            }),
            ServerMessage::Presence {
                room,
                joined,
                left,
                timestamp,
            } => {
                let keys = [self.notice_key(), self.notice_key()];
                self.rooms.update(|rooms| {
                    let Some(view) = rooms.get_mut(&room) else {
                        return;
                    };
                    // Only real changes are told: a change may repeat what
                    // the `joined` answer already listed.
                    let came: Vec<Member> = joined
                        .into_iter()
                        .filter(|m| !view.members.iter().any(|x| x.id == m.id))
                        .collect();
                    let went: Vec<Member> = left
                        .into_iter()
                        .filter(|m| view.members.iter().any(|x| x.id == m.id))
                        .collect();
                    view.members.retain(|x| !went.iter().any(|m| m.id == x.id));
                    view.members.extend(came.iter().cloned());
                    view.members
                        .sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
                    for ((who, verb), key) in
                        [(&came, "joined"), (&went, "left")].into_iter().zip(keys)
                    {
                        if !who.is_empty() {
                            let text = format!("{} {verb}", names(who));
                            view.add(key, timestamp, EntryKind::Notice(text));
                        }
                    }
                });
            }
            ServerMessage::Message(m) => self.rooms.update(|rooms| {
                if let Some(view) = rooms.get_mut(&m.room) {
                    view.add_message(m);
                }
            }),
            ServerMessage::Left { room } => self.rooms.update(|rooms| {
                rooms.remove(&room);
            }),
            ServerMessage::Error { message, .. } => self.error.set(Some(message)),
            // The connection's own business.
            ServerMessage::Ack { .. }
            | ServerMessage::Nack { .. }
            | ServerMessage::Health { .. }
            | ServerMessage::Pong { .. }
            | ServerMessage::Hello { .. }
            | ServerMessage::Closed { .. } => {}
        }
    }
}

/// "Ada #3f9c", "Ada #3f9c and Bob #0a1b", "Ada #3f9c, Bob #0a1b and 3 others".
fn names(members: &[Member]) -> String {
    let shown: Vec<String> = members
        .iter()
        .take(2)
        .map(|m| format!("{} {}", m.name, user_tag(&m.id)))
        .collect();
    match members.len() {
        0 => String::new(),
        1 => shown[0].clone(),
        2 => format!("{} and {}", shown[0], shown[1]),
        n => format!("{}, {} and {} others", shown[0], shown[1], n - 2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(offset: u64) -> ChatMessage {
        ChatMessage {
            room: "r".into(),
            offset,
            id: format!("m{offset}"),
            user_id: "u".into(),
            user: "U".into(),
            text: format!("t{offset}"),
            timestamp: offset,
            client_id: None,
        }
    }

    #[test]
    fn messages_show_once_in_offset_order_and_a_gap_notice_stays_where_it_was() {
        let mut view = RoomView {
            epoch: "e".into(),
            ..RoomView::default()
        };
        for o in [1, 3, 2, 3] {
            view.add_message(message(o));
        }
        assert_eq!(view.offsets(), [1, 2, 3], "sorted, de-duplicated");
        view.add("n".into(), 3, EntryKind::Missing);
        for o in [2, 9, 10] {
            view.add_message(message(o));
        }
        let kinds: Vec<bool> = view
            .entries
            .iter()
            .map(|e| e.kind == EntryKind::Missing)
            .collect();
        assert_eq!(kinds, [false, false, false, true, false, false]);
        assert_eq!(view.offsets(), [1, 2, 3, 9, 10]);
        // A new epoch starts after everything shown.
        view.epoch = "f".into();
        let mut m = message(1);
        m.id = "f1".into();
        view.add_message(m);
        assert_eq!(view.offsets(), [1, 2, 3, 9, 10, 1]);
    }
}
