//! Identity: who is behind a request, from the Bearer JWT in its `Authorization` header.
//!
//! This module owns token extraction, signature and claim verification, the keys (PEM files,
//! HMAC secrets from the environment, JWKS files, JWKS URLs refreshed in the background), the
//! cache of verified tokens, and the mapping of claims to the journal's [`Actor`]. The proxy
//! calls [`Identity::authenticate`] once per request and journals either the actor or the
//! failure's [`AuthFailure::reason`].
//!
//! Guarantees:
//!
//! * **One token, one place.** A request is authenticated only by a single `Authorization:
//!   Bearer` header. No token, another scheme, two `Authorization` headers, an `access_token`
//!   query parameter (alone or beside a header) are each refused with their own reason.
//! * **Keys come from the configuration only.** The token header is read for `alg` and `kid`
//!   and nothing else: `jku`, `x5u`, `jwk` and `x5c` are never used to find a key. A token that
//!   lists `crit` extensions is refused (RFC 7515 §4.1.11: we understand none).
//! * **Algorithms are pinned per issuer.** The issuer is chosen by the token's unverified `iss`;
//!   a header `alg` outside that issuer's list is refused before any key is touched, which stops
//!   `alg: none` and the HS256-signed-with-the-RSA-public-key confusion. An issuer cannot mix
//!   HMAC with public-key algorithms, and a key only ever verifies algorithms of its own family.
//! * **Claims are checked in full.** `exp`, `iss` and `aud` are required; `iss` must equal the
//!   issuer's value, `aud` must name one of its audiences, `nbf` is honoured when present; `exp`
//!   and `nbf` allow `leeway_secs` of clock skew. A token without the user claim is refused.
//! * **The cache never outlives a token.** Verified tokens are cached under the SHA-256 of the
//!   token string (the token itself is not kept) and served only while `now < exp`. The
//!   break-glass header is read on every request, never cached. When a key disappears from a
//!   JWKS the whole cache is emptied, so tokens signed by a withdrawn key stop working at once.
//! * **JWKS URLs stay available.** The first fetch must succeed at load. Afterwards a failed
//!   fetch keeps the last good set. A `kid` that no key carries triggers one re-fetch per URL,
//!   at most once per `jwks_min_refetch_secs`; concurrent requests wait for that one fetch.
//! * **No PHI out.** Failures carry fixed reason codes and descriptions; no message, error or
//!   log line here contains a token, a claim value or a user id (claim *names* come from the
//!   configuration and may appear).
//!
//! Configuration sketch (TOML):
//!
//! ```toml
//! [identity]
//! leeway_secs = 30
//! break_glass_header = "X-Break-Glass"
//!
//! [identity.claims]
//! roles = "/realm_access/roles"        # a JSON Pointer reaches nested claims
//!
//! [[identity.issuers]]
//! issuer = "https://idp.example.org/realms/ehr"
//! audiences = ["fhir-api"]
//! algorithms = ["RS256", "PS256"]
//! jwks_urls = ["https://idp.example.org/realms/ehr/protocol/openid-connect/certs"]
//!
//! [[identity.issuers]]
//! issuer = "batch-jobs"
//! audiences = ["fhir-api"]
//! algorithms = ["HS256"]
//! hmac_secrets = [{ env_var = "AUDITGATE_BATCH_SECRET" }]
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use http::header::{HeaderMap, HeaderName, AUTHORIZATION};
use http::StatusCode;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use lru::LruCache;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::ConfigError;
use crate::record::Actor;

/// The realm named in every `WWW-Authenticate` challenge.
pub const REALM: &str = "auditgate";

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// The `[identity]` section: which token issuers the gateway trusts and how tokens are verified.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// The token issuers the gateway trusts (at least one). A token is matched to an issuer by
    /// its `iss` claim, then verified with that issuer's keys and rules only.
    pub issuers: Vec<IssuerConfig>,
    /// Clock skew allowed when checking `exp` and `nbf`, in seconds (at most 300).
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// How many verified tokens to remember, so a repeated token skips signature checks.
    /// Entries are served only until the token's `exp`. `0` turns the cache off.
    #[serde(default = "default_cache_max_entries")]
    pub cache_max_entries: usize,
    /// Which claims fill the journal's actor fields. Each issuer may override it whole.
    #[serde(default)]
    pub claims: ClaimMapping,
    /// A request header by which the client declares emergency ("break glass") access, for
    /// example `X-Break-Glass`; the values `true`, `1` and `yes` (any case) set `break_glass`.
    /// It is the client's declaration, not verified; unset means no header is read.
    #[serde(default)]
    pub break_glass_header: Option<String>,
    /// How often every JWKS URL is fetched again in the background, in seconds (at least 1).
    #[serde(default = "default_jwks_refresh_secs")]
    pub jwks_refresh_secs: u64,
    /// The least time between two fetches of one JWKS URL triggered by tokens whose `kid` is
    /// unknown, in seconds. Bounds the load that tokens with made-up `kid`s can cause.
    #[serde(default = "default_jwks_min_refetch_secs")]
    pub jwks_min_refetch_secs: u64,
    /// Timeout of one JWKS fetch (connect and body), in milliseconds (1 to 60000).
    #[serde(default = "default_jwks_fetch_timeout_ms")]
    pub jwks_fetch_timeout_ms: u64,
    /// The largest JWKS document accepted from a URL or file, in bytes (at least 1024).
    #[serde(default = "default_jwks_max_bytes")]
    pub jwks_max_bytes: u64,
    /// The longest bearer token accepted, in bytes (at least 256); longer ones are `malformed`.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
}

fn default_leeway_secs() -> u64 {
    30
}
fn default_cache_max_entries() -> usize {
    10_000
}
fn default_jwks_refresh_secs() -> u64 {
    300
}
fn default_jwks_min_refetch_secs() -> u64 {
    30
}
fn default_jwks_fetch_timeout_ms() -> u64 {
    5_000
}
fn default_jwks_max_bytes() -> u64 {
    1024 * 1024
}
fn default_max_token_bytes() -> usize {
    16 * 1024
}

/// One trusted token issuer: its `iss`, accepted audiences and algorithms, and its keys.
///
/// At least one key source is required. HMAC algorithms (`HS256`, `HS384`, `HS512`) take keys
/// from `hmac_secrets` (or `oct` keys of a JWKS file); the public-key algorithms (`RS*`, `PS*`,
/// `ES256`, `ES384`, `EdDSA`) from `pem_keys`, `jwks_files` and `jwks_urls`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` claim of this issuer's tokens (compared byte for byte).
    pub issuer: String,
    /// Accepted `aud` values: a token must carry `aud` naming at least one (at least one entry).
    pub audiences: Vec<String>,
    /// Signature algorithms accepted from this issuer, e.g. `["RS256"]`. A token whose header
    /// `alg` is not listed is refused (`disallowed_alg`). HMAC and public-key algorithms cannot
    /// be mixed in one issuer.
    pub algorithms: Vec<Algorithm>,
    /// Public keys in PEM files (RSA, EC P-256/P-384, Ed25519; SPKI `PUBLIC KEY` or PKCS#1
    /// `RSA PUBLIC KEY`). Relative paths are resolved against the config file's directory.
    #[serde(default)]
    pub pem_keys: Vec<PemKeyConfig>,
    /// HMAC shared secrets, each read from an environment variable at start.
    #[serde(default)]
    pub hmac_secrets: Vec<HmacSecretConfig>,
    /// JWKS documents (RFC 7517 JSON Web Key Sets) read from files at start. `oct` (HMAC) keys
    /// are accepted from files. Relative paths are resolved against the config file's directory.
    #[serde(default)]
    pub jwks_files: Vec<PathBuf>,
    /// JWKS URLs, fetched at start (a failure stops the start), then every `jwks_refresh_secs`
    /// and when a token names an unknown `kid`. `https` only, except `http` to a loopback
    /// address. Redirects are not followed; `oct` (HMAC) keys served by a URL are ignored.
    #[serde(default)]
    pub jwks_urls: Vec<String>,
    /// Claim names for this issuer's tokens, replacing `identity.claims` whole when set.
    #[serde(default)]
    pub claims: Option<ClaimMapping>,
}

/// A public key in a PEM file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PemKeyConfig {
    /// The PEM file.
    pub path: PathBuf,
    /// The `kid` tokens signed with this key carry. Unset: the key is tried for any token of
    /// this issuer whose `kid` matches no other key (and for tokens without `kid`).
    #[serde(default)]
    pub kid: Option<String>,
}

/// An HMAC shared secret held in an environment variable (never in the config file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HmacSecretConfig {
    /// The environment variable holding the secret. It must be at least as long as the hash
    /// of the strongest accepted HS algorithm (32 bytes for HS256, 48 for HS384, 64 for HS512).
    pub env_var: String,
    /// The `kid` tokens signed with this secret carry (optional, as for PEM keys).
    #[serde(default)]
    pub kid: Option<String>,
    /// The variable holds the secret in standard base64 rather than as raw text.
    #[serde(default)]
    pub base64: bool,
}

/// Which token claims fill the actor. Each value names a top-level claim, or, when it starts
/// with `/`, a JSON Pointer (RFC 6901) into the claims, e.g. `/realm_access/roles`. An empty
/// string means "not mapped" (except `user`, which is required).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimMapping {
    /// The unique user id (string or integer). Tokens without it are refused (`missing_claim`).
    #[serde(default = "default_user_claim")]
    pub user: String,
    /// The user's display name.
    #[serde(default = "default_name_claim")]
    pub name: String,
    /// The user's roles: an array of strings or one space-separated string.
    #[serde(default = "default_roles_claim")]
    pub roles: String,
    /// The client application: the first of these claims that is present.
    #[serde(default = "default_client_id_claims")]
    pub client_id: Vec<String>,
    /// The declared purpose of use (e.g. `TREAT`): a string or an array of strings.
    #[serde(default = "default_purpose_of_use_claim")]
    pub purpose_of_use: String,
    /// The token id.
    #[serde(default = "default_jti_claim")]
    pub jti: String,
    /// SMART on FHIR `fhirUser` (e.g. `Practitioner/123`).
    #[serde(default = "default_fhir_user_claim")]
    pub fhir_user: String,
    /// SMART launch context patient.
    #[serde(default = "default_patient_claim")]
    pub patient: String,
    /// A boolean claim (or the string `"true"`) declaring emergency access.
    #[serde(default = "default_break_glass_claim")]
    pub break_glass: String,
    /// A claim holding the device id (returned beside the actor for the network record).
    /// Not mapped by default.
    #[serde(default)]
    pub device_id: String,
}

fn default_user_claim() -> String {
    "sub".into()
}
fn default_name_claim() -> String {
    "name".into()
}
fn default_roles_claim() -> String {
    "roles".into()
}
fn default_client_id_claims() -> Vec<String> {
    vec!["client_id".into(), "azp".into()]
}
fn default_purpose_of_use_claim() -> String {
    "purpose_of_use".into()
}
fn default_jti_claim() -> String {
    "jti".into()
}
fn default_fhir_user_claim() -> String {
    "fhirUser".into()
}
fn default_patient_claim() -> String {
    "patient".into()
}
fn default_break_glass_claim() -> String {
    "break_glass".into()
}

impl Default for ClaimMapping {
    fn default() -> Self {
        ClaimMapping {
            user: default_user_claim(),
            name: default_name_claim(),
            roles: default_roles_claim(),
            client_id: default_client_id_claims(),
            purpose_of_use: default_purpose_of_use_claim(),
            jti: default_jti_claim(),
            fhir_user: default_fhir_user_claim(),
            patient: default_patient_claim(),
            break_glass: default_break_glass_claim(),
            device_id: String::new(),
        }
    }
}

impl ClaimMapping {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.user.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.user"),
                "the user claim is required (default `sub`)",
            ));
        }
        for (i, name) in self.client_id.iter().enumerate() {
            if name.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{key}.client_id[{i}]"),
                    "claim names cannot be empty",
                ));
            }
        }
        Ok(())
    }
}

fn is_hmac(alg: Algorithm) -> bool {
    alg.family() == AlgorithmFamily::Hmac
}

/// The least secret length for an HMAC algorithm (RFC 7518 §3.2: at least the hash size).
fn hmac_min_bytes(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn parse_jwks_url(raw: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if url.host_str().is_some_and(is_loopback_host) => Ok(url),
        "http" => Err("plain http is accepted only to a loopback address; use https".into()),
        _ => Err("the scheme must be https".into()),
    }
}

impl IdentityConfig {
    /// Check every value; the error names the offending key, e.g.
    /// `identity.issuers[0].algorithms`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.issuers.is_empty() {
            return Err(ConfigError::invalid(
                "identity.issuers",
                "at least one issuer is required",
            ));
        }
        if self.leeway_secs > 300 {
            return Err(ConfigError::invalid(
                "identity.leeway_secs",
                "at most 300 seconds",
            ));
        }
        if self.jwks_refresh_secs == 0 {
            return Err(ConfigError::invalid(
                "identity.jwks_refresh_secs",
                "at least 1 second",
            ));
        }
        if !(1..=60_000).contains(&self.jwks_fetch_timeout_ms) {
            return Err(ConfigError::invalid(
                "identity.jwks_fetch_timeout_ms",
                "between 1 and 60000 milliseconds",
            ));
        }
        if self.jwks_max_bytes < 1024 {
            return Err(ConfigError::invalid(
                "identity.jwks_max_bytes",
                "at least 1024 bytes",
            ));
        }
        if self.max_token_bytes < 256 {
            return Err(ConfigError::invalid(
                "identity.max_token_bytes",
                "at least 256 bytes",
            ));
        }
        if let Some(name) = &self.break_glass_header {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) if h == AUTHORIZATION => {
                    return Err(ConfigError::invalid(
                        "identity.break_glass_header",
                        "cannot be the Authorization header",
                    ))
                }
                Ok(_) => {}
                Err(_) => {
                    return Err(ConfigError::invalid(
                        "identity.break_glass_header",
                        "not a valid HTTP header name",
                    ))
                }
            }
        }
        self.claims.validate("identity.claims")?;

        let mut seen = HashMap::new();
        for (i, issuer) in self.issuers.iter().enumerate() {
            let key = format!("identity.issuers[{i}]");
            if issuer.issuer.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{key}.issuer"),
                    "cannot be empty",
                ));
            }
            if let Some(first) = seen.insert(issuer.issuer.as_str(), i) {
                return Err(ConfigError::invalid(
                    format!("{key}.issuer"),
                    format!("the same issuer is already configured at identity.issuers[{first}]"),
                ));
            }
            issuer.validate(&key)?;
        }
        Ok(())
    }
}

impl IssuerConfig {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            return Err(ConfigError::invalid(
                format!("{key}.audiences"),
                "at least one non-empty audience is required",
            ));
        }
        if self.algorithms.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.algorithms"),
                "at least one algorithm is required",
            ));
        }
        for (i, alg) in self.algorithms.iter().enumerate() {
            if self.algorithms[..i].contains(alg) {
                return Err(ConfigError::invalid(
                    format!("{key}.algorithms"),
                    format!("{alg:?} is listed twice"),
                ));
            }
        }
        let hmac = self.algorithms.iter().any(|a| is_hmac(*a));
        let public = self.algorithms.iter().any(|a| !is_hmac(*a));
        if hmac && public {
            return Err(ConfigError::invalid(
                format!("{key}.algorithms"),
                "HMAC (HS*) and public-key algorithms cannot be mixed in one issuer; \
                 configure the shared-secret tokens as a separate issuer",
            ));
        }
        if hmac && self.hmac_secrets.is_empty() && self.jwks_files.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.hmac_secrets"),
                "HS algorithms need a secret (hmac_secrets or a JWKS file with oct keys)",
            ));
        }
        if !hmac && !self.hmac_secrets.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.hmac_secrets"),
                "secrets are configured but no HS algorithm is accepted",
            ));
        }
        if public
            && self.pem_keys.is_empty()
            && self.jwks_files.is_empty()
            && self.jwks_urls.is_empty()
        {
            return Err(ConfigError::invalid(
                format!("{key}.algorithms"),
                "public-key algorithms need pem_keys, jwks_files or jwks_urls",
            ));
        }
        if hmac && !self.jwks_urls.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.jwks_urls"),
                "an HMAC issuer cannot take keys from a URL: a secret served over HTTP is no secret",
            ));
        }
        for (i, pem) in self.pem_keys.iter().enumerate() {
            if pem.path.as_os_str().is_empty() {
                return Err(ConfigError::invalid(
                    format!("{key}.pem_keys[{i}].path"),
                    "cannot be empty",
                ));
            }
            if pem.kid.as_deref() == Some("") {
                return Err(ConfigError::invalid(
                    format!("{key}.pem_keys[{i}].kid"),
                    "cannot be empty (leave it out instead)",
                ));
            }
        }
        for (i, secret) in self.hmac_secrets.iter().enumerate() {
            if secret.env_var.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{key}.hmac_secrets[{i}].env_var"),
                    "cannot be empty",
                ));
            }
            if secret.kid.as_deref() == Some("") {
                return Err(ConfigError::invalid(
                    format!("{key}.hmac_secrets[{i}].kid"),
                    "cannot be empty (leave it out instead)",
                ));
            }
        }
        for (i, path) in self.jwks_files.iter().enumerate() {
            if path.as_os_str().is_empty() {
                return Err(ConfigError::invalid(
                    format!("{key}.jwks_files[{i}]"),
                    "cannot be empty",
                ));
            }
        }
        for (i, url) in self.jwks_urls.iter().enumerate() {
            parse_jwks_url(url)
                .map_err(|reason| ConfigError::invalid(format!("{key}.jwks_urls[{i}]"), reason))?;
        }
        if let Some(claims) = &self.claims {
            claims.validate(&format!("{key}.claims"))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why [`Identity::load`] could not build the verifier. Messages name config keys and files,
/// never secret or key material.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The configuration failed [`IdentityConfig::validate`].
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A PEM key file could not be read.
    #[error("config key `{key}`: cannot read key file {path}: {source}")]
    ReadKey {
        key: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds no public key of a supported kind (RSA, EC P-256/P-384, Ed25519).
    #[error(
        "config key `{key}`: {path} holds no RSA, EC (P-256/P-384) or Ed25519 public key in PEM"
    )]
    BadPem { key: String, path: PathBuf },
    /// A key file holds a private key; the gateway takes public keys only.
    #[error(
        "config key `{key}`: {path} holds a private key; give the gateway the public key only"
    )]
    PrivateKey { key: String, path: PathBuf },
    /// A key's family (RSA, EC, Ed) serves none of the issuer's accepted algorithms.
    #[error("config key `{key}`: {path} holds a {family} key but the issuer accepts no {family} algorithm")]
    KeyNotUsable {
        key: String,
        path: PathBuf,
        family: &'static str,
    },
    /// An HMAC secret's environment variable is unset, empty or not UTF-8.
    #[error("config key `{key}`: environment variable {var} is unset, empty or not UTF-8")]
    MissingSecret { key: String, var: String },
    /// An HMAC secret declared `base64` does not decode.
    #[error("config key `{key}`: environment variable {var} is not valid base64")]
    BadSecret { key: String, var: String },
    /// An HMAC secret is shorter than the hash of the strongest accepted HS algorithm.
    #[error("config key `{key}`: the secret in {var} is {len_bytes} bytes; at least {min_bytes} are required")]
    WeakSecret {
        key: String,
        var: String,
        len_bytes: usize,
        min_bytes: usize,
    },
    /// A JWKS file could not be read.
    #[error("config key `{key}`: cannot read JWKS file {path}: {source}")]
    ReadJwks {
        key: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JWKS document (file or URL) is not a key set, is too large, or holds no usable key.
    #[error("config key `{key}`: JWKS {origin}: {reason}")]
    BadJwks {
        key: String,
        origin: String,
        reason: String,
    },
    /// The first fetch of a JWKS URL failed (network, status, size or content).
    #[error("config key `{key}`: cannot fetch JWKS from {url}: {reason}")]
    FetchJwks {
        key: String,
        url: String,
        reason: String,
    },
    /// After loading, an issuer has no key that serves any of its accepted algorithms.
    #[error("config key `{key}`: no loaded key serves any of the issuer's algorithms")]
    NoUsableKeys { key: String },
    /// The HTTP client for JWKS fetches could not be built (TLS setup).
    #[error("cannot build the HTTP client for JWKS fetches: {reason}")]
    HttpClient { reason: String },
}

/// Why a request is not authenticated. [`reason`](Self::reason) is the fixed code for the
/// journal and metric labels; no variant holds token contents or claim values (claim *names*
/// come from the configuration).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// No `Authorization` header and no token anywhere.
    #[error("no bearer token in the request")]
    MissingToken,
    /// An `Authorization` header with a scheme other than `Bearer` (e.g. `Basic`).
    #[error("the Authorization header uses a scheme other than Bearer")]
    UnsupportedScheme,
    /// The header or the token is not well formed; the text says what was wrong.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// An `access_token` query parameter (RFC 6750 §2.3), refused because query strings end up
    /// in logs and histories.
    #[error("access token in the query string")]
    TokenInQuery,
    /// Several `Authorization` headers, or a header and an `access_token` query parameter.
    #[error("more than one access token in the request")]
    MultipleTokens,
    /// The token header lists `crit` extensions; none are supported.
    #[error("the token header lists critical extensions, none of which are supported")]
    UnsupportedCrit,
    /// The header `alg` is unknown (`none` included) or not accepted for the token's issuer.
    #[error("signature algorithm not accepted")]
    DisallowedAlg,
    /// The token's `iss` is not a configured issuer.
    #[error("token issuer is not trusted")]
    UnknownIssuer,
    /// No key of the issuer matches the token's `kid` and algorithm (after any re-fetch).
    #[error("no key of the issuer matches the token's kid and algorithm")]
    UnknownKey,
    /// No candidate key verifies the signature.
    #[error("signature verification failed")]
    BadSignature,
    /// `exp` is past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is ahead (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// The verified `iss` does not equal the issuer the token was routed to.
    #[error("token issuer does not match")]
    WrongIssuer,
    /// `aud` names none of the issuer's audiences.
    #[error("token audience not accepted")]
    WrongAudience,
    /// A required claim is absent.
    #[error("token lacks the required claim `{claim}`")]
    MissingClaim {
        /// The claim's name (from the configuration or the JWT spec), never its value.
        claim: String,
    },
    /// A claim has the wrong type or form (e.g. `roles` an object, `exp` a string).
    #[error("token claim `{claim}` has an invalid type or format")]
    InvalidClaim {
        /// The claim's name (from the configuration or the JWT spec), never its value.
        claim: String,
    },
}

impl AuthFailure {
    /// Every code [`reason`](Self::reason) can return, to pre-register metric label values.
    pub const REASONS: &'static [&'static str] = &[
        "missing_token",
        "unsupported_scheme",
        "malformed",
        "token_in_query",
        "multiple_tokens",
        "unsupported_crit",
        "disallowed_alg",
        "unknown_issuer",
        "unknown_key",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "missing_claim",
        "invalid_claim",
    ];

    /// A fixed, short code for the journal and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthFailure::MissingToken => "missing_token",
            AuthFailure::UnsupportedScheme => "unsupported_scheme",
            AuthFailure::Malformed(_) => "malformed",
            AuthFailure::TokenInQuery => "token_in_query",
            AuthFailure::MultipleTokens => "multiple_tokens",
            AuthFailure::UnsupportedCrit => "unsupported_crit",
            AuthFailure::DisallowedAlg => "disallowed_alg",
            AuthFailure::UnknownIssuer => "unknown_issuer",
            AuthFailure::UnknownKey => "unknown_key",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::WrongIssuer => "wrong_issuer",
            AuthFailure::WrongAudience => "wrong_audience",
            AuthFailure::MissingClaim { .. } => "missing_claim",
            AuthFailure::InvalidClaim { .. } => "invalid_claim",
        }
    }

    /// The RFC 6750 §3.1 error code, or `None` when the request carried no bearer
    /// credentials at all (then the challenge carries no error, as the RFC asks).
    pub fn error_code(&self) -> Option<&'static str> {
        match self {
            AuthFailure::MissingToken | AuthFailure::UnsupportedScheme => None,
            // RFC 6750 §3.1: a malformed token is `invalid_token` (401); a request that carries
            // its token in the wrong place or more than once is `invalid_request` (400).
            AuthFailure::TokenInQuery | AuthFailure::MultipleTokens => Some("invalid_request"),
            _ => Some("invalid_token"),
        }
    }

    /// The HTTP status RFC 6750 §3.1 gives: 400 for `invalid_request`, 401 otherwise.
    pub fn status(&self) -> StatusCode {
        match self.error_code() {
            Some("invalid_request") => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// A fixed description for `error_description`: printable ASCII without `"` or `\`.
    fn description(&self) -> &'static str {
        match self {
            AuthFailure::MissingToken => "no bearer token",
            AuthFailure::UnsupportedScheme => "only Bearer tokens are accepted",
            AuthFailure::Malformed(what) => what,
            AuthFailure::TokenInQuery => "access tokens in the query string are not accepted",
            AuthFailure::MultipleTokens => "more than one access token in the request",
            AuthFailure::UnsupportedCrit => "critical header parameters are not supported",
            AuthFailure::DisallowedAlg => "signature algorithm not accepted",
            AuthFailure::UnknownIssuer => "token issuer not trusted",
            AuthFailure::UnknownKey => "signing key not found",
            AuthFailure::BadSignature => "signature verification failed",
            AuthFailure::Expired => "token expired",
            AuthFailure::NotYetValid => "token not yet valid",
            AuthFailure::WrongIssuer => "token issuer mismatch",
            AuthFailure::WrongAudience => "token audience not accepted",
            AuthFailure::MissingClaim { .. } => "a required claim is missing",
            AuthFailure::InvalidClaim { .. } => "a claim has an invalid type or format",
        }
    }

    /// The `WWW-Authenticate` header value (RFC 6750 §3): `Bearer realm="auditgate"` when the
    /// request carried no bearer token, otherwise with `error` and `error_description`.
    pub fn www_authenticate(&self) -> String {
        match self.error_code() {
            None => format!("Bearer realm=\"{REALM}\""),
            Some(code) => format!(
                "Bearer realm=\"{REALM}\", error=\"{code}\", error_description=\"{}\"",
                self.description()
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The verifier
// ---------------------------------------------------------------------------------------------

/// A verified request: the actor for the journal, and the device id claim when one is mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// Who made the request.
    pub actor: Actor,
    /// The device id from the configured claim (the network vector records it).
    pub device_id: Option<String>,
}

/// Counters of the verified-token cache, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Entries currently held.
    pub entries: usize,
    /// Requests answered from the cache.
    pub hits: u64,
    /// Requests that needed a full verification.
    pub misses: u64,
}

/// One key able to verify signatures for one issuer.
struct VerifyKey {
    kid: Option<String>,
    /// A JWK's `alg`: when set, the only algorithm this key verifies.
    alg: Option<Algorithm>,
    key: DecodingKey,
    /// SHA-256 of the key's JWK JSON, to tell which keys a new JWKS dropped. Keys
    /// from PEM files and secrets never change and carry zeros.
    fingerprint: [u8; 32],
}

impl VerifyKey {
    fn serves(&self, alg: Algorithm) -> bool {
        self.key.family() == alg.family() && self.alg.is_none_or(|a| a == alg)
    }
}

/// A JWKS URL and its last good key set.
struct RemoteJwks {
    url: reqwest::Url,
    /// The URL without query or fragment, for logs.
    display: String,
    keys: RwLock<Arc<Vec<Arc<VerifyKey>>>>,
    /// Serialises fetches of this URL; holds when the last `kid`-triggered fetch started.
    fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl RemoteJwks {
    fn snapshot(&self) -> Arc<Vec<Arc<VerifyKey>>> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn has_kid(&self, kid: &str) -> bool {
        self.snapshot()
            .iter()
            .any(|k| k.kid.as_deref() == Some(kid))
    }
}

struct Issuer {
    iss: String,
    /// One ready `Validation` per accepted algorithm. jsonwebtoken refuses a `Validation`
    /// whose algorithms span several key families, so each holds exactly one.
    validations: Vec<(Algorithm, Validation)>,
    static_keys: Vec<Arc<VerifyKey>>,
    remote: Vec<RemoteJwks>,
    claims: ClaimMapping,
}

impl Issuer {
    fn validation(&self, alg: Algorithm) -> Option<&Validation> {
        self.validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
    }

    fn all_keys(&self) -> Vec<Arc<VerifyKey>> {
        let mut keys = self.static_keys.clone();
        for remote in &self.remote {
            keys.extend(remote.snapshot().iter().cloned());
        }
        keys
    }

    /// Keys whose `kid` equals `kid` and that serve `alg`.
    fn keys_with_kid(&self, kid: &str, alg: Algorithm) -> Vec<Arc<VerifyKey>> {
        let mut keys = self.all_keys();
        keys.retain(|k| k.kid.as_deref() == Some(kid) && k.serves(alg));
        keys
    }

    /// Keys without a `kid` that serve `alg` (tried when no key carries the token's `kid`),
    /// or, with `any_kid`, every key that serves `alg` (for tokens without `kid`).
    fn keys_without_kid(&self, alg: Algorithm, any_kid: bool) -> Vec<Arc<VerifyKey>> {
        let mut keys = self.all_keys();
        keys.retain(|k| (any_kid || k.kid.is_none()) && k.serves(alg));
        keys
    }
}

struct CacheEntry {
    /// The actor with `break_glass` from the claim only (the header is read per request).
    actor: Actor,
    device_id: Option<String>,
    exp: u64,
}

/// The JWT verifier. `Send + Sync`; share it in an `Arc`.
pub struct Identity {
    issuers: Vec<Issuer>,
    by_iss: HashMap<String, usize>,
    cache: Option<Mutex<LruCache<[u8; 32], CacheEntry>>>,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    http: reqwest::Client,
    break_glass_header: Option<HeaderName>,
    max_token_bytes: usize,
    jwks_max_bytes: u64,
    jwks_refresh: Duration,
    jwks_min_refetch: Duration,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field(
                "issuers",
                &self
                    .issuers
                    .iter()
                    .map(|i| i.iss.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("cache", &self.cache_stats())
            .finish_non_exhaustive()
    }
}

/// The current time in seconds since the epoch, from the clock jsonwebtoken checks `exp` with.
fn now_secs() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn family_name(family: AlgorithmFamily) -> &'static str {
    match family {
        AlgorithmFamily::Hmac => "HMAC",
        AlgorithmFamily::Rsa => "RSA",
        AlgorithmFamily::Ec => "EC",
        AlgorithmFamily::Ed => "Ed25519",
    }
}

impl Identity {
    /// Validate `cfg`, read every key (relative paths against `base_dir`), fetch every JWKS
    /// URL once (a failure here is an error: the gateway must not start without keys).
    pub async fn load(cfg: &IdentityConfig, base_dir: &Path) -> Result<Identity, IdentityError> {
        cfg.validate()?;
        let timeout = Duration::from_millis(cfg.jwks_fetch_timeout_ms);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("auditgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| IdentityError::HttpClient {
                reason: e.to_string(),
            })?;

        let mut identity = Identity {
            issuers: Vec::with_capacity(cfg.issuers.len()),
            by_iss: HashMap::new(),
            cache: NonZeroUsize::new(cfg.cache_max_entries).map(|n| Mutex::new(LruCache::new(n))),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            http,
            break_glass_header: cfg
                .break_glass_header
                .as_deref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            max_token_bytes: cfg.max_token_bytes,
            jwks_max_bytes: cfg.jwks_max_bytes,
            jwks_refresh: Duration::from_secs(cfg.jwks_refresh_secs),
            jwks_min_refetch: Duration::from_secs(cfg.jwks_min_refetch_secs),
        };

        for (i, ic) in cfg.issuers.iter().enumerate() {
            let key = format!("identity.issuers[{i}]");
            let issuer = identity.load_issuer(cfg, ic, &key, base_dir).await?;
            identity.by_iss.insert(issuer.iss.clone(), i);
            identity.issuers.push(issuer);
        }
        Ok(identity)
    }

    async fn load_issuer(
        &self,
        cfg: &IdentityConfig,
        ic: &IssuerConfig,
        key: &str,
        base_dir: &Path,
    ) -> Result<Issuer, IdentityError> {
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
                fingerprint: [0; 32],
                key: decoded,
            }));
        }

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
                DecodingKey::from_base64_secret(value.trim()).map_err(|_| {
                    IdentityError::BadSecret {
                        key: key.clone(),
                        var: secret.env_var.clone(),
                    }
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
            static_keys.push(Arc::new(VerifyKey {
                kid: secret.kid.clone(),
                alg: None,
                fingerprint: [0; 32],
                key: decoded,
            }));
        }

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

        let mut remote = Vec::with_capacity(ic.jwks_urls.len());
        for (j, raw) in ic.jwks_urls.iter().enumerate() {
            let key = format!("{key}.jwks_urls[{j}]");
            // Validated above; a failure here would be a bug, reported as a config error.
            let url = parse_jwks_url(raw).map_err(|reason| ConfigError::invalid(&key, reason))?;
            let mut shown = url.clone();
            shown.set_query(None);
            shown.set_fragment(None);
            let shown = shown.to_string();
            let keys = self
                .fetch_jwks(&url)
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

    /// Authenticate one request from its headers and raw query string (without `?`).
    ///
    /// Cheap when the token was verified before (a SHA-256 and a cache look-up); otherwise a
    /// signature check, and at most one JWKS fetch when the token names an unknown `kid`.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Authenticated, AuthFailure> {
        let token = extract_bearer(headers, query, self.max_token_bytes)?;
        let header_break_glass = self.header_break_glass(headers);
        let digest = sha256(token.as_bytes());

        if let Some(mut hit) = self.cache_get(&digest) {
            hit.actor.break_glass |= header_break_glass;
            return Ok(hit);
        }

        let (mut verified, exp) = self.verify(token).await?;
        self.cache_put(digest, &verified, exp);
        verified.actor.break_glass |= header_break_glass;
        Ok(verified)
    }

    /// Fetch every JWKS URL once; a failure keeps that URL's last good set (and is logged).
    pub async fn refresh_jwks(&self) {
        for issuer in &self.issuers {
            for remote in &issuer.remote {
                let _serialised = remote.fetch.lock().await;
                match self.fetch_jwks(&remote.url).await {
                    Ok(keys) => self.install(remote, keys),
                    Err(reason) => tracing::warn!(
                        url = %remote.display,
                        %reason,
                        "JWKS refresh failed; keeping the last good key set"
                    ),
                }
            }
        }
    }

    /// Refresh every JWKS URL every `jwks_refresh_secs`, forever. Returns at once when no
    /// issuer has a JWKS URL. Meant to be spawned once beside the proxy.
    pub async fn run_refresher(self: Arc<Self>) {
        if self.issuers.iter().all(|i| i.remote.is_empty()) {
            return;
        }
        let start = tokio::time::Instant::now() + self.jwks_refresh;
        let mut ticker = tokio::time::interval_at(start, self.jwks_refresh);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.refresh_jwks().await;
        }
    }

    /// How many verification keys are loaded now (static keys, secrets and JWKS keys).
    pub fn key_count(&self) -> usize {
        self.issuers.iter().map(|i| i.all_keys().len()).sum()
    }

    /// Hit and miss counts and the size of the verified-token cache.
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            entries: self.cache.as_ref().map_or(0, |c| {
                c.lock().unwrap_or_else(PoisonError::into_inner).len()
            }),
            hits: self.cache_hits.load(Ordering::Relaxed),
            misses: self.cache_misses.load(Ordering::Relaxed),
        }
    }

    fn header_break_glass(&self, headers: &HeaderMap) -> bool {
        let Some(name) = &self.break_glass_header else {
            return false;
        };
        headers.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                let s = s.trim();
                s.eq_ignore_ascii_case("true") || s == "1" || s.eq_ignore_ascii_case("yes")
            })
        })
    }

    fn cache_get(&self, digest: &[u8; 32]) -> Option<Authenticated> {
        let cache = self.cache.as_ref()?;
        let now = now_secs();
        let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = match cache.get(digest) {
            Some(entry) if now < entry.exp => Some(Authenticated {
                actor: entry.actor.clone(),
                device_id: entry.device_id.clone(),
            }),
            Some(_) => {
                cache.pop(digest);
                None
            }
            None => None,
        };
        drop(cache);
        let counter = if fresh.is_some() {
            &self.cache_hits
        } else {
            &self.cache_misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        fresh
    }

    fn cache_put(&self, digest: [u8; 32], verified: &Authenticated, exp: u64) {
        // A token accepted only thanks to the leeway is never served from the cache.
        if now_secs() >= exp {
            return;
        }
        if let Some(cache) = &self.cache {
            let entry = CacheEntry {
                actor: verified.actor.clone(),
                device_id: verified.device_id.clone(),
                exp,
            };
            cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .put(digest, entry);
        }
    }

    fn clear_cache(&self) {
        if let Some(cache) = &self.cache {
            cache.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
    }

    /// Full verification of a token: header, issuer, algorithm, key, signature, claims.
    async fn verify(&self, token: &str) -> Result<(Authenticated, u64), AuthFailure> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthFailure::Malformed(
                "a JWT has three dot-separated parts",
            ));
        };

        // The header, read by hand so that `alg: none` (which jsonwebtoken cannot even parse)
        // is refused as a disallowed algorithm, and so that nothing but `alg`, `kid` and `crit`
        // is ever looked at.
        let header: RawHeader = b64url_decode(header_b64)
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or(AuthFailure::Malformed(
                "the token header is not base64url JSON",
            ))?;
        let alg = Algorithm::from_str(&header.alg).map_err(|_| AuthFailure::DisallowedAlg)?;
        if header.crit.is_some() {
            return Err(AuthFailure::UnsupportedCrit);
        }

        // The unverified `iss` only chooses which issuer's rules and keys apply; the verified
        // `iss` is checked against it below.
        let payload: Value = b64url_decode(payload_b64)
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .filter(Value::is_object)
            .ok_or(AuthFailure::Malformed(
                "the token payload is not a base64url JSON object",
            ))?;
        let iss = match payload.get("iss") {
            None | Some(Value::Null) => {
                return Err(AuthFailure::MissingClaim {
                    claim: "iss".into(),
                })
            }
            Some(Value::String(s)) => s.as_str(),
            Some(_) => {
                return Err(AuthFailure::InvalidClaim {
                    claim: "iss".into(),
                })
            }
        };
        let issuer = self
            .by_iss
            .get(iss)
            .map(|&i| &self.issuers[i])
            .ok_or(AuthFailure::UnknownIssuer)?;
        let validation = issuer.validation(alg).ok_or(AuthFailure::DisallowedAlg)?;

        let candidates = match header.kid.as_deref() {
            Some(kid) => {
                let mut keys = issuer.keys_with_kid(kid, alg);
                if keys.is_empty() && self.refetch_for_kid(issuer, kid).await {
                    keys = issuer.keys_with_kid(kid, alg);
                }
                if keys.is_empty() {
                    keys = issuer.keys_without_kid(alg, false);
                }
                keys
            }
            None => issuer.keys_without_kid(alg, true),
        };
        if candidates.is_empty() {
            return Err(AuthFailure::UnknownKey);
        }

        let mut claims = None;
        for key in &candidates {
            match jsonwebtoken::decode::<Value>(token, &key.key, validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(e) => {
                    if let Some(failure) = refusal(e.kind()) {
                        return Err(failure);
                    }
                    // Otherwise this key did not verify the signature: try the next one.
                }
            }
        }
        let claims = claims.ok_or(AuthFailure::BadSignature)?;

        let exp = claims
            .get("exp")
            .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)))
            .ok_or_else(|| AuthFailure::InvalidClaim {
                claim: "exp".into(),
            })?;
        let verified = map_claims(&claims, &issuer.iss, &issuer.claims)?;
        Ok((verified, exp))
    }

    /// A token named `kid` and no key has it: fetch the issuer's JWKS URLs again, each at most
    /// once per `jwks_min_refetch`. True when a key with that `kid` is now known.
    async fn refetch_for_kid(&self, issuer: &Issuer, kid: &str) -> bool {
        for remote in &issuer.remote {
            let mut last = remote.fetch.lock().await;
            // Another request may have fetched the key while this one waited for the lock.
            if remote.has_kid(kid) {
                return true;
            }
            if last.is_some_and(|t| t.elapsed() < self.jwks_min_refetch) {
                continue;
            }
            *last = Some(Instant::now());
            match self.fetch_jwks(&remote.url).await {
                Ok(keys) => {
                    self.install(remote, keys);
                    if remote.has_kid(kid) {
                        return true;
                    }
                }
                Err(reason) => tracing::warn!(
                    url = %remote.display,
                    %reason,
                    "JWKS re-fetch for an unknown kid failed; keeping the last good key set"
                ),
            }
        }
        false
    }

    /// Replace a URL's key set. If any previous key is gone, empty the token cache, so that
    /// tokens signed by a withdrawn key stop being accepted at once.
    fn install(&self, remote: &RemoteJwks, keys: Vec<Arc<VerifyKey>>) {
        let mut slot = remote.keys.write().unwrap_or_else(PoisonError::into_inner);
        let removed = slot
            .iter()
            .any(|old| !keys.iter().any(|new| new.fingerprint == old.fingerprint));
        let count = keys.len();
        *slot = Arc::new(keys);
        drop(slot);
        if removed {
            self.clear_cache();
        }
        tracing::debug!(url = %remote.display, keys = count, removed, "JWKS installed");
    }

    /// GET a JWKS URL (see [`Identity::fetch_jwks_once`]), counted in
    /// `auditgate_jwks_refreshes_total`.
    async fn fetch_jwks(&self, url: &reqwest::Url) -> Result<Vec<Arc<VerifyKey>>, String> {
        let result = self.fetch_jwks_once(url).await;
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
    async fn fetch_jwks_once(&self, url: &reqwest::Url) -> Result<Vec<Arc<VerifyKey>>, String> {
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
        let too_large = || format!("body larger than jwks_max_bytes ({})", self.jwks_max_bytes);
        if response
            .content_length()
            .is_some_and(|n| n > self.jwks_max_bytes)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("reading the body failed: {}", describe(e)))?
        {
            if (body.len() + chunk.len()) as u64 > self.jwks_max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        parse_jwks(&body, false)
    }
}

/// A reqwest error with its causes, without the URL (a JWKS URL's query may hold a secret;
/// logs show the URL without query separately).
fn describe(error: reqwest::Error) -> String {
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

/// The parts of a JOSE header this module reads. Everything else (`jku`, `x5u`, `jwk`, `x5c`,
/// `typ`...) is ignored on purpose.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

/// Map a jsonwebtoken error to a refusal, or `None` when it means "this key did not verify
/// the signature" and the next candidate key should be tried.
fn refusal(kind: &ErrorKind) -> Option<AuthFailure> {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey => None,
        ErrorKind::ExpiredSignature => Some(AuthFailure::Expired),
        ErrorKind::ImmatureSignature => Some(AuthFailure::NotYetValid),
        ErrorKind::InvalidIssuer => Some(AuthFailure::WrongIssuer),
        ErrorKind::InvalidAudience => Some(AuthFailure::WrongAudience),
        ErrorKind::MissingRequiredClaim(claim) => Some(AuthFailure::MissingClaim {
            claim: claim.clone(),
        }),
        ErrorKind::InvalidClaimFormat(claim) => Some(AuthFailure::InvalidClaim {
            claim: claim.clone(),
        }),
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => Some(AuthFailure::Malformed("the token is not a well-formed JWS")),
        // Anything else (a provider failure, a future error kind) is no successful
        // verification; if every key fails this way the token is refused as `bad_signature`.
        _ => None,
    }
}

/// Parse a JWKS document into keys. Keys that are not for signatures, have an algorithm
/// jsonwebtoken does not verify, or do not parse are skipped; `oct` keys only with
/// `allow_oct`. Fails when no key is usable.
fn parse_jwks(bytes: &[u8], allow_oct: bool) -> Result<Vec<Arc<VerifyKey>>, String> {
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

fn jwk_to_key(raw: Value, allow_oct: bool) -> Option<VerifyKey> {
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
    let fingerprint = sha256(&serde_json::to_vec(&jwk).ok()?);
    Some(VerifyKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
        fingerprint,
    })
}

// ---------------------------------------------------------------------------------------------
// Extraction
// ---------------------------------------------------------------------------------------------

/// The bearer token of a request, or why there is not exactly one well-formed one.
fn extract_bearer<'h>(
    headers: &'h HeaderMap,
    query: Option<&str>,
    max_token_bytes: usize,
) -> Result<&'h str, AuthFailure> {
    let in_query = query.is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(name, _)| name == "access_token")
    });
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = match (values.next(), values.next(), in_query) {
        (Some(_), Some(_), _) | (Some(_), None, true) => return Err(AuthFailure::MultipleTokens),
        (None, _, true) => return Err(AuthFailure::TokenInQuery),
        (None, _, false) => return Err(AuthFailure::MissingToken),
        (Some(value), None, false) => value,
    };
    let value = value
        .to_str()
        .map_err(|_| AuthFailure::Malformed("the Authorization header is not visible ASCII"))?
        .trim_matches(|c| c == ' ' || c == '\t');
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::UnsupportedScheme);
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() {
        return Err(AuthFailure::Malformed("the Bearer credentials are empty"));
    }
    if token.len() > max_token_bytes {
        return Err(AuthFailure::Malformed("the token is longer than accepted"));
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(AuthFailure::Malformed("the token is not a compact JWS"));
    }
    Ok(token)
}

/// Strict base64url without padding (RFC 7515 §2), as jsonwebtoken decodes: no `=`, no
/// whitespace, and the unused trailing bits must be zero (the `base64` crate's default).
fn b64url_decode(input: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(input)
        .ok()
}

// ---------------------------------------------------------------------------------------------
// Claims to actor
// ---------------------------------------------------------------------------------------------

/// The claim named `name`: a top-level member, or a JSON Pointer when `name` starts with `/`.
/// `None` when not mapped (empty name), absent, or `null`.
fn lookup<'a>(claims: &'a Value, name: &str) -> Option<&'a Value> {
    if name.is_empty() {
        return None;
    }
    let value = if name.starts_with('/') {
        claims.pointer(name)
    } else {
        claims.get(name)
    };
    value.filter(|v| !v.is_null())
}

fn invalid(name: &str) -> AuthFailure {
    AuthFailure::InvalidClaim {
        claim: name.to_string(),
    }
}

/// A string claim (an integer is accepted as its decimal text when `numbers` is set).
fn opt_string(claims: &Value, name: &str, numbers: bool) -> Result<Option<String>, AuthFailure> {
    match lookup(claims, name) {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) if numbers && (n.is_u64() || n.is_i64()) => Ok(Some(n.to_string())),
        Some(_) => Err(invalid(name)),
    }
}

/// A list claim: an array of strings, or one string (split on whitespace when `split`).
fn string_list(claims: &Value, name: &str, split: bool) -> Result<Vec<String>, AuthFailure> {
    match lookup(claims, name) {
        None => Ok(Vec::new()),
        Some(Value::String(s)) if split => Ok(s.split_whitespace().map(str::to_string).collect()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(|| invalid(name)))
            .collect(),
        Some(_) => Err(invalid(name)),
    }
}

fn opt_bool(claims: &Value, name: &str) -> Result<bool, AuthFailure> {
    match lookup(claims, name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(_) => Err(invalid(name)),
    }
}

/// Build the actor from verified claims. `break_glass` here is the claim's only.
fn map_claims(claims: &Value, iss: &str, m: &ClaimMapping) -> Result<Authenticated, AuthFailure> {
    let user = opt_string(claims, &m.user, true)?.ok_or_else(|| AuthFailure::MissingClaim {
        claim: m.user.clone(),
    })?;
    let mut client_id = None;
    for name in &m.client_id {
        if let Some(id) = opt_string(claims, name, false)? {
            client_id = Some(id);
            break;
        }
    }
    let actor = Actor {
        user,
        issuer: iss.to_string(),
        name: opt_string(claims, &m.name, false)?,
        roles: string_list(claims, &m.roles, true)?,
        client_id,
        purpose_of_use: string_list(claims, &m.purpose_of_use, false)?,
        jti: opt_string(claims, &m.jti, false)?,
        fhir_user: opt_string(claims, &m.fhir_user, false)?,
        smart_patient: opt_string(claims, &m.patient, false)?,
        break_glass: opt_bool(claims, &m.break_glass)?,
    };
    let device_id = opt_string(claims, &m.device_id, true)?;
    Ok(Authenticated { actor, device_id })
}

#[cfg(test)]
mod tests {
    //! Real tokens signed with keys generated here (aws-lc-rs), verified through every key
    //! source, plus the known attacks. RSA key generation is slow in debug builds, so the keys
    //! are made once per test binary.

    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::OnceLock;

    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{
        EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING,
    };
    use base64::Engine as _;
    use http::HeaderValue;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const AUD: &str = "fhir-api";
    const RSA_ISS: &str = "https://rsa.idp.test";
    const PS_ISS: &str = "https://ps.idp.test";
    const EC_ISS: &str = "https://ec.idp.test";
    const ED_ISS: &str = "https://ed.idp.test";

    /// A private key to sign with, and its public half.
    struct Signer {
        enc: EncodingKey,
        public_pem: String,
        alg: Algorithm,
    }

    impl Signer {
        fn sign(&self, kid: Option<&str>, claims: &Value) -> String {
            self.sign_as(self.alg, kid, claims)
        }

        fn sign_as(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
            let mut header = Header::new(alg);
            header.kid = kid.map(str::to_string);
            jsonwebtoken::encode(&header, claims, &self.enc).expect("signing works")
        }

        /// The public JWK, with `kid` and `alg`.
        fn jwk(&self, kid: &str) -> Value {
            let mut jwk = Jwk::from_encoding_key(&self.enc, self.alg).expect("public JWK");
            jwk.common.key_id = Some(kid.to_string());
            serde_json::to_value(jwk).expect("JWK serialises")
        }
    }

    struct Keys {
        rsa: Signer,
        rsa2: Signer,
        ec: Signer,
        ed: Signer,
    }

    fn to_pem(tag: &str, der: &[u8]) -> String {
        pem::encode(&pem::Pem::new(tag, der.to_vec()))
    }

    fn rsa_signer() -> Signer {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let pkcs8: Pkcs8V1Der = pair.as_der().unwrap();
        let spki: PublicKeyX509Der = pair.public_key().as_der().unwrap();
        let private_pem = to_pem("PRIVATE KEY", pkcs8.as_ref());
        Signer {
            enc: EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap(),
            public_pem: to_pem("PUBLIC KEY", spki.as_ref()),
            alg: Algorithm::RS256,
        }
    }

    fn keys() -> &'static Keys {
        static KEYS: OnceLock<Keys> = OnceLock::new();
        KEYS.get_or_init(|| {
            let rng = SystemRandom::new();
            let ec_doc =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let ec_pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ec_doc.as_ref())
                    .unwrap();
            let ec_spki: PublicKeyX509Der = ec_pair.public_key().as_der().unwrap();
            // PKCS#8 v1: jsonwebtoken derives the public JWK only from that form.
            let ed_doc = Ed25519KeyPair::generate_pkcs8v1(&rng).unwrap();
            let ed_pair = Ed25519KeyPair::from_pkcs8(ed_doc.as_ref()).unwrap();
            let ed_spki: PublicKeyX509Der = ed_pair.public_key().as_der().unwrap();
            Keys {
                rsa: rsa_signer(),
                rsa2: rsa_signer(),
                ec: Signer {
                    enc: EncodingKey::from_ec_der(ec_doc.as_ref()),
                    public_pem: to_pem("PUBLIC KEY", ec_spki.as_ref()),
                    alg: Algorithm::ES256,
                },
                ed: Signer {
                    enc: EncodingKey::from_ed_der(ed_doc.as_ref()),
                    public_pem: to_pem("PUBLIC KEY", ed_spki.as_ref()),
                    alg: Algorithm::EdDSA,
                },
            }
        })
    }

    /// Claims valid now for `iss`, with a fresh `jti` so no two tokens share a cache entry.
    fn claims(iss: &str) -> Value {
        static JTI: AtomicU64 = AtomicU64::new(0);
        let now = now_secs();
        json!({
            "iss": iss,
            "aud": AUD,
            "sub": "user-1",
            "iat": now,
            "exp": now + 600,
            "jti": format!("jti-{}", JTI.fetch_add(1, Ordering::Relaxed)),
        })
    }

    fn with(mut base: Value, extra: Value) -> Value {
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    }

    fn without(mut base: Value, claim: &str) -> Value {
        base.as_object_mut().unwrap().remove(claim);
        base
    }

    fn issuer_cfg(iss: &str, algorithms: &[Algorithm]) -> IssuerConfig {
        IssuerConfig {
            issuer: iss.into(),
            audiences: vec![AUD.into()],
            algorithms: algorithms.to_vec(),
            pem_keys: vec![],
            hmac_secrets: vec![],
            jwks_files: vec![],
            jwks_urls: vec![],
            claims: None,
        }
    }

    fn config(issuers: Vec<IssuerConfig>) -> IdentityConfig {
        IdentityConfig {
            issuers,
            leeway_secs: default_leeway_secs(),
            cache_max_entries: default_cache_max_entries(),
            claims: ClaimMapping::default(),
            break_glass_header: None,
            jwks_refresh_secs: default_jwks_refresh_secs(),
            jwks_min_refetch_secs: 60,
            jwks_fetch_timeout_ms: 2_000,
            jwks_max_bytes: default_jwks_max_bytes(),
            max_token_bytes: default_max_token_bytes(),
        }
    }

    fn pem_key(path: &str, kid: Option<&str>) -> PemKeyConfig {
        PemKeyConfig {
            path: path.into(),
            kid: kid.map(str::to_string),
        }
    }

    /// Four PEM issuers: RS256 (kid `rsa-1`), PS256 (no kid), ES256 (no kid), EdDSA (`ed-1`).
    /// Key paths are relative, resolved against the temporary directory.
    async fn pem_identity(
        adjust: impl FnOnce(&mut IdentityConfig),
    ) -> (tempfile::TempDir, Identity) {
        let k = keys();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rsa.pem"), &k.rsa.public_pem).unwrap();
        std::fs::write(dir.path().join("ec.pem"), &k.ec.public_pem).unwrap();
        std::fs::write(dir.path().join("ed.pem"), &k.ed.public_pem).unwrap();
        let mut rsa = issuer_cfg(RSA_ISS, &[Algorithm::RS256]);
        rsa.pem_keys = vec![pem_key("rsa.pem", Some("rsa-1"))];
        let mut ps = issuer_cfg(PS_ISS, &[Algorithm::PS256]);
        ps.pem_keys = vec![pem_key("rsa.pem", None)];
        let mut ec = issuer_cfg(EC_ISS, &[Algorithm::ES256]);
        ec.pem_keys = vec![pem_key("ec.pem", None)];
        let mut ed = issuer_cfg(ED_ISS, &[Algorithm::EdDSA]);
        ed.pem_keys = vec![pem_key("ed.pem", Some("ed-1"))];
        let mut cfg = config(vec![rsa, ps, ec, ed]);
        adjust(&mut cfg);
        let identity = Identity::load(&cfg, dir.path())
            .await
            .expect("identity loads");
        (dir, identity)
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        headers
    }

    async fn auth(identity: &Identity, token: &str) -> Result<Authenticated, AuthFailure> {
        identity.authenticate(&bearer(token), None).await
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A tiny HTTP/1.1 server for one JWKS document; counts the requests it answers.
    struct JwksServer {
        url: String,
        body: Arc<Mutex<String>>,
        hits: Arc<AtomicUsize>,
        fail: Arc<AtomicBool>,
        task: tokio::task::JoinHandle<()>,
    }

    impl JwksServer {
        async fn start(keys: &[Value]) -> JwksServer {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/certs?tenant=t1", listener.local_addr().unwrap());
            let body = Arc::new(Mutex::new(String::new()));
            let hits = Arc::new(AtomicUsize::new(0));
            let fail = Arc::new(AtomicBool::new(false));
            let (b, h, f) = (body.clone(), hits.clone(), fail.clone());
            let task = tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    let (body, hits, fail) = (b.clone(), h.clone(), f.clone());
                    tokio::spawn(async move {
                        let mut request = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => request.extend_from_slice(&buf[..n]),
                            }
                        }
                        hits.fetch_add(1, Ordering::SeqCst);
                        let (status, body) = if fail.load(Ordering::SeqCst) {
                            ("500 Internal Server Error", String::new())
                        } else {
                            ("200 OK", body.lock().unwrap().clone())
                        };
                        let response = format!(
                            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(response.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    });
                }
            });
            let server = JwksServer {
                url,
                body,
                hits,
                fail,
                task,
            };
            server.set_keys(keys);
            server
        }

        fn set_keys(&self, keys: &[Value]) {
            *self.body.lock().unwrap() = json!({ "keys": keys }).to_string();
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }

        async fn stop(self) {
            self.task.abort();
            let _ = self.task.await;
        }
    }

    async fn url_identity(
        server: &JwksServer,
        adjust: impl FnOnce(&mut IdentityConfig),
    ) -> Identity {
        let mut issuer = issuer_cfg(RSA_ISS, &[Algorithm::RS256]);
        issuer.jwks_urls = vec![server.url.clone()];
        let mut cfg = config(vec![issuer]);
        adjust(&mut cfg);
        Identity::load(&cfg, Path::new("/nonexistent"))
            .await
            .expect("identity loads")
    }

    // --- algorithms and key sources -----------------------------------------------------------

    #[tokio::test]
    async fn rs256_pem_verifies_and_maps_default_claims() {
        let (_dir, id) = pem_identity(|_| {}).await;
        let c = with(
            claims(RSA_ISS),
            json!({"name": "Dr. Who", "roles": ["physician"], "client_id": "ehr-app",
                   "purpose_of_use": "TREAT", "fhirUser": "Practitioner/7", "patient": "p-42"}),
        );
        let token = keys().rsa.sign(Some("rsa-1"), &c);
        let got = auth(&id, &token).await.unwrap();
        assert_eq!(
            got.actor,
            Actor {
                user: "user-1".into(),
                issuer: RSA_ISS.into(),
                name: Some("Dr. Who".into()),
                roles: vec!["physician".into()],
                client_id: Some("ehr-app".into()),
                purpose_of_use: vec!["TREAT".into()],
                jti: c["jti"].as_str().map(str::to_string),
                fhir_user: Some("Practitioner/7".into()),
                smart_patient: Some("p-42".into()),
                break_glass: false,
            }
        );
        assert_eq!(got.device_id, None);
    }

    #[tokio::test]
    async fn ps256_pem_verifies() {
        let (_dir, id) = pem_identity(|_| {}).await;
        let token = keys().rsa.sign_as(Algorithm::PS256, None, &claims(PS_ISS));
        assert_eq!(auth(&id, &token).await.unwrap().actor.issuer, PS_ISS);
    }

    #[tokio::test]
    async fn es256_pem_verifies_without_kid() {
        let (_dir, id) = pem_identity(|_| {}).await;
        let token = keys().ec.sign(None, &claims(EC_ISS));
        assert_eq!(auth(&id, &token).await.unwrap().actor.user, "user-1");
    }

    #[tokio::test]
    async fn eddsa_pem_verifies_with_kid_and_without() {
        let (_dir, id) = pem_identity(|_| {}).await;
        let k = keys();
        assert!(auth(&id, &k.ed.sign(Some("ed-1"), &claims(ED_ISS)))
            .await
            .is_ok());
        // A key with a configured kid is not tried for a token naming another kid...
        let other = k.ed.sign(Some("ed-2"), &claims(ED_ISS));
        assert_eq!(auth(&id, &other).await, Err(AuthFailure::UnknownKey));
        // ...but every key of the issuer is tried for a token without kid.
        assert!(auth(&id, &k.ed.sign(None, &claims(ED_ISS))).await.is_ok());
    }

    #[tokio::test]
    async fn hs256_secret_from_environment_verifies() {
        const VAR: &str = "AUDITGATE_IDENTITY_TEST_HS256_SECRET";
        let secret = "0123456789abcdef0123456789abcdef-test";
        // Edition 2021: set_var is safe; this variable is used by this test only.
        std::env::set_var(VAR, secret);
        let mut issuer = issuer_cfg("batch", &[Algorithm::HS256]);
        issuer.hmac_secrets = vec![HmacSecretConfig {
            env_var: VAR.into(),
            kid: None,
            base64: false,
        }];
        let id = Identity::load(&config(vec![issuer]), Path::new("."))
            .await
            .unwrap();
        let good = EncodingKey::from_secret(secret.as_bytes());
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims("batch"), &good).unwrap();
        assert_eq!(auth(&id, &token).await.unwrap().actor.issuer, "batch");
        let wrong = EncodingKey::from_secret(b"another secret of thirty-two bytes!!");
        let forged =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims("batch"), &wrong).unwrap();
        assert_eq!(auth(&id, &forged).await, Err(AuthFailure::BadSignature));
    }

    #[tokio::test]
    async fn hmac_secrets_that_are_missing_or_short_stop_the_load() {
        const SHORT: &str = "AUDITGATE_IDENTITY_TEST_SHORT_SECRET";
        std::env::set_var(SHORT, "too-short");
        let mut issuer = issuer_cfg("batch", &[Algorithm::HS256]);
        issuer.hmac_secrets = vec![HmacSecretConfig {
            env_var: SHORT.into(),
            kid: None,
            base64: false,
        }];
        let err = Identity::load(&config(vec![issuer.clone()]), Path::new("."))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                IdentityError::WeakSecret {
                    len_bytes: 9,
                    min_bytes: 32,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            !err.to_string().contains("too-short"),
            "the secret never appears: {err}"
        );

        issuer.hmac_secrets[0].env_var = "AUDITGATE_IDENTITY_TEST_UNSET_SECRET".into();
        let err = Identity::load(&config(vec![issuer]), Path::new("."))
            .await
            .unwrap_err();
        assert!(matches!(err, IdentityError::MissingSecret { .. }), "{err}");
    }

    #[tokio::test]
    async fn pem_files_must_hold_a_usable_public_key() {
        let k = keys();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ec.pem"), &k.ec.public_pem).unwrap();
        std::fs::write(
            dir.path().join("private.pem"),
            "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("junk.pem"), "not a key").unwrap();
        let load = |file: &str| {
            let mut issuer = issuer_cfg(RSA_ISS, &[Algorithm::RS256]);
            issuer.pem_keys = vec![pem_key(file, None)];
            let cfg = config(vec![issuer]);
            let dir = dir.path().to_path_buf();
            async move { Identity::load(&cfg, &dir).await.unwrap_err() }
        };
        assert!(matches!(
            load("ec.pem").await,
            IdentityError::KeyNotUsable { family: "EC", .. }
        ));
        assert!(matches!(
            load("private.pem").await,
            IdentityError::PrivateKey { .. }
        ));
        assert!(matches!(
            load("junk.pem").await,
            IdentityError::BadPem { .. }
        ));
        let err = load("missing.pem").await;
        assert!(matches!(err, IdentityError::ReadKey { .. }));
        assert!(
            err.to_string().contains("identity.issuers[0].pem_keys[0]"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn jwks_file_selects_the_key_by_kid() {
        let k = keys();
        let dir = tempfile::tempdir().unwrap();
        let set = json!({"keys": [
            k.rsa.jwk("r1"), k.ec.jwk("e1"), k.ed.jwk("d1"),
            // Skipped: an encryption key and an unknown key type.
            {"kty": "RSA", "use": "enc", "kid": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "XYZ", "kid": "odd"},
        ]});
        std::fs::write(dir.path().join("keys.json"), set.to_string()).unwrap();
        let mut issuer = issuer_cfg(
            RSA_ISS,
            &[Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA],
        );
        issuer.jwks_files = vec!["keys.json".into()];
        let id = Identity::load(&config(vec![issuer]), dir.path())
            .await
            .unwrap();
        assert!(auth(&id, &k.rsa.sign(Some("r1"), &claims(RSA_ISS)))
            .await
            .is_ok());
        assert!(auth(&id, &k.ec.sign(Some("e1"), &claims(RSA_ISS)))
            .await
            .is_ok());
        assert!(auth(&id, &k.ed.sign(Some("d1"), &claims(RSA_ISS)))
            .await
            .is_ok());
        // The JWK `alg` binds a key to one algorithm: the RSA key under the EC kid is no match.
        let mixed = k.rsa.sign(Some("e1"), &claims(RSA_ISS));
        assert_eq!(auth(&id, &mixed).await, Err(AuthFailure::UnknownKey));
        let unknown = k.rsa.sign(Some("r9"), &claims(RSA_ISS));
        assert_eq!(auth(&id, &unknown).await, Err(AuthFailure::UnknownKey));
    }

    // --- JWKS URLs -----------------------------------------------------------------------------

    #[tokio::test]
    async fn jwks_url_rotation_refetches_once_then_cools_down_and_survives_outages() {
        let k = keys();
        let server = JwksServer::start(&[k.rsa.jwk("k1")]).await;
        let id = url_identity(&server, |c| c.jwks_min_refetch_secs = 600).await;
        assert_eq!(server.hits(), 1, "the initial fetch at load");
        assert!(auth(&id, &k.rsa.sign(Some("k1"), &claims(RSA_ISS)))
            .await
            .is_ok());
        assert_eq!(server.hits(), 1, "a known kid needs no fetch");

        // Rotation: the IdP publishes k2 and starts signing with it.
        server.set_keys(&[k.rsa.jwk("k1"), k.rsa2.jwk("k2")]);
        assert!(auth(&id, &k.rsa2.sign(Some("k2"), &claims(RSA_ISS)))
            .await
            .is_ok());
        assert_eq!(server.hits(), 2, "one re-fetch for the unknown kid");

        // Another unknown kid within the cooldown: refused without fetching.
        let k3 = k.rsa2.sign(Some("k3"), &claims(RSA_ISS));
        assert_eq!(auth(&id, &k3).await, Err(AuthFailure::UnknownKey));
        assert_eq!(server.hits(), 2, "no fetch during the cooldown");

        // The IdP fails: the refresh is attempted, the last good set stays.
        server.fail.store(true, Ordering::SeqCst);
        id.refresh_jwks().await;
        assert_eq!(server.hits(), 3);
        assert!(auth(&id, &k.rsa2.sign(Some("k2"), &claims(RSA_ISS)))
            .await
            .is_ok());

        // The IdP is gone altogether: still the last good set.
        server.stop().await;
        id.refresh_jwks().await;
        assert!(auth(&id, &k.rsa.sign(Some("k1"), &claims(RSA_ISS)))
            .await
            .is_ok());
        assert!(auth(&id, &k.rsa2.sign(Some("k2"), &claims(RSA_ISS)))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn concurrent_requests_with_a_new_kid_share_one_fetch() {
        let k = keys();
        let server = JwksServer::start(&[k.rsa.jwk("k1")]).await;
        let id = url_identity(&server, |c| c.jwks_min_refetch_secs = 0).await;
        server.set_keys(&[k.rsa.jwk("k1"), k.rsa2.jwk("k2")]);
        let (a, b, c) = (
            k.rsa2.sign(Some("k2"), &claims(RSA_ISS)),
            k.rsa2.sign(Some("k2"), &claims(RSA_ISS)),
            k.rsa2.sign(Some("k2"), &claims(RSA_ISS)),
        );
        let (ra, rb, rc) = tokio::join!(auth(&id, &a), auth(&id, &b), auth(&id, &c));
        assert!(ra.is_ok() && rb.is_ok() && rc.is_ok());
        assert_eq!(server.hits(), 2, "one fetch at load, one for the new kid");
        server.stop().await;
    }

    #[tokio::test]
    async fn jwks_refetch_is_allowed_again_after_the_cooldown() {
        let k = keys();
        let server = JwksServer::start(&[k.rsa.jwk("k1")]).await;
        let id = url_identity(&server, |c| c.jwks_min_refetch_secs = 0).await;
        let k2 = k.rsa2.sign(Some("k2"), &claims(RSA_ISS));
        assert_eq!(auth(&id, &k2).await, Err(AuthFailure::UnknownKey));
        assert_eq!(server.hits(), 2);
        server.set_keys(&[k.rsa2.jwk("k2")]);
        assert!(auth(&id, &k2).await.is_ok());
        assert_eq!(server.hits(), 3);
        server.stop().await;
    }

    #[tokio::test]
    async fn a_key_withdrawn_from_the_jwks_empties_the_cache() {
        let k = keys();
        let server = JwksServer::start(&[k.rsa.jwk("k1"), k.rsa2.jwk("k2")]).await;
        let id = url_identity(&server, |_| {}).await;
        let token = k.rsa.sign(Some("k1"), &claims(RSA_ISS));
        assert!(auth(&id, &token).await.is_ok());
        assert_eq!(id.cache_stats().entries, 1);

        // An unchanged set keeps the cache.
        id.refresh_jwks().await;
        assert_eq!(id.cache_stats().entries, 1);

        // k1 is withdrawn (say, compromised): its tokens stop working at once.
        server.set_keys(&[k.rsa2.jwk("k2")]);
        id.refresh_jwks().await;
        assert_eq!(id.cache_stats().entries, 0);
        assert_eq!(auth(&id, &token).await, Err(AuthFailure::UnknownKey));
        server.stop().await;
    }

    #[tokio::test]
    async fn the_background_refresher_picks_up_new_keys() {
        let k = keys();
        let server = JwksServer::start(&[k.rsa.jwk("k1")]).await;
        let id = Arc::new(
            url_identity(&server, |c| {
                c.jwks_refresh_secs = 1;
                c.jwks_min_refetch_secs = 600;
            })
            .await,
        );
        let refresher = tokio::spawn(id.clone().run_refresher());
        server.set_keys(&[k.rsa2.jwk("k2")]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.hits() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Let the refresher install what it fetched.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(server.hits() >= 2, "the refresher fetched again");
        assert!(auth(&id, &k.rsa2.sign(Some("k2"), &claims(RSA_ISS)))
            .await
            .is_ok());
        refresher.abort();
        server.stop().await;
    }

    #[tokio::test]
    async fn an_unreachable_jwks_url_at_start_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/certs", listener.local_addr().unwrap());
        drop(listener);
        let mut issuer = issuer_cfg(RSA_ISS, &[Algorithm::RS256]);
        issuer.jwks_urls = vec![url];
        let err = Identity::load(&config(vec![issuer]), Path::new("."))
            .await
            .unwrap_err();
        assert!(matches!(err, IdentityError::FetchJwks { .. }), "{err}");
    }

    #[tokio::test]
    async fn oct_keys_served_by_a_url_are_ignored() {
        let k = keys();
        let oct = json!({"kty": "oct", "kid": "s1", "k": b64(b"0123456789abcdef0123456789abcdef")});
        let server = JwksServer::start(&[oct, k.rsa.jwk("k1")]).await;
        let id = url_identity(&server, |_| {}).await;
        let keys = id.issuers[0].remote[0].snapshot();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("k1"));
        server.stop().await;
    }

    // --- attacks and refusals ------------------------------------------------------------------

    #[tokio::test]
    async fn alg_none_is_refused() {
        let (_dir, id) = pem_identity(|_| {}).await;
        for alg in ["none", "None", "HS1"] {
            let header = b64(json!({"alg": alg, "typ": "JWT", "kid": "rsa-1"})
                .to_string()
                .as_bytes());
            let payload = b64(claims(RSA_ISS).to_string().as_bytes());
            let token = format!("{header}.{payload}.");
            assert_eq!(
                auth(&id, &token).await,
                Err(AuthFailure::DisallowedAlg),
                "{alg}"
            );
        }
    }

    #[tokio::test]
    async fn hs256_signed_with_the_rsa_public_key_is_refused() {
        let (_dir, id) = pem_identity(|_| {}).await;
        let k = keys();
        let confused = EncodingKey::from_secret(k.rsa.public_pem.as_bytes());
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        let token = jsonwebtoken::encode(&header, &claims(RSA_ISS), &confused).unwrap();
        assert_eq!(auth(&id, &token).await, Err(AuthFailure::DisallowedAlg));
    }

    #[tokio::test]
    async fn an_algorithm_not_pinned_for_the_issuer_is_refused() {
        let (_dir, id) = pem_identity(|_| {}).await;
        let k = keys();
        // A valid ES256 token, but for the RS256-only issuer.
        let token = k.ec.sign(None, &claims(RSA_ISS));
        assert_eq!(auth(&id, &token).await, Err(AuthFailure::DisallowedAlg));
        // RS256 for the PS256-only issuer, same key.
        let token = k.rsa.sign_as(Algorithm::RS256, None, &claims(PS_ISS));
        assert_eq!(auth(&id, &token).await, Err(AuthFailure::DisallowedAlg));
    }

    #[tokio::test]
    async fn header_key_hints_are_never_used() {
        let (_dir, id) = pem_identity(|_| {}).await;
        let k = keys();
        // The attacker signs with their own key and points at it with jwk and jku.
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        header.jwk = Some(serde_json::from_value(k.rsa2.jwk("rsa-1")).unwrap());
        header.jku = Some("https://attacker.test/jwks.json".into());
        let token = jsonwebtoken::encode(&header, &claims(RSA_ISS), &k.rsa2.enc).unwrap();
        assert_eq!(auth(&id, &token).await, Err(AuthFailure::BadSignature));
    }

    #[tokio::test]
    async fn critical_header_extensions_are_refused() {
        let (_dir, id) = pem_identity(|_| {}).await;
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        header.crit = Some(vec!["exp".into()]);
        let token = jsonwebtoken::encode(&header, &claims(RSA_ISS), &keys().rsa.enc).unwrap();
        assert_eq!(auth(&id, &token).await, Err(AuthFailure::UnsupportedCrit));
    }

    #[tokio::test]
    async fn bad_signatures_are_refused() {
        let (_dir, id) = pem_identity(|_| {}).await;
        let k = keys();
        // Another key under the configured kid.
        let token = k.rsa2.sign(Some("rsa-1"), &claims(RSA_ISS));
        assert_eq!(auth(&id, &token).await, Err(AuthFailure::BadSignature));
        // A genuine token whose payload was edited.
        let token = k.rsa.sign(Some("rsa-1"), &claims(RSA_ISS));
        let parts: Vec<&str> = token.split('.').collect();
        let edited = b64(with(claims(RSA_ISS), json!({"sub": "admin"}))
            .to_string()
            .as_bytes());
        let forged = format!("{}.{edited}.{}", parts[0], parts[2]);
        assert_eq!(auth(&id, &forged).await, Err(AuthFailure::BadSignature));
    }

    #[tokio::test]
    async fn time_claims_are_enforced_with_leeway() {
        let (_dir, id) = pem_identity(|c| c.leeway_secs = 30).await;
        let k = keys();
        let now = now_secs();
        let sign = |extra: Value| k.rsa.sign(Some("rsa-1"), &with(claims(RSA_ISS), extra));
        assert_eq!(
            auth(&id, &sign(json!({"exp": now - 120}))).await,
            Err(AuthFailure::Expired)
        );
        assert!(
            auth(&id, &sign(json!({"exp": now - 5}))).await.is_ok(),
            "within the leeway"
        );
        assert_eq!(
            auth(&id, &sign(json!({"nbf": now + 600}))).await,
            Err(AuthFailure::NotYetValid)
        );
        assert!(
            auth(&id, &sign(json!({"nbf": now + 5}))).await.is_ok(),
            "within the leeway"
        );
        let no_exp = k.rsa.sign(Some("rsa-1"), &without(claims(RSA_ISS), "exp"));
        assert_eq!(
            auth(&id, &no_exp).await,
            Err(AuthFailure::MissingClaim {
                claim: "exp".into()
            })
        );
        // jsonwebtoken counts an `exp` that is not a number as absent.
        assert_eq!(
            auth(&id, &sign(json!({"exp": "tomorrow"}))).await,
            Err(AuthFailure::MissingClaim {
                claim: "exp".into()
            })
        );
    }

    #[tokio::test]
    async fn issuer_and_audience_are_enforced() {
        let (_dir, id) = pem_identity(|_| {}).await;
        let k = keys();
        let wrong_iss = k.rsa.sign(Some("rsa-1"), &claims("https://evil.test"));
        assert_eq!(auth(&id, &wrong_iss).await, Err(AuthFailure::UnknownIssuer));
        let no_iss = k.rsa.sign(Some("rsa-1"), &without(claims(RSA_ISS), "iss"));
        assert_eq!(
            auth(&id, &no_iss).await,
            Err(AuthFailure::MissingClaim {
                claim: "iss".into()
            })
        );
        let wrong_aud = k.rsa.sign(
            Some("rsa-1"),
            &with(claims(RSA_ISS), json!({"aud": "billing"})),
        );
        assert_eq!(auth(&id, &wrong_aud).await, Err(AuthFailure::WrongAudience));
        let many_aud = k.rsa.sign(
            Some("rsa-1"),
            &with(claims(RSA_ISS), json!({"aud": ["billing", AUD]})),
        );
        assert!(
            auth(&id, &many_aud).await.is_ok(),
            "one accepted audience among several"
        );
        let no_aud = k.rsa.sign(Some("rsa-1"), &without(claims(RSA_ISS), "aud"));
        assert_eq!(
            auth(&id, &no_aud).await,
            Err(AuthFailure::MissingClaim {
                claim: "aud".into()
            })
        );
        // A token signed by the RSA issuer's key but claiming the EC issuer: EC rules apply.
        let cross = k.rsa.sign(None, &claims(EC_ISS));
        assert_eq!(auth(&id, &cross).await, Err(AuthFailure::DisallowedAlg));
        // The PS issuer shares the RSA key file, but PS256 is all it accepts.
        let cross = k
            .rsa
            .sign_as(Algorithm::PS256, Some("rsa-1"), &claims(RSA_ISS));
        assert_eq!(auth(&id, &cross).await, Err(AuthFailure::DisallowedAlg));
    }

    #[tokio::test]
    async fn a_token_without_the_user_claim_is_refused() {
        let (_dir, id) = pem_identity(|_| {}).await;
        let k = keys();
        let token = k.rsa.sign(Some("rsa-1"), &without(claims(RSA_ISS), "sub"));
        assert_eq!(
            auth(&id, &token).await,
            Err(AuthFailure::MissingClaim {
                claim: "sub".into()
            })
        );
        let token = k
            .rsa
            .sign(Some("rsa-1"), &with(claims(RSA_ISS), json!({"sub": ""})));
        assert_eq!(
            auth(&id, &token).await,
            Err(AuthFailure::MissingClaim {
                claim: "sub".into()
            })
        );
    }

    #[tokio::test]
    async fn token_placement_is_enforced() {
        let (_dir, id) = pem_identity(|_| {}).await;
        let token = keys().rsa.sign(Some("rsa-1"), &claims(RSA_ISS));
        let none = HeaderMap::new();
        assert_eq!(
            id.authenticate(&none, None).await,
            Err(AuthFailure::MissingToken)
        );
        assert_eq!(
            id.authenticate(&none, Some("_count=10")).await,
            Err(AuthFailure::MissingToken)
        );

        let query = format!("name=x&access_token={token}");
        assert_eq!(
            id.authenticate(&none, Some(&query)).await,
            Err(AuthFailure::TokenInQuery)
        );
        // Percent-encoded parameter names are decoded before the check.
        assert_eq!(
            id.authenticate(&none, Some("access%5Ftoken=abc")).await,
            Err(AuthFailure::TokenInQuery)
        );
        assert_eq!(
            id.authenticate(&bearer(&token), Some(&query)).await,
            Err(AuthFailure::MultipleTokens)
        );
        let mut two = bearer(&token);
        two.append(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        assert_eq!(
            id.authenticate(&two, None).await,
            Err(AuthFailure::MultipleTokens)
        );
        // A lower-case scheme and extra spaces are fine.
        let mut lower = HeaderMap::new();
        lower.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("bearer   {token}")).unwrap(),
        );
        assert!(id
            .authenticate(&lower, Some("access_tokens=1"))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn malformed_credentials_are_refused() {
        let (_dir, id) = pem_identity(|c| c.max_token_bytes = 4096).await;
        let header = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            h
        };
        let reason = |r: Result<Authenticated, AuthFailure>| r.unwrap_err().reason();
        assert_eq!(
            id.authenticate(&header("Basic dXNlcjpwdw=="), None).await,
            Err(AuthFailure::UnsupportedScheme)
        );
        assert_eq!(
            reason(id.authenticate(&header("Bearer"), None).await),
            "malformed"
        );
        assert_eq!(
            reason(id.authenticate(&header("Bearer    "), None).await),
            "malformed"
        );
        assert_eq!(
            reason(id.authenticate(&header("Bearer a b"), None).await),
            "malformed"
        );
        assert_eq!(
            reason(id.authenticate(&header("Bearer a.b"), None).await),
            "malformed"
        );
        assert_eq!(
            reason(id.authenticate(&header("Bearer a.b.c.d"), None).await),
            "malformed"
        );
        assert_eq!(
            reason(id.authenticate(&header("Bearer a+b/c=.x.y"), None).await),
            "malformed"
        );
        assert_eq!(
            reason(id.authenticate(&header("Bearer !!!.x.y"), None).await),
            "malformed"
        );
        let big = format!("Bearer {}", "a".repeat(5000));
        assert_eq!(
            reason(id.authenticate(&header(&big), None).await),
            "malformed"
        );
        let not_json = format!("{}.{}.sig", b64(b"not json"), b64(b"{}"));
        assert_eq!(reason(auth(&id, &not_json).await), "malformed");
        let array_payload = format!("{}.{}.sig", b64(br#"{"alg":"RS256"}"#), b64(b"[1]"));
        assert_eq!(reason(auth(&id, &array_payload).await), "malformed");
        let mut non_ascii = HeaderMap::new();
        non_ascii.insert(
            AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xff").unwrap(),
        );
        assert_eq!(reason(id.authenticate(&non_ascii, None).await), "malformed");
    }

    // --- claim mapping -------------------------------------------------------------------------

    #[tokio::test]
    async fn roles_client_id_purpose_and_device_are_mapped() {
        let (_dir, id) = pem_identity(|c| c.claims.device_id = "device".into()).await;
        let k = keys();
        let sign = |extra: Value| k.rsa.sign(Some("rsa-1"), &with(claims(RSA_ISS), extra));

        let got = auth(
            &id,
            &sign(json!({"roles": "nurse  triage ward-3", "azp": "portal",
                                          "purpose_of_use": ["TREAT", "ETREAT"], "device": 991})),
        )
        .await
        .unwrap();
        assert_eq!(got.actor.roles, ["nurse", "triage", "ward-3"]);
        assert_eq!(
            got.actor.client_id.as_deref(),
            Some("portal"),
            "azp when no client_id"
        );
        assert_eq!(got.actor.purpose_of_use, ["TREAT", "ETREAT"]);
        assert_eq!(got.device_id.as_deref(), Some("991"));

        let got = auth(
            &id,
            &sign(
                json!({"roles": ["a", "b"], "client_id": "cli", "azp": "portal",
                                          "device": "tablet-7"}),
            ),
        )
        .await
        .unwrap();
        assert_eq!(got.actor.roles, ["a", "b"]);
        assert_eq!(
            got.actor.client_id.as_deref(),
            Some("cli"),
            "client_id wins over azp"
        );
        assert_eq!(got.device_id.as_deref(), Some("tablet-7"));

        let got = auth(&id, &sign(json!({"sub": 12345}))).await.unwrap();
        assert_eq!(got.actor.user, "12345", "numeric user ids are kept as text");
        assert!(got.actor.roles.is_empty() && got.actor.client_id.is_none());

        assert_eq!(
            auth(&id, &sign(json!({"roles": {"admin": true}}))).await,
            Err(AuthFailure::InvalidClaim {
                claim: "roles".into()
            })
        );
        assert_eq!(
            auth(&id, &sign(json!({"roles": ["a", 1]}))).await,
            Err(AuthFailure::InvalidClaim {
                claim: "roles".into()
            })
        );
    }

    #[tokio::test]
    async fn break_glass_comes_from_the_claim_or_the_header() {
        let (_dir, id) =
            pem_identity(|c| c.break_glass_header = Some("X-Break-Glass".into())).await;
        let k = keys();
        let plain = k.rsa.sign(Some("rsa-1"), &claims(RSA_ISS));
        let declared = k.rsa.sign(
            Some("rsa-1"),
            &with(claims(RSA_ISS), json!({"break_glass": true})),
        );
        assert!(!auth(&id, &plain).await.unwrap().actor.break_glass);
        assert!(auth(&id, &declared).await.unwrap().actor.break_glass);

        // The header is read per request, also when the token comes from the cache.
        let mut headers = bearer(&plain);
        headers.insert("x-break-glass", HeaderValue::from_static("TRUE"));
        assert!(
            id.authenticate(&headers, None)
                .await
                .unwrap()
                .actor
                .break_glass
        );
        assert!(
            !auth(&id, &plain).await.unwrap().actor.break_glass,
            "not cached"
        );
        headers.insert("x-break-glass", HeaderValue::from_static("no"));
        assert!(
            !id.authenticate(&headers, None)
                .await
                .unwrap()
                .actor
                .break_glass
        );
        assert!(id.cache_stats().hits >= 3);
    }

    #[tokio::test]
    async fn claim_names_are_configurable_per_issuer_and_reach_nested_claims() {
        let (_dir, id) = pem_identity(|c| {
            c.issuers[0].claims = Some(ClaimMapping {
                user: "preferred_username".into(),
                roles: "/realm_access/roles".into(),
                break_glass: String::new(),
                client_id: vec!["cid".into()],
                ..ClaimMapping::default()
            });
        })
        .await;
        let k = keys();
        let c = with(
            claims(RSA_ISS),
            json!({"preferred_username": "jdoe", "realm_access": {"roles": ["md"]},
                   "break_glass": "not even a boolean", "cid": "app", "client_id": "ignored"}),
        );
        let got = auth(&id, &k.rsa.sign(Some("rsa-1"), &c)).await.unwrap();
        assert_eq!(got.actor.user, "jdoe");
        assert_eq!(got.actor.roles, ["md"]);
        assert_eq!(got.actor.client_id.as_deref(), Some("app"));
        assert!(!got.actor.break_glass, "an unmapped claim is not read");
        // Other issuers keep the global mapping.
        let got = auth(&id, &k.ec.sign(None, &claims(EC_ISS))).await.unwrap();
        assert_eq!(got.actor.user, "user-1");
    }

    // --- cache ---------------------------------------------------------------------------------

    #[tokio::test]
    async fn a_cache_hit_returns_the_same_actor() {
        let (_dir, id) = pem_identity(|_| {}).await;
        let token = keys()
            .rsa
            .sign(Some("rsa-1"), &with(claims(RSA_ISS), json!({"roles": "r"})));
        let first = auth(&id, &token).await.unwrap();
        let second = auth(&id, &token).await.unwrap();
        assert_eq!(first, second);
        assert_eq!(
            id.cache_stats(),
            CacheStats {
                entries: 1,
                hits: 1,
                misses: 1
            }
        );
    }

    #[tokio::test]
    async fn the_cache_can_be_turned_off() {
        let (_dir, id) = pem_identity(|c| c.cache_max_entries = 0).await;
        let token = keys().rsa.sign(Some("rsa-1"), &claims(RSA_ISS));
        assert!(auth(&id, &token).await.is_ok());
        assert!(auth(&id, &token).await.is_ok());
        assert_eq!(id.cache_stats(), CacheStats::default());
    }

    #[tokio::test]
    async fn an_expired_cached_token_is_refused() {
        let (_dir, id) = pem_identity(|c| c.leeway_secs = 0).await;
        let exp = now_secs() + 1;
        let token = keys()
            .rsa
            .sign(Some("rsa-1"), &with(claims(RSA_ISS), json!({"exp": exp})));
        assert!(auth(&id, &token).await.is_ok());
        assert_eq!(id.cache_stats().entries, 1);
        while now_secs() <= exp {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(auth(&id, &token).await, Err(AuthFailure::Expired));
        assert_eq!(id.cache_stats().entries, 0, "the stale entry is dropped");
    }

    // --- failure reporting -----------------------------------------------------------------------

    #[test]
    fn www_authenticate_follows_rfc_6750() {
        assert_eq!(
            AuthFailure::MissingToken.www_authenticate(),
            r#"Bearer realm="auditgate""#
        );
        assert_eq!(
            AuthFailure::UnsupportedScheme.www_authenticate(),
            r#"Bearer realm="auditgate""#
        );
        assert_eq!(
            AuthFailure::Expired.www_authenticate(),
            r#"Bearer realm="auditgate", error="invalid_token", error_description="token expired""#
        );
        assert_eq!(
            AuthFailure::MultipleTokens.www_authenticate(),
            r#"Bearer realm="auditgate", error="invalid_request", error_description="more than one access token in the request""#
        );
        assert_eq!(AuthFailure::TokenInQuery.status(), StatusCode::BAD_REQUEST);
        assert_eq!(AuthFailure::BadSignature.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(AuthFailure::MissingToken.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn reasons_are_fixed_codes_and_descriptions_are_safe() {
        let all = [
            AuthFailure::MissingToken,
            AuthFailure::UnsupportedScheme,
            AuthFailure::Malformed("x"),
            AuthFailure::TokenInQuery,
            AuthFailure::MultipleTokens,
            AuthFailure::UnsupportedCrit,
            AuthFailure::DisallowedAlg,
            AuthFailure::UnknownIssuer,
            AuthFailure::UnknownKey,
            AuthFailure::BadSignature,
            AuthFailure::Expired,
            AuthFailure::NotYetValid,
            AuthFailure::WrongIssuer,
            AuthFailure::WrongAudience,
            AuthFailure::MissingClaim {
                claim: "sub".into(),
            },
            AuthFailure::InvalidClaim {
                claim: "roles".into(),
            },
        ];
        let reasons: Vec<&str> = all.iter().map(AuthFailure::reason).collect();
        assert_eq!(reasons, AuthFailure::REASONS);
        for failure in &all {
            let value = failure.www_authenticate();
            assert!(HeaderValue::from_str(&value).is_ok());
            let description = failure.description();
            assert!(description
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'));
        }
    }

    // --- configuration ---------------------------------------------------------------------------

    fn parse(text: &str) -> Result<IdentityConfig, String> {
        let cfg: IdentityConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    #[test]
    fn toml_defaults_apply_and_unknown_keys_are_refused() {
        let cfg = parse(
            r#"
            [[issuers]]
            issuer = "https://idp.test"
            audiences = ["fhir-api"]
            algorithms = ["RS256", "ES256"]
            jwks_urls = ["https://idp.test/certs"]
            "#,
        )
        .unwrap();
        assert_eq!(cfg.leeway_secs, 30);
        assert_eq!(cfg.cache_max_entries, 10_000);
        assert_eq!(cfg.jwks_refresh_secs, 300);
        assert_eq!(cfg.jwks_min_refetch_secs, 30);
        assert_eq!(cfg.jwks_fetch_timeout_ms, 5_000);
        assert_eq!(cfg.claims, ClaimMapping::default());
        assert_eq!(cfg.claims.user, "sub");
        assert_eq!(
            cfg.issuers[0].algorithms,
            [Algorithm::RS256, Algorithm::ES256]
        );

        let err = parse(
            r#"
            leway_secs = 5
            [[issuers]]
            issuer = "x"
            audiences = ["a"]
            algorithms = ["RS256"]
            jwks_urls = ["https://idp.test/certs"]
            "#,
        )
        .unwrap_err();
        assert!(err.contains("leway_secs"), "{err}");
        let err = parse(
            r#"
            [[issuers]]
            issuer = "x"
            audiences = ["a"]
            algorithms = ["none"]
            jwks_urls = ["https://idp.test/certs"]
            "#,
        )
        .unwrap_err();
        assert!(err.contains("none"), "{err}");
    }

    #[test]
    fn validation_names_the_offending_key() {
        let ok = || {
            let mut issuer = issuer_cfg("https://idp.test", &[Algorithm::RS256]);
            issuer.jwks_urls = vec!["https://idp.test/certs".into()];
            config(vec![issuer])
        };
        assert!(ok().validate().is_ok());
        let key_of = |cfg: IdentityConfig| match cfg.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        };

        let mut cfg = ok();
        cfg.issuers[0].algorithms = vec![Algorithm::RS256, Algorithm::HS256];
        assert_eq!(key_of(cfg), "identity.issuers[0].algorithms");
        let mut cfg = ok();
        cfg.issuers[0].algorithms = vec![];
        assert_eq!(key_of(cfg), "identity.issuers[0].algorithms");
        let mut cfg = ok();
        cfg.issuers[0].audiences = vec![];
        assert_eq!(key_of(cfg), "identity.issuers[0].audiences");
        let mut cfg = ok();
        cfg.issuers.push(cfg.issuers[0].clone());
        assert_eq!(key_of(cfg), "identity.issuers[1].issuer");
        let mut cfg = ok();
        cfg.issuers[0].jwks_urls = vec!["http://idp.test/certs".into()];
        assert_eq!(key_of(cfg), "identity.issuers[0].jwks_urls[0]");
        let mut cfg = ok();
        cfg.issuers[0].jwks_urls = vec!["http://[::1]:8080/certs".into()];
        assert!(cfg.validate().is_ok(), "loopback http is fine");
        let mut cfg = ok();
        cfg.issuers[0].jwks_urls = vec![];
        assert_eq!(key_of(cfg), "identity.issuers[0].algorithms");
        let mut cfg = ok();
        cfg.issuers[0].hmac_secrets = vec![HmacSecretConfig {
            env_var: "X".into(),
            kid: None,
            base64: false,
        }];
        assert_eq!(key_of(cfg), "identity.issuers[0].hmac_secrets");
        let mut cfg = ok();
        cfg.break_glass_header = Some("bad header".into());
        assert_eq!(key_of(cfg), "identity.break_glass_header");
        let mut cfg = ok();
        cfg.claims.user = String::new();
        assert_eq!(key_of(cfg), "identity.claims.user");
        let mut cfg = ok();
        cfg.issuers[0].claims = Some(ClaimMapping {
            user: String::new(),
            ..ClaimMapping::default()
        });
        assert_eq!(key_of(cfg), "identity.issuers[0].claims.user");
        let mut cfg = ok();
        cfg.leeway_secs = 3600;
        assert_eq!(key_of(cfg), "identity.leeway_secs");
        let mut cfg = ok();
        cfg.issuers.clear();
        assert_eq!(key_of(cfg), "identity.issuers");
    }

    // --- plumbing ------------------------------------------------------------------------------

    #[test]
    fn base64url_decoding_matches_the_reference_and_is_strict() {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        for len in 0..70u8 {
            let data: Vec<u8> = (0..len)
                .map(|i| i.wrapping_mul(37).wrapping_add(len))
                .collect();
            let text = engine.encode(&data);
            assert_eq!(b64url_decode(&text), Some(data), "length {len}");
        }
        for bad in ["A", "AB=", "AB==", "A+", "A/", "AB C", "AB\n", "AF", "AAB"] {
            assert_eq!(b64url_decode(bad), None, "{bad:?}");
            assert!(
                engine.decode(bad).is_err(),
                "the reference refuses {bad:?} too"
            );
        }
    }

    #[tokio::test]
    async fn identity_is_shareable_and_its_future_is_send() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>(_: &T) {}
        send_sync::<Identity>();
        let (_dir, id) = pem_identity(|_| {}).await;
        let headers = HeaderMap::new();
        let future = id.authenticate(&headers, None);
        send(&future);
        assert_eq!(future.await, Err(AuthFailure::MissingToken));
        assert!(format!("{id:?}").contains(RSA_ISS));
    }
}
