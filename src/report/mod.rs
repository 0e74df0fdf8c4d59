//! The auditor's desk: reports for the people who ask the trail questions (a privacy officer
//! answering a patient, an investigator reconstructing a breach, a compliance review), built
//! from a verified answer of the query plane ([`crate::query`]).
//!
//! A report is a title, the parameters it was asked with, a few facts, and sections of rows
//! (one table each), plus what the answer covered: per node the sequence range scanned and the
//! signed checkpoint that covers it ([`crate::query::run::Coverage`]), and, in JSON, the
//! whole completeness proof that `auditgate verify-report` re-checks offline. It owns no I/O:
//! [`render`] prints it as a text table, CSV, JSON or printable HTML.
//!
//! One row of an access list is one request ([`requests::Access`]): its intent record (a
//! change, journaled before the EHR saw it), its outcome record and its continuation records
//! (parts of a large answer) are one access, shown with its outcome.

pub mod access;
pub mod activity;
pub mod auditevent;
pub mod breach;
pub mod changes;
pub mod config;
pub mod disclosures;
pub mod flags;
pub mod render;
pub mod requests;
pub mod search;

use serde::Serialize;

use crate::query::proof::ProofFile;
use crate::query::run::Coverage;

/// Why a report could not be made from an answer.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A returned journal line is not a record of this version.
    #[error("record {node}:{seq} does not parse as a record: {source}")]
    Record {
        /// Its node.
        node: String,
        /// Its seq.
        seq: u64,
        /// Why.
        source: serde_json::Error,
    },
    /// A row of the answer lacks a column every row has.
    #[error("the answer has no {0} column")]
    Column(&'static str),
    /// A `--sort` column the report does not have.
    #[error("{column:?} is not a column of this report (its columns: {known})")]
    SortColumn {
        /// What was asked.
        column: String,
        /// The columns there are.
        known: String,
    },
}

/// A report, ready to render.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `access`, `activity`, `breach`, ...
    pub kind: &'static str,
    /// The heading.
    pub title: String,
    /// What it was asked with (name, value), in order.
    pub parameters: Vec<(String, String)>,
    /// What it found, in a few figures (name, value).
    pub facts: Vec<(String, String)>,
    /// The tables; the first is the one CSV output holds.
    pub sections: Vec<Section>,
    /// Per node: what was scanned and the checkpoint that covers it.
    pub coverage: Vec<Coverage>,
    /// Checked: chains, seals, checkpoints and a proof per returned record.
    pub verified: bool,
    /// When the report was made (UTC, RFC 3339).
    pub generated_at: String,
    /// The completeness proof (`auditgate verify-report` checks it); `None` when unverified.
    pub proof: Option<ProofFile>,
}

/// One table of a report.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    /// Its heading.
    pub title: String,
    /// Column names (machine-friendly: CSV headers and JSON keys).
    pub columns: Vec<&'static str>,
    /// The rows, each as many cells as columns.
    pub rows: Vec<Vec<String>>,
}

impl Section {
    /// A section with `columns` and no rows.
    pub fn new(title: impl Into<String>, columns: &[&'static str]) -> Section {
        Section {
            title: title.into(),
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Sort the rows by these columns (`-name`: largest first), each compared as a number
    /// when both cells are numbers, else as text; the earlier order breaks ties.
    pub fn sort(&mut self, keys: &[String]) -> Result<(), ReportError> {
        let mut indices = Vec::new();
        for key in keys {
            let (name, descending) = match key.strip_prefix('-') {
                Some(name) => (name, true),
                None => (key.as_str(), false),
            };
            let index = self
                .columns
                .iter()
                .position(|c| *c == name)
                .ok_or_else(|| ReportError::SortColumn {
                    column: name.to_string(),
                    known: self.columns.join(", "),
                })?;
            indices.push((index, descending));
        }
        self.rows.sort_by(|a, b| {
            for &(i, descending) in &indices {
                let order = match (a[i].parse::<f64>(), b[i].parse::<f64>()) {
                    (Ok(x), Ok(y)) => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
                    _ => a[i].cmp(&b[i]),
                };
                let order = if descending { order.reverse() } else { order };
                if order != std::cmp::Ordering::Equal {
                    return order;
                }
            }
            std::cmp::Ordering::Equal
        });
        Ok(())
    }
}

impl Report {
    /// A report of `kind` over `answer` (asked as `query`), without facts or sections yet.
    pub fn over(
        kind: &'static str,
        title: String,
        parameters: Vec<(String, String)>,
        answer: &crate::query::answer::Answer,
        query: serde_json::Value,
        verified: bool,
    ) -> Report {
        Report {
            kind,
            title,
            parameters,
            facts: Vec::new(),
            sections: Vec::new(),
            coverage: answer.coverage.clone(),
            verified,
            generated_at: now_rfc3339(),
            proof: verified.then(|| ProofFile::of(query, &answer.coverage, &answer.proofs)),
        }
    }

    /// Add a fact.
    pub fn fact(&mut self, name: &str, value: impl ToString) {
        self.facts.push((name.to_string(), value.to_string()));
    }
}

/// Now, as a report states it.
pub fn now_rfc3339() -> String {
    crate::record::format_ts(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests;
