//! Sign-in tokens: JWTs signed with HS256, carried in the `Authorization:
//! Bearer` header, the HttpOnly session cookie, or the `token` query parameter.
//!
//! Only HS256 is accepted (so `alg: none` and key-confusion tricks fail), `exp`
//! is required and checked without leeway: a WebSocket is closed exactly at
//! `exp`, so accepting a token "a little expired" would only open a socket to
//! close it at once.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::http::{header, HeaderMap};
use cookie::{Cookie, SameSite};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::protocol::SESSION_COOKIE;
use crate::server::admission::address_key;
use crate::server::clock::now_secs;
use crate::server::text;

/// The claims pulse reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id: stable and unique (a UUIDv7 minted at sign-in, or
    /// `pulse token --id`). Every limit, presence entry and message author is
    /// keyed by it; two people may share a name, never an id.
    pub sub: String,
    /// Display name: only ever shown.
    pub name: String,
    /// The sign-in session this token belongs to; signing out revokes it.
    pub sid: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch (required: it bounds the
    /// token's lifetime).
    pub iat: u64,
    /// When the session began (the sign-in), seconds since the Unix epoch:
    /// renewals keep it, and no token of the session lives past it plus
    /// `PULSE_MAX_SESSION`. A token without it (a service's) began at `iat`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub auth_time: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Claims {
    /// When the token's session began.
    pub fn session_start(&self) -> u64 {
        if self.auth_time == 0 {
            self.iat
        } else {
            self.auth_time
        }
    }
}

/// Longest id (`sub`, `sid`) accepted.
const MAX_ID_LEN: usize = 64;

/// How far a token's `iat` may lie in the future (clock skew between instances).
const MAX_CLOCK_SKEW_S: u64 = 60;

/// Whether `id` is a user or session id: 1-64 characters of `A-Z a-z 0-9 - _ . : @`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@".contains(&b))
}

/// A fresh id for a user or a session: unique across instances.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No token in the header, cookie or query.
    Missing,
    /// A token that is malformed, badly signed, of another algorithm, expired,
    /// or without a usable `sub`; or whose session was signed out.
    Invalid(String),
    /// Whether the session was signed out cannot be told now (the other
    /// instances are out of reach) and this instance has not vouched for it
    /// lately: refused until they are back.
    Unavailable,
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Missing => f.write_str("no token: sign in, or send a Bearer token"),
            AuthError::Invalid(why) => write!(f, "invalid token: {why}"),
            AuthError::Unavailable => f.write_str(
                "the session cannot be checked while the other servers are out of reach; \
                 try again shortly",
            ),
        }
    }
}

/// Issues and checks tokens with one secret (whether a session was signed
/// out is `Sessions`' to know).
pub struct Auth {
    /// Signs new tokens.
    encoding: EncodingKey,
    /// Checks tokens.
    decoding: DecodingKey,
    /// HS256 only, `exp` required, no leeway.
    validation: Validation,
    /// Lifetime of a sign-in session.
    session_ttl: Duration,
    /// Longest lifetime (`exp - iat`) of any token accepted or issued.
    max_ttl: Duration,
    /// Longest life of a session, renewals included (`PULSE_MAX_SESSION`).
    max_session: Duration,
    /// Guest sign-ins per client address (an IPv6 /64 counts as one).
    sign_ins: DefaultKeyedRateLimiter<IpAddr>,
}

impl Auth {
    /// Tokens signed with `secret`, of `session_ttl` (renewed up to
    /// `max_session` after the sign-in), no token living longer than
    /// `max_ttl`.
    pub fn new(
        secret: &[u8],
        session_ttl: Duration,
        max_ttl: Duration,
        max_session: Duration,
        sign_ins_per_min: u32,
    ) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Auth {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            session_ttl: session_ttl.min(max_ttl),
            max_ttl,
            max_session,
            sign_ins: RateLimiter::keyed(Quota::per_minute(
                NonZeroU32::new(sign_ins_per_min).unwrap_or(NonZeroU32::MIN),
            )),
        }
    }

    /// Lifetime of a sign-in session (its token and cookie).
    pub fn session_ttl(&self) -> Duration {
        self.session_ttl
    }

    /// `Ok` if a client at `ip` may sign in now, else how long to wait.
    pub fn check_sign_in(&self, ip: IpAddr) -> Result<(), Duration> {
        self.sign_ins
            .check_key(&address_key(ip))
            .map_err(|not_until| not_until.wait_time_from(self.sign_ins.clock().now()))
    }

    /// A random 256-bit secret, for servers started without one.
    pub fn random_secret() -> Vec<u8> {
        let mut rng = fastrand::Rng::new();
        (0..32).map(|_| rng.u8(..)).collect()
    }

    /// Until when a token of a session that began at `start` could be
    /// valid: what a sign-out of it must outlast.
    pub fn session_end(&self, start: u64) -> u64 {
        start + self.max_session.as_secs()
    }

    /// A token for user `id` called `name` in session `sid`, which began at
    /// `start` (now, for a sign-in), valid for `ttl` but never past the
    /// longest lifetime nor the session's end; returns it with its `exp`.
    /// Refused once the session has ended.
    pub fn issue(
        &self,
        id: &str,
        name: &str,
        sid: &str,
        ttl: Duration,
        start: u64,
    ) -> Result<(String, u64), String> {
        let iat = now_secs();
        let end = self.session_end(start);
        if iat >= end {
            return Err("the session is over (PULSE_MAX_SESSION): sign in again".into());
        }
        let claims = Claims {
            sub: id.to_string(),
            name: name.to_string(),
            sid: sid.to_string(),
            exp: (iat + ttl.min(self.max_ttl).as_secs().max(1)).min(end),
            iat,
            auth_time: start,
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| format!("cannot sign a token: {e}"))?;
        Ok((token, claims.exp))
    }

    /// The claims of a valid token: well signed, not expired, not issued in
    /// the future, not living longer than allowed, with a valid id and name.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let data = decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let mut claims = data.claims;
        if !is_valid_id(&claims.sub) || !is_valid_id(&claims.sid) {
            return Err(AuthError::Invalid(
                "sub and sid must be ids of 1-64 characters of A-Z, a-z, 0-9, -_.:@".into(),
            ));
        }
        claims.name = text::display_name(&claims.name)
            .map_err(|why| AuthError::Invalid(format!("name: {why}")))?;
        if claims.iat > now_secs() + MAX_CLOCK_SKEW_S {
            return Err(AuthError::Invalid("iat is in the future".into()));
        }
        if claims.exp.saturating_sub(claims.iat) > self.max_ttl.as_secs() {
            return Err(AuthError::Invalid(format!(
                "the token lives longer than {}s (PULSE_MAX_TOKEN_TTL)",
                self.max_ttl.as_secs()
            )));
        }
        if claims.session_start() > claims.iat
            || claims.exp > self.session_end(claims.session_start())
        {
            return Err(AuthError::Invalid(
                "the token outlives its session (PULSE_MAX_SESSION)".into(),
            ));
        }
        Ok(claims)
    }

    /// Forgets the sign-in limit's state of quiet addresses.
    pub fn forget_quiet(&self) {
        self.sign_ins.retain_recent();
        self.sign_ins.shrink_to_fit();
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

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn auth() -> Auth {
        Auth::new(
            SECRET,
            Duration::from_secs(3600),
            Duration::from_secs(86400),
            Duration::from_secs(7 * 86400),
            2,
        )
    }

    fn sign(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    #[test]
    fn issued_tokens_verify_and_others_do_not() {
        let a = auth();
        let (token, exp) = a
            .issue("u1", "Ada", "s1", Duration::from_secs(60), now_secs())
            .unwrap();
        let claims = a.verify(&token).unwrap();
        assert_eq!((claims.sub.as_str(), claims.name.as_str()), ("u1", "Ada"));
        assert_eq!(claims.exp, exp);

        let other = Auth::new(
            b"another secret of thirty-two bytes!",
            Duration::from_secs(60),
            Duration::from_secs(60),
            Duration::from_secs(600),
            2,
        );
        assert!(matches!(other.verify(&token), Err(AuthError::Invalid(_))));
        assert!(matches!(
            a.verify("not.a.token"),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn lifetimes_are_bounded_and_iat_is_required() {
        let a = auth();
        let now = now_secs();
        let ok =
            serde_json::json!({"sub": "u", "name": "N", "sid": "s", "iat": now, "exp": now + 3600});
        assert!(a.verify(&sign(ok)).is_ok());
        let century = serde_json::json!({"sub": "u", "name": "N", "sid": "s", "iat": now, "exp": now + 100 * 365 * 86400});
        assert!(a.verify(&sign(century)).is_err());
        let no_iat = serde_json::json!({"sub": "u", "name": "N", "sid": "s", "exp": now + 60});
        assert!(a.verify(&sign(no_iat)).is_err());
        let future = serde_json::json!({"sub": "u", "name": "N", "sid": "s", "iat": now + 3600, "exp": now + 7200});
        assert!(a.verify(&sign(future)).is_err());
        // Issuing is capped the same way.
        let (token, exp) = a
            .issue("u", "N", "s", Duration::from_secs(10 * 86400), now_secs())
            .unwrap();
        assert!(exp <= now_secs() + 86400);
        assert!(a.verify(&token).is_ok());
        // A renewal never takes a session past PULSE_MAX_SESSION.
        let started = now_secs() - 7 * 86400 + 100;
        let (renewed, exp) = a
            .issue("u", "N", "s", Duration::from_secs(3600), started)
            .unwrap();
        assert_eq!(exp, started + 7 * 86400);
        assert_eq!(a.verify(&renewed).unwrap().session_start(), started);
        let over = now_secs() - 7 * 86400;
        assert!(a
            .issue("u", "N", "s", Duration::from_secs(60), over)
            .is_err());
        // A forged start does not stretch it either.
        let stretched = serde_json::json!({"sub": "u", "name": "N", "sid": "s", "iat": now,
            "exp": now + 3600, "auth_time": now - 7 * 86400});
        assert!(a.verify(&sign(stretched)).is_err());
    }

    #[test]
    fn sign_ins_are_limited_per_address() {
        let a = auth();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(a.check_sign_in(ip).is_ok());
        assert!(a.check_sign_in(ip).is_ok());
        assert!(a.check_sign_in(ip).is_err(), "the third in a minute");
        assert!(a.check_sign_in("192.0.2.2".parse().unwrap()).is_ok());
    }
}
