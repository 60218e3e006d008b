//! Schedules and modes as the Android app writes them to Firestore
//! (car2home.md section 5), read into typed values and written back in exactly the
//! same format. A malformed document is an error naming the document and the field,
//! never a silently defaulted value.

use chrono::{NaiveDate, NaiveTime};
use serde_json::{Map, Value, json};

/// A stored document: a JSON object.
type Document = Map<String, Value>;

pub const SCHEDULES: &str = "schedule_mode";
pub const MODES: &str = "modes";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{collection}/{id}: {field}: {reason}")]
pub struct DocumentError {
    pub collection: &'static str,
    pub id: String,
    pub field: &'static str,
    pub reason: String,
}

/// The appliance settings a schedule or a mode carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApplianceSettings {
    pub aircon_enable: bool,
    pub aircon_wind_power: u8,
    pub light_enable: bool,
    pub light_brightness: u8,
    pub light_color: u8,
    pub light_mode: u8,
    pub window_open: bool,
    pub gas_valve_enable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Schedule {
    pub title: String,
    pub name: String,
    pub repeat: bool,
    /// 0: use `settings`; 1-9: use the mode with this `modeNum`.
    pub mode_num: u8,
    pub enabled: bool,
    pub start: NaiveTime,
    /// The day of a one-off schedule (`repeat` false).
    pub active_date: Option<NaiveDate>,
    /// Index 0 is Sunday.
    pub days_of_week: [bool; 7],
    pub settings: ApplianceSettings,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mode {
    pub name: String,
    pub number: u8,
    pub settings: ApplianceSettings,
}

struct Reader<'a> {
    collection: &'static str,
    id: &'a str,
    document: &'a Map<String, Value>,
}

impl Reader<'_> {
    fn error(&self, field: &'static str, reason: impl Into<String>) -> DocumentError {
        DocumentError { collection: self.collection, id: self.id.to_owned(), field, reason: reason.into() }
    }

    fn value(&self, field: &'static str) -> Result<&Value, DocumentError> {
        self.document.get(field).ok_or_else(|| self.error(field, "missing"))
    }

    fn text(&self, field: &'static str) -> Result<String, DocumentError> {
        match self.value(field)? {
            Value::String(text) => Ok(text.clone()),
            other => Err(self.error(field, format!("must be a string, not {other}"))),
        }
    }

    fn flag(&self, field: &'static str) -> Result<bool, DocumentError> {
        match self.value(field)? {
            Value::Bool(flag) => Ok(*flag),
            other => Err(self.error(field, format!("must be a boolean, not {other}"))),
        }
    }

    fn digit(&self, field: &'static str, range: std::ops::RangeInclusive<u8>) -> Result<u8, DocumentError> {
        let value = self.value(field)?;
        value.as_u64().and_then(|n| u8::try_from(n).ok()).filter(|n| range.contains(n)).ok_or_else(|| {
            self.error(field, format!("must be an integer {}-{}, not {value}", range.start(), range.end()))
        })
    }

    fn settings(&self) -> Result<ApplianceSettings, DocumentError> {
        let aircon_enable = self.flag("airconEnable")?;
        let light_enable = self.flag("lightEnable")?;
        Ok(ApplianceSettings {
            aircon_enable,
            aircon_wind_power: self.digit("airconWindPower", if aircon_enable { 1..=9 } else { 0..=9 })?,
            light_enable,
            light_brightness: self.digit("lightBrightness", if light_enable { 1..=9 } else { 0..=9 })?,
            light_color: self.digit("lightColor", 0..=9)?,
            light_mode: self.digit("lightMode", 0..=9)?,
            window_open: self.flag("windowOpen")?,
            gas_valve_enable: self.flag("gasValveEnable")?,
        })
    }
}

fn write_settings(document: &mut Map<String, Value>, settings: &ApplianceSettings) {
    for (key, value) in [
        ("airconEnable", json!(settings.aircon_enable)),
        ("airconWindPower", json!(settings.aircon_wind_power)),
        ("lightEnable", json!(settings.light_enable)),
        ("lightBrightness", json!(settings.light_brightness)),
        ("lightColor", json!(settings.light_color)),
        ("lightMode", json!(settings.light_mode)),
        ("windowOpen", json!(settings.window_open)),
        ("gasValveEnable", json!(settings.gas_valve_enable)),
    ] {
        document.insert(key.into(), value);
    }
}

/// "HHMM", 0000-2359.
fn parse_start(text: &str) -> Option<NaiveTime> {
    if text.len() != 4 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hour = text[..2].parse().ok()?;
    let minute = text[2..].parse().ok()?;
    NaiveTime::from_hms_opt(hour, minute, 0)
}

impl Schedule {
    /// Reads `schedule_mode/<id>`; the id must be the title.
    pub fn from_document(id: &str, document: &Document) -> Result<Self, DocumentError> {
        let r = Reader { collection: SCHEDULES, id, document };
        let title = r.text("title")?;
        if title != id {
            return Err(r.error("title", format!("{title:?} differs from the document id")));
        }
        let repeat = r.flag("repeat")?;
        let start_text = r.text("startTime")?;
        let start = parse_start(&start_text)
            .ok_or_else(|| r.error("startTime", format!("{start_text:?} is not HHMM (0000-2359)")))?;
        let active_date = if repeat {
            None
        } else {
            let text = r.text("activeDate")?;
            Some(
                NaiveDate::parse_from_str(&text, "%Y.%m.%d")
                    .map_err(|_| r.error("activeDate", format!("{text:?} is not a date YYYY.MM.DD")))?,
            )
        };
        let days_of_week = match r.value("daysOfWeek") {
            Ok(Value::Array(days)) if days.len() == 7 && days.iter().all(Value::is_boolean) => {
                let mut out = [false; 7];
                for (slot, day) in out.iter_mut().zip(days) {
                    *slot = day.as_bool().unwrap_or(false);
                }
                out
            }
            Ok(other) => return Err(r.error("daysOfWeek", format!("must be 7 booleans, Sunday first, not {other}"))),
            Err(_) if !repeat => [false; 7],
            Err(err) => return Err(err),
        };
        if repeat && !days_of_week.contains(&true) {
            return Err(r.error("daysOfWeek", "a repeating schedule needs at least one day"));
        }
        Ok(Self {
            title,
            name: r.text("name")?,
            repeat,
            mode_num: r.digit("modeNum", 0..=9)?,
            enabled: r.flag("enabled")?,
            start,
            active_date,
            days_of_week,
            settings: r.settings()?,
        })
    }

    pub fn to_document(&self) -> Document {
        let mut document = Map::new();
        document.insert("title".into(), json!(self.title));
        document.insert("name".into(), json!(self.name));
        document.insert("repeat".into(), json!(self.repeat));
        document.insert("modeNum".into(), json!(self.mode_num));
        document.insert("enabled".into(), json!(self.enabled));
        document.insert("startTime".into(), json!(self.start.format("%H%M").to_string()));
        if let Some(date) = self.active_date {
            document.insert("activeDate".into(), json!(date.format("%Y.%m.%d").to_string()));
        }
        document.insert("daysOfWeek".into(), json!(self.days_of_week));
        write_settings(&mut document, &self.settings);
        document
    }
}

/// The mode document with `modeNum` = `number` among `modes`, as (id, document). The
/// app picks mode document ids freely; modes are found by number.
pub fn find_mode(modes: Vec<(String, Document)>, number: u8) -> Option<(String, Document)> {
    modes.into_iter().find(|(_, mode)| mode.get("modeNum").and_then(Value::as_u64) == Some(u64::from(number)))
}

impl Mode {
    pub fn from_document(id: &str, document: &Document) -> Result<Self, DocumentError> {
        let r = Reader { collection: MODES, id, document };
        Ok(Self { name: r.text("modeName")?, number: r.digit("modeNum", 1..=9)?, settings: r.settings()? })
    }

    pub fn to_document(&self) -> Document {
        let mut document = Map::new();
        document.insert("modeName".into(), json!(self.name));
        document.insert("modeNum".into(), json!(self.number));
        write_settings(&mut document, &self.settings);
        document
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn schedule_document(title: &str, start: &str) -> Document {
        json!({
            "title": title, "name": "아침 루틴", "repeat": true, "modeNum": 0, "enabled": true,
            "startTime": start, "daysOfWeek": [true, true, true, true, true, true, true],
            "airconEnable": true, "airconWindPower": 5, "lightEnable": false, "lightBrightness": 0,
            "lightColor": 0, "lightMode": 0, "windowOpen": true, "gasValveEnable": false
        })
        .as_object()
        .cloned()
        .unwrap()
    }

    #[test]
    fn the_android_format_reads_and_writes_back_unchanged() {
        let document = schedule_document("morning", "0730");
        let schedule = Schedule::from_document("morning", &document).unwrap();
        assert_eq!(schedule.start, NaiveTime::from_hms_opt(7, 30, 0).unwrap());
        assert!(schedule.settings.aircon_enable && schedule.settings.window_open);
        assert_eq!(schedule.to_document(), document);

        let mut one_off = schedule_document("dentist", "1405");
        one_off.insert("repeat".into(), json!(false));
        one_off.insert("activeDate".into(), json!("2026.12.31"));
        one_off.insert("daysOfWeek".into(), json!([false, false, false, false, false, false, false]));
        let schedule = Schedule::from_document("dentist", &one_off).unwrap();
        assert_eq!(schedule.active_date, NaiveDate::from_ymd_opt(2026, 12, 31));
        assert_eq!(schedule.to_document(), one_off);
    }

    #[test]
    fn malformed_documents_name_the_document_and_the_field() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("startTime", json!("730"), "startTime"),
            ("startTime", json!("2400"), "startTime"),
            ("startTime", json!("1260"), "startTime"),
            ("startTime", json!(730), "startTime"),
            ("modeNum", json!("1"), "modeNum"),
            ("modeNum", json!(10), "modeNum"),
            ("enabled", json!("true"), "enabled"),
            ("daysOfWeek", json!([true, false]), "daysOfWeek"),
            ("daysOfWeek", json!([false, false, false, false, false, false, false]), "daysOfWeek"),
            ("airconWindPower", json!(0), "airconWindPower"),
            ("title", json!("other"), "title"),
        ];
        for (key, value, field) in cases {
            let mut document = schedule_document("morning", "0730");
            document.insert(key.into(), value.clone());
            let err = Schedule::from_document("morning", &document).unwrap_err();
            assert_eq!(err.field, field, "{key} = {value}");
            assert!(err.to_string().starts_with("schedule_mode/morning: "), "{err}");
        }
        let mut one_off = schedule_document("x", "0730");
        one_off.insert("repeat".into(), json!(false));
        one_off.insert("activeDate".into(), json!("2026.02.30"));
        assert_eq!(Schedule::from_document("x", &one_off).unwrap_err().field, "activeDate");
        one_off.remove("activeDate");
        assert_eq!(Schedule::from_document("x", &one_off).unwrap_err().reason, "missing");
    }

    #[test]
    fn modes_read_and_write_back() {
        let document = json!({
            "modeName": "외출", "modeNum": 3, "airconEnable": false, "airconWindPower": 0,
            "lightEnable": true, "lightBrightness": 7, "lightColor": 1, "lightMode": 2,
            "windowOpen": false, "gasValveEnable": false
        })
        .as_object()
        .cloned()
        .unwrap();
        let mode = Mode::from_document("any-id", &document).unwrap();
        assert_eq!((mode.number, mode.settings.light_brightness), (3, 7));
        assert_eq!(mode.to_document(), document);
        let mut zero = document.clone();
        zero.insert("modeNum".into(), json!(0));
        assert_eq!(Mode::from_document("z", &zero).unwrap_err().field, "modeNum");
    }
}
