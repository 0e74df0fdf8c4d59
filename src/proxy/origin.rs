//! Where a request comes from: the network vector of a session (peer and client IP through
//! the trusted-proxy walk, user agent, GeoIP, the device, the gateway and listener that carried
//! it), and the query string as a record may keep it (a token in it redacted).
//!
//! Shared by the proxy's admission and by the gateway's other listeners that record who asked
//! (the audit listener), so every record says "from where" the same way. Guarantees: a device
//! header is believed only from a trusted proxy; a client certificate outranks it; the query
//! string that reaches a record never holds an `access_token` value.

use std::net::IpAddr;

use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;

use super::live::Snapshot;
use crate::network::geoip::GeoAnswer;
use crate::record::{ClientCert, GatewayId, NetworkVector};

/// The TCP peer's IP (`0.0.0.0` for a Unix socket).
pub fn peer_ip(session: &ServerSession) -> IpAddr {
    match session.client_addr() {
        Some(PingoraAddr::Inet(addr)) => addr.ip(),
        _ => IpAddr::from([0, 0, 0, 0]),
    }
}

/// The name of the listener `session` came in on, among `listeners` (`unknown` if none).
pub fn listener_name(
    session: &ServerSession,
    listeners: &[(std::net::SocketAddr, String)],
) -> String {
    if let Some(PingoraAddr::Inet(local)) = session.server_addr() {
        for (addr, name) in listeners {
            if addr.port() == local.port()
                && (addr.ip().is_unspecified() || addr.ip() == local.ip())
            {
                return name.clone();
            }
        }
    }
    "unknown".into()
}

/// From where: peer and client IP (trusted-proxy walk), user agent, GeoIP, `gateway`, and the
/// device, most trustworthy first: a client certificate the TLS handshake verified, then a
/// signed token claim (set by the caller after authentication), then the configured header,
/// believed only from a trusted proxy (anyone else could name any workstation). The record's
/// `device_id_source` says which.
pub fn network_vector(
    session: &ServerSession,
    snap: &Snapshot,
    peer: IpAddr,
    gateway: GatewayId,
) -> NetworkVector {
    let headers = &session.req_header().headers;
    let addr = snap.net.client_addr(peer, headers);
    let mut net = NetworkVector {
        client_ip: addr.client_ip.to_string(),
        peer_ip: peer.to_string(),
        forwarded_chain: addr.forwarded_chain,
        device_id: None,
        device_id_source: None,
        user_agent: headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        geo: None,
        geo_unavailable: None,
        client_cert: None,
        gateway,
    };
    if let Some(geo) = &snap.geo {
        match geo.lookup(addr.client_ip) {
            GeoAnswer::Found(found) => net.geo = Some(Some(found)),
            GeoAnswer::Unavailable(why) => {
                net.geo = Some(None);
                net.geo_unavailable = Some(why.to_string());
            }
        }
    }
    if let Some(cert) = verified_client_cert(session) {
        net.device_id = Some(format!("sha256:{}", cert.sha256));
        net.device_id_source = Some("client_cert".into());
        net.client_cert = Some(cert);
    } else if let Some(device) = snap
        .net
        .device_id(headers)
        .filter(|_| snap.net.is_trusted(peer))
    {
        net.device_id = Some(device);
        net.device_id_source = Some("header".into());
    }
    net
}

/// A token-derived device claim, set into `net` unless a client certificate already named
/// the device (a signed claim ranks below a certificate, above the header).
pub fn claim_device(net: &mut NetworkVector, device: Option<&String>) {
    if net.device_id_source.as_deref() != Some("client_cert") {
        if let Some(device) = device {
            net.device_id = Some(device.clone());
            net.device_id_source = Some("claim".into());
        }
    }
}

/// The client certificate the TLS handshake verified, if any.
fn verified_client_cert(session: &ServerSession) -> Option<ClientCert> {
    let tls = session
        .digest()
        .and_then(|d| d.ssl_digest.as_ref())
        .filter(|t| !t.cert_digest.is_empty())?;
    Some(ClientCert {
        sha256: hex::encode(&tls.cert_digest),
        subject: tls
            .extension
            .get::<crate::network::tls::PeerCertificate>()
            .map(|p| p.subject.chars().take(512).collect()),
    })
}

/// The query string with the value of every `access_token` parameter (however encoded)
/// replaced, so a token sent where it must not be is never written to the journal.
pub fn redact_query_tokens(query: &str) -> String {
    if !query.to_ascii_lowercase().contains("token") && !query.contains('%') {
        return query.to_string();
    }
    query
        .split('&')
        .map(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            let decoded: String = form_urlencoded::parse(key.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            if decoded.eq_ignore_ascii_case("access_token") {
                format!("{key}=[redacted]")
            } else {
                pair.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}
