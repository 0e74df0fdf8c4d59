//! `report access --patient P`: every access to one patient's data, as the 2011 HHS
//! access-report proposal and ASTM E2147 (7.1) list it: when, who (ID and name), with which
//! client application, what action on what (resource, interaction), for which purpose, under
//! break-glass or not, with what outcome, and from where (IP, device, country).

use super::requests::Access;
use super::{Report, Section};

/// The columns of an access list.
pub const COLUMNS: &[&str] = &[
    "time",
    "user",
    "user_name",
    "issuer",
    "client",
    "action",
    "interaction",
    "what",
    "purpose",
    "break_glass",
    "status",
    "client_ip",
    "device",
    "country",
    "evidence",
];

/// One access as a row of [`COLUMNS`].
pub fn row(a: &Access) -> Vec<String> {
    let e = &a.record.event;
    vec![
        a.ts().to_string(),
        a.user(),
        a.user_name(),
        a.issuer(),
        a.client(),
        e.action.as_str().to_string(),
        e.interaction.as_str().to_string(),
        a.what(),
        a.purpose(),
        if a.break_glass() { "yes" } else { "" }.to_string(),
        a.status(),
        a.client_ip().to_string(),
        a.device(),
        a.country(),
        a.evidence(),
    ]
}

/// Fill `report` (made over the answer to "records naming the patient") with the accesses.
pub fn build(report: &mut Report, accesses: &[Access]) {
    let users: std::collections::BTreeSet<String> = accesses.iter().map(Access::user).collect();
    report.fact("accesses", accesses.len());
    report.fact("distinct users", users.len());
    report.fact(
        "break-glass accesses",
        accesses.iter().filter(|a| a.break_glass()).count(),
    );
    report.fact(
        "refused or failed (status 400 and above)",
        accesses.iter().filter(|a| !a.may_have_disclosed()).count(),
    );
    let mut section = Section::new("Accesses", COLUMNS);
    section.rows = accesses.iter().map(row).collect();
    report.sections.push(section);
}
