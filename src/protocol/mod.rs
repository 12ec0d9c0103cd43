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
