//! Unit tests of identity: real tokens signed with keys generated here (aws-lc-rs), verified
//! through every key source, plus the known attacks.
#![allow(unused_imports)]

use crate::config::error::ConfigError;
use crate::record::Actor;
use http::header::{HeaderMap, HeaderName, AUTHORIZATION};
use http::StatusCode;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use lru::LruCache;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

// RSA key generation is slow in debug builds, so the keys are made once per test binary.

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

use super::cache::*;
use super::claims::*;
use super::config::*;
use super::error::*;
use super::keys::*;
use super::token::*;
use super::verifier::*;
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
        let ec_doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let ec_pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ec_doc.as_ref()).unwrap();
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
async fn pem_identity(adjust: impl FnOnce(&mut IdentityConfig)) -> (tempfile::TempDir, Identity) {
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

async fn url_identity(server: &JwksServer, adjust: impl FnOnce(&mut IdentityConfig)) -> Identity {
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
    let (_dir, id) = pem_identity(|c| c.break_glass_header = Some("X-Break-Glass".into())).await;
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
