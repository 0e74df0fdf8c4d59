//! Unit tests of the reports: sorting, requests made of several records, rendering.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

use super::render::{render, ReportFormat};
use super::requests::accesses;
use super::*;
use crate::query::answer::Answer;
use crate::record::{Actor, ChainHeader, Outcome, PatientRef, PatientSource, Phase, Record, Who};

/// An answer holding these records (only the columns the reports read).
fn answer_of(records: &[Record]) -> Answer {
    let schema = Arc::new(Schema::new(vec![
        Field::new("node", DataType::Utf8, false),
        Field::new("seq", DataType::Int64, false),
        Field::new("line", DataType::Utf8, false),
    ]));
    let rows = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(
                records.iter().map(|r| r.header.node.clone()),
            )),
            Arc::new(Int64Array::from_iter_values(
                records.iter().map(|r| r.header.seq as i64),
            )),
            Arc::new(StringArray::from_iter_values(
                records.iter().map(|r| serde_json::to_string(r).unwrap()),
            )),
        ],
    )
    .unwrap();
    Answer {
        matched: rows.num_rows(),
        rows,
        coverage: Vec::new(),
        proofs: Vec::new(),
    }
}

fn record(seq: u64, request: &str, phase: Phase, status: Option<u16>, patients: &[&str]) -> Record {
    let mut event = crate::fixtures::event(seq as usize);
    event.request_id = request.into();
    event.phase = phase;
    event.who = Who::Authenticated(Actor {
        user: "u<1>".into(),
        issuer: "iss".into(),
        ..Actor::default()
    });
    event.outcome = status.map(|status| Outcome {
        status,
        ..Outcome::default()
    });
    event.patients = patients
        .iter()
        .map(|p| PatientRef {
            id: p.to_string(),
            source: PatientSource::Path,
        })
        .collect();
    Record {
        header: ChainHeader {
            v: crate::record::RECORD_VERSION,
            node: "n1".into(),
            seq,
            prev: "00".repeat(32),
            ts: format!("2026-03-02T09:00:{seq:02}.000000Z"),
        },
        event,
    }
}

#[test]
fn a_request_is_one_access_shown_with_its_outcome_and_every_records_patients() {
    let records = [
        record(1, "a", Phase::Intent, None, &["p1"]),
        record(2, "b", Phase::Outcome, Some(403), &["p9"]),
        record(3, "a", Phase::Outcome, Some(201), &["p1"]),
        record(4, "a", Phase::Continuation, None, &["p2"]),
        record(5, "c", Phase::Intent, None, &["p3"]),
    ];
    let list = accesses(&answer_of(&records)).unwrap();
    assert_eq!(list.len(), 3);
    // In time order of the record that stands for each: b (seq 2), a (its outcome, seq 3),
    // c (an intent without outcome, seq 5).
    assert_eq!(list[0].seqs, [2]);
    assert_eq!(list[0].status(), "403");
    assert!(!list[0].may_have_disclosed());
    assert_eq!(list[1].seqs, [1, 3, 4]);
    assert_eq!(list[1].status(), "201");
    assert_eq!(list[1].evidence(), "n1:1 n1:3 n1:4");
    assert_eq!(
        list[1].patients.iter().cloned().collect::<Vec<_>>(),
        ["p1", "p2"]
    );
    assert_eq!(list[2].status(), "none");
    assert!(list[2].may_have_disclosed(), "an unknown outcome may have");
}

#[test]
fn sections_sort_by_numbers_as_numbers_text_as_text_and_refuse_unknown_columns() {
    let mut s = Section::new("t", &["name", "n"]);
    s.rows = vec![
        vec!["b".into(), "10".into()],
        vec!["a".into(), "9".into()],
        vec!["b".into(), "2".into()],
    ];
    s.sort(&["n".into()]).unwrap();
    assert_eq!(
        s.rows.iter().map(|r| r[1].as_str()).collect::<Vec<_>>(),
        ["2", "9", "10"]
    );
    s.sort(&["name".into(), "-n".into()]).unwrap();
    assert_eq!(
        s.rows
            .iter()
            .map(|r| format!("{}{}", r[0], r[1]))
            .collect::<Vec<_>>(),
        ["a9", "b10", "b2"]
    );
    let e = s.sort(&["nope".into()]).unwrap_err();
    assert!(e.to_string().contains("name, n"), "{e}");
}

#[test]
fn html_escapes_every_recorded_value_and_csv_quotes_them() {
    let records = [record(1, "a", Phase::Outcome, Some(200), &["p<script>"])];
    let answer = answer_of(&records);
    let list = accesses(&answer).unwrap();
    let mut report = Report::over(
        "access",
        "Accesses to <b>".into(),
        vec![("patient".into(), "p<script>".into())],
        &answer,
        serde_json::Value::Null,
        false,
    );
    access::build(&mut report, &list);
    let mut html = Vec::new();
    render(&report, ReportFormat::Html, &mut html).unwrap();
    let html = String::from_utf8(html).unwrap();
    assert!(!html.contains("<script>"), "{html}");
    assert!(!html.contains("<b>"), "{html}");
    assert!(html.contains("p&lt;script&gt;"), "{html}");
    assert!(html.contains("u&lt;1&gt;"), "{html}");
    assert!(html.contains("NOT VERIFIED"), "{html}");

    report.sections[0].rows[0][1] = "a, \"quoted\"\nuser".into();
    let mut csv = Vec::new();
    render(&report, ReportFormat::Csv, &mut csv).unwrap();
    let mut reader = ::csv::Reader::from_reader(csv.as_slice());
    let row = reader.records().next().unwrap().unwrap();
    assert_eq!(&row[1], "a, \"quoted\"\nuser");

    let mut json = Vec::new();
    render(&report, ReportFormat::Json, &mut json).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(
        json["sections"][0]["rows"][0]["user"],
        "a, \"quoted\"\nuser"
    );
    assert_eq!(json["verified"], false);
    assert!(json["proof"].is_null());
}

#[test]
fn the_reports_section_parses_validates_and_rejects_unknown_keys() {
    let parsed: config::ReportsConfig = toml::from_str(
        "tpo_purposes = [\"TREAT\"]\n[clients.portal]\nname = \"Portal\"\nexternal = true\n",
    )
    .unwrap();
    parsed.validate().unwrap();
    assert!(parsed.client("portal").unwrap().external);
    assert!(parsed.is_tpo("treat"), "codes compare without case");
    assert!(!parsed.is_tpo("HPAYMT"), "the list replaces the default");
    let defaults = config::ReportsConfig::default();
    assert!(defaults.is_tpo("HOPERAT") && !defaults.is_tpo("HRESCH"));
    assert!(
        toml::from_str::<config::ReportsConfig>("[clients.p]\nname = \"P\"\nextern = 1\n").is_err()
    );
    let unnamed: config::ReportsConfig = toml::from_str("[clients.p]\nname = \" \"\n").unwrap();
    let e = unnamed.validate().unwrap_err().to_string();
    assert!(e.contains("reports.clients.p.name"), "{e}");
}

#[test]
fn a_disclosure_may_have_given_data_out_to_an_external_app_or_for_a_purpose_beyond_tpo() {
    let registry: config::ReportsConfig = toml::from_str(
        "[clients.portal]\nname = \"Portal\"\nexternal = true\n[clients.ehr]\nname = \"EHR\"\n",
    )
    .unwrap();
    let with = |client: &str, purpose: &[&str], status: u16| {
        let mut r = record(1, "a", Phase::Outcome, Some(status), &["p1"]);
        if let Who::Authenticated(actor) = &mut r.event.who {
            actor.client_id = Some(client.into());
            actor.purpose_of_use = purpose.iter().map(|p| p.to_string()).collect();
        }
        let list = accesses(&answer_of(&[r])).unwrap();
        disclosures::why_disclosed(&list[0], &registry)
    };
    assert_eq!(with("ehr", &["TREAT"], 200), None);
    assert_eq!(with("ehr", &[], 200), None);
    assert_eq!(
        with("portal", &["TREAT"], 200).as_deref(),
        Some("external client application")
    );
    assert_eq!(
        with("portal", &["TREAT"], 403),
        None,
        "a refused access gave nothing out"
    );
    assert_eq!(
        with("ehr", &["TREAT", "HRESCH"], 200).as_deref(),
        Some("purpose other than treatment, payment or operations (HRESCH)")
    );
    assert!(with("unknown", &["PUBHLTH"], 200).is_some());
}
