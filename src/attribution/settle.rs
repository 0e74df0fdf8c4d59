//! Settling the record: the patient list, attribution and gaps a record carries, from the route
//! rules' answer and what was read of the request body and the response.

use std::collections::{BTreeSet, HashSet};

use super::extract::{Findings, Gap};
use crate::record::{Attribution, InteractionKind, PatientRef, PatientSource};
use crate::rules::classify::SubsetGap;
use crate::rules::{AttributionClaim, Classification};

/// What the buffered path learnt, for [`settle`].
#[derive(Debug, Default)]
pub struct Inspection {
    /// Patients of the request body, when it was read.
    pub body: Option<Findings>,
    /// Patients of the response body, when it was read.
    pub response: Option<Findings>,
    /// The patient a `Location` response header names (a create answered without a body).
    pub location_patient: Option<String>,
    /// The current version of the resource a delete or patch changes, read from the EHR before
    /// the change was forwarded (the pre-image); empty findings when it did not exist.
    pub pre_image: Option<Findings>,
    /// Gaps found outside the extractor (`too_large`, `not_json`, `content_encoding`).
    pub gaps: BTreeSet<Gap>,
    /// The files a Bulk Data manifest in the response lists (empty: not a manifest).
    pub bulk_files: Vec<crate::record::BulkFile>,
}

/// The absolute references to other servers' patients that the request body and the response
/// carried (each once, bounded like [`Findings::external_refs`]), and how many more were
/// counted than kept.
pub fn external_refs(inspection: &Inspection) -> (Vec<String>, Option<u64>) {
    let mut all = Findings::default();
    let mut omitted = 0;
    for f in [
        &inspection.body,
        &inspection.response,
        &inspection.pre_image,
    ]
    .into_iter()
    .flatten()
    {
        for url in &f.external_refs {
            all.add_external(url);
        }
        omitted += f.external_refs_omitted;
    }
    omitted += all.external_refs_omitted;
    (all.external_refs, (omitted > 0).then_some(omitted))
}

/// The record's patients, attribution and gaps, from the route rules' answer and what the
/// buffered path read. `status`: the response status for an outcome record, `None` for an
/// intent (written before the request is forwarded).
///
/// * Patients: the rules' (path, query, header), then the body's (source `body`), then the
///   response's (source `response`), each id once.
/// * `complete` needs: no gap, and the patients of what was accessed known, either by the
///   request line (the rules say `complete`) or by what was read. For a read, search,
///   history or operation whose response was read, the response is what was disclosed, so
///   it settles the list. For a create or update, the body is the resource written. For a patch or delete of a resource whose patient the path
///   does not name, only a representation in the response tells (else the gap
///   `no_representation`). A Patient created by the request is the gap `created_patient` until
///   the response names its id.
pub fn settle(
    c: &Classification,
    inspection: &Inspection,
    status: Option<u16>,
) -> (Vec<PatientRef>, Attribution, Vec<String>) {
    if c.claim == AttributionClaim::None {
        return (Vec::new(), Attribution::None, Vec::new());
    }
    let mut list = PatientList::new(&c.patients);
    let mut gaps = inspection.gaps.clone();
    if let Some(gap) = c.subset_gap {
        gaps.insert(match gap {
            SubsetGap::Summary => Gap::Subsetted,
            SubsetGap::Graphql => Gap::Graphql,
        });
    }
    let request_complete = c.attribution == Attribution::Complete;
    let writes_resource = matches!(
        c.interaction,
        InteractionKind::Create | InteractionKind::Update
    );
    let body_is_the_resource = inspection.body.as_ref().is_some_and(|b| {
        writes_resource
            && b.document_type.is_some()
            && b.document_type.as_deref() == c.resource_type.as_deref()
    });
    if let Some(b) = &inspection.body {
        for p in &b.patients {
            list.add(p, PatientSource::Body);
        }
        gaps.extend(b.gaps.iter().copied());
    }
    if let Some(pre) = &inspection.pre_image {
        for p in &pre.patients {
            list.add(p, PatientSource::PreImage);
        }
        gaps.extend(pre.gaps.iter().copied());
    }
    let complete = match status {
        None => {
            gaps.is_empty()
                && (request_complete
                    || body_is_the_resource
                    || inspection.pre_image.is_some()
                    || (matches!(
                        c.interaction,
                        InteractionKind::Transaction | InteractionKind::Batch
                    ) && inspection.body.is_some()))
        }
        Some(status) => {
            let success = (200..300).contains(&status);
            add_response_patients(c, inspection, success, &mut list, &mut gaps);
            gaps.is_empty()
                && (request_complete
                    || inspection.response.is_some()
                    || body_is_the_resource
                    || !success)
        }
    };
    // `complete` came either from the rules (which honour the rule's claim) or from what was
    // read: a rule's `partial` claim describes its request line, which the inspected body or
    // response goes beyond.
    let attribution = if complete {
        Attribution::Complete
    } else {
        Attribution::Partial
    };
    let gaps = gaps.into_iter().map(|g| g.as_str().to_string()).collect();
    (list.patients, attribution, gaps)
}

/// The outcome's part of [`settle`]: the response's patients (and a `Location` header's), a
/// created Patient's gap closed once the response names it, and the gap `no_representation`
/// for a successful patch or delete whose patient neither the path nor the answer names.
fn add_response_patients(
    c: &Classification,
    inspection: &Inspection,
    success: bool,
    list: &mut PatientList,
    gaps: &mut BTreeSet<Gap>,
) {
    let mut located = 0;
    if let Some(r) = &inspection.response {
        for p in &r.patients {
            list.add(p, PatientSource::Response);
        }
        gaps.extend(r.gaps.iter().copied());
        located += r.located;
    }
    if let Some(p) = &inspection.location_patient {
        list.add(p, PatientSource::Response);
        located += 1;
    }
    // A Patient created by the request: named once the response gives its id (or nothing was
    // created).
    let created = inspection.body.as_ref().map_or(0, |b| b.created_patients);
    if created > 0 && (!success || located >= created) {
        gaps.remove(&Gap::CreatedPatient);
    }
    let representation = inspection.response.as_ref().is_some_and(|r| {
        r.document_type.is_some() && r.document_type.as_deref() == c.resource_type.as_deref()
    });
    let changes_existing = matches!(
        c.interaction,
        InteractionKind::Patch | InteractionKind::Delete
    );
    let request_complete = c.attribution == Attribution::Complete;
    let pre_image = inspection.pre_image.is_some();
    if success && changes_existing && !request_complete && !representation && !pre_image {
        gaps.insert(Gap::NoRepresentation);
    }
}

/// A record's patient list: each id once, in the order found.
struct PatientList {
    patients: Vec<PatientRef>,
    seen: HashSet<String>,
}

impl PatientList {
    fn new(from_rules: &[PatientRef]) -> PatientList {
        PatientList {
            seen: from_rules.iter().map(|p| p.id.clone()).collect(),
            patients: from_rules.to_vec(),
        }
    }

    fn add(&mut self, id: &str, source: PatientSource) {
        if self.seen.insert(id.to_string()) {
            self.patients.push(PatientRef {
                id: id.to_string(),
                source,
            });
        }
    }
}
