//! Who may read the trail through the gateway's auditor listeners (the ITI-81 API and the
//! console), and the record that they did.
//!
//! Owns the one check (a token the proxy's issuers verify, with a role or scope of
//! `[auditors]`) and the one record shape of an auditor's request: an outcome record in the
//! same chain as the proxy's, with who asked, from where (the proxy's network-vector code),
//! what was asked (the query, or a console form's fields, with any token redacted), the status
//! and every patient the answer named (source `response`) or the request asked for (`query`).
//!
//! Guarantees: [`Guard::record`] returns only once the record is durable; when the journal
//! cannot take it, it returns an error and the caller answers 503 with nothing of the trail.
//! Unauthenticated requests beyond `[records]`' rate are counted into the flood summary
//! ([`Guard::flooded`]), as on the proxy.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use pingora::protocols::http::ServerSession;

use crate::config::records::RecordsConfig;
use crate::config::server::AuditorsConfig;
use crate::identity::{AuthFailure, Authenticated};
use crate::journal::{Journal, JournalError};
use crate::proxy::bounds::FloodGuard;
use crate::proxy::live::Live;
use crate::proxy::origin::{
    claim_device, listener_name, network_vector, peer_ip, redact_query_tokens,
};
use crate::record::{
    Action, Attribution, Event, GatewayId, InteractionKind, NetworkVector, Outcome, PatientRef, Who,
};

/// The shared state of an auditor listener.
pub struct Guard {
    /// The identity the proxy verifies tokens with (a reload is seen at once).
    pub live: Arc<Live>,
    /// The journal the records go to.
    pub journal: Journal,
    /// This gateway's node name.
    pub node: String,
    /// The listener's address and its name in records (`audit`, `console`).
    pub listeners: Vec<(SocketAddr, String)>,
    /// Who is an auditor.
    pub auditors: AuditorsConfig,
    /// The proxy's flood guard.
    pub flood: Arc<FloodGuard>,
    /// Bounds of recorded fields.
    pub record_bounds: RecordsConfig,
}

/// One request to an auditor listener, as it arrived.
pub struct Arrival {
    /// Its request ID (a trusted proxy's, else a new one).
    pub request_id: String,
    /// When its head was read.
    pub received: SystemTime,
    /// From where.
    pub net: NetworkVector,
    /// The TCP peer.
    pub peer: IpAddr,
    /// Method and path as sent.
    pub method: String,
    /// The path, as sent.
    pub path: String,
    /// What was asked: the query string (or a console form's fields), tokens redacted.
    pub asked: Option<String>,
}

/// What an auditor listener answered, for the record.
pub struct Served {
    /// The rule name the record carries (`audit-api.search`, `console.search`, ...).
    pub rule: &'static str,
    /// The interaction (a search, a read of a page).
    pub interaction: InteractionKind,
    /// The status sent.
    pub status: u16,
    /// A fixed error code, when refused or failed.
    pub error: Option<String>,
    /// The patients the answer named or the request asked for.
    pub patients: Vec<PatientRef>,
    /// The answer's length.
    pub bytes_out: usize,
    /// Its media type.
    pub content_type: &'static str,
}

impl Guard {
    /// Read who and where a request comes from (no authentication yet).
    pub fn arrive(&self, session: &ServerSession) -> Arrival {
        let snap = self.live.current();
        let peer = peer_ip(session);
        let req = session.req_header();
        let gateway = GatewayId {
            node: self.node.clone(),
            listener: listener_name(session, &self.listeners),
        };
        Arrival {
            request_id: snap.net.request_id(peer, &req.headers),
            received: SystemTime::now(),
            net: network_vector(session, &snap, peer, gateway),
            peer,
            method: req.method.as_str().to_string(),
            path: req.uri.path().to_string(),
            asked: req.uri.query().map(redact_query_tokens),
        }
    }

    /// Verify the bearer token of `headers` (or an `access_token` in `query`).
    pub async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        query: Option<&str>,
    ) -> Result<Authenticated, AuthFailure> {
        self.live.identity().authenticate(headers, query).await
    }

    /// Whether a verified token is an auditor's.
    pub fn is_auditor(&self, a: &Authenticated) -> bool {
        self.auditors.admits(&a.actor.roles, &a.scopes)
    }

    /// Whether a request refused for `failure` is counted into its client's flood summary
    /// instead of a record of its own.
    pub fn flooded(&self, arrival: &Arrival, failure: &AuthFailure) -> bool {
        !self.flood.admit(arrival.peer, failure.reason())
    }

    /// Record `arrival`, answered as `served`, by `who` (`device`: the token's device claim).
    /// Returns once the record is durable.
    pub async fn record(
        &self,
        arrival: Arrival,
        who: Who,
        device: Option<&String>,
        served: Served,
    ) -> Result<(), JournalError> {
        if self.journal.has_failed() {
            return Err(JournalError::Failed {
                reason: self.journal.failure().unwrap_or_default(),
            });
        }
        let mut net = arrival.net;
        claim_device(&mut net, device);
        let mut event = Event::bare(
            arrival.request_id,
            who,
            served.rule,
            net,
            crate::clock::current(),
            crate::record::format_ts(arrival.received),
        );
        event.action = Action::R;
        event.interaction = served.interaction;
        event.resource_type = Some("AuditEvent".into());
        event.method = arrival.method;
        event.path = arrival.path;
        event.query = arrival.asked;
        event.attribution = if served.patients.is_empty() {
            Attribution::None
        } else {
            Attribution::Complete
        };
        event.patients = served.patients;
        event.outcome = Some(Outcome {
            status: served.status,
            code: Outcome::code_for_status(served.status),
            error: served.error,
            bytes_out: Some(served.bytes_out as u64),
            upstream_ms: None,
            content_type: Some(served.content_type.into()),
        });
        crate::proxy::bounds::bound_fields(&mut event, &self.record_bounds);
        self.journal.append(&event).await.map(|_| ())
    }
}
