//! `[supervisor]` and `[metrics]`: restarts, stops, heartbeats, and the metrics endpoint.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Bound, ConfigError, DAY_SECS, HOUR_MS, count, invalid};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// A child up this long is healthy again: its backoff starts over.
    pub healthy_after_secs: u64,
    /// More than `restart_limit` restarts of one child within `restart_window_secs`
    /// stops the daemon with exit code 3 (see README, "Restarts").
    pub restart_limit: u32,
    pub restart_window_secs: u64,
    /// Time a child gets to finish in-flight work after SIGTERM before SIGKILL.
    pub stop_timeout_secs: u64,
    pub broker_ready_timeout_secs: u64,
    /// Lines of each child's output kept to show in an alert when it dies.
    pub log_tail_lines: usize,
    /// A child that sends no heartbeat for this long is hung: it is killed, restarted
    /// and alerted. Children send one every quarter of it.
    pub heartbeat_timeout_secs: u64,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            backoff_initial_ms: 1_000,
            backoff_max_ms: 60_000,
            healthy_after_secs: 60,
            restart_limit: 5,
            restart_window_secs: 120,
            stop_timeout_secs: 10,
            broker_ready_timeout_secs: 30,
            log_tail_lines: 20,
            heartbeat_timeout_secs: 30,
        }
    }
}

impl SupervisorConfig {
    pub fn backoff_initial(&self) -> Duration {
        Duration::from_millis(self.backoff_initial_ms)
    }
    pub fn backoff_max(&self) -> Duration {
        Duration::from_millis(self.backoff_max_ms)
    }
    pub fn healthy_after(&self) -> Duration {
        Duration::from_secs(self.healthy_after_secs)
    }
    pub fn restart_window(&self) -> Duration {
        Duration::from_secs(self.restart_window_secs)
    }
    pub fn stop_timeout(&self) -> Duration {
        Duration::from_secs(self.stop_timeout_secs)
    }
    pub fn broker_ready_timeout(&self) -> Duration {
        Duration::from_secs(self.broker_ready_timeout_secs)
    }
    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_secs(self.heartbeat_timeout_secs)
    }

    /// Each numeric setting with its value and the range it must fall in.
    pub(super) fn bounds(&self) -> Vec<Bound> {
        vec![
            ("supervisor.backoff_initial_ms", self.backoff_initial_ms, 1..=HOUR_MS),
            ("supervisor.backoff_max_ms", self.backoff_max_ms, 1..=24 * HOUR_MS),
            ("supervisor.healthy_after_secs", self.healthy_after_secs, 0..=DAY_SECS),
            ("supervisor.restart_limit", self.restart_limit.into(), 1..=1_000),
            ("supervisor.restart_window_secs", self.restart_window_secs, 1..=DAY_SECS),
            ("supervisor.stop_timeout_secs", self.stop_timeout_secs, 1..=3_600),
            ("supervisor.broker_ready_timeout_secs", self.broker_ready_timeout_secs, 1..=3_600),
            ("supervisor.log_tail_lines", count(self.log_tail_lines), 1..=10_000),
            ("supervisor.heartbeat_timeout_secs", self.heartbeat_timeout_secs, 2..=3_600),
        ]
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.backoff_max_ms < self.backoff_initial_ms {
            return Err(invalid("supervisor.backoff_max_ms", "must not be below supervisor.backoff_initial_ms"));
        }
        Ok(())
    }
}

/// The supervisor's Prometheus `/metrics` and `/healthz` endpoint (README, "Metrics").
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `host:port` to serve on; empty (the default): no endpoint, no metrics collected.
    pub listen: String,
}

impl MetricsConfig {
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.listen.is_empty() && self.listen_addr().is_none() {
            return Err(invalid("metrics.listen", "must be host:port, such as \"127.0.0.1:9898\", or empty (off)"));
        }
        Ok(())
    }
}
