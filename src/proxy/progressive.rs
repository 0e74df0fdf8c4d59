//! Answers too large to read whole, released window by window: newline-delimited FHIR JSON (a
//! Bulk Data file) over `attribution.max_body_bytes`.
//!
//! The guarantee is the buffered path's, per window: **no byte of a window leaves the gateway
//! before a record naming the patients of its lines is durable.** The outcome record covers the
//! head and the first window (`part` 0); each further window of at most `max_body_bytes` gets a
//! continuation record (`phase: continuation`, `part` 1, 2 ...) with the patients of the whole
//! lines it holds, fsync'd, and only then is written to the client. A window ends at its last
//! newline; the partial line left over starts the next window. Memory stays within one window
//! (plus a chunk), counted in the byte budget.
//!
//! If the journal refuses a continuation record, or a single line is longer than a window (so
//! its patients cannot be read before it would have to be released), the EHR's connection is
//! closed and the client's answer ends there, truncated: what it received is all recorded.

use bytes::Bytes;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::budget::{Held, Pace};
use super::exchange::{downstream_response, Answer};
use super::gateway::{Gateway, RequestCtx};
use crate::attribution::extract::ndjson_patients;
use crate::record::{Attribution, PatientRef, PatientSource, Phase};

/// The length of `window` up to and including its last newline (0 when it has none).
fn whole_lines(window: &[u8]) -> usize {
    window
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1)
}

/// How much of `buf` the next window releases: its whole lines within `limit` bytes, or all
/// of it when the EHR's body has ended and it fits. 0: a line longer than `limit`.
pub(super) fn window_end(buf: &[u8], limit: usize, ended: bool) -> usize {
    if ended && buf.len() <= limit {
        return buf.len();
    }
    whole_lines(&buf[..buf.len().min(limit)])
}

impl Gateway {
    /// Release `answer` (its outcome record, covering the head and `answer.body`'s whole lines,
    /// is durable) and then the rest of the EHR's body window by window, each after its
    /// continuation record.
    pub(super) async fn release_progressively(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        answer: Answer,
        pace: &Pace,
        held: &mut Held,
    ) -> Result<()> {
        let client_is_h1 = session.req_header().version != http::Version::HTTP_2;
        let mut resp = downstream_response(&answer, false, client_is_h1)?;
        resp.insert_header(ctx.snap.net.request_id_header().clone(), ctx.request_id())?;
        let Answer { body, rest, .. } = answer;
        let Some(mut rest) = rest else {
            return Error::e_explain(InternalError, "a progressive answer without the rest");
        };
        let limit = ctx.snap.attribution.limit();
        let split = window_end(&body, limit, false);
        let mut carry = body[split..].to_vec();
        let mut written = split;
        pace.client(
            0,
            true,
            session.write_response_header(Box::new(resp), false),
        )
        .await
        .map_err(|e| e.into_down())?;
        if split > 0 {
            let first = Bytes::copy_from_slice(&body[..split]);
            pace.client(0, true, session.write_response_body(Some(first), false))
                .await
                .map_err(|e| e.into_down())?;
        }
        drop(body);
        let mut part = 0u32;
        let mut ended = false;
        loop {
            // A window: what was left over, then the EHR's bytes up to the limit.
            let mut window = std::mem::take(&mut carry);
            while !ended && window.len() < limit {
                let read = tokio::time::timeout_at(pace.deadline(), rest.read_response_body())
                    .await
                    .unwrap_or_else(|_| {
                        Error::e_explain(ReadTimedout, "the buffered exchange's deadline passed")
                    });
                match read {
                    Ok(Some(chunk)) => {
                        held.cover(window.len() + chunk.len()).await?;
                        window.extend_from_slice(&chunk);
                    }
                    Ok(None) => ended = true,
                    Err(e) => {
                        rest.shutdown().await;
                        return Err(e);
                    }
                }
                if rest.response_done() {
                    ended = true;
                }
            }
            if ended && window.is_empty() {
                break;
            }
            let split = window_end(&window, limit, ended);
            if split == 0 && !window.is_empty() {
                // One line longer than a window: its patients cannot be read before release.
                rest.shutdown().await;
                return Error::e_explain(
                    InvalidHTTPHeader,
                    "an NDJSON line longer than attribution.max_body_bytes",
                );
            }
            carry = window.split_off(split);
            part += 1;
            // The continuation record, durable before the window leaves.
            if let Err(e) = self.journal_continuation(ctx, &window, part).await {
                tracing::error!(
                    reason = e.category(),
                    "journal refused a continuation record: ending the answer here"
                );
                rest.shutdown().await;
                return Err(Error::explain(HTTPStatus(503), "audit journal unavailable"));
            }
            let n = window.len();
            pace.client(
                written,
                true,
                session.write_response_body(Some(Bytes::from(window)), false),
            )
            .await
            .map_err(|e| e.into_down())?;
            written += n;
            if ended && carry.is_empty() {
                break;
            }
        }
        rest.shutdown().await;
        session
            .write_response_body(None, true)
            .await
            .map_err(|e| e.into_down())
    }

    /// Append the continuation record of one window and await its fsync.
    async fn journal_continuation(
        &self,
        ctx: &RequestCtx,
        window: &[u8],
        part: u32,
    ) -> std::result::Result<(), crate::journal::JournalError> {
        let Some(outcome) = ctx.event.as_ref() else {
            return Ok(());
        };
        let findings = ndjson_patients(window, ctx.snap.rules.local_bases());
        let mut event = outcome.clone();
        event.phase = Phase::Continuation;
        event.part = Some(part);
        event.clock = crate::clock::current();
        event.patients = findings
            .patients
            .iter()
            .map(|id| PatientRef {
                id: id.clone(),
                source: PatientSource::Response,
            })
            .collect();
        event.attribution = if findings.gaps.is_empty() {
            Attribution::Complete
        } else {
            Attribution::Partial
        };
        event.attribution_gaps = findings.gaps.iter().map(|g| g.as_str().into()).collect();
        event.external_refs = findings.external_refs;
        event.external_refs_omitted =
            (findings.external_refs_omitted > 0).then_some(findings.external_refs_omitted);
        event.bulk_files = Vec::new();
        self.journal.append(&event).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::window_end;

    #[test]
    fn windows_end_at_the_last_whole_line_within_the_limit() {
        assert_eq!(window_end(b"a\nbb\nccc", 100, false), 5);
        assert_eq!(window_end(b"a\nbb\nccc", 100, true), 8);
        // Over the limit: only the lines within it, even at the end.
        assert_eq!(window_end(b"a\nbb\nccc\n", 4, true), 2);
        assert_eq!(window_end(b"a\nbb\nccc\n", 5, false), 5);
        // A line longer than the limit: nothing can be released.
        assert_eq!(window_end(b"abcdef\n", 4, false), 0);
        assert_eq!(window_end(b"", 4, true), 0);
    }
}
