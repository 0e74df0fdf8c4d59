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
    for (bad, key) in [
        (
            "[flags]\ntime_zone = \"Mars/Olympus\"\n",
            "reports.flags.time_zone",
        ),
        (
            "[flags]\nbusiness_hours = \"19:00-07:00\"\n",
            "reports.flags.business_hours",
        ),
        (
            "[flags]\nbusiness_hours = \"9-5\"\n",
            "reports.flags.business_hours",
        ),
        (
            "[flags]\nbulk_patients_per_hour = 0\n",
            "reports.flags.bulk_patients_per_hour",
        ),
        (
            "[flags]\nlookback_days = 0\n",
            "reports.flags.lookback_days",
        ),
    ] {
        let parsed: config::ReportsConfig = toml::from_str(bad).unwrap();
        let e = parsed.validate().unwrap_err().to_string();
        assert!(e.contains(key), "{bad}: {e}");
    }
    assert!(toml::from_str::<config::ReportsConfig>("[flags]\nbulk = 3\n").is_err());
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

/// An authenticated, successful access by `user` to `patients` at `ts` from `ip`.
fn access_at(seq: u64, ts: &str, user: &str, patients: &[&str], ip: &str) -> Record {
    let mut r = record(seq, &format!("r{seq}"), Phase::Outcome, Some(200), patients);
    r.header.ts = ts.into();
    if let Who::Authenticated(actor) = &mut r.event.who {
        actor.user = user.into();
    }
    r.event.net.client_ip = ip.into();
    r
}

/// The flags raised: (flag, user, patient) of each row, for `window` given `history`.
fn flags_of(
    window: &[Record],
    history: &[Record],
    config: &config::FlagsConfig,
) -> Vec<(String, String, String)> {
    let answer = answer_of(window);
    let window = accesses(&answer).unwrap();
    let history = accesses(&answer_of(history)).unwrap();
    let mut report = Report::over(
        "flags",
        "t".into(),
        vec![],
        &answer,
        serde_json::Value::Null,
        false,
    );
    flags::build(&mut report, &window, &history, config, &[]).unwrap();
    report.sections[0]
        .rows
        .iter()
        .map(|r| (r[0].clone(), r[2].clone(), r[3].clone()))
        .collect()
}

fn only(flags: &[(String, String, String)], kind: &str) -> Vec<(String, String)> {
    flags
        .iter()
        .filter(|f| f.0 == kind)
        .map(|f| (f.1.clone(), f.2.clone()))
        .collect()
}

fn pair(user: &str, patient: &str) -> (String, String) {
    (user.to_string(), patient.to_string())
}

#[test]
fn bulk_access_is_more_distinct_patients_in_one_clock_hour_than_the_threshold() {
    let window = [
        access_at(
            1,
            "2026-03-02T09:00:00.000000Z",
            "u",
            &["p1", "p2"],
            "10.0.0.1",
        ),
        access_at(2, "2026-03-02T09:59:00.000000Z", "u", &["p3"], "10.0.0.1"),
        // Another user: two in one hour, one in the next.
        access_at(
            3,
            "2026-03-02T09:10:00.000000Z",
            "v",
            &["p1", "p2"],
            "10.0.0.1",
        ),
        access_at(4, "2026-03-02T10:00:00.000000Z", "v", &["p3"], "10.0.0.1"),
    ];
    let config = config::FlagsConfig {
        bulk_patients_per_hour: 2,
        business_hours: "00:00-23:59".into(),
        weekends_after_hours: false,
        ..Default::default()
    };
    let flags = flags_of(&window, &[], &config);
    assert_eq!(only(&flags, "bulk_access"), [pair("u", "")]);
    let higher = config::FlagsConfig {
        bulk_patients_per_hour: 3,
        ..config
    };
    assert!(only(&flags_of(&window, &[], &higher), "bulk_access").is_empty());
}

#[test]
fn after_hours_follows_the_sites_time_zone_daylight_saving_and_weekends() {
    let config = config::FlagsConfig {
        time_zone: "America/New_York".into(),
        business_hours: "07:00-19:00".into(),
        ..Default::default()
    };
    let window = [
        // Mon 2 March 18:30 EST: inside.
        access_at(1, "2026-03-02T23:30:00.000000Z", "a", &["p1"], "10.0.0.1"),
        // Mon 19:30 EST: after hours.
        access_at(2, "2026-03-03T00:30:00.000000Z", "b", &["p1"], "10.0.0.1"),
        // Wed 1 July 07:30 EDT (06:30 if daylight saving were ignored): inside.
        access_at(3, "2026-07-01T11:30:00.000000Z", "c", &["p1"], "10.0.0.1"),
        // Sat 7 March noon EST: a weekend.
        access_at(4, "2026-03-07T17:00:00.000000Z", "d", &["p1"], "10.0.0.1"),
    ];
    let flags = flags_of(&window, &[], &config);
    assert_eq!(
        only(&flags, "after_hours"),
        [pair("b", "p1"), pair("d", "p1")]
    );
    let weekdays_only = config::FlagsConfig {
        weekends_after_hours: false,
        ..config
    };
    assert_eq!(
        only(&flags_of(&window, &[], &weekdays_only), "after_hours"),
        [pair("b", "p1")]
    );
}

#[test]
fn break_glass_watch_list_and_self_access_flag_each_access_that_matches_only() {
    let mut glass = access_at(1, "2026-03-02T09:00:00.000000Z", "a", &["p1"], "10.0.0.1");
    let mut own = access_at(2, "2026-03-02T09:01:00.000000Z", "b", &["p7"], "10.0.0.1");
    let mut other = access_at(3, "2026-03-02T09:02:00.000000Z", "b", &["p8"], "10.0.0.1");
    let staff = access_at(
        4,
        "2026-03-02T09:03:00.000000Z",
        "nurse",
        &["p9"],
        "10.0.0.1",
    );
    let mut refused = access_at(5, "2026-03-02T09:04:00.000000Z", "e", &["vip"], "10.0.0.1");
    let watched = access_at(
        6,
        "2026-03-02T09:05:00.000000Z",
        "f",
        &["vip", "p2"],
        "10.0.0.1",
    );
    if let Who::Authenticated(actor) = &mut glass.event.who {
        actor.break_glass = true;
    }
    for r in [&mut own, &mut other] {
        if let Who::Authenticated(actor) = &mut r.event.who {
            actor.fhir_user = Some("Patient/p7".into());
        }
    }
    refused.event.outcome = Some(Outcome {
        status: 403,
        ..Outcome::default()
    });
    let config = config::FlagsConfig {
        business_hours: "00:00-23:59".into(),
        weekends_after_hours: false,
        watch_patients: vec!["vip".into()],
        staff_patients: [("nurse".to_string(), "p9".to_string())].into(),
        ..Default::default()
    };
    let flags = flags_of(&[glass, own, other, staff, refused, watched], &[], &config);
    assert_eq!(only(&flags, "break_glass"), [pair("a", "p1")]);
    assert_eq!(
        only(&flags, "self_access"),
        [pair("b", "p7"), pair("nurse", "p9")]
    );
    assert_eq!(
        only(&flags, "watch_list"),
        [pair("f", "vip")],
        "a refused access reached no data"
    );
    assert!(only(&flags, "after_hours").is_empty());
}

#[test]
fn first_access_and_new_country_or_network_compare_with_the_users_history() {
    let mut history = vec![access_at(
        1,
        "2026-02-01T09:00:00.000000Z",
        "u",
        &["p1"],
        "10.0.0.5",
    )];
    let set_country = |r: &mut Record, country: &str| {
        r.event.net.geo = Some(Some(crate::record::Geo {
            country: Some(country.into()),
            ..Default::default()
        }));
    };
    set_country(&mut history[0], "US");
    let mut same = access_at(2, "2026-03-02T09:00:00.000000Z", "u", &["p1"], "10.0.0.77");
    set_country(&mut same, "US");
    let mut abroad = access_at(
        3,
        "2026-03-02T10:00:00.000000Z",
        "u",
        &["p2"],
        "198.51.100.4",
    );
    set_country(&mut abroad, "FR");
    let mut newcomer = access_at(
        4,
        "2026-03-02T11:00:00.000000Z",
        "w",
        &["p1"],
        "198.51.100.4",
    );
    set_country(&mut newcomer, "FR");
    let config = config::FlagsConfig {
        business_hours: "00:00-23:59".into(),
        weekends_after_hours: false,
        ..Default::default()
    };
    let flags = flags_of(&[same, abroad, newcomer], &history, &config);
    assert_eq!(
        only(&flags, "first_access"),
        [pair("u", "p2"), pair("w", "p1")]
    );
    assert_eq!(only(&flags, "new_country"), [pair("u", "")]);
    assert_eq!(
        only(&flags, "new_network"),
        [pair("u", "")],
        "10.0.0.77 is in the /24 of the history's 10.0.0.5; a user without history is not compared"
    );
}
