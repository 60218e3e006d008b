//! An app's side of the processor: publish commands, listen for replies.

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use rumqttc::{AsyncClient, QoS};
use serde_json::{Value, json};

use super::{Daemon, connect, subscriber};

/// A client that publishes; its event loop runs in the background.
pub async fn publisher(daemon: &Daemon, id: &str) -> AsyncClient {
    let (client, mut eventloop) = connect(daemon.mqtt_port, id, None).await.unwrap();
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    client
}

pub async fn send(client: &AsyncClient, topic: &str, payload: impl Into<Vec<u8>>) {
    client.publish(topic, QoS::AtLeastOnce, false, payload).await.unwrap();
}

pub type Messages = tokio::sync::mpsc::UnboundedReceiver<(String, String, bool)>;

pub async fn listen(daemon: &Daemon, id: &str, filter: &str) -> Messages {
    let (client, eventloop) = connect(daemon.mqtt_port, id, None).await.unwrap();
    subscriber(client, eventloop, filter).await
}

/// The next message on `topic`, as JSON.
pub async fn next_json(messages: &mut Messages, topic: &str) -> Value {
    let found = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some((got, payload, _)) = messages.recv().await {
            if got == topic {
                return serde_json::from_str(&payload).unwrap_or_else(|_| panic!("not JSON: {payload}"));
            }
        }
        panic!("subscription ended");
    })
    .await;
    found.unwrap_or_else(|_| panic!("nothing on {topic} within 15 s"))
}

/// Waits until the processor is subscribed: a probe signin is answered. What is
/// published before a fresh processor's first subscription reaches no one, so the
/// probe is repeated.
pub async fn wait_processor(client: &AsyncClient, replies: &mut Messages) {
    let probe = r#"{"Producer":"android","command":"signin","UID":"probe-no-such-user"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        send(client, "webos/server/info", probe).await;
        let answered = tokio::time::timeout(Duration::from_millis(500), async {
            while let Some((topic, _, _)) = replies.recv().await {
                if topic == "webos/android/error" {
                    return;
                }
            }
        })
        .await;
        if answered.is_ok() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the processor never answered");
    }
    // Answers to repeated probes may still be on their way: let them pass.
    tokio::time::sleep(Duration::from_millis(200)).await;
    while replies.try_recv().is_ok() {}
}

/// A schedule document in the Android app's format: aircon on at 5 and the window open,
/// the light and the gas valve left alone; one-off on `date` ("YYYY.MM.DD").
pub fn android_schedule(title: &str, start: &str, date: &str) -> Value {
    json!({
        "title": title, "name": "test", "repeat": false, "modeNum": 0, "enabled": true,
        "startTime": start, "activeDate": date, "daysOfWeek": [false, false, false, false, false, false, false],
        "airconEnable": true, "airconWindPower": 5, "lightEnable": false, "lightBrightness": 0,
        "lightColor": 0, "lightMode": 0, "windowOpen": true, "gasValveEnable": false
    })
}

/// The first whole minute at least 15 s ahead (UTC), so that a schedule stored now is in
/// place before its minute begins.
pub fn next_schedulable_minute() -> DateTime<Utc> {
    let at = Utc::now() + chrono::Duration::seconds(75);
    at.with_second(0).and_then(|at| at.with_nanosecond(0)).expect("a whole minute")
}

/// The next control the appliance receives, which must come by 20 s after `at`.
pub async fn control_at(appliance: &mut Messages, at: DateTime<Utc>) -> String {
    let wait = (at - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(20);
    let (_, control, _) = tokio::time::timeout(wait, appliance.recv())
        .await
        .expect("no control at the scheduled minute")
        .expect("subscription ended");
    control
}
