//! The buffered path's bounds beyond its slots: the bytes all buffered exchanges hold together
//! ([`ByteBudget`], `attribution.max_buffered_bytes`), and how long and how slowly one exchange
//! may run ([`Pace`]: `attribution.exchange_timeout_secs`, `min_transfer_bytes_per_sec`).
//!
//! Guarantees: the bytes buffered at once never exceed the budget (a request that would go over
//! waits at most `buffered_wait_secs`, then is refused `503 gateway_busy` with a record); no
//! buffered exchange outlives its deadline; after its grace (`client_timeout_secs`) a client
//! that sends its body, or reads its answer, slower than the minimum rate loses its slot (its
//! record says `client_timeout`).

use std::sync::Arc;
use std::time::Duration;

use pingora::prelude::*;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// The error type of a request refused because the byte budget stayed spent.
pub const BUDGET_SPENT: ErrorType = ErrorType::Custom("buffered_bytes_spent");

/// Bytes the buffered path may hold at once, in KiB permits.
pub struct ByteBudget {
    permits: Arc<Semaphore>,
    wait: Duration,
}

/// The most KiB one acquisition asks for (the semaphore counts in `u32`).
const MAX_KIB_PER_ACQUIRE: u64 = u32::MAX as u64;

impl ByteBudget {
    /// A budget of `bytes` (rounded up to KiB); a request waits at most `wait` for room.
    pub fn new(bytes: u64, wait: Duration) -> ByteBudget {
        let kib = bytes.div_ceil(1024).min(Semaphore::MAX_PERMITS as u64);
        ByteBudget {
            permits: Arc::new(Semaphore::new(kib as usize)),
            wait,
        }
    }

    /// An empty hold on the budget, for one exchange.
    pub fn hold(&self) -> Held {
        Held {
            permits: self.permits.clone(),
            wait: self.wait,
            kib: 0,
        }
    }

    /// KiB free now (for tests and metrics).
    pub fn available_kib(&self) -> usize {
        self.permits.available_permits()
    }
}

/// What one exchange holds of the budget; given back when dropped.
pub struct Held {
    permits: Arc<Semaphore>,
    wait: Duration,
    kib: u64,
}

impl Held {
    /// Make the hold cover `bytes` in all (it only grows), waiting for room at most the
    /// budget's wait. `Err` ([`BUDGET_SPENT`]): no room came free in time.
    pub async fn cover(&mut self, bytes: usize) -> Result<()> {
        let needed = (bytes as u64).div_ceil(1024);
        if needed <= self.kib {
            return Ok(());
        }
        let more = (needed - self.kib).min(MAX_KIB_PER_ACQUIRE) as u32;
        let acquired = tokio::time::timeout(self.wait, self.permits.acquire_many(more)).await;
        match acquired {
            Ok(Ok(permit)) => {
                permit.forget();
                self.kib += u64::from(more);
                crate::metrics::global()
                    .buffered_bytes
                    .add(i64::from(more) * 1024);
                Ok(())
            }
            _ => Error::e_explain(BUDGET_SPENT, "the buffered path's byte budget stayed spent"),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.permits
            .add_permits(usize::try_from(self.kib).unwrap_or(usize::MAX));
        crate::metrics::global()
            .buffered_bytes
            .sub(i64::try_from(self.kib * 1024).unwrap_or(i64::MAX));
    }
}

/// How long one buffered exchange may take, and how slowly its client may send and read.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    started: Instant,
    deadline: Instant,
    grace: Duration,
    /// Bytes a second; 0: no minimum.
    min_rate: u64,
}

impl Pace {
    /// Starting now: the whole exchange within `timeout`; after `grace`, at least `min_rate`
    /// bytes a second on average.
    pub fn new(timeout: Duration, grace: Duration, min_rate: u64) -> Pace {
        let started = Instant::now();
        Pace {
            started,
            deadline: started + timeout,
            grace,
            min_rate,
        }
    }

    /// The whole exchange's deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// When more must have moved, `transferred` bytes having moved so far: the deadline, or
    /// earlier when the client is behind the minimum rate.
    pub fn next(&self, transferred: usize) -> Instant {
        if self.min_rate == 0 {
            return self.deadline;
        }
        let earned = Duration::from_secs_f64(transferred as f64 / self.min_rate as f64);
        (self.started + self.grace + earned).min(self.deadline)
    }

    /// Await `io` until [`Pace::next`]; a client that misses it gets a downstream read or
    /// write timeout (its record says `client_timeout`).
    pub async fn client<T>(
        &self,
        transferred: usize,
        writing: bool,
        io: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout_at(self.next(transferred), io).await {
            Ok(result) => result,
            Err(_) => {
                let kind = if writing { WriteTimedout } else { ReadTimedout };
                Err(Error::explain(
                    kind,
                    "client too slow for the buffered path (minimum rate or exchange deadline)",
                )
                .into_down())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn holds_grow_within_the_budget_and_give_it_back() {
        let budget = ByteBudget::new(10 * 1024, Duration::from_millis(50));
        let mut a = budget.hold();
        a.cover(4000).await.unwrap();
        a.cover(3000).await.unwrap(); // already covered
        assert_eq!(budget.available_kib(), 6);
        let mut b = budget.hold();
        b.cover(6 * 1024).await.unwrap();
        assert_eq!(budget.available_kib(), 0);
        let mut c = budget.hold();
        let e = c.cover(1).await.unwrap_err();
        assert_eq!(e.etype(), &BUDGET_SPENT);
        drop(a);
        c.cover(1).await.unwrap();
        drop(b);
        drop(c);
        assert_eq!(budget.available_kib(), 10);
    }

    #[tokio::test]
    async fn a_slow_client_misses_its_pace() {
        let pace = Pace::new(Duration::from_secs(60), Duration::from_millis(50), 1000);
        // 100 bytes earn 100 ms beyond the grace.
        let late = pace.next(100) - pace.started;
        assert!(late >= Duration::from_millis(149) && late <= Duration::from_millis(151));
        let slow = pace
            .client(0, false, async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            })
            .await
            .unwrap_err();
        assert_eq!(slow.etype(), &ReadTimedout);
        assert_eq!(slow.esource(), &ErrorSource::Downstream);
        // No minimum: only the deadline counts.
        let unpaced = Pace::new(Duration::from_secs(1), Duration::ZERO, 0);
        assert_eq!(unpaced.next(0), unpaced.deadline());
    }
}
