//! The one rule for telling a live connection from a dead one: every
//! connection of the page (the feed's and the dashboard's streams, the chat
//! socket, the chat's fallback stream) hears from its server at least every
//! interval — an event, a heartbeat, a pong — and one silent for twice that
//! is dead, even if the browser still calls it open (a NAT or a proxy
//! dropped it, the server froze).

/// Shortest interval taken from a server, in ms.
const MIN_INTERVAL_MS: f64 = 1_000.0;

/// When a connection was last heard from, and how often it should be.
pub struct Liveness {
    /// The last sign of life (ms since the epoch).
    heard_at: f64,
    /// The promised interval, in ms (`None`: not known yet).
    interval_ms: Option<f64>,
    /// The interval to assume until the server says.
    default_ms: f64,
}

impl Liveness {
    /// A connection heard from now, assumed to speak every `default_ms`
    /// until it says how often it does (`f64::INFINITY`: not dead by
    /// silence until then).
    pub fn new(default_ms: f64) -> Liveness {
        Liveness {
            heard_at: js_sys::Date::now(),
            interval_ms: None,
            default_ms,
        }
    }

    /// A sign of life.
    pub fn heard(&mut self) {
        self.heard_at = js_sys::Date::now();
    }

    /// The server promises something at least every `ms`.
    pub fn set_interval(&mut self, ms: f64) {
        self.interval_ms = Some(ms.max(MIN_INTERVAL_MS));
    }

    /// The interval in force, in ms.
    pub fn interval_ms(&self) -> f64 {
        self.interval_ms.unwrap_or(self.default_ms)
    }

    /// Whether the connection has been silent for twice its interval.
    pub fn dead(&self) -> bool {
        js_sys::Date::now() - self.heard_at > 2.0 * self.interval_ms()
    }
}
