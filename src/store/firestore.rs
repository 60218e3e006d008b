//! The Firestore backend of [`DocumentStore`], over the `firestore` crate's gRPC client:
//! the collections the Android and webOS apps read (`user_account`, `modes`,
//! `schedule_mode`, `appliance_alarm`) stay where they are.
//!
//! Documents are plain JSON objects here and Firestore maps there: strings, numbers
//! (integers stay integers), booleans, null, arrays and maps round-trip unchanged.
//! Firestore-only types written by other clients (timestamps, references, geo points)
//! arrive as their JSON renderings; bytes, which JSON cannot hold, make a document
//! unreadable (an error naming it).
//!
//! Access tokens come from [`AccessTokens`]: minted from the service-account key at its
//! own `token_uri` in production, the emulator's conventional `owner` token otherwise.
//! Listeners use Firestore's `Listen` stream through the crate's listener, which
//! reconnects and resumes from the last resume token; [`Catchup`] turns its events into
//! the interface's snapshot-then-changes contract.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use firestore::errors::FirestoreError;
use firestore::gcloud_sdk::google::firestore::v1::listen_response::ResponseType;
use firestore::gcloud_sdk::google::firestore::v1::target_change::TargetChangeType;
use firestore::gcloud_sdk::google::firestore::v1::value::ValueType;
use firestore::gcloud_sdk::google::firestore::v1::{
    ArrayValue, Document as FirestoreDocument, MapValue, TargetChange, Value,
};
use firestore::gcloud_sdk::google_cloud_auth::credentials::{
    CacheableResource, Credentials, CredentialsProvider, EntityTag,
};
use firestore::gcloud_sdk::google_cloud_auth::errors::CredentialsError;
use firestore::{
    FirestoreDb, FirestoreDbOptions, FirestoreListenerParams, FirestoreListenerTarget, FirestoreMemListenStateStorage,
    FirestoreValue, FirestoreWritePrecondition,
};
use futures_util::TryStreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::service_account::{AccessTokens, FixedToken};
use super::{Document, DocumentEvent, DocumentStore, StoreError, check_name};

/// Listen events waiting for the watcher; the crate's listener waits while it is full.
const LISTEN_BACKLOG: usize = 64;
/// The one target each watcher's listener has.
const LISTEN_TARGET: u32 = 1;

/// How to reach Firestore.
pub enum Endpoint<A> {
    /// Google's service, authenticated with `tokens` (scopes
    /// [`FIRESTORE_SCOPES`](super::service_account::FIRESTORE_SCOPES)).
    Google { tokens: A },
    /// The Cloud Firestore emulator at `host:port`, which checks no credentials.
    Emulator { host: String },
}

#[derive(Clone)]
pub struct FirestoreDocuments {
    db: FirestoreDb,
    retry_delay: Duration,
    /// Drops the cached access token once Firestore has refused it.
    token_refused: Arc<dyn Fn() + Send + Sync>,
}

/// Serves Firestore the bearer header of the current access token; with no tokens, the
/// emulator's conventional `owner`.
struct BearerHeader<A> {
    tokens: Option<Arc<A>>,
}

impl<A> std::fmt::Debug for BearerHeader<A> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("BearerHeader")
    }
}

impl<A: AccessTokens> CredentialsProvider for BearerHeader<A> {
    async fn headers(&self, _: http::Extensions) -> Result<CacheableResource<http::HeaderMap>, CredentialsError> {
        let token = match &self.tokens {
            Some(tokens) => tokens.token().await.map_err(|err| CredentialsError::from_msg(true, err.to_string()))?,
            None => None,
        }
        .unwrap_or_else(|| "owner".into());
        let mut value = http::HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| CredentialsError::from_msg(false, "the access token is not a valid header value"))?;
        value.set_sensitive(true);
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value);
        // A new tag every time: the tokens are cached (and refreshed) by `AccessTokens`.
        Ok(CacheableResource::New { entity_tag: EntityTag::new(), data: headers })
    }

    async fn universe_domain(&self) -> Option<String> {
        None
    }
}

fn failed(operation: String, err: FirestoreError) -> StoreError {
    StoreError::Firestore { operation, source: Box::new(err) }
}

/// JSON to Firestore values, exactly: the crate's serde support drops nulls in arrays.
fn to_value(json: serde_json::Value) -> Value {
    use serde_json::Value as Json;
    let value_type = match json {
        Json::Null => ValueType::NullValue(0),
        Json::Bool(flag) => ValueType::BooleanValue(flag),
        Json::Number(number) => match number.as_i64() {
            Some(integer) => ValueType::IntegerValue(integer),
            None => ValueType::DoubleValue(number.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(text) => ValueType::StringValue(text),
        Json::Array(items) => ValueType::ArrayValue(ArrayValue { values: items.into_iter().map(to_value).collect() }),
        Json::Object(fields) => ValueType::MapValue(MapValue { fields: to_fields(fields) }),
    };
    Value { value_type: Some(value_type) }
}

fn to_fields(document: Document) -> HashMap<String, Value> {
    document.into_iter().map(|(name, value)| (name, to_value(value))).collect()
}

/// Firestore values to JSON, by the crate's serde support (timestamps become RFC 3339
/// text, geo points `{latitude, longitude}`, references their path). Only the fields:
/// the crate's whole-document decoding adds `_firestore_*` ones.
fn from_fields(fields: HashMap<String, Value>) -> Result<Document, FirestoreError> {
    Document::deserialize(FirestoreValue::from(Value { value_type: Some(ValueType::MapValue(MapValue { fields })) }))
}

fn is_refused_token(err: &FirestoreError) -> bool {
    matches!(err, FirestoreError::DatabaseError(database) if database.public.code == "Unauthenticated")
}

impl FirestoreDocuments {
    /// Connects to the database `(default)` of `project_id`. `request_timeout` bounds
    /// each request (not listeners, which stay open while nothing changes).
    pub async fn connect<A: AccessTokens>(
        project_id: &str,
        endpoint: Endpoint<A>,
        request_timeout: Duration,
    ) -> Result<Self, StoreError> {
        crate::tls::use_ring();
        let options = FirestoreDbOptions::new(project_id.to_owned()).with_request_timeout(request_timeout);
        let (options, tokens) = match endpoint {
            Endpoint::Google { tokens } => (options, Some(Arc::new(tokens))),
            Endpoint::Emulator { host } => {
                let url = if host.contains("://") { host } else { format!("http://{host}") };
                (options.with_firebase_api_url(url), None)
            }
        };
        let token_refused: Arc<dyn Fn() + Send + Sync> = match &tokens {
            Some(tokens) => {
                let tokens = tokens.clone();
                Arc::new(move || tokens.invalidate())
            }
            None => Arc::new(|| {}),
        };
        let credentials = Credentials::from(BearerHeader { tokens });
        let db = FirestoreDb::with_options_auth(options, credentials)
            .await
            .map_err(|err| failed(format!("connect to Firestore project {project_id}"), err))?;
        Ok(Self { db, retry_delay: Duration::from_secs(5), token_refused })
    }

    /// Connects to the Cloud Firestore emulator at `host:port`.
    pub async fn emulator(project_id: &str, host: &str, request_timeout: Duration) -> Result<Self, StoreError> {
        Self::connect::<FixedToken>(project_id, Endpoint::Emulator { host: host.to_owned() }, request_timeout).await
    }

    fn failed(&self, operation: String, err: FirestoreError) -> StoreError {
        if is_refused_token(&err) {
            (self.token_refused)();
        }
        failed(operation, err)
    }

    /// How long a listener waits before it reconnects (5 s by default).
    pub fn with_listener_retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    fn document_id<'a>(&self, collection: &str, name: &'a str) -> Option<&'a str> {
        let prefix = format!("{}/{collection}/", self.db.get_documents_path());
        name.strip_prefix(prefix.as_str()).filter(|id| !id.contains('/'))
    }

    fn decode(&self, collection: &str, document: &FirestoreDocument) -> Result<(String, Document), StoreError> {
        let id = self.document_id(collection, &document.name).ok_or_else(|| StoreError::Corrupt {
            location: document.name.clone(),
            reason: format!("not a document of {collection}"),
        })?;
        let fields = from_fields(document.fields.clone())
            .map_err(|err| StoreError::Corrupt { location: format!("{collection}/{id}"), reason: err.to_string() })?;
        Ok((id.to_owned(), fields))
    }
}

impl DocumentStore for FirestoreDocuments {
    async fn get(&self, collection: &str, id: &str) -> Result<Option<Document>, StoreError> {
        check_name("collection", collection)?;
        check_name("document id", id)?;
        match self.db.fluent().select().by_id_in(collection).one(id).await {
            Ok(Some(document)) => Ok(Some(self.decode(collection, &document)?.1)),
            Ok(None) | Err(FirestoreError::DataNotFoundError(_)) => Ok(None),
            Err(err) => Err(self.failed(format!("read {collection}/{id}"), err)),
        }
    }

    async fn set(&self, collection: &str, id: &str, document: Document) -> Result<(), StoreError> {
        check_name("collection", collection)?;
        check_name("document id", id)?;
        // An update without a field mask replaces the whole document, or creates it.
        self.db
            .fluent()
            .update()
            .in_col(collection)
            .document(FirestoreDocument {
                name: format!("{}/{collection}/{id}", self.db.get_documents_path()),
                fields: to_fields(document),
                ..Default::default()
            })
            .execute()
            .await
            .map(drop)
            .map_err(|err| self.failed(format!("write {collection}/{id}"), err))
    }

    async fn delete(&self, collection: &str, id: &str) -> Result<bool, StoreError> {
        check_name("collection", collection)?;
        check_name("document id", id)?;
        // Firestore deletes a missing document silently; the precondition tells us.
        match self
            .db
            .fluent()
            .delete()
            .from(collection)
            .precondition(FirestoreWritePrecondition::Exists(true))
            .document_id(id)
            .execute()
            .await
        {
            Ok(()) => Ok(true),
            Err(FirestoreError::DataNotFoundError(_)) => Ok(false),
            Err(err) => Err(self.failed(format!("delete {collection}/{id}"), err)),
        }
    }

    async fn list(&self, collection: &str) -> Result<Vec<(String, Document)>, StoreError> {
        check_name("collection", collection)?;
        let operation = || format!("list {collection}");
        // Listed in document-name order, which is id order within one collection.
        let documents: Vec<FirestoreDocument> = self
            .db
            .fluent()
            .list()
            .from(collection)
            .page_size(300)
            .stream_all_with_errors()
            .await
            .map_err(|err| self.failed(operation(), err))?
            .try_collect()
            .await
            .map_err(|err| self.failed(operation(), err))?;
        let mut listed =
            documents.iter().map(|document| self.decode(collection, document)).collect::<Result<Vec<_>, _>>()?;
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(listed)
    }

    async fn watch(
        &self,
        collection: &str,
        events: mpsc::Sender<DocumentEvent>,
        shutdown: CancellationToken,
    ) -> Result<(), StoreError> {
        check_name("collection", collection)?;
        let operation = || format!("listen to {collection}");
        let params = FirestoreListenerParams::new().with_retry_delay(self.retry_delay);
        let mut listener = self
            .db
            .create_listener_with_params(FirestoreMemListenStateStorage::new(), params)
            .await
            .map_err(|err| self.failed(operation(), err))?;
        self.db
            .fluent()
            .select()
            .from(collection)
            .listen()
            .add_target(FirestoreListenerTarget::new(LISTEN_TARGET), &mut listener)
            .map_err(|err| self.failed(operation(), err))?;
        let (heard_sender, mut heard) = mpsc::channel::<ResponseType>(LISTEN_BACKLOG);
        listener
            .start(move |event| {
                let heard_sender = heard_sender.clone();
                async move {
                    heard_sender
                        .send(event)
                        .await
                        .map_err(|_| Box::<dyn std::error::Error + Send + Sync>::from("the watcher has stopped"))
                }
            })
            .await
            .map_err(|err| self.failed(operation(), err))?;
        let control = listener.control_handle();

        let mut catchup = Catchup::default();
        let outcome = 'listening: loop {
            let response = tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                () = events.closed() => break Ok(()),
                response = heard.recv() => response,
            };
            let Some(response) = response else {
                // The listener's loop stopped on an error no retry can fix; shutdown says which.
                break Err(());
            };
            let heard = match response {
                ResponseType::TargetChange(change) => Heard::Target(TargetHeard::from(&change)),
                ResponseType::DocumentChange(change) => {
                    let Some(document) = change.document else { continue };
                    let Some(id) = self.document_id(collection, &document.name) else { continue };
                    let id = id.to_owned();
                    if !change.target_ids.contains(&(LISTEN_TARGET as i32)) {
                        if change.removed_target_ids.contains(&(LISTEN_TARGET as i32)) {
                            Heard::Gone { id }
                        } else {
                            continue;
                        }
                    } else {
                        match self.decode(collection, &document) {
                            Ok((_, document)) => Heard::Set { id, document },
                            // Another client wrote what JSON cannot hold (bytes): as good as gone.
                            Err(err) => {
                                warn!(error = %err, "a document that cannot be read counts as deleted");
                                Heard::Gone { id }
                            }
                        }
                    }
                }
                ResponseType::DocumentDelete(delete) => match self.document_id(collection, &delete.document) {
                    Some(id) => Heard::Gone { id: id.to_owned() },
                    None => continue,
                },
                ResponseType::DocumentRemove(remove) => match self.document_id(collection, &remove.document) {
                    Some(id) => Heard::Gone { id: id.to_owned() },
                    None => continue,
                },
                ResponseType::Filter(filter) => Heard::Count(filter.count as usize),
            };
            let reaction = catchup.hear(heard);
            if reaction.resync {
                debug!(collection, "the listener's documents disagree with Firestore's count; listening afresh");
                control.resync_target(FirestoreListenerTarget::new(LISTEN_TARGET));
            }
            for event in reaction.deliver {
                if events.send(event).await.is_err() {
                    break 'listening Ok(());
                }
            }
        };
        drop(heard);
        let stopped = listener.shutdown().await;
        match (outcome, stopped) {
            (Ok(()), _) => Ok(()),
            (Err(()), Err(err)) => Err(self.failed(operation(), err)),
            (Err(()), Ok(())) => Err(StoreError::Worker(format!("the Firestore listener of {collection} stopped"))),
        }
    }
}

/// What the listener heard, reduced to what [`Catchup`] needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Heard {
    Target(TargetHeard),
    Set {
        id: String,
        document: Document,
    },
    Gone {
        id: String,
    },
    /// Firestore's count of the documents the target matches (an existence filter).
    Count(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetHeard {
    /// The target is (again) on a stream: what follows brings it up to date.
    Added,
    /// Up to date: everything since the last `Added` has been sent.
    Current,
    /// What was sent before is void: the whole state follows.
    Reset,
    /// Off the stream; it is added back from scratch.
    Removed,
    Other,
}

impl From<&TargetChange> for TargetHeard {
    fn from(change: &TargetChange) -> Self {
        match TargetChangeType::try_from(change.target_change_type) {
            Ok(TargetChangeType::Add) => Self::Added,
            Ok(TargetChangeType::Current) => Self::Current,
            Ok(TargetChangeType::Reset) => Self::Reset,
            Ok(TargetChangeType::Remove) => Self::Removed,
            _ => Self::Other,
        }
    }
}

/// The snapshot-then-changes contract over Firestore's listen protocol, as plain state.
///
/// Whenever the target is (re)added or reset, the changes up to `CURRENT` are gathered
/// on a copy of the known documents (an empty one when Firestore starts from scratch:
/// after a reset, a removal or a resync). The first catch-up is delivered as a snapshot,
/// later ones as the changes between what was known and what was gathered, so a
/// reconnect neither loses a change nor delivers half of one. (The emulator resets its
/// targets on every change; Google's service resumes from the last resume token.)
/// Between catch-ups each change is delivered as it comes.
#[derive(Debug, Default)]
pub struct Catchup {
    known: BTreeMap<String, Document>,
    /// The documents being gathered until `CURRENT`, while catching up.
    gathering: Option<BTreeMap<String, Document>>,
    from_scratch: bool,
    snapshot_sent: bool,
}

/// What the watcher does after hearing something.
#[derive(Debug, Default, PartialEq)]
pub struct Reaction {
    pub deliver: Vec<DocumentEvent>,
    /// The documents held disagree with Firestore's count: listen afresh.
    pub resync: bool,
}

impl Catchup {
    pub fn hear(&mut self, heard: Heard) -> Reaction {
        let mut reaction = Reaction::default();
        match heard {
            Heard::Target(TargetHeard::Added) => {
                let start = if self.from_scratch { BTreeMap::new() } else { self.known.clone() };
                self.gathering = Some(start);
                self.from_scratch = false;
            }
            Heard::Target(TargetHeard::Reset) => self.gathering = Some(BTreeMap::new()),
            Heard::Target(TargetHeard::Removed) => self.from_scratch = true,
            Heard::Target(TargetHeard::Current) => {
                if let Some(gathered) = self.gathering.take() {
                    reaction.deliver = self.caught_up(gathered);
                }
            }
            Heard::Target(TargetHeard::Other) => {}
            Heard::Set { id, document } => match &mut self.gathering {
                Some(gathering) => {
                    gathering.insert(id, document);
                }
                None if self.known.get(&id) == Some(&document) => {}
                None => {
                    self.known.insert(id.clone(), document.clone());
                    reaction.deliver.push(DocumentEvent::Set { id, document });
                }
            },
            Heard::Gone { id } => match &mut self.gathering {
                Some(gathering) => {
                    gathering.remove(&id);
                }
                None => {
                    if self.known.remove(&id).is_some() {
                        reaction.deliver.push(DocumentEvent::Deleted { id });
                    }
                }
            },
            Heard::Count(count) => {
                let held = self.gathering.as_ref().unwrap_or(&self.known).len();
                if count != held {
                    self.from_scratch = true;
                    self.gathering = None;
                    reaction.resync = true;
                }
            }
        }
        reaction
    }

    fn caught_up(&mut self, gathered: BTreeMap<String, Document>) -> Vec<DocumentEvent> {
        let known = std::mem::replace(&mut self.known, gathered);
        if !std::mem::replace(&mut self.snapshot_sent, true) {
            let snapshot = self.known.iter().map(|(id, doc)| (id.clone(), doc.clone())).collect();
            return vec![DocumentEvent::Snapshot(snapshot)];
        }
        let deleted =
            known.keys().filter(|id| !self.known.contains_key(*id)).map(|id| DocumentEvent::Deleted { id: id.clone() });
        let set = self
            .known
            .iter()
            .filter(|(id, document)| known.get(*id) != Some(*document))
            .map(|(id, document)| DocumentEvent::Set { id: id.clone(), document: document.clone() });
        set.chain(deleted).collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn doc(value: Value) -> Document {
        value.as_object().cloned().unwrap()
    }

    fn set(id: &str, n: i64) -> Heard {
        Heard::Set { id: id.into(), document: doc(json!({"n": n})) }
    }

    fn events(catchup: &mut Catchup, heard: impl IntoIterator<Item = Heard>) -> Vec<DocumentEvent> {
        heard.into_iter().flat_map(|heard| catchup.hear(heard).deliver).collect()
    }

    #[tokio::test]
    async fn requests_carry_the_current_access_token_or_the_emulators() {
        let bearer = |provider: BearerHeader<FixedToken>| async move {
            let CacheableResource::New { data, .. } = provider.headers(http::Extensions::new()).await.unwrap() else {
                panic!("no headers")
            };
            let value = data[http::header::AUTHORIZATION].clone();
            assert!(value.is_sensitive(), "a token must never be logged");
            value.to_str().unwrap().to_owned()
        };
        let minted = BearerHeader { tokens: Some(Arc::new(FixedToken(Some("ya29.minted".into())))) };
        assert_eq!(bearer(minted).await, "Bearer ya29.minted");
        assert_eq!(bearer(BearerHeader { tokens: None }).await, "Bearer owner");
    }

    #[test]
    fn json_documents_round_trip_exactly() {
        let document = doc(json!({
            "name": "홍길동", "modeNum": 3, "big": i64::MAX, "ratio": 2.5, "whole": 2.0, "enabled": true,
            "none": null, "daysOfWeek": [false, true, null, 7, {"nested": ["x"]}], "empty": {}, "list": []
        }));
        assert_eq!(from_fields(to_fields(document.clone())).unwrap(), document);
    }

    #[test]
    fn firestore_only_values_arrive_as_their_json_renderings() {
        use firestore::gcloud_sdk::google::firestore::v1::value::ValueType as Typed;
        let typed = |value_type| super::Value { value_type: Some(value_type) };
        let fields = HashMap::from([
            (
                "at".to_owned(),
                typed(Typed::TimestampValue(firestore::gcloud_sdk::prost_types::Timestamp {
                    seconds: 1_795_000_000,
                    nanos: 0,
                })),
            ),
            (
                "where".to_owned(),
                typed(Typed::GeoPointValue(firestore::gcloud_sdk::google::r#type::LatLng {
                    latitude: 37.5,
                    longitude: 127.0,
                })),
            ),
            (
                "who".to_owned(),
                typed(Typed::ReferenceValue("projects/p/databases/(default)/documents/user_account/u".into())),
            ),
        ]);
        let document = from_fields(fields).unwrap();
        assert!(document["at"].as_str().is_some_and(|at| at.starts_with("2026-11-18T")), "{document:?}");
        assert_eq!(document["where"], json!({"latitude": 37.5, "longitude": 127.0}));
        assert_eq!(document["who"], "projects/p/databases/(default)/documents/user_account/u");
    }

    #[test]
    fn first_a_snapshot_then_each_change() {
        let mut catchup = Catchup::default();
        let first = events(
            &mut catchup,
            [Heard::Target(TargetHeard::Added), set("a", 1), set("b", 1), Heard::Target(TargetHeard::Current)],
        );
        assert_eq!(
            first,
            [DocumentEvent::Snapshot(vec![("a".into(), doc(json!({"n": 1}))), ("b".into(), doc(json!({"n": 1})))])]
        );
        let live = events(
            &mut catchup,
            [set("a", 2), set("a", 2), Heard::Gone { id: "b".into() }, Heard::Gone { id: "b".into() }],
        );
        assert_eq!(
            live,
            [
                DocumentEvent::Set { id: "a".into(), document: doc(json!({"n": 2})) },
                DocumentEvent::Deleted { id: "b".into() },
            ],
            "repeats are not delivered twice"
        );
    }

    #[test]
    fn a_resumed_stream_delivers_the_known_documents_plus_the_missed_changes() {
        let mut catchup = Catchup::default();
        events(
            &mut catchup,
            [Heard::Target(TargetHeard::Added), set("a", 1), set("b", 1), Heard::Target(TargetHeard::Current)],
        );
        let resumed = events(
            &mut catchup,
            [
                Heard::Target(TargetHeard::Added),
                set("c", 1),
                Heard::Gone { id: "a".into() },
                Heard::Target(TargetHeard::Current),
            ],
        );
        assert_eq!(
            resumed,
            [
                DocumentEvent::Set { id: "c".into(), document: doc(json!({"n": 1})) },
                DocumentEvent::Deleted { id: "a".into() },
            ],
            "delivered together at CURRENT, as the changes"
        );
    }

    #[test]
    fn a_reset_removal_or_wrong_count_starts_from_scratch() {
        for trouble in [
            vec![Heard::Target(TargetHeard::Added), Heard::Target(TargetHeard::Reset)],
            vec![Heard::Target(TargetHeard::Removed), Heard::Target(TargetHeard::Added)],
        ] {
            let mut catchup = Catchup::default();
            events(
                &mut catchup,
                [Heard::Target(TargetHeard::Added), set("a", 1), set("b", 1), Heard::Target(TargetHeard::Current)],
            );
            let mut heard = trouble;
            heard.extend([set("b", 2), Heard::Target(TargetHeard::Current)]);
            assert_eq!(
                events(&mut catchup, heard),
                [
                    DocumentEvent::Set { id: "b".into(), document: doc(json!({"n": 2})) },
                    DocumentEvent::Deleted { id: "a".into() },
                ],
                "what is not sent again is gone"
            );
        }

        let mut catchup = Catchup::default();
        events(
            &mut catchup,
            [Heard::Target(TargetHeard::Added), set("a", 1), set("b", 1), Heard::Target(TargetHeard::Current)],
        );
        assert_eq!(catchup.hear(Heard::Count(2)), Reaction::default(), "a matching count changes nothing");
        assert!(catchup.hear(Heard::Count(1)).resync, "a wrong count asks for a resync");
        let fresh = events(
            &mut catchup,
            [
                Heard::Target(TargetHeard::Removed),
                Heard::Target(TargetHeard::Added),
                set("a", 1),
                Heard::Target(TargetHeard::Current),
            ],
        );
        assert_eq!(fresh, [DocumentEvent::Deleted { id: "b".into() }]);
    }
}
