//! The `auditgate` command line: raw arguments (clap) → one action → one exit code.
//!
//! Exit codes are decided here and only here: 0 fine, 1 verification found a problem, 2 the
//! command could not run (bad config, unreadable journal, start-up failure).

pub mod demo;
pub mod logging;
pub mod print;
pub mod token;

use logging::init_logging;
use print::{print_archive_report, print_report};

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Config;

/// auditgate: a HIPAA audit gateway for EHR (FHIR) APIs.
///
/// Every request through the gateway is recorded in a local, fsync'd, SHA-256 hash-chained
/// journal before any patient data is released.
#[derive(Debug, Parser)]
#[command(name = "auditgate", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway in front of the configured upstream.
    ///
    /// Signals: SIGHUP reloads identity, rules and network policy; SIGTERM drains and stops
    /// (sealing the open journal segment); SIGINT stops at once; SIGQUIT hands the listening
    /// sockets to a new process started with `--upgrade`, then drains and stops.
    Run {
        /// The configuration file (TOML).
        #[arg(long, short, env = "AUDITGATE_CONFIG")]
        config: PathBuf,
        /// Zero-downtime upgrade: take the listening sockets from the running process (send it
        /// SIGQUIT within 5 s of starting this one), wait for it to drain and release the
        /// journal, then serve.
        #[arg(long)]
        upgrade: bool,
    },
    /// Load and validate a configuration file and its rules, then print the effective config.
    CheckConfig {
        /// The configuration file (TOML).
        #[arg(long, short, env = "AUDITGATE_CONFIG")]
        config: PathBuf,
    },
    /// Verify a journal directory, the WORM archive, or both: every hash, the chain, sequence
    /// continuity and, with `--key`, every signed checkpoint (signature, Merkle root against
    /// the records, a cut tail, heartbeat gaps).
    ///
    /// With `--archive`, the archive's objects are checked the same way, node by node, and
    /// also every object's versions and delete markers, lock mode and retain-until date (S3),
    /// and seq ranges no archived segment holds. With `--journal` as well, the local journal
    /// and the archive must agree, and the records not archived yet are checked from the
    /// journal (so a checkpoint beyond them is a cut tail).
    ///
    /// ARCHIVE is `s3://BUCKET/PREFIX` (credentials, and the region unless `--region`, from the
    /// standard AWS chain: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, an
    /// instance role...), or a local directory archive: the `[archive] dir`, whose objects are
    /// under `--prefix`.
    ///
    /// Exit 0 when nothing is wrong, 1 with a list of findings, 2 if it could not run.
    Verify {
        /// The journal directory of one node.
        #[arg(long, required_unless_present = "archive")]
        journal: Option<PathBuf>,
        /// The archive: `s3://BUCKET/PREFIX`, or a directory archive's path.
        #[arg(long, value_name = "ARCHIVE")]
        archive: Option<String>,
        /// A checkpoint public key: a `.pub` file from `keygen`, or the key text. With
        /// `--archive`, give one per node: each node's checkpoints are checked with the key
        /// named `auditgate/NODE` (or the only key given).
        #[arg(long, value_name = "PUBKEY")]
        key: Vec<String>,
        /// With `--key`: report two consecutive checkpoints signed more than this many
        /// seconds apart (set it above the gateway's `checkpoint.heartbeat_secs`; 0 turns the
        /// check off).
        #[arg(long, default_value_t = 180)]
        max_gap_secs: u64,
        /// Check only this node of the archive. With `--journal`, the journal's node (default:
        /// the `node` of its records).
        #[arg(long, requires = "archive")]
        node: Option<String>,
        /// A directory archive's key prefix (`[archive] prefix`; default `auditgate`). For
        /// `s3://` the prefix is part of ARCHIVE.
        #[arg(long, requires = "archive")]
        prefix: Option<String>,
        /// An S3-compatible endpoint instead of AWS, e.g. `http://127.0.0.1:4566`.
        #[arg(long, requires = "archive")]
        endpoint_url: Option<String>,
        /// The bucket's AWS region (default: the standard AWS configuration chain).
        #[arg(long, requires = "archive")]
        region: Option<String>,
        /// Path-style addressing (`endpoint/bucket/key`), needed by most S3-compatible servers.
        #[arg(long, requires = "archive")]
        force_path_style: bool,
        /// Every archived object must be locked (COMPLIANCE) for at least this many days after
        /// it was stored (one day of slack; 2192 days is six years).
        #[arg(long, default_value_t = crate::archive::SIX_YEARS_DAYS, requires = "archive")]
        min_retention_days: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a checkpoint signing key pair: FILE (private, mode 0600) and FILE.pub (public).
    Keygen {
        /// Where to write the private key (never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// The key's name, which is also the checkpoint origin (default: auditgate/HOSTNAME).
        #[arg(long)]
        name: Option<String>,
    },
    /// Write a proof bundle: record SEQ is in a signed checkpoint (inclusion), or, with
    /// `--consistency OLD NEW`, the newer checkpoint extends the older one.
    ///
    /// The bundle is JSON (format `auditgate-proof/v1`, see the README) and is checked offline
    /// with `auditgate verify-proof` or standard transparency-log tools.
    Prove {
        /// The journal directory of the node that holds the record.
        #[arg(long)]
        journal: PathBuf,
        /// The record's sequence number.
        #[arg(required_unless_present = "consistency")]
        seq: Option<u64>,
        /// Prove against this checkpoint file (default: the smallest that covers SEQ).
        #[arg(long, conflicts_with = "consistency")]
        checkpoint: Option<PathBuf>,
        /// Two checkpoint files, older then newer: prove the newer extends the older.
        #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
        consistency: Option<Vec<PathBuf>>,
        /// Write the bundle here instead of standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Check a proof bundle offline with the node's public key.
    ///
    /// Exit 0 when the proof holds, 1 when it does not, 2 if it could not be read.
    VerifyProof {
        /// The bundle file (from `auditgate prove`).
        file: PathBuf,
        /// The node's checkpoint public key: a `.pub` file, or the key text.
        #[arg(long)]
        key: String,
    },
    /// Look up IP addresses in the GeoIP/ASN databases as the gateway would record them
    /// (the `geo` and `geo_unavailable` fields), one JSON object per address.
    Geoip {
        /// Use the `[geoip]` databases of this configuration file.
        #[arg(long, short, env = "AUDITGATE_CONFIG")]
        config: Option<PathBuf>,
        /// A City or Country database (overrides the config).
        #[arg(long)]
        city_db: Option<PathBuf>,
        /// An ASN database (overrides the config).
        #[arg(long)]
        asn_db: Option<PathBuf>,
        /// The addresses.
        #[arg(required = true)]
        ips: Vec<std::net::IpAddr>,
    },
    /// Ask a running gateway's admin listener whether it is alive (`/healthz`) or ready
    /// (`/readyz`); exit 0 if so, 1 if not. For container health checks (no curl needed).
    Health {
        /// Take the admin address from this configuration file.
        #[arg(long, short, env = "AUDITGATE_CONFIG")]
        config: Option<PathBuf>,
        /// The admin listener's address (overrides the config; default 127.0.0.1:9464). A
        /// wildcard address (0.0.0.0, ::) is probed on loopback.
        #[arg(long)]
        admin: Option<String>,
        /// Ask `/readyz` instead of `/healthz`.
        #[arg(long)]
        ready: bool,
        /// Give up after this long.
        #[arg(long, default_value_t = 5)]
        timeout_secs: u64,
    },
    /// Route rules: what the gateway would record for a request, and the rule files' tests.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// FOR TESTING: mint a token for a configured HMAC issuer, signed with its shared secret
    /// (read from the issuer's environment variable), and print it. Never use shared-secret
    /// tokens for real users: they are for trying the gateway and for service tests.
    Token(token::TokenArgs),
    /// A self-contained tour: a sample FHIR upstream, a throwaway key, a few requests, then the
    /// journal and its verification. Needs nothing but this binary.
    Demo {
        /// Keep the demo's journal in this directory (default: a temporary one, removed).
        #[arg(long)]
        journal: Option<PathBuf>,
        /// After the tour, keep the gateway and the sample FHIR server running and print a
        /// ready-to-paste curl line with a fresh token; Ctrl-C stops them.
        #[arg(long)]
        keep_running: bool,
    },
}

/// `auditgate rules ...`.
#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Show what the gateway would record for one request: the rule, action and interaction,
    /// and each patient with its source (path, query, header, body, response) and the
    /// attribution, before forwarding (the intent of a change) and, given a response, in the
    /// outcome record. Nothing is sent anywhere.
    ///
    /// Example: `auditgate rules explain GET '/fhir/Observation?code=1234-5' --response bundle.json`
    Explain {
        /// The HTTP method (GET, POST, ...).
        method: String,
        /// The request target: `/fhir/Observation?patient=1`, or a full URL (its path and query
        /// are used).
        url: String,
        /// Use this configuration's `[rules]` and `[attribution]` (default: the built-in FHIR R4
        /// rules).
        #[arg(long, short, env = "AUDITGATE_CONFIG")]
        config: Option<PathBuf>,
        /// The request body, from this file.
        #[arg(long)]
        body: Option<PathBuf>,
        /// The request body's Content-Type (default application/fhir+json).
        #[arg(long)]
        content_type: Option<String>,
        /// The response body, from this file: the outcome record is shown too.
        #[arg(long)]
        response: Option<PathBuf>,
        /// The response's Content-Type (default application/fhir+json).
        #[arg(long)]
        response_content_type: Option<String>,
        /// The response status.
        #[arg(long, default_value_t = 200)]
        status: u16,
        /// The response's Location header (a create answered without a body).
        #[arg(long)]
        location: Option<String>,
        /// A request header, `NAME: VALUE` (repeatable).
        #[arg(long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the `[[test]]` cases of the rule files (see the README); exit 1 if one fails.
    Test {
        /// Use this configuration's rule files (default: the built-in FHIR R4 rules).
        #[arg(long, short, env = "AUDITGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Print every case, not only failures.
        #[arg(long)]
        verbose: bool,
    },
}

/// Parse arguments, run, and return the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, upgrade } => run(&config, upgrade),
        Command::CheckConfig { config } => check_config(&config),
        Command::Verify {
            journal,
            archive,
            key,
            max_gap_secs,
            node,
            prefix,
            endpoint_url,
            region,
            force_path_style,
            min_retention_days,
            json,
        } => match archive {
            Some(archive) => verify_archive(&VerifyArchiveArgs {
                archive,
                journal,
                keys: key,
                max_gap_secs,
                node,
                prefix,
                endpoint_url,
                region,
                force_path_style,
                min_retention_days,
                json,
            }),
            None => match (journal, key.as_slice()) {
                (Some(journal), []) => verify(&journal, None, max_gap_secs, json),
                (Some(journal), [key]) => verify(&journal, Some(key), max_gap_secs, json),
                (Some(_), _) => {
                    eprintln!("auditgate: verify: a journal is one node's: give one --key");
                    ExitCode::from(2)
                }
                (None, _) => unreachable!("clap requires --journal or --archive"),
            },
        },
        Command::Keygen { out, name } => keygen(&out, name),
        Command::Prove {
            journal,
            seq,
            checkpoint,
            consistency,
            out,
        } => prove(&journal, seq, checkpoint, consistency, out),
        Command::VerifyProof { file, key } => verify_proof(&file, &key),
        Command::Demo {
            journal,
            keep_running,
        } => crate::cli::demo::run(journal, keep_running),
        Command::Token(args) => token::run(&args),
        Command::Rules { command } => rules_command(command),
        Command::Geoip {
            config,
            city_db,
            asn_db,
            ips,
        } => geoip_lookup(config.as_deref(), city_db, asn_db, &ips),
        Command::Health {
            config,
            admin,
            ready,
            timeout_secs,
        } => health(
            config.as_deref(),
            admin,
            ready,
            Duration::from_secs(timeout_secs),
        ),
    }
}

fn geoip_lookup(
    config: Option<&std::path::Path>,
    city_db: Option<PathBuf>,
    asn_db: Option<PathBuf>,
    ips: &[std::net::IpAddr],
) -> ExitCode {
    let (mut cfg, base) = match config {
        Some(path) => match load(path) {
            Ok(c) => (c.geoip, Config::base_dir(path)),
            Err(code) => return code,
        },
        None => (Default::default(), PathBuf::new()),
    };
    if city_db.is_some() || asn_db.is_some() {
        cfg.city_db = city_db;
        cfg.asn_db = asn_db;
    }
    let geo = match crate::network::geoip::GeoIp::load(&cfg, &base) {
        Ok(Some(g)) => g,
        Ok(None) => {
            eprintln!("auditgate: no GeoIP database: give --city-db or --asn-db, or a config with [geoip]");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("auditgate: {e}");
            return ExitCode::from(2);
        }
    };
    for ip in ips {
        let line = match geo.lookup(*ip) {
            crate::network::geoip::GeoAnswer::Found(g) => {
                serde_json::json!({"ip": ip.to_string(), "geo": g})
            }
            crate::network::geoip::GeoAnswer::Unavailable(why) => {
                serde_json::json!({"ip": ip.to_string(), "geo": null, "geo_unavailable": why})
            }
        };
        println!("{line}");
    }
    ExitCode::SUCCESS
}

fn health(
    config: Option<&std::path::Path>,
    admin: Option<String>,
    ready: bool,
    timeout: Duration,
) -> ExitCode {
    let listen = match (admin, config) {
        (Some(a), _) => a,
        (None, Some(path)) => match load(path) {
            Ok(c) => c.admin.listen,
            Err(code) => return code,
        },
        (None, None) => crate::config::server::AdminConfig::default().listen,
    };
    let Ok(mut addr) = listen.parse::<std::net::SocketAddr>() else {
        eprintln!("auditgate: `{listen}` is not an IP:port address");
        return ExitCode::from(2);
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let url = format!("http://{addr}/{}", if ready { "readyz" } else { "healthz" });
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("auditgate: {e}");
            return ExitCode::from(2);
        }
    };
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
            if status.is_success() {
                ExitCode::SUCCESS
            } else {
                eprintln!("auditgate: {url} answered {status}");
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("auditgate: {url}: {}", e.without_url());
            ExitCode::from(1)
        }
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("auditgate: {e}");
        ExitCode::from(2)
    })
}

fn run(path: &std::path::Path, upgrade: bool) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logging(&config.log);
    override_clock_for_tests();
    let base = Config::base_dir(path);
    if upgrade {
        // Everything but the journal must load before the running process is asked for its
        // sockets: a new build or config that cannot start must not take the service down.
        if let Err(e) = crate::server::preflight(&config, &base) {
            tracing::error!(error = %e, "auditgate cannot start; the running process keeps serving");
            eprintln!("auditgate: cannot start: {e}");
            return ExitCode::from(2);
        }
        tracing::info!(
            "ready to take over: waiting for the running process's sockets (send it SIGQUIT)"
        );
    } else {
        if let Err(e) = crate::server::check_listen_addresses(&config) {
            tracing::error!(error = %e, "auditgate cannot start");
            eprintln!("auditgate: cannot start: {e}");
            return ExitCode::from(2);
        }
    }
    // On an upgrade the sockets come first (the old process sends them on SIGQUIT, then
    // drains); the journal is free once it has.
    let server = crate::server::new_server(&config, upgrade);
    let journal_wait = if upgrade {
        Duration::from_secs(config.server.drain_timeout_secs + 30)
    } else {
        Duration::ZERO
    };
    match crate::server::prepare(&config, &base, Some(path), journal_wait) {
        Ok(prepared) => crate::server::run(&config, server, prepared),
        Err(e) => {
            tracing::error!(error = %e, "auditgate cannot start");
            eprintln!("auditgate: cannot start: {e}");
            ExitCode::from(2)
        }
    }
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

/// The rules and body limit of `config`, or the built-in FHIR R4 rules.
fn load_rules(
    config: Option<&std::path::Path>,
) -> Result<(crate::rules::RuleSet, usize), ExitCode> {
    match config {
        Some(path) => {
            let config = load(path)?;
            let rules = crate::rules::RuleSet::load(&config.rules, &Config::base_dir(path))
                .map_err(|e| {
                    eprintln!("auditgate: rules: {e}");
                    ExitCode::from(2)
                })?;
            Ok((rules, config.attribution.limit()))
        }
        None => {
            let rules = crate::rules::RuleSet::from_toml_str(
                crate::rules::BUILTIN_FHIR_R4,
                crate::rules::UnmatchedPolicy::Journal,
            )
            .map_err(|e| {
                eprintln!("auditgate: built-in rules: {e}");
                ExitCode::from(2)
            })?;
            Ok((
                rules,
                crate::attribution::config::AttributionConfig::default().limit(),
            ))
        }
    }
}

fn rules_command(command: RulesCommand) -> ExitCode {
    match command {
        RulesCommand::Explain {
            method,
            url,
            config,
            body,
            content_type,
            response,
            response_content_type,
            status,
            location,
            headers,
            json,
        } => {
            let (rules, limit) = match load_rules(config.as_deref()) {
                Ok(r) => r,
                Err(code) => return code,
            };
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|e| {
                    eprintln!("auditgate: {}: {e}", p.display());
                    ExitCode::from(2)
                })
            };
            let body = match body.as_ref().map(read).transpose() {
                Ok(b) => b,
                Err(code) => return code,
            };
            let response_body = match response.as_ref().map(read).transpose() {
                Ok(b) => b,
                Err(code) => return code,
            };
            let mut request_headers = http::HeaderMap::new();
            let add = |map: &mut http::HeaderMap, name: &str, value: &str| -> bool {
                match (
                    http::HeaderName::from_bytes(name.trim().as_bytes()),
                    http::HeaderValue::from_str(value.trim()),
                ) {
                    (Ok(n), Ok(v)) => {
                        map.append(n, v);
                        true
                    }
                    _ => {
                        eprintln!("auditgate: not a header: {name}: {value}");
                        false
                    }
                }
            };
            for h in &headers {
                let Some((n, v)) = h.split_once(':') else {
                    eprintln!("auditgate: --header takes `NAME: VALUE`, got {h:?}");
                    return ExitCode::from(2);
                };
                if !add(&mut request_headers, n, v) {
                    return ExitCode::from(2);
                }
            }
            if body.is_some() && !request_headers.contains_key(http::header::CONTENT_TYPE) {
                let ct = content_type.as_deref().unwrap_or("application/fhir+json");
                if !add(&mut request_headers, "content-type", ct) {
                    return ExitCode::from(2);
                }
            }
            let target = crate::attribution::body::target_of_absolute_url(&url).unwrap_or(&url);
            let mut response_headers = http::HeaderMap::new();
            let ct = response_content_type
                .as_deref()
                .unwrap_or("application/fhir+json");
            if !add(&mut response_headers, "content-type", ct) {
                return ExitCode::from(2);
            }
            if let Some(l) = &location {
                if !add(&mut response_headers, "location", l) {
                    return ExitCode::from(2);
                }
            }
            let given_response = response_body.is_some() || location.is_some();
            let x = crate::attribution::explain::explain(
                &rules,
                limit,
                &method,
                target,
                &request_headers,
                body.as_deref(),
                given_response.then(|| crate::attribution::explain::ExplainResponse {
                    status,
                    headers: response_headers,
                    body: response_body.as_deref().unwrap_or_default(),
                }),
            );
            if json {
                println!(
                    "{}",
                    print::pretty_json(&x)
                );
            } else {
                print!("{}", render_explanation(&x));
            }
            ExitCode::SUCCESS
        }
        RulesCommand::Test { config, verbose } => {
            let (rules, limit) = match load_rules(config.as_deref()) {
                Ok(r) => r,
                Err(code) => return code,
            };
            let mut failed = 0;
            for (file, t) in rules.tests() {
                match crate::attribution::explain::run_rule_test(&rules, limit, t) {
                    Ok(_) => {
                        if verbose {
                            println!("ok    {} ({})", t.name, file.display());
                        }
                    }
                    Err(failures) => {
                        failed += 1;
                        println!(
                            "FAIL  {} ({}): {} {}",
                            t.name,
                            file.display(),
                            t.method,
                            t.url
                        );
                        for f in failures {
                            println!("      {f}");
                        }
                    }
                }
            }
            let total = rules.tests().len();
            println!("{} of {total} rule tests passed", total - failed);
            if failed > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

/// `rules explain` for people.
fn render_explanation(x: &crate::attribution::explain::Explanation) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let patients = |s: &crate::attribution::explain::Settled| {
        if s.patients.is_empty() {
            "none".to_string()
        } else {
            s.patients
                .iter()
                .map(|p| format!("{} ({})", p.id, p.source.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let settled = |label: &str, s: &crate::attribution::explain::Settled, out: &mut String| {
        let _ = writeln!(out, "{label:<12} patients: {}", patients(s));
        let _ = writeln!(
            out,
            "{:<12} attribution: {}{}",
            "",
            s.attribution.as_str(),
            if s.gaps.is_empty() {
                String::new()
            } else {
                format!(" (gaps: {})", s.gaps.join(", "))
            }
        );
    };
    let _ = writeln!(out, "{:<12} {}", "rule", x.rule);
    if let Some(d) = &x.description {
        let _ = writeln!(out, "{:<12} {d}", "");
    }
    if let Some(r) = &x.rejected {
        let _ = writeln!(out, "{:<12} refused with 400: {r}", "path");
    }
    let _ = writeln!(
        out,
        "{:<12} {} ({})",
        "action",
        x.action.as_str(),
        x.interaction.as_str()
    );
    if let Some(t) = &x.resource_type {
        let _ = writeln!(
            out,
            "{:<12} {t}{}",
            "resource",
            x.resource_id
                .as_deref()
                .map(|i| format!("/{i}"))
                .unwrap_or_default()
        );
    }
    let reads = match (x.reads_body, x.reads_response) {
        (true, true) => "buffered: request body and response read for patients",
        (true, false) => "buffered: request body read for patients",
        (false, true) => "buffered: response read for patients before release",
        (false, false) => "streamed: patients from the request line only",
    };
    let _ = writeln!(out, "{:<12} {reads}", "path");
    settled("request", &x.request, &mut out);
    if let Some(o) = &x.outcome {
        settled("outcome", o, &mut out);
    }
    out
}

fn check_config(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let base = Config::base_dir(path);
    if let Err(e) = crate::rules::RuleSet::load(&config.rules, &base) {
        eprintln!("auditgate: rules: {e}");
        return ExitCode::from(2);
    }
    // GeoIP databases, TLS certificates and CA bundles must load as `run` would load them.
    let mut notes = Vec::new();
    match crate::network::geoip::GeoIp::load(&config.geoip, &base) {
        Ok(Some(_)) => notes.push("geoip databases load".to_string()),
        Ok(None) => {}
        Err(e) => {
            eprintln!("auditgate: {e}");
            return ExitCode::from(2);
        }
    }
    if let (Some(cert), Some(key)) = (&config.tls.cert_file, &config.tls.key_file) {
        if let Err(e) = crate::network::tls::CertKey::load(cert, key) {
            eprintln!("auditgate: tls: {e}");
            return ExitCode::from(2);
        }
        notes.push(format!(
            "tls certificate {} loads with its key",
            cert.display()
        ));
    }
    for ca in [&config.tls.client_ca_file, &config.upstream.ca_file]
        .into_iter()
        .flatten()
    {
        if let Err(e) = crate::network::tls::load_certificates(ca) {
            eprintln!("auditgate: tls: {e}");
            return ExitCode::from(2);
        }
    }
    if config.upstream.insecure_skip_verify {
        eprintln!(
            "auditgate: WARNING: upstream.insecure_skip_verify = true: the EHR's certificate is not checked"
        );
        notes.push("WARNING: upstream certificate verification is OFF".into());
    }
    // The checkpoint key must load (it is not created here).
    let key_file = &config.checkpoint.key_file;
    let key_note = if key_file.exists() {
        match crate::tlog::checkpoint::CheckpointSigner::load(key_file, false, "") {
            Ok(signer) => format!(
                "checkpoint key {} loads; public key {}",
                key_file.display(),
                signer.public_key()
            ),
            Err(e) => {
                eprintln!("auditgate: checkpoint key: {e}");
                return ExitCode::from(2);
            }
        }
    } else if config.checkpoint.create_key_if_missing {
        format!(
            "checkpoint key {} does not exist yet; `run` creates it (create_key_if_missing)",
            key_file.display()
        )
    } else {
        let warning = format!(
            "WARNING: checkpoint key {} does not exist: `run` refuses to start until it does; \
             make one with `auditgate keygen --out {}`",
            key_file.display(),
            key_file.display()
        );
        eprintln!("auditgate: {warning}");
        warning
    };
    match toml::to_string_pretty(&config) {
        Ok(text) => {
            println!("# effective configuration of {} (valid)", path.display());
            println!("# {key_note}");
            for note in &notes {
                println!("# {note}");
            }
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("auditgate: cannot print the config: {e}");
            ExitCode::from(2)
        }
    }
}

fn verify(journal: &std::path::Path, key: Option<&str>, max_gap_secs: u64, json: bool) -> ExitCode {
    let key = match key
        .map(crate::tlog::checkpoint::CheckpointVerifier::load)
        .transpose()
    {
        Ok(k) => k,
        Err(e) => {
            eprintln!("auditgate: verify: --key: {e}");
            return ExitCode::from(2);
        }
    };
    let options = crate::verify::Options {
        key,
        max_gap: (max_gap_secs > 0).then(|| std::time::Duration::from_secs(max_gap_secs)),
    };
    let report = match crate::verify::verify_journal_with(journal, &options) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("auditgate: verify: {e}");
            return ExitCode::from(2);
        }
    };
    emit_report(&report, report.ok(), json, print_report)
}

/// Print a verification report (JSON or text) and decide the exit code: 0 clean, 1 findings.
fn emit_report<R: serde::Serialize>(
    report: &R,
    ok: bool,
    json: bool,
    print_text: impl Fn(&R),
) -> ExitCode {
    if json {
        println!(
            "{}",
            print::pretty_json(report)
        );
    } else {
        print_text(report);
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `verify --archive`'s arguments.
struct VerifyArchiveArgs {
    archive: String,
    journal: Option<PathBuf>,
    keys: Vec<String>,
    max_gap_secs: u64,
    node: Option<String>,
    prefix: Option<String>,
    endpoint_url: Option<String>,
    region: Option<String>,
    force_path_style: bool,
    min_retention_days: u64,
    json: bool,
}

/// What `--archive` names: `s3://BUCKET/PREFIX`, or a directory archive (the `[archive] dir`)
/// with its objects under `--prefix` (as `[archive] dir` and `prefix` in the config).
fn archive_config(args: &VerifyArchiveArgs) -> Result<crate::archive::ArchiveConfig, String> {
    use crate::archive::{ArchiveConfig, ArchiveKind};
    let mut cfg = ArchiveConfig {
        region: args.region.clone(),
        endpoint_url: args.endpoint_url.clone(),
        force_path_style: args.force_path_style,
        ..ArchiveConfig::default()
    };
    if let Some(rest) = args.archive.strip_prefix("s3://") {
        if args.prefix.is_some() {
            return Err("--prefix is for a directory archive; for S3 the prefix is part of s3://BUCKET/PREFIX".into());
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{}: no bucket (s3://BUCKET/PREFIX)", args.archive));
        }
        cfg.kind = ArchiveKind::S3;
        cfg.bucket = bucket.to_string();
        cfg.prefix = prefix.trim_end_matches('/').to_string();
    } else {
        if args.archive.contains("://") {
            return Err(format!(
                "{}: not s3://BUCKET/PREFIX or a directory",
                args.archive
            ));
        }
        if args.endpoint_url.is_some() || args.region.is_some() || args.force_path_style {
            return Err(
                "--endpoint-url, --region and --force-path-style are for s3:// archives".into(),
            );
        }
        let dir = PathBuf::from(&args.archive);
        if !dir.is_dir() {
            return Err(format!("{}: no such directory", dir.display()));
        }
        cfg.kind = ArchiveKind::Dir;
        cfg.dir = dir;
        if let Some(prefix) = &args.prefix {
            cfg.prefix = prefix.trim_end_matches('/').to_string();
        }
    }
    if cfg.prefix.starts_with('/') || cfg.prefix.contains("//") {
        return Err(format!(
            "prefix {:?}: must not start with '/' or contain '//'",
            cfg.prefix
        ));
    }
    Ok(cfg)
}

fn verify_archive(args: &VerifyArchiveArgs) -> ExitCode {
    let fail = |msg: &dyn std::fmt::Display| {
        eprintln!("auditgate: verify: {msg}");
        ExitCode::from(2)
    };
    let cfg = match archive_config(args) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let mut keys = Vec::new();
    for key in &args.keys {
        match crate::tlog::checkpoint::CheckpointVerifier::load(key) {
            Ok(k) => keys.push(k),
            Err(e) => return fail(&format!("--key: {e}")),
        }
    }
    let options = crate::verify::ArchiveOptions {
        keys,
        max_gap: (args.max_gap_secs > 0).then(|| std::time::Duration::from_secs(args.max_gap_secs)),
        min_retention_days: args.min_retention_days,
        node: args.node.clone(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let report = runtime.block_on(async {
        let store: std::sync::Arc<dyn crate::archive::ArchiveStore> = match cfg.kind {
            crate::archive::ArchiveKind::S3 => {
                std::sync::Arc::new(crate::archive::S3Store::connect(&cfg).await)
            }
            _ => std::sync::Arc::new(crate::archive::DirStore::new(&cfg.dir)),
        };
        crate::verify::verify_archive(store, &cfg.prefix, &options, args.journal.as_deref()).await
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    emit_report(&report, report.ok(), args.json, print_archive_report)
}

fn default_key_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if crate::config::server::is_safe_token(&host) {
        format!("auditgate/{host}")
    } else {
        "auditgate".into()
    }
}

fn keygen(out: &std::path::Path, name: Option<String>) -> ExitCode {
    let name = name.unwrap_or_else(default_key_name);
    match crate::tlog::checkpoint::write_key_pair(out, &name) {
        Ok((pub_path, public)) => {
            println!(
                "private key: {} (mode 0600; keep it on the gateway only)",
                out.display()
            );
            println!("public key:  {}", pub_path.display());
            println!("{public}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("auditgate: keygen: {e}");
            ExitCode::from(2)
        }
    }
}

fn prove(
    journal: &std::path::Path,
    seq: Option<u64>,
    checkpoint: Option<PathBuf>,
    consistency: Option<Vec<PathBuf>>,
    out: Option<PathBuf>,
) -> ExitCode {
    let bundle = match (&consistency, seq) {
        (Some(pair), _) => crate::verify::proof::prove_consistency(journal, &pair[0], &pair[1]),
        (None, Some(seq)) => {
            crate::verify::proof::prove_record(journal, seq, checkpoint.as_deref())
        }
        (None, None) => unreachable!("clap requires SEQ or --consistency"),
    };
    let bundle = match bundle {
        Ok(b) => b,
        Err(e) => {
            eprintln!("auditgate: prove: {e}");
            return ExitCode::from(2);
        }
    };
    let text = print::pretty_json(&bundle) + "\n";
    match out {
        Some(path) => match std::fs::write(&path, text) {
            Ok(()) => {
                eprintln!("wrote {}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("auditgate: prove: {}: {e}", path.display());
                ExitCode::from(2)
            }
        },
        None => {
            print!("{text}");
            ExitCode::SUCCESS
        }
    }
}

fn verify_proof(file: &std::path::Path, key: &str) -> ExitCode {
    use crate::verify::proof::{check_bundle, parse_bundle, Proven};
    let key = match crate::tlog::checkpoint::CheckpointVerifier::load(key) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("auditgate: verify-proof: --key: {e}");
            return ExitCode::from(2);
        }
    };
    let checked = std::fs::read(file)
        .map_err(|source| crate::verify::proof::BundleError::Io {
            path: file.to_path_buf(),
            source,
        })
        .and_then(|bytes| parse_bundle(&bytes))
        .and_then(|bundle| check_bundle(&bundle, &key));
    match checked {
        Ok(Proven::Inclusion { seq, checkpoint }) => {
            println!(
                "OK: record seq {seq} is in the tree of {} records signed by {} at {}",
                checkpoint.size,
                key.text(),
                checkpoint.time.as_deref().unwrap_or("(no time)")
            );
            ExitCode::SUCCESS
        }
        Ok(Proven::Consistency { old, new }) => {
            println!(
                "OK: the tree of {} records (signed {}) extends the tree of {} records (signed {}), both signed by {}",
                new.size,
                new.time.as_deref().unwrap_or("(no time)"),
                old.size,
                old.time.as_deref().unwrap_or("(no time)"),
                key.text()
            );
            ExitCode::SUCCESS
        }
        Err(e) if e.is_verification_failure() => {
            println!("FAILED: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("auditgate: verify-proof: {e}");
            ExitCode::from(2)
        }
    }
}
