//! "Once when it begins, once when it is over": one outage of something the daemon
//! depends on (a store, a service, a connection, a stream), however many failures and
//! retries come between. Plain state over an injected clock; whom to tell (an alert, a
//! report, a log line) is the caller's.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct OutageState {
    /// An outage is told only once it has lasted this long (zero: at its first failure).
    grace: Duration,
    /// The outage under way: when it began, its first error, whether it was told.
    current: Option<Current>,
}

#[derive(Debug, Clone)]
struct Current {
    since: Instant,
    first_error: String,
    told: bool,
}

/// A failure that begins what is to be told now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Began {
    pub first_error: String,
    pub lasted: Duration,
}

/// The end of an outage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub first_error: String,
    pub lasted: Duration,
    /// Whether its beginning was told (and so its end should be).
    pub was_told: bool,
}

impl OutageState {
    /// Tells an outage at its first failure.
    pub fn new() -> Self {
        Self::after(Duration::ZERO)
    }

    /// Tells an outage once it has lasted `grace`: short ones are not worth a word.
    pub fn after(grace: Duration) -> Self {
        Self { grace, current: None }
    }

    /// Whether an outage is under way.
    pub fn is_on(&self) -> bool {
        self.current.is_some()
    }

    /// A failure at `now`; what to tell, once per outage, when it is time.
    pub fn failed(&mut self, error: &dyn std::fmt::Display, now: Instant) -> Option<Began> {
        let current =
            self.current.get_or_insert_with(|| Current { since: now, first_error: error.to_string(), told: false });
        let lasted = now.saturating_duration_since(current.since);
        if current.told || lasted < self.grace {
            return None;
        }
        current.told = true;
        Some(Began { first_error: current.first_error.clone(), lasted })
    }

    /// A success at `now`: the outage that it ends, if one was under way.
    pub fn recovered(&mut self, now: Instant) -> Option<Ended> {
        self.current.take().map(|current| Ended {
            lasted: now.saturating_duration_since(current.since),
            first_error: current.first_error,
            was_told: current.told,
        })
    }
}

impl Default for OutageState {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn told_once_at_the_first_failure_and_once_at_the_end() {
        let start = Instant::now();
        let mut outage = OutageState::new();
        assert_eq!(outage.recovered(start), None);
        let began = outage.failed(&"first", start).expect("told");
        assert_eq!(began.first_error, "first");
        assert_eq!(outage.failed(&"second", start + Duration::from_secs(1)), None);
        assert!(outage.is_on());
        let ended = outage.recovered(start + Duration::from_secs(3)).expect("ended");
        assert_eq!(ended, Ended { first_error: "first".into(), lasted: Duration::from_secs(3), was_told: true });
        assert_eq!(outage.recovered(start + Duration::from_secs(4)), None);
        assert!(outage.failed(&"again", start + Duration::from_secs(5)).is_some(), "a new outage");
    }

    #[test]
    fn with_a_grace_a_short_outage_is_not_told() {
        let start = Instant::now();
        let mut outage = OutageState::after(Duration::from_secs(30));
        assert_eq!(outage.failed(&"refused", start), None);
        assert_eq!(outage.failed(&"refused", start + Duration::from_secs(29)), None);
        let ended = outage.recovered(start + Duration::from_secs(29)).expect("ended");
        assert!(!ended.was_told);

        assert_eq!(outage.failed(&"refused", start + Duration::from_secs(40)), None);
        let began = outage.failed(&"timeout", start + Duration::from_secs(70)).expect("told");
        assert_eq!(began, Began { first_error: "refused".into(), lasted: Duration::from_secs(30) });
        assert_eq!(outage.failed(&"timeout", start + Duration::from_secs(80)), None);
        assert!(outage.recovered(start + Duration::from_secs(90)).expect("ended").was_told);
    }
}
