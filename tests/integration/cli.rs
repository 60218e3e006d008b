//! The command line and the files shipped beside the binary: check-config,
//! hash-password, exit codes, and the systemd unit.

use crate::common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::BIN;
use smarthomed::config::SupervisorConfig;

fn smarthomed(args: &[&str]) -> Output {
    smarthomed_with_env(args, &[])
}

fn smarthomed_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    common::smarthomed_command()
        .args(args)
        .envs(env.iter().copied())
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run smarthomed")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn config_file(content: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(content.as_bytes()).unwrap();
    file
}

#[test]
fn version_and_help_describe_the_commands() {
    let version = smarthomed(&["--version"]);
    assert!(text(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
    let help = text(&smarthomed(&["--help"]).stdout);
    for command in ["run", "broker", "processor", "syncer", "check-config", "hash-password"] {
        assert!(help.contains(command), "--help lacks {command}:\n{help}");
    }
}

#[test]
fn check_config_without_a_file_prints_the_defaults() {
    let output = smarthomed(&["check-config"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let effective = text(&output.stdout);
    assert!(effective.contains("listen = \"127.0.0.1:1883\""), "{effective}");
    assert!(effective.contains("channel = \"#server\""), "{effective}");
}

#[test]
fn check_config_redacts_secrets() {
    let file = config_file("[slack]\ntoken = \"fake-slack-token-do-not-print-me\"\n[mqtt]\npassword = \"hunter2\"\n");
    let output = smarthomed(&["check-config", "-c", file.path().to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let shown = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(!shown.contains("do-not-print-me") && !shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("<redacted>"));
}

#[test]
fn a_bad_config_exits_2_naming_the_key() {
    for (content, key) in [
        ("[broker]\nlisen = \"127.0.0.1:1883\"\n", "broker.lisen"),
        ("[supervisor]\nrestart_limit = 0\n", "supervisor.restart_limit"),
        ("[slack]\napi_url = 7\n", "slack.api_url"),
        ("[supervisor]\nlog_tail_lines = 4600000000000000000\n", "supervisor.log_tail_lines"),
        ("[slack]\nqueue_capacity = 9223372036854775807\n", "slack.queue_capacity"),
    ] {
        let file = config_file(content);
        for command in ["check-config", "run", "processor"] {
            let output = smarthomed(&[command, "-c", file.path().to_str().unwrap()]);
            assert_eq!(output.status.code(), Some(2), "{command} with {content:?}");
            assert!(text(&output.stderr).contains(key), "{}", text(&output.stderr));
        }
    }
    let output = smarthomed(&["run", "-c", "/nonexistent/smarthomed.toml"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("/nonexistent/smarthomed.toml"));
}

#[test]
fn hash_password_output_is_accepted_as_an_account() {
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"esp32-password\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let hash = text(&output.stdout).trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(smarthomed::password::verify(b"esp32-password", &hash));

    let file = config_file(&format!("[[broker.users]]\nname = \"esp32\"\npassword_hash = \"{hash}\"\n"));
    let output = smarthomed(&["check-config", "-c", file.path().to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
}

/// `smarthomed <args>` with `input` on standard input (not a terminal).
fn smarthomed_with_input(args: &[&str], input: &str) -> Output {
    let mut child = common::smarthomed_command()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn user_commands_edit_the_accounts_in_the_config_file() {
    let file = config_file("# my home\n[slack]\nchannel = \"#home\"  # where alerts go\n");
    let path = file.path().to_str().unwrap();
    let hash_of = |name: &str| {
        let text = std::fs::read_to_string(path).unwrap();
        let config = smarthomed::config::Config::parse(&text, file.path()).unwrap();
        config.broker.users.iter().find(|user| user.name == name).map(|user| user.password_hash.expose().to_owned())
    };

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let added = smarthomed_with_input(&["user", "add", "alice", "-c", path], "alice-pw\n");
    assert!(added.status.success(), "{}", text(&added.stderr));
    assert_eq!(std::fs::metadata(path).unwrap().permissions().mode() & 0o777, 0o640, "permissions changed");
    assert!(text(&added.stdout).contains("systemctl reload smarthomed"));
    let edited = std::fs::read_to_string(path).unwrap();
    assert!(edited.starts_with("# my home\n[slack]\nchannel = \"#home\"  # where alerts go\n"), "{edited}");
    assert!(smarthomed::password::verify(b"alice-pw", &hash_of("alice").unwrap()));
    assert!(smarthomed(&["check-config", "-c", path]).status.success());

    let again = smarthomed_with_input(&["user", "add", "alice", "-c", path], "other\n");
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("exists already"), "{}", text(&again.stderr));

    let changed = smarthomed_with_input(&["user", "passwd", "alice", "-c", path], "new-pw\n");
    assert!(changed.status.success(), "{}", text(&changed.stderr));
    assert!(smarthomed::password::verify(b"new-pw", &hash_of("alice").unwrap()));

    assert!(smarthomed(&["user", "remove", "alice", "-c", path]).status.success());
    assert_eq!(hash_of("alice"), None);
    let missing = smarthomed(&["user", "remove", "alice", "-c", path]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("no account"), "{}", text(&missing.stderr));
    let reserved = smarthomed_with_input(&["user", "add", "smarthomed", "-c", path], "x\n");
    assert_eq!(reserved.status.code(), Some(1));
    let no_file = smarthomed_with_input(&["user", "add", "bob"], "x\n");
    assert!(text(&no_file.stderr).contains("-c FILE"), "{}", text(&no_file.stderr));
}

const UNIT: &str = include_str!("../../systemd/smarthomed.service");

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let probe = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .expect("systemd-analyze is missing: install Debian's systemd (scripts/test does)");
    assert!(probe.status.success());
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("smarthomed.service");
    std::fs::write(&unit, UNIT.replace("/usr/bin/smarthomed", BIN)).unwrap();
    let output = Command::new("systemd-analyze").arg("verify").arg(&unit).output().unwrap();
    let complaints = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(output.status.success() && complaints.trim().is_empty(), "{complaints}");
}

#[test]
fn the_unit_matches_the_daemon_defaults() {
    let setting = |key: &str| {
        UNIT.lines()
            .find_map(|line| line.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("unit lacks {key}"))
    };
    assert_eq!(setting("Type"), "notify");
    assert_eq!(setting("KillMode"), "mixed");
    assert_eq!(setting("RestartPreventExitStatus"), "2");
    let watchdog_secs: u64 = setting("WatchdogSec").trim_end_matches('s').parse().unwrap();
    let defaults = SupervisorConfig::default();
    assert!(watchdog_secs * 1000 > defaults.backoff_max_ms, "WatchdogSec must outlast the longest restart backoff");
    let stop_secs: u64 = setting("TimeoutStopSec").trim_end_matches('s').parse().unwrap();
    assert!(stop_secs > 3 * defaults.stop_timeout_secs, "children stop one after another");
    for credential in ["slack_token", "mqtt_password", "weather_api_key"] {
        assert!(UNIT.contains(&format!("LoadCredential={credential}:")));
    }
}

#[test]
fn the_example_config_is_valid_and_shows_the_defaults() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/smarthomed.example.toml");
    let output = smarthomed(&["check-config", "-c", example]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let from_example = text(&output.stdout);
    let defaults = text(&smarthomed(&["check-config"]).stdout);
    assert_eq!(from_example, defaults, "the example's values drifted from the defaults");
}

#[test]
fn the_firebase_backend_needs_a_usable_service_account_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let config = config_file(&format!(
        "[store]\nbackend = \"firebase\"\n[firebase]\nproject_id = \"car2home\"\n\
         database_url = \"https://car2home-default-rtdb.firebaseio.com\"\n[secrets]\nkeys_dir = \"{}\"\n",
        keys.display()
    ));
    let config = config.path().to_str().unwrap();

    let missing = smarthomed(&["check-config", "-c", config]);
    assert_eq!(missing.status.code(), Some(2));
    let error = text(&missing.stderr);
    for needed in
        ["firebase.credentials", "firebase_service_account.json", "keys/README.md", "GOOGLE_APPLICATION_CREDENTIALS"]
    {
        assert!(error.contains(needed), "{needed} not in: {error}");
    }

    std::fs::create_dir(&keys).unwrap();
    std::fs::write(keys.join("firebase_service_account.json"), r#"{"type": "authorized_user"}"#).unwrap();
    let unusable = text(&smarthomed(&["check-config", "-c", config]).stderr);
    assert!(unusable.contains("not a service-account key"), "{unusable}");

    let (private, _) = common::google_token::key_pair(dir.path());
    let key = dir.path().join("elsewhere.json");
    let key_json = serde_json::json!({
        "type": "service_account", "client_email": common::google_token::EMAIL,
        "private_key": private, "token_uri": "https://oauth2.googleapis.com/token"
    });
    std::fs::write(&key, key_json.to_string()).unwrap();
    let found = smarthomed_with_env(
        &["check-config", "-c", config],
        &[("GOOGLE_APPLICATION_CREDENTIALS", key.to_str().unwrap())],
    );
    assert!(found.status.success(), "{}", text(&found.stderr));
    assert!(text(&found.stdout).contains(&format!("credentials = \"{}\"", key.display())));
    assert!(!format!("{}{}", text(&found.stdout), text(&found.stderr)).contains("PRIVATE KEY"));
}

#[test]
fn the_firebase_backend_needs_its_project_and_database() {
    for (config, key) in [
        (
            "[store]\nbackend = \"firebase\"\n[firebase]\ndatabase_url = \"https://x.firebaseio.com\"\n",
            "firebase.project_id",
        ),
        ("[store]\nbackend = \"firebase\"\n[firebase]\nproject_id = \"x\"\n", "firebase.database_url"),
        ("[firebase]\ndatabase_url = \"ftp://x\"\n", "firebase.database_url"),
        ("[firebase]\nfirestore_emulator_host = \"localhost\"\n", "firebase.firestore_emulator_host"),
        ("[store]\nbackend = \"cloud\"\n", "store.backend"),
    ] {
        let file = config_file(config);
        let output = smarthomed(&["check-config", "-c", file.path().to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2), "{config}");
        assert!(text(&output.stderr).contains(key), "{key} not in: {}", text(&output.stderr));
    }
}

#[test]
fn an_unusable_tls_certificate_or_ca_file_is_a_startup_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let key_only = dir.path().join("key-only.pem");
    std::fs::write(&key_only, "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n").unwrap();
    let broker = format!(
        "[broker]\nlisten = \"127.0.0.1:{}\"\nws_listen = \"127.0.0.1:{}\"\ntls_listen = \"127.0.0.1:{}\"\n[store]\ndir = \"{}\"\n",
        common::free_port(),
        common::free_port(),
        common::free_port(),
        dir.path().join("data").display()
    );
    for (files, key) in [
        (format!("tls_cert_file = \"{0}\"\ntls_key_file = \"{0}\"\n", missing.display()), "broker.tls_cert_file"),
        (format!("tls_cert_file = \"{0}\"\ntls_key_file = \"{0}\"\n", key_only.display()), "broker.tls_cert_file"),
    ] {
        let file = config_file(&broker.replacen("[store]", &format!("{files}[store]"), 1));
        let config = file.path().to_str().unwrap();
        for command in ["check-config", "run"] {
            let output = smarthomed(&[command, "-c", config]);
            assert_eq!(output.status.code(), Some(2), "{command}: {}", text(&output.stderr));
            let error = text(&output.stderr);
            assert!(error.contains(key), "{command}: {key} not in {error}");
            assert!(!error.contains("not base64 at all"), "{command} showed the key file: {error}");
        }
    }
    let external = config_file(&format!(
        "[broker]\nembedded = false\n[mqtt]\nurl = \"mqtts://127.0.0.1:8883\"\nca_file = \"{}\"\n",
        missing.display()
    ));
    let output = smarthomed(&["check-config", "-c", external.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("mqtt.ca_file"), "{}", text(&output.stderr));
}

#[test]
fn status_without_a_running_daemon_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(&format!("[store]\ndir = \"{}\"\n", dir.path().join("data").display()));
    let output = smarthomed(&["status", "-c", file.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let error = text(&output.stderr);
    assert!(error.contains("not running") && error.contains("smarthomed.sock"), "{error}");
}

#[test]
fn a_taken_port_stops_the_daemon_before_any_child_starts_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let (mqtt, ws) = (common::free_port(), common::free_port());
    for (key, listeners) in [
        (
            "metrics.listen",
            format!(
                "[broker]\nlisten = \"127.0.0.1:{mqtt}\"\nws_listen = \"127.0.0.1:{ws}\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
            ),
        ),
        ("broker.listen", format!("[broker]\nlisten = \"127.0.0.1:{port}\"\nws_listen = \"127.0.0.1:{ws}\"\n")),
    ] {
        let file = config_file(&format!("{listeners}[store]\ndir = \"{}\"\n", dir.path().join("data").display()));
        let output = smarthomed(&["run", "-c", file.path().to_str().unwrap()]);
        // 2, a startup error; not 3, the restart limit of a crash-looping broker child.
        assert_eq!(output.status.code(), Some(2), "{key}: {}", text(&output.stderr));
        let log = text(&output.stderr);
        assert!(log.contains(key) && log.contains(&port.to_string()), "{log}");
        assert!(!log.contains("pid="), "a child was started: {log}");
    }
}
