//! One WebSocket connection, from upgrade to close.
//!
//! Two halves: this task reads frames, checks them and acts on the hub; a
//! writer task owns the socket's sending half and drains the connection's
//! bounded queue (everything sent to this client, its own replies included,
//! goes through that queue, so frames keep their order). When the reader
//! finishes, for whatever reason, it removes the connection from its rooms,
//! queues the close frame and gives the writer a moment to send it.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::Instrument;

use super::hub::{ConnId, User};
use super::outbox::{error, rate_limited, Outbox, Queue};
use super::{Chat, HealthWatch};
use crate::protocol::{
    ClientMessage, ErrorCode, ServerMessage, CLOSE_GOING_AWAY, CLOSE_INVALID_DATA,
    CLOSE_PING_TIMEOUT, CLOSE_PROTOCOL_ERROR, CLOSE_TOKEN_EXPIRED, CLOSE_TOO_BIG, CLOSE_TOO_SLOW,
    MAX_FRAME_BYTES, MAX_ROOMS_PER_CONNECTION,
};
use crate::server::admission::Slot;
use crate::server::clock::now_secs;
use crate::server::limits::too_many_messages;
use crate::server::listener::Admission;
use crate::server::metrics::{self, Transport};
use crate::server::sessions::SessionHold;
use crate::server::text;

/// Shortest time between two pongs to one socket: more pings are ignored.
const MIN_PONG_GAP: Duration = Duration::from_millis(500);

/// How long the writer may take to send the last frames and the close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What a socket holds of the server's limits, given back when it closes.
pub struct Places {
    /// Its connection's place (server-wide and per address).
    pub _connection: Arc<Admission>,
    /// Through a trusted proxy: its place under the forwarded address.
    pub _stream: Option<Arc<Admission>>,
    /// One of its user's sockets.
    pub _user: Slot<Arc<str>>,
}

/// Why the connection ends, and what (if anything) to tell the client.
enum End {
    /// The client closed or vanished: nothing to send.
    ClientGone,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

/// Runs an upgraded socket until it ends. Never panics on client input; an
/// error only ends this connection.
///
/// Not an `async fn` on purpose: the socket is split and the writer started
/// right here, so the returned future (which lives as long as the
/// connection) holds only what the reader loop needs. An `async fn` keeps its
/// arguments in its state for its whole life, the 368-byte `WebSocket`
/// included, and `serve` would keep a second copy.
pub fn run(
    socket: WebSocket,
    chat: Arc<Chat>,
    id: ConnId,
    user: User,
    session: SessionHold,
    expires_at: u64,
    places: Places,
) -> impl Future<Output = ()> + Send {
    let span = tracing::info_span!("ws", conn = id, user = %user.id);
    let entered = span.enter();
    metrics::connection_opened(Transport::Ws);
    tracing::debug!(name = %user.name, "connected");
    let (sink, stream) = socket.split();
    let (outbox, queue) = Outbox::new(chat.queue_bytes);
    let writer = tokio::spawn(write_loop(sink, queue).in_current_span());
    let reader = Reader {
        _open: chat.sockets.token(),
        _places: places,
        chat,
        id,
        user,
        session,
        expires_at,
        stream,
        outbox,
        writer,
    };
    drop(entered);
    serve(reader).instrument(span)
}

/// Sends everything queued for the client, in order, until the queue closes
/// or a close frame has gone out.
async fn write_loop(mut sink: SplitSink<WebSocket, Message>, mut queue: Queue) {
    // Whatever queued up while the last write was in flight goes out in one
    // write (`feed` buffers up to the write buffer size, `flush` sends): one
    // syscall for a burst instead of one a frame.
    'write: while let Some(frame) = queue.recv().await {
        let mut closing = matches!(frame, Message::Close(_));
        if sink.feed(frame).await.is_err() {
            break;
        }
        while !closing {
            let Some(frame) = queue.try_recv() else { break };
            closing = matches!(frame, Message::Close(_));
            if sink.feed(frame).await.is_err() {
                break 'write;
            }
        }
        if sink.flush().await.is_err() || closing {
            break;
        }
    }
    let _ = sink.close().await;
}

/// What the reader loop works with.
struct Reader {
    /// Rooms, limits, settings.
    chat: Arc<Chat>,
    /// This connection in the hub.
    id: ConnId,
    /// The authenticated user (the token's `sub` and `name`).
    user: User,
    /// Its sign-in session (the token's `sid`), shared with its other
    /// sockets; signals when the session is signed out.
    session: SessionHold,
    /// When the token expires (Unix seconds): the connection closes then.
    expires_at: u64,
    /// Frames from the client.
    stream: SplitStream<WebSocket>,
    /// Everything sent to the client goes through here.
    outbox: Outbox,
    /// The writer task, waited for (briefly) at the end.
    writer: JoinHandle<()>,
    /// Holds shutdown until this connection has finished.
    _open: TaskTrackerToken,
    /// Its places in the server's limits.
    _places: Places,
}

async fn serve(reader: Reader) {
    let Reader {
        chat,
        id,
        user,
        session,
        expires_at,
        mut stream,
        outbox,
        writer,
        _open,
        _places,
    } = reader;
    let mut joined = BTreeSet::<String>::new();
    // Whether the other servers can be reached: said at once if not, and on
    // every change.
    let mut health = HealthWatch::start(&chat, &outbox);
    let mut last_pong: Option<Instant> = None;
    let mut ping =
        tokio::time::interval_at(Instant::now() + chat.ping_interval, chat.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Anything from the client (a pong above all) proves it is alive.
    let mut heard_since_ping = true;
    let expiry = tokio::time::sleep(Duration::from_secs(expires_at.saturating_sub(now_secs())));
    tokio::pin!(expiry);

    let end = loop {
        tokio::select! {
            _ = chat.shutdown.cancelled() => break End::Close(CLOSE_GOING_AWAY, "server shutting down"),
            _ = outbox.too_slow().cancelled() => break End::Close(CLOSE_TOO_SLOW, "too slow: outbound queue full"),
            _ = &mut expiry => break End::Close(CLOSE_TOKEN_EXPIRED, "token expired"),
            _ = session.signed_out().cancelled() => break End::Close(CLOSE_TOKEN_EXPIRED, "signed out"),
            frame = health.changed() => { outbox.send(&frame); }
            _ = ping.tick() => {
                if !heard_since_ping {
                    break End::Close(CLOSE_PING_TIMEOUT, "no answer to ping");
                }
                heard_since_ping = false;
                outbox.push(Message::Ping(Default::default()));
            }
            frame = stream.next() => {
                heard_since_ping = true;
                match frame {
                    None | Some(Ok(Message::Close(_))) => break End::ClientGone,
                    Some(Err(e)) => {
                        tracing::debug!("read error: {e}");
                        break read_error(e);
                    }
                    Some(Ok(Message::Text(text))) => {
                        if text.len() > MAX_FRAME_BYTES {
                            break End::Close(CLOSE_TOO_BIG, "frame too large");
                        }
                        metrics::message_received();
                        let socket = Socket { id, user: &user, outbox: &outbox, joined: &mut joined, last_pong: &mut last_pong };
                        handle(&chat, socket, text.as_str()).await;
                    }
                    Some(Ok(Message::Binary(_))) => {
                        metrics::invalid_message();
                        outbox.send(&error(ErrorCode::InvalidMessage, "binary frames are not supported; send JSON text"));
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                }
            }
        }
    };

    chat.hub.disconnect(id, &joined);
    drop(session);
    let slow = outbox.too_slow().is_cancelled();
    if let End::Close(code, reason) = end {
        tracing::debug!(code, reason, "closing");
        outbox.push(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })));
    }
    drop(outbox);
    // A client too slow to read its queue will not read a close frame either.
    if slow {
        writer.abort();
    } else if tokio::time::timeout(CLOSE_GRACE, writer).await.is_err() {
        tracing::debug!("writer did not finish in time");
    }
    metrics::connection_closed(Transport::Ws);
    tracing::debug!("disconnected");
}

/// How a connection whose read failed with `e` ends (RFC 6455 §7.4.1).
fn read_error(e: axum::Error) -> End {
    use tungstenite::error::{CapacityError, Error};
    match e.into_inner().downcast::<Error>().map(|e| *e) {
        Ok(Error::Capacity(CapacityError::MessageTooLong { .. })) => {
            End::Close(CLOSE_TOO_BIG, "frame too large")
        }
        Ok(Error::Utf8(_)) => End::Close(CLOSE_INVALID_DATA, "text frame is not valid UTF-8"),
        Ok(Error::Protocol(_) | Error::Capacity(_)) => {
            End::Close(CLOSE_PROTOCOL_ERROR, "WebSocket protocol violation")
        }
        // The peer is gone (reset, end of stream): nobody to tell.
        _ => End::ClientGone,
    }
}

/// What [`act`] works on: one connection's own state.
pub(super) struct Socket<'a> {
    /// This connection in the hub.
    pub id: ConnId,
    /// Its user.
    pub user: &'a User,
    /// Its outbound queue.
    pub outbox: &'a Outbox,
    /// The rooms it is in.
    pub joined: &'a mut BTreeSet<String>,
    /// When it was last answered a `pong`.
    pub last_pong: &'a mut Option<Instant>,
}

/// Acts on one text frame from the client.
async fn handle(chat: &Chat, socket: Socket<'_>, text: &str) {
    match serde_json::from_str::<ClientMessage>(text) {
        Ok(msg) => act(chat, socket, msg).await,
        Err(e) => {
            metrics::invalid_message();
            socket.outbox.send(&error(
                ErrorCode::InvalidMessage,
                format!("expected {{\"type\":\"join\"|\"leave\"|\"message\",…}}: {e}"),
            ));
        }
    }
}

/// Acts on one frame from the client, whatever brought it (a WebSocket, or
/// a POST of the HTTP fallback).
pub(super) async fn act(chat: &Chat, socket: Socket<'_>, msg: ClientMessage) {
    let Socket {
        id,
        user,
        outbox,
        joined,
        last_pong,
    } = socket;
    match msg {
        ClientMessage::Ping => {
            if last_pong.is_none_or(|at| at.elapsed() >= MIN_PONG_GAP) {
                *last_pong = Some(Instant::now());
                outbox.send(&ServerMessage::Pong {
                    ping_interval_ms: chat.ping_interval.as_millis() as u64,
                });
            }
        }
        // Handled by a fallback stream before it gets here.
        ClientMessage::Attach { .. } => {
            metrics::invalid_message();
            outbox.send(&error(
                ErrorCode::InvalidMessage,
                "attach is for the connection of an HTTP fallback stream",
            ));
        }
        ClientMessage::Join { room } => {
            if !joined.contains(&room) && joined.len() >= MAX_ROOMS_PER_CONNECTION {
                outbox.send(&error(
                    ErrorCode::InvalidRoom,
                    format!(
                        "at most {MAX_ROOMS_PER_CONNECTION} rooms per connection; leave one first"
                    ),
                ));
                return;
            }
            if let Err(wait) = chat.limits.room_change(&user.id) {
                outbox.send(&too_many(wait));
                return;
            }
            match chat.join(id, user, outbox, &room).await {
                Ok(()) => {
                    joined.insert(room);
                }
                Err(e) => {
                    outbox.send(&e);
                }
            }
        }
        ClientMessage::Leave { room } => {
            if !joined.contains(&room) {
                outbox.send(&not_in_room(&room));
                return;
            }
            if let Err(wait) = chat.limits.room_change(&user.id) {
                outbox.send(&too_many(wait));
                return;
            }
            chat.hub.leave(id, outbox, &room);
            joined.remove(&room);
        }
        ClientMessage::Message { room, text } => {
            let text = match text::message_text(&text) {
                Ok(text) => text,
                Err(why) => {
                    metrics::invalid_message();
                    outbox.send(&error(ErrorCode::InvalidMessage, why));
                    return;
                }
            };
            if !joined.contains(&room) {
                outbox.send(&not_in_room(&room));
                return;
            }
            if let Err(wait) = chat.limits.message(&user.id) {
                metrics::rate_limited();
                outbox.send(&too_many(wait));
                return;
            }
            chat.say(id, user, &room, text);
        }
    }
}

fn not_in_room(room: &str) -> ServerMessage {
    error(
        ErrorCode::NotInRoom,
        format!("join {room:?} before sending to it or leaving it"),
    )
}

fn too_many(wait: Duration) -> ServerMessage {
    rate_limited(too_many_messages(wait), wait)
}
