//! The chat socket to `/ws`, on gloo-net's `WebSocket`: keeps itself
//! connected, rejoins its rooms, renews the session before it expires, and
//! feeds every server frame into [`ChatState`].

use std::sync::{Arc, Mutex, MutexGuard};

use crate::chat::ChatState;
use crate::protocol::ClientMessage;

use super::Running;

/// A chat connection; stopped by [`ChatSocket::close`].
pub struct ChatSocket {
    /// The loop.
    running: Running,
    /// Rooms to be in: joined again after every reconnect. (Send + Sync,
    /// like the rest, so that pages keep the socket in ordinary reactive
    /// storage, also while rendering on the server.)
    rooms: Arc<Mutex<Vec<String>>>,
    /// Frames for the loop to send.
    #[cfg(feature = "hydrate")]
    outgoing: futures::channel::mpsc::UnboundedSender<ClientMessage>,
    /// Whether sending is possible (the socket is open).
    state: ChatState,
}

impl ChatSocket {
    /// Connects as the signed-in user whose session ends at `expires_at`
    /// (seconds since the epoch), renewing it before then. On the server:
    /// does nothing.
    pub fn open(state: ChatState, expires_at: u64) -> ChatSocket {
        let rooms = Arc::new(Mutex::new(Vec::new()));
        #[cfg(feature = "hydrate")]
        {
            let (outgoing, queue) = futures::channel::mpsc::unbounded();
            let running = Running::spawn(browser::run(state, expires_at, rooms.clone(), queue));
            ChatSocket {
                running,
                rooms,
                outgoing,
                state,
            }
        }
        #[cfg(not(feature = "hydrate"))]
        {
            let _ = expires_at;
            ChatSocket {
                running: Running::inert(),
                rooms,
                state,
            }
        }
    }

    /// Joins `room` now (if connected) and after every reconnect.
    pub fn join(&self, room: &str) {
        {
            let mut rooms = self.rooms();
            if !rooms.iter().any(|r| r == room) {
                rooms.push(room.to_string());
            }
        }
        self.send(ClientMessage::Join {
            room: room.to_string(),
        });
    }

    /// Leaves `room`.
    pub fn leave(&self, room: &str) {
        self.rooms().retain(|r| r != room);
        self.send(ClientMessage::Leave {
            room: room.to_string(),
        });
    }

    /// Says `text` in `room`; false if the socket is not open.
    pub fn say(&self, room: &str, text: &str) -> bool {
        self.send(ClientMessage::Message {
            room: room.to_string(),
            text: text.to_string(),
        })
    }

    fn rooms(&self) -> MutexGuard<'_, Vec<String>> {
        lock(&self.rooms)
    }

    fn send(&self, msg: ClientMessage) -> bool {
        use leptos::prelude::GetUntracked;
        if !self.state.status.get_untracked().is_live() {
            return false;
        }
        #[cfg(feature = "hydrate")]
        {
            self.outgoing.unbounded_send(msg).is_ok()
        }
        #[cfg(not(feature = "hydrate"))]
        {
            let _ = msg;
            false
        }
    }

    /// Closes the socket and stops reconnecting.
    pub fn close(&self) {
        self.running.stop();
    }
}

/// The list, even if a panic left its lock poisoned (each change is whole).
fn lock(rooms: &Mutex<Vec<String>>) -> MutexGuard<'_, Vec<String>> {
    rooms.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(feature = "hydrate")]
mod browser {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use futures::channel::mpsc::UnboundedReceiver;
    use futures::{FutureExt, SinkExt, StreamExt};
    use gloo_net::websocket::futures::WebSocket;
    use gloo_net::websocket::{Message, State, WebSocketError};
    use leptos::prelude::*;

    use gloo_timers::future::IntervalStream;

    use super::super::retry::{timeout, Backoff, Wakeups, CONNECT_TIMEOUT};
    use super::super::ConnState;
    use crate::chat::ChatState;
    use crate::protocol::{ClientMessage, ServerMessage, CLOSE_TOKEN_EXPIRED, WS_PATH};
    use crate::session::{current_session, renew_session};

    /// Renew the session this long before it expires.
    const RENEW_BEFORE_S: u64 = 300;

    /// Period of the socket's clock (pings, liveness, renewal), in ms.
    const TICK_MS: u32 = 250;

    /// The server's ping period until its first `pong` says (its default).
    const DEFAULT_PING_INTERVAL_MS: f64 = 20_000.0;

    /// Shortest ping period taken from a server, in ms.
    const MIN_PING_INTERVAL_MS: f64 = 1_000.0;

    /// How one socket's life ended.
    enum End {
        /// It never opened.
        Refused,
        /// It closed with this code (1006 when the browser saw no close frame).
        Closed(u16),
        /// The session was renewed: open a new socket with the new cookie now.
        Renewed,
    }

    pub async fn run(
        state: ChatState,
        mut expires_at: u64,
        rooms: Arc<Mutex<Vec<String>>>,
        mut queue: UnboundedReceiver<ClientMessage>,
    ) {
        let mut backoff = Backoff::default();
        let mut wake = Wakeups::new();
        loop {
            let end = match ws_url().and_then(|url| WebSocket::open(&url).ok()) {
                Some(ws) => {
                    let mut link = Link {
                        state,
                        expires_at: &mut expires_at,
                        rooms: &rooms,
                        queue: &mut queue,
                        backoff: &mut backoff,
                        wake: &mut wake,
                    };
                    serve(ws, &mut link).await
                }
                None => End::Refused,
            };
            match end {
                End::Renewed => continue,
                End::Closed(CLOSE_TOKEN_EXPIRED) => {
                    // The session ran out (or was signed out) under us: renew
                    // it, then come straight back.
                    match renew_session().await {
                        Ok(session) => {
                            expires_at = session.expires_at;
                            state.session.set(Some(session));
                            continue;
                        }
                        Err(e) => {
                            leptos::logging::warn!("cannot renew the session: {e}");
                            return session_lost(state);
                        }
                    }
                }
                End::Refused => {
                    // Refused before it opened: maybe the session is no
                    // longer valid (e.g. the server's secret changed).
                    if let Ok(info) = current_session().await {
                        if info.session.is_none() {
                            return session_lost(state);
                        }
                    }
                }
                End::Closed(_) => {}
            }
            // Frames typed while down are not sent late into another context.
            while queue.try_recv().is_ok() {}
            backoff.wait(&|s| state.status.set(s), &mut wake).await;
        }
    }

    /// What one socket's life works with, borrowed from the loop.
    struct Link<'a> {
        /// Where frames go.
        state: ChatState,
        /// When the session ends (renewal moves it).
        expires_at: &'a mut u64,
        /// Rooms to rejoin.
        rooms: &'a Mutex<Vec<String>>,
        /// Frames to send.
        queue: &'a mut UnboundedReceiver<ClientMessage>,
        /// Reset once the socket opens.
        backoff: &'a mut Backoff,
        /// Going offline ends the socket.
        wake: &'a mut Wakeups,
    }

    /// Runs one socket: waits for it to open (within the connect timeout),
    /// rejoins the rooms, then relays frames both ways until it ends.
    async fn serve(mut ws: WebSocket, link: &mut Link<'_>) -> End {
        let state = link.state;
        let opened = timeout(
            CONNECT_TIMEOUT,
            futures::future::poll_fn(|cx| {
                futures::Sink::<Message>::poll_ready(std::pin::Pin::new(&mut ws), cx)
            }),
        )
        .await;
        if !matches!(opened, Some(Ok(()))) || !matches!(ws.state(), State::Open) {
            return End::Refused;
        }
        link.backoff.reset();
        // Whatever was awaiting an answer on the old socket will not get one.
        state.awaiting.set(false);
        state.status.set(ConnState::Live);
        let (mut sink, mut stream) = ws.split();
        let rejoin: Vec<String> = super::lock(link.rooms).clone();
        for room in rejoin {
            if send(&mut sink, &ClientMessage::Join { room })
                .await
                .is_err()
            {
                return End::Closed(1006);
            }
        }
        // One clock for everything timed while the socket is open: a timer
        // per branch would restart with every frame and never fire.
        let mut tick = IntervalStream::new(TICK_MS).fuse();
        let now = js_sys::Date::now;
        let mut renew_at = now() + renewal_delay(*link.expires_at).as_millis() as f64;
        // Until the server says how often it pings (in its first `pong`).
        let mut interval_ms = DEFAULT_PING_INTERVAL_MS;
        let mut heard_at = now();
        let mut ping_at = now();
        loop {
            futures::select! {
                frame = stream.next().fuse() => {
                    heard_at = now();
                    match frame {
                        Some(Ok(Message::Text(text))) => match serde_json::from_str::<ServerMessage>(&text) {
                            Ok(ServerMessage::Pong { ping_interval_ms }) => {
                                interval_ms = (ping_interval_ms as f64).max(MIN_PING_INTERVAL_MS);
                            }
                            Ok(msg) => state.apply(msg),
                            Err(e) => leptos::logging::warn!("unreadable frame from the server: {e}"),
                        },
                        Some(Ok(Message::Bytes(_))) => {}
                        Some(Err(WebSocketError::ConnectionClose(close))) => return End::Closed(close.code),
                        Some(Err(_)) => {}
                        None => return End::Closed(1006),
                    }
                }
                _ = link.wake.went_offline().fuse() => return End::Closed(1006),
                msg = link.queue.next() => {
                    let Some(msg) = msg else { return End::Closed(1000) };
                    if send(&mut sink, &msg).await.is_err() {
                        return End::Closed(1006);
                    }
                }
                _ = tick.next() => {
                    let t = now();
                    // Open but silent (a NAT dropped it, the server froze):
                    // as good as closed.
                    if t - heard_at > 2.0 * interval_ms {
                        return End::Closed(1006);
                    }
                    if t >= ping_at {
                        ping_at = t + interval_ms;
                        if send(&mut sink, &ClientMessage::Ping).await.is_err() {
                            return End::Closed(1006);
                        }
                    }
                    if t >= renew_at {
                        match renew_session().await {
                            Ok(session) => {
                                // Reconnect quietly with the fresh cookie before the
                                // old token's `exp` closes this socket; rejoining
                                // fills any gap from history.
                                *link.expires_at = session.expires_at;
                                state.session.set(Some(session));
                                return End::Renewed;
                            }
                            Err(e) => {
                                // Try again in two minutes; the socket lives until `exp` anyway.
                                leptos::logging::warn!("cannot renew the session yet: {e}");
                                renew_at = now() + 120_000.0;
                            }
                        }
                    }
                }
            }
        }
    }

    async fn send(
        sink: &mut futures::stream::SplitSink<WebSocket, Message>,
        msg: &ClientMessage,
    ) -> Result<(), WebSocketError> {
        let json = serde_json::to_string(msg).unwrap_or_default();
        sink.send(Message::Text(json)).await
    }

    /// How long until the session ending at `expires_at` should be renewed:
    /// five minutes before the end, or half-way through a short session.
    fn renewal_delay(expires_at: u64) -> Duration {
        let now = (js_sys::Date::now() / 1000.0) as u64;
        let lifetime = expires_at.saturating_sub(now);
        Duration::from_secs(
            lifetime
                .saturating_sub(RENEW_BEFORE_S.min(lifetime / 2))
                .max(1),
        )
    }

    fn session_lost(state: ChatState) {
        state.status.set(ConnState::Stopped);
        state.session.set(None);
    }

    fn ws_url() -> Option<String> {
        let location = window().location();
        let scheme = match location.protocol().ok()?.as_str() {
            "https:" => "wss",
            _ => "ws",
        };
        Some(format!("{scheme}://{}{WS_PATH}", location.host().ok()?))
    }
}
