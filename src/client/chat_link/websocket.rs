//! The chat over a WebSocket to `/ws`, on gloo-net's `WebSocket`.

use futures::stream::SplitSink;
use futures::{FutureExt, SinkExt, StreamExt};
use gloo_net::websocket::futures::WebSocket;
use gloo_net::websocket::{Message, State, WebSocketError};
use gloo_timers::future::{IntervalStream, TimeoutFuture};
use leptos::prelude::window;

use super::super::liveness::Liveness;
use super::super::retry::CONNECT_TIMEOUT;
use super::browser::{End, Link};
use crate::protocol::{ClientMessage, ServerMessage, CLOSE_TOKEN_EXPIRED, WS_PATH};

/// Period of a connection's clock (pings, liveness, renewal, waits), in ms.
pub(super) const TICK_MS: u32 = 250;

/// The server's ping period until its first `pong` says (its default).
const DEFAULT_PING_INTERVAL_MS: f64 = 20_000.0;

/// How often an opening socket's state is looked at, in ms.
const OPEN_LOOK_MS: u32 = 25;

/// A socket to `/ws`, opening (or `None` if it cannot even start).
pub(super) fn open() -> Option<WebSocket> {
    WebSocket::open(&url()?).ok()
}

/// The socket's URL, on the page's own host.
fn url() -> Option<String> {
    let location = window().location();
    let scheme = match location.protocol().ok()?.as_str() {
        "https:" => "wss",
        _ => "ws",
    };
    Some(format!("{scheme}://{}{WS_PATH}", location.host().ok()?))
}

/// Runs one socket: waits for it to open (within the connect timeout),
/// rejoins the rooms, then relays frames both ways until it ends.
pub(super) async fn serve(ws: WebSocket, link: &mut Link<'_>) -> End {
    if !opened(&ws).await {
        return End::Refused;
    }
    link.backoff.reset();
    let rejoins = link.core.opened(false);
    let (mut sink, mut stream) = ws.split();
    for frame in rejoins {
        if send(&mut sink, &frame).await.is_err() {
            return End::Closed(1006);
        }
    }
    // One clock for everything timed while the socket is open: a timer
    // per branch would restart with every frame and never fire.
    let mut tick = IntervalStream::new(TICK_MS).fuse();
    let mut alive = Liveness::new(DEFAULT_PING_INTERVAL_MS);
    let mut heard_any = false;
    let mut ping_at = 0.0;
    // Closed before a single frame: the attempt counts as failed.
    let ended = |code: u16, heard_any: bool| {
        if heard_any || code == CLOSE_TOKEN_EXPIRED {
            End::Closed(code)
        } else {
            End::Silent
        }
    };
    loop {
        futures::select! {
            frame = stream.next().fuse() => {
                alive.heard();
                match frame {
                    Some(Ok(Message::Text(text))) => {
                        heard_any = true;
                        match serde_json::from_str::<ServerMessage>(&text) {
                            Ok(ServerMessage::Pong { ping_interval_ms }) => {
                                alive.set_interval(ping_interval_ms as f64);
                            }
                            Ok(msg) => link.core.receive(msg),
                            Err(e) => leptos::logging::warn!("unreadable frame from the server: {e}"),
                        }
                    }
                    Some(Ok(Message::Bytes(_))) => heard_any = true,
                    Some(Err(WebSocketError::ConnectionClose(close))) => {
                        return ended(close.code, heard_any);
                    }
                    Some(Err(_)) => {}
                    None => return ended(1006, heard_any),
                }
            }
            _ = link.wake.went_offline().fuse() => return End::Closed(1006),
            command = link.queue.next() => match command {
                Some(command) => link.core.command(command),
                None => return End::Closed(1000),
            },
            _ = tick.next() => {
                // Open but silent (a NAT dropped it, the server froze): as
                // good as closed.
                if alive.dead() {
                    return End::Closed(1006);
                }
                if js_sys::Date::now() >= ping_at {
                    ping_at = js_sys::Date::now() + alive.interval_ms();
                    if send(&mut sink, &ClientMessage::Ping).await.is_err() {
                        return End::Closed(1006);
                    }
                }
                link.core.tick();
                if link.core.renewal_due() && link.core.renew().await {
                    return End::Renewed;
                }
            }
        }
        for frame in link.core.outgoing() {
            if send(&mut sink, &frame).await.is_err() {
                return End::Closed(1006);
            }
        }
    }
}

/// Whether `ws` opens within the connect timeout. Its state is looked at
/// rather than waited on: a socket can close without an `error` event (a
/// proxy, a browser extension), which gloo-net's readiness would never
/// report.
pub(super) async fn opened(ws: &WebSocket) -> bool {
    let deadline = js_sys::Date::now() + CONNECT_TIMEOUT.as_millis() as f64;
    loop {
        match ws.state() {
            State::Open => return true,
            State::Closing | State::Closed => return false,
            State::Connecting if js_sys::Date::now() > deadline => return false,
            State::Connecting => TimeoutFuture::new(OPEN_LOOK_MS).await,
        }
    }
}

async fn send(
    sink: &mut SplitSink<WebSocket, Message>,
    msg: &ClientMessage,
) -> Result<(), WebSocketError> {
    let json = serde_json::to_string(msg).unwrap_or_default();
    sink.send(Message::Text(json)).await
}
