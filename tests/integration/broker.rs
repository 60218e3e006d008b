//! The embedded broker, run as `smarthomed broker`: real MQTT clients over TCP
//! (3.1.1 and 5) and WebSocket, retained messages, accounts and limits.

use crate::common;

use std::time::Duration;

use common::{Daemon, connect, expect_message, raw_mqtt, subscriber};
use rumqttc::{MqttOptions, QoS, Transport};

fn password_hash(password: &str) -> String {
    smarthomed::password::hash(password).unwrap()
}

#[tokio::test]
async fn mqtt_311_clients_exchange_messages_and_get_retained_ones() {
    let daemon = Daemon::start("broker", "", "");
    daemon.wait_broker().await;

    let (publisher, mut publisher_loop) = connect(daemon.mqtt_port, "pub", None).await.unwrap();
    let (acked, mut acks) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = publisher_loop.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = event {
                let _ = acked.send(());
            }
        }
    });
    publisher.publish("home/status", QoS::AtLeastOnce, true, "009060210").await.unwrap();
    // Acknowledged: the broker holds it before anyone subscribes.
    tokio::time::timeout(Duration::from_secs(10), acks.recv()).await.expect("no PUBACK");

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

    // The daemon's client ids are refused over WebSocket too, where the front door
    // cannot read the CONNECT.
    let ws_url = format!("ws://127.0.0.1:{}/mqtt", daemon.ws_port);
    let mut impostor = MqttOptions::new("smarthomed-processor", ws_url, daemon.ws_port);
    impostor.set_transport(Transport::Ws);
    let refused = common::connect_with(impostor).await.err().expect("the processor's id was let in");
    assert!(refused.contains("NotAuthorized") || refused.contains("Refused"), "{refused}");
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
    let daemon = Daemon::start("broker", "max_payload_bytes = 1024\n", "");
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
    // The probe of `wait_broker` holds a place until the broker sees it gone.
    let port = daemon.mqtt_port;
    let first = connect(port, "first", None).await.expect("first");
    let second = common::wait_for_async(Duration::from_secs(10), "a second place", || async move {
        connect(port, "second", None).await.ok()
    })
    .await;
    assert!(connect(daemon.mqtt_port, "third", None).await.is_err(), "a third connection was let in");
    // A flood past the limit is refused without flooding the log.
    for _ in 0..50 {
        let _ = tokio::net::TcpStream::connect(("127.0.0.1", daemon.mqtt_port)).await;
    }
    common::wait_for_async(Duration::from_secs(10), "the refusals to be counted", || async move {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let mut byte = [0u8; 1];
        // Refused connections are closed at once.
        matches!(tokio::io::AsyncReadExt::read(&mut { stream }, &mut byte).await, Ok(0) | Err(_)).then_some(())
    })
    .await;
    let logged = daemon.log().lines().filter(|line| line.contains("connection limit reached")).count();
    assert!((1..=smarthomed::log_limit::BURST as usize).contains(&logged), "{logged} lines for 51 refusals");
    drop((first, second));
    common::wait_for_async(Duration::from_secs(10), "a freed slot", || async move {
        connect(daemon.mqtt_port, "fourth", None).await.ok()
    })
    .await;
}

/// An MQTT 3.1.1 client over TLS (mqtts, or wss when `websocket`) that trusts `ca`.
async fn connect_tls(
    port: u16,
    client_id: &str,
    ca: &common::certs::TestCa,
    websocket: bool,
) -> Result<(rumqttc::AsyncClient, rumqttc::EventLoop), String> {
    let mut options = if websocket {
        let mut options = MqttOptions::new(client_id, format!("wss://127.0.0.1:{port}/mqtt"), port);
        options.set_transport(Transport::wss_with_config(ca.client_tls()));
        options
    } else {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_transport(Transport::tls_with_config(ca.client_tls()));
        options
    };
    options.set_keep_alive(Duration::from_secs(5));
    common::connect_with(options).await
}

#[tokio::test]
async fn tls_and_wss_listeners_serve_a_certificate_renewed_on_disk_without_a_restart() {
    use common::certs::TestCa;
    let (first_ca, renewed_ca) = (TestCa::new("first-ca"), TestCa::new("renewed-ca"));
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = (files.path().join("broker.pem"), files.path().join("broker.key"));
    first_ca.issue_server(&cert, &key);
    let (tls_port, wss_port) = (common::free_port(), common::free_port());
    let broker = format!(
        "tls_listen = \"127.0.0.1:{tls_port}\"\nwss_listen = \"127.0.0.1:{wss_port}\"\n\
         tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\nconnect_timeout_ms = 1000\n",
        cert.display(),
        key.display()
    );
    let daemon = Daemon::start("broker", &broker, "");
    daemon.wait_broker().await;
    let (client, eventloop) = connect(daemon.mqtt_port, "plain-sub", None).await.unwrap();
    let mut messages = subscriber(client, eventloop, "bus/#").await;

    for (port, websocket, topic) in [(tls_port, false, "bus/mqtts"), (wss_port, true, "bus/wss")] {
        let client_id = topic.replace('/', "-");
        let (client, mut eventloop) = connect_tls(port, &client_id, &first_ca, websocket).await.expect(topic);
        tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        client.publish(topic, QoS::AtLeastOnce, false, "over TLS").await.unwrap();
        expect_message(&mut messages, topic, "over TLS").await;
    }

    // MQTT 5 over TLS goes to the MQTT 5 side, as on the plain port.
    let mut v5_options = rumqttc::v5::MqttOptions::new("v5-tls", "127.0.0.1", tls_port);
    v5_options.set_transport(Transport::tls_with_config(first_ca.client_tls()));
    let (v5, mut v5_loop) = rumqttc::v5::AsyncClient::new(v5_options, 8);
    tokio::time::timeout(Duration::from_secs(5), async {
        while !matches!(
            v5_loop.poll().await.expect("v5 over TLS"),
            rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(_))
        ) {}
    })
    .await
    .expect("v5 CONNACK over TLS");
    tokio::spawn(async move { while v5_loop.poll().await.is_ok() {} });
    v5.publish("bus/v5-tls", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "v5 over TLS").await.unwrap();
    expect_message(&mut messages, "bus/v5-tls", "v5 over TLS").await;

    // A client that trusts another authority is refused.
    assert!(connect_tls(tls_port, "untrusting", &renewed_ca, false).await.is_err());

    // A renewal replaces the files: the next connection gets the new certificate.
    renewed_ca.issue_server(&cert, &key);
    for websocket in [false, true] {
        let port = if websocket { wss_port } else { tls_port };
        connect_tls(port, "after-renewal", &renewed_ca, websocket).await.expect("the renewed certificate");
    }
    assert!(connect_tls(tls_port, "old-trust", &first_ca, false).await.is_err(), "the old certificate stayed");

    // A broken renewal is logged and the certificate in use stays.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    connect_tls(tls_port, "after-bad-renewal", &renewed_ca, false).await.expect("the previous certificate");
    common::wait_for(Duration::from_secs(5), "the bad file to be logged", || {
        daemon.log().contains("the previous one stays in use").then_some(())
    })
    .await;

    // A reload reads the files whatever their times say.
    let third_ca = TestCa::new("third-ca");
    let modified = |path: &std::path::Path| std::fs::metadata(path).unwrap().modified().unwrap();
    let (cert_time, key_time) = (modified(&cert), modified(&key));
    third_ca.issue_server(&cert, &key);
    for (path, time) in [(&cert, cert_time), (&key, key_time)] {
        std::fs::File::options().write(true).open(path).unwrap().set_modified(time).unwrap();
    }
    connect_tls(tls_port, "before-reload", &renewed_ca, false).await.expect("unchanged times: no reading");
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    common::wait_for_async(Duration::from_secs(10), "the reloaded certificate", || async {
        connect_tls(tls_port, "after-reload", &third_ca, false).await.ok()
    })
    .await;

    // A connection that never starts its handshake is closed after the connect timeout.
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut silent, &mut byte))
        .await
        .expect("a silent TLS connection held open past the connect timeout");
    assert!(matches!(closed, Ok(0) | Err(_)));
    assert!(!daemon.log().contains("PRIVATE KEY"));
}

/// The CONNACK's return code (3.1.1) or reason code (5) for `connect`, or None when
/// the connection closed without one.
async fn connack_code(port: u16, connect: &smarthomed::broker::connect::Connect) -> Option<u8> {
    common::raw_mqtt::connack(port, connect).await.map(|(_, packet)| packet[3])
}

/// `smarthomed broker` with the account esp32 / right, accepting it.
async fn broker_with_an_account() -> Daemon {
    let broker = format!("[[broker.users]]\nname = \"esp32\"\npassword_hash = \"{}\"\n", password_hash("right"));
    let daemon = Daemon::start("broker", &broker, "");
    let port = daemon.mqtt_port;
    common::wait_for_async(Duration::from_secs(20), "the broker", || async move {
        connack_code(port, &raw_mqtt::connect_packet(4, "probe", Some(("esp32", "right")))).await
    })
    .await;
    daemon
}

#[tokio::test]
async fn keep_alive_0_is_taken_and_every_refusal_carries_its_reason_code() {
    let daemon = broker_with_an_account().await;
    let port = daemon.mqtt_port;
    for (level, login, client_id, expected, why) in [
        (4, Some(("esp32", "right")), "esp32", 0x00, "keep alive 0, 3.1.1"),
        (5, Some(("esp32", "right")), "esp32-v5", 0x00, "keep alive 0, 5"),
        (4, Some(("esp32", "wrong")), "esp32", 0x04, "wrong password, 3.1.1"),
        (5, Some(("esp32", "wrong")), "esp32", 0x86, "wrong password, 5"),
        (4, Some(("nobody", "right")), "x", 0x04, "unknown user"),
        (4, None, "anon", 0x05, "anonymous, 3.1.1"),
        (5, None, "anon", 0x87, "anonymous, 5"),
        (4, Some(("esp32", "right")), "smarthomed-processor", 0x05, "the processor's client id"),
        (5, Some(("smarthomed", "guess")), "smarthomed-processor", 0x86, "the internal user, guessed"),
    ] {
        let code = connack_code(port, &raw_mqtt::connect_packet(level, client_id, login)).await;
        assert_eq!(code, Some(expected), "{why}");
    }
    let log = daemon.log();
    assert!(log.contains("refused MQTT connection") && log.contains("127.0.0.1:"), "{log}");
    assert!(log.contains("smarthomed-processor") && !log.contains("right"), "{log}");
}

#[tokio::test]
async fn a_flood_of_wrong_passwords_keeps_memory_flat_and_makes_the_flooder_wait() {
    let daemon = broker_with_an_account().await;
    let port = daemon.mqtt_port;
    let before = common::rss_kib(daemon.pid());
    let attempts: Vec<_> = (0..200)
        .map(|n| {
            tokio::spawn(async move {
                connack_code(port, &raw_mqtt::connect_packet(4, &format!("guess-{n}"), Some(("esp32", "wrong")))).await
            })
        })
        .collect();
    let mut codes = Vec::new();
    for attempt in attempts {
        codes.push(attempt.await.unwrap());
    }
    let after = common::rss_kib(daemon.pid());
    println!("broker resident memory: {} KiB before 200 concurrent wrong passwords, {} KiB after", before, after);
    assert!(codes.iter().all(|code| matches!(code, Some(0x04) | Some(0x03))), "{codes:?}");
    assert!(codes.contains(&Some(0x03)), "the flooding address was never told to wait");
    assert!(after < before + 100 * 1024, "{before} KiB -> {after} KiB");
    // The address that flooded waits out the window, even with the right password.
    assert_eq!(connack_code(port, &raw_mqtt::connect_packet(4, "late", Some(("esp32", "right")))).await, Some(0x03));
}
