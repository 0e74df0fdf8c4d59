//! Unit tests of [`super`].

use super::*;
use serde_json::json;

/// The bases of the EHR these tests read from: `http://ehr.example/fhir` and `http://h/fhir`.
fn test_bases() -> LocalBases {
    LocalBases::new(&["ehr.example", "h"], &["/fhir".to_string()], &[])
}

fn response_patients(body: &[u8]) -> Findings {
    super::response_patients(body, &test_bases())
}

fn request_patients(body: &[u8], creating: bool, entries: &dyn EntryClassifier) -> Findings {
    super::request_patients(body, creating, entries, &test_bases())
}

/// The findings of `v` read as JSON, checked against the same document in FHIR XML: the two
/// formats must name the same patients, gaps and external references.
fn response(v: serde_json::Value) -> Findings {
    let json = response_patients(&serde_json::to_vec(&v).unwrap());
    if let Some(xml) = to_fhir_xml(&v) {
        let from_xml = super::response_patients_xml(xml.as_bytes(), &test_bases());
        assert_eq!(
            (ids(&from_xml), gaps(&from_xml), &from_xml.external_refs),
            (ids(&json), gaps(&json), &json.external_refs),
            "XML and JSON disagree on {xml}"
        );
        assert_eq!(from_xml.bundle_type, json.bundle_type);
        assert_eq!(from_xml.document_type, json.document_type);
    }
    json
}

#[path = "../../../tests/support/fhir_xml.rs"]
mod fhir_xml;
use fhir_xml::to_fhir_xml;

/// Sorted: `json!` objects serialise their keys in alphabetical order.
fn ids(f: &Findings) -> Vec<&str> {
    let mut v: Vec<&str> = f.patients.iter().map(String::as_str).collect();
    v.sort_unstable();
    v
}

fn gaps(f: &Findings) -> Vec<&'static str> {
    f.gaps.iter().map(|g| g.as_str()).collect()
}

#[test]
fn a_patient_and_its_links() {
    let f = response(json!({
        "resourceType": "Patient", "id": "example",
        "generalPractitioner": [{"reference": "Practitioner/p1"}],
        "managingOrganization": {"reference": "Organization/1"},
        "link": [{"other": {"reference": "Patient/pat2"}, "type": "seealso"}]
    }));
    assert_eq!(ids(&f), ["example", "pat2"]);
    assert!(f.gaps.is_empty());
}

#[test]
fn reference_forms_and_other_types() {
    let f = response(json!({
        "resourceType": "Observation", "id": "o1",
        "subject": {"reference": "Patient/a"},
        "performer": [
            {"reference": "http://ehr.example/fhir/Patient/b/_history/3"},
            {"reference": "Practitioner/a"},
            {"reference": "RelatedPerson/c"},
            {"reference": "Group/g"}
        ],
        "focus": [{"reference": "Patient/c/_history/1"}],
        "note": [{"authorReference": {"reference": "Patient/d"}, "text": "Patient/e"}],
        "extension": [{"url": "http://x", "valueReference": {"reference": "Patient/f"}}],
        "code": {"text": "Patient/z"}
    }));
    assert_eq!(ids(&f), ["a", "b", "c", "d", "f"]);
    assert!(f.gaps.is_empty());
}

#[test]
fn resource_type_after_other_keys() {
    let f = response(json!({"id": "late", "name": [{"family": "X"}], "resourceType": "Patient"}));
    assert_eq!(ids(&f), ["late"]);
}

#[test]
fn contained_references_resolve_locally() {
    let f = response(json!({
        "resourceType": "Observation", "id": "o1",
        "contained": [
            {"resourceType": "Patient", "id": "p1", "name": [{"family": "Local"}]},
            {"resourceType": "Practitioner", "id": "pr1"},
            {"resourceType": "Provenance", "id": "prov",
             "target": [{"reference": "#p1"}], "agent": [{"who": {"reference": "Patient/real"}}]}
        ],
        "subject": {"reference": "#p1"},
        "performer": [{"reference": "#pr1"}]
    }));
    // Never Patient/p1; the contained patient is a gap. Real references inside contained
    // resources count.
    assert_eq!(ids(&f), ["real"]);
    assert_eq!(gaps(&f), ["contained_patient"]);
}

#[test]
fn contained_non_patient_target_is_no_gap() {
    let f = response(json!({
        "resourceType": "Observation",
        "contained": [{"resourceType": "Practitioner", "id": "p1"}],
        "subject": {"reference": "Patient/x"},
        "performer": [{"reference": "#p1"}]
    }));
    assert_eq!(ids(&f), ["x"]);
    assert!(f.gaps.is_empty());
}

#[test]
fn searchset_with_includes_and_outcome() {
    let f = response(json!({
        "resourceType": "Bundle", "type": "searchset", "total": 2,
        "link": [{"relation": "next", "url": "http://h/fhir/Observation?patient=zz&_offset=20"}],
        "entry": [
            {"fullUrl": "http://h/fhir/Observation/1", "resource": {"resourceType": "Observation", "id": "1", "subject": {"reference": "Patient/a"}}, "search": {"mode": "match"}},
            {"fullUrl": "http://h/fhir/Observation/2", "resource": {"resourceType": "Observation", "id": "2", "subject": {"reference": "Patient/b"}}},
            {"fullUrl": "http://h/fhir/Patient/a", "resource": {"resourceType": "Patient", "id": "a"}, "search": {"mode": "include"}},
            {"resource": {"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "processing"}]}, "search": {"mode": "outcome"}}
        ]
    }));
    assert_eq!(ids(&f), ["a", "b"]);
    assert!(f.gaps.is_empty());
}

#[test]
fn history_deletions_and_transaction_responses() {
    let f = response(json!({
        "resourceType": "Bundle", "type": "history",
        "entry": [
            {"fullUrl": "http://h/fhir/Patient/gone", "request": {"method": "DELETE", "url": "Patient/gone/_history/2"}, "response": {"status": "200"}},
            {"request": {"method": "DELETE", "url": "Observation/o9"}}
        ]
    }));
    assert_eq!(ids(&f), ["gone"]);
    let f = response(json!({
        "resourceType": "Bundle", "type": "transaction-response",
        "entry": [
            {"response": {"status": "201 Created", "location": "Patient/new1/_history/1"}},
            {"response": {"status": "201 Created", "location": "Observation/o1/_history/1",
                          "outcome": {"resourceType": "OperationOutcome"}}}
        ]
    }));
    assert_eq!(ids(&f), ["new1"]);
}

#[test]
fn bundle_urn_references() {
    let f = response(json!({
        "resourceType": "Bundle", "type": "document",
        "entry": [
            {"fullUrl": "urn:uuid:c1", "resource": {"resourceType": "Composition", "subject": {"reference": "urn:uuid:p1"}}},
            {"fullUrl": "urn:uuid:p1", "resource": {"resourceType": "Patient", "id": "doc-pat"}},
            {"fullUrl": "urn:uuid:p2", "resource": {"resourceType": "Patient"}}
        ]
    }));
    assert_eq!(ids(&f), ["doc-pat"]);
    assert_eq!(gaps(&f), ["patient_without_id"]);
}

#[test]
fn gaps_are_named() {
    let f = response(json!({
        "resourceType": "Observation",
        "subject": {"type": "Patient", "identifier": {"system": "urn:mrn", "value": "123"}},
        "focus": [{"reference": "Patient?identifier=urn:mrn|9"}, {"reference": "Patient/not an id"}]
    }));
    assert!(f.patients.is_empty());
    assert_eq!(
        gaps(&f),
        [
            "logical_reference",
            "conditional_reference",
            "invalid_reference"
        ]
    );
    // An identifier on a non-patient logical reference is no gap.
    let f = response(
        json!({"resourceType": "Observation", "performer": [{"type": "Practitioner", "identifier": {"value": "1"}}]}),
    );
    assert!(f.gaps.is_empty());
}

#[test]
fn parameters_and_nested_resources() {
    let f = response(json!({
        "resourceType": "Parameters",
        "parameter": [
            {"name": "return", "resource": {"resourceType": "Patient", "id": "pp"}},
            {"name": "ref", "valueReference": {"reference": "Patient/qq"}}
        ]
    }));
    assert_eq!(ids(&f), ["pp", "qq"]);
}

#[test]
fn lists_groups_and_non_bundle_entries() {
    let f = response(json!({
        "resourceType": "List", "subject": {"reference": "Patient/s"},
        "entry": [{"item": {"reference": "Patient/i1"}}, {"item": {"reference": "Observation/o"}}]
    }));
    assert_eq!(ids(&f), ["i1", "s"]);
    let f = response(
        json!({"resourceType": "Group", "member": [{"entity": {"reference": "Patient/m"}}]}),
    );
    assert_eq!(ids(&f), ["m"]);
    let f = response(json!({
        "resourceType": "Composition",
        "section": [{"entry": [{"reference": "Patient/sec"}]}]
    }));
    assert_eq!(ids(&f), ["sec"]);
}

struct Routes;
impl EntryClassifier for Routes {
    fn classify_entry(&self, method: &str, url: &str) -> (Vec<String>, bool) {
        let (patients, _) = ReferenceOnly.classify_entry(method, url);
        let complete = !patients.is_empty();
        (patients, complete)
    }
}

#[test]
fn transaction_requests() {
    let body = serde_json::to_vec(&json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:np", "resource": {"resourceType": "Patient", "id": "ignored-on-create", "name": [{"family": "New"}]},
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:o1", "resource": {"resourceType": "Observation", "subject": {"reference": "urn:uuid:np"}},
             "request": {"method": "POST", "url": "Observation"}},
            {"resource": {"resourceType": "Observation", "id": "o2", "subject": {"reference": "Patient/known"}},
             "request": {"method": "PUT", "url": "Observation/o2"}},
            {"request": {"method": "DELETE", "url": "Patient/del"}},
            {"request": {"method": "DELETE", "url": "Patient?identifier=x|1"}}
        ]
    }))
    .unwrap();
    let f = request_patients(&body, false, &Routes);
    assert_eq!(ids(&f), ["del", "known"]);
    assert_eq!(gaps(&f), ["conditional_reference", "created_patient"]);
    assert_eq!(f.created_patients, 1);
}

#[test]
fn an_entry_that_wrongly_carries_a_resource_type_keeps_its_request_and_location() {
    // A lenient server ignores the stray element and runs the DELETE.
    let body = br#"{"resourceType":"Bundle","type":"transaction","entry":[
        {"resourceType":"Basic","subject":{"reference":"Patient/stray"},
         "request":{"method":"DELETE","url":"Patient/victim"}}]}"#;
    let f = request_patients(body, false, &Routes);
    assert_eq!(ids(&f), ["stray", "victim"]);
    let body = br#"{"resourceType":"Bundle","type":"transaction-response","entry":[
        {"resourceType":"Basic","response":{"status":"201 Created","location":"Patient/made/_history/1"}}]}"#;
    let f = response_patients(body);
    assert_eq!(ids(&f), ["made"]);
    assert_eq!(f.located, 1);
    // Its fullUrl still resolves urn:uuid references.
    let body = br#"{"resourceType":"Bundle","type":"collection","entry":[
        {"resourceType":"Patient","id":"pu","fullUrl":"urn:uuid:pu"},
        {"resource":{"resourceType":"Observation","subject":{"reference":"urn:uuid:pu"}}}]}"#;
    assert_eq!(ids(&response_patients(body)), ["pu"]);
    // Its contained resources and its own `entry` elements still count.
    let body = br#"{"resourceType":"Bundle","type":"searchset","entry":[
        {"resourceType":"Basic","contained":[{"resourceType":"Observation","id":"o1",
           "subject":{"reference":"Patient/inner"}}],
         "response":{"status":"200 OK"}},
        {"resourceType":"List","entry":[{"item":{"reference":"Patient/listed"}}],
         "fullUrl":"https://ehr.example/fhir/List/l1"}]}"#;
    assert_eq!(ids(&response_patients(body)), ["inner", "listed"]);
}

#[test]
fn create_bodies() {
    let body = br#"{"resourceType":"Patient","id":"client-chosen","name":[{"family":"X"}]}"#;
    let f = request_patients(body, true, &ReferenceOnly);
    assert!(f.patients.is_empty());
    assert_eq!(f.created_patients, 1);
    let f = request_patients(body, false, &ReferenceOnly);
    assert_eq!(ids(&f), ["client-chosen"]);
    let f = request_patients(
        br#"{"resourceType":"Observation","subject":{"reference":"Patient/s1"}}"#,
        true,
        &ReferenceOnly,
    );
    assert_eq!(ids(&f), ["s1"]);
    assert_eq!(f.created_patients, 0);
}

#[test]
fn invalid_and_odd_documents() {
    assert_eq!(
        gaps(&response_patients(b"{\"resourceType\":")),
        ["invalid_json"]
    );
    assert_eq!(gaps(&response_patients(b"<Patient/>")), ["invalid_json"]);
    assert!(response_patients(b"[1, 2, {\"reference\": \"Patient/x\"}]")
        .gaps
        .is_empty());
    assert!(response_patients(b"\"x\"").patients.is_empty());
    // A JSON Patch body is an array: the references its operations write count.
    let patch = br#"[{"op": "add", "path": "/link/0", "value": {"other": {"reference": "Patient/linked"}}}]"#;
    let f = request_patients(patch, false, &ReferenceOnly);
    assert_eq!(ids(&f), ["linked"]);
    assert!(f.document_type.is_none());
    assert!(f.bundle_type.is_none());
    // A Bundle's `type` is kept (a batch is recorded as one); a resource's `type` is not.
    let batch = br#"{"resourceType": "Bundle", "type": "batch", "identifier": {"value": "b"}, "entry": []}"#;
    assert_eq!(
        response_patients(batch).bundle_type.as_deref(),
        Some("batch")
    );
    let device = br#"{"resourceType": "Device", "type": {"text": "pump"}}"#;
    assert!(response_patients(device).bundle_type.is_none());
    let nested = br#"{"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {"resourceType": "Bundle", "type": "batch"}}]}"#;
    assert_eq!(
        response_patients(nested).bundle_type.as_deref(),
        Some("searchset")
    );
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    assert_eq!(gaps(&response_patients(deep.as_bytes())), ["invalid_json"]);
    let deep = "{\"a\":".repeat(5_000) + "1" + &"}".repeat(5_000);
    assert_eq!(gaps(&response_patients(deep.as_bytes())), ["invalid_json"]);
    // Escapes in strings still resolve.
    let f = response_patients(
        br#"{"resourceType":"Observation","subject":{"reference":"Patient\/e1"}}"#,
    );
    assert_eq!(ids(&f), ["e1"]);
}

/// A UTF-8 document is read as text, any other as bytes: bytes that are not UTF-8 in a string
/// attribution skips (the narrative) still leave every patient found, as they always did,
/// and in a string it reads they are still unreadable.
#[test]
fn documents_that_are_not_utf8_are_read_as_before() {
    let mut body = br#"{"resourceType":"Observation","text":{"div":"<div>"#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(br#"</div>"},"subject":{"reference":"Patient/u1"}}"#);
    assert!(std::str::from_utf8(&body).is_err());
    let f = response_patients(&body);
    assert_eq!(ids(&f), ["u1"]);
    assert!(f.gaps.is_empty());
    let valid = r#"{"resourceType":"Observation","text":{"div":"<div>\u00e9é</div>"},"subject":{"reference":"Patient/u1"}}"#;
    assert_eq!(response_patients(valid.as_bytes()), f);

    let mut bad_id = br#"{"resourceType":"Observation","subject":{"reference":"Patient/u"#.to_vec();
    bad_id.extend_from_slice(&[0xff]);
    bad_id.extend_from_slice(br#""}}"#);
    assert_eq!(gaps(&response_patients(&bad_id)), ["invalid_json"]);
}

#[test]
fn references_to_other_servers_are_external_never_local_patients() {
    let f = response(json!({
        "resourceType": "ServiceRequest",
        "id": "myringotomy",
        "subject": {"reference": "http://other.example.org/fhir/Patient/77662"},
        "requester": {"reference": "http://ehr.example/fhir/Patient/local1"},
        "performer": [{"reference": "https://ehr.example/fhir/Patient/local2/_history/1"}],
        "note": [{"authorReference": {"reference": "http://other.example.org/fhir/Patient/77662"}}],
        "supportingInfo": [{"reference": "http://third.example/Patient/9"}]
    }));
    assert_eq!(ids(&f), ["local1", "local2"]);
    assert_eq!(
        f.external_refs,
        [
            "http://other.example.org/fhir/Patient/77662",
            "http://third.example/Patient/9"
        ]
    );
    assert!(f.gaps.is_empty(), "{:?}", f.gaps);
    // A request body (a create naming a patient of another server) names nobody here.
    let f = request_patients(
        br#"{"resourceType":"Observation","subject":{"reference":"http://elsewhere.example/fhir/Patient/pat3"}}"#,
        true,
        &ReferenceOnly,
    );
    assert!(f.patients.is_empty());
    assert_eq!(
        f.external_refs,
        ["http://elsewhere.example/fhir/Patient/pat3"]
    );
    // Bounded: at most MAX_EXTERNAL_REFS kept, the rest counted.
    let many: Vec<_> = (0..100)
        .map(|i| json!({"reference": format!("http://o.example/Patient/p{i}")}))
        .collect();
    let f = response(json!({"resourceType": "List", "entry": [{"item": many}]}));
    assert_eq!(f.external_refs.len(), MAX_EXTERNAL_REFS);
    assert_eq!(f.external_refs_omitted, 100 - MAX_EXTERNAL_REFS as u64);
}
mod props {
    use super::super::*;
    use super::{request_patients, response_patients};
    use proptest::prelude::*;

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            prop_oneof![
                Just("Patient/p1".to_string()),
                Just("#c".to_string()),
                Just("urn:uuid:u".to_string()),
                Just("Patient".to_string()),
                Just("Bundle".to_string()),
                "[a-zA-Z0-9/#:?.|_-]{0,20}",
            ]
            .prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(8, 256, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("resourceType".to_string()),
                        Just("id".to_string()),
                        Just("reference".to_string()),
                        Just("type".to_string()),
                        Just("identifier".to_string()),
                        Just("contained".to_string()),
                        Just("entry".to_string()),
                        Just("resource".to_string()),
                        Just("request".to_string()),
                        Just("response".to_string()),
                        Just("fullUrl".to_string()),
                        Just("url".to_string()),
                        Just("method".to_string()),
                        Just("location".to_string()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..8
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any JSON document: no panic, and every patient found is a valid id.
        #[test]
        fn arbitrary_json_never_panics(v in arb_json(), creating in any::<bool>()) {
            let bytes = serde_json::to_vec(&v).unwrap();
            for f in [response_patients(&bytes), request_patients(&bytes, creating, &ReferenceOnly)] {
                for p in &f.patients {
                    prop_assert!(is_fhir_id(p));
                }
            }
        }

        /// A UTF-8 document is read as text; read as bytes it gives the same findings.
        #[test]
        fn text_and_bytes_readers_agree(v in arb_json()) {
            let bytes = serde_json::to_vec(&v).unwrap();
            let bases = super::test_bases();
            let scope = super::Scope::response(&bases);
            let doc = super::parse_with(serde_json::Deserializer::from_slice(&bytes)).ok();
            let as_bytes = super::interpret(doc, super::Gap::InvalidJson, &scope);
            prop_assert_eq!(response_patients(&bytes), as_bytes);
        }

        /// An object whose `reference` is `Patient/p1` (and that is no resource itself, nor
        /// inside an XHTML `div`) names p1 wherever it sits: nothing in the reduced tree drops
        /// one, whatever keys surround it.
        #[test]
        fn no_patient_reference_is_lost(
            v in arb_json(),
            entries in prop::collection::vec((arb_json(), any::<bool>(), any::<bool>()), 0..4),
        ) {
            // Also as a Bundle of those values as entries, some marked as resources (as a
            // malformed entry is) and some holding the next as `contained`.
            let entries: Vec<serde_json::Value> = entries
                .into_iter()
                .map(|(mut value, resource, contain)| {
                    if let serde_json::Value::Object(m) = &mut value {
                        if resource {
                            m.insert("resourceType".into(), "Basic".into());
                        }
                        if contain {
                            let inner = serde_json::json!({"resourceType": "Observation",
                                "subject": {"reference": "Patient/p1"}});
                            m.insert("contained".into(), serde_json::json!([inner]));
                        }
                    }
                    value
                })
                .collect();
            let bundle = serde_json::json!({"resourceType": "Bundle", "type": "searchset",
                "entry": entries});
            fn names_p1(v: &serde_json::Value) -> bool {
                match v {
                    serde_json::Value::Object(m) => {
                        (m.get("reference").and_then(|r| r.as_str()) == Some("Patient/p1")
                            && !m.contains_key("resourceType"))
                            || m.iter().any(|(k, v)| k != "div" && names_p1(v))
                    }
                    serde_json::Value::Array(items) => items.iter().any(names_p1),
                    _ => false,
                }
            }
            for v in [v, bundle] {
                let bytes = serde_json::to_vec(&v).unwrap();
                if names_p1(&v) {
                    let f = response_patients(&bytes);
                    prop_assert!(f.patients.iter().any(|p| p == "p1"), "{}", String::from_utf8_lossy(&bytes));
                }
            }
        }

        /// Arbitrary bytes: no panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = response_patients(&bytes);
            let _ = request_patients(&bytes, false, &ReferenceOnly);
        }
    }
}

#[test]
fn fhir_xml_is_read_like_json() {
    let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<!-- a searchset -->
<Bundle xmlns="http://hl7.org/fhir">
  <id value="s1"/>
  <type value="searchset"/>
  <entry>
    <fullUrl value="http://h/fhir/Observation/o1"/>
    <resource>
      <Observation>
        <id value="o1"/>
        <text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml"><p>see <a href="Patient/nope">Patient/nope</a></p><reference value="Patient/hidden"/></div></text>
        <contained><Patient><id value="c1"/></Patient></contained>
        <status value="final"><extension url="x"><valueReference><reference value="Patient/ext"/></valueReference></extension></status>
        <subject><reference value="Patient/a"/><display value="A &amp; B"/></subject>
        <performer><reference value="http://other.example/fhir/Patient/far"/></performer>
        <performer><type value="Patient"/><identifier><system value="urn:x"/><value value="1"/></identifier></performer>
      </Observation>
    </resource>
    <search><mode value="match"/></search>
  </entry>
  <entry>
    <fullUrl value="urn:uuid:9a"/>
    <resource><Patient><id value="b"/></Patient></resource>
  </entry>
  <entry>
    <resource><List><id value="l"/><entry><item><reference value="urn:uuid:9a"/></item></entry></List></resource>
  </entry>
  <entry>
    <response><status value="200"/><location value="Patient/loc/_history/1"/>
      <outcome><OperationOutcome><issue><details><text value="x"/></details></issue></OperationOutcome></outcome>
    </response>
  </entry>
</Bundle>
"#;
    let f = super::response_patients_xml(xml, &test_bases());
    assert_eq!(ids(&f), ["a", "b", "ext", "loc"]);
    assert_eq!(gaps(&f), ["contained_patient", "logical_reference"]);
    assert_eq!(f.external_refs, ["http://other.example/fhir/Patient/far"]);
    assert_eq!(f.bundle_type.as_deref(), Some("searchset"));
    assert_eq!(f.document_type.as_deref(), Some("Bundle"));
    // A created Patient in XML, a transaction with entries classified by the rules.
    let body = br#"<Patient xmlns="http://hl7.org/fhir"><id value="client-chosen"/></Patient>"#;
    let f = super::request_patients_xml(body, true, &ReferenceOnly, &test_bases());
    assert_eq!(gaps(&f), ["created_patient"]);
    assert!(f.patients.is_empty());
    let body = br#"<Bundle xmlns="http://hl7.org/fhir"><type value="transaction"/>
        <entry><request><method value="DELETE"/><url value="Patient/gone"/></request></entry>
        <entry><resource><Observation><subject><reference value="Patient/p9"/></subject></Observation></resource>
               <request><method value="PUT"/><url value="Observation/o9"/></request></entry>
      </Bundle>"#;
    let f = super::request_patients_xml(body, false, &ReferenceOnly, &test_bases());
    assert_eq!(ids(&f), ["gone", "p9"]);
    assert_eq!(f.bundle_type.as_deref(), Some("transaction"));
}

#[test]
fn xml_that_is_not_well_formed_or_declares_a_dtd_is_invalid_never_expanded() {
    let invalid = |body: &[u8]| gaps(&super::response_patients_xml(body, &test_bases()));
    for body in [
        &b"<Patient xmlns=\"http://hl7.org/fhir\"><id value=\"a\"/>"[..],
        b"<Patient><id value=\"a\"></Patient>",
        b"<Patient><id value=\"&ent;\"/></Patient>",
        b"<!DOCTYPE Patient [<!ENTITY x \"Patient/a\">]><Observation><subject><reference value=\"&x;\"/></subject></Observation>",
        b"<Patient/><Patient/>",
        b"",
        b"{\"resourceType\": \"Patient\"}",
        b"\xff\xfe<\x00P\x00",
    ] {
        assert_eq!(invalid(body), ["invalid_xml"], "{}", String::from_utf8_lossy(body));
    }
    // Nesting is bounded like JSON's: deeper input is invalid, not a stack overflow.
    let deep = format!(
        "<Basic>{}{}</Basic>",
        "<a>".repeat(200_000),
        "</a>".repeat(200_000)
    );
    assert_eq!(invalid(deep.as_bytes()), ["invalid_xml"]);
    let ok = format!("<Basic>{}{}</Basic>", "<a>".repeat(100), "</a>".repeat(100));
    assert!(invalid(ok.as_bytes()).is_empty());
    // Character references and the predefined entities are plain text.
    let f = super::response_patients_xml(
        b"<Observation><subject><reference value=\"Patient&#x2F;p&#49;\"/></subject></Observation>",
        &test_bases(),
    );
    assert_eq!(ids(&f), ["p1"]);
}

#[test]
fn bulk_data_ndjson_is_read_line_by_line() {
    let body = b"{\"resourceType\":\"Observation\",\"subject\":{\"reference\":\"Patient/n1\"}}\n\
{\"resourceType\":\"Patient\",\"id\":\"n2\"}\r\n\
\n\
{\"resourceType\":\"Condition\",\"subject\":{\"reference\":\"http://far.example/Patient/x\"}}\n";
    let f = super::ndjson_patients(body, &test_bases());
    assert_eq!(ids(&f), ["n1", "n2"]);
    assert_eq!(f.external_refs, ["http://far.example/Patient/x"]);
    assert!(f.gaps.is_empty());
    let f = super::ndjson_patients(
        b"{\"resourceType\":\"Patient\",\"id\":\"ok\"}\nnot json\n",
        &test_bases(),
    );
    assert_eq!(ids(&f), ["ok"]);
    assert_eq!(gaps(&f), ["invalid_json"]);
}

#[test]
fn a_bulk_data_manifest_says_which_files_bypass_the_gateway() {
    let manifest = br#"{"transactionTime": "2026-12-04T00:00:00Z", "request": "http://h/fhir/$export",
        "requiresAccessToken": true,
        "output": [
            {"type": "Patient", "url": "http://h/fhir/bulk-files/j1/Patient.ndjson"},
            {"type": "Observation", "url": "https://bucket.s3.example/j1/Observation.ndjson?X-Amz-Signature=abc"}
        ],
        "error": [{"type": "OperationOutcome", "url": "http://h/fhir/bulk-files/j1/errors.ndjson"}]}"#;
    let files = super::bulk_manifest_files(manifest, &test_bases()).unwrap();
    let through: Vec<bool> = files.iter().map(|f| f.through_gateway).collect();
    assert_eq!(through, [true, false, true]);
    assert!(files[1].url.starts_with("https://bucket.s3.example/"));
    // Anything else is no manifest.
    assert!(super::bulk_manifest_files(br#"{"resourceType": "Patient"}"#, &test_bases()).is_none());
    assert!(super::bulk_manifest_files(b"not json", &test_bases()).is_none());
}
