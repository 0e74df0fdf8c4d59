//! `[columnar]`: whether sealed segments get a Parquet copy, and how it is cut.

use serde::{Deserialize, Serialize};

use super::write::WriteOptions;
use crate::config::error::ConfigError;

/// `[columnar]`: the Parquet copy of each sealed segment (for `auditgate query` and for
/// Athena, Trino, Spark or DuckDB over the archive).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnarConfig {
    /// Write a Parquet copy and its signed seal beside each sealed segment, and ship both
    /// after it. Off: queries read the JSON segments (slower, same answers).
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Records per row group: the unit a bloom-filter lookup (patient, user, client IP,
    /// device) reads or skips. 256 to 1048576.
    #[serde(default = "default_row_group_records")]
    pub row_group_records: usize,
    /// Records per data page of the `line` column (the journal line itself): the unit a
    /// query reads to return one record. 8 to 8192.
    #[serde(default = "default_line_page_records")]
    pub line_page_records: usize,
    /// zstd level of every column, 1 to 19.
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// Copies are made at idle priority, when the CPU and disk have time: under a load that
    /// takes every core they fall behind and catch up afterwards. This long after its seal,
    /// the archiver stops waiting for a segment's copy: the copy is counted as failed and left
    /// to `auditgate backfill`, and the local segment may be removed after shipping
    /// (`archive.delete_local_after_ship`). 60 to 604800 seconds.
    #[serde(default = "default_copy_wait_secs")]
    pub copy_wait_secs: u64,
}

fn default_enabled() -> bool {
    true
}
fn default_row_group_records() -> usize {
    WriteOptions::default().row_group_records
}
fn default_line_page_records() -> usize {
    WriteOptions::default().line_page_records
}
fn default_zstd_level() -> i32 {
    WriteOptions::default().zstd_level
}
fn default_copy_wait_secs() -> u64 {
    3600
}

impl Default for ColumnarConfig {
    fn default() -> Self {
        ColumnarConfig {
            enabled: default_enabled(),
            row_group_records: default_row_group_records(),
            line_page_records: default_line_page_records(),
            zstd_level: default_zstd_level(),
            copy_wait_secs: default_copy_wait_secs(),
        }
    }
}

impl ColumnarConfig {
    /// Check the values are usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(256..=1 << 20).contains(&self.row_group_records) {
            return Err(ConfigError::invalid(
                "columnar.row_group_records",
                format!("{} is outside 256 to 1048576", self.row_group_records),
            ));
        }
        if !(8..=8192).contains(&self.line_page_records) {
            return Err(ConfigError::invalid(
                "columnar.line_page_records",
                format!("{} is outside 8 to 8192", self.line_page_records),
            ));
        }
        if !(1..=19).contains(&self.zstd_level) {
            return Err(ConfigError::invalid(
                "columnar.zstd_level",
                format!("{} is outside 1 to 19", self.zstd_level),
            ));
        }
        if !(60..=604_800).contains(&self.copy_wait_secs) {
            return Err(ConfigError::invalid(
                "columnar.copy_wait_secs",
                format!("{} is outside 60 to 604800", self.copy_wait_secs),
            ));
        }
        Ok(())
    }

    /// How long the archiver waits for a segment's copy after its seal.
    pub fn copy_wait(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.copy_wait_secs)
    }

    /// The writer options this section sets.
    pub fn write_options(&self) -> WriteOptions {
        WriteOptions {
            row_group_records: self.row_group_records,
            line_page_records: self.line_page_records,
            zstd_level: self.zstd_level,
        }
    }
}
