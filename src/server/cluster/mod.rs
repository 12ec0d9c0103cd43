//! What the instances of pulse share, behind three narrow interfaces, each
//! with two implementations of the same contract: in memory (one instance;
//! also what the unit tests use) and over Redis (several instances).
//!
//! - [`Broker`]: every room's ordered, recoverable stream of publications
//!   (offsets and an epoch, idempotent appends), and the pub/sub that hands
//!   what any instance publishes to every instance's [`Handler`];
//! - [`Presence`]: who is in which room across instances, with the grace
//!   that keeps a reconnecting member from leaving and joining again;
//! - [`Revocations`]: signed-out sessions, for every instance.
//!
//! Data flows one way: services call the interfaces; what arrives from the
//! other instances (and one's own publications, in the room's order) comes
//! to the one [`Handler`] given to [`Broker::run`], which hands it to its
//! service. [`connect`] is the only place that knows which implementation
//! runs: nothing outside `redis/` builds a Redis command.

pub mod broker;
mod memory;
pub mod presence;
mod redis;
pub mod revocations;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol::{ClientMessage, FeedEvent};
pub use broker::{Broker, History, IdempotencyKey, Publication, Published, Range};
pub use presence::{Entered, Presence, PresenceChange};
pub use revocations::Revocations;

/// The shared store did not answer (Redis is down or too slow): nothing was
/// done, and the caller may try again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the other servers cannot be reached")
    }
}

/// How long a caller that got [`Unavailable`] should wait before trying
/// again: about the time an outage takes to be noticed as over.
pub const RETRY_UNAVAILABLE: Duration = Duration::from_secs(1);

/// What crosses between instances besides rooms' streams and presence.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Control {
    /// A notification for every feed.
    Feed {
        /// The event.
        event: FeedEvent,
        /// Its id in the publishing instance's feed (for resumption).
        id: u64,
        /// The publishing instance, whose feed has it already.
        origin: String,
    },
    /// A session was signed out: close its sockets, refuse its tokens.
    Revoked {
        /// The session id.
        sid: String,
        /// Until when (Unix seconds) a token of it could be valid.
        until: u64,
    },
    /// Frames posted (HTTP fallback) for a connection that another instance
    /// holds; sent to that instance only ([`Broker::send_to`]).
    Frames {
        /// The connection.
        conn: String,
        /// The user who posted them: the connection must be theirs.
        user_id: String,
        /// The frames, in order.
        frames: Vec<ClientMessage>,
    },
}

/// Where a broker hands what it receives: every instance's publications to
/// the rooms this instance subscribed to (its own included, in the room's
/// order), presence changes, control events. Each call must return quickly
/// and never wait: it runs on the broker's receiving task.
pub trait Handler: Send + Sync + 'static {
    /// A publication in `room`'s stream (whose epoch is `epoch`).
    fn publication(&self, room: &str, epoch: &str, publication: Publication);
    /// Someone entered or left `room` (on any instance).
    fn presence(&self, room: &str, change: PresenceChange);
    /// A control event.
    fn control(&self, control: Control);
    /// The link to the other instances is back after a break: what was
    /// published meanwhile may not have arrived (resynchronise).
    fn reconnected(&self);
}

/// How rooms' streams are kept.
#[derive(Debug, Clone)]
pub struct StreamLimits {
    /// Most publications a stream keeps (`PULSE_HISTORY_SIZE`).
    pub size: usize,
    /// Most bytes of publications a stream keeps (`PULSE_HISTORY_BYTES`).
    pub bytes: usize,
    /// A stream is dropped this long after its last publication
    /// (`PULSE_HISTORY_TTL`).
    pub ttl: Duration,
    /// A repeated idempotency key within this is not published again
    /// (`PULSE_DEDUP_WINDOW`).
    pub dedup_window: Duration,
    /// Presence entries of an instance that stops refreshing them live this
    /// long (`PULSE_PRESENCE_TTL`).
    pub presence_ttl: Duration,
}

#[cfg(test)]
impl StreamLimits {
    /// The unit tests' limits: 100 publications or 1 MiB, kept an hour; a
    /// minute's dedup window; 30 s presence.
    pub fn for_tests() -> StreamLimits {
        StreamLimits {
            size: 100,
            bytes: 1 << 20,
            ttl: Duration::from_secs(3600),
            dedup_window: Duration::from_secs(60),
            presence_ttl: Duration::from_secs(30),
        }
    }
}

/// The three shared services of this instance.
#[derive(Clone)]
pub struct Cluster {
    /// Rooms' streams and pub/sub.
    pub broker: Arc<dyn Broker>,
    /// Who is where.
    pub presence: Arc<dyn Presence>,
    /// Signed-out sessions.
    pub revocations: Arc<dyn Revocations>,
}

/// The shared services: over the Redis at `redis_url` (`PULSE_REDIS_URL`),
/// or in memory without one. The only place that knows which.
pub fn connect(redis_url: Option<&str>, limits: StreamLimits) -> Result<Cluster, String> {
    match redis_url {
        Some(url) => redis::connect(url, limits),
        None => Ok(memory::connect(limits)),
    }
}

/// Whether `url` is a form `PULSE_REDIS_URL` takes (the error says why not).
pub fn check_redis_url(url: &str) -> Result<(), String> {
    redis::check_url(url)
}

/// A fresh epoch: random, so that a lost stream is never taken for the one
/// before it.
pub fn new_epoch() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Both implementations of each interface, for the contract tests in
/// `tests/cluster.rs`, which hold them to the same rules.
#[doc(hidden)]
pub mod testing {
    pub use super::memory::connect as memory;
    pub use super::redis::connect as redis;
}
