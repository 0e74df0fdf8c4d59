//! Compact ranges: a piece of the journal's Merkle tree held as a few subtree hashes, so that
//! proofs and roots over millions of records are made from a handful of hashes per segment.
//!
//! Owns three things:
//!
//! * [`decompose`]: the maximal aligned perfect subtrees ("blocks") that cover a leaf range
//!   `[start, end)`, left to right. Block `(level, n)` covers leaves `n·2^level ..
//!   (n+1)·2^level`. A range of `k` leaves has at most `2·log2(k)` blocks; the blocks of
//!   `[0, size)` are exactly the nodes of a [`Frontier`] of that size.
//! * [`Frontier::push_subtree`] (here, as [`extend`]): appending a whole block to a tree state,
//!   so that the frontier at a segment's start plus the segment's blocks gives the frontier at
//!   its end, and its root. That is how a sealed segment's columnar seal is checked against the
//!   signed checkpoint of its end without reading its records.
//! * [`Subtrees`]: a [`tlog_tiles::HashReader`] over known blocks and known leaves, from which
//!   `tlog_tiles` computes RFC 6962 inclusion proofs in a tree of any size. Proof siblings of a
//!   leaf are either inside its own segment (computed from that segment's leaves) or unions of
//!   whole blocks of other segments: two aligned subtrees either nest or are disjoint, and a
//!   sibling that cut into another segment's block without containing it would make that block
//!   hold the proven leaf.

use std::collections::HashMap;

use tlog_tiles::{HashReader, EMPTY_HASH};

use super::merkle::{Frontier, Hash, NotAligned};

/// One perfect subtree of the tree: `2^level` leaves from leaf `n << level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Block {
    /// Height: the block holds `2^level` leaves.
    pub level: u8,
    /// Index among the blocks of that height.
    pub n: u64,
}

impl Block {
    /// The first leaf the block covers.
    pub fn start(self) -> u64 {
        self.n << self.level
    }

    /// One past the last leaf the block covers.
    pub fn end(self) -> u64 {
        (self.n + 1) << self.level
    }
}

/// The maximal aligned blocks covering leaves `[start, end)`, left to right (empty if
/// `start >= end`).
pub fn decompose(mut start: u64, end: u64) -> Vec<Block> {
    let mut blocks = Vec::new();
    while start < end {
        let aligned = if start == 0 {
            63
        } else {
            start.trailing_zeros()
        };
        let fits = 63 - (end - start).leading_zeros();
        let level = aligned.min(fits) as u8;
        blocks.push(Block {
            level,
            n: start >> level,
        });
        start += 1u64 << level;
    }
    blocks
}

/// The RFC 6962 hash of a perfect subtree given all its leaves (`leaves.len()` a power of two).
pub fn perfect_root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => EMPTY_HASH,
        1 => leaves[0],
        n => {
            let (left, right) = leaves.split_at(n / 2);
            tlog_tiles::node_hash(perfect_root(left), perfect_root(right))
        }
    }
}

/// The hashes of the blocks of `[start, start + leaves.len())`, in [`decompose`] order, from
/// the leaves of that range.
pub fn range_hashes(start: u64, leaves: &[Hash]) -> Vec<Hash> {
    decompose(start, start + leaves.len() as u64)
        .into_iter()
        .map(|b| {
            let from = (b.start() - start) as usize;
            let to = (b.end() - start) as usize;
            perfect_root(&leaves[from..to])
        })
        .collect()
}

/// Append the blocks of `[frontier.size(), ...)` (their hashes, in [`decompose`] order of that
/// range, `count` leaves in all) to `frontier`.
pub fn extend(frontier: &mut Frontier, count: u64, hashes: &[Hash]) -> Result<(), RangeError> {
    let blocks = decompose(frontier.size(), frontier.size() + count);
    if blocks.len() != hashes.len() {
        return Err(RangeError::WrongCount {
            leaves: count,
            expected: blocks.len(),
            got: hashes.len(),
        });
    }
    for (block, hash) in blocks.into_iter().zip(hashes) {
        frontier.push_subtree(block.level, *hash)?;
    }
    Ok(())
}

/// Why a compact range does not fit where it was put.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The number of hashes is not the number of blocks of the range.
    #[error("a range of {leaves} leaves has {expected} blocks, not {got}")]
    WrongCount {
        /// The range's length.
        leaves: u64,
        /// How many blocks it decomposes into.
        expected: usize,
        /// How many hashes were given.
        got: usize,
    },
    /// See [`NotAligned`].
    #[error(transparent)]
    NotAligned(#[from] NotAligned),
}

/// Known pieces of one tree: blocks (from frontiers and segments' compact ranges) and runs of
/// leaves (segments read whole). Answers any subtree hash those pieces determine.
///
/// Subtrees it folds from blocks are remembered: the proofs of many records of one log share
/// most of their upper siblings (a subtree spanning many segments is folded once).
#[derive(Debug, Default)]
pub struct Subtrees {
    blocks: HashMap<Block, Hash>,
    /// Runs of consecutive leaves: (first leaf index, leaves), sorted by start, disjoint.
    runs: Vec<(u64, Vec<Hash>)>,
    /// Subtrees computed so far.
    computed: std::cell::RefCell<HashMap<Block, Hash>>,
}

impl Subtrees {
    /// Nothing known yet.
    pub fn new() -> Self {
        Subtrees::default()
    }

    /// Add the blocks of `[start, start + count)` with their hashes (in [`decompose`] order).
    pub fn add_range(&mut self, start: u64, count: u64, hashes: &[Hash]) -> Result<(), RangeError> {
        let blocks = decompose(start, start + count);
        if blocks.len() != hashes.len() {
            return Err(RangeError::WrongCount {
                leaves: count,
                expected: blocks.len(),
                got: hashes.len(),
            });
        }
        self.blocks
            .extend(blocks.into_iter().zip(hashes.iter().copied()));
        Ok(())
    }

    /// Add blocks with their hashes.
    pub fn add_blocks(&mut self, blocks: impl IntoIterator<Item = (Block, Hash)>) {
        self.blocks.extend(blocks);
    }

    /// Add the nodes of a frontier (the blocks of `[0, frontier.size())`).
    pub fn add_frontier(&mut self, frontier: &Frontier) {
        let blocks = decompose(0, frontier.size());
        self.blocks
            .extend(blocks.into_iter().zip(frontier.nodes().iter().copied()));
    }

    /// Add the leaves from index `start` on.
    pub fn add_leaves(&mut self, start: u64, leaves: Vec<Hash>) {
        let at = self.runs.partition_point(|(s, _)| *s < start);
        self.runs.insert(at, (start, leaves));
    }

    /// The leaves `[start, end)` if one run holds them all.
    fn leaves(&self, start: u64, end: u64) -> Option<&[Hash]> {
        let at = self.runs.partition_point(|(s, _)| *s <= start);
        let (run_start, run) = self.runs.get(at.checked_sub(1)?)?;
        let from = (start - run_start) as usize;
        let to = (end - run_start) as usize;
        run.get(from..to)
    }

    /// The hash of block `(level, n)`, if the known pieces determine it.
    pub fn subtree(&self, block: Block) -> Option<Hash> {
        if let Some(hash) = self.blocks.get(&block) {
            return Some(*hash);
        }
        // Inside a run of leaves (a tile holding a returned record, or a segment read whole):
        // computed from them, not remembered (such subtrees are rarely asked twice).
        if let Some(leaves) = self.leaves(block.start(), block.end()) {
            return Some(perfect_root(leaves));
        }
        if let Some(hash) = self.computed.borrow().get(&block) {
            return Some(*hash);
        }
        let hash = if block.level == 0 {
            return None;
        } else {
            let left = self.subtree(Block {
                level: block.level - 1,
                n: block.n * 2,
            })?;
            let right = self.subtree(Block {
                level: block.level - 1,
                n: block.n * 2 + 1,
            })?;
            tlog_tiles::node_hash(left, right)
        };
        self.computed.borrow_mut().insert(block, hash);
        Some(hash)
    }

    /// The RFC 6962 inclusion proof of leaf `index` in the tree of `size` leaves, if the known
    /// pieces determine it.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        if index >= size {
            return None;
        }
        tlog_tiles::prove_record(size, index, self).ok()
    }

    /// The root of the tree of `size` leaves, if the known pieces determine it.
    pub fn root(&self, size: u64) -> Option<Hash> {
        tlog_tiles::tree_hash(size, self).ok()
    }
}

impl HashReader for Subtrees {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|&index| {
                let (level, n) = tlog_tiles::split_stored_hash_index(index);
                self.subtree(Block { level, n })
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlog::merkle::Leaves;
    use proptest::prelude::*;

    fn leaf(i: u64) -> Hash {
        Hash(crate::record::leaf_hash(&i.to_le_bytes()))
    }

    #[test]
    fn blocks_of_a_prefix_are_the_frontier() {
        for size in 0..300u64 {
            let leaves: Vec<Hash> = (0..size).map(leaf).collect();
            let mut frontier = Frontier::new();
            for l in &leaves {
                frontier.push(*l);
            }
            assert_eq!(range_hashes(0, &leaves), frontier.nodes(), "size {size}");
        }
    }

    #[test]
    fn decompose_covers_exactly_with_maximal_aligned_blocks() {
        for start in 0..70u64 {
            for end in start..140u64 {
                let blocks = decompose(start, end);
                let mut at = start;
                for b in &blocks {
                    assert_eq!(b.start(), at);
                    assert_eq!(b.start() % (1 << b.level), 0);
                    at = b.end();
                }
                assert_eq!(at, end);
                assert!(blocks.len() <= 2 * 64);
            }
        }
    }

    proptest! {
        /// Segments cut anywhere: the frontier at a segment's start plus its compact range is
        /// the frontier at its end, and proofs made from other segments' blocks plus the proven
        /// leaf's own segment equal the proofs made from every leaf.
        #[test]
        fn segments_give_the_same_roots_and_proofs(
            size in 1u64..600,
            cuts in proptest::collection::vec(1u64..600, 0..6),
            probe in 0u64..600,
        ) {
            let leaves: Vec<Hash> = (0..size).map(leaf).collect();
            let mut bounds: Vec<u64> = cuts.into_iter().filter(|c| *c < size).collect();
            bounds.push(0);
            bounds.push(size);
            bounds.sort();
            bounds.dedup();
            let all = Leaves::new(&leaves);
            let index = probe % size;
            let mut frontier = Frontier::new();
            let mut pieces = Subtrees::new();
            for pair in bounds.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                let hashes = range_hashes(a, &leaves[a as usize..b as usize]);
                extend(&mut frontier, b - a, &hashes).unwrap();
                prop_assert_eq!(frontier.root(), all.root(b).unwrap());
                if (a..b).contains(&index) {
                    pieces.add_leaves(a, leaves[a as usize..b as usize].to_vec());
                } else {
                    pieces.add_range(a, b - a, &hashes).unwrap();
                }
            }
            prop_assert_eq!(pieces.root(size), Some(all.root(size).unwrap()));
            prop_assert_eq!(
                pieces.inclusion_proof(index, size),
                Some(all.inclusion_proof(index, size).unwrap())
            );
        }
    }

    #[test]
    fn a_misplaced_range_is_refused() {
        let mut frontier = Frontier::new();
        frontier.push(leaf(0));
        // A block of 2 leaves cannot start at leaf 1.
        assert!(frontier.push_subtree(1, leaf(9)).is_err());
        assert!(matches!(
            extend(&mut frontier, 3, &[leaf(1)]),
            Err(RangeError::WrongCount { .. })
        ));
    }
}
