//! The buffered path: requests whose rule reads the request body or the response for patients.
//!
//! This module owns the exchange with the EHR for such requests and the promise that goes with
//! it: **the outcome record, with every patient the response references, is durable before the
//! first byte of the response leaves the gateway.**
//!
//! # Why the gateway fetches the response itself
//!
//! Pingora 0.9 sends the response head after the async `response_filter`, then passes body
//! chunks through the *synchronous* `response_body_filter`, which cannot await the journal. A
//! record that depends on the body therefore cannot be written on pingora's proxy path. For a
//! request whose rule says `inspect_body` or `inspect_response`, the proxy's `request_filter`
//! does the whole exchange itself and then tells pingora the request is answered:
//!
//! 1. read the request body from the client (bounded by `attribution.max_body_bytes`) and find
//!    its patients ([`crate::extract::request_patients`]; transaction and batch entries are
//!    classified by the route rules);
//! 2. a change gets its **intent** record, fsync'd, with those patients;
//! 3. send the request to the EHR over pingora's own connector (the same pool, TLS settings and
//!    timeouts as the proxy path: [`exchange`]);
//! 4. read the whole response (bounded; gzip and deflate are decoded for reading, never for the
//!    client), find its patients ([`crate::extract::response_patients`]), [`settle`] the
//!    record's patient list and attribution;
//! 5. append the **outcome** record and await its fsync;
//! 6. only then write the response head and body to the client, the EHR's bytes unchanged.
//!
//! If step 5 fails the client gets the gateway's 503 and none of the EHR's bytes: the response
//! is dropped with the buffer. Requests whose rules need no body or response keep pingora's
//! streaming path ([`crate::proxy`]).
//!
//! # Bodies larger than the limit
//!
//! `attribution.oversize = "forward"` (the default) forwards them anyway, never silently: the
//! record says `partial` with the gap `too_large` and is durable before the first byte is
//! released; the rest then streams. `"refuse"` answers 413 (request) or 502 (response), journaled.
//!
//! # What is not inspected
//!
//! A body that is not JSON (`application/fhir+xml`, a PDF ...) is passed through with the gap
//! `not_json` and its media type in the record; an encoding other than gzip or deflate (br,
//! zstd) with the gap `content_encoding`. Empty bodies (204, 304, HEAD) have nothing to read.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};
use std::io::Read;

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::extract::{EntryClassifier, Findings, Gap};
use crate::record::{Attribution, InteractionKind, PatientRef, PatientSource};
use crate::rules::{AttributionClaim, Classification, RuleSet};

/// Default `attribution.max_body_bytes`: 16 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 16 << 20;
/// Largest `attribution.max_body_bytes` accepted: 1 GiB (each buffered request holds this much).
pub const MAX_BODY_BYTES_LIMIT: u64 = 1 << 30;
/// Default `attribution.max_buffered_requests`: buffered exchanges at once.
pub const DEFAULT_MAX_BUFFERED_REQUESTS: usize = 64;
/// Default `attribution.buffered_wait_secs`: how long a request waits for a buffered slot.
pub const DEFAULT_BUFFERED_WAIT_SECS: u64 = 10;
/// Default `attribution.client_timeout_secs`.
pub const DEFAULT_CLIENT_TIMEOUT_SECS: u64 = 60;

/// The `[attribution]` section: bounds of the buffered path.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttributionConfig {
    /// Largest request or response body read for patients, in bytes (after gzip/deflate
    /// decoding, for responses). Default 16 MiB, at most 1 GiB.
    pub max_body_bytes: u64,
    /// A larger body: `forward` it with attribution `partial` (gap `too_large`; the default)
    /// or `refuse` it (413 for a request, 502 for a response; journaled).
    pub oversize: OversizePolicy,
    /// Buffered exchanges in progress at once (default 64, 1 to 65,536). Each holds up to
    /// `max_body_bytes` of request and of response, and extraction takes up to about 3x the
    /// body it reads; this bounds the sum. Needs a restart to change.
    pub max_buffered_requests: usize,
    /// How long a request waits for one of those slots before it is refused with 503
    /// `gateway_busy` (journaled, never forwarded). Default 10 s, 0 to 300. Needs a restart.
    pub buffered_wait_secs: u64,
    /// On the buffered path, each read of the client's request body and each write of the
    /// answer to it must progress within this many seconds, so a stalled client does not hold
    /// a slot. Default 60, 1 to 3,600.
    pub client_timeout_secs: u64,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        AttributionConfig {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            oversize: OversizePolicy::Forward,
            max_buffered_requests: DEFAULT_MAX_BUFFERED_REQUESTS,
            buffered_wait_secs: DEFAULT_BUFFERED_WAIT_SECS,
            client_timeout_secs: DEFAULT_CLIENT_TIMEOUT_SECS,
        }
    }
}

impl AttributionConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_BODY_BYTES_LIMIT {
            return Err(ConfigError::invalid(
                "attribution.max_body_bytes",
                format!(
                    "must be between 1 and {MAX_BODY_BYTES_LIMIT}, got {}",
                    self.max_body_bytes
                ),
            ));
        }
        if !(1..=65_536).contains(&self.max_buffered_requests) {
            return Err(ConfigError::invalid(
                "attribution.max_buffered_requests",
                format!(
                    "must be between 1 and 65536, got {}",
                    self.max_buffered_requests
                ),
            ));
        }
        if self.buffered_wait_secs > 300 {
            return Err(ConfigError::invalid(
                "attribution.buffered_wait_secs",
                format!("must be at most 300, got {}", self.buffered_wait_secs),
            ));
        }
        if !(1..=3600).contains(&self.client_timeout_secs) {
            return Err(ConfigError::invalid(
                "attribution.client_timeout_secs",
                format!(
                    "must be between 1 and 3600, got {}",
                    self.client_timeout_secs
                ),
            ));
        }
        Ok(())
    }

    /// The limit as a buffer size.
    pub fn limit(&self) -> usize {
        usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX)
    }

    /// `client_timeout_secs` as a duration.
    pub fn client_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.client_timeout_secs)
    }
}

/// What to do with a body larger than `attribution.max_body_bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OversizePolicy {
    /// Forward it; the record says `partial` (`too_large`).
    #[default]
    Forward,
    /// Refuse it: 413 (request body) or 502 (response body).
    Refuse,
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

/// The media type of a `Content-Type` value: lower case, without parameters, at most 100
/// characters of `[a-z0-9!#$&^_.+-/]` (anything else makes it `None`: it goes into the record).
pub fn media_type(value: Option<&http::HeaderValue>) -> Option<String> {
    let v = value?.to_str().ok()?;
    let mt = v.split(';').next()?.trim().to_ascii_lowercase();
    let ok = !mt.is_empty()
        && mt.len() <= 100
        && mt
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-/".contains(&b));
    ok.then_some(mt)
}

/// Whether a media type is JSON (`application/json`, `application/fhir+json`, any `+json`).
pub fn is_json(media_type: &str) -> bool {
    media_type == "application/json" || media_type.ends_with("+json")
}

/// The body as the extractor must read it: gzip and deflate are decoded (bounded by `limit`).
pub fn decoded<'b>(
    body: &'b [u8],
    encoding: Option<&http::HeaderValue>,
    limit: usize,
) -> Result<Cow<'b, [u8]>, Gap> {
    let Some(encoding) = encoding else {
        return Ok(Cow::Borrowed(body));
    };
    let enc = encoding
        .to_str()
        .map_err(|_| Gap::ContentEncoding)?
        .trim()
        .to_ascii_lowercase();
    let mut out = Vec::new();
    let read = match enc.as_str() {
        "" | "identity" => return Ok(Cow::Borrowed(body)),
        "gzip" | "x-gzip" => flate2::read::MultiGzDecoder::new(body)
            .take(limit as u64 + 1)
            .read_to_end(&mut out),
        // HTTP's "deflate" is the zlib format.
        "deflate" => flate2::read::ZlibDecoder::new(body)
            .take(limit as u64 + 1)
            .read_to_end(&mut out),
        _ => return Err(Gap::ContentEncoding),
    };
    match read {
        Ok(n) if n > limit => Err(Gap::TooLarge),
        Ok(_) => Ok(Cow::Owned(out)),
        Err(_) => Err(Gap::InvalidJson),
    }
}

/// A request body read from the client.
pub struct RequestBody {
    /// What was read (all of it when `complete`).
    pub bytes: Vec<u8>,
    /// The whole body was read within the limit.
    pub complete: bool,
}

/// Read the client's request body, stopping after the first chunk that goes past `limit`.
pub async fn read_request_body(session: &mut Session, limit: usize) -> Result<RequestBody> {
    let mut bytes = Vec::new();
    // An error reading the client's body is the client's side (its timeout, a closed socket).
    while let Some(chunk) = session
        .read_request_body()
        .await
        .map_err(|e| e.into_down())?
    {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > limit {
            return Ok(RequestBody {
                bytes,
                complete: false,
            });
        }
    }
    Ok(RequestBody {
        bytes,
        complete: true,
    })
}

// ---------------------------------------------------------------------------------------------
// Transaction and batch entries
// ---------------------------------------------------------------------------------------------

/// The path and query of an `http://` or `https://` URL (`/` when it has no path); `None`
/// for anything else.
pub fn target_of_absolute_url(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    Some(rest.find('/').map_or("/", |i| &rest[i..]))
}

/// Classifies the entries of a transaction or batch Bundle with the route rules, as if each
/// were its own request under the Bundle's base path.
pub struct EntryRules<'r> {
    pub rules: &'r RuleSet,
    /// The base path the Bundle was posted to (`/fhir`).
    pub base_path: &'r str,
}

impl EntryClassifier for EntryRules<'_> {
    fn classify_entry(&self, method: &str, url: &str) -> (Vec<String>, bool) {
        // An absolute URL: its path (the entry addresses this server).
        let target = match target_of_absolute_url(url) {
            Some(t) => t.to_string(),
            None => format!("{}/{}", self.base_path, url.trim_start_matches('/')),
        };
        match self
            .rules
            .classify(method, &target, &http::HeaderMap::new())
        {
            Ok(c) if c.matched => (
                c.patients.into_iter().map(|p| p.id).collect(),
                c.attribution == Attribution::Complete,
            ),
            _ => (Vec::new(), false),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading bodies for patients (shared by the proxy and `rules explain`)
// ---------------------------------------------------------------------------------------------

/// Read a whole request body (at most `limit` bytes) for patients, as the buffered path does:
/// an `application/x-www-form-urlencoded` body of a rule with `form_body` as search
/// parameters, a JSON body (or one without `Content-Type`) of a rule with `inspect_body`
/// through [`crate::extract::request_patients`]. Returns the time spent extracting.
pub fn inspect_request_body(
    c: &mut Classification,
    rules: &RuleSet,
    headers: &http::HeaderMap,
    body: &[u8],
    limit: usize,
    inspection: &mut Inspection,
) -> Option<std::time::Duration> {
    if body.is_empty() {
        return None;
    }
    let media = media_type(headers.get(http::header::CONTENT_TYPE));
    if c.needs_form_body && media.as_deref() == Some("application/x-www-form-urlencoded") {
        rules.attribute_form_body(c, body);
        return None;
    }
    if !c.inspect_body {
        return None;
    }
    match decoded(body, headers.get(http::header::CONTENT_ENCODING), limit) {
        Err(gap) => {
            inspection.gaps.insert(gap);
            None
        }
        // No Content-Type: FHIR servers read the body as JSON.
        Ok(bytes) if media.as_deref().is_none_or(is_json) => {
            let entries = EntryRules {
                rules,
                base_path: &c.base_path,
            };
            let creating = c.interaction == InteractionKind::Create;
            let started = std::time::Instant::now();
            let findings = crate::extract::request_patients(&bytes, creating, &entries);
            // `POST [base]` is a batch or a transaction by its Bundle's `type`, which only the
            // body says: the route rule records a transaction until the body is read.
            if c.interaction == InteractionKind::Transaction
                && findings.bundle_type.as_deref() == Some("batch")
            {
                c.interaction = InteractionKind::Batch;
            }
            inspection.body = Some(findings);
            Some(started.elapsed())
        }
        Ok(_) => {
            inspection.gaps.insert(Gap::NotJson);
            None
        }
    }
}

/// Read a whole response body (at most `limit` bytes) for patients, as the buffered path
/// does for a rule with `inspect_response`. Returns the response's media type (for the
/// record) and the time spent extracting.
pub fn inspect_response_body(
    headers: &http::HeaderMap,
    body: &[u8],
    head_request: bool,
    limit: usize,
    inspection: &mut Inspection,
) -> (Option<String>, Option<std::time::Duration>) {
    let media = media_type(headers.get(http::header::CONTENT_TYPE));
    // A create answered without a body names the new resource in `Location`.
    inspection.location_patient = headers
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| crate::rules::patient_in_reference(l, false))
        .map(str::to_string);
    if body.is_empty() || head_request {
        inspection.response = Some(Findings::default());
        return (media, None);
    }
    let took = match decoded(body, headers.get(http::header::CONTENT_ENCODING), limit) {
        Err(gap) => {
            inspection.gaps.insert(gap);
            None
        }
        Ok(bytes) if media.as_deref().is_none_or(is_json) => {
            let started = std::time::Instant::now();
            inspection.response = Some(crate::extract::response_patients(&bytes));
            Some(started.elapsed())
        }
        Ok(_) => {
            inspection.gaps.insert(Gap::NotJson);
            None
        }
    };
    (media, took)
}

// ---------------------------------------------------------------------------------------------
// Settling the record
// ---------------------------------------------------------------------------------------------

/// What the buffered path learnt, for [`settle`].
#[derive(Debug, Default)]
pub struct Inspection {
    /// Patients of the request body, when it was read.
    pub body: Option<Findings>,
    /// Patients of the response body, when it was read.
    pub response: Option<Findings>,
    /// The patient a `Location` response header names (a create answered without a body).
    pub location_patient: Option<String>,
    /// Gaps found outside the extractor (`too_large`, `not_json`, `content_encoding`).
    pub gaps: BTreeSet<Gap>,
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
    let mut patients = c.patients.clone();
    let mut seen: HashSet<String> = patients.iter().map(|p| p.id.clone()).collect();
    let mut add = |id: &str, source: PatientSource, patients: &mut Vec<PatientRef>| {
        if seen.insert(id.to_string()) {
            patients.push(PatientRef {
                id: id.to_string(),
                source,
            });
        }
    };
    let mut gaps = inspection.gaps.clone();
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
            add(p, PatientSource::Body, &mut patients);
        }
        gaps.extend(b.gaps.iter().copied());
    }
    let complete = match status {
        None => {
            gaps.is_empty()
                && (request_complete
                    || body_is_the_resource
                    || (matches!(
                        c.interaction,
                        InteractionKind::Transaction | InteractionKind::Batch
                    ) && inspection.body.is_some()))
        }
        Some(status) => {
            let success = (200..300).contains(&status);
            let mut located = 0;
            if let Some(r) = &inspection.response {
                for p in &r.patients {
                    add(p, PatientSource::Response, &mut patients);
                }
                gaps.extend(r.gaps.iter().copied());
                located += r.located;
            }
            if let Some(p) = &inspection.location_patient {
                add(p, PatientSource::Response, &mut patients);
                located += 1;
            }
            // A Patient created by the request: named once the response gives its id (or
            // nothing was created).
            let created = inspection.body.as_ref().map_or(0, |b| b.created_patients);
            if created > 0 && (!success || located >= created) {
                gaps.remove(&Gap::CreatedPatient);
            }
            let representation = inspection.response.as_ref().is_some_and(|r| {
                r.document_type.is_some()
                    && r.document_type.as_deref() == c.resource_type.as_deref()
            });
            let changes_existing = matches!(
                c.interaction,
                InteractionKind::Patch | InteractionKind::Delete
            );
            if success && changes_existing && !request_complete && !representation {
                gaps.insert(Gap::NoRepresentation);
            }
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
    (patients, attribution, gaps)
}

// ---------------------------------------------------------------------------------------------
// `rules explain` and `rules test`: the same steps without a network
// ---------------------------------------------------------------------------------------------

/// A record's patient list and attribution at one point of a request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settled {
    pub patients: Vec<PatientRef>,
    pub attribution: Attribution,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gaps: Vec<String>,
}

/// What the gateway would record for a request (and its response): `rules explain`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub rule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Why the path was refused (400), when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
    pub action: crate::record::Action,
    pub interaction: InteractionKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    /// The request body is read for patients (`inspect_body`).
    pub reads_body: bool,
    /// The response is read for patients before it is released (`inspect_response`).
    pub reads_response: bool,
    /// Before the request is forwarded (the intent record of a change).
    pub request: Settled,
    /// After the response (the outcome record), when a response was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Settled>,
}

/// A response for [`explain`].
pub struct ExplainResponse<'a> {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: &'a [u8],
}

/// What the gateway would record for `method target` with `headers` and `body`, and, given
/// `response`, for its outcome: the proxy's steps, without a network.
pub fn explain(
    rules: &RuleSet,
    limit: usize,
    method: &str,
    target: &str,
    headers: &http::HeaderMap,
    body: Option<&[u8]>,
    response: Option<ExplainResponse<'_>>,
) -> Explanation {
    let mut c = match rules.classify(method, target, headers) {
        Ok(c) => c,
        Err(rejection) => {
            let nothing = Settled {
                patients: Vec::new(),
                attribution: Attribution::Partial,
                gaps: Vec::new(),
            };
            return Explanation {
                rule: crate::rules::REJECTED_RULE.into(),
                description: None,
                rejected: Some(rejection.reason().into()),
                action: crate::record::Action::E,
                interaction: InteractionKind::Unclassified,
                resource_type: None,
                resource_id: None,
                reads_body: false,
                reads_response: false,
                request: nothing.clone(),
                outcome: response.map(|_| nothing),
            };
        }
    };
    let body = body.unwrap_or_default();
    let mut inspection = Inspection::default();
    if body.len() > limit && c.buffered() {
        inspection.gaps.insert(Gap::TooLarge);
    } else {
        inspect_request_body(&mut c, rules, headers, body, limit, &mut inspection);
    }
    let settled = |(patients, attribution, gaps)| Settled {
        patients,
        attribution,
        gaps,
    };
    let request = settled(settle(&c, &inspection, None));
    let outcome = response.map(|r| {
        if c.inspect_response {
            if r.body.len() > limit {
                inspection.gaps.insert(Gap::TooLarge);
            } else {
                let head = method == "HEAD";
                inspect_response_body(&r.headers, r.body, head, limit, &mut inspection);
            }
        }
        settled(settle(&c, &inspection, Some(r.status)))
    });
    Explanation {
        description: rules.description(&c.rule).map(str::to_string),
        rule: c.rule,
        rejected: None,
        action: c.action,
        interaction: c.interaction,
        resource_type: c.resource_type,
        resource_id: c.resource_id,
        reads_body: c.inspect_body,
        reads_response: c.inspect_response,
        request,
        outcome,
    }
}

/// A rule test's failure line when `got` holds other members than `want` (order ignored).
fn expect_same_members<'a>(
    what: &str,
    want: &[String],
    got: impl Iterator<Item = &'a str>,
    failures: &mut Vec<String>,
) {
    let mut want: Vec<&str> = want.iter().map(String::as_str).collect();
    let mut got: Vec<&str> = got.collect();
    want.sort_unstable();
    got.sort_unstable();
    if want != got {
        failures.push(format!("{what}: expected {want:?}, got {got:?}"));
    }
}

/// Run one `[[test]]` case: `Ok` with the explanation, or every expectation that failed.
pub fn run_rule_test(
    rules: &RuleSet,
    limit: usize,
    t: &crate::rules::RuleTest,
) -> Result<Explanation, Vec<String>> {
    let header = |k: &str, v: &str| {
        Ok::<_, String>((
            http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("bad header name {k:?}"))?,
            http::HeaderValue::from_str(v).map_err(|_| format!("bad value for header {k}"))?,
        ))
    };
    let mut headers = http::HeaderMap::new();
    for (k, v) in &t.headers {
        let (k, v) = header(k, v).map_err(|e| vec![e])?;
        headers.append(k, v);
    }
    if t.body.is_some() && !headers.contains_key(http::header::CONTENT_TYPE) {
        let ct = t.content_type.as_deref().unwrap_or("application/fhir+json");
        let (k, v) = header("content-type", ct).map_err(|e| vec![e])?;
        headers.insert(k, v);
    }
    let response = if t.response.is_some() || t.status.is_some() || t.location.is_some() {
        let mut rh = http::HeaderMap::new();
        let ct = t
            .response_content_type
            .as_deref()
            .unwrap_or("application/fhir+json");
        let (k, v) = header("content-type", ct).map_err(|e| vec![e])?;
        rh.insert(k, v);
        if let Some(l) = &t.location {
            let (k, v) = header("location", l).map_err(|e| vec![e])?;
            rh.insert(k, v);
        }
        Some(ExplainResponse {
            status: t.status.unwrap_or(200),
            headers: rh,
            body: t.response.as_deref().unwrap_or("").as_bytes(),
        })
    } else {
        None
    };
    let x = explain(
        rules,
        limit,
        &t.method,
        &t.url,
        &headers,
        t.body.as_deref().map(str::as_bytes),
        response,
    );
    let mut failures = Vec::new();
    let e = &t.expect;
    let settled = x.outcome.as_ref().unwrap_or(&x.request);
    if let Some(rule) = &e.rule {
        if *rule != x.rule {
            failures.push(format!("rule: expected {rule}, got {}", x.rule));
        }
    }
    if let Some(a) = e.action {
        if a != x.action {
            failures.push(format!(
                "action: expected {}, got {}",
                a.as_str(),
                x.action.as_str()
            ));
        }
    }
    if let Some(i) = e.interaction {
        if i != x.interaction {
            failures.push(format!(
                "interaction: expected {i:?}, got {:?}",
                x.interaction
            ));
        }
    }
    if let Some(p) = &e.patients {
        let got = settled.patients.iter().map(|p| p.id.as_str());
        expect_same_members("patients", p, got, &mut failures);
    }
    if let Some(a) = e.attribution {
        if a != settled.attribution {
            failures.push(format!(
                "attribution: expected {a:?}, got {:?}",
                settled.attribution
            ));
        }
    }
    if let Some(g) = &e.gaps {
        let got = settled.gaps.iter().map(String::as_str);
        expect_same_members("gaps", g, got, &mut failures);
    }
    if failures.is_empty() {
        Ok(x)
    } else {
        Err(failures)
    }
}

// ---------------------------------------------------------------------------------------------
// The exchange with the EHR
// ---------------------------------------------------------------------------------------------

/// Headers that belong to one connection, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
];

/// The EHR's answer, read as far as the limit.
pub struct Answer {
    pub header: ResponseHeader,
    /// What was read of the body (all of it when `complete`).
    pub body: Vec<u8>,
    /// The whole body was read within the limit.
    pub complete: bool,
    /// The EHR's connection, still open when the body was not read to the end.
    pub rest: Option<HttpSession>,
}

/// The hop-by-hop headers of a message: [`HOP_BY_HOP`] and those its `Connection` header names.
fn hop_by_hop(headers: &http::HeaderMap) -> Vec<String> {
    let named = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty());
    HOP_BY_HOP
        .iter()
        .map(|h| h.to_string())
        .chain(named)
        .collect()
}

/// The request to send the EHR: the client's, with the hop-by-hop headers removed and the
/// body framed as read. `body_complete`: the whole body is `body` (framed with
/// Content-Length); otherwise the client's framing is kept and the rest streams.
pub fn upstream_request(
    client: &RequestHeader,
    body: &[u8],
    body_complete: bool,
) -> Result<RequestHeader> {
    let mut req = client.clone();
    req.set_version(http::Version::HTTP_11);
    let chunked = req
        .headers
        .get(http::header::TRANSFER_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    let had_length = req.headers.contains_key(http::header::CONTENT_LENGTH);
    for h in hop_by_hop(&req.headers) {
        req.remove_header(&h);
    }
    if body_complete {
        if !body.is_empty() || had_length || chunked {
            req.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        }
    } else if chunked && !had_length {
        req.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    // An HTTP/2 client sends :authority, not Host; an HTTP/1.1 EHR expects Host.
    if !req.headers.contains_key(http::header::HOST) {
        if let Some(authority) = req.uri.authority().map(|a| a.as_str().to_string()) {
            req.insert_header(http::header::HOST, authority)?;
        }
    }
    Ok(req)
}

/// The response head to send the client: the EHR's, without hop-by-hop headers, framed for
/// the body as it will be sent.
pub fn downstream_response(
    answer: &Answer,
    head_request: bool,
    client_is_h1: bool,
) -> Result<ResponseHeader> {
    let mut resp = answer.header.clone();
    let upstream_length = resp.headers.get(http::header::CONTENT_LENGTH).cloned();
    for h in hop_by_hop(&resp.headers) {
        resp.remove_header(&h);
    }
    let status = resp.status.as_u16();
    let bodiless = head_request || status == 204 || status == 304 || status < 200;
    if bodiless {
        // A HEAD answer keeps the length of the GET it stands for.
        if let Some(len) = upstream_length {
            resp.insert_header(http::header::CONTENT_LENGTH, len)?;
        }
    } else if answer.complete {
        resp.insert_header(http::header::CONTENT_LENGTH, answer.body.len().to_string())?;
    } else if let Some(len) = upstream_length {
        resp.insert_header(http::header::CONTENT_LENGTH, len)?;
    } else if client_is_h1 {
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(resp)
}

/// Whether a failed exchange may be sent again on a fresh connection: only an idempotent
/// method whose whole body we hold, after a failure pingora marks as safe to retry (a pooled
/// connection the EHR had closed).
fn retryable(e: &Error, reused: bool, method: &http::Method, body_complete: bool) -> bool {
    let safe_method = matches!(
        *method,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::PUT
            | http::Method::DELETE
            | http::Method::OPTIONS
    );
    let marked = match e.retry {
        pingora::RetryType::Decided(b) => b,
        pingora::RetryType::ReusedOnly => reused,
    };
    safe_method && body_complete && marked
}

/// Send `req` (and `body`, then the rest of the client's body when `!body_complete`) to the
/// EHR and read its response, buffering at most `limit` bytes of body.
pub async fn exchange(
    connector: &Connector,
    peer: &HttpPeer,
    req: &RequestHeader,
    body: &[u8],
    body_complete: bool,
    client: &mut Session,
    limit: usize,
) -> Result<Answer> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (mut up, reused) = connector.get_http_session(peer).await?;
        up.set_read_timeout(peer.options.read_timeout);
        up.set_write_timeout(peer.options.write_timeout);
        match send_and_read_head(&mut up, req, body, body_complete, client).await {
            Ok(()) => return read_body(connector, peer, up, limit).await,
            Err(e) => {
                up.shutdown().await;
                if attempt < 2 && retryable(&e, reused, &req.method, body_complete) {
                    continue;
                }
                return Err(e);
            }
        }
    }
}

async fn send_and_read_head(
    up: &mut HttpSession,
    req: &RequestHeader,
    body: &[u8],
    body_complete: bool,
    client: &mut Session,
) -> Result<()> {
    up.write_request_header(Box::new(req.clone())).await?;
    if !body.is_empty() {
        up.write_request_body(Bytes::copy_from_slice(body), body_complete)
            .await?;
    }
    if !body_complete {
        while let Some(chunk) = client.read_request_body().await? {
            up.write_request_body(chunk, false).await?;
        }
    }
    up.finish_request_body().await?;
    loop {
        up.read_response_header().await?;
        let status = up.response_header().map(|h| h.status.as_u16()).unwrap_or(0);
        if status == 101 {
            return Error::e_explain(InvalidHTTPHeader, "upstream switched protocols");
        }
        // Informational answers (100 Continue, 103 Early Hints) are not relayed.
        if !(100..200).contains(&status) {
            return Ok(());
        }
    }
}

async fn read_body(
    connector: &Connector,
    peer: &HttpPeer,
    mut up: HttpSession,
    limit: usize,
) -> Result<Answer> {
    let header = up
        .response_header()
        .cloned()
        .ok_or_else(|| Error::explain(InvalidHTTPHeader, "no response header"))?;
    let mut body = Vec::new();
    loop {
        match up.read_response_body().await? {
            Some(chunk) => {
                body.extend_from_slice(&chunk);
                if body.len() > limit && !up.response_done() {
                    return Ok(Answer {
                        header,
                        body,
                        complete: false,
                        rest: Some(up),
                    });
                }
            }
            None => break,
        }
        if up.response_done() {
            break;
        }
    }
    // The whole response was read: the connection may serve the next request.
    if up.response_done() {
        connector
            .release_http_session(up, peer, peer.options.idle_timeout)
            .await;
    } else {
        up.shutdown().await;
    }
    Ok(Answer {
        header,
        body,
        complete: true,
        rest: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::{request_patients, response_patients, ReferenceOnly};
    use crate::rules::{RuleSet, UnmatchedPolicy};

    #[test]
    fn attribution_config_names_the_key_it_rejects() {
        let parse = |text: &str| -> Result<AttributionConfig, String> {
            let c: AttributionConfig = toml::from_str(text).map_err(|e| e.to_string())?;
            c.validate().map_err(|e| e.to_string())?;
            Ok(c)
        };
        let c = parse("").unwrap();
        assert_eq!(c.max_buffered_requests, 64);
        assert_eq!(c.buffered_wait_secs, 10);
        assert!(parse("max_buffered_requests = 0")
            .unwrap_err()
            .contains("attribution.max_buffered_requests"));
        assert!(parse("max_buffered_requests = 70000")
            .unwrap_err()
            .contains("attribution.max_buffered_requests"));
        assert!(parse("buffered_wait_secs = 301")
            .unwrap_err()
            .contains("attribution.buffered_wait_secs"));
        assert!(parse("max_body_bytes = 0")
            .unwrap_err()
            .contains("attribution.max_body_bytes"));
        assert!(parse("max_buffered = 3")
            .unwrap_err()
            .contains("unknown field"));
        assert_eq!(
            parse("buffered_wait_secs = 0").unwrap().buffered_wait_secs,
            0
        );
        assert_eq!(parse("").unwrap().client_timeout_secs, 60);
        assert!(parse("client_timeout_secs = 0")
            .unwrap_err()
            .contains("attribution.client_timeout_secs"));
    }

    fn rules() -> RuleSet {
        RuleSet::from_toml_str(crate::rules::BUILTIN_FHIR_R4, UnmatchedPolicy::Journal).unwrap()
    }

    fn classify(method: &str, target: &str) -> Classification {
        rules()
            .classify(method, target, &http::HeaderMap::new())
            .unwrap()
    }

    fn ids(p: &[PatientRef]) -> Vec<(String, PatientSource)> {
        p.iter().map(|p| (p.id.clone(), p.source)).collect()
    }

    #[test]
    fn a_read_of_any_type_is_settled_by_its_response() {
        let c = classify("GET", "/fhir/Observation/o1");
        let inspection = Inspection {
            response: Some(response_patients(
                br#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/a"}}"#,
            )),
            ..Default::default()
        };
        let (p, a, g) = settle(&c, &inspection, Some(200));
        assert_eq!(ids(&p), [("a".to_string(), PatientSource::Response)]);
        assert_eq!(a, Attribution::Complete);
        assert!(g.is_empty());
        // A 404 discloses nobody: complete, no patients.
        let inspection = Inspection {
            response: Some(response_patients(br#"{"resourceType":"OperationOutcome"}"#)),
            ..Default::default()
        };
        let (p, a, _) = settle(&c, &inspection, Some(404));
        assert!(p.is_empty());
        assert_eq!(a, Attribution::Complete);
    }

    #[test]
    fn gaps_make_it_partial() {
        let c = classify("GET", "/fhir/Observation");
        let mut inspection = Inspection::default();
        inspection.gaps.insert(Gap::NotJson);
        let (_, a, g) = settle(&c, &inspection, Some(200));
        assert_eq!(a, Attribution::Partial);
        assert_eq!(g, ["not_json"]);
    }

    #[test]
    fn creates_resolve_their_patient_from_the_response() {
        let c = classify("POST", "/fhir/Patient");
        let body = request_patients(
            br#"{"resourceType":"Patient","name":[{"family":"N"}]}"#,
            true,
            &ReferenceOnly,
        );
        let inspection = Inspection {
            body: Some(body),
            ..Default::default()
        };
        let (p, a, g) = settle(&c, &inspection, None);
        assert!(p.is_empty());
        assert_eq!(a, Attribution::Partial);
        assert_eq!(g, ["created_patient"]);
        // Answered with Prefer: return=minimal: the Location header names it.
        let inspection = Inspection {
            body: inspection.body,
            response: Some(Findings::default()),
            location_patient: Some("new1".into()),
            ..Default::default()
        };
        let (p, a, g) = settle(&c, &inspection, Some(201));
        assert_eq!(ids(&p), [("new1".to_string(), PatientSource::Response)]);
        assert_eq!(a, Attribution::Complete, "{g:?}");
    }

    #[test]
    fn an_observation_create_is_complete_from_its_body() {
        let c = classify("POST", "/fhir/Observation");
        let body = request_patients(
            br#"{"resourceType":"Observation","subject":{"reference":"Patient/s"}}"#,
            true,
            &ReferenceOnly,
        );
        let inspection = Inspection {
            body: Some(body),
            ..Default::default()
        };
        let (p, a, _) = settle(&c, &inspection, None);
        assert_eq!(ids(&p), [("s".to_string(), PatientSource::Body)]);
        assert_eq!(a, Attribution::Complete);
    }

    #[test]
    fn a_delete_without_representation_is_partial() {
        let c = classify("DELETE", "/fhir/Observation/o1");
        let inspection = Inspection {
            response: Some(response_patients(br#"{"resourceType":"OperationOutcome"}"#)),
            ..Default::default()
        };
        let (_, a, g) = settle(&c, &inspection, Some(200));
        assert_eq!(a, Attribution::Partial);
        assert_eq!(g, ["no_representation"]);
        // The Patient itself: the path says who.
        let c = classify("DELETE", "/fhir/Patient/p1");
        let (p, a, _) = settle(&c, &inspection, Some(200));
        assert_eq!(ids(&p), [("p1".to_string(), PatientSource::Path)]);
        assert_eq!(a, Attribution::Complete);
    }

    #[test]
    fn transaction_entries_are_classified_by_the_rules() {
        let rs = rules();
        let entries = EntryRules {
            rules: &rs,
            base_path: "/fhir",
        };
        assert_eq!(
            entries.classify_entry("DELETE", "Patient/p9"),
            (vec!["p9".to_string()], true)
        );
        assert_eq!(
            entries.classify_entry("GET", "Observation?patient=p8"),
            (vec!["p8".to_string()], true)
        );
        assert_eq!(
            entries.classify_entry("GET", "http://h/fhir/Patient/p7/_history/2"),
            (vec!["p7".to_string()], true)
        );
        assert_eq!(
            entries.classify_entry("GET", "Patient/bad%2Fid"),
            (vec![], false)
        );
    }

    #[test]
    fn decoding() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"{\"a\":1}").unwrap();
        let gz = gz.finish().unwrap();
        let h = |s: &str| http::HeaderValue::from_str(s).unwrap();
        assert_eq!(&*decoded(&gz, Some(&h("gzip")), 100).unwrap(), b"{\"a\":1}");
        assert_eq!(decoded(&gz, Some(&h("gzip")), 3), Err(Gap::TooLarge));
        assert_eq!(
            decoded(b"x", Some(&h("br")), 100),
            Err(Gap::ContentEncoding)
        );
        assert_eq!(decoded(b"x", Some(&h("gzip")), 100), Err(Gap::InvalidJson));
        assert_eq!(&*decoded(b"x", None, 100).unwrap(), b"x");
    }

    #[test]
    fn media_types() {
        let h = |s: &str| http::HeaderValue::from_str(s).unwrap();
        assert_eq!(
            media_type(Some(&h("application/fhir+json; charset=utf-8"))).as_deref(),
            Some("application/fhir+json")
        );
        assert!(is_json("application/fhir+json"));
        assert!(is_json("application/json"));
        assert!(is_json("application/json-patch+json"));
        assert!(!is_json("application/fhir+xml"));
        assert_eq!(media_type(Some(&h("a b"))), None);
    }

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut req = RequestHeader::build("POST", b"/fhir/Patient", None).unwrap();
        req.insert_header("connection", "keep-alive, x-secret-hop")
            .unwrap();
        req.insert_header("x-secret-hop", "1").unwrap();
        req.insert_header("transfer-encoding", "chunked").unwrap();
        req.insert_header("expect", "100-continue").unwrap();
        req.insert_header("authorization", "Bearer t").unwrap();
        let up = upstream_request(&req, b"{}", true).unwrap();
        assert!(up.headers.get("connection").is_none());
        assert!(up.headers.get("x-secret-hop").is_none());
        assert!(up.headers.get("transfer-encoding").is_none());
        assert!(up.headers.get("expect").is_none());
        assert_eq!(up.headers.get("content-length").unwrap(), "2");
        assert_eq!(up.headers.get("authorization").unwrap(), "Bearer t");
        // A GET without a body gets no Content-Length.
        let req = RequestHeader::build("GET", b"/fhir/Patient/1", None).unwrap();
        let up = upstream_request(&req, b"", true).unwrap();
        assert!(up.headers.get("content-length").is_none());
    }
}
