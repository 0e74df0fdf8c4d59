//! FHIR syntax shared by the route rules and the body extractor: the id grammar, resource
//! type names, and the patient a reference names.

/// Longest FHIR id (R4: `[A-Za-z0-9\-\.]{1,64}`).
pub const MAX_ID_LEN: usize = 64;

/// The patient id a reference search value names, if any: a bare id (when allowed),
/// `Patient/{id}`, or `http(s)://host/.../Patient/{id}`, optionally `/_history/{vid}`.
pub fn patient_in_reference(item: &str, bare_is_patient: bool) -> Option<&str> {
    if is_fhir_id(item) {
        return bare_is_patient.then_some(item);
    }
    let mut r = item;
    if let Some(i) = r.rfind("/_history/") {
        if is_fhir_id(&r[i + "/_history/".len()..]) {
            r = &r[..i];
        }
    }
    let (head, id) = r.rsplit_once('/')?;
    if !is_fhir_id(id) {
        return None;
    }
    let prefix = head.strip_suffix("Patient")?;
    if prefix.is_empty() {
        return Some(id);
    }
    let after_scheme = prefix
        .strip_prefix("https://")
        .or_else(|| prefix.strip_prefix("http://"))?;
    let host_ok = after_scheme.ends_with('/')
        && !after_scheme.starts_with('/')
        && after_scheme
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'\\');
    host_ok.then_some(id)
}

/// FHIR R4 id: `[A-Za-z0-9\-\.]{1,64}`.
pub fn is_fhir_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// FHIR resource type syntax: `[A-Z][A-Za-z]+`.
pub fn is_resource_type(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2 && b[0].is_ascii_uppercase() && b[1..].iter().all(u8::is_ascii_alphabetic)
}
