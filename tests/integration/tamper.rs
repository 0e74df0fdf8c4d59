//! Tampering with a journal the real gateway wrote: `auditgate verify` exits 1 and names the
//! segment and line each time; the untouched journal exits 0.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::gateway::{verify_cli, Gateway, GatewayOptions};
use crate::support::{http_client, FhirServer};

fn segments(dir: &Path) -> Vec<PathBuf> {
    auditgate::journal::list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

fn copy_journal(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for p in segments(from) {
        std::fs::copy(&p, to.path().join(p.file_name().unwrap())).unwrap();
    }
    to
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn write_lines(p: &Path, lines: &[String]) {
    std::fs::write(
        p,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Run verify --json and return (exit code, findings).
fn findings(dir: &Path) -> (i32, Vec<Value>) {
    let (code, out) = verify_cli(dir, true);
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    (code, report["findings"].as_array().unwrap().clone())
}

#[test]
fn verify_names_every_kind_of_tampering() {
    let fhir = FhirServer::seeded();
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.journal_toml = "segment_max_bytes = 4096".into();
    let mut gw = Gateway::start(opts);
    let token = gw.token("dr.tamper");
    let client = http_client();
    for i in 0..40 {
        let path = if i % 2 == 0 {
            "/fhir/Patient/example"
        } else {
            "/fhir/Observation?patient=example"
        };
        assert_eq!(
            client
                .get(gw.url(path))
                .bearer_auth(&token)
                .send()
                .unwrap()
                .status(),
            200
        );
    }
    gw.kill9();
    let original = segments(&gw.journal);
    assert!(
        original.len() >= 4,
        "need several sealed segments, got {}",
        original.len()
    );
    let (code, out) = verify_cli(&gw.journal, false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK"), "{out}");

    // One changed byte in a middle record: the next record's prev no longer matches.
    let t = copy_journal(&gw.journal);
    let seg = &segments(t.path())[1];
    let mut l = lines(seg);
    l[1] = l[1].replacen("dr.tamper", "dr.tampeR", 1);
    write_lines(seg, &l);
    let (code, f) = findings(t.path());
    assert_eq!(code, 1);
    assert!(
        f.iter()
            .any(|f| f["kind"] == "chain_break" && f["segment"] == name(seg) && f["line"] == 3),
        "{f:?}"
    );

    // A deleted line.
    let t = copy_journal(&gw.journal);
    let seg = &segments(t.path())[2];
    let mut l = lines(seg);
    l.remove(1);
    write_lines(seg, &l);
    let (code, f) = findings(t.path());
    assert_eq!(code, 1);
    assert!(
        f.iter()
            .any(|f| f["kind"] == "seq_gap" && f["segment"] == name(seg) && f["line"] == 2),
        "{f:?}"
    );

    // Two lines swapped.
    let t = copy_journal(&gw.journal);
    let seg = &segments(t.path())[0];
    let mut l = lines(seg);
    l.swap(1, 2);
    write_lines(seg, &l);
    let (code, f) = findings(t.path());
    assert_eq!(code, 1);
    assert!(
        f.iter()
            .any(|f| f["segment"] == name(seg) && f["line"] == 2),
        "{f:?}"
    );

    // A truncated segment.
    let t = copy_journal(&gw.journal);
    let seg = &segments(t.path())[1];
    let bytes = std::fs::read(seg).unwrap();
    std::fs::write(seg, &bytes[..bytes.len() / 2]).unwrap();
    let (code, f) = findings(t.path());
    assert_eq!(code, 1);
    assert!(f.iter().any(|f| f["segment"] == name(seg)), "{f:?}");

    // A middle segment removed.
    let t = copy_journal(&gw.journal);
    let segs = segments(t.path());
    std::fs::remove_file(&segs[1]).unwrap();
    let (code, f) = findings(t.path());
    assert_eq!(code, 1);
    assert!(
        f.iter()
            .any(|f| f["kind"] == "segment_gap" && f["segment"] == name(&segs[2])),
        "{f:?}"
    );

    // The text report names the place too.
    let (_, text) = verify_cli(t.path(), false);
    assert!(
        text.contains("FAILED") && text.contains(&name(&segs[2])),
        "{text}"
    );
}
