//! The Redis side of the bus: one RESP3 [`ConnectionManager`] carries the
//! subscription (its pushes are decoded straight into the incoming channel)
//! and every command; it reconnects and resubscribes by itself. One writer
//! task sends the queued writes in order and pings once a second, which is
//! how an outage (and its end) is noticed even when nothing is written.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::BusEvent;
use crate::protocol::{ChatMessage, HISTORY_LEN};
use crate::server::clock::now_secs;
use crate::server::metrics;

/// The pub/sub channel every instance publishes on and listens to.
const CHANNEL: &str = "pulse:bus";
/// Period of the health check (and of connection attempts while down).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Longest a Redis call may take before it counts as failed.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(1);
/// Writes queued for the writer before new ones are dropped.
const QUEUE: usize = 8192;

/// An event with the instance it came from.
#[derive(Serialize, Deserialize)]
struct Envelope<E> {
    /// Sender's instance id; an instance ignores its own events.
    from: String,
    /// The event.
    event: E,
}

/// A write for the writer task.
struct Write {
    /// The commands, sent as one pipeline.
    pipe: redis::Pipeline,
    /// Whether it is a publish (its latency is measured).
    publish: bool,
}

/// What the connection's push handler and the writer share.
struct Shared {
    /// This process's id on the bus and in presence entries.
    instance: String,
    /// Whether the subscription is in place (pushes say so).
    subscribed: AtomicBool,
    /// Whether the last health check answered.
    answering: AtomicBool,
    /// Where events from other instances go.
    incoming: broadcast::Sender<Arc<BusEvent>>,
    /// What was last said about the connection (`None`: nothing yet) and
    /// since when it is down: an outage is logged once when it starts and
    /// once when it ends.
    said: Mutex<(Option<bool>, Instant)>,
    /// The same, for whoever tells clients (optimistic until the first check).
    reachable: watch::Sender<bool>,
}

/// A connection to Redis for the bus and presence.
pub(crate) struct Link {
    /// Commands and the subscription; reconnects by itself.
    manager: ConnectionManager,
    /// State shared with the push handler.
    shared: Arc<Shared>,
    /// Queue to the writer task.
    writes: mpsc::Sender<Write>,
    /// The writer's end, taken once by [`Link::run`].
    queue: std::sync::Mutex<Option<mpsc::Receiver<Write>>>,
    /// A room's history expires this long after its last message.
    history_ttl: Duration,
}

impl Link {
    /// A link to the Redis at `url`; nothing is connected until [`Link::run`].
    pub(crate) fn open(
        url: &str,
        history_ttl: Duration,
        incoming: broadcast::Sender<Arc<BusEvent>>,
    ) -> Result<Link, String> {
        let bad = |e: redis::RedisError| format!("PULSE_REDIS_URL: {e}");
        // RESP3: the subscription shares the command connection, and the
        // manager resubscribes after a reconnect.
        let info = url.into_connection_info().map_err(bad)?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(settings)).map_err(bad)?;
        let shared = Arc::new(Shared {
            instance: uuid::Uuid::now_v7().simple().to_string(),
            subscribed: AtomicBool::new(false),
            answering: AtomicBool::new(false),
            incoming,
            said: Mutex::new((None, Instant::now())),
            reachable: watch::channel(true).0,
        });
        let on_push = {
            let shared = shared.clone();
            move |push: PushInfo| {
                shared.receive(push);
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
        let (writes, queue) = mpsc::channel(QUEUE);
        metrics::set_broker_connected(false);
        Ok(Link {
            manager,
            shared,
            writes,
            queue: std::sync::Mutex::new(Some(queue)),
            history_ttl,
        })
    }

    /// This process's id in presence entries.
    pub(crate) fn instance(&self) -> &str {
        &self.shared.instance
    }

    /// Whether the other instances can be reached, as it changes.
    pub(crate) fn reachable(&self) -> watch::Receiver<bool> {
        self.shared.reachable.subscribe()
    }

    /// Whether the other instances can be reached.
    pub(crate) fn is_up(&self) -> bool {
        self.shared.is_up()
    }

    /// Subscribes, then writes the queue in order and checks the
    /// connection every [`HEARTBEAT`], until `shutdown`.
    pub(crate) async fn run(&self, shutdown: CancellationToken) {
        let Some(mut queue) = self.queue.lock().ok().and_then(|mut q| q.take()) else {
            return;
        };
        let mut manager = self.manager.clone();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                write = queue.recv() => match write {
                    Some(write) => self.write(write).await,
                    None => return,
                },
                _ = heartbeat.tick() => {
                    self.check(&mut manager).await;
                    self.shared.settle();
                }
            }
        }
    }

    /// Subscribes if the subscription is not in place, and pings: whether
    /// the other instances can be reached now.
    async fn check(&self, manager: &mut ConnectionManager) {
        if !self.shared.subscribed.load(Ordering::Relaxed) {
            // The first subscription is ours to make (and any that a failed
            // reconnect lost); the manager renews it on every reconnect.
            let subscribed = tokio::time::timeout(TIMEOUT, manager.subscribe(CHANNEL)).await;
            if matches!(subscribed, Ok(Ok(()))) {
                self.shared.subscribed.store(true, Ordering::Relaxed);
            }
        }
        let ping = redis::cmd("PING");
        let answered = tokio::time::timeout(TIMEOUT, ping.query_async::<Value>(manager)).await;
        self.shared
            .answering
            .store(matches!(answered, Ok(Ok(_))), Ordering::Relaxed);
    }

    async fn write(&self, write: Write) {
        if !self.is_up() {
            // Down: the outage is logged once; the write is counted, not kept.
            metrics::broker_dropped();
            return;
        }
        let started = Instant::now();
        let mut manager = self.manager.clone();
        let sent =
            tokio::time::timeout(TIMEOUT, write.pipe.query_async::<Value>(&mut manager)).await;
        match sent {
            Ok(Ok(_)) if write.publish => metrics::broker_publish_latency(started.elapsed()),
            Ok(Ok(_)) => {}
            // An outage: the next health check notices and logs it.
            Ok(Err(e)) => tracing::debug!("redis write failed: {e}"),
            Err(_) => tracing::debug!("redis write timed out"),
        }
    }

    /// Queues `pipe` for the writer; never waits (while Redis is slow or down
    /// the write is dropped and counted rather than stall local delivery).
    pub(crate) fn queue(&self, pipe: redis::Pipeline) {
        self.enqueue(Write {
            pipe,
            publish: false,
        });
    }

    fn enqueue(&self, write: Write) {
        if self.writes.try_send(write).is_err() {
            metrics::broker_dropped();
        }
    }

    /// Runs `pipe` now and returns its answer, or `None` if Redis is down or
    /// does not answer within [`TIMEOUT`].
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Option<T> {
        if !self.is_up() {
            return None;
        }
        let mut manager = self.manager.clone();
        tokio::time::timeout(TIMEOUT, pipe.query_async::<T>(&mut manager))
            .await
            .ok()?
            .ok()
    }

    /// Publishes `event` to the other instances.
    pub(crate) fn publish(&self, event: &BusEvent) {
        let envelope = Envelope {
            from: self.shared.instance.clone(),
            event,
        };
        let Ok(json) = serde_json::to_string(&envelope) else {
            return;
        };
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH").arg(CHANNEL).arg(json).ignore();
        self.enqueue(Write {
            pipe,
            publish: true,
        });
    }

    /// Appends `message` to its room's history (the last [`HISTORY_LEN`]).
    pub(crate) fn remember(&self, message: &ChatMessage) {
        let Ok(json) = serde_json::to_string(message) else {
            return;
        };
        let key = history_key(&message.room);
        let mut pipe = redis::pipe();
        pipe.cmd("RPUSH").arg(&key).arg(json).ignore();
        pipe.cmd("LTRIM")
            .arg(&key)
            .arg(-(HISTORY_LEN as i64))
            .arg(-1)
            .ignore();
        pipe.cmd("EXPIRE")
            .arg(&key)
            .arg(self.history_ttl.as_secs().max(1))
            .ignore();
        self.queue(pipe);
    }

    /// The room's history, oldest first.
    pub(crate) async fn history(&self, room: &str) -> Option<Vec<ChatMessage>> {
        let mut pipe = redis::pipe();
        pipe.cmd("LRANGE").arg(history_key(room)).arg(0).arg(-1);
        let (list,) = self.query::<(Vec<String>,)>(&pipe).await?;
        Some(
            list.iter()
                .filter_map(|json| serde_json::from_str(json).ok())
                .collect(),
        )
    }

    /// Remembers that session `sid` was signed out, until its tokens expire.
    pub(crate) fn revoke(&self, sid: &str, exp: u64) {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(revoked_key(sid))
            .arg(1)
            .arg("EXAT")
            .arg(exp.max(now_secs() + 1))
            .ignore();
        self.queue(pipe);
    }

    /// Whether session `sid` was signed out (`false` if Redis does not answer).
    pub(crate) async fn is_revoked(&self, sid: &str) -> bool {
        let mut pipe = redis::pipe();
        pipe.cmd("EXISTS").arg(revoked_key(sid));
        matches!(self.query::<(u32,)>(&pipe).await, Some((n,)) if n > 0)
    }
}

impl Shared {
    fn is_up(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed) && self.answering.load(Ordering::Relaxed)
    }

    /// Publishes the connection's state (metric, log) if it changed.
    fn settle(&self) {
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
                    "redis is unavailable: serving this instance's clients only, \
                     retrying every {}s",
                    HEARTBEAT.as_secs()
                );
                *down_since = Instant::now();
            }
            (Some(true), true) | (Some(false), false) => return,
        }
        *was_up = Some(up);
        metrics::set_broker_connected(up);
        self.reachable.send_replace(up);
    }

    /// A push from the connection: an event, a (re)subscription or a disconnection.
    fn receive(&self, push: PushInfo) {
        match push.kind {
            PushKind::Message => {
                // [channel, payload]
                let Some(Value::BulkString(payload)) = push.data.get(1) else {
                    return;
                };
                match serde_json::from_slice::<Envelope<BusEvent>>(payload) {
                    Ok(envelope) if envelope.from != self.instance => {
                        // No receiver (nobody has subscribed yet) is fine.
                        let _ = self.incoming.send(Arc::new(envelope.event));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("ignoring a malformed bus message: {e}"),
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

fn revoked_key(sid: &str) -> String {
    format!("pulse:revoked:{sid}")
}

fn history_key(room: &str) -> String {
    format!("pulse:history:{room}")
}
