//! `cargo bench --bench journal`: journal append and verify throughput.
//!
//! Measures, on the machine's real disk (the target directory's filesystem):
//! * appends per second with one appender (every append waits for its own fdatasync);
//! * appends per second with 64 concurrent appenders (group commit shares one fdatasync);
//! * `verify` throughput in records per second over the journal just written;
//! * the same 64-appender run and verify with signed checkpoints on (a checkpoint requested
//!   every second, more often than the 5 s default), as a ratio to the runs without.
//!
//! Peer figure in the same run: a raw loop of `write` + `fdatasync` of one 4 KiB block, the
//! floor any durable append pays. Results are printed as a table and as JSON lines.

use std::io::Write;
use std::time::{Duration, Instant};

use auditgate::checkpoint::{write_key_pair, CheckpointSigner, CheckpointVerifier};
use auditgate::journal::{CheckpointTiming, Checkpointing, Journal, JournalConfig};
use auditgate::record::*;

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
        patients: vec![PatientRef {
            id: "example".into(),
            source: PatientSource::Query,
        }],
        attribution: Attribution::Partial,
        net: NetworkVector {
            client_ip: "10.20.30.40".into(),
            peer_ip: "10.0.0.5".into(),
            forwarded_chain: vec!["10.20.30.40".into()],
            device_id: Some("ws-ward-3-17".into()),
            device_id_source: Some("header".into()),
            user_agent: Some("fhir-client/1.0".into()),
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
        }),
        clock: ClockState {
            synced: true,
            max_error_ms: 12,
        },
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

/// Wait for the background zero-fill of the next segment, so it does not compete with what
/// is measured next.
fn settle(dir: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while dir.join("spare.prealloc.tmp").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
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

    let cfg = JournalConfig::default();
    let dir = tmp.path().join("journal");
    let (journal, _) = Journal::open(&dir, "bench", &cfg).unwrap();

    // One appender: each append waits for its own sync.
    let n = 2000u64;
    let t = Instant::now();
    for i in 0..n {
        journal.append_blocking(&event(i)).unwrap();
    }
    let single = report("journal append, 1 appender", n, t.elapsed(), "records");

    let many = append_concurrently(&journal, "journal append, 64 appenders");
    let stats = journal.stats();
    let records = stats
        .records_written
        .load(std::sync::atomic::Ordering::Relaxed);
    let batches = stats.batches.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "mean batch size {:.1} records",
        records as f64 / batches as f64
    );
    drop(journal);
    settle(&dir);

    // Verify the whole journal.
    let t = Instant::now();
    let r = auditgate::verify::verify_journal(&dir).unwrap();
    assert!(r.ok(), "{:?}", r.findings);
    let verify = report("verify", r.records, t.elapsed(), "records");

    // The same with signed checkpoints: a fresh journal, a key, a checkpoint every second.
    let key = tmp.path().join("checkpoint.key");
    let (pub_path, _) = write_key_pair(&key, "auditgate/bench").unwrap();
    let signed_dir = tmp.path().join("journal-signed");
    let checkpointing = Checkpointing {
        signer: CheckpointSigner::load(&key, false, "unused").unwrap(),
        timing: CheckpointTiming {
            interval: Duration::from_secs(1),
            heartbeat: Duration::from_secs(60),
        },
    };
    let (signed, _) =
        Journal::open_with_checkpoints(&signed_dir, "bench", &cfg, Some(checkpointing)).unwrap();
    settle(&signed_dir);
    let many_signed = append_concurrently(&signed, "journal append, 64 appenders, checkpoints");
    let checkpoint_stats = signed.checkpoint_stats().unwrap().clone();
    drop(signed);
    settle(&signed_dir);
    let t = Instant::now();
    let options = auditgate::verify::Options {
        key: Some(CheckpointVerifier::load(pub_path.to_str().unwrap()).unwrap()),
        max_gap: None,
    };
    let r = auditgate::verify::verify_journal_with(&signed_dir, &options).unwrap();
    assert!(r.ok(), "{:?}", r.findings);
    let verify_signed = report("verify --key", r.records, t.elapsed(), "records");
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
        "checkpoints: append with / without = {:.2}; verify --key / verify = {:.2} (target: cost under 10%)",
        many_signed / many,
        verify_signed / verify
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
