//! The embedded broker keeps retained messages and persistent sessions under
//! `store.dir`: they survive a restart, and what the broker acknowledged reaches its
//! subscriber even when the broker crashed in between.

use crate::common;

use std::time::Duration;

use common::app::{self, wait_processor};
use common::{Daemon, connect, connect_with, expect_message, expect_messages, receiver, subscriber};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// A 3.1.1 client whose publishes' acknowledgements arrive on the returned receiver.
async fn acknowledged_publisher(port: u16, id: &str) -> (AsyncClient, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let (client, mut eventloop) = connect(port, id, None).await.unwrap();
    let (acked, acks) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::PubAck(_)) = event {
                let _ = acked.send(());
            }
        }
    });
    (client, acks)
}

async fn wait_acks(acks: &mut tokio::sync::mpsc::UnboundedReceiver<()>, count: usize) {
    tokio::time::timeout(Duration::from_secs(10), async {
        for _ in 0..count {
            acks.recv().await.expect("publisher connection");
        }
    })
    .await
    .expect("the broker acknowledged every publish");
}

#[tokio::test]
async fn retained_messages_and_persistent_sessions_survive_a_restart() {
    let mut daemon = Daemon::start("broker", "", "");
    daemon.wait_broker().await;
    let mut options = MqttOptions::new("keeper", "127.0.0.1", daemon.mqtt_port);
    options.set_clean_session(false);
    options.set_keep_alive(Duration::from_secs(5));
    let (keeper, mut keeper_loop) = connect_with(options.clone()).await.unwrap();
    keeper.subscribe("keep/#", QoS::AtLeastOnce).await.unwrap();
    while !matches!(keeper_loop.poll().await, Ok(Event::Incoming(Packet::SubAck(_)))) {}
    keeper.disconnect().await.unwrap();
    while keeper_loop.poll().await.is_ok() {}

    // Published while the keeper is away, then the broker restarts.
    let (publisher, mut acks) = acknowledged_publisher(daemon.mqtt_port, "keep-pub").await;
    publisher.publish("keep/retained", QoS::AtLeastOnce, true, "kept").await.unwrap();
    publisher.publish("keep/queued", QoS::AtLeastOnce, false, "queued").await.unwrap();
    wait_acks(&mut acks, 2).await;
    daemon.restart("broker").await;
    daemon.wait_broker().await;

    let (keeper, keeper_loop) = connect_with(options).await.unwrap();
    let mut kept = receiver(keeper, keeper_loop);
    expect_messages(&mut kept, &[("keep/queued", "queued"), ("keep/retained", "kept")]).await;
    let (late, late_loop) = connect(daemon.mqtt_port, "late", None).await.unwrap();
    let mut late = subscriber(late, late_loop, "keep/retained").await;
    assert!(expect_message(&mut late, "keep/retained", "kept").await, "delivered as retained");
}

#[tokio::test]
async fn no_acknowledged_command_is_lost_when_the_broker_crashes() {
    // The processor comes back 3 s after the broker, so the commands below are sent
    // while it is away.
    let extra = format!("{}[mqtt]\nreconnect_initial_ms = 3000\nreconnect_max_ms = 3000\n", common::FAST_SUPERVISOR);
    let daemon = Daemon::start("run", "", &extra);
    daemon.wait_broker().await;
    let probe = app::publisher(&daemon, "probe").await;
    let mut probe_replies = app::listen(&daemon, "probe-replies", "webos/android/+").await;
    wait_processor(&probe, &mut probe_replies).await;
    // The processor's session is on disk once the storage has written it.
    tokio::time::sleep(smarthomed::broker::engine::STORAGE_FLUSH * 2).await;

    let broker = daemon.children()["broker"];
    kill(Pid::from_raw(broker as i32), Signal::SIGKILL).unwrap();
    common::wait_for(Duration::from_secs(20), "a new broker", || {
        daemon.children().get("broker").filter(|pid| **pid != broker).copied()
    })
    .await;
    daemon.wait_broker().await;

    let mut replies = app::listen(&daemon, "crash-replies", "webos/android/+").await;
    let uids: Vec<String> = (0..20).map(|n| format!("crash-{n}-no-such-user")).collect();
    let _app = send_signins(daemon.mqtt_port, "crash-app", &uids).await;
    expect_answers(&mut replies, &uids, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn messages_a_client_had_not_acknowledged_are_delivered_again_when_it_returns() {
    let daemon = Daemon::start("broker", "", "");
    daemon.wait_broker().await;
    let mut options = MqttOptions::new("slow-worker", "127.0.0.1", daemon.mqtt_port);
    options.set_clean_session(false);
    options.set_keep_alive(Duration::from_secs(5));
    options.set_manual_acks(true);
    let (worker, mut worker_loop) = connect_with(options.clone()).await.unwrap();
    worker.subscribe("work/#", QoS::AtLeastOnce).await.unwrap();
    while !matches!(worker_loop.poll().await, Ok(Event::Incoming(Packet::SubAck(_)))) {}

    let (publisher, mut acks) = acknowledged_publisher(daemon.mqtt_port, "work-pub").await;
    for n in 0..20 {
        publisher.publish(format!("work/{n}"), QoS::AtLeastOnce, false, n.to_string()).await.unwrap();
    }
    wait_acks(&mut acks, 20).await;
    // The worker takes all 20, acknowledges the first 5, and dies.
    let mut taken = 0;
    while taken < 20 {
        if let Ok(Event::Incoming(Packet::Publish(publish))) = worker_loop.poll().await {
            if taken < 5 {
                worker.ack(&publish).await.unwrap();
            }
            taken += 1;
        }
    }
    drop((worker, worker_loop));

    let (worker, worker_loop) = connect_with(options).await.unwrap();
    // As the daemon's processes do, it subscribes again.
    worker.subscribe("work/#", QoS::AtLeastOnce).await.unwrap();
    let mut again = receiver(worker, worker_loop);
    let wanted: Vec<(String, String)> = (5..20).map(|n| (format!("work/{n}"), n.to_string())).collect();
    let wanted: Vec<(&str, &str)> = wanted.iter().map(|(t, p)| (t.as_str(), p.as_str())).collect();
    expect_messages(&mut again, &wanted).await;
}

/// Sends a signin per uid at QoS 1; returns once the broker acknowledged them all.
async fn send_signins(port: u16, client_id: &str, uids: &[String]) -> AsyncClient {
    let (app, mut acks) = acknowledged_publisher(port, client_id).await;
    for uid in uids {
        let command = format!(r#"{{"Producer":"android","command":"signin","UID":"{uid}"}}"#);
        app.publish("webos/server/info", QoS::AtLeastOnce, false, command).await.unwrap();
    }
    wait_acks(&mut acks, uids.len()).await;
    app
}

/// Waits until every uid is named by a reply.
async fn expect_answers(replies: &mut app::Messages, uids: &[String], timeout: Duration) {
    let mut unanswered: std::collections::HashSet<&String> = uids.iter().collect();
    tokio::time::timeout(timeout, async {
        while !unanswered.is_empty() {
            let (_, payload, _) = replies.recv().await.expect("replies");
            unanswered.retain(|uid| !payload.contains(uid.as_str()));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("acknowledged commands were lost: {unanswered:?}"));
}

#[tokio::test]
async fn on_a_fresh_install_a_command_sent_the_moment_the_port_opens_is_answered() {
    let daemon = Daemon::start("run", "", common::FAST_SUPERVISOR);
    // The processor has never run: its session does not exist yet. The broker holds
    // the app at the door until it does.
    let port = daemon.mqtt_port;
    common::wait_for(Duration::from_secs(20), "the broker's port", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .await;
    let at_the_door = common::wait_for_async(Duration::from_secs(20), "a CONNACK", || async move {
        connect(port, "first-replies", None).await.ok()
    })
    .await;
    let mut replies = subscriber(at_the_door.0, at_the_door.1, "webos/android/+").await;
    let uids = vec!["first-command-no-such-user".to_string()];
    let _app = send_signins(port, "first-app", &uids).await;
    expect_answers(&mut replies, &uids, Duration::from_secs(15)).await;
    assert!(daemon.log().contains("processor subscribed: letting every client in"), "{}", daemon.log());
}

#[tokio::test]
async fn no_acknowledged_command_is_lost_on_sigterm() {
    let mut daemon = Daemon::start("run", "", common::FAST_SUPERVISOR);
    daemon.wait_broker().await;
    // More than the processor's in-flight window (100): most still wait in its queue.
    let wanted = 500;
    let (app, mut acks) = acknowledged_publisher(daemon.mqtt_port, "sigterm-app").await;
    for n in 0..wanted {
        let command = format!(r#"{{"Producer":"android","command":"signup","UID":"sigterm-{n}","name":"n{n}"}}"#);
        app.publish("webos/server/info", QoS::AtLeastOnce, false, command).await.unwrap();
    }
    wait_acks(&mut acks, wanted).await;
    // Stopped the moment the last one is acknowledged: what the processor had not
    // taken on waits in its session, on disk, and is carried out after the start.
    daemon.restart("run").await;
    common::wait_for(Duration::from_secs(30), "every signup carried out", || {
        let log = daemon.log();
        let done: std::collections::HashSet<&str> = log
            .lines()
            .filter(|line| line.contains("signed up"))
            .filter_map(|line| line.split("uid=").nth(1)?.split_whitespace().next())
            .collect();
        (done.len() == wanted).then_some(())
    })
    .await;
}

/// An MQTT 5 client `id` with a session of an hour, subscribed to `<id>/inbox`, which
/// never acknowledges: of ten messages, two are in flight (the broker's window) and
/// eight wait in its queue when it leaves, ending its session (DISCONNECT with a
/// session expiry of 0) or not.
async fn fill_and_leave(port: u16, id: &str, end_session: bool) {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::{Connect, ConnectProperties, Filter, Packet, Subscribe};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let properties = ConnectProperties { session_expiry_interval: Some(3600), ..ConnectProperties::new() };
    let connect = Connect { keep_alive: 30, client_id: id.into(), clean_start: false, properties: Some(properties) };
    let inbox = format!("{id}/inbox");
    let mut subscribe = Subscribe::new(Filter::new(inbox.as_str(), QoS5::AtLeastOnce), None);
    subscribe.pkid = 1;
    let mut outgoing = bytes::BytesMut::new();
    connect.write(&None, &None, &mut outgoing).expect("CONNECT");
    subscribe.write(&mut outgoing).expect("SUBSCRIBE");
    stream.write_all(&outgoing).await.expect("send");
    let mut incoming = bytes::BytesMut::new();
    let mut next_packet = async || loop {
        match Packet::read(&mut incoming, None) {
            Ok(packet) => return packet,
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {
                let read = tokio::time::timeout(Duration::from_secs(5), stream.read_buf(&mut incoming)).await;
                assert!(read.expect("a packet within 5 s").expect("read") > 0, "{id}'s connection closed");
            }
            Err(err) => panic!("{id} read a malformed packet: {err}"),
        }
    };
    while !matches!(next_packet().await, Packet::SubAck(_)) {}
    let (publisher, mut acks) = acknowledged_publisher(port, &format!("{id}-sender")).await;
    for n in 0..10 {
        publisher.publish(inbox.as_str(), QoS::AtLeastOnce, false, format!("m{n}")).await.unwrap();
    }
    wait_acks(&mut acks, 10).await;
    // Both in flight: the other eight wait in the queue.
    let mut in_flight = 0;
    while in_flight < 2 {
        in_flight += usize::from(matches!(next_packet().await, Packet::Publish(_)));
    }
    // DISCONNECT: reason 0, properties (5 bytes): Session Expiry Interval (0x11) = 0.
    let disconnect: &[u8] = if end_session { &[0xe0, 0x07, 0x00, 0x05, 0x11, 0, 0, 0, 0] } else { &[0xe0, 0x00] };
    stream.write_all(disconnect).await.expect("send");
}

#[tokio::test]
async fn an_mqtt5_session_keeps_its_queue_over_a_restart_unless_its_client_ended_it() {
    use rumqttc::v5::mqttbytes::v5::Packet;
    // The queue keeper's work is logged at debug level.
    let logging = common::debug_logging("smarthomed::broker");
    let env = [("RUST_LOG", logging.as_str())];
    let mut daemon = Daemon::start_with_env("run", "max_inflight_messages = 2\n", common::FAST_SUPERVISOR, &env);
    daemon.wait_broker().await;
    fill_and_leave(daemon.mqtt_port, "keeper", false).await;
    fill_and_leave(daemon.mqtt_port, "leaver", true).await;
    common::wait_for(Duration::from_secs(10), "the keeper's queue stored", || {
        daemon.log().contains(r#"queued messages stored with the session client_id="keeper""#).then_some(())
    })
    .await;

    daemon.restart("run").await;
    daemon.wait_broker().await;
    let (_keeper, mut packets, session_present) =
        common::v5::client(daemon.mqtt_port, "keeper", false, Some(3600)).await;
    assert!(session_present, "the keeper's session was lost");
    let mut payloads = std::collections::HashSet::new();
    while payloads.len() < 10 {
        let next = common::v5::next_packet(&mut packets, Duration::from_secs(5), |packet| match packet {
            Packet::Publish(publish) => Some(String::from_utf8_lossy(&publish.payload).into_owned()),
            _ => None,
        });
        payloads.insert(next.await.unwrap_or_else(|| panic!("the keeper got only {payloads:?}")));
    }
    let (_leaver, mut packets, session_present) =
        common::v5::client(daemon.mqtt_port, "leaver", false, Some(3600)).await;
    assert!(!session_present, "the ended session came back");
    let old = common::v5::next_packet(&mut packets, Duration::from_secs(1), |packet| match packet {
        Packet::Publish(publish) => Some(publish),
        _ => None,
    })
    .await;
    assert!(old.is_none(), "a message of the ended session was delivered: {old:?}");
    assert!(
        !daemon.log().contains(r#"queued messages stored with the session client_id="leaver""#),
        "the ended session's queue was stored"
    );
}
