//! The control channel from a child process to its supervisor: alerts and heartbeats.
//!
//! It is a pipe of its own (file descriptor [`CHILD_FD`] in the child), apart from the
//! child's log output. Logs carry user data (schedule titles, UIDs, payloads); were
//! alerts marked lines among them, a newline in a schedule title could forge one. On a
//! pipe that only this module writes, nothing a child logs can pose as an alert or a
//! heartbeat. Each message is one JSON line ([`ControlMessage`]).
//!
//! Heartbeats prove that a child's runtime still turns: a child stopped (SIGSTOP),
//! deadlocked or starved of its threads goes silent, and the supervisor restarts it.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::alert::{Alert, AlertQueue};

/// The descriptor the control pipe has in a child.
pub const CHILD_FD: RawFd = 3;
/// Set by the supervisor in a child's environment: the control pipe is open on
/// [`CHILD_FD`]. A child run by hand has no supervisor to talk to.
pub const FD_ENV: &str = "SMARTHOMED_CONTROL_FD";

/// One line on the control pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    Alert(Alert),
    /// Alive; with the child's metrics when they are collected (`[metrics] listen`).
    Heartbeat {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metrics: Option<String>,
    },
}

impl ControlMessage {
    /// The line, newline included; JSON escapes every newline inside it.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_else(|err| {
            serde_json::to_string(&ControlMessage::Alert(Alert::new("control", "unencodable alert", err.to_string())))
                .unwrap_or_default()
        });
        line.push('\n');
        line
    }

    pub fn from_line(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line)
    }
}

/// How often a child sends a heartbeat for a supervisor that waits `timeout` for one:
/// four chances before it counts as hung.
pub fn heartbeat_interval(timeout: Duration) -> Duration {
    (timeout / 4).max(Duration::from_millis(100))
}

/// The child's end of the control pipe, if the supervisor opened one.
pub fn child_end() -> io::Result<Option<pipe::Sender>> {
    if std::env::var(FD_ENV).ok().as_deref() != Some(&CHILD_FD.to_string()) {
        return Ok(None);
    }
    // SAFETY: the supervisor opened the pipe on CHILD_FD before exec and said so in
    // FD_ENV; nothing else in this process owns that descriptor, and this is its only
    // caller that takes it (ChildContext, once per process).
    #[allow(unsafe_code)]
    let fd = unsafe { OwnedFd::from_raw_fd(CHILD_FD) };
    pipe::Sender::from_owned_fd(fd).map(Some)
}

/// Forwards the child's alerts and sends a heartbeat every `interval` until `shutdown`,
/// then forwards the alerts still queued. It runs whether or not the child's job keeps
/// an [`crate::alert::Alerter`]: a job that raises no alert (the broker's) is alive all
/// the same. Without a pipe the alerts have been logged already by the alerter, and no
/// one waits for heartbeats.
pub async fn run_child_end(
    mut pipe: Option<pipe::Sender>,
    mut alerts: AlertQueue,
    interval: Duration,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) {
    let mut heartbeat = tokio::time::interval(interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut alerts_open = true;
    loop {
        let message = tokio::select! {
            alert = alerts.recv(), if alerts_open => match alert {
                Some(alert) => ControlMessage::Alert(alert),
                None => {
                    alerts_open = false;
                    continue;
                }
            },
            _ = heartbeat.tick(), if pipe.is_some() => {
                ControlMessage::Heartbeat { metrics: metrics.as_ref().map(PrometheusHandle::render) }
            }
            () = shutdown.cancelled() => {
                alerts.close();
                while let Some(alert) = alerts.recv().await {
                    if let Some(writer) = pipe.as_mut() {
                        let _ = writer.write_all(ControlMessage::Alert(alert).to_line().as_bytes()).await;
                    }
                }
                return;
            }
        };
        let Some(writer) = pipe.as_mut() else { continue };
        if let Err(err) = writer.write_all(message.to_line().as_bytes()).await {
            // The supervisor is gone; the parent-death signal stops this process.
            debug!("control pipe closed: {err}");
            pipe = None;
        }
    }
}

/// Reads a child's control pipe line by line, handing each message to `on_message`;
/// returns when the child's end closes.
pub async fn read_supervisor_end(end: pipe::Receiver, role: &str, mut on_message: impl FnMut(ControlMessage)) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(end).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => match ControlMessage::from_line(&line) {
                Ok(message) => on_message(message),
                Err(err) => warn!(child = role, "unreadable control message: {err}"),
            },
            Ok(None) => return,
            Err(err) => {
                debug!(child = role, "control pipe closed: {err}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_and_round_trip() {
        let alert = ControlMessage::Alert(Alert::new("processor", "title\n@forged", "line one\nline two"));
        let line = alert.to_line();
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n'));
        assert_eq!(ControlMessage::from_line(line.trim_end()).unwrap(), alert);
        let heartbeat = ControlMessage::Heartbeat { metrics: Some("a_total 1\nb 2\n".into()) };
        assert_eq!(ControlMessage::from_line(heartbeat.to_line().trim_end()).unwrap(), heartbeat);
        assert_eq!(
            ControlMessage::from_line(r#"{"type":"heartbeat"}"#).unwrap(),
            ControlMessage::Heartbeat { metrics: None }
        );
        assert!(ControlMessage::from_line("ERROR not a message").is_err());
    }

    #[test]
    fn heartbeats_come_four_times_per_timeout() {
        assert_eq!(heartbeat_interval(Duration::from_secs(20)), Duration::from_secs(5));
        assert_eq!(heartbeat_interval(Duration::from_millis(1)), Duration::from_millis(100));
    }
}
