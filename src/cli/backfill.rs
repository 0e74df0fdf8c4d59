//! `backfill`: make the columnar copies an archive lacks (see [`crate::archive::backfill`]).

use std::path::PathBuf;
use std::sync::Arc;

use super::archive_args::{open_store, ArchiveLocation};
use super::outcome::{CliError, Verdict};
use crate::archive::{ArchiveStats, Layout, Uploader};
use crate::tlog::checkpoint::CheckpointSigner;

/// `auditgate backfill`'s arguments.
#[derive(Debug, clap::Args)]
pub struct BackfillArgs {
    /// Take the archive, the node, the signing key, the retention and `[columnar]` from this
    /// gateway configuration file.
    #[arg(long, short, env = "AUDITGATE_CONFIG", conflicts_with = "archive")]
    pub config: Option<PathBuf>,
    /// Where the archive is (instead of `--config`).
    #[command(flatten)]
    pub location: ArchiveLocation,
    /// The node whose segments to copy (default: the name of `--key-file`'s key,
    /// `auditgate/NODE`).
    #[arg(long)]
    pub node: Option<String>,
    /// The node's checkpoint signing key (private; the seals are signed with it).
    #[arg(long, required_unless_present = "config")]
    pub key_file: Option<PathBuf>,
    /// Lock each object for this many days (at least six years, 2192, unless testing).
    #[arg(long, default_value_t = crate::archive::SIX_YEARS_DAYS)]
    pub retention_days: u64,
    /// Report what would be made; store nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `auditgate backfill`.
pub fn run(args: BackfillArgs) -> Result<Verdict, CliError> {
    let (archive, node, key_file, retention_days, options) = match &args.config {
        Some(path) => {
            let config = crate::config::Config::load(path)?;
            if config.archive.kind == crate::archive::ArchiveKind::None {
                return Err(CliError::Usage(format!(
                    "{}: [archive] kind is none: there is no archive to backfill",
                    path.display()
                )));
            }
            (
                config.archive.clone(),
                args.node.clone().unwrap_or(config.server.node.clone()),
                args.key_file
                    .clone()
                    .unwrap_or(config.checkpoint.key_file.clone()),
                config.archive.retention_days,
                config.columnar.write_options(),
            )
        }
        None => {
            let archive = args.location.archive.as_deref().ok_or_else(|| {
                CliError::Usage("give --config, or --archive with --key-file".into())
            })?;
            let cfg = args.location.config(archive).map_err(CliError::Usage)?;
            let key_file = args.key_file.clone().ok_or_else(|| {
                CliError::Usage("--key-file: the node's private checkpoint key".into())
            })?;
            (
                cfg,
                args.node.clone().unwrap_or_default(),
                key_file,
                args.retention_days,
                crate::columnar::ColumnarConfig::default().write_options(),
            )
        }
    };
    let signer = CheckpointSigner::load(&key_file, false, "")
        .map_err(|e| CliError::part("--key-file", e))?;
    let node = if node.is_empty() {
        signer
            .origin()
            .strip_prefix("auditgate/")
            .map(str::to_string)
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "the key is named {:?}, not auditgate/NODE: give --node",
                    signer.origin()
                ))
            })?
    } else {
        node
    };
    let runtime = super::archive_args::runtime()?;
    let report = runtime
        .block_on(async {
            let store = open_store(&archive).await;
            store.check_ready().await?;
            let uploader = Uploader {
                store,
                retention: std::time::Duration::from_secs(retention_days * 86_400),
                stats: Arc::new(ArchiveStats::default()),
            };
            let layout = Layout::new(&archive.prefix);
            crate::archive::backfill::backfill(
                &uploader,
                &layout,
                &node,
                &signer,
                &options,
                args.dry_run,
            )
            .await
        })
        .map_err(CliError::failed)?;
    if args.json {
        println!("{}", super::print::pretty_json(&report));
    } else {
        println!(
            "node {}: {} archived segments, {} with a columnar copy already, {} copies {}",
            report.node,
            report.segments,
            report.present,
            report.made,
            if report.dry_run {
                "to make (dry run: nothing stored)"
            } else {
                "made and stored"
            }
        );
        for problem in &report.problems {
            println!("  problem: {problem}");
        }
    }
    Ok(Verdict::from_ok(report.problems.is_empty()))
}
