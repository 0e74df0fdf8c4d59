//! Where verification keys come from: PEM files, HMAC secrets from the environment, JWKS
//! files, and JWKS URLs fetched at load and refreshed in the background (the last good set
//! kept on failure; an unknown `kid` re-fetches at most once per `jwks_min_refetch_secs`).

use super::config::{
    hmac_min_bytes, is_hmac, parse_jwks_url, ClaimMapping, IdentityConfig, IssuerConfig,
};
use super::error::IdentityError;
use crate::config::error::ConfigError;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

/// One key able to verify signatures for one issuer.
pub(super) struct VerifyKey {
    pub(super) kid: Option<String>,
    /// A JWK's `alg`: when set, the only algorithm this key verifies.
    pub(super) alg: Option<Algorithm>,
    pub(super) key: DecodingKey,
    /// SHA-256 of the key's JWK JSON (to tell which keys a new JWKS dropped), of a PEM
    /// file's bytes, or of an HMAC secret (the trail shows only its first 8 bytes).
    pub(super) fingerprint: [u8; 32],
}

impl VerifyKey {
    /// How the trail names this key: `kid=KID sha256:HEX` (an HMAC secret's first 8 bytes of
    /// its hash only).
    pub(super) fn describe(&self) -> String {
        let hash = if self.key.family() == AlgorithmFamily::Hmac {
            format!("hmac-sha256:{}", hex::encode(&self.fingerprint[..8]))
        } else {
            format!("sha256:{}", hex::encode(self.fingerprint))
        };
        format!("kid={} {hash}", self.kid.as_deref().unwrap_or("-"))
    }

    pub(super) fn serves(&self, alg: Algorithm) -> bool {
        self.key.family() == alg.family() && self.alg.is_none_or(|a| a == alg)
    }
}

/// A JWKS URL and its last good key set.
pub(super) struct RemoteJwks {
    pub(super) url: reqwest::Url,
    /// The URL without query or fragment, for logs.
    pub(super) display: String,
    pub(super) keys: RwLock<Arc<Vec<Arc<VerifyKey>>>>,
    /// Serialises fetches of this URL; holds when the last `kid`-triggered fetch started.
    pub(super) fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl RemoteJwks {
    pub(super) fn snapshot(&self) -> Arc<Vec<Arc<VerifyKey>>> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub(super) fn has_kid(&self, kid: &str) -> bool {
        self.snapshot()
            .iter()
            .any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// A reqwest error with its causes, without the URL (a JWKS URL's query may hold a secret;
/// logs show the URL without query separately).
pub(super) fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Parse a JWKS document into keys. Keys that are not for signatures, have an algorithm
/// jsonwebtoken does not verify, or do not parse are skipped; `oct` keys only with
/// `allow_oct`. Fails when no key is usable.
pub(super) fn parse_jwks(bytes: &[u8], allow_oct: bool) -> Result<Vec<Arc<VerifyKey>>, String> {
    #[derive(Deserialize)]
    struct RawSet {
        keys: Vec<Value>,
    }
    let set: RawSet = serde_json::from_slice(bytes).map_err(|e| format!("not a JWK set: {e}"))?;
    let mut keys = Vec::new();
    let mut skipped = 0usize;
    for raw in set.keys {
        match jwk_to_key(raw, allow_oct) {
            Some(key) => keys.push(Arc::new(key)),
            None => skipped += 1,
        }
    }
    if keys.is_empty() {
        return Err(format!("no usable signature key ({skipped} skipped)"));
    }
    if skipped > 0 {
        tracing::debug!(
            skipped,
            "JWKS keys skipped (not for signatures or not supported)"
        );
    }
    Ok(keys)
}

pub(super) fn jwk_to_key(raw: Value, allow_oct: bool) -> Option<VerifyKey> {
    let jwk: Jwk = serde_json::from_value(raw).ok()?;
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(ka) => Some(Algorithm::try_from(ka).ok()?),
    };
    match &jwk.algorithm {
        AlgorithmParameters::OctetKey(_) if !allow_oct => return None,
        AlgorithmParameters::Other(_) => return None,
        _ => {}
    }
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    if alg.is_some_and(|a| a.family() != key.family()) {
        return None;
    }
    let fingerprint = Sha256::digest(serde_json::to_vec(&jwk).ok()?).into();
    Some(VerifyKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
        fingerprint,
    })
}

pub(super) struct Issuer {
    pub(super) iss: String,
    /// One ready `Validation` per accepted algorithm. jsonwebtoken refuses a `Validation`
    /// whose algorithms span several key families, so each holds exactly one.
    pub(super) validations: Vec<(Algorithm, Validation)>,
    pub(super) static_keys: Vec<Arc<VerifyKey>>,
    pub(super) remote: Vec<RemoteJwks>,
    pub(super) claims: ClaimMapping,
}

impl Issuer {
    pub(super) fn validation(&self, alg: Algorithm) -> Option<&Validation> {
        self.validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
    }

    pub(super) fn all_keys(&self) -> Vec<Arc<VerifyKey>> {
        let mut keys = self.static_keys.clone();
        for remote in &self.remote {
            keys.extend(remote.snapshot().iter().cloned());
        }
        keys
    }

    /// Keys whose `kid` equals `kid` and that serve `alg`.
    pub(super) fn keys_with_kid(&self, kid: &str, alg: Algorithm) -> Vec<Arc<VerifyKey>> {
        let mut keys = self.all_keys();
        keys.retain(|k| k.kid.as_deref() == Some(kid) && k.serves(alg));
        keys
    }

    /// Keys without a `kid` that serve `alg` (tried when no key carries the token's `kid`),
    /// or, with `any_kid`, every key that serves `alg` (for tokens without `kid`).
    pub(super) fn keys_without_kid(&self, alg: Algorithm, any_kid: bool) -> Vec<Arc<VerifyKey>> {
        let mut keys = self.all_keys();
        keys.retain(|k| (any_kid || k.kid.is_none()) && k.serves(alg));
        keys
    }
}

impl Issuer {
    /// Load one `[[identity.issuers]]` entry: every static key (PEM files, HMAC secrets, JWKS
    /// files) and every JWKS URL fetched once; an issuer left without a usable key is an error.
    pub(super) async fn load(
        cfg: &IdentityConfig,
        ic: &IssuerConfig,
        key: &str,
        base_dir: &Path,
        jwks: &JwksClient,
    ) -> Result<Issuer, IdentityError> {
        let mut static_keys = pem_keys(ic, key, base_dir)?;
        static_keys.extend(hmac_keys(ic, key)?);
        static_keys.extend(jwks_file_keys(cfg, ic, key, base_dir)?);
        let remote = remote_jwks(ic, key, jwks).await?;
        let issuer = Issuer {
            iss: ic.issuer.clone(),
            validations: ic
                .algorithms
                .iter()
                .map(|alg| {
                    let mut v = Validation::new(*alg);
                    v.leeway = cfg.leeway_secs;
                    v.validate_exp = true;
                    v.validate_nbf = true;
                    v.validate_aud = true;
                    v.set_issuer(&[&ic.issuer]);
                    v.set_audience(&ic.audiences);
                    v.set_required_spec_claims(&["exp", "iss", "aud"]);
                    (*alg, v)
                })
                .collect(),
            static_keys,
            remote,
            claims: ic.claims.clone().unwrap_or_else(|| cfg.claims.clone()),
        };
        let usable = issuer
            .all_keys()
            .iter()
            .any(|k| ic.algorithms.iter().any(|a| k.serves(*a)));
        if !usable {
            return Err(IdentityError::NoUsableKeys {
                key: key.to_string(),
            });
        }
        Ok(issuer)
    }
}

/// The issuer's PEM public keys (a private key, a certificate or a key of a family none of its
/// algorithms uses is an error).
fn pem_keys(
    ic: &IssuerConfig,
    key: &str,
    base_dir: &Path,
) -> Result<Vec<Arc<VerifyKey>>, IdentityError> {
    let accepts = |family: AlgorithmFamily| ic.algorithms.iter().any(|a| a.family() == family);
    let mut static_keys = Vec::new();

    for (j, pem) in ic.pem_keys.iter().enumerate() {
        let key = format!("{key}.pem_keys[{j}]");
        let path = base_dir.join(&pem.path);
        let bytes = std::fs::read(&path).map_err(|source| IdentityError::ReadKey {
            key: key.clone(),
            path: path.clone(),
            source,
        })?;
        // Only public keys: a private key does not belong on the gateway, and jsonwebtoken
        // would take a certificate's or private key's first bit string as the key.
        let text = String::from_utf8_lossy(&bytes);
        if text.contains("PRIVATE KEY-----") {
            return Err(IdentityError::PrivateKey { key, path });
        }
        let first_block = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("-----BEGIN "));
        if !matches!(
            first_block,
            Some("-----BEGIN PUBLIC KEY-----" | "-----BEGIN RSA PUBLIC KEY-----")
        ) {
            return Err(IdentityError::BadPem { key, path });
        }
        let decoded = DecodingKey::from_rsa_pem(&bytes)
            .or_else(|_| DecodingKey::from_ec_pem(&bytes))
            .or_else(|_| DecodingKey::from_ed_pem(&bytes))
            .map_err(|_| IdentityError::BadPem {
                key: key.clone(),
                path: path.clone(),
            })?;
        if !accepts(decoded.family()) {
            return Err(IdentityError::KeyNotUsable {
                key,
                path,
                family: family_name(decoded.family()),
            });
        }
        static_keys.push(Arc::new(VerifyKey {
            kid: pem.kid.clone(),
            alg: None,
            fingerprint: Sha256::digest(&bytes).into(),
            key: decoded,
        }));
    }
    Ok(static_keys)
}

/// The issuer's HMAC secrets, from the environment (missing, empty or shorter than its
/// algorithms need is an error).
fn hmac_keys(ic: &IssuerConfig, key: &str) -> Result<Vec<Arc<VerifyKey>>, IdentityError> {
    let mut static_keys = Vec::new();
    let min_secret = ic
        .algorithms
        .iter()
        .filter(|a| is_hmac(**a))
        .map(|a| hmac_min_bytes(*a))
        .max();
    for (j, secret) in ic.hmac_secrets.iter().enumerate() {
        let key = format!("{key}.hmac_secrets[{j}]");
        let missing = || IdentityError::MissingSecret {
            key: key.clone(),
            var: secret.env_var.clone(),
        };
        let value = std::env::var(&secret.env_var).map_err(|_| missing())?;
        if value.is_empty() {
            return Err(missing());
        }
        let decoded = if secret.base64 {
            DecodingKey::from_base64_secret(value.trim()).map_err(|_| IdentityError::BadSecret {
                key: key.clone(),
                var: secret.env_var.clone(),
            })?
        } else {
            DecodingKey::from_secret(value.as_bytes())
        };
        let secret_bytes = decoded.try_get_as_bytes().map(<[u8]>::len).unwrap_or(0);
        let min_bytes = min_secret.unwrap_or(32);
        if secret_bytes < min_bytes {
            return Err(IdentityError::WeakSecret {
                key,
                var: secret.env_var.clone(),
                len_bytes: secret_bytes,
                min_bytes,
            });
        }
        let fingerprint = Sha256::digest(decoded.try_get_as_bytes().unwrap_or_default()).into();
        static_keys.push(Arc::new(VerifyKey {
            kid: secret.kid.clone(),
            alg: None,
            fingerprint,
            key: decoded,
        }));
    }
    Ok(static_keys)
}

/// The keys of the issuer's JWKS files (`oct` keys allowed here: the file is the operator's).
fn jwks_file_keys(
    cfg: &IdentityConfig,
    ic: &IssuerConfig,
    key: &str,
    base_dir: &Path,
) -> Result<Vec<Arc<VerifyKey>>, IdentityError> {
    let mut static_keys = Vec::new();
    for (j, path) in ic.jwks_files.iter().enumerate() {
        let key = format!("{key}.jwks_files[{j}]");
        let path = base_dir.join(path);
        let bytes = std::fs::read(&path).map_err(|source| IdentityError::ReadJwks {
            key: key.clone(),
            path: path.clone(),
            source,
        })?;
        let bad = |reason: String| IdentityError::BadJwks {
            key: key.clone(),
            origin: path.display().to_string(),
            reason,
        };
        if bytes.len() as u64 > cfg.jwks_max_bytes {
            return Err(bad(format!(
                "larger than jwks_max_bytes ({})",
                cfg.jwks_max_bytes
            )));
        }
        let keys = parse_jwks(&bytes, true).map_err(bad)?;
        static_keys.extend(keys);
    }
    Ok(static_keys)
}

/// The issuer's JWKS URLs, each fetched once (a failure here stops the start).
async fn remote_jwks(
    ic: &IssuerConfig,
    key: &str,
    jwks: &JwksClient,
) -> Result<Vec<RemoteJwks>, IdentityError> {
    let mut remote = Vec::with_capacity(ic.jwks_urls.len());
    for (j, raw) in ic.jwks_urls.iter().enumerate() {
        let key = format!("{key}.jwks_urls[{j}]");
        // Validated above; a failure here would be a bug, reported as a config error.
        let url = parse_jwks_url(raw).map_err(|reason| ConfigError::invalid(&key, reason))?;
        let mut shown = url.clone();
        shown.set_query(None);
        shown.set_fragment(None);
        let shown = shown.to_string();
        let keys = jwks
            .fetch(&url)
            .await
            .map_err(|reason| IdentityError::FetchJwks {
                key: key.clone(),
                url: shown.clone(),
                reason,
            })?;
        tracing::info!(url = %shown, keys = keys.len(), "JWKS loaded");
        remote.push(RemoteJwks {
            url,
            display: shown,
            keys: RwLock::new(Arc::new(keys)),
            fetch: tokio::sync::Mutex::new(None),
        });
    }
    Ok(remote)
}

/// The HTTP client JWKS URLs are fetched with: timeouts, no redirects, a size bound.
pub(super) struct JwksClient {
    pub(super) http: reqwest::Client,
    /// `identity.jwks_max_bytes`.
    pub(super) max_bytes: u64,
}

impl JwksClient {
    /// A client with `identity.jwks_fetch_timeout_ms` and `jwks_max_bytes`.
    pub(super) fn new(cfg: &IdentityConfig) -> Result<JwksClient, IdentityError> {
        let timeout = std::time::Duration::from_millis(cfg.jwks_fetch_timeout_ms);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("auditgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| IdentityError::HttpClient {
                reason: e.to_string(),
            })?;
        Ok(JwksClient {
            http,
            max_bytes: cfg.jwks_max_bytes,
        })
    }

    /// GET a JWKS URL (see [`JwksClient::fetch_once`]), counted in
    /// `auditgate_jwks_refreshes_total`.
    pub(super) async fn fetch(&self, url: &reqwest::Url) -> Result<Vec<Arc<VerifyKey>>, String> {
        let result = self.fetch_once(url).await;
        let metrics = crate::metrics::global();
        match &result {
            Ok(_) => {
                metrics.jwks_refreshes.with_label_values(&["ok"]).inc();
                metrics.jwks_last_success.set(crate::metrics::unix_now());
            }
            Err(_) => metrics.jwks_refreshes.with_label_values(&["failed"]).inc(),
        }
        result
    }

    /// GET a JWKS URL: success status, body at most `jwks_max_bytes`, at least one usable key.
    pub(super) async fn fetch_once(
        &self,
        url: &reqwest::Url,
    ) -> Result<Vec<Arc<VerifyKey>>, String> {
        let mut response = self
            .http
            .get(url.clone())
            .header(
                http::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .send()
            .await
            .map_err(|e| format!("request failed: {}", describe(e)))?;
        if !response.status().is_success() {
            return Err(format!("HTTP status {}", response.status().as_u16()));
        }
        let too_large = || format!("body larger than jwks_max_bytes ({})", self.max_bytes);
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("reading the body failed: {}", describe(e)))?
        {
            if (body.len() + chunk.len()) as u64 > self.max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        parse_jwks(&body, false)
    }
}

pub(super) fn family_name(family: AlgorithmFamily) -> &'static str {
    match family {
        AlgorithmFamily::Hmac => "HMAC",
        AlgorithmFamily::Rsa => "RSA",
        AlgorithmFamily::Ec => "EC",
        AlgorithmFamily::Ed => "Ed25519",
    }
}
