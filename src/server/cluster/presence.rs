//! Presence: who is in which room, across instances.
//!
//! Each instance holds an entry per member it has in a room; a member is
//! present while any instance holds a live entry for them, so a user with
//! tabs on two instances is one member. Entries expire unless refreshed
//! (an instance that dies stops refreshing: its members drop out within the
//! presence TTL). When a member's last connection on an instance goes away,
//! that instance keeps the entry for a grace period first: a reconnect
//! within it, here or on any other instance, finds the member still present,
//! and nobody is told they left and joined again.
//!
//! The calls say when someone became present, or stopped being present,
//! anywhere: the caller then tells the room (through the broker). Each
//! change is reported by exactly one call.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::Unavailable;
use crate::protocol::Member;

/// Someone entered or left a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum PresenceChange {
    /// Present now, and was not before.
    Joined {
        /// Who.
        member: Member,
    },
    /// Not present anywhere any more.
    Left {
        /// Who.
        member: Member,
    },
}

/// What [`Presence::enter`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entered {
    /// The member was present nowhere before: tell the room.
    pub first: bool,
    /// Everyone present in the room now (the member included), each once.
    pub members: Vec<Member>,
}

/// Presence across instances.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Marks `member` present in `room` on this instance (or renews their
    /// entry here).
    async fn enter(&self, room: &str, member: &Member) -> Result<Entered, Unavailable>;

    /// Everyone present in `room` now, each once.
    async fn members(&self, room: &str) -> Result<Vec<Member>, Unavailable>;

    /// `member` has no connection in `room` on this instance any more. With
    /// a `grace`, their entry here lives that much longer (a reconnect
    /// within it changes nothing; [`Presence::sweep`] removes it after);
    /// without, it goes now. True if they are now present nowhere.
    async fn leave(
        &self,
        room: &str,
        member: &Member,
        grace: Option<Duration>,
    ) -> Result<bool, Unavailable>;

    /// Renews this instance's entries (`here`: `(room, member)`), and
    /// removes the expired entries of any instance in `rooms`. Returns the
    /// members who are now present nowhere, each once across all instances.
    async fn sweep(
        &self,
        here: &[(String, Member)],
        rooms: &[String],
    ) -> Result<Vec<(String, Member)>, Unavailable>;
}
