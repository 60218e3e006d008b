//! The embedded backend: redb, an ACID key-value store in one file, so a crash at any
//! point leaves the last committed state readable. Documents live in
//! `<store.dir>/documents.redb` and the tree in `<store.dir>/tree.redb`: one file per
//! owning process, since a redb file is opened by one process at a time.
//!
//! redb is synchronous; every call runs on tokio's blocking pool. Change listeners
//! hear of commits through a broadcast channel; a listener that falls behind it
//! (lagged) re-reads a snapshot instead of losing changes.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::{Map, Value};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::tree::{self, TreePath};
use super::{Document, DocumentEvent, DocumentStore, RealtimeTree, StoreError, TreeEvent, check_name};

const DOCUMENTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("documents");
const TREE: TableDefinition<&str, &[u8]> = TableDefinition::new("tree");
const TREE_ROOT_KEY: &str = "root";
/// Changes a listener may fall behind by before it re-reads a snapshot.
const CHANGE_BACKLOG: usize = 256;

/// The store format this build writes; kept beside each file as `<file>.format`.
pub const FORMAT: u32 = 1;
/// The embedded backend's files: documents (the processor's) and the tree (the syncer's).
pub const FILES: [&str; 2] = ["documents.redb", "tree.redb"];

fn format_marker(db: &Path) -> PathBuf {
    let mut marker = db.as_os_str().to_owned();
    marker.push(".format");
    PathBuf::from(marker)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Open { path: path.to_owned(), source: Box::new(source) }
}

/// Opens (or on a first start creates) `dir/file`, readable by its owner only.
///
/// A store once created is never silently replaced: its format marker stays beside it,
/// so a file that is then missing or empty is [`StoreError::Lost`], not a first start.
/// Every open checks the file's integrity, so a file damaged outside redb is
/// [`StoreError::Corrupt`] at start rather than a panic on first access.
fn open(dir: &Path, file: &str) -> Result<Arc<Database>, StoreError> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_error(dir))?;
    // A directory chosen by the operator may not be ours to change: the files in it
    // are private all the same.
    if let Err(err) = restrict(dir, 0o700) {
        tracing::warn!("cannot make the store directory private: {err}");
    }
    let path = dir.join(file);
    let marker = format_marker(&path);
    let existing = match std::fs::metadata(&path) {
        Ok(metadata) => metadata.len() > 0,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => false,
        Err(err) => return Err(io_error(&path)(err)),
    };
    match std::fs::read_to_string(&marker) {
        Ok(format) => {
            let format = format.trim();
            if format != FORMAT.to_string() {
                return Err(StoreError::Format { path, found: format.chars().take(20).collect(), supported: FORMAT });
            }
            if !existing {
                return Err(StoreError::Lost { path });
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_error(&marker)(err)),
    }
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&path).map_err(io_error(&path))?;
    restrict(&path, 0o600)?;
    let db = writer_builder().create(&path).map_err(|err| match err {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason)) => {
            StoreError::Corrupt { location: path.display().to_string(), reason }
        }
        other => StoreError::Open { path: path.clone(), source: Box::new(other) },
    })?;
    // Written once the file holds a database: from here on, its absence is a loss.
    if !marker.exists() {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&marker)
            .and_then(|mut out| out.write_all(format!("{FORMAT}\n").as_bytes()).and_then(|()| out.sync_all()))
            .map_err(io_error(&marker))?;
    }
    Ok(Arc::new(db))
}

/// How the daemon opens its files: one writer, and any number of read-only handles in
/// other processes (`smarthomed store backup`) reading consistent snapshots meanwhile;
/// every open checks the file's integrity.
fn writer_builder() -> redb::Builder {
    let mut builder = Database::builder();
    builder.set_concurrency_mode(redb::ConcurrencyMode::SingleWriter).set_check_integrity_on_open(true);
    builder
}

/// The documents of `collection`, read from another process while the daemon may run
/// (`smarthomed status`); none when the store has no documents file yet.
pub fn read_collection(dir: &Path, collection: &str) -> Result<Vec<(String, Document)>, StoreError> {
    let path = dir.join("documents.redb");
    if !path.exists() {
        return Ok(Vec::new());
    }
    let db = Database::builder()
        .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
        .open_read_only(&path)
        .map_err(|err| StoreError::Open { path: path.clone(), source: Box::new(err) })?;
    EmbeddedDocuments::list_in(&db.begin_read().map_err(backend)?, collection)
}

/// Writes a consistent copy of every file of the store in `dir` into `to` (a new or
/// empty directory), while the daemon runs: each file is read in one read transaction,
/// a snapshot that commits made meanwhile do not change. Returns the files written.
pub fn backup(dir: &Path, to: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let occupied = std::fs::read_dir(to).map(|mut entries| entries.next().is_some()).unwrap_or(false);
    if occupied {
        return Err(StoreError::Open {
            path: to.to_owned(),
            source: "the backup directory must be new or empty".into(),
        });
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(to).map_err(io_error(to))?;
    let mut written = Vec::new();
    for file in FILES {
        let from = dir.join(file);
        if !from.exists() {
            continue;
        }
        let source = Database::builder()
            .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
            .open_read_only(&from)
            .map_err(|err| StoreError::Open { path: from.clone(), source: Box::new(err) })?;
        let snapshot = source.begin_read().map_err(backend)?;
        let copy = open(to, file)?;
        let write = copy.begin_write().map_err(backend)?;
        if file == "documents.redb" {
            copy_table(&snapshot, &write, DOCUMENTS)?;
        } else {
            copy_table(&snapshot, &write, TREE)?;
        }
        write.commit().map_err(backend)?;
        written.push(to.join(file));
    }
    Ok(written)
}

fn copy_table<K: redb::Key + 'static>(
    snapshot: &redb::ReadTransaction,
    write: &redb::WriteTransaction,
    table: TableDefinition<K, &[u8]>,
) -> Result<(), StoreError> {
    let source = match snapshot.open_table(table) {
        Ok(source) => source,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(err) => return Err(backend(err)),
    };
    let mut target = write.open_table(table).map_err(backend)?;
    for entry in source.iter().map_err(backend)? {
        let (key, value) = entry.map_err(backend)?;
        target.insert(key.value(), value.value()).map_err(backend)?;
    }
    Ok(())
}

/// Puts a backup made by [`backup`] in place of the store in `dir`, with the daemon
/// stopped: the backup is checked first, the current files are moved aside as
/// [`reset`] does. Returns the files restored.
pub fn restore(from: &Path, dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let files: Vec<&str> = FILES.into_iter().filter(|file| from.join(file).exists()).collect();
    if files.is_empty() {
        return Err(StoreError::Open {
            path: from.to_owned(),
            source: "holds no store files (documents.redb, tree.redb)".into(),
        });
    }
    for file in &files {
        open(from, file)?;
    }
    reset(dir)?;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_error(dir))?;
    let mut restored = Vec::new();
    for file in files {
        let (source, target) = (from.join(file), dir.join(file));
        std::fs::copy(&source, &target).map_err(io_error(&target))?;
        restrict(&target, 0o600)?;
        open(dir, file)?;
        restored.push(target);
    }
    Ok(restored)
}

/// Takes group and other permissions away from `path` if it has any.
fn restrict(path: &Path, mode: u32) -> Result<(), StoreError> {
    let metadata = std::fs::metadata(path).map_err(io_error(path))?;
    if metadata.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_error(path))?;
    }
    Ok(())
}

/// Checks every embedded file in `dir` as the children will open it (lost, wrong
/// format, corrupt), then closes it: the supervisor's check before it starts anything,
/// and `smarthomed store check`. Returns the files checked.
pub fn check(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    FILES
        .iter()
        .map(|file| {
            open(dir, file)?;
            Ok(dir.join(file))
        })
        .collect()
}

/// Starts the store afresh: moves each file (and its marker) aside as
/// `<file>.replaced-<unix time>`, so that the next start creates it anew. Refused while
/// the daemon has the store open. Returns what was moved.
pub fn reset(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut moved = Vec::new();
    for file in FILES {
        let path = dir.join(file);
        if std::fs::metadata(&path).is_ok_and(|metadata| metadata.len() > 0) {
            // Opening takes redb's lock: a running daemon holds it. The integrity check
            // keeps a damaged file (what a reset is often for) from panicking redb.
            let opened = writer_builder().create(&path);
            if let Err(redb::DatabaseError::DatabaseAlreadyOpen) = opened {
                return Err(StoreError::Open {
                    path,
                    source: "the daemon is running: stop it first (systemctl stop smarthomed)".into(),
                });
            }
        }
        for from in [format_marker(&path), path] {
            if from.exists() {
                let mut to = from.as_os_str().to_owned();
                to.push(format!(".replaced-{stamp}"));
                std::fs::rename(&from, &to).map_err(io_error(&from))?;
                moved.push(PathBuf::from(to));
            }
        }
    }
    Ok(moved)
}

/// One redb file, reopened after an I/O error. After a failed write (a full disk, a
/// file system turned read-only) redb refuses every later transaction until the
/// database is closed and opened again; the handle forgets the failed database, and the
/// next operation opens the file anew, so writes succeed again once the cause is gone.
struct Handle {
    dir: PathBuf,
    file: &'static str,
    db: std::sync::Mutex<Option<Arc<Database>>>,
}

/// How long a reopen waits for operations still holding the failed database (redb's
/// file lock is released only when its last handle is dropped).
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Handle {
    fn open(dir: &Path, file: &'static str) -> Result<Arc<Self>, StoreError> {
        let db = open(dir, file)?;
        Ok(Arc::new(Self { dir: dir.to_owned(), file, db: std::sync::Mutex::new(Some(db)) }))
    }

    /// The open database, opening the file again if the last one failed.
    fn get(&self) -> Result<Arc<Database>, StoreError> {
        let mut slot = self.db.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        let deadline = std::time::Instant::now() + REOPEN_WAIT;
        let db = loop {
            match open(&self.dir, self.file) {
                Err(StoreError::Open { source, .. })
                    if matches!(source.downcast_ref(), Some(redb::DatabaseError::DatabaseAlreadyOpen))
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                opened => break opened?,
            }
        };
        tracing::info!(file = self.file, "store reopened after an I/O error");
        *slot = Some(db.clone());
        Ok(db)
    }

    /// Runs `work` on the blocking pool; an I/O failure makes the next call reopen.
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let handle = self.clone();
        tokio::task::spawn_blocking(move || {
            let db = handle.get()?;
            let result = work(&db);
            if let Err(StoreError::Backend(redb::Error::Io(_) | redb::Error::PreviousIo)) = &result {
                let mut slot = handle.db.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if slot.as_ref().is_some_and(|current| Arc::ptr_eq(current, &db)) {
                    tracing::warn!(file = handle.file, "store I/O failed: it is opened anew at its next use");
                    *slot = None;
                }
            }
            result
        })
        .await
        .map_err(|err| StoreError::Worker(err.to_string()))?
    }
}

fn backend(err: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(err.into())
}

#[derive(Clone)]
pub struct EmbeddedDocuments {
    db: Arc<Handle>,
    changes: broadcast::Sender<(String, DocumentEvent)>,
}

impl EmbeddedDocuments {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = Handle::open(dir, "documents.redb")?;
        let write = db.get()?.begin_write().map_err(backend)?;
        write.open_table(DOCUMENTS).map_err(backend)?;
        write.commit().map_err(backend)?;
        Ok(Self { db, changes: broadcast::channel(CHANGE_BACKLOG).0 })
    }

    fn list_blocking(db: &Database, collection: &str) -> Result<Vec<(String, Document)>, StoreError> {
        Self::list_in(&db.begin_read().map_err(backend)?, collection)
    }

    fn list_in(read: &redb::ReadTransaction, collection: &str) -> Result<Vec<(String, Document)>, StoreError> {
        let table = read.open_table(DOCUMENTS).map_err(backend)?;
        let mut documents = Vec::new();
        for entry in table.range((collection, "")..).map_err(backend)? {
            let (key, value) = entry.map_err(backend)?;
            let (entry_collection, id) = key.value();
            if entry_collection != collection {
                break;
            }
            documents.push((id.to_owned(), decode_document(collection, id, value.value())?));
        }
        Ok(documents)
    }
}

fn decode_document(collection: &str, id: &str, bytes: &[u8]) -> Result<Document, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|err| StoreError::Corrupt { location: format!("{collection}/{id}"), reason: err.to_string() })
}

impl DocumentStore for EmbeddedDocuments {
    async fn get(&self, collection: &str, id: &str) -> Result<Option<Document>, StoreError> {
        check_name("collection", collection)?;
        check_name("document id", id)?;
        let (collection, id) = (collection.to_owned(), id.to_owned());
        self.db
            .run(move |db| {
                let read = db.begin_read().map_err(backend)?;
                let table = read.open_table(DOCUMENTS).map_err(backend)?;
                let found = table.get((collection.as_str(), id.as_str())).map_err(backend)?;
                found.map(|bytes| decode_document(&collection, &id, bytes.value())).transpose()
            })
            .await
    }

    async fn set(&self, collection: &str, id: &str, document: Document) -> Result<(), StoreError> {
        check_name("collection", collection)?;
        check_name("document id", id)?;
        let bytes = serde_json::to_vec(&document)
            .map_err(|err| StoreError::Corrupt { location: format!("{collection}/{id}"), reason: err.to_string() })?;
        let (owned_collection, owned_id) = (collection.to_owned(), id.to_owned());
        self.db
            .run(move |db| {
                let write = db.begin_write().map_err(backend)?;
                {
                    let mut table = write.open_table(DOCUMENTS).map_err(backend)?;
                    table.insert((owned_collection.as_str(), owned_id.as_str()), bytes.as_slice()).map_err(backend)?;
                }
                write.commit().map_err(backend)
            })
            .await?;
        let _ = self.changes.send((collection.to_owned(), DocumentEvent::Set { id: id.to_owned(), document }));
        Ok(())
    }

    async fn delete(&self, collection: &str, id: &str) -> Result<bool, StoreError> {
        check_name("collection", collection)?;
        check_name("document id", id)?;
        let (owned_collection, owned_id) = (collection.to_owned(), id.to_owned());
        let existed = self
            .db
            .run(move |db| {
                let write = db.begin_write().map_err(backend)?;
                let existed = {
                    let mut table = write.open_table(DOCUMENTS).map_err(backend)?;
                    let removed = table.remove((owned_collection.as_str(), owned_id.as_str())).map_err(backend)?;
                    removed.is_some()
                };
                write.commit().map_err(backend)?;
                Ok(existed)
            })
            .await?;
        if existed {
            let _ = self.changes.send((collection.to_owned(), DocumentEvent::Deleted { id: id.to_owned() }));
        }
        Ok(existed)
    }

    async fn list(&self, collection: &str) -> Result<Vec<(String, Document)>, StoreError> {
        check_name("collection", collection)?;
        let collection = collection.to_owned();
        self.db.run(move |db| Self::list_blocking(db, &collection)).await
    }

    async fn watch(
        &self,
        collection: &str,
        events: mpsc::Sender<DocumentEvent>,
        shutdown: CancellationToken,
    ) -> Result<(), StoreError> {
        check_name("collection", collection)?;
        // Subscribe before reading, so no commit falls between snapshot and changes.
        let mut changes = self.changes.subscribe();
        let mut pending = Some(DocumentEvent::Snapshot(self.list(collection).await?));
        loop {
            if let Some(event) = pending.take()
                && events.send(event).await.is_err()
            {
                return Ok(());
            }
            let change = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = events.closed() => return Ok(()),
                change = changes.recv() => change,
            };
            pending = match change {
                Ok((changed, event)) if changed == collection => Some(event),
                Ok(_) => None,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    Some(DocumentEvent::Snapshot(self.list(collection).await?))
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            };
        }
    }
}

#[derive(Clone)]
pub struct EmbeddedTree {
    db: Arc<Handle>,
    changes: broadcast::Sender<TreePath>,
}

impl EmbeddedTree {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = Handle::open(dir, "tree.redb")?;
        let write = db.get()?.begin_write().map_err(backend)?;
        write.open_table(TREE).map_err(backend)?;
        write.commit().map_err(backend)?;
        Ok(Self { db, changes: broadcast::channel(CHANGE_BACKLOG).0 })
    }

    fn read_root(table: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Value, StoreError> {
        match table.get(TREE_ROOT_KEY).map_err(backend)? {
            Some(bytes) => serde_json::from_slice(bytes.value())
                .map_err(|err| StoreError::Corrupt { location: "tree".into(), reason: err.to_string() }),
            None => Ok(Value::Null),
        }
    }

    /// Applies `change` to the whole tree in one write transaction.
    async fn modify(&self, path: TreePath, change: impl FnOnce(&mut Value) + Send + 'static) -> Result<(), StoreError> {
        self.db
            .run(move |db| {
                let write = db.begin_write().map_err(backend)?;
                {
                    let mut table = write.open_table(TREE).map_err(backend)?;
                    let mut root = Self::read_root(&table)?;
                    change(&mut root);
                    let bytes = serde_json::to_vec(&root)
                        .map_err(|err| StoreError::Corrupt { location: "tree".into(), reason: err.to_string() })?;
                    table.insert(TREE_ROOT_KEY, bytes.as_slice()).map_err(backend)?;
                }
                write.commit().map_err(backend)
            })
            .await?;
        let _ = self.changes.send(path);
        Ok(())
    }

    async fn read(&self, path: &TreePath) -> Result<Option<Value>, StoreError> {
        let path = path.clone();
        self.db
            .run(move |db| {
                let read = db.begin_read().map_err(backend)?;
                let table = read.open_table(TREE).map_err(backend)?;
                let root = Self::read_root(&table)?;
                Ok(tree::get(&root, &path).cloned())
            })
            .await
    }
}

impl RealtimeTree for EmbeddedTree {
    async fn get(&self, path: &str) -> Result<Option<Value>, StoreError> {
        self.read(&TreePath::parse(path)?).await
    }

    async fn set(&self, path: &str, value: Value) -> Result<(), StoreError> {
        let path = TreePath::parse(path)?;
        let at = path.clone();
        self.modify(path, move |root| tree::set(root, &at, value)).await
    }

    async fn update(&self, path: &str, fields: Map<String, Value>) -> Result<(), StoreError> {
        let path = TreePath::parse(path)?;
        let children = fields
            .into_iter()
            .map(|(key, value)| Ok((path.join(&key)?, value)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.modify(path, move |root| {
            for (child, value) in children {
                tree::set(root, &child, value);
            }
        })
        .await
    }

    async fn watch(
        &self,
        path: &str,
        events: mpsc::Sender<TreeEvent>,
        shutdown: CancellationToken,
    ) -> Result<(), StoreError> {
        let path = TreePath::parse(path)?;
        let mut changes = self.changes.subscribe();
        let mut last = self.read(&path).await?;
        let mut pending = Some(last.clone());
        loop {
            if let Some(value) = pending.take()
                && events.send(TreeEvent { value }).await.is_err()
            {
                return Ok(());
            }
            let change = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = events.closed() => return Ok(()),
                change = changes.recv() => change,
            };
            let relevant = match change {
                Ok(changed) => changed.overlaps(&path),
                Err(broadcast::error::RecvError::Lagged(_)) => true,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            };
            if relevant {
                let now = self.read(&path).await?;
                if now != last {
                    last = now.clone();
                    pending = Some(now);
                }
            }
        }
    }
}
