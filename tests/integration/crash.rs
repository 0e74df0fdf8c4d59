//! Crash safety: kill -9 the gateway under concurrent load, again and again. Every response a
//! client received has its outcome record after restart, and the journal verifies.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use auditgate::record::Phase;
use serde_json::json;

use crate::support::gateway::{verify_cli, Gateway, GatewayOptions};
use crate::support::FhirServer;

const ROUNDS: usize = 6;
const CLIENTS: usize = 8;

#[test]
fn kill_9_under_load_loses_no_acknowledged_record() {
    let fhir = FhirServer::seeded();
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    // Small segments so kills also land around seals.
    opts.journal_toml = "segment_max_bytes = 65536".into();
    let mut gw = Gateway::start(opts);
    let token = gw.token("dr.crash");
    let received: Arc<Mutex<Vec<(String, u16)>>> = Arc::new(Mutex::new(Vec::new()));

    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            let (stop, received, token) = (stop.clone(), received.clone(), token.clone());
            let base = gw.url("/fhir");
            clients.push(std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let req = if i.is_multiple_of(4) {
                        let id = format!("crash-{round}-{c}-{i}");
                        client
                            .put(format!("{base}/Patient/{id}"))
                            .header("Content-Type", "application/fhir+json")
                            .body(json!({"resourceType": "Patient", "id": id}).to_string())
                    } else {
                        client.get(format!("{base}/Patient/example"))
                    };
                    // Only a complete response counts as received.
                    let Ok(resp) = req.bearer_auth(&token).send() else {
                        continue;
                    };
                    let status = resp.status().as_u16();
                    let Some(id) = resp
                        .headers()
                        .get("x-request-id")
                        .map(|v| v.to_str().unwrap().to_string())
                    else {
                        continue;
                    };
                    if resp.bytes().is_ok() {
                        received.lock().unwrap().push((id, status));
                    }
                }
            }));
        }
        // Let load build, then kill at a different moment each round.
        std::thread::sleep(Duration::from_millis(300 + 150 * round as u64));
        gw.kill9();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        gw.spawn();
    }

    let received = received.lock().unwrap().clone();
    assert!(
        received.len() > 100,
        "too little traffic to mean anything: {}",
        received.len()
    );
    let records = gw.records();
    let outcomes: HashSet<&str> = records
        .iter()
        .filter(|r| r.event.phase == Phase::Outcome)
        .map(|r| r.event.request_id.as_str())
        .collect();
    let missing: Vec<_> = received
        .iter()
        .filter(|(id, _)| !outcomes.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} received responses have no outcome record: {:?}",
        missing.len(),
        received.len(),
        &missing[..missing.len().min(5)]
    );
    for w in records.windows(2) {
        assert_eq!(
            w[1].header.seq,
            w[0].header.seq + 1,
            "seq continuity across restarts"
        );
    }
    gw.kill9();
    let (code, out) = verify_cli(&gw.journal, false);
    assert_eq!(code, 0, "{out}");
}
