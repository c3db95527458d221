//! TLS set-up (rustls with the ring provider): the server's certificate and
//! key, and what the client trusts (see [`pinned`](super::pinned) for how a
//! self-signed certificate in the CA file is trusted as it is).

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};

use super::pinned::PinningVerifier;

/// Why TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file cannot be read or holds nothing usable.
    #[error("{what} {path}: {reason}")]
    File {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The certificate and the key are each fine but do not belong together.
    #[error("certificate file {cert} and key file {key} do not go together: {reason}")]
    Mismatch {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// What rustls said.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error<'a>(what: &'static str, path: &'a Path) -> impl Fn(String) -> TlsError + 'a {
    move |reason| TlsError::File {
        what,
        path: path.display().to_string(),
        reason,
    }
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = file_error(what, path);
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// A certificate chain and its private key, read from PEM files and checked
/// to belong together.
pub fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certs("certificate file", cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_error("key file", key)(e.to_string()))?;
    let certified =
        CertifiedKey::from_der(chain, key_der, &provider()).map_err(|e| TlsError::Mismatch {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            reason: e.to_string(),
        })?;
    Ok(Arc::new(certified))
}

/// The server's certificate, swappable while the server runs: every
/// handshake reads the current one, so a new certificate serves new
/// connections and established ones keep the one they were made with.
#[derive(Debug)]
pub struct ServerCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCert {
    /// Serves `key` until [`ServerCert::replace`].
    pub fn new(key: Arc<CertifiedKey>) -> Arc<ServerCert> {
        Arc::new(ServerCert {
            current: RwLock::new(key),
        })
    }

    /// Serves `key` to every handshake from now on.
    pub fn replace(&self, key: Arc<CertifiedKey>) {
        // A poisoned lock still holds a whole `Arc`: replace it all the same.
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        *current = key;
    }

    /// The certificate served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The server's TLS: one configuration for every listener (TCP and HTTPS),
/// whose certificate can be replaced without rebinding anything.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The rustls configuration; its certificate comes from `cert`.
    pub config: Arc<ServerConfig>,
    /// The certificate every new handshake gets.
    pub cert: Arc<ServerCert>,
}

/// The server's TLS from a PEM certificate chain and key.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
    let cert = ServerCert::new(certified_key(cert, key)?);
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert.clone());
    Ok(ServerTls {
        config: Arc::new(config),
        cert,
    })
}

/// A client configuration that trusts what `ca_file` holds: its
/// certificates as CAs (normal chain verification), and each self-signed
/// certificate in it also as that exact server certificate, CA or not.
pub fn client_config(ca_file: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let certs = certs("CA file", ca_file)?;
    let err = file_error("CA file", ca_file);
    let mut roots = RootCertStore::empty();
    let mut pinned = Vec::new();
    for (n, cert) in certs.into_iter().enumerate() {
        let self_signed = super::pinned::is_self_signed(&cert)
            .map_err(|e| err(format!("certificate {}: {e}", n + 1)))?;
        roots
            .add(cert.clone())
            .map_err(|e| err(format!("certificate {}: {e}", n + 1)))?;
        if self_signed {
            pinned.push(cert);
        }
    }
    let provider = provider();
    let chains = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| err(e.to_string()))?;
    let verifier = Arc::new(PinningVerifier::new(pinned, chains));
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
