//! Unit tests of reading bodies, settling the record and the attribution bounds.

use super::body::*;
use super::config::*;
use super::settle::*;
use crate::attribution::extract::ReferenceOnly;
use crate::fhir::LocalBases;

fn response_patients(body: &[u8]) -> Findings {
    crate::attribution::extract::response_patients(body, &LocalBases::default())
}

fn request_patients(body: &[u8], creating: bool, entries: &dyn EntryClassifier) -> Findings {
    crate::attribution::extract::request_patients(body, creating, entries, &LocalBases::default())
}
use crate::attribution::extract::{EntryClassifier, Findings, Gap};
use crate::record::{Attribution, PatientRef, PatientSource};
use crate::rules::Classification;
use crate::rules::{RuleSet, UnmatchedPolicy};

#[test]
fn attribution_config_names_the_key_it_rejects() {
    let parse = |text: &str| -> Result<AttributionConfig, String> {
        let c: AttributionConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    };
    let c = parse("").unwrap();
    assert_eq!(c.max_buffered_requests, 64);
    assert_eq!(c.buffered_wait_secs, 10);
    assert!(parse("max_buffered_requests = 0")
        .unwrap_err()
        .contains("attribution.max_buffered_requests"));
    assert!(parse("max_buffered_requests = 70000")
        .unwrap_err()
        .contains("attribution.max_buffered_requests"));
    assert!(parse("buffered_wait_secs = 301")
        .unwrap_err()
        .contains("attribution.buffered_wait_secs"));
    assert!(parse("max_body_bytes = 0")
        .unwrap_err()
        .contains("attribution.max_body_bytes"));
    assert!(parse("max_buffered = 3")
        .unwrap_err()
        .contains("unknown field"));
    assert_eq!(
        parse("buffered_wait_secs = 0").unwrap().buffered_wait_secs,
        0
    );
    assert_eq!(parse("").unwrap().client_timeout_secs, 60);
    assert!(parse("client_timeout_secs = 0")
        .unwrap_err()
        .contains("attribution.client_timeout_secs"));
}

fn rules() -> RuleSet {
    RuleSet::from_toml_str(crate::rules::BUILTIN_FHIR_R4, UnmatchedPolicy::default()).unwrap()
}

fn classify(method: &str, target: &str) -> Classification {
    rules()
        .classify(method, target, &http::HeaderMap::new())
        .unwrap()
}

fn ids(p: &[PatientRef]) -> Vec<(String, PatientSource)> {
    p.iter().map(|p| (p.id.clone(), p.source)).collect()
}

#[test]
fn a_read_of_any_type_is_settled_by_its_response() {
    let c = classify("GET", "/fhir/Observation/o1");
    let inspection = Inspection {
        response: Some(response_patients(
            br#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/a"}}"#,
        )),
        ..Default::default()
    };
    let (p, a, g) = settle(&c, &inspection, Some(200));
    assert_eq!(ids(&p), [("a".to_string(), PatientSource::Response)]);
    assert_eq!(a, Attribution::Complete);
    assert!(g.is_empty());
    // A 404 discloses nobody: complete, no patients.
    let inspection = Inspection {
        response: Some(response_patients(br#"{"resourceType":"OperationOutcome"}"#)),
        ..Default::default()
    };
    let (p, a, _) = settle(&c, &inspection, Some(404));
    assert!(p.is_empty());
    assert_eq!(a, Attribution::Complete);
}

#[test]
fn gaps_make_it_partial() {
    let c = classify("GET", "/fhir/Observation");
    let mut inspection = Inspection::default();
    inspection.gaps.insert(Gap::NotJson);
    let (_, a, g) = settle(&c, &inspection, Some(200));
    assert_eq!(a, Attribution::Partial);
    assert_eq!(g, ["not_json"]);
}

#[test]
fn creates_resolve_their_patient_from_the_response() {
    let c = classify("POST", "/fhir/Patient");
    let body = request_patients(
        br#"{"resourceType":"Patient","name":[{"family":"N"}]}"#,
        true,
        &ReferenceOnly,
    );
    let inspection = Inspection {
        body: Some(body),
        ..Default::default()
    };
    let (p, a, g) = settle(&c, &inspection, None);
    assert!(p.is_empty());
    assert_eq!(a, Attribution::Partial);
    assert_eq!(g, ["created_patient"]);
    // Answered with Prefer: return=minimal: the Location header names it.
    let inspection = Inspection {
        body: inspection.body,
        response: Some(Findings::default()),
        location_patient: Some("new1".into()),
        ..Default::default()
    };
    let (p, a, g) = settle(&c, &inspection, Some(201));
    assert_eq!(ids(&p), [("new1".to_string(), PatientSource::Response)]);
    assert_eq!(a, Attribution::Complete, "{g:?}");
}

#[test]
fn an_observation_create_is_complete_from_its_body() {
    let c = classify("POST", "/fhir/Observation");
    let body = request_patients(
        br#"{"resourceType":"Observation","subject":{"reference":"Patient/s"}}"#,
        true,
        &ReferenceOnly,
    );
    let inspection = Inspection {
        body: Some(body),
        ..Default::default()
    };
    let (p, a, _) = settle(&c, &inspection, None);
    assert_eq!(ids(&p), [("s".to_string(), PatientSource::Body)]);
    assert_eq!(a, Attribution::Complete);
}

#[test]
fn a_delete_without_representation_is_partial() {
    let c = classify("DELETE", "/fhir/Observation/o1");
    let inspection = Inspection {
        response: Some(response_patients(br#"{"resourceType":"OperationOutcome"}"#)),
        ..Default::default()
    };
    let (_, a, g) = settle(&c, &inspection, Some(200));
    assert_eq!(a, Attribution::Partial);
    assert_eq!(g, ["no_representation"]);
    // The Patient itself: the path says who.
    let c = classify("DELETE", "/fhir/Patient/p1");
    let (p, a, _) = settle(&c, &inspection, Some(200));
    assert_eq!(ids(&p), [("p1".to_string(), PatientSource::Path)]);
    assert_eq!(a, Attribution::Complete);
}

#[test]
fn transaction_entries_are_classified_by_the_rules() {
    let rs = rules();
    let entries = EntryRules {
        rules: &rs,
        base_path: "/fhir",
    };
    assert_eq!(
        entries.classify_entry("DELETE", "Patient/p9"),
        (vec!["p9".to_string()], true)
    );
    assert_eq!(
        entries.classify_entry("GET", "Observation?patient=p8"),
        (vec!["p8".to_string()], true)
    );
    assert_eq!(
        entries.classify_entry("GET", "http://h/fhir/Patient/p7/_history/2"),
        (vec!["p7".to_string()], true)
    );
    assert_eq!(
        entries.classify_entry("GET", "Patient/bad%2Fid"),
        (vec![], false)
    );
}

#[test]
fn decoding() {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"{\"a\":1}").unwrap();
    let gz = gz.finish().unwrap();
    let h = |s: &str| http::HeaderValue::from_str(s).unwrap();
    assert_eq!(&*decoded(&gz, Some(&h("gzip")), 100).unwrap(), b"{\"a\":1}");
    assert_eq!(decoded(&gz, Some(&h("gzip")), 3), Err(Gap::TooLarge));
    assert_eq!(
        decoded(b"x", Some(&h("compress")), 100),
        Err(Gap::ContentEncoding)
    );
    assert_eq!(decoded(b"x", Some(&h("gzip")), 100), Err(Gap::InvalidJson));
    assert_eq!(decoded(b"x", Some(&h("br")), 100), Err(Gap::InvalidJson));
    assert_eq!(decoded(b"x", Some(&h("zstd")), 100), Err(Gap::InvalidJson));
    assert_eq!(&*decoded(b"x", None, 100).unwrap(), b"x");
    assert_eq!(&*decoded(b"x", Some(&h("identity")), 100).unwrap(), b"x");

    // br and zstd, within the same bound.
    let plain = br#"{"resourceType":"Patient","id":"p1"}"#.repeat(50);
    let mut br = Vec::new();
    brotli::CompressorWriter::new(&mut br, 4096, 5, 22)
        .write_all(&plain)
        .unwrap();
    let zst = zstd::encode_all(&plain[..], 3).unwrap();
    for (coding, body) in [("br", &br), ("zstd", &zst), ("ZSTD", &zst)] {
        assert_eq!(
            &*decoded(body, Some(&h(coding)), plain.len()).unwrap(),
            &plain[..]
        );
        assert_eq!(
            decoded(body, Some(&h(coding)), plain.len() - 1),
            Err(Gap::TooLarge),
            "{coding}"
        );
    }
    // Stacked codings are undone in reverse order of application.
    let mut gz_of_br = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz_of_br.write_all(&br).unwrap();
    let gz_of_br = gz_of_br.finish().unwrap();
    assert_eq!(
        &*decoded(&gz_of_br, Some(&h("br, gzip")), 10_000).unwrap(),
        &plain[..]
    );
    assert_eq!(
        decoded(&gz_of_br, Some(&h("gzip, gzip, gzip, gzip")), 10_000),
        Err(Gap::ContentEncoding)
    );
    // A zstd frame asking for a window larger than 8 MiB is refused, not allocated.
    let mut big_window = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    big_window.window_log(27).unwrap();
    big_window.long_distance_matching(true).unwrap();
    big_window.include_contentsize(false).unwrap();
    big_window.write_all(&vec![7u8; 20 << 20]).unwrap();
    let big_window = big_window.finish().unwrap();
    assert_eq!(
        decoded(&big_window, Some(&h("zstd")), 64 << 20),
        Err(Gap::InvalidJson)
    );
}

#[test]
fn media_types() {
    let h = |s: &str| http::HeaderValue::from_str(s).unwrap();
    assert_eq!(
        media_type(Some(&h("application/fhir+json; charset=utf-8"))).as_deref(),
        Some("application/fhir+json")
    );
    assert!(is_json("application/fhir+json"));
    assert!(is_json("application/json"));
    assert!(is_json("application/json-patch+json"));
    assert!(!is_json("application/fhir+xml"));
    assert_eq!(media_type(Some(&h("a b"))), None);
    // Legacy FHIR media types (DSTU2, still served by some servers).
    assert!(is_json("application/json+fhir") && is_json("text/json"));
    for xml in [
        "application/fhir+xml",
        "application/xml+fhir",
        "application/xml",
        "text/xml",
    ] {
        assert!(is_xml(xml) && !is_json(xml), "{xml}");
    }
    use BodyFormat::*;
    assert_eq!(
        body_format(Some("application/json+fhir"), b"{}"),
        Some(Json)
    );
    assert_eq!(
        body_format(Some("application/xml+fhir"), b"<a/>"),
        Some(Xml)
    );
    assert_eq!(body_format(None, b"  <Patient/>"), Some(Xml));
    assert_eq!(body_format(None, b"{}"), Some(Json));
    // XML labelled JSON is still read (as XML): a mislabel does not hide its patients.
    assert_eq!(
        body_format(Some("application/fhir+json"), b"\n<Patient/>"),
        Some(Xml)
    );
    assert_eq!(body_format(Some("application/pdf"), b"%PDF"), None);
}

#[test]
fn only_a_body_without_resource_type_is_read_as_a_bulk_manifest() {
    let local = LocalBases::new(&["ehr.example"], &["/fhir".to_string()], &[]);
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let inspect = |body: &[u8]| {
        let mut inspection = Inspection::default();
        inspect_response_body(&headers, body, false, 1 << 20, &local, &mut inspection);
        inspection
    };
    let manifest = br#"{"transactionTime": "2026-12-04T00:00:00Z", "request": "x",
        "output": [{"type": "Patient", "url": "https://files.example/p.ndjson"}]}"#;
    let read = inspect(manifest);
    assert_eq!(read.bulk_files.len(), 1);
    assert!(read.gaps.contains(&Gap::BulkFilesElsewhere));
    // A resource is not a manifest, whatever other fields it carries.
    let resource = br#"{"resourceType": "Parameters", "transactionTime": "2026-12-04T00:00:00Z",
        "output": [{"url": "https://files.example/p.ndjson"}]}"#;
    let read = inspect(resource);
    assert!(read.bulk_files.is_empty());
    assert!(!read.gaps.contains(&Gap::BulkFilesElsewhere));
}
