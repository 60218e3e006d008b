//! The supervisor, run as `smarthomed run`: restarts, alerts to a Slack stand-in,
//! graceful stop, orphan-freedom and the restart limit.

use crate::common;

use std::time::Duration;

use common::slack::{Failure, SlackServer};
use common::{Daemon, FAST_SUPERVISOR, alive, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const ROLES: [&str; 3] = ["broker", "processor", "syncer"];

#[tokio::test]
async fn a_killed_child_is_restarted_with_a_new_pid_and_reported_to_slack() {
    let slack = SlackServer::start().await;
    let daemon = Daemon::start("run", "", &format!("{}{FAST_SUPERVISOR}healthy_after_secs = 1\n", slack.config()));
    let before = daemon.wait_children(&ROLES).await;
    wait_for(Duration::from_secs(10), "the start alert", || {
        (!slack.texts_containing("smarthomed started").is_empty()).then_some(())
    })
    .await;

    let old_pid = before["processor"];
    kill(Pid::from_raw(old_pid as i32), Signal::SIGKILL).unwrap();

    let new_pid = wait_for(Duration::from_secs(15), "a new processor", || {
        daemon.children().get("processor").copied().filter(|pid| *pid != old_pid)
    })
    .await;
    assert_ne!(new_pid, old_pid);
    let exit_alert = wait_for(Duration::from_secs(10), "the exit alert", || {
        slack.texts_containing("processor exited unexpectedly").into_iter().next()
    })
    .await;
    assert!(exit_alert.contains(&format!("pid {old_pid}")), "{exit_alert}");
    assert!(exit_alert.contains("killed by SIGKILL"), "{exit_alert}");
    wait_for(Duration::from_secs(10), "the restart alert", || {
        slack.texts_containing("processor restarted").into_iter().next()
    })
    .await;
    wait_for(Duration::from_secs(10), "the recovery alert", || {
        slack.texts_containing("processor recovered").into_iter().next()
    })
    .await;
    assert!(slack.posted().iter().all(|posted| posted.channel == "#test"));
    assert_eq!(daemon.children()["broker"], before["broker"], "the broker was not touched");
    assert!(!daemon.log().contains(&slack.token), "the Slack token reached the log");
}

#[tokio::test]
async fn sigterm_stops_every_process_and_exits_zero() {
    let mut daemon = Daemon::start("run", "", FAST_SUPERVISOR);
    let children = daemon.wait_children(&ROLES).await;
    daemon.wait_broker().await;

    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log());
    for (role, pid) in children {
        assert!(!alive(pid), "{role} (pid {pid}) outlived the supervisor");
    }
}

#[tokio::test]
async fn children_do_not_outlive_a_killed_supervisor() {
    let mut daemon = Daemon::start("run", "", FAST_SUPERVISOR);
    let children = daemon.wait_children(&ROLES).await;

    daemon.signal(Signal::SIGKILL);
    daemon.wait_exit(Duration::from_secs(5)).await;
    wait_for(Duration::from_secs(10), "the orphans to exit", || {
        children.values().all(|pid| !alive(*pid)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_crash_loop_hits_the_restart_limit_and_alerts_once() {
    let slack = SlackServer::start().await;
    let supervisor =
        "[supervisor]\nbackoff_initial_ms = 500\nbackoff_max_ms = 500\nrestart_limit = 3\nrestart_window_secs = 60\n";
    let mut daemon = Daemon::start("run", "", &format!("{}{supervisor}", slack.config()));
    let broker = daemon.wait_children(&ROLES).await["broker"];
    // Once the daemon runs, another program takes the broker's WebSocket port: the
    // restarted broker cannot bind it, so it exits at every start.
    kill(Pid::from_raw(broker as i32), Signal::SIGKILL).unwrap();
    let ws_port = daemon.ws_port;
    let _taken = wait_for(Duration::from_secs(5), "the broker's port", || {
        std::net::TcpListener::bind(("127.0.0.1", ws_port)).ok()
    })
    .await;

    let status = daemon.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(3), "log:\n{}", daemon.log());
    let limit_alerts = slack.texts_containing("hit the restart limit");
    assert_eq!(limit_alerts.len(), 1, "{:#?}", slack.posted());
    assert!(limit_alerts[0].contains("broker"));
    let exit_alerts = slack.texts_containing("broker exited unexpectedly");
    assert!(!exit_alerts.is_empty() && exit_alerts.len() < 4, "4 crashes should coalesce: {exit_alerts:#?}");
    assert!(
        exit_alerts.iter().any(|text| text.contains("×3 more")),
        "the coalesced copies are counted: {exit_alerts:#?}"
    );
    assert!(
        exit_alerts.iter().any(|text| text.contains(&format!("127.0.0.1:{ws_port}"))),
        "an alert shows the child's last words: {exit_alerts:#?}"
    );
    for line in daemon.log().lines().filter(|line| line.contains("os error")) {
        assert_eq!(line.matches("os error").count(), 1, "a cause told twice: {line}");
    }
    assert!(
        daemon.log().lines().any(|line| line.contains(" ERROR ") && line.contains("cannot listen on broker.ws_listen")),
        "the child's fatal error is relayed at ERROR:\n{}",
        daemon.log()
    );
}

#[tokio::test]
async fn slack_rate_limits_and_outages_are_retried() {
    let slack = SlackServer::start().await;
    slack.fail_next(Failure::RateLimited { retry_after_secs: 1 });
    slack.fail_next(Failure::ServerError);
    let daemon = Daemon::start("run", "", &format!("{}{FAST_SUPERVISOR}", slack.config()));
    daemon.wait_children(&ROLES).await;

    let delivered = wait_for(Duration::from_secs(15), "the start alert despite 429 and 503", || {
        slack.posted().into_iter().find(|posted| posted.text.contains("smarthomed started"))
    })
    .await;
    let attempts = slack.attempts();
    assert!(attempts.len() >= 3, "{attempts:?}");
    assert!(attempts[1].duration_since(attempts[0]) >= Duration::from_millis(950), "Retry-After was not honoured");
    assert!(delivered.at >= attempts[2]);
}

#[tokio::test]
async fn a_refused_alert_is_dropped_not_retried_forever() {
    let slack = SlackServer::start().await;
    slack.fail_next(Failure::Api("channel_not_found"));
    let daemon = Daemon::start("run", "", &format!("{}{FAST_SUPERVISOR}", slack.config()));
    daemon.wait_children(&ROLES).await;
    wait_for(Duration::from_secs(10), "the refusal in the log", || {
        daemon.log().contains("channel_not_found").then_some(())
    })
    .await;
    // Alerts go out one after another: had the refused one been retried, the retry
    // would come before the next alert.
    let processor = daemon.children()["processor"];
    kill(Pid::from_raw(processor as i32), Signal::SIGKILL).unwrap();
    wait_for(Duration::from_secs(10), "the next alert", || {
        slack.posted().into_iter().find(|posted| posted.text.contains("processor exited unexpectedly"))
    })
    .await;
    assert_eq!(slack.attempts().len(), 2, "a refused alert was sent again");
}

#[tokio::test]
async fn systemd_hears_ready_status_and_watchdog_only_while_children_are_up() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let supervisor = "[supervisor]\nbackoff_initial_ms = 2000\nbackoff_max_ms = 2000\nstop_timeout_secs = 5\n";
    let mut daemon = Daemon::start_with_env(
        "run",
        "",
        supervisor,
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap()), ("WATCHDOG_USEC", "200000")],
    );
    let mut buf = vec![0u8; 4096];
    let mut receive = async || -> String {
        let len = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
            .await
            .expect("no notification within 10 s")
            .unwrap();
        String::from_utf8_lossy(&buf[..len]).into_owned()
    };

    let mut before_ready = Vec::new();
    loop {
        let message = receive().await;
        if message == "READY=1" {
            break;
        }
        before_ready.push(message);
    }
    assert!(before_ready.iter().all(|m| !m.contains("WATCHDOG")), "{before_ready:?}");
    let children = daemon.wait_children(&ROLES).await;
    loop {
        if receive().await == "WATCHDOG=1" {
            break;
        }
    }

    kill(Pid::from_raw(children["processor"] as i32), Signal::SIGKILL).unwrap();
    loop {
        let message = receive().await;
        if message.starts_with("STATUS=") && message.contains("processor down") {
            break;
        }
    }
    let quiet_until = tokio::time::Instant::now() + Duration::from_millis(1200);
    while let Ok(message) = tokio::time::timeout_at(quiet_until, receive()).await {
        assert_ne!(message, "WATCHDOG=1", "watchdog pinged while the processor was down");
    }
    loop {
        if receive().await == "WATCHDOG=1" {
            break;
        }
    }

    daemon.signal(Signal::SIGTERM);
    loop {
        if receive().await.starts_with("STOPPING=1") {
            break;
        }
    }
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)).await.code(), Some(0));
}

#[tokio::test]
async fn a_hung_child_is_killed_restarted_and_alerted() {
    let slack = SlackServer::start().await;
    let daemon = Daemon::start("run", "", &format!("{}{FAST_SUPERVISOR}heartbeat_timeout_secs = 2\n", slack.config()));
    let before = daemon.wait_children(&ROLES).await;
    let hung = before["processor"];
    kill(Pid::from_raw(hung as i32), Signal::SIGSTOP).unwrap();

    let replacement = wait_for(Duration::from_secs(15), "a new processor", || {
        daemon.children().get("processor").copied().filter(|pid| *pid != hung)
    })
    .await;
    assert!(!alive(hung), "the hung processor (pid {hung}) was left behind");
    let alert = wait_for(Duration::from_secs(10), "the alert", || {
        slack.texts_containing("processor exited unexpectedly").into_iter().next()
    })
    .await;
    assert!(alert.contains("hung: no heartbeat"), "{alert}");
    // Children that keep sending heartbeats are left alone.
    assert_eq!(daemon.children()["broker"], before["broker"]);
    assert_eq!(daemon.children()["syncer"], before["syncer"]);
    assert_eq!(daemon.children()["processor"], replacement);

    // The broker too, though it raises no alert of its own.
    kill(Pid::from_raw(before["broker"] as i32), Signal::SIGSTOP).unwrap();
    wait_for(Duration::from_secs(15), "a new broker", || {
        daemon.children().get("broker").copied().filter(|pid| *pid != before["broker"])
    })
    .await;
    let alert = wait_for(Duration::from_secs(10), "the broker's alert", || {
        slack.texts_containing("broker exited unexpectedly").into_iter().next()
    })
    .await;
    assert!(alert.contains("hung: no heartbeat"), "{alert}");
}

#[tokio::test]
async fn logged_user_data_cannot_forge_an_alert_or_an_error_line() {
    use common::app::{listen, next_json, publisher, send, wait_processor};
    let slack = SlackServer::start().await;
    let daemon = Daemon::start("run", "", &format!("{}{FAST_SUPERVISOR}", slack.config()));
    daemon.wait_children(&ROLES).await;
    daemon.wait_broker().await;
    let app = publisher(&daemon, "forger").await;
    let mut replies = listen(&daemon, "forger-replies", "webos/#").await;
    wait_processor(&app, &mut replies).await;

    let forged = r#"{"source":"supervisor","title":"FORGED alert","detail":""}"#;
    let title = format!(
        "x\n@smarthomed-alert {forged}\n{{\"type\":\"alert\",\"source\":\"s\",\"title\":\"FORGED\",\"detail\":\"\"}}\nERROR FORGED line"
    );
    let mut schedule = common::app::android_schedule(&title, "0700", "2099.01.01");
    schedule["repeat"] = serde_json::json!(false);
    let command = serde_json::json!({"Producer": "android", "command": "schedule_add", "schedule": schedule});
    send(&app, "webos/server/info", command.to_string()).await;
    assert_eq!(next_json(&mut replies, "webos/android/info").await["command"], "schedule_added");
    wait_for(Duration::from_secs(10), "the relayed log line", || {
        daemon.log().lines().any(|line| line.contains("schedule_added")).then_some(())
    })
    .await;

    // An alert raised after the forged one would have been: once it is delivered, a
    // forged one would be too.
    let syncer = daemon.children()["syncer"];
    kill(Pid::from_raw(syncer as i32), Signal::SIGKILL).unwrap();
    wait_for(Duration::from_secs(15), "the syncer's exit alert", || {
        slack.texts_containing("syncer exited unexpectedly").into_iter().next()
    })
    .await;
    assert!(slack.texts_containing("FORGED").is_empty(), "{:#?}", slack.posted());
    let log = daemon.log();
    let forged_lines: Vec<_> = log.lines().filter(|line| line.contains("FORGED")).collect();
    assert!(!forged_lines.is_empty(), "the title was logged");
    for line in forged_lines {
        assert!(line.contains(" INFO "), "user data made its own log line: {line}");
    }
}

#[tokio::test]
async fn under_journald_each_line_carries_its_priority() {
    let daemon = Daemon::start_with_env("run", "", FAST_SUPERVISOR, &[("JOURNAL_STREAM", "8:4242")]);
    let children = daemon.wait_children(&ROLES).await;
    kill(Pid::from_raw(children["syncer"] as i32), Signal::SIGKILL).unwrap();
    wait_for(Duration::from_secs(15), "the exit alert", || {
        daemon.log().contains("syncer exited unexpectedly").then_some(())
    })
    .await;
    let log = daemon.log();
    let line =
        |needle: &str| log.lines().find(|line| line.contains(needle)).unwrap_or_else(|| panic!("{needle}:\n{log}"));
    assert!(line("all children up").starts_with("<6>"), "{log}");
    assert!(line("alert: smarthomed started").starts_with("<6>"), "the start is no warning:\n{log}");
    assert!(line("alert: syncer exited unexpectedly").starts_with("<4>"), "{log}");
}

#[tokio::test]
async fn sighup_reloads_accounts_slack_and_the_weather_without_restarting_anything() {
    use common::weather::WeatherServer;
    let slack = SlackServer::start().await;
    let weather = WeatherServer::start().await;
    let account = |name: &str, password: &str| {
        let hash = smarthomed::password::hash(password).unwrap();
        format!("[[broker.users]]\nname = \"{name}\"\npassword_hash = \"{hash}\"\n")
    };
    let extra = format!("{}{FAST_SUPERVISOR}{}", slack.config(), account("alice", "alice-pw"));
    let daemon = Daemon::start("run", "", &extra);
    let before = daemon.wait_children(&ROLES).await;
    common::wait_for_async(Duration::from_secs(20), "alice to log in", || async {
        common::connect(daemon.mqtt_port, "alice", Some(("alice", "alice-pw"))).await.ok()
    })
    .await;
    assert!(common::connect(daemon.mqtt_port, "bob", Some(("bob", "bob-pw"))).await.is_err(), "bob before his account");

    let config_file = daemon.dir.path().join("smarthomed.toml");
    let original = std::fs::read_to_string(&config_file).unwrap();
    let moved_port = common::free_port();
    let reloaded = original.replace("#test", "#other").replace(
        &format!("listen = \"127.0.0.1:{}\"", daemon.mqtt_port),
        &format!("listen = \"127.0.0.1:{moved_port}\""),
    ) + &account("bob", "bob-pw")
        + &weather.config("Seoul")
        + "[schedule]\ntimezone = \"Asia/Seoul\"\n";
    std::fs::write(&config_file, reloaded).unwrap();
    std::fs::create_dir(daemon.dir.path().join("keys")).unwrap();
    std::fs::write(daemon.dir.path().join("keys/weather_api_key"), &weather.key).unwrap();
    weather.fail_next(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    daemon.signal(Signal::SIGHUP);

    common::wait_for_async(Duration::from_secs(20), "bob to log in", || async {
        common::connect(daemon.mqtt_port, "bob", Some(("bob", "bob-pw"))).await.ok()
    })
    .await;
    let (client, eventloop) = common::connect(daemon.mqtt_port, "watcher", Some(("alice", "alice-pw"))).await.unwrap();
    let mut sensors = common::subscriber(client, eventloop, "smarthomed/sensor/openweather").await;
    let (_, weather_now, _) = tokio::time::timeout(Duration::from_secs(20), sensors.recv()).await.unwrap().unwrap();
    assert!(weather_now.contains("10n"), "{weather_now}");
    for title in ["the weather cannot be updated", "the weather is back"] {
        let alert = wait_for(Duration::from_secs(20), title, || {
            slack.posted().into_iter().find(|posted| posted.text.contains(title))
        })
        .await;
        assert_eq!(alert.channel, "#other", "{title} went to the old channel");
    }
    let log = daemon.log();
    let summary = log.lines().find(|line| line.contains("SIGHUP: config reloaded")).expect(&log);
    for key in ["slack.channel", "broker.users", "weather.api_key", "schedule.timezone"] {
        assert!(summary.contains(key), "{key}: {summary}");
    }
    assert!(log.contains("the schedule engine starts over with the reloaded settings"), "{log}");
    assert!(summary.contains("needs_restart=[\"broker.listen\"]"), "{summary}");
    assert_eq!(daemon.children(), before, "a reload restarted a process");

    // A file that does not parse changes nothing.
    std::fs::write(&config_file, "[broker]\nlisen = 1\n").unwrap();
    daemon.signal(Signal::SIGHUP);
    wait_for(Duration::from_secs(10), "the refusal", || {
        daemon.log().contains("config not reloaded, the running one stays").then_some(())
    })
    .await;
    assert!(common::connect(daemon.mqtt_port, "bob2", Some(("bob", "bob-pw"))).await.is_ok());
    assert_eq!(daemon.children(), before);
}

#[tokio::test]
async fn metrics_and_health_cover_every_process() {
    use common::app::{listen, publisher, wait_processor};
    smarthomed::tls::use_ring();
    let port = common::free_port();
    let extra = format!("{FAST_SUPERVISOR}heartbeat_timeout_secs = 2\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let daemon = Daemon::start("run", "", &extra);
    let before = daemon.wait_children(&ROLES).await;
    daemon.wait_broker().await;
    let mut replies = listen(&daemon, "app", "webos/android/+").await;
    let app = publisher(&daemon, "app-pub").await;
    wait_processor(&app, &mut replies).await;

    let http = reqwest::Client::new();
    let get = |path: &str| {
        let request = http.get(format!("http://127.0.0.1:{port}{path}"));
        async move {
            let response = request.send().await.ok()?;
            Some((response.status().as_u16(), response.text().await.ok()?))
        }
    };
    common::wait_for_async(Duration::from_secs(10), "healthy", || async {
        get("/healthz").await.filter(|(status, body)| *status == 200 && body.contains("\"healthy\":true"))
    })
    .await;
    let wanted = [
        "smarthomed_processor_commands_total{command=\"signin\",outcome=\"unknown_user\"}",
        "smarthomed_processor_handler_seconds_bucket{command=\"signin\"",
        "smarthomed_processor_queue_depth",
        "smarthomed_broker_connections{listener=\"mqtt\"}",
        "smarthomed_alerts_total{outcome=\"dropped\"} 0",
    ];
    let metrics = common::wait_for_async(Duration::from_secs(15), "every process's metrics", || async {
        get("/metrics").await.map(|(_, body)| body).filter(|body| wanted.iter().all(|metric| body.contains(metric)))
    })
    .await;
    let mut families = std::collections::HashSet::new();
    for line in metrics.lines().filter(|line| line.starts_with("# TYPE ")) {
        assert!(families.insert(line.split_whitespace().nth(2).unwrap().to_owned()), "{line} twice:\n{metrics}");
    }

    // The front door counts the messages that pass it, each way.
    let count = |metrics: &str, name: &str| -> u64 {
        let series = format!("{name}{{listener=\"mqtt\"}} ");
        metrics.lines().find_map(|line| line.strip_prefix(&series)?.parse().ok()).unwrap_or(0)
    };
    let (received, sent) = (
        count(&metrics, "smarthomed_broker_messages_received_total"),
        count(&metrics, "smarthomed_broker_messages_sent_total"),
    );
    let (client, eventloop) = common::connect(daemon.mqtt_port, "counted-sub", None).await.unwrap();
    let mut counted = common::subscriber(client, eventloop, "counted/#").await;
    let (counted_pub, mut pub_loop) = common::connect(daemon.mqtt_port, "counted-pub", None).await.unwrap();
    tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });
    for n in 0..25 {
        counted_pub.publish("counted/n", rumqttc::QoS::AtLeastOnce, false, n.to_string()).await.unwrap();
    }
    common::expect_message(&mut counted, "counted/n", "24").await;
    common::wait_for_async(Duration::from_secs(10), "25 more messages each way", || async {
        let metrics = get("/metrics").await?.1;
        (count(&metrics, "smarthomed_broker_messages_received_total") >= received + 25
            && count(&metrics, "smarthomed_broker_messages_sent_total") >= sent + 25
            && metrics.contains("smarthomed_broker_bytes_received_total{listener=\"mqtt\"}"))
        .then_some(())
    })
    .await;

    // A stopped processor is unhealthy at once, and healthy again once restarted.
    kill(Pid::from_raw(before["processor"] as i32), Signal::SIGSTOP).unwrap();
    let (_, down) = common::wait_for_async(Duration::from_secs(10), "unhealthy", || async {
        get("/healthz").await.filter(|(status, _)| *status == 503)
    })
    .await;
    assert!(down.contains("\"processor\":\"down\""), "{down}");
    common::wait_for_async(Duration::from_secs(20), "healthy again", || async {
        get("/healthz").await.filter(|(status, _)| *status == 200)
    })
    .await;
    let metrics = get("/metrics").await.unwrap().1;
    assert!(metrics.contains("smarthomed_supervisor_child_restarts_total{child=\"processor\"} 1"), "{metrics}");
}

#[tokio::test]
async fn status_shows_the_children_clients_alarms_and_next_schedules_and_a_second_daemon_is_refused() {
    use smarthomed::store::DocumentStore;
    let dir = tempfile::tempdir().unwrap();
    {
        let store = smarthomed::store::embedded::EmbeddedDocuments::open(&dir.path().join("data")).unwrap();
        let alarm = serde_json::json!({"icon": 1, "date": "2026.11.23.7.5.0", "inform": "gas valve left open"});
        store.set("appliance_alarm", "8235000000", alarm.as_object().cloned().unwrap()).await.unwrap();
        let mut schedule = common::app::android_schedule("wake-up", "0630", "");
        schedule["repeat"] = serde_json::json!(true);
        schedule["daysOfWeek"] = serde_json::json!([true, true, true, true, true, true, true]);
        schedule.as_object_mut().unwrap().remove("activeDate");
        store.set("schedule_mode", "wake-up", schedule.as_object().cloned().unwrap()).await.unwrap();
    }
    let config = format!("{FAST_SUPERVISOR}[schedule]\ntimezone = \"UTC\"\n");
    let daemon = Daemon::start_in(dir, "run", &config);
    let children = daemon.wait_children(&ROLES).await;
    daemon.wait_broker().await;
    let config_file = daemon.dir.path().join("smarthomed.toml");
    let status = || {
        let output = common::smarthomed_command().arg("status").arg("-c").arg(&config_file).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };

    // The children's MQTT links (the processor's two, the syncer's) count as clients.
    let text = wait_for(Duration::from_secs(20), "the broker's clients in the status", || {
        let text = status();
        text.lines()
            .any(|line| line.contains("broker") && line.contains("heartbeat") && line.contains("clients 3"))
            .then_some(text)
    })
    .await;
    for role in ROLES {
        let line = text.lines().find(|line| line.trim_start().starts_with(role)).unwrap_or_else(|| panic!("{text}"));
        assert!(line.contains(&format!("pid {}", children[role])) && line.contains("restarts 0"), "{text}");
    }
    assert!(text.contains("2026.11.23.7.5.0     gas valve left open"), "{text}");
    assert!(text.contains("schedules due next (UTC):") && text.contains(" 06:30  wake-up"), "{text}");

    let processor = children["processor"];
    kill(Pid::from_raw(processor as i32), Signal::SIGKILL).unwrap();
    let new_processor = wait_for(Duration::from_secs(15), "a new processor", || {
        daemon.children().get("processor").copied().filter(|pid| *pid != processor)
    })
    .await;
    wait_for(Duration::from_secs(10), "the restart in the status", || {
        let text = status();
        text.lines()
            .any(|line| line.contains(&format!("pid {new_processor}")) && line.contains("restarts 1"))
            .then_some(())
    })
    .await;

    // A second daemon on the same store stops before it starts anything.
    let second =
        common::smarthomed_command().args(["run", "-c"]).arg(&config_file).env("RUST_LOG", "info").output().unwrap();
    assert_eq!(second.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&second.stderr).contains("another smarthomed is running"));
    assert_eq!(daemon.children()["processor"], new_processor, "the first daemon was disturbed");
}
