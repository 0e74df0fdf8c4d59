//! `report breach --user U | --ip CIDR | --device D | --client C --from --to`: the timeline
//! of every request in the window, the distinct patients exposed (first and last access, the
//! resource types seen), counts per day, and the affected patients as CSV for notification
//! letters.
//!
//! A patient counts as exposed when a request that named them may have given data out: its
//! outcome was a success (status below 400) or was never recorded. Patients named only by
//! refused or failed requests are listed apart (attempted), not as exposed.

use std::collections::{BTreeMap, BTreeSet};

use super::requests::Access;
use super::{Report, Section};

/// The timeline's columns.
pub const TIMELINE_COLUMNS: &[&str] = &[
    "time",
    "user",
    "client",
    "client_ip",
    "device",
    "country",
    "action",
    "interaction",
    "what",
    "patients",
    "status",
    "evidence",
];

/// The exposed patients' columns (also the patients CSV's).
pub const PATIENT_COLUMNS: &[&str] = &[
    "patient_id",
    "first_access",
    "last_access",
    "requests",
    "resource_types",
];

/// The per-day counts' columns.
pub const DAY_COLUMNS: &[&str] = &["day", "requests", "distinct_patients_exposed"];

/// A patient's exposure.
#[derive(Debug, Default)]
struct Exposure {
    first: String,
    last: String,
    requests: usize,
    resource_types: BTreeSet<String>,
}

/// Fill `report` (made over the answer for the window and the suspect) with the timeline,
/// the patients and the days.
pub fn build(report: &mut Report, accesses: &[Access]) {
    let mut exposed: BTreeMap<String, Exposure> = BTreeMap::new();
    let mut attempted: BTreeSet<String> = BTreeSet::new();
    let mut days: BTreeMap<&str, (usize, BTreeSet<String>)> = BTreeMap::new();
    let mut timeline = Section::new("Timeline", TIMELINE_COLUMNS);
    for a in accesses {
        let e = &a.record.event;
        let day = days.entry(a.day()).or_default();
        day.0 += 1;
        if a.may_have_disclosed() {
            for p in &a.patients {
                let x = exposed.entry(p.clone()).or_default();
                if x.first.is_empty() {
                    x.first = a.ts().to_string();
                }
                x.last = a.ts().to_string();
                x.requests += 1;
                if let Some(t) = &e.resource_type {
                    x.resource_types.insert(t.clone());
                }
                day.1.insert(p.clone());
            }
        } else {
            attempted.extend(a.patients.iter().cloned());
        }
        timeline.rows.push(vec![
            a.ts().to_string(),
            a.user(),
            a.client(),
            a.client_ip().to_string(),
            a.device(),
            a.country(),
            e.action.as_str().to_string(),
            e.interaction.as_str().to_string(),
            a.what(),
            a.patients.iter().cloned().collect::<Vec<_>>().join(" "),
            a.status(),
            a.evidence(),
        ]);
    }
    let attempted_only: Vec<String> = attempted
        .into_iter()
        .filter(|p| !exposed.contains_key(p))
        .collect();
    report.fact("requests", accesses.len());
    report.fact("patients exposed", exposed.len());
    report.fact(
        "patients named only by refused or failed requests",
        if attempted_only.is_empty() {
            "0".to_string()
        } else {
            format!("{} ({})", attempted_only.len(), attempted_only.join(" "))
        },
    );
    if let (Some(first), Some(last)) = (accesses.first(), accesses.last()) {
        report.fact("first request", first.ts());
        report.fact("last request", last.ts());
    }
    report.sections.push(timeline);
    let mut patients = Section::new("Patients exposed", PATIENT_COLUMNS);
    patients.rows = exposed
        .into_iter()
        .map(|(id, x)| {
            vec![
                id,
                x.first,
                x.last,
                x.requests.to_string(),
                x.resource_types.into_iter().collect::<Vec<_>>().join(" "),
            ]
        })
        .collect();
    report.sections.push(patients);
    let mut per_day = Section::new("Per day", DAY_COLUMNS);
    per_day.rows = days
        .into_iter()
        .map(|(day, (requests, patients))| {
            vec![
                day.to_string(),
                requests.to_string(),
                patients.len().to_string(),
            ]
        })
        .collect();
    report.sections.push(per_day);
}

/// The exposed patients of a breach report, for notification letters.
pub fn patients_section(report: &Report) -> Option<&Section> {
    report
        .sections
        .iter()
        .find(|s| s.columns == PATIENT_COLUMNS)
}
