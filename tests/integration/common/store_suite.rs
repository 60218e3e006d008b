//! The conformance suite of the store interfaces: the same checks for every backend.

use std::time::Duration;

use serde_json::{Value, json};
use smarthomed::store::{Document, DocumentEvent, DocumentStore, RealtimeTree, StoreError, TreeEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn doc(value: Value) -> Document {
    value.as_object().cloned().expect("a JSON object")
}

/// A listener running in its own task until [`Watching::stop`].
pub struct Watching<E> {
    events: mpsc::Receiver<E>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), StoreError>>,
}

impl<E> Watching<E> {
    /// The next event, within 10 s.
    pub async fn next(&mut self) -> E {
        tokio::time::timeout(Duration::from_secs(10), self.events.recv())
            .await
            .expect("no event within 10 s")
            .expect("listener ended")
    }

    /// Stops the listener; it must end without an error.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("listener task").expect("listener failed");
    }
}

pub fn watch_tree<T: RealtimeTree>(tree: &T, path: &'static str) -> Watching<TreeEvent> {
    let (sender, events) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let (tree, stop) = (tree.clone(), shutdown.clone());
    let task = tokio::spawn(async move { tree.watch(path, sender, stop).await });
    Watching { events, shutdown, task }
}

pub fn watch_documents<S: DocumentStore>(store: &S, collection: &'static str) -> Watching<DocumentEvent> {
    let (sender, events) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let (store, stop) = (store.clone(), shutdown.clone());
    let task = tokio::spawn(async move { store.watch(collection, sender, stop).await });
    Watching { events, shutdown, task }
}

pub async fn documents<S: DocumentStore>(store: S) {
    let user = doc(json!({"name": "Hong-Gil-Dong"}));
    assert_eq!(store.get("user_account", "uid-1").await.unwrap(), None);
    store.set("user_account", "uid-1", user.clone()).await.unwrap();
    assert_eq!(store.get("user_account", "uid-1").await.unwrap(), Some(user.clone()));

    let replaced = doc(json!({"name": "홍길동", "extra": [1, 2.5, true, null, {"nested": "x"}]}));
    store.set("user_account", "uid-1", replaced.clone()).await.unwrap();
    assert_eq!(store.get("user_account", "uid-1").await.unwrap(), Some(replaced.clone()));

    for id in ["8236543210", "8236543209", "8236543211"] {
        store
            .set("appliance_alarm", id, doc(json!({"icon": "aircon_icon", "date": "2026.11.22.7.0.0", "inform": id})))
            .await
            .unwrap();
    }
    let ids: Vec<String> = store.list("appliance_alarm").await.unwrap().into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["8236543209", "8236543210", "8236543211"], "listed in id order");
    assert_eq!(store.list("user_account").await.unwrap().len(), 1, "collections do not mix");
    assert!(store.list("empty_collection").await.unwrap().is_empty());

    assert!(store.delete("appliance_alarm", "8236543210").await.unwrap());
    assert!(!store.delete("appliance_alarm", "8236543210").await.unwrap());
    assert_eq!(store.list("appliance_alarm").await.unwrap().len(), 2);

    for (collection, id) in [("user_account", "a/b"), ("", "x"), ("user_account", "")] {
        assert!(store.get(collection, id).await.is_err(), "{collection:?}/{id:?} accepted");
        assert!(store.set(collection, id, user.clone()).await.is_err());
    }

    let mut watching = watch_documents(&store, "modes");
    assert_eq!(watching.next().await, DocumentEvent::Snapshot(vec![]));
    let mode = doc(json!({"modeName": "아침", "modeNum": 1, "airconEnable": true}));
    store.set("modes", "morning", mode.clone()).await.unwrap();
    store.set("user_account", "uid-2", user.clone()).await.unwrap();
    store.delete("modes", "morning").await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match watching.next().await {
            DocumentEvent::Snapshot(_) => {}
            event => seen.push(event),
        }
    }
    assert_eq!(
        seen,
        [DocumentEvent::Set { id: "morning".into(), document: mode }, DocumentEvent::Deleted { id: "morning".into() },]
    );
    watching.stop().await;
}

pub async fn tree<T: RealtimeTree>(tree: T) {
    assert_eq!(tree.get("smarthome/status").await.unwrap(), None);
    tree.set("smarthome/status", json!("009060210")).await.unwrap();
    tree.set("sensor/hometemp", json!({"temp": 29.2, "humi": 60, "rain": "1"})).await.unwrap();
    assert_eq!(tree.get("/smarthome/status").await.unwrap(), Some(json!("009060210")));
    assert_eq!(tree.get("sensor/hometemp/rain").await.unwrap(), Some(json!("1")));

    let mut fields = serde_json::Map::new();
    fields.insert("rain".into(), json!(0));
    fields.insert("humi".into(), Value::Null);
    tree.update("sensor/hometemp", fields).await.unwrap();
    assert_eq!(tree.get("sensor/hometemp").await.unwrap(), Some(json!({"temp": 29.2, "rain": 0})));

    tree.delete("sensor").await.unwrap();
    assert_eq!(tree.get("sensor/hometemp").await.unwrap(), None);
    assert_eq!(tree.get("smarthome/status").await.unwrap(), Some(json!("009060210")), "siblings stay");
    assert!(tree.set("bad.key", json!(1)).await.is_err());
    assert!(tree.get("a/[0]").await.is_err());

    let mut watching = watch_tree(&tree, "server");
    assert_eq!(watching.next().await, TreeEvent { value: None });
    tree.set("smarthome/status", json!("100000000")).await.unwrap();
    tree.set("server/notification", json!("none")).await.unwrap();
    assert_eq!(watching.next().await, TreeEvent { value: Some(json!({"notification": "none"})) });
    tree.set("server", json!({"notification": "가스벨브가 열려있어요."})).await.unwrap();
    assert_eq!(watching.next().await, TreeEvent { value: Some(json!({"notification": "가스벨브가 열려있어요."})) });
    tree.delete("server/notification").await.unwrap();
    assert_eq!(watching.next().await, TreeEvent { value: None });
    watching.stop().await;
}
