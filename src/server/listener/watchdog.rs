//! The per-connection watchdog: what a connection is doing (reading a head,
//! serving requests, idle between them) and the timeouts that apply to each.
//!
//! hyper's own `header_read_timeout` also runs while a kept-alive connection
//! waits for its next request, so it cannot give idle connections a longer
//! allowance than a half-sent head. The watchdog tells the two apart: a
//! connection with no request in flight must finish a head within the header
//! timeout of its first byte (or of connecting), and may sit idle between
//! requests for the idle timeout. A connection with a request in flight (an
//! SSE stream, a slow download) is never timed out here.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

/// What the watchdog knows of a connection.
#[derive(Default)]
pub(super) struct Activity {
    /// Requests whose response is not finished.
    in_flight: AtomicUsize,
    /// Requests started so far.
    started: AtomicU64,
    /// Bytes arrived since the connection last went quiet (a head has begun).
    reading: AtomicBool,
    /// Woken on every change of the above.
    changed: Notify,
}

/// A request in flight; finishing it (dropping this) lets the connection go quiet.
pub(super) struct Busy(Arc<Activity>);

impl Busy {
    pub(super) fn start(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.started.fetch_add(1, Ordering::Relaxed);
        activity.changed.notify_one();
        Busy(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.reading.store(false, Ordering::Relaxed);
        }
        self.0.changed.notify_one();
    }
}

/// Where a connection stands, for its timeouts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// A request is in flight: no timeout.
    Busy,
    /// Waiting for a head: new, or bytes of the next request have arrived.
    Head,
    /// Kept alive between requests.
    Idle,
}

impl Activity {
    pub(super) fn phase(&self) -> Phase {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            Phase::Busy
        } else if self.reading.load(Ordering::Relaxed) || self.started.load(Ordering::Relaxed) == 0
        {
            Phase::Head
        } else {
            Phase::Idle
        }
    }

    /// Resolves (with the phase's name) when the connection has been waiting
    /// for a head longer than `header`, or idle longer than `idle`.
    pub(super) async fn expire(&self, header: Duration, idle: Duration) -> &'static str {
        let mut phase = Phase::Head;
        let mut started = 0;
        let mut since = Instant::now();
        loop {
            // Registered before reading the state: a change after the read
            // leaves a permit, so it is never missed.
            let changed = self.changed.notified();
            let now = (self.phase(), self.started.load(Ordering::Relaxed));
            if now != (phase, started) {
                (phase, started) = now;
                since = Instant::now();
            }
            let (limit, name) = match phase {
                Phase::Busy => {
                    changed.await;
                    continue;
                }
                Phase::Head => (header, "head"),
                Phase::Idle => (idle, "idle"),
            };
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(since + limit) => return name,
            }
        }
    }
}

/// A connection's socket, watched for the first bytes of each request.
pub(super) struct Watched {
    /// The socket.
    pub(super) io: TcpStream,
    /// Told when bytes arrive on a quiet connection.
    pub(super) activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before && !this.activity.reading.load(Ordering::Relaxed) {
            this.activity.reading.store(true, Ordering::Relaxed);
            this.activity.changed.notify_one();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
