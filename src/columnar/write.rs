//! Writing the columnar copy of one sealed segment: Parquet bytes, the segment's leaf hashes,
//! and the unsigned [`Seal`] of the file.
//!
//! The file is a pure function of the segment's bytes and the [`WriteOptions`]: rebuilding it
//! (`auditgate backfill`, a restart before it was shipped) gives the same bytes, so a retried
//! upload finds the same object.
//!
//! Layout choices, each for a reader's skip:
//!
//! * rows in seq order (the journal's, so also `ts` order within a node): row-group and page
//!   statistics of `seq` and `ts` skip whatever is outside a time window;
//! * row groups of `row_group_records` rows, each with split-block bloom filters (sized to the
//!   row group, 1% false positives, folded to their content) on `patient_ids`, `user_id`,
//!   `client_ip` and `device_id`: a point lookup reads the row groups that may hold the value;
//! * pages of at most `page_bytes`: a reader that found its rows reads only their pages of the
//!   large columns (`line`, `request_id`, `leaf`), located by the page index;
//! * zstd on every column; dictionary encoding where the values repeat.

use std::sync::Arc;

use arrow::array::RecordBatch;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{
    KeyValue, PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader, SortingColumn,
};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::rows::{schema, RowError, Rows, SCHEMA_VERSION};
use super::seal::Seal;
use crate::tlog::merkle::{Frontier, Hash};

/// How the Parquet file is cut and compressed (`[columnar]`).
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Rows per row group (the unit of bloom-filter skipping).
    pub row_group_records: usize,
    /// zstd level of every column.
    pub zstd_level: i32,
    /// Rows per data page of the `line` column (the other columns of unique values take 8
    /// times as many): a reader that found its rows decodes only their pages.
    pub line_page_records: usize,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            row_group_records: 8192,
            zstd_level: 3,
            line_page_records: 128,
        }
    }
}

/// The columns with bloom filters, as Parquet column paths.
pub const BLOOM_COLUMNS: &[&[&str]] = &[
    &["patient_ids", "list", "item"],
    &["user_id"],
    &["client_ip"],
    &["device_id"],
];

/// Columns whose values are (nearly) all different: written without a dictionary (a
/// dictionary page is never split, and would hold the whole row group's lines), in small pages.
pub const UNIQUE_COLUMNS: &[&str] = &[
    "seq",
    "prev",
    "leaf",
    "ts",
    "received",
    "request_id",
    "jti",
    "path",
    "query",
    "line",
];

/// Key-value metadata keys every file carries.
pub mod keys {
    /// The schema version ([`super::SCHEMA_VERSION`]).
    pub const VERSION: &str = "auditgate.columnar.version";
    /// The node.
    pub const NODE: &str = "auditgate.node";
    /// The first seq.
    pub const FIRST: &str = "auditgate.first_seq";
    /// The last seq.
    pub const LAST: &str = "auditgate.last_seq";
}

/// Why a segment could not be written as Parquet.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A line is not a record.
    #[error(transparent)]
    Row(#[from] RowError),
    /// The segment holds no record.
    #[error("the segment holds no record")]
    Empty,
    /// The records are not one node's consecutive seqs.
    #[error("line {index}: record seq {found} of node {node:?} where seq {expected} of node {expected_node:?} was expected")]
    NotConsecutive {
        /// 0-based line number.
        index: usize,
        /// The seq found.
        found: u64,
        /// Its node.
        node: String,
        /// The seq expected.
        expected: u64,
        /// The node expected.
        expected_node: String,
    },
    /// The tree handed in is not the tree of the records before the segment.
    #[error("the segment starts at seq {first}, but the tree before it has {tree} records")]
    TreeMismatch {
        /// The tree's size.
        tree: u64,
        /// The segment's first seq.
        first: u64,
    },
    /// The Parquet writer failed.
    #[error("writing Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
}

/// The columnar copy of one segment.
#[derive(Debug, Clone)]
pub struct ColumnarCopy {
    /// The Parquet file.
    pub parquet: Vec<u8>,
    /// Its seal (unsigned).
    pub seal: Seal,
    /// The segment's leaf hashes, in seq order.
    pub leaves: Vec<Hash>,
}

/// The writer properties for `options` and the file's key-value metadata.
pub fn writer_properties(
    options: &WriteOptions,
    node: &str,
    first: u64,
    last: u64,
) -> Result<WriterProperties, WriteError> {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(options.zstd_level)?))
        .set_max_row_group_row_count(Some(options.row_group_records.max(1)))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_sorting_columns(Some(vec![SortingColumn {
            column_idx: 0,
            descending: false,
            nulls_first: false,
        }]))
        .set_key_value_metadata(Some(vec![
            KeyValue::new(keys::VERSION.into(), SCHEMA_VERSION.to_string()),
            KeyValue::new(keys::NODE.into(), node.to_string()),
            KeyValue::new(keys::FIRST.into(), first.to_string()),
            KeyValue::new(keys::LAST.into(), last.to_string()),
        ]));
    let line_page = options.line_page_records.max(1);
    // Page limits are checked after each batch of this many values.
    props = props.set_write_batch_size(line_page);
    for name in UNIQUE_COLUMNS {
        let rows = if *name == "line" {
            line_page
        } else {
            line_page * 8
        };
        props = props
            .set_column_dictionary_enabled(ColumnPath::from(*name), false)
            .set_column_data_page_row_count_limit(ColumnPath::from(*name), rows);
    }
    for path in BLOOM_COLUMNS {
        let column = ColumnPath::new(path.iter().map(|s| s.to_string()).collect());
        props = props
            .set_column_bloom_filter_enabled(column.clone(), true)
            .set_column_bloom_filter_fpp(column.clone(), 0.01)
            .set_column_bloom_filter_max_ndv(column, options.row_group_records as u64);
    }
    Ok(props.build())
}

/// The lines of a sealed segment (its bytes, newline-terminated lines), each without newline.
pub fn lines(segment: &[u8]) -> impl Iterator<Item = &[u8]> {
    let used = crate::journal::used_len(segment);
    segment[..used]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
}

/// How many lines [`lines`] yields, counted without splitting them out.
pub fn line_count(segment: &[u8]) -> usize {
    let used = &segment[..crate::journal::used_len(segment)];
    let (mut count, mut start) = (0, 0);
    for end in memchr::memchr_iter(b'\n', used) {
        if end > start {
            count += 1;
        }
        start = end + 1;
    }
    if used.len() > start {
        count += 1;
    }
    count
}

/// Where a segment's records start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentStart {
    /// The node that wrote them.
    pub node: String,
    /// The first record's seq.
    pub first: u64,
}

/// The rows of a segment, in batches of `batch_rows`, each handed to `take` as soon as it is
/// full: one batch is held at a time, and its memory serves the next (a copy that held every
/// batch of a 64 MiB segment touched as much fresh memory again, a page fault per 4 KiB).
/// Checks that the records are one node's consecutive seqs. Returns where they start and the
/// leaf hashes.
pub fn each_batch<E: From<WriteError>>(
    segment: &[u8],
    batch_rows: usize,
    mut take: impl FnMut(&SegmentStart, RecordBatch) -> Result<(), E>,
) -> Result<(SegmentStart, Vec<Hash>), E> {
    let mut rows = Rows::new();
    let mut leaves = Vec::new();
    let mut start: Option<SegmentStart> = None;
    for (index, line) in lines(segment).enumerate() {
        let (record, leaf) = rows.push_line(line, index).map_err(WriteError::from)?;
        let start = start.get_or_insert_with(|| SegmentStart {
            node: record.header.node.clone(),
            first: record.header.seq,
        });
        let expected = start.first + index as u64;
        if record.header.seq != expected || record.header.node != start.node {
            return Err(WriteError::NotConsecutive {
                index,
                found: record.header.seq,
                node: record.header.node,
                expected,
                expected_node: start.node.clone(),
            }
            .into());
        }
        leaves.push(Hash(leaf));
        if rows.len() >= batch_rows {
            take(start, rows.finish())?;
        }
    }
    let start = start.ok_or(WriteError::Empty)?;
    if !rows.is_empty() {
        take(&start, rows.finish())?;
    }
    Ok((start, leaves))
}

/// The rows of a segment, in batches of `batch_rows`, with the leaf hashes; checks that the
/// records are one node's consecutive seqs. Returns (node, first seq, batches, leaves).
pub fn segment_batches(
    segment: &[u8],
    batch_rows: usize,
) -> Result<(String, u64, Vec<RecordBatch>, Vec<Hash>), WriteError> {
    let mut batches = Vec::new();
    let (start, leaves) = each_batch(segment, batch_rows, |_, batch| {
        batches.push(batch);
        Ok::<(), WriteError>(())
    })?;
    Ok((start.node, start.first, batches, leaves))
}

/// Write the columnar copy of a sealed segment whose records follow the tree `frontier`
/// (the tree of every record before the segment's first).
pub fn write_segment(
    segment: &[u8],
    frontier: &Frontier,
    options: &WriteOptions,
) -> Result<ColumnarCopy, WriteError> {
    let rows_per_group = options.row_group_records.max(1);
    // The footer names the last seq, and the writer takes the footer's pairs before the first
    // row: counted up front (the records are checked to be consecutive as they are read).
    let records = line_count(segment) as u64;
    let mut writer: Option<ArrowWriter<Vec<u8>>> = None;
    let (start, leaves) = each_batch(segment, rows_per_group, |start, batch| {
        let writer = match &mut writer {
            Some(writer) => writer,
            None => {
                if frontier.size() + 1 != start.first {
                    return Err(WriteError::TreeMismatch {
                        tree: frontier.size(),
                        first: start.first,
                    });
                }
                let last = start.first + records.saturating_sub(1);
                let props = writer_properties(options, &start.node, start.first, last)?;
                writer.insert(ArrowWriter::try_new(Vec::new(), schema(), Some(props))?)
            }
        };
        writer.write(&batch)?;
        // One row group per batch, whatever the writer's own byte limits would do.
        writer.flush()?;
        Ok(())
    })?;
    let SegmentStart { node, first } = start;
    // each_batch hands over at least one batch or fails with Empty.
    let writer = writer.ok_or(WriteError::Empty)?;
    let parquet = writer.into_inner()?;
    let boundaries = unit_boundaries(&parquet)?;
    let seal = Seal::make(&node, first, frontier, &leaves, &parquet, &boundaries);
    Ok(ColumnarCopy {
        parquet,
        seal,
        leaves,
    })
}

/// Read a file's metadata with its page index.
pub fn read_metadata(parquet: &[u8]) -> Result<ParquetMetaData, parquet::errors::ParquetError> {
    ParquetMetaDataReader::new()
        .with_page_index_policy(PageIndexPolicy::Required)
        .parse_and_finish(&Bytes::copy_from_slice(parquet))
}

/// A column chunk larger than this is cut into units at its pages; a smaller one is one unit
/// (a reader reads it whole for the price of a page).
pub const PAGED_CHUNK_BYTES: u64 = 64 * 1024;

/// Where the file's units start: every column chunk, every page of a chunk larger than
/// [`PAGED_CHUNK_BYTES`] (from the offset index), every bloom filter, the page index region,
/// and the footer.
pub fn unit_boundaries(parquet: &[u8]) -> Result<Vec<u64>, parquet::errors::ParquetError> {
    let metadata = read_metadata(parquet)?;
    let mut starts = vec![0u64];
    let mut index_start = u64::MAX;
    for (rg_index, rg) in metadata.row_groups().iter().enumerate() {
        for (col_index, column) in rg.columns().iter().enumerate() {
            let (start, length) = column.byte_range();
            starts.push(start);
            if length <= PAGED_CHUNK_BYTES {
                // One unit; whatever follows the chunk starts the next.
            } else if let Some(pages) = metadata
                .page_index_for_row_group(rg_index)
                .offset_index(col_index)
            {
                starts.extend(pages.page_locations().iter().map(|p| p.offset as u64));
            }
            if let Some(offset) = column.bloom_filter_offset() {
                starts.push(offset as u64);
            }
            for offset in [column.column_index_offset(), column.offset_index_offset()]
                .into_iter()
                .flatten()
            {
                index_start = index_start.min(offset as u64);
            }
        }
    }
    if index_start != u64::MAX {
        starts.push(index_start);
    }
    // The footer: the metadata, its 4-byte length and the closing magic.
    let len = parquet.len();
    if len >= 8 {
        let meta_len = u32::from_le_bytes([
            parquet[len - 8],
            parquet[len - 7],
            parquet[len - 6],
            parquet[len - 5],
        ]) as usize;
        starts.push(len.saturating_sub(8 + meta_len) as u64);
    }
    starts.sort_unstable();
    starts.dedup();
    Ok(starts)
}

/// The schema as the Parquet reader sees it (for tests and readers).
pub fn arrow_schema() -> Arc<arrow::datatypes::Schema> {
    schema()
}
