//! Rate limits, keyed by what the server verified: the user id from the
//! token, and the client's address (an IPv6 /64 counts as one; through a
//! trusted proxy, the address it forwards). Chat messages and notifications
//! share one budget per user, joins and leaves have another (each one
//! notifies a whole room), fallback posts a third.
//!
//! One address may mint a new guest identity ten times a minute, so every
//! per-user budget is also held per address: all the users of one address
//! together get `PULSE_RATE_LIMIT_PER_IP_PER_MIN` messages (and as many
//! joins and leaves, twice as many posts) and `PULSE_NOTIFY_PER_IP_PER_MIN`
//! notifications — minting identities does not multiply them. (Room
//! creation has its own per-user and per-address budgets, in the hub.)
//! One place says what an over-limit user is told.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// A budget per user and the same kind of budget per address.
struct Both {
    /// Per user id.
    user: DefaultKeyedRateLimiter<Arc<str>>,
    /// Per client address.
    address: DefaultKeyedRateLimiter<IpAddr>,
}

impl Both {
    fn new(per_user: NonZeroU32, per_address: NonZeroU32) -> Both {
        Both {
            user: RateLimiter::keyed(Quota::per_minute(per_user)),
            address: RateLimiter::keyed(Quota::per_minute(per_address)),
        }
    }

    /// The address's budget first, so that a user refused for their
    /// address's sake keeps their own.
    fn check(&self, user: &Arc<str>, address: IpAddr) -> Result<(), Duration> {
        check(&self.address, &address)?;
        check(&self.user, user)
    }

    fn forget_quiet(&self) {
        self.user.retain_recent();
        self.user.shrink_to_fit();
        self.address.retain_recent();
        self.address.shrink_to_fit();
    }
}

/// The rate limits, shared by chat and notifications.
pub struct RateLimits {
    /// Chat messages and notifications.
    messages: Both,
    /// Joins and leaves.
    room_changes: Both,
    /// Posts to the HTTP fallback (each may cross to another instance
    /// before the other limits are checked).
    posts: Both,
    /// Notifications per address (they reach every open feed).
    notifications: DefaultKeyedRateLimiter<IpAddr>,
}

/// The rates of [`RateLimits::new`], per minute.
pub struct Rates {
    /// Messages (and, separately, joins and leaves) per user.
    pub per_user: u32,
    /// The same per client address.
    pub per_address: u32,
    /// Notifications per client address.
    pub notifications_per_address: u32,
}

fn non_zero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl RateLimits {
    /// Limits at these rates; posts get twice the message rate.
    pub fn new(rates: Rates) -> RateLimits {
        let (user, address) = (non_zero(rates.per_user), non_zero(rates.per_address));
        let two = non_zero(2);
        RateLimits {
            messages: Both::new(user, address),
            room_changes: Both::new(user, address),
            posts: Both::new(user.saturating_mul(two), address.saturating_mul(two)),
            notifications: RateLimiter::keyed(Quota::per_minute(non_zero(
                rates.notifications_per_address,
            ))),
        }
    }

    /// `Ok` if `user` at `address` may send another chat message now, else
    /// how long to wait; say so with [`too_many_messages`].
    pub fn message(&self, user: &Arc<str>, address: IpAddr) -> Result<(), Duration> {
        self.messages.check(user, address)
    }

    /// `Ok` if `user` at `address` may publish a notification now: the
    /// address's notification budget, and the user's message budget.
    pub fn notification(&self, user: &Arc<str>, address: IpAddr) -> Result<(), Duration> {
        check(&self.notifications, &address)?;
        check(&self.messages.user, user)
    }

    /// `Ok` if `user` at `address` may join or leave a room now.
    pub fn room_change(&self, user: &Arc<str>, address: IpAddr) -> Result<(), Duration> {
        self.room_changes.check(user, address)
    }

    /// `Ok` if `user` at `address` may post to the HTTP fallback now (twice
    /// the message rate: posts carry joins and leaves too).
    pub fn post(&self, user: &Arc<str>, address: IpAddr) -> Result<(), Duration> {
        self.posts.check(user, address)
    }

    /// Forgets users and addresses that have been quiet, so the state does
    /// not grow.
    pub fn forget_quiet(&self) {
        for both in [&self.messages, &self.room_changes, &self.posts] {
            both.forget_quiet();
        }
        self.notifications.retain_recent();
        self.notifications.shrink_to_fit();
    }
}

fn check<K: std::hash::Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
) -> Result<(), Duration> {
    limiter
        .check_key(key)
        .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
}

/// What a user over the message rate limit is told, on the socket and at
/// `POST /api/notifications` alike.
pub fn too_many_messages(wait: Duration) -> String {
    format!(
        "too many messages; try again in {} ms",
        wait.as_millis().max(1)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_budget_holds_across_the_identities_it_mints() {
        let limits = RateLimits::new(Rates {
            per_user: 2,
            per_address: 3,
            notifications_per_address: 1,
        });
        let here: IpAddr = "192.0.2.1".parse().unwrap();
        let there: IpAddr = "192.0.2.2".parse().unwrap();
        let users: Vec<Arc<str>> = (0..4).map(|i| Arc::from(format!("u{i}"))).collect();
        // Three messages from the address, whoever sends them.
        for u in &users[..3] {
            assert!(limits.message(u, here).is_ok());
        }
        assert!(limits.message(&users[3], here).is_err(), "the address's");
        // Someone at another address is not affected.
        assert!(limits.message(&users[3], there).is_ok());
        // One notification per address.
        assert!(limits.notification(&users[0], here).is_ok());
        assert!(limits.notification(&users[1], here).is_err());
        assert!(limits.notification(&users[1], there).is_ok());
    }
}
