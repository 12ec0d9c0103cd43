//! Settings. Each of the app's settings is declared once, as a field of
//! [`AppSettings`]: its doc comment is its `pulse --help` text, and its clap
//! attribute gives its `PULSE_*` variable (and `--flag`), its default and its
//! bounds. Clap reads flags and variables and checks them, `pulse config`
//! prints the struct, and a test holds the README's table to the same list.
//! The few rules that tie two settings together are in [`AppSettings::check`].
//!
//! Site settings (address, output name, …) are leptos_config's
//! [`LeptosOptions`]: the `[package.metadata.leptos]` table of the embedded
//! `Leptos.toml`, overridden by `LEPTOS_*` variables.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use leptos::config::LeptosOptions;
use serde::{Serialize, Serializer};

/// The site settings compiled into the binary.
pub const EMBEDDED_CONFIG: &str = include_str!("../../Leptos.toml");

/// Shortest JWT secret accepted: HS256 wants a key as long as its hash.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// The command line of the `pulse` binary.
#[derive(Debug, Parser)]
#[command(
    name = "pulse",
    version,
    about = "pulse: live SSE feed, WebSocket chat and rooms, in one binary",
    after_help = "Every setting is a flag and a PULSE_* variable (the flag wins). Site settings \
                  are LEPTOS_* variables: LEPTOS_SITE_ADDR (address to listen on, default \
                  127.0.0.1:3000), LEPTOS_ENV (PROD or DEV), LEPTOS_OUTPUT_NAME, \
                  LEPTOS_SITE_PKG_DIR, LEPTOS_RELOAD_PORT. RUST_LOG sets the log level."
)]
pub struct Cli {
    /// What to run; serving the app is the default.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The app's settings.
    #[command(flatten)]
    pub app: AppSettings,
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

/// The app's own settings, each declared here and nowhere else.
///
/// Durations are written like `250ms`, `15s`, `5m`, `1h` or `7d`.
#[derive(Debug, Clone, Args, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct AppSettings {
    /// Period of the live feed's ticker.
    #[arg(long, env = "PULSE_FEED_INTERVAL", global = true, default_value = "1s",
          value_parser = at_least(Duration::from_millis(1)))]
    #[serde(with = "humantime_serde")]
    pub feed_interval: Duration,

    /// Feed events kept in memory for clients that resume with Last-Event-ID
    /// (at least 100: a couple of minutes at the default rate).
    #[arg(long, env = "PULSE_FEED_BACKLOG", global = true, default_value_t = 256,
          value_parser = RangedU64ValueParser::<usize>::new().range(100..=1_000_000))]
    pub feed_backlog: usize,

    /// Reconnection delay suggested to EventSource clients (the SSE `retry:` field).
    #[arg(long, env = "PULSE_SSE_RETRY", global = true, default_value = "2s",
          value_parser = at_least(Duration::ZERO))]
    #[serde(with = "humantime_serde")]
    pub sse_retry: Duration,

    /// Period of the heartbeat (`event: ping`) on every open feed stream; a
    /// page takes two missed heartbeats for a dead stream.
    #[arg(long, env = "PULSE_SSE_KEEP_ALIVE", global = true, default_value = "15s",
          value_parser = at_least(Duration::from_secs(1)))]
    #[serde(with = "humantime_serde")]
    pub sse_keep_alive: Duration,

    /// How long a graceful shutdown may take before the process exits anyway.
    #[arg(long, env = "PULSE_SHUTDOWN_TIMEOUT", global = true, default_value = "10s",
          value_parser = at_least(Duration::ZERO))]
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,

    /// Log line format.
    #[arg(long, env = "PULSE_LOG_FORMAT", global = true, default_value = "text")]
    pub log_format: LogFormat,

    /// Lifetime of a sign-in session, its token and cookie (at most max-token-ttl).
    #[arg(long, env = "PULSE_SESSION_TTL", global = true, default_value = "1h",
          value_parser = at_least(Duration::from_secs(60)))]
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,

    /// Longest lifetime (exp - iat) of any token accepted or issued; longer
    /// ones, and tokens without iat, are refused.
    #[arg(long, env = "PULSE_MAX_TOKEN_TTL", global = true, default_value = "24h",
          value_parser = at_least(Duration::from_secs(60)))]
    #[serde(with = "humantime_serde")]
    pub max_token_ttl: Duration,

    /// Longest life of a sign-in session, renewals included: past it the
    /// user signs in again, and a sign-out is remembered this long.
    #[arg(long, env = "PULSE_MAX_SESSION", global = true, default_value = "7d",
          value_parser = at_least(Duration::from_secs(60)))]
    #[serde(with = "humantime_serde")]
    pub max_session: Duration,

    /// Guest sign-ins one client address may make per minute.
    #[arg(long, env = "PULSE_SIGNIN_PER_MIN", global = true, default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub signin_per_min: u32,

    /// Chat messages and notifications (and, separately, joins and leaves)
    /// one user may send per minute, across all their connections.
    #[arg(long, env = "PULSE_RATE_LIMIT_PER_MIN", global = true, default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_per_min: u32,

    /// Chat messages (and, separately, joins and leaves, and twice as many
    /// fallback posts) all users of one client address may send per minute:
    /// the sign-in rate does not multiply the per-user rate.
    #[arg(long, env = "PULSE_RATE_LIMIT_PER_IP_PER_MIN", global = true, default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_per_ip_per_min: u32,

    /// Notifications (which reach every open feed) all users of one client
    /// address may publish per minute.
    #[arg(long, env = "PULSE_NOTIFY_PER_IP_PER_MIN", global = true, default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub notify_per_ip_per_min: u32,

    /// New rooms all users of one client address may create per hour.
    #[arg(long, env = "PULSE_ROOMS_PER_IP", global = true, default_value_t = 40,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rooms_per_ip: u32,

    /// Most chat rooms the server holds at once (at least the 3 default rooms).
    #[arg(long, env = "PULSE_MAX_ROOMS", global = true, default_value_t = 1000,
          value_parser = RangedU64ValueParser::<usize>::new().range(3..))]
    pub max_rooms: usize,

    /// New rooms one user may create per hour (a room only its creator ever
    /// joined is dropped a minute after it empties).
    #[arg(long, env = "PULSE_ROOMS_PER_USER", global = true, default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rooms_per_user: u32,

    /// An empty room (other than general, tech, random) is dropped after this.
    #[arg(long, env = "PULSE_ROOM_IDLE", global = true, default_value = "5m",
          value_parser = at_least(Duration::ZERO))]
    #[serde(with = "humantime_serde")]
    pub room_idle: Duration,

    /// The server pings every WebSocket this often and closes peers that miss a ping.
    #[arg(long, env = "PULSE_WS_PING_INTERVAL", global = true, default_value = "20s",
          value_parser = at_least(Duration::from_secs(1)))]
    #[serde(with = "humantime_serde")]
    pub ws_ping_interval: Duration,

    /// Bytes that may wait to be sent to one WebSocket; past that its reader
    /// counts as too slow and is closed with 4002 (at least 65536: a room's
    /// join answer alone can be that large).
    #[arg(long, env = "PULSE_WS_QUEUE_BYTES", global = true, default_value_t = 1 << 20,
          value_parser = RangedU64ValueParser::<usize>::new().range(65536..))]
    pub ws_queue_bytes: usize,

    /// Chat transports offered, comma-separated: websocket, and http (the
    /// fallback over SSE and POST for networks that block WebSockets).
    #[arg(
        long,
        env = "PULSE_TRANSPORTS",
        global = true,
        value_delimiter = ',',
        default_value = "websocket,http"
    )]
    pub transports: Vec<ChatTransport>,

    /// Origins allowed to open a WebSocket, comma-separated, e.g.
    /// https://chat.example.com (default: the site's own).
    #[arg(long, env = "PULSE_ALLOWED_ORIGINS", global = true, value_delimiter = ',',
          value_parser = origin)]
    pub allowed_origins: Vec<String>,

    /// A client must send a whole request head within this of connecting (or
    /// of starting the head), else its connection is closed.
    #[arg(long, env = "PULSE_HEADER_TIMEOUT", global = true, default_value = "10s",
          value_parser = at_least(Duration::from_millis(1)))]
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,

    /// A request body that makes no progress for this is answered 408 and
    /// its connection closed.
    #[arg(long, env = "PULSE_BODY_TIMEOUT", global = true, default_value = "10s",
          value_parser = at_least(Duration::from_millis(1)))]
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,

    /// A kept-alive connection with no request in flight is closed after this.
    #[arg(long, env = "PULSE_IDLE_TIMEOUT", global = true, default_value = "60s",
          value_parser = at_least(Duration::from_millis(1)))]
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,

    /// Most connections at once; over it: 503. 0: the open-file limit less a reserve.
    #[arg(
        long,
        env = "PULSE_MAX_CONNECTIONS",
        global = true,
        default_value_t = 0
    )]
    pub max_connections: usize,

    /// Most connections from one client address (an IPv6 /64 counts as one;
    /// through a trusted proxy: its streams and sockets); over it: 429.
    #[arg(long, env = "PULSE_MAX_CONNECTIONS_PER_IP", global = true, default_value_t = 256,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections_per_ip: usize,

    /// Most WebSockets one user may hold open at once; over it: 429.
    #[arg(long, env = "PULSE_MAX_SOCKETS_PER_USER", global = true, default_value_t = 16,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_sockets_per_user: usize,

    /// Proxies whose X-Forwarded-For/-Host/-Proto headers are believed,
    /// comma-separated addresses or CIDR blocks, e.g. 127.0.0.1,10.0.0.0/8
    /// (default: none).
    #[arg(long, env = "PULSE_TRUSTED_PROXIES", global = true, value_delimiter = ',',
          value_parser = proxy_block)]
    #[serde(serialize_with = "as_strings")]
    pub trusted_proxies: Vec<IpNet>,

    /// Address of the Prometheus endpoint /metrics, kept off the public port
    /// (`off`: none).
    #[arg(
        long,
        env = "PULSE_METRICS_ADDR",
        global = true,
        default_value = "127.0.0.1:9100"
    )]
    #[serde(serialize_with = "as_string")]
    pub metrics_addr: Endpoint,

    /// With Redis: the members of an instance that dies drop out after this.
    #[arg(long, env = "PULSE_PRESENCE_TTL", global = true, default_value = "30s",
          value_parser = at_least(Duration::from_secs(3)))]
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,

    /// A member whose last connection to a room drops stays present this
    /// long: a reconnect within it (to any instance) tells nobody anything.
    #[arg(long, env = "PULSE_PRESENCE_GRACE", global = true, default_value = "5s",
          value_parser = at_least(Duration::ZERO))]
    #[serde(with = "humantime_serde")]
    pub presence_grace: Duration,

    /// Publications a room's stream keeps, for joins that recover and the
    /// recent history (the oldest go first).
    #[arg(long, env = "PULSE_HISTORY_SIZE", global = true, default_value_t = 1000,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub history_size: usize,

    /// Bytes of publications a room's stream keeps, besides the count bound.
    #[arg(long, env = "PULSE_HISTORY_BYTES", global = true, default_value_t = 512 * 1024,
          value_parser = RangedU64ValueParser::<usize>::new().range(16 * 1024..=1 << 30))]
    pub history_bytes: usize,

    /// A room's stream (offsets, epoch, publications) is kept this long after
    /// its last publication.
    #[arg(long, env = "PULSE_HISTORY_TTL", global = true, default_value = "7d",
          value_parser = at_least(Duration::from_secs(1)))]
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,

    /// Most publications a join with `since` recovers; past that it gets
    /// the recent history and `recovered: false`.
    #[arg(long, env = "PULSE_RECOVERY_MAX", global = true, default_value_t = 500,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub recovery_max: usize,

    /// A message sent again with the same client_id (same user, same room)
    /// within this is not published again: it gets the first ack again.
    #[arg(long, env = "PULSE_DEDUP_WINDOW", global = true, default_value = "10m",
          value_parser = at_least(Duration::from_secs(1)))]
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,

    /// Secret for signing and checking JWTs (HS256), 32 bytes or more. Unset: a
    /// random one per start (sessions do not survive a restart or span instances).
    #[arg(long, env = "PULSE_JWT_SECRET", global = true, hide_env_values = true,
          value_parser = jwt_secret)]
    #[serde(skip)]
    pub jwt_secret: Option<Secret>,

    /// Redis for running several instances: redis://127.0.0.1:6379, a Redis
    /// Cluster as redis+cluster://host:port,host:port, or a master found through
    /// Sentinel as redis+sentinel://host:port,host:port/master-name (unset: one
    /// instance, in-process).
    #[arg(long, env = "PULSE_REDIS_URL", global = true, hide_env_values = true,
          value_parser = redis_url)]
    #[serde(skip)]
    pub redis_url: Option<Secret>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// A way the chat reaches browsers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatTransport {
    /// `GET /ws`.
    Websocket,
    /// `GET /api/chat/stream` + `POST /api/chat/send`.
    Http,
}

/// A listening address that can be turned `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint(pub Option<SocketAddr>);

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "off" => Ok(Endpoint(None)),
            addr => addr
                .parse()
                .map(|addr| Endpoint(Some(addr)))
                .map_err(|_| format!("{addr:?} is not host:port or off")),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("off"),
        }
    }
}

/// A value that is never printed: `Debug` shows that it is set, not what it is.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The value itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// A parser of durations (`250ms`, `1h`, …) no shorter than `min`.
fn at_least(min: Duration) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync {
    move |text| {
        let value = humantime::parse_duration(text.trim()).map_err(|e| e.to_string())?;
        if value < min {
            return Err(format!(
                "must be at least {}",
                humantime::format_duration(min)
            ));
        }
        Ok(value)
    }
}

fn origin(text: &str) -> Result<String, String> {
    let origin = text.trim().trim_end_matches('/');
    if !(origin.starts_with("http://") || origin.starts_with("https://")) {
        return Err(format!(
            "{origin:?} is not an origin like https://example.com"
        ));
    }
    Ok(origin.to_string())
}

fn proxy_block(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an address or a CIDR block like 10.0.0.0/8"))
}

fn jwt_secret(text: &str) -> Result<Secret, String> {
    if text.len() < MIN_JWT_SECRET_BYTES {
        return Err(format!(
            "must be at least {MIN_JWT_SECRET_BYTES} bytes, got {}",
            text.len()
        ));
    }
    Ok(Secret(text.to_string()))
}

fn redis_url(text: &str) -> Result<Secret, String> {
    crate::server::cluster::check_redis_url(text)?;
    Ok(Secret(text.to_string()))
}

fn as_string<S: Serializer, T: fmt::Display>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

fn as_strings<S: Serializer, T: fmt::Display>(list: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(list.iter().map(ToString::to_string))
}

impl AppSettings {
    /// The rules that tie settings together (each setting's own bounds are
    /// in its declaration).
    fn check(&self) -> Result<(), String> {
        if self.transports.is_empty() {
            return Err("PULSE_TRANSPORTS must name websocket, http or both".into());
        }
        if self.session_ttl > self.max_session {
            return Err(format!(
                "PULSE_SESSION_TTL ({}) may be at most PULSE_MAX_SESSION ({})",
                humantime::format_duration(self.session_ttl),
                humantime::format_duration(self.max_session)
            ));
        }
        if self.session_ttl > self.max_token_ttl {
            return Err(format!(
                "PULSE_SESSION_TTL ({}) may be at most PULSE_MAX_TOKEN_TTL ({})",
                humantime::format_duration(self.session_ttl),
                humantime::format_duration(self.max_token_ttl)
            ));
        }
        Ok(())
    }
}

/// Every setting's key (as `pulse config` prints it) and variable, as
/// declared in [`AppSettings`].
pub fn declared() -> Vec<(String, String)> {
    Cli::command()
        .get_arguments()
        .filter_map(|arg| {
            let var = arg.get_env()?.to_str()?.to_string();
            Some((arg.get_long()?.to_string(), var))
        })
        .collect()
}

impl Cli {
    /// Parses the command line and the `PULSE_*` variables; on a bad value,
    /// says which variable (or flag) holds it, and exits with status 2.
    pub fn from_env() -> Cli {
        Cli::try_parse().unwrap_or_else(|e| {
            let arg = match e.get(clap::error::ContextKind::InvalidArg) {
                Some(clap::error::ContextValue::String(arg)) => arg.clone(),
                _ => e.exit(),
            };
            let flag = arg.split_whitespace().next().unwrap_or_default();
            let var = declared()
                .into_iter()
                .find(|(key, _)| flag == format!("--{key}"))
                .map(|(_, var)| var);
            let _ = e.print();
            if let Some(var) = var {
                eprintln!("pulse: the value comes from {var} or {flag}");
            }
            std::process::exit(2)
        })
    }
}

/// `PULSE_*` variables in the environment that are no setting (a typo, or a
/// name from an older release), so that the server can say it ignores them.
pub fn unknown_variables() -> Vec<String> {
    let known: Vec<String> = declared().into_iter().map(|(_, var)| var).collect();
    std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| name.starts_with("PULSE_") && !known.contains(name))
        .collect()
}

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Site settings for Leptos (address, output name, environment, …).
    pub leptos: LeptosOptions,
    /// The app's own settings.
    pub app: AppSettings,
}

impl Settings {
    /// The site settings (embedded Leptos.toml, then `LEPTOS_*` variables)
    /// with `app`, once the rules between settings hold.
    pub fn new(app: AppSettings) -> Result<Self, String> {
        app.check()?;
        let leptos = leptos::config::get_config_from_str(EMBEDDED_CONFIG)
            .map_err(|e| format!("site settings (LEPTOS_*): {e}"))?;
        Ok(Settings { leptos, app })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<AppSettings, String> {
        let cli = Cli::try_parse_from(std::iter::once("pulse").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Settings::new(cli.app).map(|s| s.app)
    }

    #[test]
    fn defaults_are_declared_and_valid() {
        let app = parse(&[]).expect("defaults are valid");
        assert_eq!(app.feed_interval, Duration::from_secs(1));
        assert_eq!(app.feed_backlog, 256);
        assert_eq!(app.metrics_addr, Endpoint("127.0.0.1:9100".parse().ok()));
        assert!(app.jwt_secret.is_none());
        let printed = toml::to_string(&app).expect("prints");
        assert!(printed.contains("feed-interval = \"1s\""), "{printed}");
        assert!(printed.contains("history-ttl = \"7days\""), "{printed}");
        assert_eq!(app.recovery_max, 500);
        assert_eq!(app.presence_grace, Duration::from_secs(5));
        assert_eq!(app.dedup_window, Duration::from_secs(600));
    }

    #[test]
    fn flags_override_and_bounds_hold() {
        let app = parse(&["--feed-interval", "50ms", "--metrics-addr", "off"]).expect("valid");
        assert_eq!(app.feed_interval, Duration::from_millis(50));
        assert_eq!(app.metrics_addr, Endpoint(None));

        let err = parse(&["--feed-backlog", "3"]).unwrap_err();
        assert!(err.contains("--feed-backlog"), "{err}");
        let err = parse(&["--session-ttl", "10s"]).unwrap_err();
        assert!(err.contains("at least 1m"), "{err}");
        let err = parse(&["--session-ttl", "2d"]).unwrap_err();
        assert!(err.contains("PULSE_MAX_TOKEN_TTL"), "{err}");
        assert!(parse(&["--trusted-proxies", "10.0.0.0/33"]).is_err());
        assert!(parse(&["--trusted-proxies", "proxy.local"]).is_err());
        let app = parse(&["--trusted-proxies", "::1,192.168.0.0/16"]).expect("valid");
        assert_eq!(app.trusted_proxies.len(), 2);
        assert!(parse(&["--jwt-secret", "short"]).is_err());
        assert!(parse(&["--allowed-origins", "example.com"]).is_err());
        let app = parse(&["--allowed-origins", "https://a.example/"]).expect("valid");
        assert_eq!(app.allowed_origins, ["https://a.example"]);
    }

    #[test]
    fn every_field_is_a_setting_with_a_variable() {
        let declared = declared();
        let printed = toml::Table::try_from(parse(&[]).expect("valid")).expect("a table");
        // Every printed key is declared, and only the two secrets are not printed.
        for key in printed.keys() {
            assert!(declared.iter().any(|(k, _)| k == key), "{key} is declared");
        }
        assert_eq!(declared.len(), printed.len() + 2, "{declared:?}");
        for (key, var) in declared {
            assert_eq!(
                var,
                format!("PULSE_{}", key.to_uppercase().replace('-', "_"))
            );
        }
    }
}
