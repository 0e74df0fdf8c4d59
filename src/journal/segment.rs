//! Segment files: their names (which carry their first and last seq, so a removed or cut
//! segment is visible), listing a directory in seq order, and the zero-filled spare that
//! becomes the next open segment; the chain head a segment's last line gives.

use super::error::{sync_dir, JournalError};
use crate::durable::FileError;
use crate::record::{self, LeafHash};
use serde::Deserialize;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

/// The names of a journal directory's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentName {
    /// `seg-FIRST-LAST.jsonl`
    Sealed {
        /// The seq of its first record.
        first: u64,
        /// The seq of its last record.
        last: u64,
    },
    /// `seg-FIRST.open.jsonl`
    Open {
        /// The seq of its first record.
        first: u64,
    },
}

impl SegmentName {
    /// Parse a file name; `None` for files that are not segments.
    pub fn parse(name: &str) -> Option<SegmentName> {
        let rest = name.strip_prefix("seg-")?;
        if let Some(first) = rest.strip_suffix(".open.jsonl") {
            return Some(SegmentName::Open {
                first: parse_seq(first)?,
            });
        }
        let body = rest.strip_suffix(".jsonl")?;
        let (first, last) = body.split_once('-')?;
        Some(SegmentName::Sealed {
            first: parse_seq(first)?,
            last: parse_seq(last)?,
        })
    }

    /// The file name.
    pub fn file_name(&self) -> String {
        match self {
            SegmentName::Sealed { first, last } => format!("seg-{first:020}-{last:020}.jsonl"),
            SegmentName::Open { first } => format!("seg-{first:020}.open.jsonl"),
        }
    }

    /// The first sequence number the segment holds.
    pub fn first(&self) -> u64 {
        match self {
            SegmentName::Sealed { first, .. } | SegmentName::Open { first } => *first,
        }
    }
}

pub(super) fn parse_seq(digits: &str) -> Option<u64> {
    if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// The segments of a journal directory, sealed ones in order, then the open one.
pub fn list_segments(dir: &Path) -> Result<Vec<(SegmentName, PathBuf)>, JournalError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(FileError::on(dir))? {
        let entry = entry.map_err(FileError::on(dir))?;
        if let Some(name) = entry.file_name().to_str().and_then(SegmentName::parse) {
            found.push((name, entry.path()));
        }
    }
    // Sealed before open when they start at the same seq (cannot happen in a healthy journal,
    // but keeps the order total).
    found.sort_by_key(|(name, _)| (name.first(), matches!(name, SegmentName::Open { .. })));
    Ok(found)
}

/// The node whose records `segments` hold: the `node` of the first record of the first segment
/// that has one (`None`: no segment holds a record).
pub fn node_of_segments(segments: &[(SegmentName, PathBuf)]) -> Option<String> {
    #[derive(Deserialize)]
    struct NodeOf {
        node: String,
    }
    segments.iter().find_map(|(_, path)| {
        let bytes = fs::read(path).ok()?;
        let line = bytes.split(|&b| b == b'\n').next()?;
        serde_json::from_slice::<NodeOf>(line).ok().map(|n| n.node)
    })
}

/// A zero-filled file ready to become the next open segment (see [`JournalConfig::preallocate`]).
pub(super) const SPARE: &str = "spare.prealloc";
/// The spare while it is being filled; never used, removed on open.
pub(super) const SPARE_TMP: &str = "spare.prealloc.tmp";

/// The length of a segment's content: everything but a trailing run of zero bytes, which is
/// preallocated space of the open segment (a record line never contains a NUL byte).
pub fn used_len(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

/// Write zeros into `file` from `from` up to `to` bytes, then make them durable. On failure
/// (typically ENOSPC) the file is cut back to `from`.
pub(super) fn zero_fill(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let chunk = vec![0u8; 1 << 20];
    let mut at = from;
    let mut fill = || -> std::io::Result<()> {
        while at < to {
            let n = chunk.len().min((to - at) as usize);
            file.write_all_at(&chunk[..n], at)?;
            at += n as u64;
        }
        file.sync_all()
    };
    let result = fill();
    if result.is_err() {
        let _ = file.set_len(from).and_then(|()| file.sync_all());
    }
    result
}

/// Prepare [`SPARE`] in the background (one preparation at a time). Whether it succeeds only
/// decides how fast the next segment is; a failure is logged and the journal carries on.
pub(super) fn spawn_spare(dir: PathBuf, size: u64, busy: Arc<AtomicBool>) {
    if dir.join(SPARE).exists() || busy.swap(true, Ordering::AcqRel) {
        return;
    }
    let in_thread = busy.clone();
    let spawned = thread::Builder::new()
        .name("journal-spare".into())
        .spawn(move || {
            let tmp = dir.join(SPARE_TMP);
            let result = crate::durable::private_file(&tmp, false)
                .and_then(|f| zero_fill(&f, 0, size))
                // Crash point: a half-filled spare keeps its temporary name and is removed on
                // the next open; only a complete one is renamed.
                .and_then(|()| fs::rename(&tmp, dir.join(SPARE)))
                .and_then(|()| File::open(&dir).and_then(|d| d.sync_all()));
            if let Err(e) = result {
                let _ = fs::remove_file(&tmp);
                tracing::warn!(error = %e, "journal: could not preallocate the next segment; it will grow as written");
            }
            in_thread.store(false, Ordering::Release);
        });
    if spawned.is_err() {
        busy.store(false, Ordering::Release);
    }
}

/// Create the open segment that starts at `first`: the prepared spare if there is one, else an
/// empty file. Returns it opened for positional writes.
pub(super) fn create_open_segment(dir: &Path, first: u64) -> Result<(File, PathBuf), JournalError> {
    let path = dir.join(SegmentName::Open { first }.file_name());
    if fs::rename(dir.join(SPARE), &path).is_err() {
        crate::durable::private_file(&path, true).map_err(FileError::on(&path))?;
    }
    // Crash point: the new open file may not exist after power loss; recovery creates it.
    sync_dir(dir)?;
    let file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(FileError::on(&path))?;
    Ok((file, path))
}

/// The minimal view of a line that the chain needs.
#[derive(Deserialize)]
pub(super) struct LineHead {
    pub(super) seq: u64,
    pub(super) prev: String,
    /// The writer stamps every record of one batch with the same time.
    #[serde(default)]
    pub(super) ts: String,
}

/// The chain position after a record: its seq and leaf hash.
#[derive(Debug, Clone, Copy)]
pub(super) struct Head {
    pub(super) seq: u64,
    pub(super) leaf: LeafHash,
}

pub(super) fn genesis() -> Head {
    Head {
        seq: 0,
        leaf: [0u8; 32],
    }
}

/// Read the last complete line of a sealed segment.
pub(super) fn last_line_of(path: &Path) -> Result<Option<Vec<u8>>, JournalError> {
    let mut file = File::open(path).map_err(FileError::on(path))?;
    let len = file.metadata().map_err(FileError::on(path))?.len();
    // Lines are small; read a growing window from the end until a full line is inside it.
    let mut window = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))
            .map_err(FileError::on(path))?;
        let mut buf = Vec::with_capacity((len - start) as usize);
        file.read_to_end(&mut buf).map_err(FileError::on(path))?;
        let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
        if let Some(pos) = body.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(body[pos + 1..].to_vec()));
        }
        if start == 0 {
            return Ok(if body.is_empty() {
                None
            } else {
                Some(body.to_vec())
            });
        }
        window *= 4;
    }
}

pub(super) fn head_of_line(line: &[u8], context: &str) -> Result<Head, JournalError> {
    let head: LineHead = serde_json::from_slice(line).map_err(|e| {
        JournalError::Corrupt(format!("{context}: last record does not parse: {e}"))
    })?;
    Ok(Head {
        seq: head.seq,
        leaf: record::leaf_hash(line),
    })
}
