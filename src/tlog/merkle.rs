//! The RFC 6962 / RFC 9162 Merkle tree over the journal's records.
//!
//! Owns the tree arithmetic: the incremental root the journal writer keeps while records arrive
//! ([`Frontier`]), the roots, inclusion proofs and consistency proofs the CLI computes from a
//! journal's leaf hashes ([`Leaves`]), and the checks a verifier runs on proofs it was handed.
//!
//! Leaf `i` (from 0) is the record with `seq = i + 1`; its hash is the record's RFC 6962 leaf
//! hash, `SHA-256(0x00 || line)` ([`crate::record::leaf_hash`]). A tree of size `n` covers the
//! records with seq `1..=n`. Interior nodes are `SHA-256(0x01 || left || right)`, so the root,
//! the proofs and their order (leaf to root) are exactly RFC 6962's: any transparency-log tool
//! checks them.
//!
//! The proof algorithms come from `tlog_tiles` (Cloudflare's port of Go's
//! `golang.org/x/mod/sumdb/tlog`); this module only feeds it hashes. Known-answer tests against
//! the transparency-dev/merkle reference vectors (the Certificate Transparency test tree) are
//! below. A proof handed in from outside is length-checked before it is run, so a hostile
//! bundle costs at most [`MAX_PROOF_HASHES`] hashes.

use thiserror::Error;
use tlog_tiles::{HashReader, EMPTY_HASH};

pub use tlog_tiles::Hash;

use crate::record::LeafHash;

/// No proof in a tree of fewer than 2^64 leaves has more hashes than this.
pub const MAX_PROOF_HASHES: usize = 128;

/// Why a proof could not be made or did not verify.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProofError {
    /// The leaf index is not inside the tree.
    #[error("leaf index {index} is outside a tree of size {size}")]
    LeafOutsideTree {
        /// The leaf index asked for.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// A consistency proof was asked from a larger tree to a smaller one, or past the leaves.
    #[error(
        "no consistency proof from size {old_size} to size {new_size} (with {available} leaves)"
    )]
    BadSizes {
        /// The older tree's size.
        old_size: u64,
        /// The newer tree's size.
        new_size: u64,
        /// How many leaves there are.
        available: u64,
    },
    /// More hashes than any tree of this size can need.
    #[error("a proof of {len} hashes is longer than any valid proof ({max} at most)")]
    TooLong {
        /// The proof's length, in hashes.
        len: usize,
        /// The most a tree of that size needs.
        max: usize,
    },
    /// The proof does not lead to the given root.
    #[error("the proof does not match the root")]
    Mismatch,
}

/// Why a frontier could not take a block ([`Frontier::push_subtree`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("a block of 2^{level} leaves cannot start at leaf {at}: it is not aligned there")]
pub struct NotAligned {
    /// The block's height.
    pub level: u8,
    /// Where the frontier ends.
    pub at: u64,
}

/// Convert a record leaf hash into the tree's hash type.
pub fn hash_of(leaf: &LeafHash) -> Hash {
    Hash(*leaf)
}

/// The compact state of a growing tree: the roots of its perfect subtrees, largest first
/// (one per set bit of the size). Appending a leaf costs amortised one node hash; the root costs
/// at most log2(size) node hashes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Self {
        Frontier::default()
    }

    /// A frontier from its parts (as saved by [`Frontier::nodes`]); `None` if the number of
    /// nodes does not fit the size.
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Option<Self> {
        (nodes.len() == size.count_ones() as usize).then_some(Frontier { size, nodes })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The perfect-subtree roots, largest (leftmost) first.
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// Append one leaf hash.
    #[allow(
        clippy::expect_used,
        reason = "the frontier holds one node per set bit of its size: the invariant this type keeps"
    )]
    pub fn push(&mut self, leaf: Hash) {
        let mut carry = leaf;
        let mut size = self.size;
        // Each trailing one bit of the old size is a perfect subtree the new leaf completes.
        while size & 1 == 1 {
            let left = self.nodes.pop().expect("one node per set bit");
            carry = tlog_tiles::node_hash(left, carry);
            size >>= 1;
        }
        self.nodes.push(carry);
        self.size += 1;
    }

    /// Append a whole perfect subtree of `2^level` leaves (its root hash). The tree's size must
    /// be a multiple of `2^level`, as it is where such a block starts.
    #[allow(
        clippy::expect_used,
        reason = "the frontier holds one node per set bit of its size: the invariant this type keeps"
    )]
    pub fn push_subtree(&mut self, level: u8, hash: Hash) -> Result<(), NotAligned> {
        let width = 1u64.checked_shl(u32::from(level)).unwrap_or(0);
        if level >= 64 || !self.size.is_multiple_of(width) || self.size.checked_add(width).is_none()
        {
            return Err(NotAligned {
                level,
                at: self.size,
            });
        }
        let mut carry = hash;
        let mut bit = u32::from(level);
        // Each one bit of the size from `level` up is a perfect subtree the block completes.
        while bit < 64 && (self.size >> bit) & 1 == 1 {
            let left = self.nodes.pop().expect("one node per set bit");
            carry = tlog_tiles::node_hash(left, carry);
            bit += 1;
        }
        self.nodes.push(carry);
        self.size += width;
        Ok(())
    }

    /// The tree's root hash (the RFC 6962 Merkle Tree Hash of all leaves so far).
    pub fn root(&self) -> Hash {
        let mut nodes = self.nodes.iter().rev();
        let Some(&smallest) = nodes.next() else {
            return EMPTY_HASH;
        };
        nodes.fold(smallest, |right, &left| tlog_tiles::node_hash(left, right))
    }
}

/// The leaf hashes of a journal prefix, in order, as a source of proofs and roots.
pub struct Leaves<'a> {
    leaves: &'a [Hash],
}

#[allow(
    clippy::expect_used,
    reason = "tlog_tiles reads hashes through HashReader, which in-memory leaves always answer"
)]
impl<'a> Leaves<'a> {
    /// The leaves, in order (leaf hashes, as [`hash_of`] makes them).
    pub fn new(leaves: &'a [Hash]) -> Self {
        Leaves { leaves }
    }

    /// The number of leaves available.
    pub fn len(&self) -> u64 {
        self.leaves.len() as u64
    }

    /// No leaves.
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// The root of the tree of the first `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, ProofError> {
        if size > self.len() {
            return Err(ProofError::BadSizes {
                old_size: size,
                new_size: size,
                available: self.len(),
            });
        }
        Ok(tlog_tiles::tree_hash(size, self).expect("in-memory hashes are always readable"))
    }

    /// The inclusion proof (RFC 6962 audit path, leaf to root) of leaf `index` in the tree of
    /// the first `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        if index >= size || size > self.len() {
            return Err(ProofError::LeafOutsideTree { index, size });
        }
        Ok(tlog_tiles::prove_record(size, index, self).expect("in-memory hashes are readable"))
    }

    /// The consistency proof (RFC 6962) that the tree of size `new_size` extends the tree of
    /// size `old_size`. Empty when `old_size` is 0 or equals `new_size`.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, ProofError> {
        if old_size > new_size || new_size > self.len() {
            return Err(ProofError::BadSizes {
                old_size,
                new_size,
                available: self.len(),
            });
        }
        if old_size == 0 || old_size == new_size {
            return Ok(Vec::new());
        }
        Ok(
            tlog_tiles::prove_tree(new_size, old_size, self)
                .expect("in-memory hashes are readable"),
        )
    }

    /// The hash of the perfect subtree of `2^level` leaves starting at leaf `n << level`.
    fn subtree(&self, level: u8, n: u64) -> Hash {
        if level == 0 {
            return self.leaves[n as usize];
        }
        let left = self.subtree(level - 1, 2 * n);
        let right = self.subtree(level - 1, 2 * n + 1);
        tlog_tiles::node_hash(left, right)
    }
}

impl HashReader for Leaves<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|&index| {
                let (level, n) = tlog_tiles::split_stored_hash_index(index);
                let end = (n + 1)
                    .checked_shl(u32::from(level))
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)?;
                if level >= 64 || end > self.len() {
                    return Err(tlog_tiles::Error::IndexesNotInTree);
                }
                Ok(self.subtree(level, n))
            })
            .collect()
    }
}

fn check_length(proof: &[Hash]) -> Result<(), ProofError> {
    if proof.len() > MAX_PROOF_HASHES {
        return Err(ProofError::TooLong {
            len: proof.len(),
            max: MAX_PROOF_HASHES,
        });
    }
    Ok(())
}

/// Check that `proof` shows leaf `leaf` at `index` in the tree of `size` leaves with `root`.
pub fn verify_inclusion(
    proof: &[Hash],
    index: u64,
    size: u64,
    leaf: Hash,
    root: Hash,
) -> Result<(), ProofError> {
    check_length(proof)?;
    if index >= size {
        return Err(ProofError::LeafOutsideTree { index, size });
    }
    tlog_tiles::check_record(&proof.to_vec(), size, root, index, leaf)
        .map_err(|_| ProofError::Mismatch)
}

/// Check that `proof` shows the tree (`new_size`, `new_root`) extends (`old_size`, `old_root`).
pub fn verify_consistency(
    proof: &[Hash],
    old_size: u64,
    old_root: Hash,
    new_size: u64,
    new_root: Hash,
) -> Result<(), ProofError> {
    check_length(proof)?;
    if old_size > new_size {
        return Err(ProofError::BadSizes {
            old_size,
            new_size,
            available: new_size,
        });
    }
    if old_size == new_size {
        // The same tree: no proof needed, and the roots must agree.
        return if proof.is_empty() && old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::Mismatch)
        };
    }
    if old_size == 0 {
        // Every tree extends the empty tree.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::Mismatch)
        };
    }
    tlog_tiles::check_tree(&proof.to_vec(), new_size, new_root, old_size, old_root)
        .map_err(|_| ProofError::Mismatch)
}

#[cfg(test)]
mod tests;
