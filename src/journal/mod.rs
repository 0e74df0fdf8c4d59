//! The local journal: an append-only, fsync'd, SHA-256 hash-chained log of audit records.
//!
//! This module owns the journal directory of one gateway node. It guarantees:
//!
//! * **Durable on return.** [`Journal::append`] resolves `Ok` only after the record's bytes
//!   were written and `fdatasync` returned success. The caller may then release data.
//! * **One chain.** Records carry consecutive `seq` numbers from 1 and each `prev` is the RFC
//!   6962 leaf hash of the record before it, across segment boundaries.
//! * **Fail closed.** Any write or sync error poisons the journal: every pending and later
//!   append fails with [`JournalError::Failed`] until the process restarts and recovery has run.
//!   An fsync is never retried (after a failed fsync the kernel may have dropped the dirty
//!   pages, so a second "success" would be a lie).
//!
//! # Group commit
//!
//! One writer thread owns the open segment. Appenders serialise their [`Event`](crate::record::Event) (in parallel,
//! on their own threads), send it through a bounded queue, and wait on a oneshot channel. The
//! writer takes every waiting record (up to `batch_max_records`), stamps the chain header
//! (`seq`, `prev`, `ts`), writes the whole batch with one `write`, calls `fdatasync` once, and
//! only then wakes every waiter with its [`Receipt`]. A full queue is refused at once with
//! [`JournalError::Backlog`] (the proxy answers 503) rather than growing memory without bound.
//!
//! # On-disk format
//!
//! ```text
//! DIR/
//!   LOCK                                  advisory lock: one writer process per directory
//!   seg-00000000000000000001-00000000000000004096.jsonl   sealed segment (first-last seq)
//!   seg-00000000000000004097.open.jsonl   the open segment (at most one), only grows
//!   spare.prealloc                        zero-filled file, the next open segment (optional)
//!   quarantine/                           bytes dropped by recovery, kept for inspection
//!
//! segment := line* zero*                  (zeros: preallocated space, open segment only)
//! line    := JSON object, '\n'              (see crate::record for the fields)
//!            {"v":1,"node":"gw-1","seq":4097,"prev":"<64 hex>","ts":"2026-...Z",...event}
//! leaf    := SHA-256(0x00 || line without '\n')
//! prev    := hex(leaf of record seq-1), or 64 zeros for seq 1
//! ```
//!
//! A segment is sealed when it reaches `segment_max_bytes` or `segment_max_age_secs`:
//! `fsync` the file, rename it to its sealed name (which carries its first and last seq, so a
//! removed or truncated segment is visible), `fsync` the directory, then create the next open
//! segment and `fsync` the directory again.
//!
//! # Recovery
//!
//! On open, the last sealed segment gives the chain head; the open segment is read line by
//! line, and the longest prefix of complete lines that parse and chain correctly is kept.
//! Whatever follows (a torn write from a crash, or unsynced pages that came back as garbage) was
//! never acknowledged: it is copied to `quarantine/` (fsync'd), the segment is truncated to the
//! good prefix, and the [`RecoveryReport`] says how many bytes and lines were dropped. A sealed
//! segment is never modified by recovery.
//!
//! # The rooms
//!
//! [`config`] (`[journal]`), [`error`], [`segment`] (segment names, listing, preallocation),
//! [`handle`] (the [`Journal`] every appender holds: append, await, close), [`writer`] (the
//! one writer thread: group commit, sealing, checkpoint requests), [`recovery`] (opening a
//! directory: the chain head, the torn tail, the Merkle tree anchored to signed checkpoints),
//! [`reader`] (leaf hashes read back), [`shipped`] (the archive's progress file).

pub mod config;
pub mod error;
pub mod handle;
pub mod reader;
pub mod recovery;
pub mod segment;
#[cfg(test)]
pub(crate) mod tests;
pub mod writer;

pub use config::{JournalConfig, MAX_SEGMENT_BYTES};
pub use error::JournalError;
pub use handle::{CloseReport, Journal, JournalStats, Receipt, RecoveryReport};
pub use reader::read_leaf_hashes;
pub use segment::{list_segments, node_of_segments, used_len, SegmentName};
pub use writer::{CheckpointTiming, Checkpointing};
pub mod shipped;
