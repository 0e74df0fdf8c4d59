//! `auditgate verify --archive`: re-check the WORM archive from its objects alone, and, with the
//! local journal, check that the two agree.
//!
//! Owns the archive side of `verify`. The archive's layout and stores belong to
//! [`crate::archive`]; the chain and checkpoint checks are the journal's ([`super`]), fed with
//! archived bytes instead of files. Nodes are found by listing `PREFIX/v1/` (or only
//! `--node`'s); every node has its own seq, chain and key, and is checked and reported
//! separately. For each node:
//!
//! * **Versions.** Every version and delete marker under the node is listed. A key with a
//!   delete marker (hiding the object, or anywhere in its history) or with a second version is a
//!   finding: under Object Lock nothing can be deleted or overwritten, but a new version can
//!   be put on top, and a delete marker hides an object from a plain listing.
//! * **Locks** (stores that enforce them, i.e. S3): the current version of every object must be
//!   in COMPLIANCE mode with a retain-until date at least `min_retention_days` after the time it
//!   was stored (one day of slack for clocks), and its bytes must hash to the SHA-256 the store
//!   recorded at upload. A directory archive is not WORM: locks are not checked.
//! * **Records.** Segments are read in seq order (the next one downloaded while the current one
//!   is hashed) and checked exactly as the journal's files are: every leaf hash, the chain
//!   within and across segments, names against contents. A seq range no archived segment holds
//!   is a [`Finding::SegmentMissing`]; a hidden segment is a [`Finding::DeleteMarker`] and its
//!   records are skipped (or read from the local journal, which still has them).
//! * **Checkpoints.** Every archived checkpoint's signature (with the node's key), its root
//!   against the root recomputed from the archived records, heartbeat gaps, and two valid
//!   checkpoints of one size with different roots. Recomputing every root from the same records
//!   is what makes consecutive checkpoints consistent with each other.
//!
//! The archive lags the journal: the open segment is not shipped until it is sealed, but the
//! checkpoints that cover its records are. Without `--journal`, checkpoints beyond the archived
//! records are counted, not reported (and not checked). With `--journal DIR` (one node's
//! journal; its node is `--node` or the `node` of its records):
//!
//! * every local sealed segment that is also archived must have the same bytes, every local
//!   checkpoint that is also archived the same note;
//! * what the local progress file (`archive-state.json`, read before the listing) says was
//!   shipped to this archive must be there;
//! * the records the archive does not have (sealed segments not shipped yet, the open
//!   segment) are checked from the local files, continuing the archive's chain, and the
//!   checkpoints beyond the archive are checked against them; a checkpoint beyond the local
//!   head means records were cut off the journal ([`Finding::Truncated`]).
//!
//! What this cannot see: without `--journal`, segments removed from the end of a directory
//! archive look like an archive that lags (S3 Object Lock makes removal impossible, and a
//! delete marker is reported). The content of a version hidden behind a delete marker or
//! overwritten by a newer version is not read (the store interface reads the current version):
//! the finding names the key; compare its versions by hand.

use crate::durable::FileError;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::chain::{read_checkpoint_notes, ChainCheck, CheckpointCheck};
use super::columnar::{ColumnarCheck, CopyFiles};
use super::finding::Finding;
use super::report::ChainReport;
use crate::archive::{
    sha256_b64, ArchiveError, ArchiveStore, Layout, ListedVersion, ObjectInfo, SegmentCompression,
    SIX_YEARS_DAYS,
};
use crate::journal::shipped::{ShipState, SHIP_STATE_FILE};
use crate::journal::{list_segments, JournalError, SegmentName};
use crate::tlog::checkpoint::{self, CheckpointVerifier};

/// At most this many HEAD or GET requests at once.
const CONCURRENT_REQUESTS: usize = 16;
/// How far a retain-until date may fall short of the minimum retention (clock differences
/// between the gateway and the store): the archiver's own allowance.
const RETENTION_SLACK_SECS: i64 = crate::archive::RETENTION_SLACK.as_secs() as i64;

/// What `verify --archive` checks beyond the records.
pub struct ArchiveOptions {
    /// Checkpoint public keys. A node's checkpoints are checked with the only key given, or,
    /// with several, with the one named `auditgate/NODE` (or `NODE`). Empty: not checked.
    pub keys: Vec<CheckpointVerifier>,
    /// Report consecutive checkpoints signed further apart than this.
    pub max_gap: Option<Duration>,
    /// Every object must be locked for at least this many days after it was stored.
    pub min_retention_days: u64,
    /// Check only this node (and take it as the `--journal`'s node).
    pub node: Option<String>,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        ArchiveOptions {
            keys: Vec::new(),
            max_gap: None,
            min_retention_days: SIX_YEARS_DAYS,
            node: None,
        }
    }
}

/// Why the archive could not be verified at all (exit 2, unlike a finding).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveVerifyError {
    /// Listing or reading the archive failed (unreachable, access denied...).
    #[error("{0}")]
    Archive(#[from] ArchiveError),
    /// The local journal could not be read.
    #[error("{0}")]
    Journal(#[from] JournalError),
    /// The arguments do not describe something that can be checked.
    #[error("{0}")]
    Usage(String),
}

/// The result of verifying an archive.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveReport {
    /// `s3://BUCKET/PREFIX` or `dir:PATH`.
    pub archive: String,
    /// What was listed: `PREFIX/v1/` (or one node's part of it).
    pub listed: String,
    /// Lock modes, retain-until dates and stored checksums were checked (S3). False for a
    /// directory archive, which is not WORM.
    pub locks_checked: bool,
    /// The retention every object was checked against, in days.
    pub min_retention_days: u64,
    /// Object versions and delete markers listed.
    pub versions_listed: usize,
    /// One report per node found under the prefix.
    pub nodes: Vec<NodeReport>,
    /// Findings not tied to one node.
    pub findings: Vec<Finding>,
}

impl ArchiveReport {
    /// True when nothing was found.
    pub fn ok(&self) -> bool {
        self.findings.is_empty() && self.nodes.iter().all(|n| n.chain.findings.is_empty())
    }

    /// Every finding, the archive's and each node's.
    pub fn all_findings(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .chain(self.nodes.iter().flat_map(|n| n.chain.findings.iter()))
    }
}

/// One node of the archive.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    /// The node.
    pub node: String,
    /// The chain as checked: archived segments (and with `--journal` the local journal's
    /// head), the checkpoints checked (archived, and with `--journal` local ones too), and
    /// every problem found for this node.
    #[serde(flatten)]
    pub chain: ChainReport,
    /// The last seq of the last archived segment (0: none).
    pub archived_through_seq: u64,
    /// Without `--journal`: validly signed checkpoints that cover records the archive does not
    /// hold yet (the open segment's), so not checked against records.
    pub checkpoints_beyond_archive: usize,
    /// With `--journal`: what was compared with the local journal.
    pub local: Option<LocalReport>,
}

/// What was checked against the local journal.
#[derive(Debug, Clone, Serialize)]
pub struct LocalReport {
    /// The local journal directory.
    pub journal: PathBuf,
    /// Local sealed segments compared byte for byte with their archived copies.
    pub segments_compared: usize,
    /// Local checkpoints compared with their archived copies.
    pub checkpoints_compared: usize,
    /// Local segments checked because the archive does not have them: sealed ones not shipped
    /// yet, and the open one.
    pub segments_not_archived: usize,
    /// Records in those.
    pub records_not_archived: u64,
    /// What the progress file says is shipped to this archive; `None`: no progress file for
    /// this archive (so nothing can be missing from it).
    pub shipped_through_seq: Option<u64>,
}

/// The local journal given with `--journal`.
struct LocalJournal {
    dir: PathBuf,
    /// What the progress file says was shipped to this archive.
    shipped: Option<ShipState>,
    node: String,
    segments: Vec<(SegmentName, PathBuf)>,
    /// Checkpoint notes: (file name, bytes).
    checkpoints: Vec<(String, Vec<u8>)>,
}

/// Whether two archive targets (`s3://BUCKET/PREFIX`, `dir:PATH`) are the same archive.
fn same_target(a: &str, b: &str) -> bool {
    match (a.strip_prefix("dir:"), b.strip_prefix("dir:")) {
        (Some(a), Some(b)) => {
            let canon = |p: &str| fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p));
            canon(a) == canon(b)
        }
        _ => a.trim_end_matches('/') == b.trim_end_matches('/'),
    }
}

/// The progress file, if it is about `target`.
fn read_progress(dir: &Path, target: &str) -> Result<Option<ShipState>, JournalError> {
    let state = ShipState::read(dir).map_err(|source| {
        JournalError::Io(FileError {
            path: dir.join(SHIP_STATE_FILE),
            source,
        })
    })?;
    Ok(state.filter(|s| same_target(&s.target, target)))
}

/// The `node` of the journal's first record.
/// Read a local segment; an open segment sealed (renamed) since the listing is found again by
/// its first seq.
fn read_local(dir: &Path, name: &SegmentName, path: &Path) -> Result<Vec<u8>, JournalError> {
    match fs::read(path) {
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && matches!(name, SegmentName::Open { .. }) =>
        {
            let now = list_segments(dir)?
                .into_iter()
                .find(|(n, _)| n.first() == name.first())
                .map(|(_, p)| p)
                .ok_or_else(|| {
                    JournalError::Io(FileError {
                        path: path.to_path_buf(),
                        source: e,
                    })
                })?;
            fs::read(&now).map_err(|source| JournalError::Io(FileError { path: now, source }))
        }
        other => other.map_err(|source| {
            JournalError::Io(FileError {
                path: path.to_path_buf(),
                source,
            })
        }),
    }
}

/// Run CPU-bound work without stalling the other tasks of a multi-threaded runtime.
fn blocking<R>(work: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// `request(key)` for every key, at most [`CONCURRENT_REQUESTS`] at once; results by key.
async fn for_each_key<T, F, Fut>(keys: Vec<String>, request: F) -> BTreeMap<String, T>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut out = BTreeMap::new();
    // A request that panicked is a bug: its panic goes on here, in the caller.
    let mut collect = |done: Result<(String, T), tokio::task::JoinError>| match done {
        Ok((k, v)) => {
            out.insert(k, v);
        }
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    for key in keys {
        if set.len() >= CONCURRENT_REQUESTS {
            if let Some(done) = set.join_next().await {
                collect(done);
            }
        }
        let fut = request(key.clone());
        set.spawn(async move { (key, fut.await) });
    }
    while let Some(done) = set.join_next().await {
        collect(done);
    }
    out
}

/// Aborts the segment prefetch task when the check ends early.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Verify the archive under `prefix` in `store`, and with `journal`, its agreement with that
/// local journal directory.
pub async fn verify_archive(
    store: Arc<dyn ArchiveStore>,
    prefix: &str,
    options: &ArchiveOptions,
    journal: Option<&Path>,
) -> Result<ArchiveReport, ArchiveVerifyError> {
    let layout = Layout::new(prefix);
    let root = layout.root();
    let target = store.target();
    // The progress file before the listing: whatever it says was shipped was shipped before
    // the listing started, so it must be in the listing.
    let shipped = match journal {
        Some(dir) => read_progress(dir, &target)?,
        None => None,
    };
    let listed = match &options.node {
        Some(node) => layout.node(node),
        None => root.clone(),
    };
    let mut listing = store.list_versions(&listed).await?;
    if let Some(node) = &options.node {
        // The node's columnar copies live under their own root.
        let copies = format!("{}node={node}/", layout.columnar_root());
        listing.extend(store.list_versions(&copies).await?);
    }
    let mut report = ArchiveReport {
        archive: target,
        listed: listed.clone(),
        locks_checked: store.is_worm(),
        min_retention_days: options.min_retention_days,
        versions_listed: listing.len(),
        nodes: Vec::new(),
        findings: Vec::new(),
    };
    let mut by_node: BTreeMap<String, Vec<ListedVersion>> = BTreeMap::new();
    let mut unexpected = BTreeSet::new();
    for version in listing {
        let node = version
            .key
            .strip_prefix(&root)
            .map(|rest| rest.strip_prefix("columnar/").unwrap_or(rest))
            .and_then(|rest| rest.strip_prefix("node="))
            .and_then(|rest| rest.split_once('/'))
            .map(|(node, _)| node.to_string())
            .filter(|node| !node.is_empty());
        match node {
            Some(node) => by_node.entry(node).or_default().push(version),
            None => {
                unexpected.insert(version.key);
            }
        }
    }
    report.findings.extend(
        unexpected
            .into_iter()
            .map(|key| Finding::UnexpectedObject { key }),
    );

    // The local journal, listed after the archive: every segment archived by now was sealed
    // before, so the listing holds it sealed.
    let local = match journal {
        Some(dir) => {
            let segments = list_segments(dir)?;
            let node = match &options.node {
                Some(node) => node.clone(),
                None => crate::journal::node_of_segments(&segments).ok_or_else(|| {
                    ArchiveVerifyError::Usage(format!(
                        "cannot tell which node the journal {} belongs to (it holds no record): give --node",
                        dir.display()
                    ))
                })?,
            };
            Some(LocalJournal {
                dir: dir.to_path_buf(),
                shipped,
                node,
                segments,
                checkpoints: read_checkpoint_notes(dir)?,
            })
        }
        None => None,
    };
    if let Some(node) = &options.node {
        by_node.entry(node.clone()).or_default();
    }
    if let Some(local) = &local {
        by_node.entry(local.node.clone()).or_default();
    }
    if by_node.is_empty() {
        report
            .findings
            .push(Finding::EmptyArchive { prefix: listed });
    }
    for (node, versions) in by_node {
        let local = local.as_ref().filter(|l| l.node == node);
        let node_report = verify_node(&store, &layout, &node, versions, options, local).await?;
        report.nodes.push(node_report);
    }
    Ok(report)
}

/// The key a node's checkpoints are checked with.
fn key_for<'a>(
    node: &str,
    keys: &'a [CheckpointVerifier],
) -> Result<Option<&'a CheckpointVerifier>, Finding> {
    match keys {
        [] => Ok(None),
        [only] => Ok(Some(only)),
        several => several
            .iter()
            .find(|k| k.name() == format!("auditgate/{node}") || k.name() == node)
            .map(Some)
            .ok_or_else(|| Finding::NoKeyForNode {
                node: node.to_string(),
                keys: several.iter().map(|k| k.name().to_string()).collect(),
            }),
    }
}

/// An archived segment as listed.
struct ArchivedSegment {
    key: String,
    first: u64,
    last: u64,
    /// The current version is a delete marker.
    hidden: bool,
}

/// One step of a node's record stream, in seq order.
enum Step {
    /// Read an archived segment (and compare it with the local copy, if any).
    Archived {
        key: String,
        first: u64,
        last: u64,
        local: Option<PathBuf>,
    },
    /// Read a local segment the archive does not have (or hides).
    Local { name: SegmentName, path: PathBuf },
    /// Records up to here are missing and already reported.
    SkipTo(u64),
}

/// Split a key under `PREFIX/v1/node=NODE/` (or `PREFIX/v1/columnar/node=NODE/`, `columnar`)
/// into a segment, checkpoint, seal or columnar copy of the layout.
enum Kind {
    Segment { first: u64, last: u64 },
    Checkpoint { name: String },
    Seal { first: u64, last: u64 },
    Columnar { first: u64, last: u64 },
    Other,
}

fn classify(rest: &str, columnar: bool) -> Kind {
    if columnar {
        return match rest.split_once('/') {
            Some((partition, file)) if partition.starts_with("dt=") && !file.contains('/') => {
                match crate::columnar::local::parse_file_name(file, "parquet") {
                    Some((first, last)) => Kind::Columnar { first, last },
                    None => Kind::Other,
                }
            }
            _ => Kind::Other,
        };
    }
    if let Some(name) = rest.strip_prefix("seals/") {
        return match crate::columnar::local::parse_file_name(name, "seal") {
            Some((first, last)) => Kind::Seal { first, last },
            None => Kind::Other,
        };
    }
    if let Some(name) = rest.strip_prefix("checkpoints/") {
        if !name.contains('/') && checkpoint::size_of_file_name(name).is_some() {
            return Kind::Checkpoint {
                name: name.to_string(),
            };
        }
        return Kind::Other;
    }
    let Some((partition, file)) = rest.split_once('/') else {
        return Kind::Other;
    };
    if !partition.starts_with("dt=") || file.contains('/') {
        return Kind::Other;
    }
    match SegmentCompression::of_file_name(file).and_then(|(_, stem)| SegmentName::parse(stem)) {
        Some(SegmentName::Sealed { first, last }) => Kind::Segment { first, last },
        _ => Kind::Other,
    }
}

/// The archived columnar copy and seal of segment `(first, last)`, read (their checksums
/// checked against the store's).
async fn archived_copy_files(
    store: &Arc<dyn ArchiveStore>,
    survey: &Survey,
    heads: &HashMap<String, ObjectInfo>,
    range: (u64, u64),
    findings: &mut Vec<Finding>,
) -> Result<CopyFiles, ArchiveError> {
    let mut files = CopyFiles::default();
    for (listed, slot) in [
        (&survey.columnar, &mut files.parquet),
        (&survey.seals, &mut files.seal),
    ] {
        let Some(key) = listed.get(&range) else {
            continue;
        };
        match store.get(key).await {
            Ok(bytes) => {
                check_checksum(heads, key, &bytes, findings);
                *slot = Some((key.clone(), bytes));
            }
            Err(ArchiveError::Request { status: 404, .. }) => findings.push(Finding::Unreadable {
                key: key.clone(),
                reason: "GET found no object".into(),
            }),
            Err(e) => return Err(e),
        }
    }
    Ok(files)
}

/// Where two byte strings first differ, as a 1-based line number of `a`.
fn first_difference_line(a: &[u8], b: &[u8]) -> u64 {
    let at = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    memchr::memchr_iter(b'\n', &a[..at]).count() as u64 + 1
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The objects of one node, as listed.
#[derive(Default)]
struct Survey {
    /// Keys whose current version is an object (not a delete marker).
    visible: Vec<String>,
    /// Segments by seq.
    segments: Vec<ArchivedSegment>,
    /// Checkpoint file name -> (key, hidden).
    checkpoints: BTreeMap<String, (String, bool)>,
    /// Columnar copies and seals by (first, last) -> key (visible ones).
    columnar: HashMap<(u64, u64), String>,
    seals: HashMap<(u64, u64), String>,
}

/// Sort a node's listing into segments and checkpoints; report delete markers, second
/// versions and objects that are not part of the layout.
fn survey(
    node_prefix: &str,
    columnar_prefix: &str,
    versions: Vec<ListedVersion>,
    findings: &mut Vec<Finding>,
) -> Survey {
    let mut by_key: BTreeMap<String, Vec<ListedVersion>> = BTreeMap::new();
    for v in versions {
        by_key.entry(v.key.clone()).or_default().push(v);
    }
    let mut survey = Survey::default();
    for (key, versions) in by_key {
        let markers = versions.iter().filter(|v| v.is_delete_marker).count();
        let objects = versions.len() - markers;
        let marker_on_top = versions.iter().any(|v| v.is_latest && v.is_delete_marker);
        let hidden = marker_on_top && objects > 0;
        if markers > 0 {
            findings.push(Finding::DeleteMarker {
                key: key.clone(),
                hidden,
            });
        }
        if objects > 1 {
            findings.push(Finding::SecondVersion {
                key: key.clone(),
                versions: objects,
            });
        }
        if objects == 0 {
            // Only delete markers: nothing is stored under this key.
            continue;
        }
        let kind = match key.strip_prefix(columnar_prefix) {
            Some(rest) => classify(rest, true),
            None => classify(key.strip_prefix(node_prefix).unwrap_or(&key), false),
        };
        match kind {
            Kind::Columnar { first, last } if !hidden => {
                survey.columnar.insert((first, last), key.clone());
            }
            Kind::Seal { first, last } if !hidden => {
                survey.seals.insert((first, last), key.clone());
            }
            Kind::Columnar { .. } | Kind::Seal { .. } => {}
            Kind::Segment { first, last } => survey.segments.push(ArchivedSegment {
                key: key.clone(),
                first,
                last,
                hidden,
            }),
            Kind::Checkpoint { name } => {
                survey.checkpoints.insert(name, (key.clone(), hidden));
            }
            Kind::Other => findings.push(Finding::UnexpectedObject { key: key.clone() }),
        }
        if !hidden {
            survey.visible.push(key);
        }
    }
    survey.segments.sort_by_key(|s| (s.first, s.last));
    survey
}

/// HEAD every key: its lock (COMPLIANCE, retained long enough) is checked; the answers are
/// returned for the checksum comparison.
async fn check_locks(
    store: &Arc<dyn ArchiveStore>,
    keys: Vec<String>,
    min_retention_days: u64,
    findings: &mut Vec<Finding>,
) -> Result<HashMap<String, ObjectInfo>, ArchiveError> {
    let answers = for_each_key(keys, |key| {
        let store = store.clone();
        async move { store.head(&key).await }
    })
    .await;
    let min_secs = min_retention_days as i64 * 86_400;
    let now = now_unix();
    let mut heads = HashMap::new();
    for (key, answer) in answers {
        let Some(info) = answer? else {
            findings.push(Finding::Unreadable {
                key,
                reason: "HEAD found no object".into(),
            });
            continue;
        };
        match (info.lock_mode.as_deref(), info.retain_until) {
            (Some("COMPLIANCE"), Some(until)) => {
                let retained = until - info.last_modified.unwrap_or(now);
                if retained < min_secs - RETENTION_SLACK_SECS {
                    findings.push(Finding::RetentionShort {
                        key: key.clone(),
                        retained_days: (retained.max(0) / 86_400) as u64,
                        min_days: min_retention_days,
                    });
                }
            }
            (mode, until) => findings.push(Finding::LockMissing {
                key: key.clone(),
                mode: mode.map(str::to_string),
                retain_until: until,
            }),
        }
        heads.insert(key, info);
    }
    Ok(heads)
}

/// The bytes read under `key` must hash to the SHA-256 the store recorded at upload.
fn check_checksum(
    heads: &HashMap<String, ObjectInfo>,
    key: &str,
    bytes: &[u8],
    findings: &mut Vec<Finding>,
) {
    let Some(recorded) = heads.get(key).and_then(|i| i.sha256.as_deref()) else {
        return;
    };
    // A multipart upload's checksum is a checksum of checksums ("...-N"): not comparable.
    if recorded.contains('-') {
        return;
    }
    let actual = sha256_b64(bytes);
    if actual != recorded {
        findings.push(Finding::ChecksumMismatch {
            key: key.to_string(),
            recorded: recorded.to_string(),
            actual,
        });
    }
}

/// The checkpoint notes to check, (label, bytes): every archived one, and with the journal the
/// local ones the archive does not have (yet), or has with other content.
#[allow(clippy::too_many_arguments)]
async fn gather_notes(
    store: &Arc<dyn ArchiveStore>,
    layout: &Layout,
    node: &str,
    listed: &BTreeMap<String, (String, bool)>,
    heads: &HashMap<String, ObjectInfo>,
    local: Option<&LocalJournal>,
    local_report: Option<&mut LocalReport>,
    findings: &mut Vec<Finding>,
) -> Result<Vec<(String, Vec<u8>)>, ArchiveError> {
    let wanted: Vec<String> = listed
        .values()
        .filter(|(_, hidden)| !hidden)
        .map(|(key, _)| key.clone())
        .collect();
    let fetched = for_each_key(wanted, |key| {
        let store = store.clone();
        async move { store.get(&key).await }
    })
    .await;
    let mut notes = Vec::new();
    let mut archived: HashMap<String, usize> = HashMap::new();
    for (key, answer) in fetched {
        match answer {
            Ok(bytes) => {
                check_checksum(heads, &key, &bytes, findings);
                archived.insert(key.clone(), notes.len());
                notes.push((key, bytes));
            }
            Err(ArchiveError::Request { status: 404, .. }) => findings.push(Finding::Unreadable {
                key,
                reason: "GET found no object".into(),
            }),
            Err(e) => return Err(e),
        }
    }
    let (Some(local), Some(report)) = (local, local_report) else {
        return Ok(notes);
    };
    let shipped_through = local
        .shipped
        .as_ref()
        .map(|s| s.checkpoints_through.as_str());
    for (name, bytes) in &local.checkpoints {
        let label = local
            .dir
            .join(checkpoint::CHECKPOINT_DIR)
            .join(name)
            .display()
            .to_string();
        let key = layout.checkpoint(node, name);
        match archived.get(&key) {
            Some(&i) => {
                report.checkpoints_compared += 1;
                if notes[i].1 == *bytes {
                    continue;
                }
                findings.push(Finding::LocalMismatch {
                    key,
                    local: label.clone(),
                    detail: "the archived checkpoint is not the local one".into(),
                });
            }
            None => {
                if !listed.contains_key(name)
                    && shipped_through.is_some_and(|through| name.as_str() <= through)
                {
                    findings.push(Finding::CheckpointMissing { key });
                }
            }
        }
        // Not archived (yet), or different: checked as well.
        notes.push((label, bytes.clone()));
    }
    Ok(notes)
}

/// The record stream of a node in seq order: archived segments, holes in the archive reported
/// (and filled from the local journal where it still has the records), then the local records
/// the archive does not have yet.
fn plan(
    node: &str,
    segments: &[ArchivedSegment],
    local: Option<&LocalJournal>,
    findings: &mut Vec<Finding>,
) -> Vec<Step> {
    let local_segments: &[(SegmentName, PathBuf)] = local.map_or(&[], |l| &l.segments);
    let local_sealed: HashMap<(u64, u64), &PathBuf> = local_segments
        .iter()
        .filter_map(|(name, path)| match name {
            SegmentName::Sealed { first, last } => Some(((*first, *last), path)),
            SegmentName::Open { .. } => None,
        })
        .collect();
    let sealed_last = |name: &SegmentName| match name {
        SegmentName::Sealed { last, .. } => Some(*last),
        SegmentName::Open { .. } => None,
    };
    let mut steps = Vec::new();
    let mut expected = 1u64;
    let mut previous: Option<String> = None;
    for seg in segments {
        if seg.first > expected {
            // A hole in the archive: take what the local journal has of it.
            let mut covered = expected;
            for (name, path) in local_segments {
                match sealed_last(name) {
                    Some(last) if name.first() == covered && last < seg.first => {
                        steps.push(Step::Local {
                            name: name.clone(),
                            path: path.clone(),
                        });
                        covered = last.saturating_add(1);
                    }
                    _ => {}
                }
            }
            findings.push(Finding::SegmentMissing {
                node: node.to_string(),
                first: expected,
                last: seg.first - 1,
                after: previous.clone(),
                before: Some(seg.key.clone()),
                local_copy: covered == seg.first,
            });
            if covered < seg.first {
                steps.push(Step::SkipTo(seg.first));
            }
        }
        let local_copy = local_sealed
            .get(&(seg.first, seg.last))
            .map(|p| (*p).clone());
        if local_copy.is_none() {
            // The local journal cut these records into other segments.
            for (name, path) in local_segments {
                let last = sealed_last(name).unwrap_or(u64::MAX);
                if name.first() <= seg.last && last >= seg.first {
                    findings.push(Finding::LocalMismatch {
                        key: seg.key.clone(),
                        local: path.display().to_string(),
                        detail: format!(
                            "the archived segment holds seq {}-{}, the local segment that overlaps it does not match that range",
                            seg.first, seg.last
                        ),
                    });
                }
            }
        }
        match (seg.hidden, local_copy) {
            (false, local) => steps.push(Step::Archived {
                key: seg.key.clone(),
                first: seg.first,
                last: seg.last,
                local,
            }),
            // Hidden (already a finding): the local journal still has it.
            (true, Some(path)) => steps.push(Step::Local {
                name: SegmentName::Sealed {
                    first: seg.first,
                    last: seg.last,
                },
                path,
            }),
            (true, None) => steps.push(Step::SkipTo(seg.last.saturating_add(1))),
        }
        expected = expected.max(seg.last.saturating_add(1));
        previous = Some(seg.key.clone());
    }
    let Some(local) = local else {
        return steps;
    };
    let tail: Vec<&(SegmentName, PathBuf)> = local_segments
        .iter()
        .filter(|(name, _)| name.first() >= expected)
        .collect();
    // Shipped according to the progress file, but not in the archive.
    if let Some(shipped) = &local.shipped {
        let missing_last = tail
            .iter()
            .filter_map(|(name, _)| sealed_last(name))
            .filter(|last| *last <= shipped.segments_through_seq)
            .max();
        if let Some(last) = missing_last {
            findings.push(Finding::SegmentMissing {
                node: node.to_string(),
                first: expected,
                last,
                after: previous,
                before: None,
                local_copy: true,
            });
        }
    }
    for (name, path) in tail {
        steps.push(Step::Local {
            name: name.clone(),
            path: path.clone(),
        });
    }
    steps
}

#[allow(
    clippy::expect_used,
    reason = "three invariants of this function: the fetcher sends one answer per archived step, \
              plan() makes archived steps only for keys with a known extension, and local steps \
              only when a local journal was given"
)]
async fn verify_node(
    store: &Arc<dyn ArchiveStore>,
    layout: &Layout,
    node: &str,
    versions: Vec<ListedVersion>,
    options: &ArchiveOptions,
    local: Option<&LocalJournal>,
) -> Result<NodeReport, ArchiveVerifyError> {
    let node_prefix = layout.node(node);
    let mut report = NodeReport {
        node: node.to_string(),
        chain: ChainReport::default(),
        archived_through_seq: 0,
        checkpoints_beyond_archive: 0,
        local: local.map(|l| LocalReport {
            journal: l.dir.clone(),
            segments_compared: 0,
            checkpoints_compared: 0,
            segments_not_archived: 0,
            records_not_archived: 0,
            shipped_through_seq: l.shipped.as_ref().map(|s| s.segments_through_seq),
        }),
    };
    let findings = &mut report.chain.findings;
    if versions.is_empty() && local.is_none() {
        // `--node` names a node the archive does not have.
        findings.push(Finding::EmptyArchive {
            prefix: node_prefix,
        });
        return Ok(report);
    }
    let columnar_prefix = format!("{}node={node}/", layout.columnar_root());
    let survey = survey(&node_prefix, &columnar_prefix, versions, findings);
    report.archived_through_seq = survey.segments.last().map_or(0, |s| s.last);
    let heads = if store.is_worm() {
        check_locks(
            store,
            survey.visible.clone(),
            options.min_retention_days,
            findings,
        )
        .await?
    } else {
        HashMap::new()
    };

    let key = key_for(node, &options.keys).unwrap_or_else(|finding| {
        findings.push(finding);
        None
    });
    report.chain.key = key.map(|k| k.text().to_string());
    let notes = gather_notes(
        store,
        layout,
        node,
        &survey.checkpoints,
        &heads,
        local,
        report.local.as_mut(),
        findings,
    )
    .await?;
    let checkpoints = key.map(|key| {
        let (check, count) = CheckpointCheck::new(notes, key, options.max_gap, findings);
        report.chain.checkpoints = count;
        check
    });

    let steps = plan(node, &survey.segments, local, findings);
    // Download ahead (one segment buffered) while the current one is checked.
    let fetch_keys: Vec<String> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Archived { key, .. } => Some(key.clone()),
            _ => None,
        })
        .collect();
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let fetch_store = store.clone();
    let _fetcher = AbortOnDrop(tokio::spawn(async move {
        for key in fetch_keys {
            let answer = fetch_store.get(&key).await;
            if tx.send(answer).await.is_err() {
                break;
            }
        }
    }));
    let mut chain = ChainCheck::new(checkpoints);
    let mut columnar = ColumnarCheck::new(key);
    for step in steps {
        let (name, path) = match step {
            Step::SkipTo(first) => {
                chain.skip_to(first);
                columnar.skip_to(first);
                continue;
            }
            Step::Local { name, path } => (name, path),
            Step::Archived {
                key,
                first,
                last,
                local: local_copy,
            } => {
                let answer = rx
                    .recv()
                    .await
                    .expect("the fetcher sends one answer per archived segment");
                let plain = match answer {
                    Ok(compressed) => {
                        check_checksum(&heads, &key, &compressed, findings);
                        let (compression, _) = SegmentCompression::of_file_name(&key)
                            .expect("classify() only lets segment keys with an extension through");
                        blocking(|| compression.decompress(&compressed))
                            .map_err(|e| {
                                findings.push(Finding::Undecodable {
                                    key: key.clone(),
                                    reason: e.to_string(),
                                })
                            })
                            .ok()
                    }
                    Err(ArchiveError::Request { status: 404, .. }) => {
                        findings.push(Finding::Unreadable {
                            key: key.clone(),
                            reason: "GET found no object".into(),
                        });
                        None
                    }
                    Err(e) => return Err(e.into()),
                };
                let name = SegmentName::Sealed { first, last };
                match (plain, local_copy) {
                    (Some(plain), local_copy) => {
                        let before = chain.records;
                        let line_leaves = blocking(|| chain.feed(&key, &name, &plain, findings));
                        report.chain.segments += 1;
                        report.chain.records += chain.records - before;
                        let files =
                            archived_copy_files(store, &survey, &heads, (first, last), findings)
                                .await?;
                        let plain = bytes::Bytes::from(plain);
                        blocking(|| {
                            columnar.segment(
                                (first, last),
                                plain.clone(),
                                line_leaves,
                                files,
                                findings,
                            )
                        });
                        if let (Some(path), Some(l)) = (local_copy, local) {
                            let local_bytes = read_local(&l.dir, &name, &path)?;
                            if let Some(r) = report.local.as_mut() {
                                r.segments_compared += 1;
                            }
                            if local_bytes != plain {
                                findings.push(Finding::LocalMismatch {
                                    key,
                                    local: path.display().to_string(),
                                    detail: format!(
                                        "the records differ from line {} on",
                                        first_difference_line(&plain, &local_bytes)
                                    ),
                                });
                            }
                        }
                        continue;
                    }
                    // Unreadable archived copy (already a finding): check the local one.
                    (None, Some(path)) => (name, path),
                    (None, None) => {
                        chain.skip_to(last.saturating_add(1));
                        columnar.skip_to(last.saturating_add(1));
                        continue;
                    }
                }
            }
        };
        // A local segment the archive does not have, hides, or holds unreadable.
        let dir = &local.expect("local segments come from a journal").dir;
        let bytes = read_local(dir, &name, &path)?;
        let before = chain.records;
        let label = path.display().to_string();
        let line_leaves = blocking(|| chain.feed(&label, &name, &bytes, findings));
        if let SegmentName::Sealed { first, last } = name {
            let files = super::journal::local_copy_files(dir, first, last);
            let bytes = bytes::Bytes::from(bytes);
            blocking(|| columnar.segment((first, last), bytes, line_leaves, files, findings));
        }
        if let Some(r) = report.local.as_mut() {
            r.segments_not_archived += 1;
            r.records_not_archived += chain.records - before;
        }
    }

    blocking(|| columnar.finish(findings));
    report.chain.columnar_copies = columnar.copies;
    report.chain.segments_without_columnar = columnar.without_copy;
    let (head_seq, head_leaf) = chain.head;
    report.chain.head_seq = head_seq;
    report.chain.head_leaf = (head_seq > 0).then(|| hex::encode(head_leaf));
    if let Some(check) = &chain.checkpoints {
        if local.is_some() {
            check.finish(head_seq, findings);
        } else {
            // The archive lags the journal by the open segment: not a finding.
            check.finish_mismatches(findings);
            report.checkpoints_beyond_archive = check.beyond(head_seq).count();
        }
        report.chain.uncovered_records = head_seq.saturating_sub(check.newest_valid_size);
    }
    Ok(report)
}

#[cfg(test)]
mod tests;
