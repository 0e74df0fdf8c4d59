//! Route rules: from method + request target (+ headers, + a form body) to what the access is.
//!
//! This module owns the answer to "what did this request do, and to which patients": the CRUDE
//! [`Action`](crate::record::Action), the FHIR [`InteractionKind`](crate::record::InteractionKind), the resource type and id, the patient IDs named by
//! the path, the query, a header or a form body, and how complete that list is
//! ([`Attribution`](crate::record::Attribution)). It also owns the safe reading of the request path, which is a security
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
//! * **`complete` is a promise.** [`Attribution::Complete`](crate::record::Attribution::Complete) is only reported when the rule
//!   allows it *and* every patient source of the rule resolved *and* at least one patient was
//!   found *and*, for a search, the query pins every result to listed patients (below). Anything
//!   less is [`Attribution::Partial`](crate::record::Attribution::Partial); the response-side extraction (a later stage) can add
//!   what is missing. [`Attribution::None`](crate::record::Attribution::None) is only for rules that declare the request touches
//!   no patient data (the CapabilityStatement).
//! * [`RuleSet`] is immutable after load (`Send + Sync`), compiled once: classifying is segment
//!   comparisons and hash lookups, no regex, a handful of small allocations.
//!
//! # Matching order
//!
//! Rule files are tried in the order of [`RulesConfig::files`]; within a file, its base paths
//! (longest first), then its rules **in file order; the first rule whose methods and path
//! template match wins**. A request under no base path, or matched by no rule, is *unmatched*:
//! it is recorded with rule `unmatched`, action `E`, interaction `unclassified`, and then the
//! [`UnmatchedPolicy`] decides: `inspect` (default) reads its body and its whole response for
//! patients like a search's before releasing it, `deny` makes the proxy answer 403 (still
//! journaled), `stream` forwards it unread (no patients, attribution `partial`). Loading
//! refuses a rule that can never match because an earlier rule of the same file matches
//! everything it would (for example `/{type}/{id}` placed before `/Patient/{patient}`).
//!
//! Before any rule is tried, a request is refused ([`RequestRejection`]) when its method is
//! one no rule lists or is not upper case (405: a lenient EHR may read `get` as GET), or when
//! it asks the EHR to run another method ([`METHOD_OVERRIDE_HEADERS`], a `_method` query
//! parameter) under `method_override = "refuse"` (the default; 400). Under `"classify"` it is
//! classified as the method it asks for.
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
//! oversize = "refuse"             # a response over attribution.max_body_bytes: refuse (502)
//!                                 # or forward (partial); default refuse for searches,
//!                                 # history and operations, else attribution.oversize
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
//!
//! # The rooms
//!
//! [`config`] (`[rules]`), [`file`](mod@file) (the rule file as written), [`error`] (why rules cannot
//! load, why a path is refused), [`path`] (percent-decoding and refusing ambiguous paths: the
//! security boundary, alone in its file), [`template`] (route templates and their captures),
//! [`compile`] (rule files into a [`RuleSet`]), [`ruleset`] (the compiled set and its
//! accessors), [`classify`] (a request into a [`Classification`]: matching, query scanning,
//! patients). The FHIR id grammar and reference parsing they share with the body extractor
//! are [`crate::fhir`].

pub mod classify;
pub mod compile;
pub mod config;
pub mod error;
pub mod file;
pub mod path;
pub mod ruleset;
pub mod template;

#[cfg(test)]
mod tests;

pub use classify::{Classification, METHOD_OVERRIDE_HEADERS};
pub use config::{
    MethodOverridePolicy, RulesConfig, SubsetPolicy, UnmatchedPolicy, DEFAULT_MAX_FORM_BODY_BYTES,
    MAX_FORM_BODY_BYTES_LIMIT,
};
pub use error::{PathRejection, RequestRejection, RulesError};
pub use file::{
    AttributionClaim, CompartmentDef, RuleDef, RuleFile, RuleOversize, RuleTest, RuleTestExpect,
    BUILTIN_FHIR_R4, DEFAULT_RULE_FILE, REJECTED_RULE, UNMATCHED_RULE,
};
pub use path::MAX_PATH_BYTES;
pub use ruleset::{RuleSet, RuleSummary};
