//! `auditgate query` against a plain oracle (the tests' own reading of the journal lines):
//! every filter, several nodes, a directory archive mixing zstd and gzip segments with and
//! without columnar copies, a local journal with sealed and open segments; sorting, limits and
//! the three formats; proofs re-checked offline by `verify-report`, and refused when altered;
//! tampered copies reported and answered from the segments; a removed segment refused.

use std::path::{Path, PathBuf};
use std::process::Command;

use auditgate::record::{Record, Who};
use auditgate::tlog::checkpoint::{write_key_pair, CheckpointSigner};

use crate::support::fixtures::{rich_event, synthetic_trail, Stored};

const PREFIX: &str = "q";
/// 2026-11-01T00:00:00Z.
const DAY0_MICROS: i64 = 1_793_491_200_000_000;
const DAY_MICROS: i64 = 86_400_000_000;

struct Trail {
    _root: tempfile::TempDir,
    archive: PathBuf,
    journal: PathBuf,
    keys: Vec<PathBuf>,
    /// Every record of both nodes.
    records: Vec<Record>,
}

/// Node n1: 2400 records over three days, in the archive (zstd and gzip, with and without
/// copies) and in its journal (sealed with and without a copy, and the open segment); node n2:
/// 1200 records, archived with copies.
fn trail() -> Trail {
    let root = tempfile::tempdir().unwrap();
    let archive = root.path().join("archive");
    let journal = root.path().join("journal-n1");
    let options = auditgate::columnar::WriteOptions {
        row_group_records: 128,
        line_page_records: 16,
        ..Default::default()
    };
    let mut records = Vec::new();
    let mut keys = Vec::new();
    for (node, n, segments) in [
        (
            "n1",
            2400usize,
            vec![
                (400, Stored::ZstdWithCopy),
                (400, Stored::GzipWithCopy),
                (400, Stored::ZstdOnly),
                (400, Stored::ZstdWithCopy),
                (400, Stored::LocalWithCopy),
                (200, Stored::LocalOnly),
                (200, Stored::LocalOpen),
            ],
        ),
        ("n2", 1200, vec![(300, Stored::ZstdWithCopy); 4]),
    ] {
        let key = root.path().join(format!("{node}.key"));
        write_key_pair(&key, &format!("auditgate/{node}")).unwrap();
        let signer = CheckpointSigner::load(&key, false, "").unwrap();
        let events: Vec<_> = (0..n)
            .map(|i| {
                let mut e = rich_event(i + if node == "n2" { 7 } else { 0 });
                e.net.gateway.node = node.into();
                (e, DAY0_MICROS + (i as i64) * 3 * DAY_MICROS / n as i64)
            })
            .collect();
        let node_journal = if node == "n1" {
            journal.clone()
        } else {
            root.path().join("journal-n2-unused")
        };
        let lines = synthetic_trail(
            &archive,
            PREFIX,
            &node_journal,
            node,
            &signer,
            &events,
            &segments,
            &options,
        );
        records.extend(
            lines
                .iter()
                .map(|l| serde_json::from_slice::<Record>(l).unwrap()),
        );
        keys.push(auditgate::tlog::checkpoint::public_key_path(&key));
    }
    Trail {
        _root: root,
        archive,
        journal,
        keys,
        records,
    }
}

impl Trail {
    /// The source and key arguments of every query.
    fn base(&self) -> Vec<String> {
        let mut args = vec![
            "--archive".to_string(),
            self.archive.display().to_string(),
            "--prefix".into(),
            PREFIX.into(),
            "--journal".into(),
            self.journal.display().to_string(),
        ];
        for key in &self.keys {
            args.push("--key".into());
            args.push(key.display().to_string());
        }
        args
    }
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

fn auditgate(args: &[String]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(args)
        .output()
        .unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `query --format jsonl` with the trail's sources and `args`: (node, seq) of each line.
fn query(trail: &Trail, args: &[&str]) -> (Output, Vec<(String, u64)>) {
    let mut all = vec!["query".to_string()];
    all.extend(trail.base());
    all.extend(["--format".into(), "jsonl".into()]);
    all.extend(args.iter().map(|a| a.to_string()));
    let out = auditgate(&all);
    let ids = out
        .stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let r: Record = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            (r.header.node, r.header.seq)
        })
        .collect();
    (out, ids)
}

fn micros(r: &Record) -> i64 {
    auditgate::columnar::rows::micros_of(&r.header.ts).unwrap()
}

/// The oracle's answer in the query's default order (time, node, seq).
fn oracle(trail: &Trail, keep: impl Fn(&Record) -> bool) -> Vec<(String, u64)> {
    let mut hits: Vec<&Record> = trail.records.iter().filter(|r| keep(r)).collect();
    hits.sort_by_key(|r| (micros(r), r.header.node.clone(), r.header.seq));
    hits.iter()
        .map(|r| (r.header.node.clone(), r.header.seq))
        .collect()
}

fn actor(r: &Record) -> Option<&auditgate::record::Actor> {
    match &r.event.who {
        Who::Authenticated(a) => Some(a),
        Who::Unauthenticated { .. } | Who::Gateway => None,
    }
}

#[test]
fn every_filter_equals_the_oracle_over_two_nodes_a_mixed_archive_and_a_journal() {
    let trail = trail();
    let day1 = "2026-11-02";
    let d1 = DAY0_MICROS + DAY_MICROS;
    type Case<'a> = (Vec<&'a str>, Box<dyn Fn(&Record) -> bool>);
    let cases: Vec<Case> = vec![
        (vec![], Box::new(|_| true)),
        (
            vec!["--patient", "p3"],
            Box::new(|r| r.event.patients.iter().any(|p| p.id == "p3")),
        ),
        (
            vec!["--patient", "p3", "--patient", "p10"],
            Box::new(|r| {
                r.event
                    .patients
                    .iter()
                    .any(|p| p.id == "p3" || p.id == "p10")
            }),
        ),
        (
            vec!["--user", "user-4"],
            Box::new(|r| actor(r).is_some_and(|a| a.user == "user-4")),
        ),
        (
            vec!["--issuer", "https://idp.example", "--client", "app-1"],
            Box::new(|r| actor(r).is_some_and(|a| a.client_id.as_deref() == Some("app-1"))),
        ),
        (
            vec!["--action", "D", "--action", "U"],
            Box::new(|r| matches!(r.event.action.as_str(), "D" | "U")),
        ),
        (
            vec!["--interaction", "search", "--resource-type", "Encounter"],
            Box::new(|r| {
                r.event.interaction.as_str() == "search"
                    && r.event.resource_type.as_deref() == Some("Encounter")
            }),
        ),
        (
            vec!["--rule", "rule-2"],
            Box::new(|r| r.event.rule == "rule-2"),
        ),
        (
            vec!["--status", "4xx"],
            Box::new(|r| {
                r.event
                    .outcome
                    .as_ref()
                    .is_some_and(|o| o.status / 100 == 4)
            }),
        ),
        (
            vec!["--status", "503"],
            Box::new(|r| r.event.outcome.as_ref().is_some_and(|o| o.status == 503)),
        ),
        (
            vec!["--ip", "10.0.1.0/24"],
            Box::new(|r| r.event.net.client_ip.starts_with("10.0.1.")),
        ),
        (
            vec!["--ip", "10.0.2.17"],
            Box::new(|r| r.event.net.client_ip == "10.0.2.17"),
        ),
        (
            vec!["--device", "dev-2"],
            Box::new(|r| r.event.net.device_id.as_deref() == Some("dev-2")),
        ),
        (
            vec!["--country", "SE"],
            Box::new(|r| {
                r.event
                    .net
                    .geo
                    .clone()
                    .flatten()
                    .and_then(|g| g.country)
                    .as_deref()
                    == Some("SE")
            }),
        ),
        (
            vec!["--break-glass"],
            Box::new(|r| actor(r).is_some_and(|a| a.break_glass)),
        ),
        (
            vec!["--purpose", "TREAT"],
            Box::new(|r| actor(r).is_some_and(|a| a.purpose_of_use.iter().any(|p| p == "TREAT"))),
        ),
        (
            vec!["--since", day1, "--until", "2026-11-02T12:00:00Z"],
            Box::new(move |r| (d1..d1 + DAY_MICROS / 2).contains(&micros(r))),
        ),
        (
            vec!["--user", "user-1", "--since", day1, "--node", "n1"],
            Box::new(move |r| {
                actor(r).is_some_and(|a| a.user == "user-1")
                    && micros(r) >= d1
                    && r.header.node == "n1"
            }),
        ),
    ];
    for (args, keep) in cases {
        let (out, got) = query(&trail, &args);
        assert_eq!(out.code, 0, "{args:?}: {}{}", out.stdout, out.stderr);
        let want = oracle(&trail, keep);
        assert_eq!(got, want, "{args:?}\n{}", out.stderr);
        // Every part was verified and says what it read.
        assert!(out.stderr.contains("verified:"), "{args:?}: {}", out.stderr);
    }
    // Copies were used, and row groups skipped on bloom filters for a point lookup.
    let (out, got) = query(&trail, &["--ip", "10.0.2.17", "--node", "n2"]);
    assert_eq!(got.len(), 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("4 segments from columnar copies"),
        "{}",
        out.stderr
    );
    let read_of = |text: &str| -> (u64, u64) {
        let at = text.find(" of ").unwrap();
        let before: u64 = text[..at].rsplit(' ').next().unwrap().parse().unwrap();
        let after: u64 = text[at + 4..].split(' ').next().unwrap().parse().unwrap();
        (before, after)
    };
    let (read, total) = read_of(out.stderr.split("; ").nth(1).unwrap());
    // Four segments of 300 records in row groups of 128: 3 each.
    assert_eq!(total, 12, "{}", out.stderr);
    assert!(
        read < total / 2,
        "bloom filters skip most row groups: {}",
        out.stderr
    );
}

#[test]
fn sorting_limits_and_formats() {
    let trail = trail();
    // Largest seq first across both nodes, five of them.
    let (out, got) = query(
        &trail,
        &["--sort", "-seq", "--limit", "5", "--user", "user-3"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut want: Vec<&Record> = trail
        .records
        .iter()
        .filter(|r| actor(r).is_some_and(|a| a.user == "user-3"))
        .collect();
    want.sort_by_key(|r| {
        (
            std::cmp::Reverse(r.header.seq),
            micros(r),
            r.header.node.clone(),
        )
    });
    let want: Vec<(String, u64)> = want
        .iter()
        .take(5)
        .map(|r| (r.header.node.clone(), r.header.seq))
        .collect();
    assert_eq!(got, want);
    assert!(out.stderr.contains("5 of "), "{}", out.stderr);

    let mut args = vec!["query".to_string()];
    args.extend(trail.base());
    args.extend(
        [
            "--patient",
            "p5",
            "--format",
            "csv",
            "--columns",
            "seq,node,patient_ids,status",
        ]
        .map(String::from),
    );
    let csv = auditgate(&args);
    assert_eq!(csv.code, 0, "{}", csv.stderr);
    let mut lines = csv.stdout.lines();
    assert_eq!(lines.next(), Some("seq,node,patient_ids,status"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(
        rows.len(),
        oracle(&trail, |r| r.event.patients.iter().any(|p| p.id == "p5")).len()
    );
    assert!(rows.iter().all(|r| r.contains("p5")), "{rows:?}");

    let mut args = vec!["query".to_string()];
    args.extend(trail.base());
    args.extend(["--patient", "p5", "--limit", "3"].map(String::from));
    let table = auditgate(&args);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(table.stdout.contains("| ts "), "{}", table.stdout);
    assert!(table.stdout.contains("verified:"), "{}", table.stdout);

    // Unknown columns and sort keys are refused before anything is read.
    let (bad, _) = query(&trail, &["--sort", "nope"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}

#[test]
fn a_proof_rechecks_offline_and_an_altered_proof_does_not() {
    let trail = trail();
    let dir = tempfile::tempdir().unwrap();
    let proof = dir.path().join("proof.json");
    let (out, got) = query(
        &trail,
        &["--patient", "p7", "--proof", proof.to_str().unwrap()],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!got.is_empty());
    let verify = |file: &Path, keys: &[PathBuf]| {
        let mut args = vec!["verify-report".to_string(), file.display().to_string()];
        for k in keys {
            args.push("--key".into());
            args.push(k.display().to_string());
        }
        auditgate(&args)
    };
    let ok = verify(&proof, &trail.keys);
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    assert_eq!(ok.stdout.matches(": OK:").count(), 2, "{}", ok.stdout);

    let original: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&proof).unwrap()).unwrap();
    let altered = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut v = original.clone();
        change(&mut v);
        let path = dir.path().join("altered.json");
        std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
        let out = verify(&path, &trail.keys);
        assert_eq!(out.code, 1, "{}", out.stdout);
        out.stdout
    };
    // A returned record changed.
    altered(&|v| {
        let r = v["nodes"][0]["records"][0]["record"]
            .as_str()
            .unwrap()
            .to_string();
        v["nodes"][0]["records"][0]["record"] = r.replacen("\"p7\"", "\"p8\"", 1).into();
    });
    // The range claimed wider than what was scanned.
    altered(&|v| {
        let last = v["nodes"][0]["last"].as_u64().unwrap();
        v["nodes"][0]["last"] = (last - 1).into();
    });
    // Another node's checkpoint.
    altered(&|v| {
        let other = v["nodes"][1]["checkpoint"].clone();
        v["nodes"][0]["checkpoint"] = other;
    });
    // A block of the scanned range changed.
    altered(&|v| {
        let first = v["nodes"][0]["scanned"][0].as_str().unwrap().to_string();
        let mut bytes = first.into_bytes();
        bytes[0] = if bytes[0] == b'A' { b'B' } else { b'A' };
        v["nodes"][0]["scanned"][0] = String::from_utf8(bytes).unwrap().into();
    });
    // With another key.
    let other = dir.path().join("other.key");
    write_key_pair(&other, "auditgate/n1").unwrap();
    let wrong = verify(
        &proof,
        &[
            auditgate::tlog::checkpoint::public_key_path(&other),
            trail.keys[1].clone(),
        ],
    );
    assert_eq!(wrong.code, 1, "{}", wrong.stdout);
}

#[test]
fn tampered_copies_are_reported_and_the_answer_comes_from_the_segments() {
    let trail = trail();
    let want = oracle(&trail, |r| r.event.patients.iter().any(|p| p.id == "p3"));
    let copies: Vec<PathBuf> = walk(&trail.archive.join(PREFIX).join("v1/columnar/node=n2"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    assert_eq!(copies.len(), 4);
    let original = std::fs::read(&copies[1]).unwrap();

    // One byte of a page changed.
    let mut flipped = original.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x55;
    std::fs::write(&copies[1], &flipped).unwrap();
    let (out, got) = query(&trail, &["--patient", "p3"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(got, want, "answered from the segment");
    assert!(out.stderr.contains("did not check out"), "{}", out.stderr);

    // Another segment's copy in its place.
    std::fs::copy(&copies[2], &copies[1]).unwrap();
    let (out, got) = query(&trail, &["--patient", "p3"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(got, want);

    // The copy removed, its seal left.
    std::fs::remove_file(&copies[1]).unwrap();
    let (out, got) = query(&trail, &["--patient", "p3"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(got, want);
    assert!(out.stderr.contains("without its pair"), "{}", out.stderr);
    std::fs::write(&copies[1], &original).unwrap();
    let (out, _) = query(&trail, &["--patient", "p3"]);
    assert_eq!(out.code, 0, "restored: {}", out.stderr);

    // A segment removed from the window: refused, not skipped.
    let segments: Vec<PathBuf> = walk(&trail.archive.join(PREFIX).join("v1/node=n2"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".jsonl.zst"))
        .collect();
    let removed = segments
        .iter()
        .find(|p| p.to_string_lossy().contains("seg-00000000000000000301-"))
        .unwrap();
    let kept = std::fs::read(removed).unwrap();
    std::fs::remove_file(removed).unwrap();
    let (out, got) = query(&trail, &["--patient", "p3"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(got.is_empty());
    assert!(out.stdout.contains("REFUSED"), "{}", out.stdout);
    assert!(
        out.stdout.contains("records 301..600 are missing"),
        "{}",
        out.stdout
    );
    std::fs::write(removed, kept).unwrap();
}

#[test]
fn without_a_key_the_answer_is_refused_unless_unverified_is_asked_for() {
    let trail = trail();
    let mut args = vec![
        "query".to_string(),
        "--archive".into(),
        trail.archive.display().to_string(),
        "--prefix".into(),
        PREFIX.into(),
        "--patient".into(),
        "p3".into(),
    ];
    let refused = auditgate(&args);
    assert_eq!(refused.code, 1, "{}{}", refused.stdout, refused.stderr);
    assert!(refused.stdout.contains("REFUSED"), "{}", refused.stdout);
    args.push("--no-verify".into());
    let unverified = auditgate(&args);
    assert_eq!(unverified.code, 0, "{}", unverified.stderr);
    assert!(
        unverified.stdout.contains("UNVERIFIED"),
        "{}",
        unverified.stdout
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}
