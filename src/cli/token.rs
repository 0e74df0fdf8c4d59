//! `auditgate token`: FOR TESTING, a token for a configured HMAC issuer.
//!
//! A newcomer who runs the quickstart (HS256 tokens checked against a secret in an environment
//! variable) needs a token to send. This signs one with that issuer's own secret, read the way
//! the gateway reads it (the variable the config names, base64 when the config says so), with
//! the issuer's first HMAC algorithm, its first audience and the claim names its mapping uses
//! (a JSON Pointer mapping becomes nested claims). The token goes to standard output alone, so
//! `TOKEN=$(auditgate token ...)` works; a reminder that it is for testing goes to standard
//! error.
//!
//! Shared-secret tokens prove only that the caller knows the secret: for real users, configure
//! an identity provider's issuer (JWKS URL) instead.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

use super::outcome::{CliError, Verdict};
use crate::config::Config;
use crate::identity::{ClaimMapping, IssuerConfig};

/// `auditgate token`'s arguments.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The gateway's configuration file (the issuer and its secret's variable come from it).
    #[arg(long, short, env = "AUDITGATE_CONFIG")]
    pub config: PathBuf,
    /// The user the token names (its user claim, `sub` unless the issuer maps another).
    #[arg(long)]
    pub sub: String,
    /// The issuer (`iss`) to sign for; default: the first issuer with an HMAC secret.
    #[arg(long)]
    pub issuer: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl_secs: u64,
    /// The user's display name.
    #[arg(long)]
    pub name: Option<String>,
    /// A role (repeat for several).
    #[arg(long = "role")]
    pub roles: Vec<String>,
    /// The client application's id.
    #[arg(long, default_value = "auditgate-token")]
    pub client_id: String,
    /// The declared purpose of use (e.g. TREAT).
    #[arg(long)]
    pub purpose_of_use: Option<String>,
}

/// Why no token could be made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The configuration file did not load.
    #[error(transparent)]
    Config(#[from] crate::config::error::ConfigError),
    /// No issuer of the configuration can sign with a shared secret.
    #[error("no [[identity.issuers]] entry {which} has an HMAC secret (hmac_secrets): tokens for public-key issuers come from their identity provider")]
    NoHmacIssuer {
        /// Which issuer was asked for, in words.
        which: String,
    },
    /// The secret's environment variable is not set in this shell.
    #[error("the issuer's secret variable {var} is not set (export it as the gateway sees it)")]
    MissingSecret {
        /// The variable's name.
        var: String,
    },
    /// The secret is configured as base64 and is not.
    #[error("the issuer's secret in {var} is not valid base64, as the config says it is")]
    BadSecret {
        /// The variable's name.
        var: String,
    },
    /// Signing failed.
    #[error("signing the token failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Mint and print a token.
pub fn run(args: &TokenArgs) -> Result<Verdict, CliError> {
    let token = mint(args, SystemTime::now()).map_err(CliError::failed)?;
    eprintln!(
        "auditgate token: FOR TESTING ONLY. A shared-secret token proves only that its maker \
         knows the secret; real users get tokens from an identity provider."
    );
    println!("{token}");
    Ok(Verdict::Clean)
}

/// The signed token for `args`, issued at `now`.
pub fn mint(args: &TokenArgs, now: SystemTime) -> Result<String, TokenError> {
    let config = Config::load(&args.config)?;
    let issuer = config
        .identity
        .issuers
        .iter()
        .filter(|i| !i.hmac_secrets.is_empty())
        .find(|i| args.issuer.as_deref().is_none_or(|want| i.issuer == want))
        .ok_or_else(|| TokenError::NoHmacIssuer {
            which: match &args.issuer {
                Some(iss) => format!("with issuer {iss:?}"),
                None => "at all".into(),
            },
        })?;
    let (alg, key, kid) = signing_key(issuer)?;
    let mapping = issuer.claims.as_ref().unwrap_or(&config.identity.claims);
    let claims = claims_for(args, issuer, mapping, now);
    let mut header = Header::new(alg);
    header.kid = kid;
    Ok(jsonwebtoken::encode(&header, &claims, &key)?)
}

/// The issuer's first HMAC algorithm and its first secret, read as the gateway reads it.
fn signing_key(
    issuer: &IssuerConfig,
) -> Result<(Algorithm, EncodingKey, Option<String>), TokenError> {
    let alg = issuer
        .algorithms
        .iter()
        .copied()
        .find(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
        .unwrap_or(Algorithm::HS256);
    let Some(secret) = issuer.hmac_secrets.first() else {
        return Err(TokenError::NoHmacIssuer {
            which: format!("with issuer {:?}", issuer.issuer),
        });
    };
    let value = std::env::var(&secret.env_var)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| TokenError::MissingSecret {
            var: secret.env_var.clone(),
        })?;
    let bytes = if secret.base64 {
        base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|_| TokenError::BadSecret {
                var: secret.env_var.clone(),
            })?
    } else {
        value.into_bytes()
    };
    Ok((alg, EncodingKey::from_secret(&bytes), secret.kid.clone()))
}

/// The token's claims: the registered ones (`iss`, the first `aud`, `exp`, `nbf`, `iat`) and
/// the actor's, under the names the issuer's claim mapping reads.
fn claims_for(
    args: &TokenArgs,
    issuer: &IssuerConfig,
    mapping: &ClaimMapping,
    now: SystemTime,
) -> Value {
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut claims = Map::new();
    claims.insert("iss".into(), issuer.issuer.clone().into());
    if let Some(aud) = issuer.audiences.first() {
        claims.insert("aud".into(), aud.clone().into());
    }
    claims.insert("exp".into(), (now + args.ttl_secs).into());
    claims.insert("nbf".into(), now.saturating_sub(5).into());
    claims.insert("iat".into(), now.into());
    set_claim(&mut claims, &mapping.user, args.sub.clone().into());
    set_claim(
        &mut claims,
        &mapping.jti,
        uuid::Uuid::new_v4().to_string().into(),
    );
    if let Some(name) = &args.name {
        set_claim(&mut claims, &mapping.name, name.clone().into());
    }
    if !args.roles.is_empty() {
        set_claim(&mut claims, &mapping.roles, args.roles.clone().into());
    }
    if let Some(client) = mapping.client_id.first() {
        set_claim(&mut claims, client, args.client_id.clone().into());
    }
    if let Some(purpose) = &args.purpose_of_use {
        set_claim(&mut claims, &mapping.purpose_of_use, purpose.clone().into());
    }
    Value::Object(claims)
}

/// Set the claim `name` (a top-level name, or a JSON Pointer such as `/realm_access/roles`,
/// which becomes nested objects); an empty name is a claim the mapping does not read.
fn set_claim(claims: &mut Map<String, Value>, name: &str, value: Value) {
    if name.is_empty() {
        return;
    }
    let Some(pointer) = name.strip_prefix('/') else {
        claims.insert(name.to_string(), value);
        return;
    };
    let tokens: Vec<String> = pointer
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    let Some((last, path)) = tokens.split_last() else {
        return;
    };
    let mut at = claims;
    for token in path {
        let entry = at
            .entry(token.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(next) = entry else {
            return;
        };
        at = next;
    }
    at.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minted token passes the gateway's own verification as the user it names, with the
    /// issuer's claim mapping (a nested roles claim here).
    #[test]
    fn a_minted_token_verifies_as_its_user() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auditgate.toml");
        std::fs::write(
            &path,
            r#"
[upstream]
url = "http://127.0.0.1:9"

[identity.claims]
roles = "/realm_access/roles"

[[identity.issuers]]
issuer = "https://public.idp.test"
audiences = ["fhir"]
algorithms = ["RS256"]
jwks_files = ["none.json"]

[[identity.issuers]]
issuer = "https://token-test.invalid"
audiences = ["fhir"]
algorithms = ["HS384"]
hmac_secrets = [{ env_var = "AUDITGATE_TOKEN_TEST_SECRET", base64 = true }]
"#,
        )
        .unwrap();
        let secret = base64::engine::general_purpose::STANDARD.encode([7u8; 48]);
        std::env::set_var("AUDITGATE_TOKEN_TEST_SECRET", &secret);
        let args = TokenArgs {
            config: path.clone(),
            sub: "dr.test".into(),
            issuer: None,
            ttl_secs: 600,
            name: Some("Dr Test".into()),
            roles: vec!["physician".into()],
            client_id: "cli".into(),
            purpose_of_use: Some("TREAT".into()),
        };
        let token = mint(&args, SystemTime::now()).unwrap();

        // Only the HMAC issuer is loaded: the other one's key file does not exist.
        let mut config = Config::load(&path).unwrap();
        config.identity.issuers.remove(0);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let identity = runtime
            .block_on(crate::identity::Identity::load(
                &config.identity,
                dir.path(),
            ))
            .unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        let verified = runtime
            .block_on(identity.authenticate(&headers, None))
            .unwrap();
        assert_eq!(verified.actor.user, "dr.test");
        assert_eq!(verified.actor.roles, vec!["physician".to_string()]);
        assert_eq!(verified.actor.client_id.as_deref(), Some("cli"));

        // A secret the gateway would not accept either is refused here too.
        std::env::remove_var("AUDITGATE_TOKEN_TEST_SECRET");
        assert!(matches!(
            mint(&args, SystemTime::now()),
            Err(TokenError::MissingSecret { .. })
        ));
        let public_only = TokenArgs {
            issuer: Some("https://public.idp.test".into()),
            ..args
        };
        assert!(matches!(
            mint(&public_only, SystemTime::now()),
            Err(TokenError::NoHmacIssuer { .. })
        ));
    }

    #[test]
    fn pointer_claims_become_nested_objects() {
        let mut claims = Map::new();
        set_claim(&mut claims, "/realm_access/roles", vec!["a", "b"].into());
        set_claim(&mut claims, "sub", "u1".into());
        set_claim(&mut claims, "", "ignored".into());
        assert_eq!(
            Value::Object(claims),
            serde_json::json!({"realm_access": {"roles": ["a", "b"]}, "sub": "u1"})
        );
    }
}
