//! The dashboard's live figures (Server-Sent Events at [`STATS_PATH`]).

use serde::{Deserialize, Serialize};

/// Path of the stats stream.
pub const STATS_PATH: &str = "/api/stats";

/// One sample of the server's counters, sent every second. The same counters
/// back `/metrics`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Server time, milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// Open SSE streams.
    pub sse: u64,
    /// Open WebSockets.
    pub ws: u64,
    /// Chat frames received per second, over the last sample.
    pub received_per_s: f64,
    /// Chat messages delivered (one per recipient) per second.
    pub delivered_per_s: f64,
    /// The message broker: `"in-process"` (one instance, nothing to set up).
    pub broker: String,
}
