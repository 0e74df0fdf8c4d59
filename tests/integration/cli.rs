//! The command line itself: help, config checking with precise errors, exit codes, the demo.

use std::process::Command;

use crate::support::run_auditgate as auditgate;

#[test]
fn every_subcommand_has_help() {
    for sub in [
        &["--help"][..],
        &["run", "--help"],
        &["check-config", "--help"],
        &["verify", "--help"],
        &["demo", "--help"],
        &["keygen", "--help"],
        &["prove", "--help"],
        &["verify-proof", "--help"],
        &["rules", "--help"],
        &["rules", "explain", "--help"],
        &["rules", "test", "--help"],
        &["token", "--help"],
    ] {
        let (code, out, _) = auditgate(sub);
        assert_eq!(code, 0, "{sub:?}");
        assert!(out.contains("Usage"), "{sub:?}: {out}");
    }
}

#[test]
fn check_config_accepts_the_shipped_configs() {
    let root = env!("CARGO_MANIFEST_DIR");
    for file in ["config/quickstart.toml", "config/auditgate.example.toml"] {
        let (code, out, err) = auditgate(&["check-config", "--config", &format!("{root}/{file}")]);
        assert_eq!(code, 0, "{file}: {err}");
        assert!(
            out.contains("[upstream]"),
            "{file}: prints the effective config: {out}"
        );
    }
}

#[test]
fn rules_test_passes_on_the_shipped_rules_and_fails_on_a_wrong_expectation() {
    let root = env!("CARGO_MANIFEST_DIR");
    // The shipped rule file's own cases, through the shipped quickstart config.
    let (code, out, err) = auditgate(&[
        "rules",
        "test",
        "--verbose",
        "--config",
        &format!("{root}/config/quickstart.toml"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("18 of 18 rule tests passed"), "{out}");

    // A rule file whose case expects the wrong patient: exit 1, and the failure says why.
    let dir = tempfile::tempdir().unwrap();
    let rules = std::fs::read_to_string(format!("{root}/rules/fhir-r4.toml")).unwrap();
    let wrong = rules.replacen(
        r#"patients = ["p1"], attribution = "complete" }"#,
        r#"patients = ["someone-else"], attribution = "complete" }"#,
        1,
    );
    assert_ne!(wrong, rules);
    std::fs::write(dir.path().join("fhir-r4.toml"), wrong).unwrap();
    let base = std::fs::read_to_string(format!("{root}/config/quickstart.toml")).unwrap();
    let config = dir.path().join("auditgate.toml");
    std::fs::write(
        &config,
        base.replace("../rules/fhir-r4.toml", "fhir-r4.toml"),
    )
    .unwrap();
    let (code, out, _) = auditgate(&["rules", "test", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  observation-read-subject-from-response")
            && out.contains(r#"patients: expected ["someone-else"], got ["p1"]"#),
        "{out}"
    );
}

#[test]
fn rules_explain_shows_each_patient_with_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let response = dir.path().join("bundle.json");
    std::fs::write(
        &response,
        r##"{"resourceType":"Bundle","type":"searchset","entry":[
            {"resource":{"resourceType":"Observation","subject":{"reference":"Patient/a"}}},
            {"resource":{"resourceType":"Observation","subject":{"reference":"Patient/b"},
             "contained":[{"resourceType":"Patient","id":"c"}],"performer":[{"reference":"#c"}]}}]}"##,
    )
    .unwrap();
    let (code, out, err) = auditgate(&[
        "rules",
        "explain",
        "GET",
        "http://gateway.example/fhir/Observation?code=1234-5",
        "--response",
        response.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let x: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(x["rule"], "fhir-search");
    assert_eq!(x["request"]["patients"], serde_json::json!([]));
    assert_eq!(
        x["outcome"]["patients"],
        serde_json::json!([{"id": "a", "source": "response"}, {"id": "b", "source": "response"}])
    );
    assert_eq!(x["outcome"]["attribution"], "partial");
    assert_eq!(
        x["outcome"]["gaps"],
        serde_json::json!(["contained_patient"])
    );
    let (code, out, _) = auditgate(&["rules", "explain", "PUT", "/fhir/Patient/p1"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("p1 (path)") && out.contains("fhir-patient-update"),
        "{out}"
    );
}

#[test]
fn check_config_names_an_unknown_key_and_a_bad_value() {
    let dir = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let base = std::fs::read_to_string(format!("{root}/config/quickstart.toml")).unwrap();
    let base = base.replace("../rules/", &format!("{root}/rules/"));

    let typo = dir.path().join("typo.toml");
    std::fs::write(
        &typo,
        base.replace("[journal]\n", "[journal]\nsegment_max_byte = 10\n"),
    )
    .unwrap();
    let (code, _, err) = auditgate(&["check-config", "--config", typo.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("segment_max_byte"), "{err}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, base.replace("http://127.0.0.1:8000", "ftp://ehr")).unwrap();
    let (code, _, err) = auditgate(&["check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("upstream.url"), "{err}");

    let (code, _, err) = auditgate(&["check-config", "--config", "/nonexistent/auditgate.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn verify_exit_code_2_when_it_cannot_run() {
    let (code, _, err) = auditgate(&["verify", "--journal", "/nonexistent/journal"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn run_refuses_to_start_without_its_keys() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(["run", "--config", &format!("{root}/config/quickstart.toml")])
        .env_remove("AUDITGATE_QUICKSTART_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AUDITGATE_QUICKSTART_SECRET"), "{err}");
}

#[test]
fn the_demo_runs_end_to_end_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let (code, out, err) = auditgate(&["demo", "--journal", journal.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("OK: every record hashes and chains"), "{out}");
    assert!(out.contains("-> 401"), "{out}");
    assert!(out.contains("-> 400"), "{out}");
    let records = crate::support::gateway::read_journal(&journal);
    assert!(records.len() >= 12, "{}", records.len());
}

/// The newcomer's path: the demo stays up with `--keep-running`, and the curl line it prints
/// (a real token for its gateway) gets a patient back, recorded in its journal; SIGTERM ends it,
/// and its temporary directory goes with it.
#[test]
fn the_demo_keeps_running_and_its_curl_line_works() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let temp = dir.path().join("tmp");
    std::fs::create_dir(&temp).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .env("TMPDIR", &temp)
        .args([
            "demo",
            "--keep-running",
            "--journal",
            journal.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let curl = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with("curl ") => break line,
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                panic!("the demo printed no curl line: {e}");
            }
        }
    };
    // curl -s -H 'Authorization: Bearer TOKEN' URL
    let token = curl
        .split("Bearer ")
        .nth(1)
        .and_then(|t| t.split('\'').next())
        .unwrap()
        .to_string();
    let url = curl.rsplit(' ').next().unwrap().to_string();
    let response = crate::support::http_client()
        .get(&url)
        .bearer_auth(&token)
        .send()
        .unwrap();
    let status = response.status().as_u16();
    let body = response.text().unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let exited = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = child.kill();
    }
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"resourceType\":\"Patient\""), "{body}");
    assert!(exited, "the demo did not stop on SIGTERM");
    let left: Vec<_> = std::fs::read_dir(&temp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "the demo left {left:?} in TMPDIR");
    let records = crate::support::gateway::read_journal(&journal);
    assert!(
        records
            .iter()
            .any(|r| serde_json::to_string(r).unwrap().contains("dr.you")),
        "the curl request is in the journal"
    );
}

/// `auditgate token` signs for the quickstart's issuer with the secret the quickstart reads
/// (that such a token verifies is the unit test `cli::token`'s; here: the shipped config, the
/// claims, the testing warning, and the refusal without the secret).
#[test]
fn token_mints_for_the_quickstart_issuer_and_refuses_without_its_secret() {
    let root = env!("CARGO_MANIFEST_DIR");
    let config = format!("{root}/config/quickstart.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(["token", "--config", &config, "--sub", "dr.newcomer"])
        .env(
            "AUDITGATE_QUICKSTART_SECRET",
            "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0xMjM0",
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "{token}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("FOR TESTING"));
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], "dr.newcomer");
    assert_eq!(claims["iss"], "https://quickstart.invalid");
    assert_eq!(claims["aud"], "auditgate");

    let out = Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(["token", "--config", &config, "--sub", "dr.newcomer"])
        .env_remove("AUDITGATE_QUICKSTART_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AUDITGATE_QUICKSTART_SECRET"));
}

#[test]
fn the_committed_compartment_table_matches_the_official_definition() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .arg(format!("{root}/scripts/gen-compartment.py"))
        .arg("--package")
        .arg(crate::support::examples_dir())
        .arg("--check")
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "rules/fhir-r4.toml is stale; rerun scripts/gen-compartment.py:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_loads_the_checkpoint_key_and_says_what_is_wrong_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let key = dir.path().join("checkpoint.key");
    let base = std::fs::read_to_string(format!("{root}/config/auditgate.example.toml"))
        .unwrap()
        .replace("../rules/", &format!("{root}/rules/"))
        .replace(
            "key_file = \"checkpoint.key\"",
            &format!("key_file = \"{}\"", key.display()),
        );
    let config = dir.path().join("c.toml");
    std::fs::write(&config, &base).unwrap();
    let config = config.to_str().unwrap();

    // Missing: valid config, with a warning that `run` would refuse.
    let (code, _, err) = auditgate(&["check-config", "--config", config]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("does not exist") && err.contains("keygen"),
        "{err}"
    );

    // Present and good: its public key is printed.
    let (code, out, err) = auditgate(&[
        "keygen",
        "--out",
        key.to_str().unwrap(),
        "--name",
        "auditgate/c",
    ]);
    assert_eq!(code, 0, "{err}");
    let public = out.lines().last().unwrap().to_string();
    let (code, out, err) = auditgate(&["check-config", "--config", config]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&public), "{out}");

    // Present but not a key: exit 2, saying why.
    std::fs::write(&key, "not a key\n").unwrap();
    let (code, _, err) = auditgate(&["check-config", "--config", config]);
    assert_eq!(code, 2);
    assert!(err.contains("PRIVATE+KEY+NAME+KEYID+BASE64"), "{err}");
}
