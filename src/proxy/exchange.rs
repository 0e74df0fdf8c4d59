//! The buffered path's exchange with the EHR, over pingora's own connector (the same pool
//! settings, TLS checks and timeouts as the streaming path): the client's body read whole
//! (bounded), the request sent with hop-by-hop headers removed, and the answer read as far as
//! the limit, the rest left on the connection for streaming after the record is durable.
//!
//! Nothing here writes to the client or the journal; [`super::buffered`] decides what happens
//! with what is read.

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;

use super::budget::{Held, Pace};

/// A request body read from the client.
pub struct RequestBody {
    /// What was read (all of it when `complete`).
    pub bytes: Vec<u8>,
    /// The whole body was read within the limit.
    pub complete: bool,
}

/// Read the client's request body, stopping after the first chunk that goes past `limit`; at
/// the client's `pace`, within the byte budget (`held`).
pub async fn read_request_body(
    session: &mut Session,
    limit: usize,
    pace: &Pace,
    held: &mut Held,
) -> Result<RequestBody> {
    let mut bytes = Vec::new();
    // An error reading the client's body is the client's side (its timeout, a closed socket).
    while let Some(chunk) = pace
        .client(bytes.len(), false, session.read_request_body())
        .await
        .map_err(|e| e.into_down())?
    {
        held.cover(bytes.len() + chunk.len()).await?;
        bytes.extend_from_slice(&chunk);
        if bytes.len() > limit {
            return Ok(RequestBody {
                bytes,
                complete: false,
            });
        }
    }
    Ok(RequestBody {
        bytes,
        complete: true,
    })
}

/// Headers that belong to one connection, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
];

/// The EHR's answer, read as far as the limit.
pub struct Answer {
    pub header: ResponseHeader,
    /// What was read of the body (all of it when `complete`).
    pub body: Vec<u8>,
    /// The whole body was read within the limit.
    pub complete: bool,
    /// The EHR's connection, still open when the body was not read to the end.
    pub rest: Option<HttpSession>,
}

/// The hop-by-hop headers of a message: [`HOP_BY_HOP`] and those its `Connection` header names.
fn hop_by_hop(headers: &http::HeaderMap) -> Vec<String> {
    let named = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty());
    HOP_BY_HOP
        .iter()
        .map(|h| h.to_string())
        .chain(named)
        .collect()
}

/// The request to send the EHR: the client's, with the hop-by-hop headers removed and the
/// body framed as read. `body_complete`: the whole body is `body` (framed with
/// Content-Length); otherwise the client's framing is kept and the rest streams.
pub fn upstream_request(
    client: &RequestHeader,
    body: &[u8],
    body_complete: bool,
) -> Result<RequestHeader> {
    let mut req = client.clone();
    req.set_version(http::Version::HTTP_11);
    let chunked = req
        .headers
        .get(http::header::TRANSFER_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    let had_length = req.headers.contains_key(http::header::CONTENT_LENGTH);
    for h in hop_by_hop(&req.headers) {
        req.remove_header(&h);
    }
    if body_complete {
        if !body.is_empty() || had_length || chunked {
            req.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        }
    } else if chunked && !had_length {
        req.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    // An HTTP/2 client sends :authority, not Host; an HTTP/1.1 EHR expects Host.
    if !req.headers.contains_key(http::header::HOST) {
        if let Some(authority) = req.uri.authority().map(|a| a.as_str().to_string()) {
            req.insert_header(http::header::HOST, authority)?;
        }
    }
    Ok(req)
}

/// The response head to send the client: the EHR's, without hop-by-hop headers, framed for
/// the body as it will be sent.
pub fn downstream_response(
    answer: &Answer,
    head_request: bool,
    client_is_h1: bool,
) -> Result<ResponseHeader> {
    let mut resp = answer.header.clone();
    let upstream_length = resp.headers.get(http::header::CONTENT_LENGTH).cloned();
    for h in hop_by_hop(&resp.headers) {
        resp.remove_header(&h);
    }
    let status = resp.status.as_u16();
    let bodiless = head_request || status == 204 || status == 304 || status < 200;
    if bodiless {
        // A HEAD answer keeps the length of the GET it stands for.
        if let Some(len) = upstream_length {
            resp.insert_header(http::header::CONTENT_LENGTH, len)?;
        }
    } else if answer.complete {
        resp.insert_header(http::header::CONTENT_LENGTH, answer.body.len().to_string())?;
    } else if let Some(len) = upstream_length {
        resp.insert_header(http::header::CONTENT_LENGTH, len)?;
    } else if client_is_h1 {
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(resp)
}

/// Whether a failed exchange may be sent again on a fresh connection: only an idempotent
/// method whose whole body we hold, after a failure pingora marks as safe to retry (a pooled
/// connection the EHR had closed).
fn retryable(e: &Error, reused: bool, method: &http::Method, body_complete: bool) -> bool {
    let safe_method = matches!(
        *method,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::PUT
            | http::Method::DELETE
            | http::Method::OPTIONS
    );
    let marked = match e.retry {
        pingora::RetryType::Decided(b) => b,
        pingora::RetryType::ReusedOnly => reused,
    };
    safe_method && body_complete && marked
}

/// Send `req` (and `body`, then the rest of the client's body when `!body_complete`) to the
/// EHR and read its response, buffering at most `limit` bytes of body, within the byte budget
/// (`held`) and the exchange's deadline.
#[allow(
    clippy::too_many_arguments,
    reason = "each is one part of the exchange; a struct would only rename them"
)]
pub async fn exchange(
    connector: &Connector,
    peer: &HttpPeer,
    req: &RequestHeader,
    body: &[u8],
    body_complete: bool,
    client: &mut Session,
    limit: usize,
    pace: &Pace,
    held: &mut Held,
) -> Result<Answer> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (mut up, reused) = connector.get_http_session(peer).await?;
        up.set_read_timeout(peer.options.read_timeout);
        up.set_write_timeout(peer.options.write_timeout);
        let sent = tokio::time::timeout_at(
            pace.deadline(),
            send_and_read_head(&mut up, req, body, body_complete, client),
        )
        .await
        .unwrap_or_else(|_| {
            Error::e_explain(ReadTimedout, "the buffered exchange's deadline passed")
        });
        match sent {
            Ok(()) => return read_body(connector, peer, up, limit, pace, held).await,
            Err(e) => {
                up.shutdown().await;
                if attempt < 2 && retryable(&e, reused, &req.method, body_complete) {
                    continue;
                }
                return Err(e);
            }
        }
    }
}

async fn send_and_read_head(
    up: &mut HttpSession,
    req: &RequestHeader,
    body: &[u8],
    body_complete: bool,
    client: &mut Session,
) -> Result<()> {
    up.write_request_header(Box::new(req.clone())).await?;
    if !body.is_empty() {
        up.write_request_body(Bytes::copy_from_slice(body), body_complete)
            .await?;
    }
    if !body_complete {
        while let Some(chunk) = client.read_request_body().await? {
            up.write_request_body(chunk, false).await?;
        }
    }
    up.finish_request_body().await?;
    loop {
        up.read_response_header().await?;
        let status = up.response_header().map(|h| h.status.as_u16()).unwrap_or(0);
        if status == 101 {
            return Error::e_explain(InvalidHTTPHeader, "upstream switched protocols");
        }
        // Informational answers (100 Continue, 103 Early Hints) are not relayed.
        if !(100..200).contains(&status) {
            return Ok(());
        }
    }
}

async fn read_body(
    connector: &Connector,
    peer: &HttpPeer,
    mut up: HttpSession,
    limit: usize,
    pace: &Pace,
    held: &mut Held,
) -> Result<Answer> {
    let header = up
        .response_header()
        .cloned()
        .ok_or_else(|| Error::explain(InvalidHTTPHeader, "no response header"))?;
    // Sized from Content-Length when the upstream states it, up to 1 MiB (a stated length is
    // only a claim, and the byte budget counts what arrives, not what is reserved): an answer
    // of that size is not copied again at every doubling of the buffer.
    let stated = header
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = Vec::with_capacity(stated.min(limit.saturating_add(1)).min(1 << 20));
    loop {
        let read = tokio::time::timeout_at(pace.deadline(), up.read_response_body())
            .await
            .unwrap_or_else(|_| {
                Error::e_explain(ReadTimedout, "the buffered exchange's deadline passed")
            });
        match read {
            Err(e) => {
                up.shutdown().await;
                return Err(e);
            }
            Ok(Some(chunk)) => {
                if let Err(e) = held.cover(body.len() + chunk.len()).await {
                    up.shutdown().await;
                    return Err(e);
                }
                body.extend_from_slice(&chunk);
                if body.len() > limit && !up.response_done() {
                    return Ok(Answer {
                        header,
                        body,
                        complete: false,
                        rest: Some(up),
                    });
                }
            }
            Ok(None) => break,
        }
        if up.response_done() {
            break;
        }
    }
    // The whole response was read: the connection may serve the next request.
    if up.response_done() {
        connector
            .release_http_session(up, peer, peer.options.idle_timeout)
            .await;
    } else {
        up.shutdown().await;
    }
    Ok(Answer {
        header,
        body,
        complete: true,
        rest: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut req = RequestHeader::build("POST", b"/fhir/Patient", None).unwrap();
        req.insert_header("connection", "keep-alive, x-secret-hop")
            .unwrap();
        req.insert_header("x-secret-hop", "1").unwrap();
        req.insert_header("transfer-encoding", "chunked").unwrap();
        req.insert_header("expect", "100-continue").unwrap();
        req.insert_header("authorization", "Bearer t").unwrap();
        let up = upstream_request(&req, b"{}", true).unwrap();
        assert!(up.headers.get("connection").is_none());
        assert!(up.headers.get("x-secret-hop").is_none());
        assert!(up.headers.get("transfer-encoding").is_none());
        assert!(up.headers.get("expect").is_none());
        assert_eq!(up.headers.get("content-length").unwrap(), "2");
        assert_eq!(up.headers.get("authorization").unwrap(), "Bearer t");
        // A GET without a body gets no Content-Length.
        let req = RequestHeader::build("GET", b"/fhir/Patient/1", None).unwrap();
        let up = upstream_request(&req, b"", true).unwrap();
        assert!(up.headers.get("content-length").is_none());
    }
}
