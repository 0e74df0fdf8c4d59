//! `[attribution]`: the bounds of the buffered path (bodies and responses read for patients).

use serde::{Deserialize, Serialize};

use crate::config::error::ConfigError;

/// Default `attribution.max_body_bytes`: 16 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 16 << 20;
/// Largest `attribution.max_body_bytes` accepted: 1 GiB (each buffered request holds this much).
pub const MAX_BODY_BYTES_LIMIT: u64 = 1 << 30;
/// Default `attribution.max_buffered_requests`: buffered exchanges at once.
pub const DEFAULT_MAX_BUFFERED_REQUESTS: usize = 64;
/// Default `attribution.buffered_wait_secs`: how long a request waits for a buffered slot.
pub const DEFAULT_BUFFERED_WAIT_SECS: u64 = 10;
/// Default `attribution.client_timeout_secs`.
pub const DEFAULT_CLIENT_TIMEOUT_SECS: u64 = 60;
/// Default `attribution.exchange_timeout_secs`.
pub const DEFAULT_EXCHANGE_TIMEOUT_SECS: u64 = 300;
/// Default `attribution.min_transfer_bytes_per_sec`.
pub const DEFAULT_MIN_TRANSFER_BYTES_PER_SEC: u64 = 4096;
/// Default `attribution.max_buffered_bytes`: 192 MiB, which with extraction's working set
/// (up to 3x what it reads) stays under the shipped Kubernetes limit of 1 GiB.
pub const DEFAULT_MAX_BUFFERED_BYTES: u64 = 192 << 20;

/// The `[attribution]` section: bounds of the buffered path.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttributionConfig {
    /// Largest request or response body read for patients, in bytes (after gzip/deflate
    /// decoding, for responses). Default 16 MiB, at most 1 GiB.
    pub max_body_bytes: u64,
    /// A larger body: `forward` it with attribution `partial` (gap `too_large`; the default)
    /// or `refuse` it (413 for a request, 502 for a response; journaled).
    pub oversize: OversizePolicy,
    /// Buffered exchanges in progress at once (default 64, 1 to 65,536). Each holds up to
    /// `max_body_bytes` of request and of response, and extraction takes up to about 3x the
    /// body it reads; this bounds the sum. Needs a restart to change.
    pub max_buffered_requests: usize,
    /// How long a request waits for one of those slots before it is refused with 503
    /// `gateway_busy` (journaled, never forwarded). Default 10 s, 0 to 300. Needs a restart.
    pub buffered_wait_secs: u64,
    /// On the buffered path, each read of the client's request body and each write of the
    /// answer to it must progress within this many seconds, so a stalled client does not hold
    /// a slot. Default 60, 1 to 3,600.
    pub client_timeout_secs: u64,
    /// The most one buffered exchange may take, from its slot to the last byte of the answer
    /// (client body, EHR, answer). Default 300, 1 to 86,400.
    pub exchange_timeout_secs: u64,
    /// After `client_timeout_secs`, the client's body and the answer to it must move at least
    /// this fast on average (bytes a second), so a client that drips one byte at a time does not
    /// hold a slot for long. Default 4096; 0 turns it off.
    pub min_transfer_bytes_per_sec: u64,
    /// Bytes all buffered exchanges may hold together (request bodies and responses read for
    /// patients); a request that would go over waits for others to finish (at most
    /// `buffered_wait_secs`), then gets 503 `gateway_busy`, journaled. Peak memory of the
    /// buffered path is about 4x this (the buffers, plus extraction's working set of up to 3x
    /// what it reads): the default 192 MiB fits the shipped 1 GiB Kubernetes limit. At least
    /// `max_body_bytes`. Needs a restart to change.
    pub max_buffered_bytes: u64,
    /// Before forwarding a delete or a patch (or an update whose body names no patient) of a
    /// resource whose patient the request line does not name, read its current version from
    /// the EHR (a GET of the same target, with the caller's own `Authorization`) and name its
    /// patient in the intent record. Off: such an intent says `partial`. Default true.
    pub pre_image_reads: bool,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        AttributionConfig {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            oversize: OversizePolicy::Forward,
            max_buffered_requests: DEFAULT_MAX_BUFFERED_REQUESTS,
            buffered_wait_secs: DEFAULT_BUFFERED_WAIT_SECS,
            client_timeout_secs: DEFAULT_CLIENT_TIMEOUT_SECS,
            exchange_timeout_secs: DEFAULT_EXCHANGE_TIMEOUT_SECS,
            min_transfer_bytes_per_sec: DEFAULT_MIN_TRANSFER_BYTES_PER_SEC,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            pre_image_reads: true,
        }
    }
}

impl AttributionConfig {
    /// Check the values are usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_BODY_BYTES_LIMIT {
            return Err(ConfigError::invalid(
                "attribution.max_body_bytes",
                format!(
                    "must be between 1 and {MAX_BODY_BYTES_LIMIT}, got {}",
                    self.max_body_bytes
                ),
            ));
        }
        if !(1..=65_536).contains(&self.max_buffered_requests) {
            return Err(ConfigError::invalid(
                "attribution.max_buffered_requests",
                format!(
                    "must be between 1 and 65536, got {}",
                    self.max_buffered_requests
                ),
            ));
        }
        if self.buffered_wait_secs > 300 {
            return Err(ConfigError::invalid(
                "attribution.buffered_wait_secs",
                format!("must be at most 300, got {}", self.buffered_wait_secs),
            ));
        }
        if !(1..=3600).contains(&self.client_timeout_secs) {
            return Err(ConfigError::invalid(
                "attribution.client_timeout_secs",
                format!(
                    "must be between 1 and 3600, got {}",
                    self.client_timeout_secs
                ),
            ));
        }
        if !(1..=86_400).contains(&self.exchange_timeout_secs) {
            return Err(ConfigError::invalid(
                "attribution.exchange_timeout_secs",
                format!(
                    "must be between 1 and 86400, got {}",
                    self.exchange_timeout_secs
                ),
            ));
        }
        if self.max_buffered_bytes < self.max_body_bytes {
            return Err(ConfigError::invalid(
                "attribution.max_buffered_bytes",
                format!(
                    "must be at least max_body_bytes ({}), got {}",
                    self.max_body_bytes, self.max_buffered_bytes
                ),
            ));
        }
        if self.max_buffered_bytes > (1u64 << 40) {
            return Err(ConfigError::invalid(
                "attribution.max_buffered_bytes",
                "must be at most 1 TiB",
            ));
        }
        Ok(())
    }

    /// The limit as a buffer size.
    pub fn limit(&self) -> usize {
        usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX)
    }

    /// `client_timeout_secs` as a duration.
    pub fn client_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.client_timeout_secs)
    }
}

/// What to do with a body larger than `attribution.max_body_bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OversizePolicy {
    /// Forward it; the record says `partial` (`too_large`).
    #[default]
    Forward,
    /// Refuse it: 413 (request body) or 502 (response body).
    Refuse,
}
