//! One connection to whichever Redis the [`Target`] names, seen by the rest
//! of `redis/` as one thing: commands (scripts, pipelines), and
//! subscriptions whose pushes go to one push handler.
//!
//! - One server: redis-rs's [`ConnectionManager`], which reconnects and
//!   resubscribes by itself.
//! - Redis Cluster: redis-rs's cluster client, commands routed by key slot;
//!   subscriptions are *sharded* (`SSUBSCRIBE`, one command per slot, sent
//!   together), and the client moves them when the slot map changes.
//! - Sentinel: the sentinels name the master, then it is one server; the link
//!   asks again when that server stops being the master ([`watch_failovers`]
//!   hears `+switch-master` at once; the heartbeat's `ROLE` catches the rest).

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{Cmd, ConnectionInfo, Pipeline, ProtocolVersion, PushInfo, RedisFuture, Value};
use tokio::sync::mpsc;

use super::target::Target;

/// A connection of either kind. Clones share it.
#[derive(Clone)]
pub(super) enum Connection {
    /// One server (or the master Sentinel named).
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

/// Where pushes go: the link's handler, told which connection they came from.
pub(super) type OnPush = std::sync::Arc<dyn Fn(PushInfo) + Send + Sync>;

/// Connects to `target`, each connection attempt and answer within
/// `timeout`. One server connects lazily (it never fails here);
/// the others need an answer (from a cluster node, or from a sentinel and
/// the master it names).
pub(super) async fn open(
    target: &Target,
    on_push: OnPush,
    timeout: Duration,
) -> redis::RedisResult<Connection> {
    match target {
        Target::Single(info) => single(info.clone(), on_push, timeout, false).await,
        Target::Cluster(nodes) => {
            let sender = move |push: PushInfo| {
                on_push(push);
                Ok::<(), std::convert::Infallible>(())
            };
            let client = ClusterClientBuilder::new(nodes.iter().map(resp3))
                .use_protocol(ProtocolVersion::RESP3)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(2)
                .push_sender(sender)
                .build()?;
            Ok(Connection::Cluster(client.get_async_connection().await?))
        }
        Target::Sentinel {
            sentinels,
            master,
            node,
        } => {
            let address = master_address(sentinels, master, node).await?;
            single(address, on_push, timeout, true).await
        }
    }
}

/// The master's address, as the sentinels say (and as it confirms).
pub(super) async fn master_address(
    sentinels: &[ConnectionInfo],
    master: &str,
    node: &redis::RedisConnectionInfo,
) -> redis::RedisResult<ConnectionInfo> {
    let mut sentinel = Sentinel::build(sentinels.to_vec())?;
    let settings = node.clone().set_protocol(ProtocolVersion::RESP3);
    let info = SentinelNodeConnectionInfo::default().set_redis_connection_info(settings);
    let client = sentinel.async_master_for(master, Some(&info)).await?;
    Ok(client.get_connection_info().clone())
}

async fn single(
    info: ConnectionInfo,
    on_push: OnPush,
    timeout: Duration,
    eager: bool,
) -> redis::RedisResult<Connection> {
    let client = redis::Client::open(resp3(&info))?;
    let sender = move |push: PushInfo| {
        on_push(push);
        Ok::<(), std::convert::Infallible>(())
    };
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(100))
        .set_max_delay(Duration::from_secs(1))
        .set_push_sender(sender)
        .set_automatic_resubscription();
    let manager = if eager {
        ConnectionManager::new_with_config(client, config).await?
    } else {
        ConnectionManager::new_lazy_with_config(client, config)?
    };
    Ok(Connection::Single(manager))
}

/// RESP3: pushes share the command connection.
fn resp3(info: &ConnectionInfo) -> ConnectionInfo {
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    info.clone().set_redis_settings(settings)
}

impl Connection {
    /// Subscribes `channels`: one command for a server; on a cluster one
    /// `SSUBSCRIBE` per slot (a command may not span slots), sent together.
    pub(super) async fn subscribe(&mut self, channels: &[String]) -> redis::RedisResult<()> {
        self.change(channels, true).await
    }

    /// Unsubscribes `channels`, as [`Connection::subscribe`] subscribes.
    pub(super) async fn unsubscribe(&mut self, channels: &[String]) -> redis::RedisResult<()> {
        self.change(channels, false).await
    }

    async fn change(&mut self, channels: &[String], subscribe: bool) -> redis::RedisResult<()> {
        match self {
            Connection::Single(manager) if subscribe => manager.subscribe(channels).await,
            Connection::Single(manager) => manager.unsubscribe(channels).await,
            Connection::Cluster(cluster) => {
                let calls = by_slot(channels).into_values().map(|group| {
                    let mut cluster = cluster.clone();
                    async move {
                        if subscribe {
                            cluster.ssubscribe(group).await
                        } else {
                            cluster.sunsubscribe(group).await
                        }
                    }
                });
                futures::future::try_join_all(calls).await.map(|_| ())
            }
        }
    }

    /// The slot ranges of the cluster's masters (`CLUSTER SLOTS`); one range
    /// for a single server.
    pub(super) async fn shards(&mut self) -> redis::RedisResult<Vec<(u16, u16)>> {
        if let Connection::Single(_) = self {
            return Ok(vec![(0, SLOTS - 1)]);
        }
        let slots: Vec<Value> = redis::cmd("CLUSTER").arg("SLOTS").query_async(self).await?;
        Ok(slots
            .iter()
            .filter_map(|range| match range {
                Value::Array(fields) => {
                    let start = redis::from_redis_value_ref::<u16>(fields.first()?).ok()?;
                    let end = redis::from_redis_value_ref::<u16>(fields.get(1)?).ok()?;
                    Some((start, end))
                }
                _ => None,
            })
            .collect())
    }
}

/// The number of the slot a key or channel lives in (redis-rs computes the
/// slot, hash tag and all, but keeps its number to itself: a table of all
/// 16,384 gives it back).
pub(super) fn slot(name: &str) -> u16 {
    static NUMBERS: LazyLock<HashMap<Slot, u16>> = LazyLock::new(|| {
        (0..SLOTS)
            .filter_map(|n| Some((Slot::new(n)?, n)))
            .collect()
    });
    NUMBERS.get(&Slot::for_key(name)).copied().unwrap_or(0)
}

/// How many slots a Redis Cluster has.
const SLOTS: u16 = 16384;

fn by_slot(channels: &[String]) -> HashMap<Slot, Vec<String>> {
    let mut groups: HashMap<Slot, Vec<String>> = HashMap::new();
    for channel in channels {
        groups
            .entry(Slot::for_key(channel))
            .or_default()
            .push(channel.clone());
    }
    groups
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// Listens to the sentinels' `+switch-master` for `master` and says so on
/// `failed_over` each time it moves, until the receiver is gone. One sentinel
/// at a time; the next when one stops answering.
pub(super) async fn watch_failovers(
    sentinels: Vec<ConnectionInfo>,
    master: String,
    failed_over: mpsc::UnboundedSender<()>,
) {
    let mut next = 0;
    loop {
        let sentinel = &sentinels[next % sentinels.len()];
        next += 1;
        if let Ok(client) = redis::Client::open(sentinel.clone()) {
            if let Ok(Ok(mut pubsub)) =
                tokio::time::timeout(Duration::from_secs(1), client.get_async_pubsub()).await
            {
                if pubsub.subscribe("+switch-master").await.is_ok() {
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        // "<master> <old ip> <old port> <new ip> <new port>"
                        let text: String = message.get_payload().unwrap_or_default();
                        if text.split(' ').next() == Some(master.as_str()) {
                            tracing::info!("sentinel: {text}");
                            if failed_over.send(()).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        }
        if failed_over.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
