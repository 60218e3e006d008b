//! The robot channel through the real binary: `smarthomed run` and simulated robots
//! (`smarthomed robot-sim`), apps on the command topic: commands acknowledged by the
//! robot, e-stops that do not wait behind a full command queue, an offline robot that
//! gets its latch when it connects, resets, commands that are never acknowledged, a
//! processor restart with a command under way, and two robots sharing an id.

use std::time::{Duration, Instant};

use crate::common;
use common::app::{listen, next_json, publisher, send, wait_processor};
use common::robots::{RobotSim, ask, command, estop_request, next_reply, next_status, register, register_with};
use common::slack::SlackServer;
use common::{Daemon, FAST_SUPERVISOR, wait_for};
use serde_json::json;

const OWNER: &str = "owner-uid";
const OPERATOR: &str = "operator-uid";

async fn started(extra: &str) -> (Daemon, rumqttc::AsyncClient, common::app::Messages) {
    started_with_broker("", extra).await
}

async fn started_with_broker(broker: &str, extra: &str) -> (Daemon, rumqttc::AsyncClient, common::app::Messages) {
    started_with_env(broker, extra, &[]).await
}

async fn started_with_env(
    broker: &str,
    extra: &str,
    env: &[(&str, &str)],
) -> (Daemon, rumqttc::AsyncClient, common::app::Messages) {
    let daemon = Daemon::start_with_env("run", broker, &format!("{FAST_SUPERVISOR}{extra}"), env);
    daemon.wait_children(&["broker", "processor", "syncer"]).await;
    daemon.wait_broker().await;
    let mut replies = listen(&daemon, "app", "webos/android/+").await;
    let app = publisher(&daemon, "app-pub").await;
    wait_processor(&app, &mut replies).await;
    (daemon, app, replies)
}

/// Waits until the daemon's retained view of `robot` says `field` is `value`.
async fn wait_status(daemon: &Daemon, robot: &str, field: &str, value: serde_json::Value) -> serde_json::Value {
    let mut status =
        listen(daemon, &format!("status-{robot}-{field}"), &format!("smarthomed/robot/v1/{robot}/status")).await;
    let topic = format!("smarthomed/robot/v1/{robot}/status");
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let view = next_json(&mut status, &topic).await;
            if view[field] == value {
                return view;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{robot}'s {field} never became {value}"))
}

#[tokio::test]
async fn a_registered_robot_is_commanded_and_its_work_acknowledged() {
    let (daemon, app, mut replies) = started("").await;
    ask(&app, register(OWNER, "vac1", "vacuum")).await;
    assert_eq!(next_reply(&mut replies, "robot_registered").await["registration"]["owners"], json!([OWNER]));
    let _robot = RobotSim::start(&daemon, "vac1", "vacuum", 500, &[]);
    wait_status(&daemon, "vac1", "link", json!("online")).await;

    ask(&app, command(OPERATOR, "vac1", "c-1", "start")).await;
    assert_eq!(next_status(&mut replies, "c-1").await["status"], "sent");
    assert_eq!(next_status(&mut replies, "c-1").await["status"], "running");
    // Cleaning, then the way home, then docked.
    assert_eq!(next_status(&mut replies, "c-1").await["status"], "finished");
    wait_status(&daemon, "vac1", "state", json!("docked")).await;

    // The same cmdId again is answered with what it came to, and not sent again.
    let mut commands = listen(&daemon, "cmd-watch", "smarthomed/robot/v1/vac1/cmd").await;
    ask(&app, command(OPERATOR, "vac1", "c-1", "start")).await;
    assert_eq!(next_status(&mut replies, "c-1").await["status"], "finished");
    ask(&app, json!({"Producer": "android", "command": "robot_list", "UID": OPERATOR}).to_string()).await;
    let list = next_reply(&mut replies, "robot_list").await;
    assert_eq!(list["robots"][0]["role"], "operator");
    assert_eq!(list["robots"][0]["state"], "docked");
    assert!(commands.try_recv().is_err(), "a repeated cmdId was sent to the robot");

    // Refused early, with the reason: a viewer-less stranger, an impossible command.
    ask(&app, command("stranger", "vac1", "c-2", "start")).await;
    assert_eq!(next_json(&mut replies, "webos/android/error").await["code"], "forbidden");
    ask(&app, command(OPERATOR, "vac1", "c-3", "pause")).await;
    assert_eq!(next_json(&mut replies, "webos/android/error").await["code"], "invalid_transition");
    let mut stale = serde_json::from_str::<serde_json::Value>(&command(OPERATOR, "vac1", "c-4", "start")).unwrap();
    stale["timestamp"] = json!((chrono::Utc::now() - chrono::Duration::seconds(45)).to_rfc3339());
    ask(&app, stale.to_string()).await;
    assert_eq!(next_json(&mut replies, "webos/android/error").await["code"], "command_expired");
}

#[tokio::test]
async fn an_estop_is_latched_while_the_command_queue_is_full_of_slow_commands() {
    let slow = "[processor]\nmax_concurrent_handlers = 1\nhandler_timeout_ms = 60000\n\
                facer_command = [\"sleep\", \"30\"]\nfacer_timeout_secs = 30\n";
    let (daemon, app, mut replies) = started(slow).await;
    ask(&app, register(OWNER, "vac1", "vacuum")).await;
    next_reply(&mut replies, "robot_registered").await;
    let _robot = RobotSim::start(&daemon, "vac1", "vacuum", 60_000, &[]);
    wait_status(&daemon, "vac1", "link", json!("online")).await;
    let mut latch = listen(&daemon, "latch-watch", "smarthomed/robot/v1/vac1/estop").await;

    // The only handler runs a 30 s face recognition; signins queue behind it.
    send(&app, "webos/server/info", r#"{"Producer":"car","command":"start_facer"}"#).await;
    for n in 0..20 {
        let signin = json!({"Producer": "android", "command": "signin", "UID": format!("queued-{n}")});
        send(&app, "webos/server/info", signin.to_string()).await;
    }
    let estop = common::app::publisher(&daemon, "estop-button").await;
    let asked = Instant::now();
    send(&estop, "smarthomed/robot/v1/vac1/estop/request", estop_request("anyone")).await;
    let latched = loop {
        let (topic, payload, _) = tokio::time::timeout(Duration::from_secs(5), latch.recv()).await.unwrap().unwrap();
        let value: serde_json::Value = serde_json::from_str(&payload).unwrap();
        if topic.ends_with("/estop") && value["active"] == true {
            break value;
        }
    };
    let latency = asked.elapsed();
    assert_eq!(latched["epoch"], 1);
    println!("e-stop latched {} ms after the request, with the command queue full", latency.as_millis());
    assert_eq!(next_reply(&mut replies, "robot_estop_latched").await["pendingOffline"], false);
    assert_eq!(next_reply(&mut replies, "robot_estop_confirmed").await["epoch"], 1);
    // None of the queued commands was answered meanwhile: the stop did not wait for them.
    while let Ok((topic, payload, _)) = replies.try_recv() {
        assert!(!payload.contains("queued-"), "{topic}: {payload}");
    }
    wait_status(&daemon, "vac1", "estopConfirmed", json!(true)).await;
}

#[tokio::test]
async fn an_offline_robot_gets_its_latch_when_it_connects_and_only_an_owner_resets_it() {
    let slack = SlackServer::start().await;
    let (daemon, app, mut replies) = started(&slack.config()).await;
    ask(&app, register(OWNER, "vac2", "vacuum")).await;
    next_reply(&mut replies, "robot_registered").await;
    let estop = common::app::publisher(&daemon, "estop-button").await;
    send(&estop, "smarthomed/robot/v1/all/estop/request", estop_request("anyone")).await;
    assert_eq!(next_reply(&mut replies, "robot_estop_latched").await["pendingOffline"], true);
    wait_for(Duration::from_secs(10), "the alert", || {
        slack.texts_containing("waits for it to come online").first().cloned()
    })
    .await;

    let robot = RobotSim::start(&daemon, "vac2", "vacuum", 500, &[]);
    assert_eq!(next_reply(&mut replies, "robot_estop_confirmed").await["epoch"], 1);
    ask(&app, command(OPERATOR, "vac2", "c-1", "start")).await;
    assert_eq!(next_json(&mut replies, "webos/android/error").await["code"], "robot_estopped");

    ask(&app, json!({"Producer": "android", "command": "robot_reset", "UID": OPERATOR, "robot": "vac2"}).to_string())
        .await;
    assert_eq!(next_json(&mut replies, "webos/android/error").await["code"], "forbidden");
    ask(&app, json!({"Producer": "android", "command": "robot_reset", "UID": OWNER, "robot": "vac2"}).to_string())
        .await;
    assert_eq!(next_reply(&mut replies, "robot_reset").await["epoch"], 2);
    let view = wait_status(&daemon, "vac2", "state", json!("idle")).await;
    assert_eq!(view["estopActive"], false);
    drop(robot);

    // A stop whose button is still pressed is not reset.
    let _pressed = RobotSim::start(&daemon, "vac3", "vacuum", 500, &["--stop-not-clearable"]);
    ask(&app, register(OWNER, "vac3", "vacuum")).await;
    next_reply(&mut replies, "robot_registered").await;
    wait_status(&daemon, "vac3", "link", json!("online")).await;
    send(&estop, "smarthomed/robot/v1/vac3/estop/request", estop_request("anyone")).await;
    next_reply(&mut replies, "robot_estop_confirmed").await;
    ask(&app, json!({"Producer": "android", "command": "robot_reset", "UID": OWNER, "robot": "vac3"}).to_string())
        .await;
    assert_eq!(next_json(&mut replies, "webos/android/error").await["code"], "robot_estopped");
}

#[tokio::test]
async fn a_command_never_acknowledged_is_sent_once_more_then_expires() {
    let (daemon, app, mut replies) = started("").await;
    ask(&app, register(OWNER, "deaf", "mobile")).await;
    next_reply(&mut replies, "robot_registered").await;
    let _robot = RobotSim::start(&daemon, "deaf", "mobile", 500, &["--ignore-commands"]);
    wait_status(&daemon, "deaf", "link", json!("online")).await;
    let mut commands = listen(&daemon, "cmd-watch", "smarthomed/robot/v1/deaf/cmd").await;

    let mut go = serde_json::from_str::<serde_json::Value>(&command(OPERATOR, "deaf", "c-9", "move_to")).unwrap();
    go["params"] = json!({"x": 1.5, "y": 2.0});
    ask(&app, go.to_string()).await;
    assert_eq!(next_status(&mut replies, "c-9").await["status"], "sent");
    let expired = next_status(&mut replies, "c-9").await;
    assert_eq!((expired["status"].as_str(), expired["reason"].as_str()), (Some("expired"), Some("robot_no_ack")));
    // The watcher's own connection may bring the resend after the expiry's reply.
    let mut sent = Vec::new();
    while sent.len() < 2 {
        let next = tokio::time::timeout(Duration::from_secs(10), commands.recv()).await;
        let (_, payload, _) = next.expect("the command and its one resend").expect("watcher");
        sent.push(serde_json::from_str::<serde_json::Value>(&payload).unwrap());
    }
    while let Ok((_, payload, _)) = commands.try_recv() {
        sent.push(serde_json::from_str::<serde_json::Value>(&payload).unwrap());
    }
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent.iter().all(|cmd| cmd["cmdId"] == "c-9" && cmd["expiresAt"].is_string()));
}

#[tokio::test]
async fn a_command_under_way_at_a_processor_restart_is_settled_by_the_robots_report() {
    // The records' writes are logged at debug level (and relayed by the supervisor).
    let logging = common::debug_logging("smarthomed::processor::robots");
    let (daemon, app, mut replies) = started_with_env("", "", &[("RUST_LOG", &logging)]).await;
    // The robot goes on with its work while the daemon is away (the default pauses it).
    ask(&app, register_with(OWNER, "chef", "serving", "continue")).await;
    next_reply(&mut replies, "robot_registered").await;
    let _robot = RobotSim::start(&daemon, "chef", "serving", 4_000, &[]);
    wait_status(&daemon, "chef", "link", json!("online")).await;
    ask(&app, command(OPERATOR, "chef", "c-5", "start_cooking")).await;
    assert_eq!(next_status(&mut replies, "c-5").await["status"], "sent");
    assert_eq!(next_status(&mut replies, "c-5").await["status"], "running");
    // Under way as far as the daemon knows: the record is written behind the replies,
    // and a crash before it forgets the command (README, "Robots").
    wait_for(Duration::from_secs(10), "the command's record", || {
        daemon.log().contains(r#"robot command record written id="chef:c-5" status="Running""#).then_some(())
    })
    .await;

    let processor = daemon.children()["processor"];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(processor as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_for(Duration::from_secs(15), "a new processor", || {
        daemon.children().get("processor").copied().filter(|pid| *pid != processor)
    })
    .await;
    // Not sent again; the robot's reports (asked for at the start) settle it.
    while next_status(&mut replies, "c-5").await["status"] != "finished" {}
    let store_dir = daemon.dir.path().join("data");
    let mut daemon = daemon;
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)).await.code(), Some(0));
    let store = smarthomed::store::embedded::EmbeddedDocuments::open(&store_dir).unwrap();
    let record = smarthomed::store::DocumentStore::get(&store, "robot_commands", "chef:c-5").await.unwrap().unwrap();
    let history: Vec<&str> =
        record["history"].as_array().unwrap().iter().filter_map(|c| c["status"].as_str()).collect();
    assert_eq!(history.get(..2), Some(&["sent", "running"][..]), "{history:?}");
    assert!(history.contains(&"unknown"), "{history:?}");
    assert_eq!(history.last(), Some(&"finished"), "{history:?}");
}

#[tokio::test]
async fn two_robots_sharing_an_id_are_alerted_as_flapping() {
    let slack = SlackServer::start().await;
    let (daemon, app, mut replies) = started(&slack.config()).await;
    ask(&app, register(OWNER, "twin", "mobile")).await;
    next_reply(&mut replies, "robot_registered").await;
    let _first = RobotSim::start(&daemon, "twin", "mobile", 500, &[]);
    let _second = RobotSim::start(&daemon, "twin", "mobile", 500, &[]);
    wait_for(Duration::from_secs(30), "the flapping alert", || slack.texts_containing("is flapping").first().cloned())
        .await;
}

#[tokio::test]
async fn a_robot_drops_a_cmd_past_its_expiry_or_of_an_older_estop_epoch() {
    // The robot's side of the protocol; the test plays the daemon (the robot is not
    // registered, so the daemon stays out of it).
    let (daemon, _app, _replies) = started("").await;
    let mut states = listen(&daemon, "state-watch", "smarthomed/robot/v1/solo/state").await;
    let _robot = RobotSim::start(&daemon, "solo", "vacuum", 500, &[]);
    next_json(&mut states, "smarthomed/robot/v1/solo/state").await;
    let as_daemon = publisher(&daemon, "plays-the-daemon").await;
    let latch = json!({"active": false, "epoch": 3, "timestamp": "2026-11-23T10:00:00Z", "requestedBy": ""});
    send(&as_daemon, "smarthomed/robot/v1/solo/estop", latch.to_string()).await;
    while next_json(&mut states, "smarthomed/robot/v1/solo/state").await["estopEpoch"] != 3 {}
    let cmd = |cmd_id: &str, command: &str, epoch: u64, expires_in_secs: i64| {
        json!({
            "headerId": 1, "timestamp": chrono::Utc::now().to_rfc3339(), "cmdId": cmd_id, "command": command,
            "params": null, "estopEpoch": epoch,
            "expiresAt": (chrono::Utc::now() + chrono::Duration::seconds(expires_in_secs)).to_rfc3339(),
            "requestedBy": "test",
        })
        .to_string()
    };
    send(&as_daemon, "smarthomed/robot/v1/solo/cmd", cmd("stale", "start", 3, -1)).await;
    send(&as_daemon, "smarthomed/robot/v1/solo/cmd", cmd("old-epoch", "start", 2, 10)).await;
    // The robot takes its cmds in order: once it lists the valid one, it has seen the
    // others, and dropped them.
    send(&as_daemon, "smarthomed/robot/v1/solo/cmd", cmd("valid", "start", 3, 10)).await;
    loop {
        let state = next_json(&mut states, "smarthomed/robot/v1/solo/state").await;
        if let Some(actions) = state["actionStates"].as_array().filter(|actions| !actions.is_empty()) {
            let ids: Vec<&str> = actions.iter().filter_map(|action| action["cmdId"].as_str()).collect();
            assert_eq!(ids, ["valid"], "a stale or outdated cmd was carried out: {state}");
            assert_eq!(state["estopEpoch"], 3);
            break;
        }
    }
}

#[tokio::test]
async fn a_robot_does_what_its_owner_chose_when_the_daemon_is_lost_and_estops_are_alarms() {
    let (daemon, app, mut replies) = started("").await;
    ask(&app, register_with(OWNER, "vac4", "vacuum", "stop")).await;
    next_reply(&mut replies, "robot_registered").await;
    let _robot = RobotSim::start(&daemon, "vac4", "vacuum", 60_000, &[]);
    wait_status(&daemon, "vac4", "onDaemonLost", json!("stop")).await;
    wait_status(&daemon, "vac4", "link", json!("online")).await;
    ask(&app, command(OPERATOR, "vac4", "c-1", "start")).await;
    while next_status(&mut replies, "c-1").await["status"] != "running" {}
    let mut states = listen(&daemon, "state-watch", "smarthomed/robot/v1/vac4/state").await;

    let processor = daemon.children()["processor"];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(processor as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    loop {
        let state = next_json(&mut states, "smarthomed/robot/v1/vac4/state").await;
        if state["state"] == "idle" {
            break;
        }
    }

    // The e-stop of another robot is in the alarm list the apps show.
    wait_for(Duration::from_secs(15), "a new processor", || {
        daemon.children().get("processor").copied().filter(|pid| *pid != processor)
    })
    .await;
    wait_processor(&app, &mut replies).await;
    let estop = common::app::publisher(&daemon, "estop-button").await;
    send(&estop, "smarthomed/robot/v1/vac4/estop/request", estop_request("anyone")).await;
    next_reply(&mut replies, "robot_estop_confirmed").await;
    let store_dir = daemon.dir.path().join("data");
    let mut daemon = daemon;
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)).await.code(), Some(0));
    let store = smarthomed::store::embedded::EmbeddedDocuments::open(&store_dir).unwrap();
    let alarms = smarthomed::store::DocumentStore::list(&store, "appliance_alarm").await.unwrap();
    assert!(
        alarms.iter().any(|(_, alarm)| alarm["icon"] == "robot_icon"
            && alarm["inform"].as_str().is_some_and(|text| text.contains("비상 정지"))),
        "{alarms:?}"
    );
    let views = smarthomed::store::DocumentStore::list(&store, "robot_views").await.unwrap();
    assert!(views.iter().any(|(id, view)| id == "vac4" && view["lastSeen"].is_string()), "{views:?}");
}

#[tokio::test]
async fn under_the_car2home_policy_robots_write_only_their_own_topics() {
    let (daemon, app, mut replies) = started_with_broker("access = \"car2home\"\n", "").await;
    ask(&app, register(OWNER, "vac1", "vacuum")).await;
    next_reply(&mut replies, "robot_registered").await;
    let _robot = RobotSim::start(&daemon, "vac1", "vacuum", 60_000, &[]);
    wait_status(&daemon, "vac1", "link", json!("online")).await;
    ask(&app, command(OPERATOR, "vac1", "c-1", "start")).await;
    assert_eq!(next_status(&mut replies, "c-1").await["status"], "sent");
    assert_eq!(next_status(&mut replies, "c-1").await["status"], "running");

    // Another robot cannot speak for vac1, nor command or latch it.
    let impostor = publisher(&daemon, "robot-vac2").await;
    send(&impostor, "smarthomed/robot/v1/vac1/state", r#"{"state":"idle"}"#).await;
    send(&impostor, "smarthomed/robot/v1/vac1/cmd", r#"{"command":"stop"}"#).await;
    send(&impostor, "smarthomed/robot/v1/vac1/estop", r#"{"active":false}"#).await;
    // Any client may ask for an e-stop, and the daemon latches it.
    let estop = publisher(&daemon, "panic-button").await;
    send(&estop, "smarthomed/robot/v1/vac1/estop/request", estop_request("anyone")).await;
    assert_eq!(next_reply(&mut replies, "robot_estop_latched").await["pendingOffline"], false);
    assert_eq!(next_reply(&mut replies, "robot_estop_confirmed").await["epoch"], 1);
    let refusals = || {
        daemon.log().lines().filter(|line| line.contains("refused a publish") && line.contains("robot-vac2")).count()
    };
    wait_for(Duration::from_secs(10), "three refusals logged", || (refusals() == 3).then_some(())).await;
}
