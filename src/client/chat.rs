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

    use gloo_timers::future::{IntervalStream, TimeoutFuture};

    use super::super::retry::{Backoff, Wakeups, CONNECT_TIMEOUT};
    use super::super::ConnState;
    use crate::chat::ChatState;
    use crate::protocol::{ClientMessage, ServerMessage, CLOSE_TOKEN_EXPIRED, WS_PATH};
    use crate::session::{current_session, renew_session};

    /// Renew the session this long before it expires.
    const RENEW_BEFORE_S: u64 = 300;

    /// WebSocket attempts in a row that end before a single frame, after
    /// which the HTTP fallback is used.
    const SWITCH_AFTER: u32 = 2;

    /// Period of the socket's clock (pings, liveness, renewal), in ms.
    const TICK_MS: u32 = 250;

    /// The server's ping period until its first `pong` says (its default).
    const DEFAULT_PING_INTERVAL_MS: f64 = 20_000.0;

    /// How often an opening socket's state is looked at, in ms.
    const OPEN_LOOK_MS: u32 = 25;

    /// Shortest ping period taken from a server, in ms.
    const MIN_PING_INTERVAL_MS: f64 = 1_000.0;

    /// How one connection's life ended.
    enum End {
        /// It never opened.
        Refused,
        /// It opened, but ended before a single frame came.
        Silent,
        /// (HTTP fallback) A WebSocket opens again: carry on over it.
        Upgrade(WebSocket),
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
        // WebSocket attempts in a row that ended before a single frame: a
        // network that does not let WebSockets through looks like this.
        let mut silent = 0;
        // A WebSocket the fallback found open again.
        let mut upgraded: Option<WebSocket> = None;
        loop {
            let mut link = Link {
                state,
                expires_at: &mut expires_at,
                rooms: &rooms,
                queue: &mut queue,
                backoff: &mut backoff,
                wake: &mut wake,
            };
            let over_http = upgraded.is_none() && silent >= SWITCH_AFTER;
            let end = match upgraded.take() {
                Some(ws) => serve(ws, &mut link).await,
                None if over_http => http::serve(&mut link).await,
                None => match ws_url().and_then(|url| WebSocket::open(&url).ok()) {
                    Some(ws) => serve(ws, &mut link).await,
                    None => End::Refused,
                },
            };
            match (&end, over_http) {
                (End::Upgrade(_), _) => {}
                // The fallback itself failed: try WebSockets again.
                (End::Refused, true) => silent = 0,
                (End::Refused | End::Silent, false) => silent += 1,
                (_, false) => silent = 0,
                (_, true) => {}
            }
            match end {
                End::Upgrade(ws) => {
                    upgraded = Some(ws);
                    continue;
                }
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
                End::Closed(_) | End::Silent => {}
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
    async fn serve(ws: WebSocket, link: &mut Link<'_>) -> End {
        let state = link.state;
        if !opened(&ws).await {
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
        let mut heard_any = false;
        let mut ping_at = now();
        state.over_http.set(false);
        // Closed before a single frame: the attempt counts as failed.
        let ended = |code: u16, heard_any: bool| {
            if heard_any {
                End::Closed(code)
            } else {
                End::Silent
            }
        };
        loop {
            futures::select! {
                frame = stream.next().fuse() => {
                    heard_at = now();
                    match frame {
                        Some(Ok(Message::Text(text))) => {
                            heard_any = true;
                            match serde_json::from_str::<ServerMessage>(&text) {
                                Ok(ServerMessage::Pong { ping_interval_ms }) => {
                                    interval_ms = (ping_interval_ms as f64).max(MIN_PING_INTERVAL_MS);
                                }
                                Ok(msg) => state.apply(msg),
                                Err(e) => leptos::logging::warn!("unreadable frame from the server: {e}"),
                            }
                        }
                        Some(Ok(Message::Bytes(_))) => heard_any = true,
                        Some(Err(WebSocketError::ConnectionClose(close))) => {
                            return if close.code == CLOSE_TOKEN_EXPIRED {
                                End::Closed(close.code)
                            } else {
                                ended(close.code, heard_any)
                            };
                        }
                        Some(Err(_)) => {}
                        None => return ended(1006, heard_any),
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
                    if t >= renew_at && renew(link, &mut renew_at).await {
                        return End::Renewed;
                    }
                }
            }
        }
    }

    /// Whether `ws` opens within the connect timeout. Its state is looked at
    /// rather than waited on: a socket can close without an `error` event
    /// (a proxy, a browser extension), which gloo-net's readiness would
    /// never report.
    async fn opened(ws: &WebSocket) -> bool {
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

    /// Renews the session; true once renewed (the caller reconnects quietly
    /// with the fresh cookie before the old token's `exp` closes it;
    /// rejoining fills any gap from history). On failure, tries again in
    /// two minutes: the connection lives until `exp` anyway.
    async fn renew(link: &mut Link<'_>, renew_at: &mut f64) -> bool {
        match renew_session().await {
            Ok(session) => {
                *link.expires_at = session.expires_at;
                link.state.session.set(Some(session));
                true
            }
            Err(e) => {
                leptos::logging::warn!("cannot renew the session yet: {e}");
                *renew_at = js_sys::Date::now() + 120_000.0;
                false
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

    /// The HTTP fallback: the connection's frames come down an SSE stream
    /// (`GET /api/chat/stream`), the client's go up as posts
    /// (`POST /api/chat/send`). Every half minute, and whenever the browser
    /// says the network changed, it tries a WebSocket again, and moves back
    /// to one as soon as it opens (rejoining fills any gap from history; the
    /// page drops what it already has).
    mod http {
        use futures::future::FusedFuture;
        use futures::{FutureExt, StreamExt};
        use gloo_net::eventsource::futures::EventSource;
        use gloo_timers::future::IntervalStream;
        use leptos::prelude::Set;

        use super::super::super::retry::{timeout, CONNECT_TIMEOUT};
        use super::super::super::ConnState;
        use super::{
            opened, renew, renewal_delay, ws_url, End, Link, MIN_PING_INTERVAL_MS, TICK_MS,
        };
        use crate::protocol::{
            ClientMessage, SendBody, ServerMessage, CHAT_SEND_PATH, CHAT_STREAM_PATH,
        };
        use gloo_net::websocket::futures::WebSocket;

        /// How often a WebSocket is tried again while on the fallback, in ms.
        const PROBE_EVERY_MS: f64 = 30_000.0;

        /// Runs the fallback until it ends (or a WebSocket opens again).
        pub async fn serve(link: &mut Link<'_>) -> End {
            let state = link.state;
            let Ok(mut source) = EventSource::new(CHAT_STREAM_PATH) else {
                return End::Refused;
            };
            let Ok(mut frames) = source.subscribe("message") else {
                return End::Refused;
            };
            // The stream starts with the connection's name.
            let first = timeout(CONNECT_TIMEOUT, frames.next()).await;
            let Some(Some(Ok((_, first)))) = first else {
                return End::Refused;
            };
            let hello = first
                .data()
                .as_string()
                .and_then(|text| serde_json::from_str::<ServerMessage>(&text).ok());
            let Some(ServerMessage::Hello {
                conn,
                ping_interval_ms,
            }) = hello
            else {
                return End::Refused;
            };
            link.backoff.reset();
            state.awaiting.set(false);
            state.over_http.set(true);
            state.status.set(ConnState::Live);
            let rejoin: Vec<ClientMessage> = super::super::lock(link.rooms)
                .iter()
                .map(|room| ClientMessage::Join { room: room.clone() })
                .collect();
            if !rejoin.is_empty() && !post(&conn, rejoin).await {
                return End::Closed(1006);
            }

            let now = js_sys::Date::now;
            let mut tick = IntervalStream::new(TICK_MS).fuse();
            let interval_ms = (ping_interval_ms as f64).max(MIN_PING_INTERVAL_MS);
            let mut renew_at = now() + renewal_delay(*link.expires_at).as_millis() as f64;
            let mut heard_at = now();
            let mut probe_at = now() + PROBE_EVERY_MS;
            let mut probe = futures::future::Fuse::terminated();
            loop {
                futures::select! {
                    frame = frames.next().fuse() => {
                        heard_at = now();
                        let Some(Ok((_, frame))) = frame else { return End::Closed(1006) };
                        match frame.data().as_string().map(|t| serde_json::from_str::<ServerMessage>(&t)) {
                            Some(Ok(ServerMessage::Closed { code, .. })) => return End::Closed(code),
                            Some(Ok(ServerMessage::Pong { .. } | ServerMessage::Hello { .. })) => {}
                            Some(Ok(msg)) => state.apply(msg),
                            _ => leptos::logging::warn!("unreadable frame from the server"),
                        }
                    }
                    // Offline ends the connection; another sign that the
                    // network changed is the moment to try a WebSocket.
                    offline = link.wake.any().fuse() => {
                        if offline {
                            return End::Closed(1006);
                        }
                        if probe.is_terminated() {
                            probe = open_websocket().boxed_local().fuse();
                        }
                    }
                    msg = link.queue.next() => {
                        let Some(msg) = msg else { return End::Closed(1000) };
                        if !post(&conn, vec![msg]).await {
                            // The connection is gone (or the server is): start over.
                            return End::Closed(1006);
                        }
                    }
                    ws = probe => {
                        if let Some(ws) = ws {
                            source.close();
                            return End::Upgrade(ws);
                        }
                    }
                    _ = tick.next() => {
                        let t = now();
                        if t - heard_at > 2.0 * interval_ms {
                            return End::Closed(1006);
                        }
                        if t >= probe_at && probe.is_terminated() {
                            probe_at = t + PROBE_EVERY_MS;
                            probe = open_websocket().boxed_local().fuse();
                        }
                        if t >= renew_at && renew(link, &mut renew_at).await {
                            return End::Renewed;
                        }
                    }
                }
            }
        }

        /// A WebSocket that opened, if one does now.
        async fn open_websocket() -> Option<WebSocket> {
            let ws = WebSocket::open(&ws_url()?).ok()?;
            opened(&ws).await.then_some(ws)
        }

        /// Posts `frames` for connection `conn`; false if the server did not
        /// take them (the connection is gone, or the server is).
        async fn post(conn: &str, frames: Vec<ClientMessage>) -> bool {
            let body = SendBody {
                conn: conn.to_string(),
                frames,
            };
            let Ok(request) = gloo_net::http::Request::post(CHAT_SEND_PATH).json(&body) else {
                return false;
            };
            match request.send().await {
                Ok(res) if res.ok() => true,
                // Refused for its content or rate: the page says why.
                Ok(res) if matches!(res.status(), 400 | 413 | 429) => true,
                _ => false,
            }
        }
    }
}
