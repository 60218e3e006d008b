//! Home Assistant MQTT discovery: the retained configs that make Home Assistant show
//! and drive the home with no configuration of its own, and the translation of its
//! commands into 9-digit controls. Plain functions over plain data; the processor
//! publishes and routes.
//!
//! The appliance entities read the retained 9-digit state (`smarthomed/appliance/state`)
//! through value templates, so no second state format exists. Commands arrive on
//! `smarthomed/ha/<command>/set` and become a [`Control`] built from the last known
//! state (a light turned on keeps its brightness), which is checked like any app's
//! control before it reaches the appliance.

use serde_json::{Value, json};

use super::appliance::{Control, ParseError, State, Switch};
use super::role::Role;
use super::topics::{CURRENT_STATE_TOPIC, HOMETEMP_TOPIC, OPENWEATHER_TOPIC, RECOMMENDATION_TOPIC};

/// Home Assistant's own default discovery prefix.
pub const DEFAULT_PREFIX: &str = "homeassistant";
/// Where Home Assistant's commands arrive: `smarthomed/ha/<command>/set`.
pub const COMMAND_FILTER: &str = "smarthomed/ha/+/set";
pub const COMMAND_PREFIX: &str = "smarthomed/ha/";
/// The node id under the discovery prefix, and the device's identifier.
const NODE: &str = "smarthomed";
/// Light modes by their digit (position 6 of the protocol).
pub const LIGHT_EFFECTS: [&str; 4] = ["normal", "mood", "sleep", "party"];
/// Home Assistant announces itself here (`online`) when it starts: discovery is sent again.
pub fn status_topic(prefix: &str) -> String {
    format!("{prefix}/status")
}

fn command_topic(command: &str) -> String {
    format!("{COMMAND_PREFIX}{command}/set")
}

fn availability(role: &str) -> Value {
    json!({"topic": format!("smarthomed/{role}/availability"), "payload_available": "online", "payload_not_available": "offline"})
}

/// Every discovery config, as (topic, retained payload).
pub fn discovery(prefix: &str) -> Vec<(String, Value)> {
    let device = json!({
        "identifiers": [NODE],
        "name": "smarthomed",
        "manufacturer": "smarthomed",
        "model": "Car2Home home",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    let origin = json!({"name": "smarthomed", "sw_version": env!("CARGO_PKG_VERSION")});
    let digit_is_one =
        |position: usize, yes: &str, no: &str| format!("{{{{ '{yes}' if value[{position}] == '1' else '{no}' }}}}");
    let effects = serde_json::to_string(&LIGHT_EFFECTS).unwrap_or_default();
    let appliance = [
        (
            "light",
            "light",
            json!({
                "name": "Light",
                "command_topic": command_topic("light"),
                "state_topic": CURRENT_STATE_TOPIC,
                "state_value_template": digit_is_one(3, "ON", "OFF"),
                "brightness_command_topic": command_topic("light_brightness"),
                "brightness_state_topic": CURRENT_STATE_TOPIC,
                "brightness_value_template": "{{ value[4] | int }}",
                "brightness_scale": 9,
                "effect_command_topic": command_topic("light_effect"),
                "effect_state_topic": CURRENT_STATE_TOPIC,
                "effect_value_template": format!("{{{{ ({effects} + ['normal'] * 6)[value[6] | int] }}}}"),
                "effect_list": LIGHT_EFFECTS,
            }),
        ),
        (
            "fan",
            "aircon",
            json!({
                "name": "Air conditioner",
                "command_topic": command_topic("aircon"),
                "state_topic": CURRENT_STATE_TOPIC,
                "state_value_template": digit_is_one(1, "ON", "OFF"),
                "percentage_command_topic": command_topic("aircon_level"),
                "percentage_state_topic": CURRENT_STATE_TOPIC,
                "percentage_value_template": "{{ value[2] | int }}",
                "speed_range_min": 1,
                "speed_range_max": 9,
            }),
        ),
        (
            "cover",
            "window",
            json!({
                "name": "Window",
                "device_class": "window",
                "command_topic": command_topic("window"),
                "payload_open": "OPEN",
                "payload_close": "CLOSE",
                "payload_stop": null,
                "state_topic": CURRENT_STATE_TOPIC,
                "value_template": digit_is_one(7, "open", "closed"),
                "state_open": "open",
                "state_closed": "closed",
            }),
        ),
        (
            "valve",
            "gas_valve",
            json!({
                "name": "Gas valve",
                "device_class": "gas",
                "command_topic": command_topic("gas_valve"),
                "payload_open": "OPEN",
                "payload_close": "CLOSE",
                "payload_stop": null,
                "state_topic": CURRENT_STATE_TOPIC,
                "value_template": digit_is_one(8, "open", "closed"),
                "state_open": "open",
                "state_closed": "closed",
            }),
        ),
    ];
    let sensor = |name: &str, topic: &str, template: Option<&str>, extra: Value| {
        let mut config = json!({"name": name, "state_topic": topic});
        if let Some(template) = template {
            config["value_template"] = json!(template);
        }
        merge(&mut config, extra);
        config
    };
    let sensors = [
        (
            "home_temperature",
            Role::Syncer.name(),
            sensor(
                "Home temperature",
                HOMETEMP_TOPIC,
                Some("{{ value_json.temp }}"),
                json!({"device_class": "temperature", "unit_of_measurement": "°C", "state_class": "measurement"}),
            ),
        ),
        (
            "home_humidity",
            Role::Syncer.name(),
            sensor(
                "Home humidity",
                HOMETEMP_TOPIC,
                Some("{{ value_json.humi }}"),
                json!({"device_class": "humidity", "unit_of_measurement": "%", "state_class": "measurement"}),
            ),
        ),
        (
            "outdoor_temperature",
            Role::Syncer.name(),
            sensor(
                "Outdoor temperature",
                OPENWEATHER_TOPIC,
                Some("{{ value_json.temp }}"),
                json!({"device_class": "temperature", "unit_of_measurement": "°C", "state_class": "measurement"}),
            ),
        ),
        (
            "weather",
            Role::Syncer.name(),
            sensor("Weather", OPENWEATHER_TOPIC, Some("{{ value_json.description }}"), json!({})),
        ),
        (
            "air_level",
            Role::Syncer.name(),
            sensor(
                "Air quality index",
                OPENWEATHER_TOPIC,
                Some("{{ value_json.air_level }}"),
                json!({"device_class": "aqi"}),
            ),
        ),
        ("recommendation", Role::Processor.name(), sensor("Recommendation", RECOMMENDATION_TOPIC, None, json!({}))),
    ];

    let mut configs = Vec::new();
    let mut add = |component: &str, object: &str, mut config: Value, available_with: Option<&str>| {
        let unique_id = format!("{NODE}_{object}");
        config["unique_id"] = json!(unique_id);
        config["object_id"] = json!(unique_id);
        config["device"] = device.clone();
        config["origin"] = origin.clone();
        if let Some(role) = available_with {
            config["availability"] = json!([availability(role)]);
        }
        configs.push((format!("{prefix}/{component}/{NODE}/{object}/config"), config));
    };
    for (component, object, config) in appliance {
        add(component, object, config, Some(Role::Processor.name()));
    }
    for (object, role, config) in sensors {
        add("sensor", object, config, Some(role));
    }
    // Every child's availability is shown as a connectivity sensor.
    for role in Role::ALL.map(Role::name) {
        let config = json!({
            "name": format!("{role} running"),
            "state_topic": format!("smarthomed/{role}/availability"),
            "payload_on": "online",
            "payload_off": "offline",
            "device_class": "connectivity",
            "entity_category": "diagnostic",
        });
        add("binary_sensor", &format!("{role}_running"), config, None);
    }
    configs
}

fn merge(config: &mut Value, extra: Value) {
    if let (Value::Object(config), Value::Object(extra)) = (config, extra) {
        config.extend(extra);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("no Home Assistant command on {0:?}")]
    UnknownTopic(String),
    #[error("{command}: {payload:?} is not one of {expected}")]
    BadPayload { command: &'static str, payload: String, expected: &'static str },
    #[error("the control it makes is invalid: {0}")]
    Control(#[from] ParseError),
}

/// The state Home Assistant's commands build on when the appliance has reported none:
/// everything off, levels 5, white, normal.
pub fn assumed_state(reported: Option<&State>) -> State {
    reported.copied().unwrap_or(State {
        mode: 0,
        aircon: false,
        fan_level: 5,
        light: false,
        brightness: 5,
        color: 0,
        light_mode: 0,
        window: false,
        gas_valve: false,
    })
}

/// The control that carries out Home Assistant's `payload` on `topic`, built from
/// `current` (what the earlier commands lead to: a light turned on keeps the brightness
/// just asked for), manual (mode 0), and checked as an app's control is.
pub fn control_for(topic: &str, payload: &str, current: &State) -> Result<Control, CommandError> {
    let command = topic
        .strip_prefix(COMMAND_PREFIX)
        .and_then(|rest| rest.strip_suffix("/set"))
        .ok_or_else(|| CommandError::UnknownTopic(topic.to_owned()))?;
    let payload = payload.trim();
    let level = |command: &'static str| {
        payload.parse::<u8>().ok().filter(|level| *level <= 9).ok_or(CommandError::BadPayload {
            command,
            payload: payload.to_owned(),
            expected: "0-9",
        })
    };
    let open = |command: &'static str| match payload {
        "OPEN" => Ok(Switch::On),
        "CLOSE" => Ok(Switch::Off),
        _ => Err(CommandError::BadPayload { command, payload: payload.to_owned(), expected: "OPEN, CLOSE" }),
    };
    let on = |command: &'static str| match payload {
        "ON" => Ok(true),
        "OFF" => Ok(false),
        _ => Err(CommandError::BadPayload { command, payload: payload.to_owned(), expected: "ON, OFF" }),
    };
    let mut control = Control {
        mode: 0,
        aircon: Switch::Keep,
        fan_level: current.fan_level.max(1),
        light: Switch::Keep,
        brightness: current.brightness.max(1),
        color: current.color,
        light_mode: current.light_mode,
        window: Switch::Keep,
        gas_valve: Switch::Keep,
    };
    match command {
        "light" => control.light = Switch::from_bool(on("light")?),
        "light_brightness" => match level("light_brightness")? {
            0 => control.light = Switch::Off,
            level => (control.light, control.brightness) = (Switch::On, level),
        },
        "light_effect" => {
            let mode =
                LIGHT_EFFECTS.iter().position(|effect| *effect == payload).ok_or_else(|| CommandError::BadPayload {
                    command: "light_effect",
                    payload: payload.to_owned(),
                    expected: "normal, mood, sleep, party",
                })?;
            (control.light, control.light_mode) = (Switch::On, mode as u8);
        }
        "aircon" => control.aircon = Switch::from_bool(on("aircon")?),
        "aircon_level" => match level("aircon_level")? {
            0 => control.aircon = Switch::Off,
            level => (control.aircon, control.fan_level) = (Switch::On, level),
        },
        "window" => control.window = open("window")?,
        "gas_valve" => control.gas_valve = open("gas_valve")?,
        _ => return Err(CommandError::UnknownTopic(topic.to_owned())),
    }
    Ok(Control::parse(&control.encode())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_change_only_their_field_and_keep_the_rest() {
        let current = State::parse("006120010").unwrap();
        let cases = [
            ("smarthomed/ha/light/set", "OFF", "026020022"),
            ("smarthomed/ha/light/set", "ON", "026120022"),
            ("smarthomed/ha/light_brightness/set", "9", "026190022"),
            ("smarthomed/ha/light_effect/set", "party", "026120322"),
            ("smarthomed/ha/aircon/set", "ON", "016220022"),
            ("smarthomed/ha/aircon_level/set", "3", "013220022"),
            ("smarthomed/ha/aircon_level/set", "0", "006220022"),
            ("smarthomed/ha/window/set", "OPEN", "026220012"),
            ("smarthomed/ha/gas_valve/set", "CLOSE", "026220020"),
        ];
        for (topic, payload, expected) in cases {
            let control = control_for(topic, payload, &current).unwrap();
            assert_eq!(control.encode(), expected, "{topic} {payload}");
        }
    }

    #[test]
    fn bad_commands_are_errors_naming_what_is_expected() {
        let current = assumed_state(None);
        let err = control_for("smarthomed/ha/light/set", "BRIGHT", &current).unwrap_err();
        assert_eq!(err.to_string(), "light: \"BRIGHT\" is not one of ON, OFF");
        assert!(control_for("smarthomed/ha/light_brightness/set", "10", &current).is_err());
        assert!(control_for("smarthomed/ha/toaster/set", "ON", &current).is_err());
        assert!(control_for("smarthomed/other", "ON", &current).is_err());
        assert_eq!(control_for("smarthomed/ha/light/set", "ON", &current).unwrap().encode(), "025150022");
    }

    #[test]
    fn every_config_has_a_unique_id_the_device_and_a_topic_of_its_own() {
        let configs = discovery("homeassistant");
        let mut ids = std::collections::HashSet::new();
        for (topic, config) in &configs {
            assert!(topic.starts_with("homeassistant/") && topic.ends_with("/config"), "{topic}");
            assert!(ids.insert(config["unique_id"].as_str().unwrap().to_owned()), "{topic}");
            assert_eq!(config["device"]["identifiers"][0], "smarthomed");
        }
        assert_eq!(configs.len(), 4 + 6 + 3);
    }
}
