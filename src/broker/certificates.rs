//! The certificate and key behind `broker.tls_listen` and `broker.wss_listen`.
//!
//! Let's Encrypt and similar tools replace these files every few weeks, and a broker
//! that needed a restart for that would drop every client. [`Certificates`] reads them
//! again on a reload (SIGHUP) and whenever their modification time has changed, which
//! it looks at when a TLS connection arrives (so there is no timer). A bad new file is
//! logged and the certificate in use stays; connections already open keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::config::BrokerConfig;

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("broker.tls_cert_file and broker.tls_key_file must be set when broker.tls_listen or broker.wss_listen is")]
    Missing,
    #[error("broker.tls_cert_file {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("broker.tls_key_file {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("broker.tls_cert_file and broker.tls_key_file cannot be used together: {0}")]
    Pair(rustls::Error),
}

/// Whether the broker has a TLS listener at all.
pub fn wanted(config: &BrokerConfig) -> bool {
    config.tls_listen.is_some() || config.wss_listen.is_some()
}

/// Reads and checks the configured pair, as the broker would at start; for the
/// supervisor and `check-config`, so that a bad file stops the daemon before any child
/// starts. Ok when no TLS listener is configured.
pub fn check(config: &BrokerConfig) -> Result<(), CertificateError> {
    if wanted(config) {
        Certificates::load(config)?;
    }
    Ok(())
}

/// The broker's TLS acceptor, kept up to date with the files.
pub struct Certificates {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Loaded>,
}

struct Loaded {
    acceptor: TlsAcceptor,
    /// The files' modification times when last read, successfully or not.
    stamps: Stamps,
}

type Stamps = (Option<SystemTime>, Option<SystemTime>);

impl Certificates {
    pub fn load(config: &BrokerConfig) -> Result<Self, CertificateError> {
        let (Some(cert_file), Some(key_file)) = (&config.tls_cert_file, &config.tls_key_file) else {
            return Err(CertificateError::Missing);
        };
        let stamps = stamps(cert_file, key_file);
        let acceptor = TlsAcceptor::from(server_config(cert_file, key_file)?);
        Ok(Self {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            current: RwLock::new(Loaded { acceptor, stamps }),
        })
    }

    /// The acceptor for a new connection: the files are read again first if they
    /// changed since they were last read.
    pub fn acceptor(&self) -> TlsAcceptor {
        let now = stamps(&self.cert_file, &self.key_file);
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        if current.stamps == now {
            return current.acceptor.clone();
        }
        drop(current);
        self.reload_with(now, "changed on disk");
        self.current.read().unwrap_or_else(PoisonError::into_inner).acceptor.clone()
    }

    /// Reads the files again (a reload asked for it), whether or not they look changed.
    pub fn reload(&self) {
        self.reload_with(stamps(&self.cert_file, &self.key_file), "reload");
    }

    fn reload_with(&self, stamps: Stamps, why: &str) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        current.stamps = stamps;
        match server_config(&self.cert_file, &self.key_file) {
            Ok(config) => {
                current.acceptor = TlsAcceptor::from(config);
                info!(cert_file = %self.cert_file.display(), "broker TLS certificate read again ({why})");
            }
            Err(err) => warn!("broker TLS certificate not replaced, the previous one stays in use: {err}"),
        }
    }
}

fn stamps(cert_file: &Path, key_file: &Path) -> Stamps {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|meta| meta.modified()).ok();
    (modified(cert_file), modified(key_file))
}

fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, CertificateError> {
    let cert_error = |reason: String| CertificateError::Certificate { path: cert_file.to_owned(), reason };
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(|err| cert_error(pem_reason(err)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| cert_error(pem_reason(err)))?;
    if chain.is_empty() {
        return Err(cert_error("holds no PEM certificate".into()));
    }
    // The key's bytes never reach an error message: only the kind of failure does.
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|err| CertificateError::Key { path: key_file.to_owned(), reason: pem_reason(err) })?;
    let config =
        ServerConfig::builder().with_no_client_auth().with_single_cert(chain, key).map_err(CertificateError::Pair)?;
    Ok(Arc::new(config))
}

fn pem_reason(err: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match err {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => "holds no PEM item of the expected kind".into(),
        Error::MissingSectionEnd { .. } | Error::IllegalSectionStart { .. } => "a PEM section is cut short".into(),
        Error::Base64Decode(_) => "a PEM section is not valid base64".into(),
        _ => "not a usable PEM file".into(),
    }
}
