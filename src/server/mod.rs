//! Everything that only runs on the server (feature `ssr`), and [`run`],
//! which builds and wires it.

pub mod admission;
pub mod assets;
pub mod auth;
pub mod broker;
pub mod chat;
pub mod clock;
pub mod config;
pub mod feed;
pub mod forwarded;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod security;
pub mod shutdown;
pub mod stats;
pub mod text;

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::protocol::Member;
use auth::Auth;
use broker::{Broker, BusEvent, Sink};
use chat::Chat;
use config::Settings;
use feed::Feed;
use forwarded::TrustedProxies;
use http::AppState;
use listener::{Limits, Listener};
use notify::Notifier;

/// Period of the chat upkeep (idle rooms, rate-limit state).
const UPKEEP_PERIOD: Duration = Duration::from_secs(10);

/// Connections the metrics listener serves at once (scrapers and operators).
const METRICS_CONNECTIONS: usize = 64;

/// Runs pulse on `public` (and `/metrics` on `metrics`, if given) until
/// `shutdown` is cancelled and everything has finished.
///
/// This is the one place where the services are built and wired: the feed
/// and its ticker, tokens, the bus, chat and its upkeep, notifications, the
/// dashboard's sampler, and the two listeners. Every long-lived task (those,
/// every connection, every upgraded WebSocket) runs on one [`TaskTracker`];
/// at shutdown each ends on the one token, and this waits for the tracker:
/// idle connections close at once, streams and sockets end on their own.
pub async fn run(
    public: TcpListener,
    metrics: Option<(TcpListener, PrometheusHandle)>,
    settings: Settings,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = &settings.app;
    let tasks = TaskTracker::new();

    let feed = Arc::new(Feed::new(app.feed_backlog, app.sse_retry));
    tasks.spawn(feed::run_ticker(
        feed.clone(),
        app.feed_interval,
        app.sse_keep_alive,
        shutdown.clone(),
    ));

    let secret = match &app.jwt_secret {
        Some(secret) => secret.expose().as_bytes().to_vec(),
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
        app.session_ttl,
        app.max_token_ttl,
        app.signin_per_min,
    ));
    let (broker, bus) = match &app.redis_url {
        Some(url) => {
            let (broker, bus) = Broker::redis(url.expose(), app.presence_ttl, app.history_ttl)
                .map_err(std::io::Error::other)?;
            (broker, Some(bus))
        }
        None => (Broker::local(), None),
    };
    let chat = Arc::new(Chat::new(
        app,
        auth,
        broker.clone(),
        shutdown.clone(),
        tasks.clone(),
    ));
    if let Some(bus) = bus {
        let sink = Arc::new(BusSink {
            chat: chat.clone(),
            feed: feed.clone(),
        });
        tasks.spawn(bus.run(sink, shutdown.clone()));
    }
    let upkeep = UPKEEP_PERIOD.min(app.room_idle.max(Duration::from_secs(1)));
    tasks.spawn(chat.clone().run_upkeep(upkeep));
    let notifier = Arc::new(Notifier {
        feed: feed.clone(),
        chat: chat.clone(),
    });
    let (stats_tx, stats_rx) = stats::channel(&broker);
    tasks.spawn(stats::run_sampler(stats_tx, broker, shutdown.clone()));

    let limits = Limits {
        max_connections: app.max_connections,
        max_per_ip: app.max_connections_per_ip,
        header_timeout: app.header_timeout,
        idle_timeout: app.idle_timeout,
        proxies: TrustedProxies::new(app.trusted_proxies.clone()),
    };
    if let Some((tcp, handle)) = metrics {
        let limits = Limits {
            max_connections: METRICS_CONNECTIONS,
            max_per_ip: METRICS_CONNECTIONS,
            proxies: TrustedProxies::default(),
            ..limits.clone()
        };
        let router = http::metrics_router(handle, feed.clone());
        let listener = Listener::new(tcp, router, limits, shutdown.clone(), tasks.clone());
        tasks.spawn(listener.run());
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
        http::router(state),
        limits,
        shutdown.clone(),
        tasks.clone(),
    );
    tasks.spawn(listener.run());

    shutdown.cancelled().await;
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// Delivers what other instances publish into this one.
struct BusSink {
    /// Rooms and sessions.
    chat: Arc<Chat>,
    /// The live feed.
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
