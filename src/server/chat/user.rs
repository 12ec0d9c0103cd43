//! Who is at the other end of a chat connection: its id for the life of
//! the process, and the user its token says it belongs to.

use std::net::IpAddr;
use std::sync::Arc;

use crate::protocol::Member;

/// Identifies one chat connection for the life of the process.
pub type ConnId = u64;

/// Who a connection belongs to, from its token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The user's id: every limit and presence entry is keyed by it.
    pub id: Arc<str>,
    /// Their display name: only shown.
    pub name: Arc<str>,
    /// The client's address (per-address limits count under it).
    pub address: IpAddr,
}

impl User {
    /// The user as a room member.
    pub fn member(&self) -> Member {
        Member {
            id: self.id.to_string(),
            name: self.name.to_string(),
        }
    }
}
