//! What every response tells the browser about itself, and the one rule that
//! keeps other sites from acting with a visitor's session cookie.
//!
//! - [`headers`]: `X-Content-Type-Options`, `Referrer-Policy` and
//!   `X-Frame-Options` on every response;
//! - [`send_content_security_policy`]: the page's CSP, built around the nonce
//!   leptos_axum renders into every inline script of that page;
//! - [`refuse_cross_site`]: a state-changing request from a browser must come
//!   from the site's own pages.

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use leptos::config::{Env, LeptosOptions};
use leptos::prelude::use_context;

use crate::server::auth::bearer_token;
use crate::server::forwarded::is_own_origin;
use crate::server::listener::Admitted;
use crate::server::metrics;

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
pub async fn refuse_cross_site(req: Request, next: Next) -> Response {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let headers = req.headers();
    if safe || bearer_token(headers).is_some() {
        return next.run(req).await;
    }
    let host = req
        .extensions()
        .get::<Admitted>()
        .and_then(|a| a.client.host.clone());
    if is_same_site(headers, host.as_deref()) {
        return next.run(req).await;
    }
    metrics::refused("cross_site");
    (
        StatusCode::FORBIDDEN,
        "cross-site request refused: send it from the site's own pages, or with a Bearer token",
    )
        .into_response()
}

/// Whether a browser says the request comes from the site's own pages:
/// `Sec-Fetch-Site` where the browser sends it, else `Origin` against the
/// host the client asked for. A request with neither did not come from a
/// browser (every current browser sends `Origin` on a cross-site POST).
fn is_same_site(headers: &HeaderMap, host: Option<&str>) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return matches!(site.to_str(), Ok("same-origin" | "none"));
    }
    match headers.get(header::ORIGIN).map(|o| o.to_str()) {
        None => true,
        Some(Ok(origin)) => is_own_origin(origin, host),
        Some(Err(_)) => false,
    }
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
        assert!(is_same_site(
            &headers(&[("sec-fetch-site", "same-origin")]),
            host
        ));
        assert!(!is_same_site(
            &headers(&[("sec-fetch-site", "cross-site")]),
            host
        ));
        assert!(!is_same_site(
            &headers(&[("sec-fetch-site", "same-site")]),
            host
        ));
        // Without Sec-Fetch-Site, the origin must be the host asked for.
        let own = headers(&[("origin", "http://pulse.example:8080")]);
        assert!(is_same_site(&own, host));
        assert!(!is_same_site(
            &headers(&[("origin", "https://evil.example")]),
            host
        ));
        assert!(!is_same_site(&headers(&[("origin", "null")]), host));
        // Not a browser at all.
        assert!(is_same_site(&headers(&[]), host));
    }

    #[test]
    fn the_policy_names_the_nonce_and_forbids_framing() {
        let csp = content_security_policy("abc", None);
        assert!(csp.contains("script-src 'self' 'nonce-abc' 'wasm-unsafe-eval'"));
        assert!(csp.contains("frame-ancestors 'none'"));
        assert!(csp.contains("connect-src 'self';"));
    }
}
