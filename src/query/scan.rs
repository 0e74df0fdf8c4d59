//! Scanning one segment for the rows a query wants: from its columnar copy (through the seal:
//! statistics and bloom filters skip row groups, row filters decode the other columns only for
//! rows that pass) or from its JSON lines (every line hashed and chained). Either way the
//! result carries what the node's proof needs: the segment's piece of the Merkle tree.
//!
//! What is checked here (unless the query runs unverified):
//!
//! * copy: the seal's signature and records; every byte read against the seal's unit hashes;
//!   every returned row's `line` hashes to its `leaf`, and its columns are the ones made from
//!   that line;
//! * JSON: every line's seq follows the previous one and its `prev` is the previous line's
//!   leaf hash.

use arrow::array::{Array, AsArray, RecordBatch, RecordBatchReader};
use arrow::compute::filter_record_batch;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::arrow_reader::{
    ArrowPredicateFn, ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
    RowFilter, RowSelection, RowSelector,
};
use parquet::arrow::ProjectionMask;
use parquet::bloom_filter::Sbbf;
use parquet::file::metadata::PageIndexPolicy;

use super::filter::Filters;
use super::source::{Fetcher, Segment, SourceError};
use super::verified::VerifiedFile;
use crate::columnar::rows::{schema, Rows};
use crate::columnar::seal::TILE_LEVEL;
use crate::columnar::Seal;
use crate::record::LeafHash;
use crate::tlog::checkpoint::CheckpointVerifier;
use crate::tlog::merkle::{Frontier, Hash};
use crate::tlog::range::{self, Block};

/// Why a segment could not be scanned, or did not check out.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// Its bytes could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The Parquet reader failed (including a unit whose hash does not match its seal).
    #[error("{place}: {source}")]
    Parquet {
        /// The copy.
        place: String,
        /// What the reader said.
        source: parquet::errors::ParquetError,
    },
    /// Evaluating the filters failed.
    #[error("{place}: {source}")]
    Arrow {
        /// The segment or copy.
        place: String,
        /// What arrow said.
        source: arrow::error::ArrowError,
    },
    /// The data is not what the seal or the chain says: refused.
    #[error("{place}: {detail}")]
    Integrity {
        /// The segment, copy or seal.
        place: String,
        /// What does not hold.
        detail: String,
    },
}

/// What scanning a segment found.
#[derive(Debug)]
pub struct Scanned {
    /// The matching rows, every column, in seq order.
    pub rows: RecordBatch,
    /// The segment's first and last seq (the open segment: its last complete record).
    pub first: u64,
    /// Its last seq.
    pub last: u64,
    /// The tree before the segment, when its seal states it.
    pub start_frontier: Option<Frontier>,
    /// The segment's blocks ([`range::decompose`] of `first-1..last`).
    pub range: Vec<Hash>,
    /// Known subtrees inside the segment (the seal's tiles).
    pub tiles: Vec<(Block, Hash)>,
    /// Known runs of leaves: every leaf (JSON), or the tiles holding matches (copy).
    pub leaves: Vec<(u64, Vec<Hash>)>,
    /// The last record's leaf hash (JSON only: the chain continues from it).
    pub last_leaf: Option<LeafHash>,
    /// The first record's `prev` (JSON only: it must be the previous segment's last leaf).
    pub first_prev: Option<String>,
    /// `parquet` or `json`.
    pub read_as: &'static str,
    /// Bytes fetched.
    pub bytes_read: u64,
    /// Row groups in the copy, and how many were read.
    pub row_groups: (usize, usize),
}

/// Read a sealed segment's copy through its seal.
pub fn scan_copy(
    segment: &Segment,
    fetcher: &Fetcher,
    filters: &Filters,
    key: Option<&CheckpointVerifier>,
) -> Result<Scanned, ScanError> {
    let Some((copy_place, seal_place)) = segment.copy.clone() else {
        return Err(ScanError::Integrity {
            place: segment.json.label(),
            detail: "the segment has no columnar copy".into(),
        });
    };
    let place = copy_place.label();
    let seal_label = seal_place.label();
    let note = fetcher.get(&seal_place)?;
    let seal = match key {
        Some(key) => Seal::open(&note, key),
        None => Seal::open_unverified(&note),
    }
    .map_err(|e| ScanError::Integrity {
        place: seal_label.clone(),
        detail: e.to_string(),
    })?;
    if Some(seal.last) != segment.last || seal.first != segment.first {
        return Err(ScanError::Integrity {
            place: seal_label,
            detail: format!(
                "the seal is for records {}..={}, not this segment's",
                seal.first, seal.last
            ),
        });
    }
    let check = key.is_some();
    let file = VerifiedFile::new(copy_place, seal.clone(), fetcher.clone(), check);
    let parquet_error = |source| ScanError::Parquet {
        place: place.clone(),
        source,
    };
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    let metadata = ArrowReaderMetadata::load(&file, options).map_err(parquet_error)?;
    if metadata.schema().fields() != schema().fields() {
        return Err(ScanError::Integrity {
            place,
            detail: format!(
                "its columns are not those of columnar schema version {}",
                crate::columnar::SCHEMA_VERSION
            ),
        });
    }
    let row_groups = metadata.metadata().row_groups();
    let selected = prune(&metadata, &file, filters).map_err(parquet_error)?;
    // Only the filter columns, the line and what ties it to the tree are read: every other
    // column of a returned row is made again from its line (the evidence), so no page of them
    // is decoded.
    let descr = metadata.parquet_schema();
    let index_of = |c: &str| schema().index_of(c).ok();
    let filter_columns: Vec<usize> = filters
        .columns()
        .iter()
        .filter_map(|c| index_of(c))
        .collect();
    let mut read_columns = filter_columns.clone();
    read_columns.extend(["seq", "leaf", "line"].iter().filter_map(|c| index_of(c)));
    let mut builder =
        ParquetRecordBatchReaderBuilder::new_with_metadata(file.clone(), metadata.clone())
            .with_row_groups(selected.clone())
            .with_projection(ProjectionMask::roots(descr, read_columns))
            .with_batch_size(8192);
    if !filters.is_empty() {
        let predicate_filters = filters.clone();
        let predicate =
            ArrowPredicateFn::new(ProjectionMask::roots(descr, filter_columns), move |batch| {
                predicate_filters.mask(&batch)
            });
        builder = builder.with_row_filter(RowFilter::new(vec![Box::new(predicate)]));
    }
    let reader = builder.build().map_err(parquet_error)?;
    let read_schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parquet_error(e.into()))?;
    let read = arrow::compute::concat_batches(&read_schema, &batches).map_err(|source| {
        ScanError::Arrow {
            place: place.clone(),
            source,
        }
    })?;
    let rows = remake_rows(&read, &place)?;
    if check {
        check_rows(&read, &rows, filters, &place)?;
    }
    let leaves = tile_leaves(&file, &metadata, &seal, &rows).map_err(parquet_error)?;
    let start_frontier = seal.start_frontier().ok();
    let tiles = crate::columnar::seal::tiles_within(seal.first - 1, seal.last)
        .zip(seal.tiles.iter().copied())
        .collect();
    Ok(Scanned {
        rows,
        first: seal.first,
        last: seal.last,
        start_frontier,
        range: seal.range.clone(),
        tiles,
        leaves,
        last_leaf: None,
        first_prev: None,
        read_as: "parquet",
        bytes_read: file.fetched_bytes() + note.len() as u64,
        row_groups: (row_groups.len(), selected.len()),
    })
}

/// The row groups whose `ts` statistics overlap the window and whose bloom filters may hold
/// every probed column's value.
fn prune(
    metadata: &ArrowReaderMetadata,
    file: &VerifiedFile,
    filters: &Filters,
) -> Result<Vec<usize>, parquet::errors::ParquetError> {
    let parquet = metadata.metadata();
    let groups = parquet.row_groups();
    let mut keep = vec![true; groups.len()];
    if filters.since_micros.is_some() || filters.until_micros.is_some() {
        let converter =
            StatisticsConverter::try_new("ts", metadata.schema(), metadata.parquet_schema())?;
        let mins = converter.row_group_mins(groups.iter())?;
        let maxes = converter.row_group_maxes(groups.iter())?;
        let mins = mins.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        let maxes = maxes.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        for (i, keep) in keep.iter_mut().enumerate() {
            if mins.is_valid(i) && maxes.is_valid(i) {
                *keep &= filters.window_overlaps(mins.value(i), maxes.value(i));
            }
        }
    }
    for (path, values) in filters.bloom_probes() {
        let Some(column) = groups.first().and_then(|g| {
            g.columns()
                .iter()
                .position(|c| c.column_path().string() == path)
        }) else {
            continue;
        };
        for (i, group) in groups.iter().enumerate() {
            if !keep[i] {
                continue;
            }
            if let Some(bloom) = Sbbf::read_from_column_chunk(group.column(column), file)? {
                keep[i] = values.iter().any(|v| bloom.check(&v.as_str()));
            }
        }
    }
    Ok((0..groups.len()).filter(|i| keep[*i]).collect())
}

/// The full rows of the lines read: every column made from the journal line itself.
fn remake_rows(read: &RecordBatch, place: &str) -> Result<RecordBatch, ScanError> {
    let Some(lines) = read
        .column_by_name("line")
        .map(|c| c.as_string::<i32>().clone())
    else {
        return Ok(RecordBatch::new_empty(schema()));
    };
    let mut remade = Rows::new();
    for (i, line) in lines.iter().enumerate() {
        remade
            .push_line(line.unwrap_or_default().as_bytes(), i)
            .map_err(|e| ScanError::Integrity {
                place: place.to_string(),
                detail: e.to_string(),
            })?;
    }
    Ok(remade.finish())
}

/// The columns read say what the lines say: each line hashes to its `leaf`, has its `seq`, and
/// matches the filters the copy's own columns matched.
fn check_rows(
    read: &RecordBatch,
    rows: &RecordBatch,
    filters: &Filters,
    place: &str,
) -> Result<(), ScanError> {
    let integrity = |detail: String| ScanError::Integrity {
        place: place.to_string(),
        detail,
    };
    for name in ["seq", "leaf"] {
        let (Some(read_column), Some(made)) =
            (read.column_by_name(name), rows.column_by_name(name))
        else {
            return Err(integrity(format!("no {name} column")));
        };
        if read_column.to_data() != made.to_data() {
            return Err(integrity(format!(
                "a returned row's {name} is not its journal line's (the copy was changed)"
            )));
        }
    }
    let mask = filters.mask(rows).map_err(|e| integrity(e.to_string()))?;
    if mask.true_count() != rows.num_rows() {
        return Err(integrity(
            "a returned row's columns say what its journal line does not (the copy was changed)"
                .into(),
        ));
    }
    Ok(())
}

/// The leaves of every tile (256 records) that holds a returned row, from the `leaf` column.
fn tile_leaves(
    file: &VerifiedFile,
    metadata: &ArrowReaderMetadata,
    seal: &Seal,
    rows: &RecordBatch,
) -> Result<Vec<(u64, Vec<Hash>)>, parquet::errors::ParquetError> {
    let Some(seqs) = rows.column_by_name("seq") else {
        return Ok(Vec::new());
    };
    let seqs = seqs.as_primitive::<arrow::datatypes::Int64Type>();
    let base = seal.first - 1;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for seq in seqs.values().iter() {
        let index = *seq as u64 - 1;
        let tile = index >> TILE_LEVEL;
        let start = (tile << TILE_LEVEL).max(base);
        let end = ((tile + 1) << TILE_LEVEL).min(seal.last);
        if runs.last() != Some(&(start, end)) && !runs.contains(&(start, end)) {
            runs.push((start, end));
        }
    }
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    runs.sort_unstable();
    // A selection over the whole file: skip to each run, select it.
    let mut selectors = Vec::new();
    let mut at = base;
    for (start, end) in &runs {
        if *start > at {
            selectors.push(RowSelector::skip((start - at) as usize));
        }
        selectors.push(RowSelector::select((end - start) as usize));
        at = *end;
    }
    let leaf_index = schema().index_of("leaf").unwrap_or_default();
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file.clone(), metadata.clone())
        .with_projection(ProjectionMask::roots(
            metadata.parquet_schema(),
            [leaf_index],
        ))
        .with_row_selection(RowSelection::from(selectors))
        .build()?;
    let mut hashes = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))?;
        for hex_leaf in batch.column(0).as_string::<i32>().iter() {
            let mut h = [0u8; 32];
            hex::decode_to_slice(hex_leaf.unwrap_or_default(), &mut h)
                .map_err(|e| parquet::errors::ParquetError::General(e.to_string()))?;
            hashes.push(Hash(h));
        }
    }
    let mut out = Vec::new();
    let mut taken = 0usize;
    for (start, end) in runs {
        let n = (end - start) as usize;
        out.push((
            start,
            hashes.get(taken..taken + n).unwrap_or_default().to_vec(),
        ));
        taken += n;
    }
    Ok(out)
}

/// Read a segment's JSON lines: every line hashed and chained from `prev` (the previous
/// segment's last leaf, when known), the filters applied batch by batch.
pub fn scan_json(
    segment: &Segment,
    fetcher: &Fetcher,
    filters: &Filters,
    prev: Option<LeafHash>,
    check: bool,
) -> Result<Scanned, ScanError> {
    let place = segment.json.label();
    let bytes = fetcher.segment_lines(segment)?;
    // The open segment's last line may be half written: only complete lines count.
    let complete = match segment.last {
        Some(_) => &bytes[..],
        None => &bytes[..bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)],
    };
    let integrity = |detail: String| ScanError::Integrity {
        place: place.clone(),
        detail,
    };
    let mut rows = Rows::new();
    let mut matched = Vec::new();
    let mut leaves = Vec::new();
    let mut prev = prev;
    let mut first_prev = None;
    let flush = |rows: &mut Rows, matched: &mut Vec<RecordBatch>| -> Result<(), ScanError> {
        let batch = rows.finish();
        let mask = filters.mask(&batch).map_err(|source| ScanError::Arrow {
            place: place.clone(),
            source,
        })?;
        let kept = filter_record_batch(&batch, &mask).map_err(|source| ScanError::Arrow {
            place: place.clone(),
            source,
        })?;
        if kept.num_rows() > 0 {
            matched.push(kept);
        }
        Ok(())
    };
    for (index, line) in crate::columnar::write::lines(complete).enumerate() {
        let (record, leaf) = rows
            .push_line(line, index)
            .map_err(|e| integrity(e.to_string()))?;
        let expected = segment.first + index as u64;
        if index == 0 {
            first_prev = Some(record.header.prev.clone());
        }
        if check {
            if record.header.seq != expected {
                return Err(integrity(format!(
                    "line {}: seq {} where {expected} was expected",
                    index + 1,
                    record.header.seq
                )));
            }
            if let Some(prev) = prev {
                if record.header.prev != hex::encode(prev) {
                    return Err(integrity(format!(
                        "line {} (seq {expected}): its prev is not the previous record's hash (a record before it was changed or removed)",
                        index + 1
                    )));
                }
            }
        }
        leaves.push(Hash(leaf));
        prev = Some(leaf);
        if rows.len() >= 8192 {
            flush(&mut rows, &mut matched)?;
        }
    }
    if !rows.is_empty() {
        flush(&mut rows, &mut matched)?;
    }
    let last = segment.first + leaves.len() as u64 - 1;
    if let Some(named_last) = segment.last {
        if check && named_last != last {
            return Err(integrity(format!(
                "the segment is named for records up to {named_last} but holds records up to {last}"
            )));
        }
    }
    let rows =
        arrow::compute::concat_batches(&schema(), &matched).map_err(|source| ScanError::Arrow {
            place: place.clone(),
            source,
        })?;
    Ok(Scanned {
        rows,
        first: segment.first,
        last,
        start_frontier: None,
        range: range::range_hashes(segment.first - 1, &leaves),
        tiles: Vec::new(),
        leaves: vec![(segment.first - 1, leaves)],
        last_leaf: prev,
        first_prev,
        read_as: "json",
        bytes_read: bytes.len() as u64,
        row_groups: (0, 0),
    })
}
