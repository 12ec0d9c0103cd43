//! What every response tells the browser about itself, and the one rule that
//! keeps other sites from acting with a visitor's session cookie.
//!
//! - [`headers`]: `X-Content-Type-Options`, `Referrer-Policy` and
//!   `X-Frame-Options` on every response;
//! - [`send_content_security_policy`]: the page's CSP, built around the nonce
//!   leptos_axum renders into every inline script of that page;
//! - [`Origins`]: which pages may act with a visitor's session (the one
//!   origin policy: the site's own, or `PULSE_ALLOWED_ORIGINS`), used by
//! - [`refuse_cross_site`]: a state-changing request from a browser must come
//!   from them, and by the chat's gate for WebSockets and streams.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use leptos::config::{Env, LeptosOptions};
use leptos::prelude::use_context;

use crate::server::auth::bearer_token;
use crate::server::forwarded::is_own_origin;
use crate::server::listener::Admitted;
use crate::server::metrics;
use crate::server::refusal::Refused;

/// The pages allowed to act with a visitor's session: the site's own (the
/// host the client asked for), or, when set, exactly the origins of
/// `PULSE_ALLOWED_ORIGINS`.
#[derive(Clone, Debug, Default)]
pub struct Origins(Vec<String>);

impl Origins {
    /// The policy for `allowed` (empty: the site's own).
    pub fn new(allowed: Vec<String>) -> Origins {
        Origins(allowed)
    }

    /// Whether a page of `origin` may act on `host` (the host the client
    /// asked for).
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        if self.0.is_empty() {
            is_own_origin(origin, host)
        } else {
            let origin = origin.trim_end_matches('/');
            self.0.iter().any(|o| o == origin)
        }
    }

    /// Whether a request that carries `headers` (on `host`) comes from an
    /// allowed page, as far as its `Origin` says; a request without one is
    /// not a browser's.
    pub fn admits(&self, headers: &HeaderMap, host: Option<&str>) -> bool {
        match headers.get(header::ORIGIN).map(|o| o.to_str()) {
            None => true,
            Some(Ok(origin)) => self.allows(origin, host),
            Some(Err(_)) => false,
        }
    }
}

/// Adds the headers every response carries.
pub async fn headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    // For browsers without CSP's frame-ancestors.
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

/// The Content-Security-Policy of a page whose inline scripts carry `nonce`.
/// Scripts run only from the site or with the nonce, WASM may compile,
/// connections (fetch, EventSource, WebSocket) go to the site only, and no
/// other site may frame the page. `reload` is cargo-leptos's live-reload
/// socket in development.
pub fn content_security_policy(nonce: &str, reload: Option<&str>) -> String {
    let reload = reload.map(|r| format!(" {r}")).unwrap_or_default();
    format!(
        "default-src 'self'; script-src 'self' 'nonce-{nonce}' 'wasm-unsafe-eval'; \
         style-src 'self'; img-src 'self' data:; connect-src 'self'{reload}; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
    )
}

/// Sets the page's CSP on the response being rendered (called from the HTML
/// shell, which renders before anything is sent).
pub fn send_content_security_policy(options: &LeptosOptions) {
    let (Some(nonce), Some(res)) = (
        leptos::nonce::use_nonce(),
        use_context::<leptos_axum::ResponseOptions>(),
    ) else {
        return;
    };
    let reload = (options.env == Env::DEV).then(|| {
        let host = options.site_addr.ip();
        format!("ws://{host}:{}", options.reload_port)
    });
    if let Ok(value) = HeaderValue::from_str(&content_security_policy(&nonce, reload.as_deref())) {
        res.insert_header(header::CONTENT_SECURITY_POLICY, value);
    }
}

/// Refuses (403) a state-changing request that a browser sent from another
/// site: one riding on the visitor's session cookie, or a sign-in that would
/// put the visitor in the attacker's session. Requests with a Bearer token
/// are not cookie-driven (a site cannot make a browser add one), and safe
/// methods change nothing, so both pass.
pub async fn refuse_cross_site(
    State(origins): State<Origins>,
    req: Request,
    next: Next,
) -> Response {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let headers = req.headers();
    if safe || bearer_token(headers).is_some() {
        return next.run(req).await;
    }
    let host = req
        .extensions()
        .get::<Admitted>()
        .and_then(|a| a.client.host.clone());
    if is_same_site(&origins, headers, host.as_deref()) {
        return next.run(req).await;
    }
    metrics::refused("cross_site");
    Refused::forbidden(
        "cross-site request refused: send it from the site's own pages, or with a Bearer token",
    )
    .into_response()
}

/// Whether a browser says the request comes from an allowed page:
/// `Sec-Fetch-Site: same-origin` where the browser sends it (or an `Origin`
/// the policy lists), else `Origin` by the policy. A request with neither
/// did not come from a browser (every current browser sends `Origin` on a
/// cross-site POST).
fn is_same_site(origins: &Origins, headers: &HeaderMap, host: Option<&str>) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return match site.to_str() {
            Ok("same-origin" | "none") => true,
            // Another site: only one the operator listed.
            _ => {
                !origins.0.is_empty()
                    && headers.contains_key(header::ORIGIN)
                    && origins.admits(headers, host)
            }
        };
    }
    origins.admits(headers, host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn same_site_is_what_the_browser_says() {
        let host = Some("pulse.example:8080");
        let own_only = Origins::default();
        let same = |h: &HeaderMap| is_same_site(&own_only, h, host);
        assert!(same(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!same(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(!same(&headers(&[("sec-fetch-site", "same-site")])));
        // Without Sec-Fetch-Site, the origin must be the host asked for.
        assert!(same(&headers(&[("origin", "http://pulse.example:8080")])));
        assert!(!same(&headers(&[("origin", "https://evil.example")])));
        assert!(!same(&headers(&[("origin", "null")])));
        // Not a browser at all.
        assert!(same(&headers(&[])));
        // With PULSE_ALLOWED_ORIGINS: the pages listed, and only they.
        let listed = Origins::new(vec!["https://app.example".into()]);
        let from =
            |origin: &'static str| headers(&[("sec-fetch-site", "cross-site"), ("origin", origin)]);
        assert!(is_same_site(&listed, &from("https://app.example"), host));
        assert!(!is_same_site(&listed, &from("https://evil.example"), host));
    }

    #[test]
    fn the_policy_names_the_nonce_and_forbids_framing() {
        let csp = content_security_policy("abc", None);
        assert!(csp.contains("script-src 'self' 'nonce-abc' 'wasm-unsafe-eval'"));
        assert!(csp.contains("frame-ancestors 'none'"));
        assert!(csp.contains("connect-src 'self';"));
    }
}
