//! How an archived segment is compressed (zstd level 1 by default, gzip readable and
//! selectable), and decompression bounded by the largest segment a journal writes.

use crate::journal::{self};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};

/// How an archived segment is compressed; the key's extension says which.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SegmentCompression {
    /// Zstandard, level 1 (`.jsonl.zst`).
    #[default]
    Zstd,
    /// gzip, level 1 (`.jsonl.gz`).
    Gzip,
}

/// zstd's level for segments: its fastest regular level. The archiver compresses while the
/// gateway serves; level 1 compresses journal segments 16:1 to 26:1 at 2 to 2.6 GB/s here
/// (`cargo bench --bench journal`, `zstd -b1`).
pub(super) const ZSTD_LEVEL: i32 = 1;

impl SegmentCompression {
    /// The extension after `.jsonl`, with its dot.
    pub fn extension(self) -> &'static str {
        match self {
            SegmentCompression::Zstd => ".zst",
            SegmentCompression::Gzip => ".gz",
        }
    }

    /// The other one (a segment stored by a gateway configured with it may already exist).
    pub fn other(self) -> Self {
        match self {
            SegmentCompression::Zstd => SegmentCompression::Gzip,
            SegmentCompression::Gzip => SegmentCompression::Zstd,
        }
    }

    /// The compression a file name's extension names, and the name without it.
    pub fn of_file_name(name: &str) -> Option<(Self, &str)> {
        [SegmentCompression::Zstd, SegmentCompression::Gzip]
            .into_iter()
            .find_map(|c| name.strip_suffix(c.extension()).map(|stem| (c, stem)))
    }

    /// Compress a segment at the fastest level. Deterministic for a given library version (no
    /// name or time in the header); a retry compares content, not compressed bytes. Fails only
    /// if the compressor cannot allocate its state.
    pub fn compress(self, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            SegmentCompression::Zstd => zstd::bulk::compress(bytes, ZSTD_LEVEL),
            SegmentCompression::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(
                    Vec::with_capacity(bytes.len() / 4),
                    flate2::Compression::fast(),
                );
                encoder.write_all(bytes)?;
                encoder.finish()
            }
        }
    }

    /// Decompress an archived segment; more than [`journal::MAX_SEGMENT_BYTES`] of output is an
    /// error: a planted "zip bomb" cannot exhaust a verifier's memory.
    pub fn decompress(self, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
        self.decompress_at_most(bytes, journal::MAX_SEGMENT_BYTES)
    }

    pub(super) fn decompress_at_most(self, bytes: &[u8], limit: u64) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(bytes.len().saturating_mul(8).min(1 << 26));
        match self {
            SegmentCompression::Zstd => zstd::stream::read::Decoder::with_buffer(bytes)?
                .take(limit + 1)
                .read_to_end(&mut out)?,
            SegmentCompression::Gzip => flate2::read::GzDecoder::new(bytes)
                .take(limit + 1)
                .read_to_end(&mut out)?,
        };
        if out.len() as u64 > limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("decompresses to more than {limit} bytes, the largest a segment can be"),
            ));
        }
        Ok(out)
    }
}
