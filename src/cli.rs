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
    /// Verify a journal directory: every hash, the chain, sequence continuity and, with
    /// `--key`, every signed checkpoint (signature, Merkle root against the records, a cut
    /// tail, heartbeat gaps).
    ///
    /// Exit 0 when nothing is wrong, 1 with a list of findings, 2 if it could not run.
    Verify {
        /// The journal directory of one node.
        #[arg(long)]
        journal: PathBuf,
        /// The node's checkpoint public key: a `.pub` file from `keygen`, or the key text.
        #[arg(long)]
        key: Option<String>,
        /// With `--key`: report two consecutive checkpoints signed more than this many
        /// seconds apart (set it above the gateway's `checkpoint.heartbeat_secs`; 0 turns the
        /// check off).
        #[arg(long, default_value_t = 180)]
        max_gap_secs: u64,
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
        Command::Verify {
            journal,
            key,
            max_gap_secs,
            json,
        } => verify(&journal, key.as_deref(), max_gap_secs, json),
        Command::Keygen { out, name } => keygen(&out, name),
        Command::Prove {
            journal,
            seq,
            checkpoint,
            consistency,
            out,
        } => prove(&journal, seq, checkpoint, consistency, out),
        Command::VerifyProof { file, key } => verify_proof(&file, &key),
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

fn verify(journal: &std::path::Path, key: Option<&str>, max_gap_secs: u64, json: bool) -> ExitCode {
    let key = match key
        .map(crate::checkpoint::CheckpointVerifier::load)
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
    match &report.key {
        Some(key) => println!(
            "{} signed checkpoints checked with {key}; {} newest records not yet covered by one",
            report.checkpoints, report.uncovered_records
        ),
        None => println!(
            "checkpoints NOT checked (no --key): a rewrite of the whole chain or a cut tail cannot be seen without them"
        ),
    }
    if report.ok() {
        if report.key.is_some() {
            println!("OK: every record hashes and chains, every checkpoint is signed and matches the records");
        } else {
            println!("OK: every record hashes and chains");
        }
    } else {
        println!("FAILED: {} finding(s)", report.findings.len());
        for f in &report.findings {
            println!("  {f}");
        }
    }
}

fn default_key_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if crate::config::is_safe_token(&host) {
        format!("auditgate/{host}")
    } else {
        "auditgate".into()
    }
}

fn keygen(out: &std::path::Path, name: Option<String>) -> ExitCode {
    let name = name.unwrap_or_else(default_key_name);
    match crate::checkpoint::write_key_pair(out, &name) {
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
        (Some(pair), _) => crate::proof::prove_consistency(journal, &pair[0], &pair[1]),
        (None, Some(seq)) => crate::proof::prove_record(journal, seq, checkpoint.as_deref()),
        (None, None) => unreachable!("clap requires SEQ or --consistency"),
    };
    let bundle = match bundle {
        Ok(b) => b,
        Err(e) => {
            eprintln!("auditgate: prove: {e}");
            return ExitCode::from(2);
        }
    };
    let text = serde_json::to_string_pretty(&bundle).expect("bundle serialises") + "\n";
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
    use crate::proof::{check_bundle, parse_bundle, Proven};
    let key = match crate::checkpoint::CheckpointVerifier::load(key) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("auditgate: verify-proof: --key: {e}");
            return ExitCode::from(2);
        }
    };
    let checked = std::fs::read(file)
        .map_err(|source| crate::proof::BundleError::Io {
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
