//! Unit and property tests of the route rules and path safety.
#![allow(unused_imports)]

use crate::config::error::ConfigError;
use crate::record::{Action, Attribution, InteractionKind, PatientRef, PatientSource};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::classify::*;
use super::compile::*;
use super::config::*;
use super::error::*;
use super::file::*;
use super::path::*;
use super::ruleset::*;
use super::template::*;
use super::*;
use crate::fhir::*;
use http::{HeaderMap, HeaderValue};

/// The shipped rule file, loaded once for all tests, in front of an EHR at
/// `ehr.example.org` (so `http(s)://ehr.example.org/fhir/...` references are local).
fn fhir() -> &'static RuleSet {
    static RULES: std::sync::OnceLock<RuleSet> = std::sync::OnceLock::new();
    RULES.get_or_init(|| {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/fhir-r4.toml"),
        )
        .unwrap();
        RuleSet::from_toml_str(&text, UnmatchedPolicy::default())
            .unwrap()
            .with_upstream("ehr.example.org")
    })
}

#[test]
fn search_values_on_another_servers_base_name_no_local_patient() {
    let rs = fhir();
    let c = get(
        rs,
        "GET",
        "/fhir/Observation?subject=http://other.example.org/fhir/Patient/123",
    );
    assert!(c.patients.is_empty());
    assert_eq!(c.attribution, Partial);
    let c = get(
        rs,
        "GET",
        "/fhir/Observation?subject=https://ehr.example.org/fhir/Patient/123,http://x.example/Patient/9",
    );
    let got: Vec<&str> = c.patients.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(got, ["123"]);
    assert_eq!(c.attribution, Partial, "one item named no local patient");
}

fn get(rs: &RuleSet, method: &str, target: &str) -> Classification {
    rs.classify(method, target, &HeaderMap::new()).unwrap()
}

fn ids(c: &Classification) -> Vec<(&str, PatientSource)> {
    c.patients
        .iter()
        .map(|p| (p.id.as_str(), p.source))
        .collect()
}

fn reject(rs: &RuleSet, target: &str) -> &'static str {
    match rs.classify("GET", target, &HeaderMap::new()) {
        Err(e) => e.reason(),
        Ok(c) => panic!("{target} was accepted as {c:?}"),
    }
}

/// One FHIR case: rule, action, interaction, type, id, patients, attribution.
#[allow(clippy::too_many_arguments)]
fn check(
    rs: &RuleSet,
    method: &str,
    target: &str,
    rule: &str,
    action: Action,
    interaction: InteractionKind,
    ty: Option<&str>,
    id: Option<&str>,
    patients: &[&str],
    attribution: Attribution,
) -> Classification {
    let c = get(rs, method, target);
    assert_eq!(c.rule, rule, "{method} {target}");
    assert!(c.matched);
    assert_eq!(c.action, action, "{method} {target}");
    assert_eq!(c.interaction, interaction, "{method} {target}");
    assert_eq!(c.resource_type.as_deref(), ty, "{method} {target}");
    assert_eq!(c.resource_id.as_deref(), id, "{method} {target}");
    let got: Vec<&str> = c.patients.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(got, patients, "{method} {target}");
    assert_eq!(c.attribution, attribution, "{method} {target}");
    c
}

use Action::*;
use Attribution::{Complete, Partial};
use InteractionKind as I;

#[test]
#[rustfmt::skip] // one case per line reads as a table
fn fhir_instance_interactions_on_patient_are_complete() {
    let rs = fhir();
    let p = Some("Patient");
    let c = check(rs, "GET", "/fhir/Patient/123", "fhir-patient-read", R, I::Read, p, Some("123"), &["123"], Complete);
    assert_eq!(ids(&c), [("123", PatientSource::Path)]);
    assert_eq!(c.path, "/fhir/Patient/123");
    assert_eq!(c.query, None);
    check(rs, "HEAD", "/fhir/Patient/123", "fhir-patient-read", R, I::Read, p, Some("123"), &["123"], Complete);
    check(rs, "GET", "/fhir/Patient/123/_history/2", "fhir-patient-vread", R, I::Vread, p, Some("123"), &["123"], Complete);
    check(rs, "GET", "/fhir/Patient/123/_history", "fhir-patient-history", R, I::History, p, Some("123"), &["123"], Complete);
    check(rs, "PUT", "/fhir/Patient/123", "fhir-patient-update", U, I::Update, p, Some("123"), &["123"], Complete);
    check(rs, "PATCH", "/fhir/Patient/123", "fhir-patient-patch", U, I::Patch, p, Some("123"), &["123"], Complete);
    check(rs, "DELETE", "/fhir/Patient/123", "fhir-patient-delete", D, I::Delete, p, Some("123"), &["123"], Complete);
    // A trailing slash is ignored for matching; the recorded path keeps it.
    let c = check(rs, "GET", "/fhir/Patient/123/", "fhir-patient-read", R, I::Read, p, Some("123"), &["123"], Complete);
    assert_eq!(c.path, "/fhir/Patient/123/");
}

#[test]
#[rustfmt::skip] // one case per line reads as a table
fn fhir_instance_interactions_on_other_types_are_partial() {
    let rs = fhir();
    let o = Some("Observation");
    check(rs, "GET", "/fhir/Observation/abc", "fhir-read", R, I::Read, o, Some("abc"), &[], Partial);
    check(rs, "GET", "/fhir/Observation/abc/_history/3", "fhir-vread", R, I::Vread, o, Some("abc"), &[], Partial);
    check(rs, "GET", "/fhir/Observation/abc/_history", "fhir-instance-history", R, I::History, o, Some("abc"), &[], Partial);
    check(rs, "GET", "/fhir/Observation/_history", "fhir-type-history", R, I::History, o, None, &[], Partial);
    check(rs, "GET", "/fhir/_history", "fhir-system-history", R, I::History, None, None, &[], Partial);
    check(rs, "POST", "/fhir/Observation", "fhir-create", C, I::Create, o, None, &[], Partial);
    check(rs, "POST", "/fhir/Patient", "fhir-create", C, I::Create, Some("Patient"), None, &[], Partial);
    check(rs, "PUT", "/fhir/Observation/abc", "fhir-update", U, I::Update, o, Some("abc"), &[], Partial);
    check(rs, "PATCH", "/fhir/Observation/abc", "fhir-patch", U, I::Patch, o, Some("abc"), &[], Partial);
    check(rs, "DELETE", "/fhir/Observation/abc", "fhir-delete", D, I::Delete, o, Some("abc"), &[], Partial);
}

#[test]
#[rustfmt::skip] // one case per line reads as a table
fn fhir_capabilities_batch_and_system_search() {
    let rs = fhir();
    let c = check(rs, "GET", "/fhir/metadata", "fhir-capabilities", R, I::Capabilities, None, None, &[], Attribution::None);
    assert!(c.patients.is_empty());
    check(rs, "GET", "/fhir/metadata?_summary=true", "fhir-capabilities", R, I::Capabilities, None, None, &[], Attribution::None);
    check(rs, "POST", "/fhir", "fhir-batch-transaction", E, I::Transaction, None, None, &[], Partial);
    check(rs, "POST", "/fhir/", "fhir-batch-transaction", E, I::Transaction, None, None, &[], Partial);
    check(rs, "GET", "/fhir?_type=Observation&patient=1", "fhir-system-search", R, I::Search, None, None, &[], Partial);
    check(rs, "POST", "/fhir/_search", "fhir-system-search-post", R, I::Search, None, None, &[], Partial);
}

#[test]
#[rustfmt::skip] // one case per line reads as a table
fn fhir_operations_take_their_action_from_the_table() {
    let rs = fhir();
    let p = Some("Patient");
    check(rs, "GET", "/fhir/Patient/123/$everything", "fhir-patient-operation", R, I::Operation, p, Some("123"), &["123"], Partial);
    check(rs, "POST", "/fhir/Patient/123/$everything", "fhir-patient-operation", R, I::Operation, p, Some("123"), &["123"], Partial);
    check(rs, "POST", "/fhir/Patient/123/$meta-add", "fhir-patient-operation", U, I::Operation, p, Some("123"), &["123"], Partial);
    check(rs, "POST", "/fhir/Patient/123/$custom-thing", "fhir-patient-operation", E, I::Operation, p, Some("123"), &["123"], Partial);
    check(rs, "POST", "/fhir/$process-message", "fhir-system-operation", E, I::Operation, None, None, &[], Partial);
    check(rs, "GET", "/fhir/$meta", "fhir-system-operation", R, I::Operation, None, None, &[], Partial);
    check(rs, "POST", "/fhir/Observation/$validate", "fhir-type-operation", R, I::Operation, Some("Observation"), None, &[], Partial);
    check(rs, "GET", "/fhir/Patient/$everything", "fhir-type-operation", R, I::Operation, p, None, &[], Partial);
    // A type-level operation's query is read like a search, but never claims complete.
    check(rs, "GET", "/fhir/Observation/$lastn?patient=123&code=x", "fhir-type-operation", R, I::Operation, Some("Observation"), None, &["123"], Partial);
    check(rs, "POST", "/fhir/Observation/abc/$meta-delete", "fhir-instance-operation", U, I::Operation, Some("Observation"), Some("abc"), &[], Partial);
    check(rs, "GET", "/fhir/Observation/abc/_history/2/$meta", "fhir-version-operation", R, I::Operation, Some("Observation"), Some("abc"), &[], Partial);
    check(rs, "POST", "/fhir/Group/g1/$everything", "fhir-instance-operation", R, I::Operation, Some("Group"), Some("g1"), &[], Partial);
}

#[test]
#[rustfmt::skip] // one case per line reads as a table
fn fhir_compartment_searches() {
    let rs = fhir();
    let c = check(rs, "GET", "/fhir/Patient/123/Observation?code=x", "fhir-patient-compartment-search", R, I::Search, Some("Observation"), None, &["123"], Partial);
    assert_eq!(ids(&c), [("123", PatientSource::Path)]);
    // Every Encounter compartment parameter is the subject: the compartment is the patient's.
    check(rs, "GET", "/fhir/Patient/123/Encounter", "fhir-patient-compartment-search", R, I::Search, Some("Encounter"), None, &["123"], Complete);
    // Observation's compartment includes `performer`: other patients' results can appear.
    check(rs, "GET", "/fhir/Patient/123/Observation", "fhir-patient-compartment-search", R, I::Search, Some("Observation"), None, &["123"], Partial);
    // ... unless the query pins the subject too.
    check(rs, "GET", "/fhir/Patient/123/Observation?subject=Patient/123", "fhir-patient-compartment-search", R, I::Search, Some("Observation"), None, &["123"], Complete);
    check(rs, "GET", "/fhir/Patient/123/Encounter?_include=Encounter:participant", "fhir-patient-compartment-search", R, I::Search, Some("Encounter"), None, &["123"], Partial);
    check(rs, "GET", "/fhir/Patient/123/*", "fhir-patient-compartment-all", R, I::Search, None, None, &["123"], Partial);
    check(rs, "GET", "/fhir/Encounter/e1/Observation?patient=9", "fhir-compartment-search", R, I::Search, Some("Observation"), None, &["9"], Complete);
    check(rs, "GET", "/fhir/Encounter/e1/Observation", "fhir-compartment-search", R, I::Search, Some("Observation"), None, &[], Partial);
}

#[test]
#[rustfmt::skip] // one case per line reads as a table
fn fhir_type_searches_read_the_query() {
    let rs = fhir();
    let o = Some("Observation");
    let s = "fhir-search";
    let c = check(rs, "GET", "/fhir/Observation?patient=123", s, R, I::Search, o, None, &["123"], Complete);
    assert_eq!(ids(&c), [("123", PatientSource::Query)]);
    assert_eq!(c.query.as_deref(), Some("patient=123"));
    check(rs, "GET", "/fhir/Observation?patient=Patient/123", s, R, I::Search, o, None, &["123"], Complete);
    check(rs, "GET", "/fhir/Observation?patient=Patient%2F123", s, R, I::Search, o, None, &["123"], Complete);
    check(rs, "GET", "/fhir/Observation?subject=Patient/123", s, R, I::Search, o, None, &["123"], Complete);
    check(rs, "GET", "/fhir/Observation?subject:Patient=123", s, R, I::Search, o, None, &["123"], Complete);
    check(rs, "GET", "/fhir/Observation?subject=https://ehr.example.org/fhir/Patient/123", s, R, I::Search, o, None, &["123"], Complete);
    check(rs, "GET", "/fhir/Observation?subject=Patient/123/_history/4", s, R, I::Search, o, None, &["123"], Complete);
    check(rs, "GET", "/fhir/Observation?patient=1,2,Patient/3&code=x", s, R, I::Search, o, None, &["1", "2", "3"], Complete);
    check(rs, "GET", "/fhir/Observation?patient=1&patient=1", s, R, I::Search, o, None, &["1"], Complete);
    // Ambiguous bare id on a parameter that also targets Group, Device, Location.
    check(rs, "GET", "/fhir/Observation?subject=123", s, R, I::Search, o, None, &[], Partial);
    // One item of the OR list is not a patient: the others still count, but no pin.
    check(rs, "GET", "/fhir/Observation?subject=Patient/1,Group/2", s, R, I::Search, o, None, &["1"], Partial);
    // `performer` names a patient but does not confine results to it.
    check(rs, "GET", "/fhir/Observation?performer=Patient/7", s, R, I::Search, o, None, &["7"], Partial);
    check(rs, "GET", "/fhir/Observation?performer=7", s, R, I::Search, o, None, &[], Partial);
    check(rs, "GET", "/fhir/Observation?code=x", s, R, I::Search, o, None, &[], Partial);
    check(rs, "GET", "/fhir/Observation", s, R, I::Search, o, None, &[], Partial);
    // Modifiers other than :Patient, chains and escapes name no patient.
    check(rs, "GET", "/fhir/Observation?patient:not=123", s, R, I::Search, o, None, &[], Partial);
    check(rs, "GET", "/fhir/Observation?patient:missing=false", s, R, I::Search, o, None, &[], Partial);
    check(rs, "GET", "/fhir/Observation?subject:Group=123", s, R, I::Search, o, None, &[], Partial);
    check(rs, "GET", "/fhir/Observation?subject.name=smith", s, R, I::Search, o, None, &[], Partial);
    check(rs, "GET", "/fhir/Observation?subject:Patient.name=smith", s, R, I::Search, o, None, &[], Partial);
    check(rs, "GET", "/fhir/Observation?patient=12\\,3", s, R, I::Search, o, None, &[], Partial);
    check(rs, "GET", "/fhir/Observation?patient=", s, R, I::Search, o, None, &[], Partial);
    check(rs, "GET", "/fhir/Observation?patient=a_b", s, R, I::Search, o, None, &[], Partial);
    check(rs, "GET", "/fhir/Observation?patient=evil.org/Patient/1", s, R, I::Search, o, None, &[], Partial);
    check(rs, "GET", "/fhir/Observation?patient=http:///Patient/1", s, R, I::Search, o, None, &[], Partial);
    // Widening parameters and `;` keep what was found but never claim complete.
    check(rs, "GET", "/fhir/Observation?patient=123&_include=Observation:performer", s, R, I::Search, o, None, &["123"], Partial);
    check(rs, "GET", "/fhir/Observation?patient=123&_revinclude:iterate=Provenance:target", s, R, I::Search, o, None, &["123"], Partial);
    check(rs, "GET", "/fhir/Observation?patient=123;_include=x", s, R, I::Search, o, None, &[], Partial);
    check(rs, "GET", "/fhir/Observation?code=x;y&patient=123", s, R, I::Search, o, None, &["123"], Partial);
    // Other resource types from the table.
    check(rs, "GET", "/fhir/Encounter?patient=5", s, R, I::Search, Some("Encounter"), None, &["5"], Complete);
    check(rs, "GET", "/fhir/AllergyIntolerance?asserter=Patient/5", s, R, I::Search, Some("AllergyIntolerance"), None, &["5"], Partial);
    check(rs, "GET", "/fhir/Condition?subject=Patient/5", s, R, I::Search, Some("Condition"), None, &["5"], Complete);
    check(rs, "GET", "/fhir/Medication?code=x", s, R, I::Search, Some("Medication"), None, &[], Partial);
}

#[test]
#[rustfmt::skip] // one case per line reads as a table
fn fhir_patient_type_search_uses_id_and_link() {
    let rs = fhir();
    let p = Some("Patient");
    let s = "fhir-search";
    check(rs, "GET", "/fhir/Patient?_id=1,2", s, R, I::Search, p, None, &["1", "2"], Complete);
    check(rs, "GET", "/fhir/Patient?_id=1&_id=2", s, R, I::Search, p, None, &["1", "2"], Complete);
    check(rs, "GET", "/fhir/Patient?_id=1&_revinclude=Observation:subject", s, R, I::Search, p, None, &["1"], Partial);
    check(rs, "GET", "/fhir/Patient?_id:not=1", s, R, I::Search, p, None, &[], Partial);
    check(rs, "GET", "/fhir/Patient?name=smith", s, R, I::Search, p, None, &[], Partial);
    check(rs, "GET", "/fhir/Patient?link=Patient/9", s, R, I::Search, p, None, &["9"], Partial);
    check(rs, "GET", "/fhir/Patient?link=9", s, R, I::Search, p, None, &[], Partial);
}

#[test]
#[rustfmt::skip] // one case per line reads as a table
fn fhir_conditional_writes() {
    let rs = fhir();
    let o = Some("Observation");
    // The body of an update may name any patient: never complete.
    check(rs, "PUT", "/fhir/Observation?patient=123&identifier=x", "fhir-conditional-update", U, I::Update, o, None, &["123"], Partial);
    check(rs, "PATCH", "/fhir/Observation?patient=123", "fhir-conditional-patch", U, I::Patch, o, None, &["123"], Partial);
    check(rs, "DELETE", "/fhir/Observation?patient=123", "fhir-conditional-delete", D, I::Delete, o, None, &["123"], Complete);
    check(rs, "DELETE", "/fhir/Observation?code=x", "fhir-conditional-delete", D, I::Delete, o, None, &[], Partial);
    check(rs, "DELETE", "/fhir/Patient?_id=4", "fhir-conditional-delete", D, I::Delete, Some("Patient"), None, &["4"], Complete);
}

#[test]
#[rustfmt::skip] // one case per line reads as a table
fn form_body_search_adds_body_patients() {
    let rs = fhir();
    let mut c = check(rs, "POST", "/fhir/Observation/_search?_count=10", "fhir-search-post", R, I::Search, Some("Observation"), None, &[], Partial);
    assert!(c.needs_form_body);
    rs.attribute_form_body(&mut c, b"patient=Patient%2F123&code=x");
    assert!(!c.needs_form_body);
    assert_eq!(ids(&c), [("123", PatientSource::Body)]);
    assert_eq!(c.attribution, Complete);

    // Query and body combine; the query's patients come first.
    let mut c = get(rs, "POST", "/fhir/Observation/_search?patient=1");
    assert_eq!(c.attribution, Partial, "partial until the body is read");
    assert_eq!(ids(&c), [("1", PatientSource::Query)]);
    rs.attribute_form_body(&mut c, b"patient=2&_include=Observation:subject");
    assert_eq!(ids(&c), [("1", PatientSource::Query), ("2", PatientSource::Body)]);
    assert_eq!(c.attribution, Partial);

    // A body without patients, and a body over the limit.
    let mut c = get(rs, "POST", "/fhir/Observation/_search");
    rs.attribute_form_body(&mut c, b"code=x");
    assert_eq!((c.patients.len(), c.attribution), (0, Partial));
    let mut c = get(rs, "POST", "/fhir/Observation/_search");
    let big = format!("patient=1&pad={}", "x".repeat(rs.max_form_body_bytes() as usize));
    rs.attribute_form_body(&mut c, big.as_bytes());
    assert_eq!((c.patients.len(), c.attribution), (0, Partial));

    // Compartment search by POST keeps the path patient.
    let mut c = get(rs, "POST", "/fhir/Patient/9/Encounter/_search");
    assert_eq!(c.rule, "fhir-patient-compartment-search-post");
    assert_eq!(c.attribution, Partial);
    rs.attribute_form_body(&mut c, b"status=finished");
    assert_eq!(ids(&c), [("9", PatientSource::Path)]);
    assert_eq!(c.attribution, Complete);

    // A classification without a form body is left alone.
    let mut c = get(rs, "GET", "/fhir/Patient/1");
    let before = c.clone();
    rs.attribute_form_body(&mut c, b"patient=2");
    assert_eq!(c, before);
}

#[test]
#[rustfmt::skip] // one case per line reads as a table
fn malformed_segments_are_not_matched_as_types_or_ids() {
    let rs = fhir();
    for t in [
        "/fhir/Patient/a_b",
        "/fhir/Patient/~x",
        "/fhir/patient/123",
        "/fhir/P/123",
        "/fhir/Patient/123/observation",
        &format!("/fhir/Patient/{}", "1".repeat(65)),
        "/fhir/Patient/%C3%A9",
        "/fhir/Patient/123/_history/2/3",
        "/fhir/Patient/$",
    ] {
        let c = get(rs, "GET", t);
        assert!(!c.matched, "{t} matched {}", c.rule);
        assert!(c.patients.is_empty());
    }
    let long = "1".repeat(64);
    check(rs, "GET", &format!("/fhir/Patient/{long}"), "fhir-patient-read", R, I::Read, Some("Patient"), Some(&long), &[&long], Complete);
    // Unreserved characters may be percent-encoded: the decoded path is what matches.
    check(rs, "GET", "/fhir/Pat%69ent/1%32%33", "fhir-patient-read", R, I::Read, Some("Patient"), Some("123"), &["123"], Complete);
}

#[test]
fn path_attacks_are_rejected() {
    let rs = fhir();
    let cases = [
        ("/fhir/Patient/123%2F..%2F456", "encoded_slash"),
        ("/fhir/Patient/123%2f456", "encoded_slash"),
        ("/fhir/Patient/123%5C..%5C456", "encoded_slash"),
        ("/fhir/Patient/123\\..\\456", "backslash"),
        ("/fhir/Patient/123/../456", "dot_segment"),
        ("/fhir/Patient/123/./456", "dot_segment"),
        ("/fhir/Patient/%2e%2e/456", "dot_segment"),
        ("/fhir/Patient/.%2E/456", "dot_segment"),
        ("/fhir/Patient/%2e", "dot_segment"),
        ("/fhir/..", "dot_segment"),
        ("/fhir/Patient/123%252F..%252F456", "double_encoding"),
        ("/fhir/Patient/%25", "double_encoding"),
        ("/fhir/Patient/123;x=456", "matrix_param"),
        ("/fhir;x/Patient/123", "matrix_param"),
        ("/fhir/Patient/123%3Bx=456", "matrix_param"),
        ("/fhir/Patient/123%00", "nul"),
        ("/fhir/Patient/123\0", "nul"),
        ("/fhir//Patient/123", "empty_segment"),
        ("//fhir/Patient/123", "empty_segment"),
        ("/fhir/Patient//", "empty_segment"),
        ("/fhir/Patient/12%3", "invalid_percent_encoding"),
        ("/fhir/Patient/12%zz", "invalid_percent_encoding"),
        ("/fhir/Patient/12%", "invalid_percent_encoding"),
        ("/fhir/Patient/%C0%AE%C0%AE", "invalid_utf8"),
        ("/fhir/Patient/%FF", "invalid_utf8"),
        ("/fhir/Patient/1%0A", "control_character"),
        ("/fhir/Patient/1\t", "control_character"),
        ("/fhir/Patient/%7F", "control_character"),
        ("/fhir/Patient/%C2%85", "control_character"),
        ("/fhir/Patient/1 2", "invalid_character"),
        ("/fhir/Patient/1#2", "invalid_character"),
        ("/fhir/Patient/é", "invalid_character"),
        ("fhir/Patient/1", "not_origin_form"),
        ("http://evil/fhir/Patient/1", "not_origin_form"),
        ("*", "not_origin_form"),
        ("", "not_origin_form"),
    ];
    for (target, reason) in cases {
        assert_eq!(reject(rs, target), reason, "{target:?}");
    }
    let long = format!("/fhir/{}", "a".repeat(MAX_PATH_BYTES));
    assert_eq!(reject(rs, &long), "too_long");
    // The query is not part of the path: a `/` or `..` there is data.
    assert!(rs
        .classify("GET", "/fhir/Observation?x=../..%2F", &HeaderMap::new())
        .is_ok());
    // Every reason code is listed for metrics.
    for (target, reason) in cases {
        let _ = target;
        assert!(PathRejection::REASONS.contains(&reason));
    }
    // Messages carry offsets, never the path.
    let e = rs
        .classify("GET", "/fhir/Patient/secret%2F", &HeaderMap::new())
        .unwrap_err();
    assert_eq!(
        e,
        RequestRejection::Path(PathRejection::EncodedSlash { at: 20 })
    );
    assert!(!e.to_string().contains("secret"));
}

const GENERIC: &str = r#"
    base_paths = ["/api/v2"]

    [[rule]]
    name = "notes-read"
    methods = ["GET"]
    path = "/patients/{patient}/notes/{id}"
    action = "R"
    interaction = "read"
    attribution = "complete"
    resource_type = "Note"

    [[rule]]
    name = "notes-search"
    methods = ["GET"]
    path = "/notes"
    action = "R"
    interaction = "search"
    attribution = "complete"
    patient_query = "patient_id"

    [[rule]]
    name = "chart"
    methods = ["GET", "POST"]
    path = "/chart/{section}"
    action = "R"
    interaction = "read"
    attribution = "complete"
    patient_header = "X-Patient-Id"

    [[rule]]
    name = "files"
    methods = ["*"]
    path = "/files/{*rest}"
    action = "E"
    interaction = "operation"
"#;

#[test]
fn generic_rules_capture_query_and_header() {
    let rs = RuleSet::from_toml_str(GENERIC, UnmatchedPolicy::default()).unwrap();
    let c = get(&rs, "GET", "/api/v2/patients/p-1/notes/n7");
    assert_eq!(
        (c.rule.as_str(), c.action, c.interaction),
        ("notes-read", R, I::Read)
    );
    assert_eq!(
        (c.resource_type.as_deref(), c.resource_id.as_deref()),
        (Some("Note"), Some("n7"))
    );
    assert_eq!(ids(&c), [("p-1", PatientSource::Path)]);
    assert_eq!(c.attribution, Complete);

    let c = get(&rs, "GET", "/api/v2/notes?patient_id=7,8&x=1");
    assert_eq!(
        ids(&c),
        [("7", PatientSource::Query), ("8", PatientSource::Query)]
    );
    assert_eq!(c.attribution, Complete);
    let c = get(&rs, "GET", "/api/v2/notes?x=1");
    assert_eq!((c.patients.len(), c.attribution), (0, Partial));
    let c = get(&rs, "GET", "/api/v2/notes?patient_id=7,bad_id");
    assert_eq!(ids(&c), [("7", PatientSource::Query)]);
    assert_eq!(c.attribution, Partial);

    let mut h = HeaderMap::new();
    h.insert("x-patient-id", HeaderValue::from_static("42, 43"));
    let c = rs.classify("POST", "/api/v2/chart/labs", &h).unwrap();
    assert_eq!(
        ids(&c),
        [("42", PatientSource::Header), ("43", PatientSource::Header)]
    );
    assert_eq!(c.attribution, Complete);
    let c = get(&rs, "GET", "/api/v2/chart/labs");
    assert_eq!(
        (c.rule.as_str(), c.patients.len(), c.attribution),
        ("chart", 0, Partial)
    );
    let mut h = HeaderMap::new();
    h.insert("x-patient-id", HeaderValue::from_static("../1"));
    let c = rs.classify("GET", "/api/v2/chart/labs", &h).unwrap();
    assert_eq!((c.patients.len(), c.attribution), (0, Partial));

    let c = get(&rs, "DELETE", "/api/v2/files/a/b/c");
    assert_eq!((c.rule.as_str(), c.action), ("files", E));
    assert!(!get(&rs, "DELETE", "/api/v2/files").matched);

    // Outside the base path, wrong method, unknown route: unmatched.
    for (m, t) in [
        ("GET", "/api/v3/notes"),
        ("DELETE", "/api/v2/notes"),
        ("GET", "/api/v2/other"),
    ] {
        let c = get(&rs, m, t);
        assert!(!c.matched);
        assert_eq!(c.rule, UNMATCHED_RULE);
        assert_eq!(
            (c.action, c.interaction, c.attribution),
            (E, I::Unclassified, Partial)
        );
    }
}

#[test]
fn method_overrides_are_refused_by_default() {
    let rs = fhir();
    assert_eq!(rs.method_override_policy(), MethodOverridePolicy::Refuse);
    for h in METHOD_OVERRIDE_HEADERS {
        for value in ["GET", "DELETE", ""] {
            let mut headers = HeaderMap::new();
            headers.insert(*h, HeaderValue::from_static(value));
            let e = rs
                .classify("GET", "/fhir/Observation", &headers)
                .unwrap_err();
            assert_eq!(e, RequestRejection::MethodOverride, "{h}: {value}");
            assert_eq!((e.reason(), e.status()), ("method_override", 400));
        }
    }
    for target in [
        "/fhir/Patient/1?_method=DELETE",
        "/fhir/Patient/1?_METHOD=get",
        "/fhir/Patient/1?x=1&%5Fmethod=PUT",
        "/fhir/Patient/1?_method",
    ] {
        let e = rs.classify("GET", target, &HeaderMap::new()).unwrap_err();
        assert_eq!(e, RequestRejection::MethodOverride, "{target}");
    }
    // `_method` is a parameter name, not a value.
    assert!(rs
        .classify("GET", "/fhir/Observation?code=_method", &HeaderMap::new())
        .is_ok());
}

#[test]
fn method_overrides_are_classified_as_the_method_they_ask_for_when_configured() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg = RulesConfig {
        method_override: MethodOverridePolicy::Classify,
        ..RulesConfig::default()
    };
    let rs = RuleSet::load(&cfg, dir).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("x-http-method-override", HeaderValue::from_static("delete"));
    let c = rs.classify("POST", "/fhir/Patient/p1", &headers).unwrap();
    assert_eq!(
        (c.method.as_str(), c.rule.as_str(), c.action),
        ("DELETE", "fhir-patient-delete", D)
    );
    let c = rs
        .classify("POST", "/fhir/Patient/p1?_method=GET", &HeaderMap::new())
        .unwrap();
    assert_eq!((c.method.as_str(), c.action), ("GET", R));
    // Two overrides that disagree, or one asking for a method no rule knows: refused.
    headers.insert("x-http-method", HeaderValue::from_static("GET"));
    assert_eq!(
        rs.classify("POST", "/fhir/Patient/p1", &headers)
            .unwrap_err(),
        RequestRejection::MethodOverride
    );
    let mut headers = HeaderMap::new();
    headers.insert("x-method-override", HeaderValue::from_static("PROPFIND"));
    assert_eq!(
        rs.classify("POST", "/fhir/Patient/p1", &headers)
            .unwrap_err(),
        RequestRejection::UnknownMethod
    );
    let toml = toml::from_str::<RulesConfig>("method_override = \"classify\"\n").unwrap();
    assert_eq!(toml.method_override, MethodOverridePolicy::Classify);
}

#[test]
fn methods_no_rule_knows_are_refused_whatever_the_path() {
    let rs = fhir();
    for (method, target) in [
        ("get", "/fhir/Patient/1"),
        ("Get", "/fhir/Observation"),
        ("PROPFIND", "/fhir/Patient/1"),
        ("TRACE", "/"),
        ("CONNECT", "/fhir"),
        ("", "/fhir/Patient/1"),
    ] {
        let e = rs.classify(method, target, &HeaderMap::new()).unwrap_err();
        assert_eq!(
            (e, e.reason(), e.status()),
            (RequestRejection::UnknownMethod, "unknown_method", 405),
            "{method} {target}"
        );
    }
    assert!(rs.knows_method("OPTIONS") && rs.knows_method("PATCH"));
    // A rule that accepts any method makes every upper-case one known.
    let any = RuleSet::from_toml_str(
        "base_paths = [\"/\"]\n[[rule]]\nname = \"all\"\nmethods = [\"*\"]\npath = \"/{*rest}\"\naction = \"E\"\ninteraction = \"operation\"\nattribution = \"partial\"\n",
        UnmatchedPolicy::default(),
    )
    .unwrap();
    assert!(any.knows_method("PROPFIND") && !any.knows_method("get"));
}

#[test]
fn base_paths_and_unmatched_policy() {
    let rs = fhir();
    assert_eq!(rs.unmatched_policy(), UnmatchedPolicy::Inspect);
    for t in [
        "/Patient/1",
        "/fhirx/Patient/1",
        "/FHIR/Patient/1",
        "/api/fhir/Patient/1",
    ] {
        let c = get(rs, "GET", t);
        assert!(!c.matched, "{t}");
        assert!(!rs.denies(&c));
        // Unmatched is never unread: its body and response are read like a search's.
        assert!(c.inspect_body && c.inspect_response && c.buffered(), "{t}");
    }
    let c = get(rs, "GET", "/fhir/Patient/a_b");
    assert!(!c.matched);
    assert_eq!(c.path, "/fhir/Patient/a_b");
    let stream = RuleSet::from_toml_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/fhir-r4.toml"))
            .unwrap(),
        UnmatchedPolicy::Stream,
    )
    .unwrap();
    let c = get(&stream, "GET", "/fhir/Patient/a_b");
    assert!(!c.matched && !c.buffered() && !stream.denies(&c));

    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/fhir-r4.toml"))
            .unwrap();
    let deny = RuleSet::from_toml_str(&text, UnmatchedPolicy::Deny).unwrap();
    let c = get(&deny, "GET", "/other");
    assert!(deny.denies(&c));
    assert!(!deny.denies(&get(&deny, "GET", "/fhir/metadata")));

    // Base paths can be overridden per file from the config; several bases, longest first.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cfg = RulesConfig::default();
    cfg.base_paths.insert(
        PathBuf::from(DEFAULT_RULE_FILE),
        vec!["/".into(), "/api/FHIR/R4".into()],
    );
    let moved = RuleSet::load(&cfg, dir).unwrap();
    let read = |t: &str| get(&moved, "GET", t).rule;
    assert_eq!(read("/api/FHIR/R4/Patient/1"), "fhir-patient-read");
    assert_eq!(read("/Patient/1"), "fhir-patient-read");
    assert_eq!(read("/fhir/Patient/1"), UNMATCHED_RULE);
}

#[test]
fn first_match_wins_and_shadowed_rules_are_refused() {
    let two = r#"
        base_paths = ["/"]
        [[rule]]
        name = "specific"
        methods = ["GET"]
        path = "/a/{id}"
        action = "R"
        interaction = "read"
        [[rule]]
        name = "general"
        methods = ["GET", "POST"]
        path = "/{x}/{id}"
        action = "E"
        interaction = "operation"
    "#;
    let rs = RuleSet::from_toml_str(two, UnmatchedPolicy::default()).unwrap();
    assert_eq!(get(&rs, "GET", "/a/1").rule, "specific");
    assert_eq!(get(&rs, "POST", "/a/1").rule, "general");
    assert_eq!(get(&rs, "GET", "/b/1").rule, "general");
    assert_eq!(
        rs.rules()
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["specific", "general"]
    );

    let shadowed = r#"
        base_paths = ["/fhir"]
        [[rule]]
        name = "fhir-read"
        methods = ["GET", "HEAD"]
        path = "/{type}/{id}"
        action = "R"
        interaction = "read"
        [[rule]]
        name = "fhir-patient-read"
        methods = ["GET"]
        path = "/Patient/{patient}"
        resource_type = "Patient"
        resource_id = "patient"
        action = "R"
        interaction = "read"
        attribution = "complete"
    "#;
    let e = RuleSet::from_toml_str(shadowed, UnmatchedPolicy::default()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("fhir-patient-read") && msg.contains("fhir-read"),
        "{msg}"
    );
    assert_eq!(e.category(), "invalid");
}

#[test]
fn patient_pairs_attribute_even_without_patient_rules() {
    // Only generic rules: `Patient/<id>` in the path still names the patient.
    let generic_only = r#"
        base_paths = ["/fhir"]
        [[rule]]
        name = "read"
        methods = ["GET"]
        path = "/{type}/{id}"
        action = "R"
        interaction = "read"
        attribution = "complete"
        [[rule]]
        name = "compartment"
        methods = ["GET"]
        path = "/{c:type}/{cid:id}/{type}"
        action = "R"
        interaction = "search"
        search = true
        attribution = "complete"
    "#;
    let rs = RuleSet::from_toml_str(generic_only, UnmatchedPolicy::default()).unwrap();
    let c = get(&rs, "GET", "/fhir/Patient/5");
    assert_eq!(
        (ids(&c), c.attribution),
        (vec![("5", PatientSource::Path)], Complete)
    );
    let c = get(&rs, "GET", "/fhir/Observation/5");
    assert_eq!((c.patients.len(), c.attribution), (0, Partial));
    let c = get(&rs, "GET", "/fhir/Patient/5/Condition");
    assert_eq!(ids(&c), [("5", PatientSource::Path)]);
}

#[test]
fn rule_file_errors_name_the_file_rule_and_key() {
    let bad = |text: &str| {
        RuleSet::from_toml_str(text, UnmatchedPolicy::default())
            .unwrap_err()
            .to_string()
    };
    let head = "base_paths = [\"/\"]\n[[rule]]\nname = \"r1\"\nmethods = [\"GET\"]\naction = \"R\"\ninteraction = \"read\"\n";
    let e = bad(&format!("{head}path = \"/x\"\npaht = \"/y\"\n"));
    assert!(e.contains("<inline>") && e.contains("paht"), "{e}");
    let e = bad(&format!("{head}path = \"/x/{{id}}/{{id}}\"\n"));
    assert!(
        e.contains("rule `r1`") && e.contains("`path`") && e.contains("twice"),
        "{e}"
    );
    let e = bad(&format!(
        "{head}path = \"/x\"\nattribution = \"complete\"\n"
    ));
    assert!(e.contains("`attribution`"), "{e}");
    let e = bad(&format!(
        "{head}path = \"/Patient/{{patient}}\"\nattribution = \"none\"\n"
    ));
    assert!(e.contains("`attribution`"), "{e}");
    let e = bad(&format!("{head}path = \"/x\"\nsearch = true\n"));
    assert!(e.contains("`search`"), "{e}");
    let e = bad(&format!("{head}path = \"/{{type}}\"\nform_body = true\n"));
    assert!(e.contains("`form_body`"), "{e}");
    let e = bad(&format!("{head}path = \"/a/../b\"\n"));
    assert!(e.contains("`path`"), "{e}");
    let e = bad(&format!("{head}path = \"/x\"\ninteraction2 = \"read\"\n"));
    assert!(e.contains("interaction2"), "{e}");
    let e = bad(&format!("{head}path = \"/x\"\n[[rule]]\nname = \"r1\"\nmethods = [\"POST\"]\npath = \"/y\"\naction = \"C\"\ninteraction = \"create\"\n"));
    assert!(e.contains("`name`") && e.contains("another rule"), "{e}");
    let e = bad("base_paths = [\"/fhir/\"]\n");
    assert!(e.contains("`base_paths`"), "{e}");
    let e = bad("base_paths = [\"/\"]\n[compartment.Observation]\ncompartment = [\"subject\"]\nrefs = []\nbare = []\npin = []\n");
    assert!(
        e.contains("compartment.Observation") && e.contains("not in refs"),
        "{e}"
    );
    let e = bad("base_paths = [\"/\"]\n[operations]\n\"$x\" = \"R\"\n");
    assert!(e.contains("operations.$x"), "{e}");
    let e = bad(&format!("{head}path = \"/x\"\nmethods2 = 1\n"));
    assert!(e.contains("methods2"), "{e}");
}

#[test]
fn config_validation_and_loading() {
    let cfg = RulesConfig::default();
    cfg.validate().unwrap();
    assert_eq!(cfg.files, [PathBuf::from("rules/fhir-r4.toml")]);
    assert_eq!(cfg.max_form_body_bytes, 1 << 20);
    assert_eq!(cfg.unmatched, UnmatchedPolicy::Inspect);
    // The old default's name is gone: streaming unread must be asked for by its own name.
    let e = toml::from_str::<RulesConfig>("unmatched = \"journal\"\n").unwrap_err();
    assert!(e.to_string().contains("stream"), "{e}");

    let parsed: RulesConfig =
        toml::from_str("unmatched = \"deny\"\nmax_form_body_bytes = 2048\n").unwrap();
    assert_eq!(parsed.unmatched, UnmatchedPolicy::Deny);
    assert_eq!(parsed.files, [PathBuf::from(DEFAULT_RULE_FILE)]);
    assert!(toml::from_str::<RulesConfig>("unmatch = \"deny\"\n")
        .unwrap_err()
        .to_string()
        .contains("unmatch"));

    for bad in [
        RulesConfig {
            files: vec![],
            ..RulesConfig::default()
        },
        RulesConfig {
            max_form_body_bytes: 0,
            ..RulesConfig::default()
        },
        RulesConfig {
            max_form_body_bytes: MAX_FORM_BODY_BYTES_LIMIT + 1,
            ..RulesConfig::default()
        },
        RulesConfig {
            files: vec!["a.toml".into(), "a.toml".into()],
            ..RulesConfig::default()
        },
        RulesConfig {
            base_paths: [(PathBuf::from("other.toml"), vec!["/x".to_string()])].into(),
            ..RulesConfig::default()
        },
        RulesConfig {
            base_paths: [(PathBuf::from(DEFAULT_RULE_FILE), vec!["x".to_string()])].into(),
            ..RulesConfig::default()
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
        assert_eq!(
            RuleSet::load(&bad, Path::new(".")).unwrap_err().category(),
            "config"
        );
    }
    let missing = RulesConfig {
        files: vec!["nope.toml".into()],
        ..RulesConfig::default()
    };
    let e = RuleSet::load(&missing, Path::new("/nonexistent")).unwrap_err();
    assert_eq!(e.category(), "read");
    assert!(e.to_string().contains("/nonexistent/nope.toml"));
}

#[test]
fn shipped_compartment_table_has_the_r4_patient_compartment() {
    let rs = fhir();
    let comp = |t: &str| {
        rs.compartment_params(t)
            .unwrap_or_else(|| panic!("{t} missing"))
    };
    assert_eq!(comp("Observation").compartment, ["subject", "performer"]);
    assert_eq!(comp("Encounter").compartment, ["patient"]);
    assert_eq!(
        comp("AllergyIntolerance").compartment,
        ["patient", "recorder", "asserter"]
    );
    assert_eq!(comp("Patient").compartment, ["link"]);
    assert_eq!(comp("Condition").compartment, ["patient", "asserter"]);
    assert_eq!(comp("MedicationRequest").compartment, ["subject"]);
    assert_eq!(
        comp("Coverage").compartment,
        ["policy-holder", "subscriber", "beneficiary", "payor"]
    );
    assert_eq!(comp("Group").compartment, ["member"]);
    assert_eq!(comp("ResearchSubject").compartment, ["individual"]);
    // Types outside the compartment are only listed for their Patient-only references.
    assert!(rs.compartment_params("Medication").is_none());
    assert!(rs.compartment_params("Practitioner").is_none());
    assert_eq!(comp("Device").compartment, Vec::<String>::new());
    // Every R4 type with patient compartment parameters (66 of them) is there.
    let with_params = rs
        .compartment
        .values()
        .filter(|t| !t.def.compartment.is_empty())
        .count();
    assert_eq!(with_params, 66);
    // `pin` and `bare` are what the search attribution relies on.
    assert!(comp("Observation").pin.contains(&"subject".to_string()));
    assert!(!comp("Observation").pin.contains(&"performer".to_string()));
    assert_eq!(comp("Observation").bare, ["patient"]);
    assert!(comp("Patient").pin.is_empty());
}

#[test]
fn rule_set_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RuleSet>();
    assert_send_sync::<Classification>();
}

#[test]
fn operations_are_classified() {
    let rs = fhir();
    assert_eq!(rs.operations.get("everything"), Some(&R));
    assert_eq!(rs.operations.get("validate"), Some(&R));
    assert_eq!(rs.operations.get("meta-add"), Some(&U));
    assert_eq!(rs.operations.get("process-message"), None);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn path_strategy() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/".to_string()),
            Just("..".to_string()),
            Just(".".to_string()),
            Just("%2e".to_string()),
            Just("%2F".to_string()),
            Just("%5c".to_string()),
            Just("%25".to_string()),
            Just("%00".to_string()),
            Just("%".to_string()),
            Just(";".to_string()),
            Just("\\".to_string()),
            Just("fhir".to_string()),
            Just("Patient".to_string()),
            Just("Observation".to_string()),
            Just("_history".to_string()),
            Just("$everything".to_string()),
            Just("?".to_string()),
            "[0-9a-fA-F]{1,3}",
            "%[0-9a-fA-F]{2}",
            "[A-Za-z0-9._~-]{1,5}",
            any::<char>().prop_map(|c| c.to_string()),
        ];
        prop::collection::vec(piece, 0..14).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        #[test]
        fn classify_never_panics(method in "[A-Z]{0,7}|.{0,3}", path in path_strategy(), raw in ".{0,40}") {
            let rs = fhir();
            let _ = rs.classify(&method, &path, &HeaderMap::new());
            let _ = rs.classify(&method, &format!("/{path}"), &HeaderMap::new());
            let _ = rs.classify(&method, &raw, &HeaderMap::new());
            let mut c = Classification::unmatched(String::new(), String::new(), None, UnmatchedPolicy::Stream);
            if let Ok(cl) = rs.classify("POST", &format!("/fhir/Observation/_search?{path}"), &HeaderMap::new()) {
                c = cl;
            }
            rs.attribute_form_body(&mut c, raw.as_bytes());
        }

        #[test]
        fn accepted_paths_decode_to_plain_segments(path in path_strategy()) {
            let rs = fhir();
            let target = format!("/fhir/{path}");
            if let Ok(c) = rs.classify("GET", &target, &HeaderMap::new()) {
                let raw_path = target.split('?').next().unwrap();
                prop_assert!(!c.path.contains('\0'));
                prop_assert!(!c.path.contains('\\'));
                // Decoding made no new segment: no `/` appeared inside a segment.
                prop_assert_eq!(c.path.matches('/').count(), raw_path.matches('/').count());
                let segs: Vec<&str> = c.path.split('/').collect();
                for s in &segs[1..segs.len() - 1] {
                    prop_assert!(!s.is_empty());
                }
                for s in &segs {
                    prop_assert!(*s != "." && *s != "..");
                }
                // A patient from the path is one whole decoded segment.
                for p in c.patients.iter().filter(|p| p.source == PatientSource::Path) {
                    prop_assert!(segs.contains(&p.id.as_str()));
                    prop_assert!(is_fhir_id(&p.id));
                }
            }
        }

        #[test]
        fn encoding_unreserved_characters_changes_nothing(
            id in "[A-Za-z0-9.-]{1,20}",
            ty in prop::sample::select(vec!["Patient", "Observation", "Encounter"]),
            mask in any::<u64>(),
        ) {
            prop_assume!(id != "." && id != "..");
            let rs = fhir();
            let plain = format!("/fhir/{ty}/{id}");
            let mut enc = String::new();
            for (i, ch) in plain.chars().enumerate() {
                if ch != '/' && mask & (1 << (i % 64)) != 0 {
                    enc.push_str(&format!("%{:02X}", ch as u32));
                } else {
                    enc.push(ch);
                }
            }
            let a = rs.classify("GET", &plain, &HeaderMap::new()).unwrap();
            let b = rs.classify("GET", &enc, &HeaderMap::new()).unwrap();
            prop_assert_eq!(a, b);
        }
    }
}

#[test]
fn elements_are_augmented_with_the_patient_reference_elements_upstream() {
    let rs = fhir();
    let c = get(
        rs,
        "GET",
        "/fhir/Observation?_count=20&_elements=code,valueQuantity",
    );
    assert_eq!(
        c.forwarded_query.as_deref(),
        Some("_count=20&_elements=code,valueQuantity,performer,subject")
    );
    assert_eq!(
        c.query.as_deref(),
        Some("_count=20&_elements=code,valueQuantity")
    );
    // Already there: nothing to add.
    let c = get(
        rs,
        "GET",
        "/fhir/Observation?_elements=subject,performer,code",
    );
    assert_eq!(c.forwarded_query, None);
    // Encoded, on a read, on a type outside the compartment (nothing to keep).
    let c = get(rs, "GET", "/fhir/AllergyIntolerance/a1?%5Felements=code");
    assert_eq!(
        c.forwarded_query.as_deref(),
        Some("%5Felements=code,asserter,patient,recorder")
    );
    assert_eq!(
        get(rs, "GET", "/fhir/Organization?_elements=name").forwarded_query,
        None
    );
    // Widened (_include) or untyped (unmatched): every compartment type's elements.
    let c = get(
        rs,
        "GET",
        "/fhir/Observation?_elements=code&_include=Observation:patient",
    );
    let forwarded = c.forwarded_query.unwrap();
    for e in [
        "subject",
        "performer",
        "patient",
        "asserter",
        "participant",
        "member",
    ] {
        assert!(
            forwarded.split([',', '=']).any(|x| x == e),
            "{e}: {forwarded}"
        );
    }
    let c = get(rs, "GET", "/fhir/Observation/_search?_elements=code");
    assert!(!c.matched);
    assert!(c.forwarded_query.unwrap().contains(",subject"));
    // `_elements:exclude` cannot be augmented: refused.
    let e = rs
        .classify(
            "GET",
            "/fhir/Observation?_elements:exclude=subject",
            &HeaderMap::new(),
        )
        .unwrap_err();
    assert_eq!(e, RequestRejection::ElementsNotAudited);
    // Under `elements = "refuse"`, any `_elements` is refused.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg = RulesConfig {
        elements: SubsetPolicy::Refuse,
        ..RulesConfig::default()
    };
    let refusing = RuleSet::load(&cfg, dir).unwrap();
    assert_eq!(
        refusing
            .classify("GET", "/fhir/Observation?_elements=code", &HeaderMap::new())
            .unwrap_err()
            .reason(),
        "elements_not_audited"
    );
    // Form bodies (POST _search) go through the same function.
    assert_eq!(
        rs.subset(Some("Observation"), "_elements=code&patient=p1")
            .unwrap(),
        Subset::Augmented("_elements=code,performer,subject&patient=p1".into())
    );
}

#[test]
fn summaries_that_hide_patient_references_and_graphql_are_refused_by_default() {
    let rs = fhir();
    let refused = |t: &str| {
        rs.classify("GET", t, &HeaderMap::new())
            .map(|c| c.subset_gap)
    };
    for ok in [
        "/fhir/Observation?_summary=data",
        "/fhir/Observation?_summary=count",
        "/fhir/Observation?_summary=false",
        // Observation's subject and performer are summary elements.
        "/fhir/Observation?_summary=true",
        "/fhir/Organization?_summary=true",
    ] {
        assert_eq!(refused(ok), Ok(None), "{ok}");
    }
    for bad in [
        "/fhir/Observation?_summary=text",
        "/fhir/Observation?_summary=TEXT",
        "/fhir/Observation?_summary=maybe",
        // AllergyIntolerance.asserter is not a summary element.
        "/fhir/AllergyIntolerance?_summary=true",
        "/fhir/Observation?_summary=true&_revinclude=Provenance:target",
        "/fhir/Patient/p1/Observation?_summary=text",
    ] {
        assert_eq!(
            refused(bad),
            Err(RequestRejection::SummaryHidesPatients),
            "{bad}"
        );
    }
    for graphql in [
        "/fhir/$graphql?query=x",
        "/fhir/Patient/p1/$graphql?query=x",
    ] {
        for method in ["GET", "POST"] {
            assert_eq!(
                rs.classify(method, graphql, &HeaderMap::new()).unwrap_err(),
                RequestRejection::GraphqlNotAudited,
                "{method} {graphql}"
            );
        }
    }
    // Under `forward`, both go through with a gap that keeps the attribution partial.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg = RulesConfig {
        summary: SubsetPolicy::Forward,
        graphql: SubsetPolicy::Forward,
        ..RulesConfig::default()
    };
    let forwarding = RuleSet::load(&cfg, dir).unwrap();
    let c = forwarding
        .classify("GET", "/fhir/Patient/p1?_summary=text", &HeaderMap::new())
        .unwrap();
    assert_eq!(
        (c.subset_gap, c.attribution),
        (Some(SubsetGap::Summary), Partial)
    );
    let c = forwarding
        .classify("POST", "/fhir/$graphql", &HeaderMap::new())
        .unwrap();
    assert_eq!(c.subset_gap, Some(SubsetGap::Graphql));
    // `augment` is no policy for _summary or $graphql.
    for bad in [
        "summary = \"augment\"\n",
        "graphql = \"augment\"\n",
        "elements = \"forward\"\n",
    ] {
        let cfg: RulesConfig = toml::from_str(bad).unwrap();
        assert!(cfg.validate().is_err(), "{bad}");
    }
}
