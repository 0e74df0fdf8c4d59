//! The WORM archive stand-in: LocalStack 4.13.1 S3 (community, `localstack-core` from the repo's
//! `.venv-localstack`), which enforces Object Lock (see DESIGN.md section 10 and
//! `tests/S3-NOTES.md` for what it checks and what it does not).
//!
//! Each [`S3Server`] is one `python -m localstack.runtime.main` process (no Docker) with
//! `SERVICES=s3`, bound to a free `127.0.0.1` port, in its own temp folder holding its state
//! (`fs/`, LocalStack's `FILESYSTEM_ROOT`; `tmp/`, its `TMPDIR`) and `localstack.log` (its
//! stdout and stderr). Ready in about 1 s, 130 to 160 MB of memory.
//!
//! Clients: [`S3Server::endpoint`] (`http://127.0.0.1:PORT`) with path-style addressing,
//! region `us-east-1` and any access key and secret ([`ACCESS_KEY`], [`SECRET_KEY`]).
//! [`S3Server::create_locked_bucket`] makes a bucket with Object Lock (and so versioning)
//! enabled; [`run_boto3`] runs a script with the venv's Python, which has boto3 1.42.34.
//!
//! Outages. LocalStack community keeps S3 only in memory: a restarted process comes back empty,
//! `PERSISTENCE=1` or not (measured: the state folder stays empty and the object is gone; the
//! snapshot code is LocalStack Pro's). So there is no `stop()`/`restart()`; the server stays up
//! and two simulations keep its objects:
//! - [`S3Server::refuse_connections`] / [`S3Server::accept_connections`]: `endpoint()` is a small
//!   TCP forwarder in the test process in front of LocalStack. Refusing closes its listening
//!   socket (a connect gets `ECONNREFUSED`, as from a stopped server) and cuts every open
//!   connection through it (in-flight requests fail); accepting binds the same port again.
//! - [`S3Server::pause`] / [`S3Server::resume`]: `SIGSTOP` / `SIGCONT` to LocalStack's process
//!   group (a hung server). Connections are still accepted by the kernel but nothing is answered,
//!   so clients time out; requests still waiting when it resumes are answered then.
//!
//! [`S3Server::direct_endpoint`] bypasses the forwarder (e.g. to look at the state during a
//! refused-connections outage).
//!
//! Lifetime: `Drop` kills the process (and its group) by PID and removes the folder. Every
//! server also gets a watchdog, as in [`super::fhir`]: a `sh` whose stdin is a pipe held by the
//! test process, which kills the group when the test process exits however it exits. LocalStack
//! runs in a process group of its own (so `SIGSTOP` reaches it and nothing else).
//!
//! Startup details:
//! - `OVERRIDE_IN_DOCKER=0` is set besides DESIGN's variables: in a container LocalStack thinks
//!   it runs in its own image and ignores `FILESYSTEM_ROOT`, writing to `/var/lib/localstack`
//!   (needs root, shared by every instance).
//! - The service catalog that `scripts/test-env.sh` prebuilds into
//!   `.venv-localstack/localstack-catalog/` is linked into the folder; without it each start
//!   builds its own (2.5 s slower, 350 MB more memory).
//! - A LocalStack whose port was taken in the meantime does not exit: it says `Ready.` and
//!   listens nowhere, while the health check is answered by whoever has the port. So readiness
//!   also checks, in `/proc`, that the listening socket is this process's; if not, it retries on
//!   another port.
//! - LocalStack's S3 spools objects over 512 KiB to `/tmp/localstack-s3-storage/<bucket>/`, a
//!   path fixed in its code and shared by every instance on the machine (anonymous temp files in
//!   per-bucket folders; deleting a bucket removes its folder). Tests that delete buckets should
//!   use bucket names of their own.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use super::python::assert_success;
use super::{free_port, http_client, localstack_venv_dir, LOOPBACK};

/// Any key works (LocalStack does not check SigV4 signatures); these are its conventional ones.
pub const ACCESS_KEY: &str = "test";
pub const SECRET_KEY: &str = "test";
pub const REGION: &str = "us-east-1";

/// The environment a gateway (or any AWS SDK client) needs to reach the test S3 server: its
/// fixed credentials and region, and no instance-metadata lookup.
pub fn aws_env() -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
        ("AWS_REGION".into(), REGION.into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ]
}

/// How long LocalStack may take to report `"s3": "running"` (it takes about 1 s; 3.5 s without
/// the prebuilt catalog).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// A port taken between [`free_port`] and LocalStack's bind is retried this many times.
const START_ATTEMPTS: usize = 3;
/// Default limit for [`run_boto3`].
pub const BOTO3_TIMEOUT: Duration = Duration::from_secs(120);

/// Run as `sh -c WATCHDOG_SCRIPT name PID DIR` with stdin a pipe from the test process. `cat`
/// returns when the test process has exited; then kill LocalStack's process group (its PGID is
/// its PID) and the process itself, wait until it is gone or a zombie, at most 5 s, and remove
/// its folder.
const WATCHDOG_SCRIPT: &str = r#"cat >/dev/null
kill -s KILL -- "-$1" 2>/dev/null
kill -s KILL "$1" 2>/dev/null
i=0
while [ "$i" -lt 100 ] && kill -0 "$1" 2>/dev/null; do
    case "$(cat "/proc/$1/stat" 2>/dev/null)" in *") Z "*) break ;; esac
    i=$((i + 1))
    sleep 0.05
done
rm -rf "$2""#;

/// A boto3 client for `ENDPOINT` as the scripts of this module make it: path-style, one attempt
/// (no retries hiding an outage), short connect timeout. Prepend to a script run with
/// [`run_boto3`] and pass the endpoint as the first argument.
pub const BOTO3_PRELUDE: &str = r#"
import sys
import boto3
from botocore.config import Config
ENDPOINT = sys.argv[1]
def client(connect_timeout=5, read_timeout=30):
    return boto3.client(
        "s3", endpoint_url=ENDPOINT, region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key="test",
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1},
                      connect_timeout=connect_timeout, read_timeout=read_timeout))
s3 = client()
"#;

/// A running LocalStack S3, killed by PID on drop.
pub struct S3Server {
    /// LocalStack's own port.
    backend_port: u16,
    front: Front,
    dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    paused: bool,
    watchdog: Option<super::Watchdog>,
    /// Removes the folder on drop.
    _tempdir: Option<tempfile::TempDir>,
}

impl S3Server {
    /// Starts a fresh, empty LocalStack S3 on a free loopback port and waits until
    /// `GET /_localstack/health` shows `"s3": "running"`. Panics (with the log's tail) if it does
    /// not come up, and with instructions if `.venv-localstack` is missing.
    pub fn start() -> S3Server {
        let venv = localstack_venv_dir();
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            match S3Server::try_start(&venv) {
                Ok(server) => return server,
                Err(StartError::PortTaken(msg)) => last_error = msg,
                Err(StartError::Failed(msg)) => panic!("{msg}"),
            }
        }
        panic!("LocalStack could not bind a free port in {START_ATTEMPTS} attempts:\n{last_error}");
    }

    /// `http://127.0.0.1:PORT`, the address clients use (through the forwarder that
    /// [`S3Server::refuse_connections`] switches off). Use path-style addressing.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.front.port)
    }

    /// The port of [`S3Server::endpoint`].
    pub fn port(&self) -> u16 {
        self.front.port
    }

    /// LocalStack's own address, bypassing the forwarder (still paused by [`S3Server::pause`]).
    pub fn direct_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.backend_port)
    }

    /// LocalStack's OS process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// LocalStack's resident memory in KiB (`VmRSS`), 0 if unknown.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// The server's folder (fs/, tmp/, localstack.log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last `max_bytes` of LocalStack's log (it logs one line per S3 request, e.g.
    /// `AWS s3.PutObject => 412 (PreconditionFailed)`).
    pub fn log_tail(&self, max_bytes: u64) -> String {
        tail(&self.log_path, max_bytes)
    }

    /// Creates `name` with Object Lock enabled (which turns on versioning), with boto3, and
    /// checks that LocalStack reports the lock configuration as `Enabled`. Panics on failure.
    pub fn create_locked_bucket(&self, name: &str) {
        let script = format!(
            "{BOTO3_PRELUDE}\n{}",
            r#"
name = sys.argv[2]
s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
lock = s3.get_object_lock_configuration(Bucket=name)["ObjectLockConfiguration"]
assert lock.get("ObjectLockEnabled") == "Enabled", lock
assert s3.get_bucket_versioning(Bucket=name).get("Status") == "Enabled"
"#
        );
        let out = run_boto3(&script, &[&self.direct_endpoint(), name]);
        assert_success(
            &out,
            &format!(
                "create Object Lock bucket {name} at {}",
                self.direct_endpoint()
            ),
        );
    }

    /// Makes [`S3Server::endpoint`] refuse connections and cuts the open ones (a stopped server),
    /// while LocalStack keeps running with its objects. Idempotent.
    pub fn refuse_connections(&mut self) {
        self.front.close();
    }

    /// Ends [`S3Server::refuse_connections`]: binds the same port again. Panics if another
    /// process took the port meanwhile. Idempotent.
    pub fn accept_connections(&mut self) {
        self.front.open().unwrap_or_else(|e| {
            panic!(
                "S3 forwarder: re-binding 127.0.0.1:{} failed: {e}",
                self.front.port
            )
        });
    }

    /// Whether [`S3Server::endpoint`] accepts connections.
    pub fn is_accepting(&self) -> bool {
        self.front.is_open()
    }

    /// Freezes LocalStack (`SIGSTOP` to its process group): connections are accepted but nothing
    /// is answered until [`S3Server::resume`]. Idempotent.
    pub fn pause(&mut self) {
        if !self.paused {
            signal_group(self.pid(), "STOP");
            self.paused = true;
        }
    }

    /// Ends [`S3Server::pause`] (`SIGCONT`); requests that waited are answered now. Idempotent.
    pub fn resume(&mut self) {
        if self.paused {
            signal_group(self.pid(), "CONT");
            self.paused = false;
        }
    }

    /// Whether the server is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    fn try_start(venv: &Path) -> Result<S3Server, StartError> {
        let tempdir = tempfile::Builder::new()
            .prefix("auditgate-s3-")
            .tempdir()
            .map_err(|e| StartError::Failed(format!("create temp dir: {e}")))?;
        let dir = tempdir.path().to_path_buf();
        let fs_root = dir.join("fs");
        let tmp = dir.join("tmp");
        let static_libs = fs_root.join("usr/lib/localstack");
        for d in [&tmp, &static_libs] {
            std::fs::create_dir_all(d)
                .map_err(|e| StartError::Failed(format!("create {}: {e}", d.display())))?;
        }
        link_catalog(venv, &static_libs);

        let port = free_port();
        let log_path = dir.join("localstack.log");
        let log = File::create(&log_path)
            .map_err(|e| StartError::Failed(format!("create {}: {e}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(|e| StartError::Failed(format!("dup log fd: {e}")))?;
        let python = venv.join("bin").join("python");

        let mut cmd = Command::new(&python);
        cmd.args(["-m", "localstack.runtime.main"])
            .current_dir(&dir)
            // only the settings below: nothing from the environment (DEBUG, PERSISTENCE,
            // SERVICES, AWS_*, proxies...) changes how the server behaves
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &dir)
            .env("TMPDIR", &tmp)
            .env("LANG", "C.UTF-8")
            .env("SERVICES", "s3")
            .env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("GATEWAY_SERVER", "hypercorn")
            .env("DNS_ADDRESS", "0")
            .env("SKIP_SSL_CERT_DOWNLOAD", "1")
            .env("DISABLE_EVENTS", "1")
            .env("EAGER_SERVICE_LOADING", "1")
            .env("LOCALSTACK_VOLUME_DIR", &dir)
            .env("FILESYSTEM_ROOT", &fs_root)
            .env("OVERRIDE_IN_DOCKER", "0")
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            // its own process group, for pause()/resume() and the watchdog's group kill
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| StartError::Failed(format!("spawn {}: {e}", python.display())))?;
        let pid = child.id();

        let watchdog = super::Watchdog::spawn(WATCHDOG_SCRIPT, "auditgate-s3-watchdog", pid, &dir);
        // From here on, Drop cleans up whatever happens.
        let mut server = S3Server {
            backend_port: port,
            front: Front::new(SocketAddr::from((LOOPBACK, port))),
            dir,
            log_path,
            child: Some(child),
            paused: false,
            watchdog: None,
            _tempdir: Some(tempdir),
        };
        server.watchdog =
            Some(watchdog.map_err(|e| StartError::Failed(format!("spawn watchdog sh: {e}")))?);

        server.wait_ready()?;
        server
            .front
            .open()
            .map_err(|e| StartError::Failed(format!("S3 forwarder: bind 127.0.0.1:0: {e}")))?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<(), StartError> {
        let client = http_client();
        let health = format!("{}/_localstack/health", self.direct_endpoint());
        let started = Instant::now();
        let mut last = String::from("(no answer)");
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(StartError::Failed(format!(
                    "LocalStack exited with {status} before it was ready; log ({}):\n{}",
                    self.log_path.display(),
                    self.log_tail(4000)
                )));
            }
            if let Ok(resp) = client.get(&health).timeout(Duration::from_secs(2)).send() {
                let body = resp.text().unwrap_or_default();
                let running = serde_json::from_str::<serde_json::Value>(&body)
                    .map(|v| v["services"]["s3"] == "running")
                    .unwrap_or(false);
                if running {
                    if listens_on(self.pid(), self.backend_port) {
                        return Ok(());
                    }
                    // Someone else answers on our port; ours bound nothing and never exits.
                    return Err(StartError::PortTaken(format!(
                        "127.0.0.1:{} is answered by another process; LocalStack's log:\n{}",
                        self.backend_port,
                        self.log_tail(2000)
                    )));
                }
                last = body;
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(StartError::Failed(format!(
                    "LocalStack did not report s3 running at {health} within {START_TIMEOUT:?} \
                     (last answer: {last}); log ({}):\n{}",
                    self.log_path.display(),
                    self.log_tail(4000)
                )));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // The watchdog first, so it cannot fire on a PID that is reaped (and maybe reused).
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.disarm();
        }
        self.front.close();
        if let Some(mut child) = self.child.take() {
            // SIGKILL works on a stopped (paused) process too. The group first (LocalStack
            // starts no helpers for S3 alone, but whatever it started goes too), while the PID
            // cannot have been reused: the child is not reaped before wait().
            signal_group(child.id(), "KILL");
            let _ = child.kill();
            let _ = child.wait();
        }
        // _tempdir drops after this and removes the folder.
    }
}

enum StartError {
    /// Another process has LocalStack's port.
    PortTaken(String),
    Failed(String),
}

/// Runs `script` with `.venv-localstack`'s Python (boto3 1.42.34) as `python -c SCRIPT ARGS...`,
/// like [`super::run_python`] does with `.venv`. Does not check the exit status: see
/// [`assert_success`]. Panics if the venv is missing or the script runs longer than
/// [`BOTO3_TIMEOUT`].
pub fn run_boto3(script: &str, args: &[&str]) -> Output {
    run_boto3_with_timeout(script, args, BOTO3_TIMEOUT)
}

/// [`run_boto3`] with an explicit time limit.
pub fn run_boto3_with_timeout(script: &str, args: &[&str], timeout: Duration) -> Output {
    let python = localstack_venv_dir().join("bin").join("python");
    // coreutils `timeout` bounds the script (SIGTERM, then SIGKILL 5 s later).
    let out = Command::new("timeout")
        .arg("--kill-after=5")
        .arg(format!("{}", timeout.as_secs().max(1)))
        .arg(&python)
        .arg("-c")
        .arg(script)
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        // loopback test traffic must never go through a proxy from the environment
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        // nor pick up credentials or settings meant for real AWS
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_CONFIG_FILE")
        .env_remove("AWS_SHARED_CREDENTIALS_FILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_S3")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn timeout {}: {e}", python.display()));
    if out.status.code() == Some(124) || out.status.code() == Some(137) {
        panic!(
            "boto3 script ran longer than {timeout:?} and was killed\n--- stdout\n{}\n--- stderr\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Links the prebuilt service catalog(s) into LocalStack's static-libs folder, where it loads
/// them read-only. Without one it still starts, building its own.
fn link_catalog(venv: &Path, static_libs: &Path) {
    let catalog = venv.join("localstack-catalog");
    let Ok(entries) = std::fs::read_dir(&catalog) else {
        eprintln!(
            "S3Server: no prebuilt catalog in {} (rerun scripts/test-env.sh); LocalStack builds \
             its own: ~2.5 s slower, ~350 MB more memory",
            catalog.display()
        );
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "dill") {
            let _ = std::os::unix::fs::symlink(&path, static_libs.join(entry.file_name()));
        }
    }
}

/// Sends `SIG` to the process group `pgid` (`kill -s SIG -- -PGID`). Panics if `kill` fails
/// for a group that should exist (not for KILL, used while tearing down).
fn signal_group(pgid: u32, sig: &str) {
    if pgid == 0 {
        return;
    }
    let status = Command::new("sh")
        .args(["-c", r#"kill -s "$1" -- "-$2""#, "auditgate-s3-kill", sig])
        .arg(pgid.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if sig != "KILL" {
        let ok = status.map(|s| s.success()).unwrap_or(false);
        assert!(
            ok,
            "kill -s {sig} -- -{pgid} failed (is LocalStack still running?)"
        );
    }
}

/// Whether process `pid` owns a TCP socket listening on `port` (IPv4, any address): the inode of
/// the LISTEN entry in `/proc/net/tcp` is one of `/proc/PID/fd/*`.
fn listens_on(pid: u32, port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port_hex = format!(":{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            (f.len() > 9 && f[1].ends_with(&port_hex) && f[3] == "0A").then(|| f[9].to_string())
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .map(|target| {
                let t = target.to_string_lossy();
                inodes.iter().any(|i| t == format!("socket:[{i}]"))
            })
            .unwrap_or(false)
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

/// A TCP forwarder on `127.0.0.1:port` to LocalStack, one thread per direction per connection,
/// that can stop listening (and cut its connections) and listen again on the same port.
struct Front {
    /// 0 until the first `open()` picks a port; kept across close/open.
    port: u16,
    shared: Arc<FrontShared>,
    acceptor: Option<JoinHandle<()>>,
}

struct FrontShared {
    backend: SocketAddr,
    closing: AtomicBool,
    next_id: AtomicU64,
    /// Open connections (client side, backend side), to cut on close.
    conns: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
}

impl Front {
    fn new(backend: SocketAddr) -> Front {
        Front {
            port: 0,
            shared: Arc::new(FrontShared {
                backend,
                closing: AtomicBool::new(false),
                next_id: AtomicU64::new(0),
                conns: Mutex::new(HashMap::new()),
            }),
            acceptor: None,
        }
    }

    fn is_open(&self) -> bool {
        self.acceptor.is_some()
    }

    /// Listens (on a new port the first time, on the same port after that).
    fn open(&mut self) -> std::io::Result<()> {
        if self.acceptor.is_some() {
            return Ok(());
        }
        // std sets SO_REUSEADDR, so the port is free again at once (its old connections in
        // TIME_WAIT do not block the bind); retry briefly in case of a transient EADDRINUSE.
        let deadline = Instant::now() + Duration::from_secs(2);
        let listener = loop {
            match TcpListener::bind((LOOPBACK, self.port)) {
                Ok(l) => break l,
                Err(_) if Instant::now() < deadline && self.port != 0 => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        };
        self.port = listener.local_addr()?.port();
        self.shared.closing.store(false, Ordering::SeqCst);
        let shared = Arc::clone(&self.shared);
        self.acceptor = Some(std::thread::spawn(move || accept_loop(listener, shared)));
        Ok(())
    }

    /// Stops listening (the port refuses connections) and cuts every open connection.
    fn close(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.shared.closing.store(true, Ordering::SeqCst);
        // Wake the blocking accept(); the loop sees `closing` and drops the listener.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from((LOOPBACK, self.port)),
            Duration::from_secs(2),
        );
        let _ = acceptor.join();
        for (_, (client, backend)) in self.shared.conns.lock().unwrap().drain() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = backend.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<FrontShared>) {
    for conn in listener.incoming() {
        if shared.closing.load(Ordering::SeqCst) {
            break; // drops `conn` and the listener: the port refuses from now on
        }
        let Ok(client) = conn else { continue };
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || forward(client, shared));
    }
}

fn forward(client: TcpStream, shared: Arc<FrontShared>) {
    let Ok(backend) = TcpStream::connect_timeout(&shared.backend, Duration::from_secs(5)) else {
        return; // dropping `client` closes it: the request fails like a dead server's
    };
    let _ = client.set_nodelay(true);
    let _ = backend.set_nodelay(true);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (Ok(c2), Ok(b2), Ok(c3), Ok(b3)) = (
        client.try_clone(),
        backend.try_clone(),
        client.try_clone(),
        backend.try_clone(),
    ) else {
        return;
    };
    {
        let mut conns = shared.conns.lock().unwrap();
        if shared.closing.load(Ordering::SeqCst) {
            return; // closed while connecting: drop both
        }
        conns.insert(id, (c3, b3));
    }
    // Client to LocalStack: at the client's EOF, pass the half-close on (LocalStack still
    // answers). LocalStack to client: when LocalStack is done (it closes after each response)
    // or either side fails, the connection is over: close both sides, which also ends the
    // other thread.
    let upstream = std::thread::spawn(move || {
        if std::io::copy(&mut &c2, &mut &b2).is_ok() {
            let _ = b2.shutdown(Shutdown::Write);
        } else {
            let _ = b2.shutdown(Shutdown::Both);
        }
    });
    let _ = std::io::copy(&mut &backend, &mut &client);
    let _ = client.shutdown(Shutdown::Both);
    let _ = backend.shutdown(Shutdown::Both);
    let _ = upstream.join();
    shared.conns.lock().unwrap().remove(&id);
}
