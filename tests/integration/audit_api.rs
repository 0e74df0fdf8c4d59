//! The audit listener (IHE ITI-81 `GET /AuditEvent?...`): real traffic through a real gateway
//! in front of the FHIR server, then searched by auditors with real FHIR clients (fhirpy, and
//! fhirclient, whose models check every event against R4). An auditor's search is recorded in
//! the same chain with the patients it returned; a user who is not an auditor is refused (403)
//! and recorded; a request without a token is refused (401) and recorded.

use std::time::{Duration, Instant};

use auditgate::record::{PatientSource, Record, Who};
use serde_json::{json, Value};

use crate::support::gateway::{
    put_patients, read_as, token_with as token, user_of, Gateway, GatewayOptions,
};
use crate::support::s3::{aws_env, S3Server, REGION};
use crate::support::{assert_success, free_port, http_client, run_python, FhirServer};

fn audit_get(port: u16, query: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = http_client().get(format!("http://127.0.0.1:{port}/AuditEvent?{query}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

fn audit_records(gw: &Gateway) -> Vec<Record> {
    gw.records()
        .into_iter()
        .filter(|r| r.event.rule == "audit-api.search")
        .collect()
}

const SCRIPT: &str = r#"
import json, sys, warnings
warnings.simplefilter("ignore")
base, token, day = sys.argv[1], sys.argv[2], sys.argv[3]
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome
c = SyncFHIRClient(base, authorization="Bearer " + token)
ae = lambda: c.resources("AuditEvent")
def ids(found):
    return sorted(r["id"] for r in found if r["resourceType"] == "AuditEvent")
def summary(found):
    out = []
    for r in found:
        if r["resourceType"] != "AuditEvent":
            continue
        user = [a["who"]["identifier"]["value"] for a in r["agent"] if a.get("requestor")]
        pats = [e["what"]["reference"] for e in r.get("entity", []) if e.get("role", {}).get("code") == "1"]
        out.append({"id": r["id"], "user": user, "patients": pats, "action": r["action"],
                    "subtype": [s["code"] for s in r.get("subtype", [])], "outcome": r["outcome"]})
    return sorted(out, key=lambda e: e["id"])
out = {}
out["aud3_by_alice"] = summary(ae().search(patient="aud-3", agent="alice").fetch_all())
out["aud2_by_users"] = summary(ae().search(patient="Patient/aud-2", subtype="read,search", type="rest", agent="alice,bob").fetch_all())
out["alice_searches_paged"] = ids(ae().search(agent="alice", subtype="search").limit(1).fetch_all())
out["alice_searches"] = ids(ae().search(agent="alice", subtype="search").fetch_all())
out["today"] = len(ae().search(date__ge=day, agent="alice").fetch_all())
out["before"] = len(ae().search(date__lt=day, agent="alice").fetch_all())
out["address"] = len(ae().search(address="127.0.0.1", agent="alice").fetch_all())
out["failed"] = len(ae().search(outcome="4,8,12", agent="alice").fetch_all())
out["entity"] = len(ae().search(entity="Patient/aud-1", agent="bob").fetch_all())
try:
    ae().search(patinet="aud-1").fetch()
    out["unknown"] = "answered"
except OperationOutcome as e:
    out["unknown"] = "refused"
# fhirclient: its R4 models check each event strictly.
from fhirclient import client
from fhirclient.models.auditevent import AuditEvent
fc = client.FHIRClient(settings={"app_id": "audit-test", "api_base": base})
fc.server.session.headers["Authorization"] = "Bearer " + token
found = [r for r in AuditEvent.where(struct={"patient": "aud-3", "agent": "alice"}).perform_resources_iter(fc.server) if r.resource_type == "AuditEvent"]
out["fhirclient"] = sorted(r.id for r in found)
print(json.dumps(out))
"#;

#[test]
fn auditors_search_the_trail_with_fhir_clients_and_every_search_is_recorded() {
    let fhir = FhirServer::seeded();
    put_patients(fhir, &["aud-1", "aud-2", "aud-3"]);
    let audit_port = free_port();
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.extra_toml = format!(
        "[audit_api]\nenabled = true\nlisten = \"127.0.0.1:{audit_port}\"\npage_size = 50\n\n[auditors]\nroles = [\"privacy-officer\"]\nscopes = [\"audit.read\"]\n"
    );
    let gw = Gateway::start(opts);
    let get = |path: &str, sub: &str| read_as(&gw, path, sub);
    get("/fhir/Patient/aud-1", "alice");
    get("/fhir/Patient?_id=aud-1,aud-2,aud-3", "alice");
    get("/fhir/Patient/aud-2", "bob");
    get("/fhir/Patient/aud-1", "bob");

    let auditor = token(&gw, "auditor-1", &["staff"], Some("openid audit.read"));
    let officer = token(&gw, "officer-1", &["privacy-officer"], None);
    // The newest records are served once a signed checkpoint covers them (interval 1 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, bundle) = audit_get(audit_port, "agent=bob", Some(&officer));
        // 503: no checkpoint signed yet.
        assert!(
            status == 200 || status == 503,
            "{status} {bundle}\n{}",
            gw.log()
        );
        if bundle["total"] == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bob's reads never appeared: {bundle:#}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let day = &time::OffsetDateTime::now_utc().date().to_string();
    let base = format!("http://127.0.0.1:{audit_port}");
    let out = run_python(SCRIPT, &[&base, &auditor, day], &[]);
    let out: Value = serde_json::from_str(assert_success(&out, "fhirpy and fhirclient").trim())
        .expect("the script prints one JSON object");

    // Alice's search named three patients: one event each (BALP); aud-3's is one event.
    let aud3 = out["aud3_by_alice"].as_array().unwrap();
    assert_eq!(aud3.len(), 1, "{out:#}");
    assert_eq!(aud3[0]["user"], json!(["alice"]));
    assert_eq!(aud3[0]["patients"], json!(["Patient/aud-3"]));
    assert_eq!(aud3[0]["action"], "E");
    assert_eq!(aud3[0]["subtype"], json!(["search"]));
    assert_eq!(aud3[0]["outcome"], "0");
    // aud-2: alice's search and bob's read (the officer's searches that returned bob's read
    // of it name it too: those are left out by `agent`).
    let aud2 = out["aud2_by_users"].as_array().unwrap();
    let mut users: Vec<&str> = aud2
        .iter()
        .map(|e| e["user"][0].as_str().unwrap())
        .collect();
    users.sort();
    assert_eq!(users, ["alice", "bob"], "{out:#}");
    // Paging (one event a page, the client following `next`) gives the same three events.
    assert_eq!(
        out["alice_searches"].as_array().unwrap().len(),
        3,
        "{out:#}"
    );
    assert_eq!(out["alice_searches_paged"], out["alice_searches"]);
    assert_eq!(
        out["today"], 4,
        "alice's read and her search's three events"
    );
    assert_eq!(out["before"], 0);
    assert_eq!(out["address"], 4);
    assert_eq!(out["failed"], 0);
    assert_eq!(out["entity"], 1, "bob's read of aud-1");
    assert_eq!(
        out["unknown"], "refused",
        "a misspelt parameter is an error"
    );
    assert_eq!(out["fhirclient"].as_array().unwrap().len(), 1);
    assert_eq!(out["fhirclient"][0], aud3[0]["id"]);

    // A user who is not an auditor, and a request without a token: refused, and recorded.
    let physician = token(&gw, "carol", &["physician"], Some("openid patient/*.read"));
    let (status, body) = audit_get(audit_port, "patient=aud-1", Some(&physician));
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert!(
        !body.to_string().contains("aud-1\""),
        "a refusal names no event: {body}"
    );
    let (status, _) = audit_get(audit_port, "patient=aud-1", None);
    assert_eq!(status, 401);

    let records = audit_records(&gw);
    let carol = records
        .iter()
        .find(|r| user_of(r) == "carol")
        .expect("the refused search is recorded");
    let outcome = carol.event.outcome.as_ref().unwrap();
    assert_eq!(
        (outcome.status, outcome.error.as_deref()),
        (403, Some("forbidden"))
    );
    assert_eq!(carol.event.query.as_deref(), Some("patient=aud-1"));
    let nobody = records
        .iter()
        .find(|r| matches!(&r.event.who, Who::Unauthenticated { .. }))
        .expect("the request without a token is recorded");
    assert_eq!(nobody.event.outcome.as_ref().unwrap().status, 401);
    assert_eq!(nobody.event.net.gateway.listener, "audit");

    // The auditor's searches are in the chain: who, the search as sent, and each page's
    // patients (from the answer) besides the patients it asked for.
    let mine: Vec<&Record> = records
        .iter()
        .filter(|r| user_of(r) == "auditor-1")
        .collect();
    assert!(
        mine.len() >= 13,
        "every search and every page: {}",
        mine.len()
    );
    let aud3_search = mine
        .iter()
        .find(|r| {
            let q = r.event.query.as_deref().unwrap_or("");
            q.contains("patient=aud-3") && q.contains("agent=alice")
        })
        .expect("the auditor's search for aud-3");
    let patients: Vec<(&str, PatientSource)> = aud3_search
        .event
        .patients
        .iter()
        .map(|p| (p.id.as_str(), p.source))
        .collect();
    assert_eq!(patients, [("aud-3", PatientSource::Response)]);
    let pages: Vec<&&Record> = mine
        .iter()
        .filter(|r| r.event.query.as_deref().unwrap_or("").contains("_count=1"))
        .collect();
    assert_eq!(pages.len(), 3, "one record per page");
    for page in pages {
        assert_eq!(
            page.event.patients.len(),
            1,
            "each page names its one event's patient"
        );
        assert_eq!(page.event.outcome.as_ref().unwrap().status, 200);
    }
    // And an auditor can see who searched the trail: the auditor's own searches are events.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, bundle) = audit_get(audit_port, "agent=auditor-1&subtype=search", Some(&officer));
        let total = bundle["total"].as_u64().unwrap_or(0);
        if total >= 13 {
            let first = &bundle["entry"][0]["resource"];
            assert!(
                first["entity"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["description"] == "search of AuditEvent"),
                "{first:#}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the auditor's searches never appeared: {bundle:#}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    crate::support::gateway::check_log_has_no_phi(&gw.log(), &gw.journal)
        .unwrap_or_else(|e| panic!("the gateway's log holds {e}"));
    let metrics = gw.admin_get("/metrics").1;
    assert!(
        metrics.contains("auditgate_audit_api_requests_total{result=\"forbidden\"} 1"),
        "{metrics}"
    );
}

#[test]
fn the_audit_listener_answers_from_the_s3_archive_once_the_local_segments_are_gone() {
    let fhir = FhirServer::seeded();
    let s3 = S3Server::start();
    s3.create_locked_bucket("audit-api");
    let audit_port = free_port();
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.journal_toml = "segment_max_bytes = 4096".into();
    opts.extra_toml = format!(
        "[archive]\nkind = \"s3\"\nbucket = \"audit-api\"\nprefix = \"audit\"\nregion = \"{REGION}\"\n\
         endpoint_url = \"{}\"\nforce_path_style = true\nretention_days = 1\nallow_short_retention = true\n\
         poll_interval_secs = 1\nretry_max_secs = 2\ndelete_local_after_ship = true\n\n\
         [audit_api]\nenabled = true\nlisten = \"127.0.0.1:{audit_port}\"\n",
        s3.endpoint()
    );
    opts.env = aws_env();
    let gw = Gateway::start(opts);
    let client = http_client();
    let reader = token(&gw, "dana", &["physician"], None);
    for _ in 0..30 {
        let resp = client
            .get(gw.url("/fhir/Patient/example"))
            .bearer_auth(&reader)
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    }
    // The archiver ships the sealed segments and removes them from the journal directory.
    let deadline = Instant::now() + Duration::from_secs(30);
    while auditgate::journal::list_segments(&gw.journal)
        .unwrap()
        .first()
        .is_some_and(|(name, _)| name.first() == 1)
    {
        assert!(
            Instant::now() < deadline,
            "the first segment never left the journal directory"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let auditor = token(&gw, "auditor-1", &[], Some("audit.read"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, bundle) = audit_get(
            audit_port,
            "agent=dana&patient=example&_count=100",
            Some(&auditor),
        );
        if status == 200 && bundle["total"] == 30 {
            let first = &bundle["entry"][0]["resource"];
            assert_eq!(first["subtype"][0]["code"], "read");
            let coverage = bundle["entry"][30]["resource"]["issue"][0]["diagnostics"]
                .as_str()
                .unwrap();
            assert!(
                coverage.contains("covered by the signed checkpoint"),
                "{coverage}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{status} {bundle:#}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn the_audit_listener_answers_for_the_other_nodes_of_its_archive_whose_keys_it_is_given() {
    let fhir = FhirServer::seeded();
    put_patients(fhir, &["multi-1"]);
    let archive = tempfile::tempdir().unwrap();
    let archive_toml = format!(
        "[archive]\nkind = \"dir\"\ndir = \"{}\"\nprefix = \"shared\"\npoll_interval_secs = 1\n",
        archive.path().display()
    );
    // Node gw-b serves frank; its sealed segments and checkpoints go to the shared archive.
    let mut b = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    b.node = "gw-b".into();
    b.journal_toml = "segment_max_bytes = 4096".into();
    b.extra_toml = archive_toml.clone();
    let gw_b = Gateway::start(b);
    for _ in 0..12 {
        read_as(&gw_b, "/fhir/Patient/multi-1", "frank");
    }
    // Node test-gw, on the same archive, is given gw-b's public key.
    let audit_port = free_port();
    let mut a = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    a.extra_toml = format!(
        "{archive_toml}\n[auditors]\nnode_keys = [\"{}\"]\n\n[audit_api]\nenabled = true\nlisten = \"127.0.0.1:{audit_port}\"\n",
        crate::support::gateway::public_key_of(&gw_b.journal).display()
    );
    let gw_a = Gateway::start(a);
    let auditor = token(&gw_a, "auditor-1", &[], Some("audit.read"));
    // frank's reads that reached the archive (sealed segments, under a shipped checkpoint)
    // are answered by test-gw, from gw-b's archived trail, verified with gw-b's key.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, bundle) = audit_get(audit_port, "agent=frank&_count=100", Some(&auditor));
        let total = bundle["total"].as_u64().unwrap_or(0);
        if status == 200 && total > 0 {
            let sites: Vec<&str> = bundle["entry"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e["resource"]["source"]["site"].as_str())
                .collect();
            assert!(sites.iter().all(|s| *s == "gw-b"), "{sites:?}");
            let coverage = bundle.to_string();
            assert!(
                coverage.contains("node gw-b:") && coverage.contains("node test-gw:"),
                "{bundle:#}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{status} {bundle:#}\n{}",
            gw_a.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
