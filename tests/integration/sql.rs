//! The documented SQL (`deploy/sql/`) against an archive the real gateway wrote: the standard
//! questions run in DuckDB and in Spark (local mode) give exactly the answers of
//! `auditgate query`; the Athena and Trino statements parse with those dialects' grammars
//! (sqlglot), which refuse a broken statement.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use auditgate::record::Record;
use serde_json::{json, Value};

use crate::support::gateway::{public_key_of, Gateway, GatewayOptions};
use crate::support::{http_client, repo_root, FhirServer};

const PREFIX: &str = "sqltest";

/// The Python of `.venv-sql` (duckdb, pyspark, sqlglot), made by `scripts/test-env.sh`.
fn sql_python() -> PathBuf {
    let python = repo_root().join(".venv-sql/bin/python");
    assert!(
        python.exists() && repo_root().join(".venv-sql/.auditgate-test-env").exists(),
        "{} not found: the SQL part of the integration-test kit is not installed: run \
         scripts/test-env.sh from the repository root (it makes .venv-sql from \
         tests/requirements-sql.txt; Spark also needs a Java 17+ runtime)",
        python.display()
    );
    python
}

fn run_python(script: &str, args: &[&str]) -> String {
    let out = Command::new(sql_python())
        .arg("-c")
        .arg(script)
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("SPARK_LOCAL_IP", "127.0.0.1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const PARSE: &str = r#"
import sys, sqlglot
from sqlglot.errors import ParseError
root = sys.argv[1]
for name, dialect in [("athena-parquet.sql", "athena"), ("athena-json.sql", "athena"),
                      ("trino.sql", "trino"), ("questions-trino.sql", "trino"),
                      ("questions-trino.sql", "athena")]:
    text = open(f"{root}/{name}").read()
    statements = [s for s in sqlglot.parse(text, read=dialect, error_level=sqlglot.ErrorLevel.RAISE) if s]
    print(name, dialect, len(statements), " ".join(type(s).__name__ for s in statements))
# A broken statement is refused (or, for syntax sqlglot does not model, parsed as an opaque
# Command, which the checks above would show instead of Create or Select).
for dialect, broken in [("athena", "CREATE EXTERNAL TABLE t (a array<string) STORED AS PARQUET"),
                        ("trino", "CREATE TABLE t (a bigint b varchar)"),
                        ("trino", "SELECT a FROM t WHERE contains(x, 'y'")]:
    try:
        parsed = sqlglot.parse(broken, read=dialect, error_level=sqlglot.ErrorLevel.RAISE)
        kinds = {type(s).__name__ for s in parsed if s}
        print("refused" if kinds == {"Command"} else f"ACCEPTED {broken}")
    except ParseError:
        print("refused")
"#;

#[test]
fn athena_and_trino_statements_parse_with_their_dialects() {
    let out = run_python(PARSE, &[repo_root().join("deploy/sql").to_str().unwrap()]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "athena-parquet.sql athena 1 Create",
            "athena-json.sql athena 1 Create",
            "trino.sql trino 3 Create Create Create",
            "questions-trino.sql trino 6 Select Select Select Select Select Select",
            "questions-trino.sql athena 6 Select Select Select Select Select Select",
            "refused",
            "refused",
            "refused",
        ],
        "{out}"
    );
}

/// Runs each question of a dialect's file with its placeholders filled, and prints one JSON
/// object: question name -> rows (lists).
const QUESTIONS: &str = r#"
import json, sys
engine, sql_dir, root, params = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
text = open(f"{sql_dir}/questions-{engine}.sql").read()
questions = {}
for part in text.split("-- name: ")[1:]:
    name, body = part.split("\n", 1)
    for key, value in params.items():
        body = body.replace("{" + key + "}", value)
    questions[name.strip()] = body.strip().rstrip(";")
setup = open(f"{sql_dir}/duckdb.sql").read().replace("ARCHIVE/PREFIX", root)
def plain(v):
    if hasattr(v, "isoformat"):
        return v.isoformat()[:10]
    return v
answers = {}
if engine == "duckdb":
    import duckdb
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(setup)
    for name, sql in questions.items():
        rows = con.execute(sql).fetchall()
        answers[name] = [[plain(v) for v in row] for row in rows]
else:
    sys.path.insert(0, sql_dir)
    from pyspark.sql import SparkSession
    import spark as auditgate_spark
    spark = (SparkSession.builder.master("local[2]").appName("auditgate-test")
             .config("spark.ui.enabled", "false")
             .config("spark.driver.bindAddress", "127.0.0.1")
             .config("spark.driver.host", "127.0.0.1")
             .config("spark.sql.session.timeZone", "UTC").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    auditgate_spark.auditgate_records(spark, root)
    for name, sql in questions.items():
        rows = spark.sql(sql).collect()
        answers[name] = [[plain(v) for v in row] for row in rows]
    spark.stop()
print(json.dumps(answers))
"#;

fn traffic(gw: &Gateway) {
    let client = http_client();
    let users = ["dr-a", "dr-b", "nurse-c"];
    let tokens: Vec<String> = users.iter().map(|u| gw.token(u)).collect();
    let paths = [
        "/fhir/Patient/example",
        "/fhir/Patient/pat1",
        "/fhir/Patient/pat2",
        "/fhir/Observation?patient=example",
    ];
    for i in 0..90 {
        let resp = client
            .get(gw.url(paths[i % paths.len()]))
            .bearer_auth(&tokens[i % tokens.len()])
            .header("X-Forwarded-For", format!("10.1.0.{}", i % 5))
            .header("X-Device-Id", format!("dev-{}", i % 4))
            .send()
            .unwrap();
        assert!(
            resp.status().is_success() || resp.status() == 404,
            "{}",
            resp.status()
        );
    }
}

/// `auditgate query --format jsonl` over the archive alone: the records.
fn query(archive: &Path, key: &Path, args: &[&str]) -> Vec<Record> {
    let out = Command::new(env!("CARGO_BIN_EXE_auditgate"))
        .args(["query", "--archive"])
        .arg(archive)
        .args(["--prefix", PREFIX, "--key"])
        .arg(key)
        .args(["--format", "jsonl"])
        .args(args)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ids(records: &[Record]) -> Value {
    json!(records
        .iter()
        .map(|r| json!([r.header.node, r.header.seq]))
        .collect::<Vec<_>>())
}

#[test]
fn the_standard_questions_give_the_same_answers_in_duckdb_spark_and_auditgate_query() {
    let fhir = FhirServer::seeded();
    let archive = tempfile::tempdir().unwrap();
    let mut opts = GatewayOptions::new(format!("127.0.0.1:{}", fhir.port()));
    opts.journal_toml = "segment_max_bytes = 8192".into();
    opts.extra_toml = format!(
        "[archive]\nkind = \"dir\"\ndir = \"{}\"\nprefix = \"{PREFIX}\"\npoll_interval_secs = 1\n\
         [columnar]\nrow_group_records = 256\n",
        archive.path().display()
    );
    let start = SystemTime::now();
    let mut gw = Gateway::start(opts);
    traffic(&gw);
    // Everything sealed is shipped with its copy; then stop (the archive is what is asked).
    crate::columnar::wait_until_shipped(&gw);
    gw.terminate(Duration::from_secs(20));
    let key = public_key_of(&gw.journal);
    let root = archive.path().join(PREFIX);
    let copies = walk_count(&root.join("v1/columnar"), ".parquet");
    let segments = walk_count(&root.join("v1/node=test-gw"), ".jsonl.zst");
    assert!(
        segments >= 3 && copies == segments,
        "{copies} copies of {segments} segments"
    );

    let day = |t: SystemTime| auditgate::record::format_ts(t)[..10].to_string();
    let since_t = start - Duration::from_secs(3600);
    let until_t = SystemTime::now() + Duration::from_secs(3600);
    let since = format!("{}Z", &auditgate::record::format_ts(since_t)[..19]);
    let until = format!("{}Z", &auditgate::record::format_ts(until_t)[..19]);
    let first_day = day(since_t - Duration::from_secs(86_400));
    let params = json!({
        "patient": "example", "user": "dr-a", "ip": "10.1.0.3", "device": "dev-2",
        "since": since, "until": until, "first_day": first_day, "last_day": day(until_t),
    });
    let window = ["--since", &since, "--until", &until];

    // auditgate query's answers.
    let with_window = |extra: &[&str]| {
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(window);
        query(archive.path(), &key, &args)
    };
    let patient = with_window(&["--patient", "example"]);
    let user = with_window(&["--user", "dr-a"]);
    let by_ip = with_window(&["--ip", "10.1.0.3"]);
    let by_device = with_window(&["--device", "dev-2"]);
    let all = with_window(&[]);
    assert!(!patient.is_empty() && !user.is_empty() && !by_ip.is_empty() && !by_device.is_empty());
    let mut breach_patients: Vec<String> = by_ip
        .iter()
        .flat_map(|r| r.event.patients.iter().map(|p| p.id.clone()))
        .collect();
    breach_patients.sort();
    breach_patients.dedup();
    let mut per_day: std::collections::BTreeMap<
        (String, String),
        std::collections::BTreeSet<String>,
    > = Default::default();
    for r in &all {
        if let auditgate::record::Who::Authenticated(a) = &r.event.who {
            let set = per_day
                .entry((a.user.clone(), r.header.ts[..10].to_string()))
                .or_default();
            set.extend(r.event.patients.iter().map(|p| p.id.clone()));
        }
    }
    let expected = json!({
        "patient_access": ids(&patient),
        "user_activity": ids(&user),
        "breach_by_ip": ids(&by_ip),
        "breach_patients_by_ip": breach_patients.iter().map(|p| json!([p])).collect::<Vec<_>>(),
        "breach_by_device": ids(&by_device),
        "patients_per_user_per_day": per_day
            .iter()
            .filter(|(_, set)| !set.is_empty())
            .map(|((u, d), set)| json!([u, d, set.len()]))
            .collect::<Vec<_>>(),
    });

    let sql_dir = repo_root().join("deploy/sql");
    for engine in ["duckdb", "spark"] {
        let out = run_python(
            QUESTIONS,
            &[
                engine,
                sql_dir.to_str().unwrap(),
                root.to_str().unwrap(),
                &params.to_string(),
            ],
        );
        let answers: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        let mut got = serde_json::Map::new();
        for (name, rows) in answers.as_object().unwrap() {
            // The record questions' first columns are ts, node, seq: keep node and seq.
            let rows: Vec<Value> = rows
                .as_array()
                .unwrap()
                .iter()
                .map(|row| {
                    let row = row.as_array().unwrap();
                    if name.starts_with("breach_patients") || name.starts_with("patients_per") {
                        json!(row)
                    } else {
                        json!([row[1], row[2]])
                    }
                })
                .collect();
            got.insert(name.clone(), json!(rows));
        }
        assert_eq!(Value::Object(got), expected, "{engine}");
    }
}

fn walk_count(dir: &Path, suffix: &str) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            n += walk_count(&path, suffix);
        } else if path.to_string_lossy().ends_with(suffix) {
            n += 1;
        }
    }
    n
}
