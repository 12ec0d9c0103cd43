//! Several instances over a real Redis: rooms, presence, history and
//! notifications shared; Redis outages survived.

mod support;

use support::redis::Redis;
use support::ws::{self, names, token, Client};
use support::Server;

async fn instance(redis: &Redis) -> Server {
    ws::start(&[("PULSE_REDIS_URL", &redis.url())]).await
}

/// An instance on `redis` that is connected and ready.
async fn ready_instance(redis: &Redis) -> Server {
    let server = instance(redis).await;
    server.wait_ready(200).await;
    server
}

#[tokio::test]
async fn instances_share_rooms_presence_history_and_notifications() {
    let redis = Redis::start().await;
    let a = ready_instance(&redis).await;
    let b = ready_instance(&redis).await;

    let mut ada = Client::connect(&a, "Ada").await;
    let mut bob = Client::connect(&b, "Bob").await;
    ada.join("tech").await;
    let joined = bob.join("tech").await;
    assert_eq!(
        names(&joined["members"]),
        ["Ada", "Bob"],
        "members are the union"
    );
    ada.joined_seen("tech", "Bob").await;

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
    assert_eq!(names(&joined["members"]), ["Ada", "Bob", "Cy"]);

    // Leaving on one instance is seen on the other.
    drop(bob);
    ada.left_seen("tech", "Bob").await;

    // A notification published on A reaches the feed on B.
    let note = ws::notification_across(&a, &b, "across instances").await;
    assert_eq!(note["text"], "across instances");
    assert_eq!(note["user"], "Ops");
    assert_eq!(a.metric("pulse_broker_connected").await, 1.0);
}

#[tokio::test]
async fn during_a_redis_outage_messages_are_refused_unavailable_and_it_heals_by_itself() {
    let mut redis = Redis::start().await;
    let mut a = ready_instance(&redis).await;
    let b = ready_instance(&redis).await;
    let mut ada = Client::connect(&a, "Ada").await;
    let mut amy = Client::connect(&a, "Amy").await;
    let mut bob = Client::connect(&b, "Bob").await;
    for c in [&mut ada, &mut amy, &mut bob] {
        c.join("general").await;
    }
    let mut feed = support::Sse::open(&a.url, None).await;

    redis.stop().await;
    a.wait_ready(503).await;
    assert_eq!(a.metric("pulse_broker_connected").await, 0.0);
    // The clients are told that the other servers are out of reach…
    let health = ada.recv_type("health").await;
    assert_eq!(health["other_servers"], false, "{health}");
    // …and so is a client that connects during the outage, at once. (Only a
    // session this instance vouches for may: Ada's, which is connected
    // here. One it has not seen lately is refused until Redis is back: it
    // may have been signed out elsewhere meanwhile.)
    let bearer = format!("Bearer {}", token("Stranger"));
    let stranger = [("authorization", bearer.as_str())];
    assert_eq!(ws::upgrade_status(&ws::ws_url(&a), &stranger).await, 503);
    let mut late = Client::connect(&a, "Ada").await;
    assert_eq!(late.recv_type("health").await["other_servers"], false);
    // The feed's streams are told too, new ones at once.
    let health = next_of_kind(&mut feed, "health").await;
    assert_eq!(health["other_servers"], false, "{health}");
    let mut late_feed = support::Sse::open(&a.url, None).await;
    assert_eq!(
        next_of_kind(&mut late_feed, "health").await["other_servers"],
        false
    );
    // Nothing is shown as sent that Bob will not get: each message is
    // nacked `unavailable` with a retry delay, and nobody gets it.
    let nack = ada.say_acked("general", "during").await;
    assert_eq!(nack["type"], "nack", "{nack}");
    assert_eq!(nack["code"], "unavailable", "{nack}");
    assert!(
        nack["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{nack}"
    );
    // A join cannot be answered either: refused the same way.
    late.send(serde_json::json!({"type": "join", "room": "general"}))
        .await;
    let refused = late.recv_type("error").await;
    assert_eq!(refused["code"], "unavailable", "{refused}");
    // A notification is refused rather than shown on one instance only.
    let res = reqwest::Client::new()
        .post(format!("{}/api/notifications", a.url))
        .header("authorization", format!("Bearer {}", token("Ops")))
        .body(r#"{"text":"during"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));

    redis.launch().await;
    a.wait_ready(200).await;
    b.wait_ready(200).await;
    assert_eq!(ada.recv_type("health").await["other_servers"], true);
    assert_eq!(late.recv_type("health").await["other_servers"], true);
    assert_eq!(
        next_of_kind(&mut feed, "health").await["other_servers"],
        true
    );
    // Same sockets, no reconnect: sending works again, everywhere, and the
    // refused message was delivered to nobody.
    let ack = ada.say_acked("general", "after the outage").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    for c in [&mut amy, &mut bob] {
        let m = c.recv_type("message").await;
        assert_eq!(m["text"], "after the outage");
    }
    // The outage was logged once, not once per message or retry.
    assert_eq!(
        a.take_logs_matching("messages are refused (unavailable)")
            .len(),
        1
    );
}

#[tokio::test]
async fn an_instance_starts_without_redis_and_connects_when_it_comes() {
    let mut redis = Redis::reserve();
    let a = instance(&redis).await;
    a.wait_ready(503).await;
    // Its clients are told to try again meanwhile: no session can be checked.
    let bearer = format!("Bearer {}", token("Ada"));
    let ada_token = [("authorization", bearer.as_str())];
    assert_eq!(ws::upgrade_status(&ws::ws_url(&a), &ada_token).await, 503);

    redis.launch().await;
    a.wait_ready(200).await;
    let mut ada = Client::connect(&a, "Ada").await;
    ada.join("general").await;
    ada.say("general", "not alone any more").await;
    assert_eq!(ada.recv_type("message").await["text"], "not alone any more");
}

#[tokio::test]
async fn the_members_of_a_dead_instance_drop_out() {
    let redis = Redis::start().await;
    let env = [
        ("PULSE_REDIS_URL", redis.url()),
        ("PULSE_PRESENCE_TTL", "3s".to_string()),
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
    ada.joined_seen("random", "Bob").await;

    // B dies without a word: no leave, no close.
    b.child.kill().await.unwrap();
    ada.left_seen("random", "Bob").await;
    let mut cy = Client::connect(&a, "Cy").await;
    assert_eq!(names(&cy.join("random").await["members"]), ["Ada", "Cy"]);
    drop(bob);
}

#[tokio::test]
async fn a_feed_client_resumes_on_another_instance_without_missing_notifications() {
    let redis = Redis::start().await;
    let a = ready_instance(&redis).await;
    let b = ready_instance(&redis).await;
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
    let a = ready_instance(&redis).await;
    let mut ada = Client::connect(&a, "Ada").await;
    let mut amy = Client::connect(&a, "Amy").await;
    // One presence frame each (Ada waits for it before Amy joins, so the
    // two are not gathered into one).
    ada.join("general").await;
    ada.joined_seen("general", "Ada").await;
    amy.join("general").await;
    ada.joined_seen("general", "Amy").await;
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
    // Published to Redis: two presence frames and three messages.
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
    a.exited_cleanly().await;
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test]
async fn signing_out_on_one_instance_closes_the_sessions_sockets_on_every_instance() {
    let redis = Redis::start().await;
    let a = ready_instance(&redis).await;
    let b = ready_instance(&redis).await;
    let (cookie, _) = ws::sign_in(&a, "Ada").await;
    let mut on_b = Client::connect_cookie(&b, &cookie).await;
    on_b.join("general").await;

    assert_eq!(ws::sign_out(&a, &cookie).await.status(), 200);
    let frame = on_b.closed().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 4001);
    let with_cookie = [("cookie", cookie.as_str())];
    assert_eq!(ws::upgrade_status(&ws::ws_url(&b), &with_cookie).await, 401);
    // An instance started after the sign-out learns it from Redis.
    let c = ready_instance(&redis).await;
    assert_eq!(ws::upgrade_status(&ws::ws_url(&c), &with_cookie).await, 401);
}

#[tokio::test]
async fn every_key_pulse_writes_to_redis_expires() {
    let redis = Redis::start().await;
    let a = ready_instance(&redis).await;
    let mut ada = Client::connect(&a, "Ada").await;
    ada.join("ttl-room").await;
    ada.say("ttl-room", "kept a while").await;
    ada.recv_type("message").await;
    let (cookie, _) = ws::sign_in(&a, "Bob").await;
    assert_eq!(ws::sign_out(&a, &cookie).await.status(), 200);

    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys = support::eventually("stream, presence and revocation keys", async || {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("pulse:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        let has = |prefix: &str| keys.iter().any(|k| k.starts_with(prefix));
        let room = ["stream", "meta", "dedup:", "entries", "holders", "names"]
            .iter()
            .all(|kind| has(&format!("pulse:{{ttl-room}}:{kind}")));
        (room && has("pulse:revoked:")).then_some(keys)
    })
    .await;
    for key in keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0, "{key} has no expiry (PTTL {ttl})");
    }
}

/// The data of the next event of type `kind` on `sse`.
async fn next_of_kind(sse: &mut support::Sse, kind: &str) -> serde_json::Value {
    loop {
        let frame = sse.next_event().await;
        if frame.kind() == Some(kind) {
            return frame.data.unwrap_or_default();
        }
    }
}

#[tokio::test]
async fn sigterm_while_redis_is_down_does_not_wait_for_it() {
    let mut redis = Redis::start().await;
    let a = ready_instance(&redis).await;
    let mut ada = Client::connect(&a, "Ada").await;
    ada.join("general").await;
    redis.stop().await;
    a.wait_ready(503).await;
    // A message waits to be sent again (nacked unavailable) as the
    // server goes down.
    let nack = ada.say_acked("general", "during").await;
    assert_eq!(nack["code"], "unavailable", "{nack}");
    let started = std::time::Instant::now();
    a.signal("TERM");
    let frame = ada.closed().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1001);
    let mut a = a;
    a.exited_cleanly().await;
    // Leaving rooms and presence cannot reach Redis; the drain does not
    // wait for it past the usual (members left behind expire there).
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
