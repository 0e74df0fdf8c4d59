//! Unit tests of the journal checks.

use std::fs;
use std::path::{Path, PathBuf};

use super::chain::*;
use super::*;
use crate::journal::tests::event;
use crate::journal::{list_segments, JournalError, SegmentName};
use crate::journal::{Journal, JournalConfig};
use crate::record;
use crate::tlog::checkpoint::{self, CheckpointVerifier};
use crate::tlog::merkle::{self, Frontier, Hash};
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
    assert!(r.ok(), "{:?}", r.chain.findings);
    assert_eq!(r.chain.records, 60);
    assert_eq!(r.chain.head_seq, 60);
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
        r.chain.findings.iter().any(
            |f| matches!(f, Finding::ChainBreak { segment, line: 4, .. } if *segment == label)
        ),
        "{:?}",
        r.chain.findings
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
        r.chain.findings.iter().any(|f| matches!(
            f,
            Finding::SeqGap {
                line: 4,
                expected: 4,
                found: 5,
                ..
            }
        )),
        "{:?}",
        r.chain.findings
    );
    assert!(r.chain.findings.iter().any(|f| matches!(
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
        r.chain
            .findings
            .iter()
            .any(|f| matches!(f, Finding::SeqGap { line: 2, .. })),
        "{:?}",
        r.chain.findings
    );
}

#[test]
fn a_truncated_sealed_segment_is_found() {
    let (tmp, paths) = journal(60);
    let bytes = fs::read(&paths[0]).unwrap();
    fs::write(&paths[0], &bytes[..bytes.len() - 40]).unwrap();
    let r = verify_journal(tmp.path()).unwrap();
    assert!(
        r.chain
            .findings
            .iter()
            .any(|f| matches!(f, Finding::TornTail { .. })),
        "{:?}",
        r.chain.findings
    );
    assert!(r
        .chain
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
        r.chain
            .findings
            .iter()
            .any(|f| matches!(f, Finding::SegmentGap { segment, .. } if *segment == label)),
        "{:?}",
        r.chain.findings
    );
}

mod checkpoints {
    use super::*;
    use crate::journal::{CheckpointTiming, Checkpointing};
    use crate::tlog::checkpoint::CheckpointSigner;
    use std::time::{Duration, SystemTime};

    struct Signed {
        _tmp: tempfile::TempDir,
        dir: PathBuf,
        key: PathBuf,
    }

    impl Signed {
        fn verifier(&self) -> CheckpointVerifier {
            CheckpointVerifier::load(
                crate::tlog::checkpoint::public_key_path(&self.key)
                    .to_str()
                    .unwrap(),
            )
            .unwrap()
        }
        fn check(&self) -> Report {
            let options = Options {
                key: Some(self.verifier()),
                max_gap: Some(Duration::from_secs(180)),
            };
            verify_journal_with(&self.dir, &options).unwrap()
        }
        fn segments(&self) -> Vec<PathBuf> {
            list_segments(&self.dir)
                .unwrap()
                .into_iter()
                .map(|(_, p)| p)
                .collect()
        }
    }

    /// `n` records of node `n1` in 4 KiB segments, a checkpoint after every batch.
    fn signed_journal(n: usize) -> Signed {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, key) = crate::fixtures::signed_journal(tmp.path(), "n1", n);
        Signed {
            _tmp: tmp,
            dir,
            key,
        }
    }

    fn content_lines(path: &Path) -> Vec<String> {
        let bytes = fs::read(path).unwrap();
        std::str::from_utf8(&bytes[..crate::journal::used_len(&bytes)])
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    /// Recompute every `prev` from the lines as they are now: a rewrite by someone with
    /// write access to the disk but not the signing key.
    fn rewrite_chain(paths: &[PathBuf]) {
        let mut prev = [0u8; 32];
        for path in paths {
            let mut out = Vec::new();
            for line in content_lines(path) {
                let at = line.find("\"prev\":\"").unwrap() + 8;
                let line = format!("{}{}{}", &line[..at], hex::encode(prev), &line[at + 64..]);
                prev = record::leaf_hash(line.as_bytes());
                out.push(line);
            }
            write_lines(path, &out);
        }
    }

    #[test]
    fn a_signed_journal_verifies_with_its_key() {
        let j = signed_journal(40);
        let report = j.check();
        assert!(report.ok(), "{:?}", report.chain.findings);
        assert!(report.chain.checkpoints >= 2, "{report:?}");
        assert!(j.segments().len() > 2, "several sealed segments");
        assert_eq!(report.chain.uncovered_records, 0);
        // Every sealed segment ends on a checkpoint.
        let sizes: Vec<u64> = checkpoint::list_checkpoint_files(&j.dir)
            .unwrap()
            .iter()
            .filter_map(|p| checkpoint::size_of_file_name(&p.file_name()?.to_string_lossy()))
            .collect();
        for (name, _) in list_segments(&j.dir).unwrap() {
            if let SegmentName::Sealed { last, .. } = name {
                assert!(
                    sizes.contains(&last),
                    "no checkpoint at seq {last}: {sizes:?}"
                );
            }
        }
    }

    #[test]
    fn a_chain_rewritten_without_the_key_is_found_only_by_the_checkpoints() {
        let j = signed_journal(40);
        let paths = j.segments();
        let mut lines = content_lines(&paths[1]);
        lines[0] = lines[0].replacen("\"action\":\"R\"", "\"action\":\"D\"", 1);
        assert!(lines[0].contains("\"action\":\"D\""), "{}", lines[0]);
        write_lines(&paths[1], &lines);
        rewrite_chain(&paths);
        // The chain alone cannot see it...
        let plain = verify_journal(&j.dir).unwrap();
        assert!(plain.ok(), "{:?}", plain.chain.findings);
        // ...the signed roots can.
        let report = j.check();
        assert!(!report.ok());
        assert!(report
            .chain
            .findings
            .iter()
            .any(|f| matches!(f, Finding::CheckpointMismatch { .. })));
        assert!(
            report.chain.findings.iter().all(|f| matches!(
                f,
                Finding::CheckpointMismatch { .. } | Finding::LaterCheckpointMismatches { .. }
            )),
            "{:?}",
            report.chain.findings
        );
    }

    #[test]
    fn a_tail_cut_at_a_line_boundary_is_found() {
        let j = signed_journal(40);
        let paths = j.segments();
        let open = paths.last().unwrap();
        let lines = content_lines(open);
        assert!(lines.len() >= 2, "the open segment holds records");
        write_lines(open, &lines[..lines.len() - 2]);
        assert!(
            verify_journal(&j.dir).unwrap().ok(),
            "invisible to the chain"
        );
        let report = j.check();
        assert!(
            report.chain.findings.iter().any(|f| matches!(
                f,
                Finding::Truncated {
                    size: 40,
                    records: 38,
                    ..
                }
            )),
            "{:?}",
            report.chain.findings
        );
    }

    #[test]
    fn checkpoints_under_another_key_or_forged_roots_are_found() {
        let j = signed_journal(12);
        // Another key: nothing verifies.
        let (_, other) = crate::tlog::checkpoint::generate_key("auditgate/n1").unwrap();
        let options = Options {
            key: Some(CheckpointVerifier::from_text(&other).unwrap()),
            max_gap: None,
        };
        let report = verify_journal_with(&j.dir, &options).unwrap();
        assert!(report
            .chain
            .findings
            .iter()
            .all(|f| matches!(f, Finding::CheckpointSignature { .. })));
        assert!(!report.chain.findings.is_empty());

        // The right key signing a tree that is not this journal's (a checkpoint not
        // consistent with the earlier ones), and one signed an hour before the others.
        let signer = CheckpointSigner::load(&j.key, false, "unused").unwrap();
        let forged = signer.sign(6, Hash([9; 32]), SystemTime::now());
        let forged_name = checkpoint::file_name(6, SystemTime::now());
        fs::write(
            j.dir.join(checkpoint::CHECKPOINT_DIR).join(&forged_name),
            forged,
        )
        .unwrap();
        let report = j.check();
        assert!(
            report
                .chain
                .findings
                .contains(&Finding::CheckpointMismatch {
                    checkpoint: forged_name,
                    size: 6
                }),
            "{:?}",
            report.chain.findings
        );

        let old = SystemTime::now() - Duration::from_secs(3600);
        let frontier = {
            let mut f = Frontier::new();
            for leaf in crate::journal::read_leaf_hashes(&j.dir, 1, 3).unwrap() {
                f.push(merkle::hash_of(&leaf));
            }
            f
        };
        let early = signer.sign(3, frontier.root(), old);
        fs::write(
            j.dir
                .join(checkpoint::CHECKPOINT_DIR)
                .join(checkpoint::file_name(3, old)),
            early,
        )
        .unwrap();
        let report = j.check();
        // The gap runs from `old` to the next checkpoint in time: the one signed when the
        // journal opened, a moment (seconds, on a loaded machine) before `old` was taken, so
        // an hour less that moment.
        assert!(report
            .chain.findings
            .iter()
            .any(|f| matches!(f, Finding::CheckpointGap { gap_secs, max_secs: 180, .. } if *gap_secs >= 3500)), "{:?}", report.chain.findings);
    }

    #[test]
    fn two_checkpoints_of_one_size_with_different_roots_are_a_conflict() {
        let j = signed_journal(12);
        let files = checkpoint::list_checkpoint_files(&j.dir).unwrap();
        let existing = file_label(&files[1]);
        let size = checkpoint::size_of_file_name(&existing).unwrap();
        let later = SystemTime::now() + Duration::from_secs(1);
        let signer = CheckpointSigner::load(&j.key, false, "unused").unwrap();
        let forged = checkpoint::file_name(size, later);
        fs::write(
            j.dir.join(checkpoint::CHECKPOINT_DIR).join(&forged),
            signer.sign(size, Hash([9; 32]), later),
        )
        .unwrap();
        let report = j.check();
        assert!(
            report
                .chain
                .findings
                .contains(&Finding::CheckpointConflict {
                    size,
                    first: existing,
                    second: forged.clone(),
                }),
            "{:?}",
            report.chain.findings
        );
        assert!(report
            .chain
            .findings
            .iter()
            .any(|f| f.to_string().contains(&format!("checkpoints/{forged}"))));
    }

    #[test]
    fn segments_removed_after_shipping_are_accounted_for_by_the_archive_progress_file() {
        let j = signed_journal(40);
        let paths = j.segments();
        let sealed: Vec<(u64, PathBuf)> = list_segments(&j.dir)
            .unwrap()
            .into_iter()
            .filter_map(|(n, p)| match n {
                SegmentName::Sealed { last, .. } => Some((last, p)),
                SegmentName::Open { .. } => None,
            })
            .collect();
        assert!(sealed.len() >= 3, "{paths:?}");
        // The first two sealed segments were shipped and deleted.
        fs::remove_file(&sealed[0].1).unwrap();
        fs::remove_file(&sealed[1].1).unwrap();
        let gap = j.check();
        assert!(
            gap.chain
                .findings
                .iter()
                .any(|f| matches!(f, Finding::SegmentGap { .. })),
            "without the progress file the hole is a finding: {:?}",
            gap.chain.findings
        );
        let state = crate::journal::shipped::ShipState {
            target: "s3://b/p".into(),
            segments_through_seq: sealed[1].0,
            checkpoints_through: String::new(),
            columnar_through_seq: None,
        };
        fs::write(
            j.dir.join(crate::journal::shipped::SHIP_STATE_FILE),
            serde_json::to_vec(&state).unwrap(),
        )
        .unwrap();
        let report = j.check();
        assert!(report.ok(), "{:?}", report.chain.findings);
        assert_eq!(report.archived_records, sealed[1].0);
        assert_eq!(report.chain.head_seq, 40);
        // The roots are still checked, from the tree state kept at that seal.
        assert_eq!(report.chain.uncovered_records, 0, "{report:?}");
        // A rewrite of the local records is still found...
        let local = j.segments();
        let saved: Vec<(PathBuf, Vec<u8>)> = local
            .iter()
            .map(|p| (p.clone(), fs::read(p).unwrap()))
            .collect();
        let mut lines = content_lines(&local[0]);
        lines[0] = lines[0].replacen("\"action\":\"R\"", "\"action\":\"D\"", 1);
        write_lines(&local[0], &lines);
        // Re-chain from the first local record on (its own prev kept: the record before it
        // is in the archive only).
        let mut prev_hex: Option<String> = None;
        for path in &local {
            let mut out = Vec::new();
            for line in content_lines(path) {
                let at = line.find("\"prev\":\"").unwrap() + 8;
                let line = match &prev_hex {
                    Some(p) => format!("{}{}{}", &line[..at], p, &line[at + 64..]),
                    None => line,
                };
                prev_hex = Some(hex::encode(record::leaf_hash(line.as_bytes())));
                out.push(line);
            }
            write_lines(path, &out);
        }
        assert!(
            verify_journal(&j.dir).unwrap().ok(),
            "the chain alone cannot see it"
        );
        assert!(
            j.check()
                .chain
                .findings
                .iter()
                .any(|f| matches!(f, Finding::CheckpointMismatch { .. })),
            "the roots can"
        );
        for (path, bytes) in saved {
            fs::write(path, bytes).unwrap();
        }
        // ...and without the kept tree state the roots cannot be checked: a finding.
        fs::remove_file(checkpoint::seal_state_path(&j.dir, sealed[1].0)).unwrap();
        assert!(
            j.check().chain.findings.contains(&Finding::Unanchored {
                first_local_seq: sealed[1].0 + 1
            }),
            "{:?}",
            j.check().chain.findings
        );
        // A cut tail is still found: checkpoints beyond the head need no old records.
        let open = j.segments().last().unwrap().clone();
        let lines = content_lines(&open);
        write_lines(&open, &lines[..lines.len() - 1]);
        let report = j.check();
        assert!(
            report
                .chain
                .findings
                .iter()
                .any(|f| matches!(f, Finding::Truncated { .. })),
            "{:?}",
            report.chain.findings
        );
    }

    #[test]
    fn removed_checkpoints_are_a_finding() {
        let j = signed_journal(5);
        fs::remove_dir_all(j.dir.join(checkpoint::CHECKPOINT_DIR)).unwrap();
        let report = j.check();
        assert_eq!(report.chain.findings, vec![Finding::NoCheckpoints]);
        assert_eq!(report.chain.uncovered_records, 5);
    }

    #[test]
    fn a_restart_continues_the_tree_from_the_saved_state() {
        let j = signed_journal(30);
        // Reopen with checkpoints (from the state file) and add records.
        let cfg = JournalConfig {
            segment_max_bytes: 4096,
            ..JournalConfig::default()
        };
        let checkpointing = Checkpointing {
            signer: CheckpointSigner::load(&j.key, false, "unused").unwrap(),
            timing: CheckpointTiming {
                interval: Duration::ZERO,
                heartbeat: Duration::from_secs(3600),
            },
        };
        let (journal, _) =
            Journal::open_with_checkpoints(&j.dir, "n1", &cfg, Some(checkpointing)).unwrap();
        for i in 0..7 {
            journal.append_blocking(&event(i)).unwrap();
        }
        let stats = journal.checkpoint_stats().unwrap().clone();
        drop(journal);
        assert_eq!(
            stats.last_size.load(std::sync::atomic::Ordering::Relaxed),
            37
        );
        let report = j.check();
        assert!(report.ok(), "{:?}", report.chain.findings);
        assert_eq!(report.chain.head_seq, 37);
        assert_eq!(report.chain.uncovered_records, 0);
    }

    #[test]
    fn a_restart_never_signs_records_that_contradict_its_own_checkpoints() {
        let j = signed_journal(40);
        let open = |j: &Signed| {
            let signer = CheckpointSigner::load(&j.key, false, "unused").unwrap();
            Journal::open_with_checkpoints(
                &j.dir,
                "n1",
                &JournalConfig {
                    segment_max_bytes: 4096,
                    ..JournalConfig::default()
                },
                Some(Checkpointing {
                    signer,
                    timing: CheckpointTiming {
                        interval: Duration::from_secs(5),
                        heartbeat: Duration::from_secs(60),
                    },
                }),
            )
        };
        // Rewrite the chain (no key needed) and remove the saved tree state, so that the
        // restart must rebuild the tree from the records.
        let paths = j.segments();
        let mut lines = content_lines(&paths[1]);
        lines[0] = lines[0].replacen("\"action\":\"R\"", "\"action\":\"D\"", 1);
        write_lines(&paths[1], &lines);
        rewrite_chain(&paths);
        fs::remove_file(
            j.dir
                .join(checkpoint::CHECKPOINT_DIR)
                .join(checkpoint::STATE_FILE),
        )
        .unwrap();
        match open(&j) {
            Err(JournalError::Corrupt(msg)) => {
                assert!(msg.contains("which this gateway signed"), "{msg}")
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("the gateway would sign a rewritten history"),
        }
        // With every checkpoint deleted too, nothing local contradicts the records: the
        // start goes on (only the archive's copies can show the rewrite).
        fs::remove_dir_all(j.dir.join(checkpoint::CHECKPOINT_DIR)).unwrap();
        let (journal, report) = open(&j).unwrap();
        assert_eq!(report.head_seq, 40);
        drop(journal);
    }

    #[test]
    fn a_start_refuses_a_journal_shorter_than_its_checkpoint_state() {
        let j = signed_journal(40);
        let open = j.segments().last().unwrap().clone();
        let lines = content_lines(&open);
        write_lines(&open, &lines[..lines.len() - 1]);
        let signer = CheckpointSigner::load(&j.key, false, "unused").unwrap();
        let result = Journal::open_with_checkpoints(
            &j.dir,
            "n1",
            &JournalConfig::default(),
            Some(Checkpointing {
                signer,
                timing: CheckpointTiming {
                    interval: Duration::from_secs(5),
                    heartbeat: Duration::from_secs(60),
                },
            }),
        );
        match result {
            Err(JournalError::Corrupt(msg)) => {
                assert!(
                    msg.contains("covered by a signed checkpoint are missing"),
                    "{msg}"
                )
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("opened a journal that lost checkpointed records"),
        }
    }
}
