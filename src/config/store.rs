//! `[store]` and `[firebase]`: where the data lives.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Bound, ConfigError, invalid};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub backend: Backend,
    /// The embedded backend's files.
    pub dir: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { backend: Backend::Embedded, dir: "data".into() }
    }
}

/// Where the data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Files under `store.dir`, on this machine.
    Embedded,
    /// Firestore (documents) and the Realtime Database (the tree), as in `[firebase]`.
    Firebase,
}

/// The file name of the service-account key under `secrets.keys_dir` or
/// `$CREDENTIALS_DIRECTORY`.
pub const FIREBASE_KEY_FILE: &str = "firebase_service_account.json";

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirebaseConfig {
    pub project_id: String,
    /// The service-account key (JSON). Empty: $GOOGLE_APPLICATION_CREDENTIALS, else
    /// [`FIREBASE_KEY_FILE`] from systemd's credentials, else from `secrets.keys_dir`.
    pub credentials: PathBuf,
    /// `https://<project>-default-rtdb.firebaseio.com` (or `.<region>.firebasedatabase.app`).
    pub database_url: String,
    /// `host:port` of a Cloud Firestore emulator; empty: $FIRESTORE_EMULATOR_HOST, else
    /// Google's service.
    pub firestore_emulator_host: String,
    pub timeout_secs: u64,
}

impl Default for FirebaseConfig {
    fn default() -> Self {
        Self {
            project_id: String::new(),
            credentials: PathBuf::new(),
            database_url: String::new(),
            firestore_emulator_host: String::new(),
            timeout_secs: 10,
        }
    }
}

impl FirebaseConfig {
    /// Each numeric setting with its value and the range it must fall in.
    pub(super) fn bounds(&self) -> Vec<Bound> {
        vec![("firebase.timeout_secs", self.timeout_secs, 1..=3_600)]
    }

    /// `backend`: with Firebase the project and the database must be named.
    pub(super) fn validate(&self, backend: Backend) -> Result<(), ConfigError> {
        if !self.database_url.is_empty() {
            let url = url::Url::parse(&self.database_url)
                .map_err(|err| invalid("firebase.database_url", format!("not a URL: {err}")))?;
            if !matches!(url.scheme(), "https" | "http") {
                return Err(invalid("firebase.database_url", "must be an https:// (or http://) URL"));
            }
        }
        check_emulator_host(&self.firestore_emulator_host)?;
        if backend != Backend::Firebase {
            return Ok(());
        }
        if self.project_id.trim().is_empty() {
            return Err(invalid("firebase.project_id", "is needed with store.backend = \"firebase\""));
        }
        if self.database_url.is_empty() {
            return Err(invalid(
                "firebase.database_url",
                "is needed with store.backend = \"firebase\" (https://<project>-default-rtdb.firebaseio.com)",
            ));
        }
        Ok(())
    }
}

/// A Firestore emulator is named `host:port` (as $FIRESTORE_EMULATOR_HOST); empty: none.
pub(super) fn check_emulator_host(host: &str) -> Result<(), ConfigError> {
    if host.is_empty() {
        return Ok(());
    }
    let url = if host.contains("://") { host.to_owned() } else { format!("http://{host}") };
    match url::Url::parse(&url).ok().and_then(|url| url.port()) {
        Some(_) => Ok(()),
        None => Err(invalid(
            "firebase.firestore_emulator_host",
            format!("{host:?} (from the config or $FIRESTORE_EMULATOR_HOST) is not host:port"),
        )),
    }
}
