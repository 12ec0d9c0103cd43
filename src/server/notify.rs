//! Notifications: a signed-in user's text pushed into the live feed of every
//! client, from `POST /api/notifications` (Bearer JWT) or the
//! `publish_notification` server function (session cookie). Same text rule
//! and per-user budget as chat messages, and a budget per client address of
//! their own (`PULSE_NOTIFY_PER_IP_PER_MIN`).

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::protocol::FeedEvent;
use crate::server::admission::address_key;
use crate::server::caller::{self, Carrier};
use crate::server::clock::now_ms;
use crate::server::cluster::{Broker, Control};
use crate::server::feed::Feed;
use crate::server::limits::{too_many_messages, RateLimits};
use crate::server::listener::Admitted;
use crate::server::metrics;
use crate::server::refusal::Refused;
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

    /// Publishes `text` as user `user_id` called `name` (at client address
    /// `address`), into every feed: refused while the other instances cannot
    /// be reached, so that it is never shown here alone as if everyone had it.
    pub async fn publish(
        &self,
        user_id: &str,
        name: &str,
        text: &str,
        address: IpAddr,
    ) -> Result<Published, Refused> {
        let text = text::message_text(text).map_err(|why| {
            metrics::invalid_message();
            Refused::invalid(why)
        })?;
        if let Err(wait) = self.limits.notification(&Arc::from(user_id), address) {
            metrics::rate_limited();
            return Err(Refused::rate_limited(too_many_messages(wait), wait));
        }
        if !*self.broker.reachable().borrow() {
            return Err(Refused::unavailable(
                "the other servers cannot be reached; nothing was published: try again shortly",
            ));
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
        address: IpAddr,
    ) -> Result<Published, Refused> {
        let claims = caller::identify(&self.sessions, headers, None, Carrier::Cookie).await?;
        self.publish(&claims.sub, &claims.name, text, address).await
    }
}

/// `POST /api/notifications` with `Authorization: Bearer <jwt>` and
/// `{"text": "…"}`: `202` with the notification's ids, or the refusal
/// (`401`, `400`, `429`, `503`).
pub async fn post(
    State(notifier): State<Arc<Notifier>>,
    Extension(admitted): Extension<Admitted>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refused> {
    let claims = caller::identify(&notifier.sessions, &headers, None, Carrier::Bearer).await?;
    let text = match serde_json::from_slice::<Body>(&body) {
        Ok(body) => body.text,
        Err(e) => {
            metrics::invalid_message();
            return Err(Refused::invalid(format!(
                "expected {{\"text\": \"…\"}}: {e}"
            )));
        }
    };
    let address = address_key(admitted.client.ip);
    let p = notifier
        .publish(&claims.sub, &claims.name, &text, address)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({ "id": p.id, "event_id": p.event_id })),
    )
        .into_response())
}
