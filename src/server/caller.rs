//! Who is calling: the one way every route finds the caller's token (where
//! the route takes it from), checks it (signature, lifetime, session not
//! signed out) and answers a caller it does not accept.

use axum::http::HeaderMap;

use crate::protocol::TOKEN_PARAM;
use crate::server::auth::{bearer_token, cookie_token, AuthError, Claims};
use crate::server::refusal::Refused;
use crate::server::sessions::Sessions;

/// Where a route takes the caller's token from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// `Authorization: Bearer` only (services: `POST /api/notifications`).
    Bearer,
    /// The session cookie only (the pages' server functions).
    Cookie,
    /// Either (the HTTP fallback's posts).
    BearerOrCookie,
    /// The header, the cookie, or the `token` query parameter, in that
    /// order (WebSockets and streams, for clients that cannot set headers).
    Anywhere,
}

/// The token the request carries where `carrier` says to look.
fn token(headers: &HeaderMap, query: Option<&str>, carrier: Carrier) -> Option<String> {
    let bearer = || bearer_token(headers);
    let cookie = || cookie_token(headers);
    let query = || {
        query?
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == TOKEN_PARAM)
            .map(|(_, v)| v.to_string())
            .filter(|v| !v.is_empty())
    };
    match carrier {
        Carrier::Bearer => bearer(),
        Carrier::Cookie => cookie(),
        Carrier::BearerOrCookie => bearer().or_else(cookie),
        Carrier::Anywhere => bearer().or_else(cookie).or_else(query),
    }
}

/// The caller's verified claims, or the refusal that answers them: `401`
/// without a valid token (or for one of a signed-out session), `503` while
/// a session cannot be checked (see [`Sessions::verify`]).
pub async fn identify(
    sessions: &Sessions,
    headers: &HeaderMap,
    query: Option<&str>,
    carrier: Carrier,
) -> Result<Claims, Refused> {
    let verified = match token(headers, query, carrier) {
        Some(token) => sessions.verify(&token).await,
        None => Err(AuthError::Missing),
    };
    verified.map_err(|e| match e {
        AuthError::Unavailable => Refused::unavailable(e.to_string()),
        AuthError::Missing => Refused::unauthorized(match carrier {
            Carrier::Bearer => "send Authorization: Bearer <token>".to_string(),
            Carrier::Cookie => "not signed in".to_string(),
            _ => e.to_string(),
        }),
        AuthError::Invalid(_) => Refused::unauthorized(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header;

    #[test]
    fn the_token_is_found_where_the_route_takes_it() {
        let mut h = HeaderMap::new();
        assert_eq!(
            token(&h, Some("token=q"), Carrier::Anywhere),
            Some("q".into())
        );
        assert_eq!(token(&h, Some("token=q"), Carrier::BearerOrCookie), None);
        h.insert(header::COOKIE, "a=b; pulse_session=c".parse().unwrap());
        assert_eq!(
            token(&h, Some("token=q"), Carrier::Anywhere),
            Some("c".into())
        );
        assert_eq!(token(&h, None, Carrier::Bearer), None);
        h.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(token(&h, None, Carrier::Anywhere), Some("x".into()));
        assert_eq!(token(&h, None, Carrier::Cookie), Some("c".into()));
    }
}
