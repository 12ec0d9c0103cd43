//! `GET /ws`: the chat over a WebSocket. The upgrade passes the gate
//! (origin, token, the user's cap); then the socket is split: a writer task
//! owns the sending half and drains the connection's queue, and the
//! connection's lifecycle ([`client::run`]) reads the other half through
//! [`WsTransport`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, FromRequestParts, OriginalUri, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::response::Response;

use crate::server::refusal::Refused;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::client::{self, Connection, End, Incoming, Transport};
use super::gate::{identify, take_place, too_many_sockets, Places};
use super::outbox::{error, Outbox, Queue};
use super::user::User;
use super::Chat;
use crate::protocol::{
    ClientMessage, ErrorCode, CLOSE_INVALID_DATA, CLOSE_PING_TIMEOUT, CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG, MAX_FRAME_BYTES,
};
use crate::server::listener::Admitted;
use crate::server::metrics::{self, Transport as Kind};
use crate::server::sessions::SessionHold;

/// How many bytes of frames the writer gathers before it must write (it
/// also writes whenever its queue runs dry).
const WRITE_BATCH_BYTES: usize = 16 * 1024;

/// How long the writer may take to send the last frames and the close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// `GET /ws`: 403 for a foreign origin, 401 without a valid token, 429 for a
/// user who holds too many connections, else the upgrade.
pub async fn upgrade(
    State(chat): State<Arc<Chat>>,
    Extension(admitted): Extension<Admitted>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    ws: MaybeUpgrade,
) -> Result<Response, Refused> {
    if !chat.websocket {
        return Err(Refused::turned_off("WebSockets"));
    }
    let claims = identify(&chat, &admitted, &uri, &headers).await?;
    let ws =
        ws.0.inspect_err(|_| metrics::upgrade_rejected("not_websocket"))?;
    let (user, places) = take_place(&chat, admitted, &claims).ok_or_else(too_many_sockets)?;
    // Counted from now, so a sign-out from here on closes the socket.
    let session = chat.sessions.hold(&claims.sid);
    // Frames up to 16 KiB are read; anything larger is refused by the codec
    // (and the connection closed with 1009). Buffers are sized for chat
    // frames, not tungstenite's 128 KiB defaults: idle sockets stay small
    // (1 KiB holds any ordinary chat frame; the read buffer grows for a
    // larger one). Frames the writer feeds are held up to
    // WRITE_BATCH_BYTES and sent by one flush.
    Ok(ws
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .read_buffer_size(1024)
        .write_buffer_size(WRITE_BATCH_BYTES)
        .on_upgrade(move |socket| serve(socket, chat, user, session, claims.exp, places)))
}

/// Runs an upgraded socket until it ends.
///
/// Not an `async fn` on purpose: the socket is split and the writer started
/// right here, so the returned future (which lives as long as the
/// connection) holds only what the lifecycle needs. An `async fn` keeps its
/// arguments in its state for its whole life, the 368-byte `WebSocket`
/// included.
fn serve(
    socket: WebSocket,
    chat: Arc<Chat>,
    user: User,
    session: SessionHold,
    expires_at: u64,
    places: Places,
) -> impl Future<Output = ()> + Send {
    let id = chat.new_id();
    let span = tracing::info_span!("ws", conn = id, user = %user.id);
    let entered = span.enter();
    metrics::connection_opened(Kind::Ws);
    tracing::debug!(name = %user.name, "connected");
    let (sink, stream) = socket.split();
    let (outbox, queue) = Outbox::new(chat.queue_bytes);
    let writer = tokio::spawn(write_loop(sink, queue).in_current_span());
    let connection = Connection {
        open: chat.sockets.token(),
        chat,
        id,
        user,
        session,
        expires_at,
        outbox,
        places,
    };
    drop(entered);
    async move {
        client::run(connection, WsTransport { stream, writer }).await;
        metrics::connection_closed(Kind::Ws);
    }
    .instrument(span)
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

/// A WebSocket as a chat transport.
struct WsTransport {
    /// Frames from the client.
    stream: SplitStream<WebSocket>,
    /// The writer task, waited for (briefly) at the end.
    writer: JoinHandle<()>,
}

impl Transport for WsTransport {
    async fn recv(&mut self) -> Incoming {
        match self.stream.next().await {
            None | Some(Ok(Message::Close(_))) => Incoming::End(None),
            Some(Err(e)) => {
                tracing::debug!("read error: {e}");
                Incoming::End(read_error(e))
            }
            Some(Ok(Message::Text(text))) if text.len() > MAX_FRAME_BYTES => {
                Incoming::End(Some((CLOSE_TOO_BIG, "frame too large")))
            }
            Some(Ok(Message::Text(text))) => match serde_json::from_str::<ClientMessage>(&text) {
                Ok(msg) => Incoming::Frame(msg),
                Err(e) => Incoming::Refused(error(
                    ErrorCode::InvalidMessage,
                    format!("expected {{\"type\":\"join\"|\"leave\"|\"message\",…}}: {e}"),
                )),
            },
            Some(Ok(Message::Binary(_))) => Incoming::Refused(error(
                ErrorCode::InvalidMessage,
                "binary frames are not supported; send JSON text",
            )),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Incoming::Heard,
        }
    }

    fn beat(&mut self, outbox: &Outbox, heard: bool) -> Option<End> {
        // Anything from the client (a pong above all) proves it is alive.
        if !heard {
            return Some(Some((CLOSE_PING_TIMEOUT, "no answer to ping")));
        }
        outbox.push(Message::Ping(Default::default()));
        None
    }

    async fn finish(self, outbox: Outbox, end: End) {
        let slow = outbox.too_slow().is_cancelled();
        if let Some((code, reason)) = end {
            outbox.push(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })));
        }
        drop(outbox);
        // A client too slow to read its queue will not read a close frame either.
        if slow {
            self.writer.abort();
        } else if tokio::time::timeout(CLOSE_GRACE, self.writer)
            .await
            .is_err()
        {
            tracing::debug!("writer did not finish in time");
        }
    }
}

/// How a connection whose read failed with `e` ends (RFC 6455 §7.4.1).
fn read_error(e: axum::Error) -> End {
    use tungstenite::error::{CapacityError, Error};
    match e.into_inner().downcast::<Error>().map(|e| *e) {
        Ok(Error::Capacity(CapacityError::MessageTooLong { .. })) => {
            Some((CLOSE_TOO_BIG, "frame too large"))
        }
        Ok(Error::Utf8(_)) => Some((CLOSE_INVALID_DATA, "text frame is not valid UTF-8")),
        Ok(Error::Protocol(_) | Error::Capacity(_)) => {
            Some((CLOSE_PROTOCOL_ERROR, "WebSocket protocol violation"))
        }
        // The peer is gone (reset, end of stream): nobody to tell.
        _ => None,
    }
}

/// The upgrade, or the refusal that says why the request is not one; taken
/// this way so that auth is checked (and answered) before the upgrade headers.
pub struct MaybeUpgrade(Result<WebSocketUpgrade, Refused>);

impl<S: Send + Sync> FromRequestParts<S> for MaybeUpgrade {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(MaybeUpgrade(
            WebSocketUpgrade::from_request_parts(parts, state)
                .await
                .map_err(|rejection| {
                    let status = rejection.status();
                    Refused::new(status, ErrorCode::InvalidMessage, rejection.body_text())
                }),
        ))
    }
}
