//! The one connection state every page shows, and its badge.

use leptos::prelude::*;

/// A connection as the user sees it; told by text, colour only adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ConnState {
    /// Opening (also what the server renders).
    Connecting,
    /// Open: events flow, sending is possible.
    Live,
    /// Open, but this server cannot reach the other servers: only the people
    /// connected to it hear what is said.
    LiveAlone,
    /// Waiting this many seconds before the next attempt.
    Reconnecting(u32),
    /// Trying again after a failure (the attempt is under way).
    Retrying,
    /// The browser is offline: waiting for the network to come back.
    Offline,
    /// Not connected and not trying (signed out, or the session ended).
    Stopped,
}

impl ConnState {
    /// Whether the connection is open (sending is possible).
    pub fn is_live(self) -> bool {
        matches!(self, ConnState::Live | ConnState::LiveAlone)
    }

    /// Text of the badge.
    pub fn label(self) -> String {
        match self {
            ConnState::Connecting => "Connecting…".into(),
            ConnState::Live => "Live".into(),
            ConnState::LiveAlone => "Live · other servers unreachable".into(),
            ConnState::Reconnecting(s) => format!("Reconnecting in {s} s"),
            ConnState::Retrying => "Reconnecting…".into(),
            ConnState::Offline => "Offline".into(),
            ConnState::Stopped => "Disconnected".into(),
        }
    }

    /// What a screen reader is told: the state without the countdown, so
    /// that it speaks when the state changes, not every second.
    pub fn announcement(self) -> &'static str {
        match self {
            ConnState::Connecting => "Connecting",
            ConnState::Live => "Live",
            ConnState::LiveAlone => "Live, other servers unreachable",
            ConnState::Reconnecting(_) | ConnState::Retrying => "Reconnecting",
            ConnState::Offline => "Offline",
            ConnState::Stopped => "Disconnected",
        }
    }

    /// CSS classes of the badge.
    pub fn class(self) -> &'static str {
        match self {
            ConnState::Live => "badge badge-live",
            ConnState::LiveAlone => "badge badge-degraded",
            ConnState::Connecting => "badge badge-connecting",
            ConnState::Reconnecting(_) | ConnState::Retrying => "badge badge-reconnecting",
            ConnState::Offline | ConnState::Stopped => "badge badge-offline",
        }
    }
}

/// The connection badge: `testid` names its visible text for tests
/// (`feed-status`, …). The countdown is shown, but only the state is
/// announced.
#[component]
pub fn StatusBadge(state: RwSignal<ConnState>, testid: &'static str) -> impl IntoView {
    view! {
        <p class=move || state.get().class() role="status" aria-live="polite">
            <span aria-hidden="true" data-testid=testid>{move || state.get().label()}</span>
            <span class="visually-hidden">{move || state.get().announcement()}</span>
        </p>
    }
}
