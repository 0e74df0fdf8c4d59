//! Signals and drain: how the process stops without losing a record.
//!
//! SIGTERM makes `/readyz` fail at once and keeps serving for `server.shutdown_delay_secs` (so
//! a load balancer stops sending), then closes the listeners; SIGQUIT hands them to a new
//! process (zero-downtime upgrade); SIGINT stops now. Once the listeners are closed the drain
//! monitor waits for the last request in flight (at most `server.drain_timeout_secs`), then
//! closes the journal, sealing its open segment, and exits.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;

use crate::journal::Journal;

/// How long the clean stop waits for the journal to seal its open segment and store the
/// checkpoint, after the drain.
pub const JOURNAL_CLOSE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long no request must be in flight before the drain counts as done (a keep-alive
/// connection may still deliver one it had sent when the listeners closed).
const DRAIN_QUIET: Duration = Duration::from_millis(200);

/// Seal and close the journal, once per process; the exit code to use. The drain monitor and
/// the path after pingora's own shutdown may both get here: the second waits for the first
/// and reports its result.
pub(super) fn close_journal(journal: &Journal) -> i32 {
    static CLOSED: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    *CLOSED.get_or_init(|| close_journal_once(journal))
}

/// End the process with `code` once the journal is closed, first removing `remove` (the
/// directories the process made for itself: the demo's). Both ways out (the drain monitor, and
/// the path after pingora's own shutdown) end here.
pub(super) fn exit_after_close(code: i32, remove: &[std::path::PathBuf]) -> ! {
    for dir in remove {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            tracing::warn!(error = %e, dir = %dir.display(), "could not remove a temporary directory");
        }
    }
    std::process::exit(code)
}

fn close_journal_once(journal: &Journal) -> i32 {
    match journal.close(JOURNAL_CLOSE_TIMEOUT) {
        Ok(report) => {
            tracing::info!(
                head_seq = report.head_seq,
                sealed = report.sealed.is_some(),
                "auditgate stopped cleanly"
            );
            0
        }
        Err(e) => {
            tracing::error!(
                error = %e,
                category = e.category(),
                "the journal did not close cleanly; the next start recovers it"
            );
            1
        }
    }
}

/// The shutdown signals, with the SIGTERM delay during which `/readyz` already fails.
pub(super) struct Signals {
    pub(super) draining: Arc<AtomicBool>,
    pub(super) shutdown_delay: Duration,
}

#[async_trait::async_trait]
impl ShutdownSignalWatch for Signals {
    #[allow(
        clippy::expect_used,
        reason = "signal handlers install on pingora's runtime at start; a failure there is a \
                  start-up bug, not a run-time condition"
    )]
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let mut quit = signal(SignalKind::quit()).expect("SIGQUIT handler");
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = quit.recv() => {
                tracing::info!("SIGQUIT: handing the listeners to the new process, then draining");
                self.draining.store(true, Ordering::Release);
                ShutdownSignal::GracefulUpgrade
            }
            _ = term.recv() => {
                self.draining.store(true, Ordering::Release);
                tracing::info!(
                    delay_secs = self.shutdown_delay.as_secs(),
                    "SIGTERM: /readyz now fails; serving through the delay, then draining"
                );
                // SIGINT still means "now" during the delay.
                tokio::select! {
                    _ = tokio::time::sleep(self.shutdown_delay) => ShutdownSignal::GracefulTerminate,
                    _ = int.recv() => {
                        tracing::info!("SIGINT during the delay: stopping now, without a drain");
                        ShutdownSignal::FastShutdown
                    }
                }
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping now, without a drain");
                ShutdownSignal::FastShutdown
            }
        }
    }
}

/// Ends the process once the listeners are closed and no request is in flight: closes the
/// journal (sealing the open segment) and exits, instead of sleeping out pingora's fixed drain
/// period.
pub(super) struct DrainMonitor {
    pub(super) in_flight: Arc<AtomicUsize>,
    pub(super) draining: Arc<AtomicBool>,
    pub(super) journal: Journal,
    /// The flood summaries of the last interval, written before the journal closes.
    pub(super) summaries: crate::proxy::bounds::SummaryWriter,
    pub(super) drain_timeout: Duration,
    /// Removed at the exit ([`exit_after_close`]).
    pub(super) remove_at_exit: Vec<std::path::PathBuf>,
}

#[async_trait::async_trait]
impl BackgroundService for DrainMonitor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        self.draining.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        let mut quiet_since: Option<tokio::time::Instant> = None;
        // SIGINT (or a second SIGTERM) during the drain ends it at once.
        let mut hurry =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
        let mut again =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        loop {
            let now = tokio::time::Instant::now();
            let busy = self.in_flight.load(Ordering::Acquire);
            if busy == 0 {
                if now.duration_since(*quiet_since.get_or_insert(now)) >= DRAIN_QUIET {
                    tracing::info!("drained: no request in flight");
                    break;
                }
            } else {
                quiet_since = None;
            }
            if now >= deadline {
                tracing::warn!(
                    in_flight = busy,
                    "drain timeout: cutting off the requests still in flight"
                );
                break;
            }
            let interrupted = tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => false,
                Some(_) = async { hurry.as_mut()?.recv().await } => true,
                Some(_) = async { again.as_mut()?.recv().await } => true,
            };
            if interrupted {
                tracing::warn!(
                    in_flight = busy,
                    "asked again to stop: ending the drain now, cutting off the requests still in flight"
                );
                break;
            }
        }
        let journal = self.journal.clone();
        let summaries = self.summaries.clone();
        let code = tokio::task::spawn_blocking(move || {
            summaries.flush_blocking();
            close_journal(&journal)
        })
        .await
        .unwrap_or(1);
        exit_after_close(code, &self.remove_at_exit)
    }
}
