//! The chat's background work: presence frames sent, presence renewed and
//! swept, rooms' streams read again where a gap or a lost stream needs it,
//! idle rooms dropped.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::reads::{decode_all, recent};
use super::room::Arrival;
use super::{hub, Chat, Resync};
use crate::protocol::HISTORY_LEN;
use crate::server::cluster::{PresenceChange, Range, Unavailable, RETRY_UNAVAILABLE};
use crate::server::metrics;

impl Chat {
    /// Runs the chat's background work until shutdown: presence changes
    /// sent every [`hub::PRESENCE_INTERVAL`]; presence renewed and swept
    /// (and who is gone told); rooms' streams read again where they must
    /// be; idle rooms dropped every `every`.
    pub async fn run(self: Arc<Self>, every: Duration) {
        let Some(mut resyncs) = self.resync_queue.lock().ok().and_then(|mut q| q.take()) else {
            return;
        };
        let tick = |period| {
            let mut t = tokio::time::interval(period);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        };
        let mut presence = tick(hub::PRESENCE_INTERVAL);
        let mut sweep_presence = tick(self.presence_period);
        let mut sweep = tick(every);
        let mut retry = tick(RETRY_UNAVAILABLE);
        // Rooms whose read failed (Redis down): tried again every second.
        let mut failed = BTreeSet::new();
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = presence.tick() => self.hub.flush_presence(),
                _ = sweep_presence.tick() => self.sweep_presence().await,
                resync = resyncs.recv() => {
                    let mut rooms = BTreeSet::new();
                    let mut next = resync;
                    while let Some(resync) = next {
                        match resync {
                            Resync::Room(room) => { rooms.insert(room); }
                            Resync::All => rooms.extend(self.hub.followed()),
                        }
                        next = resyncs.try_recv().ok();
                    }
                    for room in rooms {
                        if self.resync_room(&room).await.is_err() {
                            failed.insert(room);
                        }
                    }
                }
                _ = retry.tick(), if !failed.is_empty() => {
                    for room in std::mem::take(&mut failed) {
                        if self.resync_room(&room).await.is_err() {
                            failed.insert(room);
                        }
                    }
                }
                _ = sweep.tick() => {
                    let dropped = self.hub.sweep();
                    if dropped > 0 {
                        tracing::debug!(dropped, "dropped idle rooms");
                    }
                    self.limits.forget_quiet();
                }
            }
        }
    }

    /// Reads `room`'s stream after the room's position: what was missed is
    /// delivered; if it cannot be had whole, every member starts over.
    async fn resync_room(&self, room: &str) -> Result<(), Unavailable> {
        let Some(from) = self.hub.position(room) else {
            return Ok(()); // not followed (or its first join is under way)
        };
        let now = Instant::now();
        let after = Range::After(from.offset, self.recovery_max);
        let read = self.reads.read(&self.broker, room, after, now).await?;
        let arrival = if read.is_whole_after(&from) {
            metrics::stream_resynced("filled");
            self.hub
                .fill(room, &from, decode_all(room, &read.publications))
        } else {
            let latest = Range::Latest(HISTORY_LEN);
            let latest = self.reads.read(&self.broker, room, latest, now).await?;
            let members = self.presence.members(room).await?;
            tracing::info!(room, "stream lost or too far behind: members start over");
            metrics::stream_resynced("reset");
            let history = recent(decode_all(room, &latest.publications));
            self.hub.reset(room, latest.top.clone(), history, members)
        };
        if arrival == Arrival::Resync {
            self.resync(room);
        }
        Ok(())
    }

    /// Renews this instance's presence entries, sweeps expired ones, and
    /// tells the rooms who is gone.
    async fn sweep_presence(&self) {
        let rooms = self.hub.followed();
        if rooms.is_empty() {
            return;
        }
        let here = self.hub.present_here();
        let Ok(gone) = self.presence.sweep(&here, &rooms).await else {
            return;
        };
        for (room, member) in gone {
            let change = PresenceChange::Left { member };
            let _ = self.broker.publish_presence(&room, &change).await;
        }
    }
}
