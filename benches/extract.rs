//! Patient extraction cost: `cargo bench --bench extract`.
//!
//! The document is a FHIR `searchset` Bundle of 100 Observations (about 200 KiB, shaped like
//! the HL7 R4 examples: narrative, codings, a quantity, reference ranges, an interpretation,
//! a note, subject and performer references, 11 different patients). auditgate's extractor
//! ([`auditgate::attribution::extract::response_patients`], what the buffered path runs on every response)
//! is timed against the parse any client does anyway, `serde_json::from_slice` into a
//! `serde_json::Value`, on the same bytes in the same run: median of 7 rounds in ABBA order.
//! The target: the extractor is faster than that parse. Results also go to
//! target/bench-results/extract.json.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark that cannot set up its fixture has nothing to measure: it stops with the reason"
)]

use std::hint::black_box;
use std::time::Instant;

use serde_json::json;

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

fn bundle() -> Vec<u8> {
    let entries: Vec<_> = (0..100)
        .map(|i| {
            json!({
                "fullUrl": format!("http://ehr.example/fhir/Observation/obs-{i}"),
                "resource": observation(i),
                "search": {"mode": "match"}
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "resourceType": "Bundle", "id": "b1", "type": "searchset", "total": 100,
        "link": [{"relation": "self", "url": "http://ehr.example/fhir/Observation?code=29463-7&_count=100"}],
        "entry": entries
    }))
    .unwrap()
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
    let doc = bundle();
    let ours = |b: &[u8]| {
        auditgate::attribution::extract::response_patients(b, &Default::default())
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
    // Warm both.
    rate(&doc, &ours);
    rate(&doc, &peer);
    let (mut ours_mbs, mut peer_mbs) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // ABBA: neither always runs first.
        if round % 2 == 0 {
            ours_mbs.push(rate(&doc, &ours));
            peer_mbs.push(rate(&doc, &peer));
        } else {
            peer_mbs.push(rate(&doc, &peer));
            ours_mbs.push(rate(&doc, &ours));
        }
    }
    let (o, p) = (median(ours_mbs.clone()), median(peer_mbs.clone()));
    let kib = doc.len() as f64 / 1024.0;
    println!(
        "Bundle of 100 Observations, {kib:.0} KiB, {found} patients; median of {ROUNDS} rounds of {PASSES} passes"
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
        "  extractor speed / Value parse speed       {:>8.2}x   (target: above 1.0)",
        o / p
    );
    let results = format!(
        "{{\"benchmark\":\"extract\",\"bytes\":{},\"patients\":{found},\"rounds\":{ROUNDS},\"extract_mb_s\":{o:.1},\"value_parse_mb_s\":{p:.1},\"speed_ratio\":{:.3}}}\n",
        doc.len(),
        o / p
    );
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("extract.json"), results).unwrap();
}
