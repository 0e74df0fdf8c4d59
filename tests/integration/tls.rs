//! TLS on both sides, with certificates made at test time: downstream termination with mutual
//! TLS (the client certificate identifies the device), certificate reload on SIGHUP, and an
//! `https://` EHR whose certificate is verified (a wrong one fails closed with 502 and a record).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::hash::MessageDigest;
use openssl::ssl::{SslAcceptor, SslConnector, SslFiletype, SslMethod, SslVerifyMode};

use crate::support::certs::{fingerprint, CertFiles, TestCa};
use crate::support::gateway::{Gateway, GatewayOptions};
use crate::support::{free_port, wait_for_port, FhirServer};

fn tls_toml(port: u16, server: &CertFiles, client_ca: Option<&Path>) -> String {
    let mut toml = format!(
        "[tls]\nlisten = [\"127.0.0.1:{port}\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        server.cert.display(),
        server.key.display()
    );
    if let Some(ca) = client_ca {
        toml.push_str(&format!(
            "client_ca_file = \"{}\"\nclient_cert = \"required\"\n",
            ca.display()
        ));
    }
    toml
}

/// A reqwest client trusting `ca`, presenting `client` if given.
fn https_client(ca: &Path, client: Option<&CertFiles>) -> reqwest::blocking::Client {
    let mut builder = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap());
    if let Some(c) = client {
        let mut pem = std::fs::read(&c.cert).unwrap();
        pem.extend(std::fs::read(&c.key).unwrap());
        builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

/// The gateway, once its TLS listener on `tls_port` accepts connections too (`Gateway::start`
/// waits for the plain listener only; pingora starts its services concurrently).
fn start_with_tls(opts: GatewayOptions, tls_port: u16) -> Gateway {
    let gw = Gateway::start(opts);
    assert!(
        wait_for_port(tls_port, Duration::from_secs(10)),
        "the TLS listener on {tls_port} never accepted a connection:\n{}",
        gw.log()
    );
    gw
}

/// The SHA-256 of the certificate the server at `port` presents now (a raw OpenSSL handshake).
fn served_certificate(port: u16, ca: &Path, client: &CertFiles) -> String {
    let mut connector = SslConnector::builder(SslMethod::tls()).unwrap();
    connector.set_ca_file(ca).unwrap();
    connector
        .set_certificate_file(&client.cert, SslFiletype::PEM)
        .unwrap();
    connector
        .set_private_key_file(&client.key, SslFiletype::PEM)
        .unwrap();
    let connector = connector.build();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let stream = connector.connect("localhost", tcp).unwrap();
    let cert = stream.ssl().peer_certificate().unwrap();
    hex::encode(cert.digest(MessageDigest::sha256()).unwrap())
}

#[test]
fn mutual_tls_records_the_client_certificate_and_refuses_an_untrusted_one() {
    let fhir = FhirServer::seeded();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("hospital");
    let ca_pem = ca.write_ca(dir.path());
    let server = ca.server(dir.path(), "gateway");
    let cart = ca.client(dir.path(), "cart", "ward-3-cart-17");
    let rogue = TestCa::new("rogue");
    let stranger = rogue.client(dir.path(), "stranger", "ward-3-cart-17");

    let tls_port = free_port();
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.extra_toml = tls_toml(tls_port, &server, Some(&ca_pem));
    let gw = start_with_tls(opts, tls_port);
    let token = gw.token("dr.mtls");
    let url = format!("https://localhost:{tls_port}/fhir/Patient/example");

    // A device with a certificate from the hospital CA.
    let resp = https_client(&ca_pem, Some(&cart))
        .get(&url)
        .bearer_auth(&token)
        .header("X-Device-Id", "what-the-header-claims")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2, "h2 by ALPN");
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(resp.text().unwrap().contains("\"resourceType\""));
    let r = gw
        .records()
        .into_iter()
        .find(|r| r.event.request_id == id)
        .unwrap();
    let cert = r
        .event
        .net
        .client_cert
        .as_ref()
        .expect("client certificate recorded");
    assert_eq!(cert.sha256, fingerprint(&cart.der));
    let subject = cert.subject.as_deref().unwrap();
    assert!(
        subject.contains("CN=ward-3-cart-17") && subject.contains("O=Test Hospital"),
        "{subject}"
    );
    // The verified certificate outranks the header as the device's identity.
    assert_eq!(
        r.event.net.device_id.as_deref(),
        Some(format!("sha256:{}", fingerprint(&cart.der)).as_str())
    );
    assert_eq!(r.event.net.device_id_source.as_deref(), Some("client_cert"));
    assert_eq!(
        r.event.net.gateway.listener,
        format!("127.0.0.1:{tls_port}")
    );

    // A certificate from another CA, and none at all: refused in the handshake.
    let before = gw.records().len();
    let err = https_client(&ca_pem, Some(&stranger))
        .get(&url)
        .bearer_auth(&token)
        .send()
        .expect_err("an untrusted client certificate is refused");
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    assert!(https_client(&ca_pem, None)
        .get(&url)
        .bearer_auth(&token)
        .send()
        .is_err());
    assert!(gw.metric("auditgate_tls_client_cert_rejected_total") >= 1.0);
    assert_eq!(gw.records().len(), before, "no HTTP request, so no record");
    // The plain listener still works as before.
    let plain = crate::support::http_client()
        .get(gw.url("/fhir/Patient/example"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(plain.status().as_u16(), 200);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(gw.metric("auditgate_tls_cert_not_after_timestamp_seconds") > now);
}

#[test]
fn the_server_certificate_is_reloaded_on_sighup_and_a_broken_one_keeps_the_old() {
    let fhir = FhirServer::seeded();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("hospital");
    let ca_pem = ca.write_ca(dir.path());
    let first = ca.server(dir.path(), "gateway");
    let cart = ca.client(dir.path(), "cart", "cart-1");
    let tls_port = free_port();
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.extra_toml = tls_toml(tls_port, &first, Some(&ca_pem));
    let gw = start_with_tls(opts, tls_port);
    assert_eq!(
        served_certificate(tls_port, &ca_pem, &cart),
        fingerprint(&first.der)
    );

    // A renewed certificate (new key) is written over the old files, then SIGHUP.
    let renewed = ca.server(dir.path(), "renewed");
    std::fs::copy(&renewed.cert, &first.cert).unwrap();
    std::fs::copy(&renewed.key, &first.key).unwrap();
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_certificate(tls_port, &ca_pem, &cart) != fingerprint(&renewed.der) {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A key that does not belong to the certificate: the reload is rejected, the renewed
    // certificate keeps serving.
    let other = ca.server(dir.path(), "other");
    std::fs::copy(&other.key, &first.key).unwrap();
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.metric(r#"auditgate_config_reloads_total{result="rejected"}"#) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the broken pair was not rejected"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        gw.log().contains("does not belong to the certificate"),
        "{}",
        gw.log()
    );
    assert_eq!(
        served_certificate(tls_port, &ca_pem, &cart),
        fingerprint(&renewed.der)
    );
}

/// A minimal HTTPS server standing in for an EHR: answers every request with a Patient.
struct TlsUpstream {
    port: u16,
}

impl TlsUpstream {
    fn start(cert: &CertFiles) -> TlsUpstream {
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        acceptor.set_certificate_chain_file(&cert.cert).unwrap();
        acceptor
            .set_private_key_file(&cert.key, SslFiletype::PEM)
            .unwrap();
        acceptor.set_verify(SslVerifyMode::NONE);
        let acceptor = Arc::new(acceptor.build());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let acceptor = acceptor.clone();
                std::thread::spawn(move || {
                    let Ok(mut stream) = acceptor.accept(tcp) else {
                        return;
                    };
                    loop {
                        // Read one request head (GETs: no body), then answer.
                        {
                            let mut reader = BufReader::new(&mut stream);
                            loop {
                                let mut line = String::new();
                                match reader.read_line(&mut line) {
                                    Ok(0) | Err(_) => return,
                                    Ok(_) if line == "\r\n" => break,
                                    Ok(_) => {}
                                }
                            }
                        }
                        let body = br#"{"resourceType":"Patient","id":"tls-1"}"#;
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        );
                        if stream.write_all(resp.as_bytes()).is_err()
                            || stream.write_all(body).is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        TlsUpstream { port }
    }
}

fn https_upstream_gateway(port: u16, extra: &str) -> Gateway {
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{port}"));
    opts.upstream_scheme = "https";
    opts.upstream_toml = extra.into();
    Gateway::start(opts)
}

#[test]
fn an_https_ehr_is_verified_and_a_wrong_certificate_fails_closed_with_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ehr");
    let ca_pem = ca.write_ca(dir.path());
    let good = TlsUpstream::start(&ca.server(dir.path(), "ehr"));
    let wrong_name =
        TlsUpstream::start(&ca.server_for(dir.path(), "elsewhere", "ehr.elsewhere.test"));
    let rogue = TestCa::new("rogue");
    let forged = TlsUpstream::start(&rogue.server(dir.path(), "forged"));
    let trust = format!(
        "ca_file = \"{}\"\nserver_name = \"localhost\"\n",
        ca_pem.display()
    );

    // The right certificate: the request goes through.
    let gw = https_upstream_gateway(good.port, &trust);
    let token = gw.token("dr.https");
    let resp = crate::support::http_client()
        .get(gw.url("/fhir/Patient/tls-1"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.text().unwrap().contains("tls-1"));
    drop(gw);

    // A certificate from another CA, and one for another name: 502, recorded, nothing relayed.
    for upstream in [&forged, &wrong_name] {
        let gw = https_upstream_gateway(upstream.port, &trust);
        let token = gw.token("dr.https");
        let resp = crate::support::http_client()
            .get(gw.url("/fhir/Patient/tls-1"))
            .bearer_auth(&token)
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 502);
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        let body = resp.text().unwrap();
        assert!(!body.contains("tls-1"), "{body}");
        let r = gw
            .records()
            .into_iter()
            .find(|r| r.event.request_id == id)
            .expect("recorded");
        let outcome = r.event.outcome.unwrap();
        assert_eq!(outcome.status, 502);
        assert_eq!(outcome.error.as_deref(), Some("upstream_tls_failed"));
        assert_eq!(
            gw.metric(r#"auditgate_upstream_errors_total{kind="tls"}"#),
            1.0
        );
    }

    // Verification explicitly off (never in production): it works, and the log says so.
    let gw = https_upstream_gateway(forged.port, "insecure_skip_verify = true\n");
    let token = gw.token("dr.https");
    let resp = crate::support::http_client()
        .get(gw.url("/fhir/Patient/tls-1"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(gw.log().contains("insecure_skip_verify is on"));
}

#[test]
fn check_config_loads_certificates_and_geoip_databases_as_run_would() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("hospital");
    let server = ca.server(dir.path(), "gateway");
    let other = ca.server(dir.path(), "other");
    let write = |tls_key: &Path, geo: &str| {
        let path = dir.path().join("auditgate.toml");
        std::fs::write(
            &path,
            format!(
                r#"
[upstream]
url = "http://127.0.0.1:8000"
[identity]
[[identity.issuers]]
issuer = "https://idp.test"
audiences = ["a"]
algorithms = ["HS256"]
hmac_secrets = [{{ env_var = "X" }}]
[rules]
files = ["{rules}"]
[tls]
listen = ["127.0.0.1:8443"]
cert_file = "{cert}"
key_file = "{key}"
[geoip]
{geo}
"#,
                rules = crate::support::repo_root()
                    .join("rules/fhir-r4.toml")
                    .display(),
                cert = server.cert.display(),
                key = tls_key.display(),
            ),
        )
        .unwrap();
        path
    };
    let path = write(&server.key, "");
    let (code, out, err) =
        crate::support::run_auditgate(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("loads with its key"), "{out}");
    // A key from another certificate.
    let path = write(&other.key, "");
    let (code, _, err) =
        crate::support::run_auditgate(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("does not belong to the certificate"), "{err}");
    // A GeoIP database that is not one.
    std::fs::write(dir.path().join("city.mmdb"), b"not a database").unwrap();
    let path = write(&server.key, "city_db = \"city.mmdb\"");
    let (code, _, err) =
        crate::support::run_auditgate(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("city.mmdb"), "{err}");
}

#[test]
fn the_client_ca_bundle_is_reloaded_on_sighup() {
    let fhir = FhirServer::seeded();
    let dir = tempfile::tempdir().unwrap();
    let old_ca = TestCa::new("old-devices");
    let new_ca = TestCa::new("new-devices");
    let server_ca = TestCa::new("hospital");
    let server_ca_pem = server_ca.write_ca(dir.path());
    let server = server_ca.server(dir.path(), "gateway");
    let old_device = old_ca.client(dir.path(), "old-device", "cart-old");
    let new_device = new_ca.client(dir.path(), "new-device", "cart-new");
    // The bundle the config names, first with the old devices' CA.
    let bundle = dir.path().join("devices-ca.pem");
    std::fs::copy(old_ca.write_ca(dir.path()), &bundle).unwrap();
    let new_bundle = new_ca.write_ca(dir.path());

    let tls_port = free_port();
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.extra_toml = tls_toml(tls_port, &server, Some(&bundle));
    let gw = start_with_tls(opts, tls_port);
    let token = gw.token("dr.rotation");
    let url = format!("https://localhost:{tls_port}/fhir/Patient/example");
    // A fresh client per attempt: no TLS session is resumed across the change.
    let status = |device: &CertFiles| {
        https_client(&server_ca_pem, Some(device))
            .get(&url)
            .bearer_auth(&token)
            .send()
            .map(|r| r.status().as_u16())
            .ok()
    };
    assert_eq!(status(&old_device), Some(200));
    assert_eq!(status(&new_device), None, "not trusted yet");

    std::fs::copy(&new_bundle, &bundle).unwrap();
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&new_device) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the new CA was never trusted\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(&old_device), None, "the old CA is no longer trusted");
}
