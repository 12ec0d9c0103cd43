//! The browser's WebSocket to `/ws` (feature `hydrate`): keeps itself
//! connected, rejoins its rooms, renews the session before it expires, and
//! feeds every server frame into [`ChatState`].

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use leptos::prelude::*;
use leptos::task::spawn_local;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::JsCast;
use web_sys::{CloseEvent, Event, MessageEvent, WebSocket};

use super::{ChatState, ConnStatus};
use crate::backoff;
use crate::protocol::{ClientMessage, ServerMessage, CLOSE_TOKEN_EXPIRED, WS_PATH};
use crate::session::{current_session, renew_session};

/// Renew the session this long before it expires.
const RENEW_BEFORE_S: u64 = 300;

type Listener = Closure<dyn FnMut(Event)>;

/// One open (or opening) socket with the callbacks it holds.
struct Open {
    ws: WebSocket,
    _listeners: [Listener; 3],
}

impl Open {
    /// Closes the socket without running our close handler.
    fn discard(self) {
        self.ws.set_onclose(None);
        self.ws.set_onmessage(None);
        self.ws.set_onopen(None);
        let _ = self.ws.close();
    }
}

struct Inner {
    /// The current socket.
    open: RefCell<Option<Open>>,
    /// Rooms to be in; joined again after every reconnect.
    rooms: RefCell<Vec<String>>,
    /// Failed attempts in a row, for the backoff.
    attempts: Cell<u32>,
    /// Pending reconnect.
    retry: Cell<Option<TimeoutHandle>>,
    /// Ticks the "Reconnecting in N s" countdown.
    countdown: Cell<Option<IntervalHandle>>,
    /// Pending session renewal.
    renew: Cell<Option<TimeoutHandle>>,
    /// Set by `close`: stop everything.
    closed: Cell<bool>,
    /// Signals the pages render.
    state: ChatState,
}

/// A self-healing chat connection; closed by [`Socket::close`].
pub struct Socket(Rc<Inner>);

impl Socket {
    /// Connects and schedules the renewal of a session ending at `expires_at`
    /// (seconds since the epoch).
    pub fn open(state: ChatState, expires_at: u64) -> Socket {
        let inner = Rc::new(Inner {
            open: RefCell::new(None),
            rooms: RefCell::new(Vec::new()),
            attempts: Cell::new(0),
            retry: Cell::new(None),
            countdown: Cell::new(None),
            renew: Cell::new(None),
            closed: Cell::new(false),
            state,
        });
        connect(&inner);
        schedule_renewal(&inner, expires_at);
        Socket(inner)
    }

    /// Joins `room` now (if connected) and after every reconnect.
    pub fn join(&self, room: &str) {
        {
            let mut rooms = self.0.rooms.borrow_mut();
            if !rooms.iter().any(|r| r == room) {
                rooms.push(room.to_string());
            }
        }
        send(
            &self.0,
            &ClientMessage::Join {
                room: room.to_string(),
            },
        );
    }

    /// Leaves `room`.
    pub fn leave(&self, room: &str) {
        self.0.rooms.borrow_mut().retain(|r| r != room);
        send(
            &self.0,
            &ClientMessage::Leave {
                room: room.to_string(),
            },
        );
    }

    /// Says `text` in `room`; false if the socket is not open.
    pub fn say(&self, room: &str, text: &str) -> bool {
        send(
            &self.0,
            &ClientMessage::Message {
                room: room.to_string(),
                text: text.to_string(),
            },
        )
    }

    /// Closes the socket and cancels every timer.
    pub fn close(&self) {
        let inner = &self.0;
        inner.closed.set(true);
        for handle in [inner.retry.take(), inner.renew.take()]
            .into_iter()
            .flatten()
        {
            handle.clear();
        }
        if let Some(handle) = inner.countdown.take() {
            handle.clear();
        }
        if let Some(open) = inner.open.borrow_mut().take() {
            open.discard();
        }
    }
}

fn send(inner: &Inner, msg: &ClientMessage) -> bool {
    let open = inner.open.borrow();
    let Some(open) = open
        .as_ref()
        .filter(|o| o.ws.ready_state() == WebSocket::OPEN)
    else {
        return false;
    };
    serde_json::to_string(msg)
        .ok()
        .is_some_and(|json| open.ws.send_with_str(&json).is_ok())
}

fn ws_url() -> Option<String> {
    let location = window().location();
    let scheme = match location.protocol().ok()?.as_str() {
        "https:" => "wss",
        _ => "ws",
    };
    Some(format!("{scheme}://{}{WS_PATH}", location.host().ok()?))
}

fn connect(inner: &Rc<Inner>) {
    if inner.closed.get() {
        return;
    }
    let Some(ws) = ws_url().and_then(|url| WebSocket::new(&url).ok()) else {
        schedule_reconnect(inner);
        return;
    };
    // Whether `open` fired: a socket that closes before that never got in.
    let opened = Rc::new(Cell::new(false));

    let weak = Rc::downgrade(inner);
    let was_opened = opened.clone();
    let on_open: Listener = Closure::new(move |_: Event| {
        let Some(inner) = weak.upgrade() else { return };
        was_opened.set(true);
        inner.attempts.set(0);
        inner.state.status.set(ConnStatus::Connected);
        let rooms = inner.rooms.borrow().clone();
        for room in rooms {
            send(&inner, &ClientMessage::Join { room });
        }
    });
    let weak = Rc::downgrade(inner);
    let on_message: Listener = Closure::new(move |e: Event| {
        let (Some(inner), Ok(msg)) = (weak.upgrade(), e.dyn_into::<MessageEvent>()) else {
            return;
        };
        let Some(text) = msg.data().as_string() else {
            return;
        };
        match serde_json::from_str::<ServerMessage>(&text) {
            Ok(msg) => inner.state.apply(msg),
            Err(e) => leptos::logging::warn!("unreadable frame from the server: {e}"),
        }
    });
    let weak = Rc::downgrade(inner);
    let was_opened = opened;
    let on_close: Listener = Closure::new(move |e: Event| {
        let Some(inner) = weak.upgrade() else { return };
        inner.open.borrow_mut().take();
        if inner.closed.get() {
            return;
        }
        let code = e.dyn_into::<CloseEvent>().map(|c| c.code()).unwrap_or(1006);
        if code == CLOSE_TOKEN_EXPIRED {
            // The session ran out under us: renew it, then come straight back.
            renew(&inner, true);
        } else if !was_opened.get() {
            // Refused before it opened: maybe the session is no longer valid
            // (e.g. the server's secret changed). Ask before retrying.
            check_session_then_retry(&inner);
        } else {
            schedule_reconnect(&inner);
        }
    });
    ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    if inner.state.status.get_untracked() != ConnStatus::Connected {
        inner.state.status.set(ConnStatus::Connecting);
    }
    let old = inner.open.borrow_mut().replace(Open {
        ws,
        _listeners: [on_open, on_message, on_close],
    });
    if let Some(old) = old {
        old.discard();
    }
}

/// Waits (exponential backoff, full jitter, capped) and connects again,
/// counting down in the status.
fn schedule_reconnect(inner: &Rc<Inner>) {
    if inner.closed.get() {
        return;
    }
    let attempt = inner.attempts.get();
    inner.attempts.set(attempt.saturating_add(1));
    let delay = backoff::delay_ms(attempt, js_sys::Math::random()).max(100.0);
    let deadline = js_sys::Date::now() + delay;

    let status = inner.state.status;
    let show = move || {
        let left = ((deadline - js_sys::Date::now()) / 1000.0).ceil().max(1.0) as u32;
        status.set(ConnStatus::Reconnecting(left));
    };
    show();
    if let Some(old) = inner.countdown.take() {
        old.clear();
    }
    inner
        .countdown
        .set(set_interval_with_handle(show, Duration::from_millis(250)).ok());

    let weak = Rc::downgrade(inner);
    let handle = set_timeout_with_handle(
        move || {
            if let Some(inner) = weak.upgrade() {
                inner.retry.set(None);
                if let Some(c) = inner.countdown.take() {
                    c.clear();
                }
                inner.state.status.set(ConnStatus::Connecting);
                connect(&inner);
            }
        },
        Duration::from_millis(delay as u64),
    );
    if let Some(old) = inner.retry.replace(handle.ok()) {
        old.clear();
    }
}

fn check_session_then_retry(inner: &Rc<Inner>) {
    let weak = Rc::downgrade(inner);
    spawn_local(async move {
        let valid = match current_session().await {
            Ok(info) => info.session.is_some(),
            // The server is unreachable: keep trying.
            Err(_) => true,
        };
        let Some(inner) = weak.upgrade() else { return };
        if valid {
            schedule_reconnect(&inner);
        } else {
            session_lost(&inner);
        }
    });
}

fn session_lost(inner: &Rc<Inner>) {
    inner.closed.set(true);
    inner.state.status.set(ConnStatus::Disconnected);
    inner.state.session.set(None);
}

/// Renews the session before it ends; the socket then reconnects with the
/// fresh cookie before the old token's `exp` closes it.
fn schedule_renewal(inner: &Rc<Inner>, expires_at: u64) {
    let now = (js_sys::Date::now() / 1000.0) as u64;
    let lifetime = expires_at.saturating_sub(now);
    // Five minutes before the end, or half-way through a short session.
    let wait = lifetime
        .saturating_sub(RENEW_BEFORE_S.min(lifetime / 2))
        .max(1);
    let weak = Rc::downgrade(inner);
    let handle = set_timeout_with_handle(
        move || {
            if let Some(inner) = weak.upgrade() {
                renew(&inner, false);
            }
        },
        Duration::from_secs(wait),
    );
    if let Some(old) = inner.renew.replace(handle.ok()) {
        old.clear();
    }
}

/// Renews the session; on success reconnects at once (quietly: the status
/// stays as it is and the rooms are rejoined, history filling any gap).
fn renew(inner: &Rc<Inner>, after_expiry: bool) {
    let weak = Rc::downgrade(inner);
    spawn_local(async move {
        let result = renew_session().await;
        let Some(inner) = weak.upgrade() else { return };
        if inner.closed.get() {
            return;
        }
        match result {
            Ok(session) => {
                schedule_renewal(&inner, session.expires_at);
                inner.state.session.set(Some(session));
                connect(&inner);
            }
            Err(e) if after_expiry => {
                leptos::logging::warn!("cannot renew the session: {e}");
                session_lost(&inner);
            }
            Err(e) => {
                // Try again in a minute; the socket lives until `exp` anyway.
                leptos::logging::warn!("cannot renew the session yet: {e}");
                let now = (js_sys::Date::now() / 1000.0) as u64;
                schedule_renewal(&inner, now + 120);
            }
        }
    });
}
