//! One chat connection's life, written once for every transport (as
//! centrifuge's `client.go` is over its `Transport`): a WebSocket and an
//! HTTP fallback stream select on the same things — shutdown, a queue that
//! overflowed, the token's expiry, a sign-out, the other servers' health,
//! the transport's heartbeat, and the client's frames — and clean up the
//! same way. A [`Transport`] only says how frames come in, how liveness is
//! kept, and how the end goes out on its wire.
//!
//! Everything sent to the client goes through its [`Outbox`], so replies,
//! room frames and the close keep their order.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::gate::{HealthWatch, Places};
use super::outbox::{error, rate_limited, Outbox};
use super::user::{ConnId, User};
use super::{nack, Chat};
use crate::protocol::{
    is_valid_client_id, ClientMessage, ErrorCode, ServerMessage, CLOSE_GOING_AWAY,
    CLOSE_TOKEN_EXPIRED, CLOSE_TOO_SLOW, MAX_CLIENT_ID, MAX_ROOMS_PER_CONNECTION,
};
use crate::server::clock::now_secs;
use crate::server::limits::too_many_messages;
use crate::server::metrics;
use crate::server::sessions::SessionHold;
use crate::server::text;

/// Shortest time between two pongs to one connection: more pings are ignored.
const MIN_PONG_GAP: Duration = Duration::from_millis(500);

/// How a connection ends: a close code and reason to tell the client, or
/// `None` when the client went away (nobody to tell).
pub type End = Option<(u16, &'static str)>;

/// What came from the client.
pub enum Incoming {
    /// A frame to act on.
    Frame(ClientMessage),
    /// A sign of life with nothing to act on (a WebSocket pong).
    Heard,
    /// A frame that is refused with this answer; the connection stays.
    Refused(ServerMessage),
    /// The connection ends.
    End(End),
}

/// How frames reach a connection and how its end is told.
pub trait Transport: Send {
    /// The next thing from the client.
    fn recv(&mut self) -> impl Future<Output = Incoming> + Send;

    /// Every ping interval: keeps the client's liveness (`heard`: whether
    /// anything came since the last beat); `Some` when the connection is
    /// dead and ends so.
    fn beat(&mut self, outbox: &Outbox, heard: bool) -> Option<End>;

    /// Tells the client how the connection ended, on this transport's wire,
    /// and lets the last frames go out.
    fn finish(self, outbox: Outbox, end: End) -> impl Future<Output = ()> + Send;
}

/// One connection, as its lifecycle holds it.
pub struct Connection {
    /// Rooms, limits, settings.
    pub chat: Arc<Chat>,
    /// This connection in the hub.
    pub id: ConnId,
    /// The authenticated user (the token's `sub` and `name`).
    pub user: User,
    /// Its sign-in session, shared with the user's other connections of it;
    /// signals a sign-out.
    pub session: SessionHold,
    /// When the token expires (Unix seconds): the connection closes then.
    pub expires_at: u64,
    /// Everything sent to the client.
    pub outbox: Outbox,
    /// Its places in the server's limits.
    pub places: Places,
    /// Holds shutdown until the connection has finished.
    pub open: TaskTrackerToken,
}

/// Runs a connection until it ends, for whatever reason. Never panics on
/// client input; an error only ends this connection.
pub async fn run(connection: Connection, mut transport: impl Transport) {
    let Connection {
        chat,
        id,
        user,
        session,
        expires_at,
        outbox,
        places,
        open,
    } = connection;
    let mut joined = BTreeSet::<String>::new();
    let mut last_pong: Option<Instant> = None;
    let mut health = HealthWatch::start(&chat, &outbox);
    let mut beat =
        tokio::time::interval_at(Instant::now() + chat.ping_interval, chat.ping_interval);
    beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut heard = true;
    let expiry = tokio::time::sleep(Duration::from_secs(expires_at.saturating_sub(now_secs())));
    tokio::pin!(expiry);

    let end: End = loop {
        tokio::select! {
            _ = chat.shutdown.cancelled() => break Some((CLOSE_GOING_AWAY, "server shutting down")),
            _ = outbox.too_slow().cancelled() => break Some((CLOSE_TOO_SLOW, "too slow: outbound queue full")),
            _ = &mut expiry => break Some((CLOSE_TOKEN_EXPIRED, "token expired")),
            _ = session.signed_out().cancelled() => break Some((CLOSE_TOKEN_EXPIRED, "signed out")),
            frame = health.changed() => { outbox.send(&frame); }
            _ = beat.tick() => {
                if let Some(end) = transport.beat(&outbox, heard) {
                    break end;
                }
                heard = false;
            }
            incoming = transport.recv() => {
                heard = true;
                match incoming {
                    Incoming::Frame(msg) => {
                        metrics::message_received();
                        let socket = Socket { id, user: &user, outbox: &outbox, joined: &mut joined, last_pong: &mut last_pong };
                        // Boxed: a join's state (Redis round trips) is large,
                        // and inline it would be part of every idle
                        // connection's task for its lifetime.
                        Box::pin(act(&chat, socket, msg)).await;
                    }
                    Incoming::Heard => {}
                    Incoming::Refused(answer) => {
                        metrics::invalid_message();
                        outbox.send(&answer);
                    }
                    Incoming::End(end) => break end,
                }
            }
        }
    };

    chat.disconnect(id, &user, &joined).await;
    drop(session);
    if let Some((code, reason)) = end {
        tracing::debug!(code, reason, "closing");
    }
    transport.finish(outbox, end).await;
    drop((places, open));
    tracing::debug!("disconnected");
}

/// What [`act`] works on: one connection's own state.
pub struct Socket<'a> {
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

/// Acts on one frame from the client, whatever brought it.
pub async fn act(chat: &Chat, socket: Socket<'_>, msg: ClientMessage) {
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
        // Taken by a fallback stream's transport before it gets here.
        ClientMessage::Attach { .. } => {
            metrics::invalid_message();
            outbox.send(&error(
                ErrorCode::InvalidMessage,
                "attach is for the connection of an HTTP fallback stream",
            ));
        }
        ClientMessage::Join { room, since } => {
            if !joined.contains(&room) && joined.len() >= MAX_ROOMS_PER_CONNECTION {
                outbox.send(&error(
                    ErrorCode::InvalidRoom,
                    format!(
                        "at most {MAX_ROOMS_PER_CONNECTION} rooms per connection; leave one first"
                    ),
                ));
                return;
            }
            if let Err(wait) = chat.limits.room_change(&user.id, user.address) {
                outbox.send(&too_many(wait));
                return;
            }
            match chat.join(id, user, outbox, &room, since).await {
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
            if let Err(wait) = chat.limits.room_change(&user.id, user.address) {
                outbox.send(&too_many(wait));
                return;
            }
            chat.leave(id, user, outbox, &room).await;
            joined.remove(&room);
        }
        ClientMessage::Message {
            room,
            text,
            client_id,
        } => {
            let answer = message(chat, user, joined, &room, &text, &client_id).await;
            outbox.send(&answer);
        }
    }
}

/// The answer to a message: its `ack` once published, else a `nack` that
/// says why (or an `error` when it has no usable `client_id`).
async fn message(
    chat: &Chat,
    user: &User,
    joined: &BTreeSet<String>,
    room: &str,
    text: &str,
    client_id: &str,
) -> ServerMessage {
    if !is_valid_client_id(client_id) {
        metrics::invalid_message();
        return error(
            ErrorCode::InvalidMessage,
            format!("a client_id is 1 to {MAX_CLIENT_ID} characters of A-Z a-z 0-9 - _"),
        );
    }
    let text = match text::message_text(text) {
        Ok(text) => text,
        Err(why) => {
            metrics::invalid_message();
            return nack(room, client_id, ErrorCode::InvalidMessage, why, None);
        }
    };
    if !joined.contains(room) {
        return nack(
            room,
            client_id,
            ErrorCode::NotInRoom,
            format!("join {room:?} before sending to it"),
            None,
        );
    }
    if let Err(wait) = chat.limits.message(&user.id, user.address) {
        metrics::rate_limited();
        return nack(
            room,
            client_id,
            ErrorCode::RateLimited,
            too_many_messages(wait),
            Some(wait),
        );
    }
    chat.say(user, room, text, client_id).await
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
