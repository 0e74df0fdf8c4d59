//! The contract every archive backend keeps ([`ArchiveStore`]): create-only writes with a
//! checksum and a retain-until date, reads, and a listing of every version.

use super::error::ArchiveError;
use async_trait::async_trait;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

/// The result of a create-only PUT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutResult {
    /// The object was created by this PUT.
    Created,
    /// An object with this key already exists (nothing was written).
    AlreadyExists,
}

/// What a HEAD says about an object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectInfo {
    /// Base64 SHA-256 the store recorded, if any.
    pub sha256: Option<String>,
    /// `COMPLIANCE`, `GOVERNANCE`, or none.
    pub lock_mode: Option<String>,
    /// Retain-until as seconds since the epoch.
    pub retain_until: Option<i64>,
    /// Version id, if the store versions objects.
    pub version_id: Option<String>,
    /// When the object (this version) was stored, seconds since the epoch.
    pub last_modified: Option<i64>,
}

/// One entry of a version listing (for `verify --archive`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedVersion {
    /// The object key.
    pub key: String,
    /// The version's id (`None`: an unversioned store).
    pub version_id: Option<String>,
    /// This is the current version.
    pub is_latest: bool,
    /// This version is a delete marker.
    pub is_delete_marker: bool,
}

/// A place objects can be shipped to. Every method is safe to retry.
#[async_trait]
pub trait ArchiveStore: Send + Sync {
    /// `s3://bucket/prefix` or `dir:/path`, for logs and the progress file.
    fn target(&self) -> String;
    /// True when the store enforces retention (S3 Object Lock); false for the directory.
    fn is_worm(&self) -> bool;
    /// Check the store can take locked objects (S3: the bucket has Object Lock enabled).
    async fn check_ready(&self) -> Result<(), ArchiveError>;
    /// Create `key` with `bytes` unless it exists; `sha256` is the base64 SHA-256 of `bytes`.
    /// Durable on `Created` (S3: acknowledged by the server; directory: fsync'd).
    async fn put_new(
        &self,
        key: &str,
        bytes: Vec<u8>,
        sha256: &str,
        retain_until: SystemTime,
    ) -> Result<PutResult, ArchiveError>;
    /// The object's checksum and lock, or `None` if there is no such object.
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, ArchiveError>;
    /// The object's bytes (the current version).
    async fn get(&self, key: &str) -> Result<Vec<u8>, ArchiveError>;
    /// `len` bytes of the object from byte `start` (fewer at its end). For reading parts of
    /// a columnar copy: a footer, a page. The default reads the whole object.
    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, ArchiveError> {
        let all = self.get(key).await?;
        let from = (start as usize).min(all.len());
        let to = from.saturating_add(len as usize).min(all.len());
        Ok(all[from..to].to_vec())
    }
    /// Every version and delete marker under `prefix`.
    async fn list_versions(&self, prefix: &str) -> Result<Vec<ListedVersion>, ArchiveError>;
}

/// Base64 SHA-256, the form of `x-amz-checksum-sha256`.
pub fn sha256_b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(bytes))
}

/// Seconds since the epoch (0 before it), as the stores report modification times.
pub(super) fn to_unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
