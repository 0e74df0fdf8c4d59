//! Answering a query node by node: choose the segments of the window, scan them, and prove
//! the answer.
//!
//! For each node:
//!
//! 1. **Window.** The segments whose records can fall in the time window (by the date of
//!    their first record and of the next segment's: a day's margin each side, so a clock step
//!    cannot hide a record); without a window, every segment. They must follow each other with
//!    no seq missing: a removed segment is refused, never skipped.
//! 2. **Scan.** Each segment from its columnar copy (through the seal) or its JSON lines. A
//!    copy that fails its seal is reported and the segment is read from its JSON lines instead:
//!    the answer comes from the evidence, and says so.
//! 3. **Proof.** The tree of the records before the window (from the first copy's seal, the
//!    journal's kept tree state, or the records themselves), extended by every scanned
//!    segment's blocks, must give the root of a checkpoint signed by the node's key that
//!    covers the window: the smallest at or after its last record. When no checkpoint covers
//!    the newest records yet (the open segment's last seconds), the answer stops at the newest
//!    checkpoint and says how many records it left out. Each returned record gets an RFC 6962
//!    inclusion proof in that checkpoint, checked before it is returned.

use std::collections::BTreeMap;

use arrow::array::{AsArray, RecordBatch};
use serde::Serialize;

use super::filter::Filters;
use super::scan::{scan_copy, scan_json, ScanError, Scanned};
use super::source::{Fetcher, NodeSources, Segment, SourceError};
use crate::columnar::rows::schema;
use crate::columnar::Seal;
use crate::tlog::checkpoint::{self, CheckpointVerifier, MerkleState, SignedCheckpoint};
use crate::tlog::merkle::{self, Frontier, Hash};
use crate::tlog::range::{self, Subtrees};

/// One day, in microseconds: the margin around a window when choosing segments by date.
const DAY_MICROS: i64 = 86_400_000_000;

/// Why a query could not answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A segment could not be read, or its records do not check out.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// A source could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// No signed checkpoint covers the window yet (a journal younger than its first
    /// checkpoint): the answer can be proven once the gateway signs one.
    #[error("node {node}: no checkpoint signed by {signer} covers records {first}..={last}: the gateway signs one every few seconds; try again, or use --no-verify")]
    NotYetCheckpointed {
        /// The node.
        node: String,
        /// The checkpoint key's name.
        signer: String,
        /// The window's first seq.
        first: u64,
        /// Its last seq.
        last: u64,
    },
    /// The answer cannot be proven: refused (run with `--no-verify` to see it anyway).
    #[error("node {node}: {detail}")]
    Unverified {
        /// The node.
        node: String,
        /// What is missing or does not hold.
        detail: String,
    },
}

/// What one node's part of an answer covered, and what proves it.
#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    /// The node.
    pub node: String,
    /// The first and last seq scanned (0, 0: nothing in the window).
    pub first: u64,
    /// The last seq scanned.
    pub last: u64,
    /// Segments scanned, from columnar copies and from JSON lines.
    pub segments_from_copies: usize,
    /// Segments read as JSON lines.
    pub segments_from_json: usize,
    /// Row groups in the copies scanned, and how many were read (the rest skipped on their
    /// statistics and bloom filters).
    pub row_groups: (usize, usize),
    /// Bytes read.
    pub bytes_read: u64,
    /// The signed checkpoint (note text) the proofs are in; `None` when unverified.
    pub checkpoint: Option<String>,
    /// Its tree size.
    pub tree_size: u64,
    /// The tree of the records before `first` (its perfect subtrees), base64 in the proof file.
    #[serde(skip)]
    pub before: Vec<Hash>,
    /// The blocks of the scanned records.
    #[serde(skip)]
    pub scanned: Vec<Hash>,
    /// The blocks of the records after `last` up to the checkpoint's size.
    #[serde(skip)]
    pub after: Vec<Hash>,
    /// Records after the newest checkpoint, left out (not yet signed).
    pub left_out: u64,
    /// What the reader should know (a copy read from its segment instead, ...).
    pub notes: Vec<String>,
}

/// A returned record's inclusion proof.
#[derive(Debug, Clone)]
pub struct RecordProof {
    /// Its node.
    pub node: String,
    /// Its seq.
    pub seq: u64,
    /// Its journal line.
    pub line: String,
    /// The audit path, leaf to root.
    pub proof: Vec<Hash>,
}

/// A node's answer.
pub struct NodeAnswer {
    /// The matching rows (every column).
    pub rows: RecordBatch,
    /// What was covered and what proves it.
    pub coverage: Coverage,
    /// One proof per returned row (verified queries).
    pub proofs: Vec<RecordProof>,
}

/// The segments whose records can fall in the window, as indices into `segments`.
fn window(segments: &[Segment], filters: &Filters) -> std::ops::Range<usize> {
    let date_micros = |s: &Segment| s.date.as_deref().and_then(super::filter::day_start_micros);
    let mut from = 0;
    let mut to = segments.len();
    if let Some(since) = filters.since_micros {
        // The first segment whose successor starts after `since - 1 day`.
        while from + 1 < segments.len()
            && date_micros(&segments[from + 1]).is_some_and(|next| next + DAY_MICROS < since)
        {
            from += 1;
        }
    }
    if let Some(until) = filters.until_micros {
        while to > from + 1
            && date_micros(&segments[to - 1]).is_some_and(|d| d > until + DAY_MICROS)
        {
            to -= 1;
        }
    }
    from..to
}

/// The key of `node` among `keys`: the one named `auditgate/NODE` (or `NODE`), or the only one.
pub fn key_for<'a>(node: &str, keys: &'a [CheckpointVerifier]) -> Option<&'a CheckpointVerifier> {
    keys.iter()
        .find(|k| k.name() == format!("auditgate/{node}") || k.name() == node)
        .or(match keys {
            [only] => Some(only),
            _ => None,
        })
}

/// Answer for one node. `key`: verify with it; `None`: unverified (`--no-verify`).
pub fn query_node(
    sources: &NodeSources,
    fetcher: &Fetcher,
    filters: &Filters,
    key: Option<&CheckpointVerifier>,
) -> Result<NodeAnswer, QueryError> {
    let node = sources.node.clone();
    let unverified = |detail: String| QueryError::Unverified {
        node: node.clone(),
        detail,
    };
    let mut coverage = Coverage {
        node: node.clone(),
        first: 0,
        last: 0,
        segments_from_copies: 0,
        segments_from_json: 0,
        row_groups: (0, 0),
        bytes_read: 0,
        checkpoint: None,
        tree_size: 0,
        before: Vec::new(),
        scanned: Vec::new(),
        after: Vec::new(),
        left_out: 0,
        notes: Vec::new(),
    };
    let segments = &sources.segments;
    let chosen = window(segments, filters);
    if chosen.is_empty() {
        return Ok(NodeAnswer {
            rows: RecordBatch::new_empty(schema()),
            coverage,
            proofs: Vec::new(),
        });
    }
    // No seq may be missing inside the window.
    for pair in segments[chosen.clone()].windows(2) {
        let expected = pair[0].last.map_or(u64::MAX, |l| l + 1);
        if pair[1].first != expected {
            let detail = format!(
                "records {}..{} are missing: no segment holds them (removed?)",
                expected,
                pair[1].first.saturating_sub(1)
            );
            if key.is_some() {
                return Err(unverified(detail));
            }
            coverage.notes.push(detail);
        }
    }
    let mut scans: Vec<Scanned> = Vec::new();
    let mut prev_leaf: Option<crate::record::LeafHash> = None;
    for (segment, scanned) in scan_all(&segments[chosen.clone()], fetcher, filters, key) {
        let (scanned, note) = scanned?;
        if let Some(note) = note {
            coverage.notes.push(note);
        }
        // Consecutive segments read as lines chain into each other.
        if let (Some(prev), Some(first_prev)) = (prev_leaf, &scanned.first_prev) {
            if key.is_some() && *first_prev != hex::encode(prev) {
                return Err(QueryError::Scan(ScanError::Integrity {
                    place: segment.json.label(),
                    detail: "its first record's prev is not the previous segment's last record (a record between them was changed or removed)".into(),
                }));
            }
        }
        prev_leaf = scanned.last_leaf;
        match scanned.read_as {
            "parquet" => coverage.segments_from_copies += 1,
            _ => coverage.segments_from_json += 1,
        }
        coverage.bytes_read += scanned.bytes_read;
        coverage.row_groups.0 += scanned.row_groups.0;
        coverage.row_groups.1 += scanned.row_groups.1;
        scans.push(scanned);
    }
    coverage.first = scans.first().map_or(0, |s| s.first);
    coverage.last = scans.last().map_or(0, |s| s.last);
    let rows = arrow::compute::concat_batches(&schema(), scans.iter().map(|s| &s.rows)).map_err(
        |source| ScanError::Arrow {
            place: format!("node={node}"),
            source,
        },
    )?;
    let Some(key) = key else {
        coverage
            .notes
            .push("UNVERIFIED (--no-verify): no signature, chain or proof was checked".into());
        return Ok(NodeAnswer {
            rows,
            coverage,
            proofs: Vec::new(),
        });
    };

    // The tree before the window.
    let first = coverage.first;
    let before = match scans.first().and_then(|s| s.start_frontier.clone()) {
        Some(f) => f,
        None => frontier_before(sources, chosen.start, fetcher, key)?,
    };
    if before.size() + 1 != first {
        return Err(unverified(format!(
            "the tree before seq {first} is not known (it has {} records)",
            before.size()
        )));
    }
    // The signed checkpoint covering the window.
    let (cp, cp_text) = covering_checkpoint(sources, fetcher, key, first, coverage.last)?
        .ok_or_else(|| QueryError::NotYetCheckpointed {
            node: sources.node.clone(),
            signer: key.name().to_string(),
            first,
            last: coverage.last,
        })?;
    let mut pieces = Subtrees::new();
    pieces.add_frontier(&before);
    let mut tree = before.clone();
    let mut rows = rows;
    if cp.size < coverage.last {
        // Records after the newest checkpoint: not provable yet, left out.
        coverage.left_out = coverage.last - cp.size;
        coverage.notes.push(format!(
            "records {}..={} are not under a signed checkpoint yet and were left out",
            cp.size + 1,
            coverage.last
        ));
        coverage.last = cp.size;
        let seq = rows
            .column_by_name("seq")
            .map(|c| c.as_primitive::<arrow::datatypes::Int64Type>().clone());
        if let Some(seq) = seq {
            let keep: arrow::array::BooleanArray = seq
                .iter()
                .map(|s| Some(s.is_some_and(|s| s as u64 <= cp.size)))
                .collect();
            rows = arrow::compute::filter_record_batch(&rows, &keep).map_err(|source| {
                ScanError::Arrow {
                    place: format!("node={node}"),
                    source,
                }
            })?;
        }
    }
    for scanned in &scans {
        if scanned.first > cp.size {
            break;
        }
        if scanned.last <= cp.size {
            range::extend(&mut tree, scanned.last - scanned.first + 1, &scanned.range)
                .map_err(|e| unverified(e.to_string()))?;
            pieces
                .add_range(
                    scanned.first - 1,
                    scanned.last - scanned.first + 1,
                    &scanned.range,
                )
                .map_err(|e| unverified(e.to_string()))?;
        } else {
            // The checkpoint ends inside this segment: its leaves up to there.
            let Some((_, leaves)) = scanned.leaves.iter().find(|(s, l)| {
                *s == scanned.first - 1 && l.len() as u64 == scanned.last - scanned.first + 1
            }) else {
                return Err(unverified(format!(
                    "the checkpoint of size {} ends inside records {}..={}, whose leaves were not read",
                    cp.size, scanned.first, scanned.last
                )));
            };
            let part = &leaves[..(cp.size - (scanned.first - 1)) as usize];
            let hashes = range::range_hashes(scanned.first - 1, part);
            range::extend(&mut tree, part.len() as u64, &hashes)
                .map_err(|e| unverified(e.to_string()))?;
        }
        pieces.add_blocks(scanned.tiles.iter().copied());
        for (start, leaves) in &scanned.leaves {
            pieces.add_leaves(*start, leaves.clone());
        }
    }
    // A checkpoint after the window: the records between, from the segments that follow.
    let mut after_index = chosen.end;
    while tree.size() < cp.size {
        let Some(segment) = segments.get(after_index) else {
            return Err(unverified(format!(
                "the checkpoint of size {} reaches past the last segment",
                cp.size
            )));
        };
        after_index += 1;
        let (count, hashes, leaves) = segment_tree(segment, fetcher, key, cp.size)?;
        range::extend(&mut tree, count, &hashes).map_err(|e| unverified(e.to_string()))?;
        pieces
            .add_range(segment.first - 1, count, &hashes)
            .map_err(|e| unverified(e.to_string()))?;
        if let Some(leaves) = leaves {
            pieces.add_leaves(segment.first - 1, leaves);
        }
    }
    if tree.size() != cp.size || tree.root() != cp.root {
        return Err(unverified(format!(
            "the records do not give the root of the checkpoint of size {} signed by {}: the trail was changed",
            cp.size,
            key.name()
        )));
    }
    coverage.checkpoint = Some(cp_text);
    coverage.tree_size = cp.size;
    coverage.before = before.nodes().to_vec();
    let subtree = |b| pieces.subtree(b);
    coverage.scanned = range::decompose(first - 1, coverage.last)
        .into_iter()
        .map(subtree)
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| unverified("the scanned records' subtrees are not all known".into()))?;
    coverage.after = range::decompose(coverage.last, cp.size)
        .into_iter()
        .map(subtree)
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| unverified("the records after the window are not all known".into()))?;

    // One proof per returned record, checked now.
    let mut proofs = Vec::with_capacity(rows.num_rows());
    if rows.num_rows() > 0 {
        let seqs = rows
            .column_by_name("seq")
            .map(|c| c.as_primitive::<arrow::datatypes::Int64Type>().clone())
            .ok_or_else(|| unverified("no seq column".into()))?;
        let lines = rows
            .column_by_name("line")
            .map(|c| c.as_string::<i32>().clone())
            .ok_or_else(|| unverified("no line column".into()))?;
        for i in 0..rows.num_rows() {
            let seq = seqs.value(i) as u64;
            let line = lines.value(i).to_string();
            let leaf = merkle::hash_of(&crate::record::leaf_hash(line.as_bytes()));
            let proof = pieces
                .inclusion_proof(seq - 1, cp.size)
                .ok_or_else(|| unverified(format!("no inclusion proof for seq {seq}")))?;
            merkle::verify_inclusion(&proof, seq - 1, cp.size, leaf, cp.root).map_err(|e| {
                unverified(format!(
                    "the record of seq {seq} is not in the signed log: {e}"
                ))
            })?;
            proofs.push(RecordProof {
                node: node.clone(),
                seq,
                line,
                proof,
            });
        }
    }
    Ok(NodeAnswer {
        rows,
        coverage,
        proofs,
    })
}

/// One segment's scan and what the reader should know of it.
type SegmentScan = Result<(Scanned, Option<String>), QueryError>;

/// Scan one segment: its copy if it has one (a copy that does not check out is reported and
/// its lines read instead), else its lines.
fn scan_one(
    segment: &Segment,
    fetcher: &Fetcher,
    filters: &Filters,
    key: Option<&CheckpointVerifier>,
) -> SegmentScan {
    let check = key.is_some();
    let label = |why: String| {
        format!(
            "the columnar copy of records {}..={} did not check out ({why}); read from its segment instead",
            segment.first,
            segment.last.unwrap_or_default()
        )
    };
    if let Some(present) = &segment.unpaired {
        let scanned = scan_json(segment, fetcher, filters, None, check)?;
        return Ok((
            scanned,
            Some(label(format!("{present} is there without its pair"))),
        ));
    }
    match &segment.copy {
        Some(_) => match scan_copy(segment, fetcher, filters, key) {
            Ok(s) => Ok((s, None)),
            Err(e) => {
                let scanned = scan_json(segment, fetcher, filters, None, check)?;
                Ok((scanned, Some(label(e.to_string()))))
            }
        },
        None => Ok((scan_json(segment, fetcher, filters, None, check)?, None)),
    }
}

/// Scan `segments` on every core, each worker taking the next segment; results in order.
fn scan_all<'a>(
    segments: &'a [Segment],
    fetcher: &Fetcher,
    filters: &Filters,
    key: Option<&CheckpointVerifier>,
) -> Vec<(&'a Segment, SegmentScan)> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(segments.len());
    if workers <= 1 {
        return segments
            .iter()
            .map(|s| (s, scan_one(s, fetcher, filters, key)))
            .collect();
    }
    // A key is not shared between threads: each worker opens its own from its text.
    let key_text = key.map(|k| k.text().to_string());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<SegmentScan>>> = segments
        .iter()
        .map(|_| std::sync::Mutex::new(None))
        .collect();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let own_key = key_text
                    .as_deref()
                    .and_then(|t| CheckpointVerifier::from_text(t).ok());
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(segment) = segments.get(i) else {
                        break;
                    };
                    let result = scan_one(segment, fetcher, filters, own_key.as_ref());
                    if let Ok(mut slot) = results[i].lock() {
                        *slot = Some(result);
                    }
                }
            });
        }
    });
    segments
        .iter()
        .zip(results)
        .map(|(segment, slot)| {
            let result = slot.into_inner().ok().flatten().unwrap_or_else(|| {
                Err(QueryError::Unverified {
                    node: String::new(),
                    detail: "a scan worker stopped".into(),
                })
            });
            (segment, result)
        })
        .collect()
}

/// The tree of the records before segment `index`: from the local journal's kept state, the
/// previous segment's seal, or the records themselves from seq 1.
fn frontier_before(
    sources: &NodeSources,
    index: usize,
    fetcher: &Fetcher,
    key: &CheckpointVerifier,
) -> Result<Frontier, QueryError> {
    let segments = &sources.segments;
    let first = segments[index].first;
    if first == 1 {
        return Ok(Frontier::new());
    }
    if let Some(dir) = &sources.journal {
        if let Ok(Some(state)) = MerkleState::load_at_seal(dir, first - 1) {
            if let Some(frontier) = state.frontier() {
                return Ok(frontier);
            }
        }
    }
    if let Some(previous) = index.checked_sub(1).map(|i| &segments[i]) {
        if let Some((_, seal_place)) = &previous.copy {
            let note = fetcher.get(seal_place)?;
            if let Ok(frontier) = Seal::open(&note, key).and_then(|s| s.end_frontier()) {
                if frontier.size() + 1 == first {
                    return Ok(frontier);
                }
            }
        }
    }
    // From the records themselves.
    let mut tree = Frontier::new();
    for segment in &segments[..index] {
        if segment.first != tree.size() + 1 {
            return Err(QueryError::Unverified {
                node: sources.node.clone(),
                detail: format!(
                    "records {}..{} are in no segment: the tree before the window cannot be made",
                    tree.size() + 1,
                    segment.first - 1
                ),
            });
        }
        let (count, hashes, _) = segment_tree(segment, fetcher, key, u64::MAX)?;
        range::extend(&mut tree, count, &hashes).map_err(|e| QueryError::Unverified {
            node: sources.node.clone(),
            detail: e.to_string(),
        })?;
    }
    Ok(tree)
}

/// A segment's piece of the tree: (records, block hashes, leaves if read).
type TreePiece = (u64, Vec<Hash>, Option<Vec<Hash>>);

/// A segment's blocks up to `limit` (a checkpoint's size), from its seal when it has one and
/// ends by `limit`, else from its lines.
fn segment_tree(
    segment: &Segment,
    fetcher: &Fetcher,
    key: &CheckpointVerifier,
    limit: u64,
) -> Result<TreePiece, QueryError> {
    if let (Some((_, seal_place)), Some(last)) = (&segment.copy, segment.last) {
        if last <= limit {
            let note = fetcher.get(seal_place)?;
            if let Ok(seal) = Seal::open(&note, key) {
                return Ok((last - segment.first + 1, seal.range, None));
            }
        }
    }
    let scanned = scan_json(segment, fetcher, &Filters::default(), None, true)?;
    let mut leaves = scanned
        .leaves
        .into_iter()
        .next()
        .map(|(_, l)| l)
        .unwrap_or_default();
    let keep = (limit.saturating_sub(segment.first - 1) as usize).min(leaves.len());
    leaves.truncate(keep);
    Ok((
        leaves.len() as u64,
        range::range_hashes(segment.first - 1, &leaves),
        Some(leaves),
    ))
}

/// The smallest validly signed checkpoint of size at least `last` (else the largest at least
/// `first`, which then cuts the window): (checkpoint, note text).
fn covering_checkpoint(
    sources: &NodeSources,
    fetcher: &Fetcher,
    key: &CheckpointVerifier,
    first: u64,
    last: u64,
) -> Result<Option<(SignedCheckpoint, String)>, QueryError> {
    let mut by_size: BTreeMap<u64, Vec<&super::source::Place>> = BTreeMap::new();
    for (name, place) in &sources.checkpoints {
        if let Some(size) = checkpoint::size_of_file_name(name) {
            by_size.entry(size).or_default().push(place);
        }
    }
    let open =
        |place: &super::source::Place| -> Result<Option<(SignedCheckpoint, String)>, QueryError> {
            let note = fetcher.get(place)?;
            Ok(key
                .open(&note)
                .ok()
                .map(|cp| (cp, String::from_utf8_lossy(&note).into_owned())))
        };
    for places in by_size.range(last..).map(|(_, p)| p) {
        for place in places {
            if let Some(found) = open(place)? {
                return Ok(Some(found));
            }
        }
    }
    for places in by_size.range(first..last).rev().map(|(_, p)| p) {
        for place in places {
            if let Some(found) = open(place)? {
                return Ok(Some(found));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::filter::parse_time;
    use crate::query::source::Place;

    fn segment(first: u64, date: &str) -> Segment {
        Segment {
            first,
            last: Some(first + 99),
            json: Place::Local(format!("{first}").into()),
            compression: None,
            copy: None,
            unpaired: None,
            date: Some(date.into()),
        }
    }

    #[test]
    fn the_window_keeps_the_segments_that_can_hold_its_records() {
        let days = [
            "2026-11-01",
            "2026-11-01",
            "2026-11-02",
            "2026-11-02",
            "2026-11-03",
            "2026-11-05",
        ];
        let segments: Vec<Segment> = days
            .iter()
            .enumerate()
            .map(|(i, d)| segment(1 + 100 * i as u64, d))
            .collect();
        let filters = |since: &str, until: &str| Filters {
            since_micros: Some(parse_time(since).unwrap()),
            until_micros: Some(parse_time(until).unwrap()),
            ..Default::default()
        };
        assert_eq!(window(&segments, &Filters::default()), 0..6);
        // A day's margin each side: Nov 2 noon to Nov 2 evening reads from the last segment
        // that started Nov 1 through the one that started Nov 3.
        assert_eq!(
            window(
                &segments,
                &filters("2026-11-02T12:00:00Z", "2026-11-02T18:00:00Z")
            ),
            1..5
        );
        assert_eq!(
            window(&segments, &filters("2026-11-05", "2026-11-06")),
            4..6
        );
    }
}
