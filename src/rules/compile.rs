//! Compiling rule files: base paths, templates, methods and patient sources checked and
//! turned into `Rule`s; a rule that another shadows is an error.

use super::config::RulesConfig;
use super::error::RulesError;
use super::file::{AttributionClaim, CompartmentDef, RuleDef, RuleFile};
use super::file::{REJECTED_RULE, UNMATCHED_RULE};
use super::path::{base_segments, validate_base_paths};
use super::ruleset::{
    CompiledFile, Methods, ParamInfo, PatientPair, Rule, RuleSet, TypeFrom, TypeParams,
};
use super::template::{cap_accepts, is_op_name, parse_template, CapKind, Seg};
use crate::fhir::{is_resource_type, LocalBases};
use crate::record::InteractionKind;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

impl RuleSet {
    pub(super) fn compile(
        cfg: &RulesConfig,
        sources: Vec<(PathBuf, String, Option<Vec<String>>)>,
    ) -> Result<RuleSet, RulesError> {
        let mut set = RuleSet {
            files: Vec::new(),
            compartment: HashMap::new(),
            operations: HashMap::new(),
            unmatched: cfg.unmatched,
            method_override: cfg.method_override,
            elements: cfg.elements,
            summary: cfg.summary,
            graphql: cfg.graphql,
            known_methods: Some(BTreeSet::new()),
            max_form_body_bytes: cfg.max_form_body_bytes,
            local_bases: LocalBases::new(&[], &[], &cfg.public_base_urls),
            public_base_urls: cfg.public_base_urls.clone(),
            tests: Vec::new(),
        };
        let mut names = HashSet::new();
        for (path, text, base_override) in sources {
            let file: RuleFile = toml::from_str(&text).map_err(|e| RulesError::Parse {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let invalid = |rule: Option<&str>, key: &str, reason: String| RulesError::Invalid {
                path: path.clone(),
                rule: rule.map(str::to_string),
                key: key.to_string(),
                reason,
            };
            let mut test_names = HashSet::new();
            for t in &file.test {
                if !test_names.insert(t.name.clone()) {
                    return Err(invalid(
                        None,
                        "test",
                        format!("two tests are named {:?}", t.name),
                    ));
                }
                set.tests.push((path.clone(), t.clone()));
            }
            let base_paths = base_override.unwrap_or(file.base_paths);
            validate_base_paths(&base_paths).map_err(|r| invalid(None, "base_paths", r))?;
            let mut bases: Vec<Vec<String>> = base_paths.iter().map(|b| base_segments(b)).collect();
            // Longest base first, so `/fhir/r4` is tried before `/fhir` and before `/`.
            bases.sort_by_key(|b| std::cmp::Reverse(b.len()));

            for (op, action) in file.operations {
                let key = format!("operations.{op}");
                if !is_op_name(&op) {
                    return Err(invalid(None, &key, "not an operation name".into()));
                }
                if set.operations.insert(op, action).is_some() {
                    return Err(invalid(None, &key, "defined in more than one file".into()));
                }
            }
            for (ty, def) in file.compartment {
                let key = format!("compartment.{ty}");
                let params = compile_compartment(&ty, &def).map_err(|r| invalid(None, &key, r))?;
                if set.compartment.insert(ty, params).is_some() {
                    return Err(invalid(None, &key, "defined in more than one file".into()));
                }
            }
            let mut rules: Vec<Rule> = Vec::with_capacity(file.rule.len());
            for (i, def) in file.rule.into_iter().enumerate() {
                let label = if def.name.is_empty() {
                    format!("#{}", i + 1)
                } else {
                    def.name.clone()
                };
                let rule = compile_rule(def).map_err(|(k, r)| invalid(Some(&label), k, r))?;
                if !names.insert(rule.name.clone()) {
                    return Err(invalid(Some(&label), "name", "used by another rule".into()));
                }
                if let Some(earlier) = rules.iter().find(|e| shadows(e, &rule)) {
                    return Err(invalid(
                        Some(&label),
                        "path",
                        format!(
                            "can never match: rule `{}` comes first and matches every request \
                             this one would (put the more specific rule first)",
                            earlier.name
                        ),
                    ));
                }
                match &rule.methods {
                    Methods::Any => set.known_methods = None,
                    Methods::List(list) => {
                        if let Some(known) = set.known_methods.as_mut() {
                            known.extend(list.iter().cloned());
                        }
                    }
                }
                rules.push(rule);
            }
            set.files.push(CompiledFile { bases, rules });
        }
        Ok(set)
    }
}

pub(super) type CompileError = (&'static str, String);

pub(super) fn compile_rule(def: RuleDef) -> Result<Rule, CompileError> {
    let name_ok = !def.name.is_empty()
        && def.name.len() <= 64
        && def.name.as_bytes()[0].is_ascii_alphanumeric()
        && def
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !name_ok {
        return Err((
            "name",
            "must match [A-Za-z0-9][A-Za-z0-9._-]* (at most 64)".into(),
        ));
    }
    if def.name == UNMATCHED_RULE || def.name == REJECTED_RULE {
        return Err(("name", format!("`{}` is reserved", def.name)));
    }
    let methods = if def.methods.iter().any(|m| m == "*") {
        if def.methods.len() != 1 {
            return Err(("methods", "\"*\" must be the only entry".into()));
        }
        Methods::Any
    } else {
        if def.methods.is_empty() {
            return Err(("methods", "at least one method is needed".into()));
        }
        let mut seen = HashSet::new();
        for m in &def.methods {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(("methods", format!("{m:?} is not an upper-case method name")));
            }
            if !seen.insert(m) {
                return Err(("methods", format!("{m} is listed twice")));
            }
        }
        Methods::List(def.methods.clone())
    };
    let template = parse_template(&def.path).map_err(|r| ("path", r))?;
    if def.interaction == InteractionKind::Unclassified {
        return Err((
            "interaction",
            "`unclassified` is reserved for unmatched requests".into(),
        ));
    }

    let type_cap = template.capture("type");
    let resource_type = match (&def.resource_type, type_cap) {
        (Some(_), Some(_)) => {
            return Err((
                "resource_type",
                "the template already has a {type} capture".into(),
            ))
        }
        (Some(t), None) => {
            if !is_resource_type(t) {
                return Err((
                    "resource_type",
                    format!("{t:?} is not a resource type name"),
                ));
            }
            TypeFrom::Literal(t.clone())
        }
        (None, Some(i)) => TypeFrom::Capture(i),
        (None, None) => TypeFrom::None,
    };
    let resource_id = match &def.resource_id {
        Some(n) => Some(template.capture(n).ok_or((
            "resource_id",
            format!("the template has no {{{n}}} capture"),
        ))?),
        None => template.capture("id"),
    };
    let patient_cap = template.capture("patient");
    let op_cap = template.capture("op");
    if let Some(i) = op_cap {
        if !template
            .segs
            .iter()
            .any(|s| matches!(s, Seg::Cap { idx, kind: CapKind::Op } if *idx == i))
        {
            return Err(("path", "the {op} capture must be of kind op".into()));
        }
    }
    let mut patient_pairs = Vec::new();
    for w in template.segs.windows(2) {
        match (&w[0], &w[1]) {
            (
                Seg::Lit(l),
                Seg::Cap {
                    idx,
                    kind: CapKind::Id,
                },
            ) if l == "Patient" => patient_pairs.push(PatientPair::Literal { id: *idx }),
            (
                Seg::Cap {
                    idx: ty,
                    kind: CapKind::Type,
                },
                Seg::Cap {
                    idx,
                    kind: CapKind::Id,
                },
            ) => patient_pairs.push(PatientPair::TypeCapture { ty: *ty, id: *idx }),
            _ => {}
        }
    }
    let patient_header = match &def.patient_header {
        Some(h) => Some(
            http::HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| ("patient_header", format!("{h:?} is not a header name")))?,
        ),
        None => None,
    };
    if let Some(q) = &def.patient_query {
        if q.is_empty() {
            return Err(("patient_query", "must not be empty".into()));
        }
    }
    if def.search && matches!(resource_type, TypeFrom::None) {
        return Err(("search", "needs a {type} capture or resource_type".into()));
    }
    if def.form_body && !def.search {
        return Err(("form_body", "needs search = true".into()));
    }
    let has_source = patient_cap.is_some()
        || def.patient_query.is_some()
        || def.patient_header.is_some()
        || def.search
        || def.inspect_body
        || def.inspect_response
        || !patient_pairs.is_empty();
    match def.attribution {
        AttributionClaim::None if has_source => {
            return Err((
                "attribution",
                "`none` (no patient data) but the rule names patients (a {patient} or \
                 Patient/{id} in the path, patient_query, patient_header, search, \
                 inspect_body or inspect_response)"
                    .into(),
            ));
        }
        AttributionClaim::Complete if !has_source => {
            return Err(("attribution", "`complete` needs a patient source".into()));
        }
        _ => {}
    }
    Ok(Rule {
        name: def.name,
        methods,
        template,
        action: def.action,
        interaction: def.interaction,
        claim: def.attribution,
        resource_type,
        resource_id,
        patient_cap,
        patient_pairs,
        op_cap,
        patient_query: def.patient_query,
        patient_header,
        search: def.search,
        form_body: def.form_body,
        inspect_body: def.inspect_body,
        inspect_response: def.inspect_response,
        oversize: def.oversize,
        description: def.description,
    })
}

pub(super) fn compile_compartment(ty: &str, def: &CompartmentDef) -> Result<TypeParams, String> {
    if !is_resource_type(ty) {
        return Err(format!("{ty:?} is not a resource type name"));
    }
    let param_ok = |p: &String| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let mut params: HashMap<String, ParamInfo> = HashMap::new();
    for p in &def.refs {
        if !param_ok(p) {
            return Err(format!("refs: {p:?} is not a search parameter name"));
        }
        if params.insert(p.clone(), ParamInfo::default()).is_some() {
            return Err(format!("refs: {p} is listed twice"));
        }
    }
    for (key, list) in [
        ("compartment", &def.compartment),
        ("bare", &def.bare),
        ("pin", &def.pin),
    ] {
        for p in list {
            let Some(info) = params.get_mut(p) else {
                return Err(format!("{key}: {p} is not in refs"));
            };
            match key {
                "bare" => info.bare = true,
                "pin" => info.pin = true,
                _ => {}
            }
        }
    }
    for e in &def.elements {
        let ok = e.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
            && e.bytes().all(|b| b.is_ascii_alphanumeric());
        if !ok {
            return Err(format!("elements: {e:?} is not an element name"));
        }
    }
    let compartment_pins =
        !def.compartment.is_empty() && def.compartment.iter().all(|p| params[p].pin);
    Ok(TypeParams {
        def: def.clone(),
        params,
        compartment_pins,
    })
}

/// Whether `a` (earlier) matches every request `b` (later) would: then `b` is unreachable.
pub(super) fn shadows(a: &Rule, b: &Rule) -> bool {
    if !a.methods.covers(&b.methods) {
        return false;
    }
    let (sa, sb) = (&a.template.segs, &b.template.segs);
    let a_rest = matches!(sa.last(), Some(Seg::Rest { .. }));
    let b_rest = matches!(sb.last(), Some(Seg::Rest { .. }));
    if a_rest {
        // a: n-1 fixed segments then one or more; b must have at least n segments.
        if sb.len() < sa.len() {
            return false;
        }
    } else if b_rest || sa.len() != sb.len() {
        return false;
    }
    for (i, x) in sa.iter().enumerate() {
        let y = &sb[i];
        let covered = match (x, y) {
            (Seg::Rest { .. }, _) => return true,
            (_, Seg::Rest { .. }) => false,
            (Seg::Lit(p), Seg::Lit(q)) => p == q,
            (Seg::Lit(_), Seg::Cap { .. }) => false,
            (Seg::Cap { kind, .. }, Seg::Lit(q)) => cap_accepts(*kind, q),
            (Seg::Cap { kind: k1, .. }, Seg::Cap { kind: k2, .. }) => {
                k1 == k2 || *k1 == CapKind::Segment
            }
        };
        if !covered {
            return false;
        }
    }
    true
}
