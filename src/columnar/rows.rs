//! The columnar schema, version [`SCHEMA_VERSION`]: one row per journal record, every record
//! field a typed column, and the rows built from journal lines ([`Rows`]).
//!
//! Column names are what SQL users type (`user_id`, not `user`, a reserved word in several
//! dialects); nested record groups are flattened (`net.client_ip` is `client_ip`,
//! `outcome.status` is `status`, `clock.synced` is `clock_synced`). Times are UTC timestamps
//! in microseconds. Lists stay lists (`roles`, `patient_ids`, `patients` with `id` and
//! `source`); maps stay maps (`truncated`, `summary_reasons`).
//!
//! | column | type | from the record |
//! |---|---|---|
//! | `seq` | int64 | `seq` |
//! | `node` | string | `node` |
//! | `v` | int32 | `v` |
//! | `prev`, `leaf` | string (hex) | `prev`; the line's RFC 6962 leaf hash |
//! | `ts`, `received` | timestamp(µs, UTC) | `ts`; `received` (null if absent) |
//! | `phase`, `request_id`, `intent_seq` | string, string, int64 | same |
//! | `authenticated`, `unauthenticated_reason` | bool, string | `who.kind`, `who.reason` |
//! | `user_id`, `issuer`, `user_name`, `roles`, `client_id`, `purpose_of_use`, `jti`, `fhir_user`, `smart_patient`, `break_glass` | | `who` (an actor's fields) |
//! | `action`, `interaction`, `rule`, `resource_type`, `resource_id`, `method`, `path`, `query`, `forwarded_query` | strings | same |
//! | `patient_ids` | list of string | the distinct `patients[].id`, in record order |
//! | `patients` | list of {`id`, `source`} | `patients` |
//! | `attribution`, `attribution_gaps`, `external_refs`, `external_refs_omitted`, `bulk_files` | | same |
//! | `client_ip`, `peer_ip`, `forwarded_chain`, `device_id`, `device_id_source`, `user_agent` | | `net.*` |
//! | `geo_country`, `geo_city`, `geo_asn`, `geo_org`, `geo_unavailable` | | `net.geo.*`, `net.geo_unavailable` |
//! | `client_cert_sha256`, `client_cert_subject`, `gateway_node`, `gateway_listener` | | `net.client_cert.*`, `net.gateway.*` |
//! | `status`, `outcome_code`, `error`, `bytes_out`, `upstream_ms`, `content_type` | | `outcome.*` |
//! | `truncated` | map string → int64 | same |
//! | `part` | int32 | same |
//! | `summary_count`, `summary_first`, `summary_last`, `summary_reasons` | | `summary.*` |
//! | `clock_synced`, `clock_max_error_ms`, `clock_est_error_ms` | | `clock.*` |
//! | `line` | string | the journal line itself, byte for byte |
//!
//! The `line` column is the evidence: its SHA-256 leaf hash is `leaf`, which the signed
//! checkpoints cover; every other column is derived from it, and `verify` checks that they are.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayBuilder, ArrayRef, BooleanBuilder, Int32Builder, Int64Builder, ListArray,
    ListBuilder, MapBuilder, RecordBatch, StringBuilder, StructArray, TimestampMicrosecondBuilder,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use std::sync::OnceLock;

use crate::record::{self, Record, Who};

/// The version of the columnar schema, written into every file's key-value metadata
/// (`auditgate.columnar.version`). A change of columns is a new version.
pub const SCHEMA_VERSION: u32 = 1;

/// Why a journal line could not become a row.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    /// The line is not a record (a segment is expected to hold only records).
    #[error("line {index} of the segment is not a record: {reason}")]
    NotARecord {
        /// 0-based line number in the segment.
        index: usize,
        /// What serde said.
        reason: String,
    },
    /// A timestamp field does not parse as RFC 3339.
    #[error("line {index}: {field} {value:?} is not an RFC 3339 time")]
    BadTime {
        /// 0-based line number in the segment.
        index: usize,
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
    },
}

/// Microseconds since the epoch of an RFC 3339 time.
pub fn micros_of(ts: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).ok()
}

/// A list of strings column (`roles`, `patient_ids`, ...).
type StringList = ListBuilder<StringBuilder>;
/// A map of string to count column (`truncated`, `summary_reasons`).
type CountMap = MapBuilder<StringBuilder, Int64Builder>;

/// Builders of a list of two-field structs (`patients`, `bulk_files`): offsets and children.
struct PairList<B> {
    offsets: Vec<i32>,
    /// Items pushed so far.
    items: i32,
    first: StringBuilder,
    second: B,
}

impl<B: arrow::array::ArrayBuilder> PairList<B> {
    fn new(second: B) -> Self {
        PairList {
            offsets: vec![0],
            items: 0,
            first: StringBuilder::new(),
            second,
        }
    }

    fn close_row(&mut self) {
        self.offsets.push(self.items);
    }

    fn finish(&mut self, names: (&str, &str), second_type: DataType) -> ArrayRef {
        let fields = Fields::from(vec![
            Field::new(names.0, DataType::Utf8, false),
            Field::new(names.1, second_type, false),
        ]);
        let children: Vec<ArrayRef> = vec![finish_sized(&mut self.first), self.second.finish()];
        let items = StructArray::new(fields.clone(), children, None);
        let offsets = OffsetBuffer::new(std::mem::take(&mut self.offsets).into());
        self.offsets = vec![0];
        self.items = 0;
        Arc::new(ListArray::new(
            Arc::new(Field::new("item", DataType::Struct(fields), false)),
            offsets,
            Arc::new(items),
            None,
        ))
    }
}

/// Column builders for a batch of rows.
pub struct Rows {
    seq: Int64Builder,
    node: StringBuilder,
    v: Int32Builder,
    prev: StringBuilder,
    leaf: StringBuilder,
    ts: TimestampMicrosecondBuilder,
    received: TimestampMicrosecondBuilder,
    phase: StringBuilder,
    request_id: StringBuilder,
    intent_seq: Int64Builder,
    authenticated: BooleanBuilder,
    unauthenticated_reason: StringBuilder,
    user_id: StringBuilder,
    issuer: StringBuilder,
    user_name: StringBuilder,
    roles: StringList,
    client_id: StringBuilder,
    purpose_of_use: StringList,
    jti: StringBuilder,
    fhir_user: StringBuilder,
    smart_patient: StringBuilder,
    break_glass: BooleanBuilder,
    action: StringBuilder,
    interaction: StringBuilder,
    rule: StringBuilder,
    resource_type: StringBuilder,
    resource_id: StringBuilder,
    method: StringBuilder,
    path: StringBuilder,
    query: StringBuilder,
    forwarded_query: StringBuilder,
    patient_ids: StringList,
    patients: PairList<StringBuilder>,
    attribution: StringBuilder,
    attribution_gaps: StringList,
    external_refs: StringList,
    external_refs_omitted: Int64Builder,
    bulk_files: PairList<BooleanBuilder>,
    client_ip: StringBuilder,
    peer_ip: StringBuilder,
    forwarded_chain: StringList,
    device_id: StringBuilder,
    device_id_source: StringBuilder,
    user_agent: StringBuilder,
    geo_country: StringBuilder,
    geo_city: StringBuilder,
    geo_asn: Int64Builder,
    geo_org: StringBuilder,
    geo_unavailable: StringBuilder,
    client_cert_sha256: StringBuilder,
    client_cert_subject: StringBuilder,
    gateway_node: StringBuilder,
    gateway_listener: StringBuilder,
    status: Int32Builder,
    outcome_code: Int32Builder,
    error: StringBuilder,
    bytes_out: Int64Builder,
    upstream_ms: Int64Builder,
    content_type: StringBuilder,
    truncated: CountMap,
    part: Int32Builder,
    summary_count: Int64Builder,
    summary_first: TimestampMicrosecondBuilder,
    summary_last: TimestampMicrosecondBuilder,
    summary_reasons: CountMap,
    clock_synced: BooleanBuilder,
    clock_max_error_ms: Int64Builder,
    clock_est_error_ms: Int64Builder,
    line: StringBuilder,
    /// Rows appended since the last [`Rows::finish`].
    count: usize,
}

fn utc() -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::new().with_timezone("+00:00")
}

fn string_list() -> StringList {
    ListBuilder::new(StringBuilder::new()).with_field(Field::new("item", DataType::Utf8, false))
}

fn count_map() -> CountMap {
    MapBuilder::new(None, StringBuilder::new(), Int64Builder::new()).with_values_field(Field::new(
        "values",
        DataType::Int64,
        false,
    ))
}

fn push_strings(list: &mut StringList, items: &[String]) {
    for item in items {
        list.values().append_value(item);
    }
    list.append(true);
}

fn push_counts(map: &mut CountMap, counts: Option<&std::collections::BTreeMap<String, u64>>) {
    for (key, count) in counts.into_iter().flatten() {
        map.keys().append_value(key);
        map.values().append_value(*count as i64);
    }
    // Appending to a map whose keys and values were pushed in pairs cannot fail.
    let _ = map.append(true);
}

/// Finish a string column and start the next batch's builder at this batch's size: a batch
/// like it then fills without reallocating (growing a multi-megabyte buffer by doubling copies
/// it and touches twice its pages, which was half of a columnar copy's time).
fn finish_sized(builder: &mut StringBuilder) -> ArrayRef {
    let (items, bytes) = (builder.len(), builder.values_slice().len());
    let array = builder.finish();
    *builder = StringBuilder::with_capacity(items, bytes);
    Arc::new(array)
}

impl Default for Rows {
    fn default() -> Self {
        Self::new()
    }
}

impl Rows {
    /// Empty builders.
    pub fn new() -> Self {
        Rows {
            seq: Int64Builder::new(),
            node: StringBuilder::new(),
            v: Int32Builder::new(),
            prev: StringBuilder::new(),
            leaf: StringBuilder::new(),
            ts: utc(),
            received: utc(),
            phase: StringBuilder::new(),
            request_id: StringBuilder::new(),
            intent_seq: Int64Builder::new(),
            authenticated: BooleanBuilder::new(),
            unauthenticated_reason: StringBuilder::new(),
            user_id: StringBuilder::new(),
            issuer: StringBuilder::new(),
            user_name: StringBuilder::new(),
            roles: string_list(),
            client_id: StringBuilder::new(),
            purpose_of_use: string_list(),
            jti: StringBuilder::new(),
            fhir_user: StringBuilder::new(),
            smart_patient: StringBuilder::new(),
            break_glass: BooleanBuilder::new(),
            action: StringBuilder::new(),
            interaction: StringBuilder::new(),
            rule: StringBuilder::new(),
            resource_type: StringBuilder::new(),
            resource_id: StringBuilder::new(),
            method: StringBuilder::new(),
            path: StringBuilder::new(),
            query: StringBuilder::new(),
            forwarded_query: StringBuilder::new(),
            patient_ids: string_list(),
            patients: PairList::new(StringBuilder::new()),
            attribution: StringBuilder::new(),
            attribution_gaps: string_list(),
            external_refs: string_list(),
            external_refs_omitted: Int64Builder::new(),
            bulk_files: PairList::new(BooleanBuilder::new()),
            client_ip: StringBuilder::new(),
            peer_ip: StringBuilder::new(),
            forwarded_chain: string_list(),
            device_id: StringBuilder::new(),
            device_id_source: StringBuilder::new(),
            user_agent: StringBuilder::new(),
            geo_country: StringBuilder::new(),
            geo_city: StringBuilder::new(),
            geo_asn: Int64Builder::new(),
            geo_org: StringBuilder::new(),
            geo_unavailable: StringBuilder::new(),
            client_cert_sha256: StringBuilder::new(),
            client_cert_subject: StringBuilder::new(),
            gateway_node: StringBuilder::new(),
            gateway_listener: StringBuilder::new(),
            status: Int32Builder::new(),
            outcome_code: Int32Builder::new(),
            error: StringBuilder::new(),
            bytes_out: Int64Builder::new(),
            upstream_ms: Int64Builder::new(),
            content_type: StringBuilder::new(),
            truncated: count_map(),
            part: Int32Builder::new(),
            summary_count: Int64Builder::new(),
            summary_first: utc(),
            summary_last: utc(),
            summary_reasons: count_map(),
            clock_synced: BooleanBuilder::new(),
            clock_max_error_ms: Int64Builder::new(),
            clock_est_error_ms: Int64Builder::new(),
            line: StringBuilder::new(),
            count: 0,
        }
    }

    /// Rows appended since the last [`Rows::finish`].
    pub fn len(&self) -> usize {
        self.count
    }

    /// No rows appended since the last [`Rows::finish`].
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Append one journal line (without its newline), parsed; `index` names it in errors.
    /// Returns the record and the line's leaf hash.
    pub fn push_line(
        &mut self,
        line: &[u8],
        index: usize,
    ) -> Result<(Record, record::LeafHash), RowError> {
        let record = Record::parse_line(line).map_err(|e| RowError::NotARecord {
            index,
            reason: e.to_string(),
        })?;
        let text = std::str::from_utf8(line).map_err(|e| RowError::NotARecord {
            index,
            reason: e.to_string(),
        })?;
        let leaf = record::leaf_hash(line);
        self.push(&record, text, &leaf, index)?;
        Ok((record, leaf))
    }

    /// Append one record, its line and leaf hash.
    pub fn push(
        &mut self,
        record: &Record,
        line: &str,
        leaf: &record::LeafHash,
        index: usize,
    ) -> Result<(), RowError> {
        let time = |field: &'static str, value: &str| {
            micros_of(value).ok_or_else(|| RowError::BadTime {
                index,
                field,
                value: value.to_string(),
            })
        };
        let ts = time("ts", &record.header.ts)?;
        let event = &record.event;
        let received = if event.received.is_empty() {
            None
        } else {
            Some(time("received", &event.received)?)
        };
        let summary_times = match &event.summary {
            Some(s) => Some((
                time("summary.first", &s.first)?,
                time("summary.last", &s.last)?,
            )),
            None => None,
        };

        self.seq.append_value(record.header.seq as i64);
        self.node.append_value(&record.header.node);
        self.v.append_value(record.header.v as i32);
        self.prev.append_value(&record.header.prev);
        self.leaf.append_value(hex::encode(leaf));
        self.ts.append_value(ts);
        self.received.append_option(received);
        self.phase.append_value(phase_name(event.phase));
        self.request_id.append_value(&event.request_id);
        self.intent_seq
            .append_option(event.intent_seq.map(|s| s as i64));

        match &event.who {
            Who::Authenticated(actor) => {
                self.authenticated.append_value(true);
                self.unauthenticated_reason.append_null();
                self.user_id.append_value(&actor.user);
                self.issuer.append_value(&actor.issuer);
                self.user_name.append_option(actor.name.as_deref());
                push_strings(&mut self.roles, &actor.roles);
                self.client_id.append_option(actor.client_id.as_deref());
                push_strings(&mut self.purpose_of_use, &actor.purpose_of_use);
                self.jti.append_option(actor.jti.as_deref());
                self.fhir_user.append_option(actor.fhir_user.as_deref());
                self.smart_patient
                    .append_option(actor.smart_patient.as_deref());
                self.break_glass.append_value(actor.break_glass);
            }
            Who::Unauthenticated { .. } | Who::Gateway => {
                self.authenticated.append_value(false);
                match &event.who {
                    Who::Unauthenticated { reason } => {
                        self.unauthenticated_reason.append_value(reason)
                    }
                    _ => self.unauthenticated_reason.append_null(),
                }
                self.user_id.append_null();
                self.issuer.append_null();
                self.user_name.append_null();
                push_strings(&mut self.roles, &[]);
                self.client_id.append_null();
                push_strings(&mut self.purpose_of_use, &[]);
                self.jti.append_null();
                self.fhir_user.append_null();
                self.smart_patient.append_null();
                self.break_glass.append_value(false);
            }
        }

        self.action.append_value(event.action.as_str());
        self.interaction.append_value(event.interaction.as_str());
        self.rule.append_value(&event.rule);
        self.resource_type
            .append_option(event.resource_type.as_deref());
        self.resource_id.append_option(event.resource_id.as_deref());
        self.method.append_value(&event.method);
        self.path.append_value(&event.path);
        self.query.append_option(event.query.as_deref());
        self.forwarded_query
            .append_option(event.forwarded_query.as_deref());

        let mut seen: Vec<&str> = Vec::with_capacity(event.patients.len());
        for p in &event.patients {
            if !seen.contains(&p.id.as_str()) {
                seen.push(&p.id);
                self.patient_ids.values().append_value(&p.id);
            }
            self.patients.first.append_value(&p.id);
            self.patients.second.append_value(p.source.as_str());
            self.patients.items += 1;
        }
        self.patient_ids.append(true);
        self.patients.close_row();
        self.attribution.append_value(event.attribution.as_str());
        push_strings(&mut self.attribution_gaps, &event.attribution_gaps);
        push_strings(&mut self.external_refs, &event.external_refs);
        self.external_refs_omitted
            .append_option(event.external_refs_omitted.map(|n| n as i64));
        for file in &event.bulk_files {
            self.bulk_files.first.append_value(&file.url);
            self.bulk_files.second.append_value(file.through_gateway);
            self.bulk_files.items += 1;
        }
        self.bulk_files.close_row();

        let net = &event.net;
        self.client_ip.append_value(&net.client_ip);
        self.peer_ip.append_value(&net.peer_ip);
        push_strings(&mut self.forwarded_chain, &net.forwarded_chain);
        self.device_id.append_option(net.device_id.as_deref());
        self.device_id_source
            .append_option(net.device_id_source.as_deref());
        self.user_agent.append_option(net.user_agent.as_deref());
        let geo = net.geo.as_ref().and_then(Option::as_ref);
        self.geo_country
            .append_option(geo.and_then(|g| g.country.as_deref()));
        self.geo_city
            .append_option(geo.and_then(|g| g.city.as_deref()));
        self.geo_asn
            .append_option(geo.and_then(|g| g.asn).map(i64::from));
        self.geo_org
            .append_option(geo.and_then(|g| g.org.as_deref()));
        self.geo_unavailable
            .append_option(net.geo_unavailable.as_deref());
        self.client_cert_sha256
            .append_option(net.client_cert.as_ref().map(|c| c.sha256.as_str()));
        self.client_cert_subject
            .append_option(net.client_cert.as_ref().and_then(|c| c.subject.as_deref()));
        self.gateway_node.append_value(&net.gateway.node);
        self.gateway_listener.append_value(&net.gateway.listener);

        let outcome = event.outcome.as_ref();
        self.status
            .append_option(outcome.map(|o| i32::from(o.status)));
        self.outcome_code
            .append_option(outcome.map(|o| i32::from(o.code)));
        self.error
            .append_option(outcome.and_then(|o| o.error.as_deref()));
        self.bytes_out
            .append_option(outcome.and_then(|o| o.bytes_out).map(|n| n as i64));
        self.upstream_ms
            .append_option(outcome.and_then(|o| o.upstream_ms).map(|n| n as i64));
        self.content_type
            .append_option(outcome.and_then(|o| o.content_type.as_deref()));

        push_counts(&mut self.truncated, Some(&event.truncated));
        self.part.append_option(event.part.map(|p| p as i32));
        let summary = event.summary.as_ref();
        self.summary_count
            .append_option(summary.map(|s| s.count as i64));
        self.summary_first.append_option(summary_times.map(|t| t.0));
        self.summary_last.append_option(summary_times.map(|t| t.1));
        push_counts(&mut self.summary_reasons, summary.map(|s| &s.reasons));

        self.clock_synced.append_value(event.clock.synced);
        self.clock_max_error_ms
            .append_value(event.clock.max_error_ms as i64);
        self.clock_est_error_ms
            .append_value(event.clock.est_error_ms as i64);
        self.line.append_value(line);
        self.count += 1;
        Ok(())
    }

    /// The rows appended so far as one batch (the builders start over).
    #[allow(
        clippy::expect_used,
        reason = "every column gets exactly one value per row, so the arrays fit the schema"
    )]
    pub fn finish(&mut self) -> RecordBatch {
        let arrays = self.finish_arrays().into_iter().map(|(_, a)| a).collect();
        RecordBatch::try_new(schema(), arrays).expect("rows fit the schema")
    }

    /// The finished arrays with their column names (the builders start over).
    fn finish_arrays(&mut self) -> Vec<(&'static str, ArrayRef)> {
        let columns: Vec<(&'static str, ArrayRef)> = vec![
            ("seq", Arc::new(self.seq.finish())),
            ("node", finish_sized(&mut self.node)),
            ("v", Arc::new(self.v.finish())),
            ("prev", finish_sized(&mut self.prev)),
            ("leaf", finish_sized(&mut self.leaf)),
            ("ts", Arc::new(self.ts.finish())),
            ("received", Arc::new(self.received.finish())),
            ("phase", finish_sized(&mut self.phase)),
            ("request_id", finish_sized(&mut self.request_id)),
            ("intent_seq", Arc::new(self.intent_seq.finish())),
            ("authenticated", Arc::new(self.authenticated.finish())),
            (
                "unauthenticated_reason",
                finish_sized(&mut self.unauthenticated_reason),
            ),
            ("user_id", finish_sized(&mut self.user_id)),
            ("issuer", finish_sized(&mut self.issuer)),
            ("user_name", finish_sized(&mut self.user_name)),
            ("roles", Arc::new(self.roles.finish())),
            ("client_id", finish_sized(&mut self.client_id)),
            ("purpose_of_use", Arc::new(self.purpose_of_use.finish())),
            ("jti", finish_sized(&mut self.jti)),
            ("fhir_user", finish_sized(&mut self.fhir_user)),
            ("smart_patient", finish_sized(&mut self.smart_patient)),
            ("break_glass", Arc::new(self.break_glass.finish())),
            ("action", finish_sized(&mut self.action)),
            ("interaction", finish_sized(&mut self.interaction)),
            ("rule", finish_sized(&mut self.rule)),
            ("resource_type", finish_sized(&mut self.resource_type)),
            ("resource_id", finish_sized(&mut self.resource_id)),
            ("method", finish_sized(&mut self.method)),
            ("path", finish_sized(&mut self.path)),
            ("query", finish_sized(&mut self.query)),
            ("forwarded_query", finish_sized(&mut self.forwarded_query)),
            ("patient_ids", Arc::new(self.patient_ids.finish())),
            (
                "patients",
                self.patients.finish(("id", "source"), DataType::Utf8),
            ),
            ("attribution", finish_sized(&mut self.attribution)),
            ("attribution_gaps", Arc::new(self.attribution_gaps.finish())),
            ("external_refs", Arc::new(self.external_refs.finish())),
            (
                "external_refs_omitted",
                Arc::new(self.external_refs_omitted.finish()),
            ),
            (
                "bulk_files",
                self.bulk_files
                    .finish(("url", "through_gateway"), DataType::Boolean),
            ),
            ("client_ip", finish_sized(&mut self.client_ip)),
            ("peer_ip", finish_sized(&mut self.peer_ip)),
            ("forwarded_chain", Arc::new(self.forwarded_chain.finish())),
            ("device_id", finish_sized(&mut self.device_id)),
            ("device_id_source", finish_sized(&mut self.device_id_source)),
            ("user_agent", finish_sized(&mut self.user_agent)),
            ("geo_country", finish_sized(&mut self.geo_country)),
            ("geo_city", finish_sized(&mut self.geo_city)),
            ("geo_asn", Arc::new(self.geo_asn.finish())),
            ("geo_org", finish_sized(&mut self.geo_org)),
            ("geo_unavailable", finish_sized(&mut self.geo_unavailable)),
            (
                "client_cert_sha256",
                finish_sized(&mut self.client_cert_sha256),
            ),
            (
                "client_cert_subject",
                finish_sized(&mut self.client_cert_subject),
            ),
            ("gateway_node", finish_sized(&mut self.gateway_node)),
            ("gateway_listener", finish_sized(&mut self.gateway_listener)),
            ("status", Arc::new(self.status.finish())),
            ("outcome_code", Arc::new(self.outcome_code.finish())),
            ("error", finish_sized(&mut self.error)),
            ("bytes_out", Arc::new(self.bytes_out.finish())),
            ("upstream_ms", Arc::new(self.upstream_ms.finish())),
            ("content_type", finish_sized(&mut self.content_type)),
            ("truncated", Arc::new(self.truncated.finish())),
            ("part", Arc::new(self.part.finish())),
            ("summary_count", Arc::new(self.summary_count.finish())),
            ("summary_first", Arc::new(self.summary_first.finish())),
            ("summary_last", Arc::new(self.summary_last.finish())),
            ("summary_reasons", Arc::new(self.summary_reasons.finish())),
            ("clock_synced", Arc::new(self.clock_synced.finish())),
            (
                "clock_max_error_ms",
                Arc::new(self.clock_max_error_ms.finish()),
            ),
            (
                "clock_est_error_ms",
                Arc::new(self.clock_est_error_ms.finish()),
            ),
            ("line", finish_sized(&mut self.line)),
        ];
        self.count = 0;
        columns
    }
}

/// The columns that can never be null.
const REQUIRED: &[&str] = &[
    "seq",
    "node",
    "v",
    "prev",
    "leaf",
    "ts",
    "phase",
    "request_id",
    "authenticated",
    "roles",
    "purpose_of_use",
    "break_glass",
    "action",
    "interaction",
    "rule",
    "method",
    "path",
    "patient_ids",
    "patients",
    "attribution",
    "attribution_gaps",
    "external_refs",
    "bulk_files",
    "client_ip",
    "peer_ip",
    "forwarded_chain",
    "gateway_node",
    "gateway_listener",
    "truncated",
    "summary_reasons",
    "clock_synced",
    "clock_max_error_ms",
    "clock_est_error_ms",
    "line",
];

/// The schema every batch and file of this version has.
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            // The types are the builders' own (list item and map field names included).
            let fields: Vec<Field> = Rows::new()
                .finish_arrays()
                .iter()
                .map(|(name, array)| {
                    Field::new(*name, array.data_type().clone(), !REQUIRED.contains(name))
                })
                .collect();
            Arc::new(Schema::new(fields))
        })
        .clone()
}

fn phase_name(phase: record::Phase) -> &'static str {
    match phase {
        record::Phase::Intent => "intent",
        record::Phase::Outcome => "outcome",
        record::Phase::Continuation => "continuation",
    }
}
