//! The broker over Redis: a room's stream is a Redis Stream whose entry ids
//! are the offsets, beside a meta hash with the epoch and the top offset.
//! One script appends, trims (by count and bytes), refreshes the TTLs and
//! publishes, atomically, as Centrifugo's does: so the offset is assigned
//! where every instance agrees, the stream never holds a publication that was
//! not published, and the order on the room's channel is the offset order.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::future::BoxFuture;
use redis::Script;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::revocations::RedisRevocations;
use super::{instance_channel, room_channel, room_key, Link, Want, CONTROL_CHANNEL, FEED_CHANNEL};
use crate::protocol::StreamPosition;
use crate::server::cluster::{
    new_epoch, Broker, Control, Handler, History, IdempotencyKey, PresenceChange, Publication,
    Published, Range, StreamLimits, Unavailable,
};
use crate::server::metrics;

/// The broker.
pub(super) struct RedisBroker {
    /// The connection.
    link: Arc<Link>,
    /// Bounds of every stream.
    limits: StreamLimits,
    /// Told when the link comes back (sign-outs kept meanwhile go out).
    revocations: Arc<RedisRevocations>,
    /// `publish.lua`.
    publish: Script,
    /// `history.lua`.
    history: Script,
}

impl RedisBroker {
    pub(super) fn new(
        link: Arc<Link>,
        limits: StreamLimits,
        revocations: Arc<RedisRevocations>,
    ) -> RedisBroker {
        RedisBroker {
            link,
            limits,
            revocations,
            publish: Script::new(concat!(
                include_str!("epoch.lua"),
                include_str!("publish.lua")
            )),
            history: Script::new(concat!(
                include_str!("epoch.lua"),
                include_str!("history.lua")
            )),
        }
    }

    fn ttl_ms(&self) -> u64 {
        self.limits.ttl.as_millis().max(1) as u64
    }
}

/// The offset of a stream entry id (`<offset>-0`).
fn offset_of(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

#[async_trait]
impl Broker for RedisBroker {
    fn instance(&self) -> &str {
        self.link.instance()
    }

    fn describe(&self) -> &'static str {
        if self.link.is_up() {
            "redis (connected)"
        } else {
            "redis (disconnected)"
        }
    }

    fn reachable(&self) -> watch::Receiver<bool> {
        self.link.state.reachable.subscribe()
    }

    async fn run(&self, handler: Arc<dyn Handler>, shutdown: CancellationToken) {
        self.link.run(handler, shutdown, &self.revocations).await;
    }

    async fn publish(
        &self,
        room: &str,
        data: &str,
        key: Option<&IdempotencyKey>,
    ) -> Result<Published, Unavailable> {
        let started = Instant::now();
        let (dedup, window) = match key {
            Some(k) => (
                room_key(room, &format!("dedup:{}:{}", k.user_id, k.client_id)),
                self.limits.dedup_window.as_millis().max(1) as u64,
            ),
            None => (room_key(room, "dedup:-"), 0),
        };
        let mut invocation = self.publish.prepare_invoke();
        invocation
            .key(room_key(room, "stream"))
            .key(room_key(room, "meta"))
            .key(dedup)
            .arg(data)
            .arg(self.limits.size)
            .arg(self.limits.bytes)
            .arg(self.ttl_ms())
            .arg(room_channel(room))
            .arg(window)
            .arg(new_epoch())
            .arg(self.link.publish_command());
        let (epoch, offset, duplicate): (String, u64, u8) = self
            .link
            .call(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        metrics::broker_publish_latency(started.elapsed());
        Ok(Published {
            position: StreamPosition { epoch, offset },
            duplicate: duplicate == 1,
        })
    }

    async fn history(&self, room: &str, range: Range) -> Result<History, Unavailable> {
        let (mode, n, after) = match range {
            Range::Latest(n) => ("latest", n, 0),
            Range::After(offset, n) => ("after", n, offset),
        };
        let mut invocation = self.history.prepare_invoke();
        invocation
            .key(room_key(room, "stream"))
            .key(room_key(room, "meta"))
            .arg(mode)
            .arg(n)
            .arg(after)
            .arg(new_epoch())
            .arg(self.ttl_ms());
        type Entries = Vec<(String, Vec<String>)>;
        let (epoch, offset, entries): (String, u64, Entries) = self
            .link
            .call(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        let mut publications: Vec<Publication> = entries
            .into_iter()
            .filter_map(|(id, fields)| {
                // Fields: ["d", data].
                let data = fields.into_iter().nth(1)?;
                Some(Publication {
                    offset: offset_of(&id)?,
                    data: Arc::from(data),
                })
            })
            .collect();
        if matches!(range, Range::Latest(_)) {
            publications.reverse();
        }
        Ok(History {
            top: StreamPosition { epoch, offset },
            publications,
        })
    }

    fn subscribe(&self, rooms: &[String]) -> BoxFuture<'static, Result<(), Unavailable>> {
        let (done, answer) = oneshot::channel();
        self.link.want(Want::Rooms(rooms.to_vec(), done));
        Box::pin(async move { answer.await.unwrap_or(Err(Unavailable)) })
    }

    fn unsubscribe(&self, rooms: &[String]) {
        self.link.want(Want::NotRooms(rooms.to_vec()));
    }

    async fn publish_presence(
        &self,
        room: &str,
        change: &PresenceChange,
    ) -> Result<(), Unavailable> {
        let json = serde_json::to_string(change).map_err(|_| Unavailable)?;
        self.link
            .publish(&room_channel(room), format!("c|{json}"))
            .await
            .map(|_| ())
    }

    async fn broadcast(&self, control: &Control) -> Result<(), Unavailable> {
        let channel = match control {
            Control::Feed { .. } => FEED_CHANNEL,
            Control::Revoked { .. } | Control::Frames { .. } => CONTROL_CHANNEL,
        };
        let json = serde_json::to_string(control).map_err(|_| Unavailable)?;
        self.link.publish(channel, json).await.map(|_| ())
    }

    async fn send_to(&self, instance: &str, control: &Control) -> Result<bool, Unavailable> {
        let json = serde_json::to_string(control).map_err(|_| Unavailable)?;
        let receivers = self.link.publish(&instance_channel(instance), json).await?;
        Ok(receivers > 0)
    }
}
