//! The WORM archive: sealed segments and signed checkpoints, shipped where nobody can delete
//! them for the retention period (S3 Object Lock, COMPLIANCE mode).
//!
//! Owns the archive's object layout, the two stores (S3 and a local directory), and the
//! background [`Archiver`] that ships what the journal seals. It guarantees:
//!
//! * **Create-only.** Every object is written with `If-None-Match: *` (the directory store: a
//!   hard link, which fails if the name exists). Nothing is ever overwritten.
//! * **Checksummed and locked.** Every S3 PUT carries `x-amz-checksum-sha256` (the server
//!   refuses bytes that do not match), `ObjectLockMode=COMPLIANCE` and a retain-until date of
//!   now + `retention_days`. After each upload the object is read back (HEAD) and only marked
//!   shipped if its lock mode is COMPLIANCE and its retain-until date is as asked.
//! * **Retries are idempotent.** A retry that finds the object already there (an upload that
//!   failed after the object was stored) compares checksums: equal is success; different
//!   content is an alarm (error log without PHI, counter) and is never overwritten.
//! * **Nothing is lost while the archive is away.** The local journal is the durable store:
//!   unshipped segments stay on disk and are retried with exponential backoff; the backlog and
//!   the age of the oldest unshipped segment are counted.
//!
//! # Object keys
//!
//! Hive-style partitions, so Athena, Trino or DuckDB read the archive as it is:
//!
//! ```text
//! PREFIX/v1/node=NODE/dt=YYYY-MM-DD/seg-FIRST-LAST.jsonl.zst    a sealed segment, zstd
//! PREFIX/v1/node=NODE/dt=YYYY-MM-DD/seg-FIRST-LAST.jsonl.gz     (or gzip: `compression`)
//!                                                               (dt: its first record's date)
//! PREFIX/v1/node=NODE/checkpoints/SIZE-TIMESTAMP.note           a signed checkpoint
//! ```
//!
//! # Progress
//!
//! `JOURNAL/archive-state.json` holds what is confirmed shipped to which target: the last
//! sealed segment's last seq and the last checkpoint file name (checkpoint names sort by size,
//! then time, so "everything up to this name" is well defined). It is written after each
//! confirmed object (temp file, fsync, rename, fsync the directory). A crash before that write
//! means the object is shipped again, found present with the same checksum, and counted as
//! shipped: never a duplicate, never a conflict.
//!
//! The directory store (`kind = "dir"`) is for the quickstart and tests. It is **not WORM**:
//! anyone with write access to the directory can change or delete what is in it.
//!
//! # The rooms
//!
//! [`config`] (`[archive]`), [`error`], [`store`] (the [`ArchiveStore`] contract every
//! backend keeps), [`layout`] (object keys), [`compression`] (zstd or gzip segments, bounded
//! decompression), [`dir`] (the local directory store), [`s3`] (S3 Object Lock), [`shipper`]
//! (the [`Archiver`]: what to ship, in which order, and what is durable at each step).

pub mod backfill;
pub mod compression;
pub mod config;
pub mod dir;
pub mod error;
pub mod layout;
pub mod s3;
pub mod shipper;
pub mod store;
#[cfg(test)]
mod tests;

pub use compression::SegmentCompression;
pub use config::{ArchiveConfig, ArchiveKind, SIX_YEARS_DAYS};
pub use dir::DirStore;
pub use error::ArchiveError;
pub use layout::Layout;
pub use s3::S3Store;
pub use shipper::{ArchiveStats, Archiver, Uploader, COMPRESS_NICENESS, RETENTION_SLACK};
pub use store::{sha256_b64, ArchiveStore, ListedVersion, ObjectInfo, PutResult};

use std::sync::Arc;

/// Build the store a config names (`None` for `kind = "none"`).
pub async fn open_store(cfg: &ArchiveConfig) -> Option<Arc<dyn ArchiveStore>> {
    match cfg.kind {
        ArchiveKind::None => None,
        ArchiveKind::Dir => Some(Arc::new(DirStore::new(&cfg.dir))),
        ArchiveKind::S3 => Some(Arc::new(S3Store::connect(cfg).await)),
    }
}
