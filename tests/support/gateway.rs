//! The real `auditgate` binary as a test fixture: config written to a temp dir, process started
//! on a free loopback port, journal read back, process killed by PID.
//!
//! Every gateway here trusts four token issuers with keys the tests generate:
//! RS256 and ES256 from PEM files, HS256 from an environment variable, and RS256 from a JWKS
//! URL served on loopback (so tests can rotate keys). `127.0.0.0/8` is a trusted proxy, so a test
//! can send `X-Forwarded-For` and see the walk; `X-Device-Id` carries the device ID.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use auditgate::record::Record;
use serde_json::{json, Value};

use super::keys::{self, KeyKind, TestKey};
use super::{free_port, wait_for_port, JwksServer};

pub const AUDIENCE: &str = "auditgate-tests";
pub const ISS_RSA: &str = "https://idp.test/rsa";
pub const ISS_EC: &str = "https://idp.test/ec";
pub const ISS_HS: &str = "https://idp.test/hs";
pub const ISS_JWKS: &str = "https://idp.test/jwks";
pub const HS_SECRET: &str = "auditgate-test-hs256-secret-of-at-least-32-bytes!";
pub const HS_ENV: &str = "AUDITGATE_TEST_HS256_SECRET";

/// The keys every test gateway trusts.
pub struct TestKeys {
    pub rsa: TestKey,
    pub ec: TestKey,
    pub jwks_key: TestKey,
}

impl TestKeys {
    pub fn new() -> TestKeys {
        TestKeys {
            rsa: TestKey::rsa(0),
            ec: TestKey::ec_p256(),
            jwks_key: TestKey::rsa(1).with_kid("jwks-1"),
        }
    }
}

/// Claims for a user of an issuer, valid for five minutes.
pub fn claims_for(iss: &str, sub: &str) -> Value {
    let mut c = keys::claims(iss, AUDIENCE, sub);
    c["name"] = json!("Dr. Test");
    c["roles"] = json!(["physician"]);
    c["client_id"] = json!("test-app");
    c["purpose_of_use"] = json!("TREAT");
    c
}

/// A running gateway.
pub struct Gateway {
    child: Option<Child>,
    pub port: u16,
    /// The admin listener's port (`/metrics`, `/healthz`, `/readyz`).
    pub admin_port: u16,
    pub dir: tempfile::TempDir,
    pub journal: PathBuf,
    pub config_path: PathBuf,
    pub jwks: JwksServer,
    pub keys: TestKeys,
    log_path: PathBuf,
    env: Vec<(String, String)>,
}

/// Options for a test gateway.
pub struct GatewayOptions {
    /// The upstream's `host:port`.
    pub upstream: String,
    /// Extra keys for the `[journal]` section, e.g. `segment_max_bytes = 4096`.
    pub journal_toml: String,
    /// Extra keys for the `[server]` section, e.g. `shutdown_delay_secs = 2`.
    pub server_toml: String,
    /// Extra keys for the `[admin]` section, e.g. `archive_unreachable_grace_secs = 2`.
    pub admin_toml: String,
    /// `network.trusted_proxies` (default `["127.0.0.0/8"]`: the tests' own loopback client
    /// is a trusted proxy, so a test can send `X-Forwarded-For` and see the walk).
    pub trusted_proxies: Vec<String>,
    /// Extra keys for the `[network]` section.
    pub network_toml: String,
    /// `http` (default) or `https` for the upstream URL.
    pub upstream_scheme: &'static str,
    /// Extra keys for the `[upstream]` section.
    pub upstream_toml: String,
    /// Unmatched policy: `inspect` (the default), `deny` or `stream`.
    pub unmatched: &'static str,
    /// The `[records]` section's keys. Default: flood rates far above what any test sends, so
    /// every refused request has its own record (the flood tests set their own).
    pub records_toml: String,
    /// Journal directory (default: inside the gateway's temp dir).
    pub journal_dir: Option<PathBuf>,
    /// Listen port (default: a free one).
    pub port: Option<u16>,
    /// Extra sections appended to the config, e.g. an `[archive]` section.
    pub extra_toml: String,
    /// Extra environment variables for the gateway process (e.g. AWS credentials).
    pub env: Vec<(String, String)>,
    /// `server.node` (default `test-gw`).
    pub node: String,
}

impl GatewayOptions {
    pub fn new(upstream: impl Into<String>) -> GatewayOptions {
        GatewayOptions {
            upstream: upstream.into(),
            journal_toml: String::new(),
            server_toml: String::new(),
            admin_toml: String::new(),
            trusted_proxies: vec!["127.0.0.0/8".into()],
            network_toml: String::new(),
            upstream_scheme: "http",
            upstream_toml: String::new(),
            unmatched: "inspect",
            records_toml: "unauthenticated_per_ip_per_sec = 100000\nunauthenticated_burst = 100000\nunauthenticated_total_per_sec = 100000\n".into(),
            journal_dir: None,
            port: None,
            extra_toml: String::new(),
            env: Vec::new(),
            node: "test-gw".into(),
        }
    }
}

fn write_pem(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, pem).unwrap();
    p
}

impl Gateway {
    /// Start a gateway in front of `opts.upstream`; panics (with its log) if it does not listen.
    pub fn start(opts: GatewayOptions) -> Gateway {
        Self::try_start(opts).unwrap_or_else(|log| panic!("auditgate did not start:\n{log}"))
    }

    /// Start a gateway; `Err(its log)` if the process exits instead of listening.
    pub fn try_start(opts: GatewayOptions) -> Result<Gateway, String> {
        // A free port can be taken by another test's server between choosing it and binding
        // it; the gateway then refuses to start ("cannot listen on"): choose again.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start_once(&opts) {
                Err(log)
                    if attempt < 4 && opts.port.is_none() && log.contains("cannot listen on") =>
                {
                    continue
                }
                other => return other,
            }
        }
    }

    fn try_start_once(opts: &GatewayOptions) -> Result<Gateway, String> {
        let keys = TestKeys::new();
        let jwks = JwksServer::start(&keys::jwks(&[&keys.jwks_key]));
        let dir = tempfile::tempdir().unwrap();
        let port = opts.port.unwrap_or_else(free_port);
        let admin_port = free_port();
        let journal = opts
            .journal_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("journal"));
        let rsa_pem = write_pem(dir.path(), "rsa.pub.pem", keys.rsa.public_pem());
        let ec_pem = write_pem(dir.path(), "ec.pub.pem", keys.ec.public_pem());
        let rules = super::repo_root().join("rules/fhir-r4.toml");
        let config = format!(
            r#"
[server]
node = "{node}"
listen = ["127.0.0.1:{port}"]
threads = 2
drain_timeout_secs = 10
{server_toml}
pid_file = "{dir}/pid"
upgrade_sock = "{dir}/upgrade.sock"

[upstream]
url = "{upstream_scheme}://{upstream}"
connect_timeout_ms = 1000
read_timeout_ms = 20000
{upstream_toml}

[journal]
dir = "{journal}"
{journal_toml}

[checkpoint]
key_file = "{journal}.checkpoint.key"
create_key_if_missing = true
interval_secs = 1
heartbeat_secs = 2

[identity]
break_glass_header = "X-Break-Glass"
jwks_min_refetch_secs = 1
[[identity.issuers]]
issuer = "{ISS_RSA}"
audiences = ["{AUDIENCE}"]
algorithms = ["RS256"]
pem_keys = [{{ path = "{rsa_pem}" }}]
[[identity.issuers]]
issuer = "{ISS_EC}"
audiences = ["{AUDIENCE}"]
algorithms = ["ES256"]
pem_keys = [{{ path = "{ec_pem}" }}]
[[identity.issuers]]
issuer = "{ISS_HS}"
audiences = ["{AUDIENCE}"]
algorithms = ["HS256"]
hmac_secrets = [{{ env_var = "{HS_ENV}" }}]
[[identity.issuers]]
issuer = "{ISS_JWKS}"
audiences = ["{AUDIENCE}"]
algorithms = ["RS256"]
jwks_urls = ["{jwks_url}"]

[rules]
files = ["{rules}"]
unmatched = "{unmatched}"

[network]
trusted_proxies = {trusted_proxies}
device_id_header = "X-Device-Id"
{network_toml}

[records]
{records_toml}

[log]
format = "json"
level = "info"

[admin]
listen = "127.0.0.1:{admin_port}"
{admin_toml}

{extra_toml}
"#,
            dir = dir.path().display(),
            node = opts.node,
            upstream = opts.upstream,
            journal = journal.display(),
            journal_toml = opts.journal_toml,
            server_toml = opts.server_toml,
            admin_toml = opts.admin_toml,
            trusted_proxies = serde_json::to_string(&opts.trusted_proxies).unwrap(),
            network_toml = opts.network_toml,
            upstream_scheme = opts.upstream_scheme,
            upstream_toml = opts.upstream_toml,
            rsa_pem = rsa_pem.display(),
            ec_pem = ec_pem.display(),
            jwks_url = jwks.url(),
            rules = rules.display(),
            unmatched = opts.unmatched,
            records_toml = opts.records_toml,
            extra_toml = opts.extra_toml,
        );
        let config_path = dir.path().join("auditgate.toml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("gateway.log");
        let mut gw = Gateway {
            child: None,
            port,
            admin_port,
            dir,
            journal,
            config_path,
            jwks,
            keys,
            log_path,
            env: opts.env.clone(),
        };
        gw.try_spawn()?;
        Ok(gw)
    }

    /// Start (or restart) the process with the same config and port.
    pub fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("auditgate did not listen on {}:\n{log}", self.port);
        }
    }

    /// Start (or restart) the process; `Err(its log)` if it exits or does not listen in 20 s.
    pub fn try_spawn(&mut self) -> Result<(), String> {
        self.child = Some(self.run_process(&[]));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !wait_for_port(self.port, Duration::from_millis(200)) {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(format!("exited with {status}:\n{}", self.log()));
            }
            if std::time::Instant::now() >= deadline {
                return Err(format!("not listening after 20 s:\n{}", self.log()));
            }
        }
        // The port answering may be someone else's listener: the process must also still run
        // once its start-up checks (which come before the listeners) are done.
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(300)
            && !self.log().contains("auditgate listening")
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            self.child = None;
            return Err(format!("exited with {status}:\n{}", self.log()));
        }
        Ok(())
    }

    /// The gateway's own log so far (stdout and stderr).
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// GET a path on the admin listener: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let resp = super::http_client()
            .get(format!("http://127.0.0.1:{}{path}", self.admin_port))
            .timeout(Duration::from_secs(10))
            .send()
            .unwrap_or_else(|e| panic!("admin {path}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.text().unwrap())
    }

    /// The value of one series from `/metrics`, e.g.
    /// `auditgate_requests_total{action="R",outcome="2xx"}`; 0 when it is absent.
    pub fn metric(&self, series: &str) -> f64 {
        let (status, text) = self.admin_get("/metrics");
        assert_eq!(status, 200, "/metrics answers");
        metric_value(&text, series).unwrap_or(0.0)
    }

    /// Start a second process on the same config with `run --upgrade` (it takes the listening
    /// sockets once this one gets SIGQUIT); the caller waits for the old one to exit, then
    /// hands the new one over with [`Gateway::adopt`].
    pub fn start_upgrade(&self) -> Child {
        self.run_process(&["--upgrade"])
    }

    /// Start `auditgate run [EXTRA] --config CONFIG`, its output appended to the log.
    fn run_process(&self, extra: &[&str]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_auditgate"))
            .arg("run")
            .args(extra)
            .arg("--config")
            .arg(&self.config_path)
            .env(HS_ENV, HS_SECRET)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the auditgate binary")
    }

    /// Make `child` the gateway's process (after an upgrade).
    pub fn adopt(&mut self, child: Child) {
        assert!(self.child.is_none(), "the old process is still running");
        self.child = Some(child);
    }

    /// The process ID of the running gateway.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("gateway running").id()
    }

    /// Send a signal (`HUP`, `TERM`...) to the gateway process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name}");
    }

    /// Wait for the process to exit on its own, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Some(status);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// A token for `sub` from the RS256 issuer.
    pub fn token(&self, sub: &str) -> String {
        keys::mint(
            KeyKind::Rsa.default_alg(),
            &self.keys.rsa,
            &claims_for(ISS_RSA, sub),
        )
    }

    /// Every record in the journal, in order.
    pub fn records(&self) -> Vec<Record> {
        read_journal(&self.journal)
    }

    /// Kill the process with SIGKILL and wait for it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Send SIGTERM and wait up to `timeout` for exit; returns the exit status if it exited.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
        // Every test's gateway log is checked for PHI once its traffic is done (a test that
        // already failed is not piled on).
        if !std::thread::panicking() {
            if let Err(leak) = check_log_has_no_phi(&self.log(), &self.journal) {
                panic!("the gateway's own log holds PHI: {leak}");
            }
        }
    }
}

/// The gateway's operational log must hold no token, user ID, patient ID, path or query: only
/// the journal may. Checked against everything the journal says the traffic carried.
pub fn check_log_has_no_phi(log: &str, journal: &Path) -> Result<(), String> {
    use auditgate::record::Who;
    // Any JWT: a base64url JSON header (`eyJ...`), a dot, a payload, a dot. (`eyJ` alone turns
    // up by chance in base64 text such as the checkpoint public key the log names.)
    if let Some(at) = find_jwt(log) {
        return Err(format!("a token: ...{}...", excerpt(log, at)));
    }
    // Leniently: tamper tests leave records that no longer parse.
    let mut records: Vec<Record> = Vec::new();
    for (_, path) in auditgate::journal::list_segments(journal).unwrap_or_default() {
        let bytes = std::fs::read(&path).unwrap_or_default();
        let used = &bytes[..auditgate::journal::used_len(&bytes)];
        for line in String::from_utf8_lossy(used).lines() {
            if let Ok(r) = serde_json::from_str(line) {
                records.push(r);
            }
        }
    }
    let mut secrets: Vec<(&str, String)> = Vec::new();
    for r in &records {
        if let Who::Authenticated(a) = &r.event.who {
            secrets.push(("user ID", a.user.clone()));
        }
        for p in &r.event.patients {
            secrets.push(("patient ID", p.id.clone()));
        }
        if r.event.path.len() > 1 {
            secrets.push(("path", r.event.path.clone()));
        }
        if let Some(q) = &r.event.query {
            secrets.push(("query", q.clone()));
        }
    }
    secrets.sort();
    secrets.dedup();
    for (what, value) in secrets {
        // Short values ("1", "pat") would match innocent text; the quoted and `=` forms are
        // how a structured log would carry them.
        let needles = if value.len() >= 6 {
            vec![value.clone()]
        } else {
            vec![
                format!("\"{value}\""),
                format!("={value} "),
                format!("/{value}"),
            ]
        };
        for needle in needles {
            // A match must end where the value ends (`/1` is not in `//127.0.0.1`).
            let mut from = 0;
            while let Some(i) = log[from..].find(&needle) {
                let at = from + i;
                let after = log[at + needle.len()..].chars().next();
                if !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
                    return Err(format!("a {what} ({value:?}): ...{}...", excerpt(log, at)));
                }
                from = at + needle.len();
            }
        }
    }
    Ok(())
}

/// Where a JWT-shaped string starts in `text`: `eyJ` opening a run of base64url characters and
/// dots that holds at least a header and a payload (`eyJ...` `.` `...`).
fn find_jwt(text: &str) -> Option<usize> {
    let in_run = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let mut from = 0;
    while let Some(i) = text[from..].find("eyJ") {
        let at = from + i;
        let run: String = text[at..].chars().take_while(|c| in_run(*c)).collect();
        let parts: Vec<&str> = run.split('.').collect();
        if parts.len() >= 2 && parts[0].len() >= 10 && !parts[1].is_empty() {
            return Some(at);
        }
        from = at + 3;
    }
    None
}

fn excerpt(text: &str, at: usize) -> String {
    let mut start = at.saturating_sub(80);
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = (at + 80).min(text.len());
    while !text.is_char_boundary(end) {
        end += 1;
    }
    text[start..end].to_string()
}

/// Read every record of a journal directory, in order.
pub fn read_journal(dir: &Path) -> Vec<Record> {
    let mut out = Vec::new();
    for (_, path) in auditgate::journal::list_segments(dir).expect("list segments") {
        let bytes = std::fs::read(&path).unwrap();
        // The open segment's trailing zeros are preallocated space.
        let text = std::str::from_utf8(&bytes[..auditgate::journal::used_len(&bytes)]).unwrap();
        for line in text.lines() {
            out.push(
                serde_json::from_str(line).unwrap_or_else(|e| panic!("bad record {line}: {e}")),
            );
        }
    }
    out
}

/// The public checkpoint key of the gateway that writes the journal `dir` (the harness keeps
/// the key pair beside the journal, so restarts on the same journal sign with the same key).
pub fn public_key_of(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(".checkpoint.key.pub");
    PathBuf::from(name)
}

/// A token from the RS256 issuer for `sub` with these roles and, when given, this `scope`.
pub fn token_with(gw: &Gateway, sub: &str, roles: &[&str], scope: Option<&str>) -> String {
    let mut claims = claims_for(ISS_RSA, sub);
    claims["roles"] = json!(roles);
    if let Some(scope) = scope {
        claims["scope"] = json!(scope);
    }
    keys::mint(KeyKind::Rsa.default_alg(), &gw.keys.rsa, &claims)
}

/// Who a record names: the user, why it has none, or `(gateway)`.
pub fn user_of(r: &Record) -> &str {
    match &r.event.who {
        auditgate::record::Who::Authenticated(a) => &a.user,
        auditgate::record::Who::Unauthenticated { reason } => reason,
        auditgate::record::Who::Gateway => "(gateway)",
    }
}

/// GET `path` through the gateway as `sub` (a physician's token); panics unless 200.
pub fn read_as(gw: &Gateway, path: &str, sub: &str) {
    let resp = super::http_client()
        .get(gw.url(path))
        .bearer_auth(token_with(gw, sub, &["physician"], None))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{path}");
}

/// Put `ids` on the FHIR server as Patients (idempotent: PUT).
pub fn put_patients(fhir: &super::FhirServer, ids: &[&str]) {
    for id in ids {
        fhir.put_resource(&json!({"resourceType": "Patient", "id": id, "name": [{"family": id}]}));
    }
}

/// Run `auditgate report ARGS --journal DIR --key ITS.pub --format json`: (exit code, the
/// report as JSON, stderr).
pub fn report_json(args: &[&str], journal: &Path) -> (i32, Value, String) {
    let journal_arg = journal.display().to_string();
    let key = public_key_of(journal).display().to_string();
    let mut all: Vec<&str> = vec!["report"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--journal", &journal_arg, "--key", &key, "--format", "json"]);
    let (code, out, err) = super::run_auditgate(&all);
    (code, serde_json::from_str(&out).unwrap_or(Value::Null), err)
}

/// Run `auditgate verify --journal DIR [--json]`, with `--key` when the harness made a key for
/// that journal; returns (exit code, stdout).
pub fn verify_cli(dir: &Path, json: bool) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_auditgate"));
    cmd.args(["verify", "--journal"]).arg(dir);
    let key = public_key_of(dir);
    if key.exists() {
        cmd.arg("--key").arg(key);
    }
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("run auditgate verify");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The value of `series` (name with its labels exactly as exported) in a Prometheus text
/// exposition.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
