//! Simulated relay for laptops and tests: records every actuation in memory and, optionally, as
//! JSON lines in a journal file so a test driving the real binary in another process can see
//! exactly what the relay did.
//!
//! Fault injection for a daemon under test: with `FACEGATE_SIM_UNLOCK_FAILS=1` in its environment,
//! the sim backend built by `door::build_backend` fails every unlock (the start-up log says so).
//! Only the simulated relay reads that variable.

use super::{Door, DoorError, RelayState};
use crate::sync::lock_recovering;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Environment variable that makes every unlock of a [`SimDoor`] built by `door::build_backend`
/// fail when set to `1`, so that tests of the real binary can see a failed unlock.
pub(crate) const UNLOCK_FAILS_ENV: &str = "FACEGATE_SIM_UNLOCK_FAILS";

/// One actuation performed by a [`SimDoor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimEvent {
    pub state: RelayState,
    /// Monotonic time of the actuation, for ordering and interval checks in tests.
    pub at: Instant,
    /// Wall-clock time of the actuation, as written to the journal.
    pub ts: DateTime<Utc>,
    pub reason: String,
}

/// One line of the journal written by [`SimDoor::with_journal`]:
/// `{"ts":"2025-01-02T03:04:05.678Z","state":"unlocked","reason":"granted"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SimJournalEntry {
    /// RFC 3339 UTC timestamp with milliseconds.
    pub ts: String,
    pub state: RelayState,
    pub reason: String,
}

#[derive(Debug, Default)]
struct SimShared {
    events: Mutex<Vec<SimEvent>>,
    changed: Condvar,
    lock_failures_left: AtomicUsize,
    unlock_failing: AtomicBool,
    panic_on_next_unlock: AtomicBool,
    /// Milliseconds the next lock attempt takes before it happens (0: none).
    next_lock_stall_ms: AtomicU64,
}

/// Shared view of a [`SimDoor`]'s actuations, plus fault injection for tests. Cloneable; stays
/// valid after the door itself has been boxed and moved into a controller.
#[derive(Debug, Clone, Default)]
pub struct SimLog {
    shared: Arc<SimShared>,
}

impl SimLog {
    /// Every successful actuation so far, oldest first.
    pub fn events(&self) -> Vec<SimEvent> {
        self.lock_events().clone()
    }

    /// The level the relay was last driven to, `None` before the first actuation.
    pub fn current(&self) -> Option<RelayState> {
        self.lock_events().last().map(|event| event.state)
    }

    /// Blocks until `condition` holds on the recorded events or `timeout` passes; returns whether
    /// the condition held. Meant for tests waiting on the relay thread.
    pub fn wait_for(&self, timeout: Duration, condition: impl Fn(&[SimEvent]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut events = self.lock_events();
        loop {
            if condition(&events) {
                return true;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return false;
            }
            events = self
                .shared
                .changed
                .wait_timeout(events, remaining)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    #[cfg(test)]
    /// Makes the next `count` lock attempts fail (fault injection for tests).
    pub(crate) fn fail_next_locks(&self, count: usize) {
        self.shared
            .lock_failures_left
            .store(count, Ordering::SeqCst);
    }

    /// Makes every unlock attempt fail while `failing` is true (fault injection for tests).
    pub(crate) fn set_unlock_failing(&self, failing: bool) {
        self.shared.unlock_failing.store(failing, Ordering::SeqCst);
    }

    #[cfg(test)]
    /// Makes the next lock attempt take `stall` before it happens, as a slow relay driver would,
    /// keeping the relay thread busy (fault injection for tests).
    pub(crate) fn stall_next_lock(&self, stall: Duration) {
        self.shared
            .next_lock_stall_ms
            .store(stall.as_millis() as u64, Ordering::SeqCst);
    }

    /// Makes the next unlock attempt panic inside the backend (fault injection for tests).
    pub fn panic_on_next_unlock(&self) {
        self.shared
            .panic_on_next_unlock
            .store(true, Ordering::SeqCst);
    }

    fn lock_events(&self) -> MutexGuard<'_, Vec<SimEvent>> {
        lock_recovering(&self.shared.events)
    }

    fn record(&self, event: SimEvent) {
        self.lock_events().push(event);
        self.shared.changed.notify_all();
    }

    fn take_lock_failure(&self) -> bool {
        self.shared
            .lock_failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok()
    }
}

struct Journal {
    path: PathBuf,
    file: File,
}

/// The simulated relay backend (`door.backend = "sim"`).
pub struct SimDoor {
    log: SimLog,
    journal: Option<Journal>,
}

impl Default for SimDoor {
    fn default() -> Self {
        SimDoor::new()
    }
}

impl SimDoor {
    /// A simulated relay that records actuations in memory only.
    pub fn new() -> Self {
        SimDoor {
            log: SimLog::default(),
            journal: None,
        }
    }

    /// A simulated relay that also appends one JSON line per actuation to `path` (created if
    /// missing, appended to otherwise).
    pub(crate) fn with_journal(path: impl Into<PathBuf>) -> Result<Self, DoorError> {
        let path = path.into();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| DoorError::Journal {
                path: path.clone(),
                cause: source,
            })?;
        Ok(SimDoor {
            log: SimLog::default(),
            journal: Some(Journal { path, file }),
        })
    }

    /// Applies the fault injection asked for in the environment ([`UNLOCK_FAILS_ENV`]).
    pub(crate) fn with_faults_from_env(self) -> Self {
        if std::env::var_os(UNLOCK_FAILS_ENV).is_some_and(|value| value == "1") {
            self.log.set_unlock_failing(true);
        }
        self
    }

    /// A handle on this relay's actuation record.
    pub fn log(&self) -> SimLog {
        self.log.clone()
    }

    fn actuate(&mut self, state: RelayState, reason: &str) -> Result<(), DoorError> {
        let ts = Utc::now();
        if let Some(journal) = &mut self.journal {
            let entry = SimJournalEntry {
                ts: ts.to_rfc3339_opts(SecondsFormat::Millis, true),
                state,
                reason: reason.to_owned(),
            };
            let mut line = serde_json::to_string(&entry).expect("journal entry serializes");
            line.push('\n');
            journal
                .file
                .write_all(line.as_bytes())
                .and_then(|()| journal.file.flush())
                .map_err(|source| DoorError::Journal {
                    path: journal.path.clone(),
                    cause: source,
                })?;
        }
        self.log.record(SimEvent {
            state,
            at: Instant::now(),
            ts,
            reason: reason.to_owned(),
        });
        Ok(())
    }
}

impl Door for SimDoor {
    fn set_locked(&mut self, reason: &str) -> Result<(), DoorError> {
        let stall_ms = self.log.shared.next_lock_stall_ms.swap(0, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(stall_ms));
        if self.log.take_lock_failure() {
            return Err(DoorError::SimulatedFailure { action: "lock" });
        }
        self.actuate(RelayState::Locked, reason)
    }

    fn set_unlocked(&mut self, reason: &str) -> Result<(), DoorError> {
        if self
            .log
            .shared
            .panic_on_next_unlock
            .swap(false, Ordering::SeqCst)
        {
            panic!("simulated relay panic while unlocking (injected by a test)");
        }
        if self.log.shared.unlock_failing.load(Ordering::SeqCst) {
            return Err(DoorError::SimulatedFailure { action: "unlock" });
        }
        self.actuate(RelayState::Unlocked, reason)
    }

    fn describe(&self) -> String {
        let mut description = match &self.journal {
            Some(journal) => format!("simulated relay (journal {})", journal.path.display()),
            None => "simulated relay".to_owned(),
        };
        if self.log.shared.unlock_failing.load(Ordering::SeqCst) {
            description.push_str(&format!(", every unlock fails ({UNLOCK_FAILS_ENV})"));
        }
        description
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_each_actuation_in_order() {
        let mut door = SimDoor::new();
        let log = door.log();
        assert_eq!(log.current(), None);
        door.set_locked("startup").unwrap();
        door.set_unlocked("granted").unwrap();
        door.set_locked("hold elapsed").unwrap();
        let events = log.events();
        let summary: Vec<_> = events
            .iter()
            .map(|e| (e.state, e.reason.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                (RelayState::Locked, "startup"),
                (RelayState::Unlocked, "granted"),
                (RelayState::Locked, "hold elapsed")
            ]
        );
        assert!(events.windows(2).all(|pair| pair[0].at <= pair[1].at));
        assert_eq!(log.current(), Some(RelayState::Locked));
    }

    #[test]
    fn journal_has_one_json_line_per_actuation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.jsonl");
        let mut door = SimDoor::with_journal(&path).unwrap();
        door.set_locked("startup").unwrap();
        door.set_unlocked("granted").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let entries: Vec<SimJournalEntry> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].state, RelayState::Locked);
        assert_eq!(entries[1].state, RelayState::Unlocked);
        assert_eq!(entries[1].reason, "granted");
        let ts = DateTime::parse_from_rfc3339(&entries[1].ts).unwrap();
        assert_eq!(entries[1].ts.len(), "2025-01-02T03:04:05.678Z".len());
        assert_eq!(ts.offset().local_minus_utc(), 0);
        assert!(text.contains(r#""state":"unlocked""#));
    }

    #[test]
    fn journal_in_missing_directory_fails_with_path_in_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("relay.jsonl");
        let error = SimDoor::with_journal(&path).err().unwrap();
        assert!(error.to_string().contains("missing"), "{error}");
    }

    #[test]
    fn injected_failures_are_not_recorded_as_actuations() {
        let mut door = SimDoor::new();
        let log = door.log();
        log.fail_next_locks(1);
        assert!(door.set_locked("first").is_err());
        door.set_locked("second").unwrap();
        log.set_unlock_failing(true);
        assert!(door.set_unlocked("granted").is_err());
        let reasons: Vec<_> = log.events().into_iter().map(|e| e.reason).collect();
        assert_eq!(reasons, ["second"]);
    }

    #[test]
    fn wait_for_times_out_when_condition_never_holds() {
        let log = SimDoor::new().log();
        assert!(!log.wait_for(Duration::from_millis(10), |events| !events.is_empty()));
    }
}
