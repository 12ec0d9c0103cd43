//! Pages `/rooms` and `/rooms/:room`: Socket.IO-style rooms. The room list
//! (the default rooms, plus the others one has been in, remembered by the
//! browser), the current room's stream with join and leave notices, and its
//! members, live.

use leptos::prelude::*;
use leptos_meta::Title;

use leptos_router::hooks::{use_navigate, use_params_map};

use crate::chat_view::{ChatGate, ChatState, Composer, Connection, MessageList};
use crate::client::stored;
use crate::protocol::{is_valid_room, DEFAULT_ROOMS, MAX_ROOM_NAME};

/// The Rooms page.
#[component]
pub fn RoomsPage() -> impl IntoView {
    let current = current_room();
    view! {
        <section class="page rooms-page">
            <Title text=move || format!("#{} · Rooms", current.get())/>
            <h1>"Rooms"</h1>
            <ChatGate body=rooms/>
        </section>
    }
}

/// The room in the URL (`/rooms/tech`), so that reloads, links and the back
/// button work; `/rooms` is #general.
fn current_room() -> Memo<String> {
    let params = use_params_map();
    Memo::new(move |_| {
        params
            .with(|p| p.get("room"))
            .filter(|room| is_valid_room(room))
            .unwrap_or_else(|| DEFAULT_ROOMS[0].to_string())
    })
}

fn rooms(state: ChatState, conn: Connection) -> AnyView {
    let current = current_room();
    // Rooms one has been in, beyond the defaults, for the list; the browser
    // remembers them across reloads (read once the page is interactive, so
    // the first render matches the server's).
    let extra = RwSignal::new(Vec::<String>::new());
    Effect::new(move |_| extra.set(stored::rooms()));
    let remember = move |room: &str| {
        // The stored list is the truth: another tab may have added to it.
        let mut rooms = stored::rooms();
        if !DEFAULT_ROOMS.contains(&room) && !rooms.iter().any(|r| r == room) {
            rooms.push(room.to_string());
            stored::set_rooms(&rooms);
        }
        extra.set(rooms);
    };
    // In the browser: leave the old room and join the new one whenever the
    // URL's room changes.
    Effect::new(move |previous: Option<String>| {
        let room = current.get();
        if previous.as_deref() != Some(room.as_str()) {
            if let Some(previous) = previous {
                conn.leave(&previous);
            }
            conn.join(&room);
            remember(&room);
            state.error.set(None);
        }
        room
    });

    let navigate = use_navigate();
    let switch = Callback::new(move |room: String| {
        if room != current.get_untracked() {
            navigate(&format!("/rooms/{room}"), Default::default());
        }
    });

    let new_room = RwSignal::new(String::new());
    let on_create = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        // Room names are ASCII: anything else is refused below, so ASCII
        // lowercasing is enough (and spares the client the Unicode tables).
        let name = new_room.get_untracked().trim().to_ascii_lowercase();
        if !is_valid_room(&name) {
            state.error.set(Some(format!(
                "Room names are 1 to {MAX_ROOM_NAME} characters of a-z, 0-9, - and _"
            )));
            return;
        }
        new_room.set(String::new());
        switch.run(name);
    };

    let all_rooms = move || {
        let mut names: Vec<String> = DEFAULT_ROOMS.iter().map(|r| r.to_string()).collect();
        names.extend(extra.get());
        names
    };
    let members = move || {
        state
            .rooms
            .with(|rooms| rooms.get(&current.get()).map(|r| r.members.clone()))
            .unwrap_or_default()
    };
    let room = Signal::derive(move || current.get());

    view! {
        <div class="rooms">
            <aside class="room-list">
                <h2>"Rooms"</h2>
                <ul data-testid="room-list">
                    <For
                        each=all_rooms
                        key=|name| name.clone()
                        children=move |name| {
                            let target = name.clone();
                            let is_current = {
                                let name = name.clone();
                                move || current.get() == name
                            };
                            view! {
                                <li>
                                    <button
                                        type="button"
                                        class="room"
                                        aria-current=move || is_current().then_some("true")
                                        on:click=move |_| switch.run(target.clone())
                                    >
                                        "#"{name}
                                    </button>
                                </li>
                            }
                        }
                    />
                </ul>
                <form class="new-room" on:submit=on_create>
                    <label for="new-room">"Join or create"</label>
                    <div class="row">
                        <input
                            id="new-room"
                            data-testid="new-room"
                            placeholder="room-name"
                            maxlength=MAX_ROOM_NAME
                            prop:value=move || new_room.get()
                            on:input=move |ev| new_room.set(event_target_value(&ev))
                        />
                        <button type="submit">"Go"</button>
                    </div>
                </form>
            </aside>
            <div class="chat">
                <h2 data-testid="current-room">"#"{move || current.get()}</h2>
                <MessageList state conn room/>
                <Composer state conn room/>
            </div>
            <aside class="members">
                <h2>"Members"</h2>
                <ul data-testid="members">
                    <For
                        each=members
                        key=|m| m.id.clone()
                        children=|m| {
                            let tag = crate::protocol::user_tag(&m.id);
                            view! {
                                <li>
                                    <span class="member-name">{m.name}</span>
                                    " "
                                    <span class="user-tag">{tag}</span>
                                </li>
                            }
                        }
                    />
                </ul>
            </aside>
        </div>
    }
    .into_any()
}
