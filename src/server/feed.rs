//! The live feed: one ticker per server, a bounded backlog for clients that
//! resume, and the Server-Sent-Events endpoint that streams it.
//!
//! Every event is encoded once, as the complete SSE frame, when it is
//! published; subscribers share those bytes (a [`Bytes`] clone is a reference
//! count), so the cost of a delivery does not grow with the event's size.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{stream, Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio::time::{interval, interval_at, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::protocol::{FeedEvent, FeedItem, LAST_EVENT_ID_PARAM};
use crate::server::metrics;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One frame on the broadcast channel, already encoded for the wire.
#[derive(Clone, Debug)]
struct Frame {
    /// The event's id; `None` for frames that are not events (keep-alives).
    id: Option<u64>,
    /// The complete SSE frame (`id:` + `data:` lines, or a comment).
    bytes: Bytes,
}

/// An event kept in the backlog.
#[derive(Debug)]
struct Stored {
    /// The event, for server-side rendering.
    item: FeedItem,
    /// Its encoded SSE frame, for replay.
    frame: Frame,
}

/// The bounded history of published events, oldest first.
#[derive(Debug)]
struct Backlog {
    /// Id the next published event gets.
    next_id: u64,
    /// At most `capacity` events, oldest first, ids consecutive.
    events: VecDeque<Stored>,
    /// Bound on `events`.
    capacity: usize,
}

/// The feed shared by the ticker and every SSE stream.
#[derive(Debug)]
pub struct Feed {
    /// Backlog and id counter. A publish appends and broadcasts while holding
    /// this lock, and a subscription subscribes and snapshots the backlog while
    /// holding it, so a subscriber sees every event exactly once: those before
    /// the snapshot from the backlog, those after it from the channel.
    /// It is a std mutex held for microseconds and never across an `.await`.
    backlog: Mutex<Backlog>,
    /// Fan-out of live frames to every open stream.
    live: broadcast::Sender<Frame>,
    /// The `retry:` hint every stream starts with.
    retry: Bytes,
}

/// What a new stream gets: the frames to replay, then the live channel.
pub struct Subscription {
    /// Frames to send before any live one (a `gap` and/or missed events).
    replay: Vec<Bytes>,
    /// The live channel, subscribed at the moment the backlog was read.
    live: broadcast::Receiver<Frame>,
    /// Id of the newest event the subscriber has (or is about to be) sent.
    last_id: u64,
}

impl Feed {
    /// A feed that keeps `capacity` events and suggests `retry` to clients.
    ///
    /// Ids start at the current time in milliseconds, so they keep increasing
    /// across restarts (the ticker publishes at most one event a millisecond):
    /// a client that resumes after a restart gets a `gap`, never silence.
    pub fn new(capacity: usize, retry: Duration) -> Self {
        // The channel only has to cover the time between two polls of a
        // stream; a stream that falls further behind resumes from the backlog.
        let (live, _) = broadcast::channel(capacity.clamp(16, 1024));
        Feed {
            backlog: Mutex::new(Backlog {
                next_id: now_ms().max(1),
                events: VecDeque::with_capacity(capacity),
                capacity,
            }),
            live,
            retry: Bytes::from(format!("retry: {}\n\n", retry.as_millis())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Backlog> {
        // A panic while holding the lock cannot leave the backlog half-updated
        // in a way that matters (push and pop are each complete), so carry on.
        self.backlog.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes an event: gives it the next id, keeps it in the backlog and
    /// sends it to every open stream. Returns its id.
    pub fn publish(&self, event: FeedEvent) -> u64 {
        let mut backlog = self.lock();
        let id = backlog.next_id;
        backlog.next_id += 1;
        let frame = Frame {
            id: Some(id),
            bytes: Bytes::from(format!("id: {id}\ndata: {}\n\n", encode(&event))),
        };
        if backlog.events.len() == backlog.capacity {
            backlog.events.pop_front();
        }
        backlog.events.push_back(Stored {
            item: FeedItem { id, event },
            frame: frame.clone(),
        });
        // An error only means nobody is listening.
        let _ = self.live.send(frame);
        id
    }

    /// Sends a keep-alive comment to every open stream.
    pub fn keep_alive(&self) {
        let _ = self.live.send(Frame {
            id: None,
            bytes: Bytes::from_static(b": keep-alive\n\n"),
        });
    }

    /// Subscribes a stream. With `last_seen` (the client's `Last-Event-ID`),
    /// the events after it are replayed from the backlog; if some of them are
    /// no longer there, a `gap` event comes first.
    pub fn subscribe(&self, last_seen: Option<u64>) -> Subscription {
        let backlog = self.lock();
        let live = self.live.subscribe();
        let newest = backlog.next_id - 1;
        let mut replay = Vec::new();
        if let Some(last) = last_seen {
            let oldest = backlog
                .events
                .front()
                .map_or(backlog.next_id, |s| s.item.id);
            // `last >= next_id` is an id this server never issued (a client of
            // another, older process): treat it as "missed everything".
            if last + 1 < oldest || last >= backlog.next_id {
                replay.push(Bytes::from(format!(
                    "data: {}\n\n",
                    encode(&FeedEvent::Gap)
                )));
            }
            let from = if last >= backlog.next_id { 0 } else { last };
            replay.extend(
                backlog
                    .events
                    .iter()
                    .filter(|s| s.item.id > from)
                    .map(|s| s.frame.bytes.clone()),
            );
        }
        Subscription {
            replay,
            live,
            last_id: newest,
        }
    }

    /// The newest `n` events, oldest first (for server-side rendering).
    pub fn recent(&self, n: usize) -> Vec<FeedItem> {
        let backlog = self.lock();
        let skip = backlog.events.len().saturating_sub(n);
        backlog
            .events
            .iter()
            .skip(skip)
            .map(|s| s.item.clone())
            .collect()
    }

    /// Number of open streams.
    pub fn subscribers(&self) -> usize {
        self.live.receiver_count()
    }
}

fn encode(event: &FeedEvent) -> String {
    // Serializing a plain enum of numbers cannot fail.
    serde_json::to_string(event).unwrap_or_else(|_| String::from("{}"))
}

/// Runs the feed's one ticker until `shutdown`: an update every `period` and a
/// keep-alive comment every `keep_alive`, for all streams at once (no timer per
/// connection).
pub async fn run_ticker(
    feed: Arc<Feed>,
    period: Duration,
    keep_alive: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = interval(period);
    // After a stall, carry on at the normal pace rather than in a burst.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut keep_alives = interval_at(Instant::now() + keep_alive, keep_alive);
    keep_alives.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticks.tick() => {
                feed.publish(FeedEvent::Update { timestamp: now_ms(), value: fastrand::f64() });
            }
            _ = keep_alives.tick() => feed.keep_alive(),
        }
    }
}

/// The query of `GET /api/events`.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    /// Resume point for a first connection (the header wins when both are set).
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
}

/// What the SSE handler needs.
#[derive(Clone)]
pub struct FeedState {
    /// The shared feed.
    pub feed: Arc<Feed>,
    /// Ends every open stream when the server shuts down.
    pub shutdown: CancellationToken,
}

/// `GET /api/events`: the live feed as `text/event-stream`.
pub async fn events(
    State(state): State<FeedState>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Response {
    // Browsers send `Last-Event-ID` on their own reconnects, and it is always
    // newer than the query parameter of the stream's first URL.
    let raw = headers
        .get("last-event-id")
        .map(|v| v.to_str().map(str::to_owned).map_err(|_| ()))
        .or_else(|| query.last_event_id.map(Ok));
    let last_seen = match raw {
        None => None,
        Some(Ok(s)) if s.trim().is_empty() => None,
        Some(Ok(s)) => match s.trim().parse::<u64>() {
            Ok(id) => Some(id),
            Err(_) => return bad_last_event_id(),
        },
        Some(Err(())) => return bad_last_event_id(),
    };

    let body = event_stream(&state, last_seen);
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

fn bad_last_event_id() -> Response {
    (
        StatusCode::BAD_REQUEST,
        format!("Last-Event-ID (or ?{LAST_EVENT_ID_PARAM}=) must be an event id: a whole number"),
    )
        .into_response()
}

/// State of one stream's live part.
struct Live {
    /// Where frames come from.
    rx: broadcast::Receiver<Frame>,
    /// Newest event id sent, to drop anything older after a resubscription.
    last_id: u64,
    /// Frames to send before reading the channel again (after a lag).
    pending: VecDeque<Bytes>,
    /// To resubscribe after falling behind the channel.
    feed: Arc<Feed>,
    /// Keeps the stream counted until the client goes away.
    _open: metrics::OpenConnection,
}

/// The body of one SSE response: `retry:`, `connected`, the replay, then live
/// frames until the client goes away or the server shuts down. Dropping it (as
/// hyper does when the client disconnects) frees everything it holds.
fn event_stream(
    state: &FeedState,
    last_seen: Option<u64>,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    let open = metrics::OpenConnection::new(metrics::Transport::Sse);
    let Subscription {
        replay,
        live,
        last_id,
    } = state.feed.subscribe(last_seen);
    let connected = Bytes::from(format!(
        "data: {}\n\n",
        encode(&FeedEvent::Connected {
            timestamp: now_ms()
        })
    ));
    let head = [state.feed.retry.clone(), connected]
        .into_iter()
        .chain(replay)
        .map(Ok);

    let live = Live {
        rx: live,
        last_id,
        pending: VecDeque::new(),
        feed: state.feed.clone(),
        _open: open,
    };
    let tail = stream::unfold(live, |mut live| async move {
        let bytes = next_frame(&mut live).await?;
        Some((Ok(bytes), live))
    });

    stream::iter(head)
        .chain(tail)
        .take_until(state.shutdown.clone().cancelled_owned())
}

async fn next_frame(live: &mut Live) -> Option<Bytes> {
    loop {
        if let Some(bytes) = live.pending.pop_front() {
            return Some(bytes);
        }
        match live.rx.recv().await {
            Ok(Frame { id: Some(id), .. }) if id <= live.last_id => continue,
            Ok(frame) => {
                if let Some(id) = frame.id {
                    live.last_id = id;
                }
                return Some(frame.bytes);
            }
            // This stream fell behind the channel (its client reads slowly):
            // resume from the backlog, which says `gap` if it must.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let sub = live.feed.subscribe(Some(live.last_id));
                live.rx = sub.live;
                live.last_id = sub.last_id;
                live.pending.extend(sub.replay);
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(frames: &[Bytes]) -> Vec<u64> {
        frames
            .iter()
            .filter_map(|b| {
                let s = std::str::from_utf8(b).ok()?;
                s.strip_prefix("id: ")?.split('\n').next()?.parse().ok()
            })
            .collect()
    }

    fn update() -> FeedEvent {
        FeedEvent::Update {
            timestamp: 1,
            value: 0.5,
        }
    }

    #[test]
    fn resume_replays_exactly_the_missed_events() {
        let feed = Feed::new(100, Duration::from_secs(1));
        let first = feed.publish(update());
        for _ in 0..4 {
            feed.publish(update());
        }
        let sub = feed.subscribe(Some(first + 1));
        assert_eq!(ids(&sub.replay), vec![first + 2, first + 3, first + 4]);
        assert_eq!(sub.last_id, first + 4);
    }

    #[test]
    fn resume_from_before_the_backlog_says_gap_first() {
        let feed = Feed::new(100, Duration::from_secs(1));
        let first = feed.publish(update());
        for _ in 0..150 {
            feed.publish(update());
        }
        let sub = feed.subscribe(Some(first));
        assert!(std::str::from_utf8(&sub.replay[0])
            .unwrap()
            .contains(r#""type":"gap""#));
        assert_eq!(ids(&sub.replay).len(), 100);
    }

    #[test]
    fn backlog_is_bounded_and_recent_is_oldest_first() {
        let feed = Feed::new(100, Duration::from_secs(1));
        for _ in 0..250 {
            feed.publish(update());
        }
        let recent = feed.recent(10);
        assert_eq!(recent.len(), 10);
        assert!(recent.windows(2).all(|w| w[0].id + 1 == w[1].id));
        assert_eq!(feed.lock().events.len(), 100);
    }
}
