//! TLS on the listener (rustls) and the CA gateways trust when forwarding to `https://` peers.
//!
//! With `tls.cert` and `tls.key` set the listener speaks HTTPS only: a plain-HTTP client fails
//! the handshake and gets no answer. The certificate and key are reloaded on SIGHUP and when
//! either file changes ([`crate::reload`]); new connections get the new certificate, open ones
//! keep theirs. A pair that does not load (e.g. the key written before the certificate) is
//! ignored until the next change, so a rotation never takes the listener down.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsAcceptor;

use crate::reload::Reloadable;

/// `[tls]`: HTTPS on the listener, and trust for `https://` peers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the listener. Default: unset (plain HTTP).
    pub cert: Option<PathBuf>,
    /// PEM private key of the listener. Default: unset.
    pub key: Option<PathBuf>,
    /// PEM CA certificates trusted when forwarding to peers with an `https://` advertise URL,
    /// on top of the system's roots. Default: unset.
    pub ca: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether the listener serves HTTPS.
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }

    /// Checks that the certificate and key come together.
    pub fn validate(&self) -> Result<(), String> {
        if self.cert.is_some() != self.key.is_some() {
            return Err("tls.cert and tls.key (--tls-cert, --tls-key) go together".into());
        }
        Ok(())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificate `{}`: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in `{}`", cert.display()));
    }
    // The error names the file only: a key's contents never reach a log.
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|_| format!("cannot read a PEM private key from `{}`", key.display()))?;
    let signer = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("unusable private key `{}`: {e}", key.display()))?;
    let pair = CertifiedKey::new(chain, signer);
    pair.keys_match().map_err(|e| {
        format!(
            "`{}` does not match `{}`: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(pair)
}

/// Serves the certificate loaded last.
struct Resolver(Arc<Reloadable<CertifiedKey>>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get())
    }
}

/// The listener's TLS: the acceptor, and its certificate to reload.
pub struct ServerTls {
    /// Performs the server side of handshakes.
    pub acceptor: TlsAcceptor,
    /// The certificate and key, reloaded on SIGHUP or change.
    pub cert: Arc<Reloadable<CertifiedKey>>,
}

impl ServerTls {
    /// The listener's TLS from `config`, or `None` for plain HTTP.
    pub fn load(config: &TlsConfig) -> Result<Option<ServerTls>, String> {
        let (Some(cert), Some(key)) = (config.cert.clone(), config.key.clone()) else {
            return Ok(None);
        };
        let paths = vec![cert.clone(), key.clone()];
        let pair = Arc::new(Reloadable::new("tls certificate", paths, move || {
            load_pair(&cert, &key)
        })?);
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(Arc::clone(&pair))));
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            cert: pair,
        }))
    }
}

/// The CA certificates of `path` (PEM), for clients of `https://` peers.
pub fn ca_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read CA file `{}`: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("invalid CA file `{}`: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in CA file `{}`", path.display()));
    }
    Ok(certs)
}
