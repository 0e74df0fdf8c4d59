//! [`HeldUpstream`]: a tiny HTTP/1.1 upstream the test controls, for tests of what the gateway
//! does while a response is in flight (fail-closed, buffered slots, stalled clients).
//!
//! It answers at once, except a request whose path contains `hold`, which it answers only when
//! the test calls [`HeldUpstream::release`]; it reports on [`HeldUpstream::held`] when such a
//! request arrives. Answers: `/fhir/Observation...` a search Bundle of 100 patients
//! ([`search_bundle`]), `.../Binary/...` a PDF ([`PDF_BYTES`]), anything else a Patient; every
//! FHIR answer carries [`MARKER`], so a test can tell whether any of it reached a client. It
//! counts the requests it received, by method. Each connection is served on its own thread;
//! the listener is on `127.0.0.1` and lives as long as the test process.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// A string in every FHIR answer of a [`HeldUpstream`].
pub const MARKER: &str = "PATIENT-DATA-MARKER-7f3a";

/// A binary attachment, as an EHR serves `Binary/{id}` with `Accept: application/pdf`.
pub const PDF_BYTES: &[u8] =
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>> endobj\n\x00\x01\x02 Patient/not-parsed\n%%EOF\n";

/// How long a held request waits for [`HeldUpstream::release`] at most.
const HOLD_LIMIT: Duration = Duration::from_secs(30);

pub struct HeldUpstream {
    pub port: u16,
    /// One message per held request, when it arrives.
    pub held: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
    methods: Arc<Mutex<Vec<String>>>,
}

impl HeldUpstream {
    pub fn start() -> HeldUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (held_tx, held) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let methods = Arc::new(Mutex::new(Vec::new()));
        let m = methods.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let (held_tx, release_rx, m) = (held_tx.clone(), release_rx.clone(), m.clone());
                std::thread::spawn(move || serve(stream, held_tx, release_rx, m));
            }
        });
        HeldUpstream {
            port,
            held,
            release,
            methods,
        }
    }

    /// Answer one held request (the oldest waiting).
    pub fn release(&self) {
        self.release.send(()).unwrap();
    }

    /// How many requests reached this upstream.
    pub fn requests_seen(&self) -> usize {
        self.methods.lock().unwrap().len()
    }

    /// How many PUT requests reached this upstream.
    pub fn puts_seen(&self) -> usize {
        self.methods
            .lock()
            .unwrap()
            .iter()
            .filter(|m| *m == "PUT")
            .count()
    }
}

/// A search Bundle of 100 Observations of 100 patients (~20 KiB), each carrying [`MARKER`].
pub fn search_bundle() -> String {
    let entries: Vec<String> = (0..100)
        .map(|i| {
            format!(
                "{{\"resource\":{{\"resourceType\":\"Observation\",\"id\":\"o{i}\",\
                 \"subject\":{{\"reference\":\"Patient/p{i}\"}},\"note\":[{{\"text\":\"{MARKER}\"}}]}}}}"
            )
        })
        .collect();
    format!(
        "{{\"resourceType\":\"Bundle\",\"type\":\"searchset\",\"total\":100,\"entry\":[{}]}}",
        entries.join(",")
    )
}

fn serve(
    mut stream: TcpStream,
    held_tx: mpsc::Sender<()>,
    release_rx: Arc<Mutex<mpsc::Receiver<()>>>,
    methods: Arc<Mutex<Vec<String>>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        methods.lock().unwrap().push(method);
        if path.contains("hold") {
            held_tx.send(()).unwrap();
            let _ = release_rx.lock().unwrap().recv_timeout(HOLD_LIMIT);
        }
        let (content_type, body): (&str, Vec<u8>) = if path.starts_with("/fhir/Observation") {
            ("application/fhir+json", search_bundle().into_bytes())
        } else if path.contains("/Binary/") {
            ("application/pdf", PDF_BYTES.to_vec())
        } else {
            (
                "application/fhir+json",
                format!("{{\"resourceType\":\"Patient\",\"id\":\"x\",\"note\":\"{MARKER}\"}}")
                    .into_bytes(),
            )
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if stream.write_all(head.as_bytes()).is_err() || stream.write_all(&body).is_err() {
            return;
        }
    }
}
