//! From returned records to accesses: one per request, whatever records it left.
//!
//! A change leaves an intent record (journaled before the EHR saw it) and an outcome record;
//! a large answer released in parts leaves continuation records naming the patients of each
//! part. They share the request ID. An access is shown with its outcome record (its status,
//! its time); an intent without an outcome (the gateway stopped, or the EHR never answered)
//! is an access whose outcome is unknown. Patients are those of every record of the request.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;

use super::ReportError;
use crate::query::answer::Answer;
use crate::record::{Phase, Record, Who};

/// One request, as the trail recorded it.
#[derive(Debug, Clone)]
pub struct Access {
    /// The record that stands for it: the outcome record, else the first of its records.
    pub record: Record,
    /// Every seq of its records in the answer, ascending.
    pub seqs: Vec<u64>,
    /// The patients every record of it named.
    pub patients: BTreeSet<String>,
    /// An outcome record is among them.
    pub has_outcome: bool,
}

impl Access {
    /// Its node.
    pub fn node(&self) -> &str {
        &self.record.header.node
    }

    /// Its time: the outcome record's (UTC, RFC 3339, microseconds).
    pub fn ts(&self) -> &str {
        &self.record.header.ts
    }

    /// `YYYY-MM-DD` of its time.
    pub fn day(&self) -> &str {
        self.ts().get(..10).unwrap_or("")
    }

    /// The user (`sub`), or how the request was unauthenticated.
    pub fn user(&self) -> String {
        match &self.record.event.who {
            Who::Authenticated(actor) => actor.user.clone(),
            Who::Unauthenticated { reason } => format!("(unauthenticated: {reason})"),
            Who::Gateway => "(the gateway)".into(),
        }
    }

    /// The user's display name, if the token carried one.
    pub fn user_name(&self) -> String {
        match &self.record.event.who {
            Who::Authenticated(actor) => actor.name.clone().unwrap_or_default(),
            _ => String::new(),
        }
    }

    /// The token's issuer.
    pub fn issuer(&self) -> String {
        match &self.record.event.who {
            Who::Authenticated(actor) => actor.issuer.clone(),
            _ => String::new(),
        }
    }

    /// The client application.
    pub fn client(&self) -> String {
        match &self.record.event.who {
            Who::Authenticated(actor) => actor.client_id.clone().unwrap_or_default(),
            _ => String::new(),
        }
    }

    /// The declared purposes of use, `;`-separated.
    pub fn purpose(&self) -> String {
        match &self.record.event.who {
            Who::Authenticated(actor) => actor.purpose_of_use.join(";"),
            _ => String::new(),
        }
    }

    /// Emergency access was declared.
    pub fn break_glass(&self) -> bool {
        matches!(&self.record.event.who, Who::Authenticated(a) if a.break_glass)
    }

    /// What was accessed: `Type/id`, `Type` (a search or create), or the path's first step.
    pub fn what(&self) -> String {
        let e = &self.record.event;
        match (&e.resource_type, &e.resource_id) {
            (Some(t), Some(id)) => format!("{t}/{id}"),
            (Some(t), None) => t.clone(),
            _ => String::new(),
        }
    }

    /// The HTTP status, or `none` when no outcome was recorded.
    pub fn status(&self) -> String {
        match (&self.record.event.outcome, self.has_outcome) {
            (Some(o), true) => o.status.to_string(),
            _ => "none".into(),
        }
    }

    /// The request may have given data out: its outcome succeeded (below 400) or is unknown.
    pub fn may_have_disclosed(&self) -> bool {
        match (&self.record.event.outcome, self.has_outcome) {
            (Some(o), true) => o.status < 400,
            _ => true,
        }
    }

    /// The client IP.
    pub fn client_ip(&self) -> &str {
        &self.record.event.net.client_ip
    }

    /// The device ID, if one was recorded.
    pub fn device(&self) -> String {
        self.record.event.net.device_id.clone().unwrap_or_default()
    }

    /// The client IP's country, if located.
    pub fn country(&self) -> String {
        self.record
            .event
            .net
            .geo
            .as_ref()
            .and_then(|g| g.as_ref())
            .and_then(|g| g.country.clone())
            .unwrap_or_default()
    }

    /// `node:seq` of each of its records: where the evidence is.
    pub fn evidence(&self) -> String {
        self.seqs
            .iter()
            .map(|s| format!("{}:{s}", self.node()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The accesses of an answer's rows, in time order (then node, then first seq).
pub fn accesses(answer: &Answer) -> Result<Vec<Access>, ReportError> {
    let rows = &answer.rows;
    let nodes = rows
        .column_by_name("node")
        .ok_or(ReportError::Column("node"))?
        .as_string::<i32>();
    let seqs = rows
        .column_by_name("seq")
        .ok_or(ReportError::Column("seq"))?
        .as_primitive::<Int64Type>();
    let lines = rows
        .column_by_name("line")
        .ok_or(ReportError::Column("line"))?
        .as_string::<i32>();
    let mut by_request: BTreeMap<(String, String), Access> = BTreeMap::new();
    for i in 0..rows.num_rows() {
        let (node, seq) = (nodes.value(i), seqs.value(i) as u64);
        let record: Record =
            serde_json::from_str(lines.value(i)).map_err(|source| ReportError::Record {
                node: node.to_string(),
                seq,
                source,
            })?;
        let key = (node.to_string(), record.event.request_id.clone());
        let is_outcome = record.event.phase == Phase::Outcome;
        let patients: Vec<String> = record.event.patients.iter().map(|p| p.id.clone()).collect();
        match by_request.get_mut(&key) {
            Some(access) => {
                access.seqs.push(seq);
                access.patients.extend(patients);
                if is_outcome && !access.has_outcome {
                    access.record = record;
                    access.has_outcome = true;
                }
            }
            None => {
                by_request.insert(
                    key,
                    Access {
                        record,
                        seqs: vec![seq],
                        patients: patients.into_iter().collect(),
                        has_outcome: is_outcome,
                    },
                );
            }
        }
    }
    let mut accesses: Vec<Access> = by_request.into_values().collect();
    for a in &mut accesses {
        a.seqs.sort_unstable();
    }
    accesses.sort_by(|a, b| {
        (a.ts(), a.node(), a.seqs.first()).cmp(&(b.ts(), b.node(), b.seqs.first()))
    });
    Ok(accesses)
}
