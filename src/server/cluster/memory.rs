//! The in-memory implementations, for one instance: the same contract as
//! the Redis ones, with this process as the only instance. Offsets are
//! assigned under one lock, and the handler is called under it too, so the
//! order in which publications reach the handler is the offset order.
//! Everything is lost with the process: a restart starts every stream in a
//! new epoch.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    new_epoch, Broker, Cluster, Control, Entered, Handler, History, IdempotencyKey, Presence,
    PresenceChange, Publication, Published, Range, Revocations, StreamLimits, Unavailable,
};
use crate::protocol::{Member, StreamPosition};
use crate::server::clock::now_secs;

/// Most streams kept at once: past it, the one published to least recently
/// goes (its room gets a new epoch if it comes back).
const MAX_STREAMS: usize = 4096;
/// How often streams past their TTL and idempotency keys past the window are
/// forgotten (what Redis's key expiry does for the Redis broker).
const EXPIRY_SWEEP: Duration = Duration::from_secs(1);

/// The three services over one shared state.
pub fn connect(limits: StreamLimits) -> Cluster {
    let shared = Shared::new(limits);
    Cluster {
        broker: Arc::new(MemoryBroker(shared.clone())),
        presence: Arc::new(MemoryPresence(shared.clone())),
        revocations: Arc::new(MemoryRevocations(shared)),
    }
}

/// What the three services share.
struct Shared {
    /// Bounds of every stream.
    limits: StreamLimits,
    /// This process's name.
    instance: String,
    /// Where publications go (set by [`Broker::run`]).
    handler: OnceLock<Arc<dyn Handler>>,
    /// The rooms whose publications and presence changes are handed over.
    subscribed: Mutex<HashSet<String>>,
    /// Every room's stream, by room.
    streams: Mutex<HashMap<String, Stream>>,
    /// Every room's members, by room then user id.
    presence: Mutex<HashMap<String, HashMap<String, Entry>>>,
    /// Revoked sessions, with when they may be forgotten (Unix seconds).
    revoked: Mutex<HashMap<String, u64>>,
    /// Always true: with one instance there is nobody to lose.
    reachable: watch::Sender<bool>,
}

/// One room's stream.
struct Stream {
    /// Its epoch (new with every process, or after it was dropped).
    epoch: String,
    /// The latest offset given.
    top: u64,
    /// The kept publications, oldest first.
    kept: VecDeque<Publication>,
    /// Bytes of `kept`.
    bytes: usize,
    /// The last publish (or creation): the stream goes after the TTL.
    touched: Instant,
    /// Idempotency keys seen, with the offset they got and until when.
    seen: HashMap<IdKey, (u64, Instant)>,
    /// The same keys in the order they expire (the window is one length), so
    /// forgetting them costs what is forgotten, not what is kept.
    expiring: VecDeque<(Instant, IdKey)>,
}

/// An idempotency key: user id and client id.
type IdKey = (String, String);

impl Stream {
    /// Forgets the idempotency keys whose window is over.
    fn forget_expired(&mut self, now: Instant) {
        while self
            .expiring
            .front()
            .is_some_and(|(until, _)| *until <= now)
        {
            let Some((until, key)) = self.expiring.pop_front() else {
                break;
            };
            // A key seen again after its window has a later entry of its own.
            if self.seen.get(&key).is_some_and(|(_, u)| *u == until) {
                self.seen.remove(&key);
            }
        }
        // A burst's tables shrink back once it is over.
        if self.seen.capacity() > 64 && self.seen.len() < self.seen.capacity() / 4 {
            self.seen.shrink_to_fit();
            self.expiring.shrink_to_fit();
        }
    }
}

/// A member's entry in a room.
struct Entry {
    /// Their display name.
    name: String,
    /// `None` while they have a connection here; the end of the grace once
    /// the last one went.
    lingers_until: Option<Instant>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each change under these locks is complete before it is released.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn new(limits: StreamLimits) -> Arc<Shared> {
        Arc::new(Shared {
            limits,
            instance: format!("local-{:08x}", fastrand::u32(..)),
            handler: OnceLock::new(),
            subscribed: Mutex::new(HashSet::new()),
            streams: Mutex::new(HashMap::new()),
            presence: Mutex::new(HashMap::new()),
            revoked: Mutex::new(HashMap::new()),
            reachable: watch::channel(true).0,
        })
    }

    fn handler(&self) -> Option<&Arc<dyn Handler>> {
        self.handler.get()
    }

    /// The handler, if `room` is subscribed.
    fn handler_of(&self, room: &str) -> Option<&Arc<dyn Handler>> {
        lock(&self.subscribed)
            .contains(room)
            .then(|| self.handler())
            .flatten()
    }

    /// The room's stream, created (or started anew once expired) if needed.
    fn stream<'a>(&self, streams: &'a mut HashMap<String, Stream>, room: &str) -> &'a mut Stream {
        let now = Instant::now();
        let expired = streams
            .get(room)
            .is_some_and(|s| now.duration_since(s.touched) > self.limits.ttl);
        if expired {
            streams.remove(room);
        }
        if !streams.contains_key(room) && streams.len() >= MAX_STREAMS {
            let stalest = streams
                .iter()
                .min_by_key(|(_, s)| s.touched)
                .map(|(name, _)| name.clone());
            if let Some(name) = stalest {
                streams.remove(&name);
            }
        }
        streams.entry(room.to_string()).or_insert_with(|| Stream {
            epoch: new_epoch(),
            top: 0,
            kept: VecDeque::new(),
            bytes: 0,
            touched: now,
            seen: HashMap::new(),
            expiring: VecDeque::new(),
        })
    }

    /// Drops the streams past their TTL and the idempotency keys past the
    /// window.
    fn expire(&self) {
        let now = Instant::now();
        let mut streams = lock(&self.streams);
        streams.retain(|_, s| now.duration_since(s.touched) <= self.limits.ttl);
        for stream in streams.values_mut() {
            stream.forget_expired(now);
        }
    }
}

/// The broker of one instance.
struct MemoryBroker(Arc<Shared>);

#[async_trait]
impl Broker for MemoryBroker {
    fn instance(&self) -> &str {
        &self.0.instance
    }

    fn describe(&self) -> &'static str {
        "in-process"
    }

    fn reachable(&self) -> watch::Receiver<bool> {
        self.0.reachable.subscribe()
    }

    async fn run(&self, handler: Arc<dyn Handler>, shutdown: CancellationToken) {
        let _ = self.0.handler.set(handler);
        let mut sweep = tokio::time::interval(EXPIRY_SWEEP);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sweep.tick() => self.0.expire(),
            }
        }
    }

    async fn publish(
        &self,
        room: &str,
        data: &str,
        key: Option<&IdempotencyKey>,
    ) -> Result<Published, Unavailable> {
        let shared = &self.0;
        let limits = &shared.limits;
        let mut streams = lock(&shared.streams);
        let stream = shared.stream(&mut streams, room);
        let now = Instant::now();
        let key = key.map(|k| (k.user_id.clone(), k.client_id.clone()));
        if let Some((offset, until)) = key.as_ref().and_then(|k| stream.seen.get(k)) {
            if *until > now {
                return Ok(Published {
                    position: StreamPosition {
                        epoch: stream.epoch.clone(),
                        offset: *offset,
                    },
                    duplicate: true,
                });
            }
        }
        stream.top += 1;
        stream.touched = now;
        let publication = Publication {
            offset: stream.top,
            data: Arc::from(data),
        };
        stream.bytes += data.len();
        stream.kept.push_back(publication.clone());
        // Trimmed as the Redis script does: once over the count by a
        // sixteenth (or over the bytes), down to the count and fifteen
        // sixteenths of the bytes.
        if stream.kept.len() > limits.size + limits.size / 16 || stream.bytes > limits.bytes {
            let keep_bytes = limits.bytes - limits.bytes / 16;
            while stream.kept.len() > 1
                && (stream.kept.len() > limits.size || stream.bytes > keep_bytes)
            {
                if let Some(gone) = stream.kept.pop_front() {
                    stream.bytes -= gone.data.len();
                }
            }
        }
        if let Some(key) = key {
            stream.forget_expired(now);
            let until = now + limits.dedup_window;
            stream.expiring.push_back((until, key.clone()));
            stream.seen.insert(key, (stream.top, until));
        }
        let position = StreamPosition {
            epoch: stream.epoch.clone(),
            offset: stream.top,
        };
        // Under the lock: the handler gets the room's publications in order.
        if let Some(handler) = shared.handler_of(room) {
            handler.publication(room, &position.epoch, publication);
        }
        Ok(Published {
            position,
            duplicate: false,
        })
    }

    async fn history(&self, room: &str, range: Range) -> Result<History, Unavailable> {
        let mut streams = lock(&self.0.streams);
        let stream = self.0.stream(&mut streams, room);
        let publications = match range {
            Range::Latest(n) => {
                let skip = stream.kept.len().saturating_sub(n);
                stream.kept.iter().skip(skip).cloned().collect()
            }
            Range::After(offset, n) => stream
                .kept
                .iter()
                .filter(|p| p.offset > offset)
                .take(n)
                .cloned()
                .collect(),
        };
        Ok(History {
            top: StreamPosition {
                epoch: stream.epoch.clone(),
                offset: stream.top,
            },
            publications,
        })
    }

    fn subscribe(&self, rooms: &[String]) -> BoxFuture<'static, Result<(), Unavailable>> {
        lock(&self.0.subscribed).extend(rooms.iter().cloned());
        Box::pin(async { Ok(()) })
    }

    fn unsubscribe(&self, rooms: &[String]) {
        let mut subscribed = lock(&self.0.subscribed);
        for room in rooms {
            subscribed.remove(room);
        }
    }

    async fn publish_presence(
        &self,
        room: &str,
        change: &PresenceChange,
    ) -> Result<(), Unavailable> {
        if let Some(handler) = self.0.handler_of(room) {
            handler.presence(room, change.clone());
        }
        Ok(())
    }

    async fn broadcast(&self, control: &Control) -> Result<(), Unavailable> {
        if let Some(handler) = self.0.handler() {
            handler.control(control.clone());
        }
        Ok(())
    }

    async fn send_to(&self, instance: &str, control: &Control) -> Result<bool, Unavailable> {
        if instance != self.0.instance {
            return Ok(false);
        }
        self.broadcast(control).await.map(|()| true)
    }
}

/// Presence with one instance: an entry per member, lingering for the
/// grace once their last connection went.
struct MemoryPresence(Arc<Shared>);

fn members(room: &HashMap<String, Entry>) -> Vec<Member> {
    room.iter()
        .map(|(id, entry)| Member {
            id: id.clone(),
            name: entry.name.clone(),
        })
        .collect()
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn enter(&self, room: &str, member: &Member) -> Result<Entered, Unavailable> {
        let mut rooms = lock(&self.0.presence);
        let entries = rooms.entry(room.to_string()).or_default();
        let first = entries
            .insert(
                member.id.clone(),
                Entry {
                    name: member.name.clone(),
                    lingers_until: None,
                },
            )
            .is_none();
        Ok(Entered {
            first,
            members: members(entries),
        })
    }

    async fn members(&self, room: &str) -> Result<Vec<Member>, Unavailable> {
        let rooms = lock(&self.0.presence);
        Ok(rooms.get(room).map(members).unwrap_or_default())
    }

    async fn leave(
        &self,
        room: &str,
        member: &Member,
        grace: Option<Duration>,
    ) -> Result<bool, Unavailable> {
        let mut rooms = lock(&self.0.presence);
        let Some(entries) = rooms.get_mut(room) else {
            return Ok(false);
        };
        match grace {
            Some(grace) => {
                if let Some(entry) = entries.get_mut(&member.id) {
                    entry.lingers_until = Some(Instant::now() + grace);
                }
                Ok(false)
            }
            None => {
                let gone = entries.remove(&member.id).is_some();
                if entries.is_empty() {
                    rooms.remove(room);
                }
                Ok(gone)
            }
        }
    }

    async fn sweep(
        &self,
        _here: &[(String, Member)],
        rooms: &[String],
    ) -> Result<Vec<(String, Member)>, Unavailable> {
        // Entries of members with a connection here never expire: the only
        // instance cannot die without taking them along.
        let now = Instant::now();
        let mut all = lock(&self.0.presence);
        let mut gone = Vec::new();
        for room in rooms {
            let Some(entries) = all.get_mut(room) else {
                continue;
            };
            entries.retain(|id, entry| {
                let over = entry.lingers_until.is_some_and(|until| until <= now);
                if over {
                    gone.push((
                        room.clone(),
                        Member {
                            id: id.clone(),
                            name: entry.name.clone(),
                        },
                    ));
                }
                !over
            });
            if entries.is_empty() {
                all.remove(room);
            }
        }
        Ok(gone)
    }
}

/// Revocations with one instance.
struct MemoryRevocations(Arc<Shared>);

#[async_trait]
impl Revocations for MemoryRevocations {
    async fn revoke(&self, sid: &str, until: u64) {
        {
            let mut revoked = lock(&self.0.revoked);
            let now = now_secs();
            revoked.retain(|_, kept_until| *kept_until >= now);
            revoked.insert(sid.to_string(), until);
        }
        if let Some(handler) = self.0.handler() {
            handler.control(Control::Revoked {
                sid: sid.to_string(),
                until,
            });
        }
    }

    async fn is_revoked(&self, sid: &str) -> Result<bool, Unavailable> {
        let revoked = lock(&self.0.revoked);
        Ok(revoked.get(sid).is_some_and(|until| *until >= now_secs()))
    }

    async fn revoked_among(&self, sids: &[String]) -> Result<Vec<String>, Unavailable> {
        let revoked = lock(&self.0.revoked);
        let now = now_secs();
        Ok(sids
            .iter()
            .filter(|sid| revoked.get(*sid).is_some_and(|until| *until >= now))
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker() -> MemoryBroker {
        MemoryBroker(Shared::new(StreamLimits::for_tests()))
    }

    fn key(client_id: &str) -> IdempotencyKey {
        IdempotencyKey {
            user_id: "u".into(),
            client_id: client_id.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idempotency_key_is_kept_for_the_window_then_forgotten() {
        let broker = broker();
        let first = broker.publish("r", "a", Some(&key("k"))).await.unwrap();
        tokio::time::advance(Duration::from_secs(59)).await;
        let again = broker.publish("r", "a", Some(&key("k"))).await.unwrap();
        assert!(again.duplicate);
        assert_eq!(again.position.offset, first.position.offset);

        tokio::time::advance(Duration::from_secs(2)).await;
        broker.0.expire();
        assert!(lock(&broker.0.streams)["r"].seen.is_empty());
        let later = broker.publish("r", "a", Some(&key("k"))).await.unwrap();
        assert!(!later.duplicate);
        assert_eq!(later.position.offset, first.position.offset + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_past_its_ttl_is_dropped_by_the_sweep() {
        let broker = broker();
        broker.publish("r", "a", None).await.unwrap();
        tokio::time::advance(Duration::from_secs(3601)).await;
        broker.0.expire();
        assert!(lock(&broker.0.streams).is_empty());
    }
}
