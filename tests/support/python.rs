//! Running Python scripts with the repo's venv, to drive traffic with real FHIR clients.
//!
//! The venv (made by `scripts/test-env.sh`) has `fhirclient` 4.4.0 (`from fhirclient import
//! client`; `FHIRClient(settings={'app_id': ..., 'api_base': BASE})`) and `fhirpy` 2.3.1
//! (`from fhirpy import SyncFHIRClient`), plus `requests` and `httpx`. Both clients follow
//! `next` links, so a search returns every page.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::venv_dir;

/// Default limit for [`run_python`]; a script still running then is killed and the test fails.
pub const PYTHON_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `script` with the venv's Python as `python -c SCRIPT ARGS...` (so `sys.argv[1:]` is
/// `args`), with `env` added to the environment, and returns its exit status and output.
/// Does not check the exit status: see [`assert_success`]. Panics if the venv is missing or
/// the script runs longer than [`PYTHON_TIMEOUT`].
pub fn run_python(script: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    run_python_with_timeout(script, args, env, PYTHON_TIMEOUT)
}

/// [`run_python`] with an explicit time limit.
pub fn run_python_with_timeout(
    script: &str,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Output {
    let python = venv_dir().join("bin").join("python");
    let mut child = Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(args)
        .envs(env.iter().copied())
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        // loopback test traffic must never go through a proxy from the environment
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", python.display()));

    // Drain both pipes on threads so a chatty script cannot block on a full pipe.
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });

    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                let stdout = out.join().unwrap_or_default();
                let stderr = err.join().unwrap_or_default();
                panic!(
                    "python script ran longer than {timeout:?} and was killed\n--- stdout\n{}\n--- stderr\n{}",
                    String::from_utf8_lossy(&stdout),
                    String::from_utf8_lossy(&stderr)
                );
            }
            Err(e) => panic!("wait for python: {e}"),
        }
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Panics with the script's output unless it exited 0; returns its stdout as text.
pub fn assert_success(output: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what}: python exited with {}\n--- stdout\n{stdout}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
