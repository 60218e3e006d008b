//! A robot that speaks the robot channel (`smarthomed robot-sim`): for the tests, the
//! benchmark, and a user who wants to see the robot side work without a robot.
//!
//! It follows protocol/README.md, "Robots", as a robot must: client id `robot-<id>`, a
//! persistent session, keep alive 15 s, a last will saying connection_broken with its
//! session id; it applies a retained latch before it announces itself online; it stops
//! at once on an e-stop request (before the daemon's latch arrives); it drops a cmd of
//! an older e-stop epoch or past its expiry, carries out each cmdId once, and repeats
//! its newest 8 action states in every state message. Work takes `work` and then
//! completes as [`machine::completed`] says. When the daemon's robot connection says
//! offline, it does what its status view says (`onDaemonLost`: continue, pause, stop).

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::machine;
use crate::protocol::robot::{
    self as wire, ACTION_STATES_KEPT, ActionState, ActionStatus, Battery, CmdMessage, ConnectionMessage,
    ConnectionState, EstopLatch, Factsheet, Kind, Leaf, OnDaemonLost, Position, RobotState, RobotStatus, StateMessage,
};
use crate::robot::fleet::REPORT_STATE;

/// A retained latch arrives right after the subscription is granted; the robot waits
/// this long for it before it says it is online.
const LATCH_GRACE: Duration = Duration::from_millis(300);

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub robot_id: String,
    pub kind: Kind,
    /// How long each piece of work takes.
    pub work: Duration,
    pub heartbeat_secs: u32,
    /// Receive commands but never act on them or acknowledge them.
    pub ignore_commands: bool,
    /// Report the e-stop as not clearable (its button still pressed).
    pub stop_not_clearable: bool,
}

struct Robot {
    options: SimOptions,
    session_id: String,
    header_id: u64,
    state: RobotState,
    /// The state a pause left, for resume.
    paused_from: Option<RobotState>,
    estop_epoch: u64,
    actions: VecDeque<ActionState>,
    /// The cmdId of the work under way.
    working_on: Option<String>,
    work_done_at: Option<Instant>,
    battery: f64,
    /// From the daemon's view of this robot.
    on_daemon_lost: OnDaemonLost,
}

/// Runs the robot until `shutdown`; then says offline and disconnects.
pub async fn run(mut mqtt: MqttOptions, options: SimOptions, shutdown: CancellationToken) {
    let session_id = format!("{:016x}", rand::random::<u64>());
    let will = ConnectionMessage {
        header_id: 0,
        timestamp: stamp(),
        robot_id: options.robot_id.clone(),
        session_id: session_id.clone(),
        connection_state: ConnectionState::ConnectionBroken,
    };
    mqtt.set_keep_alive(Duration::from_secs(15));
    mqtt.set_clean_session(false);
    mqtt.set_last_will(LastWill::new(
        wire::topic(&options.robot_id, Leaf::Connection),
        json(&will),
        QoS::AtLeastOnce,
        true,
    ));
    let (client, mut eventloop) = AsyncClient::new(mqtt, 64);
    // A state right after an acknowledgement would otherwise wait for a delayed ACK.
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    let mut robot = Robot {
        state: options.kind.resting(),
        options,
        session_id,
        header_id: 0,
        paused_from: None,
        estop_epoch: 0,
        actions: VecDeque::new(),
        working_on: None,
        work_done_at: None,
        battery: 100.0,
        on_daemon_lost: OnDaemonLost::Pause,
    };
    let heartbeat = Duration::from_secs(u64::from(robot.options.heartbeat_secs.max(1)));
    let mut next_heartbeat = Instant::now() + heartbeat;
    let mut announce_at: Option<Instant> = None;
    let mut online = false;
    loop {
        let wake = [Some(next_heartbeat), announce_at, robot.work_done_at].into_iter().flatten().min();
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep_until(wake.unwrap_or(next_heartbeat)) => None,
            event = eventloop.poll() => Some(event),
        };
        let now = Instant::now();
        match event {
            Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                online = false;
                let id = robot.options.robot_id.clone();
                for topic in [
                    wire::topic(&id, Leaf::Cmd),
                    wire::topic(&id, Leaf::Estop),
                    wire::topic(&id, Leaf::EstopRequest),
                    wire::ALL_ESTOP_REQUEST_TOPIC.to_owned(),
                    wire::topic(&id, Leaf::Status),
                    wire::DAEMON_AVAILABILITY_TOPIC.to_owned(),
                ] {
                    if let Err(err) = client.try_subscribe(topic, QoS::AtLeastOnce) {
                        warn!("robot-sim: cannot subscribe: {err}");
                    }
                }
            }
            Some(Ok(Event::Incoming(Packet::SubAck(_)))) if !online && announce_at.is_none() => {
                announce_at = Some(now + LATCH_GRACE);
            }
            Some(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                robot.on_message(&client, &publish.topic, &publish.payload);
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => {
                debug!("robot-sim: connection: {err}");
                online = false;
                announce_at = None;
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
            None => {}
        }
        if announce_at.is_some_and(|at| now >= at) {
            announce_at = None;
            online = true;
            robot.announce(&client, ConnectionState::Online);
            robot.publish_state(&client);
            next_heartbeat = now + heartbeat;
        }
        if robot.work_done_at.is_some_and(|at| now >= at) {
            robot.complete_work(now);
            robot.publish_state(&client);
        }
        if now >= next_heartbeat {
            next_heartbeat = now + heartbeat;
            if online {
                robot.publish_state(&client);
            }
        }
    }
    robot.announce(&client, ConnectionState::Offline);
    let _ = client.try_disconnect();
    // Let the goodbye and the disconnect go out.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(event) = eventloop.poll().await {
            if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
}

impl Robot {
    fn next_header(&mut self) -> u64 {
        self.header_id += 1;
        self.header_id
    }

    fn announce(&mut self, client: &AsyncClient, connection_state: ConnectionState) {
        let id = self.options.robot_id.clone();
        let factsheet = Factsheet {
            robot_id: id.clone(),
            kind: self.options.kind,
            supported_commands: self.options.kind.commands().iter().map(|c| (*c).to_owned()).collect(),
            heartbeat_secs: self.options.heartbeat_secs,
            limits: serde_json::json!({"maxSpeedMps": 0.5}),
        };
        let message = ConnectionMessage {
            header_id: self.next_header(),
            timestamp: stamp(),
            robot_id: id.clone(),
            session_id: self.session_id.clone(),
            connection_state,
        };
        publish(client, &wire::topic(&id, Leaf::Factsheet), json(&factsheet), true);
        publish(client, &wire::topic(&id, Leaf::Connection), json(&message), true);
        info!(robot = id, ?connection_state, "robot-sim announced");
    }

    fn publish_state(&mut self, client: &AsyncClient) {
        let message = StateMessage {
            header_id: self.next_header(),
            timestamp: stamp(),
            robot_id: self.options.robot_id.clone(),
            session_id: self.session_id.clone(),
            state: self.state,
            estop_epoch: self.estop_epoch,
            estop_clearable: self.state == RobotState::EmergencyStopped && !self.options.stop_not_clearable,
            errors: Vec::new(),
            action_states: self.actions.iter().cloned().collect(),
            battery: Some(Battery { charge: self.battery, charging: self.state == RobotState::Charging }),
            position: Some(Position { x: 0.0, y: 0.0, theta: 0.0, map_id: "home".into() }),
            destination: None,
            eta: None,
        };
        publish(client, &wire::topic(&self.options.robot_id, Leaf::State), json(&message), false);
    }

    fn on_message(&mut self, client: &AsyncClient, topic: &str, payload: &[u8]) {
        if topic == wire::DAEMON_AVAILABILITY_TOPIC {
            if payload == b"offline" {
                self.daemon_lost(client);
            }
            return;
        }
        let Some((_, leaf)) = wire::parse_topic(topic) else { return };
        match leaf {
            Leaf::EstopRequest => {
                // Stop first; the latch with its epoch follows from the daemon.
                self.stop_everything("emergency_stop");
                self.state = RobotState::EmergencyStopped;
                self.publish_state(client);
            }
            Leaf::Estop if payload.is_empty() => {}
            Leaf::Estop => match serde_json::from_slice::<EstopLatch>(payload) {
                Ok(latch) => self.on_latch(client, &latch),
                Err(err) => warn!("robot-sim: unreadable latch: {err}"),
            },
            Leaf::Status => {
                if let Ok(view) = serde_json::from_slice::<RobotStatus>(payload) {
                    self.on_daemon_lost = view.on_daemon_lost;
                }
            }
            Leaf::Cmd => match serde_json::from_slice::<CmdMessage>(payload) {
                Ok(cmd) => self.on_cmd(client, cmd),
                Err(err) => warn!("robot-sim: unreadable cmd: {err}"),
            },
            _ => {}
        }
    }

    /// The daemon's robot connection went away: do what the owner registered.
    fn daemon_lost(&mut self, client: &AsyncClient) {
        let wanted: &[&str] = match self.on_daemon_lost {
            OnDaemonLost::Continue => &[],
            OnDaemonLost::Pause => &["pause"],
            OnDaemonLost::Stop => &["stop", "cancel"],
        };
        let Some((command, next)) = wanted.iter().find_map(|command| {
            let next = machine::next_state(self.options.kind, self.state, command).ok()??;
            Some((*command, next))
        }) else {
            return;
        };
        info!(robot = self.options.robot_id, command, "robot-sim: the daemon is lost");
        self.steer(command, next);
        self.publish_state(client);
    }

    fn on_latch(&mut self, client: &AsyncClient, latch: &EstopLatch) {
        if latch.epoch < self.estop_epoch {
            return;
        }
        if latch.active {
            self.stop_everything("emergency_stop");
            self.state = RobotState::EmergencyStopped;
        } else if self.state == RobotState::EmergencyStopped || self.state == RobotState::Error {
            // A reset never resumes the interrupted work.
            self.state = RobotState::Idle;
        }
        self.estop_epoch = latch.epoch;
        self.publish_state(client);
    }

    fn on_cmd(&mut self, client: &AsyncClient, cmd: CmdMessage) {
        if self.options.ignore_commands {
            debug!(cmd = cmd.cmd_id, "robot-sim: ignoring a command");
            return;
        }
        if cmd.estop_epoch < self.estop_epoch {
            info!(cmd = cmd.cmd_id, "robot-sim: dropped a cmd of an older e-stop epoch");
            return;
        }
        let expired = chrono::DateTime::parse_from_rfc3339(&cmd.expires_at).map_or(true, |at| at < Utc::now());
        if expired {
            info!(cmd = cmd.cmd_id, "robot-sim: dropped an expired cmd");
            return;
        }
        if cmd.command == REPORT_STATE || self.actions.iter().any(|action| action.cmd_id == cmd.cmd_id) {
            self.publish_state(client);
            return;
        }
        let (status, result) = match machine::next_state(self.options.kind, self.state, &cmd.command) {
            Err(refusal) => (ActionStatus::Rejected, refusal.code().to_owned()),
            Ok(next) => {
                let next = next.or(self.paused_from).unwrap_or(self.options.kind.resting());
                let resumes = cmd.command == "resume" && self.working_on.is_some();
                self.steer(&cmd.command, next);
                if machine::completed(self.options.kind, next).is_some() {
                    self.work_done_at = Some(Instant::now() + self.options.work);
                    if resumes {
                        // The paused work runs again; the resume itself is done.
                        (ActionStatus::Finished, String::new())
                    } else {
                        self.working_on = Some(cmd.cmd_id.clone());
                        (ActionStatus::Running, String::new())
                    }
                } else {
                    (ActionStatus::Finished, String::new())
                }
            }
        };
        self.push_action(ActionState {
            cmd_id: cmd.cmd_id,
            command: cmd.command,
            action_status: status,
            result_description: result,
        });
        self.publish_state(client);
    }

    /// Moves to `next` for a steering or work command, settling the work it ends.
    fn steer(&mut self, command: &str, next: RobotState) {
        match command {
            "pause" => {
                self.paused_from = Some(self.state);
                self.work_done_at = None;
                self.set_working_status(ActionStatus::Paused, "");
            }
            "resume" => {
                self.paused_from = None;
                self.set_working_status(ActionStatus::Running, "");
            }
            "start" if self.state == RobotState::Paused => {
                self.paused_from = None;
                self.set_working_status(ActionStatus::Failed, "superseded");
            }
            "stop" | "cancel" | "home" => self.stop_everything(command),
            _ => {}
        }
        self.state = next;
    }

    fn stop_everything(&mut self, why: &str) {
        self.work_done_at = None;
        self.paused_from = None;
        self.set_working_status(ActionStatus::Failed, why);
        self.working_on = None;
    }

    fn set_working_status(&mut self, status: ActionStatus, why: &str) {
        let Some(cmd_id) = &self.working_on else { return };
        if let Some(action) = self.actions.iter_mut().find(|action| action.cmd_id == *cmd_id) {
            action.action_status = status;
            action.result_description = why.to_owned();
        }
    }

    fn complete_work(&mut self, now: Instant) {
        self.battery = (self.battery - 1.0).max(5.0);
        match machine::completed(self.options.kind, self.state) {
            Some(next) => {
                self.state = next;
                if machine::completed(self.options.kind, next).is_some() {
                    // Cleaning is followed by the way home.
                    self.work_done_at = Some(now + self.options.work);
                    return;
                }
            }
            None => return,
        }
        self.work_done_at = None;
        self.set_working_status(ActionStatus::Finished, "");
        self.working_on = None;
    }

    fn push_action(&mut self, action: ActionState) {
        self.actions.push_back(action);
        while self.actions.len() > ACTION_STATES_KEPT {
            self.actions.pop_front();
        }
    }
}

fn stamp() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn publish(client: &AsyncClient, topic: &str, payload: String, retain: bool) {
    if let Err(err) = client.try_publish(topic, QoS::AtLeastOnce, retain, payload) {
        warn!(topic, "robot-sim: cannot queue a message: {err}");
    }
}
