//! Signed-out sessions, for every instance: a revoked session's tokens are
//! refused everywhere, by instances that start later too, until no token of
//! it could be valid any more.

use async_trait::async_trait;

use super::Unavailable;

/// Signed-out sessions across instances.
#[async_trait]
pub trait Revocations: Send + Sync + 'static {
    /// Remembers session `sid` as revoked until `until` (Unix seconds) and
    /// tells every instance (a `Control::Revoked` to their handlers). While
    /// the others cannot be reached it is kept here and told once they can.
    async fn revoke(&self, sid: &str, until: u64);

    /// Whether `sid` was revoked, here or anywhere.
    async fn is_revoked(&self, sid: &str) -> Result<bool, Unavailable>;

    /// Those of `sids` that were revoked (after a break in the link: a
    /// sign-out told meanwhile may not have arrived).
    async fn revoked_among(&self, sids: &[String]) -> Result<Vec<String>, Unavailable>;
}
