//! The Redis implementations: one RESP3 [`ConnectionManager`] carries every
//! command and every subscription (its pushes are decoded straight into the
//! handler, in the order Redis sent them); it reconnects and resubscribes by
//! itself. A heartbeat (a `PING` every second) notices an outage and its end.
//!
//! Keys and channels (every key of a room carries the room as its hash tag,
//! `{room}`, so that a room's stream, meta, presence and channel live on one
//! shard of a Redis Cluster):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `pulse:{R}:stream` | stream | the room's publications, entry id `<offset>-0` |
//! | `pulse:{R}:meta` | hash | `e` epoch, `s` top offset, `b` bytes kept |
//! | `pulse:{R}:dedup:<user>:<client_id>` | string | `<epoch>:<offset>` of a publication, for the dedup window |
//! | `pulse:{R}:entries`, `:holders`, `:names` | sorted set, hashes | presence (see [`presence`]) |
//! | `pulse:{R}:ch` | channel | `p\|<epoch>\|<offset>\|<data>` publications, `c\|<json>` presence changes |
//! | `pulse:feed`, `pulse:control` | channels | notifications; sign-outs (JSON `Control`) |
//! | `pulse:to:<instance>` | channel | frames for one instance (JSON `Control`) |
//! | `pulse:revoked:<sid>` | string | a signed-out session, until its tokens could no longer be valid |

mod broker;
mod presence;
mod revocations;
mod subscriptions;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{Cluster, Control, Handler, PresenceChange, Publication, StreamLimits, Unavailable};
use crate::server::metrics;
use subscriptions::{Rooms, Want};

/// Period of the health check (and of connection attempts while down).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Longest a Redis call may take before it counts as failed.
const TIMEOUT: Duration = Duration::from_secs(1);

/// The channel of notifications.
const FEED_CHANNEL: &str = "pulse:feed";
/// The channel of control events for every instance (sign-outs).
const CONTROL_CHANNEL: &str = "pulse:control";

/// The services over the Redis at `url`, connected (and reconnected) in the
/// background once the broker runs.
pub fn connect(url: &str, limits: StreamLimits) -> Result<Cluster, String> {
    let link = Arc::new(Link::open(url)?);
    let revocations = Arc::new(revocations::RedisRevocations::new(link.clone()));
    Ok(Cluster {
        broker: Arc::new(broker::RedisBroker::new(
            link.clone(),
            limits.clone(),
            revocations.clone(),
        )),
        presence: Arc::new(presence::RedisPresence::new(link, limits.presence_ttl)),
        revocations,
    })
}

/// A room's key of `kind` (`stream`, `meta`, …), hash-tagged by the room.
fn room_key(room: &str, kind: &str) -> String {
    format!("pulse:{{{room}}}:{kind}")
}

/// The pub/sub channel of a room.
fn room_channel(room: &str) -> String {
    room_key(room, "ch")
}

/// The room of a room channel's name.
fn room_of_channel(channel: &str) -> Option<&str> {
    channel.strip_prefix("pulse:{")?.strip_suffix("}:ch")
}

/// The channel of one instance.
fn instance_channel(instance: &str) -> String {
    format!("pulse:to:{instance}")
}

/// The connection, its health, and what arrives on it.
pub(super) struct Link {
    /// Commands and subscriptions; reconnects by itself.
    manager: ConnectionManager,
    /// What the push handler and the callers share.
    state: Arc<State>,
    /// Subscription changes, in the order they were asked for.
    wants: mpsc::UnboundedSender<Want>,
    /// Their receiving end, taken once by [`Link::run`].
    wanted: Mutex<Option<mpsc::UnboundedReceiver<Want>>>,
}

/// What the connection's push handler and the rest share.
struct State {
    /// This process's id among the instances.
    instance: String,
    /// Whether our own channels are subscribed (pushes say so).
    subscribed: AtomicBool,
    /// Whether the last health check answered.
    answering: AtomicBool,
    /// Where what arrives goes (set when the broker runs).
    handler: OnceLock<Arc<dyn Handler>>,
    /// What was last said about the connection (`None`: nothing yet) and
    /// since when it is down: an outage is logged once when it starts and
    /// once when it ends.
    said: Mutex<(Option<bool>, Instant)>,
    /// The same, for whoever tells clients.
    reachable: watch::Sender<bool>,
}

impl Link {
    fn open(url: &str) -> Result<Link, String> {
        let bad = |e: redis::RedisError| format!("PULSE_REDIS_URL: {e}");
        // RESP3: subscriptions share the command connection, and the
        // manager resubscribes after a reconnect.
        let info = url.into_connection_info().map_err(bad)?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(settings)).map_err(bad)?;
        let state = Arc::new(State {
            instance: uuid::Uuid::now_v7().simple().to_string(),
            subscribed: AtomicBool::new(false),
            answering: AtomicBool::new(false),
            handler: OnceLock::new(),
            said: Mutex::new((None, Instant::now())),
            // Not until the first check says so: /readyz answers 503 until then.
            reachable: watch::channel(false).0,
        });
        let on_push = {
            let state = state.clone();
            move |push: PushInfo| {
                state.receive(push);
                Ok::<(), std::convert::Infallible>(())
            }
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(HEARTBEAT)
            .set_push_sender(on_push)
            .set_automatic_resubscription();
        let manager = ConnectionManager::new_lazy_with_config(client, config).map_err(bad)?;
        let (wants, wanted) = mpsc::unbounded_channel();
        metrics::set_broker_connected(false);
        Ok(Link {
            manager,
            state,
            wants,
            wanted: Mutex::new(Some(wanted)),
        })
    }

    fn instance(&self) -> &str {
        &self.state.instance
    }

    fn is_up(&self) -> bool {
        self.state.is_up()
    }

    /// A clone of the connection for one call, if Redis is up: while it is
    /// down, calls fail at once rather than wait for a timeout.
    fn connection(&self) -> Result<ConnectionManager, Unavailable> {
        if self.is_up() {
            Ok(self.manager.clone())
        } else {
            Err(Unavailable)
        }
    }

    /// Runs `call` on the connection within [`TIMEOUT`].
    async fn call<T, F>(&self, call: impl FnOnce(ConnectionManager) -> F) -> Result<T, Unavailable>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let connection = self.connection()?;
        match tokio::time::timeout(TIMEOUT, call(connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                tracing::debug!("redis call failed: {e}");
                Err(Unavailable)
            }
            Err(_) => {
                tracing::debug!("redis call timed out");
                Err(Unavailable)
            }
        }
    }

    /// Runs `pipe` and returns its answer.
    async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, Unavailable> {
        self.call(|mut c| async move { pipe.query_async::<T>(&mut c).await })
            .await
    }

    /// Asks for the rooms' channels, in order with every other change.
    fn want(&self, want: Want) {
        // The receiver lives as long as the link's task; after it, nothing
        // is delivered anyway.
        let _ = self.wants.send(want);
    }

    /// Subscribes this instance's own channels, keeps the room
    /// subscriptions as asked and checks the connection every
    /// [`HEARTBEAT`], until `shutdown`. Each time the link comes (back) up,
    /// the sign-outs kept meanwhile go out and the handler is told.
    async fn run(
        &self,
        handler: Arc<dyn Handler>,
        shutdown: CancellationToken,
        revocations: &revocations::RedisRevocations,
    ) {
        let _ = self.state.handler.set(handler.clone());
        let Some(mut wanted) = self.wanted.lock().ok().and_then(|mut w| w.take()) else {
            return;
        };
        let mut rooms = Rooms::default();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                want = wanted.recv() => {
                    let Some(want) = want else { return };
                    let mut batch = vec![want];
                    while let Ok(more) = wanted.try_recv() {
                        batch.push(more);
                    }
                    rooms.apply(self, batch).await;
                }
                _ = heartbeat.tick() => {
                    self.check().await;
                    if self.state.settle() {
                        revocations.flush().await;
                        handler.reconnected();
                    }
                }
            }
        }
    }

    /// Subscribes our own channels if they are not, and pings.
    async fn check(&self) {
        let mut manager = self.manager.clone();
        if !self.state.subscribed.load(Ordering::Relaxed) {
            // The first subscription is ours to make (and any that a failed
            // reconnect lost); the manager renews it on every reconnect.
            let own = [
                FEED_CHANNEL.to_string(),
                CONTROL_CHANNEL.to_string(),
                instance_channel(self.instance()),
            ];
            let subscribed = tokio::time::timeout(TIMEOUT, manager.subscribe(&own)).await;
            if matches!(subscribed, Ok(Ok(()))) {
                self.state.subscribed.store(true, Ordering::Relaxed);
            }
        }
        let ping = redis::cmd("PING");
        let answered = tokio::time::timeout(TIMEOUT, ping.query_async::<Value>(&mut manager)).await;
        self.state
            .answering
            .store(matches!(answered, Ok(Ok(_))), Ordering::Relaxed);
    }

    /// Publishes `payload` on `channel`; how many instances got it.
    async fn publish(&self, channel: &str, payload: String) -> Result<u64, Unavailable> {
        let started = Instant::now();
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH").arg(channel).arg(payload);
        let (receivers,) = self.query::<(u64,)>(&pipe).await?;
        metrics::broker_publish_latency(started.elapsed());
        Ok(receivers)
    }
}

impl State {
    fn is_up(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed) && self.answering.load(Ordering::Relaxed)
    }

    /// Publishes the connection's state (metric, log, watchers) if it
    /// changed; true when it just came up.
    fn settle(&self) -> bool {
        let up = self.is_up();
        let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        let (was_up, down_since) = &mut *said;
        match (*was_up, up) {
            (None, true) => tracing::info!("connected to redis"),
            (Some(false), true) => tracing::info!(
                "redis is back after {:.1}s: cross-instance delivery resumed",
                down_since.elapsed().as_secs_f64()
            ),
            (None | Some(true), false) => {
                tracing::warn!(
                    "redis is unavailable: messages are refused (unavailable) until it is \
                     back, retrying every {}s",
                    HEARTBEAT.as_secs()
                );
                *down_since = Instant::now();
            }
            (Some(true), true) | (Some(false), false) => return false,
        }
        *was_up = Some(up);
        metrics::set_broker_connected(up);
        self.reachable.send_replace(up);
        up
    }

    /// A push from the connection: a message, a (re)subscription or a
    /// disconnection.
    fn receive(&self, push: PushInfo) {
        match push.kind {
            PushKind::Message => {
                // [channel, payload]
                let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (push.data.first(), push.data.get(1))
                else {
                    return;
                };
                let (Ok(channel), Ok(payload)) =
                    (std::str::from_utf8(channel), std::str::from_utf8(payload))
                else {
                    return;
                };
                if let Some(handler) = self.handler.get() {
                    deliver(handler.as_ref(), channel, payload);
                }
            }
            PushKind::Subscribe => self.subscribed.store(true, Ordering::Relaxed),
            PushKind::Disconnection => {
                self.subscribed.store(false, Ordering::Relaxed);
                self.answering.store(false, Ordering::Relaxed);
                self.settle();
            }
            _ => {}
        }
    }
}

/// Hands one pub/sub message to the handler.
fn deliver(handler: &dyn Handler, channel: &str, payload: &str) {
    let Some(room) = room_of_channel(channel) else {
        match serde_json::from_str::<Control>(payload) {
            Ok(control) => handler.control(control),
            Err(e) => tracing::warn!(channel, "ignoring a malformed control message: {e}"),
        }
        return;
    };
    if let Some(change) = payload.strip_prefix("c|") {
        match serde_json::from_str::<PresenceChange>(change) {
            Ok(change) => handler.presence(room, change),
            Err(e) => tracing::warn!(room, "ignoring a malformed presence change: {e}"),
        }
        return;
    }
    // `p|<epoch>|<offset>|<data>`: the epoch is hex, the offset digits.
    let publication = payload.strip_prefix("p|").and_then(|rest| {
        let (epoch, rest) = rest.split_once('|')?;
        let (offset, data) = rest.split_once('|')?;
        Some((epoch, offset.parse().ok()?, data))
    });
    match publication {
        Some((epoch, offset, data)) => handler.publication(
            room,
            epoch,
            Publication {
                offset,
                data: Arc::from(data),
            },
        ),
        None => tracing::warn!(room, "ignoring a malformed publication"),
    }
}
