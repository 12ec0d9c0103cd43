//! Revocations over Redis: `pulse:revoked:<sid>` until no token of the
//! session could be valid any more, and a `Control::Revoked` on the control
//! channel for the instances running now. A sign-out made while Redis is
//! down is kept here and written (and told) once it is back; the instances
//! that were cut off meanwhile ask about their open sessions when they
//! reconnect (`Handler::reconnected`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{Link, CONTROL_CHANNEL};
use crate::server::clock::now_secs;
use crate::server::cluster::{Control, Revocations, Unavailable};

/// Revocations over Redis.
pub(super) struct RedisRevocations {
    /// The connection.
    link: Arc<Link>,
    /// Sessions known here to be revoked, until when (Unix seconds): asked
    /// once, they are not asked again.
    known: Mutex<HashMap<String, u64>>,
    /// Revocations Redis has not taken yet (it was down).
    pending: Mutex<HashMap<String, u64>>,
}

fn revoked_key(sid: &str) -> String {
    format!("pulse:revoked:{sid}")
}

fn lock(map: &Mutex<HashMap<String, u64>>) -> MutexGuard<'_, HashMap<String, u64>> {
    // Each change is one insert or remove.
    map.lock().unwrap_or_else(|e| e.into_inner())
}

impl RedisRevocations {
    pub(super) fn new(link: Arc<Link>) -> RedisRevocations {
        RedisRevocations {
            link,
            known: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
        }
    }

    fn remember(&self, sid: &str, until: u64) {
        let mut known = lock(&self.known);
        let now = now_secs();
        known.retain(|_, kept| *kept >= now);
        known.insert(sid.to_string(), until);
    }

    /// Writes the revocation and tells every instance.
    async fn write(&self, sid: &str, until: u64) -> Result<(), Unavailable> {
        let control = Control::Revoked {
            sid: sid.to_string(),
            until,
        };
        let json = serde_json::to_string(&control).map_err(|_| Unavailable)?;
        // Two calls: on a cluster the key and the channel live on different
        // shards (a pipeline may not span them). Written before it is told.
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(revoked_key(sid))
            .arg(1)
            .arg("EXAT")
            .arg(until.max(now_secs() + 1))
            .ignore();
        self.link.query::<()>(&pipe).await?;
        self.link.publish(CONTROL_CHANNEL, json).await.map(|_| ())
    }

    /// Writes what was kept while Redis was down.
    pub(super) async fn flush(&self) {
        let pending: Vec<(String, u64)> = lock(&self.pending).drain().collect();
        for (sid, until) in pending {
            if self.write(&sid, until).await.is_err() {
                lock(&self.pending).insert(sid, until);
            }
        }
    }
}

#[async_trait]
impl Revocations for RedisRevocations {
    async fn revoke(&self, sid: &str, until: u64) {
        self.remember(sid, until);
        if self.write(sid, until).await.is_err() {
            lock(&self.pending).insert(sid.to_string(), until);
            // This instance at least knows now; the others once Redis is back.
            if let Some(handler) = self.link.state.handler.get() {
                handler.control(Control::Revoked {
                    sid: sid.to_string(),
                    until,
                });
            }
        }
    }

    async fn is_revoked(&self, sid: &str) -> Result<bool, Unavailable> {
        let now = now_secs();
        if lock(&self.known)
            .get(sid)
            .is_some_and(|until| *until >= now)
        {
            return Ok(true);
        }
        let mut pipe = redis::pipe();
        pipe.cmd("TTL").arg(revoked_key(sid));
        let (ttl,): (i64,) = self.link.query(&pipe).await?;
        if ttl > 0 {
            self.remember(sid, now + ttl as u64);
        }
        // -1 (no expiry) cannot happen for pulse's keys, but counts too.
        Ok(ttl > 0 || ttl == -1)
    }

    async fn revoked_among(&self, sids: &[String]) -> Result<Vec<String>, Unavailable> {
        if sids.is_empty() {
            return Ok(Vec::new());
        }
        let found: Vec<u8> = if self.link.sharded() {
            // One key a call (each on its own shard), all sent together.
            let asks = sids.iter().map(|sid| {
                let mut pipe = redis::pipe();
                pipe.cmd("EXISTS").arg(revoked_key(sid));
                async move { self.link.query::<(u8,)>(&pipe).await.map(|(n,)| n) }
            });
            futures::future::try_join_all(asks).await?
        } else {
            let mut pipe = redis::pipe();
            for sid in sids {
                pipe.cmd("EXISTS").arg(revoked_key(sid));
            }
            self.link.query(&pipe).await?
        };
        Ok(sids
            .iter()
            .zip(found)
            .filter(|(_, n)| *n > 0)
            .map(|(sid, _)| sid.clone())
            .collect())
    }
}
