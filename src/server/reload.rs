//! Live configuration: what a SIGHUP reloads, and how a reload is checked before it is used.
//!
//! Owns building the [`Snapshot`] every request reads (identity, rules, network policy) and
//! swapping it into [`Live`] atomically. Guarantees:
//!
//! * **A request sees one configuration.** Each request takes the current snapshot when it
//!   starts and uses it in every phase; a reload in the middle changes nothing for it.
//! * **No request is dropped.** Listeners, connections and the journal are untouched by a
//!   reload; only the snapshot pointer changes.
//! * **A broken config never replaces a working one.** The new file is parsed and validated,
//!   its keys loaded (JWKS URLs fetched) and its rules compiled before the swap; any failure
//!   is logged with the reason (never a token or path from traffic) and counted as
//!   `auditgate_config_reloads_total{result="rejected"}`, and the old snapshot keeps serving.
//! * **GeoIP databases** are re-opened on SIGHUP, and between SIGHUPs whenever their files
//!   are replaced ([`watch_geoip_files`]).
//! * **What cannot change live is said.** `[server]`, `[upstream]`, `[journal]`,
//!   `[checkpoint]`, `[archive]`, `[admin]` and `[log]` need a restart (or a zero-downtime
//!   upgrade), as do `attribution.max_buffered_requests` and `attribution.buffered_wait_secs`;
//!   a reload that changes them applies the rest and logs a warning naming them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::{Config, ConfigError};
use crate::identity::Identity;
use crate::network::geoip::GeoIp;
use crate::network::vector::NetPolicy;
use crate::proxy::live::{Live, Snapshot};
use crate::rules::RuleSet;
use crate::server::changes::{ChangeRecorder, ReloadOutcome};

/// Why a reload was rejected (the old configuration keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file did not load or is not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The identity section's keys did not load.
    #[error("identity: {0}")]
    Identity(String),
    /// The rules did not load or compile.
    #[error("rules: {0}")]
    Rules(String),
    /// A GeoIP database did not open.
    #[error(transparent)]
    GeoIp(#[from] crate::network::geoip::GeoIpError),
    /// The TLS certificate, key or CA bundle did not load.
    #[error("tls: {0}")]
    Tls(#[from] crate::network::tls::TlsError),
}

impl ReloadError {
    /// A fixed label for logs.
    pub fn category(&self) -> &'static str {
        match self {
            ReloadError::Config(_) => "config",
            ReloadError::Identity(_) => "identity",
            ReloadError::Rules(_) => "rules",
            ReloadError::GeoIp(_) => "geoip",
            ReloadError::Tls(_) => "tls",
        }
    }
}

/// Build the request-time snapshot from a validated config.
pub async fn load_snapshot(config: &Config, base_dir: &Path) -> Result<Snapshot, ReloadError> {
    let identity = Identity::load(&config.identity, base_dir)
        .await
        .map_err(|e| ReloadError::Identity(e.to_string()))?;
    let rules = RuleSet::load(&config.rules, base_dir)
        .map_err(|e| ReloadError::Rules(e.to_string()))?
        .with_upstream(&config.upstream.url.authority);
    // A device-ID requirement naming no rule would silently require nothing.
    let known: std::collections::HashSet<String> =
        rules.rules().into_iter().map(|r| r.name).collect();
    if let Some(unknown) = config
        .network
        .require_device_id_rules
        .iter()
        .find(|r| *r != "*" && *r != crate::rules::UNMATCHED_RULE && !known.contains(*r))
    {
        return Err(ReloadError::Rules(format!(
            "network.require_device_id_rules names `{unknown}`, which no rule file defines"
        )));
    }
    if config.rules.unmatched == crate::rules::UnmatchedPolicy::Stream {
        tracing::warn!(
            "rules.unmatched = \"stream\": requests no rule covers are forwarded and their responses streamed unread; their records name no patient"
        );
    }
    if config.rules.method_override == crate::rules::MethodOverridePolicy::Classify {
        tracing::info!(
            "rules.method_override = \"classify\": method-override headers and _method are honoured and classified as the method they ask for"
        );
    }
    let geo = GeoIp::load(&config.geoip, base_dir)?.map(Arc::new);
    Ok(Snapshot {
        identity: Arc::new(identity),
        rules: Arc::new(rules),
        net: Arc::new(NetPolicy::new(&config.network)),
        geo,
        clock: config.clock.clone(),
        attribution: config.attribution.clone(),
    })
}

/// Whether two sections differ (compared as their serialised values).
fn differs<T: serde::Serialize>(a: &T, b: &T) -> bool {
    serde_json::to_value(a).ok() != serde_json::to_value(b).ok()
}

/// The sections a reload applies (identity, rules, network policy, GeoIP, clock policy, the
/// TLS certificate files) that differ between `old` and `new`.
pub fn applied_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if differs(&old.identity, &new.identity) {
        changed.push("identity");
    }
    if differs(&old.rules, &new.rules) {
        changed.push("rules");
    }
    if differs(&old.network, &new.network) {
        changed.push("network");
    }
    if differs(&old.geoip, &new.geoip) {
        changed.push("geoip");
    }
    if differs(&old.clock, &new.clock) {
        changed.push("clock");
    }
    if old.tls.cert_file != new.tls.cert_file || old.tls.key_file != new.tls.key_file {
        changed.push("tls.cert_file");
    }
    changed
}

/// The sections a reload cannot apply, by name, that differ between `old` and `new`.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if differs(&old.server, &new.server) {
        changed.push("server");
    }
    if differs(&old.upstream, &new.upstream) {
        changed.push("upstream");
    }
    if differs(&old.journal, &new.journal) {
        changed.push("journal");
    }
    if differs(&old.checkpoint, &new.checkpoint) {
        changed.push("checkpoint");
    }
    if differs(&old.archive, &new.archive) {
        changed.push("archive");
    }
    if differs(&old.admin, &new.admin) {
        changed.push("admin");
    }
    if differs(&old.records, &new.records) {
        changed.push("records");
    }
    if differs(&old.log, &new.log) {
        changed.push("log");
    }
    if differs(&old.columnar, &new.columnar) {
        changed.push("columnar");
    }
    if differs(&old.auditors, &new.auditors) {
        changed.push("auditors");
    }
    if differs(&old.audit_api, &new.audit_api) {
        changed.push("audit_api");
    }
    if differs(&old.console, &new.console) {
        changed.push("console");
    }
    // The buffered path's slots are made once, at start.
    if old.attribution.max_buffered_requests != new.attribution.max_buffered_requests {
        changed.push("attribution.max_buffered_requests");
    }
    if old.attribution.buffered_wait_secs != new.attribution.buffered_wait_secs {
        changed.push("attribution.buffered_wait_secs");
    }
    // Certificate, key and client-CA files are re-read; the listeners, the client-CA file's
    // path and the client-certificate mode are not.
    let listeners_of = |c: &Config| crate::network::tls::TlsConfig {
        cert_file: None,
        key_file: None,
        ..c.tls.clone()
    };
    if listeners_of(old) != listeners_of(new) {
        changed.push("tls");
    }
    changed
}

/// Reloads the configuration file into [`Live`] on request (SIGHUP).
pub struct Reloader {
    config_path: PathBuf,
    live: Arc<Live>,
    /// The configuration in effect (for the restart-only comparison).
    current: Mutex<Config>,
    /// The JWKS refresher of the identity in effect; replaced with it.
    refresher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The TLS listeners' certificate, when there are TLS listeners.
    tls_certs: Option<Arc<crate::network::tls::ServerCerts>>,
    /// Records each reload and key change in the journal (set once the journal is open).
    changes: std::sync::OnceLock<Arc<ChangeRecorder>>,
    /// One reload or key check at a time, so a key change a reload brings is recorded once,
    /// with the reload.
    serial: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// A reloader of the config file at `config_path` (now loaded as `config`), swapping into
    /// `live`.
    pub fn new(config_path: &Path, config: Config, live: Arc<Live>) -> Reloader {
        Reloader {
            config_path: config_path.to_path_buf(),
            live,
            current: Mutex::new(config),
            refresher: Mutex::new(None),
            tls_certs: None,
            changes: std::sync::OnceLock::new(),
            serial: tokio::sync::Mutex::new(()),
        }
    }

    /// Reload this certificate with the rest (SIGHUP).
    pub fn with_tls_certs(mut self, certs: Option<Arc<crate::network::tls::ServerCerts>>) -> Self {
        self.tls_certs = certs;
        self
    }

    /// Record every reload and key change from now on with `recorder` (once the journal is
    /// open; a second call changes nothing).
    pub fn record_changes_with(&self, recorder: Arc<ChangeRecorder>) {
        let _ = self.changes.set(recorder);
    }

    /// The configuration in effect (restart-only sections as the process started).
    pub fn current(&self) -> Config {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Check every `every` whether the token verification keys changed (a JWKS refresh), and
    /// record each change. Spawn once, after [`Reloader::record_changes_with`].
    pub async fn watch_keys(self: Arc<Self>, every: std::time::Duration) {
        loop {
            tokio::time::sleep(every).await;
            let Some(recorder) = self.changes.get() else {
                continue;
            };
            let _one_at_a_time = self.serial.lock().await;
            let identity = self.live.identity();
            if recorder.keys_changed(&identity) {
                recorder.keys_refreshed(&self.current(), &identity).await;
            }
        }
    }

    /// Start (or restart) the JWKS refresher of the identity in effect. Call inside a tokio
    /// runtime.
    pub fn start_refresher(&self) {
        let task = tokio::spawn(self.live.identity().run_refresher());
        if let Some(old) = self
            .refresher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(task)
        {
            old.abort();
        }
    }

    /// Load the file again and swap it in if every part loads. Returns the restart-only
    /// sections that changed (not applied).
    pub async fn reload(&self) -> Result<Vec<&'static str>, ReloadError> {
        let _one_at_a_time = self.serial.lock().await;
        let before = self.current();
        let result = self.reload_now().await;
        if let Some(recorder) = self.changes.get() {
            let after = self.current();
            let outcome = match &result {
                Ok(ignored) => ReloadOutcome {
                    config: &after,
                    changed: applied_changes(&before, &after),
                    not_applied: ignored.clone(),
                    error: None,
                },
                Err(e) => ReloadOutcome {
                    config: &after,
                    changed: Vec::new(),
                    not_applied: Vec::new(),
                    error: Some(e.to_string()),
                },
            };
            recorder.reloaded(outcome, &self.live.identity()).await;
        }
        result
    }

    async fn reload_now(&self) -> Result<Vec<&'static str>, ReloadError> {
        let metrics = crate::metrics::global();
        let result = async {
            let config = Config::load(&self.config_path)?;
            let snapshot = load_snapshot(&config, &Config::base_dir(&self.config_path)).await?;
            // A new certificate must load (and match its key) before anything is swapped.
            let pair = match &self.tls_certs {
                Some(_) => crate::network::tls::TlsMaterial::load(&config.tls)?,
                None => None,
            };
            Ok::<_, ReloadError>((config, snapshot, pair))
        }
        .await;
        match result {
            Ok((config, snapshot, pair)) => {
                let ignored = {
                    let mut current = self
                        .current
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let ignored = restart_only_changes(&current, &config);
                    // Keep comparing against what actually runs: restart-only sections stay.
                    let mut effective = current.clone();
                    effective.identity = config.identity;
                    effective.rules = config.rules;
                    effective.network = config.network;
                    effective.geoip = config.geoip;
                    effective.clock = config.clock;
                    effective.tls.cert_file = config.tls.cert_file;
                    effective.tls.key_file = config.tls.key_file;
                    *current = effective;
                    ignored
                };
                self.live.swap(snapshot);
                if let (Some(certs), Some(pair)) = (&self.tls_certs, pair) {
                    certs.replace(pair);
                }
                self.start_refresher();
                metrics.config_reloads.with_label_values(&["ok"]).inc();
                metrics
                    .config_last_reload_success
                    .set(crate::metrics::unix_now());
                if ignored.is_empty() {
                    tracing::info!(
                        "configuration reloaded: identity, rules, network policy and geoip databases in effect"
                    );
                } else {
                    tracing::warn!(
                        sections = ?ignored,
                        "configuration reloaded (identity, rules, network policy, geoip); these sections changed but need a restart and were NOT applied"
                    );
                }
                Ok(ignored)
            }
            Err(e) => {
                metrics
                    .config_reloads
                    .with_label_values(&["rejected"])
                    .inc();
                tracing::error!(
                    error = %e,
                    category = e.category(),
                    "configuration reload rejected; the previous configuration keeps serving"
                );
                Err(e)
            }
        }
    }

    /// Reload on every SIGHUP, for the life of `runtime`. The handler is installed before this
    /// returns (SIGHUP's default action would end the process).
    pub fn reload_on_sighup(
        self: Arc<Self>,
        runtime: &tokio::runtime::Runtime,
    ) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = {
            let _entered = runtime.enter();
            signal(SignalKind::hangup())?
        };
        runtime.spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = self.reload().await;
            }
        });
        Ok(())
    }
}

/// Re-open replaced GeoIP database files of the snapshot in effect, every
/// `geoip.check_interval_secs` (a SIGHUP opens them anew anyway). Spawn once.
pub async fn watch_geoip_files(live: Arc<Live>) {
    loop {
        let interval = live
            .current()
            .geo
            .as_ref()
            .map(|g| g.check_interval())
            .filter(|d| !d.is_zero());
        match interval {
            Some(every) => {
                tokio::time::sleep(every).await;
                if let Some(geo) = live.current().geo.clone() {
                    // Opening and checking a file is blocking work.
                    let _ = tokio::task::spawn_blocking(move || geo.reload_if_changed()).await;
                }
            }
            // Nothing to watch now; a reload may configure databases later.
            None => tokio::time::sleep(std::time::Duration::from_secs(5)).await,
        }
    }
}
