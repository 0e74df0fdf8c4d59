//! Why identity failed: a refused token ([`AuthFailure`], a fixed reason code, status and
//! RFC 6750 challenge per case) or an `[identity]` section that cannot load ([`IdentityError`]).

use crate::config::error::ConfigError;
use http::StatusCode;
use std::path::PathBuf;

/// The realm named in every `WWW-Authenticate` challenge.
pub const REALM: &str = "auditgate";

/// Why [`Identity::load`](super::Identity::load) could not build the verifier. Messages name config keys and files,
/// never secret or key material.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The configuration failed [`IdentityConfig::validate`](super::IdentityConfig::validate).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A PEM key file could not be read.
    #[error("config key `{key}`: cannot read key file {path}: {source}")]
    ReadKey {
        /// The config key, e.g. `identity.issuers[0].pem_keys[1]`.
        key: String,
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds no public key of a supported kind (RSA, EC P-256/P-384, Ed25519).
    #[error(
        "config key `{key}`: {path} holds no RSA, EC (P-256/P-384) or Ed25519 public key in PEM"
    )]
    BadPem {
        /// The config key, e.g. `identity.issuers[0].pem_keys[1]`.
        key: String,
        /// The file.
        path: PathBuf,
    },
    /// A key file holds a private key; the gateway takes public keys only.
    #[error(
        "config key `{key}`: {path} holds a private key; give the gateway the public key only"
    )]
    PrivateKey {
        /// The config key, e.g. `identity.issuers[0].pem_keys[1]`.
        key: String,
        /// The file.
        path: PathBuf,
    },
    /// A key's family (RSA, EC, Ed) serves none of the issuer's accepted algorithms.
    #[error("config key `{key}`: {path} holds a {family} key but the issuer accepts no {family} algorithm")]
    KeyNotUsable {
        /// The config key, e.g. `identity.issuers[0].pem_keys[1]`.
        key: String,
        /// The file.
        path: PathBuf,
        /// The key's family (`RSA`, `EC`, `Ed25519`, `HMAC`).
        family: &'static str,
    },
    /// An HMAC secret's environment variable is unset, empty or not UTF-8.
    #[error("config key `{key}`: environment variable {var} is unset, empty or not UTF-8")]
    MissingSecret {
        /// The config key, e.g. `identity.issuers[0].pem_keys[1]`.
        key: String,
        /// The environment variable.
        var: String,
    },
    /// An HMAC secret declared `base64` does not decode.
    #[error("config key `{key}`: environment variable {var} is not valid base64")]
    BadSecret {
        /// The config key, e.g. `identity.issuers[0].pem_keys[1]`.
        key: String,
        /// The environment variable.
        var: String,
    },
    /// An HMAC secret is shorter than the hash of the strongest accepted HS algorithm.
    #[error("config key `{key}`: the secret in {var} is {len_bytes} bytes; at least {min_bytes} are required")]
    WeakSecret {
        /// The config key, e.g. `identity.issuers[0].pem_keys[1]`.
        key: String,
        /// The environment variable.
        var: String,
        /// The secret's length in bytes.
        len_bytes: usize,
        /// The least the issuer's algorithms need.
        min_bytes: usize,
    },
    /// A JWKS file could not be read.
    #[error("config key `{key}`: cannot read JWKS file {path}: {source}")]
    ReadJwks {
        /// The config key, e.g. `identity.issuers[0].pem_keys[1]`.
        key: String,
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A JWKS document (file or URL) is not a key set, is too large, or holds no usable key.
    #[error("config key `{key}`: JWKS {origin}: {reason}")]
    BadJwks {
        /// The config key, e.g. `identity.issuers[0].pem_keys[1]`.
        key: String,
        /// The file or URL (without its query).
        origin: String,
        /// What was wrong.
        reason: String,
    },
    /// The first fetch of a JWKS URL failed (network, status, size or content).
    #[error("config key `{key}`: cannot fetch JWKS from {url}: {reason}")]
    FetchJwks {
        /// The config key, e.g. `identity.issuers[0].pem_keys[1]`.
        key: String,
        /// The URL, without its query.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// After loading, an issuer has no key that serves any of its accepted algorithms.
    #[error("config key `{key}`: no loaded key serves any of the issuer's algorithms")]
    NoUsableKeys {
        /// The config key, e.g. `identity.issuers[0].pem_keys[1]`.
        key: String,
    },
    /// The HTTP client for JWKS fetches could not be built (TLS setup).
    #[error("cannot build the HTTP client for JWKS fetches: {reason}")]
    HttpClient {
        /// What was wrong.
        reason: String,
    },
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
    pub(super) fn description(&self) -> &'static str {
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
