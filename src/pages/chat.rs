//! Page `/chat`: the `general` room, as in the tutorial: messages with user,
//! text and local time, an input that sends on Enter, and the connection
//! status.

use leptos::prelude::*;
use leptos_meta::Title;

use crate::chat_view::{ChatGate, ChatState, Composer, Connection, MessageList};

/// The room this page talks in.
const ROOM: &str = "general";

/// The Chat page.
#[component]
pub fn ChatPage() -> impl IntoView {
    view! {
        <section class="page chat-page">
            <Title text="Chat"/>
            <h1>"Chat"</h1>
            <ChatGate body=general/>
        </section>
    }
}

fn general(state: ChatState, conn: Connection) -> AnyView {
    conn.join(ROOM);
    let room = Signal::derive(|| ROOM.to_string());
    view! {
        <div class="chat">
            <h2 data-testid="current-room">"#"{ROOM}</h2>
            <MessageList state conn room/>
            <Composer state conn room/>
        </div>
    }
    .into_any()
}
