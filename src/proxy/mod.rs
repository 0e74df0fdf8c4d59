//! The pingora phase map: where each audit step happens in a request's life.
//!
//! This module is deliberately thin: the phases below, each a few lines that call into the
//! rooms beside it (`admission`: the record under construction and the refusal ladder;
//! `refusal` and `answer`: the answers the gateway makes itself, journaled first;
//! `buffered` and `exchange`: the buffered path; [`live`]: the configuration a request
//! reads) and below it ([`crate::identity`], [`crate::rules`], [`crate::network`],
//! [`crate::attribution`], [`crate::journal`]). What it owns is the *order*, because the order
//! is the guarantee:
//!
//! | phase | what happens | if the journal fails |
//! | --- | --- | --- |
//! | `request_filter` | request ID, network vector, JWT, rules. A refused request (401, 400, 403) gets its outcome record, then its answer. A change (POST, PUT, PATCH, DELETE) gets an **intent** record, fsync'd, before anything is forwarded. A rule that reads bodies takes the `buffered` path here and answers the request itself. | 503, nothing forwarded |
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

mod admission;
mod answer;
pub mod bounds;
pub mod budget;
mod buffered;
mod exchange;
mod gateway;
pub mod live;
pub mod origin;
mod progressive;
mod refusal;

pub use gateway::Gateway;

use gateway::RequestCtx;

use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use admission::apply_classification;
use answer::upstream_error_status;

use crate::journal::JournalError;
use crate::metrics;
use crate::record::Attribution;

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(&self.in_flight, self.live.current())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let Some(admitted) = self.admit(session, ctx).await? else {
            return Ok(true); // refused, its record journaled first
        };
        let classification = admitted.classification;
        if classification.buffered() {
            return self
                .buffered(session, ctx, classification, admitted.intent_needed)
                .await;
        }
        if classification.needs_form_body && is_form(session.req_header()) {
            ctx.form_body = Some(Vec::new());
            ctx.form_body_limit =
                usize::try_from(ctx.snap.rules.max_form_body_bytes()).unwrap_or(usize::MAX);
            ctx.classification = Some(classification);
        }
        // Informational responses (100 Continue, 103 Early Hints) are not relayed: only the
        // final response is released, after its record.
        session.set_ignore_info_resp(true);
        if admitted.intent_needed && self.write_intent(session, ctx).await? {
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
        self.prepare_upstream_request(session, upstream_request, ctx)?;
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

/// Whether a request body is a form (`application/x-www-form-urlencoded`): a POST `_search`
/// whose parameters attribute the search.
fn is_form(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
}
