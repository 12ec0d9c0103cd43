//! A connection's outbound queue, bounded in bytes, and the frames that go
//! into it. Everything sent to a client goes through its queue: the room's
//! broadcasts, its own replies and errors, pings and the close frame, so they
//! keep their order. Pushing never waits; a queue over its bound marks the
//! client too slow, and its connection closes (4002) without holding up the
//! others.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::protocol::{ErrorCode, ServerMessage};
use crate::server::metrics;

/// Bytes a frame counts for in a queue, beyond its payload (the frame's own
/// bookkeeping).
const FRAME_OVERHEAD: usize = 64;

/// The sending end of one connection's outbound queue.
#[derive(Clone)]
pub struct Outbox {
    /// Queue drained by the connection's writer task.
    tx: mpsc::UnboundedSender<Message>,
    /// Bytes queued and not yet taken by the writer.
    queued: Arc<AtomicUsize>,
    /// Most bytes that may be queued.
    limit: usize,
    /// Cancelled when the queue overflows: the connection then closes.
    too_slow: CancellationToken,
}

/// The receiving end of an outbound queue, for the writer task.
pub struct Queue {
    /// Frames, in order.
    rx: mpsc::UnboundedReceiver<Message>,
    /// Shared with the outbox: taken frames are given back here.
    queued: Arc<AtomicUsize>,
}

/// What a frame counts for in a queue.
fn frame_bytes(frame: &Message) -> usize {
    FRAME_OVERHEAD
        + match frame {
            Message::Text(t) => t.len(),
            Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
            Message::Close(c) => c.as_ref().map_or(0, |c| c.reason.len()),
        }
}

impl Outbox {
    /// A queue that holds at most `limit` bytes, with its receiving end.
    pub fn new(limit: usize) -> (Outbox, Queue) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let outbox = Outbox {
            tx,
            queued: queued.clone(),
            limit,
            too_slow: CancellationToken::new(),
        };
        (outbox, Queue { rx, queued })
    }

    /// Queues `frame` without waiting; a queue over its bound marks the
    /// client too slow (and takes nothing more).
    pub fn push(&self, frame: Message) -> bool {
        if self.too_slow.is_cancelled() {
            return false;
        }
        let bytes = frame_bytes(&frame);
        let before = self.queued.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > self.limit {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
            self.too_slow.cancel();
            metrics::slow_client_dropped();
            return false;
        }
        if self.tx.send(frame).is_err() {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Queues a server message.
    pub fn send(&self, msg: &ServerMessage) -> bool {
        self.push(encode(msg))
    }

    /// Resolves once the receiving end is gone (the client went away).
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// Resolves once the client has been found too slow.
    pub fn too_slow(&self) -> &CancellationToken {
        &self.too_slow
    }
}

impl Queue {
    fn took(&self, frame: Option<Message>) -> Option<Message> {
        if let Some(f) = &frame {
            self.queued.fetch_sub(frame_bytes(f), Ordering::Relaxed);
        }
        frame
    }

    /// The next frame, waiting for one; `None` once every outbox is gone.
    pub async fn recv(&mut self) -> Option<Message> {
        let frame = self.rx.recv().await;
        self.took(frame)
    }

    /// Bytes queued and not yet taken.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Option<Message> {
        let frame = self.rx.try_recv().ok();
        self.took(frame)
    }
}

/// Encodes a server message as a text frame. The bytes are shared, so the
/// clones sent to each member of a room cost a reference count, not a copy.
pub fn encode(msg: &ServerMessage) -> Message {
    // Serialising these plain structs cannot fail.
    let json = serde_json::to_string(msg).unwrap_or_default();
    Message::Text(Utf8Bytes::from(json))
}

/// An error frame.
pub fn error(code: ErrorCode, message: impl Into<String>) -> ServerMessage {
    ServerMessage::Error {
        code,
        message: message.into(),
        retry_after_ms: None,
    }
}

/// A refusal that says when to try again.
pub fn rate_limited(message: impl Into<String>, wait: Duration) -> ServerMessage {
    ServerMessage::Error {
        code: ErrorCode::RateLimited,
        message: message.into(),
        retry_after_ms: Some(wait.as_millis().max(1) as u64),
    }
}
