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
        documents
            .set("user_account", "uid", json!({"name": "x"}).as_object().unwrap().clone())
            .await
            .unwrap();
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
