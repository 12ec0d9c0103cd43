//! Scale-out: the bus between instances. Without `PULSE_REDIS_URL` there is
//! one instance and nothing to do ([`Broker::local`]). With it, every room
//! event and notification is also published on one Redis pub/sub channel and
//! delivered by every other instance to its own clients; room history and
//! presence live in Redis, so every instance shows the same.
//!
//! Delivery to an instance's own clients never waits for Redis: events go to
//! local members first, then onto a bounded queue that one publisher task
//! drains. If Redis is down the instance keeps serving its own clients, says so
//! once in the log and on `/readyz`, and one supervisor task reconnects (every
//! second) and resubscribes, so cross-instance delivery resumes by itself.
//!
//! Keys, every one with a TTL so nothing grows with the room names ever
//! used: `pulse:bus` (channel), `pulse:history:{room}` (list, last 50 JSON
//! messages; expires `PULSE_HISTORY_TTL` after the last message),
//! `pulse:presence:{room}` (sorted set of `{instance}|{user id}|{name}`
//! scored by expiry in ms, refreshed every 10 s: members of a dead instance
//! drop out within 30 s; the key expires with its last entry),
//! `pulse:revoked:{session}` (a signed-out session, until its tokens expire).

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::protocol::{ChatMessage, FeedEvent, Member, ServerMessage, HISTORY_LEN};
use crate::server::clock::now_ms;
use crate::server::metrics;

/// The pub/sub channel every instance publishes on and listens to.
const CHANNEL: &str = "pulse:bus";
/// Wait between two connection attempts.
const RETRY: Duration = Duration::from_secs(1);
/// Longest a Redis call may take before it counts as failed.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Commands queued for the publisher before new ones are dropped.
const QUEUE: usize = 8192;

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
    /// A session was signed out: close its sockets, refuse its token.
    Revoked {
        /// The session id.
        sid: String,
        /// When its tokens expire (Unix seconds).
        exp: u64,
    },
}

/// An event with the instance it came from.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    /// Sender's instance id; an instance ignores its own events.
    from: String,
    /// The event.
    event: BusEvent,
}

/// Work for the publisher task.
enum Command {
    /// Publish on the bus.
    Publish(String),
    /// Append to a room's history in Redis.
    History { room: String, json: String },
    /// Mark `member` present in `room` on this instance (or not).
    Presence {
        room: String,
        member: Member,
        present: bool,
    },
    /// Refresh the expiry of these presence entries.
    Refresh(Vec<(String, Member)>),
    /// Remember a signed-out session until `exp`.
    Revoke { sid: String, exp: u64 },
}

/// The bus, as the rest of the server sees it. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Option<Arc<Redis>>,
}

/// The Redis side.
struct Redis {
    /// Opens connections.
    client: redis::Client,
    /// This process's id on the bus and in presence entries.
    instance: String,
    /// The current command connection, while connected.
    conn: Mutex<Option<MultiplexedConnection>>,
    /// Whether the subscription is up (for `/readyz`, the dashboard, metrics).
    connected: AtomicBool,
    /// Queue to the publisher task.
    tx: mpsc::Sender<Command>,
    /// Presence entries live this long unless refreshed (refreshed every
    /// third of it): the members of a dead instance go within this time.
    presence_ttl: Duration,
    /// A room's history expires this long after its last message.
    history_ttl: Duration,
}

/// Where events from other instances go.
pub trait Sink: Send + Sync + 'static {
    /// An event published by another instance.
    fn deliver(&self, event: BusEvent);
    /// This instance's present users, `(room, member)`, for the refresh.
    fn local_presence(&self) -> Vec<(String, Member)>;
}

impl Broker {
    /// One instance, no bus.
    pub fn local() -> Broker {
        Broker { inner: None }
    }

    /// A Redis bus at `url`; nothing is connected until [`Broker::run`].
    pub fn redis(
        url: &str,
        presence_ttl: Duration,
        history_ttl: Duration,
    ) -> Result<(Broker, BrokerTasks), String> {
        let client = redis::Client::open(url).map_err(|e| format!("PULSE_REDIS_URL: {e}"))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let redis = Arc::new(Redis {
            client,
            instance: uuid::Uuid::now_v7().simple().to_string(),
            conn: Mutex::new(None),
            connected: AtomicBool::new(false),
            tx,
            presence_ttl,
            history_ttl,
        });
        metrics::set_broker_connected(false);
        Ok((
            Broker {
                inner: Some(redis.clone()),
            },
            BrokerTasks { redis, rx },
        ))
    }

    /// Whether a bus is configured.
    pub fn is_redis(&self) -> bool {
        self.inner.is_some()
    }

    /// `None` without a bus; otherwise whether it is connected.
    pub fn connected(&self) -> Option<bool> {
        self.inner
            .as_ref()
            .map(|r| r.connected.load(Ordering::Relaxed))
    }

    /// Describes the broker for the dashboard.
    pub fn describe(&self) -> String {
        match self.connected() {
            None => "in-process".into(),
            Some(true) => "redis (connected)".into(),
            Some(false) => "redis (disconnected)".into(),
        }
    }

    fn command(&self, cmd: Command) {
        if let Some(r) = &self.inner {
            // Never wait: while Redis is slow or down, drop rather than stall
            // local delivery (the publisher logs the outage once).
            if r.tx.try_send(cmd).is_err() {
                metrics::broker_dropped();
            }
        }
    }

    /// Sends `event` to the other instances.
    pub fn publish(&self, event: BusEvent) {
        let Some(r) = &self.inner else { return };
        let envelope = Envelope {
            from: r.instance.clone(),
            event,
        };
        if let Ok(json) = serde_json::to_string(&envelope) {
            self.command(Command::Publish(json));
        }
    }

    /// Keeps `message` in its room's shared history.
    pub fn push_history(&self, message: &ChatMessage) {
        if self.inner.is_none() {
            return;
        }
        if let Ok(json) = serde_json::to_string(message) {
            self.command(Command::History {
                room: message.room.clone(),
                json,
            });
        }
    }

    /// Records that `member` entered (or left) `room` on this instance.
    pub fn presence(&self, room: &str, member: &Member, present: bool) {
        self.command(Command::Presence {
            room: room.to_string(),
            member: member.clone(),
            present,
        });
    }

    /// Tells every instance that session `sid` (tokens expiring at `exp`) was
    /// signed out, and remembers it in Redis for instances that start later.
    pub fn revoke(&self, sid: &str, exp: u64) {
        if self.inner.is_none() {
            return;
        }
        self.command(Command::Revoke {
            sid: sid.to_string(),
            exp,
        });
        self.publish(BusEvent::Revoked {
            sid: sid.to_string(),
            exp,
        });
    }

    /// Whether Redis says session `sid` was signed out. Without Redis, or
    /// while it does not answer, `false`: the instances that heard the
    /// sign-out on the bus still refuse the session.
    pub async fn is_revoked(&self, sid: &str) -> bool {
        let Some(r) = &self.inner else { return false };
        let Some(mut conn) = r.conn.lock().ok().and_then(|c| c.clone()) else {
            return false;
        };
        let mut exists = redis::cmd("EXISTS");
        exists.arg(revoked_key(sid));
        let query = exists.query_async::<u32>(&mut conn);
        matches!(tokio::time::timeout(TIMEOUT, query).await, Ok(Ok(n)) if n > 0)
    }

    /// The shared history and members of `room` across instances, or `None`
    /// without a (connected) bus, for `member` who is joining it.
    ///
    /// The same round trip first marks them present in Redis, so that by the
    /// time they are told they joined, whoever joins next on any instance
    /// sees them. (The publisher marks them present too, in order with their
    /// later leave; the extra write only refreshes the entry.)
    pub async fn room_snapshot(
        &self,
        room: &str,
        member: &Member,
    ) -> Option<(Vec<ChatMessage>, Vec<Member>)> {
        let r = self.inner.as_ref()?;
        let mut conn = r.conn.lock().ok()?.clone()?;
        let now = now_ms();
        let mut pipe = redis::pipe();
        pipe.cmd("ZADD")
            .arg(presence_key(room))
            .arg(now + r.presence_ttl.as_millis() as u64)
            .arg(presence_entry(&r.instance, member))
            .ignore()
            .cmd("PEXPIRE")
            .arg(presence_key(room))
            .arg(presence_key_ttl(r.presence_ttl))
            .ignore()
            .cmd("LRANGE")
            .arg(history_key(room))
            .arg(0)
            .arg(-1)
            .cmd("ZRANGEBYSCORE")
            .arg(presence_key(room))
            .arg(now)
            .arg("+inf");
        let query = pipe.query_async::<(Vec<String>, Vec<String>)>(&mut conn);
        let (history, present) = tokio::time::timeout(TIMEOUT, query).await.ok()?.ok()?;
        let history = history
            .iter()
            .filter_map(|json| serde_json::from_str::<ChatMessage>(json).ok())
            .collect();
        let members = present
            .iter()
            .filter_map(|entry| parse_presence_entry(entry).map(|(_, m)| m))
            .collect();
        Some((history, members))
    }
}

/// A presence entry: `{instance}|{user id}|{name}` (ids never hold `|`).
fn presence_entry(instance: &str, member: &Member) -> String {
    format!("{instance}|{}|{}", member.id, member.name)
}

/// The instance and member of a presence entry.
fn parse_presence_entry(entry: &str) -> Option<(&str, Member)> {
    let mut parts = entry.splitn(3, '|');
    let (instance, id, name) = (parts.next()?, parts.next()?, parts.next()?);
    Some((
        instance,
        Member {
            id: id.to_string(),
            name: name.to_string(),
        },
    ))
}

/// How long a presence key outlives its newest entry: expired entries stay
/// three TTLs (see `publish`), the key goes with them.
fn presence_key_ttl(presence_ttl: Duration) -> u64 {
    3 * presence_ttl.as_millis() as u64
}

fn revoked_key(sid: &str) -> String {
    format!("pulse:revoked:{sid}")
}

fn history_key(room: &str) -> String {
    format!("pulse:history:{room}")
}

fn presence_key(room: &str) -> String {
    format!("pulse:presence:{room}")
}

/// The background work of a Redis bus, started once the rest of the server
/// exists (it delivers into it).
pub struct BrokerTasks {
    redis: Arc<Redis>,
    rx: mpsc::Receiver<Command>,
}

impl BrokerTasks {
    /// Runs the supervisor (connect, subscribe, deliver, reconnect), the
    /// publisher and the presence refresh until `shutdown`.
    pub async fn run(self, sink: Arc<dyn Sink>, shutdown: CancellationToken) {
        let BrokerTasks { redis, rx } = self;
        tokio::join!(
            supervise(redis.clone(), sink.clone(), shutdown.clone()),
            publish(redis.clone(), rx, shutdown.clone()),
            refresh(redis, sink, shutdown),
        );
    }
}

/// Keeps a command connection and a subscription up; delivers what arrives.
async fn supervise(redis: Arc<Redis>, sink: Arc<dyn Sink>, shutdown: CancellationToken) {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT));
    // The outage is logged once when it starts and once when it ends.
    let mut down_since: Option<Instant> = None;
    while !shutdown.is_cancelled() {
        let attempt = async {
            let conn = redis
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            let mut pubsub = redis.client.get_async_pubsub().await?;
            pubsub.subscribe(CHANNEL).await?;
            Ok::<_, redis::RedisError>((conn, pubsub))
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = tokio::time::timeout(TIMEOUT * 2, attempt) => r,
        };
        match result {
            Ok(Ok((conn, mut pubsub))) => {
                if let Ok(mut slot) = redis.conn.lock() {
                    *slot = Some(conn);
                }
                redis.connected.store(true, Ordering::Relaxed);
                metrics::set_broker_connected(true);
                match down_since.take() {
                    Some(since) => tracing::info!(
                        "redis is back after {:.1}s: cross-instance delivery resumed",
                        since.elapsed().as_secs_f64()
                    ),
                    None => tracing::info!("connected to redis"),
                }
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        msg = messages.next() => {
                            let Some(msg) = msg else { break };
                            let Ok(payload) = msg.get_payload::<String>() else { continue };
                            match serde_json::from_str::<Envelope>(&payload) {
                                Ok(env) if env.from != redis.instance => sink.deliver(env.event),
                                Ok(_) => {}
                                Err(e) => tracing::warn!("ignoring a malformed bus message: {e}"),
                            }
                        }
                    }
                }
                redis.connected.store(false, Ordering::Relaxed);
                metrics::set_broker_connected(false);
                if let Ok(mut slot) = redis.conn.lock() {
                    *slot = None;
                }
                if shutdown.is_cancelled() {
                    break;
                }
                tracing::warn!(
                    "lost the redis connection: serving this instance's clients only, reconnecting"
                );
                down_since = Some(Instant::now());
            }
            Ok(Err(e)) => {
                if down_since.is_none() {
                    tracing::warn!(
                        "redis is unavailable ({e}): serving this instance's clients only, retrying every {}s",
                        RETRY.as_secs()
                    );
                    down_since = Some(Instant::now());
                }
            }
            Err(_) => {
                if down_since.is_none() {
                    tracing::warn!(
                        "redis does not answer: serving this instance's clients only, retrying"
                    );
                    down_since = Some(Instant::now());
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// Drains the command queue into Redis (while connected).
async fn publish(redis: Arc<Redis>, mut rx: mpsc::Receiver<Command>, shutdown: CancellationToken) {
    loop {
        let cmd = tokio::select! {
            _ = shutdown.cancelled() => return,
            cmd = rx.recv() => match cmd { Some(c) => c, None => return },
        };
        let conn = redis.conn.lock().ok().and_then(|c| c.clone());
        let Some(mut conn) = conn else {
            metrics::broker_dropped();
            continue; // down: the supervisor has said so
        };
        let started = Instant::now();
        let now = now_ms();
        let expiry = now + redis.presence_ttl.as_millis() as u64;
        // Expired entries stay a while longer, so that every instance sees
        // them expire (and tells its clients) before they are removed.
        let forget_before = now.saturating_sub(3 * redis.presence_ttl.as_millis() as u64);
        let mut pipe = redis::pipe();
        match &cmd {
            Command::Publish(json) => {
                pipe.cmd("PUBLISH").arg(CHANNEL).arg(json);
            }
            Command::History { room, json } => {
                let key = history_key(room);
                pipe.cmd("RPUSH").arg(&key).arg(json).ignore();
                pipe.cmd("LTRIM")
                    .arg(&key)
                    .arg(-(HISTORY_LEN as i64))
                    .arg(-1)
                    .ignore();
                pipe.cmd("EXPIRE")
                    .arg(&key)
                    .arg(redis.history_ttl.as_secs())
                    .ignore();
            }
            Command::Presence {
                room,
                member,
                present,
            } => {
                let entry = presence_entry(&redis.instance, member);
                if *present {
                    pipe.cmd("ZADD")
                        .arg(presence_key(room))
                        .arg(expiry)
                        .arg(entry)
                        .ignore();
                    pipe.cmd("PEXPIRE")
                        .arg(presence_key(room))
                        .arg(presence_key_ttl(redis.presence_ttl))
                        .ignore();
                } else {
                    pipe.cmd("ZREM").arg(presence_key(room)).arg(entry).ignore();
                }
                pipe.cmd("ZREMRANGEBYSCORE")
                    .arg(presence_key(room))
                    .arg("-inf")
                    .arg(forget_before)
                    .ignore();
            }
            Command::Refresh(entries) => {
                for (room, member) in entries {
                    pipe.cmd("ZADD")
                        .arg(presence_key(room))
                        .arg(expiry)
                        .arg(presence_entry(&redis.instance, member))
                        .ignore();
                    pipe.cmd("PEXPIRE")
                        .arg(presence_key(room))
                        .arg(presence_key_ttl(redis.presence_ttl))
                        .ignore();
                }
            }
            Command::Revoke { sid, exp } => {
                pipe.cmd("SET")
                    .arg(revoked_key(sid))
                    .arg(1)
                    .arg("EXAT")
                    .arg((*exp).max(crate::server::clock::now_secs() + 1))
                    .ignore();
            }
        }
        match tokio::time::timeout(TIMEOUT, pipe.query_async::<redis::Value>(&mut conn)).await {
            Ok(Ok(_)) => {
                if matches!(cmd, Command::Publish(_)) {
                    metrics::broker_publish_latency(started.elapsed());
                }
            }
            // An outage: the supervisor notices and logs it once.
            Ok(Err(e)) => tracing::debug!("redis command failed: {e}"),
            Err(_) => tracing::debug!("redis command timed out"),
        }
    }
}

/// Refreshes this instance's presence entries so they outlive the TTL, and
/// tells this instance's clients when members of another instance expire
/// (that instance died): a `presence` frame with them as left, once.
async fn refresh(redis: Arc<Redis>, sink: Arc<dyn Sink>, shutdown: CancellationToken) {
    let period = (redis.presence_ttl / 3).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Expired entries already announced, as (room, "instance|user").
    let mut announced = HashSet::<(String, String)>::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let entries = sink.local_presence();
        if !entries.is_empty()
            && redis
                .tx
                .try_send(Command::Refresh(entries.clone()))
                .is_err()
        {
            metrics::broker_dropped();
        }
        let rooms: BTreeSet<&str> = entries.iter().map(|(room, _)| room.as_str()).collect();
        let conn = redis.conn.lock().ok().and_then(|c| c.clone());
        let (Some(mut conn), false) = (conn, rooms.is_empty()) else {
            continue;
        };
        let now = now_ms();
        let mut pipe = redis::pipe();
        for room in &rooms {
            pipe.cmd("ZRANGEBYSCORE")
                .arg(presence_key(room))
                .arg("-inf")
                .arg(now);
            pipe.cmd("ZRANGEBYSCORE")
                .arg(presence_key(room))
                .arg(now)
                .arg("+inf");
        }
        let Ok(Ok(lists)) =
            tokio::time::timeout(TIMEOUT, pipe.query_async::<Vec<Vec<String>>>(&mut conn)).await
        else {
            continue;
        };
        let mut still_expired = HashSet::new();
        for (room, pair) in rooms.iter().zip(lists.chunks(2)) {
            let [expired, live] = pair else { continue };
            let present = |id: &str| {
                live.iter()
                    .filter_map(|e| parse_presence_entry(e))
                    .any(|(_, m)| m.id == id)
                    || entries.iter().any(|(r, m)| r == room && m.id == id)
            };
            for entry in expired {
                let key = (room.to_string(), entry.clone());
                still_expired.insert(key.clone());
                if announced.contains(&key) {
                    continue;
                }
                if let Some((_, member)) = parse_presence_entry(entry) {
                    if !present(&member.id) {
                        sink.deliver(BusEvent::Room {
                            room: room.to_string(),
                            msg: ServerMessage::Presence {
                                room: room.to_string(),
                                joined: Vec::new(),
                                left: vec![member],
                                timestamp: now,
                            },
                        });
                    }
                }
                announced.insert(key);
            }
        }
        announced.retain(|k| still_expired.contains(k));
    }
}
