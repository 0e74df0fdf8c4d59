//! Reading a request or response body for patients, as the buffered path and `rules explain`
//! both do: the media type and content encoding decide whether and how the extractor reads it
//! (gzip and deflate are decoded within the same bound; anything else is a named gap), and a
//! transaction or batch Bundle's entries are classified by the route rules.

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

/// Whether a media type is JSON (`application/json`, `application/fhir+json`, any `+json`).
pub fn is_json(media_type: &str) -> bool {
    media_type == "application/json" || media_type.ends_with("+json")
}

/// The body as the extractor must read it: gzip and deflate are decoded (bounded by `limit`).
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
        .trim()
        .to_ascii_lowercase();
    let mut out = Vec::new();
    let read = match enc.as_str() {
        "" | "identity" => return Ok(Cow::Borrowed(body)),
        "gzip" | "x-gzip" => flate2::read::MultiGzDecoder::new(body)
            .take(limit as u64 + 1)
            .read_to_end(&mut out),
        // HTTP's "deflate" is the zlib format.
        "deflate" => flate2::read::ZlibDecoder::new(body)
            .take(limit as u64 + 1)
            .read_to_end(&mut out),
        _ => return Err(Gap::ContentEncoding),
    };
    match read {
        Ok(n) if n > limit => Err(Gap::TooLarge),
        Ok(_) => Ok(Cow::Owned(out)),
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
        // No Content-Type: FHIR servers read the body as JSON.
        Ok(bytes) if media.as_deref().is_none_or(is_json) => {
            let entries = EntryRules {
                rules,
                base_path: &c.base_path,
            };
            let creating = c.interaction == InteractionKind::Create;
            let started = std::time::Instant::now();
            let findings = crate::attribution::extract::request_patients(
                &bytes,
                creating,
                &entries,
                rules.local_bases(),
            );
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
        Ok(bytes) if media.as_deref().is_none_or(is_json) => {
            let started = std::time::Instant::now();
            inspection.response = Some(crate::attribution::extract::response_patients(
                &bytes, local,
            ));
            Some(started.elapsed())
        }
        Ok(_) => {
            inspection.gaps.insert(Gap::NotJson);
            None
        }
    };
    (media, took)
}
