//! The gateway's own configuration in the trail (ONC 170.315(d)(3)): the start, an applied
//! reload, a rejected reload and a JWKS key rotation each leave a record in the chain, and
//! `auditgate report changes` and `export --format fhir` show them.

use std::time::{Duration, Instant};

use auditgate::record::{ConfigChange, Record, Who};
use jsonwebtoken::Algorithm;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::support::gateway::{
    claims_for, public_key_of, report_json, Gateway, GatewayOptions, ISS_JWKS,
};
use crate::support::keys::jwks;
use crate::support::{http_client, mint, run_auditgate, FhirServer, TestKey};

fn changes(gw: &Gateway) -> Vec<(Record, ConfigChange)> {
    gw.records()
        .into_iter()
        .filter_map(|r| {
            let change = r.event.config_change.clone()?;
            assert_eq!(r.event.who, Who::Gateway);
            assert_eq!(r.event.rule, "gateway.config");
            assert!(r.event.patients.is_empty());
            Some((r, change))
        })
        .collect()
}

fn wait_changes(gw: &Gateway, n: usize) -> Vec<(Record, ConfigChange)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = changes(gw);
        if found.len() >= n {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{} configuration records, wanted {n}:\n{}",
            found.len(),
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sha256_file(path: &std::path::Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn starts_reloads_and_key_rotations_are_recorded_in_the_chain_and_reported() {
    let fhir = FhirServer::seeded();
    let gw = Gateway::start(GatewayOptions::new(format!("127.0.0.1:{}", fhir.port())));
    let original = std::fs::read_to_string(&gw.config_path).unwrap();

    // 1. The start: the configuration file's hash, the rule file's, every key in effect.
    let found = wait_changes(&gw, 1);
    let (first, start) = &found[0];
    assert_eq!(
        first.header.seq, 1,
        "the start is the process's first record"
    );
    assert_eq!(start.cause, "start");
    assert!(start.applied);
    assert_eq!(
        start.config_sha256.as_deref(),
        Some(sha256_file(&gw.config_path).as_str())
    );
    let rules = crate::support::repo_root().join("rules/fhir-r4.toml");
    assert_eq!(
        start.rules,
        [format!(
            "{} sha256:{}",
            rules.display(),
            sha256_file(&rules)
        )]
    );
    // Four issuers: a PEM RSA key, a PEM EC key, an HMAC secret, a JWKS key.
    assert_eq!(start.keys.len(), 4, "{:?}", start.keys);
    assert!(start
        .keys
        .iter()
        .any(|k| k.starts_with(ISS_JWKS) && k.contains("kid=jwks-1")));
    let hmac = start
        .keys
        .iter()
        .find(|k| k.contains("hmac-sha256:"))
        .unwrap();
    assert_eq!(
        hmac.rsplit(':').next().unwrap().len(),
        16,
        "an HMAC secret's hash is cut"
    );
    assert!(start
        .checkpoint_key
        .as_deref()
        .unwrap()
        .starts_with("auditgate/test-gw+"));

    // 2. An applied reload that changes the identity section and a restart-only one.
    let changed = original
        .replace("jwks_min_refetch_secs = 1", "jwks_min_refetch_secs = 2")
        .replace("heartbeat_secs = 2", "heartbeat_secs = 3");
    assert_ne!(changed, original);
    std::fs::write(&gw.config_path, &changed).unwrap();
    gw.signal("HUP");
    let found = wait_changes(&gw, 2);
    let reload = &found[1].1;
    assert_eq!(
        (
            reload.cause.as_str(),
            reload.applied,
            reload.changed.as_slice(),
            reload.not_applied.as_slice()
        ),
        (
            "reload",
            true,
            ["identity".to_string()].as_slice(),
            ["checkpoint".to_string()].as_slice()
        )
    );
    assert_eq!(
        reload.config_sha256.as_deref(),
        Some(sha256_file(&gw.config_path).as_str())
    );
    assert!(reload.keys_added.is_empty() && reload.keys_removed.is_empty());

    // 3. A rejected reload: the error, and the configuration still in effect.
    std::fs::write(
        &gw.config_path,
        format!("{changed}\n[server_typo]\nx = 1\n"),
    )
    .unwrap();
    gw.signal("HUP");
    let found = wait_changes(&gw, 3);
    let rejected = &found[2].1;
    assert_eq!(
        (rejected.cause.as_str(), rejected.applied),
        ("reload", false)
    );
    assert!(
        rejected.error.as_deref().unwrap().contains("server_typo"),
        "{rejected:?}"
    );
    std::fs::write(&gw.config_path, &changed).unwrap();

    // 4. The IdP rotates its keys: a token with the new kid makes the gateway fetch the JWKS,
    // and the key change is recorded (the new key added, the old one removed).
    let rotated = TestKey::rsa(2).with_kid("jwks-2");
    gw.jwks.set_jwks(&jwks(&[&rotated]));
    let token = mint(
        Algorithm::RS256,
        &rotated,
        &claims_for(ISS_JWKS, "u-rotated"),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = http_client()
            .get(gw.url("/fhir/Patient/example"))
            .bearer_auth(&token)
            .send()
            .unwrap()
            .status()
            .as_u16();
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated key was never accepted"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let found = wait_changes(&gw, 4);
    let keys = &found[3].1;
    assert_eq!(keys.cause, "keys");
    assert_eq!(keys.keys_added.len(), 1, "{keys:?}");
    assert!(keys.keys_added[0].contains("kid=jwks-2"));
    assert_eq!(keys.keys_removed.len(), 1);
    assert!(keys.keys_removed[0].contains("kid=jwks-1"));

    // The report lists the four, proven; the FHIR export makes them DICOM events.
    let journal = gw.journal.display().to_string();
    let key = public_key_of(&gw.journal).display().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let report: Value = loop {
        let (code, report, err) = report_json(&["changes"], &gw.journal);
        assert_eq!(code, 0, "{err}");
        if report["sections"][0]["rows"].as_array().unwrap().len() == 4 {
            break report;
        }
        // The newest records wait for the next signed checkpoint.
        assert!(Instant::now() < deadline, "{report:#}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let rows = report["sections"][0]["rows"].as_array().unwrap();
    let cells: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["cause"].as_str().unwrap(),
                r["applied"].as_str().unwrap(),
                r["changed"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        cells,
        [
            ("start", "yes", ""),
            ("reload", "yes", "identity"),
            ("reload", "no", ""),
            ("keys", "yes", "")
        ]
    );
    let (code, out, err) = run_auditgate(&[
        "export",
        "--format",
        "fhir",
        "--journal",
        &journal,
        "--key",
        &key,
        "--rule",
        "gateway.config",
    ]);
    assert_eq!(code, 0, "{err}");
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let codes: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["type"]["code"].as_str().unwrap(),
                e["subtype"][0]["code"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        codes,
        [
            ("110100", "110120", "0"),
            ("110113", "110129", "0"),
            ("110113", "110129", "4"),
            ("110113", "110129", "0"),
        ]
    );
}
