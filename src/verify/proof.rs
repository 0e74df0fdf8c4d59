//! Proof bundles: self-contained evidence that one record is in a signed checkpoint, or that
//! one signed checkpoint extends another, checkable offline with nothing but the public key.
//!
//! Owns the bundle format (`auditgate-proof/v1`, one JSON object) and both sides: making a
//! bundle from a journal directory ([`prove_record`], [`prove_consistency`]) and checking one
//! ([`check_bundle`]). Everything in a bundle is a standard transparency-log artefact, so a
//! third party can check it without auditgate:
//!
//! ```text
//! {
//!   "format": "auditgate-proof/v1",
//!   "kind": "inclusion",
//!   "record": "<the journal line, exactly, without its newline>",
//!   "leaf_index": 41,                     // = the record's seq - 1
//!   "tree_size": 4096,                    // = the checkpoint's size
//!   "proof": ["<base64 hash>", ...],      // RFC 6962 / 9162 audit path, leaf to root
//!   "checkpoint": "<C2SP signed note: tlog-checkpoint body + Ed25519 signature line>"
//! }
//! {
//!   "format": "auditgate-proof/v1",
//!   "kind": "consistency",
//!   "old_checkpoint": "<signed note>",
//!   "new_checkpoint": "<signed note>",
//!   "proof": ["<base64 hash>", ...]       // RFC 6962 / 9162 consistency proof
//! }
//! ```
//!
//! To check an inclusion bundle by hand: leaf hash = SHA-256(0x00 || record bytes); verify the
//! note's signature with the verifier key (any C2SP signed-note library, e.g. Go's
//! `golang.org/x/mod/sumdb/note`); take size and root from the checkpoint body; run the RFC 9162
//! section 2.1.3.2 inclusion check (e.g. transparency-dev/merkle `proof.VerifyInclusion`).

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::journal::{self, JournalError};
use crate::record;
use crate::tlog::checkpoint::{self, CheckpointError, CheckpointVerifier, SignedCheckpoint};
use crate::tlog::merkle::{self, Hash, Leaves, ProofError};

/// The `format` value of every bundle this version writes and reads.
pub const FORMAT: &str = "auditgate-proof/v1";

/// A proof bundle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Bundle {
    /// Record `leaf_index + 1` is in the tree the checkpoint signs.
    Inclusion {
        /// Always `auditgate-proof/v1`.
        format: String,
        /// The record's journal line.
        record: String,
        /// Its leaf index in the tree (seq - 1).
        leaf_index: u64,
        /// The size of the tree the proof is in.
        tree_size: u64,
        /// The proof's hashes, base64, leaf to root.
        proof: Vec<String>,
        /// The signed checkpoint (note text) of that tree.
        checkpoint: String,
    },
    /// The newer checkpoint's tree extends the older one's.
    Consistency {
        /// Always `auditgate-proof/v1`.
        format: String,
        /// The older signed checkpoint (note text).
        old_checkpoint: String,
        /// The newer signed checkpoint (note text).
        new_checkpoint: String,
        /// The proof's hashes, base64, leaf to root.
        proof: Vec<String>,
    },
}

/// Why a bundle could not be made or did not check out.
#[derive(Debug, Error)]
pub enum BundleError {
    /// The journal could not be read.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A checkpoint or key could not be read or checked.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The journal has no checkpoint that covers the record.
    #[error("no checkpoint covers seq {seq} yet (newest covers {newest}); wait for the next one")]
    NotCovered {
        /// The record's seq.
        seq: u64,
        /// The size of the newest checkpoint.
        newest: u64,
    },
    /// The bundle is not JSON of this format.
    #[error("not an {FORMAT} bundle: {0}")]
    Malformed(String),
    /// The record in the bundle is not the one at `leaf_index`.
    #[error("the record's seq is {seq}, but the bundle proves leaf index {leaf_index} (seq {})", leaf_index.saturating_add(1))]
    WrongRecord {
        /// The record's seq.
        seq: u64,
        /// The leaf index the bundle names (seq - 1).
        leaf_index: u64,
    },
    /// The checkpoint's size is not the bundle's tree size.
    #[error("the bundle says tree size {bundle}, the signed checkpoint says {signed}")]
    WrongSize {
        /// The tree size the bundle states.
        bundle: u64,
        /// The size the checkpoint signs.
        signed: u64,
    },
    /// The proof does not lead to the signed root.
    #[error(transparent)]
    Proof(#[from] ProofError),
}

impl BundleError {
    /// True when the bundle was read but its evidence does not hold (exit 1), as opposed to
    /// not being able to check at all (exit 2).
    pub fn is_verification_failure(&self) -> bool {
        matches!(
            self,
            BundleError::Checkpoint(CheckpointError::BadSignature { .. })
                | BundleError::WrongRecord { .. }
                | BundleError::WrongSize { .. }
                | BundleError::Proof(_)
        )
    }
}

fn encode(hashes: &[Hash]) -> Vec<String> {
    hashes
        .iter()
        .map(|h| base64::engine::general_purpose::STANDARD.encode(h.0))
        .collect()
}

fn decode(hashes: &[String]) -> Result<Vec<Hash>, BundleError> {
    if hashes.len() > merkle::MAX_PROOF_HASHES {
        return Err(ProofError::TooLong {
            len: hashes.len(),
            max: merkle::MAX_PROOF_HASHES,
        }
        .into());
    }
    hashes
        .iter()
        .map(|s| {
            Hash::parse_hash(s)
                .map_err(|e| BundleError::Malformed(format!("proof hash {s:?}: {e}")))
        })
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, BundleError> {
    fs::read(path).map_err(|source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The journal's checkpoint files with their parsed (unverified) contents, by size.
fn checkpoints(dir: &Path) -> Result<Vec<(PathBuf, SignedCheckpoint, Vec<u8>)>, BundleError> {
    let mut found = Vec::new();
    for path in checkpoint::list_checkpoint_files(dir)? {
        let note = read(&path)?;
        let parsed = checkpoint::parse_unverified(&note)?;
        found.push((path, parsed, note));
    }
    Ok(found)
}

/// The journal line of record `seq`, without its newline.
fn record_line(dir: &Path, seq: u64) -> Result<String, BundleError> {
    for (name, path) in journal::list_segments(dir)? {
        if let journal::SegmentName::Sealed { last, .. } = name {
            if last < seq {
                continue;
            }
        }
        if name.first() > seq {
            break;
        }
        let mut bytes = read(&path)?;
        bytes.truncate(journal::used_len(&bytes));
        let index = (seq - name.first()) as usize;
        if let Some(line) = bytes.split(|&b| b == b'\n').nth(index) {
            return Ok(String::from_utf8_lossy(line).into_owned());
        }
    }
    Err(JournalError::Corrupt(format!("no segment holds seq {seq}")).into())
}

/// A proof needs every record from seq 1: say so when segments are missing (removed after
/// shipping to the archive, `archive.delete_local_after_ship`).
fn needs_archive(e: JournalError) -> BundleError {
    match e {
        JournalError::Corrupt(detail) => JournalError::Corrupt(format!(
            "{detail}: a proof needs every record from seq 1; if segments were removed after \
             shipping, copy them back from the archive (they are zstd or gzip JSON Lines) first"
        ))
        .into(),
        other => other.into(),
    }
}

/// An inclusion bundle for record `seq`, against the checkpoint `checkpoint_file` or, by
/// default, the smallest checkpoint that covers it.
pub fn prove_record(
    dir: &Path,
    seq: u64,
    checkpoint_file: Option<&Path>,
) -> Result<Bundle, BundleError> {
    let (size, note) = match checkpoint_file {
        Some(path) => {
            let note = read(path)?;
            (checkpoint::parse_unverified(&note)?.size, note)
        }
        None => {
            let all = checkpoints(dir)?;
            let newest = all.iter().map(|(_, c, _)| c.size).max().unwrap_or(0);
            let (_, cp, note) = all
                .into_iter()
                .filter(|(_, c, _)| c.size >= seq)
                .min_by_key(|(_, c, _)| c.size)
                .ok_or(BundleError::NotCovered { seq, newest })?;
            (cp.size, note)
        }
    };
    if seq == 0 || seq > size {
        return Err(BundleError::NotCovered { seq, newest: size });
    }
    let leaves: Vec<Hash> = journal::read_leaf_hashes(dir, 1, size)
        .map_err(needs_archive)?
        .iter()
        .map(merkle::hash_of)
        .collect();
    let proof = Leaves::new(&leaves).inclusion_proof(seq - 1, size)?;
    Ok(Bundle::Inclusion {
        format: FORMAT.into(),
        record: record_line(dir, seq)?,
        leaf_index: seq - 1,
        tree_size: size,
        proof: encode(&proof),
        checkpoint: String::from_utf8_lossy(&note).into_owned(),
    })
}

/// A consistency bundle between two checkpoint files of the journal.
pub fn prove_consistency(dir: &Path, old: &Path, new: &Path) -> Result<Bundle, BundleError> {
    let (old_note, new_note) = (read(old)?, read(new)?);
    let old_size = checkpoint::parse_unverified(&old_note)?.size;
    let new_size = checkpoint::parse_unverified(&new_note)?.size;
    let leaves: Vec<Hash> = journal::read_leaf_hashes(dir, 1, new_size)
        .map_err(needs_archive)?
        .iter()
        .map(merkle::hash_of)
        .collect();
    let proof = Leaves::new(&leaves).consistency_proof(old_size, new_size)?;
    Ok(Bundle::Consistency {
        format: FORMAT.into(),
        old_checkpoint: String::from_utf8_lossy(&old_note).into_owned(),
        new_checkpoint: String::from_utf8_lossy(&new_note).into_owned(),
        proof: encode(&proof),
    })
}

/// What a bundle proved.
#[derive(Debug, Clone, PartialEq)]
pub enum Proven {
    /// Record `seq` is in the signed tree.
    Inclusion {
        /// The record's seq.
        seq: u64,
        /// The checkpoint that covers it.
        checkpoint: SignedCheckpoint,
    },
    /// The new signed tree extends the old one.
    Consistency {
        /// The older checkpoint.
        old: SignedCheckpoint,
        /// The newer one, which extends it.
        new: SignedCheckpoint,
    },
}

/// Parse a bundle's JSON.
pub fn parse_bundle(bytes: &[u8]) -> Result<Bundle, BundleError> {
    let bundle: Bundle =
        serde_json::from_slice(bytes).map_err(|e| BundleError::Malformed(e.to_string()))?;
    let format = match &bundle {
        Bundle::Inclusion { format, .. } | Bundle::Consistency { format, .. } => format,
    };
    if format != FORMAT {
        return Err(BundleError::Malformed(format!("format {format:?}")));
    }
    Ok(bundle)
}

/// Check a bundle with the public key alone.
pub fn check_bundle(bundle: &Bundle, key: &CheckpointVerifier) -> Result<Proven, BundleError> {
    match bundle {
        Bundle::Inclusion {
            record: line,
            leaf_index,
            tree_size,
            proof,
            checkpoint,
            ..
        } => {
            let signed = key.open(checkpoint.as_bytes())?;
            if signed.size != *tree_size {
                return Err(BundleError::WrongSize {
                    bundle: *tree_size,
                    signed: signed.size,
                });
            }
            #[derive(Deserialize)]
            struct Seq {
                seq: u64,
            }
            let seq = serde_json::from_str::<Seq>(line)
                .map_err(|e| BundleError::Malformed(format!("record: {e}")))?
                .seq;
            if seq != leaf_index.saturating_add(1) {
                return Err(BundleError::WrongRecord {
                    seq,
                    leaf_index: *leaf_index,
                });
            }
            let leaf = merkle::hash_of(&record::leaf_hash(line.as_bytes()));
            merkle::verify_inclusion(&decode(proof)?, *leaf_index, signed.size, leaf, signed.root)?;
            Ok(Proven::Inclusion {
                seq,
                checkpoint: signed,
            })
        }
        Bundle::Consistency {
            old_checkpoint,
            new_checkpoint,
            proof,
            ..
        } => {
            let old = key.open(old_checkpoint.as_bytes())?;
            let new = key.open(new_checkpoint.as_bytes())?;
            merkle::verify_consistency(&decode(proof)?, old.size, old.root, new.size, new.root)?;
            Ok(Proven::Consistency { old, new })
        }
    }
}
