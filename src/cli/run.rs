//! `run`, `check-config` and `health`: the gateway itself, its configuration checked without
//! starting it, and a liveness or readiness probe of a running one.

use std::path::Path;
use std::time::Duration;

use super::logging::init_logging;
use super::outcome::{CliError, Verdict};
use crate::config::Config;

/// `auditgate run`: start the gateway; returns only when it could not start.
pub fn run(path: &Path, upgrade: bool) -> Result<Verdict, CliError> {
    let config = Config::load(path)?;
    init_logging(&config.log);
    override_clock_for_tests();
    let base = Config::base_dir(path);
    let cannot_start = |e: &dyn std::fmt::Display, what: &str| {
        tracing::error!(error = %e, "{what}");
        CliError::Start(e.to_string())
    };
    if upgrade {
        // Everything but the journal must load before the running process is asked for its
        // sockets: a new build or config that cannot start must not take the service down.
        crate::server::preflight(&config, &base).map_err(|e| {
            cannot_start(
                &e,
                "auditgate cannot start; the running process keeps serving",
            )
        })?;
        tracing::info!(
            "ready to take over: waiting for the running process's sockets (send it SIGQUIT)"
        );
    } else {
        crate::server::check_listen_addresses(&config)
            .map_err(|e| cannot_start(&e, "auditgate cannot start"))?;
    }
    // On an upgrade the sockets come first (the old process sends them on SIGQUIT, then
    // drains); the journal is free once it has.
    let server = crate::server::new_server(&config, upgrade);
    let journal_wait = if upgrade {
        Duration::from_secs(config.server.drain_timeout_secs + 30)
    } else {
        Duration::ZERO
    };
    let prepared = crate::server::prepare(&config, &base, Some(path), journal_wait)
        .map_err(|e| cannot_start(&e, "auditgate cannot start"))?;
    crate::server::run(&config, server, prepared)
}

/// Debug builds only (the tests' builds): `AUDITGATE_TEST_CLOCK_STATE=synced=false,max_error_ms=N`
/// replaces the kernel's clock state through [`crate::clock::set_override`], so tests can show
/// what the gateway does with an unsynchronised clock. Release builds have no such variable.
fn override_clock_for_tests() {
    #[cfg(debug_assertions)]
    if let Some(spec) = std::env::var("AUDITGATE_TEST_CLOCK_STATE")
        .ok()
        .filter(|s| !s.is_empty())
    {
        let mut state = crate::record::ClockState {
            synced: true,
            max_error_ms: 1,
            est_error_ms: 0,
        };
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("synced", v)) => state.synced = v == "true",
                Some(("max_error_ms", v)) => state.max_error_ms = v.parse().unwrap_or(u64::MAX),
                Some(("est_error_ms", v)) => state.est_error_ms = v.parse().unwrap_or(u64::MAX),
                _ => {}
            }
        }
        crate::clock::set_override(state);
    }
}

/// `auditgate check-config`: load and check everything `run` would (rules, GeoIP, TLS
/// material, the checkpoint key), then print the effective configuration.
pub fn check_config(path: &Path) -> Result<Verdict, CliError> {
    let config = Config::load(path)?;
    let base = Config::base_dir(path);
    crate::rules::RuleSet::load(&config.rules, &base).map_err(|e| CliError::part("rules", e))?;
    // GeoIP databases, TLS certificates and CA bundles must load as `run` would load them.
    let mut notes = Vec::new();
    if crate::network::geoip::GeoIp::load(&config.geoip, &base)
        .map_err(CliError::failed)?
        .is_some()
    {
        notes.push("geoip databases load".to_string());
    }
    if let (Some(cert), Some(key)) = (&config.tls.cert_file, &config.tls.key_file) {
        crate::network::tls::CertKey::load(cert, key).map_err(|e| CliError::part("tls", e))?;
        notes.push(format!(
            "tls certificate {} loads with its key",
            cert.display()
        ));
    }
    for ca in [&config.tls.client_ca_file, &config.upstream.ca_file]
        .into_iter()
        .flatten()
    {
        crate::network::tls::load_certificates(ca).map_err(|e| CliError::part("tls", e))?;
    }
    if config.upstream.insecure_skip_verify {
        eprintln!(
            "auditgate: WARNING: upstream.insecure_skip_verify = true: the EHR's certificate is not checked"
        );
        notes.push("WARNING: upstream certificate verification is OFF".into());
    }
    let key_note = checkpoint_key_note(&config)?;
    let text = toml::to_string_pretty(&config)
        .map_err(|e| CliError::part("cannot print the config", e))?;
    println!("# effective configuration of {} (valid)", path.display());
    println!("# {key_note}");
    for note in &notes {
        println!("# {note}");
    }
    println!("{text}");
    Ok(Verdict::Clean)
}

/// What `check-config` says of the checkpoint key: it must load (it is not created here), or
/// `run` must be able to create it.
fn checkpoint_key_note(config: &Config) -> Result<String, CliError> {
    let key_file = &config.checkpoint.key_file;
    if key_file.exists() {
        let signer = crate::tlog::checkpoint::CheckpointSigner::load(key_file, false, "")
            .map_err(|e| CliError::part("checkpoint key", e))?;
        return Ok(format!(
            "checkpoint key {} loads; public key {}",
            key_file.display(),
            signer.public_key()
        ));
    }
    if config.checkpoint.create_key_if_missing {
        return Ok(format!(
            "checkpoint key {} does not exist yet; `run` creates it (create_key_if_missing)",
            key_file.display()
        ));
    }
    let warning = format!(
        "WARNING: checkpoint key {} does not exist: `run` refuses to start until it does; \
         make one with `auditgate keygen --out {}`",
        key_file.display(),
        key_file.display()
    );
    eprintln!("auditgate: {warning}");
    Ok(warning)
}

/// `auditgate health`: GET `/healthz` (or `/readyz`) of the admin listener; 1 when it does not
/// answer 2xx.
pub fn health(
    config: Option<&Path>,
    admin: Option<String>,
    ready: bool,
    timeout: Duration,
) -> Result<Verdict, CliError> {
    let listen = match (admin, config) {
        (Some(a), _) => a,
        (None, Some(path)) => Config::load(path)?.admin.listen,
        (None, None) => crate::config::server::AdminConfig::default().listen,
    };
    let mut addr = listen
        .parse::<std::net::SocketAddr>()
        .map_err(|_| CliError::Usage(format!("`{listen}` is not an IP:port address")))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let url = format!("http://{addr}/{}", if ready { "readyz" } else { "healthz" });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::failed)?;
    let answer = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .build()?;
        let response = client.get(&url).send().await?;
        let status = response.status();
        let body = response.text().await?;
        Ok::<_, reqwest::Error>((status, body))
    });
    match answer {
        Ok((status, body)) => {
            print!("{body}");
            if !status.is_success() {
                eprintln!("auditgate: {url} answered {status}");
            }
            Ok(Verdict::from_ok(status.is_success()))
        }
        Err(e) => {
            eprintln!("auditgate: {url}: {}", e.without_url());
            Ok(Verdict::Findings)
        }
    }
}
