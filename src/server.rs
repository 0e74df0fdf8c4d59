//! Assembling the gateway process: config → journal, identity, rules → pingora server.
//!
//! Owns start-up order and its failure modes. Everything that can be checked before the first
//! request is checked here, and any failure stops start-up with a clear error (exit 2): the
//! journal directory must open and recover, keys must load, rules must compile. Only then does
//! the listener open, so the gateway never accepts a request it cannot record.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora::apps::HttpServerOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

use crate::admin::{AdminApp, Readiness};
use crate::checkpoint::CheckpointSigner;
use crate::config::Config;
use crate::journal::{CheckpointTiming, Checkpointing, Journal, RecoveryReport};
use crate::proxy::Gateway;
use crate::reload::{Live, Reloader};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error(transparent)]
    Load(#[from] crate::reload::ReloadError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("archive: {0}")]
    Archive(#[from] crate::archive::ArchiveError),
}

/// What `prepare` built: the gateway logic and the runtime that runs its background tasks.
pub struct Prepared {
    pub gateway: Gateway,
    pub recovery: RecoveryReport,
    /// Runs the JWKS refresher and the archiver; kept alive for the life of the process.
    pub background: tokio::runtime::Runtime,
    /// The archiver's counters, when an archive is configured.
    pub archive_stats: Option<Arc<crate::archive::ArchiveStats>>,
    /// The admin listener's application (`/metrics`, `/healthz`, `/readyz`).
    pub admin: AdminApp,
}

/// Open the journal, load keys and rules: everything but the listener. With `config_path`,
/// SIGHUP reloads identity, rules and network policy from that file.
pub fn prepare(
    config: &Config,
    base_dir: &std::path::Path,
    config_path: Option<&std::path::Path>,
) -> Result<Prepared, StartError> {
    let background = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("auditgate-bg")
        .enable_all()
        .build()?;
    let live = Arc::new(Live::new(
        background.block_on(crate::reload::load_snapshot(config, base_dir))?,
    ));
    let reloader = Arc::new(Reloader::new(
        config_path.unwrap_or(std::path::Path::new("")),
        config.clone(),
        live.clone(),
    ));
    // JWKS URLs are refetched every `jwks_refresh_secs` for the life of the process (a key the
    // IdP withdraws stops being trusted within that time); a reload restarts the refresher.
    {
        let _entered = background.enter();
        reloader.start_refresher();
    }
    if config_path.is_some() {
        reloader.clone().reload_on_sighup(&background)?;
    }
    let target = config.upstream.target()?;
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
    let signer = CheckpointSigner::load(
        &config.checkpoint.key_file,
        config.checkpoint.create_key_if_missing,
        &format!("auditgate/{}", config.server.node),
    )
    .map_err(crate::journal::JournalError::from)?;
    // The verifier key is public: auditors need it to check checkpoints and proofs.
    tracing::info!(
        public_key = signer.public_key(),
        "checkpoints are signed with this key"
    );
    let checkpointing = Checkpointing {
        signer,
        timing: CheckpointTiming {
            interval: Duration::from_secs(config.checkpoint.interval_secs),
            heartbeat: Duration::from_secs(config.checkpoint.heartbeat_secs),
        },
    };
    let (journal, recovery) = Journal::open_with_checkpoints(
        &config.journal.dir,
        &config.server.node,
        &config.journal,
        Some(checkpointing),
    )?;
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
    let listeners = config
        .server
        .listen
        .iter()
        .filter_map(|a| a.parse::<SocketAddr>().ok().map(|s| (s, a.clone())))
        .collect();
    let admin = AdminApp {
        readiness: Readiness {
            journal: journal.clone(),
            live: live.clone(),
            archive_configured: archive_stats.is_some(),
            archive_grace: Duration::from_secs(config.admin.archive_unreachable_grace_secs),
        },
    };
    let gateway = Gateway {
        live,
        journal,
        node: config.server.node.clone(),
        listeners,
        upstream: config.upstream.clone(),
        upstream_authority: target.authority,
    };
    Ok(Prepared {
        gateway,
        recovery,
        background,
        archive_stats,
        admin,
    })
}

/// How long the clean stop waits for the journal to seal its open segment and store the
/// checkpoint, after pingora's drain.
pub const JOURNAL_CLOSE_TIMEOUT: Duration = Duration::from_secs(15);

/// Run the gateway until SIGTERM/SIGINT; never returns.
pub fn run(config: &Config, prepared: Prepared) -> ! {
    run_with(config, prepared, Vec::new())
}

/// Run the gateway plus extra pingora services (the demo's sample upstream); never returns.
pub fn run_with(
    config: &Config,
    prepared: Prepared,
    extra: Vec<Box<dyn pingora::services::ServiceWithDependents>>,
) -> ! {
    let conf = ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(config.server.grace_period_secs),
        graceful_shutdown_timeout_seconds: Some(config.server.graceful_shutdown_timeout_secs),
        pid_file: config.server.pid_file.to_string_lossy().into_owned(),
        upgrade_sock: config.server.upgrade_sock.to_string_lossy().into_owned(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    let journal = prepared.gateway.journal.clone();
    let mut service =
        pingora::proxy::ProxyServiceBuilder::new(&server.configuration, prepared.gateway)
            .name("auditgate")
            .server_options(options)
            .build();
    for addr in &config.server.listen {
        service.add_tcp(addr);
    }
    server.add_service(service);
    if config.admin.enabled {
        let mut admin =
            pingora::services::listening::Service::new("auditgate-admin".into(), prepared.admin);
        admin.add_tcp(&config.admin.listen);
        server.add_service(admin);
    }
    server.add_services(extra);
    tracing::info!(
        node = %config.server.node,
        listeners = ?config.server.listen,
        admin = if config.admin.enabled { config.admin.listen.as_str() } else { "off" },
        head_seq = prepared.recovery.head_seq,
        "auditgate listening"
    );
    // Runs until SIGTERM (drain: `grace_period_secs`, then in-flight requests for at most
    // `graceful_shutdown_timeout_secs`), SIGINT (at once) or SIGQUIT (upgrade: the listeners
    // went to the new process first).
    server.run(pingora::server::RunArgs::default());
    // Every request is finished or cut off; the background runtime (archiver, JWKS) is still
    // alive but nothing appends any more. Seal the open segment and store its checkpoint, so
    // the next process (or the upgraded one) starts on a sealed, signed journal.
    let code = match journal.close(JOURNAL_CLOSE_TIMEOUT) {
        Ok(report) => {
            tracing::info!(
                head_seq = report.head_seq,
                sealed = report.sealed.is_some(),
                "auditgate stopped cleanly"
            );
            0
        }
        Err(e) => {
            tracing::error!(error = %e, category = e.category(), "the journal did not close cleanly; the next start recovers it");
            1
        }
    };
    // The background runtime is left to the exit (dropping it would wait for the archiver).
    std::mem::forget(prepared.background);
    std::process::exit(code)
}
