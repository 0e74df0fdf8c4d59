//! Admission: what `request_filter` learns about a request before it may go on, and the
//! refusal ladder that decides whether it does.
//!
//! Builds the record under construction: the request line (a token in the query string is
//! redacted before it can reach the journal), the network vector (client IP through trusted
//! proxies, GeoIP, the device, most trustworthy source first), the verified identity, and the
//! rules' classification. Then every refusal in a fixed order, each journaled before it is
//! answered ([`Gateway::refuse`]): a failed journal (503, nothing recorded: it takes nothing),
//! an untrusted clock, a failed token, an unacceptable path, a protocol upgrade, a missing
//! device, an unmatched route under `deny`.

use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::bounds::bound_fields;
use super::gateway::{Gateway, RequestCtx};
use super::live::Snapshot;
use super::origin::{claim_device, listener_name, network_vector, peer_ip, redact_query_tokens};
use super::refusal::Refusal;
use crate::clock;
use crate::identity::{AuthFailure, Authenticated};
use crate::journal::JournalError;
use crate::metrics;
use crate::record::{Attribution, Event, GatewayId, NetworkVector, Phase, Who};
use crate::rules::{Classification, RequestRejection, METHOD_OVERRIDE_HEADERS};

/// Whether a request may change data, and so gets an intent record before it is forwarded:
/// every method but GET, HEAD and OPTIONS (POST, PUT, PATCH, DELETE and any extension method),
/// and any request that carries a method-override header ([`METHOD_OVERRIDE_HEADERS`]).
fn needs_intent(method: &str, headers: &http::HeaderMap) -> bool {
    !matches!(method, "GET" | "HEAD" | "OPTIONS")
        || METHOD_OVERRIDE_HEADERS
            .iter()
            .any(|h| headers.contains_key(*h))
}

/// The request line, as the rules read it and as the record keeps it.
struct RequestLine {
    method: String,
    /// Path and query in origin form: as sent, or the origin form of an absolute-form target.
    target: String,
    /// The target was absolute-form (`http://host/path`): the request goes upstream with
    /// `target` instead, so the EHR reads exactly what was classified and recorded.
    rewritten: bool,
    path: String,
    query: Option<String>,
}

impl RequestLine {
    fn of(req: &RequestHeader) -> RequestLine {
        // The target's bytes as received (HTTP/2: the :path), not `req.uri`: the URI parser
        // reads some targets a lenient EHR reads otherwise (`x:/fhir/Patient/1` has the path
        // `/` to it). Non-UTF-8 bytes become U+FFFD, which the path decoder refuses.
        let raw = String::from_utf8_lossy(req.raw_path());
        let (target, rewritten) = match origin_form_of_absolute(&raw) {
            Some(origin) => (origin.to_string(), true),
            None => (raw.into_owned(), false),
        };
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (target.clone(), None),
        };
        RequestLine {
            method: req.method.as_str().to_string(),
            target,
            rewritten,
            path,
            query,
        }
    }
}

/// The origin form (`/path?query`) of an absolute-form request target (`http://host/path?query`,
/// RFC 9112 section 3.2.2), which a server must accept and reads as that path. `None` for any
/// other target: an origin-form one is used as it is; the path decoder refuses the rest
/// (authority-form, asterisk-form, other schemes, `x:/path`).
fn origin_form_of_absolute(raw: &str) -> Option<&str> {
    let scheme_len = if raw.len() >= 8 && raw[..8].eq_ignore_ascii_case("https://") {
        8
    } else if raw.len() >= 7 && raw[..7].eq_ignore_ascii_case("http://") {
        7
    } else {
        return None;
    };
    let rest = &raw[scheme_len..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let authority_ok = !authority.is_empty()
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if !authority_ok {
        return None;
    }
    let origin = &rest[authority_end..];
    // `http://host` and `http://host?q` are `/` and `/?q`; the empty path has no slice of its
    // own, so such a target is refused instead of rebuilt.
    origin.starts_with('/').then_some(origin)
}

/// A request that passed admission: its classification, and whether it changes data.
pub(super) struct Admitted {
    pub classification: Classification,
    pub intent_needed: bool,
}

impl Gateway {
    /// Build the request's record (who, what, from where) into `ctx`, then run the refusal
    /// ladder. `None`: the request was refused and answered (its record journaled first).
    pub(super) async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Admitted>> {
        let snap = ctx.snap.clone();
        let peer = peer_ip(session);
        let line = RequestLine::of(session.req_header());
        let gateway = GatewayId {
            node: self.node.clone(),
            listener: listener_name(session, &self.listeners),
        };
        let mut net = network_vector(session, &snap, peer, gateway);
        let headers = &session.req_header().headers;
        if line.rewritten {
            ctx.upstream_target = Some(line.target.clone());
        }
        let request_id = snap.net.request_id(peer, headers);
        let auth = snap
            .identity
            .authenticate(headers, line.query.as_deref())
            .await;
        let who = match &auth {
            Ok(a) => {
                claim_device(&mut net, a.device_id.as_ref());
                Who::Authenticated(a.actor.clone())
            }
            Err(f) => Who::Unauthenticated {
                reason: f.reason().to_string(),
            },
        };
        let classified = snap.rules.classify(&line.method, &line.target, headers);
        // A change by its request line, or by the method a method-override asked for.
        let intent_needed = needs_intent(&line.method, headers)
            || classified
                .as_ref()
                .is_ok_and(|c| needs_intent(&c.method, headers));
        let received = crate::record::format_ts(ctx.received);
        let mut event = new_event(request_id.clone(), who, line, net, intent_needed, received);
        if let Ok(c) = &classified {
            apply_classification(&mut event, c);
            if let Some(q) = &c.forwarded_query {
                // The EHR gets the query that was classified and recorded.
                let path = event.path.clone();
                ctx.upstream_target = Some(format!("{path}?{q}"));
            }
        }
        bound_fields(&mut event, &self.record_bounds);
        // A journal that failed takes nothing: answer 503 before anything is forwarded.
        if self.journal.has_failed() {
            ctx.event = Some(event);
            ctx.refusal = Some("failed");
            let reason = self.journal.failure().unwrap_or_default();
            let e = JournalError::Failed { reason };
            self.unavailable(session, &snap.net, false, &e, &request_id)
                .await?;
            return Ok(None);
        }
        let refused = ladder(session, &snap, &event, &auth, classified);
        let unauthenticated = matches!(event.who, Who::Unauthenticated { .. });
        let client_ip = event.net.client_ip.parse().unwrap_or(peer);
        ctx.event = Some(event);
        match refused {
            Ok(classification) => Ok(Some(Admitted {
                classification,
                intent_needed,
            })),
            // Nobody authenticated it, and its client (or all such clients) is over the rate:
            // counted into the client's summary record instead of a record of its own.
            Err(refusal) if unauthenticated && !self.flood.admit(client_ip, refusal.error()) => {
                self.refuse_summarised(session, ctx, refusal).await?;
                Ok(None)
            }
            Err(refusal) => {
                self.refuse(session, ctx, refusal).await?;
                Ok(None)
            }
        }
    }
}

/// The record before the rules' answer is known: refused until proven otherwise.
fn new_event(
    request_id: String,
    who: Who,
    line: RequestLine,
    net: NetworkVector,
    intent_needed: bool,
    received: String,
) -> Event {
    let mut event = Event::bare(
        request_id,
        who,
        crate::rules::REJECTED_RULE,
        net,
        clock::current(),
        received,
    );
    if intent_needed {
        event.phase = Phase::Intent;
    }
    event.method = line.method;
    event.path = line.path;
    // A token sent in the query string is refused, and must not reach the journal either.
    event.query = line.query.as_deref().map(redact_query_tokens);
    event.attribution = Attribution::Partial;
    event
}

/// The refusal ladder, in order: an untrusted clock, a failed token, an unacceptable path, a
/// protocol upgrade, a missing device, an unmatched route under `deny`. `Ok`: admitted.
fn ladder(
    session: &Session,
    snap: &Snapshot,
    event: &Event,
    auth: &std::result::Result<Authenticated, AuthFailure>,
    classified: std::result::Result<Classification, RequestRejection>,
) -> std::result::Result<Classification, Refusal> {
    // Trusted time, when the site requires it: a request that cannot be time-stamped reliably
    // is refused (with a record that says so).
    if let Some(reason) = snap.clock.refuses(&event.clock) {
        return Err(Refusal::ClockUnsynced(reason));
    }
    if let Err(f) = auth {
        return Err(Refusal::unauthenticated(f));
    }
    let classification = classified.map_err(Refusal::Rejected)?;
    if session.is_upgrade_req() {
        // A protocol upgrade (WebSocket) would turn the exchange into a tunnel whose bytes no
        // record covers.
        return Err(Refusal::UpgradeNotSupported);
    }
    if classification.rule == crate::rules::UNMATCHED_RULE {
        metrics::global().unmatched_routes.inc();
    }
    if event.net.device_id.is_none() && snap.net.requires_device_id(&classification.rule) {
        return Err(Refusal::DeviceIdRequired);
    }
    if snap.rules.denies(&classification) {
        return Err(Refusal::UnmatchedRoute);
    }
    Ok(classification)
}

/// Copy the rules' answer into the event.
pub(super) fn apply_classification(event: &mut Event, c: &Classification) {
    event.action = c.action;
    event.interaction = c.interaction;
    event.rule = c.rule.clone();
    event.resource_type = c.resource_type.clone();
    event.resource_id = c.resource_id.clone();
    event.patients = c.patients.clone();
    event.attribution = c.attribution;
    if event.forwarded_query.is_none() {
        // Set once, at admission (where it is also bounded); later calls keep it.
        event.forwarded_query = c.forwarded_query.as_deref().map(redact_query_tokens);
    }
    if let Some(gap) = c.subset_gap {
        if !event.attribution_gaps.iter().any(|g| g == gap.as_str()) {
            event.attribution_gaps.push(gap.as_str().to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::origin::redact_query_tokens;

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
