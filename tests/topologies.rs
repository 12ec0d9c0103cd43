//! pulse over a Redis Cluster (sharded pub/sub) and over Sentinel, each
//! started here from Debian's `redis-server` on free loopback ports: the
//! two-instance chat, presence, recovery, notifications and per-room
//! subscriptions on each; then a master killed mid-conversation.

mod support;

use serde_json::{json, Value};
use support::redis::{RedisCluster, RedisSentinel};
use support::ws::{self, names, Client};
use support::{eventually, Server};

const RECEIVED: &str = "pulse_broker_publications_received_total";

async fn ready_pair(url: &str) -> (Server, Server) {
    let env = [("PULSE_REDIS_URL", url)];
    let a = ws::start(&env).await;
    let b = ws::start(&env).await;
    a.wait_ready(200).await;
    b.wait_ready(200).await;
    (a, b)
}

/// Says `text` until it is acked, with the same `client_id` each time (the
/// server publishes it once), waiting as each nack asks; returns once the
/// sender has both the ack and the message itself (which may come first).
async fn said(client: &mut Client, room: &str, text: &str) -> Value {
    let id = ws::client_id();
    eventually(&format!("{text:?} to be acked"), async || {
        client.say_as(room, text, &id).await;
        let mut echo = None;
        let answer = loop {
            let v = client.recv_any().await;
            if v["type"] == "message" && v["client_id"] == id.as_str() {
                echo = Some(v);
            } else if (v["type"] == "ack" || v["type"] == "nack") && v["client_id"] == id.as_str() {
                break v;
            }
        };
        if answer["type"] == "ack" {
            if echo.is_none() {
                sees(client, room, text).await;
            }
            return Some(answer);
        }
        assert_eq!(answer["code"], "unavailable", "{answer}");
        let wait = answer["retry_after_ms"].as_u64().unwrap_or(100);
        tokio::time::sleep(std::time::Duration::from_millis(wait.min(500))).await;
        None
    })
    .await
}

/// The next `message` of `room` (other frames are skipped).
async fn message_in(client: &mut Client, room: &str) -> Value {
    loop {
        let v = client.recv_type("message").await;
        if v["room"] == room {
            return v;
        }
    }
}

/// Waits until `client` has `text` of `room` on screen: as a message, or in
/// the history of a fresh `joined` (after a failover changed the epoch, the
/// instance starts its members over).
async fn sees(client: &mut Client, room: &str, text: &str) {
    loop {
        let v = client.recv_any().await;
        if v["room"] != room {
            continue;
        }
        if v["type"] == "message" && v["text"] == text {
            return;
        }
        if v["type"] == "joined" && texts(&v["history"]).iter().any(|t| t == text) {
            return;
        }
    }
}

fn texts(history: &Value) -> Vec<String> {
    history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect()
}

/// What two instances share on any topology.
async fn two_instances_share_everything(url: &str) {
    let (a, b) = ready_pair(url).await;

    // Chat and presence across the instances.
    let mut ada = Client::connect(&a, "Ada").await;
    let mut bob = Client::connect(&b, "Bob").await;
    ada.join("tech").await;
    let joined = bob.join("tech").await;
    assert_eq!(names(&joined["members"]), ["Ada", "Bob"]);
    ada.joined_seen("tech", "Bob").await;
    said(&mut bob, "tech", "hello from b").await;
    assert_eq!(message_in(&mut ada, "tech").await["text"], "hello from b");
    let ack = said(&mut ada, "tech", "hello from a").await;
    let last = message_in(&mut bob, "tech").await;
    assert_eq!(last["offset"], ack["offset"]);
    assert_eq!(last["text"], "hello from a");

    // Recovery: Ada goes, misses three, and comes back on B.
    drop(ada);
    bob.left_seen("tech", "Ada").await;
    for i in 0..3 {
        // Bob is on B: once he has it, B has received it.
        said(&mut bob, "tech", &format!("missed {i}")).await;
    }
    let mut ada = Client::connect(&b, "Ada").await;
    let since = json!({ "epoch": joined["epoch"], "offset": last["offset"] });
    ada.send(json!({ "type": "join", "room": "tech", "since": since }))
        .await;
    let rejoined = ada.recv_type("joined").await;
    assert_eq!(rejoined["recovered"], true, "{rejoined}");
    assert_eq!(
        texts(&rejoined["history"]),
        ["missed 0", "missed 1", "missed 2"]
    );

    // Per room: B has no member in "quiet", so its traffic never reaches B.
    let before = b.metric(RECEIVED).await;
    let a_before = a.metric(RECEIVED).await;
    let mut cy = Client::connect(&a, "Cy").await;
    cy.join("quiet").await;
    for i in 0..5 {
        said(&mut cy, "quiet", &format!("on a only {i}")).await;
    }
    // A got its own five (so they did travel through Redis)…
    a.wait_metric(RECEIVED, a_before + 5.0).await;
    // …and after a publication B does receive (in "tech"), B's count grew by
    // that one only: none of the five came to B.
    said(&mut bob, "tech", "marker").await;
    assert_eq!(message_in(&mut ada, "tech").await["text"], "marker");
    assert_eq!(b.metric(RECEIVED).await, before + 1.0);
    // Once B has a member there, it does receive them.
    let mut dee = Client::connect(&b, "Dee").await;
    dee.join("quiet").await;
    said(&mut cy, "quiet", "now b too").await;
    assert_eq!(message_in(&mut dee, "quiet").await["text"], "now b too");

    // A notification published on A reaches a feed on B.
    let note = ws::notification_across(&a, &b, "across instances").await;
    assert_eq!(note["text"], "across instances");
}

/// A master dies mid-conversation (`kill` kills it and waits for the
/// failover): delivery resumes on both instances, and every acked message
/// is in the room's stream, or the epoch changed and a rejoin is told
/// `recovered: false`.
async fn a_master_dies_and_nothing_acked_is_lost(url: &str, kill: impl AsyncFnOnce()) {
    let (a, b) = ready_pair(url).await;
    let mut ada = Client::connect(&a, "Ada").await;
    let mut bob = Client::connect(&b, "Bob").await;
    let joined = ada.join("tech").await;
    bob.join("tech").await;
    let mut acked = Vec::new();
    for i in 0..5 {
        let text = format!("before {i}");
        said(&mut ada, "tech", &text).await;
        acked.push(text);
        sees(&mut bob, "tech", &acked[i]).await;
    }

    kill().await;

    // Sends go on: refused (unavailable) while there is no master, then
    // acked; each acked one reaches Bob on the other instance.
    for i in 0..5 {
        let text = format!("after {i}");
        said(&mut ada, "tech", &text).await;
        acked.push(text.clone());
        sees(&mut bob, "tech", &text).await;
    }

    // A newcomer reads the stream: nothing acked is missing from it.
    let mut cy = Client::connect(&b, "Cy").await;
    let now = cy.join("tech").await;
    let history = texts(&now["history"]);
    if now["epoch"] == joined["epoch"] {
        for text in &acked {
            assert!(
                history.contains(text),
                "{text:?} was acked but is gone: {history:?}"
            );
        }
    } else {
        // The stream was lost with the master: said so, never recovered.
        let since = json!({ "epoch": joined["epoch"], "offset": 1 });
        cy.send(json!({ "type": "join", "room": "tech", "since": since }))
            .await;
        assert_eq!(cy.recv_type("joined").await["recovered"], false);
        for text in acked.iter().filter(|t| t.starts_with("after")) {
            assert!(
                history.contains(text),
                "{text:?} was acked but is gone: {history:?}"
            );
        }
    }
}

#[tokio::test]
async fn on_a_redis_cluster_two_instances_share_rooms_presence_recovery_and_notifications() {
    let cluster = RedisCluster::start().await;
    two_instances_share_everything(&cluster.url()).await;
}

#[tokio::test]
async fn when_a_cluster_master_dies_delivery_resumes_and_nothing_acked_is_lost() {
    let mut cluster = RedisCluster::start().await;
    let url = cluster.url();
    let master = cluster.master_of("pulse:{tech}:stream").await;
    a_master_dies_and_nothing_acked_is_lost(&url, async || {
        cluster.kill(master).await;
    })
    .await;
}

#[tokio::test]
async fn over_sentinel_two_instances_share_rooms_presence_recovery_and_notifications() {
    let sentinel = RedisSentinel::start().await;
    two_instances_share_everything(&sentinel.url()).await;
}

#[tokio::test]
async fn when_the_sentinel_master_dies_the_instances_follow_the_new_one() {
    let mut sentinel = RedisSentinel::start().await;
    let url = sentinel.url();
    a_master_dies_and_nothing_acked_is_lost(&url, async || {
        sentinel.kill_master().await;
    })
    .await;
}

#[tokio::test]
async fn a_cluster_url_that_names_no_node_is_refused_at_start() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pulse"))
        .env("PULSE_REDIS_URL", "redis+cluster://")
        .env("LEPTOS_SITE_ADDR", "127.0.0.1:0")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PULSE_REDIS_URL"), "{err}");
}
