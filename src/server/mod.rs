//! Assembling the gateway process: config → journal, identity, rules → pingora server.
//!
//! Owns start-up order and its failure modes. Everything that can be checked before the first
//! request is checked here, and any failure stops start-up with a clear error (exit 2): the
//! journal directory must open and recover, keys must load, rules must compile. Only then does
//! the listener open, so the gateway never accepts a request it cannot record.

pub mod admin;

pub mod changes;
pub mod refused_heads;
pub mod reload;
pub mod signals;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, AtomicUsize};

use pingora::apps::HttpServerOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

use crate::config::Config;
use crate::console::api::AuditApi;
use crate::console::guard::Guard;
use crate::console::trail::TrailSources;
use crate::journal::{CheckpointTiming, Checkpointing, Journal, JournalError, RecoveryReport};
use crate::proxy::bounds::{FloodGuard, SummaryWriter};
use crate::proxy::live::Live;
use crate::proxy::Gateway;
use crate::server::admin::{AdminApp, Readiness};
use crate::server::reload::Reloader;
use crate::tlog::checkpoint::{CheckpointSigner, CheckpointVerifier};
use signals::{close_journal, DrainMonitor, Signals, JOURNAL_CLOSE_TIMEOUT};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The journal directory could not be opened or recovered.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    /// Identity, rules, GeoIP or TLS material did not load.
    #[error(transparent)]
    Load(#[from] crate::server::reload::ReloadError),
    /// The configuration is not valid.
    #[error(transparent)]
    Config(#[from] crate::config::error::ConfigError),
    /// The background runtime could not start.
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
    /// The archive cannot take objects (not reachable, or not WORM when it must be).
    #[error("archive: {0}")]
    Archive(#[from] crate::archive::ArchiveError),
    /// A listener's address is taken or not allowed.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        /// The address, as configured.
        addr: String,
        /// The config key it comes from (`server.listen`, `tls.listen`, `admin.listen`).
        what: &'static str,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
}

/// Load everything [`prepare`] loads except the journal (keys and JWKS, rules, GeoIP, TLS
/// material, the upstream's CA bundle, the checkpoint key), and drop it. For an upgrade this
/// runs before the new process takes the listening sockets: a new binary or configuration that
/// cannot start fails here, while the running process still serves.
pub fn preflight(config: &Config, base_dir: &std::path::Path) -> Result<(), StartError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(crate::server::reload::load_snapshot(config, base_dir))?;
    if let Some(ca) = &config.upstream.ca_file {
        crate::network::tls::load_certificates(ca)
            .map_err(crate::server::reload::ReloadError::from)?;
    }
    crate::network::tls::TlsMaterial::load(&config.tls)
        .map_err(crate::server::reload::ReloadError::from)?;
    CheckpointSigner::load(
        &config.checkpoint.key_file,
        config.checkpoint.create_key_if_missing,
        &format!("auditgate/{}", config.server.node),
    )
    .map_err(JournalError::from)?;
    Ok(())
}

/// Check that every address the process listens on can be bound now: a port already in use is
/// a start error with its address, not a service that silently never runs. (Not for an
/// upgrade, where the running process holds them and hands them over.)
pub fn check_listen_addresses(config: &Config) -> Result<(), StartError> {
    let mut addresses: Vec<(&str, &'static str)> = config
        .server
        .listen
        .iter()
        .map(|a| (a.as_str(), "server.listen"))
        .chain(config.tls.listen.iter().map(|a| (a.as_str(), "tls.listen")))
        .collect();
    if config.admin.enabled {
        addresses.push((config.admin.listen.as_str(), "admin.listen"));
    }
    if config.audit_api.enabled {
        addresses.push((config.audit_api.listen.as_str(), "audit_api.listen"));
    }
    if config.console.enabled {
        addresses.push((config.console.listen.as_str(), "console.listen"));
    }
    for (addr, what) in addresses {
        std::net::TcpListener::bind(addr).map_err(|source| StartError::Listen {
            addr: addr.to_string(),
            what,
            source,
        })?;
    }
    Ok(())
}

/// What `prepare` built: the gateway logic and the runtime that runs its background tasks.
pub struct Prepared {
    /// The proxy, ready to serve.
    pub gateway: Gateway,
    /// What journal recovery found and did at this start.
    pub recovery: RecoveryReport,
    /// Runs the JWKS refresher and the archiver; kept alive for the life of the process.
    pub background: tokio::runtime::Runtime,
    /// The archiver's counters, when an archive is configured.
    pub archive_stats: Option<Arc<crate::archive::ArchiveStats>>,
    /// The admin listener's application (`/metrics`, `/healthz`, `/readyz`).
    pub admin: AdminApp,
    /// The TLS listeners' certificate, when there are TLS listeners.
    pub tls_certs: Option<Arc<crate::network::tls::ServerCerts>>,
    /// Writes the flood summaries (also once more before the journal closes).
    pub summaries: SummaryWriter,
    /// The audit listener's application, when `[audit_api]` is enabled.
    pub audit_api: Option<AuditApi>,
    /// The console's application, when `[console]` is enabled.
    pub console: Option<crate::console::web::Console>,
    /// Directories removed once the gateway has stopped and closed its journal (the demo's
    /// temporary directory: its rules, key and journal end with the process). Empty for a
    /// configured gateway.
    pub remove_at_exit: Vec<std::path::PathBuf>,
}

/// Open the journal, load keys and rules: everything but the listener. With `config_path`,
/// SIGHUP reloads identity, rules and network policy from that file. `journal_wait`: how long
/// to wait for another process to release the journal directory (an upgrade: the old process
/// releases it once it has drained); zero fails at once.
pub fn prepare(
    config: &Config,
    base_dir: &std::path::Path,
    config_path: Option<&std::path::Path>,
    journal_wait: Duration,
) -> Result<Prepared, StartError> {
    let background = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("auditgate-bg")
        .enable_all()
        .build()?;
    let live = Arc::new(Live::new(
        background.block_on(crate::server::reload::load_snapshot(config, base_dir))?,
    ));
    // TLS listeners' certificate: checked now, reloaded on SIGHUP.
    let tls_certs = if config.tls.listen.is_empty()
        && !(config.audit_api.enabled && config.audit_api.tls)
        && !(config.console.enabled && config.console.tls)
    {
        None
    } else {
        crate::network::tls::TlsMaterial::load(&config.tls)
            .map_err(crate::server::reload::ReloadError::from)?
            .map(|m| Arc::new(crate::network::tls::ServerCerts::new(m)))
    };
    let reloader = Arc::new(
        Reloader::new(
            config_path.unwrap_or(std::path::Path::new("")),
            config.clone(),
            live.clone(),
        )
        .with_tls_certs(tls_certs.clone()),
    );
    // JWKS URLs are refetched every `jwks_refresh_secs` for the life of the process (a key the
    // IdP withdraws stops being trusted within that time); a reload restarts the refresher.
    {
        let _entered = background.enter();
        reloader.start_refresher();
    }
    if config_path.is_some() {
        reloader.clone().reload_on_sighup(&background)?;
    }
    background.spawn(crate::server::reload::watch_geoip_files(live.clone()));
    let upstream_ca = match (&config.upstream.ca_file, config.upstream.url.tls) {
        (Some(path), true) => Some(Arc::new(
            crate::network::tls::load_certificates(path)
                .map_err(crate::server::reload::ReloadError::from)?
                .into_boxed_slice(),
        )),
        _ => None,
    };
    if config.upstream.url.tls && config.upstream.insecure_skip_verify {
        tracing::error!(
            "upstream.insecure_skip_verify is on: the EHR's certificate is NOT checked, so anyone on the path can read and change patient data; never use this in production"
        );
    }
    // The archive must be able to take locked objects before anything is recorded.
    let archive_store = background.block_on(crate::archive::open_store(&config.archive));
    let mut archive_checked = false;
    match &archive_store {
        Some(store) => match background.block_on(async {
            // An endpoint that accepts connections but never answers must not hold the start.
            tokio::time::timeout(Duration::from_secs(15), store.check_ready())
                .await
                .unwrap_or_else(|_| {
                    Err(crate::archive::ArchiveError::Unreachable {
                        target: store.target(),
                        detail: "no answer within 15 s".into(),
                    })
                })
        }) {
            Ok(()) => archive_checked = true,
            // A bucket that cannot lock objects is a configuration error: refuse to start.
            Err(e @ crate::archive::ArchiveError::NotLocked { .. }) => return Err(e.into()),
            // S3 unreachable right now: the local journal is the durable store, so serve; the
            // archiver checks the bucket again before it ships anything.
            Err(e) => tracing::error!(
                error = %e,
                category = e.category(),
                "cannot check the archive now; starting anyway, nothing is shipped until the bucket is confirmed to have Object Lock"
            ),
        },
        None => tracing::warn!(
            "no archive configured ([archive] kind = \"none\"): sealed segments and checkpoints stay on this disk only"
        ),
    }
    // The journal opens last of the checks (and before any listener): a start that fails on
    // keys, rules or the upstream address leaves no journal directory behind.
    let load_signer = |create: bool| {
        CheckpointSigner::load(
            &config.checkpoint.key_file,
            create,
            &format!("auditgate/{}", config.server.node),
        )
        .map_err(JournalError::from)
    };
    let checkpointing = |signer| Checkpointing {
        signer,
        timing: CheckpointTiming {
            interval: Duration::from_secs(config.checkpoint.interval_secs),
            heartbeat: Duration::from_secs(config.checkpoint.heartbeat_secs),
        },
    };
    let signer = load_signer(config.checkpoint.create_key_if_missing)?;
    // The verifier key is public: auditors need it to check checkpoints and proofs (and the
    // auditor listeners verify this node's trail with it).
    let public_key = signer.public_key().to_string();
    tracing::info!(public_key, "checkpoints are signed with this key");
    let mut signer = Some(signer);
    let wait_until = std::time::Instant::now() + journal_wait;
    let (journal, recovery) = loop {
        let attempt = match signer.take() {
            Some(s) => s,
            None => load_signer(false)?,
        };
        match Journal::open_with_checkpoints(
            &config.journal.dir,
            &config.server.node,
            &config.journal,
            Some(checkpointing(attempt)),
        ) {
            Err(JournalError::Locked(_)) if std::time::Instant::now() < wait_until => {
                tracing::debug!(
                    "the journal is held by the running process; waiting for its drain"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            other => break other?,
        }
    };
    // The configuration this process starts with, in the trail before any request.
    let changes = Arc::new(crate::server::changes::ChangeRecorder::new(
        journal.clone(),
        &config.server.node,
        config_path,
        public_key.clone(),
    ));
    background.block_on(changes.started(config, &live.identity()));
    reloader.record_changes_with(changes);
    background.spawn(reloader.clone().watch_keys(KEY_CHECK_INTERVAL));
    // Columnar copies are signed with the checkpoint key (loaded again: the checkpointer owns
    // its instance).
    let copy_maker = if config.columnar.enabled {
        Some(crate::columnar::local::CopyMaker {
            signer: Arc::new(load_signer(false)?),
            options: config.columnar.write_options(),
        })
    } else {
        None
    };
    if let Some(maker) = &copy_maker {
        // At idle priority; with an archive, the archiver ships each copy once it is made.
        background.spawn(crate::columnar::local::keep_copies(
            config.journal.dir.clone(),
            maker.clone(),
            Duration::from_secs(config.archive.poll_interval_secs),
        ));
    }
    // The other nodes the auditor listeners answer for, by their public keys.
    let mut other_keys = Vec::new();
    for path in &config.auditors.node_keys {
        let key = CheckpointVerifier::load(&path.to_string_lossy()).map_err(JournalError::from)?;
        let node = key.name().trim_start_matches("auditgate/").to_string();
        other_keys.push((
            node,
            std::fs::read_to_string(path)
                .map_err(|e| {
                    StartError::Runtime(std::io::Error::new(
                        e.kind(),
                        format!("auditors.node_keys {}: {e}", path.display()),
                    ))
                })?
                .trim()
                .to_string(),
        ));
    }
    let audit_trail = Arc::new(TrailSources {
        journal_dir: config.journal.dir.clone(),
        archive: archive_store
            .clone()
            .map(|store| (store, crate::archive::Layout::new(&config.archive.prefix))),
        runtime: background.handle().clone(),
        node: config.server.node.clone(),
        keys: std::iter::once(public_key)
            .chain(other_keys.iter().map(|(_, text)| text.clone()))
            .collect(),
        other_nodes: other_keys.into_iter().map(|(node, _)| node).collect(),
        running: tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map_or(2, usize::from),
        ),
    });
    let archive_stats = match archive_store {
        Some(store) => {
            if !store.is_worm() {
                tracing::warn!(target = %store.target(), "the archive is a local directory: NOT write-once; use kind = \"s3\" with Object Lock in production");
            }
            let archiver = crate::archive::Archiver::new(
                &config.journal.dir,
                &config.server.node,
                &config.archive.prefix,
                store,
                config.archive.retention(),
            )?
            .compression(config.archive.compression)
            .columnar_copies(copy_maker.is_some().then(|| config.columnar.copy_wait()))
            .delete_local_after_ship(config.archive.delete_local_after_ship)
            .store_checked(archive_checked);
            let stats = archiver.stats();
            background.spawn(archiver.run(
                Duration::from_secs(config.archive.poll_interval_secs),
                Duration::from_secs(config.archive.retry_max_secs),
            ));
            Some(stats)
        }
        None => None,
    };
    let listeners: Vec<(SocketAddr, String)> = config
        .server
        .listen
        .iter()
        .chain(&config.tls.listen)
        .filter_map(|a| a.parse::<SocketAddr>().ok().map(|s| (s, a.clone())))
        .collect();
    let admin = AdminApp {
        readiness: Readiness {
            journal: journal.clone(),
            live: live.clone(),
            archive_configured: archive_stats.is_some(),
            archive_grace: Duration::from_secs(config.admin.archive_unreachable_grace_secs),
            draining: Arc::new(AtomicBool::new(false)),
            listeners: listeners.iter().map(|(addr, _)| *addr).collect(),
            listening: Arc::new(AtomicBool::new(false)),
        },
    };
    let flood = Arc::new(FloodGuard::new(&config.records));
    let gateway = Gateway {
        live,
        in_flight: Arc::new(AtomicUsize::new(0)),
        journal,
        node: config.server.node.clone(),
        listeners,
        upstream: config.upstream.clone(),
        upstream_ca,
        connector: pingora::connectors::http::Connector::new(Some(
            pingora::connectors::ConnectorOptions::new(UPSTREAM_POOL_SIZE),
        )),
        buffer_slots: Arc::new(tokio::sync::Semaphore::new(
            config.attribution.max_buffered_requests,
        )),
        buffer_wait: Duration::from_secs(config.attribution.buffered_wait_secs),
        buffer_bytes: Arc::new(crate::proxy::budget::ByteBudget::new(
            config.attribution.max_buffered_bytes,
            Duration::from_secs(config.attribution.buffered_wait_secs),
        )),
        record_bounds: config.records.clone(),
        flood: flood.clone(),
    };
    let guard_for = |listen: &str, name: &str| Guard {
        live: gateway.live.clone(),
        journal: gateway.journal.clone(),
        node: config.server.node.clone(),
        listeners: listen
            .parse::<SocketAddr>()
            .map(|a| vec![(a, name.to_string())])
            .unwrap_or_default(),
        auditors: config.auditors.clone(),
        flood: flood.clone(),
        record_bounds: config.records.clone(),
    };
    let console = config
        .console
        .enabled
        .then(|| crate::console::web::Console {
            guard: guard_for(&config.console.listen, "console"),
            trail: audit_trail.clone(),
            sessions: Default::default(),
            config: config.console.clone(),
            zone: config.console.time_zone.parse().unwrap_or(chrono_tz::UTC),
            server_address: Some(config.upstream.url.host.clone()),
            oidc: config
                .console
                .oidc
                .clone()
                .map(crate::console::oidc::Oidc::new),
            flags: config.reports.flags.clone(),
        });
    let audit_api = config.audit_api.enabled.then(|| AuditApi {
        guard: guard_for(&config.audit_api.listen, "audit"),
        config: config.audit_api.clone(),
        trail: audit_trail,
        server_address: Some(config.upstream.url.host.clone()),
    });
    let summaries = SummaryWriter {
        flood,
        journal: gateway.journal.clone(),
        node: config.server.node.clone(),
    };
    background.spawn(
        summaries
            .clone()
            .run(Duration::from_secs(config.records.summary_interval_secs)),
    );
    Ok(Prepared {
        gateway,
        recovery,
        background,
        archive_stats,
        admin,
        tls_certs,
        summaries,
        audit_api,
        console,
        remove_at_exit: Vec::new(),
    })
}

/// An auditor listener (the audit API, the console) on `listen`, with TLS when `tls`; exits
/// the process (code 2) when its TLS settings cannot be made.
fn auditor_service<A>(
    name: &str,
    app: A,
    listen: &str,
    tls: bool,
    certs: &Option<Arc<crate::network::tls::ServerCerts>>,
    config: &Config,
) -> pingora::services::listening::Service<A>
where
    A: pingora::apps::http_app::ServeHttp + Send + Sync + 'static,
{
    let mut service = pingora::services::listening::Service::new(name.into(), app);
    match (certs, tls) {
        (Some(certs), true) => {
            match crate::network::tls::listener_settings(&config.tls, certs.clone()) {
                Ok(settings) => service.add_tls_with_settings(listen, None, settings),
                Err(e) => {
                    tracing::error!(error = %e, listener = name, "cannot set up the listener's TLS");
                    eprintln!("auditgate: cannot start: {name}: tls: {e}");
                    std::process::exit(2);
                }
            }
        }
        _ => service.add_tcp(listen),
    }
    service
}

/// How often the token verification keys in effect are compared with the last recorded ones
/// (a JWKS refresh may change them between reloads).
const KEY_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Idle connections to the upstream kept by the buffered path (pingora's default pool size).
const UPSTREAM_POOL_SIZE: usize = 128;

/// The pingora server for `config`, bootstrapped: with `upgrade`, this takes the listening
/// sockets from the running process (which hands them over on SIGQUIT).
pub fn new_server(config: &Config, upgrade: bool) -> Server {
    let conf = ServerConf {
        threads: config.server.threads,
        // Pingora's own drain is a fixed sleep; the drain monitor (signals.rs) ends the process as
        // soon as nothing is in flight, so this is only the upper bound behind it.
        grace_period_seconds: Some(
            config.server.drain_timeout_secs + JOURNAL_CLOSE_TIMEOUT.as_secs() + 2,
        ),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: config.server.pid_file.to_string_lossy().into_owned(),
        upgrade_sock: config.server.upgrade_sock.to_string_lossy().into_owned(),
        ..ServerConf::default()
    };
    let opt = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();
    server
}

/// Run the gateway until SIGTERM/SIGINT/SIGQUIT; never returns.
pub fn run(config: &Config, server: Server, prepared: Prepared) -> ! {
    run_with(config, server, prepared, Vec::new())
}

/// Run the gateway plus extra pingora services (the demo's sample upstream); never returns.
///
/// The stop, in order:
/// 1. SIGTERM: `/readyz` answers 503 at once; the proxy keeps serving for
///    `server.shutdown_delay_secs`. SIGQUIT (upgrade): the listening sockets go to the new
///    process first. SIGINT: at once, no drain.
/// 2. The listeners close. The drain monitor waits until no request is in flight (at most
///    `server.drain_timeout_secs`).
/// 3. The journal commits what is queued, seals the open segment and stores its signed
///    checkpoint; the process exits 0 (1 if the journal could not close cleanly: the next start
///    recovers it as after a crash).
pub fn run_with(
    config: &Config,
    mut server: Server,
    prepared: Prepared,
    extra: Vec<Box<dyn pingora::services::ServiceWithDependents>>,
) -> ! {
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    // CONNECT reaches the proxy's phases, where the rules refuse it with a record, instead of
    // pingora's own unrecorded 405. Nothing is ever tunnelled: no rule matches CONNECT.
    options.allow_connect_method_proxying = true;
    let journal = prepared.gateway.journal.clone();
    let prepared_summaries = prepared.summaries.clone();
    let in_flight = prepared.gateway.in_flight.clone();
    let draining = prepared.admin.readiness.draining.clone();
    let remove_at_exit = prepared.remove_at_exit.clone();
    let mut service =
        pingora::proxy::ProxyServiceBuilder::new(&server.configuration, prepared.gateway)
            .name("auditgate")
            .server_options(options)
            .build();
    for addr in &config.server.listen {
        service.add_tcp(addr);
    }
    if let Some(certs) = &prepared.tls_certs {
        for addr in &config.tls.listen {
            match crate::network::tls::listener_settings(&config.tls, certs.clone()) {
                Ok(settings) => service.add_tls_with_settings(addr, None, settings),
                Err(e) => {
                    tracing::error!(error = %e, "cannot set up the TLS listener");
                    eprintln!("auditgate: cannot start: tls: {e}");
                    std::process::exit(2);
                }
            }
        }
    }
    server.add_service(service);
    if config.admin.enabled {
        let mut admin =
            pingora::services::listening::Service::new("auditgate-admin".into(), prepared.admin);
        admin.add_tcp(&config.admin.listen);
        server.add_service(admin);
    }
    if let Some(app) = prepared.audit_api {
        let service = auditor_service(
            "auditgate-audit",
            app,
            &config.audit_api.listen,
            config.audit_api.tls,
            &prepared.tls_certs,
            config,
        );
        server.add_service(service);
    }
    if let Some(app) = prepared.console {
        let service = auditor_service(
            "auditgate-console",
            app,
            &config.console.listen,
            config.console.tls,
            &prepared.tls_certs,
            config,
        );
        server.add_service(service);
    }
    server.add_service(pingora::services::background::background_service(
        "drain monitor",
        DrainMonitor {
            in_flight,
            draining: draining.clone(),
            journal: journal.clone(),
            summaries: prepared.summaries.clone(),
            drain_timeout: Duration::from_secs(config.server.drain_timeout_secs),
            remove_at_exit: remove_at_exit.clone(),
        },
    ));
    server.add_services(extra);
    tracing::info!(
        node = %config.server.node,
        listeners = ?config.server.listen,
        admin = if config.admin.enabled { config.admin.listen.as_str() } else { "off" },
        audit_api = if config.audit_api.enabled { config.audit_api.listen.as_str() } else { "off" },
        console = if config.console.enabled { config.console.listen.as_str() } else { "off" },
        head_seq = prepared.recovery.head_seq,
        "auditgate listening"
    );
    // The background runtime (archiver, JWKS refresh, SIGHUP) lives until the exit.
    std::mem::forget(prepared.background);
    // Pingora builds each service's listeners in that service's runtime and panics there when
    // it cannot: the rest of the process would run on without the listener. A gateway missing
    // its proxy or admin listener must not run at all.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        if info.to_string().contains("Failed to build listeners") {
            tracing::error!("a listener could not be opened; stopping");
            std::process::exit(2);
        }
    }));
    server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(Signals {
            draining,
            shutdown_delay: Duration::from_secs(config.server.shutdown_delay_secs),
        }),
    });
    // Reached after SIGINT, or when pingora's upper bound ran out before the drain monitor
    // finished: every request is finished or cut off.
    prepared_summaries.flush_blocking();
    signals::exit_after_close(close_journal(&journal), &remove_at_exit)
}
