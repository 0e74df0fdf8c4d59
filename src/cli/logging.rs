//! The gateway's own operational log: stderr, text or JSON, never PHI.
//!
//! Pingora's crates are held at `info` whatever level is asked for: at debug and trace they log
//! request and response headers (tokens included) and raw bytes. One more layer, never printed,
//! counts the request heads pingora refuses on its own ([`crate::server::refused_heads`]).

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
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let refused_heads = crate::server::refused_heads::RefusedHeads
        .with_filter(crate::server::refused_heads::refused_heads_filter());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(refused_heads);
    let result = match log.format {
        LogFormat::Json => registry
            .with(fmt.json().flatten_event(true).with_filter(filter))
            .try_init(),
        LogFormat::Text => registry.with(fmt.with_filter(filter)).try_init(),
    };
    // A second initialisation (tests, demo) keeps the first subscriber.
    let _ = result;
}
