//! What MQTT asks of a broker, checked on the embedded one (`smarthomed broker`) with
//! real clients: delivered QoS, MQTT 5 session expiry, no local, retain handling, the
//! client's maximum packet size and receive maximum, topic aliases (refused), a
//! subscriber that falls behind, and Mosquitto's `$SYS` topics.

use crate::common;

use std::time::Duration;

use common::{Daemon, connect, connect_with, receiver, subscriber};
use rumqttc::v5::mqttbytes::v5::{Filter, Packet as V5Packet, RetainForwardRule};
use rumqttc::{Event, Packet, QoS};

/// Every publish a 3.1.1 client receives, as (topic, payload, QoS).
fn deliveries(
    client: rumqttc::AsyncClient,
    mut eventloop: rumqttc::EventLoop,
) -> tokio::sync::mpsc::UnboundedReceiver<(String, String, QoS)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _client = client;
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::Publish(publish)) = event {
                let payload = String::from_utf8_lossy(&publish.payload).into_owned();
                if tx.send((publish.topic, payload, publish.qos)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

async fn next_on(rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String, QoS)>, topic: &str) -> QoS {
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some((got, _, qos)) = rx.recv().await {
            if got == topic {
                return qos;
            }
        }
        panic!("the subscriber's connection ended");
    })
    .await;
    found.unwrap_or_else(|_| panic!("nothing on {topic} within 10 s"))
}

#[tokio::test]
async fn delivered_qos_is_the_lower_of_published_and_granted() {
    let daemon = Daemon::start("broker", "", "");
    daemon.wait_broker().await;
    let (granted_1, loop_1) = connect(daemon.mqtt_port, "granted-1", None).await.unwrap();
    granted_1.subscribe("qos/#", QoS::AtLeastOnce).await.unwrap();
    let mut at_1 = deliveries(granted_1, loop_1);
    let (granted_0, loop_0) = connect(daemon.mqtt_port, "granted-0", None).await.unwrap();
    granted_0.subscribe("qos/#", QoS::AtMostOnce).await.unwrap();
    let mut at_0 = deliveries(granted_0, loop_0);
    let publisher = common::app::publisher(&daemon, "qos-pub").await;
    // Both subscriptions are in place once a probe reaches both.
    loop {
        publisher.publish("qos/probe", QoS::AtLeastOnce, false, "").await.unwrap();
        let both = tokio::time::timeout(Duration::from_millis(500), async {
            next_on(&mut at_1, "qos/probe").await;
            next_on(&mut at_0, "qos/probe").await;
        })
        .await;
        if both.is_ok() {
            break;
        }
    }

    publisher.publish("qos/zero", QoS::AtMostOnce, false, "0").await.unwrap();
    publisher.publish("qos/one", QoS::AtLeastOnce, false, "1").await.unwrap();
    assert_eq!(next_on(&mut at_1, "qos/zero").await, QoS::AtMostOnce);
    assert_eq!(next_on(&mut at_1, "qos/one").await, QoS::AtLeastOnce);
    assert_eq!(next_on(&mut at_0, "qos/zero").await, QoS::AtMostOnce);
    assert_eq!(next_on(&mut at_0, "qos/one").await, QoS::AtMostOnce);
}

/// The next publish's (topic, payload, retain); None when nothing comes within `wait`.
async fn next_publish(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<V5Packet>,
    wait: Duration,
) -> Option<(String, String, bool)> {
    next_whole_publish(rx, wait).await.map(|publish| {
        (
            String::from_utf8_lossy(&publish.topic).into_owned(),
            String::from_utf8_lossy(&publish.payload).into_owned(),
            publish.retain,
        )
    })
}

/// The next publish, whole; None when nothing comes within `wait`.
async fn next_whole_publish(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<V5Packet>,
    wait: Duration,
) -> Option<rumqttc::v5::mqttbytes::v5::Publish> {
    common::v5::next_packet(rx, wait, |packet| match packet {
        V5Packet::Publish(publish) => Some(publish),
        _ => None,
    })
    .await
}

async fn suback(rx: &mut tokio::sync::mpsc::UnboundedReceiver<V5Packet>) {
    let acked = common::v5::next_packet(rx, Duration::from_secs(5), |packet| {
        matches!(packet, V5Packet::SubAck(_)).then_some(())
    });
    acked.await.expect("SUBACK");
}

async fn puback(rx: &mut tokio::sync::mpsc::UnboundedReceiver<V5Packet>) {
    let acked = common::v5::next_packet(rx, Duration::from_secs(5), |packet| {
        matches!(packet, V5Packet::PubAck(_)).then_some(())
    });
    acked.await.expect("PUBACK");
}

#[tokio::test]
async fn mqtt_5_session_expiry_is_honoured() {
    let daemon = Daemon::start("broker", "", "");
    daemon.wait_broker().await;
    let port = daemon.mqtt_port;
    let qos = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;
    // A clean start with an expiry keeps the session after the client leaves.
    let (keeper, mut keeper_rx, _) = common::v5::client(port, "v5-keeper", true, Some(60)).await;
    keeper.subscribe("expiry/#", qos).await.unwrap();
    suback(&mut keeper_rx).await;
    // Expiry 0: the session ends with the connection.
    let (leaver, mut leaver_rx, _) = common::v5::client(port, "v5-leaver", true, Some(0)).await;
    leaver.subscribe("expiry/#", qos).await.unwrap();
    suback(&mut leaver_rx).await;
    keeper.disconnect().await.unwrap();
    leaver.disconnect().await.unwrap();
    while keeper_rx.recv().await.is_some() {}
    while leaver_rx.recv().await.is_some() {}

    let (publisher, mut publisher_rx, _) = common::v5::client(port, "v5-expiry-pub", true, None).await;
    publisher.publish("expiry/news", qos, false, "while away").await.unwrap();
    puback(&mut publisher_rx).await;

    let (_keeper, mut keeper_rx, present) = common::v5::client(port, "v5-keeper", false, Some(60)).await;
    assert!(present, "the session with an expiry was kept");
    let queued = next_publish(&mut keeper_rx, Duration::from_secs(10)).await;
    assert_eq!(queued.map(|(topic, payload, _)| (topic, payload)), Some(("expiry/news".into(), "while away".into())));
    let (_leaver, _, present) = common::v5::client(port, "v5-leaver", false, Some(0)).await;
    assert!(!present, "the session with expiry 0 ended with its connection");
}

#[tokio::test]
async fn mqtt_5_no_local_and_retain_handling_are_honoured() {
    let daemon = Daemon::start("broker", "", "");
    daemon.wait_broker().await;
    let port = daemon.mqtt_port;
    let qos = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;
    let (publisher, mut publisher_rx, _) = common::v5::client(port, "v5-retainer", true, None).await;
    publisher.publish("handling/state", qos, true, "retained").await.unwrap();
    puback(&mut publisher_rx).await;

    let (client, mut rx, _) = common::v5::client(port, "v5-handling", true, None).await;
    let mut never_retained = Filter::new("handling/state", qos);
    never_retained.retain_forward_rule = RetainForwardRule::Never;
    let mut no_local = Filter::new("handling/echo", qos);
    no_local.nolocal = true;
    let mut as_published = Filter::new("handling/kept", qos);
    as_published.preserve_retain = true;
    let filters =
        [never_retained, no_local, as_published, Filter::new("handling/live", qos), Filter::new("handling/done", qos)];
    client.subscribe_many(filters).await.unwrap();
    suback(&mut rx).await;
    client.publish("handling/echo", qos, false, "mine").await.unwrap();
    // Retained as published, or as a live message (retain off) without the option.
    publisher.publish("handling/kept", qos, true, "flagged").await.unwrap();
    publisher.publish("handling/live", qos, true, "plain").await.unwrap();
    publisher.publish("handling/done", qos, false, "end").await.unwrap();
    // In order: neither the retained message nor the client's own echo comes first.
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next_publish(&mut rx, Duration::from_secs(10)).await.expect("a publish"));
    }
    assert_eq!(
        got,
        vec![
            ("handling/kept".into(), "flagged".into(), true),
            ("handling/live".into(), "plain".into(), false),
            ("handling/done".into(), "end".into(), false)
        ]
    );

    // Without the options, both arrive.
    let (plain, mut plain_rx, _) = common::v5::client(port, "v5-plain", true, None).await;
    plain.subscribe("handling/state", qos).await.unwrap();
    let retained = next_publish(&mut plain_rx, Duration::from_secs(10)).await;
    assert_eq!(retained, Some(("handling/state".into(), "retained".into(), true)));
}

#[tokio::test]
async fn mqtt_5_a_client_gets_no_packet_over_its_maximum_packet_size() {
    let daemon = Daemon::start("broker", "", "");
    daemon.wait_broker().await;
    let qos = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;
    // The client itself ends the connection on a larger packet, so the small message
    // arrives only if the large one was held back.
    let mut options = common::v5::options(daemon.mqtt_port, "v5-small");
    options.set_max_packet_size(Some(256));
    let (small, mut small_rx, _) = common::v5::client_with(options).await;
    small.subscribe("size/#", qos).await.unwrap();
    suback(&mut small_rx).await;
    let (large, mut large_rx, _) = common::v5::client(daemon.mqtt_port, "v5-large", true, None).await;
    large.subscribe("size/#", qos).await.unwrap();
    suback(&mut large_rx).await;

    let publisher = common::app::publisher(&daemon, "size-pub").await;
    publisher.publish("size/large", QoS::AtLeastOnce, false, vec![b'x'; 1024]).await.unwrap();
    publisher.publish("size/small", QoS::AtLeastOnce, false, "fits").await.unwrap();
    let wait = Duration::from_secs(10);
    assert_eq!(next_publish(&mut small_rx, wait).await, Some(("size/small".into(), "fits".into(), false)));
    // A client without the limit gets both.
    assert_eq!(next_publish(&mut large_rx, wait).await.map(|(topic, ..)| topic), Some("size/large".into()));
    assert_eq!(next_publish(&mut large_rx, wait).await.map(|(topic, ..)| topic), Some("size/small".into()));
}

#[tokio::test]
async fn mqtt_5_a_client_gets_no_more_unacknowledged_messages_than_its_receive_maximum() {
    let daemon = Daemon::start("broker", "", "");
    daemon.wait_broker().await;
    let qos = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;
    let mut options = common::v5::options(daemon.mqtt_port, "v5-receive-max");
    options.set_receive_maximum(Some(2));
    options.set_manual_acks(true);
    let (client, mut rx, _) = common::v5::client_with(options).await;
    client.subscribe("window/#", qos).await.unwrap();
    suback(&mut rx).await;
    let publisher = common::app::publisher(&daemon, "window-pub").await;
    for n in 0..6 {
        publisher.publish(format!("window/{n}"), QoS::AtLeastOnce, false, n.to_string()).await.unwrap();
    }

    let mut window = Vec::new();
    while let Some(publish) = next_whole_publish(&mut rx, Duration::from_secs(2)).await {
        window.push(publish);
    }
    let topics: Vec<_> = window.iter().map(|publish| String::from_utf8_lossy(&publish.topic).into_owned()).collect();
    assert_eq!(topics, ["window/0", "window/1"], "two in flight, no more");
    // Each acknowledgement lets one more come, in order.
    for n in 2..6 {
        client.ack(&window.remove(0)).await.unwrap();
        let publish = next_whole_publish(&mut rx, Duration::from_secs(10)).await.expect("the next message");
        assert_eq!(String::from_utf8_lossy(&publish.topic), format!("window/{n}"));
        window.push(publish);
    }
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_loses_qos_0_but_never_goes_deaf() {
    let daemon = Daemon::start("broker", "max_queued_messages = 100\n", "");
    daemon.wait_broker().await;
    let (slow, mut slow_loop) = connect(daemon.mqtt_port, "slow", None).await.unwrap();
    slow.subscribe("burst/#", QoS::AtMostOnce).await.unwrap();
    while !matches!(slow_loop.poll().await, Ok(Event::Incoming(Packet::SubAck(_)))) {}

    // The slow subscriber reads nothing while 5,000 messages of 1 KiB go out: fifty
    // times its queue, and more than the socket buffers hold.
    let (publisher, mut publisher_loop) = connect(daemon.mqtt_port, "burst-pub", None).await.unwrap();
    let burst = tokio::spawn(async move {
        for n in 0..5_000 {
            publisher.publish(format!("burst/{n}"), QoS::AtMostOnce, false, vec![b'x'; 1024]).await.unwrap();
        }
        publisher.publish("burst/last", QoS::AtLeastOnce, false, "end").await.unwrap();
        publisher
    });
    let published = async {
        loop {
            if let Ok(Event::Incoming(Packet::PubAck(_))) = publisher_loop.poll().await {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), published).await.expect("the burst was acknowledged");
    let publisher = burst.await.unwrap();
    tokio::spawn(async move { while publisher_loop.poll().await.is_ok() {} });

    // Then it reads again: what it gets may be short of the burst, but it still hears.
    let mut messages = deliveries(slow, slow_loop);
    publisher.publish("burst/after", QoS::AtLeastOnce, false, "still here").await.unwrap();
    next_on(&mut messages, "burst/after").await;
}

#[tokio::test]
async fn an_offline_sessions_queue_is_bounded_and_its_drops_are_counted_and_said_once() {
    smarthomed::tls::use_ring();
    let metrics_port = common::free_port();
    let extra = format!("{}[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n", common::FAST_SUPERVISOR);
    let daemon = Daemon::start("run", "max_queued_messages = 100\nmax_inflight_messages = 10\n", &extra);
    daemon.wait_broker().await;
    let mut options = rumqttc::MqttOptions::new("away", "127.0.0.1", daemon.mqtt_port);
    options.set_clean_session(false);
    let (away, mut eventloop) = connect_with(options.clone()).await.unwrap();
    away.subscribe("away/inbox", QoS::AtLeastOnce).await.unwrap();
    while !matches!(eventloop.poll().await, Ok(Event::Incoming(Packet::SubAck(_)))) {}
    away.disconnect().await.unwrap();
    while !matches!(eventloop.poll().await, Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_)) {}
    drop(eventloop);
    let publisher = common::app::publisher(&daemon, "away-sender").await;
    // Three times its queue while it is away.
    for n in 0..300 {
        publisher.publish("away/inbox", QoS::AtLeastOnce, false, n.to_string()).await.unwrap();
    }
    common::wait_for(Duration::from_secs(10), "the drops said", || {
        daemon.log().lines().any(|line| line.contains("a client does not keep up")).then_some(())
    })
    .await;
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    common::wait_for_async(Duration::from_secs(15), "the drops counted", || async {
        let body = reqwest::get(&metrics).await.ok()?.text().await.ok()?;
        let series = "smarthomed_broker_messages_dropped_total{reason=\"queue_full\"} ";
        let dropped: u64 = body.lines().find_map(|line| line.strip_prefix(series)?.parse().ok())?;
        (dropped >= 100).then_some(())
    })
    .await;

    let (away, eventloop) = connect_with(options).await.unwrap();
    let mut messages = receiver(away, eventloop);
    let mut received = Vec::new();
    while received.last().map(String::as_str) != Some("299") {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.recv()).await;
        let (_, payload, _) = next.expect("the newest messages").expect("connection");
        received.push(payload);
    }
    // Bounded, though not to exactly 100: the session storage's copy of what arrived
    // while it was away (at most 100 too) comes back beside the queue, and what was in
    // flight (at most 10) with them (README, "The broker", Flow).
    let distinct: std::collections::HashSet<&String> = received.iter().collect();
    assert_eq!(distinct.len(), received.len(), "a message came twice: {received:?}");
    assert!(received.len() <= 210, "{} of 300 messages kept for a queue of 100", received.len());
    let said: Vec<String> =
        daemon.log().lines().filter(|line| line.contains("a client does not keep up")).map(str::to_owned).collect();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains("away"), "{said:?}");
}

#[tokio::test]
async fn sys_topics_report_clients_messages_uptime_and_version() {
    let daemon = Daemon::start("broker", "sys_interval_secs = 1\n", "");
    daemon.wait_broker().await;
    let (client, eventloop) = connect(daemon.mqtt_port, "sys-watch", None).await.unwrap();
    let mut sys = subscriber(client, eventloop, "$SYS/broker/#").await;
    let publisher = common::app::publisher(&daemon, "sys-pub").await;
    for _ in 0..3 {
        publisher.publish("sys/count", QoS::AtLeastOnce, false, "x").await.unwrap();
    }
    let mut seen = std::collections::HashMap::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        while let Some((topic, payload, _)) = sys.recv().await {
            seen.insert(topic, payload);
            let count = |topic: &str| seen.get(topic).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
            // The $SYS messages this subscriber got count as sent in the next reading.
            if seen.len() >= 7 && count("$SYS/broker/messages/received") >= 3 && count("$SYS/broker/messages/sent") >= 1
            {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the $SYS topics did not all come, with 3 messages received: {seen:?}"));
    let number = |topic: &str| seen[topic].parse::<u64>().unwrap_or_else(|_| panic!("{topic}: {seen:?}"));
    assert!(number("$SYS/broker/clients/connected") >= 2, "{seen:?}");
    assert!(number("$SYS/broker/bytes/received") > 0 && number("$SYS/broker/bytes/sent") > 0, "{seen:?}");
    assert!(seen["$SYS/broker/uptime"].ends_with(" seconds"), "{seen:?}");
    assert!(seen["$SYS/broker/version"].starts_with("smarthomed "), "{seen:?}");

    // `#` does not reach them, and no client may publish them.
    let (client, eventloop) = connect(daemon.mqtt_port, "everything", None).await.unwrap();
    let mut everything = subscriber(client, eventloop, "#").await;
    publisher.publish("$SYS/broker/version", QoS::AtLeastOnce, false, "forged").await.unwrap();
    publisher.publish("sys/fence", QoS::AtLeastOnce, false, "after").await.unwrap();
    loop {
        let (topic, _, _) = everything.recv().await.expect("subscription");
        assert!(!topic.starts_with('$'), "`#` matched {topic}");
        if topic == "sys/fence" {
            break;
        }
    }
    for _ in 0..2 {
        let version = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let (topic, payload, _) = sys.recv().await.expect("subscription");
                if topic == "$SYS/broker/version" {
                    return payload;
                }
            }
        })
        .await
        .expect("$SYS/broker/version again");
        assert_ne!(version, "forged");
    }
}

#[tokio::test]
async fn a_client_without_an_id_gets_one_from_the_broker() {
    let daemon = Daemon::start("broker", "", "");
    daemon.wait_broker().await;
    let mut options = rumqttc::v5::MqttOptions::new("", "127.0.0.1", daemon.mqtt_port);
    options.set_clean_start(true);
    let assigned =
        common::v5::connack_properties(options).await.and_then(|properties| properties.assigned_client_identifier);
    assert!(assigned.is_some_and(|id| !id.is_empty()), "no client id assigned");
    // MQTT 3.1.1: an empty id with a clean session is taken.
    assert!(connect(daemon.mqtt_port, "", None).await.is_ok());
}

#[tokio::test]
async fn a_shared_subscription_gives_each_message_to_one_member_of_its_group() {
    let daemon = Daemon::start("broker", "", "");
    daemon.wait_broker().await;
    let (client, eventloop) = connect(daemon.mqtt_port, "worker-1", None).await.unwrap();
    let mut first = subscriber(client, eventloop, "$share/workers/jobs/#").await;
    let (client, eventloop) = connect(daemon.mqtt_port, "worker-2", None).await.unwrap();
    let mut second = subscriber(client, eventloop, "$share/workers/jobs/#").await;
    let (client, eventloop) = connect(daemon.mqtt_port, "watcher", None).await.unwrap();
    let mut watcher = subscriber(client, eventloop, "jobs/#").await;
    let publisher = common::app::publisher(&daemon, "dispatcher").await;
    const JOBS: usize = 10;
    for job in 0..JOBS {
        publisher.publish("jobs/new", QoS::AtLeastOnce, false, job.to_string()).await.unwrap();
    }
    // The plain subscriber sees every job; the group sees each once, spread over its members.
    for _ in 0..JOBS {
        tokio::time::timeout(Duration::from_secs(5), watcher.recv()).await.expect("a job").expect("subscription");
    }
    let mut taken = Vec::new();
    let mut per_member = [0usize; 2];
    while taken.len() < JOBS {
        let (index, delivery) = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::select! {
                delivery = first.recv() => (0, delivery),
                delivery = second.recv() => (1, delivery),
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the group got {} of {JOBS} jobs", taken.len()));
        let (_, payload, _) = delivery.expect("subscription");
        per_member[index] += 1;
        taken.push(payload);
    }
    taken.sort_by_key(|job| job.parse::<usize>().unwrap_or(usize::MAX));
    assert_eq!(taken, (0..JOBS).map(|job| job.to_string()).collect::<Vec<_>>());
    assert!(per_member.iter().all(|&count| count > 0), "one member got them all: {per_member:?}");
    for member in [&mut first, &mut second] {
        let extra = tokio::time::timeout(Duration::from_millis(300), member.recv()).await;
        assert!(extra.is_err(), "a job was given twice: {extra:?}");
    }
}

#[tokio::test]
async fn mqtt_5_a_topic_alias_gets_a_disconnect_with_0x94_and_goes_nowhere() {
    let daemon = Daemon::start("broker", "", "");
    daemon.wait_broker().await;
    let port = daemon.mqtt_port;
    // The broker offers no topic aliases: its CONNACK carries no Topic Alias Maximum.
    let offered = common::v5::connack_properties(common::v5::options(port, "alias-asker"))
        .await
        .and_then(|properties| properties.topic_alias_max);
    assert_eq!(offered, None);

    let (client, eventloop) = connect(port, "alias-watcher", None).await.unwrap();
    let mut watcher = subscriber(client, eventloop, "alias/#").await;
    // Alias 0 is never allowed; any other is over the maximum the broker gave (0).
    for alias in [0u16, 1] {
        let connect = common::raw_mqtt::connect_packet(5, &format!("alias-{alias}"), None);
        let (mut stream, connack) = common::raw_mqtt::connack(port, &connect).await.expect("CONNACK");
        assert_eq!(connack[3], 0x00, "refused: {connack:?}");
        let [high, low] = alias.to_be_bytes();
        // PUBLISH, QoS 1, to alias/x, packet id 1, properties: the topic alias.
        let mut body = vec![0x00, 0x07];
        body.extend_from_slice(b"alias/x");
        body.extend_from_slice(&[0x00, 0x01, 0x03, 0x23, high, low]);
        body.extend_from_slice(b"aliased");
        let mut publish = vec![0x32, u8::try_from(body.len()).unwrap()];
        publish.extend(body);
        tokio::io::AsyncWriteExt::write_all(&mut stream, &publish).await.unwrap();
        let reply = common::raw_mqtt::next_packet(&mut stream).await;
        assert_eq!(reply.as_deref(), Some(&[0xe0, 0x01, 0x94][..]), "alias {alias}");
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::io::AsyncReadExt::read(&mut stream, &mut [0u8; 16]).await
        })
        .await
        .expect("the connection stayed open after the DISCONNECT");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    }
    // Neither message reached anyone: the first to arrive is one sent after them.
    let publisher = common::app::publisher(&daemon, "alias-marker").await;
    publisher.publish("alias/marker", QoS::AtLeastOnce, false, "after").await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), watcher.recv()).await.expect("the marker");
    assert_eq!(first.map(|(topic, _, _)| topic).as_deref(), Some("alias/marker"));
    common::wait_for(Duration::from_secs(10), "the refusal's log line", || {
        daemon.log().contains("client_id=\"alias-0\"").then_some(())
    })
    .await;
}
