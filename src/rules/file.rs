//! The rule file as written (TOML, deserialised with unknown keys refused), before it is
//! compiled: rules, their `[[test]]` cases, and the Patient-compartment tables.

use crate::record::{Action, Attribution, InteractionKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Rule name recorded for a request no rule matched.
pub const UNMATCHED_RULE: &str = "unmatched";
/// Rule name the proxy records for a request refused with a [`PathRejection`](super::PathRejection).
pub const REJECTED_RULE: &str = "rejected";

/// Default rule file, relative to the config file's directory.
/// The shipped FHIR R4 rule file, built in (used by `auditgate demo`).
pub const BUILTIN_FHIR_R4: &str = include_str!("../../rules/fhir-r4.toml");
/// The default rule file, relative to the config file's directory.
pub const DEFAULT_RULE_FILE: &str = "rules/fhir-r4.toml";

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
    /// The case's name, shown when it fails.
    pub name: String,
    /// The request's method.
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
    /// What the gateway must record.
    pub expect: RuleTestExpect,
}

/// What a [`RuleTest`] expects; each key given is checked.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleTestExpect {
    /// The rule name (`unmatched`, `rejected` for a refused path).
    pub rule: Option<String>,
    /// The expected action.
    pub action: Option<Action>,
    /// The expected interaction.
    pub interaction: Option<InteractionKind>,
    /// Patient ids, in any order.
    pub patients: Option<Vec<String>>,
    /// The expected attribution.
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
    /// request takes the buffered path (see [`crate::proxy`], the buffered path).
    #[serde(default)]
    pub inspect_body: bool,
    /// Read the whole response as FHIR JSON and add every patient it references to the outcome
    /// record, which is durable before the first byte of the response leaves the gateway. The
    /// request takes the buffered path (see [`crate::proxy`], the buffered path).
    #[serde(default)]
    pub inspect_response: bool,
    /// A response larger than `attribution.max_body_bytes`: `refuse` it (502, journaled) or
    /// `forward` it (the record says `partial`, gap `too_large`). Default: `refuse` for
    /// searches, history and operations (an answer that large is a bulk export, which pages or
    /// `$export` serve attributably), `attribution.oversize` for everything else.
    #[serde(default)]
    pub oversize: Option<RuleOversize>,
}

/// What a rule does with a response over the body limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleOversize {
    /// Refuse it: 502 `response_too_large`, journaled; none of it is released.
    Refuse,
    /// Release it; the record says `partial` (gap `too_large`).
    Forward,
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
    /// The top-level elements those parameters read: what `_elements` must keep for a returned
    /// resource of the type to still name its patients (the gateway adds them upstream).
    #[serde(default)]
    pub elements: Vec<String>,
    /// Every one of `elements` is a summary element: `_summary=true` keeps the type's patient
    /// references.
    #[serde(default)]
    pub summary: bool,
}
