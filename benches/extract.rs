//! Patient extraction cost: `cargo bench --bench extract`.
//!
//! The document is a FHIR `searchset` Bundle of 100 Observations (about 200 KiB, shaped like
//! the HL7 R4 examples: narrative, codings, a quantity, reference ranges, an interpretation,
//! a note, subject and performer references, 11 different patients). auditgate's extractor
//! ([`auditgate::attribution::extract::response_patients`], what the buffered path runs on every response)
//! is timed against the parse any client does anyway, `serde_json::from_slice` into a
//! `serde_json::Value`, on the same bytes in the same run: median of 7 rounds in ABBA order.
//! The target: the extractor is faster than that parse.
//!
//! The same Bundle in FHIR XML (converted element for key, narrative as XHTML) is read by the
//! XML extractor ([`auditgate::attribution::extract::response_patients_xml`]) in the same
//! rounds, and must find the same patients: its speed is reported in MB/s of XML and as a
//! ratio to the JSON extractor's (documents per second, the same data in both formats).
//! Results also go to target/bench-results/extract.json.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark that cannot set up its fixture has nothing to measure: it stops with the reason"
)]

use std::hint::black_box;
use std::time::Instant;

use serde_json::json;

#[path = "../tests/support/fhir_xml.rs"]
mod fhir_xml;

const ROUNDS: usize = 7;
/// Passes over the document per round.
const PASSES: usize = 300;

fn observation(i: usize) -> serde_json::Value {
    let patient = format!("pat-{}", i % 11);
    json!({
        "resourceType": "Observation",
        "id": format!("obs-{i}"),
        "meta": {"versionId": "1", "lastUpdated": "2024-01-01T00:00:00.000+00:00",
                 "profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]},
        "text": {"status": "generated", "div": format!(
            "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p><b>Generated Narrative with Details</b></p>\
             <p><b>id</b>: obs-{i}</p><p><b>status</b>: final</p><p><b>category</b>: Vital Signs \
             <span>(Details : {{http://terminology.hl7.org/CodeSystem/observation-category code \
             &#39;vital-signs&#39; = &#39;Vital Signs&#39;}})</span></p><p><b>code</b>: Body Weight \
             <span>(Details : {{LOINC code &#39;29463-7&#39; = &#39;Body weight&#39;}})</span></p>\
             <p><b>subject</b>: <a>Patient/{patient}</a></p><p><b>effective</b>: 28/03/2016</p>\
             <p><b>value</b>: 67.{i} kg</p></div>")},
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs", "display": "Vital Signs"}]}],
        "code": {"coding": [
            {"system": "http://loinc.org", "code": "29463-7", "display": "Body Weight"},
            {"system": "http://loinc.org", "code": "3141-9", "display": "Body weight Measured"},
            {"system": "http://snomed.info/sct", "code": "27113001", "display": "Body weight"}]},
        "subject": {"reference": format!("Patient/{patient}"), "display": "Peter James Chalmers"},
        "encounter": {"reference": format!("Encounter/enc-{i}")},
        "effectiveDateTime": "2016-03-28",
        "issued": "2016-03-28T10:00:00.000+00:00",
        "performer": [{"reference": "Practitioner/f005", "display": "A. Langeveld"}],
        "valueQuantity": {"value": 67.5 + i as f64 / 10.0, "unit": "kg",
                          "system": "http://unitsofmeasure.org", "code": "kg"},
        "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                        "code": "N", "display": "Normal"}]}],
        "note": [{"text": "Measured on the ward scale after breakfast; patient in hospital gown, no shoes."}],
        "referenceRange": [{"low": {"value": 50, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
                            "high": {"value": 90, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
                            "text": "adult range"}]
    })
}

fn bundle_value() -> serde_json::Value {
    let entries: Vec<_> = (0..100)
        .map(|i| {
            json!({
                "fullUrl": format!("http://ehr.example/fhir/Observation/obs-{i}"),
                "resource": observation(i),
                "search": {"mode": "match"}
            })
        })
        .collect();
    json!({
        "resourceType": "Bundle", "id": "b1", "type": "searchset", "total": 100,
        "link": [{"relation": "self", "url": "http://ehr.example/fhir/Observation?code=29463-7&_count=100"}],
        "entry": entries
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// MB/s (10^6 bytes) of `f` over `PASSES` passes of `doc`.
fn rate(doc: &[u8], f: &dyn Fn(&[u8]) -> usize) -> f64 {
    let start = Instant::now();
    for _ in 0..PASSES {
        black_box(f(black_box(doc)));
    }
    (doc.len() * PASSES) as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn main() {
    let value = bundle_value();
    let doc = serde_json::to_vec(&value).unwrap();
    let xml = fhir_xml::to_fhir_xml(&value).unwrap().into_bytes();
    let ours = |b: &[u8]| {
        auditgate::attribution::extract::response_patients(b, &Default::default())
            .patients
            .len()
    };
    let ours_xml = |b: &[u8]| {
        auditgate::attribution::extract::response_patients_xml(b, &Default::default())
            .patients
            .len()
    };
    let peer = |b: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(b)
            .map(|v| v.as_object().map_or(0, |o| o.len()))
            .unwrap_or(0)
    };
    let found = ours(&doc);
    assert_eq!(found, 11, "the extractor finds the Bundle's 11 patients");
    assert_eq!(ours_xml(&xml), 11, "the XML extractor finds the same 11");
    // Warm all three.
    rate(&doc, &ours);
    rate(&doc, &peer);
    rate(&xml, &ours_xml);
    let (mut ours_mbs, mut peer_mbs, mut xml_mbs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // ABBA: neither always runs first.
        if round % 2 == 0 {
            ours_mbs.push(rate(&doc, &ours));
            peer_mbs.push(rate(&doc, &peer));
            xml_mbs.push(rate(&xml, &ours_xml));
        } else {
            xml_mbs.push(rate(&xml, &ours_xml));
            peer_mbs.push(rate(&doc, &peer));
            ours_mbs.push(rate(&doc, &ours));
        }
    }
    let (o, p, x) = (
        median(ours_mbs.clone()),
        median(peer_mbs.clone()),
        median(xml_mbs.clone()),
    );
    let kib = doc.len() as f64 / 1024.0;
    let xml_kib = xml.len() as f64 / 1024.0;
    println!(
        "Bundle of 100 Observations, {kib:.0} KiB as JSON, {xml_kib:.0} KiB as XML, {found} patients; median of {ROUNDS} rounds of {PASSES} passes"
    );
    println!(
        "  auditgate extract::response_patients      {o:>8.0} MB/s  {:>7.0} us/doc   rounds {ours_mbs:.0?}",
        doc.len() as f64 / o
    );
    println!(
        "  serde_json::from_slice::<Value> (peer)    {p:>8.0} MB/s  {:>7.0} us/doc   rounds {peer_mbs:.0?}",
        doc.len() as f64 / p
    );
    println!(
        "  auditgate extract::response_patients_xml  {x:>8.0} MB/s  {:>7.0} us/doc   rounds {xml_mbs:.0?}",
        xml.len() as f64 / x
    );
    println!(
        "  extractor speed / Value parse speed       {:>8.2}x   (target: above 1.0)",
        o / p
    );
    // Documents per second: the same data in both formats.
    let xml_vs_json = (x / xml.len() as f64) / (o / doc.len() as f64);
    println!("  XML extractor / JSON extractor (docs/s)   {xml_vs_json:>8.2}x");
    let results = format!(
        "{{\"benchmark\":\"extract\",\"bytes\":{},\"xml_bytes\":{},\"patients\":{found},\"rounds\":{ROUNDS},\"extract_mb_s\":{o:.1},\"value_parse_mb_s\":{p:.1},\"xml_extract_mb_s\":{x:.1},\"speed_ratio\":{:.3},\"xml_vs_json_docs_ratio\":{xml_vs_json:.3}}}\n",
        doc.len(),
        xml.len(),
        o / p
    );
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("extract.json"), results).unwrap();
}
