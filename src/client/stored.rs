//! What the browser remembers across reloads (local storage); on the server,
//! nothing: the rooms one has been in, and one's own messages not yet sent.
//!
//! Unsent messages are kept per tab (`pulse.sends.<user>.<tab>`, the tab's
//! id kept in session storage, so a reload is the same tab), with when the
//! tab last said they are its own. A tab that starts takes over its own and
//! those of tabs silent for a while (closed): sending one twice is harmless,
//! the server publishes a `client_id` once.

/// Local storage key of the rooms one has been in beyond the defaults.
#[cfg(feature = "hydrate")]
const ROOMS_KEY: &str = "pulse.rooms";

/// Rooms that are remembered at most (the oldest are forgotten first).
pub const MAX_REMEMBERED_ROOMS: usize = 20;

/// The rooms remembered, oldest first (only valid room names).
pub fn rooms() -> Vec<String> {
    #[cfg(feature = "hydrate")]
    {
        let text = storage().and_then(|s| s.get_item(ROOMS_KEY).ok().flatten());
        let mut rooms: Vec<String> = text
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        rooms.retain(|r| crate::protocol::is_valid_room(r));
        rooms.truncate(MAX_REMEMBERED_ROOMS);
        rooms
    }
    #[cfg(not(feature = "hydrate"))]
    {
        Vec::new()
    }
}

/// Remembers `rooms` (the newest [`MAX_REMEMBERED_ROOMS`]).
pub fn set_rooms(rooms: &[String]) {
    #[cfg(feature = "hydrate")]
    {
        let newest = &rooms[rooms.len().saturating_sub(MAX_REMEMBERED_ROOMS)..];
        if let (Some(storage), Ok(text)) = (storage(), serde_json::to_string(newest)) {
            // A full or disabled storage only means the list is not remembered.
            let _ = storage.set_item(ROOMS_KEY, &text);
        }
    }
    #[cfg(not(feature = "hydrate"))]
    let _ = rooms;
}

#[cfg(feature = "hydrate")]
fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok().flatten()
}

/// Unsent messages of a tab silent this long are another tab's to send.
#[cfg(feature = "hydrate")]
const ORPHANED_MS: f64 = 15_000.0;

/// What a tab keeps of its unsent messages.
#[cfg(feature = "hydrate")]
#[derive(serde::Serialize, serde::Deserialize)]
struct KeptSends {
    /// When the tab last said so (ms since the epoch).
    at: f64,
    /// The messages, oldest first.
    kept: Vec<crate::client::sends::Kept>,
}

#[cfg(feature = "hydrate")]
fn sends_prefix(user: &str) -> String {
    format!("pulse.sends.{user}.")
}

/// This tab's id, the same across its reloads.
#[cfg(feature = "hydrate")]
fn tab() -> String {
    const TAB_KEY: &str = "pulse.tab";
    let session = web_sys::window().and_then(|w| w.session_storage().ok().flatten());
    if let Some(id) = session
        .as_ref()
        .and_then(|s| s.get_item(TAB_KEY).ok().flatten())
    {
        return id;
    }
    let id = super::tabs::tab_id();
    if let Some(s) = session {
        let _ = s.set_item(TAB_KEY, &id);
    }
    id
}

/// Keeps `kept` as this tab's unsent messages of `user`.
#[cfg(feature = "hydrate")]
pub fn keep_sends(user: &str, kept: &[crate::client::sends::Kept]) {
    let Some(storage) = storage() else { return };
    let key = format!("{}{}", sends_prefix(user), tab());
    if kept.is_empty() {
        let _ = storage.remove_item(&key);
        return;
    }
    let value = KeptSends {
        at: js_sys::Date::now(),
        kept: kept.to_vec(),
    };
    if let Ok(text) = serde_json::to_string(&value) {
        // A full or disabled storage only means a reload would lose them.
        let _ = storage.set_item(&key, &text);
    }
}

/// The unsent messages of `user` this tab is to send: its own (from
/// before a reload), and those of tabs that have gone (taken over: their
/// keys go).
#[cfg(feature = "hydrate")]
pub fn kept_sends(user: &str) -> Vec<crate::client::sends::Kept> {
    let Some(storage) = storage() else {
        return Vec::new();
    };
    let prefix = sends_prefix(user);
    let own = format!("{prefix}{}", tab());
    let keys: Vec<String> = (0..storage.length().unwrap_or(0))
        .filter_map(|i| storage.key(i).ok().flatten())
        .filter(|k| k.starts_with(&prefix))
        .collect();
    let now = js_sys::Date::now();
    let mut taken = Vec::new();
    for key in keys {
        let Some(value) = storage
            .get_item(&key)
            .ok()
            .flatten()
            .and_then(|t| serde_json::from_str::<KeptSends>(&t).ok())
        else {
            let _ = storage.remove_item(&key);
            continue;
        };
        if key == own || now - value.at > ORPHANED_MS {
            taken.extend(value.kept);
            if key != own {
                let _ = storage.remove_item(&key);
            }
        }
    }
    taken
}
