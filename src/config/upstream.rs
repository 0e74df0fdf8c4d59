//! `[upstream]`: the EHR the gateway forwards to, and how long it waits for it.
//!
//! The URL is parsed once, as the file is read ([`UpstreamUrl`] deserialises from the string
//! and refuses what is not an `http://` or `https://` origin), so every user reads the typed
//! parts instead of parsing the string again.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::ConfigError;

/// `[upstream]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL of the EHR, `http://host:port` or `https://host:port`. A path prefix is not
    /// allowed: the request path is forwarded unchanged. Parsed and checked once, when the
    /// file is read.
    pub url: UpstreamUrl,
    /// TCP connect timeout.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest wait for the upstream between reads (response head or body bytes).
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// Longest wait for a write to the upstream.
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
    /// Idle pooled upstream connections are closed after this.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// For `https://`: a CA bundle (PEM) the EHR's certificate must chain to. Unset: the
    /// system's trusted roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// For `https://`: the name sent as SNI and required in the EHR's certificate. Default: the
    /// URL's host (set it when the URL names the EHR by IP address but its certificate by name).
    #[serde(default)]
    pub server_name: Option<String>,
    /// For `https://`: accept any certificate and host name. Never in production: it is logged
    /// as an error at every start and by check-config.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

fn default_connect_timeout_ms() -> u64 {
    2_000
}
fn default_read_timeout_ms() -> u64 {
    60_000
}
fn default_write_timeout_ms() -> u64 {
    60_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}

/// The upstream's URL, parsed: an `http://` or `https://` origin without path or query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UpstreamUrl {
    /// The URL as written.
    raw: String,
    /// `host:port` to connect to (brackets around an IPv6 literal).
    pub authority: String,
    /// The host, without brackets: the default TLS server name (SNI) and certificate name.
    pub host: String,
    /// `https://`.
    pub tls: bool,
}

impl UpstreamUrl {
    /// The URL as written in the file.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.raw)
    }
}

impl From<UpstreamUrl> for String {
    fn from(url: UpstreamUrl) -> String {
        url.raw
    }
}

impl TryFrom<String> for UpstreamUrl {
    type Error = ConfigError;

    fn try_from(raw: String) -> Result<UpstreamUrl, ConfigError> {
        let uri: http::Uri = raw
            .parse()
            .map_err(|e| ConfigError::invalid("upstream.url", format!("not a URL: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "upstream.url",
                    format!("scheme `{other}` is not supported; use http:// or https://"),
                ))
            }
            None => {
                return Err(ConfigError::invalid(
                    "upstream.url",
                    "must start with http:// or https://",
                ))
            }
        };
        // `Uri::host` keeps the brackets of an IPv6 literal; the authority adds its own.
        let host = uri
            .host()
            .ok_or_else(|| ConfigError::invalid("upstream.url", "has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(ConfigError::invalid(
                "upstream.url",
                "must not have a path or query: request paths are forwarded unchanged",
            ));
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(UpstreamUrl {
            raw,
            authority,
            host,
            tls,
        })
    }
}

impl UpstreamConfig {
    /// Check the options fit the URL and the timeouts are usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.url.tls
            && (self.ca_file.is_some() || self.insecure_skip_verify || self.server_name.is_some())
        {
            return Err(ConfigError::invalid(
                "upstream.ca_file",
                "ca_file, server_name and insecure_skip_verify are for an https:// upstream",
            ));
        }
        for (key, v) in [
            ("upstream.connect_timeout_ms", self.connect_timeout_ms),
            ("upstream.read_timeout_ms", self.read_timeout_ms),
            ("upstream.write_timeout_ms", self.write_timeout_ms),
            ("upstream.idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(key, "must be above 0"));
            }
        }
        Ok(())
    }

    /// The TLS server name (SNI) and the name the certificate must carry: `server_name`, else
    /// the URL's host.
    pub fn server_name(&self) -> &str {
        self.server_name.as_deref().unwrap_or(&self.url.host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(raw: &str) -> Result<UpstreamUrl, ConfigError> {
        UpstreamUrl::try_from(raw.to_string())
    }

    #[test]
    fn upstream_addresses_parse_for_ipv4_ipv6_and_names() {
        assert_eq!(
            url("http://127.0.0.1:8000").unwrap().authority,
            "127.0.0.1:8000"
        );
        assert_eq!(url("http://[::1]:8080").unwrap().authority, "[::1]:8080");
        assert_eq!(url("http://ehr.local").unwrap().authority, "ehr.local:80");
        assert_eq!(url("https://ehr.local").unwrap().authority, "ehr.local:443");
        assert!(url("https://ehr.local").unwrap().tls);
        assert!(url("ftp://ehr.local").is_err());
        assert!(url("http://ehr.local/fhir").is_err());
        assert_eq!(
            url("http://ehr.local:81").unwrap().to_string(),
            "http://ehr.local:81"
        );
    }

    #[test]
    fn a_bad_url_is_refused_when_the_file_is_read_and_names_the_key() {
        let e = toml::from_str::<UpstreamConfig>("url = \"http://ehr.local/fhir\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstream.url"), "{e}");
        let ok: UpstreamConfig = toml::from_str("url = \"https://ehr.local\"").unwrap();
        assert_eq!(ok.server_name(), "ehr.local");
        assert_eq!(
            toml::to_string(&ok).unwrap().lines().next(),
            Some("url = \"https://ehr.local\"")
        );
    }
}
