//! `[mqtt]`: how the daemon's processes reach the broker (the embedded one, or `url`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Bound, ConfigError, DAY_SECS, HOUR_MS, Secret, invalid};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Empty: the embedded broker at `broker.listen`. Otherwise mqtt://, mqtts://,
    /// ws:// or wss:// URL of an external broker.
    pub url: String,
    pub username: String,
    pub password: Secret,
    /// PEM certificates of the authorities to trust for an mqtts:// or wss:// `url`
    /// (a private CA); absent: the system's trusted roots.
    pub ca_file: Option<PathBuf>,
    pub keep_alive_secs: u64,
    pub reconnect_initial_ms: u64,
    pub reconnect_max_ms: u64,
    /// A child alerts when it has been cut off from the broker this long.
    pub lost_alert_after_secs: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            username: String::new(),
            password: Secret::default(),
            ca_file: None,
            keep_alive_secs: 30,
            reconnect_initial_ms: 500,
            reconnect_max_ms: 30_000,
            lost_alert_after_secs: 30,
        }
    }
}

impl MqttConfig {
    /// Each numeric setting with its value and the range it must fall in.
    pub(super) fn bounds(&self) -> Vec<Bound> {
        vec![
            ("mqtt.keep_alive_secs", self.keep_alive_secs, 1..=65_535),
            ("mqtt.reconnect_initial_ms", self.reconnect_initial_ms, 1..=HOUR_MS),
            ("mqtt.reconnect_max_ms", self.reconnect_max_ms, 1..=24 * HOUR_MS),
            ("mqtt.lost_alert_after_secs", self.lost_alert_after_secs, 0..=DAY_SECS),
        ]
    }

    /// `broker_embedded`: whether the daemon runs its own broker (`url` may then be empty).
    pub(super) fn validate(&self, broker_embedded: bool) -> Result<(), ConfigError> {
        if self.reconnect_max_ms < self.reconnect_initial_ms {
            return Err(invalid("mqtt.reconnect_max_ms", "must not be below mqtt.reconnect_initial_ms"));
        }
        if self.url.is_empty() {
            if !broker_embedded {
                return Err(invalid("mqtt.url", "must name the external broker when broker.embedded = false"));
            }
            if self.ca_file.is_some() {
                return Err(invalid("mqtt.ca_file", "is only used with an mqtts:// or wss:// mqtt.url"));
            }
            return Ok(());
        }
        let url = url::Url::parse(&self.url).map_err(|err| invalid("mqtt.url", format!("not a URL: {err}")))?;
        if !matches!(url.scheme(), "mqtt" | "mqtts" | "ws" | "wss") {
            return Err(invalid("mqtt.url", "scheme must be mqtt, mqtts, ws or wss"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("mqtt.url", "must not carry credentials; use mqtt.username and mqtt.password"));
        }
        if url.host_str().is_none() {
            return Err(invalid("mqtt.url", "has no host"));
        }
        if self.ca_file.is_some() && !matches!(url.scheme(), "mqtts" | "wss") {
            return Err(invalid("mqtt.ca_file", "is only used with an mqtts:// or wss:// mqtt.url"));
        }
        Ok(())
    }
}
