//! Bounds on what requests can write into the journal (`[records]`,
//! [`crate::config::records::RecordsConfig`]): each copied field cut to a size, and a flood of
//! requests nobody authenticated turned into one summary record per client IP per interval.
//!
//! Guarantees:
//! * **No field is unbounded.** The path, query, user agent and each forwarded hop are cut to
//!   their bound, and at most `max_forwarded_hops` hops are kept (the nearest); the record's
//!   `truncated` map names each cut field with its original length (or hop count).
//! * **A flood cannot fill the disk.** A request refused for want of a valid token gets a record
//!   of its own while its client IP's token bucket (`unauthenticated_per_ip_per_sec`, burst
//!   `unauthenticated_burst`) and the bucket of all such requests
//!   (`unauthenticated_total_per_sec`) have tokens; beyond that it is answered exactly the same
//!   but only counted into its client IP's summary, written as one record per interval
//!   (count, first and last time, reasons). So unauthenticated requests add at most the total
//!   rate (plus bursts) of records per second, plus one summary per client IP per interval,
//!   and at most `max_summarised_clients` summaries (the rest share one, client IP `*`).
//! * **No authenticated access is summarised.** Only requests whose record would say
//!   `unauthenticated` are ever counted instead of recorded; the caller checks that.
//! * Summaries are counted (`auditgate_summarised_requests_total`) as they are taken, and
//!   written by the server's background task; at shutdown the last interval's are written
//!   before the journal closes.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use crate::config::records::RecordsConfig;
use crate::journal::Journal;
use crate::record::{format_ts, Event, GatewayId, NetworkVector, Outcome, RequestSummary, Who};

/// `s` cut to at most `max` bytes at a character boundary, and its original length in bytes
/// when it was cut.
pub fn clip(s: &str, max: usize) -> (String, Option<u64>) {
    if s.len() <= max {
        return (s.to_string(), None);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (s[..end].to_string(), Some(s.len() as u64))
}

/// A token bucket: `rate` tokens a second, at most `burst`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            last: now,
        }
    }

    /// Take one token if there is one.
    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The requests of one client IP counted instead of recorded during an interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// How many.
    pub count: u64,
    /// When the first and the last of them arrived.
    pub first: SystemTime,
    /// When the last of them arrived.
    pub last: SystemTime,
    /// How many were refused for each reason (the refusal's error code).
    pub reasons: BTreeMap<&'static str, u64>,
}

struct State {
    buckets: lru::LruCache<IpAddr, Bucket>,
    total: Bucket,
    /// `None`: the summary shared by the client IPs beyond `max_summarised_clients`.
    summaries: HashMap<Option<IpAddr>, Summary>,
}

/// Decides which unauthenticated requests get a record of their own, and keeps the summaries
/// of the others (see the module docs).
pub struct FloodGuard {
    per_ip_rate: f64,
    per_ip_burst: f64,
    total_rate: f64,
    total_burst: f64,
    max_clients: usize,
    state: Mutex<State>,
}

/// How many client IPs' buckets are remembered; a forgotten IP starts again with a full bucket
/// (the total bucket still bounds them all).
const BUCKETS: usize = 65_536;

impl FloodGuard {
    /// A guard with the rates of `cfg`.
    pub fn new(cfg: &RecordsConfig) -> FloodGuard {
        let now = Instant::now();
        let total_rate = f64::from(cfg.unauthenticated_total_per_sec);
        FloodGuard {
            per_ip_rate: f64::from(cfg.unauthenticated_per_ip_per_sec),
            per_ip_burst: f64::from(cfg.unauthenticated_burst),
            total_rate,
            total_burst: 2.0 * total_rate,
            max_clients: cfg.max_summarised_clients,
            state: Mutex::new(State {
                buckets: lru::LruCache::new(
                    NonZeroUsize::new(BUCKETS).unwrap_or(NonZeroUsize::MIN),
                ),
                total: Bucket::full(2.0 * total_rate, now),
                summaries: HashMap::new(),
            }),
        }
    }

    /// Whether an unauthenticated request from `ip`, refused with `reason`, gets a record of its
    /// own. When not, it has been counted into `ip`'s summary (and in
    /// `auditgate_summarised_requests_total`).
    pub fn admit(&self, ip: IpAddr, reason: &'static str) -> bool {
        let now = Instant::now();
        let Ok(mut state) = self.state.lock() else {
            return true; // a poisoned lock: records rather than silence
        };
        let (rate, burst) = (self.per_ip_rate, self.per_ip_burst);
        let bucket = state
            .buckets
            .get_or_insert_mut(ip, || Bucket::full(burst, now));
        let ip_ok = bucket.take(rate, burst, now);
        let total_ok = ip_ok && {
            let (rate, burst) = (self.total_rate, self.total_burst);
            state.total.take(rate, burst, now)
        };
        if total_ok {
            return true;
        }
        let key = if state.summaries.contains_key(&Some(ip))
            || state.summaries.len() < self.max_clients
        {
            Some(ip)
        } else {
            None
        };
        let at = SystemTime::now();
        let summary = state.summaries.entry(key).or_insert_with(|| Summary {
            count: 0,
            first: at,
            last: at,
            reasons: BTreeMap::new(),
        });
        summary.count += 1;
        summary.last = at;
        *summary.reasons.entry(reason).or_default() += 1;
        crate::metrics::global()
            .summarised_requests
            .with_label_values(&[reason])
            .inc();
        false
    }

    /// Every summary collected since the last call (`None`: the shared one, client IP `*`).
    pub fn take(&self) -> Vec<(Option<IpAddr>, Summary)> {
        let Ok(mut state) = self.state.lock() else {
            return Vec::new();
        };
        let mut all: Vec<_> = state.summaries.drain().collect();
        all.sort_by_key(|(ip, s)| (s.first, *ip));
        all
    }
}

/// Writes the [`FloodGuard`]'s summaries into the journal: every `summary_interval_secs` on
/// the server's background runtime, and once more before the journal closes.
#[derive(Clone)]
pub struct SummaryWriter {
    /// The summaries' source.
    pub flood: std::sync::Arc<FloodGuard>,
    /// Where they go.
    pub journal: Journal,
    /// This gateway's node name, for the records' `gateway.node`.
    pub node: String,
}

impl SummaryWriter {
    /// Write the summaries due, every `interval`, for the life of the process.
    pub async fn run(self, interval: std::time::Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.tick().await; // the first tick is immediate
        loop {
            tick.tick().await;
            for event in self.events() {
                self.count(self.journal.append(&event).await.map(|_| ()));
            }
        }
    }

    /// Write the summaries due now, blocking (at shutdown, before the journal closes).
    pub fn flush_blocking(&self) {
        for event in self.events() {
            self.count(self.journal.append_blocking(&event).map(|_| ()));
        }
    }

    fn count(&self, written: Result<(), crate::journal::JournalError>) {
        match written {
            Ok(()) => crate::metrics::global().summary_records.inc(),
            Err(e) => tracing::error!(
                reason = e.category(),
                "the journal refused a summary record; its requests stay counted in auditgate_summarised_requests_total"
            ),
        }
    }

    /// One summary record per client IP with requests counted since the last call.
    fn events(&self) -> Vec<Event> {
        self.flood
            .take()
            .into_iter()
            .map(|(ip, s)| summary_event(&self.node, ip, &s))
            .collect()
    }
}

/// The record of one client IP's summarised requests.
fn summary_event(node: &str, ip: Option<IpAddr>, s: &Summary) -> Event {
    let client = ip.map_or_else(|| "*".to_string(), |ip| ip.to_string());
    let net = NetworkVector {
        client_ip: client.clone(),
        peer_ip: client,
        gateway: GatewayId {
            node: node.to_string(),
            listener: "*".into(),
        },
        ..NetworkVector::default()
    };
    let who = Who::Unauthenticated {
        reason: "summarised".into(),
    };
    let mut event = Event::bare(
        uuid::Uuid::new_v4().to_string(),
        who,
        crate::rules::REJECTED_RULE,
        net,
        crate::clock::current(),
        format_ts(s.first),
    );
    event.outcome = Some(Outcome {
        status: 401,
        code: Outcome::code_for_status(401),
        error: Some("summarised".into()),
        ..Outcome::default()
    });
    event.summary = Some(RequestSummary {
        count: s.count,
        first: format_ts(s.first),
        last: format_ts(s.last),
        reasons: s.reasons.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
    });
    event
}

/// Cut every field copied from the request to its `[records]` bound, and note in the record
/// what was cut (its original length; for the forwarded chain, the number of hops).
pub fn bound_fields(event: &mut Event, bounds: &RecordsConfig) {
    let mut cut = std::collections::BTreeMap::new();
    let mut bound = |name: &str, value: &mut String, max: usize| {
        let (kept, original) = clip(value, max);
        if let Some(len) = original {
            *value = kept;
            let longest = cut.entry(name.to_string()).or_insert(0u64);
            *longest = (*longest).max(len);
        }
    };
    bound("path", &mut event.path, bounds.max_path_bytes);
    if let Some(q) = event.query.as_mut() {
        bound("query", q, bounds.max_query_bytes);
    }
    if let Some(q) = event.forwarded_query.as_mut() {
        bound("forwarded_query", q, bounds.max_query_bytes);
    }
    if let Some(ua) = event.net.user_agent.as_mut() {
        bound("user_agent", ua, bounds.max_header_bytes);
    }
    for hop in &mut event.net.forwarded_chain {
        bound("forwarded_hop", hop, bounds.max_header_bytes);
    }
    let hops = event.net.forwarded_chain.len();
    if hops > bounds.max_forwarded_hops {
        // The hops nearest the gateway are the ones the trusted proxies wrote.
        event
            .net
            .forwarded_chain
            .drain(..hops - bounds.max_forwarded_hops);
        cut.insert("forwarded_chain".to_string(), hops as u64);
    }
    event.truncated = cut;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(per_ip: u32, burst: u32, total: u32, clients: usize) -> RecordsConfig {
        RecordsConfig {
            unauthenticated_per_ip_per_sec: per_ip,
            unauthenticated_burst: burst,
            unauthenticated_total_per_sec: total,
            max_summarised_clients: clients,
            ..RecordsConfig::default()
        }
    }

    #[test]
    fn fields_are_cut_at_a_character_boundary_and_say_how_long_they_were() {
        assert_eq!(clip("abc", 3), ("abc".to_string(), None));
        assert_eq!(clip("abcd", 3), ("abc".to_string(), Some(4)));
        // `é` is two bytes: never cut in half.
        assert_eq!(clip("aé", 2), ("a".to_string(), Some(3)));
    }

    #[test]
    fn one_client_beyond_its_burst_is_summarised_and_others_are_not() {
        let guard = FloodGuard::new(&cfg(1, 5, 1000, 10));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let recorded = (0..100).filter(|_| guard.admit(a, "missing_token")).count();
        // The burst, and perhaps a token refilled while the loop ran.
        assert!((5..=6).contains(&recorded), "{recorded}");
        assert!(
            guard.admit(b, "invalid_token"),
            "another client keeps its own bucket"
        );
        let taken = guard.take();
        assert_eq!(taken.len(), 1);
        let (ip, s) = &taken[0];
        assert_eq!(*ip, Some(a));
        assert_eq!(s.count, 100 - recorded as u64);
        assert_eq!(s.reasons["missing_token"], s.count);
        assert!(s.first <= s.last);
        assert!(guard.take().is_empty(), "taken once");
    }

    #[test]
    fn the_total_rate_bounds_many_clients_and_the_summaries_are_bounded_too() {
        let guard = FloodGuard::new(&cfg(1000, 1000, 10, 3));
        let mut recorded = 0;
        for i in 0..200u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0xC000_0200 + i));
            if guard.admit(ip, "missing_token") {
                recorded += 1;
            }
        }
        // The total bucket holds twice the rate.
        assert!((20..=21).contains(&recorded), "{recorded}");
        let taken = guard.take();
        // Three client IPs have summaries of their own, the rest share one.
        assert_eq!(taken.len(), 4);
        assert_eq!(taken.iter().filter(|(ip, _)| ip.is_none()).count(), 1);
        let counted: u64 = taken.iter().map(|(_, s)| s.count).sum();
        assert_eq!(counted + recorded, 200);
    }
}
