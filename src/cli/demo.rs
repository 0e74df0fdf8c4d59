//! `auditgate demo`: the whole product in one command, with nothing to install.
//!
//! Starts, on loopback ports chosen by the OS, a small built-in sample FHIR upstream (a few
//! patients and observations held in memory) and the real gateway in front of it, with a
//! throwaway HS256 secret generated for this run only. It then sends reads, searches, a create,
//! an update, a delete and a few refused requests through the gateway, prints each journal record
//! and the result of `verify`, and exits. The demo's key, upstream and (by default) journal exist
//! only inside this command.
//!
//! With `--keep-running` it does not exit: the gateway and the sample upstream stay up, and a
//! ready-to-paste `curl` line with a fresh token (valid for an hour) is printed, so a newcomer
//! can send their own requests and watch the journal grow. Ctrl-C stops both (the journal's
//! open segment is sealed as on any shutdown).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};

use super::outcome::{CliError, Verdict};
use crate::config::Config;

/// The sample EHR: FHIR resources in memory, keyed by `Type/id`.
struct SampleFhir {
    store: Mutex<BTreeMap<String, Value>>,
}

impl SampleFhir {
    fn new() -> SampleFhir {
        let mut store = BTreeMap::new();
        for (id, family, given) in [("p1", "Chalmers", "Peter"), ("p2", "Windsor", "Amy")] {
            store.insert(
                format!("Patient/{id}"),
                json!({"resourceType": "Patient", "id": id, "name": [{"family": family, "given": [given]}]}),
            );
        }
        for (id, patient, code) in [
            ("o1", "p1", "8867-4"),
            ("o2", "p1", "8310-5"),
            ("o3", "p2", "8867-4"),
        ] {
            store.insert(
                format!("Observation/{id}"),
                json!({"resourceType": "Observation", "id": id, "status": "final",
                       "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                       "subject": {"reference": format!("Patient/{patient}")}}),
            );
        }
        SampleFhir {
            store: Mutex::new(store),
        }
    }

    fn answer(status: u16, body: &Value) -> Response<Vec<u8>> {
        let bytes = body.to_string().into_bytes();
        let mut response = Response::new(Vec::new());
        *response.status_mut() =
            http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/fhir+json"),
        );
        headers.insert(http::header::CONTENT_LENGTH, bytes.len().into());
        *response.body_mut() = bytes;
        response
    }

    fn search(&self, rtype: &str, query: &str) -> Value {
        let store = self
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let wanted: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let entries: Vec<Value> = store
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{rtype}/")))
            .filter(|(_, v)| {
                wanted.iter().all(|(param, value)| match param.as_str() {
                    "subject" | "patient" => {
                        let r = v["subject"]["reference"].as_str().unwrap_or("");
                        r == value || r == format!("Patient/{value}")
                    }
                    "_id" => v["id"].as_str() == Some(value),
                    _ => true,
                })
            })
            .map(|(_, v)| json!({"resource": v}))
            .collect();
        json!({"resourceType": "Bundle", "type": "searchset", "total": entries.len(), "entry": entries})
    }
}

#[async_trait]
impl ServeHttp for SampleFhir {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.as_str().to_string();
        let path = session.req_header().uri.path().to_string();
        let query = session.req_header().uri.query().unwrap_or("").to_string();
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = session.read_request_body().await {
            body.extend_from_slice(&chunk);
        }
        let parts: Vec<&str> = path.trim_start_matches("/fhir/").split('/').collect();
        match (method.as_str(), parts.as_slice()) {
            ("GET", ["metadata"]) => Self::answer(
                200,
                &json!({"resourceType": "CapabilityStatement", "status": "active", "fhirVersion": "4.0.1"}),
            ),
            ("GET", [rtype]) => Self::answer(200, &self.search(rtype, &query)),
            ("GET", ["Patient", id, rtype]) if !id.starts_with('$') => {
                Self::answer(200, &self.search(rtype, &format!("subject=Patient/{id}")))
            }
            ("GET", [rtype, id]) => match self
                .store
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&format!("{rtype}/{id}"))
            {
                Some(r) => Self::answer(200, r),
                None => Self::answer(404, &json!({"resourceType": "OperationOutcome"})),
            },
            ("POST", [rtype]) => {
                let mut resource: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
                let id = format!(
                    "new{}",
                    self.store
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .len()
                );
                resource["id"] = json!(id);
                self.store
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(format!("{rtype}/{id}"), resource.clone());
                Self::answer(201, &resource)
            }
            ("PUT", [rtype, id]) => {
                let resource: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
                self.store
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(format!("{rtype}/{id}"), resource.clone());
                Self::answer(200, &resource)
            }
            ("DELETE", [rtype, id]) => {
                self.store
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&format!("{rtype}/{id}"));
                Self::answer(200, &json!({"resourceType": "OperationOutcome"}))
            }
            _ => Self::answer(404, &json!({"resourceType": "OperationOutcome"})),
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

const SECRET_ENV: &str = "AUDITGATE_DEMO_HS256_SECRET";

/// Run the demo; see the module docs. `keep`: keep the journal in this directory;
/// `keep_running`: leave the gateway up after the tour.
pub fn run(keep: Option<PathBuf>, keep_running: bool) -> Result<Verdict, CliError> {
    run_inner(keep, keep_running).map_err(CliError::failed)
}

fn run_inner(keep: Option<PathBuf>, keep_running: bool) -> anyhow::Result<Verdict> {
    let temp = tempdir()?;
    let journal_dir = keep.unwrap_or_else(|| temp.join("journal"));
    let upstream_port = free_port()?;
    let gateway_port = free_port()?;
    // A throwaway secret: 256 random bits, only in this process's environment.
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    // Set before any other thread exists; the identity loader reads it once.
    std::env::set_var(SECRET_ENV, &secret);
    let rules = temp.join("fhir-r4.toml");
    std::fs::write(&rules, crate::rules::BUILTIN_FHIR_R4)?;
    // The checkpoint key lives beside the journal (and goes with the temp dir unless kept).
    let key_file = PathBuf::from(format!("{}.checkpoint.key", journal_dir.display()));
    let public_key = crate::tlog::checkpoint::public_key_path(&key_file);
    let text = format!(
        r#"
[server]
node = "demo"
listen = ["127.0.0.1:{gateway_port}"]
threads = 1
drain_timeout_secs = 1
pid_file = "{pid}"
upgrade_sock = "{sock}"

[upstream]
url = "http://127.0.0.1:{upstream_port}"

[journal]
dir = "{journal}"

[checkpoint]
key_file = "{key}"
create_key_if_missing = true
interval_secs = 1
heartbeat_secs = 60

[identity]
[[identity.issuers]]
issuer = "https://demo-idp.invalid"
audiences = ["auditgate-demo"]
algorithms = ["HS256"]
hmac_secrets = [{{ env_var = "{SECRET_ENV}" }}]

[rules]
files = ["{rules}"]

[log]
format = "text"
level = "warn"

[admin]
enabled = false
"#,
        pid = temp.join("pid").display(),
        sock = temp.join("upgrade.sock").display(),
        journal = journal_dir.display(),
        key = key_file.display(),
        rules = rules.display(),
    );
    let config = Config::parse(&text, std::path::Path::new("<demo>"))?;
    crate::cli::logging::init_logging(&config.log);
    let mut prepared = crate::server::prepare(&config, &temp, None, Duration::ZERO)?;
    if keep_running {
        // The process ends in the gateway's own shutdown (Ctrl-C, SIGTERM): the temporary
        // directory goes then, as it does at the end of the tour otherwise.
        prepared.remove_at_exit.push(temp.clone());
    }

    // The sample upstream and the gateway run as pingora services in this process.
    let mut upstream =
        pingora::services::listening::Service::new("sample-fhir".into(), SampleFhir::new());
    upstream.add_tcp(&format!("127.0.0.1:{upstream_port}"));
    let demo_config = config.clone();
    std::thread::spawn(move || {
        let server = crate::server::new_server(&demo_config, false);
        crate::server::run_with(&demo_config, server, prepared, vec![Box::new(upstream)])
    });
    wait_for(gateway_port)?;
    wait_for(upstream_port)?;

    let base = format!("http://127.0.0.1:{gateway_port}/fhir");
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = |sub: &str| {
        json!({"iss": "https://demo-idp.invalid", "aud": "auditgate-demo", "sub": sub,
               "name": "Dr. Demo", "roles": ["physician"], "client_id": "demo-app",
               "purpose_of_use": "TREAT", "exp": now + 300, "nbf": now - 5, "jti": uuid::Uuid::new_v4().to_string()})
    };
    let signing_key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims("dr.alice"),
        &signing_key,
    )?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let steps: Vec<(reqwest::Method, String, Option<Value>, Option<&str>)> = vec![
        (
            reqwest::Method::GET,
            format!("{base}/metadata"),
            None,
            Some(&token),
        ),
        (
            reqwest::Method::GET,
            format!("{base}/Patient/p1"),
            None,
            Some(&token),
        ),
        (
            reqwest::Method::GET,
            format!("{base}/Observation?subject=Patient/p1"),
            None,
            Some(&token),
        ),
        (
            reqwest::Method::GET,
            format!("{base}/Patient/p2/Observation"),
            None,
            Some(&token),
        ),
        (
            reqwest::Method::POST,
            format!("{base}/Observation"),
            Some(
                json!({"resourceType": "Observation", "status": "final", "subject": {"reference": "Patient/p2"}}),
            ),
            Some(&token),
        ),
        (
            reqwest::Method::PUT,
            format!("{base}/Patient/p2"),
            Some(json!({"resourceType": "Patient", "id": "p2", "active": true})),
            Some(&token),
        ),
        (
            reqwest::Method::DELETE,
            format!("{base}/Observation/o3"),
            None,
            Some(&token),
        ),
        (
            reqwest::Method::GET,
            format!("{base}/Patient/p1"),
            None,
            None,
        ),
        (
            reqwest::Method::GET,
            format!("{base}/Patient/p1%2F..%2Fp2"),
            None,
            Some(&token),
        ),
    ];
    println!("== requests through the gateway (http://127.0.0.1:{gateway_port}/fhir)");
    rt.block_on(async {
        for (method, url, body, bearer) in &steps {
            let mut req = client.request(method.clone(), url);
            if let Some(t) = bearer {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req
                    .header("content-type", "application/fhir+json")
                    .body(b.to_string());
            }
            let shown = url.replacen(&base, "", 1);
            match req.send().await {
                Ok(resp) => println!(
                    "{method:6} {shown:40} -> {}{}",
                    resp.status(),
                    if bearer.is_none() { "  (no token)" } else { "" }
                ),
                Err(e) => println!("{method:6} {shown:40} -> error {e}"),
            }
        }
    });
    println!("\n== journal records ({})", journal_dir.display());
    println!(
        "{:>3} {:7} {:16} {:6} {:12} {:14} {:>6}  path",
        "seq", "phase", "user", "action", "interaction", "patients", "status"
    );
    let mut last_record = None;
    for (_, path) in crate::journal::list_segments(&journal_dir)? {
        let bytes = std::fs::read(path)?;
        let text = String::from_utf8_lossy(&bytes[..crate::journal::used_len(&bytes)]).into_owned();
        for line in text.lines() {
            let r: crate::record::Record = serde_json::from_str(line)?;
            let e = &r.event;
            let user = match &e.who {
                crate::record::Who::Authenticated(a) => a.user.clone(),
                crate::record::Who::Unauthenticated { reason } => format!("({reason})"),
                crate::record::Who::Gateway => "(gateway)".into(),
            };
            let patients: Vec<&str> = e.patients.iter().map(|p| p.id.as_str()).collect();
            let status = e
                .outcome
                .as_ref()
                .map(|o| o.status.to_string())
                .unwrap_or_else(|| "-".into());
            println!(
                "{:>3} {:7} {:16} {:6} {:12} {:14} {:>6}  {}",
                r.header.seq,
                format!("{:?}", e.phase).to_lowercase(),
                user,
                e.action.as_str(),
                e.interaction.as_str(),
                format!("{} {}", patients.join(","), e.attribution.as_str()),
                status,
                e.path
            );
            last_record = Some(r);
        }
    }
    if let Some(record) = &last_record {
        println!("\nthe last record in full (one JSON line in the journal, shown indented):");
        println!("{}", serde_json::to_string_pretty(&record)?);
    }
    // Checkpoints are signed every second while records arrive: wait for one that covers
    // every record above.
    let head = last_record.as_ref().map_or(0, |r| r.header.seq);
    let covered = |dir: &std::path::Path| -> u64 {
        crate::tlog::checkpoint::list_checkpoint_files(dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|p| {
                crate::tlog::checkpoint::size_of_file_name(&p.file_name()?.to_string_lossy())
            })
            .max()
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while covered(&journal_dir) < head && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "\n== auditgate verify --journal {} --key {}",
        journal_dir.display(),
        public_key.display()
    );
    let key = crate::tlog::checkpoint::CheckpointVerifier::load(&public_key.to_string_lossy())?;
    let options = crate::verify::Options {
        key: Some(key),
        max_gap: Some(Duration::from_secs(180)),
    };
    let report = crate::verify::verify_journal_with(&journal_dir, &options)?;
    crate::cli::print::print_report(&report);
    if let (true, Some(verifier)) = (head > 0, options.key.as_ref()) {
        println!(
            "\n== auditgate prove --journal {} {head}   (then verify-proof with the public key)",
            journal_dir.display()
        );
        let checked = crate::verify::proof::prove_record(&journal_dir, head, None)
            .and_then(|bundle| crate::verify::proof::check_bundle(&bundle, verifier));
        match checked {
            Ok(crate::verify::proof::Proven::Inclusion { seq, checkpoint }) => println!(
                "OK: record seq {seq} is in the tree of {} records signed by {}",
                checkpoint.size,
                verifier.text()
            ),
            Ok(other) => println!("unexpected proof: {other:?}"),
            Err(e) => println!("FAILED: {e}"),
        }
    }
    if keep_running {
        let exp = now + 3600;
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"iss": "https://demo-idp.invalid", "aud": "auditgate-demo", "sub": "dr.you",
                    "name": "You", "roles": ["physician"], "client_id": "curl",
                    "purpose_of_use": "TREAT", "exp": exp, "nbf": now - 5,
                    "jti": uuid::Uuid::new_v4().to_string()}),
            &signing_key,
        )?;
        println!(
            "\n== the gateway stays up: http://127.0.0.1:{gateway_port}/fhir (sample FHIR server behind it)"
        );
        println!("   a token for user dr.you, valid for an hour; paste:\n");
        println!("curl -s -H 'Authorization: Bearer {token}' http://127.0.0.1:{gateway_port}/fhir/Patient/p1\n");
        println!(
            "   the journal: {}   (auditgate verify --journal {} --key {})",
            journal_dir.display(),
            journal_dir.display(),
            public_key.display()
        );
        println!("   Ctrl-C stops the gateway (it seals the open segment first).");
        // The gateway's own signal handling ends the process on Ctrl-C or SIGTERM.
        loop {
            std::thread::park();
        }
    }
    let _ = std::fs::remove_dir_all(&temp);
    // The gateway thread never returns; the process ends here.
    Ok(Verdict::from_ok(report.ok()))
}

fn tempdir() -> std::io::Result<PathBuf> {
    let dir =
        std::env::temp_dir().join(format!("auditgate-demo-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn wait_for(port: u16) -> anyhow::Result<()> {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    anyhow::bail!("port {port} did not open")
}
