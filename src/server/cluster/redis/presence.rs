//! Presence over Redis. Per room, three keys (all hash-tagged by the room):
//!
//! - `entries`: a sorted set of `{user id}|{instance}`, scored by when the
//!   entry expires (ms): one per member per instance that has them;
//! - `holders`: a hash of how many entries each present member has;
//! - `names`: a hash of each present member's display name.
//!
//! Scripts change them atomically, so each "now present" and "now present
//! nowhere" is seen by exactly one call. Ids never hold `|`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::{room_key, Link};
use crate::protocol::Member;
use crate::server::clock::now_ms;
use crate::server::cluster::{Entered, Presence, Unavailable};

/// Presence over Redis.
pub(super) struct RedisPresence {
    /// The connection.
    link: Arc<Link>,
    /// An entry lives this long unless renewed.
    ttl: Duration,
    /// `presence_enter.lua`.
    enter: Script,
    /// `presence_leave.lua`.
    leave: Script,
    /// `presence_sweep.lua`.
    sweep: Script,
}

impl RedisPresence {
    pub(super) fn new(link: Arc<Link>, ttl: Duration) -> RedisPresence {
        RedisPresence {
            link,
            ttl,
            enter: Script::new(include_str!("presence_enter.lua")),
            leave: Script::new(include_str!("presence_leave.lua")),
            sweep: Script::new(include_str!("presence_sweep.lua")),
        }
    }

    /// How long the keys outlive their last renewal: expired entries stay
    /// until a sweep sees them, the keys a while longer.
    fn key_ttl_ms(&self) -> u64 {
        3 * self.ttl.as_millis() as u64
    }

    /// The room's three keys, as every presence script takes them.
    fn keys(invocation: &mut redis::ScriptInvocation<'_>, room: &str) {
        invocation
            .key(room_key(room, "entries"))
            .key(room_key(room, "holders"))
            .key(room_key(room, "names"));
    }
}

/// `[user, name, user, name, …]` as members.
fn pairs(flat: Vec<String>) -> Vec<Member> {
    flat.chunks_exact(2)
        .map(|pair| Member {
            id: pair[0].clone(),
            name: pair[1].clone(),
        })
        .collect()
}

#[async_trait]
impl Presence for RedisPresence {
    async fn enter(&self, room: &str, member: &Member) -> Result<Entered, Unavailable> {
        let mut invocation = self.enter.prepare_invoke();
        Self::keys(&mut invocation, room);
        invocation
            .arg(&member.id)
            .arg(self.link.instance())
            .arg(&member.name)
            .arg(now_ms() + self.ttl.as_millis() as u64)
            .arg(self.key_ttl_ms());
        let mut answer: Vec<redis::Value> = self
            .link
            .call(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        if answer.is_empty() {
            return Err(Unavailable);
        }
        let first: u8 = redis::from_redis_value(answer.remove(0)).map_err(|_| Unavailable)?;
        let names: Vec<String> =
            redis::from_redis_value(redis::Value::Array(answer)).map_err(|_| Unavailable)?;
        Ok(Entered {
            first: first == 1,
            members: pairs(names),
        })
    }

    async fn members(&self, room: &str) -> Result<Vec<Member>, Unavailable> {
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL").arg(room_key(room, "names"));
        let (names,): (std::collections::HashMap<String, String>,) = self.link.query(&pipe).await?;
        Ok(names
            .into_iter()
            .map(|(id, name)| Member { id, name })
            .collect())
    }

    async fn leave(
        &self,
        room: &str,
        member: &Member,
        grace: Option<Duration>,
    ) -> Result<bool, Unavailable> {
        let mut invocation = self.leave.prepare_invoke();
        Self::keys(&mut invocation, room);
        let until = grace.map_or(String::new(), |grace| {
            (now_ms() + grace.as_millis() as u64).to_string()
        });
        invocation
            .arg(&member.id)
            .arg(self.link.instance())
            .arg(until);
        let gone: u8 = self
            .link
            .call(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        Ok(gone == 1)
    }

    async fn sweep(
        &self,
        here: &[(String, Member)],
        rooms: &[String],
    ) -> Result<Vec<(String, Member)>, Unavailable> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let expiry = now + self.ttl.as_millis() as u64;
        let invocation = |room: &String| {
            let mut invocation = self.sweep.prepare_invoke();
            Self::keys(&mut invocation, room);
            invocation
                .arg(now)
                .arg(self.link.instance())
                .arg(expiry)
                .arg(self.key_ttl_ms());
            for (_, member) in here.iter().filter(|(r, _)| r == room) {
                invocation.arg(&member.id).arg(&member.name);
            }
            invocation
        };
        let answers: Vec<Vec<String>> = if self.link.sharded() {
            // One room a call (rooms live on different shards), all sent
            // together; each loads the script where it is missing.
            let sweeps = rooms.iter().map(|room| {
                let invocation = invocation(room);
                self.link
                    .call(|mut c| async move { invocation.invoke_async(&mut c).await })
            });
            futures::future::try_join_all(sweeps).await?
        } else {
            // One round trip for every room: the script is loaded first (a
            // restarted Redis has forgotten it), then run once a room.
            let mut pipe = redis::pipe();
            pipe.load_script(&self.sweep).ignore();
            for room in rooms {
                pipe.invoke_script(&invocation(room));
            }
            self.link.query(&pipe).await?
        };
        Ok(rooms
            .iter()
            .zip(answers)
            .flat_map(|(room, gone)| pairs(gone).into_iter().map(|m| (room.clone(), m)))
            .collect())
    }
}
