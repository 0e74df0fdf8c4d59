//! `auditgate verify --archive` against a real S3 with Object Lock (LocalStack, see
//! `tests/support/s3.rs`): a signed journal shipped by the real `Archiver` through `S3Store`
//! verifies clean, with and without the local journal; then every tamper the S3 API allows
//! under COMPLIANCE locks (a new version of a segment, a delete marker over a segment), and a
//! local journal cut after the last archived checkpoint, make it exit 1 naming the object.
//! (Deleting or overwriting a locked version is refused by the store: `s3_kit.rs` tests that.)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use serde_json::Value;

use auditgate::archive::{
    ArchiveConfig, ArchiveKind, ArchiveStore, Archiver, Layout, S3Store, SegmentCompression,
};
use auditgate::tlog::checkpoint::public_key_path;

use crate::support::python::assert_success;
use crate::support::s3::{run_boto3, S3Server, ACCESS_KEY, BOTO3_PRELUDE, REGION, SECRET_KEY};

const NODE: &str = "gw-s3";
const PREFIX: &str = "audit";
const RECORDS: usize = 60;

/// A signed journal of [`RECORDS`] records in 4 KiB segments with a checkpoint after every
/// record; returns (journal dir, private key path).
fn signed_journal(root: &Path) -> (PathBuf, PathBuf) {
    crate::support::fixtures::signed_journal(root, NODE, RECORDS)
}

/// The SDK in this process takes its credentials from the environment, like the CLI's.
fn s3_credentials_in_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    });
}

fn s3_config(server: &S3Server, bucket: &str) -> ArchiveConfig {
    ArchiveConfig {
        kind: ArchiveKind::S3,
        bucket: bucket.into(),
        prefix: PREFIX.into(),
        endpoint_url: Some(server.endpoint()),
        force_path_style: true,
        region: Some(REGION.into()),
        retention_days: 1,
        allow_short_retention: true,
        ..ArchiveConfig::default()
    }
}

/// Ship every sealed segment and checkpoint of `journal` to `bucket` (Object Lock, 1 day);
/// returns the archive's keys.
fn ship(
    rt: &tokio::runtime::Runtime,
    server: &S3Server,
    bucket: &str,
    journal: &Path,
) -> Vec<String> {
    s3_credentials_in_env();
    let cfg = s3_config(server, bucket);
    rt.block_on(async {
        let store: Arc<dyn ArchiveStore> = Arc::new(S3Store::connect(&cfg).await);
        store.check_ready().await.unwrap();
        let mut archiver =
            Archiver::new(journal, NODE, PREFIX, store.clone(), cfg.retention()).unwrap();
        let shipped = archiver.ship_pending().await.unwrap();
        assert!(shipped > 3, "segments and checkpoints shipped: {shipped}");
        let mut keys: Vec<String> = store
            .list_versions(&Layout::new(PREFIX).root())
            .await
            .unwrap()
            .into_iter()
            .map(|v| v.key)
            .collect();
        keys.sort();
        keys
    })
}

/// `auditgate verify --archive s3://BUCKET/PREFIX --key ... --json EXTRA`: (exit code, report,
/// the same run's text output).
fn verify(server: &S3Server, bucket: &str, key: &Path, extra: &[&str]) -> (i32, Value, String) {
    let run = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_auditgate"));
        cmd.args(["verify", "--archive", &format!("s3://{bucket}/{PREFIX}")])
            .args(["--endpoint-url", &server.endpoint(), "--force-path-style"])
            .args(["--region", REGION, "--min-retention-days", "1", "--key"])
            .arg(public_key_path(key))
            .args(extra)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_ENDPOINT_URL_S3");
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().expect("run auditgate verify --archive");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, json, err) = run(true);
    let report: Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}\nstderr: {err}"));
    let (text_code, text, _) = run(false);
    assert_eq!(code, text_code, "{text}");
    (code, report, text)
}

/// Every finding of a report (the archive's and each node's).
fn findings(report: &Value) -> Vec<Value> {
    let mut out: Vec<Value> = report["findings"].as_array().unwrap().clone();
    for node in report["nodes"].as_array().unwrap() {
        out.extend(node["findings"].as_array().unwrap().iter().cloned());
    }
    out
}

fn boto3(server: &S3Server, body: &str, args: &[&str]) -> String {
    let script = format!("{BOTO3_PRELUDE}\n{body}");
    let endpoint = server.endpoint();
    let mut argv = vec![endpoint.as_str()];
    argv.extend_from_slice(args);
    assert_success(&run_boto3(&script, &argv), "boto3 tamper script")
}

/// A new version of a segment (no lock: a plain PUT of the bytes in the file `sys.argv[4]`).
const NEW_VERSION: &str = r#"
bucket, key, body = sys.argv[2], sys.argv[3], sys.argv[4]
r = s3.put_object(Bucket=bucket, Key=key, Body=open(body, "rb").read())
versions = s3.list_object_versions(Bucket=bucket, Prefix=key).get("Versions", [])
assert len(versions) == 2, versions
print(r["VersionId"])
"#;

/// The archived segment `key` with one record changed (its second line), compressed as
/// before, written to a file for [`NEW_VERSION`].
fn changed_segment(
    rt: &tokio::runtime::Runtime,
    server: &S3Server,
    bucket: &str,
    key: &str,
    dir: &Path,
) -> PathBuf {
    let cfg = s3_config(server, bucket);
    let stored = rt.block_on(async { S3Store::connect(&cfg).await.get(key).await.unwrap() });
    let (compression, _) = SegmentCompression::of_file_name(key).unwrap();
    let text = String::from_utf8(compression.decompress(&stored).unwrap()).unwrap();
    let mut lines: Vec<&str> = text.split('\n').collect();
    let changed = lines[1].replacen("req-", "reQ-", 1);
    assert_ne!(changed, lines[1]);
    lines[1] = &changed;
    let path = dir.join("changed-segment");
    std::fs::write(
        &path,
        compression.compress(lines.join("\n").as_bytes()).unwrap(),
    )
    .unwrap();
    path
}

/// A DELETE without a version id: a delete marker on top (the locked version stays).
const DELETE_MARKER: &str = r#"
bucket, key = sys.argv[2], sys.argv[3]
r = s3.delete_object(Bucket=bucket, Key=key)
assert r.get("DeleteMarker"), r
print(r["VersionId"])
"#;

#[test]
fn verify_archive_finds_every_s3_tamper_and_names_the_object() {
    let server = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let (journal, key) = signed_journal(tmp.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let segment_keys = |keys: &[String]| -> Vec<String> {
        keys.iter()
            .filter(|k| k.ends_with(".jsonl.zst"))
            .cloned()
            .collect()
    };

    // Bucket 1: shipped, clean, then a new version of a segment.
    server.create_locked_bucket("verify-version");
    let keys = ship(&rt, &server, "verify-version", &journal);
    let segments = segment_keys(&keys);
    assert!(segments.len() >= 3, "{keys:?}");
    let (code, report, text) = verify(&server, "verify-version", &key, &[]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(report["locks_checked"], true);
    assert_eq!(report["nodes"][0]["node"], NODE);
    assert_eq!(
        report["nodes"][0]["segments"].as_u64(),
        Some(segments.len() as u64)
    );
    assert!(text.contains("OK:"), "{text}");

    let changed = &segments[1];
    let body = changed_segment(&rt, &server, "verify-version", changed, tmp.path());
    boto3(
        &server,
        NEW_VERSION,
        &["verify-version", changed, body.to_str().unwrap()],
    );
    let (code, report, text) = verify(&server, "verify-version", &key, &[]);
    assert_eq!(code, 1, "{text}");
    let found = findings(&report);
    let has = |kind: &str, field: &str, value: &str| {
        found
            .iter()
            .any(|f| f["kind"] == kind && f[field].as_str() == Some(value))
    };
    assert!(has("second_version", "key", changed), "{found:#?}");
    assert!(has("lock_missing", "key", changed), "{found:#?}");
    assert!(has("chain_break", "segment", changed), "{found:#?}");
    assert!(
        found.iter().any(|f| f["kind"] == "checkpoint_mismatch"),
        "{found:#?}"
    );
    assert!(
        text.contains(&format!("{changed}: 2 versions")),
        "the text names the object: {text}"
    );
    assert!(text.contains(&format!("{changed}:3:")), "{text}");

    // Bucket 2: shipped (the progress file now speaks for it), clean with the journal too.
    server.create_locked_bucket("verify-marker");
    let keys = ship(&rt, &server, "verify-marker", &journal);
    let segments = segment_keys(&keys);
    let journal_arg = journal.to_str().unwrap();
    let (code, report, text) = verify(&server, "verify-marker", &key, &["--journal", journal_arg]);
    assert_eq!(code, 0, "{text}");
    let node = &report["nodes"][0];
    assert_eq!(node["head_seq"].as_u64(), Some(RECORDS as u64), "{text}");
    assert_eq!(
        node["local"]["segments_compared"].as_u64(),
        Some(segments.len() as u64)
    );
    assert!(node["local"]["shipped_through_seq"].as_u64().unwrap() > 0);

    // A copy of the journal whose records after the last archived segment were cut (and its
    // checkpoints with them): only the archived checkpoints remember them.
    let cut = tmp.path().join("cut");
    std::fs::create_dir(&cut).unwrap();
    let mut open_segment = None;
    for entry in std::fs::read_dir(&journal).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("seg-") || name == auditgate::journal::shipped::SHIP_STATE_FILE {
            std::fs::copy(entry.path(), cut.join(&name)).unwrap();
        }
        if name.ends_with(".open.jsonl") {
            open_segment = Some(cut.join(&name));
        }
    }
    let open_segment = open_segment.expect("an open segment");
    let bytes = std::fs::read(&open_segment).unwrap();
    let used = auditgate::journal::used_len(&bytes);
    let text_lines: Vec<&str> = std::str::from_utf8(&bytes[..used])
        .unwrap()
        .lines()
        .collect();
    let kept: String = text_lines[..text_lines.len() - 2]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&open_segment, kept).unwrap();
    let (code, report, text) = verify(
        &server,
        "verify-marker",
        &key,
        &["--journal", cut.to_str().unwrap()],
    );
    assert_eq!(code, 1, "{text}");
    let found = findings(&report);
    assert!(
        found.iter().any(|f| f["kind"] == "truncated"
            && f["size"].as_u64() == Some(RECORDS as u64)
            && f["records"].as_u64() == Some(RECORDS as u64 - 2)
            && f["checkpoint"]
                .as_str()
                .is_some_and(|c| c.starts_with(&format!("{PREFIX}/v1/node={NODE}/checkpoints/")))),
        "{found:#?}"
    );

    // A delete marker over a segment.
    let hidden = &segments[2];
    boto3(&server, DELETE_MARKER, &["verify-marker", hidden]);
    let (code, report, text) = verify(&server, "verify-marker", &key, &[]);
    assert_eq!(code, 1, "{text}");
    let found = findings(&report);
    assert!(
        found.iter().any(|f| f["kind"] == "delete_marker"
            && f["key"] == hidden.as_str()
            && f["hidden"] == true),
        "{found:#?}"
    );
    assert!(
        text.contains(&format!("{hidden}: hidden by a delete marker")),
        "{text}"
    );
    // With the journal, the hidden records are checked from the local copy: the marker is the
    // only finding.
    let (code, report, text) = verify(&server, "verify-marker", &key, &["--journal", journal_arg]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(findings(&report).len(), 1, "{text}");
    assert_eq!(
        report["nodes"][0]["head_seq"].as_u64(),
        Some(RECORDS as u64)
    );
}

#[test]
fn verify_archive_cannot_run_without_a_reachable_archive_or_with_bad_arguments() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_auditgate"))
            .arg("verify")
            .args(args)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    // A refused connection is "could not run", not a finding.
    let port = crate::support::free_port();
    let (code, err) = run(&[
        "--archive",
        "s3://nowhere/audit",
        "--endpoint-url",
        &format!("http://127.0.0.1:{port}"),
        "--force-path-style",
        "--region",
        REGION,
    ]);
    assert_eq!(code, 2, "{err}");
    for (args, says) in [
        (&["--archive", "s3:///audit"][..], "no bucket"),
        (&["--archive", "/no/such/archive/dir"], "no such directory"),
        (&["--archive", "s3://b/p", "--prefix", "x"], "--prefix"),
        (&["--archive", dir, "--region", "us-east-1"], "--region"),
        (&["--archive", "ftp://x"], "not s3://"),
    ] {
        let (code, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // An empty directory archive is a finding (nothing archived), not an error.
    let (code, _) = run(&["--archive", dir]);
    assert_eq!(code, 1);
}
