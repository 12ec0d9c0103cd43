//! Guest sign-in: server functions that issue, renew and clear the session
//! cookie (an HttpOnly, SameSite=Lax cookie holding a JWT), callable from the
//! pages on both sides.
//!
//! A sign-in mints a new user id (the token's `sub`) and session id (`sid`);
//! the display name is only a claim beside them. Renewing keeps all three;
//! signing out revokes the session everywhere.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use server_fn::error::{FromServerFnError, ServerFnErrorErr};

use crate::protocol::{ErrorCode, Refusal};

/// Server functions answer a refusal with the body every route uses
/// (`{"code", "message", "retry_after_ms"?}`, JSON), and their status.
impl FromServerFnError for Refusal {
    type Encoder = server_fn::codec::JsonEncoding;

    fn from_server_fn_error(value: ServerFnErrorErr) -> Self {
        Refusal {
            code: ErrorCode::ServerError,
            message: value.to_string(),
            retry_after_ms: None,
        }
    }
}

/// The signed-in user, as the pages see it (the token itself stays in the
/// HttpOnly cookie, out of reach of scripts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The user's id (unique; the display name is not).
    pub user_id: String,
    /// Display name.
    pub user: String,
    /// When the session ends, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// What a page needs to know before it connects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The current session, if the request carries a valid one.
    pub session: Option<Session>,
    /// A name to offer in the sign-in form, `User` and three digits.
    pub suggested_name: String,
}

/// The session of the current request, and a name to suggest.
#[server(endpoint = "session")]
pub async fn current_session() -> Result<SessionInfo, Refusal> {
    let session = server::claims().await.ok().map(|claims| Session {
        user_id: claims.sub,
        user: claims.name,
        expires_at: claims.exp,
    });
    Ok(SessionInfo {
        session,
        suggested_name: format!("User{:03}", fastrand::u16(0..1000)),
    })
}

/// Signs in as a new guest called `name` (1–32 visible characters after
/// trimming): sets the session cookie, valid for the session lifetime (an
/// hour by default). Refused with 400 for a bad name and 429 when the
/// client's address signs in too often.
#[server(endpoint = "sign_in")]
pub async fn sign_in(name: String) -> Result<Session, Refusal> {
    use crate::server::refusal::Refused;
    let sessions = server::sessions()?;
    if let Err(wait) = sessions.auth().check_sign_in(server::client_ip()) {
        crate::server::metrics::refused("signin");
        return Err(server::refuse(Refused::rate_limited(
            format!(
                "too many sign-ins from your address; try again in {} s",
                crate::server::refusal::retry_after_secs(wait)
            ),
            wait,
        )));
    }
    let name = crate::server::text::display_name(&name)
        .map_err(|why| server::refuse(Refused::invalid(why)))?;
    let id = crate::server::auth::new_id();
    let sid = crate::server::auth::new_id();
    let start = crate::server::clock::now_secs();
    server::start_session(&id, &name, &sid, start)
}

/// Extends the current session by a full lifetime (never past
/// `PULSE_MAX_SESSION` after the sign-in); refused (401) if there is none,
/// it was signed out, or it is over.
#[server(endpoint = "renew_session")]
pub async fn renew_session() -> Result<Session, Refusal> {
    let claims = server::claims().await.map_err(server::refuse)?;
    server::start_session(
        &claims.sub,
        &claims.name,
        &claims.sid,
        claims.session_start(),
    )
}

/// Signs out: revokes the session on every instance (its open sockets close
/// with 4001, its token no longer opens one or renews, for as long as any
/// token of it could be valid) and clears the cookie.
#[server(endpoint = "sign_out")]
pub async fn sign_out() -> Result<(), Refusal> {
    // Any well-signed token of the session may sign it out, also while its
    // sign-outs cannot be checked (the other instances out of reach).
    if let Some(claims) = server::signed_claims() {
        let sessions = server::sessions()?;
        let until = sessions.auth().session_end(claims.session_start());
        sessions.sign_out(&claims.sid, until.max(claims.exp)).await;
    }
    server::set_cookie(&crate::server::auth::Auth::clear_cookie(server::is_https()));
    Ok(())
}

/// Answers a server function with a refusal (its status and `Retry-After`
/// on the response, its body as the function's error).
#[cfg(feature = "ssr")]
pub(crate) use server::refuse;

#[cfg(feature = "ssr")]
mod server {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;
    use std::time::Duration;

    use axum::http::{header, HeaderValue, StatusCode};
    use leptos::prelude::*;

    use super::Session;
    use crate::protocol::{ErrorCode, Refusal};
    use crate::server::auth::{Auth, Claims};
    use crate::server::caller::{self, Carrier};
    use crate::server::listener::Admitted;
    use crate::server::refusal::{retry_after_secs, Refused};
    use crate::server::sessions::Sessions;

    /// The sessions service: tokens and sign-outs.
    pub fn sessions() -> Result<Arc<Sessions>, Refusal> {
        use_context::<Arc<Sessions>>().ok_or_else(|| Refusal {
            code: ErrorCode::ServerError,
            message: "sign-in is not available".into(),
            retry_after_ms: None,
        })
    }

    /// Answers the server function with `refused`: its status and
    /// `Retry-After` on the response, its body as the function's error.
    pub fn refuse(refused: Refused) -> Refusal {
        set_status(refused.status);
        if let Some(ms) = refused.refusal.retry_after_ms {
            set_retry_after(Duration::from_millis(ms));
        }
        refused.refusal
    }

    fn parts() -> Option<axum::http::request::Parts> {
        use_context::<axum::http::request::Parts>()
    }

    /// The valid, unrevoked claims of the request's session cookie.
    pub async fn claims() -> Result<Claims, Refused> {
        let sessions = sessions()
            .map_err(|r| Refused::new(StatusCode::INTERNAL_SERVER_ERROR, r.code, r.message))?;
        let headers = parts().map(|p| p.headers).unwrap_or_default();
        caller::identify(&sessions, &headers, None, Carrier::Cookie).await
    }

    /// The claims of the request's session cookie if it is well signed and
    /// unexpired, whether or not the session was signed out.
    pub fn signed_claims() -> Option<Claims> {
        let headers = parts().map(|p| p.headers).unwrap_or_default();
        let token = crate::server::auth::cookie_token(&headers)?;
        sessions().ok()?.auth().verify(&token).ok()
    }

    /// The client's address, as the listener resolved it.
    pub fn client_ip() -> IpAddr {
        parts()
            .and_then(|p| p.extensions.get::<Admitted>().map(|a| a.client.ip))
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    /// Whether the client reached us over HTTPS (as a trusted proxy says),
    /// in which case cookies are marked `Secure`.
    pub fn is_https() -> bool {
        parts()
            .and_then(|p| p.extensions.get::<Admitted>().map(|a| a.client.https))
            .unwrap_or(false)
    }

    fn response() -> Option<leptos_axum::ResponseOptions> {
        use_context::<leptos_axum::ResponseOptions>()
    }

    /// The HTTP status of the server function's answer.
    fn set_status(status: StatusCode) {
        if let Some(res) = response() {
            res.set_status(status);
        }
    }

    /// `Retry-After` on the answer (whole seconds, rounded up).
    fn set_retry_after(wait: Duration) {
        if let Some(res) = response() {
            res.insert_header(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(wait)),
            );
        }
    }

    pub fn set_cookie(value: &str) {
        if let (Some(res), Ok(value)) = (response(), HeaderValue::from_str(value)) {
            res.append_header(header::SET_COOKIE, value);
        }
    }

    /// Issues a token for user `id` called `name` in session `sid` (which
    /// began at `start`), and stores it in the session cookie.
    pub fn start_session(id: &str, name: &str, sid: &str, start: u64) -> Result<Session, Refusal> {
        let sessions = sessions()?;
        let auth = sessions.auth();
        let (token, expires_at) = auth
            .issue(id, name, sid, auth.session_ttl(), start)
            .map_err(|why| refuse(Refused::unauthorized(why)))?;
        let lifetime =
            Duration::from_secs(expires_at.saturating_sub(crate::server::clock::now_secs()));
        set_cookie(&Auth::session_cookie(&token, lifetime, is_https()));
        Ok(Session {
            user_id: id.to_string(),
            user: name.to_string(),
            expires_at,
        })
    }
}
