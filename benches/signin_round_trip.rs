//! The signin round trip through the embedded broker: an app publishes a signin to
//! `webos/server/info` and waits for the reply on `webos/android/info`, against the
//! real daemon (`smarthomed run`, release build under `cargo bench`).
//!
//! Reports latency (p50, p99) of sequential round trips, replies per second with many
//! signins in flight, and the resident memory of each process afterwards: on the
//! embedded store, then with `store.backend = "firebase"` against the Firestore
//! emulator (and the Realtime Database stand-in).
//! `cargo bench --bench signin_round_trip`; under `cargo test` it runs a short smoke
//! pass, so the benchmark keeps working.

#[path = "../tests/integration/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::Daemon;
use common::firebase::Firebase;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

const SIGNIN: &str = r#"{"Producer":"android","command":"signin","UID":"bench-user"}"#;

async fn client(port: u16, id: &str) -> (AsyncClient, EventLoop) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_inflight(1000);
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return (client, eventloop),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        assert!(Instant::now() < deadline, "the broker never accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until `count` replies arrived on the reply topic.
async fn replies(eventloop: &mut EventLoop, count: usize) {
    let mut seen = 0;
    while seen < count {
        if let Event::Incoming(Packet::Publish(publish)) = eventloop.poll().await.expect("connection lost")
            && publish.topic == "webos/android/info"
        {
            seen += 1;
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1).min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let sizes = if full { (5_000, 50_000, 200) } else { (50, 200, 20) };
    // The emulator answers in milliseconds, not microseconds: fewer rounds.
    let emulator_sizes = if full { (1_000, 5_000, 200) } else { (50, 200, 20) };
    let run = if full { "release" } else { "smoke run" };

    let daemon = Daemon::start_with_env("run", "", "", &[("RUST_LOG", "warn")]);
    println!("signin round trip through the embedded broker, store.backend = \"embedded\" ({run})");
    measure(&daemon, sizes).await;
    drop(daemon);

    // The same against the Firestore emulator: its figures show our overhead and memory,
    // not Google's latency.
    let firebase = Firebase::start().await;
    let daemon = Daemon::start_with_env("run", "", &firebase.config(), &[("RUST_LOG", "warn")]);
    println!("signin round trip through the embedded broker, store.backend = \"firebase\" (Firestore emulator, {run})");
    measure(&daemon, emulator_sizes).await;
}

/// Warms the daemon up, measures `sequential` round trips one by one and `pipelined`
/// ones with `window` in flight, and prints the figures and each process's memory.
async fn measure(daemon: &Daemon, (sequential, pipelined, window): (usize, usize, usize)) {
    let (app, mut eventloop) = client(daemon.mqtt_port, "bench-app").await;
    app.subscribe("webos/android/+", QoS::AtLeastOnce).await.unwrap();
    let signup = r#"{"Producer":"android","command":"signup","UID":"bench-user","name":"Bench"}"#;
    // The first answered signin shows the processor is subscribed and the user stored;
    // what is published before the processor first subscribes reaches no one.
    let warm = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            app.publish("webos/server/info", QoS::AtLeastOnce, false, signup).await.unwrap();
            app.publish("webos/server/info", QoS::AtLeastOnce, false, SIGNIN).await.unwrap();
            let answered = tokio::time::timeout(Duration::from_millis(500), replies(&mut eventloop, 1)).await;
            if answered.is_ok() {
                return;
            }
        }
    })
    .await;
    warm.expect("the processor never answered");

    let mut latencies = Vec::with_capacity(sequential);
    for _ in 0..sequential {
        let sent = Instant::now();
        app.publish("webos/server/info", QoS::AtLeastOnce, false, SIGNIN).await.unwrap();
        replies(&mut eventloop, 1).await;
        latencies.push(sent.elapsed());
    }
    latencies.sort();

    let started = Instant::now();
    let mut sent = 0;
    let mut received = 0;
    while received < pipelined {
        while sent < pipelined && sent - received < window {
            app.publish("webos/server/info", QoS::AtLeastOnce, false, SIGNIN).await.unwrap();
            sent += 1;
        }
        replies(&mut eventloop, 1).await;
        received += 1;
    }
    let rate = pipelined as f64 / started.elapsed().as_secs_f64();

    println!(
        "  sequential, {sequential} round trips: p50 {:.3} ms, p99 {:.3} ms",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99))
    );
    println!("  pipelined, {pipelined} signins, {window} in flight: {rate:.0} replies/s");
    let mut children: Vec<_> = daemon.children().into_iter().collect();
    children.sort();
    for (role, pid) in children {
        println!("  resident memory of {role}: {} KiB", common::rss_kib(pid));
    }
    println!("  resident memory of the supervisor: {} KiB", common::rss_kib(daemon.pid()));
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
