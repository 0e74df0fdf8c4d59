//! `verify`: a journal directory, or an archive (a directory or `s3://BUCKET/PREFIX`) with or
//! without the local journal, re-checked from their bytes; a report as text or JSON.

use std::path::{Path, PathBuf};

use super::archive_args::ArchiveLocation;
use super::outcome::{CliError, Verdict};
use super::print::{pretty_json, print_archive_report, print_report};

/// `auditgate verify --journal DIR [--key KEY]`.
pub fn verify(
    journal: &Path,
    key: Option<&str>,
    max_gap_secs: u64,
    json: bool,
) -> Result<Verdict, CliError> {
    let key = key
        .map(crate::tlog::checkpoint::CheckpointVerifier::load)
        .transpose()
        .map_err(|e| CliError::part("--key", e))?;
    let options = crate::verify::Options {
        key,
        max_gap: (max_gap_secs > 0).then(|| std::time::Duration::from_secs(max_gap_secs)),
    };
    let report = crate::verify::verify_journal_with(journal, &options).map_err(CliError::failed)?;
    Ok(emit_report(&report, report.ok(), json, print_report))
}

/// Print a verification report (JSON or text); `Findings` when it is not clean.
fn emit_report<R: serde::Serialize>(
    report: &R,
    ok: bool,
    json: bool,
    print_text: impl Fn(&R),
) -> Verdict {
    if json {
        println!("{}", pretty_json(report));
    } else {
        print_text(report);
    }
    Verdict::from_ok(ok)
}

/// `auditgate verify`'s arguments.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The journal directory of one node.
    #[arg(long, required_unless_present = "archive")]
    pub journal: Option<PathBuf>,
    /// Where the archive is.
    #[command(flatten)]
    pub location: ArchiveLocation,
    /// A checkpoint public key: a `.pub` file from `keygen`, or the key text. With
    /// `--archive`, give one per node: each node's checkpoints are checked with the key
    /// named `auditgate/NODE` (or the only key given).
    #[arg(long, value_name = "PUBKEY")]
    pub key: Vec<String>,
    /// With `--key`: report two consecutive checkpoints signed more than this many
    /// seconds apart (set it above the gateway's `checkpoint.heartbeat_secs`; 0 turns the
    /// check off).
    #[arg(long, default_value_t = 180)]
    pub max_gap_secs: u64,
    /// Check only this node of the archive. With `--journal`, the journal's node (default:
    /// the `node` of its records).
    #[arg(long, requires = "archive")]
    pub node: Option<String>,
    /// Every archived object must be locked (COMPLIANCE) for at least this many days after
    /// it was stored (one day of slack; 2192 days is six years).
    #[arg(long, default_value_t = crate::archive::SIX_YEARS_DAYS, requires = "archive")]
    pub min_retention_days: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `auditgate verify`: the archive when `--archive` is given, else the journal.
pub fn run(args: VerifyArgs) -> Result<Verdict, CliError> {
    match (&args.location.archive, &args.journal, args.key.as_slice()) {
        (Some(archive), _, _) => verify_archive(archive, &args),
        (None, Some(journal), []) => verify(journal, None, args.max_gap_secs, args.json),
        (None, Some(journal), [key]) => verify(journal, Some(key), args.max_gap_secs, args.json),
        (None, Some(_), _) => Err(CliError::Usage(
            "a journal is one node's: give one --key".into(),
        )),
        (None, None, _) => Err(CliError::Usage("give --journal or --archive".into())),
    }
}

/// `auditgate verify --archive ARCHIVE [--journal DIR] [--key KEY ...]`.
pub fn verify_archive(archive: &str, args: &VerifyArgs) -> Result<Verdict, CliError> {
    let cfg = args.location.config(archive).map_err(CliError::Usage)?;
    let mut keys = Vec::new();
    for key in &args.key {
        keys.push(
            crate::tlog::checkpoint::CheckpointVerifier::load(key)
                .map_err(|e| CliError::part("--key", e))?,
        );
    }
    let options = crate::verify::ArchiveOptions {
        keys,
        max_gap: (args.max_gap_secs > 0).then(|| std::time::Duration::from_secs(args.max_gap_secs)),
        min_retention_days: args.min_retention_days,
        node: args.node.clone(),
    };
    let runtime = super::archive_args::runtime()?;
    let report = runtime
        .block_on(async {
            let store = super::archive_args::open_store(&cfg).await;
            crate::verify::verify_archive(store, &cfg.prefix, &options, args.journal.as_deref())
                .await
        })
        .map_err(CliError::failed)?;
    Ok(emit_report(
        &report,
        report.ok(),
        args.json,
        print_archive_report,
    ))
}
