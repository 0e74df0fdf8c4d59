//! The requests the gateway answers itself instead of forwarding, as one enum: each refusal's
//! status, error code, message, extra headers and metric are written once, here.
//!
//! The error code is the `error` of the answer's JSON body, the record's `outcome.error`, and
//! the label of the metric that counts it, so the three can never disagree. Every refusal is
//! journaled before it is answered ([`super::Gateway::refuse`]); when the journal cannot take
//! the record, the answer becomes the fail-closed 503 instead.

use crate::identity::AuthFailure;
use crate::metrics;
use crate::rules::RequestRejection;

/// Why the gateway answers a request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The kernel's clock is not synchronised and `clock.unsynced` says refuse; the reason is
    /// the clock policy's fixed code.
    ClockUnsynced(&'static str),
    /// No token, or a token that failed verification (401, or 403 for an insufficient one).
    Unauthenticated {
        status: u16,
        reason: &'static str,
        /// The RFC 6750 `WWW-Authenticate` challenge.
        challenge: String,
    },
    /// Refused before any rule was tried: the path or the target form (400), a method override
    /// (400), a method no rule knows (405).
    Rejected(RequestRejection),
    /// A protocol upgrade (WebSocket): its tunnel's bytes would be covered by no record (501).
    UpgradeNotSupported,
    /// The matched rule requires an identified device and none was found (403).
    DeviceIdRequired,
    /// No rule covers the request and `rules.unmatched = "deny"` (403).
    UnmatchedRoute,
    /// No buffered slot came free within `attribution.buffered_wait_secs` (503).
    GatewayBusy,
    /// A request body over `attribution.max_body_bytes` under `oversize = "refuse"` (413).
    BodyTooLarge,
    /// A response over `attribution.max_body_bytes` under `oversize = "refuse"` (502).
    ResponseTooLarge,
}

impl Refusal {
    /// The refusal of a token that did not verify.
    pub fn unauthenticated(f: &AuthFailure) -> Refusal {
        Refusal::Unauthenticated {
            status: f.status().as_u16(),
            reason: f.reason(),
            challenge: f.www_authenticate(),
        }
    }

    /// The HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::ClockUnsynced(_) | Refusal::GatewayBusy => 503,
            Refusal::Unauthenticated { status, .. } => *status,
            Refusal::Rejected(r) => r.status(),
            Refusal::UpgradeNotSupported => 501,
            Refusal::DeviceIdRequired | Refusal::UnmatchedRoute => 403,
            Refusal::BodyTooLarge => 413,
            Refusal::ResponseTooLarge => 502,
        }
    }

    /// The fixed error code: the answer's `error`, the record's `outcome.error`, the metric
    /// label.
    pub fn error(&self) -> &'static str {
        match self {
            Refusal::ClockUnsynced(reason) | Refusal::Unauthenticated { reason, .. } => reason,
            Refusal::Rejected(r) => r.reason(),
            Refusal::UpgradeNotSupported => "upgrade_not_supported",
            Refusal::DeviceIdRequired => "device_id_required",
            Refusal::UnmatchedRoute => "unmatched_route",
            Refusal::GatewayBusy => "gateway_busy",
            Refusal::BodyTooLarge => "body_too_large",
            Refusal::ResponseTooLarge => "response_too_large",
        }
    }

    /// The answer's `detail`: what happened, in words, without anything from the request.
    pub fn detail(&self) -> &'static str {
        match self {
            Refusal::ClockUnsynced(_) => {
                "the gateway's clock is not synchronised, so this access cannot be time-stamped reliably"
            }
            Refusal::Unauthenticated { .. } => "a valid bearer token is required",
            Refusal::Rejected(RequestRejection::Path(_)) => "the request target is not acceptable",
            Refusal::Rejected(RequestRejection::MethodOverride) => {
                "method overrides are not forwarded: send the request with its own method"
            }
            Refusal::Rejected(RequestRejection::UnknownMethod) => {
                "the gateway does not forward this method"
            }
            Refusal::Rejected(RequestRejection::ElementsNotAudited) => {
                "_elements in this form could leave out the reference naming the patient"
            }
            Refusal::Rejected(RequestRejection::SummaryHidesPatients) => {
                "this _summary would leave out the reference naming the patient: ask for _summary=data or whole resources"
            }
            Refusal::Rejected(RequestRejection::GraphqlNotAudited) => {
                "$graphql answers cannot be attributed to patients, so they are not forwarded"
            }
            Refusal::UpgradeNotSupported => {
                "protocol upgrades are not audited, so they are not forwarded"
            }
            Refusal::DeviceIdRequired => "this request must come from an identified device",
            Refusal::UnmatchedRoute => "no audit rule covers this request",
            Refusal::GatewayBusy => {
                "too many requests are being read for their audit record; retry"
            }
            Refusal::BodyTooLarge => {
                "the request body is larger than the gateway reads for the audit record"
            }
            Refusal::ResponseTooLarge => {
                "the EHR's response is larger than the gateway reads for the audit record: page the search (_count) or use $export"
            }
        }
    }

    /// Headers the answer carries beyond the gateway's own.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Refusal::ClockUnsynced(_) => vec![("retry-after", "30".into())],
            Refusal::Unauthenticated { challenge, .. } => {
                vec![("www-authenticate", challenge.clone())]
            }
            Refusal::GatewayBusy => vec![("retry-after", "1".into())],
            _ => Vec::new(),
        }
    }

    /// Count the refusal in its metric family, labelled with [`Refusal::error`]. An unmatched
    /// route is already counted in `auditgate_unmatched_routes_total` when it is matched.
    pub fn count(&self) {
        let m = metrics::global();
        let family = match self {
            Refusal::ClockUnsynced(_) => &m.fail_closed_refusals,
            Refusal::Unauthenticated { .. } => &m.identity_failures,
            Refusal::ResponseTooLarge => &m.upstream_errors,
            Refusal::UnmatchedRoute => return,
            Refusal::Rejected(_)
            | Refusal::UpgradeNotSupported
            | Refusal::DeviceIdRequired
            | Refusal::GatewayBusy
            | Refusal::BodyTooLarge => &m.rejected_requests,
        };
        family.with_label_values(&[self.error()]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_a_fixed_code_and_an_error_status() {
        let all = [
            Refusal::ClockUnsynced("clock_unsynced"),
            Refusal::Unauthenticated {
                status: 401,
                reason: "missing_token",
                challenge: "Bearer realm=\"auditgate\"".into(),
            },
            Refusal::Rejected(RequestRejection::Path(
                crate::rules::PathRejection::DotSegment { at: 1 },
            )),
            Refusal::Rejected(RequestRejection::MethodOverride),
            Refusal::Rejected(RequestRejection::UnknownMethod),
            Refusal::Rejected(RequestRejection::SummaryHidesPatients),
            Refusal::UpgradeNotSupported,
            Refusal::DeviceIdRequired,
            Refusal::UnmatchedRoute,
            Refusal::GatewayBusy,
            Refusal::BodyTooLarge,
            Refusal::ResponseTooLarge,
        ];
        for r in &all {
            assert!((400..600).contains(&r.status()), "{r:?}");
            assert!(
                r.error()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{r:?}"
            );
            assert!(!r.detail().is_empty());
            r.count();
        }
        assert_eq!(all[1].headers()[0].0, "www-authenticate");
        assert_eq!(Refusal::GatewayBusy.headers()[0].0, "retry-after");
    }
}
