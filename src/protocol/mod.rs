//! Wire types shared by the server and the WASM client.
//!
//! The server encodes every event from these types and the client decodes them
//! with the same types, so the two can never drift apart. The wire format is
//! documented in `docs/protocol.md`.
//!
//! - [`feed`]: the live feed over Server-Sent Events.
//! - [`chat`]: chat and rooms over a WebSocket.
//! - [`stats`]: the dashboard's figures over Server-Sent Events.

pub mod chat;
pub mod feed;
pub mod stats;

pub use chat::*;
pub use feed::*;
pub use stats::*;

use serde::{Deserialize, Serialize};

/// The SSE event type of a stream's heartbeat. Every SSE stream (the feed,
/// the dashboard's figures) sends `event: ping` with a [`StreamPing`] when
/// it opens and then at least once per interval, so a client can tell a
/// quiet stream from a dead one: SSE comments never reach a page's script.
pub const PING_EVENT: &str = "ping";

/// The data of a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamPing {
    /// The most time between two frames of the stream while it is alive; a
    /// client that hears nothing for twice this treats the stream as dead.
    pub interval_ms: u64,
}
