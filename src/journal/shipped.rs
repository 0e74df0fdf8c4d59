//! The archive's progress file in the journal directory: which sealed segments and checkpoints
//! are shipped to the WORM archive and their locks confirmed.
//!
//! The archiver writes it (durably: temp file, fsync, rename, fsync the directory) after each
//! object's lock is confirmed; recovery and `verify` read it to accept that segments before the
//! first local one were removed after shipping (`archive.delete_local_after_ship`). The journal
//! owns the format because the file lives in its directory and its recovery depends on it.
//!
//! ```text
//! DIR/archive-state.json   {"target":"s3:bucket/prefix","segments_through_seq":4096,
//!                           "checkpoints_through":"00000000000000004096-20261126T0600...",
//!                           "columnar_through_seq":2048}
//! ```
//!
//! The columnar copies ship behind their segments (they are made at idle priority, when the
//! CPU has time), so they have a cursor of their own; a file written before it existed has
//! none, and then every shipped segment's copy shipped with it.

use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The progress file's name in the journal directory.
pub const SHIP_STATE_FILE: &str = "archive-state.json";

/// What is confirmed shipped, to which target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipState {
    /// The archive these objects went to (`dir:PATH` or `s3:BUCKET/PREFIX`).
    pub target: String,
    /// Every sealed segment up to this seq is shipped and its lock confirmed.
    pub segments_through_seq: u64,
    /// Every checkpoint file up to this name is shipped and its lock confirmed.
    pub checkpoints_through: String,
    /// Every shipped segment up to this seq is done with its columnar copy: shipped and
    /// locked, or given up for `auditgate backfill` (or copies are off). Read through
    /// [`ShipState::columnar_through`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columnar_through_seq: Option<u64>,
}

impl ShipState {
    /// The progress file as written, `None` if there is none. A file that does not parse is an
    /// [`io::ErrorKind::InvalidData`] error.
    pub fn read(journal_dir: &Path) -> io::Result<Option<ShipState>> {
        match fs::read(journal_dir.join(SHIP_STATE_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The progress towards `target`: the file's, or a fresh start when there is none or it is
    /// about another target.
    pub fn load(journal_dir: &Path, target: &str) -> io::Result<ShipState> {
        Ok(match Self::read(journal_dir)? {
            Some(state) if state.target == target => state,
            _ => ShipState {
                target: target.to_string(),
                ..ShipState::default()
            },
        })
    }

    /// Every shipped segment up to this seq is done with its columnar copy (a file from before
    /// the cursor existed: every shipped one).
    pub fn columnar_through(&self) -> u64 {
        self.columnar_through_seq
            .unwrap_or(self.segments_through_seq)
            .min(self.segments_through_seq)
    }

    /// Replace the progress file durably.
    pub fn store(&self, journal_dir: &Path) -> io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(io::Error::other)?;
        // Crash point: the old state stays until the rename; the objects it does not yet name
        // are then shipped again and found present with the same checksum.
        crate::durable::replace(&journal_dir.join(SHIP_STATE_FILE), &bytes)
    }
}

/// The last seq of the sealed segments the progress file says are shipped and locked (0 if
/// none or unreadable).
pub fn shipped_through_seq(journal_dir: &Path) -> u64 {
    ShipState::read(journal_dir)
        .ok()
        .flatten()
        .map_or(0, |s| s.segments_through_seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_state_reads_back_and_another_target_starts_fresh() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ShipState::read(dir.path()).unwrap(), None);
        assert_eq!(shipped_through_seq(dir.path()), 0);
        let state = ShipState {
            target: "dir:/a".into(),
            segments_through_seq: 42,
            checkpoints_through: "x".into(),
            columnar_through_seq: Some(7),
        };
        state.store(dir.path()).unwrap();
        assert_eq!(ShipState::load(dir.path(), "dir:/a").unwrap(), state);
        assert_eq!(shipped_through_seq(dir.path()), 42);
        let other = ShipState::load(dir.path(), "dir:/b").unwrap();
        assert_eq!(other.segments_through_seq, 0);
        assert_eq!(other.target, "dir:/b");
    }

    #[test]
    fn a_file_without_the_columnar_cursor_had_every_copy_shipped_with_its_segment() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(SHIP_STATE_FILE),
            br#"{"target":"dir:/a","segments_through_seq":42,"checkpoints_through":"x"}"#,
        )
        .unwrap();
        let state = ShipState::load(dir.path(), "dir:/a").unwrap();
        assert_eq!(state.columnar_through_seq, None);
        assert_eq!(state.columnar_through(), 42);
        let behind = ShipState {
            columnar_through_seq: Some(40),
            ..state.clone()
        };
        assert_eq!(behind.columnar_through(), 40);
        // Never ahead of the segments it follows.
        let ahead = ShipState {
            columnar_through_seq: Some(50),
            ..state
        };
        assert_eq!(ahead.columnar_through(), 42);
    }

    #[test]
    fn a_garbled_file_is_an_error_for_readers_and_zero_for_recovery() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(SHIP_STATE_FILE), b"{not json").unwrap();
        let e = ShipState::read(dir.path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(shipped_through_seq(dir.path()), 0);
    }
}
