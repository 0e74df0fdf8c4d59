//! The archiver: sealed segments and checkpoints shipped in order, each lock confirmed
//! before the progress file says so, retried with backoff, local copies removed only after
//! that (when configured). Crash points are commented where they are.
//!
//! Columnar copies ship behind their segments, with a cursor of their own: they are made at
//! idle priority ([`columnar_local::keep_copies`]) and may lag under load, and the evidence
//! (the segment) never waits for them. The archiver ships each copy once it is made, or gives
//! up on it `[columnar] copy_wait_secs` after the seal (left to `auditgate backfill`).

use super::compression::SegmentCompression;
use super::dir::sync_dir;
use super::error::ArchiveError;
use super::layout::Layout;
use super::store::to_unix;
use super::store::{sha256_b64, ArchiveStore, PutResult};
use crate::columnar::local as columnar_local;
use crate::durable::FileError;
use crate::journal::shipped::{ShipState, SHIP_STATE_FILE};
use crate::journal::{self, SegmentName};
use crate::tlog::checkpoint;
use serde::Deserialize;
use std::fs;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The archiver's counters (read by metrics and readiness).
#[derive(Debug, Default)]
pub struct ArchiveStats {
    /// Sealed segments shipped and their locks confirmed.
    pub segments_shipped: AtomicU64,
    /// Checkpoints shipped and their locks confirmed.
    pub checkpoints_shipped: AtomicU64,
    /// Bytes uploaded (compressed).
    pub bytes_shipped: AtomicU64,
    /// Objects found already stored with the same content on a retry.
    pub already_present: AtomicU64,
    /// Passes that ended in an error (retried with backoff).
    pub failures: AtomicU64,
    /// Objects found under our key with other content (alarm).
    pub conflicts: AtomicU64,
    /// Sealed segments not yet confirmed shipped.
    pub backlog_segments: AtomicU64,
    /// Age in seconds of the oldest sealed segment not yet confirmed shipped (0: none).
    pub oldest_unshipped_secs: AtomicU64,
    /// Every sealed segment up to this seq is shipped and locked.
    pub shipped_through_seq: AtomicU64,
}

/// Ships a journal directory's sealed segments and checkpoints to a store.
pub struct Archiver {
    pub(super) journal_dir: PathBuf,
    pub(super) node: String,
    pub(super) layout: Layout,
    pub(super) store: Arc<dyn ArchiveStore>,
    pub(super) retention: Duration,
    pub(super) state: ShipState,
    pub(super) stats: Arc<ArchiveStats>,
    pub(super) delete_local: bool,
    pub(super) compression: SegmentCompression,
    /// The store was checked ([`ArchiveStore::check_ready`]); nothing is shipped before.
    pub(super) ready: bool,
    /// The first pending segment of this process was looked for under the other compression's
    /// key (see [`Archiver::ship_pending`]).
    pub(super) looked_for_other_compression: bool,
    /// Ship each segment's columnar copy and seal once made, waiting this long after the seal
    /// (`[columnar] enabled`, `copy_wait_secs`).
    pub(super) copy_wait: Option<Duration>,
}

/// Puts objects into a store the archive's way: create-only, checksummed, locked until now +
/// `retention`, the lock confirmed; a retry that finds the object compares content. Used by
/// the [`Archiver`] and by `auditgate backfill`.
pub struct Uploader {
    /// The store.
    pub store: Arc<dyn ArchiveStore>,
    /// How long each object is locked.
    pub retention: Duration,
    /// Counters the uploads add to.
    pub stats: Arc<ArchiveStats>,
}

impl Uploader {
    /// Ship one object: create-only PUT, a retry's comparison, then the lock check.
    /// `plain` is the uncompressed content when `bytes` is a compressed segment (a retry after
    /// an upgrade may compress differently: the content is what must match).
    /// Counted in `auditgate_archive_uploads_total` by `kind` (segment, checkpoint, columnar,
    /// seal) and result.
    pub async fn ship(
        &self,
        kind: &'static str,
        key: &str,
        bytes: Vec<u8>,
        plain: Option<&[u8]>,
    ) -> Result<(), ArchiveError> {
        let result = self.ship_once(key, bytes, plain).await;
        let label = match &result {
            Ok(true) => "created",
            Ok(false) => "already_present",
            Err(ArchiveError::Conflict { .. }) => "conflict",
            Err(_) => "failed",
        };
        crate::metrics::global()
            .archive_uploads
            .with_label_values(&[kind, label])
            .inc();
        result.map(|_| ())
    }

    /// [`Uploader::ship`]'s work; `Ok(true)` when this call created the object.
    pub async fn ship_once(
        &self,
        key: &str,
        bytes: Vec<u8>,
        plain: Option<&[u8]>,
    ) -> Result<bool, ArchiveError> {
        let sha = sha256_b64(&bytes);
        let size = bytes.len() as u64;
        let retain_until = SystemTime::now() + self.retention;
        // The retain-until the lock must show: now + retention for an object this PUT created;
        // for one an earlier attempt stored, its own upload time + retention.
        let mut wanted_until = retain_until;
        let created = match self
            .store
            .put_new(key, bytes.clone(), &sha, retain_until)
            .await?
        {
            PutResult::Created => {
                self.stats.bytes_shipped.fetch_add(size, Ordering::Relaxed);
                crate::metrics::global().archive_bytes.inc_by(size);
                true
            }
            PutResult::AlreadyExists => {
                // A retry of an upload that did reach the store, or someone else's object.
                let remote = self.store.head(key).await?;
                let remote_sha = remote.as_ref().and_then(|i| i.sha256.clone());
                let same = if remote_sha.as_deref() == Some(sha.as_str()) {
                    true
                } else {
                    let stored = self.store.get(key).await?;
                    match (plain, SegmentCompression::of_file_name(key)) {
                        (Some(plain), Some((compression, _))) => {
                            compression.decompress(&stored).is_ok_and(|d| d == plain)
                        }
                        _ => stored == bytes,
                    }
                };
                if !same {
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    return Err(ArchiveError::Conflict {
                        key: key.to_string(),
                        local: sha,
                        remote: remote_sha.unwrap_or_else(|| "(none recorded)".into()),
                    });
                }
                self.stats.already_present.fetch_add(1, Ordering::Relaxed);
                if let Some(stored_at) = remote.as_ref().and_then(|i| i.last_modified) {
                    wanted_until =
                        UNIX_EPOCH + Duration::from_secs(stored_at.max(0) as u64) + self.retention;
                }
                false
            }
        };
        if self.store.is_worm() {
            let info =
                self.store
                    .head(key)
                    .await?
                    .ok_or_else(|| ArchiveError::LockNotConfirmed {
                        key: key.to_string(),
                        detail: "the object is not there after the upload".into(),
                    })?;
            if info.lock_mode.as_deref() != Some("COMPLIANCE") {
                return Err(ArchiveError::LockNotConfirmed {
                    key: key.to_string(),
                    detail: format!(
                        "lock mode is {:?}, not COMPLIANCE (if it is none, the gateway's role \
                         may lack s3:GetObjectRetention)",
                        info.lock_mode
                    ),
                });
            }
            let wanted = to_unix(wanted_until - RETENTION_SLACK);
            match info.retain_until {
                Some(until) if until >= wanted => {}
                other => {
                    return Err(ArchiveError::LockNotConfirmed {
                        key: key.to_string(),
                        detail: format!(
                        "retain-until is {other:?}, expected at least {wanted} (upload time + retention)"
                    ),
                    })
                }
            }
        }
        Ok(created)
    }
}

/// How long after its seal a segment's copy waits for the tree state it needs before the
/// archiver gives up on it (counted as a failed copy; `auditgate backfill` makes it later).
pub const TREE_STATE_WAIT: Duration = Duration::from_secs(60);

/// How far a confirmed retain-until date may fall short of upload time + retention (clock
/// differences between the gateway and the store).
pub const RETENTION_SLACK: Duration = Duration::from_secs(86_400);

impl Archiver {
    /// An archiver for `journal_dir`, continuing from its progress file.
    pub fn new(
        journal_dir: &Path,
        node: &str,
        prefix: &str,
        store: Arc<dyn ArchiveStore>,
        retention: Duration,
    ) -> Result<Self, ArchiveError> {
        let mut state = ShipState::load(journal_dir, &store.target())
            .map_err(FileError::on(&journal_dir.join(SHIP_STATE_FILE)))?;
        // A file from before the copies' cursor: every shipped segment's copy shipped with it.
        state.columnar_through_seq = Some(state.columnar_through());
        let stats = Arc::new(ArchiveStats::default());
        stats
            .shipped_through_seq
            .store(state.segments_through_seq, Ordering::Relaxed);
        crate::metrics::global()
            .archive_shipped_through_seq
            .set(state.segments_through_seq as i64);
        Ok(Archiver {
            journal_dir: journal_dir.to_path_buf(),
            node: node.to_string(),
            layout: Layout::new(prefix),
            store,
            retention,
            state,
            stats,
            delete_local: false,
            compression: SegmentCompression::default(),
            ready: false,
            looked_for_other_compression: false,
            copy_wait: None,
        })
    }

    /// How segments are compressed (default zstd).
    pub fn compression(mut self, compression: SegmentCompression) -> Self {
        self.compression = compression;
        self
    }

    /// Ship each segment's columnar copy (Parquet and seal, made beside it by
    /// [`columnar_local::keep_copies`]) after it, waiting up to `copy_wait` after its seal.
    /// `None`: copies are off.
    pub fn columnar_copies(mut self, copy_wait: Option<Duration>) -> Self {
        self.copy_wait = copy_wait;
        self
    }

    /// The caller already checked the store (at start); skip the check before the first pass.
    pub fn store_checked(mut self, checked: bool) -> Self {
        self.ready = checked;
        self
    }

    /// Delete each shipped sealed segment from the local journal once its lock is confirmed
    /// and its progress recorded, except the newest sealed segment. Only for WORM stores.
    pub fn delete_local_after_ship(mut self, enabled: bool) -> Self {
        self.delete_local = enabled && self.store.is_worm();
        self
    }

    /// The archiver's counters, shared with metrics and readiness.
    pub fn stats(&self) -> Arc<ArchiveStats> {
        self.stats.clone()
    }

    /// What the progress file says is shipped.
    pub fn state(&self) -> &ShipState {
        &self.state
    }

    /// Ship one object (see [`Uploader::ship`]).
    pub(super) async fn ship(
        &self,
        kind: &'static str,
        key: &str,
        bytes: Vec<u8>,
        plain: Option<&[u8]>,
    ) -> Result<(), ArchiveError> {
        self.uploader().ship(kind, key, bytes, plain).await
    }

    /// What ships this archiver's objects.
    pub fn uploader(&self) -> Uploader {
        Uploader {
            store: self.store.clone(),
            retention: self.retention,
            stats: self.stats.clone(),
        }
    }

    /// Ship every sealed segment and checkpoint not shipped yet, in order; stops at the first
    /// failure (the next pass starts there). Returns how many objects were shipped.
    pub async fn ship_pending(&mut self) -> Result<usize, ArchiveError> {
        let mut shipped = 0;
        let pending = self.unshipped_segments()?;
        // The backlog is known (and exported) even while the store cannot be reached.
        self.update_backlog(&pending);
        if !self.ready {
            // Nothing goes to a store that was not confirmed able to lock it (e.g. S3 was
            // unreachable when the gateway started).
            self.store.check_ready().await?;
            self.ready = true;
        }
        for (i, (first, last, path)) in pending.iter().enumerate() {
            let (plain, compressed) = read_and_compress(path, self.compression).await?;
            let date = first_record_date(&plain).unwrap_or_else(|| "unknown".into());
            let key = self
                .layout
                .segment(&self.node, &date, *first, *last, self.compression);
            // Only the first pending segment of a run can already be stored without its
            // progress being recorded (a crash after the upload); if the gateway was then
            // restarted with the other `compression`, that object is under the other key, and
            // it counts: shipping this one too would store the segment twice.
            let other = self.compression.other();
            let other_key = self.layout.segment(&self.node, &date, *first, *last, other);
            let stored_before =
                !self.looked_for_other_compression && self.store.head(&other_key).await?.is_some();
            self.looked_for_other_compression = true;
            if stored_before {
                // Compared by content (and its lock checked) as any retry's object is.
                let recompressed = other.compress(&plain).map_err(FileError::on(path))?;
                self.ship("segment", &other_key, recompressed, Some(&plain))
                    .await?;
            } else {
                self.ship("segment", &key, compressed, Some(&plain)).await?;
            }
            // Crash point: shipped and lock confirmed, progress not yet recorded: the next run
            // ships it again and finds it present with the same content.
            self.state.segments_through_seq = *last;
            if self.copy_wait.is_none() {
                // Copies are off: none is owed for this segment.
                self.state.columnar_through_seq = Some(*last);
            }
            self.state
                .store(&self.journal_dir)
                .map_err(FileError::on(&self.journal_dir.join(SHIP_STATE_FILE)))?;
            self.stats.segments_shipped.fetch_add(1, Ordering::Relaxed);
            self.stats
                .shipped_through_seq
                .store(*last, Ordering::Relaxed);
            crate::metrics::global()
                .archive_shipped_through_seq
                .set(*last as i64);
            self.update_backlog(&pending[i + 1..]);
            shipped += 1;
        }
        if let Some(wait) = self.copy_wait {
            shipped += self.ship_copies(wait).await?;
        }
        if self.delete_local {
            self.delete_shipped_segments()?;
        }
        let checkpoints = checkpoint::list_checkpoint_files(&self.journal_dir).map_err(|e| {
            ArchiveError::Io(FileError {
                path: self.journal_dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })
        })?;
        for path in checkpoints {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if name <= self.state.checkpoints_through {
                continue;
            }
            let note = fs::read(&path).map_err(FileError::on(&path))?;
            let key = self.layout.checkpoint(&self.node, &name);
            self.ship("checkpoint", &key, note, None).await?;
            self.state.checkpoints_through = name;
            self.state
                .store(&self.journal_dir)
                .map_err(FileError::on(&self.journal_dir.join(SHIP_STATE_FILE)))?;
            self.stats
                .checkpoints_shipped
                .fetch_add(1, Ordering::Relaxed);
            shipped += 1;
        }
        Ok(shipped)
    }

    /// Remove shipped sealed segments but the newest sealed one.
    pub(super) fn delete_shipped_segments(&self) -> Result<(), ArchiveError> {
        let sealed = self.sealed_segments()?;
        let Some((_, newest, _)) = sealed.last() else {
            return Ok(());
        };
        // A restart continues the Merkle tree from the saved state: never remove records it
        // would have to reread (the state lags when storing checkpoints fails).
        let tree_state = checkpoint::MerkleState::load(&self.journal_dir)
            .ok()
            .flatten()
            .map_or(0, |s| s.size);
        let mut removed = false;
        for (_, last, path) in &sealed {
            if last < newest
                && *last <= self.state.segments_through_seq
                && *last <= self.state.columnar_through()
                && *last <= tree_state
            {
                // Crash point: the progress file already says shipped and locked; a segment
                // that survives a crash here is deleted on the next pass.
                fs::remove_file(path).map_err(FileError::on(path))?;
                removed = true;
            }
        }
        // The copies of removed segments go too: shipped, or given up (a copy finished after
        // the archiver stopped waiting for it); nothing ships them any more.
        let entries = fs::read_dir(&self.journal_dir).map_err(FileError::on(&self.journal_dir))?;
        for entry in entries {
            let entry = entry.map_err(FileError::on(&self.journal_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((first, last)) = columnar_local::parse_file_name(&name, "parquet")
                .or_else(|| columnar_local::parse_file_name(&name, "seal"))
            else {
                continue;
            };
            let segment = self
                .journal_dir
                .join(SegmentName::Sealed { first, last }.file_name());
            if last <= self.state.columnar_through() && !segment.exists() {
                fs::remove_file(entry.path()).map_err(FileError::on(&entry.path()))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&self.journal_dir)?;
        }
        Ok(())
    }

    /// Ship the columnar copies (Parquet and seal) of shipped segments, in order, as
    /// [`columnar_local::keep_copies`] makes them; stops at the first one not made yet. A copy
    /// that cannot come (no tree state `TREE_STATE_WAIT` after the seal, not made `wait` after
    /// it, or its segment gone) is given up: counted as failed, logged, left to
    /// `auditgate backfill`. Returns how many objects were shipped.
    async fn ship_copies(&mut self, wait: Duration) -> Result<usize, ArchiveError> {
        let mut shipped = 0;
        let (after, through) = (
            self.state.columnar_through(),
            self.state.segments_through_seq,
        );
        let owed = self.sealed_segments()?.into_iter();
        for (first, last, _) in owed.filter(|(_, last, _)| *last > after && *last <= through) {
            let dir = self.journal_dir.clone();
            let segment = dir.join(SegmentName::Sealed { first, last }.file_name());
            let looked = crate::background::run_niced("archive-read-copy", move || {
                look_for_copy(&dir, first, last)
            })
            .await
            .and_then(|r| r)
            .map_err(FileError::on(&segment))?;
            match looked {
                CopyLook::Ready {
                    date,
                    parquet,
                    seal,
                } => {
                    // Crash point (here and between the two): the copy is not recorded as
                    // shipped; the next pass ships both again and finds them present with the
                    // same content.
                    let key = self.layout.columnar(&self.node, &date, first, last);
                    self.ship("columnar", &key, parquet, None).await?;
                    let key = self.layout.seal(&self.node, first, last);
                    self.ship("seal", &key, seal, None).await?;
                    shipped += 2;
                }
                CopyLook::Waiting {
                    sealed_ago,
                    tree_state_known,
                } => {
                    let gave_up = if sealed_ago >= wait {
                        "not made within [columnar] copy_wait_secs of the seal (the CPU was busy or making it failed)"
                    } else if sealed_ago >= TREE_STATE_WAIT && !tree_state_known {
                        "no tree state before this segment"
                    } else {
                        break;
                    };
                    self.give_up_copy(first, last, gave_up);
                }
                CopyLook::SegmentGone => {
                    self.give_up_copy(first, last, "the sealed segment is not in the journal");
                }
            }
            // Crash point: shipped (or given up), not recorded: the next pass does it again.
            self.state.columnar_through_seq = Some(last);
            self.state
                .store(&self.journal_dir)
                .map_err(FileError::on(&self.journal_dir.join(SHIP_STATE_FILE)))?;
        }
        Ok(shipped)
    }

    /// Count and log a copy the archiver will not ship (no PHI: seq numbers only).
    fn give_up_copy(&self, first: u64, last: u64, why: &str) {
        crate::metrics::global()
            .columnar_copies
            .with_label_values(&["failed"])
            .inc();
        tracing::error!(
            first_seq = first,
            last_seq = last,
            reason = why,
            "the segment's columnar copy is not shipped; run `auditgate backfill` to make it"
        );
    }

    /// List the journal again and export the backlog: after a failed pass, whose own count
    /// is from its start (segments sealed while it was uploading, e.g. copies, are in it).
    fn refresh_backlog(&self) {
        if let Ok(pending) = self.unshipped_segments() {
            self.update_backlog(&pending);
        }
    }

    /// The sealed segments not shipped yet, oldest first: (first, last, path).
    fn unshipped_segments(&self) -> Result<Vec<(u64, u64, PathBuf)>, ArchiveError> {
        let mut sealed = self.sealed_segments()?;
        sealed.retain(|(_, last, _)| *last > self.state.segments_through_seq);
        Ok(sealed)
    }

    /// The journal's sealed segments, oldest first: (first, last, path).
    fn sealed_segments(&self) -> Result<Vec<(u64, u64, PathBuf)>, ArchiveError> {
        let segments = journal::list_segments(&self.journal_dir).map_err(|e| {
            ArchiveError::Io(FileError {
                path: self.journal_dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })
        })?;
        Ok(segments
            .into_iter()
            .filter_map(|(name, path)| match name {
                SegmentName::Sealed { first, last } => Some((first, last, path)),
                SegmentName::Open { .. } => None,
            })
            .collect())
    }

    pub(super) fn update_backlog(&self, pending: &[(u64, u64, PathBuf)]) {
        self.stats
            .backlog_segments
            .store(pending.len() as u64, Ordering::Relaxed);
        // A sealed segment's modification time is its seal time (sealing cuts and syncs it).
        let oldest_sealed_at = pending
            .first()
            .and_then(|(_, _, p)| fs::metadata(p).ok()?.modified().ok());
        let metrics = crate::metrics::global();
        metrics.archive_backlog_segments.set(pending.len() as i64);
        metrics.set_archive_oldest_unshipped(if pending.is_empty() {
            None
        } else {
            Some(oldest_sealed_at.unwrap_or_else(SystemTime::now))
        });
        let oldest = oldest_sealed_at
            .and_then(|t| t.elapsed().ok())
            .map_or(0, |d| d.as_secs());
        self.stats
            .oldest_unshipped_secs
            .store(oldest, Ordering::Relaxed);
    }

    /// Ship forever: a pass every `poll`, and after a failure a retry after 1 s, doubling up to
    /// `retry_max`. Failures are logged (no PHI: keys hold only node, date and seq numbers).
    pub async fn run(mut self, poll: Duration, retry_max: Duration) {
        let mut backoff = Duration::from_secs(1);
        let mut failing = false;
        loop {
            let pass = self.ship_pending().await;
            crate::metrics::global().set_archive_pass(pass.is_ok());
            match pass {
                Ok(shipped) => {
                    if failing {
                        tracing::info!(
                            shipped,
                            shipped_through_seq = self.state.segments_through_seq,
                            "archive uploads succeed again; the backlog is shipped"
                        );
                        failing = false;
                    }
                    backoff = Duration::from_secs(1);
                    tokio::time::sleep(poll).await;
                }
                Err(e) => {
                    failing = true;
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    self.refresh_backlog();
                    if matches!(e, ArchiveError::Conflict { .. }) {
                        tracing::error!(error = %e, category = e.category(), "ARCHIVE CONFLICT: an archived object differs from the local journal; it is not overwritten; investigate");
                    } else {
                        tracing::error!(
                            error = %e,
                            category = e.category(),
                            retry_in_secs = backoff.as_secs(),
                            backlog_segments = self.stats.backlog_segments.load(Ordering::Relaxed),
                            oldest_unshipped_secs = self.stats.oldest_unshipped_secs.load(Ordering::Relaxed),
                            "archive upload failed; unshipped segments stay on local disk and are retried"
                        );
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(retry_max);
                }
            }
        }
    }
}

/// How much lower than the gateway's own threads the compression thread runs (`nice`).
pub const COMPRESS_NICENESS: i32 = crate::background::NICENESS;

/// Read and compress a segment (up to its 64 MiB: blocking work) on a background thread.
pub(super) async fn read_and_compress(
    path: &Path,
    compression: SegmentCompression,
) -> Result<(Vec<u8>, Vec<u8>), ArchiveError> {
    let read_path = path.to_path_buf();
    let read = crate::background::run_niced("archive-compress", move || {
        fs::read(&read_path).and_then(|plain| {
            let compressed = compression.compress(&plain)?;
            Ok((plain, compressed))
        })
    })
    .await
    .and_then(|r| r)
    .map_err(FileError::on(path))?;
    Ok(read)
}

/// What the journal directory holds of a shipped segment's columnar copy.
enum CopyLook {
    /// The copy and its seal are made: ship them under the segment's date.
    Ready {
        date: String,
        parquet: Vec<u8>,
        seal: Vec<u8>,
    },
    /// Not made yet.
    Waiting {
        /// Since the segment was sealed (its modification time).
        sealed_ago: Duration,
        /// The tree before the segment is stored, so the copy can be made.
        tree_state_known: bool,
    },
    /// The segment itself is not there.
    SegmentGone,
}

/// Look for the copy of segment `first..=last` in `dir` (blocking: reads the files).
fn look_for_copy(dir: &Path, first: u64, last: u64) -> std::io::Result<CopyLook> {
    let segment = dir.join(SegmentName::Sealed { first, last }.file_name());
    let sealed_at = match fs::metadata(&segment) {
        Ok(m) => m.modified()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CopyLook::SegmentGone),
        Err(e) => return Err(e),
    };
    if let Some((parquet, seal)) = columnar_local::ready_copy(dir, first, last) {
        let mut first_line = Vec::new();
        std::io::BufReader::new(fs::File::open(&segment)?).read_until(b'\n', &mut first_line)?;
        let date = first_record_date(&first_line).unwrap_or_else(|| "unknown".into());
        return Ok(CopyLook::Ready {
            date,
            parquet,
            seal,
        });
    }
    let tree_state_known = columnar_local::frontier_before(dir, first)
        .map_err(std::io::Error::other)?
        .is_some();
    Ok(CopyLook::Waiting {
        sealed_ago: sealed_at.elapsed().unwrap_or_default(),
        tree_state_known,
    })
}

/// `YYYY-MM-DD` of a segment's first record (its `ts`).
pub(super) fn first_record_date(segment: &[u8]) -> Option<String> {
    let line = segment.split(|&b| b == b'\n').next()?;
    #[derive(Deserialize)]
    struct Ts<'a> {
        #[serde(borrow)]
        ts: &'a str,
    }
    let ts: Ts = serde_json::from_slice(line).ok()?;
    let date = ts.ts.get(..10)?;
    date.bytes()
        .all(|b| b.is_ascii_digit() || b == b'-')
        .then(|| date.to_string())
}
