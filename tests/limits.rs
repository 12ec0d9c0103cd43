//! What an attacker can hold: silent and half-sent connections, idle
//! keep-alives, too many connections from one address or for one user,
//! forged forwarding headers, and running the server out of file
//! descriptors. Each against the real binary over real sockets.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use support::ws::{self, token, upgrade_status};
use support::{eventually, Server, WAIT};

/// The server's public address.
fn addr(server: &Server) -> SocketAddr {
    server.url.trim_start_matches("http://").parse().unwrap()
}

/// A TCP connection to the server from the loopback address `from`
/// (127.0.0.1, 127.0.0.2, …: each is another client address).
async fn connect_from(server: &Server, from: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr(server)).await.unwrap()
}

/// Reads until the server closes the connection; what it sent.
async fn read_to_close(tcp: &mut TcpStream) -> String {
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server did not close the connection");
    String::from_utf8_lossy(&all).into_owned()
}

/// Sends `head` (plus the blank line) and reads the response head.
async fn request(tcp: &mut TcpStream, head: &str) -> String {
    try_request(tcp, head)
        .await
        .expect("closed before a response head")
}

/// Like [`request`]; `None` if the connection ends before a response head.
async fn try_request(tcp: &mut TcpStream, head: &str) -> Option<String> {
    tcp.write_all(format!("{head}\r\n").as_bytes()).await.ok()?;
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            match tcp.read(&mut byte).await {
                Ok(1) => got.push(byte[0]),
                _ => return None,
            }
        }
        Some(())
    })
    .await
    .expect("no response head")?;
    Some(String::from_utf8(got).unwrap().to_ascii_lowercase())
}

fn status(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

const FEED: &str = "GET /api/events HTTP/1.1\r\nHost: pulse\r\n";

#[tokio::test]
async fn silent_and_half_sent_connections_are_closed_at_the_header_timeout() {
    let server = Server::start(&[("PULSE_HEADER_TIMEOUT", "1s")]).await;
    let mut silent = connect_from(&server, "127.0.0.1").await;
    let mut half = connect_from(&server, "127.0.0.1").await;
    half.write_all(b"GET / HTTP/1.1\r\nHost: pul")
        .await
        .unwrap();
    assert_eq!(
        read_to_close(&mut silent).await,
        "",
        "no answer, just closed"
    );
    assert_eq!(read_to_close(&mut half).await, "");
    server
        .wait_metric("pulse_connections_timed_out_total{phase=\"head\"}", 2.0)
        .await;
    // A client that sends its head in time is served.
    let mut ok = connect_from(&server, "127.0.0.1").await;
    assert_eq!(
        status(&request(&mut ok, "GET /healthz HTTP/1.1\r\nHost: p\r\n").await),
        200
    );
}

#[tokio::test]
async fn an_oversized_request_head_gets_431() {
    let server = Server::start(&[]).await;
    let mut tcp = connect_from(&server, "127.0.0.1").await;
    let cookie = "x".repeat(40 * 1024);
    let head = request(
        &mut tcp,
        &format!("GET / HTTP/1.1\r\nHost: p\r\nCookie: c={cookie}\r\n"),
    )
    .await;
    assert_eq!(status(&head), 431, "{head}");
    // A head of ordinary size is fine.
    let mut ok = connect_from(&server, "127.0.0.1").await;
    let cookie = "x".repeat(8 * 1024);
    let head = request(
        &mut ok,
        &format!("GET /healthz HTTP/1.1\r\nHost: p\r\nCookie: c={cookie}\r\n"),
    )
    .await;
    assert_eq!(status(&head), 200, "{head}");
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_at_the_idle_timeout() {
    // A long header timeout: only the idle timeout can close it.
    let server = Server::start(&[
        ("PULSE_HEADER_TIMEOUT", "600s"),
        ("PULSE_IDLE_TIMEOUT", "1s"),
    ])
    .await;
    let mut tcp = connect_from(&server, "127.0.0.1").await;
    let head = request(&mut tcp, "GET /healthz HTTP/1.1\r\nHost: p\r\n").await;
    assert_eq!(status(&head), 200);
    assert!(!head.contains("connection: close"), "kept alive: {head}");
    assert_eq!(read_to_close(&mut tcp).await, "ok", "the body, then closed");
    server
        .wait_metric("pulse_connections_timed_out_total{phase=\"idle\"}", 1.0)
        .await;
    assert_eq!(
        server
            .metric("pulse_connections_timed_out_total{phase=\"head\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn an_open_stream_is_not_timed_out() {
    let server = Server::start(&[
        ("PULSE_HEADER_TIMEOUT", "1s"),
        ("PULSE_IDLE_TIMEOUT", "1s"),
        ("PULSE_FEED_INTERVAL", "500ms"),
    ])
    .await;
    let mut tcp = connect_from(&server, "127.0.0.1").await;
    assert_eq!(status(&request(&mut tcp, FEED).await), 200);
    // A short-timeout connection beside it is closed; the stream goes on.
    let mut silent = connect_from(&server, "127.0.0.1").await;
    read_to_close(&mut silent).await;
    server
        .wait_metric("pulse_connections_timed_out_total{phase=\"head\"}", 1.0)
        .await;
    let mut updates = 0;
    let mut buf = [0u8; 4096];
    while updates < 4 {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("stream alive")
            .unwrap();
        assert!(n > 0, "the stream was closed");
        updates += String::from_utf8_lossy(&buf[..n])
            .matches(r#""type":"update""#)
            .count();
    }
}

#[tokio::test]
async fn sigterm_with_a_half_sent_request_exits_at_once() {
    let mut server = Server::start(&[
        ("PULSE_HEADER_TIMEOUT", "600s"),
        ("PULSE_SHUTDOWN_TIMEOUT", "60s"),
    ])
    .await;
    let mut half = connect_from(&server, "127.0.0.1").await;
    half.write_all(b"POST /api/notifications HTTP/1.1\r\nHost: p")
        .await
        .unwrap();
    let mut idle = connect_from(&server, "127.0.0.1").await;
    assert_eq!(
        status(&request(&mut idle, "GET /healthz HTTP/1.1\r\nHost: p\r\n").await),
        200
    );
    let start = Instant::now();
    server.signal("TERM");
    server.exited_cleanly().await;
    // Nothing was in flight, so nothing is waited for: far below the 60 s limit.
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    read_to_close(&mut half).await;
}

#[tokio::test]
async fn the_server_wide_cap_answers_503_with_retry_after() {
    let server = Server::start(&[("PULSE_MAX_CONNECTIONS", "3")]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut tcp = connect_from(&server, "127.0.0.1").await;
        assert_eq!(
            status(&request(&mut tcp, "GET /healthz HTTP/1.1\r\nHost: p\r\n").await),
            200
        );
        held.push(tcp);
    }
    let mut over = connect_from(&server, "127.0.0.2").await;
    let head = request(&mut over, "GET /healthz HTTP/1.1\r\nHost: p\r\n").await;
    assert_eq!(status(&head), 503, "{head}");
    assert!(head.contains("retry-after: 5"), "{head}");
    server
        .wait_metric("pulse_refused_total{reason=\"max_connections\"}", 1.0)
        .await;
    // A place given back is a place for the next client.
    held.pop();
    eventually("the freed place to be reused", async || {
        let mut tcp = connect_from(&server, "127.0.0.2").await;
        let head = request(&mut tcp, "GET /healthz HTTP/1.1\r\nHost: p\r\n").await;
        (status(&head) == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_per_address_cap_answers_429_and_other_addresses_are_served() {
    let server = Server::start(&[("PULSE_MAX_CONNECTIONS_PER_IP", "2")]).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = connect_from(&server, "127.0.0.1").await;
        assert_eq!(status(&request(&mut tcp, FEED).await), 200);
        held.push(tcp);
    }
    let mut over = connect_from(&server, "127.0.0.1").await;
    let head = request(&mut over, "GET /healthz HTTP/1.1\r\nHost: p\r\n").await;
    assert_eq!(status(&head), 429, "{head}");
    assert!(head.contains("retry-after: "), "{head}");
    // Forwarding headers from an untrusted peer change nothing.
    let mut forged = connect_from(&server, "127.0.0.1").await;
    let head = request(
        &mut forged,
        "GET /healthz HTTP/1.1\r\nHost: p\r\nX-Forwarded-For: 198.51.100.9\r\n",
    )
    .await;
    assert_eq!(status(&head), 429, "{head}");
    // Another client is still served.
    let mut other = connect_from(&server, "127.0.0.2").await;
    assert_eq!(status(&request(&mut other, FEED).await), 200);
}

#[tokio::test]
async fn the_per_user_socket_cap_answers_429_at_the_upgrade() {
    let server = ws::start(&[("PULSE_MAX_SOCKETS_PER_USER", "2")]).await;
    let url = ws::ws_url(&server);
    let bearer = |user: &str| format!("Bearer {}", token(user));
    let _a = ws::Client::connect(&server, "Ada").await;
    let _b = ws::Client::connect(&server, "Ada").await;
    assert_eq!(
        upgrade_status(&url, &[("authorization", &bearer("Ada"))]).await,
        429
    );
    assert_eq!(
        upgrade_status(&url, &[("authorization", &bearer("Bob"))]).await,
        101
    );
    // A closed socket gives its place back.
    drop(_a);
    let ada = [("authorization", bearer("Ada"))];
    eventually("the closed socket's place to be given back", async || {
        let headers: Vec<(&str, &str)> = ada.iter().map(|(k, v)| (*k, v.as_str())).collect();
        (upgrade_status(&url, &headers).await == 101).then_some(())
    })
    .await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_counted() {
    let server = Server::start(&[
        ("PULSE_TRUSTED_PROXIES", "127.0.0.1"),
        ("PULSE_MAX_CONNECTIONS_PER_IP", "1"),
    ])
    .await;
    let via = |client: &str| format!("{FEED}X-Forwarded-For: 10.9.8.7, {client}\r\n");
    // The proxy (127.0.0.1) carries many clients: its connections are not
    // capped per address, each forwarded client's streams are.
    let mut a = connect_from(&server, "127.0.0.1").await;
    assert_eq!(status(&request(&mut a, &via("198.51.100.1")).await), 200);
    let mut a2 = connect_from(&server, "127.0.0.1").await;
    assert_eq!(status(&request(&mut a2, &via("198.51.100.1")).await), 429);
    let mut b = connect_from(&server, "127.0.0.1").await;
    assert_eq!(status(&request(&mut b, &via("198.51.100.2")).await), 200);
    // From any other peer the header is ignored: 127.0.0.2 is the client.
    let mut c = connect_from(&server, "127.0.0.2").await;
    assert_eq!(status(&request(&mut c, &via("198.51.100.3")).await), 200);
    let mut c2 = connect_from(&server, "127.0.0.2").await;
    assert_eq!(status(&request(&mut c2, &via("198.51.100.4")).await), 429);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_rfc_7239_forwarded_header_is_believed_too() {
    let server = Server::start(&[
        ("PULSE_TRUSTED_PROXIES", "127.0.0.1"),
        ("PULSE_MAX_CONNECTIONS_PER_IP", "1"),
    ])
    .await;
    // Several elements: the first written by the client, the last by the
    // proxy that spoke to it (a quoted IPv6 address with a port).
    let via = |client: &str| {
        format!("{FEED}Forwarded: for=10.9.8.7;proto=https, for=\"{client}\";proto=http\r\n")
    };
    let mut a = connect_from(&server, "127.0.0.1").await;
    assert_eq!(
        status(&request(&mut a, &via("[2001:db8::1]:4711")).await),
        200
    );
    let mut a2 = connect_from(&server, "127.0.0.1").await;
    assert_eq!(
        status(&request(&mut a2, &via("[2001:db8::1]:9")).await),
        429
    );
    let mut b = connect_from(&server, "127.0.0.1").await;
    assert_eq!(status(&request(&mut b, &via("198.51.100.2:80")).await), 200);
    // From any other peer the header is ignored: 127.0.0.2 is the client.
    let mut c = connect_from(&server, "127.0.0.2").await;
    assert_eq!(status(&request(&mut c, &via("198.51.100.3")).await), 200);
    let mut c2 = connect_from(&server, "127.0.0.2").await;
    assert_eq!(status(&request(&mut c2, &via("198.51.100.4")).await), 429);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_origin_check_uses_the_forwarded_host() {
    let server = ws::start(&[("PULSE_TRUSTED_PROXIES", "127.0.0.1")]).await;
    let url = ws::ws_url(&server);
    let bearer = format!("Bearer {}", token("Ada"));
    // nginx on port 8080 forwards the host the browser asked for.
    let proxied = [
        ("authorization", bearer.as_str()),
        ("origin", "http://pulse.example:8080"),
        ("x-forwarded-host", "pulse.example:8080"),
    ];
    assert_eq!(upgrade_status(&url, &proxied).await, 101);
    let foreign = [
        ("authorization", bearer.as_str()),
        ("origin", "http://evil.example"),
        ("x-forwarded-host", "pulse.example:8080"),
    ];
    assert_eq!(upgrade_status(&url, &foreign).await, 403);
    // Without trust, a forged X-Forwarded-Host does not open the door.
    let plain = ws::start(&[]).await;
    assert_eq!(upgrade_status(&ws::ws_url(&plain), &proxied).await, 403);
}

#[tokio::test]
async fn metrics_are_served_on_their_own_address_only() {
    let server = Server::start(&[]).await;
    let public = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
    let url = server.metrics_url.as_deref().expect("metrics listener");
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    assert!(text.contains("pulse_open_connections"), "{text}");
    let off = Server::start(&[("PULSE_METRICS_ADDR", "off")]).await;
    assert!(off.metrics_url.is_none());
}

#[tokio::test]
async fn running_out_of_file_descriptors_does_not_stop_the_accept_loop() {
    // A hard limit of 128 open files, and no connection cap to stop the
    // flood first: the accept loop meets EMFILE.
    let mut server = Server::start_with(&[("PULSE_MAX_CONNECTIONS", "100000")], Some(128)).await;
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(connect_from(&server, "127.0.0.2").await);
    }
    server.wait_log("accept failed").await;
    drop(flood);
    // Once the flood is gone, the server accepts and serves again.
    eventually("the server to accept and serve again", async || {
        let mut tcp = connect_from(&server, "127.0.0.1").await;
        let head = try_request(&mut tcp, "GET /healthz HTTP/1.1\r\nHost: p\r\n").await;
        head.filter(|h| status(h) == 200).map(drop)
    })
    .await;
}

/// What the server answers to a POST of `path` (a `content_type` body) that
/// announces a megabyte of body and sends none of it; `None` if it waits
/// for the body.
async fn answer_to_a_huge_post(server: &Server, path: &str, content_type: &str) -> Option<String> {
    let addr = server.url.trim_start_matches("http://");
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        token("Mallory"),
        1024 * 1024
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut answer))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&answer[..n]).into_owned())
}

#[tokio::test]
async fn an_oversized_post_is_refused_from_its_head_without_reading_the_body() {
    let server = ws::start(&[]).await;
    // The fallback's posts (64 KiB at most) and notifications (16 KiB):
    // answered 413 from the announced length, before any of it is buffered.
    for path in ["/api/chat/send", "/api/notifications"] {
        let answer = answer_to_a_huge_post(&server, path, "application/json").await;
        let answer = answer.unwrap_or_else(|| panic!("{path}: no answer before the body"));
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
    }
}

#[tokio::test]
async fn a_server_function_takes_no_more_body_than_its_longest_argument() {
    let server = ws::start(&[]).await;
    // Sign-in and publishing (server functions, form-encoded): a megabyte
    // announced is refused from the head, as above.
    for path in ["/api/sign_in", "/api/publish_notification"] {
        let answer =
            answer_to_a_huge_post(&server, path, "application/x-www-form-urlencoded").await;
        let answer = answer.unwrap_or_else(|| panic!("{path}: no answer before the body"));
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
    }
    // Without a length announced (chunked): the same limit, the same 413,
    // however the server function would have read it.
    let chunked = futures::stream::iter([Ok::<_, std::io::Error>(format!(
        "name={}",
        "a".repeat(40 * 1024)
    ))]);
    let res = reqwest::Client::new()
        .post(format!("{}/api/sign_in", server.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(reqwest::Body::wrap_stream(chunked))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    // The longest notification still fits, however it is written: 2000
    // four-byte characters, each percent-encoded (12 bytes).
    let (cookie, _) = ws::sign_in(&server, "Wordy").await;
    let longest = "\u{1F600}".repeat(pulse::protocol::MAX_TEXT_CHARS);
    let res = reqwest::Client::new()
        .post(format!("{}/api/publish_notification", server.url))
        .header("cookie", cookie)
        .form(&[("text", longest.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        200,
        "{}",
        res.text().await.unwrap_or_default()
    );
}
