//! The live feed: one ticker per server, and a bounded backlog for clients
//! that resume; [`stream`] is the Server-Sent-Events endpoint that streams it.
//!
//! Every event is encoded once, as its complete SSE frame, when it is
//! published; every stream sends those same bytes (a [`Bytes`] clone is a
//! reference count), so the cost of a delivery does not grow with the
//! event's size or the number of streams.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast;
use tokio::time::{interval, interval_at, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::protocol::{FeedEvent, FeedItem, RECENT_NOTIFICATIONS};
use crate::server::clock::now_ms;

mod stream;

pub use stream::{
    events, last_seen, ping_frame, sse_response, BadLastEventId, EventsQuery, FeedState,
};

/// A time-ordered id floor: now, in milliseconds, times 1000 (room for a
/// thousand events a millisecond; about 1.8e15, exact in a JS number).
fn time_id() -> u64 {
    now_ms().saturating_mul(1000)
}

/// An SSE frame, encoded once and shared by every stream that sends it.
type Encoded = Bytes;

/// `frame` as shared bytes.
fn encoded(frame: String) -> Encoded {
    Bytes::from(frame)
}

/// One frame on the broadcast channel, already encoded for the wire.
#[derive(Clone, Debug)]
struct Frame {
    /// The event's id; `None` for frames that are not events of the feed
    /// (heartbeats, health).
    id: Option<u64>,
    /// The complete SSE frame (`id:` + `data:` lines, or a heartbeat).
    bytes: Encoded,
}

/// An event kept in the backlog.
#[derive(Debug)]
struct Stored {
    /// The event, for server-side rendering.
    item: FeedItem,
    /// Its encoded SSE frame, for replay.
    frame: Frame,
    /// Compared with a resuming client's `Last-Event-ID`: the event's id, or
    /// for an event from another instance the id it got there, so that a
    /// client that saw it there and resumes here does not get it twice.
    resume_key: u64,
}

/// The bounded history of published events, oldest first.
#[derive(Debug)]
struct Backlog {
    /// Id of the newest published event (one less than the first id before
    /// any event).
    last_id: u64,
    /// Events with ids up to this one are unknown here: evicted from the
    /// backlog, or published before this process started.
    lost_up_to: u64,
    /// At most `capacity` events, oldest first, ids increasing.
    events: VecDeque<Stored>,
    /// The latest [`RECENT_NOTIFICATIONS`] notifications, oldest first: kept
    /// apart, as the ticker pushes them out of `events` within seconds.
    notifications: VecDeque<FeedItem>,
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
    retry: Encoded,
    /// The heartbeat every stream gets when it opens and every keep-alive
    /// interval after that.
    ping: Encoded,
    /// Whether the other instances can be reached (told to new streams).
    reachable: std::sync::atomic::AtomicBool,
}

/// What a new stream gets: the frames to replay, then the live channel.
pub struct Subscription {
    /// Frames to send before any live one (a `gap` and/or missed events).
    replay: Vec<Encoded>,
    /// The live channel, subscribed at the moment the backlog was read.
    live: broadcast::Receiver<Frame>,
    /// Id of the newest event the subscriber has (or is about to be) sent.
    last_id: u64,
}

impl Feed {
    /// A feed that keeps `capacity` events, suggests `retry` to clients and
    /// sends them a heartbeat every `keep_alive` (see [`Feed::keep_alive`]).
    ///
    /// Ids are time-ordered: an event gets `max(previous + 1, now_ms * 1000)`.
    /// So they keep increasing across restarts (a client that resumes after a
    /// restart gets a `gap`, never silence), and ids issued by different
    /// instances at about the same time are close: a notification seen on one
    /// instance can be resumed after on another, which received it too.
    pub fn new(capacity: usize, retry: Duration, keep_alive: Duration) -> Self {
        // The channel only has to cover the time between two polls of a
        // stream; a stream that falls further behind resumes from the backlog.
        let (live, _) = broadcast::channel(capacity.clamp(16, 1024));
        Feed {
            backlog: Mutex::new(Backlog {
                last_id: time_id() - 1,
                lost_up_to: time_id() - 1,
                events: VecDeque::with_capacity(capacity),
                notifications: VecDeque::with_capacity(RECENT_NOTIFICATIONS),
                capacity,
            }),
            live,
            retry: encoded(format!("retry: {}\n\n", retry.as_millis())),
            ping: ping_frame(keep_alive),
            reachable: std::sync::atomic::AtomicBool::new(true),
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
        self.insert(event, None)
    }

    /// Publishes an event that another instance published as `origin_id`.
    pub fn publish_remote(&self, event: FeedEvent, origin_id: u64) -> u64 {
        self.insert(event, Some(origin_id))
    }

    fn insert(&self, event: FeedEvent, origin_id: Option<u64>) -> u64 {
        let mut backlog = self.lock();
        let id = (backlog.last_id + 1).max(time_id());
        backlog.last_id = id;
        let frame = Frame {
            id: Some(id),
            bytes: encoded(format!("id: {id}\ndata: {}\n\n", encode(&event))),
        };
        if backlog.events.len() == backlog.capacity {
            if let Some(gone) = backlog.events.pop_front() {
                backlog.lost_up_to = gone.item.id;
            }
        }
        if matches!(event, FeedEvent::Notification { .. }) {
            if backlog.notifications.len() == RECENT_NOTIFICATIONS {
                backlog.notifications.pop_front();
            }
            backlog.notifications.push_back(FeedItem {
                id,
                event: event.clone(),
            });
        }
        backlog.events.push_back(Stored {
            item: FeedItem { id, event },
            frame: frame.clone(),
            resume_key: origin_id.unwrap_or(id),
        });
        // An error only means nobody is listening.
        let _ = self.live.send(frame);
        id
    }

    /// Tells every open stream (and every new one, while it lasts) whether
    /// the other instances can be reached.
    pub fn set_reachable(&self, other_servers: bool) {
        let _backlog = self.lock(); // in order with subscriptions
        self.reachable
            .store(other_servers, std::sync::atomic::Ordering::Relaxed);
        let _ = self.live.send(Frame {
            id: None,
            bytes: encoded(format!(
                "data: {}\n\n",
                encode(&FeedEvent::Health { other_servers })
            )),
        });
    }

    /// Sends the heartbeat to every open stream: it keeps proxies from
    /// closing an idle stream, and tells the client the stream is alive.
    pub fn keep_alive(&self) {
        let _ = self.live.send(Frame {
            id: None,
            bytes: self.ping.clone(),
        });
    }

    /// Subscribes a stream. With `last_seen` (the client's `Last-Event-ID`),
    /// the events after it are replayed from the backlog; if some of them are
    /// no longer there, a `gap` event comes first.
    pub fn subscribe(&self, last_seen: Option<u64>) -> Subscription {
        let backlog = self.lock();
        let live = self.live.subscribe();
        let newest = backlog.last_id;
        let mut replay = Vec::new();
        if let Some(last) = last_seen {
            // Some events after `last` may be unknown here: say so first.
            if last < backlog.lost_up_to {
                replay.push(encoded(format!("data: {}\n\n", encode(&FeedEvent::Gap))));
            }
            // An id newer than ours (another instance's clock runs ahead)
            // replays nothing: the client is up to date.
            replay.extend(
                backlog
                    .events
                    .iter()
                    .filter(|s| s.resume_key > last)
                    .map(|s| s.frame.bytes.clone()),
            );
        }
        if !self.reachable.load(std::sync::atomic::Ordering::Relaxed) {
            replay.push(encoded(format!(
                "data: {}\n\n",
                encode(&FeedEvent::Health {
                    other_servers: false
                })
            )));
        }
        Subscription {
            replay,
            live,
            last_id: newest,
        }
    }

    /// For server-side rendering, oldest first: the newest `rows` events
    /// other than notifications, and the latest notifications (however old).
    pub fn recent(&self, rows: usize) -> Vec<FeedItem> {
        let backlog = self.lock();
        let mut recent: Vec<FeedItem> = backlog
            .events
            .iter()
            .rev()
            .filter(|s| !matches!(s.item.event, FeedEvent::Notification { .. }))
            .take(rows)
            .map(|s| s.item.clone())
            .collect();
        recent.extend(backlog.notifications.iter().cloned());
        recent.sort_by_key(|item| item.id);
        recent
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

/// Runs the feed until `shutdown`: one ticker (an update every `period` and a
/// heartbeat every `keep_alive`, for all streams at once, no timer per
/// connection), and the other instances' reachability told to every stream.
/// (Notifications from other instances come through [`Feed::publish_remote`].)
pub async fn run(
    feed: Arc<Feed>,
    mut reachable: tokio::sync::watch::Receiver<bool>,
    period: Duration,
    keep_alive: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = interval(period);
    // After a stall, carry on at the normal pace rather than in a burst.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut keep_alives = interval_at(Instant::now() + keep_alive, keep_alive);
    let mut bus_gone = false;
    keep_alives.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticks.tick() => {
                feed.publish(FeedEvent::Update { timestamp: now_ms(), value: fastrand::f64() });
            }
            _ = keep_alives.tick() => feed.keep_alive(),
            changed = reachable.changed(), if !bus_gone => match changed {
                Ok(()) => feed.set_reachable(*reachable.borrow_and_update()),
                Err(_) => bus_gone = true,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(frames: &[Encoded]) -> Vec<u64> {
        frames
            .iter()
            .filter_map(|f| {
                let s = std::str::from_utf8(f).ok()?;
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
        let feed = Feed::new(100, Duration::from_secs(1), Duration::from_secs(15));
        let published: Vec<u64> = (0..5).map(|_| feed.publish(update())).collect();
        assert!(published.windows(2).all(|w| w[0] < w[1]), "ids increase");
        let sub = feed.subscribe(Some(published[1]));
        assert_eq!(ids(&sub.replay), published[2..]);
        assert_eq!(sub.last_id, published[4]);
        // An id from the future (another instance's clock) replays nothing.
        assert!(feed.subscribe(Some(published[4] + 5)).replay.is_empty());
    }

    #[test]
    fn resume_from_before_the_backlog_says_gap_first() {
        let feed = Feed::new(100, Duration::from_secs(1), Duration::from_secs(15));
        let published: Vec<u64> = (0..151).map(|_| feed.publish(update())).collect();
        let sub = feed.subscribe(Some(published[0]));
        assert!(std::str::from_utf8(&sub.replay[0])
            .unwrap()
            .contains(r#""type":"gap""#));
        assert_eq!(ids(&sub.replay), published[51..]);
        // From before this process: a gap too.
        let fresh = Feed::new(100, Duration::from_secs(1), Duration::from_secs(15));
        let sub = fresh.subscribe(Some(1));
        assert_eq!(sub.replay.len(), 1);
    }

    #[test]
    fn backlog_is_bounded_and_recent_is_oldest_first() {
        let feed = Feed::new(100, Duration::from_secs(1), Duration::from_secs(15));
        for _ in 0..250 {
            feed.publish(update());
        }
        let recent = feed.recent(10);
        assert_eq!(recent.len(), 10);
        assert!(recent.windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!(feed.lock().events.len(), 100);
    }

    #[test]
    fn the_latest_notifications_outlive_the_backlog() {
        let feed = Feed::new(100, Duration::from_secs(1), Duration::from_secs(15));
        let note = |n: usize| FeedEvent::Notification {
            id: format!("n{n}"),
            user_id: "u".into(),
            user: "Ada".into(),
            text: format!("note {n}"),
            timestamp: 1,
        };
        let notes: Vec<u64> = (0..25).map(|n| feed.publish(note(n))).collect();
        for _ in 0..300 {
            feed.publish(update());
        }
        let recent = feed.recent(10);
        let kept: Vec<u64> = recent
            .iter()
            .filter(|i| matches!(i.event, FeedEvent::Notification { .. }))
            .map(|i| i.id)
            .collect();
        assert_eq!(kept, notes[5..], "the latest twenty, oldest first");
        assert_eq!(recent.len(), 10 + RECENT_NOTIFICATIONS);
        assert!(recent.windows(2).all(|w| w[0].id < w[1].id));
    }
}
