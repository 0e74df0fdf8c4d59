//! The gateway's shared state ([`Gateway`]: the journal, the live configuration, the upstream,
//! the buffered path's slots) and each request's context ([`RequestCtx`]), carried across
//! pingora's phases; and the upstream peer both paths use.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpUpstreamRequestPolicy;

use super::live::{Live, Snapshot};
use crate::config::upstream::UpstreamConfig;
use crate::journal::Journal;
use crate::record::Event;
use crate::rules::Classification;

/// Everything a request needs, shared by all requests.
pub struct Gateway {
    /// Identity, rules and network policy; a SIGHUP swaps them (see [`crate::proxy::live`]).
    pub live: Arc<Live>,
    /// Requests between their head and their end (the drain at shutdown waits for 0).
    pub in_flight: Arc<AtomicUsize>,
    /// The journal every record goes to.
    pub journal: Journal,
    /// This gateway's node name, recorded in `gateway.node`.
    pub node: String,
    /// Listener address → name recorded in `gateway.listener`.
    pub listeners: Vec<(SocketAddr, String)>,
    /// `[upstream]`: the EHR and its timeouts.
    pub upstream: UpstreamConfig,
    /// `upstream.ca_file`, loaded; `None`: the system's roots.
    pub upstream_ca: Option<Arc<Box<[pingora::tls::x509::X509]>>>,
    /// The buffered path's connections to the upstream (see the buffered path, `proxy/buffered.rs`); pingora's
    /// proxy path keeps its own pool.
    pub connector: pingora::connectors::http::Connector,
    /// Slots of the buffered path (`attribution.max_buffered_requests`): a buffered exchange
    /// holds one from before it reads the request body until its response is released, so the
    /// memory the buffered path holds is bounded.
    pub buffer_slots: Arc<tokio::sync::Semaphore>,
    /// How long a request waits for a slot (`attribution.buffered_wait_secs`).
    pub buffer_wait: std::time::Duration,
    /// The bytes all buffered exchanges may hold together (`attribution.max_buffered_bytes`).
    pub buffer_bytes: Arc<super::budget::ByteBudget>,
    /// `[records]`: the bounds on what a request writes into the journal.
    pub record_bounds: crate::config::records::RecordsConfig,
    /// Which unauthenticated requests get a record of their own (the rest are summarised).
    pub flood: Arc<super::bounds::FloodGuard>,
}

/// Per-request state carried across phases.
pub struct RequestCtx {
    /// Counts this request in [`Gateway::in_flight`] until the context is dropped.
    pub(super) _in_flight: InFlight,
    /// The configuration this request uses in every phase (taken when it starts).
    pub(super) snap: Arc<Snapshot>,
    /// When the request's head was read.
    pub(super) started: Instant,
    /// The same moment on the wall clock, for the record's `received`.
    pub(super) received: std::time::SystemTime,
    /// The record under construction: who, what, from where. Set in `request_filter`.
    pub(super) event: Option<Event>,
    /// The seq of this request's intent record.
    pub(super) intent_seq: Option<u64>,
    /// Set once the outcome record is durable.
    pub(super) outcome_written: bool,
    /// Why the gateway refused to release a response (journal failure), for `fail_to_proxy`.
    pub(super) refusal: Option<&'static str>,
    /// A copy of a POST `_search` form body, for query attribution.
    pub(super) form_body: Option<Vec<u8>>,
    /// Limit for `form_body`.
    pub(super) form_body_limit: usize,
    /// Whether a form body went over the limit.
    pub(super) form_body_truncated: bool,
    /// The rules' answer, kept when the form body must still be attributed.
    pub(super) classification: Option<Classification>,
    pub(super) upstream_started: Option<Instant>,
    /// The origin-form target an absolute-form request was classified by: sent upstream in
    /// place of the client's.
    pub(super) upstream_target: Option<String>,
    /// The response's media type, recorded when the buffered path read the response.
    pub(super) content_type: Option<String>,
}

impl RequestCtx {
    /// A new request's context: counted in flight, on the configuration in effect now.
    pub(super) fn new(in_flight: &Arc<AtomicUsize>, snap: Arc<Snapshot>) -> RequestCtx {
        RequestCtx {
            _in_flight: InFlight::new(in_flight),
            snap,
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
            upstream_target: None,
            content_type: None,
        }
    }

    /// The request's ID (empty before `request_filter` set the event).
    pub(super) fn request_id(&self) -> String {
        self.event
            .as_ref()
            .map(|e| e.request_id.clone())
            .unwrap_or_default()
    }
}

/// One request counted in flight; uncounted when dropped (however the request ends).
pub(super) struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub(super) fn new(counter: &Arc<AtomicUsize>) -> InFlight {
        counter.fetch_add(1, Ordering::AcqRel);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gateway {
    /// The upstream, with the configured TLS checks and timeouts (both paths).
    pub(super) fn make_peer(&self) -> HttpPeer {
        let tls = self.upstream.url.tls;
        let mut peer = HttpPeer::new(
            self.upstream.url.authority.as_str(),
            tls,
            if tls {
                self.upstream.server_name().to_string()
            } else {
                String::new()
            },
        );
        if tls {
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

    /// The request as the EHR gets it (both paths): the target the gateway classified (the
    /// origin form of an absolute-form target), only the content codings the gateway can decode
    /// in `Accept-Encoding`, then `X-Forwarded-For` and the request ID.
    pub(super) fn prepare_upstream_request(
        &self,
        session: &Session,
        upstream_request: &mut RequestHeader,
        ctx: &RequestCtx,
    ) -> Result<()> {
        if let Some(target) = &ctx.upstream_target {
            let uri = http::Uri::try_from(target.as_str()).map_err(|e| {
                Error::because(InvalidHTTPHeader, "classified target is not a URI", e)
            })?;
            upstream_request.set_uri(uri);
        }
        let offered = upstream_request
            .headers
            .get_all(http::header::ACCEPT_ENCODING)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>();
        if !offered.is_empty() {
            let decodable = decodable_codings(&offered.join(","));
            upstream_request.insert_header(http::header::ACCEPT_ENCODING, decodable)?;
        }
        let peer = super::origin::peer_ip(session).to_string();
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
}

/// Content codings the gateway decodes to read a response (see
/// [`crate::attribution::body::decoded`]).
const DECODABLE_CODINGS: [&str; 5] = ["gzip", "x-gzip", "deflate", "br", "zstd"];

/// A client's `Accept-Encoding`, cut to the codings the gateway can decode (their q-values
/// kept; `*` becomes each of them), or `identity` when none is left: the EHR never answers in
/// a coding that would hide the patients from the record.
pub(super) fn decodable_codings(accept_encoding: &str) -> String {
    let mut kept: Vec<String> = Vec::new();
    for item in accept_encoding.split(',') {
        let item = item.trim();
        let (coding, params) = match item.split_once(';') {
            Some((c, p)) => (c.trim(), Some(p.trim())),
            None => (item, None),
        };
        let coding = coding.to_ascii_lowercase();
        let refused = params.is_some_and(|p| {
            p.split(';').any(|kv| {
                kv.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            })
        });
        if refused {
            continue; // `q=0`: not acceptable to the client
        }
        let with_params = |c: &str| match params {
            Some(p) => format!("{c};{p}"),
            None => c.to_string(),
        };
        if coding == "*" {
            kept.extend(
                DECODABLE_CODINGS
                    .iter()
                    .filter(|c| **c != "x-gzip")
                    .map(|c| with_params(c)),
            );
        } else if DECODABLE_CODINGS.contains(&coding.as_str()) || coding == "identity" {
            kept.push(with_params(&coding));
        }
    }
    if kept.is_empty() {
        "identity".to_string()
    } else {
        kept.join(", ")
    }
}

/// The TCP peer's address (0.0.0.0 for a Unix socket).
#[cfg(test)]
mod tests {
    use super::decodable_codings;

    #[test]
    fn only_codings_the_gateway_decodes_are_offered_upstream() {
        assert_eq!(
            decodable_codings("gzip, deflate, br, zstd"),
            "gzip, deflate, br, zstd"
        );
        assert_eq!(decodable_codings("compress, x-snappy"), "identity");
        assert_eq!(decodable_codings("BR;q=1.0, lz4;q=0.9"), "br;q=1.0");
        assert_eq!(
            decodable_codings("*;q=0.5"),
            "gzip;q=0.5, deflate;q=0.5, br;q=0.5, zstd;q=0.5"
        );
        assert_eq!(decodable_codings(""), "identity");
        assert_eq!(decodable_codings("identity;q=0, gzip"), "gzip");
    }
}
