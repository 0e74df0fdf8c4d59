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
            verify_inclusion(&expected, index, size, leaves[index as usize], h(ROOTS[0])).is_err()
        );
        let mut longer = expected.clone();
        longer.push(root);
        assert!(verify_inclusion(&longer, index, size, leaves[index as usize], root).is_err());
        if !expected.is_empty() {
            let shorter = &expected[..expected.len() - 1];
            assert!(verify_inclusion(shorter, index, size, leaves[index as usize], root).is_err());
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
