//! When schedules run, in a configured IANA time zone, and what to do about the
//! occurrences that fell due. Plain functions over an explicit `now`.
//!
//! Rules:
//! - An occurrence is a schedule's start time on a local date it runs on (a day of
//!   week for repeating schedules, `activeDate` for one-off ones). Its identity is
//!   (title, local date): it runs at most once.
//! - A start time that does not exist that day (skipped by a daylight-saving jump)
//!   runs at the first valid minute after it; one that exists twice (the hour repeated
//!   when clocks go back) runs once, at its first instance.
//! - An occurrence found due less than the grace period after its time runs (late, if
//!   more than a minute late); an older one is reported as missed and not run.

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::protocol::schedule::Schedule;

/// One run of one schedule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Occurrence {
    pub at: DateTime<Utc>,
    pub title: String,
    pub date: NaiveDate,
}

/// The instant of local `datetime` in `zone`, by the rules above.
pub fn resolve_local(zone: Tz, datetime: NaiveDateTime) -> DateTime<Utc> {
    let mut candidate = datetime;
    // Gaps are at most a few hours; a day bounds the search whatever the zone does.
    for _ in 0..=24 * 60 {
        match zone.from_local_datetime(&candidate) {
            LocalResult::Single(at) => return at.with_timezone(&Utc),
            LocalResult::Ambiguous(first, _) => return first.with_timezone(&Utc),
            LocalResult::None => candidate += Duration::minutes(1),
        }
    }
    Utc.from_utc_datetime(&datetime)
}

/// Whether `schedule` runs on local `date`.
pub fn runs_on(schedule: &Schedule, date: NaiveDate) -> bool {
    schedule.enabled
        && if schedule.repeat {
            schedule.days_of_week[date.weekday().num_days_from_sunday() as usize]
        } else {
            schedule.active_date == Some(date)
        }
}

pub fn occurrence(schedule: &Schedule, date: NaiveDate, zone: Tz) -> Option<Occurrence> {
    runs_on(schedule, date).then(|| Occurrence {
        at: resolve_local(zone, date.and_time(schedule.start)),
        title: schedule.title.clone(),
        date,
    })
}

/// The occurrences with `from < at <= to`, in time order.
pub fn due_between<'a>(
    schedules: impl IntoIterator<Item = &'a Schedule>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    zone: Tz,
) -> Vec<Occurrence> {
    if to <= from {
        return Vec::new();
    }
    // A skipped start time can move an occurrence past midnight: look a day around.
    let first = from.with_timezone(&zone).date_naive() - Duration::days(1);
    let last = to.with_timezone(&zone).date_naive();
    let mut due: Vec<Occurrence> = schedules
        .into_iter()
        .flat_map(|schedule| {
            first
                .iter_days()
                .take_while(move |date| *date <= last)
                .filter_map(move |date| occurrence(schedule, date, zone))
        })
        .filter(|occurrence| occurrence.at > from && occurrence.at <= to)
        .collect();
    due.sort();
    due
}

/// The time of the first occurrence after `after`, if any schedule has one.
pub fn next_after<'a>(
    schedules: impl IntoIterator<Item = &'a Schedule>,
    after: DateTime<Utc>,
    zone: Tz,
) -> Option<DateTime<Utc>> {
    let today = after.with_timezone(&zone).date_naive();
    schedules
        .into_iter()
        .filter_map(|schedule| {
            let dates: Box<dyn Iterator<Item = NaiveDate>> = if schedule.repeat {
                Box::new((today - Duration::days(1)).iter_days().take(9))
            } else {
                Box::new(schedule.active_date.into_iter())
            };
            dates
                .filter_map(|date| occurrence(schedule, date, zone))
                .map(|occurrence| occurrence.at)
                .find(|at| *at > after)
        })
        .min()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Run it; `late_by` is set when it runs more than a minute after its time.
    Run { late_by: Option<Duration> },
    /// Too old to run: report it.
    Missed { late_by: Duration },
}

pub fn plan(occurrence: &Occurrence, now: DateTime<Utc>, grace: Duration) -> Plan {
    let late_by = now - occurrence.at;
    if late_by > grace {
        Plan::Missed { late_by }
    } else if late_by > Duration::minutes(1) {
        Plan::Run { late_by: Some(late_by) }
    } else {
        Plan::Run { late_by: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::schedule::tests::schedule_document;
    use chrono::NaiveTime;
    use serde_json::json;

    const SEOUL: Tz = chrono_tz::Asia::Seoul;
    const BERLIN: Tz = chrono_tz::Europe::Berlin;

    fn schedule(title: &str, start: &str) -> Schedule {
        Schedule::from_document(title, &schedule_document(title, start)).unwrap()
    }

    fn one_off(title: &str, start: &str, date: &str) -> Schedule {
        let mut document = schedule_document(title, start);
        document.insert("repeat".into(), json!(false));
        document.insert("activeDate".into(), json!(date));
        Schedule::from_document(title, &document).unwrap()
    }

    fn local(zone: Tz, text: &str) -> DateTime<Utc> {
        let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").unwrap();
        zone.from_local_datetime(&naive).earliest().unwrap().with_timezone(&Utc)
    }

    fn titles(due: &[Occurrence]) -> Vec<(&str, String)> {
        due.iter().map(|o| (o.title.as_str(), o.date.to_string())).collect()
    }

    #[test]
    fn hh59_runs_once_and_not_at_the_next_hour() {
        let schedules = [schedule("late", "1259")];
        let due =
            due_between(&schedules, local(SEOUL, "2026-11-22 12:58:30"), local(SEOUL, "2026-11-22 12:59:00"), SEOUL);
        assert_eq!(titles(&due), [("late", "2026-11-22".into())]);
        assert!(
            due_between(&schedules, local(SEOUL, "2026-11-22 12:59:00"), local(SEOUL, "2026-11-22 13:00:59"), SEOUL)
                .is_empty()
        );
        assert_eq!(
            next_after(&schedules, local(SEOUL, "2026-11-22 12:59:00"), SEOUL),
            Some(local(SEOUL, "2026-11-23 12:59:00"))
        );
    }

    #[test]
    fn midnight_month_and_year_ends() {
        let schedules = [schedule("midnight", "0000")];
        let due =
            due_between(&schedules, local(SEOUL, "2026-12-31 23:59:00"), local(SEOUL, "2027-01-01 00:00:00"), SEOUL);
        assert_eq!(titles(&due), [("midnight", "2027-01-01".into())]);
        let due =
            due_between(&schedules, local(SEOUL, "2026-01-31 23:00:00"), local(SEOUL, "2026-02-01 00:30:00"), SEOUL);
        assert_eq!(titles(&due), [("midnight", "2026-02-01".into())]);
        let new_years_eve = [one_off("nye", "2359", "2026.12.31")];
        assert_eq!(
            next_after(&new_years_eve, local(SEOUL, "2026-12-31 12:00:00"), SEOUL),
            Some(local(SEOUL, "2026-12-31 23:59:00"))
        );
        assert_eq!(next_after(&new_years_eve, local(SEOUL, "2027-01-01 00:00:00"), SEOUL), None);
    }

    #[test]
    fn leap_day_one_offs_run_only_that_day() {
        let leap = [one_off("leap", "0900", "2028.02.29")];
        let due = due_between(&leap, local(SEOUL, "2028-02-28 00:00:00"), local(SEOUL, "2028-03-01 23:00:00"), SEOUL);
        assert_eq!(titles(&due), [("leap", "2028-02-29".into())]);
    }

    #[test]
    fn days_of_week_are_sunday_first() {
        let mut document = schedule_document("sundays", "1000");
        document.insert("daysOfWeek".into(), json!([true, false, false, false, false, false, false]));
        let sundays = [Schedule::from_document("sundays", &document).unwrap()];
        // 2026-11-22 is a Sunday.
        let week =
            due_between(&sundays, local(SEOUL, "2026-11-21 00:00:00"), local(SEOUL, "2026-11-28 23:00:00"), SEOUL);
        assert_eq!(titles(&week), [("sundays", "2026-11-22".into())]);
    }

    #[test]
    fn disabled_schedules_never_run() {
        let mut document = schedule_document("off", "1000");
        document.insert("enabled".into(), json!(false));
        let off = [Schedule::from_document("off", &document).unwrap()];
        assert!(
            due_between(&off, local(SEOUL, "2026-11-01 00:00:00"), local(SEOUL, "2026-11-30 00:00:00"), SEOUL)
                .is_empty()
        );
        assert_eq!(next_after(&off, local(SEOUL, "2026-11-01 00:00:00"), SEOUL), None);
    }

    #[test]
    fn a_skipped_start_time_runs_at_the_first_valid_minute_after_it() {
        // Berlin springs forward on 2026-03-29 from 02:00 to 03:00.
        let schedules = [schedule("night", "0230")];
        let due =
            due_between(&schedules, local(BERLIN, "2026-03-29 01:00:00"), local(BERLIN, "2026-03-29 04:00:00"), BERLIN);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].at, local(BERLIN, "2026-03-29 03:00:00"));
        assert_eq!(
            resolve_local(
                BERLIN,
                NaiveDate::from_ymd_opt(2026, 3, 29).unwrap().and_time(NaiveTime::from_hms_opt(2, 0, 0).unwrap())
            ),
            local(BERLIN, "2026-03-29 03:00:00")
        );
    }

    #[test]
    fn a_repeated_start_time_runs_once() {
        // Berlin falls back on 2026-10-25 from 03:00 to 02:00: 02:30 happens twice.
        let schedules = [schedule("night", "0230")];
        let whole_night =
            due_between(&schedules, local(BERLIN, "2026-10-25 00:00:00"), local(BERLIN, "2026-10-25 05:00:00"), BERLIN);
        assert_eq!(whole_night.len(), 1);
        assert_eq!(whole_night[0].at, Utc.with_ymd_and_hms(2026, 10, 25, 0, 30, 0).unwrap(), "the first 02:30 (UTC+2)");
    }

    #[test]
    fn a_restart_in_the_middle_of_a_minute_neither_repeats_nor_skips() {
        let schedules = [schedule("tea", "1500")];
        let first_run =
            due_between(&schedules, local(SEOUL, "2026-11-22 14:59:40"), local(SEOUL, "2026-11-22 15:00:10"), SEOUL);
        assert_eq!(first_run.len(), 1);
        // After a restart the engine continues from where it had checked.
        let after_restart =
            due_between(&schedules, local(SEOUL, "2026-11-22 15:00:10"), local(SEOUL, "2026-11-22 15:00:50"), SEOUL);
        assert!(after_restart.is_empty());
    }

    #[test]
    fn missed_runs_within_grace_run_late_and_older_ones_are_missed() {
        let occurrence = Occurrence {
            at: local(SEOUL, "2026-11-22 07:00:00"),
            title: "x".into(),
            date: NaiveDate::from_ymd_opt(2026, 11, 22).unwrap(),
        };
        let grace = Duration::minutes(5);
        assert_eq!(plan(&occurrence, local(SEOUL, "2026-11-22 07:00:20"), grace), Plan::Run { late_by: None });
        assert_eq!(
            plan(&occurrence, local(SEOUL, "2026-11-22 07:04:00"), grace),
            Plan::Run { late_by: Some(Duration::minutes(4)) }
        );
        assert_eq!(
            plan(&occurrence, local(SEOUL, "2026-11-22 07:10:00"), grace),
            Plan::Missed { late_by: Duration::minutes(10) }
        );
    }
}
