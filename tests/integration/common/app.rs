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

/// Waits until the processor is subscribed: a probe signin is answered. On an external
/// broker, what is published before a fresh processor's first subscription reaches no
/// one (the embedded broker holds the public until then), so the probe is repeated, each time with its own UID, which the answer names; answers that
/// already arrived are then passed over.
pub async fn wait_processor(client: &AsyncClient, replies: &mut Messages) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for attempt in 0.. {
        let uid = format!("probe-{attempt}-no-such-user");
        let probe = format!(r#"{{"Producer":"android","command":"signin","UID":"{uid}"}}"#);
        send(client, "webos/server/info", probe).await;
        let answered = tokio::time::timeout(Duration::from_millis(500), async {
            while let Some((topic, payload, _)) = replies.recv().await {
                if topic == "webos/android/error" && payload.contains(&uid) {
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

/// The daemon's schedule clock, shifted (`SMARTHOMED_CLOCK_OFFSET_MS`) so that a whole
/// minute of its time comes a few seconds after the test has set a schedule up, instead
/// of up to a real minute later.
#[derive(Clone, Copy)]
pub struct ShiftedClock {
    offset: chrono::TimeDelta,
}

impl ShiftedClock {
    /// A clock on which a whole minute begins `lead` from now.
    pub fn minute_in(lead: Duration) -> Self {
        let real = Utc::now();
        let minute = (real + chrono::TimeDelta::minutes(1))
            .with_second(0)
            .and_then(|at| at.with_nanosecond(0))
            .expect("a whole minute");
        let lead = chrono::TimeDelta::from_std(lead).expect("lead");
        Self { offset: minute - (real + lead) }
    }

    /// The environment that puts the daemon on this clock.
    pub fn env(&self) -> (&'static str, String) {
        (smarthomed::schedule::clock::OFFSET_ENV, self.offset.num_milliseconds().to_string())
    }

    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset
    }

    /// The first whole minute at least 5 s ahead on this clock, so that a schedule
    /// stored now is in place before its minute begins.
    pub fn next_schedulable_minute(&self) -> DateTime<Utc> {
        let at = self.now() + chrono::TimeDelta::seconds(65);
        at.with_second(0).and_then(|at| at.with_nanosecond(0)).expect("a whole minute")
    }
    /// The next control the appliance receives, which must come by 20 s after `at`.
    pub async fn control_at(&self, appliance: &mut Messages, at: DateTime<Utc>) -> String {
        let wait = (at - self.now()).to_std().unwrap_or_default() + Duration::from_secs(20);
        let (_, control, _) = tokio::time::timeout(wait, appliance.recv())
            .await
            .expect("no control at the scheduled minute")
            .expect("subscription ended");
        control
    }
}
