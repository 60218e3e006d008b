//! The robot channel against the real daemon (`smarthomed run`, release build under
//! `cargo bench`), with simulated robots (the library's `robot::sim`, in this process):
//!
//! - a command's round trip: app -> daemon -> robot -> acknowledged and finished ->
//!   app (a mobile robot's `charge` and `undock`, which finish at once), p50 and p99;
//! - e-stop latency while the command queue is full: one handler, held by a 30 s face
//!   recognition, with commands queued behind it; the time from the request to the
//!   retained latch, and to the confirmation;
//! - 100 robots at once, each sending a state every 2 s: the daemon's CPU and memory.
//!
//! `cargo bench --bench robots`; under `cargo test` it runs a short smoke pass.

#[path = "../tests/integration/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::Daemon;
use common::app::{Messages, listen, publisher, send, wait_processor};
use common::robots::{ask, command, estop_request, next_reply, next_status, register};
use serde_json::json;
use smarthomed::protocol::robot::Kind;
use smarthomed::robot::sim::{SimOptions, run as run_robot};
use tokio_util::sync::CancellationToken;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1).min(sorted.len() - 1)]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// (resident KiB, CPU ticks) of a process.
fn usage(pid: u32) -> (u64, u64) {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    (common::rss_kib(pid), ticks)
}

fn robot(daemon: &Daemon, id: &str, kind: Kind, work: Duration, shutdown: &CancellationToken) {
    let mut options =
        rumqttc::MqttOptions::new(smarthomed::protocol::robot::client_id(id), "127.0.0.1", daemon.mqtt_port);
    options.set_keep_alive(Duration::from_secs(15));
    let sim = SimOptions {
        robot_id: id.into(),
        kind,
        work,
        heartbeat_secs: 2,
        ignore_commands: false,
        stop_not_clearable: false,
    };
    tokio::spawn(run_robot(options, sim, shutdown.clone()));
}

async fn online(daemon: &Daemon, id: &str) {
    let topic = format!("smarthomed/robot/v1/{id}/status");
    let mut status = listen(daemon, &format!("watch-{id}"), &topic).await;
    loop {
        let view = common::app::next_json(&mut status, &topic).await;
        if view["link"] == "online" {
            return;
        }
    }
}

async fn start(extra: &str) -> (Daemon, rumqttc::AsyncClient, Messages) {
    let daemon = Daemon::start_with_env("run", "", extra, &[("RUST_LOG", "warn")]);
    daemon.wait_children(&["broker", "processor", "syncer"]).await;
    daemon.wait_broker().await;
    let mut replies = listen(&daemon, "bench-app", "webos/android/+").await;
    let app = publisher(&daemon, "bench-app-pub").await;
    wait_processor(&app, &mut replies).await;
    (daemon, app, replies)
}

#[tokio::main]
async fn main() {
    smarthomed::tls::use_ring();
    let full = std::env::args().any(|arg| arg == "--bench");
    let (round_trips, queued, fleet) = if full { (1_000, 50, 100) } else { (20, 5, 5) };
    let run = if full { "release" } else { "smoke run" };
    let shutdown = CancellationToken::new();

    println!("robot command round trip ({run})");
    let (daemon, app, mut replies) = start("").await;
    ask(&app, register("owner", "bench-mobile", "mobile")).await;
    next_reply(&mut replies, "robot_registered").await;
    robot(&daemon, "bench-mobile", Kind::Mobile, Duration::from_millis(100), &shutdown);
    online(&daemon, "bench-mobile").await;
    let mut latencies = Vec::with_capacity(round_trips);
    for n in 0..round_trips {
        let action = if n % 2 == 0 { "charge" } else { "undock" };
        let cmd_id = format!("rt-{n}");
        let sent = Instant::now();
        ask(&app, command("owner", "bench-mobile", &cmd_id, action)).await;
        while next_status(&mut replies, &cmd_id).await["status"] != "finished" {}
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    println!(
        "  {round_trips} commands, sent to finished as the app sees it: p50 {:.2} ms, p99 {:.2} ms",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99))
    );
    drop(daemon);

    println!("e-stop with the command queue full ({run})");
    let slow = "[processor]\nmax_concurrent_handlers = 1\nhandler_timeout_ms = 60000\n\
                facer_command = [\"sleep\", \"30\"]\nfacer_timeout_secs = 30\n";
    let (daemon, app, mut replies) = start(slow).await;
    ask(&app, register("owner", "bench-vac", "vacuum")).await;
    next_reply(&mut replies, "robot_registered").await;
    robot(&daemon, "bench-vac", Kind::Vacuum, Duration::from_secs(600), &shutdown);
    online(&daemon, "bench-vac").await;
    let mut latch = listen(&daemon, "latch-watch", "smarthomed/robot/v1/bench-vac/estop").await;
    send(&app, "webos/server/info", r#"{"Producer":"car","command":"start_facer"}"#).await;
    for n in 0..queued {
        let signin = json!({"Producer": "android", "command": "signin", "UID": format!("queued-{n}")});
        send(&app, "webos/server/info", signin.to_string()).await;
    }
    let button = publisher(&daemon, "estop-button").await;
    let asked = Instant::now();
    send(&button, "smarthomed/robot/v1/bench-vac/estop/request", estop_request("anyone")).await;
    loop {
        let (_, payload, _) = latch.recv().await.expect("latch watch");
        if payload.contains("\"active\":true") {
            break;
        }
    }
    let latched = asked.elapsed();
    next_reply(&mut replies, "robot_estop_confirmed").await;
    let confirmed = asked.elapsed();
    println!(
        "  {queued} commands queued behind a 30 s handler: latch published after {:.2} ms, confirmed by the robot after {:.2} ms",
        ms(latched),
        ms(confirmed)
    );
    drop(daemon);

    println!("{fleet} robots at once ({run})");
    let (daemon, app, mut replies) = start("").await;
    let pids = daemon.wait_children(&["broker", "processor", "syncer"]).await;
    let before: Vec<(String, (u64, u64))> = pids.iter().map(|(role, pid)| (role.clone(), usage(*pid))).collect();
    for n in 0..fleet {
        let id = format!("fleet-{n}");
        ask(&app, register("owner", &id, "vacuum")).await;
        next_reply(&mut replies, "robot_registered").await;
        robot(&daemon, &id, Kind::Vacuum, Duration::from_secs(5), &shutdown);
    }
    online(&daemon, &format!("fleet-{}", fleet - 1)).await;
    let window = if full { Duration::from_secs(20) } else { Duration::from_secs(2) };
    let start_usage: Vec<(String, (u64, u64))> = pids.iter().map(|(role, pid)| (role.clone(), usage(*pid))).collect();
    tokio::time::sleep(window).await;
    let ticks_per_sec = 100.0;
    for (role, pid) in &pids {
        let (rss, ticks) = usage(*pid);
        let start_ticks = start_usage.iter().find(|(r, _)| r == role).map_or(0, |(_, (_, t))| *t);
        let idle_rss = before.iter().find(|(r, _)| r == role).map_or(0, |(_, (rss, _))| *rss);
        let cpu = (ticks - start_ticks) as f64 / ticks_per_sec / window.as_secs_f64() * 100.0;
        println!(
            "  {role}: {cpu:.1} % of a core, resident {} MiB (before the robots: {} MiB)",
            rss / 1024,
            idle_rss / 1024
        );
    }
    shutdown.cancel();
}
