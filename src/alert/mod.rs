//! Alerts: what went wrong, delivered to Slack by the supervisor, the one process
//! that talks to Slack.
//!
//! Anything may raise an alert through an [`Alerter`]: a bounded queue whose `raise`
//! never waits, so a slow or unreachable Slack can never hold up supervision. The
//! delivery task coalesces identical alerts ([`Coalescer`]) and retries with backoff
//! ([`slack`]). Child processes hand their alerts to the supervisor over their control
//! pipe ([`crate::control`]), which works even when the broker is the thing that is
//! down; the supervisor queues them apart from its own, so a flood of children's
//! alerts can never crowd out its own crash and restart alerts.

mod coalesce;
pub mod slack;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::outage::OutageState;

pub use coalesce::Coalescer;

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
}

/// The sending side of the alert queues; cheap to clone.
#[derive(Clone)]
pub struct Alerter {
    own: mpsc::Sender<Alert>,
    relayed: mpsc::Sender<Alert>,
    dropped: Arc<AtomicU64>,
}

/// The receiving side: this process's own alerts first, then those relayed from
/// children, each queue bounded on its own.
pub struct AlertQueue {
    own: mpsc::Receiver<Alert>,
    relayed: mpsc::Receiver<Alert>,
}

impl Alerter {
    /// Queues of `capacity` alerts each: this process's own, and children's.
    pub fn channel(capacity: usize) -> (Self, AlertQueue) {
        let (own, own_receiver) = mpsc::channel(capacity);
        let (relayed, relayed_receiver) = mpsc::channel(capacity);
        let alerter = Self { own, relayed, dropped: Arc::new(AtomicU64::new(0)) };
        (alerter, AlertQueue { own: own_receiver, relayed: relayed_receiver })
    }

    /// Queues an alert of this process without waiting. When the queue is full the
    /// alert is logged and dropped: supervision matters more than the message about it.
    pub fn raise(&self, alert: Alert) {
        warn!(source = alert.source, detail = alert.detail, "alert: {}", alert.title);
        self.enqueue(&self.own, alert);
    }

    /// Queues good news (a start, a recovery) as [`Alerter::raise`] does, logged at
    /// INFO: it is no warning.
    pub fn announce(&self, alert: Alert) {
        info!(source = alert.source, detail = alert.detail, "alert: {}", alert.title);
        self.enqueue(&self.own, alert);
    }

    /// Alerts dropped so far for a full queue.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queues an alert a child raised (and logged itself), in the children's queue.
    pub fn relay(&self, alert: Alert) {
        self.enqueue(&self.relayed, alert);
    }

    fn enqueue(&self, queue: &mpsc::Sender<Alert>, alert: Alert) {
        if let Err(err) = queue.try_send(alert) {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            warn!(dropped_total = dropped, "alert not queued for Slack: {err}");
        }
    }
}

impl AlertQueue {
    /// The next alert, this process's own before any relayed one; `None` once both
    /// queues are closed and empty.
    pub async fn recv(&mut self) -> Option<Alert> {
        tokio::select! {
            biased;
            Some(alert) = self.own.recv() => Some(alert),
            Some(alert) = self.relayed.recv() => Some(alert),
            else => None,
        }
    }

    /// Stops taking alerts; those queued can still be received.
    pub fn close(&mut self) {
        self.own.close();
        self.relayed.close();
    }
}

/// Alerts for the outages of something the daemon depends on (a store, a service, a
/// connection): once when one begins and once when it is over ([`OutageState`]).
pub struct Outage {
    alerter: Alerter,
    source: &'static str,
    state: OutageState,
}

impl Outage {
    pub fn new(alerter: Alerter, source: &'static str) -> Self {
        Self { alerter, source, state: OutageState::new() }
    }

    /// A failure: the first of an outage raises `title` with the error.
    pub fn failed(&mut self, title: &str, error: &dyn std::fmt::Display) {
        if let Some(began) = self.state.failed(error, std::time::Instant::now()) {
            self.alerter.raise(Alert::new(self.source, title, began.first_error));
        }
    }

    /// A success: ends an outage, announcing `title` with what had gone wrong.
    pub fn recovered(&mut self, title: &str) {
        if let Some(ended) = self.state.recovered(std::time::Instant::now()) {
            self.alerter.announce(Alert::new(self.source, title, format!("after: {}", ended.first_error)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_outage_is_alerted_once_and_its_end_once() {
        let (alerter, mut queue) = Alerter::channel(8);
        let mut outage = Outage::new(alerter.clone(), "processor");
        outage.recovered("back");
        outage.failed("down", &"first error");
        outage.failed("down", &"second error");
        outage.recovered("back");
        outage.recovered("back");
        drop((alerter, outage));
        let mut alerts = Vec::new();
        while let Some(alert) = queue.recv().await {
            alerts.push((alert.title, alert.detail));
        }
        assert_eq!(alerts, [("down".into(), "first error".into()), ("back".into(), "after: first error".into())]);
    }

    #[tokio::test]
    async fn a_full_queue_drops_instead_of_blocking() {
        let (alerter, mut receiver) = Alerter::channel(1);
        alerter.raise(Alert::new("a", "first", ""));
        alerter.raise(Alert::new("a", "second", ""));
        assert_eq!(alerter.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(receiver.recv().await.unwrap().title, "first");
    }

    #[tokio::test]
    async fn own_alerts_pass_a_full_queue_of_relayed_ones() {
        let (alerter, mut queue) = Alerter::channel(2);
        for n in 0..5 {
            alerter.relay(Alert::new("processor", format!("forged {n}"), ""));
        }
        alerter.raise(Alert::new("supervisor", "processor exited unexpectedly", ""));
        assert_eq!(queue.recv().await.unwrap().title, "processor exited unexpectedly");
        assert_eq!(queue.recv().await.unwrap().title, "forged 0");
        assert_eq!(alerter.dropped.load(Ordering::Relaxed), 3);
    }
}
