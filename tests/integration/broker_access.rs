//! Topic access on the embedded broker: the Car2Home policy (`broker.access =
//! "car2home"`) and `[[broker.acl]]` rules, refused with the protocol's codes and
//! logged with who asked, while the daemon's own processes go on working.

use crate::common;

use std::time::Duration;

use common::app::{self, wait_processor};
use common::{Daemon, connect, expect_message, subscriber};
use rumqttc::v5::mqttbytes::v5::{Packet as V5Packet, PubAckReason, SubscribeReasonCode};
use rumqttc::{Event, Packet, QoS};

/// What a 3.1.1 client's subscription to `filter` was answered with.
async fn subscribe_311(port: u16, id: &str, filter: &str) -> Vec<rumqttc::SubscribeReasonCode> {
    let (client, mut eventloop) = connect(port, id, None).await.unwrap();
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(Event::Incoming(Packet::SubAck(ack))) = eventloop.poll().await {
                return ack.return_codes;
            }
        }
    })
    .await
    .expect("SUBACK")
}

async fn next_packet<T>(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<V5Packet>,
    pick: impl FnMut(V5Packet) -> Option<T>,
) -> T {
    common::v5::next_packet(rx, Duration::from_secs(5), pick).await.expect("the awaited packet")
}

#[tokio::test]
async fn the_car2home_policy_refuses_what_is_not_yours_and_the_daemon_goes_on() {
    let daemon = Daemon::start("run", "access = \"car2home\"\n", common::FAST_SUPERVISOR);
    daemon.wait_broker().await;
    // An app sends commands and reads its replies; the processor answers.
    let app = app::publisher(&daemon, "app").await;
    let mut replies = app::listen(&daemon, "app-replies", "webos/+/error").await;
    wait_processor(&app, &mut replies).await;
    let mut state = app::listen(&daemon, "app-state", "smarthomed/+/availability").await;
    expect_message(&mut state, "smarthomed/processor/availability", "online").await;

    // Reading everything is refused: 0x80 on 3.1.1, 0x87 on 5.
    let codes = subscribe_311(daemon.mqtt_port, "nosy", "#").await;
    assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Failure]);
    let (nosy5, mut nosy5_rx, _) = common::v5::client(daemon.mqtt_port, "nosy5", true, None).await;
    nosy5.subscribe("webos/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce).await.unwrap();
    let codes = next_packet(&mut nosy5_rx, |packet| match packet {
        V5Packet::SubAck(ack) => Some(ack.return_codes),
        _ => None,
    })
    .await;
    assert_eq!(codes, vec![SubscribeReasonCode::NotAuthorized]);

    // Forged replies and availability are refused (PUBACK 0x87 on 5) and reach no one.
    let (client, eventloop) = connect(daemon.mqtt_port, "victim", None).await.unwrap();
    client.subscribe("webos/+/error", QoS::AtLeastOnce).await.unwrap();
    let mut victim = subscriber(client, eventloop, "webos/+/info").await;
    let qos = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;
    for topic in ["webos/android/info", "smarthomed/processor/availability", "webos/smarthome/info"] {
        nosy5.publish(topic, qos, false, "forged").await.unwrap();
        let reason = next_packet(&mut nosy5_rx, |packet| match packet {
            V5Packet::PubAck(ack) => Some(ack.reason),
            _ => None,
        })
        .await;
        assert_eq!(reason, PubAckReason::NotAuthorized, "{topic}");
    }
    // The old apps' own 9-digit controls still reach the ESP32, when they are controls.
    nosy5.publish("webos/smarthome/info", qos, false, "009060210").await.unwrap();
    let reason = next_packet(&mut nosy5_rx, |packet| match packet {
        V5Packet::PubAck(ack) => Some(ack.reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, PubAckReason::Success);
    // What was refused before this command's answer would have come before it.
    app::send(&app, "webos/server/info", r#"{"Producer":"android","command":"signin","UID":"fence-no-such-user"}"#)
        .await;
    let (mut control_seen, mut fence_seen) = (false, false);
    tokio::time::timeout(Duration::from_secs(10), async {
        while !(control_seen && fence_seen) {
            let (topic, payload, _) = victim.recv().await.expect("subscription");
            assert_ne!(payload, "forged", "a forged message reached {topic}");
            control_seen |= topic == "webos/smarthome/info" && payload == "009060210";
            fence_seen |= payload.contains("fence-no-such-user");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("control seen: {control_seen}, answer to the fence seen: {fence_seen}"));
    let log = daemon.log();
    assert!(log.contains("refused a publish") && log.contains("nosy5") && log.contains("127.0.0.1"), "{log}");
    assert!(log.contains("refused a subscription") && log.contains("nosy"), "{log}");
}

#[tokio::test]
async fn acl_rules_fill_in_the_user_and_come_before_the_policy() {
    let hash = smarthomed::password::hash("pw").unwrap();
    let broker = format!(
        "access = \"car2home\"\n\
         [[broker.users]]\nname = \"alice\"\npassword_hash = \"{hash}\"\n\
         [[broker.users]]\nname = \"bob\"\npassword_hash = \"{hash}\"\n\
         [[broker.acl]]\nwho = \"$accounts\"\ntopic = \"home/%u/#\"\naccess = \"readwrite\"\npermission = \"allow\"\n\
         [[broker.acl]]\nwho = \"bob\"\ntopic = \"#\"\naccess = \"read\"\npermission = \"allow\"\n"
    );
    let daemon = Daemon::start("broker", &broker, "");
    let port = daemon.mqtt_port;
    common::wait_for_async(Duration::from_secs(20), "the broker", || async move {
        connect(port, "wait", Some(("alice", "pw"))).await.ok()
    })
    .await;
    let (bob, bob_loop) = connect(port, "bob-reads-all", Some(("bob", "pw"))).await.unwrap();
    let mut everything = subscriber(bob, bob_loop, "#").await;
    let (alice, mut alice_loop) = connect(port, "alice", Some(("alice", "pw"))).await.unwrap();
    tokio::spawn(async move { while alice_loop.poll().await.is_ok() {} });
    alice.publish("home/bob/door", QoS::AtLeastOnce, false, "not hers").await.unwrap();
    alice.publish("home/alice/door", QoS::AtLeastOnce, false, "hers").await.unwrap();
    let (topic, payload, _) =
        tokio::time::timeout(Duration::from_secs(10), everything.recv()).await.expect("a message").expect("open");
    assert_eq!((topic.as_str(), payload.as_str()), ("home/alice/door", "hers"));
    assert!(daemon.log().contains("refused a publish"), "{}", daemon.log());
}
