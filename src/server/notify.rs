//! Notifications: a signed-in user's text pushed into the live feed of every
//! client, from `POST /api/notifications` (Bearer JWT) or the
//! `publish_notification` server function (session cookie). Same text rule
//! and rate limit as chat messages, keyed by the user's id.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::protocol::{ErrorCode, FeedEvent};
use crate::server::auth::{bearer_token, cookie_token};
use crate::server::clock::now_ms;
use crate::server::cluster::{Broker, Control, RETRY_UNAVAILABLE};
use crate::server::feed::Feed;
use crate::server::limits::{too_many_messages, RateLimits};
use crate::server::metrics;
use crate::server::sessions::Sessions;
use crate::server::text;

/// Publishes notifications into the feed.
pub struct Notifier {
    /// Where they go on this instance.
    feed: Arc<Feed>,
    /// Where they go for the other instances.
    broker: Arc<dyn Broker>,
    /// Checks tokens.
    sessions: Arc<Sessions>,
    /// The per-user message rate, shared with chat.
    limits: Arc<RateLimits>,
}

/// A published notification.
#[derive(Debug, Clone)]
pub struct Published {
    /// Its id (also in the event).
    pub id: String,
    /// Its SSE id in the feed.
    pub event_id: u64,
}

/// Why a notification was refused.
#[derive(Debug, Clone)]
pub enum NotifyError {
    /// No valid token.
    Unauthorized(String),
    /// Bad body or text.
    Invalid(String),
    /// Over the user's rate limit.
    RateLimited(Duration),
    /// The other instances cannot be reached: nothing was published.
    Unavailable,
}

impl NotifyError {
    /// A sentence for the user.
    pub fn message(&self) -> String {
        match self {
            NotifyError::Unauthorized(why) => why.clone(),
            NotifyError::Invalid(why) => why.clone(),
            NotifyError::RateLimited(wait) => too_many_messages(*wait),
            NotifyError::Unavailable => {
                "the other servers cannot be reached; nothing was published: try again shortly"
                    .into()
            }
        }
    }
}

/// The JSON body of `POST /api/notifications`.
#[derive(Deserialize)]
struct Body {
    text: String,
}

impl Notifier {
    /// Notifications into `feed` (and through `broker` into every other
    /// instance's), from users `sessions` verifies, within `limits`.
    pub fn new(
        feed: Arc<Feed>,
        broker: Arc<dyn Broker>,
        sessions: Arc<Sessions>,
        limits: Arc<RateLimits>,
    ) -> Self {
        Notifier {
            feed,
            broker,
            sessions,
            limits,
        }
    }

    /// Publishes `text` as user `user_id` called `name`, into every feed:
    /// refused while the other instances cannot be reached, so that it is
    /// never shown here alone as if everyone had it.
    pub async fn publish(
        &self,
        user_id: &str,
        name: &str,
        text: &str,
    ) -> Result<Published, NotifyError> {
        let text = text::message_text(text).map_err(|why| {
            metrics::invalid_message();
            NotifyError::Invalid(why)
        })?;
        if let Err(wait) = self.limits.message(&Arc::from(user_id)) {
            metrics::rate_limited();
            return Err(NotifyError::RateLimited(wait));
        }
        if !*self.broker.reachable().borrow() {
            return Err(NotifyError::Unavailable);
        }
        let id = uuid::Uuid::now_v7().simple().to_string();
        let event = FeedEvent::Notification {
            id: id.clone(),
            user_id: user_id.to_string(),
            user: name.to_string(),
            text: text.to_string(),
            timestamp: now_ms(),
        };
        let event_id = self.feed.publish(event.clone());
        let control = Control::Feed {
            event,
            id: event_id,
            origin: self.broker.instance().to_string(),
        };
        if self.broker.broadcast(&control).await.is_err() {
            // Lost the others between the check and now: it is here only.
            tracing::warn!("a notification could not reach the other instances");
        }
        Ok(Published { id, event_id })
    }

    /// Publishes as the user of the request's session cookie.
    pub async fn publish_from_session(
        &self,
        headers: &HeaderMap,
        text: &str,
    ) -> Result<Published, NotifyError> {
        let token = cookie_token(headers)
            .ok_or_else(|| NotifyError::Unauthorized("sign in to publish".into()))?;
        let claims = self
            .sessions
            .verify(&token)
            .await
            .map_err(|e| NotifyError::Unauthorized(e.to_string()))?;
        self.publish(&claims.sub, &claims.name, text).await
    }
}

impl NotifyError {
    /// The HTTP status that answers it.
    pub fn status(&self) -> StatusCode {
        match self {
            NotifyError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            NotifyError::Invalid(_) => StatusCode::BAD_REQUEST,
            NotifyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            NotifyError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// `POST /api/notifications` with `Authorization: Bearer <jwt>` and
/// `{"text": "…"}`: `202` with the notification's ids, or `401`, `400` or
/// `429` (with `Retry-After`) and `{"code", "message"}`.
pub async fn post(
    State(notifier): State<Arc<Notifier>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(token) = bearer_token(&headers) else {
        return refuse(NotifyError::Unauthorized(
            "send Authorization: Bearer <token>".into(),
        ));
    };
    let claims = match notifier.sessions.verify(&token).await {
        Ok(claims) => claims,
        Err(e) => return refuse(NotifyError::Unauthorized(e.to_string())),
    };
    let text = match serde_json::from_slice::<Body>(&body) {
        Ok(body) => body.text,
        Err(e) => {
            metrics::invalid_message();
            return refuse(NotifyError::Invalid(format!(
                "expected {{\"text\": \"…\"}}: {e}"
            )));
        }
    };
    match notifier.publish(&claims.sub, &claims.name, &text).await {
        Ok(p) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "id": p.id, "event_id": p.event_id })),
        )
            .into_response(),
        Err(e) => refuse(e),
    }
}

fn refuse(e: NotifyError) -> Response {
    let message = e.message();
    match e {
        NotifyError::Unauthorized(_) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer".to_string())],
            axum::Json(json!({ "code": "unauthorized", "message": message })),
        )
            .into_response(),
        NotifyError::Invalid(_) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "code": ErrorCode::InvalidMessage, "message": message })),
        )
            .into_response(),
        NotifyError::RateLimited(wait) => {
            let ms = wait.as_millis().max(1) as u64;
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, ms.div_ceil(1000).to_string())],
                axum::Json(json!({
                    "code": ErrorCode::RateLimited,
                    "message": message,
                    "retry_after_ms": ms,
                })),
            )
                .into_response()
        }
        NotifyError::Unavailable => {
            let ms = RETRY_UNAVAILABLE.as_millis() as u64;
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, ms.div_ceil(1000).to_string())],
                axum::Json(json!({
                    "code": ErrorCode::Unavailable,
                    "message": message,
                    "retry_after_ms": ms,
                })),
            )
                .into_response()
        }
    }
}
