//! Signed checkpoints and proof bundles end to end: real traffic through the real gateway in
//! front of the real FHIR server, then the `keygen`, `verify --key`, `prove` and `verify-proof`
//! commands of the real binary, as an auditor would run them.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::gateway::{public_key_of, Gateway, GatewayOptions};
use crate::support::{http_client, FhirServer};

use crate::support::run_auditgate as auditgate;

/// The largest tree size any checkpoint of the journal covers.
fn covered(journal: &Path) -> u64 {
    auditgate::tlog::checkpoint::list_checkpoint_files(journal)
        .unwrap()
        .iter()
        .filter_map(|p| {
            auditgate::tlog::checkpoint::size_of_file_name(&p.file_name()?.to_string_lossy())
        })
        .max()
        .unwrap_or(0)
}

fn wait_until_covered(journal: &Path, records: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while covered(journal) < records {
        assert!(
            Instant::now() < deadline,
            "no checkpoint covers {records} records within 15 s (newest covers {})",
            covered(journal)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn records_are_proven_offline_against_signed_checkpoints() {
    let fhir = FhirServer::seeded();
    let gw = Gateway::start(GatewayOptions::new(format!("127.0.0.1:{}", fhir.port())));
    let client = http_client();
    let token = gw.token("dr-proof");
    for _ in 0..15 {
        let resp = client
            .get(gw.url("/fhir/Patient/example"))
            .bearer_auth(&token)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let records = gw.records().len() as u64;
    assert_eq!(
        records, 16,
        "the start's configuration record and the 15 reads"
    );
    wait_until_covered(&gw.journal, records);

    let journal = gw.journal.to_str().unwrap();
    let public = public_key_of(&gw.journal);
    let public = public.to_str().unwrap();

    // verify with the key: every checkpoint signed and matching.
    let (code, out, err) = auditgate(&["verify", "--journal", journal, "--key", public]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("signed checkpoints checked with auditgate/test-gw+"),
        "{out}"
    );

    // An inclusion proof for record 7, checked with nothing but the public key.
    let bundle = gw.dir.path().join("seq7.json");
    let (code, _, err) = auditgate(&[
        "prove",
        "--journal",
        journal,
        "7",
        "--out",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = auditgate(&["verify-proof", bundle.to_str().unwrap(), "--key", public]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("OK: record seq 7 is in the tree of"),
        "{out}"
    );

    // The bundle's record changed (the status an auditor relies on): exit 1.
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    let record = json["record"].as_str().unwrap().to_string();
    assert!(record.contains("\"status\":200"), "{record}");
    json["record"] = record
        .replacen("\"status\":200", "\"status\":404", 1)
        .into();
    let tampered = gw.dir.path().join("tampered.json");
    std::fs::write(&tampered, serde_json::to_vec(&json).unwrap()).unwrap();
    let (code, out, _) = auditgate(&["verify-proof", tampered.to_str().unwrap(), "--key", public]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED"), "{out}");

    // Another key (made with keygen) does not vouch for the bundle.
    let other = gw.dir.path().join("other.key");
    let (code, out, err) = auditgate(&[
        "keygen",
        "--out",
        other.to_str().unwrap(),
        "--name",
        "auditgate/test-gw",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&other).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let other_pub = format!("{}.pub", other.display());
    let (code, out, _) = auditgate(&[
        "verify-proof",
        bundle.to_str().unwrap(),
        "--key",
        &other_pub,
    ]);
    assert_eq!(code, 1, "{out}");
    // keygen never overwrites a key.
    let (code, _, err) = auditgate(&["keygen", "--out", other.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");

    // A consistency proof from the first checkpoint to the newest.
    let files = auditgate::tlog::checkpoint::list_checkpoint_files(&gw.journal).unwrap();
    let (first, last) = (files.first().unwrap(), files.last().unwrap());
    let consistency = gw.dir.path().join("consistency.json");
    let (code, _, err) = auditgate(&[
        "prove",
        "--journal",
        journal,
        "--consistency",
        first.to_str().unwrap(),
        last.to_str().unwrap(),
        "--out",
        consistency.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = auditgate(&[
        "verify-proof",
        consistency.to_str().unwrap(),
        "--key",
        public,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("extends the tree of"), "{out}");

    // A record no checkpoint covers yet cannot be proven (exit 2, says why).
    let (code, _, err) = auditgate(&["prove", "--journal", journal, "999"]);
    assert_eq!(code, 2);
    assert!(err.contains("no checkpoint covers seq 999"), "{err}");
}

#[test]
fn a_stopped_gateway_leaves_its_last_records_covered_and_its_restart_continues_the_tree() {
    let fhir = FhirServer::seeded();
    let mut gw = Gateway::start(GatewayOptions::new(format!("127.0.0.1:{}", fhir.port())));
    let client = http_client();
    let token = gw.token("dr-restart");
    let get = |gw: &Gateway| {
        let resp = client
            .get(gw.url("/fhir/Patient/example"))
            .bearer_auth(&token)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
    };
    for _ in 0..5 {
        get(&gw);
    }
    // kill -9: no final checkpoint; the restart signs the recovered head first.
    gw.kill9();
    gw.spawn();
    for _ in 0..5 {
        get(&gw);
    }
    wait_until_covered(&gw.journal, 10);
    let (code, out) = crate::support::gateway::verify_cli(&gw.journal, false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 newest records not yet covered"), "{out}");
}
