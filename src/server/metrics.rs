//! Prometheus figures, recorded with the `metrics` crate and rendered at
//! `GET /metrics` by its Prometheus exporter.
//!
//! The recorder is installed once by the binary; without it (e.g. in unit
//! tests) recording is a no-op.

use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Open connections, by transport.
pub const OPEN_CONNECTIONS: &str = "pulse_open_connections";
/// Connections opened since start, by transport.
pub const CONNECTIONS_OPENED: &str = "pulse_connections_opened_total";
/// Receivers of the feed's broadcast channel (one per open SSE stream).
pub const FEED_SUBSCRIBERS: &str = "pulse_feed_subscribers";

/// How a client is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A Server-Sent-Events stream.
    Sse,
}

impl Transport {
    /// Every transport, for zeroing the series at start.
    const ALL: &'static [Transport] = &[Transport::Sse];

    fn label(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
        }
    }
}

/// Installs the global recorder and returns the handle that renders it.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    // Describe and zero the series up front, so a scrape shows them at once.
    for &t in Transport::ALL {
        gauge!(OPEN_CONNECTIONS, "transport" => t.label()).set(0.0);
        counter!(CONNECTIONS_OPENED, "transport" => t.label()).absolute(0);
    }
    metrics::describe_gauge!(OPEN_CONNECTIONS, "Open connections, by transport.");
    metrics::describe_counter!(CONNECTIONS_OPENED, "Connections opened since start.");
    metrics::describe_gauge!(FEED_SUBSCRIBERS, "Receivers of the live feed.");
    Ok(handle)
}

/// A client connected.
pub fn connection_opened(t: Transport) {
    gauge!(OPEN_CONNECTIONS, "transport" => t.label()).increment(1.0);
    counter!(CONNECTIONS_OPENED, "transport" => t.label()).increment(1);
}

/// A client went away.
pub fn connection_closed(t: Transport) {
    gauge!(OPEN_CONNECTIONS, "transport" => t.label()).decrement(1.0);
}

/// Sets a gauge read at scrape time (e.g. the feed's subscriber count).
pub fn set_feed_subscribers(n: usize) {
    gauge!(FEED_SUBSCRIBERS).set(n as f64);
}
