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
