//! Simulated robots (`smarthomed robot-sim`, the real binary) on a daemon's broker, and
//! the app's side of the robot commands.

use std::process::{Child, Stdio};

use serde_json::{Value, json};

use super::Daemon;
use super::app::{Messages, next_json, send};

/// A `smarthomed robot-sim` process, stopped when dropped.
pub struct RobotSim {
    child: Child,
}

impl RobotSim {
    /// Starts robot `id` of `kind`; `extra` are more arguments (`--ignore-commands`).
    pub fn start(daemon: &Daemon, id: &str, kind: &str, work_ms: u64, extra: &[&str]) -> Self {
        let log = std::fs::File::create(daemon.dir.path().join(format!("robot-{id}-{}.log", rand_suffix())))
            .expect("robot log");
        let child = super::smarthomed_command()
            .args(["robot-sim", "--id", id, "--kind", kind, "--work-ms", &work_ms.to_string()])
            .args(["--heartbeat-secs", "2"])
            .args(extra)
            .arg("-c")
            .arg(daemon.dir.path().join("smarthomed.toml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("robot log"))
            .stderr(log)
            .spawn()
            .expect("start robot-sim");
        Self { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn rand_suffix() -> u32 {
    std::process::id()
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos())
}

impl Drop for RobotSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn register(uid: &str, robot: &str, kind: &str) -> String {
    json!({"Producer": "android", "command": "robot_register", "UID": uid, "robot": robot, "kind": kind,
           "name": format!("{kind} {robot}"), "operators": ["operator-uid"], "heartbeatSecs": 2})
    .to_string()
}

/// As [`register`], with what the robot is to do when the daemon is lost.
pub fn register_with(uid: &str, robot: &str, kind: &str, on_daemon_lost: &str) -> String {
    let mut registration: Value = serde_json::from_str(&register(uid, robot, kind)).unwrap_or_default();
    registration["onDaemonLost"] = json!(on_daemon_lost);
    registration.to_string()
}

pub fn command(uid: &str, robot: &str, cmd_id: &str, action: &str) -> String {
    json!({"Producer": "android", "command": "robot_command", "UID": uid, "robot": robot, "cmdId": cmd_id,
           "action": action, "timestamp": chrono::Utc::now().to_rfc3339()})
    .to_string()
}

pub fn estop_request(uid: &str) -> String {
    json!({"Producer": "android", "UID": uid}).to_string()
}

/// The next reply on `webos/android/info` whose `command` is `name`; others are passed
/// over.
pub async fn next_reply(replies: &mut Messages, name: &str) -> Value {
    loop {
        let reply = next_json(replies, "webos/android/info").await;
        if reply["command"] == name {
            return reply;
        }
    }
}

/// The next `robot_command_status` of `cmd_id`.
pub async fn next_status(replies: &mut Messages, cmd_id: &str) -> Value {
    loop {
        let reply = next_reply(replies, "robot_command_status").await;
        if reply["cmdId"] == cmd_id {
            return reply;
        }
    }
}

/// Sends `payload` on the command topic.
pub async fn ask(client: &rumqttc::AsyncClient, payload: String) {
    send(client, "webos/server/info", payload).await;
}
