//! `rules explain` and `rules test`: the proxy's attribution steps for one request (and its
//! response), without a network, so a rule file can be checked before it is deployed.

use serde::Serialize;

use super::body::{inspect_request_body, inspect_response_body};
use super::extract::Gap;
use super::settle::{external_refs, settle, Inspection};
use crate::record::{Attribution, InteractionKind, PatientRef};
use crate::rules::RuleSet;

/// A record's patient list and attribution at one point of a request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settled {
    /// Every patient, with where it was found.
    pub patients: Vec<PatientRef>,
    /// How complete the list is.
    pub attribution: Attribution,
    /// Why it is `partial`, when known.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gaps: Vec<String>,
    /// Patient references on other servers' bases (not local patients).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub external_refs: Vec<String>,
}

/// What the gateway would record for a request (and its response): `rules explain`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// The rule that matched (`unmatched` or `rejected` otherwise).
    pub rule: String,
    /// The rule's description, from its file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Why the path was refused (400), when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
    /// C, R, U, D or E.
    pub action: crate::record::Action,
    /// The FHIR interaction.
    pub interaction: InteractionKind,
    /// The resource type the request addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    /// The resource id the request addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    /// The request body is read for patients (`inspect_body`).
    pub reads_body: bool,
    /// The response is read for patients before it is released (`inspect_response`).
    pub reads_response: bool,
    /// Before the request is forwarded (the intent record of a change).
    pub request: Settled,
    /// After the response (the outcome record), when a response was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Settled>,
}

/// A response for [`explain`].
pub struct ExplainResponse<'a> {
    /// The HTTP status.
    pub status: u16,
    /// Its headers (content type, location).
    pub headers: http::HeaderMap,
    /// Its body.
    pub body: &'a [u8],
}

/// What the gateway would record for `method target` with `headers` and `body`, and, given
/// `response`, for its outcome: the proxy's steps, without a network.
pub fn explain(
    rules: &RuleSet,
    limit: usize,
    method: &str,
    target: &str,
    headers: &http::HeaderMap,
    body: Option<&[u8]>,
    response: Option<ExplainResponse<'_>>,
) -> Explanation {
    let mut c = match rules.classify(method, target, headers) {
        Ok(c) => c,
        Err(rejection) => {
            let nothing = Settled {
                patients: Vec::new(),
                attribution: Attribution::Partial,
                gaps: Vec::new(),
                external_refs: Vec::new(),
            };
            return Explanation {
                rule: crate::rules::REJECTED_RULE.into(),
                description: None,
                rejected: Some(rejection.reason().into()),
                action: crate::record::Action::E,
                interaction: InteractionKind::Unclassified,
                resource_type: None,
                resource_id: None,
                reads_body: false,
                reads_response: false,
                request: nothing.clone(),
                outcome: response.map(|_| nothing),
            };
        }
    };
    let body = body.unwrap_or_default();
    let mut inspection = Inspection::default();
    if body.len() > limit && c.buffered() {
        inspection.gaps.insert(Gap::TooLarge);
    } else {
        inspect_request_body(&mut c, rules, headers, body, limit, &mut inspection);
    }
    let settled = |(patients, attribution, gaps), inspection: &Inspection| Settled {
        patients,
        attribution,
        gaps,
        external_refs: external_refs(inspection).0,
    };
    let request = settled(settle(&c, &inspection, None), &inspection);
    let outcome = response.map(|r| {
        if c.inspect_response {
            if r.body.len() > limit {
                inspection.gaps.insert(Gap::TooLarge);
            } else {
                let head = method == "HEAD";
                let local = rules.local_bases();
                inspect_response_body(&r.headers, r.body, head, limit, local, &mut inspection);
            }
        }
        settled(settle(&c, &inspection, Some(r.status)), &inspection)
    });
    Explanation {
        description: rules.description(&c.rule).map(str::to_string),
        rule: c.rule,
        rejected: None,
        action: c.action,
        interaction: c.interaction,
        resource_type: c.resource_type,
        resource_id: c.resource_id,
        reads_body: c.inspect_body,
        reads_response: c.inspect_response,
        request,
        outcome,
    }
}

/// A rule test's failure line when `got` holds other members than `want` (order ignored).
fn expect_same_members<'a>(
    what: &str,
    want: &[String],
    got: impl Iterator<Item = &'a str>,
    failures: &mut Vec<String>,
) {
    let mut want: Vec<&str> = want.iter().map(String::as_str).collect();
    let mut got: Vec<&str> = got.collect();
    want.sort_unstable();
    got.sort_unstable();
    if want != got {
        failures.push(format!("{what}: expected {want:?}, got {got:?}"));
    }
}

/// Run one `[[test]]` case: `Ok` with the explanation, or every expectation that failed.
pub fn run_rule_test(
    rules: &RuleSet,
    limit: usize,
    t: &crate::rules::RuleTest,
) -> Result<Explanation, Vec<String>> {
    let header = |k: &str, v: &str| {
        Ok::<_, String>((
            http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("bad header name {k:?}"))?,
            http::HeaderValue::from_str(v).map_err(|_| format!("bad value for header {k}"))?,
        ))
    };
    let mut headers = http::HeaderMap::new();
    for (k, v) in &t.headers {
        let (k, v) = header(k, v).map_err(|e| vec![e])?;
        headers.append(k, v);
    }
    if t.body.is_some() && !headers.contains_key(http::header::CONTENT_TYPE) {
        let ct = t.content_type.as_deref().unwrap_or("application/fhir+json");
        let (k, v) = header("content-type", ct).map_err(|e| vec![e])?;
        headers.insert(k, v);
    }
    let response = if t.response.is_some() || t.status.is_some() || t.location.is_some() {
        let mut rh = http::HeaderMap::new();
        let ct = t
            .response_content_type
            .as_deref()
            .unwrap_or("application/fhir+json");
        let (k, v) = header("content-type", ct).map_err(|e| vec![e])?;
        rh.insert(k, v);
        if let Some(l) = &t.location {
            let (k, v) = header("location", l).map_err(|e| vec![e])?;
            rh.insert(k, v);
        }
        Some(ExplainResponse {
            status: t.status.unwrap_or(200),
            headers: rh,
            body: t.response.as_deref().unwrap_or("").as_bytes(),
        })
    } else {
        None
    };
    let x = explain(
        rules,
        limit,
        &t.method,
        &t.url,
        &headers,
        t.body.as_deref().map(str::as_bytes),
        response,
    );
    let mut failures = Vec::new();
    let e = &t.expect;
    let settled = x.outcome.as_ref().unwrap_or(&x.request);
    if let Some(rule) = &e.rule {
        if *rule != x.rule {
            failures.push(format!("rule: expected {rule}, got {}", x.rule));
        }
    }
    if let Some(a) = e.action {
        if a != x.action {
            failures.push(format!(
                "action: expected {}, got {}",
                a.as_str(),
                x.action.as_str()
            ));
        }
    }
    if let Some(i) = e.interaction {
        if i != x.interaction {
            failures.push(format!(
                "interaction: expected {i:?}, got {:?}",
                x.interaction
            ));
        }
    }
    if let Some(p) = &e.patients {
        let got = settled.patients.iter().map(|p| p.id.as_str());
        expect_same_members("patients", p, got, &mut failures);
    }
    if let Some(a) = e.attribution {
        if a != settled.attribution {
            failures.push(format!(
                "attribution: expected {a:?}, got {:?}",
                settled.attribution
            ));
        }
    }
    if let Some(g) = &e.gaps {
        let got = settled.gaps.iter().map(String::as_str);
        expect_same_members("gaps", g, got, &mut failures);
    }
    if failures.is_empty() {
        Ok(x)
    } else {
        Err(failures)
    }
}
