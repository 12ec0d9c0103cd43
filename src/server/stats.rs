//! The dashboard's live figures: one sampler per server reads the counters
//! every second into a watch channel, and `GET /api/stats` streams the latest
//! sample to each dashboard as Server-Sent Events (no timer per viewer).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use futures::{stream, StreamExt};
use tokio::sync::watch;
use tokio::time::{interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::protocol::Stats;
use std::sync::Arc;

use crate::server::clock::now_ms;
use crate::server::cluster::Broker;
use crate::server::feed::{ping_frame, sse_response};
use crate::server::metrics;

/// How often the dashboard's figures are sampled.
pub const PERIOD: Duration = Duration::from_secs(1);

/// What the stats endpoint needs.
#[derive(Clone)]
pub struct StatsState {
    /// The latest sample.
    pub latest: watch::Receiver<Stats>,
    /// Ends every stream at shutdown.
    pub shutdown: CancellationToken,
}

/// A channel holding the first sample.
pub fn channel(broker: &dyn Broker) -> (watch::Sender<Stats>, watch::Receiver<Stats>) {
    let now = metrics::snapshot();
    watch::channel(sample(&now, &now, PERIOD, broker))
}

fn sample(
    prev: &metrics::Snapshot,
    now: &metrics::Snapshot,
    elapsed: Duration,
    broker: &dyn Broker,
) -> Stats {
    let secs = elapsed.as_secs_f64().max(1e-3);
    Stats {
        timestamp: now_ms(),
        sse: now.open_sse,
        ws: now.open_ws,
        received_per_s: now.received.saturating_sub(prev.received) as f64 / secs,
        delivered_per_s: now.delivered.saturating_sub(prev.delivered) as f64 / secs,
        broker: broker.describe().to_string(),
    }
}

/// Samples the counters every [`PERIOD`] until `shutdown`.
pub async fn run_sampler(
    tx: watch::Sender<Stats>,
    broker: Arc<dyn Broker>,
    shutdown: CancellationToken,
) {
    let mut tick = interval(PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut prev = metrics::snapshot();
    let mut prev_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = metrics::snapshot();
        let at = tokio::time::Instant::now();
        tx.send_replace(sample(&prev, &now, at - prev_at, broker.as_ref()));
        (prev, prev_at) = (now, at);
    }
}

/// `GET /api/stats`: a heartbeat that says a sample comes every
/// [`PERIOD`], the latest sample, then each new one, as SSE.
pub async fn stream(State(state): State<StatsState>) -> Response {
    // The stream is an SSE connection like the feed's, and counted as one.
    let open = metrics::OpenConnection::new(metrics::Transport::Sse);
    let ping = stream::once(async { Ok::<_, Infallible>(ping_frame(PERIOD)) });
    let start = (state.latest.clone(), true, open);
    let frames = stream::unfold(start, |(mut rx, first, open)| async move {
        if !first && rx.changed().await.is_err() {
            return None; // the sampler stopped
        }
        let json = serde_json::to_string(&*rx.borrow_and_update()).unwrap_or_default();
        Some((
            Ok::<_, Infallible>(Bytes::from(format!("data: {json}\n\n"))),
            (rx, false, open),
        ))
    });
    sse_response(
        ping.chain(frames)
            .take_until(state.shutdown.cancelled_owned()),
    )
}
