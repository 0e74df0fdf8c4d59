//! What every verification reports about a chain of records, whatever held it (a journal
//! directory or an archive): how much was checked, where the chain ends, what the signed
//! checkpoints covered, and every problem found. [`super::Report`] (a journal) and
//! [`super::archive::NodeReport`] (one node of an archive) each carry one, flattened into
//! their JSON.

use serde::Serialize;

use super::finding::Finding;

/// The part of a verification report about the chain itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// Segments checked.
    pub segments: usize,
    /// Records checked.
    pub records: u64,
    /// The seq of the last record checked (0 if none).
    pub head_seq: u64,
    /// Hex leaf hash of that record (the chain head), if any.
    pub head_leaf: Option<String>,
    /// Signed checkpoints checked (0 when no key was given).
    pub checkpoints: usize,
    /// The public key checkpoints were checked with; `None`: not checked.
    pub key: Option<String>,
    /// Records after the newest checkpoint that matched its records: not yet covered by a
    /// signature (normal for the last few seconds of a running gateway).
    pub uncovered_records: u64,
    /// Columnar copies (Parquet file and seal) checked against their segments.
    pub columnar_copies: usize,
    /// Sealed segments checked that have no columnar copy (queries read them as JSON).
    pub segments_without_columnar: usize,
    /// Every problem found.
    pub findings: Vec<Finding>,
}

impl ChainReport {
    /// True when nothing was found.
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}
