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
//! - [`chat_view`]: the chat view (its state and parts) shared by the Chat
//!   and Rooms pages.
//! - [`client`]: the browser's connections (feed and dashboard streams, the
//!   chat socket) on gloo-net, one async loop each, and the one status badge;
//!   no-ops on the server, so pages need no `cfg`.
//! - [`session`]: the sign-in server functions; [`time`], [`backoff`]: small
//!   rules the pages share.
//! - `server` (feature `ssr`): everything that only runs on the server, and
//!   `server::run`, which builds every service and runs them on one task
//!   tracker until shutdown:
//!   - `server::config`: every setting declared once (`PULSE_*` and flags),
//!     site settings from `Leptos.toml`;
//!   - `server::listener`: the accept loop (connection caps, EMFILE backoff)
//!     and one hyper connection per socket; its `watchdog`: head and idle timeouts;
//!   - `server::admission`, `server::forwarded`: per-address and per-user
//!     counts; who the client is behind a trusted proxy;
//!   - `server::http`: the routers (app, metrics);
//!   - `server::security`: security headers, the page CSP, the cross-site check;
//!   - `server::bus`: publish/subscribe between instances (local or Redis);
//!     services take what other instances send through receivers of their own;
//!   - `server::presence`: who is in which room across instances;
//!   - `server::auth`, `server::sessions`: JWTs; verifying and signing out
//!     across instances;
//!   - `server::limits`, `server::text`, `server::clock`: per-user rates; the
//!     rules for names and text; wall-clock stamps;
//!   - `server::feed`: the ticker, the bounded backlog; `feed::stream`, the SSE endpoint;
//!   - `server::chat`: `GET /ws`, one task pair per socket, the rooms hub,
//!     the byte-bounded outbox;
//!   - `server::notify`, `server::stats`: notifications, the dashboard stream;
//!   - `server::assets`: the site (WASM, JS, CSS, public/) embedded into the binary;
//!   - `server::metrics`: Prometheus figures;
//!   - `server::shutdown`: the signal that ends streams and the server.
//! - `main.rs`: the server binary's entry (command line, logging, start).
//! - [`hydrate`] below: the client's entry point.

pub mod app;
pub mod backoff;
pub mod chat_view;
pub mod client;
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
    let Some(body) = leptos::prelude::document().body() else {
        return;
    };
    // Asynchronous: a page whose code is in a chunk of its own (pages::split)
    // is hydrated once that chunk is in (what `hydrate_lazy` does, awaited
    // here so that the mark below comes after it).
    js_sys::futures::spawn_local(async move {
        leptos::mount::hydrate_from_async(body, app::App)
            .await
            .forget();
        // A User Timing mark, so real-user monitoring (and `make bench`) can
        // tell when the page became interactive.
        if let Some(performance) = web_sys::window().and_then(|w| w.performance()) {
            let _ = performance.mark("pulse:hydrated");
        }
    });
}
