//! Scale-out scenarios over two instances and a `redis-server` the bench
//! starts (both instances on core 0, Redis on core 1 beside the generator):
//! the reconnect storm when an instance dies, the fan-out across instances
//! with the per-room check, and the connect/close soak (one instance).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::cluster::{join_since, joined_field, on_redis, Redis};
use super::{client_frame, find, pct, proc_usage, RawWs, Res, Server};

/// The browser client's backoff (src/backoff.rs): full jitter, up to
/// 500 ms × 2^attempt, capped at 10 s, at least 100 ms.
fn backoff(attempt: u32, random: f64) -> Duration {
    let ms = random * (500.0 * 2f64.powi(attempt.min(10) as i32)).min(10_000.0);
    Duration::from_micros((ms.max(100.0) * 1000.0) as u64)
}

/// A small xorshift generator: the jitter needs no more.
struct Jitter(u64);

impl Jitter {
    fn new(seed: u64) -> Jitter {
        Jitter(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [0, 1).
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Every `"offset":N` in a frame, in order (a `joined` frame: its history's,
/// then its own last).
fn offsets(frame: &[u8]) -> Vec<u64> {
    let mut found = Vec::new();
    let mut rest = frame;
    while let Some(at) = find(rest, br#""offset":"#) {
        rest = &rest[at + 9..];
        let end = rest
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(rest.len());
        if let Some(n) = std::str::from_utf8(&rest[..end])
            .ok()
            .and_then(|s| s.parse().ok())
        {
            found.push(n);
        }
    }
    found
}

/// How one storm client came back.
#[derive(Default)]
struct Back {
    /// When its rejoin was answered (None: never).
    at: Option<Instant>,
    /// Answered `recovered: true`, with the history from right after the
    /// last offset it had seen, no gap.
    whole: bool,
    /// Failed attempts on B (the first attempt, on the dead A, is refused
    /// by design and not counted).
    failed: u32,
}

/// The reconnect storm: 5,000 WebSocket clients in 100 rooms on instance A
/// while a publisher on B keeps the rooms busy; A is SIGKILLed; each client
/// waits as the browser does (full jitter), tries A (refused), then B, and
/// rejoins with `since`.
pub async fn storm(bin: &str) -> Res<()> {
    const CLIENTS: usize = 5000;
    const ROOMS: usize = 100;
    const RATE: u64 = 200; // publications a second, over all rooms
    let redis = Redis::start().await?;
    let a = on_redis(bin, &redis).await?;
    let b = on_redis(bin, &redis).await?;
    let mut tokens = Vec::with_capacity(ROOMS);
    for r in 0..ROOMS {
        tokens.push(a.token(&format!("user{r}")).await?);
    }

    // Everyone in on A, 250 at a time.
    let started = Instant::now();
    let mut clients = Vec::with_capacity(CLIENTS);
    for batch in 0..CLIENTS / 250 {
        let mut joining = Vec::new();
        for i in batch * 250..(batch + 1) * 250 {
            let (addr, token) = (a.addr.clone(), tokens[i % ROOMS].clone());
            joining.push(tokio::spawn(async move {
                let room = format!("storm-{}", i % ROOMS);
                let mut ws = RawWs::connect(&addr, &token).await?;
                let joined = join_since(&mut ws, &room, None).await?;
                let epoch =
                    String::from_utf8_lossy(joined_field(&joined, "epoch").ok_or("no epoch")?)
                        .into_owned();
                let offset = offsets(&joined).last().copied().ok_or("no offset")?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>((ws, room, epoch, offset))
            }));
        }
        for j in joining {
            clients.push(j.await??);
        }
    }
    println!(
        "reconnect storm: {CLIENTS} clients joined to {ROOMS} rooms on A in {:.1?}",
        started.elapsed()
    );

    // The publisher on B: RATE a second, round the rooms, acks drained.
    let ptoken = b.token("publisher").await?;
    let publisher = b.ws(&ptoken).await?;
    let (mut ptx, mut prx) = publisher.split();
    tokio::spawn(async move { while let Some(Ok(_)) = prx.next().await {} });
    let publishing = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
        for n in 0u64.. {
            tick.tick().await;
            let frame = format!(
                r#"{{"type":"message","room":"storm-{}","text":"busy {n}","client_id":"p{n}"}}"#,
                n % ROOMS as u64
            );
            if ptx.send(Message::text(frame)).await.is_err() {
                break;
            }
        }
    });

    // Each client follows its room until A dies, then comes back.
    let (a_addr, b_addr) = (a.addr.clone(), b.addr.clone());
    let mut tasks = Vec::with_capacity(CLIENTS);
    for (i, (mut ws, room, epoch, mut last)) in clients.into_iter().enumerate() {
        let (a_addr, b_addr, token) = (a_addr.clone(), b_addr.clone(), tokens[i % ROOMS].clone());
        tasks.push(tokio::spawn(async move {
            let _ = ws
                .read_texts(|t| {
                    if find(t, br#""type":"message""#).is_some() {
                        if let Some(&n) = offsets(t).first() {
                            last = n;
                        }
                    }
                    false
                })
                .await;
            drop(ws);
            let mut back = Back::default();
            let mut jitter = Jitter::new(i as u64 + 1);
            let since = format!(r#"{{"epoch":{epoch},"offset":{last}}}"#);
            for attempt in 0..8u32 {
                tokio::time::sleep(backoff(attempt, jitter.next())).await;
                let addr = if attempt == 0 { &a_addr } else { &b_addr };
                let rejoined = tokio::time::timeout(Duration::from_secs(10), async {
                    let mut ws = RawWs::connect(addr, &token).await?;
                    let joined = join_since(&mut ws, &room, Some(&since)).await?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>((ws, joined))
                })
                .await;
                match rejoined {
                    Ok(Ok((ws, joined))) => {
                        back.at = Some(Instant::now());
                        let found = offsets(&joined);
                        let history = &found[..found.len().saturating_sub(1)];
                        let contiguous = history
                            .iter()
                            .enumerate()
                            .all(|(k, &n)| n == last + 1 + k as u64);
                        back.whole =
                            joined_field(&joined, "recovered") == Some(b"true") && contiguous;
                        return (back, Some(ws));
                    }
                    _ if attempt == 0 => {}
                    _ => back.failed += 1,
                }
            }
            (back, None)
        }));
    }

    // B's CPU and RSS every 100 ms, and a /healthz probe on it as often.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (pid, sampling) = (b.pid, sampling.clone());
        tokio::spawn(async move {
            let (mut peak_cpu, mut peak_rss) = (0f64, 0u64);
            let mut before = proc_usage(pid);
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while sampling.load(Ordering::Relaxed) {
                tick.tick().await;
                let now = proc_usage(pid);
                peak_cpu = peak_cpu.max((now.0 - before.0) as f64 / 100_000.0 * 100.0);
                peak_rss = peak_rss.max(now.1);
                before = now;
            }
            (peak_cpu, peak_rss)
        })
    };
    let prober = {
        let (addr, sampling) = (b.addr.clone(), sampling.clone());
        tokio::spawn(async move {
            let (mut worst, mut slow, mut probes) = (Duration::ZERO, 0u32, 0u32);
            let ask = "GET /healthz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n";
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while sampling.load(Ordering::Relaxed) {
                tick.tick().await;
                let sent = Instant::now();
                let answered = tokio::time::timeout(
                    Duration::from_secs(5),
                    super::request(&addr, ask, b"HTTP/1.1 200"),
                )
                .await;
                let took = sent.elapsed();
                probes += 1;
                if !matches!(answered, Ok(Ok(_))) || took > Duration::from_millis(200) {
                    slow += 1;
                }
                worst = worst.max(took);
            }
            (worst, slow, probes)
        })
    };

    // Two seconds of traffic, then A dies.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let redis0 = redis.cpu_us();
    let (b_cpu0, _) = b.usage();
    let killed = Instant::now();
    a.stop().await;

    let mut backs = Vec::with_capacity(CLIENTS);
    let mut held = Vec::new();
    for t in tasks {
        let (back, ws) = t.await?;
        backs.push(back);
        held.extend(ws);
    }
    let all_back = killed.elapsed();
    let (b_cpu1, _) = b.usage();
    let redis1 = redis.cpu_us();
    sampling.store(false, Ordering::Relaxed);
    publishing.abort();
    let (peak_cpu, peak_rss) = sampler.await?;
    let (worst, slow, probes) = prober.await?;

    let mut times: Vec<u64> = backs
        .iter()
        .filter_map(|b| b.at.map(|at| (at - killed).as_micros() as u64))
        .collect();
    times.sort_unstable();
    let whole = backs.iter().filter(|b| b.whole).count();
    let failed: u32 = backs.iter().map(|b| b.failed).sum();
    println!(
        "reconnect storm: A SIGKILLed; back on B: 99 % in {:.0} ms, 100 % in {:.0} ms ({} of \
         {CLIENTS} back, all done after {:.1?}); {whole} recovered: true with no gap; {failed} \
         failed attempts on B (besides each client's first, refused, on A); B: peak CPU {:.0} % \
         (100 ms samples), peak RSS {:.1} MiB, {:.0} ms CPU in all; Redis CPU {:.0} ms; /healthz \
         on B every 100 ms: {probes} probes, slowest {:.1?}, {slow} over 200 ms or failed",
        pct(&times, 0.99),
        times.last().map_or(f64::NAN, |t| *t as f64 / 1000.0),
        times.len(),
        all_back,
        peak_cpu,
        peak_rss as f64 / 1024.0,
        (b_cpu1 - b_cpu0) as f64 / 1000.0,
        (redis1 - redis0) as f64 / 1000.0,
        worst,
    );
    drop(held);
    b.stop().await;
    Ok(())
}

/// The fan-out with the subscribers split over two instances on one Redis,
/// then the per-room check.
pub async fn fanout_cross(bin: &str) -> Res<()> {
    let redis = Redis::start().await?;
    let a = on_redis(bin, &redis).await?;
    let b = on_redis(bin, &redis).await?;
    super::fanout(&[&a, &b], false).await?;
    per_room(&a, &b).await?;
    a.stop().await;
    b.stop().await;
    Ok(())
}

/// What traffic in rooms B has no member in costs B: B's CPU over 10 s idle,
/// then over 10 s of 200 publications a second into 10 rooms whose 100
/// members are all on A, then the same with one member of each room on B.
async fn per_room(a: &Server, b: &Server) -> Res<()> {
    const ROOMS: usize = 10;
    const RATE: u64 = 200;
    const WINDOW: Duration = Duration::from_secs(10);
    let token = a.token("member").await?;
    let heard_on_a = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for i in 0..100 {
        let room = format!("busy-{}", i % ROOMS);
        readers.push(counting_member(&a.addr, &token, &room, &heard_on_a).await?);
    }
    let ptoken = a.token("publisher").await?;
    let mut publisher = a.ws(&ptoken).await?;
    for r in 0..ROOMS {
        super::join(&mut publisher, &format!("busy-{r}")).await?;
    }
    let (mut ptx, mut prx) = publisher.split();
    tokio::spawn(async move { while let Some(Ok(_)) = prx.next().await {} });
    let mut sent = 0u64;
    let mut figures = Vec::new();
    let heard_on_b = Arc::new(AtomicU64::new(0));
    for phase in 0..3 {
        if phase == 2 {
            // One member of each busy room on B.
            for r in 0..ROOMS {
                let room = format!("busy-{r}");
                readers.push(counting_member(&b.addr, &token, &room, &heard_on_b).await?);
            }
        }
        let before = b.usage().0;
        let t0 = Instant::now();
        if phase == 0 {
            tokio::time::sleep(WINDOW).await;
        } else {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
            for _ in 0..RATE * WINDOW.as_secs() {
                tick.tick().await;
                let frame = format!(
                    r#"{{"type":"message","room":"busy-{}","text":"t","client_id":"q{sent}"}}"#,
                    sent % ROOMS as u64
                );
                ptx.send(Message::text(frame)).await?;
                sent += 1;
            }
        }
        let wall = t0.elapsed().as_secs_f64();
        figures.push((b.usage().0 - before) as f64 / wall / 1e6 * 100.0);
    }
    // The last deliveries land (bounded): 10 members of each room on A, one on B.
    let (on_a, on_b) = (sent * 10, (sent - RATE * WINDOW.as_secs()));
    let deadline = Instant::now() + Duration::from_secs(5);
    while (heard_on_a.load(Ordering::Relaxed) < on_a || heard_on_b.load(Ordering::Relaxed) < on_b)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "per-room: B's CPU (share of a core): idle {:.2} %; while A's 10 rooms get {RATE} msg/s \
         and B has no member in them {:.2} %; with one member of each on B {:.2} % ({} of \
         {on_b} deliveries on B, {} of {on_a} on A)",
        figures[0],
        figures[1],
        figures[2],
        heard_on_b.load(Ordering::Relaxed),
        heard_on_a.load(Ordering::Relaxed),
    );
    for r in readers {
        r.abort();
    }
    Ok(())
}

/// A member of `room` on `addr` that counts the messages it gets in `heard`.
async fn counting_member(
    addr: &str,
    token: &str,
    room: &str,
    heard: &Arc<AtomicU64>,
) -> Res<tokio::task::JoinHandle<()>> {
    let mut ws = RawWs::connect(addr, token).await?;
    ws.join(room).await?;
    let heard = heard.clone();
    Ok(tokio::spawn(async move {
        let _ = ws
            .read_texts(|t| {
                if find(t, br#""type":"message""#).is_some() {
                    heard.fetch_add(1, Ordering::Relaxed);
                }
                false
            })
            .await;
    }))
}

/// Open file descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// One WebSocket cycle: connect, join, send a message and wait for its ack,
/// close and wait for the server's close.
async fn ws_cycle(addr: &str, token: &str, room: &str, id: &str) -> Res<()> {
    let mut ws = RawWs::connect(addr, token).await?;
    ws.join(room).await?;
    ws.send_text(&format!(
        r#"{{"type":"message","room":"{room}","text":"soak","client_id":"{id}"}}"#
    ))
    .await?;
    let mut acked = false;
    ws.read_texts(|t| {
        acked = find(t, br#""type":"ack""#).is_some();
        acked
    })
    .await?;
    if !acked {
        return Err("closed before the ack".into());
    }
    ws.tcp
        .write_all(&client_frame(8, &1000u16.to_be_bytes()))
        .await?;
    ws.read_texts(|_| false).await?;
    Ok(())
}

/// One SSE cycle: connect to the feed, read up to `connected`, close.
async fn sse_cycle(addr: &str) -> Res<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET /api/events HTTP/1.1\r\nHost: soak\r\nAccept: text/event-stream\r\n\r\n")
        .await?;
    let mut buf = vec![0u8; 2048];
    let mut seen = Vec::new();
    while find(&seen, b"connected").is_none() {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Err("closed before the first event".into());
        }
        seen.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

/// `cycles` cycles of `kind` by 50 workers; (succeeded, failed, first error).
async fn cycles(
    server: &Server,
    tokens: &[String],
    kind: &'static str,
    cycles: u64,
) -> (u64, u64, Option<String>) {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for (w, token) in tokens.iter().enumerate() {
        let (addr, token, next) = (server.addr.clone(), token.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut first) = (0u64, 0u64, None);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= cycles {
                    break;
                }
                let done = if kind == "ws" {
                    let room = format!("soak-{}", n % 100);
                    ws_cycle(&addr, &token, &room, &format!("s{w}-{n}")).await
                } else {
                    sse_cycle(&addr).await
                };
                match done {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        failed += 1;
                        first.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            (ok, failed, first)
        }));
    }
    let (mut ok, mut failed, mut first) = (0, 0, None);
    for w in workers {
        if let Ok((o, f, e)) = w.await {
            ok += o;
            failed += f;
            first = first.or(e);
        }
    }
    (ok, failed, first)
}

/// The soak: 200,000 WebSocket cycles (connect, join, message, ack, close)
/// and 200,000 SSE connects on one instance; its RSS and open descriptors
/// before and after.
pub async fn soak(bin: &str) -> Res<()> {
    const CYCLES: u64 = 200_000;
    // Enough for RSS to reach its working size (measured: it grows over
    // the first ~50,000 WebSocket cycles, then stays flat).
    const WARM_UP: u64 = 50_000;
    // Kept by design, and bounded: each message's idempotency key for the
    // dedup window (10 min by default), and each room's last 1000
    // publications. A short window lets the keys go before RSS is read after
    // the run, and a history the warm-up fills (100 a room) leaves it the
    // same size after it: what RSS gains then is what leaked.
    let server = Server::start_env(
        bin,
        &[("PULSE_DEDUP_WINDOW", "2s"), ("PULSE_HISTORY_SIZE", "50")],
    )
    .await?;
    let mut tokens = Vec::new();
    for w in 0..50 {
        tokens.push(server.token(&format!("soak{w}")).await?);
    }
    let settle = || tokio::time::sleep(Duration::from_secs(3));
    settle().await;
    let (_, cold) = server.usage();
    // A warm-up first: the allocator's pools and the server's tables reach
    // their working size.
    cycles(&server, &tokens, "ws", WARM_UP).await;
    cycles(&server, &tokens, "sse", WARM_UP).await;
    settle().await;
    let (_, warm) = server.usage();
    let fds0 = fds(server.pid);
    // In quarters, RSS read after each: a leak grows with every quarter, a
    // pool that reached its working size does not.
    let mut report = Vec::new();
    let mut series = Vec::new();
    for kind in ["ws", "sse"] {
        let t0 = Instant::now();
        let (mut ok, mut failed, mut first) = (0, 0, None);
        for _ in 0..4 {
            let (o, f, e) = cycles(&server, &tokens, kind, CYCLES / 4).await;
            ok += o;
            failed += f;
            first = first.or(e);
            series.push(format!("{:.1}", server.usage().1 as f64 / 1024.0));
        }
        let wall = t0.elapsed();
        report.push(format!(
            "{kind}: {ok} cycles ok, {failed} failed{} in {wall:.1?} ({:.0}/s)",
            first.map_or(String::new(), |e| format!(" (first: {e})")),
            ok as f64 / wall.as_secs_f64()
        ));
    }
    settle().await;
    let (_, after) = server.usage();
    let fds1 = fds(server.pid);
    println!(
        "soak: {}; RSS {:.1} MiB at start, {:.1} MiB after the warm-up, then after each quarter \
         (ws, then sse) {} MiB, {:.1} MiB after the run ({:+.1} % of warm); open descriptors \
         {fds0} before, {fds1} after",
        report.join("; "),
        cold as f64 / 1024.0,
        warm as f64 / 1024.0,
        series.join(" "),
        after as f64 / 1024.0,
        (after as f64 / warm as f64 - 1.0) * 100.0,
    );
    server.stop().await;
    Ok(())
}
