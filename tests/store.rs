//! The store interfaces' conformance suite on the embedded backend, and its durability.

mod common;

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
    async fn listeners_survive_drops_revoked_tokens_cancels_and_malformed_events() {
        let server = RtdbServer::start().await;
        let tree = client(&server, &server.token);
        server.put("smarthome/status", json!("000000000"));
        let mut watching = super::common::store_suite::watch_tree(&tree, "smarthome");
        assert_eq!(watching.next().await.value, Some(json!({"status": "000000000"})));

        let mut expected_streams = 1;
        for (trouble, status) in [
            ("drop", "100000000"),
            ("event: auth_revoked\ndata: credential is no longer valid\n\n", "200000000"),
            ("event: cancel\ndata: null\n\n", "300000000"),
            ("event: put\ndata: {not json\n\n", "400000000"),
        ] {
            if trouble == "drop" {
                server.drop_streams();
            } else {
                server.push_raw(trouble);
            }
            expected_streams += 1;
            // A change made while the listener reconnects is not lost.
            server.put("smarthome/status", json!(status));
            assert_eq!(watching.next().await.value, Some(json!({"status": status})), "after {trouble:?}");
            super::common::wait_for(Duration::from_secs(10), "the reconnect", || {
                (server.streams_opened() >= expected_streams).then_some(())
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
            // Long enough for the listener to notice and fail a reconnect or two.
            tokio::time::sleep(Duration::from_millis(600)).await;
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
