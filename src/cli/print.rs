//! Human-readable verification reports, as `verify` and `demo` print them, and the JSON the
//! commands print with `--json`.

/// Human-readable verify report.
pub fn print_report(report: &crate::verify::Report) {
    println!(
        "journal {}: {} segments, {} records, head seq {}",
        report.journal.display(),
        report.chain.segments,
        report.chain.records,
        report.chain.head_seq
    );
    if let Some(leaf) = &report.chain.head_leaf {
        println!("head leaf hash {leaf}");
    }
    for q in &report.quarantined {
        println!(
            "note: quarantine/{q} holds bytes that crash recovery removed (never acknowledged)"
        );
    }
    if report.archived_records > 0 {
        println!(
            "records 1-{} were shipped to the archive and removed locally (archive-state.json): \
             `verify --archive ARCHIVE --journal DIR` checks them; here the chain and roots are \
             checked from seq {} on",
            report.archived_records,
            report.archived_records + 1
        );
    }
    match &report.chain.key {
        Some(key) => println!(
            "{} signed checkpoints checked with {key}; {} newest records not yet covered by one",
            report.chain.checkpoints, report.chain.uncovered_records
        ),
        None => println!(
            "checkpoints NOT checked (no --key): a rewrite of the whole chain or a cut tail cannot be seen without them"
        ),
    }
    print_columnar(&report.chain, "");
    if report.ok() {
        if report.chain.key.is_some() {
            println!("OK: every record hashes and chains, every checkpoint is signed and matches the records");
        } else {
            println!("OK: every record hashes and chains");
        }
    } else {
        println!("FAILED: {} finding(s)", report.chain.findings.len());
        for f in &report.chain.findings {
            println!("  {f}");
        }
    }
}

/// The columnar copies line of a chain report.
fn print_columnar(chain: &crate::verify::report::ChainReport, indent: &str) {
    if chain.columnar_copies + chain.segments_without_columnar == 0 {
        return;
    }
    println!(
        "{indent}{} columnar copies (Parquet and seal) checked row by row against their segments; {} sealed segment(s) without one (`auditgate backfill` makes them)",
        chain.columnar_copies, chain.segments_without_columnar
    );
}

/// Human-readable `verify --archive` report.
pub fn print_archive_report(report: &crate::verify::ArchiveReport) {
    println!(
        "archive {}: {} object versions and delete markers under {}",
        report.archive, report.versions_listed, report.listed
    );
    if report.locks_checked {
        println!(
            "locks checked: every object in COMPLIANCE mode, retained at least {} days after it was stored",
            report.min_retention_days
        );
    } else {
        println!("locks NOT checked: a directory archive is not WORM (anyone who can write to it can change it)");
    }
    for node in &report.nodes {
        println!(
            "node {}: {} archived segments, {} records (through seq {}), head seq {}",
            node.node,
            node.chain.segments,
            node.chain.records,
            node.archived_through_seq,
            node.chain.head_seq
        );
        if let Some(leaf) = &node.chain.head_leaf {
            println!("  head leaf hash {leaf}");
        }
        match &node.chain.key {
            Some(key) => println!(
                "  {} signed checkpoints checked with {key}; {} newest records not yet covered by one",
                node.chain.checkpoints, node.chain.uncovered_records
            ),
            None => println!(
                "  checkpoints NOT checked (no --key): a rewrite of the whole chain cannot be seen without them"
            ),
        }
        print_columnar(&node.chain, "  ");
        if node.checkpoints_beyond_archive > 0 {
            println!(
                "  {} checkpoints cover records not archived yet (the open segment's): give --journal to check them",
                node.checkpoints_beyond_archive
            );
        }
        if let Some(local) = &node.local {
            println!(
                "  local journal {}: {} segments and {} checkpoints compared with the archive; {} segment(s) ({} records) not archived, checked from the journal",
                local.journal.display(),
                local.segments_compared,
                local.checkpoints_compared,
                local.segments_not_archived,
                local.records_not_archived
            );
            match local.shipped_through_seq {
                Some(seq) => {
                    println!("  its progress file says segments through seq {seq} are shipped")
                }
                None => println!("  it has no progress file for this archive"),
            }
        }
        for f in &node.chain.findings {
            println!("  {f}");
        }
    }
    for f in &report.findings {
        println!("{f}");
    }
    let count = report.all_findings().count();
    if count == 0 {
        println!(
            "OK: every archived record hashes and chains, every object is where it belongs{}{}",
            if report.locks_checked {
                " and locked"
            } else {
                ""
            },
            if report.nodes.iter().all(|n| n.chain.key.is_some()) {
                ", every checkpoint is signed and matches the records"
            } else {
                ""
            }
        );
    } else {
        println!("FAILED: {count} finding(s)");
    }
}

/// `value` as indented JSON.
#[allow(
    clippy::expect_used,
    reason = "the command line prints its own report types: structs of strings, numbers and \
              string-keyed maps, which always serialise"
)]
pub fn pretty_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("a report serialises")
}
