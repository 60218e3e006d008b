//! The embedded broker, run as `smarthomed broker`: real MQTT clients over TCP
//! (3.1.1 and 5) and WebSocket, retained messages, accounts and limits.

mod common;

use std::time::Duration;

use common::{Daemon, connect, expect_message, subscriber};
use rumqttc::{MqttOptions, QoS, Transport};

fn password_hash(password: &str) -> String {
    smarthomed::broker::password::hash(password).unwrap()
}

#[tokio::test]
async fn mqtt_311_clients_exchange_messages_and_get_retained_ones() {
    let daemon = Daemon::start("broker", "", "");
    daemon.wait_broker().await;

    let (publisher, mut publisher_loop) = connect(daemon.mqtt_port, "pub", None).await.unwrap();
    tokio::spawn(async move { while publisher_loop.poll().await.is_ok() {} });
    publisher.publish("home/status", QoS::AtLeastOnce, true, "009060210").await.unwrap();

    let (client, eventloop) = connect(daemon.mqtt_port, "sub", None).await.unwrap();
    let mut messages = subscriber(client, eventloop, "home/#").await;
    assert!(expect_message(&mut messages, "home/status", "009060210").await, "retained flag set");

    publisher.publish("home/live", QoS::AtLeastOnce, false, "hello").await.unwrap();
    assert!(!expect_message(&mut messages, "home/live", "hello").await);
}

#[tokio::test]
async fn mqtt_5_and_websocket_clients_share_the_bus() {
    let daemon = Daemon::start("broker", "", "");
    daemon.wait_broker().await;

    let (client, eventloop) = connect(daemon.mqtt_port, "v4-sub", None).await.unwrap();
    let mut messages = subscriber(client, eventloop, "bus/#").await;

    let (v5, mut v5_loop) =
        rumqttc::v5::AsyncClient::new(rumqttc::v5::MqttOptions::new("v5-pub", "127.0.0.1", daemon.mqtt_port), 8);
    let v5_connack = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(ack)) =
                v5_loop.poll().await.expect("v5 connect")
            {
                return ack;
            }
        }
    })
    .await
    .expect("v5 CONNACK");
    assert_eq!(v5_connack.code, rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success);
    tokio::spawn(async move { while v5_loop.poll().await.is_ok() {} });
    v5.publish("bus/v5", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "from v5").await.unwrap();
    expect_message(&mut messages, "bus/v5", "from v5").await;

    let mut ws_options = MqttOptions::new("ws-pub", format!("ws://127.0.0.1:{}/mqtt", daemon.ws_port), daemon.ws_port);
    ws_options.set_transport(Transport::Ws);
    let (ws, mut ws_loop) = common::connect_with(ws_options).await.expect("websocket connect");
    tokio::spawn(async move { while ws_loop.poll().await.is_ok() {} });
    ws.publish("bus/ws", QoS::AtLeastOnce, false, "from ws").await.unwrap();
    expect_message(&mut messages, "bus/ws", "from ws").await;
}

#[tokio::test]
async fn accounts_refuse_wrong_passwords_unknown_users_and_anonymous_clients() {
    let broker = format!("[[broker.users]]\nname = \"esp32\"\npassword_hash = \"{}\"\n", password_hash("right"));
    let daemon = Daemon::start("broker", &broker, "");
    let port = daemon.mqtt_port;
    common::wait_for_async(Duration::from_secs(20), "the account to be let in", || async move {
        connect(port, "esp32-ok", Some(("esp32", "right"))).await.ok()
    })
    .await;

    for (login, why) in [
        (Some(("esp32", "wrong")), "wrong password"),
        (Some(("nobody", "right")), "unknown user"),
        (None, "anonymous"),
        (Some(("smarthomed", "")), "internal user without the supervisor's password"),
    ] {
        let refused = connect(port, "refused", login).await;
        assert!(refused.is_err(), "{why} was let in");
    }
    assert!(!daemon.log().contains("right"), "a password reached the log");
}

#[tokio::test]
async fn oversize_payloads_are_refused_and_the_broker_keeps_serving() {
    let daemon = Daemon::start("broker", "max_payload_bytes = 1024\nlog_segment_bytes = 65536\n", "");
    daemon.wait_broker().await;
    let (client, eventloop) = connect(daemon.mqtt_port, "sub", None).await.unwrap();
    let mut messages = subscriber(client, eventloop, "big/#").await;

    let (publisher, mut publisher_loop) = connect(daemon.mqtt_port, "big-pub", None).await.unwrap();
    publisher.publish("big/one", QoS::AtLeastOnce, false, vec![b'x'; 4096]).await.unwrap();
    let dropped = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if publisher_loop.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(dropped.is_ok(), "the oversize publisher was not disconnected");

    let (small, mut small_loop) = connect(daemon.mqtt_port, "small-pub", None).await.unwrap();
    tokio::spawn(async move { while small_loop.poll().await.is_ok() {} });
    small.publish("big/small", QoS::AtLeastOnce, false, "fits").await.unwrap();
    expect_message(&mut messages, "big/small", "fits").await;
}

#[tokio::test]
async fn a_taken_port_is_a_clear_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ws_port = taken.local_addr().unwrap().port();
    let mut daemon = Daemon::start_at("broker", (common::free_port(), ws_port), "", "", &[]);
    let status = daemon.wait_exit(Duration::from_secs(15)).await;
    assert!(!status.success());
    let log = daemon.log();
    assert!(log.contains(&format!("broker.ws_listen = 127.0.0.1:{ws_port}")), "{log}");
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused() {
    let daemon = Daemon::start("broker", "max_connections = 2\n", "");
    daemon.wait_broker().await;
    let first = connect(daemon.mqtt_port, "first", None).await.expect("first");
    let second = connect(daemon.mqtt_port, "second", None).await.expect("second");
    assert!(connect(daemon.mqtt_port, "third", None).await.is_err(), "a third connection was let in");
    drop((first, second));
    common::wait_for_async(Duration::from_secs(10), "a freed slot", || async move {
        connect(daemon.mqtt_port, "fourth", None).await.ok()
    })
    .await;
}
