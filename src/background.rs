//! Background work at low priority: compressing segments for the archive and writing their
//! columnar copies are batch jobs that must not take CPU or disk from requests.
//!
//! [`run_niced`] runs a closure on a thread of its own (off the async workers, which also
//! refresh JWKS keys and serve the admin listener) with its nice value raised by
//! [`NICENESS`]: the archive's compression, which must keep shipping evidence under load.
//! [`run_idle`] runs it at idle priority ([`make_this_thread_idle`]): work that may wait
//! for a quiet moment (columnar copies, derived from segments already kept), so that under a
//! load that takes every core it takes (almost) nothing from the journal.

use std::future::Future;

/// How much lower than the gateway's own threads background work runs (`nice`); it catches
/// up when requests leave CPU.
pub const NICENESS: i32 = 10;

/// How a background thread is scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Nice [`NICENESS`]: a smaller share of the CPU than requests, never none.
    Niced,
    /// Idle CPU and I/O class: runs when the cores and the disk have nothing else to do.
    Idle,
}

/// Run `work` on a new thread named `name` at lower priority ([`Priority::Niced`]); the
/// future resolves to its result, or to an error if the thread could not start or died.
pub fn run_niced<T, F>(name: &str, work: F) -> impl Future<Output = std::io::Result<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    run_in_background(name, Priority::Niced, work)
}

/// Run `work` on a new thread named `name` at idle priority ([`Priority::Idle`]).
pub fn run_idle<T, F>(name: &str, work: F) -> impl Future<Output = std::io::Result<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    run_in_background(name, Priority::Idle, work)
}

/// Run `work` on a new thread named `name` scheduled as `priority`.
pub fn run_in_background<T, F>(
    name: &str,
    priority: Priority,
    work: F,
) -> impl Future<Output = std::io::Result<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            match priority {
                Priority::Niced => lower_this_threads_priority(NICENESS),
                Priority::Idle => make_this_thread_idle(),
            }
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

/// `ioprio_set` `which`: one thread.
#[cfg(target_os = "linux")]
const IOPRIO_WHO_PROCESS: libc::c_int = 1;
/// The idle I/O class (`IOPRIO_CLASS_IDLE`), in the class bits of an I/O priority.
#[cfg(target_os = "linux")]
const IOPRIO_IDLE: libc::c_int = 3 << 13;

/// Put the calling thread in the idle CPU class (`SCHED_IDLE`: it runs when a core has
/// nothing else to run) and the idle I/O class (served when the disk is otherwise idle, by
/// the I/O schedulers that honour classes: BFQ, mq-deadline). Best effort: where the idle
/// class is refused (a seccomp profile), the thread gets the lowest nice value instead.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // sched_setscheduler and ioprio_set have no safe wrapper in std.
pub fn make_this_thread_idle() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` outlives the call; pid 0 is the calling thread (Linux schedules
    // threads), so only its own scheduling changes. The ioprio_set syscall takes integers.
    let idle = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0;
    if !idle {
        lower_this_threads_priority(19);
    }
    // SAFETY: as above; a failure leaves the thread's I/O priority as it was.
    unsafe {
        libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, IOPRIO_IDLE);
    }
}

/// Lower the calling thread's priority as far as the platform allows.
#[cfg(not(target_os = "linux"))]
pub fn make_this_thread_idle() {
    lower_this_threads_priority(19);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)] // reading the calling thread's scheduling policy and I/O priority.
    fn policy_and_ioprio() -> (libc::c_int, libc::c_long) {
        // SAFETY: queries of the calling thread with integer arguments.
        unsafe {
            (
                libc::sched_getscheduler(0),
                libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0),
            )
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn idle_work_runs_in_the_idle_classes_and_niced_work_does_not() {
        let idle = run_idle("test-idle", policy_and_ioprio).await.unwrap();
        assert_eq!(idle.0, libc::SCHED_IDLE);
        assert_eq!(idle.1, IOPRIO_IDLE as libc::c_long);
        let niced = run_niced("test-niced", policy_and_ioprio).await.unwrap();
        assert_eq!(niced.0, libc::SCHED_OTHER);
        assert_ne!(niced.1, IOPRIO_IDLE as libc::c_long);
    }

    #[tokio::test]
    async fn work_hands_back_its_result() {
        assert_eq!(run_idle("test-result", || 6 * 7).await.unwrap(), 42);
    }
}
