//! The HTTP fallback, for networks that do not let WebSockets through (a
//! proxy that strips `Upgrade`): the same chat over plain HTTP.
//!
//! - `GET /api/chat/stream` is the downstream: an SSE stream of the same
//!   `ServerMessage`s a socket gets, starting with `hello` (the connection's
//!   unguessable name) and carrying a `pong` every ping interval. It passes
//!   the same checks as `GET /ws` (origin, token, the user's cap) and holds
//!   the same kind of connection: rooms, limits, expiry, sign-out.
//! - The tabs of one browser share one stream (over HTTP/1.1 a browser
//!   opens at most six connections to a host): the stream's connection is
//!   a carrier, and `attach` frames posted to it open more connections of
//!   the same user whose frames come down the same stream, tagged with
//!   their tab. Each is a connection like any other (rooms, limits); it ends
//!   with its carrier, or when its tab stops posting.
//! - `POST /api/chat/send` is the upstream: `{"conn", "frames"}`, the frames
//!   a socket would have sent, acted on in order by the connection. The
//!   answer is `202`: what they do comes down the stream (`joined`, the
//!   echo, or an `error`). Behind a load balancer the POST may reach another
//!   instance than the stream: it then goes over the bus to the instance
//!   that holds it (the name says which), so no sticky sessions are needed.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message};
use axum::extract::{Extension, OriginalUri, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, SelectAll};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use super::connection::{self, Places, Socket};
use super::hub::{ConnId, User};
use super::outbox::{error, Outbox, Queue};
use super::{identify, take_place, too_many_sockets, turned_off, Chat, HealthWatch};
use crate::protocol::{
    is_valid_tab, ClientMessage, ErrorCode, SendBody, ServerMessage, CLOSE_GOING_AWAY,
    CLOSE_PING_TIMEOUT, CLOSE_TOKEN_EXPIRED, CLOSE_TOO_SLOW, CLOSE_TRY_AGAIN_LATER,
    MAX_FRAMES_PER_SEND, MAX_FRAME_BYTES, MAX_TAB_ID, TAB_EVENT,
};
use crate::server::auth::{bearer_token, cookie_token, AuthError};
use crate::server::bus::BusEvent;
use crate::server::clock::now_secs;
use crate::server::feed::sse_response;
use crate::server::limits::too_many_messages;
use crate::server::listener::Admitted;
use crate::server::metrics::{self, Transport};
use crate::server::sessions::SessionHold;

/// Frames that may wait for a connection to act on them; past that a post
/// is refused with 429 (the client is sending faster than it is served).
const INBOX: usize = 64;

/// Largest body of one post: the most frames, each at most a socket's
/// (the route refuses a larger one before reading it).
pub const MAX_POST_BYTES: usize = 64 * 1024;

/// Where posted frames go for one connection held here.
pub(super) struct Inbox {
    /// Whose connection it is: only they may post to it.
    user_id: Arc<str>,
    /// The connection's queue of frames.
    tx: mpsc::Sender<ClientMessage>,
}

/// What became of posted frames.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Delivery {
    /// Queued for the connection.
    Accepted,
    /// The connection is someone else's.
    NotYours,
    /// Its queue is full.
    Full,
    /// No such connection here.
    Unknown,
}

impl Chat {
    /// Hands `frames` posted by `user_id` to connection `conn`, if it is here.
    pub(super) fn deliver(
        &self,
        conn: &str,
        user_id: &str,
        frames: Vec<ClientMessage>,
    ) -> Delivery {
        let inboxes = self.inboxes();
        let Some(inbox) = inboxes.get(conn) else {
            return Delivery::Unknown;
        };
        if &*inbox.user_id != user_id {
            return Delivery::NotYours;
        }
        // All or nothing: a post is refused whole rather than half applied.
        match inbox.tx.capacity() >= frames.len() {
            true => {
                for frame in frames {
                    let _ = inbox.tx.try_send(frame);
                }
                Delivery::Accepted
            }
            false => Delivery::Full,
        }
    }

    fn inboxes(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Inbox>> {
        // Each change is one insert or remove.
        self.inboxes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `GET /api/chat/stream`: the checks of `GET /ws`, then an SSE stream of the
/// connection's frames (and of the connections attached to it).
pub async fn stream(
    State(chat): State<Arc<Chat>>,
    Extension(admitted): Extension<Admitted>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Response {
    if !chat.http {
        return turned_off("HTTP fallback streams");
    }
    let claims = match identify(&chat, &admitted, &uri, &headers).await {
        Ok(claims) => claims,
        Err(refused) => return refused,
    };
    let Some((user, places)) = take_place(&chat, admitted, &claims) else {
        return too_many_sockets();
    };
    let (attach, attached) = mpsc::channel(ATTACHED_WAITING);
    let identity = Identity {
        user,
        sid: claims.sid,
        expires_at: claims.exp,
    };
    let queue = open(&chat, identity, places, Role::Carrier { attach });
    sse_response(body(queue, attached))
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

/// A connection attached to a stream: its tab and its outbound queue.
struct Attached {
    /// Tags its frames.
    tab: Arc<str>,
    /// Its frames.
    queue: Queue,
}

/// Ping intervals without a post after which an attached connection ends
/// (its tab is gone; a tab posts a ping every interval).
const LEASE_PINGS: u32 = 3;

/// Attached connections whose queues a stream has not picked up yet.
const ATTACHED_WAITING: usize = 8;

/// Opens a fallback connection: names it, gives it an inbox and an outbox
/// that starts with `hello`, and runs it. Returns its outbound queue.
fn open(chat: &Arc<Chat>, identity: Identity, places: Places, role: Role) -> Queue {
    let id = chat.next_id.fetch_add(1, Ordering::Relaxed);
    let session = chat.sessions.hold(&identity.sid);
    // The instance in the name routes posts that reach another instance.
    let name = format!(
        "{}.{:016x}{:016x}",
        chat.bus.instance(),
        fastrand::u64(..),
        fastrand::u64(..)
    );
    let (tx, rx) = mpsc::channel(INBOX);
    chat.inboxes().insert(
        name.clone(),
        Inbox {
            user_id: identity.user.id.clone(),
            tx,
        },
    );
    let (outbox, queue) = Outbox::new(chat.queue_bytes);
    outbox.send(&ServerMessage::Hello {
        conn: name.clone(),
        ping_interval_ms: chat.ping_interval.as_millis() as u64,
    });
    let span = tracing::info_span!("http", conn = id, user = %identity.user.id);
    let connection = Connection {
        chat: chat.clone(),
        id,
        identity,
        name,
        session,
        inbox: rx,
        outbox,
        places,
        role,
    };
    chat.sockets.spawn(serve(connection).instrument(span));
    queue
}

/// One fallback connection, as its task holds it.
struct Connection {
    /// Rooms, limits, settings.
    chat: Arc<Chat>,
    /// This connection in the hub.
    id: ConnId,
    /// Whose it is.
    identity: Identity,
    /// Its name (its inbox's key).
    name: String,
    /// Its sign-in session.
    session: SessionHold,
    /// Posted frames.
    inbox: mpsc::Receiver<ClientMessage>,
    /// Everything sent down the stream.
    outbox: Outbox,
    /// Its places in the server's limits (attached connections share their
    /// carrier's connection places, and take a user place of their own).
    places: Places,
    /// Carrier or attached.
    role: Role,
}

/// Acts on posted frames until the stream ends, for whatever reason.
async fn serve(connection: Connection) {
    let Connection {
        chat,
        id,
        identity,
        name,
        session,
        mut inbox,
        outbox,
        places,
        role,
    } = connection;
    let user = &identity.user;
    let _open = chat.sockets.token();
    // An attached connection is not a stream of its own: only carriers
    // count as open SSE streams.
    let attached = matches!(role, Role::Attached);
    if !attached {
        metrics::connection_opened(Transport::Sse);
    }
    let mut joined = BTreeSet::<String>::new();
    let mut last_pong = None;
    let mut health = HealthWatch::start(&chat, &outbox);
    let pong = ServerMessage::Pong {
        ping_interval_ms: chat.ping_interval.as_millis() as u64,
    };
    let mut beat =
        tokio::time::interval_at(Instant::now() + chat.ping_interval, chat.ping_interval);
    beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let expiry = tokio::time::sleep(Duration::from_secs(
        identity.expires_at.saturating_sub(now_secs()),
    ));
    tokio::pin!(expiry);
    // An attached connection's lease, renewed by every post.
    let lease = chat.ping_interval * LEASE_PINGS;
    let lapsed = tokio::time::sleep(lease);
    tokio::pin!(lapsed);
    let end: Option<(u16, &str)> = loop {
        tokio::select! {
            _ = chat.shutdown.cancelled() => break Some((CLOSE_GOING_AWAY, "server shutting down")),
            _ = outbox.too_slow().cancelled() => break Some((CLOSE_TOO_SLOW, "too slow: outbound queue full")),
            _ = &mut expiry => break Some((CLOSE_TOKEN_EXPIRED, "token expired")),
            _ = session.signed_out().cancelled() => break Some((CLOSE_TOKEN_EXPIRED, "signed out")),
            _ = &mut lapsed, if attached => break Some((CLOSE_PING_TIMEOUT, "nothing posted for three ping intervals")),
            _ = outbox.closed() => break None,
            frame = health.changed() => { outbox.send(&frame); }
            // The stream's heartbeat: what tells the client it is alive.
            _ = beat.tick() => { outbox.send(&pong); }
            frame = inbox.recv() => {
                let Some(frame) = frame else { break None };
                metrics::message_received();
                lapsed.as_mut().reset(Instant::now() + lease);
                match (frame, &role) {
                    (ClientMessage::Attach { tab }, Role::Carrier { attach }) => {
                        attach_to(&chat, &identity, &places, attach, &outbox, tab);
                    }
                    (frame, _) => {
                        let socket = Socket { id, user, outbox: &outbox, joined: &mut joined, last_pong: &mut last_pong };
                        connection::act(&chat, socket, frame).await;
                    }
                }
            }
        }
    };
    chat.inboxes().remove(&name);
    chat.hub.disconnect(id, &joined);
    drop(session);
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
    if !attached {
        metrics::connection_closed(Transport::Sse);
    }
}

/// Attaches a connection for `tab` to the stream of the carrier whose
/// identity and places are given: one more of the user's connections, whose
/// frames go down the carrier's stream.
fn attach_to(
    chat: &Arc<Chat>,
    identity: &Identity,
    places: &Places,
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
    let Some(slot) = chat.sockets_per_user.try_acquire(identity.user.id.clone()) else {
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
    let places = Places {
        _connection: places._connection.clone(),
        _stream: places._stream.clone(),
        _user: slot,
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

/// The SSE body of a carrier's stream: its own frames as `data:` lines, and
/// those of the connections attached to it as [`TAB_EVENT`] events, until
/// its own close frame.
fn body(
    queue: Queue,
    attached: mpsc::Receiver<Attached>,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    let own = frames(None, queue);
    let start = (SelectAll::from_iter([own]), attached);
    stream::unfold(start, |(mut all, mut attached)| async move {
        loop {
            tokio::select! {
                // Only the carrier's own frames end the stream; an attached
                // connection that ends just leaves it.
                frame = all.next() => match frame? {
                    (None, Message::Text(text)) => {
                        let frame = Bytes::from(format!("data: {}\n\n", text.as_str()));
                        return Some((Ok(frame), (all, attached)));
                    }
                    (None, Message::Close(_)) => return None,
                    (Some(tab), Message::Text(text)) => {
                        // A tab id needs no escaping (see is_valid_tab), and
                        // the text is a JSON object already.
                        let frame = Bytes::from(format!(
                            "event: {TAB_EVENT}\ndata: {{\"tab\":\"{tab}\",\"msg\":{}}}\n\n",
                            text.as_str()
                        ));
                        return Some((Ok(frame), (all, attached)));
                    }
                    _ => continue,
                },
                Some(Attached { tab, queue }) = attached.recv() => all.push(frames(Some(tab), queue)),
            }
        }
    })
}

/// One connection's outbound frames, tagged with its tab if it is attached.
/// Its stream ends after its close frame.
fn frames(
    tab: Option<Arc<str>>,
    queue: Queue,
) -> stream::BoxStream<'static, (Option<Arc<str>>, Message)> {
    stream::unfold(Some(queue), move |queue| {
        let tab = tab.clone();
        async move {
            let mut queue = queue?;
            let frame = queue.recv().await?;
            let next = (!matches!(frame, Message::Close(_))).then_some(queue);
            Some(((tab, frame), next))
        }
    })
    .boxed()
}

/// `POST /api/chat/send`: `202` once the frames are on their way to the
/// connection; `400` for a body that is not a [`SendBody`] of 1 to
/// [`MAX_FRAMES_PER_SEND`] frames, `401` without a valid token, `403` for
/// another user's connection, `404` for one that is gone, `413` for a body
/// over 64 KiB, `429` when the user posts too fast or the connection's
/// queue is full.
pub async fn send(State(chat): State<Arc<Chat>>, headers: HeaderMap, body: Bytes) -> Response {
    if !chat.http {
        return turned_off("HTTP fallback posts");
    }
    let verified = match bearer_token(&headers).or_else(|| cookie_token(&headers)) {
        Some(token) => chat.sessions.verify(&token).await,
        None => Err(AuthError::Missing),
    };
    let claims = match verified {
        Ok(claims) => claims,
        Err(e) => {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                e.to_string(),
            )
                .into_response()
        }
    };
    let posted: SendBody = match serde_json::from_slice(&body) {
        Ok(posted) => posted,
        Err(e) => {
            metrics::invalid_message();
            return (
                StatusCode::BAD_REQUEST,
                format!("expected {{\"conn\": …, \"frames\": [frames]}}: {e}"),
            )
                .into_response();
        }
    };
    if posted.frames.is_empty() || posted.frames.len() > MAX_FRAMES_PER_SEND {
        return (
            StatusCode::BAD_REQUEST,
            format!("1 to {MAX_FRAMES_PER_SEND} frames per post"),
        )
            .into_response();
    }
    if posted
        .frames
        .iter()
        .any(|f| serde_json::to_string(f).map_or(true, |json| json.len() > MAX_FRAME_BYTES))
    {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            "a frame is larger than 16 KiB",
        )
            .into_response();
    }
    let user_id: Arc<str> = Arc::from(claims.sub.as_str());
    if let Err(wait) = chat.limits.post(&user_id) {
        metrics::rate_limited();
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, wait.as_secs().max(1).to_string())],
            too_many_messages(wait),
        )
            .into_response();
    }
    match chat.deliver(&posted.conn, &claims.sub, posted.frames.clone()) {
        Delivery::Accepted => StatusCode::ACCEPTED.into_response(),
        Delivery::NotYours => (StatusCode::FORBIDDEN, "not your connection").into_response(),
        Delivery::Full => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            "the connection has too many frames waiting",
        )
            .into_response(),
        Delivery::Unknown => {
            let here = posted
                .conn
                .split_once('.')
                .is_some_and(|(instance, _)| instance == chat.bus.instance());
            if here {
                return (
                    StatusCode::NOT_FOUND,
                    "no such connection: open a new stream",
                )
                    .into_response();
            }
            // Held by another instance (or by none: then nobody acts on it,
            // and the client's stream, which is gone, says so).
            chat.bus.publish(BusEvent::Frames {
                conn: posted.conn,
                user_id: claims.sub,
                frames: posted.frames,
            });
            StatusCode::ACCEPTED.into_response()
        }
    }
}
