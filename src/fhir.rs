//! FHIR syntax shared by the route rules and the body extractor: the id grammar, resource
//! type names, and the patient a reference names.

/// Longest FHIR id (R4: `[A-Za-z0-9\-\.]{1,64}`).
pub const MAX_ID_LEN: usize = 64;

/// A reference (or search value) that names a Patient: its id, and for an absolute URL the
/// base it is relative to (`https://host/fhir`, without the trailing `/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatientReference<'a> {
    /// The Patient's id.
    pub id: &'a str,
    /// The server base of an absolute reference; `None` for a relative one (`Patient/1`, a bare
    /// id), which is always this server's.
    pub base: Option<&'a str>,
}

/// The Patient a reference search value names, if any: a bare id (when allowed),
/// `Patient/{id}`, or `http(s)://host/.../Patient/{id}`, optionally `/_history/{vid}`. Whether
/// an absolute one is a patient *here* is [`LocalBases::local_patient`]'s question.
pub fn patient_reference(item: &str, bare_is_patient: bool) -> Option<PatientReference<'_>> {
    if is_fhir_id(item) {
        return bare_is_patient.then_some(PatientReference {
            id: item,
            base: None,
        });
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
        return Some(PatientReference { id, base: None });
    }
    let after_scheme = prefix
        .strip_prefix("https://")
        .or_else(|| prefix.strip_prefix("http://"))?;
    let host_ok = after_scheme.ends_with('/')
        && !after_scheme.starts_with('/')
        && after_scheme
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'\\');
    host_ok.then(|| PatientReference {
        id,
        base: Some(&prefix[..prefix.len() - 1]),
    })
}

/// The FHIR bases that are this server's: a reference on any other base names a patient of
/// another server (recorded apart, as an external reference), never a local one.
///
/// An absolute base is compared without its scheme (`http` and `https` of one host and port
/// are one server), with the host in lower case, a default port (80, 443) dropped and no
/// trailing `/`. The bases are the EHR's address (`upstream.url`) under each rule file's base
/// paths, and `rules.public_base_urls` (the address clients and the EHR itself write in
/// absolute references).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalBases {
    /// Normalised bases: `host[:port]/path` (no scheme, no trailing `/`).
    bases: Vec<String>,
}

impl LocalBases {
    /// `authorities` (`host:port`) under each of `base_paths` (`/fhir`, `/` for the root),
    /// and the absolute `urls`. An entry that is not an http(s) URL is ignored (the
    /// configuration validates them first).
    pub fn new(authorities: &[&str], base_paths: &[String], urls: &[String]) -> LocalBases {
        let mut bases = Vec::new();
        for authority in authorities {
            for path in base_paths {
                let url = format!("http://{authority}{}", path.trim_end_matches('/'));
                if let Some(b) = normalise_base(&url) {
                    bases.push(b);
                }
            }
        }
        bases.extend(urls.iter().filter_map(|u| normalise_base(u)));
        bases.sort();
        bases.dedup();
        LocalBases { bases }
    }

    /// Whether `base` (`https://host/fhir`) is one of this server's bases.
    pub fn is_local(&self, base: &str) -> bool {
        normalise_base(base).is_some_and(|b| self.bases.contains(&b))
    }

    /// The local patient `r` names: its id when it is relative or on a local base.
    pub fn local_patient<'a>(&self, r: PatientReference<'a>) -> Option<&'a str> {
        match r.base {
            None => Some(r.id),
            Some(base) => self.is_local(base).then_some(r.id),
        }
    }
}

/// `host[:port]/path` of an http(s) URL: scheme dropped, host lower-cased, default port and
/// trailing `/` removed. `None` when it is not an http(s) URL with a host.
pub fn normalise_base(url: &str) -> Option<String> {
    let lower_scheme = url.get(..8).map(str::to_ascii_lowercase);
    let (rest, default_port) = if lower_scheme.as_deref() == Some("https://") {
        (&url[8..], ":443")
    } else if url.get(..7).map(str::to_ascii_lowercase).as_deref() == Some("http://") {
        (&url[7..], ":80")
    } else {
        return None;
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains(['@', '?', '#']) {
        return None;
    }
    let mut authority = authority.to_ascii_lowercase();
    if let Some(host) = authority.strip_suffix(default_port) {
        authority = host.to_string();
    }
    Some(format!("{authority}{}", path.trim_end_matches('/')))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_references_name_a_local_patient_only_on_a_local_base() {
        let local = LocalBases::new(
            &["ehr.internal:8000"],
            &["/fhir".to_string(), String::new()],
            &["https://EHR.Hospital.example:443/api/FHIR/R4/".to_string()],
        );
        fn local_id<'a>(local: &LocalBases, r: &'a str) -> Option<&'a str> {
            patient_reference(r, false).and_then(|p| local.local_patient(p))
        }
        let id = |r: &'static str| local_id(&local, r);
        assert_eq!(id("Patient/p1"), Some("p1"));
        assert_eq!(id("http://ehr.internal:8000/fhir/Patient/p1"), Some("p1"));
        assert_eq!(id("https://ehr.internal:8000/fhir/Patient/p1"), Some("p1"));
        assert_eq!(id("http://ehr.internal:8000/Patient/p1"), Some("p1"));
        assert_eq!(
            id("https://ehr.hospital.example/api/FHIR/R4/Patient/p1/_history/2"),
            Some("p1")
        );
        // Another server, another port, another path on the same host: not a local patient.
        assert_eq!(id("http://other.example.org/fhir/Patient/p1"), None);
        assert_eq!(id("http://ehr.internal:8001/fhir/Patient/p1"), None);
        assert_eq!(id("http://ehr.internal:8000/other/Patient/p1"), None);
        assert_eq!(id("http://ehr.internal:8000@evil/fhir/Patient/p1"), None);
        // It still is a Patient reference: the extractor keeps it as an external one.
        let foreign = patient_reference("http://other.example.org/fhir/Patient/p1", false);
        assert_eq!(
            foreign,
            Some(PatientReference {
                id: "p1",
                base: Some("http://other.example.org/fhir")
            })
        );
        assert_eq!(normalise_base("ftp://x/fhir"), None);
        assert_eq!(
            normalise_base("HTTP://Host:80/fhir/"),
            Some("host/fhir".into())
        );
    }
}
