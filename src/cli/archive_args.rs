//! Where an archive is, as the commands that read or write one take it: `s3://BUCKET/PREFIX`
//! (with the standard AWS credential chain) or a directory archive's path and `--prefix`.

use std::path::PathBuf;
use std::sync::Arc;

use crate::archive::{ArchiveConfig, ArchiveStore};

/// The archive's location arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ArchiveLocation {
    /// The archive: `s3://BUCKET/PREFIX`, or a directory archive's path.
    #[arg(long, value_name = "ARCHIVE")]
    pub archive: Option<String>,
    /// A directory archive's key prefix (`[archive] prefix`; default `auditgate`). For
    /// `s3://` the prefix is part of ARCHIVE.
    #[arg(long, requires = "archive")]
    pub prefix: Option<String>,
    /// An S3-compatible endpoint instead of AWS, e.g. `http://127.0.0.1:4566`.
    #[arg(long, requires = "archive")]
    pub endpoint_url: Option<String>,
    /// The bucket's AWS region (default: the standard AWS configuration chain).
    #[arg(long, requires = "archive")]
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most S3-compatible servers.
    #[arg(long, requires = "archive")]
    pub force_path_style: bool,
}

impl ArchiveLocation {
    /// What `--archive` names: `s3://BUCKET/PREFIX`, or a directory archive (the `[archive] dir`)
    /// with its objects under `--prefix` (as `[archive] dir` and `prefix` in the config).
    pub fn config(&self, archive: &str) -> Result<crate::archive::ArchiveConfig, String> {
        use crate::archive::{ArchiveConfig, ArchiveKind};
        let mut cfg = ArchiveConfig {
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            force_path_style: self.force_path_style,
            ..ArchiveConfig::default()
        };
        if let Some(rest) = archive.strip_prefix("s3://") {
            if self.prefix.is_some() {
                return Err("--prefix is for a directory archive; for S3 the prefix is part of s3://BUCKET/PREFIX".into());
            }
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("{}: no bucket (s3://BUCKET/PREFIX)", archive));
            }
            cfg.kind = ArchiveKind::S3;
            cfg.bucket = bucket.to_string();
            cfg.prefix = prefix.trim_end_matches('/').to_string();
        } else {
            if archive.contains("://") {
                return Err(format!(
                    "{}: not s3://BUCKET/PREFIX or a directory",
                    archive
                ));
            }
            if self.endpoint_url.is_some() || self.region.is_some() || self.force_path_style {
                return Err(
                    "--endpoint-url, --region and --force-path-style are for s3:// archives".into(),
                );
            }
            let dir = PathBuf::from(&archive);
            if !dir.is_dir() {
                return Err(format!("{}: no such directory", dir.display()));
            }
            cfg.kind = ArchiveKind::Dir;
            cfg.dir = dir;
            if let Some(prefix) = &self.prefix {
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
}

/// The store an archive config names (a directory for anything but S3).
pub async fn open_store(cfg: &ArchiveConfig) -> Arc<dyn ArchiveStore> {
    match cfg.kind {
        crate::archive::ArchiveKind::S3 => Arc::new(crate::archive::S3Store::connect(cfg).await),
        _ => Arc::new(crate::archive::DirStore::new(&cfg.dir)),
    }
}

/// The runtime archive reads and writes run on (multi-threaded: S3 requests and scans).
pub fn runtime() -> Result<tokio::runtime::Runtime, super::outcome::CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| super::outcome::CliError::part("cannot start the async runtime", e))
}
