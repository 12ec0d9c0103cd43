//! The `pulse` server binary: reads the settings, sets up logging and metrics,
//! and serves the app until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use pulse::server::auth::Auth;
use pulse::server::config::{Cli, Command, LogFormat, Settings};
use pulse::server::{http, metrics, shutdown};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(&cli.overrides) {
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
        Some(Command::Token { sub, ttl }) => print_token(&settings, &sub, ttl),
        Some(Command::Serve) | None => run(settings).await,
    }
}

/// `pulse token`: prints a JWT signed with PULSE_JWT_SECRET.
fn print_token(settings: &Settings, sub: &str, ttl: std::time::Duration) -> ExitCode {
    let Some(secret) = &settings.jwt_secret else {
        eprintln!("pulse: set PULSE_JWT_SECRET to the server's secret to mint tokens");
        return ExitCode::from(2);
    };
    let Some(name) = pulse::protocol::valid_display_name(sub) else {
        eprintln!(
            "pulse: --sub must be 1 to {} characters",
            pulse::protocol::MAX_NAME_CHARS
        );
        return ExitCode::from(2);
    };
    match Auth::new(secret.as_bytes(), ttl).issue(name, ttl) {
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

async fn run(settings: Settings) -> ExitCode {
    init_logging(settings.app.log_format);
    // Every connection is a file descriptor: take all the kernel allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(
            "open-file limit {limit}: room for about {} connections",
            limit.saturating_sub(64)
        ),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
    let metrics = match metrics::install() {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::warn!("{e}; /metrics is disabled");
            None
        }
    };
    let addr = settings.leptos.site_addr;
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(local) => tracing::info!("listening on http://{local}"),
        Err(e) => tracing::warn!("listening, but the local address is unknown: {e}"),
    }

    let timeout = settings.app.shutdown_timeout();
    let token = CancellationToken::new();
    tokio::spawn(shutdown::cancel_on_signal(token.clone()));
    let mut server = tokio::spawn(http::serve(listener, settings, token.clone(), metrics));

    let finished = tokio::select! {
        finished = &mut server => finished,
        _ = token.cancelled() => match tokio::time::timeout(timeout, &mut server).await {
            Ok(finished) => finished,
            Err(_) => {
                tracing::warn!("connections still open after {}s: exiting anyway", timeout.as_secs());
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
