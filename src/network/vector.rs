//! The network vector: who is on the other end of the TCP connection, and who they say they
//! forward for.
//!
//! Owns the client-IP decision. `Forwarded` (RFC 7239) and `X-Forwarded-For` are walked right
//! to left, and a hop is believed only while the hop that reported it is in a configured
//! trusted-proxy CIDR. A header from an untrusted peer is recorded as claimed
//! (`forwarded_chain`) but never used as the client IP. Also owns the device ID taken from a
//! configured header and the request ID (kept from a trusted proxy, else generated).

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::error::ConfigError;

/// `[network]`: trusted proxies and identifying headers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// CIDRs of proxies and load balancers in front of the gateway whose `Forwarded` /
    /// `X-Forwarded-For` / `X-Request-Id` headers are believed. Empty: believe nobody.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// Request header carrying a device identifier (e.g. `X-Device-Id`), believed only when the
    /// TCP peer is a trusted proxy (which must then set or strip it); unset: none.
    #[serde(default)]
    pub device_id_header: Option<String>,
    /// Header carrying the request ID, kept from trusted proxies and sent upstream.
    #[serde(default = "default_request_id_header")]
    pub request_id_header: String,
    /// Which header the trusted proxies in front write the client chain to:
    /// `x-forwarded-for` (nginx, HAProxy, AWS ALB: the default) or `forwarded` (RFC 7239).
    /// Only this header is walked; the other one is whatever the client sent, never believed.
    #[serde(default)]
    pub forwarded_header: ForwardedHeader,
    /// Rules (by name) whose requests must carry a device ID (from, in this order, a verified
    /// client certificate, a signed token claim, or the header from a trusted proxy); one
    /// without gets 403 `device_id_required`, with a record.
    /// `"*"`: every request, unmatched ones included. Default: none.
    #[serde(default)]
    pub require_device_id_rules: Vec<String>,
}

/// The header that carries the forwarded chain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`
    Forwarded,
}

fn default_request_id_header() -> String {
    "x-request-id".into()
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            trusted_proxies: Vec::new(),
            device_id_header: None,
            request_id_header: default_request_id_header(),
            forwarded_header: ForwardedHeader::default(),
            require_device_id_rules: Vec::new(),
        }
    }
}

impl NetworkConfig {
    /// Check header names are valid.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(h) = &self.device_id_header {
            http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                ConfigError::invalid("network.device_id_header", "not a valid header name")
            })?;
        }
        http::HeaderName::from_bytes(self.request_id_header.as_bytes()).map_err(|_| {
            ConfigError::invalid("network.request_id_header", "not a valid header name")
        })?;
        Ok(())
    }
}

/// The longest device or request ID kept; longer values are cut (and never trusted more).
const MAX_ID_LEN: usize = 128;

/// The client-IP result of walking the forwarded chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddr {
    /// The client IP: the peer, or the nearest hop a trusted proxy reported.
    pub client_ip: IpAddr,
    /// Every hop claimed by the headers, left to right, as received (unparseable hops kept as
    /// text so tampering is visible).
    pub forwarded_chain: Vec<String>,
}

/// Compiled [`NetworkConfig`].
#[derive(Debug, Clone)]
pub struct NetPolicy {
    trusted: Vec<IpNet>,
    device_header: Option<http::HeaderName>,
    require_device_id_rules: Vec<String>,
    request_id_header: http::HeaderName,
    forwarded_header: ForwardedHeader,
}

impl NetPolicy {
    /// Compile a validated config.
    pub fn new(cfg: &NetworkConfig) -> NetPolicy {
        NetPolicy {
            trusted: cfg.trusted_proxies.clone(),
            require_device_id_rules: cfg.require_device_id_rules.clone(),
            device_header: cfg
                .device_id_header
                .as_deref()
                .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()),
            request_id_header: http::HeaderName::from_bytes(cfg.request_id_header.as_bytes())
                .unwrap_or(http::HeaderName::from_static("x-request-id")),
            forwarded_header: cfg.forwarded_header,
        }
    }

    /// Whether an address is a trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The request ID header name.
    pub fn request_id_header(&self) -> &http::HeaderName {
        &self.request_id_header
    }

    /// Walk the forwarded chain from the TCP peer.
    pub fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> ClientAddr {
        let peer = canonical(peer);
        let chain = claimed_chain(headers, self.forwarded_header);
        let mut client = peer;
        if self.is_trusted(peer) {
            for hop in chain.iter().rev() {
                match parse_hop(hop) {
                    Some(ip) => {
                        client = ip;
                        if !self.is_trusted(ip) {
                            break;
                        }
                    }
                    // An unparseable hop ("unknown", an obfuscated name) ends the walk: the last
                    // trusted proxy is the best we know.
                    None => break,
                }
            }
        }
        ClientAddr {
            client_ip: client,
            forwarded_chain: chain,
        }
    }

    /// Whether requests matched by `rule` must carry a device ID.
    pub fn requires_device_id(&self, rule: &str) -> bool {
        self.require_device_id_rules
            .iter()
            .any(|r| r == "*" || r == rule)
    }

    /// The device ID from the configured header, if any.
    pub fn device_id(&self, headers: &HeaderMap) -> Option<String> {
        let name = self.device_header.as_ref()?;
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| clip(v.trim()))
    }

    /// The request ID: the incoming one if the peer is a trusted proxy and it is a sane token,
    /// else a new UUID.
    pub fn request_id(&self, peer: IpAddr, headers: &HeaderMap) -> String {
        if self.is_trusted(peer) {
            if let Some(v) = headers
                .get(&self.request_id_header)
                .and_then(|v| v.to_str().ok())
            {
                let ok = !v.is_empty()
                    && v.len() <= MAX_ID_LEN
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
                if ok {
                    return v.to_string();
                }
            }
        }
        uuid::Uuid::new_v4().to_string()
    }
}

fn clip(v: &str) -> String {
    let mut end = v.len().min(MAX_ID_LEN);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    v[..end].to_string()
}

/// IPv4-mapped IPv6 addresses are treated as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The hops claimed by the configured header: RFC 7239 `Forwarded` (`for=`) or
/// `X-Forwarded-For`.
fn claimed_chain(headers: &HeaderMap, header: ForwardedHeader) -> Vec<String> {
    let mut hops = Vec::new();
    if header == ForwardedHeader::XForwardedFor {
        for value in headers.get_all("x-forwarded-for") {
            let Ok(text) = value.to_str() else { continue };
            hops.extend(
                text.split(',')
                    .map(|h| h.trim().to_string())
                    .filter(|h| !h.is_empty()),
            );
        }
        return hops;
    }
    for value in headers.get_all(http::header::FORWARDED) {
        let Ok(text) = value.to_str() else { continue };
        for element in text.split(',') {
            for pair in element.split(';') {
                let pair = pair.trim();
                if pair.len() > 4 && pair[..4].eq_ignore_ascii_case("for=") {
                    hops.push(pair[4..].trim_matches('"').to_string());
                }
            }
        }
    }
    hops
}

/// Parse one hop: `1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]`, `[2001:db8::1]:443`, `2001:db8::1`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let inner = rest.split(']').next()?;
        return inner.parse::<IpAddr>().ok().map(canonical);
    }
    let (host, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(trusted: &[&str]) -> NetPolicy {
        NetPolicy::new(&NetworkConfig {
            trusted_proxies: trusted.iter().map(|c| c.parse().unwrap()).collect(),
            device_id_header: Some("X-Device-Id".into()),
            ..NetworkConfig::default()
        })
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn untrusted_peer_headers_are_recorded_but_not_believed() {
        let p = policy(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "203.0.113.9")]);
        let a = p.client_addr("198.51.100.7".parse().unwrap(), &h);
        assert_eq!(a.client_ip, "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(a.forwarded_chain, vec!["203.0.113.9"]);
    }

    #[test]
    fn walk_stops_at_the_first_untrusted_hop_from_the_right() {
        let p = policy(&["10.0.0.0/8", "192.168.0.0/16"]);
        // A spoofed leftmost entry, then the real client, then an internal proxy.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9, 192.168.1.5")]);
        let a = p.client_addr("10.1.2.3".parse().unwrap(), &h);
        assert_eq!(a.client_ip, "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(a.forwarded_chain.len(), 3);
    }

    #[test]
    fn only_the_configured_header_is_walked() {
        // The load balancer appends to X-Forwarded-For; a client-sent Forwarded is ignored.
        let p = policy(&["10.0.0.0/8"]);
        let h = headers(&[
            ("forwarded", "for=10.9.9.9"),
            ("x-forwarded-for", "203.0.113.5"),
        ]);
        let a = p.client_addr("10.0.0.1".parse().unwrap(), &h);
        assert_eq!(a.client_ip, "203.0.113.5".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn forwarded_header_when_configured_and_ipv6_parsed() {
        let p = NetPolicy::new(&NetworkConfig {
            trusted_proxies: vec!["::1/128".parse().unwrap(), "127.0.0.0/8".parse().unwrap()],
            forwarded_header: ForwardedHeader::Forwarded,
            ..NetworkConfig::default()
        });
        let h = headers(&[
            (
                "forwarded",
                "for=\"[2001:db8::7]:4711\";proto=https, for=127.0.0.2",
            ),
            ("x-forwarded-for", "9.9.9.9"),
        ]);
        let a = p.client_addr("::ffff:127.0.0.1".parse().unwrap(), &h);
        assert_eq!(a.client_ip, "2001:db8::7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn request_id_is_kept_only_from_trusted_peers_and_only_when_sane() {
        let p = policy(&["127.0.0.0/8"]);
        let h = headers(&[("x-request-id", "abc-123")]);
        assert_eq!(p.request_id("127.0.0.1".parse().unwrap(), &h), "abc-123");
        assert_ne!(p.request_id("8.8.8.8".parse().unwrap(), &h), "abc-123");
        let bad = headers(&[("x-request-id", "a b")]);
        assert_ne!(p.request_id("127.0.0.1".parse().unwrap(), &bad), "a b");
    }

    proptest::proptest! {
        /// Whatever the headers say, the walk never panics, and the client IP is the peer or an
        /// address the chain names; a peer outside the trusted set is always the client.
        #[test]
        fn any_forwarded_header_is_walked_safely(
            xff in proptest::collection::vec("[0-9a-f:.\\[\\], ]{0,40}|.{0,20}", 0..4),
            fwd in "[ -~]{0,80}",
            trusted_peer in proptest::bool::ANY,
        ) {
            for header in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded] {
                let p = NetPolicy::new(&NetworkConfig {
                    trusted_proxies: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
                    forwarded_header: header,
                    ..NetworkConfig::default()
                });
                let mut h = HeaderMap::new();
                for v in &xff {
                    if let Ok(v) = http::HeaderValue::from_str(v) {
                        h.append("x-forwarded-for", v);
                    }
                }
                if let Ok(v) = http::HeaderValue::from_str(&fwd) {
                    h.append(http::header::FORWARDED, v);
                }
                let peer: IpAddr = if trusted_peer { "127.0.0.1" } else { "81.2.69.142" }
                    .parse()
                    .unwrap();
                let addr = p.client_addr(peer, &h);
                if !trusted_peer {
                    proptest::prop_assert_eq!(addr.client_ip, peer);
                }
                proptest::prop_assert!(
                    addr.client_ip == peer
                        || addr.forwarded_chain.iter().any(|hop| parse_hop(hop) == Some(addr.client_ip)),
                    "{:?} from {:?}", addr.client_ip, addr.forwarded_chain
                );
            }
        }
    }

    #[test]
    fn device_id_comes_from_the_configured_header() {
        let p = policy(&[]);
        assert_eq!(
            p.device_id(&headers(&[("x-device-id", " ws-42 ")])),
            Some("ws-42".into())
        );
        assert_eq!(p.device_id(&headers(&[])), None);
    }
}
