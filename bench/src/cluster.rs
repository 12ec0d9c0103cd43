//! Scenarios over a real `redis-server` that the bench starts on a free
//! loopback port, pinned to core 1 beside the generator (the server under
//! test keeps core 0): the recovery storm, and the cost of the publish path.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

use super::{find, pct, proc_usage, RawWs, Res, Server};

/// A `redis-server` for one scenario (no persistence), killed on drop.
pub struct Redis {
    /// The process.
    _child: Child,
    /// Its pid, for its CPU time.
    pub pid: u32,
    /// `redis://127.0.0.1:PORT`.
    pub url: String,
}

impl Redis {
    pub async fn start() -> Res<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "1", "redis-server", "--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let child = cmd.spawn()?;
        let pid = child.id().ok_or("no pid")?;
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if started.elapsed() > Duration::from_secs(10) {
                return Err("redis-server did not start".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Redis {
            _child: child,
            pid,
            url: format!("redis://127.0.0.1:{port}"),
        })
    }

    /// CPU time (µs) so far.
    pub fn cpu_us(&self) -> u64 {
        proc_usage(self.pid).0
    }
}

/// A server on `redis`, once it says it is ready.
pub(super) async fn on_redis(bin: &str, redis: &Redis) -> Res<Server> {
    let server = Server::start_env(bin, &[("PULSE_REDIS_URL", &redis.url)]).await?;
    let ready = "GET /readyz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n";
    let started = Instant::now();
    while super::request(&server.addr, ready, b"HTTP/1.1 200")
        .await
        .is_err()
    {
        if started.elapsed() > Duration::from_secs(10) {
            return Err("the server did not get ready".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(server)
}

/// The value of `"key":` after the last `"epoch":` of a `joined` frame (its
/// own fields come after its history's).
pub(super) fn joined_field<'a>(frame: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let at = frame.windows(9).rposition(|w| w == br#""epoch":""#)?;
    let rest = &frame[at..];
    let start = find(rest, format!("\"{key}\":").as_bytes())? + key.len() + 3;
    let end = rest[start..].iter().position(|&b| b == b',' || b == b'}')?;
    Some(&rest[start..start + end])
}

/// Joins `room` (with `since`, if given) and returns the `joined` frame.
pub(super) async fn join_since(ws: &mut RawWs, room: &str, since: Option<&str>) -> Res<Vec<u8>> {
    let since = since.map_or(String::new(), |s| format!(r#","since":{s}"#));
    ws.send_text(&format!(r#"{{"type":"join","room":"{room}"{since}}}"#))
        .await?;
    let mut joined = None;
    ws.read_texts(|t| {
        if find(t, br#""type":"joined""#).is_some() {
            joined = Some(t.to_vec());
            true
        } else {
            false
        }
    })
    .await?;
    joined.ok_or_else(|| "closed before joined".into())
}

/// The recovery storm: 1000 members of a room disconnect together, 500
/// messages are published, and all rejoin within a second with `since`.
pub async fn recovery(bin: &str) -> Res<()> {
    const MEMBERS: usize = 1000;
    const MISSED: usize = 500;
    let redis = Redis::start().await?;
    let server = on_redis(bin, &redis).await?;
    let token = server.token("member").await?;

    // Everyone in, each remembering where the stream was.
    let mut members = Vec::with_capacity(MEMBERS);
    for _ in 0..MEMBERS {
        let mut ws = RawWs::connect(&server.addr, &token).await?;
        let joined = join_since(&mut ws, "storm", None).await?;
        let epoch = joined_field(&joined, "epoch").ok_or("no epoch")?.to_vec();
        let offset = joined_field(&joined, "offset").ok_or("no offset")?.to_vec();
        let since = format!(
            r#"{{"epoch":{},"offset":{}}}"#,
            String::from_utf8_lossy(&epoch),
            String::from_utf8_lossy(&offset)
        );
        members.push((ws, since));
    }
    // All gone at once.
    let sinces: Vec<String> = members.into_iter().map(|(_, since)| since).collect();

    // 500 messages while they are away, each acked.
    let publisher_token = server.token("publisher").await?;
    let mut publisher = server.ws(&publisher_token).await?;
    super::join(&mut publisher, "storm").await?;
    for i in 0..MISSED {
        let frame = format!(
            r#"{{"type":"message","room":"storm","text":"missed {i}","client_id":"r{i}"}}"#
        );
        publisher.send(Message::text(frame)).await?;
        while let Some(msg) = publisher.next().await {
            if let Message::Text(t) = msg? {
                if t.contains(r#""type":"ack""#) {
                    break;
                }
            }
        }
    }

    // All come back within a second, rejoining with since.
    let (cpu0, _) = server.usage();
    let redis0 = redis.cpu_us();
    let started = Instant::now();
    let recovered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(MEMBERS);
    for (i, since) in sinces.into_iter().enumerate() {
        let (addr, token, recovered) = (server.addr.clone(), token.clone(), recovered.clone());
        let delay = Duration::from_micros((i as u64 * 1_000_000) / MEMBERS as u64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut ws = RawWs::connect(&addr, &token).await?;
            let joined = tokio::time::timeout(
                Duration::from_secs(15),
                join_since(&mut ws, "storm", Some(&since)),
            )
            .await
            .map_err(|_| "no joined within 15 s")??;
            let whole = joined_field(&joined, "recovered") == Some(b"true");
            let count = joined
                .windows(12)
                .filter(|w| w == br#""client_id":"#)
                .count();
            if whole && count == MISSED {
                recovered.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((started.elapsed(), ws))
        }));
    }
    let mut done = Vec::with_capacity(MEMBERS);
    let mut failures = 0;
    let mut held = Vec::new();
    for t in tasks {
        match t.await? {
            Ok((at, ws)) => {
                done.push(at.as_micros() as u64);
                held.push(ws);
            }
            Err(e) => {
                if failures == 0 {
                    eprintln!("recovery: a rejoin failed: {e}");
                }
                failures += 1;
            }
        }
    }
    let all = started.elapsed();
    let (cpu1, rss) = server.usage();
    let redis1 = redis.cpu_us();
    done.sort_unstable();
    println!(
        "recovery storm: {MEMBERS} members, {MISSED} missed each: {} recovered whole, {failures} \
         failures; all back in {:.0} ms (p50 {:.0} ms, p99 {:.0} ms after the first); server CPU \
         {:.0} ms ({:.0} µs per rejoin), RSS {:.1} MiB; redis CPU {:.0} ms",
        recovered.load(Ordering::Relaxed),
        all.as_secs_f64() * 1000.0,
        pct(&done, 0.5),
        pct(&done, 0.99),
        (cpu1 - cpu0) as f64 / 1000.0,
        (cpu1 - cpu0) as f64 / MEMBERS as f64,
        rss as f64 / 1024.0,
        (redis1 - redis0) as f64 / 1000.0,
    );
    drop(held);
    server.stop().await;
    Ok(())
}

/// The publish path's cost: one publisher sends messages one after another
/// (each waits for its own echo) to a room with one other member, in memory
/// and over Redis; the server's CPU per message, and the publisher's wait.
pub async fn publish_cost(bin: &str) -> Res<()> {
    const MESSAGES: usize = 5000;
    let redis = Redis::start().await?;
    for over_redis in [false, true] {
        let server = if over_redis {
            on_redis(bin, &redis).await?
        } else {
            Server::start(bin).await?
        };
        let token = server.token("listener").await?;
        let mut listener = RawWs::connect(&server.addr, &token).await?;
        join_since(&mut listener, "cost", None).await?;
        let heard = tokio::spawn(async move {
            let mut n = 0;
            listener
                .read_texts(|t| {
                    if find(t, br#""type":"message""#).is_some() {
                        n += 1;
                    }
                    n == MESSAGES
                })
                .await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(n)
        });
        let publisher_token = server.token("publisher").await?;
        let mut publisher = server.ws(&publisher_token).await?;
        super::join(&mut publisher, "cost").await?;
        let (cpu0, _) = server.usage();
        let redis0 = redis.cpu_us();
        let started = Instant::now();
        let mut waits = Vec::with_capacity(MESSAGES);
        for i in 0..MESSAGES {
            let sent = Instant::now();
            let text = format!("cost {i}");
            let frame =
                format!(r#"{{"type":"message","room":"cost","text":"{text}","client_id":"c{i}"}}"#);
            publisher.send(Message::text(frame)).await?;
            let echo = format!(r#""text":"{text}""#);
            while let Some(msg) = publisher.next().await {
                if let Message::Text(t) = msg? {
                    if t.contains(&echo) {
                        break;
                    }
                }
            }
            waits.push(sent.elapsed().as_micros() as u64);
        }
        let got = heard.await??;
        let wall = started.elapsed();
        let (cpu1, _) = server.usage();
        waits.sort_unstable();
        println!(
            "publish cost ({}): {MESSAGES} messages in {:.1} s, {got} heard by the other member; \
             server {:.1} µs CPU per message; redis {:.1} µs per message; send → own echo p50 \
             {:.2} ms, p99 {:.2} ms",
            if over_redis { "redis" } else { "in memory" },
            wall.as_secs_f64(),
            (cpu1 - cpu0) as f64 / MESSAGES as f64,
            if over_redis {
                (redis.cpu_us() - redis0) as f64 / MESSAGES as f64
            } else {
                0.0
            },
            pct(&waits, 0.5),
            pct(&waits, 0.99),
        );
        server.stop().await;
    }
    Ok(())
}
