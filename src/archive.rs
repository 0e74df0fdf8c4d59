//! The WORM archive: sealed segments and signed checkpoints, shipped where nobody can delete
//! them for the retention period (S3 Object Lock, COMPLIANCE mode).
//!
//! Owns the archive's object layout, the two stores (S3 and a local directory), and the
//! background [`Archiver`] that ships what the journal seals. It guarantees:
//!
//! * **Create-only.** Every object is written with `If-None-Match: *` (the directory store: a
//!   hard link, which fails if the name exists). Nothing is ever overwritten.
//! * **Checksummed and locked.** Every S3 PUT carries `x-amz-checksum-sha256` (the server
//!   refuses bytes that do not match), `ObjectLockMode=COMPLIANCE` and a retain-until date of
//!   now + `retention_days`. After each upload the object is read back (HEAD) and only marked
//!   shipped if its lock mode is COMPLIANCE and its retain-until date is as asked.
//! * **Retries are idempotent.** A retry that finds the object already there (an upload that
//!   failed after the object was stored) compares checksums: equal is success; different
//!   content is an alarm (error log without PHI, counter) and is never overwritten.
//! * **Nothing is lost while the archive is away.** The local journal is the durable store:
//!   unshipped segments stay on disk and are retried with exponential backoff; the backlog and
//!   the age of the oldest unshipped segment are counted.
//!
//! # Object keys
//!
//! Hive-style partitions, so Athena, Trino or DuckDB read the archive as it is:
//!
//! ```text
//! PREFIX/v1/node=NODE/dt=YYYY-MM-DD/seg-FIRST-LAST.jsonl.zst    a sealed segment, zstd
//! PREFIX/v1/node=NODE/dt=YYYY-MM-DD/seg-FIRST-LAST.jsonl.gz     (or gzip: `compression`)
//!                                                               (dt: its first record's date)
//! PREFIX/v1/node=NODE/checkpoints/SIZE-TIMESTAMP.note           a signed checkpoint
//! ```
//!
//! # Progress
//!
//! `JOURNAL/archive-state.json` holds what is confirmed shipped to which target: the last
//! sealed segment's last seq and the last checkpoint file name (checkpoint names sort by size,
//! then time, so "everything up to this name" is well defined). It is written after each
//! confirmed object (temp file, fsync, rename, fsync the directory). A crash before that write
//! means the object is shipped again, found present with the same checksum, and counted as
//! shipped: never a duplicate, never a conflict.
//!
//! The directory store (`kind = "dir"`) is for the quickstart and tests. It is **not WORM**:
//! anyone with write access to the directory can change or delete what is in it.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::checkpoint;
use crate::config::ConfigError;
use crate::journal::{self, SegmentName};

/// Six years, in days (with the two leap days a six-year span can hold): HIPAA's minimum.
pub const SIX_YEARS_DAYS: u64 = 2192;
/// The progress file in the journal directory.
pub const STATE_FILE: &str = "archive-state.json";

/// Where the archive is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveKind {
    /// No archive: the journal stays on this disk only (a warning at start).
    None,
    /// A local directory (quickstart, tests). Not WORM.
    Dir,
    /// S3 (or an S3-compatible server) with Object Lock.
    S3,
}

/// `[archive]`: where sealed segments and checkpoints go.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// `none`, `dir` or `s3`.
    #[serde(default = "default_kind")]
    pub kind: ArchiveKind,
    /// `kind = "dir"`: the archive directory. Relative paths resolve against the config file's
    /// directory.
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// `kind = "s3"`: the bucket (must have Object Lock enabled).
    #[serde(default)]
    pub bucket: String,
    /// Key prefix inside the bucket (or directory); may be empty.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// AWS region; default: the standard AWS configuration chain (`AWS_REGION`, profile).
    #[serde(default)]
    pub region: Option<String>,
    /// An S3-compatible endpoint instead of AWS, e.g. `http://127.0.0.1:4566`.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most S3-compatible servers.
    #[serde(default)]
    pub force_path_style: bool,
    /// A named profile of the AWS configuration files; default: the standard chain.
    #[serde(default)]
    pub profile: Option<String>,
    /// Object Lock retain-until = upload time + this many days. At least 2192 (six years).
    #[serde(default = "default_retention_days")]
    pub retention_days: u64,
    /// Allow `retention_days` below six years. For tests only.
    #[serde(default)]
    pub allow_short_retention: bool,
    /// Look for newly sealed segments and checkpoints this often.
    #[serde(default = "default_poll_interval_secs")]
    pub poll_interval_secs: u64,
    /// After a failure, retry after 1 s, then twice as long each time, up to this.
    #[serde(default = "default_retry_max_secs")]
    pub retry_max_secs: u64,
    /// One S3 request may take at most this long (then it is retried).
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// How sealed segments are compressed: `zstd` (the default: level 1, faster than gzip's
    /// fastest level and about half its size on journal segments) or `gzip` (level 1). Both
    /// are read by Athena, Trino and DuckDB as they are, and `verify` reads both, so an archive
    /// may hold either.
    #[serde(default)]
    pub compression: SegmentCompression,
    /// Delete a sealed segment from the local journal once it is shipped and its lock is
    /// confirmed (`kind = "s3"` only). The newest sealed segment is always kept (it anchors the
    /// chain for recovery). Proofs and `verify` of older records then need the archive.
    #[serde(default)]
    pub delete_local_after_ship: bool,
}

fn default_kind() -> ArchiveKind {
    ArchiveKind::None
}
fn default_dir() -> PathBuf {
    PathBuf::from("archive")
}
fn default_prefix() -> String {
    "auditgate".into()
}
fn default_retention_days() -> u64 {
    SIX_YEARS_DAYS
}
fn default_poll_interval_secs() -> u64 {
    5
}
fn default_retry_max_secs() -> u64 {
    300
}
fn default_request_timeout_secs() -> u64 {
    60
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            kind: default_kind(),
            dir: default_dir(),
            bucket: String::new(),
            prefix: default_prefix(),
            region: None,
            endpoint_url: None,
            force_path_style: false,
            profile: None,
            retention_days: default_retention_days(),
            allow_short_retention: false,
            poll_interval_secs: default_poll_interval_secs(),
            retry_max_secs: default_retry_max_secs(),
            request_timeout_secs: default_request_timeout_secs(),
            compression: SegmentCompression::default(),
            delete_local_after_ship: false,
        }
    }
}

impl ArchiveConfig {
    /// Check the values are usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kind == ArchiveKind::S3 && self.bucket.is_empty() {
            return Err(ConfigError::invalid(
                "archive.bucket",
                "is required when archive.kind = \"s3\"",
            ));
        }
        if self.retention_days == 0
            || (self.retention_days < SIX_YEARS_DAYS && !self.allow_short_retention)
        {
            return Err(ConfigError::invalid(
                "archive.retention_days",
                format!(
                    "{} days is less than the six years HIPAA requires ({SIX_YEARS_DAYS} days); \
                     only tests may set archive.allow_short_retention = true",
                    self.retention_days
                ),
            ));
        }
        if self.delete_local_after_ship && self.kind != ArchiveKind::S3 {
            return Err(ConfigError::invalid(
                "archive.delete_local_after_ship",
                "only with archive.kind = \"s3\": local segments may only be deleted once a \
                 write-once copy exists",
            ));
        }
        if self.prefix.starts_with('/') || self.prefix.ends_with('/') || self.prefix.contains("//")
        {
            return Err(ConfigError::invalid(
                "archive.prefix",
                "must not start or end with '/' or contain '//'",
            ));
        }
        for (key, v) in [
            ("archive.poll_interval_secs", self.poll_interval_secs),
            ("archive.retry_max_secs", self.retry_max_secs),
            ("archive.request_timeout_secs", self.request_timeout_secs),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        Ok(())
    }

    /// The retention as a duration.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_days * 86_400)
    }
}

/// What went wrong talking to the archive.
#[derive(Debug, Error)]
pub enum ArchiveError {
    /// The bucket cannot hold WORM objects: Object Lock is not enabled.
    #[error("bucket {bucket} cannot be the archive: {detail}")]
    NotLocked { bucket: String, detail: String },
    /// The archive could not be reached (connection refused, timeout, DNS).
    #[error("archive {target} unreachable: {detail}")]
    Unreachable { target: String, detail: String },
    /// The archive answered with an error.
    #[error("archive request for {key} failed ({status}): {detail}")]
    Request {
        key: String,
        status: u16,
        detail: String,
    },
    /// An object with this key holds other content: never overwritten; someone must look.
    #[error("archive object {key} already exists with different content (sha256 {remote}, ours {local})")]
    Conflict {
        key: String,
        local: String,
        remote: String,
    },
    /// The object was stored but its lock is not what was asked for.
    #[error("archive object {key} is not locked as required: {detail}")]
    LockNotConfirmed { key: String, detail: String },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
            ArchiveError::Io { .. } => "io",
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

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
    pub key: String,
    pub version_id: Option<String>,
    pub is_latest: bool,
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
    /// Every version and delete marker under `prefix`.
    async fn list_versions(&self, prefix: &str) -> Result<Vec<ListedVersion>, ArchiveError>;
}

/// Base64 SHA-256, the form of `x-amz-checksum-sha256`.
pub fn sha256_b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(bytes))
}

/// How an archived segment is compressed; the key's extension says which.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SegmentCompression {
    /// Zstandard, level 1 (`.jsonl.zst`).
    #[default]
    Zstd,
    /// gzip, level 1 (`.jsonl.gz`).
    Gzip,
}

/// zstd's level for segments: its fastest regular level. The archiver compresses while the
/// gateway serves; level 1 compresses journal segments 16:1 to 26:1 at 2 to 2.6 GB/s here
/// (`cargo bench --bench journal`, `zstd -b1`).
const ZSTD_LEVEL: i32 = 1;

impl SegmentCompression {
    /// The extension after `.jsonl`, with its dot.
    pub fn extension(self) -> &'static str {
        match self {
            SegmentCompression::Zstd => ".zst",
            SegmentCompression::Gzip => ".gz",
        }
    }

    /// The other one (a segment stored by a gateway configured with it may already exist).
    pub fn other(self) -> Self {
        match self {
            SegmentCompression::Zstd => SegmentCompression::Gzip,
            SegmentCompression::Gzip => SegmentCompression::Zstd,
        }
    }

    /// The compression a file name's extension names, and the name without it.
    pub fn of_file_name(name: &str) -> Option<(Self, &str)> {
        [SegmentCompression::Zstd, SegmentCompression::Gzip]
            .into_iter()
            .find_map(|c| name.strip_suffix(c.extension()).map(|stem| (c, stem)))
    }

    /// Compress a segment at the fastest level. Deterministic for a given library version (no
    /// name or time in the header); a retry compares content, not compressed bytes.
    pub fn compress(self, bytes: &[u8]) -> Vec<u8> {
        match self {
            SegmentCompression::Zstd => {
                zstd::bulk::compress(bytes, ZSTD_LEVEL).expect("compressing into memory")
            }
            SegmentCompression::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(
                    Vec::with_capacity(bytes.len() / 4),
                    flate2::Compression::fast(),
                );
                encoder.write_all(bytes).expect("writing to a Vec");
                encoder.finish().expect("writing to a Vec")
            }
        }
    }

    /// Decompress an archived segment; more than [`MAX_SEGMENT_BYTES`] of output is an error.
    pub fn decompress(self, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
        self.decompress_at_most(bytes, MAX_SEGMENT_BYTES)
    }

    fn decompress_at_most(self, bytes: &[u8], limit: u64) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(bytes.len().saturating_mul(8).min(1 << 26));
        match self {
            SegmentCompression::Zstd => zstd::stream::read::Decoder::with_buffer(bytes)?
                .take(limit + 1)
                .read_to_end(&mut out)?,
            SegmentCompression::Gzip => flate2::read::GzDecoder::new(bytes)
                .take(limit + 1)
                .read_to_end(&mut out)?,
        };
        if out.len() as u64 > limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("decompresses to more than {limit} bytes, the largest a segment can be"),
            ));
        }
        Ok(out)
    }
}

/// No segment is larger than this (`journal.segment_max_bytes` is capped at it), so no archived
/// object may decompress to more: a planted "zip bomb" cannot exhaust a verifier's memory.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;

/// Object key layout.
#[derive(Debug, Clone)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    pub fn new(prefix: &str) -> Self {
        Layout {
            prefix: prefix.to_string(),
        }
    }

    fn join(&self, rest: &str) -> String {
        if self.prefix.is_empty() {
            rest.to_string()
        } else {
            format!("{}/{rest}", self.prefix)
        }
    }

    /// Everything of this layout version: `PREFIX/v1/`.
    pub fn root(&self) -> String {
        self.join("v1/")
    }

    /// Everything of one node: `PREFIX/v1/node=NODE/`.
    pub fn node(&self, node: &str) -> String {
        self.join(&format!("v1/node={node}/"))
    }

    /// A sealed segment's key; `date` is `YYYY-MM-DD` of its first record.
    pub fn segment(
        &self,
        node: &str,
        date: &str,
        first: u64,
        last: u64,
        compression: SegmentCompression,
    ) -> String {
        self.join(&format!(
            "v1/node={node}/dt={date}/{}{}",
            SegmentName::Sealed { first, last }.file_name(),
            compression.extension()
        ))
    }

    /// A checkpoint's key (`file_name` as in the journal's `checkpoints/`).
    pub fn checkpoint(&self, node: &str, file_name: &str) -> String {
        self.join(&format!("v1/node={node}/checkpoints/{file_name}"))
    }
}

// ---- the directory store ----------------------------------------------------------------------

/// A local directory as the archive: the same keys as files. **Not WORM.**
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    pub fn new(root: &Path) -> Self {
        DirStore {
            root: root.to_path_buf(),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }
}

fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[async_trait]
impl ArchiveStore for DirStore {
    fn target(&self) -> String {
        format!("dir:{}", self.root.display())
    }

    fn is_worm(&self) -> bool {
        false
    }

    async fn check_ready(&self) -> Result<(), ArchiveError> {
        fs::create_dir_all(&self.root).map_err(io_err(&self.root))
    }

    async fn put_new(
        &self,
        key: &str,
        bytes: Vec<u8>,
        _sha256: &str,
        _retain_until: SystemTime,
    ) -> Result<PutResult, ArchiveError> {
        let path = self.path(key);
        let dir = path.parent().expect("keys have a directory").to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        if path.exists() {
            return Ok(PutResult::AlreadyExists);
        }
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(io_err(&tmp))?;
        // Create-only: a hard link fails if the name exists, so a complete file appears under
        // its name at once, or not at all.
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(&dir)?;
                Ok(PutResult::Created)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(PutResult::AlreadyExists),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, ArchiveError> {
        let path = self.path(key);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(ObjectInfo {
                sha256: Some(sha256_b64(&bytes)),
                last_modified: fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .map(to_unix),
                ..ObjectInfo::default()
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, ArchiveError> {
        let path = self.path(key);
        fs::read(&path).map_err(io_err(&path))
    }

    async fn list_versions(&self, prefix: &str) -> Result<Vec<ListedVersion>, ArchiveError> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
            let entries = match fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    walk(root, &path, out)?;
                } else if !entry.file_name().to_string_lossy().starts_with('.') {
                    let rel = path.strip_prefix(root).expect("under root");
                    out.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
            Ok(())
        }
        let mut keys = Vec::new();
        walk(&self.root, &self.root, &mut keys).map_err(io_err(&self.root))?;
        keys.retain(|k| k.starts_with(prefix));
        keys.sort();
        Ok(keys
            .into_iter()
            .map(|key| ListedVersion {
                key,
                version_id: None,
                is_latest: true,
                is_delete_marker: false,
            })
            .collect())
    }
}

// ---- the S3 store -----------------------------------------------------------------------------

/// S3 with Object Lock, through aws-sdk-s3.
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

impl S3Store {
    /// A client from the standard AWS configuration chain (environment, profile, instance
    /// role), with the config's region, profile, endpoint and addressing on top.
    pub async fn connect(cfg: &ArchiveConfig) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &cfg.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(profile) = &cfg.profile {
            loader = loader.profile_name(profile);
        }
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(cfg.request_timeout_secs))
            .build();
        let shared = loader.timeout_config(timeouts).load().await;
        let mut builder =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(cfg.force_path_style);
        if let Some(endpoint) = &cfg.endpoint_url {
            builder = builder.endpoint_url(endpoint);
        }
        S3Store {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            bucket: cfg.bucket.clone(),
            prefix: cfg.prefix.clone(),
        }
    }

    /// Map an SDK error: transport problems are `Unreachable`, answers are `Request`.
    fn error<E>(&self, key: &str, err: aws_sdk_s3::error::SdkError<E>) -> ArchiveError
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        use aws_sdk_s3::error::SdkError;
        match &err {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => ArchiveError::Unreachable {
                target: self.target(),
                detail: aws_sdk_s3::error::DisplayErrorContext(&err).to_string(),
            },
            _ => ArchiveError::Request {
                key: key.to_string(),
                status: err.raw_response().map_or(0, |r| r.status().as_u16()),
                detail: match err.as_service_error() {
                    Some(service) => format!(
                        "{}: {}",
                        service.code().unwrap_or("error"),
                        service.message().unwrap_or("")
                    ),
                    None => aws_sdk_s3::error::DisplayErrorContext(&err).to_string(),
                },
            },
        }
    }
}

fn to_unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[async_trait]
impl ArchiveStore for S3Store {
    fn target(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn is_worm(&self) -> bool {
        true
    }

    async fn check_ready(&self) -> Result<(), ArchiveError> {
        let answer = self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await;
        let not_locked = |detail: String| ArchiveError::NotLocked {
            bucket: self.bucket.clone(),
            detail,
        };
        match answer {
            Ok(out) => {
                let enabled = out
                    .object_lock_configuration()
                    .and_then(|c| c.object_lock_enabled())
                    .is_some_and(|e| *e == aws_sdk_s3::types::ObjectLockEnabled::Enabled);
                if enabled {
                    Ok(())
                } else {
                    Err(not_locked(
                        "Object Lock is not enabled on the bucket".into(),
                    ))
                }
            }
            Err(e) => match self.error(&self.bucket, e) {
                // Only S3's definite answer that the bucket has no lock configuration means
                // "cannot be the archive"; throttling, 5xx, a missing permission or a wrong
                // region are errors to fix or wait out, not a verdict on the bucket.
                ArchiveError::Request { status, detail, .. }
                    if detail.starts_with("ObjectLockConfigurationNotFoundError") =>
                {
                    Err(not_locked(format!(
                        "no Object Lock configuration ({status}: {detail}); create the bucket \
                         with Object Lock enabled"
                    )))
                }
                other => Err(other),
            },
        }
    }

    async fn put_new(
        &self,
        key: &str,
        bytes: Vec<u8>,
        sha256: &str,
        retain_until: SystemTime,
    ) -> Result<PutResult, ArchiveError> {
        let answer = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(aws_sdk_s3::primitives::ByteStream::from(bytes))
            .checksum_sha256(sha256)
            .if_none_match("*")
            .object_lock_mode(aws_sdk_s3::types::ObjectLockMode::Compliance)
            .object_lock_retain_until_date(aws_sdk_s3::primitives::DateTime::from_secs(to_unix(
                retain_until,
            )))
            .send()
            .await;
        match answer {
            Ok(_) => Ok(PutResult::Created),
            Err(e) => match self.error(key, e) {
                // 412: `If-None-Match: *` found the key. (409 is what some servers answer while
                // a concurrent upload of the same key is in progress: also "it is there".)
                ArchiveError::Request {
                    status: 412 | 409, ..
                } => Ok(PutResult::AlreadyExists),
                other => Err(other),
            },
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, ArchiveError> {
        let answer = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await;
        match answer {
            Ok(out) => Ok(Some(ObjectInfo {
                sha256: out.checksum_sha256().map(str::to_string),
                lock_mode: out.object_lock_mode().map(|m| m.as_str().to_string()),
                retain_until: out.object_lock_retain_until_date().map(|d| d.secs()),
                version_id: out.version_id().map(str::to_string),
                last_modified: out.last_modified().map(|d| d.secs()),
            })),
            Err(e) => match self.error(key, e) {
                ArchiveError::Request { status: 404, .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, ArchiveError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.error(key, e))?;
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| ArchiveError::Unreachable {
                target: self.target(),
                detail: e.to_string(),
            })?;
        Ok(body.into_bytes().to_vec())
    }

    async fn list_versions(&self, prefix: &str) -> Result<Vec<ListedVersion>, ArchiveError> {
        let mut out = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut version_marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_version_id_marker(version_marker.clone())
                .send()
                .await
                .map_err(|e| self.error(prefix, e))?;
            for v in page.versions() {
                out.push(ListedVersion {
                    key: v.key().unwrap_or_default().to_string(),
                    version_id: v.version_id().map(str::to_string),
                    is_latest: v.is_latest().unwrap_or(false),
                    is_delete_marker: false,
                });
            }
            for m in page.delete_markers() {
                out.push(ListedVersion {
                    key: m.key().unwrap_or_default().to_string(),
                    version_id: m.version_id().map(str::to_string),
                    is_latest: m.is_latest().unwrap_or(false),
                    is_delete_marker: true,
                });
            }
            if page.is_truncated() == Some(true) {
                key_marker = page.next_key_marker().map(str::to_string);
                version_marker = page.next_version_id_marker().map(str::to_string);
            } else {
                break;
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

/// Build the store a config names (`None` for `kind = "none"`).
pub async fn open_store(cfg: &ArchiveConfig) -> Option<Arc<dyn ArchiveStore>> {
    match cfg.kind {
        ArchiveKind::None => None,
        ArchiveKind::Dir => Some(Arc::new(DirStore::new(&cfg.dir))),
        ArchiveKind::S3 => Some(Arc::new(S3Store::connect(cfg).await)),
    }
}

// ---- the archiver -----------------------------------------------------------------------------

/// What is confirmed shipped, to which target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipState {
    pub target: String,
    /// Every sealed segment up to this seq is shipped and its lock confirmed.
    pub segments_through_seq: u64,
    /// Every checkpoint file up to this name is shipped and its lock confirmed.
    pub checkpoints_through: String,
}

impl ShipState {
    fn load(journal_dir: &Path, target: &str) -> Result<Self, ArchiveError> {
        let path = journal_dir.join(STATE_FILE);
        let state = match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<ShipState>(&bytes).map_err(|e| ArchiveError::Io {
                    path: path.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ShipState::default(),
            Err(e) => return Err(io_err(&path)(e)),
        };
        // A new target starts from the beginning.
        Ok(if state.target == target {
            state
        } else {
            ShipState {
                target: target.to_string(),
                ..ShipState::default()
            }
        })
    }

    fn store(&self, journal_dir: &Path) -> Result<(), ArchiveError> {
        let path = journal_dir.join(STATE_FILE);
        let tmp = journal_dir.join(format!("{STATE_FILE}.tmp"));
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(&serde_json::to_vec(self).expect("state serialises"))
            .and_then(|()| file.sync_all())
            .map_err(io_err(&tmp))?;
        // Crash point: the old state stays until the rename; the object is then shipped again
        // and found present with the same checksum.
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(journal_dir)
    }
}

/// The last seq of the sealed segments the journal directory's archive progress file says are
/// shipped and locked (0 if none or unreadable).
pub fn shipped_through_seq(journal_dir: &Path) -> u64 {
    fs::read(journal_dir.join(STATE_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<ShipState>(&b).ok())
        .map_or(0, |s| s.segments_through_seq)
}

/// The archiver's counters (read by metrics and readiness).
#[derive(Debug, Default)]
pub struct ArchiveStats {
    pub segments_shipped: AtomicU64,
    pub checkpoints_shipped: AtomicU64,
    pub bytes_shipped: AtomicU64,
    /// Objects found already stored with the same content on a retry.
    pub already_present: AtomicU64,
    pub failures: AtomicU64,
    /// Objects found under our key with other content (alarm).
    pub conflicts: AtomicU64,
    /// Sealed segments not yet confirmed shipped.
    pub backlog_segments: AtomicU64,
    /// Age in seconds of the oldest sealed segment not yet confirmed shipped (0: none).
    pub oldest_unshipped_secs: AtomicU64,
    pub shipped_through_seq: AtomicU64,
}

/// Ships a journal directory's sealed segments and checkpoints to a store.
pub struct Archiver {
    journal_dir: PathBuf,
    node: String,
    layout: Layout,
    store: Arc<dyn ArchiveStore>,
    retention: Duration,
    state: ShipState,
    stats: Arc<ArchiveStats>,
    delete_local: bool,
    compression: SegmentCompression,
    /// The store was checked ([`ArchiveStore::check_ready`]); nothing is shipped before.
    ready: bool,
    /// The first pending segment of this process was looked for under the other compression's
    /// key (see [`Archiver::ship_pending`]).
    looked_for_other_compression: bool,
}

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
        let state = ShipState::load(journal_dir, &store.target())?;
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
        })
    }

    /// How segments are compressed (default zstd).
    pub fn compression(mut self, compression: SegmentCompression) -> Self {
        self.compression = compression;
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

    pub fn stats(&self) -> Arc<ArchiveStats> {
        self.stats.clone()
    }

    pub fn state(&self) -> &ShipState {
        &self.state
    }

    /// Ship one object: create-only PUT, a retry's comparison, then the lock check.
    /// `plain` is the uncompressed content when `bytes` is a compressed segment (a retry after
    /// an upgrade may compress differently: the content is what must match).
    /// Counted in `auditgate_archive_uploads_total` by kind and result.
    async fn ship(
        &self,
        key: &str,
        bytes: Vec<u8>,
        plain: Option<&[u8]>,
    ) -> Result<(), ArchiveError> {
        let kind = if plain.is_some() {
            "segment"
        } else {
            "checkpoint"
        };
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

    /// [`Archiver::ship`]'s work; `Ok(true)` when this call created the object.
    async fn ship_once(
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

    /// Ship every sealed segment and checkpoint not shipped yet, in order; stops at the first
    /// failure (the next pass starts there). Returns how many objects were shipped.
    pub async fn ship_pending(&mut self) -> Result<usize, ArchiveError> {
        let mut shipped = 0;
        let segments = journal::list_segments(&self.journal_dir).map_err(|e| ArchiveError::Io {
            path: self.journal_dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let pending: Vec<(u64, u64, PathBuf)> = segments
            .into_iter()
            .filter_map(|(name, path)| match name {
                SegmentName::Sealed { first, last } if last > self.state.segments_through_seq => {
                    Some((first, last, path))
                }
                _ => None,
            })
            .collect();
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
                self.ship(&other_key, other.compress(&plain), Some(&plain))
                    .await?;
            } else {
                self.ship(&key, compressed, Some(&plain)).await?;
            }
            // Crash point: shipped and lock confirmed, progress not yet recorded: the next run
            // ships it again and finds it present with the same content.
            self.state.segments_through_seq = *last;
            self.state.store(&self.journal_dir)?;
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
        if self.delete_local {
            self.delete_shipped_segments()?;
        }
        let checkpoints =
            checkpoint::list_checkpoint_files(&self.journal_dir).map_err(|e| ArchiveError::Io {
                path: self.journal_dir.clone(),
                source: std::io::Error::other(e.to_string()),
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
            let note = fs::read(&path).map_err(io_err(&path))?;
            let key = self.layout.checkpoint(&self.node, &name);
            self.ship(&key, note, None).await?;
            self.state.checkpoints_through = name;
            self.state.store(&self.journal_dir)?;
            self.stats
                .checkpoints_shipped
                .fetch_add(1, Ordering::Relaxed);
            shipped += 1;
        }
        Ok(shipped)
    }

    /// Remove shipped sealed segments but the newest sealed one.
    fn delete_shipped_segments(&self) -> Result<(), ArchiveError> {
        let segments = journal::list_segments(&self.journal_dir).map_err(|e| ArchiveError::Io {
            path: self.journal_dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let sealed: Vec<(u64, PathBuf)> = segments
            .into_iter()
            .filter_map(|(name, path)| match name {
                SegmentName::Sealed { last, .. } => Some((last, path)),
                SegmentName::Open { .. } => None,
            })
            .collect();
        let Some((newest, _)) = sealed.last() else {
            return Ok(());
        };
        // A restart continues the Merkle tree from the saved state: never remove records it
        // would have to reread (the state lags when storing checkpoints fails).
        let tree_state = checkpoint::MerkleState::load(&self.journal_dir)
            .ok()
            .flatten()
            .map_or(0, |s| s.size);
        let mut removed = false;
        for (last, path) in &sealed {
            if last < newest && *last <= self.state.segments_through_seq && *last <= tree_state {
                // Crash point: the progress file already says shipped and locked; a segment
                // that survives a crash here is deleted on the next pass.
                fs::remove_file(path).map_err(io_err(path))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&self.journal_dir)?;
        }
        Ok(())
    }

    fn update_backlog(&self, pending: &[(u64, u64, PathBuf)]) {
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

/// How much lower than the gateway's own threads the compression thread runs (`nice`): shipping
/// is background work and must not take CPU from requests; it catches up when they leave some.
pub const COMPRESS_NICENESS: i32 = 10;

/// Read and compress a segment (up to its 64 MiB: blocking work) on a thread of its own, at
/// lower CPU priority, off the async workers (which also refresh JWKS keys).
async fn read_and_compress(
    path: &Path,
    compression: SegmentCompression,
) -> Result<(Vec<u8>, Vec<u8>), ArchiveError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let read_path = path.to_path_buf();
    std::thread::Builder::new()
        .name("archive-compress".into())
        .spawn(move || {
            lower_this_threads_priority(COMPRESS_NICENESS);
            let result = fs::read(&read_path).map(|plain| {
                let compressed = compression.compress(&plain);
                (plain, compressed)
            });
            let _ = tx.send(result);
        })
        .map_err(io_err(path))?;
    rx.await
        .map_err(|_| io_err(path)(std::io::Error::other("the compression thread died")))?
        .map_err(io_err(path))
}

/// Raise the calling thread's nice value by `by` (Linux: nice is per thread). Best effort.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // setpriority has no safe wrapper in std; it only changes this thread's priority.
fn lower_this_threads_priority(by: i32) {
    // SAFETY: plain syscalls with integer arguments; `gettid` cannot fail and `setpriority` on
    // the calling thread only affects its scheduling.
    unsafe {
        let tid = libc::gettid();
        let current = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, current + by);
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_this_threads_priority(_by: i32) {}

/// `YYYY-MM-DD` of a segment's first record (its `ts`).
fn first_record_date(segment: &[u8]) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_hive_layout() {
        let l = Layout::new("audit");
        assert_eq!(
            l.segment("gw-1", "2026-11-26", 1, 4096, SegmentCompression::Zstd),
            "audit/v1/node=gw-1/dt=2026-11-26/seg-00000000000000000001-00000000000000004096.jsonl.zst"
        );
        assert_eq!(
            l.segment("gw-1", "2026-11-26", 1, 4096, SegmentCompression::Gzip),
            "audit/v1/node=gw-1/dt=2026-11-26/seg-00000000000000000001-00000000000000004096.jsonl.gz"
        );
        assert_eq!(
            l.checkpoint("gw-1", "00000000000000004096-20261126T074126039074Z.note"),
            "audit/v1/node=gw-1/checkpoints/00000000000000004096-20261126T074126039074Z.note"
        );
        assert_eq!(Layout::new("").node("n"), "v1/node=n/");
    }

    #[test]
    fn compression_is_deterministic_and_reversible() {
        let text = b"{\"seq\":1}\n{\"seq\":2}\n".repeat(100);
        for c in [SegmentCompression::Zstd, SegmentCompression::Gzip] {
            assert_eq!(c.compress(&text), c.compress(&text));
            assert!(c.compress(&text).len() < text.len() / 10, "{c:?}");
            assert_eq!(c.decompress(&c.compress(&text)).unwrap(), text);
            assert!(
                c.other().decompress(&c.compress(&text)).is_err(),
                "{c:?} bytes are not the other format"
            );
            let file = format!("seg-1-2.jsonl{}", c.extension());
            assert_eq!(
                SegmentCompression::of_file_name(&file),
                Some((c, "seg-1-2.jsonl"))
            );
        }
        assert_eq!(SegmentCompression::of_file_name("seg-1-2.jsonl"), None);
    }

    #[test]
    fn a_segment_that_decompresses_past_the_limit_is_refused() {
        // A "zip bomb": 4 MiB of one byte, a few KiB compressed, against a 1 MiB limit (the
        // real limit is MAX_SEGMENT_BYTES, 1 GiB; the same code path).
        let bomb = vec![b'x'; 4 << 20];
        for c in [SegmentCompression::Zstd, SegmentCompression::Gzip] {
            let compressed = c.compress(&bomb);
            assert!(compressed.len() < 64 << 10, "{c:?}");
            let err = c.decompress_at_most(&compressed, 1 << 20).unwrap_err();
            assert!(
                err.to_string().contains("largest a segment"),
                "{c:?}: {err}"
            );
            assert_eq!(c.decompress_at_most(&compressed, 4 << 20).unwrap(), bomb);
        }
    }

    #[test]
    fn retention_below_six_years_needs_the_test_switch() {
        let mut cfg = ArchiveConfig {
            retention_days: 1,
            ..ArchiveConfig::default()
        };
        assert!(cfg.validate().is_err());
        cfg.allow_short_retention = true;
        cfg.validate().unwrap();
        cfg.delete_local_after_ship = true;
        assert!(
            cfg.validate().is_err(),
            "deleting local segments needs a WORM archive"
        );
        cfg.kind = ArchiveKind::S3;
        assert!(cfg.validate().is_err(), "s3 needs a bucket");
        cfg.bucket = "b".into();
        cfg.validate().unwrap();
    }

    #[test]
    fn the_date_partition_comes_from_the_first_record() {
        assert_eq!(
            first_record_date(b"{\"v\":1,\"ts\":\"2026-11-26T07:41:26.039074Z\"}\n{}").as_deref(),
            Some("2026-11-26")
        );
        assert_eq!(first_record_date(b"garbage"), None);
    }
}
