//! Page `/rooms`: Socket.IO-style rooms. The room list (the default rooms,
//! plus any other one can create by joining it), the current room's stream
//! with join and leave notices, and its members, live.

use leptos::prelude::*;

use crate::chat::{ChatGate, ChatState, Composer, Connection, MessageList};
use crate::protocol::{is_valid_room, DEFAULT_ROOMS, MAX_ROOM_NAME};

/// The Rooms page.
#[component]
pub fn RoomsPage() -> impl IntoView {
    view! {
        <section class="page rooms-page">
            <h1>"Rooms"</h1>
            <ChatGate body=rooms/>
        </section>
    }
}

fn rooms(state: ChatState, conn: Connection) -> AnyView {
    let current = RwSignal::new(DEFAULT_ROOMS[0].to_string());
    // Rooms one has visited, beyond the defaults, for the list.
    let extra = RwSignal::new(Vec::<String>::new());
    conn.join(&current.get_untracked());

    let switch = move |room: String| {
        let old = current.get_untracked();
        if old == room {
            return;
        }
        conn.leave(&old);
        conn.join(&room);
        if !DEFAULT_ROOMS.contains(&room.as_str()) {
            extra.update(|e| {
                if !e.contains(&room) {
                    e.push(room.clone());
                }
            });
        }
        state.error.set(None);
        current.set(room);
    };

    let new_room = RwSignal::new(String::new());
    let on_create = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let name = new_room.get_untracked().trim().to_lowercase();
        if !is_valid_room(&name) {
            state.error.set(Some(format!(
                "Room names are 1 to {MAX_ROOM_NAME} characters of a-z, 0-9, - and _"
            )));
            return;
        }
        new_room.set(String::new());
        switch(name);
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
                                        on:click=move |_| switch(target.clone())
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
                <MessageList state room/>
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
