//! pulse-bench: starts the release server (pinned by `make bench` to core 0,
//! while this load generator runs on core 1), drives it over loopback with
//! real WebSocket and SSE clients, and prints a table. The server's own cost
//! is read from `/proc/<pid>` (CPU time, RSS); this process's CPU is printed
//! too, so a reader can tell which side was the limit.
//!
//! Usage: pulse-bench SERVER_BINARY [SCENARIO...]
//! Scenarios: fanout, fanout-http, floor, idle-ws, idle-sse, churn, front,
//! and over a `redis-server` the bench starts (`cluster.rs`): recovery,
//! publish-cost; over two instances on one Redis (`scale.rs`): fanout-cross,
//! storm; and soak (default: all).

mod cluster;
mod scale;

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

/// A command for `program` pinned to core 0, the server's (unless
/// `PULSE_BENCH_NO_PIN` is set, e.g. under heaptrack).
fn on_server_core(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if std::env::var_os("PULSE_BENCH_NO_PIN").is_some() {
        Command::new(program)
    } else {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(program);
        c
    }
}

impl Server {
    async fn start(bin: &str) -> Res<Server> {
        Self::start_env(bin, &[]).await
    }

    /// Starts the server with `env` besides the load test's settings.
    async fn start_env(bin: &str, env: &[(&str, &str)]) -> Res<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = on_server_core(bin);
        cmd.env("LEPTOS_SITE_ADDR", &addr)
            .env("PULSE_JWT_SECRET", SECRET)
            .env("PULSE_RATE_LIMIT_PER_MIN", "100000000")
            .env("PULSE_RATE_LIMIT_PER_IP_PER_MIN", "100000000")
            .env("PULSE_NOTIFY_PER_IP_PER_MIN", "100000000")
            .env("PULSE_ROOMS_PER_IP", "1000000")
            // Every client of a load test comes from one address, and the
            // scenarios share a token per role (one user creates all the
            // idle scenario's rooms): lift the per-address and per-user caps
            // (the server-wide one stays).
            .env("PULSE_MAX_CONNECTIONS_PER_IP", "1000000")
            .env("PULSE_MAX_SOCKETS_PER_USER", "1000000")
            .env("PULSE_ROOMS_PER_USER", "1000000")
            .env("PULSE_METRICS_ADDR", "off")
            .env("RUST_LOG", "warn,pulse=info")
            .envs(env.iter().copied())
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

    async fn token(&self, name: &str) -> Res<String> {
        let out = Command::new(&self.bin)
            .args(["token", "--name", name, "--ttl", "2h"])
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

/// A bare WebSocket client for the fan-out subscribers: handshake and frame
/// parsing by hand into one reused buffer, with no allocation or UTF-8 check
/// per frame. With 1000 tungstenite clients the generator's own core was the
/// limit (97 % CPU at 100 msg/s), which showed up as server latency.
/// Sends `req` on a new connection to `addr` and reads the answer's head,
/// which must start with `status`; returns the connection and the bytes read
/// after the head.
async fn request(addr: &str, req: &str, status: &[u8]) -> Res<(TcpStream, Vec<u8>)> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(8192);
    loop {
        if tcp.read_buf(&mut buf).await? == 0 {
            return Err("closed before the answer's head".into());
        }
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            if !buf.starts_with(status) {
                return Err(String::from_utf8_lossy(&buf[..end]).into_owned().into());
            }
            buf.drain(..end + 4);
            return Ok((tcp, buf));
        }
    }
}

struct RawWs {
    tcp: TcpStream,
    /// Bytes read and not yet parsed.
    buf: Vec<u8>,
}

/// A client frame: FIN, `opcode`, masked with the all-zero key (the mask is
/// required of clients; a zero key leaves the payload as it is).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend((n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend((n as u64).to_be_bytes());
        }
    }
    f.extend([0u8; 4]);
    f.extend(payload);
    f
}

/// The opcode and payload range of the first complete (unmasked, server)
/// frame in `buf`, and the frame's whole length.
fn parse_frame(buf: &[u8]) -> Option<(u8, std::ops::Range<usize>)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let (len, head) = match b1 & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    (buf.len() >= head + len).then_some((b0 & 0x0f, head..head + len))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl RawWs {
    async fn connect(addr: &str, token: &str) -> Res<RawWs> {
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        );
        let (tcp, buf) = request(addr, &req, b"HTTP/1.1 101").await?;
        Ok(RawWs { tcp, buf })
    }

    async fn send_text(&mut self, text: &str) -> Res<()> {
        self.tcp
            .write_all(&client_frame(1, text.as_bytes()))
            .await?;
        Ok(())
    }

    /// Reads frames, answering pings, and hands each text payload to
    /// `on_text` until it returns true or the connection ends.
    async fn read_texts(&mut self, mut on_text: impl FnMut(&[u8]) -> bool) -> Res<()> {
        loop {
            let mut used = 0;
            let mut done = false;
            while let Some((opcode, payload)) = parse_frame(&self.buf[used..]) {
                let frame_len = payload.end;
                let payload = used + payload.start..used + payload.end;
                match opcode {
                    1 => done = on_text(&self.buf[payload]),
                    8 => return Ok(()),
                    9 => {
                        let pong = client_frame(10, &self.buf[payload]);
                        self.tcp.write_all(&pong).await?;
                    }
                    _ => {}
                }
                used += frame_len;
                if done {
                    break;
                }
            }
            self.buf.drain(..used);
            if done {
                return Ok(());
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(8192);
            }
            if self.tcp.read_buf(&mut self.buf).await? == 0 {
                return Ok(());
            }
        }
    }

    async fn join(&mut self, room: &str) -> Res<()> {
        self.send_text(&format!(r#"{{"type":"join","room":"{room}"}}"#))
            .await?;
        let mut joined = false;
        self.read_texts(|t| {
            joined = find(t, br#""type":"joined""#).is_some();
            joined
        })
        .await?;
        if joined {
            Ok(())
        } else {
            Err("closed before joined".into())
        }
    }
}

/// A fan-out subscriber on either transport.
enum Sub {
    /// A WebSocket.
    Ws(RawWs),
    /// The HTTP fallback's stream.
    Http(RawSse),
}

impl Sub {
    async fn read_texts(&mut self, on_text: impl FnMut(&[u8]) -> bool) -> Res<()> {
        match self {
            Sub::Ws(ws) => ws.read_texts(on_text).await,
            Sub::Http(sse) => sse.read_texts(on_text).await,
        }
    }
}

/// A minimal client of `GET /api/chat/stream` (the HTTP fallback's
/// downstream) on a raw socket: each `data:` line is one frame.
struct RawSse {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// The connection's name, from `hello`.
    conn: String,
}

impl RawSse {
    async fn connect(addr: &str, token: &str) -> Res<RawSse> {
        let req = format!(
            "GET /api/chat/stream HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        );
        let (tcp, buf) = request(addr, &req, b"HTTP/1.1 200").await?;
        let mut sse = RawSse {
            tcp,
            buf,
            conn: String::new(),
        };
        let mut conn = None;
        sse.read_texts(|t| {
            let Some(at) = find(t, br#""conn":""#) else {
                return false;
            };
            let rest = &t[at + 8..];
            let end = rest.iter().position(|&b| b == b'"').unwrap_or(rest.len());
            conn = Some(String::from_utf8_lossy(&rest[..end]).into_owned());
            true
        })
        .await?;
        sse.conn = conn.ok_or("no hello")?;
        Ok(sse)
    }

    /// Hands each `data:` payload to `on_text` until it returns true or the
    /// stream ends (chunk-size lines of the chunked body never hold `data: `).
    async fn read_texts(&mut self, mut on_text: impl FnMut(&[u8]) -> bool) -> Res<()> {
        loop {
            let mut used = 0;
            while let Some(at) = find(&self.buf[used..], b"data: ") {
                let start = used + at + 6;
                let Some(len) = self.buf[start..].iter().position(|&b| b == b'\n') else {
                    break;
                };
                let done = on_text(&self.buf[start..start + len]);
                used = start + len + 1;
                if done {
                    self.buf.drain(..used);
                    return Ok(());
                }
            }
            self.buf.drain(..used);
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(8192);
            }
            if self.tcp.read_buf(&mut self.buf).await? == 0 {
                return Ok(());
            }
        }
    }

    /// Joins `room` with a post (on a connection of its own), and waits for
    /// `joined` on the stream.
    async fn join(&mut self, addr: &str, token: &str, room: &str) -> Res<()> {
        let body = format!(
            r#"{{"conn":"{}","frames":[{{"type":"join","room":"{room}"}}]}}"#,
            self.conn
        );
        let mut tcp = TcpStream::connect(addr).await?;
        let req = format!(
            "POST /api/chat/send HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(req.as_bytes()).await?;
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await?;
        if !answer.starts_with(b"HTTP/1.1 202") {
            return Err(String::from_utf8_lossy(&answer).into_owned().into());
        }
        let mut joined = false;
        self.read_texts(|t| {
            joined = find(t, br#""type":"joined""#).is_some();
            joined
        })
        .await?;
        if joined {
            Ok(())
        } else {
            Err("stream ended before joined".into())
        }
    }
}

/// The `text` of a message frame: "seq ts-µs padding".
fn parse_text(frame: &[u8]) -> Option<(u64, u64)> {
    let start = find(frame, br#""text":""#)? + 8;
    let mut parts = frame[start..].split(|&b| b == b' ');
    let number = |s: &[u8]| std::str::from_utf8(s).ok()?.parse().ok();
    Some((number(parts.next()?)?, number(parts.next()?)?))
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// The fan-out over WebSockets, or (`over_http`) to subscribers on the HTTP
/// fallback (SSE down, POST up); the publisher is a WebSocket either way.
async fn fanout_on(bin: &str, over_http: bool) -> Res<()> {
    let server = Server::start(bin).await?;
    fanout(&[&server], over_http).await?;
    server.stop().await;
    Ok(())
}

/// The fan-out to [`SUBSCRIBERS`] in one room, dealt out evenly over
/// `servers` (which share a broker when there are several), the publisher on
/// the first, at each of [`FLOOR_RATES`]; each server's CPU per delivery it
/// made.
async fn fanout(servers: &[&Server], over_http: bool) -> Res<()> {
    let token = servers[0].token("subscriber").await?;
    let started = Instant::now();
    let mut subs = Vec::with_capacity(SUBSCRIBERS);
    let mut connecting = Vec::new();
    for i in 0..SUBSCRIBERS {
        let on = i % servers.len();
        let (s, t) = (servers[on].addr.clone(), token.clone());
        connecting.push(tokio::spawn(async move {
            let sub = if over_http {
                let mut sse = RawSse::connect(&s, &t).await?;
                sse.join(&s, &t, "bench").await?;
                Sub::Http(sse)
            } else {
                let mut ws = RawWs::connect(&s, &t).await?;
                ws.join("bench").await?;
                Sub::Ws(ws)
            };
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((on, sub))
        }));
    }
    for c in connecting {
        subs.push(c.await??);
    }
    let connect_join = started.elapsed();
    let over = if over_http {
        "the HTTP fallback"
    } else {
        "WebSockets"
    };
    println!(
        "fan-out over {over}: connect + join of {SUBSCRIBERS} subscribers on {} instance(s): \
         {connect_join:.2?}",
        servers.len()
    );

    // Each subscriber records (seq, latency µs) of what it receives, in its
    // own (uncontended) list; deliveries are counted per server.
    let delivered: Arc<Vec<AtomicU64>> =
        Arc::new(servers.iter().map(|_| AtomicU64::new(0)).collect());
    let total = |d: &[AtomicU64]| d.iter().map(|n| n.load(Ordering::Relaxed)).sum::<u64>();
    let mut records = Vec::new();
    let mut readers = Vec::new();
    for (on, mut sub) in subs {
        let mine = Arc::new(Mutex::new(Vec::<(u64, u64)>::with_capacity(4096)));
        records.push(mine.clone());
        let delivered = delivered.clone();
        readers.push(tokio::spawn(async move {
            let _ = sub
                .read_texts(|t| {
                    if let Some((seq, ts)) = parse_text(t) {
                        let latency = now_us().saturating_sub(ts);
                        if let Ok(mut m) = mine.lock() {
                            m.push((seq, latency));
                        }
                        delivered[on].fetch_add(1, Ordering::Relaxed);
                    }
                    false
                })
                .await;
        }));
    }

    let ptoken = servers[0].token("publisher").await?;
    let mut publisher = servers[0].ws(&ptoken).await?;
    join(&mut publisher, "bench").await?;
    let (ptx, mut prx) = publisher.split();
    tokio::spawn(async move { while let Some(Ok(_)) = prx.next().await {} });
    let ptx = Arc::new(tokio::sync::Mutex::new(ptx));

    let per_server: Vec<String> = if servers.len() == 1 {
        vec![format!("{:>10}", "srv µs/dl")]
    } else {
        (0..servers.len())
            .map(|i| format!("{:>10}", format!("{} µs/dl", (b'A' + i as u8) as char)))
            .collect()
    };
    println!(
        "{:>6} {:>10} {:>8} {:>6} {:>8} {:>8} {:>8} {} {:>10}",
        "msg/s",
        "deliv/s",
        "loss",
        "dups",
        "p50 ms",
        "p99 ms",
        "max ms",
        per_server.join(" "),
        "gen cpu %"
    );
    let mut seq = 0u64;
    for rate in FLOOR_RATES {
        let first_seq = seq;
        let before_srv: Vec<u64> = servers.iter().map(|s| s.usage().0).collect();
        let before_dl: Vec<u64> = delivered
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect();
        let before_gen = self_cpu_us();
        let before_all = total(&delivered);
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
            let frame = format!(
                r#"{{"type":"message","room":"bench","text":"{text}","client_id":"b{seq}"}}"#
            );
            ptx.lock().await.send(Message::text(frame)).await?;
            seq += 1;
        }
        // Let the last deliveries land (bounded).
        let expected = sends * SUBSCRIBERS as u64;
        let deadline = Instant::now() + Duration::from_secs(5);
        while total(&delivered) - before_all < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let wall = t0.elapsed().as_secs_f64();
        let got = total(&delivered) - before_all;
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
        let costs: Vec<String> = servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let cpu = s.usage().0 - before_srv[i];
                let made = delivered[i].load(Ordering::Relaxed) - before_dl[i];
                format!("{:>10.2}", cpu as f64 / made.max(1) as f64)
            })
            .collect();
        println!(
            "{:>6} {:>10.0} {:>8} {:>6} {:>8.2} {:>8.2} {:>8.2} {} {:>10.0}",
            rate,
            got as f64 / wall,
            expected.saturating_sub(unique),
            dups,
            pct(&latencies, 0.5),
            pct(&latencies, 0.99),
            latencies.last().map_or(f64::NAN, |m| *m as f64 / 1000.0),
            costs.join(" "),
            gen_us as f64 / (wall * 1e6) * 100.0
        );
    }
    for r in readers {
        r.abort();
    }
    Ok(())
}

/// Size of the frame each fan-out subscriber receives: a `message` event
/// carrying the 64-byte text, its id, user, room and time.
const FLOOR_FRAME_BYTES: usize = 200;
/// The fan-out rates (messages a second into the room), shared with `floor`.
const FLOOR_RATES: [u64; 4] = [20, 50, 100, 200];
/// Fan-out subscribers, and the sockets the floor writes to.
const SUBSCRIBERS: usize = 1000;

/// The floor under the fan-out figures: what one `send()` per delivery costs
/// this machine's kernel, with no WebSocket and no pulse in the way. A child
/// (on the server's core) writes `FLOOR_FRAME_BYTES` to each of 1000 loopback
/// sockets at the fan-out rates; this process (on the load generator's core)
/// reads them the way the subscribers do. Loopback delivery runs the
/// receiver's TCP stack and its wake-up on the sender's core, so this is the
/// least CPU per delivery any server can show in the fan-out table here.
async fn floor() -> Res<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let exe = std::env::current_exe()?;
    let child = on_server_core(exe)
        .args(["--floor-sender", &addr])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut readers = Vec::with_capacity(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS {
        let (mut tcp, _) = listener.accept().await?;
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = tcp.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        }));
    }
    let out = child.wait_with_output().await?;
    for r in readers {
        r.abort();
    }
    let report = String::from_utf8(out.stdout)?;
    println!(
        "loopback floor (one plain send() of {FLOOR_FRAME_BYTES} B per delivery to {SUBSCRIBERS} sockets, \
         no WebSocket, no pulse):"
    );
    println!("{:>6} {:>10} {:>14}", "msg/s", "deliv/s", "sender µs/dl");
    for line in report.lines() {
        let mut f = line.split_whitespace();
        if let (Some(rate), Some(us)) = (f.next(), f.next()) {
            println!(
                "{rate:>6} {:>10} {us:>14}",
                rate.parse::<u64>().unwrap_or(0) * 1000
            );
        }
    }
    Ok(())
}

/// The sending half of `floor`, run as a child process pinned to core 0:
/// prints "rate µs-per-send" for each rate.
fn floor_sender(addr: &str) -> Res<()> {
    use std::io::Write;
    let mut sockets = (0..SUBSCRIBERS)
        .map(|_| {
            let s = std::net::TcpStream::connect(addr)?;
            s.set_nodelay(true)?;
            Ok(s)
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let frame = [b'x'; FLOOR_FRAME_BYTES];
    for rate in FLOOR_RATES {
        let before = self_cpu_us();
        let t0 = Instant::now();
        let ticks = rate * 5;
        for k in 0..ticks {
            let due = t0 + Duration::from_micros(k * 1_000_000 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            for s in &mut sockets {
                s.write_all(&frame)?;
            }
        }
        let sends = ticks * sockets.len() as u64;
        let us = (self_cpu_us() - before) as f64 / sends as f64;
        println!("{rate} {us:.2}");
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

async fn front(bin: &str) -> Res<()> {
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

    // Timings in headless Chromium, through the Playwright that `make test`
    // installs in end2end/.
    if !std::path::Path::new("end2end/node_modules/@playwright/test").exists() {
        println!("front: timings skipped (run `make test` once to install Playwright)");
        return Ok(());
    }
    let server = Server::start(bin).await?;
    let out = Command::new("node")
        .args([
            "end2end/bench-front.mjs",
            &format!("http://{}/", server.addr),
            "9",
        ])
        .stderr(Stdio::inherit())
        .output()
        .await?;
    server.stop().await;
    let json = String::from_utf8(out.stdout)?;
    let field = |key: &str| -> f64 {
        json.split_once(&format!("\"{key}\":"))
            .and_then(|(_, rest)| rest.split([',', '}']).next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    println!(
        "front (Chromium, median of {}): {} rows in the HTML; first paint with rows {:.0} ms; \
         hydrated {:.0} ms; stream Live {:.0} ms after hydration; first pushed update {:.0} ms \
         after hydration; publish → on screen {:.0} ms",
        field("runs"),
        field("rowsInHtml"),
        field("firstRows"),
        field("hydrated"),
        field("live"),
        field("firstUpdate"),
        field("latency"),
    );
    let first = field("transferFirst");
    let pages = [
        field("transferChat"),
        field("transferRooms"),
        field("transferDashboard"),
    ];
    println!(
        "front downloads (WASM + JS + CSS, brotli): / {first:.1} KB; the first visit of Chat \
         adds {:.1} KB, then Rooms {:.1} KB, then Dashboard {:.1} KB; {:.1} KB in all",
        pages[0],
        pages[1],
        pages[2],
        first + pages.iter().sum::<f64>(),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Res<()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let mut args = std::env::args().skip(1);
    if std::env::args().nth(1).as_deref() == Some("--floor-sender") {
        let addr = std::env::args().nth(2).ok_or("--floor-sender ADDR")?;
        return floor_sender(&addr);
    }
    let bin = args
        .next()
        .ok_or("usage: pulse-bench SERVER_BINARY [SCENARIO...]")?;
    let mut scenarios: Vec<String> = args.collect();
    if scenarios.is_empty() {
        scenarios = [
            "fanout",
            "fanout-http",
            "floor",
            "idle-ws",
            "idle-sse",
            "churn",
            "front",
            "recovery",
            "publish-cost",
            "fanout-cross",
            "storm",
            "soak",
        ]
        .map(String::from)
        .to_vec();
    }
    for s in scenarios {
        match s.as_str() {
            "fanout" => fanout_on(&bin, false).await?,
            "fanout-http" => fanout_on(&bin, true).await?,
            "floor" => floor().await?,
            "idle-ws" => idle_ws(&bin).await?,
            "idle-sse" => idle_sse(&bin).await?,
            "churn" => churn(&bin).await?,
            "front" => front(&bin).await?,
            "recovery" => cluster::recovery(&bin).await?,
            "publish-cost" => cluster::publish_cost(&bin).await?,
            "fanout-cross" => scale::fanout_cross(&bin).await?,
            "storm" => scale::storm(&bin).await?,
            "soak" => scale::soak(&bin).await?,
            other => return Err(format!("unknown scenario {other}").into()),
        }
    }
    Ok(())
}
