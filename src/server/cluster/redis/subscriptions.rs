//! The room channels this instance is subscribed to: one while it has a
//! member in the room (or a fallback stream for it), none otherwise, so an
//! instance receives only the traffic of its own rooms. Changes are taken in
//! the order the hub decided them and applied in batches by the link's task,
//! so a join storm, a burst of leaves or a resubscription after a new
//! connection costs a few round trips, not one a room.

use std::collections::HashSet;

use tokio::sync::oneshot;

use super::{room_channel, Link, TIMEOUT};
use crate::server::cluster::Unavailable;

/// A change to the rooms this instance is subscribed to.
pub(super) enum Want {
    /// Subscribe; answer once it holds.
    Rooms(Vec<String>, oneshot::Sender<Result<(), Unavailable>>),
    /// Unsubscribe.
    NotRooms(Vec<String>),
    /// Redis dropped the room's subscription by itself (its slot moved to
    /// another shard), or confirmed that we left it.
    Lost(String),
    /// A connection to a server dropped: whatever it held is gone (a
    /// cluster client does not move a dead master's subscriptions to the
    /// replica that takes its place), so every room is subscribed again.
    Dropped,
}

/// The room channels, as the link's task keeps them.
#[derive(Default)]
pub(super) struct Rooms {
    /// The rooms this instance has a member in.
    wanted: HashSet<String>,
    /// Subscribed, as far as Redis confirmed.
    subscribed: HashSet<String>,
}

impl Rooms {
    /// Applies a batch of changes, in order, then brings the subscriptions
    /// in line and answers whoever waits: subscribed, or unavailable.
    pub(super) async fn apply(&mut self, link: &Link, batch: Vec<Want>) {
        let mut waiting = Vec::new();
        for want in batch {
            match want {
                Want::Rooms(rooms, done) => {
                    self.wanted.extend(rooms.iter().cloned());
                    waiting.push((rooms, done));
                }
                Want::NotRooms(rooms) => {
                    for room in rooms {
                        self.wanted.remove(&room);
                    }
                }
                Want::Lost(room) => {
                    self.subscribed.remove(&room);
                }
                Want::Dropped => self.subscribed.clear(),
            }
        }
        self.mend(link).await;
        for (rooms, done) in waiting {
            let held = rooms.iter().all(|room| self.subscribed.contains(room));
            let _ = done.send(if held { Ok(()) } else { Err(Unavailable) });
        }
    }

    /// A new connection holds none of them yet.
    pub(super) async fn renew(&mut self, link: &Link) {
        self.subscribed.clear();
        self.mend(link).await;
    }

    /// Subscribes what is wanted and not held, unsubscribes what is held and
    /// not wanted: one command each (one a slot, sent together, on a
    /// cluster). What fails is tried again at the next heartbeat.
    pub(super) async fn mend(&mut self, link: &Link) {
        let Some(mut connection) = link.current() else {
            return;
        };
        let gone: Vec<String> = self.subscribed.difference(&self.wanted).cloned().collect();
        if !gone.is_empty() {
            let channels: Vec<String> = gone.iter().map(|room| room_channel(room)).collect();
            let _ = tokio::time::timeout(TIMEOUT, connection.unsubscribe(&channels)).await;
            for room in &gone {
                self.subscribed.remove(room);
            }
        }
        let new: Vec<String> = self.wanted.difference(&self.subscribed).cloned().collect();
        if new.is_empty() || !link.is_up() {
            return;
        }
        let channels: Vec<String> = new.iter().map(|room| room_channel(room)).collect();
        if let Ok(Ok(())) = tokio::time::timeout(TIMEOUT, connection.subscribe(&channels)).await {
            self.subscribed.extend(new);
        }
    }
}
