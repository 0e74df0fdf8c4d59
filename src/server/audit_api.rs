//! The audit listener: the trail as FHIR R4 `AuditEvent`s (IHE BALP) for auditors, searched
//! with IHE ITI-81 (`GET /AuditEvent?date=ge..&patient=..`), on an address of its own.
//!
//! Owns who may read the trail through the gateway and the record that they did. Guarantees:
//!
//! * **Only auditors.** A token the proxy's issuers verify ([`crate::identity`]), carrying a
//!   role or scope of `[auditors]`. No token or a bad one: 401; a valid token without the
//!   grant: 403. Both are recorded.
//! * **Reading the trail is itself recorded, in the same chain.** Every request to this
//!   listener (but `/metadata`, which says what the server can do and names nobody) gets an
//!   outcome record before its answer leaves: who asked, from where, the search as sent, and
//!   every patient the answer named (source `response`) or the search asked for (`query`).
//!   The record is durable (fsync'd) before the first byte of the answer is sent; if the
//!   journal cannot take it, the answer is a 503 and holds no event. Unauthenticated requests
//!   beyond `[records]`' rate are counted into the flood summary, as on the proxy.
//! * **Answers are proven.** Events come from the query plane over this node's journal (its
//!   open segment too) and the archive, verified against this node's checkpoint key; each
//!   Bundle carries the coverage (the range scanned, the checkpoint that covers it, records
//!   not yet under a checkpoint) as an `OperationOutcome` entry. An answer that cannot be
//!   proven is a 500, never an unverified Bundle.
//! * **No PHI in the gateway's own log or metrics**: the log names the request ID and the
//!   result; `auditgate_audit_api_requests_total{result}` counts fixed results.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};

use crate::archive::{ArchiveStore, Layout};
use crate::config::records::RecordsConfig;
use crate::config::server::{AuditApiConfig, AuditorsConfig};
use crate::identity::AuthFailure;
use crate::journal::Journal;
use crate::proxy::bounds::FloodGuard;
use crate::proxy::live::Live;
use crate::proxy::origin::{
    claim_device, listener_name, network_vector, peer_ip, redact_query_tokens,
};
use crate::query::answer::{answer, Request};
use crate::query::source::{self, Fetcher, NodeSources};
use crate::record::{
    Action, Attribution, Event, GatewayId, InteractionKind, Outcome, PatientRef, PatientSource,
    Phase, Who,
};
use crate::report::auditevent::{events, ExportContext};
use crate::report::render::coverage_line;
use crate::report::requests;
use crate::report::search::{bundle, event_patients, operation_outcome, AuditSearch, Page};
use crate::tlog::checkpoint::CheckpointVerifier;

/// The rule name the audit listener's records carry (no rule file names it).
pub const AUDIT_SEARCH_RULE: &str = "audit-api.search";

/// The FHIR JSON media type of every answer.
const FHIR_JSON: &str = "application/fhir+json";

/// Where the trail is, for the query plane.
pub struct TrailSources {
    /// This node's journal directory.
    pub journal_dir: PathBuf,
    /// The archive and its layout, when one is configured.
    pub archive: Option<(Arc<dyn ArchiveStore>, Layout)>,
    /// The runtime the archive's calls run on.
    pub runtime: tokio::runtime::Handle,
    /// This node's checkpoint public key (its text: a verifier is made per search).
    pub key: String,
}

/// The audit listener's application.
pub struct AuditApi {
    /// The identity the proxy verifies tokens with (a reload is seen at once).
    pub live: Arc<Live>,
    /// The journal its records go to.
    pub journal: Journal,
    /// This gateway's node name.
    pub node: String,
    /// The audit listener's address, named `audit` in records.
    pub listeners: Vec<(SocketAddr, String)>,
    /// Whether it is served with TLS (for its links).
    pub tls: bool,
    /// Paging.
    pub config: AuditApiConfig,
    /// Who is an auditor.
    pub auditors: AuditorsConfig,
    /// The trail.
    pub trail: Arc<TrailSources>,
    /// The EHR's address, for each event's server agent.
    pub server_address: Option<String>,
    /// The proxy's flood guard: unauthenticated floods are summarised, not recorded one by one.
    pub flood: Arc<FloodGuard>,
    /// Bounds of recorded fields.
    pub record_bounds: RecordsConfig,
}

/// What the listener answers: status, body, extra headers, the patients it named, and the
/// fixed result the metric counts.
struct Answered {
    status: u16,
    body: Value,
    headers: Vec<(&'static str, String)>,
    patients: Vec<PatientRef>,
    result: &'static str,
    error: Option<&'static str>,
}

impl Answered {
    fn error(status: u16, result: &'static str, code: &'static str, detail: &str) -> Answered {
        Answered {
            status,
            body: operation_outcome(code, detail),
            headers: Vec::new(),
            patients: Vec::new(),
            result,
            error: Some(code),
        }
    }
}

/// Why a search could not be answered (a 500 or 503, logged without PHI).
#[derive(Debug, thiserror::Error)]
enum TrailError {
    #[error("the trail cannot be read: {0}")]
    Sources(#[from] crate::query::source::SourceError),
    #[error("the archive cannot be listed: {0}")]
    Archive(#[from] crate::archive::ArchiveError),
    #[error("the answer cannot be proven: {0}")]
    Query(#[from] crate::query::run::QueryError),
    #[error("a record cannot be read: {0}")]
    Report(#[from] crate::report::ReportError),
    #[error("the checkpoint key cannot be read: {0}")]
    Key(String),
    #[error("the search stopped: {0}")]
    Join(String),
}

impl TrailSources {
    /// This node's sources now: the archive's, merged with the local journal's (which wins).
    fn node_sources(&self, node: &str) -> Result<(Vec<NodeSources>, Fetcher), TrailError> {
        let local = source::local_sources(&self.journal_dir, node)?;
        let merged = match &self.archive {
            Some((store, layout)) => {
                let mut archived = self.runtime.block_on(source::archive_sources(
                    store,
                    layout,
                    &[node.to_string()],
                ))?;
                match archived.remove(node) {
                    Some(a) => source::merge(a, local),
                    None => local,
                }
            }
            None => local,
        };
        let fetcher = Fetcher {
            store: self.archive.as_ref().map(|(s, _)| s.clone()),
            runtime: self.runtime.clone(),
        };
        Ok((vec![merged], fetcher))
    }

    /// Every event of this node's trail that `search` matches, in the trail's order, and the
    /// coverage lines of the answer. Blocking.
    fn search(
        &self,
        node: &str,
        search: &AuditSearch,
        context: &ExportContext,
    ) -> Result<(Vec<Value>, Vec<String>), TrailError> {
        let (sources, fetcher) = self.node_sources(node)?;
        let request = Request {
            filters: search.filters.clone(),
            sort: Vec::new(),
            limit: None,
            verify: true,
        };
        let key =
            CheckpointVerifier::from_text(&self.key).map_err(|e| TrailError::Key(e.to_string()))?;
        let answer = answer(&request, &sources, &fetcher, std::slice::from_ref(&key))?;
        let mut found = Vec::new();
        for access in requests::accesses(&answer)? {
            found.extend(
                events(&access, context)
                    .into_iter()
                    .filter(|e| search.matches(e)),
            );
        }
        let coverage = answer
            .coverage
            .iter()
            .map(|c| coverage_line(c, true))
            .collect();
        Ok((found, coverage))
    }
}

fn respond(status: u16, body: &Value, headers: &[(&'static str, String)]) -> Response<Vec<u8>> {
    let bytes = serde_json::to_vec_pretty(body).unwrap_or_default();
    let mut response = crate::server::admin::respond(status, FHIR_JSON, bytes);
    for (name, value) in headers {
        if let Ok(v) = http::HeaderValue::from_str(value) {
            response.headers_mut().insert(*name, v);
        }
    }
    response
}

/// The server's `CapabilityStatement`: AuditEvent, search only, with the ITI-81 parameters.
fn capability_statement() -> Value {
    let param = |name: &str, kind: &str| json!({"name": name, "type": kind});
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-12-04",
        "kind": "instance",
        "software": {"name": "auditgate", "version": env!("CARGO_PKG_VERSION")},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "instantiates": ["https://profiles.ihe.net/ITI/BALP/CapabilityStatement/IHE.BasicAudit.AuditConsumer"],
        "rest": [{
            "mode": "server",
            "security": {"description": "Bearer JWT of an auditor ([auditors] roles or scopes)"},
            "resource": [{
                "type": "AuditEvent",
                "interaction": [{"code": "search-type"}],
                "searchParam": [
                    param("date", "date"), param("patient", "reference"),
                    param("agent", "reference"), param("entity", "reference"),
                    param("type", "token"), param("subtype", "token"),
                    param("outcome", "token"), param("address", "string"),
                    param("action", "token"),
                ],
            }],
        }],
    })
}

impl AuditApi {
    /// The record of one request to this listener, as answered.
    fn record(
        &self,
        session: &ServerSession,
        request_id: String,
        who: Who,
        received: std::time::SystemTime,
        answered: &Answered,
        body_len: usize,
    ) -> Event {
        let snap = self.live.current();
        let peer = peer_ip(session);
        let gateway = GatewayId {
            node: self.node.clone(),
            listener: listener_name(session, &self.listeners),
        };
        let net = network_vector(session, &snap, peer, gateway);
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(redact_query_tokens);
        let mut event = Event {
            phase: Phase::Outcome,
            request_id,
            intent_seq: None,
            who,
            action: Action::R,
            interaction: InteractionKind::Search,
            rule: AUDIT_SEARCH_RULE.into(),
            resource_type: Some("AuditEvent".into()),
            resource_id: None,
            method: req.method.as_str().to_string(),
            path,
            query,
            forwarded_query: None,
            patients: answered.patients.clone(),
            attribution: if answered.patients.is_empty() {
                Attribution::None
            } else {
                Attribution::Complete
            },
            attribution_gaps: Vec::new(),
            external_refs: Vec::new(),
            external_refs_omitted: None,
            bulk_files: Vec::new(),
            net,
            outcome: Some(Outcome {
                status: answered.status,
                code: Outcome::code_for_status(answered.status),
                error: answered.error.map(str::to_string),
                bytes_out: Some(body_len as u64),
                upstream_ms: None,
                content_type: Some(FHIR_JSON.into()),
            }),
            truncated: Default::default(),
            part: None,
            summary: None,
            config_change: None,
            clock: crate::clock::current(),
            received: crate::record::format_ts(received),
        };
        crate::proxy::bounds::bound_fields(&mut event, &self.record_bounds);
        event
    }

    /// The answer to an auditor's search.
    async fn search(&self, query: &str, base: String) -> Answered {
        let search =
            match AuditSearch::parse(query, self.config.page_size, self.config.max_page_size) {
                Ok(s) => s,
                Err(e) => return Answered::error(400, "bad_request", "invalid", &e.to_string()),
            };
        let trail = self.trail.clone();
        let node = self.node.clone();
        let context = ExportContext {
            server_address: self.server_address.clone(),
        };
        let asked = search.clone();
        let found = tokio::task::spawn_blocking(move || trail.search(&node, &asked, &context))
            .await
            .unwrap_or_else(|e| Err(TrailError::Join(e.to_string())));
        let (all, coverage) = match found {
            Ok(found) => found,
            Err(TrailError::Query(crate::query::run::QueryError::NotYetCheckpointed {
                ..
            })) => {
                let mut answered = Answered::error(
                    503,
                    "unavailable",
                    "transient",
                    "no signed checkpoint covers the trail yet (the gateway signs one every checkpoint.interval_secs); try again",
                );
                answered.headers.push(("Retry-After", "2".into()));
                return answered;
            }
            Err(e) => {
                tracing::error!(error = %e, "the audit API could not answer a search");
                return Answered::error(
                    500,
                    "failed",
                    "exception",
                    "the answer cannot be read or proven from the trail; `auditgate verify` says what is wrong",
                );
            }
        };
        let start = search.offset.min(all.len());
        let end = (start + search.count).min(all.len());
        let page = &all[start..end];
        let mut patients: Vec<PatientRef> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for id in page.iter().flat_map(event_patients) {
            if seen.insert(id.clone()) {
                patients.push(PatientRef {
                    id,
                    source: PatientSource::Response,
                });
            }
        }
        for id in search.patients() {
            if seen.insert(id.clone()) {
                patients.push(PatientRef {
                    id,
                    source: PatientSource::Query,
                });
            }
        }
        let body = bundle(
            &search,
            &Page {
                events: page,
                total: all.len(),
                base,
                coverage,
            },
        );
        Answered {
            status: 200,
            body,
            headers: Vec::new(),
            patients,
            result: "ok",
            error: None,
        }
    }

    /// The search's base URL, from the `Host` the client used.
    fn base_url(&self, session: &ServerSession) -> String {
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri.authority().map(|a| a.to_string()))
            .unwrap_or_else(|| self.config.listen.clone());
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{host}/AuditEvent")
    }
}

#[async_trait]
impl ServeHttp for AuditApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let received = std::time::SystemTime::now();
        let snap = self.live.current();
        let peer = peer_ip(session);
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let query = req.uri.query().unwrap_or("").to_string();
        let get = req.method == http::Method::GET;
        let request_id = snap.net.request_id(peer, &req.headers);
        if get && path == "/metadata" {
            return respond(200, &capability_statement(), &[]);
        }
        let auth = snap.identity.authenticate(&req.headers, Some(&query)).await;
        let (who, mut answered) = match &auth {
            Err(failure) => {
                let who = Who::Unauthenticated {
                    reason: failure.reason().to_string(),
                };
                (who, unauthenticated(failure))
            }
            Ok(a) => {
                let who = Who::Authenticated(a.actor.clone());
                let answered = if !self.auditors.admits(&a.actor.roles, &a.scopes) {
                    Answered::error(
                        403,
                        "forbidden",
                        "forbidden",
                        "reading the audit trail needs an auditor's role or scope ([auditors])",
                    )
                } else if !get {
                    Answered::error(405, "bad_request", "not-supported", "only GET is served")
                } else if path == "/AuditEvent" {
                    self.search(&query, self.base_url(session)).await
                } else {
                    Answered::error(404, "not_found", "not-found", "served: GET /AuditEvent?...")
                };
                (who, answered)
            }
        };
        let body = serde_json::to_vec_pretty(&answered.body).unwrap_or_default();
        let flooded = match &auth {
            Err(failure) => !self.flood.admit(peer, failure.reason()),
            Ok(_) => false,
        };
        if flooded {
            // Counted into this client's flood summary instead of a record of its own.
            count(answered.result);
            return respond(answered.status, &answered.body, &answered.headers);
        }
        let mut event = self.record(
            session,
            request_id.clone(),
            who,
            received,
            &answered,
            body.len(),
        );
        if let Ok(a) = &auth {
            claim_device(&mut event.net, a.device_id.as_ref());
        }
        if self.journal.has_failed() {
            answered = Answered::error(
                503,
                "unavailable",
                "transient",
                "the audit trail cannot record this request now; nothing was answered",
            );
            count(answered.result);
            return respond(503, &answered.body, &[("Retry-After", "5".into())]);
        }
        match self.journal.append(&event).await {
            Ok(_) => {
                count(answered.result);
                tracing::info!(request_id = %request_id, status = answered.status, result = answered.result, "audit API request");
                respond(answered.status, &answered.body, &answered.headers)
            }
            Err(e) => {
                tracing::error!(error = %e, request_id = %request_id, "the audit API's record could not be written; answered 503");
                count("unavailable");
                let outcome = operation_outcome(
                    "transient",
                    "the audit trail cannot record this request now; nothing was answered",
                );
                respond(503, &outcome, &[("Retry-After", "5".into())])
            }
        }
    }
}

fn count(result: &'static str) {
    crate::metrics::global()
        .audit_api_requests
        .with_label_values(&[result])
        .inc();
}

/// The answer to a request without a valid token (401, or 400 for a malformed request).
fn unauthenticated(failure: &AuthFailure) -> Answered {
    let mut answered = Answered::error(
        failure.status().as_u16(),
        "unauthenticated",
        "login",
        "an auditor's bearer token is needed",
    );
    answered.error = Some(failure.reason());
    answered
        .headers
        .push(("WWW-Authenticate", failure.www_authenticate()));
    answered
}
