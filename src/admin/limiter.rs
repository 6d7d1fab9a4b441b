//! Login attempts per client address: after `max_failures` wrong passwords within `window`, the
//! address is refused for `lockout`, even with the right password. Bounded: at most `capacity`
//! addresses are tracked; expired entries go first, then the one seen longest ago, lockouts last.
//! A restart forgets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    pub max_failures: u32,
    pub window: Duration,
    pub lockout: Duration,
    pub capacity: usize,
}

/// The login policy of the admin page.
pub const LOGIN_LIMITS: LoginLimits = LoginLimits {
    max_failures: 5,
    window: Duration::from_secs(300),
    lockout: Duration::from_secs(300),
    capacity: 1024,
};

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    first_failure: Instant,
    locked_until: Option<Instant>,
    last_seen: Instant,
}

pub struct LoginLimiter {
    limits: LoginLimits,
    records: Mutex<HashMap<IpAddr, Record>>,
}

impl LoginLimiter {
    pub fn new(limits: LoginLimits) -> LoginLimiter {
        LoginLimiter {
            limits,
            records: Mutex::new(HashMap::new()),
        }
    }

    fn expired(&self, record: &Record, now: Instant) -> bool {
        let locked = record.locked_until.is_some_and(|until| now < until);
        !locked && now.saturating_duration_since(record.first_failure) >= self.limits.window
    }

    /// `Some(wait)` while `peer` is locked out.
    pub fn locked_for(&self, peer: IpAddr, now: Instant) -> Option<Duration> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records
            .get(&peer)
            .and_then(|r| r.locked_until)
            .filter(|&until| now < until)
            .map(|until| until - now)
    }

    /// Records a wrong password; returns the lockout it started, if any.
    pub fn failed(&self, peer: IpAddr, now: Instant) -> Option<Duration> {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if !records.contains_key(&peer) && records.len() >= self.limits.capacity {
            records.retain(|_, r| !self.expired(r, now));
            if records.len() >= self.limits.capacity {
                if let Some(stalest) = records
                    .iter()
                    .min_by_key(|(_, r)| (r.locked_until.is_some_and(|u| now < u), r.last_seen))
                    .map(|(ip, _)| *ip)
                {
                    records.remove(&stalest);
                }
            }
        }
        let fresh = Record {
            failures: 0,
            first_failure: now,
            locked_until: None,
            last_seen: now,
        };
        let record = records.entry(peer).or_insert(fresh);
        if self.expired(record, now) {
            *record = fresh;
        }
        record.failures += 1;
        record.last_seen = now;
        if record.failures >= self.limits.max_failures {
            record.locked_until = Some(now + self.limits.lockout);
            record.failures = 0;
            record.first_failure = now;
            return Some(self.limits.lockout);
        }
        None
    }

    /// A right password clears the address's failures.
    pub fn succeeded(&self, peer: IpAddr) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records.remove(&peer);
    }

    pub fn tracked(&self) -> usize {
        self.records.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(capacity: usize) -> LoginLimiter {
        LoginLimiter::new(LoginLimits {
            max_failures: 3,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(120),
            capacity,
        })
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn the_third_failure_in_the_window_locks_the_address_out() {
        let l = limiter(8);
        let t0 = Instant::now();
        assert_eq!(l.failed(ip(1), t0), None);
        assert_eq!(l.failed(ip(1), t0 + Duration::from_secs(10)), None);
        assert_eq!(l.locked_for(ip(1), t0 + Duration::from_secs(10)), None);
        assert_eq!(
            l.failed(ip(1), t0 + Duration::from_secs(20)),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            l.locked_for(ip(1), t0 + Duration::from_secs(30)),
            Some(Duration::from_secs(110))
        );
        assert_eq!(
            l.locked_for(ip(2), t0 + Duration::from_secs(30)),
            None,
            "per address"
        );
        assert_eq!(
            l.locked_for(ip(1), t0 + Duration::from_secs(140)),
            None,
            "it expires"
        );
    }

    #[test]
    fn failures_spread_beyond_the_window_do_not_lock() {
        let l = limiter(8);
        let t0 = Instant::now();
        for minute in 0..6 {
            let now = t0 + Duration::from_secs(minute * 61);
            assert_eq!(l.failed(ip(1), now), None, "minute {minute}");
        }
    }

    #[test]
    fn success_clears_the_count() {
        let l = limiter(8);
        let t0 = Instant::now();
        l.failed(ip(1), t0);
        l.failed(ip(1), t0);
        l.succeeded(ip(1));
        assert_eq!(l.failed(ip(1), t0), None);
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn many_addresses_cannot_grow_it_past_its_capacity_nor_evict_a_lockout_first() {
        let l = limiter(4);
        let t0 = Instant::now();
        for _ in 0..3 {
            l.failed(ip(1), t0);
        }
        for last in 2..=200 {
            l.failed(ip(last), t0 + Duration::from_secs(last as u64 / 10));
        }
        assert_eq!(l.tracked(), 4);
        assert!(l.locked_for(ip(1), t0 + Duration::from_secs(20)).is_some());
        let l = limiter(2);
        for last in 1..=3 {
            for _ in 0..3 {
                l.failed(ip(last), t0 + Duration::from_secs(last as u64));
            }
        }
        assert_eq!(l.tracked(), 2, "when all are locked out, the stalest goes");
        assert!(l.locked_for(ip(1), t0 + Duration::from_secs(5)).is_none());
        assert!(l.locked_for(ip(3), t0 + Duration::from_secs(5)).is_some());
    }
}
