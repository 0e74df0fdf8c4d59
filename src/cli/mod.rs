//! The `auditgate` command line: raw arguments (clap) → one subcommand → one exit code.
//!
//! This module holds the arguments and the dispatch; each subcommand lives in a file of its own
//! and returns `Result<Verdict, CliError>`, and [`outcome::exit_code`] is the one place that
//! turns that into 0 (fine), 1 (it ran and found a problem) or 2 (it could not run: bad
//! config, unreadable journal, start-up failure).

mod archive_args;
mod backfill;
pub mod demo;
mod export;
mod geoip;
pub mod logging;
pub mod outcome;
pub mod print;
mod proofs;
mod query;
mod report;
mod rules;
mod run;
pub mod token;
mod trail;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use outcome::exit_code;

/// auditgate: a HIPAA audit gateway for EHR (FHIR) APIs.
///
/// Every request through the gateway is recorded in a local, fsync'd, SHA-256 hash-chained
/// journal before any patient data is released.
#[derive(Debug, Parser)]
#[command(name = "auditgate", version, about, long_about)]
pub struct Cli {
    /// What to do.
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
    Verify(verify::VerifyArgs),
    /// Answer an auditor's question over journals and archives: who saw this patient, what did
    /// this user touch, everything from this IP or device in a window.
    ///
    /// Reads the local journal (the open segment too), a directory archive or an S3 archive
    /// (`s3://BUCKET/PREFIX`, the standard AWS credential chain), using the columnar copies
    /// where they exist and the segments where not, several nodes at once. Every answer is
    /// verified: each segment's chain or seal, the records scanned against a checkpoint signed
    /// by the node's key, and an inclusion proof for each record returned; `--proof FILE`
    /// writes them for `auditgate verify-report`. Unverifiable data is refused unless
    /// `--no-verify`.
    ///
    /// Filters of one kind are alternatives (`--patient a --patient b`); different filters must
    /// all hold. Exit 0 with an answer, 1 when it was refused or a columnar copy did not check
    /// out (the answer then comes from the segments, and says so), 2 if it could not run.
    Query(Box<query::QueryArgs>),
    /// The auditor's reports over journals and archives: `access` (every access to one
    /// patient's data), `disclosures` (the HIPAA 164.528 accounting of one patient's record),
    /// `activity` (what one user touched, per day), `breach` (the timeline of a suspect user,
    /// IP, device or client app in a window, and the patients exposed), `flags` (snooping
    /// flags over a window), `changes` (the gateway's own configuration: starts, reloads, key
    /// changes).
    ///
    /// Each is verified and proven as `query` answers are, and says which nodes and which
    /// records it covers; `--format json` (or `--proof FILE`) carries the completeness proof
    /// that `auditgate verify-report` re-checks offline. Exit 0 with a report, 1 when it was
    /// refused or a columnar copy did not check out, 2 if it could not run.
    Report(Box<report::ReportArgs>),
    /// Export the trail's records as FHIR R4 `AuditEvent` resources following IHE BALP
    /// (Basic Audit Log Patterns), one per line (NDJSON): one event per patient a request
    /// named, searches and operations as action E. Takes `query`'s trail and filters; the
    /// records are verified first, as `query` verifies them.
    Export(Box<export::ExportArgs>),
    /// Check a query's proof file offline with the nodes' public keys: each node's scanned
    /// range is a contiguous piece of the log its checkpoint signs, and each returned record
    /// is in that log. Exit 0 when it holds, 1 when not, 2 if it could not be read.
    VerifyReport {
        /// The proof file (`auditgate query --proof FILE`).
        file: PathBuf,
        /// A node's checkpoint public key (a `.pub` file or the key text; repeatable).
        #[arg(long, required = true)]
        key: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make the columnar (Parquet) copies and seals an archive lacks: for segments archived
    /// before copies existed, or whose copy failed. Each copy is made from the archived
    /// segment, signed with the node's key and stored with the archive's lock. Safe to run
    /// again (nothing is made twice) and after a crash.
    ///
    /// Exit 0 when every segment has its copy, 1 with a list of problems, 2 if it could not
    /// run.
    Backfill(backfill::BackfillArgs),
    /// Make a checkpoint signing key pair: FILE (private, mode 0600) and FILE.pub (public).
    ///
    /// With `--install-from SECRET`, copy an existing private key to FILE (mode 0600) instead:
    /// the gateway refuses a key other users can read, and a Kubernetes Secret mounted under
    /// `fsGroup` is group-readable (see deploy/kubernetes/statefulset.yaml's init container).
    Keygen {
        /// Where to write the private key (never overwritten, unless installing).
        #[arg(long)]
        out: PathBuf,
        /// The key's name, which is also the checkpoint origin (default: auditgate/HOSTNAME).
        #[arg(long, conflicts_with = "install_from")]
        name: Option<String>,
        /// An existing private key to copy to `--out` with mode 0600.
        #[arg(long, value_name = "SECRET")]
        install_from: Option<PathBuf>,
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
        /// Which rules subcommand.
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
    let (name, result) = match cli.command {
        Command::Run { config, upgrade } => ("", run::run(&config, upgrade)),
        Command::CheckConfig { config } => ("", run::check_config(&config)),
        Command::Verify(args) => ("verify", verify::run(args)),
        Command::Backfill(args) => ("backfill", backfill::run(args)),
        Command::Query(args) => ("query", query::run(*args)),
        Command::Report(args) => ("report", report::run(*args)),
        Command::Export(args) => ("export", export::run(*args)),
        Command::VerifyReport { file, key, json } => {
            ("verify-report", query::verify_report(&file, &key, json))
        }
        Command::Keygen {
            out,
            name,
            install_from: None,
        } => ("keygen", proofs::keygen(&out, name)),
        Command::Keygen {
            out,
            install_from: Some(from),
            ..
        } => ("keygen", proofs::install_key(&from, &out)),
        Command::Prove {
            journal,
            seq,
            checkpoint,
            consistency,
            out,
        } => (
            "prove",
            proofs::prove(&journal, seq, checkpoint, consistency, out),
        ),
        Command::VerifyProof { file, key } => ("verify-proof", proofs::verify_proof(&file, &key)),
        Command::Demo {
            journal,
            keep_running,
        } => ("demo", demo::run(journal, keep_running)),
        Command::Token(args) => ("token", token::run(&args)),
        Command::Rules { command } => ("rules", rules::rules_command(command)),
        Command::Geoip {
            config,
            city_db,
            asn_db,
            ips,
        } => (
            "geoip",
            geoip::geoip_lookup(config.as_deref(), city_db, asn_db, &ips),
        ),
        Command::Health {
            config,
            admin,
            ready,
            timeout_secs,
        } => (
            "",
            run::health(
                config.as_deref(),
                admin,
                ready,
                Duration::from_secs(timeout_secs),
            ),
        ),
    };
    exit_code(name, result)
}
