//! Operations: the admin listener (metrics, health, readiness) read directly and through a real
//! Prometheus server, live reload with SIGHUP under load, and a clean stop with SIGTERM under
//! load.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use auditgate::journal::SegmentName;
use auditgate::record::Phase;
use serde_json::Value;

use crate::support::gateway::{metric_value, public_key_of, verify_cli, Gateway, GatewayOptions};
use crate::support::prometheus::PrometheusServer;
use crate::support::{http_client, FhirServer};

/// Wait (up to 10 s) until the gateway's `series` satisfies `ok`; returns the value.
fn wait_metric(gw: &Gateway, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = gw.admin_get("/metrics");
        let v = metric_value(&text, series).unwrap_or(0.0);
        if ok(v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{series} = {v}, never reached the expected value"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn get_status(gw: &Gateway, path: &str, token: Option<&str>) -> u16 {
    let mut req = http_client().get(gw.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().unwrap().status().as_u16()
}

#[test]
fn the_admin_listener_reports_traffic_health_and_readiness_without_phi() {
    let fhir = FhirServer::seeded();
    let gw = Gateway::start(GatewayOptions::new(format!("127.0.0.1:{}", fhir.port())));
    assert_eq!(gw.admin_get("/healthz"), (200, "ok\n".to_string()));
    let (status, body) = gw.admin_get("/readyz");
    assert_eq!(status, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], true);
    let checks: Vec<&str> = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        checks,
        ["serving", "journal", "keys", "listeners", "rules"],
        "no archive configured"
    );

    let user = "user-7f3a9-metrics";
    let token = gw.token(user);
    for _ in 0..3 {
        assert_eq!(get_status(&gw, "/fhir/Patient/example", Some(&token)), 200);
    }
    assert_eq!(get_status(&gw, "/fhir/Patient/example", None), 401);
    assert_eq!(
        get_status(&gw, "/fhir/Patient/pat1%2F..%2Fexample", Some(&token)),
        400
    );
    // Counted when each request ends (just after the client has its answer).
    wait_metric(
        &gw,
        r#"auditgate_requests_total{action="R",outcome="2xx"}"#,
        |v| v == 3.0,
    );
    // The refused token's request is still a read; a rejected path has no action but E.
    wait_metric(
        &gw,
        r#"auditgate_requests_total{action="R",outcome="4xx"}"#,
        |v| v == 1.0,
    );
    wait_metric(
        &gw,
        r#"auditgate_requests_total{action="E",outcome="4xx"}"#,
        |v| v == 1.0,
    );
    assert_eq!(
        gw.metric(r#"auditgate_identity_failures_total{reason="missing_token"}"#),
        1.0
    );
    assert_eq!(
        gw.metric(r#"auditgate_rejected_requests_total{reason="encoded_slash"}"#),
        1.0
    );
    let records = gw.records();
    assert_eq!(
        gw.metric("auditgate_journal_records_written_total"),
        records.len() as f64
    );
    assert_eq!(
        gw.metric("auditgate_journal_head_seq"),
        records.last().unwrap().header.seq as f64
    );
    assert!(gw.metric("auditgate_journal_fsync_duration_seconds_count") >= 1.0);
    assert_eq!(gw.metric("auditgate_journal_failed"), 0.0);
    wait_metric(&gw, "auditgate_checkpoints_signed_total", |v| v >= 1.0);
    assert!(gw.metric("auditgate_checkpoint_last_signed_timestamp_seconds") > 1.7e9);
    assert!(gw.metric("process_resident_memory_bytes") > 0.0);
    assert_eq!(
        gw.metric(&format!(
            r#"auditgate_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );

    // Nothing from the traffic is in the metrics: no user, patient, path or token.
    let (_, text) = gw.admin_get("/metrics");
    for secret in [
        user,
        "example",
        "pat1",
        "/fhir",
        token.as_str(),
        "127.0.0.1",
    ] {
        assert!(!text.contains(secret), "/metrics contains {secret:?}");
    }
    // The gateway's own log holds none of it either (every test's gateway is checked when it
    // is dropped; here the check is shown to catch a leak).
    use crate::support::gateway::check_log_has_no_phi;
    let log = gw.log();
    assert!(log.contains("auditgate listening"), "{log}");
    check_log_has_no_phi(&log, &gw.journal).unwrap();
    for leak in [
        format!("{log}\n{{\"path\":\"/fhir/Patient/example\"}}"),
        format!("{log}\nuser={user} "),
        format!("{log}\n{token}"),
        format!("{log}\n{{\"patient\":\"example\"}}"),
    ] {
        assert!(
            check_log_has_no_phi(&leak, &gw.journal).is_err(),
            "the check misses a leak"
        );
    }
    // The probe a container health check runs.
    let admin = format!("127.0.0.1:{}", gw.admin_port);
    let (code, out, _) = crate::support::run_auditgate(&["health", "--admin", &admin]);
    assert_eq!((code, out.as_str()), (0, "ok\n"));
    let (code, out, _) = crate::support::run_auditgate(&["health", "--ready", "--admin", &admin]);
    assert_eq!(code, 0, "{out}");
    let dead = format!("127.0.0.1:{}", crate::support::free_port());
    let (code, _, err) = crate::support::run_auditgate(&["health", "--admin", &dead]);
    assert_eq!(code, 1, "{err}");
    // Only GET on the three paths.
    assert_eq!(gw.admin_get("/other").0, 404);
    let post = http_client()
        .post(format!("http://127.0.0.1:{}/metrics", gw.admin_port))
        .send()
        .unwrap();
    assert_eq!(post.status().as_u16(), 405);
}

#[test]
fn prometheus_scrapes_the_gateway_and_reads_the_series_back() {
    let fhir = FhirServer::seeded();
    let gw = Gateway::start(GatewayOptions::new(format!("127.0.0.1:{}", fhir.port())));
    let prometheus = PrometheusServer::start(gw.admin_port);
    let token = gw.token("dr.scrape");
    for _ in 0..5 {
        assert_eq!(get_status(&gw, "/fhir/Patient/example", Some(&token)), 200);
    }
    assert_eq!(get_status(&gw, "/fhir/Patient/example", None), 401);

    prometheus.wait_for(r#"up{job="auditgate"}"#, |v| v == 1.0);
    prometheus.wait_for(
        r#"auditgate_requests_total{job="auditgate",action="R",outcome="2xx"}"#,
        |v| v == 5.0,
    );
    prometheus.wait_for(
        r#"sum(auditgate_identity_failures_total{job="auditgate"})"#,
        |v| v == 1.0,
    );
    let records = gw.records().len() as f64;
    prometheus.wait_for("auditgate_journal_head_seq", |v| v == records);
    // A histogram quantile works on the exported buckets.
    prometheus.wait_for(
        "histogram_quantile(0.5, sum by (le) (auditgate_journal_fsync_duration_seconds_bucket))",
        |v| v > 0.0 && v < 10.0,
    );
    prometheus.wait_for("auditgate_clock_max_error_seconds", |v| v >= 0.0);
}

/// Requests in a loop on threads until stopped: (answered 200, anything else).
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub(crate) fn start(url: String, token: String, threads: usize) -> Load {
        Self::start_with(url, token, threads, true)
    }

    /// `keep_alive: false`: a new connection per request, so a failure can only be the
    /// gateway's (no race with a server closing an idle pooled connection).
    pub(crate) fn start_with(url: String, token: String, threads: usize, keep_alive: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let (url, token) = (url.clone(), token.clone());
                std::thread::spawn(move || {
                    let client = if keep_alive {
                        http_client()
                    } else {
                        reqwest::blocking::Client::builder()
                            .no_proxy()
                            .pool_max_idle_per_host(0)
                            .timeout(Duration::from_secs(60))
                            .build()
                            .unwrap()
                    };
                    while !stop.load(Ordering::Relaxed) {
                        match client.get(&url).bearer_auth(&token).send() {
                            Ok(r) if r.status().as_u16() == 200 => match r.bytes() {
                                Ok(_) => {
                                    ok.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => failed.lock().unwrap().push(format!("body: {e}")),
                            },
                            Ok(r) => failed
                                .lock()
                                .unwrap()
                                .push(format!("status {}", r.status())),
                            Err(e) => failed.lock().unwrap().push(format!("{e}")),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    /// Stop; (answered 200, failures).
    pub(crate) fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let failed = self.failed.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failed)
    }
}

/// Wait (up to 10 s) until `path` answers `want`.
fn wait_status(gw: &Gateway, path: &str, token: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = get_status(gw, path, Some(token));
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still answers {got}, not {want}\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sighup_under_load_applies_new_rules_and_keys_and_a_broken_config_keeps_the_old_one() {
    let fhir = FhirServer::seeded();
    let gw = Gateway::start(GatewayOptions::new(format!("127.0.0.1:{}", fhir.port())));
    let token = gw.token("dr.reload");
    let original = std::fs::read_to_string(&gw.config_path).unwrap();
    // Under `unmatched = "inspect"` a path no rule covers is forwarded (sekmet answers 404).
    assert_eq!(get_status(&gw, "/not-fhir/anything", Some(&token)), 404);

    let load = Load::start(gw.url("/fhir/Patient/example"), token.clone(), 4);
    std::thread::sleep(Duration::from_millis(300));

    // 1. New rules (deny unmatched routes) and a restart-only change (the heartbeat).
    let denying = original
        .replace(r#"unmatched = "inspect""#, r#"unmatched = "deny""#)
        .replace("heartbeat_secs = 2", "heartbeat_secs = 3");
    assert_ne!(denying, original);
    std::fs::write(&gw.config_path, &denying).unwrap();
    gw.signal("HUP");
    wait_status(&gw, "/not-fhir/anything", &token, 403);
    wait_metric(&gw, r#"auditgate_config_reloads_total{result="ok"}"#, |v| {
        v == 1.0
    });
    assert!(
        gw.log().contains("need a restart and were NOT applied"),
        "the restart-only change is reported:\n{}",
        gw.log()
    );

    // 2. A broken file (an unknown key), then a missing rules file: both rejected, the deny
    // policy stays in force.
    std::fs::write(
        &gw.config_path,
        format!("{denying}\n[server_typo]\nx = 1\n"),
    )
    .unwrap();
    gw.signal("HUP");
    wait_metric(
        &gw,
        r#"auditgate_config_reloads_total{result="rejected"}"#,
        |v| v == 1.0,
    );
    let rules = crate::support::repo_root().join("rules/fhir-r4.toml");
    std::fs::write(
        &gw.config_path,
        denying.replace(&rules.display().to_string(), "/nonexistent/rules.toml"),
    )
    .unwrap();
    gw.signal("HUP");
    wait_metric(
        &gw,
        r#"auditgate_config_reloads_total{result="rejected"}"#,
        |v| v == 2.0,
    );
    assert!(gw.log().contains("configuration reload rejected"));
    assert_eq!(get_status(&gw, "/not-fhir/anything", Some(&token)), 403);

    let (served, failed) = load.finish();
    assert!(served > 20, "the load ran ({served} requests)");
    assert!(
        failed.is_empty(),
        "no request failed across three reloads: {failed:?}"
    );

    // 3. New keys: the RS256 issuer is withdrawn, so its tokens stop working at once (the
    // verified-token cache goes with the old identity).
    std::fs::write(
        &gw.config_path,
        denying.replace(
            r#"issuer = "https://idp.test/rsa""#,
            r#"issuer = "https://idp.test/rsa-next""#,
        ),
    )
    .unwrap();
    gw.signal("HUP");
    wait_status(&gw, "/fhir/Patient/example", &token, 401);
    assert_eq!(
        gw.metric(r#"auditgate_config_reloads_total{result="ok"}"#),
        2.0
    );
    // Every request across the reloads has its outcome record, and the chain verifies.
    let (code, out) = verify_cli(&gw.journal, false);
    assert_eq!(code, 0, "{out}");
}

/// An upstream that answers every request after `delay`, with a small FHIR Patient.
struct SlowUpstream {
    port: u16,
}

impl SlowUpstream {
    fn start(delay: Duration) -> SlowUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    loop {
                        // Read one request head (GETs only: no body).
                        let mut line = String::new();
                        let mut saw_request = false;
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            saw_request = true;
                        }
                        if !saw_request {
                            return;
                        }
                        std::thread::sleep(delay);
                        let body = br#"{"resourceType":"Patient","id":"slow-1"}"#;
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        );
                        if stream.write_all(head.as_bytes()).is_err()
                            || stream.write_all(body).is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        SlowUpstream { port }
    }
}

#[test]
fn sigterm_under_load_drains_in_flight_requests_seals_the_segment_and_a_restart_continues() {
    let upstream = SlowUpstream::start(Duration::from_millis(800));
    let mut gw = Gateway::start(GatewayOptions::new(format!("127.0.0.1:{}", upstream.port)));
    let token = gw.token("dr.drain");
    // Requests that are in flight (waiting for the slow EHR) when SIGTERM arrives.
    let in_flight: Vec<_> = (0..6)
        .map(|_| {
            let url = gw.url("/fhir/Patient/slow-1");
            let token = token.clone();
            std::thread::spawn(move || {
                let resp = http_client().get(url).bearer_auth(token).send()?;
                let status = resp.status().as_u16();
                let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
                let body = resp.text()?;
                Ok::<_, reqwest::Error>((status, id, body))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    gw.signal("TERM");
    let status = gw
        .wait_exit(Duration::from_secs(20))
        .expect("the gateway exits after draining");
    let took = asked.elapsed();
    assert!(
        status.success(),
        "a clean stop exits 0: {status}\n{}",
        gw.log()
    );
    // The drain ends when the last request does (about 0.5 s here), well before the test
    // config's drain_timeout_secs = 10.
    assert!(took < Duration::from_secs(5), "stopped in {took:?}");

    let mut ids = Vec::new();
    for t in in_flight {
        let (status, id, body) = t.join().unwrap().expect("in-flight request completes");
        assert_eq!(status, 200);
        assert!(body.contains("slow-1"), "whole body: {body}");
        ids.push(id);
    }
    // Each answered request has its outcome record; the open segment was sealed, and its
    // checkpoint signed.
    let records = gw.records();
    for id in &ids {
        assert!(
            records
                .iter()
                .any(|r| r.event.request_id == *id && r.event.phase == Phase::Outcome),
            "outcome record for {id}"
        );
    }
    let head = records.last().unwrap().header.seq;
    let segments = auditgate::journal::list_segments(&gw.journal).unwrap();
    assert!(
        segments
            .iter()
            .all(|(name, _)| matches!(name, SegmentName::Sealed { .. })),
        "no open segment is left: {segments:?}"
    );
    assert!(matches!(
        segments.last().unwrap().0,
        SegmentName::Sealed { last, .. } if last == head
    ));
    let newest = auditgate::tlog::checkpoint::list_checkpoint_files(&gw.journal)
        .unwrap()
        .pop()
        .unwrap();
    let note =
        auditgate::tlog::checkpoint::parse_unverified(&std::fs::read(newest).unwrap()).unwrap();
    assert_eq!(note.size, head, "the last checkpoint covers every record");
    assert!(gw.log().contains("auditgate stopped cleanly"));

    // A restart continues the chain.
    gw.spawn();
    assert_eq!(get_status(&gw, "/fhir/Patient/slow-1", Some(&token)), 200);
    let after = gw.records();
    assert!(after.last().unwrap().header.seq > head);
    let (code, out) = verify_cli(&gw.journal, false);
    assert_eq!(code, 0, "{out}");
    assert!(public_key_of(&gw.journal).exists());
}

#[test]
fn sigterm_fails_readiness_first_and_keeps_serving_through_the_shutdown_delay() {
    let fhir = FhirServer::seeded();
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.server_toml = "shutdown_delay_secs = 2".into();
    let mut gw = Gateway::start(opts);
    let token = gw.token("dr.delay");
    assert_eq!(gw.admin_get("/readyz").0, 200);
    gw.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let (status, body) = gw.admin_get("/readyz");
        if status == 503 {
            assert!(body.contains("shutting down"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "/readyz still 200 after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Not ready, but still serving until the delay is over.
    assert_eq!(get_status(&gw, "/fhir/Patient/example", Some(&token)), 200);
    let status = gw
        .wait_exit(Duration::from_secs(15))
        .expect("exits after the delay");
    assert!(status.success(), "{status}");
    let (code, out) = verify_cli(&gw.journal, false);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_zero_downtime_upgrade_hands_over_listeners_and_journal_without_a_failed_request() {
    let fhir = FhirServer::seeded();
    let mut gw = Gateway::start(GatewayOptions::new(format!("127.0.0.1:{}", fhir.port())));
    let token = gw.token("dr.upgrade");
    let old_pid = gw.pid();
    let load = Load::start_with(gw.url("/fhir/Patient/example"), token.clone(), 3, false);
    std::thread::sleep(Duration::from_millis(300));

    // The new binary waits on the upgrade socket; the old one sends its listeners on SIGQUIT,
    // serves alongside for pingora's 5 s hand-over, drains, seals and releases the journal.
    let new = gw.start_upgrade();
    std::thread::sleep(Duration::from_millis(500));
    gw.signal("QUIT");
    let status = gw
        .wait_exit(Duration::from_secs(30))
        .expect("the old process exits after the hand-over");
    assert!(status.success(), "{status}\n{}", gw.log());
    gw.adopt(new);
    assert_ne!(gw.pid(), old_pid);
    // The new process serves on the same sockets, with the same admin address.
    let deadline = Instant::now() + Duration::from_secs(20);
    while gw.admin_get("/readyz").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the new process never got ready\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (served, failed) = load.finish();
    assert!(served > 20, "the load ran ({served} requests)");
    assert!(
        failed.is_empty(),
        "no request failed or was refused across the upgrade: {failed:?}"
    );
    // One chain across both processes: the old one sealed its segment, the new one continued.
    let records = gw.records();
    assert!(
        records.len() >= served,
        "every answered request has a record"
    );
    let (code, out) = verify_cli(&gw.journal, false);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_listener_address_in_use_stops_the_start_with_its_name() {
    let fhir = FhirServer::seeded();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.port = Some(taken.local_addr().unwrap().port());
    let log = match Gateway::try_start(opts) {
        Ok(_) => panic!("started on a port that is in use"),
        Err(log) => log,
    };
    assert!(
        log.contains("exited with exit status: 2") && log.contains("(server.listen)"),
        "{log}"
    );
    assert!(log.contains("cannot listen on"), "{log}");
}

#[test]
fn an_upgrade_with_a_config_that_cannot_start_leaves_the_running_process_serving() {
    let fhir = FhirServer::seeded();
    let gw = Gateway::start(GatewayOptions::new(format!("127.0.0.1:{}", fhir.port())));
    let token = gw.token("dr.upgrade");
    let original = std::fs::read_to_string(&gw.config_path).unwrap();
    let rules = crate::support::repo_root().join("rules/fhir-r4.toml");
    std::fs::write(
        &gw.config_path,
        original.replace(&rules.display().to_string(), "/nonexistent/rules.toml"),
    )
    .unwrap();
    // The new process fails its checks before it asks for the sockets.
    let mut new = gw.start_upgrade();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = new.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the broken upgrade did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(2));
    assert!(
        gw.log().contains("the running process keeps serving"),
        "{}",
        gw.log()
    );
    // The running process never handed anything over.
    assert_eq!(get_status(&gw, "/fhir/Patient/example", Some(&token)), 200);
    assert_eq!(gw.admin_get("/readyz").0, 200);
}

#[test]
fn sigint_during_the_drain_stops_at_once() {
    let upstream = SlowUpstream::start(Duration::from_secs(8));
    let mut gw = Gateway::start(GatewayOptions::new(format!("127.0.0.1:{}", upstream.port)));
    let token = gw.token("dr.hurry");
    let url = gw.url("/fhir/Patient/slow-1");
    let slow = std::thread::spawn(move || http_client().get(url).bearer_auth(token).send());
    std::thread::sleep(Duration::from_millis(300));
    gw.signal("TERM");
    // The drain would wait up to drain_timeout_secs (10) for the 8 s request; SIGINT ends it.
    std::thread::sleep(Duration::from_millis(500));
    let asked = Instant::now();
    gw.signal("INT");
    let status = gw
        .wait_exit(Duration::from_secs(20))
        .expect("exits after SIGINT");
    assert!(
        asked.elapsed() < Duration::from_secs(4),
        "SIGINT ended the drain in {:?}",
        asked.elapsed()
    );
    assert!(
        status.success(),
        "the journal still closes cleanly: {status}\n{}",
        gw.log()
    );
    assert!(gw.log().contains("asked again to stop"), "{}", gw.log());
    // The GET that was cut off has no outcome record (its client saw no answer); the journal
    // verifies.
    let _ = slow.join();
    let (code, out) = verify_cli(&gw.journal, false);
    assert_eq!(code, 0, "{out}");
}
