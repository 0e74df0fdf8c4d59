//! `query` and `verify-report`: the auditor's questions over journals and archives, and the
//! offline check of an answer's proof.

use std::path::PathBuf;

use super::outcome::{CliError, Verdict};
use super::trail::{Asked, Trail, TrailArgs};
use crate::query::answer::{Request, SortKey};
use crate::query::filter::{parse_time, Filters, StatusFilter};
use crate::query::output::{self, Format};
use crate::tlog::checkpoint::CheckpointVerifier;

/// `auditgate query`'s arguments.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// Where the trail is and how it is checked.
    #[command(flatten)]
    pub trail: TrailArgs,
    /// Which records.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Sort by these columns, comma-separated; `-` before one sorts it largest first
    /// (default: ts). Ties are broken by time, node and seq.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub sort: Vec<SortKey>,
    /// Return at most this many records (after sorting).
    #[arg(long)]
    pub limit: Option<usize>,
    /// table, jsonl (the journal lines themselves) or csv.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The columns of a table or CSV, comma-separated (default: ts, node, seq, user_id,
    /// action, interaction, resource_type, resource_id, patient_ids, status, client_ip,
    /// device_id).
    #[arg(long, value_delimiter = ',')]
    pub columns: Vec<String>,
    /// Write the answer's proof here (checked offline with `auditgate verify-report`).
    #[arg(long, value_name = "FILE", conflicts_with = "no_verify")]
    pub proof: Option<PathBuf>,
}

/// The filters of `query` and `export`: one given twice means either value; different ones
/// must all hold.
#[derive(Debug, clap::Args)]
pub struct FilterArgs {
    /// Records naming this patient (repeatable: any of them).
    #[arg(long)]
    pub patient: Vec<String>,
    /// Records of this user, the token's `sub` (repeatable).
    #[arg(long)]
    pub user: Vec<String>,
    /// Tokens of this issuer (repeatable).
    #[arg(long)]
    pub issuer: Vec<String>,
    /// This client application, `client_id` (repeatable).
    #[arg(long)]
    pub client: Vec<String>,
    /// This action: C, R, U, D or E (repeatable).
    #[arg(long, value_parser = ["C", "R", "U", "D", "E"])]
    pub action: Vec<String>,
    /// This FHIR interaction: read, vread, search, create, update, patch, delete, history,
    /// operation, batch, transaction, capabilities, unclassified (repeatable).
    #[arg(long)]
    pub interaction: Vec<String>,
    /// This resource type (repeatable).
    #[arg(long)]
    pub resource_type: Vec<String>,
    /// This rule (repeatable).
    #[arg(long)]
    pub rule: Vec<String>,
    /// This HTTP status, or class such as 4xx (repeatable).
    #[arg(long)]
    pub status: Vec<StatusFilter>,
    /// A client IP, or a network in CIDR form (repeatable).
    #[arg(long, value_parser = parse_net)]
    pub ip: Vec<ipnet::IpNet>,
    /// This device ID (repeatable).
    #[arg(long)]
    pub device: Vec<String>,
    /// A client IP located in this country, ISO 3166-1 alpha-2 (repeatable).
    #[arg(long)]
    pub country: Vec<String>,
    /// Only records of declared emergency access.
    #[arg(long)]
    pub break_glass: bool,
    /// This purpose of use, e.g. TREAT (repeatable).
    #[arg(long)]
    pub purpose: Vec<String>,
    /// Records at or after this time: a day (2026-03-01, UTC) or RFC 3339.
    #[arg(long, value_parser = parse_time)]
    pub since: Option<i64>,
    /// Records before this time.
    #[arg(long, value_parser = parse_time)]
    pub until: Option<i64>,
}

/// An IP address or CIDR network as `--ip` takes it.
pub(super) fn parse_net(text: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = text.parse::<ipnet::IpNet>() {
        return Ok(net);
    }
    text.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("{text:?} is not an IP address or CIDR network"))
}

impl FilterArgs {
    /// The filters these arguments give.
    pub fn filters(&self) -> Filters {
        Filters {
            patients: self.patient.clone(),
            users: self.user.clone(),
            issuers: self.issuer.clone(),
            clients: self.client.clone(),
            actions: self.action.clone(),
            interactions: self.interaction.clone(),
            resource_types: self.resource_type.clone(),
            rules: self.rule.clone(),
            statuses: self.status.clone(),
            client_ips: self.ip.clone(),
            devices: self.device.clone(),
            countries: self.country.clone(),
            break_glass: self.break_glass.then_some(true),
            purposes: self.purpose.clone(),
            since_micros: self.since,
            until_micros: self.until,
        }
    }
}

/// `auditgate query`.
pub fn run(args: QueryArgs) -> Result<Verdict, CliError> {
    let columns: Vec<String> = if args.columns.is_empty() {
        output::DEFAULT_COLUMNS
            .iter()
            .map(|c| c.to_string())
            .collect()
    } else {
        args.columns.clone()
    };
    output::check_columns(&columns).map_err(CliError::Usage)?;
    let trail = Trail::open(&args.trail)?;
    let request = Request {
        filters: args.filter.filters(),
        sort: args.sort.clone(),
        limit: args.limit,
        verify: trail.verify,
    };
    let answer = match trail.ask(&request)? {
        Asked::Answered(answer) => answer,
        Asked::Refused => return Ok(Verdict::Findings),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    output::print_rows(&answer, args.format, &columns, &mut out)
        .map_err(|e| CliError::part("output", e))?;
    let summary_to_stderr = args.format != Format::Table;
    if summary_to_stderr {
        output::print_summary(&answer, request.verify, &mut std::io::stderr().lock())
    } else {
        output::print_summary(&answer, request.verify, &mut out)
    }
    .map_err(|e| CliError::part("output", e))?;
    if let Some(path) = &args.proof {
        let query = serde_json::to_value(&request).unwrap_or_default();
        let file = crate::query::proof::ProofFile::of(query, &answer.coverage, &answer.proofs);
        let text = serde_json::to_string_pretty(&file).unwrap_or_default();
        std::fs::write(path, text + "\n").map_err(|source| CliError::File {
            path: path.clone(),
            source,
        })?;
    }
    Ok(Verdict::from_ok(!answer.has_warnings()))
}

/// `auditgate verify-report FILE --key KEY...`.
pub fn verify_report(file: &PathBuf, keys: &[String], json: bool) -> Result<Verdict, CliError> {
    let text = std::fs::read_to_string(file).map_err(|source| CliError::File {
        path: file.clone(),
        source,
    })?;
    let mut verifiers = Vec::new();
    for key in keys {
        verifiers.push(CheckpointVerifier::load(key).map_err(|e| CliError::part("--key", e))?);
    }
    let checks = crate::query::proof::check(&text, &verifiers).map_err(CliError::Usage)?;
    let ok = !checks.is_empty() && checks.iter().all(|c| c.problems.is_empty());
    if json {
        println!("{}", super::print::pretty_json(&checks));
    } else {
        for c in &checks {
            if c.problems.is_empty() {
                println!(
                    "node {}: OK: records {}..={} are a contiguous piece of the log of {} records its checkpoint signs; {} returned records proven in it",
                    c.node, c.first, c.last, c.tree_size, c.records_proven
                );
            } else {
                println!("node {}: FAILED", c.node);
                for p in &c.problems {
                    println!("  {p}");
                }
            }
        }
        if checks.is_empty() {
            println!("FAILED: the proof covers no node");
        }
    }
    Ok(Verdict::from_ok(ok))
}
