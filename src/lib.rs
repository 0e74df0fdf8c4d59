//! auditgate: a reverse proxy that makes any EHR API auditable.
//!
//! Every request that reaches the gateway produces a record in a local, fsync'd, SHA-256
//! hash-chained journal before any byte of patient data is released (and, for changes, before
//! the EHR sees the request).
//!
//! The module map, one room per stage of a request's walk, then the offline tools, then what
//! every stage stands on. Imports point down the house, never back up: no file, and no stage
//! folder, imports one that imports it back (`tests/layout.rs` checks both).
//!
//! * [`cli`]: the command line, its one exit-code map, and the demo;
//! * [`server`]: start-up order, the admin listener, signals, drain and live reload;
//! * [`proxy`]: the pingora phase map, admission and the buffered exchange; the live snapshot;
//! * [`network`]: client IP through trusted proxies, device ID, GeoIP and ASN, TLS;
//! * [`identity`]: JWT verification and the actor;
//! * [`rules`]: safe path decoding and route rules into action, interaction and patients;
//! * [`attribution`]: the patients a request or response body references, and the settled list;
//! * [`journal`]: group commit, segments, recovery, the archive's progress file;
//! * [`tlog`]: the RFC 6962 tree and signed checkpoints;
//! * [`columnar`]: the Parquet copy of each sealed segment and its signed seal;
//! * [`archive`]: shipping sealed segments and checkpoints to WORM storage (S3 Object Lock);
//! * [`verify`]: re-checking a journal directory and an archive; proof bundles;
//! * [`query`]: the auditor's questions, verified answers with proof of completeness;
//! * [`config`]: the one TOML file, parsed once into typed, validated sections;
//! * [`metrics`] and [`clock`]: Prometheus metrics; the kernel's NTP state;
//! * [`record`]: the journal line format, its timestamps and hashes;
//! * [`fhir`]: FHIR id grammar and reference parsing, shared by rules and extraction;
//! * [`durable`]: files that survive a crash whole or not at all;
//! * [`background`]: batch work (compression, columnar copies) at low CPU priority.

pub mod archive;
pub mod attribution;
pub mod background;
pub mod cli;
pub mod clock;
pub mod columnar;
pub mod config;
pub mod console;
pub mod durable;

// Unit tests share the integration tests' fixtures, which name the crate `auditgate`.
#[cfg(test)]
extern crate self as auditgate;
pub mod fhir;
#[cfg(test)]
#[path = "../tests/support/fixtures.rs"]
#[allow(
    dead_code,
    reason = "shared with the integration tests, which use the rest"
)]
mod fixtures;
pub mod identity;
pub mod journal;
pub mod metrics;
pub mod network;
pub mod proxy;
pub mod query;
pub mod record;
pub mod report;
pub mod rules;
pub mod server;
pub mod tlog;
pub mod verify;
