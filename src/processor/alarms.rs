//! The `appliance_alarm` documents in the old format: `{icon, date, inform}` under an
//! id of 10000000000 minus the Unix time in seconds, so ascending ids are newest first;
//! at most [`MAX_ALARMS`] are kept.

use chrono::{Datelike, NaiveDateTime, Timelike};
use serde_json::json;

use super::texts::AlarmText;
use crate::store::Document;

pub const COLLECTION: &str = "appliance_alarm";
pub const MAX_ALARMS: usize = 20;
const ID_BASE: i64 = 10_000_000_000;

/// The id of the `nth` (from 0) alarm raised in second `unix_secs`. The old ids
/// collided within a second; later alarms of the same second get a `-n` suffix, which
/// sorts right after the plain id.
pub fn alarm_id(unix_secs: i64, nth: usize) -> String {
    let base = ID_BASE - unix_secs;
    if nth == 0 { base.to_string() } else { format!("{base}-{nth}") }
}

/// "Y.M.D.h.m.s" in local time, without zero padding, as the old backend wrote it.
pub fn alarm_date(local: NaiveDateTime) -> String {
    format!("{}.{}.{}.{}.{}.{}", local.year(), local.month(), local.day(), local.hour(), local.minute(), local.second())
}

pub fn document(text: &AlarmText, date: &str) -> Document {
    let value = json!({"icon": text.icon, "date": date, "inform": text.inform});
    value.as_object().cloned().unwrap_or_default()
}

/// Of the ids in the collection, those beyond the newest [`MAX_ALARMS`].
pub fn excess(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids.split_off(ids.len().min(MAX_ALARMS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    #[test]
    fn ids_sort_newest_first() {
        let older = alarm_id(1_632_310_000, 0);
        let newer = alarm_id(1_632_310_001, 0);
        assert_eq!(older, "8367690000");
        assert!(newer < older);
        let same_second = alarm_id(1_632_310_001, 1);
        assert!(newer < same_second && same_second < older);
    }

    #[test]
    fn dates_are_not_padded() {
        let date = NaiveDate::from_ymd_opt(2021, 9, 2).unwrap().and_hms_opt(8, 5, 4).unwrap();
        assert_eq!(alarm_date(date), "2021.9.2.8.5.4");
    }

    #[test]
    fn only_the_newest_twenty_are_kept() {
        let ids: Vec<String> = (0..23).map(|i| alarm_id(1_700_000_000 + i, 0)).collect();
        let excess = excess(ids.clone());
        assert_eq!(excess, [ids[2].clone(), ids[1].clone(), ids[0].clone()]);
        assert!(super::excess(ids[..20].to_vec()).is_empty());
    }

    #[test]
    fn documents_have_the_old_fields() {
        let text = AlarmText { inform: "창문이 열렸어요.".into(), icon: "window_icon".into() };
        let doc = document(&text, "2021.9.2.8.5.4");
        assert_eq!(
            serde_json::Value::Object(doc),
            json!({"icon": "window_icon", "date": "2021.9.2.8.5.4", "inform": "창문이 열렸어요."})
        );
    }
}
