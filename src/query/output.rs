//! Printing an answer: a table for people, JSON Lines (the journal lines themselves, the
//! evidence) or CSV for tools; and the summary of what was covered and proven.

use std::io::Write;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::display::{ArrayFormatter, FormatOptions};

use super::answer::Answer;
use crate::columnar::rows::schema;

/// The columns a table or CSV shows unless `--columns` says otherwise.
pub const DEFAULT_COLUMNS: &[&str] = &[
    "ts",
    "node",
    "seq",
    "user_id",
    "action",
    "interaction",
    "resource_type",
    "resource_id",
    "patient_ids",
    "status",
    "client_ip",
    "device_id",
];

/// How to print the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned table, then the summary.
    Table,
    /// One journal line per record, exactly as recorded (the summary on standard error).
    Jsonl,
    /// CSV with a header row (the summary on standard error).
    Csv,
}

/// Check `--columns`.
pub fn check_columns(columns: &[String]) -> Result<(), String> {
    for c in columns {
        if schema().field_with_name(c).is_err() {
            return Err(format!("{c:?} is not a column (see the README's schema)"));
        }
    }
    Ok(())
}

/// The chosen columns, lists and maps written as text (`a; b`, `{k: 1}`).
fn display_batch(
    rows: &RecordBatch,
    columns: &[String],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let options = FormatOptions::default();
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for name in columns {
        let column = rows
            .column_by_name(name)
            .ok_or_else(|| arrow::error::ArrowError::SchemaError(format!("no column {name}")))?;
        if column.data_type().is_nested() {
            let formatter = ArrayFormatter::try_new(column.as_ref(), &options)?;
            let text: StringArray = (0..column.len())
                .map(|i| column.is_valid(i).then(|| formatter.value(i).to_string()))
                .collect();
            fields.push(Field::new(name, DataType::Utf8, true));
            arrays.push(std::sync::Arc::new(text));
        } else {
            fields.push(Field::new(name, column.data_type().clone(), true));
            arrays.push(column.clone());
        }
    }
    RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), arrays)
}

/// Print the rows in `format` to `out`.
pub fn print_rows(
    answer: &Answer,
    format: Format,
    columns: &[String],
    out: &mut dyn Write,
) -> Result<(), std::io::Error> {
    let other = std::io::Error::other;
    match format {
        Format::Jsonl => {
            if let Some(lines) = answer.rows.column_by_name("line") {
                for line in lines.as_string::<i32>().iter().flatten() {
                    writeln!(out, "{line}")?;
                }
            }
        }
        Format::Csv => {
            let batch = display_batch(&answer.rows, columns).map_err(other)?;
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            writer.write(&batch).map_err(other)?;
        }
        Format::Table => {
            if answer.rows.num_rows() > 0 {
                let batch = display_batch(&answer.rows, columns).map_err(other)?;
                let table = arrow::util::pretty::pretty_format_batches(&[batch]).map_err(other)?;
                writeln!(out, "{table}")?;
            }
        }
    }
    Ok(())
}

/// The summary: records returned, and per node what was scanned and what proves it.
pub fn print_summary(answer: &Answer, verified: bool, out: &mut dyn Write) -> std::io::Result<()> {
    let returned = answer.rows.num_rows();
    if returned < answer.matched {
        writeln!(
            out,
            "{returned} of {} matching records shown (--limit)",
            answer.matched
        )?;
    } else {
        writeln!(out, "{returned} matching records")?;
    }
    for c in &answer.coverage {
        if c.first == 0 {
            writeln!(out, "node {}: no records in the window", c.node)?;
            continue;
        }
        writeln!(
            out,
            "node {}: records {}..={} scanned ({} segments from columnar copies, {} from JSON lines; {} of {} row groups read; {} bytes)",
            c.node,
            c.first,
            c.last,
            c.segments_from_copies,
            c.segments_from_json,
            c.row_groups.1,
            c.row_groups.0,
            c.bytes_read
        )?;
        if let Some(note) = &c.checkpoint {
            let origin = note.lines().next().unwrap_or_default();
            writeln!(
                out,
                "  verified: every record read hashes and chains into the checkpoint of size {} signed by {origin}; each returned record has its inclusion proof",
                c.tree_size
            )?;
        }
        for note in &c.notes {
            writeln!(out, "  note: {note}")?;
        }
    }
    if !verified {
        writeln!(
            out,
            "UNVERIFIED: --no-verify; nothing above was checked against the chain or a signature"
        )?;
    }
    Ok(())
}
