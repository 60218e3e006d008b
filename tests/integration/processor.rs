//! The command processor through the real binary and the embedded broker: the old
//! command and reply shapes, appliance controls and states, alarms and
//! recommendations, bad input, and nothing lost across a processor restart.

use crate::common;

use std::time::Duration;

use common::app::{listen, next_json, publisher, send, wait_processor};
use common::{Daemon, FAST_SUPERVISOR, connect, expect_message, expect_messages, subscriber, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use smarthomed::store::DocumentStore;
use smarthomed::store::embedded::EmbeddedDocuments;

const ROLES: [&str; 3] = ["broker", "processor", "syncer"];

async fn start(extra: &str) -> Daemon {
    start_with_broker("", extra).await
}

async fn start_with_broker(broker: &str, extra: &str) -> Daemon {
    let daemon = Daemon::start("run", broker, &format!("{FAST_SUPERVISOR}{extra}"));
    daemon.wait_children(&ROLES).await;
    daemon.wait_broker().await;
    daemon
}

#[tokio::test]
async fn signup_then_signin_answers_in_the_old_shape() {
    let daemon = start("").await;
    let mut replies = listen(&daemon, "app", "webos/+/+").await;
    let app = publisher(&daemon, "app-pub").await;
    wait_processor(&app, &mut replies).await;

    for producer in ["android", "car"] {
        let uid = format!("eAMHGLmiBGO76PIQ54O9Cp-{producer}");
        send(
            &app,
            "webos/server/info",
            json!({"Producer": producer, "command": "signup", "UID": uid, "name": "Hong-Gil-Dong"}).to_string(),
        )
        .await;
        send(&app, "webos/server/info", json!({"Producer": producer, "command": "signin", "UID": uid}).to_string())
            .await;
        let reply = next_json(&mut replies, &format!("webos/{producer}/info")).await;
        assert_eq!(reply, json!({"name": "Hong-Gil-Dong", "Producer": "server", "command": "return_name"}));
    }

    send(&app, "webos/server/info", r#"{"Producer":"car","command":"signin","UID":"nobody"}"#).await;
    let error = next_json(&mut replies, "webos/car/error").await;
    assert_eq!(error["Producer"], "server");
    assert_eq!(error["command"], "error");
    assert_eq!(error["code"], "unknown_user");
    assert_eq!(error["request"], "signin");
}

#[tokio::test]
async fn an_app_control_reaches_the_appliance_and_a_bad_one_is_refused() {
    let daemon = start("").await;
    let mut appliance = listen(&daemon, "PSW_Arduino", "webos/smarthome/#").await;
    let mut replies = listen(&daemon, "app", "webos/+/+").await;
    let app = publisher(&daemon, "app-pub").await;
    wait_processor(&app, &mut replies).await;

    send(&app, "webos/server/info", r#"{"Producer":"android","command":"control","control":"009060210"}"#).await;
    expect_message(&mut appliance, "webos/smarthome/info", "009060210").await;

    send(&app, "webos/server/info", r#"{"Producer":"android","command":"control","control":"0x9060210"}"#).await;
    let error = next_json(&mut replies, "webos/android/error").await;
    assert_eq!(error["code"], "invalid_control");
    assert!(error["message"].as_str().unwrap().contains("position 1"), "{error}");
}

#[tokio::test]
async fn every_bad_input_gets_an_error_reply_and_the_processor_keeps_serving() {
    let daemon = start("[processor]\nmax_command_bytes = 1024\n").await;
    let mut replies = listen(&daemon, "ops", "#").await;
    let app = publisher(&daemon, "app-pub").await;
    wait_processor(&app, &mut replies).await;
    let processor = daemon.children()["processor"];

    let oversize = format!(r#"{{"Producer":"android","command":"signup","UID":"u","name":"{}"}}"#, "x".repeat(2000));
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (b"\xff\xfe\xfd".to_vec(), "data/error/warning", "not_utf8"),
        (b"hello".to_vec(), "data/error/warning", "not_json"),
        (b"[1,2,3]".to_vec(), "data/error/warning", "not_an_object"),
        (br#"{"command":"signin"}"#.to_vec(), "data/error/warning", "missing_field"),
        (br#"{"Producer":"toaster","command":"signin"}"#.to_vec(), "data/error/warning", "unknown_producer"),
        (br#"{"Producer":"android","command":"teleport"}"#.to_vec(), "webos/android/error", "unknown_command"),
        (br#"{"Producer":"android","command":"signin","UID":42}"#.to_vec(), "webos/android/error", "bad_field"),
        (br#"{"Producer":"car","command":"signup","UID":"u"}"#.to_vec(), "webos/car/error", "missing_field"),
        (oversize.into_bytes(), "data/error/warning", "payload_too_large"),
        (br#"{"Producer":"car","command":"start_facer"}"#.to_vec(), "webos/car/error", "facer_unavailable"),
    ];
    for (payload, topic, code) in cases {
        send(&app, "webos/server/info", payload.clone()).await;
        let error = next_json(&mut replies, topic).await;
        assert_eq!(error["code"], code, "for {}", String::from_utf8_lossy(&payload));
        assert_eq!(error["Producer"], "server");
    }
    send(&app, "data/smarthome", "12345").await;
    let error = next_json(&mut replies, "data/error/error").await;
    assert_eq!(error["code"], "bad_length");

    assert_eq!(daemon.children()["processor"], processor, "the processor restarted");
    send(&app, "webos/server/info", r#"{"Producer":"android","command":"signup","UID":"still-here","name":"ok"}"#)
        .await;
    send(&app, "webos/server/info", r#"{"Producer":"android","command":"signin","UID":"still-here"}"#).await;
    assert_eq!(next_json(&mut replies, "webos/android/info").await["name"], "ok");
}

#[tokio::test]
async fn state_changes_write_old_format_alarms_and_a_retained_recommendation() {
    let mut daemon = start("").await;
    let mut replies = listen(&daemon, "app", "webos/+/+").await;
    let device = publisher(&daemon, "PSW_Arduino").await;
    wait_processor(&device, &mut replies).await;
    let mut watcher = listen(&daemon, "watcher", "smarthomed/#").await;

    send(&device, "data/smarthome", "000000000").await;
    expect_message(&mut watcher, "smarthomed/appliance/state", "000000000").await;
    send(&device, "data/smarthome", "015132310").await;
    expect_messages(
        &mut watcher,
        &[("smarthomed/appliance/state", "015132310"), ("smarthomed/recommendation", "none")],
    )
    .await;
    send(&device, "smarthomed/sensor/hometemp", r#"{"temp": 29.2, "humi": 60, "rain": "1"}"#).await;
    expect_message(&mut watcher, "smarthomed/recommendation", "비가오니 창문을 닫아주세요.").await;
    send(&device, "data/smarthome", "015132311").await;
    expect_message(&mut watcher, "smarthomed/recommendation", "가스벨브가 열려있어요.").await;

    let (late, late_loop) = connect(daemon.mqtt_port, "late-app", None).await.unwrap();
    let mut late = subscriber(late, late_loop, "smarthomed/recommendation").await;
    assert!(expect_message(&mut late, "smarthomed/recommendation", "가스벨브가 열려있어요.").await, "retained");

    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)).await.code(), Some(0));
    let store = EmbeddedDocuments::open(&daemon.dir.path().join("data")).unwrap();
    let alarms = store.list("appliance_alarm").await.unwrap();
    let informs: Vec<(String, String)> = alarms
        .iter()
        .map(|(_, doc)| (doc["inform"].as_str().unwrap().to_owned(), doc["icon"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(informs.len(), 4, "{informs:?}");
    for expected in [
        ("에어컨이 켜졌어요.", "aircon_icon"),
        ("전등이 켜졌어요.", "light_icon"),
        ("창문이 열렸어요.", "window_icon"),
        ("가스밸브가 열렸어요.", "gasvalve_icon"),
    ] {
        assert!(informs.contains(&(expected.0.to_owned(), expected.1.to_owned())), "{informs:?}");
    }
    for (id, doc) in &alarms {
        let seconds: i64 = id.split('-').next().unwrap().parse().unwrap();
        let age = 10_000_000_000 - seconds - chrono::Utc::now().timestamp();
        assert!(age.abs() < 120, "id {id} is not 10000000000 minus now");
        let date = doc["date"].as_str().unwrap();
        assert_eq!(date.split('.').count(), 6, "{date}");
    }
}

#[tokio::test]
async fn a_mode_change_is_one_alarm_with_the_mode_name() {
    let mut daemon = start("").await;
    let mut replies = listen(&daemon, "app", "webos/+/+").await;
    let device = publisher(&daemon, "PSW_Arduino").await;
    wait_processor(&device, &mut replies).await;
    let mut watcher = listen(&daemon, "watcher", "smarthomed/appliance/state").await;
    send(&device, "data/smarthome", "000000000").await;
    expect_message(&mut watcher, "smarthomed/appliance/state", "000000000").await;
    send(&device, "data/smarthome", "311000000").await;
    expect_message(&mut watcher, "smarthomed/appliance/state", "311000000").await;

    daemon.signal(Signal::SIGTERM);
    daemon.wait_exit(Duration::from_secs(20)).await;
    let store = EmbeddedDocuments::open(&daemon.dir.path().join("data")).unwrap();
    let alarms = store.list("appliance_alarm").await.unwrap();
    assert_eq!(alarms.len(), 1);
    assert_eq!(alarms[0].1["inform"], "3번 모드가 실행되었습니다.");
    assert_eq!(alarms[0].1["icon"], "3mode_icon");
}

#[tokio::test]
async fn a_signup_sent_while_the_processor_is_down_is_stored_when_it_is_back() {
    let daemon = Daemon::start(
        "run",
        "",
        "[supervisor]\nbackoff_initial_ms = 2000\nbackoff_max_ms = 2000\nstop_timeout_secs = 5\n",
    );
    let children = daemon.wait_children(&ROLES).await;
    daemon.wait_broker().await;
    let mut replies = listen(&daemon, "app", "webos/+/+").await;
    let app = publisher(&daemon, "app-pub").await;
    wait_processor(&app, &mut replies).await;

    kill(Pid::from_raw(children["processor"] as i32), Signal::SIGKILL).unwrap();
    wait_for(Duration::from_secs(5), "the processor to be gone", || {
        (!daemon.children().contains_key("processor")).then_some(())
    })
    .await;
    send(
        &app,
        "webos/server/info",
        r#"{"Producer":"android","command":"signup","UID":"offline-uid","name":"while away"}"#,
    )
    .await;

    wait_for(Duration::from_secs(15), "a new processor", || daemon.children().get("processor").copied()).await;
    send(&app, "webos/server/info", r#"{"Producer":"android","command":"signin","UID":"offline-uid"}"#).await;
    let reply = next_json(&mut replies, "webos/android/info").await;
    assert_eq!(reply["name"], "while away");
}

#[tokio::test]
async fn start_facer_signals_the_camera_and_answers_with_the_recognised_user() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("recognize.sh");
    std::fs::write(&script, "#!/bin/sh\necho 'warming up'\ncat \"$1\"\n").unwrap();
    let answer = dir.path().join("answer");
    let config = format!(
        "[processor]\nfacer_command = [\"sh\", \"{}\", \"{}\"]\nfacer_timeout_secs = 5\n",
        script.display(),
        answer.display()
    );
    let daemon = start(&config).await;
    let mut replies = listen(&daemon, "car", "webos/+/+").await;
    let car = publisher(&daemon, "car-pub").await;
    wait_processor(&car, &mut replies).await;
    send(&car, "webos/server/info", r#"{"Producer":"car","command":"signup","UID":"face-uid","name":"Driver"}"#).await;
    // start_facer is not ordered after the signup (it has no subject): a signin, which
    // is, shows the user stored.
    send(&car, "webos/server/info", r#"{"Producer":"car","command":"signin","UID":"face-uid"}"#).await;
    assert_eq!(next_json(&mut replies, "webos/car/info").await["name"], "Driver");

    for (recognised, result, name) in
        [("face-uid", "face-uid", "Driver"), ("none", "none", "fail"), ("ghost", "ghost", "fail")]
    {
        std::fs::write(&answer, format!("{recognised}\n")).unwrap();
        send(&car, "webos/server/info", r#"{"Producer":"car","command":"start_facer"}"#).await;
        assert_eq!(next_json(&mut replies, "webos/camera/info").await["sign"], "start");
        assert_eq!(next_json(&mut replies, "webos/camera/info").await["sign"], "end");
        let reply = next_json(&mut replies, "webos/car/info").await;
        assert_eq!(reply, json!({"Producer": "server", "command": "return_facer", "result": result, "name": name}));
    }
}

#[tokio::test]
async fn a_processor_killed_mid_burst_loses_no_signup_and_leaves_a_readable_store() {
    const SIGNUPS: usize = 200;
    let mut daemon = Daemon::start(
        "run",
        "",
        "[supervisor]\nbackoff_initial_ms = 300\nbackoff_max_ms = 300\nstop_timeout_secs = 5\n",
    );
    let children = daemon.wait_children(&ROLES).await;
    daemon.wait_broker().await;
    let mut replies = listen(&daemon, "app", "webos/android/+").await;
    let app = publisher(&daemon, "app-pub").await;
    wait_processor(&app, &mut replies).await;

    for i in 0..SIGNUPS {
        let signup =
            json!({"Producer": "android", "command": "signup", "UID": format!("burst-{i}"), "name": format!("n{i}")});
        send(&app, "webos/server/info", signup.to_string()).await;
        if i == SIGNUPS / 4 {
            kill(Pid::from_raw(children["processor"] as i32), Signal::SIGKILL).unwrap();
        }
    }
    wait_for(Duration::from_secs(15), "a new processor", || {
        daemon.children().get("processor").copied().filter(|pid| *pid != children["processor"])
    })
    .await;

    let mut missing: Vec<usize> = (0..SIGNUPS).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !missing.is_empty() && std::time::Instant::now() < deadline {
        for i in &missing {
            let signin = json!({"Producer": "android", "command": "signin", "UID": format!("burst-{i}")});
            send(&app, "webos/server/info", signin.to_string()).await;
        }
        let mut answered = Vec::new();
        let collect = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some((topic, payload, _)) = replies.recv().await {
                if topic == "webos/android/info" {
                    let reply: Value = serde_json::from_str(&payload).unwrap();
                    answered.push(
                        reply["name"]
                            .as_str()
                            .unwrap_or_default()
                            .trim_start_matches('n')
                            .parse::<usize>()
                            .unwrap_or(usize::MAX),
                    );
                }
            }
        });
        let _ = collect.await;
        missing.retain(|i| !answered.contains(i));
    }
    assert!(missing.is_empty(), "signups lost across the crash: {missing:?}\nlog:\n{}", daemon.log());

    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)).await.code(), Some(0));
    let store = EmbeddedDocuments::open(&daemon.dir.path().join("data")).unwrap();
    let users = store.list("user_account").await.expect("the store is readable after the crash");
    assert!(users.len() >= SIGNUPS);
}

#[tokio::test]
async fn a_slow_face_recognition_blocks_nothing_and_is_cut_off_at_its_timeout() {
    let config = "[processor]\nfacer_command = [\"sleep\", \"30\"]\nfacer_timeout_secs = 2\n";
    let daemon = start(config).await;
    let mut replies = listen(&daemon, "car", "webos/+/+").await;
    let car = publisher(&daemon, "car-pub").await;
    wait_processor(&car, &mut replies).await;
    send(&car, "webos/server/info", r#"{"Producer":"car","command":"signup","UID":"u","name":"Quick"}"#).await;

    let started = std::time::Instant::now();
    send(&car, "webos/server/info", r#"{"Producer":"car","command":"start_facer"}"#).await;
    send(&car, "webos/server/info", r#"{"Producer":"car","command":"signin","UID":"u"}"#).await;
    let mut order = Vec::new();
    let mut second_sent = false;
    while order.len() < 3 {
        let (topic, payload, _) =
            tokio::time::timeout(Duration::from_secs(15), replies.recv()).await.expect("replies within 15 s").unwrap();
        let reply: Value = serde_json::from_str(&payload).unwrap();
        match (topic.as_str(), reply["command"].as_str()) {
            ("webos/car/info", Some("return_name")) => order.push("signin"),
            ("webos/car/info", Some("return_facer")) => {
                assert_eq!(reply["result"], "fail");
                assert_eq!(reply["name"], "fail");
                order.push("facer");
            }
            ("webos/car/error", Some("error")) => {
                assert_eq!(reply["code"], "facer_busy", "{reply}");
                order.push("busy");
            }
            _ => {}
        }
        if !second_sent && order == ["signin"] {
            second_sent = true;
            send(&car, "webos/server/info", r#"{"Producer":"car","command":"start_facer"}"#).await;
        }
    }
    assert_eq!(order, ["signin", "busy", "facer"], "the signin waited for the recognizer");
    assert!(started.elapsed() < Duration::from_secs(10), "the recognizer was not cut off");
}

#[tokio::test]
async fn spawned_programs_get_only_the_secrets_they_use() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("recognize.sh");
    // The recognizer answers with the names of the daemon's variables it can see.
    std::fs::write(&script, "#!/bin/sh\necho \"seen:$(env | grep -o '^SMARTHOMED[A-Z_]*' | sort | tr '\\n' ,)\"\n")
        .unwrap();
    let config = format!("[processor]\nfacer_command = [\"sh\", \"{}\"]\nfacer_timeout_secs = 5\n", script.display());
    let daemon = Daemon::start_with_env(
        "run",
        "",
        &config,
        &[
            ("SMARTHOMED_SLACK_TOKEN", "fake-slack-token-for-tests"),
            ("SMARTHOMED_WEATHER_API_KEY", "weather-key-for-tests"),
        ],
    );
    let children = daemon.wait_children(&ROLES).await;
    daemon.wait_broker().await;
    let mut replies = listen(&daemon, "car", "webos/+/+").await;
    let car = publisher(&daemon, "car-pub").await;
    wait_processor(&car, &mut replies).await;

    send(&car, "webos/server/info", r#"{"Producer":"car","command":"start_facer"}"#).await;
    let reply = next_json(&mut replies, "webos/car/info").await;
    assert_eq!(reply["result"], "seen:", "the recognizer saw the daemon's variables: {reply}");

    let environ = |pid: u32| -> Vec<String> {
        std::fs::read(format!("/proc/{pid}/environ"))
            .unwrap()
            .split(|&b| b == 0)
            .filter_map(|var| std::str::from_utf8(var).ok()?.split('=').next().map(str::to_owned))
            .filter(|name| ["SMARTHOMED_SLACK_TOKEN", "SMARTHOMED_WEATHER_API_KEY"].contains(&name.as_str()))
            .collect()
    };
    assert_eq!(environ(children["broker"]), Vec::<String>::new());
    assert_eq!(environ(children["processor"]), Vec::<String>::new());
    assert_eq!(environ(children["syncer"]), ["SMARTHOMED_WEATHER_API_KEY"]);
    assert_eq!(environ(daemon.pid()).len(), 2, "the supervisor keeps what it was given");
}

#[tokio::test]
async fn a_flood_of_garbage_is_answered_in_full_and_logged_in_part() {
    const GARBAGE: usize = 2_000;
    // The replies' reader may fall behind the processor: the broker holds them all.
    let daemon = start_with_broker("max_queued_messages = 5000\n", "").await;
    let mut probes = listen(&daemon, "flood-probe", "webos/android/+").await;
    let mut replies = listen(&daemon, "flood", "data/error/warning").await;
    let app = publisher(&daemon, "flood-pub").await;
    wait_processor(&app, &mut probes).await;
    for n in 0..GARBAGE {
        send(&app, "webos/server/info", format!("not json {n}")).await;
    }
    let answered = tokio::time::timeout(Duration::from_secs(60), async {
        let mut answered = 0;
        while answered < GARBAGE {
            let (_, payload, _) = replies.recv().await.expect("subscription ended");
            assert!(payload.contains("not_json"), "{payload}");
            answered += 1;
        }
        answered
    })
    .await;
    assert_eq!(answered, Ok(GARBAGE), "every bad command is answered");
    let logged = daemon.log().lines().filter(|line| line.contains("rejected command")).count();
    assert!((1..=smarthomed::log_limit::BURST as usize).contains(&logged), "{logged} lines for {GARBAGE} refusals");
}

#[tokio::test]
async fn home_assistant_discovers_the_home_and_drives_it_through_the_control_path() {
    // Under the default policy, with Home Assistant's and the ESP32's own rights.
    let daemon = start_with_broker("access = \"car2home\"\n", "").await;
    let mut discovery = listen(&daemon, "home-assistant", "homeassistant/#").await;
    let mut configs = std::collections::HashMap::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        while configs.len() < 13 {
            let (topic, payload, _) = discovery.recv().await.expect("subscription ended");
            configs.insert(topic, serde_json::from_str::<Value>(&payload).expect("config is JSON"));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} configs: {:?}", configs.len(), configs.keys()));
    // What arrived live (published after the first subscription) is retained too: a
    // Home Assistant that subscribes later gets every config.
    let mut later = listen(&daemon, "home-assistant-later", "homeassistant/#").await;
    let mut retained = std::collections::HashSet::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        while retained.len() < configs.len() {
            let (topic, _, is_retained) = later.recv().await.expect("subscription ended");
            assert!(is_retained, "{topic} is not retained");
            retained.insert(topic);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} retained configs", retained.len()));

    // What Home Assistant requires of each component, and what it needs to place it.
    let mut unique_ids = std::collections::HashSet::new();
    for (topic, config) in &configs {
        let parts: Vec<&str> = topic.split('/').collect();
        assert!(parts.len() == 5 && parts[2] == "smarthomed" && parts[4] == "config", "{topic}");
        let required: &[&str] = match parts[1] {
            "light" | "fan" | "cover" | "valve" => &["command_topic", "state_topic"],
            "sensor" | "binary_sensor" => &["state_topic"],
            other => panic!("unexpected component {other}"),
        };
        for key in required.iter().chain(&["name", "unique_id"]) {
            assert!(config.get(*key).is_some_and(|value| !value.is_null()), "{topic} lacks {key}");
        }
        assert!(unique_ids.insert(config["unique_id"].clone()), "{topic}: unique_id repeated");
        assert_eq!(config["device"]["identifiers"], json!(["smarthomed"]), "{topic}");
        for (key, value) in config.as_object().unwrap() {
            if key.ends_with("command_topic") {
                let command = value.as_str().unwrap();
                assert!(command.starts_with("smarthomed/ha/") && command.ends_with("/set"), "{topic}: {key}");
            } else if key.ends_with("_topic") {
                assert!(value.as_str().unwrap().starts_with("smarthomed/"), "{topic}: {key}");
            }
        }
        for availability in config["availability"].as_array().into_iter().flatten() {
            assert!(availability["topic"].as_str().unwrap().ends_with("/availability"), "{topic}");
        }
    }

    let light = &configs["homeassistant/light/smarthomed/light/config"];
    let mut appliance = listen(&daemon, "esp32", "webos/smarthome/info").await;
    let mut errors = listen(&daemon, "ha-errors", "webos/homeassistant/error").await;
    let mut state = listen(&daemon, "state", "smarthomed/appliance/state").await;
    let device = publisher(&daemon, "PSW_Arduino").await;
    send(&device, "data/smarthome", "006120010").await;
    expect_message(&mut state, "smarthomed/appliance/state", "006120010").await;

    let home_assistant = publisher(&daemon, "home-assistant-pub").await;
    let brightness = light["brightness_command_topic"].as_str().unwrap();
    send(&home_assistant, brightness, "9").await;
    expect_message(&mut appliance, "webos/smarthome/info", "026190022").await;
    // Home Assistant turns a light on with a brightness as brightness, then ON: the ON
    // keeps the brightness just asked for, though the device has not reported it yet.
    send(&home_assistant, light["command_topic"].as_str().unwrap(), "ON").await;
    expect_message(&mut appliance, "webos/smarthome/info", "026190022").await;
    let fan = &configs["homeassistant/fan/smarthomed/aircon/config"];
    send(&home_assistant, fan["command_topic"].as_str().unwrap(), "ON").await;
    expect_message(&mut appliance, "webos/smarthome/info", "016290022").await;
    send(&home_assistant, light["command_topic"].as_str().unwrap(), "BRIGHT").await;
    let error = next_json(&mut errors, "webos/homeassistant/error").await;
    assert_eq!(error["code"], "invalid_control", "{error}");

    // Home Assistant restarted: it announces itself and gets every config again.
    send(&home_assistant, "homeassistant/status", "online").await;
    let again = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (topic, _, _) = discovery.recv().await.expect("subscription ended");
            if topic.ends_with("/config") {
                return topic;
            }
        }
    });
    assert!(again.await.is_ok(), "no config was sent again");
}
