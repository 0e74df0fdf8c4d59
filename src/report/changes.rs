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
    "keys_added",
    "keys_removed",
    "error",
    "evidence",
];

/// The columns of what was in effect after each change.
pub const IN_EFFECT_COLUMNS: &[&str] = &["time", "node", "what", "value"];

/// Fill `report` (made over the answer to "records of rule `gateway.config`") with the changes,
/// then what each left in effect (all of it at a start, then what differs from the node's
/// record before): the configuration file's hash, each rule file's, each token
/// verification key, the checkpoint key and the version.
pub fn build(report: &mut Report, accesses: &[Access]) {
    let changes: Vec<(&Access, &crate::record::ConfigChange)> = accesses
        .iter()
        .filter_map(|a| Some((a, a.record.event.config_change.as_ref()?)))
        .collect();
    let count = |keep: &dyn Fn(&crate::record::ConfigChange) -> bool| {
        changes.iter().filter(|(_, c)| keep(c)).count()
    };
    report.fact("starts", count(&|c| c.cause == "start"));
    report.fact(
        "reloads applied",
        count(&|c| c.cause == "reload" && c.applied),
    );
    report.fact("reloads rejected", count(&|c| !c.applied));
    report.fact("key changes", count(&|c| c.cause == "keys"));
    let mut list = Section::new("Configuration changes", COLUMNS);
    let mut in_effect = Section::new(
        "In effect (all at a start, then what each change made new)",
        IN_EFFECT_COLUMNS,
    );
    let mut last: std::collections::BTreeMap<String, Vec<(&str, String)>> = Default::default();
    for (a, c) in &changes {
        list.rows.push(vec![
            a.ts().to_string(),
            a.node().to_string(),
            c.cause.clone(),
            if c.applied { "yes" } else { "no" }.to_string(),
            c.changed.join(" "),
            c.not_applied.join(" "),
            c.keys_added.join("; "),
            c.keys_removed.join("; "),
            c.error.clone().unwrap_or_default(),
            a.evidence(),
        ]);
        let mut facts: Vec<(&str, String)> = Vec::new();
        if let Some(hash) = &c.config_sha256 {
            facts.push(("config file", format!("sha256:{hash}")));
        }
        facts.extend(c.rules.iter().map(|r| ("rule file", r.clone())));
        facts.extend(c.keys.iter().map(|k| ("token key", k.clone())));
        if let Some(key) = &c.checkpoint_key {
            facts.push(("checkpoint key", key.clone()));
        }
        facts.push(("software", c.software.clone()));
        if !c.applied {
            // A rejected reload changed nothing (its hash is the refused file's).
            continue;
        }
        // Everything at a start; after that, only what differs from the node's last record.
        let before = last.entry(a.node().to_string()).or_default();
        for (what, value) in &facts {
            if c.cause == "start" || !before.contains(&(*what, value.clone())) {
                in_effect.rows.push(vec![
                    a.ts().to_string(),
                    a.node().to_string(),
                    what.to_string(),
                    value.clone(),
                ]);
            }
        }
        *before = facts;
    }
    report.sections.push(list);
    report.sections.push(in_effect);
}
