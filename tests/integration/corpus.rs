//! The attribution corpus (`tests/corpus/attribution.toml`): 100-odd requests, every FHIR
//! interaction and the hard cases (chained and `_has` searches, `_include`/`_revinclude`,
//! pages, contained Patients, references to other servers, XML, JSON Patch with and without a
//! representation, transactions with `urn:uuid`, batches), sent by a real FHIR client
//! (`fhirclient`, in `tests/corpus/drive.py`) through the real gateway to sekmet loaded with
//! the HL7 R4 examples and three Synthea patients.
//!
//! The expected patients of each case are computed by the driver from the data this test
//! loaded (the example files and the Synthea bundles, selected with FHIRPath), not from the
//! gateway or the response. For every case the journal's outcome record must hold exactly
//! those patients, the expected action, interaction, attribution and gaps, and the client must
//! have received exactly the bytes sekmet sent (sekmet's traffic table, by request id).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use auditgate::record::{Phase, Record};
use serde::Deserialize;

use crate::support::gateway::{check_log_has_no_phi, Gateway, GatewayOptions};
use crate::support::{
    assert_success, repo_root, run_python_with_timeout, synthea_venv_dir, FhirServer, TrafficEntry,
};

/// `synthea -s SEED -p 3 -a 2-12 -r 20250101`: three children, 350 to 450 resources each.
const SYNTHEA_SEED: &str = "7";

#[derive(Deserialize)]
struct Results {
    variables: BTreeMap<String, String>,
    cases: Vec<CaseResult>,
}

#[derive(Deserialize)]
struct CaseResult {
    name: String,
    method: String,
    url: String,
    status: u16,
    request_id: Option<String>,
    body: String,
    expect: Expect,
}

#[derive(Deserialize)]
struct Expect {
    status: u16,
    action: String,
    interaction: String,
    patients: BTreeSet<String>,
    gaps: BTreeSet<String>,
    external_refs: BTreeSet<String>,
    attribution: String,
    returned: usize,
}

fn json_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn every_corpus_request_is_attributed_to_exactly_the_patients_its_data_names() {
    // A server of its own: the corpus writes, and its responses must be logged whole.
    let fhir = FhirServer::start_with_settings("max_body_log: 200000000\n");
    let seed = fhir.seed_examples();

    let synthea_dir = tempfile::tempdir().unwrap();
    let synthea = synthea_venv_dir().join("bin").join("synthea");
    let out = std::process::Command::new(&synthea)
        .args([
            "-s",
            SYNTHEA_SEED,
            "-p",
            "3",
            "-a",
            "2-12",
            "-r",
            "20250101",
        ])
        .args(["--log-level", "warning", "-o"])
        .arg(synthea_dir.path())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", synthea.display()));
    assert!(
        out.status.success(),
        "synthea failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let gw = Gateway::start(GatewayOptions::new(format!("127.0.0.1:{}", fhir.port())));
    let token = gw.token("dr.corpus");
    let work = tempfile::tempdir().unwrap();
    let loaded = work.path().join("loaded.json");
    std::fs::write(&loaded, serde_json::to_vec(&seed.files).unwrap()).unwrap();
    let results_path = work.path().join("results.json");
    let corpus = repo_root().join("tests/corpus/attribution.toml");
    let driver = repo_root().join("tests/corpus/drive.py");
    let run = "import runpy, sys; sys.argv = sys.argv[1:]; \
               runpy.run_path(sys.argv[0], run_name='__main__')";
    let gateway_base = gw.url("/fhir/");
    let out = run_python_with_timeout(
        run,
        &[
            &driver.to_string_lossy(),
            "--corpus",
            &corpus.to_string_lossy(),
            "--loaded",
            &loaded.to_string_lossy(),
            "--synthea",
            &synthea_dir.path().join("fhir").to_string_lossy(),
            "--fhir",
            fhir.base_url(),
            "--gateway",
            &gateway_base,
            "--token",
            &token,
            "--out",
            &results_path.to_string_lossy(),
        ],
        &[],
        Duration::from_secs(600),
    );
    assert_success(&out, "tests/corpus/drive.py");
    let results: Results = serde_json::from_slice(&std::fs::read(&results_path).unwrap()).unwrap();
    assert!(
        results.cases.len() >= 80,
        "the corpus has {} cases",
        results.cases.len()
    );

    let records = gw.records();
    let outcomes: BTreeMap<&str, &Record> = records
        .iter()
        .filter(|r| r.event.phase == Phase::Outcome)
        .map(|r| (r.event.request_id.as_str(), r))
        .collect();
    let sent: BTreeMap<String, TrafficEntry> = fhir
        .traffic()
        .into_iter()
        .filter_map(|t| Some((t.correlation_id.clone()?, t)))
        .collect();
    let mut failures = Vec::new();
    let mut patients_seen = BTreeSet::new();
    let mut interactions = BTreeSet::new();
    for c in &results.cases {
        let what = format!("{} ({} /fhir/{})", c.name, c.method, c.url);
        let e = &c.expect;
        let mut fail = |msg: String| failures.push(format!("{what}: {msg}"));
        if c.status != e.status {
            fail(format!(
                "status {} (expected {}): {}",
                c.status,
                e.status,
                c.body.chars().take(300).collect::<String>()
            ));
            continue;
        }
        let Some(request_id) = c.request_id.as_deref() else {
            fail("no X-Request-Id in the response".into());
            continue;
        };
        let Some(record) = outcomes.get(request_id) else {
            fail(format!("no outcome record for request {request_id}"));
            continue;
        };
        let ev = &record.event;
        let got: BTreeSet<String> = ev.patients.iter().map(|p| p.id.clone()).collect();
        if got != e.patients {
            fail(format!(
                "patients {:?}, expected {:?} (from {} returned resources); journal has {:?} \
                 extra and misses {:?}",
                got,
                e.patients,
                e.returned,
                got.difference(&e.patients).collect::<Vec<_>>(),
                e.patients.difference(&got).collect::<Vec<_>>()
            ));
        }
        if got.len() != ev.patients.len() {
            fail("a patient listed twice".into());
        }
        if json_name(&ev.action) != e.action {
            fail(format!("action {:?}, expected {}", ev.action, e.action));
        }
        if ev.interaction.as_str() != e.interaction {
            fail(format!(
                "interaction {}, expected {}",
                ev.interaction.as_str(),
                e.interaction
            ));
        }
        if ev.attribution.as_str() != e.attribution {
            fail(format!(
                "attribution {}, expected {} (gaps {:?})",
                ev.attribution.as_str(),
                e.attribution,
                ev.attribution_gaps
            ));
        }
        let gaps: BTreeSet<String> = ev.attribution_gaps.iter().cloned().collect();
        if gaps != e.gaps {
            fail(format!("gaps {gaps:?}, expected {:?}", e.gaps));
        }
        let external: BTreeSet<String> = ev.external_refs.iter().cloned().collect();
        if external != e.external_refs {
            fail(format!(
                "external_refs {external:?}, expected {:?}",
                e.external_refs
            ));
        }
        match ev.outcome.as_ref() {
            Some(o) if o.status == c.status => {}
            other => fail(format!("outcome status {:?}", other.map(|o| o.status))),
        }
        // Byte for byte: the body the client got is the one sekmet sent for this request id.
        match sent.get(request_id) {
            Some(t) => {
                if t.status != Some(c.status) {
                    fail(format!("sekmet logged status {:?}", t.status));
                }
                let body = t.resp_body.as_deref().unwrap_or("");
                if body != c.body {
                    fail(format!(
                        "the client's body ({} chars) differs from sekmet's ({} chars)",
                        c.body.len(),
                        body.len()
                    ));
                }
            }
            None => fail(format!("sekmet has no request {request_id}")),
        }
        eprintln!(
            "  {:<11} {:>3} patients {:<8} {}",
            e.interaction,
            got.len(),
            ev.attribution.as_str(),
            c.name
        );
        patients_seen.extend(got);
        interactions.insert(e.interaction.clone());
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus cases failed:\n{}\nvariables: {:?}",
        failures.len(),
        results.cases.len(),
        failures.join("\n"),
        results.variables
    );

    // The corpus covers every interaction kind but `unclassified`, and many patients.
    for kind in [
        "read",
        "vread",
        "search",
        "history",
        "operation",
        "create",
        "update",
        "patch",
        "delete",
        "transaction",
        "batch",
        "capabilities",
    ] {
        assert!(interactions.contains(kind), "no {kind} case in the corpus");
    }
    eprintln!(
        "corpus: {} cases, {} interaction kinds, {} distinct patients attributed",
        results.cases.len(),
        interactions.len(),
        patients_seen.len()
    );
    assert!(patients_seen.len() > 20, "{} patients", patients_seen.len());
    let (code, out) = crate::support::gateway::verify_cli(&gw.journal, false);
    assert_eq!(code, 0, "{out}");
    check_log_has_no_phi(&gw.log(), &gw.journal).unwrap();
}
