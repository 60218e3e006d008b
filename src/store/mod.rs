//! Where smarthomed keeps its data, behind two interfaces with one owner each:
//!
//! - [`DocumentStore`]: collections of JSON documents (`user_account`, `modes`,
//!   `schedule_mode`, `appliance_alarm`), as in Firestore. Owned by the processor.
//! - [`RealtimeTree`]: one JSON tree addressed by slash paths (`smarthome/status`,
//!   `server/notification`), as in the Firebase Realtime Database. Owned by the syncer.
//!
//! Both report failures as [`StoreError`] (never a panic, never a silent default) and
//! offer change listeners. A listener is a future the caller runs under its own
//! cancellation token; it first delivers a snapshot, then changes, and after any gap
//! in which it may have missed changes it delivers a fresh snapshot, so a listener
//! never silently loses an update. [`embedded`] is the default backend.

pub mod embedded;
pub mod firebase_tree;
pub mod firestore;
pub mod service_account;
pub mod tree;

use std::future::Future;

use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::protocol::names;

pub type Document = Map<String, Value>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {source}")]
    Open { path: std::path::PathBuf, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("store operation failed: {0}")]
    Backend(#[from] redb::Error),
    #[error("stored data at {location} is unreadable: {reason}")]
    Corrupt { location: String, reason: String },
    #[error(
        "the store file {path} is missing or empty, but it held data before (its format marker is there): \
         restore it from a backup, or start afresh with `smarthomed store reset`"
    )]
    Lost { path: std::path::PathBuf },
    #[error("the store file {path} has format {found:?}; this smarthomed reads format {supported}")]
    Format { path: std::path::PathBuf, found: String, supported: u32 },
    #[error(transparent)]
    InvalidName(names::NameError),
    #[error("the store's worker thread failed: {0}")]
    Worker(String),
    #[error("service-account key {path}: {reason}")]
    Credentials { path: std::path::PathBuf, reason: String },
    #[error("{operation} failed: {source}")]
    Firestore { operation: String, source: Box<::firestore::errors::FirestoreError> },
    #[error("{operation} failed: {message}")]
    Remote {
        operation: String,
        /// The HTTP status, when the service answered.
        status: Option<u16>,
        message: String,
    },
}

/// What a document listener hears.
#[derive(Debug, Clone, PartialEq)]
pub enum DocumentEvent {
    /// Every document of the collection, by id: first, and after any gap.
    Snapshot(Vec<(String, Document)>),
    Set {
        id: String,
        document: Document,
    },
    Deleted {
        id: String,
    },
}

/// What a tree listener hears: the value now at its path (`None`: nothing there).
#[derive(Debug, Clone, PartialEq)]
pub struct TreeEvent {
    pub value: Option<Value>,
}

pub trait DocumentStore: Clone + Send + Sync + 'static {
    fn get(&self, collection: &str, id: &str) -> impl Future<Output = Result<Option<Document>, StoreError>> + Send;
    fn set(
        &self,
        collection: &str,
        id: &str,
        document: Document,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Whether there was a document to delete.
    fn delete(&self, collection: &str, id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Every document of `collection`, ordered by id.
    fn list(&self, collection: &str) -> impl Future<Output = Result<Vec<(String, Document)>, StoreError>> + Send;
    /// Sends the collection's events to `events` until `shutdown` or until the
    /// receiver is dropped.
    fn watch(
        &self,
        collection: &str,
        events: mpsc::Sender<DocumentEvent>,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

pub trait RealtimeTree: Clone + Send + Sync + 'static {
    fn get(&self, path: &str) -> impl Future<Output = Result<Option<Value>, StoreError>> + Send;
    /// Replaces what is at `path` (JSON null deletes it).
    fn set(&self, path: &str, value: Value) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Sets each child of `path` named in `fields`, leaving the others.
    fn update(&self, path: &str, fields: Map<String, Value>) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Removes what is at `path`: a set to JSON null, in every backend.
    fn delete(&self, path: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.set(path, Value::Null)
    }
    /// Sends the value at `path` first and after every change at, above or below it,
    /// until `shutdown` or until the receiver is dropped.
    fn watch(
        &self,
        path: &str,
        events: mpsc::Sender<TreeEvent>,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Collection and document ids follow Firestore's rules ([`names`]), so that data moves
/// between the backends unchanged.
pub fn check_name(what: &'static str, value: &str) -> Result<(), StoreError> {
    names::check_name(what, value).map_err(StoreError::InvalidName)
}
