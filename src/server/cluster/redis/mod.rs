//! The Redis implementations, over one server, a Redis Cluster or a master
//! that Sentinel names ([`target`] reads the three URL forms). One RESP3
//! [`Connection`] carries every command and every subscription (its pushes
//! are decoded straight into the handler, in the order Redis sent them); it
//! reconnects and resubscribes by itself. A heartbeat every second notices
//! an outage and its end (`PING`; `ROLE` under Sentinel), and a probe
//! published to this instance on every shard notices a subscription that
//! stopped delivering while commands still work: either way the connection
//! is opened afresh and every channel subscribed again.
//!
//! On a Redis Cluster, channels are sharded (`SSUBSCRIBE`, `SPUBLISH`): a
//! room's publications travel only through the shard that holds the room,
//! to the instances that have a member in it.
//!
//! Keys and channels (every key of a room carries the room as its hash tag,
//! `{room}`, so that a room's stream, meta, presence and channel live on one
//! shard of a Redis Cluster):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `pulse:{R}:stream` | stream | the room's publications, entry id `<offset>-0` |
//! | `pulse:{R}:meta` | hash | `e` epoch, `s` top offset, `b` bytes kept, `r` replication id of its last writer |
//! | `pulse:{R}:dedup:<user>:<client_id>` | string | `<epoch>:<offset>` of a publication, for the dedup window |
//! | `pulse:{R}:entries`, `:holders`, `:names` | sorted set, hashes | presence (see [`presence`]) |
//! | `pulse:{R}:ch` | channel | `p\|<epoch>\|<offset>\|<data>` publications, `c\|<json>` presence changes |
//! | `pulse:feed`, `pulse:control` | channels | notifications; sign-outs (JSON `Control`) |
//! | `pulse:to:<instance>` | channel | frames for one instance (JSON `Control`); probes |
//! | `pulse:{<tag>}:probe:<instance>` | channel | probes, one channel per shard (cluster only) |
//! | `pulse:revoked:<sid>` | string | a signed-out session, until its tokens could no longer be valid |

mod broker;
mod connection;
mod presence;
mod revocations;
mod subscriptions;
mod target;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{Cluster, Control, Handler, PresenceChange, Publication, StreamLimits, Unavailable};
use crate::server::metrics;
use connection::{Connection, OnPush};
use subscriptions::{Rooms, Want};
use target::Target;

/// Period of the health check and the probes (and of connection attempts
/// while down).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Longest a Redis call may take before it counts as failed.
const TIMEOUT: Duration = Duration::from_secs(1);
/// A probe not back within this means the subscriptions stopped delivering.
const PROBE_DEADLINE: Duration = Duration::from_secs(3);
/// A cluster or Sentinel connection that stops answering, once it has been
/// open this long, is opened afresh (the slot map or the master may have
/// changed while redis-rs keeps trying the old nodes); a single server's
/// manager reconnects by itself.
const REOPEN_AFTER: Duration = Duration::from_secs(2);

/// The channel of notifications.
const FEED_CHANNEL: &str = "pulse:feed";
/// The channel of control events for every instance (sign-outs).
const CONTROL_CHANNEL: &str = "pulse:control";
/// What a probe carries (never JSON, never a room's `p|`/`c|`).
const PROBE: &str = "probe";

/// Whether `url` is a form `PULSE_REDIS_URL` takes (the error says why not).
pub fn check_url(url: &str) -> Result<(), String> {
    target::parse(url).map(|_| ())
}

/// The services over the Redis at `url`, connected (and reconnected) in the
/// background once the broker runs.
pub fn connect(url: &str, limits: StreamLimits) -> Result<Cluster, String> {
    let target = target::parse(url).map_err(|e| format!("PULSE_REDIS_URL: {e}"))?;
    let link = Arc::new(Link::new(target));
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
    /// Where Redis is.
    target: Target,
    /// The connection while there is one (`None` before the first, and
    /// between one that was given up and the next), and when it was opened.
    connection: Mutex<(Option<Connection>, Instant)>,
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
    /// Which connection is the current one: pushes of an older one are
    /// ignored.
    generation: AtomicU64,
    /// Whether our own channels are all subscribed (a disconnection says
    /// they are not; the heartbeat subscribes them again).
    subscribed: AtomicBool,
    /// Whether the last health check answered.
    answering: AtomicBool,
    /// Where what arrives goes (set when the broker runs).
    handler: OnceLock<Arc<dyn Handler>>,
    /// Per probe channel, when the oldest probe still unanswered went out.
    probes: Mutex<HashMap<String, Option<Instant>>>,
    /// Room channels Redis unsubscribed by itself (a slot moved), or all of
    /// them when a connection dropped: the link's task subscribes them again.
    lost: mpsc::UnboundedSender<Want>,
    /// What was last said about the connection (`None`: nothing yet) and
    /// since when it is down: an outage is logged once when it starts and
    /// once when it ends.
    said: Mutex<(Option<bool>, Instant)>,
    /// The same, for whoever tells clients.
    reachable: watch::Sender<bool>,
}

impl Link {
    fn new(target: Target) -> Link {
        let (wants, wanted) = mpsc::unbounded_channel();
        let state = Arc::new(State {
            instance: uuid::Uuid::now_v7().simple().to_string(),
            generation: AtomicU64::new(0),
            subscribed: AtomicBool::new(false),
            answering: AtomicBool::new(false),
            handler: OnceLock::new(),
            probes: Mutex::new(HashMap::new()),
            lost: wants.clone(),
            said: Mutex::new((None, Instant::now())),
            // Not until the first check says so: /readyz answers 503 until then.
            reachable: watch::channel(false).0,
        });
        metrics::set_broker_connected(false);
        Link {
            target,
            connection: Mutex::new((None, Instant::now())),
            state,
            wants,
            wanted: Mutex::new(Some(wanted)),
        }
    }

    fn instance(&self) -> &str {
        &self.state.instance
    }

    fn is_up(&self) -> bool {
        self.state.is_up()
    }

    /// Whether this is a Redis Cluster (sharded channels, one slot a call).
    fn sharded(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// The current connection, whatever its health.
    fn current(&self) -> Option<Connection> {
        self.slot().0.clone()
    }

    /// How long ago the current connection was opened.
    fn opened_for(&self) -> Duration {
        self.slot().1.elapsed()
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, (Option<Connection>, Instant)> {
        // Each change is one assignment.
        self.connection.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A clone of the connection for one call, if Redis is up: while it is
    /// down, calls fail at once rather than wait for a timeout.
    fn connection(&self) -> Result<Connection, Unavailable> {
        if self.is_up() {
            self.current().ok_or(Unavailable)
        } else {
            Err(Unavailable)
        }
    }

    /// Runs `call` on the connection within [`TIMEOUT`].
    async fn call<T, F>(&self, call: impl FnOnce(Connection) -> F) -> Result<T, Unavailable>
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

    /// Runs `pipe` and returns its answer. Every key of one pipeline must
    /// live in one slot (one room's, or one key's).
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

    /// Connects, subscribes this instance's own channels, keeps the room
    /// subscriptions as asked, checks the connection and probes the
    /// subscriptions every [`HEARTBEAT`], until `shutdown`. Each time the
    /// link comes (back) up, the sign-outs kept meanwhile go out and the
    /// handler is told.
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
        // Under Sentinel, a failover is heard at once.
        let (failed_over, mut failovers) = mpsc::unbounded_channel();
        if let Target::Sentinel {
            sentinels, master, ..
        } = &self.target
        {
            let watcher =
                connection::watch_failovers(sentinels.clone(), master.clone(), failed_over);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = watcher => {}
                }
            });
        }
        let mut rooms = Rooms::default();
        let mut own = Own::default();
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
                Some(()) = failovers.recv() => {
                    self.give_up("the sentinels moved the master");
                }
                _ = heartbeat.tick() => {
                    if self.current().is_none() && self.open().await {
                        own = self.own_channels().await;
                        rooms.renew(self).await;
                    }
                    self.check(&own).await;
                    // Rooms subscribed before the handler is told the link
                    // is back: its re-reads then cover every gap.
                    rooms.mend(self).await;
                    self.probe(&own).await;
                    if self.state.settle() {
                        revocations.flush().await;
                        handler.reconnected();
                    }
                }
            }
        }
    }

    /// Opens a connection; true once there is one.
    async fn open(&self) -> bool {
        let generation = self.state.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let on_push: OnPush = {
            let state = self.state.clone();
            Arc::new(move |push: PushInfo| {
                if state.generation.load(Ordering::Relaxed) == generation {
                    state.receive(push);
                }
            })
        };
        let opened = tokio::time::timeout(
            2 * TIMEOUT,
            connection::open(&self.target, on_push, TIMEOUT),
        )
        .await;
        match opened {
            Ok(Ok(connection)) => {
                self.state.subscribed.store(false, Ordering::Relaxed);
                *self.slot() = (Some(connection), Instant::now());
                true
            }
            Ok(Err(e)) => {
                tracing::debug!("redis: cannot connect: {e}");
                false
            }
            Err(_) => {
                tracing::debug!("redis: connecting timed out");
                false
            }
        }
    }

    /// Drops the connection (the next heartbeat opens another).
    fn give_up(&self, why: &str) {
        tracing::warn!("redis: {why}: connecting afresh");
        self.slot().0 = None;
        self.state.generation.fetch_add(1, Ordering::Relaxed);
        self.state.subscribed.store(false, Ordering::Relaxed);
        self.state.answering.store(false, Ordering::Relaxed);
    }

    /// This instance's own channels: notifications, control, its own
    /// channel (which carries probes), and on a cluster one probe channel on
    /// each shard.
    async fn own_channels(&self) -> Own {
        let mut probes = vec![instance_channel(self.instance())];
        if let (true, Some(mut connection)) = (self.sharded(), self.current()) {
            if let Ok(Ok(shards)) = tokio::time::timeout(TIMEOUT, connection.shards()).await {
                probes.extend(probe_channels(self.instance(), &shards));
            }
        }
        let mut all = vec![FEED_CHANNEL.to_string(), CONTROL_CHANNEL.to_string()];
        all.extend(probes.iter().cloned());
        Own { all, probes }
    }

    /// Subscribes our own channels if they are not, and checks that the
    /// connection answers (and, under Sentinel, that it is the master's).
    async fn check(&self, own: &Own) {
        let Some(mut connection) = self.current() else {
            return;
        };
        if !self.state.subscribed.load(Ordering::Relaxed) {
            // The first subscription is ours to make (and any that a failed
            // reconnect lost); a single server's manager also renews it on
            // every reconnect, a cluster's client does not.
            let subscribed = tokio::time::timeout(TIMEOUT, connection.subscribe(&own.all)).await;
            if matches!(subscribed, Ok(Ok(()))) {
                self.state.subscribed.store(true, Ordering::Relaxed);
            }
        }
        let answered = match self.target {
            Target::Sentinel { .. } => {
                // A master that failed over and came back is a replica now.
                let role = redis::cmd("ROLE");
                match tokio::time::timeout(TIMEOUT, role.query_async::<Vec<Value>>(&mut connection))
                    .await
                {
                    Ok(Ok(role)) => {
                        let master =
                            matches!(role.first(), Some(Value::BulkString(r)) if r == b"master");
                        if !master {
                            self.give_up("the server is no longer the master");
                            return;
                        }
                        true
                    }
                    _ => false,
                }
            }
            _ => {
                let ping = redis::cmd("PING");
                let answered =
                    tokio::time::timeout(TIMEOUT, ping.query_async::<Value>(&mut connection)).await;
                matches!(answered, Ok(Ok(_)))
            }
        };
        self.state.answering.store(answered, Ordering::Relaxed);
        // Counted from this connection's opening, not the outage's start: a
        // new connection gets its chance (a failover takes a few seconds).
        if !answered
            && !matches!(self.target, Target::Single(_))
            && self.opened_for() >= REOPEN_AFTER
        {
            self.give_up("no answer");
        }
    }

    /// Publishes a probe on each probe channel, and gives the connection up
    /// if one has not come back in time while commands do answer (the
    /// subscriptions stopped delivering).
    async fn probe(&self, own: &Own) {
        let channels: Vec<&String> = own.probes.iter().collect();
        if !self.probes_due(&channels) {
            return;
        }
        // Not through `publish`: probes are not publications (metrics).
        let sends = channels.iter().map(|channel| async move {
            let mut pipe = redis::pipe();
            pipe.cmd(self.publish_command())
                .arg(channel.as_str())
                .arg(PROBE)
                .ignore();
            self.query::<()>(&pipe).await
        });
        futures::future::join_all(sends).await;
    }

    /// Whether to send the next probes: not while down (probes sent before
    /// an outage say nothing about after it), and not once one is late, which
    /// gives the connection up.
    fn probes_due(&self, channels: &[&String]) -> bool {
        let mut probes = self.state.probes.lock().unwrap_or_else(|e| e.into_inner());
        if !self.is_up() {
            probes.clear();
            return false;
        }
        let late = channels.iter().any(|channel| {
            probes
                .get(*channel)
                .is_some_and(|sent| sent.is_some_and(|at| at.elapsed() > PROBE_DEADLINE))
        });
        if late {
            probes.clear();
            drop(probes);
            metrics::broker_probe_lost();
            self.give_up("a probe did not come back: the subscriptions stopped delivering");
            return false;
        }
        let now = Instant::now();
        for channel in channels {
            // The oldest unanswered one counts.
            probes
                .entry((*channel).clone())
                .or_insert(None)
                .get_or_insert(now);
        }
        true
    }

    /// The command that publishes on a channel: `SPUBLISH` on a cluster.
    fn publish_command(&self) -> &'static str {
        if self.sharded() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// Publishes `payload` on `channel`; how many instances got it.
    async fn publish(&self, channel: &str, payload: String) -> Result<u64, Unavailable> {
        let started = Instant::now();
        let mut pipe = redis::pipe();
        pipe.cmd(self.publish_command()).arg(channel).arg(payload);
        let (receivers,) = self.query::<(u64,)>(&pipe).await?;
        metrics::broker_publish_latency(started.elapsed());
        Ok(receivers)
    }
}

/// The probe channels of `instance` on a cluster: one in each slot range,
/// named by the first tag that falls in it (so every master's connection is
/// probed).
fn probe_channels(instance: &str, shards: &[(u16, u16)]) -> Vec<String> {
    let mut channels = Vec::new();
    for &(start, end) in shards {
        let found = (0..100_000u32)
            .map(|n| format!("pulse:{{p{n}}}:probe:{instance}"))
            .find(|channel| (start..=end).contains(&connection::slot(channel)));
        channels.extend(found);
    }
    channels
}

/// This instance's own channels, as found when the connection opened.
#[derive(Default)]
struct Own {
    /// Every one of them, to subscribe.
    all: Vec<String>,
    /// Those that carry probes.
    probes: Vec<String>,
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

    /// A push from the connection: a message, a (re)subscription, an
    /// unsubscription Redis made by itself, or a disconnection.
    fn receive(&self, push: PushInfo) {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
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
                if payload == PROBE {
                    let mut probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(unanswered) = probes.get_mut(channel) {
                        *unanswered = None;
                    }
                    return;
                }
                if let Some(handler) = self.handler.get() {
                    deliver(handler.as_ref(), channel, payload);
                }
            }
            PushKind::SUnsubscribe => {
                // A slot moved (resharding, failover), or we left the room:
                // the link's task tells which, and subscribes again if needed.
                if let Some(Value::BulkString(channel)) = push.data.first() {
                    if let Some(room) = std::str::from_utf8(channel).ok().and_then(room_of_channel)
                    {
                        let _ = self.lost.send(Want::Lost(room.to_string()));
                    } else {
                        // One of our own: all of them are subscribed again.
                        self.subscribed.store(false, Ordering::Relaxed);
                    }
                }
            }
            PushKind::Disconnection => {
                self.subscribed.store(false, Ordering::Relaxed);
                self.answering.store(false, Ordering::Relaxed);
                let _ = self.lost.send(Want::Dropped);
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
