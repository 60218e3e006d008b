//! The daemon's view of its robots, as plain state: events in (a robot's messages, an
//! app's request, the passing of time), [`Effect`]s out (what to publish, reply,
//! persist and alert). No I/O and no clock of its own, so every rule below is a unit
//! test; `processor::robots` carries the effects out.
//!
//! - A command is sent with a cmdId (the idempotency key: the same cmdId again gets the
//!   status it has, and is not sent twice), the latch's epoch and an expiry 10 s ahead.
//!   A state listing the cmdId acknowledges it; without one within 3 s it is sent once
//!   more, then it is `expired` (robot_no_ack). App commands older than 30 s are
//!   `command_expired`.
//! - An e-stop publishes the latch (epoch + 1) before anything else, then persists it,
//!   cancels the robot's pending commands and answers `robot_estop_latched`; then
//!   `robot_estop_confirmed` once the robot reports emergency_stopped at that epoch, or
//!   `robot_estop_unconfirmed` after 2 s with an alert, the latch republished every
//!   second meanwhile.
//! - Connection messages of an older session are ignored (a takeover reorders wills);
//!   more than 3 session changes in a minute is flapping, alerted once. No state for
//!   three heartbeats makes the link stale.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::machine::{self, Refusal};
use crate::protocol::command::{RobotCommand, RobotRegistration};
pub use crate::protocol::robot::OnDaemonLost;
use crate::protocol::robot::{
    self as wire, ActionStatus, CmdMessage, CommandStatus, ConnectionMessage, ConnectionState, EstopLatch, Factsheet,
    Kind, Leaf, Link, RobotState, RobotStatus, StateMessage,
};

pub const ACK_TIMEOUT: Duration = Duration::from_secs(3);
pub const CMD_LIFETIME: Duration = Duration::from_secs(10);
pub const APP_COMMAND_MAX_AGE: Duration = Duration::from_secs(30);
pub const ESTOP_CONFIRM_WITHIN: Duration = Duration::from_secs(2);
pub const ESTOP_REPUBLISH_EVERY: Duration = Duration::from_secs(1);
const FLAP_WINDOW: Duration = Duration::from_secs(60);
const FLAP_LIMIT: usize = 3;
/// Commands kept per robot, with their history.
pub const HISTORY_KEPT: usize = 50;
/// Asks a robot for a state message; every robot takes it in every state.
pub const REPORT_STATE: &str = "report_state";

/// A robot as registered by its owner (the `robots` collection).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    pub kind: Kind,
    pub name: String,
    pub owners: Vec<String>,
    #[serde(default)]
    pub operators: Vec<String>,
    #[serde(default)]
    pub viewers: Vec<String>,
    pub heartbeat_secs: u32,
    pub on_daemon_lost: OnDaemonLost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
    Owner,
}

impl Registration {
    pub fn role_of(&self, uid: &str) -> Option<Role> {
        let listed = |list: &[String]| list.iter().any(|member| member == uid);
        if listed(&self.owners) {
            Some(Role::Owner)
        } else if listed(&self.operators) {
            Some(Role::Operator)
        } else if listed(&self.viewers) {
            Some(Role::Viewer)
        } else {
            None
        }
    }
}

/// A robot's latch as persisted (`robot_estops`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatchRecord {
    pub active: bool,
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusChange {
    pub status: CommandStatus,
    pub at: String,
}

/// One command and its history (`robot_commands`, the newest [`HISTORY_KEPT`] per
/// robot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandRecord {
    pub robot_id: String,
    pub cmd_id: String,
    pub command: String,
    #[serde(default)]
    pub params: Value,
    pub requested_by: String,
    pub producer: String,
    pub status: CommandStatus,
    #[serde(default)]
    pub reason: String,
    pub history: Vec<StatusChange>,
}

impl CommandRecord {
    /// The id of its document: robot and cmdId.
    pub fn document_id(&self) -> String {
        format!("{}:{}", self.robot_id, self.cmd_id)
    }
}

/// A robot event for the alarm list the apps show (`appliance_alarm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RobotAlarm {
    Estopped { name: String },
    EstopUnconfirmed { name: String },
    Fatal { name: String, error: String },
}

/// What the store must keep.
#[derive(Debug, Clone, PartialEq)]
pub enum Save {
    Registration {
        robot_id: String,
        registration: Option<Registration>,
    },
    Latch {
        robot_id: String,
        latch: LatchRecord,
    },
    Command(CommandRecord),
    ForgetCommand {
        document_id: String,
    },
    /// The view, written when the link changes (not at every state: that would be a
    /// write every heartbeat); None when the robot is removed.
    View {
        robot_id: String,
        view: Option<RobotStatus>,
    },
    /// What the robot says it is, when it says something new.
    Factsheet {
        robot_id: String,
        factsheet: Option<Factsheet>,
    },
    Alarm(RobotAlarm),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// To a robot topic (QoS 1).
    Publish {
        topic: String,
        payload: String,
        retain: bool,
    },
    /// To `webos/<producer>/info`.
    Reply {
        producer: String,
        payload: Value,
    },
    Save(Save),
    Alert {
        title: String,
        detail: String,
    },
}

/// A request refused, with its error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: &'static str,
    pub message: String,
}

fn refused(code: &'static str, message: impl Into<String>) -> Refused {
    Refused { code, message: message.into() }
}

/// Now, twice: for deadlines and for timestamps.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    pub wall: DateTime<Utc>,
}

impl Now {
    fn stamp(&self) -> String {
        self.wall.to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

#[derive(Debug)]
struct Pending {
    cmd: CmdMessage,
    /// Until the robot lists the cmdId; None once acknowledged.
    ack_deadline: Option<Instant>,
    resent: bool,
}

#[derive(Debug)]
struct EstopWait {
    producers: Vec<String>,
    latched_at: Instant,
    next_republish: Instant,
    unconfirmed_reported: bool,
}

#[derive(Debug)]
struct Robot {
    registration: Registration,
    latch: LatchRecord,
    waiting_confirmation: Option<EstopWait>,
    session: Option<String>,
    past_sessions: VecDeque<String>,
    online: bool,
    stale: bool,
    last_state: Option<StateMessage>,
    /// The state of the view kept in the store, until the robot reports again.
    remembered_state: Option<RobotState>,
    last_state_at: Option<Instant>,
    last_seen: Option<String>,
    pending: Vec<Pending>,
    history: VecDeque<CommandRecord>,
    session_changes: VecDeque<Instant>,
    flapping: bool,
    factsheet: Option<Factsheet>,
}

impl Robot {
    fn new(registration: Registration) -> Self {
        Self {
            registration,
            latch: LatchRecord::default(),
            waiting_confirmation: None,
            session: None,
            past_sessions: VecDeque::new(),
            online: false,
            stale: false,
            last_state: None,
            remembered_state: None,
            last_state_at: None,
            last_seen: None,
            pending: Vec::new(),
            history: VecDeque::new(),
            session_changes: VecDeque::new(),
            flapping: false,
            factsheet: None,
        }
    }

    fn link(&self) -> Link {
        match (self.online, self.stale) {
            (false, _) => Link::Offline,
            (true, true) => Link::Stale,
            (true, false) => Link::Online,
        }
    }

    fn state(&self) -> Option<RobotState> {
        self.last_state.as_ref().map(|state| state.state).or(self.remembered_state)
    }

    fn estop_confirmed(&self) -> bool {
        self.last_state
            .as_ref()
            .is_some_and(|state| state.state == RobotState::EmergencyStopped && state.estop_epoch >= self.latch.epoch)
    }

    fn heartbeat(&self) -> Duration {
        let secs = self.factsheet.as_ref().map_or(self.registration.heartbeat_secs, |sheet| sheet.heartbeat_secs);
        Duration::from_secs(u64::from(secs.max(1)))
    }

    fn status(&self, robot_id: &str) -> RobotStatus {
        let state = self.last_state.as_ref();
        RobotStatus {
            robot_id: robot_id.to_owned(),
            name: self.registration.name.clone(),
            kind: self.registration.kind,
            state: self.state(),
            link: self.link(),
            estop_active: self.latch.active,
            estop_epoch: self.latch.epoch,
            estop_confirmed: self.latch.active && self.estop_confirmed(),
            last_seen: self.last_seen.clone(),
            on_daemon_lost: self.registration.on_daemon_lost,
            battery: state.and_then(|state| state.battery.clone()),
            position: state.and_then(|state| state.position.clone()),
            errors: state.map(|state| state.errors.clone()).unwrap_or_default(),
        }
    }
}

/// The fleet.
#[derive(Debug, Default)]
pub struct Fleet {
    robots: BTreeMap<String, Robot>,
    header_id: u64,
}

impl Fleet {
    /// The fleet as persisted: registrations, latches, and commands. Commands that
    /// were pending become `unknown`: they are not sent again, and each robot is asked
    /// for its state, which settles them.
    pub fn restore(
        registrations: Vec<(String, Registration)>,
        latches: Vec<(String, LatchRecord)>,
        views: Vec<(String, RobotStatus)>,
        factsheets: Vec<(String, Factsheet)>,
        commands: Vec<CommandRecord>,
        now: Now,
    ) -> (Self, Vec<Effect>) {
        let mut fleet = Fleet::default();
        for (robot_id, registration) in registrations {
            fleet.robots.insert(robot_id, Robot::new(registration));
        }
        for (robot_id, latch) in latches {
            if let Some(robot) = fleet.robots.get_mut(&robot_id) {
                robot.latch = latch;
            }
        }
        for (robot_id, factsheet) in factsheets {
            if let Some(robot) = fleet.robots.get_mut(&robot_id) {
                robot.factsheet = Some(factsheet);
            }
        }
        for (robot_id, view) in views {
            if let Some(robot) = fleet.robots.get_mut(&robot_id) {
                robot.last_seen = view.last_seen;
                robot.remembered_state = view.state;
            }
        }
        let mut effects = Vec::new();
        let mut commands = commands;
        commands.sort_by(|a, b| a.history.first().map(|c| &c.at).cmp(&b.history.first().map(|c| &c.at)));
        for mut record in commands {
            let Some(robot) = fleet.robots.get_mut(&record.robot_id) else { continue };
            if !record.status.is_final() && record.status != CommandStatus::Unknown {
                record.status = CommandStatus::Unknown;
                record.history.push(StatusChange { status: CommandStatus::Unknown, at: now.stamp() });
                effects.push(Effect::Save(Save::Command(record.clone())));
            }
            robot.history.push_back(record);
        }
        effects.extend(fleet.republish(now));
        (fleet, effects)
    }

    fn next_header(&mut self) -> u64 {
        self.header_id += 1;
        self.header_id
    }

    /// The latches and views, retained, and a state request to robots with commands
    /// of unknown outcome: at start and after every reconnect to the broker.
    pub fn republish(&mut self, now: Now) -> Vec<Effect> {
        let mut effects = Vec::new();
        let ids: Vec<String> = self.robots.keys().cloned().collect();
        for robot_id in ids {
            effects.push(self.latch_effect(&robot_id, now));
            effects.push(self.status_effect(&robot_id));
            let unknown = self
                .robots
                .get(&robot_id)
                .is_some_and(|robot| robot.history.iter().any(|record| record.status == CommandStatus::Unknown));
            if unknown {
                effects.push(self.report_state_request(&robot_id, now));
            }
        }
        effects
    }

    fn latch_effect(&self, robot_id: &str, now: Now) -> Effect {
        let latch = self.robots.get(robot_id).map(|robot| robot.latch).unwrap_or_default();
        let message = EstopLatch {
            active: latch.active,
            epoch: latch.epoch,
            timestamp: now.stamp(),
            requested_by: String::new(),
        };
        Effect::Publish {
            topic: wire::topic(robot_id, Leaf::Estop),
            payload: serde_json::to_string(&message).unwrap_or_default(),
            retain: true,
        }
    }

    fn status_effect(&self, robot_id: &str) -> Effect {
        let payload = self
            .robots
            .get(robot_id)
            .map(|robot| serde_json::to_string(&robot.status(robot_id)).unwrap_or_default())
            .unwrap_or_default();
        Effect::Publish { topic: wire::topic(robot_id, Leaf::Status), payload, retain: true }
    }

    fn view_saved(&self, robot_id: &str) -> Effect {
        let view = self.robots.get(robot_id).map(|robot| robot.status(robot_id));
        Effect::Save(Save::View { robot_id: robot_id.to_owned(), view })
    }

    fn report_state_request(&mut self, robot_id: &str, now: Now) -> Effect {
        let epoch = self.robots.get(robot_id).map_or(0, |robot| robot.latch.epoch);
        let cmd = CmdMessage {
            header_id: self.next_header(),
            timestamp: now.stamp(),
            cmd_id: format!("report-{}", self.header_id),
            command: REPORT_STATE.into(),
            params: Value::Null,
            estop_epoch: epoch,
            expires_at: (now.wall + chrono::Duration::from_std(CMD_LIFETIME).unwrap_or_default())
                .to_rfc3339_opts(SecondsFormat::Millis, true),
            requested_by: "smarthomed".into(),
        };
        Effect::Publish {
            topic: wire::topic(robot_id, Leaf::Cmd),
            payload: serde_json::to_string(&cmd).unwrap_or_default(),
            retain: false,
        }
    }

    /// `robot_register`.
    pub fn register(&mut self, producer: &str, request: RobotRegistration) -> Result<Vec<Effect>, Refused> {
        if !wire::valid_robot_id(&request.robot) {
            return Err(refused("bad_field", "robot must match [A-Za-z0-9_.:-]{1,64} and not be \"all\""));
        }
        let registration = match self.robots.get(&request.robot) {
            Some(robot) if robot.registration.role_of(&request.uid) != Some(Role::Owner) => {
                return Err(refused("forbidden", format!("only an owner may change robot {}", request.robot)));
            }
            Some(robot) => Registration {
                kind: request.kind,
                name: request.name,
                owners: robot.registration.owners.clone(),
                operators: request.operators,
                viewers: request.viewers,
                heartbeat_secs: request.heartbeat_secs,
                on_daemon_lost: request.on_daemon_lost,
            },
            None => Registration {
                kind: request.kind,
                name: request.name,
                owners: vec![request.uid.clone()],
                operators: request.operators,
                viewers: request.viewers,
                heartbeat_secs: request.heartbeat_secs,
                on_daemon_lost: request.on_daemon_lost,
            },
        };
        let robot = self.robots.entry(request.robot.clone()).or_insert_with(|| Robot::new(registration.clone()));
        robot.registration = registration.clone();
        Ok(vec![
            Effect::Save(Save::Registration {
                robot_id: request.robot.clone(),
                registration: Some(registration.clone()),
            }),
            self.status_effect(&request.robot),
            Effect::Reply {
                producer: producer.to_owned(),
                payload: json!({
                    "Producer": "server", "command": "robot_registered",
                    "robot": request.robot, "registration": registration,
                }),
            },
        ])
    }

    /// `robot_remove` (owners only): forgets the robot and clears its retained topics.
    pub fn remove(&mut self, uid: &str, producer: &str, robot_id: &str) -> Result<Vec<Effect>, Refused> {
        self.authorize(uid, robot_id, Role::Owner)?;
        let Some(robot) = self.robots.remove(robot_id) else { return Err(unknown_robot(robot_id)) };
        let mut effects = vec![
            Effect::Save(Save::Registration { robot_id: robot_id.to_owned(), registration: None }),
            Effect::Save(Save::View { robot_id: robot_id.to_owned(), view: None }),
            Effect::Save(Save::Factsheet { robot_id: robot_id.to_owned(), factsheet: None }),
        ];
        effects.extend(
            robot.history.iter().map(|record| Effect::Save(Save::ForgetCommand { document_id: record.document_id() })),
        );
        for leaf in [Leaf::Status, Leaf::Estop] {
            effects.push(Effect::Publish { topic: wire::topic(robot_id, leaf), payload: String::new(), retain: true });
        }
        effects.push(Effect::Reply {
            producer: producer.to_owned(),
            payload: json!({"Producer": "server", "command": "robot_removed", "robot": robot_id}),
        });
        Ok(effects)
    }

    /// `robot_list`: the robots `uid` may see, with its role.
    pub fn list(&self, uid: &str) -> Value {
        let robots: Vec<Value> = self
            .robots
            .iter()
            .filter_map(|(robot_id, robot)| {
                let role = robot.registration.role_of(uid)?;
                let mut view = serde_json::to_value(robot.status(robot_id)).ok()?;
                view["role"] = json!(match role {
                    Role::Owner => "owner",
                    Role::Operator => "operator",
                    Role::Viewer => "viewer",
                });
                Some(view)
            })
            .collect();
        json!({"Producer": "server", "command": "robot_list", "robots": robots})
    }

    fn authorize(&self, uid: &str, robot_id: &str, needed: Role) -> Result<&Robot, Refused> {
        let robot = self.robots.get(robot_id).ok_or_else(|| unknown_robot(robot_id))?;
        match robot.registration.role_of(uid) {
            Some(role) if role >= needed => Ok(robot),
            _ => Err(refused("forbidden", format!("{uid} may not do that with robot {robot_id}"))),
        }
    }

    /// `robot_command`.
    pub fn command(&mut self, producer: &str, request: RobotCommand, now: Now) -> Result<Vec<Effect>, Refused> {
        let robot = self.authorize(&request.uid, &request.robot, Role::Operator)?;
        if let Some(record) = robot.history.iter().find(|record| record.cmd_id == request.cmd_id) {
            // Delivered twice (at least once delivery): the same answer, nothing sent.
            return Ok(vec![command_status_reply(record)]);
        }
        let age = (now.wall - request.sent_at).to_std().unwrap_or_default();
        if age > APP_COMMAND_MAX_AGE {
            return Err(refused(
                "command_expired",
                format!("sent at {}, more than 30 s ago", request.sent_at.to_rfc3339_opts(SecondsFormat::Secs, true)),
            ));
        }
        let kind = robot.registration.kind;
        if !kind.commands().contains(&request.action.as_str()) {
            return Err(refused(
                Refusal::UnsupportedCommand.code(),
                format!("a {kind:?} robot has no {}", request.action),
            ));
        }
        if robot.latch.active {
            return Err(refused(Refusal::Estopped.code(), "the e-stop latch is set; an owner must reset it"));
        }
        if robot.link() != Link::Online {
            return Err(refused("robot_offline", format!("robot {} is {:?}", request.robot, robot.link())));
        }
        machine::check_params(&request.action, &request.params).map_err(|message| refused("bad_field", message))?;
        let state = robot.state().unwrap_or(kind.resting());
        machine::next_state(kind, state, &request.action)
            .map_err(|refusal| refused(refusal.code(), format!("{} while {state:?}", request.action)))?;
        let busy_with_work = robot.pending.iter().any(|pending| is_work(kind, &pending.cmd.command));
        if busy_with_work && is_work(kind, &request.action) {
            return Err(refused("robot_busy", "another work command is still under way"));
        }
        let epoch = robot.latch.epoch;
        let cmd = CmdMessage {
            header_id: self.next_header(),
            timestamp: now.stamp(),
            cmd_id: request.cmd_id.clone(),
            command: request.action.clone(),
            params: request.params.clone(),
            estop_epoch: epoch,
            expires_at: (now.wall + chrono::Duration::from_std(CMD_LIFETIME).unwrap_or_default())
                .to_rfc3339_opts(SecondsFormat::Millis, true),
            requested_by: request.uid.clone(),
        };
        let record = CommandRecord {
            robot_id: request.robot.clone(),
            cmd_id: request.cmd_id.clone(),
            command: request.action.clone(),
            params: request.params.clone(),
            requested_by: request.uid.clone(),
            producer: producer.to_owned(),
            status: CommandStatus::Sent,
            reason: String::new(),
            history: vec![StatusChange { status: CommandStatus::Sent, at: now.stamp() }],
        };
        let mut effects = vec![Effect::Publish {
            topic: wire::topic(&request.robot, Leaf::Cmd),
            payload: serde_json::to_string(&cmd).unwrap_or_default(),
            retain: false,
        }];
        let Some(robot) = self.robots.get_mut(&request.robot) else { return Err(unknown_robot(&request.robot)) };
        robot.pending.push(Pending { cmd, ack_deadline: Some(now.instant + ACK_TIMEOUT), resent: false });
        effects.extend(remember(robot, record));
        Ok(effects)
    }

    /// `robot_reset` (owners only): clears the latch (inactive, epoch + 1) once the robot
    /// reports its stop clearable, or takes a robot out of error. The interrupted work
    /// is never resumed.
    pub fn reset(&mut self, uid: &str, producer: &str, robot_id: &str, now: Now) -> Result<Vec<Effect>, Refused> {
        let robot = self.authorize(uid, robot_id, Role::Owner)?;
        let state = robot.last_state.as_ref();
        let in_error = state.is_some_and(|state| state.state == RobotState::Error);
        if robot.latch.active {
            let clearable = state.is_some_and(|state| {
                state.state == RobotState::EmergencyStopped
                    && state.estop_clearable
                    && state.estop_epoch >= robot.latch.epoch
            });
            if !clearable {
                return Err(refused(
                    Refusal::Estopped.code(),
                    "the robot has not reported its stop as clearable at the latch's epoch",
                ));
            }
        } else if !in_error {
            return Err(refused(Refusal::InvalidTransition.code(), "neither e-stopped nor in error: nothing to reset"));
        }
        let Some(robot) = self.robots.get_mut(robot_id) else { return Err(unknown_robot(robot_id)) };
        robot.latch = LatchRecord { active: false, epoch: robot.latch.epoch + 1 };
        robot.waiting_confirmation = None;
        let latch = robot.latch;
        let mut effects = vec![
            self.latch_effect(robot_id, now),
            Effect::Save(Save::Latch { robot_id: robot_id.to_owned(), latch }),
            self.status_effect(robot_id),
        ];
        effects.push(Effect::Reply {
            producer: producer.to_owned(),
            payload: json!({"Producer": "server", "command": "robot_reset", "robot": robot_id, "epoch": latch.epoch}),
        });
        Ok(effects)
    }

    /// An e-stop request for one robot or all. The latch goes out first.
    pub fn estop(&mut self, target: &wire::Target, producer: &str, uid: &str, now: Now) -> Vec<Effect> {
        let ids: Vec<String> = match target {
            wire::Target::All => self.robots.keys().cloned().collect(),
            wire::Target::One(robot_id) if self.robots.contains_key(robot_id) => vec![robot_id.clone()],
            wire::Target::One(robot_id) => {
                return vec![Effect::Reply {
                    producer: producer.to_owned(),
                    payload: crate::protocol::command::error_reply(
                        "unknown_robot",
                        &format!("no robot {robot_id}"),
                        Some("robot_estop"),
                    ),
                }];
            }
        };
        let mut first = Vec::new();
        let mut then = Vec::new();
        for robot_id in ids {
            let Some(robot) = self.robots.get_mut(&robot_id) else { continue };
            robot.latch = LatchRecord { active: true, epoch: robot.latch.epoch + 1 };
            let latch = robot.latch;
            let offline = robot.link() != Link::Online;
            robot.waiting_confirmation = Some(EstopWait {
                producers: vec![producer.to_owned()],
                latched_at: now.instant,
                next_republish: now.instant + ESTOP_REPUBLISH_EVERY,
                unconfirmed_reported: false,
            });
            let canceled: Vec<Pending> = robot.pending.drain(..).collect();
            for pending in canceled {
                then.extend(settle(robot, &pending.cmd.cmd_id, CommandStatus::Canceled, "emergency_stop", now));
            }
            let name = robot.registration.name.clone();
            first.push(self.latch_effect(&robot_id, now));
            then.push(Effect::Save(Save::Latch { robot_id: robot_id.clone(), latch }));
            then.push(Effect::Save(Save::Alarm(RobotAlarm::Estopped { name })));
            then.push(self.status_effect(&robot_id));
            then.push(Effect::Reply {
                producer: producer.to_owned(),
                payload: json!({
                    "Producer": "server", "command": "robot_estop_latched", "robot": robot_id,
                    "epoch": latch.epoch, "pendingOffline": offline,
                }),
            });
            if offline {
                then.push(Effect::Alert {
                    title: format!("e-stop for robot {robot_id} waits for it to come online"),
                    detail: format!("requested by {uid} from {producer}; latch epoch {}", latch.epoch),
                });
            }
        }
        first.extend(then);
        first
    }

    /// A `connection` message.
    pub fn on_connection(&mut self, robot_id: &str, message: ConnectionMessage, now: Now) -> Vec<Effect> {
        let Some(robot) = self.robots.get_mut(robot_id) else { return Vec::new() };
        let mut effects = Vec::new();
        let current = robot.session.as_deref() == Some(message.session_id.as_str());
        match message.connection_state {
            ConnectionState::Online => {
                if !current {
                    if let Some(old) = robot.session.replace(message.session_id.clone()) {
                        robot.past_sessions.push_back(old);
                        if robot.past_sessions.len() > 16 {
                            robot.past_sessions.pop_front();
                        }
                    }
                    robot.session_changes.push_back(now.instant);
                    while robot.session_changes.front().is_some_and(|at| now.instant - *at > FLAP_WINDOW) {
                        robot.session_changes.pop_front();
                    }
                    if robot.session_changes.len() > FLAP_LIMIT && !robot.flapping {
                        robot.flapping = true;
                        effects.push(Effect::Alert {
                            title: format!("robot {robot_id} is flapping"),
                            detail: format!(
                                "{} new sessions within a minute: two devices may share the id {robot_id}",
                                robot.session_changes.len()
                            ),
                        });
                    } else if robot.session_changes.len() <= 1 {
                        robot.flapping = false;
                    }
                }
                robot.online = true;
                robot.stale = false;
                robot.last_state_at = Some(now.instant);
                robot.last_seen = Some(now.stamp());
            }
            ConnectionState::Offline | ConnectionState::ConnectionBroken => {
                // A will or goodbye of a session that is no longer the robot's.
                if !current {
                    return effects;
                }
                robot.online = false;
            }
        }
        effects.push(self.status_effect(robot_id));
        effects.push(self.view_saved(robot_id));
        effects
    }

    pub fn on_factsheet(&mut self, robot_id: &str, factsheet: Factsheet) -> Vec<Effect> {
        let Some(robot) = self.robots.get_mut(robot_id) else { return Vec::new() };
        if robot.factsheet.as_ref() == Some(&factsheet) {
            return Vec::new();
        }
        robot.factsheet = Some(factsheet.clone());
        vec![Effect::Save(Save::Factsheet { robot_id: robot_id.to_owned(), factsheet: Some(factsheet) })]
    }

    /// A `state` message: acknowledgements, outcomes, e-stop confirmation, liveness.
    pub fn on_state(&mut self, robot_id: &str, state: StateMessage, now: Now) -> Vec<Effect> {
        let Some(robot) = self.robots.get_mut(robot_id) else { return Vec::new() };
        let mut effects = Vec::new();
        if robot.session.as_deref().is_some_and(|session| session != state.session_id)
            && robot.past_sessions.iter().any(|past| *past == state.session_id)
        {
            return effects;
        }
        let link_was = robot.link();
        robot.online = true;
        robot.stale = false;
        robot.last_state_at = Some(now.instant);
        robot.last_seen = Some(now.stamp());
        let known_fatal = |error: &wire::RobotError| {
            robot.last_state.as_ref().is_some_and(|last| {
                last.errors.iter().any(|old| old.error_type == error.error_type && old.error_level == error.error_level)
            })
        };
        for error in state.errors.iter().filter(|error| error.error_level == wire::ErrorLevel::Fatal) {
            if !known_fatal(error) {
                effects.push(Effect::Save(Save::Alarm(RobotAlarm::Fatal {
                    name: robot.registration.name.clone(),
                    error: format!("{} {}", error.error_type, error.error_description).trim().to_owned(),
                })));
            }
        }
        for action in &state.action_states {
            let status = match action.action_status {
                ActionStatus::Waiting | ActionStatus::Running | ActionStatus::Paused => CommandStatus::Running,
                ActionStatus::Finished => CommandStatus::Finished,
                ActionStatus::Failed => CommandStatus::Failed,
                ActionStatus::Rejected => CommandStatus::Rejected,
            };
            if let Some(pending) = robot.pending.iter_mut().find(|pending| pending.cmd.cmd_id == action.cmd_id) {
                pending.ack_deadline = None;
            }
            let known = robot.history.iter().find(|record| record.cmd_id == action.cmd_id);
            let changes = known.is_some_and(|record| record.status != status && !record.status.is_final());
            if changes {
                let reason = if status == CommandStatus::Rejected {
                    format!("robot_rejected: {}", action.result_description)
                } else {
                    action.result_description.clone()
                };
                effects.extend(settle(robot, &action.cmd_id, status, &reason, now));
            }
        }
        let was_confirmed = robot.latch.active && robot.estop_confirmed();
        robot.last_state = Some(state);
        if robot.latch.active
            && !was_confirmed
            && robot.estop_confirmed()
            && let Some(wait) = robot.waiting_confirmation.take()
        {
            for producer in wait.producers {
                effects.push(Effect::Reply {
                    producer,
                    payload: json!({
                        "Producer": "server", "command": "robot_estop_confirmed",
                        "robot": robot_id, "epoch": robot.latch.epoch,
                    }),
                });
            }
        }
        effects.push(self.status_effect(robot_id));
        if link_was != Link::Online {
            effects.push(self.view_saved(robot_id));
        }
        effects
    }

    /// The earliest moment [`Fleet::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.robots
            .values()
            .flat_map(|robot| {
                let acks = robot.pending.iter().filter_map(|pending| pending.ack_deadline);
                let estop = robot.waiting_confirmation.as_ref().map(|wait| {
                    if wait.unconfirmed_reported {
                        wait.next_republish
                    } else {
                        wait.next_republish.min(wait.latched_at + ESTOP_CONFIRM_WITHIN)
                    }
                });
                let stale = (robot.online && !robot.stale)
                    .then(|| robot.last_state_at.map(|at| at + 3 * robot.heartbeat()))
                    .flatten();
                acks.chain(estop).chain(stale)
            })
            .min()
    }

    /// What is due at `now`: resends, expiries, e-stop republishing and reports, stale
    /// links.
    pub fn tick(&mut self, now: Now) -> Vec<Effect> {
        let mut effects = Vec::new();
        let ids: Vec<String> = self.robots.keys().cloned().collect();
        for robot_id in ids {
            let mut republish = false;
            let mut status_changed = false;
            if let Some(robot) = self.robots.get_mut(&robot_id) {
                let mut expired = Vec::new();
                for pending in &mut robot.pending {
                    let Some(deadline) = pending.ack_deadline else { continue };
                    if deadline > now.instant {
                        continue;
                    }
                    if pending.resent {
                        expired.push(pending.cmd.cmd_id.clone());
                    } else {
                        pending.resent = true;
                        pending.ack_deadline = Some(now.instant + ACK_TIMEOUT);
                        effects.push(Effect::Publish {
                            topic: wire::topic(&robot_id, Leaf::Cmd),
                            payload: serde_json::to_string(&pending.cmd).unwrap_or_default(),
                            retain: false,
                        });
                    }
                }
                for cmd_id in expired {
                    effects.extend(settle(robot, &cmd_id, CommandStatus::Expired, "robot_no_ack", now));
                }
                if let Some(wait) = &mut robot.waiting_confirmation {
                    if !wait.unconfirmed_reported && now.instant >= wait.latched_at + ESTOP_CONFIRM_WITHIN {
                        wait.unconfirmed_reported = true;
                        for producer in &wait.producers {
                            effects.push(Effect::Reply {
                                producer: producer.clone(),
                                payload: json!({
                                    "Producer": "server", "command": "robot_estop_unconfirmed",
                                    "robot": robot_id, "epoch": robot.latch.epoch,
                                }),
                            });
                        }
                        effects.push(Effect::Save(Save::Alarm(RobotAlarm::EstopUnconfirmed {
                            name: robot.registration.name.clone(),
                        })));
                        effects.push(Effect::Alert {
                            title: format!("robot {robot_id} has not confirmed its e-stop"),
                            detail: format!(
                                "latch epoch {} published {} ms ago; republished every second",
                                robot.latch.epoch,
                                (now.instant - wait.latched_at).as_millis()
                            ),
                        });
                    }
                    if now.instant >= wait.next_republish {
                        wait.next_republish = now.instant + ESTOP_REPUBLISH_EVERY;
                        republish = robot.online;
                    }
                }
                if robot.online
                    && !robot.stale
                    && robot.last_state_at.is_some_and(|at| now.instant >= at + 3 * robot.heartbeat())
                {
                    robot.stale = true;
                    status_changed = true;
                }
            }
            if republish {
                effects.push(self.latch_effect(&robot_id, now));
            }
            if status_changed {
                effects.push(self.status_effect(&robot_id));
                effects.push(self.view_saved(&robot_id));
            }
        }
        effects
    }
}

fn unknown_robot(robot_id: &str) -> Refused {
    refused("unknown_robot", format!("no robot {robot_id}"))
}

/// Work commands start something; the rest steer what runs.
fn is_work(kind: Kind, command: &str) -> bool {
    machine::next_state(kind, kind.resting(), command).is_ok()
}

fn command_status_reply(record: &CommandRecord) -> Effect {
    let mut payload = json!({
        "Producer": "server", "command": "robot_command_status",
        "robot": record.robot_id, "cmdId": record.cmd_id, "status": record.status,
    });
    if !record.reason.is_empty() {
        payload["reason"] = json!(record.reason);
    }
    Effect::Reply { producer: record.producer.clone(), payload }
}

/// Adds a new command to the robot's history (dropping the oldest beyond the limit)
/// and answers its sender.
fn remember(robot: &mut Robot, record: CommandRecord) -> Vec<Effect> {
    let mut effects = vec![Effect::Save(Save::Command(record.clone())), command_status_reply(&record)];
    robot.history.push_back(record);
    while robot.history.len() > HISTORY_KEPT {
        if let Some(dropped) = robot.history.pop_front() {
            effects.push(Effect::Save(Save::ForgetCommand { document_id: dropped.document_id() }));
        }
    }
    effects
}

/// A new status for a known command: recorded, persisted, told to its sender.
fn settle(robot: &mut Robot, cmd_id: &str, status: CommandStatus, reason: &str, now: Now) -> Vec<Effect> {
    if status.is_final() {
        robot.pending.retain(|pending| pending.cmd.cmd_id != cmd_id);
    }
    let Some(record) = robot.history.iter_mut().find(|record| record.cmd_id == cmd_id) else { return Vec::new() };
    record.status = status;
    record.reason = reason.to_owned();
    record.history.push(StatusChange { status, at: now.stamp() });
    vec![Effect::Save(Save::Command(record.clone())), command_status_reply(record)]
}

#[cfg(test)]
mod tests;
