//! Unit tests of [`super`].

use super::*;
use crate::archive::{Archiver, DirStore, PutResult};
use crate::fixtures::FaultStore;
use crate::record;
use crate::tlog::checkpoint::{write_key_pair, CheckpointSigner};
use crate::tlog::merkle::{self, Frontier, Hash};

const PREFIX: &str = "audit";

/// A node's signed journal shipped to a directory archive by the real [`Archiver`].
struct Shipped {
    _tmp: tempfile::TempDir,
    journal: PathBuf,
    archive: PathBuf,
    key: PathBuf,
    records: u64,
}

/// `n` records of node `node` in 4 KiB segments, a checkpoint after every batch, then every
/// sealed segment and every checkpoint shipped (the open segment stays local).
async fn shipped(node: &str, n: usize, archive: Option<&Path>) -> Shipped {
    let tmp = tempfile::tempdir().unwrap();
    // The journal's blocking appends run off the test's runtime; when the fixture returns, a
    // signed checkpoint covers all `n` records.
    let (journal, key) = std::thread::scope(|scope| {
        scope
            .spawn(|| crate::fixtures::signed_journal(tmp.path(), node, n))
            .join()
            .unwrap()
    });
    let archive = archive.map_or_else(|| tmp.path().join("archive"), Path::to_path_buf);
    let store = Arc::new(DirStore::new(&archive));
    let mut archiver =
        Archiver::new(&journal, node, PREFIX, store, Duration::from_secs(86_400)).unwrap();
    assert!(archiver.ship_pending().await.unwrap() > 0);
    Shipped {
        _tmp: tmp,
        journal,
        archive,
        key,
        records: n as u64,
    }
}

impl Shipped {
    fn verifier(&self) -> CheckpointVerifier {
        CheckpointVerifier::load(checkpoint::public_key_path(&self.key).to_str().unwrap()).unwrap()
    }

    fn options(&self) -> ArchiveOptions {
        ArchiveOptions {
            keys: vec![self.verifier()],
            max_gap: Some(Duration::from_secs(180)),
            min_retention_days: 1,
            node: None,
        }
    }

    async fn check(&self) -> ArchiveReport {
        self.check_with(&self.options(), false).await
    }

    async fn check_with_journal(&self) -> ArchiveReport {
        self.check_with(&self.options(), true).await
    }

    async fn check_with(&self, options: &ArchiveOptions, journal: bool) -> ArchiveReport {
        let store = Arc::new(DirStore::new(&self.archive));
        verify_archive(
            store,
            PREFIX,
            options,
            journal.then_some(self.journal.as_path()),
        )
        .await
        .unwrap()
    }

    /// Archived files under `node=NODE/` ending with `suffix`, by file name.
    fn archived(&self, node: &str, suffix: &str) -> Vec<PathBuf> {
        fn walk(dir: &Path, suffix: &str, out: &mut Vec<PathBuf>) {
            for e in fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, suffix, out);
                } else if p.to_string_lossy().ends_with(suffix) {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(
            &self.archive.join(format!("{PREFIX}/v1/node={node}")),
            suffix,
            &mut out,
        );
        out.sort_by_key(|p| p.file_name().unwrap().to_owned());
        out
    }

    fn segments(&self) -> Vec<PathBuf> {
        self.archived("n1", ".jsonl.zst")
    }

    fn checkpoints(&self) -> Vec<PathBuf> {
        self.archived("n1", ".note")
    }

    fn key_of(&self, path: &Path) -> String {
        path.strip_prefix(&self.archive)
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}

/// An archived segment's lines (the compression its extension names).
fn segment_lines(path: &Path) -> Vec<String> {
    let (compression, _) = SegmentCompression::of_file_name(path.to_str().unwrap()).unwrap();
    let plain = compression.decompress(&fs::read(path).unwrap()).unwrap();
    String::from_utf8(plain)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn write_segment_lines(path: &Path, lines: &[String]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let (compression, _) = SegmentCompression::of_file_name(path.to_str().unwrap()).unwrap();
    fs::write(path, compression.compress(text.as_bytes()).unwrap()).unwrap();
}

/// Recompute every `prev` of the archived segments: a rewrite by someone who can write to
/// the archive but does not hold the signing key. Returns each record's leaf hash.
fn rewrite_chain(paths: &[PathBuf]) -> Vec<record::LeafHash> {
    let mut prev = [0u8; 32];
    let mut leaves = Vec::new();
    for path in paths {
        let mut out = Vec::new();
        for line in segment_lines(path) {
            let at = line.find("\"prev\":\"").unwrap() + 8;
            let line = format!("{}{}{}", &line[..at], hex::encode(prev), &line[at + 64..]);
            prev = record::leaf_hash(line.as_bytes());
            leaves.push(prev);
            out.push(line);
        }
        write_segment_lines(path, &out);
    }
    leaves
}

fn root_of(leaves: &[record::LeafHash]) -> Hash {
    let mut f = Frontier::new();
    for leaf in leaves {
        f.push(merkle::hash_of(leaf));
    }
    f.root()
}

fn findings(report: &ArchiveReport) -> Vec<Finding> {
    report.all_findings().cloned().collect()
}

#[tokio::test]
async fn a_shipped_journal_verifies_with_and_without_the_journal() {
    let s = shipped("n1", 60, None).await;
    assert!(s.segments().len() >= 3, "several sealed segments shipped");

    let report = s.check().await;
    assert!(report.ok(), "{:?}", findings(&report));
    assert!(!report.locks_checked, "a directory is not WORM");
    assert_eq!(report.nodes.len(), 1);
    let node = &report.nodes[0];
    assert_eq!(node.node, "n1");
    assert_eq!(node.chain.segments, s.segments().len());
    assert_eq!(node.chain.head_seq, node.archived_through_seq);
    assert_eq!(node.chain.records, node.archived_through_seq);
    assert!(
        node.chain.head_seq < s.records,
        "the open segment is not archived"
    );
    assert_eq!(node.chain.checkpoints, s.checkpoints().len());
    assert!(
        node.checkpoints_beyond_archive > 0,
        "the open segment's checkpoints are archived: {node:?}"
    );
    assert_eq!(
        node.chain.uncovered_records, 0,
        "every segment ends on a checkpoint"
    );

    let report = s.check_with_journal().await;
    assert!(report.ok(), "{:?}", findings(&report));
    let node = &report.nodes[0];
    assert_eq!(node.chain.head_seq, s.records);
    assert_eq!(node.chain.uncovered_records, 0);
    assert_eq!(node.checkpoints_beyond_archive, 0);
    let local = node.local.as_ref().unwrap();
    assert_eq!(local.segments_compared, s.segments().len());
    assert_eq!(local.checkpoints_compared, s.checkpoints().len());
    assert_eq!(local.segments_not_archived, 1, "the open segment");
    assert_eq!(
        local.records_not_archived,
        s.records - node.archived_through_seq
    );
    assert_eq!(local.shipped_through_seq, Some(node.archived_through_seq));
}

#[tokio::test]
async fn a_changed_record_in_an_archived_segment_is_named_by_its_key() {
    let s = shipped("n1", 60, None).await;
    let seg = &s.segments()[1];
    let key = s.key_of(seg);
    let mut lines = segment_lines(seg);
    lines[1] = lines[1].replace("req-", "reQ-");
    write_segment_lines(seg, &lines);

    let report = s.check().await;
    let found = findings(&report);
    assert!(
        found
            .iter()
            .any(|f| matches!(f, Finding::ChainBreak { segment, line: 3, .. } if *segment == key)),
        "{found:?}"
    );
    assert!(found
        .iter()
        .any(|f| matches!(f, Finding::CheckpointMismatch { .. })));
    // Named in the text too.
    assert!(found
        .iter()
        .any(|f| f.to_string().starts_with(&format!("{key}:3:"))));

    let found = findings(&s.check_with_journal().await);
    assert!(
        found.iter().any(|f| matches!(
            f,
            Finding::LocalMismatch { key: k, detail, .. } if *k == key && detail.contains("line 2")
        )),
        "{found:?}"
    );
}

#[tokio::test]
async fn a_removed_segment_is_missing_and_the_journal_fills_the_hole() {
    let s = shipped("n1", 60, None).await;
    let segs = s.segments();
    let SegmentName::Sealed { first, last } = SegmentName::parse(
        segs[1]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .strip_suffix(".zst")
            .unwrap(),
    )
    .unwrap() else {
        panic!("sealed")
    };
    fs::remove_file(&segs[1]).unwrap();
    let expected = Finding::SegmentMissing {
        node: "n1".into(),
        first,
        last,
        after: Some(s.key_of(&segs[0])),
        before: Some(s.key_of(&segs[2])),
        local_copy: false,
    };
    let report = s.check().await;
    assert_eq!(findings(&report), vec![expected.clone()]);

    // With the journal: the same hole, and the records are checked from the local copy
    // (every checkpoint still matches).
    let report = s.check_with_journal().await;
    let Finding::SegmentMissing {
        first: f,
        last: l,
        local_copy,
        ..
    } = &findings(&report)[0]
    else {
        panic!("{:?}", findings(&report))
    };
    assert_eq!((*f, *l, *local_copy), (first, last, true));
    assert_eq!(findings(&report).len(), 1, "{:?}", findings(&report));
    assert_eq!(report.nodes[0].chain.head_seq, s.records);
    assert_eq!(report.nodes[0].chain.uncovered_records, 0);
}

#[tokio::test]
async fn a_journal_whose_shipped_segments_were_deleted_locally_verifies_against_the_archive() {
    // `delete_local_after_ship`: the oldest sealed segments are only in the archive now.
    let s = shipped("n1", 60, None).await;
    let local = list_segments(&s.journal).unwrap();
    for (_, path) in &local[..2] {
        fs::remove_file(path).unwrap();
    }
    let report = s.check_with_journal().await;
    assert!(report.ok(), "{:?}", findings(&report));
    let node = &report.nodes[0];
    assert_eq!(node.chain.head_seq, s.records);
    assert_eq!(node.chain.uncovered_records, 0);
    assert_eq!(
        node.local.as_ref().unwrap().segments_compared,
        s.segments().len() - 2
    );
}

#[tokio::test]
async fn a_removed_last_segment_is_found_with_the_progress_file() {
    let s = shipped("n1", 60, None).await;
    let segs = s.segments();
    let removed = segs.last().unwrap();
    fs::remove_file(removed).unwrap();
    // Without the journal it looks like an archive that lags (documented).
    assert!(s.check().await.ok());
    let found = findings(&s.check_with_journal().await);
    assert!(
        matches!(
            found.as_slice(),
            [Finding::SegmentMissing { after: Some(after), before: None, local_copy: true, .. }]
                if *after == s.key_of(&segs[segs.len() - 2])
        ),
        "{found:?}"
    );
}

#[tokio::test]
async fn a_chain_rewritten_without_the_key_fails_only_the_checkpoints() {
    let s = shipped("n1", 60, None).await;
    let segs = s.segments();
    let mut lines = segment_lines(&segs[1]);
    lines[0] = lines[0].replacen("\"action\":\"R\"", "\"action\":\"D\"", 1);
    write_segment_lines(&segs[1], &lines);
    rewrite_chain(&segs);
    let plain = s
        .check_with(
            &ArchiveOptions {
                keys: vec![],
                ..s.options()
            },
            false,
        )
        .await;
    assert!(plain.ok(), "the chain alone cannot see it");
    let found = findings(&s.check().await);
    assert!(!found.is_empty());
    for f in &found {
        assert!(
            matches!(f, Finding::CheckpointMismatch { checkpoint, .. }
                | Finding::LaterCheckpointMismatches { last: checkpoint, .. }
                if checkpoint.starts_with("audit/v1/node=n1/checkpoints/")),
            "{found:?}"
        );
    }
}

#[tokio::test]
async fn a_chain_rewritten_and_signed_with_another_key_is_found() {
    let s = shipped("n1", 60, None).await;
    let segs = s.segments();
    let mut lines = segment_lines(&segs[1]);
    lines[0] = lines[0].replacen("\"action\":\"R\"", "\"action\":\"D\"", 1);
    write_segment_lines(&segs[1], &lines);
    let leaves = rewrite_chain(&segs);
    // The forger signs consistent checkpoints of the forged records with a key of the same
    // name.
    let forger = s.key.with_file_name("forger.key");
    write_key_pair(&forger, "auditgate/n1").unwrap();
    let signer = CheckpointSigner::load(&forger, false, "unused").unwrap();
    let mut forged = 0;
    for path in s.checkpoints() {
        let cp = checkpoint::parse_unverified(&fs::read(&path).unwrap()).unwrap();
        if cp.size as usize <= leaves.len() {
            let note = signer.sign(
                cp.size,
                root_of(&leaves[..cp.size as usize]),
                SystemTime::now(),
            );
            fs::write(&path, note).unwrap();
            forged += 1;
        }
    }
    assert!(forged > 0);
    // With the forger's key everything is consistent...
    let forger_key =
        CheckpointVerifier::load(checkpoint::public_key_path(&forger).to_str().unwrap()).unwrap();
    let with_forger = s
        .check_with(
            &ArchiveOptions {
                keys: vec![forger_key],
                max_gap: None,
                ..s.options()
            },
            false,
        )
        .await;
    assert!(
        findings(&with_forger)
            .iter()
            .all(|f| matches!(f, Finding::CheckpointSignature { .. })),
        "only the real key's checkpoints beyond the archive fail: {:?}",
        findings(&with_forger)
    );
    // ...with the node's key, every forged checkpoint is named.
    let found = findings(&s.check().await);
    let bad: Vec<&Finding> = found
        .iter()
        .filter(|f| matches!(f, Finding::CheckpointSignature { checkpoint, .. } if checkpoint.starts_with("audit/v1/node=n1/checkpoints/")))
        .collect();
    assert_eq!(bad.len(), forged, "{found:?}");
    assert!(found.iter().all(|f| matches!(
        f,
        Finding::CheckpointSignature { .. } | Finding::CheckpointGap { .. }
    )));
}

#[tokio::test]
async fn a_truncated_local_tail_is_found_against_the_archived_checkpoints() {
    let s = shipped("n1", 60, None).await;
    // Records after the last archived segment removed locally (and the local checkpoints
    // with them): only the archived checkpoints remember them.
    let (_, open) = list_segments(&s.journal).unwrap().pop().unwrap();
    let bytes = fs::read(&open).unwrap();
    let text = std::str::from_utf8(&bytes[..crate::journal::used_len(&bytes)]).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3);
    let kept: String = lines[..lines.len() - 2]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&open, kept).unwrap();
    for p in checkpoint::list_checkpoint_files(&s.journal).unwrap() {
        fs::remove_file(p).unwrap();
    }
    assert!(
        s.check().await.ok(),
        "the archive alone holds no records past its segments"
    );
    let found = findings(&s.check_with_journal().await);
    let top = s.records;
    assert!(
        found.iter().any(|f| matches!(
            f,
            Finding::Truncated { checkpoint, size, records }
                if *size == top && *records == top - 2
                    && checkpoint.starts_with("audit/v1/node=n1/checkpoints/")
        )),
        "{found:?}"
    );
    assert!(
        found.iter().all(|f| matches!(f, Finding::Truncated { .. })),
        "{found:?}"
    );
}

#[tokio::test]
async fn a_checkpoint_inconsistent_with_an_earlier_one_is_found() {
    let s = shipped("n1", 60, None).await;
    let signer = CheckpointSigner::load(&s.key, false, "unused").unwrap();
    // A tree that is not this log's, at the size of an archived checkpoint.
    let size =
        checkpoint::size_of_file_name(&s.checkpoints()[1].file_name().unwrap().to_string_lossy())
            .unwrap();
    let later = SystemTime::now() + Duration::from_secs(1);
    let name = checkpoint::file_name(size, later);
    let key = Layout::new(PREFIX).checkpoint("n1", &name);
    let note = signer.sign(size, Hash([7; 32]), later);
    let store = DirStore::new(&s.archive);
    assert_eq!(
        store
            .put_new(&key, note.clone(), &sha256_b64(&note), later)
            .await
            .unwrap(),
        PutResult::Created
    );
    let found = findings(&s.check().await);
    assert!(
        found.contains(&Finding::CheckpointMismatch {
            checkpoint: key.clone(),
            size
        }),
        "{found:?}"
    );
    assert!(
        found.iter().any(|f| matches!(
            f,
            Finding::CheckpointConflict { size: sz, second, .. } if *sz == size && *second == key
        )),
        "{found:?}"
    );
}

#[tokio::test]
async fn nodes_are_checked_separately_with_their_own_keys() {
    let a = shipped("n1", 30, None).await;
    let b = shipped("n2", 20, Some(&a.archive)).await;
    let both = ArchiveOptions {
        keys: vec![b.verifier(), a.verifier()],
        ..a.options()
    };
    let report = a.check_with(&both, false).await;
    assert!(report.ok(), "{:?}", findings(&report));
    let nodes: Vec<&str> = report.nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(nodes, ["n1", "n2"]);
    assert!(report.nodes.iter().all(|n| n.chain.checkpoints > 0));

    // --node n2 checks that node only.
    let report = a
        .check_with(
            &ArchiveOptions {
                keys: vec![b.verifier()],
                node: Some("n2".into()),
                ..a.options()
            },
            false,
        )
        .await;
    assert!(report.ok(), "{:?}", findings(&report));
    assert_eq!(report.nodes.len(), 1);

    // The journal is matched with its own node.
    let report = b.check_with(&both, true).await;
    assert!(report.ok(), "{:?}", findings(&report));
    assert!(report.nodes[0].local.is_none());
    assert_eq!(report.nodes[1].chain.head_seq, 20);

    // Two keys, none of them n2's.
    let (_, other) = checkpoint::generate_key("auditgate/n3").unwrap();
    let report = a
        .check_with(
            &ArchiveOptions {
                keys: vec![a.verifier(), CheckpointVerifier::from_text(&other).unwrap()],
                ..a.options()
            },
            false,
        )
        .await;
    assert!(
        matches!(findings(&report).as_slice(), [Finding::NoKeyForNode { node, .. }] if node == "n2"),
        "{:?}",
        findings(&report)
    );

    // Something that is not part of the layout.
    let stray = a.archive.join(format!("{PREFIX}/v1/node=n1/notes.txt"));
    fs::write(&stray, "hello").unwrap();
    let stray_root = a.archive.join(format!("{PREFIX}/v1/README"));
    fs::write(&stray_root, "hello").unwrap();
    let found = findings(&a.check_with(&both, false).await);
    assert!(found.contains(&Finding::UnexpectedObject {
        key: format!("{PREFIX}/v1/node=n1/notes.txt")
    }));
    assert!(found.contains(&Finding::UnexpectedObject {
        key: format!("{PREFIX}/v1/README")
    }));
}

#[tokio::test]
async fn an_empty_archive_is_a_finding() {
    let tmp = tempfile::tempdir().unwrap();
    let report = verify_archive(
        Arc::new(DirStore::new(tmp.path())),
        PREFIX,
        &ArchiveOptions::default(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        findings(&report),
        vec![Finding::EmptyArchive {
            prefix: "audit/v1/".into()
        }]
    );
    // A node the archive does not have: that, and nothing else (no "no checkpoints").
    let (_, public) = checkpoint::generate_key("auditgate/n9").unwrap();
    let options = ArchiveOptions {
        keys: vec![CheckpointVerifier::from_text(&public).unwrap()],
        node: Some("n9".into()),
        ..ArchiveOptions::default()
    };
    let report = verify_archive(Arc::new(DirStore::new(tmp.path())), PREFIX, &options, None)
        .await
        .unwrap();
    assert_eq!(
        findings(&report),
        vec![Finding::EmptyArchive {
            prefix: "audit/v1/node=n9/".into()
        }]
    );
}

#[tokio::test]
async fn versions_delete_markers_and_locks_are_checked_on_a_worm_store() {
    let s = shipped("n1", 60, None).await;
    let segs = s.segments();
    let cps = s.checkpoints();
    let hidden = s.key_of(&segs[1]);
    let rewritten = s.key_of(&segs[2]);
    let governance = s.key_of(&segs[0]);
    let short = s.key_of(&cps[0]);
    let bad_sum = s.key_of(&cps[1]);
    let marker = |key: &str, is_latest| ListedVersion {
        key: key.into(),
        version_id: Some("dm".into()),
        is_latest,
        is_delete_marker: true,
    };
    let mut heads = HashMap::new();
    heads.insert(
        governance.clone(),
        ObjectInfo {
            lock_mode: Some("GOVERNANCE".into()),
            retain_until: Some(2_000_000_000),
            ..ObjectInfo::default()
        },
    );
    heads.insert(
        short.clone(),
        ObjectInfo {
            lock_mode: Some("COMPLIANCE".into()),
            retain_until: Some(1_000_000_000 + 1000 * 86_400),
            last_modified: Some(1_000_000_000),
            ..ObjectInfo::default()
        },
    );
    heads.insert(
        bad_sum.clone(),
        ObjectInfo {
            lock_mode: Some("COMPLIANCE".into()),
            retain_until: Some(1_000_000_000 + 2191 * 86_400),
            last_modified: Some(1_000_000_000),
            sha256: Some(sha256_b64(b"other bytes")),
            ..ObjectInfo::default()
        },
    );
    let store = Arc::new(FaultStore {
        dressed_as_worm: true,
        extra_versions: vec![
            marker(&hidden, true),
            ListedVersion {
                key: rewritten.clone(),
                version_id: Some("v2".into()),
                is_latest: true,
                is_delete_marker: false,
            },
            marker(&s.key_of(&cps[2]), false),
        ],
        heads,
        ..FaultStore::new(DirStore::new(&s.archive))
    });
    let options = ArchiveOptions {
        min_retention_days: SIX_YEARS_DAYS,
        ..s.options()
    };
    let report = verify_archive(store.clone(), PREFIX, &options, None)
        .await
        .unwrap();
    assert!(report.locks_checked);
    let mut found = findings(&report);
    found.sort_by_key(|f| f.to_string());
    let mut expected = vec![
        Finding::DeleteMarker {
            key: hidden.clone(),
            hidden: true,
        },
        Finding::DeleteMarker {
            key: s.key_of(&cps[2]),
            hidden: false,
        },
        Finding::SecondVersion {
            key: rewritten.clone(),
            versions: 2,
        },
        Finding::LockMissing {
            key: governance.clone(),
            mode: Some("GOVERNANCE".into()),
            retain_until: Some(2_000_000_000),
        },
        Finding::RetentionShort {
            key: short.clone(),
            retained_days: 1000,
            min_days: SIX_YEARS_DAYS,
        },
        Finding::ChecksumMismatch {
            key: bad_sum.clone(),
            recorded: sha256_b64(b"other bytes"),
            actual: sha256_b64(&fs::read(&cps[1]).unwrap()),
        },
    ];
    expected.sort_by_key(|f| f.to_string());
    // The hidden segment's records cannot be read: no missing-segment finding (the delete
    // marker is the finding), and checkpoints past it cannot be recomputed.
    assert_eq!(found, expected);
    for f in &found {
        let text = f.to_string();
        assert!(text.starts_with("audit/v1/node=n1/"), "{text}");
    }

    // With the journal, the hidden segment's records come from the local copy.
    let report = verify_archive(store, PREFIX, &options, Some(&s.journal))
        .await
        .unwrap();
    let mut found = findings(&report);
    found.sort_by_key(|f| f.to_string());
    assert_eq!(found, expected);
    assert_eq!(report.nodes[0].chain.head_seq, s.records);
    assert_eq!(report.nodes[0].chain.uncovered_records, 0);
}
