//! `report disclosures --patient P`: the HIPAA 164.528 accounting of disclosures of one
//! patient's record: for each, the date, the recipient (the client application and its
//! organisation, from the `[reports]` registry), what was disclosed, and the purpose.
//!
//! What counts as a disclosure (documented in the README, decided here only):
//! an access to the patient's record that may have given data out (its outcome a success,
//! below 400, or never recorded), and either
//! * made through a client application the registry marks `external` (a recipient outside
//!   the covered entity), or
//! * declared for a purpose of use that is not treatment, payment or operations
//!   (`[reports] tpo_purposes`, by default TREAT, ETREAT, CAREMGT, HPAYMT, HOPERAT).
//!
//! Accesses through client applications the registry does not know are not disclosures by the
//! first test; the report counts them, so that a gap in the registry shows.

use std::collections::BTreeSet;

use super::config::ReportsConfig;
use super::requests::Access;
use super::{Report, Section};

/// The accounting's columns.
pub const COLUMNS: &[&str] = &[
    "time",
    "recipient",
    "organisation",
    "client",
    "user",
    "description",
    "purpose",
    "why_listed",
    "evidence",
];

/// Why an access is a disclosure, if it is one.
pub fn why_disclosed(access: &Access, registry: &ReportsConfig) -> Option<String> {
    if !access.may_have_disclosed() {
        return None;
    }
    let mut why = Vec::new();
    let client = access.client();
    if registry.client(&client).is_some_and(|app| app.external) {
        why.push("external client application".to_string());
    }
    let purposes: Vec<String> = match &access.record.event.who {
        crate::record::Who::Authenticated(actor) => actor.purpose_of_use.clone(),
        _ => Vec::new(),
    };
    let other: Vec<&String> = purposes.iter().filter(|p| !registry.is_tpo(p)).collect();
    if !other.is_empty() {
        why.push(format!(
            "purpose other than treatment, payment or operations ({})",
            other
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// Fill `report` (made over the answer to "records naming the patient") with the accounting.
pub fn build(report: &mut Report, accesses: &[Access], registry: &ReportsConfig) {
    let mut section = Section::new("Disclosures", COLUMNS);
    let mut unregistered: BTreeSet<String> = BTreeSet::new();
    for a in accesses {
        let client = a.client();
        if !client.is_empty() && registry.client(&client).is_none() {
            unregistered.insert(client.clone());
        }
        let Some(why) = why_disclosed(a, registry) else {
            continue;
        };
        let app = registry.client(&client);
        let e = &a.record.event;
        section.rows.push(vec![
            a.ts().to_string(),
            app.map_or_else(|| client.clone(), |app| app.name.clone()),
            app.map(|app| app.organisation.clone()).unwrap_or_default(),
            client,
            a.user(),
            format!("{} {}", e.interaction.as_str(), a.what())
                .trim()
                .to_string(),
            a.purpose(),
            why,
            a.evidence(),
        ]);
    }
    report.fact("accesses to the record", accesses.len());
    report.fact("disclosures", section.rows.len());
    report.fact(
        "client applications not in the registry",
        if unregistered.is_empty() {
            "none".to_string()
        } else {
            unregistered.into_iter().collect::<Vec<_>>().join(", ")
        },
    );
    report.sections.push(section);
}
