//! The audit record: what one journal line says, and how its bytes and hash are made.
//!
//! A record is one JSON object on one line. The line is built in two parts:
//!
//! * the [`Event`], everything the request tells us (who, what, which patients, from where,
//!   outcome, clock), serialised by the appender with `serde_json`; its field order is the
//!   struct's field order, so the bytes are deterministic;
//! * the chain header (`v`, `node`, `seq`, `prev`, `ts`), written by the journal writer in front
//!   of the event's fields, because only the writer knows the sequence number and the hash of
//!   the previous record.
//!
//! The full line therefore reads `{"v":1,"node":..,"seq":..,"prev":..,"ts":..,"phase":..,...}`
//! and deserialises as a [`Record`]. The leaf hash of a line is
//! `SHA-256(0x00 || line bytes without the trailing newline)` as in RFC 6962, and each record's
//! `prev` is the leaf hash of the record before it (64 zero hex digits for the first record of a
//! journal), so the leaves form a hash chain and a Merkle tree at once.
//!
//! Invariants:
//! * an [`Event`] never holds a token or a secret, only claims chosen by the identity mapping;
//! * field names and order are part of the on-disk format (`v` = [`RECORD_VERSION`]); adding a
//!   field is a new version.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Format a UTC time as RFC 3339 with microseconds, the record's `ts` format, e.g. `2026-11-26T06:00:00.000001Z`.
pub fn format_ts(t: std::time::SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        dt.year(),
        dt.month() as u8,
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.microsecond()
    )
}

/// The on-disk record format version written in every line's `v`.
pub const RECORD_VERSION: u32 = 1;

/// `prev` of the very first record of a journal: 32 zero bytes, hex.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A SHA-256 leaf hash (RFC 6962: `SHA-256(0x00 || leaf)`).
pub type LeafHash = [u8; 32];

/// Compute the RFC 6962 leaf hash of one journal line (without its trailing newline).
pub fn leaf_hash(line: &[u8]) -> LeafHash {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(line);
    hasher.finalize().into()
}

/// Whether the record was written before the request was forwarded (a change's intent) or once
/// the outcome was known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Written and fsync'd before a POST/PUT/PATCH/DELETE is forwarded to the EHR.
    Intent,
    /// Written and fsync'd before any byte of the response is released to the client.
    Outcome,
    /// Written and fsync'd before the next part of an answer too large to read whole (a Bulk
    /// Data file, released window by window) leaves the gateway: the patients of that part.
    Continuation,
}

/// The CRUDE action of the access (FHIR AuditEvent.action codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Create.
    C,
    /// Read, vread, search, history.
    R,
    /// Update or patch.
    U,
    /// Delete.
    D,
    /// Execute: operations, batches, transactions, anything unclassified.
    E,
}

impl Action {
    /// A short, fixed label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::C => "C",
            Action::R => "R",
            Action::U => "U",
            Action::D => "D",
            Action::E => "E",
        }
    }
}

/// The FHIR RESTful interaction (or `unclassified` when no rule matched).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InteractionKind {
    /// Read one resource by id (`GET [type]/[id]`).
    Read,
    /// Read one version of a resource (`GET [type]/[id]/_history/[vid]`).
    Vread,
    /// Search: any number of resources matching the query.
    Search,
    /// Create a resource (`POST [type]`).
    Create,
    /// Replace a resource (`PUT [type]/[id]`, or a conditional update).
    Update,
    /// Change part of a resource (`PATCH`: JSON Patch or FHIRPath Patch).
    Patch,
    /// Delete a resource.
    Delete,
    /// A resource's, a type's or the server's change history.
    History,
    /// An operation (`$everything`, `$export`, ...).
    Operation,
    /// A batch Bundle: each entry processed on its own.
    Batch,
    /// A transaction Bundle: every entry or none.
    Transaction,
    /// The server's capability statement (`GET [base]/metadata`).
    Capabilities,
    /// A request that no rule matched (journaled under the `inspect` and `stream` unmatched
    /// policies).
    Unclassified,
}

impl InteractionKind {
    /// Stable lower-case name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            InteractionKind::Read => "read",
            InteractionKind::Vread => "vread",
            InteractionKind::Search => "search",
            InteractionKind::Create => "create",
            InteractionKind::Update => "update",
            InteractionKind::Patch => "patch",
            InteractionKind::Delete => "delete",
            InteractionKind::History => "history",
            InteractionKind::Operation => "operation",
            InteractionKind::Batch => "batch",
            InteractionKind::Transaction => "transaction",
            InteractionKind::Capabilities => "capabilities",
            InteractionKind::Unclassified => "unclassified",
        }
    }
}

/// Where a patient ID was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatientSource {
    /// The request path (`Patient/[id]`, a compartment, a `{patient}` capture).
    Path,
    /// A search parameter of the query string (or a POST `_search` form body).
    Query,
    /// A request header the matched rule names.
    Header,
    /// The request body (a resource written, a Bundle's entries, a patch).
    Body,
    /// The response the EHR sent, read before it was released.
    Response,
    /// The token's SMART launch context (`patient` claim).
    Token,
    /// The current version of the resource a delete or patch changes, which the gateway read
    /// from the EHR (with the caller's authorization) before forwarding the change.
    #[serde(rename = "pre_image")]
    PreImage,
}

impl PatientSource {
    /// The name recorded in the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            PatientSource::Path => "path",
            PatientSource::Query => "query",
            PatientSource::Header => "header",
            PatientSource::Body => "body",
            PatientSource::Response => "response",
            PatientSource::Token => "token",
            PatientSource::PreImage => "pre_image",
        }
    }
}

/// One patient the request touched.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PatientRef {
    /// The logical id of the Patient resource (or the API's patient identifier).
    pub id: String,
    /// Where it was found.
    pub source: PatientSource,
}

/// How complete the patient list is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attribution {
    /// Every patient the request touched is listed.
    Complete,
    /// Some patients may be missing (body or response not inspected, too large, non-JSON).
    Partial,
    /// The request touches no patient data (e.g. the CapabilityStatement).
    None,
}

impl Attribution {
    /// The name recorded in the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            Attribution::Complete => "complete",
            Attribution::Partial => "partial",
            Attribution::None => "none",
        }
    }
}

/// The authenticated user behind a request, from a verified JWT. Never holds the token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The unique user (default claim `sub`).
    pub user: String,
    /// The token's `iss`.
    pub issuer: String,
    /// A display name, if the token carries one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
    /// The user's roles, as the token lists them.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub roles: Vec<String>,
    /// The client application (`client_id`, else `azp`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub client_id: Option<String>,
    /// The declared purposes of use (e.g. `TREAT`), as the token lists them.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub purpose_of_use: Vec<String>,
    /// The token's id (`jti`): ties every request made with one token together.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub jti: Option<String>,
    /// SMART on FHIR `fhirUser` claim.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fhir_user: Option<String>,
    /// SMART launch context `patient` claim.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub smart_patient: Option<String>,
    /// Emergency access declared (claim or header).
    pub break_glass: bool,
}

/// Who made the request: a verified actor, or the reason there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Who {
    /// A verified JWT.
    Authenticated(Actor),
    /// No valid token.
    Unauthenticated {
        /// Why: a fixed code (`missing_token`, `expired`, ...), never token contents.
        reason: String,
    },
    /// The gateway itself: a record of its own configuration (see [`Event::config_change`]),
    /// not a request.
    Gateway,
}

/// The network vector of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkVector {
    /// The client IP: the TCP peer, or the nearest untrusted hop of the forwarded chain when
    /// the peer is a trusted proxy.
    pub client_ip: String,
    /// The TCP peer address (IP only).
    pub peer_ip: String,
    /// Every hop claimed by `Forwarded` / `X-Forwarded-For`, left to right, as received.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub forwarded_chain: Vec<String>,
    /// The device the request came from: a verified client certificate's fingerprint
    /// (`sha256:HEX`), a trusted proxy's device header, or a signed token claim (see
    /// `device_id_source`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub device_id: Option<String>,
    /// Where the device ID came from: `client_cert` (the SHA-256 fingerprint of a verified
    /// client certificate), `header` or `claim`, in that order of preference.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub device_id_source: Option<String>,
    /// The `User-Agent` header, at most 256 characters.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user_agent: Option<String>,
    /// Where the client IP is (`[geoip]` databases). Absent when no database is configured;
    /// `null` when it cannot be known, with [`NetworkVector::geo_unavailable`] saying why.
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        deserialize_with = "present_or_null"
    )]
    pub geo: Option<Option<Geo>>,
    /// Why `geo` is `null`: the address class (`loopback`, `private`, `link_local`,
    /// `shared_cgnat`, `documentation`, `multicast`, `reserved`, ...), `not_found` or
    /// `lookup_failed`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub geo_unavailable: Option<String>,
    /// The client's TLS certificate, when it sent one that verified (mutual TLS).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub client_cert: Option<ClientCert>,
    /// The gateway node and listener that carried the request.
    pub gateway: GatewayId,
}

/// A verified client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCert {
    /// SHA-256 of the certificate (DER), hex.
    pub sha256: String,
    /// Its subject, `CN=...,O=...`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub subject: Option<String>,
}

/// A field that is present (`Some`), possibly as `null` (`Some(None)`); absent is `None`
/// through `#[serde(default)]`.
fn present_or_null<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// The client IP's location and network, from the GeoIP and ASN databases.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Geo {
    /// ISO 3166-1 alpha-2 country code.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub country: Option<String>,
    /// City name (English).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub city: Option<String>,
    /// Autonomous system number.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub asn: Option<u32>,
    /// The autonomous system's organisation.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub org: Option<String>,
}

/// Which gateway process and listener carried a request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayId {
    /// This gateway's node name (`server.node`), as in the chain header.
    pub node: String,
    /// The name of the listener the request came in on (`unknown` if none matched).
    pub listener: String,
}

/// The kernel's NTP discipline state when the record was made (adjtimex).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockState {
    /// True when the kernel clock is synchronised (no `STA_UNSYNC`, state not `TIME_ERROR`).
    pub synced: bool,
    /// The kernel's maximum error estimate, in milliseconds.
    pub max_error_ms: u64,
    /// The kernel's estimated error, in milliseconds.
    #[serde(default)]
    pub est_error_ms: u64,
}

/// The outcome part of an outcome record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// HTTP status sent to the client.
    pub status: u16,
    /// FHIR AuditEvent outcome: 0 success, 4 minor failure, 8 serious failure, 12 major failure.
    pub code: u8,
    /// A fixed error code when the gateway itself refused or failed (never PHI).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// Response body length when known at release time (Content-Length).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bytes_out: Option<u64>,
    /// Time from forwarding to the upstream's response head, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub upstream_ms: Option<u64>,
    /// The response's media type (without parameters), when the gateway read the response
    /// for patients: says what a `not_json` gap was.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub content_type: Option<String>,
}

impl Outcome {
    /// The FHIR AuditEvent outcome code for an HTTP status.
    pub fn code_for_status(status: u16) -> u8 {
        match status {
            0..=399 => 0,
            400..=499 => 4,
            500..=502 | 504.. => 8,
            503 => 12,
        }
    }
}

/// One file of a FHIR Bulk Data manifest (see [`Event::bulk_files`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkFile {
    /// Its URL, as the manifest gives it (at most 512 bytes kept).
    pub url: String,
    /// Served under this EHR's base: its download passes through the gateway and is recorded
    /// with its patients. False: downloaded around the gateway (no per-file record).
    pub through_gateway: bool,
}

/// Requests counted into one summary record (see [`Event::summary`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestSummary {
    /// How many requests.
    pub count: u64,
    /// When the first of them arrived (UTC, microseconds).
    pub first: String,
    /// When the last of them arrived.
    pub last: String,
    /// How many were refused for each reason (`missing_token`, `invalid_token` ...).
    pub reasons: BTreeMap<String, u64>,
}

/// A change to what decides the trail: the configuration, the rules, the keys that verify
/// tokens and sign checkpoints (ONC 170.315(d)(3): changes to the audit log's configuration
/// are themselves audited). See [`Event::config_change`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChange {
    /// What happened: `start` (the configuration a process started with), `reload` (SIGHUP,
    /// applied or rejected), `keys` (a JWKS refresh changed the token verification keys).
    pub cause: String,
    /// False when a reload was rejected: the previous configuration keeps serving.
    pub applied: bool,
    /// Why a reload was rejected (the loader's message: config keys and file paths, no PHI).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// SHA-256 (hex) of the configuration file's bytes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub config_sha256: Option<String>,
    /// The sections a reload changed and applied.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub changed: Vec<String>,
    /// The sections a reload changed that need a restart (not applied).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub not_applied: Vec<String>,
    /// Each rule file in effect: `PATH sha256:HEX`.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub rules: Vec<String>,
    /// Every token verification key in effect: `ISSUER kid=KID sha256:HEX`.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub keys: Vec<String>,
    /// Keys in effect now that were not at the previous record of this kind.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub keys_added: Vec<String>,
    /// Keys no longer in effect.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub keys_removed: Vec<String>,
    /// The checkpoint signing key's public half (`auditgate/NODE+HASH+KEY`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub checkpoint_key: Option<String>,
    /// The gateway's version.
    pub software: String,
}

/// Everything a record says except the chain header. Serialised by appenders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// `intent` (a change, recorded before the EHR saw it) or `outcome` (how it ended).
    pub phase: Phase,
    /// The request's ID: a trusted proxy's `X-Request-Id`, else one made here; the intent and
    /// outcome of one request share it, and the EHR receives it.
    pub request_id: String,
    /// For an outcome: the seq of the intent record of the same request, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub intent_seq: Option<u64>,
    /// Who made the request: the verified actor, or why there is none.
    pub who: Who,
    /// What the request does: C, R, U, D or E (FHIR AuditEvent action codes).
    pub action: Action,
    /// The FHIR interaction.
    pub interaction: InteractionKind,
    /// The rule that classified the request (`unmatched` or `rejected` otherwise).
    pub rule: String,
    /// The resource type the request addresses, when the rule names one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub resource_type: Option<String>,
    /// The resource id the request addresses, when its path names one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub resource_id: Option<String>,
    /// The HTTP method, as sent.
    pub method: String,
    /// The request path, as sent (undecoded).
    pub path: String,
    /// The query string, as sent, with any `access_token` value redacted.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub query: Option<String>,
    /// The query the EHR got, when the gateway changed it (`_elements` augmented with the
    /// patient-reference elements, so the answer still names its patients).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub forwarded_query: Option<String>,
    /// Every patient whose data the request touched, each with where it was found.
    pub patients: Vec<PatientRef>,
    /// How complete `patients` is: `complete`, `partial` or `none` (touches no patient).
    pub attribution: Attribution,
    /// Why the attribution is `partial`, when the gateway knows (fixed names, see
    /// [`crate::attribution::extract::Gap`]): `too_large`, `not_json`, `contained_patient`, ...
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub attribution_gaps: Vec<String>,
    /// Absolute Patient references on another server's base (not this EHR's), whole: patients
    /// of other systems the exchange referenced. Never taken for a local patient that shares
    /// the id. At most 64, each at most 512 bytes.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub external_refs: Vec<String>,
    /// External references beyond those bounds: counted, not kept.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub external_refs_omitted: Option<u64>,
    /// The files of a FHIR Bulk Data manifest this response carried, each saying whether its
    /// download passes through the gateway (and is recorded with its patients) or not.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub bulk_files: Vec<BulkFile>,
    /// From where: client IP, proxies, device, user agent, GeoIP, this gateway.
    pub net: NetworkVector,
    /// How the request ended (outcome records only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub outcome: Option<Outcome>,
    /// Fields cut to their `[records]` bound, each with its original length in bytes
    /// (`forwarded_chain`: the number of hops received).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub truncated: BTreeMap<String, u64>,
    /// The part of an answer released window by window this record covers: 0 for the outcome
    /// record (the head and the first window), 1, 2 ... for the continuation records.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub part: Option<u32>,
    /// A summary record: requests without a valid token from one client IP, beyond
    /// `[records]`'s rate, counted here instead of recorded one by one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub summary: Option<RequestSummary>,
    /// A record of the gateway's own configuration (`who` is `gateway`): what was in effect
    /// at start, what a reload changed, a change of keys.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub config_change: Option<ConfigChange>,
    /// The kernel's NTP state when the record was made: is `ts` trustworthy, and how far off.
    pub clock: ClockState,
    /// When the gateway read the request's head (UTC, microseconds); the chain's `ts` is when
    /// the record was written.
    #[serde(default)]
    pub received: String,
}

impl Event {
    /// A record with nothing but who, the rule, from where and when: an outcome of action E,
    /// `unclassified`, without method, path or patients (attribution `none`). Records that
    /// stand for no single request (a flood summary, the gateway's configuration) fill in what
    /// they are about; the proxy's admission starts each request's record from it.
    pub fn bare(
        request_id: String,
        who: Who,
        rule: &str,
        net: NetworkVector,
        clock: ClockState,
        received: String,
    ) -> Event {
        Event {
            phase: Phase::Outcome,
            request_id,
            intent_seq: None,
            who,
            action: Action::E,
            interaction: InteractionKind::Unclassified,
            rule: rule.to_string(),
            resource_type: None,
            resource_id: None,
            method: String::new(),
            path: String::new(),
            query: None,
            forwarded_query: None,
            patients: Vec::new(),
            attribution: Attribution::None,
            attribution_gaps: Vec::new(),
            external_refs: Vec::new(),
            external_refs_omitted: None,
            bulk_files: Vec::new(),
            net,
            outcome: None,
            truncated: BTreeMap::new(),
            part: None,
            summary: None,
            config_change: None,
            clock,
            received,
        }
    }

    /// Serialise to the JSON object the writer splices after the chain header.
    #[allow(
        clippy::expect_used,
        reason = "plain structs of strings, numbers and string-keyed maps always serialise"
    )]
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an Event always serialises")
    }
}

/// The chain header every line starts with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHeader {
    /// The record format version ([`RECORD_VERSION`]).
    pub v: u32,
    /// The gateway node that wrote the record (one chain per node).
    pub node: String,
    /// The record's sequence number: 1, 2, 3 ... with no gap, across segments.
    pub seq: u64,
    /// Hex leaf hash of the previous record ([`GENESIS_PREV`] for the first).
    pub prev: String,
    /// UTC time the writer took the record, RFC 3339 with microseconds.
    pub ts: String,
}

/// A whole journal line, as read back by `verify`, `query` and tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The chain header: `v`, `node`, `seq`, `prev`, `ts`.
    #[serde(flatten)]
    pub header: ChainHeader,
    /// Everything else the line says.
    #[serde(flatten)]
    pub event: Event,
}

impl Record {
    /// Parse one journal line (without its newline). A line in the writer's exact form
    /// ([`splice_parts`]: the chain header's five fields first, plain strings) is read header
    /// first and its event directly, several times faster than the general form; any other
    /// line, or one whose event does not parse that way, is read the general way, so the
    /// result (and any error) is the same as `serde_json::from_slice::<Record>`.
    pub fn parse_line(line: &[u8]) -> Result<Record, serde_json::Error> {
        if let Some((header, event_at)) =
            writer_form_header(line).filter(|(_, event_at)| !names_a_header_key(&line[*event_at..]))
        {
            let mut event_json = Vec::with_capacity(line.len() - event_at + 1);
            event_json.push(b'{');
            event_json.extend_from_slice(&line[event_at..]);
            if let Ok(event) = serde_json::from_slice::<Event>(&event_json) {
                return Ok(Record { header, event });
            }
        }
        serde_json::from_slice(line)
    }
}

/// Whether the event's fields (`rest`: from its first key) may hold one of the chain header's
/// keys again, which the general parse refuses as a duplicate and the event's own parse would
/// ignore. A key is found where it starts the fields or follows a comma (a `"` inside a string
/// is escaped, so this matches keys only); a nested key of the same name only sends the line
/// to the general parse.
fn names_a_header_key(rest: &[u8]) -> bool {
    const KEYS: [&[u8]; 5] = [
        b"\"v\":",
        b"\"node\":",
        b"\"seq\":",
        b"\"prev\":",
        b"\"ts\":",
    ];
    KEYS.iter().any(|key| {
        rest.starts_with(key)
            || memchr::memmem::find_iter(rest, key).any(|at| at > 0 && rest[at - 1] == b',')
    })
}

/// The chain header of a line in the writer's exact form, and where the event's fields start
/// (just after the `,` that follows `ts`); `None` for any other line.
fn writer_form_header(line: &[u8]) -> Option<(ChainHeader, usize)> {
    fn number<T: std::str::FromStr>(s: &[u8]) -> Option<(T, &[u8])> {
        let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 || n > 19 {
            return None;
        }
        let value = std::str::from_utf8(&s[..n]).ok()?.parse().ok()?;
        Some((value, &s[n..]))
    }
    /// A string with no escape in it, and what follows its closing quote.
    fn plain_string(s: &[u8]) -> Option<(String, &[u8])> {
        let end = s.iter().position(|&b| b == b'"' || b == b'\\')?;
        if s[end] != b'"' || s[..end].iter().any(|b| b.is_ascii_control()) {
            return None;
        }
        let text = std::str::from_utf8(&s[..end]).ok()?.to_string();
        Some((text, &s[end + 1..]))
    }
    let rest = line.strip_prefix(b"{\"v\":")?;
    let (v, rest) = number::<u32>(rest)?;
    let rest = rest.strip_prefix(b",\"node\":\"")?;
    let (node, rest) = plain_string(rest)?;
    let rest = rest.strip_prefix(b",\"seq\":")?;
    let (seq, rest) = number::<u64>(rest)?;
    let rest = rest.strip_prefix(b",\"prev\":\"")?;
    let (prev, rest) = plain_string(rest)?;
    let rest = rest.strip_prefix(b",\"ts\":\"")?;
    let (ts, rest) = plain_string(rest)?;
    let rest = rest.strip_prefix(b",")?;
    let header = ChainHeader {
        v,
        node,
        seq,
        prev,
        ts,
    };
    Some((header, line.len() - rest.len()))
}

/// `s` as a JSON string (quoted, escaped), as the chain header carries the node name.
pub fn json_string(s: &str) -> Vec<u8> {
    serde_json::Value::from(s).to_string().into_bytes()
}

/// Build the line bytes (without newline) from a chain header and an event's JSON object.
///
/// `event_json` must be a JSON object with at least one field (an [`Event`] always is).
pub fn splice_line(out: &mut Vec<u8>, header: &ChainHeader, event_json: &[u8]) {
    let node_json = json_string(&header.node);
    splice_parts(
        out,
        header.v,
        &node_json,
        header.seq,
        header.prev.as_bytes(),
        header.ts.as_bytes(),
        event_json,
    );
}

/// [`splice_line`] from parts the writer keeps ready, without allocating: `node_json` is the
/// node name already serialised as a JSON string (with its quotes), `prev_hex` the previous leaf
/// hash in lower-case hex, `ts` the RFC 3339 time.
pub fn splice_parts(
    out: &mut Vec<u8>,
    v: u32,
    node_json: &[u8],
    seq: u64,
    prev_hex: &[u8],
    ts: &[u8],
    event_json: &[u8],
) {
    use std::io::Write as _;
    debug_assert!(event_json.len() > 2 && event_json[0] == b'{');
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{{\"v\":{v},\"node\":");
    out.extend_from_slice(node_json);
    let _ = write!(out, ",\"seq\":{seq},\"prev\":\"");
    out.extend_from_slice(prev_hex);
    out.extend_from_slice(b"\",\"ts\":\"");
    out.extend_from_slice(ts);
    out.extend_from_slice(b"\",");
    out.extend_from_slice(&event_json[1..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_event() -> Event {
        Event {
            phase: Phase::Outcome,
            request_id: "r1".into(),
            intent_seq: None,
            who: Who::Unauthenticated {
                reason: "missing_token".into(),
            },
            action: Action::R,
            interaction: InteractionKind::Read,
            rule: "fhir-read".into(),
            resource_type: Some("Patient".into()),
            resource_id: Some("example".into()),
            method: "GET".into(),
            path: "/fhir/Patient/example".into(),
            query: None,
            forwarded_query: None,
            patients: vec![PatientRef {
                id: "example".into(),
                source: PatientSource::Path,
            }],
            attribution: Attribution::Complete,
            attribution_gaps: Vec::new(),
            external_refs: Vec::new(),
            external_refs_omitted: None,
            bulk_files: Vec::new(),
            net: NetworkVector::default(),
            outcome: Some(Outcome {
                status: 401,
                code: 4,
                ..Default::default()
            }),
            truncated: Default::default(),
            part: None,
            summary: None,
            config_change: None,
            clock: ClockState::default(),
            received: String::new(),
        }
    }

    #[test]
    fn names_match_the_serialised_form() {
        use PatientSource as S;
        for s in [
            S::Path,
            S::Query,
            S::Header,
            S::Body,
            S::Response,
            S::Token,
            S::PreImage,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for a in [
            Attribution::Complete,
            Attribution::Partial,
            Attribution::None,
        ] {
            assert_eq!(serde_json::to_value(a).unwrap(), a.as_str());
        }
    }

    #[test]
    fn parse_line_reads_every_line_as_the_general_parse_does() {
        let event = sample_event();
        let header = |node: &str| ChainHeader {
            v: 1,
            node: node.into(),
            seq: 9,
            prev: GENESIS_PREV.into(),
            ts: "2026-12-04T06:00:00.000001Z".into(),
        };
        let mut lines = Vec::new();
        for node in ["gw-1", "gw \"quoted\"", "gw-ü"] {
            let mut line = Vec::new();
            splice_line(&mut line, &header(node), &event.to_json());
            lines.push(line);
        }
        // Not the writer's form: fields in another order, an event that is not one, no event.
        let general = serde_json::to_value(Record {
            header: header("gw-2"),
            event: event.clone(),
        })
        .unwrap();
        lines.push(serde_json::to_vec(&general).unwrap());
        lines.push(br#"{"v":1,"node":"n","seq":1,"prev":"00","ts":"t","phase":42}"#.to_vec());
        lines.push(br#"{"v":1,"node":"n","seq":1,"prev":"00","ts":"t"}"#.to_vec());
        lines.push(b"not json".to_vec());
        // A header key again among the event's fields.
        let mut twice = lines[0].clone();
        let at = writer_form_header(&twice).unwrap().1;
        twice.splice(at..at, b"\"seq\":10,".iter().copied());
        lines.push(twice);
        for line in &lines {
            let general = serde_json::from_slice::<Record>(line).map_err(|e| e.to_string());
            let fast = Record::parse_line(line).map_err(|e| e.to_string());
            assert_eq!(fast, general, "{}", String::from_utf8_lossy(line));
        }
        // The writer's own lines take the fast path.
        let (_, at) = writer_form_header(&lines[0]).unwrap();
        assert!(!names_a_header_key(&lines[0][at..]));
        assert!(
            writer_form_header(&lines[1]).is_none(),
            "an escaped node name"
        );
        assert!(writer_form_header(&lines[2]).is_some());
    }

    #[test]
    fn spliced_line_round_trips_with_header_first() {
        let header = ChainHeader {
            v: RECORD_VERSION,
            node: "gw-1".into(),
            seq: 7,
            prev: GENESIS_PREV.into(),
            ts: "2026-11-26T06:00:00.000001Z".into(),
        };
        let event = sample_event();
        let mut line = Vec::new();
        splice_line(&mut line, &header, &event.to_json());
        let text = std::str::from_utf8(&line).unwrap();
        assert!(text.starts_with("{\"v\":1,\"node\":\"gw-1\",\"seq\":7,\"prev\":\"0000"));
        let back: Record = serde_json::from_slice(&line).unwrap();
        assert_eq!(back.header, header);
        assert_eq!(back.event, event);
        assert!(writer_form_header(&line).is_some());
        assert_eq!(Record::parse_line(&line).unwrap(), back);
        // Re-serialising the parsed record gives the same bytes: the format is deterministic.
        assert_eq!(serde_json::to_vec(&back).unwrap(), line);
    }

    #[test]
    fn leaf_hash_matches_rfc6962_empty_leaf_vector() {
        // RFC 6962 / transparency-dev: the leaf hash of the empty string is
        // SHA-256(0x00) = 6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d.
        assert_eq!(
            hex::encode(leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn outcome_codes_follow_fhir_audit_event() {
        assert_eq!(Outcome::code_for_status(200), 0);
        assert_eq!(Outcome::code_for_status(404), 4);
        assert_eq!(Outcome::code_for_status(502), 8);
        assert_eq!(Outcome::code_for_status(503), 12);
    }
}
