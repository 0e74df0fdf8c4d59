//! The configuration file: one TOML document, parsed once into typed structs.
//!
//! Every section is a serde struct with `deny_unknown_fields`, so a misspelt key is an error
//! that names the key. Each section owned by a module is defined in that module (for example
//! [`crate::identity::IdentityConfig`]) and validated by its own `validate()`; [`Config::load`]
//! parses, validates every section, and resolves relative paths against the config file's
//! directory. Option names carry their units (`_ms`, `_secs`, `_bytes`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod error;
pub mod records;
pub mod server;
pub mod upstream;

pub use error::ConfigError;

use crate::archive::ArchiveConfig;
use crate::clock::ClockConfig;
use crate::config::server::{
    is_safe_token, AdminConfig, AuditApiConfig, AuditorsConfig, ConsoleConfig, ServerConfig,
};
use crate::config::upstream::UpstreamConfig;
use crate::identity::IdentityConfig;
use crate::journal::JournalConfig;
use crate::network::geoip::GeoIpConfig;
use crate::network::tls::TlsConfig;
use crate::network::vector::NetworkConfig;
use crate::rules::RulesConfig;
use crate::tlog::checkpoint::CheckpointConfig;

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The gateway process: node name, listeners, threads, shutdown.
    #[serde(default)]
    pub server: ServerConfig,
    /// The EHR the gateway forwards to.
    pub upstream: UpstreamConfig,
    /// The local journal.
    #[serde(default)]
    pub journal: JournalConfig,
    /// Signed checkpoints of the journal's Merkle tree.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// The WORM archive sealed segments and checkpoints are shipped to.
    #[serde(default)]
    pub archive: ArchiveConfig,
    /// The Parquet copy of each sealed segment.
    #[serde(default)]
    pub columnar: crate::columnar::ColumnarConfig,
    /// JWT verification.
    pub identity: IdentityConfig,
    /// Route rules.
    #[serde(default)]
    pub rules: RulesConfig,
    /// Bounds of the buffered path (request bodies and responses read for patients).
    #[serde(default)]
    pub attribution: crate::attribution::config::AttributionConfig,
    /// Trusted proxies, device and request IDs.
    #[serde(default)]
    pub network: NetworkConfig,
    /// The gateway's own operational log (never contains PHI).
    #[serde(default)]
    pub log: LogConfig,
    /// The admin listener: `/metrics`, `/healthz`, `/readyz`.
    #[serde(default)]
    pub admin: AdminConfig,
    /// GeoIP and ASN databases for the client IP.
    #[serde(default)]
    pub geoip: GeoIpConfig,
    /// What to do when the clock cannot be trusted.
    #[serde(default)]
    pub clock: ClockConfig,
    /// TLS listeners (and mutual TLS).
    #[serde(default)]
    pub tls: TlsConfig,
    /// How much one request may write into the journal; the flood summary.
    #[serde(default)]
    pub records: records::RecordsConfig,
    /// What the auditor's reports need to know: the client application registry, TPO
    /// purposes.
    #[serde(default)]
    pub reports: crate::report::config::ReportsConfig,
    /// Who may read the audit trail through the gateway (the audit API, the console).
    #[serde(default)]
    pub auditors: AuditorsConfig,
    /// The audit listener: the trail as FHIR `AuditEvent`s (IHE ITI-81), for auditors.
    #[serde(default)]
    pub audit_api: AuditApiConfig,
    /// The audit console: web pages for auditors.
    #[serde(default)]
    pub console: ConsoleConfig,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (for log shippers).
    Json,
    /// Human-readable lines.
    Text,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `json` or `text`.
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
    /// Level filter in `RUST_LOG` syntax; the `RUST_LOG` environment variable overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
}

fn default_log_format() -> LogFormat {
    LogFormat::Json
}
fn default_log_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}

impl Config {
    /// Read, parse and validate a config file; relative paths are resolved against its
    /// directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(&text, path)?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config.resolve_paths(&base);
        Ok(config)
    }

    /// Parse and validate TOML text (`origin` names it in errors).
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Check every section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !is_safe_token(&self.server.node) {
            return Err(ConfigError::invalid(
                "server.node",
                "must be 1 to 64 letters, digits, '-', '_' or '.'",
            ));
        }
        if self.server.listen.is_empty() {
            return Err(ConfigError::invalid(
                "server.listen",
                "needs at least one address",
            ));
        }
        for addr in &self.server.listen {
            addr.parse::<std::net::SocketAddr>().map_err(|_| {
                ConfigError::invalid(
                    "server.listen",
                    format!("`{addr}` is not an IP:port address"),
                )
            })?;
        }
        if self.server.threads == 0 {
            return Err(ConfigError::invalid("server.threads", "must be at least 1"));
        }
        self.upstream.validate()?;
        self.journal.validate()?;
        self.checkpoint.validate()?;
        self.archive.validate()?;
        self.columnar.validate()?;
        self.identity.validate()?;
        self.rules.validate()?;
        self.attribution.validate()?;
        self.network.validate()?;
        self.admin.validate()?;
        self.geoip.validate()?;
        self.clock.validate()?;
        self.tls.validate()?;
        self.records.validate()?;
        self.reports.validate()?;
        self.auditors.validate()?;
        self.audit_api.validate()?;
        self.console.validate()?;
        if let Some(oidc) = &self.console.oidc {
            if !self
                .identity
                .issuers
                .iter()
                .any(|i| i.issuer == oidc.issuer)
            {
                return Err(ConfigError::invalid(
                    "console.oidc.issuer",
                    "must be one of the [identity] issuers (the console verifies its tokens as the proxy does)",
                ));
            }
        }
        if self.console.enabled {
            let taken = self.server.listen.contains(&self.console.listen)
                || self.tls.listen.contains(&self.console.listen)
                || (self.admin.enabled && self.admin.listen == self.console.listen)
                || (self.audit_api.enabled && self.audit_api.listen == self.console.listen);
            if taken {
                return Err(ConfigError::invalid(
                    "console.listen",
                    "must differ from every server, tls, admin and audit_api listener",
                ));
            }
            if self.console.tls && (self.tls.cert_file.is_none() || self.tls.key_file.is_none()) {
                return Err(ConfigError::invalid(
                    "console.tls",
                    "a TLS console needs tls.cert_file and tls.key_file",
                ));
            }
        }
        if self.audit_api.enabled {
            let taken = self.server.listen.contains(&self.audit_api.listen)
                || self.tls.listen.contains(&self.audit_api.listen)
                || (self.admin.enabled && self.admin.listen == self.audit_api.listen);
            if taken {
                return Err(ConfigError::invalid(
                    "audit_api.listen",
                    "must differ from every server, tls and admin listener",
                ));
            }
            if self.audit_api.tls && (self.tls.cert_file.is_none() || self.tls.key_file.is_none()) {
                return Err(ConfigError::invalid(
                    "audit_api.tls",
                    "a TLS audit listener needs tls.cert_file and tls.key_file",
                ));
            }
        }
        for addr in &self.tls.listen {
            if self.server.listen.contains(addr)
                || (self.admin.enabled && self.admin.listen == *addr)
            {
                return Err(ConfigError::invalid(
                    "tls.listen",
                    format!("`{addr}` is also a plain or admin listener"),
                ));
            }
        }
        if self.admin.enabled && self.server.listen.contains(&self.admin.listen) {
            return Err(ConfigError::invalid(
                "admin.listen",
                "must differ from every server.listen address",
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| ConfigError::invalid("log.level", e.to_string()))?;
        Ok(())
    }

    /// Make relative paths absolute against `base` (the config file's directory).
    fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        // Rule files and key files are resolved by their own loaders (against the same base), so
        // that `rules.base_paths` keys stay exactly as written.
        abs(&mut self.journal.dir);
        let key_file = self.checkpoint.key_file.to_string_lossy();
        if key_file.contains("{node}") {
            self.checkpoint.key_file = PathBuf::from(key_file.replace("{node}", &self.server.node));
        }
        abs(&mut self.checkpoint.key_file);
        abs(&mut self.archive.dir);
        if let Some(ca) = &mut self.upstream.ca_file {
            abs(ca);
        }
        self.tls.resolve_paths(base);
        for key in &mut self.auditors.node_keys {
            abs(key);
        }
    }

    /// The directory relative paths in the file were resolved against.
    pub fn base_dir(path: &Path) -> PathBuf {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkpoint_key_file_can_name_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auditgate.toml");
        std::fs::write(
            &path,
            r#"
[server]
node = "auditgate-1"
[upstream]
url = "http://127.0.0.1:8000"
[checkpoint]
key_file = "keys/checkpoint-{node}.key"
[identity]
[[identity.issuers]]
issuer = "https://idp.test"
audiences = ["a"]
algorithms = ["HS256"]
hmac_secrets = [{ env_var = "X" }]
"#,
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(
            config.checkpoint.key_file,
            dir.path().join("keys/checkpoint-auditgate-1.key")
        );
    }
}
