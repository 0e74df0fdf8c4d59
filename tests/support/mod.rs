//! Test harness for auditgate's integration tests: real servers on loopback, real clients, real keys.
//!
//! What it owns:
//! - [`FhirServer`]: the EHR stand-in, `sekmet-fhir` from the repo's `.venv`, one process per
//!   instance on a free `127.0.0.1` port in its own temp folder. [`FhirServer::seeded`] is one
//!   process-wide instance loaded once with the official HL7 R4 examples.
//! - [`run_python`]: runs a script with the venv's Python, to drive traffic with real FHIR
//!   clients (`fhirclient`, `fhirpy`).
//! - [`JwksServer`]: a loopback HTTP server for a JWKS document that a test can swap (key
//!   rotation), fail (status) or slow down, counting the requests it got.
//! - [`keys`]: RSA-2048, ECDSA P-256 and Ed25519 key pairs, their PEM and JWK forms, and
//!   [`keys::mint`] for signed JWTs.
//! - [`free_port`], [`wait_for_port`], [`http_client`].
//! - [`gateway`]: the real `auditgate` binary as a fixture, configured to trust these keys.
//! - [`held::HeldUpstream`]: a tiny upstream that holds chosen responses until released.
//!
//! Invariants:
//! - Nothing is skipped silently. A missing `.venv` or `.testdata` is a panic that says to run
//!   `scripts/test-env.sh`; a server that does not come up is a panic with the tail of its log.
//! - Everything binds to `127.0.0.1` and nothing here talks to any other address.
//! - Every process the harness starts is killed by its PID: on `Drop`, and, for the
//!   process-wide instance that is never dropped, by a watchdog that fires when the test
//!   process exits (see [`fhir`]).
//!
//! Layout: one integration-test binary, `tests/integration/main.rs`, includes this module with
//! `#[path = "../support/mod.rs"] mod support;`.

// Each test module uses a different part of the harness (and its re-exports); whatever the
// binary leaves unused would otherwise warn, and `-D warnings` turns that into an error.
#![allow(dead_code, unused_imports)]

pub mod certs;
pub mod fhir;
pub mod fixtures;
pub mod gateway;
pub mod geoip;
pub mod held;
pub mod jwks;
pub mod keys;
pub mod oidc;
pub mod oracle;
pub mod permissive;
pub mod prometheus;
pub mod python;
pub mod s3;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use fhir::{FhirServer, SeedReport, TrafficEntry, UpstreamRequest};
pub use jwks::JwksServer;
pub use keys::{mint, mint_with_header, KeyKind, TestKey};
pub use python::{assert_success, run_python, run_python_with_timeout};

/// The loopback address every test server binds to.
pub const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// What to tell someone whose machine lacks the test kit.
pub const SETUP_HINT: &str =
    "the integration-test kit is not installed: run scripts/test-env.sh from the repository root \
     (it creates .venv with sekmet-fhir, fhirclient and fhirpy, and .testdata with the HL7 FHIR \
     R4 examples)";

/// The repository root (the crate's manifest directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The repo's Python venv, made by `scripts/test-env.sh`. Panics with [`SETUP_HINT`] if absent.
pub fn venv_dir() -> PathBuf {
    let venv = repo_root().join(".venv");
    let python = venv.join("bin").join("python");
    let sekmet = venv.join("bin").join("sekmet");
    assert!(
        python.exists() && sekmet.exists(),
        "{} and {} not found: {SETUP_HINT}",
        python.display(),
        sekmet.display()
    );
    venv
}

/// The repo's LocalStack venv (`.venv-localstack`, made by `scripts/test-env.sh`) for
/// [`s3::S3Server`] and [`s3::run_boto3`]. Panics with instructions if absent.
pub fn localstack_venv_dir() -> PathBuf {
    let venv = repo_root().join(".venv-localstack");
    let python = venv.join("bin").join("python");
    assert!(
        python.exists() && venv.join(".auditgate-test-env").exists(),
        "{} not found (or its install did not finish): the S3 part of the integration-test kit \
         is not installed: run scripts/test-env.sh from the repository root (it creates \
         .venv-localstack with LocalStack and boto3 from tests/requirements-localstack.txt)",
        python.display()
    );
    venv
}

/// The repo's Synthea venv (`.venv-synthea`, made by `scripts/test-env.sh`): its
/// `bin/synthea` writes the synthetic patients the attribution corpus loads. Panics with
/// instructions if absent.
pub fn synthea_venv_dir() -> PathBuf {
    let venv = repo_root().join(".venv-synthea");
    assert!(
        venv.join("bin").join("synthea").exists() && venv.join(".auditgate-test-env").exists(),
        "{} not found (or its install did not finish): run scripts/test-env.sh from the \
         repository root (it creates .venv-synthea with tietai-synthea from \
         tests/requirements-synthea.txt)",
        venv.join("bin").join("synthea").display()
    );
    venv
}

/// The unpacked npm package `hl7.fhir.r4.examples@4.0.1` (one `Type-id.json` file per example).
/// Panics with [`SETUP_HINT`] if absent.
pub fn examples_dir() -> PathBuf {
    let dir = repo_root().join(".testdata/node_modules/hl7.fhir.r4.examples");
    assert!(
        dir.join("Patient-example.json").exists(),
        "{} not found: {SETUP_HINT}",
        dir.display()
    );
    dir
}

/// One HL7 example by file name, e.g. `example("Patient-example.json")`.
pub fn example(file_name: &str) -> serde_json::Value {
    let path = examples_dir().join(file_name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// A port that was free on `127.0.0.1` a moment ago (the OS picks it; the listener is closed
/// before returning, so another process may take it: servers here retry on a bind failure).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((LOOPBACK, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`. Returns false on timeout.
#[must_use]
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from((LOOPBACK, port));
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A blocking HTTP client for talking to loopback servers: no proxy (a `HTTP_PROXY` in the
/// environment must not reroute test traffic), 30 s timeout, no redirects followed.
pub fn http_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("build reqwest client")
}

/// Run the `auditgate` binary with `args`: (exit code, stdout, stderr).
pub fn run_auditgate(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(args)
        .output()
        .expect("run the auditgate binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `sh` that kills a test server (by PID) and removes its folder when the test process
/// exits however it exits: its stdin is a pipe this process holds, and `script` runs its
/// cleanup once `cat` sees the pipe close. [`Watchdog::disarm`] (called first by the server's
/// `Drop`) stops it without firing, so it never acts on a PID that was already reaped.
pub struct Watchdog {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
}

impl Watchdog {
    /// `script` gets `$1` = `pid` and `$2` = `dir`; `name` is its `$0`.
    pub fn spawn(
        script: &str,
        name: &str,
        pid: u32,
        dir: &std::path::Path,
    ) -> std::io::Result<Self> {
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(name)
            .arg(pid.to_string())
            .arg(dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take();
        Ok(Watchdog { child, stdin })
    }

    /// Stop the watchdog without letting it fire.
    pub fn disarm(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(self.stdin.take()); // its `cat` sees EOF and exits
    }
}
