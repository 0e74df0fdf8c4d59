//! Why the journal could not take a record or could not open, with a bounded
//! [`JournalError::category`] for metric labels.

use crate::durable::FileError;
use crate::tlog::checkpoint::CheckpointError;
use std::path::{Path, PathBuf};

/// Why the journal could not take a record or could not open.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// An I/O error on a journal file while opening or recovering.
    #[error("journal I/O error on {0}")]
    Io(#[from] FileError),
    /// Another process holds the journal directory's lock.
    #[error("journal directory {0} is locked by another process")]
    Locked(PathBuf),
    /// Recovery found a problem it must not repair by itself.
    #[error("journal corrupt: {0}")]
    Corrupt(String),
    /// The queue to the writer holds `queue_max_records` records already.
    #[error("journal backlog is full ({limit} records waiting)")]
    Backlog {
        /// The queue's limit (`journal.queue_max_records`).
        limit: usize,
    },
    /// A write or sync failed earlier; the journal takes nothing until restart.
    #[error("journal failed and refuses records until restart: {reason}")]
    Failed {
        /// The first failure, as it was logged.
        reason: String,
    },
    /// The writer thread is gone (shutdown).
    #[error("journal is closed")]
    Closed,
    /// The checkpoint state or key could not be used at start.
    #[error("journal checkpoints: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// [`Journal::close`](super::Journal::close) did not finish in time.
    #[error("journal did not close within {secs} s")]
    CloseTimeout {
        /// How long was waited, in seconds.
        secs: u64,
    },
}

impl JournalError {
    /// A fixed label for metrics and the 503 body.
    pub fn category(&self) -> &'static str {
        match self {
            JournalError::Io(_) => "io",
            JournalError::Locked(_) => "locked",
            JournalError::Corrupt(_) => "corrupt",
            JournalError::Backlog { .. } => "backlog",
            JournalError::Failed { .. } => "failed",
            JournalError::Closed => "closed",
            JournalError::Checkpoint(_) => "checkpoint",
            JournalError::CloseTimeout { .. } => "close_timeout",
        }
    }
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    Ok(crate::durable::sync_dir(dir).map_err(FileError::on(dir))?)
}
