//! The live feed, against the real server over HTTP.

mod support;

use std::time::{Duration, Instant};

use support::{Server, Sse, WAIT};

const FAST: &[(&str, &str)] = &[("PULSE_FEED_INTERVAL", "50ms")];

#[tokio::test]
async fn stream_starts_with_retry_and_connected_then_numbered_updates() {
    let server = Server::start(FAST).await;
    let mut sse = Sse::open(&server.url, None).await;

    let h = &sse.response_headers;
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");

    let retry = sse.next().await.expect("retry frame");
    assert_eq!(retry.retry, Some(2000), "retry hint from Leptos.toml");
    let first = sse.next_event().await;
    assert_eq!(first.kind(), Some("connected"));
    assert!(first.data.as_ref().unwrap()["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(first.id, None);

    let mut last: Option<u64> = None;
    for _ in 0..10 {
        let update = sse.next_event().await;
        assert_eq!(update.kind(), Some("update"));
        let data = update.data.as_ref().unwrap();
        let value = data["value"].as_f64().expect("value");
        assert!((0.0..1.0).contains(&value), "value {value} in [0, 1)");
        assert!(data["timestamp"].as_u64().is_some());
        let id = update.id.expect("updates carry an id");
        if let Some(last) = last {
            assert!(id > last, "ids increase");
        }
        last = Some(id);
    }
}

#[tokio::test]
async fn updates_come_at_the_configured_interval() {
    let server = Server::start(&[("PULSE_FEED_INTERVAL", "200ms")]).await;
    let mut sse = Sse::open(&server.url, None).await;
    sse.next_update().await;
    let mut stamps = Vec::new();
    for _ in 0..7 {
        let u = sse.next_update().await;
        stamps.push(u.data.unwrap()["timestamp"].as_u64().unwrap());
    }
    // By the server's own timestamps (a busy test machine delays the client,
    // not them): never faster than configured, even after a stall (no
    // catch-up bursts), and typically at the configured pace.
    let mut gaps: Vec<u64> = stamps.windows(2).map(|p| p[1] - p[0]).collect();
    assert!(
        gaps.iter().all(|&gap| gap >= 190),
        "updates closer than 200 ms: {gaps:?}"
    );
    gaps.sort_unstable();
    let median = gaps[gaps.len() / 2];
    assert!(median <= 400, "median gap {median} ms: {gaps:?}");
}

#[tokio::test]
async fn resuming_with_last_event_id_misses_nothing_and_repeats_nothing() {
    let server = Server::start(FAST).await;
    // A client that stays connected sees every id: the reference.
    let mut watcher = Sse::open(&server.url, None).await;
    let mut first = Sse::open(&server.url, None).await;
    let seen = first.next_update().await.id.unwrap();
    drop(first);
    let mut reference = Vec::new();
    while reference.len() < 40 {
        let id = watcher.next_update().await.id.unwrap();
        if id > seen {
            reference.push(id);
        }
    }

    for how in ["header", "query"] {
        let mut resumed = match how {
            "header" => Sse::open(&server.url, Some(&seen.to_string())).await,
            _ => {
                Sse::open_path(
                    &server.url,
                    &format!("/api/events?lastEventId={seen}"),
                    None,
                )
                .await
            }
        };
        assert_eq!(resumed.next_event().await.kind(), Some("connected"));
        // The replay from the backlog runs straight into live events: exactly
        // the ids the reference client saw after `seen`, in order.
        for expected in &reference[..30] {
            let frame = resumed.next_event().await;
            assert_eq!(frame.kind(), Some("update"), "{how}: no gap expected");
            assert_eq!(frame.id, Some(*expected), "{how}: resumed in order");
        }
    }
}

#[tokio::test]
async fn resuming_from_before_the_backlog_says_gap_first() {
    let server = Server::start(&[
        ("PULSE_FEED_INTERVAL", "5ms"),
        ("PULSE_FEED_BACKLOG", "100"),
    ])
    .await;
    let mut sse = Sse::open(&server.url, None).await;
    let old = sse.next_update().await.id.unwrap();
    let mut after_old = Vec::new();
    while after_old.len() < 300 {
        after_old.push(sse.next_update().await.id.unwrap());
    }

    let mut resumed = Sse::open(&server.url, Some(&old.to_string())).await;
    assert_eq!(resumed.next_event().await.kind(), Some("connected"));
    assert_eq!(resumed.next_event().await.kind(), Some("gap"));
    let first = resumed.next_update().await.id.unwrap();
    let at = after_old
        .iter()
        .position(|id| *id == first)
        .expect("the replay starts inside the backlog");
    assert!(at > 0, "events before the backlog are gone");
    // From there on, every event in order: no gap after the gap event.
    assert!(after_old.len() - at > 50, "a good stretch to compare");
    for expected in &after_old[at + 1..] {
        assert_eq!(resumed.next_update().await.id, Some(*expected));
    }
}

#[tokio::test]
async fn a_malformed_last_event_id_is_a_clear_400() {
    let server = Server::start(FAST).await;
    let res = reqwest::Client::new()
        .get(format!("{}/api/events", server.url))
        .header("Last-Event-ID", "not-a-number")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("Last-Event-ID"));
}

#[tokio::test]
async fn heartbeats_flow_on_idle_streams_and_say_their_interval() {
    let server = Server::start(&[
        ("PULSE_FEED_INTERVAL", "60000ms"),
        ("PULSE_SSE_KEEP_ALIVE", "1s"),
    ])
    .await;
    // Visible to a page's script (a comment is not), so the client can tell
    // a quiet stream from a dead one: one when the stream opens, then more
    // while nothing else is sent.
    let ping = serde_json::json!({ "interval_ms": 1000 });
    let mut sse = Sse::open(&server.url, None).await;
    let mut pings = 0;
    while pings < 3 {
        let frame = sse.next().await.expect("stream open");
        if frame.event.as_deref() == Some("ping") {
            assert_eq!(frame.data.as_ref(), Some(&ping));
            assert_eq!(frame.id, None, "a heartbeat is not an event of the feed");
            pings += 1;
        }
    }
    // The dashboard's stream says how often its samples come (one a second).
    let mut stats = Sse::open_path(&server.url, "/api/stats", None).await;
    let first = loop {
        let frame = stats.next().await.expect("stream open");
        if frame.retry.is_none() {
            break frame;
        }
    };
    assert_eq!(first.event.as_deref(), Some("ping"));
    assert_eq!(first.data, Some(ping));
    assert!(stats.next_event().await.data.unwrap()["timestamp"].is_u64());
}

#[tokio::test]
async fn a_client_that_goes_away_is_cleaned_up() {
    let server = Server::start(FAST).await;
    let sse = "pulse_open_connections{transport=\"sse\"}";
    server.wait_metric("pulse_feed_subscribers", 0.0).await;

    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut s = Sse::open(&server.url, None).await;
        s.next_update().await;
        streams.push(s);
    }
    server.wait_metric("pulse_feed_subscribers", 3.0).await;
    server.wait_metric(sse, 3.0).await;

    streams.truncate(1);
    server.wait_metric("pulse_feed_subscribers", 1.0).await;
    server.wait_metric(sse, 1.0).await;
    assert_eq!(
        server
            .metric("pulse_connections_opened_total{transport=\"sse\"}")
            .await,
        3.0
    );

    // The one left still streams.
    streams[0].next_update().await;
}

#[tokio::test]
async fn sigterm_ends_open_streams_and_exits_promptly() {
    let mut server = Server::start(&[
        ("PULSE_FEED_INTERVAL", "50ms"),
        ("PULSE_SHUTDOWN_TIMEOUT", "30s"),
    ])
    .await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut s = Sse::open(&server.url, None).await;
        s.next_update().await;
        streams.push(s);
    }
    let start = Instant::now();
    server.signal("TERM");
    for s in &mut streams {
        // Each stream ends (cleanly) rather than hanging.
        while s.next().await.is_some() {}
    }
    server.exited_cleanly().await;
    // Far below the 30 s limit: open streams do not hold shutdown up.
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}

/// A feed stream read byte by byte off a plain TCP socket, to see exactly
/// what goes on the wire.
struct RawStream {
    tcp: tokio::net::TcpStream,
    /// Bytes read and not yet parsed.
    buf: Vec<u8>,
}

impl RawStream {
    /// Connects, sends `head` and reads the response head; returns it
    /// (lowercased).
    async fn open(server: &Server, head: &str) -> (RawStream, String) {
        let addr = server.url.trim_start_matches("http://");
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut raw = RawStream {
            tcp,
            buf: Vec::new(),
        };
        let response = raw.request(head).await;
        (raw, response)
    }

    /// Sends `head` on this connection and reads the response head.
    async fn request(&mut self, head: &str) -> String {
        use tokio::io::AsyncWriteExt;
        self.tcp.write_all(head.as_bytes()).await.unwrap();
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                self.fill().await,
                "connection closed before the response head"
            );
        };
        let response = String::from_utf8(self.buf.drain(..end).collect()).unwrap();
        response.to_ascii_lowercase()
    }

    /// Reads more; false at the end of the connection.
    async fn fill(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("server silent")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next chunk of the chunked body (empty for the last one), checking
    /// its framing; `None` if the connection ends first.
    async fn next_chunk(&mut self) -> Option<String> {
        loop {
            if let Some(line_end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let size = std::str::from_utf8(&self.buf[..line_end]).unwrap();
                let size = usize::from_str_radix(size, 16).expect("a chunk size line");
                let total = line_end + 2 + size + 2;
                if self.buf.len() >= total {
                    assert_eq!(&self.buf[total - 2..total], b"\r\n", "chunk ends with CRLF");
                    let data = self.buf[line_end + 2..total - 2].to_vec();
                    self.buf.drain(..total);
                    return Some(String::from_utf8(data).unwrap());
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads the frames every stream starts with, one chunk each: `retry:`,
    /// the heartbeat, `connected`, then the first numbered update.
    async fn expect_opening_chunks(&mut self) {
        assert_eq!(self.next_chunk().await.unwrap(), "retry: 2000\n\n");
        let ping = self.next_chunk().await.unwrap();
        assert!(
            ping.starts_with("event: ping\ndata: {\"interval_ms\":"),
            "{ping}"
        );
        let connected = self.next_chunk().await.unwrap();
        assert!(connected.contains(r#""type":"connected""#), "{connected}");
        let update = self.next_chunk().await.unwrap();
        assert!(
            update.starts_with("id: ") && update.contains(r#""type":"update""#),
            "{update}"
        );
    }
}

const FEED_HEAD: &str = "GET /api/events HTTP/1.1\r\nHost: pulse\r\nAccept: text/event-stream\r\n";

#[tokio::test]
async fn on_the_wire_a_stream_is_plain_chunked_http_that_ends_cleanly_at_shutdown() {
    let server = Server::start(FAST).await;
    let (mut raw, head) = RawStream::open(&server, &format!("{FEED_HEAD}\r\n")).await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    for line in [
        "content-type: text/event-stream\r\n",
        "cache-control: no-cache\r\n",
        "x-accel-buffering: no\r\n",
        "transfer-encoding: chunked\r\n",
        "date: ",
    ] {
        assert!(head.contains(line), "{line:?} in {head}");
    }
    // Every SSE frame is one chunk.
    raw.expect_opening_chunks().await;

    server.signal("TERM");
    loop {
        match raw.next_chunk().await {
            Some(chunk) if chunk.is_empty() => break,
            Some(_) => continue,
            None => panic!("the body ended without its last chunk"),
        }
    }
    assert!(!raw.fill().await, "the server closes after the last chunk");
}

#[tokio::test]
async fn a_feed_request_with_a_large_head_streams_the_same() {
    // A head of several KiB (many cookies) is fine.
    let server = Server::start(FAST).await;
    let cookie = format!("Cookie: big={}\r\n", "x".repeat(6000));
    let (mut raw, head) = RawStream::open(&server, &format!("{FEED_HEAD}{cookie}\r\n")).await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(
        head.contains("content-type: text/event-stream\r\n"),
        "{head}"
    );
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    raw.expect_opening_chunks().await;
}

#[tokio::test]
async fn an_http_1_0_client_gets_the_frames_unchunked_until_the_connection_closes() {
    // nginx speaks HTTP/1.0 to its upstreams unless told otherwise.
    let server = Server::start(FAST).await;
    let request = "GET /api/events HTTP/1.0\r\nHost: pulse\r\n\r\n";
    let (mut raw, head) = RawStream::open(&server, request).await;
    // Answered in the client's version: an HTTP/1.0 body ends when the
    // connection closes, so it has neither chunks nor a length.
    assert!(head.starts_with("http/1.0 200 ok\r\n"), "{head}");
    assert!(
        head.contains("content-type: text/event-stream\r\n"),
        "{head}"
    );
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert!(!head.contains("connection: keep-alive"), "{head}");
    while !String::from_utf8_lossy(&raw.buf).contains(r#""type":"update""#) {
        assert!(raw.fill().await, "stream open");
    }
    let body = String::from_utf8_lossy(&raw.buf).into_owned();
    assert!(
        body.starts_with("retry: 2000\n\nevent: ping\ndata: {\"interval_ms\":"),
        "{body}"
    );
    assert!(body.contains(r#""type":"connected""#), "{body}");
    server.signal("TERM");
    while raw.fill().await {}
}

#[tokio::test]
async fn a_feed_request_on_a_kept_alive_connection_streams_too() {
    // What a browser does: its EventSource reuses a connection that loaded
    // the page.
    let server = Server::start(FAST).await;
    let (mut raw, head) =
        RawStream::open(&server, "GET /healthz HTTP/1.1\r\nHost: pulse\r\n\r\n").await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("content-length: 2\r\n"), "{head}");
    while raw.buf.len() < 2 {
        assert!(raw.fill().await, "body");
    }
    assert_eq!(raw.buf.drain(..2).collect::<Vec<_>>(), b"ok");

    let head = raw.request(&format!("{FEED_HEAD}\r\n")).await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    raw.expect_opening_chunks().await;

    // Ends like any other: the client goes away, the stream is forgotten.
    drop(raw);
    server
        .wait_metric("pulse_open_connections{transport=\"sse\"}", 0.0)
        .await;
}
