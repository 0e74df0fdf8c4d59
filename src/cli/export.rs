//! `auditgate export --format fhir`: the trail's records as FHIR R4 `AuditEvent`s following
//! IHE BALP ([`crate::report::auditevent`]), one JSON object per line (NDJSON), from a
//! verified answer over journals and archives.

use std::io::Write;
use std::path::PathBuf;

use super::outcome::{CliError, Verdict};
use super::query::FilterArgs;
use super::trail::{Trail, TrailArgs};
use crate::report::auditevent::{events, ExportContext};
use crate::report::requests;

/// The export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// FHIR R4 AuditEvent resources (IHE BALP), NDJSON.
    Fhir,
}

/// `auditgate export`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Where the trail is and how it is checked.
    #[command(flatten)]
    pub trail: TrailArgs,
    /// Which records (as `query` takes them).
    #[command(flatten)]
    pub filter: FilterArgs,
    /// The format.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// The EHR's network address (host name or IP) for each event's server agent (default:
    /// the host of `[upstream] url` with `--config`, else none).
    #[arg(long, value_name = "HOST")]
    pub server_address: Option<String>,
    /// Write the events here instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// `auditgate export`.
pub fn run(args: ExportArgs) -> Result<Verdict, CliError> {
    let trail = Trail::open(&args.trail)?;
    let Some((_, answer)) = trail.ask_all(args.filter.filters())? else {
        return Ok(Verdict::Findings);
    };
    let context = ExportContext {
        server_address: args
            .server_address
            .clone()
            .or_else(|| trail.config.as_ref().map(|c| c.upstream.url.host.clone())),
    };
    let accesses = requests::accesses(&answer).map_err(CliError::failed)?;
    let mut text = Vec::new();
    let mut count = 0usize;
    for access in &accesses {
        for event in events(access, &context) {
            serde_json::to_writer(&mut text, &event).map_err(|e| CliError::part("output", e))?;
            text.push(b'\n');
            count += 1;
        }
    }
    match &args.output {
        Some(path) => std::fs::write(path, &text).map_err(|source| CliError::File {
            path: path.clone(),
            source,
        })?,
        None => std::io::stdout()
            .lock()
            .write_all(&text)
            .map_err(|e| CliError::part("output", e))?,
    }
    eprintln!(
        "{count} AuditEvent resources from {} requests{}",
        accesses.len(),
        if trail.verify {
            ""
        } else {
            " (UNVERIFIED: --no-verify)"
        }
    );
    Ok(Verdict::from_ok(!answer.has_warnings()))
}
