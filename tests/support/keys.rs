//! Key material for identity tests: RSA-2048, ECDSA P-256 and Ed25519 key pairs made with
//! `aws-lc-rs`, in the forms the gateway and `jsonwebtoken` take, and signed JWTs.
//!
//! Forms, per key:
//! - private key: PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), which `EncodingKey::from_rsa_pem`,
//!   `from_ec_pem` and `from_ed_pem` all accept ([`TestKey::encoding_key`] picks the right one);
//! - public key: SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`);
//! - JWK ([`TestKey::jwk`]): `kty`, `kid`, `use: sig`, `alg` and `n`/`e` (RSA), `crv: P-256`/
//!   `x`/`y` (EC) or `crv: Ed25519`/`x` (OKP), base64url without padding, computed here from
//!   the raw key bytes (not by `jsonwebtoken`, so a conversion bug there cannot hide).
//!
//! RSA generation takes a second or more in a debug build, so RSA keys come from a
//! process-wide cache of [`RSA_SLOTS`] slots: `TestKey::rsa(0)` is the same key for every test
//! in the binary, `TestKey::rsa(1)` a different one (for rotation), and so on. EC and Ed25519
//! keys are cheap and fresh on every call.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::{json, Value};

/// Distinct cached RSA keys available through [`TestKey::rsa`].
pub const RSA_SLOTS: usize = 8;

/// The kind of a key pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// RSA, 2048-bit modulus, e = 65537. Signs RS256/384/512 and PS256/384/512.
    Rsa,
    /// ECDSA on P-256. Signs ES256.
    EcP256,
    /// Ed25519. Signs EdDSA.
    Ed25519,
}

impl KeyKind {
    /// The algorithm tokens signed with this kind of key usually carry.
    pub fn default_alg(self) -> Algorithm {
        match self {
            KeyKind::Rsa => Algorithm::RS256,
            KeyKind::EcP256 => Algorithm::ES256,
            KeyKind::Ed25519 => Algorithm::EdDSA,
        }
    }
}

/// Public half of a key in raw form, for the JWK.
#[derive(Clone, Debug)]
enum PublicParts {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec { x: Vec<u8>, y: Vec<u8> },
    Ed { x: Vec<u8> },
}

/// A key pair with a key id.
#[derive(Clone, Debug)]
pub struct TestKey {
    pub kind: KeyKind,
    /// The `kid` put in JWKs and in the headers of tokens from [`mint`].
    pub kid: String,
    private_pem: String,
    public_pem: String,
    public: PublicParts,
}

impl TestKey {
    /// The cached RSA-2048 key in `slot` (0..[`RSA_SLOTS`]), kid `rsa-{slot}`. Generated on
    /// first use; the same key for every later call in this process.
    pub fn rsa(slot: usize) -> TestKey {
        static CACHE: [OnceLock<TestKey>; RSA_SLOTS] = [const { OnceLock::new() }; RSA_SLOTS];
        assert!(
            slot < RSA_SLOTS,
            "TestKey::rsa({slot}): only {RSA_SLOTS} cached slots"
        );
        CACHE[slot]
            .get_or_init(|| TestKey::generate(KeyKind::Rsa).with_kid(&format!("rsa-{slot}")))
            .clone()
    }

    /// A fresh ECDSA P-256 key, kid `ec-N`.
    pub fn ec_p256() -> TestKey {
        TestKey::generate(KeyKind::EcP256)
    }

    /// A fresh Ed25519 key, kid `ed-N`.
    pub fn ed25519() -> TestKey {
        TestKey::generate(KeyKind::Ed25519)
    }

    /// A fresh key of `kind` (uncached, also for RSA: slow in debug builds), kid `KIND-N`.
    pub fn generate(kind: KeyKind) -> TestKey {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let (prefix, pkcs8, spki, public) = match kind {
            KeyKind::Rsa => {
                let kp = RsaKeyPair::generate(KeySize::Rsa2048).expect("generate RSA-2048");
                let pkcs8: Pkcs8V1Der = kp.as_der().expect("RSA private key to PKCS#8");
                let spki = kp.public_key().as_der().expect("RSA public key to SPKI");
                let public = PublicParts::Rsa {
                    n: kp
                        .public_key()
                        .modulus()
                        .big_endian_without_leading_zero()
                        .to_vec(),
                    e: kp
                        .public_key()
                        .exponent()
                        .big_endian_without_leading_zero()
                        .to_vec(),
                };
                (
                    "rsa",
                    pkcs8.as_ref().to_vec(),
                    spki.as_ref().to_vec(),
                    public,
                )
            }
            KeyKind::EcP256 => {
                let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                    .expect("generate P-256");
                let pkcs8 = kp.to_pkcs8v1().expect("EC private key to PKCS#8");
                let spki = kp.public_key().as_der().expect("EC public key to SPKI");
                // Uncompressed SEC1 point: 0x04 || X (32) || Y (32).
                let point = kp.public_key().as_ref();
                assert_eq!((point.len(), point[0]), (65, 4), "uncompressed P-256 point");
                let public = PublicParts::Ec {
                    x: point[1..33].to_vec(),
                    y: point[33..65].to_vec(),
                };
                (
                    "ec",
                    pkcs8.as_ref().to_vec(),
                    spki.as_ref().to_vec(),
                    public,
                )
            }
            KeyKind::Ed25519 => {
                let kp = Ed25519KeyPair::generate().expect("generate Ed25519");
                let pkcs8 = kp.to_pkcs8v1().expect("Ed25519 private key to PKCS#8 v1");
                let spki = kp
                    .public_key()
                    .as_der()
                    .expect("Ed25519 public key to SPKI");
                let public = PublicParts::Ed {
                    x: kp.public_key().as_ref().to_vec(),
                };
                (
                    "ed",
                    pkcs8.as_ref().to_vec(),
                    spki.as_ref().to_vec(),
                    public,
                )
            }
        };
        TestKey {
            kind,
            kid: format!("{prefix}-{n}"),
            private_pem: to_pem("PRIVATE KEY", pkcs8),
            public_pem: to_pem("PUBLIC KEY", spki),
            public,
        }
    }

    /// The same key under another `kid`.
    pub fn with_kid(mut self, kid: &str) -> TestKey {
        self.kid = kid.to_string();
        self
    }

    /// The algorithm tokens signed with this key usually carry (RS256, ES256, EdDSA).
    pub fn alg(&self) -> Algorithm {
        self.kind.default_alg()
    }

    /// PKCS#8 PEM of the private key.
    pub fn private_pem(&self) -> &str {
        &self.private_pem
    }

    /// SubjectPublicKeyInfo PEM of the public key (what a gateway config would pin).
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// The private key for `jsonwebtoken::encode`.
    pub fn encoding_key(&self) -> EncodingKey {
        let pem = self.private_pem.as_bytes();
        match self.kind {
            KeyKind::Rsa => EncodingKey::from_rsa_pem(pem),
            KeyKind::EcP256 => EncodingKey::from_ec_pem(pem),
            KeyKind::Ed25519 => EncodingKey::from_ed_pem(pem),
        }
        .unwrap_or_else(|e| panic!("{:?} private PEM rejected by jsonwebtoken: {e}", self.kind))
    }

    /// The public key for `jsonwebtoken::decode`.
    pub fn decoding_key(&self) -> DecodingKey {
        let pem = self.public_pem.as_bytes();
        match self.kind {
            KeyKind::Rsa => DecodingKey::from_rsa_pem(pem),
            KeyKind::EcP256 => DecodingKey::from_ec_pem(pem),
            KeyKind::Ed25519 => DecodingKey::from_ed_pem(pem),
        }
        .unwrap_or_else(|e| panic!("{:?} public PEM rejected by jsonwebtoken: {e}", self.kind))
    }

    /// The public key as a JWK with `kid`, `use: sig` and `alg` (see the module docs).
    pub fn jwk(&self) -> Value {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let alg = format!("{:?}", self.alg()); // "RS256", "ES256", "EdDSA"
        match &self.public {
            PublicParts::Rsa { n, e } => json!({
                "kty": "RSA", "kid": self.kid, "use": "sig", "alg": alg, "n": b64(n), "e": b64(e),
            }),
            PublicParts::Ec { x, y } => json!({
                "kty": "EC", "kid": self.kid, "use": "sig", "alg": alg, "crv": "P-256",
                "x": b64(x), "y": b64(y),
            }),
            PublicParts::Ed { x } => json!({
                "kty": "OKP", "kid": self.kid, "use": "sig", "alg": alg, "crv": "Ed25519",
                "x": b64(x),
            }),
        }
    }
}

/// A JWKS document (`{"keys": [...]}`) with these keys' public JWKs.
pub fn jwks(keys: &[&TestKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
}

/// Signs `claims` with `key` under `alg` (header: `alg`, `typ: JWT`, `kid: key.kid`). `alg`
/// need not be the key's usual one (RS384 with an RSA key, say), but it must be of the key's
/// family: jsonwebtoken refuses to sign otherwise, and this panics.
pub fn mint(alg: Algorithm, key: &TestKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(key.kid.clone());
    mint_with_header(&header, &key.encoding_key(), claims)
}

/// Signs `claims` with any header and key (no `kid`, a foreign `kid`, `jku`, an HMAC key made
/// with `EncodingKey::from_secret` for algorithm-confusion tests, ...).
pub fn mint_with_header(header: &Header, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(header, claims, key)
        .unwrap_or_else(|e| panic!("sign a {:?} token: {e}", header.alg))
}

/// Seconds since the Unix epoch, for `iat`, `nbf` and `exp`.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Typical access-token claims: `iss`, `aud`, `sub`, `iat` and `nbf` now, `exp` in 5 minutes.
/// Add or overwrite fields on the returned object as a test needs.
pub fn claims(iss: &str, aud: &str, sub: &str) -> Value {
    let now = now_secs();
    json!({ "iss": iss, "aud": aud, "sub": sub, "iat": now, "nbf": now, "exp": now + 300 })
}

fn to_pem(tag: &str, der: Vec<u8>) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}
