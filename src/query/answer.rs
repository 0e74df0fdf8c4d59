//! A whole answer: every node's part, the rows of all nodes sorted and cut to the limit, and
//! the proofs of the rows returned.

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::{lexsort_to_indices, take_record_batch, SortColumn, SortOptions};
use serde::Serialize;

use super::filter::Filters;
use super::run::{key_for, query_node, Coverage, QueryError, RecordProof};
use super::source::{Fetcher, NodeSources};
use crate::columnar::rows::schema;
use crate::tlog::checkpoint::CheckpointVerifier;

/// A field to sort by.
#[derive(Debug, Clone, Serialize)]
pub struct SortKey {
    /// A column of the columnar schema.
    pub column: String,
    /// Largest first.
    pub descending: bool,
}

impl std::str::FromStr for SortKey {
    type Err = String;

    /// `ts` or `-ts` (descending), any column of the schema that is not a list or map.
    fn from_str(s: &str) -> Result<Self, String> {
        let (column, descending) = match s.strip_prefix('-') {
            Some(c) => (c, true),
            None => (s, false),
        };
        let field = schema()
            .field_with_name(column)
            .map_err(|_| format!("{column:?} is not a column (see the README's schema)"))?
            .clone();
        if field.data_type().is_nested() {
            return Err(format!(
                "{column:?} is a list or map: it cannot be sorted by"
            ));
        }
        Ok(SortKey {
            column: column.to_string(),
            descending,
        })
    }
}

/// What to ask.
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    /// The filters.
    pub filters: Filters,
    /// Sort by these (default: time, then node, then seq).
    pub sort: Vec<SortKey>,
    /// Return at most this many rows (after sorting).
    pub limit: Option<usize>,
    /// Verify and prove (false: `--no-verify`).
    pub verify: bool,
}

/// The answer.
pub struct Answer {
    /// The rows, every column, sorted and cut to the limit.
    pub rows: RecordBatch,
    /// Matching rows before the limit.
    pub matched: usize,
    /// Each node's coverage.
    pub coverage: Vec<Coverage>,
    /// The proofs of the returned rows.
    pub proofs: Vec<RecordProof>,
}

impl Answer {
    /// True when a node read something other than planned (a copy that did not check out).
    pub fn has_warnings(&self) -> bool {
        self.coverage
            .iter()
            .any(|c| c.notes.iter().any(|n| n.contains("did not check out")))
    }
}

/// Answer `request` over every node of `sources`, each verified with its key in `keys`.
pub fn answer(
    request: &Request,
    sources: &[NodeSources],
    fetcher: &Fetcher,
    keys: &[CheckpointVerifier],
) -> Result<Answer, QueryError> {
    let mut parts = Vec::new();
    let mut coverage = Vec::new();
    let mut proofs = Vec::new();
    for node in sources {
        let key = if request.verify {
            Some(key_for(&node.node, keys).ok_or_else(|| QueryError::Unverified {
                node: node.node.clone(),
                detail: "no public key for this node: give --key (a checkpoint .pub file), or --no-verify".into(),
            })?)
        } else {
            None
        };
        let part = query_node(node, fetcher, &request.filters, key)?;
        parts.push(part.rows);
        coverage.push(part.coverage);
        proofs.extend(part.proofs);
    }
    let all = arrow::compute::concat_batches(&schema(), &parts).map_err(arrow_error)?;
    let matched = all.num_rows();
    let sorted = sort(&all, &request.sort).map_err(arrow_error)?;
    let rows = match request.limit {
        Some(limit) if limit < sorted.num_rows() => sorted.slice(0, limit),
        _ => sorted,
    };
    // The proofs of the rows returned, in their order.
    let nodes = rows
        .column_by_name("node")
        .map(|c| c.as_string::<i32>().clone());
    let seqs = rows
        .column_by_name("seq")
        .map(|c| c.as_primitive::<arrow::datatypes::Int64Type>().clone());
    let mut returned = Vec::new();
    if let (Some(nodes), Some(seqs)) = (nodes, seqs) {
        let mut by_id: std::collections::HashMap<(String, u64), RecordProof> = proofs
            .into_iter()
            .map(|p| ((p.node.clone(), p.seq), p))
            .collect();
        for i in 0..rows.num_rows() {
            if let Some(p) = by_id.remove(&(nodes.value(i).to_string(), seqs.value(i) as u64)) {
                returned.push(p);
            }
        }
    }
    Ok(Answer {
        rows,
        matched,
        coverage,
        proofs: returned,
    })
}

fn arrow_error(source: arrow::error::ArrowError) -> QueryError {
    QueryError::Scan(super::scan::ScanError::Arrow {
        place: "the answer".into(),
        source,
    })
}

/// Sort by `keys`, then time, node and seq (a total order: the output is deterministic).
fn sort(batch: &RecordBatch, keys: &[SortKey]) -> Result<RecordBatch, arrow::error::ArrowError> {
    if batch.num_rows() < 2 {
        return Ok(batch.clone());
    }
    let mut columns = Vec::new();
    let defaults = ["ts", "node", "seq"].map(|c| SortKey {
        column: c.to_string(),
        descending: false,
    });
    for key in keys.iter().chain(defaults.iter()) {
        let Some(values) = batch.column_by_name(&key.column) else {
            continue;
        };
        columns.push(SortColumn {
            values: values.clone(),
            options: Some(SortOptions {
                descending: key.descending,
                nulls_first: false,
            }),
        });
    }
    let indices = lexsort_to_indices(&columns, None)?;
    take_record_batch(batch, &indices)
}
