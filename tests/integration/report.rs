//! `auditgate report` over a trail the tests wrote on purpose (known users, patients, times,
//! IPs, outcomes), half archived and half in the local journal: the access, activity and
//! breach reports give exactly the expected rows; the breach report's patients CSV equals the
//! tests' own computation; every format renders; the proof re-checks offline.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use auditgate::record::{
    Action, Actor, Event, InteractionKind, Outcome, PatientRef, PatientSource, Phase, Who,
};
use auditgate::tlog::checkpoint::{write_key_pair, CheckpointSigner};
use serde_json::Value;

use crate::support::fixtures::{event, synthetic_trail, Stored};

const PREFIX: &str = "r";

/// One request the tests made up.
struct Made {
    at: &'static str,
    user: &'static str,
    client: &'static str,
    ip: &'static str,
    device: &'static str,
    interaction: InteractionKind,
    resource: (&'static str, Option<&'static str>),
    patients: &'static [&'static str],
    status: u16,
    break_glass: bool,
    /// The declared purpose of use.
    purpose: &'static str,
    /// A change: an intent record one second before the outcome.
    change: bool,
}

const fn made(
    at: &'static str,
    user: &'static str,
    ip: &'static str,
    interaction: InteractionKind,
    resource: (&'static str, Option<&'static str>),
    patients: &'static [&'static str],
    status: u16,
) -> Made {
    Made {
        at,
        user,
        client: "ehr-web",
        ip,
        device: "ws-1",
        interaction,
        resource,
        patients,
        status,
        break_glass: false,
        purpose: "TREAT",
        change: false,
    }
}

fn requests() -> Vec<Made> {
    use InteractionKind::*;
    vec![
        made(
            "2026-03-02T09:00:00Z",
            "dr-a",
            "10.0.0.5",
            Read,
            ("Patient", Some("p1")),
            &["p1"],
            200,
        ),
        made(
            "2026-03-02T09:05:00Z",
            "dr-a",
            "10.0.0.5",
            Search,
            ("Observation", None),
            &["p1", "p2"],
            200,
        ),
        Made {
            change: true,
            device: "ws-2",
            ..made(
                "2026-03-02T10:00:01Z",
                "nurse-b",
                "10.0.0.7",
                Update,
                ("Patient", Some("p2")),
                &["p2"],
                200,
            )
        },
        made(
            "2026-03-03T22:00:00Z",
            "dr-a",
            "10.0.0.5",
            Read,
            ("Patient", Some("p3")),
            &["p3"],
            403,
        ),
        Made {
            client: "rogue-app",
            device: "d-x",
            break_glass: true,
            ..made(
                "2026-03-03T23:00:00Z",
                "mallory",
                "203.0.113.9",
                Search,
                ("Patient", None),
                &["p1", "p3", "p4"],
                200,
            )
        },
        Made {
            client: "rogue-app",
            device: "d-x",
            ..made(
                "2026-03-04T01:00:00Z",
                "mallory",
                "203.0.113.9",
                Read,
                ("Patient", Some("p5")),
                &["p5"],
                404,
            )
        },
        Made {
            client: "rogue-app",
            device: "d-x",
            ..made(
                "2026-03-04T02:00:00Z",
                "mallory",
                "203.0.113.9",
                Read,
                ("Encounter", Some("e9")),
                &["p4"],
                200,
            )
        },
        made(
            "2026-03-05T08:00:00Z",
            "dr-a",
            "10.0.0.5",
            Read,
            ("Patient", Some("p1")),
            &["p1"],
            200,
        ),
        Made {
            client: "research-portal",
            purpose: "HRESCH",
            ..made(
                "2026-03-06T12:00:00Z",
                "res-c",
                "10.0.0.9",
                Read,
                ("Condition", Some("c1")),
                &["p6"],
                200,
            )
        },
    ]
}

fn micros(at: &str) -> i64 {
    auditgate::columnar::rows::micros_of(at).unwrap()
}

/// The journal's events of the made-up requests, with their times.
fn events() -> Vec<(Event, i64)> {
    let mut out = Vec::new();
    for (i, m) in requests().into_iter().enumerate() {
        let mut e = event(i);
        e.request_id = format!("req-{i}");
        e.who = Who::Authenticated(Actor {
            user: m.user.into(),
            issuer: "https://idp.example".into(),
            name: Some(format!("Name of {}", m.user)),
            client_id: Some(m.client.into()),
            purpose_of_use: vec![m.purpose.into()],
            break_glass: m.break_glass,
            ..Actor::default()
        });
        e.interaction = m.interaction;
        e.action = match m.interaction {
            InteractionKind::Update => Action::U,
            _ => Action::R,
        };
        e.resource_type = Some(m.resource.0.into());
        e.resource_id = m.resource.1.map(Into::into);
        e.patients = m
            .patients
            .iter()
            .map(|p| PatientRef {
                id: p.to_string(),
                source: PatientSource::Path,
            })
            .collect();
        e.net.client_ip = m.ip.into();
        e.net.device_id = Some(m.device.into());
        let at = micros(m.at);
        if m.change {
            let mut intent = e.clone();
            intent.phase = Phase::Intent;
            out.push((intent, at - 1_000_000));
            e.intent_seq = Some(out.len() as u64);
        }
        e.outcome = Some(Outcome {
            status: m.status,
            code: Outcome::code_for_status(m.status),
            ..Outcome::default()
        });
        out.push((e, at));
    }
    out
}

struct Trail {
    _root: tempfile::TempDir,
    archive: PathBuf,
    journal: PathBuf,
    key: PathBuf,
}

/// The made-up trail of node `gw-r`: the first 5 records archived (zstd, with a copy), the
/// other 5 in the local journal (sealed, with a copy).
fn trail() -> Trail {
    let root = tempfile::tempdir().unwrap();
    let archive = root.path().join("archive");
    let journal = root.path().join("journal");
    let key = root.path().join("gw-r.key");
    write_key_pair(&key, "auditgate/gw-r").unwrap();
    let signer = CheckpointSigner::load(&key, false, "").unwrap();
    let events = events();
    assert_eq!(events.len(), 10);
    synthetic_trail(
        &archive,
        PREFIX,
        &journal,
        "gw-r",
        &signer,
        &events,
        &[(5, Stored::ZstdWithCopy), (5, Stored::LocalWithCopy)],
        &auditgate::columnar::WriteOptions::default(),
    );
    Trail {
        archive,
        journal,
        key: auditgate::tlog::checkpoint::public_key_path(&key),
        _root: root,
    }
}

impl Trail {
    fn report(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_auditgate"))
            .arg("report")
            .args(args)
            .args(["--archive", &self.archive.display().to_string()])
            .args(["--prefix", PREFIX])
            .args(["--journal", &self.journal.display().to_string()])
            .args(["--key", &self.key.display().to_string()])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A report as JSON (exit 0 expected).
    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--format", "json"]);
        let (code, stdout, stderr) = self.report(&all);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        serde_json::from_str(&stdout).unwrap()
    }
}

/// Column `column` of every row of section `index`.
fn column(report: &Value, index: usize, column: &str) -> Vec<String> {
    report["sections"][index]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[column].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_patients_access_report_lists_every_request_that_named_them_with_its_who_what_and_where() {
    let t = trail();
    let report = t.json(&["access", "--patient", "p1"]);
    assert_eq!(report["kind"], "access");
    assert_eq!(report["verified"], true);
    assert_eq!(
        column(&report, 0, "time"),
        [
            "2026-03-02T09:00:00.000000Z",
            "2026-03-02T09:05:00.000000Z",
            "2026-03-03T23:00:00.000000Z",
            "2026-03-05T08:00:00.000000Z"
        ]
    );
    assert_eq!(
        column(&report, 0, "user"),
        ["dr-a", "dr-a", "mallory", "dr-a"]
    );
    assert_eq!(
        column(&report, 0, "user_name"),
        [
            "Name of dr-a",
            "Name of dr-a",
            "Name of mallory",
            "Name of dr-a"
        ]
    );
    assert_eq!(
        column(&report, 0, "client"),
        ["ehr-web", "ehr-web", "rogue-app", "ehr-web"]
    );
    assert_eq!(
        column(&report, 0, "what"),
        ["Patient/p1", "Observation", "Patient", "Patient/p1"]
    );
    assert_eq!(
        column(&report, 0, "interaction"),
        ["read", "search", "search", "read"]
    );
    assert_eq!(column(&report, 0, "break_glass"), ["", "", "yes", ""]);
    assert_eq!(column(&report, 0, "status"), ["200", "200", "200", "200"]);
    assert_eq!(
        column(&report, 0, "client_ip"),
        ["10.0.0.5", "10.0.0.5", "203.0.113.9", "10.0.0.5"]
    );
    assert_eq!(column(&report, 0, "purpose"), ["TREAT"; 4]);
    assert_eq!(
        column(&report, 0, "evidence"),
        ["gw-r:1", "gw-r:2", "gw-r:6", "gw-r:9"]
    );
    assert_eq!(report["facts"]["distinct users"], "2");
    assert_eq!(report["facts"]["break-glass accesses"], "1");
    // Which nodes and records it covers, and the proof of it.
    assert_eq!(report["coverage"][0]["node"], "gw-r");
    assert_eq!(report["coverage"][0]["first"], 1);
    assert_eq!(report["coverage"][0]["last"], 10);
    assert_eq!(
        report["proof"]["nodes"][0]["records"]
            .as_array()
            .unwrap()
            .len(),
        4
    );

    // A window: the last access falls out; sorted by user then time, newest first.
    let windowed = t.json(&[
        "access",
        "--patient",
        "p1",
        "--from",
        "2026-03-02",
        "--to",
        "2026-03-04",
        "--sort",
        "user,-time",
    ]);
    assert_eq!(
        column(&windowed, 0, "time"),
        [
            "2026-03-02T09:05:00.000000Z",
            "2026-03-02T09:00:00.000000Z",
            "2026-03-03T23:00:00.000000Z"
        ]
    );
    let (code, _, stderr) = t.report(&["access", "--patient", "p1", "--sort", "nope"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not a column of this report"), "{stderr}");
}

#[test]
fn a_change_is_one_access_with_its_outcome_and_both_records_as_evidence() {
    let t = trail();
    let report = t.json(&["access", "--patient", "p2"]);
    assert_eq!(
        column(&report, 0, "time"),
        ["2026-03-02T09:05:00.000000Z", "2026-03-02T10:00:01.000000Z"]
    );
    assert_eq!(column(&report, 0, "action"), ["R", "U"]);
    assert_eq!(column(&report, 0, "evidence"), ["gw-r:2", "gw-r:3 gw-r:4"]);
    assert_eq!(column(&report, 0, "device"), ["ws-1", "ws-2"]);
}

#[test]
fn a_users_activity_report_counts_days_and_distinct_patients() {
    let t = trail();
    let report = t.json(&["activity", "--user", "dr-a"]);
    assert_eq!(report["facts"]["requests"], "4");
    assert_eq!(report["facts"]["distinct patients"], "3");
    assert_eq!(
        column(&report, 0, "day"),
        ["2026-03-02", "2026-03-03", "2026-03-05"]
    );
    assert_eq!(column(&report, 0, "requests"), ["2", "1", "1"]);
    assert_eq!(column(&report, 0, "distinct_patients"), ["2", "1", "1"]);
    assert_eq!(column(&report, 0, "patients"), ["p1 p2", "p3", "p1"]);
    assert_eq!(column(&report, 0, "refused_or_failed"), ["0", "1", "0"]);
    assert_eq!(column(&report, 1, "status"), ["200", "200", "403", "200"]);
}

#[test]
fn a_breach_report_gives_the_timeline_and_the_exposed_patients_as_the_tests_compute_them() {
    let t = trail();
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("patients.csv");
    let report = t.json(&[
        "breach",
        "--user",
        "mallory",
        "--from",
        "2026-03-03",
        "--to",
        "2026-03-04",
        "--patients-csv",
        csv_path.to_str().unwrap(),
    ]);
    assert_eq!(
        column(&report, 0, "time"),
        [
            "2026-03-03T23:00:00.000000Z",
            "2026-03-04T01:00:00.000000Z",
            "2026-03-04T02:00:00.000000Z"
        ]
    );
    assert_eq!(column(&report, 0, "status"), ["200", "404", "200"]);
    // The tests' own computation: patients of mallory's successful requests in the window.
    let (from, to) = (
        micros("2026-03-03T00:00:00Z"),
        micros("2026-03-05T00:00:00Z"),
    );
    let mut expected: BTreeMap<&str, (String, String, usize, Vec<&str>)> = BTreeMap::new();
    for m in requests() {
        let at = micros(m.at);
        if m.user != "mallory" || at < from || at >= to || m.status >= 400 {
            continue;
        }
        let ts = auditgate::record::format_ts(
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(at as u64),
        );
        for p in m.patients {
            let x = expected
                .entry(p)
                .or_insert_with(|| (ts.clone(), ts.clone(), 0, Vec::new()));
            x.1 = ts.clone();
            x.2 += 1;
            if !x.3.contains(&m.resource.0) {
                x.3.push(m.resource.0);
                x.3.sort();
            }
        }
    }
    let mut expected_csv =
        String::from("patient_id,first_access,last_access,requests,resource_types\n");
    for (p, (first, last, n, types)) in &expected {
        expected_csv.push_str(&format!("{p},{first},{last},{n},{}\n", types.join(" ")));
    }
    assert_eq!(std::fs::read_to_string(&csv_path).unwrap(), expected_csv);
    assert_eq!(column(&report, 1, "patient_id"), ["p1", "p3", "p4"]);
    assert_eq!(
        report["facts"]["patients named only by refused or failed requests"],
        "1 (p5)"
    );
    assert_eq!(column(&report, 2, "day"), ["2026-03-03", "2026-03-04"]);
    assert_eq!(column(&report, 2, "distinct_patients_exposed"), ["3", "1"]);

    // The same suspect by IP network, by device and by client app: the same timeline.
    for suspect in [
        ["--ip", "203.0.113.0/24"],
        ["--device", "d-x"],
        ["--client", "rogue-app"],
    ] {
        let mut args = vec!["breach", "--from", "2026-03-03", "--to", "2026-03-04"];
        args.extend(suspect);
        let by = t.json(&args);
        assert_eq!(
            column(&by, 0, "time"),
            column(&report, 0, "time"),
            "{suspect:?}"
        );
    }
    // A suspect is required.
    let (code, _, stderr) = t.report(&["breach", "--from", "2026-03-03"]);
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn every_format_renders_and_the_proof_rechecks_offline() {
    let t = trail();
    let dir = tempfile::tempdir().unwrap();
    let proof = dir.path().join("proof.json");
    let (code, table, stderr) = t.report(&[
        "access",
        "--patient",
        "p1",
        "--proof",
        proof.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        table.starts_with("Accesses to the record of patient p1\n"),
        "{table}"
    );
    assert!(table.contains("Accesses (4)"), "{table}");
    assert!(
        table.contains("node gw-r: records 1..=10 scanned") && table.contains("signed checkpoint"),
        "{table}"
    );
    let check = Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(["verify-report", proof.to_str().unwrap()])
        .args(["--key", t.key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    let (code, csv, _) = t.report(&["access", "--patient", "p1", "--format", "csv"]);
    assert_eq!(code, 0);
    let mut lines = csv.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("time,user,user_name,issuer,client,"));
    assert_eq!(lines.count(), 4);

    let html_path = dir.path().join("r.html");
    let (code, _, stderr) = t.report(&[
        "breach",
        "--user",
        "mallory",
        "--format",
        "html",
        "-o",
        html_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert!(html.contains("<h2>Patients exposed (3)</h2>"), "{html}");
    assert!(html.contains("<td>203.0.113.9</td>"), "{html}");
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains("NOT VERIFIED"), "{html}");

    // Unverified reports say so in every human format.
    let out = Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args([
            "report",
            "access",
            "--patient",
            "p1",
            "--no-verify",
            "--format",
            "html",
        ])
        .args(["--archive", t.archive.to_str().unwrap(), "--prefix", PREFIX])
        .args(["--journal", t.journal.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOT VERIFIED"));
}

#[test]
fn a_report_without_the_nodes_key_is_refused() {
    let t = trail();
    let out = Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(["report", "access", "--patient", "p1"])
        .args(["--archive", t.archive.to_str().unwrap(), "--prefix", PREFIX])
        .args(["--journal", t.journal.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("REFUSED"));
}

#[test]
fn the_disclosures_view_lists_external_recipients_and_purposes_other_than_tpo() {
    let t = trail();
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry.toml");
    std::fs::write(
        &registry,
        "[clients.ehr-web]\nname = \"Ward EHR\"\norganisation = \"St Example\"\n\n\
         [clients.rogue-app]\nname = \"Partner portal\"\norganisation = \"Acme Billing Ltd\"\nexternal = true\n",
    )
    .unwrap();
    let with = |patient: &str| {
        t.json(&[
            "disclosures",
            "--patient",
            patient,
            "--reports",
            registry.to_str().unwrap(),
        ])
    };
    // p1: four accesses; the one through the external partner portal is a disclosure.
    let p1 = with("p1");
    assert_eq!(p1["facts"]["accesses to the record"], "4");
    assert_eq!(column(&p1, 0, "time"), ["2026-03-03T23:00:00.000000Z"]);
    assert_eq!(column(&p1, 0, "recipient"), ["Partner portal"]);
    assert_eq!(column(&p1, 0, "organisation"), ["Acme Billing Ltd"]);
    assert_eq!(column(&p1, 0, "description"), ["search Patient"]);
    assert_eq!(
        column(&p1, 0, "why_listed"),
        ["external client application"]
    );
    assert_eq!(
        p1["facts"]["client applications not in the registry"],
        "none"
    );
    // p4: both accesses through the portal; p5: its only access failed (404): none.
    assert_eq!(column(&with("p4"), 0, "evidence"), ["gw-r:6", "gw-r:8"]);
    assert_eq!(with("p5")["facts"]["disclosures"], "0");
    // p6: read for research through an app the registry does not know.
    let p6 = with("p6");
    assert_eq!(
        column(&p6, 0, "why_listed"),
        ["purpose other than treatment, payment or operations (HRESCH)"]
    );
    assert_eq!(column(&p6, 0, "recipient"), ["research-portal"]);
    assert_eq!(
        p6["facts"]["client applications not in the registry"],
        "research-portal"
    );
    // A registry with an unknown key is refused with the key named.
    std::fs::write(&registry, "[clients.x]\nname = \"X\"\nexternl = true\n").unwrap();
    let (code, _, stderr) = t.report(&[
        "disclosures",
        "--patient",
        "p1",
        "--reports",
        registry.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("externl"), "{stderr}");
}

#[test]
fn the_flags_report_raises_each_rule_on_the_made_up_trail() {
    let t = trail();
    let dir = tempfile::tempdir().unwrap();
    let reports = dir.path().join("reports.toml");
    std::fs::write(
        &reports,
        "[flags]\nwatch_patients = [\"p4\"]\ntime_zone = \"UTC\"\nbusiness_hours = \"07:00-19:00\"\n",
    )
    .unwrap();
    let report = t.json(&[
        "flags",
        "--from",
        "2026-03-03",
        "--to",
        "2026-03-04",
        "--reports",
        reports.to_str().unwrap(),
    ]);
    let rows: Vec<(String, String, String)> = report["sections"][0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["flag"].as_str().unwrap().to_string(),
                r["time"].as_str().unwrap()[..16].to_string(),
                r["patient"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let row = |flag: &str, time: &str, patient: &str| {
        (flag.to_string(), time.to_string(), patient.to_string())
    };
    // dr-a's refused read at 22:00 and mallory's 404 at 01:00 reached no data: not flagged.
    // mallory had no access in the lookback: each of her patients is a first access.
    assert_eq!(
        rows,
        [
            row("after_hours", "2026-03-03T23:00", "p1 p3 p4"),
            row("break_glass", "2026-03-03T23:00", "p1 p3 p4"),
            row("first_access", "2026-03-03T23:00", "p1"),
            row("first_access", "2026-03-03T23:00", "p3"),
            row("first_access", "2026-03-03T23:00", "p4"),
            row("watch_list", "2026-03-03T23:00", "p4"),
            row("after_hours", "2026-03-04T02:00", "p4"),
            row("watch_list", "2026-03-04T02:00", "p4"),
        ]
    );
    assert_eq!(report["facts"]["accesses in the window"], "4");
    // --only, and --from is required.
    let only = t.json(&["flags", "--from", "2026-03-03", "--only", "watch_list"]);
    assert_eq!(
        only["sections"][0]["rows"].as_array().unwrap().len(),
        0,
        "no watch list by default"
    );
    let (code, _, stderr) = t.report(&["flags"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--from"), "{stderr}");
}

/// Validates every line of an NDJSON file as an R4 `AuditEvent` with two FHIR libraries:
/// fhirclient's R4 models (strict) and fhir.resources' R4B model (pydantic; AuditEvent is the
/// same in R4 and R4B). Prints the count.
const VALIDATE_AUDIT_EVENTS: &str = r#"
import json, sys
from fhirclient.models.auditevent import AuditEvent as R4AuditEvent
from fhir.resources.R4B.auditevent import AuditEvent as R4BAuditEvent
n = 0
for line in open(sys.argv[1]):
    event = json.loads(line)
    R4AuditEvent(event, strict=True)
    R4BAuditEvent.model_validate(event)
    n += 1
print(n)
"#;

#[test]
fn exported_audit_events_are_valid_r4_and_carry_what_balp_requires() {
    use base64::Engine as _;
    let t = trail();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.ndjson");
    let run = Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args([
            "export",
            "--format",
            "fhir",
            "--server-address",
            "ehr.example",
        ])
        .args(["--archive", t.archive.to_str().unwrap(), "--prefix", PREFIX])
        .args(["--journal", t.journal.to_str().unwrap()])
        .args(["--key", t.key.to_str().unwrap()])
        .args(["-o", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let text = std::fs::read_to_string(&out).unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // One event per patient: the 9 requests name 1+2+1+1+3+1+1+1+1 patients.
    assert_eq!(events.len(), 12);
    let validated =
        crate::support::python::run_python(VALIDATE_AUDIT_EVENTS, &[out.to_str().unwrap()], &[]);
    let printed = crate::support::python::assert_success(&validated, "AuditEvent validation");
    assert_eq!(printed.trim(), "12");

    for e in &events {
        // The BALP required elements, checked one by one.
        assert_eq!(e["resourceType"], "AuditEvent");
        assert_eq!(e["type"]["code"], "rest", "{e}");
        assert!(e["subtype"][0]["code"].is_string(), "{e}");
        assert!(e["recorded"].as_str().unwrap().ends_with('Z'), "{e}");
        assert!(
            ["0", "4", "8", "12"].contains(&e["outcome"].as_str().unwrap()),
            "{e}"
        );
        let agents = e["agent"].as_array().unwrap();
        let role = |code: &str| {
            agents
                .iter()
                .find(|a| a["type"]["coding"][0]["code"] == code)
                .unwrap_or_else(|| panic!("no {code} agent: {e}"))
        };
        assert!(
            role("110153")["network"]["address"].is_string(),
            "client address: {e}"
        );
        assert_eq!(role("110152")["network"]["address"], "ehr.example");
        let user = role("IRCP");
        assert_eq!(user["requestor"], true);
        assert_eq!(user["who"]["identifier"]["system"], "https://idp.example");
        assert!(e["source"]["observer"]["display"]
            .as_str()
            .unwrap()
            .contains("gw-r"));
        let entities = e["entity"].as_array().unwrap();
        assert!(
            entities.iter().any(|x| x["type"]["code"] == "XrequestId"),
            "request id: {e}"
        );
        let patients: Vec<&Value> = entities
            .iter()
            .filter(|x| x["role"]["code"] == "1")
            .collect();
        assert_eq!(patients.len(), 1, "one patient per event: {e}");
        assert!(e["meta"]["profile"][0].as_str().unwrap().starts_with(
            "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Patient"
        ));
    }
    // Mallory's search returned three patients: three PatientQuery events, action E, each
    // with the query (base64) and its own patient.
    let search: Vec<&Value> = events
        .iter()
        .filter(|e| e["recorded"] == "2026-03-03T23:00:00.000000Z")
        .collect();
    assert_eq!(search.len(), 3);
    let mut named = Vec::new();
    for e in &search {
        assert_eq!(e["action"], "E");
        assert!(e["meta"]["profile"][0]
            .as_str()
            .unwrap()
            .ends_with("IHE.BasicAudit.PatientQuery"));
        let query = e["entity"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["role"]["code"] == "24")
            .unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(query["query"].as_str().unwrap())
            .unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), "/fhir/metadata");
        let user = e["agent"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["requestor"] == true)
            .unwrap();
        assert_eq!(user["who"]["identifier"]["value"], "mallory");
        named.push(
            e["entity"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["role"]["code"] == "1")
                .unwrap()["what"]["reference"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(named, ["Patient/p1", "Patient/p3", "Patient/p4"]);
    // The update keeps U and the read R; a refused read's outcome is a failure.
    let update = events
        .iter()
        .find(|e| e["recorded"] == "2026-03-02T10:00:01.000000Z")
        .unwrap();
    assert_eq!(update["action"], "U");
    assert!(update["meta"]["profile"][0]
        .as_str()
        .unwrap()
        .ends_with("PatientUpdate"));
    let refused = events
        .iter()
        .find(|e| e["recorded"] == "2026-03-03T22:00:00.000000Z")
        .unwrap();
    assert_eq!(refused["action"], "R");
    assert_eq!(refused["outcome"], "4");
    assert_eq!(refused["outcomeDesc"], "HTTP 403");
}
