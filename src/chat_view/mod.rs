//! The chat client shared by the Chat and Rooms pages: the state the pages
//! render ([`ChatState`]), the sign-in gate, and the parts of a chat view
//! (status, message list, composer). The socket itself is
//! [`crate::client::chat`].

use std::collections::BTreeMap;

use leptos::prelude::*;

use crate::client::chat::ChatSocket;
use crate::client::{ConnState, StatusBadge};
use crate::protocol::{
    user_tag, ChatMessage, Member, ServerMessage, MAX_NAME_CHARS, MAX_TEXT_CHARS,
};
use crate::session::{current_session, sign_out, Session, SignIn as SignInFn};
use crate::time::format_time;

/// Most entries kept per room on screen.
const MAX_ENTRIES: usize = 200;

/// One line of a room's stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Unique key: the message id, or a local one for notices.
    pub key: String,
    /// Server time, ms since the epoch.
    pub timestamp: u64,
    /// What it is.
    pub kind: EntryKind,
}

/// A message or a notice.
#[derive(Clone, Debug, PartialEq)]
pub enum EntryKind {
    /// Someone said something.
    Message {
        /// Author's display name.
        user: String,
        /// The tag that tells authors of one name apart.
        tag: String,
        /// Text (always rendered as text).
        text: String,
    },
    /// Someone joined or left.
    Notice(String),
}

/// What the client knows of one joined room.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoomView {
    /// Members, sorted by name then id.
    pub members: Vec<Member>,
    /// Messages and notices, oldest first.
    pub entries: Vec<Entry>,
}

impl RoomView {
    fn add_message(&mut self, m: ChatMessage) {
        if self.entries.iter().any(|e| e.key == m.id) {
            return; // already shown (history after a rejoin)
        }
        let entry = Entry {
            key: m.id,
            timestamp: m.timestamp,
            kind: EntryKind::Message {
                user: m.user,
                tag: user_tag(&m.user_id),
                text: m.text,
            },
        };
        // Keep time order: history may fill in before newer entries.
        let at = self
            .entries
            .iter()
            .rposition(|e| e.timestamp <= entry.timestamp)
            .map_or(0, |i| i + 1);
        self.entries.insert(at, entry);
        self.trim();
    }

    fn add_notice(&mut self, key: u64, timestamp: u64, text: String) {
        self.entries.push(Entry {
            key: format!("notice-{key}"),
            timestamp,
            kind: EntryKind::Notice(text),
        });
        self.trim();
    }

    fn trim(&mut self) {
        let excess = self.entries.len().saturating_sub(MAX_ENTRIES);
        self.entries.drain(..excess);
    }
}

/// Everything the chat pages render, as signals.
#[derive(Clone, Copy)]
pub struct ChatState {
    /// The connection indicator.
    pub status: RwSignal<ConnState>,
    /// The signed-in user; `None` shows the sign-in form.
    pub session: RwSignal<Option<Session>>,
    /// Joined rooms by name.
    pub rooms: RwSignal<BTreeMap<String, RoomView>>,
    /// The last error the server reported, shown until the next action.
    pub error: RwSignal<Option<String>>,
    /// A message was sent and neither its echo nor a refusal has come back:
    /// the composer keeps the text until the server has taken it.
    pub awaiting: RwSignal<bool>,
    /// Counts the server's acceptances of one's own messages (the composer
    /// clears its text on each).
    pub accepted: RwSignal<u64>,
    /// Set by signing in here, so the composer takes the focus.
    pub just_signed_in: RwSignal<bool>,
    /// Whether the connection runs over the HTTP fallback (WebSockets do not
    /// get through).
    pub over_http: RwSignal<bool>,
    /// Keys for notices.
    next_notice: StoredValue<u64>,
}

impl ChatState {
    fn new(session: Option<Session>) -> Self {
        ChatState {
            status: RwSignal::new(ConnState::Connecting),
            session: RwSignal::new(session),
            rooms: RwSignal::new(BTreeMap::new()),
            error: RwSignal::new(None),
            awaiting: RwSignal::new(false),
            accepted: RwSignal::new(0),
            just_signed_in: RwSignal::new(false),
            over_http: RwSignal::new(false),
            next_notice: StoredValue::new(0),
        }
    }

    /// Applies one frame from the server.
    pub fn apply(&self, msg: ServerMessage) {
        match msg {
            ServerMessage::Joined {
                room,
                members,
                history,
                ..
            } => self.rooms.update(|rooms| {
                let view = rooms.entry(room).or_default();
                view.members = members;
                for m in history {
                    view.add_message(m);
                }
            }),
            ServerMessage::Presence {
                room,
                joined,
                left,
                timestamp,
            } => self.rooms.update(|rooms| {
                let Some(view) = rooms.get_mut(&room) else {
                    return;
                };
                // Only real changes are told: a diff may repeat what the
                // `joined` answer already listed.
                let came: Vec<Member> = joined
                    .into_iter()
                    .filter(|m| !view.members.iter().any(|x| x.id == m.id))
                    .collect();
                let went: Vec<Member> = left
                    .into_iter()
                    .filter(|m| view.members.iter().any(|x| x.id == m.id))
                    .collect();
                view.members.retain(|x| !went.iter().any(|m| m.id == x.id));
                view.members.extend(came.iter().cloned());
                view.members
                    .sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
                for (who, verb) in [(&came, "joined"), (&went, "left")] {
                    if !who.is_empty() {
                        let key = self.next_notice.get_value();
                        self.next_notice.set_value(key + 1);
                        view.add_notice(key, timestamp, format!("{} {verb}", names(who)));
                    }
                }
            }),
            ServerMessage::Message(m) => {
                let mine = self
                    .session
                    .with_untracked(|s| s.as_ref().is_some_and(|s| s.user_id == m.user_id));
                if mine && self.awaiting.get_untracked() {
                    self.awaiting.set(false);
                    self.accepted.update(|n| *n += 1);
                }
                self.rooms.update(|rooms| {
                    if let Some(view) = rooms.get_mut(&m.room) {
                        view.add_message(m);
                    }
                })
            }
            ServerMessage::Health { other_servers } => self.status.update(|status| {
                if status.is_live() {
                    *status = if other_servers {
                        ConnState::Live
                    } else {
                        ConnState::LiveAlone
                    };
                }
            }),
            // The connection's own business, not the page's.
            ServerMessage::Pong { .. }
            | ServerMessage::Hello { .. }
            | ServerMessage::Closed { .. }
            | ServerMessage::Ack { .. } => {}
            ServerMessage::Left { room } => self.rooms.update(|rooms| {
                rooms.remove(&room);
            }),
            ServerMessage::Error { message, .. } | ServerMessage::Nack { message, .. } => {
                // A refused message stays in the composer, with the reason.
                self.awaiting.set(false);
                self.error.set(Some(message));
            }
        }
    }
}

/// "Ada #3f9c", "Ada #3f9c and Bob #0a1b", "Ada #3f9c, Bob #0a1b and 3 others".
fn names(members: &[Member]) -> String {
    let shown: Vec<String> = members
        .iter()
        .take(2)
        .map(|m| format!("{} {}", m.name, user_tag(&m.id)))
        .collect();
    match members.len() {
        0 => String::new(),
        1 => shown[0].clone(),
        2 => format!("{} and {}", shown[0], shown[1]),
        n => format!("{}, {} and {} others", shown[0], shown[1], n - 2),
    }
}

/// Sends to the server through the page's socket (a no-op while rendering on
/// the server, where there is none).
#[derive(Clone, Copy)]
pub struct Connection {
    /// The socket, while the view lives.
    socket: StoredValue<Option<ChatSocket>>,
}

impl Connection {
    /// Joins `room` (and rejoins it after reconnects).
    pub fn join(&self, room: &str) {
        self.socket.with_value(|s| {
            if let Some(s) = s {
                s.join(room)
            }
        });
    }

    /// Leaves `room`.
    pub fn leave(&self, room: &str) {
        self.socket.with_value(|s| {
            if let Some(s) = s {
                s.leave(room)
            }
        });
    }

    /// Says `text` in `room`; false if not connected.
    pub fn say(&self, room: &str, text: &str) -> bool {
        self.socket
            .with_value(|s| s.as_ref().is_some_and(|s| s.say(room, text)))
    }
}

/// Loads the session, shows the sign-in form without one, and otherwise the
/// chat view `children` builds, with a live connection.
#[component]
pub fn ChatGate(
    /// Builds the view once signed in.
    body: fn(ChatState, Connection) -> AnyView,
) -> impl IntoView {
    let info = Resource::new(|| (), |_| current_session());
    view! {
        <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match info.await {
                    Ok(info) => {
                        let state = ChatState::new(info.session.clone());
                        let suggested = info.suggested_name;
                        view! {
                            <Show
                                when=move || state.session.with(Option::is_some)
                                fallback=move || view! { <SignIn state suggested=suggested.clone()/> }
                            >
                                <Connected state body/>
                            </Show>
                        }
                            .into_any()
                    }
                    Err(e) => view! {
                        <p class="error" role="alert">{format!("Cannot reach the server: {e}")}</p>
                    }
                        .into_any(),
                }
            })}
        </Suspense>
    }
}

/// Opens the socket for the signed-in user (in the browser) and closes it when
/// the view goes away.
#[component]
fn Connected(state: ChatState, body: fn(ChatState, Connection) -> AnyView) -> impl IntoView {
    let expires_at = state
        .session
        .with_untracked(|s| s.as_ref().map_or(0, |s| s.expires_at));
    state.status.set(ConnState::Connecting);
    let conn = Connection {
        socket: StoredValue::new(Some(ChatSocket::open(state, expires_at))),
    };
    on_cleanup(move || {
        conn.socket.update_value(|s| {
            if let Some(s) = s.take() {
                s.close();
            }
        })
    });
    let on_sign_out = move |_| {
        leptos::task::spawn_local(async move {
            let _ = sign_out().await;
            state.status.set(ConnState::Stopped);
            state.session.set(None);
        });
    };
    view! {
        <div class="chat-head">
            <StatusBadge state=state.status testid="chat-status"/>
            <span class="transport muted" data-testid="chat-transport" hidden=move || !state.over_http.get()>
                "over HTTP (WebSockets are blocked)"
            </span>
            <span class="whoami">
                "Signed in as "
                <strong data-testid="whoami">
                    {move || state.session.with(|s| s.as_ref().map(|s| s.user.clone()))}
                </strong>
                " "
                <span class="user-tag" data-testid="whoami-tag">
                    {move || state.session.with(|s| s.as_ref().map(|s| user_tag(&s.user_id)))}
                </span>
            </span>
            <button type="button" class="link" on:click=on_sign_out>"Sign out"</button>
        </div>
        <p class="error" role="alert" data-testid="chat-error">
            {move || state.error.get()}
        </p>
        {body(state, conn)}
    }
}

/// The guest sign-in form.
#[component]
fn SignIn(state: ChatState, suggested: String) -> impl IntoView {
    let action = ServerAction::<SignInFn>::new();
    Effect::new(move |_| {
        if let Some(Ok(session)) = action.value().get() {
            state.error.set(None);
            state.just_signed_in.set(true);
            state.session.set(Some(session));
        }
    });
    let error = move || match action.value().get() {
        Some(Err(e)) => Some(e.message),
        _ => None,
    };
    view! {
        <ActionForm action attr:class="sign-in">
            <label for="sign-in-name">"Your display name"</label>
            <div class="row">
                <input
                    id="sign-in-name"
                    name="name"
                    data-testid="sign-in-name"
                    required
                    maxlength=MAX_NAME_CHARS
                    autocomplete="nickname"
                    // An attribute, not a property: hydration leaves the field
                    // as it is, so a name typed before the page's code was
                    // in is kept (ActionForm reads the field itself).
                    value=suggested
                />
                <button type="submit" disabled=move || action.pending().get()>"Sign in"</button>
            </div>
            <p class="error" role="alert">{error}</p>
        </ActionForm>
    }
}

/// A room's messages and notices, keeping the newest in view.
#[component]
pub fn MessageList(state: ChatState, #[prop(into)] room: Signal<String>) -> impl IntoView {
    let list = NodeRef::<leptos::html::Ol>::new();
    let entries = move || {
        state
            .rooms
            .with(|rooms| rooms.get(&room.get()).map(|r| r.entries.clone()))
            .unwrap_or_default()
    };
    // Whether the reader is at the newest entry; scrolled up to read older
    // ones, new entries do not move the list but show a button instead.
    let at_bottom = StoredValue::new(true);
    let unseen = RwSignal::new(false);
    let to_bottom = move || {
        if let Some(el) = list.get_untracked() {
            el.set_scroll_top(el.scroll_height());
        }
        unseen.set(false);
    };
    Effect::new(move |_| {
        state.rooms.track();
        room.track();
        if at_bottom.get_value() {
            to_bottom();
        } else {
            unseen.set(true);
        }
    });
    let on_scroll = move |_| {
        if let Some(el) = list.get_untracked() {
            // A few pixels' slack: zoom and rounding rarely land exactly.
            let bottom = el.scroll_top() + el.client_height() + 8 >= el.scroll_height();
            at_bottom.set_value(bottom);
            if bottom {
                unseen.set(false);
            }
        }
    };
    view! {
        <ol class="messages" data-testid="messages" node_ref=list aria-live="polite" on:scroll=on_scroll>
            <For
                each=entries
                key=|e| e.key.clone()
                children=move |e| {
                    let time = format_time(e.timestamp, true);
                    match e.kind {
                        EntryKind::Message { user, tag, text } => view! {
                            <li class="msg">
                                <span class="msg-user">{user}</span>
                                <span class="user-tag">{tag}</span>
                                <time class="msg-time">{time}</time>
                                <span class="msg-text">{text}</span>
                            </li>
                        }
                            .into_any(),
                        EntryKind::Notice(text) => view! {
                            <li class="notice">
                                <span class="notice-text">{text}</span>
                                <time class="msg-time">{time}</time>
                            </li>
                        }
                            .into_any(),
                    }
                }
            />
        </ol>
        <button
            type="button"
            class="new-messages"
            data-testid="new-messages"
            hidden=move || !unseen.get()
            on:click=move |_| {
                at_bottom.set_value(true);
                to_bottom();
            }
        >
            "New messages ↓"
        </button>
    }
}

/// The message input and Send button, disabled while disconnected; Enter
/// sends. The text stays until the server has taken the message: a refused
/// one (too fast, invalid) can be sent again, with the reason shown above.
#[component]
pub fn Composer(
    state: ChatState,
    conn: Connection,
    #[prop(into)] room: Signal<String>,
) -> impl IntoView {
    let text = RwSignal::new(String::new());
    let input = NodeRef::<leptos::html::Input>::new();
    let offline = move || !state.status.get().is_live();
    Effect::new(move |seen: Option<u64>| {
        let accepted = state.accepted.get();
        if seen.is_some_and(|seen| seen != accepted) {
            text.set(String::new());
        }
        accepted
    });
    // After signing in here, the next thing to do is to type.
    Effect::new(move |_| {
        if let Some(el) = input.get() {
            if state.just_signed_in.get_untracked() && !offline() {
                state.just_signed_in.set(false);
                let _ = el.focus();
            }
        }
    });
    let on_submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let value = text.get_untracked();
        if value.trim().is_empty() || state.awaiting.get_untracked() {
            return;
        }
        state.error.set(None);
        if conn.say(&room.get_untracked(), &value) {
            state.awaiting.set(true);
        }
    };
    view! {
        <form class="composer" on:submit=on_submit>
            <label class="visually-hidden" for="composer-text">"Message"</label>
            <input
                id="composer-text"
                data-testid="chat-input"
                placeholder="Type a message…"
                autocomplete="off"
                maxlength=MAX_TEXT_CHARS
                disabled=offline
                node_ref=input
                prop:value=move || text.get()
                on:input=move |ev| text.set(event_target_value(&ev))
            />
            <button type="submit" data-testid="chat-send" disabled=offline>"Send"</button>
        </form>
    }
}
