//! The chat endpoint (`GET /ws`) against the real server, with a real
//! WebSocket client: authentication, origin check, rooms, presence, history,
//! validation, rate limits, token expiry and slow clients.

mod support;

use serde_json::json;
use support::ws::{self, names, now, token, token_with, upgrade_status, ws_url, Client, SECRET};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn bad_or_missing_tokens_get_401_and_no_upgrade() {
    let server = ws::start(&[]).await;
    let url = ws_url(&server);
    let bearer = |t: &str| format!("Bearer {t}");
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let alg_none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&format!(r#"{{"sub":"Eve","exp":{}}}"#, now() + 3600))
    );
    let cases = [
        ("missing", None),
        ("malformed", Some(bearer("not-a-jwt"))),
        (
            "wrong key",
            Some(bearer(&token_with(
                "another secret, also long enough!!",
                "Eve",
                now() + 3600,
            ))),
        ),
        (
            "expired",
            Some(bearer(&token_with(SECRET, "Eve", now() - 5))),
        ),
        ("alg none", Some(bearer(&alg_none))),
    ];
    for (case, auth) in cases {
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        assert_eq!(upgrade_status(&url, &headers).await, 401, "{case}");
    }
    assert_eq!(
        server
            .metric("pulse_open_connections{transport=\"ws\"}")
            .await,
        0.0
    );

    // The same token is accepted from the header, the cookie and the query.
    let t = token("Ada");
    assert_eq!(
        upgrade_status(&url, &[("authorization", &bearer(&t))]).await,
        101
    );
    let cookie = format!("pulse_session={t}");
    assert_eq!(upgrade_status(&url, &[("cookie", &cookie)]).await, 101);
    assert_eq!(upgrade_status(&format!("{url}?token={t}"), &[]).await, 101);
}

#[tokio::test]
async fn a_foreign_origin_gets_403_even_with_a_valid_cookie() {
    let server = ws::start(&[]).await;
    let url = ws_url(&server);
    let cookie = format!("pulse_session={}", token("Ada"));
    let foreign = [
        ("cookie", cookie.as_str()),
        ("origin", "http://evil.example"),
    ];
    assert_eq!(upgrade_status(&url, &foreign).await, 403);
    let own = server.url.clone();
    let same = [("cookie", cookie.as_str()), ("origin", own.as_str())];
    assert_eq!(upgrade_status(&url, &same).await, 101);

    let server = ws::start(&[("PULSE_ALLOWED_ORIGINS", "https://chat.example.com")]).await;
    let url = ws_url(&server);
    let listed = [
        ("cookie", cookie.as_str()),
        ("origin", "https://chat.example.com"),
    ];
    assert_eq!(upgrade_status(&url, &listed).await, 101);
    let own = server.url.clone();
    let unlisted = [("cookie", cookie.as_str()), ("origin", own.as_str())];
    assert_eq!(upgrade_status(&url, &unlisted).await, 403);
}

#[tokio::test]
async fn rooms_deliver_to_members_only_with_presence_and_history() {
    let server = ws::start(&[]).await;
    let mut ada = Client::connect(&server, "Ada").await;
    let mut bob = Client::connect(&server, "Bob").await;
    let mut eve = Client::connect(&server, "Eve").await;

    let joined = ada.join("tech").await;
    assert_eq!(names(&joined["members"]), ["Ada"]);
    assert_eq!(joined["members"][0]["id"], "test-ada");
    assert_eq!(joined["history"], json!([]));
    let joined = bob.join("tech").await;
    assert_eq!(names(&joined["members"]), ["Ada", "Bob"]);
    let notice = ada.joined_seen("tech", "Bob").await;
    assert_eq!(notice["left"], json!([]));
    assert!(notice["timestamp"].as_u64().unwrap() > 0);
    eve.join("random").await;

    // A spoofed `user` is ignored: the name comes from the token.
    bob.send(json!({"type": "message", "room": "tech", "text": "  hello  ", "user": "Ada", "client_id": "c-1"}))
        .await;
    for client in [&mut ada, &mut bob] {
        let m = client.recv().await;
        assert_eq!(m["type"], "message");
        assert_eq!(m["user"], "Bob");
        assert_eq!(m["user_id"], "test-bob");
        assert_eq!(m["text"], "hello");
        assert_eq!(m["room"], "tech");
        assert!(m["id"].as_str().is_some_and(|id| !id.is_empty()));
        assert!(m["timestamp"].as_u64().unwrap() > 0);
    }
    eve.assert_nothing_pending().await;

    // History: the room's messages, oldest first, for whoever joins.
    ada.say("tech", "second").await;
    ada.recv_type("message").await;
    let joined = eve.join("tech").await;
    let texts: Vec<_> = joined["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts, ["hello", "second"]);
    assert_eq!(names(&joined["members"]), ["Ada", "Bob", "Eve"]);
    // Joining again answers with the members, not the history it has.
    let again = eve.join("tech").await;
    assert_eq!(again["history"], json!([]));
    assert_eq!(names(&again["members"]), ["Ada", "Bob", "Eve"]);

    // Leaving answers `left` and tells the others; so does disconnecting.
    eve.send(json!({"type": "leave", "room": "tech"})).await;
    assert_eq!(eve.recv().await, json!({"type": "left", "room": "tech"}));
    for client in [&mut ada, &mut bob] {
        client.left_seen("tech", "Eve").await;
    }
    drop(bob);
    ada.left_seen("tech", "Bob").await;
}

#[tokio::test]
async fn bad_frames_get_clear_errors_and_the_connection_stays_usable() {
    let server = ws::start(&[]).await;
    let mut ada = Client::connect(&server, "Ada").await;
    ada.join("general").await;

    let expect = |code: &'static str| {
        move |v: serde_json::Value| {
            assert_eq!(v["type"], "error", "{v}");
            assert_eq!(v["code"], code, "{v}");
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    };
    for raw in [
        "{not json",
        r#"{"type":"shout","room":"general"}"#,
        r#"{"type":"message","room":"general"}"#,
        r#"{"type":"message","room":"general","text":"   "}"#,
    ] {
        ada.send_raw(Message::text(raw)).await;
        expect("invalid_message")(ada.recv().await);
    }
    ada.send_raw(Message::binary(vec![1, 2, 3])).await;
    expect("invalid_message")(ada.recv().await);
    // A message that cannot be published is answered `nack`, for its client_id.
    let refused = |code: &'static str| {
        move |v: serde_json::Value| {
            assert_eq!(v["type"], "nack", "{v}");
            assert_eq!(v["code"], code, "{v}");
            assert!(v["client_id"].as_str().is_some_and(|id| !id.is_empty()));
        }
    };
    ada.say("general", &"x".repeat(2001)).await;
    refused("invalid_message")(ada.recv().await);
    ada.say("general", &"é".repeat(2000)).await;
    assert_eq!(
        ada.recv().await["type"],
        "message",
        "2000 characters are fine"
    );

    ada.say("tech", "hi").await;
    refused("not_in_room")(ada.recv().await);
    // A client_id that is not 1-64 characters of A-Z a-z 0-9 - _ is an error.
    ada.say_as("general", "hi", "no spaces please").await;
    expect("invalid_message")(ada.recv().await);
    ada.send(json!({"type": "leave", "room": "tech"})).await;
    expect("not_in_room")(ada.recv().await);
    ada.send(json!({"type": "join", "room": "Bad Name!"})).await;
    expect("invalid_room")(ada.recv().await);
    ada.send(json!({"type": "join", "room": "x".repeat(33)}))
        .await;
    expect("invalid_room")(ada.recv().await);

    // Ten rooms per connection; the eleventh is refused.
    for i in 1..10 {
        ada.join(&format!("room-{i}")).await;
    }
    ada.send(json!({"type": "join", "room": "room-10"})).await;
    expect("invalid_room")(ada.recv().await);

    // Still usable after all that.
    ada.say("general", "still here").await;
    assert_eq!(ada.recv().await["text"], "still here");
    assert_eq!(server.metric("pulse_invalid_messages_total").await, 7.0);

    // A frame over 16 KiB closes the connection with 1009.
    ada.send_raw(Message::text("x".repeat(16 * 1024 + 1))).await;
    let frame = ada.closed().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1009);
}

#[tokio::test]
async fn the_101st_message_in_a_minute_is_rate_limited_and_not_broadcast() {
    let server = ws::start(&[]).await;
    let mut ada = Client::connect(&server, "Ada").await;
    let mut bob = Client::connect(&server, "Bob").await;
    ada.join("general").await;
    bob.join("general").await;
    ada.joined_seen("general", "Bob").await;

    for i in 0..100 {
        ada.say("general", &format!("m{i}")).await;
        assert_eq!(ada.recv().await["text"], format!("m{i}"));
    }
    ada.say("general", "one too many").await;
    let err = ada.recv().await;
    assert_eq!(err["type"], "nack", "{err}");
    assert_eq!(err["code"], "rate_limited", "{err}");
    let wait = err["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(wait > 0 && wait <= 60_000, "{wait}");

    // Bob got the hundred and not the refused one.
    for i in 0..100 {
        assert_eq!(bob.recv().await["text"], format!("m{i}"));
    }
    bob.assert_nothing_pending().await;
    assert_eq!(server.metric("pulse_rate_limited_total").await, 1.0);

    // Once the limiter says so, sending works again.
    tokio::time::sleep(std::time::Duration::from_millis(wait + 50)).await;
    ada.say("general", "back").await;
    assert_eq!(ada.recv().await["text"], "back");
    assert_eq!(bob.recv().await["text"], "back");
}

#[tokio::test]
async fn a_connection_closes_with_4001_when_its_token_expires() {
    let server = ws::start(&[]).await;
    let t = token_with(SECRET, "Ada", now() + 2);
    let mut ada = Client::connect_token(&server, &t).await;
    ada.join("general").await;
    let frame = ada.closed().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 4001);
    assert_eq!(frame.reason.as_str(), "token expired");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_the_others_keep_up() {
    let server = ws::start(&[
        ("PULSE_RATE_LIMIT_PER_MIN", "1000000"),
        ("PULSE_RATE_LIMIT_PER_IP_PER_MIN", "1000000"),
        ("PULSE_WS_QUEUE_BYTES", "65536"),
    ])
    .await;
    let mut stuck = Client::connect_small_buffer(&server, "Stuck").await;
    stuck.join("general").await;
    let mut reader = Client::connect(&server, "Reader").await;
    reader.join("general").await;
    let mut talker = Client::connect(&server, "Talker").await;
    talker.join("general").await;
    reader.joined_seen("general", "Talker").await;

    // Enough text to fill the stuck client's socket and queue many times over.
    let text = "y".repeat(2000);
    let sends = 2000;
    let reading = tokio::spawn(async move {
        let (mut messages, mut stuck_left) = (0, false);
        while messages < sends {
            let v = reader.recv_any().await;
            match v["type"].as_str() {
                Some("message") => messages += 1,
                Some("presence") => stuck_left |= names(&v["left"]).iter().any(|n| n == "Stuck"),
                _ => panic!("unexpected {v}"),
            }
        }
        (reader, stuck_left)
    });
    for _ in 0..sends {
        talker.say("general", &text).await;
        talker.recv_type("message").await;
    }
    let (mut reader, stuck_left) = reading.await.expect("the reader got every message");
    server
        .wait_metric("pulse_slow_clients_dropped_total", 1.0)
        .await;
    if !stuck_left {
        reader.left_seen("general", "Stuck").await;
    }
    server
        .wait_metric("pulse_open_connections{transport=\"ws\"}", 2.0)
        .await;
    drop(stuck);
}

#[tokio::test]
async fn peers_that_stop_answering_pings_are_closed() {
    let server = ws::start(&[("PULSE_WS_PING_INTERVAL", "1s")]).await;
    let _silent = Client::connect(&server, "Silent").await; // never reads: no pongs
    let mut alive = Client::connect(&server, "Alive").await;
    alive.join("general").await;
    // `alive` keeps reading (and so answering pings) while we wait.
    tokio::select! {
        _ = server.wait_metric("pulse_open_connections{transport=\"ws\"}", 1.0) => {}
        v = alive.recv() => panic!("unexpected frame {v}"),
    }
    // The one that reads (and so answers pings) is still served.
    alive.say("general", "still here").await;
    assert_eq!(alive.recv_type("message").await["text"], "still here");
}

#[tokio::test]
async fn rooms_are_capped_and_empty_ones_are_dropped() {
    let server = ws::start(&[("PULSE_MAX_ROOMS", "4"), ("PULSE_ROOM_IDLE", "1s")]).await;
    let mut ada = Client::connect(&server, "Ada").await;
    ada.join("extra").await;
    ada.send(json!({"type": "join", "room": "one-more"})).await;
    assert_eq!(ada.recv().await["code"], "invalid_room");
    assert_eq!(server.metric("pulse_rooms").await, 4.0);
    ada.send(json!({"type": "leave", "room": "extra"})).await;
    assert_eq!(ada.recv().await["type"], "left");
    // The empty room goes; the default rooms stay.
    server.wait_metric("pulse_rooms", 3.0).await;
    ada.join("one-more").await;
}

#[tokio::test]
async fn shutdown_closes_sockets_with_going_away() {
    let server = ws::start(&[]).await;
    let mut ada = Client::connect(&server, "Ada").await;
    ada.join("general").await;
    server.signal("TERM");
    let frame = ada.closed().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1001);
}

#[tokio::test]
async fn sign_in_sets_an_http_only_cookie_that_opens_a_socket() {
    let server = ws::start(&[]).await;
    let http = reqwest::Client::new();
    let res = http
        .post(format!("{}/api/sign_in", server.url))
        .form(&[("name", "  Grace  ")])
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let cookie = res
        .headers()
        .get("set-cookie")
        .expect("set-cookie")
        .to_str()
        .unwrap()
        .to_string();
    assert!(cookie.starts_with("pulse_session="), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Lax"), "{cookie}");
    assert!(cookie.contains("Max-Age=3600"), "{cookie}");
    let body: serde_json::Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    assert_eq!(body["user"], "Grace");
    assert!(body["user_id"].as_str().is_some_and(|id| id.len() == 32));

    let pair = cookie.split(';').next().unwrap().to_string();
    assert_eq!(
        upgrade_status(&ws_url(&server), &[("cookie", &pair)]).await,
        101
    );

    let res = http
        .post(format!("{}/api/sign_in", server.url))
        .form(&[("name", "   ")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.headers().get("set-cookie").is_none());

    // `pulse token` mints tokens the server accepts.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(["token", "--name", "script", "--ttl", "5m"])
        .env("PULSE_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success());
    let minted = String::from_utf8(out.stdout).unwrap();
    let bearer = format!("Bearer {}", minted.trim());
    assert_eq!(
        upgrade_status(&ws_url(&server), &[("authorization", &bearer)]).await,
        101
    );
}

#[tokio::test]
async fn notifications_need_a_token_are_validated_and_reach_every_feed() {
    let server = ws::start(&[("PULSE_RATE_LIMIT_PER_MIN", "3")]).await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/notifications", server.url);
    let post = |token: Option<String>, body: &'static str| {
        let mut req = http
            .post(&url)
            .body(body)
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req.send()
    };
    assert_eq!(post(None, r#"{"text":"hi"}"#).await.unwrap().status(), 401);
    let expired = token_with(SECRET, "Ada", now() - 5);
    assert_eq!(
        post(Some(expired), r#"{"text":"hi"}"#)
            .await
            .unwrap()
            .status(),
        401
    );
    for bad in [r#"{"text":"   "}"#, "not json", r#"{"txt":"hi"}"#] {
        let res = post(Some(token("Ada")), bad).await.unwrap();
        assert_eq!(res.status(), 400, "{bad}");
        let body: serde_json::Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
        assert_eq!(body["code"], "invalid_message");
    }

    let mut feed = support::Sse::open(&server.url, None).await;
    assert_eq!(feed.next_event().await.kind(), Some("connected"));
    let res = post(
        Some(token("Ada")),
        r#"{"text":"  deploy at 5  ","user":"Mallory"}"#,
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 202);
    let note = loop {
        let frame = feed.next_event().await;
        if frame.kind() == Some("notification") {
            break frame;
        }
    };
    let json = note.data.clone().unwrap();
    assert_eq!(json["user"], "Ada");
    assert_eq!(json["text"], "deploy at 5");
    assert!(json["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(note.id.is_some(), "notifications are numbered like updates");

    // Same per-user limit as chat: 3 a minute here.
    for _ in 0..2 {
        assert_eq!(
            post(Some(token("Ada")), r#"{"text":"x"}"#)
                .await
                .unwrap()
                .status(),
            202
        );
    }
    let res = post(Some(token("Ada")), r#"{"text":"x"}"#).await.unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().get("retry-after").is_some());
}

#[tokio::test]
async fn readyz_healthz_and_the_dashboard_stream() {
    let server = ws::start(&[]).await;
    let get = |path: &str| reqwest::get(format!("{}{path}", server.url));
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    let ready = get("/readyz").await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.text().await.unwrap(), "ready");

    let mut ada = Client::connect(&server, "Ada").await;
    ada.join("general").await;
    let mut stats = support::Sse::open_path(&server.url, "/api/stats", None).await;
    // The dashboard sees the socket (and its own stream) from the same
    // counters as /metrics.
    tokio::time::timeout(support::WAIT, async {
        loop {
            let s = stats.next_event().await.data.unwrap();
            assert_eq!(s["broker"], "in-process");
            if s["ws"] == 1 && s["sse"] == 1 {
                break;
            }
        }
    })
    .await
    .expect("the stats stream shows one socket and one stream");
    assert_eq!(
        server
            .metric("pulse_open_connections{transport=\"ws\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn protocol_violations_close_with_the_rfc_6455_codes() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let server = ws::start(&[]).await;

    // A text frame that is not UTF-8: 1007.
    let mut c = Client::connect(&server, "Ada").await;
    let bad_text = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.send_raw(Message::Frame(bad_text)).await;
    let frame = c.closed().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1007, "{frame:?}");

    // Reserved bits with no extension agreed: 1002.
    let mut c = Client::connect(&server, "Ada").await;
    let mut rsv = Frame::message(b"{}".to_vec(), OpCode::Data(Data::Text), true);
    rsv.header_mut().rsv1 = true;
    c.send_raw(Message::Frame(rsv)).await;
    let frame = c.closed().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1002, "{frame:?}");

    // Others are not affected.
    let mut ok = Client::connect(&server, "Bob").await;
    ok.join("general").await;
}

#[tokio::test]
async fn a_ping_is_answered_with_the_ping_interval_and_a_flood_of_pings_is_not() {
    let server = ws::start(&[("PULSE_WS_PING_INTERVAL", "7s")]).await;
    let mut c = Client::connect(&server, "Pia").await;
    c.send(serde_json::json!({"type": "ping"})).await;
    let pong = c.recv_type("pong").await;
    assert_eq!(pong["ping_interval_ms"], 7000, "{pong}");
    // Fifty more at once: at most one pong per half second, so one or two.
    for _ in 0..50 {
        c.send(serde_json::json!({"type": "ping"})).await;
    }
    // A frame that is always answered marks the end of the answers to them.
    c.send(serde_json::json!({"type": "join", "room": "general"}))
        .await;
    let mut pongs = 0;
    loop {
        let frame = c.recv_any().await;
        match frame["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("joined") => break,
            _ => {}
        }
    }
    assert!(pongs <= 2, "{pongs} pongs for 50 pings");
}
