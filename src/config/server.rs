//! `[server]` and `[admin]`: the gateway process and its admin listener.
//!
//! Plain serde sections with their defaults and checks; the cross-section checks live in
//! [`crate::config::Config::validate`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::ConfigError;

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// This gateway's name in every record (`node`) and in archive keys. Letters, digits, `-`,
    /// `_`, `.`; default: the host name.
    #[serde(default = "default_node")]
    pub node: String,
    /// Addresses the proxy listens on (plain HTTP/1.1 and h2c).
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Worker threads of the proxy service.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// After SIGTERM, keep serving this long with `/readyz` answering 503, so a load balancer
    /// stops sending new requests before the listeners close (Kubernetes: a few seconds).
    #[serde(default = "default_shutdown_delay_secs")]
    pub shutdown_delay_secs: u64,
    /// Once the listeners are closed (SIGTERM after the delay, or SIGQUIT handing them to a new
    /// process), wait at most this long for in-flight requests to finish; the process exits as
    /// soon as none is left. Keep it above `upstream.read_timeout_ms`: a request still running
    /// when it ends is cut off (a change keeps its intent record, but gets no outcome record).
    #[serde(default = "default_drain_timeout_secs")]
    pub drain_timeout_secs: u64,
    /// Where pingora writes its PID (used by zero-downtime upgrades).
    #[serde(default = "default_pid_file")]
    pub pid_file: PathBuf,
    /// Unix socket for handing listeners to a new binary on upgrade.
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: PathBuf,
}

fn default_node() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if is_safe_token(&host) {
        host
    } else {
        "auditgate".into()
    }
}
fn default_listen() -> Vec<String> {
    vec!["127.0.0.1:8080".into()]
}
fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}
fn default_shutdown_delay_secs() -> u64 {
    0
}
fn default_drain_timeout_secs() -> u64 {
    // Longer than the default upstream read timeout (60 s), so a request still waiting for the
    // EHR at shutdown ends (and gets its outcome record) before the process does.
    65
}
fn default_pid_file() -> PathBuf {
    PathBuf::from("/tmp/auditgate.pid")
}
fn default_upgrade_sock() -> PathBuf {
    PathBuf::from("/tmp/auditgate_upgrade.sock")
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            node: default_node(),
            listen: default_listen(),
            threads: default_threads(),
            shutdown_delay_secs: default_shutdown_delay_secs(),
            drain_timeout_secs: default_drain_timeout_secs(),
            pid_file: default_pid_file(),
            upgrade_sock: default_upgrade_sock(),
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve the admin endpoints at all.
    #[serde(default = "default_admin_enabled")]
    pub enabled: bool,
    /// `IP:port` of the admin listener. Keep it on loopback or a management network: it is
    /// not authenticated.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// `/readyz` fails once the archive has been failing for longer than this (an S3 outage
    /// shorter than this does not take the gateway out of service: the local journal holds
    /// the records until the archive is back).
    #[serde(default = "default_archive_unreachable_grace_secs")]
    pub archive_unreachable_grace_secs: u64,
}

fn default_admin_enabled() -> bool {
    true
}
fn default_admin_listen() -> String {
    "127.0.0.1:9464".into()
}
fn default_archive_unreachable_grace_secs() -> u64 {
    300
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: default_admin_enabled(),
            listen: default_admin_listen(),
            archive_unreachable_grace_secs: default_archive_unreachable_grace_secs(),
        }
    }
}

impl AdminConfig {
    /// Check the values are usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled {
            self.listen.parse::<std::net::SocketAddr>().map_err(|_| {
                ConfigError::invalid(
                    "admin.listen",
                    format!("`{}` is not an IP:port address", self.listen),
                )
            })?;
        }
        Ok(())
    }
}

/// A node name or similar identifier: 1 to 64 of letters, digits, `-`, `_`, `.`.
pub fn is_safe_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// `[auditors]`: who may read the audit trail through the gateway's listeners (the audit API,
/// and the console). A token the proxy's issuers verify, with any of these roles or any of
/// these scopes; everyone else is refused (403), and the refusal is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditorsConfig {
    /// Roles (the `identity.claims.roles` claim) that make a user an auditor.
    #[serde(default = "default_auditor_grants")]
    pub roles: Vec<String>,
    /// Scopes (the `identity.claims.scope` claim) that make a token an auditor's.
    #[serde(default = "default_auditor_grants")]
    pub scopes: Vec<String>,
    /// The checkpoint public keys (`.pub` files) of the other gateway nodes that share this
    /// node's archive: the audit API and the console answer for their archived trails too,
    /// each verified with its key. Default: none (this node's trail only).
    #[serde(default)]
    pub node_keys: Vec<std::path::PathBuf>,
}

fn default_auditor_grants() -> Vec<String> {
    vec!["audit.read".into()]
}

impl Default for AuditorsConfig {
    fn default() -> Self {
        AuditorsConfig {
            roles: default_auditor_grants(),
            scopes: default_auditor_grants(),
            node_keys: Vec::new(),
        }
    }
}

impl AuditorsConfig {
    /// Check the values are usable: someone must be able to be an auditor, and no grant is
    /// empty (an empty role would match a token without roles).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.roles.is_empty() && self.scopes.is_empty() {
            return Err(ConfigError::invalid(
                "auditors",
                "name at least one role or scope that makes a user an auditor",
            ));
        }
        for (key, grants) in [
            ("auditors.roles", &self.roles),
            ("auditors.scopes", &self.scopes),
        ] {
            if grants.iter().any(|g| g.trim().is_empty()) {
                return Err(ConfigError::invalid(key, "a grant cannot be empty"));
            }
        }
        Ok(())
    }

    /// Whether a token with these roles and scopes belongs to an auditor.
    pub fn admits(&self, roles: &[String], scopes: &[String]) -> bool {
        roles.iter().any(|r| self.roles.contains(r))
            || scopes.iter().any(|s| self.scopes.contains(s))
    }
}

/// `[audit_api]`: the audit listener, serving the trail as FHIR `AuditEvent`s (IHE ITI-81
/// `GET /AuditEvent?...`) to auditors ([`AuditorsConfig`]). Every request to it is recorded in
/// the journal, in the same chain as the proxy's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditApiConfig {
    /// Serve the audit API at all (off by default).
    #[serde(default)]
    pub enabled: bool,
    /// `IP:port` of the audit listener. Its answers name patients: keep it on loopback or a
    /// management network, or set `tls`.
    #[serde(default = "default_audit_api_listen")]
    pub listen: String,
    /// Serve it with TLS, with the `[tls]` certificate (and client certificates, when
    /// `tls.client_ca_file` asks for them).
    #[serde(default)]
    pub tls: bool,
    /// Events per page when the search does not say (`_count`).
    #[serde(default = "default_audit_api_page_size")]
    pub page_size: usize,
    /// The most events one page may hold (a larger `_count` is cut to this).
    #[serde(default = "default_audit_api_max_page_size")]
    pub max_page_size: usize,
}

fn default_audit_api_listen() -> String {
    "127.0.0.1:9465".into()
}
fn default_audit_api_page_size() -> usize {
    100
}
fn default_audit_api_max_page_size() -> usize {
    1000
}

impl Default for AuditApiConfig {
    fn default() -> Self {
        AuditApiConfig {
            enabled: false,
            listen: default_audit_api_listen(),
            tls: false,
            page_size: default_audit_api_page_size(),
            max_page_size: default_audit_api_max_page_size(),
        }
    }
}

impl AuditApiConfig {
    /// Check the values are usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        self.listen.parse::<std::net::SocketAddr>().map_err(|_| {
            ConfigError::invalid(
                "audit_api.listen",
                format!("`{}` is not an IP:port address", self.listen),
            )
        })?;
        if self.max_page_size == 0 || self.max_page_size > 10_000 {
            return Err(ConfigError::invalid(
                "audit_api.max_page_size",
                "must be 1 to 10000",
            ));
        }
        if self.page_size == 0 || self.page_size > self.max_page_size {
            return Err(ConfigError::invalid(
                "audit_api.page_size",
                "must be at least 1 and at most audit_api.max_page_size",
            ));
        }
        Ok(())
    }
}

/// `[console]`: the audit console, web pages for privacy officers and compliance staff: search
/// by patient, user, IP or device over a window; the access report and breach timeline; charts;
/// CSV and FHIR downloads; the verification state of every answer. For `[auditors]` only; every
/// page view, search and download is recorded in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve the console at all (off by default).
    #[serde(default)]
    pub enabled: bool,
    /// `IP:port` of the console. Its pages name patients: keep it on loopback or a management
    /// network, or set `tls`.
    #[serde(default = "default_console_listen")]
    pub listen: String,
    /// Serve it with TLS, with the `[tls]` certificate. Session cookies are then `Secure`.
    #[serde(default)]
    pub tls: bool,
    /// The site's IANA time zone: pages show times in it (UTC on hover).
    #[serde(default = "default_console_time_zone")]
    pub time_zone: String,
    /// Rows per page of a table.
    #[serde(default = "default_console_page_rows")]
    pub page_rows: usize,
    /// Sign-in with OpenID Connect (authorisation code with PKCE) against one of the
    /// `[identity]` issuers, beside the pasted token. Default: none.
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
}

/// `[console.oidc]`: the console as an OpenID Connect client of an `[identity]` issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer (as in `[identity]`); its endpoints come from
    /// `ISSUER/.well-known/openid-configuration`.
    pub issuer: String,
    /// The console's client ID at the issuer.
    pub client_id: String,
    /// The environment variable holding the client secret, for a confidential client; empty:
    /// a public client (PKCE alone).
    #[serde(default)]
    pub client_secret_env: String,
    /// The console's `/callback` as the browser reaches it (registered at the issuer), e.g.
    /// `https://audit.example.org:9466/callback`.
    pub redirect_url: String,
    /// The scopes asked for. Default `["openid"]`.
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
}

fn default_oidc_scopes() -> Vec<String> {
    vec!["openid".into()]
}

fn default_console_listen() -> String {
    "127.0.0.1:9466".into()
}
fn default_console_time_zone() -> String {
    "UTC".into()
}
fn default_console_page_rows() -> usize {
    50
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: false,
            listen: default_console_listen(),
            tls: false,
            time_zone: default_console_time_zone(),
            page_rows: default_console_page_rows(),
            oidc: None,
        }
    }
}

impl ConsoleConfig {
    /// Check the values are usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.time_zone.parse::<chrono_tz::Tz>().is_err() {
            return Err(ConfigError::invalid(
                "console.time_zone",
                format!(
                    "`{}` is not an IANA time zone name (e.g. Europe/London)",
                    self.time_zone
                ),
            ));
        }
        if !self.enabled {
            return Ok(());
        }
        self.listen.parse::<std::net::SocketAddr>().map_err(|_| {
            ConfigError::invalid(
                "console.listen",
                format!("`{}` is not an IP:port address", self.listen),
            )
        })?;
        if self.page_rows == 0 || self.page_rows > 1000 {
            return Err(ConfigError::invalid(
                "console.page_rows",
                "must be 1 to 1000",
            ));
        }
        Ok(())
    }
}
