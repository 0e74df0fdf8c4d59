//! Why the rules could not be loaded ([`RulesError`]), and why a request path is refused
//! ([`PathRejection`], one fixed reason code each).

use crate::config::error::ConfigError;
use std::path::PathBuf;

/// Why the rules could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The `[rules]` section itself is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A rule file could not be read.
    #[error("cannot read rule file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key or wrong type; the message names the key and the line.
    #[error("rule file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (it names the key and line).
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("rule file {path}{}: key `{key}`: {reason}", in_rule(.rule))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The rule's name, when the problem is in one rule.
        rule: Option<String>,
        /// The rule file key that is wrong (`template`, `methods`, ...).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

pub(super) fn in_rule(rule: &Option<String>) -> String {
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
    /// The path is longer than [`MAX_PATH_BYTES`](super::MAX_PATH_BYTES).
    #[error("request path is {len} bytes, longer than the {limit} allowed")]
    TooLong {
        /// The path's length in bytes.
        len: usize,
        /// The longest accepted.
        limit: usize,
    },
    /// A raw character that is not legal in a URI path (space, `"`, `<`, `#`, non-ASCII, ...).
    #[error("character not allowed in a path at byte {at}")]
    InvalidCharacter {
        /// The byte offset in the raw path where the problem starts.
        at: usize,
    },
    /// A control character, raw or percent-encoded (or a Unicode control after decoding).
    #[error("control character in the path at byte {at}")]
    ControlCharacter {
        /// The byte offset in the raw path where the problem starts.
        at: usize,
    },
    /// NUL, raw or `%00`.
    #[error("NUL in the path at byte {at}")]
    Nul {
        /// The byte offset in the raw path where the problem starts.
        at: usize,
    },
    /// A raw backslash.
    #[error("backslash in the path at byte {at}")]
    Backslash {
        /// The byte offset in the raw path where the problem starts.
        at: usize,
    },
    /// A `;` (matrix / path parameter), raw or `%3B`.
    #[error("';' in the path at byte {at}")]
    MatrixParam {
        /// The byte offset in the raw path where the problem starts.
        at: usize,
    },
    /// `%` not followed by two hex digits.
    #[error("invalid percent-encoding at byte {at}")]
    InvalidPercentEncoding {
        /// The byte offset in the raw path where the problem starts.
        at: usize,
    },
    /// `%2F` or `%5C`: a slash or backslash inside a segment.
    #[error("encoded slash or backslash at byte {at}")]
    EncodedSlash {
        /// The byte offset in the raw path where the problem starts.
        at: usize,
    },
    /// `%25`: an encoded `%`, i.e. a second layer of encoding (`%252F`).
    #[error("double percent-encoding at byte {at}")]
    DoubleEncoding {
        /// The byte offset in the raw path where the problem starts.
        at: usize,
    },
    /// A `.` or `..` segment, raw or encoded.
    #[error("dot segment at byte {at}")]
    DotSegment {
        /// The byte offset in the raw path where the problem starts.
        at: usize,
    },
    /// An empty segment (`//`); one trailing `/` is allowed.
    #[error("empty path segment at byte {at}")]
    EmptySegment {
        /// The byte offset in the raw path where the problem starts.
        at: usize,
    },
    /// A segment is not UTF-8 once decoded.
    #[error("segment at byte {at} is not UTF-8 once decoded")]
    InvalidUtf8 {
        /// The byte offset in the raw path where the problem starts.
        at: usize,
    },
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

/// Why a request is refused before any rule is tried: its path ([`PathRejection`], 400), a
/// request for another method than its request line's (400), or a method no rule knows (405).
/// Messages never contain the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestRejection {
    /// The path is not acceptable.
    #[error(transparent)]
    Path(#[from] PathRejection),
    /// A method-override header or a `_method` parameter, under `method_override = "refuse"`
    /// (or two of them that disagree, under `classify`).
    #[error("the request asks the server to run another method than its request line's")]
    MethodOverride,
    /// A method no rule lists, or one that is not upper case (HTTP methods are
    /// case-sensitive: a lenient server may still read `get` as GET).
    #[error("no rule knows the request's method")]
    UnknownMethod,
    /// `_elements` under `rules.elements = "refuse"`, or in a form the gateway cannot augment
    /// (`_elements:exclude`).
    #[error("_elements could leave out the reference naming the patient")]
    ElementsNotAudited,
    /// `_summary` that leaves out patient references, under `rules.summary = "refuse"`.
    #[error("_summary would leave out the reference naming the patient")]
    SummaryHidesPatients,
    /// `$graphql` under `rules.graphql = "refuse"`.
    #[error("$graphql answers are not attributable")]
    GraphqlNotAudited,
}

impl RequestRejection {
    /// The codes beyond [`PathRejection::REASONS`], for pre-registering metric label values.
    pub const REASONS: &'static [&'static str] = &[
        "method_override",
        "unknown_method",
        "elements_not_audited",
        "summary_hides_patients",
        "graphql_not_audited",
    ];

    /// A fixed code for the journal's error field and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            RequestRejection::Path(p) => p.reason(),
            RequestRejection::MethodOverride => "method_override",
            RequestRejection::UnknownMethod => "unknown_method",
            RequestRejection::ElementsNotAudited => "elements_not_audited",
            RequestRejection::SummaryHidesPatients => "summary_hides_patients",
            RequestRejection::GraphqlNotAudited => "graphql_not_audited",
        }
    }

    /// The HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            RequestRejection::UnknownMethod => 405,
            _ => 400,
        }
    }
}
