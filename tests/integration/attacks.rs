//! Attacks on identity and on the path, through the real gateway: each gets 401 or 400, never
//! reaches the EHR, and still leaves a journal record (without token contents).

use std::time::Duration;

use auditgate::record::{Phase, Who};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::support::gateway::{
    claims_for, Gateway, GatewayOptions, HS_SECRET, ISS_EC, ISS_HS, ISS_JWKS, ISS_RSA,
};
use crate::support::keys::{self, jwks, mint, mint_with_header, TestKey};
use crate::support::{http_client, FhirServer};

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

struct Sent {
    status: u16,
    request_id: String,
    www_authenticate: Option<String>,
    body: String,
}

fn get(gw: &Gateway, path: &str, headers: &[(&str, String)]) -> Sent {
    let mut req = http_client().get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let www_authenticate = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.text().unwrap();
    Sent {
        status,
        request_id,
        www_authenticate,
        body,
    }
}

/// Send a request target byte for byte (HTTP clients normalise `..` and encodings away).
fn raw_get(gw: &Gateway, target: &str, token: &str) -> Sent {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let header = |name: &str| {
        head.lines().find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        })
    };
    Sent {
        status,
        request_id: header("x-request-id").unwrap_or_default(),
        www_authenticate: header("www-authenticate"),
        body: body.to_string(),
    }
}

fn bearer(token: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {token}"))
}

#[test]
fn every_key_source_authenticates() {
    let fhir = FhirServer::seeded();
    let gw = Gateway::start(GatewayOptions::new(format!("127.0.0.1:{}", fhir.port())));
    let tokens = [
        (
            "rs256",
            mint(Algorithm::RS256, &gw.keys.rsa, &claims_for(ISS_RSA, "u-rs")),
        ),
        (
            "es256",
            mint(Algorithm::ES256, &gw.keys.ec, &claims_for(ISS_EC, "u-es")),
        ),
        (
            "hs256",
            mint_with_header(
                &Header::new(Algorithm::HS256),
                &EncodingKey::from_secret(HS_SECRET.as_bytes()),
                &claims_for(ISS_HS, "u-hs"),
            ),
        ),
        (
            "jwks",
            mint(
                Algorithm::RS256,
                &gw.keys.jwks_key,
                &claims_for(ISS_JWKS, "u-jwks"),
            ),
        ),
    ];
    for (name, token) in &tokens {
        let sent = get(&gw, "/fhir/Patient/example", &[bearer(token)]);
        assert_eq!(sent.status, 200, "{name}: {}", sent.body);
    }
    let users: Vec<String> = gw
        .records()
        .iter()
        .filter_map(|r| match &r.event.who {
            Who::Authenticated(a) => Some(a.user.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(users, vec!["u-rs", "u-es", "u-hs", "u-jwks"]);
}

#[test]
fn jwks_rotation_is_picked_up_on_an_unknown_kid() {
    let fhir = FhirServer::seeded();
    let gw = Gateway::start(GatewayOptions::new(format!("127.0.0.1:{}", fhir.port())));
    let rotated = TestKey::rsa(2).with_kid("jwks-2");
    let token = mint(
        Algorithm::RS256,
        &rotated,
        &claims_for(ISS_JWKS, "u-rotated"),
    );
    // Not yet published: refused as an unknown key.
    let sent = get(&gw, "/fhir/Patient/example", &[bearer(&token)]);
    assert_eq!(sent.status, 401);
    // The IdP rotates: the new key is published beside the old one.
    gw.jwks.set_jwks(&jwks(&[&gw.keys.jwks_key, &rotated]));
    // The re-fetch on an unknown kid has a cooldown (1 s in the test config, 30 s by default):
    // once it has passed, the next token with the new kid triggers one fetch and is accepted.
    let fetches_before = gw.jwks.requests();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let sent = get(&gw, "/fhir/Patient/example", &[bearer(&token)]);
        if sent.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rotated key never accepted: {}",
            sent.body
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        gw.jwks.requests() > fetches_before,
        "the new key came from a re-fetch"
    );
}

#[test]
fn identity_attacks_get_401_or_400_and_a_record() {
    let fhir = FhirServer::seeded();
    let gw = Gateway::start(GatewayOptions::new(format!("127.0.0.1:{}", fhir.port())));
    let now = keys::now_secs();
    let good_claims = claims_for(ISS_RSA, "mallory");

    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(good_claims.to_string().as_bytes())
    );
    // HS256 "signed" with the RSA public key as the shared secret.
    let confused = mint_with_header(
        &Header::new(Algorithm::HS256),
        &EncodingKey::from_secret(gw.keys.rsa.public_pem().as_bytes()),
        &good_claims,
    );
    let mut expired = good_claims.clone();
    expired["exp"] = json!(now - 3600);
    expired["iat"] = json!(now - 7200);
    expired["nbf"] = json!(now - 7200);
    let mut future = good_claims.clone();
    future["nbf"] = json!(now + 3600);
    let mut wrong_aud = good_claims.clone();
    wrong_aud["aud"] = json!("someone-else");
    let wrong_iss = claims_for("https://evil.example", "mallory");
    let unknown_kid = mint(
        Algorithm::RS256,
        &TestKey::rsa(3).with_kid("not-published"),
        &claims_for(ISS_JWKS, "mallory"),
    );
    let good = gw.token("mallory");

    // (name, headers, query, expected status, expected reason)
    type AttackCase<'a> = (&'a str, Vec<(&'a str, String)>, &'a str, u16, &'a str);
    let cases: Vec<AttackCase> = vec![
        ("no token", vec![], "", 401, "missing_token"),
        (
            "alg none",
            vec![bearer(&alg_none)],
            "",
            401,
            "disallowed_alg",
        ),
        (
            "hs256 with rsa public key",
            vec![bearer(&confused)],
            "",
            401,
            "disallowed_alg",
        ),
        (
            "expired",
            vec![bearer(&mint(Algorithm::RS256, &gw.keys.rsa, &expired))],
            "",
            401,
            "expired",
        ),
        (
            "not yet valid",
            vec![bearer(&mint(Algorithm::RS256, &gw.keys.rsa, &future))],
            "",
            401,
            "not_yet_valid",
        ),
        (
            "wrong aud",
            vec![bearer(&mint(Algorithm::RS256, &gw.keys.rsa, &wrong_aud))],
            "",
            401,
            "wrong_audience",
        ),
        (
            "wrong iss",
            vec![bearer(&mint(Algorithm::RS256, &gw.keys.rsa, &wrong_iss))],
            "",
            401,
            "unknown_issuer",
        ),
        (
            "unknown kid",
            vec![bearer(&unknown_kid)],
            "",
            401,
            "unknown_key",
        ),
        (
            "token in query",
            vec![],
            "?access_token=QUERYTOKENMARKER",
            400,
            "token_in_query",
        ),
        (
            "token in query and header",
            vec![bearer(&good)],
            "?access_token=QUERYTOKENMARKER",
            400,
            "multiple_tokens",
        ),
        (
            "two tokens",
            vec![bearer(&good), ("Authorization", format!("Bearer {good}"))],
            "",
            400,
            "multiple_tokens",
        ),
    ];
    for (name, headers, query, status, reason) in &cases {
        let sent = get(&gw, &format!("/fhir/Patient/attack-target{query}"), headers);
        assert_eq!(sent.status, *status, "{name}: {}", sent.body);
        let challenge = sent
            .www_authenticate
            .unwrap_or_else(|| panic!("{name}: no WWW-Authenticate"));
        assert!(
            challenge.starts_with("Bearer realm=\"auditgate\""),
            "{name}: {challenge}"
        );
        assert!(sent.body.contains(reason), "{name}: body {}", sent.body);
        let records = gw.records();
        let r = records
            .iter()
            .find(|r| r.event.request_id == sent.request_id)
            .unwrap_or_else(|| panic!("{name}: no record"));
        assert_eq!(r.event.phase, Phase::Outcome);
        match &r.event.who {
            Who::Unauthenticated { reason: got } => assert_eq!(got, reason, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
        assert_eq!(r.event.outcome.as_ref().unwrap().status, *status);
    }
    // Nothing reached the EHR, and no record or log line carries a token.
    assert!(
        !fhir
            .upstream_requests()
            .iter()
            .any(|r| r.target.contains("attack-target")),
        "refused requests must not be forwarded"
    );
    let journal_text: String = gw
        .records()
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    for secret in [
        good.as_str(),
        alg_none.as_str(),
        confused.as_str(),
        "QUERYTOKENMARKER",
    ] {
        assert!(
            !journal_text.contains(secret),
            "a token reached the journal"
        );
        assert!(!gw.log().contains(secret), "a token reached the log");
    }
}

#[test]
fn path_tricks_aimed_at_another_patient_are_refused_and_recorded() {
    let fhir = FhirServer::seeded();
    let gw = Gateway::start(GatewayOptions::new(format!("127.0.0.1:{}", fhir.port())));
    let token = gw.token("mallory");
    let tricks = [
        ("/fhir/Patient/pat1%2F..%2Fvictim", "encoded_slash"),
        ("/fhir/Patient/pat1/../victim", "dot_segment"),
        ("/fhir/Patient/pat1/%2e%2e/victim", "dot_segment"),
        ("/fhir/Patient/pat1%252F..%252Fvictim", "double_encoding"),
        ("/fhir/Patient/pat1;/victim", "matrix_param"),
        ("/fhir/Patient/pat1;jsessionid=victim", "matrix_param"),
        ("/fhir/Patient/pat1%00victim", "nul"),
        ("/fhir//Patient/victim", "empty_segment"),
        ("/fhir/Patient/pat1%5C..%5Cvictim", "encoded_slash"),
    ];
    for (path, reason) in tricks {
        let sent = raw_get(&gw, path, &token);
        assert_eq!(sent.status, 400, "{path}: {}", sent.body);
        assert!(
            sent.body.contains(reason),
            "{path}: expected {reason}, got {}",
            sent.body
        );
        let records = gw.records();
        let r = records
            .iter()
            .find(|r| r.event.request_id == sent.request_id)
            .expect("record");
        assert_eq!(
            r.event.outcome.as_ref().unwrap().error.as_deref(),
            Some(reason)
        );
        assert!(
            r.event.patients.is_empty(),
            "{path}: a refused path names no patient"
        );
        assert_eq!(r.event.rule, "rejected");
        match &r.event.who {
            Who::Authenticated(a) => assert_eq!(a.user, "mallory"),
            other => panic!("{other:?}"),
        }
    }
    assert!(
        !fhir
            .upstream_requests()
            .iter()
            .any(|r| r.target.contains("victim")),
        "no trick reached the EHR"
    );
}

#[test]
fn upgrades_and_method_overrides_are_refused_with_a_record() {
    let fhir = FhirServer::seeded();
    let gw = Gateway::start(GatewayOptions::new(format!("127.0.0.1:{}", fhir.port())));
    let token = gw.token("mallory");

    // A WebSocket upgrade would become a tunnel no record covers: refused, recorded.
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /fhir/Patient/ws-upgrade HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 501"), "{head}");
    assert!(
        !fhir
            .upstream_requests()
            .iter()
            .any(|r| r.target.contains("ws-upgrade")),
        "the upgrade reached the EHR"
    );

    // A GET that asks the EHR to act as a DELETE: refused, recorded, never forwarded.
    let resp = http_client()
        .get(gw.url("/fhir/Observation/override-target"))
        .bearer_auth(&token)
        .header("X-HTTP-Method-Override", "DELETE")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 400);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(resp.text().unwrap().contains("method_override"));
    let records = gw.records();
    let mine: Vec<_> = records
        .iter()
        .filter(|r| r.event.request_id == request_id)
        .collect();
    assert_eq!(mine.len(), 1, "one outcome record");
    assert_eq!(mine[0].event.rule, "rejected");
    assert_eq!(
        mine[0].event.outcome.as_ref().unwrap().error.as_deref(),
        Some("method_override")
    );
    assert!(
        !fhir
            .upstream_requests()
            .iter()
            .any(|r| r.target.contains("override-target")),
        "the override reached the EHR"
    );
}
