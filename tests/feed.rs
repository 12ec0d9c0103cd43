//! The live feed, against the real server over HTTP.

mod support;

use std::time::{Duration, Instant};

use support::{Server, Sse, WAIT};

const FAST: &[(&str, &str)] = &[("PULSE_FEED_INTERVAL_MS", "50")];

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
    let server = Server::start(&[("PULSE_FEED_INTERVAL_MS", "200")]).await;
    let mut sse = Sse::open(&server.url, None).await;
    sse.next_update().await;
    let start = Instant::now();
    let mut stamps = Vec::new();
    for _ in 0..5 {
        let u = sse.next_update().await;
        stamps.push(u.data.unwrap()["timestamp"].as_u64().unwrap());
    }
    // Five intervals after the first update, by the client's clock and the
    // server's timestamps, within a tolerance for scheduling.
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed <= Duration::from_millis(1500),
        "5 updates took {elapsed:?}"
    );
    for pair in stamps.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            (150..=300).contains(&gap),
            "server timestamps {gap} ms apart"
        );
    }
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
        ("PULSE_FEED_INTERVAL_MS", "5"),
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
async fn keep_alive_comments_flow_on_idle_streams() {
    let server = Server::start(&[
        ("PULSE_FEED_INTERVAL_MS", "60000"),
        ("PULSE_SSE_KEEP_ALIVE_S", "1"),
    ])
    .await;
    let mut sse = Sse::open(&server.url, None).await;
    loop {
        let frame = sse.next().await.expect("stream open");
        if frame.comment.as_deref() == Some("keep-alive") {
            break;
        }
    }
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
        ("PULSE_FEED_INTERVAL_MS", "50"),
        ("PULSE_SHUTDOWN_TIMEOUT_S", "30"),
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
    let status = tokio::time::timeout(WAIT, server.child.wait())
        .await
        .expect("pulse exited")
        .unwrap();
    assert!(status.success(), "clean exit: {status}");
    // Far below the 30 s limit: open streams do not hold shutdown up.
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}
