//! Logs a recurring failure (full disk, dead relay, a stranger's wrong pairing secrets) at most once
//! per interval with a count of suppressed repeats, so that no fault or client can flood the journal
//! or slow down the decision path.

use crate::sync::lock_recovering;
use std::fmt::Display;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Pure bookkeeping behind [`RateLimitedLog`]: when the last line was emitted and how many
/// messages were swallowed since.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Throttle {
    last_emitted: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// Decides whether a message arriving at `now` may be emitted. Returns `Some(n)` with the
    /// number of messages suppressed since the previous emitted one, or `None` to stay silent.
    pub(crate) fn admit(&mut self, now: Instant, interval: Duration) -> Option<u64> {
        let due = match self.last_emitted {
            None => true,
            Some(last) => now.saturating_duration_since(last) >= interval,
        };
        if due {
            self.last_emitted = Some(now);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// A log sink for one kind of recurring problem. Thread-safe; cheap when suppressing.
#[derive(Debug)]
pub(crate) struct RateLimitedLog {
    interval: Duration,
    throttle: Mutex<Throttle>,
}

impl RateLimitedLog {
    /// Emits at most one line per `interval`.
    pub fn new(interval: Duration) -> Self {
        RateLimitedLog {
            interval,
            throttle: Mutex::new(Throttle::default()),
        }
    }

    /// Logs `message` at error level unless a line was emitted less than `interval` ago.
    /// Returns whether the line was emitted.
    pub fn error(&self, message: impl Display) -> bool {
        self.emit(log::Level::Error, message)
    }

    /// As [`RateLimitedLog::error`], at warning level: for what a stranger can repeat at will.
    pub fn warn(&self, message: impl Display) -> bool {
        self.emit(log::Level::Warn, message)
    }

    fn emit(&self, level: log::Level, message: impl Display) -> bool {
        let admitted = {
            let mut throttle = lock_recovering(&self.throttle);
            throttle.admit(Instant::now(), self.interval)
        };
        match admitted {
            None => false,
            Some(0) => {
                log::log!(level, "{message}");
                true
            }
            Some(suppressed) => {
                log::log!(
                    level,
                    "{message} ({suppressed} similar messages suppressed in the previous {}s)",
                    self.interval.as_secs()
                );
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_emits_first_then_suppresses_within_interval() {
        let interval = Duration::from_secs(10);
        let start = Instant::now();
        let ms = |n: u64| start + Duration::from_millis(n);
        // (arrival offset in ms, expected admission)
        let table: &[(u64, Option<u64>)] = &[
            (0, Some(0)),
            (1, None),
            (9_999, None),
            (10_000, Some(2)),
            (10_001, None),
            (25_000, Some(1)),
            (40_000, Some(0)),
        ];
        let mut throttle = Throttle::default();
        for &(offset, expected) in table {
            assert_eq!(
                throttle.admit(ms(offset), interval),
                expected,
                "message at +{offset} ms"
            );
        }
    }

    #[test]
    fn zero_interval_never_suppresses() {
        let mut throttle = Throttle::default();
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(throttle.admit(now, Duration::ZERO), Some(0));
        }
    }

    #[test]
    fn rate_limited_log_reports_whether_it_emitted() {
        let log = RateLimitedLog::new(Duration::from_secs(3600));
        assert!(log.error("disk full"));
        assert!(!log.error("disk full"));
        assert!(!log.warn("disk full"), "one throttle whatever the level");
    }
}
