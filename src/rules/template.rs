//! Route templates (`/{base}/{type:Type}/{id:Id}`): parsing, their captures, and matching a
//! decoded path's segments against them.

use super::path::is_path_char;
use crate::fhir::{is_fhir_id, is_resource_type};

/// Most captures in one template.
pub(super) const MAX_CAPTURES: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CapKind {
    /// `[A-Z][A-Za-z]+`
    Type,
    /// `[A-Za-z0-9.-]{1,64}`
    Id,
    /// `$` + `[A-Za-z][A-Za-z0-9_-]*`
    Op,
    /// Any one segment.
    Segment,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Lit(String),
    Cap {
        idx: usize,
        kind: CapKind,
    },
    /// One or more remaining segments; always last.
    Rest {
        idx: usize,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Template {
    pub(super) segs: Vec<Seg>,
    pub(super) names: Vec<String>,
}

impl Template {
    pub(super) fn capture(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }
}

pub(super) fn is_op_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphabetic()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

/// An operation segment: `$` + operation name.
pub(super) fn is_op_segment(s: &str) -> bool {
    s.strip_prefix('$').is_some_and(is_op_name)
}

pub(super) fn cap_accepts(kind: CapKind, seg: &str) -> bool {
    match kind {
        CapKind::Type => is_resource_type(seg),
        CapKind::Id => is_fhir_id(seg),
        CapKind::Op => is_op_segment(seg),
        CapKind::Segment => true,
    }
}

pub(super) fn match_template<'p>(
    t: &Template,
    path: &'p str,
    segs: &[(usize, usize)],
    caps: &mut [&'p str; MAX_CAPTURES],
) -> bool {
    let has_rest = matches!(t.segs.last(), Some(Seg::Rest { .. }));
    if has_rest {
        if segs.len() < t.segs.len() {
            return false;
        }
    } else if segs.len() != t.segs.len() {
        return false;
    }
    for (i, seg) in t.segs.iter().enumerate() {
        let (s, e) = segs[i];
        let text = &path[s..e];
        match seg {
            Seg::Lit(l) => {
                if text != l.as_str() {
                    return false;
                }
            }
            Seg::Cap { idx, kind } => {
                if !cap_accepts(*kind, text) {
                    return false;
                }
                caps[*idx] = text;
            }
            Seg::Rest { idx } => {
                let end = segs[segs.len() - 1].1;
                caps[*idx] = &path[s..end];
            }
        }
    }
    true
}

pub(super) fn parse_template(s: &str) -> Result<Template, String> {
    if !s.starts_with('/') {
        return Err("must start with '/'".into());
    }
    let mut t = Template {
        segs: Vec::new(),
        names: Vec::new(),
    };
    if s == "/" {
        return Ok(t);
    }
    let parts: Vec<&str> = s[1..].split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            return Err("has an empty segment (or ends with '/')".into());
        }
        if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            let (rest, inner) = match inner.strip_prefix('*') {
                Some(n) => (true, n),
                None => (false, inner),
            };
            let (name, kind) = match inner.split_once(':') {
                Some((n, k)) => {
                    let kind = match k {
                        "type" => CapKind::Type,
                        "id" => CapKind::Id,
                        "op" => CapKind::Op,
                        "segment" => CapKind::Segment,
                        _ => {
                            return Err(format!(
                                "capture kind `{k}` is not type, id, op or segment"
                            ))
                        }
                    };
                    (n, kind)
                }
                None => (
                    inner,
                    match inner {
                        "type" => CapKind::Type,
                        "id" | "vid" | "patient" => CapKind::Id,
                        "op" => CapKind::Op,
                        _ => CapKind::Segment,
                    },
                ),
            };
            let name_ok = name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !name_ok {
                return Err(format!("capture name `{name}` must match [a-z_][a-z0-9_]*"));
            }
            if name == "patient" && kind != CapKind::Id {
                return Err("the {patient} capture is always a FHIR id".into());
            }
            if t.names.iter().any(|n| n == name) {
                return Err(format!("capture `{name}` appears twice"));
            }
            if t.names.len() == MAX_CAPTURES {
                return Err(format!("more than {MAX_CAPTURES} captures"));
            }
            let idx = t.names.len();
            t.names.push(name.to_string());
            if rest {
                if i + 1 != parts.len() {
                    return Err("a {*rest} capture must be the last segment".into());
                }
                if name == "patient" {
                    return Err("{*patient} is not allowed".into());
                }
                t.segs.push(Seg::Rest { idx });
            } else {
                t.segs.push(Seg::Cap { idx, kind });
            }
        } else {
            if *part == "." || *part == ".." || !part.bytes().all(|b| is_path_char(b) && b != b'%')
            {
                return Err(format!(
                    "literal segment {part:?} must be a plain path segment (no '{{', '%', ';', dots)"
                ));
            }
            t.segs.push(Seg::Lit(part.to_string()));
        }
    }
    Ok(t)
}
