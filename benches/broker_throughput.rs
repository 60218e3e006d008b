//! The embedded broker against Mosquitto, in one run, with the same clients: Debian's
//! `mosquitto_pub -l` (one line, one message) and `mosquitto_sub`.
//!
//! - throughput: QoS 0 one to one, QoS 1 one to one, QoS 0 one to eight subscribers;
//!   rounds alternate between the two brokers and the medians are reported, with their
//!   ratio (smarthomed / Mosquitto);
//! - memory: the whole daemon (`smarthomed run`: supervisor, broker, processor,
//!   syncer) at rest, and again after the load.
//!
//! `cargo bench --bench broker_throughput`; under `cargo test` it runs a short smoke pass.

#[path = "../tests/integration/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::Daemon;
use common::mosquitto::{self, Mosquitto};

/// A broker under test: its port and the login its clients need.
struct Target {
    name: &'static str,
    port: u16,
    login: Option<(&'static str, &'static str)>,
}

impl Target {
    fn client(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some((user, password)) = self.login {
            command.args(["-u", user, "-P", password]);
        }
        command
    }
}

/// A running `mosquitto_sub` and what it has received so far.
struct Subscriber {
    child: Child,
    received: Arc<AtomicU64>,
    ready: Arc<AtomicU64>,
    /// Microseconds since `epoch` of the last message.
    last_us: Arc<AtomicU64>,
}

impl Subscriber {
    fn start(target: &Target, qos: u8, id: &str, epoch: Instant) -> Self {
        let mut child = target
            .client("mosquitto_sub")
            .args(["-i", id, "-q", &qos.to_string(), "-t", "bench/data", "-t", "bench/ready", "-v"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("{}", missing(&err.to_string())));
        let (received, ready, last_us) = (Arc::default(), Arc::default(), Arc::default());
        let stdout = child.stdout.take().expect("stdout");
        let counters = (Arc::clone(&received), Arc::clone(&ready), Arc::clone(&last_us));
        std::thread::spawn(move || {
            let (received, ready, last_us): (Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicU64>) = counters;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if line.starts_with("bench/data ") {
                    received.fetch_add(1, Ordering::Relaxed);
                    last_us.store(epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
                } else if line.starts_with("bench/ready ") {
                    ready.store(1, Ordering::Relaxed);
                }
            }
        });
        Self { child, received, ready, last_us }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn publish_once(target: &Target, topic: &str) {
    let status = target.client("mosquitto_pub").args(["-t", topic, "-m", "x"]).status();
    assert!(status.is_ok_and(|status| status.success()), "mosquitto_pub failed");
}

/// Messages per second delivered to every subscriber, and the share delivered.
fn round(target: &Target, qos: u8, subscribers: usize, messages: u64) -> (f64, f64) {
    let epoch = Instant::now();
    // Fresh client ids each round: a client id reused at once is a takeover, not a new client.
    let round_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let subs: Vec<Subscriber> =
        (0..subscribers).map(|n| Subscriber::start(target, qos, &format!("bench-sub-{round_id}-{n}"), epoch)).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while subs.iter().any(|sub| sub.ready.load(Ordering::Relaxed) == 0) {
        assert!(Instant::now() < deadline, "{}: subscribers not ready", target.name);
        publish_once(target, "bench/ready");
        std::thread::sleep(Duration::from_millis(50));
    }

    let payload = "x".repeat(64);
    let mut input = String::with_capacity((payload.len() + 1) * messages as usize);
    for _ in 0..messages {
        input.push_str(&payload);
        input.push('\n');
    }
    let started_us = epoch.elapsed().as_micros() as u64;
    let mut publisher = target
        .client("mosquitto_pub")
        .args(["-i", &format!("bench-pub-{round_id}"), "-q", &qos.to_string(), "-t", "bench/data", "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("{}", missing(&err.to_string())));
    publisher.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("feed mosquitto_pub");
    let _ = publisher.wait();

    // Done when every subscriber has everything, or nothing more came for a second.
    let wanted = messages * subscribers as u64;
    let mut last_total = 0;
    let mut quiet_since = Instant::now();
    loop {
        let total: u64 = subs.iter().map(|sub| sub.received.load(Ordering::Relaxed)).sum();
        if total >= wanted {
            break;
        }
        if total != last_total {
            last_total = total;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > Duration::from_secs(1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let total: u64 = subs.iter().map(|sub| sub.received.load(Ordering::Relaxed)).sum();
    let last_us = subs.iter().map(|sub| sub.last_us.load(Ordering::Relaxed)).max().unwrap_or(started_us);
    let seconds = (last_us.saturating_sub(started_us)).max(1) as f64 / 1e6;
    (total as f64 / subscribers as f64 / seconds, total as f64 / wanted as f64)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The memory of the daemon and all its children, in MiB: resident (the one binary's
/// shared pages counted in every process) and proportional (counted once).
fn daemon_memory(daemon: &Daemon) -> String {
    let pids: Vec<u32> = std::iter::once(daemon.pid()).chain(daemon.children().into_values()).collect();
    let sum = |read: fn(u32) -> u64| pids.iter().copied().map(read).sum::<u64>() as f64 / 1024.0;
    format!("{:.1} MiB resident, {:.1} MiB proportional (PSS)", sum(common::rss_kib), sum(common::pss_kib))
}

fn missing(err: &str) -> String {
    format!("cannot run the Mosquitto clients ({err}): `apt-get install mosquitto-clients` (scripts/test does this)")
}

#[tokio::main]
async fn main() {
    smarthomed::tls::use_ring();
    let full = std::env::args().any(|arg| arg == "--bench");
    let (rounds, scale) = if full { (5, 1) } else { (1, 100) };
    let run = if full { "release" } else { "smoke run" };

    let mosquitto = Mosquitto::start().await;
    let daemon = Daemon::start("run", "", common::FAST_SUPERVISOR);
    daemon.wait_broker().await;
    daemon.wait_children(&["broker", "processor", "syncer"]).await;
    // Let the children settle before reading memory at rest.
    tokio::time::sleep(Duration::from_secs(if full { 5 } else { 1 })).await;
    let at_rest = daemon_memory(&daemon);

    let targets = [
        Target { name: "smarthomed", port: daemon.mqtt_port, login: None },
        Target { name: "mosquitto", port: mosquitto.port, login: Some((mosquitto::USER, mosquitto::PASSWORD)) },
    ];
    let cases = [
        ("QoS 0, 1:1", 0, 1, 20_000 / scale),
        ("QoS 1, 1:1", 1, 1, 20_000 / scale),
        ("QoS 0, 1:8", 0, 8, 10_000 / scale),
    ];
    println!("embedded broker vs Mosquitto ({run}, {rounds} rounds, medians)");
    println!("| case | smarthomed msg/s | Mosquitto msg/s | ratio | delivered (smarthomed, Mosquitto) |");
    println!("|---|---|---|---|---|");
    for (name, qos, subscribers, messages) in cases {
        let (mut ours, mut theirs, mut ours_share, mut theirs_share) = (vec![], vec![], vec![], vec![]);
        for _ in 0..rounds {
            for target in &targets {
                let (rate, share) = round(target, qos, subscribers, messages);
                if target.name == "smarthomed" {
                    ours.push(rate);
                    ours_share.push(share);
                } else {
                    theirs.push(rate);
                    theirs_share.push(share);
                }
            }
        }
        let (ours, theirs) = (median(&mut ours), median(&mut theirs));
        println!(
            "| {name} ({messages} messages) | {ours:.0} | {theirs:.0} | {:.2} | {:.1} %, {:.1} % |",
            ours / theirs,
            median(&mut ours_share) * 100.0,
            median(&mut theirs_share) * 100.0
        );
    }
    tokio::time::sleep(Duration::from_secs(if full { 5 } else { 1 })).await;
    println!("whole daemon memory at rest: {at_rest}; after the load: {}", daemon_memory(&daemon));
}
