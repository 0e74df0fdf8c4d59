//! The trail as FHIR R4 `AuditEvent`s, following IHE Basic Audit Log Patterns (BALP): the
//! RESTful Create, Read, Update, Delete and Query patterns and their Patient variants.
//!
//! One access ([`super::requests::Access`]) gives one event per patient it named (BALP asks
//! one event per patient for a query), or one event without a patient entity. Each carries:
//! `type` rest and `subtype` the FHIR interaction; `action` C, R, U, D, or E for searches and
//! operations (the FHIR code list puts queries under Execute; the record keeps its own
//! action); `recorded` the record's time; `outcome` from the recorded status; three agents:
//! the client (DICOM Source Role ID, its client ID, the client IP), the server (Destination
//! Role ID, the node, and the EHR's address when known), and the user (`IRCP`, `requestor`,
//! identified by issuer and subject, the token's `jti` as `policy`, the purposes of use);
//! `source` the gateway node; entities for the patient (role Patient), the resource
//! (Domain Resource), the query (base64 of the query string, role Query) and the request ID
//! (BALP `XrequestId`). The id is stable: `node-seq-k`. A record of the gateway's own
//! configuration (a start, a reload, a key change) is one DICOM Application Start or Security
//! Configuration event.

use base64::Engine as _;
use serde_json::{json, Value};

use super::requests::Access;
use crate::record::{Action, InteractionKind, Who};

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const BALP: &str = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.";
const BALP_ENTITY_TYPE: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType";

/// Where the events were recorded from, beyond what each record says.
#[derive(Debug, Clone, Default)]
pub struct ExportContext {
    /// The EHR's network address (host name or IP), for the server agent.
    pub server_address: Option<String>,
}

/// The BALP pattern of an access: (profile name without the prefix, action code, subtype).
fn pattern(interaction: InteractionKind, action: Action) -> (Option<&'static str>, &'static str) {
    use InteractionKind::*;
    match interaction {
        Create => (Some("Create"), "C"),
        Read | Vread => (Some("Read"), "R"),
        Update | Patch => (Some("Update"), "U"),
        Delete => (Some("Delete"), "D"),
        Search | History => (Some("Query"), "E"),
        _ => (None, action_code(action)),
    }
}

fn action_code(action: Action) -> &'static str {
    match action {
        Action::C => "C",
        Action::R => "R",
        Action::U => "U",
        Action::D => "D",
        Action::E => "E",
    }
}

/// The FHIR `restful-interaction` code of an interaction (`unclassified` has none).
fn subtype(interaction: InteractionKind) -> Option<&'static str> {
    use InteractionKind::*;
    Some(match interaction {
        Read => "read",
        Vread => "vread",
        Update => "update",
        Patch => "patch",
        Delete => "delete",
        History => "history",
        Create => "create",
        Search => "search",
        Batch => "batch",
        Transaction => "transaction",
        Operation => "operation",
        Capabilities => "capabilities",
        Unclassified => return None,
    })
}

/// A FHIR id from `text`: letters, digits, `-` and `.`, at most 64.
fn fhir_id(text: &str) -> String {
    let mut id: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    id.truncate(64);
    id
}

/// The event of a record of the gateway's own configuration: DICOM Application Start
/// (type 110100 Application Activity) for a start, else Security Configuration (type 110113
/// Security Alert, subtype 110129); outcome 0, or 4 for a rejected reload; the configuration
/// file's hash as the entity, with what changed as its details.
fn config_event(access: &Access, change: &crate::record::ConfigChange) -> Value {
    let node = access.node();
    let first_seq = access.seqs.first().copied().unwrap_or(0);
    let (kind, sub) = if change.cause == "start" {
        (
            ("110100", "Application Activity"),
            ("110120", "Application Start"),
        )
    } else {
        (
            ("110113", "Security Alert"),
            ("110129", "Security Configuration"),
        )
    };
    let mut details = vec![json!({"type": "cause", "valueString": change.cause})];
    for (name, values) in [
        ("changed", &change.changed),
        ("not_applied", &change.not_applied),
        ("rules", &change.rules),
        ("keys_added", &change.keys_added),
        ("keys_removed", &change.keys_removed),
    ] {
        if !values.is_empty() {
            details.push(json!({"type": name, "valueString": values.join("; ")}));
        }
    }
    if let Some(error) = &change.error {
        details.push(json!({"type": "error", "valueString": error}));
    }
    let mut entity = json!({
        "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
        "description": "the gateway's configuration",
        "detail": details,
    });
    if let Some(hash) = &change.config_sha256 {
        entity["what"] =
            json!({"identifier": {"system": "urn:auditgate:config-sha256", "value": hash}});
    }
    json!({
        "resourceType": "AuditEvent",
        "id": fhir_id(&format!("{node}-{first_seq}-0")),
        "type": {"system": DCM, "code": kind.0, "display": kind.1},
        "subtype": [{"system": DCM, "code": sub.0, "display": sub.1}],
        "action": "E",
        "recorded": access.ts(),
        "outcome": if change.applied { "0" } else { "4" },
        "outcomeDesc": if change.applied { format!("{} applied", change.cause) } else { "reload rejected: the previous configuration keeps serving".to_string() },
        "agent": [{
            "type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]},
            "who": {"display": format!("auditgate node {node} ({})", change.software)},
            "requestor": false,
        }],
        "source": {
            "site": node,
            "observer": {"display": format!("auditgate node {node}")},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}],
        },
        "entity": [entity],
    })
}

/// The events of one access.
pub fn events(access: &Access, context: &ExportContext) -> Vec<Value> {
    if let Some(change) = &access.record.event.config_change {
        return vec![config_event(access, change)];
    }
    let e = &access.record.event;
    let (profile, action) = pattern(e.interaction, e.action);
    let status = e.outcome.as_ref().filter(|_| access.has_outcome);
    let outcome = status.map_or("0", |o| match o.code {
        0 => "0",
        4 => "4",
        8 => "8",
        _ => "12",
    });
    let outcome_desc = match status {
        Some(o) => format!("HTTP {}", o.status),
        None => "no outcome recorded (the request's intent only)".into(),
    };
    let node = access.node();
    let mut user_agent = json!({
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient"}]},
        "requestor": true,
    });
    let mut purposes = Vec::new();
    match &e.who {
        Who::Authenticated(actor) => {
            let mut who = json!({"identifier": {"system": actor.issuer, "value": actor.user}});
            if let Some(name) = &actor.name {
                who["display"] = json!(name);
            }
            user_agent["who"] = who;
            if let Some(jti) = &actor.jti {
                user_agent["policy"] = json!([jti]);
            }
            purposes = actor
                .purpose_of_use
                .iter()
                .map(|p| json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": p}]}))
                .collect();
            if !purposes.is_empty() {
                user_agent["purposeOfUse"] = json!(purposes);
            }
        }
        Who::Unauthenticated { reason } => {
            user_agent["who"] = json!({"display": format!("unauthenticated ({reason})")});
        }
        Who::Gateway => {
            user_agent["who"] = json!({"display": format!("auditgate node {node}")});
        }
    }
    let client_id = access.client();
    let mut client_agent = json!({
        "type": {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]},
        "who": {"display": if client_id.is_empty() { "unknown client application".to_string() } else { client_id.clone() }},
        "requestor": false,
        "network": {"address": access.client_ip(), "type": "2"},
    });
    if !client_id.is_empty() {
        client_agent["who"]["identifier"] = json!({"value": client_id});
    }
    let mut server_agent = json!({
        "type": {"coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]},
        "who": {"display": format!("FHIR server behind auditgate node {node}")},
        "requestor": false,
    });
    if let Some(address) = &context.server_address {
        server_agent["network"] = json!({"address": address, "type": "1"});
    }
    let mut base_entities = vec![json!({
        "what": {"identifier": {"value": e.request_id}},
        "type": {"system": BALP_ENTITY_TYPE, "code": "XrequestId", "display": "X-Request-Id"},
    })];
    match (&e.resource_type, &e.resource_id) {
        (Some(t), Some(id)) if t != "Patient" => base_entities.push(json!({
            "what": {"reference": format!("{t}/{id}")},
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
        })),
        _ => {}
    }
    if profile == Some("Query") {
        let query = e.query.clone().unwrap_or_default();
        let mut entity = json!({
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
            "query": base64::engine::general_purpose::STANDARD.encode(
                if query.is_empty() { e.path.clone() } else { format!("{}?{query}", e.path) }
            ),
        });
        if let Some(t) = &e.resource_type {
            entity["description"] = json!(format!("search of {t}"));
        }
        base_entities.push(entity);
    }
    let patients: Vec<Option<&String>> = if access.patients.is_empty() {
        vec![None]
    } else {
        access.patients.iter().map(Some).collect()
    };
    let first_seq = access.seqs.first().copied().unwrap_or(0);
    patients
        .into_iter()
        .enumerate()
        .map(|(k, patient)| {
            let mut entities = base_entities.clone();
            if let Some(p) = patient {
                entities.push(json!({
                    "what": {"reference": format!("Patient/{p}")},
                    "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                    "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
                }));
            }
            let mut event = json!({
                "resourceType": "AuditEvent",
                "id": fhir_id(&format!("{node}-{first_seq}-{k}")),
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "Restful Operation"},
                "action": action,
                "recorded": access.ts(),
                "outcome": outcome,
                "outcomeDesc": outcome_desc,
                "agent": [client_agent, server_agent, user_agent],
                "source": {
                    "site": node,
                    "observer": {"display": format!("auditgate node {node}")},
                    "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}],
                },
                "entity": entities,
            });
            if let Some(code) = subtype(e.interaction) {
                event["subtype"] = json!([{"system": "http://hl7.org/fhir/restful-interaction", "code": code, "display": code}]);
            }
            if !purposes.is_empty() {
                event["purposeOfEvent"] = json!(purposes);
            }
            if let Some(name) = profile {
                let name = if patient.is_some() { format!("Patient{name}") } else { name.to_string() };
                event["meta"] = json!({"profile": [format!("{BALP}{name}")]});
            }
            event
        })
        .collect()
}
