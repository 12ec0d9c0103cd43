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
            since: None,
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
            client_id: new_client_id(),
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

/// A fresh `client_id` for a message (random; on the server, never used).
fn new_client_id() -> String {
    #[cfg(feature = "hydrate")]
    {
        let part = || (js_sys::Math::random() * 4_294_967_296.0) as u32;
        format!("{:08x}{:08x}{:08x}", part(), part(), part())
    }
    #[cfg(not(feature = "hydrate"))]
    String::new()
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
            if send(&mut sink, &ClientMessage::Join { room, since: None })
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
    ///
    /// The tabs of a browser share one stream: over HTTP/1.1 a browser opens
    /// at most six connections to a host, and a stream per tab would leave a
    /// seventh tab unable to load. A tab that needs the fallback asks the
    /// others (on a `BroadcastChannel`) for a stream of its user's; the tab
    /// holding one has the server attach a connection for the asking tab to
    /// it, and relays that connection's frames. Each tab keeps a connection
    /// of its own (its rooms, its errors) and posts for it itself. When the
    /// holder goes, its stream and the connections on it end; the tabs hear
    /// so (or hear nothing) and connect again, one of them as the new holder.
    mod http {
        use std::rc::Rc;

        use futures::future::FusedFuture;
        use futures::{FutureExt, StreamExt};
        use gloo_net::eventsource::futures::EventSource;
        use gloo_net::websocket::futures::WebSocket;
        use gloo_timers::future::IntervalStream;
        use leptos::prelude::{window_event_listener_untyped, GetUntracked, Set};
        use serde::{Deserialize, Serialize};

        use super::super::super::retry::{timeout, CONNECT_TIMEOUT};
        use super::super::super::tabs::{request_lock, tab_id, Ask, Channel, Release};
        use super::super::super::ConnState;
        use super::{
            opened, renew, renewal_delay, ws_url, End, Link, MIN_PING_INTERVAL_MS, TICK_MS,
        };
        use crate::protocol::{
            ClientMessage, SendBody, ServerMessage, TabFrame, CHAT_SEND_PATH, CHAT_STREAM_PATH,
            TAB_EVENT,
        };

        /// How often a WebSocket is tried again while on the fallback, in ms.
        const PROBE_EVERY_MS: f64 = 30_000.0;

        /// How long a tab waits for another to offer its stream.
        const ANSWER: std::time::Duration = std::time::Duration::from_millis(300);

        /// An attached tab posts a ping every this many ping intervals: the
        /// server ends its connection after three without a post.
        const PING_EVERY_INTERVALS: f64 = 1.5;

        /// The channel the tabs on the fallback share streams over.
        const CHANNEL: &str = "pulse:chat";

        /// The Web Lock of the tab that holds the stream.
        const HOLDER_LOCK: &str = "pulse:chat-holder";

        /// What the tabs on the fallback tell each other.
        #[derive(Serialize, Deserialize)]
        enum Share {
            /// A tab of `user` looks for a stream to share.
            Where { user: String },
            /// The holder of `stream`, one of `user`'s, offers it.
            Here { user: String, stream: String },
            /// A tab of `user` asks the holder of `stream` to attach it as `tab`.
            Attach {
                user: String,
                stream: String,
                tab: String,
            },
            /// A frame `stream` carried for an attached tab (a [`TabFrame`]).
            Frame { stream: String, data: String },
            /// The holder lets `stream` go (`upgraded`: it has a WebSocket).
            Gone { stream: String, upgraded: bool },
        }

        /// The tabs of this browser on the fallback, as this tab sees them.
        struct Tabs {
            /// The signed-in user (tabs only share their own user's stream).
            user: String,
            /// To the other tabs.
            channel: Rc<Channel<Share>>,
            /// From the other tabs.
            shares: futures::channel::mpsc::UnboundedReceiver<Share>,
        }

        /// Runs the fallback until it ends (or a WebSocket opens again): on
        /// another tab's stream if one offers it, else on a stream of this
        /// tab's, offered to the others.
        pub async fn serve(link: &mut Link<'_>) -> End {
            let user = link.state.session.get_untracked().map(|s| s.user_id);
            let tabs = user.and_then(|user| {
                let (channel, shares) = Channel::open(CHANNEL)?;
                Some(Tabs {
                    user,
                    channel: Rc::new(channel),
                    shares,
                })
            });
            let Some(mut tabs) = tabs else {
                return hold(link, None, None).await;
            };
            // Find the tab that holds this user's stream, or become it: of
            // tabs that look at once (the holder just left), the one that
            // gets the lock holds the stream and the others follow it.
            let give_up = js_sys::Date::now() + CONNECT_TIMEOUT.as_millis() as f64;
            loop {
                tabs.channel.post(&Share::Where {
                    user: tabs.user.clone(),
                });
                let offered = timeout(ANSWER, async {
                    loop {
                        match tabs.shares.next().await {
                            Some(Share::Here { user, stream }) if user == tabs.user => {
                                break stream
                            }
                            Some(_) => {}
                            None => futures::future::pending::<()>().await,
                        }
                    }
                })
                .await;
                if let Some(stream) = offered {
                    return follow(link, &mut tabs, stream).await;
                }
                let Some(turn) = request_lock(HOLDER_LOCK, Ask::IfFree) else {
                    // No Web Locks: hold a stream, shared with whoever asks.
                    return hold(link, Some(&mut tabs), None).await;
                };
                if let Ok(held) = turn.granted.await {
                    return hold(link, Some(&mut tabs), Some(held)).await;
                }
                // Another tab is opening the stream: ask it, unless it
                // takes too long (then this tab holds a stream of its own).
                if js_sys::Date::now() > give_up {
                    return hold(link, None, None).await;
                }
            }
        }

        /// Holds a stream of this tab's, and shares it with `tabs`; `_held`
        /// is the holder's lock, let go when this ends.
        async fn hold(
            link: &mut Link<'_>,
            mut tabs: Option<&mut Tabs>,
            _held: Option<Release>,
        ) -> End {
            let Ok(mut source) = EventSource::new(CHAT_STREAM_PATH) else {
                return End::Refused;
            };
            let (Ok(mut frames), Ok(mut tab_frames)) =
                (source.subscribe("message"), source.subscribe(TAB_EVENT))
            else {
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
            if !went_live(link, &conn).await {
                return End::Closed(1006);
            }
            // The other tabs learn when this stream goes: when this ends,
            // and when the page goes away (which runs no destructor).
            let _gone = tabs.as_ref().map(|tabs| Gone::new(&tabs.channel, &conn));

            let now = js_sys::Date::now;
            let mut tick = IntervalStream::new(TICK_MS).fuse();
            let interval_ms = (ping_interval_ms as f64).max(MIN_PING_INTERVAL_MS);
            let mut renew_at = now() + renewal_delay(*link.expires_at).as_millis() as f64;
            let mut heard_at = now();
            let mut probe = Probe::new();
            let end = loop {
                let shared = async {
                    match tabs.as_mut() {
                        Some(tabs) => tabs.shares.next().await,
                        None => futures::future::pending().await,
                    }
                };
                futures::select! {
                    frame = frames.next().fuse() => {
                        heard_at = now();
                        let Some(Ok((_, frame))) = frame else { break End::Closed(1006) };
                        let msg = frame.data().as_string().and_then(|t| serde_json::from_str(&t).ok());
                        if let Some(end) = apply(link, msg) {
                            break end;
                        }
                    }
                    // Another tab's frames: for it to pick up.
                    frame = tab_frames.next().fuse() => {
                        heard_at = now();
                        let Some(Ok((_, frame))) = frame else { break End::Closed(1006) };
                        if let (Some(tabs), Some(data)) = (&tabs, frame.data().as_string()) {
                            tabs.channel.post(&Share::Frame { stream: conn.clone(), data });
                        }
                    }
                    share = shared.fuse() => match (share, &tabs) {
                        (Some(Share::Where { user }), Some(tabs)) if user == tabs.user => {
                            tabs.channel.post(&Share::Here { user, stream: conn.clone() });
                        }
                        (Some(Share::Attach { user, stream, tab }), Some(tabs))
                            if user == tabs.user && stream == conn =>
                        {
                            // The server answers down this stream, tagged
                            // for the tab; a refused post means the stream
                            // is gone, which the stream itself shows.
                            post(&conn, vec![ClientMessage::Attach { tab }]).await;
                        }
                        _ => {}
                    },
                    happened = around(link, &mut probe).fuse() => {
                        if let Some(end) = act(happened, &conn, &mut probe).await {
                            break end;
                        }
                    }
                    _ = tick.next() => {
                        let t = now();
                        if t - heard_at > 2.0 * interval_ms {
                            break End::Closed(1006);
                        }
                        probe.when_due(t);
                        if t >= renew_at && renew(link, &mut renew_at).await {
                            break End::Renewed;
                        }
                    }
                }
            };
            if let (Some(gone), End::Upgrade(_)) = (&_gone, &end) {
                gone.upgraded();
            }
            source.close();
            end
        }

        /// Runs a connection attached to the stream another tab holds.
        async fn follow(link: &mut Link<'_>, tabs: &mut Tabs, stream: String) -> End {
            let tab = tab_id();
            tabs.channel.post(&Share::Attach {
                user: tabs.user.clone(),
                stream: stream.clone(),
                tab: tab.clone(),
            });
            // Until its hello comes, through the holder.
            let hello = timeout(CONNECT_TIMEOUT, async {
                loop {
                    match next_for(tabs, &stream, &tab).await {
                        Ok(Some(msg)) => break Some(msg),
                        Ok(None) => {}
                        Err(_) => break None,
                    }
                }
            })
            .await
            .flatten();
            let (conn, ping_interval_ms) = match hello {
                Some(ServerMessage::Hello {
                    conn,
                    ping_interval_ms,
                }) => (conn, ping_interval_ms),
                Some(ServerMessage::Closed { code, .. }) => return End::Closed(code),
                // The holder is gone or stuck: connect again (maybe as the
                // holder).
                _ => return End::Closed(1006),
            };
            if !went_live(link, &conn).await {
                return End::Closed(1006);
            }

            let now = js_sys::Date::now;
            let mut tick = IntervalStream::new(TICK_MS).fuse();
            let interval_ms = (ping_interval_ms as f64).max(MIN_PING_INTERVAL_MS);
            let mut heard_at = now();
            let mut ping_at = now() + PING_EVERY_INTERVALS * interval_ms;
            let mut probe = Probe::new();
            loop {
                futures::select! {
                    next = next_for(tabs, &stream, &tab).fuse() => match next {
                        Ok(Some(msg)) => {
                            heard_at = now();
                            if let Some(end) = apply(link, Some(msg)) {
                                return end;
                            }
                        }
                        Ok(None) => {}
                        // The holder let the stream go: if for a WebSocket,
                        // try one at once; else connect again.
                        Err(true) => return End::Refused,
                        Err(false) => return End::Closed(1006),
                    },
                    happened = around(link, &mut probe).fuse() => {
                        if let Some(end) = act(happened, &conn, &mut probe).await {
                            return end;
                        }
                    }
                    _ = tick.next() => {
                        let t = now();
                        if t - heard_at > 2.0 * interval_ms {
                            return End::Closed(1006);
                        }
                        // Keeps the connection: the server ends an attached
                        // one whose tab stops posting. (The session is the
                        // holder's to renew: this connection lives on its
                        // stream.)
                        if t >= ping_at {
                            ping_at = t + PING_EVERY_INTERVALS * interval_ms;
                            if !post(&conn, vec![ClientMessage::Ping]).await {
                                return End::Closed(1006);
                            }
                        }
                        probe.when_due(t);
                    }
                }
            }
        }

        /// What happened around a fallback connection, whether it holds the
        /// stream or follows it.
        enum Around {
            /// The browser went offline.
            Offline,
            /// Another sign that the network changed.
            Changed,
            /// A frame to post.
            Send(ClientMessage),
            /// The page closed the connection.
            Done,
            /// The WebSocket tried: open, or not.
            Probed(Option<WebSocket>),
        }

        /// Waits for what a connection waits on besides its frames. Only
        /// waits (dropping it loses nothing): what happened is acted on by
        /// [`act`].
        async fn around(link: &mut Link<'_>, probe: &mut Probe) -> Around {
            futures::select! {
                offline = link.wake.any().fuse() => {
                    if offline { Around::Offline } else { Around::Changed }
                }
                msg = link.queue.next() => msg.map_or(Around::Done, Around::Send),
                ws = probe.opened() => Around::Probed(ws),
            }
        }

        /// Acts on what happened: offline ends the connection, another sign
        /// tries a WebSocket, a frame is posted (the connection ends if the
        /// server does not take it), an open WebSocket replaces the
        /// connection. `Some` when the connection ends.
        async fn act(happened: Around, conn: &str, probe: &mut Probe) -> Option<End> {
            match happened {
                Around::Offline => Some(End::Closed(1006)),
                Around::Changed => {
                    probe.now();
                    None
                }
                Around::Send(msg) => (!post(conn, vec![msg]).await).then_some(End::Closed(1006)),
                Around::Done => Some(End::Closed(1000)),
                Around::Probed(ws) => ws.map(End::Upgrade),
            }
        }

        /// The next frame for `tab` on `stream`, from the holder's relays:
        /// `Ok(None)` for anything else, `Err(upgraded)` when the holder
        /// lets the stream go (or the channel closes).
        async fn next_for(
            tabs: &mut Tabs,
            stream: &str,
            tab: &str,
        ) -> Result<Option<ServerMessage>, bool> {
            match tabs.shares.next().await {
                Some(Share::Frame { stream: s, data }) if s == stream => {
                    Ok(serde_json::from_str::<TabFrame>(&data)
                        .ok()
                        .filter(|f| f.tab == tab)
                        .map(|f| f.msg))
                }
                Some(Share::Gone {
                    stream: s,
                    upgraded,
                }) if s == stream => Err(upgraded),
                Some(_) => Ok(None),
                None => Err(false),
            }
        }

        /// The connection `conn` is up: says so and rejoins the rooms; false
        /// if the rejoin could not be posted.
        async fn went_live(link: &mut Link<'_>, conn: &str) -> bool {
            let state = link.state;
            link.backoff.reset();
            state.awaiting.set(false);
            state.over_http.set(true);
            state.status.set(ConnState::Live);
            let rejoin: Vec<ClientMessage> = super::super::lock(link.rooms)
                .iter()
                .map(|room| ClientMessage::Join {
                    room: room.clone(),
                    since: None,
                })
                .collect();
            rejoin.is_empty() || post(conn, rejoin).await
        }

        /// Applies a frame from the server; `Some` when it ends the
        /// connection.
        fn apply(link: &Link<'_>, msg: Option<ServerMessage>) -> Option<End> {
            match msg {
                Some(ServerMessage::Closed { code, .. }) => return Some(End::Closed(code)),
                Some(ServerMessage::Pong { .. } | ServerMessage::Hello { .. }) => {}
                Some(msg) => link.state.apply(msg),
                None => leptos::logging::warn!("unreadable frame from the server"),
            }
            None
        }

        /// Tells the other tabs that a stream is gone: on drop, and when
        /// the page goes away.
        struct Gone {
            /// To the other tabs.
            channel: Rc<Channel<Share>>,
            /// The stream.
            stream: String,
            /// Listens for the page going away.
            listener: Option<leptos::prelude::WindowListenerHandle>,
            /// Set when the holder moves to a WebSocket.
            upgraded: std::cell::Cell<bool>,
        }

        impl Gone {
            fn new(channel: &Rc<Channel<Share>>, stream: &str) -> Gone {
                let listener = {
                    let (channel, stream) = (channel.clone(), stream.to_string());
                    window_event_listener_untyped("pagehide", move |_| {
                        channel.post(&Share::Gone {
                            stream: stream.clone(),
                            upgraded: false,
                        });
                    })
                };
                Gone {
                    channel: channel.clone(),
                    stream: stream.to_string(),
                    listener: Some(listener),
                    upgraded: std::cell::Cell::new(false),
                }
            }

            fn upgraded(&self) {
                self.upgraded.set(true);
            }
        }

        impl Drop for Gone {
            fn drop(&mut self) {
                if let Some(listener) = self.listener.take() {
                    listener.remove();
                }
                self.channel.post(&Share::Gone {
                    stream: self.stream.clone(),
                    upgraded: self.upgraded.get(),
                });
            }
        }

        /// Tries a WebSocket again now and then while on the fallback.
        struct Probe {
            /// When the next try is due (ms since the epoch).
            at: f64,
            /// The try under way, if any.
            attempt:
                futures::future::Fuse<futures::future::LocalBoxFuture<'static, Option<WebSocket>>>,
        }

        impl Probe {
            fn new() -> Probe {
                Probe {
                    at: js_sys::Date::now() + PROBE_EVERY_MS,
                    attempt: futures::future::Fuse::terminated(),
                }
            }

            /// Tries now (unless a try is under way).
            fn now(&mut self) {
                if self.attempt.is_terminated() {
                    self.at = js_sys::Date::now() + PROBE_EVERY_MS;
                    self.attempt = open_websocket().boxed_local().fuse();
                }
            }

            /// Tries if one is due at `t`.
            fn when_due(&mut self, t: f64) {
                if t >= self.at {
                    self.now();
                }
            }

            /// The try's outcome, when it has one.
            fn opened(
                &mut self,
            ) -> &mut futures::future::Fuse<
                futures::future::LocalBoxFuture<'static, Option<WebSocket>>,
            > {
                &mut self.attempt
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
