//! The routers: the app's pages and server functions (leptos_axum), the SSE
//! feed, operations endpoints and the embedded assets; and the separate
//! metrics router. Only routing: `server::run` builds what they serve.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRef, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use leptos::config::LeptosOptions;
use leptos::prelude::provide_context;
use leptos_axum::{generate_route_list, LeptosRoutes};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::app::{shell, App};
use crate::protocol::{
    CHAT_SEND_PATH, CHAT_STREAM_PATH, FEED_PATH, MAX_FRAME_BYTES, MAX_TEXT_CHARS,
    NOTIFICATIONS_PATH, STATS_PATH, WS_PATH,
};
use crate::server::chat::{self, Chat};
use crate::server::cluster::Broker;
use crate::server::feed::{self, Feed, FeedState};
use crate::server::listener::body::{self, BodyStalled};
use crate::server::notify::{self, Notifier};
use crate::server::refusal::Refused;
use crate::server::security::Origins;
use crate::server::sessions::Sessions;
use crate::server::stats::{self, StatsState};
use crate::server::{assets, metrics, security};

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// Site settings, for rendering the HTML shell.
    pub leptos_options: LeptosOptions,
    /// The live feed.
    pub feed: Arc<Feed>,
    /// Chat rooms and the WebSocket endpoint.
    pub chat: Arc<Chat>,
    /// Tokens and sign-outs (for server functions).
    pub sessions: Arc<Sessions>,
    /// The other instances (for readiness).
    pub broker: Arc<dyn Broker>,
    /// Publishes notifications into the feed.
    pub notifier: Arc<Notifier>,
    /// The dashboard's latest figures.
    pub stats: tokio::sync::watch::Receiver<crate::protocol::Stats>,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// The pages allowed to act with a visitor's session.
    pub origins: Origins,
}

impl FromRef<AppState> for LeptosOptions {
    fn from_ref(state: &AppState) -> Self {
        state.leptos_options.clone()
    }
}

impl FromRef<AppState> for Arc<Chat> {
    fn from_ref(state: &AppState) -> Self {
        state.chat.clone()
    }
}

impl FromRef<AppState> for Arc<Notifier> {
    fn from_ref(state: &AppState) -> Self {
        state.notifier.clone()
    }
}

impl FromRef<AppState> for StatsState {
    fn from_ref(state: &AppState) -> Self {
        StatsState {
            latest: state.stats.clone(),
            shutdown: state.shutdown.clone(),
        }
    }
}

impl FromRef<AppState> for FeedState {
    fn from_ref(state: &AppState) -> Self {
        FeedState {
            feed: state.feed.clone(),
            shutdown: state.shutdown.clone(),
        }
    }
}

/// The largest body a server function takes: a notification's text at its
/// longest, form-encoded with every character percent-encoded from four
/// UTF-8 bytes (12 bytes each), and room for the field's name.
pub const MAX_SERVER_FN_BYTES: usize = MAX_TEXT_CHARS * 12 + 1024;

/// The whole app as one router.
pub fn router(state: AppState) -> Router {
    let routes = generate_route_list(App);
    let context = server_context(&state);
    let options = state.leptos_options.clone();
    let pages = Router::new()
        .leptos_routes_with_context(&state, routes, context, move || shell(options.clone()));
    let chat_send = Router::new().route(CHAT_SEND_PATH, post(chat::fallback::send));
    let notifications = Router::new().route(NOTIFICATIONS_PATH, post(notify::post));
    Router::new()
        // Every route that takes a body, bounded to what it needs: the
        // longest server-function argument; the fallback's most frames; one
        // frame's worth of notification.
        .merge(bounded(pages, MAX_SERVER_FN_BYTES))
        .merge(bounded(chat_send, chat::fallback::MAX_POST_BYTES))
        .merge(bounded(notifications, MAX_FRAME_BYTES))
        .route(FEED_PATH, get(feed::events))
        .route(WS_PATH, get(chat::ws::upgrade))
        .route(CHAT_STREAM_PATH, get(chat::fallback::stream))
        .route(STATS_PATH, get(stats::stream))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(
            state.origins.clone(),
            security::refuse_cross_site,
        ))
        .layer(middleware::from_fn(security::headers))
        .with_state(state)
}

/// `routes` with request bodies of at most `max` bytes: a larger announced
/// length is refused (413) before any of it is read; a body is read whole,
/// up to `max`, before the handler runs, so a chunked one over the limit is
/// a 413 too (server_fn would answer the failed read with a 500), and one
/// that stops arriving a 408 (see `listener::body`).
fn bounded(routes: Router<AppState>, max: usize) -> Router<AppState> {
    routes.route_layer(middleware::from_fn(move |req: Request, next: Next| {
        whole_body(req, next, max)
    }))
}

/// Reads a request's body whole (at most `max` bytes) before its handler
/// runs; a refusal with the one body of every refusal if it cannot be.
async fn whole_body(req: Request, next: Next, max: usize) -> Response {
    let too_large = || Refused::too_large(format!("a body of this route is at most {max} bytes"));
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > max as u64) {
        return too_large().into_response();
    }
    let (parts, body) = req.into_parts();
    match axum::body::to_bytes(body, max).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(e) => {
            let e = e.into_inner();
            match body::stalled(e.as_ref()) {
                Some(BodyStalled::Timeout) => {
                    metrics::timed_out("body");
                    Refused::body_timeout().into_response()
                }
                Some(BodyStalled::ShuttingDown) => Refused::draining().into_response(),
                // The only other way a read of a body that arrives fails.
                None if is_length_limit(e.as_ref()) => too_large().into_response(),
                None => {
                    Refused::invalid(format!("the body could not be read: {e}")).into_response()
                }
            }
        }
    }
}

/// Whether `e` (or its cause) is the length limit of `to_bytes`.
fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// What server functions and server-side rendering reach through Leptos
/// context: the feed, sessions and notifications, and which chunks each lazy
/// page needs.
fn server_context(state: &AppState) -> impl Fn() + Clone + Send + Sync + 'static {
    let feed = state.feed.clone();
    let sessions = state.sessions.clone();
    let notifier = state.notifier.clone();
    let split_manifest = assets::split_manifest(&state.leptos_options);
    move || {
        provide_context(feed.clone());
        provide_context(sessions.clone());
        provide_context(notifier.clone());
        if let Some(manifest) = &split_manifest {
            provide_context(manifest.clone());
        }
    }
}

/// Assets embedded in the binary; anything else is the app's 404 page.
async fn fallback(State(state): State<AppState>, req: Request<Body>) -> Response {
    if let Some(res) = assets::response(req.uri().path(), req.headers()) {
        return res;
    }
    let options = state.leptos_options.clone();
    let render =
        leptos_axum::render_app_to_stream_with_context(server_context(&state), move || {
            shell(options.clone())
        });
    let mut res = render(req).await.into_response();
    *res.status_mut() = StatusCode::NOT_FOUND;
    res
}

/// `GET /readyz`: whether this instance should get traffic: not while it
/// drains at shutdown, nor while it cannot reach the other instances.
async fn ready(State(state): State<AppState>) -> Response {
    if state.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else if !*state.broker.reachable().borrow() {
        (StatusCode::SERVICE_UNAVAILABLE, "broker disconnected").into_response()
    } else {
        "ready".into_response()
    }
}

/// What `/metrics` reads.
#[derive(Clone)]
struct MetricsState {
    /// Renders the recorder.
    handle: PrometheusHandle,
    /// For the subscriber gauge, read at scrape time.
    feed: Arc<Feed>,
}

/// The metrics router, served on its own address (`PULSE_METRICS_ADDR`),
/// never on the public port.
pub fn metrics_router(handle: PrometheusHandle, feed: Arc<Feed>) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .with_state(MetricsState { handle, feed })
}

/// `GET /metrics`: Prometheus text format.
async fn render_metrics(State(state): State<MetricsState>) -> Response {
    metrics::set_feed_subscribers(state.feed.subscribers());
    state.handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.handle.render(),
    )
        .into_response()
}
