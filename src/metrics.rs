//! The gateway's Prometheus metrics: one process-wide set, registered once.
//!
//! Owns every metric name, type, help text and label set. Guarantees:
//!
//! * **No PHI in a label.** Every label value comes from a small fixed set defined in code:
//!   the CRUDE action letter, an HTTP status class, a failure reason code, an upload kind and
//!   result. No user, patient, path, query, IP or token ever becomes a label value; the
//!   functions here take `&'static str` for reasons so a runtime string cannot slip in.
//! * **Cheap on the request path.** Counters and histograms are atomics; no lock is taken when a
//!   request is counted.
//! * **States that go stale still move.** Ages (oldest unshipped segment, clock error) are
//!   computed when `/metrics` is scraped, from timestamps the components store, so a stuck
//!   archiver shows a growing age even though it updates nothing.
//!
//! Metrics are process-wide ([`global`]); tests that run several journals in one process share
//! them, which is harmless for counters and is why integration tests read metrics from a
//! gateway process of their own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The results `auditgate_audit_api_requests_total` counts.
pub const AUDIT_API_RESULTS: [&str; 7] = [
    "ok",
    "unauthenticated",
    "forbidden",
    "bad_request",
    "not_found",
    "unavailable",
    "failed",
];

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,

    // --- requests
    /// `auditgate_requests_total{action, outcome}`.
    pub requests: IntCounterVec,
    /// `auditgate_request_duration_seconds{action}`.
    pub request_duration: HistogramVec,
    /// The children of `requests` for every action × outcome (index `action * 5 + outcome`)
    /// and of `request_duration` for every action, resolved once: counting a request then
    /// hashes no label and takes no lock.
    request_counters: Vec<IntCounter>,
    request_histograms: Vec<Histogram>,
    /// `auditgate_identity_failures_total{reason}`.
    pub identity_failures: IntCounterVec,
    /// `auditgate_rejected_requests_total{reason}`.
    pub rejected_requests: IntCounterVec,
    /// `auditgate_unmatched_routes_total`.
    pub unmatched_routes: IntCounter,
    /// `auditgate_refused_by_pingora_total{reason}`.
    pub refused_by_pingora: IntCounterVec,
    /// `auditgate_summarised_requests_total{reason}`.
    pub summarised_requests: IntCounterVec,
    /// `auditgate_summary_records_total`.
    pub summary_records: IntCounter,
    /// `auditgate_fail_closed_refusals_total{reason}`.
    pub fail_closed_refusals: IntCounterVec,
    /// `auditgate_upstream_errors_total{kind}`.
    pub upstream_errors: IntCounterVec,

    // --- attribution (the buffered path)
    /// `auditgate_buffered_requests_total`.
    pub buffered_requests: IntCounter,
    /// `auditgate_buffered_in_progress`: buffered exchanges holding a slot now.
    pub buffered_in_progress: IntGauge,
    /// `auditgate_buffered_waiting`: requests waiting for a buffered slot now.
    pub buffered_waiting: IntGauge,
    /// `auditgate_buffered_bytes`: bytes buffered exchanges hold of the budget now.
    pub buffered_bytes: IntGauge,
    /// `auditgate_pre_image_reads_total{result}`.
    pub pre_image_reads: IntCounterVec,
    /// `auditgate_inspected_bytes_total{part}`, and its two children, resolved once (the
    /// buffered path counts every request).
    pub inspected_bytes: IntCounterVec,
    /// `auditgate_inspected_request_bytes_total`.
    pub inspected_request_bytes: IntCounter,
    /// `auditgate_inspected_response_bytes_total`.
    pub inspected_response_bytes: IntCounter,
    /// `auditgate_extraction_duration_seconds`.
    pub extraction_seconds: Histogram,
    /// `auditgate_attribution_gaps_total{gap}`.
    pub attribution_gaps: IntCounterVec,

    // --- journal
    /// `auditgate_journal_append_duration_seconds`.
    pub journal_append_duration: Histogram,
    /// `auditgate_journal_batch_records`.
    pub journal_batch_records: Histogram,
    /// `auditgate_journal_fsync_duration_seconds`.
    pub journal_fsync_duration: Histogram,
    /// `auditgate_journal_records_written_total`.
    pub journal_records: IntCounter,
    /// `auditgate_journal_bytes_written_total`.
    pub journal_bytes: IntCounter,
    /// `auditgate_journal_failures_total{reason}`.
    pub journal_failures: IntCounterVec,
    /// `auditgate_journal_failed`.
    pub journal_failed: IntGauge,
    /// `auditgate_journal_head_seq`.
    pub journal_head_seq: IntGauge,
    /// `auditgate_journal_segments_sealed_total`.
    pub segments_sealed: IntCounter,

    // --- checkpoints
    /// `auditgate_checkpoints_signed_total`.
    pub checkpoints_signed: IntCounter,
    /// `auditgate_checkpoint_failures_total`.
    pub checkpoint_failures: IntCounter,
    /// `auditgate_checkpoint_tree_size`.
    pub checkpoint_tree_size: IntGauge,
    /// `auditgate_checkpoint_last_signed_timestamp_seconds`.
    pub checkpoint_last_signed: Gauge,

    // --- archive
    /// `auditgate_archive_uploads_total{kind, result}`.
    pub archive_uploads: IntCounterVec,
    /// `auditgate_archive_uploaded_bytes_total`.
    pub archive_bytes: IntCounter,
    /// `auditgate_columnar_copies_total{result}`.
    pub columnar_copies: IntCounterVec,
    /// `auditgate_columnar_written_bytes_total`.
    pub columnar_bytes: IntCounter,
    /// `auditgate_archive_backlog_segments`.
    pub archive_backlog_segments: IntGauge,
    /// `auditgate_archive_oldest_unshipped_age_seconds` (set at scrape time).
    archive_oldest_unshipped_age: Gauge,
    /// When the oldest sealed segment not yet shipped was sealed (unix seconds; 0: none).
    archive_oldest_unshipped_since: AtomicU64,
    /// `auditgate_archive_shipped_through_seq`.
    pub archive_shipped_through_seq: IntGauge,
    /// `auditgate_archive_last_success_timestamp_seconds`.
    pub archive_last_success: Gauge,
    /// `auditgate_archive_reachable`: 1 after a pass that succeeded, 0 after one that failed.
    pub archive_reachable: IntGauge,
    /// When the archive last started failing (unix seconds; 0: it is not failing).
    archive_failing_since: AtomicU64,

    // --- clock, identity, process
    /// `auditgate_clock_synchronized` (set at scrape time).
    clock_synchronized: IntGauge,
    /// `auditgate_clock_max_error_seconds` (set at scrape time).
    clock_max_error: Gauge,
    /// `auditgate_clock_estimated_error_seconds` (set at scrape time).
    clock_est_error: Gauge,
    /// `auditgate_jwks_refreshes_total{result}`.
    pub jwks_refreshes: IntCounterVec,
    /// `auditgate_jwks_last_success_timestamp_seconds`.
    pub jwks_last_success: Gauge,
    /// `auditgate_config_reloads_total{result}`.
    pub config_reloads: IntCounterVec,
    /// `auditgate_audit_api_requests_total{result}`.
    pub audit_api_requests: IntCounterVec,
    /// `auditgate_config_change_records_total{result}`.
    pub config_change_records: IntCounterVec,
    /// `auditgate_config_last_reload_success_timestamp_seconds`.
    pub config_last_reload_success: Gauge,
    /// `auditgate_geoip_build_timestamp_seconds{database}`.
    pub geoip_build_timestamp: prometheus::GaugeVec,
    /// `auditgate_geoip_reloads_total{database, result}`.
    pub geoip_reloads: IntCounterVec,
    /// `auditgate_tls_client_cert_rejected_total`.
    pub tls_client_cert_rejected: IntCounter,
    /// `auditgate_tls_cert_not_after_timestamp_seconds`.
    pub tls_cert_not_after: Gauge,
    /// `auditgate_build_info{version}`.
    pub build_info: IntGaugeVec,
}

/// Buckets for request and journal latencies: 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];
/// Buckets for records per fdatasync.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// The action labels (FHIR AuditEvent.action codes).
pub const ACTIONS: [&str; 5] = ["C", "R", "U", "D", "E"];
/// The outcome labels of `auditgate_requests_total`.
pub const OUTCOMES: [&str; 5] = ["2xx", "3xx", "4xx", "5xx", "aborted"];

/// Register a metric built from this file's constant names, help texts and labels.
#[allow(
    clippy::expect_used,
    reason = "an invalid or duplicate metric name is a bug in this file, found by its unit tests \
              and by any start; never a run-time condition"
)]
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("metric names, help texts and labels are valid constants");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    registered(registry, IntCounter::new(name, help))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    registered(registry, Gauge::new(name, help))
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    registered(registry, IntGauge::new(name, help))
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    registered(registry, Histogram::with_opts(opts))
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let request_duration = registered(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "auditgate_request_duration_seconds",
                    "Time from the request head to the end of the response, by action.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["action"],
            ),
        );
        let build_info = registered(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "auditgate_build_info",
                    "Always 1; the version is the label.",
                ),
                &["version"],
            ),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        #[cfg(target_os = "linux")]
        {
            // process_cpu_seconds_total, process_resident_memory_bytes, open fds...
            let _ = r.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        let inspected_bytes = counter_vec(
            &r,
            "auditgate_inspected_bytes_total",
            "Bytes of request and response bodies buffered for attribution, by part.",
            &["part"],
        );
        let mut m = Metrics {
            requests: counter_vec(
                &r,
                "auditgate_requests_total",
                "Requests answered, by CRUDE action and outcome (status class, or aborted when the client went away first).",
                &["action", "outcome"],
            ),
            request_duration,
            identity_failures: counter_vec(
                &r,
                "auditgate_identity_failures_total",
                "Requests refused because their bearer token was missing or invalid, by reason.",
                &["reason"],
            ),
            rejected_requests: counter_vec(
                &r,
                "auditgate_rejected_requests_total",
                "Requests refused before forwarding, by reason: an unacceptable path, a protocol upgrade, a body over attribution.max_body_bytes (oversize = refuse), or no buffered slot in time (gateway_busy).",
                &["reason"],
            ),
            refused_by_pingora: counter_vec(
                &r,
                "auditgate_refused_by_pingora_total",
                "Request heads the HTTP layer refused before any audit phase ran, so without a record (no peer is known there): malformed_head (400: an unparseable or oversize head), connection_error (the connection failed while the head was read).",
                &["reason"],
            ),
            summarised_requests: counter_vec(
                &r,
                "auditgate_summarised_requests_total",
                "Requests without a valid token answered without a record of their own, beyond [records]'s per-client or total rate: counted into their client IP's summary record instead (a flood).",
                &["reason"],
            ),
            summary_records: counter(
                &r,
                "auditgate_summary_records_total",
                "Summary records written (one per client IP per [records] summary_interval_secs with summarised requests).",
            ),
            unmatched_routes: counter(
                &r,
                "auditgate_unmatched_routes_total",
                "Requests no audit rule covered (refused with 403 when rules.unmatched = \"deny\").",
            ),
            fail_closed_refusals: counter_vec(
                &r,
                "auditgate_fail_closed_refusals_total",
                "Requests answered 503 and not forwarded (or responses withheld) because the journal could not take their record, by reason.",
                &["reason"],
            ),
            upstream_errors: counter_vec(
                &r,
                "auditgate_upstream_errors_total",
                "Requests the EHR did not answer, by kind (unreachable, timeout, other).",
                &["kind"],
            ),
            buffered_requests: counter(
                &r,
                "auditgate_buffered_requests_total",
                "Requests that took the buffered path (request body or response read for patients).",
            ),
            buffered_in_progress: int_gauge(
                &r,
                "auditgate_buffered_in_progress",
                "Buffered exchanges in progress (each holds one of attribution.max_buffered_requests slots).",
            ),
            pre_image_reads: counter_vec(
                &r,
                "auditgate_pre_image_reads_total",
                "Reads of the current version of a resource before a delete, patch or update changes it (attribution.pre_image_reads), by result: ok, absent (404/410: nothing to change), failed (the intent record says partial, gap no_pre_image).",
                &["result"],
            ),
            buffered_bytes: int_gauge(
                &r,
                "auditgate_buffered_bytes",
                "Bytes the buffered exchanges hold now of attribution.max_buffered_bytes (counted in KiB steps).",
            ),
            buffered_waiting: int_gauge(
                &r,
                "auditgate_buffered_waiting",
                "Requests waiting for a buffered slot; one that waits attribution.buffered_wait_secs is refused with 503 gateway_busy.",
            ),
            inspected_request_bytes: inspected_bytes.with_label_values(&["request"]),
            inspected_response_bytes: inspected_bytes.with_label_values(&["response"]),
            inspected_bytes,
            extraction_seconds: histogram(
                &r,
                "auditgate_extraction_duration_seconds",
                "Time to find the patients in one request or response body.",
                LATENCY_BUCKETS,
            ),
            attribution_gaps: counter_vec(
                &r,
                "auditgate_attribution_gaps_total",
                "Outcome records whose attribution is partial, by reason (too_large, not_json, ...).",
                &["gap"],
            ),
            journal_append_duration: histogram(
                &r,
                "auditgate_journal_append_duration_seconds",
                "Time from handing a record to the journal to its fdatasync returning.",
                LATENCY_BUCKETS,
            ),
            journal_batch_records: histogram(
                &r,
                "auditgate_journal_batch_records",
                "Records committed by one write + fdatasync (group commit).",
                BATCH_BUCKETS,
            ),
            journal_fsync_duration: histogram(
                &r,
                "auditgate_journal_fsync_duration_seconds",
                "Time of one batch's write + fdatasync.",
                LATENCY_BUCKETS,
            ),
            journal_records: counter(
                &r,
                "auditgate_journal_records_written_total",
                "Records made durable in the journal.",
            ),
            journal_bytes: counter(
                &r,
                "auditgate_journal_bytes_written_total",
                "Bytes made durable in the journal.",
            ),
            journal_failures: counter_vec(
                &r,
                "auditgate_journal_failures_total",
                "Times the journal stopped taking records (write, sync or seal failed), by reason. It refuses every record until restart.",
                &["reason"],
            ),
            journal_failed: int_gauge(
                &r,
                "auditgate_journal_failed",
                "1 when the journal refuses records (every request is answered 503), else 0.",
            ),
            journal_head_seq: int_gauge(
                &r,
                "auditgate_journal_head_seq",
                "Sequence number of the newest durable record.",
            ),
            segments_sealed: counter(
                &r,
                "auditgate_journal_segments_sealed_total",
                "Journal segments sealed (and so ready to archive).",
            ),
            checkpoints_signed: counter(
                &r,
                "auditgate_checkpoints_signed_total",
                "Signed checkpoints stored on local disk.",
            ),
            checkpoint_failures: counter(
                &r,
                "auditgate_checkpoint_failures_total",
                "Checkpoints that could not be signed or stored.",
            ),
            checkpoint_tree_size: int_gauge(
                &r,
                "auditgate_checkpoint_tree_size",
                "Tree size (records) of the newest stored checkpoint.",
            ),
            checkpoint_last_signed: gauge(
                &r,
                "auditgate_checkpoint_last_signed_timestamp_seconds",
                "Unix time the newest checkpoint was stored (heartbeats keep it moving while idle).",
            ),
            archive_uploads: counter_vec(
                &r,
                "auditgate_archive_uploads_total",
                "Objects sent to the archive, by kind (segment, checkpoint, columnar, seal) and result (created, already_present, conflict, failed).",
                &["kind", "result"],
            ),
            archive_bytes: counter(
                &r,
                "auditgate_archive_uploaded_bytes_total",
                "Bytes of objects created in the archive (compressed size).",
            ),
            columnar_copies: counter_vec(
                &r,
                "auditgate_columnar_copies_total",
                "Columnar (Parquet) copies of sealed segments, by result (written, failed).",
                &["result"],
            ),
            columnar_bytes: counter(
                &r,
                "auditgate_columnar_written_bytes_total",
                "Bytes of Parquet copies written beside sealed segments.",
            ),
            archive_backlog_segments: int_gauge(
                &r,
                "auditgate_archive_backlog_segments",
                "Sealed segments not yet confirmed shipped and locked.",
            ),
            archive_oldest_unshipped_age: gauge(
                &r,
                "auditgate_archive_oldest_unshipped_age_seconds",
                "Age of the oldest sealed segment not yet confirmed shipped (0: none waiting).",
            ),
            archive_oldest_unshipped_since: AtomicU64::new(0),
            archive_shipped_through_seq: int_gauge(
                &r,
                "auditgate_archive_shipped_through_seq",
                "Every record up to this sequence number is in the archive, locked.",
            ),
            archive_last_success: gauge(
                &r,
                "auditgate_archive_last_success_timestamp_seconds",
                "Unix time of the archiver's last pass that succeeded.",
            ),
            archive_reachable: int_gauge(
                &r,
                "auditgate_archive_reachable",
                "1 when the archiver's last pass succeeded, 0 when it failed.",
            ),
            archive_failing_since: AtomicU64::new(0),
            clock_synchronized: int_gauge(
                &r,
                "auditgate_clock_synchronized",
                "1 when the kernel clock is NTP-synchronised, else 0.",
            ),
            clock_max_error: gauge(
                &r,
                "auditgate_clock_max_error_seconds",
                "The kernel's bound on the clock's error.",
            ),
            clock_est_error: gauge(
                &r,
                "auditgate_clock_estimated_error_seconds",
                "The kernel's estimate of the clock's error.",
            ),
            jwks_refreshes: counter_vec(
                &r,
                "auditgate_jwks_refreshes_total",
                "JWKS fetches, by result (ok, failed).",
                &["result"],
            ),
            jwks_last_success: gauge(
                &r,
                "auditgate_jwks_last_success_timestamp_seconds",
                "Unix time of the last JWKS fetch that succeeded.",
            ),
            config_reloads: counter_vec(
                &r,
                "auditgate_config_reloads_total",
                "Configuration reloads (SIGHUP), by result (ok, rejected).",
                &["result"],
            ),
            config_change_records: counter_vec(
                &r,
                "auditgate_config_change_records_total",
                "Records of the gateway's own configuration (start, reload, key change) written to the journal, by result (ok, failed).",
                &["result"],
            ),
            audit_api_requests: counter_vec(
                &r,
                "auditgate_audit_api_requests_total",
                "Requests to the audit listener, by result (ok, unauthenticated, forbidden, bad_request, not_found, unavailable, failed).",
                &["result"],
            ),
            config_last_reload_success: gauge(
                &r,
                "auditgate_config_last_reload_success_timestamp_seconds",
                "Unix time of the last configuration load that took effect (start or reload).",
            ),
            geoip_build_timestamp: registered(
                &r,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "auditgate_geoip_build_timestamp_seconds",
                        "When the loaded GeoIP database was built (its metadata's build epoch), by database (city, asn).",
                    ),
                    &["database"],
                ),
            ),
            geoip_reloads: counter_vec(
                &r,
                "auditgate_geoip_reloads_total",
                "Replaced GeoIP database files picked up (ok) or refused, the old one serving on (failed), by database.",
                &["database", "result"],
            ),
            tls_client_cert_rejected: counter(
                &r,
                "auditgate_tls_client_cert_rejected_total",
                "TLS handshakes refused because the client's certificate did not verify against tls.client_ca_file.",
            ),
            tls_cert_not_after: gauge(
                &r,
                "auditgate_tls_cert_not_after_timestamp_seconds",
                "When the TLS listener's certificate expires (0: no TLS listener).",
            ),
            build_info,
            request_counters: Vec::new(),
            request_histograms: Vec::new(),
            registry: r,
        };
        // The label values alerts and dashboards use export 0 from the start, so rates and
        // alerts work before the first event (others appear when they first happen).
        for action in ACTIONS {
            for outcome in OUTCOMES {
                let counter = m.requests.with_label_values(&[action, outcome]);
                m.request_counters.push(counter);
            }
            let histogram = m.request_duration.with_label_values(&[action]);
            m.request_histograms.push(histogram);
        }
        for result in ["written", "failed"] {
            m.columnar_copies.with_label_values(&[result]);
        }
        for kind in ["segment", "checkpoint", "columnar", "seal"] {
            for result in ["created", "already_present", "conflict", "failed"] {
                m.archive_uploads.with_label_values(&[kind, result]);
            }
        }
        for result in ["ok", "failed"] {
            m.jwks_refreshes.with_label_values(&[result]);
        }
        for reason in [
            "missing_token",
            "expired",
            "bad_signature",
            "unknown_issuer",
        ] {
            m.identity_failures.with_label_values(&[reason]);
            m.summarised_requests.with_label_values(&[reason]);
        }
        for reason in [
            "dot_segment",
            "encoded_slash",
            "upgrade_not_supported",
            "body_too_large",
            "gateway_busy",
            "device_id_required",
            "not_origin_form",
            "method_override",
            "unknown_method",
            "elements_not_audited",
            "summary_hides_patients",
            "graphql_not_audited",
        ] {
            m.rejected_requests.with_label_values(&[reason]);
        }
        for reason in ["failed", "backlog", "closed"] {
            m.fail_closed_refusals.with_label_values(&[reason]);
        }
        for result in ["ok", "absent", "failed"] {
            m.pre_image_reads.with_label_values(&[result]);
        }
        for reason in ["malformed_head", "connection_error"] {
            m.refused_by_pingora.with_label_values(&[reason]);
        }
        for kind in [
            "unreachable",
            "tls",
            "timeout",
            "response_too_large",
            "other",
        ] {
            m.upstream_errors.with_label_values(&[kind]);
        }
        for gap in crate::attribution::extract::Gap::ALL {
            m.attribution_gaps.with_label_values(&[gap.as_str()]);
        }
        for reason in ["write", "seal"] {
            m.journal_failures.with_label_values(&[reason]);
        }
        for result in ["ok", "rejected"] {
            m.config_reloads.with_label_values(&[result]);
        }
        for result in ["ok", "failed"] {
            m.config_change_records.with_label_values(&[result]);
        }
        for result in AUDIT_API_RESULTS {
            m.audit_api_requests.with_label_values(&[result]);
        }
        for database in ["city", "asn"] {
            for result in ["ok", "failed"] {
                m.geoip_reloads.with_label_values(&[database, result]);
            }
        }
        m.config_last_reload_success.set(unix_now());
        m
    }

    /// Count one finished request.
    pub fn observe_request(&self, action: &'static str, outcome: &'static str, took: Duration) {
        let a = ACTIONS.iter().position(|x| *x == action).unwrap_or(4);
        let o = OUTCOMES.iter().position(|x| *x == outcome).unwrap_or(4);
        self.request_counters[a * OUTCOMES.len() + o].inc();
        self.request_histograms[a].observe(took.as_secs_f64());
    }

    /// The archive's oldest unshipped segment was sealed at `sealed_at` (`None`: nothing waits).
    pub fn set_archive_oldest_unshipped(&self, sealed_at: Option<SystemTime>) {
        let secs = sealed_at
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs().max(1));
        self.archive_oldest_unshipped_since
            .store(secs, Ordering::Relaxed);
    }

    /// The archiver's pass succeeded (`true`) or failed.
    pub fn set_archive_pass(&self, ok: bool) {
        if ok {
            self.archive_reachable.set(1);
            self.archive_last_success.set(unix_now());
            self.archive_failing_since.store(0, Ordering::Relaxed);
        } else {
            self.archive_reachable.set(0);
            let _ = self.archive_failing_since.compare_exchange(
                0,
                unix_now() as u64,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// How long the archive has been failing without a successful pass (`None`: it is not).
    pub fn archive_failing_for(&self) -> Option<Duration> {
        match self.archive_failing_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_secs(
                (unix_now() as u64).saturating_sub(since),
            )),
        }
    }

    /// The text exposition of every metric, with scrape-time values brought up to date.
    pub fn render(&self) -> Vec<u8> {
        let now = unix_now() as u64;
        let since = self.archive_oldest_unshipped_since.load(Ordering::Relaxed);
        self.archive_oldest_unshipped_age.set(if since == 0 {
            0.0
        } else {
            now.saturating_sub(since) as f64
        });
        let clock = crate::clock::read();
        self.clock_synchronized.set(i64::from(clock.synced));
        self.clock_max_error.set(clock.max_error_ms as f64 / 1000.0);
        self.clock_est_error.set(clock.est_error_ms as f64 / 1000.0);
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            // Writing into a Vec does not fail; a metric family the encoder refuses is a bug.
            tracing::error!(error = %e, "could not encode the metrics");
        }
        out
    }
}

/// The Prometheus text format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Seconds since the Unix epoch, as a float.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The process-wide metrics, created (and registered) on first use.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The outcome label for an HTTP status the client was sent (`None`: nothing was sent).
pub fn outcome_class(status: Option<u16>) -> &'static str {
    match status {
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        _ => "aborted",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_documented_metric_and_parses() {
        let m = global();
        m.observe_request("R", "2xx", Duration::from_millis(3));
        m.set_archive_oldest_unshipped(Some(SystemTime::now() - Duration::from_secs(120)));
        let text = String::from_utf8(m.render()).unwrap();
        // Every metric named in the README's table is exported.
        let readme = include_str!("../README.md");
        let documented: Vec<&str> = readme
            .lines()
            .filter_map(|l| l.strip_prefix("| `auditgate_"))
            .filter_map(|l| l.split('`').next())
            .collect();
        assert!(documented.len() >= 30, "the README documents the metrics");
        for name in documented {
            let name = format!("auditgate_{name}");
            // Exported only for a configured database (a 0 would read as a stale database).
            if name == "auditgate_geoip_build_timestamp_seconds" {
                continue;
            }
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} is documented but not exported"
            );
        }
        // ... and every exported auditgate metric is documented.
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE auditgate_") {
                let name = rest.split(' ').next().unwrap();
                assert!(
                    readme.contains(&format!("| `auditgate_{name}`")),
                    "auditgate_{name} is exported but not documented in the README"
                );
            }
        }
        let age_line = text
            .lines()
            .find(|l| l.starts_with("auditgate_archive_oldest_unshipped_age_seconds "))
            .unwrap();
        let age: f64 = age_line.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(
            (119.0..=200.0).contains(&age),
            "age computed at scrape: {age}"
        );
        m.set_archive_oldest_unshipped(None);
    }

    #[test]
    fn outcome_classes_are_a_fixed_set() {
        assert_eq!(outcome_class(Some(200)), "2xx");
        assert_eq!(outcome_class(Some(304)), "3xx");
        assert_eq!(outcome_class(Some(401)), "4xx");
        assert_eq!(outcome_class(Some(503)), "5xx");
        assert_eq!(outcome_class(Some(101)), "aborted");
        assert_eq!(outcome_class(None), "aborted");
    }
}
