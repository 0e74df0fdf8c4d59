//! Fixtures written once for the unit tests and the integration tests: a small record, a signed
//! journal, and an archive store that injects faults.
//!
//! The library includes this file in its unit tests (`src/lib.rs`, `#[cfg(test)] mod
//! fixtures`), where `extern crate self as auditgate` makes the `auditgate::` paths below name
//! the crate itself; the integration tests include it through `tests/support/mod.rs`. It uses
//! only the library's public API.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use auditgate::archive::{ArchiveError, ArchiveStore, ListedVersion, ObjectInfo, PutResult};
use auditgate::journal::{CheckpointTiming, Checkpointing, Journal, JournalConfig};
use auditgate::record::{
    self, Action, Actor, Attribution, BulkFile, ChainHeader, ClientCert, ClockState, Event,
    GatewayId, Geo, InteractionKind, NetworkVector, Outcome, PatientRef, PatientSource, Phase,
    RequestSummary, Who,
};
use auditgate::tlog::checkpoint::{write_key_pair, CheckpointSigner};

/// A small outcome record (an unauthenticated read of `/fhir/metadata`), `req-N` its request ID.
pub fn event(n: usize) -> Event {
    Event {
        phase: Phase::Outcome,
        request_id: format!("req-{n}"),
        intent_seq: None,
        who: Who::Unauthenticated {
            reason: "missing_token".into(),
        },
        action: Action::R,
        interaction: InteractionKind::Read,
        rule: "test".into(),
        resource_type: None,
        resource_id: None,
        method: "GET".into(),
        path: "/fhir/metadata".into(),
        query: None,
        forwarded_query: None,
        patients: vec![],
        attribution: Attribution::None,
        attribution_gaps: Vec::new(),
        external_refs: Vec::new(),
        external_refs_omitted: None,
        bulk_files: Vec::new(),
        net: NetworkVector::default(),
        outcome: None,
        truncated: Default::default(),
        part: None,
        summary: None,
        config_change: None,
        clock: ClockState::default(),
        received: String::new(),
    }
}

/// A record that fills every field the record format has, varied by `n`: authenticated or
/// not, several patients from several sources, geo or not, a client certificate, bulk files,
/// a summary, truncated fields.
pub fn rich_event(n: usize) -> Event {
    let mut e = event(n);
    let user = format!("user-{}", n % 7);
    if n % 5 != 4 {
        e.who = Who::Authenticated(Actor {
            user,
            issuer: "https://idp.example".into(),
            name: (n.is_multiple_of(2)).then(|| format!("Dr. {}", n % 7)),
            roles: vec!["clinician".into(), format!("ward-{}", n % 3)],
            client_id: Some(format!("app-{}", n % 3)),
            purpose_of_use: if n.is_multiple_of(3) {
                vec!["TREAT".into()]
            } else {
                vec![]
            },
            jti: Some(format!("jti-{n}")),
            fhir_user: (n.is_multiple_of(4)).then(|| format!("Practitioner/{}", n % 7)),
            smart_patient: (n.is_multiple_of(6)).then(|| format!("p{}", n % 11)),
            break_glass: n.is_multiple_of(13),
        });
    }
    e.action = [Action::R, Action::C, Action::U, Action::D, Action::E][n % 5];
    e.interaction = [
        InteractionKind::Read,
        InteractionKind::Search,
        InteractionKind::Update,
        InteractionKind::Delete,
        InteractionKind::Operation,
    ][n % 5];
    e.phase = if n % 5 == 1 {
        Phase::Intent
    } else {
        Phase::Outcome
    };
    e.intent_seq = (n % 5 == 2).then_some(n as u64);
    e.rule = format!("rule-{}", n % 4);
    e.resource_type = Some(["Patient", "Observation", "Encounter"][n % 3].into());
    e.resource_id = (n.is_multiple_of(2)).then(|| format!("r{n}"));
    e.method = ["GET", "POST", "PUT", "DELETE"][n % 4].into();
    e.path = format!("/fhir/Observation/{n}");
    e.query = (n % 3 == 1).then(|| format!("patient=p{}&_count=10", n % 11));
    e.forwarded_query = (n % 9 == 1).then(|| "_elements=subject".into());
    let sources = [
        PatientSource::Path,
        PatientSource::Query,
        PatientSource::Response,
        PatientSource::Body,
    ];
    e.patients = (0..n % 4)
        .map(|k| PatientRef {
            id: format!("p{}", (n + k * 3) % 11),
            source: sources[(n + k) % 4],
        })
        .collect();
    // The same patient from two sources, now and then.
    if n % 8 == 3 {
        e.patients.push(PatientRef {
            id: e.patients[0].id.clone(),
            source: PatientSource::Token,
        });
    }
    e.attribution = if e.patients.is_empty() {
        Attribution::None
    } else if n % 10 == 7 {
        Attribution::Partial
    } else {
        Attribution::Complete
    };
    if n % 10 == 7 {
        e.attribution_gaps = vec!["too_large".into()];
    }
    if n % 17 == 5 {
        e.external_refs = vec!["https://other.example/fhir/Patient/x".into()];
        e.external_refs_omitted = Some(3);
    }
    if n % 19 == 2 {
        e.bulk_files = vec![
            BulkFile {
                url: "https://ehr.example/bulk/1.ndjson".into(),
                through_gateway: true,
            },
            BulkFile {
                url: "https://cdn.example/2.ndjson".into(),
                through_gateway: false,
            },
        ];
    }
    e.net = NetworkVector {
        client_ip: format!("10.0.{}.{}", n % 3, n % 200),
        peer_ip: "127.0.0.1".into(),
        forwarded_chain: if n.is_multiple_of(4) {
            vec![format!("10.0.{}.{}", n % 3, n % 200), "10.9.9.9".into()]
        } else {
            vec![]
        },
        device_id: (!n.is_multiple_of(3)).then(|| format!("dev-{}", n % 5)),
        device_id_source: (!n.is_multiple_of(3)).then(|| "header".into()),
        user_agent: Some(format!("client/{}", n % 4)),
        geo: match n % 3 {
            0 => None,
            1 => Some(None),
            _ => Some(Some(Geo {
                country: Some(["GB", "US", "SE"][n % 3].into()),
                city: (n.is_multiple_of(2)).then(|| "London".into()),
                asn: Some(1221 + (n % 2) as u32),
                org: Some("Telstra".into()),
            })),
        },
        geo_unavailable: (n % 3 == 1).then(|| "private".into()),
        client_cert: (n % 7 == 3).then(|| ClientCert {
            sha256: "ab".repeat(32),
            subject: Some("CN=device".into()),
        }),
        gateway: GatewayId {
            node: "n1".into(),
            listener: "main".into(),
        },
    };
    e.outcome = (e.phase == Phase::Outcome).then(|| Outcome {
        status: [200, 201, 403, 404, 503][n % 5],
        code: Outcome::code_for_status([200, 201, 403, 404, 503][n % 5]),
        error: (n % 5 == 4).then(|| "journal_unavailable".into()),
        bytes_out: Some(100 + n as u64),
        upstream_ms: (n.is_multiple_of(2)).then_some(3),
        content_type: Some("application/fhir+json".into()),
    });
    if n % 11 == 4 {
        e.truncated.insert("user_agent".into(), 9000);
    }
    e.part = (n % 23 == 1).then_some(2);
    if n % 29 == 6 {
        e.summary = Some(RequestSummary {
            count: 40,
            first: "2026-12-01T00:00:00.000001Z".into(),
            last: "2026-12-01T00:00:09.000001Z".into(),
            reasons: [("missing_token".to_string(), 40u64)].into_iter().collect(),
        });
    }
    e.clock = ClockState {
        synced: !n.is_multiple_of(31),
        max_error_ms: (n % 40) as u64,
        est_error_ms: (n % 4) as u64,
    };
    e.received = format!("2026-12-01T10:{:02}:{:02}.000123Z", (n / 60) % 60, n % 60);
    e
}

/// The lines of a segment of node `node` from seq `first`, chained from `prev` (hex), one
/// second apart from `start` (seconds since the epoch): the bytes as the journal writes them.
pub fn segment_bytes(node: &str, first: u64, prev: &str, events: &[Event], start: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut prev = prev.to_string();
    for (i, e) in events.iter().enumerate() {
        let header = ChainHeader {
            v: record::RECORD_VERSION,
            node: node.into(),
            seq: first + i as u64,
            prev: prev.clone(),
            ts: record::format_ts(SystemTime::UNIX_EPOCH + Duration::from_secs(start + i as u64)),
        };
        let mut line = Vec::new();
        record::splice_line(&mut line, &header, &e.to_json());
        prev = hex::encode(record::leaf_hash(&line));
        out.extend_from_slice(&line);
        out.push(b'\n');
    }
    out
}

/// How [`synthetic_trail`] stores one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// In the archive as zstd, with its columnar copy and seal.
    ZstdWithCopy,
    /// In the archive as gzip, with its columnar copy and seal.
    GzipWithCopy,
    /// In the archive as zstd, without a columnar copy.
    ZstdOnly,
    /// Only in the local journal, sealed, with its copy and seal beside it.
    LocalWithCopy,
    /// Only in the local journal, sealed, without a copy.
    LocalOnly,
    /// Only in the local journal, the open segment (must be last).
    LocalOpen,
}

/// A node's trail written as the gateway and its archiver write it, without running them:
/// `events` (each with its time, µs since the epoch) cut into consecutive segments of the
/// given sizes, each stored as `Stored` says, under a directory archive at `archive` (with
/// `prefix`) or in the journal directory `journal`; a checkpoint signed by `signer` at each
/// segment's end (in the archive for archived segments, in the journal for local ones), and
/// the tree state the checkpointer keeps at each seal. Returns every line, in seq order.
#[allow(
    clippy::too_many_arguments,
    reason = "a fixture: every argument is one independent choice of the trail"
)]
pub fn synthetic_trail(
    archive: &Path,
    prefix: &str,
    journal: &Path,
    node: &str,
    signer: &CheckpointSigner,
    events: &[(Event, i64)],
    segments: &[(usize, Stored)],
    options: &auditgate::columnar::WriteOptions,
) -> Vec<Vec<u8>> {
    use auditgate::archive::{Layout, SegmentCompression};
    use auditgate::tlog::checkpoint::{file_name, seal_state_path, MerkleState, CHECKPOINT_DIR};
    use auditgate::tlog::merkle::{Frontier, Hash};
    let layout = Layout::new(prefix);
    let put = |key: &str, bytes: &[u8]| {
        let path = archive.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    };
    std::fs::create_dir_all(journal.join(CHECKPOINT_DIR)).unwrap();
    let mut lines = Vec::new();
    let mut tree = Frontier::new();
    let mut prev = record::GENESIS_PREV.to_string();
    let mut at = 0usize;
    for (count, stored) in segments {
        let first = at as u64 + 1;
        let mut bytes = Vec::new();
        for (i, (event, micros)) in events[at..at + count].iter().enumerate() {
            let header = ChainHeader {
                v: record::RECORD_VERSION,
                node: node.into(),
                seq: first + i as u64,
                prev: prev.clone(),
                ts: record::format_ts(
                    SystemTime::UNIX_EPOCH + Duration::from_micros(*micros as u64),
                ),
            };
            let mut line = Vec::new();
            record::splice_line(&mut line, &header, &event.to_json());
            prev = hex::encode(record::leaf_hash(&line));
            bytes.extend_from_slice(&line);
            bytes.push(b'\n');
            lines.push(line);
        }
        let last = first + *count as u64 - 1;
        let before = tree.clone();
        for line in &lines[at..at + count] {
            tree.push(Hash(record::leaf_hash(line)));
        }
        at += count;
        let date = record::format_ts(
            SystemTime::UNIX_EPOCH + Duration::from_micros(events[first as usize - 1].1 as u64),
        )[..10]
            .to_string();
        let end_time = SystemTime::UNIX_EPOCH + Duration::from_micros(events[at - 1].1 as u64);
        let note = signer.sign(tree.size(), tree.root(), end_time);
        let copy = || {
            let copy = auditgate::columnar::write_segment(&bytes, &before, options).unwrap();
            let seal = copy.seal.sign(signer).unwrap();
            (copy.parquet, seal)
        };
        let seg_name = format!("seg-{first:020}-{last:020}");
        match stored {
            Stored::ZstdWithCopy | Stored::GzipWithCopy | Stored::ZstdOnly => {
                let compression = if *stored == Stored::GzipWithCopy {
                    SegmentCompression::Gzip
                } else {
                    SegmentCompression::Zstd
                };
                put(
                    &layout.segment(node, &date, first, last, compression),
                    &compression.compress(&bytes).unwrap(),
                );
                if *stored != Stored::ZstdOnly {
                    let (parquet, seal) = copy();
                    put(&layout.columnar(node, &date, first, last), &parquet);
                    put(&layout.seal(node, first, last), &seal);
                }
                put(
                    &layout.checkpoint(node, &file_name(tree.size(), end_time)),
                    &note,
                );
            }
            Stored::LocalWithCopy | Stored::LocalOnly => {
                std::fs::write(journal.join(format!("{seg_name}.jsonl")), &bytes).unwrap();
                if *stored == Stored::LocalWithCopy {
                    let (parquet, seal) = copy();
                    std::fs::write(journal.join(format!("{seg_name}.parquet")), parquet).unwrap();
                    std::fs::write(journal.join(format!("{seg_name}.seal")), seal).unwrap();
                }
                std::fs::write(
                    journal
                        .join(CHECKPOINT_DIR)
                        .join(file_name(tree.size(), end_time)),
                    &note,
                )
                .unwrap();
            }
            Stored::LocalOpen => {
                std::fs::write(journal.join(format!("seg-{first:020}.open.jsonl")), &bytes)
                    .unwrap();
                std::fs::write(
                    journal
                        .join(CHECKPOINT_DIR)
                        .join(file_name(tree.size(), end_time)),
                    &note,
                )
                .unwrap();
            }
        }
        if *stored != Stored::LocalOpen {
            let state = serde_json::to_vec(&MerkleState::of(&tree)).unwrap();
            std::fs::write(seal_state_path(journal, tree.size()), state).unwrap();
        }
    }
    lines
}

/// A journal of node `node` under `root/journal` holding `records` records in 4 KiB segments,
/// signed with a new key at `root/checkpoint.key` (`auditgate/NODE`) and checkpointed after
/// every batch. Returns once a signed checkpoint covers every record (the final head is signed
/// as the writer stops): (journal directory, private key path).
pub fn signed_journal(root: &Path, node: &str, records: usize) -> (PathBuf, PathBuf) {
    let key = root.join("checkpoint.key");
    write_key_pair(&key, &format!("auditgate/{node}")).unwrap();
    let dir = root.join("journal");
    let cfg = JournalConfig {
        segment_max_bytes: 4096,
        ..JournalConfig::default()
    };
    let checkpointing = Checkpointing {
        signer: CheckpointSigner::load(&key, false, "unused").unwrap(),
        timing: CheckpointTiming {
            interval: Duration::ZERO,
            heartbeat: Duration::from_secs(3600),
        },
    };
    let (j, _) = Journal::open_with_checkpoints(&dir, node, &cfg, Some(checkpointing)).unwrap();
    for i in 0..records {
        j.append_blocking(&event(i)).unwrap();
    }
    let stats = j.checkpoint_stats().unwrap().clone();
    // Dropping the last handle stops the writer, which signs the final head.
    drop(j);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.last_size.load(Ordering::Acquire) < records as u64 {
        assert!(
            Instant::now() < deadline,
            "no checkpoint covers all {records} records"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (dir, key)
}

/// The sealed segments of a journal directory, as (first, last), oldest first.
pub fn sealed_segments(journal: &Path) -> Vec<(u64, u64)> {
    auditgate::journal::list_segments(journal)
        .unwrap()
        .into_iter()
        .filter_map(|(name, _)| match name {
            auditgate::journal::SegmentName::Sealed { first, last } => Some((first, last)),
            auditgate::journal::SegmentName::Open { .. } => None,
        })
        .collect()
}

/// An archive store that forwards to `inner` and injects the faults a test sets:
///
/// * `lose_next_put_answer`: the next PUT stores the object, then reports a failure (the
///   "failed but actually stored" case: a timeout after the server stored the object);
/// * `extra_versions`: more entries in the version listing; a delete marker that is the
///   latest version hides its key from HEAD and GET (404), as S3 does;
/// * `heads`: the HEAD answer for some keys;
/// * `dressed_as_worm`: claim to be WORM, ready at once, and report a COMPLIANCE lock on
///   objects without a set HEAD answer (a directory store dressed up as a locked one).
pub struct FaultStore<S> {
    /// The store that really holds the objects.
    pub inner: S,
    /// Lose the answer of the next PUT, after the object is stored.
    pub lose_next_put_answer: AtomicBool,
    /// Listing entries added to the inner store's.
    pub extra_versions: Vec<ListedVersion>,
    /// HEAD answers, by key.
    pub heads: HashMap<String, ObjectInfo>,
    /// Claim WORM and COMPLIANCE locks (see above).
    pub dressed_as_worm: bool,
}

impl<S> FaultStore<S> {
    /// `inner` with no fault.
    pub fn new(inner: S) -> FaultStore<S> {
        FaultStore {
            inner,
            lose_next_put_answer: AtomicBool::new(false),
            extra_versions: Vec::new(),
            heads: HashMap::new(),
            dressed_as_worm: false,
        }
    }

    fn hidden(&self, key: &str) -> bool {
        self.extra_versions
            .iter()
            .any(|v| v.key == key && v.is_latest && v.is_delete_marker)
    }
}

#[async_trait::async_trait]
impl<S: ArchiveStore> ArchiveStore for FaultStore<S> {
    fn target(&self) -> String {
        self.inner.target()
    }
    fn is_worm(&self) -> bool {
        self.dressed_as_worm || self.inner.is_worm()
    }
    async fn check_ready(&self) -> Result<(), ArchiveError> {
        if self.dressed_as_worm {
            return Ok(());
        }
        self.inner.check_ready().await
    }
    async fn put_new(
        &self,
        key: &str,
        bytes: Vec<u8>,
        sha256: &str,
        retain_until: SystemTime,
    ) -> Result<PutResult, ArchiveError> {
        let result = self.inner.put_new(key, bytes, sha256, retain_until).await?;
        if self.lose_next_put_answer.swap(false, Ordering::SeqCst) {
            return Err(ArchiveError::Unreachable {
                target: self.target(),
                detail: "injected: the response was lost after the object was stored".into(),
            });
        }
        Ok(result)
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, ArchiveError> {
        if self.hidden(key) {
            return Ok(None);
        }
        let Some(stored) = self.inner.head(key).await? else {
            return Ok(None);
        };
        if let Some(set) = self.heads.get(key) {
            return Ok(Some(set.clone()));
        }
        if !self.dressed_as_worm {
            return Ok(Some(stored));
        }
        Ok(Some(ObjectInfo {
            lock_mode: Some("COMPLIANCE".into()),
            // Six years from the object's upload (or now, if the store does not say).
            retain_until: Some(
                stored.last_modified.unwrap_or_else(|| {
                    SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64)
                }) + 2192 * 86_400,
            ),
            ..stored
        }))
    }
    async fn get(&self, key: &str) -> Result<Vec<u8>, ArchiveError> {
        if self.hidden(key) {
            return Err(ArchiveError::Request {
                key: key.into(),
                status: 404,
                detail: "NoSuchKey".into(),
            });
        }
        self.inner.get(key).await
    }
    async fn list_versions(&self, prefix: &str) -> Result<Vec<ListedVersion>, ArchiveError> {
        let mut out = self.inner.list_versions(prefix).await?;
        for extra in &self.extra_versions {
            if extra.is_latest {
                for v in out.iter_mut().filter(|v| v.key == extra.key) {
                    v.is_latest = false;
                }
            }
            out.push(extra.clone());
        }
        Ok(out)
    }
}
