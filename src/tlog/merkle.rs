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
    LeafOutsideTree { index: u64, size: u64 },
    /// A consistency proof was asked from a larger tree to a smaller one, or past the leaves.
    #[error(
        "no consistency proof from size {old_size} to size {new_size} (with {available} leaves)"
    )]
    BadSizes {
        old_size: u64,
        new_size: u64,
        available: u64,
    },
    /// More hashes than any tree of this size can need.
    #[error("a proof of {len} hashes is longer than any valid proof ({max} at most)")]
    TooLong { len: usize, max: usize },
    /// The proof does not lead to the given root.
    #[error("the proof does not match the root")]
    Mismatch,
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
    pub fn new(leaves: &'a [Hash]) -> Self {
        Leaves { leaves }
    }

    /// The number of leaves available.
    pub fn len(&self) -> u64 {
        self.leaves.len() as u64
    }

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
mod tests {
    //! Known answers from transparency-dev/merkle (`testonly/constants.go` for the leaves,
    //! roots and node hashes; `proof/verify_test.go` for the inclusion and consistency
    //! proofs), the Certificate Transparency reference tree of RFC 6962.
    use super::*;
    use proptest::prelude::*;

    const LEAF_INPUTS: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    /// Root of the tree of the first `i` leaves, `i` from 0.
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    /// (leaf number from 1, tree size, proof), as in verify_test.go.
    const INCLUSION: [(u64, u64, &[&str]); 4] = [
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            3,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            2,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    /// (old size, new size, proof), as in verify_test.go.
    const CONSISTENCY: [(u64, u64, &[&str]); 5] = [
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            6,
            7,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];

    fn h(hex_str: &str) -> Hash {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_str, &mut out).unwrap();
        Hash(out)
    }

    fn hashes(list: &[&str]) -> Vec<Hash> {
        list.iter().map(|s| h(s)).collect()
    }

    fn reference_leaves() -> Vec<Hash> {
        LEAF_INPUTS
            .iter()
            .map(|input| hash_of(&crate::record::leaf_hash(&hex::decode(input).unwrap())))
            .collect()
    }

    #[test]
    fn roots_match_the_reference_tree_for_every_size() {
        let leaves = reference_leaves();
        let mut frontier = Frontier::new();
        assert_eq!(frontier.root(), h(ROOTS[0]));
        for (size, root) in ROOTS.iter().enumerate() {
            assert_eq!(
                Leaves::new(&leaves).root(size as u64).unwrap(),
                h(root),
                "size {size}"
            );
            if size > 0 {
                frontier.push(leaves[size - 1]);
                assert_eq!(frontier.root(), h(root), "frontier at size {size}");
            }
        }
        // The compact state of the full tree is the single level-3 node.
        assert_eq!(frontier.nodes(), &[h(ROOTS[8])]);
    }

    #[test]
    fn inclusion_proofs_match_the_reference_vectors() {
        let leaves = reference_leaves();
        let tree = Leaves::new(&leaves);
        for (leaf_number, size, proof) in INCLUSION {
            let index = leaf_number - 1;
            let expected = hashes(proof);
            assert_eq!(tree.inclusion_proof(index, size).unwrap(), expected);
            let root = h(ROOTS[size as usize]);
            verify_inclusion(&expected, index, size, leaves[index as usize], root).unwrap();
            // Any change to the proof, the index, the size or the root fails.
            let mut bad = expected.clone();
            bad[0].0[0] ^= 8;
            assert_eq!(
                verify_inclusion(&bad, index, size, leaves[index as usize], root),
                Err(ProofError::Mismatch)
            );
            assert!(
                verify_inclusion(&expected, index ^ 2, size, leaves[index as usize], root).is_err()
            );
            assert!(
                verify_inclusion(&expected, index, size * 2, leaves[index as usize], root).is_err()
            );
            assert!(
                verify_inclusion(&expected, index, size, leaves[index as usize], h(ROOTS[0]))
                    .is_err()
            );
            let mut longer = expected.clone();
            longer.push(root);
            assert!(verify_inclusion(&longer, index, size, leaves[index as usize], root).is_err());
            if !expected.is_empty() {
                let shorter = &expected[..expected.len() - 1];
                assert!(
                    verify_inclusion(shorter, index, size, leaves[index as usize], root).is_err()
                );
            }
        }
    }

    #[test]
    fn consistency_proofs_match_the_reference_vectors() {
        let leaves = reference_leaves();
        let tree = Leaves::new(&leaves);
        for (old, new, proof) in CONSISTENCY {
            let expected = hashes(proof);
            assert_eq!(
                tree.consistency_proof(old, new).unwrap(),
                expected,
                "{old} -> {new}"
            );
            let (old_root, new_root) = (h(ROOTS[old as usize]), h(ROOTS[new as usize]));
            verify_consistency(&expected, old, old_root, new, new_root).unwrap();
            if old != new {
                // Swapped roots, a flipped bit and a dropped hash all fail.
                assert!(verify_consistency(&expected, old, new_root, new, old_root).is_err());
                let mut bad = expected.clone();
                bad[0].0[0] ^= 16;
                assert!(verify_consistency(&bad, old, old_root, new, new_root).is_err());
                let shorter = &expected[..expected.len() - 1];
                assert!(verify_consistency(shorter, old, old_root, new, new_root).is_err());
            }
        }
        // The empty tree is extended by every tree; a tree does not "extend" a larger one.
        verify_consistency(&[], 0, h(ROOTS[0]), 5, h(ROOTS[5])).unwrap();
        assert!(verify_consistency(&[], 5, h(ROOTS[5]), 4, h(ROOTS[4])).is_err());
        assert!(verify_consistency(&[], 3, h(ROOTS[3]), 3, h(ROOTS[4])).is_err());
    }

    #[test]
    fn a_hostile_proof_length_is_refused_before_it_is_run() {
        let proof = vec![Hash([7; 32]); MAX_PROOF_HASHES + 1];
        assert_eq!(
            verify_inclusion(&proof, 0, 2, Hash([1; 32]), Hash([2; 32])),
            Err(ProofError::TooLong {
                len: MAX_PROOF_HASHES + 1,
                max: MAX_PROOF_HASHES
            })
        );
    }

    proptest! {
        #[test]
        fn every_proof_of_every_shape_verifies(size in 1u64..70, seed in any::<u64>()) {
            let leaves: Vec<Hash> = (0..size)
                .map(|i| hash_of(&crate::record::leaf_hash(&(i ^ seed).to_be_bytes())))
                .collect();
            let tree = Leaves::new(&leaves);
            let mut frontier = Frontier::new();
            let mut roots = vec![EMPTY_HASH];
            for leaf in &leaves {
                frontier.push(*leaf);
                roots.push(frontier.root());
            }
            prop_assert_eq!(tree.root(size).unwrap(), roots[size as usize]);
            for index in 0..size {
                let proof = tree.inclusion_proof(index, size).unwrap();
                prop_assert!(verify_inclusion(&proof, index, size, leaves[index as usize], roots[size as usize]).is_ok());
            }
            for old in 0..=size {
                let proof = tree.consistency_proof(old, size).unwrap();
                prop_assert!(verify_consistency(&proof, old, roots[old as usize], size, roots[size as usize]).is_ok());
            }
            let restored = Frontier::from_parts(frontier.size(), frontier.nodes().to_vec()).unwrap();
            prop_assert_eq!(restored, frontier);
        }
    }
}
