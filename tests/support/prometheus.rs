//! A real Prometheus server (the Debian package `prometheus`, installed by `.ci/run`) scraping a
//! gateway's admin listener, for tests that read series back through Prometheus' HTTP API.
//!
//! One process per instance on a free `127.0.0.1` port, its TSDB in a temp dir, killed by PID
//! on drop. A missing binary is a panic that says how to install it, never a skip.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{free_port, http_client, wait_for_port};

/// Where Debian installs it; `AUDITGATE_TEST_PROMETHEUS` overrides.
fn binary() -> PathBuf {
    std::env::var_os("AUDITGATE_TEST_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"))
}

pub struct PrometheusServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl PrometheusServer {
    /// Start Prometheus scraping `127.0.0.1:{target_port}/metrics` every second.
    pub fn start(target_port: u16) -> PrometheusServer {
        let bin = binary();
        assert!(
            bin.exists(),
            "{} is missing: install the Debian package `prometheus` (apt-get install -y \
             prometheus; .ci/run does) or set AUDITGATE_TEST_PROMETHEUS",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: auditgate\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let server = PrometheusServer { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !wait_for_port(port, Duration::from_millis(200)) {
            assert!(
                Instant::now() < deadline,
                "prometheus did not listen in 30 s:\n{}",
                server.log()
            );
        }
        server
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query; the value of each result series, with its labels.
    pub fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let resp: Value = http_client()
            .get(format!(
                "http://127.0.0.1:{}/api/v1/query?{}",
                self.port,
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("query", promql)
                    .finish()
            ))
            .send()
            .and_then(|r| r.json())
            .unwrap_or_else(|e| panic!("query {promql}: {e}"));
        assert_eq!(resp["status"], "success", "{promql}: {resp}");
        resp["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let v: f64 = r["value"][1].as_str().unwrap().parse().unwrap();
                (r["metric"].clone(), v)
            })
            .collect()
    }

    /// Wait (up to 30 s) until `promql` has a series whose value satisfies `ok`; returns it.
    pub fn wait_for(&self, promql: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((_, v)) = self.query(promql).into_iter().find(|(_, v)| ok(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{promql} never satisfied the condition; last: {:?}\n{}",
                self.query(promql),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
