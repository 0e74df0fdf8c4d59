//! A small OpenID Connect issuer on loopback, for the console's sign-in: discovery, an
//! authorisation endpoint that approves at once (the user it signs in is set by the test),
//! a token endpoint that checks the PKCE verifier against the challenge (S256) and the
//! redirect URI, and the JWKS of the key it signs access tokens with. One thread accepts;
//! each connection is served on its own thread and closed after one answer.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::keys::{self, KeyKind, TestKey};
use super::LOOPBACK;

struct State {
    key: TestKey,
    /// The user signed in at the next authorisation, and their claims.
    user: String,
    roles: Vec<String>,
    audience: String,
    /// code -> (challenge, redirect URI).
    codes: HashMap<String, (String, String)>,
    /// Token exchanges refused (a wrong verifier or redirect).
    refused: usize,
}

/// A running issuer.
pub struct OidcIssuer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

fn query_map(text: &str) -> HashMap<String, String> {
    form_urlencoded::parse(text.as_bytes())
        .into_owned()
        .collect()
}

impl OidcIssuer {
    /// Start one that signs in `user` with `roles`, for tokens with audience `audience`.
    pub fn start(user: &str, roles: &[&str], audience: &str) -> OidcIssuer {
        let listener = TcpListener::bind((LOOPBACK, 0)).expect("bind OIDC issuer");
        let addr = listener.local_addr().expect("local_addr");
        let state = Arc::new(Mutex::new(State {
            key: TestKey::rsa(3).with_kid("oidc-1"),
            user: user.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            audience: audience.into(),
            codes: HashMap::new(),
            refused: 0,
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, addr, &state));
            }
        });
        OidcIssuer { addr, state }
    }

    /// The issuer (`iss`), also its base URL: `http://127.0.0.1:PORT`.
    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its JWKS URL.
    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.issuer())
    }

    /// Token exchanges it refused.
    pub fn refused(&self) -> usize {
        self.state.lock().unwrap().refused
    }
}

fn answer(stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn serve(mut stream: TcpStream, addr: SocketAddr, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("").to_string(),
    );
    let mut length = 0;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let base = format!("http://{addr}");
    let json_type = [("Content-Type", "application/json".to_string())];
    match (method, path) {
        ("GET", "/.well-known/openid-configuration") => {
            let doc = json!({
                "issuer": base,
                "authorization_endpoint": format!("{base}/authorize"),
                "token_endpoint": format!("{base}/token"),
                "jwks_uri": format!("{base}/jwks"),
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
            });
            answer(
                &mut stream,
                "200 OK",
                &json_type,
                doc.to_string().as_bytes(),
            );
        }
        ("GET", "/jwks") => {
            let jwks = keys::jwks(&[&state.lock().unwrap().key]);
            answer(
                &mut stream,
                "200 OK",
                &json_type,
                jwks.to_string().as_bytes(),
            );
        }
        ("GET", "/authorize") => {
            let q = query_map(query);
            let code = uuid::Uuid::new_v4().simple().to_string();
            let redirect = q.get("redirect_uri").cloned().unwrap_or_default();
            let ok = q.get("response_type").map(String::as_str) == Some("code")
                && q.get("code_challenge_method").map(String::as_str) == Some("S256");
            if !ok {
                answer(
                    &mut stream,
                    "400 Bad Request",
                    &[],
                    b"code flow with S256 only",
                );
                return;
            }
            state.lock().unwrap().codes.insert(
                code.clone(),
                (
                    q.get("code_challenge").cloned().unwrap_or_default(),
                    redirect.clone(),
                ),
            );
            let state_param = q.get("state").cloned().unwrap_or_default();
            let location = format!(
                "{redirect}?{}",
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("code", &code)
                    .append_pair("state", &state_param)
                    .finish()
            );
            answer(&mut stream, "302 Found", &[("Location", location)], b"");
        }
        ("POST", "/token") => {
            let form = query_map(&String::from_utf8_lossy(&body));
            let mut s = state.lock().unwrap();
            let code = form.get("code").cloned().unwrap_or_default();
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(Sha256::digest(verifier.as_bytes()));
            let good = match s.codes.remove(&code) {
                Some((expected, redirect)) => {
                    expected == challenge
                        && form.get("redirect_uri") == Some(&redirect)
                        && form.get("grant_type").map(String::as_str) == Some("authorization_code")
                }
                None => false,
            };
            if !good {
                s.refused += 1;
                let error = json!({"error": "invalid_grant"});
                answer(
                    &mut stream,
                    "400 Bad Request",
                    &json_type,
                    error.to_string().as_bytes(),
                );
                return;
            }
            let mut claims: Value = keys::claims(&base, &s.audience, &s.user);
            claims["roles"] = json!(s.roles);
            let token = keys::mint(KeyKind::Rsa.default_alg(), &s.key, &claims);
            let tokens = json!({"access_token": token, "token_type": "Bearer", "expires_in": 300});
            answer(
                &mut stream,
                "200 OK",
                &json_type,
                tokens.to_string().as_bytes(),
            );
        }
        _ => answer(&mut stream, "404 Not Found", &[], b""),
    }
}
