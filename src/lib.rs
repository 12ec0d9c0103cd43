//! pulse: a full-stack Rust real-time web app.
//!
//! One crate, compiled twice: to the axum server (feature `ssr`) and to the WASM
//! client that hydrates the server-rendered pages (feature `hydrate`).
//!
//! # Layout
//!
//! - [`protocol`]: the wire types shared by server and client (feed, chat, stats).
//! - [`app`]: the HTML shell, the app shell (navigation) and the routes.
//! - [`pages`]: one component per page (`feed`, `chat`, `rooms`, `dashboard`).
//! - [`chat`]: the chat client shared by the Chat and Rooms pages (its
//!   WebSocket is browser-only).
//! - [`session`]: the sign-in server functions; [`time`], [`backoff`]: small
//!   rules the pages share.
//! - `server` (feature `ssr`): everything that only runs on the server, and
//!   `server::run`, which builds every service and runs them on one task
//!   tracker until shutdown:
//!   - `server::config`: every setting declared once (`PULSE_*` and flags), site settings from `Leptos.toml`;
//!   - `server::listener`: the accept loop (connection caps, EMFILE backoff)
//!     and one hyper connection per socket (head and idle timeouts);
//!   - `server::admission`, `server::forwarded`: per-address and per-user
//!     counts; who the client is behind a trusted proxy;
//!   - `server::http`: the routers (app, metrics);
//!   - `server::security`: security headers, the page CSP, the cross-site check;
//!   - `server::feed`: the one ticker, the bounded backlog and the SSE endpoint;
//!   - `server::auth`, `server::text`: JWTs and sessions; the rules for names and text;
//!   - `server::clock`: wall-clock stamps;
//!   - `server::chat`: `GET /ws`, one task pair per socket, the rooms hub;
//!   - `server::broker`: the Redis bus between instances;
//!   - `server::notify`, `server::stats`: notifications, the dashboard stream;
//!   - `server::assets`: the site (WASM, JS, CSS, public/) embedded into the binary;
//!   - `server::metrics`: Prometheus figures;
//!   - `server::shutdown`: the signal that ends streams and the server.
//! - `main.rs`: the server binary's entry (command line, logging, start).
//! - [`hydrate`] below: the client's entry point.

pub mod app;
pub mod backoff;
pub mod chat;
pub mod pages;
pub mod protocol;
pub mod session;
pub mod time;

#[cfg(feature = "ssr")]
pub mod server;

/// Entry point of the WASM client: hydrates the server-rendered page.
#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(app::App);
    // A User Timing mark, so real-user monitoring (and `make bench`) can
    // tell when the page became interactive.
    if let Some(performance) = web_sys::window().and_then(|w| w.performance()) {
        let _ = performance.mark("pulse:hydrated");
    }
}
