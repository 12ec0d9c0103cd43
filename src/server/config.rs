//! Settings: the embedded `Leptos.toml` is the default, environment variables
//! and command-line flags override it.
//!
//! Site settings (address, output name, …) are leptos_config's
//! [`LeptosOptions`], overridden by `LEPTOS_*` variables. The app's own
//! settings are the `[pulse]` table, overridden by `PULSE_*` variables or the
//! matching `--flags`; clap reads both, so `pulse --help` lists every one.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use leptos::config::LeptosOptions;
use serde::Deserialize;

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
}

/// Command-line / environment overrides of the `[pulse]` table.
/// `None` means "keep the value from Leptos.toml".
#[derive(Debug, Default, Args)]
pub struct Overrides {
    /// Period of the live feed's ticker, in milliseconds.
    #[arg(long, env = "PULSE_FEED_INTERVAL_MS", global = true)]
    pub feed_interval_ms: Option<u64>,
    /// Feed events kept for clients resuming with Last-Event-ID (at least 100).
    #[arg(long, env = "PULSE_FEED_BACKLOG", global = true)]
    pub feed_backlog: Option<usize>,
    /// Reconnection delay suggested to EventSource clients, in milliseconds.
    #[arg(long, env = "PULSE_SSE_RETRY_MS", global = true)]
    pub sse_retry_ms: Option<u64>,
    /// Period of the keep-alive comment on open SSE streams, in seconds.
    #[arg(long, env = "PULSE_SSE_KEEP_ALIVE_S", global = true)]
    pub sse_keep_alive_s: Option<u64>,
    /// Longest a graceful shutdown may take, in seconds.
    #[arg(long, env = "PULSE_SHUTDOWN_TIMEOUT_S", global = true)]
    pub shutdown_timeout_s: Option<u64>,
    /// Log line format.
    #[arg(long, env = "PULSE_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
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
}

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Site settings for Leptos (address, output name, environment, …).
    pub leptos: LeptosOptions,
    /// The app's own settings.
    pub app: AppSettings,
}

/// The top level of Leptos.toml, as far as the app is concerned.
#[derive(Deserialize)]
struct FileSettings {
    pulse: AppSettings,
}

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

    fn apply(&mut self, o: &Overrides) {
        let Overrides {
            feed_interval_ms,
            feed_backlog,
            sse_retry_ms,
            sse_keep_alive_s,
            shutdown_timeout_s,
            log_format,
        } = o;
        if let Some(v) = feed_interval_ms {
            self.feed_interval_ms = *v;
        }
        if let Some(v) = feed_backlog {
            self.feed_backlog = *v;
        }
        if let Some(v) = sse_retry_ms {
            self.sse_retry_ms = *v;
        }
        if let Some(v) = sse_keep_alive_s {
            self.sse_keep_alive_s = *v;
        }
        if let Some(v) = shutdown_timeout_s {
            self.shutdown_timeout_s = *v;
        }
        if let Some(v) = log_format {
            self.log_format = *v;
        }
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
        let mut app = toml::from_str::<FileSettings>(text)
            .map_err(|e| format!("app settings ([pulse]): {e}"))?
            .pulse;
        app.apply(overrides);
        app.validate()?;
        Ok(Settings { leptos, app })
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
