//! Classification: one request (method, target, headers, a form body) into what it is (the
//! rule, action, interaction, resource) and which patients it names, with how complete that
//! list is.

use super::config::{MethodOverridePolicy, SubsetPolicy, UnmatchedPolicy};
use super::error::RequestRejection;
use super::file::UNMATCHED_RULE;
use super::file::{AttributionClaim, RuleOversize};
use super::path::{decode_path, segment_bounds, strip_base};
use super::ruleset::{PatientPair, Rule, RuleSet, TypeFrom};
use super::template::{match_template, MAX_CAPTURES};
use crate::fhir::{is_fhir_id, patient_reference, LocalBases};
use crate::record::{Action, Attribution, InteractionKind, PatientRef, PatientSource};
use std::collections::HashSet;

/// Headers some servers honour to run another method than the request line's: a request
/// carrying one (or a `_method` query parameter) is refused under `method_override = "refuse"`
/// (the default), or classified as the method it asks for under `"classify"`.
pub const METHOD_OVERRIDE_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// What a request is, as far as the request line and headers tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// The matching rule's name, or [`UNMATCHED_RULE`].
    pub rule: String,
    /// The method the request was classified as: the request line's, or the one a
    /// method-override asked for under `method_override = "classify"`.
    pub method: String,
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
    /// How complete `patients` is, as far as the request line tells.
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
    /// What to do with a response over the body limit: the rule's `oversize`, else `refuse`
    /// for searches, history, operations and unmatched requests; `None`: the
    /// `attribution.oversize` default.
    pub oversize: Option<RuleOversize>,
    /// The most the matched rule may claim (`partial` when unmatched).
    pub claim: AttributionClaim,
    /// The base path the request matched under (`/fhir`; empty for the root), for resolving
    /// the relative URLs of Bundle entries. Empty when unmatched.
    pub base_path: String,
    /// The query as the EHR gets it, when the gateway changed it (`_elements` augmented with
    /// the patient-reference elements): forwarded and recorded beside the client's query.
    pub forwarded_query: Option<String>,
    /// The request asks for less than whole resources in a way the record cannot make up for
    /// (under a `forward` policy): the attribution stays `partial` with this gap.
    pub subset_gap: Option<SubsetGap>,
    /// What `attribute_form_body` needs to redo the search attribution.
    pub(super) form: Option<Box<FormState>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FormState {
    pub(super) resource_type: String,
    /// Patients from sources other than the search query (path, header, query parameter).
    pub(super) base: Vec<PatientRef>,
    /// The rule claims complete and every non-search source resolved.
    pub(super) base_ok: bool,
    /// A compartment search on a type whose compartment parameters all pin.
    pub(super) compartment_pins: bool,
}

/// What [`RuleSet::subset`] makes of a request's `_elements` and `_summary`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subset {
    /// Whole resources, or a subset that keeps every patient reference.
    Whole,
    /// Forward these parameters instead (the patient-reference elements added to `_elements`).
    Augmented(String),
    /// Forwarded as asked under a `forward` policy: the attribution is `partial`.
    Partial(SubsetGap),
}

/// Why a forwarded subset leaves the attribution `partial` (the record's gap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubsetGap {
    /// `_summary` that may leave out patient references (gap `subsetted`).
    Summary,
    /// `$graphql` (gap `graphql`).
    Graphql,
}

impl SubsetGap {
    /// The gap's name in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            SubsetGap::Summary => "subsetted",
            SubsetGap::Graphql => "graphql",
        }
    }
}

impl Classification {
    /// An unmatched request: under [`UnmatchedPolicy::Inspect`] its body and response are read
    /// like a search's.
    pub(super) fn unmatched(
        method: String,
        path: String,
        query: Option<String>,
        policy: UnmatchedPolicy,
    ) -> Self {
        let inspect = policy == UnmatchedPolicy::Inspect;
        Classification {
            rule: UNMATCHED_RULE.to_string(),
            method,
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
            inspect_body: inspect,
            inspect_response: inspect,
            // Anything could be in its answer: a bulk answer is not released unread.
            oversize: Some(RuleOversize::Refuse),
            claim: AttributionClaim::Partial,
            base_path: String::new(),
            forwarded_query: None,
            subset_gap: None,
            form: None,
        }
    }

    /// The request takes the buffered path: its body or its response is read for patients.
    pub fn buffered(&self) -> bool {
        self.inspect_body || self.inspect_response
    }
}

impl RuleSet {
    /// Classify a request. `path_and_query` is the raw request target as received (still
    /// percent-encoded). An `Err` means the request is refused (400 or 405, journaled) before
    /// any rule is tried: its path, a method override under `refuse`, or a method no rule knows.
    /// Anything else is journaled, and an unmatched request is handled by the
    /// [`UnmatchedPolicy`].
    pub fn classify(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &http::HeaderMap,
    ) -> Result<Classification, RequestRejection> {
        let (raw_path, raw_query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let path = decode_path(raw_path)?;
        let query = raw_query.filter(|q| !q.is_empty());
        if !self.knows_method(method) {
            return Err(RequestRejection::UnknownMethod);
        }
        let method = self.effective_method(method, query, headers)?;
        let segs = segment_bounds(&path);

        let mut caps: [&str; MAX_CAPTURES] = [""; MAX_CAPTURES];
        for file in &self.files {
            for base in &file.bases {
                let Some(rel) = strip_base(&path, &segs, base) else {
                    continue;
                };
                for rule in &file.rules {
                    if rule.methods.matches(&method)
                        && match_template(&rule.template, &path, rel, &mut caps)
                    {
                        let mut c = self.build(rule, &caps, path.clone(), query, headers);
                        c.method = method;
                        c.base_path = base.iter().map(|s| format!("/{s}")).collect();
                        if rule.op_cap.is_some_and(|i| caps[i] == "$graphql") {
                            match self.graphql {
                                SubsetPolicy::Forward => c.subset_gap = Some(SubsetGap::Graphql),
                                _ => return Err(RequestRejection::GraphqlNotAudited),
                            }
                        }
                        self.apply_subset(&mut c, query)?;
                        return Ok(c);
                    }
                }
            }
        }
        let mut c =
            Classification::unmatched(method, path, query.map(str::to_string), self.unmatched);
        if c.path.split('/').any(|seg| seg == "$graphql") {
            match self.graphql {
                SubsetPolicy::Forward => c.subset_gap = Some(SubsetGap::Graphql),
                _ => return Err(RequestRejection::GraphqlNotAudited),
            }
        }
        self.apply_subset(&mut c, query)?;
        Ok(c)
    }

    /// Apply [`RuleSet::subset`] to a classified request's query: refuse it, record the query
    /// to forward instead, or mark the attribution `partial`.
    fn apply_subset(
        &self,
        c: &mut Classification,
        query: Option<&str>,
    ) -> Result<(), RequestRejection> {
        let Some(q) = query else { return Ok(()) };
        if c.claim == AttributionClaim::None {
            return Ok(()); // no patient data to leave out (the CapabilityStatement)
        }
        match self.subset(c.resource_type.as_deref(), q)? {
            Subset::Whole => {}
            Subset::Augmented(forwarded) => c.forwarded_query = Some(forwarded),
            Subset::Partial(gap) => c.subset_gap = Some(gap),
        }
        if c.subset_gap.is_some() && c.attribution == Attribution::Complete {
            c.attribution = Attribution::Partial;
        }
        Ok(())
    }

    /// What `_elements` and `_summary` in `params` (a raw query or form body) do to an answer
    /// about `resource_type` (`None`: any type, as for a system search): nothing, an augmented
    /// `params` to forward instead, a gap, or a refusal ([`RequestRejection`]).
    ///
    /// * `_elements`: under `augment`, every patient-reference element of the type (of every
    ///   compartment type when the type is unknown or `_include`/`_revinclude` widens the
    ///   answer) is added to each `_elements` value that lacks it; a FHIR server may always
    ///   return more elements than asked. `_elements` with a modifier (`:exclude`) cannot be
    ///   augmented and is refused.
    /// * `_summary=data`, `false`, `count`: nothing leaves out references. `_summary=true` on a
    ///   type whose patient-reference elements are all summary elements (the compartment
    ///   table's `summary`), without `_include`/`_revinclude`: the same. Anything else
    ///   (`text`, `true` on other types, an unknown value): the `summary` policy.
    pub fn subset(
        &self,
        resource_type: Option<&str>,
        params: &str,
    ) -> Result<Subset, RequestRejection> {
        let lower = params.to_ascii_lowercase();
        if !lower.contains("_elements") && !lower.contains("_summary") && !lower.contains('%') {
            return Ok(Subset::Whole);
        }
        let mut elements = false;
        let mut widened = false;
        let mut summary: Option<String> = None;
        for (k, v) in form_urlencoded::parse(params.as_bytes()) {
            let (name, modifier) = match k.split_once(':') {
                Some((n, m)) => (n, Some(m)),
                None => (&*k, None),
            };
            match name {
                "_elements" if modifier.is_some() => {
                    return Err(RequestRejection::ElementsNotAudited)
                }
                "_elements" => elements = true,
                "_summary" => summary = Some(v.trim().to_ascii_lowercase()),
                _ if widens(name) => widened = true,
                _ => {}
            }
        }
        let table = resource_type
            .filter(|_| !widened)
            .map(|t| self.compartment.get(t));
        let mut gap = None;
        if let Some(value) = summary {
            let keeps_refs = match value.as_str() {
                "data" | "false" | "count" => true,
                // A type outside the compartment carries no patient data of its own.
                "true" => table.is_some_and(|t| t.is_none_or(|t| t.def.summary)),
                _ => false,
            };
            if !keeps_refs {
                match self.summary {
                    SubsetPolicy::Forward => gap = Some(SubsetGap::Summary),
                    _ => return Err(RequestRejection::SummaryHidesPatients),
                }
            }
        }
        if !elements {
            return Ok(gap.map_or(Subset::Whole, Subset::Partial));
        }
        if self.elements != SubsetPolicy::Augment {
            return Err(RequestRejection::ElementsNotAudited);
        }
        let needed: Vec<&str> = match table {
            // A type outside the compartment: nothing to keep.
            Some(None) => Vec::new(),
            Some(Some(t)) => t.def.elements.iter().map(String::as_str).collect(),
            None => self.all_reference_elements(),
        };
        let forwarded = params
            .split('&')
            .map(|pair| {
                let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
                let key: String = form_urlencoded::parse(raw_key.as_bytes())
                    .next()
                    .map(|(k, _)| k.into_owned())
                    .unwrap_or_default();
                if key != "_elements" {
                    return pair.to_string();
                }
                let value: String = form_urlencoded::parse(pair.as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                let present: HashSet<&str> = value.split(',').map(str::trim).collect();
                let missing: Vec<&str> = needed
                    .iter()
                    .copied()
                    .filter(|e| !present.contains(e))
                    .collect();
                if missing.is_empty() {
                    return pair.to_string();
                }
                let sep = if raw_value.is_empty() { "" } else { "," };
                format!("{raw_key}={raw_value}{sep}{}", missing.join(","))
            })
            .collect::<Vec<_>>()
            .join("&");
        if let Some(gap) = gap {
            return Ok(Subset::Partial(gap));
        }
        Ok(if forwarded == params {
            Subset::Whole
        } else {
            Subset::Augmented(forwarded)
        })
    }

    /// Every compartment type's patient-reference elements, each once, sorted.
    fn all_reference_elements(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self
            .compartment
            .values()
            .flat_map(|t| t.def.elements.iter().map(String::as_str))
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The method the rules classify: the request line's, unless the request asks for another
    /// with a method-override header or a `_method` query parameter (any case of the name).
    /// Under `refuse` any such request is refused; under `classify` the overriding method is
    /// used, upper-cased, when every override agrees and some rule knows it.
    fn effective_method(
        &self,
        method: &str,
        query: Option<&str>,
        headers: &http::HeaderMap,
    ) -> Result<String, RequestRejection> {
        let mut asked: Vec<String> = Vec::new();
        for name in METHOD_OVERRIDE_HEADERS {
            for value in headers.get_all(*name) {
                let v = value
                    .to_str()
                    .map_err(|_| RequestRejection::MethodOverride)?;
                asked.push(v.trim().to_ascii_uppercase());
            }
        }
        if let Some(q) = query {
            for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                if k.eq_ignore_ascii_case("_method") {
                    asked.push(v.trim().to_ascii_uppercase());
                }
            }
        }
        let Some(first) = asked.first() else {
            return Ok(method.to_string());
        };
        if self.method_override == MethodOverridePolicy::Refuse || asked.iter().any(|m| m != first)
        {
            return Err(RequestRejection::MethodOverride);
        }
        if !self.knows_method(first) {
            return Err(RequestRejection::UnknownMethod);
        }
        Ok(first.clone())
    }

    pub(super) fn build(
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
            method: String::new(),
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
            oversize: rule.oversize.or(match rule.interaction {
                InteractionKind::Search | InteractionKind::History | InteractionKind::Operation => {
                    Some(RuleOversize::Refuse)
                }
                _ => None,
            }),
            claim: rule.claim,
            base_path: String::new(),
            forwarded_query: None,
            subset_gap: None,
            form: None,
        };
        if rule.claim == AttributionClaim::None {
            return c;
        }

        let (base, path_patients, base_ok) = named_patients(rule, caps, query, headers);

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
    pub(super) fn scan_query(
        &self,
        resource_type: &str,
        raw: &[u8],
        source: PatientSource,
        scan: &mut Scan,
    ) {
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
            if push_reference_list(
                &mut scan.patients,
                &value,
                bare_is_patient,
                source,
                &self.local_bases,
            ) && info.pin
            {
                scan.pinned = true;
            }
        }
    }
}

/// The patients a matched rule names outright: the path's `{patient}` capture and every
/// `Patient/<id>` pair (source `path`), the rule's patient query parameter and header. Returns
/// them, whether the path named any, and whether every source the rule declares resolved
/// (the rule's claim allowing `complete`).
fn named_patients(
    rule: &Rule,
    caps: &[&str; MAX_CAPTURES],
    query: Option<&str>,
    headers: &http::HeaderMap,
) -> (Vec<PatientRef>, bool, bool) {
    // Patients from the path: the {patient} capture, and every `Patient/<id>` pair.
    let mut base: Vec<PatientRef> = Vec::new();
    if let Some(i) = rule.patient_cap {
        push_patient(&mut base, caps[i], PatientSource::Path);
    }
    for pair in &rule.patient_pairs {
        match *pair {
            PatientPair::Literal { id } => push_patient(&mut base, caps[id], PatientSource::Path),
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
    (base, path_patients, base_ok)
}

#[derive(Debug, Default)]
pub(super) struct Scan {
    pub(super) patients: Vec<PatientRef>,
    /// A `pin` parameter resolved every item to a patient.
    pub(super) pinned: bool,
    /// Something may add results outside the pinned patients.
    pub(super) open: bool,
}

pub(super) fn widens(name: &str) -> bool {
    let base = name.split(':').next().unwrap_or(name);
    matches!(base, "_include" | "_revinclude" | "_contained" | "_query")
}

/// Merge, deduplicate by id (first source wins), and set the attribution.
pub(super) fn finish(
    c: &mut Classification,
    base: Vec<PatientRef>,
    more: Vec<PatientRef>,
    complete: bool,
) {
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

pub(super) fn push_patient(out: &mut Vec<PatientRef>, id: &str, source: PatientSource) {
    out.push(PatientRef {
        id: id.to_string(),
        source,
    });
}

/// A comma-separated list of bare ids. True when every item is a valid id. Only header lists
/// (`a, b`: HTTP allows spaces after the comma) are trimmed; a query item is taken as is.
pub(super) fn push_id_list(out: &mut Vec<PatientRef>, value: &str, source: PatientSource) -> bool {
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

/// A FHIR reference search value (OR list). True when every item named a local patient (an
/// absolute reference on another server's base names none here).
pub(super) fn push_reference_list(
    out: &mut Vec<PatientRef>,
    value: &str,
    bare_is_patient: bool,
    source: PatientSource,
    local: &LocalBases,
) -> bool {
    if value.is_empty() || value.contains('\\') {
        return false; // `\,` escapes: the items are not what a plain split gives
    }
    let mut all = true;
    for item in value.split(',') {
        match patient_reference(item, bare_is_patient).and_then(|r| local.local_patient(r)) {
            Some(id) => push_patient(out, id, source),
            None => all = false,
        }
    }
    all
}

impl RuleSet {
    /// True when the proxy must answer 403: the request is unmatched and the policy is `deny`.
    pub fn denies(&self, c: &Classification) -> bool {
        !c.matched && self.unmatched == UnmatchedPolicy::Deny
    }
}
