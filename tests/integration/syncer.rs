//! The syncer through the real binary on the embedded tree: the weather from a local
//! OpenWeatherMap stand-in reaches the processor, the recommendation comes back into
//! the tree, tree values reach the processor, and weather failures are survived and
//! alerted once per outage.

use crate::common;

use std::time::Duration;

use axum::http::StatusCode;
use common::app::{listen, publisher, send, wait_processor};
use common::slack::SlackServer;
use common::weather::WeatherServer;
use common::{Daemon, FAST_SUPERVISOR, expect_message, wait_for};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use smarthomed::store::RealtimeTree;
use smarthomed::store::embedded::EmbeddedTree;

const ROLES: [&str; 3] = ["broker", "processor", "syncer"];

/// The daemon with alerts to `slack` and the weather of `city` from `weather`, with `key`.
fn start_with_weather(slack: &SlackServer, weather: &WeatherServer, city: &str, key: &str) -> Daemon {
    let config = format!("{FAST_SUPERVISOR}{}{}", slack.config(), weather.config(city));
    Daemon::start_with_keys("run", "", &config, &[("weather_api_key", key)])
}

async fn next_payload(messages: &mut common::app::Messages, topic: &str) -> String {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let (got, payload, _) = messages.recv().await.expect("subscription ended");
            if got == topic {
                return payload;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("nothing on {topic} within 15 s"))
}

#[tokio::test]
async fn the_weather_reaches_the_processor_and_the_recommendation_reaches_the_tree() {
    let weather = WeatherServer::start().await;
    let mut daemon = Daemon::start_with_keys(
        "run",
        "",
        &format!("{FAST_SUPERVISOR}{}", weather.config("Seoul")),
        &[("weather_api_key", &weather.key)],
    );
    daemon.wait_children(&ROLES).await;
    daemon.wait_broker().await;

    let mut sensors = listen(&daemon, "sensors", "smarthomed/sensor/openweather").await;
    let stored: Value =
        serde_json::from_str(&next_payload(&mut sensors, "smarthomed/sensor/openweather").await).unwrap();
    assert_eq!(stored["temp"], "19.8");
    assert_eq!(stored["description"], "실 비");
    assert_eq!(stored["icon"], "10n");
    assert_eq!(stored["air_level"], 2);
    assert!(stored["update"].as_str().is_some_and(|update| update.len() == 26), "{stored}");

    let mut replies = listen(&daemon, "app", "webos/android/+").await;
    let mut recommendation = listen(&daemon, "watcher", "smarthomed/recommendation").await;
    let device = publisher(&daemon, "PSW_Arduino").await;
    wait_processor(&device, &mut replies).await;
    send(&device, "data/smarthome", "000000010").await;
    expect_message(&mut recommendation, "smarthomed/recommendation", "비 소식이 있으니 창문을 닫아주세요.").await;
    // The syncer writes it back.
    wait_for(Duration::from_secs(10), "the notification written", || {
        let log = daemon.log();
        log.lines().any(|line| line.contains("notification written") && line.contains("비 소식이")).then_some(())
    })
    .await;

    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)).await.code(), Some(0));
    assert!(!daemon.log().contains(&weather.key), "the API key reached the log");
    let tree = EmbeddedTree::open(&daemon.dir.path().join("data")).unwrap();
    assert_eq!(tree.get("server/notification").await.unwrap(), Some(json!("비 소식이 있으니 창문을 닫아주세요.")));
    assert_eq!(tree.get("sensor/openweather/icon").await.unwrap(), Some(json!("10n")));
}

#[tokio::test]
async fn tree_values_reach_the_processor_as_retained_messages() {
    let dir = tempfile::tempdir().unwrap();
    {
        let tree = EmbeddedTree::open(&dir.path().join("data")).unwrap();
        tree.set("smarthome/status", json!("000000011")).await.unwrap();
        tree.set("sensor/hometemp", json!({"temp": 29.2, "humi": 60, "rain": "1"})).await.unwrap();
    }
    let mut daemon = Daemon::start_in(dir, "run", FAST_SUPERVISOR);
    daemon.wait_children(&ROLES).await;
    daemon.wait_broker().await;

    let mut watcher = listen(&daemon, "watcher", "#").await;
    let mut seen = std::collections::HashMap::new();
    let wanted = [
        ("data/smarthome", "000000011"),
        ("smarthomed/appliance/state", "000000011"),
        ("smarthomed/recommendation", "가스벨브가 열려있어요."),
    ];
    tokio::time::timeout(Duration::from_secs(15), async {
        while !(wanted.iter().all(|(topic, payload)| seen.get(*topic) == Some(&payload.to_string()))
            && seen.contains_key("smarthomed/sensor/hometemp"))
        {
            let (topic, payload, _) = watcher.recv().await.unwrap();
            seen.insert(topic, payload);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("got only {seen:#?}"));
    let hometemp: Value = serde_json::from_str(&seen["smarthomed/sensor/hometemp"]).unwrap();
    assert_eq!(hometemp["rain"], "1");
    // The processor may say "none" first, until it has read the state.
    wait_for(Duration::from_secs(10), "the notification written", || {
        let log = daemon.log();
        log.lines().any(|line| line.contains("notification written") && line.contains("가스벨브")).then_some(())
    })
    .await;

    daemon.signal(Signal::SIGTERM);
    daemon.wait_exit(Duration::from_secs(20)).await;
    let tree = EmbeddedTree::open(&daemon.dir.path().join("data")).unwrap();
    assert_eq!(tree.get("server/notification").await.unwrap(), Some(json!("가스벨브가 열려있어요.")));
}

#[tokio::test]
async fn weather_failures_back_off_and_alert_once_per_outage() {
    let weather = WeatherServer::start().await;
    for status in [StatusCode::INTERNAL_SERVER_ERROR, StatusCode::SERVICE_UNAVAILABLE, StatusCode::TOO_MANY_REQUESTS] {
        weather.fail_next(status);
    }
    let slack = SlackServer::start().await;
    let daemon = start_with_weather(&slack, &weather, "Seoul", &weather.key);
    let syncer = daemon.wait_children(&ROLES).await["syncer"];
    wait_for(Duration::from_secs(20), "the weather to come back", || {
        (!slack.texts_containing("the weather is back").is_empty()).then_some(())
    })
    .await;
    assert_eq!(slack.texts_containing("the weather cannot be updated").len(), 1, "{:#?}", slack.posted());
    assert!(weather.requests() >= 5, "three failures, then current and air");
    assert_eq!(daemon.children()["syncer"], syncer, "the syncer survived the failures");
}

#[tokio::test]
async fn a_refused_key_or_unknown_city_is_alerted_without_the_key() {
    let weather = WeatherServer::start().await;
    let slack = SlackServer::start().await;
    let wrong_key = "owm-wrong-key-must-not-leak";
    let daemon = start_with_weather(&slack, &weather, "Seoul", wrong_key);
    daemon.wait_children(&ROLES).await;
    let alert = wait_for(Duration::from_secs(20), "the refused-key alert", || {
        slack.texts_containing("the weather cannot be updated").into_iter().next()
    })
    .await;
    assert!(alert.contains("API key was refused"), "{alert}");

    let city = start_with_weather(&slack, &weather, "Atlantis", &weather.key);
    city.wait_children(&ROLES).await;
    wait_for(Duration::from_secs(20), "the unknown-city alert", || {
        slack.texts_containing("Atlantis").into_iter().next()
    })
    .await;
    let posted: String = slack.posted().into_iter().map(|posted| posted.text).collect();
    for log in [daemon.log(), city.log(), posted] {
        assert!(!log.contains(wrong_key) && !log.contains(&weather.key), "an API key leaked");
    }
}

#[tokio::test]
async fn the_key_leaks_neither_through_error_bodies_nor_through_redirects() {
    use common::weather::Fault;
    let weather = WeatherServer::start().await;
    let elsewhere = WeatherServer::start().await;
    weather.fault_next(Fault::EchoUrl);
    weather.fault_next(Fault::Redirect(format!("http://localhost:{}", elsewhere.addr.port())));
    let slack = SlackServer::start().await;
    let daemon = start_with_weather(&slack, &weather, "Seoul", &weather.key);
    daemon.wait_children(&ROLES).await;
    wait_for(Duration::from_secs(20), "the weather to come back", || {
        (!slack.texts_containing("the weather is back").is_empty()).then_some(())
    })
    .await;
    assert_eq!(elsewhere.requests(), 0, "a redirect carried the key to another origin");
    let alert = slack.texts_containing("the weather cannot be updated").concat();
    assert!(alert.contains("upstream failed for /data/2.5/weather?"), "{alert}");
    let posted: String = slack.posted().into_iter().map(|posted| posted.text).collect();
    assert!(daemon.log().contains("HTTP 302"), "the refused redirect is logged");
    for text in [daemon.log(), posted] {
        assert!(!text.contains(&weather.key), "the API key leaked:\n{text}");
    }
}
