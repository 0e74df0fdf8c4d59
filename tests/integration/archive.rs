//! The WORM archive against a real S3 server that enforces Object Lock (LocalStack, see
//! `tests/support/s3.rs`): the real gateway ships sealed segments and checkpoints while it
//! serves traffic; every object is locked in COMPLIANCE mode and cannot be deleted; an S3
//! outage costs nothing; a failed-but-stored upload is success on retry; other content under
//! our key is a conflict that is never overwritten; a segment stored under the other compression
//! before a restart is not stored twice; a bucket without Object Lock stops the start.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use auditgate::archive::{
    self, ArchiveConfig, ArchiveError, ArchiveKind, ArchiveStore, Archiver, ListedVersion,
    ObjectInfo, PutResult, S3Store, SegmentCompression,
};
use auditgate::journal::shipped::ShipState;
use auditgate::journal::SegmentName;

use crate::support::fixtures::FaultStore;
use crate::support::gateway::{Gateway, GatewayOptions};
use crate::support::s3::{aws_env, run_boto3, S3Server, BOTO3_PRELUDE, REGION};
use crate::support::{http_client, FhirServer};

const PREFIX: &str = "itest";

/// The test process's own S3 clients read the same (fixed) credentials from the environment.
fn set_aws_env() {
    for (k, v) in aws_env() {
        std::env::set_var(k, v);
    }
}

fn archive_config(s3: &S3Server, bucket: &str) -> ArchiveConfig {
    ArchiveConfig {
        kind: ArchiveKind::S3,
        bucket: bucket.into(),
        prefix: PREFIX.into(),
        region: Some(REGION.into()),
        endpoint_url: Some(s3.endpoint()),
        force_path_style: true,
        retention_days: 1,
        allow_short_retention: true,
        request_timeout_secs: 5,
        ..ArchiveConfig::default()
    }
}

fn archive_toml(s3: &S3Server, bucket: &str) -> String {
    format!(
        r#"
[archive]
kind = "s3"
bucket = "{bucket}"
prefix = "{PREFIX}"
region = "{REGION}"
endpoint_url = "{endpoint}"
force_path_style = true
retention_days = 1
allow_short_retention = true
poll_interval_secs = 1
retry_max_secs = 2
request_timeout_secs = 5
"#,
        endpoint = s3.endpoint()
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn gateway_with_archive(fhir: &FhirServer, s3: &S3Server, bucket: &str) -> Gateway {
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.journal_toml = "segment_max_bytes = 4096".into();
    opts.extra_toml = archive_toml(s3, bucket);
    opts.env = aws_env();
    Gateway::start(opts)
}

fn traffic(gw: &Gateway, n: usize) {
    let client = http_client();
    let token = gw.token("dr-archive");
    for _ in 0..n {
        let resp = client
            .get(gw.url("/fhir/Patient/example"))
            .bearer_auth(&token)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
}

fn sealed_segments(journal: &Path) -> Vec<(u64, u64, std::path::PathBuf)> {
    auditgate::journal::list_segments(journal)
        .unwrap()
        .into_iter()
        .filter_map(|(name, path)| match name {
            SegmentName::Sealed { first, last } => Some((first, last, path)),
            SegmentName::Open { .. } => None,
        })
        .collect()
}

fn ship_state(journal: &Path) -> ShipState {
    ShipState::read(journal).ok().flatten().unwrap_or_default()
}

/// Wait until every sealed segment present now is confirmed shipped.
fn wait_until_shipped(gw: &Gateway) -> u64 {
    let last = sealed_segments(&gw.journal)
        .last()
        .map(|(_, last, _)| *last)
        .expect("traffic sealed at least one segment");
    let deadline = Instant::now() + Duration::from_secs(60);
    while ship_state(&gw.journal).segments_through_seq < last {
        assert!(
            Instant::now() < deadline,
            "segments up to seq {last} not shipped within 60 s (state {:?}):\n{}",
            ship_state(&gw.journal),
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    last
}

fn versions(store: &S3Store, rt: &tokio::runtime::Runtime) -> Vec<ListedVersion> {
    rt.block_on(store.list_versions(&format!("{PREFIX}/v1/")))
        .unwrap()
}

/// Every key has exactly one version and no delete marker; returns the keys.
fn assert_one_version_each(listed: &[ListedVersion]) -> Vec<String> {
    let mut keys: Vec<String> = listed.iter().map(|v| v.key.clone()).collect();
    assert!(listed.iter().all(|v| !v.is_delete_marker), "{listed:?}");
    let n = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), n, "a key has more than one version: {listed:?}");
    keys
}

/// Every archived segment holds exactly the bytes of the local sealed segment.
fn assert_archive_matches_local(
    store: &S3Store,
    rt: &tokio::runtime::Runtime,
    journal: &Path,
    keys: &[String],
) {
    let segment_keys: Vec<&String> = keys.iter().filter(|k| k.ends_with(".jsonl.zst")).collect();
    let local = sealed_segments(journal);
    assert!(segment_keys.len() >= local.len().min(1));
    for (first, last, path) in &local {
        let name = format!(
            "{}.zst",
            SegmentName::Sealed {
                first: *first,
                last: *last
            }
            .file_name()
        );
        let key = segment_keys
            .iter()
            .find(|k| k.ends_with(&name))
            .unwrap_or_else(|| panic!("{name} not archived: {segment_keys:?}"));
        let archived = SegmentCompression::Zstd
            .decompress(&rt.block_on(store.get(key)).unwrap())
            .unwrap();
        assert_eq!(archived, std::fs::read(path).unwrap(), "{key}");
    }
}

/// `auditgate verify --archive s3://BUCKET/PREFIX --journal JOURNAL --key ...` exits 0.
fn verify_archive_passes(s3: &S3Server, bucket: &str, journal: &Path) {
    let public = crate::support::gateway::public_key_of(journal);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(["verify", "--archive", &format!("s3://{bucket}/{PREFIX}")])
        .args(["--endpoint-url", &s3.endpoint(), "--force-path-style"])
        .args(["--region", REGION, "--min-retention-days", "1", "--key"])
        .arg(&public)
        .arg("--journal")
        .arg(journal)
        .envs(aws_env())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sealed_segments_and_checkpoints_are_shipped_locked_and_cannot_be_deleted() {
    set_aws_env();
    let fhir = FhirServer::seeded();
    let s3 = S3Server::start();
    s3.create_locked_bucket("e2e");
    let gw = gateway_with_archive(fhir, &s3, "e2e");
    traffic(&gw, 40);
    wait_until_shipped(&gw);
    let rt = runtime();
    let store = rt.block_on(S3Store::connect(&archive_config(&s3, "e2e")));
    // Checkpoints ship on their own schedule (signed every interval, picked up at the next
    // poll): under load the first one may follow the segments by a few seconds.
    let checkpoint_prefix = format!("{PREFIX}/v1/node=test-gw/checkpoints/");
    let deadline = Instant::now() + Duration::from_secs(60);
    let listed = loop {
        let listed = versions(&store, &rt);
        if listed.iter().any(|v| v.key.starts_with(&checkpoint_prefix)) || Instant::now() > deadline
        {
            break listed;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let keys = assert_one_version_each(&listed);
    let segments: Vec<&String> = keys.iter().filter(|k| k.ends_with(".jsonl.zst")).collect();
    assert!(segments.len() >= sealed_segments(&gw.journal).len());
    assert!(
        segments
            .iter()
            .all(|k| k.starts_with(&format!("{PREFIX}/v1/node=test-gw/dt="))),
        "{segments:?}"
    );
    assert!(
        keys.iter()
            .any(|k| k.starts_with(&format!("{PREFIX}/v1/node=test-gw/checkpoints/"))),
        "checkpoints shipped: {keys:?}"
    );
    assert_archive_matches_local(&store, &rt, &gw.journal, &keys);

    // Every object: COMPLIANCE, retained one day (the test's retention) from now.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for key in &keys {
        let info: ObjectInfo = rt.block_on(store.head(key)).unwrap().unwrap();
        assert_eq!(info.lock_mode.as_deref(), Some("COMPLIANCE"), "{key}");
        let until = info.retain_until.unwrap();
        assert!(
            (now + 86_400 - 600..=now + 86_400 + 60).contains(&until),
            "{key}: retain-until {until}, now {now}"
        );
        assert!(info.sha256.is_some(), "{key}: checksum stored");
    }

    // The auditor's check: archive and local journal, with the public key.
    verify_archive_passes(&s3, "e2e", &gw.journal);

    // Deleting a locked version through the S3 API is refused, even with the bypass header.
    let script = format!(
        "{BOTO3_PRELUDE}\n{}",
        r#"
key = sys.argv[2]
v = s3.list_object_versions(Bucket="e2e", Prefix=key)["Versions"][0]["VersionId"]
for bypass in (False, True):
    try:
        s3.delete_object(Bucket="e2e", Key=key, VersionId=v, BypassGovernanceRetention=bypass)
        print("DELETED")
    except Exception as e:
        print("REFUSED", e.response["Error"]["Code"])
"#
    );
    let out = run_boto3(&script, &[&s3.direct_endpoint(), segments[0]]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("REFUSED AccessDenied").count(), 2, "{text}");
    assert!(!text.contains("DELETED"), "{text}");
    let after = rt.block_on(store.list_versions(segments[0])).unwrap();
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(!after[0].is_delete_marker);
}

#[test]
fn an_s3_outage_costs_no_request_and_no_record() {
    set_aws_env();
    let fhir = FhirServer::seeded();
    let mut s3 = S3Server::start();
    s3.create_locked_bucket("outage");
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.journal_toml = "segment_max_bytes = 4096".into();
    opts.extra_toml = archive_toml(&s3, "outage");
    opts.env = aws_env();
    // /readyz turns 503 once the archive has failed for 2 s (the default is 300 s).
    opts.admin_toml = "archive_unreachable_grace_secs = 2".into();
    let gw = Gateway::start(opts);
    traffic(&gw, 10);
    let before = wait_until_shipped(&gw);
    // Metrics: shipped, nothing waiting, reachable; and ready.
    wait_metric(&gw, "auditgate_archive_shipped_through_seq", |v| {
        v >= before as f64
    });
    assert_eq!(gw.metric("auditgate_archive_reachable"), 1.0);
    assert_eq!(gw.metric("auditgate_archive_backlog_segments"), 0.0);
    assert!(
        gw.metric(r#"auditgate_archive_uploads_total{kind="segment",result="created"}"#) >= 1.0
    );
    assert!(
        gw.metric(r#"auditgate_archive_uploads_total{kind="checkpoint",result="created"}"#) >= 1.0
    );
    assert_eq!(gw.admin_get("/readyz").0, 200);

    // S3 goes away mid-traffic: the gateway keeps serving (the local journal is the durable
    // store) and the backlog grows.
    s3.refuse_connections();
    traffic(&gw, 40);
    let sealed_now = sealed_segments(&gw.journal).last().unwrap().1;
    assert!(
        sealed_now > before,
        "traffic during the outage sealed segments"
    );
    // The failure is logged once the SDK's own retries (with backoff) give up.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gw.log().contains("archive upload failed") {
        assert!(
            Instant::now() < deadline,
            "no archive failure logged:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        ship_state(&gw.journal).segments_through_seq < sealed_now,
        "nothing can have shipped during the outage"
    );
    // Visible: the backlog, its age (growing while nothing moves), failed uploads, and
    // readiness once the grace is over; the proxy itself keeps serving.
    wait_metric(&gw, "auditgate_archive_reachable", |v| v == 0.0);
    assert!(gw.metric("auditgate_archive_backlog_segments") >= 1.0);
    let failed_uploads = gw
        .metric(r#"auditgate_archive_uploads_total{kind="segment",result="failed"}"#)
        + gw.metric(r#"auditgate_archive_uploads_total{kind="checkpoint",result="failed"}"#);
    assert!(failed_uploads >= 1.0, "failed uploads are counted");
    let age = wait_metric(&gw, "auditgate_archive_oldest_unshipped_age_seconds", |v| {
        v >= 1.0
    });
    wait_metric(&gw, "auditgate_archive_oldest_unshipped_age_seconds", |v| {
        v > age
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = gw.admin_get("/readyz");
        if status == 503 {
            assert!(
                body.contains("\"archive\"") && body.contains("failing for"),
                "{body}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "/readyz stayed ready: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    traffic(&gw, 2);

    // Back: the backlog drains; every record is there once.
    s3.accept_connections();
    let shipped = wait_until_shipped(&gw);
    wait_metric(&gw, "auditgate_archive_backlog_segments", |v| v == 0.0);
    // Set when the pass that shipped them ends (checkpoints are shipped after segments).
    wait_metric(&gw, "auditgate_archive_reachable", |v| v == 1.0);
    assert_eq!(
        gw.metric("auditgate_archive_oldest_unshipped_age_seconds"),
        0.0
    );
    assert!(gw.metric("auditgate_archive_shipped_through_seq") >= shipped as f64);
    let deadline = Instant::now() + Duration::from_secs(15);
    while gw.admin_get("/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "never ready again");
        std::thread::sleep(Duration::from_millis(200));
    }
    let rt = runtime();
    let store = rt.block_on(S3Store::connect(&archive_config(&s3, "outage")));
    let keys = assert_one_version_each(&versions(&store, &rt));
    assert_archive_matches_local(&store, &rt, &gw.journal, &keys);
    let records = gw.records();
    assert!(records.len() >= 50);
    assert!(!gw.log().contains("ARCHIVE CONFLICT"));
}

/// A new bucket with Object Lock, behind a store whose next PUT stores the object and then
/// reports a failure.
fn stored_then_failed(
    s3: &S3Server,
    rt: &tokio::runtime::Runtime,
    bucket: &str,
) -> Arc<FaultStore<S3Store>> {
    set_aws_env();
    s3.create_locked_bucket(bucket);
    let inner = rt.block_on(S3Store::connect(&archive_config(s3, bucket)));
    let store = FaultStore::new(inner);
    store.lose_next_put_answer.store(true, Ordering::SeqCst);
    Arc::new(store)
}

/// A journal with sealed segments and checkpoints, written by the real gateway.
fn journal_with_sealed_segments() -> (Gateway, tempfile::TempDir) {
    let fhir = FhirServer::seeded();
    let keep = tempfile::tempdir().unwrap();
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.journal_toml = "segment_max_bytes = 4096".into();
    opts.journal_dir = Some(keep.path().join("journal"));
    let mut gw = Gateway::start(opts);
    traffic(&gw, 20);
    gw.terminate(Duration::from_secs(10));
    (gw, keep)
}

#[test]
fn an_upload_that_failed_after_storing_is_success_on_retry_not_a_duplicate() {
    let s3 = S3Server::start();
    let (gw, _keep) = journal_with_sealed_segments();
    let rt = runtime();
    let store = stored_then_failed(&s3, &rt, "ambiguous");
    let mut archiver = Archiver::new(
        &gw.journal,
        "test-gw",
        PREFIX,
        store.clone(),
        Duration::from_secs(86_400),
    )
    .unwrap();
    let first = rt.block_on(archiver.ship_pending());
    assert!(
        matches!(first, Err(ArchiveError::Unreachable { .. })),
        "{first:?}"
    );
    assert_eq!(
        archiver.state().segments_through_seq,
        0,
        "nothing marked shipped"
    );
    let shipped = rt.block_on(archiver.ship_pending()).unwrap();
    assert!(shipped >= 2, "{shipped}");
    let stats = archiver.stats();
    assert_eq!(stats.already_present.load(Ordering::Relaxed), 1);
    assert_eq!(stats.conflicts.load(Ordering::Relaxed), 0);
    let listed = rt
        .block_on(store.list_versions(&format!("{PREFIX}/v1/")))
        .unwrap();
    assert_one_version_each(&listed);
    // A later pass has nothing to do.
    assert_eq!(rt.block_on(archiver.ship_pending()).unwrap(), 0);
}

#[test]
fn a_segment_stored_as_gzip_before_a_restart_with_zstd_is_not_stored_twice() {
    let s3 = S3Server::start();
    let (gw, _keep) = journal_with_sealed_segments();
    let rt = runtime();
    let store = stored_then_failed(&s3, &rt, "recompressed");
    let archiver = |compression| {
        Archiver::new(
            &gw.journal,
            "test-gw",
            PREFIX,
            store.clone(),
            Duration::from_secs(86_400),
        )
        .unwrap()
        .compression(compression)
    };
    // A gateway configured for gzip stores the first segment, loses the answer, and stops.
    let first = rt.block_on(archiver(SegmentCompression::Gzip).ship_pending());
    assert!(
        matches!(first, Err(ArchiveError::Unreachable { .. })),
        "{first:?}"
    );
    // Restarted with zstd: the gzip object counts as that segment's copy.
    let mut restarted = archiver(SegmentCompression::Zstd);
    let shipped = rt.block_on(restarted.ship_pending()).unwrap();
    assert!(shipped >= 2, "{shipped}");
    assert_eq!(restarted.stats().already_present.load(Ordering::Relaxed), 1);
    let listed = rt
        .block_on(store.list_versions(&format!("{PREFIX}/v1/")))
        .unwrap();
    let keys = assert_one_version_each(&listed);
    let gz: Vec<_> = keys.iter().filter(|k| k.ends_with(".jsonl.gz")).collect();
    let zst: Vec<_> = keys.iter().filter(|k| k.ends_with(".jsonl.zst")).collect();
    let sealed = sealed_segments(&gw.journal);
    assert_eq!(gz.len(), 1, "{keys:?}");
    assert_eq!(gz.len() + zst.len(), sealed.len(), "{keys:?}");
    assert!(gz[0].contains(
        &SegmentName::Sealed {
            first: sealed[0].0,
            last: sealed[0].1
        }
        .file_name()
    ));
    // An archive holding both compressions verifies, and agrees with the local journal.
    verify_archive_passes(&s3, "recompressed", &gw.journal);
}

#[test]
fn other_content_under_our_key_is_a_conflict_and_is_never_overwritten() {
    set_aws_env();
    let s3 = S3Server::start();
    s3.create_locked_bucket("conflict");
    let (gw, _keep) = journal_with_sealed_segments();
    let rt = runtime();
    let store = Arc::new(rt.block_on(S3Store::connect(&archive_config(&s3, "conflict"))));
    // Someone stored other bytes under the first segment's key.
    let (first, last, path) = sealed_segments(&gw.journal).remove(0);
    let text = std::fs::read_to_string(&path).unwrap();
    let date = &text[text.find("\"ts\":\"").unwrap() + 6..][..10];
    let key = archive::Layout::new(PREFIX).segment(
        "test-gw",
        date,
        first,
        last,
        SegmentCompression::Zstd,
    );
    let forged = SegmentCompression::Zstd.compress(b"{\"seq\":1}\n").unwrap();
    let sha = archive::sha256_b64(&forged);
    let until = SystemTime::now() + Duration::from_secs(86_400);
    assert_eq!(
        rt.block_on(store.put_new(&key, forged, &sha, until))
            .unwrap(),
        PutResult::Created
    );
    let mut archiver = Archiver::new(
        &gw.journal,
        "test-gw",
        PREFIX,
        store.clone(),
        Duration::from_secs(86_400),
    )
    .unwrap();
    let result = rt.block_on(archiver.ship_pending());
    match result {
        Err(ArchiveError::Conflict { key: k, .. }) => assert_eq!(k, key),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(archiver.stats().conflicts.load(Ordering::Relaxed), 1);
    // ... and exported for the AuditgateArchiveConflict alert.
    assert!(
        auditgate::metrics::global()
            .archive_uploads
            .with_label_values(&["segment", "conflict"])
            .get()
            >= 1
    );
    assert_eq!(archiver.state().segments_through_seq, 0);
    // The forged object is still the only version: nothing was overwritten.
    let listed = rt.block_on(store.list_versions(&key)).unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        rt.block_on(store.head(&key)).unwrap().unwrap().sha256,
        Some(sha)
    );
}

#[test]
fn a_bucket_without_object_lock_stops_the_gateway_from_starting() {
    set_aws_env();
    let fhir = FhirServer::seeded();
    let s3 = S3Server::start();
    let script = format!(
        "{BOTO3_PRELUDE}\n{}",
        r#"
s3.create_bucket(Bucket="plain")
print("CREATED")
"#
    );
    let out = run_boto3(&script, &[&s3.direct_endpoint()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("CREATED"));
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.extra_toml = archive_toml(&s3, "plain");
    opts.env = aws_env();
    match Gateway::try_start(opts) {
        Ok(_) => panic!("the gateway started on a bucket without Object Lock"),
        Err(log) => {
            assert!(log.contains("exited with exit status: 2"), "{log}");
            assert!(log.contains("cannot be the archive"), "{log}");
        }
    }
}

#[test]
fn shipped_segments_are_deleted_locally_only_after_their_lock_is_confirmed() {
    set_aws_env();
    let fhir = FhirServer::seeded();
    let s3 = S3Server::start();
    s3.create_locked_bucket("prune");
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.journal_toml = "segment_max_bytes = 4096".into();
    opts.extra_toml = archive_toml(&s3, "prune") + "delete_local_after_ship = true\n";
    opts.env = aws_env();
    let mut gw = Gateway::start(opts);
    traffic(&gw, 40);
    // Shipped segments disappear locally; the newest sealed one stays (it anchors the chain).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sealed = sealed_segments(&gw.journal);
        let shipped = ship_state(&gw.journal).segments_through_seq;
        if sealed.len() == 1 && sealed[0].0 > 1 && shipped >= sealed[0].0 - 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not pruned: {sealed:?}, shipped through {shipped}:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every deleted segment is in the archive, locked.
    let rt = runtime();
    let store = rt.block_on(S3Store::connect(&archive_config(&s3, "prune")));
    let keys = assert_one_version_each(&versions(&store, &rt));
    let first_local = sealed_segments(&gw.journal)[0].0;
    let archived_segments: Vec<&String> =
        keys.iter().filter(|k| k.ends_with(".jsonl.zst")).collect();
    let mut covered = 0u64;
    for key in &archived_segments {
        let name = key.rsplit('/').next().unwrap().trim_end_matches(".zst");
        if let Some(SegmentName::Sealed { first, last }) = SegmentName::parse(name) {
            assert_eq!(
                first,
                covered + 1,
                "archived segments are contiguous: {keys:?}"
            );
            covered = last;
            let info = rt.block_on(store.head(key)).unwrap().unwrap();
            assert_eq!(info.lock_mode.as_deref(), Some("COMPLIANCE"));
        }
    }
    assert!(covered >= first_local - 1, "{covered} {first_local}");

    // The local journal still verifies, from its first local segment on; the records before
    // it are accounted for by the archive's progress file.
    let (code, out) = crate::support::gateway::verify_cli(&gw.journal, false);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("were shipped to the archive and removed locally"),
        "{out}"
    );

    // A restart on the pruned journal recovers and carries on.
    gw.kill9();
    gw.spawn();
    traffic(&gw, 5);
    // Stopped first: a running archiver may delete a segment between a listing and its read.
    gw.terminate(Duration::from_secs(10));
    let records = gw.records();
    assert!(records.first().unwrap().header.seq > 1);
    let last = records.last().unwrap().header.seq;
    assert!(last >= 45, "{last}");
    assert!(!gw.log().contains("ARCHIVE CONFLICT"));
}

#[test]
fn a_gateway_started_while_s3_is_unreachable_serves_and_ships_once_s3_is_back() {
    set_aws_env();
    let fhir = FhirServer::seeded();
    let mut s3 = S3Server::start();
    s3.create_locked_bucket("late");
    s3.refuse_connections();
    // The bucket cannot be checked at start: the gateway serves anyway (the local journal is
    // the durable store) and ships nothing until the bucket is confirmed locked.
    let gw = gateway_with_archive(fhir, &s3, "late");
    assert!(
        gw.log().contains("cannot check the archive now"),
        "{}",
        gw.log()
    );
    traffic(&gw, 30);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(ship_state(&gw.journal).segments_through_seq, 0);
    s3.accept_connections();
    wait_until_shipped(&gw);
    let rt = runtime();
    let store = rt.block_on(S3Store::connect(&archive_config(&s3, "late")));
    let keys = assert_one_version_each(&versions(&store, &rt));
    assert_archive_matches_local(&store, &rt, &gw.journal, &keys);
}

/// Wait (up to 30 s) until the gateway's `series` satisfies `ok`; returns the value.
fn wait_metric(gw: &Gateway, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = gw.metric(series);
        if ok(v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{series} = {v}, never reached the expected value"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
