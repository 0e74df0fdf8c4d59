//! The EHR stand-in: `sekmet-fhir` 0.1.1 (FastAPI + SQLite) from the repo's `.venv`.
//!
//! Each [`FhirServer`] is one `sekmet serve` process on a free `127.0.0.1` port, with its own
//! temp folder holding `settings.yaml`, the SQLite database and `sekmet.log` (its stdout and
//! stderr). FHIR base: `http://127.0.0.1:PORT/fhir`. Facts about how sekmet behaves are in
//! `tests/SEKMET-NOTES.md`.
//!
//! What reached the upstream, for tests of "the gateway forwarded nothing" or "it forwarded
//! these headers": [`FhirServer::upstream_requests`] parses uvicorn's access log (method,
//! path+query, status; written before the response's first byte), and
//! [`FhirServer::traffic`] reads sekmet's own traffic table (also the request headers and
//! body; written just after the response).
//!
//! Lifetime: `Drop` kills the process by PID and removes the folder. The process-wide
//! [`FhirServer::seeded`] instance lives in a `static` and is never dropped, so every server
//! also gets a watchdog: a `sh` whose stdin is a pipe held by the test process. When the test
//! process exits (normally, by panic, or killed), the pipe closes, `cat` returns, and the
//! watchdog kills sekmet by PID and removes its folder. `Drop` kills the watchdog first, so it
//! never fires for a server that was already stopped.
//!
//! Seeding ([`FhirServer::seeded`]) PUTs the HL7 R4 examples whose type is in neither
//! [`EXCLUDED_TYPES`] nor [`KNOWN_REJECTED`] with `PUT /fhir/{type}/{id}`: every Patient, and
//! Observation, Encounter, Condition, AllergyIntolerance, MedicationRequest, Procedure,
//! DiagnosticReport, Immunization, Practitioner, Organization and ~110 more types: 664
//! resources of 120 types in 3 to 5 s. Any rejection is a panic: the set is pinned, so the
//! count is too.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::python::{assert_success, run_python};
use super::{examples_dir, free_port, http_client, venv_dir};

/// How long `sekmet serve` may take to answer `GET /fhir/metadata` (it takes 0.5 to 0.9 s).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// A port taken between [`free_port`] and sekmet's bind is retried this many times.
const START_ATTEMPTS: usize = 3;
/// Parallel PUTs while seeding. sekmet serialises writes behind one SQLite lock, so more
/// threads do not load faster; two keep the server busy while the other prepares a request.
const SEED_THREADS: usize = 2;

/// Example types never loaded into the seeded server, and why.
pub const EXCLUDED_TYPES: &[(&str, &str)] = &[
    // Subscription/example is an active rest-hook to a real internet host: once stored, every
    // matching Observation write would make sekmet call out of the machine.
    (
        "Subscription",
        "would deliver rest-hook notifications to an internet host",
    ),
    // Bundles are stored as plain resources by PUT (their entries are not unpacked); 44 files,
    // 105 MB, the slowest PUTs of the set (up to 12 s each).
    ("Bundle", "105 MB of collections, stored unpacked"),
    // Conformance and terminology artifacts: 4,500 files, 30 s to load, 62 of them rejected
    // by sekmet's R4B-model validation, and no patient data.
    ("CapabilityStatement", "conformance"),
    ("CodeSystem", "terminology"),
    ("CompartmentDefinition", "conformance"),
    ("ConceptMap", "terminology"),
    ("ExampleScenario", "conformance"),
    ("GraphDefinition", "conformance"),
    ("ImplementationGuide", "conformance"),
    ("MessageDefinition", "conformance"),
    ("NamingSystem", "terminology"),
    ("OperationDefinition", "conformance"),
    ("SearchParameter", "conformance"),
    ("StructureDefinition", "conformance"),
    ("StructureMap", "conformance"),
    ("TerminologyCapabilities", "conformance"),
    ("TestReport", "conformance"),
    ("TestScript", "conformance"),
    ("ValueSet", "terminology"),
];

/// Example files sekmet answers with 400 (its structural validation uses the R4B models of
/// `fhir.resources`, which reject these R4 examples). Skipped, not counted as failures.
pub const KNOWN_REJECTED: &[(&str, &str)] = &[
    (
        "Evidence-example.json",
        "R4B model: Field required (Evidence.variableDefinition)",
    ),
    (
        "Questionnaire-qs1.json",
        "R4B model: linkId is required (Questionnaire.item)",
    ),
];

/// Run as `sh -c WATCHDOG_SCRIPT name SEKMET_PID DIR` with stdin a pipe from the test process.
/// `cat` returns when the test process has exited (all write ends closed); then kill sekmet,
/// wait until it is gone or a zombie (its orphan is reaped by whatever init the machine has,
/// sooner or later), at most 5 s, and remove its folder.
const WATCHDOG_SCRIPT: &str = r#"cat >/dev/null
kill -9 "$1" 2>/dev/null
i=0
while [ "$i" -lt 100 ] && kill -0 "$1" 2>/dev/null; do
    case "$(cat "/proc/$1/stat" 2>/dev/null)" in *") Z "*) break ;; esac
    i=$((i + 1))
    sleep 0.05
done
rm -rf "$2""#;

/// What seeding loaded.
#[derive(Debug, Clone)]
pub struct SeedReport {
    /// Resources stored, by type.
    pub loaded: BTreeMap<String, usize>,
    /// Files PUT (loaded or not).
    pub attempted: usize,
    /// The example files stored, in file-name order.
    pub files: Vec<PathBuf>,
    /// Wall time of the PUTs.
    pub elapsed: Duration,
}

impl SeedReport {
    /// All resources stored.
    pub fn total(&self) -> usize {
        self.loaded.values().sum()
    }

    /// Resources of one type stored.
    pub fn count(&self, resource_type: &str) -> usize {
        self.loaded.get(resource_type).copied().unwrap_or(0)
    }
}

/// One line of sekmet's access log: a request that reached the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRequest {
    /// `127.0.0.1:PORT` of the connection (the gateway's side when it proxies).
    pub peer: String,
    pub method: String,
    /// Path and query as uvicorn logs them, e.g. `/fhir/Patient/example`.
    pub target: String,
    pub status: u16,
}

/// One row of sekmet's traffic log: a request as sekmet received it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct TrafficEntry {
    pub method: String,
    /// Path and query, e.g. `/fhir/Patient/example`.
    pub url: String,
    /// The status sekmet answered with (absent if the response never started).
    pub status: Option<u16>,
    /// Request headers, names lower-case.
    pub req_headers: BTreeMap<String, String>,
    pub req_body: Option<String>,
    /// The request's `X-Request-Id` (else one sekmet made).
    pub correlation_id: Option<String>,
    /// The body sekmet answered with, as text; longer than the server's `max_body_log`
    /// (2,000,000 characters by default) it is stored truncated.
    pub resp_body: Option<String>,
}

/// A running `sekmet serve`, killed by PID on drop.
pub struct FhirServer {
    port: u16,
    base_url: String,
    dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    watchdog: Option<super::Watchdog>,
    /// Removes the folder on drop.
    _tempdir: Option<tempfile::TempDir>,
    seed: Option<SeedReport>,
}

impl FhirServer {
    /// Starts a fresh, empty sekmet on a free loopback port and waits until it answers
    /// `GET /fhir/metadata`. Panics (with the log's tail) if it does not come up, and with
    /// instructions if `.venv` is missing.
    pub fn start() -> FhirServer {
        FhirServer::start_with_settings("")
    }

    /// Like [`FhirServer::start`], with extra top-level `settings.yaml` keys appended, e.g.
    /// `"log_inbound: false\n"` or a `server_auth:` block. A key given here overrides the
    /// harness's default (PyYAML keeps the last of duplicate keys).
    pub fn start_with_settings(extra_yaml: &str) -> FhirServer {
        let sekmet = venv_dir().join("bin").join("sekmet");
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            match FhirServer::try_start(&sekmet, extra_yaml) {
                Ok(server) => return server,
                Err(StartError::PortTaken(log)) => last_error = log,
                Err(StartError::Failed(msg)) => panic!("{msg}"),
            }
        }
        panic!("sekmet could not bind a free port in {START_ATTEMPTS} attempts:\n{last_error}");
    }

    /// The process-wide server loaded once with the HL7 R4 examples (see the module docs).
    /// Shared by every test in the binary: read from it freely; a test that writes should use
    /// ids of its own (or its own [`FhirServer::start`]) so it does not disturb the others.
    pub fn seeded() -> &'static FhirServer {
        // get_or_init runs the closure once; other callers wait for it. If it panics, the
        // next caller tries again (and panics with its own message).
        static SEEDED: OnceLock<FhirServer> = OnceLock::new();
        SEEDED.get_or_init(|| {
            let mut server = FhirServer::start();
            let report = server.seed_examples();
            eprintln!(
                "FhirServer::seeded: {} resources of {} types loaded in {:.1} s at {}",
                report.total(),
                report.loaded.len(),
                report.elapsed.as_secs_f64(),
                server.base_url
            );
            server.seed = Some(report);
            server
        })
    }

    /// `http://127.0.0.1:PORT/fhir` (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The loopback port sekmet listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `base_url()/path`, e.g. `url("Patient/example")`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base_url, path.trim_start_matches('/'))
    }

    /// sekmet's OS process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// What seeding loaded (only on the [`FhirServer::seeded`] instance).
    pub fn seed_report(&self) -> Option<&SeedReport> {
        self.seed.as_ref()
    }

    /// The server's folder (settings.yaml, data/sekmet.db, sekmet.log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// GET `path` (relative to the FHIR base) and parse the JSON body; panics unless 2xx.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let url = self.url(path);
        let resp = http_client()
            .get(&url)
            .header("Accept", "application/fhir+json")
            .send()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = resp.status();
        let body = resp.text().unwrap_or_default();
        assert!(status.is_success(), "GET {url}: {status}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: bad JSON ({e}): {body}"))
    }

    /// PUT a resource (it must have `resourceType` and `id`); returns the stored version.
    /// Panics unless sekmet answers 200 or 201.
    pub fn put_resource(&self, resource: &serde_json::Value) -> serde_json::Value {
        let rtype = resource["resourceType"]
            .as_str()
            .expect("resource has resourceType");
        let id = resource["id"].as_str().expect("resource has id");
        let url = self.url(&format!("{rtype}/{id}"));
        let resp = http_client()
            .put(&url)
            .header("Content-Type", "application/fhir+json")
            .body(resource.to_string())
            .send()
            .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
        let status = resp.status();
        let body = resp.text().unwrap_or_default();
        assert!(status.is_success(), "PUT {url}: {status}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("PUT {url}: bad JSON ({e}): {body}"))
    }

    /// Every request sekmet has answered so far, from its access log (the readiness probe's
    /// `GET /fhir/metadata` included). uvicorn writes the line before the response's first
    /// byte, so a request whose response a client has seen is already here.
    pub fn upstream_requests(&self) -> Vec<UpstreamRequest> {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        log.lines().filter_map(parse_access_line).collect()
    }

    /// sekmet's traffic log (`log_inbound: true`, the harness default): every request it
    /// answered, oldest first, with the headers and body it received and the body it sent (sekmet itself replaces the values
    /// of `Authorization`, `Proxy-Authorization` and `Cookie` with `SCHEME ***redacted***`).
    /// A row is written just after its response is sent, so poll for a request that has just
    /// completed. Read with the venv's Python (`sqlite3`) from `data/sekmet.db`.
    pub fn traffic(&self) -> Vec<TrafficEntry> {
        let db = self.dir.join("data").join("sekmet.db");
        let script = r#"
import json, sqlite3, sys
con = sqlite3.connect(sys.argv[1], timeout=30)
con.row_factory = sqlite3.Row
rows = con.execute(
    "SELECT method, url, status, req_headers, req_body, correlation_id, resp_body FROM traffic "
    "WHERE direction = 'inbound' ORDER BY id").fetchall()
print(json.dumps([{**dict(r), "req_headers": json.loads(r["req_headers"] or "{}")} for r in rows]))
"#;
        let out = run_python(script, &[&db.to_string_lossy()], &[]);
        let stdout = assert_success(&out, "read sekmet's traffic table");
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("sekmet traffic rows: {e}: {stdout}"))
    }

    /// The last `max_bytes` of sekmet's log, for failure messages.
    pub fn log_tail(&self, max_bytes: u64) -> String {
        tail(&self.log_path, max_bytes)
    }

    fn try_start(sekmet: &Path, extra_yaml: &str) -> Result<FhirServer, StartError> {
        let tempdir = tempfile::Builder::new()
            .prefix("auditgate-fhir-")
            .tempdir()
            .map_err(|e| StartError::Failed(format!("create temp dir: {e}")))?;
        let dir = tempdir.path().to_path_buf();
        let port = free_port();
        let base_url = format!("http://127.0.0.1:{port}/fhir");
        let settings = format!(
            "# written by tests/support/fhir.rs\n\
             host: 127.0.0.1\n\
             port: {port}\n\
             base_url: {base_url}\n\
             data_dir: {data}\n\
             simulator: {{enabled: false}}\n\
             # sekmet's default, spelled out: every request is stored with its headers and\n\
             # body (see FhirServer::traffic) and X-Request-Id is echoed; false serves ~30%\n\
             # more requests per second but sends no X-Request-Id\n\
             log_inbound: true\n\
             {extra_yaml}\n",
            data = dir.join("data").display(),
        );
        let settings_path = dir.join("settings.yaml");
        std::fs::write(&settings_path, settings)
            .map_err(|e| StartError::Failed(format!("write {}: {e}", settings_path.display())))?;
        let log_path = dir.join("sekmet.log");
        let log = File::create(&log_path)
            .map_err(|e| StartError::Failed(format!("create {}: {e}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(|e| StartError::Failed(format!("dup log fd: {e}")))?;

        let child = Command::new(sekmet)
            .arg("serve")
            .arg("--config")
            .arg(&settings_path)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .current_dir(&dir)
            // settings come from our file only
            .env_remove("SEKMET_CONFIG")
            .env_remove("SEKMET_BASE_URL")
            .env_remove("SEKMET_DB")
            .env_remove("SEKMET_PUBLIC_URL")
            .env_remove("SEKMET_PORT")
            // uvicorn's access log goes to stdout; unbuffered so it is complete at all times
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|e| StartError::Failed(format!("spawn {}: {e}", sekmet.display())))?;
        let pid = child.id();

        let watchdog =
            super::Watchdog::spawn(WATCHDOG_SCRIPT, "auditgate-fhir-watchdog", pid, &dir);
        // From here on, Drop cleans up whatever happens.
        let mut server = FhirServer {
            port,
            base_url,
            dir,
            log_path,
            child: Some(child),
            watchdog: None,
            _tempdir: Some(tempdir),
            seed: None,
        };
        server.watchdog =
            Some(watchdog.map_err(|e| StartError::Failed(format!("spawn watchdog sh: {e}")))?);

        let client = http_client();
        let metadata = server.url("metadata");
        let started = Instant::now();
        loop {
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let log = server.log_tail(4000);
                if log.contains("address already in use") {
                    return Err(StartError::PortTaken(log));
                }
                return Err(StartError::Failed(format!(
                    "sekmet exited with {status} before it was ready; log:\n{log}"
                )));
            }
            if let Ok(resp) = client.get(&metadata).timeout(Duration::from_secs(2)).send() {
                if resp.status().is_success() {
                    return Ok(server);
                }
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(StartError::Failed(format!(
                    "sekmet did not answer GET {metadata} within {START_TIMEOUT:?}; log:\n{}",
                    server.log_tail(4000)
                )));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// PUTs the selected HL7 examples (see the module docs); panics on any rejection.
    /// PUTs the HL7 examples [`FhirServer::seeded`] holds into this server (see the module
    /// docs); panics if any is rejected.
    pub fn seed_examples(&self) -> SeedReport {
        let dir = examples_dir();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let Some((rtype, _)) = name.split_once('-') else {
                    return false; // package.json, ig-r4.json, ...
                };
                name.ends_with(".json")
                    && rtype.starts_with(|c: char| c.is_ascii_uppercase())
                    && !EXCLUDED_TYPES.iter().any(|(t, _)| *t == rtype)
                    && !KNOWN_REJECTED.iter().any(|(f, _)| *f == name)
            })
            .collect();
        files.sort();
        assert!(
            files.len() > 600,
            "only {} example files selected in {}: reinstall with scripts/test-env.sh",
            files.len(),
            dir.display()
        );

        let next = AtomicUsize::new(0);
        let loaded: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());
        let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..SEED_THREADS {
                scope.spawn(|| {
                    let client = http_client();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = files.get(i) else { break };
                        match self.put_file(&client, path) {
                            Ok(rtype) => *loaded.lock().unwrap().entry(rtype).or_default() += 1,
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                    }
                });
            }
        });
        let elapsed = started.elapsed();
        let failures = failures.into_inner().unwrap();
        assert!(
            failures.is_empty(),
            "seeding sekmet with the HL7 examples: {} of {} PUTs failed:\n{}\nlog tail:\n{}",
            failures.len(),
            files.len(),
            failures.join("\n"),
            self.log_tail(2000)
        );
        SeedReport {
            loaded: loaded.into_inner().unwrap(),
            attempted: files.len(),
            elapsed,
            files,
        }
    }

    fn put_file(&self, client: &reqwest::blocking::Client, path: &Path) -> Result<String, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let (Some(rtype), Some(id)) = (json["resourceType"].as_str(), json["id"].as_str()) else {
            return Err(format!("{}: no resourceType or id", path.display()));
        };
        let url = self.url(&format!("{rtype}/{id}"));
        let resp = client
            .put(&url)
            .header("Content-Type", "application/fhir+json")
            .body(bytes)
            .send()
            .map_err(|e| format!("PUT {url}: {e}"))?;
        let status = resp.status();
        if status.is_success() {
            Ok(rtype.to_string())
        } else {
            let body = resp.text().unwrap_or_default();
            Err(format!("PUT {url}: {status}: {}", truncate(&body, 300)))
        }
    }
}

impl Drop for FhirServer {
    fn drop(&mut self) {
        // The watchdog first, so it cannot fire on a PID that is reaped (and maybe reused).
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.disarm();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // _tempdir drops after this and removes the folder.
    }
}

enum StartError {
    /// Another process took the port between free_port() and sekmet's bind.
    PortTaken(String),
    Failed(String),
}

/// `INFO:     127.0.0.1:56726 - "GET /fhir/metadata HTTP/1.1" 200 OK`
fn parse_access_line(line: &str) -> Option<UpstreamRequest> {
    let rest = line.strip_prefix("INFO:")?.trim_start();
    let (peer, rest) = rest.split_once(" - \"")?;
    let (request, outcome) = rest.split_once("\" ")?;
    let (method, target_version) = request.split_once(' ')?;
    let (target, _version) = target_version.rsplit_once(' ')?;
    let status = outcome.split_whitespace().next()?.parse().ok()?;
    Some(UpstreamRequest {
        peer: peer.to_string(),
        method: method.to_string(),
        target: target.to_string(),
        status,
    })
}

fn tail(path: &Path, max_bytes: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(max_bytes)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uvicorn_access_lines() {
        let line = r#"INFO:     127.0.0.1:56726 - "GET /fhir/Observation?patient=example HTTP/1.1" 200 OK"#;
        assert_eq!(
            parse_access_line(line),
            Some(UpstreamRequest {
                peer: "127.0.0.1:56726".into(),
                method: "GET".into(),
                target: "/fhir/Observation?patient=example".into(),
                status: 200,
            })
        );
        assert_eq!(
            parse_access_line("INFO:     Application startup complete."),
            None
        );
    }
}
