//! `report activity --user U`: what one user touched, day by day, with the distinct patients
//! of each day, then every request.

use std::collections::{BTreeMap, BTreeSet};

use super::requests::Access;
use super::{Report, Section};

/// The columns of the per-day table.
pub const DAY_COLUMNS: &[&str] = &[
    "day",
    "requests",
    "distinct_patients",
    "creates",
    "reads",
    "updates",
    "deletes",
    "executes",
    "refused_or_failed",
    "patients",
];

/// The columns of the request list.
pub const REQUEST_COLUMNS: &[&str] = &[
    "time",
    "client",
    "action",
    "interaction",
    "what",
    "patients",
    "purpose",
    "break_glass",
    "status",
    "client_ip",
    "device",
    "evidence",
];

/// Fill `report` (made over the answer to "records of the user") with the days and requests.
pub fn build(report: &mut Report, accesses: &[Access]) {
    #[derive(Default)]
    struct Day {
        requests: usize,
        patients: BTreeSet<String>,
        actions: [usize; 5],
        refused: usize,
    }
    let mut days: BTreeMap<&str, Day> = BTreeMap::new();
    let mut all_patients = BTreeSet::new();
    for a in accesses {
        let day = days.entry(a.day()).or_default();
        day.requests += 1;
        day.patients.extend(a.patients.iter().cloned());
        all_patients.extend(a.patients.iter().cloned());
        let i = "CRUDE".find(a.record.event.action.as_str()).unwrap_or(4);
        day.actions[i] += 1;
        if !a.may_have_disclosed() {
            day.refused += 1;
        }
    }
    report.fact("requests", accesses.len());
    report.fact("days with activity", days.len());
    report.fact("distinct patients", all_patients.len());
    let mut per_day = Section::new("Per day", DAY_COLUMNS);
    for (day, d) in &days {
        let mut row = vec![
            day.to_string(),
            d.requests.to_string(),
            d.patients.len().to_string(),
        ];
        row.extend(d.actions.iter().map(|n| n.to_string()));
        row.push(d.refused.to_string());
        row.push(d.patients.iter().cloned().collect::<Vec<_>>().join(" "));
        per_day.rows.push(row);
    }
    report.sections.push(per_day);
    let mut requests = Section::new("Requests", REQUEST_COLUMNS);
    requests.rows = accesses
        .iter()
        .map(|a| {
            let e = &a.record.event;
            vec![
                a.ts().to_string(),
                a.client(),
                e.action.as_str().to_string(),
                e.interaction.as_str().to_string(),
                a.what(),
                a.patients.iter().cloned().collect::<Vec<_>>().join(" "),
                a.purpose(),
                if a.break_glass() { "yes" } else { "" }.to_string(),
                a.status(),
                a.client_ip().to_string(),
                a.device(),
                a.evidence(),
            ]
        })
        .collect();
    report.sections.push(requests);
}
