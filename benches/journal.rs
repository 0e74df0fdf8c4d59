//! `cargo bench --bench journal`: journal append and verify throughput.
//!
//! Measures, on the machine's real disk (the target directory's filesystem):
//! * appends per second with one appender (every append waits for its own fdatasync);
//! * appends per second with 64 concurrent appenders (group commit shares one fdatasync);
//! * `verify` throughput in records per second over the journal just written;
//! * the same 64-appender run and verify with signed checkpoints on (a checkpoint requested
//!   every second, more often than the 5 s default) and the archiver shipping sealed segments
//!   and checkpoints at the same time, as a ratio to the runs without;
//! * archive upload throughput (MB/s of journal bytes) and, with checkpoints, `verify` of the
//!   archive;
//! * the archiver's compression of one sealed segment, zstd (the default) against gzip.
//!
//! The archive is S3 when `AUDITGATE_BENCH_S3_ENDPOINT` and `AUDITGATE_BENCH_S3_BUCKET` name
//! an S3 server and a bucket with Object Lock (`benches/archive.sh` starts LocalStack and sets
//! them), otherwise a local directory archive.
//!
//! Peer figure in the same run: a raw loop of `write` + `fdatasync` of one 4 KiB block, the
//! floor any durable append pays. Results are printed as a table and as JSON lines.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark that cannot set up its fixture has nothing to measure: it stops with the reason"
)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Interleaved rounds of the with/without comparison.
const ROUNDS: usize = 2;

use auditgate::archive::{
    ArchiveConfig, ArchiveKind, ArchiveStore, Archiver, DirStore, S3Store, SegmentCompression,
};
use auditgate::journal::{CheckpointTiming, Checkpointing, Journal, JournalConfig};
use auditgate::record::*;
use auditgate::tlog::checkpoint::{write_key_pair, CheckpointSigner, CheckpointVerifier};

fn event(n: u64) -> Event {
    Event {
        phase: Phase::Outcome,
        request_id: format!("0b8a3a52-5d7e-4c8e-9a51-{n:012}"),
        intent_seq: None,
        who: Who::Authenticated(Actor {
            user: "practitioner-4711".into(),
            issuer: "https://idp.hospital.example/realms/clinical".into(),
            name: Some("Dr. Example".into()),
            roles: vec!["physician".into()],
            client_id: Some("ehr-viewer".into()),
            purpose_of_use: vec!["TREAT".into()],
            jti: Some(format!("jti-{n}")),
            fhir_user: None,
            smart_patient: None,
            break_glass: false,
        }),
        action: Action::R,
        interaction: InteractionKind::Search,
        rule: "fhir-search-type".into(),
        resource_type: Some("Observation".into()),
        resource_id: None,
        method: "GET".into(),
        path: "/fhir/Observation".into(),
        query: Some("subject=Patient/example&code=8867-4".into()),
        forwarded_query: None,
        patients: vec![PatientRef {
            id: "example".into(),
            source: PatientSource::Query,
        }],
        attribution: Attribution::Partial,
        attribution_gaps: Vec::new(),
        external_refs: Vec::new(),
        external_refs_omitted: None,
        bulk_files: Vec::new(),
        net: NetworkVector {
            client_ip: "10.20.30.40".into(),
            peer_ip: "10.0.0.5".into(),
            forwarded_chain: vec!["10.20.30.40".into()],
            device_id: Some("ws-ward-3-17".into()),
            device_id_source: Some("header".into()),
            user_agent: Some("fhir-client/1.0".into()),
            geo: Some(Some(auditgate::record::Geo {
                country: Some("US".into()),
                city: Some("Milton".into()),
                asn: Some(209),
                org: Some("Qwest Communications Company, LLC".into()),
            })),
            geo_unavailable: None,
            client_cert: None,
            gateway: GatewayId {
                node: "gw-1".into(),
                listener: "0.0.0.0:8080".into(),
            },
        },
        outcome: Some(Outcome {
            status: 200,
            code: 0,
            error: None,
            bytes_out: Some(1024),
            upstream_ms: Some(3),
            content_type: None,
        }),
        truncated: Default::default(),
        part: None,
        summary: None,
        config_change: None,
        clock: ClockState {
            synced: true,
            max_error_ms: 12,
            est_error_ms: 1,
        },
        received: "2026-11-26T10:00:00.123456Z".into(),
    }
}

fn report(name: &str, ops: u64, elapsed: Duration, unit: &str) -> f64 {
    let rate = ops as f64 / elapsed.as_secs_f64();
    println!(
        "{name:48} {rate:>14.0} {unit}/s   ({ops} in {:.2?})",
        elapsed
    );
    println!("{{\"bench\":\"{name}\",\"rate\":{rate:.0},\"unit\":\"{unit}/s\"}}");
    rate
}

/// 64 concurrent appenders on a 2-thread runtime (group commit); returns records per second.
fn append_concurrently(journal: &Journal, name: &str) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let per_task = 4000u64;
    let tasks = 64u64;
    let t = Instant::now();
    rt.block_on(async {
        let mut handles = Vec::new();
        for task in 0..tasks {
            let j = journal.clone();
            handles.push(tokio::spawn(async move {
                for i in 0..per_task {
                    j.append(&event(task * per_task + i)).await.unwrap();
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
    });
    report(name, tasks * per_task, t.elapsed(), "records")
}

/// Wait for the background zero-fill of the next segment and flush every dirty page to disk
/// (`sync`), so neither competes with what is measured next: the run after a run must not
/// pay for its predecessor's writeback.
fn settle(dir: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while dir.join("spare.prealloc.tmp").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::process::Command::new("sync").status();
    std::thread::sleep(Duration::from_millis(500));
}

/// How the archiver compresses: zstd (the default), or gzip with
/// `AUDITGATE_BENCH_COMPRESSION=gzip` (to compare the two's cost in the same conditions).
fn archive_compression() -> SegmentCompression {
    match std::env::var("AUDITGATE_BENCH_COMPRESSION").as_deref() {
        Ok("gzip") => SegmentCompression::Gzip,
        Ok("zstd") | Err(_) => SegmentCompression::Zstd,
        Ok(other) => panic!("AUDITGATE_BENCH_COMPRESSION={other}: zstd or gzip"),
    }
}

/// The bench's archive: S3 from the environment, or a local directory.
fn archive_store(
    rt: &tokio::runtime::Runtime,
    tmp: &std::path::Path,
) -> (std::sync::Arc<dyn ArchiveStore>, &'static str) {
    match (
        std::env::var("AUDITGATE_BENCH_S3_ENDPOINT"),
        std::env::var("AUDITGATE_BENCH_S3_BUCKET"),
    ) {
        (Ok(endpoint), Ok(bucket)) => {
            let cfg = ArchiveConfig {
                kind: ArchiveKind::S3,
                bucket,
                prefix: "bench".into(),
                region: Some("us-east-1".into()),
                endpoint_url: Some(endpoint),
                force_path_style: true,
                retention_days: 1,
                allow_short_retention: true,
                ..ArchiveConfig::default()
            };
            let store = rt.block_on(S3Store::connect(&cfg));
            rt.block_on(store.check_ready()).unwrap();
            (std::sync::Arc::new(store), "S3")
        }
        // AUDITGATE_BENCH_ARCHIVE_DIR puts the directory archive elsewhere (e.g. a tmpfs: a
        // target that does not share the journal's disk, as a remote S3 does not).
        _ => (
            std::sync::Arc::new(DirStore::new(
                &std::env::var("AUDITGATE_BENCH_ARCHIVE_DIR")
                    .map(|d| std::path::PathBuf::from(d).join("archive"))
                    .unwrap_or_else(|_| tmp.join("archive")),
            )),
            "local directory",
        ),
    }
}

fn main() {
    let base = std::env::var("AUDITGATE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).unwrap();
    let tmp = tempfile::tempdir_in(&base).unwrap();

    // Peer: raw write + fdatasync of 4 KiB, the floor of any durable append.
    let raw_path = tmp.path().join("raw");
    let mut raw = std::fs::File::create(&raw_path).unwrap();
    let block = vec![b'x'; 4096];
    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        raw.write_all(&block).unwrap();
        raw.sync_data().unwrap();
    }
    let fsync_rate = report("peer: write 4KiB + fdatasync", n, t.elapsed(), "syncs");

    // AUDITGATE_BENCH_COMMIT_DELAY_US sets journal.commit_delay_us (default 0: off).
    let cfg = JournalConfig {
        commit_delay_us: std::env::var("AUDITGATE_BENCH_COMMIT_DELAY_US")
            .map(|v| {
                v.parse()
                    .expect("AUDITGATE_BENCH_COMMIT_DELAY_US: microseconds")
            })
            .unwrap_or(0),
        ..JournalConfig::default()
    };
    let dir = tmp.path().join("journal-single");
    let (journal, _) = Journal::open(&dir, "bench", &cfg).unwrap();

    // One appender: each append waits for its own sync.
    let n = 2000u64;
    let t = Instant::now();
    for i in 0..n {
        journal.append_blocking(&event(i)).unwrap();
    }
    let single = report("journal append, 1 appender", n, t.elapsed(), "records");
    drop(journal);
    settle(&dir);
    std::fs::remove_dir_all(&dir).unwrap();

    let key = tmp.path().join("checkpoint.key");
    let (pub_path, _) = write_key_pair(&key, "auditgate/bench").unwrap();
    let archive_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (store, archive_kind) = archive_store(&archive_rt, tmp.path());

    // 64 appenders without, and with, checkpoints (the default 5 s interval, and one at every
    // seal) and the archiver shipping while they run, as in the gateway: in ABBA order, each
    // run on a fresh journal directory (the previous one removed). This disk gets slower run
    // after run (measured: a checkpointed run first is the fastest of three), so only
    // interleaved runs compare fairly; the figures are the means of the two rounds.
    let mut plain_rates = Vec::new();
    let mut signed_rates = Vec::new();
    let mut verify = 0.0;
    let mut signed_dir = PathBuf::new();
    let mut checkpoint_stats = None;
    // ABBA: plain then signed in the first round, signed then plain in the second, so a steady drift
    // of the disk cancels out.
    for round in 0..ROUNDS {
        for signed_turn in [round % 2 == 1, round % 2 == 0] {
            if !signed_turn {
                let dir = tmp.path().join(format!("journal-{round}"));
                let (journal, _) = Journal::open(&dir, "bench", &cfg).unwrap();
                settle(&dir);
                plain_rates.push(append_concurrently(
                    &journal,
                    &format!("journal append, 64 appenders (round {})", round + 1),
                ));
                if round == 0 {
                    let stats = journal.stats();
                    let records = stats.records_written.load(Ordering::Relaxed);
                    let batches = stats.batches.load(Ordering::Relaxed);
                    println!(
                        "mean batch size {:.1} records",
                        records as f64 / batches as f64
                    );
                }
                drop(journal);
                settle(&dir);
                if round == 0 {
                    let t = Instant::now();
                    let r = auditgate::verify::verify_journal(&dir).unwrap();
                    assert!(r.ok(), "{:?}", r.chain.findings);
                    verify = report("verify", r.chain.records, t.elapsed(), "records");
                }
                std::fs::remove_dir_all(&dir).unwrap();
            } else {
                if !signed_dir.as_os_str().is_empty() {
                    std::fs::remove_dir_all(&signed_dir).unwrap();
                }
                signed_dir = tmp.path().join(format!("journal-signed-{round}"));
                let checkpointing = Checkpointing {
                    signer: CheckpointSigner::load(&key, false, "unused").unwrap(),
                    timing: CheckpointTiming {
                        interval: Duration::from_secs(5),
                        heartbeat: Duration::from_secs(60),
                    },
                };
                let (signed, _) =
                    Journal::open_with_checkpoints(&signed_dir, "bench", &cfg, Some(checkpointing))
                        .unwrap();
                settle(&signed_dir);
                let stop = Arc::new(AtomicBool::new(false));
                let shipper = {
                    let mut archiver = Archiver::new(
                        &signed_dir,
                        "bench",
                        &format!("bench-{round}"),
                        store.clone(),
                        Duration::from_secs(86_400),
                    )
                    .unwrap()
                    .compression(archive_compression());
                    let stop = stop.clone();
                    // AUDITGATE_BENCH_ARCHIVE_DURING=0 ships only after the run: the cost of
                    // checkpoints alone.
                    let during =
                        std::env::var("AUDITGATE_BENCH_ARCHIVE_DURING").as_deref() != Ok("0");
                    archive_rt.spawn(async move {
                        while !stop.load(Ordering::Relaxed) {
                            if during {
                                archiver.ship_pending().await.unwrap();
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        archiver.ship_pending().await.unwrap();
                        archiver
                    })
                };
                signed_rates.push(append_concurrently(
                    &signed,
                    &format!(
                        "journal append, 64 appenders, checkpoints + archive ({archive_kind}) (round {})",
                        round + 1
                    ),
                ));
                checkpoint_stats = Some(signed.checkpoint_stats().unwrap().clone());
                drop(signed);
                settle(&signed_dir);
                stop.store(true, Ordering::Relaxed);
                let archiver = archive_rt.block_on(shipper).unwrap();
                let archive_stats = archiver.stats();
                println!(
                    "  archived while appending: {} segments, {} checkpoints",
                    archive_stats.segments_shipped.load(Ordering::Relaxed),
                    archive_stats.checkpoints_shipped.load(Ordering::Relaxed)
                );
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let many = mean(&plain_rates);
    let many_signed = mean(&signed_rates);
    println!(
        "{{\"bench\":\"journal append, 64 appenders (mean)\",\"rate\":{many:.0},\"unit\":\"records/s\"}}"
    );
    println!(
        "{{\"bench\":\"journal append, 64 appenders, checkpoints + archive (mean)\",\"rate\":{many_signed:.0},\"unit\":\"records/s\"}}"
    );
    let checkpoint_stats = checkpoint_stats.expect("at least one round");

    // Upload throughput: every sealed segment again, under a fresh prefix.
    let sealed: u64 = auditgate::journal::list_segments(&signed_dir)
        .unwrap()
        .iter()
        .filter(|(name, _)| matches!(name, auditgate::journal::SegmentName::Sealed { .. }))
        .map(|(_, p)| std::fs::metadata(p).unwrap().len())
        .sum();
    // A fresh progress file (the first archiver's is moved aside) and a fresh prefix.
    let state = signed_dir.join(auditgate::journal::shipped::SHIP_STATE_FILE);
    std::fs::rename(&state, tmp.path().join("first-archive-state.json")).unwrap();
    let mut upload = Archiver::new(
        &signed_dir,
        "bench",
        "bench-upload",
        store.clone(),
        Duration::from_secs(86_400),
    )
    .unwrap()
    .compression(archive_compression());
    let t = Instant::now();
    archive_rt.block_on(upload.ship_pending()).unwrap();
    let secs = t.elapsed().as_secs_f64();
    let upload_mb_s = sealed as f64 / 1e6 / secs;
    println!(
        "{:48} {upload_mb_s:>14.1} MB/s   ({:.1} MB of sealed segments, {:?}, {archive_kind})",
        "archive upload",
        sealed as f64 / 1e6,
        archive_compression()
    );
    println!("{{\"bench\":\"archive upload\",\"rate\":{upload_mb_s:.1},\"unit\":\"MB/s\"}}");

    // The archiver's compression of one sealed segment: zstd (the default) against gzip (the
    // alternative, and the format before zstd), same bytes, same run.
    let (_, first_sealed) = auditgate::journal::list_segments(&signed_dir)
        .unwrap()
        .into_iter()
        .find(|(name, _)| matches!(name, auditgate::journal::SegmentName::Sealed { .. }))
        .expect("a sealed segment");
    let segment = std::fs::read(first_sealed).unwrap();
    let mut compress_mb_s = Vec::new();
    for compression in [SegmentCompression::Zstd, SegmentCompression::Gzip] {
        let passes = 3;
        let t = Instant::now();
        let mut size = 0;
        for _ in 0..passes {
            size = compression.compress(&segment).unwrap().len();
        }
        let mb_s = (segment.len() * passes) as f64 / 1e6 / t.elapsed().as_secs_f64();
        let ratio = segment.len() as f64 / size as f64;
        println!(
            "{:48} {mb_s:>14.1} MB/s   (a {:.1} MB segment, {ratio:.1}:1)",
            format!("compress a segment, {compression:?}"),
            segment.len() as f64 / 1e6
        );
        println!(
            "{{\"bench\":\"compress a segment, {compression:?}\",\"rate\":{mb_s:.1},\"unit\":\"MB/s\",\"ratio\":{ratio:.2}}}"
        );
        compress_mb_s.push(mb_s);
    }

    // verify --archive over what was just uploaded: list, download, decompress, hash, chain,
    // roots, signatures, and (S3) every object's versions and lock.
    let archive_options = auditgate::verify::archive::ArchiveOptions {
        keys: vec![CheckpointVerifier::load(pub_path.to_str().unwrap()).unwrap()],
        max_gap: None,
        min_retention_days: 1,
        node: None,
    };
    let t = Instant::now();
    let archived = archive_rt
        .block_on(auditgate::verify::archive::verify_archive(
            store.clone(),
            "bench-upload",
            &archive_options,
            None,
        ))
        .unwrap();
    let archived_records: u64 = archived.nodes.iter().map(|n| n.chain.records).sum();
    assert!(
        archived.ok(),
        "{:?}",
        archived.all_findings().collect::<Vec<_>>()
    );
    let verify_archive = report(
        &format!("verify --archive ({archive_kind})"),
        archived_records,
        t.elapsed(),
        "records",
    );
    let t = Instant::now();
    let options = auditgate::verify::Options {
        key: Some(CheckpointVerifier::load(pub_path.to_str().unwrap()).unwrap()),
        max_gap: None,
    };
    let r = auditgate::verify::verify_journal_with(&signed_dir, &options).unwrap();
    assert!(r.ok(), "{:?}", r.chain.findings);
    let verify_signed = report("verify --key", r.chain.records, t.elapsed(), "records");
    println!(
        "checkpoints signed: {}",
        checkpoint_stats
            .signed
            .load(std::sync::atomic::Ordering::Relaxed)
    );

    println!();
    println!(
        "ratios: 1-appender / raw fdatasync = {:.2}; 64-appender / 1-appender = {:.1}",
        single / fsync_rate,
        many / single
    );
    println!(
        "checkpoints + archive: append with / without = {:.2}; verify --key / verify = {:.2} (target: cost under 10%)",
        many_signed / many,
        verify_signed / verify
    );
    println!(
        "segment compression: zstd / gzip speed = {:.2}",
        compress_mb_s[0] / compress_mb_s[1]
    );
    println!(
        "target: verify --archive > 500000 records/s: {}",
        if verify_archive > 500_000.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "targets: 64 appenders > 200000 records/s: {}; verify > 1000000 records/s: {}",
        if many > 200_000.0 { "met" } else { "NOT met" },
        if verify > 1_000_000.0 {
            "met"
        } else {
            "NOT met"
        }
    );
}
