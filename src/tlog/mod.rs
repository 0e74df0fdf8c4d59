//! The transparency log over the journal: the Merkle tree, signed checkpoints.
//!
//! * [`merkle`]: the RFC 6962 tree, its roots and proofs;
//! * [`range`]: compact ranges, a segment's piece of the tree as a few subtree hashes;
//! * [`checkpoint`]: signed tree heads (C2SP checkpoints), keys, the checkpointer thread.
//!
//! Proof bundles made from a journal directory are [`crate::verify::proof`]'s.

pub mod checkpoint;
pub mod merkle;
pub mod range;
