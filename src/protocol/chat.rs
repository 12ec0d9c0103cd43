//! Chat and rooms over a WebSocket at [`WS_PATH`]: JSON text frames, one
//! object per frame, tagged by `"type"`.

use serde::{Deserialize, Serialize};

/// Path of the WebSocket endpoint.
pub const WS_PATH: &str = "/ws";

/// The HTTP fallback's downstream: an SSE stream of [`ServerMessage`]s, for
/// networks that do not let WebSockets through.
pub const CHAT_STREAM_PATH: &str = "/api/chat/stream";

/// The HTTP fallback's upstream: `POST` a [`SendBody`].
pub const CHAT_SEND_PATH: &str = "/api/chat/send";

/// SSE event type of the frames of a connection attached to another's
/// fallback stream (see [`ClientMessage::Attach`]); their data is a
/// [`TabFrame`].
pub const TAB_EVENT: &str = "tab";

/// Longest tab id of [`ClientMessage::Attach`].
pub const MAX_TAB_ID: usize = 32;

/// Whether `tab` is a valid tab id: 1–32 characters of `A-Z a-z 0-9 - _`.
pub fn is_valid_tab(tab: &str) -> bool {
    (1..=MAX_TAB_ID).contains(&tab.len())
        && tab
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A frame of an attached connection, as its carrier stream sends it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TabFrame {
    /// The tab that attached the connection.
    pub tab: String,
    /// The frame.
    pub msg: ServerMessage,
}

/// Most frames in one [`SendBody`].
pub const MAX_FRAMES_PER_SEND: usize = 16;

/// What a client of the HTTP fallback posts to [`CHAT_SEND_PATH`]: frames for
/// its stream's connection, as it would send them on a WebSocket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SendBody {
    /// The connection, as the stream's `hello` named it.
    pub conn: String,
    /// 1 to [`MAX_FRAMES_PER_SEND`] frames, acted on in order.
    pub frames: Vec<ClientMessage>,
}
/// Query parameter that may carry the JWT (for clients that cannot set headers).
pub const TOKEN_PARAM: &str = "token";
/// Name of the HttpOnly cookie that carries the session's JWT.
pub const SESSION_COOKIE: &str = "pulse_session";

/// Longest `client_id` of a [`ClientMessage::Message`].
pub const MAX_CLIENT_ID: usize = 64;

/// Whether `id` is a valid `client_id`: 1–64 characters of `A-Z a-z 0-9 - _`.
pub fn is_valid_client_id(id: &str) -> bool {
    (1..=MAX_CLIENT_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A place in a room's stream: the stream's `epoch` (a string that changes
/// whenever the stream is lost: Redis flushed, its keys evicted, a lone
/// instance restarted) and an `offset` in it (the publications of a room are
/// numbered 1, 2, 3, … in the one order every member sees).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamPosition {
    /// The stream's epoch.
    pub epoch: String,
    /// The offset of a publication in it (0: before the first).
    pub offset: u64,
}

/// Rooms that always exist.
pub const DEFAULT_ROOMS: [&str; 3] = ["general", "tech", "random"];
/// Longest room name, in characters (`a-z 0-9 - _`).
pub const MAX_ROOM_NAME: usize = 32;
/// Rooms one connection may be in at once.
pub const MAX_ROOMS_PER_CONNECTION: usize = 10;
/// Messages a `joined` carries when it does not recover (the recent history).
pub const HISTORY_LEN: usize = 50;
/// Bytes of text (and names) the recent history of a `joined` carries at most.
pub const HISTORY_BYTES: usize = 32 * 1024;
/// Longest message text, in characters, after trimming.
pub const MAX_TEXT_CHARS: usize = 2000;
/// Largest frame a client may send; a bigger one closes with 1009.
pub const MAX_FRAME_BYTES: usize = 16 * 1024;
/// Longest display name, in characters, after trimming.
pub const MAX_NAME_CHARS: usize = 32;

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
/// Close code: the client broke the WebSocket protocol (RFC 6455).
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code: a text frame that is not valid UTF-8 (RFC 6455).
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Close code: refused for now (the user holds as many connections as they
/// may); try again later (RFC 6455).
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

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
        /// The last publication the client saw in this room (after a
        /// reconnect): the server then sends what came after it, if it can
        /// send all of it (`joined.recovered`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<StreamPosition>,
    },
    /// Leave a room.
    Leave {
        /// Room name.
        room: String,
    },
    /// Say something in a room one has joined; answered with `ack` (or
    /// `nack`) for `client_id`.
    Message {
        /// Room name.
        room: String,
        /// The text (1–2000 characters after trimming).
        text: String,
        /// The client's id for this message (1–64 characters of
        /// `A-Z a-z 0-9 - _`, unique per message): a message sent again with
        /// the same id (after a drop) is published once and acked again.
        client_id: String,
    },
    /// Are you there? Answered with `pong`. Browsers cannot see WebSocket
    /// pings, so this is how a page tells a live socket from a dead one.
    Ping,
    /// (HTTP fallback streams only.) Opens another connection of the same
    /// user whose frames come down this stream as [`TAB_EVENT`] events
    /// tagged with `tab`, starting with its `hello`: how the tabs of one
    /// browser share one stream. The new connection ends with this stream,
    /// or when nothing is posted to it for three ping intervals.
    Attach {
        /// The tab's id (1–32 characters of `A-Z a-z 0-9 - _`).
        tab: String,
    },
}

/// Someone in a room: their id (unique, stable) and display name (shown,
/// and not unique: two people may share one).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The user's id, from their token.
    pub id: String,
    /// Their display name, from their token.
    pub name: String,
}

/// A short tag derived from a user id, shown beside the display name so two
/// people with the same name can be told apart (`Ada #3f9c`).
pub fn user_tag(id: &str) -> String {
    // FNV-1a: a stable, well-spread hash that is the same on both sides.
    let hash = id.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("#{:04x}", hash & 0xffff)
}

/// A chat message, as stored in a room's stream and sent to its members.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Room it was said in.
    pub room: String,
    /// Its place in the room's stream: one more than the message before it.
    #[serde(default)]
    pub offset: u64,
    /// Unique id (time-ordered), for de-duplication.
    pub id: String,
    /// Id of the author, from their token.
    pub user_id: String,
    /// Display name of the author, from their token.
    pub user: String,
    /// The text, trimmed.
    pub text: String,
    /// Server time, milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// The author's id for it (so the author's other tabs know it as theirs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// A frame from server to client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerMessage {
    /// Answers one's own join. Also sent unasked when the room's stream
    /// was lost under the member (a new `epoch`): replace what is shown.
    Joined {
        /// Room name.
        room: String,
        /// Who is in the room, sorted by name then id, oneself included.
        members: Vec<Member>,
        /// With `recovered`: exactly the publications after the join's
        /// `since`, in order. Otherwise the room's latest messages (at most
        /// 50 and 32 KiB), oldest first. Empty when the connection was in
        /// the room already.
        history: Vec<ChatMessage>,
        /// The room's stream.
        epoch: String,
        /// The offset of the latest publication this answer accounts for:
        /// the next one the member gets has a higher one.
        offset: u64,
        /// True when the join's `since` was recovered whole: nothing the
        /// member missed is lost. False otherwise: messages may be missing.
        recovered: bool,
    },
    /// Who entered and who left a room one is in, since the last such frame.
    /// Changes are gathered for a short while (100 ms) and sent as one
    /// frame, so a crowd joining at once costs each member one frame per
    /// interval rather than one per joiner. Applying one to the member list
    /// in order keeps it exact; entries may repeat what `joined` already
    /// listed.
    Presence {
        /// Room name.
        room: String,
        /// Who is in the room now and may not have been before.
        joined: Vec<Member>,
        /// Who has left (closed their last connection in the room).
        left: Vec<Member>,
        /// Server time, ms since the epoch.
        timestamp: u64,
    },
    /// A message in a room one is in (one's own included).
    Message(ChatMessage),
    /// One's own message is in the room's stream, at `offset`.
    Ack {
        /// Room name.
        room: String,
        /// The message's `client_id`.
        client_id: String,
        /// Its offset.
        offset: u64,
    },
    /// One's own message was not published.
    Nack {
        /// Room name.
        room: String,
        /// The message's `client_id`.
        client_id: String,
        /// Why: `rate_limited` and `unavailable` pass by waiting
        /// `retry_after_ms` (send it again with the same `client_id`);
        /// `invalid_message` and `not_in_room` do not.
        code: ErrorCode,
        /// Human-readable details.
        message: String,
        /// When sending again may succeed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
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
    /// Whether this server reaches the other servers (with several
    /// instances). While it does not, what is said here reaches only the
    /// members connected to this server. Sent when a socket opens while they
    /// are unreachable, and to every socket on each change.
    Health {
        /// False while the other servers are unreachable.
        other_servers: bool,
    },
    /// First frame of an HTTP fallback stream: the connection's name, for
    /// the frames the client posts, and how often it hears from the server.
    Hello {
        /// The connection, for [`SendBody::conn`] (unguessable).
        conn: String,
        /// The stream carries a `pong` this often.
        ping_interval_ms: u64,
    },
    /// Last frame of an HTTP fallback stream: why it ends, with the close
    /// code a WebSocket would have had (4001: sign in again, …).
    Closed {
        /// The WebSocket close code.
        code: u16,
        /// Why.
        reason: String,
    },
    /// Answers `ping` (at most twice a second per socket).
    Pong {
        /// How often the server pings this socket; a client that hears
        /// nothing for twice this long may take the socket for dead.
        ping_interval_ms: u64,
    },
}

/// Why something was refused: a frame (`error`, `nack`), or a request (the
/// `code` of every refusal's body, [`Refusal`]). One vocabulary for both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not valid JSON, unknown type, missing field, binary frame, or a text
    /// empty or too long; a request body that is not what the route takes.
    InvalidMessage,
    /// Too many in a while: wait `retry_after_ms`.
    RateLimited,
    /// A message or leave for a room one has not joined.
    NotInRoom,
    /// A bad room name, or too many rooms.
    InvalidRoom,
    /// The other servers cannot be reached (Redis): nothing was done; try
    /// again after `retry_after_ms`.
    Unavailable,
    /// No valid token (missing, malformed, expired, signed out).
    Unauthorized,
    /// Not allowed: another site's page, another user's connection.
    Forbidden,
    /// No such thing here (a fallback connection that is gone).
    NotFound,
    /// A body or frame over its limit.
    TooLarge,
    /// The client (its address, or its user) holds as many connections as
    /// it may.
    TooManyConnections,
    /// The server holds as many connections as it may.
    ServerFull,
    /// The request's body stopped arriving.
    Timeout,
    /// The server is shutting down: try another instance, or again soon.
    Draining,
    /// The operator turned this transport off (`PULSE_TRANSPORTS`).
    TurnedOff,
    /// Something went wrong on the server's side.
    ServerError,
}

/// The body of every refused request, on every route (and the error of
/// every server function): `{"code", "message", "retry_after_ms"?}`, the
/// same shape as an `error` frame without its `type`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// What went wrong, stably.
    pub code: ErrorCode,
    /// What to tell a person.
    pub message: String,
    /// When trying again may succeed (also a `Retry-After` header, in
    /// whole seconds rounded up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refusal {}

impl ErrorCode {
    /// The code as it is written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotInRoom => "not_in_room",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::ServerFull => "server_full",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Draining => "draining",
            ErrorCode::TurnedOff => "turned_off",
            ErrorCode::ServerError => "server_error",
        }
    }
}

/// Whether `name` is a valid room name: 1–32 characters of `a-z 0-9 - _`.
pub fn is_valid_room(name: &str) -> bool {
    (1..=MAX_ROOM_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
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
                room: "tech".into(),
                since: None,
            }
        );
        let rejoin: ClientMessage = serde_json::from_str(
            r#"{"type":"join","room":"tech","since":{"epoch":"e1","offset":7}}"#,
        )
        .unwrap();
        assert!(matches!(
            rejoin,
            ClientMessage::Join {
                since: Some(StreamPosition { offset: 7, .. }),
                ..
            }
        ));
        // A spoofed user is ignored, not an error; a message needs its client_id.
        let msg: ClientMessage = serde_json::from_str(
            r#"{"type":"message","room":"a","text":"hi","client_id":"c1","user":"x"}"#,
        )
        .unwrap();
        assert!(matches!(msg, ClientMessage::Message { .. }));
        assert!(serde_json::from_str::<ClientMessage>(
            r#"{"type":"message","room":"a","text":"hi"}"#
        )
        .is_err());

        let out = ServerMessage::Message(ChatMessage {
            room: "a".into(),
            offset: 3,
            id: "1".into(),
            user_id: "i".into(),
            user: "u".into(),
            text: "t".into(),
            timestamp: 5,
            client_id: Some("c1".into()),
        });
        let json = serde_json::to_string(&out).unwrap();
        assert_eq!(
            json,
            r#"{"type":"message","room":"a","offset":3,"id":"1","user_id":"i","user":"u","text":"t","timestamp":5,"client_id":"c1"}"#
        );
        let ack = ServerMessage::Ack {
            room: "a".into(),
            client_id: "c1".into(),
            offset: 3,
        };
        assert_eq!(
            serde_json::to_string(&ack).unwrap(),
            r#"{"type":"ack","room":"a","client_id":"c1","offset":3}"#
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
        assert!(is_valid_client_id("a-Z_9"));
        assert!(!is_valid_client_id(""));
        assert!(!is_valid_client_id("a b"));
        assert!(!is_valid_client_id(&"x".repeat(65)));
    }

    #[test]
    fn room_names_and_user_tags() {
        assert!(is_valid_room("general"));
        assert!(is_valid_room("a-b_9"));
        assert!(!is_valid_room(""));
        assert!(!is_valid_room("Upper"));
        assert!(!is_valid_room(&"x".repeat(33)));
        // Tags are stable and tell ids apart.
        assert_eq!(user_tag("u1"), user_tag("u1"));
        assert_ne!(user_tag("u1"), user_tag("u2"));
        assert_eq!(user_tag("anything").len(), 5);
    }
}
