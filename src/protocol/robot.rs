//! The robot channel's wire format (protocol/README.md, "Robots"): the topics under
//! `smarthomed/robot/v1/<robotId>/` and the JSON of each. Field names follow VDA 5050
//! where it has one (camelCase). Plain types and functions, no I/O.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const PREFIX: &str = "smarthomed/robot/v1/";
/// The daemon's robot channel: a connection of its own (client id `smarthomed-robots`,
/// persistent), so that e-stops never wait behind other work.
pub const DAEMON_LINK: &str = "robots";
/// Requests to stop every robot.
pub const ALL_ESTOP_REQUEST_TOPIC: &str = "smarthomed/robot/v1/all/estop/request";
/// What the daemon reads from robots and apps. `+/estop/request` takes the `all`
/// request too: a second, overlapping filter would have it delivered twice.
pub const DAEMON_FILTERS: [&str; 4] = [
    "smarthomed/robot/v1/+/connection",
    "smarthomed/robot/v1/+/state",
    "smarthomed/robot/v1/+/factsheet",
    "smarthomed/robot/v1/+/estop/request",
];
/// How many action states a robot repeats in every state message.
pub const ACTION_STATES_KEPT: usize = 8;
/// Robots send a state at least this often unless their factsheet says otherwise.
pub const DEFAULT_HEARTBEAT_SECS: u32 = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Vacuum,
    /// A serving and cooking robot, as RoboDine's.
    Serving,
    Mobile,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Vacuum, Kind::Serving, Kind::Mobile];

    /// The commands of this kind, as sent in `cmd` and `robot_command`.
    pub fn commands(self) -> &'static [&'static str] {
        match self {
            Kind::Vacuum => &["start", "pause", "stop", "home"],
            Kind::Serving => &["start_cooking", "move_to_table", "pause", "resume", "stop"],
            Kind::Mobile => &["move_to", "pause", "resume", "cancel", "charge", "undock"],
        }
    }

    /// The state a robot of this kind rests in when it starts, or after a reset.
    pub fn resting(self) -> RobotState {
        match self {
            Kind::Vacuum => RobotState::Docked,
            Kind::Serving | Kind::Mobile => RobotState::Idle,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RobotState {
    Docked,
    Idle,
    Cleaning,
    Paused,
    Returning,
    Cooking,
    Moving,
    Charging,
    EmergencyStopped,
    Error,
}

impl RobotState {
    pub const ALL: [RobotState; 10] = [
        RobotState::Docked,
        RobotState::Idle,
        RobotState::Cleaning,
        RobotState::Paused,
        RobotState::Returning,
        RobotState::Cooking,
        RobotState::Moving,
        RobotState::Charging,
        RobotState::EmergencyStopped,
        RobotState::Error,
    ];

    /// Doing work: only the commands that steer the work are taken.
    pub fn is_busy(self) -> bool {
        matches!(self, Self::Cleaning | Self::Paused | Self::Returning | Self::Cooking | Self::Moving)
    }
}

/// The topics of one robot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    Connection,
    State,
    Telemetry,
    Factsheet,
    Cmd,
    Estop,
    EstopRequest,
    Status,
}

impl Leaf {
    const ALL: [(Leaf, &'static str); 8] = [
        (Leaf::Connection, "connection"),
        (Leaf::State, "state"),
        (Leaf::Telemetry, "telemetry"),
        (Leaf::Factsheet, "factsheet"),
        (Leaf::Cmd, "cmd"),
        (Leaf::Estop, "estop"),
        (Leaf::EstopRequest, "estop/request"),
        (Leaf::Status, "status"),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(leaf, _)| *leaf == self).map_or("", |(_, name)| name)
    }
}

/// Which robots a topic is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    One(String),
    /// `smarthomed/robot/v1/all/...`: only `estop/request` exists there.
    All,
}

pub fn topic(robot_id: &str, leaf: Leaf) -> String {
    format!("{PREFIX}{robot_id}/{}", leaf.name())
}

/// The robot and leaf of a topic under [`PREFIX`]; None for anything else.
pub fn parse_topic(topic: &str) -> Option<(Target, Leaf)> {
    let rest = topic.strip_prefix(PREFIX)?;
    let (id, leaf_name) = rest.split_once('/')?;
    let leaf = Leaf::ALL.iter().find(|(_, name)| *name == leaf_name)?.0;
    if id == "all" {
        return (leaf == Leaf::EstopRequest).then_some((Target::All, leaf));
    }
    valid_robot_id(id).then(|| (Target::One(id.to_owned()), leaf))
}

/// `[A-Za-z0-9_.:-]{1,64}`, and not the reserved `all`.
pub fn valid_robot_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id != "all"
        && id.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"_.:-".contains(&byte))
}

/// The MQTT client id a robot connects with.
pub fn client_id(robot_id: &str) -> String {
    format!("robot-{robot_id}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    Online,
    Offline,
    ConnectionBroken,
}

/// `connection` (retained): published by the robot after each connect (online) and
/// before a clean disconnect (offline); its last will says connection_broken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionMessage {
    pub header_id: u64,
    pub timestamp: String,
    pub robot_id: String,
    pub session_id: String,
    pub connection_state: ConnectionState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorLevel {
    Warning,
    Fatal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RobotError {
    pub error_type: String,
    pub error_level: ErrorLevel,
    #[serde(default)]
    pub error_description: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    Waiting,
    Running,
    Paused,
    Finished,
    Failed,
    Rejected,
}

impl ActionStatus {
    /// Whether the command is over (nothing more will be reported of it).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Finished | Self::Failed | Self::Rejected)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionState {
    pub cmd_id: String,
    pub command: String,
    pub action_status: ActionStatus,
    #[serde(default)]
    pub result_description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Battery {
    /// Percent, 0-100.
    pub charge: f64,
    pub charging: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Position {
    pub x: f64,
    pub y: f64,
    pub theta: f64,
    #[serde(default)]
    pub map_id: String,
}

/// `state`: on every change and at least every heartbeatSecs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateMessage {
    pub header_id: u64,
    pub timestamp: String,
    pub robot_id: String,
    pub session_id: String,
    pub state: RobotState,
    /// The newest e-stop epoch the robot has applied.
    pub estop_epoch: u64,
    /// While emergency_stopped: whether the robot's own stop can be cleared (the
    /// physical button released, nothing in the way).
    #[serde(default)]
    pub estop_clearable: bool,
    #[serde(default)]
    pub errors: Vec<RobotError>,
    /// The newest [`ACTION_STATES_KEPT`] commands, so one lost message loses no
    /// acknowledgement.
    #[serde(default)]
    pub action_states: Vec<ActionState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery: Option<Battery>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
    /// Serving robots: where a move goes and when it arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<String>,
}

/// `factsheet` (retained): what the robot is and can do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Factsheet {
    pub robot_id: String,
    pub kind: Kind,
    pub supported_commands: Vec<String>,
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u32,
    #[serde(default)]
    pub limits: Value,
}

fn default_heartbeat_secs() -> u32 {
    DEFAULT_HEARTBEAT_SECS
}

/// `cmd`: from the daemon only, QoS 1, never retained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CmdMessage {
    pub header_id: u64,
    pub timestamp: String,
    /// The idempotency key: a robot carries out one cmdId once.
    pub cmd_id: String,
    pub command: String,
    #[serde(default)]
    pub params: Value,
    /// A robot drops a cmd whose epoch is below its current one.
    pub estop_epoch: u64,
    /// A robot drops a cmd received after this (RFC 3339).
    pub expires_at: String,
    pub requested_by: String,
}

/// `estop` (retained): the latch. Active stops the robot until a reset publishes it
/// inactive with the next epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EstopLatch {
    pub active: bool,
    pub epoch: u64,
    pub timestamp: String,
    pub requested_by: String,
}

/// `estop/request`: any signed-in app asks for a stop; robots act on it themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EstopRequest {
    #[serde(rename = "Producer")]
    pub producer: String,
    #[serde(rename = "UID")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// What a robot does when the daemon is lost (its robots connection's availability,
/// `smarthomed/robots/availability`, says offline): as its owner registered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDaemonLost {
    Continue,
    Pause,
    Stop,
}

/// Where the daemon's robot connection says online or offline (its last will).
pub const DAEMON_AVAILABILITY_TOPIC: &str = "smarthomed/robots/availability";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    Online,
    Offline,
    /// Connected, but no state for three heartbeats.
    Stale,
}

/// `status` (retained): the daemon's view of a robot, for apps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RobotStatus {
    pub robot_id: String,
    pub name: String,
    pub kind: Kind,
    /// What the robot last reported; None before its first state.
    pub state: Option<RobotState>,
    pub link: Link,
    pub estop_active: bool,
    pub estop_epoch: u64,
    /// The robot has reported emergency_stopped with the latch's epoch.
    pub estop_confirmed: bool,
    pub last_seen: Option<String>,
    /// What the robot is to do when the daemon is lost; robots read it here.
    pub on_daemon_lost: OnDaemonLost,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery: Option<Battery>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
    #[serde(default)]
    pub errors: Vec<RobotError>,
}

/// What a `robot_command_status` reply can say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    Sent,
    Running,
    Finished,
    Failed,
    Rejected,
    Expired,
    Canceled,
    /// Pending when the daemon restarted: not sent again; the robot's next state tells.
    Unknown,
}

impl CommandStatus {
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Sent | Self::Running | Self::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_name_a_robot_or_all_and_a_known_leaf() {
        assert_eq!(parse_topic("smarthomed/robot/v1/vac1/state"), Some((Target::One("vac1".into()), Leaf::State)));
        assert_eq!(
            parse_topic("smarthomed/robot/v1/vac1/estop/request"),
            Some((Target::One("vac1".into()), Leaf::EstopRequest))
        );
        assert_eq!(parse_topic(ALL_ESTOP_REQUEST_TOPIC), Some((Target::All, Leaf::EstopRequest)));
        assert_eq!(parse_topic("smarthomed/robot/v1/all/state"), None);
        assert_eq!(parse_topic("smarthomed/robot/v1/bad id/state"), None);
        assert_eq!(parse_topic("smarthomed/robot/v1/vac1/nope"), None);
        assert_eq!(parse_topic("webos/server/info"), None);
        for leaf in Leaf::ALL.map(|(leaf, _)| leaf) {
            assert_eq!(parse_topic(&topic("r-1.a:b_c", leaf)), Some((Target::One("r-1.a:b_c".into()), leaf)));
        }
    }

    #[test]
    fn robot_ids_are_short_and_plain() {
        assert!(valid_robot_id("vac1") && valid_robot_id("a.b:c-d_e") && valid_robot_id(&"x".repeat(64)));
        assert!(!valid_robot_id("") && !valid_robot_id(&"x".repeat(65)) && !valid_robot_id("a/b"));
        assert!(!valid_robot_id("a+b") && !valid_robot_id("all") && !valid_robot_id("é"));
    }

    #[test]
    fn messages_use_vda5050_names() {
        let state = StateMessage {
            header_id: 7,
            timestamp: "2026-11-23T10:00:00Z".into(),
            robot_id: "vac1".into(),
            session_id: "s1".into(),
            state: RobotState::Cleaning,
            estop_epoch: 2,
            estop_clearable: false,
            errors: vec![],
            action_states: vec![ActionState {
                cmd_id: "c1".into(),
                command: "start".into(),
                action_status: ActionStatus::Running,
                result_description: String::new(),
            }],
            battery: Some(Battery { charge: 80.0, charging: false }),
            position: None,
            destination: None,
            eta: None,
        };
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(json["headerId"], 7);
        assert_eq!(json["estopEpoch"], 2);
        assert_eq!(json["actionStates"][0]["actionStatus"], "running");
        assert_eq!(json["actionStates"][0]["cmdId"], "c1");
        assert_eq!(serde_json::from_value::<StateMessage>(json).unwrap(), state);
        let connection: ConnectionMessage = serde_json::from_str(
            r#"{"headerId":1,"timestamp":"t","robotId":"vac1","sessionId":"s","connectionState":"connection_broken"}"#,
        )
        .unwrap();
        assert_eq!(connection.connection_state, ConnectionState::ConnectionBroken);
    }
}
