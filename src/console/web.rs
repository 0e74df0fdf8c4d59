//! The console listener (`[console]`): sign-in, search, results, downloads and the reads of
//! the trail, for auditors only, every request recorded.
//!
//! Guarantees:
//! * **Only auditors.** Sign-in takes a bearer token the proxy's issuers verify and that
//!   carries an `[auditors]` role or scope; anyone else gets a 403 page, recorded. The session
//!   ends with the token ([`super::session`]).
//! * **Every look is recorded** before the page leaves ([`super::guard`]): each search, result
//!   page, download and view of the reads, with who asked, the form's fields (rule
//!   `console.search`, `console.download`, `console.view`, `console.login`) and every patient
//!   the page or file named. If the journal cannot take the record, the answer is a 503 page
//!   with nothing of the trail.
//! * **No PHI in URLs.** Searches are POSTed forms; the only GET pages are the sign-in and the
//!   empty search form. The gateway's own log names request IDs and results only.
//! * **Only proven answers.** A result is shown with its verification badge; an answer the
//!   trail cannot prove is not shown, and the badge says why.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use maud::Markup;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use super::api::named_patients;
use super::chart::bars;
use super::guard::{Guard, Served};
use super::pages::{self, SearchForm, Verification};
use super::session::{clear_cookie, cookie_session, set_cookie, Session, Sessions};
use super::trail::{TrailError, TrailSources};
use crate::config::server::ConsoleConfig;
use crate::identity::AuthFailure;
use crate::query::filter::{day_start_micros, Filters};
use crate::query::run::QueryError;
use crate::record::{InteractionKind, PatientRef, Who};
use crate::report::auditevent::{events, ExportContext};
use crate::report::requests::{self, Access};
use crate::report::{self as reports, Report, Section};

/// Rule names of the console's records.
pub const RULE_LOGIN: &str = "console.login";
/// A search and its result page.
pub const RULE_SEARCH: &str = "console.search";
/// A download of a result.
pub const RULE_DOWNLOAD: &str = "console.download";
/// A view of the reads of the trail.
pub const RULE_VIEW: &str = "console.view";

/// The largest form body read (a token is at most a few KiB).
const MAX_FORM_BYTES: usize = 64 * 1024;

const HTML: &str = "text/html; charset=utf-8";

/// The console's application.
pub struct Console {
    /// Who may look, and the record that they did.
    pub guard: Guard,
    /// The trail.
    pub trail: Arc<TrailSources>,
    /// Signed-in auditors.
    pub sessions: Sessions,
    /// `[console]`.
    pub config: ConsoleConfig,
    /// The site's time zone (`console.time_zone`).
    pub zone: chrono_tz::Tz,
    /// The EHR's address, for exported events.
    pub server_address: Option<String>,
    /// Sign-in with OpenID Connect, when `[console.oidc]` is set.
    pub oidc: Option<super::oidc::Oidc>,
    /// The snooping flags' rules (`[reports.flags]`).
    pub flags: crate::report::config::FlagsConfig,
}

/// An answer before it is recorded: status, body, headers, the patients it names.
struct Page {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    patients: Vec<PatientRef>,
    error: Option<String>,
}

impl Page {
    fn html(status: u16, markup: Markup) -> Page {
        Page {
            status,
            content_type: HTML,
            body: markup.into_string().into_bytes(),
            headers: Vec::new(),
            patients: Vec::new(),
            error: None,
        }
    }

    fn failed(mut self, error: &str) -> Page {
        self.error = Some(error.to_string());
        self
    }

    fn redirect(to: &str) -> Page {
        Page {
            status: 303,
            content_type: HTML,
            body: Vec::new(),
            headers: vec![("Location", to.to_string())],
            patients: Vec::new(),
            error: None,
        }
    }

    fn respond(self) -> Response<Vec<u8>> {
        let mut response = super::respond(self.status, self.content_type, self.body);
        let h = response.headers_mut();
        for (name, value) in self.headers {
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                h.append(name, v);
            }
        }
        h.insert(
            "Content-Security-Policy",
            http::HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
            ),
        );
        h.insert("X-Frame-Options", http::HeaderValue::from_static("DENY"));
        h.insert(
            "Referrer-Policy",
            http::HeaderValue::from_static("no-referrer"),
        );
        response
    }
}

/// A form body's fields.
type Fields = HashMap<String, String>;

async fn read_form(session: &mut ServerSession) -> Option<Fields> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_FORM_BYTES {
                    return None;
                }
            }
            Ok(None) => break,
            Err(_) => return None,
        }
    }
    Some(form_urlencoded::parse(&body).into_owned().collect())
}

fn field(fields: &Fields, name: &str) -> String {
    fields
        .get(name)
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

impl SearchForm {
    fn from_fields(fields: &Fields) -> SearchForm {
        SearchForm {
            by: field(fields, "by"),
            value: field(fields, "value"),
            from: field(fields, "from"),
            to: field(fields, "to"),
            sort: field(fields, "sort"),
            page: field(fields, "page").parse().unwrap_or(1).max(1),
            as_of: field(fields, "as_of"),
        }
    }

    /// The fields as recorded (the form token left out).
    fn recorded(&self) -> String {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("by", &self.by)
            .append_pair("value", &self.value)
            .append_pair("from", &self.from)
            .append_pair("to", &self.to)
            .append_pair("sort", &self.sort)
            .append_pair("page", &self.page.to_string())
            .append_pair("as_of", &self.as_of)
            .finish()
    }

    /// The query plane's filters, or what is wrong with the form. `lookback_days`: how far
    /// before the window the flags read history.
    fn filters(&self, lookback_days: u32) -> Result<Filters, String> {
        let mut filters = Filters::default();
        if self.value.is_empty() && self.by != "flags" {
            return Err("Give a patient ID, user, IP or device to search for.".into());
        }
        if self.by == "flags" && self.from.is_empty() {
            return Err(
                "Snooping flags need a first day (From): they are raised over a window.".into(),
            );
        }
        match self.by.as_str() {
            "flags" => {}
            "patient" | "" => filters.patients = vec![self.value.clone()],
            "user" => filters.users = vec![self.value.clone()],
            "device" => filters.devices = vec![self.value.clone()],
            "ip" => {
                let net = self
                    .value
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| {
                        self.value
                            .parse::<std::net::IpAddr>()
                            .map(ipnet::IpNet::from)
                    })
                    .map_err(|_| {
                        format!(
                            "{:?} is not an IP address or network (10.0.0.0/24)",
                            self.value
                        )
                    })?;
                filters.client_ips = vec![net];
            }
            other => return Err(format!("Unknown search kind {other:?}.")),
        }
        let day = |text: &str, what: &str| {
            day_start_micros(text).ok_or_else(|| format!("{what} must be a day (YYYY-MM-DD)."))
        };
        if !self.from.is_empty() {
            filters.since_micros = Some(day(&self.from, "From")?);
            if self.by == "flags" {
                // First access, new country or network: the history before the window counts.
                filters.since_micros = filters
                    .since_micros
                    .map(|s| s - i64::from(lookback_days) * 86_400_000_000);
            }
        }
        if !self.to.is_empty() {
            filters.until_micros = Some(day(&self.to, "To")? + 86_400_000_000);
        }
        if let Ok(as_of) = self.as_of.parse::<i64>() {
            filters.until_micros = Some(filters.until_micros.map_or(as_of, |u| u.min(as_of)));
        }
        Ok(filters)
    }

    fn is_patient_search(&self) -> bool {
        matches!(self.by.as_str(), "patient" | "")
    }
}

/// What a search found.
struct Found {
    report: Report,
    accesses: Vec<Access>,
}

/// Why a search shows no result.
enum Unanswered {
    /// The form is wrong: what to fix.
    Form(String),
    /// The trail: not proven, not yet checkpointed, unreadable.
    Trail(TrailError),
}

impl Console {
    /// Run `form` over the trail: the report it asks for, sorted as it asks.
    async fn run(&self, form: &SearchForm) -> Result<Found, Unanswered> {
        let filters = form
            .filters(self.flags.lookback_days)
            .map_err(Unanswered::Form)?;
        let asked = filters.clone();
        let answer = self
            .trail
            .run(move |trail| trail.answer(asked))
            .await
            .map_err(Unanswered::Trail)?;
        let accesses = requests::accesses(&answer).map_err(|e| Unanswered::Trail(e.into()))?;
        let window = format!(
            "{} to {}",
            if form.from.is_empty() {
                "the start"
            } else {
                &form.from
            },
            if form.to.is_empty() { "now" } else { &form.to }
        );
        let (kind, title) = if form.is_patient_search() {
            (
                "access",
                format!("Accesses to the record of patient {}", form.value),
            )
        } else if form.by == "flags" {
            ("flags", "Accesses flagged for review".to_string())
        } else {
            ("breach", format!("Timeline of {} {}", form.by, form.value))
        };
        let query = serde_json::to_value(&filters).unwrap_or_default();
        let parameters = vec![
            (form.by.clone(), form.value.clone()),
            ("window".to_string(), window),
        ];
        let mut report = Report::over(kind, title, parameters, &answer, query, true);
        let mut accesses = accesses;
        match kind {
            "access" => reports::access::build(&mut report, &accesses),
            "flags" => {
                let from = filters.since_micros.unwrap_or_default()
                    + i64::from(self.flags.lookback_days) * 86_400_000_000;
                let (history, window): (Vec<Access>, Vec<Access>) =
                    accesses.into_iter().partition(|a| {
                        crate::columnar::rows::micros_of(a.ts()).is_some_and(|t| t < from)
                    });
                reports::flags::build(&mut report, &window, &history, &self.flags, &[])
                    .map_err(|e| Unanswered::Form(e.to_string()))?;
                // What the page shows (and records) is the window, not the history.
                accesses = window;
            }
            _ => reports::breach::build(&mut report, &accesses),
        }
        if !form.sort.is_empty() {
            if let Some(first) = report.sections.first_mut() {
                first
                    .sort(std::slice::from_ref(&form.sort))
                    .map_err(|e| Unanswered::Form(e.to_string()))?;
            }
        }
        Ok(Found { report, accesses })
    }

    /// A verified answer's badge: what each node's part covered.
    fn verified(coverage: &[crate::query::run::Coverage]) -> Verification {
        Verification::Verified(
            coverage
                .iter()
                .map(|c| crate::report::render::coverage_line(c, true))
                .collect(),
        )
    }

    /// The verification state and status of a trail that gave no answer.
    fn trail_problem(e: &TrailError) -> (u16, Verification) {
        match e {
            TrailError::Query(QueryError::NotYetCheckpointed { .. }) => (503, Verification::NotYet),
            other => {
                tracing::error!(
                    category = other.category(),
                    "the console could not answer a search"
                );
                (500, Verification::Failed(other.to_string()))
            }
        }
    }

    /// Charts of an answer: accesses per day (UTC), distinct patients per user.
    fn charts(accesses: &[Access]) -> Vec<Markup> {
        let mut per_day: BTreeMap<String, u64> = BTreeMap::new();
        let mut per_user: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for a in accesses {
            *per_day.entry(a.day().to_string()).or_default() += 1;
            per_user
                .entry(a.user())
                .or_default()
                .extend(a.patients.iter().cloned());
        }
        let days: Vec<(String, u64)> = per_day.into_iter().collect();
        let mut users: Vec<(String, u64)> = per_user
            .into_iter()
            .map(|(u, p)| (u, p.len() as u64))
            .collect();
        users.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        users.truncate(20);
        vec![
            bars("chart-days", "Requests per day (UTC)", &days),
            bars("chart-users", "Distinct patients per user", &users),
        ]
    }

    fn answer_patients(accesses: &[Access], form: &SearchForm) -> Vec<PatientRef> {
        let named = accesses.iter().flat_map(|a| a.patients.iter().cloned());
        let asked = form
            .is_patient_search()
            .then(|| form.value.clone())
            .into_iter()
            .filter(|v| !v.is_empty());
        named_patients(named, asked)
    }

    async fn search(&self, session: &Session, form: &SearchForm) -> Page {
        match self.run(form).await {
            Ok(found) => {
                let charts = Self::charts(&found.accesses);
                let state = Self::verified(&found.report.coverage);
                let result = pages::Result {
                    report: &found.report,
                    page_rows: self.config.page_rows,
                    charts,
                    zone: self.zone,
                };
                let mut page = Page::html(
                    200,
                    pages::result_page(session, form, &state, Some(&result)),
                );
                page.patients = Self::answer_patients(&found.accesses, form);
                page
            }
            Err(unanswered) => self.unanswered(session, form, unanswered),
        }
    }

    /// The page of a search that gave no result: what to fix in the form, or the trail's state.
    fn unanswered(&self, session: &Session, form: &SearchForm, why: Unanswered) -> Page {
        match why {
            Unanswered::Form(message) => Page::html(
                400,
                pages::problem(
                    "Check the search",
                    Some(session),
                    &session.form_token,
                    &message,
                ),
            )
            .failed("bad_form"),
            Unanswered::Trail(e) => {
                let (status, state) = Self::trail_problem(&e);
                let mut page = Page::html(status, pages::result_page(session, form, &state, None));
                page.patients =
                    named_patients([], form.is_patient_search().then(|| form.value.clone()));
                page.failed(if status == 503 {
                    "not_yet_checkpointed"
                } else {
                    "unverified"
                })
            }
        }
    }

    async fn download(&self, session: &Session, form: &SearchForm, what: &str) -> Page {
        let found = match self.run(form).await {
            Ok(found) => found,
            Err(why) => return self.unanswered(session, form, why),
        };
        // Written into memory: a Vec takes every write, so the writers' io::Results are Ok.
        let mut body = Vec::new();
        let (content_type, name) = match what {
            "fhir" => {
                let context = ExportContext {
                    server_address: self.server_address.clone(),
                };
                for access in &found.accesses {
                    for event in events(access, &context) {
                        body.extend(serde_json::to_vec(&event).unwrap_or_default());
                        body.push(b'\n');
                    }
                }
                ("application/fhir+ndjson", "audit-events.ndjson")
            }
            "patients" => {
                if let Some(section) = reports::breach::patients_section(&found.report) {
                    let _ = reports::render::csv(section, &mut body);
                }
                ("text/csv; charset=utf-8", "affected-patients.csv")
            }
            _ => {
                if let Some(section) = found.report.sections.first() {
                    let _ = reports::render::csv(section, &mut body);
                }
                ("text/csv; charset=utf-8", "report.csv")
            }
        };
        Page {
            status: 200,
            content_type,
            body,
            headers: vec![(
                "Content-Disposition",
                format!(
                    "attachment; filename=\"auditgate-{}-{name}\"",
                    found.report.kind
                ),
            )],
            patients: Self::answer_patients(&found.accesses, form),
            error: None,
        }
    }

    /// The reads of the trail: the console's and the audit API's own records.
    async fn reads(&self, session: &Session) -> Page {
        let filters = Filters {
            rules: [
                RULE_LOGIN,
                RULE_SEARCH,
                RULE_DOWNLOAD,
                RULE_VIEW,
                super::api::AUDIT_SEARCH_RULE,
            ]
            .iter()
            .map(|r| r.to_string())
            .collect(),
            ..Filters::default()
        };
        let answer = self.trail.run(move |trail| trail.answer(filters)).await;
        let accesses = answer.and_then(|a| {
            let accesses = requests::accesses(&a).map_err(TrailError::from)?;
            Ok((accesses, a.coverage))
        });
        match accesses {
            Ok((mut accesses, coverage)) => {
                accesses.reverse();
                let mut section = Section::new(
                    "Reads of the trail, newest first",
                    &[
                        "time", "user", "what", "asked", "status", "patients", "evidence",
                    ],
                );
                let mut named = Vec::new();
                for a in &accesses {
                    let e = &a.record.event;
                    named.extend(a.patients.iter().cloned());
                    section.rows.push(vec![
                        a.ts().to_string(),
                        a.user(),
                        e.rule.clone(),
                        e.query.clone().unwrap_or_default(),
                        a.status(),
                        a.patients.iter().cloned().collect::<Vec<_>>().join(" "),
                        a.evidence(),
                    ]);
                }
                let state = Self::verified(&coverage);
                let mut page = Page::html(
                    200,
                    pages::reads_page(session, self.zone, &state, Some(&section)),
                );
                page.patients = named_patients(named, []);
                page
            }
            Err(e) => {
                let (status, state) = Self::trail_problem(&e);
                Page::html(status, pages::reads_page(session, self.zone, &state, None))
                    .failed("unverified")
            }
        }
    }

    /// Sign in with a pasted token: who, their device claim, the page, and why the token was
    /// refused (if it was).
    async fn login(&self, fields: &Fields) -> (Who, Option<String>, Page, Option<AuthFailure>) {
        self.sign_in_with(&field(fields, "token")).await
    }

    /// Sign in with a token (pasted, or from the OpenID Connect flow).
    async fn sign_in_with(&self, token: &str) -> (Who, Option<String>, Page, Option<AuthFailure>) {
        let mut headers = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {token}")) {
            headers.insert(http::header::AUTHORIZATION, v);
        }
        match self.guard.authenticate(&headers, None).await {
            Err(failure) => {
                let who = Who::Unauthenticated {
                    reason: failure.reason().to_string(),
                };
                let page = Page::html(401, self.sign_in_page(Some("That token was not accepted: it may have expired, or come from an identity provider this gateway does not trust. Get a new one and try again.")));
                let reason = failure.reason();
                (who, None, page.failed(reason), Some(failure))
            }
            Ok(a) if !self.guard.is_auditor(&a) => {
                let page = Page::html(
                    403,
                    pages::problem(
                        "Not an auditor",
                        None,
                        "",
                        "Your account does not have an auditor's role or scope, so the audit trail is not shown. Ask your security team if you need access; this attempt has been recorded.",
                    ),
                );
                (
                    Who::Authenticated(a.actor),
                    a.device_id,
                    page.failed("forbidden"),
                    None,
                )
            }
            Ok(a) => {
                let id = self
                    .sessions
                    .open(a.actor.clone(), a.device_id.clone(), a.expires_at);
                let seconds = super::session::seconds_until(a.expires_at);
                let mut page = Page::redirect("/");
                page.headers
                    .push(("Set-Cookie", set_cookie(&id, seconds, self.config.tls)));
                (Who::Authenticated(a.actor), a.device_id, page, None)
            }
        }
    }

    /// Record `page` as answered to `who`, then answer it; a 503 page when it cannot be recorded.
    async fn recorded(
        &self,
        arrival: super::guard::Arrival,
        who: Who,
        device: Option<&String>,
        rule: &'static str,
        page: Page,
    ) -> Response<Vec<u8>> {
        let served = Served {
            rule,
            interaction: InteractionKind::Search,
            status: page.status,
            error: page.error.clone(),
            patients: page.patients.clone(),
            bytes_out: page.body.len(),
            content_type: page.content_type,
        };
        let request_id = arrival.request_id.clone();
        match self.guard.record(arrival, who, device, served).await {
            Ok(()) => {
                tracing::info!(request_id = %request_id, status = page.status, rule, "console request");
                page.respond()
            }
            Err(e) => {
                tracing::error!(error = %e, request_id = %request_id, "the console's record could not be written; answered 503");
                Page::html(
                    503,
                    pages::problem("Not available", None, "", "The audit trail cannot record this request now, so nothing is shown. Try again later; your security team has been alerted by the gateway's metrics."),
                )
                .respond()
            }
        }
    }
}

impl Console {
    /// The sign-in page, with the identity provider's button when OpenID Connect is set.
    fn sign_in_page(&self, message: Option<&str>) -> Markup {
        pages::sign_in(message, self.oidc.is_some())
    }

    /// The identity provider sends the browser back: exchange the code, then sign in with the
    /// token as if it were pasted (recorded as `console.login`).
    async fn callback(&self, http: &ServerSession) -> Response<Vec<u8>> {
        let Some(oidc) = &self.oidc else {
            return not_found(None);
        };
        let query = http.req_header().uri.query().unwrap_or("").to_string();
        let token = match oidc.finish(&query).await {
            Ok(token) => token,
            Err(e) => {
                tracing::warn!(error = %e, "OpenID Connect sign-in did not complete");
                return Page::html(400, self.sign_in_page(Some(&e.to_string()))).respond();
            }
        };
        let mut arrival = self.guard.arrive(http);
        arrival.asked = None;
        let (who, device, page, refused) = self.sign_in_with(&token).await;
        if refused.is_some_and(|f| self.guard.flooded(&arrival, &f)) {
            return page.respond();
        }
        self.recorded(arrival, who, device.as_ref(), RULE_LOGIN, page)
            .await
    }

    /// A GET: the sign-in page, or (signed in) the empty search form, recorded as a view.
    async fn get(
        &self,
        http: &ServerSession,
        path: &str,
        session: Option<&(String, Session)>,
    ) -> Response<Vec<u8>> {
        match (path, session) {
            ("/", None) => Page::html(200, self.sign_in_page(None)).respond(),
            ("/oidc/start", _) => match &self.oidc {
                Some(oidc) => match oidc.start().await {
                    Ok(url) => Page::redirect(&url).respond(),
                    Err(e) => {
                        tracing::error!(error = %e, "OpenID Connect sign-in could not start");
                        Page::html(502, self.sign_in_page(Some(&e.to_string()))).respond()
                    }
                },
                None => not_found(None),
            },
            ("/callback", _) => self.callback(http).await,
            ("/", Some((_, s))) => {
                let arrival = self.guard.arrive(http);
                let page = Page::html(200, pages::search_page(s, &SearchForm::default()));
                let who = Who::Authenticated(s.actor.clone());
                self.recorded(arrival, who, s.device.as_ref(), RULE_VIEW, page)
                    .await
            }
            _ => not_found(None),
        }
    }

    /// A signed-in POST with its session's form token: search, download, reads, sign-out.
    async fn post(
        &self,
        mut arrival: super::guard::Arrival,
        path: &str,
        (id, s): (String, Session),
        fields: &Fields,
    ) -> Response<Vec<u8>> {
        let who = Who::Authenticated(s.actor.clone());
        let mut form = SearchForm::from_fields(fields);
        if form.as_of.is_empty() {
            // A new search: its sort, pages and downloads show the trail as of now.
            form.as_of = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros().to_string())
                .unwrap_or_default();
        }
        let (rule, page) = match path {
            "/logout" => {
                self.sessions.close(&id);
                let mut page = Page::redirect("/");
                page.headers
                    .push(("Set-Cookie", clear_cookie(self.config.tls)));
                return page.respond();
            }
            "/search" => {
                arrival.asked = Some(form.recorded());
                (RULE_SEARCH, self.search(&s, &form).await)
            }
            "/download" => {
                let what = match field(fields, "what").as_str() {
                    "fhir" => "fhir",
                    "patients" => "patients",
                    _ => "csv",
                };
                arrival.asked = Some(format!("{}&what={what}", form.recorded()));
                (RULE_DOWNLOAD, self.download(&s, &form, what).await)
            }
            "/reads" => {
                arrival.asked = None;
                (RULE_VIEW, self.reads(&s).await)
            }
            _ => return not_found(Some(&s)),
        };
        self.recorded(arrival, who, s.device.as_ref(), rule, page)
            .await
    }
}

fn not_found(session: Option<&Session>) -> Response<Vec<u8>> {
    let token = session.map_or("", |s| s.form_token.as_str());
    Page::html(
        404,
        pages::problem("Not found", session, token, "There is no such page."),
    )
    .respond()
}

#[async_trait]
impl ServeHttp for Console {
    async fn response(&self, http: &mut ServerSession) -> Response<Vec<u8>> {
        let req = http.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        let session =
            cookie_session(&req.headers).and_then(|id| self.sessions.get(&id).map(|s| (id, s)));
        if method == http::Method::GET {
            return self.get(http, &path, session.as_ref()).await;
        }
        if method != http::Method::POST {
            let page = pages::problem("Not allowed", None, "", "Use the console's buttons.");
            return Page::html(405, page).respond();
        }
        let mut arrival = self.guard.arrive(http);
        let Some(fields) = read_form(http).await else {
            let page = pages::problem("Too large", None, "", "The form was too large.");
            return Page::html(413, page).respond();
        };
        if path == "/login" {
            let (who, device, page, refused) = self.login(&fields).await;
            arrival.asked = None;
            if refused.is_some_and(|f| self.guard.flooded(&arrival, &f)) {
                // Counted into this client's flood summary instead of a record of its own.
                return page.respond();
            }
            return self
                .recorded(arrival, who, device.as_ref(), RULE_LOGIN, page)
                .await;
        }
        let Some((id, s)) = session else {
            let message = "Your session has ended. Sign in again.";
            return Page::html(401, self.sign_in_page(Some(message))).respond();
        };
        if field(&fields, "form_token") != s.form_token {
            let message =
                "This form does not belong to your session. Go back to the search and try again.";
            let page = Page::html(
                403,
                pages::problem("Form expired", Some(&s), &s.form_token, message),
            );
            let who = Who::Authenticated(s.actor.clone());
            let page = page.failed("bad_form_token");
            return self
                .recorded(arrival, who, s.device.as_ref(), RULE_VIEW, page)
                .await;
        }
        self.post(arrival, &path, (id, s), &fields).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(by: &str, value: &str, from: &str, to: &str, as_of: &str) -> SearchForm {
        SearchForm {
            by: by.into(),
            value: value.into(),
            from: from.into(),
            to: to.into(),
            as_of: as_of.into(),
            ..SearchForm::default()
        }
    }

    #[test]
    fn a_form_becomes_the_query_planes_filters() {
        let day = |d: &str| day_start_micros(d).unwrap();
        let f = form("patient", "p1", "2026-03-01", "2026-03-02", "")
            .filters(90)
            .unwrap();
        assert_eq!(f.patients, ["p1"]);
        assert_eq!(f.since_micros, Some(day("2026-03-01")));
        assert_eq!(
            f.until_micros,
            Some(day("2026-03-03")),
            "the last day is included"
        );
        // A result holds the trail as of its search: the earlier of the two ends wins.
        let as_of = day("2026-03-02").to_string();
        let f = form("user", "u", "", "2026-03-02", &as_of)
            .filters(90)
            .unwrap();
        assert_eq!(
            (f.users.as_slice(), f.until_micros),
            (["u".to_string()].as_slice(), Some(day("2026-03-02")))
        );
        let f = form("ip", "10.0.0.0/8", "", "", "").filters(90).unwrap();
        assert_eq!(f.client_ips.len(), 1);
        for bad in [
            form("ip", "ten", "", "", ""),
            form("patient", "", "", "", ""),
            form("patient", "p", "yesterday", "", ""),
            form("nothing", "p", "", "", ""),
        ] {
            assert!(bad.filters(90).is_err(), "{bad:?}");
        }
        let recorded = form("patient", "p 1", "", "", "5").recorded();
        assert_eq!(
            recorded,
            "by=patient&value=p+1&from=&to=&sort=&page=0&as_of=5"
        );
    }
}
