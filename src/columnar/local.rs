//! The columnar copies in the journal directory: their names, making them once a segment is
//! sealed ([`keep_copies`], at idle priority), and reading them back for shipping
//! ([`ready_copy`]; the archiver ships each after its segment).
//!
//! ```text
//! JOURNAL/seg-F-L.jsonl      the sealed segment
//! JOURNAL/seg-F-L.parquet    its columnar copy
//! JOURNAL/seg-F-L.seal       the copy's signed seal (written after the copy)
//! ```
//!
//! A copy needs the tree of every record before the segment: the compact tree state the
//! checkpointer keeps at each seal (`checkpoints/seal-state-N.json`), or else the previous
//! segment's own seal. Until one of them exists the copy waits ([`MadeCopy::NotYet`]).
//!
//! Crash points: the Parquet file is written whole (temporary file, fsync, rename) before
//! its seal; a crash between the two leaves a copy without a seal, which is made again (the
//! same bytes: the file is a pure function of the segment and the options). Only a present
//! seal that opens, for the same records, makes a copy count as made.

use std::path::{Path, PathBuf};

use sha2::Digest as _;

use super::seal::{Seal, SealError};
use super::write::{write_segment, WriteError, WriteOptions};
use crate::durable::FileError;
use crate::journal::{list_segments, SegmentName};
use crate::tlog::checkpoint::{CheckpointSigner, MerkleState};
use crate::tlog::merkle::Frontier;

/// Why a copy could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ColumnarError {
    /// The segment could not become Parquet.
    #[error("columnar copy of records {first}..={last}: {source}")]
    Write {
        /// The segment's first seq.
        first: u64,
        /// Its last seq.
        last: u64,
        /// Why.
        source: WriteError,
    },
    /// The seal could not be made or read.
    #[error("columnar seal of records {first}..={last}: {source}")]
    Seal {
        /// The segment's first seq.
        first: u64,
        /// Its last seq.
        last: u64,
        /// Why.
        source: SealError,
    },
    /// A file could not be read or written.
    #[error(transparent)]
    Io(#[from] FileError),
}

impl ColumnarError {
    /// A bounded label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            ColumnarError::Write { .. } => "write",
            ColumnarError::Seal { .. } => "seal",
            ColumnarError::Io(_) => "io",
        }
    }
}

/// `seg-F-L.parquet` in `dir`.
pub fn parquet_path(dir: &Path, first: u64, last: u64) -> PathBuf {
    dir.join(file_name(first, last, "parquet"))
}

/// `seg-F-L.seal` in `dir`.
pub fn seal_path(dir: &Path, first: u64, last: u64) -> PathBuf {
    dir.join(file_name(first, last, "seal"))
}

/// `seg-F-L.EXT`, with the segment's 20-digit seqs.
pub fn file_name(first: u64, last: u64, extension: &str) -> String {
    format!("seg-{first:020}-{last:020}.{extension}")
}

/// The records `(first, last)` a `seg-F-L.EXT` file name names.
pub fn parse_file_name(name: &str, extension: &str) -> Option<(u64, u64)> {
    let stem = name
        .strip_prefix("seg-")?
        .strip_suffix(extension)?
        .strip_suffix('.')?;
    let (first, last) = stem.split_once('-')?;
    let seq = |digits: &str| {
        (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
    };
    Some((seq(first)?, seq(last)?))
}

/// The tree of every record before seq `first`, from what the journal directory keeps; `None`
/// if it does not know it (yet).
pub fn frontier_before(dir: &Path, first: u64) -> Result<Option<Frontier>, ColumnarError> {
    if first <= 1 {
        return Ok(Some(Frontier::new()));
    }
    let size = first - 1;
    if let Ok(Some(state)) = MerkleState::load_at_seal(dir, size) {
        if let Some(frontier) = state.frontier() {
            return Ok(Some(frontier));
        }
    }
    // The previous segment's seal states the tree at its end.
    let previous = list_segments(dir)
        .map_err(|e| FileError::on(dir)(std::io::Error::other(e.to_string())))?
        .into_iter()
        .find_map(|(name, _)| match name {
            SegmentName::Sealed { first, last } if last == size => Some(first),
            _ => None,
        });
    if let Some(prev_first) = previous {
        if let Ok(note) = std::fs::read(seal_path(dir, prev_first, size)) {
            if let Ok(frontier) = Seal::open_unverified(&note).and_then(|s| s.end_frontier()) {
                return Ok(Some(frontier));
            }
        }
    }
    Ok(None)
}

/// What making columnar copies takes: the key that signs their seals (the node's checkpoint
/// key) and how the files are cut.
#[derive(Clone)]
pub struct CopyMaker {
    /// The node's checkpoint signing key.
    pub signer: std::sync::Arc<CheckpointSigner>,
    /// How the Parquet files are cut.
    pub options: WriteOptions,
}

/// Make the copy of every sealed segment that has none, every `poll`, forever, oldest first,
/// each on a thread at idle priority ([`crate::background::run_idle`]): copies never take
/// CPU or disk the journal wants, and under a load that takes every core they wait. With an
/// archive, the archiver ships each copy once it is made. A segment whose copy cannot be made
/// yet (the tree before it is not stored) is not read. Failures are logged and counted; the
/// next round tries again.
pub async fn keep_copies(dir: PathBuf, maker: CopyMaker, poll: std::time::Duration) {
    loop {
        let segments = match list_segments(&dir) {
            Ok(segments) => segments,
            Err(e) => {
                crate::metrics::global()
                    .columnar_copies
                    .with_label_values(&["failed"])
                    .inc();
                tracing::error!(error = %e, "listing the journal for columnar copies failed; tried again at the next round");
                Vec::new()
            }
        };
        for (name, path) in segments {
            let SegmentName::Sealed { first, last } = name else {
                continue;
            };
            if seal_path(&dir, first, last).exists() {
                continue;
            }
            let (dir, maker) = (dir.clone(), maker.clone());
            let made = crate::background::run_idle("columnar-copy", move || {
                if frontier_before(&dir, first)?.is_none() {
                    return Ok(MadeCopy::NotYet);
                }
                let segment = std::fs::read(&path).map_err(FileError::on(&path))?;
                make_copy(&dir, first, last, &segment, &maker.signer, &maker.options)
            })
            .await;
            let failed = match made {
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => format!("{e} ({})", e.category()),
                Err(e) => format!("the copy thread failed: {e}"),
            };
            crate::metrics::global()
                .columnar_copies
                .with_label_values(&["failed"])
                .inc();
            tracing::error!(error = %failed, "making a columnar copy failed; tried again at the next round");
        }
        tokio::time::sleep(poll).await;
    }
}

/// The copy of segment `first..=last` in `dir` and its seal, if both are there and the seal
/// is for these records and this file (its signature is checked by whoever reads the copy
/// later: `verify`, `query`).
pub fn ready_copy(dir: &Path, first: u64, last: u64) -> Option<(Vec<u8>, Vec<u8>)> {
    // The seal first: it is written after the copy, so a seal means a complete copy.
    let note = std::fs::read(seal_path(dir, first, last)).ok()?;
    let seal = Seal::open_unverified(&note).ok()?;
    if seal.first != first || seal.last != last {
        return None;
    }
    let parquet = std::fs::read(parquet_path(dir, first, last)).ok()?;
    let fits = seal.file_size == parquet.len() as u64
        && seal.file_sha256 == <[u8; 32]>::from(sha2::Sha256::digest(&parquet));
    fits.then_some((parquet, note))
}

/// A copy goes to disk this many bytes at a time ([`crate::durable::replace_paced`]). In
/// `cargo bench --bench query` (64 appenders at top speed, copies made all along), appends
/// ran at 0.93x-0.94x of appends without copies with 256 KiB, as with a copy that wrote
/// nothing; 0.92x with 64 KiB, 0.88x with 1 MiB, 0.87x with one fsync of the whole file.
pub const PACED_WRITE_BYTES: usize = 256 << 10;

/// What [`make_copy`] did.
#[derive(Debug)]
pub enum MadeCopy {
    /// The copy and its signed seal are on disk: (Parquet bytes, seal note).
    Ready(Vec<u8>, Vec<u8>),
    /// The tree before the segment is not known yet (the checkpointer has not stored the seal
    /// state): try again later.
    NotYet,
}

/// The copy of the sealed segment `first..=last` (its bytes `segment`) in `dir`: read back if
/// it is there with a seal for the same records, else made, signed and written.
pub fn make_copy(
    dir: &Path,
    first: u64,
    last: u64,
    segment: &[u8],
    signer: &CheckpointSigner,
    options: &WriteOptions,
) -> Result<MadeCopy, ColumnarError> {
    if let Some((parquet, note)) = ready_copy(dir, first, last) {
        return Ok(MadeCopy::Ready(parquet, note));
    }
    let parquet_file = parquet_path(dir, first, last);
    let seal_file = seal_path(dir, first, last);
    let Some(frontier) = frontier_before(dir, first)? else {
        return Ok(MadeCopy::NotYet);
    };
    let copy =
        write_segment(segment, &frontier, options).map_err(|source| ColumnarError::Write {
            first,
            last,
            source,
        })?;
    let note = copy
        .seal
        .sign(signer)
        .map_err(|source| ColumnarError::Seal {
            first,
            last,
            source,
        })?;
    // Paced: the journal's fdatasync never waits behind more than two chunks of the copy.
    crate::durable::replace_paced(&parquet_file, &copy.parquet, PACED_WRITE_BYTES)
        .map_err(FileError::on(&parquet_file))?;
    // Crash point: the copy is durable, its seal not yet: the next attempt makes both again.
    crate::durable::replace(&seal_file, &note).map_err(FileError::on(&seal_file))?;
    let metrics = crate::metrics::global();
    metrics
        .columnar_copies
        .with_label_values(&["written"])
        .inc();
    metrics.columnar_bytes.inc_by(copy.parquet.len() as u64);
    Ok(MadeCopy::Ready(copy.parquet, note))
}
