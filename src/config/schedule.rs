//! `[schedule]`: the time zone schedules run in and how late a run may still be.

use serde::{Deserialize, Serialize};

use super::{Bound, ConfigError, DAY_SECS, invalid};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// IANA time zone schedules run in, e.g. "Asia/Seoul"; empty: the system's zone.
    pub timezone: String,
    /// A run found due up to this long after its time still runs (reported as late);
    /// an older one is reported as missed.
    pub grace_secs: u64,
    /// The engine sleeps until the next due minute, but never longer than this, so a
    /// jump of the wall clock (an NTP sync after boot) is noticed.
    pub max_sleep_secs: u64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self { timezone: String::new(), grace_secs: 300, max_sleep_secs: 300 }
    }
}

impl ScheduleConfig {
    /// The configured zone, or the system's (UTC, with a warning, when unknown).
    pub fn zone(&self) -> chrono_tz::Tz {
        if let Ok(zone) = self.timezone.parse() {
            return zone;
        }
        match iana_time_zone::get_timezone().map(|name| name.parse::<chrono_tz::Tz>()) {
            Ok(Ok(zone)) => zone,
            _ => {
                tracing::warn!("cannot tell the system's time zone: schedules run in UTC; set schedule.timezone");
                chrono_tz::Tz::UTC
            }
        }
    }

    /// Each numeric setting with its value and the range it must fall in.
    pub(super) fn bounds(&self) -> Vec<Bound> {
        vec![
            ("schedule.grace_secs", self.grace_secs, 0..=7 * DAY_SECS),
            ("schedule.max_sleep_secs", self.max_sleep_secs, 1..=DAY_SECS),
        ]
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.timezone.is_empty() && self.timezone.parse::<chrono_tz::Tz>().is_err() {
            return Err(invalid(
                "schedule.timezone",
                format!("{:?} is not an IANA time zone such as \"Asia/Seoul\"", self.timezone),
            ));
        }
        Ok(())
    }
}
