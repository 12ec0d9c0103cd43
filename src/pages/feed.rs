//! Page `/`: the live feed.
//!
//! The server renders the latest events into the HTML, so the page is useful
//! before the WASM arrives; once hydrated, the page subscribes to the SSE feed
//! (resuming after the last rendered event) and follows it live.

use leptos::prelude::*;

use crate::protocol::{FeedEvent, FeedItem, MAX_TEXT_CHARS};
use crate::time::format_time;

/// Events shown at once.
pub const ROWS: usize = 10;
/// Notifications shown at once.
const NOTES: usize = 5;
/// Values drawn in the sparkline.
const SPARK_POINTS: usize = 30;

/// Connection state shown in the badge; told by text, not colour alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Opening the first connection.
    Connecting,
    /// Events are flowing.
    Live,
    /// The connection dropped and is being re-established.
    Reconnecting,
    /// The browser gave up; another attempt is scheduled.
    Offline,
}

impl Status {
    /// Text of the badge.
    pub fn label(self) -> &'static str {
        match self {
            Status::Connecting => "Connecting",
            Status::Live => "Live",
            Status::Reconnecting => "Reconnecting",
            Status::Offline => "Offline",
        }
    }

    fn class(self) -> &'static str {
        match self {
            Status::Connecting => "badge badge-connecting",
            Status::Live => "badge badge-live",
            Status::Reconnecting => "badge badge-reconnecting",
            Status::Offline => "badge badge-offline",
        }
    }
}

/// The latest events, oldest first, for the first render of the page.
#[server(endpoint = "recent_events")]
pub async fn recent_events() -> Result<Vec<FeedItem>, ServerFnError> {
    let feed = use_context::<std::sync::Arc<crate::server::feed::Feed>>()
        .ok_or_else(|| ServerFnError::new("the feed is not available"))?;
    Ok(feed.recent(ROWS + NOTES))
}

/// Publishes `text` as a notification to the feed of every instance, as the
/// signed-in user (same validation and rate limit as chat messages).
#[server(endpoint = "publish_notification")]
pub async fn publish_notification(text: String) -> Result<(), ServerFnError> {
    use crate::server::notify;
    let headers = use_context::<axum::http::request::Parts>()
        .map(|p| p.headers)
        .unwrap_or_default();
    let service = use_context::<std::sync::Arc<notify::Notifier>>()
        .ok_or_else(|| ServerFnError::new("notifications are not available"))?;
    service
        .publish_from_session(&headers, &text)
        .await
        .map(|_| ())
        .map_err(|e| {
            if let Some(res) = use_context::<leptos_axum::ResponseOptions>() {
                res.set_status(e.status());
            }
            ServerFnError::new(e.message())
        })
}

/// One line of the event list.
#[derive(Clone, Debug, PartialEq)]
struct Row {
    /// Unique within the page, for keyed rendering.
    key: u64,
    /// The event's SSE id, for updates.
    id: Option<u64>,
    /// When it happened (ms since the epoch).
    timestamp: u64,
    /// The event.
    event: FeedEvent,
}

/// The Feed page.
#[component]
pub fn FeedPage() -> impl IntoView {
    let recent = Resource::new(|| (), |_| recent_events());
    view! {
        <section class="page feed-page">
            <h1>"Live feed"</h1>
            <Suspense fallback=|| view! { <p class="muted">"Loading the feed…"</p> }>
                {move || Suspend::new(async move {
                    let initial = recent.await.unwrap_or_default();
                    view! { <LiveFeed initial/> }
                })}
            </Suspense>
        </section>
    }
}

/// The badge, sparkline and event list, following the SSE feed.
#[component]
fn LiveFeed(initial: Vec<FeedItem>) -> impl IntoView {
    let status = RwSignal::new(Status::Connecting);
    // Flips once the page is interactive; until then times are shown in UTC,
    // exactly as the server rendered them.
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));

    let values = RwSignal::new(
        initial
            .iter()
            .filter_map(|item| match item.event {
                FeedEvent::Update { value, .. } => Some(value),
                _ => None,
            })
            .collect::<Vec<_>>(),
    );
    let notes = RwSignal::new(
        initial
            .iter()
            .rev()
            .filter_map(|item| Note::from_event(&item.event))
            .take(NOTES)
            .collect::<Vec<_>>(),
    );
    let mut key = 0;
    let rows = RwSignal::new(
        initial
            .iter()
            .rev()
            .filter(|item| !matches!(item.event, FeedEvent::Notification { .. }))
            .take(ROWS)
            .map(|item| {
                key += 1;
                Row {
                    key,
                    id: Some(item.id),
                    timestamp: timestamp_of(&item.event).unwrap_or(0),
                    event: item.event.clone(),
                }
            })
            .collect::<Vec<_>>(),
    );
    let next_key = StoredValue::new(key + 1);

    let push = move |id: Option<u64>, event: FeedEvent, now: u64| {
        if let Some(note) = Note::from_event(&event) {
            notes.update(|n| {
                // The id is the notification's own: the same one may come
                // from two instances around a reconnect.
                if !n.iter().any(|x| x.id == note.id) {
                    n.insert(0, note);
                    n.truncate(NOTES);
                }
            });
            return;
        }
        if let FeedEvent::Update { value, .. } = event {
            values.update(|v| {
                v.push(value);
                let excess = v.len().saturating_sub(SPARK_POINTS);
                v.drain(..excess);
            });
        }
        let key = next_key.get_value();
        next_key.set_value(key + 1);
        let timestamp = timestamp_of(&event).unwrap_or(now);
        rows.update(|r| {
            r.insert(
                0,
                Row {
                    key,
                    id,
                    timestamp,
                    event,
                },
            );
            r.truncate(ROWS);
        });
    };

    #[cfg(feature = "hydrate")]
    {
        let last_id = initial.last().map(|item| item.id);
        let source = client::FeedSource::open(last_id, status, push);
        let source = send_wrapper::SendWrapper::new(source);
        on_cleanup(move || source.close());
    }
    #[cfg(not(feature = "hydrate"))]
    let _ = push;

    let points = move || {
        values.with(|v| {
            let step = 120.0 / (SPARK_POINTS - 1) as f64;
            let x0 = 120.0 - step * (v.len().saturating_sub(1)) as f64;
            v.iter()
                .enumerate()
                .map(|(i, y)| format!("{:.1},{:.1}", x0 + step * i as f64, 30.0 - y * 28.0))
                .collect::<Vec<_>>()
                .join(" ")
        })
    };

    view! {
        <div class="feed-head">
            <p class=move || status.get().class() role="status" aria-live="polite" data-testid="feed-status">
                {move || status.get().label()}
            </p>
            <svg class="sparkline" viewBox="0 0 120 32" role="img" aria-label="Recent values">
                <polyline points=points/>
            </svg>
        </div>
        <ol class="events" data-testid="events">
            <For
                each=move || rows.get()
                key=|row| row.key
                children=move |row| {
                    let kind = event_kind(&row.event);
                    let value = match row.event {
                        FeedEvent::Update { value, .. } => format!("{value:.3}"),
                        FeedEvent::Gap => "missed events".to_string(),
                        FeedEvent::Connected { .. } | FeedEvent::Notification { .. } => {
                            "—".to_string()
                        }
                    };
                    let ts = row.timestamp;
                    view! {
                        <li class=format!("event event-{kind}") data-id=row.id.map(|id| id.to_string())>
                            <span class="event-type">{kind}</span>
                            <time class="event-time">{move || format_time(ts, hydrated.get())}</time>
                            <span class="event-value">{value}</span>
                        </li>
                    }
                }
            />
        </ol>
        <section class="notifications" aria-labelledby="notifications-title">
            <h2 id="notifications-title">"Notifications"</h2>
            <ul data-testid="notifications">
                <For
                    each=move || notes.get()
                    key=|n| n.id.clone()
                    children=move |n| {
                        let ts = n.timestamp;
                        view! {
                            <li class="note">
                                <span class="note-user">{n.user}</span>
                                <span class="user-tag">{n.tag}</span>
                                <time class="event-time">{move || format_time(ts, hydrated.get())}</time>
                                <span class="note-text">{n.text}</span>
                            </li>
                        }
                    }
                />
            </ul>
            <PublishForm/>
        </section>
    }
}

/// Sends a notification to every feed, as the signed-in user.
#[component]
fn PublishForm() -> impl IntoView {
    let action = ServerAction::<PublishNotification>::new();
    let text = RwSignal::new(String::new());
    Effect::new(move |_| {
        if let Some(Ok(())) = action.value().get() {
            text.set(String::new());
        }
    });
    let error = move || match action.value().get() {
        Some(Err(e)) => Some(crate::session::error_message(&e)),
        _ => None,
    };
    view! {
        <ActionForm action attr:class="publish">
            <label class="visually-hidden" for="publish-text">"Notification"</label>
            <div class="row">
                <input
                    id="publish-text"
                    name="text"
                    data-testid="publish-text"
                    placeholder="Notify everyone… (signed-in users)"
                    maxlength=MAX_TEXT_CHARS
                    required
                    prop:value=move || text.get()
                    on:input=move |ev| text.set(event_target_value(&ev))
                />
                <button type="submit" disabled=move || action.pending().get()>"Publish"</button>
            </div>
            <p class="error" role="alert">{error}</p>
        </ActionForm>
    }
}

/// A notification as shown.
#[derive(Clone, Debug, PartialEq)]
struct Note {
    id: String,
    /// The author's display name.
    user: String,
    /// The tag that tells authors of the same name apart.
    tag: String,
    text: String,
    timestamp: u64,
}

impl Note {
    fn from_event(event: &FeedEvent) -> Option<Note> {
        match event {
            FeedEvent::Notification {
                id,
                user_id,
                user,
                text,
                timestamp,
            } => Some(Note {
                id: id.clone(),
                user: user.clone(),
                tag: crate::protocol::user_tag(user_id),
                text: text.clone(),
                timestamp: *timestamp,
            }),
            _ => None,
        }
    }
}

fn timestamp_of(event: &FeedEvent) -> Option<u64> {
    match event {
        FeedEvent::Connected { timestamp }
        | FeedEvent::Update { timestamp, .. }
        | FeedEvent::Notification { timestamp, .. } => Some(*timestamp),
        FeedEvent::Gap => None,
    }
}

fn event_kind(event: &FeedEvent) -> &'static str {
    match event {
        FeedEvent::Connected { .. } => "connected",
        FeedEvent::Update { .. } => "update",
        FeedEvent::Gap => "gap",
        FeedEvent::Notification { .. } => "notification",
    }
}

/// The browser side of the feed: an EventSource that keeps itself connected.
#[cfg(feature = "hydrate")]
mod client {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    use leptos::prelude::*;
    use wasm_bindgen::closure::Closure;
    use wasm_bindgen::JsCast;
    use web_sys::{Event, EventSource, MessageEvent};

    use super::Status;
    use crate::protocol::{FeedEvent, FEED_PATH, LAST_EVENT_ID_PARAM};

    type Listener = Closure<dyn FnMut(Event)>;

    /// An open EventSource with the callbacks it holds.
    struct Open {
        source: EventSource,
        _listeners: [Listener; 3],
    }

    struct Inner {
        /// The current connection, if any.
        open: RefCell<Option<Open>>,
        /// Id of the newest event received; sent when reconnecting.
        last_id: Cell<Option<u64>>,
        /// Failed attempts in a row, for the backoff.
        attempts: Cell<u32>,
        /// Pending reconnection timer.
        retry: Cell<Option<TimeoutHandle>>,
        /// Set by `close`: no more reconnections.
        closed: Cell<bool>,
        /// The badge.
        status: RwSignal<Status>,
        /// Where events go.
        on_event: Box<dyn Fn(Option<u64>, FeedEvent, u64)>,
    }

    /// Follows the feed until closed.
    pub struct FeedSource(Rc<Inner>);

    impl FeedSource {
        /// Connects, resuming after `last_id` if given.
        pub fn open(
            last_id: Option<u64>,
            status: RwSignal<Status>,
            on_event: impl Fn(Option<u64>, FeedEvent, u64) + 'static,
        ) -> Self {
            let inner = Rc::new(Inner {
                open: RefCell::new(None),
                last_id: Cell::new(last_id),
                attempts: Cell::new(0),
                retry: Cell::new(None),
                closed: Cell::new(false),
                status,
                on_event: Box::new(on_event),
            });
            connect(&inner);
            FeedSource(inner)
        }

        /// Closes the connection and cancels any reconnection.
        pub fn close(&self) {
            self.0.closed.set(true);
            if let Some(handle) = self.0.retry.take() {
                handle.clear();
            }
            if let Some(open) = self.0.open.borrow_mut().take() {
                open.source.close();
            }
        }
    }

    fn connect(inner: &Rc<Inner>) {
        if inner.closed.get() {
            return;
        }
        // The browser sends `Last-Event-ID` on its own reconnects; a new
        // EventSource cannot set headers, so a fresh one says it in the URL.
        let url = match inner.last_id.get() {
            Some(id) => format!("{FEED_PATH}?{LAST_EVENT_ID_PARAM}={id}"),
            None => FEED_PATH.to_string(),
        };
        let source = match EventSource::new(&url) {
            Ok(s) => s,
            Err(_) => {
                schedule_reconnect(inner);
                return;
            }
        };

        let weak = Rc::downgrade(inner);
        let on_open: Listener = Closure::new(move |_: Event| {
            if let Some(inner) = weak.upgrade() {
                inner.attempts.set(0);
                inner.status.set(Status::Live);
            }
        });
        let weak = Rc::downgrade(inner);
        let on_message: Listener = Closure::new(move |e: Event| {
            let (Some(inner), Ok(msg)) = (weak.upgrade(), e.dyn_into::<MessageEvent>()) else {
                return;
            };
            let Some(Ok(event)) = msg
                .data()
                .as_string()
                .map(|s| serde_json::from_str::<FeedEvent>(&s))
            else {
                return;
            };
            let id = match event {
                // `lastEventId` of an event without `id:` repeats the previous
                // id, so only events that carry one are numbered.
                FeedEvent::Update { .. } | FeedEvent::Notification { .. } => {
                    msg.last_event_id().parse::<u64>().ok()
                }
                FeedEvent::Gap => {
                    // Ids after a gap may come from a new sequence.
                    inner.last_id.set(None);
                    None
                }
                FeedEvent::Connected { .. } => None,
            };
            if let Some(id) = id {
                if inner.last_id.get().is_some_and(|last| id <= last) {
                    return; // already shown
                }
                inner.last_id.set(Some(id));
            }
            (inner.on_event)(id, event, js_sys::Date::now() as u64);
        });
        let weak = Rc::downgrade(inner);
        let on_error: Listener = Closure::new(move |_: Event| {
            let Some(inner) = weak.upgrade() else { return };
            let gave_up = inner
                .open
                .borrow()
                .as_ref()
                .is_none_or(|o| o.source.ready_state() == EventSource::CLOSED);
            if gave_up {
                // The browser stopped retrying (e.g. an HTTP error from a
                // proxy): retry ourselves, with backoff.
                if let Some(open) = inner.open.borrow_mut().take() {
                    open.source.close();
                }
                inner.status.set(Status::Offline);
                schedule_reconnect(&inner);
            } else {
                // The browser retries by itself, sending Last-Event-ID.
                inner.status.set(Status::Reconnecting);
            }
        });
        source.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        source.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        source.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        *inner.open.borrow_mut() = Some(Open {
            source,
            _listeners: [on_open, on_message, on_error],
        });
    }

    /// Waits as [`crate::backoff`] says, then connects again.
    fn schedule_reconnect(inner: &Rc<Inner>) {
        if inner.closed.get() {
            return;
        }
        let attempt = inner.attempts.get();
        inner.attempts.set(attempt.saturating_add(1));
        let delay = crate::backoff::delay_ms(attempt, js_sys::Math::random());
        let weak = Rc::downgrade(inner);
        let handle = set_timeout_with_handle(
            move || {
                if let Some(inner) = weak.upgrade() {
                    inner.retry.set(None);
                    inner.status.set(Status::Reconnecting);
                    connect(&inner);
                }
            },
            std::time::Duration::from_millis(delay as u64),
        );
        inner.retry.set(handle.ok());
    }
}
