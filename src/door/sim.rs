//! Simulated relay for laptops and tests: records every actuation in memory and, optionally, as
//! JSON lines in a journal file so a test driving the real binary in another process can see
//! exactly what the relay did.
//!
//! Fault injection for a daemon under test: with `FACEGATE_SIM_UNLOCK_FAILS=1` in its environment,
//! the sim backend built by `door::build_backend` fails every unlock (the start-up log says so).
//! Only the simulated relay reads that variable.
//!
//! The simulated inputs: a file (`door.sim_inputs`) followed like `tail -f`, one reading per
//! appended line: `contact open`, `contact closed`, `exit pressed` (and `contact fault`, for tests
//! of a line that cannot be read).

use super::inputs::{ContactLevel, InputSignal};
use super::{Door, DoorError, InputSink, InputWiring, RelayState};
use crate::sync::lock_recovering;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Environment variable that makes every unlock of a [`SimDoor`] built by `door::build_backend`
/// fail when set to `1`, so that tests of the real binary can see a failed unlock.
pub(crate) const UNLOCK_FAILS_ENV: &str = "FACEGATE_SIM_UNLOCK_FAILS";
/// How often the inputs file is looked at for appended lines (a simulator may poll).
const INPUTS_POLL: Duration = Duration::from_millis(50);
/// A line longer than this in the inputs file is not a reading.
const MAX_INPUT_LINE: usize = 256;

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
    /// Stalled lock attempts that have begun, so a test acts while the relay thread is inside one.
    lock_stalls_begun: AtomicU64,
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

    #[cfg(test)]
    /// How many stalled lock attempts have begun.
    pub(crate) fn lock_stalls_begun(&self) -> u64 {
        self.shared.lock_stalls_begun.load(Ordering::SeqCst)
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
    inputs: InputWiring,
    inputs_file: Option<PathBuf>,
}

/// One line of the inputs file: a reading, nothing (blank or `#` comment), or not understood.
fn parse_input_line(line: &str) -> Result<Option<InputSignal>, ()> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] => Ok(None),
        [first, ..] if first.starts_with('#') => Ok(None),
        ["contact", "open"] => Ok(Some(InputSignal::Contact(ContactLevel::Open))),
        ["contact", "closed"] => Ok(Some(InputSignal::Contact(ContactLevel::Closed))),
        ["contact", "fault"] => Ok(Some(InputSignal::ContactFault)),
        ["exit", "pressed"] => Ok(Some(InputSignal::ExitPressed)),
        _ => Err(()),
    }
}

/// Whether the wiring has `signal`'s input fitted.
fn fitted(wiring: &InputWiring, signal: InputSignal) -> bool {
    match signal {
        InputSignal::Contact(_) | InputSignal::ContactFault => wiring.contact.is_some(),
        InputSignal::ExitPressed => wiring.exit_button.is_some(),
    }
}

/// Follows the inputs file from its end, like `tail -f`: the contact's last state in the file (or
/// closed) is the first reading; presses written before the start are history, not presses.
fn follow_inputs(path: &Path, wiring: InputWiring, sink: &InputSink) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    let mut history = String::new();
    file.read_to_string(&mut history)?;
    let mut offset = history.len() as u64;
    if wiring.contact.is_some() {
        let last_contact = history
            .lines()
            .rev()
            .filter_map(|line| parse_input_line(line).ok().flatten())
            .find(|signal| matches!(signal, InputSignal::Contact(_)));
        sink.send(last_contact.unwrap_or(InputSignal::Contact(ContactLevel::Closed)));
    }
    let mut partial = Vec::new();
    while !sink.is_closed() {
        std::thread::sleep(INPUTS_POLL);
        let length = file.metadata()?.len();
        if length < offset {
            // Truncated: start again from its beginning.
            offset = 0;
            partial.clear();
        }
        if length == offset {
            continue;
        }
        file.seek(SeekFrom::Start(offset))?;
        let mut appended = Vec::new();
        Read::by_ref(&mut file)
            .take(length - offset)
            .read_to_end(&mut appended)?;
        offset += appended.len() as u64;
        partial.extend_from_slice(&appended);
        while let Some(end) = partial.iter().position(|&byte| byte == b'\n') {
            let line: Vec<u8> = partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            match parse_input_line(&line) {
                Ok(Some(signal)) if fitted(&wiring, signal) => sink.send(signal),
                Ok(Some(_)) => log::warn!(
                    "{}: `{}` is for an input that is not enabled ([door.contact] or [door.exit_button])",
                    path.display(),
                    line.trim()
                ),
                Ok(None) => {}
                Err(()) => log::warn!(
                    "{}: `{}` is not a reading: write `contact open`, `contact closed` or `exit pressed`",
                    path.display(),
                    line.trim()
                ),
            }
        }
        if partial.len() > MAX_INPUT_LINE {
            partial.clear();
        }
    }
    Ok(())
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
            inputs: InputWiring::default(),
            inputs_file: None,
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
            journal: Some(Journal { path, file }),
            ..SimDoor::new()
        })
    }

    /// Applies the fault injection asked for in the environment ([`UNLOCK_FAILS_ENV`]).
    pub(crate) fn with_faults_from_env(self) -> Self {
        if std::env::var_os(UNLOCK_FAILS_ENV).is_some_and(|value| value == "1") {
            self.log.set_unlock_failing(true);
        }
        self
    }

    /// Reads the `inputs` wired from `file` (see the module's documentation).
    pub(crate) fn with_inputs(mut self, inputs: InputWiring, file: PathBuf) -> Self {
        self.inputs = inputs;
        self.inputs_file = Some(file);
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
        if stall_ms > 0 {
            self.log
                .shared
                .lock_stalls_begun
                .fetch_add(1, Ordering::SeqCst);
        }
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

    fn watch_inputs(&mut self, sink: InputSink) {
        let wiring = self.inputs;
        let Some(path) = self.inputs_file.clone() else {
            return;
        };
        if wiring.contact.is_none() && wiring.exit_button.is_none() {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("door-sim-inputs".into())
            .spawn(move || {
                if let Err(error) = follow_inputs(&path, wiring, &sink) {
                    log::error!(
                        "the simulated inputs {} cannot be read: {error}. Check door.sim_inputs",
                        path.display()
                    );
                    if wiring.contact.is_some() {
                        sink.send(InputSignal::ContactFault);
                    }
                }
            });
        if let Err(error) = spawned {
            log::error!("the simulated inputs thread did not start: {error}");
        }
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
    fn input_lines_are_readings_comments_or_refused() {
        let table = [
            (
                "contact open",
                Ok(Some(InputSignal::Contact(ContactLevel::Open))),
            ),
            (
                "  contact   closed \n",
                Ok(Some(InputSignal::Contact(ContactLevel::Closed))),
            ),
            ("exit pressed", Ok(Some(InputSignal::ExitPressed))),
            ("contact fault", Ok(Some(InputSignal::ContactFault))),
            ("", Ok(None)),
            ("# the door opens", Ok(None)),
            ("contact ajar", Err(())),
            ("exit", Err(())),
            ("exit pressed twice", Err(())),
        ];
        for (line, expected) in table {
            assert_eq!(parse_input_line(line), expected, "{line:?}");
        }
    }

    #[test]
    fn inputs_file_is_followed_from_its_end_like_tail_f() {
        use crossbeam_channel::RecvTimeoutError;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inputs");
        std::fs::write(&path, "contact open\nexit pressed\n").unwrap();
        let (sender, readings) = crossbeam_channel::bounded(16);
        let sink = InputSink {
            sender,
            dropped: Arc::default(),
            closed: Arc::default(),
        };
        let line = super::super::InputLine {
            gpio_pin: 0,
            active_high: true,
            debounce: Duration::ZERO,
        };
        let wiring = InputWiring {
            contact: Some(line),
            exit_button: Some(line),
        };
        let closed = Arc::clone(&sink.closed);
        let mut door = SimDoor::new().with_inputs(wiring, path.clone());
        door.watch_inputs(sink);
        let wait = Duration::from_secs(10);
        assert_eq!(
            readings.recv_timeout(wait),
            Ok(InputSignal::Contact(ContactLevel::Open)),
            "the last contact line before the start; the old press is history"
        );
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"exit pressed\ncontact clo").unwrap();
        assert_eq!(readings.recv_timeout(wait), Ok(InputSignal::ExitPressed));
        file.write_all(b"sed\nnonsense\n").unwrap();
        assert_eq!(
            readings.recv_timeout(wait),
            Ok(InputSignal::Contact(ContactLevel::Closed)),
            "a line written in two parts is one reading"
        );
        closed.store(true, Ordering::SeqCst);
        assert_eq!(
            readings.recv_timeout(wait),
            Err(RecvTimeoutError::Disconnected),
            "the reader ends once the relay thread is gone"
        );
    }

    #[test]
    fn wait_for_times_out_when_condition_never_holds() {
        let log = SimDoor::new().log();
        assert!(!log.wait_for(Duration::from_millis(10), |events| !events.is_empty()));
    }
}
