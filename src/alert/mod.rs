//! Alerts: what went wrong, delivered to Slack by the supervisor, the one process
//! that talks to Slack.
//!
//! Anything may raise an alert through an [`Alerter`]: a bounded queue whose `raise`
//! never waits, so a slow or unreachable Slack can never hold up supervision. The
//! delivery task coalesces identical alerts ([`Coalescer`]) and retries with backoff
//! ([`slack`]). Child processes hand their alerts to the supervisor as one marked
//! line on stderr ([`Alert::to_child_line`]), which works even when the broker is the
//! thing that is down.

mod coalesce;
pub mod slack;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::warn;

pub use coalesce::Coalescer;

/// Marks a line of child output as an alert for the supervisor.
const CHILD_LINE_PREFIX: &str = "@smarthomed-alert ";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// The process or part that raised it: "supervisor", "processor", ...
    pub source: String,
    /// One line; alerts with the same source and title are "the same" for coalescing,
    /// so keep pids, counters and times out of it and put them in `detail`.
    pub title: String,
    pub detail: String,
}

impl Alert {
    pub fn new(source: impl Into<String>, title: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { source: source.into(), title: title.into(), detail: detail.into() }
    }

    fn coalesce_key(&self) -> (String, String) {
        (self.source.clone(), self.title.clone())
    }

    /// The line a child writes to stderr to raise this alert.
    pub fn to_child_line(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_else(|_| {
            format!("{{\"source\":\"{}\",\"title\":\"unencodable alert\",\"detail\":\"\"}}", self.source)
        });
        format!("{CHILD_LINE_PREFIX}{json}")
    }

    /// Reads an alert line written by a child; `None` for ordinary output.
    pub fn from_child_line(line: &str) -> Option<Self> {
        serde_json::from_str(line.strip_prefix(CHILD_LINE_PREFIX)?).ok()
    }
}

/// Raises an alert from a child process: the supervisor reads it from our stderr.
pub fn report_to_supervisor(alert: &Alert) {
    let line = alert.to_child_line();
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{line}");
}

/// The sending side of the alert queue; cheap to clone.
#[derive(Clone)]
pub struct Alerter {
    queue: mpsc::Sender<Alert>,
    dropped: Arc<AtomicU64>,
}

impl Alerter {
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<Alert>) {
        let (queue, receiver) = mpsc::channel(capacity);
        let alerter = Self { queue, dropped: Arc::new(AtomicU64::new(0)) };
        (alerter, receiver)
    }

    /// Queues an alert without waiting. When the queue is full the alert is logged
    /// and dropped: supervision matters more than the message about it.
    pub fn raise(&self, alert: Alert) {
        warn!(source = alert.source, detail = alert.detail, "alert: {}", alert.title);
        if let Err(err) = self.queue.try_send(alert) {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            warn!(dropped_total = dropped, "alert not queued for Slack: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_lines_round_trip_and_other_lines_are_not_alerts() {
        let alert = Alert::new("processor", "lost the MQTT broker", "connection refused\nline two");
        let line = alert.to_child_line();
        assert!(!line.contains('\n'));
        assert_eq!(Alert::from_child_line(&line), Some(alert));
        assert_eq!(Alert::from_child_line("INFO processor: connected"), None);
        assert_eq!(Alert::from_child_line("@smarthomed-alert {not json"), None);
    }

    #[tokio::test]
    async fn a_full_queue_drops_instead_of_blocking() {
        let (alerter, mut receiver) = Alerter::channel(1);
        alerter.raise(Alert::new("a", "first", ""));
        alerter.raise(Alert::new("a", "second", ""));
        assert_eq!(alerter.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(receiver.recv().await.unwrap().title, "first");
    }
}
