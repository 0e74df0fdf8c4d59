//! The gateway's own operational log: stderr, text or JSON, never PHI.
//!
//! Pingora's crates are held at `info` whatever level is asked for: at debug and trace they log
//! request and response headers (tokens included) and raw bytes.

use crate::config::{LogConfig, LogFormat};

/// Set up the operational log (stderr). `RUST_LOG` overrides the configured level.
pub fn init_logging(log: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    // Pingora logs request and response headers (tokens included) and raw bytes at debug and
    // trace level: whatever level is asked for, its crates stay at info.
    let filter = [
        "pingora=info",
        "pingora_core=info",
        "pingora_proxy=info",
        "pingora_http=info",
    ]
    .iter()
    .filter_map(|d| d.parse().ok())
    .fold(filter, |f, d| f.add_directive(d));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // A second initialisation (tests, demo) keeps the first subscriber.
    let _ = result;
}
