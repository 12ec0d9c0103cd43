//! The HTTP fallback connections held by this instance, by name: where the
//! frames posted for each go, and who may post them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use super::super::nack;
use super::super::outbox::{error, Outbox};
use crate::protocol::{ClientMessage, ErrorCode};
use crate::server::cluster::RETRY_UNAVAILABLE;

/// Frames that may wait for a connection to act on them; past that a post
/// is refused (the client is sending faster than it is served).
const INBOX: usize = 64;

/// One connection's inbox.
struct Inbox {
    /// Whose connection it is: only they may post to it.
    user_id: Arc<str>,
    /// The connection's queue of frames.
    tx: mpsc::Sender<ClientMessage>,
    /// The connection's outbound queue, for refusals of crossed posts.
    outbox: Outbox,
}

/// What became of posted frames.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for the connection.
    Accepted,
    /// The connection is someone else's.
    NotYours,
    /// Its queue is full: nothing was taken.
    Full,
    /// No such connection here.
    Unknown,
}

/// The inboxes of the fallback connections held here.
#[derive(Default)]
pub struct Inboxes(Mutex<HashMap<String, Inbox>>);

impl Inboxes {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Inbox>> {
        // Each change is one insert or remove.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the inbox of connection `name` of `user_id`, whose frames go
    /// down `outbox`; its receiving end.
    pub(super) fn open(
        &self,
        name: &str,
        user_id: &Arc<str>,
        outbox: &Outbox,
    ) -> mpsc::Receiver<ClientMessage> {
        let (tx, rx) = mpsc::channel(INBOX);
        let inbox = Inbox {
            user_id: user_id.clone(),
            tx,
            outbox: outbox.clone(),
        };
        self.lock().insert(name.to_string(), inbox);
        rx
    }

    /// Closes the inbox of connection `name`.
    pub(super) fn close(&self, name: &str) {
        self.lock().remove(name);
    }

    /// Hands `frames` posted by `user_id` to connection `conn`, all or none.
    pub(super) fn deliver(
        &self,
        conn: &str,
        user_id: &str,
        frames: Vec<ClientMessage>,
    ) -> Delivery {
        let inboxes = self.lock();
        let Some(inbox) = inboxes.get(conn) else {
            return Delivery::Unknown;
        };
        if &*inbox.user_id != user_id {
            return Delivery::NotYours;
        }
        // All or nothing: a post is refused whole rather than half applied.
        if inbox.tx.capacity() < frames.len() {
            return Delivery::Full;
        }
        for frame in frames {
            let _ = inbox.tx.try_send(frame);
        }
        Delivery::Accepted
    }

    /// Hands frames that were posted on another instance to connection
    /// `conn`; the poster's answer already went, so a full inbox is told
    /// down the connection's stream: each message is nacked (to be sent
    /// again), anything else refused.
    pub fn deliver_crossed(&self, conn: &str, user_id: &str, frames: Vec<ClientMessage>) {
        if self.deliver(conn, user_id, frames.clone()) != Delivery::Full {
            return;
        }
        let inboxes = self.lock();
        let Some(inbox) = inboxes.get(conn) else {
            return;
        };
        for frame in frames {
            let refusal = match frame {
                ClientMessage::Message {
                    room, client_id, ..
                } => nack(
                    &room,
                    &client_id,
                    ErrorCode::RateLimited,
                    "too many frames waiting for this connection; send it again",
                    Some(RETRY_UNAVAILABLE),
                ),
                _ => error(
                    ErrorCode::RateLimited,
                    "too many frames waiting for this connection",
                ),
            };
            inbox.outbox.send(&refusal);
        }
    }
}
