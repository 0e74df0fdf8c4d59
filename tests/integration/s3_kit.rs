//! Self-tests of the S3 part of the kit (`tests/support/s3.rs`): LocalStack 4.13.1 really
//! enforces the Object Lock facts the WORM archive relies on, and the outage simulations fail
//! requests without losing objects. Driven with boto3 from `.venv-localstack`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::python::assert_success;
use crate::support::s3::{run_boto3, S3Server, BOTO3_PRELUDE};

/// Runs `body` after [`BOTO3_PRELUDE`] (`s3` is a client for `argv[1]`), with `args` after the
/// endpoint; the script prints one JSON document, returned parsed.
fn boto3_json(endpoint: &str, body: &str, args: &[&str]) -> Value {
    let script = format!("{BOTO3_PRELUDE}\nimport json\n{body}");
    let mut argv = vec![endpoint];
    argv.extend_from_slice(args);
    let out = run_boto3(&script, &argv);
    let stdout = assert_success(&out, "boto3 script");
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("boto3 script printed no JSON ({e}):\n{stdout}"))
}

/// PUTs `key` = `body` with COMPLIANCE retention for a day and the SHA-256 checksum.
const PUT_LOCKED: &str = r#"
import base64, datetime, hashlib
bucket, key, body = sys.argv[2], sys.argv[3], sys.argv[4].encode()
until = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)).replace(microsecond=0)
r = s3.put_object(Bucket=bucket, Key=key, Body=body, ObjectLockMode="COMPLIANCE",
                  ObjectLockRetainUntilDate=until,
                  ChecksumSHA256=base64.b64encode(hashlib.sha256(body).digest()).decode())
print(json.dumps({"version": r["VersionId"], "until": until.isoformat()}))
"#;

/// GETs `key`: its body, or the error (class name, S3 code) that the request ended with.
const GET_OR_ERROR: &str = r#"
bucket, key = sys.argv[2], sys.argv[3]
s3 = client(connect_timeout=2, read_timeout=float(sys.argv[4]) if len(sys.argv) > 4 else 30)
try:
    print(json.dumps({"body": s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()}))
except Exception as e:
    code = ((getattr(e, "response", None) or {}).get("Error") or {}).get("Code")
    print(json.dumps({"error": type(e).__name__, "code": code}))
"#;

#[test]
fn localstack_enforces_the_object_lock_facts() {
    let started = Instant::now();
    let s3 = S3Server::start();
    eprintln!(
        "S3Server: ready in {:.2} s at {} (LocalStack pid {}, {} MiB RSS)",
        started.elapsed().as_secs_f64(),
        s3.endpoint(),
        s3.pid(),
        s3.rss_kib() / 1024
    );
    s3.create_locked_bucket("audit-worm");

    let facts = boto3_json(
        &s3.endpoint(),
        r#"
import base64, datetime, hashlib
from botocore.exceptions import ClientError
bucket = sys.argv[2]
def error(call):
    try:
        call()
        return None
    except ClientError as e:
        return {"code": e.response["Error"]["Code"],
                "status": e.response["ResponseMetadata"]["HTTPStatusCode"]}
sha = lambda b: base64.b64encode(hashlib.sha256(b).digest()).decode()
body = b"segment-000001 journal bytes"
until = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)).replace(microsecond=0)
put = s3.put_object(Bucket=bucket, Key="seg/1", Body=body, ObjectLockMode="COMPLIANCE",
                    ObjectLockRetainUntilDate=until, ChecksumSHA256=sha(body), IfNoneMatch="*")
version = put["VersionId"]
out = {"version": version, "until": until.isoformat(), "put_checksum": put.get("ChecksumSHA256"),
       "sha256": sha(body)}
out["delete_version"] = error(lambda: s3.delete_object(Bucket=bucket, Key="seg/1", VersionId=version))
out["delete_version_bypass"] = error(lambda: s3.delete_object(
    Bucket=bucket, Key="seg/1", VersionId=version, BypassGovernanceRetention=True))
out["if_none_match"] = error(lambda: s3.put_object(
    Bucket=bucket, Key="seg/1", Body=b"overwrite", IfNoneMatch="*"))
out["bad_checksum"] = error(lambda: s3.put_object(
    Bucket=bucket, Key="seg/2", Body=body, ChecksumSHA256=sha(b"something else")))
out["bad_checksum_stored"] = error(lambda: s3.head_object(Bucket=bucket, Key="seg/2")) is None
head = s3.head_object(Bucket=bucket, Key="seg/1", ChecksumMode="ENABLED")
out["head"] = {"mode": head.get("ObjectLockMode"),
               "until": head["ObjectLockRetainUntilDate"].isoformat(),
               "checksum": head.get("ChecksumSHA256"), "version": head["VersionId"]}
out["versions"] = [v["VersionId"] for v in s3.list_object_versions(Bucket=bucket).get("Versions", [])]
out["body"] = s3.get_object(Bucket=bucket, Key="seg/1")["Body"].read().decode()
print(json.dumps(out))
"#,
        &["audit-worm"],
    );
    let ctx = || format!("facts: {facts:#}\nLocalStack log:\n{}", s3.log_tail(3000));
    let version = facts["version"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", ctx()));

    // A COMPLIANCE version cannot be deleted, bypass header or not.
    for case in ["delete_version", "delete_version_bypass"] {
        assert_eq!(facts[case]["code"], "AccessDenied", "{case}: {}", ctx());
        assert_eq!(facts[case]["status"], 403, "{case}: {}", ctx());
    }
    // If-None-Match: * on an existing key: 412.
    assert_eq!(facts["if_none_match"]["status"], 412, "{}", ctx());
    assert_eq!(
        facts["if_none_match"]["code"],
        "PreconditionFailed",
        "{}",
        ctx()
    );
    // A wrong x-amz-checksum-sha256 is refused and nothing is stored.
    assert_eq!(facts["bad_checksum"]["code"], "BadDigest", "{}", ctx());
    assert_eq!(facts["bad_checksum"]["status"], 400, "{}", ctx());
    assert_eq!(facts["bad_checksum_stored"], false, "{}", ctx());
    // The stored version keeps its lock, retain-until and checksum.
    assert_eq!(facts["put_checksum"], facts["sha256"], "{}", ctx());
    assert_eq!(facts["head"]["mode"], "COMPLIANCE", "{}", ctx());
    assert_eq!(facts["head"]["until"], facts["until"], "{}", ctx());
    assert_eq!(facts["head"]["checksum"], facts["sha256"], "{}", ctx());
    assert_eq!(facts["head"]["version"], version, "{}", ctx());
    assert_eq!(
        facts["versions"],
        serde_json::json!([version]),
        "one version, nothing overwritten: {}",
        ctx()
    );
    assert_eq!(facts["body"], "segment-000001 journal bytes", "{}", ctx());
}

#[test]
fn refused_connections_fail_requests_and_lose_nothing() {
    let mut s3 = S3Server::start();
    let endpoint = s3.endpoint();
    s3.create_locked_bucket("audit-outage");
    let put = boto3_json(&endpoint, PUT_LOCKED, &["audit-outage", "seg/1", "before"]);

    // A connection in the middle of a request (headers sent, body not yet) when the outage
    // starts is cut.
    let mut in_flight = TcpStream::connect(("127.0.0.1", s3.port())).unwrap();
    in_flight
        .write_all(
            b"PUT /audit-outage/seg/2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\npart",
        )
        .unwrap();
    in_flight
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    s3.refuse_connections();
    assert!(!s3.is_accepting());
    let mut buf = [0u8; 64];
    match in_flight.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!(
            "the in-flight connection got an answer during the outage: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
    }
    let refused = TcpStream::connect_timeout(
        &format!("127.0.0.1:{}", s3.port()).parse().unwrap(),
        Duration::from_secs(2),
    );
    assert_eq!(
        refused.map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionRefused),
        "the port must refuse connections during the outage"
    );
    let during = boto3_json(&endpoint, GET_OR_ERROR, &["audit-outage", "seg/1"]);
    assert_eq!(during["error"], "EndpointConnectionError", "{during}");

    s3.accept_connections();
    assert_eq!(s3.endpoint(), endpoint, "same port after the outage");
    let after = boto3_json(&endpoint, GET_OR_ERROR, &["audit-outage", "seg/1"]);
    assert_eq!(after["body"], "before", "{after}");
    // And it still takes writes (and still refuses to overwrite).
    let put2 = boto3_json(&endpoint, PUT_LOCKED, &["audit-outage", "seg/3", "after"]);
    assert!(put2["version"].is_string(), "{put2}");
    assert!(put["version"].is_string(), "{put}");
}

#[test]
fn a_paused_server_times_out_and_loses_nothing() {
    let mut s3 = S3Server::start();
    let endpoint = s3.endpoint();
    s3.create_locked_bucket("audit-pause");
    boto3_json(&endpoint, PUT_LOCKED, &["audit-pause", "seg/1", "before"]);

    s3.pause();
    assert!(s3.is_paused());
    // SIGSTOP is delivered asynchronously: a process on another CPU can still be in state R
    // for a moment after kill() returned. Wait for the stop (bounded) instead of looking once.
    let stat_path = format!("/proc/{}/stat", s3.pid());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stat = std::fs::read_to_string(&stat_path).unwrap();
    while !stat.contains(") T ") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        stat = std::fs::read_to_string(&stat_path).unwrap();
    }
    assert!(
        stat.contains(") T "),
        "LocalStack is not stopped after 5 s: {stat}"
    );
    let t0 = Instant::now();
    let during = boto3_json(&endpoint, GET_OR_ERROR, &["audit-pause", "seg/1", "2"]);
    assert_eq!(during["error"], "ReadTimeoutError", "{during}");
    assert!(t0.elapsed() < Duration::from_secs(30));

    s3.resume();
    let after = boto3_json(&endpoint, GET_OR_ERROR, &["audit-pause", "seg/1"]);
    assert_eq!(after["body"], "before", "{after}");
}

#[test]
fn drop_kills_the_server_and_removes_its_folder() {
    let mut s3 = S3Server::start();
    s3.pause(); // SIGKILL must also end a stopped process
    let pid = s3.pid();
    let dir = s3.dir().to_path_buf();
    let port = s3.port();
    assert!(dir.join("localstack.log").exists());
    drop(s3);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true),
        "LocalStack pid {pid} still running after drop"
    );
    assert!(!dir.exists(), "{} not removed", dir.display());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}
