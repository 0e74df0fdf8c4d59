//! The pingora phase map: where each audit step happens in a request's life.
//!
//! This module is deliberately thin; the logic lives in [`crate::identity`],
//! [`crate::rules`], [`crate::netvec`] and [`crate::journal`]. What it owns is the *order*,
//! because the order is the guarantee:
//!
//! | phase | what happens | if the journal fails |
//! | --- | --- | --- |
//! | `request_filter` | request ID, network vector, JWT, rules. A refused request (401, 400, 403) gets its outcome record, then its answer. A change (POST, PUT, PATCH, DELETE) gets an **intent** record, fsync'd, before anything is forwarded. | 503, nothing forwarded |
//! | `request_body_filter` | POST `_search` form bodies are copied (bounded) for query attribution; the body still streams. | - |
//! | `upstream_request_filter` | `X-Forwarded-For` and the request ID are added; nothing else changes. | - |
//! | `response_filter` | the upstream's status and headers are known but **not yet sent**: the **outcome** record is appended and awaited here. | `Err(503)`: the upstream's head and body are dropped, the client gets a 503 |
//! | `fail_to_proxy` | upstream unreachable or timed out: an outcome record with the error, then the error answer. | 503 |
//! | `logging` | a request that ended before any outcome record (client went away) gets one now. | counted, logged |
//!
//! Pingora sends the response head only after `response_filter` returns and body chunks only
//! after the head, so an outcome record that is durable when `response_filter` returns is
//! durable before the first byte of patient data leaves the gateway.
//!
//! Nothing in this module logs a path, query, user, patient or token: pingora's own error log
//! line is fed [`ProxyHttp::request_summary`], which is overridden to the request ID only.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpUpstreamRequestPolicy;

use crate::clock;
use crate::config::UpstreamConfig;
use crate::extract::Gap;
use crate::geoip::GeoAnswer;
use crate::identity::AuthFailure;
use crate::inspect::{
    downstream_response, exchange, inspect_request_body, inspect_response_body, read_request_body,
    settle, upstream_request, Answer, Inspection, OversizePolicy, RequestBody,
};
use crate::journal::{Journal, JournalError};
use crate::metrics;
use crate::netvec::NetPolicy;
use crate::record::{
    Action, Attribution, ClientCert, Event, GatewayId, InteractionKind, NetworkVector, Outcome,
    Phase, Who,
};
use crate::reload::{Live, Snapshot};
use crate::rules::Classification;

/// Everything a request needs, shared by all requests.
pub struct Gateway {
    /// Identity, rules and network policy; a SIGHUP swaps them (see [`crate::reload`]).
    pub live: Arc<Live>,
    /// Requests between their head and their end (the drain at shutdown waits for 0).
    pub in_flight: Arc<AtomicUsize>,
    pub journal: Journal,
    pub node: String,
    /// Listener address → name recorded in `gateway.listener`.
    pub listeners: Vec<(SocketAddr, String)>,
    pub upstream: UpstreamConfig,
    /// `host:port` of the upstream.
    pub upstream_authority: String,
    /// The upstream is `https://`.
    pub upstream_tls: bool,
    /// The name the upstream's certificate must carry (and the SNI sent).
    pub upstream_sni: String,
    /// `upstream.ca_file`, loaded; `None`: the system's roots.
    pub upstream_ca: Option<Arc<Box<[pingora::tls::x509::X509]>>>,
    /// The buffered path's connections to the upstream (see [`crate::inspect`]); pingora's
    /// proxy path keeps its own pool.
    pub connector: pingora::connectors::http::Connector,
    /// Slots of the buffered path (`attribution.max_buffered_requests`): a buffered exchange
    /// holds one from before it reads the request body until its response is released, so the
    /// memory the buffered path holds is bounded.
    pub buffer_slots: Arc<tokio::sync::Semaphore>,
    /// How long a request waits for a slot (`attribution.buffered_wait_secs`).
    pub buffer_wait: std::time::Duration,
}

/// A held slot of the buffered path: released, and the in-progress gauge lowered, on drop
/// (also when the client goes away mid-exchange).
struct BufferSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl BufferSlot {
    fn hold(permit: tokio::sync::OwnedSemaphorePermit) -> BufferSlot {
        metrics::global().buffered_in_progress.inc();
        BufferSlot { _permit: permit }
    }
}

impl Drop for BufferSlot {
    fn drop(&mut self) {
        metrics::global().buffered_in_progress.dec();
    }
}

/// A request waiting for a buffered slot, counted in `auditgate_buffered_waiting` until it
/// stops waiting, also when its task is dropped mid-wait.
struct Waiting;

impl Waiting {
    fn start() -> Waiting {
        metrics::global().buffered_waiting.inc();
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        metrics::global().buffered_waiting.dec();
    }
}

/// Per-request state carried across phases.
pub struct RequestCtx {
    /// Counts this request in [`Gateway::in_flight`] until the context is dropped.
    _in_flight: InFlight,
    /// The configuration this request uses in every phase (taken when it starts).
    snap: Arc<Snapshot>,
    /// When the request's head was read.
    started: Instant,
    /// The same moment on the wall clock, for the record's `received`.
    received: std::time::SystemTime,
    /// The record under construction: who, what, from where. Set in `request_filter`.
    event: Option<Event>,
    /// The seq of this request's intent record.
    intent_seq: Option<u64>,
    /// Set once the outcome record is durable.
    outcome_written: bool,
    /// Why the gateway refused to release a response (journal failure), for `fail_to_proxy`.
    refusal: Option<&'static str>,
    /// A copy of a POST `_search` form body, for query attribution.
    form_body: Option<Vec<u8>>,
    /// Limit for `form_body`.
    form_body_limit: usize,
    /// Whether a form body went over the limit.
    form_body_truncated: bool,
    /// The rules' answer, kept when the form body must still be attributed.
    classification: Option<Classification>,
    upstream_started: Option<Instant>,
    /// The response's media type, recorded when the buffered path read the response.
    content_type: Option<String>,
}

impl RequestCtx {
    /// The request's ID (empty before `request_filter` set the event).
    fn request_id(&self) -> String {
        self.event
            .as_ref()
            .map(|e| e.request_id.clone())
            .unwrap_or_default()
    }
}

/// One request counted in flight; uncounted when dropped (however the request ends).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(counter: &Arc<AtomicUsize>) -> InFlight {
        counter.fetch_add(1, Ordering::AcqRel);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Headers by which a client may ask the EHR to run another method than the request line's.
const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Whether a request may change data, and so gets an intent record before it is forwarded:
/// every method but GET, HEAD and OPTIONS (POST, PUT, PATCH, DELETE and any extension method),
/// and any request that carries a method-override header.
fn needs_intent(method: &str, headers: &http::HeaderMap) -> bool {
    !matches!(method, "GET" | "HEAD" | "OPTIONS")
        || METHOD_OVERRIDE_HEADERS
            .iter()
            .any(|h| headers.contains_key(*h))
}

fn peer_ip(session: &Session) -> IpAddr {
    match session.client_addr() {
        Some(PingoraAddr::Inet(addr)) => addr.ip(),
        _ => IpAddr::from([0, 0, 0, 0]),
    }
}

/// How long an answer the gateway makes itself waits for the rest of the request body.
const BODY_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The body of every answer the gateway itself writes: a short JSON object with fixed codes.
fn error_body(status: u16, error: &str, detail: &str, request_id: &str) -> Bytes {
    let body = serde_json::json!({
        "status": status,
        "error": error,
        "detail": detail,
        "request_id": request_id,
    });
    Bytes::from(serde_json::to_vec(&body).expect("json serialises"))
}

async fn write_answer(
    session: &mut Session,
    close: bool,
    status: u16,
    request_id_header: &http::HeaderName,
    request_id: &str,
    extra: &[(&'static str, String)],
    body: Bytes,
) -> Result<()> {
    // Read what is left of the request body first (bounded in time): closing a connection with
    // unread bytes makes the kernel send a reset, which can destroy this answer before the
    // client reads it.
    let mut close = close;
    if !session.is_body_done() {
        let drain = tokio::time::timeout(BODY_DRAIN_TIMEOUT, session.drain_request_body()).await;
        close |= !matches!(drain, Ok(Ok(())));
    }
    let mut resp = ResponseHeader::build(status, Some(6))?;
    if close {
        // Say so, or a client may reuse the connection for its next request and see a reset.
        session.set_keepalive(None);
        resp.insert_header("connection", "close")?;
    }
    resp.insert_header(request_id_header.clone(), request_id)?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    for (k, v) in extra {
        resp.insert_header(*k, v.as_str())?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

impl Gateway {
    /// The upstream, with the configured TLS checks and timeouts (both paths).
    fn make_peer(&self) -> HttpPeer {
        let mut peer = HttpPeer::new(
            self.upstream_authority.as_str(),
            self.upstream_tls,
            if self.upstream_tls {
                self.upstream_sni.clone()
            } else {
                String::new()
            },
        );
        if self.upstream_tls {
            // Certificate and host name are checked unless explicitly (and loudly) turned off.
            let verify = !self.upstream.insecure_skip_verify;
            peer.options.verify_cert = verify;
            peer.options.verify_hostname = verify;
            if let Some(ca) = &self.upstream_ca {
                peer.options.ca = Some(ca.clone());
            }
        }
        let ms = std::time::Duration::from_millis;
        peer.options.connection_timeout = Some(ms(self.upstream.connect_timeout_ms));
        peer.options.read_timeout = Some(ms(self.upstream.read_timeout_ms));
        peer.options.write_timeout = Some(ms(self.upstream.write_timeout_ms));
        peer.options.idle_timeout = Some(ms(self.upstream.idle_timeout_ms));
        // Never let an upstream 101 turn the connection into an unaudited tunnel.
        peer.options.http_upstream_request_policy = HttpUpstreamRequestPolicy::deny_upgrades();
        peer
    }

    /// `X-Forwarded-For` and the request ID, on the request to the upstream (both paths).
    fn add_forwarding_headers(
        &self,
        session: &Session,
        upstream_request: &mut RequestHeader,
        ctx: &RequestCtx,
    ) -> Result<()> {
        let peer = peer_ip(session).to_string();
        let xff = match upstream_request
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(existing) if !existing.trim().is_empty() => format!("{existing}, {peer}"),
            _ => peer,
        };
        upstream_request.insert_header("x-forwarded-for", xff)?;
        if let Some(event) = &ctx.event {
            upstream_request.insert_header(
                ctx.snap.net.request_id_header().clone(),
                event.request_id.as_str(),
            )?;
        }
        Ok(())
    }

    /// Journal and answer a failed exchange with the upstream (`code` from
    /// [`upstream_error_status`]): 502, 504 or 500 with a fixed error code.
    async fn upstream_failed(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        e: &Error,
        code: u16,
    ) -> Result<()> {
        let request_id = ctx.request_id();
        let net = ctx.snap.net.clone();
        let tls_failed = matches!(
            e.etype(),
            TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert | HandshakeError
        );
        let error = match code {
            502 if tls_failed => "upstream_tls_failed",
            502 => "upstream_unreachable",
            504 => "upstream_timeout",
            _ => "gateway_error",
        };
        metrics::global()
            .upstream_errors
            .with_label_values(&[match code {
                502 if tls_failed => "tls",
                502 => "unreachable",
                504 => "timeout",
                _ => "other",
            }])
            .inc();
        match self.journal_outcome(ctx, code, Some(error), None).await {
            Ok(()) => {
                write_answer(
                    session,
                    true,
                    code,
                    net.request_id_header(),
                    &request_id,
                    &[],
                    error_body(code, error, "the EHR did not answer", &request_id),
                )
                .await
            }
            Err(je) => {
                self.unavailable(session, &net, true, &je, &request_id)
                    .await
            }
        }
    }

    /// The intent record of a change, durable before the EHR sees the request. `Ok(true)`:
    /// the journal refused it and the client got its 503.
    async fn write_intent(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let Some(event) = ctx.event.as_ref() else {
            return Ok(false);
        };
        match self.journal.append(event).await {
            Ok(receipt) => {
                ctx.intent_seq = Some(receipt.seq);
                Ok(false)
            }
            Err(e) => {
                ctx.refusal = Some(e.category());
                let request_id = event.request_id.clone();
                let net = ctx.snap.net.clone();
                self.unavailable(session, &net, false, &e, &request_id)
                    .await?;
                Ok(true)
            }
        }
    }

    /// The buffered path (see [`crate::inspect`]): read the body, journal the intent, fetch the
    /// whole response, journal the outcome with its patients, and only then release it.
    /// Always answers the client itself (`Ok(true)`).
    async fn buffered(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        mut c: Classification,
        intent_needed: bool,
    ) -> Result<bool> {
        let snap = ctx.snap.clone();
        let limit = snap.attribution.limit();
        let refuse_oversize = snap.attribution.oversize == OversizePolicy::Refuse;
        let request_id = ctx.request_id();
        let m = metrics::global();
        // 0. A slot, so that at most `max_buffered_requests` bodies are held at once. A request
        //    that waits too long is refused (and journaled) before anything is read or sent.
        let slot = match self.buffer_slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                let waiting = Waiting::start();
                let waited = tokio::time::timeout(
                    self.buffer_wait,
                    self.buffer_slots.clone().acquire_owned(),
                )
                .await;
                drop(waiting);
                match waited {
                    Ok(Ok(slot)) => slot,
                    _ => {
                        m.rejected_requests
                            .with_label_values(&["gateway_busy"])
                            .inc();
                        return self
                            .refuse(
                                session,
                                ctx,
                                503,
                                "gateway_busy",
                                "too many requests are being read for their audit record; retry",
                                &[("Retry-After", "1".to_string())],
                            )
                            .await;
                    }
                }
            }
        };
        let _slot = BufferSlot::hold(slot);
        // A client that stops reading or sending must not hold a slot for long: each read of
        // its body and each write of the answer has to progress within this time.
        let client_timeout = Some(snap.attribution.client_timeout());
        session.set_read_timeout(client_timeout);
        session.set_write_timeout(client_timeout);
        m.buffered_requests.inc();
        let mut inspection = Inspection::default();

        // 1. The request body, read whole (bounded) and inspected.
        let body = if session.is_body_empty() {
            RequestBody {
                bytes: Vec::new(),
                complete: true,
            }
        } else {
            read_request_body(session, limit).await?
        };
        m.inspected_request_bytes.inc_by(body.bytes.len() as u64);
        if !body.complete {
            if refuse_oversize {
                m.rejected_requests
                    .with_label_values(&["body_too_large"])
                    .inc();
                return self
                    .refuse(
                        session,
                        ctx,
                        413,
                        "body_too_large",
                        "the request body is larger than the gateway reads for the audit record",
                        &[],
                    )
                    .await;
            }
            inspection.gaps.insert(Gap::TooLarge);
        } else {
            let headers = &session.req_header().headers;
            if let Some(took) = inspect_request_body(
                &mut c,
                &snap.rules,
                headers,
                &body.bytes,
                limit,
                &mut inspection,
            ) {
                m.extraction_seconds.observe(took.as_secs_f64());
            }
        }
        if let Some(event) = ctx.event.as_mut() {
            apply_classification(event, &c);
            let (patients, attribution, gaps) = settle(&c, &inspection, None);
            event.patients = patients;
            event.attribution = attribution;
            event.attribution_gaps = gaps;
        }

        // 2. A change: its intent, durable before the EHR sees it.
        if intent_needed && self.write_intent(session, ctx).await? {
            return Ok(true);
        }

        // 3. The exchange with the EHR.
        let mut req = upstream_request(session.req_header(), &body.bytes, body.complete)?;
        self.add_forwarding_headers(session, &mut req, ctx)?;
        ctx.upstream_started = Some(Instant::now());
        let peer = self.make_peer();
        let answer = match exchange(
            &self.connector,
            &peer,
            &req,
            &body.bytes,
            body.complete,
            session,
            limit,
        )
        .await
        {
            Ok(answer) => answer,
            Err(e) => {
                let code = match upstream_error_status(&e) {
                    0 => return Err(e), // the client went away
                    code => code,
                };
                self.upstream_failed(session, ctx, &e, code).await?;
                return Ok(true);
            }
        };
        let status = answer.header.status.as_u16();
        let head_request = session.req_header().method == http::Method::HEAD;
        m.inspected_response_bytes.inc_by(answer.body.len() as u64);

        // 4. The response's patients.
        if c.inspect_response {
            // Over the limit, whether or not the last chunk happened to end the body (the
            // same line `rules explain` and the request side draw).
            if !answer.complete || answer.body.len() > limit {
                if refuse_oversize {
                    if let Some(mut rest) = answer.rest {
                        rest.shutdown().await;
                    }
                    m.upstream_errors
                        .with_label_values(&["response_too_large"])
                        .inc();
                    return self
                        .refuse(
                            session,
                            ctx,
                            502,
                            "response_too_large",
                            "the EHR's response is larger than the gateway reads for the audit record",
                            &[],
                        )
                        .await;
                }
                inspection.gaps.insert(Gap::TooLarge);
            } else {
                let (media, took) = inspect_response_body(
                    &answer.header.headers,
                    &answer.body,
                    head_request,
                    limit,
                    &mut inspection,
                );
                if let Some(took) = took {
                    m.extraction_seconds.observe(took.as_secs_f64());
                }
                ctx.content_type = media;
            }
        }
        if let Some(event) = ctx.event.as_mut() {
            let (patients, attribution, gaps) = settle(&c, &inspection, Some(status));
            for gap in &gaps {
                m.attribution_gaps.with_label_values(&[gap.as_str()]).inc();
            }
            event.patients = patients;
            event.attribution = attribution;
            event.attribution_gaps = gaps;
        }

        // 5. The outcome record, durable before any byte of the response is released.
        let bytes_out = if answer.complete {
            Some(answer.body.len() as u64)
        } else {
            answer
                .header
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        };
        if let Err(e) = self.journal_outcome(ctx, status, None, bytes_out).await {
            tracing::error!(
                reason = e.category(),
                "journal refused an outcome record: withholding the response"
            );
            ctx.refusal = Some(e.category());
            if let Some(mut rest) = answer.rest {
                rest.shutdown().await;
            }
            // `answer` (the EHR's bytes) is dropped here, unsent.
            self.unavailable(session, &snap.net, true, &e, &request_id)
                .await?;
            return Ok(true);
        }

        // 6. Release: the EHR's head and body, unchanged but for hop-by-hop headers.
        let client_is_h1 = session.req_header().version != http::Version::HTTP_2;
        let mut resp = downstream_response(&answer, head_request, client_is_h1)?;
        resp.insert_header(snap.net.request_id_header().clone(), request_id.as_str())?;
        let Answer {
            body: buffered,
            complete,
            rest,
            ..
        } = answer;
        let nothing_more = head_request || (complete && buffered.is_empty());
        // Errors writing to the client are the client's side (a timeout, a closed socket).
        session
            .write_response_header(Box::new(resp), nothing_more)
            .await
            .map_err(|e| e.into_down())?;
        if nothing_more {
            if let Some(mut rest) = rest {
                rest.shutdown().await;
            }
            return Ok(true);
        }
        if !buffered.is_empty() {
            session
                .write_response_body(Some(Bytes::from(buffered)), complete)
                .await
                .map_err(|e| e.into_down())?;
        }
        if let Some(mut rest) = rest {
            // Over the limit and forwarded: the record (partial, too_large) is durable; the
            // rest streams.
            loop {
                match rest.read_response_body().await {
                    Ok(Some(chunk)) => session
                        .write_response_body(Some(chunk), false)
                        .await
                        .map_err(|e| e.into_down())?,
                    Ok(None) => break,
                    Err(e) => {
                        rest.shutdown().await;
                        return Err(e);
                    }
                }
                if rest.response_done() {
                    break;
                }
            }
            rest.shutdown().await;
            session
                .write_response_body(None, true)
                .await
                .map_err(|e| e.into_down())?;
        }
        Ok(true)
    }

    fn listener_name(&self, session: &Session) -> String {
        if let Some(PingoraAddr::Inet(local)) = session.server_addr() {
            for (addr, name) in &self.listeners {
                if addr.port() == local.port()
                    && (addr.ip().is_unspecified() || addr.ip() == local.ip())
                {
                    return name.clone();
                }
            }
        }
        "unknown".into()
    }

    /// Append an outcome record for `event` with `status`; marks the ctx.
    async fn journal_outcome(
        &self,
        ctx: &mut RequestCtx,
        status: u16,
        error: Option<&str>,
        bytes_out: Option<u64>,
    ) -> std::result::Result<(), JournalError> {
        // The request's event becomes its outcome in place (every field an outcome sets is
        // set here, so a retry from `logging` overwrites them all).
        let upstream_ms = ctx.upstream_started.map(|t| t.elapsed().as_millis() as u64);
        let Some(event) = ctx.event.as_mut() else {
            return Ok(());
        };
        event.phase = Phase::Outcome;
        event.intent_seq = ctx.intent_seq;
        event.clock = clock::current();
        event.outcome = Some(Outcome {
            status,
            code: Outcome::code_for_status(status),
            error: error.map(str::to_string),
            bytes_out,
            upstream_ms,
            content_type: ctx.content_type.clone(),
        });
        self.journal.append(event).await?;
        ctx.outcome_written = true;
        Ok(())
    }

    /// Journal and send an answer the gateway makes itself (401, 400, 403). If the journal
    /// cannot take the record, the answer becomes a 503.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        status: u16,
        error: &'static str,
        detail: &str,
        extra: &[(&'static str, String)],
    ) -> Result<bool> {
        let request_id = ctx.request_id();
        let net = ctx.snap.net.clone();
        match self.journal_outcome(ctx, status, Some(error), None).await {
            Ok(()) => {
                write_answer(
                    session,
                    false,
                    status,
                    net.request_id_header(),
                    &request_id,
                    extra,
                    error_body(status, error, detail, &request_id),
                )
                .await?
            }
            Err(e) => {
                self.unavailable(session, &net, false, &e, &request_id)
                    .await?
            }
        }
        Ok(true)
    }

    /// The fail-closed answer (counted in `auditgate_fail_closed_refusals_total`).
    async fn unavailable(
        &self,
        session: &mut Session,
        net: &NetPolicy,
        close: bool,
        e: &JournalError,
        request_id: &str,
    ) -> Result<()> {
        metrics::global()
            .fail_closed_refusals
            .with_label_values(&[e.category()])
            .inc();
        tracing::error!(
            reason = e.category(),
            request_id,
            "journal refused a record: answering 503"
        );
        write_answer(
            session,
            close,
            503,
            net.request_id_header(),
            request_id,
            &[("retry-after", "5".into())],
            error_body(
                503,
                "audit_journal_unavailable",
                "the audit journal cannot record this request, so it was not processed",
                request_id,
            ),
        )
        .await
    }
}

fn who_for_failure(f: &AuthFailure) -> Who {
    Who::Unauthenticated {
        reason: f.reason().to_string(),
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            _in_flight: InFlight::new(&self.in_flight),
            snap: self.live.current(),
            started: Instant::now(),
            received: std::time::SystemTime::now(),
            event: None,
            intent_seq: None,
            outcome_written: false,
            refusal: None,
            form_body: None,
            form_body_limit: 0,
            form_body_truncated: false,
            classification: None,
            upstream_started: None,
            content_type: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let snap = ctx.snap.clone();
        let peer = peer_ip(session);
        let req = session.req_header();
        let headers = &req.headers;
        let method = req.method.as_str().to_string();
        let target = req
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/")
            .to_string();
        let (raw_path, raw_query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (target.clone(), None),
        };
        // A token sent in the query string is refused, and must not reach the journal either.
        let recorded_query = raw_query.as_deref().map(redact_query_tokens);

        let request_id = snap.net.request_id(peer, headers);
        let intent_needed = needs_intent(&method, headers);
        let addr = snap.net.client_addr(peer, headers);
        let mut net = NetworkVector {
            client_ip: addr.client_ip.to_string(),
            peer_ip: peer.to_string(),
            forwarded_chain: addr.forwarded_chain,
            device_id: None,
            device_id_source: None,
            user_agent: headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(256).collect()),
            geo: None,
            geo_unavailable: None,
            client_cert: None,
            gateway: GatewayId {
                node: self.node.clone(),
                listener: self.listener_name(session),
            },
        };
        if let Some(geo) = &snap.geo {
            match geo.lookup(addr.client_ip) {
                GeoAnswer::Found(found) => net.geo = Some(Some(found)),
                GeoAnswer::Unavailable(why) => {
                    net.geo = Some(None);
                    net.geo_unavailable = Some(why.to_string());
                }
            }
        }
        // Device identity, most trustworthy first: a client certificate the TLS handshake
        // verified, then the configured header, then (below) a token claim.
        if let Some(tls) = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .filter(|t| !t.cert_digest.is_empty())
        {
            let sha256 = hex::encode(&tls.cert_digest);
            net.device_id = Some(format!("sha256:{sha256}"));
            net.device_id_source = Some("client_cert".into());
            net.client_cert = Some(ClientCert {
                sha256,
                subject: tls
                    .extension
                    .get::<crate::tls::PeerCertificate>()
                    .map(|p| p.subject.chars().take(512).collect()),
            });
        }
        if net.device_id.is_none() {
            if let Some(device) = snap.net.device_id(headers) {
                net.device_id = Some(device);
                net.device_id_source = Some("header".into());
            }
        }

        let auth = snap
            .identity
            .authenticate(headers, raw_query.as_deref())
            .await;
        let who = match &auth {
            Ok(a) => {
                if net.device_id.is_none() {
                    if let Some(device) = &a.device_id {
                        net.device_id = Some(device.clone());
                        net.device_id_source = Some("claim".into());
                    }
                }
                Who::Authenticated(a.actor.clone())
            }
            Err(f) => who_for_failure(f),
        };
        let classified = snap.rules.classify(&method, &target, headers);
        let mut event = Event {
            phase: if intent_needed {
                Phase::Intent
            } else {
                Phase::Outcome
            },
            request_id: request_id.clone(),
            intent_seq: None,
            who,
            action: Action::E,
            interaction: InteractionKind::Unclassified,
            rule: "rejected".into(),
            resource_type: None,
            resource_id: None,
            method: method.clone(),
            path: raw_path,
            query: recorded_query,
            patients: Vec::new(),
            attribution: Attribution::Partial,
            attribution_gaps: Vec::new(),
            net,
            outcome: None,
            clock: clock::current(),
            received: crate::journal::format_ts(ctx.received),
        };
        if let Ok(c) = &classified {
            apply_classification(&mut event, c);
        }
        ctx.event = Some(event);

        // A journal that failed takes nothing: answer 503 before anything is forwarded.
        if self.journal.has_failed() {
            ctx.refusal = Some("failed");
            let reason = self.journal.failure().unwrap_or_default();
            let e = JournalError::Failed { reason };
            self.unavailable(session, &snap.net, false, &e, &request_id)
                .await?;
            return Ok(true);
        }
        // Trusted time, when the site requires it: a request that cannot be time-stamped
        // reliably is refused (with a record that says so).
        let clock_state = ctx.event.as_ref().expect("event set above").clock;
        if let Some(reason) = snap.clock.refuses(&clock_state) {
            metrics::global()
                .fail_closed_refusals
                .with_label_values(&[reason])
                .inc();
            return self
                .refuse(
                    session,
                    ctx,
                    503,
                    reason,
                    "the gateway's clock is not synchronised, so this access cannot be time-stamped reliably",
                    &[("retry-after", "30".into())],
                )
                .await;
        }
        // Refusals, each journaled before it is answered.
        if let Err(f) = &auth {
            metrics::global()
                .identity_failures
                .with_label_values(&[f.reason()])
                .inc();
            let challenge = f.www_authenticate();
            let status = f.status().as_u16();
            return self
                .refuse(
                    session,
                    ctx,
                    status,
                    f.reason(),
                    "a valid bearer token is required",
                    &[("www-authenticate", challenge)],
                )
                .await;
        }
        let classification = match classified {
            Ok(c) => c,
            Err(rejection) => {
                metrics::global()
                    .rejected_requests
                    .with_label_values(&[rejection.reason()])
                    .inc();
                return self
                    .refuse(
                        session,
                        ctx,
                        400,
                        rejection.reason(),
                        "the request path is not acceptable",
                        &[],
                    )
                    .await;
            }
        };
        if session.is_upgrade_req() {
            // A protocol upgrade (WebSocket) would turn the exchange into a tunnel whose bytes
            // no record covers.
            metrics::global()
                .rejected_requests
                .with_label_values(&["upgrade_not_supported"])
                .inc();
            return self
                .refuse(
                    session,
                    ctx,
                    501,
                    "upgrade_not_supported",
                    "protocol upgrades are not audited, so they are not forwarded",
                    &[],
                )
                .await;
        }
        if classification.rule == crate::rules::UNMATCHED_RULE {
            metrics::global().unmatched_routes.inc();
        }
        let has_device = ctx
            .event
            .as_ref()
            .is_some_and(|e| e.net.device_id.is_some());
        if !has_device && snap.net.requires_device_id(&classification.rule) {
            metrics::global()
                .rejected_requests
                .with_label_values(&["device_id_required"])
                .inc();
            return self
                .refuse(
                    session,
                    ctx,
                    403,
                    "device_id_required",
                    "this request must come from an identified device",
                    &[],
                )
                .await;
        }
        if snap.rules.denies(&classification) {
            return self
                .refuse(
                    session,
                    ctx,
                    403,
                    "unmatched_route",
                    "no audit rule covers this request",
                    &[],
                )
                .await;
        }
        if classification.buffered() {
            return self
                .buffered(session, ctx, classification, intent_needed)
                .await;
        }
        let is_form = session
            .req_header()
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/x-www-form-urlencoded")
            });
        if classification.needs_form_body && is_form {
            ctx.form_body = Some(Vec::new());
            ctx.form_body_limit =
                usize::try_from(snap.rules.max_form_body_bytes()).unwrap_or(usize::MAX);
            ctx.classification = Some(classification);
        }

        // Informational responses (100 Continue, 103 Early Hints) are not relayed: only the
        // final response is released, after its record.
        session.set_ignore_info_resp(true);
        if intent_needed && self.write_intent(session, ctx).await? {
            return Ok(true);
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.classification.is_none() {
            return Ok(());
        }
        if let (Some(chunk), Some(copy)) = (body.as_ref(), ctx.form_body.as_mut()) {
            if copy.len() + chunk.len() <= ctx.form_body_limit {
                copy.extend_from_slice(chunk);
            } else {
                ctx.form_body_truncated = true;
            }
        }
        if end_of_stream {
            let copy = ctx.form_body.take().unwrap_or_default();
            if let (Some(event), Some(mut c)) = (ctx.event.as_mut(), ctx.classification.take()) {
                if ctx.form_body_truncated {
                    event.attribution = Attribution::Partial;
                } else {
                    ctx.snap.rules.attribute_form_body(&mut c, &copy);
                    apply_classification(event, &c);
                }
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.make_peer()))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.add_forwarding_headers(session, upstream_request, ctx)?;
        ctx.upstream_started = Some(Instant::now());
        Ok(())
    }
    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if upstream_response.status.as_u16() == 101 {
            // Upgrades are refused in request_filter; an upstream that switches protocols
            // anyway gets no tunnel.
            ctx.refusal = Some("upgrade");
            return Err(Error::explain(
                HTTPStatus(502),
                "upstream switched protocols",
            ));
        }
        if upstream_response.status.is_informational() {
            return Ok(());
        }
        let bytes_out = upstream_response
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        // The outcome record must be durable before this function returns: pingora writes the
        // head (and then the body) only afterwards.
        if let Err(e) = self.journal_outcome(ctx, status, None, bytes_out).await {
            tracing::error!(
                reason = e.category(),
                "journal refused an outcome record: withholding the response"
            );
            ctx.refusal = Some(e.category());
            return Err(Error::explain(HTTPStatus(503), "audit journal unavailable"));
        }
        if let Some(event) = &ctx.event {
            upstream_response.insert_header(
                ctx.snap.net.request_id_header().clone(),
                event.request_id.as_str(),
            )?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let request_id = ctx.request_id();
        let already_sent = session
            .response_written()
            .is_some_and(|r| !r.status.is_informational());
        let code = if ctx.refusal.is_some() {
            503
        } else {
            upstream_error_status(e)
        };
        if already_sent || code == 0 {
            // The client already has the head (its record is durable) or is gone.
            return FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            };
        }
        let net = ctx.snap.net.clone();
        let result = if ctx.refusal.is_some() {
            let journal_error = JournalError::Failed {
                reason: ctx.refusal.unwrap_or("failed").into(),
            };
            self.unavailable(session, &net, true, &journal_error, &request_id)
                .await
        } else {
            self.upstream_failed(session, ctx, e, code).await
        };
        if let Err(write_error) = result {
            tracing::debug!(error = ?write_error.etype(), "could not send the error answer");
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        // Every request is counted once, here, when it ends.
        let sent = session
            .response_written()
            .map(|r| r.status.as_u16())
            .filter(|s| *s >= 200);
        let action = ctx.event.as_ref().map_or("E", |e| e.action.as_str());
        let outcome = if e.is_some() && ctx.refusal.is_none() && sent.is_none() {
            "aborted"
        } else {
            metrics::outcome_class(sent)
        };
        metrics::global().observe_request(action, outcome, ctx.started.elapsed());
        if ctx.outcome_written || ctx.event.is_none() {
            return;
        }
        // The request ended without an outcome record (the client went away before the
        // upstream answered, or an error path did not write one). Record what is known.
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(499);
        let error = match (ctx.refusal, e) {
            // Refused because the journal could not take a record at the time.
            (Some(reason), _) => reason,
            // The client stalled longer than attribution.client_timeout_secs (buffered path).
            (None, Some(e))
                if *e.esource() == ErrorSource::Downstream
                    && matches!(e.etype(), ReadTimedout | WriteTimedout) =>
            {
                "client_timeout"
            }
            (None, Some(_)) => "aborted",
            (None, None) => "client_closed",
        };
        if let Err(je) = self.journal_outcome(ctx, status, Some(error), None).await {
            tracing::error!(
                reason = je.category(),
                "could not journal the outcome of an aborted request"
            );
        }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, error: &Error) -> bool {
        // Pingora's own error line carries the error's context, which can hold raw upstream
        // bytes (an unparseable response head with the start of its body): possible PHI. Log
        // only the error's type and source, with the request ID. A client that goes away
        // mid-request is routine (its record says `aborted`): debug level.
        let request_id = ctx
            .event
            .as_ref()
            .map(|e| e.request_id.as_str())
            .unwrap_or("-");
        if *error.esource() == ErrorSource::Downstream {
            tracing::debug!(request_id, error = ?error.etype(), "client closed the connection");
        } else {
            tracing::warn!(request_id, error = ?error.etype(), source = ?error.esource(), "request failed");
        }
        true
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        _error: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        // Same reason as `suppress_error_log`: pingora's line would carry the error context.
        true
    }

    fn request_summary(&self, _session: &Session, ctx: &RequestCtx) -> String {
        // Pingora logs this on errors; it must not carry the path, query or any identity.
        match &ctx.event {
            Some(e) => format!("request_id={}", e.request_id),
            None => "request_id=-".into(),
        }
    }
}

/// The query string with the value of every `access_token` parameter (however encoded)
/// replaced, so a token sent where it must not be is never written to the journal.
fn redact_query_tokens(query: &str) -> String {
    if !query.to_ascii_lowercase().contains("token") && !query.contains('%') {
        return query.to_string();
    }
    query
        .split('&')
        .map(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            let decoded: String = form_urlencoded::parse(key.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            if decoded.eq_ignore_ascii_case("access_token") {
                format!("{key}=[redacted]")
            } else {
                pair.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The status a failed exchange with the upstream is answered with; 0 when the client went
/// away (nothing to answer).
fn upstream_error_status(e: &Error) -> u16 {
    if *e.esource() == ErrorSource::Downstream {
        // The client timed out or went away: there is no one to answer (the record says
        // `client_timeout` or `aborted`).
        return 0;
    }
    match e.etype() {
        HTTPStatus(code) => *code,
        ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError => 502,
        TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert | HandshakeError => 502,
        ReadTimedout | WriteTimedout => 504,
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => 0,
            _ => 500,
        },
    }
}

/// Copy the rules' answer into the event.
fn apply_classification(event: &mut Event, c: &Classification) {
    event.action = c.action;
    event.interaction = c.interaction;
    event.rule = c.rule.clone();
    event.resource_type = c.resource_type.clone();
    event.resource_id = c.resource_id.clone();
    event.patients = c.patients.clone();
    event.attribution = c.attribution;
}

#[cfg(test)]
mod tests {
    use super::redact_query_tokens;

    #[test]
    fn tokens_in_the_query_never_reach_the_record() {
        assert_eq!(
            redact_query_tokens("patient=1&_count=5"),
            "patient=1&_count=5"
        );
        assert_eq!(
            redact_query_tokens("patient=1&access_token=eyJ.secret.sig"),
            "patient=1&access_token=[redacted]"
        );
        assert_eq!(
            redact_query_tokens("ACCESS_TOKEN=x&access%5Ftoken=y&access_token"),
            "ACCESS_TOKEN=[redacted]&access%5Ftoken=[redacted]&access_token=[redacted]"
        );
    }
}
