//! Reads of rooms' streams, shared: when many members rejoin one room at
//! once (a reconnect storm), they ask for the same publications, and one
//! read from the broker answers all who asked after it started.
//!
//! Only a read that started after a joiner was admitted may answer it: the
//! joiner keeps what the room delivers from its admission on, so a read
//! that began earlier could miss what came between the two.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use futures::future::{BoxFuture, FutureExt, Shared};

use crate::protocol::{ChatMessage, HISTORY_BYTES};
use crate::server::cluster::{Broker, History, Publication, Range, Unavailable};

/// A read under way: when it started, and its answer to come.
struct Flight {
    /// When it was asked of the broker (its answer is at least this new).
    started: Instant,
    /// The answer, for everyone who waits on it.
    answer: Shared<BoxFuture<'static, Result<Arc<History>, Unavailable>>>,
}

/// The reads under way, by room and range.
#[derive(Default)]
pub struct Reads(Mutex<HashMap<(String, Range), Flight>>);

impl Reads {
    fn lock(&self) -> MutexGuard<'_, HashMap<(String, Range), Flight>> {
        // Each change is one insert or remove.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `range` of `room`'s stream, as the broker has it at some moment after
    /// `not_before`: a read under way that started after it, or a new one.
    pub async fn read(
        &self,
        broker: &Arc<dyn Broker>,
        room: &str,
        range: Range,
        not_before: Instant,
    ) -> Result<Arc<History>, Unavailable> {
        let key = (room.to_string(), range);
        let answer = {
            let mut flights = self.lock();
            match flights.get(&key) {
                Some(flight) if flight.started >= not_before => flight.answer.clone(),
                _ => {
                    let (broker, room) = (broker.clone(), room.to_string());
                    let answer = async move { broker.history(&room, range).await.map(Arc::new) }
                        .boxed()
                        .shared();
                    let flight = Flight {
                        started: Instant::now(),
                        answer: answer.clone(),
                    };
                    flights.insert(key.clone(), flight);
                    answer
                }
            }
        };
        let read = answer.clone().await;
        let mut flights = self.lock();
        // Done: later callers start afresh (unless a newer read took its place).
        if flights.get(&key).is_some_and(|f| f.answer.ptr_eq(&answer)) {
            flights.remove(&key);
        }
        read
    }
}

/// The chat message a publication holds, at its offset.
pub fn decode(room: &str, publication: &Publication) -> Option<ChatMessage> {
    let mut message: ChatMessage = serde_json::from_str(&publication.data).ok()?;
    message.room = room.to_string();
    message.offset = publication.offset;
    Some(message)
}

/// The chat messages of `publications`, in order (unreadable ones skipped).
pub fn decode_all(room: &str, publications: &[Publication]) -> Vec<ChatMessage> {
    publications
        .iter()
        .filter_map(|p| decode(room, p))
        .collect()
}

/// The latest of `messages` that fit in [`HISTORY_BYTES`] of text and names.
pub fn recent(mut messages: Vec<ChatMessage>) -> Vec<ChatMessage> {
    let mut bytes = 0;
    let keep = messages
        .iter()
        .rev()
        .take_while(|m| {
            bytes += m.text.len() + m.user.len();
            bytes <= HISTORY_BYTES
        })
        .count();
    messages.drain(..messages.len() - keep);
    messages
}
