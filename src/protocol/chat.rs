//! Chat and rooms over a WebSocket at [`WS_PATH`]: JSON text frames, one
//! object per frame, tagged by `"type"`.

use serde::{Deserialize, Serialize};

/// Path of the WebSocket endpoint.
pub const WS_PATH: &str = "/ws";
/// Query parameter that may carry the JWT (for clients that cannot set headers).
pub const TOKEN_PARAM: &str = "token";
/// Name of the HttpOnly cookie that carries the session's JWT.
pub const SESSION_COOKIE: &str = "pulse_session";

/// Rooms that always exist.
pub const DEFAULT_ROOMS: [&str; 3] = ["general", "tech", "random"];
/// Longest room name, in characters (`a-z 0-9 - _`).
pub const MAX_ROOM_NAME: usize = 32;
/// Rooms one connection may be in at once.
pub const MAX_ROOMS_PER_CONNECTION: usize = 10;
/// Messages a room keeps and sends to whoever joins.
pub const HISTORY_LEN: usize = 50;
/// Longest message text, in characters, after trimming.
pub const MAX_TEXT_CHARS: usize = 2000;
/// Largest frame a client may send; a bigger one closes with 1009.
pub const MAX_FRAME_BYTES: usize = 16 * 1024;
/// Longest display name, in characters, after trimming.
pub const MAX_NAME_CHARS: usize = 24;

/// Close code: the token expired (sign in or renew, then reconnect).
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// Close code: the client did not read fast enough; its queue overflowed.
pub const CLOSE_TOO_SLOW: u16 = 4002;
/// Close code: the client stopped answering pings.
pub const CLOSE_PING_TIMEOUT: u16 = 4003;
/// Close code: a frame over [`MAX_FRAME_BYTES`].
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: the server is shutting down (reconnect, maybe elsewhere).
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// A frame from client to server.
///
/// Unknown fields (a `user`, say) are ignored: the user is always the token's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ClientMessage {
    /// Enter a room (created on first join).
    Join {
        /// Room name.
        room: String,
    },
    /// Leave a room.
    Leave {
        /// Room name.
        room: String,
    },
    /// Say something in a room one has joined.
    Message {
        /// Room name.
        room: String,
        /// The text (1–2000 characters after trimming).
        text: String,
    },
}

/// A chat message, as stored in a room's history and sent to its members.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Room it was said in.
    pub room: String,
    /// Unique id (time-ordered), for de-duplication.
    pub id: String,
    /// Display name of the author, from their token.
    pub user: String,
    /// The text, trimmed.
    pub text: String,
    /// Server time, milliseconds since the Unix epoch.
    pub timestamp: u64,
}

/// A frame from server to client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerMessage {
    /// Answers one's own join.
    Joined {
        /// Room name.
        room: String,
        /// Display names of the members, sorted, oneself included.
        members: Vec<String>,
        /// The room's latest messages, oldest first.
        history: Vec<ChatMessage>,
    },
    /// Someone else entered a room one is in.
    UserJoined {
        /// Room name.
        room: String,
        /// Their display name.
        user: String,
        /// Server time, ms since the epoch.
        timestamp: u64,
    },
    /// Someone else left a room one is in (or disconnected).
    UserLeft {
        /// Room name.
        room: String,
        /// Their display name.
        user: String,
        /// Server time, ms since the epoch.
        timestamp: u64,
    },
    /// A message in a room one is in (one's own included).
    Message(ChatMessage),
    /// Answers one's own leave.
    Left {
        /// Room name.
        room: String,
    },
    /// A frame was refused; the connection stays usable.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// Human-readable details.
        message: String,
        /// For `rate_limited`: when sending is allowed again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// Why a client frame was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not valid JSON, unknown type, missing field, binary frame, or a text
    /// empty or too long.
    InvalidMessage,
    /// Too many messages in a minute.
    RateLimited,
    /// A message or leave for a room one has not joined.
    NotInRoom,
    /// A bad room name, or too many rooms.
    InvalidRoom,
}

/// Whether `name` is a valid room name: 1–32 characters of `a-z 0-9 - _`.
pub fn is_valid_room(name: &str) -> bool {
    (1..=MAX_ROOM_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The display name for `raw`, trimmed, if it is 1–24 characters without
/// control characters.
pub fn valid_display_name(raw: &str) -> Option<&str> {
    let name = raw.trim();
    let len = name.chars().count();
    ((1..=MAX_NAME_CHARS).contains(&len) && !name.chars().any(char::is_control)).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_the_documented_shape() {
        let join: ClientMessage = serde_json::from_str(r#"{"type":"join","room":"tech"}"#).unwrap();
        assert_eq!(
            join,
            ClientMessage::Join {
                room: "tech".into()
            }
        );
        // A spoofed user is ignored, not an error.
        let msg: ClientMessage =
            serde_json::from_str(r#"{"type":"message","room":"a","text":"hi","user":"x"}"#)
                .unwrap();
        assert!(matches!(msg, ClientMessage::Message { .. }));

        let out = ServerMessage::Message(ChatMessage {
            room: "a".into(),
            id: "1".into(),
            user: "u".into(),
            text: "t".into(),
            timestamp: 5,
        });
        let json = serde_json::to_string(&out).unwrap();
        assert_eq!(
            json,
            r#"{"type":"message","room":"a","id":"1","user":"u","text":"t","timestamp":5}"#
        );
        let err = ServerMessage::Error {
            code: ErrorCode::NotInRoom,
            message: "m".into(),
            retry_after_ms: None,
        };
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"type":"error","code":"not_in_room","message":"m"}"#
        );
    }

    #[test]
    fn room_and_display_names() {
        assert!(is_valid_room("general"));
        assert!(is_valid_room("a-b_9"));
        assert!(!is_valid_room(""));
        assert!(!is_valid_room("Upper"));
        assert!(!is_valid_room(&"x".repeat(33)));
        assert_eq!(valid_display_name("  Ada  "), Some("Ada"));
        assert_eq!(valid_display_name("   "), None);
        assert_eq!(valid_display_name(&"é".repeat(25)), None);
    }
}
