//! `[records]`: how much one request may write into the journal, and how fast requests nobody
//! authenticated may add records.
//!
//! Everything a record copies from the request (path, query, forwarded hops, header values) is
//! cut to a bound, and the record says what was cut and how long it was. Requests without a
//! valid token (refused with 401 or 403) from one client IP beyond a rate, or from all clients
//! beyond a total rate, are still answered, but are counted into one summary record per client
//! IP per interval instead of a record each, so a flood cannot fill the journal's disk. An
//! authenticated request always gets its own records. The mechanism is
//! [`crate::proxy`]'s (`bounds`).

use serde::{Deserialize, Serialize};

use super::error::ConfigError;

/// `[records]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordsConfig {
    /// Longest request path a record keeps, in bytes (default 2048; paths over 8 KiB are
    /// refused anyway).
    pub max_path_bytes: usize,
    /// Longest query string a record keeps, in bytes (default 4096).
    pub max_query_bytes: usize,
    /// Longest value a record keeps of a header it copies (user agent, each forwarded hop), in
    /// bytes (default 256).
    pub max_header_bytes: usize,
    /// Most forwarded hops (`X-Forwarded-For` / `Forwarded` entries) a record keeps: the ones
    /// nearest the gateway (default 16).
    pub max_forwarded_hops: usize,
    /// Requests without a valid token from one client IP that get a record each, per second
    /// (a token bucket; default 2). Beyond it they are summarised.
    pub unauthenticated_per_ip_per_sec: u32,
    /// The bucket's size: a burst from one client IP that still gets a record each (default 20).
    pub unauthenticated_burst: u32,
    /// Requests without a valid token, from all clients together, that get a record each, per
    /// second (default 50; its burst is twice that).
    pub unauthenticated_total_per_sec: u32,
    /// Summaries are written this often: one record per client IP that had requests
    /// summarised in the interval (count, first and last time, reasons). Default 60.
    pub summary_interval_secs: u64,
    /// Client IPs with a summary in progress, at most; requests from further IPs go into one
    /// summary for all of them (client IP `*`). Default 10,000.
    pub max_summarised_clients: usize,
}

impl Default for RecordsConfig {
    fn default() -> Self {
        RecordsConfig {
            max_path_bytes: 2048,
            max_query_bytes: 4096,
            max_header_bytes: 256,
            max_forwarded_hops: 16,
            unauthenticated_per_ip_per_sec: 2,
            unauthenticated_burst: 20,
            unauthenticated_total_per_sec: 50,
            summary_interval_secs: 60,
            max_summarised_clients: 10_000,
        }
    }
}

impl RecordsConfig {
    /// Check the bounds are usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let between = |key: &str, value: u64, low: u64, high: u64| {
            if (low..=high).contains(&value) {
                Ok(())
            } else {
                Err(ConfigError::invalid(
                    format!("records.{key}"),
                    format!("must be between {low} and {high}, got {value}"),
                ))
            }
        };
        between("max_path_bytes", self.max_path_bytes as u64, 64, 65_536)?;
        between("max_query_bytes", self.max_query_bytes as u64, 64, 1 << 20)?;
        between("max_header_bytes", self.max_header_bytes as u64, 16, 8192)?;
        between("max_forwarded_hops", self.max_forwarded_hops as u64, 1, 256)?;
        between(
            "unauthenticated_per_ip_per_sec",
            self.unauthenticated_per_ip_per_sec.into(),
            1,
            100_000,
        )?;
        between(
            "unauthenticated_burst",
            self.unauthenticated_burst.into(),
            1,
            1_000_000,
        )?;
        between(
            "unauthenticated_total_per_sec",
            self.unauthenticated_total_per_sec.into(),
            1,
            1_000_000,
        )?;
        between("summary_interval_secs", self.summary_interval_secs, 1, 3600)?;
        between(
            "max_summarised_clients",
            self.max_summarised_clients as u64,
            1,
            1_000_000,
        )?;
        Ok(())
    }
}
