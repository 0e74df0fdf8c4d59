//! The verifier: one request's token checked in full (header, issuer, pinned algorithm, key,
//! signature, `exp`/`nbf`/`iss`/`aud`), served from the cache when it was verified before.

use super::cache::{token_digest, CacheStats, TokenCache};
use super::claims::{map_claims, Authenticated};
use super::config::IdentityConfig;
use super::error::{AuthFailure, IdentityError};
use super::keys::{Issuer, JwksClient, RemoteJwks, VerifyKey};
use super::token::{b64url_decode, extract_bearer};
use http::header::{HeaderMap, HeaderName};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, PoisonError};
use std::time::Duration;
use std::time::Instant;

/// The JWT verifier. `Send + Sync`; share it in an `Arc`.
pub struct Identity {
    pub(super) issuers: Vec<Issuer>,
    pub(super) by_iss: HashMap<String, usize>,
    pub(super) cache: TokenCache,
    pub(super) jwks: JwksClient,
    pub(super) break_glass_header: Option<HeaderName>,
    pub(super) max_token_bytes: usize,
    pub(super) jwks_refresh: Duration,
    pub(super) jwks_min_refetch: Duration,
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

impl Identity {
    /// Validate `cfg`, read every key (relative paths against `base_dir`), fetch every JWKS
    /// URL once (a failure here is an error: the gateway must not start without keys).
    pub async fn load(cfg: &IdentityConfig, base_dir: &Path) -> Result<Identity, IdentityError> {
        cfg.validate()?;

        let mut identity = Identity {
            issuers: Vec::with_capacity(cfg.issuers.len()),
            by_iss: HashMap::new(),
            cache: TokenCache::new(cfg.cache_max_entries),
            jwks: JwksClient::new(cfg)?,
            break_glass_header: cfg
                .break_glass_header
                .as_deref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            max_token_bytes: cfg.max_token_bytes,
            jwks_refresh: Duration::from_secs(cfg.jwks_refresh_secs),
            jwks_min_refetch: Duration::from_secs(cfg.jwks_min_refetch_secs),
        };

        for (i, ic) in cfg.issuers.iter().enumerate() {
            let key = format!("identity.issuers[{i}]");
            let issuer = Issuer::load(cfg, ic, &key, base_dir, &identity.jwks).await?;
            identity.by_iss.insert(issuer.iss.clone(), i);
            identity.issuers.push(issuer);
        }
        Ok(identity)
    }
}

impl Identity {
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
        let digest = token_digest(token);

        if let Some(mut hit) = self.cache.get(&digest) {
            hit.actor.break_glass |= header_break_glass;
            return Ok(hit);
        }

        let (mut verified, exp) = self.verify(token).await?;
        self.cache.put(digest, &verified, exp);
        verified.actor.break_glass |= header_break_glass;
        Ok(verified)
    }

    /// Fetch every JWKS URL once; a failure keeps that URL's last good set (and is logged).
    pub async fn refresh_jwks(&self) {
        for issuer in &self.issuers {
            for remote in &issuer.remote {
                let _serialised = remote.fetch.lock().await;
                match self.jwks.fetch(&remote.url).await {
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

    /// Every verification key in effect now, as the trail names them
    /// (`ISSUER kid=KID sha256:HEX`), sorted.
    pub fn key_inventory(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .issuers
            .iter()
            .flat_map(|i| {
                i.all_keys()
                    .iter()
                    .map(|k| format!("{} {}", i.iss, k.describe()))
                    .collect::<Vec<_>>()
            })
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// How many verification keys are loaded now (static keys, secrets and JWKS keys).
    pub fn key_count(&self) -> usize {
        self.issuers.iter().map(|i| i.all_keys().len()).sum()
    }
}

impl Identity {
    pub(super) fn header_break_glass(&self, headers: &HeaderMap) -> bool {
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
}

impl Identity {
    /// Full verification of a token: header, issuer, algorithm, key, signature, claims.
    pub(super) async fn verify(&self, token: &str) -> Result<(Authenticated, u64), AuthFailure> {
        let (header, payload_b64) = unverified_header(token)?;
        let alg = Algorithm::from_str(&header.alg).map_err(|_| AuthFailure::DisallowedAlg)?;
        if header.crit.is_some() {
            return Err(AuthFailure::UnsupportedCrit);
        }
        let payload: Value = b64url_decode(payload_b64)
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .filter(Value::is_object)
            .ok_or(AuthFailure::Malformed(
                "the token payload is not a base64url JSON object",
            ))?;
        // The unverified `iss` only chooses which issuer's rules and keys apply; the verified
        // `iss` is checked against it below.
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
        let candidates = self
            .candidate_keys(issuer, header.kid.as_deref(), alg)
            .await;
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
        let mut verified = map_claims(&claims, &issuer.iss, &issuer.claims)?;
        verified.expires_at = exp;
        Ok((verified, exp))
    }

    /// The keys to try for a token of `alg` naming `kid`: the issuer's keys with that `kid`
    /// (after one re-fetch of its JWKS URLs when none has it), else its keys without a `kid`;
    /// for a token without `kid`, every key that serves `alg`.
    async fn candidate_keys(
        &self,
        issuer: &Issuer,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Vec<Arc<VerifyKey>> {
        let Some(kid) = kid else {
            return issuer.keys_without_kid(alg, true);
        };
        let mut keys = issuer.keys_with_kid(kid, alg);
        if keys.is_empty() && self.refetch_for_kid(issuer, kid).await {
            keys = issuer.keys_with_kid(kid, alg);
        }
        if keys.is_empty() {
            keys = issuer.keys_without_kid(alg, false);
        }
        keys
    }
}

/// A token's header, unverified, and its payload part: three dot-separated parts, the header
/// read by hand so that `alg: none` (which jsonwebtoken cannot even parse) is refused as a
/// disallowed algorithm, and so that nothing but `alg`, `kid` and `crit` is ever looked at.
fn unverified_header(token: &str) -> Result<(RawHeader, &str), AuthFailure> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthFailure::Malformed(
            "a JWT has three dot-separated parts",
        ));
    };
    let header: RawHeader = b64url_decode(header_b64)
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(AuthFailure::Malformed(
            "the token header is not base64url JSON",
        ))?;
    Ok((header, payload_b64))
}

/// The parts of a JOSE header this module reads. Everything else (`jku`, `x5u`, `jwk`, `x5c`,
/// `typ`...) is ignored on purpose.
#[derive(Deserialize)]
pub(super) struct RawHeader {
    pub(super) alg: String,
    #[serde(default)]
    pub(super) kid: Option<String>,
    #[serde(default)]
    pub(super) crit: Option<Value>,
}

/// Map a jsonwebtoken error to a refusal, or `None` when it means "this key did not verify
/// the signature" and the next candidate key should be tried.
pub(super) fn refusal(kind: &ErrorKind) -> Option<AuthFailure> {
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

impl Identity {
    /// Hit and miss counts and the size of the verified-token cache.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// A token named `kid` and no key has it: fetch the issuer's JWKS URLs again, each at most
    /// once per `jwks_min_refetch`. True when a key with that `kid` is now known.
    pub(super) async fn refetch_for_kid(&self, issuer: &Issuer, kid: &str) -> bool {
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
            match self.jwks.fetch(&remote.url).await {
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
    pub(super) fn install(&self, remote: &RemoteJwks, keys: Vec<Arc<VerifyKey>>) {
        let mut slot = remote.keys.write().unwrap_or_else(PoisonError::into_inner);
        let removed = slot
            .iter()
            .any(|old| !keys.iter().any(|new| new.fingerprint == old.fingerprint));
        let count = keys.len();
        *slot = Arc::new(keys);
        drop(slot);
        if removed {
            self.cache.clear();
        }
        tracing::debug!(url = %remote.display, keys = count, removed, "JWKS installed");
    }
}
