//! Per-user rate limits, keyed by the verified user id: chat messages and
//! notifications share one budget, joins and leaves have another (each one
//! notifies a whole room). One place says what an over-limit user is told.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// The per-user rate limits, shared by chat and notifications.
pub struct RateLimits {
    /// Chat messages and notifications per user per minute.
    messages: DefaultKeyedRateLimiter<Arc<str>>,
    /// Joins and leaves per user per minute.
    room_changes: DefaultKeyedRateLimiter<Arc<str>>,
    /// Posts to the HTTP fallback per user per minute (each may cross the
    /// bus before the other limits are checked).
    posts: DefaultKeyedRateLimiter<Arc<str>>,
}

impl RateLimits {
    /// `per_min` messages, and as many joins and leaves, per user per minute.
    pub fn new(per_min: u32) -> RateLimits {
        let per_min = NonZeroU32::new(per_min).unwrap_or(NonZeroU32::MIN);
        RateLimits {
            messages: RateLimiter::keyed(Quota::per_minute(per_min)),
            room_changes: RateLimiter::keyed(Quota::per_minute(per_min)),
            posts: RateLimiter::keyed(Quota::per_minute(
                per_min.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN)),
            )),
        }
    }

    /// `Ok` if `user` may send another message (or notification) now, else
    /// how long to wait; say so with [`too_many_messages`].
    pub fn message(&self, user: &Arc<str>) -> Result<(), Duration> {
        check(&self.messages, user)
    }

    /// `Ok` if `user` may join or leave a room now, else how long to wait.
    pub fn room_change(&self, user: &Arc<str>) -> Result<(), Duration> {
        check(&self.room_changes, user)
    }

    /// `Ok` if `user` may post to the HTTP fallback now (twice the message
    /// rate: posts carry joins and leaves too), else how long to wait.
    pub fn post(&self, user: &Arc<str>) -> Result<(), Duration> {
        check(&self.posts, user)
    }

    /// Forgets users who have been quiet, so the state does not grow.
    pub fn forget_quiet(&self) {
        for limiter in [&self.messages, &self.room_changes, &self.posts] {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

fn check(limiter: &DefaultKeyedRateLimiter<Arc<str>>, user: &Arc<str>) -> Result<(), Duration> {
    limiter
        .check_key(user)
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
