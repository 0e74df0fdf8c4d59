//! `auditgate backfill`: columnar copies for an archive written before they existed (or whose
//! copies failed): every archived segment of a node without its Parquet copy or seal gets
//! them, made from the archived segment itself, signed with the node's key, and stored the
//! archive's way (create-only, checksummed, locked, the lock confirmed).
//!
//! The node's segments are walked in seq order from seq 1, carrying the tree: a segment that
//! already has a copy gives the tree at its end from its seal (opened with the key's public
//! half); one without is downloaded, and its copy made after that tree. A gap in the archive
//! (a segment missing) leaves the tree unknown: the segments after it are reported, not
//! copied, until a seal states the tree again. Running it twice does nothing the second time;
//! running it after a crash makes the same bytes again (the copy is a pure function of the
//! segment and the options), which the store finds already present.

use std::collections::BTreeMap;

use serde::Serialize;

use super::compression::SegmentCompression;
use super::error::ArchiveError;
use super::layout::Layout;
use super::shipper::Uploader;
use crate::columnar::{write_segment, Seal, WriteOptions};
use crate::journal::SegmentName;
use crate::tlog::checkpoint::{CheckpointSigner, CheckpointVerifier};
use crate::tlog::merkle::Frontier;

/// What backfill did for one node.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackfillReport {
    /// The node.
    pub node: String,
    /// Archived segments found.
    pub segments: usize,
    /// Segments that already had a copy and a seal.
    pub present: usize,
    /// Copies made (and stored, unless `dry_run`).
    pub made: usize,
    /// Nothing was stored (`--dry-run`).
    pub dry_run: bool,
    /// What could not be done, one line each (a segment whose tree is unknown, one that does
    /// not read, a seal that does not open).
    pub problems: Vec<String>,
}

/// One archived segment as listed.
struct Listed {
    key: String,
    date: String,
    compression: SegmentCompression,
}

/// Make the missing columnar copies of `node`'s archived segments.
pub async fn backfill(
    uploader: &Uploader,
    layout: &Layout,
    node: &str,
    signer: &CheckpointSigner,
    options: &WriteOptions,
    dry_run: bool,
) -> Result<BackfillReport, ArchiveError> {
    let store = &uploader.store;
    let verifier = CheckpointVerifier::from_text(signer.public_key()).map_err(|e| {
        ArchiveError::Unreachable {
            target: store.target(),
            detail: format!("the signing key's public half does not load: {e}"),
        }
    })?;
    let node_prefix = layout.node(node);
    let columnar_prefix = format!("{}node={node}/", layout.columnar_root());
    let mut segments: BTreeMap<(u64, u64), Listed> = BTreeMap::new();
    let mut copies = std::collections::HashSet::new();
    let mut seals = BTreeMap::new();
    for prefix in [&node_prefix, &columnar_prefix] {
        for version in store.list_versions(prefix).await? {
            if !version.is_latest || version.is_delete_marker {
                continue;
            }
            let key = version.key;
            if let Some(rest) = key.strip_prefix(&columnar_prefix) {
                let file = rest.rsplit('/').next().unwrap_or_default();
                if let Some(range) = crate::columnar::local::parse_file_name(file, "parquet") {
                    copies.insert(range);
                }
            } else if let Some(rest) = key.strip_prefix(&node_prefix) {
                if let Some(name) = rest.strip_prefix("seals/") {
                    if let Some(range) = crate::columnar::local::parse_file_name(name, "seal") {
                        seals.insert(range, key.clone());
                    }
                } else if let Some((date, file)) =
                    rest.strip_prefix("dt=").and_then(|r| r.split_once('/'))
                {
                    if let Some((compression, stem)) = SegmentCompression::of_file_name(file) {
                        if let Some(SegmentName::Sealed { first, last }) = SegmentName::parse(stem)
                        {
                            segments.insert(
                                (first, last),
                                Listed {
                                    key: key.clone(),
                                    date: date.to_string(),
                                    compression,
                                },
                            );
                        }
                    }
                }
            }
        }
    }
    let mut report = BackfillReport {
        node: node.to_string(),
        segments: segments.len(),
        dry_run,
        ..BackfillReport::default()
    };
    let mut tree: Option<Frontier> = Some(Frontier::new());
    for ((first, last), listed) in &segments {
        let (first, last) = (*first, *last);
        if tree.as_ref().is_some_and(|t| t.size() + 1 != first) {
            report.problems.push(format!(
                "records {}..{} are in no archived segment: the tree before {} is unknown",
                tree.as_ref().map_or(0, |t| t.size() + 1),
                first - 1,
                listed.key
            ));
            tree = None;
        }
        if copies.contains(&(first, last)) {
            if let Some(seal_key) = seals.get(&(first, last)) {
                let note = store.get(seal_key).await?;
                match Seal::open(&note, &verifier).and_then(|s| s.end_frontier()) {
                    Ok(end) => {
                        report.present += 1;
                        tree = Some(end);
                        continue;
                    }
                    Err(e) => report.problems.push(format!(
                        "{seal_key}: the seal does not hold ({e}); the copy is made again"
                    )),
                }
            }
        }
        let compressed = store.get(&listed.key).await?;
        let plain = match listed.compression.decompress(&compressed) {
            Ok(plain) => plain,
            Err(e) => {
                report
                    .problems
                    .push(format!("{}: does not decompress: {e}", listed.key));
                tree = None;
                continue;
            }
        };
        let Some(before) = tree.take() else {
            report.problems.push(format!(
                "{}: the tree before it is unknown; no copy made",
                listed.key
            ));
            continue;
        };
        let options = options.clone();
        let made = tokio::task::spawn_blocking(move || write_segment(&plain, &before, &options))
            .await
            .map_err(|e| ArchiveError::Unreachable {
                target: store.target(),
                detail: format!("the copy task failed: {e}"),
            })?;
        let copy = match made {
            Ok(copy) => copy,
            Err(e) => {
                report.problems.push(format!("{}: {e}", listed.key));
                continue;
            }
        };
        let note = match copy.seal.sign(signer) {
            Ok(note) => note,
            Err(e) => {
                report.problems.push(format!("{}: {e}", listed.key));
                continue;
            }
        };
        tree = copy.seal.end_frontier().ok();
        if !dry_run {
            let copy_key = layout.columnar(node, &listed.date, first, last);
            let seal_key = layout.seal(node, first, last);
            let shipped = match uploader
                .ship("columnar", &copy_key, copy.parquet, None)
                .await
            {
                Ok(()) => uploader.ship("seal", &seal_key, note, None).await,
                Err(e) => Err(e),
            };
            match shipped {
                Ok(()) => {}
                // Another copy is stored under that key: never overwritten; reported.
                Err(e @ ArchiveError::Conflict { .. }) => {
                    report.problems.push(e.to_string());
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        report.made += 1;
    }
    Ok(report)
}
