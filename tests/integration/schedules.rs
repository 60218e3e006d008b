//! Schedules and modes through the real binary: edited over MQTT, and a schedule for
//! the next minute sends its control once and, being one-off, is gone afterwards.

use crate::common;

use std::time::Duration;

use chrono::{Timelike, Utc};
use common::app::{ShiftedClock, android_schedule, listen, next_json, publisher, send, wait_processor};
use common::slack::SlackServer;
use common::{Daemon, FAST_SUPERVISOR, expect_message};
use serde_json::json;
use smarthomed::store::DocumentStore;
use smarthomed::store::embedded::EmbeddedDocuments;

/// A daemon whose schedule clock reaches a whole minute 10 s after the start.
async fn start() -> (Daemon, ShiftedClock) {
    let clock = ShiftedClock::minute_in(Duration::from_secs(10));
    let (offset_var, offset) = clock.env();
    let daemon = Daemon::start_with_env(
        "run",
        "",
        &format!("{FAST_SUPERVISOR}[schedule]\ntimezone = \"UTC\"\n"),
        &[(offset_var, &offset)],
    );
    daemon.wait_children(&["broker", "processor", "syncer"]).await;
    daemon.wait_broker().await;
    (daemon, clock)
}

#[tokio::test]
async fn a_one_off_schedule_for_the_next_minute_runs_once_and_is_deleted() {
    let (daemon, clock) = start().await;
    let mut replies = listen(&daemon, "app", "webos/android/+").await;
    let mut appliance = listen(&daemon, "PSW_Arduino", "webos/smarthome/info").await;
    let mut state = listen(&daemon, "state-watcher", "smarthomed/appliance/state").await;
    let app = publisher(&daemon, "app-pub").await;
    wait_processor(&app, &mut replies).await;
    send(&app, "data/smarthome", "000000000").await;
    expect_message(&mut state, "smarthomed/appliance/state", "000000000").await;

    // At least 15 s ahead, so the schedule is stored before its minute begins.
    let at = clock.next_schedulable_minute();
    let document = android_schedule("test-once", &at.format("%H%M").to_string(), &at.format("%Y.%m.%d").to_string());
    send(
        &app,
        "webos/server/info",
        json!({"Producer": "android", "command": "schedule_add", "schedule": document}).to_string(),
    )
    .await;
    let added = next_json(&mut replies, "webos/android/info").await;
    assert_eq!(added["command"], "schedule_added", "{added}");
    assert_eq!(added["schedule"], document);

    // Aircon on at 5 and window open; the light and the gas valve are already off.
    assert_eq!(clock.control_at(&mut appliance, at).await, "015200012");
    assert!(clock.now() >= at, "ran before its time");
    assert!(tokio::time::timeout(Duration::from_secs(3), appliance.recv()).await.is_err(), "the schedule ran twice");

    send(&app, "webos/server/info", r#"{"Producer":"android","command":"schedule_list"}"#).await;
    let list = next_json(&mut replies, "webos/android/info").await;
    assert_eq!(list["command"], "schedule_list");
    assert_eq!(list["schedules"], json!([]), "the one-off schedule is still there");

    // Wake-ups with nothing due (a schedule added and deleted) write nothing: where the
    // engine checked is stored when something ran.
    let data = daemon.dir.path().join("data");
    let checked = || {
        let state = smarthomed::store::embedded::read_collection(&data, "smarthomed_state").unwrap();
        state.into_iter().find(|(id, _)| id == "schedule").map(|(_, document)| document["checked_until"].clone())
    };
    let before = checked();
    assert!(before.is_some(), "the run left no checked_until");
    let later = clock.next_schedulable_minute() + chrono::Duration::hours(3);
    let far = android_schedule("far", &later.format("%H%M").to_string(), &later.format("%Y.%m.%d").to_string());
    send(
        &app,
        "webos/server/info",
        json!({"Producer": "android", "command": "schedule_add", "schedule": far}).to_string(),
    )
    .await;
    assert_eq!(next_json(&mut replies, "webos/android/info").await["command"], "schedule_added");
    send(&app, "webos/server/info", r#"{"Producer":"android","command":"schedule_delete","title":"far"}"#).await;
    next_json(&mut replies, "webos/android/info").await;
    send(&app, "webos/server/info", r#"{"Producer":"android","command":"schedule_list"}"#).await;
    assert_eq!(next_json(&mut replies, "webos/android/info").await["schedules"], json!([]));
    assert_eq!(checked(), before, "a wake-up with nothing due was written");
}

#[tokio::test]
async fn schedules_and_modes_are_edited_over_mqtt() {
    let (daemon, _clock) = start().await;
    let mut replies = listen(&daemon, "app", "webos/car/+").await;
    let app = publisher(&daemon, "app-pub").await;
    let probe = r#"{"Producer":"car","command":"schedule_list"}"#;
    loop {
        send(&app, "webos/server/info", probe).await;
        if tokio::time::timeout(Duration::from_millis(500), next_json(&mut replies, "webos/car/info")).await.is_ok() {
            break;
        }
    }

    let later = android_schedule("weekly", "0700", "2030.01.01");
    let mut repeating = later.clone();
    repeating["repeat"] = json!(true);
    repeating.as_object_mut().unwrap().remove("activeDate");
    repeating["daysOfWeek"] = json!([false, true, true, true, true, true, false]);
    let command = |name: &str, key: &str, document: &serde_json::Value| {
        json!({"Producer": "car", "command": name, key: document}).to_string()
    };

    send(&app, "webos/server/info", command("schedule_add", "schedule", &repeating)).await;
    assert_eq!(next_json(&mut replies, "webos/car/info").await["command"], "schedule_added");
    send(&app, "webos/server/info", command("schedule_add", "schedule", &repeating)).await;
    assert_eq!(next_json(&mut replies, "webos/car/error").await["code"], "already_exists");

    let mut changed = repeating.clone();
    changed["startTime"] = json!("0715");
    send(&app, "webos/server/info", command("schedule_update", "schedule", &changed)).await;
    assert_eq!(next_json(&mut replies, "webos/car/info").await["schedule"]["startTime"], "0715");
    let mut broken = changed.clone();
    broken["startTime"] = json!("7:15");
    send(&app, "webos/server/info", command("schedule_update", "schedule", &broken)).await;
    let error = next_json(&mut replies, "webos/car/error").await;
    assert_eq!(error["code"], "invalid_schedule");
    assert!(error["message"].as_str().unwrap().contains("startTime"), "{error}");

    send(&app, "webos/server/info", r#"{"Producer":"car","command":"schedule_list"}"#).await;
    assert_eq!(next_json(&mut replies, "webos/car/info").await["schedules"], json!([changed]));
    send(&app, "webos/server/info", r#"{"Producer":"car","command":"schedule_delete","title":"weekly"}"#).await;
    assert_eq!(next_json(&mut replies, "webos/car/info").await["command"], "schedule_deleted");
    send(&app, "webos/server/info", r#"{"Producer":"car","command":"schedule_delete","title":"weekly"}"#).await;
    assert_eq!(next_json(&mut replies, "webos/car/error").await["code"], "not_found");

    let mode = json!({
        "modeName": "외출", "modeNum": 3, "airconEnable": false, "airconWindPower": 0,
        "lightEnable": true, "lightBrightness": 7, "lightColor": 1, "lightMode": 2,
        "windowOpen": false, "gasValveEnable": false
    });
    send(&app, "webos/server/info", command("mode_add", "mode", &mode)).await;
    assert_eq!(next_json(&mut replies, "webos/car/info").await["mode"], mode);
    let mut dimmer = mode.clone();
    dimmer["lightBrightness"] = json!(2);
    send(&app, "webos/server/info", command("mode_update", "mode", &dimmer)).await;
    assert_eq!(next_json(&mut replies, "webos/car/info").await["command"], "mode_updated");
    send(&app, "webos/server/info", r#"{"Producer":"car","command":"mode_list"}"#).await;
    assert_eq!(next_json(&mut replies, "webos/car/info").await["modes"], json!([dimmer]));
    send(&app, "webos/server/info", r#"{"Producer":"car","command":"mode_delete","modeNum":3}"#).await;
    assert_eq!(
        next_json(&mut replies, "webos/car/info").await,
        json!({"command": "mode_deleted", "modeNum": 3, "Producer": "server"})
    );
    send(&app, "webos/server/info", command("mode_update", "mode", &dimmer)).await;
    assert_eq!(next_json(&mut replies, "webos/car/error").await["code"], "not_found");
}

/// A repeating every-day schedule starting at `at` (UTC), as the Android app writes it.
fn daily(title: &str, at: chrono::DateTime<Utc>, mode_num: u8) -> serde_json::Map<String, serde_json::Value> {
    let mut document = android_schedule(title, &at.format("%H%M").to_string(), "");
    document["repeat"] = json!(true);
    document["modeNum"] = json!(mode_num);
    document["daysOfWeek"] = json!([true, true, true, true, true, true, true]);
    document.as_object_mut().unwrap().remove("activeDate");
    document.as_object().cloned().unwrap()
}

#[tokio::test]
async fn runs_missed_while_down_are_caught_up_within_grace_and_reported_beyond_it() {
    let now = Utc::now().with_second(0).unwrap().with_nanosecond(0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedDocuments::open(&dir.path().join("data")).unwrap();
        let put = |collection: &'static str, id: &'static str, document: serde_json::Map<String, serde_json::Value>| {
            let store = store.clone();
            async move { store.set(collection, id, document).await.unwrap() }
        };
        put("schedule_mode", "too-old", daily("too-old", now - chrono::Duration::minutes(20), 0)).await;
        put("schedule_mode", "recent", daily("recent", now - chrono::Duration::minutes(2), 0)).await;
        put("schedule_mode", "no-mode", daily("no-mode", now - chrono::Duration::minutes(3), 7)).await;
        let mut broken = daily("broken", now, 0);
        broken.insert("startTime".into(), json!("25:00"));
        put("schedule_mode", "broken", broken).await;
        let checked = json!({"checked_until": (now - chrono::Duration::minutes(30)).to_rfc3339()});
        put("smarthomed_state", "schedule", checked.as_object().cloned().unwrap()).await;
        put("smarthomed_state", "appliance", json!({"status": "000000000"}).as_object().cloned().unwrap()).await;
    }
    let slack = SlackServer::start().await;
    let config = format!("{FAST_SUPERVISOR}{}[schedule]\ntimezone = \"UTC\"\ngrace_secs = 300\n", slack.config());
    let mut daemon = Daemon::start_in(dir, "run", &config);
    daemon.wait_children(&["broker", "processor", "syncer"]).await;

    // The catch-up happens as the processor starts, before any test client could
    // subscribe: it is observed through the alerts and the store.
    let alerts = common::wait_for(Duration::from_secs(20), "the schedule alerts", || {
        let texts: Vec<String> = slack.posted().into_iter().map(|posted| posted.text).collect();
        let find = |code: &str| texts.iter().find(|text| text.contains(code)).cloned();
        Some([find("schedule_missed")?, find("schedule_late")?, find("missing_mode")?, find("invalid_document")?])
    })
    .await;
    let [missed, _late, missing_mode, invalid] = alerts;
    assert!(missed.contains("too-old"), "{missed}");
    assert!(missing_mode.contains("no-mode") && missing_mode.contains("mode 7"), "{missing_mode}");
    assert!(invalid.contains("schedule_mode/broken: startTime"), "{invalid}");
    // Alerts of one kind coalesce (the late alert may be the other schedule's); the log
    // has each report, and the recent run's control.
    common::wait_for(Duration::from_secs(20), "the recent run's late report and control in the log", || {
        let log = daemon.log();
        let recent_late = log.lines().any(|line| line.contains("schedule recent of") && line.contains("s late"));
        (recent_late && log.contains("control=\"015200012\"")).then_some(())
    })
    .await;

    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(
        slack.texts_containing("invalid_document").len(),
        1,
        "the malformed document was reported more than once"
    );
    let store = EmbeddedDocuments::open(&daemon.dir.path().join("data")).unwrap();
    let runs: Vec<String> =
        store.list("smarthomed_schedule_runs").await.unwrap().into_iter().map(|(id, _)| id).collect();
    assert_eq!(runs, ["no-mode", "recent", "too-old"], "every due occurrence is recorded as handled");
}

#[tokio::test]
async fn a_run_is_not_repeated_when_the_processor_restarts_right_after_it() {
    let (daemon, clock) = start().await;
    let mut replies = listen(&daemon, "app", "webos/android/+").await;
    let mut appliance = listen(&daemon, "PSW_Arduino", "webos/smarthome/info").await;
    let app = publisher(&daemon, "app-pub").await;
    wait_processor(&app, &mut replies).await;

    let at = clock.next_schedulable_minute();
    let document = serde_json::Value::Object(daily("every-day", at, 0));
    send(
        &app,
        "webos/server/info",
        json!({"Producer": "android", "command": "schedule_add", "schedule": document}).to_string(),
    )
    .await;
    assert_eq!(next_json(&mut replies, "webos/android/info").await["command"], "schedule_added");
    clock.control_at(&mut appliance, at).await;

    let processor = daemon.children()["processor"];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(processor as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    common::wait_for(Duration::from_secs(15), "a new processor", || {
        daemon.children().get("processor").copied().filter(|pid| *pid != processor)
    })
    .await;
    wait_processor(&app, &mut replies).await;
    assert!(
        tokio::time::timeout(Duration::from_secs(3), appliance.recv()).await.is_err(),
        "the run was repeated after the restart"
    );
}
