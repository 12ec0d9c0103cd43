//! The bus between instances. Without `PULSE_REDIS_URL` there is one
//! instance and nothing crosses ([`Bus::local`]); with it, events are
//! published on Redis and every other instance hands them to its services.
//!
//! Data flows one way. Services publish with [`Bus::publish`]; what other
//! instances publish arrives on the receivers that the services take with
//! [`Bus::subscribe`] and drain in tasks of their own (chat: room frames and
//! sign-outs; feed: notifications). The bus knows nothing of them.
//!
//! Delivery to an instance's own clients never waits for Redis: services
//! deliver locally first and then publish; writes queue for one writer task
//! and are dropped (and counted) rather than stall while Redis is down.
//! Reconnection is redis-rs's [`ConnectionManager`](redis::aio::ConnectionManager),
//! which also resubscribes; [`Bus::status`] says whether the other instances
//! are reachable.
//!
//! Beside the channel, the bus keeps two things for instances that arrive
//! later: each room's recent history and signed-out sessions (see
//! docs/protocol.md for the keys). Presence across instances is
//! [`crate::server::presence`], which shares the connection.

mod redis;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::protocol::{ChatMessage, FeedEvent, ServerMessage};
use crate::server::metrics;
pub(crate) use redis::Link;

/// Events from other instances a receiver may fall behind by before it
/// misses some (it is told how many, and they are counted).
const INCOMING: usize = 8192;

/// What crosses between instances.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum BusEvent {
    /// A frame for every member of a room (message, presence).
    Room {
        /// The room.
        room: String,
        /// The frame.
        msg: ServerMessage,
    },
    /// An event for every feed (a notification).
    Feed {
        /// The event.
        event: FeedEvent,
        /// Its id in the publishing instance's feed (for resumption).
        id: u64,
    },
    /// Frames posted (HTTP fallback) for a connection held by another
    /// instance; the one that holds it acts on them.
    Frames {
        /// The connection.
        conn: String,
        /// The user who posted them: the connection must be theirs.
        user_id: String,
        /// The frames, in order.
        frames: Vec<crate::protocol::ClientMessage>,
    },
    /// A session was signed out: close its sockets, refuse its token.
    Revoked {
        /// The session id.
        sid: String,
        /// When its tokens expire (Unix seconds).
        exp: u64,
    },
}

/// A service's receiver of what other instances publish.
pub struct Incoming(broadcast::Receiver<Arc<BusEvent>>);

impl Incoming {
    /// The next event; `None` once the bus is gone. A receiver that fell
    /// more than the channel holds behind skips what it missed (counted).
    pub async fn recv(&mut self) -> Option<Arc<BusEvent>> {
        loop {
            match self.0.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "a bus receiver fell behind; events skipped");
                    metrics::bus_events_missed(missed);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// Whether the other instances can be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusStatus {
    /// One instance: there is nobody to reach.
    Local,
    /// Connected and subscribed.
    Up,
    /// Redis is down or does not answer: only this instance's clients are served.
    Down,
}

/// The bus, as the rest of the server sees it. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    /// The Redis side, if there are other instances.
    link: Option<Arc<Link>>,
    /// Events from other instances, for every receiver.
    incoming: broadcast::Sender<Arc<BusEvent>>,
    /// Whether the other instances can be reached, as it changes.
    reachable: watch::Receiver<bool>,
    /// With one instance: the never-changing sender of `reachable`, kept so
    /// that its receivers wait rather than see it closed.
    _constant: Option<Arc<watch::Sender<bool>>>,
}

impl Bus {
    /// One instance: publishing goes nowhere and nothing arrives.
    pub fn local() -> Bus {
        // Nobody else to reach: nothing to report, ever.
        let (constant, reachable) = watch::channel(true);
        Bus {
            link: None,
            incoming: broadcast::channel(1).0,
            reachable,
            _constant: Some(Arc::new(constant)),
        }
    }

    /// A bus over the Redis at `url`, connected (and reconnected) in the
    /// background by [`Bus::run`]; `history_ttl` is how long a room's
    /// history outlives its last message.
    pub fn redis(url: &str, history_ttl: std::time::Duration) -> Result<Bus, String> {
        let incoming = broadcast::channel(INCOMING).0;
        let link = Link::open(url, history_ttl, incoming.clone())?;
        let reachable = link.reachable();
        Ok(Bus {
            link: Some(Arc::new(link)),
            incoming,
            reachable,
            _constant: None,
        })
    }

    /// Keeps the connection and the subscription up and writes what is
    /// queued, until `shutdown`. Returns at once without Redis.
    pub async fn run(self, shutdown: CancellationToken) {
        if let Some(link) = self.link {
            link.run(shutdown).await;
        }
    }

    /// Sends `event` to the other instances (not to this one).
    pub fn publish(&self, event: BusEvent) {
        if let Some(link) = &self.link {
            link.publish(&event);
        }
    }

    /// Events the other instances publish, from now on.
    pub fn subscribe(&self) -> Incoming {
        Incoming(self.incoming.subscribe())
    }

    /// Whether the other instances can be reached, told on every change (for
    /// telling clients); with one instance it is always true.
    pub fn reachable(&self) -> watch::Receiver<bool> {
        self.reachable.clone()
    }

    /// Whether the other instances can be reached.
    pub fn status(&self) -> BusStatus {
        match &self.link {
            None => BusStatus::Local,
            Some(link) if link.is_up() => BusStatus::Up,
            Some(_) => BusStatus::Down,
        }
    }

    /// Describes the bus for the dashboard.
    pub fn describe(&self) -> &'static str {
        match self.status() {
            BusStatus::Local => "in-process",
            BusStatus::Up => "redis (connected)",
            BusStatus::Down => "redis (disconnected)",
        }
    }

    /// This process's name on the bus (`local` with one instance).
    pub fn instance(&self) -> &str {
        self.link.as_ref().map_or("local", |link| link.instance())
    }

    /// The Redis connection, shared with presence; `None` with one instance.
    pub(crate) fn link(&self) -> Option<&Arc<Link>> {
        self.link.as_ref()
    }

    /// Keeps `message` in its room's shared history.
    pub fn remember(&self, message: &ChatMessage) {
        if let Some(link) = &self.link {
            link.remember(message);
        }
    }

    /// The room's shared history, oldest first; `None` with one instance or
    /// while Redis does not answer.
    pub async fn history(&self, room: &str) -> Option<Vec<ChatMessage>> {
        self.link.as_ref()?.history(room).await
    }

    /// Tells the other instances that session `sid` (tokens expiring at
    /// `exp`) was signed out, and remembers it for instances that start later.
    pub fn revoke(&self, sid: &str, exp: u64) {
        if let Some(link) = &self.link {
            link.revoke(sid, exp);
            link.publish(&BusEvent::Revoked {
                sid: sid.to_string(),
                exp,
            });
        }
    }

    /// Whether Redis says session `sid` was signed out. With one instance,
    /// or while Redis does not answer, `false`: the instances that heard the
    /// sign-out on the bus still refuse the session.
    pub async fn is_revoked(&self, sid: &str) -> bool {
        match &self.link {
            Some(link) => link.is_revoked(sid).await,
            None => false,
        }
    }
}
