//! `GET /api/events`: one SSE stream of the feed per client, served as a
//! response body of the frames the feed encoded once.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{stream, Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{encode, encoded, Encoded, Feed, Frame, Subscription};
use crate::protocol::{FeedEvent, StreamPing, LAST_EVENT_ID_PARAM, PING_EVENT};
use crate::server::clock::now_ms;
use crate::server::metrics;

/// The query of `GET /api/events`.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    /// Resume point for a first connection (the header wins when both are set).
    #[serde(rename = "lastEventId")]
    pub last_event_id: Option<String>,
}

/// What the SSE handler needs.
#[derive(Clone)]
pub struct FeedState {
    /// The shared feed.
    pub feed: Arc<Feed>,
    /// Ends every open stream when the server shuts down.
    pub shutdown: CancellationToken,
}

/// A feed request's resume point is not an event id.
#[derive(Debug, PartialEq)]
pub struct BadLastEventId;

impl IntoResponse for BadLastEventId {
    fn into_response(self) -> Response {
        crate::server::refusal::Refused::invalid(format!(
            "Last-Event-ID (or ?{LAST_EVENT_ID_PARAM}=) must be an event id: a whole number"
        ))
        .into_response()
    }
}

/// The resume point of a feed request, from its `Last-Event-ID` header or
/// its `lastEventId` query parameter.
///
/// Browsers send `Last-Event-ID` on their own reconnects, and it is always
/// newer than the query parameter of the stream's first URL, so it wins.
pub fn last_seen(
    header: Option<&[u8]>,
    query: Option<&str>,
) -> Result<Option<u64>, BadLastEventId> {
    let raw = match header {
        Some(value) => std::str::from_utf8(value).map_err(|_| BadLastEventId)?,
        None => match query {
            Some(value) => value,
            None => return Ok(None),
        },
    };
    match raw.trim() {
        "" => Ok(None),
        id => id.parse().map(Some).map_err(|_| BadLastEventId),
    }
}

/// `GET /api/events` through axum: the live feed as `text/event-stream`.
pub async fn events(
    State(state): State<FeedState>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Response {
    let header = headers.get("last-event-id").map(HeaderValue::as_bytes);
    match last_seen(header, query.last_event_id.as_deref()) {
        Ok(last_seen) => sse_response(event_stream(&state, last_seen)),
        Err(bad) => bad.into_response(),
    }
}

/// The headers of every `text/event-stream` response: uncached, and not
/// buffered by proxies.
const SSE_HEADERS: [(&str, &str); 3] = [
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
];

/// A `text/event-stream` response over `body` (shared by every SSE endpoint
/// served through axum).
pub fn sse_response<S>(body: S) -> Response
where
    S: Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
{
    let mut res = axum::body::Body::from_stream(body).into_response();
    for (name, value) in SSE_HEADERS {
        res.headers_mut().insert(
            header::HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    res
}

/// The heartbeat of a stream that sends one at least every `interval`
/// ([`PING_EVENT`] with a [`StreamPing`]; shared by every SSE endpoint).
pub fn ping_frame(interval: Duration) -> Bytes {
    let ping = StreamPing {
        interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
    };
    // A struct of one number always serializes.
    let data = serde_json::to_string(&ping).unwrap_or_default();
    Bytes::from(format!("event: {PING_EVENT}\ndata: {data}\n\n"))
}

/// State of one stream's live part.
struct Live {
    /// Where frames come from.
    rx: broadcast::Receiver<Frame>,
    /// Newest event id sent, to drop anything older after a resubscription.
    last_id: u64,
    /// Frames to send before reading the channel again (after a lag).
    pending: VecDeque<Encoded>,
    /// To resubscribe after falling behind the channel.
    feed: Arc<Feed>,
    /// Keeps the stream counted until the client goes away.
    _open: metrics::OpenConnection,
}

/// Opens a stream: the frames it starts with (`retry:`, the heartbeat that
/// says how often the next ones come, `connected`, then the replay) and its
/// live part.
fn open(state: &FeedState, last_seen: Option<u64>) -> (Vec<Encoded>, Live) {
    let open = metrics::OpenConnection::new(metrics::Transport::Sse);
    let Subscription {
        replay,
        live,
        last_id,
    } = state.feed.subscribe(last_seen);
    let connected = encoded(format!(
        "data: {}\n\n",
        encode(&FeedEvent::Connected {
            timestamp: now_ms()
        })
    ));
    let mut head = Vec::with_capacity(3 + replay.len());
    head.push(state.feed.retry.clone());
    head.push(state.feed.ping.clone());
    head.push(connected);
    head.extend(replay);
    let live = Live {
        rx: live,
        last_id,
        pending: VecDeque::new(),
        feed: state.feed.clone(),
        _open: open,
    };
    (head, live)
}

/// The body of one SSE response served by hyper: the opening frames, then
/// live frames until the client goes away or the server shuts down. Dropping
/// it (as hyper does when the client disconnects) frees everything it holds.
fn event_stream(
    state: &FeedState,
    last_seen: Option<u64>,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    let (head, live) = open(state, last_seen);
    let head = head.into_iter().map(Ok);
    let tail = stream::unfold(live, |mut live| async move {
        let frame = next_frame(&mut live).await?;
        Some((Ok(frame), live))
    });
    stream::iter(head)
        .chain(tail)
        .take_until(state.shutdown.clone().cancelled_owned())
}

async fn next_frame(live: &mut Live) -> Option<Encoded> {
    loop {
        if let Some(frame) = live.pending.pop_front() {
            return Some(frame);
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

    #[test]
    fn the_header_wins_over_the_query_and_blank_means_none() {
        assert_eq!(last_seen(Some(b"7"), Some("3")), Ok(Some(7)));
        assert_eq!(last_seen(None, Some(" 3 ")), Ok(Some(3)));
        assert_eq!(last_seen(Some(b" "), Some("3")), Ok(None));
        assert_eq!(last_seen(None, None), Ok(None));
        assert_eq!(last_seen(Some(b"abc"), None), Err(BadLastEventId));
        assert_eq!(last_seen(None, Some("-1")), Err(BadLastEventId));
        assert_eq!(last_seen(Some(&[0xff]), None), Err(BadLastEventId));
    }
}
