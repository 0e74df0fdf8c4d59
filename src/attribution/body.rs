//! Reading a request or response body for patients, as the buffered path and `rules explain`
//! both do: the media type and content encoding decide whether and how the extractor reads it
//! (FHIR JSON and FHIR XML, the current and the legacy media types; gzip, deflate, br and zstd
//! decoded within the same bound; anything else is a named gap), and a transaction or batch
//! Bundle's entries are classified by the route rules.

use std::borrow::Cow;
use std::io::Read;

use super::extract::{EntryClassifier, Findings, Gap};
use super::settle::Inspection;
use crate::fhir::LocalBases;
use crate::record::{Attribution, InteractionKind};
use crate::rules::{Classification, RuleSet};

/// The media type of a `Content-Type` value: lower case, without parameters, at most 100
/// characters of `[a-z0-9!#$&^_.+-/]` (anything else makes it `None`: it goes into the record).
pub fn media_type(value: Option<&http::HeaderValue>) -> Option<String> {
    let v = value?.to_str().ok()?;
    let mt = v.split(';').next()?.trim().to_ascii_lowercase();
    let ok = !mt.is_empty()
        && mt.len() <= 100
        && mt
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-/".contains(&b));
    ok.then_some(mt)
}

/// Whether a media type is JSON: `application/json`, `application/fhir+json`, any `+json`,
/// and the legacy `application/json+fhir` (DSTU2, still served by some servers) and
/// `text/json`.
pub fn is_json(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/json" | "application/json+fhir" | "text/json"
    ) || media_type.ends_with("+json")
}

/// Whether a media type is XML: `application/xml`, `text/xml`, `application/fhir+xml`, any
/// `+xml`, and the legacy `application/xml+fhir`.
pub fn is_xml(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/xml" | "text/xml" | "application/xml+fhir"
    ) || media_type.ends_with("+xml")
}

/// Whether a media type is newline-delimited JSON (FHIR Bulk Data files):
/// `application/fhir+ndjson`, `application/ndjson`, `application/x-ndjson`.
pub fn is_ndjson(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/fhir+ndjson" | "application/ndjson" | "application/x-ndjson"
    )
}

/// How a body is read for patients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// FHIR JSON.
    Json,
    /// FHIR XML.
    Xml,
    /// One FHIR JSON resource per line (a Bulk Data file).
    Ndjson,
}

/// How to read a body with media type `media` (`None`: no `Content-Type`), or `None` when it
/// is neither JSON nor XML (the gap `not_json`). A body without a media type, or labelled
/// JSON, whose first non-blank byte is `<` is read as XML: a lenient server that mislabels
/// its XML must not make its patients unreadable.
pub fn body_format(media: Option<&str>, decoded: &[u8]) -> Option<BodyFormat> {
    let looks_like_xml = decoded
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'<');
    match media {
        Some(m) if is_xml(m) => Some(BodyFormat::Xml),
        Some(m) if is_ndjson(m) => Some(BodyFormat::Ndjson),
        None => Some(if looks_like_xml {
            BodyFormat::Xml
        } else {
            BodyFormat::Json
        }),
        Some(m) if is_json(m) => Some(if looks_like_xml {
            BodyFormat::Xml
        } else {
            BodyFormat::Json
        }),
        Some(_) => None,
    }
}

/// Largest zstd window the decoder accepts: 8 MiB, what RFC 9659 asks of HTTP decoders
/// (a larger window could make one response cost far more memory than its size).
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// The body as the extractor must read it: gzip, deflate, br and zstd are decoded (bounded by
/// `limit`); any other coding is the gap `content_encoding`, a body that does not decode the
/// gap `invalid_json`.
pub fn decoded<'b>(
    body: &'b [u8],
    encoding: Option<&http::HeaderValue>,
    limit: usize,
) -> Result<Cow<'b, [u8]>, Gap> {
    let Some(encoding) = encoding else {
        return Ok(Cow::Borrowed(body));
    };
    let enc = encoding
        .to_str()
        .map_err(|_| Gap::ContentEncoding)?
        .to_ascii_lowercase();
    // Codings are listed in the order they were applied: undone last first.
    let codings: Vec<&str> = enc
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty() && *c != "identity")
        .collect();
    if codings.len() > MAX_STACKED_CODINGS {
        return Err(Gap::ContentEncoding);
    }
    let mut current = Cow::Borrowed(body);
    for coding in codings.iter().rev() {
        current = Cow::Owned(decode_one(&current, coding, limit)?);
    }
    Ok(current)
}

/// Most content codings stacked on one body that the gateway undoes.
const MAX_STACKED_CODINGS: usize = 3;

/// Undo one content coding, reading at most `limit` bytes of output.
fn decode_one(body: &[u8], coding: &str, limit: usize) -> Result<Vec<u8>, Gap> {
    let mut out = Vec::new();
    let bound = limit as u64 + 1;
    let read = match coding {
        "gzip" | "x-gzip" => flate2::read::MultiGzDecoder::new(body)
            .take(bound)
            .read_to_end(&mut out),
        // HTTP's "deflate" is the zlib format.
        "deflate" => flate2::read::ZlibDecoder::new(body)
            .take(bound)
            .read_to_end(&mut out),
        "br" => brotli::Decompressor::new(body, 4096)
            .take(bound)
            .read_to_end(&mut out),
        "zstd" => {
            let mut decoder =
                zstd::stream::read::Decoder::new(body).map_err(|_| Gap::InvalidJson)?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|_| Gap::InvalidJson)?;
            decoder.take(bound).read_to_end(&mut out)
        }
        _ => return Err(Gap::ContentEncoding),
    };
    match read {
        Ok(n) if n > limit => Err(Gap::TooLarge),
        Ok(_) => Ok(out),
        Err(_) => Err(Gap::InvalidJson),
    }
}

/// The path and query of an `http://` or `https://` URL (`/` when it has no path); `None`
/// for anything else.
pub fn target_of_absolute_url(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    Some(rest.find('/').map_or("/", |i| &rest[i..]))
}

/// Classifies the entries of a transaction or batch Bundle with the route rules, as if each
/// were its own request under the Bundle's base path.
pub struct EntryRules<'r> {
    /// The route rules.
    pub rules: &'r RuleSet,
    /// The base path the Bundle was posted to (`/fhir`).
    pub base_path: &'r str,
}

impl EntryClassifier for EntryRules<'_> {
    fn classify_entry(&self, method: &str, url: &str) -> (Vec<String>, bool) {
        // An absolute URL: its path (the entry addresses this server).
        let target = match target_of_absolute_url(url) {
            Some(t) => t.to_string(),
            None => format!("{}/{}", self.base_path, url.trim_start_matches('/')),
        };
        match self
            .rules
            .classify(method, &target, &http::HeaderMap::new())
        {
            Ok(c) if c.matched => (
                c.patients.into_iter().map(|p| p.id).collect(),
                c.attribution == Attribution::Complete,
            ),
            _ => (Vec::new(), false),
        }
    }
}

/// Read a whole request body (at most `limit` bytes) for patients, as the buffered path does:
/// an `application/x-www-form-urlencoded` body of a rule with `form_body` as search
/// parameters, a JSON body (or one without `Content-Type`) of a rule with `inspect_body`
/// through [`crate::attribution::extract::request_patients`]. Returns the time spent extracting.
pub fn inspect_request_body(
    c: &mut Classification,
    rules: &RuleSet,
    headers: &http::HeaderMap,
    body: &[u8],
    limit: usize,
    inspection: &mut Inspection,
) -> Option<std::time::Duration> {
    if body.is_empty() {
        return None;
    }
    let media = media_type(headers.get(http::header::CONTENT_TYPE));
    if c.needs_form_body && media.as_deref() == Some("application/x-www-form-urlencoded") {
        rules.attribute_form_body(c, body);
        return None;
    }
    if !c.inspect_body {
        return None;
    }
    match decoded(body, headers.get(http::header::CONTENT_ENCODING), limit) {
        Err(gap) => {
            inspection.gaps.insert(gap);
            None
        }
        // No Content-Type: FHIR servers read the body as JSON (or XML, when it is).
        Ok(bytes) if body_format(media.as_deref(), &bytes).is_some() => {
            let entries = EntryRules {
                rules,
                base_path: &c.base_path,
            };
            let creating = c.interaction == InteractionKind::Create;
            let started = std::time::Instant::now();
            let read = match body_format(media.as_deref(), &bytes) {
                Some(BodyFormat::Xml) => crate::attribution::extract::request_patients_xml,
                _ => crate::attribution::extract::request_patients,
            };
            let mut findings = read(&bytes, creating, &entries, rules.local_bases());
            if c.interaction == InteractionKind::Patch {
                // A patch may name the patient as a plain string (`"value": "Patient/p9"`).
                let strings = crate::attribution::extract::patch_string_references(
                    &bytes,
                    rules.local_bases(),
                );
                for p in &strings.patients {
                    findings.add(p);
                }
                for url in &strings.external_refs {
                    findings.add_external(url);
                }
            }
            // `POST [base]` is a batch or a transaction by its Bundle's `type`, which only the
            // body says: the route rule records a transaction until the body is read.
            if c.interaction == InteractionKind::Transaction
                && findings.bundle_type.as_deref() == Some("batch")
            {
                c.interaction = InteractionKind::Batch;
            }
            inspection.body = Some(findings);
            Some(started.elapsed())
        }
        Ok(_) => {
            inspection.gaps.insert(Gap::NotJson);
            None
        }
    }
}

/// Read a whole response body (at most `limit` bytes) for patients, as the buffered path
/// does for a rule with `inspect_response`; absolute references are local patients only on
/// `local` bases. Returns the response's media type (for the record) and the time spent
/// extracting.
pub fn inspect_response_body(
    headers: &http::HeaderMap,
    body: &[u8],
    head_request: bool,
    limit: usize,
    local: &LocalBases,
    inspection: &mut Inspection,
) -> (Option<String>, Option<std::time::Duration>) {
    let media = media_type(headers.get(http::header::CONTENT_TYPE));
    // A create answered without a body names the new resource in `Location` (on this server:
    // a Location elsewhere names no local patient, and the created patient stays a gap).
    inspection.location_patient = headers
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| crate::fhir::patient_reference(l, false))
        .and_then(|r| local.local_patient(r))
        .map(str::to_string);
    if body.is_empty() || head_request {
        inspection.response = Some(Findings::default());
        return (media, None);
    }
    let took = match decoded(body, headers.get(http::header::CONTENT_ENCODING), limit) {
        Err(gap) => {
            inspection.gaps.insert(gap);
            None
        }
        Ok(bytes) => match body_format(media.as_deref(), &bytes) {
            Some(format) => {
                let started = std::time::Instant::now();
                let read = match format {
                    BodyFormat::Xml => crate::attribution::extract::response_patients_xml,
                    BodyFormat::Ndjson => crate::attribution::extract::ndjson_patients,
                    BodyFormat::Json => crate::attribution::extract::response_patients,
                };
                let findings = read(&bytes, local);
                // A Bulk Data manifest is a JSON object without `resourceType`: a body the
                // extractor read as a resource is not one, and is not parsed a second time.
                let maybe_manifest = format == BodyFormat::Json && findings.document_type.is_none();
                inspection.response = Some(findings);
                if let Some(files) = maybe_manifest
                    .then(|| crate::attribution::extract::bulk_manifest_files(&bytes, local))
                    .flatten()
                {
                    if files.iter().any(|f| !f.through_gateway) {
                        inspection.gaps.insert(Gap::BulkFilesElsewhere);
                    }
                    inspection.bulk_files = files;
                }
                Some(started.elapsed())
            }
            None => {
                inspection.gaps.insert(Gap::NotJson);
                None
            }
        },
    };
    (media, took)
}
