//! `auditgate report KIND`: the auditor's reports (`access`, `disclosures`, `flags`,
//! `changes`, `activity`, `breach`) over
//! journals and archives, verified and proven like `query`, as a table, CSV, JSON or
//! printable HTML.

use std::path::PathBuf;

use super::outcome::{CliError, Verdict};
use super::trail::{Trail, TrailArgs};
use crate::query::filter::{day_start_micros, parse_time, Filters};
use crate::report::config::ReportsConfig;
use crate::report::render::{self, ReportFormat};
use crate::report::{self as reports, requests, Report};

/// `auditgate report`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Which report.
    #[command(subcommand)]
    pub kind: ReportKind,
}

/// The reports.
#[derive(Debug, clap::Subcommand)]
pub enum ReportKind {
    /// Every access to one patient's data: when, who (ID and name), client app, action, what
    /// was accessed, purpose of use, break-glass, outcome, and from where (IP, device,
    /// country). For a patient's request for an accounting of who saw their record.
    Access {
        /// The patient's ID (as recorded: the FHIR Patient id).
        #[arg(long)]
        patient: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// The HIPAA 164.528 accounting of disclosures of one patient's record: date, recipient
    /// (client app and organisation, from the `[reports]` registry), what, and why. An access
    /// is a disclosure when it may have given data out and its client app is marked external,
    /// or its purpose of use is not treatment, payment or operations.
    Disclosures {
        /// The patient's ID.
        #[arg(long)]
        patient: String,
        /// The client registry and TPO purposes: a file with the keys of `[reports]`
        /// (default: the `[reports]` section of `--config`, else none).
        #[arg(long, value_name = "FILE")]
        reports: Option<PathBuf>,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Snooping flags over a window (`--from` required): bulk access, after-hours access,
    /// break-glass, watched patients, self-access, a user's first access to a patient, access
    /// from a new country or network. Each is a rule with its parameters in
    /// `[reports.flags]`; the README describes them.
    Flags {
        /// Only these flags (repeatable; default: all).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(crate::report::flags::KINDS))]
        only: Vec<String>,
        /// The flags' parameters: a file with the keys of `[reports]` (default: the
        /// `[reports]` section of `--config`, else the defaults).
        #[arg(long, value_name = "FILE")]
        reports: Option<PathBuf>,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// The gateway's own configuration (ONC 170.315(d)(3)): what each node started with (the
    /// configuration file's hash, the rule files', the keys in effect), every reload (applied
    /// with the sections it changed, or rejected with why), and every change of the keys that
    /// verify tokens.
    Changes {
        #[command(flatten)]
        common: CommonArgs,
    },
    /// What one user touched, per day, with the distinct patients, then every request.
    Activity {
        /// The user (the token's `sub`).
        #[arg(long)]
        user: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// The timeline of a suspected breach in a window: every request of one user, client
    /// IP or network, device or client app; the patients exposed, with their first and last
    /// access and the resource types seen; counts per day; and (`--patients-csv`) the affected
    /// patients as CSV for notification letters.
    #[command(group(clap::ArgGroup::new("suspect").required(true).args(["user", "ip", "device", "client"])))]
    Breach {
        /// A user (the token's `sub`).
        #[arg(long)]
        user: Option<String>,
        /// A client IP, or a network in CIDR form.
        #[arg(long, value_parser = super::query::parse_net)]
        ip: Option<ipnet::IpNet>,
        /// A device ID.
        #[arg(long)]
        device: Option<String>,
        /// A client application (`client_id`).
        #[arg(long)]
        client: Option<String>,
        /// Write the exposed patients (ID, first and last access, requests, resource types)
        /// here as CSV.
        #[arg(long, value_name = "FILE")]
        patients_csv: Option<PathBuf>,
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// What every report takes.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// Where the trail is and how it is checked.
    #[command(flatten)]
    pub trail: TrailArgs,
    /// From this time on: a day (2026-03-01, from its start, UTC) or RFC 3339.
    #[arg(long, alias = "since", value_parser = parse_time)]
    pub from: Option<i64>,
    /// Up to this time: a day (through its end, UTC) or RFC 3339 (that instant included).
    #[arg(long, alias = "until", value_parser = parse_end)]
    pub to: Option<i64>,
    /// table, csv (the first table), json (everything, the proof included) or html
    /// (printable).
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
    /// Sort the first table by these of its columns, comma-separated; `-` before one sorts it
    /// largest first (default: time).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub sort: Vec<String>,
    /// Write the report here instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Write the completeness proof here (checked offline with `auditgate verify-report`).
    #[arg(long, value_name = "FILE", conflicts_with = "no_verify")]
    pub proof: Option<PathBuf>,
}

/// The end of a window as `--to` takes it: a day's end, or just after an instant.
fn parse_end(text: &str) -> Result<i64, String> {
    match day_start_micros(text) {
        Some(start) => Ok(start + 86_400_000_000),
        None => parse_time(text).map(|t| t + 1),
    }
}

/// A time as a report states it.
fn shown(micros: i64) -> String {
    crate::record::format_ts(
        std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(micros.max(0) as u64),
    )
}

/// `auditgate report KIND`.
pub fn run(args: ReportArgs) -> Result<Verdict, CliError> {
    let (kind, mut filters, common) = match &args.kind {
        ReportKind::Flags { common, .. } => ("flags", Filters::default(), common),
        ReportKind::Changes { common } => (
            "changes",
            Filters {
                rules: vec![crate::server::changes::CONFIG_CHANGE_RULE.into()],
                ..Filters::default()
            },
            common,
        ),
        ReportKind::Disclosures {
            patient, common, ..
        } => (
            "disclosures",
            Filters {
                patients: vec![patient.clone()],
                ..Filters::default()
            },
            common,
        ),
        ReportKind::Access { patient, common } => (
            "access",
            Filters {
                patients: vec![patient.clone()],
                ..Filters::default()
            },
            common,
        ),
        ReportKind::Activity { user, common } => (
            "activity",
            Filters {
                users: vec![user.clone()],
                ..Filters::default()
            },
            common,
        ),
        ReportKind::Breach {
            user,
            ip,
            device,
            client,
            common,
            ..
        } => (
            "breach",
            Filters {
                users: user.iter().cloned().collect(),
                client_ips: ip.iter().cloned().collect(),
                devices: device.iter().cloned().collect(),
                clients: client.iter().cloned().collect(),
                ..Filters::default()
            },
            common,
        ),
    };
    filters.since_micros = common.from;
    filters.until_micros = common.to;
    let trail = Trail::open(&common.trail)?;
    // The registry and flags' parameters: `--reports FILE`, else the gateway config's.
    let reports_file = match &args.kind {
        ReportKind::Disclosures { reports, .. } | ReportKind::Flags { reports, .. } => {
            reports.as_ref()
        }
        _ => None,
    };
    let reports_config = match (reports_file, &trail.config) {
        (Some(path), _) => ReportsConfig::load(path)?,
        (None, Some(config)) => config.reports.clone(),
        (None, None) => ReportsConfig::default(),
    };
    let flags = &reports_config.flags;
    // Flags read the lookback before the window too (first access, new country or network).
    if let ReportKind::Flags { .. } = &args.kind {
        let from = common.from.ok_or_else(|| {
            CliError::Usage("report flags needs --from (the start of the window)".into())
        })?;
        filters.since_micros = Some(from - i64::from(flags.lookback_days) * 86_400_000_000);
    }
    let Some((request, answer)) = trail.ask_all(filters)? else {
        return Ok(Verdict::Findings);
    };
    let accesses = requests::accesses(&answer).map_err(CliError::failed)?;
    let mut parameters = Vec::new();
    let window = match (common.from, common.to) {
        (None, None) => "the whole trail".to_string(),
        (from, to) => format!(
            "{} to {} (excluded)",
            from.map_or("the start".into(), shown),
            to.map_or("now".into(), shown)
        ),
    };
    let query = serde_json::to_value(&request).unwrap_or_default();
    let title;
    match &args.kind {
        ReportKind::Access { patient, .. } => {
            title = format!("Accesses to the record of patient {patient}");
            parameters.push(("patient".into(), patient.clone()));
        }
        ReportKind::Disclosures { patient, .. } => {
            title = format!("Accounting of disclosures of the record of patient {patient}");
            parameters.push(("patient".into(), patient.clone()));
        }
        ReportKind::Flags { only, .. } => {
            title = "Accesses flagged for review".to_string();
            parameters.push((
                "flags".into(),
                if only.is_empty() {
                    "all".into()
                } else {
                    only.join(", ")
                },
            ));
            parameters.push((
                "parameters".into(),
                format!(
                    "bulk above {} patients an hour; business hours {} {}{}; {} watched patients; lookback {} days",
                    flags.bulk_patients_per_hour,
                    flags.business_hours,
                    flags.time_zone,
                    if flags.weekends_after_hours { ", weekends after hours" } else { "" },
                    flags.watch_patients.len(),
                    flags.lookback_days
                ),
            ));
        }
        ReportKind::Changes { .. } => {
            title = "Changes to the audit configuration".to_string();
        }
        ReportKind::Activity { user, .. } => {
            title = format!("Activity of user {user}");
            parameters.push(("user".into(), user.clone()));
        }
        ReportKind::Breach {
            user,
            ip,
            device,
            client,
            ..
        } => {
            let suspect = [
                user.as_ref().map(|u| format!("user {u}")),
                ip.map(|n| format!("client IP {n}")),
                device.as_ref().map(|d| format!("device {d}")),
                client.as_ref().map(|c| format!("client app {c}")),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ");
            title = format!("Breach timeline: {suspect}");
            parameters.push(("suspect".into(), suspect));
        }
    }
    parameters.push(("window".into(), window));
    parameters.push((
        "nodes".into(),
        answer
            .coverage
            .iter()
            .map(|c| c.node.clone())
            .collect::<Vec<_>>()
            .join(", "),
    ));
    let mut report = Report::over(kind, title, parameters, &answer, query, trail.verify);
    match &args.kind {
        ReportKind::Access { .. } => reports::access::build(&mut report, &accesses),
        ReportKind::Disclosures { .. } => {
            reports::disclosures::build(&mut report, &accesses, &reports_config)
        }
        ReportKind::Flags { only, .. } => {
            let from = common.from.unwrap_or_default();
            let (history, window): (Vec<_>, Vec<_>) = accesses
                .into_iter()
                .partition(|a| crate::columnar::rows::micros_of(a.ts()).is_some_and(|t| t < from));
            reports::flags::build(&mut report, &window, &history, flags, only)?;
        }
        ReportKind::Changes { .. } => reports::changes::build(&mut report, &accesses),
        ReportKind::Activity { .. } => reports::activity::build(&mut report, &accesses),
        ReportKind::Breach { .. } => reports::breach::build(&mut report, &accesses),
    }
    if !common.sort.is_empty() {
        if let Some(first) = report.sections.first_mut() {
            first
                .sort(&common.sort)
                .map_err(|e| CliError::Usage(e.to_string()))?;
        }
    }
    write_out(common.output.as_ref(), |out| {
        render::render(&report, common.format, out)
    })?;
    if let ReportKind::Breach {
        patients_csv: Some(path),
        ..
    } = &args.kind
    {
        if let Some(section) = reports::breach::patients_section(&report) {
            write_out(Some(path), |out| render::csv(section, out))?;
        }
    }
    if let (Some(path), Some(proof)) = (&common.proof, &report.proof) {
        let text = serde_json::to_string_pretty(proof).unwrap_or_default();
        std::fs::write(path, text + "\n").map_err(|source| CliError::File {
            path: path.clone(),
            source,
        })?;
    }
    Ok(Verdict::from_ok(!answer.has_warnings()))
}

/// Write with `print` to `path`, or to standard output.
fn write_out(
    path: Option<&PathBuf>,
    print: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<(), CliError> {
    match path {
        Some(path) => {
            let mut file = std::fs::File::create(path).map_err(|source| CliError::File {
                path: path.clone(),
                source,
            })?;
            print(&mut file).map_err(|source| CliError::File {
                path: path.clone(),
                source,
            })
        }
        None => print(&mut std::io::stdout().lock()).map_err(|e| CliError::part("output", e)),
    }
}
