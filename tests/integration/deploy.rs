//! The files in `deploy/`, checked with the tools their users run: `promtool` (Debian package
//! `prometheus`) on the alert rules and their unit tests and on every dashboard query,
//! `kubernetes-validate` on the manifests, `hadolint` on the container file, the Compose
//! specification's schema on the compose file, `systemd-analyze` on the unit, and
//! `auditgate check-config` on every configuration shipped there. Each check is also shown to
//! fail on a broken copy, so a check that silently passes everything would be caught.
//!
//! The Python tools live in `.venv-deploy` (scripts/test-env.sh); a missing tool is a panic
//! that says how to install it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{repo_root, run_auditgate};

fn deploy(path: &str) -> PathBuf {
    repo_root().join("deploy").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A tool from `.venv-deploy/bin`, or a system path; panics with the install hint if missing.
fn tool(name: &str) -> PathBuf {
    let path = match name {
        "promtool" => PathBuf::from("/usr/bin/promtool"),
        "systemd-analyze" => PathBuf::from("/usr/bin/systemd-analyze"),
        other => repo_root().join(".venv-deploy/bin").join(other),
    };
    assert!(
        path.exists(),
        "{} is missing: run scripts/test-env.sh (it builds .venv-deploy), and install the \
         Debian packages prometheus and systemd (.ci/run does)",
        path.display()
    );
    path
}

fn run(program: &Path, args: &[&str], dir: &Path) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The metric names the README's metrics table documents.
fn documented_metrics() -> BTreeSet<String> {
    read(&repo_root().join("README.md"))
        .lines()
        .filter_map(|l| l.strip_prefix("| `auditgate_"))
        .filter_map(|l| l.split('`').next())
        .map(|n| format!("auditgate_{n}"))
        .collect()
}

/// Every `auditgate_*` name in `text`, with histogram suffixes taken off.
fn metrics_used(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("auditgate_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            used.insert(text[start..end].to_string());
        }
        i = end;
    }
    used
}

fn assert_metrics_exist(what: &str, used: &BTreeSet<String>) {
    let documented = documented_metrics();
    assert!(!used.is_empty(), "{what} uses no auditgate metric");
    for name in used {
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| documented.contains(*b)))
            .unwrap_or(name);
        assert!(
            documented.contains(base),
            "{what} uses {name}, which auditgate does not export"
        );
    }
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests_fire_backlog_and_heartbeat_alerts() {
    let promtool = tool("promtool");
    let dir = deploy("prometheus");
    let out = run(&promtool, &["check", "rules", "alerts.yml"], &dir);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&promtool, &["test", "rules", "alerts_test.yml"], &dir);
    assert!(out.status.success(), "{}", text(&out));
    assert_metrics_exist("alerts.yml", &metrics_used(&read(&dir.join("alerts.yml"))));
    let tests = read(&dir.join("alerts_test.yml"));
    for alert in [
        "AuditgateArchiveBacklogOld",
        "AuditgateCheckpointHeartbeatMissing",
        "AuditgateJournalRefusingWrites",
        "AuditgateDown",
    ] {
        assert!(tests.contains(alert), "alerts_test.yml tests {alert}");
    }

    // The unit tests bite: a backlog threshold of a day instead of an hour fails them.
    let copy = tempfile::tempdir().unwrap();
    let alerts = read(&dir.join("alerts.yml"));
    let loosened = alerts.replacen(
        "auditgate_archive_oldest_unshipped_age_seconds > 3600",
        "auditgate_archive_oldest_unshipped_age_seconds > 86400",
        1,
    );
    assert_ne!(loosened, alerts);
    std::fs::write(copy.path().join("alerts.yml"), loosened).unwrap();
    std::fs::write(copy.path().join("alerts_test.yml"), &tests).unwrap();
    let out = run(
        &promtool,
        &["test", "rules", "alerts_test.yml"],
        copy.path(),
    );
    assert!(
        !out.status.success(),
        "promtool test passed a broken rule:\n{}",
        text(&out)
    );
}

#[test]
fn every_dashboard_query_parses_and_uses_exported_metrics() {
    let promtool = tool("promtool");
    let dashboard: Value =
        serde_json::from_str(&read(&deploy("grafana/dashboards/auditgate.json"))).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 30, "{} queries", exprs.len());
    assert_metrics_exist("the dashboard", &metrics_used(&exprs.join("\n")));
    // promtool parses PromQL in rule files: one recording rule per query, with Grafana's
    // variables filled in.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("queries.yml"), &rules).unwrap();
    let out = run(&promtool, &["check", "rules", "queries.yml"], dir.path());
    assert!(out.status.success(), "{}\n{rules}", text(&out));
    // ... and it refuses a query that does not parse.
    std::fs::write(
        dir.path().join("broken.yml"),
        "groups:\n  - name: b\n    rules:\n      - record: x\n        expr: \"sum(rate(auditgate_requests_total[5m])\"\n",
    )
    .unwrap();
    let out = run(&promtool, &["check", "rules", "broken.yml"], dir.path());
    assert!(!out.status.success(), "{}", text(&out));
}

const CORE_MANIFESTS: [&str; 8] = [
    "namespace.yaml",
    "serviceaccount.yaml",
    "configmap.yaml",
    "secret.yaml",
    "service.yaml",
    "statefulset.yaml",
    "poddisruptionbudget.yaml",
    "networkpolicy.yaml",
];

#[test]
fn kubernetes_manifests_validate_against_the_kubernetes_schemas() {
    let validate = tool("kubernetes-validate");
    let dir = deploy("kubernetes");
    let mut args = vec!["--strict"];
    args.extend(CORE_MANIFESTS);
    let out = run(&validate, &args, &dir);
    assert!(out.status.success(), "{}", text(&out));
    let report = text(&out);
    for kind in [
        "statefulset/auditgate",
        "service/auditgate-headless",
        "poddisruptionbudget/auditgate",
        "configmap/auditgate",
        "secret/auditgate-checkpoint-keys",
        "networkpolicy/auditgate-ingress",
        "networkpolicy/ehr-only-from-auditgate",
    ] {
        assert!(
            report.contains(&format!("passed for resource {kind}")),
            "{report}"
        );
    }
    // Every manifest is listed in the kustomization.
    let kustomization = read(&dir.join("kustomization.yaml"));
    for file in CORE_MANIFESTS {
        assert!(kustomization.contains(&format!("- {file}")), "{file}");
    }
    // What the issue asks of the StatefulSet.
    let sts = read(&dir.join("statefulset.yaml"));
    for needle in [
        "volumeClaimTemplates",
        "path: /healthz",
        "path: /readyz",
        "terminationGracePeriodSeconds: 90",
        "prometheus.io/scrape",
        "requests:",
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        // The key is installed mode 0600: the gateway refuses one others can read.
        "--install-from",
    ] {
        assert!(sts.contains(needle), "statefulset.yaml lacks {needle}");
    }
    // The grace period outlasts the gateway's own shutdown.
    let config = configmap_toml();
    // Only the ingress is a trusted proxy, never the whole pod network.
    let trusted = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("trusted_proxies = "))
        .expect("trusted_proxies in the ConfigMap");
    for cidr in trusted.trim_matches(['[', ']']).split(',') {
        let prefix: u8 = cidr
            .trim()
            .trim_matches('"')
            .split('/')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            prefix >= 24,
            "trusted_proxies {cidr} is wider than an ingress"
        );
    }
    let number = |key: &str| -> u64 {
        config
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("{key} in the ConfigMap"))
            .parse()
            .unwrap()
    };
    assert!(
        number("shutdown_delay_secs") + number("drain_timeout_secs") + 15 <= 90,
        "terminationGracePeriodSeconds must exceed the delay, the drain and the seal"
    );

    // The schema check bites: a misspelt field is refused.
    let copy = tempfile::tempdir().unwrap();
    std::fs::write(
        copy.path().join("statefulset.yaml"),
        sts.replace(
            "terminationGracePeriodSeconds",
            "terminationGracePeriodSecond",
        ),
    )
    .unwrap();
    let out = run(&validate, &["--strict", "statefulset.yaml"], copy.path());
    assert!(!out.status.success(), "{}", text(&out));
}

/// The auditgate.toml embedded in the ConfigMap.
fn configmap_toml() -> String {
    let yaml = read(&deploy("kubernetes/configmap.yaml"));
    let (_, body) = yaml.split_once("auditgate.toml: |\n").unwrap();
    body.lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l.trim_start()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_container_file_passes_hadolint_and_the_compose_file_the_compose_spec() {
    let hadolint = tool("hadolint");
    let root = repo_root();
    let out = run(&hadolint, &["deploy/container/Dockerfile"], &root);
    assert!(out.status.success(), "{}", text(&out));
    let dockerfile = read(&deploy("container/Dockerfile"));
    for needle in [
        "AS build",
        "USER 65532",
        "VOLUME",
        "HEALTHCHECK",
        "auditgate\", \"health\"",
    ] {
        assert!(dockerfile.contains(needle), "Dockerfile lacks {needle}");
    }
    // hadolint bites: an unpinned base image and `apt-get` without cleanup are flagged.
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(
        bad.path().join("Dockerfile"),
        "FROM debian:latest\nRUN apt-get update && apt-get install -y curl\n",
    )
    .unwrap();
    let out = run(&hadolint, &["Dockerfile"], bad.path());
    assert!(!out.status.success(), "{}", text(&out));

    let schema = tool("check-jsonschema");
    let out = run(
        &schema,
        &[
            "--builtin-schema",
            "vendor.compose-spec",
            "deploy/compose/compose.yaml",
        ],
        &root,
    );
    assert!(out.status.success(), "{}", text(&out));
    let compose = read(&deploy("compose/compose.yaml"));
    for service in ["auditgate:", "fhir:", "s3:", "prometheus:", "grafana:"] {
        assert!(
            compose.contains(&format!("\n  {service}")),
            "compose lacks {service}"
        );
    }
    std::fs::write(
        bad.path().join("compose.yaml"),
        compose.replace("stop_grace_period", "stop_grace_periods"),
    )
    .unwrap();
    let out = run(
        &schema,
        &["--builtin-schema", "vendor.compose-spec", "compose.yaml"],
        bad.path(),
    );
    assert!(!out.status.success(), "{}", text(&out));
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let analyze = tool("systemd-analyze");
    let unit = read(&deploy("systemd/auditgate.service"));
    // `verify` checks that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auditgate.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/auditgate", env!("CARGO_BIN_EXE_auditgate")),
    )
    .unwrap();
    let unit_path = path.to_str().unwrap();
    let out = run(&analyze, &["verify", "--man=no", unit_path], dir.path());
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "{}",
        text(&out)
    );
    let out = run(
        &analyze,
        &["security", "--offline=true", "--no-pager", unit_path],
        dir.path(),
    );
    let report = text(&out);
    let score: f64 = report
        .lines()
        .find_map(|l| l.split("exposure level for auditgate.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(
        score <= 2.0,
        "exposure {score} (want OK, at most 2.0):\n{report}"
    );
    for needle in [
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/auditgate",
        "NoNewPrivileges=true",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=auditgate",
    ] {
        assert!(unit.contains(needle), "the unit lacks {needle}");
    }
    // `verify` bites: an unknown setting is reported.
    std::fs::write(
        &path,
        format!("{}\n[Service]\nProtectSystm=strict\n", read(&path)),
    )
    .unwrap();
    let out = run(&analyze, &["verify", "--man=no", unit_path], dir.path());
    assert!(
        !out.status.success() || !text(&out).trim().is_empty(),
        "a misspelt setting passed"
    );
}

/// Write `config` to a temp dir with the deploy paths pointed at the repository and the temp
/// dir, then run `auditgate check-config` on it: (exit code, output).
fn check_config(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let rules = repo_root().join("rules");
    let config = config
        .replace("/etc/auditgate/rules", rules.to_str().unwrap())
        .replace("/var/lib/auditgate", dir.path().to_str().unwrap())
        .replace("/etc/auditgate/keys", dir.path().to_str().unwrap());
    let path = dir.path().join("auditgate.toml");
    std::fs::write(&path, config).unwrap();
    let (code, out, err) = run_auditgate(&["check-config", "--config", path.to_str().unwrap()]);
    (code, format!("{out}{err}"))
}

#[test]
fn every_configuration_in_deploy_passes_check_config() {
    for (name, config) in [
        ("compose", read(&deploy("compose/auditgate.toml"))),
        ("kubernetes ConfigMap", configmap_toml()),
    ] {
        let (code, out) = check_config(&config);
        assert_eq!(code, 0, "{name}: {out}");
    }
    // The documented example, where it is (its paths are relative to config/).
    let example = repo_root().join("config/auditgate.example.toml");
    let (code, out, err) = run_auditgate(&["check-config", "--config", example.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    // ... and check-config bites.
    let (code, out) = check_config(&format!(
        "{}\n[admin]\nlisten_addr = \"x\"\n",
        read(&deploy("compose/auditgate.toml"))
    ));
    assert_eq!(code, 2, "{out}");
}

#[test]
fn the_bucket_guide_gives_valid_policies_without_delete_rights() {
    let guide = read(&deploy("BUCKET.md"));
    let blocks: Vec<Value> = guide
        .split("```json\n")
        .skip(1)
        .map(|rest| {
            let json = rest.split("```").next().unwrap();
            serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}:\n{json}"))
        })
        .collect();
    assert_eq!(
        blocks.len(),
        3,
        "gateway policy, trust policy, bucket policy"
    );
    let gateway_actions: Vec<String> = blocks[0]["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["Action"].as_array().unwrap().iter())
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    for needed in [
        "s3:PutObject",
        "s3:PutObjectRetention",
        "s3:GetObjectRetention",
        "s3:GetBucketObjectLockConfiguration",
        "s3:ListBucketVersions",
    ] {
        assert!(gateway_actions.iter().any(|a| a == needed), "{needed}");
    }
    assert!(
        !gateway_actions
            .iter()
            .any(|a| a.contains("Delete") || a.contains("Bypass") || a.ends_with('*')),
        "the gateway's policy grants no delete or bypass: {gateway_actions:?}"
    );
    assert!(guide.contains("--object-lock-enabled-for-bucket"));
    assert!(guide.contains("\"Mode\":\"COMPLIANCE\""));
}
