//! Opening a journal directory: the chain head from the last segment, the torn tail of the
//! open segment kept in `quarantine/`, and the Merkle tree anchored to this node's signed
//! checkpoints, before the writer starts.

use super::config::JournalConfig;
use super::error::{sync_dir, JournalError};
use super::handle::{Journal, JournalStats, RecoveryReport, WriterThread};
use super::reader::read_leaf_hashes;
use super::segment::{
    create_open_segment, genesis, head_of_line, last_line_of, list_segments, spawn_spare, used_len,
    zero_fill, Head, LineHead, SegmentName, SPARE_TMP,
};
use super::writer::{Checkpointing, Writer, WriterCheckpoints, LEAVES_PER_HANDOVER};
use crate::durable::FileError;
use crate::record;
use crate::tlog::checkpoint::Checkpointer;
use crate::tlog::merkle::{self, Frontier};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self};
use std::sync::Arc;
use std::thread;
use std::time::{Instant, SystemTime};

impl Journal {
    /// Open (or create) the journal directory, run recovery, continue the Merkle tree from the
    /// newest checkpoint state, sign a checkpoint of the recovered head, and start the writer
    /// and checkpoint threads.
    pub fn open_with_checkpoints(
        dir: &Path,
        node: &str,
        cfg: &JournalConfig,
        checkpointing: Option<Checkpointing>,
    ) -> Result<(Journal, RecoveryReport), JournalError> {
        crate::durable::private_dir_all(dir).map_err(FileError::on(dir))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        let lock_path = dir.join("LOCK");
        let mut lock_options = OpenOptions::new();
        lock_options.create(true).truncate(false).write(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            lock_options.mode(0o600);
        }
        let lock = lock_options
            .open(&lock_path)
            .map_err(FileError::on(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(JournalError::Locked(dir.into())),
            Err(fs::TryLockError::Error(e)) => return Err(FileError::on(&lock_path)(e).into()),
        }

        let segments = list_segments(dir)?;
        let mut report = RecoveryReport::default();
        let mut head = genesis();
        // Segments before the first local one may have been deleted after they were shipped to
        // the WORM archive (`archive.delete_local_after_ship`): accepted only if the archive's
        // progress file says so.
        if let Some((name, path)) = segments.first() {
            let first = name.first();
            if first > 1 {
                let shipped = super::shipped::shipped_through_seq(dir);
                if shipped < first - 1 {
                    return Err(JournalError::Corrupt(format!(
                        "the first segment {} starts at seq {first}, and the archive's progress \
                         file does not account for records 1-{} (shipped through seq {shipped}): \
                         segments are missing",
                        path.display(),
                        first - 1
                    )));
                }
                head = Head {
                    seq: first - 1,
                    leaf: [0u8; 32],
                };
            }
        }
        let mut open_segment = None;
        for (name, path) in &segments {
            match name {
                SegmentName::Sealed { first, last } => {
                    if open_segment.is_some() {
                        return Err(JournalError::Corrupt(format!(
                            "sealed segment {} follows the open segment",
                            path.display()
                        )));
                    }
                    if *first != head.seq + 1 {
                        return Err(JournalError::Corrupt(format!(
                            "sealed segment {} starts at seq {first}, expected {}",
                            path.display(),
                            head.seq + 1
                        )));
                    }
                    report.sealed_segments += 1;
                    head = Head {
                        seq: *last,
                        leaf: [0u8; 32],
                    };
                    // Only the last sealed segment's final leaf matters; computed below.
                }
                SegmentName::Open { first } => {
                    if open_segment.is_some() {
                        return Err(JournalError::Corrupt("two open segments".into()));
                    }
                    if *first != head.seq + 1 {
                        return Err(JournalError::Corrupt(format!(
                            "open segment {} starts at seq {first}, expected {}",
                            path.display(),
                            head.seq + 1
                        )));
                    }
                    open_segment = Some((*first, path.clone()));
                }
            }
        }
        if let Some((SegmentName::Sealed { last, .. }, path)) = segments
            .iter()
            .rfind(|(name, _)| matches!(name, SegmentName::Sealed { .. }))
        {
            let line = last_line_of(path)?.ok_or_else(|| {
                JournalError::Corrupt(format!("sealed segment {} is empty", path.display()))
            })?;
            head = head_of_line(&line, &path.display().to_string())?;
            if head.seq != *last {
                return Err(JournalError::Corrupt(format!(
                    "sealed segment {} ends at seq {}, its name says {last}",
                    path.display(),
                    head.seq
                )));
            }
        }

        // A spare that was being filled when the process died is incomplete.
        let _ = fs::remove_file(dir.join(SPARE_TMP));
        let (first_seq, path) = match open_segment {
            Some(found) => found,
            None => {
                // Crash point: a seal renamed the last open segment but died before creating the
                // next one (or this is a new journal). Creating it now is all that is missing.
                let first = head.seq + 1;
                let (_, path) = create_open_segment(dir, first)?;
                (first, path)
            }
        };
        let (head, kept_len) = recover_open_segment(dir, &path, head, &mut report)?;
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(FileError::on(&path))?;
        // Whatever recovery kept must be on disk before anything chains onto it; a failure
        // here stops the start (on this very file handle: never carry on past a failed sync).
        file.sync_all().map_err(FileError::on(&path))?;
        if cfg.preallocate {
            let size = file.metadata().map_err(FileError::on(&path))?.len();
            if size < cfg.segment_max_bytes {
                match zero_fill(&file, size, cfg.segment_max_bytes) {
                    Ok(()) => {}
                    // No room for the preallocation: the segment grows as it is written.
                    Err(e) if e.kind() == std::io::ErrorKind::StorageFull => {
                        tracing::warn!(error = %e, "journal: no room to preallocate the open segment; it will grow as written");
                    }
                    Err(e) => return Err(FileError::on(&path)(e).into()),
                }
            }
        }
        report.head_seq = head.seq;

        let checkpoints = match checkpointing {
            None => None,
            Some(Checkpointing { signer, timing }) => {
                let verifier =
                    crate::tlog::checkpoint::CheckpointVerifier::from_text(signer.public_key())?;
                let frontier = recover_frontier(dir, head.seq, &verifier)?;
                let size = frontier.size();
                let checkpointer =
                    Checkpointer::start(dir, signer, frontier).map_err(FileError::on(dir))?;
                let mut checkpoints = WriterCheckpoints {
                    checkpointer,
                    timing,
                    size,
                    pending_leaves: Vec::with_capacity(LEAVES_PER_HANDOVER),
                    last_requested_at: Instant::now(),
                    last_requested_size: 0,
                };
                // A checkpoint of the recovered head: a restart is visible in the checkpoints,
                // and records of the last run that no checkpoint covered yet are covered now.
                checkpoints.request();
                Some(checkpoints)
            }
        };

        let checkpoint_stats = checkpoints.as_ref().map(|c| c.checkpointer.stats().clone());
        let stats = Arc::new(JournalStats::default());
        stats.head_seq.store(head.seq, Ordering::Relaxed);
        crate::metrics::global()
            .journal_head_seq
            .set(head.seq as i64);
        let failure = Arc::new(std::sync::Mutex::new(None));
        let writer = Writer {
            dir: dir.to_path_buf(),
            node_json: record::json_string(node),
            cfg: cfg.clone(),
            file,
            path,
            first_seq,
            len: kept_len,
            opened_at: Instant::now(),
            head,
            stats: stats.clone(),
            failure: failure.clone(),
            spare_busy: Arc::new(AtomicBool::new(false)),
            checkpoints,
            _lock: lock,
        };
        if cfg.preallocate {
            spawn_spare(
                dir.to_path_buf(),
                cfg.segment_max_bytes,
                writer.spare_busy.clone(),
            );
        }
        let (queue, rx) = mpsc::sync_channel(cfg.queue_max_records);
        let writer_thread = thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(FileError::on(dir))?;
        Ok((
            Journal {
                queue,
                queue_limit: cfg.queue_max_records,
                stats,
                failure,
                checkpoint_stats,
                _writer: Arc::new(WriterThread(Some(writer_thread))),
            },
            report,
        ))
    }
}

/// The Merkle tree over records `1..=head_seq`, anchored to this gateway's own signed
/// checkpoints: the gateway must never sign a history that contradicts one it signed before.
///
/// * A checkpoint signed by `verifier`'s key that covers more records than the journal holds
///   refuses the start (records covered by a signature are missing).
/// * The saved state (`merkle-state.json`) is a starting point only if a checkpoint signed by
///   this key has its size and root; otherwise the tree is rebuilt from the records.
/// * Every signed checkpoint the rebuilt part reaches must match its root, else the start is
///   refused (records were changed after they were signed).
///
/// Notes signed by another key (a rotated key, or someone else's) are ignored, with a warning.
/// If no checkpoint signed by this key exists at all, the existing records are signed as they
/// are (a new or upgraded journal; also what someone who deleted every checkpoint would see,
/// which only the WORM archive's copies can contradict: `verify --archive --journal`).
pub(super) fn recover_frontier(
    dir: &Path,
    head_seq: u64,
    verifier: &crate::tlog::checkpoint::CheckpointVerifier,
) -> Result<Frontier, JournalError> {
    use crate::tlog::checkpoint::{self, MerkleState};
    let state = MerkleState::load(dir)?.and_then(|s| s.frontier());
    let state_size = state.as_ref().map_or(0, Frontier::size);
    let files = checkpoint::list_checkpoint_files(dir)?;
    // Open (verify) only the notes that matter: those at or beyond the state's size, or all of
    // them when the tree must be rebuilt from the start.
    // (signed checkpoints as (size, root, file), by size; notes not signed by this key)
    type Opened = (Vec<(u64, merkle::Hash, PathBuf)>, usize);
    let open_from = |from: u64| -> Result<Opened, JournalError> {
        let mut signed = Vec::new();
        let mut foreign = 0;
        for path in &files {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if checkpoint::size_of_file_name(&name).is_none_or(|size| size < from) {
                continue;
            }
            let note = fs::read(path).map_err(FileError::on(path))?;
            match verifier.open(&note) {
                Ok(cp) => signed.push((cp.size, cp.root, path.clone())),
                Err(_) => foreign += 1,
            }
        }
        signed.sort_by_key(|(size, _, _)| *size);
        Ok((signed, foreign))
    };
    let (mut signed, mut foreign) = open_from(state_size)?;
    let vouched = state.as_ref().is_some_and(|f| {
        signed
            .iter()
            .any(|(size, root, _)| *size == f.size() && *root == f.root())
    });
    let mut frontier = match state {
        Some(f) if vouched && f.size() <= head_seq => f,
        other => {
            if other.is_some() {
                tracing::warn!(
                    "the saved Merkle state matches no checkpoint signed by this key; rebuilding the tree from the records"
                );
            }
            if state_size > 0 {
                (signed, foreign) = open_from(0)?;
            }
            Frontier::new()
        }
    };
    if foreign > 0 {
        tracing::warn!(
            notes = foreign,
            "checkpoint files not signed by the current key are ignored (a rotated key, or tampering: run `auditgate verify --key`)"
        );
    }
    if let Some((size, _, path)) = signed.iter().find(|(size, _, _)| *size > head_seq) {
        return Err(JournalError::Corrupt(format!(
            "{} is signed for {size} records but the journal ends at seq {head_seq}: records \
             covered by a signed checkpoint are missing; run `auditgate verify --key` and \
             investigate before starting the gateway",
            path.display()
        )));
    }
    if signed.is_empty() && head_seq > 0 {
        tracing::warn!(
            records = head_seq,
            "no checkpoint signed by this key covers the existing records; signing them as they are (if they were signed before, check them with `auditgate verify --archive ... --journal`)"
        );
    }
    let mut next = signed
        .iter()
        .position(|(size, _, _)| *size > frontier.size())
        .unwrap_or(signed.len());
    let from = frontier.size() + 1;
    let leaves = read_leaf_hashes(dir, from, head_seq).map_err(|e| match e {
        JournalError::Corrupt(detail) => JournalError::Corrupt(format!(
            "cannot rebuild the Merkle tree from seq {from}: {detail} (segments removed after \
             shipping need the saved state of a signed checkpoint)"
        )),
        other => other,
    })?;
    for leaf in leaves {
        frontier.push(merkle::hash_of(&leaf));
        while let Some((size, root, path)) = signed.get(next) {
            if *size != frontier.size() {
                break;
            }
            if *root != frontier.root() {
                return Err(JournalError::Corrupt(format!(
                    "the records up to seq {size} do not match {}, which this gateway signed: \
                     a record was changed, removed or inserted after it was signed; run \
                     `auditgate verify --key` and investigate before starting the gateway",
                    path.display()
                )));
            }
            next += 1;
        }
    }
    Ok(frontier)
}

/// Keep the longest valid prefix of the open segment; move the rest to quarantine.
pub(super) fn recover_open_segment(
    dir: &Path,
    path: &Path,
    mut head: Head,
    report: &mut RecoveryReport,
) -> Result<(Head, u64), JournalError> {
    let bytes = fs::read(path).map_err(FileError::on(path))?;
    let mut good_len = 0usize;
    let mut rest = &bytes[..];
    while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..pos];
        let Ok(parsed) = serde_json::from_slice::<LineHead>(line) else {
            break;
        };
        let expected_prev = hex::encode(head.leaf);
        if parsed.seq != head.seq + 1 || parsed.prev != expected_prev {
            break;
        }
        head = Head {
            seq: parsed.seq,
            leaf: record::leaf_hash(line),
        };
        good_len += pos + 1;
        rest = &rest[pos + 1..];
    }
    // Zeros after the last good line are preallocated space, not data.
    let dropped = &bytes[good_len..good_len.max(used_len(&bytes))];
    check_tail_is_one_unsynced_batch(path, dropped, head)?;
    if !dropped.is_empty() {
        report.dropped_bytes = dropped.len() as u64;
        report.dropped_lines = dropped.iter().filter(|&&b| b == b'\n').count() as u64;
        let qdir = dir.join("quarantine");
        crate::durable::private_dir_all(&qdir).map_err(FileError::on(&qdir))?;
        sync_dir(dir)?;
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        let qpath = qdir.join(format!(
            "{}.tail-{stamp}",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("segment")
        ));
        // Crash point: the quarantine copy is made durable before the segment is truncated, so
        // a crash here leaves both (recovery runs again and makes a second copy: harmless).
        let mut q = crate::durable::private_file(&qpath, false).map_err(FileError::on(&qpath))?;
        q.write_all(dropped).map_err(FileError::on(&qpath))?;
        q.sync_all().map_err(FileError::on(&qpath))?;
        sync_dir(&qdir)?;
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(FileError::on(path))?;
        file.set_len(good_len as u64).map_err(FileError::on(path))?;
        file.sync_all().map_err(FileError::on(path))?;
        report.quarantine_file = Some(qpath);
        tracing::warn!(
            dropped_bytes = report.dropped_bytes,
            dropped_lines = report.dropped_lines,
            "journal recovery dropped an unacknowledged tail of the open segment"
        );
    }
    Ok((head, good_len as u64))
}

/// Decide whether the bytes after the last good record of the open segment can be what a crash
/// leaves behind, and so may be moved to quarantine; if not, refuse to start.
///
/// The writer waits for each batch's fdatasync before it writes the next batch, so a crash can
/// leave at most one batch unsynced: after it, some of that batch's pages may be missing
/// (zeros) or torn. So the dropped bytes may hold lines of one batch only (one `ts`), none of
/// which continues the chain at the next seq. A complete line that does carry the next seq but
/// not the right `prev` means a record already on disk was changed; lines of several batches
/// mean acknowledged records would be dropped. Either is damage an operator must see, not
/// something recovery may tidy away.
pub(super) fn check_tail_is_one_unsynced_batch(
    path: &Path,
    dropped: &[u8],
    head: Head,
) -> Result<(), JournalError> {
    let mut batch_ts: Option<String> = None;
    for line in dropped.split(|&b| b == b'\n') {
        let Ok(parsed) = serde_json::from_slice::<LineHead>(line) else {
            continue;
        };
        if parsed.seq <= head.seq + 1 {
            return Err(JournalError::Corrupt(format!(
                "{}: the record with seq {} does not continue the chain after seq {}: a record \
                 already written was changed or removed; run `auditgate verify` and investigate \
                 before starting the gateway",
                path.display(),
                parsed.seq,
                head.seq
            )));
        }
        match &batch_ts {
            None => batch_ts = Some(parsed.ts),
            Some(ts) if *ts == parsed.ts => {}
            Some(_) => {
                return Err(JournalError::Corrupt(format!(
                    "{}: records after seq {} that do not chain span more than one commit: \
                     acknowledged records would be dropped; run `auditgate verify` and \
                     investigate before starting the gateway",
                    path.display(),
                    head.seq
                )))
            }
        }
    }
    Ok(())
}
