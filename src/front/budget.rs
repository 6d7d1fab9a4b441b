//! One figure bounds the memory of every request body in flight at the front together
//! (`http.max_body_bytes_in_flight`): a body reserves its bytes before they are read (a declared
//! length at once, a chunked body as it grows) and gives them back once its answer is sent. A body
//! that does not fit is refused 503 with `Retry-After`, not waited for, so no client can make the
//! daemon hold more than the figure, however many connections it opens.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::metrics::Metrics;

pub(crate) struct BodyBudget {
    limit: usize,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    refused: AtomicU64,
}

/// Bytes held by one body; given back when dropped.
pub(crate) struct Reservation<'a> {
    budget: &'a BodyBudget,
    held: usize,
}

/// The body does not fit in what is left of the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OverBudget;

impl BodyBudget {
    pub fn new(limit: usize) -> BodyBudget {
        BodyBudget {
            limit,
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// An empty reservation, to grow as the body arrives.
    pub fn reserve(&self) -> Reservation<'_> {
        Reservation {
            budget: self,
            held: 0,
        }
    }

    fn take(&self, bytes: usize) -> Result<(), OverBudget> {
        let mut current = self.in_flight.load(Ordering::Relaxed);
        loop {
            let wanted = current.checked_add(bytes).filter(|&n| n <= self.limit);
            let Some(wanted) = wanted else {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Err(OverBudget);
            };
            match self.in_flight.compare_exchange_weak(
                current,
                wanted,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.peak.fetch_max(wanted, Ordering::Relaxed);
                    return Ok(());
                }
                Err(now) => current = now,
            }
        }
    }
}

impl Reservation<'_> {
    /// Holds at least `bytes` in all.
    pub fn grow_to(&mut self, bytes: usize) -> Result<(), OverBudget> {
        if bytes > self.held {
            self.budget.take(bytes - self.held)?;
            self.held = bytes;
        }
        Ok(())
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.budget.in_flight.fetch_sub(self.held, Ordering::AcqRel);
    }
}

/// Puts the budget's figures on /metrics.
pub(crate) fn report(budget: &Arc<BodyBudget>, metrics: &Metrics) {
    let now = Arc::clone(budget);
    metrics.add_source(
        "facegate_body_bytes_in_flight",
        "gauge",
        "Bytes of request bodies held at the front now.",
        move || now.in_flight.load(Ordering::Relaxed) as u64,
    );
    let peak = Arc::clone(budget);
    metrics.add_source(
        "facegate_body_bytes_in_flight_peak",
        "gauge",
        "The most bytes of request bodies held at the front at once since start (at most http.max_body_bytes_in_flight).",
        move || peak.peak.load(Ordering::Relaxed) as u64,
    );
    let refused = Arc::clone(budget);
    metrics.add_source(
        "facegate_bodies_over_budget_total",
        "counter",
        "Requests answered 503 because their body did not fit in http.max_body_bytes_in_flight.",
        move || refused.refused.load(Ordering::Relaxed),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_share_one_budget_and_give_it_back() {
        let budget = BodyBudget::new(100);
        let mut a = budget.reserve();
        a.grow_to(60).unwrap();
        a.grow_to(40).unwrap();
        let mut b = budget.reserve();
        assert_eq!(b.grow_to(41), Err(OverBudget));
        b.grow_to(40).unwrap();
        assert_eq!(budget.in_flight.load(Ordering::Relaxed), 100);
        drop(a);
        b.grow_to(100).unwrap();
        drop(b);
        assert_eq!(budget.in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(budget.peak.load(Ordering::Relaxed), 100);
        assert_eq!(budget.refused.load(Ordering::Relaxed), 1);
    }
}
