//! auditgate's integration tests, one binary (as ripgrep does: one link step, one shared
//! harness). The harness is `tests/support/` (real sekmet FHIR server, JWKS server, keys,
//! Python FHIR clients); install its kit with `scripts/test-env.sh`. Add test modules below.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking, with the message of the unwrap or expect that found it"
)]

#[path = "../support/mod.rs"]
mod support;

mod archive;
mod archive_verify;
mod attacks;
mod attribution;
mod audit_api;
mod changes;
mod cli;
mod columnar;
mod console;
mod corpus;
mod crash;
mod deploy;
mod evasion;
mod fail_closed;
mod harness_selftest;
mod interactions;
mod network;
mod operations;
mod proofs;
mod query;
mod report;
mod s3_kit;
mod sql;
mod tamper;
mod tls;
