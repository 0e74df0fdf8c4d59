//! `auditgate verify --journal DIR`: one journal directory, from its bytes alone.

use crate::durable::FileError;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};

use super::chain::{
    file_label, hashing_threads, read_checkpoint_notes, scan_whole_segment, ChainCheck,
    CheckpointCheck, SegmentResult,
};
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

/// A segment read and its lines checked by a worker: its bytes and what they hold.
type Scanned = Result<(bytes::Bytes, SegmentResult), JournalError>;

/// Check every segment: one worker per core reads a whole segment and checks its lines (at
/// most one segment more than there are workers is held at a time, besides those whose copies
/// are being compared, so memory stays bounded by a few segments), and this thread stitches
/// each to the chain and checks its columnar copy, in seq order. A segment's buffer goes back
/// to the workers once it is done (a fresh buffer per segment would cost a page fault and a
/// zeroed page for every 4 KiB read).
fn check_segments(
    dir: &Path,
    segments: &[(SegmentName, PathBuf)],
    chain: &mut ChainCheck,
    columnar: &mut ColumnarCheck<'_>,
    findings: &mut Vec<Finding>,
) -> Result<(), JournalError> {
    let workers = hashing_threads().min(segments.len()).max(1);
    // One segment alone is checked on every core; more, one core each.
    let threads_per_segment = (hashing_threads() / segments.len().max(1)).max(1);
    let next = AtomicUsize::new(0);
    let (ticket, tickets) = mpsc::channel::<()>();
    let tickets = Mutex::new(tickets);
    let recycled = Mutex::new(Vec::<Vec<u8>>::new());
    let (done, scanned) = mpsc::channel::<(usize, Scanned)>();
    let worker = |done: mpsc::Sender<(usize, Scanned)>| loop {
        // A ticket per segment read ahead; none left (the check ended): stop.
        if lock(&tickets).recv().is_err() {
            return;
        }
        let index = next.fetch_add(1, Ordering::Relaxed);
        let Some((name, path)) = segments.get(index) else {
            return;
        };
        let buffer = lock(&recycled).pop().unwrap_or_default();
        let failed = |source| {
            JournalError::Io(FileError {
                path: path.clone(),
                source,
            })
        };
        // A panic must still answer for its segment, or the check would wait for it forever.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            read_into(path, buffer).map_err(failed).map(|bytes| {
                let seg = scan_whole_segment(&file_label(path), name, &bytes, threads_per_segment);
                (bytes::Bytes::from(bytes), seg)
            })
        }))
        .unwrap_or_else(|_| {
            Err(failed(std::io::Error::other(
                "checking this segment failed (a bug: please report it)",
            )))
        });
        if done.send((index, result)).is_err() {
            return;
        }
    };
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let done = done.clone();
            scope.spawn(move || worker(done));
        }
        drop(done);
        let recycled = &recycled;
        // Owns the ticket sender: however it returns, the workers stop.
        let mut stitch = move || -> Result<(), JournalError> {
            for _ in 0..=workers {
                let _ = ticket.send(());
            }
            let mut early = BTreeMap::new();
            for (index, (name, path)) in segments.iter().enumerate() {
                let (bytes, seg) = loop {
                    if let Some(result) = early.remove(&index) {
                        break result?;
                    }
                    // Every worker gone before this segment came back (cannot happen: a worker
                    // answers for each segment it takes, even when its check panics).
                    let (at, result) = scanned.recv().map_err(|_| {
                        JournalError::Io(FileError {
                            path: path.clone(),
                            source: std::io::Error::other("a segment checking thread stopped"),
                        })
                    })?;
                    early.insert(at, result);
                };
                let line_leaves = chain.stitch(&file_label(path), name, seg, findings);
                if let SegmentName::Sealed { first, last } = name {
                    let files = local_copy_files(dir, *first, *last);
                    columnar.segment((*first, *last), bytes.clone(), line_leaves, files, findings);
                }
                // Unless a row comparison still holds them, the bytes' buffer reads a later
                // segment.
                if let Ok(buffer) = bytes.try_into_mut() {
                    lock(recycled).push(buffer.into());
                }
                let _ = ticket.send(());
            }
            Ok(())
        };
        stitch()
    })
}

/// A lock whose holder cannot leave its data half-changed (a queue of buffers or tickets).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Read a whole file into `buffer` (cleared first, its allocation kept).
fn read_into(path: &Path, mut buffer: Vec<u8>) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    buffer.clear();
    let mut file = fs::File::open(path)?;
    let len = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
    // Room for a somewhat larger segment after this one, so the buffer is not grown for every
    // segment a little longer than the last; one too small is replaced, not grown (growing
    // copies its whole old allocation).
    let want = len + len / 8;
    if buffer.capacity() < want {
        buffer = Vec::with_capacity(want);
    }
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
    // Segments are read and their lines checked on every core, a whole segment per worker;
    // the chain is then stitched here, in seq order.
    check_segments(
        dir,
        &segments,
        &mut chain,
        &mut columnar,
        &mut report.chain.findings,
    )?;
    columnar.finish(&mut report.chain.findings);
    report.chain.columnar_copies = columnar.copies;
    report.chain.segments_without_columnar = columnar.without_copy;
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
