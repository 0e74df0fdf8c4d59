//! auditgate: a reverse proxy that makes any EHR API auditable.
//!
//! Every request that reaches the gateway produces a record in a local, fsync'd, SHA-256
//! hash-chained journal before any byte of patient data is released (and, for changes, before
//! the EHR sees the request). The crate is organised as a thin pingora phase map ([`proxy`])
//! over plain modules that own the logic:
//!
//! * [`config`]: the one TOML file, parsed once into typed, validated structs;
//! * [`identity`]: JWT verification and the actor;
//! * [`rules`]: safe path normalisation and route rules into action, interaction and patients;
//! * [`extract`]: the patients a FHIR JSON request or response body references;
//! * [`inspect`]: the buffered path, for requests whose body or response names the patients;
//! * [`netvec`]: client IP through trusted proxies, device ID, user agent;
//! * [`geoip`]: country, city and ASN of the client IP;
//! * [`record`]: the journal line format and its hashes;
//! * [`journal`]: group commit, segments, recovery;
//! * [`merkle`]: the RFC 6962 tree, its roots and proofs;
//! * [`checkpoint`]: signed tree heads (C2SP checkpoints), keys;
//! * [`archive`]: shipping sealed segments and checkpoints to WORM storage (S3 Object Lock);
//! * [`proof`]: self-contained inclusion and consistency proof bundles;
//! * [`verify`]: re-checking a journal directory;
//! * [`clock`]: the kernel's NTP state;
//! * [`metrics`] and [`admin`]: Prometheus metrics, `/healthz` and `/readyz`;
//! * [`reload`]: the live configuration a SIGHUP swaps;
//! * [`server`]: start-up order; [`cli`] and [`demo`]: the command line.

pub mod admin;
pub mod archive;
pub mod checkpoint;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod extract;
pub mod geoip;
pub mod identity;
pub mod inspect;
pub mod journal;
pub mod merkle;
pub mod metrics;
pub mod netvec;
pub mod proof;
pub mod proxy;
pub mod record;
pub mod reload;
pub mod rules;
pub mod server;
pub mod tls;
pub mod verify;
