//! The HTTP fallback, for networks that do not let WebSockets through (a
//! proxy that strips `Upgrade`): the same chat over plain HTTP.
//!
//! - `GET /api/chat/stream` is the downstream: an SSE stream of the same
//!   `ServerMessage`s a socket gets, starting with `hello` (the connection's
//!   unguessable name) and carrying a `pong` every ping interval. It passes
//!   the same gate as `GET /ws` and is a connection like any other: the
//!   same lifecycle ([`client::run`]) over a [`StreamTransport`].
//! - The tabs of one browser share one stream (over HTTP/1.1 a browser
//!   opens at most six connections to a host): the stream's connection is
//!   a carrier, and `attach` frames posted to it open more connections of
//!   the same user whose frames come down the same stream, tagged with
//!   their tab. Each ends with its carrier, or when its tab stops posting.
//! - `POST /api/chat/send` is the upstream: `{"conn", "frames"}`, acted on
//!   in order by the connection. `202` means the frames reached it: what
//!   they do comes down the stream (`joined`, `ack`/`nack`, `error`).
//!   Behind a load balancer the POST may reach another instance than the
//!   stream: it is then sent to the instance that holds it (the name says
//!   which), and answered `503` if that instance cannot be reached — never
//!   `202` for frames that went nowhere.

mod body;
mod inbox;
mod send;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message};
use axum::extract::{Extension, OriginalUri, State};
use axum::http::HeaderMap;
use axum::response::Response;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use super::client::{self, Connection, End, Incoming, Transport};
use super::gate::{identify, take_place, too_many_sockets, Places};
use super::outbox::{error, Outbox, Queue};
use super::user::User;
use super::Chat;
use crate::protocol::{
    is_valid_tab, ClientMessage, ErrorCode, ServerMessage, CLOSE_PING_TIMEOUT,
    CLOSE_TRY_AGAIN_LATER, MAX_TAB_ID,
};
use crate::server::feed::sse_response;
use crate::server::listener::Admitted;
use crate::server::metrics::{self, Transport as Kind};
use crate::server::refusal::Refused;
use body::{body, Attached};
pub use inbox::Inboxes;
pub use send::send;

/// Largest body of one post: the most frames, each at most a socket's
/// (the route refuses a larger one before reading it).
pub const MAX_POST_BYTES: usize = 64 * 1024;

/// Ping intervals without a post after which an attached connection ends
/// (its tab is gone; a tab posts a ping every interval).
const LEASE_PINGS: u32 = 3;

/// Attached connections whose queues a stream has not picked up yet.
const ATTACHED_WAITING: usize = 8;

/// `GET /api/chat/stream`: the checks of `GET /ws`, then an SSE stream of the
/// connection's frames (and of the connections attached to it).
pub async fn stream(
    State(chat): State<Arc<Chat>>,
    Extension(admitted): Extension<Admitted>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    if !chat.http {
        return Err(Refused::turned_off("HTTP fallback streams"));
    }
    let claims = identify(&chat, &admitted, &uri, &headers).await?;
    let (user, places) = take_place(&chat, admitted, &claims).ok_or_else(too_many_sockets)?;
    let (attach, attached) = mpsc::channel(ATTACHED_WAITING);
    let identity = Identity {
        user,
        sid: claims.sid,
        expires_at: claims.exp,
    };
    let queue = open(&chat, identity, places, Role::Carrier { attach });
    Ok(sse_response(body(queue, attached)))
}

/// Who a connection belongs to (an attached one: the same as its carrier).
#[derive(Clone)]
struct Identity {
    /// The authenticated user.
    user: User,
    /// Their sign-in session.
    sid: String,
    /// When the token expires (Unix seconds): the connection ends then.
    expires_at: u64,
}

/// What a fallback connection is to its stream.
enum Role {
    /// It holds the stream, and may attach others to it.
    Carrier {
        /// Where attached connections' queues go, for the stream to send.
        attach: mpsc::Sender<Attached>,
    },
    /// It rides on another's stream: it ends with it, or when its tab stops
    /// posting for [`LEASE_PINGS`] ping intervals.
    Attached,
}

/// Opens a fallback connection: names it, gives it an inbox and an outbox
/// that starts with `hello`, and runs it. Returns its outbound queue.
fn open(chat: &Arc<Chat>, identity: Identity, places: Places, role: Role) -> Queue {
    let id = chat.new_id();
    // The instance in the name routes posts that reach another instance.
    let name = format!(
        "{}.{:016x}{:016x}",
        chat.broker.instance(),
        fastrand::u64(..),
        fastrand::u64(..)
    );
    let (outbox, queue) = Outbox::new(chat.queue_bytes);
    let inbox = chat.inboxes.open(&name, &identity.user.id, &outbox);
    outbox.send(&ServerMessage::Hello {
        conn: name.clone(),
        ping_interval_ms: chat.ping_interval.as_millis() as u64,
    });
    let carrier = matches!(role, Role::Carrier { .. });
    let span = tracing::info_span!("http", conn = id, user = %identity.user.id);
    let transport = StreamTransport {
        chat: chat.clone(),
        identity: identity.clone(),
        name,
        inbox,
        outbox: outbox.clone(),
        role,
        lease: chat.ping_interval * LEASE_PINGS,
        posted_at: Instant::now(),
    };
    let connection = Connection {
        open: chat.sockets.token(),
        chat: chat.clone(),
        id,
        session: chat.sessions.hold(&identity.sid),
        user: identity.user,
        expires_at: identity.expires_at,
        outbox,
        places,
    };
    chat.sockets.spawn(
        async move {
            // An attached connection is not a stream of its own: only
            // carriers count as open SSE streams.
            if carrier {
                metrics::connection_opened(Kind::Sse);
            }
            client::run(connection, transport).await;
            if carrier {
                metrics::connection_closed(Kind::Sse);
            }
        }
        .instrument(span),
    );
    queue
}

/// A fallback connection as a chat transport: frames come from its inbox,
/// liveness is the stream's `pong` heartbeat (and, for an attached
/// connection, its tab's posts).
struct StreamTransport {
    /// For attaching connections to a carrier.
    chat: Arc<Chat>,
    /// Whose it is (an attached connection gets the same).
    identity: Identity,
    /// Its name (its inbox's key).
    name: String,
    /// Posted frames.
    inbox: mpsc::Receiver<ClientMessage>,
    /// The connection's outbound queue (its stream's end tells us the
    /// client went away).
    outbox: Outbox,
    /// Carrier or attached.
    role: Role,
    /// How long an attached connection lives without a post.
    lease: Duration,
    /// When the last post came.
    posted_at: Instant,
}

impl Transport for StreamTransport {
    async fn recv(&mut self) -> Incoming {
        loop {
            let frame = tokio::select! {
                _ = self.outbox.closed() => return Incoming::End(None),
                frame = self.inbox.recv() => frame,
            };
            let Some(frame) = frame else {
                return Incoming::End(None);
            };
            self.posted_at = Instant::now();
            match (frame, &self.role) {
                (ClientMessage::Attach { tab }, Role::Carrier { attach }) => {
                    metrics::message_received();
                    attach_to(&self.chat, &self.identity, attach, &self.outbox, tab);
                }
                (frame, _) => return Incoming::Frame(frame),
            }
        }
    }

    fn beat(&mut self, outbox: &Outbox, _heard: bool) -> Option<End> {
        if matches!(self.role, Role::Attached) && self.posted_at.elapsed() > self.lease {
            return Some(Some((
                CLOSE_PING_TIMEOUT,
                "nothing posted for three ping intervals",
            )));
        }
        // The stream's heartbeat: what tells the client it is alive.
        outbox.send(&ServerMessage::Pong {
            ping_interval_ms: self.chat.ping_interval.as_millis() as u64,
        });
        None
    }

    async fn finish(self, outbox: Outbox, end: End) {
        self.chat.inboxes.close(&self.name);
        if let Some((code, reason)) = end {
            outbox.send(&ServerMessage::Closed {
                code,
                reason: reason.to_string(),
            });
        }
        outbox.push(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "".into(),
        })));
    }
}

/// Attaches a connection for `tab` to the stream of the carrier whose
/// identity is given: one more of the user's connections, whose frames go
/// down the carrier's stream.
fn attach_to(
    chat: &Arc<Chat>,
    identity: &Identity,
    attach: &mpsc::Sender<Attached>,
    carrier: &Outbox,
    tab: String,
) {
    if !is_valid_tab(&tab) {
        metrics::invalid_message();
        carrier.send(&error(
            ErrorCode::InvalidMessage,
            format!("a tab id is 1 to {MAX_TAB_ID} characters of A-Z a-z 0-9 - _"),
        ));
        return;
    }
    let tab: Arc<str> = Arc::from(tab);
    let Some(places) = chat.attached_places(identity) else {
        // Told down the stream, tagged for the tab, like any of its frames.
        metrics::refused("per_user");
        let (outbox, queue) = Outbox::new(chat.queue_bytes);
        outbox.send(&ServerMessage::Closed {
            code: CLOSE_TRY_AGAIN_LATER,
            reason: "too many open connections for this user".to_string(),
        });
        outbox.push(Message::Close(None));
        let _ = attach.try_send(Attached { tab, queue });
        return;
    };
    let queue = open(chat, identity.clone(), places, Role::Attached);
    if attach.try_send(Attached { tab, queue }).is_err() {
        // The stream is gone or not keeping up: dropping the queue ends
        // the connection just opened.
        carrier.send(&error(
            ErrorCode::RateLimited,
            "too many connections attaching at once",
        ));
    }
}

impl Chat {
    /// The places of a connection attached to a carrier of `identity`'s:
    /// a user place of its own (none past the user's cap); it rides on the
    /// carrier's connection, so it takes no connection place.
    fn attached_places(&self, identity: &Identity) -> Option<Places> {
        let user = self
            .sockets_per_user
            .try_acquire(identity.user.id.clone())?;
        Some(Places {
            _connection: None,
            _stream: None,
            _user: user,
        })
    }
}
