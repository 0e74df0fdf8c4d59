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
//! rewrite of the whole chain by someone who recomputes every hash. Signed checkpoints and the
//! WORM archive close those gaps; this check covers everything else.
//!
//! Segments are read one at a time; the lines of each are parsed and hashed on every core, then
//! the chain is checked in order and stitched across segment boundaries.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::journal::{list_segments, JournalError, SegmentName};
use crate::record::{self, LeafHash};

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
    };
    let (scans, torn) = scan_segment(bytes, threads);
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
                if seq != last_seq + 1 {
                    result.findings.push(Finding::SeqGap {
                        segment: name.to_string(),
                        line: line_no,
                        expected: last_seq + 1,
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
    let mut attempts = 0;
    loop {
        attempts += 1;
        match verify_once(dir) {
            Err(JournalError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && attempts < 3 => {}
            other => return other,
        }
    }
}

fn verify_once(dir: &Path) -> Result<Report, JournalError> {
    let segments = list_segments(dir)?;
    let no_segments = segments.is_empty();
    let mut quarantined = Vec::new();
    if let Ok(entries) = fs::read_dir(dir.join("quarantine")) {
        for e in entries.flatten() {
            quarantined.push(e.file_name().to_string_lossy().into_owned());
        }
        quarantined.sort();
    }

    // Segments one at a time (memory stays bounded by the segment size), the lines of each on
    // every core.
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    let mut report = Report {
        journal: dir.to_path_buf(),
        segments: segments.len(),
        records: 0,
        head_seq: 0,
        head_leaf: None,
        quarantined,
        findings: Vec::new(),
    };
    // Stitch: the chain continues across segment boundaries.
    // The chain position before the first record: seq 0, the genesis leaf.
    let mut chain_head: (u64, LeafHash) = (0, [0u8; 32]);
    let mut expected_first = 1u64;
    let mut seen_open = false;
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
        let label = file_label(path);
        let mut bytes = ahead
            .recv()
            .expect("the reader sends one result per segment")?;
        if matches!(name, SegmentName::Open { .. }) {
            // The open segment's trailing zeros are preallocated space. A sealed segment is cut
            // to its records, so zeros there are reported (as a torn tail).
            bytes.truncate(crate::journal::used_len(&bytes));
        }
        let seg = check_segment(&label, &bytes, threads);
        if seen_open {
            report.findings.push(Finding::Layout {
                detail: format!("{label} follows the open segment"),
            });
        }
        if name.first() != expected_first {
            report.findings.push(Finding::SegmentGap {
                segment: label.clone(),
                expected_first,
                found_first: name.first(),
            });
        }
        if let Some((first_seq, first_prev)) = seg.first {
            if first_seq != name.first() {
                report.findings.push(Finding::SeqGap {
                    segment: label.clone(),
                    line: 1,
                    expected: name.first(),
                    found: first_seq,
                });
            }
            let (head_seq, head_leaf) = chain_head;
            if first_prev != head_leaf && first_seq == head_seq + 1 {
                report.findings.push(Finding::ChainBreak {
                    segment: label.clone(),
                    line: 1,
                    seq: first_seq,
                });
            }
        }
        match name {
            SegmentName::Sealed { first, last } => match (seg.first, seg.last) {
                (Some((f, _)), Some((l, _))) if f == *first && l == *last => {}
                (Some((f, _)), Some((l, _))) => report.findings.push(Finding::NameMismatch {
                    segment: label.clone(),
                    named_first: *first,
                    named_last: *last,
                    first: f,
                    last: l,
                }),
                _ => report.findings.push(Finding::EmptySealed {
                    segment: label.clone(),
                }),
            },
            SegmentName::Open { .. } => seen_open = true,
        }
        report.findings.extend(seg.findings);
        report.records += seg.records;
        if let Some(last) = seg.last {
            chain_head = last;
        }
        expected_first = match name {
            SegmentName::Sealed { last, .. } => last + 1,
            SegmentName::Open { .. } => seg.last.map(|(s, _)| s + 1).unwrap_or(name.first()),
        };
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
    let (seq, leaf) = chain_head;
    report.head_seq = seq;
    if seq > 0 {
        report.head_leaf = Some(hex::encode(leaf));
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
}
