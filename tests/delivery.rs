//! No message lost: per-room offsets shared by every instance, recovery
//! across instances, acknowledged idempotent sends, Redis outages, and
//! presence that survives a restart. Two instances of the release binary on
//! a real `redis-server`, with real WebSocket clients.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::redis::Redis;
use support::ws::{self, names, Client};
use support::{eventually, Server};

/// Settings for instances that take many messages from one user quickly.
fn busy(redis: &Redis, extra: &[(&'static str, &'static str)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("PULSE_REDIS_URL".to_string(), redis.url()),
        (
            "PULSE_RATE_LIMIT_PER_IP_PER_MIN".to_string(),
            "1000000".to_string(),
        ),
        (
            "PULSE_RATE_LIMIT_PER_MIN".to_string(),
            "1000000".to_string(),
        ),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

async fn start(env: &[(String, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = ws::start(&env).await;
    server.wait_ready(200).await;
    server
}

/// The `since` of a `joined` (or of the last message after it).
fn position(epoch: &Value, offset: u64) -> Value {
    json!({ "epoch": epoch, "offset": offset })
}

/// What these tests do with a chat client besides the basics.
trait ClientExt {
    /// Joins `room` with `since` and returns the `joined`.
    async fn join_since(&mut self, room: &str, since: Value) -> Value;
    /// Sends `n` messages without waiting in between, then returns their
    /// answers (acks or nacks) in the order they were sent.
    async fn send_all(&mut self, room: &str, prefix: &str, n: usize) -> Vec<Value>;
    /// Says `text` with `id` and waits for its answer.
    async fn answered(&mut self, room: &str, text: &str, id: &str) -> Value;
}

impl ClientExt for Client {
    async fn join_since(&mut self, room: &str, since: Value) -> Value {
        self.send(json!({ "type": "join", "room": room, "since": since }))
            .await;
        self.recv_type("joined").await
    }

    async fn send_all(&mut self, room: &str, prefix: &str, n: usize) -> Vec<Value> {
        let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            self.say_as(room, &format!("{prefix} {i}"), id).await;
        }
        let mut answers = BTreeMap::new();
        while answers.len() < n {
            let v = self.recv_any().await;
            if v["type"] == "ack" || v["type"] == "nack" {
                let id = v["client_id"].as_str().unwrap().to_string();
                assert!(ids.contains(&id), "an answer to a message not sent: {v}");
                answers.insert(id, v);
            }
        }
        ids.iter().map(|id| answers[id].clone()).collect()
    }

    async fn answered(&mut self, room: &str, text: &str, id: &str) -> Value {
        self.say_as(room, text, id).await;
        loop {
            let v = self.recv_any().await;
            if (v["type"] == "ack" || v["type"] == "nack") && v["client_id"] == id {
                return v;
            }
        }
    }
}

fn offsets(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["offset"].as_u64().expect("an offset"))
        .collect()
}

#[tokio::test]
async fn a_member_recovers_exactly_what_it_missed_on_the_other_instance() {
    let redis = Redis::start().await;
    let env = busy(&redis, &[("PULSE_RECOVERY_MAX", "1000")]);
    let (a, b) = (start(&env).await, start(&env).await);
    let mut bob = Client::connect(&a, "Bob").await;
    bob.join("rec").await;
    let mut ada = Client::connect(&a, "Ada").await;
    let joined = ada.join("rec").await;
    let epoch = joined["epoch"].clone();
    let seen = joined["offset"].as_u64().unwrap();
    drop(ada);

    // 1000 messages while Ada is away.
    let acks = bob.send_all("rec", "away", 1000).await;
    assert!(acks.iter().all(|a| a["type"] == "ack"), "all published");
    let acked: Vec<u64> = acks.iter().map(|a| a["offset"].as_u64().unwrap()).collect();
    assert_eq!(acked, (seen + 1..=seen + 1000).collect::<Vec<_>>());

    // She comes back on B: exactly the 1000, in order, once each.
    let mut ada = Client::connect(&b, "Ada").await;
    let rejoined = ada.join_since("rec", position(&epoch, seen)).await;
    assert_eq!(rejoined["recovered"], true, "{}", rejoined["recovered"]);
    assert_eq!(rejoined["epoch"], epoch);
    let history = rejoined["history"].as_array().unwrap();
    assert_eq!(offsets(history), acked);
    let texts: Vec<&str> = history
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts[0], "away 0");
    assert_eq!(texts[999], "away 999");
    let top = rejoined["offset"].as_u64().unwrap();
    assert_eq!(top, seen + 1000);
    // And live from there: the next message follows without a hole.
    bob.say_acked("rec", "welcome back").await;
    let next = ada.recv_type("message").await;
    assert_eq!(next["offset"].as_u64(), Some(top + 1));
    drop(ada);

    // More than PULSE_RECOVERY_MAX missed: not recovered, and said so.
    let acks = bob.send_all("rec", "more", 1001).await;
    assert!(acks.iter().all(|a| a["type"] == "ack"));
    let mut ada = Client::connect(&b, "Ada").await;
    let rejoined = ada.join_since("rec", position(&epoch, top + 1)).await;
    assert_eq!(rejoined["recovered"], false);
    let history = rejoined["history"].as_array().unwrap();
    assert!(history.len() <= 50, "the recent history only");
    let last = offsets(history).last().copied();
    assert_eq!(last, Some(top + 1 + 1001));
}

#[tokio::test]
async fn a_lost_stream_gets_a_new_epoch_and_is_never_taken_for_recovered() {
    // Redis flushed: the stream is gone.
    let redis = Redis::start().await;
    let env = busy(&redis, &[]);
    let (a, b) = (start(&env).await, start(&env).await);
    let mut ada = Client::connect(&a, "Ada").await;
    ada.join("lost").await;
    ada.say_acked("lost", "before").await;
    let joined = ada.join("lost").await; // answered again: the position
    let (epoch, offset) = (joined["epoch"].clone(), joined["offset"].as_u64().unwrap());
    assert!(offset >= 1);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let mut again = Client::connect(&b, "Ada").await;
    let rejoined = again.join_since("lost", position(&epoch, offset)).await;
    assert_eq!(rejoined["recovered"], false);
    assert_ne!(rejoined["epoch"], epoch);

    // One instance without Redis, restarted: a new epoch.
    let lone = ws::start(&[]).await;
    let mut ada = Client::connect(&lone, "Ada").await;
    ada.join("lone").await;
    ada.say_acked("lone", "kept in memory").await;
    let before = ada.join("lone").await;
    let mut lone = lone;
    lone.signal("TERM");
    lone.exited_cleanly().await;
    let restarted = ws::start(&[]).await;
    let mut ada = Client::connect(&restarted, "Ada").await;
    let since = position(&before["epoch"], before["offset"].as_u64().unwrap());
    let rejoined = ada.join_since("lone", since).await;
    assert_eq!(rejoined["recovered"], false);
    assert_ne!(rejoined["epoch"], before["epoch"]);
    assert_eq!(rejoined["offset"], 0, "the stream starts over");
}

#[tokio::test]
async fn concurrent_senders_on_two_instances_share_one_order_without_holes() {
    let redis = Redis::start().await;
    let env = busy(&redis, &[]);
    let (a, b) = (start(&env).await, start(&env).await);
    let servers = [&a, &a, &b, &b];
    let mut senders = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let mut c = Client::connect(server, &format!("Sender{i}")).await;
        c.join("order").await;
        senders.push(c);
    }
    let mut readers = Vec::new();
    for server in [&a, &b] {
        let mut c = Client::connect(server, "Reader").await;
        c.join("order").await;
        readers.push(c);
    }
    // Everyone reads while the four send 500 each, at once.
    let reading: Vec<_> = senders
        .into_iter()
        .chain(readers)
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(async move {
                let sends = if i < 4 { 500 } else { 0 };
                for n in 0..sends {
                    c.say_as("order", &format!("s{i} {n}"), &format!("s{i}-{n}"))
                        .await;
                }
                let (mut acks, mut messages) = (0, Vec::new());
                while acks < sends || messages.len() < 2000 {
                    let v = c.recv_any().await;
                    match v["type"].as_str() {
                        Some("ack") => acks += 1,
                        Some("message") => messages.push(v),
                        Some("presence") => {}
                        _ => panic!("unexpected {v}"),
                    }
                }
                messages
            })
        })
        .collect();
    let mut sequences = Vec::new();
    for task in reading {
        let got = task.await.expect("a member got its 2000");
        let seq: Vec<(u64, String)> = got
            .iter()
            .map(|m| {
                (
                    m["offset"].as_u64().unwrap(),
                    m["text"].as_str().unwrap().into(),
                )
            })
            .collect();
        sequences.push(seq);
    }
    let first = &sequences[0];
    let offsets: Vec<u64> = first.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (1..=2000).collect::<Vec<_>>(),
        "no hole, no repeat"
    );
    for other in &sequences[1..] {
        assert_eq!(other, first, "every member, the same sequence");
    }
}

#[tokio::test]
async fn a_message_sent_again_after_a_drop_is_published_once() {
    let redis = Redis::start().await;
    let env = busy(&redis, &[]);
    let (a, b) = (start(&env).await, start(&env).await);
    let mut bob = Client::connect(&a, "Bob").await;
    bob.join("dup").await;
    let mut ada = Client::connect(&a, "Ada").await;
    ada.join("dup").await;
    ada.say_as("dup", "only once", "same-id").await;
    let first = ada.recv_type("ack").await;
    drop(ada);
    // Did it arrive? Ada cannot know: she sends it again, from B.
    let mut ada = Client::connect(&b, "Ada").await;
    ada.join("dup").await;
    ada.say_as("dup", "only once", "same-id").await;
    let second = ada.recv_type("ack").await;
    assert_eq!(second["offset"], first["offset"], "the first ack again");
    // Bob got it once: the next message he gets is the one after it.
    assert_eq!(bob.recv_type("message").await["text"], "only once");
    ada.say("dup", "next").await;
    let next = bob.recv_type("message").await;
    assert_eq!(next["text"], "next");
    assert_eq!(
        next["offset"].as_u64(),
        first["offset"].as_u64().map(|o| o + 1)
    );
}

/// What one reader saw, segment by segment: a `joined` (its own, or one
/// that says the stream started over) opens a segment.
#[derive(Default)]
struct Seen {
    /// Each segment's (offset, client_id) in arrival order.
    segments: Vec<Vec<(u64, String)>>,
}

impl Seen {
    fn take(&mut self, frame: &Value) {
        let entry = |m: &Value| {
            (
                m["offset"].as_u64().unwrap(),
                m["client_id"].as_str().unwrap_or_default().to_string(),
            )
        };
        match frame["type"].as_str() {
            Some("joined") => {
                let history = frame["history"].as_array().unwrap();
                self.segments.push(history.iter().map(entry).collect());
            }
            Some("message") => self.segments.last_mut().unwrap().push(entry(frame)),
            _ => {}
        }
    }

    fn client_ids(&self) -> Vec<&str> {
        self.segments
            .iter()
            .flatten()
            .map(|(_, id)| id.as_str())
            .collect()
    }
}

#[tokio::test]
async fn a_redis_crash_mid_stream_loses_no_acked_message_and_shows_none_that_was_not() {
    let mut redis = Redis::start().await;
    let env = busy(&redis, &[]);
    let (a, b) = (start(&env).await, start(&env).await);
    // Readers on both instances, and a session signed in on A whose socket
    // is on B.
    let mut readers = Vec::new();
    for server in [&a, &b] {
        let mut c = Client::connect(server, "Reader").await;
        c.send(json!({"type": "join", "room": "crash"})).await;
        readers.push(c);
    }
    let (cookie, _) = ws::sign_in(&a, "Sid").await;
    let mut sid_on_b = Client::connect_cookie(&b, &cookie).await;
    sid_on_b.join("general").await;
    let reading: Vec<_> = readers
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut seen = Seen::default();
                loop {
                    let frame = c.recv_any().await;
                    if frame["type"] == "message" && frame["text"] == "the end" {
                        return seen;
                    }
                    seen.take(&frame);
                }
            })
        })
        .collect();

    // Two senders, one on each instance, send one message after another.
    let mut ada = Client::connect(&a, "Ada").await;
    let mut bea = Client::connect(&b, "Bea").await;
    ada.join("crash").await;
    bea.join("crash").await;
    let (mut acked, mut nacked) = (BTreeSet::new(), BTreeSet::new());
    // One round: each sender sends one message and waits for its answer.
    async fn round(ada: &mut Client, bea: &mut Client, i: usize) -> Vec<(String, bool)> {
        let mut answers = Vec::new();
        for (who, c) in [("a", ada), ("b", bea)] {
            let id = format!("{who}-{i}");
            let answer = c.answered("crash", &format!("{who} {i}"), &id).await;
            answers.push((id, answer["type"] == "ack"));
        }
        answers
    }
    let mut record = |answers: Vec<(String, bool)>| {
        for (id, ok) in answers {
            if ok {
                acked.insert(id);
            } else {
                nacked.insert(id);
            }
        }
    };
    let mut i = 0;
    for _ in 0..50 {
        record(round(&mut ada, &mut bea, i).await);
        i += 1;
    }
    // Redis dies mid-stream (SIGKILL); the senders keep going.
    redis.stop().await;
    let mut refused_during = 0;
    while refused_during < 20 {
        let answers = round(&mut ada, &mut bea, i).await;
        refused_during += answers.iter().filter(|(_, ok)| !ok).count();
        record(answers);
        i += 1;
    }
    // A sign-out during the outage.
    assert_eq!(ws::sign_out(&a, &cookie).await.status(), 200);
    redis.launch().await;
    a.wait_ready(200).await;
    b.wait_ready(200).await;
    // The sign-out reaches B once Redis is back: its socket closes.
    let closed = sid_on_b.closed().await.expect("a close frame");
    assert_eq!(u16::from(closed.code), 4001);
    // Delivery resumes (on the same sockets).
    let mut acked_after = 0;
    while acked_after < 40 {
        let answers = round(&mut ada, &mut bea, i).await;
        acked_after += answers.iter().filter(|(_, ok)| *ok).count();
        record(answers);
        i += 1;
    }
    ada.say_acked("crash", "the end").await;

    assert!(nacked.len() >= 20, "the outage was refused");
    for task in reading {
        let seen = task.await.unwrap();
        let ids = seen.client_ids();
        let unique: BTreeSet<&str> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "nothing twice");
        for id in &acked {
            assert!(unique.contains(id.as_str()), "acked {id} was delivered");
        }
        for id in &nacked {
            assert!(!unique.contains(id.as_str()), "nacked {id} was not");
        }
        // Redis restarted empty (no persistence): the stream started over,
        // and the reader was told so by a `joined` that did not recover.
        assert!(seen.segments.len() >= 2, "told the stream was lost");
        for segment in &seen.segments {
            let offsets: Vec<u64> = segment.iter().map(|(o, _)| *o).collect();
            assert!(
                offsets.windows(2).all(|w| w[1] == w[0] + 1),
                "offset order, no hole: {offsets:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_fallback_post_that_cannot_cross_is_refused_not_accepted() {
    let mut redis = Redis::start().await;
    let env = busy(&redis, &[]);
    let (a, b) = (start(&env).await, start(&env).await);
    let token = ws::token("Fay");
    let bearer = format!("Bearer {token}");
    let mut sse =
        support::Sse::open_with(&a.url, "/api/chat/stream", &[("authorization", &bearer)]).await;
    let hello = sse.next_event().await.data.unwrap();
    let conn = hello["conn"].as_str().unwrap().to_string();
    redis.stop().await;
    b.wait_ready(503).await;
    let frames = json!([{"type": "message", "room": "general", "text": "hi", "client_id": "f1"}]);
    let res = reqwest::Client::new()
        .post(format!("{}/api/chat/send", b.url))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(json!({ "conn": conn, "frames": frames }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503, "never 202 for frames that went nowhere");
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], "unavailable", "{body}");
}

#[tokio::test]
async fn a_restart_under_a_member_who_comes_back_in_time_tells_nobody() {
    let redis = Redis::start().await;
    let env = vec![("PULSE_REDIS_URL".to_string(), redis.url())];
    let mut a = start(&env).await;
    let b = start(&env).await;
    let mut bob = Client::connect(&b, "Bob").await;
    bob.join("stay").await;
    let mut ada = Client::connect(&a, "Ada").await;
    let joined = ada.join("stay").await;
    assert_eq!(names(&joined["members"]), ["Ada", "Bob"]);
    bob.joined_seen("stay", "Ada").await;
    let since = position(&joined["epoch"], joined["offset"].as_u64().unwrap());

    // A is replaced (SIGTERM, a new process); Ada reconnects to it.
    a.signal("TERM");
    let closed = ada.closed().await.expect("a close frame");
    assert_eq!(u16::from(closed.code), 1001);
    a.exited_cleanly().await;
    let a2 = start(&env).await;
    let mut ada = Client::connect(&a2, "Ada").await;
    let rejoined = ada.join_since("stay", since).await;
    assert_eq!(rejoined["recovered"], true);
    assert_eq!(names(&rejoined["members"]), ["Ada", "Bob"]);

    // Once the old instance's entry is gone from Redis (its grace over),
    // Cy comes and goes: the presence frames Bob saw until then are Cy's.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    eventually("the old instance's entry to be swept", async || {
        let entries: Vec<String> = redis::cmd("ZRANGE")
            .arg("pulse:{stay}:entries")
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .ok()?;
        (entries
            .iter()
            .filter(|e| e.starts_with("test-ada|"))
            .count()
            == 1)
            .then_some(())
    })
    .await;
    let mut cy = Client::connect(&b, "Cy").await;
    cy.join("stay").await;
    let seen = bob.joined_seen("stay", "Cy").await;
    for list in ["joined", "left"] {
        assert!(!names(&seen[list]).contains(&"Ada".to_string()), "{seen}");
    }

    // Dan's connection drops for good: he is gone after the grace.
    let mut dan = Client::connect(&a2, "Dan").await;
    dan.join("stay").await;
    bob.joined_seen("stay", "Dan").await;
    let dropped = Instant::now();
    drop(dan);
    bob.left_seen("stay", "Dan").await;
    assert!(
        dropped.elapsed() >= Duration::from_secs(5),
        "not before PULSE_PRESENCE_GRACE: {:?}",
        dropped.elapsed()
    );
}
