//! The accept loop, and one [`Handler`] per connection: every connection is
//! served by hyper's HTTP/1.1 server with the same limits and timeouts.
//!
//! ```text
//! TcpListener ─ Listener::run ─┬─ over a limit → refuse (503 / 429, Retry-After)
//!                              └─ Handler (one task per connection)
//!                                   ├─ hyper http1 connection → the router
//!                                   └─ watchdog: head and idle timeouts
//! ```
//!
//! Limits are checked when a connection is accepted, before any work is done
//! for it: the server-wide cap (`PULSE_MAX_CONNECTIONS`) and the per-address
//! cap (`PULSE_MAX_CONNECTIONS_PER_IP`). A trusted proxy carries many
//! clients, so its connections are not counted per address; instead each of
//! its requests counts under the address it forwards, for as long as the
//! request (or the WebSocket it becomes) lives. Timeouts are the
//! [`watchdog`]'s.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::server::admission::{address_key, KeyedCounter, Slot};
use crate::server::refusal::Refused;
use watchdog::{Activity, Busy, Phase, Watched};

pub mod body;
mod watchdog;
use crate::server::forwarded::{Client, TrustedProxies};
use crate::server::metrics;

/// Largest request head: a browser's is 1-2 KiB; this leaves room for many
/// cookies. A larger one is answered 431.
const MAX_HEAD: usize = 32 * 1024;

/// Largest read buffer a connection may grow (request bodies are read
/// through it).
const MAX_BUF: usize = 64 * 1024;

/// Connections over a limit that may be waiting for their refusal at once;
/// past that they are closed without one.
const MAX_REFUSING: usize = 256;

/// How long a refused client has to send its request head.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest pause of the accept loop after an error (out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The rules every connection is served under.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections held at once, server-wide.
    pub max_connections: usize,
    /// Connections (or proxied streams) one client address may hold.
    pub max_per_ip: usize,
    /// Time to send a request head.
    pub header_timeout: Duration,
    /// Time a connection may sit with no request.
    pub idle_timeout: Duration,
    /// Time a request body may make no progress.
    pub body_timeout: Duration,
    /// Proxies whose forwarding headers are believed.
    pub proxies: TrustedProxies,
}

/// A place in the server-wide and per-address counts. A request carries its
/// connection's (and, through a proxy, its own) in its [`Admitted`]
/// extension, so an upgraded WebSocket keeps the places it was admitted with.
pub struct Admission {
    /// One of `max_connections`.
    _connection: Option<OwnedSemaphorePermit>,
    /// One of the client address's.
    _address: Option<Slot<IpAddr>>,
}

/// What the listener puts in every request's extensions.
#[derive(Clone)]
pub struct Admitted {
    /// Who sent the request.
    pub client: Client,
    /// The places the request holds; keep a clone for as long as the request's
    /// work lives on (an upgraded socket).
    pub hold: Arc<Admission>,
    /// The places of the request's own stream through a proxy, if any.
    pub stream: Option<Arc<Admission>>,
}

/// State shared by the accept loop and every connection.
struct Shared {
    /// The rules.
    limits: Limits,
    /// Places left of `max_connections`.
    connections: Arc<Semaphore>,
    /// Places per client address.
    per_ip: Arc<KeyedCounter<IpAddr>>,
    /// Places for connections being refused.
    refusing: Arc<Semaphore>,
    /// Cancelled at shutdown: stop accepting, close idle connections.
    shutdown: CancellationToken,
    /// Every connection task, waited for at shutdown.
    tasks: TaskTracker,
}

/// Accepts connections on one socket and serves each with the router.
pub struct Listener {
    /// The listening socket.
    tcp: TcpListener,
    /// What serves each request (cloning it is a reference count).
    app: Router,
    /// Rules, counters, shutdown.
    shared: Arc<Shared>,
}

impl Listener {
    /// A listener on `tcp` serving `app` under `limits`. Connection tasks run
    /// on `tasks`; `shutdown` stops accepting and drains them.
    pub fn new(
        tcp: TcpListener,
        app: Router,
        limits: Limits,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        let shared = Shared {
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            per_ip: KeyedCounter::new(limits.max_per_ip),
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
            limits,
            shutdown,
            tasks,
        };
        Listener {
            tcp,
            app,
            shared: Arc::new(shared),
        }
    }

    /// Accepts until shutdown. One client can never stop it: errors about a
    /// single connection are skipped, and running out of file descriptors
    /// pauses accepting (doubling up to a second) instead of spinning.
    pub async fn run(self) {
        let mut backoff = Duration::from_millis(5);
        loop {
            let accepted = tokio::select! {
                _ = self.shared.shutdown.cancelled() => return,
                accepted = self.tcp.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(conn) => conn,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::warn!("accept failed ({e}); pausing {backoff:?}");
                    tokio::select! {
                        _ = self.shared.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                    continue;
                }
            };
            backoff = Duration::from_millis(5);
            // Real-time frames are small and must leave at once: with Nagle's
            // algorithm a frame written while the previous one is
            // unacknowledged waits for the peer's (possibly delayed) ACK.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("could not set TCP_NODELAY: {e}");
            }
            self.admit(tcp, peer);
        }
    }

    /// Serves `tcp` if the limits allow, else refuses it.
    fn admit(&self, tcp: TcpStream, peer: SocketAddr) {
        let shared = &self.shared;
        let Ok(connection) = shared.connections.clone().try_acquire_owned() else {
            metrics::refused("max_connections");
            return refuse(shared, tcp, Refused::server_full());
        };
        let peer = peer.ip().to_canonical();
        // A trusted proxy's requests count per forwarded address instead.
        let address = if shared.limits.proxies.contains(peer) {
            None
        } else {
            match shared.per_ip.try_acquire(address_key(peer)) {
                Some(slot) => Some(slot),
                None => {
                    metrics::refused("per_ip");
                    let refused =
                        Refused::too_many_connections("too many connections from your address");
                    return refuse(shared, tcp, refused);
                }
            }
        };
        let handler = Handler {
            shared: shared.clone(),
            app: self.app.clone(),
            peer,
            admission: Arc::new(Admission {
                _connection: Some(connection),
                _address: address,
            }),
        };
        shared.tasks.spawn(handler.run(tcp));
    }
}

/// Accept errors that concern one connection only (it was reset before we
/// took it): skip it and go on.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Answers whatever request comes on `tcp` with `refused`, then closes it.
/// A flood of refused connections is itself bounded: past [`MAX_REFUSING`]
/// at once they are closed without an answer.
fn refuse(shared: &Shared, tcp: TcpStream, refused: Refused) {
    let Ok(place) = shared.refusing.clone().try_acquire_owned() else {
        return;
    };
    let shutdown = shared.shutdown.clone();
    shared.tasks.spawn(async move {
        let _place = place;
        let answer = hyper::service::service_fn(move |_req| {
            let refused = refused.clone();
            async move { Ok::<_, Infallible>(refused.into_response()) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(REFUSAL_TIMEOUT)
            .keep_alive(false)
            .serve_connection(TokioIo::new(tcp), answer);
        tokio::select! {
            _ = conn => {}
            _ = shutdown.cancelled() => {}
        }
    });
}

/// Serves one admitted connection.
struct Handler {
    /// Rules and counters.
    shared: Arc<Shared>,
    /// The router.
    app: Router,
    /// The TCP peer's address.
    peer: IpAddr,
    /// The places the connection holds.
    admission: Arc<Admission>,
}

impl Handler {
    async fn run(self, tcp: TcpStream) {
        let activity = Arc::new(Activity::default());
        let io = TokioIo::new(Watched {
            io: tcp,
            activity: activity.clone(),
        });
        let shared = self.shared.clone();
        let service = PerRequest {
            handler: Arc::new(self),
            activity: activity.clone(),
        };
        let conn = http1::Builder::new()
            // The watchdog below times heads; see the module doc.
            .header_read_timeout(None)
            .max_header_size(MAX_HEAD)
            .max_buf_size(MAX_BUF)
            .serve_connection(io, service)
            .with_upgrades();
        tokio::pin!(conn);
        let watchdog = activity.expire(shared.limits.header_timeout, shared.limits.idle_timeout);
        tokio::pin!(watchdog);
        let mut draining = false;
        loop {
            tokio::select! {
                finished = conn.as_mut() => {
                    if let Err(e) = finished {
                        tracing::debug!("connection ended: {e}");
                    }
                    return;
                }
                phase = &mut watchdog => {
                    // Nothing is in flight: dropping the connection loses nothing.
                    metrics::timed_out(phase);
                    return;
                }
                // With no request in flight (idle, or a head still coming)
                // the connection is dropped at once: nobody may hold a
                // deploy. Otherwise it closes after the response (streams
                // end at shutdown).
                _ = shared.shutdown.cancelled(), if !draining => {
                    if activity.phase() != Phase::Busy {
                        return;
                    }
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// The hyper service of one connection: resolves who the client is, counts
/// the request in flight, and hands it to the router.
#[derive(Clone)]
struct PerRequest {
    /// The connection.
    handler: Arc<Handler>,
    /// Its activity, for the watchdog.
    activity: Arc<Activity>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for PerRequest {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let busy = Busy::start(self.activity.clone());
        let handler = &self.handler;
        let (timeout, shutdown) = (handler.shared.limits.body_timeout, &handler.shared.shutdown);
        let mut req: Request = req.map(|body| {
            if hyper::body::Body::is_end_stream(&body) {
                Body::new(body)
            } else {
                Body::new(body::Watched::new(body, timeout, shutdown))
            }
        });
        let client = handler
            .shared
            .limits
            .proxies
            .client(handler.peer, req.headers());
        let stream = if client.via_proxy {
            match handler.shared.per_ip.try_acquire(address_key(client.ip)) {
                Some(slot) => Some(Arc::new(Admission {
                    _connection: None,
                    _address: Some(slot),
                })),
                None => {
                    metrics::refused("per_ip");
                    let res =
                        Refused::too_many_connections("too many connections from your address")
                            .into_response();
                    return Box::pin(async move { Ok(tracked(res, busy, None)) });
                }
            }
        } else {
            None
        };
        req.extensions_mut().insert(Admitted {
            client,
            hold: handler.admission.clone(),
            stream: stream.clone(),
        });
        let mut app = handler.app.clone();
        Box::pin(async move {
            // A router is always ready; its error type is `Infallible`.
            let res = app.call(req).await?;
            Ok(tracked(res, busy, stream))
        })
    }
}

/// `res` with a body that keeps the request counted in flight (and holds its
/// places) until hyper has sent it all or the client has gone.
fn tracked(res: Response, busy: Busy, stream: Option<Arc<Admission>>) -> Response {
    res.map(|inner| {
        Body::new(Tracked {
            inner,
            _busy: busy,
            _stream: stream,
        })
    })
}

/// A response body with what must live exactly as long as it.
struct Tracked {
    /// The body itself.
    inner: Body,
    /// Keeps the request in flight.
    _busy: Busy,
    /// Keeps a proxied stream's per-address place.
    _stream: Option<Arc<Admission>>,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
