//! The daemon with `store.backend = "firebase"`, end to end: the processor on the real
//! Firestore emulator, the syncer on the Realtime Database stand-in with a service
//! account whose tokens come from the token endpoint stand-in, the weather from the
//! OpenWeatherMap stand-in, alerts to the Slack stand-in.

use crate::common;

use std::time::Duration;

use axum::http::StatusCode;
use chrono::Utc;
use common::app::{ShiftedClock, android_schedule, listen, next_json, publisher, send, wait_processor};
use common::firebase::Firebase;
use common::proxy::CuttableProxy;
use common::slack::SlackServer;
use common::weather::WeatherServer;
use common::{Daemon, FAST_SUPERVISOR, expect_message, wait_for, wait_for_async};
use nix::sys::signal::Signal;
use serde_json::json;

const ROLES: [&str; 3] = ["broker", "processor", "syncer"];

async fn start(firebase: &Firebase, extra: &str) -> Daemon {
    start_on(firebase, extra, &[]).await
}

async fn start_on(firebase: &Firebase, extra: &str, env: &[(&str, &str)]) -> Daemon {
    let daemon = Daemon::start_with_env(
        "run",
        "",
        &format!("{}{FAST_SUPERVISOR}[schedule]\ntimezone = \"UTC\"\n{extra}", firebase.config()),
        env,
    );
    daemon.wait_children(&ROLES).await;
    daemon.wait_broker().await;
    daemon
}

#[tokio::test]
async fn a_user_written_by_another_firestore_client_signs_in() {
    let firebase = Firebase::start().await;
    firebase.write("user_account", "eAMHGLmiBGO76PIQ54O9CpsqTb23", &json!({"name": "홍길동"})).await;
    // The emulator named the way Google's tools name it, by the environment.
    let config = firebase.config().replace(&format!("firestore_emulator_host = \"{}\"\n", firebase.emulator), "");
    assert!(!config.contains("firestore_emulator_host"));
    let daemon = Daemon::start_with_env(
        "run",
        "",
        &format!("{config}{FAST_SUPERVISOR}"),
        &[("FIRESTORE_EMULATOR_HOST", firebase.emulator)],
    );
    daemon.wait_children(&ROLES).await;
    daemon.wait_broker().await;
    let mut replies = listen(&daemon, "app", "webos/+/+").await;
    let app = publisher(&daemon, "app-pub").await;
    wait_processor(&app, &mut replies).await;

    send(
        &app,
        "webos/server/info",
        r#"{"Producer":"android","command":"signin","UID":"eAMHGLmiBGO76PIQ54O9CpsqTb23"}"#,
    )
    .await;
    let reply = next_json(&mut replies, "webos/android/info").await;
    assert_eq!(reply, json!({"name": "홍길동", "Producer": "server", "command": "return_name"}));

    send(&app, "webos/server/info", r#"{"Producer":"car","command":"signup","UID":"new-uid","name":"Kim"}"#).await;
    wait_for_async(Duration::from_secs(10), "the signup in Firestore", || async {
        firebase.list("user_account").await.into_iter().find(|(id, _)| id == "new-uid")
    })
    .await;
    assert_eq!(firebase.list("user_account").await.len(), 2);
}

#[tokio::test]
async fn a_schedule_written_by_the_android_app_fires_and_alarms_land_in_firestore() {
    let firebase = Firebase::start().await;
    let clock = ShiftedClock::minute_in(Duration::from_secs(10));
    let (offset_var, offset) = clock.env();
    let daemon = start_on(&firebase, "", &[(offset_var, &offset)]).await;
    let mut replies = listen(&daemon, "app", "webos/android/+").await;
    let mut appliance = listen(&daemon, "PSW_Arduino", "webos/smarthome/info").await;
    let mut state = listen(&daemon, "state-watcher", "smarthomed/appliance/state").await;
    let device = publisher(&daemon, "device").await;
    wait_processor(&device, &mut replies).await;
    send(&device, "data/smarthome", "000000000").await;
    expect_message(&mut state, "smarthomed/appliance/state", "000000000").await;

    // As the Android app writes it: the document id is the title.
    let at = clock.next_schedulable_minute();
    let schedule = android_schedule("아침", &at.format("%H%M").to_string(), &at.format("%Y.%m.%d").to_string());
    firebase.write("schedule_mode", "아침", &schedule).await;

    assert_eq!(clock.control_at(&mut appliance, at).await, "015200012");
    assert!(clock.now() >= at, "ran before its time");
    wait_for_async(Duration::from_secs(10), "the one-off schedule to be deleted", || async {
        firebase.list("schedule_mode").await.is_empty().then_some(())
    })
    .await;

    // The appliance reports its new state; the processor's alarms go to Firestore.
    send(&device, "data/smarthome", "015000010").await;
    let alarms = wait_for_async(Duration::from_secs(10), "the alarms in appliance_alarm", || async {
        let alarms = firebase.list("appliance_alarm").await;
        (alarms.len() == 2).then_some(alarms)
    })
    .await;
    let mut informs: Vec<&str> = alarms.iter().map(|(_, alarm)| alarm["inform"].as_str().unwrap()).collect();
    informs.sort();
    assert_eq!(informs, ["에어컨이 켜졌어요.", "창문이 열렸어요."]);
    for (id, alarm) in &alarms {
        let seconds: i64 = id.split('-').next().unwrap().parse().unwrap_or_else(|_| panic!("id {id}"));
        let age = 10_000_000_000 - seconds - Utc::now().timestamp();
        assert!(age.abs() < 120, "id {id} is not 10000000000 minus the Unix time");
        assert_eq!(alarm["date"].as_str().unwrap().split('.').count(), 6, "{alarm}");
        assert!(alarm["icon"].as_str().unwrap().ends_with("_icon"), "{alarm}");
    }
}

#[tokio::test]
async fn the_realtime_database_reaches_the_processor_and_gets_the_recommendation_and_weather() {
    let firebase = Firebase::start().await;
    let weather = WeatherServer::start().await;
    firebase.rtdb.put("sensor/hometemp", json!({"temp": 29.2, "humi": 60, "rain": "0"}));
    let daemon = start(&firebase, &format!("{}api_key = \"{}\"\n", weather.config("Seoul"), weather.key)).await;

    let mut sensors = listen(&daemon, "sensors", "smarthomed/sensor/#").await;
    let mut recommendation = listen(&daemon, "watcher", "smarthomed/recommendation").await;
    expect_message(&mut sensors, "smarthomed/sensor/hometemp", r#"{"humi":60,"rain":"0","temp":29.2}"#).await;
    let weather_in_tree =
        wait_for(Duration::from_secs(15), "the weather in the database", || firebase.rtdb.value("sensor/openweather"))
            .await;
    assert_eq!(weather_in_tree["icon"], "10n");
    assert_eq!(weather_in_tree["temp"], "19.8");

    // The ESP32 writes the state to the database; the processor hears of it through the
    // syncer and its recommendation goes back to the database.
    firebase.rtdb.put("smarthome/status", json!("000000010"));
    expect_message(&mut recommendation, "smarthomed/recommendation", "비 소식이 있으니 창문을 닫아주세요.").await;
    wait_for(Duration::from_secs(10), "the notification in the database", || {
        (firebase.rtdb.value("server/notification") == Some(json!("비 소식이 있으니 창문을 닫아주세요."))).then_some(())
    })
    .await;
    assert!(!daemon.log().contains(&weather.key), "the API key reached the log");
    assert!(!daemon.log().contains(&firebase.rtdb.token), "an access token reached the log");
}

#[tokio::test]
async fn stream_troubles_are_survived_and_reported() {
    let firebase = Firebase::start().await;
    let slack = SlackServer::start().await;
    firebase.rtdb.put("smarthome/status", json!("000000000"));
    let slack_config = slack.config().replace("coalesce_window_secs = 600", "coalesce_window_secs = 1");
    let mut daemon = start(&firebase, &slack_config).await;
    let mut state = listen(&daemon, "state-watcher", "data/smarthome").await;
    expect_message(&mut state, "data/smarthome", "000000000").await;
    let minted = firebase.tokens.minted();

    for (trouble, status, reported) in [
        ("drop", "100000000", "the database closed the stream"),
        ("401", "200000000", "401"),
        ("503", "300000000", "503"),
        ("malformed", "400000000", "malformed put event"),
    ] {
        let opened = firebase.rtdb.streams_opened();
        match trouble {
            // One refusal for each of the syncer's three streams.
            "401" => firebase.rtdb.refuse_next(StatusCode::UNAUTHORIZED, 3),
            "503" => firebase.rtdb.refuse_next(StatusCode::SERVICE_UNAVAILABLE, 3),
            _ => {}
        }
        match trouble {
            "drop" => firebase.rtdb.drop_streams(),
            "malformed" => firebase.rtdb.push_raw("event: put\ndata: {not json\n\n"),
            // The routine hourly reconnect with a new token (not an alert), which then
            // meets the refusal.
            _ => firebase.rtdb.push_raw("event: auth_revoked\ndata: credential is no longer valid\n\n"),
        }
        // Written while the stream is down: it still reaches the processor.
        firebase.rtdb.put("smarthome/status", json!(status));
        expect_message(&mut state, "data/smarthome", status).await;
        wait_for(Duration::from_secs(15), "the reconnect", || (firebase.rtdb.streams_opened() > opened).then_some(()))
            .await;
        wait_for(Duration::from_secs(15), &format!("the alert about {trouble}"), || {
            slack
                .texts_containing("lost the Realtime Database stream of")
                .into_iter()
                .find(|text| text.contains(reported))
        })
        .await;
    }
    wait_for(Duration::from_secs(15), "the recovery alert", || {
        slack.texts_containing("the Realtime Database stream of /smarthome/status is back").first().cloned()
    })
    .await;
    assert!(firebase.tokens.minted() > minted, "the refused token was not replaced");
    assert_eq!(daemon.children().len(), 3, "a child died");
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)).await.code(), Some(0));
}

#[tokio::test]
async fn the_processor_waits_for_an_unreachable_firestore_and_alerts_once() {
    let firebase = Firebase::start().await;
    let slack = SlackServer::start().await;
    // A network that accepts connections and then drops them.
    let route = CuttableProxy::start(firebase.emulator).await;
    route.hold();
    let config = firebase.config().replace(firebase.emulator, &route.host);
    let daemon = Daemon::start("run", "", &format!("{config}{FAST_SUPERVISOR}{}", slack.config()));
    daemon.wait_broker().await;
    wait_for(Duration::from_secs(15), "the alert", || {
        slack.texts_containing("cannot connect to Firestore").first().cloned()
    })
    .await;
    // Attempts go on after the alert; none of them alerts again.
    let refused = route.refused();
    wait_for(Duration::from_secs(15), "two more attempts", || (route.refused() >= refused + 2).then_some(())).await;
    assert_eq!(slack.texts_containing("cannot connect to Firestore").len(), 1, "alerted once per outage");
    let processor = daemon.children()["processor"];

    // The network comes up: the same processor connects and serves.
    route.resume();
    firebase.write("user_account", "uid-1", &json!({"name": "Kim"})).await;
    let mut replies = listen(&daemon, "app", "webos/+/+").await;
    let app = publisher(&daemon, "app-pub").await;
    wait_processor(&app, &mut replies).await;
    send(&app, "webos/server/info", r#"{"Producer":"car","command":"signin","UID":"uid-1"}"#).await;
    assert_eq!(next_json(&mut replies, "webos/car/info").await["name"], "Kim");
    wait_for(Duration::from_secs(15), "the recovery alert", || {
        slack.texts_containing("Firestore is reachable again").first().cloned()
    })
    .await;
    assert_eq!(daemon.children()["processor"], processor, "the processor was restarted instead of waiting");
}

#[tokio::test]
async fn commands_waiting_behind_a_stalled_store_leave_handlers_for_the_rest() {
    let firebase = Firebase::start().await;
    let route = CuttableProxy::start(firebase.emulator).await;
    let config =
        firebase.config().replace(firebase.emulator, &route.host).replace("timeout_secs = 5", "timeout_secs = 120");
    let processor = "[processor]\nmax_concurrent_handlers = 2\nhandler_timeout_ms = 120000\n";
    let daemon = Daemon::start("run", "", &format!("{config}{FAST_SUPERVISOR}{processor}"));
    daemon.wait_children(&ROLES).await;
    daemon.wait_broker().await;
    let mut replies = listen(&daemon, "app", "webos/#").await;
    let app = publisher(&daemon, "app-pub").await;
    wait_processor(&app, &mut replies).await;

    // The store stops answering while a burst of commands on one user arrives: the
    // first waits for the store, the rest wait for it, holding no handler.
    route.freeze();
    for n in 0..4 {
        let signup = json!({"Producer": "android", "command": "signup", "UID": "stalled", "name": n.to_string()});
        send(&app, "webos/server/info", signup.to_string()).await;
    }
    send(&app, "webos/server/info", r#"{"Producer":"android","command":"control","control":"009060210"}"#).await;
    expect_message(&mut replies, "webos/smarthome/info", "009060210").await;

    // Once the store answers again, the burst completes in order.
    route.thaw();
    let signin = r#"{"Producer":"android","command":"signin","UID":"stalled"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        send(&app, "webos/server/info", signin).await;
        let reply = next_json(&mut replies, "webos/android/info").await;
        if reply["name"] == "3" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the burst did not complete: {reply}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
