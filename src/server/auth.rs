//! Sign-in tokens: JWTs signed with HS256, carried in the `Authorization:
//! Bearer` header, the HttpOnly session cookie, or the `token` query parameter.
//!
//! Only HS256 is accepted (so `alg: none` and key-confusion tricks fail), `exp`
//! is required and checked without leeway: a WebSocket is closed exactly at
//! `exp`, so accepting a token "a little expired" would only open a socket to
//! close it at once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap};
use cookie::{Cookie, SameSite};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::protocol::{SESSION_COOKIE, TOKEN_PARAM};

/// The claims pulse reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Display name of the user.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default)]
    pub iat: u64,
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No token in the header, cookie or query.
    Missing,
    /// A token that is malformed, badly signed, of another algorithm, expired,
    /// or without a usable `sub`.
    Invalid(String),
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Missing => f.write_str("no token: sign in, or send a Bearer token"),
            AuthError::Invalid(why) => write!(f, "invalid token: {why}"),
        }
    }
}

/// Issues and checks tokens with one secret.
pub struct Auth {
    /// Signs new tokens.
    encoding: EncodingKey,
    /// Checks tokens.
    decoding: DecodingKey,
    /// HS256 only, `exp` required, no leeway.
    validation: Validation,
    /// Lifetime of a sign-in session.
    pub session_ttl: Duration,
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Auth {
    /// Tokens signed with `secret`.
    pub fn new(secret: &[u8], session_ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Auth {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            session_ttl,
        }
    }

    /// A random 256-bit secret, for servers started without one.
    pub fn random_secret() -> Vec<u8> {
        let mut rng = fastrand::Rng::new();
        (0..32).map(|_| rng.u8(..)).collect()
    }

    /// A token for `sub`, valid for `ttl`; returns it with its `exp`.
    pub fn issue(&self, sub: &str, ttl: Duration) -> Result<(String, u64), String> {
        let iat = now_secs();
        let claims = Claims {
            sub: sub.to_string(),
            exp: iat + ttl.as_secs().max(1),
            iat,
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| format!("cannot sign a token: {e}"))?;
        Ok((token, claims.exp))
    }

    /// The claims of a valid token.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let data = decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let claims = data.claims;
        let name = claims.sub.trim();
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(AuthError::Invalid(
                "sub must be a display name of 1-64 characters".into(),
            ));
        }
        Ok(Claims {
            sub: name.to_string(),
            ..claims
        })
    }

    /// Checks the token a request carries: the `Authorization: Bearer`
    /// header first, then the session cookie, then the `token` query parameter.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Claims, AuthError> {
        let token = token_from(headers, query).ok_or(AuthError::Missing)?;
        self.verify(&token)
    }

    /// `Set-Cookie` value that stores `token` as the session for `ttl`.
    pub fn session_cookie(token: &str, ttl: Duration, secure: bool) -> String {
        Cookie::build((SESSION_COOKIE, token.to_string()))
            .http_only(true)
            .same_site(SameSite::Lax)
            .secure(secure)
            .path("/")
            .max_age(cookie::time::Duration::seconds(ttl.as_secs() as i64))
            .build()
            .to_string()
    }

    /// `Set-Cookie` value that removes the session.
    pub fn clear_cookie(secure: bool) -> String {
        Cookie::build((SESSION_COOKIE, ""))
            .http_only(true)
            .same_site(SameSite::Lax)
            .secure(secure)
            .path("/")
            .max_age(cookie::time::Duration::ZERO)
            .build()
            .to_string()
    }
}

/// Whether the client reached us over HTTPS (directly or through a proxy that
/// says so), in which case cookies are marked `Secure`.
pub fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
        || headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("https://"))
}

/// The session cookie's token, if the request has one.
pub fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == SESSION_COOKIE && !c.value().is_empty())
        .map(|c| c.value().to_string())
}

/// The token of an `Authorization: Bearer` header, if there is one.
pub fn bearer_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

fn token_from(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    bearer_token(headers)
        .or_else(|| cookie_token(headers))
        .or_else(|| {
            query?
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .find(|(k, _)| *k == TOKEN_PARAM)
                .map(|(_, v)| v.to_string())
                .filter(|v| !v.is_empty())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(
            b"0123456789abcdef0123456789abcdef",
            Duration::from_secs(3600),
        )
    }

    #[test]
    fn issued_tokens_verify_and_others_do_not() {
        let a = auth();
        let (token, exp) = a.issue("Ada", Duration::from_secs(60)).unwrap();
        let claims = a.verify(&token).unwrap();
        assert_eq!(claims.sub, "Ada");
        assert_eq!(claims.exp, exp);

        let other = Auth::new(
            b"another secret of thirty-two bytes!",
            Duration::from_secs(1),
        );
        assert!(matches!(other.verify(&token), Err(AuthError::Invalid(_))));
        assert!(matches!(
            a.verify("not.a.token"),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn the_token_is_found_in_header_cookie_or_query() {
        let mut h = HeaderMap::new();
        assert_eq!(token_from(&h, Some("token=q")), Some("q".into()));
        h.insert(header::COOKIE, "a=b; pulse_session=c".parse().unwrap());
        assert_eq!(token_from(&h, Some("token=q")), Some("c".into()));
        h.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(token_from(&h, None), Some("x".into()));
    }
}
