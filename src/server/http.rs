//! The router: the app's pages and server functions (leptos_axum), the SSE
//! feed, operations endpoints and the embedded assets; and [`serve`], which
//! runs it until shutdown.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRef, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use leptos::config::LeptosOptions;
use leptos::prelude::provide_context;
use leptos_axum::{generate_route_list, LeptosRoutes};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{shell, App};
use crate::protocol::FEED_PATH;
use crate::server::config::Settings;
use crate::server::feed::{self, Feed, FeedState};
use crate::server::{assets, metrics};

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// Site settings, for rendering the HTML shell.
    pub leptos_options: LeptosOptions,
    /// The live feed.
    pub feed: Arc<Feed>,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// Renders `/metrics`; `None` when no recorder is installed.
    pub metrics: Option<PrometheusHandle>,
}

impl FromRef<AppState> for LeptosOptions {
    fn from_ref(state: &AppState) -> Self {
        state.leptos_options.clone()
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

/// The whole app as one router.
pub fn router(state: AppState) -> Router {
    let routes = generate_route_list(App);
    let feed = state.feed.clone();
    // Server functions and server-side rendering reach the server's state
    // through Leptos context.
    let context = move || provide_context(feed.clone());
    let options = state.leptos_options.clone();
    Router::new()
        .route(FEED_PATH, get(feed::events))
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .leptos_routes_with_context(&state, routes, context, move || shell(options.clone()))
        .fallback(fallback)
        .with_state(state)
}

/// Assets embedded in the binary; anything else is the app's 404 page.
async fn fallback(State(state): State<AppState>, req: Request<Body>) -> Response {
    if let Some(res) = assets::response(req.uri().path(), req.headers()) {
        return res;
    }
    let options = state.leptos_options.clone();
    let feed = state.feed.clone();
    let render = leptos_axum::render_app_to_stream_with_context(
        move || provide_context(feed.clone()),
        move || shell(options.clone()),
    );
    let mut res = render(req).await.into_response();
    *res.status_mut() = StatusCode::NOT_FOUND;
    res
}

/// `GET /metrics`: Prometheus text format.
async fn render_metrics(State(state): State<AppState>) -> Response {
    let Some(handle) = &state.metrics else {
        return (StatusCode::NOT_FOUND, "metrics are not enabled").into_response();
    };
    metrics::set_feed_subscribers(state.feed.subscribers());
    handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// Runs the app on `listener` until `shutdown` is cancelled and every
/// connection has finished (open SSE streams end on their own at shutdown).
pub async fn serve(
    listener: TcpListener,
    settings: Settings,
    shutdown: CancellationToken,
    metrics: Option<PrometheusHandle>,
) -> std::io::Result<()> {
    let app = &settings.app;
    let feed = Arc::new(Feed::new(
        app.feed_backlog,
        std::time::Duration::from_millis(app.sse_retry_ms),
    ));
    let ticker = tokio::spawn(feed::run_ticker(
        feed.clone(),
        app.feed_interval(),
        app.sse_keep_alive(),
        shutdown.clone(),
    ));
    let state = AppState {
        leptos_options: settings.leptos.clone(),
        feed,
        shutdown: shutdown.clone(),
        metrics,
    };
    let result = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
    shutdown.cancel();
    let _ = ticker.await;
    result
}
