//! The kernel clock's NTP discipline state, read with `adjtimex(2)` in read-only mode.
//!
//! Owns one question: is the clock that stamps records synchronised, and how far off may it be?
//! The answer goes into every record (`clock.synced`, `clock.max_error_ms`) so an auditor can
//! tell an accurate timestamp from a guess. Reading never changes the clock (`modes = 0`).
//! On a platform without `adjtimex` the state is reported as not synchronised.

use crate::record::ClockState;

/// `STA_UNSYNC` in `timex.status`: the kernel considers the clock unsynchronised.
const STA_UNSYNC: i64 = 0x0040;
/// `TIME_ERROR` return value of adjtimex: the clock is not synchronised.
const TIME_ERROR: i64 = 5;

/// Turn adjtimex's answer (return value, `status`, `maxerror` in µs) into the recorded state.
fn interpret(state: i64, status: i64, max_error_us: i64) -> ClockState {
    if state < 0 {
        // The call failed: nothing is known about the clock.
        return ClockState {
            synced: false,
            max_error_ms: u64::MAX / 1000,
        };
    }
    ClockState {
        synced: state != TIME_ERROR && (status & STA_UNSYNC) == 0,
        max_error_ms: (max_error_us.max(0) as u64).div_ceil(1000),
    }
}

/// Read the kernel's current clock state.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // adjtimex has no safe wrapper in a well-kept crate; the call is read-only.
pub fn read() -> ClockState {
    // SAFETY: `timex` is a plain C struct; zeroed is a valid value and `modes = 0` asks the
    // kernel only to fill it in. The pointer is valid for the duration of the call.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    tx.modes = 0;
    let state = unsafe { libc::adjtimex(&mut tx) };
    interpret(i64::from(state), i64::from(tx.status), tx.maxerror as i64)
}

/// Read the kernel's current clock state (non-Linux: unknown, reported as unsynchronised).
#[cfg(not(target_os = "linux"))]
pub fn read() -> ClockState {
    interpret(-1, 0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjtimex_answers_map_to_the_recorded_state() {
        // TIME_OK (0), status PLL only: synchronised, 1.5 ms rounds up to 2 ms.
        assert_eq!(
            interpret(0, 0x0001, 1_500),
            ClockState {
                synced: true,
                max_error_ms: 2
            }
        );
        // STA_UNSYNC set: not synchronised, whatever the state says.
        assert_eq!(
            interpret(0, 0x0041, 16_000_000),
            ClockState {
                synced: false,
                max_error_ms: 16_000
            }
        );
        // TIME_ERROR: not synchronised.
        assert!(!interpret(TIME_ERROR, 0, 10).synced);
        // A failed call says nothing good about the clock.
        assert!(!interpret(-1, 0, 0).synced);
    }

    #[test]
    fn the_kernel_answers_a_read_only_query() {
        let state = read();
        // The kernel bounds maxerror by NTP_PHASE_LIMIT (16 s) once it is unsynchronised.
        assert!(state.max_error_ms <= 16_000, "{state:?}");
    }
}
