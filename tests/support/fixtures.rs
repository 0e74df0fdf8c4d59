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
    Action, Attribution, ClockState, Event, InteractionKind, NetworkVector, Phase, Who,
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
        clock: ClockState::default(),
        received: String::new(),
    }
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
            retain_until: Some(1_000_000_000 + 2192 * 86_400),
            last_modified: Some(1_000_000_000),
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
