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
//! Segments are read one at a time; the lines of each are parsed and hashed on every core, then
//! the chain is checked in order and stitched across segment boundaries.
//!
//! The checks work on segment bytes and checkpoint notes from any source: [`archive`] feeds
//! them the WORM archive's objects (`verify --archive`), which adds the archive's own findings
//! (delete markers, second versions, locks, missing segments, disagreement with the local
//! journal). A finding names its place: a journal file name, or an archive object key.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use std::time::Duration;

use crate::checkpoint::{self, CheckpointVerifier};
use crate::journal::{list_segments, JournalError, SegmentName};
use crate::merkle::{self, Frontier, Hash};
use crate::record::{self, LeafHash};

pub mod archive;

pub use archive::{verify_archive, ArchiveOptions, ArchiveReport, ArchiveVerifyError};

/// One problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// A complete line that is not a JSON record with `seq` and `prev`.
    Unparseable { segment: String, line: u64 },
    /// `seq` is not the previous record's seq + 1.
    SeqGap {
        segment: String,
        line: u64,
        expected: u64,
        found: u64,
    },
    /// `prev` is not the leaf hash of the previous record: a record before it was changed,
    /// removed or reordered.
    ChainBreak {
        segment: String,
        line: u64,
        seq: u64,
    },
    /// The segment does not end with a newline: bytes after the last complete line.
    TornTail { segment: String, bytes: u64 },
    /// A segment starts at a seq that does not follow the previous segment.
    SegmentGap {
        segment: String,
        expected_first: u64,
        found_first: u64,
    },
    /// A sealed segment's name disagrees with its records.
    NameMismatch {
        segment: String,
        named_first: u64,
        named_last: u64,
        first: u64,
        last: u64,
    },
    /// A sealed segment with no records.
    EmptySealed { segment: String },
    /// More than one open segment, or an open segment before a sealed one.
    Layout { detail: String },
    /// A checkpoint file that does not parse or is not signed by the given key.
    CheckpointSignature { checkpoint: String, reason: String },
    /// A validly signed checkpoint whose root is not the root of the records it covers: a
    /// record up to its size was changed, removed, inserted or reordered, or the chain was
    /// rewritten after it was signed.
    CheckpointMismatch { checkpoint: String, size: u64 },
    /// After the first [`Finding::CheckpointMismatch`], every later checkpoint covers the same
    /// changed records and cannot match either: counted here instead of listed one by one.
    LaterCheckpointMismatches { count: u64, last: String },
    /// A validly signed checkpoint covers more records than the journal holds: records were
    /// cut off the end.
    Truncated {
        checkpoint: String,
        size: u64,
        records: u64,
    },
    /// Two consecutive checkpoints were signed further apart than the heartbeat allows: the
    /// gateway was stopped, or checkpoints were removed.
    CheckpointGap {
        after: String,
        before: String,
        gap_secs: u64,
        max_secs: u64,
    },
    /// A key was given but the journal holds no checkpoint at all.
    NoCheckpoints,
    /// The records before `first_local_seq` were removed locally after shipping, and no tree
    /// state kept at that seal is vouched for by a signed checkpoint: the roots of the local
    /// records cannot be checked here (`verify --archive ... --journal` can).
    Unanchored { first_local_seq: u64 },
    /// Two validly signed checkpoints of the same size with different roots: the log forked,
    /// so at most one of them is consistent with the earlier checkpoints and the records.
    CheckpointConflict {
        size: u64,
        first: String,
        second: String,
    },

    // ---- archive findings (`verify --archive`); `key` is the object key ----
    /// An archived object with a delete marker: `hidden` when the marker is the current
    /// version (a plain GET or listing no longer shows the object).
    DeleteMarker { key: String, hidden: bool },
    /// An archived object with more than one version: it was written again after it was
    /// archived (the current version is what was checked).
    SecondVersion { key: String, versions: usize },
    /// An archived object (its current version) that is not locked in COMPLIANCE mode until
    /// a retain-until date.
    LockMissing {
        key: String,
        mode: Option<String>,
        retain_until: Option<i64>,
    },
    /// An archived object locked for less than the minimum retention (retain-until minus the
    /// time it was stored).
    RetentionShort {
        key: String,
        retained_days: u64,
        min_days: u64,
    },
    /// The SHA-256 the store recorded at upload is not the SHA-256 of the bytes it returns.
    ChecksumMismatch {
        key: String,
        recorded: String,
        actual: String,
    },
    /// An archived segment that does not decompress.
    Undecodable { key: String, reason: String },
    /// A listed object that could not be read (gone between the listing and the read).
    Unreadable { key: String, reason: String },
    /// An object under the archive's prefix that is neither a segment nor a checkpoint of the
    /// layout.
    UnexpectedObject { key: String },
    /// Records `first..=last` of a node are in no archived segment: a segment was removed, or
    /// (`after` the last archived one) the local progress file says it was shipped but it is
    /// not there. `local_copy`: the local journal still holds them (and they were checked).
    SegmentMissing {
        node: String,
        first: u64,
        last: u64,
        after: Option<String>,
        before: Option<String>,
        local_copy: bool,
    },
    /// The local progress file says this checkpoint was shipped, but the archive lacks it.
    CheckpointMissing { key: String },
    /// The local journal and the archive disagree about an object.
    LocalMismatch {
        key: String,
        local: String,
        detail: String,
    },
    /// Keys were given, but none is this node's (named `auditgate/NODE` or `NODE`): its
    /// checkpoints were not checked.
    NoKeyForNode { node: String, keys: Vec<String> },
    /// Nothing at all under the archive prefix.
    EmptyArchive { prefix: String },
}

/// Where a checkpoint is: a journal file name is shown under `checkpoints/`; an archive key or
/// a path is shown as it is.
fn checkpoint_place(label: &str) -> std::borrow::Cow<'_, str> {
    if label.contains('/') {
        label.into()
    } else {
        format!("{}/{label}", checkpoint::CHECKPOINT_DIR).into()
    }
}

/// Seconds since the epoch as RFC 3339 (UTC).
fn format_unix(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} (unix)"))
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Unparseable { segment, line } => {
                write!(f, "{segment}:{line}: line is not a valid record")
            }
            Finding::SeqGap { segment, line, expected, found } => {
                write!(f, "{segment}:{line}: seq {found}, expected {expected} (records missing, added or reordered)")
            }
            Finding::ChainBreak { segment, line, seq } => write!(
                f,
                "{segment}:{line}: seq {seq}: prev does not match the previous record's hash (a record before it was changed, removed or reordered)"
            ),
            Finding::TornTail { segment, bytes } => {
                write!(f, "{segment}: {bytes} bytes after the last complete line (torn or truncated tail)")
            }
            Finding::SegmentGap { segment, expected_first, found_first } => write!(
                f,
                "{segment}: starts at seq {found_first}, expected {expected_first} (a segment is missing or truncated)"
            ),
            Finding::NameMismatch { segment, named_first, named_last, first, last } => write!(
                f,
                "{segment}: named for seq {named_first}-{named_last} but holds {first}-{last} (truncated or extended)"
            ),
            Finding::EmptySealed { segment } => write!(f, "{segment}: sealed segment holds no records"),
            Finding::Layout { detail } => write!(f, "journal layout: {detail}"),
            Finding::CheckpointSignature { checkpoint, reason } => write!(
                f,
                "{}: not a valid checkpoint signed by the key: {reason}",
                checkpoint_place(checkpoint)
            ),
            Finding::CheckpointMismatch { checkpoint, size } => write!(
                f,
                "{}: signed root for records 1-{size} does not match the records (a record up to seq {size} was changed, removed, inserted or reordered)",
                checkpoint_place(checkpoint)
            ),
            Finding::LaterCheckpointMismatches { count, last } => write!(
                f,
                "{count} later checkpoints (up to {}) do not match either: they cover the same records",
                checkpoint_place(last)
            ),
            Finding::Truncated { checkpoint, size, records } => write!(
                f,
                "{}: signed for {size} records but the journal holds {records} (records {}-{size} were cut off)",
                checkpoint_place(checkpoint),
                records.saturating_add(1)
            ),
            Finding::CheckpointGap { after, before, gap_secs, max_secs } => write!(
                f,
                "checkpoints: {gap_secs} s between {after} and {before}, more than {max_secs} s (gateway stopped, or checkpoints removed)"
            ),
            Finding::Unanchored { first_local_seq } => write!(
                f,
                "records before seq {first_local_seq} were removed locally and no signed tree state anchors the rest: checkpoint roots cannot be checked here; use `verify --archive ARCHIVE --journal DIR`"
            ),
            Finding::NoCheckpoints => write!(f, "checkpoints: none found (removed, or the gateway never signed one)"),
            Finding::CheckpointConflict { size, first, second } => write!(
                f,
                "{} and {}: both validly signed for {size} records with different roots (the log forked: they are not consistent with each other)",
                checkpoint_place(first),
                checkpoint_place(second)
            ),
            Finding::DeleteMarker { key, hidden: true } => write!(
                f,
                "{key}: hidden by a delete marker (a plain GET or listing no longer shows it; its locked version is still stored)"
            ),
            Finding::DeleteMarker { key, hidden: false } => {
                write!(f, "{key}: has a delete marker in its version history")
            }
            Finding::SecondVersion { key, versions } => write!(
                f,
                "{key}: {versions} versions (written again after it was archived; the current version was checked)"
            ),
            Finding::LockMissing { key, mode, retain_until } => write!(
                f,
                "{key}: not locked in COMPLIANCE mode (lock mode {}, retain-until {})",
                mode.as_deref().unwrap_or("none"),
                retain_until.map_or_else(|| "none".to_string(), format_unix)
            ),
            Finding::RetentionShort { key, retained_days, min_days } => write!(
                f,
                "{key}: locked for {retained_days} days after it was stored, less than {min_days} days"
            ),
            Finding::ChecksumMismatch { key, recorded, actual } => write!(
                f,
                "{key}: stored with SHA-256 {recorded} but its bytes hash to {actual}"
            ),
            Finding::Undecodable { key, reason } => {
                write!(f, "{key}: does not decompress as its extension says: {reason}")
            }
            Finding::Unreadable { key, reason } => {
                write!(f, "{key}: listed but could not be read: {reason}")
            }
            Finding::UnexpectedObject { key } => write!(
                f,
                "{key}: not a segment or checkpoint of the archive layout (written by something else)"
            ),
            Finding::SegmentMissing { node, first, last, after, before, local_copy } => {
                write!(f, "node={node}: records {first}-{last} are in no archived segment")?;
                match (after, before) {
                    (Some(a), Some(b)) => write!(f, " (between {a} and {b})")?,
                    (Some(a), None) => write!(f, " (after {a}, though the local progress file says they were shipped)")?,
                    (None, Some(b)) => write!(f, " (before {b})")?,
                    (None, None) => write!(f, " (the local progress file says they were shipped)")?,
                }
                if *local_copy {
                    write!(f, "; the local journal still holds them")?;
                }
                write!(f, ": a segment was removed from the archive")
            }
            Finding::CheckpointMissing { key } => write!(
                f,
                "{key}: missing from the archive, though the local progress file says it was shipped (removed)"
            ),
            Finding::LocalMismatch { key, local, detail } => {
                write!(f, "{key}: the local journal disagrees ({local}): {detail}")
            }
            Finding::NoKeyForNode { node, keys } => write!(
                f,
                "node={node}: no --key is named auditgate/{node} (given: {}); its checkpoints were not checked",
                keys.join(", ")
            ),
            Finding::EmptyArchive { prefix } => write!(
                f,
                "{prefix}: no archived object at all (a wrong archive or prefix, nothing shipped yet, or everything hidden)"
            ),
        }
    }
}

/// The result of verifying a journal directory.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub journal: PathBuf,
    pub segments: usize,
    pub records: u64,
    /// The seq of the last record checked (0 if none).
    pub head_seq: u64,
    /// Hex leaf hash of the last record (the chain head), if any.
    pub head_leaf: Option<String>,
    /// Files recovery moved aside after a crash (unacknowledged bytes; informational).
    pub quarantined: Vec<String>,
    /// Signed checkpoints checked (0 when no key was given).
    pub checkpoints: usize,
    /// The public key checkpoints were checked with; `None`: not checked.
    pub key: Option<String>,
    /// Records after the newest valid checkpoint: not yet covered by a signature (normal for
    /// the last few seconds of a running gateway).
    pub uncovered_records: u64,
    /// Records before the first local segment that the archive progress file says were shipped
    /// and removed locally (`archive.delete_local_after_ship`): checked only by
    /// `verify --archive ... --journal`, as are checkpoint roots then.
    pub archived_records: u64,
    pub findings: Vec<Finding>,
}

impl Report {
    /// True when nothing was found.
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

#[derive(Deserialize)]
struct LineHead<'a> {
    seq: u64,
    #[serde(borrow)]
    prev: &'a str,
}

/// What one segment looks like from inside, before stitching.
struct SegmentResult {
    findings: Vec<Finding>,
    /// seq and `prev` of the first parseable line.
    first: Option<(u64, LeafHash)>,
    /// seq and leaf of the last parseable line.
    last: Option<(u64, LeafHash)>,
    records: u64,
    /// seq and leaf of every parseable line, in file order (for the Merkle tree).
    leaves: Vec<(u64, LeafHash)>,
}

fn decode_prev(prev: &str) -> Option<LeafHash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(prev, &mut out).ok()?;
    Some(out)
}

/// Parse the chain header of a line the way the writer formats it:
/// `{"v":N,"node":"TOKEN","seq":N,"prev":"<64 hex>","ts":"`. `None` when the line is not in
/// that exact form (the caller then falls back to a full JSON parse).
fn fast_head(line: &[u8]) -> Option<(u64, Option<LeafHash>)> {
    fn digits(s: &[u8]) -> Option<(u64, &[u8])> {
        let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 || n > 19 {
            return None;
        }
        let v = std::str::from_utf8(&s[..n]).ok()?.parse().ok()?;
        Some((v, &s[n..]))
    }
    let rest = line.strip_prefix(b"{\"v\":")?;
    let (_, rest) = digits(rest)?;
    let rest = rest.strip_prefix(b",\"node\":\"")?;
    let node_len = rest
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b))
        .count();
    let rest = rest[node_len..].strip_prefix(b"\",\"seq\":")?;
    let (seq, rest) = digits(rest)?;
    let rest = rest.strip_prefix(b",\"prev\":\"")?;
    if rest.len() < 64 + 8 || &rest[64..72] != b"\",\"ts\":\"" {
        return None;
    }
    let mut prev = [0u8; 32];
    let prev = hex::decode_to_slice(&rest[..64], &mut prev)
        .ok()
        .map(|()| prev);
    Some((seq, prev))
}

/// What one line says: its seq, its `prev` (if it decodes), and its own leaf hash. `None` for
/// a line that is not a record.
type LineScan = Option<(u64, Option<LeafHash>, LeafHash)>;

fn scan_line(line: &[u8]) -> LineScan {
    let (seq, prev) = match fast_head(line) {
        Some(head) => head,
        None => {
            let head = serde_json::from_slice::<LineHead>(line).ok()?;
            (head.seq, decode_prev(head.prev))
        }
    };
    Some((seq, prev, record::leaf_hash(line)))
}

/// Hash and parse every line of a segment on `threads` threads; the chain is then checked in
/// order by [`check_segment`]. Returns the lines' scans and the length of a torn tail.
fn scan_segment(bytes: &[u8], threads: usize) -> (Vec<LineScan>, usize) {
    let mut lines = Vec::new();
    let mut start = 0;
    for i in memchr::memchr_iter(b'\n', bytes) {
        lines.push(&bytes[start..i]);
        start = i + 1;
    }
    let torn = bytes.len() - start;
    let mut scans = vec![None; lines.len()];
    let chunk = lines.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        for (out, input) in scans.chunks_mut(chunk).zip(lines.chunks(chunk)) {
            scope.spawn(move || {
                for (o, line) in out.iter_mut().zip(input) {
                    *o = scan_line(line);
                }
            });
        }
    });
    (scans, torn)
}

fn check_segment(name: &str, bytes: &[u8], threads: usize) -> SegmentResult {
    let mut result = SegmentResult {
        findings: Vec::new(),
        first: None,
        last: None,
        records: 0,
        leaves: Vec::new(),
    };
    let (scans, torn) = scan_segment(bytes, threads);
    result.leaves.reserve(scans.len());
    for (i, scan) in scans.into_iter().enumerate() {
        let line_no = i as u64 + 1;
        let Some((seq, prev, leaf)) = scan else {
            result.findings.push(Finding::Unparseable {
                segment: name.to_string(),
                line: line_no,
            });
            // Re-synchronise: the next line's prev cannot be checked against this one.
            result.last = None;
            continue;
        };
        result.records += 1;
        match result.last {
            None if result.first.is_none() => {
                result.first = Some((seq, prev.unwrap_or([0xff; 32])));
            }
            None => {}
            Some((last_seq, last_leaf)) => {
                if seq != last_seq.saturating_add(1) {
                    result.findings.push(Finding::SeqGap {
                        segment: name.to_string(),
                        line: line_no,
                        expected: last_seq.saturating_add(1),
                        found: seq,
                    });
                }
                if prev != Some(last_leaf) {
                    result.findings.push(Finding::ChainBreak {
                        segment: name.to_string(),
                        line: line_no,
                        seq,
                    });
                }
            }
        }
        result.last = Some((seq, leaf));
        result.leaves.push((seq, leaf));
    }
    if torn > 0 {
        result.findings.push(Finding::TornTail {
            segment: name.to_string(),
            bytes: torn as u64,
        });
    }
    result
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
            Err(JournalError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && attempts < 3 => {}
            other => return other,
        }
    }
}

/// The signed checkpoints being matched against the records as they stream past.
struct CheckpointCheck {
    /// (size, root, label), by size.
    pending: Vec<(u64, Hash, String)>,
    next: usize,
    frontier: Frontier,
    /// The records stopped following each other (already a chain or archive finding): roots
    /// past this point cannot be computed.
    broken: bool,
    newest_valid_size: u64,
    /// Mismatches after the first one: (count, last label).
    later_mismatches: (u64, String),
    first_mismatch_seen: bool,
}

/// The checkpoint notes of a journal directory: (file name, bytes), in name order.
fn read_checkpoint_notes(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, JournalError> {
    let mut notes = Vec::new();
    for path in checkpoint::list_checkpoint_files(dir)? {
        let bytes = fs::read(&path).map_err(|source| JournalError::Io {
            path: path.clone(),
            source,
        })?;
        notes.push((file_label(&path), bytes));
    }
    Ok(notes)
}

impl CheckpointCheck {
    /// Open every note (`label`, bytes) with `key`. Reports notes that are not validly signed,
    /// consecutive checkpoints signed further apart than `max_gap`, and two valid checkpoints
    /// of the same size with different roots (a fork: they cannot both be this log's). The
    /// roots themselves are compared as records are [`fed`](Self::feed). Returns the check and
    /// the number of notes.
    fn new(
        notes: Vec<(String, Vec<u8>)>,
        key: &CheckpointVerifier,
        max_gap: Option<Duration>,
        findings: &mut Vec<Finding>,
    ) -> (Self, usize) {
        if notes.is_empty() {
            findings.push(Finding::NoCheckpoints);
        }
        let count = notes.len();
        let mut pending = Vec::new();
        let mut times = Vec::new();
        for (label, bytes) in notes {
            match key.open(&bytes) {
                Ok(cp) => {
                    if let Some(t) = cp.unix_time() {
                        times.push((t, label.clone()));
                    }
                    pending.push((cp.size, cp.root, label));
                }
                Err(e) => findings.push(Finding::CheckpointSignature {
                    checkpoint: label,
                    reason: e.to_string(),
                }),
            }
        }
        if let Some(max) = max_gap {
            times.sort_by(|a, b| a.0.total_cmp(&b.0));
            for pair in times.windows(2) {
                let gap = pair[1].0 - pair[0].0;
                if gap > max.as_secs_f64() {
                    findings.push(Finding::CheckpointGap {
                        after: pair[0].1.clone(),
                        before: pair[1].1.clone(),
                        gap_secs: gap as u64,
                        max_secs: max.as_secs(),
                    });
                }
            }
        }
        pending.sort_by_key(|(size, _, _)| *size);
        for pair in pending.windows(2) {
            if pair[0].0 == pair[1].0 && pair[0].1 != pair[1].1 {
                findings.push(Finding::CheckpointConflict {
                    size: pair[0].0,
                    first: pair[0].2.clone(),
                    second: pair[1].2.clone(),
                });
            }
        }
        let mut check = CheckpointCheck {
            pending,
            next: 0,
            frontier: Frontier::new(),
            broken: false,
            newest_valid_size: 0,
            later_mismatches: (0, String::new()),
            first_mismatch_seen: false,
        };
        check.settle(findings);
        (check, count)
    }

    /// Continue from `frontier` (the tree of records removed locally) if a signed checkpoint
    /// of its size has its root; the checkpoints before it cannot be checked here. Returns
    /// whether it was accepted.
    fn start_at(&mut self, frontier: Frontier) -> bool {
        let vouched = self
            .pending
            .iter()
            .any(|(size, root, _)| *size == frontier.size() && *root == frontier.root());
        if !vouched {
            self.broken = true;
            return false;
        }
        self.next = self
            .pending
            .iter()
            .position(|(size, _, _)| *size >= frontier.size())
            .unwrap_or(self.pending.len());
        self.frontier = frontier;
        let mut ignored = Vec::new();
        self.settle(&mut ignored);
        true
    }

    fn feed(&mut self, seq: u64, leaf: &LeafHash, findings: &mut Vec<Finding>) {
        if self.broken {
            return;
        }
        if seq != self.frontier.size() + 1 {
            self.broken = true;
            return;
        }
        self.frontier.push(merkle::hash_of(leaf));
        self.settle(findings);
    }

    /// Compare every checkpoint of the current tree size.
    fn settle(&mut self, findings: &mut Vec<Finding>) {
        while let Some((size, root, label)) = self.pending.get(self.next) {
            if *size != self.frontier.size() {
                break;
            }
            if *root == self.frontier.root() {
                self.newest_valid_size = *size;
            } else if self.first_mismatch_seen {
                self.later_mismatches.0 += 1;
                self.later_mismatches.1 = label.clone();
            } else {
                self.first_mismatch_seen = true;
                findings.push(Finding::CheckpointMismatch {
                    checkpoint: label.clone(),
                    size: *size,
                });
            }
            self.next += 1;
        }
    }

    /// The validly signed checkpoints that cover more records than `head_seq`: (size, label).
    fn beyond(&self, head_seq: u64) -> impl Iterator<Item = (u64, &str)> {
        self.pending[self.next..]
            .iter()
            .filter(move |(size, _, _)| *size > head_seq)
            .map(|(size, _, label)| (*size, label.as_str()))
    }

    /// The count of mismatches after the first, as one finding.
    fn finish_mismatches(&self, findings: &mut Vec<Finding>) {
        let (count, last) = &self.later_mismatches;
        if *count > 0 {
            findings.push(Finding::LaterCheckpointMismatches {
                count: *count,
                last: last.clone(),
            });
        }
    }

    /// The mismatch count, and checkpoints beyond the records: the records were cut short.
    fn finish(&self, head_seq: u64, findings: &mut Vec<Finding>) {
        self.finish_mismatches(findings);
        for (size, label) in self.beyond(head_seq) {
            findings.push(Finding::Truncated {
                checkpoint: label.to_string(),
                size,
                records: head_seq,
            });
        }
    }
}

/// How many threads hash the lines of one segment.
fn hashing_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8)
}

/// The chain across segments handed over in seq order, from any source (journal files or
/// archived objects): each segment's own lines ([`check_segment`]), then the stitching across
/// segment boundaries, and the records fed to the checkpoint check.
struct ChainCheck {
    threads: usize,
    /// The chain position after the last record fed; before the first: seq 0, the genesis leaf.
    head: (u64, LeafHash),
    expected_first: u64,
    seen_open: bool,
    segments: usize,
    records: u64,
    checkpoints: Option<CheckpointCheck>,
    /// The record before the first one fed is not available (it is in the archive only): the
    /// first record's `prev` cannot be checked.
    head_unknown: bool,
}

impl ChainCheck {
    fn new(checkpoints: Option<CheckpointCheck>) -> Self {
        ChainCheck {
            threads: hashing_threads(),
            head: (0, [0u8; 32]),
            expected_first: 1,
            seen_open: false,
            segments: 0,
            records: 0,
            checkpoints,
            head_unknown: false,
        }
    }

    /// The records before `first` were shipped to the archive and removed locally: start the
    /// chain there. Checkpoint roots cannot be recomputed without those records.
    fn start_after_archived(&mut self, first: u64) {
        self.expected_first = first;
        self.head = (first - 1, [0u8; 32]);
        self.head_unknown = true;
    }

    /// Check one segment's bytes (`label` names it in findings) and stitch it to the chain.
    /// An open segment's trailing zeros are preallocated space and are ignored; a sealed
    /// segment is cut to its records, so zeros there are reported (as a torn tail).
    fn feed(&mut self, label: &str, name: &SegmentName, bytes: &[u8], findings: &mut Vec<Finding>) {
        let bytes = match name {
            SegmentName::Open { .. } => &bytes[..crate::journal::used_len(bytes)],
            SegmentName::Sealed { .. } => bytes,
        };
        let seg = check_segment(label, bytes, self.threads);
        self.segments += 1;
        if self.seen_open {
            findings.push(Finding::Layout {
                detail: format!("{label} follows the open segment"),
            });
        }
        if name.first() != self.expected_first {
            findings.push(Finding::SegmentGap {
                segment: label.to_string(),
                expected_first: self.expected_first,
                found_first: name.first(),
            });
        }
        if let Some((first_seq, first_prev)) = seg.first {
            if first_seq != name.first() {
                findings.push(Finding::SeqGap {
                    segment: label.to_string(),
                    line: 1,
                    expected: name.first(),
                    found: first_seq,
                });
            }
            let (head_seq, head_leaf) = self.head;
            if !self.head_unknown && first_prev != head_leaf && first_seq == head_seq + 1 {
                findings.push(Finding::ChainBreak {
                    segment: label.to_string(),
                    line: 1,
                    seq: first_seq,
                });
            }
        }
        match name {
            SegmentName::Sealed { first, last } => match (seg.first, seg.last) {
                (Some((f, _)), Some((l, _))) if f == *first && l == *last => {}
                (Some((f, _)), Some((l, _))) => findings.push(Finding::NameMismatch {
                    segment: label.to_string(),
                    named_first: *first,
                    named_last: *last,
                    first: f,
                    last: l,
                }),
                _ => findings.push(Finding::EmptySealed {
                    segment: label.to_string(),
                }),
            },
            SegmentName::Open { .. } => self.seen_open = true,
        }
        findings.extend(seg.findings);
        if let Some(check) = self.checkpoints.as_mut() {
            for (seq, leaf) in &seg.leaves {
                check.feed(*seq, leaf, findings);
            }
        }
        self.records += seg.records;
        if let Some(last) = seg.last {
            self.head = last;
            self.head_unknown = false;
        }
        self.expected_first = match name {
            SegmentName::Sealed { last, .. } => last.saturating_add(1),
            SegmentName::Open { .. } => seg.last.map(|(s, _)| s + 1).unwrap_or(name.first()),
        };
    }

    /// The records before `first` that were not fed are accounted for by a finding already
    /// (a missing or unreadable archived segment): continue at `first` without reporting the
    /// gap again. Roots of checkpoints past the gap cannot be computed any more.
    fn skip_to(&mut self, first: u64) {
        if first > self.expected_first {
            self.expected_first = first;
        }
    }
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
        segments: segments.len(),
        records: 0,
        head_seq: 0,
        head_leaf: None,
        quarantined,
        checkpoints: 0,
        key: options.key.as_ref().map(|k| k.text().to_string()),
        uncovered_records: 0,
        archived_records: 0,
        findings: Vec::new(),
    };
    let checkpoints = match &options.key {
        Some(key) => {
            let notes = read_checkpoint_notes(dir)?;
            let (check, count) =
                CheckpointCheck::new(notes, key, options.max_gap, &mut report.findings);
            report.checkpoints = count;
            Some(check)
        }
        None => None,
    };
    // Segments one at a time (memory stays bounded by the segment size), the lines of each on
    // every core.
    let mut chain = ChainCheck::new(checkpoints);
    // Segments shipped to the archive and then removed locally: the chain starts after them,
    // and the roots are checked from the tree state kept at the seal before them, if a
    // checkpoint signed by the key vouches for it.
    if let Some((name, _)) = segments.first() {
        let first = name.first();
        if first > 1 && crate::archive::shipped_through_seq(dir) >= first - 1 {
            chain.start_after_archived(first);
            report.archived_records = first - 1;
            if let Some(check) = chain.checkpoints.as_mut() {
                let seal_state = checkpoint::MerkleState::load_at_seal(dir, first - 1)?
                    .and_then(|s| s.frontier());
                if !seal_state.is_some_and(|f| check.start_at(f)) {
                    report.findings.push(Finding::Unanchored {
                        first_local_seq: first,
                    });
                }
            }
        }
    }
    // A reader thread reads the next segment while this one is hashed (at most one ahead).
    let (ahead_tx, ahead) = std::sync::mpsc::sync_channel(1);
    let reader_segments: Vec<PathBuf> = segments.iter().map(|(_, p)| p.clone()).collect();
    let reader = std::thread::spawn(move || {
        for path in reader_segments {
            let read = fs::read(&path).map_err(|source| JournalError::Io { path, source });
            if ahead_tx.send(read).is_err() {
                break;
            }
        }
    });
    for (name, path) in &segments {
        let bytes = ahead
            .recv()
            .expect("the reader sends one result per segment")?;
        chain.feed(&file_label(path), name, &bytes, &mut report.findings);
    }
    drop(ahead);
    let _ = reader.join();
    if no_segments {
        // A journal always has an open segment once the gateway has started.
        report.findings.push(Finding::Layout {
            detail: "no segment at all (an empty or wrong directory, or every segment removed)"
                .into(),
        });
    }
    report.records = chain.records;
    let (seq, leaf) = chain.head;
    report.head_seq = seq;
    if seq > 0 {
        report.head_leaf = Some(hex::encode(leaf));
    }
    if let Some(check) = &chain.checkpoints {
        check.finish(seq, &mut report.findings);
        report.uncovered_records = seq.saturating_sub(check.newest_valid_size);
    }
    Ok(report)
}

fn file_label(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::tests::event;
    use crate::journal::{Journal, JournalConfig};
    use std::io::Write;

    /// A journal of `n` records in 4 KiB segments; returns the dir and segment paths.
    fn journal(n: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = JournalConfig {
            segment_max_bytes: 4096,
            ..JournalConfig::default()
        };
        let (j, _) = Journal::open(tmp.path(), "n1", &cfg).unwrap();
        for i in 0..n {
            j.append_blocking(&event(i)).unwrap();
        }
        drop(j);
        let paths = list_segments(tmp.path())
            .unwrap()
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        (tmp, paths)
    }

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        let mut f = fs::File::create(path).unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
    }

    #[test]
    fn the_fast_header_parse_agrees_with_serde_and_falls_back() {
        let (_tmp, paths) = journal(3);
        let bytes = fs::read(&paths[0]).unwrap();
        let text = std::str::from_utf8(&bytes[..crate::journal::used_len(&bytes)]).unwrap();
        for line in text.lines() {
            let fast = fast_head(line.as_bytes()).expect("writer lines take the fast path");
            let slow: LineHead = serde_json::from_str(line).unwrap();
            assert_eq!(fast, (slow.seq, decode_prev(slow.prev)));
        }
        // Same fields, other order: not the writer's form, still a record via the fallback.
        let reordered = r#"{"seq":7,"v":1,"prev":"00","node":"n"}"#;
        assert_eq!(fast_head(reordered.as_bytes()), None);
        assert_eq!(
            scan_line(reordered.as_bytes()).map(|(s, p, _)| (s, p)),
            Some((7, None))
        );
        assert_eq!(scan_line(b"{\"v\":1,\"node\":\"n\",\"seq\":"), None);
        assert_eq!(scan_line(b"not json"), None);
    }

    #[test]
    fn an_untouched_journal_verifies() {
        let (tmp, paths) = journal(60);
        assert!(paths.len() >= 3);
        let r = verify_journal(tmp.path()).unwrap();
        assert!(r.ok(), "{:?}", r.findings);
        assert_eq!(r.records, 60);
        assert_eq!(r.head_seq, 60);
    }

    #[test]
    fn one_changed_byte_is_a_chain_break_at_the_next_record() {
        let (tmp, paths) = journal(60);
        let mut l = lines(&paths[1]);
        l[2] = l[2].replace("req-", "reQ-");
        write_lines(&paths[1], &l);
        let r = verify_journal(tmp.path()).unwrap();
        let label = file_label(&paths[1]);
        assert!(
            r.findings.iter().any(
                |f| matches!(f, Finding::ChainBreak { segment, line: 4, .. } if *segment == label)
            ),
            "{:?}",
            r.findings
        );
    }

    #[test]
    fn a_deleted_line_is_a_seq_gap_and_a_name_mismatch() {
        let (tmp, paths) = journal(60);
        let mut l = lines(&paths[0]);
        l.remove(3);
        write_lines(&paths[0], &l);
        let r = verify_journal(tmp.path()).unwrap();
        assert!(
            r.findings.iter().any(|f| matches!(
                f,
                Finding::SeqGap {
                    line: 4,
                    expected: 4,
                    found: 5,
                    ..
                }
            )),
            "{:?}",
            r.findings
        );
        assert!(r.findings.iter().any(|f| matches!(
            f,
            Finding::ChainBreak {
                line: 4,
                seq: 5,
                ..
            }
        )));
    }

    #[test]
    fn swapped_lines_are_found() {
        let (tmp, paths) = journal(60);
        let mut l = lines(&paths[0]);
        l.swap(1, 2);
        write_lines(&paths[0], &l);
        let r = verify_journal(tmp.path()).unwrap();
        assert!(
            r.findings
                .iter()
                .any(|f| matches!(f, Finding::SeqGap { line: 2, .. })),
            "{:?}",
            r.findings
        );
    }

    #[test]
    fn a_truncated_sealed_segment_is_found() {
        let (tmp, paths) = journal(60);
        let bytes = fs::read(&paths[0]).unwrap();
        fs::write(&paths[0], &bytes[..bytes.len() - 40]).unwrap();
        let r = verify_journal(tmp.path()).unwrap();
        assert!(
            r.findings
                .iter()
                .any(|f| matches!(f, Finding::TornTail { .. })),
            "{:?}",
            r.findings
        );
        assert!(r
            .findings
            .iter()
            .any(|f| matches!(f, Finding::NameMismatch { .. })));
    }

    #[test]
    fn a_removed_middle_segment_is_found() {
        let (tmp, paths) = journal(60);
        fs::remove_file(&paths[1]).unwrap();
        let r = verify_journal(tmp.path()).unwrap();
        let label = file_label(&paths[2]);
        assert!(
            r.findings
                .iter()
                .any(|f| matches!(f, Finding::SegmentGap { segment, .. } if *segment == label)),
            "{:?}",
            r.findings
        );
    }

    mod checkpoints {
        use super::*;
        use crate::checkpoint::{write_key_pair, CheckpointSigner};
        use crate::journal::{CheckpointTiming, Checkpointing};
        use std::time::{Duration, SystemTime};

        struct Signed {
            _tmp: tempfile::TempDir,
            dir: PathBuf,
            key: PathBuf,
        }

        impl Signed {
            fn verifier(&self) -> CheckpointVerifier {
                CheckpointVerifier::load(
                    crate::checkpoint::public_key_path(&self.key)
                        .to_str()
                        .unwrap(),
                )
                .unwrap()
            }
            fn check(&self) -> Report {
                let options = Options {
                    key: Some(self.verifier()),
                    max_gap: Some(Duration::from_secs(180)),
                };
                verify_journal_with(&self.dir, &options).unwrap()
            }
            fn segments(&self) -> Vec<PathBuf> {
                list_segments(&self.dir)
                    .unwrap()
                    .into_iter()
                    .map(|(_, p)| p)
                    .collect()
            }
        }

        /// `n` records in 4 KiB segments, a checkpoint after every batch.
        fn signed_journal(n: usize) -> Signed {
            let tmp = tempfile::tempdir().unwrap();
            let key = tmp.path().join("checkpoint.key");
            write_key_pair(&key, "auditgate/n1").unwrap();
            let dir = tmp.path().join("journal");
            let cfg = JournalConfig {
                segment_max_bytes: 4096,
                ..JournalConfig::default()
            };
            let checkpointing = Checkpointing {
                signer: CheckpointSigner::load(&key, false, "unused").unwrap(),
                timing: CheckpointTiming {
                    interval: Duration::ZERO,
                    heartbeat: Duration::from_secs(3600),
                },
            };
            let (j, _) =
                Journal::open_with_checkpoints(&dir, "n1", &cfg, Some(checkpointing)).unwrap();
            for i in 0..n {
                j.append_blocking(&event(i)).unwrap();
            }
            let stats = j.checkpoint_stats().unwrap().clone();
            // The final head is signed as the writer stops, and dropping the last handle waits
            // until the checkpoint thread stored it.
            drop(j);
            assert_eq!(
                stats.last_size.load(std::sync::atomic::Ordering::Acquire),
                n as u64,
                "a checkpoint covers all {n} records"
            );
            Signed {
                _tmp: tmp,
                dir,
                key,
            }
        }

        fn content_lines(path: &Path) -> Vec<String> {
            let bytes = fs::read(path).unwrap();
            std::str::from_utf8(&bytes[..crate::journal::used_len(&bytes)])
                .unwrap()
                .lines()
                .map(String::from)
                .collect()
        }

        /// Recompute every `prev` from the lines as they are now: a rewrite by someone with
        /// write access to the disk but not the signing key.
        fn rewrite_chain(paths: &[PathBuf]) {
            let mut prev = [0u8; 32];
            for path in paths {
                let mut out = Vec::new();
                for line in content_lines(path) {
                    let at = line.find("\"prev\":\"").unwrap() + 8;
                    let line = format!("{}{}{}", &line[..at], hex::encode(prev), &line[at + 64..]);
                    prev = record::leaf_hash(line.as_bytes());
                    out.push(line);
                }
                write_lines(path, &out);
            }
        }

        #[test]
        fn a_signed_journal_verifies_with_its_key() {
            let j = signed_journal(40);
            let report = j.check();
            assert!(report.ok(), "{:?}", report.findings);
            assert!(report.checkpoints >= 2, "{report:?}");
            assert!(j.segments().len() > 2, "several sealed segments");
            assert_eq!(report.uncovered_records, 0);
            // Every sealed segment ends on a checkpoint.
            let sizes: Vec<u64> = checkpoint::list_checkpoint_files(&j.dir)
                .unwrap()
                .iter()
                .filter_map(|p| checkpoint::size_of_file_name(&p.file_name()?.to_string_lossy()))
                .collect();
            for (name, _) in list_segments(&j.dir).unwrap() {
                if let SegmentName::Sealed { last, .. } = name {
                    assert!(
                        sizes.contains(&last),
                        "no checkpoint at seq {last}: {sizes:?}"
                    );
                }
            }
        }

        #[test]
        fn a_chain_rewritten_without_the_key_is_found_only_by_the_checkpoints() {
            let j = signed_journal(40);
            let paths = j.segments();
            let mut lines = content_lines(&paths[1]);
            lines[0] = lines[0].replacen("\"action\":\"R\"", "\"action\":\"D\"", 1);
            assert!(lines[0].contains("\"action\":\"D\""), "{}", lines[0]);
            write_lines(&paths[1], &lines);
            rewrite_chain(&paths);
            // The chain alone cannot see it...
            let plain = verify_journal(&j.dir).unwrap();
            assert!(plain.ok(), "{:?}", plain.findings);
            // ...the signed roots can.
            let report = j.check();
            assert!(!report.ok());
            assert!(report
                .findings
                .iter()
                .any(|f| matches!(f, Finding::CheckpointMismatch { .. })));
            assert!(
                report.findings.iter().all(|f| matches!(
                    f,
                    Finding::CheckpointMismatch { .. } | Finding::LaterCheckpointMismatches { .. }
                )),
                "{:?}",
                report.findings
            );
        }

        #[test]
        fn a_tail_cut_at_a_line_boundary_is_found() {
            let j = signed_journal(40);
            let paths = j.segments();
            let open = paths.last().unwrap();
            let lines = content_lines(open);
            assert!(lines.len() >= 2, "the open segment holds records");
            write_lines(open, &lines[..lines.len() - 2]);
            assert!(
                verify_journal(&j.dir).unwrap().ok(),
                "invisible to the chain"
            );
            let report = j.check();
            assert!(
                report.findings.iter().any(|f| matches!(
                    f,
                    Finding::Truncated {
                        size: 40,
                        records: 38,
                        ..
                    }
                )),
                "{:?}",
                report.findings
            );
        }

        #[test]
        fn checkpoints_under_another_key_or_forged_roots_are_found() {
            let j = signed_journal(12);
            // Another key: nothing verifies.
            let (_, other) = crate::checkpoint::generate_key("auditgate/n1").unwrap();
            let options = Options {
                key: Some(CheckpointVerifier::from_text(&other).unwrap()),
                max_gap: None,
            };
            let report = verify_journal_with(&j.dir, &options).unwrap();
            assert!(report
                .findings
                .iter()
                .all(|f| matches!(f, Finding::CheckpointSignature { .. })));
            assert!(!report.findings.is_empty());

            // The right key signing a tree that is not this journal's (a checkpoint not
            // consistent with the earlier ones), and one signed an hour before the others.
            let signer = CheckpointSigner::load(&j.key, false, "unused").unwrap();
            let forged = signer.sign(6, Hash([9; 32]), SystemTime::now());
            let forged_name = checkpoint::file_name(6, SystemTime::now());
            fs::write(
                j.dir.join(checkpoint::CHECKPOINT_DIR).join(&forged_name),
                forged,
            )
            .unwrap();
            let report = j.check();
            assert!(
                report.findings.contains(&Finding::CheckpointMismatch {
                    checkpoint: forged_name,
                    size: 6
                }),
                "{:?}",
                report.findings
            );

            let old = SystemTime::now() - Duration::from_secs(3600);
            let frontier = {
                let mut f = Frontier::new();
                for leaf in crate::journal::read_leaf_hashes(&j.dir, 1, 3).unwrap() {
                    f.push(merkle::hash_of(&leaf));
                }
                f
            };
            let early = signer.sign(3, frontier.root(), old);
            fs::write(
                j.dir
                    .join(checkpoint::CHECKPOINT_DIR)
                    .join(checkpoint::file_name(3, old)),
                early,
            )
            .unwrap();
            let report = j.check();
            assert!(report
                .findings
                .iter()
                .any(|f| matches!(f, Finding::CheckpointGap { gap_secs, max_secs: 180, .. } if *gap_secs >= 3599)), "{:?}", report.findings);
        }

        #[test]
        fn two_checkpoints_of_one_size_with_different_roots_are_a_conflict() {
            let j = signed_journal(12);
            let files = checkpoint::list_checkpoint_files(&j.dir).unwrap();
            let existing = file_label(&files[1]);
            let size = checkpoint::size_of_file_name(&existing).unwrap();
            let later = SystemTime::now() + Duration::from_secs(1);
            let signer = CheckpointSigner::load(&j.key, false, "unused").unwrap();
            let forged = checkpoint::file_name(size, later);
            fs::write(
                j.dir.join(checkpoint::CHECKPOINT_DIR).join(&forged),
                signer.sign(size, Hash([9; 32]), later),
            )
            .unwrap();
            let report = j.check();
            assert!(
                report.findings.contains(&Finding::CheckpointConflict {
                    size,
                    first: existing,
                    second: forged.clone(),
                }),
                "{:?}",
                report.findings
            );
            assert!(report
                .findings
                .iter()
                .any(|f| f.to_string().contains(&format!("checkpoints/{forged}"))));
        }

        #[test]
        fn segments_removed_after_shipping_are_accounted_for_by_the_archive_progress_file() {
            let j = signed_journal(40);
            let paths = j.segments();
            let sealed: Vec<(u64, PathBuf)> = list_segments(&j.dir)
                .unwrap()
                .into_iter()
                .filter_map(|(n, p)| match n {
                    SegmentName::Sealed { last, .. } => Some((last, p)),
                    SegmentName::Open { .. } => None,
                })
                .collect();
            assert!(sealed.len() >= 3, "{paths:?}");
            // The first two sealed segments were shipped and deleted.
            fs::remove_file(&sealed[0].1).unwrap();
            fs::remove_file(&sealed[1].1).unwrap();
            let gap = j.check();
            assert!(
                gap.findings
                    .iter()
                    .any(|f| matches!(f, Finding::SegmentGap { .. })),
                "without the progress file the hole is a finding: {:?}",
                gap.findings
            );
            let state = crate::archive::ShipState {
                target: "s3://b/p".into(),
                segments_through_seq: sealed[1].0,
                checkpoints_through: String::new(),
            };
            fs::write(
                j.dir.join(crate::archive::STATE_FILE),
                serde_json::to_vec(&state).unwrap(),
            )
            .unwrap();
            let report = j.check();
            assert!(report.ok(), "{:?}", report.findings);
            assert_eq!(report.archived_records, sealed[1].0);
            assert_eq!(report.head_seq, 40);
            // The roots are still checked, from the tree state kept at that seal.
            assert_eq!(report.uncovered_records, 0, "{report:?}");
            // A rewrite of the local records is still found...
            let local = j.segments();
            let saved: Vec<(PathBuf, Vec<u8>)> = local
                .iter()
                .map(|p| (p.clone(), fs::read(p).unwrap()))
                .collect();
            let mut lines = content_lines(&local[0]);
            lines[0] = lines[0].replacen("\"action\":\"R\"", "\"action\":\"D\"", 1);
            write_lines(&local[0], &lines);
            // Re-chain from the first local record on (its own prev kept: the record before it
            // is in the archive only).
            let mut prev_hex: Option<String> = None;
            for path in &local {
                let mut out = Vec::new();
                for line in content_lines(path) {
                    let at = line.find("\"prev\":\"").unwrap() + 8;
                    let line = match &prev_hex {
                        Some(p) => format!("{}{}{}", &line[..at], p, &line[at + 64..]),
                        None => line,
                    };
                    prev_hex = Some(hex::encode(record::leaf_hash(line.as_bytes())));
                    out.push(line);
                }
                write_lines(path, &out);
            }
            assert!(
                verify_journal(&j.dir).unwrap().ok(),
                "the chain alone cannot see it"
            );
            assert!(
                j.check()
                    .findings
                    .iter()
                    .any(|f| matches!(f, Finding::CheckpointMismatch { .. })),
                "the roots can"
            );
            for (path, bytes) in saved {
                fs::write(path, bytes).unwrap();
            }
            // ...and without the kept tree state the roots cannot be checked: a finding.
            fs::remove_file(checkpoint::seal_state_path(&j.dir, sealed[1].0)).unwrap();
            assert!(
                j.check().findings.contains(&Finding::Unanchored {
                    first_local_seq: sealed[1].0 + 1
                }),
                "{:?}",
                j.check().findings
            );
            // A cut tail is still found: checkpoints beyond the head need no old records.
            let open = j.segments().last().unwrap().clone();
            let lines = content_lines(&open);
            write_lines(&open, &lines[..lines.len() - 1]);
            let report = j.check();
            assert!(
                report
                    .findings
                    .iter()
                    .any(|f| matches!(f, Finding::Truncated { .. })),
                "{:?}",
                report.findings
            );
        }

        #[test]
        fn removed_checkpoints_are_a_finding() {
            let j = signed_journal(5);
            fs::remove_dir_all(j.dir.join(checkpoint::CHECKPOINT_DIR)).unwrap();
            let report = j.check();
            assert_eq!(report.findings, vec![Finding::NoCheckpoints]);
            assert_eq!(report.uncovered_records, 5);
        }

        #[test]
        fn a_restart_continues_the_tree_from_the_saved_state() {
            let j = signed_journal(30);
            // Reopen with checkpoints (from the state file) and add records.
            let cfg = JournalConfig {
                segment_max_bytes: 4096,
                ..JournalConfig::default()
            };
            let checkpointing = Checkpointing {
                signer: CheckpointSigner::load(&j.key, false, "unused").unwrap(),
                timing: CheckpointTiming {
                    interval: Duration::ZERO,
                    heartbeat: Duration::from_secs(3600),
                },
            };
            let (journal, _) =
                Journal::open_with_checkpoints(&j.dir, "n1", &cfg, Some(checkpointing)).unwrap();
            for i in 0..7 {
                journal.append_blocking(&event(i)).unwrap();
            }
            let stats = journal.checkpoint_stats().unwrap().clone();
            drop(journal);
            assert_eq!(
                stats.last_size.load(std::sync::atomic::Ordering::Relaxed),
                37
            );
            let report = j.check();
            assert!(report.ok(), "{:?}", report.findings);
            assert_eq!(report.head_seq, 37);
            assert_eq!(report.uncovered_records, 0);
        }

        #[test]
        fn a_restart_never_signs_records_that_contradict_its_own_checkpoints() {
            let j = signed_journal(40);
            let open = |j: &Signed| {
                let signer = CheckpointSigner::load(&j.key, false, "unused").unwrap();
                Journal::open_with_checkpoints(
                    &j.dir,
                    "n1",
                    &JournalConfig {
                        segment_max_bytes: 4096,
                        ..JournalConfig::default()
                    },
                    Some(Checkpointing {
                        signer,
                        timing: CheckpointTiming {
                            interval: Duration::from_secs(5),
                            heartbeat: Duration::from_secs(60),
                        },
                    }),
                )
            };
            // Rewrite the chain (no key needed) and remove the saved tree state, so that the
            // restart must rebuild the tree from the records.
            let paths = j.segments();
            let mut lines = content_lines(&paths[1]);
            lines[0] = lines[0].replacen("\"action\":\"R\"", "\"action\":\"D\"", 1);
            write_lines(&paths[1], &lines);
            rewrite_chain(&paths);
            fs::remove_file(
                j.dir
                    .join(checkpoint::CHECKPOINT_DIR)
                    .join(checkpoint::STATE_FILE),
            )
            .unwrap();
            match open(&j) {
                Err(JournalError::Corrupt(msg)) => {
                    assert!(msg.contains("which this gateway signed"), "{msg}")
                }
                Err(other) => panic!("{other}"),
                Ok(_) => panic!("the gateway would sign a rewritten history"),
            }
            // With every checkpoint deleted too, nothing local contradicts the records: the
            // start goes on (only the archive's copies can show the rewrite).
            fs::remove_dir_all(j.dir.join(checkpoint::CHECKPOINT_DIR)).unwrap();
            let (journal, report) = open(&j).unwrap();
            assert_eq!(report.head_seq, 40);
            drop(journal);
        }

        #[test]
        fn a_start_refuses_a_journal_shorter_than_its_checkpoint_state() {
            let j = signed_journal(40);
            let open = j.segments().last().unwrap().clone();
            let lines = content_lines(&open);
            write_lines(&open, &lines[..lines.len() - 1]);
            let signer = CheckpointSigner::load(&j.key, false, "unused").unwrap();
            let result = Journal::open_with_checkpoints(
                &j.dir,
                "n1",
                &JournalConfig::default(),
                Some(Checkpointing {
                    signer,
                    timing: CheckpointTiming {
                        interval: Duration::from_secs(5),
                        heartbeat: Duration::from_secs(60),
                    },
                }),
            );
            match result {
                Err(JournalError::Corrupt(msg)) => {
                    assert!(
                        msg.contains("covered by a signed checkpoint are missing"),
                        "{msg}"
                    )
                }
                Err(other) => panic!("{other}"),
                Ok(_) => panic!("opened a journal that lost checkpointed records"),
            }
        }
    }
}
