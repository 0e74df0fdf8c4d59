//! Fail closed: when the journal cannot take a record, nothing is forwarded and nothing is
//! released. The journal sits on a small tmpfs that fills up for real (ENOSPC), so the failure
//! comes from the kernel, not from a switch in the code.
//!
//! Mounting needs root (CI runs as root); without it these tests fail loudly.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::support::gateway::{read_journal, verify_cli, Gateway, GatewayOptions};
use crate::support::held::{HeldUpstream, MARKER};
use crate::support::{http_client, FhirServer};

/// A small tmpfs, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(size_kib: u32) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_kib}k"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a {size_kib} KiB tmpfs failed: the fail-closed tests fill a real filesystem \
             and need root (CI runs as root)"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write a filler file until the filesystem is full.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.path().join("filler")).unwrap();
        let block = vec![0u8; 4096];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc_enospc()), "{e}");
                    break;
                }
            }
        }
    }
}

fn libc_enospc() -> i32 {
    28
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Copy a journal off the small disk (to verify it after the gateway is gone).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn a_full_disk_mid_traffic_turns_into_503_and_no_write_reaches_the_ehr_without_its_intent() {
    let fhir = FhirServer::seeded();
    let disk = SmallDisk::new(96);
    let journal_dir: PathBuf = disk.path().join("journal");
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.journal_dir = Some(journal_dir.clone());
    opts.journal_toml = "segment_max_bytes = 16384".into();
    let mut gw = Gateway::start(opts);
    let token = gw.token("dr.full");
    let client = http_client();

    // Mixed reads and writes until the journal refuses; bounded.
    let mut refused_writes = Vec::new();
    let mut served = 0;
    for i in 0..2000 {
        if i % 2 == 0 {
            let resp = client
                .get(gw.url("/fhir/Patient/example"))
                .bearer_auth(&token)
                .send()
                .unwrap();
            match resp.status().as_u16() {
                200 => served += 1,
                503 => {
                    let body = resp.text().unwrap();
                    assert!(body.contains("audit_journal_unavailable"), "{body}");
                    assert!(
                        !body.contains("\"resourceType\""),
                        "503 carries no patient data"
                    );
                }
                other => panic!("unexpected {other}"),
            }
        } else {
            let id = format!("fc-{i}");
            let patient = json!({"resourceType": "Patient", "id": id, "active": true});
            let resp = client
                .put(gw.url(&format!("/fhir/Patient/{id}")))
                .bearer_auth(&token)
                .header("Content-Type", "application/fhir+json")
                .body(patient.to_string())
                .send()
                .unwrap();
            match resp.status().as_u16() {
                200 | 201 => served += 1,
                503 => refused_writes.push(id),
                other => panic!("unexpected {other}"),
            }
        }
        if refused_writes.len() >= 5 {
            break;
        }
    }
    assert!(
        served > 10,
        "the gateway served traffic before the disk filled ({served})"
    );
    assert!(refused_writes.len() >= 5, "the disk never filled up");
    // A refused write reached the EHR only if its intent record was durable first (the disk
    // filled between the intent and the outcome: the client gets 503, the journal holds the
    // attempt). Once the journal has failed, writes are refused before they are forwarded.
    let intents: Vec<String> = read_journal(&journal_dir)
        .into_iter()
        .filter(|r| r.event.phase == auditgate::record::Phase::Intent)
        .map(|r| r.event.path)
        .collect();
    let mut never_forwarded = 0;
    for id in &refused_writes {
        let status = client
            .get(fhir.url(&format!("Patient/{id}")))
            .send()
            .unwrap()
            .status()
            .as_u16();
        match status {
            404 => never_forwarded += 1,
            200 => assert!(
                intents.contains(&format!("/fhir/Patient/{id}")),
                "Patient/{id} reached the EHR without a durable intent record"
            ),
            other => panic!("unexpected {other} for Patient/{id}"),
        }
    }
    assert!(
        never_forwarded >= refused_writes.len() - 1,
        "after the journal failed, writes must be refused before the EHR sees them \
         ({never_forwarded} of {} were)",
        refused_writes.len()
    );
    assert!(
        gw.log().contains("journal failed"),
        "the failure is logged: {}",
        gw.log()
    );
    gw.kill9();
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&journal_dir, copy.path());
    let (code, out) = verify_cli(copy.path(), false);
    assert_eq!(code, 0, "the journal still verifies after ENOSPC: {out}");
}

#[test]
fn a_journal_that_fails_while_a_response_is_in_flight_releases_nothing() {
    let upstream = HeldUpstream::start();
    let disk = SmallDisk::new(64);
    let journal_dir = disk.path().join("journal");
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", upstream.port));
    opts.journal_dir = Some(journal_dir.clone());
    let mut gw = Gateway::start(opts);
    let token = gw.token("dr.inflight");

    // Two held requests, both on the buffered path: a read and a search whose Bundle names
    // 100 patients. Forwarded (a read has no intent record), waiting for their responses.
    let url = gw.url("/fhir/Patient/hold");
    let t = token.clone();
    let in_flight = std::thread::spawn(move || {
        let resp = http_client().get(url).bearer_auth(t).send().unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().unwrap())
    });
    upstream
        .held
        .recv_timeout(Duration::from_secs(20))
        .expect("the held read reached the upstream");
    // The search over a raw socket: everything the gateway writes back is read, byte for byte.
    let gw_port = gw.port;
    let t = token.clone();
    let search_in_flight = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", gw_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "GET /fhir/Observation?code=hold&_count=100 HTTP/1.1\r\nHost: gw\r\n\
             Authorization: Bearer {t}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        raw
    });
    upstream
        .held
        .recv_timeout(Duration::from_secs(20))
        .expect("the held search reached the upstream");

    // Now break the journal: fill the disk, then push records until the journal refuses.
    disk.fill();
    let client = http_client();
    let mut broke = false;
    for _ in 0..200 {
        let resp = client
            .get(gw.url("/fhir/Patient/canary"))
            .bearer_auth(&token)
            .send()
            .unwrap();
        if resp.status().as_u16() == 503 {
            broke = true;
            break;
        }
    }
    assert!(broke, "the journal never failed on a full disk");

    // Release the held response: its outcome record cannot be made durable, so not one byte
    // of it may reach the client.
    upstream.release();
    upstream.release();
    let (status, body) = in_flight.join().unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        !body.contains(MARKER),
        "patient data was released without a durable record: {body}"
    );
    assert!(body.contains("audit_journal_unavailable"), "{body}");
    // The search: a 503 head and the gateway's own error, and not one byte of the Bundle.
    let raw = search_in_flight.join().unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    assert!(
        !text.contains(MARKER) && !text.contains("searchset") && !text.contains("Patient/p"),
        "search results were released without a durable record: {text}"
    );
    assert!(text.contains("audit_journal_unavailable"), "{text}");

    // A write now is refused before the EHR sees it.
    let writes_before = upstream.puts_seen();
    let resp = client
        .put(gw.url("/fhir/Patient/p-after"))
        .bearer_auth(&token)
        .header("Content-Type", "application/fhir+json")
        .body("{\"resourceType\":\"Patient\",\"id\":\"p-after\"}")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let writes_after = upstream.puts_seen();
    assert_eq!(
        writes_before, writes_after,
        "a write reached the upstream while the journal was down"
    );
    // A read is refused before it is forwarded too: the EHR serves nothing nobody records.
    let seen_before = upstream.requests_seen();
    let resp = client
        .get(gw.url("/fhir/Patient/after-failure"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(
        upstream.requests_seen(),
        seen_before,
        "a read reached the upstream while the journal was down"
    );
    assert!(upstream.requests_seen() > 1);

    gw.kill9();
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&journal_dir, copy.path());
    let (code, out) = verify_cli(copy.path(), false);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn the_audit_listener_answers_503_with_no_event_once_the_journal_cannot_record_the_search() {
    let fhir = FhirServer::seeded();
    let disk = SmallDisk::new(96);
    let audit_port = crate::support::free_port();
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.journal_dir = Some(disk.path().join("journal"));
    opts.journal_toml = "segment_max_bytes = 16384".into();
    opts.extra_toml = format!("[audit_api]\nenabled = true\nlisten = \"127.0.0.1:{audit_port}\"\n");
    let gw = Gateway::start(opts);
    let mut claims =
        crate::support::gateway::claims_for(crate::support::gateway::ISS_RSA, "auditor-1");
    claims["scope"] = json!("audit.read");
    let auditor = crate::support::mint(
        crate::support::KeyKind::Rsa.default_alg(),
        &gw.keys.rsa,
        &claims,
    );
    let client = http_client();
    let search = || {
        let resp = client
            .get(format!(
                "http://127.0.0.1:{audit_port}/AuditEvent?patient=example"
            ))
            .bearer_auth(&auditor)
            .send()
            .unwrap();
        (resp.status().as_u16(), resp.text().unwrap())
    };
    let token = gw.token("dr.full");
    let read = || {
        client
            .get(gw.url("/fhir/Patient/example"))
            .bearer_auth(&token)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(read(), 200);
    // While the journal takes records, the auditor gets the read (once a checkpoint covers it).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = search();
        if status == 200 && body.contains("\"AuditEvent\"") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {body}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // Fill the disk through the proxy until the journal refuses.
    let mut filled = false;
    for _ in 0..5000 {
        if read() == 503 {
            filled = true;
            break;
        }
    }
    assert!(filled, "the disk never filled up");
    let (status, body) = search();
    assert_eq!(status, 503, "{body}");
    assert!(
        !body.contains("\"AuditEvent\"") && !body.contains("Patient/"),
        "a search that cannot be recorded answers nothing: {body}"
    );
}
