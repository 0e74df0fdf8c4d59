//! The columnar seal: a signed statement that ties one Parquet file to the journal records it
//! was made from, so a reader can trust the parts of the file it reads, and skip the rest,
//! without reading the whole file or the segment.
//!
//! A seal is a C2SP signed note, signed with the node's checkpoint key:
//!
//! ```text
//! auditgate-columnar/v1
//! node gw-1
//! records 1001 2000                      the segment's first and last seq
//! file 183042 <base64 SHA-256>           the Parquet file's size and hash
//! frontier <base64> ...                  the tree of records 1..=1000 (its perfect subtrees)
//! range <base64> ...                     the blocks of records 1001..=2000 (tlog::range)
//! tiles <base64> ...                     every aligned subtree of 256 records inside them
//! unit 0 <base64 SHA-256>                the file cut at every page, bloom filter, page index
//! unit 4 <base64 SHA-256>                and footer: each unit's start and hash; a unit ends
//! ...                                    where the next starts (the last at the file's end)
//!
//! — auditgate/gw-1 <signature>
//! ```
//!
//! What a reader checks, and what that proves:
//!
//! * the signature (with the node's public key): the gateway that sealed the segment made the
//!   statement;
//! * `frontier` extended by `range` gives the root of the signed checkpoint of size `last`
//!   (the gateway signs one at every segment seal), and `frontier` alone the root of the
//!   checkpoint of size `first - 1`: the file's records are exactly that piece of the signed
//!   log, contiguous with what came before;
//! * each unit it reads hashes to the seal's value: the footer (statistics), the bloom filters
//!   and the pages it decodes are the ones the gateway wrote. A row group skipped because its
//!   statistics or bloom filter rule a value out was skipped on signed evidence;
//! * each row it returns: its `line` hashes to its `leaf`, and its typed columns are the
//!   line's (`verify` checks every row of every file this way against the segment itself).

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::tlog::checkpoint::{CheckpointError, CheckpointSigner, CheckpointVerifier};
use crate::tlog::merkle::{Frontier, Hash};
use crate::tlog::range::{self, RangeError};

/// The height of a tile: 2^8 = 256 records.
pub const TILE_LEVEL: u8 = 8;

/// The tiles (aligned blocks of [`TILE_LEVEL`]) wholly inside leaves `[start, end)`.
pub fn tiles_within(start: u64, end: u64) -> impl Iterator<Item = range::Block> {
    let width = 1u64 << TILE_LEVEL;
    let first = start.div_ceil(width);
    let last = end / width;
    (first..last).map(|n| range::Block {
        level: TILE_LEVEL,
        n,
    })
}

/// The first line of every seal.
pub const SEAL_FORMAT: &str = "auditgate-columnar/v1";

/// Why a seal does not parse or does not hold.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The note's body is not a seal of this version.
    #[error("not a columnar seal: {0}")]
    Malformed(String),
    /// The signature, or the note format, failed.
    #[error(transparent)]
    Note(#[from] CheckpointError),
    /// The tree hashes do not fit the records' range.
    #[error("the seal's tree hashes do not fit records {first}..={last}: {source}")]
    Range {
        /// The first seq.
        first: u64,
        /// The last seq.
        last: u64,
        /// What does not fit.
        source: RangeError,
    },
}

/// A parsed seal.
#[derive(Debug, Clone, PartialEq)]
pub struct Seal {
    /// The node whose records the file holds.
    pub node: String,
    /// The first record's seq.
    pub first: u64,
    /// The last record's seq.
    pub last: u64,
    /// The Parquet file's size in bytes.
    pub file_size: u64,
    /// The Parquet file's SHA-256.
    pub file_sha256: [u8; 32],
    /// The tree of records `1..first` (its perfect-subtree roots, largest first).
    pub frontier: Vec<Hash>,
    /// The blocks of records `first..=last` ([`range::decompose`] order).
    pub range: Vec<Hash>,
    /// The hashes of the aligned subtrees of [`TILE_LEVEL`] inside `first..=last`, in order:
    /// with them, a record's inclusion proof needs only the leaves of its own tile.
    pub tiles: Vec<Hash>,
    /// The units: (start offset, SHA-256), sorted by offset, the first at 0.
    pub units: Vec<(u64, [u8; 32])>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64_32(text: &str) -> Result<[u8; 32], SealError> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| SealError::Malformed(format!("{text:?} is not a base64 SHA-256")))
}

impl Seal {
    /// The seal of a Parquet file `bytes` cut at `boundaries` (unit starts; 0 is added), for
    /// records `first..=last` of `node` whose tree before `first` is `frontier` and whose
    /// leaves are `leaves`.
    pub fn make(
        node: &str,
        first: u64,
        frontier: &Frontier,
        leaves: &[Hash],
        bytes: &[u8],
        boundaries: &[u64],
    ) -> Seal {
        let mut starts: Vec<u64> = boundaries
            .iter()
            .copied()
            .filter(|&b| b < bytes.len() as u64)
            .chain([0])
            .collect();
        starts.sort_unstable();
        starts.dedup();
        let units = starts
            .iter()
            .enumerate()
            .map(|(i, &start)| {
                let end = starts.get(i + 1).copied().unwrap_or(bytes.len() as u64);
                (
                    start,
                    Sha256::digest(&bytes[start as usize..end as usize]).into(),
                )
            })
            .collect();
        Seal {
            node: node.to_string(),
            first,
            last: first + leaves.len() as u64 - 1,
            file_size: bytes.len() as u64,
            file_sha256: Sha256::digest(bytes).into(),
            frontier: frontier.nodes().to_vec(),
            range: range::range_hashes(first - 1, leaves),
            tiles: tiles_within(first - 1, first - 1 + leaves.len() as u64)
                .map(|tile| {
                    let from = (tile.start() - (first - 1)) as usize;
                    range::perfect_root(&leaves[from..from + (1 << TILE_LEVEL)])
                })
                .collect(),
            units,
        }
    }

    /// The note body.
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "{SEAL_FORMAT}\nnode {}\nrecords {} {}\nfile {} {}\nfrontier",
            self.node,
            self.first,
            self.last,
            self.file_size,
            b64(&self.file_sha256)
        );
        for h in &self.frontier {
            text.push(' ');
            text.push_str(&b64(&h.0));
        }
        text.push_str("\nrange");
        for h in &self.range {
            text.push(' ');
            text.push_str(&b64(&h.0));
        }
        text.push_str("\ntiles");
        for h in &self.tiles {
            text.push(' ');
            text.push_str(&b64(&h.0));
        }
        text.push('\n');
        for (start, hash) in &self.units {
            text.push_str(&format!("unit {start} {}\n", b64(hash)));
        }
        text
    }

    /// Sign the seal with the node's checkpoint key.
    pub fn sign(&self, signer: &CheckpointSigner) -> Result<Vec<u8>, SealError> {
        Ok(signer.sign_text(&self.to_text())?)
    }

    /// Open a signed seal with the node's public key and check its shape.
    pub fn open(note: &[u8], key: &CheckpointVerifier) -> Result<Seal, SealError> {
        Seal::parse(&key.open_text(note)?)
    }

    /// Read a seal without checking its signature (`--no-verify`, or to report what it claims).
    pub fn open_unverified(note: &[u8]) -> Result<Seal, SealError> {
        let parsed =
            signed_note::Note::from_bytes(note).map_err(|e| SealError::Malformed(e.to_string()))?;
        let text =
            std::str::from_utf8(parsed.text()).map_err(|e| SealError::Malformed(e.to_string()))?;
        Seal::parse(text)
    }

    /// Parse a seal body and check its shape: the hash counts fit the records' range, the
    /// units start at 0 and increase inside the file.
    pub fn parse(text: &str) -> Result<Seal, SealError> {
        let bad = |what: &str| SealError::Malformed(what.to_string());
        let mut lines = text.lines();
        if lines.next() != Some(SEAL_FORMAT) {
            return Err(bad("its first line is not auditgate-columnar/v1"));
        }
        let mut field = |name: &str| -> Result<Vec<&str>, SealError> {
            let line = lines
                .next()
                .ok_or_else(|| bad(&format!("no {name} line")))?;
            let mut words = line.split(' ');
            if words.next() != Some(name) {
                return Err(bad(&format!("expected a {name} line, found {line:?}")));
            }
            Ok(words.filter(|w| !w.is_empty()).collect())
        };
        let node = match field("node")?.as_slice() {
            [node] => node.to_string(),
            _ => return Err(bad("the node line must name one node")),
        };
        let number = |w: &str| {
            w.parse::<u64>()
                .map_err(|_| bad(&format!("{w:?} is not a number")))
        };
        let (first, last) = match field("records")?.as_slice() {
            [a, b] => (number(a)?, number(b)?),
            _ => return Err(bad("the records line must give the first and last seq")),
        };
        if first == 0 || last < first {
            return Err(bad("the records line must give 1 <= first <= last"));
        }
        let (file_size, file_sha256) = match field("file")?.as_slice() {
            [size, hash] => (number(size)?, unb64_32(hash)?),
            _ => return Err(bad("the file line must give a size and a hash")),
        };
        let hashes = |words: Vec<&str>| -> Result<Vec<Hash>, SealError> {
            words.into_iter().map(|w| unb64_32(w).map(Hash)).collect()
        };
        let frontier = hashes(field("frontier")?)?;
        let range = hashes(field("range")?)?;
        let tiles = hashes(field("tiles")?)?;
        let mut units = Vec::new();
        for line in lines {
            match line.split(' ').collect::<Vec<_>>().as_slice() {
                ["unit", start, hash] => units.push((number(start)?, unb64_32(hash)?)),
                _ => return Err(bad(&format!("unexpected line {line:?}"))),
            }
        }
        let seal = Seal {
            node,
            first,
            last,
            file_size,
            file_sha256,
            frontier,
            range,
            tiles,
            units,
        };
        seal.end_frontier()?;
        if seal.tiles.len() != tiles_within(first - 1, last).count() {
            return Err(bad("the number of tiles does not fit the records"));
        }
        let increasing = seal.units.windows(2).all(|w| w[0].0 < w[1].0);
        if seal.units.first().map(|u| u.0) != Some(0)
            || !increasing
            || seal.units.last().is_some_and(|u| u.0 >= file_size)
        {
            return Err(bad(
                "the units must start at 0 and increase inside the file",
            ));
        }
        Ok(seal)
    }

    /// The tree of records `1..first` this seal states.
    pub fn start_frontier(&self) -> Result<Frontier, SealError> {
        Frontier::from_parts(self.first - 1, self.frontier.clone()).ok_or_else(|| {
            SealError::Malformed(format!(
                "a tree of {} records has {} perfect subtrees, not {}",
                self.first - 1,
                (self.first - 1).count_ones(),
                self.frontier.len()
            ))
        })
    }

    /// The tree of records `1..=last`: the start frontier extended by the range.
    pub fn end_frontier(&self) -> Result<Frontier, SealError> {
        let mut frontier = self.start_frontier()?;
        range::extend(&mut frontier, self.last - self.first + 1, &self.range).map_err(
            |source| SealError::Range {
                first: self.first,
                last: self.last,
                source,
            },
        )?;
        Ok(frontier)
    }

    /// Everything this seal knows of the tree, for proofs: the tree before the segment, the
    /// segment's blocks and its tiles.
    pub fn add_to(&self, subtrees: &mut range::Subtrees) -> Result<(), SealError> {
        subtrees.add_frontier(&self.start_frontier()?);
        subtrees
            .add_range(self.first - 1, self.last - self.first + 1, &self.range)
            .map_err(|source| SealError::Range {
                first: self.first,
                last: self.last,
                source,
            })?;
        subtrees
            .add_blocks(tiles_within(self.first - 1, self.last).zip(self.tiles.iter().copied()));
        Ok(())
    }

    /// The unit holding byte `offset`: (index, start, end).
    pub fn unit_at(&self, offset: u64) -> Option<(usize, u64, u64)> {
        if offset >= self.file_size {
            return None;
        }
        let i = self.units.partition_point(|(start, _)| *start <= offset) - 1;
        let end = self
            .units
            .get(i + 1)
            .map_or(self.file_size, |(start, _)| *start);
        Some((i, self.units[i].0, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(i: u64) -> Hash {
        Hash(crate::record::leaf_hash(&i.to_le_bytes()))
    }

    #[test]
    fn a_seal_round_trips_and_its_tree_continues_the_frontier() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        let (_, public) = crate::tlog::checkpoint::write_key_pair(&key, "auditgate/n1").unwrap();
        let signer = CheckpointSigner::load(&key, false, "").unwrap();
        let verifier = CheckpointVerifier::from_text(&public).unwrap();

        let mut frontier = Frontier::new();
        for i in 0..1000 {
            frontier.push(leaf(i));
        }
        let leaves: Vec<Hash> = (1000..1777).map(leaf).collect();
        let bytes: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let seal = Seal::make(
            "n1",
            1001,
            &frontier,
            &leaves,
            &bytes,
            &[4, 900, 4000, 9999],
        );
        assert_eq!(seal.units.len(), 4);
        assert_eq!(seal.unit_at(3), Some((0, 0, 4)));
        assert_eq!(seal.unit_at(4500), Some((3, 4000, 5000)));
        assert_eq!(seal.unit_at(5000), None);

        let note = seal.sign(&signer).unwrap();
        let opened = Seal::open(&note, &verifier).unwrap();
        assert_eq!(opened, seal);
        let mut whole = frontier.clone();
        for l in &leaves {
            whole.push(*l);
        }
        assert_eq!(opened.end_frontier().unwrap().root(), whole.root());

        // Another key, or one changed character of the body, and it does not open.
        let (_, other) = crate::tlog::checkpoint::generate_key("auditgate/n1").unwrap();
        let other = CheckpointVerifier::from_text(&other).unwrap();
        assert!(Seal::open(&note, &other).is_err());
        let text = String::from_utf8(note).unwrap();
        let tampered = text.replacen("records 1001 1777", "records 1001 1776", 1);
        assert!(Seal::open(tampered.as_bytes(), &verifier).is_err());
        // A seal is never a checkpoint.
        assert!(verifier.open(text.as_bytes()).is_err());
    }

    #[test]
    fn a_seal_whose_hashes_do_not_fit_its_records_is_refused() {
        let seal = Seal::make(
            "n",
            1,
            &Frontier::new(),
            &[leaf(0), leaf(1)],
            b"abcdef",
            &[],
        );
        let text = seal.to_text();
        assert!(Seal::parse(&text).is_ok());
        let wrong = text.replacen("records 1 2", "records 1 3", 1);
        assert!(matches!(Seal::parse(&wrong), Err(SealError::Range { .. })));
        let wrong = text.replacen("unit 0 ", "unit 1 ", 1);
        assert!(Seal::parse(&wrong).is_err());
    }
}
