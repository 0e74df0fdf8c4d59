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
    /// What happens to a request no rule matches: `inspect` (the default: record it as
    /// unclassified, read its body and its whole response for patients like a search's, and
    /// release the response only after that record), `deny` (record it and answer 403), or
    /// `stream` (record it and stream the response unread: its record names nobody; a warning
    /// at start). Production gateways in front of one known API should use `deny`.
    pub unmatched: UnmatchedPolicy,
    /// A request that asks the EHR to run another method than its request line's
    /// (`X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`, a `_method` query
    /// parameter): `refuse` (the default: 400 `method_override`, recorded) or `classify`
    /// (classified, recorded and forwarded as the overriding method, for clients that need
    /// it behind a proxy that only passes GET and POST).
    pub method_override: MethodOverridePolicy,
    /// `_elements` asks the EHR to leave elements out, which can leave a resource's patient
    /// reference out of the answer: `augment` (the default: the gateway adds the type's
    /// patient-reference elements to `_elements` upstream, which FHIR allows a server to return
    /// anyway, and records the query it forwarded) or `refuse` (400 `elements_not_audited`).
    pub elements: SubsetPolicy,
    /// `_summary=text`, and `_summary=true` on a type whose patient references are not all
    /// summary elements, answer patient data without the reference that names the patient:
    /// `refuse` (the default: 400 `summary_hides_patients`) or `forward` (the record says
    /// `partial`, gap `subsetted`). `_summary=data`, `false` and `count` keep the references.
    pub summary: SubsetPolicy,
    /// `$graphql` answers whatever fields the query selects, references included or not:
    /// `refuse` (the default: 400 `graphql_not_audited`) or `forward` (its response is read
    /// like any other, and the record says `partial`, gap `graphql`).
    pub graphql: SubsetPolicy,
    /// Largest `application/x-www-form-urlencoded` body (`POST [type]/_search`) the gateway
    /// buffers to find patients in it, in bytes. A larger body is forwarded unread and the
    /// attribution stays `partial`. Default 1 MiB, at most 64 MiB.
    pub max_form_body_bytes: u64,
    /// The FHIR base URLs that are this server's, as clients and the EHR write them in absolute
    /// references (`https://ehr.hospital.example/fhir`): a reference on such a base names a
    /// local patient. The EHR's own address (`upstream.url`) under each base path always
    /// counts. A reference on any other base names a patient of another server: recorded in
    /// `external_refs`, never as a local patient. Default: none.
    pub public_base_urls: Vec<String>,
    /// Replace a rule file's own `base_paths`, keyed by the file exactly as written in `files`,
    /// for an EHR whose FHIR base is elsewhere, e.g. `"rules/fhir-r4.toml" = ["/api/FHIR/R4"]`.
    pub base_paths: BTreeMap<PathBuf, Vec<String>>,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            files: vec![PathBuf::from(DEFAULT_RULE_FILE)],
            unmatched: UnmatchedPolicy::default(),
            method_override: MethodOverridePolicy::default(),
            elements: SubsetPolicy::Augment,
            summary: SubsetPolicy::Refuse,
            graphql: SubsetPolicy::Refuse,
            max_form_body_bytes: DEFAULT_MAX_FORM_BODY_BYTES,
            public_base_urls: Vec::new(),
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
        if self.summary == SubsetPolicy::Augment {
            return Err(ConfigError::invalid(
                "rules.summary",
                "must be \"refuse\" or \"forward\" (_summary cannot be augmented)",
            ));
        }
        if self.graphql == SubsetPolicy::Augment {
            return Err(ConfigError::invalid(
                "rules.graphql",
                "must be \"refuse\" or \"forward\" (a GraphQL query cannot be augmented)",
            ));
        }
        if self.elements == SubsetPolicy::Forward {
            return Err(ConfigError::invalid(
                "rules.elements",
                "must be \"augment\" or \"refuse\"",
            ));
        }
        for url in &self.public_base_urls {
            let ok = crate::fhir::normalise_base(url).is_some()
                && !url.contains(['?', '#'])
                && url.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(ConfigError::invalid(
                    "rules.public_base_urls",
                    format!("{url:?} is not an http:// or https:// base URL"),
                ));
            }
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
    /// Record it as `unclassified` (action E), read its body and whole response for patients
    /// (the buffered path), and release the response only after that record is durable.
    #[default]
    Inspect,
    /// Record it and answer 403 without forwarding.
    Deny,
    /// Record it as `unclassified` (attribution partial, no patients) and stream the response
    /// unread. Explicit only: its records name nobody whatever the response carried.
    Stream,
}

impl UnmatchedPolicy {
    /// Fixed label for metrics and `check-config`.
    pub fn as_str(self) -> &'static str {
        match self {
            UnmatchedPolicy::Inspect => "inspect",
            UnmatchedPolicy::Deny => "deny",
            UnmatchedPolicy::Stream => "stream",
        }
    }
}

/// What the gateway does with a request that asks for another method than its request line's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MethodOverridePolicy {
    /// Answer 400 `method_override`, with a record; nothing is forwarded.
    #[default]
    Refuse,
    /// Classify (and record) the request as the overriding method, then forward it unchanged.
    Classify,
}

impl MethodOverridePolicy {
    /// Fixed label for `check-config`.
    pub fn as_str(self) -> &'static str {
        match self {
            MethodOverridePolicy::Refuse => "refuse",
            MethodOverridePolicy::Classify => "classify",
        }
    }
}

/// What the gateway does with a request that asks the EHR for less than whole resources
/// (`_elements`, `_summary`, `$graphql`), which could leave out the reference naming a
/// resource's patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubsetPolicy {
    /// Add what the answer needs to stay attributable (`_elements` only).
    Augment,
    /// Refuse it (400, recorded).
    Refuse,
    /// Forward it as asked; the record says `partial` with the gap naming why.
    Forward,
}

impl SubsetPolicy {
    /// Fixed label for `check-config`.
    pub fn as_str(self) -> &'static str {
        match self {
            SubsetPolicy::Augment => "augment",
            SubsetPolicy::Refuse => "refuse",
            SubsetPolicy::Forward => "forward",
        }
    }
}
