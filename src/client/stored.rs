//! What the browser remembers across reloads (local storage); on the server,
//! nothing.

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
