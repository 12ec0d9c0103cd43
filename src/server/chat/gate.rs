//! What every chat connection passes before it opens, whatever its
//! transport: the origin (a cookie must never let another site in), the
//! token (and that its session was not signed out), the user's cap; and
//! what it holds of the server's limits while it is open.

use std::sync::Arc;

use axum::http::{HeaderMap, Uri};

use super::outbox::Outbox;
use super::user::User;
use super::Chat;
use crate::protocol::{ErrorCode, ServerMessage};
use crate::server::admission::{address_key, Slot};
use crate::server::auth::{bearer_token, cookie_token, Claims};
use crate::server::caller::{self, Carrier};
use crate::server::listener::{Admission, Admitted};
use crate::server::metrics;
use crate::server::refusal::Refused;

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

/// The first checks of every chat connection: 403 for a page of a foreign
/// origin (a cookie must never let another site in), 401 without a valid
/// token, 503 while a session cannot be checked. The host is the one the
/// client asked for (a trusted proxy's forwarded host).
pub(super) async fn identify(
    chat: &Chat,
    admitted: &Admitted,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Claims, Refused> {
    if !chat
        .origins
        .admits(headers, admitted.client.host.as_deref())
    {
        metrics::upgrade_rejected("origin");
        return Err(Refused::forbidden("origin not allowed"));
    }
    let verified = caller::identify(&chat.sessions, headers, uri.query(), Carrier::Anywhere).await;
    verified.inspect_err(|refused| {
        metrics::upgrade_rejected(match refused.refusal.code {
            ErrorCode::Unavailable => "unavailable",
            _ if caller_sent_no_token(headers, uri) => "no_token",
            _ => "bad_token",
        });
    })
}

/// Whether the request carries no token at all (for the metric's reason).
fn caller_sent_no_token(headers: &HeaderMap, uri: &Uri) -> bool {
    let query = uri.query().unwrap_or_default();
    bearer_token(headers).is_none()
        && cookie_token(headers).is_none()
        && !query.split('&').any(|p| p.starts_with("token="))
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
        address: address_key(admitted.client.ip),
    };
    let user_slot = chat.sockets_per_user.try_acquire(user.id.clone())?;
    let places = Places {
        _connection: Some(admitted.hold),
        _stream: admitted.stream,
        _user: user_slot,
    };
    Some((user, places))
}

/// 429: the user holds as many connections as they may.
pub(super) fn too_many_sockets() -> Refused {
    metrics::refused("per_user");
    metrics::upgrade_rejected("per_user");
    Refused::too_many_connections("too many open sockets for this user")
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
