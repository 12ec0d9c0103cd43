//! Trust, second round: sign-out that holds against a renewed stolen token,
//! sessions that fail closed while they cannot be checked, bodies that
//! trickle, per-address budgets that minting identities does not multiply,
//! and one body for every refusal. An attacker's test for each, against the
//! real binary.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::redis::Redis;
use support::ws::{self, now, upgrade_status, ws_url, Client, SECRET};
use support::{eventually, Server, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A token for user `id` in session `sid`, begun at `start`, expiring at `exp`.
fn session_token(id: &str, sid: &str, start: u64, exp: u64) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": id, "name": "Victim", "sid": sid, "iat": now(), "exp": exp, "auth_time": start }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Posts a server function with the session cookie `token`, from the
/// site's own page.
async fn server_fn(server: &Server, name: &str, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/api/{name}", server.url))
        .header("origin", &server.url)
        .header("cookie", format!("pulse_session={token}"))
        .send()
        .await
        .unwrap()
}

fn cookie(token: &str) -> [(&'static str, String); 1] {
    [("cookie", format!("pulse_session={token}"))]
}

async fn upgrade_with(server: &Server, headers: &[(&'static str, String)]) -> u16 {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    upgrade_status(&ws_url(server), &headers).await
}

#[tokio::test]
async fn a_renewed_stolen_token_stays_refused_after_the_victims_sign_out() {
    let server = ws::start(&[]).await;
    let start = now();
    // The victim's token expires in two seconds; the thief renewed a copy,
    // which lives an hour: one session, two tokens.
    let victims = session_token("victim", "s-stolen", start, now() + 2);
    let thiefs = session_token("victim", "s-stolen", start, now() + 3600);
    assert_eq!(upgrade_with(&server, &cookie(&thiefs)).await, 101);
    // The victim signs out with the older token.
    assert_eq!(server_fn(&server, "sign_out", &victims).await.status(), 200);
    // Past the older token's expiry, the renewed one is still refused: the
    // sign-out holds for as long as any token of the session could be valid.
    eventually("the victim's token to expire", async || {
        (now() > start + 3).then_some(())
    })
    .await;
    assert_eq!(upgrade_with(&server, &cookie(&thiefs)).await, 401);
    assert_eq!(
        server_fn(&server, "renew_session", &thiefs).await.status(),
        401
    );
}

#[tokio::test]
async fn renewal_never_takes_a_session_past_pulse_max_session() {
    let server = ws::start(&[("PULSE_MAX_SESSION", "1h"), ("PULSE_SESSION_TTL", "1h")]).await;
    // Begun 59 minutes ago: renewed only up to the hour.
    let start = now() - 59 * 60;
    let old = session_token("u-old", "s-old", start, now() + 30);
    let res = server_fn(&server, "renew_session", &old).await;
    assert_eq!(res.status(), 200);
    let renewed: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    assert_eq!(renewed["expires_at"].as_u64(), Some(start + 3600));
    // Begun an hour ago: over; and no token may claim more.
    let over = session_token("u-over", "s-over", now() - 3600, now() + 30);
    assert_eq!(upgrade_with(&server, &cookie(&over)).await, 401);
    let res = server_fn(&server, "renew_session", &over).await;
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn while_redis_is_down_a_session_this_instance_has_not_vouched_for_is_refused() {
    let mut redis = Redis::start().await;
    let a = ws::start(&[("PULSE_REDIS_URL", &redis.url())]).await;
    a.wait_ready(200).await;
    let seen = session_token("u-seen", "s-seen", now(), now() + 3600);
    let unseen = session_token("u-unseen", "s-unseen", now(), now() + 3600);
    // Seen (checked) here before the outage.
    assert_eq!(upgrade_with(&a, &cookie(&seen)).await, 101);
    redis.stop().await;
    a.wait_ready(503).await;
    // A session it has not checked lately may have been signed out on
    // another instance meanwhile: refused (503, try again), not let in.
    assert_eq!(upgrade_with(&a, &cookie(&unseen)).await, 503);
    let res = server_fn(&a, "renew_session", &unseen).await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    // One it checked a moment ago is vouched for.
    assert_eq!(upgrade_with(&a, &cookie(&seen)).await, 101);
    redis.launch().await;
    a.wait_ready(200).await;
    assert_eq!(upgrade_with(&a, &cookie(&unseen)).await, 101);
}

/// Sends a POST whose body never comes whole: once the server waits for
/// the body (it says `100 Continue` when it starts reading it), 9 of the
/// 1000 bytes it announces, then nothing.
async fn trickle(server: &Server, path: &str) -> TcpStream {
    let addr = server.url.trim_start_matches("http://");
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nOrigin: {}\r\nExpect: 100-continue\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n",
        server.url
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "closed early");
            got.push(byte[0]);
        }
    })
    .await
    .expect("an interim answer");
    let interim = String::from_utf8_lossy(&got);
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    tcp.write_all(b"name=Ada&").await.unwrap();
    tcp
}

/// Everything the server sends until it closes the connection.
async fn until_closed(tcp: &mut TcpStream) -> String {
    let mut all = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut all)).await;
    String::from_utf8_lossy(&all).into_owned()
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_answered_408_and_closed() {
    let server = ws::start(&[("PULSE_BODY_TIMEOUT", "1s")]).await;
    let started = Instant::now();
    let mut tcp = trickle(&server, "/api/sign_in").await;
    let answer = until_closed(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"timeout""#), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        server
            .metric("pulse_connections_timed_out_total{phase=\"body\"}")
            .await
            >= 1.0
    );
    // So are the fallback's posts and notifications.
    for path in ["/api/chat/send", "/api/notifications"] {
        let mut tcp = trickle(&server, path).await;
        let answer = until_closed(&mut tcp).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
    }
}

#[tokio::test]
async fn sigterm_does_not_wait_for_a_body_that_stops_arriving() {
    let mut server = ws::start(&[("PULSE_BODY_TIMEOUT", "60s")]).await;
    // The request is in flight: the server waits for its body.
    let mut tcp = trickle(&server, "/api/sign_in").await;
    let started = Instant::now();
    server.signal("TERM");
    server.exited_cleanly().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "not the whole PULSE_SHUTDOWN_TIMEOUT: {:?}",
        started.elapsed()
    );
    let answer = until_closed(&mut tcp).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
        "{answer}"
    );
}

/// An HTTP client whose connections come from the loopback address `from`.
fn http_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn identities_minted_at_one_address_share_its_notification_and_room_budgets() {
    let server = ws::start(&[
        ("PULSE_NOTIFY_PER_IP_PER_MIN", "5"),
        ("PULSE_ROOMS_PER_IP", "3"),
    ])
    .await;
    let notify = |from: &'static str, who: String| {
        let url = format!("{}/api/notifications", server.url);
        async move {
            http_from(from)
                .post(url)
                .bearer_auth(ws::token(&who))
                .body(r#"{"text":"buy now"}"#)
                .send()
                .await
                .unwrap()
        }
    };
    // Ten guests at one address: five notifications in all, not fifty.
    let mut statuses = Vec::new();
    for i in 0..10 {
        statuses.push(
            notify("127.0.0.7", format!("Guest{i}"))
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [202, 202, 202, 202, 202, 429, 429, 429, 429, 429]);
    let refused = notify("127.0.0.7", "Guest10".into()).await;
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], "rate_limited", "{body}");
    // Someone at another address is not affected.
    assert_eq!(notify("127.0.0.8", "Innocent".into()).await.status(), 202);

    // Rooms: three new ones from that address, whoever asks.
    for i in 0..4 {
        let mut guest =
            Client::connect_from(&server, &ws::token(&format!("Guest{i}")), "127.0.0.7").await;
        guest
            .send(json!({"type": "join", "room": format!("spam-{i}")}))
            .await;
        let answer = guest.recv().await;
        if i < 3 {
            assert_eq!(answer["type"], "joined", "{answer}");
        } else {
            assert_eq!(answer["code"], "rate_limited", "{answer}");
        }
    }
    let mut innocent = Client::connect_from(&server, &ws::token("Innocent"), "127.0.0.8").await;
    innocent.join("my-own-room").await;
}

/// The refusal body every route answers with: `code`, `message`, and
/// `retry_after_ms` agreeing with `Retry-After` where waiting helps.
async fn refusal(res: reqwest::Response, status: u16, code: &str) {
    assert_eq!(res.status(), status, "{code}");
    let retry = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
    let kind = res.headers()["content-type"].to_str().unwrap().to_string();
    assert!(kind.starts_with("application/json"), "{code}: {kind}");
    let body: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    match (body["retry_after_ms"].as_u64(), retry) {
        (Some(ms), Some(secs)) => assert_eq!(secs, ms.div_ceil(1000).max(1), "{body}"),
        (None, None) => {}
        other => panic!("{code}: retry_after_ms and Retry-After disagree: {other:?}"),
    }
    if matches!(status, 429 | 503) {
        assert!(retry.is_some(), "{code}: a Retry-After");
    }
}

#[tokio::test]
async fn every_refusal_of_every_route_has_the_one_body() {
    let server = ws::start(&[
        ("PULSE_RATE_LIMIT_PER_MIN", "1"),
        ("PULSE_SIGNIN_PER_MIN", "2"),
        ("PULSE_MAX_SOCKETS_PER_USER", "1"),
    ])
    .await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", server.url);
    let ada = ws::token("Ada");
    // The chat's gate.
    refusal(
        http.get(url("/ws")).send().await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
    let foreign = http
        .get(url("/api/chat/stream"))
        .bearer_auth(&ada)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    refusal(foreign, 403, "forbidden").await;
    let _held = Client::connect(&server, "Ada").await;
    let second = http
        .get(url("/api/chat/stream"))
        .bearer_auth(&ada)
        .send()
        .await
        .unwrap();
    refusal(second, 429, "too_many_connections").await;
    let not_ws = http
        .get(url("/ws"))
        .bearer_auth(ws::token("Bob"))
        .send()
        .await
        .unwrap();
    refusal(not_ws, 400, "invalid_message").await;
    // The fallback's posts.
    let post = |body: &'static str, token: Option<String>| {
        let mut req = http.post(url("/api/chat/send")).body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    refusal(post("{}", None).await.unwrap(), 401, "unauthorized").await;
    refusal(
        post("nope", Some(ws::token("Cy"))).await.unwrap(),
        400,
        "invalid_message",
    )
    .await;
    let gone = r#"{"conn":"nobody.0","frames":[{"type":"ping"}]}"#;
    // (Posts get twice the message rate: two a minute here.)
    refusal(
        post(gone, Some(ws::token("Cy"))).await.unwrap(),
        404,
        "not_found",
    )
    .await;
    refusal(
        post(gone, Some(ws::token("Cy"))).await.unwrap(),
        404,
        "not_found",
    )
    .await;
    refusal(
        post(gone, Some(ws::token("Cy"))).await.unwrap(),
        429,
        "rate_limited",
    )
    .await;
    let big = http
        .post(url("/api/chat/send"))
        .bearer_auth(ws::token("Cy"))
        .body("x".repeat(70 * 1024))
        .send()
        .await
        .unwrap();
    // The unread rest of the body cannot be skipped: the connection closes,
    // and says so, so the client does not send its next request on it.
    assert_eq!(
        big.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    refusal(big, 413, "too_large").await;
    // Notifications.
    let note = |body: &'static str, token: Option<String>| {
        let mut req = http.post(url("/api/notifications")).body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    refusal(note("{}", None).await.unwrap(), 401, "unauthorized").await;
    refusal(
        note("nope", Some(ws::token("Dee"))).await.unwrap(),
        400,
        "invalid_message",
    )
    .await;
    assert_eq!(
        note(r#"{"text":"one"}"#, Some(ws::token("Dee")))
            .await
            .unwrap()
            .status(),
        202
    );
    refusal(
        note(r#"{"text":"two"}"#, Some(ws::token("Dee")))
            .await
            .unwrap(),
        429,
        "rate_limited",
    )
    .await;
    // Server functions: the same body, as their error.
    let sign_in = |name: &'static str| {
        http.post(url("/api/sign_in"))
            .header("origin", &server.url)
            .form(&[("name", name)])
            .send()
    };
    refusal(sign_in("\u{202E}").await.unwrap(), 400, "invalid_message").await;
    assert_eq!(sign_in("Eve").await.unwrap().status(), 200);
    refusal(sign_in("Eve").await.unwrap(), 429, "rate_limited").await;
    let renew = http
        .post(url("/api/renew_session"))
        .header("origin", &server.url)
        .send()
        .await
        .unwrap();
    refusal(renew, 401, "unauthorized").await;
    let cross = http
        .post(url("/api/sign_in"))
        .header("origin", "https://evil.example")
        .form(&[("name", "Mallory")])
        .send()
        .await
        .unwrap();
    refusal(cross, 403, "forbidden").await;
    // The feed.
    let feed = http
        .get(url("/api/events"))
        .header("last-event-id", "x")
        .send()
        .await
        .unwrap();
    refusal(feed, 400, "invalid_message").await;
}

#[tokio::test]
async fn the_listeners_own_refusals_have_the_one_body_too() {
    let server = Server::start(&[("PULSE_MAX_CONNECTIONS_PER_IP", "1")]).await;
    let addr: std::net::SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    let _first = TcpStream::connect(addr).await.unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut second = socket.connect(addr).await.unwrap();
    second
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: pulse\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut second).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 5"),
        "{answer}"
    );
    assert!(
        answer.contains(r#""code":"too_many_connections""#),
        "{answer}"
    );
    assert!(answer.contains(r#""retry_after_ms":5000"#), "{answer}");
}
