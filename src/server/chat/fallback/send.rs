//! `POST /api/chat/send`: frames posted for a fallback connection, handed
//! to it here or sent to the instance that holds it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::super::gate::turned_off;
use super::super::Chat;
use super::inbox::Delivery;
use crate::protocol::{ErrorCode, SendBody, MAX_FRAMES_PER_SEND, MAX_FRAME_BYTES};
use crate::server::auth::{bearer_token, cookie_token, AuthError};
use crate::server::cluster::{Control, RETRY_UNAVAILABLE};
use crate::server::limits::too_many_messages;
use crate::server::metrics;

/// `POST /api/chat/send`: `202` once the frames reached their connection;
/// `400` for a body that is not a [`SendBody`] of 1 to
/// [`MAX_FRAMES_PER_SEND`] frames, `401` without a valid token, `403` for
/// another user's connection, `404` for one that is gone, `413` for a body
/// over 64 KiB, `429` when the user posts too fast or the connection's
/// queue is full, `503` when the instance holding it cannot be reached.
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
    match chat
        .inboxes
        .deliver(&posted.conn, &claims.sub, posted.frames.clone())
    {
        Delivery::Accepted => StatusCode::ACCEPTED.into_response(),
        Delivery::NotYours => (StatusCode::FORBIDDEN, "not your connection").into_response(),
        Delivery::Full => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            "the connection has too many frames waiting",
        )
            .into_response(),
        Delivery::Unknown => cross(&chat, posted, claims.sub).await,
    }
}

/// Sends a post for a connection that is not here to the instance its name
/// says holds it.
async fn cross(chat: &Chat, posted: SendBody, user_id: String) -> Response {
    let gone = || {
        (
            StatusCode::NOT_FOUND,
            "no such connection: open a new stream",
        )
            .into_response()
    };
    let Some(instance) = posted.conn.split_once('.').map(|(i, _)| i.to_string()) else {
        return gone();
    };
    if instance == chat.broker.instance() {
        return gone();
    }
    let control = Control::Frames {
        conn: posted.conn,
        user_id,
        frames: posted.frames,
    };
    match chat.broker.send_to(&instance, &control).await {
        Ok(true) => StatusCode::ACCEPTED.into_response(),
        Ok(false) => gone(),
        Err(_) => {
            let wait = RETRY_UNAVAILABLE;
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, wait.as_secs().max(1).to_string())],
                axum::Json(json!({
                    "code": ErrorCode::Unavailable,
                    "message": "the server that holds this connection cannot be reached; \
                                nothing was sent: post the same frames again later",
                    "retry_after_ms": wait.as_millis() as u64,
                })),
            )
                .into_response()
        }
    }
}
