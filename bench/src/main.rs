//! pulse-bench: starts the release server (pinned by `make bench` to core 0,
//! while this load generator runs on core 1), drives it over loopback with
//! real WebSocket and SSE clients, and prints a table. The server's own cost
//! is read from `/proc/<pid>` (CPU time, RSS); this process's CPU is printed
//! too, so a reader can tell which side was the limit.
//!
//! Usage: pulse-bench SERVER_BINARY [SCENARIO...]
//! Scenarios: fanout, idle-ws, idle-sse, churn, front (default: all).

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const SECRET: &str = "pulse-bench secret, long enough for HS256";
const TEXT_BYTES: usize = 64;

/// A server under test.
struct Server {
    child: Child,
    pid: u32,
    addr: String,
    bin: String,
}

/// CPU time (µs) and RSS (KiB) of a process.
fn proc_usage(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after ')'.
    let cpu_us = (ticks(11) + ticks(12)) * 10_000; // 100 ticks a second
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (cpu_us, rss)
}

fn self_cpu_us() -> u64 {
    proc_usage(std::process::id()).0
}

impl Server {
    async fn start(bin: &str) -> Res<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = if std::env::var_os("PULSE_BENCH_NO_PIN").is_some() {
            Command::new(bin)
        } else {
            let mut c = Command::new("taskset");
            c.args(["-c", "0", bin]);
            c
        };
        cmd.env("LEPTOS_SITE_ADDR", &addr)
            .env("PULSE_JWT_SECRET", SECRET)
            .env("PULSE_RATE_LIMIT_PER_MIN", "100000000")
            .env("RUST_LOG", "warn,pulse=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let pid = child.id().ok_or("no pid")?;
        let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        loop {
            let line = lines.next_line().await?.ok_or("server exited")?;
            if line.contains("listening on") {
                break;
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        // `taskset` execs the server: same pid.
        Ok(Server {
            child,
            pid,
            addr,
            bin: bin.to_string(),
        })
    }

    fn usage(&self) -> (u64, u64) {
        proc_usage(self.pid)
    }

    async fn token(&self, sub: &str) -> Res<String> {
        let out = Command::new(&self.bin)
            .args(["token", "--sub", sub, "--ttl", "2h"])
            .env("PULSE_JWT_SECRET", SECRET)
            .output()
            .await?;
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    async fn ws(&self, token: &str) -> Res<Ws> {
        let mut req = format!("ws://{}/ws", self.addr).into_client_request()?;
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(ws)
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Joins `room` and waits for `joined`.
async fn join(ws: &mut Ws, room: &str) -> Res<()> {
    ws.send(Message::text(format!(
        r#"{{"type":"join","room":"{room}"}}"#
    )))
    .await?;
    while let Some(msg) = ws.next().await {
        if let Message::Text(t) = msg? {
            if t.contains(r#""type":"joined""#) {
                return Ok(());
            }
        }
    }
    Err("closed before joined".into())
}

/// The `text` of a message frame: "seq ts-µs padding".
fn parse_text(frame: &str) -> Option<(u64, u64)> {
    let start = frame.find(r#""text":""#)? + 8;
    let mut parts = frame[start..].split(' ');
    let seq = parts.next()?.parse().ok()?;
    let ts = parts.next()?.parse().ok()?;
    Some((seq, ts))
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn fanout(bin: &str) -> Res<()> {
    const SUBS: usize = 1000;
    let server = Server::start(bin).await?;
    let token = server.token("subscriber").await?;
    let started = Instant::now();
    let mut subs = Vec::with_capacity(SUBS);
    let mut connecting = Vec::new();
    for _ in 0..SUBS {
        let (s, t) = (server.addr.clone(), token.clone());
        connecting.push(tokio::spawn(async move {
            let mut req = format!("ws://{s}/ws").into_client_request()?;
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse()?);
            let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
            join(&mut ws, "bench").await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(ws)
        }));
    }
    for c in connecting {
        subs.push(c.await??);
    }
    let connect_join = started.elapsed();
    println!("fan-out: connect + join of {SUBS} subscribers: {connect_join:.2?}");

    // Each subscriber records (seq, latency µs) of what it receives, in its
    // own (uncontended) list.
    let delivered = Arc::new(AtomicU64::new(0));
    let mut records = Vec::new();
    let mut readers = Vec::new();
    for mut ws in subs {
        let mine = Arc::new(Mutex::new(Vec::<(u64, u64)>::new()));
        records.push(mine.clone());
        let delivered = delivered.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(t) = msg {
                    if let Some((seq, ts)) = parse_text(&t) {
                        let latency = now_us().saturating_sub(ts);
                        if let Ok(mut m) = mine.lock() {
                            m.push((seq, latency));
                        }
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    let ptoken = server.token("publisher").await?;
    let mut publisher = server.ws(&ptoken).await?;
    join(&mut publisher, "bench").await?;
    let (ptx, mut prx) = publisher.split();
    tokio::spawn(async move { while let Some(Ok(_)) = prx.next().await {} });
    let ptx = Arc::new(tokio::sync::Mutex::new(ptx));

    println!(
        "{:>6} {:>10} {:>8} {:>6} {:>8} {:>8} {:>8} {:>10} {:>10}",
        "msg/s", "deliv/s", "loss", "dups", "p50 ms", "p99 ms", "max ms", "srv µs/dl", "gen cpu %"
    );
    let mut seq = 0u64;
    for rate in [20u64, 50, 100, 200] {
        let first_seq = seq;
        let before_srv = server.usage().0;
        let before_gen = self_cpu_us();
        let before_dl = delivered.load(Ordering::Relaxed);
        let t0 = Instant::now();
        let period = Duration::from_micros(1_000_000 / rate);
        let mut tick = tokio::time::interval(period);
        let sends = rate * 10;
        for _ in 0..sends {
            tick.tick().await;
            let mut text = format!("{seq} {} ", now_us());
            while text.len() < TEXT_BYTES {
                text.push('x');
            }
            let frame = format!(r#"{{"type":"message","room":"bench","text":"{text}"}}"#);
            ptx.lock().await.send(Message::text(frame)).await?;
            seq += 1;
        }
        // Let the last deliveries land (bounded).
        let expected = sends * SUBS as u64;
        let deadline = Instant::now() + Duration::from_secs(5);
        while delivered.load(Ordering::Relaxed) - before_dl < expected && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let wall = t0.elapsed().as_secs_f64();
        let got = delivered.load(Ordering::Relaxed) - before_dl;
        let srv_us = server.usage().0 - before_srv;
        let gen_us = self_cpu_us() - before_gen;
        // Latencies, losses and duplicates of this round's seqs.
        let (mut latencies, mut unique, mut dups) = (Vec::new(), 0u64, 0u64);
        for r in &records {
            let Ok(mine) = r.lock() else { continue };
            let mut seen = HashSet::new();
            for &(s, l) in mine.iter().filter(|(s, _)| (first_seq..seq).contains(s)) {
                if seen.insert(s) {
                    unique += 1;
                    latencies.push(l);
                } else {
                    dups += 1;
                }
            }
        }
        latencies.sort_unstable();
        println!(
            "{:>6} {:>10.0} {:>8} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>10.2} {:>10.0}",
            rate,
            got as f64 / wall,
            expected.saturating_sub(unique),
            dups,
            pct(&latencies, 0.5),
            pct(&latencies, 0.99),
            latencies.last().map_or(f64::NAN, |m| *m as f64 / 1000.0),
            srv_us as f64 / got.max(1) as f64,
            gen_us as f64 / (wall * 1e6) * 100.0
        );
    }
    server.stop().await;
    for r in readers {
        r.abort();
    }
    Ok(())
}

async fn idle_ws(bin: &str) -> Res<()> {
    const CONNS: usize = 10_000;
    let server = Server::start(bin).await?;
    let token = server.token("idle").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, rss0) = server.usage();
    let mut held = Vec::with_capacity(CONNS);
    let t0 = Instant::now();
    for chunk in 0..(CONNS / 500) {
        let mut batch = Vec::new();
        for i in 0..500 {
            let (addr, t) = (server.addr.clone(), token.clone());
            let room = format!("room-{}", (chunk * 500 + i) % 100);
            batch.push(tokio::spawn(async move {
                let mut req = format!("ws://{addr}/ws").into_client_request()?;
                req.headers_mut()
                    .insert("authorization", format!("Bearer {t}").parse()?);
                let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
                join(&mut ws, &room).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(ws)
            }));
        }
        for b in batch {
            held.push(b.await??);
        }
    }
    let setup = t0.elapsed();
    let (cpu0, rss1) = server.usage();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let (cpu1, rss2) = server.usage();
    println!(
        "idle ws: {CONNS} joined in {setup:.1?}; server RSS {:.1} MiB → {:.1} MiB: {:.2} KB per connection; \
         idle CPU {:.2}% over 30 s",
        rss0 as f64 / 1024.0,
        rss2 as f64 / 1024.0,
        (rss2.max(rss1) - rss0) as f64 * 1.024 / CONNS as f64,
        (cpu1 - cpu0) as f64 / 30e6 * 100.0
    );
    drop(held);
    server.stop().await;
    Ok(())
}

async fn idle_sse(bin: &str) -> Res<()> {
    const STREAMS: usize = 10_000;
    let server = Server::start(bin).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, rss0) = server.usage();
    let events = Arc::new(AtomicU64::new(0));
    let mut held = Vec::new();
    for _ in 0..STREAMS {
        let addr = server.addr.clone();
        let events = events.clone();
        let mut s = TcpStream::connect(&addr).await?;
        s.write_all(
            b"GET /api/events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n",
        )
        .await?;
        held.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let c = buf[..n].windows(4).filter(|w| w == b"id: ").count();
                events.fetch_add(c as u64, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu0, _) = server.usage();
    let e0 = events.load(Ordering::Relaxed);
    let g0 = self_cpu_us();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let (cpu1, rss1) = server.usage();
    let got = events.load(Ordering::Relaxed) - e0;
    println!(
        "idle sse: {STREAMS} streams; server RSS {:.1} → {:.1} MiB: {:.2} KB per stream; {:.0} events/s; \
         server {:.2} µs per event; generator CPU {:.0}%",
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        (rss1 - rss0) as f64 * 1.024 / STREAMS as f64,
        got as f64 / 30.0,
        (cpu1 - cpu0) as f64 / got.max(1) as f64,
        (self_cpu_us() - g0) as f64 / 30e6 * 100.0
    );
    for h in held {
        h.abort();
    }
    server.stop().await;
    Ok(())
}

async fn churn(bin: &str) -> Res<()> {
    let server = Server::start(bin).await?;
    let token = server.token("churn").await?;
    for kind in ["ws", "sse"] {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let end = Instant::now() + Duration::from_secs(10);
        let mut workers = Vec::new();
        for _ in 0..50 {
            let (addr, t, ok, failed) = (
                server.addr.clone(),
                token.clone(),
                ok.clone(),
                failed.clone(),
            );
            workers.push(tokio::spawn(async move {
                while Instant::now() < end {
                    let result: Res<()> = async {
                        if kind == "ws" {
                            let mut req = format!("ws://{addr}/ws").into_client_request()?;
                            req.headers_mut()
                                .insert("authorization", format!("Bearer {t}").parse()?);
                            let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
                            join(&mut ws, "churn").await?;
                            ws.close(None).await?;
                        } else {
                            let mut s = TcpStream::connect(&addr).await?;
                            s.write_all(b"GET /api/events HTTP/1.1\r\nHost: bench\r\n\r\n")
                                .await?;
                            let mut buf = vec![0u8; 2048];
                            let mut seen = Vec::new();
                            while !seen.windows(9).any(|w| w == b"connected") {
                                let n = s.read(&mut buf).await?;
                                if n == 0 {
                                    return Err("closed".into());
                                }
                                seen.extend_from_slice(&buf[..n]);
                            }
                        }
                        Ok(())
                    }
                    .await;
                    match result {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
        for w in workers {
            w.await?;
        }
        println!(
            "churn {kind}: {:.0} connects/s, {} failures (50 workers, 10 s)",
            ok.load(Ordering::Relaxed) as f64 / 10.0,
            failed.load(Ordering::Relaxed)
        );
    }
    server.stop().await;
    Ok(())
}

fn front() {
    let pkg = std::path::Path::new("target/site/pkg");
    let size = |name: &str| {
        std::fs::metadata(pkg.join(name))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let (wasm, js) = (size("pulse.wasm"), size("pulse.js"));
    let (wasm_br, js_br) = (size("pulse.wasm.br"), size("pulse.js.br"));
    println!(
        "front: wasm {:.1} KB ({:.1} KB brotli), js {:.1} KB ({:.1} KB brotli): {:.1} KB brotli in all",
        wasm as f64 / 1000.0,
        wasm_br as f64 / 1000.0,
        js as f64 / 1000.0,
        js_br as f64 / 1000.0,
        (wasm_br + js_br) as f64 / 1000.0
    );
}

#[tokio::main]
async fn main() -> Res<()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let mut args = std::env::args().skip(1);
    let bin = args
        .next()
        .ok_or("usage: pulse-bench SERVER_BINARY [SCENARIO...]")?;
    let mut scenarios: Vec<String> = args.collect();
    if scenarios.is_empty() {
        scenarios = ["fanout", "idle-ws", "idle-sse", "churn", "front"]
            .map(String::from)
            .to_vec();
    }
    for s in scenarios {
        match s.as_str() {
            "fanout" => fanout(&bin).await?,
            "idle-ws" => idle_ws(&bin).await?,
            "idle-sse" => idle_sse(&bin).await?,
            "churn" => churn(&bin).await?,
            "front" => front(),
            other => return Err(format!("unknown scenario {other}").into()),
        }
    }
    Ok(())
}
