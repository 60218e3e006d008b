use super::*;
use crate::protocol::command::{RobotCommand, RobotRegistration};
use crate::protocol::robot::{ActionState, Target};

const OWNER: &str = "owner-uid";
const OPERATOR: &str = "operator-uid";
const VIEWER: &str = "viewer-uid";

struct Clock {
    start: Instant,
    wall: DateTime<Utc>,
}

impl Clock {
    fn new() -> Self {
        Self { start: Instant::now(), wall: "2026-11-23T10:00:00Z".parse().unwrap() }
    }

    fn at(&self, ms: u64) -> Now {
        let offset = Duration::from_millis(ms);
        Now { instant: self.start + offset, wall: self.wall + chrono::Duration::from_std(offset).unwrap() }
    }
}

fn register(fleet: &mut Fleet, kind: Kind) {
    fleet
        .register(
            "android",
            RobotRegistration {
                uid: OWNER.into(),
                robot: "vac1".into(),
                kind,
                name: "Vacuum".into(),
                operators: vec![OPERATOR.into()],
                viewers: vec![VIEWER.into()],
                heartbeat_secs: 15,
                on_daemon_lost: OnDaemonLost::Pause,
            },
        )
        .unwrap();
}

fn connection(session: &str, state: ConnectionState) -> ConnectionMessage {
    ConnectionMessage {
        header_id: 1,
        timestamp: "t".into(),
        robot_id: "vac1".into(),
        session_id: session.into(),
        connection_state: state,
    }
}

fn state(robot_state: RobotState, epoch: u64, actions: &[(&str, ActionStatus)]) -> StateMessage {
    StateMessage {
        header_id: 1,
        timestamp: "t".into(),
        robot_id: "vac1".into(),
        session_id: "s1".into(),
        state: robot_state,
        estop_epoch: epoch,
        estop_clearable: true,
        errors: vec![],
        action_states: actions
            .iter()
            .map(|(cmd_id, status)| ActionState {
                cmd_id: (*cmd_id).into(),
                command: "start".into(),
                action_status: *status,
                result_description: String::new(),
            })
            .collect(),
        battery: None,
        position: None,
        destination: None,
        eta: None,
    }
}

/// A registered vacuum, online and docked.
fn online_fleet(clock: &Clock) -> Fleet {
    let mut fleet = Fleet::default();
    register(&mut fleet, Kind::Vacuum);
    fleet.on_connection("vac1", connection("s1", ConnectionState::Online), clock.at(0));
    fleet.on_state("vac1", state(RobotState::Docked, 0, &[]), clock.at(0));
    fleet
}

fn request(cmd_id: &str, action: &str, clock: &Clock, ms: u64) -> RobotCommand {
    RobotCommand {
        uid: OPERATOR.into(),
        robot: "vac1".into(),
        cmd_id: cmd_id.into(),
        action: action.into(),
        params: Value::Null,
        sent_at: clock.at(ms).wall,
    }
}

fn statuses(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Reply { payload, .. } if payload["command"] == "robot_command_status" => {
                Some(format!("{}:{}", payload["cmdId"].as_str()?, payload["status"].as_str()?))
            }
            _ => None,
        })
        .collect()
}

fn publishes(effects: &[Effect], leaf: Leaf) -> Vec<&str> {
    let topic = wire::topic("vac1", leaf);
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Publish { topic: to, payload, .. } if *to == topic => Some(payload.as_str()),
            _ => None,
        })
        .collect()
}

fn replies(effects: &[Effect], command: &str) -> Vec<Value> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Reply { payload, .. } if payload["command"] == command => Some(payload.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_command_is_sent_acknowledged_and_finished() {
    let clock = Clock::new();
    let mut fleet = online_fleet(&clock);
    let sent = fleet.command("android", request("c1", "start", &clock, 0), clock.at(10)).unwrap();
    let cmd: CmdMessage = serde_json::from_str(publishes(&sent, Leaf::Cmd)[0]).unwrap();
    assert_eq!((cmd.cmd_id.as_str(), cmd.command.as_str(), cmd.estop_epoch), ("c1", "start", 0));
    assert_eq!(cmd.expires_at, "2026-11-23T10:00:10.010Z");
    assert_eq!(statuses(&sent), ["c1:sent"]);
    assert!(sent.iter().any(|effect| matches!(effect, Effect::Save(Save::Command(record)) if record.cmd_id == "c1")));

    let running =
        fleet.on_state("vac1", state(RobotState::Cleaning, 0, &[("c1", ActionStatus::Running)]), clock.at(500));
    assert_eq!(statuses(&running), ["c1:running"]);
    assert!(fleet.tick(clock.at(3_500)).is_empty(), "an acknowledged command is not sent again");
    let done = fleet.on_state("vac1", state(RobotState::Idle, 0, &[("c1", ActionStatus::Finished)]), clock.at(4_000));
    assert_eq!(statuses(&done), ["c1:finished"]);
    let again = fleet.on_state("vac1", state(RobotState::Idle, 0, &[("c1", ActionStatus::Finished)]), clock.at(4_100));
    assert!(statuses(&again).is_empty(), "a repeated action state is reported once");
}

#[test]
fn without_an_acknowledgement_a_command_is_sent_once_more_then_expires() {
    let clock = Clock::new();
    let mut fleet = online_fleet(&clock);
    fleet.command("android", request("c1", "start", &clock, 0), clock.at(0)).unwrap();
    assert_eq!(fleet.next_deadline(), Some(clock.at(3_000).instant));
    assert!(fleet.tick(clock.at(2_999)).is_empty());
    let resent = fleet.tick(clock.at(3_000));
    let again: CmdMessage = serde_json::from_str(publishes(&resent, Leaf::Cmd)[0]).unwrap();
    assert_eq!(again.cmd_id, "c1");
    let expired = fleet.tick(clock.at(6_000));
    assert_eq!(statuses(&expired), ["c1:expired"]);
    assert_eq!(replies(&expired, "robot_command_status")[0]["reason"], "robot_no_ack");
    assert!(publishes(&expired, Leaf::Cmd).is_empty());
}

#[test]
fn the_same_cmd_id_twice_is_answered_and_not_sent_again() {
    let clock = Clock::new();
    let mut fleet = online_fleet(&clock);
    fleet.command("android", request("c1", "start", &clock, 0), clock.at(0)).unwrap();
    let repeated = fleet.command("android", request("c1", "start", &clock, 0), clock.at(100)).unwrap();
    assert!(publishes(&repeated, Leaf::Cmd).is_empty());
    assert_eq!(statuses(&repeated), ["c1:sent"]);
}

#[test]
fn commands_are_refused_early_with_the_reason() {
    let clock = Clock::new();
    let mut fleet = online_fleet(&clock);
    let code = |fleet: &mut Fleet, request: RobotCommand| {
        fleet.command("android", request, clock.at(40_000)).unwrap_err().code
    };
    assert_eq!(code(&mut fleet, request("old", "start", &clock, 0)), "command_expired");
    assert_eq!(code(&mut fleet, request("c", "fly", &clock, 40_000)), "unsupported_command");
    assert_eq!(code(&mut fleet, request("c", "pause", &clock, 40_000)), "invalid_transition");
    let mut by_viewer = request("c", "start", &clock, 40_000);
    by_viewer.uid = VIEWER.into();
    assert_eq!(code(&mut fleet, by_viewer), "forbidden");
    let mut elsewhere = request("c", "start", &clock, 40_000);
    elsewhere.robot = "nope".into();
    assert_eq!(code(&mut fleet, elsewhere), "unknown_robot");

    fleet.on_state("vac1", state(RobotState::Cleaning, 0, &[]), clock.at(40_000));
    assert_eq!(code(&mut fleet, request("c", "start", &clock, 40_000)), "robot_busy");
    fleet.on_connection("vac1", connection("s1", ConnectionState::Offline), clock.at(40_000));
    assert_eq!(code(&mut fleet, request("c", "stop", &clock, 40_000)), "robot_offline");
}

#[test]
fn a_second_work_command_waits_for_nothing_it_is_busy() {
    let clock = Clock::new();
    let mut fleet = online_fleet(&clock);
    fleet.command("android", request("c1", "start", &clock, 0), clock.at(0)).unwrap();
    assert_eq!(
        fleet.command("android", request("c2", "start", &clock, 0), clock.at(10)).unwrap_err().code,
        "robot_busy"
    );
    // Steering is taken while work is under way (the robot reported cleaning).
    fleet.on_state("vac1", state(RobotState::Cleaning, 0, &[("c1", ActionStatus::Running)]), clock.at(20));
    assert!(fleet.command("android", request("c3", "pause", &clock, 0), clock.at(30)).is_ok());
}

#[test]
fn an_estop_publishes_the_latch_first_cancels_and_waits_for_confirmation() {
    let clock = Clock::new();
    let mut fleet = online_fleet(&clock);
    fleet.command("android", request("c1", "start", &clock, 0), clock.at(0)).unwrap();
    let effects = fleet.estop(&Target::One("vac1".into()), "car", "anyone", clock.at(100));
    let Effect::Publish { topic, payload, retain: true } = &effects[0] else { panic!("{effects:?}") };
    assert_eq!(topic, "smarthomed/robot/v1/vac1/estop");
    let latch: EstopLatch = serde_json::from_str(payload).unwrap();
    assert!(latch.active && latch.epoch == 1);
    assert_eq!(statuses(&effects), ["c1:canceled"]);
    assert_eq!(replies(&effects, "robot_command_status")[0]["reason"], "emergency_stop");
    assert_eq!(replies(&effects, "robot_estop_latched")[0]["pendingOffline"], false);
    assert!(effects.iter().any(|effect| matches!(
        effect,
        Effect::Save(Save::Latch { latch: LatchRecord { active: true, epoch: 1 }, .. })
    )));

    // Stopped at an older epoch does not confirm this latch.
    assert!(
        replies(
            &fleet.on_state("vac1", state(RobotState::EmergencyStopped, 0, &[]), clock.at(200)),
            "robot_estop_confirmed"
        )
        .is_empty()
    );
    let confirmed = fleet.on_state("vac1", state(RobotState::EmergencyStopped, 1, &[]), clock.at(300));
    assert_eq!(replies(&confirmed, "robot_estop_confirmed")[0]["epoch"], 1);
    assert!(fleet.tick(clock.at(5_000)).iter().all(|effect| !matches!(effect, Effect::Alert { .. })));
    assert_eq!(
        fleet.command("android", request("c2", "start", &clock, 5_000), clock.at(5_000)).unwrap_err().code,
        "robot_estopped"
    );
}

#[test]
fn an_unconfirmed_estop_is_reported_alerted_and_republished() {
    let clock = Clock::new();
    let mut fleet = online_fleet(&clock);
    fleet.estop(&Target::All, "android", "anyone", clock.at(0));
    let at_one = fleet.tick(clock.at(1_000));
    assert_eq!(publishes(&at_one, Leaf::Estop).len(), 1, "republished after a second");
    let at_two = fleet.tick(clock.at(2_000));
    assert_eq!(replies(&at_two, "robot_estop_unconfirmed").len(), 1);
    assert!(at_two.iter().any(|effect| matches!(effect, Effect::Alert { .. })));
    let later = fleet.tick(clock.at(3_000));
    assert!(replies(&later, "robot_estop_unconfirmed").is_empty() && publishes(&later, Leaf::Estop).len() == 1);
}

#[test]
fn an_offline_robot_gets_its_latch_pending_with_an_alert() {
    let clock = Clock::new();
    let mut fleet = Fleet::default();
    register(&mut fleet, Kind::Vacuum);
    let effects = fleet.estop(&Target::One("vac1".into()), "android", "u", clock.at(0));
    assert_eq!(replies(&effects, "robot_estop_latched")[0]["pendingOffline"], true);
    assert!(
        effects.iter().any(|effect| matches!(effect, Effect::Alert { title, .. } if title.contains("come online")))
    );
    let unknown = fleet.estop(&Target::One("ghost".into()), "android", "u", clock.at(0));
    assert_eq!(replies(&unknown, "error")[0]["code"], "unknown_robot");
}

#[test]
fn only_an_owner_resets_and_only_a_clearable_stop() {
    let clock = Clock::new();
    let mut fleet = online_fleet(&clock);
    assert_eq!(fleet.reset(OWNER, "android", "vac1", clock.at(0)).unwrap_err().code, "invalid_transition");
    fleet.estop(&Target::One("vac1".into()), "android", "u", clock.at(0));
    assert_eq!(fleet.reset(OPERATOR, "android", "vac1", clock.at(10)).unwrap_err().code, "forbidden");
    let mut not_clearable = state(RobotState::EmergencyStopped, 1, &[]);
    not_clearable.estop_clearable = false;
    fleet.on_state("vac1", not_clearable, clock.at(20));
    assert_eq!(fleet.reset(OWNER, "android", "vac1", clock.at(30)).unwrap_err().code, "robot_estopped");
    fleet.on_state("vac1", state(RobotState::EmergencyStopped, 1, &[]), clock.at(40));
    let reset = fleet.reset(OWNER, "android", "vac1", clock.at(50)).unwrap();
    let latch: EstopLatch = serde_json::from_str(publishes(&reset, Leaf::Estop)[0]).unwrap();
    assert!(!latch.active && latch.epoch == 2);
    assert!(publishes(&reset, Leaf::Cmd).is_empty(), "the interrupted work is not resumed");
}

#[test]
fn wills_of_an_older_session_are_ignored_and_flapping_is_alerted_once() {
    let clock = Clock::new();
    let mut fleet = online_fleet(&clock);
    fleet.on_connection("vac1", connection("s2", ConnectionState::Online), clock.at(100));
    fleet.on_connection("vac1", connection("s1", ConnectionState::ConnectionBroken), clock.at(200));
    assert!(fleet.list(OWNER)["robots"][0]["link"] == "online", "{}", fleet.list(OWNER));
    let mut alerts = 0;
    for n in 3..10 {
        let effects =
            fleet.on_connection("vac1", connection(&format!("s{n}"), ConnectionState::Online), clock.at(n * 1000));
        alerts += effects.iter().filter(|effect| matches!(effect, Effect::Alert { .. })).count();
    }
    assert_eq!(alerts, 1);
    fleet.on_connection("vac1", connection("s9", ConnectionState::Offline), clock.at(20_000));
    assert_eq!(fleet.list(OWNER)["robots"][0]["link"], "offline");
}

#[test]
fn no_state_for_three_heartbeats_is_a_stale_link() {
    let clock = Clock::new();
    let mut fleet = online_fleet(&clock);
    assert_eq!(fleet.next_deadline(), Some(clock.at(45_000).instant));
    let effects = fleet.tick(clock.at(45_000));
    let status: RobotStatus = serde_json::from_str(publishes(&effects, Leaf::Status)[0]).unwrap();
    assert_eq!(status.link, Link::Stale);
    fleet.on_state("vac1", state(RobotState::Docked, 0, &[]), clock.at(46_000));
    assert_eq!(fleet.list(VIEWER)["robots"][0]["link"], "online");
    assert_eq!(fleet.list(VIEWER)["robots"][0]["role"], "viewer");
    assert_eq!(fleet.list("stranger")["robots"], json!([]));
}

#[test]
fn after_a_restart_pending_commands_are_unknown_and_the_robot_is_asked() {
    let clock = Clock::new();
    let mut before = online_fleet(&clock);
    let effects = before.command("android", request("c1", "start", &clock, 0), clock.at(0)).unwrap();
    let saved: Vec<CommandRecord> = effects
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::Save(Save::Command(record)) => Some(record),
            _ => None,
        })
        .collect();
    let registration = before.robots["vac1"].registration.clone();
    let (mut fleet, effects) = Fleet::restore(
        vec![("vac1".into(), registration)],
        vec![("vac1".into(), LatchRecord { active: false, epoch: 4 })],
        vec![("vac1".into(), before.robots["vac1"].status("vac1"))],
        vec![],
        saved,
        clock.at(1_000),
    );
    assert!(
        effects
            .iter()
            .any(|effect| matches!(effect, Effect::Save(Save::Command(r)) if r.status == CommandStatus::Unknown))
    );
    let asked: CmdMessage = serde_json::from_str(publishes(&effects, Leaf::Cmd)[0]).unwrap();
    assert_eq!((asked.command.as_str(), asked.estop_epoch), (REPORT_STATE, 4));
    let latch: EstopLatch = serde_json::from_str(publishes(&effects, Leaf::Estop)[0]).unwrap();
    assert_eq!(latch.epoch, 4);
    assert_eq!(fleet.list(OWNER)["robots"][0]["state"], "docked", "the kept view, until the robot reports");
    assert!(fleet.list(OWNER)["robots"][0]["lastSeen"].is_string());
    fleet.on_connection("vac1", connection("s1", ConnectionState::Online), clock.at(1_100));
    let settled =
        fleet.on_state("vac1", state(RobotState::Idle, 4, &[("c1", ActionStatus::Finished)]), clock.at(1_200));
    assert_eq!(statuses(&settled), ["c1:finished"]);
}

#[test]
fn only_owners_change_or_remove_a_robot() {
    let clock = Clock::new();
    let mut fleet = online_fleet(&clock);
    let mut takeover = RobotRegistration {
        uid: OPERATOR.into(),
        robot: "vac1".into(),
        kind: Kind::Vacuum,
        name: "mine now".into(),
        operators: vec![],
        viewers: vec![],
        heartbeat_secs: 15,
        on_daemon_lost: OnDaemonLost::Stop,
    };
    assert_eq!(fleet.register("android", takeover.clone()).unwrap_err().code, "forbidden");
    assert_eq!(fleet.remove(OPERATOR, "android", "vac1").unwrap_err().code, "forbidden");
    takeover.uid = OWNER.into();
    fleet.register("android", takeover).unwrap();
    assert_eq!(fleet.list(OWNER)["robots"][0]["name"], "mine now");
    let removed = fleet.remove(OWNER, "android", "vac1").unwrap();
    assert_eq!(publishes(&removed, Leaf::Status), [""], "the retained view is cleared");
    assert_eq!(fleet.list(OWNER)["robots"], json!([]));
}

fn saves(effects: &[Effect]) -> Vec<&Save> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Save(save) => Some(save),
            _ => None,
        })
        .collect()
}

#[test]
fn views_are_kept_when_the_link_changes_not_at_every_state() {
    let clock = Clock::new();
    let mut fleet = Fleet::default();
    register(&mut fleet, Kind::Vacuum);
    let online = fleet.on_connection("vac1", connection("s1", ConnectionState::Online), clock.at(0));
    assert!(saves(&online).iter().any(|save| matches!(save, Save::View { view: Some(_), .. })));
    let routine = fleet.on_state("vac1", state(RobotState::Docked, 0, &[]), clock.at(100));
    assert!(saves(&routine).is_empty(), "{routine:?}");
    let stale = fleet.tick(clock.at(45_100));
    assert!(
        saves(&stale)
            .iter()
            .any(|save| matches!(save, Save::View { view: Some(view), .. } if view.link == Link::Stale))
    );
    let back = fleet.on_state("vac1", state(RobotState::Docked, 0, &[]), clock.at(46_000));
    assert!(
        saves(&back)
            .iter()
            .any(|save| matches!(save, Save::View { view: Some(view), .. } if view.link == Link::Online))
    );
}

#[test]
fn estops_and_new_fatal_errors_become_alarms() {
    let clock = Clock::new();
    let mut fleet = online_fleet(&clock);
    let estop = fleet.estop(&Target::One("vac1".into()), "android", "u", clock.at(0));
    assert!(saves(&estop).contains(&&Save::Alarm(RobotAlarm::Estopped { name: "Vacuum".into() })));
    let unconfirmed = fleet.tick(clock.at(2_000));
    assert!(saves(&unconfirmed).contains(&&Save::Alarm(RobotAlarm::EstopUnconfirmed { name: "Vacuum".into() })));
    let mut failing = state(RobotState::Error, 1, &[]);
    failing.errors.push(wire::RobotError {
        error_type: "brush_stuck".into(),
        error_level: wire::ErrorLevel::Fatal,
        error_description: "main brush".into(),
    });
    let first = fleet.on_state("vac1", failing.clone(), clock.at(2_100));
    assert!(
        saves(&first).contains(&&Save::Alarm(RobotAlarm::Fatal {
            name: "Vacuum".into(),
            error: "brush_stuck main brush".into()
        }))
    );
    let repeated = fleet.on_state("vac1", failing, clock.at(2_200));
    assert!(!saves(&repeated).iter().any(|save| matches!(save, Save::Alarm(_))), "one alarm per error");
}

#[test]
fn a_factsheet_is_kept_when_it_changes() {
    let clock = Clock::new();
    let mut fleet = online_fleet(&clock);
    let sheet = Factsheet {
        robot_id: "vac1".into(),
        kind: Kind::Vacuum,
        supported_commands: vec!["start".into()],
        heartbeat_secs: 5,
        limits: Value::Null,
    };
    assert_eq!(saves(&fleet.on_factsheet("vac1", sheet.clone())).len(), 1);
    assert!(fleet.on_factsheet("vac1", sheet).is_empty(), "the same factsheet again is not written");
    // The robot's own heartbeat decides when its link goes stale.
    assert_eq!(fleet.next_deadline(), Some(clock.at(15_000).instant));
}
