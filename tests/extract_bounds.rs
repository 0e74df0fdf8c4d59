//! The extractor's cost is bounded by its input: huge arrays and Bundles of many entries take
//! memory proportional to the bytes read (measured with a counting allocator: this binary has
//! one test, so nothing else allocates while it measures) and time that grows linearly, not
//! quadratically, with the number of entries. Deep nesting is refused by serde_json's depth
//! limit (the unit tests in `src/attribution/extract.rs` show it becomes `invalid_json`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking, with the message of the unwrap or expect that found it"
)]
// A counting `GlobalAlloc` is `unsafe impl` by definition; it forwards to `System` unchanged.
// Test-only: the crate itself denies unsafe code.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use auditgate::attribution::extract::Findings;

fn response_patients(body: &[u8]) -> Findings {
    auditgate::attribution::extract::response_patients(body, &Default::default())
}

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak bytes allocated (above what was live before) while `f` runs.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed) - base)
}

/// A searchset Bundle of `n` Observations, each of its own patient.
fn bundle(n: usize) -> Vec<u8> {
    let mut s = String::from(r#"{"resourceType":"Bundle","type":"searchset","entry":["#);
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"fullUrl":"http://ehr/fhir/Observation/o{i}","resource":{{"resourceType":"Observation","id":"o{i}","status":"final","code":{{"text":"x"}},"subject":{{"reference":"Patient/p{i}"}},"performer":[{{"reference":"Practitioner/d"}}]}}}}"#
        ));
    }
    s.push_str("]}");
    s.into_bytes()
}

/// A bare array of `n` references to one patient (a JSON Patch-like body).
fn same_reference_array(n: usize) -> Vec<u8> {
    let mut s = String::from("[");
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(r#"{"reference":"Patient/same"}"#);
    }
    s.push(']');
    s.into_bytes()
}

/// An array of `n` numbers and strings: nothing to keep.
fn scalar_array(n: usize) -> Vec<u8> {
    let mut s = String::from(r#"{"resourceType":"Binary","data":["#);
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        if i % 2 == 0 {
            s.push_str(&i.to_string());
        } else {
            s.push_str("\"abcdefgh\"");
        }
    }
    s.push_str("]}");
    s.into_bytes()
}

fn fastest_of_three(body: &[u8]) -> Duration {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(response_patients(body));
            t.elapsed()
        })
        .min()
        .unwrap()
}

#[test]
fn huge_arrays_cost_memory_in_proportion_to_their_bytes_and_linear_time() {
    // Memory: each shape at ~8 to 30 MiB, peak allocation at most 4x the input.
    for (name, body, patients) in [
        ("bundle of 100,000 entries", bundle(100_000), 100_000),
        (
            "array of 1,000,000 identical references",
            same_reference_array(1_000_000),
            1,
        ),
        ("array of 2,000,000 scalars", scalar_array(2_000_000), 0),
    ] {
        let (found, peak) = peak_during(|| response_patients(&body));
        assert_eq!(found.patients.len(), patients, "{name}");
        assert!(found.gaps.is_empty(), "{name}: {:?}", found.gaps);
        let ratio = peak as f64 / body.len() as f64;
        eprintln!(
            "{name}: {} bytes in, peak {} bytes allocated ({ratio:.2}x)",
            body.len(),
            peak
        );
        assert!(
            ratio <= 4.0,
            "{name}: peak allocation {peak} bytes for {} input bytes ({ratio:.2}x)",
            body.len()
        );
    }
    // Scalars are dropped as they are read: their peak stays flat as the array grows.
    let (small_body, large_body) = (scalar_array(10_000), scalar_array(1_000_000));
    let (_, small) = peak_during(|| response_patients(&small_body));
    let (_, large) = peak_during(|| response_patients(&large_body));
    assert!(
        large <= small + 64 * 1024,
        "a scalar array's cost grew with its length: {small} -> {large} bytes"
    );

    // Time: 16x the entries must not take anywhere near 256x the time (quadratic); linear is
    // 16x. The bound is loose so a busy machine cannot fail it, and tight enough to catch a
    // quadratic walk.
    let small = bundle(5_000);
    let large = bundle(80_000);
    let (t_small, t_large) = (fastest_of_three(&small), fastest_of_three(&large));
    let growth = t_large.as_secs_f64() / t_small.as_secs_f64();
    eprintln!("16x the entries: {t_small:?} -> {t_large:?} ({growth:.1}x)");
    assert!(
        growth < 64.0,
        "16x the entries took {growth:.1}x the time ({t_small:?} -> {t_large:?})"
    );
}
