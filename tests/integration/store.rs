//! The store interfaces' conformance suite on the embedded backend, and its durability.

use crate::common;

use serde_json::json;
use smarthomed::store::embedded::{EmbeddedDocuments, EmbeddedTree};
use smarthomed::store::{DocumentStore, RealtimeTree};

#[tokio::test]
async fn embedded_documents_conform() {
    let dir = tempfile::tempdir().unwrap();
    common::store_suite::documents(EmbeddedDocuments::open(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn embedded_tree_conforms() {
    let dir = tempfile::tempdir().unwrap();
    common::store_suite::tree(EmbeddedTree::open(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn committed_data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let documents = EmbeddedDocuments::open(dir.path()).unwrap();
        documents.set("user_account", "uid", json!({"name": "x"}).as_object().unwrap().clone()).await.unwrap();
        let tree = EmbeddedTree::open(dir.path()).unwrap();
        tree.set("server/notification", json!("none")).await.unwrap();
    }
    let documents = EmbeddedDocuments::open(dir.path()).unwrap();
    assert!(documents.get("user_account", "uid").await.unwrap().is_some());
    let tree = EmbeddedTree::open(dir.path()).unwrap();
    assert_eq!(tree.get("server/notification").await.unwrap(), Some(json!("none")));
}

#[tokio::test]
async fn an_unusable_store_directory_is_a_clear_error() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = EmbeddedDocuments::open(&file.path().join("data")).err().expect("opened under a file");
    assert!(err.to_string().contains(&file.path().display().to_string()), "{err}");
}

/// A daemon run to a clean stop in `dir`, so that its store exists; returns the dir.
async fn run_once(dir: tempfile::TempDir) -> tempfile::TempDir {
    let mut daemon = common::Daemon::start_in(dir, "run", common::FAST_SUPERVISOR);
    daemon.wait_children(&["broker", "processor", "syncer"]).await;
    daemon.wait_broker().await;
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(std::time::Duration::from_secs(20)).await.code(), Some(0), "{}", daemon.log());
    std::mem::replace(&mut daemon.dir, tempfile::tempdir().unwrap())
}

/// `smarthomed store <args> -c <dir>/smarthomed.toml`.
fn store_command(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    common::smarthomed_command()
        .arg("store")
        .args(args)
        .arg("-c")
        .arg(dir.join("smarthomed.toml"))
        .current_dir(dir)
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_lost_store_is_a_startup_error_with_an_alert_until_reset() {
    use std::os::unix::fs::PermissionsExt;
    let slack = common::slack::SlackServer::start().await;
    let dir = run_once(tempfile::tempdir().unwrap()).await;
    let data = dir.path().join("data");
    assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
    for file in ["documents.redb", "tree.redb", "documents.redb.format"] {
        assert_eq!(std::fs::metadata(data.join(file)).unwrap().permissions().mode() & 0o777, 0o600, "{file}");
    }

    // Emptied, as a full disk or a bad copy leaves it.
    std::fs::File::create(data.join("documents.redb")).unwrap();
    let mut daemon = common::Daemon::start_in(dir, "run", &format!("{}{}", common::FAST_SUPERVISOR, slack.config()));
    assert_eq!(daemon.wait_exit(std::time::Duration::from_secs(20)).await.code(), Some(2), "{}", daemon.log());
    assert!(!daemon.log().contains("child=processor"), "a child started on a lost store");
    let alert = slack.texts_containing("the store cannot be used").concat();
    assert!(alert.contains("documents.redb") && alert.contains("smarthomed store reset"), "{alert}");
    let dir = std::mem::replace(&mut daemon.dir, tempfile::tempdir().unwrap());

    let checked = store_command(dir.path(), &["check"]);
    assert_eq!(checked.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&checked.stderr).contains("missing or empty"));
    let reset = store_command(dir.path(), &["reset"]);
    assert!(reset.status.success(), "{}", String::from_utf8_lossy(&reset.stderr));
    assert!(String::from_utf8_lossy(&reset.stdout).contains("documents.redb.replaced-"));
    let dir = run_once(dir).await;
    assert!(store_command(dir.path(), &["check"]).status.success());
}

#[tokio::test]
async fn a_deleted_or_damaged_store_file_is_named_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let documents = EmbeddedDocuments::open(&data).unwrap();
        for n in 0..300 {
            let user = json!({"name": format!("user {n}"), "pad": "x".repeat(200)});
            documents.set("user_account", &format!("uid-{n}"), user.as_object().unwrap().clone()).await.unwrap();
        }
        EmbeddedTree::open(&data).unwrap();
    }
    std::fs::remove_file(data.join("tree.redb")).unwrap();
    let err = EmbeddedTree::open(&data).err().expect("a deleted tree was replaced");
    assert!(err.to_string().contains("tree.redb") && err.to_string().contains("missing"), "{err}");

    // 4 KiB of garbage in the middle of the documents.
    let path = data.join("documents.redb");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle..middle + 4096].iter_mut().enumerate().for_each(|(i, byte)| *byte = (i * 7 + 13) as u8);
    std::fs::write(&path, bytes).unwrap();
    let err = EmbeddedDocuments::open(&data).err().expect("a damaged store opened");
    assert!(err.to_string().contains("documents.redb"), "{err}");

    std::fs::write(dir.path().join("smarthomed.toml"), format!("[store]\ndir = {:?}\n", data.display().to_string()))
        .unwrap();
    let checked = store_command(dir.path(), &["check"]);
    assert_eq!(checked.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&checked.stderr).contains("documents.redb"));
    let reset = store_command(dir.path(), &["reset"]);
    assert!(reset.status.success(), "{}", String::from_utf8_lossy(&reset.stderr));
    EmbeddedDocuments::open(&data).expect("a fresh store after the reset");
}

#[tokio::test]
async fn a_backup_taken_while_the_daemon_runs_restores_the_store() {
    use common::app::{listen, next_json, publisher, send, wait_processor};
    let mut daemon = common::Daemon::start("run", "", common::FAST_SUPERVISOR);
    daemon.wait_children(&["broker", "processor", "syncer"]).await;
    daemon.wait_broker().await;
    let mut replies = listen(&daemon, "app", "webos/android/+").await;
    let app = publisher(&daemon, "app-pub").await;
    wait_processor(&app, &mut replies).await;
    let signup = |uid: &str| json!({"Producer": "android", "command": "signup", "UID": uid, "name": uid}).to_string();
    let signin = |uid: &str| json!({"Producer": "android", "command": "signin", "UID": uid}).to_string();
    for n in 0..100 {
        send(&app, "webos/server/info", signup(&format!("kept-{n}"))).await;
    }
    send(&app, "webos/server/info", signin("kept-99")).await;
    assert_eq!(next_json(&mut replies, "webos/android/info").await["name"], "kept-99");

    // Taken while more signups are being written.
    for n in 0..100 {
        send(&app, "webos/server/info", signup(&format!("during-{n}"))).await;
    }
    let backup = daemon.dir.path().join("backup");
    let taken = store_command(daemon.dir.path(), &["backup", backup.to_str().unwrap()]);
    assert!(taken.status.success(), "{}", String::from_utf8_lossy(&taken.stderr));
    assert!(String::from_utf8_lossy(&taken.stdout).contains("documents.redb"));
    let again = store_command(daemon.dir.path(), &["backup", backup.to_str().unwrap()]);
    assert!(!again.status.success(), "a backup was written over another");
    send(&app, "webos/server/info", signup("after-backup")).await;
    for refused in ["reset", "restore"] {
        let args: &[&str] = if refused == "reset" { &["reset"] } else { &["restore", backup.to_str().unwrap()] };
        let output = store_command(daemon.dir.path(), args);
        assert_eq!(output.status.code(), Some(1), "{refused} while the daemon runs");
        assert!(String::from_utf8_lossy(&output.stderr).contains("the daemon is running"), "{refused}");
    }
    send(&app, "webos/server/info", signin("after-backup")).await;
    assert_eq!(next_json(&mut replies, "webos/android/info").await["name"], "after-backup");
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(std::time::Duration::from_secs(20)).await.code(), Some(0));

    let dir = std::mem::replace(&mut daemon.dir, tempfile::tempdir().unwrap());
    let restored = store_command(dir.path(), &["restore", backup.to_str().unwrap()]);
    assert!(restored.status.success(), "{}", String::from_utf8_lossy(&restored.stderr));
    let daemon = common::Daemon::start_in(dir, "run", common::FAST_SUPERVISOR);
    daemon.wait_broker().await;
    let mut replies = listen(&daemon, "app", "webos/android/+").await;
    let app = publisher(&daemon, "app-pub").await;
    wait_processor(&app, &mut replies).await;
    send(&app, "webos/server/info", signin("kept-99")).await;
    assert_eq!(next_json(&mut replies, "webos/android/info").await["name"], "kept-99");
    send(&app, "webos/server/info", signin("after-backup")).await;
    assert_eq!(next_json(&mut replies, "webos/android/error").await["code"], "unknown_user");
}

#[tokio::test]
async fn a_store_damaged_under_the_running_daemon_is_never_served_from_after_a_restart() {
    use common::app::{listen, publisher, send, wait_processor};
    let slack = common::slack::SlackServer::start().await;
    let supervisor = "[supervisor]\nbackoff_initial_ms = 100\nbackoff_max_ms = 200\nrestart_limit = 2\n";
    let mut daemon = common::Daemon::start("run", "", &format!("{supervisor}{}", slack.config()));
    let processor = daemon.wait_children(&["broker", "processor", "syncer"]).await["processor"];
    daemon.wait_broker().await;
    let mut replies = listen(&daemon, "app", "webos/android/+").await;
    let app = publisher(&daemon, "app-pub").await;
    wait_processor(&app, &mut replies).await;
    for n in 0..300 {
        let signup =
            json!({"Producer": "android", "command": "signup", "UID": format!("uid-{n}"), "name": "x".repeat(300)});
        send(&app, "webos/server/info", signup.to_string()).await;
    }
    send(&app, "webos/server/info", r#"{"Producer":"android","command":"signin","UID":"uid-299"}"#).await;
    common::app::next_json(&mut replies, "webos/android/info").await;

    // Garbage over everything but the header, behind the running processor's back;
    // then the processor dies and its replacement opens the file.
    let path = daemon.dir.path().join("data/documents.redb");
    let mut bytes = std::fs::read(&path).unwrap();
    let end = bytes.len();
    bytes[4096..end].iter_mut().enumerate().for_each(|(i, byte)| *byte = (i * 7 + 13) as u8);
    std::fs::write(&path, bytes).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(processor as i32), nix::sys::signal::Signal::SIGKILL).unwrap();

    let status = daemon.wait_exit(std::time::Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(3), "{}", daemon.log());
    let exits = slack.texts_containing("processor exited unexpectedly").concat();
    assert!(exits.contains("documents.redb") && exits.contains("unreadable"), "{exits}");
    assert_eq!(slack.texts_containing("processor hit the restart limit").len(), 1);
}

/// A small tmpfs mounted for one test (root only, as CI runs), unmounted when dropped.
struct SmallFileSystem(std::path::PathBuf);

impl SmallFileSystem {
    fn mount(path: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(status.success(), "cannot mount a tmpfs at {}: this test needs root", path.display());
        Self(path.to_owned())
    }

    /// Writes a file until the file system is full; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.0.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0x5a; 16 * 1024];
        while file.write_all(&chunk).and_then(|()| file.sync_all()).is_ok() {}
        filler
    }
}

impl Drop for SmallFileSystem {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn writes_succeed_again_once_a_full_disk_is_freed_without_a_restart() {
    use common::app::{listen, next_json, publisher, send, wait_processor};
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallFileSystem::mount(&dir.path().join("data"), "4m");
    let daemon = common::Daemon::start_in(dir, "run", common::FAST_SUPERVISOR);
    let processor = daemon.wait_children(&["broker", "processor", "syncer"]).await["processor"];
    daemon.wait_broker().await;
    let mut replies = listen(&daemon, "app", "webos/android/+").await;
    let app = publisher(&daemon, "app-pub").await;
    wait_processor(&app, &mut replies).await;

    let filler = disk.fill();
    let mut refused = None;
    for n in 0..500 {
        let signup =
            json!({"Producer": "android", "command": "signup", "UID": format!("full-{n}"), "name": "x".repeat(4000)});
        send(&app, "webos/server/info", signup.to_string()).await;
        if let Ok(Some((topic, payload, _))) =
            tokio::time::timeout(std::time::Duration::from_millis(100), replies.recv()).await
        {
            refused = Some((topic, payload));
            break;
        }
    }
    let (topic, payload) = refused.expect("no write failed on a full disk");
    assert_eq!(topic, "webos/android/error");
    assert!(payload.contains("store_error"), "{payload}");

    std::fs::remove_file(filler).unwrap();
    let signin = r#"{"Producer":"android","command":"signin","UID":"after"}"#;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        send(&app, "webos/server/info", r#"{"Producer":"android","command":"signup","UID":"after","name":"back"}"#)
            .await;
        send(&app, "webos/server/info", signin).await;
        let reply =
            tokio::time::timeout(std::time::Duration::from_secs(2), next_json(&mut replies, "webos/android/info"))
                .await;
        if reply.is_ok_and(|reply| reply["name"] == "back") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "writes never succeeded again:\n{}", daemon.log());
    }
    assert_eq!(daemon.children()["processor"], processor, "the processor was restarted");
    assert!(daemon.log().contains("store reopened after an I/O error"), "{}", daemon.log());
}

mod firebase_tree {
    use std::time::Duration;

    use serde_json::json;
    use smarthomed::store::RealtimeTree;
    use smarthomed::store::firebase_tree::FirebaseTree;
    use smarthomed::store::service_account::FixedToken;

    use super::common::rtdb::RtdbServer;

    fn client(server: &RtdbServer, token: &str) -> FirebaseTree<FixedToken> {
        FirebaseTree::new(&server.url, FixedToken(Some(token.into())), Duration::from_secs(5)).unwrap()
    }

    #[tokio::test]
    async fn the_realtime_database_backend_conforms() {
        let server = RtdbServer::start().await;
        super::common::store_suite::tree(client(&server, &server.token)).await;
    }

    #[tokio::test]
    async fn a_refused_token_is_an_error_naming_the_path_not_the_token() {
        let server = RtdbServer::start().await;
        let err = client(&server, "wrong-token").get("smarthome/status").await.unwrap_err().to_string();
        assert!(err.contains("/smarthome/status") && err.contains("401") && err.contains("Unauthorized"), "{err}");
        assert!(!err.contains("wrong-token"));
    }

    #[tokio::test]
    async fn a_stalled_server_is_a_timeout_error_not_a_hang() {
        let server = RtdbServer::start().await;
        let tree =
            FirebaseTree::new(&server.url, FixedToken(Some(server.token.clone())), Duration::from_secs(1)).unwrap();
        server.stall_next(2);
        let stalled = tokio::time::timeout(Duration::from_secs(10), tree.set("server/notification", json!("x"))).await;
        let err = stalled.expect("a stalled write hung").unwrap_err().to_string();
        assert!(err.contains("/server/notification"), "{err}");

        let (events, mut heard) = tokio::sync::mpsc::channel(8);
        let stop = tokio_util::sync::CancellationToken::new();
        let listener = tokio::spawn({
            let (tree, stop) = (tree.clone(), stop.clone());
            async move { tree.watch("server/notification", events, stop).await }
        });
        // The stalled stream request is given up and tried again.
        let first = tokio::time::timeout(Duration::from_secs(20), heard.recv()).await.expect("the listener hung");
        assert_eq!(first.unwrap().value, None);
        tree.set("server/notification", json!("after")).await.unwrap();
        stop.cancel();
        let _ = listener.await;
    }

    #[tokio::test]
    async fn listeners_survive_drops_revoked_tokens_cancels_and_malformed_events() {
        let server = RtdbServer::start().await;
        let tree = client(&server, &server.token);
        server.put("smarthome/status", json!("000000000"));
        let mut watching = super::common::store_suite::watch_tree(&tree, "smarthome");
        assert_eq!(watching.next().await.value, Some(json!({"status": "000000000"})));

        for (troubles_so_far, (trouble, status)) in [
            ("drop", "100000000"),
            ("event: auth_revoked\ndata: credential is no longer valid\n\n", "200000000"),
            ("event: cancel\ndata: null\n\n", "300000000"),
            ("event: put\ndata: {not json\n\n", "400000000"),
        ]
        .into_iter()
        .enumerate()
        {
            if trouble == "drop" {
                server.drop_streams();
            } else {
                server.push_raw(trouble);
            }
            // A change made while the listener reconnects is not lost.
            server.put("smarthome/status", json!(status));
            assert_eq!(watching.next().await.value, Some(json!({"status": status})), "after {trouble:?}");
            super::common::wait_for(Duration::from_secs(10), "the reconnect", || {
                (server.streams_opened() > troubles_so_far + 1).then_some(())
            })
            .await;
        }
        watching.stop().await;
    }
}

mod service_account {
    use std::time::Duration;

    use serde_json::json;
    use smarthomed::store::RealtimeTree;
    use smarthomed::store::firebase_tree::FirebaseTree;
    use smarthomed::store::service_account::AccessTokens;
    use smarthomed::store::service_account::{DATABASE_SCOPES, ServiceAccountTokens};

    use super::common::google_token::{TokenServer, key_pair};
    use super::common::rtdb::RtdbServer;

    #[tokio::test]
    async fn tokens_are_minted_from_the_key_cached_and_refreshed() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = key_pair(dir.path());
        let server = TokenServer::start(&public, "ya29.first", 3600).await;
        let tokens = ServiceAccountTokens::from_file(&server.key_file(dir.path(), &private), DATABASE_SCOPES).unwrap();
        assert_eq!(tokens.token().await.unwrap().as_deref(), Some("ya29.first"));
        assert_eq!(tokens.token().await.unwrap().as_deref(), Some("ya29.first"));
        assert_eq!(server.minted(), 1, "a valid token is reused");
        tokens.invalidate();
        tokens.token().await.unwrap();
        assert_eq!(server.minted(), 2, "a refused token is replaced");

        let short = TokenServer::start(&public, "ya29.short", 60).await;
        let tokens = ServiceAccountTokens::from_file(&short.key_file(dir.path(), &private), DATABASE_SCOPES).unwrap();
        tokens.token().await.unwrap();
        tokens.token().await.unwrap();
        assert_eq!(short.minted(), 2, "a token about to expire is replaced before use");
    }

    #[tokio::test]
    async fn a_key_the_endpoint_refuses_is_a_clear_error_without_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (private, _) = key_pair(dir.path());
        let other = tempfile::tempdir().unwrap();
        let (_, unrelated_public) = key_pair(other.path());
        let server = TokenServer::start(&unrelated_public, "ya29.never", 3600).await;
        let tokens = ServiceAccountTokens::from_file(&server.key_file(dir.path(), &private), DATABASE_SCOPES).unwrap();
        let err = tokens.token().await.unwrap_err().to_string();
        assert!(err.contains("invalid_grant") && err.contains(&server.token_uri), "{err}");
        assert!(!err.contains("PRIVATE KEY"));
    }

    #[tokio::test]
    async fn unusable_key_files_are_clear_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent.json");
        let err = ServiceAccountTokens::from_file(&missing, DATABASE_SCOPES).err().unwrap().to_string();
        assert!(err.contains("absent.json") && err.contains("cannot read"), "{err}");
        for (name, content) in [
            ("not-json.json", "private_key: hunter2".to_string()),
            (
                "wrong-type.json",
                json!({"type": "authorized_user", "client_email": "x", "private_key": "y", "token_uri": "z"})
                    .to_string(),
            ),
            (
                "bad-pem.json",
                json!({"type": "service_account", "client_email": "x", "private_key": "hunter2", "token_uri": "z"})
                    .to_string(),
            ),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            let err = ServiceAccountTokens::from_file(&path, DATABASE_SCOPES).err().unwrap().to_string();
            assert!(err.contains(name), "{err}");
            assert!(!err.contains("hunter2"), "the key's content leaked: {err}");
        }
    }

    #[tokio::test]
    async fn the_realtime_database_is_used_with_minted_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = key_pair(dir.path());
        let database = RtdbServer::start().await;
        let server = TokenServer::start(&public, &database.token, 3600).await;
        let tokens = ServiceAccountTokens::from_file(&server.key_file(dir.path(), &private), DATABASE_SCOPES).unwrap();
        let tree = FirebaseTree::new(&database.url, tokens, Duration::from_secs(5)).unwrap();
        tree.set("server/notification", json!("none")).await.unwrap();
        assert_eq!(tree.get("server/notification").await.unwrap(), Some(json!("none")));
        assert_eq!(server.minted(), 1);
    }
}

mod firestore {
    use std::time::Duration;

    use serde_json::json;
    use smarthomed::store::firestore::FirestoreDocuments;
    use smarthomed::store::{DocumentEvent, DocumentStore};

    use super::common::firestore_emulator;
    use super::common::proxy::CuttableProxy;
    use super::common::store_suite::{documents, watch_documents};

    async fn store(host: &str, project: &str) -> FirestoreDocuments {
        FirestoreDocuments::emulator(project, host, Duration::from_secs(10))
            .await
            .expect("connect to the emulator")
            .with_listener_retry_delay(Duration::from_millis(200))
    }

    fn doc(value: serde_json::Value) -> smarthomed::store::Document {
        value.as_object().cloned().unwrap()
    }

    #[tokio::test]
    async fn the_firestore_backend_conforms() {
        let host = firestore_emulator::host();
        documents(store(host, &firestore_emulator::project()).await).await;
    }

    #[tokio::test]
    async fn listeners_resume_after_a_dropped_connection_without_losing_changes() {
        let host = firestore_emulator::host();
        let project = firestore_emulator::project();
        let proxy = CuttableProxy::start(host).await;
        let watched = store(&proxy.host, &project).await;
        let writer = store(host, &project).await;
        writer.set("modes", "kept", doc(json!({"modeNum": 1}))).await.unwrap();
        writer.set("modes", "doomed", doc(json!({"modeNum": 2}))).await.unwrap();

        let mut watching = watch_documents(&watched, "modes");
        let DocumentEvent::Snapshot(mut now) = watching.next().await else { panic!("no first snapshot") };
        assert_eq!(now.len(), 2);

        for round in 0..2 {
            let accepted = proxy.accepted();
            proxy.hold();
            // Changed while the listener is cut off: none of it may be lost.
            writer.set("modes", &format!("added-{round}"), doc(json!({"modeNum": 10 + round}))).await.unwrap();
            writer.set("modes", "kept", doc(json!({"modeNum": 100 + round}))).await.unwrap();
            if round == 0 {
                writer.delete("modes", "doomed").await.unwrap();
            }
            let expected = writer.list("modes").await.unwrap();
            // The listener notices and fails a reconnect.
            let refused = proxy.refused();
            super::common::wait_for(Duration::from_secs(10), "a refused reconnect", || {
                (proxy.refused() > refused).then_some(())
            })
            .await;
            assert_eq!(proxy.accepted(), accepted, "relayed while held");
            proxy.resume();
            // Apply everything heard until the listener's view equals the store's.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                if now == expected {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "round {round}: heard {now:?}, store has {expected:?}");
                match watching.next().await {
                    DocumentEvent::Snapshot(all) => now = all,
                    DocumentEvent::Set { id, document } => {
                        now.retain(|(known, _)| *known != id);
                        now.push((id, document));
                        now.sort_by(|a, b| a.0.cmp(&b.0));
                    }
                    DocumentEvent::Deleted { id } => now.retain(|(known, _)| *known != id),
                }
            }
            assert!(proxy.accepted() > accepted, "round {round}: the listener never reconnected");
        }
        watching.stop().await;
    }
}
