//! `auditgate verify --journal DIR`: re-check a journal directory from its bytes alone.
//!
//! Owns the offline check of the on-disk format documented in [`crate::journal`]. For every
//! line of every segment it recomputes the RFC 6962 leaf hash, checks that the next record's
//! `prev` equals it, that `seq` increases by exactly one across lines and segments, that a
//! sealed segment's name matches the records inside it, and that every line is a record.
//! It reports every problem with its segment, line number and seq, and keeps going after a
//! problem (re-synchronising on the next line) so one finding does not hide the next.
//!
//! What a hash chain alone cannot show: a tail cut at a line boundary of the open segment, or a
//! rewrite of the whole chain by someone who recomputes every hash. With the node's public key
//! (`--key`), every signed checkpoint in `checkpoints/` is checked too: its signature, its
//! Merkle root against the root recomputed from the records it covers (so a rewritten chain
//! without the private key is found), checkpoints that cover more records than the journal
//! holds (a cut tail), and gaps between checkpoints longer than the heartbeat allows. Records
//! after the newest checkpoint are not covered by any signature yet; the report counts them.
//!
//! A journal's segments are read and their lines parsed and hashed on every core, one segment
//! per worker (a lone segment on every core), at most one more segment than workers held at a
//! time; the chain is then checked in order and stitched across segment boundaries on one
//! thread. Each line is hashed once: the columnar check and the checkpoint roots reuse the
//! hashes, and columnar copies are compared row by row on threads of their own.
//!
//! The checks work on segment bytes and checkpoint notes from any source: [`archive`] feeds
//! them the WORM archive's objects (`verify --archive`), which adds the archive's own findings
//! (delete markers, second versions, locks, missing segments, disagreement with the local
//! journal). A finding names its place: a journal file name, or an archive object key.

pub mod archive;
mod chain;
mod columnar;
pub mod finding;
pub mod journal;
pub mod proof;
pub mod report;

pub use archive::{verify_archive, ArchiveOptions, ArchiveReport, ArchiveVerifyError};
pub use finding::Finding;
pub use journal::{verify_journal, verify_journal_with, Options, Report};
pub use report::ChainReport;

#[cfg(test)]
mod tests;
