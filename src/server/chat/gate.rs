//! What every chat connection passes before it opens, whatever its
//! transport: the origin (a cookie must never let another site in), the
//! token (and that its session was not signed out), the user's cap; and
//! what it holds of the server's limits while it is open.

use std::sync::Arc;

use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::hub::User;
use super::outbox::Outbox;
use super::Chat;
use crate::protocol::ServerMessage;
use crate::server::admission::{refusal, Slot};
use crate::server::auth::{token_from, AuthError, Claims};
use crate::server::forwarded::is_own_origin;
use crate::server::listener::{Admission, Admitted};
use crate::server::metrics;

/// What a connection holds of the server's limits, given back when it closes.
pub struct Places {
    /// Its connection's place (server-wide and per address); none for a
    /// fallback connection attached to another's stream.
    pub _connection: Option<Arc<Admission>>,
    /// Through a trusted proxy: its place under the forwarded address.
    pub _stream: Option<Arc<Admission>>,
    /// One of its user's connections.
    pub _user: Slot<Arc<str>>,
}

impl Chat {
    /// Whether a browser page from `origin` may connect on `host`.
    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        if self.allowed_origins.is_empty() {
            is_own_origin(origin, host)
        } else {
            let origin = origin.trim_end_matches('/');
            self.allowed_origins.iter().any(|o| o == origin)
        }
    }
}

/// The first checks of every chat connection: 403 for a foreign origin,
/// 401 without a valid token. The host is the one the client asked for (a
/// trusted proxy's X-Forwarded-Host).
pub(super) async fn identify(
    chat: &Chat,
    admitted: &Admitted,
    uri: &Uri,
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
pub(super) fn take_place(
    chat: &Chat,
    admitted: Admitted,
    claims: &Claims,
) -> Option<(User, Places)> {
    let user = User {
        id: Arc::from(claims.sub.as_str()),
        name: Arc::from(claims.name.as_str()),
    };
    let user_slot = chat.sockets_per_user.try_acquire(user.id.clone())?;
    let places = Places {
        _connection: Some(admitted.hold),
        _stream: admitted.stream,
        _user: user_slot,
    };
    Some((user, places))
}

/// 404: the operator turned this transport off (`PULSE_TRANSPORTS`).
pub(super) fn turned_off(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("{what} are turned off on this server"),
    )
        .into_response()
}

/// 429: the user holds as many connections as they may.
pub(super) fn too_many_sockets() -> Response {
    metrics::refused("per_user");
    metrics::upgrade_rejected("per_user");
    refusal(
        StatusCode::TOO_MANY_REQUESTS,
        "too many open sockets for this user",
    )
}

/// Tells one connection whether the other servers can be reached
/// (`health` frames).
pub(super) struct HealthWatch {
    /// The broker's answer, as it changes.
    reachable: tokio::sync::watch::Receiver<bool>,
}

impl HealthWatch {
    /// Watches from now on; tells `outbox` at once if the other servers are
    /// out of reach.
    pub(super) fn start(chat: &Chat, outbox: &Outbox) -> HealthWatch {
        let mut reachable = chat.broker.reachable();
        if !*reachable.borrow_and_update() {
            outbox.send(&ServerMessage::Health {
                other_servers: false,
            });
        }
        HealthWatch { reachable }
    }

    /// The next change, as the frame that tells it (never, once the broker
    /// is gone at shutdown).
    pub(super) async fn changed(&mut self) -> ServerMessage {
        if self.reachable.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        ServerMessage::Health {
            other_servers: *self.reachable.borrow_and_update(),
        }
    }
}
