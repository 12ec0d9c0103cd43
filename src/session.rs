//! Guest sign-in: server functions that issue, renew and clear the session
//! cookie (an HttpOnly, SameSite=Lax cookie holding a JWT), callable from the
//! pages on both sides.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

/// The signed-in user, as the pages see it (the token itself stays in the
/// HttpOnly cookie, out of reach of scripts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
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
pub async fn current_session() -> Result<SessionInfo, ServerFnError> {
    let auth = server::auth()?;
    let headers = server::request_headers();
    let session = crate::server::auth::cookie_token(&headers)
        .and_then(|token| auth.verify(&token).ok())
        .map(|claims| Session {
            user: claims.sub,
            expires_at: claims.exp,
        });
    Ok(SessionInfo {
        session,
        suggested_name: format!("User{:03}", fastrand::u16(0..1000)),
    })
}

/// Signs in as a guest called `name` (1–24 characters after trimming): sets
/// the session cookie, valid for the session lifetime (an hour by default).
#[server(endpoint = "sign_in")]
pub async fn sign_in(name: String) -> Result<Session, ServerFnError> {
    let Some(name) = crate::protocol::valid_display_name(&name) else {
        return Err(ServerFnError::new(format!(
            "a name is 1 to {} characters",
            crate::protocol::MAX_NAME_CHARS
        )));
    };
    server::start_session(name)
}

/// Extends the current session by a full lifetime; fails if there is none.
#[server(endpoint = "renew_session")]
pub async fn renew_session() -> Result<Session, ServerFnError> {
    let auth = server::auth()?;
    let headers = server::request_headers();
    let claims = crate::server::auth::cookie_token(&headers)
        .ok_or_else(|| ServerFnError::new("not signed in"))
        .and_then(|token| {
            auth.verify(&token)
                .map_err(|e| ServerFnError::new(e.to_string()))
        })?;
    server::start_session(&claims.sub)
}

/// Signs out: clears the session cookie.
#[server(endpoint = "sign_out")]
pub async fn sign_out() -> Result<(), ServerFnError> {
    let secure = crate::server::auth::is_https(&server::request_headers());
    server::set_cookie(&crate::server::auth::Auth::clear_cookie(secure));
    Ok(())
}

#[cfg(feature = "ssr")]
mod server {
    use std::sync::Arc;

    use axum::http::{header, HeaderMap, HeaderValue};
    use leptos::prelude::*;

    use super::Session;
    use crate::server::auth::{is_https, Auth};

    pub fn auth() -> Result<Arc<Auth>, ServerFnError> {
        use_context::<Arc<Auth>>().ok_or_else(|| ServerFnError::new("sign-in is not available"))
    }

    pub fn request_headers() -> HeaderMap {
        use_context::<axum::http::request::Parts>()
            .map(|parts| parts.headers)
            .unwrap_or_default()
    }

    pub fn set_cookie(value: &str) {
        if let (Some(response), Ok(value)) = (
            use_context::<leptos_axum::ResponseOptions>(),
            HeaderValue::from_str(value),
        ) {
            response.append_header(header::SET_COOKIE, value);
        }
    }

    /// Issues a token for `user` and stores it in the session cookie.
    pub fn start_session(user: &str) -> Result<Session, ServerFnError> {
        let auth = auth()?;
        let (token, expires_at) = auth
            .issue(user, auth.session_ttl)
            .map_err(ServerFnError::new)?;
        let secure = is_https(&request_headers());
        set_cookie(&Auth::session_cookie(&token, auth.session_ttl, secure));
        Ok(Session {
            user: user.to_string(),
            expires_at,
        })
    }
}
