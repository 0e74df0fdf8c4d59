//! A report printed for people (an aligned text table; printable HTML, one file, no script)
//! or for tools (CSV of its first table; JSON of everything, the proof included).

use std::io::Write;

use super::{Report, Section};
use crate::query::run::Coverage;

/// How a report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// Aligned text tables with the parameters, facts and coverage.
    Table,
    /// The first table as CSV, with a header row.
    Csv,
    /// Everything, the completeness proof included, as one JSON document.
    Json,
    /// A printable HTML page (one file, no script, no external resource).
    Html,
}

/// Print `report` as `format` to `out`.
pub fn render(report: &Report, format: ReportFormat, out: &mut dyn Write) -> std::io::Result<()> {
    match format {
        ReportFormat::Table => table(report, out),
        ReportFormat::Csv => match report.sections.first() {
            Some(section) => csv(section, out),
            None => Ok(()),
        },
        ReportFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, &json(report))
                .map_err(std::io::Error::other)?;
            writeln!(out)
        }
        ReportFormat::Html => html(report, out),
    }
}

/// One section as CSV with a header row.
pub fn csv(section: &Section, out: &mut dyn Write) -> std::io::Result<()> {
    let mut writer = ::csv::Writer::from_writer(out);
    writer
        .write_record(&section.columns)
        .map_err(std::io::Error::other)?;
    for row in &section.rows {
        writer.write_record(row).map_err(std::io::Error::other)?;
    }
    writer.flush()
}

/// What a node's part covered, in one sentence.
pub fn coverage_line(c: &Coverage, verified: bool) -> String {
    let scanned = if c.first == 0 && c.last == 0 {
        "no record in the window".to_string()
    } else {
        format!("records {}..={} scanned", c.first, c.last)
    };
    let proof = if !verified {
        "NOT VERIFIED (--no-verify)".to_string()
    } else if c.checkpoint.is_some() {
        format!(
            "covered by the signed checkpoint of size {}, every returned record proven in it",
            c.tree_size
        )
    } else {
        "no checkpoint covers it".to_string()
    };
    let mut line = format!(
        "node {}: {scanned} ({} segments from columnar copies, {} from JSON); {proof}",
        c.node, c.segments_from_copies, c.segments_from_json
    );
    // Records after the newest checkpoint are named in the notes (`records A..=B are not
    // under a signed checkpoint yet and were left out`).
    for note in &c.notes {
        line.push_str(&format!("; {note}"));
    }
    line
}

fn table(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "{}", report.title)?;
    writeln!(out, "{}", "=".repeat(report.title.chars().count()))?;
    writeln!(out, "generated {}", report.generated_at)?;
    for (name, value) in &report.parameters {
        writeln!(out, "{name}: {value}")?;
    }
    writeln!(out)?;
    for (name, value) in &report.facts {
        writeln!(out, "{name}: {value}")?;
    }
    for section in &report.sections {
        writeln!(out)?;
        writeln!(out, "{} ({})", section.title, section.rows.len())?;
        aligned(section, out)?;
    }
    writeln!(out)?;
    writeln!(out, "Coverage")?;
    for c in &report.coverage {
        writeln!(out, "  {}", coverage_line(c, report.verified))?;
    }
    Ok(())
}

/// A section as an aligned text table (widths in characters).
fn aligned(section: &Section, out: &mut dyn Write) -> std::io::Result<()> {
    let mut widths: Vec<usize> = section.columns.iter().map(|c| c.chars().count()).collect();
    for row in &section.rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>, out: &mut dyn Write| {
        let text: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        writeln!(out, "  {}", text.join("  ").trim_end())
    };
    line(&mut section.columns.iter().copied(), out)?;
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    writeln!(out, "  {}", rule.join("  "))?;
    for row in &section.rows {
        line(&mut row.iter().map(String::as_str), out)?;
    }
    Ok(())
}

/// The JSON document: parameters and facts as objects, each section's rows as objects keyed
/// by column, the coverage, and the proof.
pub fn json(report: &Report) -> serde_json::Value {
    let pairs = |pairs: &[(String, String)]| {
        serde_json::Value::Object(
            pairs
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        )
    };
    let sections: Vec<serde_json::Value> = report
        .sections
        .iter()
        .map(|s| {
            let rows: Vec<serde_json::Value> = s
                .rows
                .iter()
                .map(|row| {
                    serde_json::Value::Object(
                        s.columns
                            .iter()
                            .zip(row)
                            .map(|(c, v)| (c.to_string(), serde_json::Value::String(v.clone())))
                            .collect(),
                    )
                })
                .collect();
            serde_json::json!({"title": s.title, "columns": s.columns, "rows": rows})
        })
        .collect();
    serde_json::json!({
        "kind": report.kind,
        "title": report.title,
        "generated_at": report.generated_at,
        "parameters": pairs(&report.parameters),
        "facts": pairs(&report.facts),
        "sections": sections,
        "verified": report.verified,
        "coverage": report.coverage,
        "proof": report.proof,
    })
}

/// Text escaped for HTML (element content and quoted attributes).
fn esc(text: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(text)
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#111}\
h1{font-size:1.4em;margin-bottom:.2em}h2{font-size:1.1em;margin-top:1.6em}\
table{border-collapse:collapse;font-size:.85em;margin:.4em 0}\
th,td{border:1px solid #bbb;padding:.2em .45em;text-align:left;vertical-align:top}\
th{background:#eee}dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em}\
dt{font-weight:600}.unverified{color:#a00;font-weight:700}.small{font-size:.8em;color:#444}\
@media print{body{margin:0}h2{break-after:avoid}tr{break-inside:avoid}}";

fn html(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "<!DOCTYPE html>")?;
    writeln!(out, "<html lang=\"en\"><head><meta charset=\"utf-8\">")?;
    writeln!(out, "<title>{}</title>", esc(&report.title))?;
    writeln!(out, "<style>{STYLE}</style></head><body>")?;
    writeln!(out, "<h1>{}</h1>", esc(&report.title))?;
    writeln!(
        out,
        "<p class=\"small\">Generated {} by auditgate from the audit trail.</p>",
        esc(&report.generated_at)
    )?;
    if !report.verified {
        writeln!(
            out,
            "<p class=\"unverified\">NOT VERIFIED: made with --no-verify; nothing in this report was checked against the signed trail.</p>"
        )?;
    }
    let list = |pairs: &[(String, String)], out: &mut dyn Write| -> std::io::Result<()> {
        writeln!(out, "<dl>")?;
        for (k, v) in pairs {
            writeln!(out, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(v))?;
        }
        writeln!(out, "</dl>")
    };
    writeln!(out, "<h2>Asked</h2>")?;
    list(&report.parameters, out)?;
    writeln!(out, "<h2>Found</h2>")?;
    list(&report.facts, out)?;
    for section in &report.sections {
        writeln!(
            out,
            "<h2>{} ({})</h2>",
            esc(&section.title),
            section.rows.len()
        )?;
        writeln!(out, "<table><thead><tr>")?;
        for c in &section.columns {
            write!(out, "<th>{}</th>", esc(c))?;
        }
        writeln!(out, "</tr></thead><tbody>")?;
        for row in &section.rows {
            write!(out, "<tr>")?;
            for cell in row {
                write!(out, "<td>{}</td>", esc(cell))?;
            }
            writeln!(out, "</tr>")?;
        }
        writeln!(out, "</tbody></table>")?;
    }
    writeln!(out, "<h2>Completeness</h2><ul>")?;
    for c in &report.coverage {
        writeln!(out, "<li>{}</li>", esc(&coverage_line(c, report.verified)))?;
    }
    writeln!(out, "</ul>")?;
    if report.verified {
        writeln!(
            out,
            "<p class=\"small\">Each record above is proven to be in the node's signed log, and the scanned range is contiguous and covered by the signed checkpoint: the JSON form of this report (<code>--format json</code>) or <code>--proof FILE</code> holds the proof, which <code>auditgate verify-report</code> re-checks with the gateways' public keys alone.</p>"
        )?;
    }
    writeln!(out, "</body></html>")
}
