//! `POST /api/chat/send`: frames posted for a fallback connection, handed
//! to it here or sent to the instance that holds it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::super::Chat;
use super::inbox::Delivery;
use crate::protocol::{SendBody, MAX_FRAMES_PER_SEND, MAX_FRAME_BYTES};
use crate::server::admission::address_key;
use crate::server::caller::{self, Carrier};
use crate::server::cluster::Control;
use crate::server::limits::too_many_messages;
use crate::server::listener::Admitted;
use crate::server::metrics;
use crate::server::refusal::Refused;

/// `POST /api/chat/send`: `202` once the frames reached their connection;
/// `400` for a body that is not a [`SendBody`] of 1 to
/// [`MAX_FRAMES_PER_SEND`] frames, `401` without a valid token, `403` for
/// another user's connection, `404` for one that is gone, `413` for a body
/// over 64 KiB, `429` when the user (or their address) posts too fast or the
/// connection's queue is full, `503` when the instance holding it cannot be
/// reached.
pub async fn send(
    State(chat): State<Arc<Chat>>,
    Extension(admitted): Extension<Admitted>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refused> {
    if !chat.http {
        return Err(Refused::turned_off("HTTP fallback posts"));
    }
    let claims = caller::identify(&chat.sessions, &headers, None, Carrier::BearerOrCookie).await?;
    let posted: SendBody = serde_json::from_slice(&body).map_err(|e| {
        metrics::invalid_message();
        Refused::invalid(format!(
            "expected {{\"conn\": …, \"frames\": [frames]}}: {e}"
        ))
    })?;
    if posted.frames.is_empty() || posted.frames.len() > MAX_FRAMES_PER_SEND {
        return Err(Refused::invalid(format!(
            "1 to {MAX_FRAMES_PER_SEND} frames per post"
        )));
    }
    if posted
        .frames
        .iter()
        .any(|f| serde_json::to_string(f).map_or(true, |json| json.len() > MAX_FRAME_BYTES))
    {
        return Err(Refused::too_large("a frame is larger than 16 KiB"));
    }
    let user_id: Arc<str> = Arc::from(claims.sub.as_str());
    let address = address_key(admitted.client.ip);
    if let Err(wait) = chat.limits.post(&user_id, address) {
        metrics::rate_limited();
        return Err(Refused::rate_limited(too_many_messages(wait), wait));
    }
    match chat
        .inboxes
        .deliver(&posted.conn, &claims.sub, posted.frames.clone())
    {
        Delivery::Accepted => Ok(StatusCode::ACCEPTED.into_response()),
        Delivery::NotYours => Err(Refused::forbidden("not your connection")),
        Delivery::Full => Err(Refused::rate_limited(
            "the connection has too many frames waiting",
            crate::server::cluster::RETRY_UNAVAILABLE,
        )),
        Delivery::Unknown => cross(&chat, posted, claims.sub).await,
    }
}

/// Sends a post for a connection that is not here to the instance its name
/// says holds it.
async fn cross(chat: &Chat, posted: SendBody, user_id: String) -> Result<Response, Refused> {
    let gone = || Refused::not_found("no such connection: open a new stream");
    let instance = posted
        .conn
        .split_once('.')
        .map(|(i, _)| i.to_string())
        .ok_or_else(gone)?;
    if instance == chat.broker.instance() {
        return Err(gone());
    }
    let control = Control::Frames {
        conn: posted.conn,
        user_id,
        frames: posted.frames,
    };
    match chat.broker.send_to(&instance, &control).await {
        Ok(true) => Ok(StatusCode::ACCEPTED.into_response()),
        Ok(false) => Err(gone()),
        Err(_) => Err(Refused::unavailable(
            "the server that holds this connection cannot be reached; nothing was sent: \
             post the same frames again later",
        )),
    }
}
