//! Certificate authorities and server certificates made at test time with the openssl
//! command (Debian package openssl; scripts/test installs it), so no key is ever
//! committed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use tempfile::TempDir;

/// A private certificate authority in its own temporary directory.
pub struct TestCa {
    dir: TempDir,
    name: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let ca = Self { dir: tempfile::tempdir().expect("temp dir"), name: name.into() };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            path_str(&ca.key()),
            "-out",
            path_str(&ca.pem()),
        ]);
        ca
    }

    /// The CA's certificate (PEM), what a client trusts.
    pub fn pem(&self) -> PathBuf {
        self.dir.path().join(format!("{}.pem", self.name))
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join(format!("{}.key", self.name))
    }

    /// Issues a certificate for 127.0.0.1 and localhost, written to `cert` and `key`
    /// (through a rename each, as certificate tools replace files).
    pub fn issue_server(&self, cert: &Path, key: &Path) {
        let work = self.dir.path();
        let (new_key, csr, new_cert, ext) =
            (work.join("server.key"), work.join("server.csr"), work.join("server.pem"), work.join("server.ext"));
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write extensions");
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            path_str(&new_key),
            "-out",
            path_str(&csr),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            path_str(&csr),
            "-CA",
            path_str(&self.pem()),
            "-CAkey",
            path_str(&self.key()),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            path_str(&ext),
            "-out",
            path_str(&new_cert),
        ]);
        std::fs::rename(&new_key, key).expect("install key");
        std::fs::rename(&new_cert, cert).expect("install certificate");
    }

    /// A rustls client configuration that trusts this CA only.
    pub fn client_tls(&self) -> rumqttc::TlsConfiguration {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        smarthomed::tls::use_ring();
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(self.pem()).expect("CA file") {
            roots.add(certificate.expect("CA certificate")).expect("add CA");
        }
        let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        rumqttc::TlsConfiguration::Rustls(Arc::new(config))
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl (Debian package openssl; scripts/test installs it)");
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}
