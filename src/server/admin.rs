//! The admin listener: `/metrics`, `/healthz` and `/readyz`, on an address of its own.
//!
//! Owns what operators and orchestrators ask the process about its state. Guarantees:
//!
//! * It is a separate pingora service on a separate address (default loopback only), so
//!   exposing the proxy never exposes metrics, and a scrape never passes through the audit path
//!   (it is not an access to patient data and leaves no journal record).
//! * `/healthz` answers 200 while the process serves HTTP at all (liveness).
//! * `/readyz` answers 200 only when the gateway can do its job: it is not shutting down, the
//!   journal takes records,
//!   at least one token verification key is loaded, the rules are loaded, and, when an
//!   archive is configured, it has not been failing for longer than
//!   `admin.archive_unreachable_grace_secs`. Otherwise 503. The body is a JSON object with
//!   every check, so an operator sees which one failed.
//! * Nothing served here carries PHI: metrics labels are fixed sets ([`crate::metrics`]), and
//!   the readiness body holds only check names, fixed reason codes and counts.
//!
//! Only GET is served; every other method gets 405, every other path 404.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Serialize;

use crate::console::respond;
use crate::identity::Identity;
use crate::journal::Journal;
use crate::rules::RuleSet;

/// What `/readyz` looks at. The identity and rules are read through [`Live`](crate::proxy::live::Live) so a reload is
/// seen at once.
pub struct Readiness {
    /// The journal: is it taking records?
    pub journal: Journal,
    /// The configuration in effect (identity keys, rules).
    pub live: Arc<crate::proxy::live::Live>,
    /// Whether an archive is configured.
    pub archive_configured: bool,
    /// How long the archive may fail before `/readyz` does (`admin.archive_unreachable_grace_secs`).
    pub archive_grace: Duration,
    /// Set when the process starts shutting down (SIGTERM, SIGQUIT): not ready any more.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// The proxy's listeners (plain and TLS): not ready until each accepts a connection.
    pub listeners: Vec<std::net::SocketAddr>,
    /// Set once every listener has accepted a connection (they stay open until shutdown).
    pub listening: Arc<std::sync::atomic::AtomicBool>,
}

/// Whether every listener in `addrs` accepts connections: connect to each (its loopback
/// address when it listens on all) until all have answered once; then `accepted` is set and
/// no more connections are made.
fn listeners_accept(
    addrs: &[std::net::SocketAddr],
    accepted: &std::sync::atomic::AtomicBool,
) -> Result<(), String> {
    use std::sync::atomic::Ordering;
    if accepted.load(Ordering::Acquire) {
        return Ok(());
    }
    for addr in addrs {
        let mut target = *addr;
        if target.ip().is_unspecified() {
            target.set_ip(match target.ip() {
                std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        std::net::TcpStream::connect_timeout(&target, Duration::from_millis(500))
            .map_err(|e| format!("{addr} does not accept connections yet: {e}"))?;
    }
    accepted.store(true, Ordering::Release);
    Ok(())
}

/// One readiness check's result.
#[derive(Debug, Serialize)]
pub struct Check {
    /// The check's name.
    pub name: &'static str,
    /// It passed.
    pub ok: bool,
    /// A fixed reason code or a count; never PHI.
    pub detail: String,
}

impl Readiness {
    /// Run every check.
    pub fn checks(&self) -> Vec<Check> {
        let mut checks = Vec::with_capacity(5);
        let draining = self.draining.load(std::sync::atomic::Ordering::Acquire);
        checks.push(Check {
            name: "serving",
            ok: !draining,
            detail: if draining {
                "shutting down".into()
            } else {
                "accepting requests".into()
            },
        });
        let journal_ok = !self.journal.has_failed();
        checks.push(Check {
            name: "journal",
            ok: journal_ok,
            detail: if journal_ok {
                "taking records".into()
            } else {
                "failed: refusing every record until restart".into()
            },
        });
        let identity: Arc<Identity> = self.live.identity();
        let keys = identity.key_count();
        checks.push(Check {
            name: "keys",
            ok: keys > 0,
            detail: format!("{keys} verification keys loaded"),
        });
        let listeners = listeners_accept(&self.listeners, &self.listening);
        checks.push(Check {
            name: "listeners",
            ok: listeners.is_ok(),
            detail: match listeners {
                Ok(()) => format!("{} accepting", self.listeners.len()),
                Err(why) => why,
            },
        });
        let rules: Arc<RuleSet> = self.live.rules();
        let rule_count = rules.rules().len();
        checks.push(Check {
            name: "rules",
            ok: rule_count > 0,
            detail: format!("{rule_count} rules loaded"),
        });
        // Under `[clock] unsynchronised = "refuse"` an untrusted clock refuses every request:
        // not ready, so load balancers send elsewhere.
        let snapshot = self.live.current();
        if let Some(reason) = snapshot.clock.refuses(&crate::clock::current()) {
            checks.push(Check {
                name: "clock",
                ok: false,
                detail: format!(
                    "{reason}: requests are refused ([clock] unsynchronised = \"refuse\")"
                ),
            });
        }
        if self.archive_configured {
            let failing = crate::metrics::global().archive_failing_for();
            let ok = failing.is_none_or(|d| d <= self.archive_grace);
            checks.push(Check {
                name: "archive",
                ok,
                detail: match failing {
                    None => "reachable".into(),
                    Some(d) => format!("failing for {} s", d.as_secs()),
                },
            });
        }
        checks
    }
}

/// The admin HTTP application.
pub struct AdminApp {
    /// What `/readyz` checks.
    pub readiness: Readiness,
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        if method != http::Method::GET {
            return respond(405, "text/plain", b"method not allowed\n".to_vec());
        }
        match path.as_str() {
            "/metrics" => respond(
                200,
                crate::metrics::CONTENT_TYPE,
                crate::metrics::global().render(),
            ),
            "/healthz" => respond(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                let checks = self.readiness.checks();
                let ready = checks.iter().all(|c| c.ok);
                let body = format!(
                    "{:#}",
                    serde_json::json!({
                        "ready": ready,
                        "checks": checks,
                    })
                )
                .into_bytes();
                respond(if ready { 200 } else { 503 }, "application/json", body)
            }
            _ => respond(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::listeners_accept;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn readiness_waits_until_every_listener_accepts() {
        let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open_addr = open.local_addr().unwrap();
        let closed_addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let accepted = AtomicBool::new(false);
        let e = listeners_accept(&[open_addr, closed_addr], &accepted).unwrap_err();
        assert!(e.contains(&closed_addr.to_string()), "{e}");
        assert!(!accepted.load(Ordering::Acquire));
        // Listening on all addresses: checked on loopback.
        let all: std::net::SocketAddr = format!("0.0.0.0:{}", open_addr.port()).parse().unwrap();
        listeners_accept(&[open_addr, all], &accepted).unwrap();
        assert!(accepted.load(Ordering::Acquire));
        drop(open);
        // Once all accepted, no more connections are made.
        listeners_accept(&[closed_addr], &accepted).unwrap();
    }
}
