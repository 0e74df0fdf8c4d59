//! `cargo bench --bench query`: the auditor's questions over a large archive, `auditgate query`
//! against DuckDB over the same Parquet files, in the same run; the columnar copy's size and
//! write cost; journal append throughput with and without the copies being made.
//!
//! 1. **The archive.** `AUDITGATE_BENCH_RECORDS` (default 10,000,000) synthetic records over
//!    3 nodes and 10 days, with a realistic skew (Zipf-like): 1,000,000 patients (s = 0.9),
//!    5,000 users (s = 1.1), each user at one or two workstations (IP and device) most of the
//!    time; reads, searches naming 1 to 5 patients, writes. Written as the gateway and its
//!    archiver write them: 64 MiB segments (zstd), each with its columnar copy (the default
//!    `[columnar]` options) and signed seal, a signed checkpoint at each segment's end. Kept
//!    under `target/bench-data/` and reused while its parameters do not change.
//! 2. **Questions**, each run 3 times (median; the page cache is warm, as on a query server):
//!    one patient's access report (a patient of rank 400,000: a few accesses, as most patients
//!    have), a popular patient's (rank 5,000: a few hundred), one user's activity (rank 100),
//!    everything from one IP in one day; `auditgate query` (release binary,
//!    verified, with proofs, the whole process timed, its peak RSS read by GNU time) against
//!    DuckDB (`read_parquet` over the same files, `hive_partitioning`, the query alone timed
//!    inside Python, 2 threads), both returning the full records (`line`). The answers are
//!    compared.
//! 3. **Copy cost**: per segment, write time (median) and bytes of Parquet against the JSON and
//!    its zstd archive copy.
//! 4. **Appends with and without copies being made**: 64 appenders on the real disk for 10 s,
//!    8 MiB segments (so many seal and want copies), alternated, 3 rounds each (medians):
//!    nothing beside them (the peer), the gateway's copy loop (`keep_copies`, idle priority),
//!    and a thread at the same priority that only spins (what using the spare core costs by
//!    itself). First closed loop (each appender appends again once its record is durable: the
//!    journal's top speed), then open loop at half of the peer's top speed (a fixed schedule,
//!    as requests arrive; latency counted from each record's due time). Rate, latency
//!    percentiles, the process's CPU, copies made during the load and how long the rest took
//!    after it. `AUDITGATE_BENCH_ONLY=append` runs this part alone (no archive;
//!    `target/bench-results/query-append.json`); `AUDITGATE_BENCH_OFFERED=RATE` runs only the
//!    open loop, at that rate.
//!
//! 5. **Reports and the BALP export**: see [`reports_part`]; `AUDITGATE_BENCH_ONLY=reports`
//!    runs this part alone (`target/bench-results/query-reports.json`).
//!
//! Results: a table on stdout and `target/bench-results/query.json`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark that cannot set up its fixture has nothing to measure: it stops with the reason"
)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use auditgate::archive::{Layout, SegmentCompression};
use auditgate::columnar::local::{keep_copies, CopyMaker};
use auditgate::columnar::{write_segment, WriteOptions};
use auditgate::journal::{CheckpointTiming, Checkpointing, Journal, JournalConfig};
use auditgate::record::*;
use auditgate::tlog::checkpoint::{file_name, write_key_pair, CheckpointSigner};
use auditgate::tlog::merkle::{Frontier, Hash};

const NODES: usize = 3;
const DAYS: u64 = 10;
const PATIENTS: usize = 1_000_000;
const USERS: usize = 5_000;
const SEGMENT_BYTES: usize = 64 * 1024 * 1024;
/// 2026-11-01T00:00:00Z.
const START_SECS: u64 = 1_793_491_200;
/// Changes when what is generated changes: a cached archive of another version is remade.
const GENERATOR_VERSION: u32 = 1;

/// xorshift64*: a fast, reproducible generator (no need for cryptographic quality here).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Ranks 0..n drawn with probability proportional to 1 / (rank + 1)^s.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (0..n)
            .map(|r| {
                total += 1.0 / ((r + 1) as f64).powf(s);
                total
            })
            .collect::<Vec<_>>();
        let cumulative = cumulative.into_iter().map(|c| c / total).collect();
        Zipf { cumulative }
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cumulative
            .partition_point(|c| *c < u)
            .min(self.cumulative.len() - 1)
    }
}

/// A patient's ID: scattered, so popularity does not follow the ID's order.
fn patient_id(rank: usize) -> String {
    format!(
        "pt-{:07}",
        (rank as u64).wrapping_mul(2_654_435_761) % 10_000_000
    )
}

fn user_ip(user: usize, alt: bool) -> String {
    let n = if alt { user * 7 + 3 } else { user } % 2000;
    format!("10.{}.{}.{}", 20 + n / 250, (n % 250) / 16, 10 + n % 16)
}

fn event(rng: &mut Rng, patients: &Zipf, users: &Zipf, node: &str) -> Event {
    let user = users.sample(rng);
    let alt = rng.below(10) == 0;
    let kind = rng.below(100);
    let (action, interaction, method, resource, count) = match kind {
        0..=49 => (Action::R, InteractionKind::Read, "GET", "Observation", 1),
        50..=84 => (
            Action::R,
            InteractionKind::Search,
            "GET",
            "Observation",
            1 + rng.below(5),
        ),
        85..=92 => (Action::U, InteractionKind::Update, "PUT", "Observation", 1),
        93..=96 => (
            Action::C,
            InteractionKind::Create,
            "POST",
            "MedicationRequest",
            1,
        ),
        _ => (Action::R, InteractionKind::Read, "GET", "Patient", 1),
    };
    let patient_list: Vec<PatientRef> = (0..count)
        .map(|i| PatientRef {
            id: patient_id(patients.sample(rng)),
            source: if i == 0 {
                PatientSource::Query
            } else {
                PatientSource::Response
            },
        })
        .collect();
    let first = patient_list[0].id.clone();
    let request = rng.next();
    Event {
        phase: Phase::Outcome,
        request_id: format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            request >> 32,
            (request >> 16) & 0xffff,
            request & 0xfff,
            (request >> 4) & 0xfff,
            rng.next() & 0xffff_ffff_ffff
        ),
        intent_seq: None,
        who: Who::Authenticated(Actor {
            user: format!("u{user:05}"),
            issuer: "https://idp.hospital.example/realms/clinical".into(),
            name: Some(format!("Clinician {user}")),
            roles: vec![if user.is_multiple_of(5) {
                "nurse"
            } else {
                "physician"
            }
            .into()],
            client_id: Some(["ehr-viewer", "mobile-rounds", "lab-portal"][user % 3].into()),
            purpose_of_use: vec!["TREAT".into()],
            jti: Some(format!("{:016x}", rng.next())),
            fhir_user: Some(format!("Practitioner/{user}")),
            smart_patient: None,
            break_glass: rng.below(2000) == 0,
        }),
        action,
        interaction,
        rule: format!("fhir-{}", interaction.as_str()),
        resource_type: Some(resource.into()),
        resource_id: (interaction != InteractionKind::Search)
            .then(|| format!("{:x}", rng.next() & 0xff_ffff)),
        method: method.into(),
        path: format!("/fhir/{resource}"),
        query: (interaction == InteractionKind::Search)
            .then(|| format!("patient={first}&_count=50&_sort=-date")),
        forwarded_query: None,
        patients: patient_list,
        attribution: Attribution::Complete,
        attribution_gaps: Vec::new(),
        external_refs: Vec::new(),
        external_refs_omitted: None,
        bulk_files: Vec::new(),
        net: NetworkVector {
            client_ip: user_ip(user, alt),
            peer_ip: "10.0.0.5".into(),
            forwarded_chain: vec![user_ip(user, alt)],
            device_id: Some(format!(
                "ws-{:05}",
                if alt { user * 7 + 3 } else { user } % 3000
            )),
            device_id_source: Some("header".into()),
            user_agent: Some("Mozilla/5.0 (Windows NT 10.0; Win64; x64) EHR/24.1".into()),
            geo: None,
            geo_unavailable: Some("private".into()),
            client_cert: None,
            gateway: GatewayId {
                node: node.into(),
                listener: "0.0.0.0:8443".into(),
            },
        },
        outcome: Some(Outcome {
            status: if rng.below(100) < 2 { 403 } else { 200 },
            code: 0,
            error: None,
            bytes_out: Some(800 + rng.below(40_000)),
            upstream_ms: Some(2 + rng.below(40)),
            content_type: Some("application/fhir+json".into()),
        }),
        truncated: Default::default(),
        part: None,
        summary: None,
        config_change: None,
        clock: ClockState {
            synced: true,
            max_error_ms: 8,
            est_error_ms: 1,
        },
        received: String::new(),
    }
}

/// What generating the archive measured and what the questions need.
#[derive(serde::Serialize, serde::Deserialize, Default, Clone)]
struct Generated {
    version: u32,
    records: u64,
    segments: u64,
    json_bytes: u64,
    zst_bytes: u64,
    parquet_bytes: u64,
    seal_bytes: u64,
    /// Per segment: seconds to write its copy (Parquet + seal).
    copy_secs: Vec<f64>,
    /// Per segment: records.
    segment_records: Vec<u64>,
    /// The patient, user and IP the questions ask for.
    patient: String,
    user: String,
    ip: String,
    ip_day: String,
}

fn generate(dir: &Path, records: u64) -> Generated {
    let stamp = dir.join("generated.json");
    if let Ok(text) = std::fs::read_to_string(&stamp) {
        if let Ok(g) = serde_json::from_str::<Generated>(&text) {
            if g.version == GENERATOR_VERSION && g.records == records {
                println!("archive: reusing {} ({} records)", dir.display(), records);
                return g;
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    println!(
        "archive: generating {records} records over {NODES} nodes and {DAYS} days in {} (once)",
        dir.display()
    );
    let patients = Arc::new(Zipf::new(PATIENTS, 0.9));
    let users = Arc::new(Zipf::new(USERS, 1.1));
    let started = Instant::now();
    let per_node = records / NODES as u64;
    let handles: Vec<_> = (0..NODES)
        .map(|n| {
            let (dir, patients, users) = (dir.to_path_buf(), patients.clone(), users.clone());
            std::thread::spawn(move || generate_node(&dir, n, per_node, &patients, &users))
        })
        .collect();
    let mut total = Generated {
        version: GENERATOR_VERSION,
        records,
        ..Default::default()
    };
    for h in handles {
        let g = h.join().unwrap();
        total.records = records;
        total.segments += g.segments;
        total.json_bytes += g.json_bytes;
        total.zst_bytes += g.zst_bytes;
        total.parquet_bytes += g.parquet_bytes;
        total.seal_bytes += g.seal_bytes;
        total.copy_secs.extend(g.copy_secs);
        total.segment_records.extend(g.segment_records);
    }
    // The questions' subjects: a patient of median popularity among the top 10,000 (a few
    // dozen accesses), a user of rank 100, the IP of user 100 on day 5.
    let mut rng = Rng(42);
    let _ = rng.next();
    total.patient = patient_id(5_000);
    total.user = format!("u{:05}", 100);
    total.ip = user_ip(100, false);
    total.ip_day = "2026-11-06".into();
    println!("archive: generated in {:.0?}", started.elapsed());
    std::fs::write(&stamp, serde_json::to_vec_pretty(&total).unwrap()).unwrap();
    total
}

fn generate_node(dir: &Path, n: usize, records: u64, patients: &Zipf, users: &Zipf) -> Generated {
    let node = format!("gw-{}", n + 1);
    let key = dir.join(format!("{node}.key"));
    write_key_pair(&key, &format!("auditgate/{node}")).unwrap();
    let signer = CheckpointSigner::load(&key, false, "").unwrap();
    let layout = Layout::new("bench");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (n as u64 + 1));
    let mut g = Generated::default();
    let mut tree = Frontier::new();
    let mut prev = GENESIS_PREV.to_string();
    let span_micros = DAYS * 86_400 * 1_000_000;
    let mut seq = 0u64;
    let put = |key: &str, bytes: &[u8]| {
        let path = dir.join("archive").join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    };
    let options = WriteOptions::default();
    while seq < records {
        let first = seq + 1;
        let before = tree.clone();
        let mut segment = Vec::with_capacity(SEGMENT_BYTES + 4096);
        let mut first_ts = String::new();
        let mut end_time = SystemTime::UNIX_EPOCH;
        while segment.len() < SEGMENT_BYTES && seq < records {
            seq += 1;
            let micros = START_SECS * 1_000_000 + seq * span_micros / records;
            let t = SystemTime::UNIX_EPOCH + Duration::from_micros(micros);
            let mut e = event(&mut rng, patients, users, &node);
            e.received = format_ts(t);
            let header = ChainHeader {
                v: RECORD_VERSION,
                node: node.clone(),
                seq,
                prev: prev.clone(),
                ts: format_ts(t),
            };
            if first_ts.is_empty() {
                first_ts = header.ts.clone();
            }
            let start = segment.len();
            splice_line(&mut segment, &header, &e.to_json());
            let leaf = leaf_hash(&segment[start..]);
            prev = hex::encode(leaf);
            tree.push(Hash(leaf));
            segment.push(b'\n');
            end_time = t;
        }
        let last = seq;
        let date = &first_ts[..10];
        let zst = SegmentCompression::Zstd.compress(&segment).unwrap();
        put(
            &layout.segment(&node, date, first, last, SegmentCompression::Zstd),
            &zst,
        );
        let t = Instant::now();
        let copy = write_segment(&segment, &before, &options).unwrap();
        let seal = copy.seal.sign(&signer).unwrap();
        g.copy_secs.push(t.elapsed().as_secs_f64());
        put(&layout.columnar(&node, date, first, last), &copy.parquet);
        put(&layout.seal(&node, first, last), &seal);
        let note = signer.sign(tree.size(), tree.root(), end_time);
        put(
            &layout.checkpoint(&node, &file_name(tree.size(), end_time)),
            &note,
        );
        g.segments += 1;
        g.json_bytes += segment.len() as u64;
        g.zst_bytes += zst.len() as u64;
        g.parquet_bytes += copy.parquet.len() as u64;
        g.seal_bytes += seal.len() as u64;
        g.segment_records.push(last - first + 1);
    }
    g
}

/// Run `program args` under GNU time (`/usr/bin/time`, Debian package `time`: the peak RSS of
/// the process itself; a forked child's own rusage would count the bench's memory too),
/// returning (seconds, peak RSS in KiB, stdout).
fn run_measured(program: &str, args: &[String]) -> (f64, u64, Vec<u8>) {
    let started = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(program)
        .args(args)
        .output()
        .expect("/usr/bin/time (Debian package `time`)");
    let secs = started.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{program} {args:?} failed: {err}");
    let rss = err
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    (secs, rss, out.stdout)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

const DUCKDB: &str = r#"
import json, sys, time, duckdb
root, where = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute("SET threads = 2")
con.execute("SET enable_progress_bar = false")
sql = ("SELECT line FROM read_parquet('" + root + "/v1/columnar/*/*/*.parquet', "
       "hive_partitioning = true) WHERE " + where + " ORDER BY ts, node, seq")
times = []
for _ in range(3):
    t = time.perf_counter()
    rows = con.execute(sql).fetchall()
    times.append(time.perf_counter() - t)
print(json.dumps({"times": times, "rows": len(rows)}))
"#;

fn sql_python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-sql/bin/python");
    assert!(
        python.exists(),
        "{} not found: run scripts/test-env.sh (it makes .venv-sql with DuckDB)",
        python.display()
    );
    python
}

struct Question {
    name: &'static str,
    args: Vec<String>,
    duckdb_where: String,
}

/// One run of [`APPENDERS`] appenders for [`APPEND_SECS`] on a fresh journal, with the
/// gateway's copy loop ([`auditgate::columnar::local::keep_copies`], the real one: idle
/// priority) running beside it or not. `offered`: `None`, each appender appends again as
/// soon as its last append is durable (closed loop: the journal's top speed); `Some(rate)`,
/// the appenders together offer `rate` records a second on a fixed schedule (open loop, as
/// requests arrive), each append's latency counted from its scheduled time.
fn append_run(beside: Beside, offered: Option<f64>, root: &Path, round: usize) -> AppendRun {
    let with_copies = beside == Beside::CopyLoop;
    let dir = root.join(format!("append-{beside:?}-{round}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("k");
    write_key_pair(&key, "auditgate/bench").unwrap();
    let cfg = JournalConfig {
        segment_max_bytes: APPEND_SEGMENT_BYTES,
        ..JournalConfig::default()
    };
    let checkpointing = Checkpointing {
        signer: CheckpointSigner::load(&key, false, "").unwrap(),
        timing: CheckpointTiming {
            interval: Duration::from_secs(5),
            heartbeat: Duration::from_secs(60),
        },
    };
    let journal_dir = dir.join("journal");
    let (journal, _) =
        Journal::open_with_checkpoints(&journal_dir, "bench", &cfg, Some(checkpointing)).unwrap();
    let (stop_copies, copies_stopped) = tokio::sync::oneshot::channel::<()>();
    let copier = with_copies.then(|| {
        let maker = CopyMaker {
            signer: Arc::new(CheckpointSigner::load(&key, false, "").unwrap()),
            options: WriteOptions::default(),
        };
        let dir = journal_dir.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                tokio::select! {
                    _ = keep_copies(dir, maker, Duration::from_millis(200)) => {}
                    _ = copies_stopped => {}
                }
            });
        })
    });
    let spinning = Arc::new(std::sync::atomic::AtomicBool::new(
        beside == Beside::Spinner,
    ));
    let spinner = (beside == Beside::Spinner).then(|| {
        let spinning = spinning.clone();
        std::thread::spawn(move || {
            auditgate::background::make_this_thread_idle();
            let mut x = 0u64;
            while spinning.load(Ordering::Relaxed) {
                for _ in 0..10_000 {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
        })
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let appended = Arc::new(AtomicU64::new(0));
    let patients = Arc::new(Zipf::new(10_000, 0.9));
    let users = Arc::new(Zipf::new(USERS, 1.1));
    let cpu_before = process_cpu_secs();
    let t = Instant::now();
    let deadline = t + APPEND_SECS;
    let mut latencies: Vec<Duration> = rt.block_on(async {
        let mut tasks = Vec::new();
        for task in 0..APPENDERS {
            let (j, n, p, u) = (
                journal.clone(),
                appended.clone(),
                patients.clone(),
                users.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng(task + 1);
                let mut latencies = Vec::new();
                // Open loop: this appender's k-th record is due at start + offset + k * gap.
                let gap = offered.map(|rate| Duration::from_secs_f64(APPENDERS as f64 / rate));
                let mut due = t + gap.map_or(Duration::ZERO, |g| {
                    g.mul_f64(task as f64 / APPENDERS as f64)
                });
                while Instant::now() < deadline {
                    if gap.is_some() {
                        tokio::time::sleep_until(due.into()).await;
                    } else {
                        due = Instant::now();
                    }
                    let e = event(&mut rng, &p, &u, "bench");
                    j.append(&e).await.unwrap();
                    latencies.push(due.elapsed());
                    n.fetch_add(1, Ordering::Relaxed);
                    if let Some(gap) = gap {
                        due += gap;
                    }
                }
                latencies
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let elapsed = t.elapsed().as_secs_f64();
    latencies.sort();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let (p50, p99, p999) = (percentile(0.5), percentile(0.99), percentile(0.999));
    let cpu_busy = (process_cpu_secs() - cpu_before) / elapsed / cores();
    let rate = appended.load(Ordering::Relaxed) as f64 / elapsed;
    spinning.store(false, Ordering::Relaxed);
    if let Some(spinner) = spinner {
        spinner.join().unwrap();
    }
    let sealed_at_end = count_sealed(&journal_dir);
    let copied_at_end = count_files(&journal_dir, ".seal");
    drop(journal);
    // After the load: how long the copies of every segment sealed during it take to be made.
    let mut catch_up_secs = 0.0;
    if let Some(copier) = copier {
        let t = Instant::now();
        while count_files(&journal_dir, ".seal") < sealed_at_end
            && t.elapsed() < Duration::from_secs(600)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        catch_up_secs = t.elapsed().as_secs_f64();
        let _ = stop_copies.send(());
        copier.join().unwrap();
    }
    println!(
        "append, {APPENDERS} appenders, {}, {}: {rate:.0} records/s, latency p50 {p50:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms, CPU {:.0}% of {} cores; {sealed_at_end} segments sealed, {copied_at_end} copied during the load{}",
        offered.map_or("closed loop".to_string(), |r| format!("{r:.0} records/s offered")),
        match beside {
            Beside::Nothing => "no copies",
            Beside::CopyLoop => "copy loop running",
            Beside::Spinner => "an idle-priority spinner",
        },
        cpu_busy * 100.0,
        cores(),
        if with_copies {
            format!(", the rest {catch_up_secs:.1} s after it")
        } else {
            String::new()
        }
    );
    let _ = std::fs::remove_dir_all(&dir);
    AppendRun {
        rate,
        p50,
        p99,
        p999,
        sealed: sealed_at_end,
        copied_during: copied_at_end,
        catch_up_secs,
    }
}

/// Appenders in the throughput runs (the journal's group commit fills up).
const APPENDERS: u64 = 64;
/// How long each throughput run appends.
const APPEND_SECS: Duration = Duration::from_secs(10);
/// Segment size in the throughput runs: small, so that several seal and want copies.
const APPEND_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// Rounds of (without, with) runs, alternated.
const APPEND_ROUNDS: usize = 3;

/// What runs beside the appenders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Beside {
    /// Nothing: the peer.
    Nothing,
    /// The gateway's copy loop.
    CopyLoop,
    /// A thread at the copy loop's priority that only spins (no memory, no I/O): what using
    /// the spare core at idle priority costs by itself.
    Spinner,
}

/// What one throughput run measured.
struct AppendRun {
    rate: f64,
    /// Append latency percentiles, milliseconds.
    p50: f64,
    p99: f64,
    p999: f64,
    sealed: usize,
    copied_during: usize,
    catch_up_secs: f64,
}

fn count_sealed(dir: &Path) -> usize {
    auditgate::journal::list_segments(dir)
        .unwrap()
        .iter()
        .filter(|(name, _)| matches!(name, auditgate::journal::SegmentName::Sealed { .. }))
        .count()
}

fn count_files(dir: &Path, suffix: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
                .count()
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system) this process has used, from `/proc/self/stat`.
fn process_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name, in clock
    // ticks (USER_HZ, 100 on every Linux ABI).
    (ticks(11) + ticks(12)) / 100.0
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// Appends without and with the copy loop, alternated for [`APPEND_ROUNDS`]: at top speed
/// (closed loop), then at [`OFFERED_SHARE`] of the top speed without copies (open loop).
fn append_part(target: &Path) -> serde_json::Value {
    let scratch = target.join("bench-tmp/query-append");
    let mut results = serde_json::Map::new();
    // `AUDITGATE_BENCH_OFFERED=RATE`: only the open loop, at that rate.
    let fixed: Option<f64> = std::env::var("AUDITGATE_BENCH_OFFERED")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut top_speed = 0.0;
    for (name, share) in [("closed_loop", None), ("open_loop", Some(OFFERED_SHARE))] {
        if fixed.is_some() && share.is_none() {
            continue;
        }
        let offered = fixed.or(share.map(|s| s * top_speed));
        let mut with = Vec::new();
        let mut without = Vec::new();
        let mut spinner = Vec::new();
        for round in 0..APPEND_ROUNDS {
            without.push(append_run(Beside::Nothing, offered, &scratch, round));
            with.push(append_run(Beside::CopyLoop, offered, &scratch, round));
            spinner.push(append_run(Beside::Spinner, offered, &scratch, round));
        }
        let med =
            |runs: &[AppendRun], f: fn(&AppendRun) -> f64| median(runs.iter().map(f).collect());
        let (with_rate, without_rate) = (med(&with, |r| r.rate), med(&without, |r| r.rate));
        if share.is_none() {
            top_speed = without_rate;
        }
        let sealed: usize = with.iter().map(|r| r.sealed).sum();
        let copied: usize = with.iter().map(|r| r.copied_during).sum();
        let catch_up = med(&with, |r| r.catch_up_secs);
        println!(
            "{name}: with the copy loop / without (medians of {APPEND_ROUNDS}): {with_rate:.0} / {without_rate:.0} records/s = {:.3}x; latency p50 {:.2} / {:.2} ms, p99 {:.2} / {:.2} ms, p99.9 {:.2} / {:.2} ms; copies made during the load: {copied} of {sealed} sealed segments, the rest in {catch_up:.1} s after it (median)",
            with_rate / without_rate,
            med(&with, |r| r.p50), med(&without, |r| r.p50),
            med(&with, |r| r.p99), med(&without, |r| r.p99),
            med(&with, |r| r.p999), med(&without, |r| r.p999),
        );
        let spin_rate = med(&spinner, |r| r.rate);
        println!(
            "{name}: an idle-priority spinner / without: {spin_rate:.0} / {without_rate:.0} records/s = {:.3}x; latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
            spin_rate / without_rate,
            med(&spinner, |r| r.p50), med(&spinner, |r| r.p99), med(&spinner, |r| r.p999),
        );
        let runs = |runs: &[AppendRun]| {
            runs.iter()
                .map(|r| serde_json::json!({"rate": r.rate, "p50_ms": r.p50, "p99_ms": r.p99, "p999_ms": r.p999}))
                .collect::<Vec<_>>()
        };
        results.insert(name.into(), serde_json::json!({
            "offered": offered,
            "with_copies": with_rate, "without": without_rate, "ratio": with_rate / without_rate,
            "with_runs": runs(&with), "without_runs": runs(&without),
            "spinner": spin_rate, "spinner_ratio": spin_rate / without_rate,
            "spinner_runs": runs(&spinner),
            "segments_sealed_with_copies": sealed, "copied_during_load": copied,
            "catch_up_secs_median": catch_up,
        }));
    }
    results.insert("appenders".into(), APPENDERS.into());
    results.insert("secs".into(), APPEND_SECS.as_secs().into());
    results.insert("rounds".into(), APPEND_ROUNDS.into());
    results.insert("segment_bytes".into(), APPEND_SEGMENT_BYTES.into());
    serde_json::Value::Object(results)
}

/// The open-loop runs offer this share of the closed loop's top speed without copies.
const OFFERED_SHARE: f64 = 0.5;

/// One report (or export) against the `query` that reads the same records, both timed as whole
/// processes (3 runs each, medians) with their peak RSS.
struct ReportRun {
    name: &'static str,
    /// The report's or export's arguments after the trail's.
    report: Vec<String>,
    /// `query`'s filter arguments for the same records.
    query: Vec<String>,
}

/// `report breach --user USER` over 2026-11-02 .. 2026-11-08 (seven whole days of the ten),
/// against the query of the same records.
fn breach_week(name: &'static str, user: &str) -> ReportRun {
    let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    ReportRun {
        name,
        report: strings(&[
            "report",
            "breach",
            "--user",
            user,
            "--from",
            "2026-11-02",
            "--to",
            "2026-11-08",
        ]),
        query: strings(&[
            "--user",
            user,
            "--since",
            "2026-11-02",
            "--until",
            "2026-11-09",
        ]),
    }
}

/// 5. **Reports and the BALP export** (`AUDITGATE_BENCH_ONLY=reports` runs this part alone, over
///    the same archive): a typical patient's access report, one-week breach reports of a
///    typical user (rank 1,000) and of a busy one (rank 100, about ten times the requests), and
///    the FHIR export of the busy user's ten days, each against the
///    `auditgate query` of the same records (the peer: what the report adds to the verified
///    answer). The export's rate is events a second over the whole process.
fn reports_part(auditgate_bin: &str, trail: &[String], generated: &Generated) -> serde_json::Value {
    let typical = patient_id(400_000);
    let runs = [
        ReportRun {
            name: "patient access report",
            report: vec![
                "report".into(),
                "access".into(),
                "--patient".into(),
                typical.clone(),
            ],
            query: vec!["--patient".into(), typical.clone()],
        },
        breach_week("one-week breach, typical", "u01000"),
        breach_week("one-week breach, busy", &generated.user),
        ReportRun {
            name: "BALP export, one user",
            report: vec![
                "export".into(),
                "--format".into(),
                "fhir".into(),
                "--user".into(),
                generated.user.clone(),
            ],
            query: vec!["--user".into(), generated.user.clone()],
        },
    ];
    println!();
    println!(
        "{:24} {:>9} {:>10} {:>10} {:>8} {:>10} {:>10}",
        "report", "records", "report s", "query s", "ratio", "peak RSS", "events/s"
    );
    let mut results = Vec::new();
    for run in &runs {
        let measure = |head: &[String], tail: &[String]| {
            let mut args: Vec<String> = head.to_vec();
            args.extend(trail.iter().cloned());
            args.extend(tail.iter().cloned());
            let mut times = Vec::new();
            let mut rss = 0;
            let mut out = Vec::new();
            for _ in 0..3 {
                let (secs, peak, stdout) = run_measured(auditgate_bin, &args);
                times.push(secs);
                rss = rss.max(peak);
                out = stdout;
            }
            (median(times), rss, out)
        };
        let mut query_head = vec!["query".to_string()];
        query_head.extend(["--format".to_string(), "jsonl".to_string()]);
        let (query_secs, query_rss, query_out) = measure(&query_head, &run.query);
        let records = query_out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        let (head, tail) = run
            .report
            .split_at(if run.report[0] == "report" { 2 } else { 3 });
        let (secs, rss, out) = measure(head, tail);
        let events = if run.report[0] == "export" {
            out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count()
        } else {
            0
        };
        let rate = if events > 0 {
            events as f64 / secs
        } else {
            0.0
        };
        println!(
            "{:24} {:>9} {:>10.3} {:>10.3} {:>8.2} {:>6} MiB {:>10}",
            run.name,
            records,
            secs,
            query_secs,
            secs / query_secs,
            rss / 1024,
            if events > 0 {
                format!("{rate:.0}")
            } else {
                "-".into()
            }
        );
        results.push(serde_json::json!({
            "report": run.name, "records": records, "report_secs": secs, "query_secs": query_secs,
            "ratio": secs / query_secs, "report_peak_rss_kib": rss, "query_peak_rss_kib": query_rss,
            "events": events, "events_per_sec": rate,
        }));
    }
    serde_json::json!(results)
}

fn main() {
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    if std::env::var("AUDITGATE_BENCH_ONLY").as_deref() == Ok("append") {
        let append = append_part(&target);
        let out_dir = target.join("bench-results");
        std::fs::create_dir_all(&out_dir).unwrap();
        let mut f = std::fs::File::create(out_dir.join("query-append.json")).unwrap();
        writeln!(f, "{append:#}").unwrap();
        return;
    }
    let records: u64 = std::env::var("AUDITGATE_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let data = target.join(format!("bench-data/query-{records}"));
    let generated = generate(&data, records);
    let archive = data.join("archive");
    let root = archive.join("bench");
    let auditgate_bin = env!("CARGO_BIN_EXE_auditgate");
    let keys: Vec<String> = (1..=NODES)
        .flat_map(|n| {
            [
                "--key".to_string(),
                data.join(format!("gw-{n}.key.pub")).display().to_string(),
            ]
        })
        .collect();

    let trail: Vec<String> = [
        "--archive".to_string(),
        archive.display().to_string(),
        "--prefix".into(),
        "bench".into(),
    ]
    .into_iter()
    .chain(keys.iter().cloned())
    .collect();
    if std::env::var("AUDITGATE_BENCH_ONLY").as_deref() == Ok("reports") {
        let reports = reports_part(auditgate_bin, &trail, &generated);
        let out_dir = target.join("bench-results");
        std::fs::create_dir_all(&out_dir).unwrap();
        let mut f = std::fs::File::create(out_dir.join("query-reports.json")).unwrap();
        writeln!(f, "{reports:#}").unwrap();
        return;
    }
    let day_end = format!("{}T23:59:59.999999Z", generated.ip_day);
    let typical = patient_id(400_000);
    let questions = [
        Question {
            name: "patient access report",
            args: vec!["--patient".into(), typical.clone()],
            duckdb_where: format!("list_contains(patient_ids, '{typical}')"),
        },
        Question {
            name: "popular patient report",
            args: vec!["--patient".into(), generated.patient.clone()],
            duckdb_where: format!("list_contains(patient_ids, '{}')", generated.patient),
        },
        Question {
            name: "user activity",
            args: vec!["--user".into(), generated.user.clone()],
            duckdb_where: format!("user_id = '{}'", generated.user),
        },
        Question {
            name: "one IP, one day",
            args: vec![
                "--ip".into(),
                generated.ip.clone(),
                "--since".into(),
                generated.ip_day.clone(),
                "--until".into(),
                day_end.clone(),
            ],
            duckdb_where: format!(
                "client_ip = '{}' AND ts >= TIMESTAMPTZ '{}T00:00:00Z' AND ts <= TIMESTAMPTZ '{}'",
                generated.ip, generated.ip_day, day_end
            ),
        },
    ];
    let mut results = Vec::new();
    println!();
    println!(
        "{:24} {:>10} {:>12} {:>12} {:>8} {:>10}",
        "question", "records", "auditgate s", "duckdb s", "ratio", "peak RSS"
    );
    for q in &questions {
        let mut times = Vec::new();
        let mut rss = 0;
        let mut rows = 0;
        for _ in 0..3 {
            let mut args = vec![
                "query".to_string(),
                "--archive".into(),
                archive.display().to_string(),
                "--prefix".into(),
                "bench".into(),
                "--format".into(),
                "jsonl".into(),
            ];
            args.extend(keys.iter().cloned());
            args.extend(q.args.iter().cloned());
            let (secs, peak, out) = run_measured(auditgate_bin, &args);
            times.push(secs);
            rss = rss.max(peak);
            rows = out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
        }
        let out = Command::new(sql_python())
            .arg("-c")
            .arg(DUCKDB)
            .arg(&root)
            .arg(&q.duckdb_where)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let duck: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let duck_rows = duck["rows"].as_u64().unwrap() as usize;
        assert_eq!(rows, duck_rows, "{}: auditgate and DuckDB disagree", q.name);
        let duck_times: Vec<f64> = duck["times"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_f64().unwrap())
            .collect();
        let (ours, theirs) = (median(times), median(duck_times));
        println!(
            "{:24} {:>10} {:>12.3} {:>12.3} {:>8.2} {:>7} MiB",
            q.name,
            rows,
            ours,
            theirs,
            ours / theirs,
            rss / 1024
        );
        results.push(serde_json::json!({
            "question": q.name, "records_returned": rows, "auditgate_secs": ours,
            "duckdb_secs": theirs, "ratio": ours / theirs, "auditgate_peak_rss_kib": rss,
        }));
    }

    let copy = median(generated.copy_secs.clone());
    let per_segment = generated.json_bytes as f64 / generated.segments as f64;
    println!();
    println!(
        "columnar copy: {} segments of {:.1} MiB ({} records each on average); write {:.2} s per segment (median), {:.0} MB/s of JSON",
        generated.segments,
        per_segment / 1048576.0,
        generated.records / generated.segments,
        copy,
        per_segment / copy / 1e6
    );
    println!(
        "sizes: JSON {:.0} MiB, archived .jsonl.zst {:.0} MiB ({:.3}x), Parquet {:.0} MiB ({:.3}x of JSON, {:.2}x of zst), seals {:.1} MiB; {:.0} bytes of Parquet a record",
        generated.json_bytes as f64 / 1048576.0,
        generated.zst_bytes as f64 / 1048576.0,
        generated.zst_bytes as f64 / generated.json_bytes as f64,
        generated.parquet_bytes as f64 / 1048576.0,
        generated.parquet_bytes as f64 / generated.json_bytes as f64,
        generated.parquet_bytes as f64 / generated.zst_bytes as f64,
        generated.seal_bytes as f64 / 1048576.0,
        generated.parquet_bytes as f64 / generated.records as f64
    );

    let reports = reports_part(auditgate_bin, &trail, &generated);
    let append = append_part(&target);
    let json = serde_json::json!({
        "records": generated.records, "nodes": NODES, "days": DAYS,
        "questions": results,
        "reports": reports,
        "copy": {
            "segments": generated.segments, "median_write_secs": copy,
            "json_bytes": generated.json_bytes, "zst_bytes": generated.zst_bytes,
            "parquet_bytes": generated.parquet_bytes, "seal_bytes": generated.seal_bytes,
        },
        "append": append,
    });
    let out_dir = target.join("bench-results");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut f = std::fs::File::create(out_dir.join("query.json")).unwrap();
    writeln!(f, "{json:#}").unwrap();
}
