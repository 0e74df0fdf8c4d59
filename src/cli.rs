//! The `auditgate` command line: raw arguments (clap) → one action → one exit code.
//!
//! Exit codes are decided here and only here: 0 fine, 1 verification found a problem, 2 the
//! command could not run (bad config, unreadable journal, start-up failure).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, LogConfig, LogFormat};

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
    Run {
        /// The configuration file (TOML).
        #[arg(long, short, env = "AUDITGATE_CONFIG")]
        config: PathBuf,
    },
    /// Load and validate a configuration file and its rules, then print the effective config.
    CheckConfig {
        /// The configuration file (TOML).
        #[arg(long, short, env = "AUDITGATE_CONFIG")]
        config: PathBuf,
    },
    /// Verify a journal directory: every hash, the chain, sequence continuity.
    ///
    /// Exit 0 when nothing is wrong, 1 with a list of findings, 2 if it could not run.
    Verify {
        /// The journal directory of one node.
        #[arg(long)]
        journal: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A self-contained tour: a sample FHIR upstream, a throwaway key, a few requests, then the
    /// journal and its verification. Needs nothing but this binary.
    Demo {
        /// Keep the demo's journal in this directory (default: a temporary one, removed).
        #[arg(long)]
        journal: Option<PathBuf>,
    },
}

/// Set up the operational log (stderr). `RUST_LOG` overrides the configured level.
pub fn init_logging(log: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    // Pingora logs request and response headers (tokens included) and raw bytes at debug and
    // trace level: whatever level is asked for, its crates stay at info.
    let filter = [
        "pingora=info",
        "pingora_core=info",
        "pingora_proxy=info",
        "pingora_http=info",
    ]
    .iter()
    .filter_map(|d| d.parse().ok())
    .fold(filter, |f, d| f.add_directive(d));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // A second initialisation (tests, demo) keeps the first subscriber.
    let _ = result;
}

/// Parse arguments, run, and return the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(&config),
        Command::CheckConfig { config } => check_config(&config),
        Command::Verify { journal, json } => verify(&journal, json),
        Command::Demo { journal } => crate::demo::run(journal),
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("auditgate: {e}");
        ExitCode::from(2)
    })
}

fn run(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logging(&config.log);
    let base = Config::base_dir(path);
    match crate::server::prepare(&config, &base) {
        Ok(prepared) => crate::server::run(&config, prepared),
        Err(e) => {
            tracing::error!(error = %e, "auditgate cannot start");
            eprintln!("auditgate: cannot start: {e}");
            ExitCode::from(2)
        }
    }
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
    match toml::to_string_pretty(&config) {
        Ok(text) => {
            println!("# effective configuration of {} (valid)", path.display());
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("auditgate: cannot print the config: {e}");
            ExitCode::from(2)
        }
    }
}

fn verify(journal: &std::path::Path, json: bool) -> ExitCode {
    let report = match crate::verify::verify_journal(journal) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("auditgate: verify: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serialises")
        );
    } else {
        print_report(&report);
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Human-readable verify report.
pub fn print_report(report: &crate::verify::Report) {
    println!(
        "journal {}: {} segments, {} records, head seq {}",
        report.journal.display(),
        report.segments,
        report.records,
        report.head_seq
    );
    if let Some(leaf) = &report.head_leaf {
        println!("head leaf hash {leaf}");
    }
    for q in &report.quarantined {
        println!(
            "note: quarantine/{q} holds bytes that crash recovery removed (never acknowledged)"
        );
    }
    if report.ok() {
        println!("OK: every record hashes and chains");
    } else {
        println!("FAILED: {} finding(s)", report.findings.len());
        for f in &report.findings {
            println!("  {f}");
        }
    }
}
