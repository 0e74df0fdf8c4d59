//! The columnar copy of the trail, end to end: the real gateway writes a Parquet copy and a
//! signed seal beside each sealed segment and ships them with it (S3 with Object Lock, and a
//! directory archive); `verify` checks every row against its journal line and finds each
//! tamper of a copy or a seal; `backfill` makes the copies an archive written without them
//! lacks, once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use auditgate::archive::{ArchiveConfig, ArchiveKind, ArchiveStore, S3Store};
use auditgate::columnar::local::{parquet_path, seal_path};
use auditgate::journal::shipped::ShipState;
use auditgate::journal::SegmentName;
use serde_json::Value;

use crate::support::gateway::{public_key_of, Gateway, GatewayOptions};
use crate::support::s3::{aws_env, S3Server, REGION};
use crate::support::{http_client, FhirServer};

const PREFIX: &str = "col";

fn traffic(gw: &Gateway, n: usize) {
    let client = http_client();
    let token = gw.token("dr-columnar");
    for i in 0..n {
        let path = if i % 2 == 0 {
            "/fhir/Patient/example".to_string()
        } else {
            "/fhir/Observation?patient=example".to_string()
        };
        let resp = client
            .get(gw.url(&path))
            .bearer_auth(&token)
            .send()
            .unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
    }
}

pub(crate) fn sealed(journal: &Path) -> Vec<(u64, u64)> {
    crate::support::fixtures::sealed_segments(journal)
}

/// Wait until every segment sealed now is shipped, and its columnar copy too (made at idle
/// priority, shipped behind it) when copies are on; returns them.
pub(crate) fn wait_until_shipped(gw: &Gateway) -> Vec<(u64, u64)> {
    let segments = sealed(&gw.journal);
    let last = segments.last().expect("traffic sealed a segment").1;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = ShipState::read(&gw.journal)
            .ok()
            .flatten()
            .unwrap_or_default();
        if state.segments_through_seq >= last && state.columnar_through() >= last {
            return segments;
        }
        assert!(
            Instant::now() < deadline,
            "not shipped in 60 s:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `auditgate verify --json` with `args`; (exit code, report).
fn verify(args: &[&str], env: &[(String, String)]) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .arg("verify")
        .args(args)
        .arg("--json")
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

/// Every finding kind of a report (journal or archive).
fn kinds(report: &Value) -> Vec<String> {
    let mut all = Vec::new();
    let mut collect = |list: &Value| {
        for f in list.as_array().into_iter().flatten() {
            all.push(f["kind"].as_str().unwrap_or_default().to_string());
        }
    };
    collect(&report["findings"]);
    for node in report["nodes"].as_array().into_iter().flatten() {
        collect(&node["findings"]);
    }
    all
}

/// A `query --format jsonl` that answered (exit 0): the seqs of its records, and its summary.
fn answered_seqs(out: &std::process::Output) -> (Vec<u64>, String) {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let seqs = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<auditgate::record::Record>(l)
                .unwrap()
                .header
                .seq
        })
        .collect();
    (seqs, stderr)
}

fn dir_archive_gateway(fhir: &FhirServer, archive: &Path, columnar: bool) -> Gateway {
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.journal_toml = "segment_max_bytes = 4096".into();
    opts.extra_toml = format!(
        "[archive]\nkind = \"dir\"\ndir = \"{}\"\nprefix = \"{PREFIX}\"\npoll_interval_secs = 1\n\
         [columnar]\nenabled = {columnar}\nrow_group_records = 256\n",
        archive.display()
    );
    Gateway::start(opts)
}

fn private_key_of(journal: &Path) -> PathBuf {
    let mut name = journal.as_os_str().to_owned();
    name.push(".checkpoint.key");
    PathBuf::from(name)
}

fn dir_verify(archive: &Path, journal: &Path) -> (i32, Value) {
    verify(
        &[
            "--archive",
            archive.to_str().unwrap(),
            "--prefix",
            PREFIX,
            "--key",
            public_key_of(journal).to_str().unwrap(),
        ],
        &[],
    )
}

/// The archived copy of segment (first, last) in a directory archive.
fn archived_copy(archive: &Path, first: u64, last: u64) -> PathBuf {
    let name = format!("seg-{first:020}-{last:020}.parquet");
    let root = archive.join(PREFIX).join("v1/columnar/node=test-gw");
    for day in std::fs::read_dir(&root).unwrap() {
        let path = day.unwrap().path().join(&name);
        if path.exists() {
            return path;
        }
    }
    panic!("{name} not under {}", root.display());
}

fn archived_seal(archive: &Path, first: u64, last: u64) -> PathBuf {
    archive.join(PREFIX).join(format!(
        "v1/node=test-gw/seals/seg-{first:020}-{last:020}.seal"
    ))
}

#[test]
fn each_sealed_segment_ships_with_a_locked_columnar_copy_and_seal_that_verify_checks() {
    for (k, v) in aws_env() {
        std::env::set_var(k, v);
    }
    let fhir = FhirServer::seeded();
    let s3 = S3Server::start();
    s3.create_locked_bucket("columnar");
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.journal_toml = "segment_max_bytes = 4096".into();
    opts.extra_toml = format!(
        "[archive]\nkind = \"s3\"\nbucket = \"columnar\"\nprefix = \"{PREFIX}\"\nregion = \"{REGION}\"\n\
         endpoint_url = \"{}\"\nforce_path_style = true\nretention_days = 1\n\
         allow_short_retention = true\npoll_interval_secs = 1\nretry_max_secs = 2\n",
        s3.endpoint()
    );
    opts.env = aws_env();
    let gw = Gateway::start(opts);
    traffic(&gw, 30);
    let segments = wait_until_shipped(&gw);
    assert!(segments.len() >= 3, "{segments:?}");

    // Beside each local sealed segment: its copy and seal.
    for (first, last) in &segments {
        assert!(parquet_path(&gw.journal, *first, *last).exists());
        assert!(seal_path(&gw.journal, *first, *last).exists());
    }
    // In the archive: each under its layout key, locked in COMPLIANCE mode.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(S3Store::connect(&ArchiveConfig {
        kind: ArchiveKind::S3,
        bucket: "columnar".into(),
        prefix: PREFIX.into(),
        region: Some(REGION.into()),
        endpoint_url: Some(s3.endpoint()),
        force_path_style: true,
        ..ArchiveConfig::default()
    }));
    let keys: Vec<String> = rt
        .block_on(store.list_versions(&format!("{PREFIX}/v1/")))
        .unwrap()
        .into_iter()
        .map(|v| v.key)
        .collect();
    for (first, last) in &segments {
        let copy = keys
            .iter()
            .find(|k| {
                k.starts_with(&format!("{PREFIX}/v1/columnar/node=test-gw/dt="))
                    && k.ends_with(&format!("seg-{first:020}-{last:020}.parquet"))
            })
            .unwrap_or_else(|| panic!("no copy of {first}-{last}: {keys:?}"));
        let seal = format!("{PREFIX}/v1/node=test-gw/seals/seg-{first:020}-{last:020}.seal");
        assert!(keys.contains(&seal), "{seal}: {keys:?}");
        for key in [copy, &seal] {
            let info = rt.block_on(store.head(key)).unwrap().unwrap();
            assert_eq!(info.lock_mode.as_deref(), Some("COMPLIANCE"), "{key}");
            // The archived bytes are the local ones.
            let local = if key.ends_with(".seal") {
                seal_path(&gw.journal, *first, *last)
            } else {
                parquet_path(&gw.journal, *first, *last)
            };
            assert_eq!(
                rt.block_on(store.get(key)).unwrap(),
                std::fs::read(local).unwrap()
            );
        }
    }
    let metrics = gw.admin_get("/metrics").1;
    assert!(
        crate::support::gateway::metric_value(
            &metrics,
            "auditgate_columnar_copies_total{result=\"written\"}"
        )
        .unwrap()
            >= segments.len() as f64,
        "{metrics}"
    );

    // verify: every copy checked row by row, nothing found.
    let (code, report) = verify(
        &[
            "--archive",
            &format!("s3://columnar/{PREFIX}"),
            "--endpoint-url",
            &s3.endpoint(),
            "--force-path-style",
            "--region",
            REGION,
            "--min-retention-days",
            "1",
            "--key",
            public_key_of(&gw.journal).to_str().unwrap(),
        ],
        &aws_env(),
    );
    assert_eq!(code, 0, "{report:#}");
    let node = &report["nodes"][0];
    assert!(
        node["columnar_copies"].as_u64().unwrap() >= segments.len() as u64,
        "{report:#}"
    );
    assert_eq!(node["segments_without_columnar"], 0, "{report:#}");

    // The auditor's question over the S3 archive and the local journal together: the
    // patient's records, every one of them, proven; the proof re-checks offline.
    let proof = gw.dir.path().join("proof.json");
    let out = Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(["query", "--archive", &format!("s3://columnar/{PREFIX}")])
        .args([
            "--endpoint-url",
            &s3.endpoint(),
            "--force-path-style",
            "--region",
            REGION,
        ])
        .arg("--journal")
        .arg(&gw.journal)
        .arg("--key")
        .arg(public_key_of(&gw.journal))
        .args(["--patient", "example", "--format", "jsonl", "--proof"])
        .arg(&proof)
        .envs(aws_env())
        .output()
        .unwrap();
    let (got, stderr) = answered_seqs(&out);
    let want: Vec<u64> = gw
        .records()
        .into_iter()
        .filter(|r| r.event.patients.iter().any(|p| p.id == "example"))
        .map(|r| r.header.seq)
        .collect();
    // The newest records may not be under a checkpoint yet: the answer says so and stops there.
    assert!(
        !got.is_empty() && want.starts_with(&got),
        "{got:?} vs {want:?}\n{stderr}"
    );
    assert!(
        got.len() == want.len() || stderr.contains("left out"),
        "{got:?} vs {want:?}\n{stderr}"
    );
    assert!(stderr.contains("from columnar copies"), "{stderr}");
    let checked = Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .arg("verify-report")
        .arg(&proof)
        .arg("--key")
        .arg(public_key_of(&gw.journal))
        .output()
        .unwrap();
    assert_eq!(
        checked.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );
}

#[test]
fn a_query_over_a_journal_that_crashed_and_recovered_equals_its_records() {
    let fhir = FhirServer::seeded();
    let archive = tempfile::tempdir().unwrap();
    let mut gw = dir_archive_gateway(fhir, archive.path(), true);
    traffic(&gw, 20);
    // kill -9 between two runs of traffic: recovery keeps every acknowledged record.
    gw.kill9();
    gw.spawn();
    traffic(&gw, 20);
    wait_until_shipped(&gw);
    gw.terminate(Duration::from_secs(20));
    let out = Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .arg("query")
        .arg("--archive")
        .arg(archive.path())
        .args(["--prefix", PREFIX, "--journal"])
        .arg(&gw.journal)
        .arg("--key")
        .arg(public_key_of(&gw.journal))
        .args(["--user", "dr-columnar", "--format", "jsonl"])
        .output()
        .unwrap();
    let (got, stderr) = answered_seqs(&out);
    let want: Vec<u64> = gw
        .records()
        .into_iter()
        .filter(|r| {
            matches!(&r.event.who, auditgate::record::Who::Authenticated(a) if a.user == "dr-columnar")
        })
        .map(|r| r.header.seq)
        .collect();
    assert_eq!(got, want, "{stderr}");
    assert_eq!(want.len(), 40, "every request of both runs: {stderr}");
}

#[test]
fn verify_finds_every_tamper_of_a_columnar_copy_or_seal() {
    let fhir = FhirServer::seeded();
    let archive = tempfile::tempdir().unwrap();
    let mut gw = dir_archive_gateway(fhir, archive.path(), true);
    traffic(&gw, 30);
    let segments = wait_until_shipped(&gw);
    assert!(segments.len() >= 4, "{segments:?}");
    gw.terminate(Duration::from_secs(20));
    let (code, report) = dir_verify(archive.path(), &gw.journal);
    assert_eq!(code, 0, "{report:#}");
    assert!(report["nodes"][0]["columnar_copies"].as_u64().unwrap() >= 4);
    // The local journal's copies are checked too.
    let (code, report) = verify(
        &[
            "--journal",
            gw.journal.to_str().unwrap(),
            "--key",
            public_key_of(&gw.journal).to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{report:#}");
    assert!(
        report["columnar_copies"].as_u64().unwrap() >= 4,
        "{report:#}"
    );

    let check = |what: &str, expected: &str| {
        let (code, report) = dir_verify(archive.path(), &gw.journal);
        assert_eq!(code, 1, "{what}: {report:#}");
        assert!(
            kinds(&report).iter().any(|k| k == expected),
            "{what}: expected {expected} in {report:#}"
        );
    };

    // 1. A changed row: the copy made again from a segment whose one line names another
    //    patient (a well-formed Parquet file with a wrong row).
    let (first, last) = segments[1];
    let copy = archived_copy(archive.path(), first, last);
    let original = std::fs::read(&copy).unwrap();
    let segment = std::fs::read(
        gw.journal
            .join(SegmentName::Sealed { first, last }.file_name()),
    )
    .unwrap();
    let text = String::from_utf8(segment).unwrap();
    assert!(text.contains("\"id\":\"example\""), "{text}");
    let changed = text.replacen("\"id\":\"example\"", "\"id\":\"someone\"", 1);
    let seal = auditgate::columnar::Seal::open_unverified(
        &std::fs::read(archived_seal(archive.path(), first, last)).unwrap(),
    )
    .unwrap();
    let forged = auditgate::columnar::write_segment(
        changed.as_bytes(),
        &seal.start_frontier().unwrap(),
        &auditgate::columnar::WriteOptions {
            row_group_records: 256,
            ..Default::default()
        },
    )
    .unwrap();
    std::fs::write(&copy, &forged.parquet).unwrap();
    check("a changed row", "columnar_mismatch");
    // The same, with a seal for the forged file signed by the node's own key (an intruder who
    // has it): the row check and the tree hashes still find it.
    let seal_file = archived_seal(archive.path(), first, last);
    let seal_bytes = std::fs::read(&seal_file).unwrap();
    let own_key = auditgate::tlog::checkpoint::CheckpointSigner::load(
        &private_key_of(&gw.journal),
        false,
        "",
    )
    .unwrap();
    std::fs::write(&seal_file, forged.seal.sign(&own_key).unwrap()).unwrap();
    let (code, report) = dir_verify(archive.path(), &gw.journal);
    assert_eq!(code, 1);
    let found = kinds(&report);
    assert!(
        found.contains(&"columnar_mismatch".to_string()),
        "{report:#}"
    );
    assert!(found.contains(&"seal_invalid".to_string()), "{report:#}");
    assert!(
        report.to_string().contains("column leaf"),
        "the first differing column is named: {report:#}"
    );
    std::fs::write(&seal_file, &seal_bytes).unwrap();
    std::fs::write(&copy, &original).unwrap();

    // 2. Another segment's copy under this segment's name.
    let (f2, l2) = segments[2];
    std::fs::copy(archived_copy(archive.path(), f2, l2), &copy).unwrap();
    check("another segment's copy", "columnar_mismatch");
    std::fs::write(&copy, &original).unwrap();

    // 3. A copy without its seal.
    std::fs::remove_file(&seal_file).unwrap();
    check("a removed seal", "columnar_unpaired");

    // 4. A seal signed by another key (and a seal with a changed tree hash).
    let other = tempfile::tempdir().unwrap();
    let (_, _) =
        auditgate::tlog::checkpoint::write_key_pair(&other.path().join("k"), "auditgate/test-gw")
            .unwrap();
    let signer =
        auditgate::tlog::checkpoint::CheckpointSigner::load(&other.path().join("k"), false, "")
            .unwrap();
    let reopened = auditgate::columnar::Seal::open_unverified(&seal_bytes).unwrap();
    std::fs::write(&seal_file, reopened.sign(&signer).unwrap()).unwrap();
    check("a seal by another key", "seal_invalid");
    std::fs::write(&seal_file, &seal_bytes).unwrap();

    // 5. A removed copy (its seal left).
    std::fs::remove_file(&copy).unwrap();
    check("a removed copy", "columnar_unpaired");
    std::fs::write(&copy, &original).unwrap();
    let (code, report) = dir_verify(archive.path(), &gw.journal);
    assert_eq!(code, 0, "restored: {report:#}");
}

#[test]
fn backfill_makes_the_copies_an_archive_lacks_once() {
    let fhir = FhirServer::seeded();
    let archive = tempfile::tempdir().unwrap();
    let mut gw = dir_archive_gateway(fhir, archive.path(), false);
    traffic(&gw, 24);
    let segments = wait_until_shipped(&gw);
    gw.terminate(Duration::from_secs(20));
    assert!(!parquet_path(&gw.journal, segments[0].0, segments[0].1).exists());
    let (code, report) = dir_verify(archive.path(), &gw.journal);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["nodes"][0]["columnar_copies"], 0);
    let without = report["nodes"][0]["segments_without_columnar"]
        .as_u64()
        .unwrap();
    assert!(without >= segments.len() as u64, "{report:#}");

    let backfill = |dry_run: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_auditgate"));
        cmd.args(["backfill", "--archive"])
            .arg(archive.path())
            .args(["--prefix", PREFIX, "--key-file"])
            .arg(private_key_of(&gw.journal))
            .args(["--retention-days", "1", "--json"]);
        if dry_run {
            cmd.arg("--dry-run");
        }
        let out = cmd.output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let dry = backfill(true);
    assert_eq!(dry["made"].as_u64(), Some(without), "{dry:#}");
    assert_eq!(dry["node"], "test-gw");
    let (_, report) = dir_verify(archive.path(), &gw.journal);
    assert_eq!(
        report["nodes"][0]["columnar_copies"], 0,
        "a dry run stores nothing"
    );

    let first = backfill(false);
    assert_eq!(first["made"].as_u64(), Some(without), "{first:#}");
    let (code, report) = dir_verify(archive.path(), &gw.journal);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        report["nodes"][0]["columnar_copies"].as_u64(),
        Some(without)
    );
    assert_eq!(report["nodes"][0]["segments_without_columnar"], 0);

    let again = backfill(false);
    assert_eq!(again["made"], 0, "{again:#}");
    assert_eq!(again["present"].as_u64(), Some(without));
}

#[test]
fn without_an_archive_the_copies_are_made_in_the_journal() {
    let fhir = FhirServer::seeded();
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.journal_toml = "segment_max_bytes = 4096".into();
    opts.extra_toml = "[archive]\nkind = \"none\"\npoll_interval_secs = 1\n".into();
    let mut gw = Gateway::start(opts);
    traffic(&gw, 20);
    let segments = sealed(&gw.journal);
    assert!(segments.len() >= 2);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !segments
        .iter()
        .all(|(f, l)| seal_path(&gw.journal, *f, *l).exists())
    {
        assert!(
            Instant::now() < deadline,
            "no copies in 60 s:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    gw.terminate(Duration::from_secs(20));
    let (code, report) = verify(
        &[
            "--journal",
            gw.journal.to_str().unwrap(),
            "--key",
            public_key_of(&gw.journal).to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{report:#}");
    assert!(report["columnar_copies"].as_u64().unwrap() >= segments.len() as u64);
}
