//! `auditgate query`: the auditor's questions over the trail, answered from the columnar copies
//! where they exist and from the JSON segments where not, every answer verified and provable.
//!
//! * [`filter`]: the filters and what statistics and bloom filters let a reader skip;
//! * [`source`]: where a node's segments, copies, seals and checkpoints are; reading them;
//! * [`verified`]: a Parquet file read unit by unit through its seal;
//! * [`scan`]: one segment's matching rows, from its copy or its lines, and its tree piece;
//! * [`run`]: a node's answer: the window, the scans, the checkpoint and the proofs;
//! * [`answer`]: every node's part, sorted and cut; [`output`]: table, JSON Lines, CSV;
//! * [`proof`]: the proof file and its offline check (`verify-report`).

pub mod answer;
pub mod filter;
pub mod output;
pub mod proof;
pub mod run;
pub mod scan;
pub mod source;
pub mod verified;

pub use filter::{Filters, StatusFilter};
