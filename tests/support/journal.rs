//! Journal fixtures, written once for the unit tests and the integration tests: a small record
//! and a signed journal.
//!
//! The library includes this file in its unit tests (`src/lib.rs`, `#[cfg(test)] mod
//! fixtures`), where `extern crate self as auditgate` makes the `auditgate::` paths below name
//! the crate itself; the integration tests include it through `tests/support/mod.rs`. It uses
//! only the library's public API.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use auditgate::journal::{CheckpointTiming, Checkpointing, Journal, JournalConfig};
use auditgate::record::{
    Action, Attribution, ClockState, Event, InteractionKind, NetworkVector, Phase, Who,
};
use auditgate::tlog::checkpoint::{write_key_pair, CheckpointSigner};

/// A small outcome record (an unauthenticated read of `/fhir/metadata`), `req-N` its request ID.
pub fn event(n: usize) -> Event {
    Event {
        phase: Phase::Outcome,
        request_id: format!("req-{n}"),
        intent_seq: None,
        who: Who::Unauthenticated {
            reason: "missing_token".into(),
        },
        action: Action::R,
        interaction: InteractionKind::Read,
        rule: "test".into(),
        resource_type: None,
        resource_id: None,
        method: "GET".into(),
        path: "/fhir/metadata".into(),
        query: None,
        patients: vec![],
        attribution: Attribution::None,
        attribution_gaps: Vec::new(),
        net: NetworkVector::default(),
        outcome: None,
        clock: ClockState::default(),
        received: String::new(),
    }
}

/// A journal of node `node` under `root/journal` holding `records` records in 4 KiB segments,
/// signed with a new key at `root/checkpoint.key` (`auditgate/NODE`) and checkpointed after
/// every batch. Returns once a signed checkpoint covers every record (the final head is signed
/// as the writer stops): (journal directory, private key path).
pub fn signed_journal(root: &Path, node: &str, records: usize) -> (PathBuf, PathBuf) {
    let key = root.join("checkpoint.key");
    write_key_pair(&key, &format!("auditgate/{node}")).unwrap();
    let dir = root.join("journal");
    let cfg = JournalConfig {
        segment_max_bytes: 4096,
        ..JournalConfig::default()
    };
    let checkpointing = Checkpointing {
        signer: CheckpointSigner::load(&key, false, "unused").unwrap(),
        timing: CheckpointTiming {
            interval: Duration::ZERO,
            heartbeat: Duration::from_secs(3600),
        },
    };
    let (j, _) = Journal::open_with_checkpoints(&dir, node, &cfg, Some(checkpointing)).unwrap();
    for i in 0..records {
        j.append_blocking(&event(i)).unwrap();
    }
    let stats = j.checkpoint_stats().unwrap().clone();
    // Dropping the last handle stops the writer, which signs the final head.
    drop(j);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.last_size.load(Ordering::Acquire) < records as u64 {
        assert!(
            Instant::now() < deadline,
            "no checkpoint covers all {records} records"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (dir, key)
}
