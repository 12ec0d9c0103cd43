//! Chat and rooms over a WebSocket at `GET /ws`.
//!
//! - [`upgrade`] checks the origin and the token, then upgrades;
//! - [`connection`] runs one socket: a reader loop here and a writer task
//!   that drains the connection's bounded queue;
//! - [`hub`] holds the rooms and delivers to their members.

pub mod connection;
pub mod hub;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Extension, FromRequestParts, OriginalUri, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::protocol::MAX_FRAME_BYTES;
use crate::server::admission::{refusal, KeyedCounter};
use crate::server::auth::{token_from, Auth, AuthError, Claims};
use crate::server::broker::Broker;
use crate::server::config::AppSettings;
use crate::server::forwarded::is_own_origin;
use crate::server::listener::Admitted;
use crate::server::metrics;
use hub::{Hub, User};

/// How many bytes of frames a connection's writer gathers before it must
/// write (it also writes whenever its queue runs dry).
const WRITE_BATCH_BYTES: usize = 16 * 1024;

/// Everything the WebSocket endpoint needs, shared by all connections.
pub struct Chat {
    /// The rooms.
    pub hub: Hub,
    /// Other instances (in-process: none).
    pub broker: Broker,
    /// Checks tokens.
    pub auth: Arc<Auth>,
    /// Chat messages per user (id) per minute.
    messages: DefaultKeyedRateLimiter<Arc<str>>,
    /// Joins and leaves per user (id) per minute (each one notifies a whole room).
    room_changes: DefaultKeyedRateLimiter<Arc<str>>,
    /// The sign-in sessions with open sockets here, to close those sockets
    /// when the session is signed out. One signal per session, shared by
    /// its sockets.
    sessions: Mutex<HashMap<Arc<str>, OpenSession>>,
    /// Open sockets per user.
    sockets_per_user: Arc<KeyedCounter<Arc<str>>>,
    /// Origins allowed to connect; empty means the site's own.
    allowed_origins: Vec<String>,
    /// Period of the server's pings.
    pub ping_interval: Duration,
    /// Bytes that may wait in one connection's outbound queue.
    pub queue_bytes: usize,
    /// Source of connection ids.
    next_id: AtomicU64,
    /// Cancelled at shutdown: every socket closes with 1001.
    pub shutdown: CancellationToken,
    /// Tracks every open socket (and the feed streams served on theirs).
    /// Once upgraded, a socket is no longer axum's, so the server waits on
    /// this at shutdown for the close frames to go out.
    pub sockets: TaskTracker,
}

impl Chat {
    /// The chat service for these settings.
    pub fn new(
        app: &AppSettings,
        auth: Arc<Auth>,
        broker: Broker,
        shutdown: CancellationToken,
        sockets: TaskTracker,
    ) -> Self {
        let per_min = NonZeroU32::new(app.rate_limit_per_min).unwrap_or(NonZeroU32::MIN);
        Chat {
            hub: Hub::new(
                app.max_rooms,
                app.room_idle,
                app.rooms_per_user,
                broker.clone(),
            ),
            broker,
            auth,
            messages: RateLimiter::keyed(Quota::per_minute(per_min)),
            room_changes: RateLimiter::keyed(Quota::per_minute(per_min)),
            sessions: Mutex::new(HashMap::new()),
            sockets_per_user: KeyedCounter::new(app.max_sockets_per_user),
            allowed_origins: app.allowed_origins.clone(),
            ping_interval: app.ws_ping_interval,
            queue_bytes: app.ws_queue_bytes,
            next_id: AtomicU64::new(1),
            shutdown,
            sockets,
        }
    }

    /// `Ok` if `user` may send another message (or notification) now, else
    /// how long to wait; say so with [`too_many_messages`].
    pub fn check_message_rate(&self, user: &Arc<str>) -> Result<(), Duration> {
        Self::check(&self.messages, user)
    }

    /// `Ok` if `user` may join or leave a room now, else how long to wait.
    pub fn check_room_change_rate(&self, user: &Arc<str>) -> Result<(), Duration> {
        Self::check(&self.room_changes, user)
    }

    fn check(limiter: &DefaultKeyedRateLimiter<Arc<str>>, user: &Arc<str>) -> Result<(), Duration> {
        limiter
            .check_key(user)
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    /// Periodic upkeep: sends gathered presence changes every
    /// [`hub::PRESENCE_INTERVAL`]; every `every`, drops idle rooms and forgets
    /// expired revocations and the rate-limit state of quiet users, so none
    /// of them grows without bound.
    pub async fn run_upkeep(self: Arc<Self>, every: Duration) {
        let mut presence = tokio::time::interval(hub::PRESENCE_INTERVAL);
        presence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = presence.tick() => {
                    self.hub.flush_presence();
                    continue;
                }
                _ = tick.tick() => {}
            }
            let dropped = self.hub.sweep();
            if dropped > 0 {
                tracing::debug!(dropped, "dropped idle rooms");
            }
            for limiter in [&self.messages, &self.room_changes] {
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
            self.auth.forget_expired();
        }
    }

    /// The claims of `token` if it is valid and its session was not signed
    /// out, here or (with Redis) on any instance.
    pub async fn verify_session(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = self.auth.verify(token)?;
        if self.broker.is_revoked(&claims.sid).await {
            self.auth.revoke(&claims.sid, claims.exp);
            return Err(AuthError::Invalid("the session was signed out".into()));
        }
        Ok(claims)
    }

    /// Signs session `sid` (whose tokens expire at `exp`) out everywhere: its
    /// token is refused from now on, and its open sockets close with 4001,
    /// on this instance and (through the bus) on every other.
    pub fn revoke_session(&self, sid: &str, exp: u64) {
        self.auth.revoke(sid, exp);
        self.broker.revoke(sid, exp);
        self.close_session(sid);
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

    /// Closes this instance's sockets of session `sid`.
    pub fn close_session(&self, sid: &str) {
        if let Some(open) = self.sessions().remove(sid) {
            open.signed_out.cancel();
        }
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<Arc<str>, OpenSession>> {
        // Each update is one complete insert or remove.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a socket of session `sid`; its signal is cancelled when the
    /// session is signed out. Returns the session's shared key and signal.
    fn track_session(&self, sid: &str) -> (Arc<str>, CancellationToken) {
        let mut sessions = self.sessions();
        if let Some((key, open)) = sessions.get_key_value(sid) {
            let shared = (key.clone(), open.signed_out.clone());
            if let Some(open) = sessions.get_mut(sid) {
                open.sockets += 1;
            }
            return shared;
        }
        let key: Arc<str> = Arc::from(sid);
        let signed_out = CancellationToken::new();
        sessions.insert(
            key.clone(),
            OpenSession {
                signed_out: signed_out.clone(),
                sockets: 1,
            },
        );
        (key, signed_out)
    }

    /// Forgets a socket of session `sid` (it closed), and the session with
    /// its last socket.
    fn untrack_session(&self, sid: &str) {
        let mut sessions = self.sessions();
        if let Some(open) = sessions.get_mut(sid) {
            open.sockets -= 1;
            if open.sockets == 0 {
                sessions.remove(sid);
            }
        }
    }
}

/// A sign-in session with sockets open on this instance.
struct OpenSession {
    /// Cancelled when the session is signed out: its sockets close.
    signed_out: CancellationToken,
    /// How many sockets it has here.
    sockets: usize,
}

/// What a user over the message rate limit is told, on the socket and at
/// `POST /api/notifications` alike.
pub fn too_many_messages(wait: Duration) -> String {
    format!(
        "too many messages; try again in {} ms",
        wait.as_millis().max(1)
    )
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
    // The origin first: a cookie must never let another site in. The host is
    // the one the client asked for (a trusted proxy's X-Forwarded-Host).
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = admitted.client.host.as_deref();
        let allowed = origin
            .to_str()
            .is_ok_and(|origin| chat.origin_allowed(origin, host));
        if !allowed {
            metrics::upgrade_rejected("origin");
            return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
        }
    }
    let verified = match token_from(&headers, uri.query()) {
        Some(token) => chat.verify_session(&token).await,
        None => Err(AuthError::Missing),
    };
    let claims = match verified {
        Ok(claims) => claims,
        Err(e) => {
            metrics::upgrade_rejected(match e {
                AuthError::Missing => "no_token",
                AuthError::Invalid(_) => "bad_token",
            });
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                e.to_string(),
            )
                .into_response();
        }
    };
    let ws = match ws.0 {
        Ok(ws) => ws,
        Err(rejection) => {
            metrics::upgrade_rejected("not_websocket");
            return rejection;
        }
    };
    let user = User {
        id: Arc::from(claims.sub),
        name: Arc::from(claims.name),
    };
    let Some(user_slot) = chat.sockets_per_user.try_acquire(user.id.clone()) else {
        metrics::refused("per_user");
        metrics::upgrade_rejected("per_user");
        return refusal(
            StatusCode::TOO_MANY_REQUESTS,
            "too many open sockets for this user",
        );
    };
    // The socket keeps the places it was admitted with for its whole life.
    let places = connection::Places {
        _connection: admitted.hold,
        _stream: admitted.stream,
        _user: user_slot,
    };
    let id = chat.next_id.fetch_add(1, Ordering::Relaxed);
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
            connection::run(socket, chat, id, user, &claims.sid, claims.exp, places)
        })
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
