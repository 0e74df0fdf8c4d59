//! The audit listener: the trail as FHIR R4 `AuditEvent`s (IHE BALP) for auditors, searched
//! with IHE ITI-81 (`GET /AuditEvent?date=ge..&patient=..`), on an address of its own.
//!
//! Owns who may read the trail through the gateway and the record that they did. Guarantees:
//!
//! * **Only auditors** ([`super::guard`]): a token the proxy's issuers verify, carrying a role
//!   or scope of `[auditors]`. No token or a bad one: 401; a valid token without the grant:
//!   403. Both are recorded.
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

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};

use super::guard::{Guard, Served};
use super::trail::{TrailError, TrailSources};
use crate::config::server::AuditApiConfig;
use crate::identity::AuthFailure;
use crate::record::{InteractionKind, PatientRef, PatientSource, Who};
use crate::report::auditevent::ExportContext;
use crate::report::search::{bundle, event_patients, operation_outcome, AuditSearch, Page};

/// The rule name the audit listener's records carry (no rule file names it).
pub const AUDIT_SEARCH_RULE: &str = "audit-api.search";

/// The FHIR JSON media type of every answer.
const FHIR_JSON: &str = "application/fhir+json";

/// The audit listener's application.
pub struct AuditApi {
    /// Who may ask, and the record that they did.
    pub guard: Guard,
    /// Paging.
    pub config: AuditApiConfig,
    /// The trail.
    pub trail: Arc<TrailSources>,
    /// The EHR's address, for each event's server agent.
    pub server_address: Option<String>,
}

/// What the listener answers: status, body, extra headers, the patients it named, and the
/// fixed result the metric counts.
struct Answered {
    status: u16,
    body: Value,
    headers: Vec<(&'static str, String)>,
    patients: Vec<PatientRef>,
    result: &'static str,
    error: Option<String>,
}

impl Answered {
    fn error(status: u16, result: &'static str, code: &'static str, detail: &str) -> Answered {
        Answered {
            status,
            body: operation_outcome(code, detail),
            headers: Vec::new(),
            patients: Vec::new(),
            result,
            error: Some(code.to_string()),
        }
    }
}

fn respond(status: u16, body: &Value, headers: &[(&'static str, String)]) -> Response<Vec<u8>> {
    let bytes = serde_json::to_vec_pretty(body).unwrap_or_default();
    let mut response = super::respond(status, FHIR_JSON, bytes);
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
    /// The answer to an auditor's search.
    async fn search(&self, query: &str, base: String) -> Answered {
        let search =
            match AuditSearch::parse(query, self.config.page_size, self.config.max_page_size) {
                Ok(s) => s,
                Err(e) => return Answered::error(400, "bad_request", "invalid", &e.to_string()),
            };
        let context = ExportContext {
            server_address: self.server_address.clone(),
        };
        let asked = search.clone();
        let found = self
            .trail
            .run(move |trail| trail.search(&asked, &context))
            .await;
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
                tracing::error!(
                    category = e.category(),
                    "the audit API could not answer a search"
                );
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
        let patients = named_patients(page.iter().flat_map(event_patients), search.patients());
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
        let scheme = if self.config.tls { "https" } else { "http" };
        format!("{scheme}://{host}/AuditEvent")
    }
}

/// The patients an answer named (source `response`), then those the request asked for and the
/// answer did not name (source `query`), each once.
pub fn named_patients(
    answered: impl IntoIterator<Item = String>,
    asked: impl IntoIterator<Item = String>,
) -> Vec<PatientRef> {
    let mut seen = std::collections::BTreeSet::new();
    let mut patients = Vec::new();
    for (id, source) in answered
        .into_iter()
        .map(|id| (id, PatientSource::Response))
        .chain(asked.into_iter().map(|id| (id, PatientSource::Query)))
    {
        if seen.insert(id.clone()) {
            patients.push(PatientRef { id, source });
        }
    }
    patients
}

#[async_trait]
impl ServeHttp for AuditApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let get = req.method == http::Method::GET;
        if get && req.uri.path() == "/metadata" {
            return respond(200, &capability_statement(), &[]);
        }
        let arrival = self.guard.arrive(session);
        let query = req.uri.query().unwrap_or("").to_string();
        let auth = self.guard.authenticate(&req.headers, Some(&query)).await;
        let (who, answered) = match &auth {
            Err(failure) => {
                let who = Who::Unauthenticated {
                    reason: failure.reason().to_string(),
                };
                (who, unauthenticated(failure))
            }
            Ok(a) => {
                let answered = if !self.guard.is_auditor(a) {
                    Answered::error(
                        403,
                        "forbidden",
                        "forbidden",
                        "reading the audit trail needs an auditor's role or scope ([auditors])",
                    )
                } else if !get {
                    Answered::error(405, "bad_request", "not-supported", "only GET is served")
                } else if arrival.path == "/AuditEvent" {
                    self.search(&query, self.base_url(session)).await
                } else {
                    Answered::error(404, "not_found", "not-found", "served: GET /AuditEvent?...")
                };
                (Who::Authenticated(a.actor.clone()), answered)
            }
        };
        if let Err(failure) = &auth {
            if self.guard.flooded(&arrival, failure) {
                // Counted into this client's flood summary instead of a record of its own.
                count(answered.result);
                return respond(answered.status, &answered.body, &answered.headers);
            }
        }
        let body = serde_json::to_vec_pretty(&answered.body).unwrap_or_default();
        let request_id = arrival.request_id.clone();
        let served = Served {
            rule: AUDIT_SEARCH_RULE,
            interaction: InteractionKind::Search,
            status: answered.status,
            error: answered.error.clone(),
            patients: answered.patients.clone(),
            bytes_out: body.len(),
            content_type: FHIR_JSON,
        };
        let device = auth.as_ref().ok().and_then(|a| a.device_id.as_ref());
        match self.guard.record(arrival, who, device, served).await {
            Ok(()) => {
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
    answered.error = Some(failure.reason().to_string());
    answered
        .headers
        .push(("WWW-Authenticate", failure.www_authenticate()));
    answered
}
