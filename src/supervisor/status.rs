//! `smarthomed status`: the supervisor's view of the daemon, on a Unix socket.
//!
//! The socket lives beside the store (`<store.dir>/smarthomed.sock`, owner-only, in the
//! store's owner-only directory), so only the daemon's user and root can ask, and the
//! command finds it from the same config as `store backup` does. A connection gets one
//! JSON document ([`DaemonStatus`]) and is closed. A second daemon on the same
//! store.dir finds the socket answering and refuses to start.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::telemetry::{Children, DaemonStatus};

const SOCKET_NAME: &str = "smarthomed.sock";
/// A status reader that does not take its answer within this is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("another smarthomed is running on store.dir {0} (its status socket answers)")]
    AlreadyRunning(PathBuf),
    #[error("cannot serve the status socket {path}: {source}")]
    Listen { path: PathBuf, source: std::io::Error },
    #[error(
        "smarthomed is not running here: no answer on {path} ({source}); run the command \
         in the daemon's working directory (/var/lib/smarthomed under systemd) or give \
         store.dir as an absolute path"
    )]
    NotRunning { path: PathBuf, source: std::io::Error },
    #[error("unreadable answer on {path}: {reason}")]
    BadAnswer { path: PathBuf, reason: String },
}

pub fn socket_path(store_dir: &Path) -> PathBuf {
    store_dir.join(SOCKET_NAME)
}

/// Binds the socket, refusing when another daemon answers on it and replacing a stale
/// one left by a daemon that was killed.
pub async fn bind(store_dir: &Path) -> Result<UnixListener, StatusError> {
    let path = socket_path(store_dir);
    if UnixStream::connect(&path).await.is_ok() {
        return Err(StatusError::AlreadyRunning(store_dir.to_owned()));
    }
    let listen_error = |source| StatusError::Listen { path: path.clone(), source };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(store_dir).map_err(listen_error)?;
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(listen_error(err)),
    }
    let listener = UnixListener::bind(&path).map_err(listen_error)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(listen_error)?;
    Ok(listener)
}

/// Answers each connection with the status until `shutdown`, then removes the socket.
pub async fn serve(listener: UnixListener, path: PathBuf, children: Children, shutdown: CancellationToken) {
    let started = Instant::now();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let mut stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                warn!("status socket: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let status = DaemonStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            up_secs: started.elapsed().as_secs(),
            children: children.status(),
        };
        let mut answer = serde_json::to_vec(&status).unwrap_or_default();
        answer.push(b'\n');
        // Answered inline: the document is small, and a reader that stalls is cut off.
        match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&answer)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => debug!("status socket: reader left: {err}"),
            Err(_) => debug!("status socket: reader too slow, dropped"),
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// Asks the daemon that uses `store_dir` for its status.
pub async fn query(store_dir: &Path) -> Result<DaemonStatus, StatusError> {
    let path = socket_path(store_dir);
    let mut stream =
        UnixStream::connect(&path).await.map_err(|source| StatusError::NotRunning { path: path.clone(), source })?;
    let mut answer = Vec::new();
    let bad = |reason: String| StatusError::BadAnswer { path: path.clone(), reason };
    tokio::time::timeout(WRITE_TIMEOUT, stream.read_to_end(&mut answer))
        .await
        .map_err(|_| bad("no answer within 2 s".into()))?
        .map_err(|err| bad(err.to_string()))?;
    serde_json::from_slice(&answer).map_err(|err| bad(err.to_string()))
}
