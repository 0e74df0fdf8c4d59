//! `verify` of the columnar copies: each Parquet file and its seal, against the segment they
//! were made from.
//!
//! For each segment in seq order (fed whether it has a copy or not, so the tree is known):
//!
//! * a copy and a seal come in pairs ([`Finding::ColumnarUnpaired`] otherwise), but for the
//!   last copy of all when its seal is missing: copies are made one at a time, in seq order,
//!   the Parquet file first, so that is the copy a crash (or the archiver's next pass)
//!   interrupted; it counts as a segment without a copy, and is made (shipped) again;
//! * the seal opens with the node's key (when one is given) and names the segment's records;
//!   its tree hashes (range blocks, tiles) are those of the records' leaves, and its tree
//!   before the records is the journal's, when the check has seen every record since seq 1
//!   ([`Finding::SealInvalid`]);
//! * the Parquet file is the one the seal states (size, SHA-256, every unit's hash), its
//!   metadata names the same node and records, and every row equals the row made from its
//!   journal line, column by column ([`Finding::ColumnarMismatch`] names the first differing
//!   seq and column).
//!
//! So a report read from a verified copy says exactly what the chain says.
//!
//! The row comparison (every line parsed into its row, the Parquet file decoded) is most of a
//! `verify`'s work when copies exist. It runs on its own threads, one segment each (at most one
//! per core in flight, so memory stays bounded by that many segments); its findings follow the
//! others, in segment order, whatever the number of cores.

use std::collections::VecDeque;
use std::thread::JoinHandle;

use arrow::array::{Array, RecordBatch, RecordBatchReader};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sha2::{Digest, Sha256};

use super::finding::Finding;
use crate::columnar::rows::schema;
use crate::columnar::seal::{tiles_within, Seal};
use crate::columnar::write::{self, keys};
use crate::tlog::checkpoint::CheckpointVerifier;
use crate::tlog::merkle::{Frontier, Hash};
use crate::tlog::range;

/// One segment's columnar files, as found: (label, bytes) of each.
#[derive(Default)]
pub(super) struct CopyFiles {
    /// The Parquet file.
    pub(super) parquet: Option<(String, Vec<u8>)>,
    /// Its seal.
    pub(super) seal: Option<(String, Vec<u8>)>,
}

/// The columnar side of one node's check.
pub(super) struct ColumnarCheck<'k> {
    key: Option<&'k CheckpointVerifier>,
    /// The tree of every record before the next segment, while every record since seq 1 was
    /// fed.
    tree: Option<Frontier>,
    /// Copies checked (a copy and its seal).
    pub(super) copies: usize,
    /// Segments fed without a copy.
    pub(super) without_copy: usize,
    /// A Parquet file without its seal, a finding unless no later segment has a copy.
    unpaired_parquet: Option<Finding>,
    /// Row comparisons running, oldest first.
    rows_running: VecDeque<JoinHandle<Vec<Finding>>>,
    /// Findings of the row comparisons that ended, in segment order.
    rows_found: Vec<Finding>,
    /// How many row comparisons may run at once.
    rows_parallel: usize,
}

impl<'k> ColumnarCheck<'k> {
    /// A check whose seals are opened with `key` (none: their signatures are not checked).
    pub(super) fn new(key: Option<&'k CheckpointVerifier>) -> Self {
        ColumnarCheck {
            key,
            tree: Some(Frontier::new()),
            copies: 0,
            without_copy: 0,
            unpaired_parquet: None,
            rows_running: VecDeque::new(),
            rows_found: Vec::new(),
            rows_parallel: super::chain::hashing_threads(),
        }
    }

    /// After the last segment: wait for the row comparisons and add their findings. A Parquet
    /// file without its seal that no later copy followed is the copy being made when the
    /// writer stopped, a segment without a copy.
    pub(super) fn finish(&mut self, findings: &mut Vec<Finding>) {
        while self.join_oldest_rows() {}
        findings.append(&mut self.rows_found);
        if self.unpaired_parquet.take().is_some() {
            self.without_copy += 1;
        }
    }

    /// Wait for the oldest row comparison still running; `false` when none is.
    fn join_oldest_rows(&mut self) -> bool {
        let Some(oldest) = self.rows_running.pop_front() else {
            return false;
        };
        match oldest.join() {
            Ok(found) => self.rows_found.extend(found),
            // A panic in the comparison is a bug: surface it as the serial check did.
            Err(panic) => std::panic::resume_unwind(panic),
        }
        true
    }

    /// Compare the rows of a copy on a thread of its own, waiting first for the oldest when
    /// as many run as there are cores.
    fn compare_rows(&mut self, job: RowJob) {
        while self.rows_running.len() >= self.rows_parallel.max(1) {
            self.join_oldest_rows();
        }
        // The job is handed over only once the thread exists, so it can still run here.
        let (hand_over, take) = std::sync::mpsc::channel::<RowJob>();
        let spawned = std::thread::Builder::new()
            .name("verify-rows".into())
            .spawn(move || take.recv().map(RowJob::run).unwrap_or_default());
        match spawned {
            Ok(handle) => {
                // The thread waits on `take`: the send cannot fail.
                let _ = hand_over.send(job);
                self.rows_running.push_back(handle);
            }
            // No thread to be had: compare here, after the others (the findings keep their
            // order).
            Err(_) => {
                while self.join_oldest_rows() {}
                self.rows_found.extend(job.run());
            }
        }
    }

    /// The records before `first` will not be fed: the tree before later segments is unknown.
    pub(super) fn skip_to(&mut self, first: u64) {
        if self.tree.as_ref().is_some_and(|t| t.size() + 1 != first) {
            self.tree = None;
        }
    }

    /// Check the copy (if any) of the sealed segment `first..=last` whose bytes are `segment`.
    /// `line_leaves`: the leaf hash of each of its lines, when the chain check has them
    /// ([`super::chain::ChainCheck::feed`]); otherwise they are computed here.
    pub(super) fn segment(
        &mut self,
        (first, last): (u64, u64),
        segment: Bytes,
        line_leaves: Option<Vec<Hash>>,
        files: CopyFiles,
        findings: &mut Vec<Finding>,
    ) {
        self.skip_to(first);
        let leaves: Vec<Hash> = line_leaves.unwrap_or_else(|| {
            write::lines(&segment)
                .map(|line| Hash(crate::record::leaf_hash(line)))
                .collect()
        });
        if files.parquet.is_some() || files.seal.is_some() {
            // A later copy was made: the unpaired one before it was not interrupted.
            findings.extend(self.unpaired_parquet.take());
        }
        match files {
            CopyFiles {
                parquet: Some((copy_label, parquet)),
                seal: Some((seal_label, note)),
            } => {
                self.copies += 1;
                let tree = self.tree.as_ref();
                check_seal(
                    self.key,
                    (first, last),
                    &leaves,
                    tree,
                    (&seal_label, &note),
                    (&copy_label, &parquet),
                    findings,
                );
                self.compare_rows(RowJob {
                    first,
                    last,
                    segment,
                    label: copy_label,
                    parquet,
                });
            }
            CopyFiles {
                parquet: Some((present, _)),
                seal: None,
            } => {
                self.unpaired_parquet = Some(Finding::ColumnarUnpaired {
                    missing: crate::columnar::local::file_name(first, last, "seal"),
                    present,
                })
            }
            CopyFiles {
                parquet: None,
                seal: Some((present, _)),
            } => findings.push(Finding::ColumnarUnpaired {
                missing: crate::columnar::local::file_name(first, last, "parquet"),
                present,
            }),
            CopyFiles {
                parquet: None,
                seal: None,
            } => self.without_copy += 1,
        }
        if let Some(tree) = &mut self.tree {
            if tree.size() + 1 == first && first + leaves.len() as u64 == last + 1 {
                for leaf in leaves {
                    tree.push(leaf);
                }
            } else {
                self.tree = None;
            }
        }
    }
}

/// The seal: signature, records, tree hashes, and the file it states.
fn check_seal(
    key: Option<&CheckpointVerifier>,
    (first, last): (u64, u64),
    leaves: &[Hash],
    tree_before: Option<&Frontier>,
    (seal_label, note): (&str, &[u8]),
    (copy_label, parquet): (&str, &[u8]),
    findings: &mut Vec<Finding>,
) {
    let invalid = |reason: String| Finding::SealInvalid {
        seal: seal_label.to_string(),
        reason,
    };
    let opened = match key {
        Some(key) => Seal::open(note, key),
        None => Seal::open_unverified(note),
    };
    let seal = match opened {
        Ok(seal) => seal,
        Err(e) => {
            findings.push(invalid(e.to_string()));
            return;
        }
    };
    if (seal.first, seal.last) != (first, last) {
        findings.push(invalid(format!(
            "it states records {}..={}, the segment holds {first}..={last}",
            seal.first, seal.last
        )));
        return;
    }
    if seal.range != range::range_hashes(first - 1, leaves) {
        findings.push(invalid(
            "its tree hashes (range) are not those of the segment's records".into(),
        ));
    }
    let tiles: Vec<Hash> = tiles_within(first - 1, last)
        .map(|tile| {
            let from = (tile.start() - (first - 1)) as usize;
            range::perfect_root(&leaves[from..from + (tile.end() - tile.start()) as usize])
        })
        .collect();
    if seal.tiles != tiles {
        findings.push(invalid(
            "its tile hashes are not those of the segment's records".into(),
        ));
    }
    if let Some(tree) = tree_before {
        if seal.frontier != tree.nodes() {
            findings.push(invalid(format!(
                "its tree of the {} records before the segment is not the journal's",
                first - 1
            )));
        }
    }
    let sha: [u8; 32] = Sha256::digest(parquet).into();
    if seal.file_size != parquet.len() as u64 || seal.file_sha256 != sha {
        findings.push(Finding::ColumnarMismatch {
            copy: copy_label.to_string(),
            detail: "the file is not the one its seal states (size or SHA-256 differs)".into(),
        });
        return;
    }
    for (i, (start, hash)) in seal.units.iter().enumerate() {
        let end = seal.units.get(i + 1).map_or(seal.file_size, |u| u.0);
        let unit: [u8; 32] = Sha256::digest(&parquet[*start as usize..end as usize]).into();
        if unit != *hash {
            findings.push(invalid(format!(
                "the hash it states for bytes {start}..{end} of the file is not theirs"
            )));
            return;
        }
    }
}

/// Rows per batch the journal's lines are turned into for the comparison.
const COMPARE_ROWS: usize = 8192;

/// One copy's row comparison, for [`ColumnarCheck::compare_rows`].
struct RowJob {
    first: u64,
    last: u64,
    segment: Bytes,
    label: String,
    parquet: Vec<u8>,
}

impl RowJob {
    fn run(self) -> Vec<Finding> {
        let mut found = Vec::new();
        check_rows(
            self.first,
            self.last,
            &self.segment,
            &self.label,
            self.parquet,
            &mut found,
        );
        found
    }
}

/// Every row of the file against the row made from its journal line, row group by row group:
/// one batch of each side is held at a time (a segment's rows, built whole, took as much fresh
/// memory again as the segment, a page fault per 4 KiB).
fn check_rows(
    first: u64,
    last: u64,
    segment: &[u8],
    label: &str,
    parquet: Vec<u8>,
    findings: &mut Vec<Finding>,
) {
    let mismatch = |detail: String| Finding::ColumnarMismatch {
        copy: label.to_string(),
        detail,
    };
    let unreadable =
        |e: &dyn std::fmt::Display| mismatch(format!("it does not read as Parquet: {e}"));
    let opened =
        ParquetRecordBatchReaderBuilder::try_new(Bytes::from(parquet)).and_then(|builder| {
            let metadata = builder.metadata().clone();
            Ok((metadata, builder.with_batch_size(COMPARE_ROWS).build()?))
        });
    let (metadata, mut reader) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            findings.push(unreadable(&e));
            return;
        }
    };
    let kv = |name: &str| {
        metadata
            .file_metadata()
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|k| k.key == name))
            .and_then(|k| k.value.clone())
    };
    let stated = (kv(keys::FIRST), kv(keys::LAST));
    if stated != (Some(first.to_string()), Some(last.to_string())) {
        findings.push(mismatch(format!(
            "its metadata names records {:?}..={:?}, not {first}..={last}",
            stated.0, stated.1
        )));
    }
    // A segment that does not parse is the chain check's finding, not a copy's: nothing more
    // is said of its copy.
    let segment_parses = || {
        write::each_batch(
            segment,
            COMPARE_ROWS,
            |_, _| Ok::<(), write::WriteError>(()),
        )
        .is_ok()
    };
    let fields = schema().fields().clone();
    let types_match = {
        let read = reader.schema();
        read.fields().len() == fields.len()
            && fields
                .iter()
                .zip(read.fields().iter())
                .all(|(want, got)| want.data_type() == got.data_type())
    };
    if !types_match {
        if segment_parses() {
            findings.push(mismatch(format!(
                "its columns are not those of schema version {}",
                crate::columnar::SCHEMA_VERSION
            )));
        }
        return;
    }
    let read_rows = usize::try_from(metadata.file_metadata().num_rows()).unwrap_or(usize::MAX);
    let expected_rows = write::line_count(segment);
    if read_rows != expected_rows {
        if segment_parses() {
            findings.push(mismatch(format!(
                "{read_rows} rows for {expected_rows} records"
            )));
        }
        return;
    }
    // Window by window, wherever either side's batches end: no column is copied whole. The
    // first difference is kept, and said only if the whole segment parses (a file that stops
    // decoding is said either way).
    let mut found: Option<Finding> = None;
    let mut decoding_failed = false;
    let mut got: Option<(RecordBatch, usize)> = None;
    let mut row = 0usize;
    let compared = write::each_batch(segment, COMPARE_ROWS, |_, want_batch| {
        let mut want_at = 0usize;
        while found.is_none() && want_at < want_batch.num_rows() {
            if got
                .as_ref()
                .is_none_or(|(batch, at)| *at == batch.num_rows())
            {
                got = match reader.next() {
                    Some(Ok(batch)) => Some((batch, 0)),
                    Some(Err(e)) => {
                        found = Some(unreadable(&e));
                        decoding_failed = true;
                        break;
                    }
                    None => {
                        found = Some(mismatch(format!("{row} rows for {expected_rows} records")));
                        break;
                    }
                };
                continue;
            }
            let Some((got_batch, got_at)) = got.as_mut() else {
                break;
            };
            let n = (got_batch.num_rows() - *got_at).min(want_batch.num_rows() - want_at);
            for (index, field) in fields.iter().enumerate() {
                let have = got_batch.column(index).slice(*got_at, n);
                let want = want_batch.column(index).slice(want_at, n);
                if have.to_data() == want.to_data() {
                    continue;
                }
                let within = (0..n)
                    .find(|&r| have.slice(r, 1).to_data() != want.slice(r, 1).to_data())
                    .unwrap_or(0);
                found = Some(mismatch(format!(
                    "the row of seq {} differs from its journal line in column {}",
                    first + (row + within) as u64,
                    field.name()
                )));
                break;
            }
            row += n;
            *got_at += n;
            want_at += n;
        }
        Ok::<(), write::WriteError>(())
    });
    if let Some(finding) = found {
        if compared.is_ok() || decoding_failed {
            findings.push(finding);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::columnar::WriteOptions;
    use crate::record::{Event, GENESIS_PREV};

    /// Records 1..=events.len(), as the journal writes them.
    fn records(events: &[Event]) -> Vec<u8> {
        crate::fixtures::segment_bytes("n1", 1, GENESIS_PREV, events, 1_000)
    }

    /// The columnar copy of `segment` (records from seq 1), in row groups of 1000 rows.
    fn copy_of(segment: &[u8]) -> Vec<u8> {
        let options = WriteOptions {
            row_group_records: 1000,
            ..WriteOptions::default()
        };
        write::write_segment(segment, &Frontier::new(), &options)
            .unwrap()
            .parquet
    }

    /// The row check's findings for records 1..=last of `segment` against `parquet`.
    fn row_findings(segment: &[u8], last: u64, parquet: Vec<u8>) -> Vec<String> {
        let mut found = Vec::new();
        check_rows(1, last, segment, "copy", parquet, &mut found);
        found.iter().map(ToString::to_string).collect()
    }

    /// More records than one comparison window, so windows cross the copy's row groups and
    /// the journal's batches: a copy of other records is named at the first difference, a
    /// copy of the same records not at all, a broken segment is left to the chain check.
    #[test]
    fn every_row_of_a_copy_is_compared_with_its_journal_line() {
        let count = COMPARE_ROWS + 300;
        let events: Vec<Event> = (0..count).map(crate::fixtures::event).collect();
        let segment = records(&events);
        let last = count as u64;
        assert_eq!(
            row_findings(&segment, last, copy_of(&segment)),
            Vec::<String>::new()
        );

        // Record 8300 (in the second window) says another path in the copy's source: its
        // line, its hash and the next record's `prev` differ; `prev` is the earlier column.
        let mut other = events.clone();
        other[8299].path = "/fhir/Patient/other".into();
        let found = row_findings(&segment, last, copy_of(&records(&other)));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("the row of seq 8301 differs from its journal line in column prev"),
            "{found:?}"
        );
        // The last record changed: no later `prev`, so its own hash is the first column to differ.
        let mut other = events.clone();
        other[count - 1].path = "/fhir/Patient/other".into();
        let found = row_findings(&segment, last, copy_of(&records(&other)));
        assert!(
            found[0].contains(&format!(
                "the row of seq {last} differs from its journal line in column leaf"
            )),
            "{found:?}"
        );

        // A copy of one record fewer: its metadata and its row count are both wrong.
        let fewer = copy_of(&records(&events[..count - 1]));
        let found = row_findings(&segment, last, fewer);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[1].contains(&format!("{} rows for {count} records", count - 1)),
            "{found:?}"
        );

        // A segment that does not parse: the copy's rows are not compared with it.
        let mut broken = segment.clone();
        broken.extend_from_slice(b"not a record\n");
        let mut other = events.clone();
        other[3].path = "/fhir/Patient/other".into();
        assert_eq!(
            row_findings(&broken, last, copy_of(&records(&other))),
            Vec::<String>::new()
        );
    }

    fn segment(first: u64, last: u64) -> Vec<u8> {
        let events: Vec<_> = (first..=last)
            .map(|n| crate::fixtures::event(n as usize))
            .collect();
        crate::fixtures::segment_bytes("n1", first, &"00".repeat(32), &events, 1_000)
    }

    /// Feed the two-record segment starting at `first`, with `files`.
    fn feed(
        check: &mut ColumnarCheck<'_>,
        first: u64,
        files: CopyFiles,
        findings: &mut Vec<Finding>,
    ) {
        let segment = segment(first, first + 1).into();
        check.segment((first, first + 1), segment, None, files, findings);
    }

    fn parquet_only() -> CopyFiles {
        CopyFiles {
            parquet: Some(("copy".into(), Vec::new())),
            seal: None,
        }
    }

    #[test]
    fn row_findings_come_after_the_others_in_segment_order_however_many_run_at_once() {
        let broken_copy = |n: u64| CopyFiles {
            parquet: Some((format!("copy-{n}"), b"not parquet".to_vec())),
            seal: Some((format!("seal-{n}"), b"not a seal".to_vec())),
        };
        let findings_with = |parallel: usize| {
            let mut check = ColumnarCheck::new(None);
            check.rows_parallel = parallel;
            let mut findings = Vec::new();
            for first in [1u64, 3, 5] {
                feed(&mut check, first, broken_copy(first), &mut findings);
            }
            check.finish(&mut findings);
            findings
        };
        let serial = findings_with(1);
        assert_eq!(serial, findings_with(4));
        let labels: Vec<String> = serial
            .iter()
            .map(|f| match f {
                Finding::SealInvalid { seal, .. } => seal.clone(),
                Finding::ColumnarMismatch { copy, .. } => copy.clone(),
                other => panic!("unexpected finding {other:?}"),
            })
            .collect();
        assert_eq!(
            labels,
            ["seal-1", "seal-3", "seal-5", "copy-1", "copy-3", "copy-5"]
        );
    }

    #[test]
    fn only_the_last_copy_may_lack_its_seal_as_an_interrupted_copy_does() {
        // The last copy without its seal: the one being made when the writer stopped.
        let mut check = ColumnarCheck::new(None);
        let mut findings = Vec::new();
        feed(&mut check, 1, parquet_only(), &mut findings);
        feed(&mut check, 3, CopyFiles::default(), &mut findings);
        check.finish(&mut findings);
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!(check.without_copy, 2);

        // One followed by another copy's file: a finding (copies are made in order).
        let mut check = ColumnarCheck::new(None);
        let mut findings = Vec::new();
        feed(&mut check, 1, parquet_only(), &mut findings);
        feed(&mut check, 3, parquet_only(), &mut findings);
        check.finish(&mut findings);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert!(matches!(
            &findings[0],
            Finding::ColumnarUnpaired { missing, .. } if missing.ends_with("00000000000000000002.seal")
        ));
        assert_eq!(check.without_copy, 1);

        // A seal without its copy is never a crash state.
        let mut check = ColumnarCheck::new(None);
        let mut findings = Vec::new();
        let seal_only = CopyFiles {
            parquet: None,
            seal: Some(("seal".into(), Vec::new())),
        };
        feed(&mut check, 1, seal_only, &mut findings);
        check.finish(&mut findings);
        assert_eq!(findings.len(), 1, "{findings:?}");
    }
}
