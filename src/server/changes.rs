//! The gateway's own configuration in the trail (ONC 170.315(d)(3): changes to what the audit
//! log records, and how, are themselves recorded).
//!
//! Owns the records whose `who` is `gateway` and that carry a [`ConfigChange`]: one at every
//! start (the configuration file's hash, the rule files', every token verification key and the
//! checkpoint key in effect), one at every reload (applied, with the sections it changed and
//! those that need a restart; or rejected, with why), and one whenever a JWKS refresh changes
//! the token verification keys (the keys added and removed).
//!
//! Guarantees: each record goes through the same journal, in the same chain, as the requests
//! it governs, so a change cannot be hidden without breaking the chain. A record that cannot
//! be written is logged and counted (`auditgate_config_change_records_total{result="failed"}`);
//! it never stops the gateway (the journal's own failure already answers every request 503).
//! Nothing recorded here is PHI or secret: hashes, key fingerprints (an HMAC secret's
//! truncated), section names, file paths and the loader's error message.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::identity::Identity;
use crate::journal::Journal;
use crate::record::{ConfigChange, Event, GatewayId, NetworkVector, Who};

/// The rule name of configuration records.
pub const CONFIG_CHANGE_RULE: &str = "gateway.config";

/// Writes the configuration records of one gateway process.
pub struct ChangeRecorder {
    journal: Journal,
    node: String,
    /// The configuration file (none for the demo's built-in configuration).
    config_path: Option<PathBuf>,
    checkpoint_key: String,
    /// The token verification keys at the last record, to say what a change added and removed.
    last_keys: Mutex<Vec<String>>,
}

/// SHA-256 of a file's bytes, hex; `None` when it cannot be read.
fn file_sha256(path: &Path) -> Option<String> {
    std::fs::read(path)
        .ok()
        .map(|bytes| hex::encode(Sha256::digest(bytes)))
}

/// Each rule file of `config`: `PATH sha256:HEX` (`unreadable` when it cannot be read now).
fn rule_files(config: &Config, base_dir: &Path) -> Vec<String> {
    config
        .rules
        .files
        .iter()
        .map(|file| {
            let path = if file.is_relative() {
                base_dir.join(file)
            } else {
                file.clone()
            };
            let hash =
                file_sha256(&path).map_or("unreadable".to_string(), |h| format!("sha256:{h}"));
            format!("{} {hash}", file.display())
        })
        .collect()
}

/// What a reload did, for its record.
pub struct ReloadOutcome<'a> {
    /// The configuration now in effect (the new one when applied, else the old one).
    pub config: &'a Config,
    /// Applied sections that changed.
    pub changed: Vec<&'static str>,
    /// Changed sections that need a restart.
    pub not_applied: Vec<&'static str>,
    /// Why it was rejected, if it was.
    pub error: Option<String>,
}

impl ChangeRecorder {
    /// A recorder for this process's journal. `config_path`: the file it runs from.
    pub fn new(
        journal: Journal,
        node: &str,
        config_path: Option<&Path>,
        checkpoint_key: String,
    ) -> ChangeRecorder {
        ChangeRecorder {
            journal,
            node: node.to_string(),
            config_path: config_path
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_path_buf),
            checkpoint_key,
            last_keys: Mutex::new(Vec::new()),
        }
    }

    fn base_dir(&self) -> PathBuf {
        self.config_path
            .as_deref()
            .map(Config::base_dir)
            .unwrap_or_default()
    }

    /// The change with everything in effect now filled in; `keys_added`/`keys_removed` against
    /// the last record, which this one becomes.
    fn change(&self, cause: &str, config: &Config, identity: &Identity) -> ConfigChange {
        let keys = identity.key_inventory();
        let mut last = self
            .last_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let added = keys.iter().filter(|k| !last.contains(k)).cloned().collect();
        let removed = last.iter().filter(|k| !keys.contains(k)).cloned().collect();
        *last = keys.clone();
        ConfigChange {
            cause: cause.into(),
            applied: true,
            error: None,
            config_sha256: self.config_path.as_deref().and_then(file_sha256),
            changed: Vec::new(),
            not_applied: Vec::new(),
            rules: rule_files(config, &self.base_dir()),
            keys,
            keys_added: if cause == "start" { Vec::new() } else { added },
            keys_removed: removed,
            checkpoint_key: Some(self.checkpoint_key.clone()),
            software: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// Whether the token verification keys differ from the last record's.
    pub fn keys_changed(&self, identity: &Identity) -> bool {
        let last = self
            .last_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *last != identity.key_inventory()
    }

    /// The record of what this process starts with.
    pub async fn started(&self, config: &Config, identity: &Identity) {
        let change = self.change("start", config, identity);
        self.write(change).await;
    }

    /// The record of a reload, applied or rejected.
    pub async fn reloaded(&self, outcome: ReloadOutcome<'_>, identity: &Identity) {
        let mut change = self.change("reload", outcome.config, identity);
        change.applied = outcome.error.is_none();
        // One line (a TOML error quotes the file around the fault), at most 1 KiB.
        change.error = outcome.error.map(|e| {
            let mut line = e.split_whitespace().collect::<Vec<_>>().join(" ");
            if line.len() > 1024 {
                let mut cut = 1024;
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.truncate(cut);
            }
            line
        });
        change.changed = outcome.changed.iter().map(|s| s.to_string()).collect();
        change.not_applied = outcome.not_applied.iter().map(|s| s.to_string()).collect();
        self.write(change).await;
    }

    /// The record of a change of token verification keys (a JWKS refresh; the caller saw
    /// [`ChangeRecorder::keys_changed`]).
    pub async fn keys_refreshed(&self, config: &Config, identity: &Identity) {
        let change = self.change("keys", config, identity);
        self.write(change).await;
    }

    async fn write(&self, change: ConfigChange) {
        let event = config_event(&self.node, change);
        let result = match self.journal.append(&event).await {
            Ok(_) => "ok",
            Err(e) => {
                tracing::error!(error = %e, "the configuration record could not be written to the journal");
                "failed"
            }
        };
        crate::metrics::global()
            .config_change_records
            .with_label_values(&[result])
            .inc();
    }
}

/// The record of a configuration change on `node`.
pub fn config_event(node: &str, change: ConfigChange) -> Event {
    let net = NetworkVector {
        gateway: GatewayId {
            node: node.to_string(),
            listener: "-".into(),
        },
        ..NetworkVector::default()
    };
    let now = crate::record::format_ts(std::time::SystemTime::now());
    let mut event = Event::bare(
        uuid::Uuid::new_v4().to_string(),
        Who::Gateway,
        CONFIG_CHANGE_RULE,
        net,
        crate::clock::current(),
        now,
    );
    event.config_change = Some(change);
    event
}
