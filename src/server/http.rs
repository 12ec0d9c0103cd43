//! The router: the app's pages and server functions (leptos_axum), the SSE
//! feed, operations endpoints and the embedded assets; the separate metrics
//! router; and [`serve`], which runs both until shutdown.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRef, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Router};
use leptos::config::LeptosOptions;
use leptos::prelude::provide_context;
use leptos_axum::{generate_route_list, LeptosRoutes};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{shell, App};
use crate::protocol::{Member, FEED_PATH, NOTIFICATIONS_PATH, STATS_PATH, WS_PATH};
use crate::server::auth::Auth;
use crate::server::broker::{Broker, BusEvent, Sink};
use crate::server::chat::{self, Chat};
use crate::server::config::Settings;
use crate::server::feed::{self, Feed, FeedState};
use crate::server::forwarded::TrustedProxies;
use crate::server::listener::{Limits, Listener};
use crate::server::notify::{self, Notifier};
use crate::server::stats::{self, StatsState};
use crate::server::{assets, metrics, security};

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
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .leptos_routes_with_context(&state, routes, context, move || shell(options.clone()))
        .fallback(fallback)
        .layer(middleware::from_fn(security::refuse_cross_site))
        .layer(middleware::from_fn(security::headers))
        .with_state(state)
}

/// What server functions and server-side rendering reach through Leptos
/// context: the feed, the chat service (tokens, sessions) and notifications.
fn server_context(state: &AppState) -> impl Fn() + Clone + Send + Sync + 'static {
    let feed = state.feed.clone();
    let chat = state.chat.clone();
    let notifier = state.notifier.clone();
    move || {
        provide_context(feed.clone());
        provide_context(chat.clone());
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
            BusEvent::Revoked { sid, exp } => {
                self.chat.auth.revoke(&sid, exp);
                self.chat.close_session(&sid);
            }
        }
    }

    fn local_presence(&self) -> Vec<(String, Member)> {
        self.chat.hub.local_presence()
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
fn metrics_router(handle: PrometheusHandle, feed: Arc<Feed>) -> Router {
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

/// Connections the metrics listener serves at once (scrapers and operators).
const METRICS_CONNECTIONS: usize = 64;

/// Period of the chat upkeep (idle rooms, rate-limit state).
const UPKEEP_PERIOD: Duration = Duration::from_secs(10);

/// Runs the app on `public` (and `/metrics` on `metrics`, if given) until
/// `shutdown` is cancelled and every connection has finished: idle ones are
/// closed at once, open streams and sockets end on their own at shutdown.
pub async fn serve(
    public: TcpListener,
    metrics: Option<(TcpListener, PrometheusHandle)>,
    settings: Settings,
    shutdown: CancellationToken,
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
    let auth = Arc::new(Auth::new(
        &secret,
        app.session_ttl(),
        app.max_token_ttl(),
        app.signin_per_min,
    ));
    let (broker, broker_tasks) = match &settings.redis_url {
        Some(url) => {
            let (broker, tasks) = Broker::redis(url, app.presence_ttl(), app.history_ttl())
                .map_err(std::io::Error::other)?;
            (broker, Some(tasks))
        }
        None => (Broker::local(), None),
    };
    // Every connection task, and every upgraded WebSocket (which is no
    // longer hyper's once upgraded): waited for at shutdown, so close frames
    // and the last chunks go out.
    let connections = TaskTracker::new();
    let chat = Arc::new(Chat::new(
        app,
        auth,
        broker.clone(),
        shutdown.clone(),
        connections.clone(),
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
    let limits = Limits {
        max_connections: app.max_connections,
        max_per_ip: app.max_connections_per_ip,
        header_timeout: app.header_timeout(),
        idle_timeout: app.idle_timeout(),
        proxies: TrustedProxies::parse(&app.trusted_proxies).map_err(std::io::Error::other)?,
    };
    if let Some((tcp, handle)) = metrics {
        let limits = Limits {
            max_connections: METRICS_CONNECTIONS,
            max_per_ip: METRICS_CONNECTIONS,
            proxies: TrustedProxies::default(),
            ..limits.clone()
        };
        let router = metrics_router(handle, feed.clone());
        let listener = Listener::new(tcp, router, limits, shutdown.clone(), connections.clone());
        connections.spawn(listener.run());
    }
    let state = AppState {
        leptos_options: settings.leptos.clone(),
        feed,
        chat,
        notifier,
        stats: stats_rx,
        shutdown: shutdown.clone(),
    };
    let listener = Listener::new(
        public,
        router(state),
        limits,
        shutdown.clone(),
        connections.clone(),
    );
    connections.spawn(listener.run());
    shutdown.cancelled().await;
    connections.close();
    connections.wait().await;
    let _ = ticker.await;
    let _ = upkeep.await;
    let _ = sampler.await;
    if let Some(bus) = bus {
        let _ = bus.await;
    }
    Ok(())
}
