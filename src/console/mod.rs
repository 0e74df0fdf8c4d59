//! The auditor's listeners: the trail served to the people who audit it, each request
//! authenticated, authorised and recorded in the same chain as the accesses it shows.
//!
//! * [`api`]: IHE ITI-81 `GET /AuditEvent?...` for FHIR tooling (`[audit_api]`).
//! * [`web`]: the console, pages for privacy officers (`[console]`), with [`session`] (sign-in
//!   bound to the token's expiry), [`oidc`] (sign-in with OpenID Connect), [`pages`] (the
//!   HTML) and [`chart`] (SVG bars).
//! * [`guard`]: who may ask (`[auditors]`), and the record of each request.
//! * [`trail`]: this node's journal and archive, verified, as `AuditEvent`s.

pub mod api;
pub mod chart;
pub mod guard;
pub mod oidc;
pub mod pages;
pub mod session;
pub mod trail;
pub mod web;

use http::Response;

/// A complete answer: status, content type, length, `Cache-Control: no-store`, body.
pub fn respond(status: u16, content_type: &'static str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut response = Response::new(Vec::new());
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    headers.insert(http::header::CONTENT_LENGTH, body.len().into());
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    *response.body_mut() = body;
    response
}
