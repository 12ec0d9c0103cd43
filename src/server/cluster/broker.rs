//! The broker: every room's stream and the pub/sub between instances.
//!
//! A room's stream is an ordered list of publications. Each gets an
//! `offset` one higher than the one before, assigned where every instance
//! agrees (in memory: under one lock; with Redis: in Redis, by the script
//! that appends), atomically with the append and the pub/sub delivery, so
//! the order in which instances receive a room's publications is the offset
//! order. The stream's `epoch` changes whenever it is lost, so that a
//! position in an old stream is never taken for one in the new.

use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Control, Handler, PresenceChange, Unavailable};
use crate::protocol::StreamPosition;

/// One publication of a room's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// Its place in the stream (1, 2, 3, …).
    pub offset: u64,
    /// What was published (the service's own encoding).
    pub data: Arc<str>,
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The publication's place: its offset, in the stream's epoch.
    pub position: StreamPosition,
    /// True if the idempotency key was seen before: nothing was published,
    /// and `position` is the first publication's.
    pub duplicate: bool,
}

/// Who published a publication and their id for it: the same key within
/// the dedup window is published once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The publisher's user id (verified).
    pub user_id: String,
    /// The client's id for the publication.
    pub client_id: String,
}

/// Which publications of a stream to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Range {
    /// The latest `n`, oldest first.
    Latest(usize),
    /// Those after the offset, oldest first, at most `n` of them.
    After(u64, usize),
}

/// A stream's publications, with its current top.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The epoch and the offset of the latest publication (0: none yet).
    pub top: StreamPosition,
    /// The publications asked for, oldest first.
    pub publications: Vec<Publication>,
}

impl History {
    /// Whether these publications are exactly all of those after `since`
    /// (asked for with `Range::After(since.offset, _)`): same epoch, none
    /// trimmed away, none cut off by the limit.
    pub fn is_whole_after(&self, since: &StreamPosition) -> bool {
        if self.top.epoch != since.epoch || since.offset > self.top.offset {
            return false;
        }
        let missed = self.top.offset - since.offset;
        self.publications.len() as u64 == missed
            && self
                .publications
                .iter()
                .zip(since.offset + 1..)
                .all(|(p, expected)| p.offset == expected)
    }
}

/// The broker between instances.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// This process's name among the instances (unique per start).
    fn instance(&self) -> &str;

    /// What the broker is, for the dashboard (`in-process`, `redis (connected)`, …).
    fn describe(&self) -> &'static str;

    /// Whether the other instances can be reached (always, with one), as it
    /// changes.
    fn reachable(&self) -> watch::Receiver<bool>;

    /// Keeps the link to the other instances up and hands everything that
    /// arrives to `handler`, until `shutdown`.
    async fn run(&self, handler: Arc<dyn Handler>, shutdown: CancellationToken);

    /// Appends `data` to `room`'s stream (within its count, byte and time
    /// bounds) and hands it to every instance subscribed to the room, this
    /// one included; with `key`, at most once per dedup window.
    async fn publish(
        &self,
        room: &str,
        data: &str,
        key: Option<&IdempotencyKey>,
    ) -> Result<Published, Unavailable>;

    /// Reads `room`'s stream. A room that never had a publication gets its
    /// epoch now, so that later publications are in that epoch.
    async fn history(&self, room: &str, range: Range) -> Result<History, Unavailable>;

    /// From now on, hand this instance the publications and presence
    /// changes of `rooms`. The request is taken at once, in order with
    /// [`Broker::unsubscribe`] (so call both under the lock that decides
    /// them); the future resolves once the subscription holds.
    fn subscribe(&self, rooms: &[String]) -> BoxFuture<'static, Result<(), Unavailable>>;

    /// Stop handing this instance what happens in `rooms` (taken at once,
    /// in order with [`Broker::subscribe`]).
    fn unsubscribe(&self, rooms: &[String]);

    /// Tells every instance subscribed to `room` that someone entered or
    /// left it (not kept in the stream).
    async fn publish_presence(
        &self,
        room: &str,
        change: &PresenceChange,
    ) -> Result<(), Unavailable>;

    /// Hands `control` to every instance, this one included.
    async fn broadcast(&self, control: &Control) -> Result<(), Unavailable>;

    /// Hands `control` to `instance` only; false if no such instance listens.
    async fn send_to(&self, instance: &str, control: &Control) -> Result<bool, Unavailable>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: &str, offset: u64) -> StreamPosition {
        StreamPosition {
            epoch: epoch.into(),
            offset,
        }
    }

    fn history(top: u64, offsets: &[u64]) -> History {
        History {
            top: at("e", top),
            publications: offsets
                .iter()
                .map(|&offset| Publication {
                    offset,
                    data: Arc::from(""),
                })
                .collect(),
        }
    }

    #[test]
    fn a_history_is_whole_only_without_holes_and_in_the_same_epoch() {
        assert!(history(5, &[4, 5]).is_whole_after(&at("e", 3)));
        assert!(
            history(3, &[]).is_whole_after(&at("e", 3)),
            "nothing missed"
        );
        assert!(!history(5, &[5]).is_whole_after(&at("e", 3)), "4 trimmed");
        assert!(!history(5, &[4]).is_whole_after(&at("e", 3)), "cut off");
        assert!(!history(5, &[4, 5]).is_whole_after(&at("f", 3)), "epoch");
        assert!(
            !history(2, &[]).is_whole_after(&at("e", 3)),
            "from the future"
        );
    }
}
