//! Route rules: from method + request target (+ headers, + a form body) to what the access is.
//!
//! This module owns the answer to "what did this request do, and to which patients": the CRUDE
//! [`Action`], the FHIR [`InteractionKind`], the resource type and id, the patient IDs named by
//! the path, the query, a header or a form body, and how complete that list is
//! ([`Attribution`]). It also owns the safe reading of the request path, which is a security
//! boundary: the gateway journals and attributes what this module decodes, so the decoded path
//! must mean exactly one thing to us and to the EHR behind us.
//!
//! # Invariants
//!
//! * **Decode once, refuse ambiguity.** The raw path is percent-decoded exactly once. A path
//!   that could be read two ways (an encoded `/` or `\`, a raw `\`, a `.`/`..` segment raw or
//!   encoded, a NUL raw or `%00`, any `%25`, a `;` anywhere, an empty segment, a bad `%`
//!   escape, non-UTF-8 or control characters after decoding, characters that are not legal in
//!   a path) is refused with a [`PathRejection`]; the proxy answers 400 and journals it under
//!   the rule name `rejected`. So in every accepted path, splitting the decoded path on `/`
//!   gives exactly the raw segments, no segment is `.` or `..`, and there is no NUL.
//! * **No wrong patient.** A patient ID is taken only from a segment or value that fits the
//!   FHIR id syntax `[A-Za-z0-9.-]{1,64}`; a resource type must fit `[A-Z][A-Za-z]+`. A segment
//!   that does not fit is not matched as such, so such a request is unmatched rather than
//!   attributed. Wherever a matched template has `Patient` (literal, or a type capture whose
//!   value is `Patient`) directly followed by an id capture, that id is a patient of the request
//!   (source `path`), whatever the rule says: removing the Patient-specific rules cannot hide a
//!   patient.
//! * **`complete` is a promise.** [`Attribution::Complete`] is only reported when the rule
//!   allows it *and* every patient source of the rule resolved *and* at least one patient was
//!   found *and*, for a search, the query pins every result to listed patients (below). Anything
//!   less is [`Attribution::Partial`]; the response-side extraction (a later stage) can add
//!   what is missing. [`Attribution::None`] is only for rules that declare the request touches
//!   no patient data (the CapabilityStatement).
//! * [`RuleSet`] is immutable after load (`Send + Sync`), compiled once: classifying is segment
//!   comparisons and hash lookups, no regex, a handful of small allocations.
//!
//! # Matching order
//!
//! Rule files are tried in the order of [`RulesConfig::files`]; within a file, its base paths
//! (longest first), then its rules **in file order; the first rule whose methods and path
//! template match wins**. A request under no base path, or matched by no rule, is *unmatched*:
//! it is recorded with rule `unmatched`, action `E`, interaction `unclassified`, no patients,
//! attribution `partial`, and then the [`UnmatchedPolicy`] decides: `journal` (default)
//! forwards it, `deny` makes the proxy answer 403 (still journaled). Loading refuses a rule
//! that can never match because an earlier rule of the same file matches everything it would
//! (for example `/{type}/{id}` placed before `/Patient/{patient}`). A request carrying a
//! method-override header ([`METHOD_OVERRIDE_HEADERS`]) is always unmatched: the EHR might
//! run another method than the one the rules would see.
//!
//! # Rule file format (TOML, every table `deny_unknown_fields`)
//!
//! ```toml
//! base_paths = ["/fhir"]          # required; "/" is the root. Overridable per file in config.
//!
//! [operations]                    # optional: action of an {op} capture by operation name
//! everything = "R"                # ($everything); an unlisted operation keeps the rule's action
//! meta-add = "U"
//!
//! [[rule]]
//! name = "fhir-patient-read"      # unique over all files; recorded in the journal
//! description = "..."             # optional, shown by `rules explain`
//! methods = ["GET", "HEAD"]       # exact, case-sensitive; "*" = any method
//! path = "/Patient/{patient}"     # template relative to the base path
//! action = "R"                    # C, R, U, D or E
//! interaction = "read"            # read, vread, search, create, update, patch, delete,
//!                                 # history, operation, batch, transaction, capabilities
//! attribution = "complete"        # the most this rule may claim: complete, partial, none
//! resource_type = "Patient"       # a literal type, when the template has no {type}
//! resource_id = "patient"         # the capture holding the resource id (default: "id")
//! patient_query = "patient_id"    # patients from this query parameter (comma lists split)
//! patient_header = "X-Patient-Id" # patients from this request header (comma lists split)
//! search = true                   # patients from the query with FHIR search semantics
//! form_body = true                # ... and from an x-www-form-urlencoded body (POST _search)
//!
//! [compartment.Observation]       # generated by scripts/gen-compartment.py, see below
//! compartment = ["subject", "performer"]
//! refs = ["patient", "performer", "subject"]
//! bare = ["patient"]
//! pin = ["patient", "subject"]
//! ```
//!
//! Template segments are literals (compared with the decoded segment) or captures:
//! `{type}` (resource type syntax), `{id}`, `{vid}`, `{patient}` (FHIR id syntax), `{op}`
//! (`$` + an operation name), any other `{name}` (any one segment), `{name:kind}` with kind
//! `type`, `id`, `op` or `segment` to choose explicitly, and `{*name}` as the last segment for
//! one or more remaining segments. `{patient}` is always a patient from the path. A request
//! path may end with one `/`, which is ignored for matching.
//!
//! # Patients from a FHIR search query
//!
//! With `search = true` each query parameter (and, for `form_body`, each body parameter) is
//! looked up in the resource type's `[compartment.<Type>]` table:
//! `refs` are the parameters that can reference a Patient, `bare` those whose bare ids mean
//! Patient (their targets are Patient only), `pin` those that confine every result to the
//! referenced patient (the record's subject, 0..1), and `compartment` the parameters of the R4
//! CompartmentDefinition. A value is a comma-separated OR list; each item may be a bare id
//! (only on a `bare` parameter or with the `:Patient` modifier), `Patient/123`, an absolute URL
//! ending in `Patient/123`, optionally with `/_history/{vid}`. On type `Patient`, `_id` lists
//! patients and pins. Parameters with any other modifier (`:not`, `:missing`, `:identifier`,
//! ...), chained parameters (`subject.name`) and values with escapes (`\`) name no patient.
//! The search is complete when a `pin` parameter resolved every item of its value to a patient
//! (or, for a compartment search `/Patient/{id}/{type}`, when every compartment parameter of
//! the type pins), and nothing widens the result: `_include`, `_revinclude`, `_contained`,
//! `_query`, or a `;` anywhere in the query (some servers split parameters on it).
//!
//! Caveat: FHIR servers may ignore search parameters they do not support. A `complete` search
//! attribution is therefore only as good as the server's support for the pinning parameter;
//! the response-side extraction is the backstop.
//!
//! # The compartment table
//!
//! Generated, never hand-edited: `python3 scripts/gen-compartment.py --package
//! <hl7.fhir.r4.examples@4.0.1 directory or .tgz>` rewrites the block between
//! `# BEGIN GENERATED compartment` and `# END GENERATED compartment` in `rules/fhir-r4.toml`
//! from `CompartmentDefinition-patient.json`, the `SearchParameter-*.json` and the
//! `StructureDefinition-*.json` of that package; `--check` verifies it is current.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::record::{Action, Attribution, InteractionKind, PatientRef, PatientSource};

/// Default rule file, relative to the config file's directory.
/// The shipped FHIR R4 rule file, built in (used by `auditgate demo`).
pub const BUILTIN_FHIR_R4: &str = include_str!("../rules/fhir-r4.toml");
pub const DEFAULT_RULE_FILE: &str = "rules/fhir-r4.toml";
/// Default limit for a form body read for attribution (`POST [type]/_search`): 1 MiB.
pub const DEFAULT_MAX_FORM_BODY_BYTES: u64 = 1 << 20;
/// Upper bound accepted for `max_form_body_bytes`: the body is buffered in memory.
pub const MAX_FORM_BODY_BYTES_LIMIT: u64 = 64 << 20;
/// Longest request path (before the `?`) accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 8192;
/// Rule name recorded for a request no rule matched.
pub const UNMATCHED_RULE: &str = "unmatched";
/// Rule name the proxy records for a request refused with a [`PathRejection`].
pub const REJECTED_RULE: &str = "rejected";

/// Headers some servers honour to run another method than the request line's: a request
/// carrying one is never matched (it is journaled as unmatched, and denied under `deny`).
pub const METHOD_OVERRIDE_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Most captures in one template.
const MAX_CAPTURES: usize = 8;
/// Longest FHIR id (R4: `[A-Za-z0-9\-\.]{1,64}`).
const MAX_ID_LEN: usize = 64;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Rule file format (deserialised, then compiled)
// ---------------------------------------------------------------------------------------------

/// One rule file as written. See the module documentation for an example.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Path prefixes the rules apply under, e.g. `["/fhir"]`; `"/"` is the root. A request
    /// outside every base path of every file is unmatched.
    pub base_paths: Vec<String>,
    /// Action of an `{op}` capture by operation name without `$` (e.g. `everything = "R"`).
    /// Operations not listed keep the rule's `action`.
    #[serde(default)]
    pub operations: BTreeMap<String, Action>,
    /// Search parameters linking each resource type to patients (generated; see module docs).
    #[serde(default)]
    pub compartment: BTreeMap<String, CompartmentDef>,
    /// The rules, tried in order.
    #[serde(default)]
    pub rule: Vec<RuleDef>,
    /// Test cases `auditgate rules test` runs (see [`RuleTest`]).
    #[serde(default)]
    pub test: Vec<RuleTest>,
}

/// One `[[test]]` of a rule file: a request (and optionally its response) and what the record
/// must say. Run by `auditgate rules test` (and the project's tests).
///
/// ```toml
/// [[test]]
/// name = "observation-read"
/// method = "GET"
/// url = "/fhir/Observation/o1"
/// response = '''{"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p1"}}'''
/// expect = { rule = "fhir-read", action = "R", patients = ["p1"], attribution = "complete" }
/// ```
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleTest {
    pub name: String,
    pub method: String,
    /// The request target: a path with its query (`/fhir/Observation?patient=1`).
    pub url: String,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The request body.
    #[serde(default)]
    pub body: Option<String>,
    /// The request body's `Content-Type` (default `application/fhir+json` when there is a body).
    #[serde(default)]
    pub content_type: Option<String>,
    /// The response body; with it (or `status`), the outcome record is checked.
    #[serde(default)]
    pub response: Option<String>,
    /// The response's `Content-Type` (default `application/fhir+json`).
    #[serde(default)]
    pub response_content_type: Option<String>,
    /// The response's `Location` header.
    #[serde(default)]
    pub location: Option<String>,
    /// The response status (default 200).
    #[serde(default)]
    pub status: Option<u16>,
    pub expect: RuleTestExpect,
}

/// What a [`RuleTest`] expects; each key given is checked.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleTestExpect {
    /// The rule name (`unmatched`, `rejected` for a refused path).
    pub rule: Option<String>,
    pub action: Option<Action>,
    pub interaction: Option<InteractionKind>,
    /// Patient ids, in any order.
    pub patients: Option<Vec<String>>,
    pub attribution: Option<Attribution>,
    /// Gap names, in any order.
    pub gaps: Option<Vec<String>>,
}

/// One `[[rule]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    /// Unique name over all rule files, recorded in the journal and used as a metric label.
    /// `[A-Za-z0-9][A-Za-z0-9._-]*`, at most 64 characters; `unmatched` and `rejected` are
    /// reserved.
    pub name: String,
    /// Free text for people (`rules explain`).
    #[serde(default)]
    pub description: Option<String>,
    /// HTTP methods, exact and case-sensitive (`GET`, `HEAD`, ...); `"*"` matches any.
    pub methods: Vec<String>,
    /// Path template relative to the base path, e.g. `/{type}/{id}/_history/{vid}`.
    pub path: String,
    /// CRUDE action recorded: `C`, `R`, `U`, `D` or `E`.
    pub action: Action,
    /// Interaction recorded (`read`, `search`, ...; not `unclassified`).
    pub interaction: InteractionKind,
    /// The most this rule may claim about its patient list: `complete`, `partial` (default)
    /// or `none` (touches no patient data; the rule may then have no patient source).
    #[serde(default)]
    pub attribution: AttributionClaim,
    /// The resource type when the template has no `{type}` capture (e.g. `Patient`).
    #[serde(default)]
    pub resource_type: Option<String>,
    /// Name of the capture holding the resource id. Default: `id` when the template has one.
    #[serde(default)]
    pub resource_id: Option<String>,
    /// Query parameter whose values are patient IDs (comma-separated lists are split).
    #[serde(default)]
    pub patient_query: Option<String>,
    /// Request header whose values are patient IDs (comma-separated lists are split).
    #[serde(default)]
    pub patient_header: Option<String>,
    /// Read patients from the query with FHIR search semantics and the compartment table.
    /// Needs a resource type (`{type}` or `resource_type`).
    #[serde(default)]
    pub search: bool,
    /// Also read an `application/x-www-form-urlencoded` body as search parameters (`POST
    /// [type]/_search`): the classification then has `needs_form_body`. Needs `search`.
    #[serde(default)]
    pub form_body: bool,
    /// Read the request body as FHIR JSON (a resource, a JSON Patch, a transaction or batch
    /// Bundle) and add the patients it references, before the intent record is written. The
    /// request takes the buffered path (see [`crate::inspect`]).
    #[serde(default)]
    pub inspect_body: bool,
    /// Read the whole response as FHIR JSON and add every patient it references to the outcome
    /// record, which is durable before the first byte of the response leaves the gateway. The
    /// request takes the buffered path (see [`crate::inspect`]).
    #[serde(default)]
    pub inspect_response: bool,
}

/// The `attribution` a rule may claim.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttributionClaim {
    /// Complete when every patient source resolved (see the module documentation).
    Complete,
    /// Always partial.
    #[default]
    Partial,
    /// No patient data: attribution `none`, no patients.
    None,
}

/// One `[compartment.<Type>]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CompartmentDef {
    /// Parameters that put the type in the Patient compartment (R4 CompartmentDefinition).
    pub compartment: Vec<String>,
    /// Every reference search parameter of the type that can hold a Patient.
    pub refs: Vec<String>,
    /// Parameters whose bare ids are Patient ids (targets are Patient only).
    pub bare: Vec<String>,
    /// Parameters that confine every result to the referenced patient.
    pub pin: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why the rules could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The `[rules]` section itself is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A rule file could not be read.
    #[error("cannot read rule file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key or wrong type; the message names the key and the line.
    #[error("rule file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value parsed but is not acceptable.
    #[error("rule file {path}{}: key `{key}`: {reason}", in_rule(.rule))]
    Invalid {
        path: PathBuf,
        rule: Option<String>,
        key: String,
        reason: String,
    },
}

fn in_rule(rule: &Option<String>) -> String {
    match rule {
        Some(r) => format!(", rule `{r}`"),
        None => String::new(),
    }
}

impl RulesError {
    /// A fixed label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            RulesError::Config(_) => "config",
            RulesError::Read { .. } => "read",
            RulesError::Parse { .. } => "parse",
            RulesError::Invalid { .. } => "invalid",
        }
    }
}

/// Why a request path was refused. The proxy answers 400 and journals the request with rule
/// `rejected` and [`PathRejection::reason`]. `at` is a byte offset in the raw path (for
/// segment-level problems, the start of the raw segment). Messages never contain the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathRejection {
    /// The request target does not start with `/` (absolute-form, authority-form, `*`).
    #[error("request target is not an origin-form path")]
    NotOriginForm,
    /// The path is longer than [`MAX_PATH_BYTES`].
    #[error("request path is {len} bytes, longer than the {limit} allowed")]
    TooLong { len: usize, limit: usize },
    /// A raw character that is not legal in a URI path (space, `"`, `<`, `#`, non-ASCII, ...).
    #[error("character not allowed in a path at byte {at}")]
    InvalidCharacter { at: usize },
    /// A control character, raw or percent-encoded (or a Unicode control after decoding).
    #[error("control character in the path at byte {at}")]
    ControlCharacter { at: usize },
    /// NUL, raw or `%00`.
    #[error("NUL in the path at byte {at}")]
    Nul { at: usize },
    /// A raw backslash.
    #[error("backslash in the path at byte {at}")]
    Backslash { at: usize },
    /// A `;` (matrix / path parameter), raw or `%3B`.
    #[error("';' in the path at byte {at}")]
    MatrixParam { at: usize },
    /// `%` not followed by two hex digits.
    #[error("invalid percent-encoding at byte {at}")]
    InvalidPercentEncoding { at: usize },
    /// `%2F` or `%5C`: a slash or backslash inside a segment.
    #[error("encoded slash or backslash at byte {at}")]
    EncodedSlash { at: usize },
    /// `%25`: an encoded `%`, i.e. a second layer of encoding (`%252F`).
    #[error("double percent-encoding at byte {at}")]
    DoubleEncoding { at: usize },
    /// A `.` or `..` segment, raw or encoded.
    #[error("dot segment at byte {at}")]
    DotSegment { at: usize },
    /// An empty segment (`//`); one trailing `/` is allowed.
    #[error("empty path segment at byte {at}")]
    EmptySegment { at: usize },
    /// A segment is not UTF-8 once decoded.
    #[error("segment at byte {at} is not UTF-8 once decoded")]
    InvalidUtf8 { at: usize },
}

impl PathRejection {
    /// Every [`PathRejection::reason`] code, for pre-registering metric label values.
    pub const REASONS: &'static [&'static str] = &[
        "not_origin_form",
        "too_long",
        "invalid_character",
        "control_character",
        "nul",
        "backslash",
        "matrix_param",
        "invalid_percent_encoding",
        "encoded_slash",
        "double_encoding",
        "dot_segment",
        "empty_segment",
        "invalid_utf8",
    ];

    /// A fixed code for the journal's error field and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            PathRejection::NotOriginForm => "not_origin_form",
            PathRejection::TooLong { .. } => "too_long",
            PathRejection::InvalidCharacter { .. } => "invalid_character",
            PathRejection::ControlCharacter { .. } => "control_character",
            PathRejection::Nul { .. } => "nul",
            PathRejection::Backslash { .. } => "backslash",
            PathRejection::MatrixParam { .. } => "matrix_param",
            PathRejection::InvalidPercentEncoding { .. } => "invalid_percent_encoding",
            PathRejection::EncodedSlash { .. } => "encoded_slash",
            PathRejection::DoubleEncoding { .. } => "double_encoding",
            PathRejection::DotSegment { .. } => "dot_segment",
            PathRejection::EmptySegment { .. } => "empty_segment",
            PathRejection::InvalidUtf8 { .. } => "invalid_utf8",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Classification
// ---------------------------------------------------------------------------------------------

/// What a request is, as far as the request line and headers tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// The matching rule's name, or [`UNMATCHED_RULE`].
    pub rule: String,
    /// False for an unmatched request (then the [`UnmatchedPolicy`] applies).
    pub matched: bool,
    /// The rule's action, or the `[operations]` entry for its `{op}`; `E` when unmatched.
    pub action: Action,
    /// The rule's interaction; `unclassified` when unmatched.
    pub interaction: InteractionKind,
    /// From the `{type}` capture or the rule's `resource_type`.
    pub resource_type: Option<String>,
    /// From the rule's `resource_id` capture (default `{id}`).
    pub resource_id: Option<String>,
    /// Patients named by the request, deduplicated by id, in order of discovery (path, then
    /// query parameter, header, search query, form body).
    pub patients: Vec<PatientRef>,
    pub attribution: Attribution,
    /// The decoded path (for the journal).
    pub path: String,
    /// The raw query, as received, when not empty.
    pub query: Option<String>,
    /// The rule reads patients from a form body: call [`RuleSet::attribute_form_body`] with the
    /// body if it is `application/x-www-form-urlencoded` and at most
    /// [`RuleSet::max_form_body_bytes`]; otherwise the attribution stays `partial`.
    pub needs_form_body: bool,
    /// The rule reads the request body as FHIR JSON (`inspect_body`).
    pub inspect_body: bool,
    /// The rule reads the response as FHIR JSON (`inspect_response`).
    pub inspect_response: bool,
    /// The most the matched rule may claim (`partial` when unmatched).
    pub claim: AttributionClaim,
    /// The base path the request matched under (`/fhir`; empty for the root), for resolving
    /// the relative URLs of Bundle entries. Empty when unmatched.
    pub base_path: String,
    /// What `attribute_form_body` needs to redo the search attribution.
    form: Option<Box<FormState>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FormState {
    resource_type: String,
    /// Patients from sources other than the search query (path, header, query parameter).
    base: Vec<PatientRef>,
    /// The rule claims complete and every non-search source resolved.
    base_ok: bool,
    /// A compartment search on a type whose compartment parameters all pin.
    compartment_pins: bool,
}

impl Classification {
    fn unmatched(path: String, query: Option<String>) -> Self {
        Classification {
            rule: UNMATCHED_RULE.to_string(),
            matched: false,
            action: Action::E,
            interaction: InteractionKind::Unclassified,
            resource_type: None,
            resource_id: None,
            patients: Vec::new(),
            attribution: Attribution::Partial,
            path,
            query,
            needs_form_body: false,
            inspect_body: false,
            inspect_response: false,
            claim: AttributionClaim::Partial,
            base_path: String::new(),
            form: None,
        }
    }

    /// The request takes the buffered path: its body or its response is read for patients.
    pub fn buffered(&self) -> bool {
        self.inspect_body || self.inspect_response
    }
}

// ---------------------------------------------------------------------------------------------
// Compiled rules
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CapKind {
    /// `[A-Z][A-Za-z]+`
    Type,
    /// `[A-Za-z0-9.-]{1,64}`
    Id,
    /// `$` + `[A-Za-z][A-Za-z0-9_-]*`
    Op,
    /// Any one segment.
    Segment,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Cap {
        idx: usize,
        kind: CapKind,
    },
    /// One or more remaining segments; always last.
    Rest {
        idx: usize,
    },
}

#[derive(Debug, Clone)]
struct Template {
    segs: Vec<Seg>,
    names: Vec<String>,
}

impl Template {
    fn capture(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }
}

/// Where a template says `Patient/<id>`: the id capture, after a literal `Patient` or a type
/// capture (checked against `Patient` at match time).
#[derive(Debug, Clone, Copy)]
enum PatientPair {
    Literal { id: usize },
    TypeCapture { ty: usize, id: usize },
}

#[derive(Debug, Clone)]
enum TypeFrom {
    None,
    Literal(String),
    Capture(usize),
}

#[derive(Debug, Clone)]
enum Methods {
    Any,
    List(Vec<String>),
}

impl Methods {
    fn matches(&self, m: &str) -> bool {
        match self {
            Methods::Any => true,
            Methods::List(l) => l.iter().any(|x| x == m),
        }
    }

    fn covers(&self, other: &Methods) -> bool {
        match (self, other) {
            (Methods::Any, _) => true,
            (Methods::List(_), Methods::Any) => false,
            (Methods::List(a), Methods::List(b)) => b.iter().all(|m| a.contains(m)),
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    methods: Methods,
    template: Template,
    action: Action,
    interaction: InteractionKind,
    claim: AttributionClaim,
    resource_type: TypeFrom,
    resource_id: Option<usize>,
    patient_cap: Option<usize>,
    patient_pairs: Vec<PatientPair>,
    op_cap: Option<usize>,
    patient_query: Option<String>,
    patient_header: Option<http::HeaderName>,
    search: bool,
    form_body: bool,
    inspect_body: bool,
    inspect_response: bool,
    description: Option<String>,
}

#[derive(Debug, Clone)]
struct CompiledFile {
    bases: Vec<Vec<String>>,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, Default)]
struct ParamInfo {
    bare: bool,
    pin: bool,
}

#[derive(Debug, Clone)]
struct TypeParams {
    def: CompartmentDef,
    params: HashMap<String, ParamInfo>,
    /// Every compartment parameter pins (and there is at least one).
    compartment_pins: bool,
}

/// The loaded, compiled rules. Immutable; share it behind an `Arc`.
#[derive(Debug, Clone)]
pub struct RuleSet {
    files: Vec<CompiledFile>,
    compartment: HashMap<String, TypeParams>,
    operations: HashMap<String, Action>,
    unmatched: UnmatchedPolicy,
    max_form_body_bytes: u64,
    /// The files' `[[test]]` cases, with the file they came from.
    tests: Vec<(PathBuf, RuleTest)>,
}

/// A short description of one rule, for `rules explain` and `check-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleSummary {
    pub name: String,
    pub description: Option<String>,
}

impl RuleSet {
    /// Load and compile every rule file of `cfg`, relative paths resolved against `base_dir`.
    pub fn load(cfg: &RulesConfig, base_dir: &Path) -> Result<RuleSet, RulesError> {
        cfg.validate()?;
        let mut sources = Vec::with_capacity(cfg.files.len());
        for f in &cfg.files {
            let path = if f.is_absolute() {
                f.clone()
            } else {
                base_dir.join(f)
            };
            let text = std::fs::read_to_string(&path).map_err(|source| RulesError::Read {
                path: path.clone(),
                source,
            })?;
            sources.push((path, text, cfg.base_paths.get(f).cloned()));
        }
        Self::compile(cfg, sources)
    }

    /// Compile one rule file given as text (tests, `rules test`), with default limits.
    pub fn from_toml_str(text: &str, unmatched: UnmatchedPolicy) -> Result<RuleSet, RulesError> {
        let cfg = RulesConfig {
            unmatched,
            ..RulesConfig::default()
        };
        Self::compile(
            &cfg,
            vec![(PathBuf::from("<inline>"), text.to_string(), None)],
        )
    }

    fn compile(
        cfg: &RulesConfig,
        sources: Vec<(PathBuf, String, Option<Vec<String>>)>,
    ) -> Result<RuleSet, RulesError> {
        let mut set = RuleSet {
            files: Vec::new(),
            compartment: HashMap::new(),
            operations: HashMap::new(),
            unmatched: cfg.unmatched,
            max_form_body_bytes: cfg.max_form_body_bytes,
            tests: Vec::new(),
        };
        let mut names = HashSet::new();
        for (path, text, base_override) in sources {
            let file: RuleFile = toml::from_str(&text).map_err(|e| RulesError::Parse {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let invalid = |rule: Option<&str>, key: &str, reason: String| RulesError::Invalid {
                path: path.clone(),
                rule: rule.map(str::to_string),
                key: key.to_string(),
                reason,
            };
            let mut test_names = HashSet::new();
            for t in &file.test {
                if !test_names.insert(t.name.clone()) {
                    return Err(invalid(
                        None,
                        "test",
                        format!("two tests are named {:?}", t.name),
                    ));
                }
                set.tests.push((path.clone(), t.clone()));
            }
            let base_paths = base_override.unwrap_or(file.base_paths);
            validate_base_paths(&base_paths).map_err(|r| invalid(None, "base_paths", r))?;
            let mut bases: Vec<Vec<String>> = base_paths.iter().map(|b| base_segments(b)).collect();
            // Longest base first, so `/fhir/r4` is tried before `/fhir` and before `/`.
            bases.sort_by_key(|b| std::cmp::Reverse(b.len()));

            for (op, action) in file.operations {
                let key = format!("operations.{op}");
                if !is_op_name(&op) {
                    return Err(invalid(None, &key, "not an operation name".into()));
                }
                if set.operations.insert(op, action).is_some() {
                    return Err(invalid(None, &key, "defined in more than one file".into()));
                }
            }
            for (ty, def) in file.compartment {
                let key = format!("compartment.{ty}");
                let params = compile_compartment(&ty, &def).map_err(|r| invalid(None, &key, r))?;
                if set.compartment.insert(ty, params).is_some() {
                    return Err(invalid(None, &key, "defined in more than one file".into()));
                }
            }
            let mut rules: Vec<Rule> = Vec::with_capacity(file.rule.len());
            for (i, def) in file.rule.into_iter().enumerate() {
                let label = if def.name.is_empty() {
                    format!("#{}", i + 1)
                } else {
                    def.name.clone()
                };
                let rule = compile_rule(def).map_err(|(k, r)| invalid(Some(&label), k, r))?;
                if !names.insert(rule.name.clone()) {
                    return Err(invalid(Some(&label), "name", "used by another rule".into()));
                }
                if let Some(earlier) = rules.iter().find(|e| shadows(e, &rule)) {
                    return Err(invalid(
                        Some(&label),
                        "path",
                        format!(
                            "can never match: rule `{}` comes first and matches every request \
                             this one would (put the more specific rule first)",
                            earlier.name
                        ),
                    ));
                }
                rules.push(rule);
            }
            set.files.push(CompiledFile { bases, rules });
        }
        Ok(set)
    }

    /// The policy for unmatched requests.
    pub fn unmatched_policy(&self) -> UnmatchedPolicy {
        self.unmatched
    }

    /// True when the proxy must answer 403: the request is unmatched and the policy is `deny`.
    pub fn denies(&self, c: &Classification) -> bool {
        !c.matched && self.unmatched == UnmatchedPolicy::Deny
    }

    /// The largest form body [`RuleSet::attribute_form_body`] reads, in bytes.
    pub fn max_form_body_bytes(&self) -> u64 {
        self.max_form_body_bytes
    }

    /// Every rule, in matching order (bounded set: usable as metric label values).
    pub fn rules(&self) -> Vec<RuleSummary> {
        self.files
            .iter()
            .flat_map(|f| f.rules.iter())
            .map(|r| RuleSummary {
                name: r.name.clone(),
                description: r.description.clone(),
            })
            .collect()
    }

    /// The rule files' `[[test]]` cases, each with its file.
    pub fn tests(&self) -> &[(PathBuf, RuleTest)] {
        &self.tests
    }

    /// A rule's `description`.
    pub fn description(&self, rule: &str) -> Option<&str> {
        self.files
            .iter()
            .flat_map(|f| f.rules.iter())
            .find(|r| r.name == rule)
            .and_then(|r| r.description.as_deref())
    }

    /// The R4 Patient-compartment parameters of a resource type, as loaded.
    pub fn compartment_params(&self, resource_type: &str) -> Option<&CompartmentDef> {
        self.compartment.get(resource_type).map(|t| &t.def)
    }

    /// Classify a request. `path_and_query` is the raw request target as received (still
    /// percent-encoded). An `Err` means the path is refused (400); anything else is journaled.
    pub fn classify(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &http::HeaderMap,
    ) -> Result<Classification, PathRejection> {
        let (raw_path, raw_query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let path = decode_path(raw_path)?;
        let query = raw_query.filter(|q| !q.is_empty());
        if METHOD_OVERRIDE_HEADERS
            .iter()
            .any(|h| headers.contains_key(*h))
        {
            // The EHR may act on another method than the one we would classify.
            return Ok(Classification::unmatched(path, query.map(str::to_string)));
        }
        let segs = segment_bounds(&path);

        let mut caps: [&str; MAX_CAPTURES] = [""; MAX_CAPTURES];
        for file in &self.files {
            for base in &file.bases {
                let Some(rel) = strip_base(&path, &segs, base) else {
                    continue;
                };
                for rule in &file.rules {
                    if rule.methods.matches(method)
                        && match_template(&rule.template, &path, rel, &mut caps)
                    {
                        let mut c = self.build(rule, &caps, path.clone(), query, headers);
                        c.base_path = base.iter().map(|s| format!("/{s}")).collect();
                        return Ok(c);
                    }
                }
            }
        }
        Ok(Classification::unmatched(path, query.map(str::to_string)))
    }

    fn build(
        &self,
        rule: &Rule,
        caps: &[&str; MAX_CAPTURES],
        path: String,
        query: Option<&str>,
        headers: &http::HeaderMap,
    ) -> Classification {
        let resource_type: Option<&str> = match &rule.resource_type {
            TypeFrom::None => None,
            TypeFrom::Literal(t) => Some(t),
            TypeFrom::Capture(i) => Some(caps[*i]),
        };
        let resource_id = rule.resource_id.map(|i| caps[i]);
        let action = match rule.op_cap {
            Some(i) => {
                let op = caps[i].trim_start_matches('$');
                self.operations.get(op).copied().unwrap_or(rule.action)
            }
            None => rule.action,
        };
        let mut c = Classification {
            rule: rule.name.clone(),
            matched: true,
            action,
            interaction: rule.interaction,
            resource_type: resource_type.map(str::to_string),
            resource_id: resource_id.map(str::to_string),
            patients: Vec::new(),
            attribution: Attribution::None,
            path,
            query: query.map(str::to_string),
            needs_form_body: false,
            inspect_body: rule.inspect_body,
            inspect_response: rule.inspect_response,
            claim: rule.claim,
            base_path: String::new(),
            form: None,
        };
        if rule.claim == AttributionClaim::None {
            return c;
        }

        // Patients from the path: the {patient} capture, and every `Patient/<id>` pair.
        let mut base: Vec<PatientRef> = Vec::new();
        if let Some(i) = rule.patient_cap {
            push_patient(&mut base, caps[i], PatientSource::Path);
        }
        for pair in &rule.patient_pairs {
            match *pair {
                PatientPair::Literal { id } => {
                    push_patient(&mut base, caps[id], PatientSource::Path)
                }
                PatientPair::TypeCapture { ty, id } if caps[ty] == "Patient" => {
                    push_patient(&mut base, caps[id], PatientSource::Path)
                }
                PatientPair::TypeCapture { .. } => {}
            }
        }
        let path_patients = !base.is_empty();
        let mut base_ok = rule.claim == AttributionClaim::Complete;

        if let Some(name) = &rule.patient_query {
            let mut found = false;
            for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
                if k == name.as_str() {
                    found = true;
                    base_ok &= push_id_list(&mut base, &v, PatientSource::Query);
                }
            }
            base_ok &= found;
        }
        if let Some(name) = &rule.patient_header {
            let mut found = false;
            for v in headers.get_all(name) {
                found = true;
                match v.to_str() {
                    Ok(s) => base_ok &= push_id_list(&mut base, s.trim(), PatientSource::Header),
                    Err(_) => base_ok = false,
                }
            }
            base_ok &= found;
        }

        let mut scan = Scan::default();
        let mut compartment_pins = false;
        if rule.search {
            if let Some(rt) = resource_type {
                if let Some(q) = query {
                    self.scan_query(rt, q.as_bytes(), PatientSource::Query, &mut scan);
                }
                compartment_pins =
                    path_patients && self.compartment.get(rt).is_some_and(|t| t.compartment_pins);
            }
        }
        if rule.form_body {
            if let Some(rt) = resource_type {
                c.needs_form_body = true;
                c.form = Some(Box::new(FormState {
                    resource_type: rt.to_string(),
                    base: base.clone(),
                    base_ok,
                    compartment_pins,
                }));
            }
        }
        let complete = base_ok
            && !c.needs_form_body
            && (!rule.search || (!scan.open && (scan.pinned || compartment_pins)));
        finish(&mut c, base, scan.patients, complete);
        c
    }

    /// Add the patients of an `application/x-www-form-urlencoded` body (`POST [type]/_search`)
    /// to a classification with `needs_form_body`, and settle its attribution. A body larger
    /// than [`RuleSet::max_form_body_bytes`] is not read: the attribution stays `partial`.
    /// Does nothing when the classification does not need a body.
    pub fn attribute_form_body(&self, c: &mut Classification, body: &[u8]) {
        let Some(state) = c.form.take() else { return };
        c.needs_form_body = false;
        if body.len() as u64 > self.max_form_body_bytes {
            c.attribution = Attribution::Partial;
            return;
        }
        let mut scan = Scan::default();
        if let Some(q) = &c.query {
            self.scan_query(
                &state.resource_type,
                q.as_bytes(),
                PatientSource::Query,
                &mut scan,
            );
        }
        self.scan_query(&state.resource_type, body, PatientSource::Body, &mut scan);
        let complete = state.base_ok && !scan.open && (scan.pinned || state.compartment_pins);
        finish(c, state.base, scan.patients, complete);
    }

    /// Read FHIR search parameters for patients (see "Patients from a FHIR search query").
    fn scan_query(&self, resource_type: &str, raw: &[u8], source: PatientSource, scan: &mut Scan) {
        if raw.contains(&b';') {
            // Some servers split parameters on `;` too: what they see may differ from this.
            scan.open = true;
        }
        let table = self.compartment.get(resource_type);
        let on_patient = resource_type == "Patient";
        for (name, value) in form_urlencoded::parse(raw) {
            let name: &str = &name;
            if widens(name) {
                scan.open = true;
                continue;
            }
            if name.contains('.') {
                continue; // chained parameter: a filter, names no patient by id
            }
            let (param, modifier) = match name.split_once(':') {
                Some((p, m)) => (p, Some(m)),
                None => (name, None),
            };
            if on_patient && param == "_id" {
                if modifier.is_none() && push_id_list(&mut scan.patients, &value, source) {
                    scan.pinned = true;
                }
                continue;
            }
            let Some(info) = table.and_then(|t| t.params.get(param)) else {
                continue;
            };
            let bare_is_patient = match modifier {
                None => info.bare,
                Some("Patient") => true,
                Some(_) => continue,
            };
            if push_reference_list(&mut scan.patients, &value, bare_is_patient, source) && info.pin
            {
                scan.pinned = true;
            }
        }
    }
}

#[derive(Debug, Default)]
struct Scan {
    patients: Vec<PatientRef>,
    /// A `pin` parameter resolved every item to a patient.
    pinned: bool,
    /// Something may add results outside the pinned patients.
    open: bool,
}

fn widens(name: &str) -> bool {
    let base = name.split(':').next().unwrap_or(name);
    matches!(base, "_include" | "_revinclude" | "_contained" | "_query")
}

/// Merge, deduplicate by id (first source wins), and set the attribution.
fn finish(c: &mut Classification, base: Vec<PatientRef>, more: Vec<PatientRef>, complete: bool) {
    let mut all = base;
    all.extend(more);
    if all.len() > 1 {
        let mut seen = HashSet::with_capacity(all.len());
        all.retain(|p| seen.insert(p.id.clone()));
    }
    c.attribution = if complete && !all.is_empty() {
        Attribution::Complete
    } else {
        Attribution::Partial
    };
    c.patients = all;
}

fn push_patient(out: &mut Vec<PatientRef>, id: &str, source: PatientSource) {
    out.push(PatientRef {
        id: id.to_string(),
        source,
    });
}

/// A comma-separated list of bare ids. True when every item is a valid id. Only header lists
/// (`a, b`: HTTP allows spaces after the comma) are trimmed; a query item is taken as is.
fn push_id_list(out: &mut Vec<PatientRef>, value: &str, source: PatientSource) -> bool {
    if value.is_empty() {
        return false;
    }
    let mut all = true;
    for item in value.split(',') {
        let item = if source == PatientSource::Header {
            item.trim_matches([' ', '\t'])
        } else {
            item
        };
        if is_fhir_id(item) {
            push_patient(out, item, source);
        } else {
            all = false;
        }
    }
    all
}

/// A FHIR reference search value (OR list). True when every item named a patient.
fn push_reference_list(
    out: &mut Vec<PatientRef>,
    value: &str,
    bare_is_patient: bool,
    source: PatientSource,
) -> bool {
    if value.is_empty() || value.contains('\\') {
        return false; // `\,` escapes: the items are not what a plain split gives
    }
    let mut all = true;
    for item in value.split(',') {
        match patient_in_reference(item, bare_is_patient) {
            Some(id) => push_patient(out, id, source),
            None => all = false,
        }
    }
    all
}

/// The patient id a reference search value names, if any: a bare id (when allowed),
/// `Patient/{id}`, or `http(s)://host/.../Patient/{id}`, optionally `/_history/{vid}`.
pub fn patient_in_reference(item: &str, bare_is_patient: bool) -> Option<&str> {
    if is_fhir_id(item) {
        return bare_is_patient.then_some(item);
    }
    let mut r = item;
    if let Some(i) = r.rfind("/_history/") {
        if is_fhir_id(&r[i + "/_history/".len()..]) {
            r = &r[..i];
        }
    }
    let (head, id) = r.rsplit_once('/')?;
    if !is_fhir_id(id) {
        return None;
    }
    let prefix = head.strip_suffix("Patient")?;
    if prefix.is_empty() {
        return Some(id);
    }
    let after_scheme = prefix
        .strip_prefix("https://")
        .or_else(|| prefix.strip_prefix("http://"))?;
    let host_ok = after_scheme.ends_with('/')
        && !after_scheme.starts_with('/')
        && after_scheme
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'\\');
    host_ok.then_some(id)
}

// ---------------------------------------------------------------------------------------------
// Syntax checks
// ---------------------------------------------------------------------------------------------

/// FHIR R4 id: `[A-Za-z0-9\-\.]{1,64}`.
pub fn is_fhir_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// FHIR resource type syntax: `[A-Z][A-Za-z]+`.
pub fn is_resource_type(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2 && b[0].is_ascii_uppercase() && b[1..].iter().all(u8::is_ascii_alphabetic)
}

fn is_op_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphabetic()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

/// An operation segment: `$` + operation name.
fn is_op_segment(s: &str) -> bool {
    s.strip_prefix('$').is_some_and(is_op_name)
}

fn cap_accepts(kind: CapKind, seg: &str) -> bool {
    match kind {
        CapKind::Type => is_resource_type(seg),
        CapKind::Id => is_fhir_id(seg),
        CapKind::Op => is_op_segment(seg),
        CapKind::Segment => true,
    }
}

/// RFC 3986 `pchar` minus `%` and `;` (handled separately).
fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
        )
}

// ---------------------------------------------------------------------------------------------
// Path decoding (the security boundary)
// ---------------------------------------------------------------------------------------------

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decode the raw path once, refusing anything ambiguous (see the module invariants).
fn decode_path(raw: &str) -> Result<String, PathRejection> {
    let b = raw.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathRejection::NotOriginForm);
    }
    if b.len() > MAX_PATH_BYTES {
        return Err(PathRejection::TooLong {
            len: b.len(),
            limit: MAX_PATH_BYTES,
        });
    }
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    out.push(b'/');
    let mut i = 1;
    let mut seg_raw = 1; // raw offset of the current segment
    let mut seg_out = 1; // decoded offset of the current segment
    while i < b.len() {
        let c = b[i];
        match c {
            b'/' => {
                check_segment(&out[seg_out..], seg_raw, false)?;
                out.push(b'/');
                i += 1;
                seg_raw = i;
                seg_out = out.len();
            }
            b'%' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex_val),
                    b.get(i + 2).copied().and_then(hex_val),
                ) else {
                    return Err(PathRejection::InvalidPercentEncoding { at: i });
                };
                let v = h * 16 + l;
                match v {
                    0 => return Err(PathRejection::Nul { at: i }),
                    b'/' | b'\\' => return Err(PathRejection::EncodedSlash { at: i }),
                    b'%' => return Err(PathRejection::DoubleEncoding { at: i }),
                    b';' => return Err(PathRejection::MatrixParam { at: i }),
                    0x01..=0x1f | 0x7f => return Err(PathRejection::ControlCharacter { at: i }),
                    _ => out.push(v),
                }
                i += 3;
            }
            0 => return Err(PathRejection::Nul { at: i }),
            0x01..=0x1f | 0x7f => return Err(PathRejection::ControlCharacter { at: i }),
            b'\\' => return Err(PathRejection::Backslash { at: i }),
            b';' => return Err(PathRejection::MatrixParam { at: i }),
            _ if is_path_char(c) => {
                out.push(c);
                i += 1;
            }
            _ => return Err(PathRejection::InvalidCharacter { at: i }),
        }
    }
    check_segment(&out[seg_out..], seg_raw, true)?;
    // Every segment was checked to be UTF-8 and `/` only joins them.
    String::from_utf8(out).map_err(|_| PathRejection::InvalidUtf8 { at: 0 })
}

fn check_segment(seg: &[u8], at: usize, last: bool) -> Result<(), PathRejection> {
    match seg {
        b"" if !last => Err(PathRejection::EmptySegment { at }),
        b"." | b".." => Err(PathRejection::DotSegment { at }),
        _ if seg.is_ascii() => Ok(()),
        _ => {
            let s = std::str::from_utf8(seg).map_err(|_| PathRejection::InvalidUtf8 { at })?;
            if s.chars().any(char::is_control) {
                return Err(PathRejection::ControlCharacter { at });
            }
            Ok(())
        }
    }
}

/// Byte ranges of the decoded path's segments, without a trailing empty segment.
fn segment_bounds(path: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity(8);
    let mut start = 1;
    for (i, b) in path.bytes().enumerate().skip(1) {
        if b == b'/' {
            out.push((start, i));
            start = i + 1;
        }
    }
    if start < path.len() {
        out.push((start, path.len()));
    }
    out
}

fn strip_base<'s>(
    path: &str,
    segs: &'s [(usize, usize)],
    base: &[String],
) -> Option<&'s [(usize, usize)]> {
    if segs.len() < base.len() {
        return None;
    }
    for (b, &(s, e)) in base.iter().zip(segs) {
        if &path[s..e] != b.as_str() {
            return None;
        }
    }
    Some(&segs[base.len()..])
}

fn match_template<'p>(
    t: &Template,
    path: &'p str,
    segs: &[(usize, usize)],
    caps: &mut [&'p str; MAX_CAPTURES],
) -> bool {
    let has_rest = matches!(t.segs.last(), Some(Seg::Rest { .. }));
    if has_rest {
        if segs.len() < t.segs.len() {
            return false;
        }
    } else if segs.len() != t.segs.len() {
        return false;
    }
    for (i, seg) in t.segs.iter().enumerate() {
        let (s, e) = segs[i];
        let text = &path[s..e];
        match seg {
            Seg::Lit(l) => {
                if text != l.as_str() {
                    return false;
                }
            }
            Seg::Cap { idx, kind } => {
                if !cap_accepts(*kind, text) {
                    return false;
                }
                caps[*idx] = text;
            }
            Seg::Rest { idx } => {
                let end = segs[segs.len() - 1].1;
                caps[*idx] = &path[s..end];
            }
        }
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Compiling
// ---------------------------------------------------------------------------------------------

fn validate_base_paths(bases: &[String]) -> Result<(), String> {
    if bases.is_empty() {
        return Err("at least one base path is needed (\"/\" for the root)".into());
    }
    let mut seen = HashSet::new();
    for b in bases {
        if b != "/" {
            if !b.starts_with('/') || b.ends_with('/') {
                return Err(format!(
                    "base path {b:?} must start with '/' and not end with one"
                ));
            }
            for seg in b[1..].split('/') {
                if seg.is_empty() || seg == "." || seg == ".." || !seg.bytes().all(is_path_char) {
                    return Err(format!(
                        "base path {b:?} has an empty, dot or non-literal segment (no '%', ';')"
                    ));
                }
            }
        }
        if !seen.insert(b) {
            return Err(format!("base path {b:?} is listed twice"));
        }
    }
    Ok(())
}

fn base_segments(b: &str) -> Vec<String> {
    if b == "/" {
        Vec::new()
    } else {
        b[1..].split('/').map(str::to_string).collect()
    }
}

fn parse_template(s: &str) -> Result<Template, String> {
    if !s.starts_with('/') {
        return Err("must start with '/'".into());
    }
    let mut t = Template {
        segs: Vec::new(),
        names: Vec::new(),
    };
    if s == "/" {
        return Ok(t);
    }
    let parts: Vec<&str> = s[1..].split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            return Err("has an empty segment (or ends with '/')".into());
        }
        if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            let (rest, inner) = match inner.strip_prefix('*') {
                Some(n) => (true, n),
                None => (false, inner),
            };
            let (name, kind) = match inner.split_once(':') {
                Some((n, k)) => {
                    let kind = match k {
                        "type" => CapKind::Type,
                        "id" => CapKind::Id,
                        "op" => CapKind::Op,
                        "segment" => CapKind::Segment,
                        _ => {
                            return Err(format!(
                                "capture kind `{k}` is not type, id, op or segment"
                            ))
                        }
                    };
                    (n, kind)
                }
                None => (
                    inner,
                    match inner {
                        "type" => CapKind::Type,
                        "id" | "vid" | "patient" => CapKind::Id,
                        "op" => CapKind::Op,
                        _ => CapKind::Segment,
                    },
                ),
            };
            let name_ok = name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !name_ok {
                return Err(format!("capture name `{name}` must match [a-z_][a-z0-9_]*"));
            }
            if name == "patient" && kind != CapKind::Id {
                return Err("the {patient} capture is always a FHIR id".into());
            }
            if t.names.iter().any(|n| n == name) {
                return Err(format!("capture `{name}` appears twice"));
            }
            if t.names.len() == MAX_CAPTURES {
                return Err(format!("more than {MAX_CAPTURES} captures"));
            }
            let idx = t.names.len();
            t.names.push(name.to_string());
            if rest {
                if i + 1 != parts.len() {
                    return Err("a {*rest} capture must be the last segment".into());
                }
                if name == "patient" {
                    return Err("{*patient} is not allowed".into());
                }
                t.segs.push(Seg::Rest { idx });
            } else {
                t.segs.push(Seg::Cap { idx, kind });
            }
        } else {
            if *part == "." || *part == ".." || !part.bytes().all(|b| is_path_char(b) && b != b'%')
            {
                return Err(format!(
                    "literal segment {part:?} must be a plain path segment (no '{{', '%', ';', dots)"
                ));
            }
            t.segs.push(Seg::Lit(part.to_string()));
        }
    }
    Ok(t)
}

type CompileError = (&'static str, String);

fn compile_rule(def: RuleDef) -> Result<Rule, CompileError> {
    let name_ok = !def.name.is_empty()
        && def.name.len() <= 64
        && def.name.as_bytes()[0].is_ascii_alphanumeric()
        && def
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !name_ok {
        return Err((
            "name",
            "must match [A-Za-z0-9][A-Za-z0-9._-]* (at most 64)".into(),
        ));
    }
    if def.name == UNMATCHED_RULE || def.name == REJECTED_RULE {
        return Err(("name", format!("`{}` is reserved", def.name)));
    }
    let methods = if def.methods.iter().any(|m| m == "*") {
        if def.methods.len() != 1 {
            return Err(("methods", "\"*\" must be the only entry".into()));
        }
        Methods::Any
    } else {
        if def.methods.is_empty() {
            return Err(("methods", "at least one method is needed".into()));
        }
        let mut seen = HashSet::new();
        for m in &def.methods {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(("methods", format!("{m:?} is not an upper-case method name")));
            }
            if !seen.insert(m) {
                return Err(("methods", format!("{m} is listed twice")));
            }
        }
        Methods::List(def.methods.clone())
    };
    let template = parse_template(&def.path).map_err(|r| ("path", r))?;
    if def.interaction == InteractionKind::Unclassified {
        return Err((
            "interaction",
            "`unclassified` is reserved for unmatched requests".into(),
        ));
    }

    let type_cap = template.capture("type");
    let resource_type = match (&def.resource_type, type_cap) {
        (Some(_), Some(_)) => {
            return Err((
                "resource_type",
                "the template already has a {type} capture".into(),
            ))
        }
        (Some(t), None) => {
            if !is_resource_type(t) {
                return Err((
                    "resource_type",
                    format!("{t:?} is not a resource type name"),
                ));
            }
            TypeFrom::Literal(t.clone())
        }
        (None, Some(i)) => TypeFrom::Capture(i),
        (None, None) => TypeFrom::None,
    };
    let resource_id = match &def.resource_id {
        Some(n) => Some(template.capture(n).ok_or((
            "resource_id",
            format!("the template has no {{{n}}} capture"),
        ))?),
        None => template.capture("id"),
    };
    let patient_cap = template.capture("patient");
    let op_cap = template.capture("op");
    if let Some(i) = op_cap {
        if !template
            .segs
            .iter()
            .any(|s| matches!(s, Seg::Cap { idx, kind: CapKind::Op } if *idx == i))
        {
            return Err(("path", "the {op} capture must be of kind op".into()));
        }
    }
    let mut patient_pairs = Vec::new();
    for w in template.segs.windows(2) {
        match (&w[0], &w[1]) {
            (
                Seg::Lit(l),
                Seg::Cap {
                    idx,
                    kind: CapKind::Id,
                },
            ) if l == "Patient" => patient_pairs.push(PatientPair::Literal { id: *idx }),
            (
                Seg::Cap {
                    idx: ty,
                    kind: CapKind::Type,
                },
                Seg::Cap {
                    idx,
                    kind: CapKind::Id,
                },
            ) => patient_pairs.push(PatientPair::TypeCapture { ty: *ty, id: *idx }),
            _ => {}
        }
    }
    let patient_header = match &def.patient_header {
        Some(h) => Some(
            http::HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| ("patient_header", format!("{h:?} is not a header name")))?,
        ),
        None => None,
    };
    if let Some(q) = &def.patient_query {
        if q.is_empty() {
            return Err(("patient_query", "must not be empty".into()));
        }
    }
    if def.search && matches!(resource_type, TypeFrom::None) {
        return Err(("search", "needs a {type} capture or resource_type".into()));
    }
    if def.form_body && !def.search {
        return Err(("form_body", "needs search = true".into()));
    }
    let has_source = patient_cap.is_some()
        || def.patient_query.is_some()
        || def.patient_header.is_some()
        || def.search
        || def.inspect_body
        || def.inspect_response
        || !patient_pairs.is_empty();
    match def.attribution {
        AttributionClaim::None if has_source => {
            return Err((
                "attribution",
                "`none` (no patient data) but the rule names patients (a {patient} or \
                 Patient/{id} in the path, patient_query, patient_header, search, \
                 inspect_body or inspect_response)"
                    .into(),
            ));
        }
        AttributionClaim::Complete if !has_source => {
            return Err(("attribution", "`complete` needs a patient source".into()));
        }
        _ => {}
    }
    Ok(Rule {
        name: def.name,
        methods,
        template,
        action: def.action,
        interaction: def.interaction,
        claim: def.attribution,
        resource_type,
        resource_id,
        patient_cap,
        patient_pairs,
        op_cap,
        patient_query: def.patient_query,
        patient_header,
        search: def.search,
        form_body: def.form_body,
        inspect_body: def.inspect_body,
        inspect_response: def.inspect_response,
        description: def.description,
    })
}

fn compile_compartment(ty: &str, def: &CompartmentDef) -> Result<TypeParams, String> {
    if !is_resource_type(ty) {
        return Err(format!("{ty:?} is not a resource type name"));
    }
    let param_ok = |p: &String| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let mut params: HashMap<String, ParamInfo> = HashMap::new();
    for p in &def.refs {
        if !param_ok(p) {
            return Err(format!("refs: {p:?} is not a search parameter name"));
        }
        if params.insert(p.clone(), ParamInfo::default()).is_some() {
            return Err(format!("refs: {p} is listed twice"));
        }
    }
    for (key, list) in [
        ("compartment", &def.compartment),
        ("bare", &def.bare),
        ("pin", &def.pin),
    ] {
        for p in list {
            let Some(info) = params.get_mut(p) else {
                return Err(format!("{key}: {p} is not in refs"));
            };
            match key {
                "bare" => info.bare = true,
                "pin" => info.pin = true,
                _ => {}
            }
        }
    }
    let compartment_pins =
        !def.compartment.is_empty() && def.compartment.iter().all(|p| params[p].pin);
    Ok(TypeParams {
        def: def.clone(),
        params,
        compartment_pins,
    })
}

/// Whether `a` (earlier) matches every request `b` (later) would: then `b` is unreachable.
fn shadows(a: &Rule, b: &Rule) -> bool {
    if !a.methods.covers(&b.methods) {
        return false;
    }
    let (sa, sb) = (&a.template.segs, &b.template.segs);
    let a_rest = matches!(sa.last(), Some(Seg::Rest { .. }));
    let b_rest = matches!(sb.last(), Some(Seg::Rest { .. }));
    if a_rest {
        // a: n-1 fixed segments then one or more; b must have at least n segments.
        if sb.len() < sa.len() {
            return false;
        }
    } else if b_rest || sa.len() != sb.len() {
        return false;
    }
    for (i, x) in sa.iter().enumerate() {
        let y = &sb[i];
        let covered = match (x, y) {
            (Seg::Rest { .. }, _) => return true,
            (_, Seg::Rest { .. }) => false,
            (Seg::Lit(p), Seg::Lit(q)) => p == q,
            (Seg::Lit(_), Seg::Cap { .. }) => false,
            (Seg::Cap { kind, .. }, Seg::Lit(q)) => cap_accepts(*kind, q),
            (Seg::Cap { kind: k1, .. }, Seg::Cap { kind: k2, .. }) => {
                k1 == k2 || *k1 == CapKind::Segment
            }
        };
        if !covered {
            return false;
        }
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    /// The shipped rule file, loaded once for all tests.
    fn fhir() -> &'static RuleSet {
        static RULES: std::sync::OnceLock<RuleSet> = std::sync::OnceLock::new();
        RULES.get_or_init(|| {
            let text = std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/fhir-r4.toml"),
            )
            .unwrap();
            RuleSet::from_toml_str(&text, UnmatchedPolicy::Journal).unwrap()
        })
    }

    fn get(rs: &RuleSet, method: &str, target: &str) -> Classification {
        rs.classify(method, target, &HeaderMap::new()).unwrap()
    }

    fn ids(c: &Classification) -> Vec<(&str, PatientSource)> {
        c.patients
            .iter()
            .map(|p| (p.id.as_str(), p.source))
            .collect()
    }

    fn reject(rs: &RuleSet, target: &str) -> &'static str {
        match rs.classify("GET", target, &HeaderMap::new()) {
            Err(e) => e.reason(),
            Ok(c) => panic!("{target} was accepted as {c:?}"),
        }
    }

    /// One FHIR case: rule, action, interaction, type, id, patients, attribution.
    #[allow(clippy::too_many_arguments)]
    fn check(
        rs: &RuleSet,
        method: &str,
        target: &str,
        rule: &str,
        action: Action,
        interaction: InteractionKind,
        ty: Option<&str>,
        id: Option<&str>,
        patients: &[&str],
        attribution: Attribution,
    ) -> Classification {
        let c = get(rs, method, target);
        assert_eq!(c.rule, rule, "{method} {target}");
        assert!(c.matched);
        assert_eq!(c.action, action, "{method} {target}");
        assert_eq!(c.interaction, interaction, "{method} {target}");
        assert_eq!(c.resource_type.as_deref(), ty, "{method} {target}");
        assert_eq!(c.resource_id.as_deref(), id, "{method} {target}");
        let got: Vec<&str> = c.patients.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(got, patients, "{method} {target}");
        assert_eq!(c.attribution, attribution, "{method} {target}");
        c
    }

    use Action::*;
    use Attribution::{Complete, Partial};
    use InteractionKind as I;

    #[test]
    #[rustfmt::skip] // one case per line reads as a table
    fn fhir_instance_interactions_on_patient_are_complete() {
        let rs = fhir();
        let p = Some("Patient");
        let c = check(rs, "GET", "/fhir/Patient/123", "fhir-patient-read", R, I::Read, p, Some("123"), &["123"], Complete);
        assert_eq!(ids(&c), [("123", PatientSource::Path)]);
        assert_eq!(c.path, "/fhir/Patient/123");
        assert_eq!(c.query, None);
        check(rs, "HEAD", "/fhir/Patient/123", "fhir-patient-read", R, I::Read, p, Some("123"), &["123"], Complete);
        check(rs, "GET", "/fhir/Patient/123/_history/2", "fhir-patient-vread", R, I::Vread, p, Some("123"), &["123"], Complete);
        check(rs, "GET", "/fhir/Patient/123/_history", "fhir-patient-history", R, I::History, p, Some("123"), &["123"], Complete);
        check(rs, "PUT", "/fhir/Patient/123", "fhir-patient-update", U, I::Update, p, Some("123"), &["123"], Complete);
        check(rs, "PATCH", "/fhir/Patient/123", "fhir-patient-patch", U, I::Patch, p, Some("123"), &["123"], Complete);
        check(rs, "DELETE", "/fhir/Patient/123", "fhir-patient-delete", D, I::Delete, p, Some("123"), &["123"], Complete);
        // A trailing slash is ignored for matching; the recorded path keeps it.
        let c = check(rs, "GET", "/fhir/Patient/123/", "fhir-patient-read", R, I::Read, p, Some("123"), &["123"], Complete);
        assert_eq!(c.path, "/fhir/Patient/123/");
    }

    #[test]
    #[rustfmt::skip] // one case per line reads as a table
    fn fhir_instance_interactions_on_other_types_are_partial() {
        let rs = fhir();
        let o = Some("Observation");
        check(rs, "GET", "/fhir/Observation/abc", "fhir-read", R, I::Read, o, Some("abc"), &[], Partial);
        check(rs, "GET", "/fhir/Observation/abc/_history/3", "fhir-vread", R, I::Vread, o, Some("abc"), &[], Partial);
        check(rs, "GET", "/fhir/Observation/abc/_history", "fhir-instance-history", R, I::History, o, Some("abc"), &[], Partial);
        check(rs, "GET", "/fhir/Observation/_history", "fhir-type-history", R, I::History, o, None, &[], Partial);
        check(rs, "GET", "/fhir/_history", "fhir-system-history", R, I::History, None, None, &[], Partial);
        check(rs, "POST", "/fhir/Observation", "fhir-create", C, I::Create, o, None, &[], Partial);
        check(rs, "POST", "/fhir/Patient", "fhir-create", C, I::Create, Some("Patient"), None, &[], Partial);
        check(rs, "PUT", "/fhir/Observation/abc", "fhir-update", U, I::Update, o, Some("abc"), &[], Partial);
        check(rs, "PATCH", "/fhir/Observation/abc", "fhir-patch", U, I::Patch, o, Some("abc"), &[], Partial);
        check(rs, "DELETE", "/fhir/Observation/abc", "fhir-delete", D, I::Delete, o, Some("abc"), &[], Partial);
    }

    #[test]
    #[rustfmt::skip] // one case per line reads as a table
    fn fhir_capabilities_batch_and_system_search() {
        let rs = fhir();
        let c = check(rs, "GET", "/fhir/metadata", "fhir-capabilities", R, I::Capabilities, None, None, &[], Attribution::None);
        assert!(c.patients.is_empty());
        check(rs, "GET", "/fhir/metadata?_summary=true", "fhir-capabilities", R, I::Capabilities, None, None, &[], Attribution::None);
        check(rs, "POST", "/fhir", "fhir-batch-transaction", E, I::Transaction, None, None, &[], Partial);
        check(rs, "POST", "/fhir/", "fhir-batch-transaction", E, I::Transaction, None, None, &[], Partial);
        check(rs, "GET", "/fhir?_type=Observation&patient=1", "fhir-system-search", R, I::Search, None, None, &[], Partial);
        check(rs, "POST", "/fhir/_search", "fhir-system-search-post", R, I::Search, None, None, &[], Partial);
    }

    #[test]
    #[rustfmt::skip] // one case per line reads as a table
    fn fhir_operations_take_their_action_from_the_table() {
        let rs = fhir();
        let p = Some("Patient");
        check(rs, "GET", "/fhir/Patient/123/$everything", "fhir-patient-operation", R, I::Operation, p, Some("123"), &["123"], Partial);
        check(rs, "POST", "/fhir/Patient/123/$everything", "fhir-patient-operation", R, I::Operation, p, Some("123"), &["123"], Partial);
        check(rs, "POST", "/fhir/Patient/123/$meta-add", "fhir-patient-operation", U, I::Operation, p, Some("123"), &["123"], Partial);
        check(rs, "POST", "/fhir/Patient/123/$custom-thing", "fhir-patient-operation", E, I::Operation, p, Some("123"), &["123"], Partial);
        check(rs, "POST", "/fhir/$process-message", "fhir-system-operation", E, I::Operation, None, None, &[], Partial);
        check(rs, "GET", "/fhir/$meta", "fhir-system-operation", R, I::Operation, None, None, &[], Partial);
        check(rs, "POST", "/fhir/Observation/$validate", "fhir-type-operation", R, I::Operation, Some("Observation"), None, &[], Partial);
        check(rs, "GET", "/fhir/Patient/$everything", "fhir-type-operation", R, I::Operation, p, None, &[], Partial);
        // A type-level operation's query is read like a search, but never claims complete.
        check(rs, "GET", "/fhir/Observation/$lastn?patient=123&code=x", "fhir-type-operation", R, I::Operation, Some("Observation"), None, &["123"], Partial);
        check(rs, "POST", "/fhir/Observation/abc/$meta-delete", "fhir-instance-operation", U, I::Operation, Some("Observation"), Some("abc"), &[], Partial);
        check(rs, "GET", "/fhir/Observation/abc/_history/2/$meta", "fhir-version-operation", R, I::Operation, Some("Observation"), Some("abc"), &[], Partial);
        check(rs, "POST", "/fhir/Group/g1/$everything", "fhir-instance-operation", R, I::Operation, Some("Group"), Some("g1"), &[], Partial);
    }

    #[test]
    #[rustfmt::skip] // one case per line reads as a table
    fn fhir_compartment_searches() {
        let rs = fhir();
        let c = check(rs, "GET", "/fhir/Patient/123/Observation?code=x", "fhir-patient-compartment-search", R, I::Search, Some("Observation"), None, &["123"], Partial);
        assert_eq!(ids(&c), [("123", PatientSource::Path)]);
        // Every Encounter compartment parameter is the subject: the compartment is the patient's.
        check(rs, "GET", "/fhir/Patient/123/Encounter", "fhir-patient-compartment-search", R, I::Search, Some("Encounter"), None, &["123"], Complete);
        // Observation's compartment includes `performer`: other patients' results can appear.
        check(rs, "GET", "/fhir/Patient/123/Observation", "fhir-patient-compartment-search", R, I::Search, Some("Observation"), None, &["123"], Partial);
        // ... unless the query pins the subject too.
        check(rs, "GET", "/fhir/Patient/123/Observation?subject=Patient/123", "fhir-patient-compartment-search", R, I::Search, Some("Observation"), None, &["123"], Complete);
        check(rs, "GET", "/fhir/Patient/123/Encounter?_include=Encounter:participant", "fhir-patient-compartment-search", R, I::Search, Some("Encounter"), None, &["123"], Partial);
        check(rs, "GET", "/fhir/Patient/123/*", "fhir-patient-compartment-all", R, I::Search, None, None, &["123"], Partial);
        check(rs, "GET", "/fhir/Encounter/e1/Observation?patient=9", "fhir-compartment-search", R, I::Search, Some("Observation"), None, &["9"], Complete);
        check(rs, "GET", "/fhir/Encounter/e1/Observation", "fhir-compartment-search", R, I::Search, Some("Observation"), None, &[], Partial);
    }

    #[test]
    #[rustfmt::skip] // one case per line reads as a table
    fn fhir_type_searches_read_the_query() {
        let rs = fhir();
        let o = Some("Observation");
        let s = "fhir-search";
        let c = check(rs, "GET", "/fhir/Observation?patient=123", s, R, I::Search, o, None, &["123"], Complete);
        assert_eq!(ids(&c), [("123", PatientSource::Query)]);
        assert_eq!(c.query.as_deref(), Some("patient=123"));
        check(rs, "GET", "/fhir/Observation?patient=Patient/123", s, R, I::Search, o, None, &["123"], Complete);
        check(rs, "GET", "/fhir/Observation?patient=Patient%2F123", s, R, I::Search, o, None, &["123"], Complete);
        check(rs, "GET", "/fhir/Observation?subject=Patient/123", s, R, I::Search, o, None, &["123"], Complete);
        check(rs, "GET", "/fhir/Observation?subject:Patient=123", s, R, I::Search, o, None, &["123"], Complete);
        check(rs, "GET", "/fhir/Observation?subject=https://ehr.example.org/fhir/Patient/123", s, R, I::Search, o, None, &["123"], Complete);
        check(rs, "GET", "/fhir/Observation?subject=Patient/123/_history/4", s, R, I::Search, o, None, &["123"], Complete);
        check(rs, "GET", "/fhir/Observation?patient=1,2,Patient/3&code=x", s, R, I::Search, o, None, &["1", "2", "3"], Complete);
        check(rs, "GET", "/fhir/Observation?patient=1&patient=1", s, R, I::Search, o, None, &["1"], Complete);
        // Ambiguous bare id on a parameter that also targets Group, Device, Location.
        check(rs, "GET", "/fhir/Observation?subject=123", s, R, I::Search, o, None, &[], Partial);
        // One item of the OR list is not a patient: the others still count, but no pin.
        check(rs, "GET", "/fhir/Observation?subject=Patient/1,Group/2", s, R, I::Search, o, None, &["1"], Partial);
        // `performer` names a patient but does not confine results to it.
        check(rs, "GET", "/fhir/Observation?performer=Patient/7", s, R, I::Search, o, None, &["7"], Partial);
        check(rs, "GET", "/fhir/Observation?performer=7", s, R, I::Search, o, None, &[], Partial);
        check(rs, "GET", "/fhir/Observation?code=x", s, R, I::Search, o, None, &[], Partial);
        check(rs, "GET", "/fhir/Observation", s, R, I::Search, o, None, &[], Partial);
        // Modifiers other than :Patient, chains and escapes name no patient.
        check(rs, "GET", "/fhir/Observation?patient:not=123", s, R, I::Search, o, None, &[], Partial);
        check(rs, "GET", "/fhir/Observation?patient:missing=false", s, R, I::Search, o, None, &[], Partial);
        check(rs, "GET", "/fhir/Observation?subject:Group=123", s, R, I::Search, o, None, &[], Partial);
        check(rs, "GET", "/fhir/Observation?subject.name=smith", s, R, I::Search, o, None, &[], Partial);
        check(rs, "GET", "/fhir/Observation?subject:Patient.name=smith", s, R, I::Search, o, None, &[], Partial);
        check(rs, "GET", "/fhir/Observation?patient=12\\,3", s, R, I::Search, o, None, &[], Partial);
        check(rs, "GET", "/fhir/Observation?patient=", s, R, I::Search, o, None, &[], Partial);
        check(rs, "GET", "/fhir/Observation?patient=a_b", s, R, I::Search, o, None, &[], Partial);
        check(rs, "GET", "/fhir/Observation?patient=evil.org/Patient/1", s, R, I::Search, o, None, &[], Partial);
        check(rs, "GET", "/fhir/Observation?patient=http:///Patient/1", s, R, I::Search, o, None, &[], Partial);
        // Widening parameters and `;` keep what was found but never claim complete.
        check(rs, "GET", "/fhir/Observation?patient=123&_include=Observation:performer", s, R, I::Search, o, None, &["123"], Partial);
        check(rs, "GET", "/fhir/Observation?patient=123&_revinclude:iterate=Provenance:target", s, R, I::Search, o, None, &["123"], Partial);
        check(rs, "GET", "/fhir/Observation?patient=123;_include=x", s, R, I::Search, o, None, &[], Partial);
        check(rs, "GET", "/fhir/Observation?code=x;y&patient=123", s, R, I::Search, o, None, &["123"], Partial);
        // Other resource types from the table.
        check(rs, "GET", "/fhir/Encounter?patient=5", s, R, I::Search, Some("Encounter"), None, &["5"], Complete);
        check(rs, "GET", "/fhir/AllergyIntolerance?asserter=Patient/5", s, R, I::Search, Some("AllergyIntolerance"), None, &["5"], Partial);
        check(rs, "GET", "/fhir/Condition?subject=Patient/5", s, R, I::Search, Some("Condition"), None, &["5"], Complete);
        check(rs, "GET", "/fhir/Medication?code=x", s, R, I::Search, Some("Medication"), None, &[], Partial);
    }

    #[test]
    #[rustfmt::skip] // one case per line reads as a table
    fn fhir_patient_type_search_uses_id_and_link() {
        let rs = fhir();
        let p = Some("Patient");
        let s = "fhir-search";
        check(rs, "GET", "/fhir/Patient?_id=1,2", s, R, I::Search, p, None, &["1", "2"], Complete);
        check(rs, "GET", "/fhir/Patient?_id=1&_id=2", s, R, I::Search, p, None, &["1", "2"], Complete);
        check(rs, "GET", "/fhir/Patient?_id=1&_revinclude=Observation:subject", s, R, I::Search, p, None, &["1"], Partial);
        check(rs, "GET", "/fhir/Patient?_id:not=1", s, R, I::Search, p, None, &[], Partial);
        check(rs, "GET", "/fhir/Patient?name=smith", s, R, I::Search, p, None, &[], Partial);
        check(rs, "GET", "/fhir/Patient?link=Patient/9", s, R, I::Search, p, None, &["9"], Partial);
        check(rs, "GET", "/fhir/Patient?link=9", s, R, I::Search, p, None, &[], Partial);
    }

    #[test]
    #[rustfmt::skip] // one case per line reads as a table
    fn fhir_conditional_writes() {
        let rs = fhir();
        let o = Some("Observation");
        // The body of an update may name any patient: never complete.
        check(rs, "PUT", "/fhir/Observation?patient=123&identifier=x", "fhir-conditional-update", U, I::Update, o, None, &["123"], Partial);
        check(rs, "PATCH", "/fhir/Observation?patient=123", "fhir-conditional-patch", U, I::Patch, o, None, &["123"], Partial);
        check(rs, "DELETE", "/fhir/Observation?patient=123", "fhir-conditional-delete", D, I::Delete, o, None, &["123"], Complete);
        check(rs, "DELETE", "/fhir/Observation?code=x", "fhir-conditional-delete", D, I::Delete, o, None, &[], Partial);
        check(rs, "DELETE", "/fhir/Patient?_id=4", "fhir-conditional-delete", D, I::Delete, Some("Patient"), None, &["4"], Complete);
    }

    #[test]
    #[rustfmt::skip] // one case per line reads as a table
    fn form_body_search_adds_body_patients() {
        let rs = fhir();
        let mut c = check(rs, "POST", "/fhir/Observation/_search?_count=10", "fhir-search-post", R, I::Search, Some("Observation"), None, &[], Partial);
        assert!(c.needs_form_body);
        rs.attribute_form_body(&mut c, b"patient=Patient%2F123&code=x");
        assert!(!c.needs_form_body);
        assert_eq!(ids(&c), [("123", PatientSource::Body)]);
        assert_eq!(c.attribution, Complete);

        // Query and body combine; the query's patients come first.
        let mut c = get(rs, "POST", "/fhir/Observation/_search?patient=1");
        assert_eq!(c.attribution, Partial, "partial until the body is read");
        assert_eq!(ids(&c), [("1", PatientSource::Query)]);
        rs.attribute_form_body(&mut c, b"patient=2&_include=Observation:subject");
        assert_eq!(ids(&c), [("1", PatientSource::Query), ("2", PatientSource::Body)]);
        assert_eq!(c.attribution, Partial);

        // A body without patients, and a body over the limit.
        let mut c = get(rs, "POST", "/fhir/Observation/_search");
        rs.attribute_form_body(&mut c, b"code=x");
        assert_eq!((c.patients.len(), c.attribution), (0, Partial));
        let mut c = get(rs, "POST", "/fhir/Observation/_search");
        let big = format!("patient=1&pad={}", "x".repeat(rs.max_form_body_bytes() as usize));
        rs.attribute_form_body(&mut c, big.as_bytes());
        assert_eq!((c.patients.len(), c.attribution), (0, Partial));

        // Compartment search by POST keeps the path patient.
        let mut c = get(rs, "POST", "/fhir/Patient/9/Encounter/_search");
        assert_eq!(c.rule, "fhir-patient-compartment-search-post");
        assert_eq!(c.attribution, Partial);
        rs.attribute_form_body(&mut c, b"status=finished");
        assert_eq!(ids(&c), [("9", PatientSource::Path)]);
        assert_eq!(c.attribution, Complete);

        // A classification without a form body is left alone.
        let mut c = get(rs, "GET", "/fhir/Patient/1");
        let before = c.clone();
        rs.attribute_form_body(&mut c, b"patient=2");
        assert_eq!(c, before);
    }

    #[test]
    #[rustfmt::skip] // one case per line reads as a table
    fn malformed_segments_are_not_matched_as_types_or_ids() {
        let rs = fhir();
        for t in [
            "/fhir/Patient/a_b",
            "/fhir/Patient/~x",
            "/fhir/patient/123",
            "/fhir/P/123",
            "/fhir/Patient/123/observation",
            &format!("/fhir/Patient/{}", "1".repeat(65)),
            "/fhir/Patient/%C3%A9",
            "/fhir/Patient/123/_history/2/3",
            "/fhir/Patient/$",
        ] {
            let c = get(rs, "GET", t);
            assert!(!c.matched, "{t} matched {}", c.rule);
            assert!(c.patients.is_empty());
        }
        let long = "1".repeat(64);
        check(rs, "GET", &format!("/fhir/Patient/{long}"), "fhir-patient-read", R, I::Read, Some("Patient"), Some(&long), &[&long], Complete);
        // Unreserved characters may be percent-encoded: the decoded path is what matches.
        check(rs, "GET", "/fhir/Pat%69ent/1%32%33", "fhir-patient-read", R, I::Read, Some("Patient"), Some("123"), &["123"], Complete);
    }

    #[test]
    fn path_attacks_are_rejected() {
        let rs = fhir();
        let cases = [
            ("/fhir/Patient/123%2F..%2F456", "encoded_slash"),
            ("/fhir/Patient/123%2f456", "encoded_slash"),
            ("/fhir/Patient/123%5C..%5C456", "encoded_slash"),
            ("/fhir/Patient/123\\..\\456", "backslash"),
            ("/fhir/Patient/123/../456", "dot_segment"),
            ("/fhir/Patient/123/./456", "dot_segment"),
            ("/fhir/Patient/%2e%2e/456", "dot_segment"),
            ("/fhir/Patient/.%2E/456", "dot_segment"),
            ("/fhir/Patient/%2e", "dot_segment"),
            ("/fhir/..", "dot_segment"),
            ("/fhir/Patient/123%252F..%252F456", "double_encoding"),
            ("/fhir/Patient/%25", "double_encoding"),
            ("/fhir/Patient/123;x=456", "matrix_param"),
            ("/fhir;x/Patient/123", "matrix_param"),
            ("/fhir/Patient/123%3Bx=456", "matrix_param"),
            ("/fhir/Patient/123%00", "nul"),
            ("/fhir/Patient/123\0", "nul"),
            ("/fhir//Patient/123", "empty_segment"),
            ("//fhir/Patient/123", "empty_segment"),
            ("/fhir/Patient//", "empty_segment"),
            ("/fhir/Patient/12%3", "invalid_percent_encoding"),
            ("/fhir/Patient/12%zz", "invalid_percent_encoding"),
            ("/fhir/Patient/12%", "invalid_percent_encoding"),
            ("/fhir/Patient/%C0%AE%C0%AE", "invalid_utf8"),
            ("/fhir/Patient/%FF", "invalid_utf8"),
            ("/fhir/Patient/1%0A", "control_character"),
            ("/fhir/Patient/1\t", "control_character"),
            ("/fhir/Patient/%7F", "control_character"),
            ("/fhir/Patient/%C2%85", "control_character"),
            ("/fhir/Patient/1 2", "invalid_character"),
            ("/fhir/Patient/1#2", "invalid_character"),
            ("/fhir/Patient/é", "invalid_character"),
            ("fhir/Patient/1", "not_origin_form"),
            ("http://evil/fhir/Patient/1", "not_origin_form"),
            ("*", "not_origin_form"),
            ("", "not_origin_form"),
        ];
        for (target, reason) in cases {
            assert_eq!(reject(rs, target), reason, "{target:?}");
        }
        let long = format!("/fhir/{}", "a".repeat(MAX_PATH_BYTES));
        assert_eq!(reject(rs, &long), "too_long");
        // The query is not part of the path: a `/` or `..` there is data.
        assert!(rs
            .classify("GET", "/fhir/Observation?x=../..%2F", &HeaderMap::new())
            .is_ok());
        // Every reason code is listed for metrics.
        for (target, reason) in cases {
            let _ = target;
            assert!(PathRejection::REASONS.contains(&reason));
        }
        // Messages carry offsets, never the path.
        let e = rs
            .classify("GET", "/fhir/Patient/secret%2F", &HeaderMap::new())
            .unwrap_err();
        assert_eq!(e, PathRejection::EncodedSlash { at: 20 });
        assert!(!e.to_string().contains("secret"));
    }

    const GENERIC: &str = r#"
        base_paths = ["/api/v2"]

        [[rule]]
        name = "notes-read"
        methods = ["GET"]
        path = "/patients/{patient}/notes/{id}"
        action = "R"
        interaction = "read"
        attribution = "complete"
        resource_type = "Note"

        [[rule]]
        name = "notes-search"
        methods = ["GET"]
        path = "/notes"
        action = "R"
        interaction = "search"
        attribution = "complete"
        patient_query = "patient_id"

        [[rule]]
        name = "chart"
        methods = ["GET", "POST"]
        path = "/chart/{section}"
        action = "R"
        interaction = "read"
        attribution = "complete"
        patient_header = "X-Patient-Id"

        [[rule]]
        name = "files"
        methods = ["*"]
        path = "/files/{*rest}"
        action = "E"
        interaction = "operation"
    "#;

    #[test]
    fn generic_rules_capture_query_and_header() {
        let rs = RuleSet::from_toml_str(GENERIC, UnmatchedPolicy::Journal).unwrap();
        let c = get(&rs, "GET", "/api/v2/patients/p-1/notes/n7");
        assert_eq!(
            (c.rule.as_str(), c.action, c.interaction),
            ("notes-read", R, I::Read)
        );
        assert_eq!(
            (c.resource_type.as_deref(), c.resource_id.as_deref()),
            (Some("Note"), Some("n7"))
        );
        assert_eq!(ids(&c), [("p-1", PatientSource::Path)]);
        assert_eq!(c.attribution, Complete);

        let c = get(&rs, "GET", "/api/v2/notes?patient_id=7,8&x=1");
        assert_eq!(
            ids(&c),
            [("7", PatientSource::Query), ("8", PatientSource::Query)]
        );
        assert_eq!(c.attribution, Complete);
        let c = get(&rs, "GET", "/api/v2/notes?x=1");
        assert_eq!((c.patients.len(), c.attribution), (0, Partial));
        let c = get(&rs, "GET", "/api/v2/notes?patient_id=7,bad_id");
        assert_eq!(ids(&c), [("7", PatientSource::Query)]);
        assert_eq!(c.attribution, Partial);

        let mut h = HeaderMap::new();
        h.insert("x-patient-id", HeaderValue::from_static("42, 43"));
        let c = rs.classify("POST", "/api/v2/chart/labs", &h).unwrap();
        assert_eq!(
            ids(&c),
            [("42", PatientSource::Header), ("43", PatientSource::Header)]
        );
        assert_eq!(c.attribution, Complete);
        let c = get(&rs, "GET", "/api/v2/chart/labs");
        assert_eq!(
            (c.rule.as_str(), c.patients.len(), c.attribution),
            ("chart", 0, Partial)
        );
        let mut h = HeaderMap::new();
        h.insert("x-patient-id", HeaderValue::from_static("../1"));
        let c = rs.classify("GET", "/api/v2/chart/labs", &h).unwrap();
        assert_eq!((c.patients.len(), c.attribution), (0, Partial));

        let c = get(&rs, "DELETE", "/api/v2/files/a/b/c");
        assert_eq!((c.rule.as_str(), c.action), ("files", E));
        assert!(!get(&rs, "DELETE", "/api/v2/files").matched);

        // Outside the base path, wrong method, unknown route: unmatched.
        for (m, t) in [
            ("GET", "/api/v3/notes"),
            ("DELETE", "/api/v2/notes"),
            ("GET", "/api/v2/other"),
        ] {
            let c = get(&rs, m, t);
            assert!(!c.matched);
            assert_eq!(c.rule, UNMATCHED_RULE);
            assert_eq!(
                (c.action, c.interaction, c.attribution),
                (E, I::Unclassified, Partial)
            );
        }
    }

    #[test]
    fn method_override_headers_are_never_matched() {
        let rs = fhir();
        for h in METHOD_OVERRIDE_HEADERS {
            let mut headers = HeaderMap::new();
            headers.insert(*h, HeaderValue::from_static("GET"));
            let c = rs.classify("POST", "/fhir/Patient", &headers).unwrap();
            assert!(!c.matched, "{h}");
            assert_eq!(c.interaction, InteractionKind::Unclassified);
        }
    }

    #[test]
    fn base_paths_and_unmatched_policy() {
        let rs = fhir();
        assert_eq!(rs.unmatched_policy(), UnmatchedPolicy::Journal);
        for t in [
            "/Patient/1",
            "/fhirx/Patient/1",
            "/FHIR/Patient/1",
            "/api/fhir/Patient/1",
        ] {
            let c = get(rs, "GET", t);
            assert!(!c.matched, "{t}");
            assert!(!rs.denies(&c));
        }
        let c = get(rs, "OPTIONS", "/fhir/Patient/1");
        assert!(!c.matched);
        assert_eq!(c.path, "/fhir/Patient/1");

        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/fhir-r4.toml"),
        )
        .unwrap();
        let deny = RuleSet::from_toml_str(&text, UnmatchedPolicy::Deny).unwrap();
        let c = get(&deny, "GET", "/other");
        assert!(deny.denies(&c));
        assert!(!deny.denies(&get(&deny, "GET", "/fhir/metadata")));

        // Base paths can be overridden per file from the config; several bases, longest first.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut cfg = RulesConfig::default();
        cfg.base_paths.insert(
            PathBuf::from(DEFAULT_RULE_FILE),
            vec!["/".into(), "/api/FHIR/R4".into()],
        );
        let moved = RuleSet::load(&cfg, dir).unwrap();
        let read = |t: &str| get(&moved, "GET", t).rule;
        assert_eq!(read("/api/FHIR/R4/Patient/1"), "fhir-patient-read");
        assert_eq!(read("/Patient/1"), "fhir-patient-read");
        assert_eq!(read("/fhir/Patient/1"), UNMATCHED_RULE);
    }

    #[test]
    fn first_match_wins_and_shadowed_rules_are_refused() {
        let two = r#"
            base_paths = ["/"]
            [[rule]]
            name = "specific"
            methods = ["GET"]
            path = "/a/{id}"
            action = "R"
            interaction = "read"
            [[rule]]
            name = "general"
            methods = ["GET", "POST"]
            path = "/{x}/{id}"
            action = "E"
            interaction = "operation"
        "#;
        let rs = RuleSet::from_toml_str(two, UnmatchedPolicy::Journal).unwrap();
        assert_eq!(get(&rs, "GET", "/a/1").rule, "specific");
        assert_eq!(get(&rs, "POST", "/a/1").rule, "general");
        assert_eq!(get(&rs, "GET", "/b/1").rule, "general");
        assert_eq!(
            rs.rules()
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
            ["specific", "general"]
        );

        let shadowed = r#"
            base_paths = ["/fhir"]
            [[rule]]
            name = "fhir-read"
            methods = ["GET", "HEAD"]
            path = "/{type}/{id}"
            action = "R"
            interaction = "read"
            [[rule]]
            name = "fhir-patient-read"
            methods = ["GET"]
            path = "/Patient/{patient}"
            resource_type = "Patient"
            resource_id = "patient"
            action = "R"
            interaction = "read"
            attribution = "complete"
        "#;
        let e = RuleSet::from_toml_str(shadowed, UnmatchedPolicy::Journal).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("fhir-patient-read") && msg.contains("fhir-read"),
            "{msg}"
        );
        assert_eq!(e.category(), "invalid");
    }

    #[test]
    fn patient_pairs_attribute_even_without_patient_rules() {
        // Only generic rules: `Patient/<id>` in the path still names the patient.
        let generic_only = r#"
            base_paths = ["/fhir"]
            [[rule]]
            name = "read"
            methods = ["GET"]
            path = "/{type}/{id}"
            action = "R"
            interaction = "read"
            attribution = "complete"
            [[rule]]
            name = "compartment"
            methods = ["GET"]
            path = "/{c:type}/{cid:id}/{type}"
            action = "R"
            interaction = "search"
            search = true
            attribution = "complete"
        "#;
        let rs = RuleSet::from_toml_str(generic_only, UnmatchedPolicy::Journal).unwrap();
        let c = get(&rs, "GET", "/fhir/Patient/5");
        assert_eq!(
            (ids(&c), c.attribution),
            (vec![("5", PatientSource::Path)], Complete)
        );
        let c = get(&rs, "GET", "/fhir/Observation/5");
        assert_eq!((c.patients.len(), c.attribution), (0, Partial));
        let c = get(&rs, "GET", "/fhir/Patient/5/Condition");
        assert_eq!(ids(&c), [("5", PatientSource::Path)]);
    }

    #[test]
    fn rule_file_errors_name_the_file_rule_and_key() {
        let bad = |text: &str| {
            RuleSet::from_toml_str(text, UnmatchedPolicy::Journal)
                .unwrap_err()
                .to_string()
        };
        let head = "base_paths = [\"/\"]\n[[rule]]\nname = \"r1\"\nmethods = [\"GET\"]\naction = \"R\"\ninteraction = \"read\"\n";
        let e = bad(&format!("{head}path = \"/x\"\npaht = \"/y\"\n"));
        assert!(e.contains("<inline>") && e.contains("paht"), "{e}");
        let e = bad(&format!("{head}path = \"/x/{{id}}/{{id}}\"\n"));
        assert!(
            e.contains("rule `r1`") && e.contains("`path`") && e.contains("twice"),
            "{e}"
        );
        let e = bad(&format!(
            "{head}path = \"/x\"\nattribution = \"complete\"\n"
        ));
        assert!(e.contains("`attribution`"), "{e}");
        let e = bad(&format!(
            "{head}path = \"/Patient/{{patient}}\"\nattribution = \"none\"\n"
        ));
        assert!(e.contains("`attribution`"), "{e}");
        let e = bad(&format!("{head}path = \"/x\"\nsearch = true\n"));
        assert!(e.contains("`search`"), "{e}");
        let e = bad(&format!("{head}path = \"/{{type}}\"\nform_body = true\n"));
        assert!(e.contains("`form_body`"), "{e}");
        let e = bad(&format!("{head}path = \"/a/../b\"\n"));
        assert!(e.contains("`path`"), "{e}");
        let e = bad(&format!("{head}path = \"/x\"\ninteraction2 = \"read\"\n"));
        assert!(e.contains("interaction2"), "{e}");
        let e = bad(&format!("{head}path = \"/x\"\n[[rule]]\nname = \"r1\"\nmethods = [\"POST\"]\npath = \"/y\"\naction = \"C\"\ninteraction = \"create\"\n"));
        assert!(e.contains("`name`") && e.contains("another rule"), "{e}");
        let e = bad("base_paths = [\"/fhir/\"]\n");
        assert!(e.contains("`base_paths`"), "{e}");
        let e = bad("base_paths = [\"/\"]\n[compartment.Observation]\ncompartment = [\"subject\"]\nrefs = []\nbare = []\npin = []\n");
        assert!(
            e.contains("compartment.Observation") && e.contains("not in refs"),
            "{e}"
        );
        let e = bad("base_paths = [\"/\"]\n[operations]\n\"$x\" = \"R\"\n");
        assert!(e.contains("operations.$x"), "{e}");
        let e = bad(&format!("{head}path = \"/x\"\nmethods2 = 1\n"));
        assert!(e.contains("methods2"), "{e}");
    }

    #[test]
    fn config_validation_and_loading() {
        let cfg = RulesConfig::default();
        cfg.validate().unwrap();
        assert_eq!(cfg.files, [PathBuf::from("rules/fhir-r4.toml")]);
        assert_eq!(cfg.max_form_body_bytes, 1 << 20);
        assert_eq!(cfg.unmatched, UnmatchedPolicy::Journal);

        let parsed: RulesConfig =
            toml::from_str("unmatched = \"deny\"\nmax_form_body_bytes = 2048\n").unwrap();
        assert_eq!(parsed.unmatched, UnmatchedPolicy::Deny);
        assert_eq!(parsed.files, [PathBuf::from(DEFAULT_RULE_FILE)]);
        assert!(toml::from_str::<RulesConfig>("unmatch = \"deny\"\n")
            .unwrap_err()
            .to_string()
            .contains("unmatch"));

        for bad in [
            RulesConfig {
                files: vec![],
                ..RulesConfig::default()
            },
            RulesConfig {
                max_form_body_bytes: 0,
                ..RulesConfig::default()
            },
            RulesConfig {
                max_form_body_bytes: MAX_FORM_BODY_BYTES_LIMIT + 1,
                ..RulesConfig::default()
            },
            RulesConfig {
                files: vec!["a.toml".into(), "a.toml".into()],
                ..RulesConfig::default()
            },
            RulesConfig {
                base_paths: [(PathBuf::from("other.toml"), vec!["/x".to_string()])].into(),
                ..RulesConfig::default()
            },
            RulesConfig {
                base_paths: [(PathBuf::from(DEFAULT_RULE_FILE), vec!["x".to_string()])].into(),
                ..RulesConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
            assert_eq!(
                RuleSet::load(&bad, Path::new(".")).unwrap_err().category(),
                "config"
            );
        }
        let missing = RulesConfig {
            files: vec!["nope.toml".into()],
            ..RulesConfig::default()
        };
        let e = RuleSet::load(&missing, Path::new("/nonexistent")).unwrap_err();
        assert_eq!(e.category(), "read");
        assert!(e.to_string().contains("/nonexistent/nope.toml"));
    }

    #[test]
    fn shipped_compartment_table_has_the_r4_patient_compartment() {
        let rs = fhir();
        let comp = |t: &str| {
            rs.compartment_params(t)
                .unwrap_or_else(|| panic!("{t} missing"))
        };
        assert_eq!(comp("Observation").compartment, ["subject", "performer"]);
        assert_eq!(comp("Encounter").compartment, ["patient"]);
        assert_eq!(
            comp("AllergyIntolerance").compartment,
            ["patient", "recorder", "asserter"]
        );
        assert_eq!(comp("Patient").compartment, ["link"]);
        assert_eq!(comp("Condition").compartment, ["patient", "asserter"]);
        assert_eq!(comp("MedicationRequest").compartment, ["subject"]);
        assert_eq!(
            comp("Coverage").compartment,
            ["policy-holder", "subscriber", "beneficiary", "payor"]
        );
        assert_eq!(comp("Group").compartment, ["member"]);
        assert_eq!(comp("ResearchSubject").compartment, ["individual"]);
        // Types outside the compartment are only listed for their Patient-only references.
        assert!(rs.compartment_params("Medication").is_none());
        assert!(rs.compartment_params("Practitioner").is_none());
        assert_eq!(comp("Device").compartment, Vec::<String>::new());
        // Every R4 type with patient compartment parameters (66 of them) is there.
        let with_params = rs
            .compartment
            .values()
            .filter(|t| !t.def.compartment.is_empty())
            .count();
        assert_eq!(with_params, 66);
        // `pin` and `bare` are what the search attribution relies on.
        assert!(comp("Observation").pin.contains(&"subject".to_string()));
        assert!(!comp("Observation").pin.contains(&"performer".to_string()));
        assert_eq!(comp("Observation").bare, ["patient"]);
        assert!(comp("Patient").pin.is_empty());
    }

    #[test]
    fn rule_set_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RuleSet>();
        assert_send_sync::<Classification>();
    }

    #[test]
    fn operations_are_classified() {
        let rs = fhir();
        assert_eq!(rs.operations.get("everything"), Some(&R));
        assert_eq!(rs.operations.get("validate"), Some(&R));
        assert_eq!(rs.operations.get("meta-add"), Some(&U));
        assert_eq!(rs.operations.get("process-message"), None);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn path_strategy() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("/".to_string()),
                Just("..".to_string()),
                Just(".".to_string()),
                Just("%2e".to_string()),
                Just("%2F".to_string()),
                Just("%5c".to_string()),
                Just("%25".to_string()),
                Just("%00".to_string()),
                Just("%".to_string()),
                Just(";".to_string()),
                Just("\\".to_string()),
                Just("fhir".to_string()),
                Just("Patient".to_string()),
                Just("Observation".to_string()),
                Just("_history".to_string()),
                Just("$everything".to_string()),
                Just("?".to_string()),
                "[0-9a-fA-F]{1,3}",
                "%[0-9a-fA-F]{2}",
                "[A-Za-z0-9._~-]{1,5}",
                any::<char>().prop_map(|c| c.to_string()),
            ];
            prop::collection::vec(piece, 0..14).prop_map(|v| v.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

            #[test]
            fn classify_never_panics(method in "[A-Z]{0,7}|.{0,3}", path in path_strategy(), raw in ".{0,40}") {
                let rs = fhir();
                let _ = rs.classify(&method, &path, &HeaderMap::new());
                let _ = rs.classify(&method, &format!("/{path}"), &HeaderMap::new());
                let _ = rs.classify(&method, &raw, &HeaderMap::new());
                let mut c = Classification::unmatched(String::new(), None);
                if let Ok(cl) = rs.classify("POST", &format!("/fhir/Observation/_search?{path}"), &HeaderMap::new()) {
                    c = cl;
                }
                rs.attribute_form_body(&mut c, raw.as_bytes());
            }

            #[test]
            fn accepted_paths_decode_to_plain_segments(path in path_strategy()) {
                let rs = fhir();
                let target = format!("/fhir/{path}");
                if let Ok(c) = rs.classify("GET", &target, &HeaderMap::new()) {
                    let raw_path = target.split('?').next().unwrap();
                    prop_assert!(!c.path.contains('\0'));
                    prop_assert!(!c.path.contains('\\'));
                    // Decoding made no new segment: no `/` appeared inside a segment.
                    prop_assert_eq!(c.path.matches('/').count(), raw_path.matches('/').count());
                    let segs: Vec<&str> = c.path.split('/').collect();
                    for s in &segs[1..segs.len() - 1] {
                        prop_assert!(!s.is_empty());
                    }
                    for s in &segs {
                        prop_assert!(*s != "." && *s != "..");
                    }
                    // A patient from the path is one whole decoded segment.
                    for p in c.patients.iter().filter(|p| p.source == PatientSource::Path) {
                        prop_assert!(segs.contains(&p.id.as_str()));
                        prop_assert!(is_fhir_id(&p.id));
                    }
                }
            }

            #[test]
            fn encoding_unreserved_characters_changes_nothing(
                id in "[A-Za-z0-9.-]{1,20}",
                ty in prop::sample::select(vec!["Patient", "Observation", "Encounter"]),
                mask in any::<u64>(),
            ) {
                prop_assume!(id != "." && id != "..");
                let rs = fhir();
                let plain = format!("/fhir/{ty}/{id}");
                let mut enc = String::new();
                for (i, ch) in plain.chars().enumerate() {
                    if ch != '/' && mask & (1 << (i % 64)) != 0 {
                        enc.push_str(&format!("%{:02X}", ch as u32));
                    } else {
                        enc.push(ch);
                    }
                }
                let a = rs.classify("GET", &plain, &HeaderMap::new()).unwrap();
                let b = rs.classify("GET", &enc, &HeaderMap::new()).unwrap();
                prop_assert_eq!(a, b);
            }
        }
    }
}
