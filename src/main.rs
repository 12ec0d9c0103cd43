//! The `pulse` server binary: reads the settings, sets up logging and metrics,
//! and serves the app until SIGINT/SIGTERM.

use std::process::ExitCode;

use pulse::server::auth::{self, Auth};
use pulse::server::config::{self, Cli, Command, LogFormat, Settings};
use pulse::server::{metrics, shutdown, text};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::from_env();
    let settings = match Settings::new(cli.app) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pulse: invalid settings: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::Config) => {
            println!("site-addr = \"{}\"", settings.leptos.site_addr);
            match toml::to_string(&settings.app) {
                Ok(text) => print!("{text}"),
                Err(e) => eprintln!("pulse: {e}"),
            }
            ExitCode::SUCCESS
        }
        Some(Command::Token { name, id, ttl }) => print_token(&settings, &name, id, ttl),
        Some(Command::Serve) | None => run(settings).await,
    }
}

/// `pulse token`: prints a JWT signed with PULSE_JWT_SECRET, for user `id`
/// (a new one if not given) called `name`, in a session of its own.
fn print_token(
    settings: &Settings,
    name: &str,
    id: Option<String>,
    ttl: std::time::Duration,
) -> ExitCode {
    let Some(secret) = &settings.app.jwt_secret else {
        eprintln!("pulse: set PULSE_JWT_SECRET to the server's secret to mint tokens");
        return ExitCode::from(2);
    };
    let name = match text::display_name(name) {
        Ok(name) => name,
        Err(why) => {
            eprintln!("pulse: --name: {why}");
            return ExitCode::from(2);
        }
    };
    let id = id.unwrap_or_else(auth::new_id);
    if !auth::is_valid_id(&id) {
        eprintln!("pulse: --id must be 1-64 characters of A-Z, a-z, 0-9, -_.:@");
        return ExitCode::from(2);
    }
    let max = settings.app.max_token_ttl;
    if ttl > max {
        eprintln!(
            "pulse: --ttl may be at most PULSE_MAX_TOKEN_TTL ({})",
            humantime::format_duration(max)
        );
        return ExitCode::from(2);
    }
    let auth = Auth::new(
        secret.expose().as_bytes(),
        ttl,
        max,
        settings.app.max_session,
        settings.app.signin_per_min,
    );
    let now = pulse::server::clock::now_secs();
    match auth.issue(&id, &name, &auth::new_id(), ttl, now) {
        Ok((token, _)) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pulse: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// File descriptors kept back from `PULSE_MAX_CONNECTIONS`'s default: for
/// connections being refused, the metrics listener, Redis and the process's
/// own files, so the server can always answer and the operator get in.
const RESERVED_FILES: u64 = 512;

async fn run(mut settings: Settings) -> ExitCode {
    init_logging(settings.app.log_format);
    for name in config::unknown_variables() {
        tracing::warn!("ignoring {name}: no such setting (see pulse --help)");
    }
    // Every connection is a file descriptor: take all the kernel allows.
    let open_files = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!("cannot raise the open-file limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };
    if settings.app.max_connections == 0 {
        let allowed = open_files.saturating_sub(RESERVED_FILES).max(16);
        settings.app.max_connections = usize::try_from(allowed).unwrap_or(usize::MAX);
    }
    tracing::info!(
        "open-file limit {open_files}: serving at most {} connections",
        settings.app.max_connections
    );
    let Some(public) = bind(settings.leptos.site_addr).await else {
        return ExitCode::FAILURE;
    };
    let metrics = match settings.app.metrics_addr.0 {
        Some(addr) => {
            let Some(tcp) = bind(addr).await else {
                return ExitCode::FAILURE;
            };
            match metrics::install() {
                Ok(handle) => {
                    if let Ok(local) = tcp.local_addr() {
                        tracing::info!("metrics on http://{local}/metrics");
                    }
                    Some((tcp, handle))
                }
                Err(e) => {
                    tracing::warn!("{e}; /metrics is disabled");
                    None
                }
            }
        }
        None => None,
    };
    match public.local_addr() {
        Ok(local) => tracing::info!("listening on http://{local}"),
        Err(e) => tracing::warn!("listening, but the local address is unknown: {e}"),
    }

    let timeout = settings.app.shutdown_timeout;
    let token = CancellationToken::new();
    tokio::spawn(shutdown::cancel_on_signal(token.clone()));
    let mut server = tokio::spawn(pulse::server::run(public, metrics, settings, token.clone()));

    let finished = tokio::select! {
        finished = &mut server => finished,
        _ = token.cancelled() => match tokio::time::timeout(timeout, &mut server).await {
            Ok(finished) => finished,
            Err(_) => {
                tracing::warn!(
                    "connections still open after {}: exiting anyway",
                    humantime::format_duration(timeout)
                );
                return ExitCode::SUCCESS;
            }
        },
    };
    match finished {
        Ok(Ok(())) => {
            tracing::info!("shut down cleanly");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            tracing::error!("server error: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!("server task failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A listening socket on `addr`; logs why not.
async fn bind(addr: std::net::SocketAddr) -> Option<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(tcp) => Some(tcp),
        Err(e) => {
            tracing::error!("cannot listen on {addr}: {e}");
            None
        }
    }
}
