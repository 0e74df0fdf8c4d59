//! The kernel clock's NTP discipline state, read with `adjtimex(2)` in read-only mode.
//!
//! Owns one question: is the clock that stamps records synchronised, and how far off may it be?
//! The answer goes into every record (`clock.synced`, `clock.max_error_ms`) so an auditor can
//! tell an accurate timestamp from a guess. Reading never changes the clock (`modes = 0`).
//! On a platform without `adjtimex` the state is reported as not synchronised.

use crate::record::ClockState;

/// `STA_UNSYNC` in `timex.status`: the kernel considers the clock unsynchronised.
#[cfg(target_os = "linux")]
const STA_UNSYNC: i32 = 0x0040;
/// `TIME_ERROR` return value of adjtimex: the clock is not synchronised.
#[cfg(target_os = "linux")]
const TIME_ERROR: i32 = 5;

/// Read the kernel's current clock state.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // adjtimex has no safe wrapper in a well-kept crate; the call is read-only.
pub fn read() -> ClockState {
    // SAFETY: `timex` is a plain C struct; zeroed is a valid value and `modes = 0` asks the
    // kernel only to fill it in. The pointer is valid for the duration of the call.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    tx.modes = 0;
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return ClockState {
            synced: false,
            max_error_ms: u64::MAX / 1000,
        };
    }
    let synced = state != TIME_ERROR && (tx.status & STA_UNSYNC) == 0;
    ClockState {
        synced,
        max_error_ms: (tx.maxerror.max(0) as u64).div_ceil(1000),
    }
}

/// Read the kernel's current clock state (non-Linux: unknown, reported as unsynchronised).
#[cfg(not(target_os = "linux"))]
pub fn read() -> ClockState {
    ClockState {
        synced: false,
        max_error_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reading_the_clock_state_does_not_fail() {
        let state = super::read();
        // Either answer is legitimate on a test machine; a synced clock must report a bound.
        if state.synced {
            assert!(state.max_error_ms < 16_000_000);
        }
    }
}
