//! Unit tests of the archive: layout, compression, the directory store and the archiver
//! against fault-injecting stores.
#![allow(unused_imports)]

use crate::config::error::ConfigError;
use crate::journal::shipped::{ShipState, SHIP_STATE_FILE};
use crate::journal::{self, SegmentName};
use crate::tlog::checkpoint;
use async_trait::async_trait;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;

use super::compression::*;
use super::config::*;
use super::dir::*;
use super::error::*;
use super::layout::*;
use super::s3::*;
use super::shipper::*;
use super::store::*;
use super::*;

#[test]
fn keys_follow_the_hive_layout() {
    let l = Layout::new("audit");
    assert_eq!(
        l.segment("gw-1", "2026-11-26", 1, 4096, SegmentCompression::Zstd),
        "audit/v1/node=gw-1/dt=2026-11-26/seg-00000000000000000001-00000000000000004096.jsonl.zst"
    );
    assert_eq!(
        l.segment("gw-1", "2026-11-26", 1, 4096, SegmentCompression::Gzip),
        "audit/v1/node=gw-1/dt=2026-11-26/seg-00000000000000000001-00000000000000004096.jsonl.gz"
    );
    assert_eq!(
        l.checkpoint("gw-1", "00000000000000004096-20261126T074126039074Z.note"),
        "audit/v1/node=gw-1/checkpoints/00000000000000004096-20261126T074126039074Z.note"
    );
    assert_eq!(Layout::new("").node("n"), "v1/node=n/");
}

#[test]
fn compression_is_deterministic_and_reversible() {
    let text = b"{\"seq\":1}\n{\"seq\":2}\n".repeat(100);
    for c in [SegmentCompression::Zstd, SegmentCompression::Gzip] {
        assert_eq!(c.compress(&text).unwrap(), c.compress(&text).unwrap());
        assert!(c.compress(&text).unwrap().len() < text.len() / 10, "{c:?}");
        assert_eq!(c.decompress(&c.compress(&text).unwrap()).unwrap(), text);
        assert!(
            c.other().decompress(&c.compress(&text).unwrap()).is_err(),
            "{c:?} bytes are not the other format"
        );
        let file = format!("seg-1-2.jsonl{}", c.extension());
        assert_eq!(
            SegmentCompression::of_file_name(&file),
            Some((c, "seg-1-2.jsonl"))
        );
    }
    assert_eq!(SegmentCompression::of_file_name("seg-1-2.jsonl"), None);
}

#[test]
fn a_segment_that_decompresses_past_the_limit_is_refused() {
    // A "zip bomb": 4 MiB of one byte, a few KiB compressed, against a 1 MiB limit (the
    // real limit is MAX_SEGMENT_BYTES, 1 GiB; the same code path).
    let bomb = vec![b'x'; 4 << 20];
    for c in [SegmentCompression::Zstd, SegmentCompression::Gzip] {
        let compressed = c.compress(&bomb).unwrap();
        assert!(compressed.len() < 64 << 10, "{c:?}");
        let err = c.decompress_at_most(&compressed, 1 << 20).unwrap_err();
        assert!(
            err.to_string().contains("largest a segment"),
            "{c:?}: {err}"
        );
        assert_eq!(c.decompress_at_most(&compressed, 4 << 20).unwrap(), bomb);
    }
}

#[test]
fn retention_below_six_years_needs_the_test_switch() {
    let mut cfg = ArchiveConfig {
        retention_days: 1,
        ..ArchiveConfig::default()
    };
    assert!(cfg.validate().is_err());
    cfg.allow_short_retention = true;
    cfg.validate().unwrap();
    cfg.delete_local_after_ship = true;
    assert!(
        cfg.validate().is_err(),
        "deleting local segments needs a WORM archive"
    );
    cfg.kind = ArchiveKind::S3;
    assert!(cfg.validate().is_err(), "s3 needs a bucket");
    cfg.bucket = "b".into();
    cfg.validate().unwrap();
}

#[test]
fn the_date_partition_comes_from_the_first_record() {
    assert_eq!(
        first_record_date(b"{\"v\":1,\"ts\":\"2026-11-26T07:41:26.039074Z\"}\n{}").as_deref(),
        Some("2026-11-26")
    );
    assert_eq!(first_record_date(b"garbage"), None);
}

/// A signed journal of `n` records in 4 KiB segments (blocking appends off the test's
/// runtime): (temp dir, journal dir, private key).
fn small_signed_journal(n: usize) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (journal, key) = std::thread::scope(|scope| {
        scope
            .spawn(|| crate::fixtures::signed_journal(tmp.path(), "n1", n))
            .join()
            .unwrap()
    });
    (tmp, journal, key)
}

use crate::fixtures::sealed_segments;

/// An archiver of node `n1`'s journal under prefix `audit`, objects kept a day.
fn archiver_of(journal: &Path, store: Arc<dyn ArchiveStore>) -> Archiver {
    Archiver::new(journal, "n1", "audit", store, Duration::from_secs(86_400)).unwrap()
}

/// Make the columnar copy of sealed segment `first..=last` as the gateway's copy loop does.
fn make_copy_of(journal: &Path, key: &Path, (first, last): (u64, u64)) {
    let segment = fs::read(journal.join(SegmentName::Sealed { first, last }.file_name())).unwrap();
    let signer = checkpoint::CheckpointSigner::load(key, false, "").unwrap();
    let made = crate::columnar::local::make_copy(
        journal,
        first,
        last,
        &segment,
        &signer,
        &crate::columnar::WriteOptions::default(),
    )
    .unwrap();
    assert!(matches!(made, crate::columnar::local::MadeCopy::Ready(..)));
}

/// Segments by their first and last seq.
type Ranges = Vec<(u64, u64)>;

/// The archived copies (`.parquet`) and seals, as `(first, last)` of their file names.
fn archived_copies(archive: &Path) -> (Ranges, Ranges) {
    let mut copies = Vec::new();
    let mut seals = Vec::new();
    let mut stack = vec![archive.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(range) = crate::columnar::local::parse_file_name(&name, "parquet") {
                copies.push(range);
            } else if let Some(range) = crate::columnar::local::parse_file_name(&name, "seal") {
                seals.push(range);
            }
        }
    }
    copies.sort();
    seals.sort();
    (copies, seals)
}

#[tokio::test]
async fn segments_ship_without_waiting_for_their_copies_which_follow_in_order_once_made() {
    let (tmp, journal, key) = small_signed_journal(60);
    let archive = tmp.path().join("archive");
    let mut archiver = archiver_of(&journal, Arc::new(DirStore::new(&archive)))
        .columnar_copies(Some(Duration::from_secs(3600)));
    let sealed = sealed_segments(&journal);
    assert!(sealed.len() >= 3, "{sealed:?}");
    let newest = sealed.last().unwrap().1;

    // No copy is made yet (the copy loop is idle-priority and may lag): every segment ships.
    archiver.ship_pending().await.unwrap();
    assert_eq!(archiver.state().segments_through_seq, newest);
    assert_eq!(archiver.state().columnar_through(), 0);
    assert_eq!(archived_copies(&archive), (vec![], vec![]));

    // The first and third copies are made: only the first ships; the third waits its turn.
    make_copy_of(&journal, &key, sealed[0]);
    make_copy_of(&journal, &key, sealed[2]);
    archiver.ship_pending().await.unwrap();
    assert_eq!(archiver.state().columnar_through(), sealed[0].1);
    assert_eq!(
        archived_copies(&archive),
        (vec![sealed[0]], vec![sealed[0]])
    );
    let stored = ShipState::read(&journal).unwrap().unwrap();
    assert_eq!(stored.columnar_through_seq, Some(sealed[0].1));

    // The second is made: the second and third ship, in order.
    make_copy_of(&journal, &key, sealed[1]);
    archiver.ship_pending().await.unwrap();
    assert_eq!(archiver.state().columnar_through(), sealed[2].1);
    assert_eq!(archived_copies(&archive).0, sealed[..3].to_vec());

    // A restart continues from the progress file (nothing is shipped twice as new).
    let restarted = archiver_of(&journal, Arc::new(DirStore::new(&archive)));
    assert_eq!(restarted.state().columnar_through(), sealed[2].1);
}

#[tokio::test]
async fn a_copy_not_made_within_the_wait_is_given_up_and_local_removal_waits_for_the_copies() {
    let (tmp, journal, key) = small_signed_journal(60);
    let archive = tmp.path().join("archive");
    let worm = |archive: &Path| {
        let mut store = crate::fixtures::FaultStore::new(DirStore::new(archive));
        store.dressed_as_worm = true;
        Arc::new(store)
    };
    let sealed = sealed_segments(&journal);
    let newest = sealed.last().unwrap().1;
    let mut archiver = archiver_of(&journal, worm(&archive))
        .columnar_copies(Some(Duration::from_secs(3600)))
        .delete_local_after_ship(true);

    // Shipped, but their copies are owed: the local segments stay.
    archiver.ship_pending().await.unwrap();
    assert_eq!(archiver.state().segments_through_seq, newest);
    assert_eq!(sealed_segments(&journal), sealed, "removed before its copy");

    // The first copy ships: its segment (and its local copy) may go.
    make_copy_of(&journal, &key, sealed[0]);
    archiver.ship_pending().await.unwrap();
    let left = sealed_segments(&journal);
    assert_eq!(left, sealed[1..].to_vec());
    assert!(!crate::columnar::local::parquet_path(&journal, sealed[0].0, sealed[0].1).exists());

    // The wait is over for the others (a wait of zero): given up, counted, removed but the
    // newest; the archive holds only the copy that was made.
    let failed_before = crate::metrics::global()
        .columnar_copies
        .with_label_values(&["failed"])
        .get();
    let mut impatient = archiver_of(&journal, worm(&archive))
        .columnar_copies(Some(Duration::ZERO))
        .delete_local_after_ship(true);
    impatient.ship_pending().await.unwrap();
    assert_eq!(impatient.state().columnar_through(), newest);
    assert_eq!(sealed_segments(&journal), vec![*sealed.last().unwrap()]);
    assert_eq!(archived_copies(&archive).0, vec![sealed[0]]);
    let failed = crate::metrics::global()
        .columnar_copies
        .with_label_values(&["failed"])
        .get();
    assert!(
        failed >= failed_before + (sealed.len() - 1) as u64,
        "{failed_before} -> {failed}"
    );
}

#[tokio::test]
async fn with_copies_off_no_copy_is_owed_and_a_file_from_before_the_cursor_owes_none() {
    let (tmp, journal, _key) = small_signed_journal(40);
    let archive = tmp.path().join("archive");
    let sealed = sealed_segments(&journal);
    let newest = sealed.last().unwrap().1;
    let mut off = archiver_of(&journal, Arc::new(DirStore::new(&archive)));
    off.ship_pending().await.unwrap();
    assert_eq!(off.state().columnar_through(), newest);
    assert_eq!(
        ShipState::read(&journal)
            .unwrap()
            .unwrap()
            .columnar_through_seq,
        Some(newest)
    );

    // A progress file written before the copies had a cursor: its shipped segments' copies
    // shipped with them; a gateway with copies on owes none of them.
    let mut legacy = ShipState::read(&journal).unwrap().unwrap();
    legacy.columnar_through_seq = None;
    legacy.store(&journal).unwrap();
    let mut on = archiver_of(&journal, Arc::new(DirStore::new(&archive)))
        .columnar_copies(Some(Duration::ZERO));
    assert_eq!(on.state().columnar_through(), newest);
    on.ship_pending().await.unwrap();
    assert_eq!(on.state().columnar_through(), newest);
    assert_eq!(archived_copies(&archive).0, vec![]);
}
