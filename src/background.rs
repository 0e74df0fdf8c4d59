//! Background work at low CPU priority: compressing segments for the archive and writing their
//! columnar copies are batch jobs that must not take CPU from requests.
//!
//! [`run_niced`] runs a closure on a thread of its own (off the async workers, which also
//! refresh JWKS keys and serve the admin listener) with its nice value raised by
//! [`NICENESS`], and hands the result back to async code.

use std::future::Future;

/// How much lower than the gateway's own threads background work runs (`nice`); it catches
/// up when requests leave CPU.
pub const NICENESS: i32 = 10;

/// Run `work` on a new thread named `name` at lower priority; the future resolves to its
/// result, or to an error if the thread could not start or died.
pub fn run_niced<T, F>(name: &str, work: F) -> impl Future<Output = std::io::Result<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            lower_this_threads_priority(NICENESS);
            let _ = tx.send(work());
        });
    async move {
        spawned?;
        rx.await
            .map_err(|_| std::io::Error::other("the background thread died"))
    }
}

/// Raise the calling thread's nice value by `by` (Linux: nice is per thread). Best effort.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // setpriority has no safe wrapper in std; it only changes this thread's priority.
pub fn lower_this_threads_priority(by: i32) {
    // SAFETY: plain syscalls with integer arguments; `gettid` cannot fail and `setpriority` on
    // the calling thread only affects its scheduling.
    unsafe {
        let tid = libc::gettid();
        let current = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, current + by);
    }
}

/// Raise the calling thread's nice value (a no-op where nice is not per thread).
#[cfg(not(target_os = "linux"))]
pub fn lower_this_threads_priority(_by: i32) {}
