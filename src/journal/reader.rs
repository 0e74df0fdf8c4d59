//! Reading records back: the leaf hashes of a range of seqs, for proofs and checkpoints.

use super::error::JournalError;
use super::segment::{list_segments, used_len, SegmentName};
use crate::durable::FileError;
use crate::record::{self, LeafHash};
use std::fs::{self};
use std::path::Path;

/// The leaf hashes of the records with seq `from..=to`, read from the segments that hold them.
///
/// Trusts the segment names for where each seq is (the writer's own files after recovery);
/// `auditgate verify` is what checks them. Fails if the segments do not hold every seq.
pub fn read_leaf_hashes(dir: &Path, from: u64, to: u64) -> Result<Vec<LeafHash>, JournalError> {
    let mut leaves = Vec::with_capacity(to.saturating_sub(from).saturating_add(1) as usize);
    if from > to {
        return Ok(leaves);
    }
    for (name, path) in list_segments(dir)? {
        if let SegmentName::Sealed { last, .. } = name {
            if last < from {
                continue;
            }
        }
        if name.first() > to {
            break;
        }
        let mut bytes = fs::read(&path).map_err(FileError::on(&path))?;
        if matches!(name, SegmentName::Open { .. }) {
            bytes.truncate(used_len(&bytes));
        }
        let mut seq = name.first();
        for line in bytes.split(|&b| b == b'\n') {
            if seq > to {
                break;
            }
            if line.is_empty() {
                continue;
            }
            if seq >= from {
                if seq != from + leaves.len() as u64 {
                    break;
                }
                leaves.push(record::leaf_hash(line));
            }
            seq += 1;
        }
    }
    let expected = to - from + 1;
    if leaves.len() as u64 != expected {
        return Err(JournalError::Corrupt(format!(
            "the segments hold {} of the records with seq {from} to {to}",
            leaves.len()
        )));
    }
    Ok(leaves)
}
