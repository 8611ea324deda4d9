//! Mutual TLS for every gRPC connection, and the dev CA generator.
//!
//! ```text
//! TlsFiles (config) --load()--> TlsMaterial --server_config()--> rustls::ServerConfig
//!                                          |                        |
//!                                          |              serve_incoming(listener) --> Conn stream
//!                                          |                        (tonic serve_with_incoming_shutdown)
//!                                          +--client_tls(name)--> tonic ClientTlsConfig
//! ```
//!
//! Every member holds a certificate signed by the cluster CA and presents it both as a server
//! and as a client; a connection without such a certificate is refused during the handshake and
//! logged once, in plain English ([`accept`]). The identity a certificate carries (a member
//! name, or an admin's role and user) is read from its URI SANs ([`identity`]) and checked
//! per call by `api::authz`. [`certs`] writes a throwaway CA and certificates for development
//! and tests.

pub mod accept;
pub mod certs;
pub mod identity;
pub mod inspect;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

pub use accept::{serve_incoming, Conn, ConnectInfo, Incoming};
pub use identity::{AdminRole, PeerIdentity};

use crate::config::TlsFiles;

const FIX_HINT: &str = "run 'droverctl certs init' or fix [tls] in node.toml";

/// TLS material that could not be loaded or turned into a configuration. One line, naming the
/// file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// A file's contents are unusable.
    #[error("{problem}; {FIX_HINT}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it, naming the file.
        problem: String,
    },
    /// The loaded material was rejected while building a TLS configuration.
    #[error("cannot build the TLS configuration from {}: {reason}", cert.display())]
    Config {
        /// This node's certificate file.
        cert: PathBuf,
        /// rustls' reason.
        reason: String,
    },
}

fn invalid(path: &Path, problem: String) -> TlsError {
    TlsError::Invalid { path: path.to_path_buf(), problem }
}

/// This node's TLS material: the cluster CA, its certificate chain and private key, checked to
/// belong together.
pub struct TlsMaterial {
    files: TlsFiles,
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_certs: Vec<CertificateDer<'static>>,
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("files", &self.files)
            .field("ca_certs", &self.ca_certs.len())
            .field("cert_chain", &self.cert_chain.len())
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

fn certs_in(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("malformed PEM in {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(path, format!("no PEM certificate found in {}", path.display())));
    }
    Ok(certs)
}

/// Reads and checks the CA, certificate and key files: each must hold PEM of the right kind,
/// the CA certificates must be usable as trust anchors, and the key must match the
/// certificate.
pub fn load(files: &TlsFiles) -> Result<TlsMaterial, TlsError> {
    let ca_pem = read(&files.ca)?;
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let ca_certs = certs_in(&files.ca, &ca_pem)?;
    let cert_chain = certs_in(&files.cert, &cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            invalid(&files.key, format!("no private key in {}", files.key.display()))
        }
        e => invalid(
            &files.key,
            format!("malformed private key PEM in {}: {e}", files.key.display()),
        ),
    })?;

    let mut roots = RootCertStore::empty();
    for (i, ca) in ca_certs.iter().enumerate() {
        roots.add(ca.clone()).map_err(|e| {
            invalid(
                &files.ca,
                format!(
                    "certificate {} in {} is not usable as a CA: {e}",
                    i + 1,
                    files.ca.display()
                ),
            )
        })?;
    }
    rustls::sign::CertifiedKey::from_der(cert_chain.clone(), key.clone_key(), &provider())
        .map_err(|e| {
            invalid(
                &files.key,
                format!(
                    "private key {} does not fit certificate {}: {e}",
                    files.key.display(),
                    files.cert.display()
                ),
            )
        })?;

    Ok(TlsMaterial { files: files.clone(), ca_pem, cert_pem, key_pem, ca_certs, cert_chain, key })
}

impl TlsMaterial {
    /// The files this material was loaded from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// A rustls server configuration (ring provider, safe default protocol versions, ALPN
    /// `h2`) that presents this node's certificate and REQUIRES a client certificate signed by
    /// the cluster CA.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let fail = |reason: String| TlsError::Config { cert: self.files.cert.clone(), reason };
        let provider = provider();
        let mut roots = RootCertStore::empty();
        for ca in &self.ca_certs {
            roots.add(ca.clone()).map_err(|e| fail(e.to_string()))?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| fail(e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.cert_chain.clone(), self.key.clone_key())
            .map_err(|e| fail(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// tonic client TLS settings for connecting to the member whose certificate carries
    /// `server_name`: trusts only the cluster CA and presents this node's certificate.
    pub fn client_tls(&self, server_name: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(server_name)
    }
}

#[cfg(test)]
mod tests;
