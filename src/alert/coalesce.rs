//! Coalescing of repeated alerts: a crash loop is one message and a count, not a
//! message per crash. Plain data over an injected `now`, so it is tested without a clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::Alert;

struct Window {
    closes_at: Instant,
    suppressed: u32,
    latest: Alert,
}

/// The first alert with a given source and title goes out at once and opens a window;
/// copies within the window are counted, and when it closes one summary with the count
/// and the latest detail goes out.
pub struct Coalescer {
    window: Duration,
    open: HashMap<(String, String), Window>,
}

impl Coalescer {
    pub fn new(window: Duration) -> Self {
        Self { window, open: HashMap::new() }
    }

    /// The alerts to send now: this one, unless it was folded into an open window,
    /// preceded by the summary of its expired window if that one is still pending.
    pub fn offer(&mut self, alert: Alert, now: Instant) -> Vec<Alert> {
        let key = alert.coalesce_key();
        let mut to_send = Vec::new();
        if let Some(window) = self.open.get_mut(&key) {
            if now < window.closes_at {
                window.suppressed += 1;
                window.latest = alert;
                return to_send;
            }
            if let Some(window) = self.open.remove(&key) {
                to_send.extend(self.summary(window));
            }
        }
        self.open.insert(key, Window { closes_at: now + self.window, suppressed: 0, latest: alert.clone() });
        to_send.push(alert);
        to_send
    }

    /// Closes the windows that are over; returns a summary for each that folded copies.
    pub fn close_due(&mut self, now: Instant) -> Vec<Alert> {
        let due: Vec<_> =
            self.open.iter().filter(|(_, window)| window.closes_at <= now).map(|(key, _)| key.clone()).collect();
        let closed: Vec<Window> = due.into_iter().filter_map(|key| self.open.remove(&key)).collect();
        closed.into_iter().filter_map(|window| self.summary(window)).collect()
    }

    fn summary(&self, window: Window) -> Option<Alert> {
        if window.suppressed == 0 {
            return None;
        }
        let mut summary = window.latest;
        summary.title = format!("{} (×{} more in {} s)", summary.title, window.suppressed, self.window.as_secs());
        Some(summary)
    }

    /// When the next window closes, if any is open.
    pub fn next_close(&self) -> Option<Instant> {
        self.open.values().map(|window| window.closes_at).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(title: &str, detail: &str) -> Alert {
        Alert::new("supervisor", title, detail)
    }

    #[test]
    fn copies_within_the_window_become_one_summary_with_a_count() {
        let start = Instant::now();
        let mut coalescer = Coalescer::new(Duration::from_secs(60));
        assert_eq!(coalescer.offer(alert("processor exited", "pid 1"), start).len(), 1);
        for (second, pid) in [(1, 2), (2, 3), (30, 4)] {
            let now = start + Duration::from_secs(second);
            assert!(coalescer.offer(alert("processor exited", &format!("pid {pid}")), now).is_empty());
        }
        assert!(coalescer.close_due(start + Duration::from_secs(59)).is_empty());
        assert_eq!(coalescer.next_close(), Some(start + Duration::from_secs(60)));

        let summaries = coalescer.close_due(start + Duration::from_secs(60));
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].title, "processor exited (×3 more in 60 s)");
        assert_eq!(summaries[0].detail, "pid 4");
        assert_eq!(coalescer.next_close(), None);
    }

    #[test]
    fn different_titles_or_sources_are_not_folded() {
        let now = Instant::now();
        let mut coalescer = Coalescer::new(Duration::from_secs(60));
        assert_eq!(coalescer.offer(alert("processor exited", ""), now).len(), 1);
        assert_eq!(coalescer.offer(alert("syncer exited", ""), now).len(), 1);
        assert_eq!(coalescer.offer(Alert::new("processor", "processor exited", ""), now).len(), 1);
    }

    #[test]
    fn a_lone_alert_closes_without_a_summary_and_the_next_one_goes_out() {
        let start = Instant::now();
        let mut coalescer = Coalescer::new(Duration::from_secs(10));
        assert_eq!(coalescer.offer(alert("x", ""), start).len(), 1);
        assert!(coalescer.close_due(start + Duration::from_secs(10)).is_empty());
        assert_eq!(coalescer.offer(alert("x", ""), start + Duration::from_secs(11)).len(), 1);
    }

    #[test]
    fn an_expired_window_not_yet_closed_yields_its_summary_then_the_new_alert() {
        let start = Instant::now();
        let mut coalescer = Coalescer::new(Duration::from_secs(10));
        coalescer.offer(alert("x", "1"), start);
        coalescer.offer(alert("x", "2"), start + Duration::from_secs(1));
        let late = coalescer.offer(alert("x", "3"), start + Duration::from_secs(12));
        let shown: Vec<_> = late.iter().map(|a| (a.title.as_str(), a.detail.as_str())).collect();
        assert_eq!(shown, [("x (×1 more in 10 s)", "2"), ("x", "3")]);
    }
}
