//! Self-tests of the harness in `tests/support/`: each helper does what its docs say against
//! the real thing (sekmet, fhirclient, fhirpy, jsonwebtoken), so a failure in a gateway test
//! points at the gateway.

use std::time::Duration;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

use crate::support::keys::{self, claims, jwks};
use crate::support::{
    assert_success, examples_dir, free_port, http_client, mint, run_python, wait_for_port,
    FhirServer, JwksServer, KeyKind, TestKey,
};

#[test]
fn seeded_fhir_server_serves_the_hl7_examples() {
    let fhir = FhirServer::seeded();
    let report = fhir.seed_report().expect("seeded() has a seed report");

    let patient_files = std::fs::read_dir(examples_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("Patient-"))
        .count();
    assert_eq!(
        report.count("Patient"),
        patient_files,
        "every Patient example loads"
    );
    for rtype in [
        "Observation",
        "Encounter",
        "Condition",
        "AllergyIntolerance",
        "MedicationRequest",
        "Procedure",
        "DiagnosticReport",
        "Immunization",
        "Practitioner",
        "Organization",
    ] {
        assert!(
            report.count(rtype) > 0,
            "no {rtype} seeded: {:?}",
            report.loaded
        );
    }
    assert_eq!(
        report.total(),
        report.attempted,
        "every selected file loads"
    );
    assert!(
        report.total() > 600,
        "only {} resources seeded",
        report.total()
    );
    assert_eq!(
        report.count("Subscription"),
        0,
        "no Subscription: it would call out"
    );

    let resp = http_client()
        .get(fhir.url("Patient/example"))
        .header("Accept", "application/fhir+json")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let etag = resp
        .headers()
        .get("etag")
        .expect("sekmet sends ETag")
        .to_str()
        .unwrap();
    assert!(etag.starts_with("W/\""), "weak ETag, got {etag}");
    let patient: Value = resp.json().unwrap();
    assert_eq!(patient["resourceType"], "Patient");
    assert_eq!(patient["name"][0]["family"], "Chalmers");

    let bundle = fhir.get_json("Observation?patient=example&_summary=count");
    assert!(
        bundle["total"].as_u64().unwrap() >= 20,
        "Patient/example has observations: {bundle}"
    );

    let seen = fhir.upstream_requests();
    assert!(
        seen.iter()
            .any(|r| r.method == "GET" && r.target == "/fhir/Patient/example" && r.status == 200),
        "access log has the read: {seen:?}"
    );
}

#[test]
fn python_fhir_clients_read_and_search_the_seeded_server() {
    let fhir = FhirServer::seeded();
    let script = r#"
import sys
base = sys.argv[1]

from fhirclient import client
import fhirclient.models.patient as p
import fhirclient.models.observation as o
smart = client.FHIRClient(settings={"app_id": "auditgate-test", "api_base": base})
pat = p.Patient.read("example", smart.server)
print("fhirclient.patient", pat.id, pat.name[0].family)
obs = o.Observation.where(struct={"subject": "Patient/example"}).perform_resources(smart.server)
print("fhirclient.observations", len(obs))

from fhirpy import SyncFHIRClient
c = SyncFHIRClient(base)
pt = c.reference("Patient", "example").to_resource()
print("fhirpy.patient", pt["id"], pt["name"][0]["family"])
print("fhirpy.observations", len(c.resources("Observation").search(patient="example").fetch_all()))
"#;
    let out = run_python(script, &[fhir.base_url()], &[]);
    let stdout = assert_success(&out, "fhirclient + fhirpy against sekmet");

    let total = fhir.get_json("Observation?patient=example&_summary=count")["total"]
        .as_u64()
        .unwrap();
    assert!(
        stdout.contains("fhirclient.patient example Chalmers"),
        "{stdout}"
    );
    assert!(
        stdout.contains("fhirpy.patient example Chalmers"),
        "{stdout}"
    );
    // Both clients follow `next` links, so they see every page of the search.
    assert!(
        stdout.contains(&format!("fhirclient.observations {total}\n")),
        "{total}: {stdout}"
    );
    assert!(
        stdout.contains(&format!("fhirpy.observations {total}\n")),
        "{total}: {stdout}"
    );
}

#[test]
fn run_python_reports_failures_and_passes_env() {
    let out = run_python(
        "import os, sys; print(os.environ['AUDITGATE_X'], sys.argv[1:]); sys.exit(3)",
        &["a", "b c"],
        &[("AUDITGATE_X", "42")],
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42 ['a', 'b c']\n");
}

#[test]
fn fresh_fhir_server_is_empty_and_dies_with_its_handle() {
    let fhir = FhirServer::start();
    let (port, pid) = (fhir.port(), fhir.pid());
    let dir = fhir.dir().to_path_buf();
    assert!(fhir.base_url().starts_with("http://127.0.0.1:"));
    assert_eq!(fhir.get_json("Patient?_summary=count")["total"], 0);

    let created =
        fhir.put_resource(&json!({"resourceType": "Patient", "id": "p1", "active": true}));
    assert_eq!(created["meta"]["versionId"], "1");

    // What reached the upstream: the access log at once, the traffic table just after.
    let resp = http_client()
        .get(fhir.url("Patient/p1?_summary=true"))
        .header("X-Request-Id", "selftest-1")
        .header("Authorization", "Bearer not-a-secret")
        .send()
        .unwrap();
    assert_eq!(
        resp.headers()["x-request-id"],
        "selftest-1",
        "sekmet echoes X-Request-Id"
    );
    let seen = fhir.upstream_requests();
    let last = seen.last().unwrap();
    assert_eq!(
        (last.method.as_str(), last.target.as_str(), last.status),
        ("GET", "/fhir/Patient/p1?_summary=true", 200)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let row = loop {
        let found = fhir
            .traffic()
            .into_iter()
            .find(|t| t.url == "/fhir/Patient/p1?_summary=true");
        if let Some(row) = found {
            break row;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "request not in sekmet's traffic table"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(row.req_headers["x-request-id"], "selftest-1");
    assert_eq!(row.req_headers["authorization"], "Bearer ***redacted***");
    assert_eq!(row.status, Some(200));

    drop(fhir);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "sekmet {pid} still runs"
    );
    assert!(!dir.exists(), "temp dir {} not removed", dir.display());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still accepts"
    );
}

#[test]
fn free_port_and_wait_for_port() {
    assert_ne!(free_port(), 0);
    // A port held bound but not yet listening: connections to it are refused, and no other
    // test's server can take it meanwhile (a port from free_port() could be taken by a test
    // running beside this one between the two checks: a race this test once lost).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .unwrap();
    let port = held.local_addr().unwrap().port();
    assert!(
        !wait_for_port(port, Duration::from_millis(100)),
        "nothing listens yet"
    );
    let listener = held.listen(16).unwrap();
    assert!(wait_for_port(port, Duration::from_secs(2)));
    drop(listener);
}

#[test]
fn jwks_server_serves_rotates_fails_and_counts() {
    let (old, new) = (TestKey::ec_p256(), TestKey::ed25519());
    let server = JwksServer::start(&jwks(&[&old]));
    let client = http_client();
    let get = |url: &str| {
        let resp = client.get(url).send().unwrap();
        (resp.status().as_u16(), resp.text().unwrap())
    };
    assert!(server.url().starts_with("http://127.0.0.1:"));

    let (status, body) = get(&server.url());
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["keys"][0]["kid"], old.kid.as_str());

    server.set_jwks(&jwks(&[&old, &new]));
    let doc: Value = serde_json::from_str(&get(&server.url()).1).unwrap();
    let kids: Vec<&str> = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, [old.kid.as_str(), new.kid.as_str()]);

    server.set_status(503);
    assert_eq!(get(&server.url()).0, 503);
    server.set_status(200);
    server.set_body(b"not json".to_vec());
    server.set_headers(&[("Cache-Control", "max-age=60")]);
    let resp = client.get(server.url()).send().unwrap();
    assert_eq!(resp.headers()["cache-control"], "max-age=60");
    assert_eq!(resp.text().unwrap(), "not json");

    let other = server.url().replace("/jwks.json", "/other");
    assert_eq!(get(&other).0, 404);
    assert_eq!(server.requests(), 4, "404s are not counted");
    assert!(server.wait_for_requests(4, Duration::from_millis(10)));

    server.set_delay(Duration::from_millis(300));
    let started = std::time::Instant::now();
    assert_eq!(get(&server.url()).0, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let port = server.port();
    drop(server);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still open"
    );
}

#[test]
fn mint_and_verify_with_every_key_kind() {
    for key in [TestKey::rsa(0), TestKey::ec_p256(), TestKey::ed25519()] {
        let claims = claims("https://idp.test", "auditgate", "user-1");
        let token = mint(key.alg(), &key, &claims);

        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(
            (header.alg, header.kid.as_deref()),
            (key.alg(), Some(key.kid.as_str()))
        );

        let mut validation = Validation::new(key.alg());
        validation.set_audience(&["auditgate"]);
        validation.set_issuer(&["https://idp.test"]);
        // by the public PEM
        let data = jsonwebtoken::decode::<Value>(&token, &key.decoding_key(), &validation)
            .unwrap_or_else(|e| panic!("{:?} via PEM: {e}", key.kind));
        assert_eq!(data.claims, claims);
        // by the JWK, as a gateway with a JWKS cache would
        let jwk: Jwk = serde_json::from_value(key.jwk()).unwrap();
        let by_jwk = DecodingKey::from_jwk(&jwk).unwrap();
        jsonwebtoken::decode::<Value>(&token, &by_jwk, &validation)
            .unwrap_or_else(|e| panic!("{:?} via JWK {}: {e}", key.kind, key.jwk()));

        // another key of the same kind does not verify it
        let other = match key.kind {
            KeyKind::Rsa => TestKey::rsa(1),
            KeyKind::EcP256 => TestKey::ec_p256(),
            KeyKind::Ed25519 => TestKey::ed25519(),
        };
        assert!(jsonwebtoken::decode::<Value>(&token, &other.decoding_key(), &validation).is_err());

        assert!(key
            .private_pem()
            .starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(key.public_pem().starts_with("-----BEGIN PUBLIC KEY-----\n"));
    }
}

#[test]
fn rsa_keys_are_cached_per_slot_and_sign_other_rsa_algs() {
    let (a, b) = (TestKey::rsa(0), TestKey::rsa(1));
    assert_eq!(a.public_pem(), TestKey::rsa(0).public_pem());
    assert_ne!(a.public_pem(), b.public_pem());
    assert_eq!((a.kid.as_str(), b.kid.as_str()), ("rsa-0", "rsa-1"));
    let jwk = a.jwk();
    assert_eq!(
        (jwk["kty"].as_str(), jwk["e"].as_str()),
        (Some("RSA"), Some("AQAB"))
    );
    assert_eq!(
        jwk["n"].as_str().unwrap().len(),
        342,
        "2048-bit modulus, base64url"
    );

    let token = mint(Algorithm::PS384, &a, &claims("i", "a", "s"));
    let mut validation = Validation::new(Algorithm::PS384);
    validation.set_audience(&["a"]);
    assert!(jsonwebtoken::decode::<Value>(&token, &a.decoding_key(), &validation).is_ok());
    let renamed = a.with_kid("other");
    assert_eq!(renamed.jwk()["kid"], "other");
}

#[test]
fn jwks_document_lists_every_key() {
    let (r, e, d) = (TestKey::rsa(0), TestKey::ec_p256(), TestKey::ed25519());
    let doc = keys::jwks(&[&r, &e, &d]);
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(doc).unwrap();
    for key in [&r, &e, &d] {
        assert!(set.find(&key.kid).is_some(), "{} missing", key.kid);
    }
}

#[test]
fn the_log_check_finds_tokens_and_not_base64_that_happens_to_hold_eyj() {
    let dir = tempfile::tempdir().unwrap();
    let key_line = r#"{"public_key":"auditgate/test-gw+3b1f040a+AYOXjVJfJlAB/QJ/bBPHCR+RsZ+KQhR7452EeyJV0+g8"}"#;
    assert!(crate::support::gateway::check_log_has_no_phi(key_line, dir.path()).is_ok());
    let token_line = "Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
    assert!(crate::support::gateway::check_log_has_no_phi(token_line, dir.path()).is_err());
}
