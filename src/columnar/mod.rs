//! The columnar copy of the trail: one Parquet file per sealed segment, and the signed seal
//! that lets a reader trust what it reads of it.
//!
//! The JSON segments are the evidence; the Parquet files are derived from them, rebuildable
//! from them, and checked against them. They exist because questions are fast on them: a
//! patient's access report reads the few row groups whose bloom filters may hold the patient,
//! and only the pages of the columns it needs.
//!
//! ```text
//! JOURNAL/seg-F-L.jsonl                    sealed segment (the evidence)
//! JOURNAL/seg-F-L.parquet                  its columnar copy (written after the seal)
//! JOURNAL/seg-F-L.seal                     the copy's seal: a signed note (see seal)
//!
//! PREFIX/v1/node=N/dt=D/seg-F-L.jsonl.zst             archived segment
//! PREFIX/v1/columnar/node=N/dt=D/seg-F-L.parquet      archived copy, same lock
//! PREFIX/v1/node=N/seals/seg-F-L.seal                 archived seal
//! ```
//!
//! The copies live under their own `columnar/` root because Athena and Trino read every file
//! of a partition directory: a table over the JSON copies must never meet a Parquet file, nor
//! the other way round. Seals sit beside the checkpoints, outside both tables.
//!
//! * [`config`]: the `[columnar]` section;
//! * [`local`]: the copies beside the segments in the journal directory;
//! * [`rows`]: the schema (versioned) and the rows built from journal lines;
//! * [`write`]: a segment to Parquet bytes, cut into units at every page;
//! * [`seal`]: the signed statement tying the file to the records and to the signed tree.

pub mod config;
pub mod local;
pub mod rows;
pub mod seal;
pub mod write;

pub use config::ColumnarConfig;
pub use rows::{schema, Rows, SCHEMA_VERSION};
pub use seal::{Seal, SealError};
pub use write::{write_segment, ColumnarCopy, WriteError, WriteOptions};

#[cfg(test)]
mod tests;
