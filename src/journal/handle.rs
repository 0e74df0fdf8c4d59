//! The journal handle every appender holds: append a record and await its receipt (durable
//! on return), the writer's counters, a clean close.

use super::config::JournalConfig;
use super::error::JournalError;

use crate::record::{Event, LeafHash};
use crate::tlog::checkpoint::CheckpointStats;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Proof that a record is durable: its sequence number and leaf hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The record's sequence number.
    pub seq: u64,
    /// The record's RFC 6962 leaf hash.
    pub leaf: LeafHash,
}

/// What recovery found and did when the journal was opened.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecoveryReport {
    /// The sequence number of the last durable record (0 for an empty journal).
    pub head_seq: u64,
    /// Bytes removed from the end of the open segment (moved to `quarantine/`).
    pub dropped_bytes: u64,
    /// How many of those bytes formed complete lines that did not parse or chain.
    pub dropped_lines: u64,
    /// Where the dropped bytes were kept, if any.
    pub quarantine_file: Option<PathBuf>,
    /// The number of sealed segments found.
    pub sealed_segments: usize,
}

/// Counters the writer keeps; read by metrics and `/readyz`.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Records made durable.
    pub records_written: AtomicU64,
    /// Bytes written to segments.
    pub bytes_written: AtomicU64,
    /// Batches committed (one fdatasync each).
    pub batches: AtomicU64,
    /// The seq of the newest durable record.
    pub head_seq: AtomicU64,
    /// Segments sealed.
    pub segments_sealed: AtomicU64,
    /// The journal has failed and takes no more records.
    pub failed: AtomicBool,
}

/// What [`Journal::close`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReport {
    /// The last durable record.
    pub head_seq: u64,
    /// The segment it sealed (first and last seq); `None` when the open segment was empty.
    pub sealed: Option<(u64, u64)>,
}

/// A handle to the journal; cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Journal {
    // Declared first, so it is dropped before `_writer`: the writer sees the queue closed.
    pub(super) queue: SyncSender<Command>,
    pub(super) queue_limit: usize,
    pub(super) stats: Arc<JournalStats>,
    pub(super) failure: Arc<std::sync::Mutex<Option<String>>>,
    pub(super) checkpoint_stats: Option<Arc<CheckpointStats>>,
    /// When the last handle is dropped, wait for the writer thread to finish (and release the
    /// directory lock), so the directory can be opened again at once.
    pub(super) _writer: Arc<WriterThread>,
}

impl Journal {
    /// Open (or create) the journal directory, run recovery, and start the writer thread,
    /// without signed checkpoints (tools and tests; the gateway always signs them).
    pub fn open(
        dir: &Path,
        node: &str,
        cfg: &JournalConfig,
    ) -> Result<(Journal, RecoveryReport), JournalError> {
        Self::open_with_checkpoints(dir, node, cfg, None)
    }
}

impl Journal {
    /// Append one record and wait until it is durable.
    ///
    /// Returns only after the record was written and fdatasync'd, or with an error; on error
    /// the caller must not release data that the record was meant to cover.
    pub async fn append(&self, event: &Event) -> Result<Receipt, JournalError> {
        let started = Instant::now();
        let rx = self.submit(event.to_json())?;
        let result = rx.await.unwrap_or(Err(JournalError::Closed));
        if result.is_ok() {
            crate::metrics::global()
                .journal_append_duration
                .observe(started.elapsed().as_secs_f64());
        }
        result
    }

    /// Blocking form of [`Journal::append`], for threads outside an async runtime.
    pub fn append_blocking(&self, event: &Event) -> Result<Receipt, JournalError> {
        let rx = self.submit(event.to_json())?;
        rx.blocking_recv().unwrap_or(Err(JournalError::Closed))
    }

    pub(super) fn submit(
        &self,
        event_json: Vec<u8>,
    ) -> Result<oneshot::Receiver<Result<Receipt, JournalError>>, JournalError> {
        // Fast path: the flag is set (with the reason) only once, when the journal fails.
        if self.stats.failed.load(Ordering::Acquire) {
            let reason = self.failure().unwrap_or_default();
            return Err(JournalError::Failed { reason });
        }
        let (reply, rx) = oneshot::channel();
        match self
            .queue
            .try_send(Command::Append(Pending { event_json, reply }))
        {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(JournalError::Backlog {
                limit: self.queue_limit,
            }),
            Err(TrySendError::Disconnected(_)) => Err(JournalError::Closed),
        }
    }

    /// Stop taking records, for a clean shutdown: every record queued before this call is
    /// committed, the open segment is sealed (when it holds records) and its signed checkpoint
    /// stored. Appends after this call fail with [`JournalError::Closed`]. Waits at most
    /// `timeout`.
    pub fn close(&self, timeout: Duration) -> Result<CloseReport, JournalError> {
        let deadline = Instant::now() + timeout;
        let (reply, wait) = mpsc::channel();
        // Never block on a full queue behind a stuck writer: retry until the deadline.
        let mut command = Command::Close(reply);
        loop {
            match self.queue.try_send(command) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return Err(JournalError::Closed),
                Err(TrySendError::Full(back)) => {
                    if Instant::now() >= deadline {
                        return Err(JournalError::CloseTimeout {
                            secs: timeout.as_secs(),
                        });
                    }
                    command = back;
                    thread::sleep(Duration::from_millis(5));
                }
            }
        }
        match wait.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(JournalError::CloseTimeout {
                secs: timeout.as_secs(),
            }),
            Err(RecvTimeoutError::Disconnected) => Err(JournalError::Closed),
        }
    }

    /// The writer's counters.
    pub fn stats(&self) -> &JournalStats {
        &self.stats
    }

    /// The checkpoint thread's counters, when checkpoints are signed.
    pub fn checkpoint_stats(&self) -> Option<&Arc<CheckpointStats>> {
        self.checkpoint_stats.as_ref()
    }

    /// Whether the journal has failed and refuses every record (one atomic load).
    pub fn has_failed(&self) -> bool {
        self.stats.failed.load(Ordering::Acquire)
    }

    /// Why the journal refuses records, if it does.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

pub(super) struct Pending {
    pub(super) event_json: Vec<u8>,
    pub(super) reply: oneshot::Sender<Result<Receipt, JournalError>>,
}

/// What the writer thread is asked to do, in queue order.
pub(super) enum Command {
    Append(Pending),
    /// Seal the open segment, store its checkpoint, and stop taking records.
    Close(mpsc::Sender<Result<CloseReport, JournalError>>),
}

/// The writer thread, joined when the last [`Journal`] handle goes away.
pub(super) struct WriterThread(pub(super) Option<thread::JoinHandle<()>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            let _ = handle.join();
        }
    }
}
