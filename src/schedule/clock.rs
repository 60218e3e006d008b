//! The wall clock the schedule engine reads.
//!
//! It is the system clock, shifted by `SMARTHOMED_CLOCK_OFFSET_MS` when that is set:
//! a test (or a demonstration) can start a daemon a few seconds before a whole minute
//! of its own time and see a schedule run without waiting for the real minute. The
//! offset is read once per process; a value that is not an integer within a year
//! either way is ignored with a warning.

use std::sync::OnceLock;

use chrono::{DateTime, TimeDelta, Utc};

pub const OFFSET_ENV: &str = "SMARTHOMED_CLOCK_OFFSET_MS";
const MAX_OFFSET_MS: i64 = 366 * 24 * 3600 * 1000;

/// Now, as the schedule engine sees it.
pub fn now() -> DateTime<Utc> {
    static OFFSET: OnceLock<TimeDelta> = OnceLock::new();
    let offset = OFFSET.get_or_init(|| match std::env::var(OFFSET_ENV) {
        Ok(value) => parse_offset(&value).unwrap_or_else(|| {
            tracing::warn!("{OFFSET_ENV} ignored: not a whole number of milliseconds within a year");
            TimeDelta::zero()
        }),
        Err(_) => TimeDelta::zero(),
    });
    Utc::now() + *offset
}

fn parse_offset(value: &str) -> Option<TimeDelta> {
    let ms: i64 = value.trim().parse().ok()?;
    (ms.abs() <= MAX_OFFSET_MS).then(|| TimeDelta::milliseconds(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_whole_milliseconds_within_a_year() {
        assert_eq!(parse_offset("-1500"), Some(TimeDelta::milliseconds(-1500)));
        assert_eq!(parse_offset(" 60000 "), Some(TimeDelta::minutes(1)));
        assert_eq!(parse_offset("1.5"), None);
        assert_eq!(parse_offset("soon"), None);
        assert_eq!(parse_offset(&(MAX_OFFSET_MS + 1).to_string()), None);
    }
}
