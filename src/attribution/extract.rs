//! Patients in FHIR JSON: every patient a request body or a response body references.
//!
//! This module owns the answer to "whose data is in these bytes". It reads one JSON document
//! (a resource, a Bundle, a `Parameters`) in a single pass, without building a
//! `serde_json::Value`: a serde visitor keeps only what attribution needs (resource types and
//! ids, reference strings, Bundle entry addresses) and skips everything else, so it is cheaper
//! than the parse the client does anyway.
//!
//! # What counts as a patient
//!
//! * A `Patient` resource's own `id` (a top-level resource, a Bundle entry, an operation's
//!   `Parameters.parameter.resource`, an `OperationOutcome` nested in an entry ...).
//! * Every FHIR `Reference` anywhere in a resource whose `reference` names a Patient, in each
//!   form the specification allows: relative `Patient/123`, absolute `https://host/base/Patient/123`,
//!   either with `/_history/{vid}`. A reference is recognised by its shape (an object with a
//!   string `reference`), not by a list of elements, so no element can hide a patient:
//!   `Observation.subject` and `.performer`, `List.entry.item`, `Group.member.entity`,
//!   `Provenance.target`, `Annotation.authorReference`, an extension's `valueReference`, a
//!   `Patient.link.other` all count. References to any other type (Group, Practitioner,
//!   RelatedPerson, Device, ...) name no patient. The accepted forms are exactly those the
//!   query attribution accepts ([`crate::fhir::patient_reference`]): one definition.
//! * **Other servers' patients.** An absolute reference whose base is not this server's
//!   ([`LocalBases`]: the EHR's address under the rules' base paths, `rules.public_base_urls`)
//!   names a patient somewhere else: it is kept whole in [`Findings::external_refs`] (the
//!   record's `external_refs`), never taken for the local patient that happens to share its id.
//! * **Contained resources.** A reference `#p1` resolves inside its own resource and never to
//!   a real `Patient/p1`. A contained Patient has no server id, so it is a [`Gap`] (the record
//!   says the attribution is partial and why), never a guess.
//! * **Bundles.** Each entry's resource counts. In a Bundle the gateway *answers* (a search,
//!   history, a transaction response), an entry's `response.location` and a history entry's
//!   `request.url` naming a Patient count too (a deleted patient in a history Bundle has no
//!   resource but is disclosed). `urn:uuid:` and `urn:oid:` references resolve against the
//!   entries' `fullUrl`s. In a Bundle the client *sends* (transaction, batch), each entry's
//!   `request` is classified by the caller's rules ([`EntryClassifier`]), and a Patient created
//!   by a `POST` entry has no id until the EHR assigns one: a [`Gap::CreatedPatient`] the
//!   response's `location` closes.
//!
//! Whatever cannot be named exactly is a [`Gap`], never dropped silently: a logical reference
//! (`{"type": "Patient", "identifier": ...}` with no `reference`), a conditional reference
//! (`Patient?identifier=...`), a malformed Patient reference, a Patient without an id, a
//! document that is not valid JSON.
//!
//! # Bounds
//!
//! Time and memory are linear in the input, which the caller bounds
//! ([`crate::attribution::config::AttributionConfig`]). Nesting is bounded by `serde_json`'s recursion limit
//! (128 levels: deeper input is [`Gap::InvalidJson`], not a stack overflow). Nothing here
//! panics on any input (property-tested).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::fhir::{is_fhir_id, patient_reference, LocalBases};

/// Why an attribution is not complete. Recorded (as [`Gap::as_str`]) in the record's
/// `attribution_gaps`; a fixed set, so it is also a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Gap {
    /// The body is not valid JSON (or nests deeper than 128 levels).
    InvalidJson,
    /// The body is not well-formed FHIR XML (or nests deeper than 128 levels, or declares a
    /// document type).
    InvalidXml,
    /// The body is neither JSON nor XML (a binary attachment, a PDF ...): not inspected.
    NotJson,
    /// The body is compressed with an encoding the gateway does not decode (br, zstd, ...).
    ContentEncoding,
    /// The body is larger than `attribution.max_body_bytes`.
    TooLarge,
    /// A Patient resource is contained in another resource: it has no server id.
    ContainedPatient,
    /// A reference to a Patient by identifier only (no `reference`).
    LogicalReference,
    /// A conditional reference (`Patient?identifier=...`), resolved by the EHR.
    ConditionalReference,
    /// A reference that names the Patient type but no valid id.
    InvalidReference,
    /// A Patient resource without an `id` (outside a create).
    PatientWithoutId,
    /// A Patient created by the request: its id is assigned by the EHR (closed by the response).
    CreatedPatient,
    /// The resource whose patient is asked for is not in the exchange (a delete or a patch
    /// answered without a representation).
    NoRepresentation,
    /// A response the gateway could not read to the end (the EHR broke the connection).
    Truncated,
    /// `_summary` forwarded under `rules.summary = "forward"`: the answer may leave out the
    /// references naming its patients.
    Subsetted,
    /// `$graphql` forwarded under `rules.graphql = "forward"`: the answer holds the fields the
    /// query chose, references or not.
    Graphql,
    /// The current version of the resource a delete or patch changes could not be read first
    /// (the pre-image GET failed), so whose it was is not known.
    NoPreImage,
    /// A Bulk Data manifest lists files served somewhere else than this EHR's base (a
    /// pre-signed storage URL): their downloads bypass the gateway, so their patients are not
    /// recorded. The record's `bulk_files` lists them.
    BulkFilesElsewhere,
}

impl Gap {
    /// Every gap, for metrics and documentation.
    pub const ALL: [Gap; 17] = [
        Gap::InvalidJson,
        Gap::InvalidXml,
        Gap::NotJson,
        Gap::ContentEncoding,
        Gap::TooLarge,
        Gap::ContainedPatient,
        Gap::LogicalReference,
        Gap::ConditionalReference,
        Gap::InvalidReference,
        Gap::PatientWithoutId,
        Gap::CreatedPatient,
        Gap::NoRepresentation,
        Gap::Truncated,
        Gap::Subsetted,
        Gap::Graphql,
        Gap::NoPreImage,
        Gap::BulkFilesElsewhere,
    ];

    /// The name recorded in the journal and used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Gap::InvalidJson => "invalid_json",
            Gap::InvalidXml => "invalid_xml",
            Gap::NotJson => "not_json",
            Gap::ContentEncoding => "content_encoding",
            Gap::TooLarge => "too_large",
            Gap::ContainedPatient => "contained_patient",
            Gap::LogicalReference => "logical_reference",
            Gap::ConditionalReference => "conditional_reference",
            Gap::InvalidReference => "invalid_reference",
            Gap::PatientWithoutId => "patient_without_id",
            Gap::CreatedPatient => "created_patient",
            Gap::NoRepresentation => "no_representation",
            Gap::Truncated => "truncated",
            Gap::Subsetted => "subsetted",
            Gap::Graphql => "graphql",
            Gap::NoPreImage => "no_pre_image",
            Gap::BulkFilesElsewhere => "bulk_files_elsewhere",
        }
    }
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Patients found, in order of discovery, without duplicates, and what could not be named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// Patient ids referenced, each once, in the order found.
    pub patients: Vec<String>,
    /// Why the list may be incomplete.
    pub gaps: BTreeSet<Gap>,
    /// Patients created by a request (POST of a Patient, or `POST` entries of Patients in a
    /// transaction): how many ids the response must supply.
    pub created_patients: usize,
    /// Patients a response names as created or changed (`response.location` of
    /// transaction-response entries, a Patient returned as the top-level document): how many
    /// of `created_patients` the response resolved.
    pub located: usize,
    /// The top-level document's `resourceType` (`Observation`, `Bundle` ...), if any.
    pub document_type: Option<String>,
    /// The top-level Bundle's `type` (`transaction`, `batch`, `searchset` ...), if any.
    pub bundle_type: Option<String>,
    /// Absolute Patient references on another server's base, whole, each once, in the order
    /// found; at most [`MAX_EXTERNAL_REFS`], each at most [`MAX_EXTERNAL_REF_BYTES`].
    pub external_refs: Vec<String>,
    /// External references beyond those bounds, counted and not kept.
    pub external_refs_omitted: u64,
    seen: HashSet<String>,
}

/// Most external references one record keeps (the rest are counted).
pub const MAX_EXTERNAL_REFS: usize = 64;
/// Longest external reference kept (a longer one is counted, not kept).
pub const MAX_EXTERNAL_REF_BYTES: usize = 512;

impl Findings {
    /// Add a patient id (ignored if already present).
    pub fn add(&mut self, id: &str) {
        if !self.seen.contains(id) {
            self.seen.insert(id.to_string());
            self.patients.push(id.to_string());
        }
    }

    /// Add `gap` to what makes the list incomplete.
    pub fn gap(&mut self, gap: Gap) {
        self.gaps.insert(gap);
    }

    /// Keep an absolute reference to another server's patient (bounded, each once).
    pub fn add_external(&mut self, url: &str) {
        if self.external_refs.iter().any(|u| u == url) {
            return;
        }
        if self.external_refs.len() < MAX_EXTERNAL_REFS && url.len() <= MAX_EXTERNAL_REF_BYTES {
            self.external_refs.push(url.to_string());
        } else {
            self.external_refs_omitted += 1;
        }
    }

    /// Note the Patient a reference or URL names, if any: a local one as a patient, one on
    /// another server's base as an external reference. True when it named a Patient.
    fn note_patient(&mut self, text: &str, local: &LocalBases) -> bool {
        let Some(r) = patient_reference(text, false) else {
            return false;
        };
        match local.local_patient(r) {
            Some(id) => self.add(id),
            None => self.add_external(text),
        }
        true
    }
}

/// How a transaction or batch entry's `request` is attributed: the caller's route rules.
/// Given the entry's method and URL (relative to the FHIR base, as in the Bundle), the
/// patients its URL names and whether that list is complete for the entry.
pub trait EntryClassifier {
    /// The patients an entry's request line names (`method`, `url`), and whether that is all
    /// of them.
    fn classify_entry(&self, method: &str, url: &str) -> (Vec<String>, bool);
}

/// An [`EntryClassifier`] that knows no routes: every entry URL is read as a plain reference.
#[cfg(test)]
pub(crate) struct ReferenceOnly;

#[cfg(test)]
impl EntryClassifier for ReferenceOnly {
    fn classify_entry(&self, _method: &str, url: &str) -> (Vec<String>, bool) {
        let path = url.split('?').next().unwrap_or("");
        (
            patient_reference(path, false)
                .map(|p| vec![p.id.to_string()])
                .unwrap_or_default(),
            false,
        )
    }
}

/// Patients in a response body (a resource, a Bundle, a `Parameters` ...). Absolute
/// references count as local patients only on `local` bases.
pub fn response_patients(body: &[u8], local: &LocalBases) -> Findings {
    extract(body, &Scope::response(local))
}

/// Patients in a request body. `creating`: the body is created by a `POST` (the EHR assigns
/// the id, so a Patient in it is [`Gap::CreatedPatient`], not its `id`). A transaction or
/// batch Bundle's entries are classified by `entries`. Absolute references count as local
/// patients only on `local` bases.
pub fn request_patients(
    body: &[u8],
    creating: bool,
    entries: &dyn EntryClassifier,
    local: &LocalBases,
) -> Findings {
    extract(body, &Scope::request(creating, entries, local))
}

/// Patient references a patch carries as plain strings, which the resource reading above does not
/// take for references: a JSON Patch `{"op": "replace", "path": "/subject/reference",
/// "value": "Patient/p9"}`, or a FHIRPath Patch `valueString` / `valueUri` part naming one.
/// Every string value in the body that is a Patient reference counts (local ones as patients,
/// others as external references); objects with a `reference` are already read by
/// [`request_patients`]. A body that is not JSON adds nothing (its gap is already recorded).
pub fn patch_string_references(body: &[u8], local: &LocalBases) -> Findings {
    let mut out = Findings::default();
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return out;
    };
    let mut stack = vec![&value];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::String(s) => {
                out.note_patient(s, local);
            }
            serde_json::Value::Array(items) => stack.extend(items.iter()),
            serde_json::Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    out
}

/// Patients in newline-delimited FHIR JSON (a Bulk Data file): each non-blank line is one
/// resource, read like a response body; a line that is not JSON is the gap `invalid_json`.
/// Memory is bounded by the longest line, not the file.
pub fn ndjson_patients(body: &[u8], local: &LocalBases) -> Findings {
    let mut out = Findings::default();
    for line in body.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let f = response_patients(line, local);
        for p in &f.patients {
            out.add(p);
        }
        for url in &f.external_refs {
            out.add_external(url);
        }
        out.external_refs_omitted += f.external_refs_omitted;
        out.gaps.extend(f.gaps.iter().copied());
    }
    out
}

/// The files a FHIR Bulk Data manifest (the completed status poll's answer: `transactionTime`,
/// `request`, `output`) lists, each with whether it is served under this EHR's base (its
/// download passes through the gateway, where its patients are recorded) or elsewhere. `None`
/// when `body` is not a manifest.
pub fn bulk_manifest_files(body: &[u8], local: &LocalBases) -> Option<Vec<BulkFile>> {
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    let manifest = doc.as_object()?;
    if !manifest.contains_key("transactionTime") || !manifest.contains_key("output") {
        return None;
    }
    let mut files = Vec::new();
    for key in ["output", "error", "deleted"] {
        for item in manifest
            .get(key)
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            if let Some(url) = item.get("url").and_then(|u| u.as_str()) {
                let through_gateway = url
                    .rsplit_once('/')
                    .and_then(|(dir, _)| {
                        // A file under the base: some prefix of its directory is a local base.
                        let mut prefix = dir;
                        loop {
                            if local.is_local(prefix) {
                                return Some(());
                            }
                            prefix = prefix.rsplit_once('/')?.0;
                        }
                    })
                    .is_some();
                files.push(BulkFile {
                    url: url.chars().take(MAX_EXTERNAL_REF_BYTES).collect(),
                    through_gateway,
                });
            }
        }
    }
    Some(files)
}

pub use crate::record::BulkFile;

/// Patients in a FHIR XML response body; as [`response_patients`].
pub fn response_patients_xml(body: &[u8], local: &LocalBases) -> Findings {
    interpret(
        xml::parse(body).ok(),
        Gap::InvalidXml,
        &Scope::response(local),
    )
}

/// Patients in a FHIR XML request body; as [`request_patients`].
pub fn request_patients_xml(
    body: &[u8],
    creating: bool,
    entries: &dyn EntryClassifier,
    local: &LocalBases,
) -> Findings {
    let scope = Scope::request(creating, entries, local);
    interpret(xml::parse(body).ok(), Gap::InvalidXml, &scope)
}

fn extract(body: &[u8], scope: &Scope<'_>) -> Findings {
    interpret(parse(body).ok(), Gap::InvalidJson, scope)
}

/// The findings of a parsed document; `None`: it did not parse (the gap `unreadable`).
fn interpret(doc: Option<Res<'_>>, unreadable: Gap, scope: &Scope<'_>) -> Findings {
    let mut out = Findings::default();
    let Some(doc) = doc else {
        out.gap(unreadable);
        return out;
    };
    if !doc.resource_type.is_empty() {
        out.document_type = Some(doc.resource_type.to_string());
    }
    out.bundle_type = doc.bundle_type.as_deref().map(str::to_string);
    walk_resource(&doc, scope, None, &mut out);
    // A Patient returned whole (a create answered with its representation) names itself.
    if scope.request.is_none() && doc.resource_type == "Patient" && doc.id.is_some() {
        out.located += 1;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Interpretation
// ---------------------------------------------------------------------------------------------

/// Whose bytes a document is, how request entries are classified, and which bases are local.
struct Scope<'c> {
    /// `None` for a response; the entry classifier for a request.
    request: Option<&'c dyn EntryClassifier>,
    /// The document is created by the request (its Patient ids are not real yet).
    creating: bool,
    /// This server's bases.
    local: &'c LocalBases,
}

impl<'c> Scope<'c> {
    fn response(local: &'c LocalBases) -> Scope<'c> {
        Scope {
            request: None,
            creating: false,
            local,
        }
    }

    fn request(
        creating: bool,
        entries: &'c dyn EntryClassifier,
        local: &'c LocalBases,
    ) -> Scope<'c> {
        Scope {
            request: Some(entries),
            creating,
            local,
        }
    }

    fn with_creating(&self, creating: bool) -> Scope<'c> {
        Scope {
            request: self.request,
            creating,
            local: self.local,
        }
    }
}

/// The enclosing Bundle's entries, for `urn:` references.
struct BundleIndex<'r, 'a> {
    entries: &'r [Entry<'a>],
    /// Entries created by the request (POST entries of a request Bundle).
    created: &'r [bool],
    outer: Option<&'r BundleIndex<'r, 'a>>,
}

impl<'r, 'a> BundleIndex<'r, 'a> {
    fn find(&self, full_url: &str) -> Option<(&'r Entry<'a>, bool)> {
        for (i, e) in self.entries.iter().enumerate() {
            if e.full_url.as_deref() == Some(full_url) {
                return Some((e, self.created.get(i).copied().unwrap_or(false)));
            }
        }
        self.outer.and_then(|o| o.find(full_url))
    }
}

fn walk_resource(
    res: &Res<'_>,
    scope: &Scope<'_>,
    bundle: Option<&BundleIndex<'_, '_>>,
    out: &mut Findings,
) {
    walk_resource_in(res, scope, bundle, None, out)
}

fn walk_resource_in(
    res: &Res<'_>,
    scope: &Scope<'_>,
    bundle: Option<&BundleIndex<'_, '_>>,
    container: Option<&Res<'_>>,
    out: &mut Findings,
) {
    if res.resource_type == "Patient" {
        if container.is_some() {
            out.gap(Gap::ContainedPatient);
        } else if scope.creating {
            out.gap(Gap::CreatedPatient);
            out.created_patients += 1;
        } else {
            match res.id.as_deref() {
                Some(id) if is_fhir_id(id) => out.add(id),
                _ => out.gap(Gap::PatientWithoutId),
            }
        }
    }
    // `#id` references inside a contained resource resolve against its container.
    let local = container.unwrap_or(res);
    for r in &res.refs {
        resolve_reference(r, local, bundle, scope.local, out);
    }
    for c in &res.contained {
        walk_resource_in(c, scope, bundle, Some(local), out);
    }
    // Resources nested in elements (`Parameters.parameter.resource`, an entry's
    // `response.outcome`) are their own resources, not created by the request.
    let nested_scope = scope.with_creating(false);
    for n in &res.nested {
        walk_resource(n, &nested_scope, bundle, out);
    }
    if res.resource_type == "Bundle" && !res.entries.is_empty() {
        walk_bundle(res, scope, bundle, out);
    }
}

fn walk_bundle(
    res: &Res<'_>,
    scope: &Scope<'_>,
    outer: Option<&BundleIndex<'_, '_>>,
    out: &mut Findings,
) {
    let created: Vec<bool> = res
        .entries
        .iter()
        .map(|e| scope.request.is_some() && e.method.as_deref() == Some("POST"))
        .collect();
    let index = BundleIndex {
        entries: &res.entries,
        created: &created,
        outer,
    };
    let plain = scope.with_creating(false);
    for (i, entry) in res.entries.iter().enumerate() {
        match scope.request {
            Some(classifier) => {
                if let (Some(method), Some(url)) = (entry.method.as_deref(), entry.url.as_deref()) {
                    let (patients, complete) = classifier.classify_entry(method, url);
                    for p in &patients {
                        out.add(p);
                    }
                    if !complete {
                        if url.starts_with("Patient?") {
                            // A conditional entry URL (`Patient?identifier=`) names no id.
                            out.gap(Gap::ConditionalReference);
                        } else if matches!(method, "DELETE" | "PATCH") {
                            // Whose resource it was is only in the EHR.
                            out.gap(Gap::NoRepresentation);
                        }
                    }
                }
            }
            None => {
                // A history entry without a resource (a deletion) still discloses the id.
                if let Some(url) = entry.url.as_deref() {
                    out.note_patient(url.split('?').next().unwrap_or(""), scope.local);
                }
                if let Some(loc) = entry.location.as_deref() {
                    if out.note_patient(loc, scope.local) {
                        out.located += 1;
                    }
                }
            }
        }
        if let Some(r) = &entry.resource {
            let entry_scope = scope.with_creating(created[i]);
            walk_resource(r, &entry_scope, Some(&index), out);
        }
        for n in &entry.nested {
            walk_resource(n, &plain, Some(&index), out);
        }
        for r in &entry.refs {
            // References outside the entry's resource (rare: extensions on the entry).
            resolve_reference(r, res, Some(&index), scope.local, out);
        }
    }
}

fn resolve_reference(
    r: &Ref<'_>,
    local: &Res<'_>,
    bundle: Option<&BundleIndex<'_, '_>>,
    bases: &LocalBases,
    out: &mut Findings,
) {
    let typed_patient = r.type_name.as_deref() == Some("Patient");
    let Some(text) = r.reference.as_deref() else {
        if typed_patient && r.identifier {
            out.gap(Gap::LogicalReference);
        }
        return;
    };
    if let Some(local_id) = text.strip_prefix('#') {
        if local_id.is_empty() {
            return; // the container itself
        }
        if let Some(c) = local
            .contained
            .iter()
            .find(|c| c.id.as_deref() == Some(local_id))
        {
            if c.resource_type == "Patient" {
                out.gap(Gap::ContainedPatient);
            }
        }
        return;
    }
    if text.starts_with("urn:uuid:") || text.starts_with("urn:oid:") {
        match bundle.and_then(|b| b.find(text)) {
            Some((entry, created)) => {
                if let Some(res) = entry
                    .resource
                    .as_ref()
                    .filter(|r| r.resource_type == "Patient")
                {
                    if created {
                        // Counted once, at the entry itself.
                        out.gap(Gap::CreatedPatient);
                    } else if let Some(id) = res.id.as_deref().filter(|id| is_fhir_id(id)) {
                        out.add(id);
                    } else {
                        out.gap(Gap::PatientWithoutId);
                    }
                }
            }
            None => {
                if typed_patient {
                    out.gap(Gap::InvalidReference);
                }
            }
        }
        return;
    }
    if out.note_patient(text, bases) {
        return;
    }
    // Not a plain Patient reference: conditional, malformed, or another type.
    let path = text.split('?').next().unwrap_or(text);
    let names_patient = path == "Patient"
        || path.ends_with("/Patient")
        || path.starts_with("Patient/")
        || path.contains("/Patient/");
    if text.contains('?') && (names_patient || typed_patient) {
        out.gap(Gap::ConditionalReference);
    } else if names_patient || (typed_patient && !text.contains('/')) {
        out.gap(Gap::InvalidReference);
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing: a serde visitor that keeps only what attribution needs
// ---------------------------------------------------------------------------------------------

/// A resource, reduced to what attribution reads.
#[derive(Debug, Default)]
struct Res<'a> {
    resource_type: Cow<'a, str>,
    id: Option<Cow<'a, str>>,
    /// Every reference in the resource outside its contained resources and entries.
    refs: Vec<Ref<'a>>,
    contained: Vec<Res<'a>>,
    /// Resources nested in elements (not contained, not entries).
    nested: Vec<Res<'a>>,
    /// Bundle entries (only on a Bundle).
    entries: Vec<Entry<'a>>,
    /// `Bundle.type` (only on a Bundle): `transaction`, `batch`, `searchset` ...
    bundle_type: Option<Cow<'a, str>>,
}

/// A `Reference` (or what looks like one).
#[derive(Debug, Default)]
struct Ref<'a> {
    reference: Option<Cow<'a, str>>,
    type_name: Option<Cow<'a, str>>,
    identifier: bool,
}

/// A Bundle entry, reduced.
#[derive(Debug, Default)]
struct Entry<'a> {
    full_url: Option<Cow<'a, str>>,
    /// Boxed: a Bundle of many entries keeps them all, and most of an entry is its resource.
    resource: Option<Box<Res<'a>>>,
    /// `request.method` and `request.url`.
    method: Option<Cow<'a, str>>,
    url: Option<Cow<'a, str>>,
    /// `response.location`.
    location: Option<Cow<'a, str>>,
    /// Other resources and references in the entry (`response.outcome`, extensions).
    nested: Vec<Res<'a>>,
    refs: Vec<Ref<'a>>,
}

impl<'a> Entry<'a> {
    /// An `entry` element of something that is not a Bundle: its resources and references
    /// count like any element's.
    fn merge_plain_into(self, acc: &mut Acc<'a>) {
        if let Some(r) = self.resource {
            acc.resources.push(*r);
        }
        acc.resources.extend(self.nested);
        acc.refs.extend(self.refs);
    }
}

/// What an object's descendants hold, merged upwards.
#[derive(Debug, Default)]
struct Acc<'a> {
    refs: Vec<Ref<'a>>,
    resources: Vec<Res<'a>>,
}

impl<'a> Acc<'a> {
    fn absorb(&mut self, other: Acc<'a>) {
        self.refs.extend(other.refs);
        self.resources.extend(other.resources);
    }
}

/// One JSON object, before we know whether it is a resource, a reference or an entry.
#[derive(Debug, Default)]
struct Obj<'a> {
    resource_type: Option<Cow<'a, str>>,
    id: Option<Cow<'a, str>>,
    reference: Option<Cow<'a, str>>,
    type_name: Option<Cow<'a, str>>,
    url: Option<Cow<'a, str>>,
    identifier: bool,
    /// The keys of Bundle entries and their parts, and `contained`: boxed, because most
    /// objects (codings, quantities, periods) have none of them, and every object is moved up
    /// the parse by value (at its full size this was a sixth of the extractor's time).
    rare: Option<Box<Rare<'a>>>,
    acc: Acc<'a>,
}

/// The keys few objects carry (see [`Obj::rare`]).
#[derive(Debug, Default)]
struct Rare<'a> {
    full_url: Option<Cow<'a, str>>,
    method: Option<Cow<'a, str>>,
    location: Option<Cow<'a, str>>,
    resource: Option<Box<Obj<'a>>>,
    request: Option<Box<Obj<'a>>>,
    response: Option<Box<Obj<'a>>>,
    contained: Vec<Obj<'a>>,
    /// Each element of an `entry` array, reduced as soon as it is read (a Bundle of 100,000
    /// entries never holds them all as parsed objects).
    entry: Vec<Entry<'a>>,
}

impl<'a> Rare<'a> {
    /// Merge the `resource`, `request` and `response` objects (outside a Bundle entry, plain
    /// elements) into `acc`.
    fn merge_children_into(&mut self, acc: &mut Acc<'a>) {
        for o in self
            .resource
            .take()
            .into_iter()
            .chain(self.request.take())
            .chain(self.response.take())
        {
            o.merge_into(acc);
        }
    }
}

impl<'a> Obj<'a> {
    /// The rare keys, made on the first one.
    fn rare_mut(&mut self) -> &mut Rare<'a> {
        self.rare.get_or_insert_with(Box::default)
    }

    /// The rare keys, taken out (empty when the object had none).
    fn take_rare(&mut self) -> Rare<'a> {
        self.rare.take().map(|r| *r).unwrap_or_default()
    }

    /// Merge this (non-resource) object into its parent's accumulator.
    fn merge_into(self, acc: &mut Acc<'a>) {
        match self.into_found() {
            Found::Resource(r) => acc.resources.push(r),
            Found::Plain(plain) => acc.absorb(plain),
        }
    }

    fn into_found(mut self) -> Found<'a> {
        if let Some(resource_type) = self.resource_type.take() {
            return Found::Resource(self.into_res(resource_type));
        }
        let mut acc = std::mem::take(&mut self.acc);
        if self.reference.is_some() || (self.identifier && self.type_name.is_some()) {
            acc.refs.push(Ref {
                reference: self.reference.take(),
                type_name: self.type_name.take(),
                identifier: self.identifier,
            });
        }
        if let Some(mut rare) = self.rare.take() {
            rare.merge_children_into(&mut acc);
            for o in std::mem::take(&mut rare.contained) {
                o.merge_into(&mut acc);
            }
            for e in std::mem::take(&mut rare.entry) {
                e.merge_plain_into(&mut acc);
            }
        }
        Found::Plain(acc)
    }

    fn into_res(mut self, resource_type: Cow<'a, str>) -> Res<'a> {
        let mut acc = std::mem::take(&mut self.acc);
        // A resource's own `type`/`identifier`/`reference` keys are its elements, not a
        // Reference (e.g. `DocumentReference` has no `reference`, but a resource called that
        // way is no Reference either).
        let mut rare = self.take_rare();
        rare.merge_children_into(&mut acc);
        let mut contained = Vec::new();
        for o in std::mem::take(&mut rare.contained) {
            match o.into_found() {
                Found::Resource(r) => contained.push(r),
                Found::Plain(p) => acc.absorb(p),
            }
        }
        let mut entries = Vec::new();
        let bundle_type = if resource_type == "Bundle" {
            self.type_name.take()
        } else {
            None
        };
        if resource_type == "Bundle" {
            entries = std::mem::take(&mut rare.entry);
        } else {
            // `List.entry` and the like: plain elements, whose references count.
            for e in std::mem::take(&mut rare.entry) {
                e.merge_plain_into(&mut acc);
            }
        }
        Res {
            resource_type,
            id: self.id.take(),
            refs: acc.refs,
            contained,
            nested: acc.resources,
            entries,
            bundle_type,
        }
    }

    fn into_entry(mut self) -> Entry<'a> {
        let mut rare = self.take_rare();
        let mut entry = Entry {
            full_url: rare.full_url.take(),
            ..Entry::default()
        };
        let mut acc = Acc::default();
        if let Some(resource) = rare.resource.take() {
            match resource.into_found() {
                Found::Resource(r) => entry.resource = Some(Box::new(r)),
                Found::Plain(p) => acc.absorb(p),
            }
        }
        if let Some(mut request) = rare.request.take() {
            entry.method = request.rare.as_mut().and_then(|r| r.method.take());
            entry.url = request.url.take();
            request.merge_into(&mut acc);
        }
        if let Some(mut response) = rare.response.take() {
            entry.location = response.rare.as_mut().and_then(|r| r.location.take());
            response.merge_into(&mut acc);
        }
        if let Some(resource_type) = self.resource_type.take() {
            // A resource where an entry belongs (malformed, but a lenient server may act on
            // its `request`, taken above): the rest of it (its `contained`, its `entry` ...)
            // counts as the entry's resource.
            self.rare = Some(Box::new(rare));
            let r = self.into_res(resource_type);
            if entry.resource.is_none() {
                entry.resource = Some(Box::new(r));
            } else {
                acc.resources.push(r);
            }
        } else {
            acc.absorb(std::mem::take(&mut self.acc));
            if self.reference.is_some() || (self.identifier && self.type_name.is_some()) {
                acc.refs.push(Ref {
                    reference: self.reference.take(),
                    type_name: self.type_name.take(),
                    identifier: self.identifier,
                });
            }
            for o in std::mem::take(&mut rare.contained) {
                o.merge_into(&mut acc);
            }
            for e in std::mem::take(&mut rare.entry) {
                e.merge_plain_into(&mut acc);
            }
        }
        acc.refs.shrink_to_fit();
        entry.nested = acc.resources;
        entry.refs = acc.refs;
        entry
    }
}

enum Found<'a> {
    Resource(Res<'a>),
    Plain(Acc<'a>),
}

/// Parse a document. A top-level object is a resource (or a plain object whose references
/// count); anything else (a JSON Patch array, a scalar) is walked, and its references count.
fn parse(body: &[u8]) -> Result<Res<'_>, serde_json::Error> {
    // A document that is UTF-8 as a whole (every valid one, RFC 8259) is read as text: its
    // strings are then not validated one by one (a fifth of the time). Any other is read as
    // bytes, where only the strings attribution reads must be UTF-8, as before.
    match std::str::from_utf8(body) {
        Ok(text) => parse_with(serde_json::Deserializer::from_str(text)),
        Err(_) => parse_with(serde_json::Deserializer::from_slice(body)),
    }
}

fn parse_with<'a, R: serde_json::de::Read<'a>>(
    mut de: serde_json::Deserializer<R>,
) -> Result<Res<'a>, serde_json::Error> {
    let mut acc = Acc::default();
    let top = ObjSeed { acc: &mut acc }.deserialize(&mut de)?;
    de.end()?;
    if let Some(obj) = top {
        match obj.into_found() {
            Found::Resource(r) => return Ok(r),
            Found::Plain(p) => acc.absorb(p),
        }
    }
    Ok(Res {
        resource_type: Cow::Borrowed(""),
        refs: acc.refs,
        nested: acc.resources,
        ..Res::default()
    })
}

/// The visitor methods of the values a seed drops (numbers, booleans, null, and strings unless
/// the seed keeps them): each returns `$value`.
macro_rules! ignore_scalars {
    ($value:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

/// An object kept whole (the document, `resource`, `request`, `response`); any other value
/// is walked into `acc`.
struct ObjSeed<'p, 'a> {
    acc: &'p mut Acc<'a>,
}

impl<'de, 'p> DeserializeSeed<'de> for ObjSeed<'p, 'de> {
    type Value = Option<Obj<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, 'p> Visitor<'de> for ObjSeed<'p, 'de> {
    type Value = Option<Obj<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Self::Value, M::Error> {
        ObjVisitor.visit_map(map).map(Some)
    }

    fn visit_seq<S: SeqAccess<'de>>(self, seq: S) -> Result<Self::Value, S::Error> {
        ValueSeed { acc: self.acc }.visit_seq(seq)?;
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    ignore_scalars!(None);
}

/// Any value: objects and arrays are walked into `acc`, scalars dropped.
struct ValueSeed<'p, 'a> {
    acc: &'p mut Acc<'a>,
}

impl<'de, 'p> DeserializeSeed<'de> for ValueSeed<'p, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, 'p> Visitor<'de> for ValueSeed<'p, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<(), M::Error> {
        ObjVisitor.visit_map(map)?.merge_into(self.acc);
        Ok(())
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<(), S::Error> {
        while seq
            .next_element_seed(ValueSeed {
                acc: &mut *self.acc,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    ignore_scalars!(());
}

/// The keys attribution reads; every other key is walked generically.
enum Key {
    ResourceType,
    Id,
    Reference,
    Type,
    Identifier,
    FullUrl,
    Method,
    Url,
    Location,
    Resource,
    Request,
    Response,
    Contained,
    Entry,
    /// XHTML narrative: never holds a reference, skipped without decoding.
    Div,
    Other,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E>(self, k: &str) -> Result<Key, E> {
                Ok(match k {
                    "resourceType" => Key::ResourceType,
                    "id" => Key::Id,
                    "reference" => Key::Reference,
                    "type" => Key::Type,
                    "identifier" => Key::Identifier,
                    "fullUrl" => Key::FullUrl,
                    "method" => Key::Method,
                    "url" => Key::Url,
                    "location" => Key::Location,
                    "resource" => Key::Resource,
                    "request" => Key::Request,
                    "response" => Key::Response,
                    "contained" => Key::Contained,
                    "entry" => Key::Entry,
                    "div" => Key::Div,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// A string kept (borrowed when it has no escapes); any other value is walked into `acc`.
struct StrSeed<'p, 'a> {
    acc: &'p mut Acc<'a>,
}

impl<'de, 'p> DeserializeSeed<'de> for StrSeed<'p, 'de> {
    type Value = Option<Cow<'de, str>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, 'p> Visitor<'de> for StrSeed<'p, 'de> {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_string())))
    }

    fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Self::Value, M::Error> {
        ValueSeed { acc: self.acc }.visit_map(map)?;
        Ok(None)
    }

    fn visit_seq<S: SeqAccess<'de>>(self, seq: S) -> Result<Self::Value, S::Error> {
        ValueSeed { acc: self.acc }.visit_seq(seq)?;
        Ok(None)
    }

    ignore_scalars!(None);
}

/// An array of objects, each kept as `reduce` makes it as soon as it is read: `contained`
/// keeps them whole; `entry` reduces each to an [`Entry`] (its `request`, `response` and
/// `fullUrl` kept even when it wrongly carries a `resourceType` of its own), so a Bundle of
/// 100,000 entries never holds them all as parsed objects. Anything else is walked.
struct ObjListSeed<'p, 'a, T> {
    acc: &'p mut Acc<'a>,
    out: &'p mut Vec<T>,
    reduce: fn(Obj<'a>) -> T,
}

impl<'de, 'p, T> DeserializeSeed<'de> for ObjListSeed<'p, 'de, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, 'p, T> Visitor<'de> for ObjListSeed<'p, 'de, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of objects")
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<(), S::Error> {
        while let Some(item) = seq.next_element_seed(ObjSeed {
            acc: &mut *self.acc,
        })? {
            if let Some(obj) = item {
                self.out.push((self.reduce)(obj));
            }
        }
        Ok(())
    }

    fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<(), M::Error> {
        ValueSeed { acc: self.acc }.visit_map(map)
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    ignore_scalars!(());
}

/// One object: the keys attribution reads are kept, the rest walked.
struct ObjVisitor;

impl<'de> Visitor<'de> for ObjVisitor {
    type Value = Obj<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Obj<'de>, M::Error> {
        // The object's rare keys, made on the first one (a field of its own, so that it can be
        // borrowed beside `acc`).
        macro_rules! rare {
            ($o:ident) => {
                $o.rare.get_or_insert_with(Box::default)
            };
        }
        let mut o = Obj::default();
        while let Some(key) = map.next_key::<Key>()? {
            let acc = &mut o.acc;
            match key {
                Key::ResourceType => o.resource_type = map.next_value_seed(StrSeed { acc })?,
                Key::Id => o.id = map.next_value_seed(StrSeed { acc })?,
                Key::Reference => o.reference = map.next_value_seed(StrSeed { acc })?,
                Key::Type => o.type_name = map.next_value_seed(StrSeed { acc })?,
                Key::FullUrl => rare!(o).full_url = map.next_value_seed(StrSeed { acc })?,
                Key::Method => rare!(o).method = map.next_value_seed(StrSeed { acc })?,
                Key::Url => o.url = map.next_value_seed(StrSeed { acc })?,
                Key::Location => rare!(o).location = map.next_value_seed(StrSeed { acc })?,
                Key::Identifier => {
                    // An identifier is an object (or a list of them); a string is some other
                    // element that happens to be called so.
                    let s = map.next_value_seed(StrSeed { acc })?;
                    o.identifier |= s.is_none();
                }
                Key::Resource => {
                    rare!(o).resource = map.next_value_seed(ObjSeed { acc })?.map(Box::new)
                }
                Key::Request => {
                    rare!(o).request = map.next_value_seed(ObjSeed { acc })?.map(Box::new)
                }
                Key::Response => {
                    rare!(o).response = map.next_value_seed(ObjSeed { acc })?.map(Box::new)
                }
                Key::Contained => map.next_value_seed(ObjListSeed {
                    acc,
                    out: &mut rare!(o).contained,
                    reduce: std::convert::identity,
                })?,
                Key::Entry => map.next_value_seed(ObjListSeed {
                    acc,
                    out: &mut rare!(o).entry,
                    reduce: Obj::into_entry,
                })?,
                Key::Div => {
                    map.next_value::<IgnoredAny>()?;
                }
                Key::Other => map.next_value_seed(ValueSeed { acc })?,
            }
        }
        Ok(o)
    }
}

mod xml;

#[cfg(test)]
mod tests;
