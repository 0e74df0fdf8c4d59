//! The kernel clock's NTP discipline state, read with `adjtimex(2)` in read-only mode.
//!
//! Owns one question: is the clock that stamps records synchronised, and how far off may it be?
//! The answer goes into every record (`clock.synced`, `clock.max_error_ms`) so an auditor can
//! tell an accurate timestamp from a guess. Reading never changes the clock (`modes = 0`).
//! On a platform without `adjtimex` the state is reported as not synchronised.
//!
//! Also owns what happens when the clock cannot be trusted ([`ClockConfig`]): record the
//! state and warn (the default), or refuse requests with 503 for sites that require trusted
//! time. The first unsynchronised sample, and every change between synchronised and not, is
//! logged once (never per request).
//!
//! The gateway asks for the state on every request, so [`current`] answers from a sample at
//! most [`SAMPLE_MAX_AGE`] old (one `adjtimex` call per interval instead of two per request).
//! A sample's error bound is widened by the most the kernel lets it grow in the meantime
//! (the kernel adds 500 µs to `maxerror` at each second boundary, so 500 µs per started
//! second of the sample's age), so a cached answer claims no more accuracy than a fresh one
//! would, unless the NTP daemon itself lowers the bound in between.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::error::ConfigError;
use crate::record::ClockState;

/// `[clock]`: what to do when the clock that stamps records cannot be trusted.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClockConfig {
    /// When the kernel clock is not NTP-synchronised, or its maximum error is above
    /// `max_error_ms`: `record` (serve; every record says so; a warning is logged once) or
    /// `refuse` (answer 503 `clock_unsynchronised` / `clock_error_too_large`, with a record).
    #[serde(default)]
    pub unsynchronised: UnsyncPolicy,
    /// The largest maximum-error bound still trusted, in milliseconds; unset: only the
    /// synchronised flag counts.
    #[serde(default)]
    pub max_error_ms: Option<u64>,
}

/// See [`ClockConfig::unsynchronised`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnsyncPolicy {
    /// Record the request with the clock's state, and serve it (the default).
    #[default]
    Record,
    /// Refuse the request with 503 (recorded) while the clock is not synchronised.
    Refuse,
}

impl ClockConfig {
    /// Check the values are usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_error_ms == Some(0) {
            return Err(ConfigError::invalid(
                "clock.max_error_ms",
                "must be above 0 (no clock is exact)",
            ));
        }
        Ok(())
    }

    /// Why `state` cannot be trusted, if it cannot.
    pub fn distrust(&self, state: &ClockState) -> Option<&'static str> {
        if !state.synced {
            Some("clock_unsynchronised")
        } else if self
            .max_error_ms
            .is_some_and(|max| state.max_error_ms > max)
        {
            Some("clock_error_too_large")
        } else {
            None
        }
    }

    /// The reason to refuse a request stamped with `state`, under the `refuse` policy.
    pub fn refuses(&self, state: &ClockState) -> Option<&'static str> {
        match self.unsynchronised {
            UnsyncPolicy::Record => None,
            UnsyncPolicy::Refuse => self.distrust(state),
        }
    }
}

/// How old a cached clock sample may be before [`current`] takes a new one.
pub const SAMPLE_MAX_AGE: Duration = Duration::from_millis(250);

/// How much the kernel adds to `maxerror` at each second boundary (`MAXFREQ`, 500 ppm).
const MAX_ERROR_GROWTH_PER_SECOND_US: u64 = 500;
/// The kernel never lets `maxerror` grow past this (`NTP_PHASE_LIMIT`, 16 s); it marks the
/// clock unsynchronised instead.
const KERNEL_MAX_ERROR_US: u64 = 16_000_000;

/// `STA_UNSYNC` in `timex.status`: the kernel considers the clock unsynchronised.
const STA_UNSYNC: i64 = 0x0040;
/// `TIME_ERROR` return value of adjtimex: the clock is not synchronised.
const TIME_ERROR: i64 = 5;

/// One reading: synchronised or not, and the error bounds in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    synced: bool,
    max_error_us: u64,
    /// The kernel's estimated error (`esterror`); it does not grow with the sample's age.
    est_error_us: u64,
}

/// The largest error bound a sample can carry (a failed call: nothing is known).
const UNKNOWN_ERROR_US: u64 = (u64::MAX >> 1) / 1000 * 1000;

impl Sample {
    /// The recorded state of this sample, taken `age` ago.
    fn state_after(self, age: Duration) -> ClockState {
        let age_nanos = u64::try_from(age.as_nanos()).unwrap_or(u64::MAX);
        let second_boundaries = age_nanos.div_ceil(1_000_000_000);
        let widened = self
            .max_error_us
            .saturating_add(second_boundaries.saturating_mul(MAX_ERROR_GROWTH_PER_SECOND_US))
            // Growth stops at the kernel's limit (a sample already above it stays as it is).
            .min(self.max_error_us.max(KERNEL_MAX_ERROR_US))
            .min(UNKNOWN_ERROR_US);
        ClockState {
            synced: self.synced,
            max_error_ms: widened.div_ceil(1000),
            est_error_ms: self.est_error_us.min(UNKNOWN_ERROR_US).div_ceil(1000),
        }
    }

    /// Packed into one word for the cache: the top bit is `synced`.
    fn pack(self) -> u64 {
        (u64::from(self.synced) << 63) | self.max_error_us.min(UNKNOWN_ERROR_US)
    }

    fn unpack(word: u64, est_error_us: u64) -> Self {
        Sample {
            synced: word >> 63 == 1,
            max_error_us: word & !(1 << 63),
            est_error_us,
        }
    }
}

/// Turn adjtimex's answer (return value, `status`, `maxerror` and `esterror` in µs) into a
/// sample.
fn interpret_sample(state: i64, status: i64, max_error_us: i64, est_error_us: i64) -> Sample {
    if state < 0 {
        // The call failed: nothing is known about the clock.
        return Sample {
            synced: false,
            max_error_us: UNKNOWN_ERROR_US,
            est_error_us: UNKNOWN_ERROR_US,
        };
    }
    Sample {
        synced: state != TIME_ERROR && (status & STA_UNSYNC) == 0,
        max_error_us: max_error_us.max(0) as u64,
        est_error_us: est_error_us.max(0) as u64,
    }
}

/// Turn adjtimex's answer into the recorded state.
#[cfg(test)]
fn interpret(state: i64, status: i64, max_error_us: i64) -> ClockState {
    interpret_sample(state, status, max_error_us, 0).state_after(Duration::ZERO)
}

/// A state that replaces every reading, for tests of what depends on it (set once per
/// process, see [`set_override`]).
static OVERRIDE: OnceLock<ClockState> = OnceLock::new();

/// Make [`current`] and [`read`] answer `state` from now on, for the life of the process:
/// lets tests show what the gateway does with an unsynchronised clock without touching the
/// machine's clock. Returns false if an override was already set.
pub fn set_override(state: ClockState) -> bool {
    let set = OVERRIDE.set(state).is_ok();
    if set {
        tracing::warn!(
            synced = state.synced,
            max_error_ms = state.max_error_ms,
            "the clock state is overridden for this process (tests only): records carry it, not the kernel's"
        );
    }
    set
}

/// The process-wide cache behind [`current`]: the packed sample and when it was taken
/// (nanoseconds after [`epoch`], plus one so that zero means "never").
static CACHED_SAMPLE: AtomicU64 = AtomicU64::new(0);
static CACHED_EST_US: AtomicU64 = AtomicU64::new(0);
static CACHED_AT_NANOS: AtomicU64 = AtomicU64::new(0);
/// What the last fresh sample said (0 none yet, 1 synchronised, 2 not), to log changes once.
static LAST_SYNCED: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The clock state for a record made now: from a cached sample at most [`SAMPLE_MAX_AGE`]
/// old, its error bound widened by the sample's age.
///
/// Two threads may both refresh the cache at once; either sample is a valid answer. A reader
/// that sees a new sample with an old time only overstates the error, never understates it
/// (the sample is stored before its time).
pub fn current() -> ClockState {
    if let Some(state) = OVERRIDE.get() {
        return *state;
    }
    let since_epoch = epoch().elapsed();
    let now_nanos = u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX - 1) + 1;
    let taken_at = CACHED_AT_NANOS.load(Ordering::Acquire);
    if taken_at != 0 {
        let age = Duration::from_nanos(now_nanos.saturating_sub(taken_at));
        if age <= SAMPLE_MAX_AGE {
            return Sample::unpack(
                CACHED_SAMPLE.load(Ordering::Acquire),
                CACHED_EST_US.load(Ordering::Relaxed),
            )
            .state_after(age);
        }
    }
    let sample = read_sample();
    CACHED_EST_US.store(sample.est_error_us, Ordering::Relaxed);
    CACHED_SAMPLE.store(sample.pack(), Ordering::Release);
    CACHED_AT_NANOS.store(now_nanos, Ordering::Release);
    log_change(sample.synced);
    sample.state_after(Duration::ZERO)
}

/// Log the first unsynchronised sample and every change (once, not per request).
fn log_change(synced: bool) {
    let now = if synced { 1 } else { 2 };
    let before = LAST_SYNCED.swap(now, Ordering::Relaxed);
    if before == now || (before == 0 && synced) {
        return;
    }
    if synced {
        tracing::info!("the clock is NTP-synchronised again");
    } else {
        tracing::warn!(
            "the clock is not NTP-synchronised: records carry clock.synced = false (see [clock] unsynchronised)"
        );
    }
}

/// Read the kernel's current clock state (one `adjtimex` call; see [`current`] for the cached one).
pub fn read() -> ClockState {
    if let Some(state) = OVERRIDE.get() {
        return *state;
    }
    read_sample().state_after(Duration::ZERO)
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // adjtimex has no safe wrapper in a well-kept crate; the call is read-only.
fn read_sample() -> Sample {
    // SAFETY: `timex` is a plain C struct; zeroed is a valid value and `modes = 0` asks the
    // kernel only to fill it in. The pointer is valid for the duration of the call.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    tx.modes = 0;
    let state = unsafe { libc::adjtimex(&mut tx) };
    interpret_sample(
        i64::from(state),
        i64::from(tx.status),
        tx.maxerror as i64,
        tx.esterror as i64,
    )
}

/// Non-Linux: the clock state is unknown and reported as unsynchronised.
#[cfg(not(target_os = "linux"))]
fn read_sample() -> Sample {
    interpret_sample(-1, 0, 0, 0)
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
                max_error_ms: 2,
                est_error_ms: 0
            }
        );
        // STA_UNSYNC set: not synchronised, whatever the state says.
        assert_eq!(
            interpret(0, 0x0041, 16_000_000),
            ClockState {
                synced: false,
                max_error_ms: 16_000,
                est_error_ms: 0
            }
        );
        // TIME_ERROR: not synchronised.
        assert!(!interpret(TIME_ERROR, 0, 10).synced);
        // A failed call says nothing good about the clock.
        assert!(!interpret(-1, 0, 0).synced);
    }

    #[test]
    fn a_cached_sample_widens_its_error_bound_with_age() {
        let sample = interpret_sample(0, 0x0001, 1_500, 250);
        assert_eq!(sample.state_after(Duration::from_secs(5)).est_error_ms, 1);
        assert_eq!(sample.state_after(Duration::ZERO).max_error_ms, 2);
        // Up to one second boundary may have passed: 500 µs more, 2 ms.
        assert_eq!(sample.state_after(SAMPLE_MAX_AGE).max_error_ms, 2);
        // One second: still one boundary; a little more may cross two: 2.5 ms, 3 ms.
        assert_eq!(sample.state_after(Duration::from_secs(1)).max_error_ms, 2);
        assert_eq!(
            sample
                .state_after(Duration::from_millis(1_002))
                .max_error_ms,
            3
        );
        // Packing keeps both fields, including the unknown bound of a failed call.
        for s in [
            sample,
            interpret_sample(-1, 0, 0, 0),
            interpret_sample(5, 0, 16_000_000, 7),
        ] {
            assert_eq!(Sample::unpack(s.pack(), s.est_error_us), s);
        }
        assert!(
            !interpret_sample(-1, 0, 0, 0)
                .state_after(SAMPLE_MAX_AGE)
                .synced
        );
    }

    #[test]
    fn the_cached_state_agrees_with_a_fresh_read() {
        let fresh = read();
        let cached = current();
        assert_eq!(cached.synced, fresh.synced);
        // The cached bound may be older and wider, by at most the growth over its age, but
        // never narrower than a read taken before it.
        assert!(
            cached.max_error_ms + 1 >= fresh.max_error_ms,
            "{cached:?} {fresh:?}"
        );
        assert!(
            cached.max_error_ms <= fresh.max_error_ms + 1,
            "{cached:?} {fresh:?}"
        );
    }

    #[test]
    fn the_policy_refuses_only_when_asked_and_only_an_untrusted_clock() {
        let synced = ClockState {
            synced: true,
            max_error_ms: 40,
            est_error_ms: 1,
        };
        let unsynced = ClockState {
            synced: false,
            ..synced
        };
        let drifting = ClockState {
            max_error_ms: 2_000,
            ..synced
        };
        let record = ClockConfig {
            unsynchronised: UnsyncPolicy::Record,
            max_error_ms: Some(1_000),
        };
        assert_eq!(record.refuses(&unsynced), None);
        assert_eq!(record.distrust(&unsynced), Some("clock_unsynchronised"));
        let refuse = ClockConfig {
            unsynchronised: UnsyncPolicy::Refuse,
            ..record.clone()
        };
        assert_eq!(refuse.refuses(&synced), None);
        assert_eq!(refuse.refuses(&unsynced), Some("clock_unsynchronised"));
        assert_eq!(refuse.refuses(&drifting), Some("clock_error_too_large"));
        let flag_only = ClockConfig {
            max_error_ms: None,
            ..refuse
        };
        assert_eq!(flag_only.refuses(&drifting), None);
        assert!(ClockConfig {
            max_error_ms: Some(0),
            ..flag_only
        }
        .validate()
        .is_err());
    }

    #[test]
    fn the_kernel_answers_a_read_only_query() {
        let state = read();
        // The kernel bounds maxerror by NTP_PHASE_LIMIT (16 s) once it is unsynchronised.
        assert!(state.max_error_ms <= 16_000, "{state:?}");
    }
}
