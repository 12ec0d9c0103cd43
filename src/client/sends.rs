//! One's own messages until the server has them: every message gets its
//! `client_id` when Send is pressed and is accounted for from then on —
//! queued (typed while offline or behind another), in flight, waiting to be
//! sent again (a `nack` that passes by waiting: `rate_limited`,
//! `unavailable`), failed (a `nack` that will not pass: shown with its
//! reason and a Retry), or sent (acked at its offset) until its echo is on
//! screen. Messages of one room go one at a time, in the order they were
//! typed: the next leaves once the previous one is acked, so no two overtake
//! each other on the way (a fallback post may cross instances).
//!
//! Pure logic, so it is tested natively; the connection drives it
//! (`client::chat_link`) and the browser keeps what is unsent in local
//! storage ([`Sends::unsent`], [`Sends::restore`]), so a reload or a closed
//! tab loses nothing.

use serde::{Deserialize, Serialize};

use crate::protocol::ErrorCode;

/// Most unsent messages one room may hold.
pub const MAX_QUEUED: usize = 100;

/// Most bytes of unsent text one room may hold.
pub const MAX_QUEUED_BYTES: usize = 64 * 1024;

/// Where one own message stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SendState {
    /// Waiting for its turn (or for a connection).
    Queued,
    /// Sent; its `ack` or `nack` has not come yet.
    InFlight,
    /// To be sent again (same `client_id`) at this time (ms since the epoch).
    Waiting {
        /// When.
        until_ms: f64,
        /// What the server said.
        reason: String,
    },
    /// Refused for good (until Retry).
    Failed {
        /// What the server said.
        reason: String,
    },
    /// In the room's stream at this offset; shown as sent until its echo is.
    Sent {
        /// Its offset.
        offset: u64,
    },
}

impl SendState {
    /// Its name, as the page marks it (`data-state`).
    pub fn name(&self) -> &'static str {
        match self {
            SendState::Queued => "queued",
            SendState::InFlight => "inflight",
            SendState::Waiting { .. } => "waiting",
            SendState::Failed { .. } => "failed",
            SendState::Sent { .. } => "sent",
        }
    }
}

/// One own message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    /// Its room.
    pub room: String,
    /// Its id, chosen when Send was pressed.
    pub client_id: String,
    /// Its text.
    pub text: String,
    /// Where it stands.
    pub state: SendState,
}

impl Outgoing {
    /// Whether the server does not have it yet.
    pub fn unsent(&self) -> bool {
        !matches!(self.state, SendState::Sent { .. })
    }
}

/// What is kept across reloads of an unsent message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    /// Its room.
    pub room: String,
    /// Its id.
    pub client_id: String,
    /// Its text.
    pub text: String,
}

/// A room's queue is full: the composer says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// One's own messages, oldest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sends {
    /// In the order they were typed.
    items: Vec<Outgoing>,
}

impl Sends {
    /// Every own message still shown, oldest first.
    pub fn all(&self) -> &[Outgoing] {
        &self.items
    }

    /// Queues a message typed in `room`; refused past the room's bounds.
    pub fn push(&mut self, room: &str, client_id: String, text: String) -> Result<(), Full> {
        let unsent = self.items.iter().filter(|o| o.room == room && o.unsent());
        let (count, bytes) = unsent.fold((0, 0), |(n, b), o| (n + 1, b + o.text.len()));
        if count >= MAX_QUEUED || bytes + text.len() > MAX_QUEUED_BYTES {
            return Err(Full);
        }
        self.items.push(Outgoing {
            room: room.to_string(),
            client_id,
            text,
            state: SendState::Queued,
        });
        Ok(())
    }

    /// The messages to send now (at `now_ms`): in each room that is
    /// `ready` (joined), the oldest unsent one that is due, if none is in
    /// flight there. They are marked in flight.
    pub fn due(&mut self, now_ms: f64, ready: impl Fn(&str) -> bool) -> Vec<Outgoing> {
        let mut rooms_busy: Vec<String> = Vec::new();
        let mut due = Vec::new();
        for item in &mut self.items {
            if rooms_busy.contains(&item.room) || !ready(&item.room) {
                continue;
            }
            match &item.state {
                SendState::InFlight => rooms_busy.push(item.room.clone()),
                SendState::Queued => {
                    item.state = SendState::InFlight;
                    rooms_busy.push(item.room.clone());
                    due.push(item.clone());
                }
                SendState::Waiting { until_ms, .. } if *until_ms <= now_ms => {
                    item.state = SendState::InFlight;
                    rooms_busy.push(item.room.clone());
                    due.push(item.clone());
                }
                // Its turn comes after the wait: the ones after it wait too.
                SendState::Waiting { .. } => rooms_busy.push(item.room.clone()),
                SendState::Failed { .. } | SendState::Sent { .. } => {}
            }
        }
        due
    }

    /// When the next waiting message is due (ms since the epoch).
    pub fn next_wait(&self) -> Option<f64> {
        self.items
            .iter()
            .filter_map(|o| match o.state {
                SendState::Waiting { until_ms, .. } => Some(until_ms),
                _ => None,
            })
            .reduce(f64::min)
    }

    fn find(&mut self, client_id: &str) -> Option<&mut Outgoing> {
        self.items.iter_mut().find(|o| o.client_id == client_id)
    }

    /// Its `ack`: in the room's stream at `offset`.
    pub fn acked(&mut self, client_id: &str, offset: u64) {
        if let Some(item) = self.find(client_id) {
            item.state = SendState::Sent { offset };
        }
    }

    /// Its `nack` at `now_ms`: to be sent again after `retry_after_ms` if
    /// waiting helps, else failed with `reason`.
    pub fn nacked(
        &mut self,
        client_id: &str,
        code: ErrorCode,
        reason: &str,
        retry_after_ms: Option<u64>,
        now_ms: f64,
    ) {
        let Some(item) = self.find(client_id) else {
            return;
        };
        item.state = match code {
            ErrorCode::RateLimited | ErrorCode::Unavailable => SendState::Waiting {
                until_ms: now_ms + retry_after_ms.unwrap_or(1000) as f64,
                reason: reason.to_string(),
            },
            _ => SendState::Failed {
                reason: reason.to_string(),
            },
        };
    }

    /// Its echo is on screen (a message of one's own with this
    /// `client_id`): it needs no showing of its own any more.
    pub fn echoed(&mut self, client_id: &str) {
        self.items.retain(|o| o.client_id != client_id);
    }

    /// The connection went away: whatever was in flight may or may not have
    /// arrived, and is sent again (with its `client_id`, so at most once).
    pub fn connection_lost(&mut self) {
        for item in &mut self.items {
            if item.state == SendState::InFlight {
                item.state = SendState::Queued;
            }
        }
    }

    /// Sends a failed message again.
    pub fn retry(&mut self, client_id: &str) {
        if let Some(item) = self.find(client_id) {
            if matches!(item.state, SendState::Failed { .. }) {
                item.state = SendState::Queued;
            }
        }
    }

    /// Forgets a message (a failed one the user dismissed, or a room left).
    pub fn discard(&mut self, client_id: &str) {
        self.items.retain(|o| o.client_id != client_id);
    }

    /// What to keep across reloads: every message the server does not have.
    pub fn unsent(&self) -> Vec<Kept> {
        self.items
            .iter()
            .filter(|o| o.unsent())
            .map(|o| Kept {
                room: o.room.clone(),
                client_id: o.client_id.clone(),
                text: o.text.clone(),
            })
            .collect()
    }

    /// Takes in what another tab (or this one, before a reload) kept: each
    /// not known here is queued, in order; those known here but no longer
    /// kept were sent by another tab (their echo comes, or came).
    pub fn restore(&mut self, kept: Vec<Kept>) {
        for k in kept.iter() {
            if !self.items.iter().any(|o| o.client_id == k.client_id) {
                self.items.push(Outgoing {
                    room: k.room.clone(),
                    client_id: k.client_id.clone(),
                    text: k.text.clone(),
                    state: SendState::Queued,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(sends: &[Outgoing]) -> Vec<&str> {
        sends.iter().map(|o| o.client_id.as_str()).collect()
    }

    #[test]
    fn a_room_sends_one_at_a_time_in_the_order_typed() {
        let mut s = Sends::default();
        for id in ["a1", "a2", "a3"] {
            s.push("a", id.into(), id.into()).unwrap();
        }
        s.push("b", "b1".into(), "b1".into()).unwrap();
        assert_eq!(ids(&s.due(0.0, |r| r == "a")), ["a1"], "only rooms joined");
        s.connection_lost();
        assert_eq!(ids(&s.due(0.0, |_| true)), ["a1", "b1"], "one per room");
        assert!(s.due(0.0, |_| true).is_empty(), "none while they fly");
        s.acked("a1", 7);
        assert_eq!(ids(&s.due(0.0, |_| true)), ["a2"]);
        assert_eq!(s.all()[0].state, SendState::Sent { offset: 7 });
        s.echoed("a1");
        assert_eq!(ids(s.all()), ["a2", "a3", "b1"]);
    }

    #[test]
    fn a_nack_that_passes_by_waiting_is_sent_again_and_one_that_does_not_fails() {
        let mut s = Sends::default();
        s.push("a", "x".into(), "x".into()).unwrap();
        s.push("a", "y".into(), "y".into()).unwrap();
        s.due(0.0, |_| true);
        s.nacked("x", ErrorCode::RateLimited, "slow", Some(500), 1000.0);
        assert!(s.due(1200.0, |_| true).is_empty(), "x waits, y behind it");
        assert_eq!(s.next_wait(), Some(1500.0));
        assert_eq!(
            ids(&s.due(1500.0, |_| true)),
            ["x"],
            "the same client_id again"
        );
        s.nacked("x", ErrorCode::InvalidMessage, "bad", None, 1600.0);
        assert!(matches!(s.all()[0].state, SendState::Failed { .. }));
        assert_eq!(
            ids(&s.due(1600.0, |_| true)),
            ["y"],
            "a failed one blocks nothing"
        );
        s.acked("y", 1);
        s.retry("x");
        assert_eq!(ids(&s.due(1700.0, |_| true)), ["x"]);
    }

    #[test]
    fn a_lost_connection_sends_what_flew_again() {
        let mut s = Sends::default();
        s.push("a", "x".into(), "x".into()).unwrap();
        assert_eq!(ids(&s.due(0.0, |_| true)), ["x"]);
        s.connection_lost();
        assert_eq!(
            ids(&s.due(0.0, |_| true)),
            ["x"],
            "same client_id: at most once"
        );
    }

    #[test]
    fn the_queue_is_bounded_per_room_in_count_and_bytes() {
        let mut s = Sends::default();
        for i in 0..MAX_QUEUED {
            s.push("a", format!("{i}"), "t".into()).unwrap();
        }
        assert_eq!(s.push("a", "more".into(), "t".into()), Err(Full));
        assert!(s.push("b", "other".into(), "t".into()).is_ok(), "per room");
        let mut s = Sends::default();
        s.push("a", "big".into(), "x".repeat(MAX_QUEUED_BYTES - 10))
            .unwrap();
        assert_eq!(s.push("a", "next".into(), "y".repeat(11)), Err(Full));
        // Sent ones no longer count.
        s.due(0.0, |_| true);
        s.acked("big", 1);
        assert!(s.push("a", "next".into(), "y".repeat(11)).is_ok());
    }

    #[test]
    fn what_is_kept_comes_back_once_and_in_order() {
        let mut s = Sends::default();
        s.push("a", "x".into(), "x".into()).unwrap();
        s.push("a", "y".into(), "y".into()).unwrap();
        s.due(0.0, |_| true);
        s.acked("x", 3);
        let kept = s.unsent();
        assert_eq!(kept.len(), 1, "the acked one is not kept");
        let mut reloaded = Sends::default();
        reloaded.restore(kept.clone());
        reloaded.restore(kept);
        assert_eq!(ids(reloaded.all()), ["y"], "no duplicate");
        assert_eq!(ids(&reloaded.due(0.0, |_| true)), ["y"]);
    }
}
