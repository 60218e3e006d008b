//! `[processor]` and `[homeassistant]`: how commands are handled, in which language
//! users are answered, and the recommendation rules' thresholds.

use serde::{Deserialize, Serialize};

use super::{Bound, ConfigError, HOUR_MS, MIB, count, invalid};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorConfig {
    /// Texts of alarms and recommendations: "ko" (as the old system) or "en".
    pub language: Language,
    /// Larger commands are refused with `payload_too_large`.
    pub max_command_bytes: usize,
    /// Messages received but not yet dispatched.
    pub queue_capacity: usize,
    /// Commands handled at once; more wait (and the wait is logged as overload).
    pub max_concurrent_handlers: usize,
    pub handler_timeout_ms: u64,
    /// The face recognizer (`start_facer`), as program and arguments; it prints the
    /// recognised UID, or "none", as its last line. Empty: the command is refused.
    pub facer_command: Vec<String>,
    pub facer_timeout_secs: u64,
    pub recommendation: Rules,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            language: Language::Ko,
            max_command_bytes: 16 * 1024,
            queue_capacity: 64,
            max_concurrent_handlers: 16,
            handler_timeout_ms: 10_000,
            facer_command: Vec::new(),
            facer_timeout_secs: 30,
            recommendation: Rules::default(),
        }
    }
}

impl ProcessorConfig {
    /// Each numeric setting with its value and the range it must fall in.
    pub(super) fn bounds(&self) -> Vec<Bound> {
        vec![
            ("processor.max_command_bytes", count(self.max_command_bytes), 1..=16 * MIB),
            ("processor.queue_capacity", count(self.queue_capacity), 1..=100_000),
            ("processor.max_concurrent_handlers", count(self.max_concurrent_handlers), 1..=1_024),
            ("processor.handler_timeout_ms", self.handler_timeout_ms, 1..=HOUR_MS),
            ("processor.facer_timeout_secs", self.facer_timeout_secs, 1..=3_600),
            ("processor.recommendation.bad_air_level", self.recommendation.bad_air_level.into(), 1..=5),
        ]
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.facer_command.first().is_some_and(|program| program.trim().is_empty()) {
            return Err(invalid("processor.facer_command", "the program must not be empty"));
        }
        Ok(())
    }
}

/// The thresholds of the rules.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rules {
    /// `air_level` (OpenWeatherMap AQI, 1 good .. 5 very poor) from which air is bad.
    pub bad_air_level: u8,
    /// Weather icon prefixes that mean rain (drizzle, rain, thunderstorm).
    pub rain_icons: Vec<String>,
    /// Weather icon prefixes that mean snow.
    pub snow_icons: Vec<String>,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            bad_air_level: 2,
            rain_icons: vec!["09".into(), "10".into(), "11".into()],
            snow_icons: vec!["13".into()],
        }
    }
}

/// The language of the texts users read: Korean, as the old system wrote them, or English.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    #[default]
    Ko,
    En,
}

/// Home Assistant MQTT discovery (see README, "Home Assistant").
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HomeAssistantConfig {
    /// Publish discovery configs and take Home Assistant's commands.
    pub enabled: bool,
    /// Home Assistant's `discovery_prefix` (its MQTT integration's setting).
    pub discovery_prefix: String,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        Self { enabled: true, discovery_prefix: crate::protocol::homeassistant::DEFAULT_PREFIX.into() }
    }
}

impl HomeAssistantConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let prefix = &self.discovery_prefix;
        if prefix.is_empty() || prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains(['+', '#']) {
            return Err(invalid(
                "homeassistant.discovery_prefix",
                "must be an MQTT topic without wildcards or a leading or trailing /",
            ));
        }
        Ok(())
    }
}
