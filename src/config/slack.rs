//! `[slack]`: where alerts go, and how they are retried and coalesced.

use serde::{Deserialize, Serialize};

use super::{Bound, ConfigError, DAY_SECS, HOUR_MS, Secret, count, invalid};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlackConfig {
    /// Bot token (xoxb-...). Empty: alerts only go to the log.
    pub token: Secret,
    pub channel: String,
    pub api_url: String,
    pub queue_capacity: usize,
    /// Identical alerts within this window are sent once, then once more with a count.
    pub coalesce_window_secs: u64,
    pub max_attempts: u32,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
}

impl Default for SlackConfig {
    fn default() -> Self {
        Self {
            token: Secret::default(),
            channel: "#server".into(),
            api_url: "https://slack.com/api".into(),
            queue_capacity: 64,
            coalesce_window_secs: 300,
            max_attempts: 6,
            retry_initial_ms: 1_000,
            retry_max_ms: 60_000,
        }
    }
}

impl SlackConfig {
    /// Each numeric setting with its value and the range it must fall in.
    pub(super) fn bounds(&self) -> Vec<Bound> {
        vec![
            ("slack.queue_capacity", count(self.queue_capacity), 1..=100_000),
            ("slack.coalesce_window_secs", self.coalesce_window_secs, 0..=DAY_SECS),
            ("slack.max_attempts", self.max_attempts.into(), 1..=100),
            ("slack.retry_initial_ms", self.retry_initial_ms, 1..=HOUR_MS),
            ("slack.retry_max_ms", self.retry_max_ms, 1..=24 * HOUR_MS),
        ]
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let url =
            url::Url::parse(&self.api_url).map_err(|err| invalid("slack.api_url", format!("not a URL: {err}")))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(invalid("slack.api_url", "must be an https:// (or http://) URL"));
        }
        if self.channel.trim().is_empty() {
            return Err(invalid("slack.channel", "must not be empty"));
        }
        if self.retry_max_ms < self.retry_initial_ms {
            return Err(invalid("slack.retry_max_ms", "must not be below slack.retry_initial_ms"));
        }
        Ok(())
    }
}
