//! Every FHIR interaction through the real gateway in front of the real FHIR server: the client
//! gets exactly the bytes the server sent, and the journal holds the expected record (user,
//! action, interaction, resource, patients, client IP through a trusted proxy, device ID).

use std::time::Duration;

use auditgate::record::{Action, Attribution, InteractionKind, Phase, Record, Who};
use serde_json::json;

use crate::support::gateway::{Gateway, GatewayOptions, ISS_RSA};
use crate::support::oracle::referenced_patients;
use crate::support::{http_client, FhirServer};

/// One request and what its outcome record must say.
struct Case {
    method: &'static str,
    path: String,
    body: Option<(&'static str, String)>,
    status: u16,
    action: Action,
    interaction: InteractionKind,
    resource_type: Option<&'static str>,
    patients: Vec<&'static str>,
    attribution: Attribution,
}

// One table row per call reads best; the arguments are the row's columns.
#[allow(clippy::too_many_arguments)]
fn case(
    method: &'static str,
    path: &str,
    status: u16,
    action: Action,
    interaction: InteractionKind,
    resource_type: Option<&'static str>,
    patients: &[&'static str],
    attribution: Attribution,
) -> Case {
    Case {
        method,
        path: path.to_string(),
        body: None,
        status,
        action,
        interaction,
        resource_type,
        patients: patients.to_vec(),
        attribution,
    }
}

fn outcome_for<'a>(records: &'a [Record], request_id: &str) -> &'a Record {
    records
        .iter()
        .find(|r| r.event.request_id == request_id && r.event.phase == Phase::Outcome)
        .unwrap_or_else(|| panic!("no outcome record for request {request_id}"))
}

#[test]
fn each_interaction_is_recorded_and_passed_through_unchanged() {
    let fhir = FhirServer::seeded();
    let gw = Gateway::start(GatewayOptions::new(format!("127.0.0.1:{}", fhir.port())));
    let token = gw.token("dr.house");
    let client = http_client();

    use Action::*;
    use Attribution as At;
    use InteractionKind as I;
    let new_obs = json!({"resourceType": "Observation", "status": "final",
        "code": {"text": "gateway test"}, "subject": {"reference": "Patient/pat1"}})
    .to_string();
    let put_patient = {
        let mut p = fhir.get_json("Patient/pat2");
        p["active"] = json!(true);
        p.to_string()
    };
    let mut cases = vec![
        case(
            "GET",
            "/fhir/metadata",
            200,
            R,
            I::Capabilities,
            None,
            &[],
            At::None,
        ),
        case(
            "GET",
            "/fhir/Patient/example",
            200,
            R,
            I::Read,
            Some("Patient"),
            &["example"],
            At::Complete,
        ),
        case(
            "GET",
            "/fhir/Patient/example/_history/1",
            200,
            R,
            I::Vread,
            Some("Patient"),
            &["example"],
            At::Complete,
        ),
        case(
            "GET",
            "/fhir/Patient/example/_history",
            200,
            R,
            I::History,
            Some("Patient"),
            &["example"],
            At::Complete,
        ),
        case(
            "GET",
            "/fhir/Observation?subject=Patient/f001",
            200,
            R,
            I::Search,
            Some("Observation"),
            &["f001"],
            At::Complete,
        ),
        case(
            "GET",
            "/fhir/Observation?patient=example&_count=5",
            200,
            R,
            I::Search,
            Some("Observation"),
            &["example"],
            At::Complete,
        ),
        case(
            "GET",
            "/fhir/Observation?code=http://loinc.org|29463-7",
            200,
            R,
            I::Search,
            Some("Observation"),
            &[],
            At::Complete,
        ),
        case(
            "GET",
            "/fhir/Patient/example/Encounter",
            200,
            R,
            I::Search,
            Some("Encounter"),
            &["example"],
            At::Complete,
        ),
        case(
            "GET",
            "/fhir/Patient/example/$everything",
            200,
            R,
            I::Operation,
            Some("Patient"),
            &["example"],
            At::Complete,
        ),
        case(
            "GET",
            "/fhir/Observation/example",
            200,
            R,
            I::Read,
            Some("Observation"),
            &[],
            At::Complete,
        ),
        case(
            "DELETE",
            "/fhir/Observation/gw-test-delete",
            200,
            D,
            I::Delete,
            Some("Observation"),
            &[],
            // Its patient is read first (the pre-image), so the record is complete.
            At::Complete,
        ),
    ];
    let mut create = case(
        "POST",
        "/fhir/Observation",
        201,
        C,
        I::Create,
        Some("Observation"),
        &["pat1"],
        At::Complete,
    );
    create.body = Some(("application/fhir+json", new_obs));
    cases.push(create);
    let mut update = case(
        "PUT",
        "/fhir/Patient/pat2",
        200,
        U,
        I::Update,
        Some("Patient"),
        &["pat2"],
        At::Complete,
    );
    update.body = Some(("application/fhir+json", put_patient));
    cases.push(update);
    let mut patch = case(
        "PATCH",
        "/fhir/Patient/pat3",
        200,
        U,
        I::Patch,
        Some("Patient"),
        &["pat3"],
        At::Complete,
    );
    patch.body = Some((
        "application/json-patch+json",
        json!([{"op": "add", "path": "/active", "value": true}]).to_string(),
    ));
    cases.push(patch);
    let mut form_search = case(
        "POST",
        "/fhir/Observation/_search",
        200,
        R,
        I::Search,
        Some("Observation"),
        &["example"],
        At::Complete,
    );
    form_search.body = Some((
        "application/x-www-form-urlencoded",
        "patient=Patient%2Fexample&_count=3".into(),
    ));
    let mut transaction = case(
        "POST",
        "/fhir",
        200,
        E,
        I::Transaction,
        None,
        &["gw-tx-1"],
        At::Complete,
    );
    transaction.body = Some((
        "application/fhir+json",
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
            "resource": {"resourceType": "Patient", "id": "gw-tx-1", "active": true},
            "request": {"method": "PUT", "url": "Patient/gw-tx-1"}
        }]})
        .to_string(),
    ));
    cases.push(form_search);
    cases.push(transaction);

    let mut seen = Vec::new();
    for c in &cases {
        let mut req = client
            .request(c.method.parse().unwrap(), gw.url(&c.path))
            .bearer_auth(&token)
            .header("X-Forwarded-For", "203.0.113.77")
            .header("X-Device-Id", "ws-ward3-17")
            .header("User-Agent", "auditgate-tests/1");
        if let Some((ctype, body)) = &c.body {
            req = req.header("Content-Type", *ctype).body(body.clone());
        }
        let resp = req.send().unwrap();
        let status = resp.status().as_u16();
        let request_id = resp
            .headers()
            .get("x-request-id")
            .expect("the gateway returns the request id")
            .to_str()
            .unwrap()
            .to_string();
        let body = resp.bytes().unwrap();
        assert_eq!(
            status,
            c.status,
            "{} {}: {}",
            c.method,
            c.path,
            String::from_utf8_lossy(&body)
        );
        seen.push((request_id, body));
    }

    let records = gw.records();
    for (c, (request_id, body)) in cases.iter().zip(&seen) {
        let r = outcome_for(&records, request_id);
        let e = &r.event;
        let what = format!("{} {}", c.method, c.path);
        match &e.who {
            Who::Authenticated(a) => {
                assert_eq!(a.user, "dr.house", "{what}");
                assert_eq!(a.issuer, ISS_RSA, "{what}");
                assert_eq!(a.client_id.as_deref(), Some("test-app"), "{what}");
                assert_eq!(a.roles, vec!["physician".to_string()], "{what}");
                assert_eq!(a.purpose_of_use, vec!["TREAT".to_string()], "{what}");
            }
            other => panic!("{what}: not authenticated: {other:?}"),
        }
        assert_eq!(e.action, c.action, "{what}");
        assert_eq!(e.interaction, c.interaction, "{what}");
        assert_eq!(e.resource_type.as_deref(), c.resource_type, "{what}");
        // Expected: what the request names (the table) and every patient the response the
        // client received references, by the tests' own reading of FHIR JSON.
        let mut expected: std::collections::BTreeSet<String> =
            c.patients.iter().map(|p| p.to_string()).collect();
        if c.interaction != I::Capabilities {
            if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) {
                expected.extend(referenced_patients(&doc, fhir.base_url()));
            }
        }
        let ids: std::collections::BTreeSet<String> =
            e.patients.iter().map(|p| p.id.clone()).collect();
        assert_eq!(ids, expected, "{what}");
        assert_eq!(
            ids.len(),
            e.patients.len(),
            "{what}: a patient listed twice"
        );
        assert_eq!(e.attribution, c.attribution, "{what}");
        assert_eq!(e.outcome.as_ref().unwrap().status, c.status, "{what}");
        assert_eq!(
            e.net.client_ip, "203.0.113.77",
            "{what}: client IP through the trusted proxy"
        );
        assert_eq!(e.net.peer_ip, "127.0.0.1", "{what}");
        assert_eq!(e.net.device_id.as_deref(), Some("ws-ward3-17"), "{what}");
        assert_eq!(
            e.net.user_agent.as_deref(),
            Some("auditgate-tests/1"),
            "{what}"
        );
        assert_eq!(e.net.gateway.node, "test-gw", "{what}");
        assert_eq!(e.method, c.method, "{what}");
        // A change has an intent record, durable before the request was forwarded.
        if matches!(c.method, "POST" | "PUT" | "PATCH" | "DELETE") {
            let intent_seq = e
                .intent_seq
                .unwrap_or_else(|| panic!("{what}: outcome names no intent"));
            let intent = records.iter().find(|r| r.header.seq == intent_seq).unwrap();
            assert_eq!(intent.event.phase, Phase::Intent, "{what}");
            assert_eq!(intent.event.request_id, *request_id, "{what}");
            assert!(intent.header.seq < r.header.seq);
        }
    }

    // Byte for byte: what the client got through the gateway is what the server sent. Reads are
    // stable, so the same request straight to the server must give the same bytes.
    for (c, (_, body)) in cases.iter().zip(&seen) {
        // (metadata carries the time it was generated, so only reads are compared.)
        if c.method == "GET" && c.interaction == I::Read {
            let direct = client
                .get(fhir.url(c.path.trim_start_matches("/fhir/")))
                .send()
                .unwrap()
                .bytes()
                .unwrap();
            assert!(
                direct[..] == body[..],
                "{}: body differs from the server's ({} vs {} bytes)",
                c.path,
                direct.len(),
                body.len()
            );
        }
    }

    // The upstream saw the request id the journal holds, and the client's token unchanged.
    let (code, out) = crate::support::gateway::verify_cli(&gw.journal, false);
    assert_eq!(code, 0, "{out}");
    assert!(gw.log().len() < 1_000_000);
    std::thread::sleep(Duration::from_millis(10));
}

#[test]
fn searches_via_a_real_fhir_client_are_recorded_page_by_page_with_their_patients() {
    // A server of its own whose paging links point at the gateway, as a real deployment
    // configures its EHR's public base URL: then every page goes through the gateway.
    let gw_port = crate::support::free_port();
    let fhir =
        FhirServer::start_with_settings(&format!("base_url: http://127.0.0.1:{gw_port}/fhir\n"));
    fhir.put_resource(&crate::support::example("Patient-example.json"));
    let mut observations: usize = 0;
    for entry in std::fs::read_dir(crate::support::examples_dir())
        .unwrap()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("Observation-") {
            let obs = crate::support::example(&name);
            if obs["subject"]["reference"] == "Patient/example" {
                fhir.put_resource(&obs);
                observations += 1;
            }
        }
    }
    assert!(observations > 10, "{observations}");
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.port = Some(gw_port);
    let gw = Gateway::start(opts);
    let token = gw.token("nurse.joy");
    let script = r#"
import sys
from fhirclient import client
from fhirclient.models.patient import Patient
from fhirclient.models.observation import Observation
base, token = sys.argv[1], sys.argv[2]
smart = client.FHIRClient(settings={"app_id": "auditgate-tests", "api_base": base})
smart.server.session.headers.update({"Authorization": "Bearer " + token})
p = Patient.read("example", smart.server)
print("patient", p.id)
obs = list(Observation.where(struct={"patient": "example", "_count": "5"}).perform_resources_iter(smart.server))
print("observations", len(obs))
"#;
    let out = crate::support::run_python(script, &[&gw.url("/fhir"), &token], &[]);
    let stdout = crate::support::assert_success(&out, "fhirclient through the gateway");
    assert!(stdout.contains("patient example"), "{stdout}");
    assert!(
        stdout.contains(&format!("observations {observations}")),
        "{stdout}"
    );

    let records = gw.records();
    let reads: Vec<_> = records
        .iter()
        .filter(|r| r.event.interaction == InteractionKind::Read)
        .collect();
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0].event.patients[0].id, "example");
    let searches: Vec<_> = records
        .iter()
        .filter(|r| r.event.interaction == InteractionKind::Search)
        .collect();
    // Every page is its own request, recorded on its own.
    assert_eq!(
        searches.len(),
        observations.div_ceil(5),
        "{:#?}",
        searches.iter().map(|r| &r.event.query).collect::<Vec<_>>()
    );
    for s in searches {
        assert_eq!(s.event.patients.len(), 1);
        assert_eq!(s.event.patients[0].id, "example");
        match &s.event.who {
            Who::Authenticated(a) => assert_eq!(a.user, "nurse.joy"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn h2c_break_glass_and_the_deny_policy() {
    let fhir = FhirServer::seeded();
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.unmatched = "deny";
    let gw = Gateway::start(opts);
    let token = gw.token("dr.emergency");

    // HTTP/2 over cleartext (prior knowledge), with a break-glass declaration.
    let h2 = reqwest::blocking::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2
        .get(gw.url("/fhir/Patient/example"))
        .bearer_auth(&token)
        .header("X-Break-Glass", "true")
        .send()
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status().as_u16(), 200);
    let h2_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();

    // A path no rule covers is refused under `unmatched = "deny"`, and recorded.
    let resp = http_client()
        .get(gw.url("/not-fhir/anything"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let deny_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(resp.text().unwrap().contains("unmatched_route"));

    let records = gw.records();
    let r = outcome_for(&records, &h2_id);
    match &r.event.who {
        Who::Authenticated(a) => assert!(a.break_glass, "break glass recorded"),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.event.patients[0].id, "example");
    let d = outcome_for(&records, &deny_id);
    assert_eq!(d.event.rule, "unmatched");
    assert_eq!(d.event.interaction, InteractionKind::Unclassified);
    assert_eq!(d.event.outcome.as_ref().unwrap().status, 403);
    assert!(
        !fhir
            .upstream_requests()
            .iter()
            .any(|u| u.target.contains("not-fhir")),
        "a denied request never reaches the EHR"
    );
}
