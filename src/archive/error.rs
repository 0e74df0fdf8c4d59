//! What went wrong talking to the archive, with a bounded [`ArchiveError::category`].

use crate::durable::FileError;
use thiserror::Error;

/// What went wrong talking to the archive.
#[derive(Debug, Error)]
pub enum ArchiveError {
    /// The bucket cannot hold WORM objects: Object Lock is not enabled.
    #[error("bucket {bucket} cannot be the archive: {detail}")]
    NotLocked {
        /// The bucket.
        bucket: String,
        /// What the store said.
        detail: String,
    },
    /// The archive could not be reached (connection refused, timeout, DNS).
    #[error("archive {target} unreachable: {detail}")]
    Unreachable {
        /// The archive (`s3:BUCKET/PREFIX` or `dir:PATH`).
        target: String,
        /// What the store said.
        detail: String,
    },
    /// The archive answered with an error.
    #[error("archive request for {key} failed ({status}): {detail}")]
    Request {
        /// The object key.
        key: String,
        /// The HTTP status, when the store answered.
        status: u16,
        /// What the store said.
        detail: String,
    },
    /// An object with this key holds other content: never overwritten; someone must look.
    #[error("archive object {key} already exists with different content (sha256 {remote}, ours {local})")]
    Conflict {
        /// The object key.
        key: String,
        /// SHA-256 (base64) of what the gateway has.
        local: String,
        /// SHA-256 (base64) the store holds.
        remote: String,
    },
    /// The object was stored but its lock is not what was asked for.
    #[error("archive object {key} is not locked as required: {detail}")]
    LockNotConfirmed {
        /// The object key.
        key: String,
        /// What the store said.
        detail: String,
    },
    /// A local file could not be read or written.
    #[error(transparent)]
    Io(#[from] FileError),
}

impl ArchiveError {
    /// A bounded label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            ArchiveError::NotLocked { .. } => "not_locked",
            ArchiveError::Unreachable { .. } => "unreachable",
            ArchiveError::Request { .. } => "request",
            ArchiveError::Conflict { .. } => "conflict",
            ArchiveError::LockNotConfirmed { .. } => "lock_not_confirmed",
            ArchiveError::Io(_) => "io",
        }
    }
}
