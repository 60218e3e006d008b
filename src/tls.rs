//! The one TLS stack: rustls with ring. Every HTTPS and MQTTS client builds on the
//! process-wide provider installed here, so that no second one (aws-lc) is linked.

/// Installs ring as the process's rustls provider; harmless when already installed.
pub fn use_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
