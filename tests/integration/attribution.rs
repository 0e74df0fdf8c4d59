//! The buffered path's limits and what it cannot read, through the real gateway in front of
//! the real FHIR server: a response over `attribution.max_body_bytes` is forwarded whole with
//! a `partial / too_large` record (or refused with a record under `oversize = "refuse"`); a
//! request body over the limit is refused before the EHR sees it; an XML response is read for
//! its patients like JSON, and a PDF attachment is passed through byte for byte with
//! `partial / not_json` and its media type;
//! at most `max_buffered_requests` exchanges are buffered at once (the next waits, then gets
//! `503 gateway_busy`); a client that stalls mid-body loses its slot (`client_timeout`).

use auditgate::record::{Attribution, Event, Phase, Record};

use crate::support::gateway::{Gateway, GatewayOptions};
use crate::support::held::{HeldUpstream, PDF_BYTES};
use crate::support::{http_client, FhirServer};

fn outcome<'a>(records: &'a [Record], request_id: &str) -> &'a Record {
    records
        .iter()
        .find(|r| r.event.request_id == request_id && r.event.phase == Phase::Outcome)
        .unwrap_or_else(|| panic!("no outcome record for {request_id}"))
}

fn gateway(fhir: &FhirServer, attribution: &str) -> Gateway {
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.extra_toml = format!("[attribution]\n{attribution}\n");
    Gateway::start(opts)
}

fn get(gw: &Gateway, token: &str, path: &str) -> (u16, String, Vec<u8>) {
    let resp = http_client()
        .get(gw.url(path))
        .bearer_auth(token)
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    (status, id, resp.bytes().unwrap().to_vec())
}

/// GET `path`: it must answer 200 with exactly `direct` (what the EHR sends); returns the
/// request's outcome record.
fn passed_through(gw: &Gateway, token: &str, path: &str, direct: &[u8]) -> Event {
    let (status, id, body) = get(gw, token, path);
    assert_eq!(status, 200);
    assert!(
        body == direct,
        "the client got other bytes than the EHR sent"
    );
    outcome(&gw.records(), &id).event.clone()
}

#[test]
fn a_response_over_the_limit_is_forwarded_whole_and_recorded_as_partial() {
    let fhir = FhirServer::seeded();
    let direct = http_client()
        .get(fhir.url("Patient/example"))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert!(direct.len() > 1024, "{}", direct.len());
    let gw = gateway(fhir, "max_body_bytes = 1024");
    let token = gw.token("dr.limit");

    let e = &passed_through(&gw, &token, "/fhir/Patient/example", &direct);
    assert_eq!(e.attribution, Attribution::Partial);
    assert_eq!(e.attribution_gaps, ["too_large"]);
    // The path still names the patient.
    assert_eq!(e.patients.len(), 1);
    assert_eq!(e.patients[0].id, "example");
    assert_eq!(
        gw.metric("auditgate_attribution_gaps_total{gap=\"too_large\"}"),
        1.0
    );

    // An operation far over the limit ($everything: many patients' worth of Bundle) is
    // refused by default, like a search: none of it is released unread.
    let (status, id, body) = get(&gw, &token, "/fhir/Patient/example/$everything");
    assert_eq!(status, 502);
    assert!(String::from_utf8_lossy(&body).contains("response_too_large"));
    let records = gw.records();
    let e = &outcome(&records, &id).event;
    assert_eq!(
        e.outcome.as_ref().unwrap().error.as_deref(),
        Some("response_too_large")
    );
}

#[test]
fn oversize_refuse_answers_502_and_413_with_records_and_forwards_no_oversize_write() {
    let fhir = FhirServer::seeded();
    let gw = gateway(fhir, "max_body_bytes = 1024\noversize = \"refuse\"");
    let token = gw.token("dr.refuse");

    let (status, id, body) = get(&gw, &token, "/fhir/Patient/example");
    assert_eq!(status, 502);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("response_too_large"), "{text}");
    assert!(!text.contains("Chalmers"), "patient data released: {text}");
    let records = gw.records();
    let o = outcome(&records, &id);
    let out = o.event.outcome.as_ref().unwrap();
    assert_eq!(out.status, 502);
    assert_eq!(out.error.as_deref(), Some("response_too_large"));

    // A write whose body is over the limit: 413, journaled, never forwarded.
    let big = serde_json::json!({
        "resourceType": "Patient", "id": "gw-too-big",
        "name": [{"family": "x".repeat(4096)}]
    })
    .to_string();
    let resp = http_client()
        .put(gw.url("/fhir/Patient/gw-too-big"))
        .bearer_auth(&token)
        .header("Content-Type", "application/fhir+json")
        .body(big)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let records = gw.records();
    let o = outcome(&records, &id);
    assert_eq!(
        o.event.outcome.as_ref().unwrap().error.as_deref(),
        Some("body_too_large")
    );
    assert!(
        !fhir
            .upstream_requests()
            .iter()
            .any(|r| r.target.contains("gw-too-big")),
        "an oversize write reached the EHR"
    );
}

#[test]
fn an_xml_response_is_passed_through_unchanged_and_read_for_its_patients() {
    let fhir = FhirServer::seeded();
    let gw = gateway(fhir, "");
    let token = gw.token("dr.xml");
    let direct = http_client()
        .get(fhir.url("Patient/example?_format=xml"))
        .send()
        .unwrap();
    assert!(direct.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("xml"));
    let direct = direct.bytes().unwrap();

    let e = &passed_through(&gw, &token, "/fhir/Patient/example?_format=xml", &direct);
    assert_eq!(e.attribution, Attribution::Complete);
    assert!(e.attribution_gaps.is_empty(), "{:?}", e.attribution_gaps);
    let ids: Vec<&str> = e.patients.iter().map(|p| p.id.as_str()).collect();
    // Patient/example links to Patient/pat1 (`link.other`), in XML as in JSON.
    let json_doc = fhir.get_json("Patient/example");
    let expected = crate::support::oracle::referenced_patients(&json_doc, fhir.base_url());
    let got: std::collections::BTreeSet<String> = ids.iter().map(|s| s.to_string()).collect();
    assert_eq!(got, expected);
    assert_eq!(
        e.outcome.as_ref().unwrap().content_type.as_deref(),
        Some("application/fhir+xml")
    );
}

#[test]
fn buffered_exchanges_beyond_the_bound_wait_for_a_slot_then_get_503_gateway_busy() {
    let upstream = HeldUpstream::start();
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", upstream.port));
    opts.extra_toml = "[attribution]\nmax_buffered_requests = 1\nbuffered_wait_secs = 1\n".into();
    let gw = Gateway::start(opts);
    let token = gw.token("dr.busy");

    // One buffered read holds the only slot.
    let url = gw.url("/fhir/Patient/hold");
    let t = token.clone();
    let held = std::thread::spawn(move || {
        let resp = http_client().get(url).bearer_auth(t).send().unwrap();
        (resp.status().as_u16(), resp.text().unwrap())
    });
    upstream
        .held
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the held request reached the upstream");
    assert_eq!(gw.metric("auditgate_buffered_in_progress"), 1.0);

    // A second buffered request waits its second, then is refused, journaled, never forwarded.
    let before = upstream.requests_seen();
    let started = std::time::Instant::now();
    let (status, id, body) = get(&gw, &token, "/fhir/Patient/second");
    let waited = started.elapsed();
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("gateway_busy"));
    assert!(
        waited >= std::time::Duration::from_millis(900),
        "refused after {waited:?}, before buffered_wait_secs"
    );
    assert_eq!(
        upstream.requests_seen(),
        before,
        "a refused request reached the EHR"
    );
    assert_eq!(
        gw.metric("auditgate_rejected_requests_total{reason=\"gateway_busy\"}"),
        1.0
    );

    // A request that waits less than the bound gets the slot when it frees.
    let url = gw.url("/fhir/Patient/third");
    let t = token.clone();
    let waiting = std::thread::spawn(move || {
        let resp = http_client().get(url).bearer_auth(t).send().unwrap();
        resp.status().as_u16()
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while gw.metric("auditgate_buffered_waiting") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the third request never waited"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    upstream.release();
    assert_eq!(held.join().unwrap().0, 200);
    assert_eq!(waiting.join().unwrap(), 200);
    assert_eq!(gw.metric("auditgate_buffered_in_progress"), 0.0);
    assert_eq!(gw.metric("auditgate_buffered_waiting"), 0.0);

    let records = gw.records();
    let refused = outcome(&records, &id);
    assert_eq!(refused.event.outcome.as_ref().unwrap().status, 503);
    assert_eq!(
        refused
            .event
            .patients
            .iter()
            .map(|p| p.id.as_str())
            .collect::<Vec<_>>(),
        ["second"],
        "the refused request is still attributed to the patient it asked for"
    );
}

#[test]
fn a_client_that_stalls_mid_body_loses_its_buffered_slot_and_nothing_is_forwarded() {
    use std::io::Write;
    let upstream = HeldUpstream::start();
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", upstream.port));
    opts.extra_toml = "[attribution]\nmax_buffered_requests = 1\nbuffered_wait_secs = 10\n\
                       client_timeout_secs = 1\n"
        .into();
    let gw = Gateway::start(opts);
    let token = gw.token("dr.stall");

    // A write whose body stops after 10 of its 1,000 bytes: it holds the only slot.
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    write!(
        stalled,
        "PUT /fhir/Patient/stalled HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/fhir+json\r\nContent-Length: 1000\r\n\r\n{{\"resource"
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while gw.metric("auditgate_buffered_in_progress") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled write never took the slot"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // The next buffered request waits for the slot, which the stalled client loses after its
    // timeout: it is answered, well before buffered_wait_secs.
    let started = std::time::Instant::now();
    let (status, _, _) = get(&gw, &token, "/fhir/Patient/next");
    assert_eq!(status, 200);
    let waited = started.elapsed();
    assert!(
        waited < std::time::Duration::from_secs(8),
        "waited {waited:?}: the stalled client kept its slot"
    );
    assert_eq!(gw.metric("auditgate_buffered_in_progress"), 0.0);
    assert_eq!(gw.metric("auditgate_buffered_waiting"), 0.0);
    assert_eq!(upstream.requests_seen(), 1, "only the read reached the EHR");
    // The stalled write is journaled as the client's timeout (499: no answer was sent).
    let records = gw.records();
    let stalled_record = records
        .iter()
        .find(|r| r.event.path == "/fhir/Patient/stalled" && r.event.phase == Phase::Outcome)
        .expect("the stalled write has an outcome record");
    let o = stalled_record.event.outcome.as_ref().unwrap();
    assert_eq!(
        (o.status, o.error.as_deref()),
        (499, Some("client_timeout"))
    );
    drop(stalled);
}

#[test]
fn a_binary_attachment_is_passed_through_byte_for_byte_as_not_json() {
    let upstream = HeldUpstream::start();
    let gw = Gateway::start(GatewayOptions::new(format!("127.0.0.1:{}", upstream.port)));
    let token = gw.token("dr.binary");
    let resp = http_client()
        .get(gw.url("/fhir/Binary/report-1"))
        .bearer_auth(&token)
        .header("Accept", "application/pdf")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "application/pdf");
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(&resp.bytes().unwrap()[..], PDF_BYTES);
    let records = gw.records();
    let e = &outcome(&records, &id).event;
    assert_eq!(e.attribution, Attribution::Partial);
    assert_eq!(e.attribution_gaps, ["not_json"]);
    assert!(e.patients.is_empty(), "{:?}", e.patients);
    assert_eq!(
        e.outcome.as_ref().unwrap().content_type.as_deref(),
        Some("application/pdf")
    );
}
