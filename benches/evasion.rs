//! What two of the "no way around the record" defenses cost: `cargo bench --bench evasion`.
//!
//! 1. **Flood summaries.** A client without a token sends as fast as 4 connections allow for
//!    `FLOOD_SECS`, against the release gateway twice in the same run: once with `[records]`
//!    rates so high nothing is summarised (what every unauthenticated request cost before), once
//!    with the shipped defaults. Reported: requests answered, records and journal bytes a second,
//!    and the ratio.
//! 2. **Pre-image reads.** `DELETES` deletes of Observations, one at a time, with
//!    `attribution.pre_image_reads` on and off (alternating rounds, ABBA): the added latency
//!    per delete (mean and median) and the gateway's CPU per delete (utime + stime from
//!    `/proc`), and their ratios.
//!
//! The EHR is a small HTTP/1.1 server of the bench's own (keep-alive, answers in microseconds),
//! so what is measured is the gateway's own added work; against a real EHR the pre-image adds
//! one more of that EHR's reads. Everything listens on 127.0.0.1 and is stopped by PID at the
//! end. Results also go to `target/bench-results/evasion.json`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark that cannot set up its fixture has nothing to measure: it stops with the reason"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const FLOOD_SECS: u64 = 6;
const DELETES: usize = 1500;
const ROUNDS: usize = 4;
const SECRET: &[u8] = b"evasion-bench-secret-of-at-least-32-bytes!!";

/// The bench's EHR: `GET /fhir/Observation/{id}` an Observation of patient `p-{id}`,
/// `DELETE` an OperationOutcome, anything else a Patient.
fn start_ehr() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream));
        }
    });
    port
}

fn serve(stream: TcpStream) {
    // One write per answer, no Nagle delay: the EHR must not be what is measured.
    stream.set_nodelay(true).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let id = path.rsplit('/').next().unwrap_or("x");
        let answer = match method.as_str() {
            "DELETE" => r#"{"resourceType":"OperationOutcome","issue":[{"severity":"information","code":"informational"}]}"#.to_string(),
            "GET" if path.contains("/Observation/") => format!(
                r#"{{"resourceType":"Observation","id":"{id}","status":"final","code":{{"text":"weight"}},"subject":{{"reference":"Patient/p-{id}"}}}}"#
            ),
            _ => r#"{"resourceType":"Patient","id":"x"}"#.to_string(),
        };
        let whole = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if out.write_all(whole.as_bytes()).is_err() {
            return;
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A release gateway in front of `ehr`, with extra config sections; stopped on drop.
struct Gw {
    child: Child,
    port: u16,
    journal: PathBuf,
    _dir: tempfile::TempDir,
}

impl Gw {
    fn start(ehr: u16, extra: &str) -> Gw {
        let dir =
            tempfile::tempdir_in(Path::new(env!("CARGO_MANIFEST_DIR")).join("target")).unwrap();
        let (port, admin) = (free_port(), free_port());
        let journal = dir.path().join("journal");
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/fhir-r4.toml");
        let config = format!(
            r#"[server]
node = "bench"
listen = ["127.0.0.1:{port}"]
threads = 2
pid_file = "{d}/pid"
upgrade_sock = "{d}/upgrade.sock"
[upstream]
url = "http://127.0.0.1:{ehr}"
[journal]
dir = "{journal}"
[checkpoint]
key_file = "{d}/checkpoint.key"
create_key_if_missing = true
[identity]
[[identity.issuers]]
issuer = "https://bench.invalid"
audiences = ["auditgate"]
algorithms = ["HS256"]
hmac_secrets = [{{ env_var = "BENCH_SECRET" }}]
[rules]
files = ["{rules}"]
[log]
level = "warn"
[admin]
listen = "127.0.0.1:{admin}"
{extra}
"#,
            d = dir.path().display(),
            journal = journal.display(),
            rules = rules.display(),
        );
        let config_path = dir.path().join("auditgate.toml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("gateway.log");
        let child = Command::new(env!("CARGO_BIN_EXE_auditgate"))
            .args(["run", "--config"])
            .arg(&config_path)
            .env("BENCH_SECRET", std::str::from_utf8(SECRET).unwrap())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the gateway did not listen:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Gw {
            child,
            port,
            journal,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Records and bytes in the journal now.
    fn journal_size(&self) -> (u64, u64) {
        let mut records = 0;
        let mut bytes = 0;
        for e in std::fs::read_dir(&self.journal).unwrap().flatten() {
            if !e.file_name().to_string_lossy().ends_with(".jsonl") {
                continue;
            }
            let data = std::fs::read(e.path()).unwrap();
            let end = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            records += data[..end].iter().filter(|b| **b == b'\n').count() as u64;
            bytes += end as u64;
        }
        (records, bytes)
    }

    /// The gateway's CPU time so far (user + system), from `/proc`.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let after = stat.rsplit_once(')').unwrap().1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn token() -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = serde_json::json!({
        "iss": "https://bench.invalid", "aud": "auditgate", "sub": "dr.bench", "exp": exp
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

/// Flood `gw` without a token for `FLOOD_SECS`: (requests/s, records/s, journal bytes/s).
fn flood(gw: &Gw) -> (f64, f64, f64) {
    // Let the summary interval of the previous second pass.
    std::thread::sleep(Duration::from_secs(1));
    let (records0, bytes0) = gw.journal_size();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (stop, sent, url) = (stop.clone(), sent.clone(), gw.url("/fhir/Patient/x"));
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(r) = client.get(&url).send() {
                        let _ = r.bytes();
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(FLOOD_SECS));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    // Summaries of the last interval are written within `summary_interval_secs` (1 here).
    std::thread::sleep(Duration::from_millis(1500));
    let (records1, bytes1) = gw.journal_size();
    (
        sent.load(Ordering::Relaxed) as f64 / secs,
        (records1 - records0) as f64 / secs,
        (bytes1 - bytes0) as f64 / secs,
    )
}

/// `DELETES` deletes through `gw`: (mean latency, median latency, CPU per delete).
fn deletes(gw: &Gw, round: usize) -> (Duration, Duration, Duration) {
    let client = reqwest::blocking::Client::new();
    let token = token();
    // Warm the connections.
    for i in 0..20 {
        client
            .delete(gw.url(&format!("/fhir/Observation/warm-{round}-{i}")))
            .bearer_auth(&token)
            .send()
            .unwrap();
    }
    let cpu0 = gw.cpu();
    let mut times = Vec::with_capacity(DELETES);
    for i in 0..DELETES {
        let t = Instant::now();
        let r = client
            .delete(gw.url(&format!("/fhir/Observation/o-{round}-{i}")))
            .bearer_auth(&token)
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        times.push(t.elapsed());
    }
    let cpu = (gw.cpu() - cpu0) / DELETES as u32;
    let mean = times.iter().sum::<Duration>() / DELETES as u32;
    times.sort();
    (mean, times[DELETES / 2], cpu)
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let ehr = start_ehr();

    // 1. Flood: before (nothing summarised) and after (the shipped defaults).
    let unlimited = "[records]\nunauthenticated_per_ip_per_sec = 100000\nunauthenticated_burst = 1000000\nunauthenticated_total_per_sec = 1000000\nsummary_interval_secs = 1\n";
    let shipped = "[records]\nsummary_interval_secs = 1\n";
    let before = {
        let gw = Gw::start(ehr, unlimited);
        flood(&gw)
    };
    let after = {
        let gw = Gw::start(ehr, shipped);
        flood(&gw)
    };
    println!("Unauthenticated flood, 4 connections for {FLOOD_SECS} s (release gateway):");
    println!("                         requests/s   records/s   journal bytes/s");
    println!(
        "  before (no summaries)  {:>10.0}  {:>10.1}  {:>15.0}",
        before.0, before.1, before.2
    );
    println!(
        "  after (defaults)       {:>10.0}  {:>10.1}  {:>15.0}",
        after.0, after.1, after.2
    );
    println!(
        "  journal growth after / before: records {:.4}x, bytes {:.4}x",
        after.1 / before.1,
        after.2 / before.2
    );

    // 2. Pre-image reads: on and off, ABBA.
    let on = "[attribution]\npre_image_reads = true\n";
    let off = "[attribution]\npre_image_reads = false\n";
    let gw_on = Gw::start(ehr, on);
    let gw_off = Gw::start(ehr, off);
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            with.push(deletes(&gw_on, round));
            without.push(deletes(&gw_off, round));
        } else {
            without.push(deletes(&gw_off, round));
            with.push(deletes(&gw_on, round));
        }
    }
    let avg = |v: &[(Duration, Duration, Duration)],
               f: fn(&(Duration, Duration, Duration)) -> Duration| {
        v.iter().map(f).sum::<Duration>() / v.len() as u32
    };
    let (w_mean, w_median, w_cpu) = (
        avg(&with, |x| x.0),
        avg(&with, |x| x.1),
        avg(&with, |x| x.2),
    );
    let (o_mean, o_median, o_cpu) = (
        avg(&without, |x| x.0),
        avg(&without, |x| x.1),
        avg(&without, |x| x.2),
    );
    println!(
        "DELETE of an Observation, {DELETES} per round, {ROUNDS} rounds ABBA (release gateway):"
    );
    println!("                          mean us   median us   gateway CPU us/delete");
    println!(
        "  pre-image reads on     {:>9.0}  {:>10.0}  {:>10.0}",
        micros(w_mean),
        micros(w_median),
        micros(w_cpu)
    );
    println!(
        "  pre-image reads off    {:>9.0}  {:>10.0}  {:>10.0}",
        micros(o_mean),
        micros(o_median),
        micros(o_cpu)
    );
    println!(
        "  added by the pre-image: {:.0} us mean latency ({:.2}x), {:.0} us CPU ({:.2}x)",
        micros(w_mean) - micros(o_mean),
        micros(w_mean) / micros(o_mean),
        micros(w_cpu) - micros(o_cpu),
        micros(w_cpu) / micros(o_cpu).max(1.0)
    );
    let results = serde_json::json!({
        "benchmark": "evasion",
        "flood_secs": FLOOD_SECS,
        "flood_before": {"requests_per_s": before.0, "records_per_s": before.1, "bytes_per_s": before.2},
        "flood_after": {"requests_per_s": after.0, "records_per_s": after.1, "bytes_per_s": after.2},
        "deletes_per_round": DELETES,
        "rounds": ROUNDS,
        "pre_image_on_us": {"mean": micros(w_mean), "median": micros(w_median), "cpu": micros(w_cpu)},
        "pre_image_off_us": {"mean": micros(o_mean), "median": micros(o_median), "cpu": micros(o_cpu)},
    });
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("evasion.json"), results.to_string()).unwrap();
}
