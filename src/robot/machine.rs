//! What each kind of robot can be asked to do in each state (protocol/README.md,
//! "Robots"). The daemon uses it to refuse an impossible command early, with the
//! current state; the robot checks again and is authoritative, and the daemon's view
//! changes only when the robot reports. The simulator runs the same table.
//!
//! Common to every kind: any state goes to emergency_stopped on an e-stop, and leaves
//! it only through an owner's reset once the robot reports its stop clearable; a fatal
//! error goes to error, and a reset to idle. "Offline" is a property of the link, not a
//! state. Work starts only from a resting state; while busy only the commands of the
//! table (pause, stop, cancel, home, ...) are taken, anything else is robot_busy.

pub use crate::protocol::robot::{Kind, RobotState};

/// Why a command cannot be taken now; each is an error code of `robot_command`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The kind has no such command.
    UnsupportedCommand,
    /// The latch is set: nothing moves until a reset.
    Estopped,
    /// Busy with other work; only pause, stop, cancel and the like are taken.
    Busy,
    /// Not from this state (pause while idle, anything while in error).
    InvalidTransition,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::UnsupportedCommand => "unsupported_command",
            Refusal::Estopped => "robot_estopped",
            Refusal::Busy => "robot_busy",
            Refusal::InvalidTransition => "invalid_transition",
        }
    }
}

/// Where `command` takes a robot of `kind` in `state`: `Ok(Some(next))`, or `Ok(None)`
/// when the robot decides (resume goes back to what was paused).
pub fn next_state(kind: Kind, state: RobotState, command: &str) -> Result<Option<RobotState>, Refusal> {
    use RobotState::*;
    if !kind.commands().contains(&command) {
        return Err(Refusal::UnsupportedCommand);
    }
    if state == EmergencyStopped {
        return Err(Refusal::Estopped);
    }
    let next = match (kind, state, command) {
        (Kind::Vacuum, Docked | Idle | Paused, "start") => Some(Cleaning),
        (Kind::Vacuum, Cleaning, "pause") => Some(Paused),
        (Kind::Vacuum, Cleaning | Paused, "stop") => Some(Idle),
        (Kind::Vacuum, Idle | Cleaning | Paused, "home") => Some(Returning),

        (Kind::Serving, Idle, "start_cooking") => Some(Cooking),
        (Kind::Serving, Idle, "move_to_table") => Some(Moving),
        (Kind::Serving, Cooking | Moving, "pause") => Some(Paused),
        (Kind::Serving, Paused, "resume") => None,
        (Kind::Serving, Cooking | Moving | Paused, "stop") => Some(Idle),

        (Kind::Mobile, Idle, "move_to") => Some(Moving),
        (Kind::Mobile, Moving, "pause") => Some(Paused),
        (Kind::Mobile, Paused, "resume") => Some(Moving),
        (Kind::Mobile, Moving | Paused, "cancel") => Some(Idle),
        (Kind::Mobile, Idle, "charge") => Some(Charging),
        (Kind::Mobile, Charging, "undock") => Some(Idle),

        _ if state.is_busy() => return Err(Refusal::Busy),
        _ => return Err(Refusal::InvalidTransition),
    };
    Ok(next)
}

/// Where work ends when it completes by itself (the robot arrived, the dish is done).
pub fn completed(kind: Kind, state: RobotState) -> Option<RobotState> {
    match (kind, state) {
        (Kind::Vacuum, RobotState::Returning) => Some(RobotState::Docked),
        (Kind::Vacuum, RobotState::Cleaning) => Some(RobotState::Returning),
        (Kind::Serving, RobotState::Cooking | RobotState::Moving) => Some(RobotState::Idle),
        (Kind::Mobile, RobotState::Moving) => Some(RobotState::Idle),
        _ => None,
    }
}

/// The parameters a command needs, checked before it is sent.
pub fn check_params(command: &str, params: &serde_json::Value) -> Result<(), String> {
    let text = |key: &str| params.get(key).and_then(serde_json::Value::as_str).filter(|value| !value.is_empty());
    match command {
        "move_to_table" if text("destination").is_none() => {
            Err("move_to_table needs params.destination (a table)".into())
        }
        "move_to" => {
            let number = |key: &str| params.get(key).and_then(serde_json::Value::as_f64);
            if number("x").is_none() || number("y").is_none() {
                return Err("move_to needs numeric params.x and params.y".into());
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RobotState::*;

    /// Every (state, command) of a kind that is allowed, with where it leads; the
    /// tests below check every other pair is refused with the right code.
    fn allowed(kind: Kind) -> Vec<(RobotState, &'static str, Option<RobotState>)> {
        match kind {
            Kind::Vacuum => vec![
                (Docked, "start", Some(Cleaning)),
                (Idle, "start", Some(Cleaning)),
                (Paused, "start", Some(Cleaning)),
                (Cleaning, "pause", Some(Paused)),
                (Cleaning, "stop", Some(Idle)),
                (Paused, "stop", Some(Idle)),
                (Idle, "home", Some(Returning)),
                (Cleaning, "home", Some(Returning)),
                (Paused, "home", Some(Returning)),
            ],
            Kind::Serving => vec![
                (Idle, "start_cooking", Some(Cooking)),
                (Idle, "move_to_table", Some(Moving)),
                (Cooking, "pause", Some(Paused)),
                (Moving, "pause", Some(Paused)),
                (Paused, "resume", None),
                (Cooking, "stop", Some(Idle)),
                (Moving, "stop", Some(Idle)),
                (Paused, "stop", Some(Idle)),
            ],
            Kind::Mobile => vec![
                (Idle, "move_to", Some(Moving)),
                (Moving, "pause", Some(Paused)),
                (Paused, "resume", Some(Moving)),
                (Moving, "cancel", Some(Idle)),
                (Paused, "cancel", Some(Idle)),
                (Idle, "charge", Some(Charging)),
                (Charging, "undock", Some(Idle)),
            ],
        }
    }

    #[test]
    fn every_state_and_command_of_every_kind() {
        let every_command: Vec<&str> = Kind::ALL.iter().flat_map(|kind| kind.commands().iter().copied()).collect();
        for kind in Kind::ALL {
            let allowed = allowed(kind);
            for state in RobotState::ALL {
                for command in every_command.iter().copied().chain(["fly"]) {
                    let got = next_state(kind, state, command);
                    let expected = if !kind.commands().contains(&command) {
                        Err(Refusal::UnsupportedCommand)
                    } else if state == EmergencyStopped {
                        Err(Refusal::Estopped)
                    } else if let Some((_, _, next)) =
                        allowed.iter().find(|(from, name, _)| *from == state && *name == command)
                    {
                        Ok(*next)
                    } else if state.is_busy() {
                        Err(Refusal::Busy)
                    } else {
                        Err(Refusal::InvalidTransition)
                    };
                    assert_eq!(got, expected, "{kind:?} {state:?} {command}");
                }
            }
        }
    }

    #[test]
    fn work_is_refused_as_busy_and_error_needs_a_reset() {
        assert_eq!(next_state(Kind::Serving, Cooking, "move_to_table"), Err(Refusal::Busy));
        assert_eq!(next_state(Kind::Mobile, Moving, "move_to"), Err(Refusal::Busy));
        assert_eq!(next_state(Kind::Vacuum, Error, "start"), Err(Refusal::InvalidTransition));
        assert_eq!(next_state(Kind::Vacuum, Idle, "pause"), Err(Refusal::InvalidTransition));
        assert_eq!(Refusal::Busy.code(), "robot_busy");
    }

    #[test]
    fn work_completes_to_rest() {
        assert_eq!(completed(Kind::Vacuum, Returning), Some(Docked));
        assert_eq!(completed(Kind::Serving, Moving), Some(Idle));
        assert_eq!(completed(Kind::Mobile, Charging), None);
    }

    #[test]
    fn moves_need_their_destination() {
        use serde_json::json;
        assert!(check_params("move_to_table", &json!({"destination": "T4"})).is_ok());
        assert!(check_params("move_to_table", &json!({})).is_err());
        assert!(check_params("move_to", &json!({"x": 1.0, "y": 2})).is_ok());
        assert!(check_params("move_to", &json!({"x": "1"})).is_err());
        assert!(check_params("start", &serde_json::Value::Null).is_ok());
    }
}
