//! `bare-proxy`: the smallest pingora 0.9 reverse proxy, the baseline of `benches/http.sh`.
//!
//! It forwards every request unchanged to one plain-HTTP upstream: a `ProxyHttp` with only
//! `upstream_peer`. No identity, rules or journal. Its server settings mirror the gateway's
//! (`src/server.rs`): same pingora version, `threads`, h2c on, the same peer timeouts as the
//! `[upstream]` defaults, so the difference between the two is the cost of auditing itself.
//!
//! ```text
//! cargo build --release --example bare-proxy
//! target/release/examples/bare-proxy LISTEN_ADDR UPSTREAM_ADDR [THREADS]
//! target/release/examples/bare-proxy 127.0.0.1:6190 127.0.0.1:8000 2
//! ```
//!
//! THREADS defaults to 2 (the gateway's `server.threads` in the benchmark). The PID file and
//! upgrade socket go to the system temp directory, named after the listening port.
//!
//! With a fourth argument, SYNC_FILE, it is the floor of per-request durability instead (target
//! (h) of `benches/http.sh`): before each response head is released it writes 1 KiB to SYNC_FILE
//! (preallocated, zero-filled, 64 MiB, written round) and calls `fdatasync`, inline on the worker
//! thread: no journal, no hashing, no other thread to wake. The cheapest way to make one record
//! per request durable before answering; only meaningful at a moderate load (no group commit).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark peer that cannot start has nothing to measure: it stops with the reason"
)]

use std::process::ExitCode;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;

/// The passthrough: every request goes to `upstream`.
struct BareProxy {
    upstream: String,
    /// SYNC_FILE: one durable 1 KiB write per request before its response head.
    sync: Option<SyncFile>,
}

/// A preallocated file written 1 KiB at a time, round, each write followed by `fdatasync`.
struct SyncFile {
    file: std::fs::File,
    next_block: std::sync::atomic::AtomicU64,
}

const SYNC_FILE_BYTES: u64 = 64 << 20;
const SYNC_RECORD: [u8; 1024] = [b'x'; 1024];

impl SyncFile {
    fn create(path: &str) -> std::io::Result<SyncFile> {
        use std::io::Write;
        let mut file = std::fs::File::create(path)?;
        // Zero-filled and synced, as the gateway's segments are: a write then only changes
        // data, never the file's size or block map.
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..SYNC_FILE_BYTES >> 20 {
            file.write_all(&zeros)?;
        }
        file.sync_all()?;
        Ok(SyncFile {
            file,
            next_block: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn write_durably(&self) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let block = self
            .next_block
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let offset = (block * 1024) % SYNC_FILE_BYTES;
        self.file.write_all_at(&SYNC_RECORD, offset)?;
        self.file.sync_data()
    }
}

#[async_trait]
impl ProxyHttp for BareProxy {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        if let Some(sync) = &self.sync {
            sync.write_durably()
                .map_err(|e| Error::because(ErrorType::InternalError, "fdatasync", e))?;
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        // The same peer settings as the gateway's `upstream_peer` with default `[upstream]`.
        let mut peer = HttpPeer::new(self.upstream.as_str(), false, String::new());
        peer.options.connection_timeout = Some(Duration::from_millis(2_000));
        peer.options.read_timeout = Some(Duration::from_millis(60_000));
        peer.options.write_timeout = Some(Duration::from_millis(60_000));
        peer.options.idle_timeout = Some(Duration::from_millis(60_000));
        Ok(Box::new(peer))
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: bare-proxy LISTEN_ADDR UPSTREAM_ADDR [THREADS [SYNC_FILE]]");
    eprintln!("example: bare-proxy 127.0.0.1:6190 127.0.0.1:8000 2");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 || args.len() > 4 {
        return usage();
    }
    let (listen, upstream) = (&args[0], &args[1]);
    let Ok(listen_addr) = listen.parse::<std::net::SocketAddr>() else {
        eprintln!("bare-proxy: `{listen}` is not an IP:port address");
        return usage();
    };
    if upstream.parse::<std::net::SocketAddr>().is_err() {
        eprintln!("bare-proxy: `{upstream}` is not an IP:port address");
        return usage();
    }
    let threads = match args.get(2).map(|t| t.parse::<usize>()) {
        None => 2,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("bare-proxy: THREADS must be a positive integer");
            return usage();
        }
    };

    let sync = match args.get(3).map(|path| SyncFile::create(path)) {
        None => None,
        Some(Ok(sync)) => Some(sync),
        Some(Err(e)) => {
            eprintln!("bare-proxy: SYNC_FILE: {e}");
            return ExitCode::from(2);
        }
    };
    let durable = if sync.is_some() {
        ", a 1 KiB write + fdatasync per response"
    } else {
        ""
    };

    let tmp = std::env::temp_dir();
    let port = listen_addr.port();
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: tmp
            .join(format!("bare-proxy-{port}.pid"))
            .to_string_lossy()
            .into_owned(),
        upgrade_sock: tmp
            .join(format!("bare-proxy-{port}-upgrade.sock"))
            .to_string_lossy()
            .into_owned(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    let mut service = pingora::proxy::ProxyServiceBuilder::new(
        &server.configuration,
        BareProxy {
            upstream: upstream.clone(),
            sync,
        },
    )
    .name("bare-proxy")
    .server_options(options)
    .build();
    service.add_tcp(listen);
    server.add_service(service);
    eprintln!("bare-proxy: {listen} -> {upstream}, {threads} threads{durable}");
    server.run_forever()
}
