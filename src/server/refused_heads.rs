//! Request heads refused by pingora itself, before any phase of the proxy runs: counted.
//!
//! Pingora 0.9 reads each request head in its own loop (`HttpProxy::handle_new_request`) and
//! answers an unparseable or oversize head with 400 and closes the connection, with no hook a
//! proxy can implement: no phase has run, so there is no context, no peer address and no
//! record. What it does do is log one line, `Fail to proxy: <error>, downstream session type:
//! ...` (at debug level for a malformed head, at error level when the connection failed), to
//! the `log` facade, which the operational log bridges into `tracing`. This layer watches for
//! that line and counts it in `auditgate_refused_by_pingora_total{reason}`: `malformed_head`
//! (pingora's 400) or `connection_error`. The line itself (which can hold the raw head) is
//! never printed: pingora's targets stay at `info` in the operational log.
//!
//! What is *not* covered: these heads get no journal record (pingora gives no peer or request
//! to record), and the count depends on pingora's wording of that line (the integration test
//! `evasion::heads_pingora_refuses_are_counted` fails if a pingora upgrade changes it). CONNECT,
//! which pingora would also refuse on its own, is let through to the proxy
//! (`allow_connect_method_proxying`), where the rules refuse it with a record.

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::layer::{Context, Layer};

/// The start of pingora's log line for a request head it refused.
const REFUSED_HEAD_PREFIX: &str = "Fail to proxy: ";

/// Counts the request heads pingora refuses (see the module docs).
pub struct RefusedHeads;

impl RefusedHeads {
    /// Whether an event's target is pingora's proxy crate.
    fn watched(target: &str) -> bool {
        target == "pingora_proxy" || target.starts_with("pingora_proxy::")
    }
}

/// Finds the event's `message` and checks it for the refused-head line.
#[derive(Default)]
struct Message {
    refused: Option<&'static str>,
}

/// The first [`Head::CAPACITY`] bytes of a formatted message, without allocating: formatting
/// stops there (every debug line of pingora's proxy crate passes through this check).
struct Head {
    buf: [u8; Head::CAPACITY],
    len: usize,
}

impl Head {
    const CAPACITY: usize = 192;

    fn text(&self) -> &str {
        // Cut at a character boundary: the buffer may end inside one.
        let mut end = self.len;
        while std::str::from_utf8(&self.buf[..end]).is_err() {
            end -= 1;
        }
        std::str::from_utf8(&self.buf[..end]).unwrap_or_default()
    }
}

impl std::fmt::Write for Head {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = Self::CAPACITY - self.len;
        let n = room.min(s.len());
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            return Err(std::fmt::Error); // full: stop formatting
        }
        Ok(())
    }
}

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() != "message" {
            return;
        }
        let mut head = Head {
            buf: [0; Head::CAPACITY],
            len: 0,
        };
        let _ = std::fmt::write(&mut head, format_args!("{value:?}"));
        if let Some(rest) = head.text().strip_prefix(REFUSED_HEAD_PREFIX) {
            self.refused = Some(if rest.contains("InvalidHTTPHeader") {
                "malformed_head"
            } else {
                "connection_error"
            });
        }
    }
}

impl<S: Subscriber> Layer<S> for RefusedHeads {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        // A record bridged from the `log` crate carries its real target in its fields; the
        // event's own metadata says `log`.
        let normalized = event.normalized_metadata();
        let metadata = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if !Self::watched(metadata.target()) {
            return;
        }
        let mut message = Message::default();
        event.record(&mut message);
        if let Some(reason) = message.refused {
            crate::metrics::global()
                .refused_by_pingora
                .with_label_values(&[reason])
                .inc();
        }
    }
}

/// The filter for [`RefusedHeads`]: pingora's proxy crate at debug level (the malformed-head
/// line is a debug line), nothing else.
pub fn refused_heads_filter() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new().with_target("pingora_proxy", tracing::Level::DEBUG)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    fn count(reason: &str) -> u64 {
        crate::metrics::global()
            .refused_by_pingora
            .with_label_values(&[reason])
            .get()
    }

    /// One test (the counter is process-wide): the layer counts pingora's refused-head line,
    /// and nothing else, whether it comes as a `tracing` event or (as pingora sends it) through
    /// the `log` bridge the operational log installs.
    #[test]
    fn pingoras_refused_head_line_is_counted_and_nothing_else() {
        let (malformed, broken) = (count("malformed_head"), count("connection_error"));
        let scoped =
            tracing_subscriber::registry().with(RefusedHeads.with_filter(refused_heads_filter()));
        tracing::subscriber::with_default(scoped, || {
            tracing::debug!(target: "pingora_proxy", "Fail to proxy: InvalidHTTPHeader context: bad, downstream session type: H1");
            tracing::error!(target: "pingora_proxy", "Fail to proxy: ReadError, downstream session type: H1");
            tracing::debug!(target: "pingora_proxy", "Successfully get a new request");
            tracing::debug!(target: "pingora_core", "Fail to proxy: InvalidHTTPHeader");
            tracing::debug!(target: "auditgate", "Fail to proxy: InvalidHTTPHeader");
        });
        assert_eq!(count("malformed_head"), malformed + 1);
        assert_eq!(count("connection_error"), broken + 1);

        let global =
            tracing_subscriber::registry().with(RefusedHeads.with_filter(refused_heads_filter()));
        tracing::subscriber::set_global_default(global).unwrap();
        tracing_log::LogTracer::builder()
            .with_max_level(log::LevelFilter::Debug)
            .init()
            .unwrap();
        log::debug!(target: "pingora_proxy", "Fail to proxy: {} context: x, downstream session type: H1", "InvalidHTTPHeader");
        log::debug!(target: "pingora_proxy", "Successfully get a new request");
        log::debug!(target: "pingora_core", "Fail to proxy: InvalidHTTPHeader");
        assert_eq!(count("malformed_head"), malformed + 2);
        assert_eq!(count("connection_error"), broken + 1);
    }
}
