//! How the browser clients (feed and chat) space their reconnection attempts:
//! exponential backoff with full jitter, capped, as one rule for both.

/// First step of the backoff, in milliseconds.
const BASE_MS: f64 = 500.0;
/// Longest wait between two attempts, in milliseconds.
pub const MAX_MS: f64 = 10_000.0;

/// The wait before attempt number `attempt` (0 for the first retry), given a
/// uniform `random` in `[0, 1)`: anywhere up to `500 ms × 2^attempt`, capped.
pub fn delay_ms(attempt: u32, random: f64) -> f64 {
    random * (BASE_MS * 2f64.powi(attempt.min(10) as i32)).min(MAX_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        assert_eq!(delay_ms(0, 1.0), 500.0);
        assert_eq!(delay_ms(3, 1.0), 4000.0);
        assert_eq!(delay_ms(30, 1.0), MAX_MS);
        assert_eq!(delay_ms(5, 0.0), 0.0);
    }
}
