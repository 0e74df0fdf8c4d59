//! The buffered path: requests whose rule reads the request body or the response for patients
//! (`inspect_body`, `inspect_response`), bounded by `[attribution]`.
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
//! 0. take a slot (`attribution.max_buffered_requests`), or refuse with 503 `gateway_busy`
//!    after `attribution.buffered_wait_secs`, journaled, nothing read or sent;
//! 1. read the request body from the client (bounded by `attribution.max_body_bytes`) and find
//!    its patients ([`crate::attribution::body::inspect_request_body`]; transaction and batch
//!    entries are classified by the route rules);
//! 2. a change gets its **intent** record, fsync'd, with those patients;
//! 3. send the request to the EHR over pingora's own connector (the same pool, TLS settings and
//!    timeouts as the proxy path: [`super::exchange`]);
//! 4. read the whole response (bounded; gzip, deflate, br and zstd are decoded for reading,
//!    never for the client), find its patients, [`settle`] the record's patient list and
//!    attribution;
//! 5. append the **outcome** record and await its fsync;
//! 6. only then write the response head and body to the client, the EHR's bytes unchanged.
//!
//! If step 5 fails the client gets the gateway's 503 and none of the EHR's bytes: the response
//! is dropped with the buffer. Requests whose rules need no body or response keep pingora's
//! streaming path ([`super`]).
//!
//! # Bodies larger than the limit
//!
//! `attribution.oversize = "forward"` (the default) forwards them anyway, never silently: the
//! record says `partial` with the gap `too_large` and is durable before the first byte is
//! released; the rest then streams. `"refuse"` answers 413 (request) or 502 (response), journaled.
//! Answers to searches, history, operations and unmatched requests are refused by default (the
//! rule's `oversize`). Newline-delimited JSON (a Bulk Data file) is instead released window by
//! window, each after a record naming its lines' patients ([`super::progressive`]).
//!
//! # What is not inspected
//!
//! FHIR JSON and FHIR XML are read (the current and the legacy media types). A body that is
//! neither (a PDF, an image ...) is passed through with the gap `not_json` and its media type
//! in the record. The EHR is only offered the codings the gateway decodes (gzip, deflate, br,
//! zstd: [`super::gateway::decodable_codings`]); a body in another one anyway is the gap
//! `content_encoding`. Empty bodies (204, 304, HEAD) have nothing to read.

use std::time::Instant;

use bytes::Bytes;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::admission::apply_classification;
use super::answer::upstream_error_status;
use super::budget::{Held, Pace, BUDGET_SPENT};
use super::exchange::{
    downstream_response, exchange, read_request_body, upstream_request, Answer, RequestBody,
};
use super::gateway::{Gateway, RequestCtx};
use super::refusal::Refusal;
use crate::attribution::body::{inspect_request_body, inspect_response_body};
use crate::attribution::config::OversizePolicy;
use crate::attribution::extract::Gap;
use crate::attribution::settle::{external_refs, settle, Inspection};
use crate::metrics;
use crate::rules::classify::Subset;
use crate::rules::{Classification, RuleOversize};

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

impl Gateway {
    /// The buffered path: read the body, journal the intent, fetch the whole response,
    /// journal the outcome with its patients, and only then release it. Always answers the
    /// client itself (`Ok(true)`).
    pub(super) async fn buffered(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        mut c: Classification,
        intent_needed: bool,
    ) -> Result<bool> {
        // 0. A slot, so that at most `max_buffered_requests` bodies are held at once.
        let Some(_slot) = self.buffer_slot().await else {
            return self.refuse(session, ctx, Refusal::GatewayBusy).await;
        };
        // A client that stops reading or sending must not hold a slot for long: each read of
        // its body and each write of the answer has to progress within this time.
        let client_timeout = Some(ctx.snap.attribution.client_timeout());
        session.set_read_timeout(client_timeout);
        session.set_write_timeout(client_timeout);
        // The whole exchange has a deadline, and after the client timeout its client must keep
        // up a minimum rate; what it buffers counts against the byte budget.
        let bounds = &ctx.snap.attribution;
        let pace = Pace::new(
            std::time::Duration::from_secs(bounds.exchange_timeout_secs),
            bounds.client_timeout(),
            bounds.min_transfer_bytes_per_sec,
        );
        let mut held = self.buffer_bytes.hold();
        metrics::global().buffered_requests.inc();
        let mut inspection = Inspection::default();

        // 1. The request body, read whole (bounded) and inspected.
        let body = match self
            .read_request(session, ctx, &mut c, &mut inspection, &pace, &mut held)
            .await?
        {
            Ok(body) => body,
            Err(refusal) => return self.refuse(session, ctx, refusal).await,
        };
        // 1b. A change whose patient only the EHR knows: read the resource's current version.
        self.read_pre_image(session, ctx, &c, &pace, &mut held, &mut inspection)
            .await?;
        // 2. A change: its intent, durable before the EHR sees it.
        if intent_needed && self.write_intent(session, ctx).await? {
            return Ok(true);
        }
        // 3. The exchange with the EHR.
        let Some(answer) = self.fetch(session, ctx, &body, &pace, &mut held).await? else {
            return Ok(true);
        };
        // 4. The response's patients.
        let head_request = session.req_header().method == http::Method::HEAD;
        let progressive = progressive_ndjson(&answer, head_request);
        if progressive {
            // Too large to read whole, but line by line: the outcome record names the
            // patients of the first window's whole lines; each further window gets its own.
            let first =
                super::progressive::window_end(&answer.body, ctx.snap.attribution.limit(), false);
            let lines = &answer.body[..first];
            inspection.response = Some(crate::attribution::extract::ndjson_patients(
                lines,
                ctx.snap.rules.local_bases(),
            ));
            ctx.content_type = crate::attribution::body::media_type(
                answer.header.headers.get(http::header::CONTENT_TYPE),
            );
            if let Some(event) = ctx.event.as_mut() {
                event.part = Some(0);
            }
        } else if !self.read_response(ctx, &c, &answer, head_request, &mut inspection) {
            if let Some(mut rest) = answer.rest {
                rest.shutdown().await;
            }
            return self.refuse(session, ctx, Refusal::ResponseTooLarge).await;
        }
        let status = answer.header.status.as_u16();
        if let Some(event) = ctx.event.as_mut() {
            settle_into(event, &c, &inspection, Some(status));
            for gap in &event.attribution_gaps {
                metrics::global()
                    .attribution_gaps
                    .with_label_values(&[gap.as_str()])
                    .inc();
            }
            event.bulk_files = std::mem::take(&mut inspection.bulk_files);
        }
        // 5. The outcome record, durable before any byte of the response is released.
        let Some(answer) = self.journal_answer(session, ctx, answer).await? else {
            return Ok(true);
        };
        // 6. Release: the EHR's head and body, unchanged but for hop-by-hop headers.
        if progressive {
            self.release_progressively(session, ctx, answer, &pace, &mut held)
                .await?;
        } else {
            self.release(session, ctx, answer, head_request, &pace)
                .await?;
        }
        Ok(true)
    }

    /// A buffered slot, waiting at most `attribution.buffered_wait_secs`; `None`: none came
    /// free in time (the request is refused before anything is read or sent).
    async fn buffer_slot(&self) -> Option<BufferSlot> {
        if let Ok(slot) = self.buffer_slots.clone().try_acquire_owned() {
            return Some(BufferSlot::hold(slot));
        }
        let waiting = Waiting::start();
        let waited =
            tokio::time::timeout(self.buffer_wait, self.buffer_slots.clone().acquire_owned()).await;
        drop(waiting);
        match waited {
            Ok(Ok(slot)) => Some(BufferSlot::hold(slot)),
            _ => None,
        }
    }

    /// Read the client's body (bounded) and settle the intent's patients from it. `Err`: the
    /// request is refused (a body over the limit under `oversize = "refuse"`, a search form
    /// body whose `_elements` or `_summary` the policy refuses).
    async fn read_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        c: &mut Classification,
        inspection: &mut Inspection,
        pace: &Pace,
        held: &mut Held,
    ) -> Result<std::result::Result<RequestBody, Refusal>> {
        let snap = ctx.snap.clone();
        let limit = snap.attribution.limit();
        let mut body = if session.is_body_empty() {
            RequestBody {
                bytes: Vec::new(),
                complete: true,
            }
        } else {
            match read_request_body(session, limit, pace, held).await {
                Ok(body) => body,
                Err(e) if e.etype() == &BUDGET_SPENT => return Ok(Err(Refusal::GatewayBusy)),
                Err(e) => return Err(e),
            }
        };
        let m = metrics::global();
        m.inspected_request_bytes.inc_by(body.bytes.len() as u64);
        if !body.complete {
            if snap.attribution.oversize == OversizePolicy::Refuse {
                return Ok(Err(Refusal::BodyTooLarge));
            }
            inspection.gaps.insert(Gap::TooLarge);
        } else {
            let headers = &session.req_header().headers;
            if c.needs_form_body && is_form_body(headers) {
                // `_elements` and `_summary` in a search's form body: as in its query.
                let params = String::from_utf8_lossy(&body.bytes).into_owned();
                match snap.rules.subset(c.resource_type.as_deref(), &params) {
                    Err(rejection) => return Ok(Err(Refusal::Rejected(rejection))),
                    Ok(Subset::Augmented(forwarded)) => body.bytes = forwarded.into_bytes(),
                    Ok(Subset::Partial(gap)) => c.subset_gap = Some(gap),
                    Ok(Subset::Whole) => {}
                }
            }
            if let Some(took) =
                inspect_request_body(c, &snap.rules, headers, &body.bytes, limit, inspection)
            {
                m.extraction_seconds.observe(took.as_secs_f64());
            }
        }
        if let Some(event) = ctx.event.as_mut() {
            apply_classification(event, c);
            settle_into(event, c, inspection, None);
        }
        Ok(Ok(body))
    }

    /// The pre-image: before a delete or patch (or an update whose body named no patient) of a
    /// resource whose patient the request line does not name, read its current version from
    /// the EHR, a GET of the same target with the caller's own `Authorization`, and name its
    /// patients in the intent record. 404 or 410: nothing is there to change. Any other failure
    /// leaves the gap `no_pre_image`. Off under `attribution.pre_image_reads = false`.
    async fn read_pre_image(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        c: &Classification,
        pace: &Pace,
        held: &mut Held,
        inspection: &mut Inspection,
    ) -> Result<()> {
        if !ctx.snap.attribution.pre_image_reads || !needs_pre_image(c, inspection, &ctx.snap) {
            return Ok(());
        }
        let client = session.req_header();
        let target = ctx
            .upstream_target
            .clone()
            .unwrap_or_else(|| String::from_utf8_lossy(client.raw_path()).into_owned());
        let mut req = pingora::http::RequestHeader::build("GET", target.as_bytes(), None)?;
        for name in [http::header::AUTHORIZATION, http::header::HOST] {
            for value in client.headers.get_all(&name) {
                req.append_header(name.clone(), value.clone())?;
            }
        }
        req.insert_header(http::header::ACCEPT, "application/fhir+json")?;
        if !req.headers.contains_key(http::header::HOST) {
            // An HTTP/2 client names the host in :authority.
            if let Some(authority) = client.uri.authority().map(|a| a.as_str().to_string()) {
                req.insert_header(http::header::HOST, authority)?;
            }
        }
        self.prepare_upstream_request(session, &mut req, ctx)?;
        let limit = ctx.snap.attribution.limit();
        let peer = self.make_peer();
        let read = exchange(
            &self.connector,
            &peer,
            &req,
            &[],
            true,
            session,
            limit,
            pace,
            held,
        )
        .await;
        let m = metrics::global();
        let result = match read {
            Ok(answer) if answer.complete && answer.header.status.is_success() => {
                let mut pre = Inspection::default();
                let local = ctx.snap.rules.local_bases();
                inspect_response_body(
                    &answer.header.headers,
                    &answer.body,
                    false,
                    limit,
                    local,
                    &mut pre,
                );
                match pre.response {
                    Some(findings) if pre.gaps.is_empty() => {
                        inspection.pre_image = Some(findings);
                        "ok"
                    }
                    _ => "failed",
                }
            }
            Ok(answer) if matches!(answer.header.status.as_u16(), 404 | 410) => {
                inspection.pre_image = Some(Default::default());
                "absent"
            }
            Ok(_) => "failed",
            Err(e) if *e.esource() == ErrorSource::Downstream => return Err(e),
            Err(_) => "failed",
        };
        m.pre_image_reads.with_label_values(&[result]).inc();
        if result == "failed" {
            inspection.gaps.insert(Gap::NoPreImage);
        }
        if let Some(event) = ctx.event.as_mut() {
            settle_into(event, c, inspection, None);
        }
        Ok(())
    }

    /// Send the request to the EHR and read its answer as far as the limit. `None`: the
    /// exchange failed and the client got its (journaled) 502 or 504.
    async fn fetch(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        body: &RequestBody,
        pace: &Pace,
        held: &mut Held,
    ) -> Result<Option<Answer>> {
        let mut req = upstream_request(session.req_header(), &body.bytes, body.complete)?;
        self.prepare_upstream_request(session, &mut req, ctx)?;
        ctx.upstream_started = Some(Instant::now());
        let peer = self.make_peer();
        let limit = ctx.snap.attribution.limit();
        let exchanged = exchange(
            &self.connector,
            &peer,
            &req,
            &body.bytes,
            body.complete,
            session,
            limit,
            pace,
            held,
        )
        .await;
        match exchanged {
            Err(e) if e.etype() == &BUDGET_SPENT => {
                self.refuse(session, ctx, Refusal::GatewayBusy).await?;
                Ok(None)
            }
            Ok(answer) => {
                metrics::global()
                    .inspected_response_bytes
                    .inc_by(answer.body.len() as u64);
                Ok(Some(answer))
            }
            Err(e) => match upstream_error_status(&e) {
                0 => Err(e), // the client went away
                code => {
                    self.upstream_failed(session, ctx, &e, code).await?;
                    Ok(None)
                }
            },
        }
    }

    /// Read the response for patients when the rule asks for it. `false`: it is over the limit
    /// and `oversize = "refuse"`.
    fn read_response(
        &self,
        ctx: &mut RequestCtx,
        c: &Classification,
        answer: &Answer,
        head_request: bool,
        inspection: &mut Inspection,
    ) -> bool {
        if !c.inspect_response {
            return true;
        }
        let limit = ctx.snap.attribution.limit();
        // Over the limit, whether or not the last chunk happened to end the body (the same
        // line `rules explain` and the request side draw).
        if !answer.complete || answer.body.len() > limit {
            let refuse = match c.oversize {
                Some(RuleOversize::Refuse) => true,
                Some(RuleOversize::Forward) => false,
                None => ctx.snap.attribution.oversize == OversizePolicy::Refuse,
            };
            if refuse {
                return false;
            }
            inspection.gaps.insert(Gap::TooLarge);
            return true;
        }
        let headers = &answer.header.headers;
        let local = ctx.snap.rules.local_bases();
        let (media, took) = inspect_response_body(
            headers,
            &answer.body,
            head_request,
            limit,
            local,
            inspection,
        );
        if let Some(took) = took {
            metrics::global()
                .extraction_seconds
                .observe(took.as_secs_f64());
        }
        ctx.content_type = media;
        true
    }

    /// Append the outcome record and await its fsync. `None`: the journal refused it; the
    /// EHR's answer is dropped unsent and the client got the fail-closed 503.
    async fn journal_answer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        answer: Answer,
    ) -> Result<Option<Answer>> {
        let status = answer.header.status.as_u16();
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
        let Err(e) = self.journal_outcome(ctx, status, None, bytes_out).await else {
            return Ok(Some(answer));
        };
        tracing::error!(
            reason = e.category(),
            "journal refused an outcome record: withholding the response"
        );
        ctx.refusal = Some(e.category());
        if let Some(mut rest) = answer.rest {
            rest.shutdown().await;
        }
        // `answer.body` (the EHR's bytes) is dropped here, unsent.
        let (net, request_id) = (ctx.snap.net.clone(), ctx.request_id());
        self.unavailable(session, &net, true, &e, &request_id)
            .await?;
        Ok(None)
    }

    /// Write the EHR's head and body to the client (its record is durable), then stream what
    /// was over the limit, if anything.
    async fn release(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        answer: Answer,
        head_request: bool,
        pace: &Pace,
    ) -> Result<()> {
        let client_is_h1 = session.req_header().version != http::Version::HTTP_2;
        let mut resp = downstream_response(&answer, head_request, client_is_h1)?;
        resp.insert_header(ctx.snap.net.request_id_header().clone(), ctx.request_id())?;
        let Answer {
            body: buffered,
            complete,
            rest,
            ..
        } = answer;
        let nothing_more = head_request || (complete && buffered.is_empty());
        // Errors writing to the client are the client's side (a timeout, a closed socket).
        pace.client(
            0,
            true,
            session.write_response_header(Box::new(resp), nothing_more),
        )
        .await
        .map_err(|e| e.into_down())?;
        if nothing_more {
            if let Some(mut rest) = rest {
                rest.shutdown().await;
            }
            return Ok(());
        }
        let mut written = 0;
        if !buffered.is_empty() {
            written = buffered.len();
            pace.client(
                0,
                true,
                session.write_response_body(Some(Bytes::from(buffered)), complete),
            )
            .await
            .map_err(|e| e.into_down())?;
        }
        let Some(mut rest) = rest else {
            return Ok(());
        };
        // Over the limit and forwarded: the record (partial, too_large) is durable; the rest
        // streams.
        loop {
            match rest.read_response_body().await {
                Ok(Some(chunk)) => {
                    let n = chunk.len();
                    pace.client(
                        written,
                        true,
                        session.write_response_body(Some(chunk), false),
                    )
                    .await
                    .map_err(|e| e.into_down())?;
                    written += n;
                }
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
            .map_err(|e| e.into_down())
    }
}

/// Whether a request body is `application/x-www-form-urlencoded` (a search's parameters).
fn is_form_body(headers: &http::HeaderMap) -> bool {
    crate::attribution::body::media_type(headers.get(http::header::CONTENT_TYPE)).as_deref()
        == Some("application/x-www-form-urlencoded")
}

/// Whether a change needs its pre-image: a delete or patch, or an update whose body named no
/// patient, whose request line does not name every patient, of a resource type in the Patient
/// compartment (or of no known type).
fn needs_pre_image(
    c: &Classification,
    inspection: &Inspection,
    snap: &super::live::Snapshot,
) -> bool {
    let changes = match c.method.as_str() {
        "DELETE" | "PATCH" => true,
        "PUT" => inspection
            .body
            .as_ref()
            .is_none_or(|b| b.patients.is_empty()),
        _ => false,
    };
    let in_compartment = c
        .resource_type
        .as_deref()
        .is_none_or(|t| snap.rules.compartment_params(t).is_some());
    changes && c.attribution != crate::record::Attribution::Complete && in_compartment
}

/// Whether an answer is released window by window ([`super::progressive`]): newline-delimited
/// JSON (a Bulk Data file), uncompressed, too large to read whole.
fn progressive_ndjson(answer: &Answer, head_request: bool) -> bool {
    let headers = &answer.header.headers;
    let ndjson = crate::attribution::body::media_type(headers.get(http::header::CONTENT_TYPE))
        .is_some_and(|m| crate::attribution::body::is_ndjson(&m));
    let identity = headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim().is_empty() || v.trim().eq_ignore_ascii_case("identity"));
    !head_request && !answer.complete && answer.rest.is_some() && ndjson && identity
}

/// The record's patients, attribution, gaps and external references from the rules' answer
/// and what was read ([`settle`]), for an intent (`status` `None`) or an outcome.
fn settle_into(
    event: &mut crate::record::Event,
    c: &Classification,
    inspection: &Inspection,
    status: Option<u16>,
) {
    let (patients, attribution, gaps) = settle(c, inspection, status);
    event.patients = patients;
    event.attribution = attribution;
    event.attribution_gaps = gaps;
    (event.external_refs, event.external_refs_omitted) = external_refs(inspection);
}
