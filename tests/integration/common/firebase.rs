//! Everything `store.backend = "firebase"` talks to, for one test: the real Firestore
//! emulator (a project of its own), the Realtime Database stand-in, and the token
//! endpoint stand-in that a fresh service-account key names as its `token_uri`.
//! Also a second Firestore client, over the emulator's REST API, to write and read
//! documents as the apps do.

use std::path::PathBuf;

use serde_json::{Map, Value, json};
use tempfile::TempDir;

use super::firestore_emulator;
use super::google_token::{TokenServer, key_pair};
use super::rtdb::RtdbServer;

pub struct Firebase {
    pub rtdb: RtdbServer,
    pub tokens: TokenServer,
    pub project: String,
    pub emulator: &'static str,
    pub key_file: PathBuf,
    http: reqwest::Client,
    _dir: TempDir,
}

impl Firebase {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (private, public) = key_pair(dir.path());
        let rtdb = RtdbServer::start().await;
        let tokens = TokenServer::start(&public, &rtdb.token, 3600).await;
        let key_file = tokens.key_file(dir.path(), &private);
        smarthomed::tls::use_ring();
        Self {
            rtdb,
            tokens,
            project: firestore_emulator::project(),
            emulator: firestore_emulator::host(),
            key_file,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// Config for the daemon. It must come first in the daemon's extra config: its first
    /// line belongs to the `[store]` table the daemon's config opens.
    pub fn config(&self) -> String {
        format!(
            "backend = \"firebase\"\n[firebase]\nproject_id = \"{}\"\ncredentials = \"{}\"\ndatabase_url = \"{}\"\n\
             firestore_emulator_host = \"{}\"\ntimeout_secs = 5\n",
            self.project,
            self.key_file.display(),
            self.rtdb.url,
            self.emulator
        )
    }

    fn documents_url(&self) -> String {
        format!("http://{}/v1/projects/{}/databases/(default)/documents", self.emulator, self.project)
    }

    /// Writes a document as another Firestore client would.
    pub async fn write(&self, collection: &str, id: &str, document: &Value) {
        let fields: Map<String, Value> = document
            .as_object()
            .expect("a JSON object")
            .iter()
            .map(|(name, value)| (name.clone(), to_rest(value)))
            .collect();
        let response = self
            .http
            .patch(format!("{}/{collection}/{id}", self.documents_url()))
            .bearer_auth("owner")
            .json(&json!({ "fields": fields }))
            .send()
            .await
            .expect("the emulator answers");
        assert!(response.status().is_success(), "write refused: {}", response.text().await.unwrap_or_default());
    }

    /// The documents of `collection` as (id, fields), read as another client would.
    pub async fn list(&self, collection: &str) -> Vec<(String, Value)> {
        let response: Value = self
            .http
            .get(format!("{}/{collection}?pageSize=300", self.documents_url()))
            .bearer_auth("owner")
            .send()
            .await
            .expect("the emulator answers")
            .json()
            .await
            .expect("JSON");
        response["documents"]
            .as_array()
            .map(|documents| {
                documents
                    .iter()
                    .map(|document| {
                        let name = document["name"].as_str().expect("a name");
                        let id = name.rsplit('/').next().expect("an id").to_owned();
                        let fields = document["fields"].as_object().cloned().unwrap_or_default();
                        (id, from_rest(&json!({ "mapValue": { "fields": fields } })))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Plain JSON to the REST API's typed values.
fn to_rest(value: &Value) -> Value {
    match value {
        Value::Null => json!({ "nullValue": null }),
        Value::Bool(flag) => json!({ "booleanValue": flag }),
        Value::Number(number) if number.is_i64() => json!({ "integerValue": number.to_string() }),
        Value::Number(number) => json!({ "doubleValue": number }),
        Value::String(text) => json!({ "stringValue": text }),
        Value::Array(items) => json!({ "arrayValue": { "values": items.iter().map(to_rest).collect::<Vec<_>>() } }),
        Value::Object(fields) => {
            let fields: Map<String, Value> =
                fields.iter().map(|(name, value)| (name.clone(), to_rest(value))).collect();
            json!({ "mapValue": { "fields": fields } })
        }
    }
}

/// The REST API's typed values to plain JSON.
fn from_rest(value: &Value) -> Value {
    let Some((kind, inner)) = value.as_object().and_then(|typed| typed.iter().next()) else {
        return Value::Null;
    };
    match kind.as_str() {
        "integerValue" => {
            inner.as_str().and_then(|text| text.parse::<i64>().ok()).map(Value::from).unwrap_or(Value::Null)
        }
        "arrayValue" => Value::Array(
            inner["values"].as_array().map(|items| items.iter().map(from_rest).collect()).unwrap_or_default(),
        ),
        "mapValue" => Value::Object(
            inner["fields"]
                .as_object()
                .map(|fields| fields.iter().map(|(name, value)| (name.clone(), from_rest(value))).collect())
                .unwrap_or_default(),
        ),
        "nullValue" => Value::Null,
        _ => inner.clone(),
    }
}
