//! pulse behind the README's nginx configuration (a real nginx on a free,
//! non-default port): WebSockets pass the origin check, limits count the
//! browser's address, two instances over Redis serve one room, and
//! `/metrics` is not reachable through the proxy.

mod support;

use std::net::IpAddr;

use support::nginx::Nginx;
use support::redis::Redis;
use support::ws::{self, token, Client};
use support::Server;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Every instance trusts the proxy, which runs on this machine.
const TRUSTED: (&str, &str) = ("PULSE_TRUSTED_PROXIES", "127.0.0.1");

fn addr(server: &Server) -> String {
    server.url.trim_start_matches("http://").to_string()
}

/// A browser-like chat connection through the proxy: it sends the page's
/// origin, which is the proxy's `http://127.0.0.1:PORT`.
async fn connect_via(nginx: &Nginx, user: &str) -> Client {
    let mut req = format!("ws://{}/ws", nginx.addr)
        .into_client_request()
        .unwrap();
    let headers = req.headers_mut();
    headers.insert("origin", nginx.url().parse().unwrap());
    headers.insert(
        "authorization",
        format!("Bearer {}", token(user)).parse().unwrap(),
    );
    let (ws, res) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade through nginx");
    assert_eq!(res.status(), 101);
    Client { ws }
}

/// Two instances over one Redis, both ready, behind the README's nginx.
async fn two_behind_nginx() -> (Redis, Server, Server, Nginx) {
    let redis = Redis::start().await;
    let url = redis.url();
    let env = [TRUSTED, ("PULSE_REDIS_URL", url.as_str())];
    let a = ws::start(&env).await;
    let b = ws::start(&env).await;
    a.wait_ready(200).await;
    b.wait_ready(200).await;
    let nginx = Nginx::start(&[&addr(&a), &addr(&b)]).await;
    (redis, a, b, nginx)
}

#[tokio::test]
async fn two_instances_behind_the_documented_nginx_serve_one_room() {
    let (_redis, a, b, nginx) = two_behind_nginx().await;

    // Round robin: the two land on different instances, and still share.
    let mut ada = connect_via(&nginx, "Ada").await;
    let mut bob = connect_via(&nginx, "Bob").await;
    ada.join("general").await;
    bob.join("general").await;
    ada.joined_seen("general", "Bob").await;
    bob.say("general", "through nginx").await;
    assert_eq!(ada.recv_type("message").await["text"], "through nginx");
    let opened = |s: &Server| {
        let s = s.metrics_url.clone();
        async move {
            let text = reqwest::get(s.unwrap())
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix("pulse_connections_opened_total{transport=\"ws\"} "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        }
    };
    assert_eq!(
        (opened(&a).await, opened(&b).await),
        (1.0, 1.0),
        "one socket each"
    );

    // /metrics is on the instances' metrics addresses, not behind the proxy.
    let res = reqwest::get(format!("{}/metrics", nginx.url()))
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    ada.ws.close(None).await.unwrap();
}

#[tokio::test]
async fn behind_the_documented_nginx_limits_count_the_browsers_address() {
    let server = ws::start(&[TRUSTED, ("PULSE_MAX_CONNECTIONS_PER_IP", "1")]).await;
    let nginx = Nginx::start(&[&addr(&server)]).await;
    let from = |ip: &str| {
        reqwest::Client::builder()
            .local_address(ip.parse::<IpAddr>().unwrap())
            .build()
            .unwrap()
    };
    let events = format!("{}/api/events", nginx.url());
    let first = from("127.0.0.2").get(&events).send().await.unwrap();
    assert_eq!(first.status(), 200, "a stream for 127.0.0.2");
    let second = from("127.0.0.2").get(&events).send().await.unwrap();
    assert_eq!(second.status(), 429, "its second is over the limit");
    let other = from("127.0.0.3").get(&events).send().await.unwrap();
    assert_eq!(other.status(), 200, "another browser is not affected");
    drop((first, other));
    // A cross-site POST through the proxy is still refused.
    let res = from("127.0.0.4")
        .post(format!("{}/api/sign_in", nginx.url()))
        .header("origin", "https://evil.example")
        .form(&[("name", "Mallory")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = from("127.0.0.4")
        .post(format!("{}/api/sign_in", nginx.url()))
        .header("origin", nginx.url())
        .form(&[("name", "Ada")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "same-site through the proxy");
}

#[tokio::test]
async fn the_http_fallback_works_through_the_documented_nginx_without_sticky_sessions() {
    let (_redis, _a, _b, nginx) = two_behind_nginx().await;
    let proxy = nginx.url();
    let token = token("Fay");
    let bearer = format!("Bearer {token}");
    let mut stream = support::Sse::open_with(
        &proxy,
        "/api/chat/stream",
        &[("authorization", &bearer), ("origin", &proxy)],
    )
    .await;
    let hello = stream.next_event().await.data.expect("hello");
    let conn = hello["conn"].as_str().expect("conn").to_string();
    let mut wes = connect_via(&nginx, "Wes").await;
    wes.join("general").await;

    // Each post goes to whichever instance nginx picks; each one's effect
    // comes down the one stream (it is awaited before the next post).
    let client = reqwest::Client::new();
    let post = |frames: serde_json::Value| {
        let body = serde_json::json!({ "conn": conn, "frames": frames }).to_string();
        client
            .post(format!("{proxy}/api/chat/send"))
            .bearer_auth(&token)
            .header("origin", &proxy)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let next = async |stream: &mut support::Sse, ty: &str| loop {
        let data = stream.next_event().await.data.expect("a frame");
        if data["type"] == ty {
            return data;
        }
    };
    let res = post(serde_json::json!([{"type": "join", "room": "general"}]))
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(next(&mut stream, "joined").await["room"], "general");
    for i in 0..4 {
        let text = format!("through nginx {i}");
        let frames = serde_json::json!([{"type": "message", "room": "general", "text": text, "client_id": ws::client_id()}]);
        assert_eq!(post(frames).await.unwrap().status(), 202);
        assert_eq!(next(&mut stream, "message").await["text"], text);
        assert_eq!(wes.recv_type("message").await["text"], text);
    }
}

/// A `127.0.0.1:PORT` nothing listens on yet.
fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// An instance on `addr`, ready.
async fn start_on(addr: &str) -> Server {
    let server = ws::start(&[TRUSTED, ("LEPTOS_SITE_ADDR", addr)]).await;
    server.wait_ready(200).await;
    server
}

/// The status of `GET /` through the proxy.
async fn page_status(nginx: &Nginx) -> u16 {
    reqwest::get(format!("{}/", nginx.url()))
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A restart of every instance costs visitors the restart and no more: the
/// requests made while all were down (the pages' own reconnect attempts)
/// must not leave nginx keeping the instances out once they are back (with
/// `max_fails=3 fail_timeout=10s` it answered 502 for up to 10 s).
#[tokio::test]
async fn behind_the_documented_nginx_pages_are_served_as_soon_as_the_instances_are_back() {
    let addrs = [free_addr(), free_addr()];
    let a = start_on(&addrs[0]).await;
    let b = start_on(&addrs[1]).await;
    let nginx = Nginx::start(&[&addrs[0], &addrs[1]]).await;
    assert_eq!(page_status(&nginx).await, 200);

    drop((a, b));
    for addr in &addrs {
        support::eventually("the instance to be gone", async || {
            tokio::net::TcpStream::connect(addr.as_str())
                .await
                .is_err()
                .then_some(())
        })
        .await;
    }
    // Everyone's pages keep trying meanwhile.
    for _ in 0..10 {
        assert_eq!(page_status(&nginx).await, 502);
    }

    let _a = start_on(&addrs[0]).await;
    let _b = start_on(&addrs[1]).await;
    // The very next visitors get the page, whichever instance they land on.
    for _ in 0..4 {
        assert_eq!(page_status(&nginx).await, 200);
    }
}
