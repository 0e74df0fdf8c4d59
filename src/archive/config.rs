//! `[archive]`: where sealed segments and checkpoints go, and how long they are locked.

use super::compression::SegmentCompression;
use crate::config::error::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Six years, in days (with the two leap days a six-year span can hold): HIPAA's minimum.
pub const SIX_YEARS_DAYS: u64 = 2192;

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

pub(super) fn default_kind() -> ArchiveKind {
    ArchiveKind::None
}
pub(super) fn default_dir() -> PathBuf {
    PathBuf::from("archive")
}
pub(super) fn default_prefix() -> String {
    "auditgate".into()
}
pub(super) fn default_retention_days() -> u64 {
    SIX_YEARS_DAYS
}
pub(super) fn default_poll_interval_secs() -> u64 {
    5
}
pub(super) fn default_retry_max_secs() -> u64 {
    300
}
pub(super) fn default_request_timeout_secs() -> u64 {
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
