//! Several instances over a real Redis: rooms, presence, history and
//! notifications shared; Redis outages survived.

mod support;

use serde_json::json;
use support::redis::Redis;
use support::ws::{self, token, Client};
use support::Server;

async fn instance(redis: &Redis) -> Server {
    ws::start(&[("PULSE_REDIS_URL", &redis.url())]).await
}

#[tokio::test]
async fn instances_share_rooms_presence_history_and_notifications() {
    let redis = Redis::start().await;
    let a = instance(&redis).await;
    let b = instance(&redis).await;
    a.wait_ready(200).await;
    b.wait_ready(200).await;

    let mut ada = Client::connect(&a, "Ada").await;
    let mut bob = Client::connect(&b, "Bob").await;
    ada.join("tech").await;
    let joined = bob.join("tech").await;
    assert_eq!(
        joined["members"],
        json!(["Ada", "Bob"]),
        "members are the union"
    );
    let notice = ada.recv_type("user-joined").await;
    assert_eq!(notice["user"], "Bob");

    bob.say("tech", "hello from b").await;
    assert_eq!(bob.recv_type("message").await["text"], "hello from b");
    let m = ada.recv_type("message").await;
    assert_eq!(
        (m["user"].as_str(), m["text"].as_str()),
        (Some("Bob"), Some("hello from b"))
    );
    ada.say("tech", "hello from a").await;
    assert_eq!(bob.recv_type("message").await["text"], "hello from a");

    // History lives in Redis: a newcomer on either instance sees both.
    let mut cy = Client::connect(&b, "Cy").await;
    let joined = cy.join("tech").await;
    let texts: Vec<_> = joined["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts, ["hello from b", "hello from a"]);
    assert_eq!(joined["members"], json!(["Ada", "Bob", "Cy"]));

    // Leaving on one instance is seen on the other.
    drop(bob);
    assert_eq!(ada.recv_type("user-left").await["user"], "Bob");

    // A notification published on A reaches the feed on B.
    let mut feed = support::Sse::open(&b.url, None).await;
    assert_eq!(feed.next_event().await.kind(), Some("connected"));
    let res = reqwest::Client::new()
        .post(format!("{}/api/notifications", a.url))
        .header("authorization", format!("Bearer {}", token("Ops")))
        .body(r#"{"text":"across instances"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let note = loop {
        let f = feed.next_event().await;
        if f.kind() == Some("notification") {
            break f.data.unwrap();
        }
    };
    assert_eq!(note["text"], "across instances");
    assert_eq!(note["user"], "Ops");
    assert_eq!(a.metric("pulse_broker_connected").await, 1.0);
}

#[tokio::test]
async fn a_redis_outage_keeps_local_delivery_and_heals_by_itself() {
    let mut redis = Redis::start().await;
    let mut a = instance(&redis).await;
    let b = instance(&redis).await;
    a.wait_ready(200).await;
    b.wait_ready(200).await;
    let mut ada = Client::connect(&a, "Ada").await;
    let mut amy = Client::connect(&a, "Amy").await;
    let mut bob = Client::connect(&b, "Bob").await;
    for c in [&mut ada, &mut amy, &mut bob] {
        c.join("general").await;
    }

    redis.stop().await;
    a.wait_ready(503).await;
    assert_eq!(a.metric("pulse_broker_connected").await, 0.0);
    // Clients of the same instance still talk, and lose nothing.
    for i in 0..20 {
        ada.say("general", &format!("during {i}")).await;
    }
    for i in 0..20 {
        assert_eq!(
            amy.recv_type("message").await["text"],
            format!("during {i}")
        );
    }

    redis.launch().await;
    a.wait_ready(200).await;
    b.wait_ready(200).await;
    // Same sockets, no reconnect: cross-instance delivery is back.
    ada.say("general", "after the outage").await;
    let m = bob.recv_type("message").await;
    assert_eq!(m["text"], "after the outage");
    // The outage was logged once, not once per message or retry.
    assert_eq!(
        a.take_logs_matching("serving this instance's clients only")
            .len(),
        1
    );
}

#[tokio::test]
async fn an_instance_starts_without_redis_and_connects_when_it_comes() {
    let mut redis = Redis::reserve();
    let a = instance(&redis).await;
    a.wait_ready(503).await;
    // It serves its own clients meanwhile.
    let mut ada = Client::connect(&a, "Ada").await;
    ada.join("general").await;
    ada.say("general", "alone").await;
    assert_eq!(ada.recv_type("message").await["text"], "alone");

    redis.launch().await;
    a.wait_ready(200).await;
}

#[tokio::test]
async fn the_members_of_a_dead_instance_drop_out() {
    let redis = Redis::start().await;
    let env = [
        ("PULSE_REDIS_URL", redis.url()),
        ("PULSE_PRESENCE_TTL_S", "3".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = ws::start(&env).await;
    let mut b = ws::start(&env).await;
    a.wait_ready(200).await;
    b.wait_ready(200).await;
    let mut ada = Client::connect(&a, "Ada").await;
    let mut bob = Client::connect(&b, "Bob").await;
    ada.join("random").await;
    bob.join("random").await;
    assert_eq!(ada.recv_type("user-joined").await["user"], "Bob");

    // B dies without a word: no leave, no close.
    b.child.kill().await.unwrap();
    let left = ada.recv_type("user-left").await;
    assert_eq!(left["user"], "Bob");
    let mut cy = Client::connect(&a, "Cy").await;
    assert_eq!(cy.join("random").await["members"], json!(["Ada", "Cy"]));
    drop(bob);
}

#[tokio::test]
async fn a_feed_client_resumes_on_another_instance_without_missing_notifications() {
    let redis = Redis::start().await;
    let a = instance(&redis).await;
    let b = instance(&redis).await;
    a.wait_ready(200).await;
    b.wait_ready(200).await;
    let notify = |server: &Server, text: &'static str| {
        let url = format!("{}/api/notifications", server.url);
        async move {
            let res = reqwest::Client::new()
                .post(url)
                .header("authorization", format!("Bearer {}", token("Ops")))
                .body(format!(r#"{{"text":"{text}"}}"#))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 202);
        }
    };
    // On A, the client sees the first notification; then it goes away.
    let mut on_a = support::Sse::open(&a.url, None).await;
    let mut on_b = support::Sse::open(&b.url, None).await;
    notify(&a, "one").await;
    let (seen, first) = next_note(&mut on_a).await;
    assert_eq!(first["text"], "one");
    drop(on_a);
    // B has it too (the bus delivered it) before the next one is published.
    assert_eq!(next_note(&mut on_b).await.1["text"], "one");
    notify(&a, "two").await;
    assert_eq!(next_note(&mut on_b).await.1["text"], "two");

    // It comes back on B: it gets "two", and not "one" again.
    let mut resumed = support::Sse::open(&b.url, Some(&seen.to_string())).await;
    assert_eq!(next_note(&mut resumed).await.1["text"], "two");
}

/// The next notification on `sse` (its SSE id and data); a gap is a failure.
async fn next_note(sse: &mut support::Sse) -> (u64, serde_json::Value) {
    loop {
        let f = sse.next_event().await;
        match f.kind() {
            Some("notification") => return (f.id.unwrap(), f.data.unwrap()),
            Some("gap") => panic!("no gap expected"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn sigterm_drains_an_instance_and_metrics_count_what_happened() {
    let redis = Redis::start().await;
    let a = instance(&redis).await;
    a.wait_ready(200).await;
    let mut ada = Client::connect(&a, "Ada").await;
    let mut amy = Client::connect(&a, "Amy").await;
    ada.join("general").await;
    amy.join("general").await;
    for i in 0..3 {
        ada.say("general", &format!("m{i}")).await;
        assert_eq!(amy.recv_type("message").await["text"], format!("m{i}"));
    }
    // Two sockets opened; three messages, each delivered to both members.
    let series = "pulse_connections_opened_total{transport=\"ws\"}";
    assert_eq!(a.metric(series).await, 2.0);
    assert_eq!(a.metric("pulse_messages_delivered_total").await, 6.0);
    assert_eq!(
        a.metric("pulse_messages_received_total").await,
        5.0,
        "2 joins + 3 messages"
    );
    assert_eq!(a.metric("pulse_rate_limited_total").await, 0.0);
    // Published to Redis: two user-joined notices and three messages.
    a.wait_metric("pulse_broker_publish_seconds_count", 5.0)
        .await;

    let mut feed = support::Sse::open(&a.url, None).await;
    assert_eq!(feed.next_event().await.kind(), Some("connected"));
    let started = std::time::Instant::now();
    a.signal("TERM");
    for c in [&mut ada, &mut amy] {
        let frame = c.closed().await.expect("a close frame");
        assert_eq!(u16::from(frame.code), 1001);
    }
    while feed.next().await.is_some() {}
    let mut a = a;
    let status = tokio::time::timeout(support::WAIT, a.child.wait())
        .await
        .expect("exits within the timeout")
        .unwrap();
    assert!(status.success());
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
