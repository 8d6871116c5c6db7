//! ClickHouse over `https://`: the HTTP client the `clickhouse` crate runs on, with TLS
//! (rustls) that trusts the system's roots and, for a private CA, the certificates of
//! `clickhouse_ca_file`.
//!
//! Invariant: a certificate is verified against those roots and the URL's host name (or
//! IP address); there is no way to turn verification off.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why a TLS client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("no trusted root: the system has none and no `clickhouse_ca_file` is set")]
    NoRoots,
    #[error("cannot set up TLS: {0}")]
    Config(String),
}

/// A `clickhouse` client for an `https://` URL. Idle connections are dropped before the
/// server's keep-alive timeout (3 s on older servers), as the crate's own client does.
pub fn client(ca_file: Option<&Path>) -> Result<clickhouse::Client, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    // Roots the system cannot parse are skipped, as every TLS client does.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let ca_error = |reason: String| TlsError::CaFile { path: path.display().to_string(), reason };
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| ca_error(e.to_string()))?;
        let mut added = 0;
        for cert in certs {
            roots.add(cert.map_err(|e| ca_error(e.to_string()))?).map_err(|e| ca_error(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(ca_error("it holds no PEM certificate".into()));
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let hyper = HyperClient::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_millis(2_500)).build(https);
    Ok(clickhouse::Client::with_http_client(hyper))
}
