//! The columnar copy: every record field survives into its column, the file reads back as the
//! rows it was made from, its units cut it at every page, and its seal ties it to the tree.

use super::*;
use crate::fixtures::{rich_event, segment_bytes};
use crate::record::GENESIS_PREV;
use crate::tlog::merkle::{Frontier, Leaves};
use arrow::array::{Array, AsArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn segment(n: usize) -> Vec<u8> {
    let events: Vec<_> = (0..n).map(rich_event).collect();
    segment_bytes("n1", 1, GENESIS_PREV, &events, 1_764_000_000)
}

#[test]
fn the_file_reads_back_as_the_rows_of_the_segment() {
    let bytes = segment(3000);
    let options = WriteOptions {
        row_group_records: 1000,
        line_page_records: 64,
        ..WriteOptions::default()
    };
    let copy = write_segment(&bytes, &Frontier::new(), &options).unwrap();
    let (_, _, expected, leaves) = write::segment_batches(&bytes, 1000).unwrap();
    assert_eq!(copy.leaves, leaves);

    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(copy.parquet.clone()))
        .unwrap()
        .build()
        .unwrap();
    let read: Vec<_> = reader.map(Result::unwrap).collect();
    let read = arrow::compute::concat_batches(&schema(), &read).unwrap();
    let expected = arrow::compute::concat_batches(&schema(), &expected).unwrap();
    assert_eq!(read, expected);
    assert_eq!(read.num_rows(), 3000);

    // The line column is the journal line, and leaf its hash.
    let lines = read.column_by_name("line").unwrap().as_string::<i32>();
    let leaf = read.column_by_name("leaf").unwrap().as_string::<i32>();
    let first_line = write::lines(&bytes).next().unwrap();
    assert_eq!(lines.value(0).as_bytes(), first_line);
    assert_eq!(
        leaf.value(0),
        hex::encode(crate::record::leaf_hash(first_line))
    );

    // Three row groups, bloom filters where asked, the version in the metadata.
    let metadata = write::read_metadata(&copy.parquet).unwrap();
    assert_eq!(metadata.num_row_groups(), 3);
    let kv = metadata.file_metadata().key_value_metadata().unwrap();
    assert!(kv
        .iter()
        .any(|k| k.key == write::keys::VERSION && k.value.as_deref() == Some("1")));
    let columns = metadata.row_group(0).columns();
    let with_bloom: Vec<String> = columns
        .iter()
        .filter(|c| c.bloom_filter_offset().is_some())
        .map(|c| c.column_path().string())
        .collect();
    assert_eq!(
        with_bloom,
        ["user_id", "patient_ids.list.item", "client_ip", "device_id"]
    );
}

#[test]
fn every_field_reaches_its_column() {
    let bytes = segment(60);
    let (_, _, batches, _) = write::segment_batches(&bytes, 100).unwrap();
    let batch = &batches[0];
    // No column is all null over records that fill every field somewhere.
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        assert!(
            column.null_count() < column.len(),
            "{} is null in every row",
            field.name()
        );
    }
    // Row 3 (rich_event(3)): authenticated, patients p3 (query) twice over? no: see fixture.
    let record: crate::record::Record =
        serde_json::from_slice(write::lines(&bytes).nth(3).unwrap()).unwrap();
    let ids = batch
        .column_by_name("patient_ids")
        .unwrap()
        .as_list::<i32>();
    let got: Vec<String> = ids
        .value(3)
        .as_string::<i32>()
        .iter()
        .map(|s| s.unwrap().to_string())
        .collect();
    let mut want: Vec<String> = Vec::new();
    for p in &record.event.patients {
        if !want.contains(&p.id) {
            want.push(p.id.clone());
        }
    }
    assert_eq!(got, want);
    assert!(
        record.event.patients.len() > want.len(),
        "fixture repeats a patient at n=3"
    );
}

#[test]
fn units_cut_the_file_at_every_page_and_the_seal_fits_the_tree() {
    // Records 1001..=3500, after a tree of 1000 records.
    let events: Vec<_> = (0..2500).map(rich_event).collect();
    let bytes = segment_bytes("n1", 1001, GENESIS_PREV, &events, 1_764_000_000);
    let mut before = Frontier::new();
    let prior: Vec<_> = (0..1000u64)
        .map(|i| crate::tlog::merkle::Hash(crate::record::leaf_hash(&i.to_le_bytes())))
        .collect();
    for h in &prior {
        before.push(*h);
    }
    let options = WriteOptions {
        row_group_records: 1000,
        line_page_records: 32,
        ..WriteOptions::default()
    };
    let copy = write_segment(&bytes, &before, &options).unwrap();
    let seal = &copy.seal;
    assert_eq!((seal.first, seal.last), (1001, 3500));
    // A tree of another size is refused.
    assert!(matches!(
        write_segment(&bytes, &Frontier::new(), &options),
        Err(WriteError::TreeMismatch {
            tree: 0,
            first: 1001
        })
    ));
    // Units: start at 0, strictly increasing, one per page at least.
    let metadata = write::read_metadata(&copy.parquet).unwrap();
    let mut pages = 0;
    for rg in 0..metadata.num_row_groups() {
        let index = metadata.page_index_for_row_group(rg);
        for c in 0..metadata.row_group(rg).num_columns() {
            let locations = index.offset_index(c).unwrap().page_locations();
            pages += locations.len();
            let (chunk_start, chunk_len) = metadata.row_group(rg).column(c).byte_range();
            let (_, start, _) = seal.unit_at(chunk_start).unwrap();
            assert_eq!(start, chunk_start, "a chunk starts a unit");
            for p in locations {
                let (_, start, end) = seal.unit_at(p.offset as u64).unwrap();
                if chunk_len > write::PAGED_CHUNK_BYTES {
                    assert_eq!(
                        start, p.offset as u64,
                        "a page of a large chunk starts a unit"
                    );
                }
                assert!(end >= p.offset as u64 + p.compressed_page_size as u64);
            }
        }
    }
    assert!(seal.units.len() > 3 * schema().fields().len());
    // The line column spans a page per 32 rows.
    let line = metadata
        .row_group(0)
        .columns()
        .iter()
        .position(|c| c.column_path().string() == "line")
        .unwrap();
    let line_pages = metadata
        .page_index_for_row_group(0)
        .offset_index(line)
        .unwrap()
        .page_locations()
        .len();
    assert_eq!(line_pages, 1000 / 32 + 1, "{pages} pages in all");
    // Each unit's hash is the hash of its bytes.
    for (i, (start, hash)) in seal.units.iter().enumerate() {
        let end = seal.units.get(i + 1).map_or(seal.file_size, |u| u.0);
        let digest: [u8; 32] =
            <sha2::Sha256 as sha2::Digest>::digest(&copy.parquet[*start as usize..end as usize])
                .into();
        assert_eq!(&digest, hash);
    }
    // The seal's tree is the prior records' tree extended by these records.
    let mut all = prior.clone();
    all.extend(copy.leaves.iter().copied());
    let tree = Leaves::new(&all);
    assert_eq!(
        seal.start_frontier().unwrap().root(),
        tree.root(1000).unwrap()
    );
    assert_eq!(
        seal.end_frontier().unwrap().root(),
        tree.root(3500).unwrap()
    );

    // A proof of any record from the seal and the leaves of the record's tile alone.
    for seq in [1001u64, 1024, 1025, 2000, 3329, 3500] {
        let index = seq - 1;
        let mut pieces = crate::tlog::range::Subtrees::new();
        seal.add_to(&mut pieces).unwrap();
        let tile_start = (index >> seal::TILE_LEVEL) << seal::TILE_LEVEL;
        let from = tile_start.max(1000);
        let to = (tile_start + 256).min(3500);
        pieces.add_leaves(from, all[from as usize..to as usize].to_vec());
        assert_eq!(
            pieces.inclusion_proof(index, 3500),
            Some(tree.inclusion_proof(index, 3500).unwrap()),
            "seq {seq}"
        );
    }
}

#[test]
fn the_same_segment_gives_the_same_file() {
    let bytes = segment(500);
    let a = write_segment(&bytes, &Frontier::new(), &WriteOptions::default()).unwrap();
    let b = write_segment(&bytes, &Frontier::new(), &WriteOptions::default()).unwrap();
    assert_eq!(a.parquet, b.parquet);
    assert_eq!(a.seal, b.seal);
}

/// A copy made again by a later version must be the same object: the footer's pairs stay in
/// the order the first versions wrote them (the properties' own, then Arrow's schema).
#[test]
fn the_footer_names_the_records_in_the_order_of_the_first_versions() {
    let bytes = segment(2500);
    let options = WriteOptions {
        row_group_records: 1000,
        ..WriteOptions::default()
    };
    let copy = write_segment(&bytes, &Frontier::new(), &options).unwrap();
    let metadata = write::read_metadata(&copy.parquet).unwrap();
    let pairs: Vec<(&str, &str)> = metadata
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_deref().unwrap_or_default()))
        .collect();
    let keys: Vec<&str> = pairs.iter().map(|(key, _)| *key).collect();
    assert_eq!(
        keys,
        [
            write::keys::VERSION,
            write::keys::NODE,
            write::keys::FIRST,
            write::keys::LAST,
            "ARROW:schema"
        ]
    );
    assert_eq!((pairs[2].1, pairs[3].1), ("1", "2500"));
    assert_eq!(metadata.num_row_groups(), 3);
}

#[test]
fn lines_are_counted_as_they_are_split() {
    for bytes in [
        &b""[..],
        b"\n",
        b"a",
        b"a\n",
        b"a\n\nb",
        b"\n\na\nbb\n\n",
        b"a\nb\n\0\0\0",
        b"a\nb\0\0",
        b"\0\0",
    ] {
        assert_eq!(
            write::line_count(bytes),
            write::lines(bytes).count(),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn a_segment_with_a_gap_or_a_foreign_line_is_refused() {
    let events: Vec<_> = (0..4).map(rich_event).collect();
    let mut bytes = segment_bytes("n1", 1, GENESIS_PREV, &events[..2], 1_764_000_000);
    bytes.extend(segment_bytes(
        "n1",
        4,
        GENESIS_PREV,
        &events[2..],
        1_764_000_000,
    ));
    assert!(matches!(
        write_segment(&bytes, &Frontier::new(), &WriteOptions::default()),
        Err(WriteError::NotConsecutive {
            expected: 3,
            found: 4,
            ..
        })
    ));
    let mut bytes = segment(3);
    bytes.extend_from_slice(b"not json\n");
    assert!(matches!(
        write_segment(&bytes, &Frontier::new(), &WriteOptions::default()),
        Err(WriteError::Row(_))
    ));
    assert!(matches!(
        write_segment(b"", &Frontier::new(), &WriteOptions::default()),
        Err(WriteError::Empty)
    ));
}
