//! The checks a journal and an archive share: each segment's lines (leaf hashes, `prev`, `seq`,
//! the segment's name), the chain stitched across segments, and the signed checkpoints' roots
//! recomputed from the records as they stream past.
//!
//! Segment bytes and checkpoint notes come from any source: the journal directory
//! ([`super::journal`]) or the archive's objects ([`super::archive`]).

use crate::durable::FileError;
use std::fs;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::finding::Finding;
use crate::journal::{JournalError, SegmentName};
use crate::record::{self, LeafHash};
use crate::tlog::checkpoint::{self, CheckpointVerifier};
use crate::tlog::merkle::{self, Frontier, Hash};

#[derive(Deserialize)]
pub(super) struct LineHead<'a> {
    pub(super) seq: u64,
    #[serde(borrow)]
    pub(super) prev: &'a str,
}

/// What one segment looks like from inside, before stitching.
pub(super) struct SegmentResult {
    pub(super) findings: Vec<Finding>,
    /// seq and `prev` of the first parseable line.
    pub(super) first: Option<(u64, LeafHash)>,
    /// seq and leaf of the last parseable line.
    pub(super) last: Option<(u64, LeafHash)>,
    pub(super) records: u64,
    /// seq and leaf of every parseable line, in file order (for the Merkle tree).
    pub(super) leaves: Vec<(u64, LeafHash)>,
    /// Every line is a record and none is torn: `leaves` then holds every line's hash, in the
    /// lines the columnar check reads ([`crate::columnar::write::lines`]), so that check need
    /// not hash them again.
    pub(super) every_line_a_record: bool,
}

pub(super) fn decode_prev(prev: &str) -> Option<LeafHash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(prev, &mut out).ok()?;
    Some(out)
}

/// Parse the chain header of a line the way the writer formats it:
/// `{"v":N,"node":"TOKEN","seq":N,"prev":"<64 hex>","ts":"`. `None` when the line is not in
/// that exact form (the caller then falls back to a full JSON parse).
pub(super) fn fast_head(line: &[u8]) -> Option<(u64, Option<LeafHash>)> {
    pub(super) fn digits(s: &[u8]) -> Option<(u64, &[u8])> {
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
pub(super) type LineScan = Option<(u64, Option<LeafHash>, LeafHash)>;

pub(super) fn scan_line(line: &[u8]) -> LineScan {
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
pub(super) fn scan_segment(bytes: &[u8], threads: usize) -> (Vec<LineScan>, usize) {
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

/// One segment's own lines, checked on `threads` threads, before stitching: an open segment's
/// trailing zeros are preallocated space and are left out; a sealed segment is cut to its
/// records, so zeros there are reported (as a torn tail).
pub(super) fn scan_whole_segment(
    label: &str,
    name: &SegmentName,
    bytes: &[u8],
    threads: usize,
) -> SegmentResult {
    let bytes = match name {
        SegmentName::Open { .. } => &bytes[..crate::journal::used_len(bytes)],
        SegmentName::Sealed { .. } => bytes,
    };
    check_segment(label, bytes, threads)
}

pub(super) fn check_segment(name: &str, bytes: &[u8], threads: usize) -> SegmentResult {
    let mut result = SegmentResult {
        findings: Vec::new(),
        first: None,
        last: None,
        records: 0,
        leaves: Vec::new(),
        every_line_a_record: false,
    };
    let (scans, torn) = scan_segment(bytes, threads);
    // An empty line is not a record, and without a torn tail the bytes end on a newline (no
    // trailing zeros): these are exactly the lines the columnar check reads.
    result.every_line_a_record = torn == 0 && scans.iter().all(Option::is_some);
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

/// The signed checkpoints being matched against the records as they stream past.
pub(super) struct CheckpointCheck {
    /// (size, root, label), by size.
    pub(super) pending: Vec<(u64, Hash, String)>,
    pub(super) next: usize,
    pub(super) frontier: Frontier,
    /// The records stopped following each other (already a chain or archive finding): roots
    /// past this point cannot be computed.
    pub(super) broken: bool,
    pub(super) newest_valid_size: u64,
    /// Mismatches after the first one: (count, last label).
    pub(super) later_mismatches: (u64, String),
    pub(super) first_mismatch_seen: bool,
}

/// The checkpoint notes of a journal directory: (file name, bytes), in name order.
pub(super) fn read_checkpoint_notes(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, JournalError> {
    let mut notes = Vec::new();
    for path in checkpoint::list_checkpoint_files(dir)? {
        let bytes = fs::read(&path).map_err(|source| {
            JournalError::Io(FileError {
                path: path.clone(),
                source,
            })
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
    pub(super) fn new(
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
    pub(super) fn start_at(&mut self, frontier: Frontier) -> bool {
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

    pub(super) fn feed(&mut self, seq: u64, leaf: &LeafHash, findings: &mut Vec<Finding>) {
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
    pub(super) fn settle(&mut self, findings: &mut Vec<Finding>) {
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
    pub(super) fn beyond(&self, head_seq: u64) -> impl Iterator<Item = (u64, &str)> {
        self.pending[self.next..]
            .iter()
            .filter(move |(size, _, _)| *size > head_seq)
            .map(|(size, _, label)| (*size, label.as_str()))
    }

    /// The count of mismatches after the first, as one finding.
    pub(super) fn finish_mismatches(&self, findings: &mut Vec<Finding>) {
        let (count, last) = &self.later_mismatches;
        if *count > 0 {
            findings.push(Finding::LaterCheckpointMismatches {
                count: *count,
                last: last.clone(),
            });
        }
    }

    /// The mismatch count, and checkpoints beyond the records: the records were cut short.
    pub(super) fn finish(&self, head_seq: u64, findings: &mut Vec<Finding>) {
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
pub(super) fn hashing_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8)
}

/// The chain across segments handed over in seq order, from any source (journal files or
/// archived objects): each segment's own lines ([`check_segment`]), then the stitching across
/// segment boundaries, and the records fed to the checkpoint check.
pub(super) struct ChainCheck {
    pub(super) threads: usize,
    /// The chain position after the last record fed; before the first: seq 0, the genesis leaf.
    pub(super) head: (u64, LeafHash),
    pub(super) expected_first: u64,
    pub(super) seen_open: bool,
    pub(super) segments: usize,
    pub(super) records: u64,
    pub(super) checkpoints: Option<CheckpointCheck>,
    /// The record before the first one fed is not available (it is in the archive only): the
    /// first record's `prev` cannot be checked.
    pub(super) head_unknown: bool,
}

impl ChainCheck {
    pub(super) fn new(checkpoints: Option<CheckpointCheck>) -> Self {
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
    pub(super) fn start_after_archived(&mut self, first: u64) {
        self.expected_first = first;
        self.head = (first - 1, [0u8; 32]);
        self.head_unknown = true;
    }

    /// Check one segment's bytes (`label` names it in findings) and stitch it to the chain.
    /// An open segment's trailing zeros are preallocated space and are ignored; a sealed
    /// segment is cut to its records, so zeros there are reported (as a torn tail).
    ///
    /// Returns the leaf hash of every line when they are the lines the columnar check reads
    /// (see [`SegmentResult::every_line_a_record`]).
    pub(super) fn feed(
        &mut self,
        label: &str,
        name: &SegmentName,
        bytes: &[u8],
        findings: &mut Vec<Finding>,
    ) -> Option<Vec<Hash>> {
        let seg = scan_whole_segment(label, name, bytes, self.threads);
        self.stitch(label, name, seg, findings)
    }

    /// Stitch a segment scanned by [`scan_whole_segment`] (on any thread) to the chain, in seq
    /// order; as [`ChainCheck::feed`].
    pub(super) fn stitch(
        &mut self,
        label: &str,
        name: &SegmentName,
        seg: SegmentResult,
        findings: &mut Vec<Finding>,
    ) -> Option<Vec<Hash>> {
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
        seg.every_line_a_record
            .then(|| seg.leaves.iter().map(|(_, leaf)| Hash(*leaf)).collect())
    }

    /// The records before `first` that were not fed are accounted for by a finding already
    /// (a missing or unreadable archived segment): continue at `first` without reporting the
    /// gap again. Roots of checkpoints past the gap cannot be computed any more.
    pub(super) fn skip_to(&mut self, first: u64) {
        if first > self.expected_first {
            self.expected_first = first;
        }
    }
}

pub(super) fn file_label(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
