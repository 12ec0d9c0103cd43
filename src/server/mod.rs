//! Everything that only runs on the server (feature `ssr`), and [`run`],
//! which builds and wires it.

pub mod admission;
pub mod assets;
pub mod auth;
pub mod caller;
pub mod chat;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod feed;
pub mod forwarded;
pub mod http;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod refusal;
pub mod security;
pub mod sessions;
pub mod shutdown;
pub mod stats;
pub mod text;

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use auth::Auth;
use chat::{Chat, ChatParts};
use cluster::{Control, Handler, PresenceChange, Publication, StreamLimits};
use config::Settings;
use feed::Feed;
use forwarded::TrustedProxies;
use http::AppState;
use limits::{RateLimits, Rates};
use listener::{Limits, Listener};
use notify::Notifier;
use sessions::Sessions;

/// Period of the chat's sweep (idle rooms, rate-limit state).
const SWEEP_PERIOD: Duration = Duration::from_secs(10);

/// Connections the metrics listener serves at once (scrapers and operators).
const METRICS_CONNECTIONS: usize = 64;

/// Runs pulse on `public` (and `/metrics` on `metrics`, if given) until
/// `shutdown` is cancelled and everything has finished.
///
/// This is the one place where the services are built and wired: what the
/// instances share (the cluster: broker, presence, revocations), the feed
/// and its ticker, tokens, chat and its upkeep, notifications, the
/// dashboard's sampler, and the two listeners; and [`Dispatch`], which
/// hands what the broker receives to its service. Every long-lived task (those,
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

    let streams = StreamLimits {
        size: app.history_size,
        bytes: app.history_bytes,
        ttl: app.history_ttl,
        dedup_window: app.dedup_window,
        presence_ttl: app.presence_ttl,
    };
    let redis_url = app.redis_url.as_ref().map(|url| url.expose());
    let cluster = cluster::connect(redis_url, streams).map_err(std::io::Error::other)?;
    let broker = cluster.broker.clone();

    let feed = Arc::new(Feed::new(
        app.feed_backlog,
        app.sse_retry,
        app.sse_keep_alive,
    ));
    tasks.spawn(feed::run(
        feed.clone(),
        broker.reachable(),
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
        app.max_session,
        app.signin_per_min,
    ));
    let sessions = Arc::new(Sessions::new(auth, cluster.revocations.clone()));
    tasks.spawn(sessions.clone().run(shutdown.clone()));

    let rates = Arc::new(RateLimits::new(Rates {
        per_user: app.rate_limit_per_min,
        per_address: app.rate_limit_per_ip_per_min,
        notifications_per_address: app.notify_per_ip_per_min,
    }));
    let chat = Arc::new(Chat::new(
        app,
        ChatParts {
            cluster,
            sessions: sessions.clone(),
            limits: rates.clone(),
            shutdown: shutdown.clone(),
            sockets: tasks.clone(),
        },
    ));
    let sweep = SWEEP_PERIOD.min(app.room_idle.max(Duration::from_secs(1)));
    tasks.spawn(chat.clone().run(sweep));

    let dispatch = Arc::new(Dispatch {
        chat: chat.clone(),
        feed: feed.clone(),
        sessions: sessions.clone(),
        instance: broker.instance().to_string(),
    });
    {
        let (broker, shutdown) = (broker.clone(), shutdown.clone());
        tasks.spawn(async move { broker.run(dispatch, shutdown).await });
    }

    let notifier = Arc::new(Notifier::new(
        feed.clone(),
        broker.clone(),
        sessions.clone(),
        rates,
    ));
    let (stats_tx, stats_rx) = stats::channel(broker.as_ref());
    tasks.spawn(stats::run_sampler(
        stats_tx,
        broker.clone(),
        shutdown.clone(),
    ));

    let limits = Limits {
        max_connections: app.max_connections,
        max_per_ip: app.max_connections_per_ip,
        header_timeout: app.header_timeout,
        idle_timeout: app.idle_timeout,
        body_timeout: app.body_timeout,
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
        sessions,
        broker,
        notifier,
        origins: security::Origins::new(app.allowed_origins.clone()),
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

/// Hands what the broker receives to the service it is for.
struct Dispatch {
    /// Rooms' publications and presence, fallback frames.
    chat: Arc<Chat>,
    /// Notifications from other instances.
    feed: Arc<Feed>,
    /// Sign-outs.
    sessions: Arc<Sessions>,
    /// This instance, whose own notifications its feed has already.
    instance: String,
}

impl Handler for Dispatch {
    fn publication(&self, room: &str, epoch: &str, publication: Publication) {
        self.chat.on_publication(room, epoch, publication);
    }

    fn presence(&self, room: &str, change: PresenceChange) {
        self.chat.on_presence(room, change);
    }

    fn control(&self, control: Control) {
        match control {
            Control::Feed { event, id, origin } => {
                if origin != self.instance {
                    self.feed.publish_remote(event, id);
                }
            }
            Control::Revoked { sid, .. } => self.sessions.on_revoked(&sid),
            Control::Frames {
                conn,
                user_id,
                frames,
            } => self.chat.on_frames(&conn, &user_id, frames),
        }
    }

    fn reconnected(&self) {
        self.chat.on_reconnected();
        self.sessions.on_reconnected();
    }
}
