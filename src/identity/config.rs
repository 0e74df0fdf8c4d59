//! `[identity]`: the token issuers the gateway trusts and how their tokens are verified,
//! parsed and checked once (every issuer's algorithms, keys, audiences and claim mapping).

use crate::config::error::ConfigError;
use http::header::{HeaderName, AUTHORIZATION};
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

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

pub(super) fn default_leeway_secs() -> u64 {
    30
}
pub(super) fn default_cache_max_entries() -> usize {
    10_000
}
pub(super) fn default_jwks_refresh_secs() -> u64 {
    300
}
pub(super) fn default_jwks_min_refetch_secs() -> u64 {
    30
}
pub(super) fn default_jwks_fetch_timeout_ms() -> u64 {
    5_000
}
pub(super) fn default_jwks_max_bytes() -> u64 {
    1024 * 1024
}
pub(super) fn default_max_token_bytes() -> usize {
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
    /// The token's scopes (OAuth 2.0 `scope`: one space-separated string, or an array). Not
    /// recorded; read to decide who is an auditor (`[auditors] scopes`).
    #[serde(default = "default_scope_claim")]
    pub scope: String,
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

pub(super) fn default_user_claim() -> String {
    "sub".into()
}
pub(super) fn default_name_claim() -> String {
    "name".into()
}
pub(super) fn default_roles_claim() -> String {
    "roles".into()
}
pub(super) fn default_scope_claim() -> String {
    "scope".into()
}
pub(super) fn default_client_id_claims() -> Vec<String> {
    vec!["client_id".into(), "azp".into()]
}
pub(super) fn default_purpose_of_use_claim() -> String {
    "purpose_of_use".into()
}
pub(super) fn default_jti_claim() -> String {
    "jti".into()
}
pub(super) fn default_fhir_user_claim() -> String {
    "fhirUser".into()
}
pub(super) fn default_patient_claim() -> String {
    "patient".into()
}
pub(super) fn default_break_glass_claim() -> String {
    "break_glass".into()
}

impl Default for ClaimMapping {
    fn default() -> Self {
        ClaimMapping {
            user: default_user_claim(),
            name: default_name_claim(),
            roles: default_roles_claim(),
            scope: default_scope_claim(),
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
    pub(super) fn validate(&self, key: &str) -> Result<(), ConfigError> {
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

pub(super) fn is_hmac(alg: Algorithm) -> bool {
    alg.family() == AlgorithmFamily::Hmac
}

/// The least secret length for an HMAC algorithm (RFC 7518 §3.2: at least the hash size).
pub(super) fn hmac_min_bytes(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

pub(super) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

pub(super) fn parse_jwks_url(raw: &str) -> Result<reqwest::Url, String> {
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
    pub(super) fn validate(&self, key: &str) -> Result<(), ConfigError> {
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
