//! Retained messages: held in memory for the engine, written behind to a redb file.
//!
//! rmqtt's own persistent retainer stores each retained message through a queue, so a
//! subscriber that arrives right after the publish can miss it (neither retained yet
//! nor live): measured, the Home Assistant discovery test lost one of its 13 configs
//! that way under load. Here a retained message is in the engine's in-memory tree
//! before its publish is acknowledged, as in Mosquitto; a writer task copies the
//! changes to `<store.dir>/broker/retained.redb` (coalesced per topic, one transaction
//! per batch), and the next start reads them back before any client is let in. A crash
//! loses what the writer had not committed yet, a few milliseconds' worth.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use rmqtt::retain::{DefaultRetainStorage, RetainStorage};
use rmqtt::types::{Retain, TopicFilter, TopicName};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Topic -> (expiry as Unix milliseconds or 0 for none, the message in postcard).
const RETAINED: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("retained");

#[derive(Debug, thiserror::Error)]
pub enum RetainedError {
    #[error("cannot open the retained messages in {path}: {reason}")]
    Open { path: PathBuf, reason: String },
}

/// Changes not yet written: topic -> the message (expiry, bytes), or None for removed.
type Pending = HashMap<String, Option<(u64, Vec<u8>)>>;

/// The engine's retained messages (rmqtt's `RetainStorage`).
pub struct RetainedMessages {
    memory: DefaultRetainStorage,
    max_messages: usize,
    pending: Arc<Mutex<Pending>>,
    written: Arc<Notify>,
}

/// Copies [`RetainedMessages`]' changes to disk until its shutdown.
pub struct Writer {
    db: Database,
    pending: Arc<Mutex<Pending>>,
    written: Arc<Notify>,
}

impl RetainedMessages {
    /// Opens (or creates) `path` and loads what it holds; `max_messages` 0 is no limit.
    pub async fn open(path: &Path, max_messages: usize) -> Result<(Self, Writer), RetainedError> {
        let open = |reason: String| RetainedError::Open { path: path.to_owned(), reason };
        let db = Database::create(path).map_err(|err| open(err.to_string()))?;
        let memory = DefaultRetainStorage::new();
        let now = unix_ms(SystemTime::now());
        let stored = read_all(&db).map_err(open)?;
        for (topic, expires_at, bytes) in stored {
            if expires_at != 0 && expires_at <= now {
                continue;
            }
            match postcard::from_bytes::<Retain>(&bytes) {
                Ok(retain) => {
                    let left = (expires_at != 0).then(|| Duration::from_millis(expires_at - now));
                    memory
                        .set_with_timeout(&TopicName::from(topic.as_str()), retain, left)
                        .await
                        .map_err(|err| open(format!("{topic}: {err}")))?;
                }
                Err(err) => warn!(topic, "a stored retained message cannot be read, dropped: {err}"),
            }
        }
        let pending = Arc::new(Mutex::new(Pending::new()));
        let written = Arc::new(Notify::new());
        let writer = Writer { db, pending: pending.clone(), written: written.clone() };
        Ok((Self { memory, max_messages, pending, written }, writer))
    }
}

fn read_all(db: &Database) -> Result<Vec<(String, u64, Vec<u8>)>, String> {
    let read = db.begin_read().map_err(|err| err.to_string())?;
    let table = match read.open_table(RETAINED) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(err) => return Err(err.to_string()),
    };
    let mut all = Vec::new();
    for entry in table.iter().map_err(|err| err.to_string())? {
        let (topic, value) = entry.map_err(|err| err.to_string())?;
        let (expires_at, bytes) = value.value();
        all.push((topic.value().to_owned(), expires_at, bytes.to_vec()));
    }
    Ok(all)
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

#[async_trait::async_trait]
impl RetainStorage for RetainedMessages {
    fn enable(&self) -> bool {
        true
    }

    async fn set(&self, topic: &TopicName, retain: Retain, expiry_interval: Option<Duration>) -> rmqtt::Result<()> {
        // The engine passes its default message expiry, 0, for "never".
        let expiry = expiry_interval.filter(|interval| !interval.is_zero());
        let removal = retain.publish.payload.is_empty();
        if !removal && self.max_messages > 0 && self.count().await >= self.max_messages as isize {
            let exact = TopicFilter::from(topic.as_ref());
            if self.memory.get_message(&exact).await?.is_empty() {
                warn!(%topic, max = self.max_messages, "retained message not kept: broker.max_retained_messages reached");
                return Ok(());
            }
        }
        let stored = if removal {
            None
        } else {
            let expires_at = expiry.map_or(0, |expiry| unix_ms(SystemTime::now() + expiry));
            Some((expires_at, postcard::to_stdvec(&retain)?))
        };
        // One lock around both, so the disk gets the changes in the order memory did.
        let mut pending = self.pending.lock().await;
        self.memory.set_with_timeout(topic, retain, expiry).await?;
        pending.insert(topic.to_string(), stored);
        drop(pending);
        self.written.notify_one();
        Ok(())
    }

    async fn get(&self, topic_filter: &TopicFilter) -> rmqtt::Result<Vec<(TopicName, Retain)>> {
        self.memory.get_message(topic_filter).await
    }

    async fn count(&self) -> isize {
        self.memory.count().await
    }

    async fn max(&self) -> isize {
        self.memory.max().await
    }
}

impl Writer {
    /// Writes the changes as they come, and what is left when `shutdown` comes.
    pub async fn run(self, shutdown: CancellationToken) {
        let Self { db, pending, written } = self;
        let db = Arc::new(db);
        loop {
            let stopping = tokio::select! {
                () = written.notified() => false,
                () = shutdown.cancelled() => true,
            };
            let batch = std::mem::take(&mut *pending.lock().await);
            if !batch.is_empty() {
                let db = db.clone();
                let outcome = tokio::task::spawn_blocking(move || {
                    let written = write(&db, &batch);
                    (written, batch)
                })
                .await;
                match outcome {
                    Ok((Ok(()), _)) => {}
                    Ok((Err(err), batch)) => {
                        // Kept for the next write, unless a newer change to a topic came since.
                        warn!(topics = batch.len(), "cannot write retained messages to disk, will retry: {err}");
                        let mut pending = pending.lock().await;
                        for (topic, stored) in batch {
                            pending.entry(topic).or_insert(stored);
                        }
                    }
                    Err(err) => warn!("the retained messages' writer failed: {err}"),
                }
            }
            if stopping {
                return;
            }
        }
    }
}

fn write(db: &Database, batch: &Pending) -> Result<(), String> {
    let transaction = db.begin_write().map_err(|err| err.to_string())?;
    {
        let mut table = transaction.open_table(RETAINED).map_err(|err| err.to_string())?;
        for (topic, stored) in batch {
            match stored {
                Some((expires_at, bytes)) => {
                    table.insert(topic.as_str(), (*expires_at, bytes.as_slice())).map_err(|err| err.to_string())?;
                }
                None => {
                    table.remove(topic.as_str()).map_err(|err| err.to_string())?;
                }
            }
        }
    }
    transaction.commit().map_err(|err| err.to_string())
}
