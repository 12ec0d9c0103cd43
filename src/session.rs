//! Guest sign-in: server functions that issue, renew and clear the session
//! cookie (an HttpOnly, SameSite=Lax cookie holding a JWT), callable from the
//! pages on both sides.
//!
//! A sign-in mints a new user id (the token's `sub`) and session id (`sid`);
//! the display name is only a claim beside them. Renewing keeps all three;
//! signing out revokes the session everywhere.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

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

/// What to tell the user about a failed server function: the server's own
/// sentence when it gave one (a bad name, a limit), else what went wrong.
pub fn error_message(e: &ServerFnError) -> String {
    match e {
        ServerFnError::ServerError(message) => message.clone(),
        other => other.to_string(),
    }
}

/// The session of the current request, and a name to suggest.
#[server(endpoint = "session")]
pub async fn current_session() -> Result<SessionInfo, ServerFnError> {
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
pub async fn sign_in(name: String) -> Result<Session, ServerFnError> {
    use axum::http::StatusCode;
    if let Err(wait) = server::sessions()?
        .auth()
        .check_sign_in(server::client_ip())
    {
        crate::server::metrics::refused("signin");
        server::set_status(StatusCode::TOO_MANY_REQUESTS);
        server::set_retry_after(wait);
        return Err(ServerFnError::new(format!(
            "too many sign-ins from your address; try again in {} s",
            wait.as_secs().max(1)
        )));
    }
    let name = crate::server::text::display_name(&name).map_err(|why| {
        server::set_status(StatusCode::BAD_REQUEST);
        ServerFnError::new(why)
    })?;
    let id = crate::server::auth::new_id();
    let sid = crate::server::auth::new_id();
    server::start_session(&id, &name, &sid)
}

/// Extends the current session by a full lifetime; fails (401) if there is
/// none, or it was signed out.
#[server(endpoint = "renew_session")]
pub async fn renew_session() -> Result<Session, ServerFnError> {
    let claims = server::claims().await.map_err(|e| {
        server::set_status(axum::http::StatusCode::UNAUTHORIZED);
        ServerFnError::new(e)
    })?;
    server::start_session(&claims.sub, &claims.name, &claims.sid)
}

/// Signs out: revokes the session on every instance (its open sockets close
/// with 4001, its token no longer opens one or renews) and clears the cookie.
#[server(endpoint = "sign_out")]
pub async fn sign_out() -> Result<(), ServerFnError> {
    if let Ok(claims) = server::claims().await {
        server::sessions()?.sign_out(&claims.sid, claims.exp).await;
    }
    server::set_cookie(&crate::server::auth::Auth::clear_cookie(server::is_https()));
    Ok(())
}

#[cfg(feature = "ssr")]
mod server {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;
    use std::time::Duration;

    use axum::http::{header, HeaderValue, StatusCode};
    use leptos::prelude::*;

    use super::Session;
    use crate::server::auth::{cookie_token, Auth, Claims};
    use crate::server::listener::Admitted;
    use crate::server::sessions::Sessions;

    /// The sessions service: tokens and sign-outs.
    pub fn sessions() -> Result<Arc<Sessions>, ServerFnError> {
        use_context::<Arc<Sessions>>().ok_or_else(|| ServerFnError::new("sign-in is not available"))
    }

    fn parts() -> Option<axum::http::request::Parts> {
        use_context::<axum::http::request::Parts>()
    }

    /// The valid, unrevoked claims of the request's session cookie.
    pub async fn claims() -> Result<Claims, String> {
        let sessions = sessions().map_err(|e| e.to_string())?;
        let headers = parts().map(|p| p.headers).unwrap_or_default();
        let token = cookie_token(&headers).ok_or("not signed in")?;
        sessions.verify(&token).await.map_err(|e| e.to_string())
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
    pub fn set_status(status: StatusCode) {
        if let Some(res) = response() {
            res.set_status(status);
        }
    }

    /// `Retry-After` on the answer.
    pub fn set_retry_after(wait: Duration) {
        if let Some(res) = response() {
            res.insert_header(
                header::RETRY_AFTER,
                HeaderValue::from(wait.as_secs().max(1)),
            );
        }
    }

    pub fn set_cookie(value: &str) {
        if let (Some(res), Ok(value)) = (response(), HeaderValue::from_str(value)) {
            res.append_header(header::SET_COOKIE, value);
        }
    }

    /// Issues a token for user `id` called `name` in session `sid`, and
    /// stores it in the session cookie.
    pub fn start_session(id: &str, name: &str, sid: &str) -> Result<Session, ServerFnError> {
        let sessions = sessions()?;
        let auth = sessions.auth();
        let (token, expires_at) = auth
            .issue(id, name, sid, auth.session_ttl())
            .map_err(ServerFnError::new)?;
        set_cookie(&Auth::session_cookie(
            &token,
            auth.session_ttl(),
            is_https(),
        ));
        Ok(Session {
            user_id: id.to_string(),
            user: name.to_string(),
            expires_at,
        })
    }
}
