//! `auditgate verify --journal DIR`: one journal directory, from its bytes alone.

use crate::durable::FileError;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::chain::{file_label, read_checkpoint_notes, ChainCheck, CheckpointCheck};
use super::columnar::{ColumnarCheck, CopyFiles};
use super::finding::Finding;
use super::report::ChainReport;
use crate::columnar::local::{parquet_path, seal_path};
use crate::journal::{list_segments, JournalError, SegmentName};
use crate::tlog::checkpoint::{self, CheckpointVerifier};

/// The result of verifying a journal directory.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The journal directory.
    pub journal: PathBuf,
    /// How much of the chain was checked, where it ends, and every problem found.
    #[serde(flatten)]
    pub chain: ChainReport,
    /// Files recovery moved aside after a crash (unacknowledged bytes; informational).
    pub quarantined: Vec<String>,
    /// Records before the first local segment that the archive progress file says were shipped
    /// and removed locally (`archive.delete_local_after_ship`): checked only by
    /// `verify --archive ... --journal`, as are checkpoint roots then.
    pub archived_records: u64,
}

impl Report {
    /// True when nothing was found.
    pub fn ok(&self) -> bool {
        self.chain.ok()
    }
}

/// Verify every segment of a journal directory.
///
/// On a running gateway's journal, a segment may be sealed (renamed) while it is being listed:
/// the check then starts again (at most three times). A torn tail reported for the open segment
/// of a running gateway may be a write in progress; check a stopped journal, or a copy, to be
/// sure.
pub fn verify_journal(dir: &Path) -> Result<Report, JournalError> {
    verify_journal_with(dir, &Options::default())
}

/// What `verify` checks beyond the chain.
#[derive(Default)]
pub struct Options {
    /// Check the signed checkpoints with this public key.
    pub key: Option<CheckpointVerifier>,
    /// Report consecutive checkpoints signed further apart than this.
    pub max_gap: Option<Duration>,
}

/// Verify every segment of a journal directory and, with a key, its signed checkpoints.
pub fn verify_journal_with(dir: &Path, options: &Options) -> Result<Report, JournalError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match verify_once(dir, options) {
            Err(JournalError::Io(FileError { source, .. }))
                if source.kind() == std::io::ErrorKind::NotFound && attempts < 3 => {}
            other => return other,
        }
    }
}

/// The columnar files beside a local sealed segment, as they are.
pub(super) fn local_copy_files(dir: &Path, first: u64, last: u64) -> CopyFiles {
    let read = |path: PathBuf| fs::read(&path).ok().map(|bytes| (file_label(&path), bytes));
    CopyFiles {
        parquet: read(parquet_path(dir, first, last)),
        seal: read(seal_path(dir, first, last)),
    }
}

/// Read a whole file into `buffer` (cleared first, its allocation kept).
fn read_into(path: &Path, mut buffer: Vec<u8>) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    buffer.clear();
    let mut file = fs::File::open(path)?;
    let len = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
    // Room for a somewhat larger segment after this one, so the buffer is not grown (copied
    // and faulted in again) for every segment a little longer than the last.
    buffer.reserve(len + len / 8);
    file.read_to_end(&mut buffer)?;
    Ok(buffer)
}

fn verify_once(dir: &Path, options: &Options) -> Result<Report, JournalError> {
    let segments = list_segments(dir)?;
    let no_segments = segments.is_empty();
    let mut quarantined = Vec::new();
    if let Ok(entries) = fs::read_dir(dir.join("quarantine")) {
        for e in entries.flatten() {
            quarantined.push(e.file_name().to_string_lossy().into_owned());
        }
        quarantined.sort();
    }

    let mut report = Report {
        journal: dir.to_path_buf(),
        chain: ChainReport {
            segments: segments.len(),
            key: options.key.as_ref().map(|k| k.text().to_string()),
            ..ChainReport::default()
        },
        quarantined,
        archived_records: 0,
    };
    let checkpoints = match &options.key {
        Some(key) => {
            let notes = read_checkpoint_notes(dir)?;
            let (check, count) =
                CheckpointCheck::new(notes, key, options.max_gap, &mut report.chain.findings);
            report.chain.checkpoints = count;
            Some(check)
        }
        None => None,
    };
    // Segments one at a time (memory stays bounded by the segment size), the lines of each on
    // every core.
    let mut chain = ChainCheck::new(checkpoints);
    let mut columnar = ColumnarCheck::new(options.key.as_ref());
    // Segments shipped to the archive and then removed locally: the chain starts after them,
    // and the roots are checked from the tree state kept at the seal before them, if a
    // checkpoint signed by the key vouches for it.
    if let Some((name, _)) = segments.first() {
        let first = name.first();
        if first > 1 && crate::journal::shipped::shipped_through_seq(dir) >= first - 1 {
            chain.start_after_archived(first);
            columnar.skip_to(first);
            report.archived_records = first - 1;
            if let Some(check) = chain.checkpoints.as_mut() {
                let seal_state = checkpoint::MerkleState::load_at_seal(dir, first - 1)?
                    .and_then(|s| s.frontier());
                if !seal_state.is_some_and(|f| check.start_at(f)) {
                    report.chain.findings.push(Finding::Unanchored {
                        first_local_seq: first,
                    });
                }
            }
        }
    }
    // A reader thread reads the next segment while this one is hashed (at most one ahead),
    // into a buffer handed back when its segment is done (a fresh buffer per segment would
    // cost a page fault and a zeroed page for every 4 KiB read).
    let (ahead_tx, ahead) = std::sync::mpsc::sync_channel(1);
    let (recycle, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader_segments: Vec<PathBuf> = segments.iter().map(|(_, p)| p.clone()).collect();
    let reader = std::thread::spawn(move || {
        for path in reader_segments {
            let buffer = recycled.try_recv().unwrap_or_default();
            let read = read_into(&path, buffer)
                .map_err(|source| JournalError::Io(FileError { path, source }));
            if ahead_tx.send(read).is_err() {
                break;
            }
        }
    });
    for (name, path) in &segments {
        // The reader sends one result per segment; no result means it stopped (it panicked).
        let bytes = ahead.recv().map_err(|_| {
            JournalError::Io(FileError {
                path: path.clone(),
                source: std::io::Error::other("the segment reader thread stopped"),
            })
        })??;
        let bytes = bytes::Bytes::from(bytes);
        let line_leaves = chain.feed(&file_label(path), name, &bytes, &mut report.chain.findings);
        if let SegmentName::Sealed { first, last } = name {
            let files = local_copy_files(dir, *first, *last);
            columnar.segment(
                (*first, *last),
                bytes.clone(),
                line_leaves,
                files,
                &mut report.chain.findings,
            );
        }
        // Unless a row comparison still holds them, the bytes' buffer reads the next segment.
        if let Ok(buffer) = bytes.try_into_mut() {
            let _ = recycle.send(buffer.into());
        }
    }
    columnar.finish(&mut report.chain.findings);
    report.chain.columnar_copies = columnar.copies;
    report.chain.segments_without_columnar = columnar.without_copy;
    drop(ahead);
    let _ = reader.join();
    if no_segments {
        // A journal always has an open segment once the gateway has started.
        report.chain.findings.push(Finding::Layout {
            detail: "no segment at all (an empty or wrong directory, or every segment removed)"
                .into(),
        });
    }
    report.chain.records = chain.records;
    let (seq, leaf) = chain.head;
    report.chain.head_seq = seq;
    if seq > 0 {
        report.chain.head_leaf = Some(hex::encode(leaf));
    }
    if let Some(check) = &chain.checkpoints {
        check.finish(seq, &mut report.chain.findings);
        report.chain.uncovered_records = seq.saturating_sub(check.newest_valid_size);
    }
    Ok(report)
}
