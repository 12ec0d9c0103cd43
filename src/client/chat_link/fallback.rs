//! The HTTP fallback: the connection's frames come down an SSE stream
//! (`GET /api/chat/stream`), the client's go up as posts
//! (`POST /api/chat/send`). Every half minute, and whenever the browser
//! says the network changed, it tries a WebSocket again, and moves back
//! to one as soon as it opens (rejoining fills any gap from history; the
//! page drops what it already has).
//!
//! The tabs of a browser share one stream: over HTTP/1.1 a browser opens
//! at most six connections to a host, and a stream per tab would leave a
//! seventh tab unable to load. A tab that needs the fallback asks the
//! others (on a `BroadcastChannel`) for a stream of its user's; the tab
//! holding one has the server attach a connection for the asking tab to
//! it, and relays that connection's frames. Each tab keeps a connection
//! of its own (its rooms, its errors) and posts for it itself. When the
//! holder goes, its stream and the connections on it end; the tabs hear
//! so (or hear nothing) and connect again, one of them as the new holder.

use std::rc::Rc;

use futures::future::FusedFuture;
use futures::{FutureExt, StreamExt};
use gloo_net::eventsource::futures::EventSource;
use gloo_net::websocket::futures::WebSocket;
use gloo_timers::future::IntervalStream;
use leptos::prelude::{window_event_listener_untyped, WithUntracked};
use serde::{Deserialize, Serialize};

use super::super::liveness::Liveness;
use super::super::retry::{timeout, CONNECT_TIMEOUT};
use super::super::tabs::{request_lock, tab_id, Ask, Channel, Release};
use super::browser::{End, Link};
use super::websocket::{self, opened, TICK_MS};
use super::Command;
use crate::protocol::{
    ClientMessage, SendBody, ServerMessage, TabFrame, CHAT_SEND_PATH, CHAT_STREAM_PATH,
    MAX_FRAMES_PER_SEND, TAB_EVENT,
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
    let user = link
        .core
        .signals
        .session
        .with_untracked(|s| s.as_ref().map(|s| s.user_id.clone()));
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
                    Some(Share::Here { user, stream }) if user == tabs.user => break stream,
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
async fn hold(link: &mut Link<'_>, mut tabs: Option<&mut Tabs>, _held: Option<Release>) -> End {
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

    let mut tick = IntervalStream::new(TICK_MS).fuse();
    let mut alive = Liveness::new(ping_interval_ms as f64);
    alive.set_interval(ping_interval_ms as f64);
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
                alive.heard();
                let Some(Ok((_, frame))) = frame else { break End::Closed(1006) };
                let msg = frame.data().as_string().and_then(|t| serde_json::from_str(&t).ok());
                if let Some(end) = apply(link, msg) {
                    break end;
                }
            }
            // Another tab's frames: for it to pick up.
            frame = tab_frames.next().fuse() => {
                alive.heard();
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
                if let Some(end) = act(happened, link, &mut probe) {
                    break end;
                }
            }
            _ = tick.next() => {
                if alive.dead() {
                    break End::Closed(1006);
                }
                probe.when_due(js_sys::Date::now());
                link.core.tick();
                if link.core.renewal_due() && link.core.renew().await {
                    break End::Renewed;
                }
            }
        }
        if !flush(link, &conn).await {
            break End::Closed(1006);
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

    let mut tick = IntervalStream::new(TICK_MS).fuse();
    let mut alive = Liveness::new(ping_interval_ms as f64);
    alive.set_interval(ping_interval_ms as f64);
    let mut ping_at = js_sys::Date::now() + PING_EVERY_INTERVALS * alive.interval_ms();
    let mut probe = Probe::new();
    loop {
        futures::select! {
            next = next_for(tabs, &stream, &tab).fuse() => match next {
                Ok(Some(msg)) => {
                    alive.heard();
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
                if let Some(end) = act(happened, link, &mut probe) {
                    return end;
                }
            }
            _ = tick.next() => {
                let t = js_sys::Date::now();
                if alive.dead() {
                    return End::Closed(1006);
                }
                // Keeps the connection: the server ends an attached
                // one whose tab stops posting. (The session is the
                // holder's to renew: this connection lives on its
                // stream.)
                if t >= ping_at {
                    ping_at = t + PING_EVERY_INTERVALS * alive.interval_ms();
                    if !post(&conn, vec![ClientMessage::Ping]).await {
                        return End::Closed(1006);
                    }
                }
                probe.when_due(t);
                link.core.tick();
            }
        }
        if !flush(link, &conn).await {
            return End::Closed(1006);
        }
    }
}

/// Posts what the connection's core queued; false if the server did not
/// take it.
async fn flush(link: &mut Link<'_>, conn: &str) -> bool {
    flush_all(conn, link.core.outgoing()).await
}

/// What happened around a fallback connection, whether it holds the
/// stream or follows it.
enum Around {
    /// The browser went offline.
    Offline,
    /// Another sign that the network changed.
    Changed,
    /// A command of the page's.
    Command(Command),
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
        command = link.queue.next() => command.map_or(Around::Done, Around::Command),
        ws = probe.opened() => Around::Probed(ws),
    }
}

/// Acts on what happened: offline ends the connection, another sign
/// tries a WebSocket, a command goes to the core (its frames are posted
/// after), an open WebSocket replaces the connection. `Some` when the
/// connection ends.
fn act(happened: Around, link: &mut Link<'_>, probe: &mut Probe) -> Option<End> {
    match happened {
        Around::Offline => Some(End::Closed(1006)),
        Around::Changed => {
            probe.now();
            None
        }
        Around::Command(command) => {
            link.core.command(command);
            None
        }
        Around::Done => Some(End::Closed(1000)),
        Around::Probed(ws) => ws.map(End::Upgrade),
    }
}

/// The next frame for `tab` on `stream`, from the holder's relays:
/// `Ok(None)` for anything else, `Err(upgraded)` when the holder
/// lets the stream go (or the channel closes).
async fn next_for(tabs: &mut Tabs, stream: &str, tab: &str) -> Result<Option<ServerMessage>, bool> {
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

/// The connection `conn` is up: says so and rejoins the rooms (in one
/// post, so that they are acted on in order); false if the rejoin could
/// not be posted.
async fn went_live(link: &mut Link<'_>, conn: &str) -> bool {
    link.backoff.reset();
    let rejoins = link.core.opened(true);
    flush_all(conn, rejoins).await
}

/// Posts `frames`, at most [`MAX_FRAMES_PER_SEND`] to a post.
async fn flush_all(conn: &str, frames: Vec<ClientMessage>) -> bool {
    for post_of in frames.chunks(MAX_FRAMES_PER_SEND) {
        if !post(conn, post_of.to_vec()).await {
            return false;
        }
    }
    true
}

/// Applies a frame from the server; `Some` when it ends the
/// connection.
fn apply(link: &mut Link<'_>, msg: Option<ServerMessage>) -> Option<End> {
    match msg {
        Some(ServerMessage::Closed { code, .. }) => return Some(End::Closed(code)),
        Some(msg) => link.core.receive(msg),
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
    attempt: futures::future::Fuse<futures::future::LocalBoxFuture<'static, Option<WebSocket>>>,
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
    ) -> &mut futures::future::Fuse<futures::future::LocalBoxFuture<'static, Option<WebSocket>>>
    {
        &mut self.attempt
    }
}

/// A WebSocket that opened, if one does now.
async fn open_websocket() -> Option<WebSocket> {
    let ws = websocket::open()?;
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
