//! The live feed (Server-Sent Events at [`FEED_PATH`]).

use serde::{Deserialize, Serialize};

/// Path of the Server-Sent-Events feed.
pub const FEED_PATH: &str = "/api/events";

/// Path of the notifications endpoint (`POST`, Bearer JWT).
pub const NOTIFICATIONS_PATH: &str = "/api/notifications";

/// Notifications the server keeps apart from the ticker's backlog, so that
/// anyone who opens the feed sees the latest ones, however busy the ticker.
pub const RECENT_NOTIFICATIONS: usize = 20;

/// Query parameter a client may use instead of the `Last-Event-ID` header on
/// its first connection (browsers only send the header when they reconnect).
pub const LAST_EVENT_ID_PARAM: &str = "lastEventId";

/// One event of the live feed: the JSON in an SSE `data:` line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum FeedEvent {
    /// First event on every stream: the subscription is live.
    Connected {
        /// Server time, milliseconds since the Unix epoch.
        timestamp: u64,
    },
    /// A value published by the server's ticker.
    Update {
        /// Server time, milliseconds since the Unix epoch.
        timestamp: u64,
        /// A value in `[0, 1)`.
        value: f64,
    },
    /// The client asked to resume from an id older than the server's backlog:
    /// some events were missed and cannot be replayed.
    Gap,
    /// A notification someone published (`POST /api/notifications`).
    Notification {
        /// Unique id (time-ordered).
        id: String,
        /// Id of the publisher, from their token.
        user_id: String,
        /// Display name of the publisher, from their token.
        user: String,
        /// The text, trimmed (1–2000 characters).
        text: String,
        /// Server time, milliseconds since the Unix epoch.
        timestamp: u64,
    },
    /// Whether this server reaches the other servers (with several
    /// instances); while it does not, notifications published elsewhere do
    /// not arrive here. Not an event of the feed (no `id:`): sent when a
    /// stream opens while they are unreachable, and on each change.
    Health {
        /// False while the other servers are unreachable.
        other_servers: bool,
    },
}

/// A feed event together with its SSE `id:` (its place in the sequence).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeedItem {
    /// Monotonic sequence number; the SSE `id:` of the event.
    pub id: u64,
    /// The event itself.
    pub event: FeedEvent,
}
