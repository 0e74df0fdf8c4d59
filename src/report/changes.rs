//! `report changes`: the gateway's own configuration over a window (ONC 170.315(d)(3)):
//! what each node started with, every reload (applied, with the sections it changed and those
//! needing a restart; or rejected, with why), and every change of the keys that verify tokens.
//! Each row is a record of the trail (`who` = `gateway`), proven like every other.

use super::requests::Access;
use super::{Report, Section};

/// The columns of the change list.
pub const COLUMNS: &[&str] = &[
    "time",
    "node",
    "cause",
    "applied",
    "changed",
    "not_applied",
    "error",
    "config_sha256",
    "rules",
    "keys_added",
    "keys_removed",
    "keys",
    "checkpoint_key",
    "software",
    "evidence",
];

/// Fill `report` (made over the answer to "records of rule `gateway.config`") with the changes.
pub fn build(report: &mut Report, accesses: &[Access]) {
    let changes: Vec<(&Access, &crate::record::ConfigChange)> = accesses
        .iter()
        .filter_map(|a| Some((a, a.record.event.config_change.as_ref()?)))
        .collect();
    let count = |cause: &str| changes.iter().filter(|(_, c)| c.cause == cause).count();
    report.fact("starts", count("start"));
    report.fact(
        "reloads applied",
        changes
            .iter()
            .filter(|(_, c)| c.cause == "reload" && c.applied)
            .count(),
    );
    report.fact(
        "reloads rejected",
        changes.iter().filter(|(_, c)| !c.applied).count(),
    );
    report.fact("key changes", count("keys"));
    let mut section = Section::new("Configuration changes", COLUMNS);
    section.rows = changes
        .iter()
        .map(|(a, c)| {
            vec![
                a.ts().to_string(),
                a.node().to_string(),
                c.cause.clone(),
                if c.applied { "yes" } else { "no" }.to_string(),
                c.changed.join(" "),
                c.not_applied.join(" "),
                c.error.clone().unwrap_or_default(),
                c.config_sha256.clone().unwrap_or_default(),
                c.rules.join("; "),
                c.keys_added.join("; "),
                c.keys_removed.join("; "),
                c.keys.join("; "),
                c.checkpoint_key.clone().unwrap_or_default(),
                c.software.clone(),
                a.evidence(),
            ]
        })
        .collect();
    report.sections.push(section);
}
