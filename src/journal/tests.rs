//! Unit tests of the journal, and the event builder other modules' tests use.
#![allow(unused_imports)]

use crate::config::error::ConfigError;
use crate::record::{self, Event, LeafHash, RECORD_VERSION};
use crate::tlog::checkpoint::{CheckpointError, CheckpointSigner, CheckpointStats, Checkpointer};
use crate::tlog::merkle::{self, Frontier};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::oneshot;

use super::config::*;
use super::error::*;
use super::handle::*;
use super::reader::*;
use super::recovery::*;
use super::segment::*;
use super::writer::*;
use super::*;
use crate::record::*;

pub(crate) use crate::fixtures::event;

fn small_cfg() -> JournalConfig {
    JournalConfig {
        segment_max_bytes: 4096,
        ..JournalConfig::default()
    }
}

#[test]
fn an_idle_journal_signs_heartbeat_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("k");
    crate::tlog::checkpoint::write_key_pair(&key, "auditgate/n1").unwrap();
    let dir = tmp.path().join("j");
    let checkpointing = Checkpointing {
        signer: CheckpointSigner::load(&key, false, "unused").unwrap(),
        timing: CheckpointTiming {
            interval: Duration::from_millis(100),
            heartbeat: Duration::from_millis(300),
        },
    };
    let (j, _) =
        Journal::open_with_checkpoints(&dir, "n1", &small_cfg(), Some(checkpointing)).unwrap();
    j.append_blocking(&event(0)).unwrap();
    let stats = j.checkpoint_stats().unwrap().clone();
    // No records for a while: the start checkpoint, the one covering the record, then
    // heartbeats of the same size.
    std::thread::sleep(Duration::from_millis(2_000));
    let signed = stats.signed.load(Ordering::Relaxed);
    assert!(
        signed >= 4,
        "{signed} checkpoints in 2 s with a 300 ms heartbeat"
    );
    assert_eq!(stats.last_size.load(Ordering::Relaxed), 1);
    drop(j);
}

#[test]
fn close_seals_the_open_segment_stores_its_checkpoint_and_refuses_later_records() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("k");
    crate::tlog::checkpoint::write_key_pair(&key, "auditgate/n1").unwrap();
    let dir = tmp.path().join("j");
    let open = || {
        let checkpointing = Checkpointing {
            signer: CheckpointSigner::load(&key, false, "unused").unwrap(),
            timing: CheckpointTiming {
                interval: Duration::from_secs(60),
                heartbeat: Duration::from_secs(60),
            },
        };
        let cfg = JournalConfig {
            segment_max_bytes: 1 << 20,
            ..JournalConfig::default()
        };
        Journal::open_with_checkpoints(&dir, "n1", &cfg, Some(checkpointing)).unwrap()
    };
    let (j, _) = open();
    for i in 0..5 {
        j.append_blocking(&event(i)).unwrap();
    }
    let report = j.close(Duration::from_secs(10)).unwrap();
    assert_eq!(
        report,
        CloseReport {
            head_seq: 5,
            sealed: Some((1, 5))
        }
    );
    // The sealed segment and a checkpoint of all five records are on disk right away.
    let names: Vec<SegmentName> = list_segments(&dir)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, vec![SegmentName::Sealed { first: 1, last: 5 }]);
    let newest = crate::tlog::checkpoint::list_checkpoint_files(&dir)
        .unwrap()
        .pop()
        .unwrap();
    let note = crate::tlog::checkpoint::parse_unverified(&fs::read(newest).unwrap()).unwrap();
    assert_eq!(note.size, 5);
    assert!(crate::tlog::checkpoint::seal_state_path(&dir, 5).exists());
    // Nothing more is taken.
    assert!(matches!(
        j.append_blocking(&event(9)),
        Err(JournalError::Closed)
    ));
    drop(j);
    // The next start continues the chain after the sealed segment; closing an empty open
    // segment seals nothing.
    let (j, report) = open();
    assert_eq!(report.head_seq, 5);
    assert_eq!(j.append_blocking(&event(6)).unwrap().seq, 6);
    assert_eq!(
        j.close(Duration::from_secs(10)).unwrap().sealed,
        Some((6, 6))
    );
    drop(j);
    let (j, _) = open();
    assert_eq!(
        j.close(Duration::from_secs(10)).unwrap(),
        CloseReport {
            head_seq: 6,
            sealed: None
        }
    );
}

#[test]
fn a_missing_first_segment_is_accepted_only_when_the_archive_shipped_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(tmp.path(), "n1", &small_cfg()).unwrap();
    for i in 0..30 {
        j.append_blocking(&event(i)).unwrap();
    }
    drop(j);
    let segments = list_segments(tmp.path()).unwrap();
    let (SegmentName::Sealed { last, .. }, first_path) = &segments[0] else {
        panic!("a sealed segment first: {segments:?}");
    };
    fs::remove_file(first_path).unwrap();
    match Journal::open(tmp.path(), "n1", &small_cfg()) {
        Err(JournalError::Corrupt(msg)) => {
            assert!(msg.contains("segments are missing"), "{msg}")
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("opened a journal whose first segment is gone"),
    }
    // The archive's progress file says those records are shipped (and locked): accepted.
    let state = shipped::ShipState {
        target: "s3://b/p".into(),
        segments_through_seq: *last,
        checkpoints_through: String::new(),
        columnar_through_seq: None,
    };
    fs::write(
        tmp.path().join(shipped::SHIP_STATE_FILE),
        serde_json::to_vec(&state).unwrap(),
    )
    .unwrap();
    let (j, report) = Journal::open(tmp.path(), "n1", &small_cfg()).unwrap();
    assert_eq!(report.head_seq, 30);
    assert_eq!(j.append_blocking(&event(30)).unwrap().seq, 31);
}

fn read_all(dir: &Path) -> Vec<Record> {
    let mut out = Vec::new();
    for (_, path) in list_segments(dir).unwrap() {
        let bytes = fs::read(path).unwrap();
        let text = std::str::from_utf8(&bytes[..used_len(&bytes)]).unwrap();
        for line in text.lines() {
            out.push(serde_json::from_str(line).unwrap());
        }
    }
    out
}

#[test]
fn appends_chain_and_survive_reopen_and_seal() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (j, report) = Journal::open(tmp.path(), "n1", &small_cfg()).unwrap();
        assert_eq!(report.head_seq, 0);
        for i in 0..50 {
            let r = j.append_blocking(&event(i)).unwrap();
            assert_eq!(r.seq, i as u64 + 1);
        }
    }
    // The writer thread may still hold the lock for a moment after the handle is dropped.
    let (j, report) = loop {
        match Journal::open(tmp.path(), "n1", &small_cfg()) {
            Err(JournalError::Locked(_)) => thread::sleep(Duration::from_millis(10)),
            other => break other.unwrap(),
        }
    };
    assert_eq!(report.head_seq, 50);
    assert!(
        report.sealed_segments >= 1,
        "4 KiB segments must have sealed"
    );
    assert_eq!(j.append_blocking(&event(50)).unwrap().seq, 51);
    let records = read_all(tmp.path());
    assert_eq!(records.len(), 51);
    let mut prev = GENESIS_PREV.to_string();
    for (i, line) in records.iter().enumerate() {
        assert_eq!(line.header.seq, i as u64 + 1);
        assert_eq!(line.header.prev, prev);
        let bytes = serde_json::to_vec(line).unwrap();
        prev = hex::encode(leaf_hash(&bytes));
    }
}

#[test]
fn recovery_quarantines_a_torn_tail_and_continues_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let open_path;
    {
        let (j, _) = Journal::open(tmp.path(), "n1", &JournalConfig::default()).unwrap();
        for i in 0..3 {
            j.append_blocking(&event(i)).unwrap();
        }
        open_path = list_segments(tmp.path()).unwrap().pop().unwrap().1;
    }
    // A torn write lands where the next record would have gone (over preallocated zeros).
    let used = used_len(&fs::read(&open_path).unwrap()) as u64;
    let f = OpenOptions::new().write(true).open(&open_path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"{\"v\":1,\"node\":\"n1\",\"seq\":4,\"pr", used)
        .unwrap();
    drop(f);
    let (j, report) = loop {
        match Journal::open(tmp.path(), "n1", &JournalConfig::default()) {
            Err(JournalError::Locked(_)) => thread::sleep(Duration::from_millis(10)),
            other => break other.unwrap(),
        }
    };
    assert_eq!(report.head_seq, 3);
    assert_eq!(report.dropped_bytes, 30);
    assert_eq!(report.dropped_lines, 0);
    let q = report.quarantine_file.unwrap();
    assert_eq!(
        fs::read(q).unwrap(),
        b"{\"v\":1,\"node\":\"n1\",\"seq\":4,\"pr"
    );
    assert_eq!(j.append_blocking(&event(9)).unwrap().seq, 4);
    assert_eq!(read_all(tmp.path()).len(), 4);
}

#[test]
fn open_segments_are_preallocated_and_sealed_ones_cut_to_their_records() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = small_cfg();
    let (j, _) = Journal::open(tmp.path(), "n1", &cfg).unwrap();
    let open = list_segments(tmp.path()).unwrap().pop().unwrap().1;
    assert_eq!(fs::metadata(&open).unwrap().len(), cfg.segment_max_bytes);
    // Wait for the background spare, then write until the first seal: the next open segment
    // is the spare, already full size.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tmp.path().join(SPARE).exists() {
        assert!(Instant::now() < deadline, "no spare was prepared");
        thread::sleep(Duration::from_millis(10));
    }
    let mut i = 0;
    while list_segments(tmp.path()).unwrap().len() < 2 {
        j.append_blocking(&event(i)).unwrap();
        i += 1;
    }
    let segments = list_segments(tmp.path()).unwrap();
    assert_eq!(segments.len(), 2);
    for (name, path) in &segments {
        let bytes = fs::read(path).unwrap();
        match name {
            SegmentName::Sealed { .. } => {
                assert_eq!(
                    used_len(&bytes),
                    bytes.len(),
                    "no zeros in a sealed segment"
                );
                assert_eq!(bytes.last(), Some(&b'\n'));
            }
            SegmentName::Open { .. } => assert_eq!(bytes.len() as u64, cfg.segment_max_bytes),
        }
    }
    assert!(crate::verify::verify_journal(tmp.path()).unwrap().ok());
    drop(j);
    // Without preallocation the open segment holds exactly its records.
    let tmp2 = tempfile::tempdir().unwrap();
    let plain = JournalConfig {
        preallocate: false,
        ..small_cfg()
    };
    let (j, _) = Journal::open(tmp2.path(), "n1", &plain).unwrap();
    j.append_blocking(&event(0)).unwrap();
    let open = list_segments(tmp2.path()).unwrap().pop().unwrap().1;
    let bytes = fs::read(&open).unwrap();
    assert_eq!(used_len(&bytes), bytes.len());
    assert!(!tmp2.path().join(SPARE).exists());
}

fn reopen(dir: &Path) -> Result<(Journal, RecoveryReport), JournalError> {
    loop {
        match Journal::open(dir, "n1", &JournalConfig::default()) {
            Err(JournalError::Locked(_)) => thread::sleep(Duration::from_millis(10)),
            other => return other,
        }
    }
}

#[test]
fn recovery_refuses_to_drop_records_after_a_changed_one() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (j, _) = Journal::open(tmp.path(), "n1", &JournalConfig::default()).unwrap();
        for i in 0..6 {
            j.append_blocking(&event(i)).unwrap();
        }
    }
    let open = list_segments(tmp.path()).unwrap().pop().unwrap().1;
    let bytes = fs::read(&open).unwrap();
    let text = String::from_utf8(bytes[..used_len(&bytes)].to_vec()).unwrap();
    // Change one acknowledged record in the middle (its seq and prev stay intact).
    let changed = text.replacen("req-2", "req-X", 1);
    assert_ne!(changed, text);
    let f = OpenOptions::new().write(true).open(&open).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, changed.as_bytes(), 0).unwrap();
    drop(f);
    match reopen(tmp.path()) {
        Err(JournalError::Corrupt(msg)) => assert!(msg.contains("verify"), "{msg}"),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("recovery dropped acknowledged records after a changed one"),
    }
    // Nothing was quarantined or cut: the evidence stays for verify.
    assert!(!tmp.path().join("quarantine").exists());
    let report = crate::verify::verify_journal(tmp.path()).unwrap();
    assert!(!report.ok());
}

#[test]
fn recovery_accepts_a_partly_lost_last_batch() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (j, _) = Journal::open(tmp.path(), "n1", &JournalConfig::default()).unwrap();
        for i in 0..3 {
            j.append_blocking(&event(i)).unwrap();
        }
    }
    // Simulate a last batch of three records whose middle page never reached the disk:
    // record 4 intact, record 5 zeroed, record 6 intact (same batch time).
    let open = list_segments(tmp.path()).unwrap().pop().unwrap().1;
    let bytes = fs::read(&open).unwrap();
    let used = used_len(&bytes);
    let last_line = bytes[..used - 1].rsplit(|&b| b == b'\n').next().unwrap();
    let last: Record = serde_json::from_slice(last_line).unwrap();
    let mut prev = hex::encode(leaf_hash(last_line));
    let ts = "2026-11-26T07:00:00.000001Z";
    let mut tail = Vec::new();
    for seq in 4..=6u64 {
        let mut line = Vec::new();
        let header = ChainHeader {
            v: 1,
            node: "n1".into(),
            seq,
            prev: prev.clone(),
            ts: ts.into(),
        };
        splice_line(&mut line, &header, &event(seq as usize).to_json());
        prev = hex::encode(leaf_hash(&line));
        if seq == 5 {
            line.iter_mut().for_each(|b| *b = 0);
            line.push(0);
        } else {
            line.push(b'\n');
        }
        tail.extend(line);
    }
    assert_eq!(last.header.seq, 3);
    let f = OpenOptions::new().write(true).open(&open).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &tail, used as u64).unwrap();
    drop(f);
    let (j, report) = reopen(tmp.path()).unwrap();
    assert_eq!(report.head_seq, 4, "record 4 chains and is kept");
    assert_eq!(
        report.dropped_lines, 1,
        "record 6: the only complete line after the hole"
    );
    assert!(report.quarantine_file.is_some());
    assert_eq!(j.append_blocking(&event(9)).unwrap().seq, 5);
    assert!(crate::verify::verify_journal(tmp.path()).unwrap().ok());
}

#[test]
fn a_second_writer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (_j, _) = Journal::open(tmp.path(), "n1", &JournalConfig::default()).unwrap();
    assert!(matches!(
        Journal::open(tmp.path(), "n1", &JournalConfig::default()),
        Err(JournalError::Locked(_))
    ));
}

#[test]
fn many_concurrent_appenders_get_distinct_durable_receipts() {
    let tmp = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(tmp.path(), "n1", &JournalConfig::default()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let seqs = rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..64 {
            let j = j.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..20 {
                    seqs.push(j.append(&event(t * 100 + i)).await.unwrap().seq);
                }
                seqs
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let mut sorted = seqs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, (1..=1280).collect::<Vec<u64>>());
    assert!(
        j.stats().batches.load(Ordering::Relaxed) < 1280,
        "group commit batched"
    );
}

#[test]
fn segment_names_round_trip() {
    for name in [
        SegmentName::Open { first: 1 },
        SegmentName::Sealed { first: 5, last: 9 },
    ] {
        assert_eq!(SegmentName::parse(&name.file_name()), Some(name));
    }
    assert_eq!(SegmentName::parse("seg-1.open.jsonl"), None);
    assert_eq!(SegmentName::parse("LOCK"), None);
}

#[test]
fn the_commit_delay_is_bounded_and_applies_only_after_a_crowd() {
    let parse = |text: &str| -> Result<JournalConfig, String> {
        let c: JournalConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    };
    let c = parse("").unwrap();
    assert_eq!((c.commit_delay_us, c.commit_delay_min_batch), (0, 4));
    assert!(!c.delays_commit_after(4096), "off by default");
    let c = parse("commit_delay_us = 200").unwrap();
    assert!(!c.delays_commit_after(0));
    assert!(
        !c.delays_commit_after(3),
        "a lone request or a few are never delayed"
    );
    assert!(c.delays_commit_after(4));
    assert!(parse("commit_delay_us = 10001")
        .unwrap_err()
        .contains("journal.commit_delay_us"));
    assert!(parse("commit_delay_min_batch = 1")
        .unwrap_err()
        .contains("journal.commit_delay_min_batch"));
}

#[test]
fn under_a_crowd_records_wait_the_commit_delay_and_share_fdatasyncs() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = JournalConfig {
        // Longer than a config may ask for, so every appender is back before each commit.
        commit_delay_us: 50_000,
        commit_delay_min_batch: 2,
        ..JournalConfig::default()
    };
    let (j, _) = Journal::open(&tmp.path().join("j"), "n1", &cfg).unwrap();
    let appenders = 32;
    let per_appender = 20;
    thread::scope(|scope| {
        for t in 0..appenders {
            let j = j.clone();
            scope.spawn(move || {
                for i in 0..per_appender {
                    j.append_blocking(&event(t * 100 + i)).unwrap();
                }
            });
        }
    });
    let records = j.stats().records_written.load(Ordering::Relaxed);
    let batches = j.stats().batches.load(Ordering::Relaxed);
    assert_eq!(records, (appenders * per_appender) as u64);
    // Once a batch held a crowd, each later one waited for the others to come back: all the
    // appenders share nearly every fdatasync (20 batches at best; without the delay, 24 to 76
    // on this project's VM).
    assert!(
        batches <= per_appender as u64 + 4,
        "{records} records in {batches} batches"
    );
    drop(j);
    let report = crate::verify::verify_journal(&tmp.path().join("j")).unwrap();
    assert!(report.ok(), "{:?}", report.chain.findings);
    assert_eq!(report.chain.records, records);
}
