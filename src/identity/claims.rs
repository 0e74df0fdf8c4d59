//! Claims to the journal's actor: the configured claim names (or JSON Pointers) read into
//! user, name, roles, client, purpose of use, `jti`, break glass and device.

use super::config::ClaimMapping;
use super::error::AuthFailure;
use crate::record::Actor;
use serde_json::Value;

/// The claim named `name`: a top-level member, or a JSON Pointer when `name` starts with `/`.
/// `None` when not mapped (empty name), absent, or `null`.
pub(super) fn lookup<'a>(claims: &'a Value, name: &str) -> Option<&'a Value> {
    if name.is_empty() {
        return None;
    }
    let value = if name.starts_with('/') {
        claims.pointer(name)
    } else {
        claims.get(name)
    };
    value.filter(|v| !v.is_null())
}

pub(super) fn invalid(name: &str) -> AuthFailure {
    AuthFailure::InvalidClaim {
        claim: name.to_string(),
    }
}

/// A string claim (an integer is accepted as its decimal text when `numbers` is set).
pub(super) fn opt_string(
    claims: &Value,
    name: &str,
    numbers: bool,
) -> Result<Option<String>, AuthFailure> {
    match lookup(claims, name) {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) if numbers && (n.is_u64() || n.is_i64()) => Ok(Some(n.to_string())),
        Some(_) => Err(invalid(name)),
    }
}

/// A list claim: an array of strings, or one string (split on whitespace when `split`).
pub(super) fn string_list(
    claims: &Value,
    name: &str,
    split: bool,
) -> Result<Vec<String>, AuthFailure> {
    match lookup(claims, name) {
        None => Ok(Vec::new()),
        Some(Value::String(s)) if split => Ok(s.split_whitespace().map(str::to_string).collect()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(|| invalid(name)))
            .collect(),
        Some(_) => Err(invalid(name)),
    }
}

pub(super) fn opt_bool(claims: &Value, name: &str) -> Result<bool, AuthFailure> {
    match lookup(claims, name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(_) => Err(invalid(name)),
    }
}

/// Build the actor from verified claims. `break_glass` here is the claim's only.
pub(super) fn map_claims(
    claims: &Value,
    iss: &str,
    m: &ClaimMapping,
) -> Result<Authenticated, AuthFailure> {
    let user = opt_string(claims, &m.user, true)?.ok_or_else(|| AuthFailure::MissingClaim {
        claim: m.user.clone(),
    })?;
    let mut client_id = None;
    for name in &m.client_id {
        if let Some(id) = opt_string(claims, name, false)? {
            client_id = Some(id);
            break;
        }
    }
    let actor = Actor {
        user,
        issuer: iss.to_string(),
        name: opt_string(claims, &m.name, false)?,
        roles: string_list(claims, &m.roles, true)?,
        client_id,
        purpose_of_use: string_list(claims, &m.purpose_of_use, false)?,
        jti: opt_string(claims, &m.jti, false)?,
        fhir_user: opt_string(claims, &m.fhir_user, false)?,
        smart_patient: opt_string(claims, &m.patient, false)?,
        break_glass: opt_bool(claims, &m.break_glass)?,
    };
    let device_id = opt_string(claims, &m.device_id, true)?;
    let scopes = string_list(claims, &m.scope, true)?.into();
    Ok(Authenticated {
        actor,
        device_id,
        scopes,
        expires_at: 0,
    })
}

/// A verified request: the actor for the journal, and the device id claim when one is mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// Who made the request.
    pub actor: Actor,
    /// The device id from the configured claim (the network vector records it).
    pub device_id: Option<String>,
    /// The token's scopes (not recorded: they decide who may read the audit trail). Shared, so
    /// the cache hands them to each request without copying them.
    pub scopes: std::sync::Arc<[String]>,
    /// The token's `exp` (seconds since the epoch): a console session ends with it.
    pub expires_at: u64,
}
