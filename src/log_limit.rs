//! Rate limits for log lines that the network can cause at will: a flood of garbage
//! commands or unreadable appliance states must not fill the disk with a line each.
//! Every message is still answered; only its log line is limited. Plain data over an
//! injected `now`, tested without a clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Lines of one kind logged per window before the rest are only counted.
pub const BURST: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Kinds tracked at once; past this, the oldest windows are forgotten.
const KINDS_KEPT: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log this line; `suppressed_before` lines of its kind went unlogged in the window
    /// that just ended (say so with it).
    Log {
        suppressed_before: u64,
    },
    Suppress,
}

struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

pub struct LogLimiter {
    burst: u32,
    window: Duration,
    kinds: HashMap<String, Window>,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new(BURST, WINDOW)
    }
}

impl LogLimiter {
    pub fn new(burst: u32, window: Duration) -> Self {
        Self { burst, window, kinds: HashMap::new() }
    }

    /// Whether a line of `kind` may be logged at `now`.
    pub fn check(&mut self, kind: &str, now: Instant) -> Verdict {
        if let Some(window) = self.kinds.get_mut(kind) {
            if now.duration_since(window.started) < self.window {
                if window.logged < self.burst {
                    window.logged += 1;
                    return Verdict::Log { suppressed_before: 0 };
                }
                window.suppressed += 1;
                return Verdict::Suppress;
            }
            let suppressed_before = window.suppressed;
            *window = Window { started: now, logged: 1, suppressed: 0 };
            return Verdict::Log { suppressed_before };
        }
        if self.kinds.len() >= KINDS_KEPT {
            let window = self.window;
            self.kinds.retain(|_, open| now.duration_since(open.started) < window);
        }
        self.kinds.insert(kind.to_owned(), Window { started: now, logged: 1, suppressed: 0 });
        Verdict::Log { suppressed_before: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_logged_the_rest_counted_and_reported_with_the_next_window() {
        let mut limiter = LogLimiter::new(2, Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(limiter.check("not_json", start), Verdict::Log { suppressed_before: 0 });
        assert_eq!(limiter.check("not_json", start), Verdict::Log { suppressed_before: 0 });
        for _ in 0..5 {
            assert_eq!(limiter.check("not_json", start + Duration::from_secs(1)), Verdict::Suppress);
        }
        assert_eq!(limiter.check("other", start), Verdict::Log { suppressed_before: 0 }, "kinds are apart");
        assert_eq!(limiter.check("not_json", start + Duration::from_secs(61)), Verdict::Log { suppressed_before: 5 });
        assert_eq!(limiter.check("not_json", start + Duration::from_secs(62)), Verdict::Log { suppressed_before: 0 });
    }

    #[test]
    fn the_kinds_kept_are_bounded() {
        let mut limiter = LogLimiter::default();
        let start = Instant::now();
        for n in 0..1000 {
            limiter.check(&n.to_string(), start + WINDOW * n);
        }
        assert!(limiter.kinds.len() <= KINDS_KEPT);
    }
}
