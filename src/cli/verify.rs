//! `verify`: a journal directory, or an archive (a directory or `s3://BUCKET/PREFIX`) with or
//! without the local journal, re-checked from their bytes; a report as text or JSON.

use std::path::{Path, PathBuf};

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

/// `verify --archive`'s arguments.
pub struct VerifyArchiveArgs {
    pub archive: String,
    pub journal: Option<PathBuf>,
    pub keys: Vec<String>,
    pub max_gap_secs: u64,
    pub node: Option<String>,
    pub prefix: Option<String>,
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    pub force_path_style: bool,
    pub min_retention_days: u64,
    pub json: bool,
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

/// `auditgate verify --archive ARCHIVE [--journal DIR] [--key KEY ...]`.
pub fn verify_archive(args: &VerifyArchiveArgs) -> Result<Verdict, CliError> {
    let cfg = archive_config(args).map_err(CliError::Usage)?;
    let mut keys = Vec::new();
    for key in &args.keys {
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::part("cannot start the async runtime", e))?;
    let report = runtime
        .block_on(async {
            let store: std::sync::Arc<dyn crate::archive::ArchiveStore> = match cfg.kind {
                crate::archive::ArchiveKind::S3 => {
                    std::sync::Arc::new(crate::archive::S3Store::connect(&cfg).await)
                }
                _ => std::sync::Arc::new(crate::archive::DirStore::new(&cfg.dir)),
            };
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
