//! What `verify` reports: one [`Finding`] per problem, each naming its place (a journal file
//! name or an archive object key), line and seq.

use std::fmt;

use serde::Serialize;

use crate::tlog::checkpoint;

/// One problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// A complete line that is not a JSON record with `seq` and `prev`.
    Unparseable {
        /// The segment's file name (or archive key).
        segment: String,
        /// The line number in the segment, from 1.
        line: u64,
    },
    /// `seq` is not the previous record's seq + 1.
    SeqGap {
        /// The segment's file name (or archive key).
        segment: String,
        /// The line number in the segment, from 1.
        line: u64,
        /// The seq that should be here.
        expected: u64,
        /// The seq that is here.
        found: u64,
    },
    /// `prev` is not the leaf hash of the previous record: a record before it was changed,
    /// removed or reordered.
    ChainBreak {
        /// The segment's file name (or archive key).
        segment: String,
        /// The line number in the segment, from 1.
        line: u64,
        /// The record's seq.
        seq: u64,
    },
    /// The segment does not end with a newline: bytes after the last complete line.
    TornTail {
        /// The segment's file name (or archive key).
        segment: String,
        /// How many bytes follow the last complete line.
        bytes: u64,
    },
    /// A segment starts at a seq that does not follow the previous segment.
    SegmentGap {
        /// The segment's file name (or archive key).
        segment: String,
        /// The seq the segment should start at.
        expected_first: u64,
        /// The seq it starts at.
        found_first: u64,
    },
    /// A sealed segment's name disagrees with its records.
    NameMismatch {
        /// The segment's file name (or archive key).
        segment: String,
        /// The first seq its name says.
        named_first: u64,
        /// The last seq its name says.
        named_last: u64,
        /// The first seq inside it.
        first: u64,
        /// The last seq inside it.
        last: u64,
    },
    /// A sealed segment with no records.
    EmptySealed {
        /// The segment's file name (or archive key).
        segment: String,
    },
    /// More than one open segment, or an open segment before a sealed one.
    Layout {
        /// What is wrong, in words.
        detail: String,
    },
    /// A checkpoint file that does not parse or is not signed by the given key.
    CheckpointSignature {
        /// The checkpoint (a file under `checkpoints/`, or an archive key).
        checkpoint: String,
        /// Why, as the parser or reader said it.
        reason: String,
    },
    /// A validly signed checkpoint whose root is not the root of the records it covers: a
    /// record up to its size was changed, removed, inserted or reordered, or the chain was
    /// rewritten after it was signed.
    CheckpointMismatch {
        /// The checkpoint (a file under `checkpoints/`, or an archive key).
        checkpoint: String,
        /// The tree size the checkpoint signs.
        size: u64,
    },
    /// After the first [`Finding::CheckpointMismatch`], every later checkpoint covers the same
    /// changed records and cannot match either: counted here instead of listed one by one.
    LaterCheckpointMismatches {
        /// How many later checkpoints do not match.
        count: u64,
        /// The newest of them.
        last: String,
    },
    /// A validly signed checkpoint covers more records than the journal holds: records were
    /// cut off the end.
    Truncated {
        /// The checkpoint (a file under `checkpoints/`, or an archive key).
        checkpoint: String,
        /// The tree size the checkpoint signs.
        size: u64,
        /// How many records the journal holds.
        records: u64,
    },
    /// Two consecutive checkpoints were signed further apart than the heartbeat allows: the
    /// gateway was stopped, or checkpoints were removed.
    CheckpointGap {
        /// The earlier checkpoint.
        after: String,
        /// The later checkpoint.
        before: String,
        /// Seconds between their signing times.
        gap_secs: u64,
        /// The most allowed (`--max-gap-secs`).
        max_secs: u64,
    },
    /// A key was given but the journal holds no checkpoint at all.
    NoCheckpoints,
    /// The records before `first_local_seq` were removed locally after shipping, and no tree
    /// state kept at that seal is vouched for by a signed checkpoint: the roots of the local
    /// records cannot be checked here (`verify --archive ... --journal` can).
    Unanchored {
        /// The seq of the first record still in the local journal.
        first_local_seq: u64,
    },
    /// Two validly signed checkpoints of the same size with different roots: the log forked,
    /// so at most one of them is consistent with the earlier checkpoints and the records.
    CheckpointConflict {
        /// The tree size the checkpoint signs.
        size: u64,
        /// The first checkpoint of that size.
        first: String,
        /// The other one.
        second: String,
    },

    // ---- archive findings (`verify --archive`); `key` is the object key ----
    /// An archived object with a delete marker: `hidden` when the marker is the current
    /// version (a plain GET or listing no longer shows the object).
    DeleteMarker {
        /// The object key.
        key: String,
        /// The delete marker is the current version.
        hidden: bool,
    },
    /// An archived object with more than one version: it was written again after it was
    /// archived (the current version is what was checked).
    SecondVersion {
        /// The object key.
        key: String,
        /// How many versions the object has.
        versions: usize,
    },
    /// An archived object (its current version) that is not locked in COMPLIANCE mode until
    /// a retain-until date.
    LockMissing {
        /// The object key.
        key: String,
        /// The lock mode the store reports, if any.
        mode: Option<String>,
        /// The retain-until date the store reports (Unix seconds), if any.
        retain_until: Option<i64>,
    },
    /// An archived object locked for less than the minimum retention (retain-until minus the
    /// time it was stored).
    RetentionShort {
        /// The object key.
        key: String,
        /// Days between the object's storing and its retain-until date.
        retained_days: u64,
        /// The minimum retention asked for (`--min-retention-days`).
        min_days: u64,
    },
    /// The SHA-256 the store recorded at upload is not the SHA-256 of the bytes it returns.
    ChecksumMismatch {
        /// The object key.
        key: String,
        /// The checksum the store recorded (base64 SHA-256).
        recorded: String,
        /// The checksum of the bytes it returned (base64 SHA-256).
        actual: String,
    },
    /// An archived segment that does not decompress.
    Undecodable {
        /// The object key.
        key: String,
        /// Why, as the parser or reader said it.
        reason: String,
    },
    /// A listed object that could not be read (gone between the listing and the read).
    Unreadable {
        /// The object key.
        key: String,
        /// Why, as the parser or reader said it.
        reason: String,
    },
    /// A columnar copy (Parquet file) does not hold what its segment holds: a row differs
    /// from its journal line, a row is missing or extra, or the file is not the one its seal
    /// states.
    ColumnarMismatch {
        /// The Parquet file's name (or archive key).
        copy: String,
        /// What differs (first differing seq and column, or the file's hash).
        detail: String,
    },
    /// A columnar seal does not open with the node's key, does not parse, or states a tree
    /// that is not the one of its records.
    SealInvalid {
        /// The seal's file name (or archive key).
        seal: String,
        /// Why.
        reason: String,
    },
    /// A columnar copy without its seal, or a seal without its copy (one of the pair was
    /// removed or never written).
    ColumnarUnpaired {
        /// The file that is there.
        present: String,
        /// The one that is not.
        missing: String,
    },
    /// An object under the archive's prefix that is neither a segment nor a checkpoint of the
    /// layout.
    UnexpectedObject {
        /// The object key.
        key: String,
    },
    /// Records `first..=last` of a node are in no archived segment: a segment was removed, or
    /// (`after` the last archived one) the local progress file says it was shipped but it is
    /// not there. `local_copy`: the local journal still holds them (and they were checked).
    SegmentMissing {
        /// The gateway node.
        node: String,
        /// The first missing seq.
        first: u64,
        /// The last missing seq.
        last: u64,
        /// The archived segment before the gap, if any.
        after: Option<String>,
        /// The archived segment after the gap, if any.
        before: Option<String>,
        /// The local journal still holds these records, and they were checked there.
        local_copy: bool,
    },
    /// The local progress file says this checkpoint was shipped, but the archive lacks it.
    CheckpointMissing {
        /// The object key.
        key: String,
    },
    /// The local journal and the archive disagree about an object.
    LocalMismatch {
        /// The object key.
        key: String,
        /// The local file.
        local: String,
        /// What is wrong, in words.
        detail: String,
    },
    /// Keys were given, but none is this node's (named `auditgate/NODE` or `NODE`): its
    /// checkpoints were not checked.
    NoKeyForNode {
        /// The gateway node.
        node: String,
        /// The keys that were given.
        keys: Vec<String>,
    },
    /// Nothing at all under the archive prefix.
    EmptyArchive {
        /// The archive prefix that was listed.
        prefix: String,
    },
}

/// Where a checkpoint is: a journal file name is shown under `checkpoints/`; an archive key or
/// a path is shown as it is.
fn checkpoint_place(label: &str) -> std::borrow::Cow<'_, str> {
    if label.contains('/') {
        label.into()
    } else {
        format!("{}/{label}", checkpoint::CHECKPOINT_DIR).into()
    }
}

/// Seconds since the epoch as RFC 3339 (UTC).
fn format_unix(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} (unix)"))
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Unparseable { segment, line } => {
                write!(f, "{segment}:{line}: line is not a valid record")
            }
            Finding::SeqGap { segment, line, expected, found } => {
                write!(f, "{segment}:{line}: seq {found}, expected {expected} (records missing, added or reordered)")
            }
            Finding::ChainBreak { segment, line, seq } => write!(
                f,
                "{segment}:{line}: seq {seq}: prev does not match the previous record's hash (a record before it was changed, removed or reordered)"
            ),
            Finding::TornTail { segment, bytes } => {
                write!(f, "{segment}: {bytes} bytes after the last complete line (torn or truncated tail)")
            }
            Finding::SegmentGap { segment, expected_first, found_first } => write!(
                f,
                "{segment}: starts at seq {found_first}, expected {expected_first} (a segment is missing or truncated)"
            ),
            Finding::NameMismatch { segment, named_first, named_last, first, last } => write!(
                f,
                "{segment}: named for seq {named_first}-{named_last} but holds {first}-{last} (truncated or extended)"
            ),
            Finding::EmptySealed { segment } => write!(f, "{segment}: sealed segment holds no records"),
            Finding::Layout { detail } => write!(f, "journal layout: {detail}"),
            Finding::CheckpointSignature { checkpoint, reason } => write!(
                f,
                "{}: not a valid checkpoint signed by the key: {reason}",
                checkpoint_place(checkpoint)
            ),
            Finding::CheckpointMismatch { checkpoint, size } => write!(
                f,
                "{}: signed root for records 1-{size} does not match the records (a record up to seq {size} was changed, removed, inserted or reordered)",
                checkpoint_place(checkpoint)
            ),
            Finding::LaterCheckpointMismatches { count, last } => write!(
                f,
                "{count} later checkpoints (up to {}) do not match either: they cover the same records",
                checkpoint_place(last)
            ),
            Finding::Truncated { checkpoint, size, records } => write!(
                f,
                "{}: signed for {size} records but the journal holds {records} (records {}-{size} were cut off)",
                checkpoint_place(checkpoint),
                records.saturating_add(1)
            ),
            Finding::CheckpointGap { after, before, gap_secs, max_secs } => write!(
                f,
                "checkpoints: {gap_secs} s between {after} and {before}, more than {max_secs} s (gateway stopped, or checkpoints removed)"
            ),
            Finding::Unanchored { first_local_seq } => write!(
                f,
                "records before seq {first_local_seq} were removed locally and no signed tree state anchors the rest: checkpoint roots cannot be checked here; use `verify --archive ARCHIVE --journal DIR`"
            ),
            Finding::NoCheckpoints => write!(f, "checkpoints: none found (removed, or the gateway never signed one)"),
            Finding::CheckpointConflict { size, first, second } => write!(
                f,
                "{} and {}: both validly signed for {size} records with different roots (the log forked: they are not consistent with each other)",
                checkpoint_place(first),
                checkpoint_place(second)
            ),
            Finding::DeleteMarker { key, hidden: true } => write!(
                f,
                "{key}: hidden by a delete marker (a plain GET or listing no longer shows it; its locked version is still stored)"
            ),
            Finding::DeleteMarker { key, hidden: false } => {
                write!(f, "{key}: has a delete marker in its version history")
            }
            Finding::SecondVersion { key, versions } => write!(
                f,
                "{key}: {versions} versions (written again after it was archived; the current version was checked)"
            ),
            Finding::LockMissing { key, mode, retain_until } => write!(
                f,
                "{key}: not locked in COMPLIANCE mode (lock mode {}, retain-until {})",
                mode.as_deref().unwrap_or("none"),
                retain_until.map_or_else(|| "none".to_string(), format_unix)
            ),
            Finding::RetentionShort { key, retained_days, min_days } => write!(
                f,
                "{key}: locked for {retained_days} days after it was stored, less than {min_days} days"
            ),
            Finding::ChecksumMismatch { key, recorded, actual } => write!(
                f,
                "{key}: stored with SHA-256 {recorded} but its bytes hash to {actual}"
            ),
            Finding::Undecodable { key, reason } => {
                write!(f, "{key}: does not decompress as its extension says: {reason}")
            }
            Finding::Unreadable { key, reason } => {
                write!(f, "{key}: listed but could not be read: {reason}")
            }
            Finding::ColumnarMismatch { copy, detail } => write!(
                f,
                "{copy}: the columnar copy does not match its segment: {detail}"
            ),
            Finding::SealInvalid { seal, reason } => {
                write!(f, "{seal}: the columnar seal does not hold: {reason}")
            }
            Finding::ColumnarUnpaired { present, missing } => write!(
                f,
                "{present} is there but {missing} is not: a columnar copy and its seal come in pairs"
            ),
            Finding::UnexpectedObject { key } => write!(
                f,
                "{key}: not a segment or checkpoint of the archive layout (written by something else)"
            ),
            Finding::SegmentMissing { node, first, last, after, before, local_copy } => {
                write!(f, "node={node}: records {first}-{last} are in no archived segment")?;
                match (after, before) {
                    (Some(a), Some(b)) => write!(f, " (between {a} and {b})")?,
                    (Some(a), None) => write!(f, " (after {a}, though the local progress file says they were shipped)")?,
                    (None, Some(b)) => write!(f, " (before {b})")?,
                    (None, None) => write!(f, " (the local progress file says they were shipped)")?,
                }
                if *local_copy {
                    write!(f, "; the local journal still holds them")?;
                }
                write!(f, ": a segment was removed from the archive")
            }
            Finding::CheckpointMissing { key } => write!(
                f,
                "{key}: missing from the archive, though the local progress file says it was shipped (removed)"
            ),
            Finding::LocalMismatch { key, local, detail } => {
                write!(f, "{key}: the local journal disagrees ({local}): {detail}")
            }
            Finding::NoKeyForNode { node, keys } => write!(
                f,
                "node={node}: no --key is named auditgate/{node} (given: {}); its checkpoints were not checked",
                keys.join(", ")
            ),
            Finding::EmptyArchive { prefix } => write!(
                f,
                "{prefix}: no archived object at all (a wrong archive or prefix, nothing shipped yet, or everything hidden)"
            ),
        }
    }
}
