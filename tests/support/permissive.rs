//! [`PermissiveUpstream`]: an EHR that does what lenient servers do, for the evasion corpus.
//! The danger is what the EHR accepts, so it accepts everything a hostile client could try:
//!
//! * it honours method overrides (`X-HTTP-Method-Override`, `X-HTTP-Method`,
//!   `X-Method-Override`, a `_method` query parameter) and lower-case methods;
//! * it reads any target form: origin (`/fhir/...`), absolute (`http://host/fhir/...`) and
//!   scheme-form (`x:/fhir/...`);
//! * it serves `GET .../_search`, ignores `_elements` and `_summary` (whole resources always),
//!   and answers any path it does not know with every resource it holds;
//! * it answers `br` or `zstd` when the request offers them (in that order of preference), and
//!   `application/json+fhir` when asked for it (`Accept` or `_format`).
//!
//! Its data: Patients `pa`, `pb`, `pc` and one Observation of each (`oa`, `ob`, `oc`). Reads
//! answer the resource, deletes an OperationOutcome, creates and updates echo the body (201 /
//! 200). It logs every request it acts on (method as it read it, target as received), so a test
//! can tell whether a request reached it. One thread per connection, keep-alive, on 127.0.0.1,
//! for the life of the test process.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// The patients of the permissive EHR's data.
pub const PATIENTS: [&str; 3] = ["pa", "pb", "pc"];

/// One request the permissive EHR acted on.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The method it executed (after any override).
    pub method: String,
    /// The request target as received.
    pub target: String,
}

pub struct PermissiveUpstream {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl PermissiveUpstream {
    pub fn start() -> PermissiveUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(stream, s));
            }
        });
        PermissiveUpstream { port, seen }
    }

    /// Every request it acted on so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn patient(id: &str) -> String {
    format!(r#"{{"resourceType":"Patient","id":"{id}","name":[{{"family":"Permissive-{id}"}}]}}"#)
}

fn observation(id: &str, patient: &str) -> String {
    format!(
        r#"{{"resourceType":"Observation","id":"{id}","status":"final","code":{{"text":"weight"}},"subject":{{"reference":"Patient/{patient}"}},"valueQuantity":{{"value":70,"unit":"kg"}}}}"#
    )
}

fn everything() -> String {
    let mut entries: Vec<String> = PATIENTS.iter().map(|p| patient(p)).collect();
    entries.extend(
        PATIENTS
            .iter()
            .map(|p| observation(&format!("o{}", &p[1..]), p)),
    );
    let entries: Vec<String> = entries
        .into_iter()
        .map(|r| format!(r#"{{"resource":{r}}}"#))
        .collect();
    format!(
        r#"{{"resourceType":"Bundle","type":"searchset","total":{},"entry":[{}]}}"#,
        entries.len(),
        entries.join(",")
    )
}

/// The path a lenient server reads from any target form.
fn lenient_path(target: &str) -> String {
    let t = if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        rest.find('/').map_or("/", |i| &rest[i..])
    } else if let Some(i) = target.find(":/") {
        // `x:/fhir/...`: a scheme, then the path.
        &target[i + 1..]
    } else {
        target
    };
    t.to_string()
}

fn serve(stream: TcpStream, seen: Arc<Mutex<Vec<Seen>>>) {
    stream.set_nodelay(true).ok();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let mut method = parts.next().unwrap_or("").to_ascii_uppercase();
        let target = parts.next().unwrap_or("").to_string();
        let mut headers: Vec<(String, String)> = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let path_and_query = lenient_path(&target);
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((&path_and_query, ""));
        for h in [
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
        ] {
            if let Some(m) = header(h) {
                method = m.to_ascii_uppercase();
            }
        }
        for pair in query.split('&') {
            if let Some(m) = pair
                .strip_prefix("_method=")
                .or_else(|| pair.strip_prefix("_METHOD="))
            {
                method = m.to_ascii_uppercase();
            }
        }
        seen.lock().unwrap().push(Seen {
            method: method.clone(),
            target: target.clone(),
        });
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (status, answer) = match (method.as_str(), segs.as_slice()) {
            ("DELETE", _) => (
                200,
                r#"{"resourceType":"OperationOutcome","issue":[{"severity":"information","code":"informational"}]}"#.to_string(),
            ),
            ("POST", ["fhir", _]) => (201, String::from_utf8_lossy(&body).into_owned()),
            ("PUT" | "PATCH", _) => (200, String::from_utf8_lossy(&body).into_owned()),
            (_, ["fhir", "Patient", id]) if PATIENTS.contains(id) => (200, patient(id)),
            (_, ["fhir", "Observation", id]) if id.len() == 2 && id.starts_with('o') => {
                let p = format!("p{}", &id[1..]);
                if PATIENTS.contains(&p.as_str()) {
                    (200, observation(id, &p))
                } else {
                    (200, everything())
                }
            }
            _ => (200, everything()),
        };
        let accept = header("accept").unwrap_or_default();
        let content_type = if accept.contains("json+fhir") || query.contains("_format=json%2Bfhir")
        {
            "application/json+fhir"
        } else {
            "application/fhir+json"
        };
        let offered = header("accept-encoding")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let (coding, bytes) = if offered.contains("br") {
            let mut out = Vec::new();
            brotli::CompressorWriter::new(&mut out, 4096, 5, 22)
                .write_all(answer.as_bytes())
                .unwrap();
            (Some("br"), out)
        } else if offered.contains("zstd") {
            (
                Some("zstd"),
                zstd::encode_all(answer.as_bytes(), 3).unwrap(),
            )
        } else {
            (None, answer.into_bytes())
        };
        let mut head = format!(
            "HTTP/1.1 {status} OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
            bytes.len()
        );
        if let Some(c) = coding {
            head.push_str(&format!("Content-Encoding: {c}\r\n"));
        }
        head.push_str("\r\n");
        let mut whole = head.into_bytes();
        whole.extend_from_slice(&bytes);
        if out.write_all(&whole).is_err() {
            return;
        }
    }
}
