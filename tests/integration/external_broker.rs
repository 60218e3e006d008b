//! `broker.embedded = false`: no broker child; the processor and syncer use an
//! external broker (here Debian's Mosquitto) with an account whose password comes
//! from `keys/`.

use crate::common;

use std::time::Duration;

use common::mosquitto::{Mosquitto, PASSWORD, USER};
use common::slack::SlackServer;
use common::{Daemon, FAST_SUPERVISOR, connect, expect_message, expect_messages, subscriber, wait_for};
use nix::sys::signal::Signal;

fn external_config(mosquitto: &Mosquitto, slack: &SlackServer) -> String {
    config_for(&format!("url = \"mqtt://127.0.0.1:{}\"", mosquitto.port), slack)
}

/// `[mqtt]` with `url` (and whatever goes with it), the Mosquitto account, quick retries.
fn config_for(url: &str, slack: &SlackServer) -> String {
    format!(
        "[mqtt]\n{url}\nusername = \"{USER}\"\nreconnect_initial_ms = 100\nreconnect_max_ms = 500\nlost_alert_after_secs = 1\n{}{FAST_SUPERVISOR}",
        slack.config()
    )
}

/// Waits until both children say online on `mosquitto`; their availability from then on.
async fn children_online(mosquitto: &Mosquitto) -> common::app::Messages {
    let (client, eventloop) = connect(mosquitto.port, "watcher", Some((USER, PASSWORD))).await.unwrap();
    let mut availability = subscriber(client, eventloop, "smarthomed/+/availability").await;
    expect_messages(
        &mut availability,
        &[("smarthomed/processor/availability", "online"), ("smarthomed/syncer/availability", "online")],
    )
    .await;
    availability
}

#[tokio::test]
async fn children_use_the_external_broker_and_say_goodbye_there() {
    let mosquitto = Mosquitto::start().await;
    let slack = SlackServer::start().await;
    let mut daemon = Daemon::start_with_keys(
        "run",
        "embedded = false\n",
        &external_config(&mosquitto, &slack),
        &[("mqtt_password", PASSWORD)],
    );

    let mut availability = children_online(&mosquitto).await;
    let children = daemon.wait_children(&["processor", "syncer"]).await;
    assert!(!children.contains_key("broker"), "an embedded broker was started: {children:?}");

    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)).await.code(), Some(0));
    expect_messages(
        &mut availability,
        &[("smarthomed/processor/availability", "offline"), ("smarthomed/syncer/availability", "offline")],
    )
    .await;
    assert!(!daemon.log().contains(PASSWORD), "the MQTT password reached the log");
}

#[tokio::test]
async fn losing_the_external_broker_is_alerted_and_so_is_the_reconnect() {
    let mut mosquitto = Mosquitto::start().await;
    let slack = SlackServer::start().await;
    let daemon = Daemon::start_with_keys(
        "run",
        "embedded = false\n",
        &external_config(&mosquitto, &slack),
        &[("mqtt_password", PASSWORD)],
    );
    let (client, eventloop) = connect(mosquitto.port, "watcher", Some((USER, PASSWORD))).await.unwrap();
    let mut availability = subscriber(client, eventloop, "smarthomed/processor/availability").await;
    expect_message(&mut availability, "smarthomed/processor/availability", "online").await;

    mosquitto.stop();
    let lost = wait_for(Duration::from_secs(15), "the lost-broker alert", || {
        slack.texts_containing("cannot reach the MQTT broker").into_iter().find(|text| text.contains("processor"))
    })
    .await;
    assert!(lost.contains("last error"), "{lost}");

    mosquitto.restart().await;
    wait_for(Duration::from_secs(15), "the reconnect alert", || {
        slack.texts_containing("reconnected to the MQTT broker").into_iter().next()
    })
    .await;
    let children = daemon.children();
    assert!(children.contains_key("processor") && children.contains_key("syncer"));
}

#[tokio::test]
async fn an_external_broker_over_tls_is_trusted_through_mqtt_ca_file() {
    let ca = common::certs::TestCa::new("home-ca");
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = (files.path().join("mosquitto.pem"), files.path().join("mosquitto.key"));
    ca.issue_server(&cert, &key);
    let mosquitto = Mosquitto::start_with_tls(&cert, &key).await;
    let slack = SlackServer::start().await;
    let tls_port = mosquitto.tls_port.expect("TLS listener");
    let url = format!("url = \"mqtts://127.0.0.1:{tls_port}\"\nca_file = \"{}\"", ca.pem().display());
    let config = config_for(&url, &slack);
    let _daemon = Daemon::start_with_keys("run", "embedded = false\n", &config, &[("mqtt_password", PASSWORD)]);

    children_online(&mosquitto).await;
}
