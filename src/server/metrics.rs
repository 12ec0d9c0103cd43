//! Prometheus figures, recorded with the `metrics` crate and rendered at
//! `GET /metrics` by its Prometheus exporter.
//!
//! The recorder is installed once by the binary; without it (e.g. in unit
//! tests) recording is a no-op.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{counter, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Open connections, by transport.
pub const OPEN_CONNECTIONS: &str = "pulse_open_connections";
/// Connections opened since start, by transport.
pub const CONNECTIONS_OPENED: &str = "pulse_connections_opened_total";
/// Receivers of the feed's broadcast channel (one per open SSE stream).
pub const FEED_SUBSCRIBERS: &str = "pulse_feed_subscribers";
/// Connections and requests refused by a limit, by reason.
pub const REFUSED: &str = "pulse_refused_total";
/// Connections (and requests) timed out, by phase: no head in time, idle,
/// a body that stopped arriving.
pub const TIMED_OUT: &str = "pulse_connections_timed_out_total";
/// Chat frames received from clients.
pub const MESSAGES_RECEIVED: &str = "pulse_messages_received_total";
/// Chat messages delivered to clients (one per recipient).
pub const MESSAGES_DELIVERED: &str = "pulse_messages_delivered_total";
/// Messages refused by the rate limit.
pub const RATE_LIMITED: &str = "pulse_rate_limited_total";
/// Frames refused as invalid.
pub const INVALID_MESSAGES: &str = "pulse_invalid_messages_total";
/// WebSocket upgrades refused, by reason.
pub const REJECTED_UPGRADES: &str = "pulse_rejected_upgrades_total";
/// Clients disconnected because their outbound queue overflowed.
pub const SLOW_CLIENTS_DROPPED: &str = "pulse_slow_clients_dropped_total";
/// Chat rooms held.
pub const ROOMS: &str = "pulse_rooms";
/// 1 while the Redis broker is connected (0 while it is down; absent without one).
pub const BROKER_CONNECTED: &str = "pulse_broker_connected";
/// Time to publish one event to the broker.
pub const BROKER_PUBLISH_SECONDS: &str = "pulse_broker_publish_seconds";
/// Probes that did not come back through Redis pub/sub in time (the
/// connection was opened afresh).
pub const BROKER_PROBES_LOST: &str = "pulse_broker_probes_lost_total";
/// Chat messages not published, answered `nack`, by code.
pub const NACKED: &str = "pulse_messages_nacked_total";
/// Publications the broker handed this instance (its own and others').
pub const PUBLICATIONS_RECEIVED: &str = "pulse_broker_publications_received_total";
/// Reads of a room's stream after a gap, by outcome (`filled`: the missed
/// publications were delivered; `reset`: the members started over).
pub const STREAM_RESYNCS: &str = "pulse_stream_resyncs_total";

/// The figures the dashboard shows, kept beside the recorder's copies so they
/// can be read back (a metrics recorder is write-only). Both are updated by the
/// same calls below, so the dashboard and `/metrics` always agree.
static OPEN_SSE: AtomicU64 = AtomicU64::new(0);
static OPEN_WS: AtomicU64 = AtomicU64::new(0);
static RECEIVED: AtomicU64 = AtomicU64::new(0);
static DELIVERED: AtomicU64 = AtomicU64::new(0);

/// A reading of the dashboard's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Open SSE streams.
    pub open_sse: u64,
    /// Open WebSockets.
    pub open_ws: u64,
    /// Chat frames received since start.
    pub received: u64,
    /// Chat messages delivered since start (one per recipient).
    pub delivered: u64,
}

/// Reads the dashboard's counters.
pub fn snapshot() -> Snapshot {
    Snapshot {
        open_sse: OPEN_SSE.load(Ordering::Relaxed),
        open_ws: OPEN_WS.load(Ordering::Relaxed),
        received: RECEIVED.load(Ordering::Relaxed),
        delivered: DELIVERED.load(Ordering::Relaxed),
    }
}

/// How a client is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A Server-Sent-Events stream.
    Sse,
    /// A WebSocket.
    Ws,
}

impl Transport {
    /// Every transport, for zeroing the series at start.
    const ALL: &'static [Transport] = &[Transport::Sse, Transport::Ws];

    fn open_count(self) -> &'static AtomicU64 {
        match self {
            Transport::Sse => &OPEN_SSE,
            Transport::Ws => &OPEN_WS,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Ws => "ws",
        }
    }
}

/// Installs the global recorder and returns the handle that renders it.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(BROKER_PUBLISH_SECONDS.into()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
            ],
        )
        .map_err(|e| format!("cannot configure the metrics exporter: {e}"))?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    // Describe and zero the series up front, so a scrape shows them at once.
    for &t in Transport::ALL {
        gauge!(OPEN_CONNECTIONS, "transport" => t.label()).set(0.0);
        counter!(CONNECTIONS_OPENED, "transport" => t.label()).absolute(0);
    }
    for phase in ["head", "idle", "body"] {
        counter!(TIMED_OUT, "phase" => phase).absolute(0);
    }
    metrics::describe_counter!(
        REFUSED,
        "Connections, requests and sign-ins refused by a limit, by reason."
    );
    metrics::describe_counter!(
        TIMED_OUT,
        "Connections closed for a request head not sent in time (head) or idle too long (idle)."
    );
    metrics::describe_gauge!(OPEN_CONNECTIONS, "Open connections, by transport.");
    metrics::describe_counter!(CONNECTIONS_OPENED, "Connections opened since start.");
    metrics::describe_gauge!(FEED_SUBSCRIBERS, "Receivers of the live feed.");
    for name in [
        MESSAGES_RECEIVED,
        MESSAGES_DELIVERED,
        RATE_LIMITED,
        INVALID_MESSAGES,
        SLOW_CLIENTS_DROPPED,
        PUBLICATIONS_RECEIVED,
        BROKER_PROBES_LOST,
    ] {
        counter!(name).absolute(0);
    }
    metrics::describe_counter!(MESSAGES_RECEIVED, "Chat frames received from clients.");
    metrics::describe_counter!(
        BROKER_PROBES_LOST,
        "Redis pub/sub probes that did not come back in time (connection opened afresh)."
    );
    metrics::describe_counter!(
        MESSAGES_DELIVERED,
        "Chat messages delivered, one per recipient."
    );
    metrics::describe_counter!(RATE_LIMITED, "Messages refused by the rate limit.");
    metrics::describe_counter!(INVALID_MESSAGES, "Frames refused as invalid.");
    metrics::describe_counter!(REJECTED_UPGRADES, "WebSocket upgrades refused, by reason.");
    metrics::describe_counter!(SLOW_CLIENTS_DROPPED, "Clients dropped for not reading.");
    metrics::describe_gauge!(ROOMS, "Chat rooms held.");
    metrics::describe_gauge!(BROKER_CONNECTED, "1 while the Redis broker is connected.");
    metrics::describe_histogram!(
        BROKER_PUBLISH_SECONDS,
        "Time to publish one event to the broker."
    );
    metrics::describe_counter!(NACKED, "Chat messages answered nack, by code.");
    metrics::describe_counter!(
        PUBLICATIONS_RECEIVED,
        "Publications the broker handed this instance."
    );
    metrics::describe_counter!(
        STREAM_RESYNCS,
        "Reads of a room's stream after a gap, by outcome."
    );
    Ok(handle)
}

/// Something was refused by a limit: `max_connections`, `per_ip`,
/// `per_user`, `signin`, `cross_site`.
pub fn refused(reason: &'static str) {
    counter!(REFUSED, "reason" => reason).increment(1);
}

/// A connection was closed by a timeout (`head` or `idle`).
pub fn timed_out(phase: &'static str) {
    counter!(TIMED_OUT, "phase" => phase).increment(1);
}

/// A client connected.
pub fn connection_opened(t: Transport) {
    t.open_count().fetch_add(1, Ordering::Relaxed);
    gauge!(OPEN_CONNECTIONS, "transport" => t.label()).increment(1.0);
    counter!(CONNECTIONS_OPENED, "transport" => t.label()).increment(1);
}

/// Counts a connection as open for as long as it lives (for response bodies,
/// which end by being dropped).
pub struct OpenConnection(Transport);

impl OpenConnection {
    /// Counts a new connection.
    pub fn new(t: Transport) -> Self {
        connection_opened(t);
        OpenConnection(t)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        connection_closed(self.0);
    }
}

/// A client went away.
pub fn connection_closed(t: Transport) {
    t.open_count().fetch_sub(1, Ordering::Relaxed);
    gauge!(OPEN_CONNECTIONS, "transport" => t.label()).decrement(1.0);
}

/// Sets a gauge read at scrape time (e.g. the feed's subscriber count).
pub fn set_feed_subscribers(n: usize) {
    gauge!(FEED_SUBSCRIBERS).set(n as f64);
}

/// A frame arrived from a WebSocket client.
pub fn message_received() {
    RECEIVED.fetch_add(1, Ordering::Relaxed);
    counter!(MESSAGES_RECEIVED).increment(1);
}

/// `n` recipients were sent a chat message.
pub fn messages_delivered(n: u64) {
    DELIVERED.fetch_add(n, Ordering::Relaxed);
    counter!(MESSAGES_DELIVERED).increment(n);
}

/// A message was refused by the rate limit.
pub fn rate_limited() {
    counter!(RATE_LIMITED).increment(1);
}

/// A frame was refused as invalid.
pub fn invalid_message() {
    counter!(INVALID_MESSAGES).increment(1);
}

/// A WebSocket upgrade was refused (`origin`, `no_token`, `bad_token`, …).
pub fn upgrade_rejected(reason: &'static str) {
    counter!(REJECTED_UPGRADES, "reason" => reason).increment(1);
}

/// A client was disconnected for not reading its queue.
pub fn slow_client_dropped() {
    counter!(SLOW_CLIENTS_DROPPED).increment(1);
}

/// The number of chat rooms changed.
pub fn set_rooms(n: usize) {
    gauge!(ROOMS).set(n as f64);
}

/// The broker connected or went away.
pub fn set_broker_connected(up: bool) {
    gauge!(BROKER_CONNECTED).set(if up { 1.0 } else { 0.0 });
}

/// One publish to the broker took `d`.
pub fn broker_publish_latency(d: std::time::Duration) {
    metrics::histogram!(BROKER_PUBLISH_SECONDS).record(d.as_secs_f64());
}

/// A probe did not come back: the subscriptions stopped delivering.
pub fn broker_probe_lost() {
    counter!(BROKER_PROBES_LOST).increment(1);
}

/// A chat message was answered `nack` with `code`.
pub fn nacked(code: &'static str) {
    counter!(NACKED, "code" => code).increment(1);
}

/// The broker handed this instance a publication.
pub fn publication_received() {
    counter!(PUBLICATIONS_RECEIVED).increment(1);
}

/// A room's stream was read after a gap: `filled` or `reset`.
pub fn stream_resynced(outcome: &'static str) {
    counter!(STREAM_RESYNCS, "outcome" => outcome).increment(1);
}
