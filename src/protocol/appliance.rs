//! The 9-digit appliance protocol of the ESP32 controller (car2home.md section 4):
//! one ASCII string of nine decimal digits, both the control sent to the device and
//! the state it reports back.
//!
//! | pos | field | control values |
//! |---|---|---|
//! | 0 | mode | 0 manual, 1-9 the mode with that `modeNum` |
//! | 1 | air conditioner | 0 off, 1 on, 2 keep |
//! | 2 | fan level | 1-9 (10-90 %), read only when pos 1 is 1 |
//! | 3 | light | 0 off, 1 on, 2 keep |
//! | 4 | brightness | 1-9 (10-90 %), read only when pos 3 is 1 |
//! | 5 | light colour | 0 white, 1 yellow, 2 red, 3 blue, more may follow |
//! | 6 | light mode | 0 normal, 1 mood, 2 sleep, 3 party, more may follow |
//! | 7 | window | 0 closed, 1 open, 2 keep |
//! | 8 | gas valve | 0 closed, 1 open, 2 keep |
//!
//! A control may say "keep" (2); a state may not. Digits that a power digit of 0 or 2
//! makes irrelevant are carried as they are, so that encoding gives back the very
//! string that was parsed.

use std::fmt;

pub const LEN: usize = 9;

/// Positions of the fields in the string.
pub mod pos {
    pub const MODE: usize = 0;
    pub const AIRCON: usize = 1;
    pub const FAN_LEVEL: usize = 2;
    pub const LIGHT: usize = 3;
    pub const BRIGHTNESS: usize = 4;
    pub const COLOR: usize = 5;
    pub const LIGHT_MODE: usize = 6;
    pub const WINDOW: usize = 7;
    pub const GAS_VALVE: usize = 8;
}

const FIELD_NAMES: [&str; LEN] = [
    "mode",
    "air conditioner power",
    "fan level",
    "light power",
    "brightness",
    "light colour",
    "light mode",
    "window",
    "gas valve",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("must be {LEN} characters, got {0}")]
    Length(usize),
    #[error("position {position} ({field}): {value:?} {reason}")]
    Digit { position: usize, field: &'static str, value: char, reason: &'static str },
}

impl ParseError {
    fn at(position: usize, value: char, reason: &'static str) -> Self {
        Self::Digit { position, field: FIELD_NAMES[position], value, reason }
    }

    /// A short machine-readable name of the problem.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Length(_) => "bad_length",
            Self::Digit { .. } => "bad_digit",
        }
    }
}

/// A power-like field of a control: off, on, or keep what the device has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Switch {
    Off,
    On,
    Keep,
}

impl Switch {
    fn digit(self) -> u8 {
        match self {
            Switch::Off => 0,
            Switch::On => 1,
            Switch::Keep => 2,
        }
    }

    /// The switch that sets a field to `on`.
    pub fn from_bool(on: bool) -> Self {
        if on { Switch::On } else { Switch::Off }
    }
}

/// A control string, as sent to `webos/smarthome/info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Control {
    pub mode: u8,
    pub aircon: Switch,
    pub fan_level: u8,
    pub light: Switch,
    pub brightness: u8,
    pub color: u8,
    pub light_mode: u8,
    pub window: Switch,
    pub gas_valve: Switch,
}

/// An applied state, as the device reports it on `data/smarthome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct State {
    pub mode: u8,
    pub aircon: bool,
    pub fan_level: u8,
    pub light: bool,
    pub brightness: u8,
    pub color: u8,
    pub light_mode: u8,
    pub window: bool,
    pub gas_valve: bool,
}

fn digits(text: &str) -> Result<[u8; LEN], ParseError> {
    let count = text.chars().count();
    if count != LEN {
        return Err(ParseError::Length(count));
    }
    let mut out = [0u8; LEN];
    for (i, c) in text.chars().enumerate() {
        out[i] = c
            .to_digit(10)
            .filter(|_| c.is_ascii_digit())
            .ok_or_else(|| ParseError::at(i, c, "is not a decimal digit"))? as u8;
    }
    Ok(out)
}

fn as_char(digit: u8) -> char {
    char::from(b'0' + digit)
}

fn switch(digits: &[u8; LEN], position: usize) -> Result<Switch, ParseError> {
    match digits[position] {
        0 => Ok(Switch::Off),
        1 => Ok(Switch::On),
        2 => Ok(Switch::Keep),
        d => Err(ParseError::at(position, as_char(d), "must be 0 (off), 1 (on) or 2 (keep)")),
    }
}

fn flag(digits: &[u8; LEN], position: usize) -> Result<bool, ParseError> {
    match digits[position] {
        0 => Ok(false),
        1 => Ok(true),
        d => Err(ParseError::at(position, as_char(d), "must be 0 (off) or 1 (on) in a state")),
    }
}

/// Levels 1-9 are checked only where they take effect: after a power digit of 1.
fn level(digits: &[u8; LEN], position: usize, powered: bool) -> Result<u8, ParseError> {
    let d = digits[position];
    if powered && d == 0 {
        return Err(ParseError::at(position, '0', "must be 1-9 (10-90 %) when the power is on"));
    }
    Ok(d)
}

impl Control {
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let d = digits(text)?;
        let aircon = switch(&d, pos::AIRCON)?;
        let light = switch(&d, pos::LIGHT)?;
        Ok(Self {
            mode: d[pos::MODE],
            aircon,
            fan_level: level(&d, pos::FAN_LEVEL, aircon == Switch::On)?,
            light,
            brightness: level(&d, pos::BRIGHTNESS, light == Switch::On)?,
            color: d[pos::COLOR],
            light_mode: d[pos::LIGHT_MODE],
            window: switch(&d, pos::WINDOW)?,
            gas_valve: switch(&d, pos::GAS_VALVE)?,
        })
    }

    pub fn encode(&self) -> String {
        [
            self.mode,
            self.aircon.digit(),
            self.fan_level,
            self.light.digit(),
            self.brightness,
            self.color,
            self.light_mode,
            self.window.digit(),
            self.gas_valve.digit(),
        ]
        .into_iter()
        .map(|d| as_char(d.min(9)))
        .collect()
    }

    /// The state the device ends in after applying this control to `current`, as the
    /// ESP32 does: the mode digit is copied; off clears a power and leaves its level,
    /// colour and light mode as they were; on sets them; keep changes nothing.
    pub fn apply_to(&self, current: &State) -> State {
        let mut next = *current;
        next.mode = self.mode;
        match self.aircon {
            Switch::Off => next.aircon = false,
            Switch::On => {
                next.aircon = true;
                next.fan_level = self.fan_level;
            }
            Switch::Keep => {}
        }
        match self.light {
            Switch::Off => next.light = false,
            Switch::On => {
                next.light = true;
                next.brightness = self.brightness;
                next.color = self.color;
                next.light_mode = self.light_mode;
            }
            Switch::Keep => {}
        }
        match self.window {
            Switch::Off => next.window = false,
            Switch::On => next.window = true,
            Switch::Keep => {}
        }
        match self.gas_valve {
            Switch::Off => next.gas_valve = false,
            Switch::On => next.gas_valve = true,
            Switch::Keep => {}
        }
        next
    }
}

impl State {
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let d = digits(text)?;
        let aircon = flag(&d, pos::AIRCON)?;
        let light = flag(&d, pos::LIGHT)?;
        Ok(Self {
            mode: d[pos::MODE],
            aircon,
            fan_level: level(&d, pos::FAN_LEVEL, aircon)?,
            light,
            brightness: level(&d, pos::BRIGHTNESS, light)?,
            color: d[pos::COLOR],
            light_mode: d[pos::LIGHT_MODE],
            window: flag(&d, pos::WINDOW)?,
            gas_valve: flag(&d, pos::GAS_VALVE)?,
        })
    }

    pub fn encode(&self) -> String {
        [
            self.mode,
            u8::from(self.aircon),
            self.fan_level,
            u8::from(self.light),
            self.brightness,
            self.color,
            self.light_mode,
            u8::from(self.window),
            u8::from(self.gas_valve),
        ]
        .into_iter()
        .map(|d| as_char(d.min(9)))
        .collect()
    }
}

impl fmt::Display for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

/// Something that changed between two states, as the old backend raised alarms for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The mode digit changed to a mode (1-9).
    ModeRun(u8),
    Aircon(bool),
    Light(bool),
    Window(bool),
    GasValve(bool),
}

/// The alarms for a state change: one for a mode that started, otherwise one per
/// power-like field that changed (car2home.md section 6).
pub fn changes(old: &State, new: &State) -> Vec<Change> {
    if new.mode != old.mode && new.mode != 0 {
        return vec![Change::ModeRun(new.mode)];
    }
    let mut out = Vec::new();
    if old.aircon != new.aircon {
        out.push(Change::Aircon(new.aircon));
    }
    if old.light != new.light {
        out.push(Change::Light(new.light));
    }
    if old.window != new.window {
        out.push(Change::Window(new.window));
    }
    if old.gas_valve != new.gas_valve {
        out.push(Change::GasValve(new.gas_valve));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_reference_example_reads_as_documented() {
        let control = Control::parse("009060210").unwrap();
        assert_eq!(control.mode, 0);
        assert_eq!(control.aircon, Switch::Off);
        assert_eq!(control.fan_level, 9);
        assert_eq!(control.light, Switch::Off);
        assert_eq!(control.brightness, 6);
        assert_eq!(control.color, 0);
        assert_eq!(control.light_mode, 2);
        assert_eq!(control.window, Switch::On);
        assert_eq!(control.gas_valve, Switch::Off);
        let state = State::parse("009060210").unwrap();
        assert!(!state.aircon && !state.light && state.window && !state.gas_valve);
    }

    #[test]
    fn errors_name_the_position_the_value_and_why() {
        assert_eq!(Control::parse("12345678"), Err(ParseError::Length(8)));
        assert_eq!(Control::parse("0123456789"), Err(ParseError::Length(10)));
        assert_eq!(Control::parse(""), Err(ParseError::Length(0)));
        let err = Control::parse("00906x210").unwrap_err();
        assert_eq!(err, ParseError::at(5, 'x', "is not a decimal digit"));
        assert_eq!(err.to_string(), "position 5 (light colour): 'x' is not a decimal digit");
        assert!(matches!(Control::parse("039060210"), Err(ParseError::Digit { position: 1, value: '3', .. })));
        assert!(matches!(Control::parse("010060210"), Err(ParseError::Digit { position: 2, value: '0', .. })));
        assert!(matches!(Control::parse("000100210"), Err(ParseError::Digit { position: 4, value: '0', .. })));
        assert!(matches!(Control::parse("009060213"), Err(ParseError::Digit { position: 8, value: '3', .. })));
        assert!(matches!(State::parse("029060210"), Err(ParseError::Digit { position: 1, value: '2', .. })));
        assert!(matches!(Control::parse("٠٠٠٠٠٠٠٠٠"), Err(ParseError::Digit { position: 0, .. })), "non-ASCII digits");
        assert!(matches!(Control::parse("00906021é"), Err(ParseError::Digit { position: 8, value: 'é', .. })));
    }

    #[test]
    fn ignored_digits_are_accepted_and_kept() {
        let control = Control::parse("220209920").unwrap();
        assert_eq!(control.aircon, Switch::Keep);
        assert_eq!(control.fan_level, 0);
        assert_eq!(control.encode(), "220209920");
    }

    fn state(text: &str) -> State {
        State::parse(text).unwrap()
    }

    #[test]
    fn off_ignores_the_rest_and_keeps_previous_levels() {
        let current = state("015132300");
        let next = Control::parse("009060210").unwrap().apply_to(&current);
        assert_eq!(next.encode(), "005032310");
    }

    #[test]
    fn on_sets_levels_and_keep_changes_nothing() {
        let current = state("015132300");
        assert_eq!(Control::parse("317191101").unwrap().apply_to(&current).encode(), "317191101");
        assert_eq!(Control::parse("422222222").unwrap().apply_to(&current).encode(), "415132300");
    }

    #[test]
    fn a_mode_change_is_one_alarm() {
        let changes = changes(&state("000000000"), &state("311111111"));
        assert_eq!(changes, [Change::ModeRun(3)]);
    }

    #[test]
    fn field_changes_are_one_alarm_each_in_order() {
        let changes = changes(&state("015132300"), &state("005132311"));
        assert_eq!(changes, [Change::Aircon(false), Change::Window(true), Change::GasValve(true)]);
        assert!(super::changes(&state("015132300"), &state("015132300")).is_empty());
        assert_eq!(super::changes(&state("300000000"), &state("000000001")), [Change::GasValve(true)]);
    }

    fn switch_strategy() -> impl Strategy<Value = Switch> {
        prop_oneof![Just(Switch::Off), Just(Switch::On), Just(Switch::Keep)]
    }

    prop_compose! {
        fn any_control()(mode in 0u8..10, aircon in switch_strategy(), fan in 0u8..10, light in switch_strategy(),
                         brightness in 0u8..10, color in 0u8..10, light_mode in 0u8..10,
                         window in switch_strategy(), gas_valve in switch_strategy()) -> Control {
            Control {
                mode, aircon, light, color, light_mode, window, gas_valve,
                fan_level: if aircon == Switch::On { fan.max(1) } else { fan },
                brightness: if light == Switch::On { brightness.max(1) } else { brightness },
            }
        }
    }

    proptest! {
        #[test]
        fn controls_round_trip(control in any_control()) {
            prop_assert_eq!(Control::parse(&control.encode()), Ok(control));
        }

        #[test]
        fn any_string_parses_or_fails_without_panic_and_valid_ones_reencode(text in "\\PC{0,12}") {
            if let Ok(control) = Control::parse(&text) {
                prop_assert_eq!(control.encode(), text.clone());
            }
            if let Ok(state) = State::parse(&text) {
                prop_assert_eq!(state.encode(), text);
            }
        }

        #[test]
        fn applying_gives_a_valid_state_and_keep_is_identity(control in any_control(), start in any_control()) {
            let current = Control { aircon: Switch::Off, light: Switch::Off, window: Switch::Off, gas_valve: Switch::Off, ..start }.apply_to(&State::parse("000000000").unwrap());
            let next = control.apply_to(&current);
            prop_assert_eq!(State::parse(&next.encode()).map(|s| s.encode()), Ok(next.encode()));
            let keep = Control { mode: current.mode, aircon: Switch::Keep, light: Switch::Keep, window: Switch::Keep, gas_valve: Switch::Keep, ..control };
            prop_assert_eq!(keep.apply_to(&current), current);
        }
    }
}
