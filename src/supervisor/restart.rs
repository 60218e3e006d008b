//! When to restart a child that exited, in the manner of an OTP supervisor: after a
//! backoff that doubles with each quick crash, and never more than a set number of
//! times within a sliding window (the restart intensity). Past that limit restarting
//! is not helping, and the supervisor gives up (see `supervisor::run`).
//!
//! Plain data over an injected `now`: unit-tested without processes or clocks.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::config::SupervisorConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    RestartAfter(Duration),
    LimitHit { restarts: usize, window: Duration },
}

#[derive(Debug)]
pub struct RestartPolicy {
    backoff: Backoff,
    healthy_after: Duration,
    limit: usize,
    window: Duration,
    restarts: VecDeque<Instant>,
}

impl RestartPolicy {
    pub fn new(config: &SupervisorConfig) -> Self {
        Self {
            backoff: Backoff::new(config.backoff_initial(), config.backoff_max()),
            healthy_after: config.healthy_after(),
            limit: config.restart_limit as usize,
            window: config.restart_window(),
            restarts: VecDeque::new(),
        }
    }

    /// The child ran for `uptime` and exited at `now`: restart it, and when?
    pub fn on_exit(&mut self, uptime: Duration, now: Instant) -> Decision {
        if uptime >= self.healthy_after {
            self.backoff.reset();
        }
        while self.restarts.front().is_some_and(|&at| now.duration_since(at) >= self.window) {
            self.restarts.pop_front();
        }
        if self.restarts.len() >= self.limit {
            return Decision::LimitHit { restarts: self.restarts.len(), window: self.window };
        }
        self.restarts.push_back(now);
        Decision::RestartAfter(self.backoff.next_delay())
    }

    /// Restarts so far within the current window.
    pub fn recent_restarts(&self) -> usize {
        self.restarts.len()
    }

    pub fn healthy_after(&self) -> Duration {
        self.healthy_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(limit: u32, window_secs: u64) -> RestartPolicy {
        RestartPolicy::new(&SupervisorConfig {
            backoff_initial_ms: 1_000,
            backoff_max_ms: 8_000,
            healthy_after_secs: 60,
            restart_limit: limit,
            restart_window_secs: window_secs,
            ..SupervisorConfig::default()
        })
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn quick_crashes_back_off_exponentially_up_to_the_cap() {
        let mut policy = policy(100, 3600);
        let start = Instant::now();
        let delays: Vec<_> = (0..6).map(|i| policy.on_exit(secs(1), start + secs(i * 10))).collect();
        let expected: Vec<_> = [1, 2, 4, 8, 8, 8].into_iter().map(|s| Decision::RestartAfter(secs(s))).collect();
        assert_eq!(delays, expected);
    }

    #[test]
    fn a_healthy_run_resets_the_backoff() {
        let mut policy = policy(100, 3600);
        let start = Instant::now();
        policy.on_exit(secs(1), start);
        policy.on_exit(secs(1), start + secs(5));
        assert_eq!(policy.on_exit(secs(60), start + secs(100)), Decision::RestartAfter(secs(1)));
    }

    #[test]
    fn more_than_the_limit_within_the_window_gives_up() {
        let mut policy = policy(3, 60);
        let start = Instant::now();
        for i in 0..3 {
            assert!(matches!(policy.on_exit(secs(1), start + secs(i)), Decision::RestartAfter(_)));
        }
        assert_eq!(policy.on_exit(secs(1), start + secs(3)), Decision::LimitHit { restarts: 3, window: secs(60) });
    }

    #[test]
    fn restarts_older_than_the_window_no_longer_count() {
        let mut policy = policy(2, 60);
        let start = Instant::now();
        policy.on_exit(secs(1), start);
        policy.on_exit(secs(1), start + secs(30));
        assert_eq!(policy.recent_restarts(), 2);
        assert!(matches!(policy.on_exit(secs(1), start + secs(60)), Decision::RestartAfter(_)));
        assert_eq!(policy.recent_restarts(), 2);
        assert!(matches!(policy.on_exit(secs(1), start + secs(61)), Decision::LimitHit { .. }));
    }
}
