//! Where a node's records are: the segments of a local journal directory and of an archive
//! (a directory or S3), each with its columnar copy and seal where one exists, and the signed
//! checkpoints; and reading their bytes ([`Fetcher`]).
//!
//! When a journal and an archive both hold a segment, the local file is read (faster, and the
//! archive's copy is `verify`'s to compare). A copy is used only as a pair with its seal, both
//! from the same place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::archive::{ArchiveError, ArchiveStore, Layout, SegmentCompression};
use crate::columnar::local::{parquet_path, parse_file_name, seal_path};
use crate::durable::FileError;
use crate::journal::{list_segments, SegmentName};
use crate::tlog::checkpoint;

/// Where one object's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A local file.
    Local(PathBuf),
    /// An archive object (its key).
    Archived(String),
}

impl Place {
    /// A label for messages: the path or key.
    pub fn label(&self) -> String {
        match self {
            Place::Local(p) => p.display().to_string(),
            Place::Archived(k) => k.clone(),
        }
    }
}

/// One segment of a node.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Its first seq.
    pub first: u64,
    /// Its last seq (`None`: the open segment, still growing).
    pub last: Option<u64>,
    /// The JSON lines; archived ones are compressed.
    pub json: Place,
    /// How an archived segment is compressed.
    pub compression: Option<SegmentCompression>,
    /// Its columnar copy and seal, when both are there.
    pub copy: Option<(Place, Place)>,
    /// One of the pair is there without the other (a removed copy or seal): which one.
    pub unpaired: Option<String>,
    /// `YYYY-MM-DD` of its first record (archive keys carry it; local segments: read).
    pub date: Option<String>,
}

/// A node's segments in seq order and its checkpoints (file name → where).
#[derive(Debug, Default)]
pub struct NodeSources {
    /// The node.
    pub node: String,
    /// Segments by first seq.
    pub segments: Vec<Segment>,
    /// Checkpoint notes by file name (size, then time).
    pub checkpoints: BTreeMap<String, Place>,
    /// The local journal directory, if one was given for this node.
    pub journal: Option<PathBuf>,
}

/// Reads bytes from local files and from the archive (blocking: called from the query's
/// worker thread, with the runtime's handle for the archive's async calls).
#[derive(Clone)]
pub struct Fetcher {
    /// The archive, if one was given.
    pub store: Option<Arc<dyn ArchiveStore>>,
    /// The runtime the archive's calls run on.
    pub runtime: tokio::runtime::Handle,
}

/// Why the sources could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A local file.
    #[error(transparent)]
    File(#[from] FileError),
    /// The archive.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// An archived object named without an archive.
    #[error("{0}: an archive object, but no archive was given")]
    NoArchive(String),
}

impl Fetcher {
    /// The whole object.
    pub fn get(&self, place: &Place) -> Result<Vec<u8>, SourceError> {
        match place {
            Place::Local(path) => Ok(std::fs::read(path).map_err(FileError::on(path))?),
            Place::Archived(key) => {
                let store = self.store()?;
                Ok(self.runtime.block_on(store.get(key))?)
            }
        }
    }

    /// `len` bytes from `start`.
    pub fn get_range(&self, place: &Place, start: u64, len: u64) -> Result<Vec<u8>, SourceError> {
        match place {
            Place::Local(path) => {
                use std::os::unix::fs::FileExt;
                let file = std::fs::File::open(path).map_err(FileError::on(path))?;
                let mut buf = vec![0u8; len as usize];
                file.read_exact_at(&mut buf, start)
                    .map_err(FileError::on(path))?;
                Ok(buf)
            }
            Place::Archived(key) => {
                let store = self.store()?;
                Ok(self.runtime.block_on(store.get_range(key, start, len))?)
            }
        }
    }

    /// A segment's JSON lines, decompressed.
    pub fn segment_lines(&self, segment: &Segment) -> Result<Vec<u8>, SourceError> {
        let bytes = self.get(&segment.json)?;
        match segment.compression {
            None => {
                let used = crate::journal::used_len(&bytes);
                let mut bytes = bytes;
                bytes.truncate(used);
                Ok(bytes)
            }
            Some(compression) => compression.decompress(&bytes).map_err(|e| {
                SourceError::File(FileError {
                    path: PathBuf::from(segment.json.label()),
                    source: std::io::Error::other(e.to_string()),
                })
            }),
        }
    }

    fn store(&self) -> Result<&Arc<dyn ArchiveStore>, SourceError> {
        self.store
            .as_ref()
            .ok_or_else(|| SourceError::NoArchive("(archive)".into()))
    }
}

/// The node of a journal directory: its records' `node`.
pub fn node_of_journal(dir: &Path) -> Result<Option<String>, SourceError> {
    let segments =
        list_segments(dir).map_err(|e| FileError::on(dir)(std::io::Error::other(e.to_string())))?;
    Ok(crate::journal::node_of_segments(&segments))
}

/// `YYYY-MM-DD` of the first record of a local segment file.
fn first_date(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = vec![0u8; 4096];
    let n = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
    let text = std::str::from_utf8(&head[..n]).ok()?;
    let at = text.find("\"ts\":\"")? + 6;
    text.get(at..at + 10).map(str::to_string)
}

/// The segments and checkpoints of a local journal directory.
pub fn local_sources(dir: &Path, node: &str) -> Result<NodeSources, SourceError> {
    let mut sources = NodeSources {
        node: node.to_string(),
        journal: Some(dir.to_path_buf()),
        ..NodeSources::default()
    };
    let listed =
        list_segments(dir).map_err(|e| FileError::on(dir)(std::io::Error::other(e.to_string())))?;
    for (name, path) in listed {
        let (first, last) = match name {
            SegmentName::Sealed { first, last } => (first, Some(last)),
            SegmentName::Open { first } => (first, None),
        };
        let mut unpaired = None;
        let copy = last.and_then(|last| {
            let (p, s) = (parquet_path(dir, first, last), seal_path(dir, first, last));
            match (p.exists(), s.exists()) {
                (true, true) => Some((Place::Local(p), Place::Local(s))),
                (true, false) => {
                    unpaired = Some(p.display().to_string());
                    None
                }
                (false, true) => {
                    unpaired = Some(s.display().to_string());
                    None
                }
                (false, false) => None,
            }
        });
        sources.segments.push(Segment {
            first,
            last,
            date: first_date(&path),
            json: Place::Local(path),
            compression: None,
            copy,
            unpaired,
        });
    }
    for path in checkpoint::list_checkpoint_files(dir)
        .map_err(|e| FileError::on(dir)(std::io::Error::other(e.to_string())))?
    {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        sources.checkpoints.insert(name, Place::Local(path));
    }
    Ok(sources)
}

/// The nodes of an archive (or only `only`), with their segments, copies and checkpoints.
pub async fn archive_sources(
    store: &Arc<dyn ArchiveStore>,
    layout: &Layout,
    only: &[String],
) -> Result<BTreeMap<String, NodeSources>, ArchiveError> {
    let root = layout.root();
    let columnar_root = layout.columnar_root();
    let mut listing = Vec::new();
    if only.is_empty() {
        listing = store.list_versions(&root).await?;
    } else {
        for node in only {
            listing.extend(store.list_versions(&layout.node(node)).await?);
            listing.extend(
                store
                    .list_versions(&format!("{columnar_root}node={node}/"))
                    .await?,
            );
        }
    }
    let mut nodes: BTreeMap<String, NodeSources> = BTreeMap::new();
    let mut copies: BTreeMap<(String, u64, u64), String> = BTreeMap::new();
    let mut seals: BTreeMap<(String, u64, u64), String> = BTreeMap::new();
    for version in listing {
        if !version.is_latest || version.is_delete_marker {
            continue;
        }
        let key = version.key;
        let (columnar, rest) = match key.strip_prefix(&columnar_root) {
            Some(rest) => (true, rest),
            None => match key.strip_prefix(&root) {
                Some(rest) => (false, rest),
                None => continue,
            },
        };
        let Some((node, rest)) = rest.strip_prefix("node=").and_then(|r| r.split_once('/')) else {
            continue;
        };
        let node = node.to_string();
        let entry = nodes.entry(node.clone()).or_insert_with(|| NodeSources {
            node: node.clone(),
            ..NodeSources::default()
        });
        let file = rest.rsplit('/').next().unwrap_or_default();
        if columnar {
            if let Some((first, last)) = parse_file_name(file, "parquet") {
                copies.insert((node, first, last), key.clone());
            }
        } else if rest.starts_with("seals/") {
            if let Some((first, last)) = parse_file_name(file, "seal") {
                seals.insert((node, first, last), key.clone());
            }
        } else if rest.starts_with("checkpoints/") {
            if checkpoint::size_of_file_name(file).is_some() {
                entry
                    .checkpoints
                    .insert(file.to_string(), Place::Archived(key.clone()));
            }
        } else if let Some(date) = rest
            .strip_prefix("dt=")
            .and_then(|r| r.split_once('/'))
            .map(|(d, _)| d.to_string())
        {
            if let Some((compression, stem)) = SegmentCompression::of_file_name(file) {
                if let Some(SegmentName::Sealed { first, last }) = SegmentName::parse(stem) {
                    entry.segments.push(Segment {
                        first,
                        last: Some(last),
                        json: Place::Archived(key.clone()),
                        compression: Some(compression),
                        copy: None,
                        unpaired: None,
                        date: Some(date),
                    });
                }
            }
        }
    }
    for (node, sources) in nodes.iter_mut() {
        for segment in &mut sources.segments {
            let Some(last) = segment.last else { continue };
            let id = (node.clone(), segment.first, last);
            match (copies.get(&id), seals.get(&id)) {
                (Some(copy), Some(seal)) => {
                    segment.copy =
                        Some((Place::Archived(copy.clone()), Place::Archived(seal.clone())))
                }
                (Some(one), None) | (None, Some(one)) => segment.unpaired = Some(one.clone()),
                (None, None) => {}
            }
        }
        sources.segments.sort_by_key(|s| s.first);
    }
    Ok(nodes)
}

/// One node's sources from a local journal and the archive together: the local segment where
/// both hold it (with the local copy if it has one, else the archive's).
pub fn merge(archived: NodeSources, local: NodeSources) -> NodeSources {
    let mut by_first: BTreeMap<u64, Segment> = archived
        .segments
        .into_iter()
        .map(|s| (s.first, s))
        .collect();
    for mut segment in local.segments {
        if let Some(archived) = by_first.get(&segment.first) {
            if archived.last == segment.last && segment.copy.is_none() {
                segment.copy = archived.copy.clone();
                if segment.copy.is_some() {
                    segment.unpaired = None;
                } else if segment.unpaired.is_none() {
                    segment.unpaired = archived.unpaired.clone();
                }
            }
        }
        by_first.insert(segment.first, segment);
    }
    let mut checkpoints = archived.checkpoints;
    checkpoints.extend(local.checkpoints);
    NodeSources {
        node: local.node,
        segments: by_first.into_values().collect(),
        checkpoints,
        journal: local.journal,
    }
}

/// Whether a local file among `sources` is gone since they were listed: the open segment was
/// sealed (renamed), or a shipped segment was removed for the archive. A query that failed
/// then is asked again from the sources as they are now.
pub fn local_file_gone(sources: &[NodeSources]) -> bool {
    let gone = |place: &Place| match place {
        Place::Local(path) => !path.exists(),
        Place::Archived(_) => false,
    };
    sources.iter().any(|node| {
        node.segments.iter().any(|s| {
            gone(&s.json)
                || s.copy
                    .as_ref()
                    .is_some_and(|(copy, seal)| gone(copy) || gone(seal))
        }) || node.checkpoints.values().any(gone)
    })
}

#[cfg(test)]
mod tests {
    use super::{local_file_gone, local_sources};

    #[test]
    fn a_segment_that_left_the_journal_directory_is_noticed() {
        let root = tempfile::tempdir().unwrap();
        let (journal, _key) = crate::fixtures::signed_journal(root.path(), "n1", 40);
        let sources = vec![local_sources(&journal, "n1").unwrap()];
        assert!(!local_file_gone(&sources));
        let first = sources[0]
            .segments
            .iter()
            .find_map(|s| match &s.json {
                super::Place::Local(path) => Some(path.clone()),
                super::Place::Archived(_) => None,
            })
            .unwrap();
        std::fs::remove_file(first).unwrap();
        assert!(local_file_gone(&sources), "a removed segment is noticed");
    }
}
