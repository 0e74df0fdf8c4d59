//! `keygen`, `prove` and `verify-proof`: the checkpoint signing key, and self-contained proof
//! bundles made from a journal and checked offline with only the public key.

use std::path::{Path, PathBuf};

use super::outcome::{CliError, Verdict};
use super::print::pretty_json;

fn default_key_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if crate::config::server::is_safe_token(&host) {
        format!("auditgate/{host}")
    } else {
        "auditgate".into()
    }
}

/// `auditgate keygen --out FILE`: a new checkpoint signing key pair.
pub fn keygen(out: &Path, name: Option<String>) -> Result<Verdict, CliError> {
    let name = name.unwrap_or_else(default_key_name);
    let (pub_path, public) =
        crate::tlog::checkpoint::write_key_pair(out, &name).map_err(CliError::failed)?;
    println!(
        "private key: {} (mode 0600; keep it on the gateway only)",
        out.display()
    );
    println!("public key:  {}", pub_path.display());
    println!("{public}");
    Ok(Verdict::Clean)
}

/// `auditgate keygen --install-from`: copy a private key to `out`, mode 0600.
pub fn install_key(from: &Path, out: &Path) -> Result<Verdict, CliError> {
    let public = crate::tlog::checkpoint::install_key(from, out).map_err(CliError::failed)?;
    println!("private key: {} (mode 0600)", out.display());
    println!("{public}");
    Ok(Verdict::Clean)
}

/// `auditgate prove`: an inclusion proof of one record, or a consistency proof of two
/// checkpoints, as a JSON bundle.
pub fn prove(
    journal: &Path,
    seq: Option<u64>,
    checkpoint: Option<PathBuf>,
    consistency: Option<Vec<PathBuf>>,
    out: Option<PathBuf>,
) -> Result<Verdict, CliError> {
    let bundle = match (consistency.as_deref(), seq) {
        (Some([old, new]), _) => crate::verify::proof::prove_consistency(journal, old, new),
        (None, Some(seq)) => {
            crate::verify::proof::prove_record(journal, seq, checkpoint.as_deref())
        }
        _ => {
            return Err(CliError::Usage(
                "give a SEQ, or --consistency OLD NEW".into(),
            ))
        }
    }
    .map_err(CliError::failed)?;
    let text = pretty_json(&bundle) + "\n";
    match out {
        Some(path) => {
            std::fs::write(&path, text).map_err(|source| CliError::File {
                path: path.clone(),
                source,
            })?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(Verdict::Clean)
}

/// `auditgate verify-proof FILE --key KEY`: 0 when the bundle proves what it says, 1 when it
/// does not.
pub fn verify_proof(file: &Path, key: &str) -> Result<Verdict, CliError> {
    use crate::verify::proof::{check_bundle, parse_bundle, Proven};
    let key = crate::tlog::checkpoint::CheckpointVerifier::load(key)
        .map_err(|e| CliError::part("--key", e))?;
    let checked = std::fs::read(file)
        .map_err(|source| crate::verify::proof::BundleError::Io {
            path: file.to_path_buf(),
            source,
        })
        .and_then(|bytes| parse_bundle(&bytes))
        .and_then(|bundle| check_bundle(&bundle, &key));
    match checked {
        Ok(Proven::Inclusion { seq, checkpoint }) => {
            println!(
                "OK: record seq {seq} is in the tree of {} records signed by {} at {}",
                checkpoint.size,
                key.text(),
                checkpoint.time.as_deref().unwrap_or("(no time)")
            );
            Ok(Verdict::Clean)
        }
        Ok(Proven::Consistency { old, new }) => {
            println!(
                "OK: the tree of {} records (signed {}) extends the tree of {} records (signed {}), both signed by {}",
                new.size,
                new.time.as_deref().unwrap_or("(no time)"),
                old.size,
                old.time.as_deref().unwrap_or("(no time)"),
                key.text()
            );
            Ok(Verdict::Clean)
        }
        Err(e) if e.is_verification_failure() => {
            println!("FAILED: {e}");
            Ok(Verdict::Findings)
        }
        Err(e) => Err(CliError::failed(e)),
    }
}
