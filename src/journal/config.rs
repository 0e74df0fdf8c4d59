//! `[journal]`: where and how records are made durable (directory, segment size and age,
//! batch and queue bounds, the commit delay under load, preallocation).

use crate::config::error::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[journal]`: where and how records are made durable.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// The journal directory of this node (created if missing). Relative paths resolve against
    /// the config file's directory.
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// Seal the open segment when it reaches this size.
    #[serde(default = "default_segment_max_bytes")]
    pub segment_max_bytes: u64,
    /// Seal the open segment when its first record is this old (and it holds any record).
    #[serde(default = "default_segment_max_age_secs")]
    pub segment_max_age_secs: u64,
    /// At most this many records are committed by one fdatasync.
    #[serde(default = "default_batch_max_records")]
    pub batch_max_records: usize,
    /// At most this many records may wait for the writer; more are refused (503) at once.
    #[serde(default = "default_queue_max_records")]
    pub queue_max_records: usize,
    /// Zero-fill each open segment to `segment_max_bytes` before writing into it, so that an
    /// fdatasync flushes data only, not the file size (measured here: about 40% more syncs per
    /// second and 20% less CPU per sync). The next segment is prepared in the background. If
    /// the disk has no room for it, the journal simply grows the file instead.
    #[serde(default = "default_preallocate")]
    pub preallocate: bool,
    /// Under load, wait this long (microseconds) after the first record of a batch before
    /// committing it, so more records share its fdatasync; 0 (the default): never wait.
    /// Applies only while the previous batch held at least `commit_delay_min_batch` records
    /// (many requests in flight): a lone request is never delayed. Measured on this project's
    /// VM: with CPU the bottleneck, 200 µs cut the writer's CPU per request by a quarter; with
    /// the disk the bottleneck, it cut the records per second by a third (a sleep added to
    /// every flush cycle), hence off by default.
    #[serde(default = "default_commit_delay_us")]
    pub commit_delay_us: u64,
    /// The previous batch's size from which the commit delay applies.
    #[serde(default = "default_commit_delay_min_batch")]
    pub commit_delay_min_batch: usize,
}

pub(super) fn default_dir() -> PathBuf {
    PathBuf::from("journal")
}
pub(super) fn default_segment_max_bytes() -> u64 {
    64 * 1024 * 1024
}
pub(super) fn default_segment_max_age_secs() -> u64 {
    3600
}
pub(super) fn default_batch_max_records() -> usize {
    4096
}
pub(super) fn default_queue_max_records() -> usize {
    65_536
}
pub(super) fn default_preallocate() -> bool {
    true
}
pub(super) fn default_commit_delay_us() -> u64 {
    0
}
pub(super) fn default_commit_delay_min_batch() -> usize {
    4
}

/// The longest commit delay `journal.commit_delay_us` accepts: 10 ms.
pub const MAX_COMMIT_DELAY_US: u64 = 10_000;

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            dir: default_dir(),
            segment_max_bytes: default_segment_max_bytes(),
            segment_max_age_secs: default_segment_max_age_secs(),
            batch_max_records: default_batch_max_records(),
            queue_max_records: default_queue_max_records(),
            preallocate: default_preallocate(),
            commit_delay_us: default_commit_delay_us(),
            commit_delay_min_batch: default_commit_delay_min_batch(),
        }
    }
}

/// No segment is larger than this (`journal.segment_max_bytes` is capped at it), so no archived
/// segment may decompress to more.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;

impl JournalConfig {
    /// Whether the batch after one of `last_batch` records waits
    /// [`JournalConfig::commit_delay_us`] for more records before its fdatasync.
    pub fn delays_commit_after(&self, last_batch: usize) -> bool {
        self.commit_delay_us > 0 && last_batch >= self.commit_delay_min_batch
    }

    /// Check the values are usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.segment_max_bytes < 4096 {
            return Err(ConfigError::invalid(
                "journal.segment_max_bytes",
                format!("{} is below the minimum of 4096", self.segment_max_bytes),
            ));
        }
        if self.segment_max_bytes > MAX_SEGMENT_BYTES {
            return Err(ConfigError::invalid(
                "journal.segment_max_bytes",
                format!(
                    "{} is above the maximum of {} (1 GiB)",
                    self.segment_max_bytes, MAX_SEGMENT_BYTES
                ),
            ));
        }
        if self.segment_max_age_secs == 0 {
            return Err(ConfigError::invalid(
                "journal.segment_max_age_secs",
                "must be at least 1",
            ));
        }
        if self.batch_max_records == 0 {
            return Err(ConfigError::invalid(
                "journal.batch_max_records",
                "must be at least 1",
            ));
        }
        if self.commit_delay_us > MAX_COMMIT_DELAY_US {
            return Err(ConfigError::invalid(
                "journal.commit_delay_us",
                format!(
                    "{} is above the maximum of {MAX_COMMIT_DELAY_US} (10 ms)",
                    self.commit_delay_us
                ),
            ));
        }
        if self.commit_delay_min_batch < 2 {
            return Err(ConfigError::invalid(
                "journal.commit_delay_min_batch",
                "must be at least 2 (a lone request is never delayed)",
            ));
        }
        if self.queue_max_records == 0 {
            return Err(ConfigError::invalid(
                "journal.queue_max_records",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
