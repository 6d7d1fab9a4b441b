//! Failed code entries: per client address (an IPv6 client by its /64), after `max_failures` within
//! `window` the address is locked out for `lockout`, whatever right codes come between; and, with a
//! building budget, all addresses together: past `max_failures` within its window, code entry pauses for
//! everyone. One bounded table that forgets by itself; the clock is passed in.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
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

/// The building-wide failure budget: `max_failures` wrong codes from all addresses together within
/// `window` pause code entry for everyone for `pause`, so that rotating addresses cannot multiply the
/// guess rate without limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildingRules {
    pub max_failures: u32,
    pub window: Duration,
    pub pause: Duration,
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
    /// Code entry is paused for every address: the building budget is spent.
    Paused {
        retry_after: Duration,
    },
}

/// What one failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub gate: Gate,
    /// This failure spent the building budget and started the pause (raise the alarm once).
    pub pause_started: bool,
}

/// The address a client is counted under: itself for IPv4 (also when mapped into IPv6), its /64 for
/// IPv6, since one IPv6 host can pick any address of its network.
pub fn client_group(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
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

/// The building's failures within its window (at most `max_failures`) and its pause.
#[derive(Debug)]
struct Building {
    rules: BuildingRules,
    failures: VecDeque<Instant>,
    paused_until: Option<Instant>,
}

impl Building {
    fn paused(&mut self, now: Instant) -> Option<Duration> {
        match self.paused_until {
            Some(until) if until > now => Some(until - now),
            Some(_) => {
                self.paused_until = None;
                self.failures.clear();
                None
            }
            None => None,
        }
    }

    /// Counts one failure; `true` when it spent the budget and started the pause.
    fn failed(&mut self, now: Instant) -> bool {
        let window = self.rules.window;
        while self
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            self.failures.pop_front();
        }
        self.failures.push_back(now);
        if self.failures.len() as u32 >= self.rules.max_failures {
            self.failures.clear();
            self.paused_until = Some(now + self.rules.pause);
            return true;
        }
        false
    }
}

/// Failure counts and lockouts by client address, and the building's budget.
#[derive(Debug)]
pub struct Lockouts {
    rules: LockoutRules,
    capacity: usize,
    entries: HashMap<IpAddr, Entry>,
    building: Option<Building>,
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
            building: None,
        }
    }

    /// The same table with a building-wide failure budget.
    pub fn with_building(mut self, rules: BuildingRules) -> Lockouts {
        self.building = Some(Building {
            rules,
            failures: VecDeque::with_capacity(rules.max_failures as usize),
            paused_until: None,
        });
        self
    }

    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.entries.len()
    }

    /// How long code entry stays paused for everyone, if it is.
    pub(crate) fn paused(&mut self, now: Instant) -> Option<Duration> {
        self.building.as_mut().and_then(|b| b.paused(now))
    }

    /// May `address` try a code now?
    pub(crate) fn gate(&mut self, address: IpAddr, now: Instant) -> Gate {
        if let Some(retry_after) = self.paused(now) {
            return Gate::Paused { retry_after };
        }
        let rules = self.rules;
        let address = client_group(address);
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

    /// Counts a wrong code from `address`; the failure that reaches `max_failures` starts the
    /// address's lockout, the one that spends the building budget pauses code entry for everyone.
    /// A right code in between changes nothing: failures leave only with the window.
    pub fn failed(&mut self, address: IpAddr, now: Instant) -> Failure {
        if let Some(retry_after) = self.paused(now) {
            return Failure {
                gate: Gate::Paused { retry_after },
                pause_started: false,
            };
        }
        let rules = self.rules;
        let address = client_group(address);
        if !self.entries.contains_key(&address) {
            self.make_room(now);
        }
        let entry = self.entries.entry(address).or_insert_with(|| Entry {
            failures: Vec::with_capacity(rules.max_failures as usize),
            locked_until: None,
        });
        entry.forget_before(now, &rules);
        if let Some(until) = entry.locked_until {
            return Failure {
                gate: Gate::LockedOut {
                    retry_after: until - now,
                },
                pause_started: false,
            };
        }
        entry.failures.push(now);
        let attempts_left = rules
            .max_failures
            .saturating_sub(entry.failures.len() as u32);
        if attempts_left == 0 {
            entry.locked_until = Some(now + rules.lockout);
        }
        let pause_started = self.building.as_mut().is_some_and(|b| b.failed(now));
        let gate = match self.building.as_ref().and_then(|b| b.paused_until) {
            Some(until) if pause_started => Gate::Paused {
                retry_after: until - now,
            },
            _ => Gate::Open { attempts_left },
        };
        Failure {
            gate,
            pause_started,
        }
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
                Fail(address) => lockouts.failed(ip(address), now).gate,
                Check(address) => lockouts.gate(ip(address), now),
            };
            assert_eq!(got, answer, "at {at}s {step:?}");
            assert_eq!(lockouts.gate(ip("10.0.0.1"), now), first, "at {at}s, .1");
            assert_eq!(lockouts.gate(ip("10.0.0.2"), now), second, "at {at}s, .2");
        }
    }

    #[test]
    fn an_ipv6_client_counts_by_its_64_and_a_mapped_ipv4_by_its_address() {
        let now = Instant::now();
        let mut lockouts = Lockouts::new(RULES);
        // (address failing, answer) in order: three addresses of one /64 share one count.
        for (address, left) in [("2001:db8:1:2::1", 2), ("2001:db8:1:2:ffff::9", 1)] {
            assert_eq!(
                lockouts.failed(ip(address), now).gate,
                Gate::Open {
                    attempts_left: left
                }
            );
        }
        lockouts.failed(ip("2001:db8:1:2:dead:beef:0:1"), now);
        let locked = Gate::LockedOut { retry_after: s(60) };
        assert_eq!(lockouts.gate(ip("2001:db8:1:2::77"), now), locked);
        assert_eq!(
            lockouts.gate(ip("2001:db8:1:3::1"), now),
            Gate::Open { attempts_left: 3 },
            "the next /64 is another client"
        );
        lockouts.failed(ip("::ffff:10.0.0.7"), now);
        assert_eq!(
            lockouts.gate(ip("10.0.0.7"), now),
            Gate::Open { attempts_left: 2 }
        );
        assert_eq!(client_group(ip("10.0.0.7")), ip("10.0.0.7"));
        assert_eq!(client_group(ip("fe80::1:2:3:4")), ip("fe80::"));
    }

    #[test]
    fn the_building_budget_pauses_code_entry_for_everyone_and_alarms_once() {
        let building = BuildingRules {
            max_failures: 4,
            window: s(100),
            pause: s(50),
        };
        let start = Instant::now();
        let mut lockouts = Lockouts::new(RULES).with_building(building);
        let open = |n| Gate::Open { attempts_left: n };
        let paused = |secs| Gate::Paused {
            retry_after: s(secs),
        };
        // (at second, address failing or None to only look, the answer, pause started)
        let table = [
            (0, Some("10.0.0.1"), open(2), false),
            (1, Some("10.0.0.2"), open(2), false),
            // Older than the window by the time the budget fills: no longer counted.
            (101, Some("10.0.0.3"), open(2), false),
            (102, Some("10.0.0.4"), open(2), false),
            (103, Some("10.0.0.5"), open(2), false),
            (104, Some("10.0.0.6"), paused(50), true),
            (105, Some("10.0.0.7"), paused(49), false),
            (105, None, paused(49), false),
            (154, None, Gate::Open { attempts_left: 3 }, false),
            (154, Some("10.0.0.8"), open(2), false),
        ];
        for (at, address, answer, pause_started) in table {
            let now = start + s(at);
            match address {
                Some(address) => assert_eq!(
                    lockouts.failed(ip(address), now),
                    Failure {
                        gate: answer,
                        pause_started
                    },
                    "at {at}s {address}"
                ),
                None => assert_eq!(lockouts.gate(ip("10.9.9.9"), now), answer, "at {at}s"),
            }
        }
        assert_eq!(lockouts.paused(start + s(154)), None);
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
