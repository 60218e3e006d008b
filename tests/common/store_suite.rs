//! The conformance suite of the store interfaces: the same checks for every backend.

use std::time::Duration;

use serde_json::{Value, json};
use smarthomed::store::{Document, DocumentEvent, DocumentStore, RealtimeTree, TreeEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn doc(value: Value) -> Document {
    value.as_object().cloned().expect("a JSON object")
}

async fn next<T>(events: &mut mpsc::Receiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("no event within 10 s")
        .expect("listener ended")
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
        store.set("appliance_alarm", id, doc(json!({"icon": "aircon_icon", "date": "2026.11.22.7.0.0", "inform": id}))).await.unwrap();
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

    let shutdown = CancellationToken::new();
    let (sender, mut events) = mpsc::channel(16);
    let watcher = {
        let store = store.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { store.watch("modes", sender, shutdown).await })
    };
    assert_eq!(next(&mut events).await, DocumentEvent::Snapshot(vec![]));
    let mode = doc(json!({"modeName": "아침", "modeNum": 1, "airconEnable": true}));
    store.set("modes", "morning", mode.clone()).await.unwrap();
    store.set("user_account", "uid-2", user.clone()).await.unwrap();
    store.delete("modes", "morning").await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match next(&mut events).await {
            DocumentEvent::Snapshot(_) => {}
            event => seen.push(event),
        }
    }
    assert_eq!(
        seen,
        [
            DocumentEvent::Set { id: "morning".into(), document: mode },
            DocumentEvent::Deleted { id: "morning".into() },
        ]
    );
    shutdown.cancel();
    watcher.await.unwrap().unwrap();
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

    let shutdown = CancellationToken::new();
    let (sender, mut events) = mpsc::channel(16);
    let watcher = {
        let tree = tree.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { tree.watch("server", sender, shutdown).await })
    };
    assert_eq!(next(&mut events).await, TreeEvent { value: None });
    tree.set("smarthome/status", json!("100000000")).await.unwrap();
    tree.set("server/notification", json!("none")).await.unwrap();
    assert_eq!(next(&mut events).await, TreeEvent { value: Some(json!({"notification": "none"})) });
    tree.set("server", json!({"notification": "가스벨브가 열려있어요."})).await.unwrap();
    assert_eq!(
        next(&mut events).await,
        TreeEvent { value: Some(json!({"notification": "가스벨브가 열려있어요."})) }
    );
    tree.delete("server/notification").await.unwrap();
    assert_eq!(next(&mut events).await, TreeEvent { value: None });
    shutdown.cancel();
    watcher.await.unwrap().unwrap();
}
