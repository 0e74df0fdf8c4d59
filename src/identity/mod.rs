//! Identity: who is behind a request, from the Bearer JWT in its `Authorization` header.
//!
//! This module owns token extraction, signature and claim verification, the keys (PEM files,
//! HMAC secrets from the environment, JWKS files, JWKS URLs refreshed in the background), the
//! cache of verified tokens, and the mapping of claims to the journal's [`Actor`](crate::record::Actor). The proxy
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
//!
//! The rooms: [`config`] (`[identity]`, checked), [`error`] (why a token is refused, why the
//! section cannot load), [`token`] (the one Bearer token of a request), [`keys`] (PEM files,
//! HMAC secrets, JWKS files and URLs), [`verifier`] (signature and claim checks),
//! [`claims`] (claims to the journal's actor), [`cache`] (verified tokens, until `exp`).

pub mod cache;
pub mod claims;
pub mod config;
pub mod error;
pub mod keys;
#[cfg(test)]
mod tests;
pub mod token;
pub mod verifier;

pub use cache::CacheStats;
pub use claims::Authenticated;
pub use config::{ClaimMapping, HmacSecretConfig, IdentityConfig, IssuerConfig, PemKeyConfig};
pub use error::{AuthFailure, IdentityError, REALM};
pub use verifier::Identity;
