//! Object keys, Hive-style so query engines read the archive as it is:
//! `PREFIX/v1/node=NODE/dt=YYYY-MM-DD/seg-FIRST-LAST.jsonl.zst` and
//! `PREFIX/v1/node=NODE/checkpoints/NAME.note`.

use super::compression::SegmentCompression;
use crate::journal::SegmentName;

/// Object key layout.
#[derive(Debug, Clone)]
pub struct Layout {
    pub(super) prefix: String,
}

impl Layout {
    /// The layout under `prefix` (empty: the bucket's or directory's root).
    pub fn new(prefix: &str) -> Self {
        Layout {
            prefix: prefix.to_string(),
        }
    }

    pub(super) fn join(&self, rest: &str) -> String {
        if self.prefix.is_empty() {
            rest.to_string()
        } else {
            format!("{}/{rest}", self.prefix)
        }
    }

    /// Everything of this layout version: `PREFIX/v1/`.
    pub fn root(&self) -> String {
        self.join("v1/")
    }

    /// Everything of one node: `PREFIX/v1/node=NODE/`.
    pub fn node(&self, node: &str) -> String {
        self.join(&format!("v1/node={node}/"))
    }

    /// A sealed segment's key; `date` is `YYYY-MM-DD` of its first record.
    pub fn segment(
        &self,
        node: &str,
        date: &str,
        first: u64,
        last: u64,
        compression: SegmentCompression,
    ) -> String {
        self.join(&format!(
            "v1/node={node}/dt={date}/{}{}",
            SegmentName::Sealed { first, last }.file_name(),
            compression.extension()
        ))
    }

    /// A segment's columnar copy: `PREFIX/v1/columnar/node=NODE/dt=DATE/seg-FIRST-LAST.parquet`,
    /// under a root of its own (engines read every file of a partition directory, so the
    /// Parquet and JSON tables must not share one).
    pub fn columnar(&self, node: &str, date: &str, first: u64, last: u64) -> String {
        self.join(&format!(
            "v1/columnar/node={node}/dt={date}/{}",
            crate::columnar::local::file_name(first, last, "parquet")
        ))
    }

    /// Everything of the columnar copies: `PREFIX/v1/columnar/`.
    pub fn columnar_root(&self) -> String {
        self.join("v1/columnar/")
    }

    /// A columnar copy's seal: `PREFIX/v1/node=NODE/seals/seg-FIRST-LAST.seal`.
    pub fn seal(&self, node: &str, first: u64, last: u64) -> String {
        self.join(&format!(
            "v1/node={node}/seals/{}",
            crate::columnar::local::file_name(first, last, "seal")
        ))
    }

    /// A checkpoint's key (`file_name` as in the journal's `checkpoints/`).
    pub fn checkpoint(&self, node: &str, file_name: &str) -> String {
        self.join(&format!("v1/node={node}/checkpoints/{file_name}"))
    }
}
