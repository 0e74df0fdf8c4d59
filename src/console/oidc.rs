//! Console sign-in with OpenID Connect: the authorisation code flow with PKCE (RFC 7636,
//! `S256`) against one `[identity]` issuer.
//!
//! `start` sends the browser to the issuer's authorisation endpoint (found once by discovery,
//! `ISSUER/.well-known/openid-configuration`) with a fresh `state` and code challenge;
//! `finish` takes the callback's `code` and `state`, and exchanges the code (with its verifier,
//! and the client secret for a confidential client) at the token endpoint for the tokens. The
//! console then verifies the access token (else the ID token) exactly as a pasted one: same
//! issuers, same auditor check, same session bound to the token's expiry.
//!
//! Guarantees: a `state` is random (256 bits), used once and valid for 10 minutes; a code is
//! exchanged only with the verifier made for its `state`; nothing of the flow is logged but its
//! outcome.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::server::OidcConfig;

/// How long a sign-in may take at the issuer.
const STATE_LIFETIME: Duration = Duration::from_secs(600);
/// The most sign-ins in flight at once (older ones are dropped beyond it).
const MAX_PENDING: usize = 10_000;

/// Why an OpenID Connect sign-in did not complete.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The issuer's discovery document or token endpoint could not be used.
    #[error("the identity provider cannot be reached or answered oddly: {0}")]
    Provider(String),
    /// The callback's `state` is unknown, used or expired.
    #[error("this sign-in is unknown or expired; start again")]
    State,
    /// The issuer refused (the callback or the token endpoint carried an `error`).
    #[error("the identity provider refused the sign-in: {0}")]
    Refused(String),
}

#[derive(Debug, Clone, Deserialize)]
struct Endpoints {
    authorization_endpoint: String,
    token_endpoint: String,
}

#[derive(Deserialize)]
struct Tokens {
    access_token: Option<String>,
    id_token: Option<String>,
}

/// The console's OpenID Connect client.
pub struct Oidc {
    config: OidcConfig,
    http: reqwest::Client,
    endpoints: tokio::sync::OnceCell<Endpoints>,
    /// `state` → (code verifier, when it was made).
    pending: Mutex<HashMap<String, (String, Instant)>>,
}

fn random_hex() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The `S256` code challenge of a verifier.
pub fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl Oidc {
    /// A client for `config`.
    pub fn new(config: OidcConfig) -> Oidc {
        Oidc {
            config,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            endpoints: tokio::sync::OnceCell::new(),
            pending: Mutex::new(HashMap::new()),
        }
    }

    async fn endpoints(&self) -> Result<&Endpoints, OidcError> {
        self.endpoints
            .get_or_try_init(|| async {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.config.issuer.trim_end_matches('/')
                );
                let answer = self
                    .http
                    .get(&url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| OidcError::Provider(format!("discovery: {e}")))?;
                answer
                    .json::<Endpoints>()
                    .await
                    .map_err(|e| OidcError::Provider(format!("discovery document: {e}")))
            })
            .await
    }

    /// Where to send the browser to sign in.
    pub async fn start(&self) -> Result<String, OidcError> {
        let endpoints = self.endpoints().await?;
        let (state, verifier) = (random_hex(), random_hex());
        {
            let mut pending = self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            pending.retain(|_, (_, made)| made.elapsed() < STATE_LIFETIME);
            if pending.len() >= MAX_PENDING {
                pending.clear();
            }
            pending.insert(state.clone(), (verifier.clone(), Instant::now()));
        }
        let mut url = reqwest::Url::parse(&endpoints.authorization_endpoint)
            .map_err(|e| OidcError::Provider(format!("authorization_endpoint: {e}")))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", &self.config.redirect_url)
            .append_pair("scope", &self.config.scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("code_challenge", &challenge(&verifier))
            .append_pair("code_challenge_method", "S256");
        Ok(url.into())
    }

    /// The token the callback's query (`code`, `state`) is exchanged for: the access token,
    /// else the ID token.
    pub async fn finish(&self, query: &str) -> Result<String, OidcError> {
        let fields: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        if let Some(error) = fields.get("error") {
            return Err(OidcError::Refused(error.clone()));
        }
        let state = fields.get("state").ok_or(OidcError::State)?;
        let verifier = {
            let mut pending = self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match pending.remove(state) {
                Some((verifier, made)) if made.elapsed() < STATE_LIFETIME => verifier,
                _ => return Err(OidcError::State),
            }
        };
        let code = fields.get("code").ok_or(OidcError::State)?;
        let endpoints = self.endpoints().await?;
        let mut form = vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code.clone()),
            ("redirect_uri", self.config.redirect_url.clone()),
            ("client_id", self.config.client_id.clone()),
            ("code_verifier", verifier),
        ];
        if !self.config.client_secret_env.is_empty() {
            let secret = std::env::var(&self.config.client_secret_env).map_err(|_| {
                OidcError::Provider(format!(
                    "the client secret's variable {} is not set",
                    self.config.client_secret_env
                ))
            })?;
            form.push(("client_secret", secret));
        }
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        let answer = self
            .http
            .post(&endpoints.token_endpoint)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await
            .map_err(|e| OidcError::Provider(format!("token endpoint: {e}")))?;
        if !answer.status().is_success() {
            return Err(OidcError::Refused(format!(
                "token endpoint answered {}",
                answer.status()
            )));
        }
        let tokens: Tokens = answer
            .json()
            .await
            .map_err(|e| OidcError::Provider(format!("token response: {e}")))?;
        tokens
            .access_token
            .or(tokens.id_token)
            .ok_or_else(|| OidcError::Provider("no token in the token response".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::challenge;

    #[test]
    fn the_s256_challenge_is_that_of_rfc_7636() {
        // RFC 7636, appendix B.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
