//! Test support: the real `pulse` binary started on a free port, and a small
//! SSE reader over a real HTTP client.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Generous bound for waiting on a condition; tests never sleep for a fixed time.
pub const WAIT: Duration = Duration::from_secs(15);

/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(20);

/// Asks `check` until it answers `Some` (and returns that), for at most
/// [`WAIT`]; then fails, saying `what` was awaited. Every wait for a condition
/// in the tests goes through here.
pub async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {WAIT:?}: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A running `pulse` process.
pub struct Server {
    /// The process; killed on drop.
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `http://127.0.0.1:PORT/metrics` on the metrics listener, if it runs.
    pub metrics_url: Option<String>,
    /// Log lines written before the server listened, not yet awaited.
    early: Vec<String>,
    /// Log lines the process writes.
    pub logs: mpsc::UnboundedReceiver<String>,
}

impl Server {
    /// Starts the binary on port 0 with `env` and waits until it listens.
    pub async fn start(env: &[(&str, &str)]) -> Server {
        Self::start_with(env, None).await
    }

    /// Like [`Server::start`], with the process's open-file limit (soft and
    /// hard) set to `open_files` if given.
    pub async fn start_with(env: &[(&str, &str)], open_files: Option<u64>) -> Server {
        let bin = env!("CARGO_BIN_EXE_pulse");
        let mut cmd = match open_files {
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", &format!("ulimit -n {n} && exec \"$0\""), bin]);
                sh
            }
            None => Command::new(bin),
        };
        cmd.env("LEPTOS_SITE_ADDR", "127.0.0.1:0")
            .env("PULSE_METRICS_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .env("PULSE_LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .env_remove("PULSE_TEST_ECHO")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn pulse");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, mut logs) = mpsc::unbounded_channel();
        // PULSE_TEST_ECHO=1 shows every server's log as it comes (debugging).
        let echo = std::env::var_os("PULSE_TEST_ECHO").map(|_| child.id().unwrap_or(0));
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(pid) = echo {
                    eprintln!("[pulse {pid}] {line}");
                }
                let _ = tx.send(line);
            }
        });
        // The metrics listener's address is logged before the public one.
        let mut early = Vec::new();
        let (url, metrics_url) = tokio::time::timeout(WAIT, async {
            let mut metrics_url = None;
            while let Some(line) = logs.recv().await {
                early.push(line.clone());
                if let Some(url) = url_after(&line, "metrics on ") {
                    metrics_url = Some(url);
                }
                if let Some(url) = url_after(&line, "listening on ") {
                    return (url, metrics_url);
                }
            }
            panic!("pulse exited before listening");
        })
        .await
        .expect("pulse did not start listening");
        Server {
            child,
            url,
            metrics_url,
            early,
            logs,
        }
    }

    /// Sends a signal to the process (`TERM`, `INT`).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{name} {pid}");
    }

    /// One series of `/metrics`, e.g. `pulse_feed_subscribers`.
    pub async fn metric(&self, series: &str) -> f64 {
        let url = self
            .metrics_url
            .as_deref()
            .expect("the metrics listener runs");
        let text = reqwest::get(url)
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(f64::NAN)
    }

    /// Waits until `series` reads `value`.
    pub async fn wait_metric(&self, series: &str, value: f64) {
        let what = format!("{series} to read {value}");
        eventually(&what, async || {
            (self.metric(series).await == value).then_some(())
        })
        .await
    }
}

/// The URL that follows `label` in a log line, plain text or JSON.
fn url_after(line: &str, label: &str) -> Option<String> {
    let rest = line.split(label).nth(1)?;
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"')
        .unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

/// One SSE frame, as a client sees it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Frame {
    pub id: Option<u64>,
    pub data: Option<serde_json::Value>,
    pub retry: Option<u64>,
    pub comment: Option<String>,
    /// The `event:` type; `None` for a plain message.
    pub event: Option<String>,
}

impl Frame {
    /// The `type` of the event's JSON.
    pub fn kind(&self) -> Option<&str> {
        self.data.as_ref()?.get("type")?.as_str()
    }
}

/// A reader of one `text/event-stream` response.
pub struct Sse {
    pub response_headers: reqwest::header::HeaderMap,
    stream: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
}

impl Sse {
    /// Opens `GET {url}/api/events`, with a `Last-Event-ID` header if given.
    pub async fn open(url: &str, last_event_id: Option<&str>) -> Sse {
        Self::open_path(url, "/api/events", last_event_id).await
    }

    pub async fn open_path(url: &str, path: &str, last_event_id: Option<&str>) -> Sse {
        let headers: Vec<(&str, &str)> = last_event_id
            .map(|id| vec![("Last-Event-ID", id)])
            .unwrap_or_default();
        Self::open_with(url, path, &headers).await
    }

    /// Opens `GET {url}{path}` with `headers`; the answer must be 200.
    pub async fn open_with(url: &str, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut req = reqwest::Client::new().get(format!("{url}{path}"));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let res = req.send().await.expect("GET an SSE stream");
        assert_eq!(res.status(), 200, "status of {path}");
        Sse {
            response_headers: res.headers().clone(),
            stream: res.bytes_stream().boxed(),
            buf: String::new(),
        }
    }

    /// The next frame, or `None` when the stream ends.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let raw: String = self.buf.drain(..end + 2).collect();
                let mut frame = Frame::default();
                for line in raw.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        frame.id = Some(v.parse().expect("numeric id"));
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        frame.data = Some(serde_json::from_str(v).expect("JSON data"));
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        frame.event = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("retry: ") {
                        frame.retry = Some(v.parse().expect("numeric retry"));
                    } else if let Some(v) = line.strip_prefix(':') {
                        frame.comment = Some(v.trim().to_string());
                    }
                }
                return Some(frame);
            }
            match tokio::time::timeout(WAIT, self.stream.next()).await {
                Ok(Some(Ok(chunk))) => self
                    .buf
                    .push_str(std::str::from_utf8(&chunk).expect("utf-8")),
                Ok(Some(Err(_))) | Ok(None) => return None,
                Err(_) => panic!("no SSE frame within {WAIT:?}"),
            }
        }
    }

    /// The next frame that carries a message (skips `retry:`, comments and
    /// heartbeats).
    pub async fn next_event(&mut self) -> Frame {
        loop {
            let frame = self.next().await.expect("stream ended");
            if frame.data.is_some() && frame.event.is_none() {
                return frame;
            }
        }
    }

    /// The next `update` event.
    pub async fn next_update(&mut self) -> Frame {
        loop {
            let frame = self.next_event().await;
            if frame.kind() == Some("update") {
                return frame;
            }
        }
    }
}

pub mod ws;

pub mod redis;

pub mod nginx;

impl Server {
    /// Waits until `/readyz` answers `status`.
    pub async fn wait_ready(&self, status: u16) {
        let url = format!("{}/readyz", self.url);
        eventually(&format!("/readyz to answer {status}"), async || {
            let now = reqwest::get(&url).await.ok()?.status().as_u16();
            (now == status).then_some(())
        })
        .await
    }

    /// Waits for the process to exit (after a signal) and asserts it exited
    /// cleanly.
    pub async fn exited_cleanly(&mut self) {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("pulse exited")
            .expect("exit status");
        assert!(status.success(), "clean exit: {status}");
    }

    /// Waits until the server logs a line containing `needle`; returns it.
    pub async fn wait_log(&mut self, needle: &str) -> String {
        if let Some(at) = self.early.iter().position(|line| line.contains(needle)) {
            return self.early.remove(at);
        }
        tokio::time::timeout(WAIT, async {
            while let Some(line) = self.logs.recv().await {
                if line.contains(needle) {
                    return line;
                }
            }
            panic!("pulse exited before logging {needle:?}");
        })
        .await
        .unwrap_or_else(|_| panic!("no log line with {needle:?}"))
    }

    /// The log lines written so far (and not yet taken) containing `needle`.
    pub fn take_logs_matching(&mut self, needle: &str) -> Vec<String> {
        let mut found = Vec::new();
        while let Ok(line) = self.logs.try_recv() {
            if line.contains(needle) {
                found.push(line);
            }
        }
        found
    }
}
