//! Visitor codes checked on the Pi: numbers made in advance for each working day (daily) and ISO week
//! (weekly), kept in the state dir, verified in constant time, with a per-address lockout.

pub mod book;
pub mod calendar;
pub mod entry;
pub mod lockout;
pub mod store;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::NaiveDate;

pub use book::{CodeBook, CodeKind, CodeMatch};
pub use calendar::Calendar;
pub use lockout::{BuildingRules, Gate, LockoutRules, Lockouts};
pub use store::CodeStore;

#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error("`{0}` in codes.working_days is not a weekday: use mon, tue, wed, thu, fri, sat, sun")]
    Weekday(String),
    #[error("cannot use the holidays file {path} (codes.holidays_file): {problem}")]
    HolidaysFile { path: PathBuf, problem: String },
    #[error(transparent)]
    File(#[from] crate::state_file::StateFileError),
    #[error("{0}")]
    Range(String),
    #[error("the operating system's random generator failed ({0}); codes were not generated")]
    Random(String),
}

/// The answer to one typed code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Granted(CodeMatch),
    /// Wrong (or not valid today); `attempts_left` 0 means this failure started a lockout.
    Denied {
        attempts_left: u32,
    },
    /// The address is locked out; the code was not looked at.
    LockedOut {
        retry_after: Duration,
    },
    /// Code entry is paused for everyone (the building's failure budget is spent); the code was not
    /// looked at, unless this very failure started the pause (`alarm`: raise it once).
    Paused {
        retry_after: Duration,
        alarm: bool,
    },
    /// The request is too old to open the door; the code was not looked at or counted.
    Stale,
}

/// What the daemon keeps to check codes: the store (reloaded when the CLI changes it), the
/// calendar and the lockout table.
pub(crate) struct CodeChecker {
    store: CodeStore,
    calendar: Calendar,
    single_use: bool,
    cached: Mutex<(Option<crate::atomic_file::FileStamp>, Arc<CodeBook>)>,
    /// Held for a whole check, the codes file's I/O included: one code is looked at at a time, so an
    /// address's failure is counted before its next code is.
    checking: Mutex<()>,
    /// Held only for moments, never across I/O: `paused` answers /healthz on the dispatching thread,
    /// which a check stuck on a slow disk must not hold up.
    lockouts: Mutex<Lockouts>,
}

fn unpoisoned<T>(lock: &Mutex<T>) -> MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl CodeChecker {
    pub fn new(
        store: CodeStore,
        calendar: Calendar,
        lockouts: Lockouts,
        single_use: bool,
    ) -> CodeChecker {
        CodeChecker {
            store,
            calendar,
            single_use,
            cached: Mutex::new((None, Arc::default())),
            checking: Mutex::new(()),
            lockouts: Mutex::new(lockouts),
        }
    }

    /// The checker a config describes (`[codes]`, the codes file in `state_dir`).
    pub fn from_config(config: &crate::config::Config) -> Result<CodeChecker, CodeError> {
        let codes = &config.codes;
        Ok(CodeChecker::new(
            CodeStore::new(config.codes_path()),
            Calendar::from_config(codes)?,
            Lockouts::new(LockoutRules {
                max_failures: codes.max_failures,
                window: Duration::from_secs(codes.failure_window_s),
                lockout: Duration::from_secs(codes.lockout_s),
            })
            .with_building(BuildingRules {
                max_failures: codes.building_max_failures,
                window: Duration::from_secs(codes.building_window_s),
                pause: Duration::from_secs(codes.building_pause_s),
            }),
            codes.single_use,
        ))
    }

    /// Checks `given` from `address` against the codes valid on `today`. A pause or a lockout is
    /// answered before the code is looked at; a right code does not clear earlier failures. With
    /// `codes.single_use` a matching code is consumed under the store's lock, so two tablets cannot
    /// both use it.
    pub fn check(
        &self,
        address: IpAddr,
        given: &str,
        today: NaiveDate,
        now: Instant,
        fresh: bool,
    ) -> Result<Verdict, CodeError> {
        let _one_at_a_time = unpoisoned(&self.checking);
        let gate = unpoisoned(&self.lockouts).gate(address, now);
        match gate {
            Gate::LockedOut { retry_after } => return Ok(Verdict::LockedOut { retry_after }),
            Gate::Paused { retry_after } => {
                return Ok(Verdict::Paused {
                    retry_after,
                    alarm: false,
                })
            }
            Gate::Open { .. } => {}
        }
        if !fresh {
            return Ok(Verdict::Stale);
        }
        let matched = if self.single_use {
            self.store.update(|book| {
                let matched = book.verify(&self.calendar, today, given);
                if let Some(matched) = &matched {
                    book.consume(matched);
                }
                Ok(matched)
            })?
        } else {
            self.current()?.verify(&self.calendar, today, given)
        };
        let Some(matched) = matched else {
            let failure = unpoisoned(&self.lockouts).failed(address, now);
            return Ok(match failure.gate {
                Gate::Open { attempts_left } => Verdict::Denied { attempts_left },
                Gate::LockedOut { retry_after } => Verdict::LockedOut { retry_after },
                Gate::Paused { retry_after } => Verdict::Paused {
                    retry_after,
                    alarm: failure.pause_started,
                },
            });
        };
        Ok(Verdict::Granted(matched))
    }

    /// With `codes.single_use`, puts back the code `given` that matched as `matched`, because the
    /// door stayed locked for it; tells whether it did (without `single_use` nothing was consumed).
    pub fn give_back(&self, matched: &CodeMatch, given: &str) -> Result<bool, CodeError> {
        if !self.single_use {
            return Ok(false);
        }
        let _one_at_a_time = unpoisoned(&self.checking);
        self.store.update(|book| {
            book.give_back(matched, given);
            Ok(true)
        })
    }

    /// The working days and holidays codes are valid on.
    pub fn calendar(&self) -> &Calendar {
        &self.calendar
    }

    /// How long code entry stays paused for everyone, if it is (for /healthz and the admin page).
    pub fn paused(&self, now: Instant) -> Option<Duration> {
        unpoisoned(&self.lockouts).paused(now)
    }

    /// The codes as the file holds them now, read again only when it changed.
    fn current(&self) -> Result<Arc<CodeBook>, CodeError> {
        let stamp = self.store.stamp();
        let mut cached = unpoisoned(&self.cached);
        if cached.0 != stamp || stamp.is_none() {
            let book = self.store.load()?;
            *cached = (stamp, Arc::new(book));
        }
        Ok(Arc::clone(&cached.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Weekday;

    fn checker(dir: &std::path::Path, single_use: bool) -> CodeChecker {
        let store = CodeStore::new(dir.join("codes.json"));
        store
            .update(|book| {
                book.daily
                    .insert("2026-12-01".parse().unwrap(), vec!["111111".into()]);
                book.weekly.insert("2026-W49".into(), vec!["222222".into()]);
                Ok(())
            })
            .unwrap();
        CodeChecker::new(
            store,
            Calendar::new([Weekday::Mon, Weekday::Tue], []),
            Lockouts::new(LockoutRules {
                max_failures: 3,
                window: Duration::from_secs(60),
                lockout: Duration::from_secs(60),
            }),
            single_use,
        )
    }

    #[test]
    fn a_locked_out_address_is_refused_even_with_a_valid_code() {
        let dir = tempfile::tempdir().unwrap();
        let codes = checker(dir.path(), false);
        let day = "2026-12-01".parse().unwrap();
        let (tablet, other) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let now = Instant::now();
        let check = |address, code| codes.check(address, code, day, now, true).unwrap();
        assert_eq!(
            check(tablet, "000000"),
            Verdict::Denied { attempts_left: 2 }
        );
        assert_eq!(
            check(tablet, "000000"),
            Verdict::Denied { attempts_left: 1 }
        );
        assert_eq!(
            check(tablet, "000000"),
            Verdict::Denied { attempts_left: 0 }
        );
        assert!(matches!(check(tablet, "111111"), Verdict::LockedOut { .. }));
        assert!(matches!(
            check(other, "222222"),
            Verdict::Granted(CodeMatch {
                kind: CodeKind::Weekly,
                index: 1,
                ..
            })
        ));
        assert_eq!(
            codes.check(other, "111111", day, now, false).unwrap(),
            Verdict::Stale
        );
    }

    /// Regression: a right code reset the address's failures, so two wrong codes and one right one,
    /// repeated, never locked out, and one visitor's daily code made an unlimited oracle for the weekly.
    #[test]
    fn two_wrong_one_right_repeated_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let codes = checker(dir.path(), false);
        let day = "2026-12-01".parse().unwrap();
        let tablet = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        let check = |code| codes.check(tablet, code, day, now, true).unwrap();
        assert_eq!(check("000000"), Verdict::Denied { attempts_left: 2 });
        assert_eq!(check("000001"), Verdict::Denied { attempts_left: 1 });
        assert!(matches!(check("111111"), Verdict::Granted(_)));
        assert_eq!(check("000002"), Verdict::Denied { attempts_left: 0 });
        assert!(matches!(check("111111"), Verdict::LockedOut { .. }));
    }

    /// Regression: a check held the lockout table while it read the codes file, and /healthz asks
    /// that table on the thread that dispatches every request: a stalled disk wedged the daemon's
    /// dispatch (and its reaction to SIGTERM) until the read returned. The codes file here is a FIFO,
    /// a read that stays stuck until the test writes to it.
    #[test]
    fn a_code_check_stuck_on_the_codes_file_does_not_hold_up_the_pause_answer() {
        use std::io::Write;

        let written = tempfile::tempdir().unwrap();
        let contents = {
            checker(written.path(), false);
            std::fs::read(written.path().join("codes.json")).unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("codes.json");
        crate::stuck_file::make(&fifo);
        let codes = CodeChecker::new(
            CodeStore::new(fifo.clone()),
            Calendar::new([Weekday::Tue], []),
            Lockouts::new(LockoutRules {
                max_failures: 3,
                window: Duration::from_secs(60),
                lockout: Duration::from_secs(60),
            }),
            false,
        );
        let now = Instant::now();
        std::thread::scope(|scope| {
            let stuck = scope.spawn(|| {
                let day = "2026-12-01".parse().unwrap();
                codes.check("10.0.0.1".parse().unwrap(), "111111", day, now, true)
            });
            let mut writer = crate::stuck_file::opened(&fifo);
            assert_eq!(codes.paused(now), None, "answered while the check is stuck");
            writer.write_all(&contents).unwrap();
            drop(writer);
            assert!(matches!(stuck.join().unwrap(), Ok(Verdict::Granted(_))));
        });
    }

    #[test]
    fn single_use_codes_work_once_and_others_reload_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let day = "2026-12-01".parse().unwrap();
        let tablet = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        let once = checker(dir.path(), true);
        assert!(matches!(
            once.check(tablet, "111111", day, now, true).unwrap(),
            Verdict::Granted(_)
        ));
        assert_eq!(
            once.check(tablet, "111111", day, now, true).unwrap(),
            Verdict::Denied { attempts_left: 2 }
        );
        let reusable = checker(dir.path(), false);
        assert!(matches!(
            reusable.check(tablet, "111111", day, now, true).unwrap(),
            Verdict::Granted(_)
        ));
        CodeStore::new(dir.path().join("codes.json"))
            .update(|book| Ok(book.revoke("111111")))
            .unwrap();
        assert!(matches!(
            reusable.check(tablet, "111111", day, now, true).unwrap(),
            Verdict::Denied { .. }
        ));
    }
}
