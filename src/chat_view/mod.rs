//! The chat view shared by the Chat and Rooms pages: the page's state
//! ([`state`]), the sign-in gate, and the parts of a chat view (status,
//! message list with one's own messages as they go, composer). The
//! connection itself is [`crate::client::chat_link`].

pub mod state;

use leptos::prelude::*;

use crate::client::chat_link::{self, ChatLink, Signals};
use crate::client::sends::{Full, SendState};
use crate::client::StatusBadge;
use crate::protocol::{user_tag, MAX_NAME_CHARS, MAX_TEXT_CHARS};
use crate::session::{current_session, sign_out, SignIn as SignInFn};
use crate::time::format_time;
pub use state::ChatState;
use state::EntryKind;

/// The page's connection: its signals, and the handle to act through (a
/// no-op while rendering on the server, where there is none).
#[derive(Clone, Copy)]
pub struct Connection {
    /// What the connection keeps up to date.
    pub signals: Signals,
    /// The handle, while the view lives.
    link: StoredValue<Option<ChatLink>>,
}

impl Connection {
    fn with(&self, act: impl FnOnce(&ChatLink)) {
        self.link.with_value(|l| {
            if let Some(l) = l {
                act(l)
            }
        });
    }

    /// Joins `room` (and rejoins it after reconnects).
    pub fn join(&self, room: &str) {
        self.with(|l| l.join(room));
    }

    /// Leaves `room`.
    pub fn leave(&self, room: &str) {
        self.with(|l| l.leave(room));
    }

    /// Says `text` in `room`: pending at once, sent when it can be.
    pub fn send(&self, room: &str, text: &str) -> Result<(), Full> {
        let mut sent = Ok(());
        self.with(|l| sent = l.send(room, text));
        sent
    }

    /// Sends a failed message again.
    pub fn retry(&self, client_id: &str) {
        self.with(|l| l.retry(client_id));
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

/// Connects for the signed-in user (in the browser) and closes the
/// connection when the view goes away.
#[component]
fn Connected(state: ChatState, body: fn(ChatState, Connection) -> AnyView) -> impl IntoView {
    let link = chat_link::connect(state.session, move |seen| state.apply(seen));
    let conn = Connection {
        signals: link.signals,
        link: StoredValue::new(Some(link)),
    };
    on_cleanup(move || {
        conn.link.update_value(|l| {
            if let Some(l) = l.take() {
                l.close();
            }
        })
    });
    let on_sign_out = move |_| {
        conn.link.update_value(|l| {
            if let Some(l) = l.take() {
                l.close();
            }
        });
        leptos::task::spawn_local(async move {
            let _ = sign_out().await;
            state.session.set(None);
        });
    };
    let signals = conn.signals;
    view! {
        <div class="chat-head">
            <StatusBadge state=signals.state testid="chat-status"/>
            <span class="transport muted" data-testid="chat-transport" hidden=move || !signals.over_http.get()>
                "over HTTP (WebSockets are blocked)"
            </span>
            <span class="whoami">
                <span class="whoami-label">"Signed in as "</span>
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

/// A room's messages and notices, then one's own messages on their way
/// (sending…, will retry, failed with a Retry), keeping the newest in view.
#[component]
pub fn MessageList(
    state: ChatState,
    conn: Connection,
    #[prop(into)] room: Signal<String>,
) -> impl IntoView {
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
    let sends = conn.signals.sends;
    let own = move || {
        let me = state
            .session
            .with(|s| s.as_ref().map(|s| (s.user.clone(), user_tag(&s.user_id))))
            .unwrap_or_default();
        sends.with(|s| {
            s.all()
                .iter()
                .filter(|o| o.room == room.get())
                .map(|o| (o.clone(), me.clone()))
                .collect::<Vec<_>>()
        })
    };
    Effect::new(move |_| {
        state.rooms.track();
        sends.track();
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
                        EntryKind::Message { user, tag, text, .. } => view! {
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
                        EntryKind::Missing => view! {
                            <li class="notice missing" data-testid="missing">
                                <span class="notice-text">"Some messages may be missing"</span>
                            </li>
                        }
                            .into_any(),
                    }
                }
            />
            <For
                each=own
                key=|(o, _)| (o.client_id.clone(), format!("{:?}", o.state))
                children=move |(o, (user, tag))| {
                    let (class, status) = match &o.state {
                        SendState::Queued | SendState::InFlight => ("msg pending", "sending…".to_string()),
                        SendState::Waiting { reason, .. } => ("msg pending", format!("will retry: {reason}")),
                        SendState::Failed { reason } => ("msg failed", format!("not sent: {reason}")),
                        SendState::Sent { .. } => ("msg sent", "sent".to_string()),
                    };
                    let failed = matches!(o.state, SendState::Failed { .. });
                    let client_id = o.client_id.clone();
                    view! {
                        <li class=class data-testid="own" data-state=o.state.name()>
                            <span class="msg-user">{user}</span>
                            <span class="user-tag">{tag}</span>
                            <span class="msg-status" data-testid="own-status">{status}</span>
                            <span class="msg-text">{o.text.clone()}</span>
                            {failed.then(|| view! {
                                <button type="button" class="link" data-testid="retry"
                                    on:click=move |_| conn.retry(&client_id)>"Retry"</button>
                            })}
                        </li>
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

/// The message input and Send button; Enter sends. Always usable: what
/// is typed while offline is queued (shown pending, kept across reloads) and
/// sent once a connection is back; past the room's bound the composer says
/// so.
#[component]
pub fn Composer(
    state: ChatState,
    conn: Connection,
    #[prop(into)] room: Signal<String>,
) -> impl IntoView {
    let text = RwSignal::new(String::new());
    let input = NodeRef::<leptos::html::Input>::new();
    // After signing in here, the next thing to do is to type.
    Effect::new(move |_| {
        if let Some(el) = input.get() {
            if state.just_signed_in.get_untracked() {
                state.just_signed_in.set(false);
                let _ = el.focus();
            }
        }
    });
    let on_submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let value = text.get_untracked();
        if value.trim().is_empty() {
            return;
        }
        match conn.send(&room.get_untracked(), value.trim()) {
            Ok(()) => {
                state.error.set(None);
                text.set(String::new());
            }
            Err(Full) => state.error.set(Some(
                "Too many messages are waiting to be sent in this room; \
                 this one can be sent once they are."
                    .into(),
            )),
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
                node_ref=input
                prop:value=move || text.get()
                on:input=move |ev| text.set(event_target_value(&ev))
            />
            <button type="submit" data-testid="chat-send">"Send"</button>
        </form>
    }
}
