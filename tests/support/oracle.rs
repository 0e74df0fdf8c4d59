//! The tests' own answer to "which patients does this FHIR JSON reference", written apart
//! from the gateway's extractor (`auditgate::attribution::extract`, a streaming serde visitor) so the two
//! check each other: this one parses into a `serde_json::Value` tree and walks it.
//!
//! Rules (the README's "What is attributed"): a Patient resource's `id` (not a contained
//! one), every `reference` string of the form `[...]/Patient/{id}[/_history/{v}]`, a
//! `urn:uuid:` reference to a Bundle entry holding a Patient with an id, and, in a Bundle, each
//! entry's `response.location` and `request.url` naming a Patient. An absolute reference
//! counts only on the server's own base (another server's patient is not a local one).

use std::collections::BTreeSet;

use serde_json::Value;

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// `Patient/{id}` in a reference, a location or an entry URL (relative, or absolute on the
/// base `local` (`http://127.0.0.1:PORT/fhir`), with or without `/_history/{v}`).
pub fn patient_of(reference: &str, local: &str) -> Option<String> {
    let path = reference.split('?').next()?;
    let parts: Vec<&str> = path.split('/').collect();
    let n = parts.len();
    let (ty, id) = if n >= 4 && parts[n - 2] == "_history" {
        (parts[n - 4], parts[n - 3])
    } else if n >= 2 {
        (parts[n - 2], parts[n - 1])
    } else {
        return None;
    };
    let prefix_ok = {
        let consumed = if n >= 4 && parts[n - 2] == "_history" {
            4
        } else {
            2
        };
        let rest = &parts[..n - consumed];
        let base = rest.join("/");
        let without_scheme = |u: &str| {
            u.split_once("://")
                .map(|(_, r)| r.trim_end_matches('/').to_ascii_lowercase())
        };
        rest.is_empty() || (base.contains("://") && without_scheme(&base) == without_scheme(local))
    };
    (ty == "Patient" && is_id(id) && prefix_ok).then(|| id.to_string())
}

/// Every local patient `doc` references; `local` is the server's base URL.
pub fn referenced_patients(doc: &Value, local: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut urn_patients = std::collections::HashMap::new();
    collect_urns(doc, &mut urn_patients);
    walk(doc, false, &urn_patients, local, &mut out);
    out
}

fn collect_urns(v: &Value, out: &mut std::collections::HashMap<String, String>) {
    match v {
        Value::Object(m) => {
            if let (Some(Value::String(full)), Some(Value::Object(r))) =
                (m.get("fullUrl"), m.get("resource"))
            {
                if r.get("resourceType") == Some(&Value::String("Patient".into())) {
                    if let Some(Value::String(id)) = r.get("id") {
                        out.insert(full.clone(), id.clone());
                    }
                }
            }
            m.values().for_each(|x| collect_urns(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_urns(x, out)),
        _ => {}
    }
}

fn walk(
    v: &Value,
    contained: bool,
    urns: &std::collections::HashMap<String, String>,
    local: &str,
    out: &mut BTreeSet<String>,
) {
    match v {
        Value::Object(m) => {
            if !contained && m.get("resourceType") == Some(&Value::String("Patient".into())) {
                if let Some(Value::String(id)) = m.get("id") {
                    if is_id(id) {
                        out.insert(id.clone());
                    }
                }
            }
            if let Some(Value::String(r)) = m.get("reference") {
                if let Some(p) = patient_of(r, local) {
                    out.insert(p);
                } else if let Some(p) = urns.get(r) {
                    out.insert(p.clone());
                }
            }
            for key in ["location", "url"] {
                // Bundle entry `response.location` / history `request.url`.
                if let Some(Value::String(s)) = m.get(key) {
                    if m.contains_key("status") || m.contains_key("method") {
                        if let Some(p) = patient_of(s, local) {
                            out.insert(p);
                        }
                    }
                }
            }
            for (k, x) in m {
                walk(x, contained || k == "contained", urns, local, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| walk(x, contained, urns, local, out)),
        _ => {}
    }
}
