//! A loopback HTTP server for a JWKS document, for the gateway's key-set cache to fetch.
//!
//! `GET /jwks.json` answers with the current document (`application/json`, `Connection: close`);
//! anything else is a 404. A test swaps the document ([`JwksServer::set_jwks`], key rotation),
//! makes it fail ([`JwksServer::set_status`]) or slow ([`JwksServer::set_delay`]), and reads
//! how often it was fetched ([`JwksServer::requests`]). One thread accepts; each connection
//! gets its own thread, so a delayed answer does not hold up the next request. Dropping the
//! server stops the accept thread and closes the port.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::LOOPBACK;

/// The path the document is served on.
pub const JWKS_PATH: &str = "/jwks.json";

struct Response {
    status: u16,
    body: Vec<u8>,
    delay: Duration,
    headers: Vec<(String, String)>,
}

struct Shared {
    response: Mutex<Response>,
    requests: AtomicUsize,
    stop: AtomicBool,
}

/// A running JWKS server on `127.0.0.1`.
pub struct JwksServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl JwksServer {
    /// Serves `jwks` (e.g. `keys::jwks(&[&key])`) on a free loopback port.
    pub fn start(jwks: &serde_json::Value) -> JwksServer {
        let listener = TcpListener::bind((LOOPBACK, 0)).expect("bind JWKS server on 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(Shared {
            response: Mutex::new(Response {
                status: 200,
                body: jwks.to_string().into_bytes(),
                delay: Duration::ZERO,
                headers: Vec::new(),
            }),
            requests: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let accept_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("jwks-server-{}", addr.port()))
            .spawn(move || {
                for stream in listener.incoming() {
                    if accept_shared.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let shared = Arc::clone(&accept_shared);
                    std::thread::spawn(move || serve(stream, &shared));
                }
            })
            .expect("spawn JWKS accept thread");
        JwksServer {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/jwks.json`.
    pub fn url(&self) -> String {
        format!("http://{}{JWKS_PATH}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Serves a new document from the next request on (key rotation).
    pub fn set_jwks(&self, jwks: &serde_json::Value) {
        self.set_body(jwks.to_string().into_bytes());
    }

    /// Serves these exact bytes (e.g. malformed JSON).
    pub fn set_body(&self, body: Vec<u8>) {
        self.shared.response.lock().unwrap().body = body;
    }

    /// Answers with this status (the current body still goes with it); 200 is normal.
    pub fn set_status(&self, status: u16) {
        self.shared.response.lock().unwrap().status = status;
    }

    /// Waits this long before answering each request (a slow or hanging key server).
    pub fn set_delay(&self, delay: Duration) {
        self.shared.response.lock().unwrap().delay = delay;
    }

    /// Extra response headers, e.g. `[("Cache-Control", "max-age=60")]`.
    pub fn set_headers(&self, headers: &[(&str, &str)]) {
        self.shared.response.lock().unwrap().headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// How many `GET /jwks.json` requests have arrived (counted on arrival, before any delay).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests have arrived; false on timeout.
    #[must_use]
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.requests() < n {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() so the thread sees the flag and drops the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return, // closed (e.g. the wake-up connect) or timed out
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let request_line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("").split('?').next().unwrap_or("");

    let (status, body, headers) = if method == "GET" && path == JWKS_PATH {
        shared.requests.fetch_add(1, Ordering::SeqCst);
        let (status, body, delay, headers) = {
            let r = shared.response.lock().unwrap();
            (r.status, r.body.clone(), r.delay, r.headers.clone())
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        (status, body, headers)
    } else {
        (404, b"not found\n".to_vec(), Vec::new())
    };

    let mut response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.write_all(&body);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
