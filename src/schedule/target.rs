//! What a schedule asks of the appliance, and the control that gets it there from
//! the current state: only fields that differ are set, compared as typed values (the
//! old backend compared Firestore booleans with digit strings, so everything always
//! "differed").

use crate::protocol::appliance::{Control, State, Switch};

use crate::protocol::schedule::ApplianceSettings;

/// The control that sets every field as `settings` says, under mode digit `mode`.
pub fn full_control(mode: u8, settings: &ApplianceSettings) -> Control {
    Control {
        mode,
        aircon: Switch::from_bool(settings.aircon_enable),
        fan_level: settings.aircon_wind_power,
        light: Switch::from_bool(settings.light_enable),
        brightness: settings.light_brightness,
        color: settings.light_color,
        light_mode: settings.light_mode,
        window: Switch::from_bool(settings.window_open),
        gas_valve: Switch::from_bool(settings.gas_valve_enable),
    }
}

/// The control to send to reach `target` from `current`, or `None` when the appliance
/// is already there. Fields already as wanted are sent as "keep"; with no known
/// current state, everything is sent.
pub fn needed_control(target: &Control, current: Option<&State>) -> Option<Control> {
    let Some(current) = current else {
        return Some(*target);
    };
    let keep_if = |same: bool, wanted: Switch| if same { Switch::Keep } else { wanted };
    let aircon_same = match target.aircon {
        Switch::On => current.aircon && current.fan_level == target.fan_level,
        Switch::Off => !current.aircon,
        Switch::Keep => true,
    };
    let light_same = match target.light {
        Switch::On => {
            current.light
                && current.brightness == target.brightness
                && current.color == target.color
                && current.light_mode == target.light_mode
        }
        Switch::Off => !current.light,
        Switch::Keep => true,
    };
    let flag_same = |wanted: Switch, now: bool| match wanted {
        Switch::On => now,
        Switch::Off => !now,
        Switch::Keep => true,
    };
    let control = Control {
        aircon: keep_if(aircon_same, target.aircon),
        light: keep_if(light_same, target.light),
        window: keep_if(flag_same(target.window, current.window), target.window),
        gas_valve: keep_if(flag_same(target.gas_valve, current.gas_valve), target.gas_valve),
        ..*target
    };
    let nothing_to_do =
        [control.aircon, control.light, control.window, control.gas_valve].iter().all(|switch| *switch == Switch::Keep)
            && current.mode == target.mode;
    (!nothing_to_do).then_some(control)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ApplianceSettings {
        ApplianceSettings {
            aircon_enable: true,
            aircon_wind_power: 5,
            light_enable: false,
            light_brightness: 0,
            light_color: 0,
            light_mode: 0,
            window_open: true,
            gas_valve_enable: false,
        }
    }

    #[test]
    fn only_differing_fields_are_sent() {
        let target = full_control(0, &settings());
        assert_eq!(target.encode(), "015000010");
        let current = State::parse("015000000").unwrap();
        assert_eq!(needed_control(&target, Some(&current)).unwrap().encode(), "025200012");
    }

    #[test]
    fn nothing_is_sent_when_the_appliance_is_already_there() {
        let target = full_control(0, &settings());
        assert_eq!(needed_control(&target, Some(&State::parse("015000010").unwrap())), None);
        // Ignored digits of switched-off devices do not count as differences.
        assert_eq!(needed_control(&target, Some(&State::parse("015074310").unwrap())), None);
    }

    #[test]
    fn a_level_change_or_a_new_mode_digit_is_a_difference() {
        let target = full_control(0, &settings());
        assert_eq!(needed_control(&target, Some(&State::parse("013000010").unwrap())).unwrap().encode(), "015200022");
        let mode_target = full_control(3, &settings());
        assert_eq!(
            needed_control(&mode_target, Some(&State::parse("015000010").unwrap())).unwrap().encode(),
            "325200022"
        );
    }

    #[test]
    fn without_a_known_state_everything_is_sent() {
        let target = full_control(2, &settings());
        assert_eq!(needed_control(&target, None), Some(target));
    }
}
