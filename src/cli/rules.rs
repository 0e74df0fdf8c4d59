//! `rules explain` and `rules test`: what the gateway would record for a request (and its
//! response), and the rule files' own `[[test]]` cases, without a network.

use std::path::Path;

use super::outcome::{CliError, Verdict};
use super::print::pretty_json;
use super::RulesCommand;
use crate::attribution::explain::{explain, run_rule_test, ExplainResponse};
use crate::config::Config;
use crate::rules::RuleSet;

/// Run a `rules` subcommand.
pub fn rules_command(command: RulesCommand) -> Result<Verdict, CliError> {
    match command {
        RulesCommand::Explain {
            method,
            url,
            config,
            body,
            content_type,
            response,
            response_content_type,
            status,
            location,
            headers,
            json,
        } => {
            let (rules, limit) = load_rules(config.as_deref())?;
            let body = body.as_deref().map(read).transpose()?;
            let response_body = response.as_deref().map(read).transpose()?;
            let mut request_headers = http::HeaderMap::new();
            for h in &headers {
                let (n, v) = h.split_once(':').ok_or_else(|| {
                    CliError::Usage(format!("--header takes `NAME: VALUE`, got {h:?}"))
                })?;
                add_header(&mut request_headers, n, v)?;
            }
            if body.is_some() && !request_headers.contains_key(http::header::CONTENT_TYPE) {
                let ct = content_type.as_deref().unwrap_or("application/fhir+json");
                add_header(&mut request_headers, "content-type", ct)?;
            }
            let target = crate::attribution::body::target_of_absolute_url(&url).unwrap_or(&url);
            let mut response_headers = http::HeaderMap::new();
            let ct = response_content_type
                .as_deref()
                .unwrap_or("application/fhir+json");
            add_header(&mut response_headers, "content-type", ct)?;
            if let Some(l) = &location {
                add_header(&mut response_headers, "location", l)?;
            }
            let given_response = response_body.is_some() || location.is_some();
            let x = explain(
                &rules,
                limit,
                &method,
                target,
                &request_headers,
                body.as_deref(),
                given_response.then(|| ExplainResponse {
                    status,
                    headers: response_headers,
                    body: response_body.as_deref().unwrap_or_default(),
                }),
            );
            if json {
                println!("{}", pretty_json(&x));
            } else {
                print!("{}", render_explanation(&x));
            }
            Ok(Verdict::Clean)
        }
        RulesCommand::Test { config, verbose } => {
            let (rules, limit) = load_rules(config.as_deref())?;
            let mut failed = 0;
            for (file, t) in rules.tests() {
                match run_rule_test(&rules, limit, t) {
                    Ok(_) => {
                        if verbose {
                            println!("ok    {} ({})", t.name, file.display());
                        }
                    }
                    Err(failures) => {
                        failed += 1;
                        println!(
                            "FAIL  {} ({}): {} {}",
                            t.name,
                            file.display(),
                            t.method,
                            t.url
                        );
                        for f in failures {
                            println!("      {f}");
                        }
                    }
                }
            }
            let total = rules.tests().len();
            println!("{} of {total} rule tests passed", total - failed);
            Ok(Verdict::from_ok(failed == 0))
        }
    }
}

/// A file named on the command line, whole.
fn read(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// Add `name: value` (trimmed) to `map`, or say it is not a header.
fn add_header(map: &mut http::HeaderMap, name: &str, value: &str) -> Result<(), CliError> {
    match (
        http::HeaderName::from_bytes(name.trim().as_bytes()),
        http::HeaderValue::from_str(value.trim()),
    ) {
        (Ok(n), Ok(v)) => {
            map.append(n, v);
            Ok(())
        }
        _ => Err(CliError::Usage(format!("not a header: {name}: {value}"))),
    }
}

/// The rules and body limit of `config`, or the built-in FHIR R4 rules.
fn load_rules(config: Option<&Path>) -> Result<(RuleSet, usize), CliError> {
    match config {
        Some(path) => {
            let config = Config::load(path)?;
            let rules = RuleSet::load(&config.rules, &Config::base_dir(path))
                .map_err(|e| CliError::part("rules", e))?
                .with_upstream(&config.upstream.url.authority);
            Ok((rules, config.attribution.limit()))
        }
        None => {
            let rules = RuleSet::from_toml_str(
                crate::rules::BUILTIN_FHIR_R4,
                crate::rules::UnmatchedPolicy::default(),
            )
            .map_err(|e| CliError::part("built-in rules", e))?;
            Ok((
                rules,
                crate::attribution::config::AttributionConfig::default().limit(),
            ))
        }
    }
}

/// `rules explain` for people.
fn render_explanation(x: &crate::attribution::explain::Explanation) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let patients = |s: &crate::attribution::explain::Settled| {
        if s.patients.is_empty() {
            "none".to_string()
        } else {
            s.patients
                .iter()
                .map(|p| format!("{} ({})", p.id, p.source.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let settled = |label: &str, s: &crate::attribution::explain::Settled, out: &mut String| {
        let _ = writeln!(out, "{label:<12} patients: {}", patients(s));
        let _ = writeln!(
            out,
            "{:<12} attribution: {}{}",
            "",
            s.attribution.as_str(),
            if s.gaps.is_empty() {
                String::new()
            } else {
                format!(" (gaps: {})", s.gaps.join(", "))
            }
        );
    };
    let _ = writeln!(out, "{:<12} {}", "rule", x.rule);
    if let Some(d) = &x.description {
        let _ = writeln!(out, "{:<12} {d}", "");
    }
    if let Some(r) = &x.rejected {
        let _ = writeln!(out, "{:<12} refused with 400: {r}", "path");
    }
    let _ = writeln!(
        out,
        "{:<12} {} ({})",
        "action",
        x.action.as_str(),
        x.interaction.as_str()
    );
    if let Some(t) = &x.resource_type {
        let _ = writeln!(
            out,
            "{:<12} {t}{}",
            "resource",
            x.resource_id
                .as_deref()
                .map(|i| format!("/{i}"))
                .unwrap_or_default()
        );
    }
    let reads = match (x.reads_body, x.reads_response) {
        (true, true) => "buffered: request body and response read for patients",
        (true, false) => "buffered: request body read for patients",
        (false, true) => "buffered: response read for patients before release",
        (false, false) => "streamed: patients from the request line only",
    };
    let _ = writeln!(out, "{:<12} {reads}", "path");
    settled("request", &x.request, &mut out);
    if let Some(o) = &x.outcome {
        settled("outcome", o, &mut out);
    }
    out
}
