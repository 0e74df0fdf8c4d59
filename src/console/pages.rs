//! The console's pages, as HTML made on the server with `maud` (every value escaped): the
//! layout (one inline style sheet, no script, no external file), sign-in, the search form, a
//! result (the verification badge, figures, charts, the report's tables with sort buttons and
//! pages, downloads), the reads of the trail, and refusals that say what to do.
//!
//! Forms only POST: a patient or user searched for never travels in a URL (and so never in an
//! access log of a proxy in front). Times are shown in the site's time zone, the UTC time on
//! hover (`<time title=...>`). Keyboard: every control is a native link, button or field, in
//! reading order, with a visible focus ring.

use chrono::TimeZone;
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::session::Session;
use crate::report::{Report, Section};

const STYLE: &str = r#"
:root { font-family: system-ui, sans-serif; color: #1d2430; background: #f6f7f9; }
body { margin: 0; }
header { background: #1f3a5f; color: #fff; padding: .6rem 1rem; display: flex; gap: 1rem; align-items: center; flex-wrap: wrap; }
header h1 { font-size: 1.1rem; margin: 0; flex: 1; }
header a { color: #fff; }
header button { color: #fff; background: transparent; border: 1px solid #fff; border-radius: 4px; }
main { padding: 1rem; max-width: 1200px; margin: 0 auto; }
form.search { display: grid; grid-template-columns: repeat(auto-fit, minmax(11rem, 1fr)); gap: .6rem; align-items: end; background: #fff; padding: 1rem; border-radius: 6px; }
label { display: flex; flex-direction: column; font-size: .9rem; gap: .2rem; }
input, select, button { font: inherit; padding: .35rem .5rem; }
button { cursor: pointer; }
:focus-visible { outline: 3px solid #f0a500; outline-offset: 2px; }
.badge { padding: .6rem 1rem; border-radius: 6px; margin: 1rem 0; font-weight: 600; }
.badge.ok { background: #e3f4e8; border: 1px solid #2f8f4e; }
.badge.fail { background: #fde7e7; border: 1px solid #b3261e; }
.badge.wait { background: #fff4d6; border: 1px solid #a36b00; }
.badge small { display: block; font-weight: 400; margin-top: .3rem; }
dl.facts { display: flex; flex-wrap: wrap; gap: .3rem 1.5rem; }
dl.facts div { display: flex; gap: .4rem; }
dt { color: #555; } dd { margin: 0; font-weight: 600; }
.charts { display: flex; flex-wrap: wrap; gap: 1rem; }
figure.chart { background: #fff; padding: .6rem; border-radius: 6px; margin: 0; max-width: 100%; overflow-x: auto; }
figure.chart rect { fill: #3b6ea5; }
figure.chart text { font-size: 12px; fill: #1d2430; }
.table { overflow-x: auto; background: #fff; border-radius: 6px; margin: 1rem 0; }
table { border-collapse: collapse; width: 100%; font-size: .88rem; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #e1e4e8; vertical-align: top; }
th button { background: none; border: 0; padding: 0; font-weight: 700; text-decoration: underline dotted; }
.pager, .downloads { display: flex; gap: .6rem; align-items: center; flex-wrap: wrap; margin: .6rem 0; }
.empty { color: #555; font-style: italic; }
.error { background: #fde7e7; padding: .8rem 1rem; border-radius: 6px; }
"#;

/// The page around `body`: header (who is signed in, sign-out), navigation.
pub fn layout(title: &str, session: Option<&Session>, form_token: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · auditgate console" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { "auditgate console" }
                    @if let Some(s) = session {
                        nav {
                            a href="/" { "Search" } " · "
                            form method="post" action="/reads" style="display:inline" {
                                input type="hidden" name="form_token" value=(form_token);
                                button type="submit" style="background:none;border:0;text-decoration:underline" { "Who read the trail" }
                            }
                        }
                        span #who { "Signed in as " strong { (s.actor.user) } }
                        form method="post" action="/logout" {
                            input type="hidden" name="form_token" value=(form_token);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The sign-in page: the identity provider's button (`oidc`), and pasting a bearer token.
pub fn sign_in(message: Option<&str>, oidc: bool) -> Markup {
    layout(
        "Sign in",
        None,
        "",
        html! {
            h2 { "Sign in" }
            @if let Some(m) = message { p.error role="alert" { (m) } }
            p { "Only users with an auditor's role or scope may read the audit trail; every search is itself recorded." }
            @if oidc {
                p { a #oidc-sign-in href="/oidc/start" style="display:inline-block;padding:.5rem 1rem;background:#1f3a5f;color:#fff;border-radius:4px" { "Sign in with your identity provider" } }
                p { "Or paste an access token:" }
            } @else {
                p { "Paste an access token from your identity provider:" }
            }
            form method="post" action="/login" {
                label { "Access token" textarea #token name="token" rows="4" cols="80" required autofocus {} }
                p { button type="submit" #sign-in { "Sign in" } }
            }
        },
    )
}

/// A refusal or failure page that says what happened and what to do.
pub fn problem(title: &str, session: Option<&Session>, form_token: &str, message: &str) -> Markup {
    layout(
        title,
        session,
        form_token,
        html! {
            h2 { (title) }
            p.error role="alert" #problem { (message) }
            p { a href="/" { "Back to the search" } }
        },
    )
}

/// What a search asks, as the form holds it.
#[derive(Debug, Clone, Default)]
pub struct SearchForm {
    /// `patient`, `user`, `ip` or `device`.
    pub by: String,
    /// The patient ID, user, IP or CIDR network, or device ID.
    pub value: String,
    /// First day (YYYY-MM-DD), or empty.
    pub from: String,
    /// Last day, or empty.
    pub to: String,
    /// A column of the first table, `-` before it for descending; empty: by time.
    pub sort: String,
    /// The page of the first table, from 1.
    pub page: usize,
    /// The result holds the trail as it was at this time (µs since the epoch; empty: now).
    /// Set by the first search and carried by its sort, page and download forms, so pages
    /// stay the same pages while the trail grows (the auditor's own searches among it).
    pub as_of: String,
}

impl SearchForm {
    /// The hidden fields that carry this search into the next form (sort, page, download).
    fn hidden(&self, form_token: &str) -> Markup {
        html! {
            input type="hidden" name="form_token" value=(form_token);
            input type="hidden" name="by" value=(self.by);
            input type="hidden" name="value" value=(self.value);
            input type="hidden" name="from" value=(self.from);
            input type="hidden" name="to" value=(self.to);
            input type="hidden" name="as_of" value=(self.as_of);
        }
    }
}

/// The search form, filled with `form`.
pub fn search_form(form: &SearchForm, form_token: &str) -> Markup {
    let by = |v: &str| form.by == v || (form.by.is_empty() && v == "patient");
    html! {
        form.search method="post" action="/search" aria-label="Search the audit trail" {
            input type="hidden" name="form_token" value=(form_token);
            label { "Search by"
                select #by name="by" {
                    option value="patient" selected[by("patient")] { "Patient (access report)" }
                    option value="user" selected[by("user")] { "User (breach timeline)" }
                    option value="ip" selected[by("ip")] { "IP or network (breach timeline)" }
                    option value="device" selected[by("device")] { "Device (breach timeline)" }
                    option value="flags" selected[by("flags")] { "Snooping flags (give From)" }
                }
            }
            label { "Patient ID, user, IP or device" input #value name="value" value=(form.value); }
            label { "From (day)" input #from type="date" name="from" value=(form.from); }
            label { "To (day, included)" input #to type="date" name="to" value=(form.to); }
            button #search type="submit" { "Search" }
        }
    }
}

/// The search page without a result.
pub fn search_page(session: &Session, form: &SearchForm) -> Markup {
    layout(
        "Search",
        Some(session),
        &session.form_token,
        html! {
            h2 { "Search the audit trail" }
            (search_form(form, &session.form_token))
            p.empty { "Search a patient to see every access to their record, or a user, IP or device to see the timeline of what they touched. Leave the days empty for the whole trail." }
        },
    )
}

/// `time` (RFC 3339, UTC) in the site's time zone, the UTC time on hover.
pub fn local_time(time: &str, zone: chrono_tz::Tz) -> Markup {
    match chrono::DateTime::parse_from_rfc3339(time) {
        Ok(t) => {
            let local = zone.from_utc_datetime(&t.naive_utc());
            html! { time datetime=(time) title=(format!("{time} (UTC)")) { (local.format("%Y-%m-%d %H:%M:%S %Z")) } }
        }
        Err(_) => html! { (time) },
    }
}

/// `as_of` (µs since the epoch) as RFC 3339.
fn as_of_time(as_of: &str) -> Option<String> {
    let micros: u64 = as_of.parse().ok()?;
    Some(crate::record::format_ts(
        std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros),
    ))
}

fn is_time_column(name: &str) -> bool {
    matches!(name, "time" | "first_access" | "last_access")
}

/// The verification state of an answer: verified (range, checkpoint), or why not.
pub enum Verification {
    /// Verified: one line per node.
    Verified(Vec<String>),
    /// The trail could not be proven: what is wrong.
    Failed(String),
    /// No signed checkpoint covers the trail yet.
    NotYet,
}

/// The badge of `state`.
pub fn badge(state: &Verification) -> Markup {
    match state {
        Verification::Verified(lines) => html! {
            div.badge.ok #verification role="status" data-state="verified" {
                "✔ Complete and verified: every record checked against the hash chain and the signed checkpoint."
                @for line in lines { small { (line) } }
            }
        },
        Verification::Failed(why) => html! {
            div.badge.fail #verification role="alert" data-state="failed" {
                "✖ Verification FAILED: this answer cannot be proven complete, so it is not shown."
                small { (why) }
                small { "Run `auditgate verify` on the journal and the archive, and tell your security team." }
            }
        },
        Verification::NotYet => html! {
            div.badge.wait #verification role="status" data-state="waiting" {
                "No signed checkpoint covers the trail yet: the gateway signs one every few seconds. Search again in a moment."
            }
        },
    }
}

/// One section as a table; for the first (`sortable`), sort buttons in its header and the
/// rows of `page` only.
fn table(
    section: &Section,
    zone: chrono_tz::Tz,
    form: &SearchForm,
    form_token: &str,
    rows: &[Vec<String>],
    sortable: bool,
) -> Markup {
    html! {
        div.table {
            table data-section=(section.title) {
                caption style="text-align:left;font-weight:600;padding:.4rem" { (section.title) " (" (section.rows.len()) ")" }
                thead { tr {
                    @for column in &section.columns {
                        th scope="col" {
                            @if sortable {
                                form method="post" action="/search" style="display:inline" {
                                    (form.hidden(form_token))
                                    @let next = if form.sort == *column { format!("-{column}") } else { column.to_string() };
                                    input type="hidden" name="sort" value=(next);
                                    button type="submit" data-sort=(column) title=(format!("Sort by {column}")) {
                                        (column)
                                        @if form.sort == *column { " ▲" } @else if form.sort == format!("-{column}") { " ▼" }
                                    }
                                }
                            } @else { (column) }
                        }
                    }
                } }
                tbody {
                    @for row in rows { tr {
                        @for (i, cell) in row.iter().enumerate() {
                            td { @if is_time_column(section.columns.get(i).copied().unwrap_or("")) { (local_time(cell, zone)) } @else { (cell) } }
                        }
                    } }
                }
            }
            @if section.rows.is_empty() { p.empty { "No rows." } }
        }
    }
}

/// Everything a result page shows besides the form.
pub struct Result<'a> {
    /// The report.
    pub report: &'a Report,
    /// The first table's rows per page.
    pub page_rows: usize,
    /// The charts, drawn.
    pub charts: Vec<Markup>,
    /// The site's time zone.
    pub zone: chrono_tz::Tz,
}

/// A search's result page.
pub fn result_page(
    session: &Session,
    form: &SearchForm,
    state: &Verification,
    result: Option<&Result<'_>>,
) -> Markup {
    let token = &session.form_token;
    layout(
        "Result",
        Some(session),
        token,
        html! {
            h2 { "Search the audit trail" }
            (search_form(form, token))
            (badge(state))
            @if let Some(r) = result {
                h2 #title { (r.report.title) }
                @if let Some(t) = as_of_time(&form.as_of) {
                    p #as-of { "The trail as of " (local_time(&t, r.zone)) ". Search again for anything newer." }
                }
                dl.facts { @for (name, value) in &r.report.facts { div { dt { (name) } dd data-fact=(name) {
                    @if chrono::DateTime::parse_from_rfc3339(value).is_ok() { (local_time(value, r.zone)) } @else { (value) }
                } } } }
                div.charts { @for chart in &r.charts { (chart) } }
                div.downloads {
                    @for (what, label) in download_kinds(r.report) {
                        form method="post" action="/download" {
                            (form.hidden(token))
                            input type="hidden" name="what" value=(what);
                            button type="submit" data-download=(what) { (label) }
                        }
                    }
                }
                @for (i, section) in r.report.sections.iter().enumerate() {
                    @if i == 0 {
                        @let pages = section.rows.len().div_ceil(r.page_rows).max(1);
                        @let page = form.page.clamp(1, pages);
                        @let start = (page - 1) * r.page_rows;
                        @let rows = &section.rows[start.min(section.rows.len())..(start + r.page_rows).min(section.rows.len())];
                        (table(section, r.zone, form, token, rows, true))
                        nav.pager aria-label="Pages" {
                            span #page-of { "Page " (page) " of " (pages) }
                            @for (label, target, enabled) in [("Previous page", page.saturating_sub(1), page > 1), ("Next page", page + 1, page < pages)] {
                                form method="post" action="/search" {
                                    (form.hidden(token))
                                    input type="hidden" name="sort" value=(form.sort);
                                    input type="hidden" name="page" value=(target);
                                    button type="submit" disabled[!enabled] { (label) }
                                }
                            }
                        }
                    } @else {
                        (table(section, r.zone, form, token, &section.rows, false))
                    }
                }
            }
        },
    )
}

/// The downloads a report offers: (what, button label).
fn download_kinds(report: &Report) -> Vec<(&'static str, &'static str)> {
    let mut kinds = vec![
        ("csv", "Download CSV"),
        ("fhir", "Download FHIR AuditEvents (NDJSON)"),
    ];
    if report.kind == "breach" {
        kinds.insert(1, ("patients", "Download affected patients (CSV)"));
    }
    kinds
}

/// The reads of the trail: who searched it, when, for what, and the patients the answers named.
pub fn reads_page(
    session: &Session,
    zone: chrono_tz::Tz,
    state: &Verification,
    section: Option<&Section>,
) -> Markup {
    layout(
        "Who read the trail",
        Some(session),
        &session.form_token,
        html! {
            h2 { "Who read the audit trail" }
            p { "Every search, page and download of this console and of the audit API is recorded in the same chain as the accesses it shows. These are those records." }
            (badge(state))
            @if let Some(s) = section { (table(s, zone, &SearchForm::default(), &session.form_token, &s.rows, false)) }
        },
    )
}
