//! Admission: how much of the server one client address or one user may hold
//! at once (the answer when they ask for more is a `Refused`).
//!
//! Counts are taken as [`Slot`]s that give their place back when dropped, so
//! whatever holds a connection (its task, a response body, an upgraded
//! socket) holds its slot for exactly as long.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// At most `max` slots per key.
pub struct KeyedCounter<K> {
    /// Slots held, per key; a key with none is removed, so the map only ever
    /// holds keys that hold something.
    held: Mutex<HashMap<K, usize>>,
    /// Slots one key may hold.
    max: usize,
}

/// One place taken in a [`KeyedCounter`]; dropping it gives the place back.
pub struct Slot<K: Hash + Eq> {
    /// Where the place was taken.
    counter: Arc<KeyedCounter<K>>,
    /// Whose place it is.
    key: K,
}

impl<K: Hash + Eq + Clone> KeyedCounter<K> {
    /// A counter that allows `max` slots per key.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(KeyedCounter {
            held: Mutex::new(HashMap::new()),
            max,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, usize>> {
        // Every update is one complete insert or remove: a panic elsewhere
        // cannot leave the map half-changed.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for `key`, or `None` when it holds `max` already.
    pub fn try_acquire(self: &Arc<Self>, key: K) -> Option<Slot<K>> {
        let mut held = self.lock();
        let count = held.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Slot {
            counter: self.clone(),
            key,
        })
    }

    /// Slots `key` holds now.
    #[cfg(test)]
    fn held(&self, key: &K) -> usize {
        self.lock().get(key).copied().unwrap_or(0)
    }
}

impl<K: Hash + Eq> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut held = self.counter.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// The key per-address limits count under. An IPv6 client usually has a
/// whole /64 to pick addresses from, so all of it counts as one address.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_per_key_and_given_back_on_drop() {
        let c = KeyedCounter::<u8>::new(2);
        let a = c.try_acquire(1).unwrap();
        let _b = c.try_acquire(1).unwrap();
        assert!(c.try_acquire(1).is_none());
        assert!(c.try_acquire(2).is_some(), "another key is not affected");
        drop(a);
        assert_eq!(c.held(&1), 1);
        assert!(c.try_acquire(1).is_some());
        drop(_b);
        assert!(c.lock().is_empty(), "keys that hold nothing are forgotten");
    }

    #[test]
    fn an_ipv6_client_counts_per_64_block() {
        let a = address_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = address_key("2001:db8:1:2:bbbb::9".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, address_key("2001:db8:1:3::1".parse().unwrap()));
        let v4 = address_key("::ffff:192.0.2.1".parse().unwrap());
        assert_eq!(v4, "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
