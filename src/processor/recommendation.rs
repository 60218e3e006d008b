//! The recommendation ("notification") rules of car2home.md section 6: the first rule
//! that matches wins. Plain functions over plain inputs.

use serde_json::Value;

use crate::config::Rules;
use crate::protocol::appliance::State;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advice {
    GasValveOpen,
    RainingCloseWindow,
    RainForecastCloseWindow,
    SnowForecastCloseWindow,
    BadAirCloseWindow,
    Nothing,
}

/// What the rules look at; sensors not heard from yet are `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inputs {
    pub state: Option<State>,
    pub raining: Option<bool>,
    pub weather_icon: Option<String>,
    pub air_level: Option<u8>,
}

pub fn advise(inputs: &Inputs, rules: &Rules) -> Advice {
    let Some(state) = inputs.state else {
        return Advice::Nothing;
    };
    let icon_is = |prefixes: &[String]| {
        inputs
            .weather_icon
            .as_deref()
            .is_some_and(|icon| prefixes.iter().any(|prefix| icon.starts_with(prefix.as_str())))
    };
    if state.gas_valve {
        Advice::GasValveOpen
    } else if !state.window {
        Advice::Nothing
    } else if inputs.raining == Some(true) {
        Advice::RainingCloseWindow
    } else if icon_is(&rules.rain_icons) {
        Advice::RainForecastCloseWindow
    } else if icon_is(&rules.snow_icons) {
        Advice::SnowForecastCloseWindow
    } else if inputs.air_level.is_some_and(|level| level >= rules.bad_air_level) {
        Advice::BadAirCloseWindow
    } else {
        Advice::Nothing
    }
}

/// The rain sensor of `sensor/hometemp`: 0/1, also stored as the strings "0"/"1".
pub fn rain_from_hometemp(hometemp: &Value) -> Option<bool> {
    match &hometemp["rain"] {
        Value::Number(n) => n.as_i64().map(|n| n != 0),
        Value::String(s) => s.trim().parse::<i64>().ok().map(|n| n != 0),
        Value::Bool(b) => Some(*b),
        _ => None,
    }
}

/// Icon and air level of `sensor/openweather`.
pub fn weather_from_openweather(weather: &Value) -> (Option<String>, Option<u8>) {
    let icon = weather["icon"].as_str().map(str::to_owned);
    let air_level = match &weather["air_level"] {
        Value::Number(n) => n.as_u64().and_then(|n| u8::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    (icon, air_level)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inputs(state: &str, raining: Option<bool>, icon: Option<&str>, air: Option<u8>) -> Inputs {
        Inputs {
            state: Some(State::parse(state).unwrap()),
            raining,
            weather_icon: icon.map(str::to_owned),
            air_level: air,
        }
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let rules = Rules::default();
        let window_open = "000000010";
        let cases = [
            (inputs("000000011", Some(true), Some("10d"), Some(5)), Advice::GasValveOpen),
            (inputs(window_open, Some(true), Some("13n"), Some(5)), Advice::RainingCloseWindow),
            (inputs(window_open, Some(false), Some("09d"), Some(5)), Advice::RainForecastCloseWindow),
            (inputs(window_open, None, Some("11n"), None), Advice::RainForecastCloseWindow),
            (inputs(window_open, Some(false), Some("13d"), Some(5)), Advice::SnowForecastCloseWindow),
            (inputs(window_open, Some(false), Some("02n"), Some(2)), Advice::BadAirCloseWindow),
            (inputs(window_open, Some(false), Some("02n"), Some(1)), Advice::Nothing),
            (inputs("000000000", Some(true), Some("10d"), Some(5)), Advice::Nothing),
            (Inputs::default(), Advice::Nothing),
        ];
        for (inputs, expected) in cases {
            assert_eq!(advise(&inputs, &rules), expected, "{inputs:?}");
        }
    }

    #[test]
    fn thresholds_are_configurable() {
        let rules = Rules { bad_air_level: 4, ..Rules::default() };
        assert_eq!(advise(&inputs("000000010", None, None, Some(3)), &rules), Advice::Nothing);
        assert_eq!(advise(&inputs("000000010", None, None, Some(4)), &rules), Advice::BadAirCloseWindow);
    }

    #[test]
    fn sensors_are_read_in_both_stored_forms() {
        assert_eq!(rain_from_hometemp(&json!({"temp": 29.2, "humi": 60, "rain": 1})), Some(true));
        assert_eq!(rain_from_hometemp(&json!({"rain": "0"})), Some(false));
        assert_eq!(rain_from_hometemp(&json!({"rain": "wet"})), None);
        assert_eq!(rain_from_hometemp(&json!({})), None);
        assert_eq!(
            weather_from_openweather(&json!({"temp": "19.8", "icon": "02n", "air_level": 1})),
            (Some("02n".into()), Some(1))
        );
        assert_eq!(weather_from_openweather(&json!({"air_level": "3"})), (None, Some(3)));
    }
}
