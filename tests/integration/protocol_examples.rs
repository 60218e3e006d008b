//! Replays every example of protocol/examples/ against the real daemon, in file
//! order, and checks that exactly the documented replies come back: the protocol
//! documentation cannot drift from the behaviour.

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Daemon, FAST_SUPERVISOR, connect, subscriber};
use rumqttc::QoS;
use serde_json::Value;

struct Message {
    topic: String,
    payload: Value,
}

fn examples() -> Vec<(String, Message, Vec<Message>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("protocol/examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("protocol/examples")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "examples missing in {}", dir.display());
    files
        .into_iter()
        .map(|path| {
            let example: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            assert!(example["description"].is_string(), "{} lacks a description", path.display());
            let message = |value: &Value| Message {
                topic: value["topic"].as_str().expect("topic").to_owned(),
                payload: value["payload"].clone(),
            };
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let replies = example["replies"].as_array().expect("replies").iter().map(message).collect();
            (name, message(&example["request"]), replies)
        })
        .collect()
}

fn wire(payload: &Value) -> String {
    match payload {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn parse_wire(expected: &Value, got: &str) -> Value {
    match expected {
        Value::String(_) => Value::String(got.to_owned()),
        _ => serde_json::from_str(got).unwrap_or_else(|_| Value::String(got.to_owned())),
    }
}

#[tokio::test]
async fn every_documented_exchange_happens_as_documented() {
    let facer = r#"[processor]
facer_command = ["echo", "eAMHGLmiBGO76PIQ54O9CpsqTb23"]
"#;
    let daemon = Daemon::start("run", "", &format!("{FAST_SUPERVISOR}{facer}"));
    daemon.wait_children(&["broker", "processor", "syncer"]).await;
    daemon.wait_broker().await;
    let (client, eventloop) = connect(daemon.mqtt_port, "observer", None).await.unwrap();
    let mut messages = subscriber(client, eventloop, "#").await;
    let (app, mut app_loop) = connect(daemon.mqtt_port, "app", None).await.unwrap();
    tokio::spawn(async move { while app_loop.poll().await.is_ok() {} });

    common::app::wait_processor(&app, &mut messages).await;

    for (name, request, replies) in examples() {
        app.publish(&request.topic, QoS::AtLeastOnce, false, wire(&request.payload)).await.unwrap();
        for expected in &replies {
            let got = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    let (topic, payload, _) = messages.recv().await.expect("subscription ended");
                    if topic == expected.topic {
                        return payload;
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{name}: nothing on {} within 10 s", expected.topic));
            assert_eq!(parse_wire(&expected.payload, &got), expected.payload, "{name}: on {}", expected.topic);
        }
    }
}
