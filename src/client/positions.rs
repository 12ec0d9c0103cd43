//! Where the page is in each room's stream: the epoch and the offset of the
//! last publication it has shown. A rejoin asks for what came after it
//! (`since`); a live message that skips ahead of it means some were missed
//! (the page rejoins to recover them); one at or before it is a repeat
//! (skipped). Pure logic, tested natively.

use std::collections::HashMap;

use crate::protocol::StreamPosition;

/// What a message does to the page's place in its room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// The next one: show it.
    Next,
    /// Shown already (a repeat after a rejoin): skip it.
    Repeat,
    /// Some before it are missing: show it, and rejoin from this place to
    /// recover them (the page's place has moved on to it, so the messages
    /// that follow are not gaps too).
    Gap(StreamPosition),
}

/// The page's place in every room it is in.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Positions(HashMap<String, StreamPosition>);

impl Positions {
    /// The place to rejoin `room` from.
    pub fn since(&self, room: &str) -> Option<StreamPosition> {
        self.0.get(room).cloned()
    }

    /// A `joined` says the page is at `offset` of `epoch` now (or further,
    /// if live messages of the same epoch came before the answer).
    pub fn joined(&mut self, room: &str, epoch: &str, offset: u64) {
        let further = self
            .0
            .get(room)
            .filter(|at| at.epoch == epoch)
            .map_or(0, |at| at.offset);
        self.0.insert(
            room.to_string(),
            StreamPosition {
                epoch: epoch.to_string(),
                offset: offset.max(further),
            },
        );
    }

    /// A live message at `offset`: what it is to the page; the place moves
    /// to it unless it is a repeat. (A message of a room the page has no
    /// place in yet is the next one.)
    pub fn message(&mut self, room: &str, offset: u64) -> Arrival {
        let Some(at) = self.0.get_mut(room) else {
            return Arrival::Next;
        };
        if offset <= at.offset {
            return Arrival::Repeat;
        }
        let before = at.clone();
        at.offset = offset;
        if offset > before.offset + 1 {
            Arrival::Gap(before)
        } else {
            Arrival::Next
        }
    }

    /// The page left `room`: it starts afresh if it comes back.
    pub fn forget(&mut self, room: &str) {
        self.0.remove(room);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_skipped_and_skips_are_gaps() {
        let mut p = Positions::default();
        p.joined("r", "e", 5);
        assert_eq!(p.message("r", 6), Arrival::Next);
        assert_eq!(p.message("r", 6), Arrival::Repeat);
        assert_eq!(p.message("r", 3), Arrival::Repeat);
        let from = StreamPosition {
            epoch: "e".into(),
            offset: 6,
        };
        assert_eq!(p.message("r", 9), Arrival::Gap(from));
        assert_eq!(p.message("r", 10), Arrival::Next, "one gap, told once");
        assert_eq!(
            p.since("r"),
            Some(StreamPosition {
                epoch: "e".into(),
                offset: 10
            })
        );
        p.joined("r", "e", 8);
        assert_eq!(p.since("r").map(|p| p.offset), Some(10), "never back");
        p.joined("r", "f", 2);
        assert_eq!(p.since("r").map(|p| p.offset), Some(2), "a new epoch");
        p.forget("r");
        assert_eq!(p.since("r"), None);
        assert_eq!(p.message("r", 1), Arrival::Next);
    }
}
