//! Settings: the embedded `Leptos.toml` is the default, environment variables
//! and command-line flags override it.
//!
//! Site settings (address, output name, …) are leptos_config's
//! [`LeptosOptions`], overridden by `LEPTOS_*` variables. The app's own
//! settings are the `[pulse]` table, overridden by `PULSE_*` variables or the
//! matching `--flags`; clap reads both, so `pulse --help` lists every one.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use leptos::config::LeptosOptions;
use serde::Deserialize;

use crate::protocol::DEFAULT_ROOMS;
use crate::server::forwarded::TrustedProxies;

/// The configuration file compiled into the binary.
pub const EMBEDDED_CONFIG: &str = include_str!("../../Leptos.toml");

/// Smallest feed backlog allowed: clients must be able to resume after a
/// reconnect of a couple of minutes at the default rate.
pub const MIN_FEED_BACKLOG: usize = 100;

/// The command line of the `pulse` binary.
#[derive(Debug, Parser)]
#[command(
    name = "pulse",
    version,
    about = "pulse: live SSE feed, WebSocket chat and rooms, in one binary",
    after_help = "Defaults come from the Leptos.toml embedded in the binary. Site settings are \
                  overridden by LEPTOS_* variables: LEPTOS_SITE_ADDR (address to listen on, \
                  default 127.0.0.1:3000), LEPTOS_ENV (PROD or DEV), LEPTOS_OUTPUT_NAME, \
                  LEPTOS_SITE_PKG_DIR, LEPTOS_RELOAD_PORT. RUST_LOG sets the log level."
)]
pub struct Cli {
    /// What to run; serving the app is the default.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Overrides of the app settings for serving.
    #[command(flatten)]
    pub overrides: Overrides,
}

/// Subcommands of `pulse`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the app (the default).
    Serve,
    /// Print the effective settings as TOML and exit.
    Config,
    /// Print a JWT for scripts and other services (needs PULSE_JWT_SECRET).
    Token {
        /// The display name (the token's `name`).
        #[arg(long)]
        name: String,
        /// The user id (the token's `sub`): give a service the same id every
        /// time so its limits are its own. Default: a new id.
        #[arg(long)]
        id: Option<String>,
        /// How long the token is valid, e.g. `1h`, `30m`, `7d`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

/// Command-line / environment overrides of the `[pulse]` table.
/// `None` means "keep the value from Leptos.toml". Serialized (kebab-case,
/// `None`s left out) and laid over the `[pulse]` table, so a setting needs no
/// code of its own to be overridable.
#[derive(Debug, Default, Args, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Overrides {
    /// Period of the live feed's ticker, in milliseconds.
    #[arg(long, env = "PULSE_FEED_INTERVAL_MS", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed_interval_ms: Option<u64>,
    /// Feed events kept for clients resuming with Last-Event-ID (at least 100).
    #[arg(long, env = "PULSE_FEED_BACKLOG", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed_backlog: Option<usize>,
    /// Reconnection delay suggested to EventSource clients, in milliseconds.
    #[arg(long, env = "PULSE_SSE_RETRY_MS", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sse_retry_ms: Option<u64>,
    /// Period of the keep-alive comment on open SSE streams, in seconds.
    #[arg(long, env = "PULSE_SSE_KEEP_ALIVE_S", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sse_keep_alive_s: Option<u64>,
    /// Longest a graceful shutdown may take, in seconds.
    #[arg(long, env = "PULSE_SHUTDOWN_TIMEOUT_S", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_timeout_s: Option<u64>,
    /// Log line format.
    #[arg(long, env = "PULSE_LOG_FORMAT", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// Lifetime of a sign-in session, in seconds (at most max-token-ttl-s).
    #[arg(long, env = "PULSE_SESSION_TTL_S", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_ttl_s: Option<u64>,
    /// Longest lifetime (exp - iat) of any token accepted or issued, in seconds.
    #[arg(long, env = "PULSE_MAX_TOKEN_TTL_S", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_token_ttl_s: Option<u64>,
    /// Guest sign-ins one client address may make per minute.
    #[arg(long, env = "PULSE_SIGNIN_PER_MIN", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signin_per_min: Option<u32>,
    /// Chat messages one user may send per minute.
    #[arg(long, env = "PULSE_RATE_LIMIT_PER_MIN", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_min: Option<u32>,
    /// Most chat rooms the server holds at once.
    #[arg(long, env = "PULSE_MAX_ROOMS", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rooms: Option<usize>,
    /// Seconds after which an empty non-default room is dropped.
    #[arg(long, env = "PULSE_ROOM_IDLE_S", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_idle_s: Option<u64>,
    /// WebSocket ping period, in seconds.
    #[arg(long, env = "PULSE_WS_PING_INTERVAL_S", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_ping_interval_s: Option<u64>,
    /// Bytes that may wait for one WebSocket before it is dropped as too slow.
    #[arg(long, env = "PULSE_WS_QUEUE_BYTES", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_queue_bytes: Option<usize>,
    /// New rooms one user may create per hour.
    #[arg(long, env = "PULSE_ROOMS_PER_USER", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rooms_per_user: Option<u32>,
    /// With Redis: seconds a room's history is kept after its last message.
    #[arg(long, env = "PULSE_HISTORY_TTL_S", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_ttl_s: Option<u64>,
    /// With Redis: seconds after which the members of a dead instance drop out.
    #[arg(long, env = "PULSE_PRESENCE_TTL_S", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_ttl_s: Option<u64>,
    /// Origins allowed to open a WebSocket, comma-separated (default: the site's own).
    #[arg(
        long,
        env = "PULSE_ALLOWED_ORIGINS",
        value_delimiter = ',',
        global = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_origins: Option<Vec<String>>,
    /// Seconds a client has to send a whole request head.
    #[arg(long, env = "PULSE_HEADER_TIMEOUT_S", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_timeout_s: Option<u64>,
    /// Seconds after which a kept-alive connection with no request is closed.
    #[arg(long, env = "PULSE_IDLE_TIMEOUT_S", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u64>,
    /// Most connections at once (0: the open-file limit less a reserve).
    #[arg(long, env = "PULSE_MAX_CONNECTIONS", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Most connections (and streams through a trusted proxy) from one client address.
    #[arg(long, env = "PULSE_MAX_CONNECTIONS_PER_IP", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_ip: Option<usize>,
    /// Most WebSockets one user may hold open at once.
    #[arg(long, env = "PULSE_MAX_SOCKETS_PER_USER", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sockets_per_user: Option<usize>,
    /// Proxies whose X-Forwarded-* headers are believed, comma-separated
    /// addresses or CIDR blocks, e.g. 127.0.0.1,10.0.0.0/8 (default: none).
    #[arg(
        long,
        env = "PULSE_TRUSTED_PROXIES",
        value_delimiter = ',',
        global = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted_proxies: Option<Vec<String>>,
    /// Address of the Prometheus endpoint `/metrics` (`off`: none).
    #[arg(long, env = "PULSE_METRICS_ADDR", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<String>,
    /// Secret for signing and checking JWTs (HS256), 32 bytes or more. Unset: a
    /// random one per start (sessions do not survive a restart or span instances).
    #[arg(long, env = "PULSE_JWT_SECRET", hide_env_values = true, global = true)]
    #[serde(skip)]
    pub jwt_secret: Option<String>,
    /// Redis for running several instances, e.g. redis://127.0.0.1:6379
    /// (unset: one instance, in-process).
    #[arg(long, env = "PULSE_REDIS_URL", hide_env_values = true, global = true)]
    #[serde(skip)]
    pub redis_url: Option<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The app's own settings: the `[pulse]` table of Leptos.toml.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AppSettings {
    /// Period of the feed ticker, in milliseconds.
    pub feed_interval_ms: u64,
    /// Number of feed events kept for resumption.
    pub feed_backlog: usize,
    /// SSE `retry:` hint, in milliseconds.
    pub sse_retry_ms: u64,
    /// Keep-alive comment period, in seconds.
    pub sse_keep_alive_s: u64,
    /// Graceful shutdown limit, in seconds.
    pub shutdown_timeout_s: u64,
    /// Log line format.
    pub log_format: LogFormat,
    /// Lifetime of a sign-in session, in seconds.
    pub session_ttl_s: u64,
    /// Chat messages one user may send per minute.
    pub rate_limit_per_min: u32,
    /// Most rooms held at once.
    pub max_rooms: usize,
    /// Idle time after which an empty non-default room is dropped, in seconds.
    pub room_idle_s: u64,
    /// WebSocket ping period, in seconds.
    pub ws_ping_interval_s: u64,
    /// Bytes that may wait in one WebSocket's outbound queue.
    pub ws_queue_bytes: usize,
    /// New rooms one user may create per hour.
    pub rooms_per_user: u32,
    /// With Redis: lifetime of a room's history after its last message, in seconds.
    pub history_ttl_s: u64,
    /// With Redis: lifetime of an unrefreshed presence entry, in seconds.
    pub presence_ttl_s: u64,
    /// Origins allowed to open a WebSocket; empty means the site's own.
    pub allowed_origins: Vec<String>,
    /// Longest lifetime (exp - iat) of a token, in seconds.
    pub max_token_ttl_s: u64,
    /// Guest sign-ins per client address per minute.
    pub signin_per_min: u32,
    /// Time a client has to send a request head, in seconds.
    pub header_timeout_s: u64,
    /// Time a kept-alive connection may sit with no request, in seconds.
    pub idle_timeout_s: u64,
    /// Most connections at once; 0 means the open-file limit less a reserve.
    pub max_connections: usize,
    /// Most connections from one client address.
    pub max_connections_per_ip: usize,
    /// Most WebSockets per user.
    pub max_sockets_per_user: usize,
    /// Proxies whose `X-Forwarded-*` headers are believed (addresses or CIDR blocks).
    pub trusted_proxies: Vec<String>,
    /// Where `/metrics` is served, or `off`.
    pub metrics_addr: String,
}

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Site settings for Leptos (address, output name, environment, …).
    pub leptos: LeptosOptions,
    /// The app's own settings.
    pub app: AppSettings,
    /// The JWT secret, if one is configured (never printed).
    pub jwt_secret: Option<String>,
    /// Redis URL for scale-out, if configured (never printed: it may hold a password).
    pub redis_url: Option<String>,
}

/// Shortest JWT secret accepted: HS256 wants a key as long as its hash.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

impl AppSettings {
    /// Period of the feed ticker.
    pub fn feed_interval(&self) -> Duration {
        Duration::from_millis(self.feed_interval_ms)
    }

    /// Period of the SSE keep-alive comment.
    pub fn sse_keep_alive(&self) -> Duration {
        Duration::from_secs(self.sse_keep_alive_s)
    }

    /// Graceful shutdown limit.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_s)
    }

    /// Lifetime of a sign-in session.
    pub fn session_ttl(&self) -> Duration {
        Duration::from_secs(self.session_ttl_s)
    }

    /// WebSocket ping period.
    pub fn ws_ping_interval(&self) -> Duration {
        Duration::from_secs(self.ws_ping_interval_s)
    }

    /// With Redis: lifetime of an unrefreshed presence entry.
    pub fn presence_ttl(&self) -> Duration {
        Duration::from_secs(self.presence_ttl_s)
    }

    /// How long an empty non-default room is kept.
    pub fn room_idle(&self) -> Duration {
        Duration::from_secs(self.room_idle_s)
    }

    /// With Redis: lifetime of a room's history after its last message.
    pub fn history_ttl(&self) -> Duration {
        Duration::from_secs(self.history_ttl_s)
    }

    /// Time a client has to send a request head.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_s)
    }

    /// Time a kept-alive connection may sit with no request.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_s)
    }

    /// Longest lifetime of a token.
    pub fn max_token_ttl(&self) -> Duration {
        Duration::from_secs(self.max_token_ttl_s)
    }

    /// Where `/metrics` is served; `None` when it is `off`.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, String> {
        match self.metrics_addr.trim() {
            "off" => Ok(None),
            addr => addr.parse().map(Some).map_err(|_| {
                format!("metrics-addr (PULSE_METRICS_ADDR) must be host:port or off, got {addr:?}")
            }),
        }
    }

    /// The `[pulse]` table of `text` with `overrides` laid over it.
    fn merged(text: &str, overrides: &Overrides) -> Result<Self, String> {
        let mut file = toml::from_str::<toml::Table>(text)
            .map_err(|e| format!("app settings ([pulse]): {e}"))?;
        let Some(toml::Value::Table(table)) = file.get_mut("pulse") else {
            return Err("app settings: Leptos.toml has no [pulse] table".into());
        };
        let overrides = toml::Table::try_from(overrides).map_err(|e| e.to_string())?;
        table.extend(overrides);
        let mut app = toml::Value::Table(table.clone())
            .try_into::<AppSettings>()
            .map_err(|e| format!("app settings ([pulse] and PULSE_*): {e}"))?;
        app.allowed_origins = app
            .allowed_origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_string())
            .filter(|o| !o.is_empty())
            .collect();
        app.trusted_proxies = app
            .trusted_proxies
            .iter()
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        Ok(app)
    }

    fn validate(&self) -> Result<(), String> {
        if self.feed_interval_ms == 0 {
            return Err("feed-interval-ms (PULSE_FEED_INTERVAL_MS) must be at least 1".into());
        }
        if self.feed_backlog < MIN_FEED_BACKLOG {
            return Err(format!(
                "feed-backlog (PULSE_FEED_BACKLOG) must be at least {MIN_FEED_BACKLOG}, got {}",
                self.feed_backlog
            ));
        }
        if self.sse_keep_alive_s == 0 {
            return Err("sse-keep-alive-s (PULSE_SSE_KEEP_ALIVE_S) must be at least 1".into());
        }
        if self.session_ttl_s < 60 {
            return Err("session-ttl-s (PULSE_SESSION_TTL_S) must be at least 60".into());
        }
        if self.rate_limit_per_min == 0 {
            return Err("rate-limit-per-min (PULSE_RATE_LIMIT_PER_MIN) must be at least 1".into());
        }
        if self.max_rooms < DEFAULT_ROOMS.len() {
            return Err(format!(
                "max-rooms (PULSE_MAX_ROOMS) must be at least {}",
                DEFAULT_ROOMS.len()
            ));
        }
        if self.ws_ping_interval_s == 0 {
            return Err("ws-ping-interval-s (PULSE_WS_PING_INTERVAL_S) must be at least 1".into());
        }
        if self.presence_ttl_s < 3 {
            return Err("presence-ttl-s (PULSE_PRESENCE_TTL_S) must be at least 3".into());
        }
        if self.ws_queue_bytes < 64 * 1024 {
            return Err(
                "ws-queue-bytes (PULSE_WS_QUEUE_BYTES) must be at least 65536: a \
                        room's join answer alone can be that large"
                    .into(),
            );
        }
        if self.rooms_per_user == 0 || self.history_ttl_s == 0 {
            return Err("rooms-per-user and history-ttl-s (PULSE_ROOMS_PER_USER, \
                        PULSE_HISTORY_TTL_S) must be at least 1"
                .into());
        }
        if self.max_token_ttl_s < 60 {
            return Err("max-token-ttl-s (PULSE_MAX_TOKEN_TTL_S) must be at least 60".into());
        }
        if self.session_ttl_s > self.max_token_ttl_s {
            return Err(format!(
                "session-ttl-s (PULSE_SESSION_TTL_S) must be at most max-token-ttl-s \
                 (PULSE_MAX_TOKEN_TTL_S, {})",
                self.max_token_ttl_s
            ));
        }
        if self.signin_per_min == 0 {
            return Err("signin-per-min (PULSE_SIGNIN_PER_MIN) must be at least 1".into());
        }
        if self.header_timeout_s == 0 || self.idle_timeout_s == 0 {
            return Err(
                "header-timeout-s and idle-timeout-s (PULSE_HEADER_TIMEOUT_S, \
                 PULSE_IDLE_TIMEOUT_S) must be at least 1"
                    .into(),
            );
        }
        if self.max_connections_per_ip == 0 || self.max_sockets_per_user == 0 {
            return Err(
                "max-connections-per-ip and max-sockets-per-user (PULSE_MAX_CONNECTIONS_PER_IP, \
                 PULSE_MAX_SOCKETS_PER_USER) must be at least 1"
                    .into(),
            );
        }
        TrustedProxies::parse(&self.trusted_proxies)?;
        self.metrics_addr()?;
        if let Some(bad) = self
            .allowed_origins
            .iter()
            .find(|o| !(o.starts_with("http://") || o.starts_with("https://")))
        {
            return Err(format!(
                "allowed-origins (PULSE_ALLOWED_ORIGINS): {bad:?} is not an origin like https://example.com"
            ));
        }
        Ok(())
    }
}

impl Settings {
    /// Reads the embedded Leptos.toml, then `LEPTOS_*` variables, then the
    /// overrides (flags and `PULSE_*` variables, already merged by clap).
    pub fn load(overrides: &Overrides) -> Result<Self, String> {
        Self::from_str(EMBEDDED_CONFIG, overrides)
    }

    /// Like [`Settings::load`], from the text of a Leptos.toml.
    pub fn from_str(text: &str, overrides: &Overrides) -> Result<Self, String> {
        let leptos = leptos::config::get_config_from_str(text)
            .map_err(|e| format!("site settings ([package.metadata.leptos], LEPTOS_*): {e}"))?;
        let app = AppSettings::merged(text, overrides)?;
        app.validate()?;
        let jwt_secret = overrides.jwt_secret.clone().filter(|s| !s.is_empty());
        if let Some(secret) = &jwt_secret {
            if secret.len() < MIN_JWT_SECRET_BYTES {
                return Err(format!(
                    "PULSE_JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes, got {}",
                    secret.len()
                ));
            }
        }
        let redis_url = overrides.redis_url.clone().filter(|s| !s.is_empty());
        if let Some(url) = &redis_url {
            if !["redis://", "rediss://", "unix://", "redis+unix://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
            {
                return Err("PULSE_REDIS_URL must be a URL like redis://127.0.0.1:6379".into());
            }
        }
        Ok(Settings {
            leptos,
            app,
            jwt_secret,
            redis_url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_file_parses_with_its_defaults() {
        let s = Settings::from_str(EMBEDDED_CONFIG, &Overrides::default()).expect("valid");
        assert_eq!(s.app.feed_interval_ms, 1000);
        assert!(s.app.feed_backlog >= MIN_FEED_BACKLOG);
        assert_eq!(&*s.leptos.output_name, "pulse");
    }

    #[test]
    fn overrides_win_and_are_validated() {
        let o = Overrides {
            feed_interval_ms: Some(50),
            ..Default::default()
        };
        let s = Settings::from_str(EMBEDDED_CONFIG, &o).expect("valid");
        assert_eq!(s.app.feed_interval_ms, 50);

        let bad = Overrides {
            feed_backlog: Some(3),
            ..Default::default()
        };
        let err = Settings::from_str(EMBEDDED_CONFIG, &bad).unwrap_err();
        assert!(err.contains("PULSE_FEED_BACKLOG"), "{err}");
    }
}
