//! One answer for every refusal, on every route: a status, a stable `code`
//! (the same vocabulary as the chat's `error` and `nack` frames), a sentence,
//! and, where waiting helps, `Retry-After` — rounded up to whole seconds,
//! never below one, by one rule. The body is always
//! `{"code", "message", "retry_after_ms"?}` ([`Refusal`]), whatever the
//! route, documented in docs/protocol.md.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::protocol::{ErrorCode, Refusal, ServerMessage};

/// How long a client over a connection cap is told to wait.
pub const RETRY_CAPS: Duration = Duration::from_secs(5);

/// A refused request, as it is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body.
    pub refusal: Refusal,
    /// Whether the connection closes after the answer (a body that stopped
    /// arriving, or one too large to read, cannot be read past: a client
    /// that reused the connection would have its next request cut off).
    pub close: bool,
}

/// `Retry-After`'s value for `wait`: whole seconds, rounded up, at least one.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_millis().div_ceil(1000).max(1) as u64
}

impl Refused {
    /// A refusal with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Refused {
        Refused {
            status,
            refusal: Refusal {
                code,
                message: message.into(),
                retry_after_ms: None,
            },
            close: false,
        }
    }

    /// The same, with when to try again.
    pub fn retry_after(mut self, wait: Duration) -> Refused {
        self.refusal.retry_after_ms = Some(wait.as_millis().max(1) as u64);
        self
    }

    /// 401: no valid token (`WWW-Authenticate: Bearer`).
    pub fn unauthorized(why: impl Into<String>) -> Refused {
        Refused::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, why)
    }

    /// 403.
    pub fn forbidden(why: impl Into<String>) -> Refused {
        Refused::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, why)
    }

    /// 404.
    pub fn not_found(why: impl Into<String>) -> Refused {
        Refused::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, why)
    }

    /// 404: the operator turned this off.
    pub fn turned_off(what: &str) -> Refused {
        let why = format!("{what} are turned off on this server");
        Refused::new(StatusCode::NOT_FOUND, ErrorCode::TurnedOff, why)
    }

    /// 400: the request is not what the route takes.
    pub fn invalid(why: impl Into<String>) -> Refused {
        Refused::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidMessage, why)
    }

    /// 413: the rest of the body is not read, so the connection closes.
    pub fn too_large(why: impl Into<String>) -> Refused {
        Refused {
            close: true,
            ..Refused::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge, why)
        }
    }

    /// 429: over a rate; may pass after `wait`.
    pub fn rate_limited(why: impl Into<String>, wait: Duration) -> Refused {
        Refused::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited, why).retry_after(wait)
    }

    /// 429: the client holds as many connections as it may.
    pub fn too_many_connections(why: impl Into<String>) -> Refused {
        let status = StatusCode::TOO_MANY_REQUESTS;
        Refused::new(status, ErrorCode::TooManyConnections, why).retry_after(RETRY_CAPS)
    }

    /// 503: the server holds as many connections as it may.
    pub fn server_full() -> Refused {
        let why = "the server is at its connection limit";
        let status = StatusCode::SERVICE_UNAVAILABLE;
        Refused::new(status, ErrorCode::ServerFull, why).retry_after(RETRY_CAPS)
    }

    /// 503: the other servers cannot be reached.
    pub fn unavailable(why: impl Into<String>) -> Refused {
        let status = StatusCode::SERVICE_UNAVAILABLE;
        let wait = crate::server::cluster::RETRY_UNAVAILABLE;
        Refused::new(status, ErrorCode::Unavailable, why).retry_after(wait)
    }

    /// 408: the body stopped arriving; the connection closes.
    pub fn body_timeout() -> Refused {
        let why = "the request body stopped arriving";
        Refused {
            close: true,
            ..Refused::new(StatusCode::REQUEST_TIMEOUT, ErrorCode::Timeout, why)
        }
    }

    /// 503: shutting down; the connection closes.
    pub fn draining() -> Refused {
        let why = "the server is shutting down; try again";
        Refused {
            close: true,
            ..Refused::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Draining, why)
                .retry_after(Duration::from_secs(1))
        }
    }

    /// The same refusal as a chat `error` frame.
    pub fn frame(&self) -> ServerMessage {
        ServerMessage::Error {
            code: self.refusal.code,
            message: self.refusal.message.clone(),
            retry_after_ms: self.refusal.retry_after_ms,
        }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut res = (self.status, axum::Json(&self.refusal)).into_response();
        let headers = res.headers_mut();
        if let Some(ms) = self.refusal.retry_after_ms {
            let secs = retry_after_secs(Duration::from_millis(ms));
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[test]
    fn every_refusal_has_the_one_body() {
        let res = Refused::rate_limited("slow down", Duration::from_millis(1500)).into_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[header::RETRY_AFTER], "2");
        let body = serde_json::to_string(&Refused::unauthorized("no").refusal).unwrap();
        assert_eq!(body, r#"{"code":"unauthorized","message":"no"}"#);
    }
}
