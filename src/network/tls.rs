//! TLS on the client side of the gateway: certificate and key, reloaded on SIGHUP; optional
//! client-certificate verification against a CA bundle (mutual TLS), whose certificate then
//! identifies the device.
//!
//! Backend: pingora's `openssl` feature, linked against the system OpenSSL. It is the backend
//! pingora's TLS callbacks (per-handshake certificate selection, handshake-complete data) are
//! built for, it verifies client certificates with OpenSSL's mature chain verifier, and it
//! builds in seconds (BoringSSL compiles a C++ library with cmake for minutes; pingora still
//! marks its rustls backend experimental). Upstream `https://` uses the same backend.
//!
//! Guarantees:
//! * **A certificate that does not load never replaces one that does.** At start a bad
//!   certificate or key (unreadable, not PEM, key not matching the certificate) stops the
//!   start; on SIGHUP it rejects the reload and the old pair keeps serving. Handshakes in
//!   flight finish with the pair they started with; the next one uses the new pair.
//! * **Client certificates are checked by OpenSSL during the handshake**, before any HTTP is
//!   read. A certificate that fails verification ends the handshake (the client gets a TLS
//!   alert and no HTTP response, so there is no request to record) and is counted in
//!   `auditgate_tls_client_cert_rejected_total`. A verified certificate's SHA-256 fingerprint
//!   and subject are recorded with every request on that connection (`net.client_cert`).
//! * **The certificate's expiry is visible**: `auditgate_tls_cert_not_after_timestamp_seconds`.

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::tls::pkey::{PKey, Private};
use pingora::tls::ssl::SslVerifyMode;
use pingora::tls::x509::store::{X509Store, X509StoreBuilder};
use pingora::tls::x509::{X509Name, X509};
use serde::{Deserialize, Serialize};

use crate::config::error::ConfigError;

/// `[tls]`: TLS listeners.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Addresses served with TLS (HTTP/1.1 and HTTP/2 by ALPN), beside the plain
    /// `server.listen` ones. Empty: no TLS listener.
    #[serde(default)]
    pub listen: Vec<String>,
    /// The certificate chain, PEM (leaf first). Re-read on SIGHUP.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The certificate's private key, PEM. Re-read on SIGHUP.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// CA bundle (PEM) that client certificates must chain to. Set: clients are asked for a
    /// certificate (mutual TLS). Re-read on SIGHUP with the certificate.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: `required` (no certificate, no connection) or `optional` (a
    /// certificate that is sent must verify).
    #[serde(default)]
    pub client_cert: ClientCertMode,
}

/// See [`TlsConfig::client_cert`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertMode {
    /// Every client must present a certificate the client CAs signed (the default).
    #[default]
    Required,
    /// A client may present one; one that is presented must verify.
    Optional,
}

impl TlsConfig {
    /// Check the values are usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for addr in &self.listen {
            addr.parse::<std::net::SocketAddr>().map_err(|_| {
                ConfigError::invalid("tls.listen", format!("`{addr}` is not an IP:port address"))
            })?;
        }
        if !self.listen.is_empty() && (self.cert_file.is_none() || self.key_file.is_none()) {
            return Err(ConfigError::invalid(
                "tls.cert_file",
                "a TLS listener needs tls.cert_file and tls.key_file",
            ));
        }
        if self.listen.is_empty() && self.client_ca_file.is_some() {
            return Err(ConfigError::invalid(
                "tls.client_ca_file",
                "client certificates need a TLS listener (tls.listen)",
            ));
        }
        Ok(())
    }

    /// Make relative paths absolute against `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [
            &mut self.cert_file,
            &mut self.key_file,
            &mut self.client_ca_file,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, key or CA file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The certificate, key or CA file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable certificate or key, or the key does not belong to the
    /// certificate.
    #[error("{path}: {reason}")]
    Invalid {
        /// The certificate, key or CA file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Read a PEM bundle of certificates (at least one).
pub fn load_certificates(path: &Path) -> Result<Vec<X509>, TlsError> {
    let certs = X509::stack_from_pem(&read(path)?).map_err(|e| invalid(path, e))?;
    if certs.is_empty() {
        return Err(invalid(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// A certificate chain and the key that goes with it.
pub struct CertKey {
    chain: Vec<X509>,
    key: PKey<Private>,
    /// The leaf's notAfter, as Unix seconds.
    not_after_unix: i64,
}

impl CertKey {
    /// Load and check a pair: both parse, and the key belongs to the leaf certificate.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<CertKey, TlsError> {
        let chain = load_certificates(cert_path)?;
        let key = PKey::private_key_from_pem(&read(key_path)?).map_err(|e| invalid(key_path, e))?;
        let leaf_key = chain[0].public_key().map_err(|e| invalid(cert_path, e))?;
        if !leaf_key.public_eq(&key) {
            return Err(invalid(
                key_path,
                format!(
                    "this key does not belong to the certificate in {}",
                    cert_path.display()
                ),
            ));
        }
        let epoch = openssl::asn1::Asn1Time::from_unix(0).map_err(|e| invalid(cert_path, e))?;
        let diff = epoch
            .diff(chain[0].not_after())
            .map_err(|e| invalid(cert_path, e))?;
        let not_after_unix = i64::from(diff.days) * 86_400 + i64::from(diff.secs);
        Ok(CertKey {
            chain,
            key,
            not_after_unix,
        })
    }
}

/// A trust store of client-certificate CAs, read from a PEM bundle.
pub fn client_ca_store(path: &Path) -> Result<X509Store, TlsError> {
    let mut builder = X509StoreBuilder::new().map_err(|e| invalid(path, e))?;
    for cert in load_certificates(path)? {
        builder.add_cert(cert).map_err(|e| invalid(path, e))?;
    }
    Ok(builder.build())
}

/// What a reload puts in effect for the TLS listeners.
pub struct TlsMaterial {
    /// The server certificate and its key.
    pub pair: CertKey,
    /// The client CA store, when mutual TLS is on.
    pub client_cas: Option<X509Store>,
}

impl TlsMaterial {
    /// Load and check the certificate, key and client CA bundle of `cfg`.
    pub fn load(cfg: &TlsConfig) -> Result<Option<TlsMaterial>, TlsError> {
        let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) else {
            return Ok(None);
        };
        Ok(Some(TlsMaterial {
            pair: CertKey::load(cert, key)?,
            client_cas: cfg
                .client_ca_file
                .as_deref()
                .map(client_ca_store)
                .transpose()?,
        }))
    }
}

/// The server certificate and client CAs in effect, swappable by a reload.
pub struct ServerCerts {
    current: ArcSwap<CertKey>,
    client_cas: Option<ArcSwap<X509Store>>,
}

impl ServerCerts {
    /// The certificates the TLS listeners start with.
    pub fn new(material: TlsMaterial) -> ServerCerts {
        export_expiry(&material.pair);
        ServerCerts {
            current: ArcSwap::from_pointee(material.pair),
            client_cas: material.client_cas.map(ArcSwap::from_pointee),
        }
    }

    /// Put checked material in effect: the next handshake uses it. (Client CAs are replaced
    /// only when mutual TLS was on at start; turning it on or off needs a restart.)
    pub fn replace(&self, material: TlsMaterial) {
        export_expiry(&material.pair);
        self.current.store(Arc::new(material.pair));
        if let (Some(slot), Some(store)) = (&self.client_cas, material.client_cas) {
            slot.store(Arc::new(store));
        }
    }
}

fn export_expiry(pair: &CertKey) {
    crate::metrics::global()
        .tls_cert_not_after
        .set(pair.not_after_unix as f64);
}

/// What the handshake learnt about the client's certificate, for the records of every request
/// on that connection.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    /// The subject, RFC 4514 style (`CN=ward-3-cart-17,O=Hospital`).
    pub subject: String,
}

/// The subject of a certificate as `CN=...,O=...` (most specific attribute first is not
/// attempted: the order is the certificate's).
pub fn subject_of(cert: &pingora::tls::x509::X509Ref) -> String {
    cert.subject_name()
        .entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let value = e.data().to_string().unwrap_or_else(|_| "?".into());
            format!("{key}={value}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

struct Callbacks {
    certs: Arc<ServerCerts>,
}

#[async_trait]
impl TlsAccept for Callbacks {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        // The client CAs in effect now (a reload may have replaced the bundle); the client's
        // certificate is verified later in this handshake against this store. If it cannot be
        // set, no certificate is served either: the handshake fails rather than verifying
        // against a bundle a reload withdrew.
        if let Some(cas) = &self.certs.client_cas {
            if let Err(e) = pingora::tls::ext::ssl_set_verify_cert_store(ssl, &cas.load()) {
                tracing::error!(error = %e, "cannot set the client CA store; refusing the handshake");
                return;
            }
        }
        let pair = self.certs.current.load();
        // A failure here fails the handshake (no certificate), never serves a wrong one.
        let served = pingora::tls::ext::ssl_use_certificate(ssl, &pair.chain[0])
            .and_then(|()| {
                pair.chain[1..]
                    .iter()
                    .try_for_each(|extra| pingora::tls::ext::ssl_add_chain_cert(ssl, extra))
            })
            .and_then(|()| pingora::tls::ext::ssl_use_private_key(ssl, &pair.key));
        if let Err(e) = served {
            tracing::error!(error = %e, "cannot serve the TLS certificate; the handshake fails");
        }
    }

    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let cert = ssl.peer_certificate()?;
        Some(Arc::new(PeerCertificate {
            subject: subject_of(&cert),
        }))
    }
}

/// The pingora settings for a TLS listener: certificate from `certs` at each handshake,
/// HTTP/2 by ALPN, client certificates checked against `cfg.client_ca_file` when set.
pub fn listener_settings(
    cfg: &TlsConfig,
    certs: Arc<ServerCerts>,
) -> Result<TlsSettings, TlsError> {
    let mut settings = TlsSettings::with_callbacks(Box::new(Callbacks { certs }))
        .map_err(|e| invalid(Path::new("<tls>"), e))?;
    settings.enable_h2();
    if let Some(ca) = &cfg.client_ca_file {
        // Load it ourselves first, for a clear error (OpenSSL's would name no file).
        load_certificates(ca)?;
        // With client verification on, OpenSSL refuses to resume a session whose context is
        // unset ("session id context uninitialized"): name the context after the CA bundle, so
        // a session verified against another bundle is never resumed here.
        let context = openssl::sha::sha256(&read(ca)?);
        settings
            .set_session_id_context(&context)
            .map_err(|e| invalid(ca, e))?;
        // No resumption at all: a resumed session skips certificate verification, so a device
        // whose CA a reload withdrew could keep connecting on an old session. Every new
        // connection is verified against the CAs in effect (keep-alive amortises the cost).
        settings.set_session_cache_mode(pingora::tls::ssl::SslSessionCacheMode::OFF);
        settings.set_options(pingora::tls::ssl::SslOptions::NO_TICKET);
        settings.set_ca_file(ca).map_err(|e| invalid(ca, e))?;
        let names = X509Name::load_client_ca_file(ca).map_err(|e| invalid(ca, e))?;
        settings.set_client_ca_list(names);
        let mode = match cfg.client_cert {
            ClientCertMode::Required => SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
            ClientCertMode::Optional => SslVerifyMode::PEER,
        };
        settings.set_verify_callback(mode, |verified, _chain| {
            if !verified {
                crate::metrics::global().tls_client_cert_rejected.inc();
            }
            verified
        });
    }
    Ok(settings)
}
