//! Exponential backoff, shared by everything that retries: child restarts, MQTT
//! reconnects and Slack deliveries.
//!
//! Plain data and arithmetic, no clock: callers decide when to sleep, which keeps the
//! policy unit-testable and lets each caller use its own timer.

use std::time::Duration;

/// Doubles a delay from `initial` up to `max`; `reset` starts over.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// `max` below `initial` is treated as `initial`, so the delay never shrinks.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let max = max.max(initial);
        Self { initial, max, next: initial }
    }

    /// The delay to wait now; the one after it is twice as long, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let mut backoff = Backoff::new(secs(1), secs(10));
        let delays: Vec<_> = (0..6).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays, [secs(1), secs(2), secs(4), secs(8), secs(10), secs(10)]);
    }

    #[test]
    fn reset_starts_over() {
        let mut backoff = Backoff::new(secs(1), secs(60));
        backoff.next_delay();
        backoff.next_delay();
        assert_eq!(backoff.clone().next_delay(), secs(4));
        backoff.reset();
        assert_eq!(backoff.next_delay(), secs(1));
    }

    #[test]
    fn cap_below_initial_keeps_initial() {
        let mut backoff = Backoff::new(secs(5), secs(1));
        assert_eq!(backoff.next_delay(), secs(5));
        assert_eq!(backoff.next_delay(), secs(5));
    }

    #[test]
    fn huge_delays_saturate_instead_of_overflowing() {
        let mut backoff = Backoff::new(Duration::MAX / 2 + Duration::from_secs(1), Duration::MAX);
        backoff.next_delay();
        assert_eq!(backoff.next_delay(), Duration::MAX);
    }
}
