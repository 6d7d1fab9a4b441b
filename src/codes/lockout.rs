//! Failed code entries per client address: after `max_failures` within `window`, the address is
//! locked out for `lockout`. One bounded table that forgets by itself; the clock is passed in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Addresses tracked at most. A door's LAN has a few tablets; past this, the entry closest to
/// forgetting itself makes room, so a flood of addresses costs bounded memory.
pub(crate) const MAX_TRACKED_ADDRESSES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutRules {
    pub max_failures: u32,
    pub window: Duration,
    pub lockout: Duration,
}

/// What an address may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Codes are checked; this many failures are left before a lockout.
    Open {
        attempts_left: u32,
    },
    LockedOut {
        retry_after: Duration,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    /// Failures inside the window, oldest first; at most `max_failures`.
    failures: Vec<Instant>,
    locked_until: Option<Instant>,
}

impl Entry {
    /// When this entry stops mattering: its lockout ends, or its newest failure leaves the window.
    fn forgotten_at(&self, rules: &LockoutRules) -> Instant {
        let last_failure = self.failures.last().map(|t| *t + rules.window);
        match (self.locked_until, last_failure) {
            (Some(locked), Some(failure)) => locked.max(failure),
            (Some(locked), None) => locked,
            (None, Some(failure)) => failure,
            (None, None) => Instant::now(),
        }
    }

    fn forget_before(&mut self, now: Instant, rules: &LockoutRules) {
        self.failures
            .retain(|t| now.duration_since(*t) < rules.window);
        if self.locked_until.is_some_and(|until| until <= now) {
            self.locked_until = None;
            self.failures.clear();
        }
    }
}

/// Failure counts and lockouts by client address.
#[derive(Debug)]
pub struct Lockouts {
    rules: LockoutRules,
    capacity: usize,
    entries: HashMap<IpAddr, Entry>,
}

impl Lockouts {
    pub fn new(rules: LockoutRules) -> Lockouts {
        Lockouts::with_capacity(rules, MAX_TRACKED_ADDRESSES)
    }

    pub fn with_capacity(rules: LockoutRules, capacity: usize) -> Lockouts {
        Lockouts {
            rules,
            capacity: capacity.max(1),
            entries: HashMap::new(),
        }
    }

    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.entries.len()
    }

    /// May `address` try a code now?
    pub(crate) fn gate(&mut self, address: IpAddr, now: Instant) -> Gate {
        let rules = self.rules;
        let Some(entry) = self.entries.get_mut(&address) else {
            return Gate::Open {
                attempts_left: rules.max_failures,
            };
        };
        entry.forget_before(now, &rules);
        let gate = match entry.locked_until {
            Some(until) => Gate::LockedOut {
                retry_after: until - now,
            },
            None => Gate::Open {
                attempts_left: rules.max_failures - entry.failures.len() as u32,
            },
        };
        if entry.failures.is_empty() && entry.locked_until.is_none() {
            self.entries.remove(&address);
        }
        gate
    }

    /// Counts a wrong code from `address`; the failure that reaches `max_failures` starts the lockout.
    pub fn failed(&mut self, address: IpAddr, now: Instant) -> Gate {
        let rules = self.rules;
        if !self.entries.contains_key(&address) {
            self.make_room(now);
        }
        let entry = self.entries.entry(address).or_insert_with(|| Entry {
            failures: Vec::with_capacity(rules.max_failures as usize),
            locked_until: None,
        });
        entry.forget_before(now, &rules);
        if let Some(until) = entry.locked_until {
            return Gate::LockedOut {
                retry_after: until - now,
            };
        }
        entry.failures.push(now);
        if entry.failures.len() as u32 >= rules.max_failures {
            entry.locked_until = Some(now + rules.lockout);
            return Gate::Open { attempts_left: 0 };
        }
        Gate::Open {
            attempts_left: rules.max_failures - entry.failures.len() as u32,
        }
    }

    /// A right code clears the address's failures.
    pub fn succeeded(&mut self, address: IpAddr) {
        self.entries.remove(&address);
    }

    /// Drops what has expired; if the table is still full, the entry that would be forgotten
    /// soonest goes, an address that is not locked out before one that is.
    fn make_room(&mut self, now: Instant) {
        if self.entries.len() < self.capacity {
            return;
        }
        let rules = self.rules;
        self.entries.retain(|_, entry| {
            entry.forget_before(now, &rules);
            !entry.failures.is_empty() || entry.locked_until.is_some()
        });
        if self.entries.len() < self.capacity {
            return;
        }
        let soonest = self
            .entries
            .iter()
            .min_by_key(|(_, entry)| (entry.locked_until.is_some(), entry.forgotten_at(&rules)))
            .map(|(address, _)| *address);
        if let Some(address) = soonest {
            self.entries.remove(&address);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: LockoutRules = LockoutRules {
        max_failures: 3,
        window: Duration::from_secs(60),
        lockout: Duration::from_secs(60),
    };

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[derive(Debug)]
    enum Step {
        Fail(&'static str),
        Check(&'static str),
    }

    #[test]
    fn failures_within_the_window_lock_out_one_address_for_a_while() {
        use Step::*;
        let open = |n| Gate::Open { attempts_left: n };
        let locked = |secs| Gate::LockedOut {
            retry_after: s(secs),
        };
        // (at second, step, what that step answers, then the gate of 10.0.0.1 and 10.0.0.2)
        let table = [
            (0, Fail("10.0.0.1"), open(2), open(2), open(3)),
            (10, Fail("10.0.0.1"), open(1), open(1), open(3)),
            (20, Fail("10.0.0.1"), open(0), locked(60), open(3)),
            (30, Fail("10.0.0.1"), locked(50), locked(50), open(3)),
            (79, Check("10.0.0.2"), open(3), locked(1), open(3)),
            (80, Check("10.0.0.2"), open(3), open(3), open(3)),
            (81, Fail("10.0.0.1"), open(2), open(2), open(3)),
            // The window slides: the failure at 81 leaves it at 141.
            (130, Fail("10.0.0.1"), open(1), open(1), open(3)),
            (141, Fail("10.0.0.1"), open(1), open(1), open(3)),
        ];
        let start = Instant::now();
        let mut lockouts = Lockouts::new(RULES);
        for (at, step, answer, first, second) in table {
            let now = start + s(at);
            let got = match &step {
                Fail(address) => lockouts.failed(ip(address), now),
                Check(address) => lockouts.gate(ip(address), now),
            };
            assert_eq!(got, answer, "at {at}s {step:?}");
            assert_eq!(lockouts.gate(ip("10.0.0.1"), now), first, "at {at}s, .1");
            assert_eq!(lockouts.gate(ip("10.0.0.2"), now), second, "at {at}s, .2");
        }
    }

    #[test]
    fn a_right_code_clears_the_failures() {
        let now = Instant::now();
        let mut lockouts = Lockouts::new(RULES);
        lockouts.failed(ip("10.0.0.1"), now);
        lockouts.failed(ip("10.0.0.1"), now);
        lockouts.succeeded(ip("10.0.0.1"));
        assert_eq!(
            lockouts.gate(ip("10.0.0.1"), now),
            Gate::Open { attempts_left: 3 }
        );
        assert_eq!(lockouts.tracked(), 0);
    }

    #[test]
    fn many_addresses_cannot_grow_the_table_past_its_bound() {
        let start = Instant::now();
        let mut lockouts = Lockouts::with_capacity(RULES, 100);
        lockouts.failed(ip("10.0.0.1"), start);
        lockouts.failed(ip("10.0.0.1"), start);
        lockouts.failed(ip("10.0.0.1"), start);
        for i in 0..10_000u32 {
            let address = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            lockouts.failed(address, start + s(1));
            assert!(lockouts.tracked() <= 100);
        }
        assert_eq!(
            lockouts.gate(ip("10.0.0.1"), start + s(1)),
            Gate::LockedOut { retry_after: s(59) },
            "a lockout outlives single failures when room is made"
        );
    }

    #[test]
    fn entries_forget_themselves() {
        let start = Instant::now();
        let mut lockouts = Lockouts::with_capacity(RULES, 2);
        lockouts.failed(ip("10.0.0.1"), start);
        lockouts.failed(ip("10.0.0.2"), start);
        lockouts.failed(ip("10.0.0.3"), start + s(61));
        assert_eq!(lockouts.tracked(), 1, "expired entries go before live ones");
        assert_eq!(
            lockouts.gate(ip("10.0.0.3"), start + s(61)),
            Gate::Open { attempts_left: 2 }
        );
    }
}
