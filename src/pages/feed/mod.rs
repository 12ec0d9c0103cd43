//! Page `/`: the live feed.
//!
//! The server renders the latest events into the HTML, so the page is useful
//! before the WASM arrives; once hydrated, the page follows the SSE feed
//! (resuming after the last rendered event). What it shows is a
//! [`model::FeedModel`]; the notification form is [`publish`].

pub mod model;
pub mod publish;

use leptos::prelude::*;
use leptos_meta::Title;

use crate::client::events::{self, Received};
use crate::client::{ConnState, StatusBadge};
use crate::protocol::{FeedEvent, FeedItem, FEED_PATH, LAST_EVENT_ID_PARAM};
use crate::time::format_time;
use model::{event_kind, FeedModel, SPARK_POINTS};
use publish::PublishForm;

/// The latest events and notifications, oldest first, for the first render
/// of the page.
#[server(endpoint = "recent_events")]
pub async fn recent_events() -> Result<Vec<FeedItem>, ServerFnError> {
    let feed = use_context::<std::sync::Arc<crate::server::feed::Feed>>()
        .ok_or_else(|| ServerFnError::new("the feed is not available"))?;
    Ok(feed.recent(model::ROWS))
}

/// The Feed page.
#[component]
pub fn FeedPage() -> impl IntoView {
    let recent = Resource::new(|| (), |_| recent_events());
    view! {
        <section class="page feed-page">
            <Title text="Live feed"/>
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
    let status = RwSignal::new(ConnState::Connecting);
    // Flips once the page is interactive; until then times are shown in UTC,
    // exactly as the server rendered them.
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));

    let model = RwSignal::new(FeedModel::new(&initial));
    let rows = move || model.with(|m| m.rows.clone());
    let notes = move || model.with(|m| m.notes.clone());
    // The browser sends `Last-Event-ID` on its own reconnects; a new
    // EventSource cannot set headers, so a fresh one says it in the URL.
    let url = move || match model.with_untracked(|m| m.last_id) {
        Some(id) => format!("{FEED_PATH}?{LAST_EVENT_ID_PARAM}={id}"),
        None => FEED_PATH.to_string(),
    };
    let on_event = move |received: Received| {
        let Ok(event) = serde_json::from_str::<FeedEvent>(&received.data) else {
            return;
        };
        if let FeedEvent::Health { other_servers } = event {
            return status.update(|s| {
                if s.is_live() {
                    *s = if other_servers {
                        ConnState::Live
                    } else {
                        ConnState::LiveAlone
                    };
                }
            });
        }
        model.update(|m| {
            m.receive(event, &received.last_event_id);
        });
    };
    // One stream for all of this browser's Feed tabs.
    let feed = events::follow_shared("feed", url, status, on_event);
    on_cleanup(move || feed.stop());

    let points = move || {
        model.with(|m| {
            let v = &m.values;
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
            <StatusBadge state=status testid="feed-status"/>
            <svg class="sparkline" viewBox="0 0 120 32" role="img" aria-label="Recent values">
                <polyline points=points/>
            </svg>
        </div>
        <ol class="events" data-testid="events">
            <For
                each=rows
                key=|row| row.key
                children=move |row| {
                    let kind = event_kind(&row.event);
                    let value = match row.event {
                        FeedEvent::Update { value, .. } => format!("{value:.3}"),
                        FeedEvent::Gap => "missed events".to_string(),
                        FeedEvent::Connected { .. }
                        | FeedEvent::Notification { .. }
                        | FeedEvent::Health { .. } => "—".to_string(),
                    };
                    let ts = row.timestamp;
                    view! {
                        <li class=format!("event event-{kind}") data-id=row.id.map(|id| id.to_string())>
                            <span class="event-type">{kind}</span>
                            <time class="event-time">{move || ts.map(|ts| format_time(ts, hydrated.get()))}</time>
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
                    each=notes
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
