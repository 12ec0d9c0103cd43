//! Who is in which room across instances. Each instance knows its own
//! members (the chat hub); with Redis, every instance also writes its
//! members into one sorted set per room, scored by when the entry expires,
//! and refreshes them every third of `PULSE_PRESENCE_TTL`. An instance that
//! dies stops refreshing: its entries expire, and the others see that and
//! announce those members as gone. With one instance this is all a no-op.
//!
//! Keys: `pulse:presence:{room}`, entries `{instance}|{user id}|{name}`
//! (ids never hold `|`); the key expires three TTLs after its newest entry.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::protocol::Member;
use crate::server::bus::{Bus, Link};
use crate::server::clock::now_ms;

/// Presence across instances.
pub struct Presence {
    /// The Redis connection; `None` with one instance.
    link: Option<Arc<Link>>,
    /// An entry lives this long unless refreshed.
    ttl: Duration,
    /// Expired entries of other instances already announced, as
    /// `(room, entry)`, so each is announced once.
    announced: Mutex<HashSet<(String, String)>>,
}

impl Presence {
    /// Presence over `bus`'s connection, entries living `ttl`.
    pub fn new(bus: &Bus, ttl: Duration) -> Presence {
        Presence {
            link: bus.link().cloned(),
            ttl,
            announced: Mutex::new(HashSet::new()),
        }
    }

    /// How often [`Presence::refresh`] should run.
    pub fn period(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(100))
    }

    /// Marks `member` present in `room` on this instance and returns who is
    /// present on every instance: `None` with one instance or while Redis
    /// does not answer. One round trip, so that by the time the member is
    /// told they joined, whoever joins next on any instance sees them.
    pub async fn enter(&self, room: &str, member: &Member) -> Option<Vec<Member>> {
        let link = self.link.as_ref()?;
        let now = now_ms();
        let mut pipe = redis::pipe();
        self.add(&mut pipe, link, room, member, now);
        pipe.cmd("ZRANGEBYSCORE")
            .arg(key(room))
            .arg(now)
            .arg("+inf");
        let (present,) = link.query::<(Vec<String>,)>(&pipe).await?;
        Some(
            present
                .iter()
                .filter_map(|entry| parse_entry(entry).map(|(_, m)| m))
                .collect(),
        )
    }

    /// Marks `member` no longer present in `room` on this instance (queued,
    /// in order with the instance's other writes).
    pub fn leave(&self, room: &str, member: &Member) {
        let Some(link) = &self.link else { return };
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM")
            .arg(key(room))
            .arg(entry(link.instance(), member))
            .ignore();
        // Expired entries stay a while longer, so that every instance sees
        // them expire (and tells its clients) before they are removed.
        let forget_before = now_ms().saturating_sub(self.key_ttl_ms());
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(key(room))
            .arg("-inf")
            .arg(forget_before)
            .ignore();
        link.queue(pipe);
    }

    /// Refreshes this instance's entries, `local` as `(room, member)`, and
    /// returns the members of other instances whose entries expired since
    /// the last call (their instance died), each once.
    pub async fn refresh(&self, local: &[(String, Member)]) -> Vec<(String, Member)> {
        let Some(link) = &self.link else {
            return Vec::new();
        };
        if local.is_empty() {
            return Vec::new();
        }
        let now = now_ms();
        let mut pipe = redis::pipe();
        for (room, member) in local {
            self.add(&mut pipe, link, room, member, now);
        }
        link.queue(pipe);

        let rooms: BTreeSet<&str> = local.iter().map(|(room, _)| room.as_str()).collect();
        let mut pipe = redis::pipe();
        for room in &rooms {
            pipe.cmd("ZRANGEBYSCORE")
                .arg(key(room))
                .arg("-inf")
                .arg(now);
            pipe.cmd("ZRANGEBYSCORE")
                .arg(key(room))
                .arg(now)
                .arg("+inf");
        }
        let Some(lists) = link.query::<Vec<Vec<String>>>(&pipe).await else {
            return Vec::new();
        };
        let mut announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
        let mut still_expired = HashSet::new();
        let mut gone = Vec::new();
        for (room, pair) in rooms.iter().zip(lists.chunks(2)) {
            let [expired, live] = pair else { continue };
            // Someone whose entry expired may still be here through another
            // instance (or this one): only the truly absent are gone.
            let present = |id: &str| {
                live.iter()
                    .filter_map(|e| parse_entry(e))
                    .any(|(_, m)| m.id == id)
                    || local.iter().any(|(r, m)| r == room && m.id == id)
            };
            for expired_entry in expired {
                let seen = (room.to_string(), expired_entry.clone());
                still_expired.insert(seen.clone());
                if announced.contains(&seen) {
                    continue;
                }
                if let Some((_, member)) = parse_entry(expired_entry) {
                    if !present(&member.id) {
                        gone.push((room.to_string(), member));
                    }
                }
                announced.insert(seen);
            }
        }
        announced.retain(|seen| still_expired.contains(seen));
        gone
    }

    /// Adds (or renews) `member`'s entry in `room` to `pipe`.
    fn add(&self, pipe: &mut redis::Pipeline, link: &Link, room: &str, member: &Member, now: u64) {
        pipe.cmd("ZADD")
            .arg(key(room))
            .arg(now + self.ttl.as_millis() as u64)
            .arg(entry(link.instance(), member))
            .ignore();
        pipe.cmd("PEXPIRE")
            .arg(key(room))
            .arg(self.key_ttl_ms())
            .ignore();
    }

    /// How long a presence key outlives its newest entry: expired entries
    /// stay three TTLs (see [`Presence::leave`]), the key goes with them.
    fn key_ttl_ms(&self) -> u64 {
        3 * self.ttl.as_millis() as u64
    }
}

fn key(room: &str) -> String {
    format!("pulse:presence:{room}")
}

/// A presence entry: `{instance}|{user id}|{name}`.
fn entry(instance: &str, member: &Member) -> String {
    format!("{instance}|{}|{}", member.id, member.name)
}

/// The instance and member of a presence entry.
fn parse_entry(entry: &str) -> Option<(&str, Member)> {
    let mut parts = entry.splitn(3, '|');
    let (instance, id, name) = (parts.next()?, parts.next()?, parts.next()?);
    Some((
        instance,
        Member {
            id: id.to_string(),
            name: name.to_string(),
        },
    ))
}
