//! IHE ITI-81 "Retrieve ATNA Audit Event": the search parameters of `GET /AuditEvent?...`,
//! what they mean for the trail, and the searchset `Bundle` that answers them.
//!
//! Owns the parameters and their FHIR semantics: `date` (prefixes `eq`, `ge`, `gt`, `le`, `lt`;
//! a day or an RFC 3339 time, each the interval its precision names), `patient`, `agent`,
//! `entity`, `type`, `subtype`, `outcome`, `address`, `action`, and paging (`_count`,
//! `_offset`). Repeating a parameter means all of them must hold; commas inside one value are
//! alternatives. What the query plane can narrow (the time window, the patients) becomes its
//! [`Filters`]; every parameter is then matched exactly on each `AuditEvent` the trail gives
//! ([`AuditSearch::matches`]).
//!
//! Guarantees: an unknown parameter, an unsupported prefix or modifier, or a value that cannot
//! be read is an error naming it (answered 400), never silently ignored (a misspelt `patinet=`
//! must not return every patient's events); the events come in the trail's order (node, then
//! sequence), so a page stays the same page while the trail grows.

use serde_json::{json, Value};

use crate::query::filter::{day_start_micros, Filters};

/// One day in microseconds.
const DAY_MICROS: i64 = 86_400 * 1_000_000;

/// Why a search cannot be run (answered 400 with an `OperationOutcome`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    /// A parameter this server does not support.
    #[error("unknown search parameter `{0}` (supported: date, patient, agent, entity, type, subtype, outcome, address, action, _count, _offset)")]
    UnknownParameter(String),
    /// A value that cannot be read.
    #[error("`{parameter}={value}`: {why}")]
    BadValue {
        /// The parameter.
        parameter: String,
        /// Its value, as sent.
        value: String,
        /// What is wrong with it.
        why: String,
    },
}

fn bad(parameter: &str, value: &str, why: impl Into<String>) -> SearchError {
    SearchError::BadValue {
        parameter: parameter.to_string(),
        value: value.to_string(),
        why: why.into(),
    }
}

/// A token: `code`, `system|code`, or `|code` (no system).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    system: Option<String>,
    code: String,
}

impl Token {
    fn parse(text: &str) -> Token {
        match text.split_once('|') {
            Some((system, code)) => Token {
                system: Some(system.to_string()),
                code: code.to_string(),
            },
            None => Token {
                system: None,
                code: text.to_string(),
            },
        }
    }

    /// Whether a `Coding` (`{"system", "code"}`) matches.
    fn matches(&self, coding: &Value) -> bool {
        coding["code"].as_str() == Some(self.code.as_str())
            && self
                .system
                .as_deref()
                .is_none_or(|s| coding["system"].as_str().unwrap_or("") == s)
    }
}

/// One parameter's test on an event: any of its alternatives holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Criterion {
    Patient(Vec<String>),
    Agent(Vec<Token>),
    Entity(Vec<String>),
    Type(Vec<Token>),
    Subtype(Vec<Token>),
    Outcome(Vec<String>),
    Address(Vec<String>),
    Action(Vec<String>),
}

/// A parsed ITI-81 search.
#[derive(Debug, Clone)]
pub struct AuditSearch {
    /// What the query plane narrows: the time window and the patients.
    pub filters: Filters,
    criteria: Vec<Criterion>,
    /// Events per page.
    pub count: usize,
    /// Events skipped before this page.
    pub offset: usize,
    /// The parameters as given, without paging (for the page links).
    parameters: Vec<(String, String)>,
}

/// The patient id of a `patient` value: `123`, `Patient/123`, or a URL ending `/Patient/123`.
fn patient_id(value: &str) -> Option<String> {
    let id = match value.rsplit_once("Patient/") {
        Some((_, id)) => id,
        None if value.contains('/') => return None,
        None => value,
    };
    (!id.is_empty() && !id.contains('/')).then(|| id.to_string())
}

/// The interval `[start, end)` (µs since the epoch) a date value's precision names: a day,
/// or an RFC 3339 time to the second (or to the microsecond when it has a fraction).
fn date_interval(text: &str) -> Option<(i64, i64)> {
    if let Some(start) = day_start_micros(text) {
        return Some((start, start + DAY_MICROS));
    }
    let start = crate::columnar::rows::micros_of(text)?;
    let width = if text.contains('.') { 1 } else { 1_000_000 };
    Some((start, start + width))
}

/// Fold one `date` value into the window.
fn apply_date(filters: &mut Filters, value: &str) -> Result<(), SearchError> {
    let (prefix, rest) = match value.get(..2) {
        Some(p @ ("eq" | "ge" | "gt" | "le" | "lt")) => (p, &value[2..]),
        Some("ne" | "sa" | "eb" | "ap") => {
            return Err(bad("date", value, "supported prefixes: eq, ge, gt, le, lt"))
        }
        _ => ("eq", value),
    };
    let (start, end) = date_interval(rest).ok_or_else(|| {
        bad(
            "date",
            value,
            "give a day (2026-03-01) or an RFC 3339 time (2026-03-01T08:00:00Z)",
        )
    })?;
    let (since, until) = match prefix {
        "ge" => (Some(start), None),
        "gt" => (Some(end), None),
        "le" => (None, Some(end)),
        "lt" => (None, Some(start)),
        _ => (Some(start), Some(end)),
    };
    if let Some(s) = since {
        filters.since_micros = Some(filters.since_micros.map_or(s, |old| old.max(s)));
    }
    if let Some(u) = until {
        filters.until_micros = Some(filters.until_micros.map_or(u, |old| old.min(u)));
    }
    Ok(())
}

fn page_number(parameter: &str, value: &str, least: usize) -> Result<usize, SearchError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| *n >= least)
        .ok_or_else(|| {
            bad(
                parameter,
                value,
                format!("a whole number, at least {least}"),
            )
        })
}

impl AuditSearch {
    /// Read a query string (without `?`). `page_size`: `_count` when absent; `max_page_size`:
    /// the most a page holds. `access_token` (a token sent in the query) is not a search
    /// parameter and is skipped.
    pub fn parse(
        query: &str,
        page_size: usize,
        max_page_size: usize,
    ) -> Result<AuditSearch, SearchError> {
        let mut search = AuditSearch {
            filters: Filters::default(),
            criteria: Vec::new(),
            count: page_size,
            offset: 0,
            parameters: Vec::new(),
        };
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let (name, value) = (name.into_owned(), value.into_owned());
            let values = || value.split(',').map(str::to_string).collect::<Vec<_>>();
            match name.as_str() {
                "access_token" | "_format" => continue,
                "_count" => {
                    search.count = page_number("_count", &value, 1)?.min(max_page_size);
                    continue;
                }
                "_offset" => {
                    search.offset = page_number("_offset", &value, 0)?;
                    continue;
                }
                "date" => apply_date(&mut search.filters, &value)?,
                "patient" => {
                    let ids = values()
                        .iter()
                        .map(|v| {
                            patient_id(v)
                                .ok_or_else(|| bad("patient", v, "give a patient id or Patient/id"))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    // Repeated `patient`: every one must hold; the plane narrows to the first.
                    if search.filters.patients.is_empty() {
                        search.filters.patients = ids.clone();
                    }
                    search.criteria.push(Criterion::Patient(ids));
                }
                "agent" => search.criteria.push(Criterion::Agent(
                    values().iter().map(|v| Token::parse(v)).collect(),
                )),
                "entity" => search.criteria.push(Criterion::Entity(values())),
                "type" => search.criteria.push(Criterion::Type(
                    values().iter().map(|v| Token::parse(v)).collect(),
                )),
                "subtype" => search.criteria.push(Criterion::Subtype(
                    values().iter().map(|v| Token::parse(v)).collect(),
                )),
                "outcome" => {
                    let codes = values();
                    if let Some(c) = codes
                        .iter()
                        .find(|c| !matches!(c.as_str(), "0" | "4" | "8" | "12"))
                    {
                        return Err(bad("outcome", c, "an outcome is 0, 4, 8 or 12"));
                    }
                    search.criteria.push(Criterion::Outcome(codes));
                }
                "address" => search.criteria.push(Criterion::Address(values())),
                "action" => {
                    let codes = values();
                    if let Some(c) = codes
                        .iter()
                        .find(|c| !matches!(c.as_str(), "C" | "R" | "U" | "D" | "E"))
                    {
                        return Err(bad("action", c, "an action is C, R, U, D or E"));
                    }
                    search.criteria.push(Criterion::Action(codes));
                }
                other => return Err(SearchError::UnknownParameter(other.to_string())),
            }
            search.parameters.push((name, value));
        }
        Ok(search)
    }

    /// Whether `event` (an `AuditEvent`) meets every parameter.
    pub fn matches(&self, event: &Value) -> bool {
        if let Some(recorded) = event["recorded"]
            .as_str()
            .and_then(crate::columnar::rows::micros_of)
        {
            if self.filters.since_micros.is_some_and(|s| recorded < s)
                || self.filters.until_micros.is_some_and(|u| recorded >= u)
            {
                return false;
            }
        }
        self.criteria.iter().all(|c| criterion_holds(c, event))
    }

    /// The query string of page `offset` of this search (`_count` and `_offset` last).
    pub fn page_query(&self, offset: usize) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (name, value) in &self.parameters {
            out.append_pair(name, value);
        }
        out.append_pair("_count", &self.count.to_string());
        out.append_pair("_offset", &offset.to_string());
        out.finish()
    }

    /// The patients the search names (`patient=`), for the record of who asked.
    pub fn patients(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .criteria
            .iter()
            .filter_map(|c| match c {
                Criterion::Patient(ids) => Some(ids.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

fn array(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn criterion_holds(criterion: &Criterion, event: &Value) -> bool {
    let entities = array(&event["entity"]);
    let agents = array(&event["agent"]);
    match criterion {
        Criterion::Patient(ids) => entities.iter().any(|e| {
            e["role"]["code"] == "1"
                && ids
                    .iter()
                    .any(|id| e["what"]["reference"].as_str() == Some(&format!("Patient/{id}")))
        }),
        Criterion::Agent(tokens) => agents.iter().any(|a| {
            let who = &a["who"];
            tokens.iter().any(|t| {
                let by_reference =
                    t.system.is_none() && who["reference"].as_str() == Some(t.code.as_str());
                let by_identifier = who["identifier"]["value"].as_str() == Some(t.code.as_str())
                    && t.system
                        .as_deref()
                        .is_none_or(|s| who["identifier"]["system"].as_str().unwrap_or("") == s);
                by_reference || by_identifier
            })
        }),
        Criterion::Entity(values) => entities.iter().any(|e| {
            values.iter().any(|v| {
                e["what"]["reference"].as_str() == Some(v.as_str())
                    || e["what"]["identifier"]["value"].as_str() == Some(v.as_str())
            })
        }),
        Criterion::Type(tokens) => tokens.iter().any(|t| t.matches(&event["type"])),
        Criterion::Subtype(tokens) => array(&event["subtype"])
            .iter()
            .any(|c| tokens.iter().any(|t| t.matches(c))),
        Criterion::Outcome(codes) => codes
            .iter()
            .any(|c| event["outcome"].as_str() == Some(c.as_str())),
        Criterion::Address(values) => agents.iter().any(|a| {
            values
                .iter()
                .any(|v| a["network"]["address"].as_str() == Some(v.as_str()))
        }),
        Criterion::Action(codes) => codes
            .iter()
            .any(|c| event["action"].as_str() == Some(c.as_str())),
    }
}

/// The patient ids an event names (entities in the Patient role).
pub fn event_patients(event: &Value) -> Vec<String> {
    array(&event["entity"])
        .iter()
        .filter(|e| e["role"]["code"] == "1")
        .filter_map(|e| e["what"]["reference"].as_str()?.strip_prefix("Patient/"))
        .map(str::to_string)
        .collect()
}

/// One page of a search's answer.
pub struct Page<'a> {
    /// The events of this page.
    pub events: &'a [Value],
    /// How many events matched in all.
    pub total: usize,
    /// The search's base URL (`https://host:port/AuditEvent`).
    pub base: String,
    /// What the answer covered and whether it is proven (one line per node), as information.
    pub coverage: Vec<String>,
}

/// The searchset `Bundle` of `page` of `search`: `total`, the links (`self`, `first`, and
/// `previous`/`next` where there are such pages), each event as a `match` entry, and the
/// answer's coverage as an `OperationOutcome` entry (`search.mode` `outcome`).
pub fn bundle(search: &AuditSearch, page: &Page<'_>) -> Value {
    let link = |relation: &str, offset: usize| json!({"relation": relation, "url": format!("{}?{}", page.base, search.page_query(offset))});
    let mut links = vec![link("self", search.offset), link("first", 0)];
    if search.offset > 0 {
        links.push(link("previous", search.offset.saturating_sub(search.count)));
    }
    if search.offset + page.events.len() < page.total {
        links.push(link("next", search.offset + page.events.len()));
    }
    let server = page.base.trim_end_matches("/AuditEvent");
    let mut entries: Vec<Value> = page
        .events
        .iter()
        .map(|event| {
            json!({
                "fullUrl": format!("{server}/AuditEvent/{}", event["id"].as_str().unwrap_or("")),
                "resource": event,
                "search": {"mode": "match"},
            })
        })
        .collect();
    let issues: Vec<Value> = page
        .coverage
        .iter()
        .map(
            |line| json!({"severity": "information", "code": "informational", "diagnostics": line}),
        )
        .collect();
    if !issues.is_empty() {
        entries.push(json!({
            "resource": {"resourceType": "OperationOutcome", "issue": issues},
            "search": {"mode": "outcome"},
        }));
    }
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": page.total,
        "link": links,
        "entry": entries,
    })
}

/// An `OperationOutcome` with one issue (`severity` error), for an answer that is not a
/// Bundle.
pub fn operation_outcome(code: &str, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(text: &str) -> i64 {
        crate::columnar::rows::micros_of(text).unwrap()
    }

    #[test]
    fn date_prefixes_name_the_interval_of_their_precision() {
        let s = AuditSearch::parse("date=ge2026-11-01&date=le2026-11-02", 10, 100).unwrap();
        assert_eq!(s.filters.since_micros, Some(micros("2026-11-01T00:00:00Z")));
        assert_eq!(s.filters.until_micros, Some(micros("2026-11-03T00:00:00Z")));
        let s = AuditSearch::parse("date=gt2026-11-01T08:00:00Z", 10, 100).unwrap();
        assert_eq!(s.filters.since_micros, Some(micros("2026-11-01T08:00:01Z")));
        let s = AuditSearch::parse("date=lt2026-11-01", 10, 100).unwrap();
        assert_eq!(s.filters.until_micros, Some(micros("2026-11-01T00:00:00Z")));
        let s = AuditSearch::parse("date=2026-11-01", 10, 100).unwrap();
        assert_eq!(
            (s.filters.since_micros, s.filters.until_micros),
            (
                Some(micros("2026-11-01T00:00:00Z")),
                Some(micros("2026-11-02T00:00:00Z"))
            )
        );
        // Two lower bounds: the later holds.
        let s = AuditSearch::parse("date=ge2026-11-01&date=ge2026-11-05", 10, 100).unwrap();
        assert_eq!(s.filters.since_micros, Some(micros("2026-11-05T00:00:00Z")));
        for bad in ["date=ap2026-11-01", "date=yesterday", "date=ge2026-13-01"] {
            assert!(AuditSearch::parse(bad, 10, 100).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_parameters_and_bad_values_are_errors_not_ignored() {
        assert_eq!(
            AuditSearch::parse("patinet=1", 10, 100).unwrap_err(),
            SearchError::UnknownParameter("patinet".into())
        );
        for bad in [
            "outcome=3",
            "action=X",
            "_count=0",
            "_offset=-1",
            "patient=Group/1",
        ] {
            assert!(AuditSearch::parse(bad, 10, 100).is_err(), "{bad}");
        }
        // A token in the query is not a parameter (and never echoed in the links).
        let s = AuditSearch::parse("access_token=abc&patient=1", 10, 100).unwrap();
        assert!(!s.page_query(0).contains("abc"));
    }

    #[test]
    fn patients_count_and_links() {
        let s = AuditSearch::parse(
            "patient=Patient/7,http://ehr/fhir/Patient/8&_count=5000&_offset=4",
            10,
            100,
        )
        .unwrap();
        assert_eq!(s.filters.patients, ["7", "8"]);
        assert_eq!(s.patients(), ["7", "8"]);
        assert_eq!(
            (s.count, s.offset),
            (100, 4),
            "_count is cut to the maximum"
        );
        let events: Vec<Value> = (0..3).map(|i| json!({"id": format!("n-{i}-0")})).collect();
        let b = bundle(
            &s,
            &Page {
                events: &events,
                total: 200,
                base: "https://audit:9465/AuditEvent".into(),
                coverage: vec!["node n: records 1..=9 scanned".into()],
            },
        );
        let links: Vec<(&str, &str)> = b["link"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["relation"].as_str().unwrap(), l["url"].as_str().unwrap()))
            .collect();
        let q = "patient=Patient%2F7%2Chttp%3A%2F%2Fehr%2Ffhir%2FPatient%2F8&_count=100";
        assert_eq!(
            links,
            [
                (
                    "self",
                    format!("https://audit:9465/AuditEvent?{q}&_offset=4").as_str()
                ),
                (
                    "first",
                    format!("https://audit:9465/AuditEvent?{q}&_offset=0").as_str()
                ),
                (
                    "previous",
                    format!("https://audit:9465/AuditEvent?{q}&_offset=0").as_str()
                ),
                (
                    "next",
                    format!("https://audit:9465/AuditEvent?{q}&_offset=7").as_str()
                ),
            ]
        );
        assert_eq!(b["total"], 200);
        assert_eq!(
            b["entry"][0]["fullUrl"],
            "https://audit:9465/AuditEvent/n-0-0"
        );
        assert_eq!(b["entry"][3]["search"]["mode"], "outcome");
    }

    #[test]
    fn every_parameter_is_matched_on_the_event() {
        let event = json!({
            "resourceType": "AuditEvent",
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
            "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
            "action": "R",
            "recorded": "2026-11-01T08:00:00.000001Z",
            "outcome": "0",
            "agent": [
                {"who": {"identifier": {"value": "ehr-web"}}, "network": {"address": "10.0.0.5"}},
                {"who": {"identifier": {"system": "https://idp", "value": "alice"}}},
            ],
            "entity": [
                {"what": {"identifier": {"value": "req-1"}}},
                {"what": {"reference": "Patient/7"}, "role": {"code": "1"}},
            ],
        });
        let holds = |q: &str| AuditSearch::parse(q, 10, 100).unwrap().matches(&event);
        for yes in [
            "patient=7",
            "patient=8,7",
            "agent=alice",
            "agent=https://idp|alice",
            "agent=ehr-web",
            "entity=req-1",
            "entity=Patient/7",
            "type=rest",
            "type=http://terminology.hl7.org/CodeSystem/audit-event-type|rest",
            "subtype=read",
            "outcome=0",
            "address=10.0.0.5",
            "action=R,E",
            "date=2026-11-01",
            "patient=7&agent=alice",
        ] {
            assert!(holds(yes), "{yes}");
        }
        for no in [
            "patient=8",
            "agent=bob",
            "agent=https://other|alice",
            "entity=req-2",
            "type=other|rest",
            "subtype=search",
            "outcome=4",
            "address=10.0.0.6",
            "action=C",
            "date=lt2026-11-01",
            "patient=7&agent=bob",
        ] {
            assert!(!holds(no), "{no}");
        }
        assert_eq!(event_patients(&event), ["7"]);
    }
}
