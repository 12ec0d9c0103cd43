//! Chat and rooms over a WebSocket at `GET /ws`.
//!
//! - [`upgrade`] checks the origin and the token, then upgrades;
//! - [`connection`] runs one socket: a reader loop here and a writer task
//!   that drains the connection's bounded queue;
//! - [`hub`] holds the rooms and delivers to their members.

pub mod connection;
pub mod fallback;
pub mod hub;
pub mod outbox;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Extension, FromRequestParts, OriginalUri, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::protocol::{is_valid_room, ServerMessage, MAX_FRAME_BYTES};
use crate::server::admission::{refusal, KeyedCounter};
use crate::server::auth::{token_from, AuthError, Claims};
use crate::server::bus::{Bus, BusEvent, BusStatus, Incoming};
use crate::server::clock::now_ms;
use crate::server::config::{AppSettings, ChatTransport};
use crate::server::forwarded::is_own_origin;
use crate::server::limits::RateLimits;
use crate::server::listener::Admitted;
use crate::server::metrics;
use crate::server::presence::Presence;
use crate::server::sessions::Sessions;
use hub::{ConnId, Hub, User};
use outbox::Outbox;

/// How many bytes of frames a connection's writer gathers before it must
/// write (it also writes whenever its queue runs dry).
const WRITE_BATCH_BYTES: usize = 16 * 1024;

/// Everything the WebSocket endpoint needs, shared by all connections.
pub struct Chat {
    /// This instance's rooms and their members.
    hub: Hub,
    /// The other instances (in-process: none).
    bus: Bus,
    /// Who is in which room across instances.
    presence: Presence,
    /// Tokens and sign-outs.
    sessions: Arc<Sessions>,
    /// Per-user message and join/leave rates.
    limits: Arc<RateLimits>,
    /// Open sockets per user.
    sockets_per_user: Arc<KeyedCounter<Arc<str>>>,
    /// Origins allowed to connect; empty means the site's own.
    allowed_origins: Vec<String>,
    /// Whether `GET /ws` is offered (`PULSE_TRANSPORTS`).
    websocket: bool,
    /// Whether the HTTP fallback is offered (`PULSE_TRANSPORTS`).
    http: bool,
    /// Period of the server's pings.
    ping_interval: Duration,
    /// Bytes that may wait in one connection's outbound queue.
    queue_bytes: usize,
    /// Source of connection ids.
    next_id: AtomicU64,
    /// Cancelled at shutdown: every socket closes with 1001.
    shutdown: CancellationToken,
    /// Tracks every open socket. Once upgraded, a socket is no longer
    /// axum's, so the server waits on this at shutdown for the close frames
    /// to go out.
    sockets: TaskTracker,
    /// The HTTP fallback's connections held here, by name.
    inboxes: std::sync::Mutex<std::collections::HashMap<String, fallback::Inbox>>,
}

/// What [`Chat::new`] is built from besides the settings.
pub struct ChatParts {
    /// The other instances.
    pub bus: Bus,
    /// Presence across instances.
    pub presence: Presence,
    /// Tokens and sign-outs.
    pub sessions: Arc<Sessions>,
    /// Per-user rates (shared with notifications).
    pub limits: Arc<RateLimits>,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
    /// Where sockets run.
    pub sockets: TaskTracker,
}

impl Chat {
    /// The chat service for these settings.
    pub fn new(app: &AppSettings, parts: ChatParts) -> Self {
        Chat {
            hub: Hub::new(app.max_rooms, app.room_idle, app.rooms_per_user),
            bus: parts.bus,
            presence: parts.presence,
            sessions: parts.sessions,
            limits: parts.limits,
            sockets_per_user: KeyedCounter::new(app.max_sockets_per_user),
            allowed_origins: app.allowed_origins.clone(),
            websocket: app.transports.contains(&ChatTransport::Websocket),
            http: app.transports.contains(&ChatTransport::Http),
            ping_interval: app.ws_ping_interval,
            queue_bytes: app.ws_queue_bytes,
            next_id: AtomicU64::new(1),
            shutdown: parts.shutdown,
            sockets: parts.sockets,
            inboxes: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Number of rooms held (for the dashboard).
    pub fn room_count(&self) -> usize {
        self.hub.room_count()
    }

    /// Adds connection `id` of `user` to `room` and answers it with `joined`
    /// (with several instances: the history and members of all of them), or
    /// says why not.
    async fn join(
        &self,
        id: ConnId,
        user: &User,
        outbox: &Outbox,
        room: &str,
    ) -> Result<(), Box<ServerMessage>> {
        // Boxed: the Redis round trips' state is large, and inline it would
        // be part of every idle connection's task for its lifetime.
        let shared = if self.bus.status() == BusStatus::Local || !is_valid_room(room) {
            None
        } else {
            let member = user.member();
            let (history, members) = Box::pin(async {
                tokio::join!(self.bus.history(room), self.presence.enter(room, &member))
            })
            .await;
            match (history, members) {
                (Some(history), Some(members)) => Some((history, members)),
                (_, Some(_)) => {
                    self.presence.leave(room, &member);
                    None
                }
                _ => None,
            }
        };
        let marked_present = shared.is_some();
        let joined = self.hub.join(id, user, outbox, room, shared);
        if joined.is_err() && marked_present {
            // The room could not be created here, so none of this user's
            // connections is in it: undo the mark.
            self.presence.leave(room, &user.member());
        }
        joined
    }

    /// Posts `text` by `user` in `room`, here and on every instance.
    fn say(&self, id: ConnId, user: &User, room: &str, text: &str) {
        if let Some(message) = self.hub.say(id, user, room, text) {
            self.bus.remember(&message);
            self.bus.publish(BusEvent::Room {
                room: room.to_string(),
                msg: ServerMessage::Message(message),
            });
        }
    }

    /// Runs the chat's background work until shutdown: presence changes
    /// gathered every [`hub::PRESENCE_INTERVAL`] and published; room frames
    /// from other instances delivered; presence refreshed and the members of
    /// dead instances announced gone; idle rooms dropped every `every`.
    pub async fn run(self: Arc<Self>, mut incoming: Incoming, every: Duration) {
        let mut presence = tokio::time::interval(hub::PRESENCE_INTERVAL);
        presence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut refresh = tokio::time::interval(self.presence.period());
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval(every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = presence.tick() => self.publish_presence(),
                event = incoming.recv() => match event.as_deref() {
                    Some(BusEvent::Room { room, msg }) => self.hub.deliver_remote(room, msg),
                    Some(BusEvent::Frames { conn, user_id, frames }) => {
                        // Posted on another instance for a connection held here.
                        let _ = self.deliver(conn, user_id, frames.clone());
                    }
                    Some(_) => {}
                    None => return,
                },
                _ = refresh.tick() => {
                    let local = self.hub.local_presence();
                    for (room, member) in self.presence.refresh(&local).await {
                        self.hub.deliver_remote(&room, &ServerMessage::Presence {
                            room: room.clone(),
                            joined: Vec::new(),
                            left: vec![member],
                            timestamp: now_ms(),
                        });
                    }
                }
                _ = sweep.tick() => {
                    let dropped = self.hub.sweep();
                    if dropped > 0 {
                        tracing::debug!(dropped, "dropped idle rooms");
                    }
                    self.limits.forget_quiet();
                }
            }
        }
    }

    /// Sends the gathered presence changes to local members and the other
    /// instances, and takes those who left off the shared presence.
    fn publish_presence(&self) {
        for (room, frame) in self.hub.flush_presence() {
            if let ServerMessage::Presence { left, .. } = &frame {
                for member in left {
                    self.presence.leave(&room, member);
                }
            }
            self.bus.publish(BusEvent::Room { room, msg: frame });
        }
    }

    /// Whether a browser page from `origin` may open a socket on `host`.
    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        if self.allowed_origins.is_empty() {
            is_own_origin(origin, host)
        } else {
            let origin = origin.trim_end_matches('/');
            self.allowed_origins.iter().any(|o| o == origin)
        }
    }
}

/// `GET /ws`: 403 for a foreign origin, 401 without a valid token, 429 for a
/// user who holds too many sockets, else the upgrade to a chat connection.
pub async fn upgrade(
    State(chat): State<Arc<Chat>>,
    Extension(admitted): Extension<Admitted>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    ws: MaybeUpgrade,
) -> Response {
    if !chat.websocket {
        return turned_off("WebSockets");
    }
    let claims = match identify(&chat, &admitted, &uri, &headers).await {
        Ok(claims) => claims,
        Err(refused) => return refused,
    };
    let ws = match ws.0 {
        Ok(ws) => ws,
        Err(rejection) => {
            metrics::upgrade_rejected("not_websocket");
            return rejection;
        }
    };
    let Some((user, places)) = take_place(&chat, admitted, &claims) else {
        return too_many_sockets();
    };
    let id = chat.next_id.fetch_add(1, Ordering::Relaxed);
    // Counted from now, so a sign-out from here on closes the socket.
    let session = chat.sessions.hold(&claims.sid);
    // Frames up to 16 KiB are read; anything larger is refused by the codec
    // (and the connection closed with 1009). Buffers are sized for chat frames,
    // not tungstenite's 128 KiB defaults: idle sockets stay small (the read
    // buffer grows for a larger frame and is the largest part of an idle
    // connection; 1 KiB holds any ordinary chat frame). Frames the
    // writer feeds are held up to WRITE_BATCH_BYTES and sent by one flush; the
    // buffer only grows that far for a client that has a burst queued.
    ws.max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .read_buffer_size(1024)
        .write_buffer_size(WRITE_BATCH_BYTES)
        .on_upgrade(move |socket| {
            connection::run(socket, chat, id, user, session, claims.exp, places)
        })
}

/// The first checks of every chat connection, whatever its transport: 403
/// for a foreign origin (a cookie must never let another site in), 401
/// without a valid token. The host is the one the client asked for (a
/// trusted proxy's X-Forwarded-Host).
async fn identify(
    chat: &Chat,
    admitted: &Admitted,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
) -> Result<Claims, Response> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = admitted.client.host.as_deref();
        let allowed = origin
            .to_str()
            .is_ok_and(|origin| chat.origin_allowed(origin, host));
        if !allowed {
            metrics::upgrade_rejected("origin");
            return Err((StatusCode::FORBIDDEN, "origin not allowed").into_response());
        }
    }
    let verified = match token_from(headers, uri.query()) {
        Some(token) => chat.sessions.verify(&token).await,
        None => Err(AuthError::Missing),
    };
    verified.map_err(|e| {
        metrics::upgrade_rejected(match e {
            AuthError::Missing => "no_token",
            AuthError::Invalid(_) => "bad_token",
        });
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            e.to_string(),
        )
            .into_response()
    })
}

/// One of the user's places (none when they hold as many connections as
/// they may: answer [`too_many_sockets`]), with the places the connection
/// was admitted with: it keeps them for its whole life.
fn take_place(
    chat: &Chat,
    admitted: Admitted,
    claims: &Claims,
) -> Option<(User, connection::Places)> {
    let user = User {
        id: Arc::from(claims.sub.as_str()),
        name: Arc::from(claims.name.as_str()),
    };
    let user_slot = chat.sockets_per_user.try_acquire(user.id.clone())?;
    let places = connection::Places {
        _connection: admitted.hold,
        _stream: admitted.stream,
        _user: user_slot,
    };
    Some((user, places))
}

/// 404: the operator turned this transport off (`PULSE_TRANSPORTS`).
fn turned_off(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("{what} are turned off on this server"),
    )
        .into_response()
}

/// Tells one connection, whatever its transport, whether the other servers
/// can be reached (`health` frames).
pub(super) struct HealthWatch {
    /// The bus's answer, as it changes.
    reachable: tokio::sync::watch::Receiver<bool>,
}

impl HealthWatch {
    /// Watches from now on; tells `outbox` at once if the other servers are
    /// out of reach.
    fn start(chat: &Chat, outbox: &Outbox) -> HealthWatch {
        let mut reachable = chat.bus.reachable();
        if !*reachable.borrow_and_update() {
            outbox.send(&ServerMessage::Health {
                other_servers: false,
            });
        }
        HealthWatch { reachable }
    }

    /// The next change, as the frame that tells it (never, once the bus is
    /// gone at shutdown).
    async fn changed(&mut self) -> ServerMessage {
        if self.reachable.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        ServerMessage::Health {
            other_servers: *self.reachable.borrow_and_update(),
        }
    }
}

/// 429: the user holds as many connections as they may.
fn too_many_sockets() -> Response {
    metrics::refused("per_user");
    metrics::upgrade_rejected("per_user");
    refusal(
        StatusCode::TOO_MANY_REQUESTS,
        "too many open sockets for this user",
    )
}

/// The upgrade, or the response that says why the request is not one; taken
/// this way so that auth is checked (and answered) before the upgrade headers.
pub struct MaybeUpgrade(Result<WebSocketUpgrade, Response>);

impl<S: Send + Sync> FromRequestParts<S> for MaybeUpgrade {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(MaybeUpgrade(
            WebSocketUpgrade::from_request_parts(parts, state)
                .await
                .map_err(IntoResponse::into_response),
        ))
    }
}
