//! `[rules]`: which rule files to load, the policy for unmatched requests, and the form-body
//! bound.

use super::file::DEFAULT_RULE_FILE;
use super::path::validate_base_paths;
use crate::config::error::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

/// Default limit for a form body read for attribution (`POST [type]/_search`): 1 MiB.
pub const DEFAULT_MAX_FORM_BODY_BYTES: u64 = 1 << 20;
/// Upper bound accepted for `max_form_body_bytes`: the body is buffered in memory.
pub const MAX_FORM_BODY_BYTES_LIMIT: u64 = 64 << 20;

/// The `[rules]` section of the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Rule files, tried in this order (first matching rule wins). Relative paths are resolved
    /// against the configuration file's directory. Default: `["rules/fhir-r4.toml"]`.
    pub files: Vec<PathBuf>,
    /// What happens to a request no rule matches: `journal` (record it as unclassified and
    /// forward it; the default) or `deny` (record it and answer 403). Production gateways in
    /// front of one known API should use `deny`.
    pub unmatched: UnmatchedPolicy,
    /// Largest `application/x-www-form-urlencoded` body (`POST [type]/_search`) the gateway
    /// buffers to find patients in it, in bytes. A larger body is forwarded unread and the
    /// attribution stays `partial`. Default 1 MiB, at most 64 MiB.
    pub max_form_body_bytes: u64,
    /// Replace a rule file's own `base_paths`, keyed by the file exactly as written in `files`,
    /// for an EHR whose FHIR base is elsewhere, e.g. `"rules/fhir-r4.toml" = ["/api/FHIR/R4"]`.
    pub base_paths: BTreeMap<PathBuf, Vec<String>>,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            files: vec![PathBuf::from(DEFAULT_RULE_FILE)],
            unmatched: UnmatchedPolicy::default(),
            max_form_body_bytes: DEFAULT_MAX_FORM_BODY_BYTES,
            base_paths: BTreeMap::new(),
        }
    }
}

impl RulesConfig {
    /// Check the values that do not need the rule files themselves.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.files.is_empty() {
            return Err(ConfigError::invalid(
                "rules.files",
                "at least one rule file is needed (with none, every request is unmatched)",
            ));
        }
        let mut seen = HashSet::new();
        for f in &self.files {
            if f.as_os_str().is_empty() {
                return Err(ConfigError::invalid("rules.files", "an entry is empty"));
            }
            if !seen.insert(f) {
                return Err(ConfigError::invalid(
                    "rules.files",
                    format!("{} is listed twice", f.display()),
                ));
            }
        }
        if self.max_form_body_bytes == 0 || self.max_form_body_bytes > MAX_FORM_BODY_BYTES_LIMIT {
            return Err(ConfigError::invalid(
                "rules.max_form_body_bytes",
                format!(
                    "must be between 1 and {MAX_FORM_BODY_BYTES_LIMIT}, got {}",
                    self.max_form_body_bytes
                ),
            ));
        }
        for (file, bases) in &self.base_paths {
            let key = format!("rules.base_paths.\"{}\"", file.display());
            if !self.files.contains(file) {
                return Err(ConfigError::invalid(
                    key,
                    "names a file that is not in rules.files",
                ));
            }
            validate_base_paths(bases).map_err(|reason| ConfigError::invalid(key, reason))?;
        }
        Ok(())
    }
}

/// What the gateway does with a request that no rule matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnmatchedPolicy {
    /// Journal it as `unclassified` (action E, attribution partial) and forward it.
    #[default]
    Journal,
    /// Journal it and answer 403 without forwarding.
    Deny,
}

impl UnmatchedPolicy {
    /// Fixed label for metrics and `check-config`.
    pub fn as_str(self) -> &'static str {
        match self {
            UnmatchedPolicy::Journal => "journal",
            UnmatchedPolicy::Deny => "deny",
        }
    }
}
