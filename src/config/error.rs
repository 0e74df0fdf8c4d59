//! Why a configuration could not be used: the one error type every section's `validate()`
//! returns.
//!
//! A leaf: it imports nothing of the crate, so every stage can name it without pointing back up
//! at the [`crate::config`] root that assembles the sections.

use std::path::PathBuf;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key or wrong type; the message names the key and line.
    #[error("config file {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message (it names the key and line).
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// The key, dotted (`journal.segment_max_bytes`).
        key: String,
        /// Why the value is not acceptable.
        reason: String,
    },
}

impl ConfigError {
    /// Shorthand for [`ConfigError::Invalid`].
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}
