//! The one writer thread: group commit (a batch, one write, one fdatasync, then every waiter
//! woken; optionally, under load, a short sleep first so more records share the fdatasync:
//! `journal.commit_delay_us`), sealing segments, and asking the checkpoint thread for signed
//! checkpoints.

use super::config::JournalConfig;
use super::error::{sync_dir, JournalError};
use super::handle::{CloseReport, Command, JournalStats, Pending, Receipt};
use super::segment::Head;
use super::segment::{create_open_segment, spawn_spare, SegmentName};
use crate::durable::FileError;
use crate::record::{self, RECORD_VERSION};
use crate::tlog::checkpoint::{CheckpointSigner, Checkpointer};
use crate::tlog::merkle::{self};
use std::fs::{self, File};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The writer's state: the open segment and the chain head.
pub(super) struct Writer {
    pub(super) dir: PathBuf,
    /// The node name serialised once as a JSON string.
    pub(super) node_json: Vec<u8>,
    pub(super) cfg: JournalConfig,
    pub(super) file: File,
    pub(super) path: PathBuf,
    pub(super) first_seq: u64,
    pub(super) len: u64,
    pub(super) opened_at: Instant,
    pub(super) head: Head,
    pub(super) stats: Arc<JournalStats>,
    pub(super) failure: Arc<std::sync::Mutex<Option<String>>>,
    /// A spare segment is being prepared.
    pub(super) spare_busy: Arc<AtomicBool>,
    /// The Merkle tree and the checkpoint thread, when checkpoints are signed.
    pub(super) checkpoints: Option<WriterCheckpoints>,
    // Held for the writer's life: the directory lock.
    pub(super) _lock: File,
}

/// How often the writer asks for a signed checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointTiming {
    /// While records arrive: at most this often.
    pub interval: Duration,
    /// With no new records: a heartbeat this often.
    pub heartbeat: Duration,
}

/// Checkpoint signing for [`Journal::open_with_checkpoints`](super::Journal::open_with_checkpoints).
pub struct Checkpointing {
    /// The node's checkpoint key.
    pub signer: CheckpointSigner,
    /// How often to sign.
    pub timing: CheckpointTiming,
}

/// The writer's share of checkpointing: hand each batch's leaves to the checkpoint thread (which
/// keeps the tree) and decide when to sign.
pub(super) struct WriterCheckpoints {
    pub(super) checkpointer: Checkpointer,
    pub(super) timing: CheckpointTiming,
    /// Durable records so far (the tree size).
    pub(super) size: u64,
    /// Leaves not yet handed over: sent in bulk (at a checkpoint, or every
    /// [`LEAVES_PER_HANDOVER`]), so the checkpoint thread is not woken once per fdatasync.
    pub(super) pending_leaves: Vec<merkle::Hash>,
    pub(super) last_requested_at: Instant,
    pub(super) last_requested_size: u64,
}

/// How long a clean close waits for the final checkpoint to be stored.
pub(super) const CLOSE_CHECKPOINT_WAIT: Duration = Duration::from_secs(10);

/// Hand leaves to the checkpoint thread at least this often (in records), so its work stays
/// spread out and the writer's buffer small.
pub(super) const LEAVES_PER_HANDOVER: usize = 8192;

impl WriterCheckpoints {
    /// Record the leaves of a durable batch.
    pub(super) fn add(&mut self, receipts: &[Receipt]) {
        self.pending_leaves
            .extend(receipts.iter().map(|r| merkle::hash_of(&r.leaf)));
        self.size += receipts.len() as u64;
        if self.pending_leaves.len() >= LEAVES_PER_HANDOVER {
            self.hand_over();
        }
    }

    pub(super) fn hand_over(&mut self) {
        if !self.pending_leaves.is_empty() {
            let leaves = std::mem::replace(
                &mut self.pending_leaves,
                Vec::with_capacity(LEAVES_PER_HANDOVER),
            );
            self.checkpointer.leaves(leaves);
        }
    }

    /// Ask for a checkpoint of every durable record so far.
    pub(super) fn request(&mut self) {
        self.request_at(false);
    }

    /// Ask for a checkpoint; `seal`: it ends a sealed segment.
    pub(super) fn request_at(&mut self, seal: bool) {
        self.hand_over();
        self.checkpointer.sign(SystemTime::now(), seal);
        self.last_requested_at = Instant::now();
        self.last_requested_size = self.size;
    }

    /// A checkpoint when records arrived and the interval passed, or a heartbeat when idle.
    pub(super) fn request_if_due(&mut self) {
        let since = self.last_requested_at.elapsed();
        let grew = self.size > self.last_requested_size;
        if (grew && since >= self.timing.interval) || since >= self.timing.heartbeat {
            self.request();
        }
    }
}

impl Writer {
    pub(super) fn run(mut self, rx: Receiver<Command>) {
        let mut batch: Vec<Pending> = Vec::with_capacity(self.cfg.batch_max_records);
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
        let tick = Duration::from_millis(500);
        let commit_delay = Duration::from_micros(self.cfg.commit_delay_us);
        let mut last_batch = 0;
        let mut close = None;
        loop {
            match rx.recv_timeout(tick) {
                Ok(Command::Append(first)) => batch.push(first),
                Ok(Command::Close(reply)) => close = Some(reply),
                Err(RecvTimeoutError::Timeout) => {
                    self.seal_if_due();
                    self.checkpoint_if_due();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.drain(&rx, &mut batch, &mut close);
            // Under load (the last batch was a crowd), let more records join this one: they
            // share its fdatasync. A sleep, not a wait on the queue, so appenders arriving
            // meanwhile wake nobody. Nothing is acknowledged before the commit below.
            if close.is_none()
                && batch.len() < self.cfg.batch_max_records
                && self.cfg.delays_commit_after(last_batch)
            {
                std::thread::sleep(commit_delay);
                self.drain(&rx, &mut batch, &mut close);
            }
            last_batch = batch.len();
            if !batch.is_empty() {
                self.commit(&mut batch, &mut buf);
            }
            if let Some(reply) = close.take() {
                let _ = reply.send(self.close());
                // Appends queued after the close are dropped with the queue: their callers get
                // `Closed` and release nothing.
                return;
            }
            self.seal_if_due();
            self.checkpoint_if_due();
        }
        // Every handle is gone: seal nothing (the open segment stays open and is recovered on
        // the next start); the last batch is already on disk. Sign the final head, if it grew.
        if self.failed_reason().is_none() {
            if let Some(c) = self.checkpoints.as_mut() {
                if c.size > c.last_requested_size {
                    c.request();
                }
            }
        }
    }

    /// Take what the queue holds now, up to a full batch or a close.
    fn drain(
        &self,
        rx: &Receiver<Command>,
        batch: &mut Vec<Pending>,
        close: &mut Option<std::sync::mpsc::Sender<Result<CloseReport, JournalError>>>,
    ) {
        while close.is_none() && batch.len() < self.cfg.batch_max_records {
            match rx.try_recv() {
                Ok(Command::Append(more)) => batch.push(more),
                Ok(Command::Close(reply)) => *close = Some(reply),
                Err(_) => break,
            }
        }
    }

    /// The clean stop: seal the open segment if it holds records, have its checkpoint (or the
    /// head's) signed and stored, and report.
    pub(super) fn close(&mut self) -> Result<CloseReport, JournalError> {
        if let Some(reason) = self.failed_reason() {
            return Err(JournalError::Failed { reason });
        }
        let sealed = if self.len > 0 {
            let range = (self.first_seq, self.head.seq);
            if let Err(e) = self.seal_open_segment() {
                self.fail("seal", format!("sealing a segment failed: {e}"));
                return Err(e);
            }
            Some(range)
        } else {
            None
        };
        if let Some(c) = self.checkpoints.as_mut() {
            // Sealing asked for the seal's checkpoint; an empty open segment needs one only if
            // the tree grew since the last.
            if sealed.is_none() && c.size > c.last_requested_size {
                c.request();
            }
            if !c.checkpointer.flush(CLOSE_CHECKPOINT_WAIT) {
                // The segment is sealed, but no signed checkpoint is known to cover it: not a
                // clean stop (the next start signs the recovered head).
                return Err(JournalError::CloseTimeout {
                    secs: CLOSE_CHECKPOINT_WAIT.as_secs(),
                });
            }
        }
        tracing::info!(
            head_seq = self.head.seq,
            sealed = sealed.is_some(),
            "journal closed"
        );
        Ok(CloseReport {
            head_seq: self.head.seq,
            sealed,
        })
    }

    pub(super) fn checkpoint_if_due(&mut self) {
        if self.failed_reason().is_some() {
            return;
        }
        if let Some(c) = self.checkpoints.as_mut() {
            c.request_if_due();
        }
    }

    pub(super) fn failed_reason(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Stop taking records until restart. `category` is a fixed label (`write`, `seal`).
    pub(super) fn fail(&self, category: &'static str, reason: String) {
        let metrics = crate::metrics::global();
        metrics
            .journal_failures
            .with_label_values(&[category])
            .inc();
        metrics.journal_failed.set(1);
        tracing::error!(reason = %reason, category, "journal failed: refusing all records until restart");
        *self
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
        self.stats.failed.store(true, Ordering::Release);
    }

    /// Write, sync, and acknowledge one batch.
    pub(super) fn commit(&mut self, batch: &mut Vec<Pending>, buf: &mut Vec<u8>) {
        if let Some(reason) = self.failed_reason() {
            refuse_batch(batch, &reason);
            return;
        }
        let (head, receipts) = self.stamp(batch, buf);
        // Crash point: before the write returns, nothing of this batch is acknowledged; a partial
        // write is a torn tail that recovery moves to quarantine.
        let sync_started = Instant::now();
        let result = {
            use std::os::unix::fs::FileExt;
            self.file.write_all_at(buf, self.len)
        }
        .and_then(|()| {
            // Crash point: written but not synced; the records may or may not survive a power
            // loss. Nobody has been told they are durable, so either way nothing acknowledged
            // is lost.
            self.file.sync_data()
        });
        match result {
            Ok(()) => {
                // Durable: the batch is on disk. Only now are waiters woken.
                self.count_batch(batch.len(), buf.len(), head, sync_started);
                if let Some(c) = self.checkpoints.as_mut() {
                    c.add(&receipts);
                }
                for (p, receipt) in batch.drain(..).zip(receipts) {
                    let _ = p.reply.send(Ok(receipt));
                }
            }
            Err(e) => {
                // The batch is not acknowledged. Try to cut the file back to the last durable
                // length so the segment ends on a good record; if that fails too, recovery at the
                // next start does it. Never retry the sync.
                let rollback = self
                    .file
                    .set_len(self.len)
                    .and_then(|()| self.file.sync_all());
                let reason = match rollback {
                    Ok(()) => format!("write or fdatasync failed: {e}"),
                    Err(e2) => format!("write or fdatasync failed: {e}; rollback failed: {e2}"),
                };
                self.fail("write", reason.clone());
                refuse_batch(batch, &reason);
            }
        }
    }

    /// The batch's lines into `buf`: each event spliced behind its chain header (`seq`, `prev`,
    /// one `ts` for the batch), with the new head and a receipt per record. Nothing is written.
    #[allow(
        clippy::expect_used,
        reason = "a 32-byte hash always encodes into 64 hex digits"
    )]
    fn stamp(&self, batch: &[Pending], buf: &mut Vec<u8>) -> (Head, Vec<Receipt>) {
        buf.clear();
        let mut head = self.head;
        let mut prev_hex = [0u8; 64];
        hex::encode_to_slice(head.leaf, &mut prev_hex).expect("64 hex digits");
        let mut receipts = Vec::with_capacity(batch.len());
        let ts = record::format_ts(SystemTime::now());
        for pending in batch {
            let start = buf.len();
            record::splice_parts(
                buf,
                RECORD_VERSION,
                &self.node_json,
                head.seq + 1,
                &prev_hex,
                ts.as_bytes(),
                &pending.event_json,
            );
            let leaf = record::leaf_hash(&buf[start..]);
            buf.push(b'\n');
            head = Head {
                seq: head.seq + 1,
                leaf,
            };
            hex::encode_to_slice(leaf, &mut prev_hex).expect("64 hex digits");
            receipts.push(Receipt {
                seq: head.seq,
                leaf,
            });
        }
        (head, receipts)
    }

    /// A durable batch of `records` and `bytes`: the segment grows, the head moves, and the
    /// counters and metrics say so.
    fn count_batch(&mut self, records: usize, bytes: usize, head: Head, sync_started: Instant) {
        self.len += bytes as u64;
        self.head = head;
        self.stats
            .records_written
            .fetch_add(records as u64, Ordering::Relaxed);
        self.stats
            .bytes_written
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.head_seq.store(head.seq, Ordering::Relaxed);
        let metrics = crate::metrics::global();
        metrics
            .journal_fsync_duration
            .observe(sync_started.elapsed().as_secs_f64());
        metrics.journal_batch_records.observe(records as f64);
        metrics.journal_records.inc_by(records as u64);
        metrics.journal_bytes.inc_by(bytes as u64);
        metrics.journal_head_seq.set(head.seq as i64);
    }

    pub(super) fn seal_if_due(&mut self) {
        if self.failed_reason().is_some() || self.len == 0 {
            return;
        }
        let too_big = self.len >= self.cfg.segment_max_bytes;
        let too_old =
            self.opened_at.elapsed() >= Duration::from_secs(self.cfg.segment_max_age_secs);
        if !(too_big || too_old) {
            return;
        }
        if let Err(e) = self.seal() {
            self.fail("seal", format!("sealing a segment failed: {e}"));
        }
    }

    /// Seal the open segment and open the next one.
    pub(super) fn seal(&mut self) -> Result<(), JournalError> {
        self.seal_open_segment()?;
        self.open_next_segment()
    }

    /// Cut, sync and rename the open segment to its sealed name, and ask for its checkpoint.
    /// Afterwards nothing may be written until [`Writer::open_next_segment`].
    pub(super) fn seal_open_segment(&mut self) -> Result<(), JournalError> {
        // A sealed segment holds exactly its records: cut the preallocated zeros.
        self.file
            .set_len(self.len)
            .map_err(FileError::on(&self.path))?;
        self.file.sync_all().map_err(FileError::on(&self.path))?;
        let sealed = self.dir.join(
            SegmentName::Sealed {
                first: self.first_seq,
                last: self.head.seq,
            }
            .file_name(),
        );
        // Crash point: before the rename the segment is a complete open segment; recovery keeps
        // using it as the open one.
        fs::rename(&self.path, &sealed).map_err(FileError::on(&sealed))?;
        // Crash point: renamed but the directory not synced: after power loss either name may be
        // found, both are valid states for recovery.
        sync_dir(&self.dir)?;
        // Every sealed segment ends on a signed checkpoint (its last seq is the tree size).
        if let Some(c) = self.checkpoints.as_mut() {
            c.request_at(true);
        }
        self.stats.segments_sealed.fetch_add(1, Ordering::Relaxed);
        crate::metrics::global().segments_sealed.inc();
        tracing::info!(last_seq = self.head.seq, "journal segment sealed");
        Ok(())
    }

    /// Open the segment after a sealed one.
    pub(super) fn open_next_segment(&mut self) -> Result<(), JournalError> {
        let first = self.head.seq + 1;
        let (file, next) = create_open_segment(&self.dir, first)?;
        if self.cfg.preallocate {
            spawn_spare(
                self.dir.clone(),
                self.cfg.segment_max_bytes,
                self.spare_busy.clone(),
            );
        }
        self.file = file;
        self.path = next;
        self.first_seq = first;
        self.len = 0;
        self.opened_at = Instant::now();
        Ok(())
    }
}

/// Tell every waiter of `batch` that its record was not written.
fn refuse_batch(batch: &mut Vec<Pending>, reason: &str) {
    for p in batch.drain(..) {
        let _ = p.reply.send(Err(JournalError::Failed {
            reason: reason.to_string(),
        }));
    }
}
