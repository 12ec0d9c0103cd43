//! The room channels this instance is subscribed to: changes are taken in
//! the order the hub decided them, and applied in batches by the link's
//! task, so a join storm or a burst of leaves costs two round trips, not one
//! a room. (After a reconnect, redis-rs's manager subscribes them again.)

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
}

/// The room channels this instance is subscribed to, as the link's task
/// keeps them.
#[derive(Default)]
pub(super) struct Rooms {
    /// Subscribed, as far as Redis confirmed.
    subscribed: HashSet<String>,
}

impl Rooms {
    /// Applies a batch of changes, in order: one `UNSUBSCRIBE` and one
    /// `SUBSCRIBE` for all of them (a join storm costs two round trips, not
    /// one a room), then answers whoever waits.
    pub(super) async fn apply(&mut self, link: &Link, batch: Vec<Want>) {
        let mut wanted = self.subscribed.clone();
        let mut waiting = Vec::new();
        for want in batch {
            match want {
                Want::Rooms(rooms, done) => {
                    wanted.extend(rooms);
                    waiting.push(done);
                }
                Want::NotRooms(rooms) => {
                    for room in rooms {
                        wanted.remove(&room);
                    }
                }
            }
        }
        let mut manager = link.manager.clone();
        let gone: Vec<String> = self
            .subscribed
            .difference(&wanted)
            .map(|room| room_channel(room))
            .collect();
        if !gone.is_empty() {
            let _ = tokio::time::timeout(TIMEOUT, manager.unsubscribe(&gone)).await;
        }
        self.subscribed.retain(|room| wanted.contains(room));
        let new: Vec<String> = wanted.difference(&self.subscribed).cloned().collect();
        let answer = if new.is_empty() {
            Ok(())
        } else if !link.is_up() {
            Err(Unavailable)
        } else {
            let channels: Vec<String> = new.iter().map(|room| room_channel(room)).collect();
            match tokio::time::timeout(TIMEOUT, manager.subscribe(&channels)).await {
                Ok(Ok(())) => {
                    self.subscribed.extend(new);
                    Ok(())
                }
                _ => Err(Unavailable),
            }
        };
        for done in waiting {
            let _ = done.send(answer);
        }
    }
}
