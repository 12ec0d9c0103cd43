//! The router: the app's pages and server functions (leptos_axum), the SSE
//! feed, operations endpoints and the embedded assets; and [`serve`], which
//! runs it until shutdown.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRef, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use leptos::config::LeptosOptions;
use leptos::prelude::provide_context;
use leptos_axum::{generate_route_list, LeptosRoutes};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{shell, App};
use crate::protocol::{FEED_PATH, NOTIFICATIONS_PATH, STATS_PATH, WS_PATH};
use crate::server::auth::Auth;
use crate::server::broker::{Broker, BusEvent, Sink};
use crate::server::chat::{self, Chat};
use crate::server::config::Settings;
use crate::server::feed::{self, Feed, FeedState};
use crate::server::notify::{self, Notifier};
use crate::server::stats::{self, StatsState};
use crate::server::{assets, listener, metrics};

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// Site settings, for rendering the HTML shell.
    pub leptos_options: LeptosOptions,
    /// The live feed.
    pub feed: Arc<Feed>,
    /// Chat rooms and the WebSocket endpoint's settings.
    pub chat: Arc<Chat>,
    /// Publishes notifications into the feed.
    pub notifier: Arc<Notifier>,
    /// The dashboard's latest figures.
    pub stats: tokio::sync::watch::Receiver<crate::protocol::Stats>,
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

/// The whole app as one router.
pub fn router(state: AppState) -> Router {
    let routes = generate_route_list(App);
    let context = server_context(&state);
    let options = state.leptos_options.clone();
    Router::new()
        .route(FEED_PATH, get(feed::events))
        .route(WS_PATH, get(chat::upgrade))
        .route(NOTIFICATIONS_PATH, post(notify::post))
        .route(STATS_PATH, get(stats::stream))
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .leptos_routes_with_context(&state, routes, context, move || shell(options.clone()))
        .fallback(fallback)
        .with_state(state)
}

/// What server functions and server-side rendering reach through Leptos
/// context: the feed and the token issuer.
fn server_context(state: &AppState) -> impl Fn() + Clone + Send + Sync + 'static {
    let feed = state.feed.clone();
    let auth = state.chat.auth.clone();
    let notifier = state.notifier.clone();
    move || {
        provide_context(feed.clone());
        provide_context(auth.clone());
        provide_context(notifier.clone());
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
/// drains at shutdown.
async fn ready(State(state): State<AppState>) -> Response {
    if state.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else if state.chat.broker.connected() == Some(false) {
        (StatusCode::SERVICE_UNAVAILABLE, "broker disconnected").into_response()
    } else {
        "ready".into_response()
    }
}

/// Delivers what other instances publish into this one.
struct BusSink {
    chat: Arc<Chat>,
    feed: Arc<Feed>,
}

impl Sink for BusSink {
    fn deliver(&self, event: BusEvent) {
        match event {
            BusEvent::Room { room, msg } => self.chat.hub.deliver_remote(&room, &msg),
            BusEvent::Feed { event, id } => {
                self.feed.publish_remote(event, id);
            }
        }
    }

    fn local_presence(&self) -> Vec<(String, String)> {
        self.chat.hub.local_presence()
    }
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

/// Period of the chat upkeep (idle rooms, rate-limit state).
const UPKEEP_PERIOD: Duration = Duration::from_secs(10);

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
        Duration::from_millis(app.sse_retry_ms),
    ));
    let ticker = tokio::spawn(feed::run_ticker(
        feed.clone(),
        app.feed_interval(),
        app.sse_keep_alive(),
        shutdown.clone(),
    ));
    let secret = match &settings.jwt_secret {
        Some(secret) => secret.as_bytes().to_vec(),
        None => {
            tracing::warn!(
                "PULSE_JWT_SECRET is not set: using a random secret, so sessions and tokens \
                 will not survive a restart or work across instances"
            );
            Auth::random_secret()
        }
    };
    let auth = Arc::new(Auth::new(&secret, app.session_ttl()));
    let (broker, broker_tasks) = match &settings.redis_url {
        Some(url) => {
            let (broker, tasks) =
                Broker::redis(url, app.presence_ttl()).map_err(std::io::Error::other)?;
            (broker, Some(tasks))
        }
        None => (Broker::local(), None),
    };
    // The connections that are not axum's: feed streams served on their
    // sockets and upgraded WebSockets. Waited for after axum's own.
    let sockets = TaskTracker::new();
    let chat = Arc::new(Chat::new(
        app,
        auth,
        broker.clone(),
        shutdown.clone(),
        sockets.clone(),
    ));
    let bus = broker_tasks.map(|tasks| {
        let sink = Arc::new(BusSink {
            chat: chat.clone(),
            feed: feed.clone(),
        });
        tokio::spawn(tasks.run(sink, shutdown.clone()))
    });
    let upkeep = tokio::spawn(
        chat.clone()
            .run_upkeep(UPKEEP_PERIOD.min(app.room_idle().max(Duration::from_secs(1)))),
    );
    let notifier = Arc::new(Notifier {
        feed: feed.clone(),
        chat: chat.clone(),
    });
    let (stats_tx, stats_rx) = stats::channel(&broker);
    let sampler = tokio::spawn(stats::run_sampler(stats_tx, broker, shutdown.clone()));
    let state = AppState {
        leptos_options: settings.leptos.clone(),
        feed,
        chat,
        notifier,
        stats: stats_rx,
        shutdown: shutdown.clone(),
        metrics,
    };
    // Feed streams are served straight on their sockets; every other
    // connection is axum's (see `listener`).
    let connections = listener::split(listener, FeedState::from_ref(&state), &sockets)?;
    // `into_make_service` resolves the router's state once, here. Handing
    // axum a bare `Router` would rebuild its route table for every accepted
    // connection and keep that copy for the connection's life: about 12 KB
    // per open SSE stream (measured with heaptrack, see docs/performance.md).
    let result = axum::serve(connections, router(state).into_make_service())
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
    shutdown.cancel();
    sockets.close();
    sockets.wait().await;
    let _ = ticker.await;
    let _ = upkeep.await;
    let _ = sampler.await;
    if let Some(bus) = bus {
        let _ = bus.await;
    }
    result
}
