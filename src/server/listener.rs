//! The accept loop: feed streams are served straight on their socket, every
//! other connection goes to axum.
//!
//! An open SSE stream is one HTTP/1 response that never ends. Served by
//! hyper, it keeps hyper's connection buffers (a read buffer of 8-16 KiB and
//! a write buffer of 8 KiB) for its whole life: most of what an idle stream
//! costs (see docs/performance.md). So each accepted connection waits for its
//! first bytes, and a peek at them decides where it goes:
//!
//! - a complete, plain `GET /api/events` head (HTTP/1.1 or 1.0, no body, no
//!   upgrade, nothing after it, a valid resume id) is read off the socket and
//!   the stream served by [`feed::serve_socket`];
//! - anything else, including every request this module is unsure of, goes
//!   to axum untouched, which answers it as it always did. The
//!   `/api/events` route stays, so a feed request split over two packets,
//!   or with a bad `Last-Event-ID`, still gets the same answer.
//!
//! A browser usually sends its feed request on a kept-alive connection that
//! already carried others (from loading the page), so connections handed to
//! axum are wrapped in a [`Connection`] that keeps watching: when hyper reads
//! the next request and it is a plain feed request, the wrapper keeps those
//! bytes from hyper and reports the end of the connection instead. hyper,
//! idle between requests, then finishes as if the client had closed, and
//! when it drops the connection the stream is served on the socket. The
//! wrapper cannot catch a connection's first request: axum's connection
//! builder reads the first 24 bytes on its own (to tell HTTP/2 from
//! HTTP/1), so a first feed request reaches the wrapper in pieces. Hence the
//! peek for first requests, and the wrapper for the later ones.
//!
//! ```text
//! TcpListener ─ accept_loop ─┬─ route (one task per connection, until its first bytes)
//!                            │    ├─ feed request  → feed::serve_socket
//!                            │    └─ anything else → channel → AxumConnections → axum::serve
//!                            │                          └─ Connection: a later feed request
//!                            │                             → feed::serve_socket
//! ```

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::extract::Query;
use axum::http::Uri;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::protocol::FEED_PATH;
use crate::server::feed::{self, EventsQuery, FeedState, Framing};

/// Largest request head looked at here. A feed request with a bigger head
/// (many cookies) goes to axum, which handles any size it accepts.
const MAX_HEAD: usize = 4096;

/// Most headers a feed request may have to be served here (hyper's default
/// limit is 100; a browser sends about 15).
const MAX_HEADERS: usize = 64;

/// Connections routed but not yet taken by axum. axum accepts in a loop and
/// spawns at once, so this only absorbs a burst of connects.
const HANDOFF_QUEUE: usize = 256;

/// The connections that are not feed streams, as an [`axum::serve::Listener`].
pub struct AxumConnections {
    /// Filled by the routing tasks.
    rx: mpsc::Receiver<(TcpStream, SocketAddr)>,
    /// The listening socket's address.
    local: SocketAddr,
    /// For feed requests that come later on these connections.
    feed: FeedState,
    /// Where those streams run.
    tasks: TaskTracker,
}

impl axum::serve::Listener for AxumConnections {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        match self.rx.recv().await {
            Some((tcp, addr)) => {
                let conn = Connection {
                    tcp: Some(tcp),
                    feed_request: None,
                    feed: self.feed.clone(),
                    tasks: self.tasks.clone(),
                };
                (conn, addr)
            }
            // Only after shutdown, when the accept loop and every routing task
            // have ended; axum stops accepting on the same signal.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Starts accepting on `listener`; returns what axum should serve. The
/// accept loop, the routing tasks and the feed streams served here run on
/// `tasks` and end at `feed.shutdown`.
pub fn split(
    listener: TcpListener,
    feed: FeedState,
    tasks: &TaskTracker,
) -> io::Result<AxumConnections> {
    let local = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(HANDOFF_QUEUE);
    tasks.spawn(accept_loop(listener, tx, feed.clone(), tasks.clone()));
    Ok(AxumConnections {
        rx,
        local,
        feed,
        tasks: tasks.clone(),
    })
}

async fn accept_loop(
    mut listener: TcpListener,
    to_axum: mpsc::Sender<(TcpStream, SocketAddr)>,
    feed: FeedState,
    tasks: TaskTracker,
) {
    loop {
        // axum's `accept` for a `TcpListener` logs and retries on errors (and
        // backs off when out of file descriptors), so it never fails.
        let (tcp, addr) = tokio::select! {
            _ = feed.shutdown.cancelled() => return,
            conn = axum::serve::Listener::accept(&mut listener) => conn,
        };
        // Real-time frames are small and must leave at once: with Nagle's
        // algorithm a frame written while the previous one is unacknowledged
        // waits for the peer's (possibly delayed, up to 40 ms) ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("could not set TCP_NODELAY: {e}");
        }
        tasks.spawn(route(tcp, addr, to_axum.clone(), feed.clone()));
    }
}

/// A connection served by axum, watched for a feed request to take over.
pub struct Connection {
    /// The socket; `None` only once it has been taken for a feed stream.
    tcp: Option<TcpStream>,
    /// Set when hyper read a feed request: from then on hyper reads the end
    /// of the connection, and the stream starts when hyper drops it.
    feed_request: Option<(Option<u64>, Framing)>,
    /// For that stream.
    feed: FeedState,
    /// Where that stream runs.
    tasks: TaskTracker,
}

impl Connection {
    fn tcp(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        self.tcp
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.feed_request.is_some() {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(this.tcp()?.poll_read(cx, buf))?;
        // A browser sends its next request only once the previous response
        // is complete, so a read that starts a request holds all of its head.
        let read = &buf.filled()[before..];
        if read.starts_with(b"GET /api/events") {
            if let Route::Feed {
                last_seen, framing, ..
            } = classify(read)
            {
                this.feed_request = Some((last_seen, framing));
                // hyper never sees these bytes: to it, the client is gone.
                buf.set_filled(before);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().tcp()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().tcp()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().tcp()?.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // hyper closes what it thinks is a finished connection; the socket
        // stays open for the feed stream.
        if this.feed_request.is_some() {
            return Poll::Ready(Ok(()));
        }
        this.tcp()?.poll_shutdown(cx)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let (Some((last_seen, framing)), Some(tcp)) = (self.feed_request.take(), self.tcp.take())
        else {
            return;
        };
        // hyper drops the connection in its own task, on the runtime.
        if self.feed.shutdown.is_cancelled() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let stream = feed::serve_socket(tcp, last_seen, framing, self.feed.clone());
            self.tasks.spawn_on(stream, &runtime);
        }
    }
}

/// Where one connection goes.
#[derive(Debug, PartialEq)]
enum Route {
    /// A feed stream, served here; the request head is `head_len` bytes.
    Feed {
        head_len: usize,
        last_seen: Option<u64>,
        framing: Framing,
    },
    /// Everything else.
    Axum,
}

async fn route(
    mut tcp: TcpStream,
    addr: SocketAddr,
    to_axum: mpsc::Sender<(TcpStream, SocketAddr)>,
    feed: FeedState,
) {
    let route = tokio::select! {
        _ = feed.shutdown.cancelled() => return,
        route = peek_route(&tcp) => route,
    };
    match route {
        Ok(Route::Feed {
            head_len,
            last_seen,
            framing,
        }) => {
            // The head is already in the socket's buffer: this read does not
            // wait.
            let mut head = vec![0; head_len];
            if tcp.read_exact(&mut head).await.is_ok() {
                drop(head);
                feed::serve_socket(tcp, last_seen, framing, feed).await;
            }
        }
        Ok(Route::Axum) => {
            tokio::select! {
                _ = feed.shutdown.cancelled() => {}
                _ = to_axum.send((tcp, addr)) => {}
            }
        }
        // The client went away before saying anything.
        Err(_) => {}
    }
}

/// Waits for the connection's first bytes and decides where it goes,
/// without taking anything off the socket.
async fn peek_route(tcp: &TcpStream) -> io::Result<Route> {
    // Wait before allocating: a browser may open a connection and send
    // nothing on it for a while.
    tcp.readable().await?;
    let mut buf = vec![0; MAX_HEAD];
    let n = tcp.peek(&mut buf).await?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(classify(&buf[..n]))
}

/// The route for a connection whose first bytes are `bytes`.
fn classify(bytes: &[u8]) -> Route {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = req.parse(bytes) else {
        return Route::Axum;
    };
    // Bytes after the head would be a body or a pipelined request: neither
    // fits a response that never ends.
    if head_len != bytes.len() || req.method != Some("GET") {
        return Route::Axum;
    }
    let framing = match req.version {
        Some(1) => Framing::Chunked,
        Some(0) => Framing::UntilClose,
        _ => return Route::Axum,
    };
    let Some(Ok(uri)) = req.path.map(str::parse::<Uri>) else {
        return Route::Axum;
    };
    if uri.path() != FEED_PATH {
        return Route::Axum;
    }
    let mut last_event_id = None;
    for h in req.headers.iter() {
        let refused = ["content-length", "transfer-encoding", "upgrade", "expect"];
        if refused.iter().any(|r| h.name.eq_ignore_ascii_case(r)) {
            return Route::Axum;
        }
        if last_event_id.is_none() && h.name.eq_ignore_ascii_case("last-event-id") {
            last_event_id = Some(h.value);
        }
    }
    let Ok(Query(query)) = Query::<EventsQuery>::try_from_uri(&uri) else {
        return Route::Axum;
    };
    match feed::last_seen(last_event_id, query.last_event_id.as_deref()) {
        Ok(last_seen) => Route::Feed {
            head_len,
            last_seen,
            framing,
        },
        Err(feed::BadLastEventId) => Route::Axum,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(head: &str, last_seen: Option<u64>) -> Route {
        Route::Feed {
            head_len: head.len(),
            last_seen,
            framing: Framing::Chunked,
        }
    }

    #[test]
    fn a_plain_feed_request_is_served_here() {
        let head = "GET /api/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
        assert_eq!(classify(head.as_bytes()), feed(head, None));
        let head = "GET /api/events?lastEventId=12 HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(classify(head.as_bytes()), feed(head, Some(12)));
        let head = "GET /api/events?lastEventId=12 HTTP/1.1\r\nLast-Event-ID: 40\r\n\r\n";
        assert_eq!(classify(head.as_bytes()), feed(head, Some(40)));
        // HTTP/1.0 (nginx's default upstream protocol): no chunks.
        let head = "GET /api/events HTTP/1.0\r\nHost: x\r\nConnection: close\r\n\r\n";
        assert_eq!(
            classify(head.as_bytes()),
            Route::Feed {
                head_len: head.len(),
                last_seen: None,
                framing: Framing::UntilClose,
            }
        );
    }

    #[test]
    fn anything_else_goes_to_axum() {
        let cases: &[&[u8]] = &[
            // Other paths and methods, HTTP/2 prior knowledge.
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET /api/events/ HTTP/1.1\r\n\r\n",
            b"GET /api/ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"HEAD /api/events HTTP/1.1\r\n\r\n",
            b"POST /api/events HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            // A head not complete yet, or followed by more bytes.
            b"GET /api/events HTTP/1.1\r\nHost: x\r\n",
            b"GET /api/events HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            // A body, an upgrade, a bad resume id (axum answers 400).
            b"GET /api/events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /api/events HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            b"GET /api/events HTTP/1.1\r\nLast-Event-ID: soon\r\n\r\n",
            b"GET /api/events?lastEventId=x HTTP/1.1\r\n\r\n",
            // Not HTTP.
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ];
        for bytes in cases {
            let shown = String::from_utf8_lossy(bytes);
            assert_eq!(classify(bytes), Route::Axum, "{shown:?}");
        }
    }
}
