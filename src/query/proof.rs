//! The proof of a query's answer (`auditgate query --proof FILE`), and its offline check
//! (`auditgate verify-report FILE --key KEY`), which needs nothing but the nodes' public keys.
//!
//! ```text
//! {
//!   "format": "auditgate-query-proof/v1",
//!   "query": { ...the filters... },
//!   "nodes": [{
//!     "node": "gw-1",
//!     "first": 1001, "last": 2000,         // the records scanned, contiguous
//!     "tree_size": 2048,                   // the checkpoint's size (>= last)
//!     "checkpoint": "<C2SP signed note>",  // signed by the node's key
//!     "before":  ["<base64>", ...],        // the tree of records 1..first-1 (perfect subtrees)
//!     "scanned": ["<base64>", ...],        // the blocks of records first..=last
//!     "after":   ["<base64>", ...],        // the blocks of records last+1..=tree_size
//!     "records": [{"seq": 1042, "record": "<journal line>", "proof": ["<base64>", ...]}]
//!   }]
//! }
//! ```
//!
//! What the check proves, per node: the scanned range is a contiguous piece of the log the
//! checkpoint signs (`before`, `scanned` and `after` fold to its root: RFC 6962 hashing, the
//! blocks' positions fixed by the sizes), and each returned record is in that log at its seq
//! (RFC 6962 inclusion proof of SHA-256(0x00 ‖ record)) and inside the scanned range. It
//! cannot show which records of the range matched the query (only rerunning the query over the
//! records can): it shows that nothing outside the signed log was returned and exactly which
//! records the answer was drawn from.

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::run::{key_for, Coverage, RecordProof};
use crate::tlog::checkpoint::CheckpointVerifier;
use crate::tlog::merkle::{self, Frontier, Hash};
use crate::tlog::range;

/// The `format` of every proof file this version writes and reads.
pub const FORMAT: &str = "auditgate-query-proof/v1";

/// A query's proof file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProofFile {
    /// Always [`FORMAT`].
    pub format: String,
    /// The query as it was asked.
    pub query: serde_json::Value,
    /// One entry per node.
    pub nodes: Vec<NodeProof>,
}

/// One node's part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeProof {
    /// The node.
    pub node: String,
    /// First seq scanned.
    pub first: u64,
    /// Last seq scanned.
    pub last: u64,
    /// The checkpoint's size.
    pub tree_size: u64,
    /// The signed checkpoint note.
    pub checkpoint: String,
    /// The tree before `first`.
    pub before: Vec<String>,
    /// The blocks of `first..=last`.
    pub scanned: Vec<String>,
    /// The blocks of `last+1..=tree_size`.
    pub after: Vec<String>,
    /// The returned records with their proofs.
    pub records: Vec<RecordEntry>,
}

/// A returned record and its inclusion proof.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordEntry {
    /// Its seq.
    pub seq: u64,
    /// Its journal line, exactly.
    pub record: String,
    /// The audit path, leaf to root, base64.
    pub proof: Vec<String>,
}

fn b64(h: &Hash) -> String {
    base64::engine::general_purpose::STANDARD.encode(h.0)
}

fn unb64(text: &str) -> Result<Hash, String> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .map(Hash)
        .ok_or_else(|| format!("{text:?} is not a base64 SHA-256 hash"))
}

impl ProofFile {
    /// The proof of an answer: its coverage and record proofs, per node.
    pub fn of(query: serde_json::Value, coverage: &[Coverage], proofs: &[RecordProof]) -> Self {
        let nodes = coverage
            .iter()
            .filter_map(|c| {
                Some(NodeProof {
                    node: c.node.clone(),
                    first: c.first,
                    last: c.last,
                    tree_size: c.tree_size,
                    checkpoint: c.checkpoint.clone()?,
                    before: c.before.iter().map(b64).collect(),
                    scanned: c.scanned.iter().map(b64).collect(),
                    after: c.after.iter().map(b64).collect(),
                    records: proofs
                        .iter()
                        .filter(|p| p.node == c.node)
                        .map(|p| RecordEntry {
                            seq: p.seq,
                            record: p.line.clone(),
                            proof: p.proof.iter().map(b64).collect(),
                        })
                        .collect(),
                })
            })
            .collect();
        ProofFile {
            format: FORMAT.into(),
            query,
            nodes,
        }
    }
}

/// What checking one node's part found.
#[derive(Debug, Clone, Serialize)]
pub struct NodeCheck {
    /// The node.
    pub node: String,
    /// Records `first..=last` scanned, in a log of `tree_size` records.
    pub first: u64,
    /// Last seq scanned.
    pub last: u64,
    /// The checkpoint's size.
    pub tree_size: u64,
    /// Records whose proofs hold.
    pub records_proven: usize,
    /// What does not hold (empty: the part holds).
    pub problems: Vec<String>,
}

/// Check a proof file with the nodes' public keys. `Err`: it is not a proof file.
pub fn check(text: &str, keys: &[CheckpointVerifier]) -> Result<Vec<NodeCheck>, String> {
    let file: ProofFile =
        serde_json::from_str(text).map_err(|e| format!("not a query proof file: {e}"))?;
    if file.format != FORMAT {
        return Err(format!("format {:?}, expected {FORMAT}", file.format));
    }
    Ok(file.nodes.iter().map(|n| check_node(n, keys)).collect())
}

fn check_node(part: &NodeProof, keys: &[CheckpointVerifier]) -> NodeCheck {
    let mut result = NodeCheck {
        node: part.node.clone(),
        first: part.first,
        last: part.last,
        tree_size: part.tree_size,
        records_proven: 0,
        problems: Vec::new(),
    };
    let problems = &mut result.problems;
    let Some(key) = key_for(&part.node, keys) else {
        problems.push(format!("no key for node {} was given", part.node));
        return result;
    };
    let checkpoint = match key.open(part.checkpoint.as_bytes()) {
        Ok(cp) => cp,
        Err(e) => {
            problems.push(format!(
                "the checkpoint does not open with {}: {e}",
                key.name()
            ));
            return result;
        }
    };
    if checkpoint.size != part.tree_size {
        problems.push(format!(
            "the checkpoint signs {} records, the proof says {}",
            checkpoint.size, part.tree_size
        ));
        return result;
    }
    if part.first == 0 || part.last < part.first || part.tree_size < part.last {
        problems.push(format!(
            "the range {}..={} does not fit a log of {} records",
            part.first, part.last, part.tree_size
        ));
        return result;
    }
    let hashes = |list: &[String]| list.iter().map(|h| unb64(h)).collect::<Result<Vec<_>, _>>();
    let folded = (|| -> Result<Frontier, String> {
        let mut tree = Frontier::from_parts(part.first - 1, hashes(&part.before)?)
            .ok_or("the tree before the range has the wrong number of subtrees")?;
        range::extend(
            &mut tree,
            part.last - part.first + 1,
            &hashes(&part.scanned)?,
        )
        .map_err(|e| format!("the scanned range's blocks: {e}"))?;
        range::extend(&mut tree, part.tree_size - part.last, &hashes(&part.after)?)
            .map_err(|e| format!("the blocks after the range: {e}"))?;
        Ok(tree)
    })();
    match folded {
        Ok(tree) if tree.root() == checkpoint.root => {}
        Ok(_) => problems.push(format!(
            "records {}..={} with the trees before and after do not give the signed root: the range is not that piece of the log",
            part.first, part.last
        )),
        Err(e) => problems.push(e),
    }
    let mut previous = 0;
    for entry in &part.records {
        if entry.seq < part.first || entry.seq > part.last {
            problems.push(format!(
                "record seq {} is outside the scanned range {}..={}",
                entry.seq, part.first, part.last
            ));
            continue;
        }
        if entry.seq <= previous {
            problems.push(format!(
                "record seq {} is out of order or repeated",
                entry.seq
            ));
        }
        previous = entry.seq;
        let record: Result<crate::record::ChainHeader, _> = serde_json::from_str(&entry.record);
        match record {
            Ok(h) if h.seq == entry.seq && h.node == part.node => {}
            _ => {
                problems.push(format!(
                    "record seq {}: its line is not node {}'s record of that seq",
                    entry.seq, part.node
                ));
                continue;
            }
        }
        let leaf = merkle::hash_of(&crate::record::leaf_hash(entry.record.as_bytes()));
        let proof = match hashes(&entry.proof) {
            Ok(p) => p,
            Err(e) => {
                problems.push(format!("record seq {}: {e}", entry.seq));
                continue;
            }
        };
        match merkle::verify_inclusion(&proof, entry.seq - 1, part.tree_size, leaf, checkpoint.root)
        {
            Ok(()) => result.records_proven += 1,
            Err(e) => problems.push(format!(
                "record seq {} is not in the signed log: {e}",
                entry.seq
            )),
        }
    }
    result
}
