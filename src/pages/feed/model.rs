//! What the Feed page shows, as plain data: the newest rows, the latest
//! notifications, the sparkline's values, and the rules by which events
//! arriving from the stream (possibly again, after a reconnect) change it.
//!
//! The list holds events of the feed only, newest first: the connection's
//! state is the badge's to show.

use crate::protocol::{user_tag, FeedEvent, FeedItem, RECENT_NOTIFICATIONS};

/// Events shown at once.
pub const ROWS: usize = 10;
/// Notifications shown at once.
pub const NOTES: usize = RECENT_NOTIFICATIONS;
/// Values drawn in the sparkline.
pub const SPARK_POINTS: usize = 30;

/// One line of the event list.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Unique within the page, for keyed rendering.
    pub key: u64,
    /// The event's SSE id, for updates.
    pub id: Option<u64>,
    /// When it happened (ms since the epoch); `None` for a gap, which
    /// happened between the rows around it.
    pub timestamp: Option<u64>,
    /// The event.
    pub event: FeedEvent,
}

/// A notification as shown.
#[derive(Clone, Debug, PartialEq)]
pub struct Note {
    /// The notification's own id.
    pub id: String,
    /// The author's display name.
    pub user: String,
    /// The tag that tells authors of the same name apart.
    pub tag: String,
    /// What they said.
    pub text: String,
    /// When (ms since the epoch).
    pub timestamp: u64,
}

/// The page's data.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FeedModel {
    /// Newest first, at most [`ROWS`].
    pub rows: Vec<Row>,
    /// Newest first, at most [`NOTES`].
    pub notes: Vec<Note>,
    /// Oldest first, at most [`SPARK_POINTS`].
    pub values: Vec<f64>,
    /// Id of the newest event received: the stream resumes after it.
    pub last_id: Option<u64>,
    /// Next row key.
    next_key: u64,
}

impl FeedModel {
    /// The page as the server rendered it from `initial` (oldest first).
    pub fn new(initial: &[FeedItem]) -> FeedModel {
        let mut model = FeedModel::default();
        for item in initial {
            model.show(Some(item.id), item.event.clone());
        }
        model.last_id = initial.last().map(|item| item.id);
        model
    }

    /// Applies an event from the stream: `last_event_id` is what the browser
    /// reported with it, `now` the local time (ms). Returns false for an
    /// event already shown (the stream replays around a reconnect).
    pub fn receive(&mut self, event: FeedEvent, last_event_id: &str) -> bool {
        let id = match event {
            // `lastEventId` of an event without `id:` repeats the previous
            // id, so only events that carry one are numbered.
            FeedEvent::Update { .. } | FeedEvent::Notification { .. } => {
                last_event_id.parse::<u64>().ok()
            }
            FeedEvent::Gap => {
                // Ids after a gap may come from a new sequence.
                self.last_id = None;
                None
            }
            // The connection's state, not events of the feed.
            FeedEvent::Connected { .. } | FeedEvent::Health { .. } => return false,
        };
        if let Some(id) = id {
            if self.last_id.is_some_and(|last| id <= last) {
                return false;
            }
            self.last_id = Some(id);
        }
        self.show(id, event);
        true
    }

    fn show(&mut self, id: Option<u64>, event: FeedEvent) {
        if let FeedEvent::Notification {
            id,
            user_id,
            user,
            text,
            timestamp,
        } = &event
        {
            // The id is the notification's own: the same one may come from
            // two instances around a reconnect.
            if !self.notes.iter().any(|n| &n.id == id) {
                self.notes.insert(
                    0,
                    Note {
                        id: id.clone(),
                        user: user.clone(),
                        tag: user_tag(user_id),
                        text: text.clone(),
                        timestamp: *timestamp,
                    },
                );
                self.notes.truncate(NOTES);
            }
            return;
        }
        if let FeedEvent::Update { value, .. } = event {
            self.values.push(value);
            let excess = self.values.len().saturating_sub(SPARK_POINTS);
            self.values.drain(..excess);
        }
        self.next_key += 1;
        let timestamp = timestamp_of(&event);
        self.rows.insert(
            0,
            Row {
                key: self.next_key,
                id,
                timestamp,
                event,
            },
        );
        self.rows.truncate(ROWS);
    }
}

/// When `event` happened, if it says.
fn timestamp_of(event: &FeedEvent) -> Option<u64> {
    match event {
        FeedEvent::Connected { timestamp }
        | FeedEvent::Update { timestamp, .. }
        | FeedEvent::Notification { timestamp, .. } => Some(*timestamp),
        FeedEvent::Gap | FeedEvent::Health { .. } => None,
    }
}

/// The kind of `event`, as the list labels it.
pub fn event_kind(event: &FeedEvent) -> &'static str {
    match event {
        FeedEvent::Connected { .. } => "connected",
        FeedEvent::Update { .. } => "update",
        FeedEvent::Gap => "gap",
        FeedEvent::Notification { .. } => "notification",
        FeedEvent::Health { .. } => "health",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(ts: u64) -> FeedEvent {
        FeedEvent::Update {
            timestamp: ts,
            value: 0.5,
        }
    }

    #[test]
    fn replayed_events_are_shown_once_and_rows_are_bounded() {
        let initial: Vec<FeedItem> = (1..=3)
            .map(|id| FeedItem {
                id,
                event: update(id),
            })
            .collect();
        let mut m = FeedModel::new(&initial);
        assert_eq!(m.rows.len(), 3);
        assert_eq!(m.last_id, Some(3));
        assert!(!m.receive(update(3), "3"), "already shown");
        assert!(m.receive(update(4), "4"));
        for id in 5..30 {
            m.receive(update(id), &id.to_string());
        }
        assert_eq!(m.rows.len(), ROWS);
        assert_eq!(m.rows[0].id, Some(29), "newest first");
        assert_eq!(m.values.len(), SPARK_POINTS.min(29));
    }

    #[test]
    fn a_gap_restarts_the_numbering_and_notifications_are_kept_apart() {
        let mut m = FeedModel::new(&[]);
        assert!(
            !m.receive(FeedEvent::Connected { timestamp: 1 }, ""),
            "the badge's, not a row"
        );
        assert!(m.receive(update(1), "10"));
        assert!(m.receive(FeedEvent::Gap, "10"));
        assert!(m.receive(update(2), "1"), "a new sequence after a gap");
        // Newest first, and every row with a time is in time order.
        let times: Vec<u64> = m.rows.iter().filter_map(|r| r.timestamp).collect();
        assert_eq!(times, [2, 1]);
        assert_eq!(m.rows[1].event, FeedEvent::Gap);
        let note = FeedEvent::Notification {
            id: "n1".into(),
            user_id: "u".into(),
            user: "Ada".into(),
            text: "hi".into(),
            timestamp: 7,
        };
        assert!(m.receive(note.clone(), "2"));
        assert!(!m.receive(note, "2"));
        assert_eq!(m.notes.len(), 1);
        assert!(m
            .rows
            .iter()
            .all(|r| !matches!(r.event, FeedEvent::Notification { .. })));
    }
}
