//! Signed checkpoints: the journal's Merkle tree head, signed with the node's Ed25519 key.
//!
//! Owns the checkpoint format, the signing key files, and the checkpoint files in the journal
//! directory. A checkpoint commits to every record up to its size: anyone holding the public
//! key can check that no record covered by it was changed, removed, reordered or cut off, even
//! if the whole journal (chain and hashes) was rewritten by someone without the private key.
//!
//! # Format
//!
//! A checkpoint is a C2SP `tlog-checkpoint` body inside a C2SP `signed-note` with an Ed25519
//! signature (the format of Go's `golang.org/x/mod/sumdb/note`, Sigstore, and the
//! transparency-dev witnesses):
//!
//! ```text
//! auditgate/gw-1                                   origin: the signing key's name
//! 4096                                             tree size: records seq 1..=4096
//! 9ZqZ8gC1kG5yY6sI4fK8m2Q1Yl0l7r3Qm3iXxq8cR1s=     base64 RFC 6962 root of those records
//! time 2026-11-26T07:41:26.039074Z                 extension: when it was signed (UTC)
//!
//! — auditgate/gw-1 Az3grl...base64(key id || signature)...
//! ```
//!
//! # Files
//!
//! ```text
//! JOURNAL/checkpoints/
//!   00000000000000004096-20261126T074126039074Z.note   one signed note per checkpoint
//!   merkle-state.json                                   the tree's compact state at the newest
//!                                                       checkpoint (lets a restart continue
//!                                                       the tree without rereading every record)
//!   seal-state-00000000000000004096.json                the same at each segment seal, kept for
//!                                                       good (lets `verify` check roots after
//!                                                       shipped segments were removed locally)
//! ```
//!
//! Key files (`auditgate keygen`): the private key in the signed-note form
//! `PRIVATE+KEY+NAME+KEYID+BASE64` (mode 0600), the public verifier key `NAME+KEYID+BASE64`
//! beside it with `.pub` appended. The key name is the checkpoint origin.
//!
//! Checkpoints are written by their own thread ([`Checkpointer`]), never by the journal writer,
//! so signing and the extra fsyncs never delay an append. A checkpoint covers only records that
//! were already durable when it was requested.

use crate::durable::FileError;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use signed_note::{Note, StandardSigner, StandardVerifier, VerifierList};
use thiserror::Error;

use crate::config::error::ConfigError;
use crate::tlog::merkle::{Frontier, Hash};

/// The directory inside the journal that holds checkpoints.
pub const CHECKPOINT_DIR: &str = "checkpoints";
/// The compact tree state beside the newest checkpoint.
pub const STATE_FILE: &str = "merkle-state.json";
/// The extension-line keyword for the signing time.
const TIME_KEYWORD: &str = "time ";

/// `[checkpoint]`: the signing key and how often the tree head is signed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// The Ed25519 signing key (signed-note private key form, from `auditgate keygen`).
    /// Relative paths resolve against the config file's directory. `{node}` is replaced by
    /// `server.node`, so replicas sharing one config (a Kubernetes StatefulSet) each find their
    /// own key in one mounted Secret.
    #[serde(default = "default_key_file")]
    pub key_file: PathBuf,
    /// Create the key (named after the node) if the file does not exist. For the quickstart
    /// and tests; in production, make the key with `auditgate keygen` and keep the public key
    /// where auditors can get it.
    #[serde(default)]
    pub create_key_if_missing: bool,
    /// While records arrive, sign a checkpoint at most this often.
    #[serde(default = "default_interval_secs")]
    pub interval_secs: u64,
    /// With no new records, sign a heartbeat checkpoint this often, so a silent gap (a stopped
    /// or tampered gateway) is visible.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u64,
}

fn default_key_file() -> PathBuf {
    PathBuf::from("checkpoint.key")
}
fn default_interval_secs() -> u64 {
    5
}
fn default_heartbeat_secs() -> u64 {
    60
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            key_file: default_key_file(),
            create_key_if_missing: false,
            interval_secs: default_interval_secs(),
            heartbeat_secs: default_heartbeat_secs(),
        }
    }
}

impl CheckpointConfig {
    /// Check the values are usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval_secs == 0 {
            return Err(ConfigError::invalid(
                "checkpoint.interval_secs",
                "must be at least 1",
            ));
        }
        if self.heartbeat_secs < self.interval_secs {
            return Err(ConfigError::invalid(
                "checkpoint.heartbeat_secs",
                format!(
                    "{} is shorter than checkpoint.interval_secs ({})",
                    self.heartbeat_secs, self.interval_secs
                ),
            ));
        }
        Ok(())
    }
}

/// What went wrong with a key or a checkpoint.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// A key or checkpoint file could not be read or written.
    #[error(transparent)]
    Io(#[from] FileError),
    /// The key file is not a signed-note Ed25519 key of the expected kind.
    #[error("{path}: not a valid {kind} key ({reason})")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Which key was expected (`private`, `public`).
        kind: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The key name cannot be a checkpoint origin.
    #[error("key name {name:?} is not valid: it must be non-empty, without spaces or '+'")]
    BadKeyName {
        /// The name.
        name: String,
    },
    /// The note does not parse, or its body is not a checkpoint.
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    /// The note carries no valid signature by the given key.
    #[error("checkpoint is not signed by {key}: {reason}")]
    BadSignature {
        /// The public key the note was checked with.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl CheckpointError {
    /// A bounded label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            CheckpointError::Io(_) => "io",
            CheckpointError::BadKey { .. } | CheckpointError::BadKeyName { .. } => "key",
            CheckpointError::Malformed(_) => "malformed",
            CheckpointError::BadSignature { .. } => "signature",
        }
    }
}

/// A new key pair: (private key text, public verifier key text).
pub fn generate_key(name: &str) -> Result<(String, String), CheckpointError> {
    if !signed_note::is_key_name_valid(name) {
        return Err(CheckpointError::BadKeyName { name: name.into() });
    }
    Ok(signed_note::generate_key(&mut rand_core::OsRng, name))
}

/// Write a new key pair: `path` (private, mode 0600, never overwritten) and `path.pub`.
/// Returns the public key path and text.
pub fn write_key_pair(path: &Path, name: &str) -> Result<(PathBuf, String), CheckpointError> {
    let (private, public) = generate_key(name)?;
    let pub_path = public_key_path(path);
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(FileError::on(dir))?;
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(FileError::on(path))?;
    file.write_all(format!("{private}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(FileError::on(path))?;
    write_durably(&pub_path, format!("{public}\n").as_bytes())?;
    Ok((pub_path, public))
}

/// Copy the private key at `from` (checked to be one) to `to`, readable by its owner only
/// (mode 0600), replacing what is there; returns its public key. For platforms that can only
/// hand the gateway a file others may read: a Kubernetes Secret mounted under `fsGroup` is
/// group-readable, and the gateway refuses to sign with such a key.
pub fn install_key(from: &Path, to: &Path) -> Result<String, CheckpointError> {
    let text = fs::read_to_string(from).map_err(FileError::on(from))?;
    let signer = CheckpointSigner::from_text(text.trim(), from)?;
    if let Some(dir) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::durable::private_dir_all(dir).map_err(FileError::on(dir))?;
    }
    crate::durable::replace(to, format!("{}\n", text.trim()).as_bytes())
        .map_err(FileError::on(to))?;
    Ok(signer.public_key().to_string())
}

/// Where the public key of the private key at `path` is written.
pub fn public_key_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// The node's signing key.
pub struct CheckpointSigner {
    signer: StandardSigner,
    public: String,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl CheckpointSigner {
    /// Load the private key from `path`; with `create`, make a key named `name` first if the
    /// file does not exist.
    pub fn load(path: &Path, create: bool, name: &str) -> Result<Self, CheckpointError> {
        if create && !path.exists() {
            write_key_pair(path, name)?;
            tracing::warn!(
                key_file = %path.display(),
                "created a new checkpoint signing key (create_key_if_missing); give auditors its .pub file"
            );
        }
        let text = fs::read_to_string(path).map_err(FileError::on(path))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(path)
                .map_err(FileError::on(path))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                // Whoever can read the key can sign a checkpoint over a rewritten journal.
                return Err(CheckpointError::BadKey {
                    path: path.to_path_buf(),
                    kind: "private",
                    reason: format!(
                        "mode {:o} lets other users read it; the key must be its owner's only (chmod 600)",
                        mode & 0o777
                    ),
                });
            }
        }
        Self::from_text(text.trim(), path)
    }

    fn from_text(text: &str, path: &Path) -> Result<Self, CheckpointError> {
        let bad = |reason: String| CheckpointError::BadKey {
            path: path.to_path_buf(),
            kind: "private",
            reason,
        };
        // signed_note's own messages say "verifier" for signer keys too; say what is wrong.
        let signer = StandardSigner::new(text).map_err(|e| {
            bad(match e {
                signed_note::SignerError::Format => {
                    "malformed: expected PRIVATE+KEY+NAME+KEYID+BASE64, as `auditgate keygen` writes"
                        .into()
                }
                signed_note::SignerError::Alg => "not an Ed25519 key".into(),
                signed_note::SignerError::Id => "its key ID does not match the key".into(),
            })
        })?;
        // The public key: derived from the seed, in verifier-key form.
        // PRIVATE+KEY+NAME+KEYID+BASE64: the name has no '+', the base64 may.
        let seed_b64 = text.splitn(5, '+').nth(4).unwrap_or_default();
        use base64::Engine;
        let seed = base64::engine::general_purpose::STANDARD
            .decode(seed_b64)
            .map_err(|e| bad(e.to_string()))?;
        let seed: [u8; 32] = seed
            .get(1..)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| bad("the key is not 32 bytes".into()))?;
        let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
        let public = signed_note::new_ed25519_verifier_key(
            signed_note::Signer::name(&signer),
            &signing.verifying_key(),
        );
        Ok(CheckpointSigner { signer, public })
    }

    /// The checkpoint origin (the key's name).
    pub fn origin(&self) -> &str {
        signed_note::Signer::name(&self.signer)
    }

    /// The public verifier key (`NAME+KEYID+BASE64`).
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// Sign the tree head (`size`, `root`) made at `time`: the signed note's bytes.
    #[allow(
        clippy::expect_used,
        reason = "the origin was checked as a key name when the key loaded, the extension is one \
                  line by construction, and Ed25519 signing has no failure mode"
    )]
    pub fn sign(&self, size: u64, root: Hash, time: SystemTime) -> Vec<u8> {
        let extension = format!("{TIME_KEYWORD}{}\n", crate::record::format_ts(time));
        let body = tlog_tiles::Checkpoint::new(self.origin(), size, root, &extension)
            .expect("the origin is a valid key name and the extension one line");
        let mut note = Note::new(&body.to_bytes(), &[]).expect("a checkpoint body is a note text");
        note.add_sigs(&[&self.signer])
            .expect("Ed25519 signing does not fail");
        note.to_bytes()
    }
}

impl CheckpointSigner {
    /// Sign another statement of this node with the checkpoint key: a C2SP signed note whose
    /// body is `text` (which must end in a newline). Used for the columnar seals, whose first
    /// line (`auditgate-columnar/v1`) can never parse as a checkpoint body (its second line is
    /// not a tree size), so a seal is never taken for a checkpoint or the other way round.
    pub fn sign_text(&self, text: &str) -> Result<Vec<u8>, CheckpointError> {
        let mut note = Note::new(text.as_bytes(), &[])
            .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
        note.add_sigs(&[&self.signer])
            .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
        Ok(note.to_bytes())
    }
}

/// A public key that checks checkpoints.
pub struct CheckpointVerifier {
    verifiers: VerifierList,
    text: String,
}

impl CheckpointVerifier {
    /// From the verifier-key text (`NAME+KEYID+BASE64`).
    pub fn from_text(text: &str) -> Result<Self, CheckpointError> {
        let text = text.trim();
        let verifier = StandardVerifier::new(text).map_err(|e| CheckpointError::BadKey {
            path: PathBuf::from("(public key)"),
            kind: "public",
            reason: e.to_string(),
        })?;
        Ok(CheckpointVerifier {
            verifiers: VerifierList::new(vec![Box::new(verifier)]),
            text: text.to_string(),
        })
    }

    /// From a file holding the verifier key, or the key text itself.
    pub fn load(path_or_key: &str) -> Result<Self, CheckpointError> {
        let path = Path::new(path_or_key);
        if path.exists() {
            let text = fs::read_to_string(path).map_err(FileError::on(path))?;
            Self::from_text(&text).map_err(|e| match e {
                CheckpointError::BadKey { kind, reason, .. } => CheckpointError::BadKey {
                    path: path.to_path_buf(),
                    kind,
                    reason,
                },
                other => other,
            })
        } else {
            Self::from_text(path_or_key)
        }
    }

    /// The key's name: the origin its checkpoints carry.
    pub fn name(&self) -> &str {
        self.text.split('+').next().unwrap_or_default()
    }

    /// The key in text form.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Open any signed note of this node (a columnar seal): its body, once its signature by
    /// this key is checked.
    pub fn open_text(&self, note: &[u8]) -> Result<String, CheckpointError> {
        let parsed = self.verified_note(note)?;
        String::from_utf8(parsed.text().to_vec())
            .map_err(|e| CheckpointError::Malformed(e.to_string()))
    }

    /// A signed note whose signature by this key was checked.
    fn verified_note(&self, note: &[u8]) -> Result<Note, CheckpointError> {
        let parsed =
            Note::from_bytes(note).map_err(|e| CheckpointError::Malformed(e.to_string()))?;
        parsed
            .verify(&self.verifiers)
            .map_err(|e| CheckpointError::BadSignature {
                key: self.text.clone(),
                reason: e.to_string(),
            })?;
        Ok(parsed)
    }

    /// Parse a signed checkpoint and check its signature and origin.
    pub fn open(&self, note: &[u8]) -> Result<SignedCheckpoint, CheckpointError> {
        let parsed = self.verified_note(note)?;
        let checkpoint = parse_body(parsed.text())?;
        if checkpoint.origin != self.name() {
            return Err(CheckpointError::BadSignature {
                key: self.text.clone(),
                reason: format!(
                    "the checkpoint's origin {:?} is not the key's name",
                    checkpoint.origin
                ),
            });
        }
        Ok(checkpoint)
    }
}

/// A checkpoint whose signature was checked (or, from [`parse_unverified`], not).
#[derive(Debug, Clone, PartialEq)]
pub struct SignedCheckpoint {
    /// The log's origin line: the signing key's name (`auditgate/NODE`).
    pub origin: String,
    /// How many records the signed tree holds.
    pub size: u64,
    /// The Merkle root of those records.
    pub root: Hash,
    /// The signing time from the `time` extension line (RFC 3339, UTC), if present.
    pub time: Option<String>,
}

impl SignedCheckpoint {
    /// The signing time as seconds since the epoch, if the note has one that parses.
    pub fn unix_time(&self) -> Option<f64> {
        let t = time::OffsetDateTime::parse(
            self.time.as_deref()?,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()?;
        Some(t.unix_timestamp_nanos() as f64 / 1e9)
    }
}

fn parse_body(text: &[u8]) -> Result<SignedCheckpoint, CheckpointError> {
    let body = tlog_tiles::Checkpoint::from_bytes(text)
        .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
    let time = body
        .extension()
        .lines()
        .find_map(|l| l.strip_prefix(TIME_KEYWORD))
        .map(str::to_string);
    Ok(SignedCheckpoint {
        origin: body.origin().to_string(),
        size: body.size(),
        root: *body.hash(),
        time,
    })
}

/// Parse a checkpoint note without checking any signature (the gateway reading its own files).
pub fn parse_unverified(note: &[u8]) -> Result<SignedCheckpoint, CheckpointError> {
    let parsed = Note::from_bytes(note).map_err(|e| CheckpointError::Malformed(e.to_string()))?;
    parse_body(parsed.text())
}

/// The file name of a checkpoint: its size (20 digits) and signing time, so names sort by size
/// and then by time.
pub fn file_name(size: u64, time: SystemTime) -> String {
    let stamp = crate::record::format_ts(time).replace(['-', ':', '.'], "");
    format!("{size:020}-{stamp}.note")
}

/// The tree size in a checkpoint file name, if it is one.
pub fn size_of_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".note")?;
    let (size, _) = stem.split_once('-')?;
    (size.len() == 20).then(|| size.parse().ok()).flatten()
}

/// The checkpoint files of a journal directory, in name order (size, then time).
pub fn list_checkpoint_files(journal_dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let dir = journal_dir.join(CHECKPOINT_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FileError::on(&dir)(e).into()),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(FileError::on(&dir))?;
        let name = entry.file_name();
        if size_of_file_name(&name.to_string_lossy()).is_some() {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// Where the compact tree state at the end of the sealed segment that ends at `size` is kept.
pub fn seal_state_path(journal_dir: &Path, size: u64) -> PathBuf {
    journal_dir
        .join(CHECKPOINT_DIR)
        .join(format!("seal-state-{size:020}.json"))
}

/// The tree's compact state as saved beside the newest checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MerkleState {
    /// How many leaves the tree holds.
    pub size: u64,
    /// Hex root (equal to the checkpoint's root at this size).
    pub root: String,
    /// Hex perfect-subtree roots, largest first.
    pub nodes: Vec<String>,
}

impl MerkleState {
    /// The state as the JSON file holds it.
    #[allow(
        clippy::expect_used,
        reason = "a struct of numbers and strings always serialises"
    )]
    fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a MerkleState serialises")
    }

    /// The state of `frontier`.
    pub fn of(frontier: &Frontier) -> Self {
        MerkleState {
            size: frontier.size(),
            root: hex::encode(frontier.root().0),
            nodes: frontier.nodes().iter().map(|h| hex::encode(h.0)).collect(),
        }
    }

    /// The frontier this state describes, if it is self-consistent.
    pub fn frontier(&self) -> Option<Frontier> {
        let mut nodes = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            let mut h = [0u8; 32];
            hex::decode_to_slice(n, &mut h).ok()?;
            nodes.push(Hash(h));
        }
        let frontier = Frontier::from_parts(self.size, nodes)?;
        (hex::encode(frontier.root().0) == self.root).then_some(frontier)
    }

    /// Read the state of a journal directory, if there is one.
    pub fn load(journal_dir: &Path) -> Result<Option<Self>, CheckpointError> {
        Self::load_from(&journal_dir.join(CHECKPOINT_DIR).join(STATE_FILE))
    }

    /// Read the state kept at the seal that ended at `size`, if there is one.
    pub fn load_at_seal(journal_dir: &Path, size: u64) -> Result<Option<Self>, CheckpointError> {
        Self::load_from(&seal_state_path(journal_dir, size))
    }

    fn load_from(path: &Path) -> Result<Option<Self>, CheckpointError> {
        let path = path.to_path_buf();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| CheckpointError::Malformed(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(FileError::on(&path)(e).into()),
        }
    }
}

/// [`crate::durable::replace`], its error naming the file.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    Ok(crate::durable::replace(path, bytes).map_err(FileError::on(path))?)
}

/// Write one signed checkpoint and the state it belongs to into the journal directory
/// (`time` names the file).
pub fn store(
    journal_dir: &Path,
    note: &[u8],
    frontier: &Frontier,
    time: SystemTime,
) -> Result<PathBuf, CheckpointError> {
    let dir = journal_dir.join(CHECKPOINT_DIR);
    crate::durable::private_dir_all(&dir).map_err(FileError::on(&dir))?;
    let path = dir.join(file_name(frontier.size(), time));
    write_durably(&path, note)?;
    // Crash point: the checkpoint is stored, the state may still describe the previous one; a
    // restart then rehashes the records since that one (the state is only a shortcut).
    let state = MerkleState::of(frontier).to_json();
    write_durably(&dir.join(STATE_FILE), &state)?;
    Ok(path)
}

/// Counters of the checkpoint thread.
#[derive(Debug, Default)]
pub struct CheckpointStats {
    /// Checkpoints signed and stored.
    pub signed: AtomicU64,
    /// Checkpoints that could not be stored.
    pub failures: AtomicU64,
    /// Tree size of the newest stored checkpoint.
    pub last_size: AtomicU64,
}

/// What the journal writer tells the checkpoint thread, in order.
pub enum CheckpointMessage {
    /// The leaf hashes of records that just became durable, in seq order.
    Leaves(Vec<Hash>),
    /// Sign the tree as it is after every `Leaves` sent before this message, at `time`.
    /// `seal`: the tree ends a sealed segment; its compact state is kept for good (see
    /// [`seal_state_path`]).
    Sign {
        /// The time the checkpoint states (and its file is named after).
        time: SystemTime,
        /// The tree ends a sealed segment: its compact state is kept for good.
        seal: bool,
    },
    /// Answer on the channel once every message before this one is done (stored or failed).
    Flush(mpsc::Sender<()>),
}

/// The background thread that keeps the Merkle tree and signs and stores the checkpoints the
/// journal writer asks for. The writer only hands over leaf hashes in bulk (before each
/// checkpoint, and every few thousand records), so the tree costs the append path nothing but
/// copying 32 bytes a record.
///
/// Dropping it waits until every checkpoint asked for is stored (the journal writer drops it
/// as it stops, and the last [`crate::journal::Journal`] handle waits for the writer).
pub struct Checkpointer {
    /// `None` only while dropping.
    queue: Option<mpsc::Sender<CheckpointMessage>>,
    stats: Arc<CheckpointStats>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has handled every message.
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Checkpointer {
    /// Start the thread for `journal_dir`, continuing the tree from `frontier`.
    pub fn start(
        journal_dir: &Path,
        signer: CheckpointSigner,
        frontier: Frontier,
    ) -> std::io::Result<Self> {
        // Unbounded: leaves must never be dropped (32 bytes a record; the thread keeps up with
        // any rate the writer can sync).
        let (queue, rx) = mpsc::channel();
        let stats = Arc::new(CheckpointStats::default());
        let dir = journal_dir.to_path_buf();
        let thread_stats = stats.clone();
        let thread = thread::Builder::new()
            .name("checkpointer".into())
            .spawn(move || run(dir, signer, frontier, rx, thread_stats))?;
        Ok(Checkpointer {
            queue: Some(queue),
            stats,
            thread: Some(thread),
        })
    }

    /// Hand over the leaves of newly durable records.
    pub fn leaves(&self, leaves: Vec<Hash>) {
        if let Some(queue) = &self.queue {
            let _ = queue.send(CheckpointMessage::Leaves(leaves));
        }
    }

    /// Ask for a checkpoint of everything handed over so far (`seal`: at a segment seal).
    pub fn sign(&self, time: SystemTime, seal: bool) {
        if let Some(queue) = &self.queue {
            let _ = queue.send(CheckpointMessage::Sign { time, seal });
        }
    }

    /// Wait until every checkpoint asked for so far is stored (or failed), at most `timeout`.
    /// False when the thread did not answer in time.
    pub fn flush(&self, timeout: std::time::Duration) -> bool {
        let Some(queue) = &self.queue else {
            return true;
        };
        let (done, wait) = mpsc::channel();
        if queue.send(CheckpointMessage::Flush(done)).is_err() {
            return false;
        }
        wait.recv_timeout(timeout).is_ok()
    }

    /// The thread's counters.
    pub fn stats(&self) -> &Arc<CheckpointStats> {
        &self.stats
    }
}

fn run(
    dir: PathBuf,
    signer: CheckpointSigner,
    mut frontier: Frontier,
    rx: mpsc::Receiver<CheckpointMessage>,
    stats: Arc<CheckpointStats>,
) {
    // File names must keep increasing (the archiver ships them in name order): a checkpoint
    // of the same size signed at an earlier wall-clock time (an NTP step back, a restored VM)
    // is named 1 µs after the newest one instead. The note inside keeps its true time.
    let mut newest: Option<(u64, SystemTime)> = list_checkpoint_files(&dir)
        .ok()
        .and_then(|files| files.last().cloned())
        .and_then(|path| fs::read(path).ok())
        .and_then(|note| parse_unverified(&note).ok())
        .and_then(|cp| {
            let t = time::OffsetDateTime::parse(
                cp.time.as_deref()?,
                &time::format_description::well_known::Rfc3339,
            )
            .ok()?;
            Some((cp.size, SystemTime::from(t)))
        });
    while let Ok(message) = rx.recv() {
        let (time, seal) = match message {
            CheckpointMessage::Leaves(leaves) => {
                for leaf in leaves {
                    frontier.push(leaf);
                }
                continue;
            }
            CheckpointMessage::Sign { time, seal } => (time, seal),
            CheckpointMessage::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let note = signer.sign(frontier.size(), frontier.root(), time);
        let name_time = match newest {
            Some((size, last)) if size == frontier.size() && time <= last => {
                last + std::time::Duration::from_micros(1)
            }
            _ => time,
        };
        newest = Some((frontier.size(), name_time));
        let stored = store(&dir, &note, &frontier, name_time).and_then(|_| {
            if seal {
                // Kept for good: lets `verify` check roots from here on after the segments
                // before it were shipped and removed locally.
                let state = MerkleState::of(&frontier).to_json();
                write_durably(&seal_state_path(&dir, frontier.size()), &state)?;
            }
            Ok(())
        });
        match stored {
            Ok(_) => {
                stats.signed.fetch_add(1, Ordering::Relaxed);
                stats.last_size.store(frontier.size(), Ordering::Release);
                let metrics = crate::metrics::global();
                metrics.checkpoints_signed.inc();
                metrics.checkpoint_tree_size.set(frontier.size() as i64);
                metrics
                    .checkpoint_last_signed
                    .set(crate::metrics::unix_now());
            }
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                crate::metrics::global().checkpoint_failures.inc();
                tracing::error!(error = %e, category = e.category(), "storing a checkpoint failed; the next one is tried at the next interval");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_signed_checkpoint_opens_with_its_public_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        let (pub_path, public) = write_key_pair(&key, "auditgate/test-node").unwrap();
        assert_eq!(fs::read_to_string(&pub_path).unwrap().trim(), public);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&key).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        // A second keygen never overwrites the key.
        assert!(write_key_pair(&key, "auditgate/test-node").is_err());

        let signer = CheckpointSigner::load(&key, false, "unused").unwrap();
        assert_eq!(signer.public_key(), public);
        #[cfg(unix)]
        {
            // A key other users can read is refused: they could sign a rewritten journal.
            use std::os::unix::fs::PermissionsExt;
            for mode in [0o640, 0o604, 0o644] {
                fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
                let e = CheckpointSigner::load(&key, false, "unused").unwrap_err();
                assert!(e.to_string().contains("chmod 600"), "{e}");
            }
            // Installed from such a file, it is its owner's only, and loads.
            let installed = dir.path().join("installed/k");
            assert_eq!(install_key(&key, &installed).unwrap(), public);
            assert_eq!(
                fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
                0o600
            );
            CheckpointSigner::load(&installed, false, "unused").unwrap();
            fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
            CheckpointSigner::load(&key, false, "unused").unwrap();
            // Anything but a private key is not installed.
            assert!(install_key(&pub_path, &dir.path().join("x")).is_err());
        }
        assert_eq!(signer.origin(), "auditgate/test-node");
        let root = Hash([7; 32]);
        let note = signer.sign(
            42,
            root,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        );
        let text = String::from_utf8(note.clone()).unwrap();
        assert!(text.starts_with("auditgate/test-node\n42\n"), "{text}");
        assert!(
            text.contains("\ntime 2023-11-14T22:13:20.000000Z\n\n— auditgate/test-node "),
            "{text}"
        );

        let verifier = CheckpointVerifier::load(pub_path.to_str().unwrap()).unwrap();
        let opened = verifier.open(&note).unwrap();
        assert_eq!((opened.size, opened.root), (42, root));
        assert_eq!(opened.unix_time(), Some(1_700_000_000.0));

        // One changed byte of the body, or another key, and it does not open.
        let tampered = text.replacen("\n42\n", "\n43\n", 1);
        assert!(matches!(
            verifier.open(tampered.as_bytes()),
            Err(CheckpointError::BadSignature { .. })
        ));
        let (_, other_public) = generate_key("auditgate/test-node").unwrap();
        let other = CheckpointVerifier::from_text(&other_public).unwrap();
        assert!(matches!(
            other.open(&note),
            Err(CheckpointError::BadSignature { .. })
        ));
    }

    #[test]
    fn every_generated_key_loads_and_derives_its_public_key() {
        // Regression: a base64 key body containing '+' was once split like a field separator.
        for i in 0..64 {
            let (private, public) = generate_key(&format!("auditgate/k{i}")).unwrap();
            let signer = CheckpointSigner::from_text(&private, Path::new("k")).unwrap();
            assert_eq!(signer.public_key(), public);
        }
    }

    #[test]
    fn the_origin_must_be_the_key_name() {
        // A note signed by the right key but claiming another origin is refused.
        let (private, public) = generate_key("auditgate/a").unwrap();
        let signer = CheckpointSigner::from_text(&private, Path::new("k")).unwrap();
        let body = tlog_tiles::Checkpoint::new("auditgate/b", 1, Hash([1; 32]), "").unwrap();
        let mut note = Note::new(&body.to_bytes(), &[]).unwrap();
        note.add_sigs(&[&signer.signer]).unwrap();
        let verifier = CheckpointVerifier::from_text(&public).unwrap();
        assert!(verifier.open(&note.to_bytes()).is_err());
    }

    #[test]
    fn checkpoint_file_names_keep_increasing_when_the_clock_steps_back() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        write_key_pair(&key, "auditgate/n").unwrap();
        let signer = CheckpointSigner::load(&key, false, "").unwrap();
        let mut frontier = Frontier::new();
        frontier.push(Hash([1; 32]));
        let checkpointer = Checkpointer::start(dir.path(), signer, frontier).unwrap();
        let now = SystemTime::now();
        checkpointer.sign(now, false);
        // The same tree, signed after the clock went back an hour.
        checkpointer.sign(now - Duration::from_secs(3600), false);
        let stats = checkpointer.stats().clone();
        drop(checkpointer); // waits until both are stored
        assert_eq!(stats.signed.load(Ordering::Relaxed), 2);
        let files = list_checkpoint_files(dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        // In name order, the second one written is last; its note keeps its own time.
        let last = fs::read(&files[1]).unwrap();
        let cp = parse_unverified(&last).unwrap();
        assert_eq!(
            cp.time.unwrap(),
            crate::record::format_ts(now - Duration::from_secs(3600))
        );
    }

    #[test]
    fn file_names_sort_by_size_then_time() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let a = file_name(9, t);
        let b = file_name(10, t);
        let c = file_name(10, t + Duration::from_micros(1));
        assert!(a < b && b < c, "{a} {b} {c}");
        assert_eq!(size_of_file_name(&c), Some(10));
        assert_eq!(size_of_file_name("merkle-state.json"), None);
    }

    #[test]
    fn state_round_trips_and_rejects_a_wrong_root() {
        let mut f = Frontier::new();
        for i in 0..11u8 {
            f.push(Hash([i; 32]));
        }
        let state = MerkleState::of(&f);
        assert_eq!(state.frontier(), Some(f));
        let mut bad = state.clone();
        bad.root = hex::encode([0u8; 32]);
        assert_eq!(bad.frontier(), None);
    }
}
