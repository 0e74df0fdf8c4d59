//! The answers the gateway makes itself, each journaled before it is sent: refusals
//! ([`Refusal`]), failed exchanges with the EHR (502, 504), and the fail-closed 503 when the
//! journal cannot take a record. Also the intent and outcome records of every request.
//!
//! Every answer body is a short JSON object with fixed codes: never a path, query, user,
//! patient or token.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::gateway::{Gateway, RequestCtx};
use super::refusal::Refusal;
use crate::clock;
use crate::journal::JournalError;
use crate::metrics;
use crate::network::vector::NetPolicy;
use crate::record::{Outcome, Phase};

/// How long an answer the gateway makes itself waits for the rest of the request body.
const BODY_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The body of every answer the gateway itself writes: a short JSON object with fixed codes.
pub(super) fn error_body(status: u16, error: &str, detail: &str, request_id: &str) -> Bytes {
    let body = serde_json::json!({
        "status": status,
        "error": error,
        "detail": detail,
        "request_id": request_id,
    });
    Bytes::from(body.to_string())
}

pub(super) async fn write_answer(
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

/// The status a failed exchange with the upstream is answered with; 0 when the client went
/// away (nothing to answer).
pub(super) fn upstream_error_status(e: &Error) -> u16 {
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

impl Gateway {
    /// Journal and answer a failed exchange with the upstream (`code` from
    /// [`upstream_error_status`]): 502, 504 or 500 with a fixed error code.
    pub(super) async fn upstream_failed(
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
    pub(super) async fn write_intent(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
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

    /// Append an outcome record for `event` with `status`; marks the ctx.
    pub(super) async fn journal_outcome(
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

    /// Journal and send an answer the gateway makes itself (a [`Refusal`]). If the journal
    /// cannot take the record, the answer becomes the fail-closed 503. Always `Ok(true)`: the
    /// request is answered.
    pub(super) async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        refusal: Refusal,
    ) -> Result<bool> {
        refusal.count();
        let request_id = ctx.request_id();
        let net = ctx.snap.net.clone();
        let (status, error) = (refusal.status(), refusal.error());
        match self.journal_outcome(ctx, status, Some(error), None).await {
            Ok(()) => send_refusal(session, &net, &request_id, &refusal).await?,
            Err(e) => {
                self.unavailable(session, &net, false, &e, &request_id)
                    .await?
            }
        }
        Ok(true)
    }

    /// Send the answer of a refusal without a record of its own: an unauthenticated request
    /// beyond `[records]`'s rate, already counted into its client IP's summary record
    /// ([`super::bounds::FloodGuard`]). The client gets exactly what [`Gateway::refuse`] sends.
    pub(super) async fn refuse_summarised(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        refusal: Refusal,
    ) -> Result<bool> {
        refusal.count();
        // Its summary stands for its record: `logging` must not write one.
        ctx.outcome_written = true;
        send_refusal(session, &ctx.snap.net, &ctx.request_id(), &refusal).await?;
        Ok(true)
    }

    /// The fail-closed answer (counted in `auditgate_fail_closed_refusals_total`).
    pub(super) async fn unavailable(
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

/// The answer of a refusal: its status, error body and headers (its record is the caller's).
async fn send_refusal(
    session: &mut Session,
    net: &NetPolicy,
    request_id: &str,
    refusal: &Refusal,
) -> Result<()> {
    let (status, error) = (refusal.status(), refusal.error());
    write_answer(
        session,
        false,
        status,
        net.request_id_header(),
        request_id,
        &refusal.headers(),
        error_body(status, error, refusal.detail(), request_id),
    )
    .await
}
