//! Owns the relay on one thread: carries out grants decided by the pure policy without blocking the
//! caller, re-locks after the hold, and drives the relay locked on every error, panic, emergency
//! and shutdown (fail-secure, never relying on Drop).

use super::policy::{on_grant, on_tick, DoorSettings, DoorState, GrantOutcome, TickAction};
use super::{Door, DoorError, RelayState};
use crate::ratelimit::RateLimitedLog;
use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::Serialize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

/// First pause before retrying a failed lock; doubles up to [`LOCK_RETRY_MAX`].
const LOCK_RETRY_INITIAL: Duration = Duration::from_millis(100);
const LOCK_RETRY_MAX: Duration = Duration::from_secs(2);
/// How often a repeated lock failure is logged.
const LOCK_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Bounded wait for a mutex on the emergency path: attempts × pause ≈ 1 s.
const EMERGENCY_TRY_LOCK_ATTEMPTS: u32 = 200;
const EMERGENCY_TRY_LOCK_PAUSE: Duration = Duration::from_millis(5);
const EMERGENCY_LOCK_ATTEMPTS: u32 = 3;
/// Lock attempts when stopping (shutdown, or the controller dropped without shutdown).
const FINAL_LOCK_ATTEMPTS: u32 = 5;
const FINAL_LOCK_PAUSE: Duration = Duration::from_millis(100);

/// Why the relay was driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActuationReason {
    /// Locked by [`DoorController::start`] before anything else.
    Startup,
    /// Unlocked for a granted decision.
    Granted,
    /// Re-locked when the hold time ended.
    HoldElapsed,
    /// Locked because unlocking failed.
    UnlockFailed,
    /// Locked again after an earlier lock attempt failed.
    LockRetry,
    /// Locked after the relay thread recovered from a panic.
    RelayRecovered,
    /// Locked by [`DoorController::shutdown`].
    Shutdown,
    /// Locked because the controller was dropped without [`DoorController::shutdown`].
    ControllerDropped,
    /// Locked by [`LockGuardHandle::emergency_lock`] (not reported to the observer).
    Emergency,
    /// Locked by [`super::lock_once`] (`facegate door lock`).
    LockCommand,
}

impl ActuationReason {
    /// Stable snake_case name, identical to the serialized form.
    pub fn as_str(self) -> &'static str {
        match self {
            ActuationReason::Startup => "startup",
            ActuationReason::Granted => "granted",
            ActuationReason::HoldElapsed => "hold_elapsed",
            ActuationReason::UnlockFailed => "unlock_failed",
            ActuationReason::LockRetry => "lock_retry",
            ActuationReason::RelayRecovered => "relay_recovered",
            ActuationReason::Shutdown => "shutdown",
            ActuationReason::ControllerDropped => "controller_dropped",
            ActuationReason::Emergency => "emergency",
            ActuationReason::LockCommand => "lock_command",
        }
    }
}

/// One attempt to drive the relay, reported to the [`ActuationObserver`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actuation {
    /// The request that opened the door, for `Granted`, `HoldElapsed` and `UnlockFailed`.
    pub request_id: Option<String>,
    pub identity: Option<String>,
    /// The level the relay was driven (or asked) to.
    pub state: RelayState,
    pub at: DateTime<Utc>,
    pub reason: ActuationReason,
    /// `None` when the backend reported success; the failure otherwise.
    pub error: Option<String>,
}

/// Called on the thread that drove the relay, after each attempt (successful or not), except on the
/// emergency path, which may run inside a panic hook. Keep it short; a panic in it is caught and
/// logged.
pub type ActuationObserver = Box<dyn Fn(&Actuation) + Send + Sync>;

#[derive(Debug, Clone)]
struct Requester {
    request_id: String,
    identity: String,
}

enum Command {
    Open(Requester),
    Shutdown,
}

struct Shared {
    door: Mutex<Box<dyn Door>>,
    state: Mutex<DoorState>,
    settings: DoorSettings,
    /// Set by an emergency lock or shutdown: the relay must never be unlocked again.
    locked_down: AtomicBool,
    /// Set by shutdown: the relay thread must exit instead of restarting after a panic.
    stopping: AtomicBool,
    /// Set while the last lock attempt failed: grants are refused until a lock succeeds.
    relay_fault: AtomicBool,
    relay_thread: OnceLock<ThreadId>,
    observer: ActuationObserver,
    lock_failures: RateLimitedLog,
}

fn lock_recovering<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Takes `mutex` within about a second, recovering a poisoned one; `None` if it stays busy.
fn try_lock_bounded<T: ?Sized>(mutex: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    for _ in 0..EMERGENCY_TRY_LOCK_ATTEMPTS {
        match mutex.try_lock() {
            Ok(guard) => return Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => return Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => thread::sleep(EMERGENCY_TRY_LOCK_PAUSE),
        }
    }
    None
}

impl Shared {
    /// Drives the relay and reports the attempt. Unlocking is refused once locked down; the
    /// check happens under the door mutex so it cannot race an emergency lock.
    fn actuate(
        &self,
        to: RelayState,
        reason: ActuationReason,
        requester: Option<&Requester>,
    ) -> Result<(), DoorError> {
        let result = {
            let mut door = lock_recovering(&self.door);
            match to {
                RelayState::Locked => door.set_locked(reason.as_str()),
                RelayState::Unlocked if self.locked_down.load(Ordering::SeqCst) => {
                    return Err(DoorError::LockedDown)
                }
                RelayState::Unlocked => door.set_unlocked(reason.as_str()),
            }
        };
        self.notify(&Actuation {
            request_id: requester.map(|r| r.request_id.clone()),
            identity: requester.map(|r| r.identity.clone()),
            state: to,
            at: Utc::now(),
            reason,
            error: result.as_ref().err().map(ToString::to_string),
        });
        result
    }

    fn notify(&self, actuation: &Actuation) {
        if catch_unwind(AssertUnwindSafe(|| (self.observer)(actuation))).is_err() {
            log::error!(
                "door actuation observer panicked on {:?}; the relay keeps working",
                actuation.reason
            );
        }
    }

    fn set_state(&self, state: DoorState) {
        *lock_recovering(&self.state) = state;
    }

    /// Locks with a few bounded retries; used when the relay thread or the controller stops.
    fn final_lock(&self, reason: ActuationReason) -> Result<(), DoorError> {
        self.set_state(DoorState::LOCKED);
        let mut attempt = 1;
        loop {
            match self.actuate(RelayState::Locked, reason, None) {
                Ok(()) => return Ok(()),
                Err(error) if attempt >= FINAL_LOCK_ATTEMPTS => {
                    log::error!(
                        "door relay failed to lock ({}) after {attempt} attempts: {error}",
                        reason.as_str()
                    );
                    return Err(error);
                }
                Err(error) => {
                    log::error!(
                        "door relay failed to lock ({}), attempt {attempt}: {error}; retrying",
                        reason.as_str()
                    );
                    thread::sleep(FINAL_LOCK_PAUSE);
                    attempt += 1;
                }
            }
        }
    }
}

/// Drives the relay to locked from anywhere (panic hook, signal thread) without going through the
/// relay thread. Cloneable, `Send + Sync`.
#[derive(Clone)]
pub struct LockGuardHandle {
    shared: Arc<Shared>,
}

impl LockGuardHandle {
    /// Locks the relay now and latches a lockdown: every later grant returns
    /// [`GrantOutcome::Unavailable`] until the process restarts. Never blocks for more than about
    /// a second per mutex; returns whether the backend confirmed the lock. Does not call the
    /// observer (it may run inside a panic hook while the observer's own locks are held).
    pub fn emergency_lock(&self) -> bool {
        let shared = &self.shared;
        shared.locked_down.store(true, Ordering::SeqCst);
        if let Some(mut state) = try_lock_bounded(&shared.state) {
            *state = DoorState::LOCKED;
        }
        if shared.relay_thread.get() == Some(&thread::current().id()) {
            // Called from a panic hook on the relay thread, which may hold the door mutex: its
            // panic recovery drives the relay locked as soon as the panic unwinds.
            log::error!(
                "emergency lock on the door relay thread: its panic recovery locks the relay"
            );
            return false;
        }
        for attempt in 1..=EMERGENCY_LOCK_ATTEMPTS {
            let Some(mut door) = try_lock_bounded(&shared.door) else {
                log::error!(
                    "emergency lock could not take the relay within about a second; it stays busy"
                );
                return false;
            };
            match door.set_locked(ActuationReason::Emergency.as_str()) {
                Ok(()) => {
                    log::warn!("emergency lock: {} driven locked", door.describe());
                    return true;
                }
                Err(error) => log::error!("emergency lock attempt {attempt} failed: {error}"),
            }
        }
        false
    }
}

/// The door: one relay thread owning the hardware, fed by non-blocking [`Self::request_open`].
pub struct DoorController {
    shared: Arc<Shared>,
    commands: Sender<Command>,
    relay: JoinHandle<()>,
}

impl DoorController {
    /// Drives `door` locked (failing start-up if it cannot), then starts the relay thread.
    pub fn start(
        mut door: Box<dyn Door>,
        settings: DoorSettings,
        on_actuation: ActuationObserver,
    ) -> Result<DoorController, DoorError> {
        door.set_locked(ActuationReason::Startup.as_str())?;
        log::info!("door: {} locked at start-up", door.describe());
        let shared = Arc::new(Shared {
            door: Mutex::new(door),
            state: Mutex::new(DoorState::LOCKED),
            settings,
            locked_down: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            relay_fault: AtomicBool::new(false),
            relay_thread: OnceLock::new(),
            observer: on_actuation,
            lock_failures: RateLimitedLog::new(LOCK_FAILURE_LOG_INTERVAL),
        });
        shared.notify(&Actuation {
            request_id: None,
            identity: None,
            state: RelayState::Locked,
            at: Utc::now(),
            reason: ActuationReason::Startup,
            error: None,
        });
        let (commands, received) = crossbeam_channel::unbounded();
        let thread_shared = Arc::clone(&shared);
        let relay = thread::Builder::new()
            .name("door-relay".to_owned())
            .spawn(move || run_relay_thread(thread_shared, received))
            .map_err(DoorError::Thread)?;
        Ok(DoorController {
            shared,
            commands,
            relay,
        })
    }

    /// Applies a fresh granted decision and returns at once; the relay thread performs the
    /// unlock and the timed relock. The outcome is the decision; actual relay activity (including
    /// a failed unlock, which keeps the door locked) is reported to the observer.
    pub fn request_open(&self, request_id: &str, identity: &str) -> GrantOutcome {
        if !self.is_available() {
            return GrantOutcome::Unavailable;
        }
        let mut state = lock_recovering(&self.shared.state);
        let (next, outcome) = on_grant(&state, Instant::now(), &self.shared.settings);
        if outcome == GrantOutcome::Opened {
            let command = Command::Open(Requester {
                request_id: request_id.to_owned(),
                identity: identity.to_owned(),
            });
            if self.commands.send(command).is_err() {
                log::error!("door relay thread is gone; request {request_id} cannot open the door");
                return GrantOutcome::Unavailable;
            }
        }
        *state = next;
        outcome
    }

    /// Is the relay commanded unlocked right now? For status displays only.
    pub fn is_open(&self) -> bool {
        matches!(*lock_recovering(&self.shared.state), DoorState::Open { .. })
    }

    /// False after an emergency lock, and while a failed lock is being retried.
    pub fn is_available(&self) -> bool {
        !self.shared.locked_down.load(Ordering::SeqCst)
            && !self.shared.relay_fault.load(Ordering::SeqCst)
    }

    /// A handle for a panic hook or signal thread; see [`LockGuardHandle::emergency_lock`].
    pub fn lock_guard(&self) -> LockGuardHandle {
        LockGuardHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Same as `self.lock_guard().emergency_lock()`.
    pub fn emergency_lock(&self) -> bool {
        self.lock_guard().emergency_lock()
    }

    /// Stops the relay thread, then drives the relay locked explicitly (a few bounded retries).
    /// Returns the last lock error if the relay could not be confirmed locked.
    pub fn shutdown(self) -> Result<(), DoorError> {
        let DoorController {
            shared,
            commands,
            relay,
        } = self;
        shared.locked_down.store(true, Ordering::SeqCst);
        shared.stopping.store(true, Ordering::SeqCst);
        // A send error means the thread is already gone; locking below covers it either way.
        let _ = commands.send(Command::Shutdown);
        drop(commands);
        if relay.join().is_err() {
            log::error!("door relay thread ended with a panic");
        }
        shared.final_lock(ActuationReason::Shutdown)
    }
}

fn run_relay_thread(shared: Arc<Shared>, commands: Receiver<Command>) {
    let _ = shared.relay_thread.set(thread::current().id());
    let mut lock_confirmed = true;
    let mut recovery_pause = Duration::ZERO;
    loop {
        let started = Instant::now();
        let run = catch_unwind(AssertUnwindSafe(|| {
            RelayLoop::new(&shared, &commands).run(lock_confirmed)
        }));
        if run.is_ok() {
            return;
        }
        log::error!(
            "door relay thread panicked; driving the door locked and restarting the relay loop"
        );
        shared.set_state(DoorState::LOCKED);
        shared.relay_fault.store(true, Ordering::SeqCst);
        lock_confirmed = false;
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        // Back off only when panics repeat quickly, so one panic re-locks at once.
        recovery_pause = if started.elapsed() > LOCK_RETRY_MAX {
            Duration::ZERO
        } else {
            (recovery_pause * 2).clamp(LOCK_RETRY_INITIAL, LOCK_RETRY_MAX)
        };
        thread::sleep(recovery_pause);
    }
}

#[derive(Debug, Clone, Copy)]
struct LockRetry {
    at: Instant,
    delay: Duration,
}

struct RelayLoop<'a> {
    shared: &'a Shared,
    commands: &'a Receiver<Command>,
    /// Who opened the current pulse, for the relock report.
    pulse_requester: Option<Requester>,
    /// Present while the relay failed to lock and must be retried.
    lock_retry: Option<LockRetry>,
}

impl<'a> RelayLoop<'a> {
    fn new(shared: &'a Shared, commands: &'a Receiver<Command>) -> Self {
        RelayLoop {
            shared,
            commands,
            pulse_requester: None,
            lock_retry: None,
        }
    }

    fn run(mut self, lock_confirmed: bool) {
        if !lock_confirmed {
            self.lock(ActuationReason::RelayRecovered, None);
        }
        loop {
            let policy_deadline = lock_recovering(&self.shared.state).next_deadline();
            let retry_deadline = self.lock_retry.map(|retry| retry.at);
            let deadline = match (policy_deadline, retry_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let received = match deadline {
                Some(deadline) => self
                    .commands
                    .recv_timeout(deadline.saturating_duration_since(Instant::now())),
                None => self
                    .commands
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
            };
            match received {
                Ok(Command::Open(requester)) => self.open(requester),
                Ok(Command::Shutdown) => return,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    log::warn!("door controller dropped without shutdown; locking the relay");
                    // Errors are logged inside; nothing else can be done on this path.
                    let _ = self.shared.final_lock(ActuationReason::ControllerDropped);
                    return;
                }
            }
            self.tick();
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        let action = {
            let mut state = lock_recovering(&self.shared.state);
            let (next, action) = on_tick(&state, now, &self.shared.settings);
            *state = next;
            action
        };
        if action == TickAction::Relock {
            let requester = self.pulse_requester.take();
            self.lock(ActuationReason::HoldElapsed, requester.as_ref());
        } else if self.lock_retry.is_some_and(|retry| now >= retry.at) {
            self.lock(ActuationReason::LockRetry, None);
        }
    }

    fn open(&mut self, requester: Requester) {
        if self.lock_retry.is_some() {
            log::error!(
                "request {} cannot open the door: the relay failed to lock and is being retried",
                requester.request_id
            );
            self.shared.set_state(DoorState::LOCKED);
            return;
        }
        match self.shared.actuate(
            RelayState::Unlocked,
            ActuationReason::Granted,
            Some(&requester),
        ) {
            Ok(()) => self.pulse_requester = Some(requester),
            Err(DoorError::LockedDown) => {
                log::warn!(
                    "request {} arrived during a lockdown; the door stays locked",
                    requester.request_id
                );
                self.shared.set_state(DoorState::LOCKED);
            }
            Err(error) => {
                log::error!(
                    "door relay failed to unlock for request {}: {error}; keeping the door locked",
                    requester.request_id
                );
                self.shared.set_state(DoorState::LOCKED);
                self.lock(ActuationReason::UnlockFailed, Some(&requester));
            }
        }
    }

    fn lock(&mut self, reason: ActuationReason, requester: Option<&Requester>) {
        match self.shared.actuate(RelayState::Locked, reason, requester) {
            Ok(()) => {
                if self.lock_retry.take().is_some() {
                    log::warn!("door relay locked again after failed attempts");
                }
                self.shared.relay_fault.store(false, Ordering::SeqCst);
            }
            Err(error) => {
                let delay = self.lock_retry.map_or(LOCK_RETRY_INITIAL, |retry| {
                    (retry.delay * 2).min(LOCK_RETRY_MAX)
                });
                self.lock_retry = Some(LockRetry {
                    at: Instant::now() + delay,
                    delay,
                });
                self.shared.relay_fault.store(true, Ordering::SeqCst);
                self.shared.lock_failures.error(format!(
                    "door relay failed to lock ({}): {error}; retrying until it locks, grants are refused meanwhile",
                    reason.as_str()
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::door::policy::GrantWhileOpen;
    use crate::door::sim::{SimDoor, SimEvent, SimLog};

    /// Liveness bound for waiting on the relay thread; never a performance assertion.
    const WAIT: Duration = Duration::from_secs(10);
    const LONG_HOLD: Duration = Duration::from_secs(600);

    type Reports = Arc<Mutex<Vec<Actuation>>>;

    fn settings(hold: Duration, cooldown: Duration, mode: GrantWhileOpen) -> DoorSettings {
        DoorSettings {
            hold,
            cooldown,
            grant_while_open: mode,
        }
    }

    fn start_sim(settings: DoorSettings) -> (DoorController, SimLog, Reports) {
        let door = SimDoor::new();
        let log = door.log();
        let reports: Reports = Arc::default();
        let sink = Arc::clone(&reports);
        let observer: ActuationObserver =
            Box::new(move |a: &Actuation| lock_recovering(&sink).push(a.clone()));
        let controller = DoorController::start(Box::new(door), settings, observer).unwrap();
        (controller, log, reports)
    }

    fn reasons(events: &[SimEvent]) -> Vec<(RelayState, &str)> {
        events
            .iter()
            .map(|e| (e.state, e.reason.as_str()))
            .collect()
    }

    fn has_reason(events: &[SimEvent], reason: ActuationReason) -> bool {
        events.iter().any(|e| e.reason == reason.as_str())
    }

    fn unlocked(events: &[SimEvent]) -> bool {
        events.iter().any(|e| e.state == RelayState::Unlocked)
    }

    fn unlock_count(events: &[SimEvent]) -> usize {
        events
            .iter()
            .filter(|e| e.state == RelayState::Unlocked)
            .count()
    }

    fn wait_until(condition: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if condition() {
                return true;
            }
            thread::sleep(Duration::from_millis(5));
        }
        false
    }

    fn reported(reports: &Reports, condition: impl Fn(&Actuation) -> bool) -> bool {
        lock_recovering(reports).iter().any(condition)
    }

    #[test]
    fn grant_unlocks_then_relocks_after_hold() {
        let hold = Duration::from_millis(100);
        let (controller, log, reports) =
            start_sim(settings(hold, Duration::ZERO, GrantWhileOpen::Extend));
        let requested_at = Instant::now();
        assert_eq!(
            controller.request_open("req-1", "alice"),
            GrantOutcome::Opened
        );
        assert!(log.wait_for(WAIT, |e| has_reason(e, ActuationReason::HoldElapsed)));
        let events = log.events();
        assert_eq!(
            reasons(&events),
            [
                (RelayState::Locked, "startup"),
                (RelayState::Unlocked, "granted"),
                (RelayState::Locked, "hold_elapsed")
            ]
        );
        assert!(
            events[2].at >= requested_at + hold,
            "relocked before the hold ended"
        );
        controller.shutdown().unwrap();
        let reports = lock_recovering(&reports).clone();
        let relock = &reports[2];
        assert_eq!(relock.reason, ActuationReason::HoldElapsed);
        assert_eq!(relock.request_id.as_deref(), Some("req-1"));
        assert_eq!(relock.identity.as_deref(), Some("alice"));
        assert_eq!(relock.error, None);
        assert_eq!(reports.last().unwrap().reason, ActuationReason::Shutdown);
    }

    #[test]
    fn request_open_returns_before_the_relock() {
        let (controller, log, _) =
            start_sim(settings(LONG_HOLD, Duration::ZERO, GrantWhileOpen::Extend));
        assert_eq!(
            controller.request_open("req-1", "alice"),
            GrantOutcome::Opened
        );
        assert!(!has_reason(&log.events(), ActuationReason::HoldElapsed));
        assert!(log.wait_for(WAIT, unlocked));
        controller.shutdown().unwrap();
        assert_eq!(log.current(), Some(RelayState::Locked));
    }

    #[test]
    fn grant_while_open_extend_moves_the_relock_later() {
        let hold = Duration::from_secs(2);
        let (controller, log, _) =
            start_sim(settings(hold, Duration::ZERO, GrantWhileOpen::Extend));
        assert_eq!(
            controller.request_open("req-1", "alice"),
            GrantOutcome::Opened
        );
        thread::sleep(Duration::from_millis(150));
        let extended_at = Instant::now();
        assert_eq!(
            controller.request_open("req-2", "bob"),
            GrantOutcome::Extended
        );
        assert!(log.wait_for(WAIT, |e| has_reason(e, ActuationReason::HoldElapsed)));
        let events = log.events();
        let unlocks = unlock_count(&events);
        assert_eq!(unlocks, 1);
        assert!(events.last().unwrap().at >= extended_at + hold);
        controller.shutdown().unwrap();
    }

    #[test]
    fn grant_while_open_ignore_keeps_a_single_pulse() {
        let hold = Duration::from_secs(2);
        let (controller, log, _) =
            start_sim(settings(hold, Duration::ZERO, GrantWhileOpen::Ignore));
        assert_eq!(
            controller.request_open("req-1", "alice"),
            GrantOutcome::Opened
        );
        assert_eq!(
            controller.request_open("req-2", "bob"),
            GrantOutcome::AlreadyOpen
        );
        assert!(log.wait_for(WAIT, |e| has_reason(e, ActuationReason::HoldElapsed)));
        let unlocks = unlock_count(&log.events());
        assert_eq!(unlocks, 1);
        controller.shutdown().unwrap();
    }

    #[test]
    fn cooldown_refuses_a_grant_right_after_the_relock() {
        let (controller, log, _) = start_sim(settings(
            Duration::from_millis(50),
            LONG_HOLD,
            GrantWhileOpen::Extend,
        ));
        assert_eq!(
            controller.request_open("req-1", "alice"),
            GrantOutcome::Opened
        );
        assert!(log.wait_for(WAIT, |e| has_reason(e, ActuationReason::HoldElapsed)));
        assert_eq!(
            controller.request_open("req-2", "alice"),
            GrantOutcome::CoolingDown
        );
        controller.shutdown().unwrap();
        let unlocks = unlock_count(&log.events());
        assert_eq!(unlocks, 1);
    }

    #[test]
    fn shutdown_during_a_pulse_leaves_the_door_locked() {
        let (controller, log, _) =
            start_sim(settings(LONG_HOLD, Duration::ZERO, GrantWhileOpen::Extend));
        controller.request_open("req-1", "alice");
        assert!(log.wait_for(WAIT, unlocked));
        controller.shutdown().unwrap();
        let last = log.events().pop().unwrap();
        assert_eq!(
            (last.state, last.reason.as_str()),
            (RelayState::Locked, "shutdown")
        );
    }

    #[test]
    fn emergency_lock_during_a_pulse_locks_and_refuses_later_grants() {
        let (controller, log, _) =
            start_sim(settings(LONG_HOLD, Duration::ZERO, GrantWhileOpen::Extend));
        controller.request_open("req-1", "alice");
        assert!(log.wait_for(WAIT, unlocked));
        let guard = controller.lock_guard();
        let from_signal_thread = thread::spawn(move || guard.emergency_lock());
        assert!(from_signal_thread.join().unwrap());
        let last = log.events().pop().unwrap();
        assert_eq!(
            (last.state, last.reason.as_str()),
            (RelayState::Locked, "emergency")
        );
        assert_eq!(
            controller.request_open("req-2", "alice"),
            GrantOutcome::Unavailable
        );
        assert!(!controller.is_available());
        controller.shutdown().unwrap();
        let unlocks = unlock_count(&log.events());
        assert_eq!(unlocks, 1);
    }

    #[test]
    fn failed_unlock_keeps_the_door_locked() {
        let (controller, log, reports) =
            start_sim(settings(LONG_HOLD, Duration::ZERO, GrantWhileOpen::Extend));
        log.set_unlock_failing(true);
        assert_eq!(
            controller.request_open("req-1", "alice"),
            GrantOutcome::Opened
        );
        assert!(wait_until(
            || reported(&reports, |a| a.reason == ActuationReason::UnlockFailed)
        ));
        assert!(!unlocked(&log.events()));
        assert_eq!(log.current(), Some(RelayState::Locked));
        let failed_unlock = lock_recovering(&reports)
            .iter()
            .find(|a| a.state == RelayState::Unlocked)
            .cloned()
            .unwrap();
        assert!(failed_unlock.error.is_some());
        assert_eq!(failed_unlock.request_id.as_deref(), Some("req-1"));
        log.set_unlock_failing(false);
        assert_eq!(
            controller.request_open("req-2", "alice"),
            GrantOutcome::Opened
        );
        assert!(log.wait_for(WAIT, unlocked));
        controller.shutdown().unwrap();
    }

    #[test]
    fn failed_relock_is_retried_until_the_relay_locks() {
        let (controller, log, reports) = start_sim(settings(
            Duration::from_millis(50),
            Duration::ZERO,
            GrantWhileOpen::Extend,
        ));
        log.fail_next_locks(2);
        assert_eq!(
            controller.request_open("req-1", "alice"),
            GrantOutcome::Opened
        );
        assert!(log.wait_for(WAIT, |e| has_reason(e, ActuationReason::LockRetry)));
        let failed_locks = lock_recovering(&reports)
            .iter()
            .filter(|a| a.state == RelayState::Locked && a.error.is_some())
            .count();
        assert_eq!(failed_locks, 2);
        assert!(wait_until(|| controller.is_available()));
        controller.shutdown().unwrap();
    }

    #[test]
    fn panic_in_the_relay_backend_is_recovered_and_the_door_relocked() {
        let (controller, log, _) =
            start_sim(settings(LONG_HOLD, Duration::ZERO, GrantWhileOpen::Extend));
        log.panic_on_next_unlock();
        assert_eq!(
            controller.request_open("req-1", "alice"),
            GrantOutcome::Opened
        );
        assert!(log.wait_for(WAIT, |e| has_reason(e, ActuationReason::RelayRecovered)));
        assert!(!unlocked(&log.events()));
        // The recovered relay thread serves later grants again.
        assert!(wait_until(|| controller.is_available()));
        assert_eq!(
            controller.request_open("req-2", "alice"),
            GrantOutcome::Opened
        );
        assert!(log.wait_for(WAIT, unlocked));
        controller.shutdown().unwrap();
        assert_eq!(log.current(), Some(RelayState::Locked));
    }

    #[test]
    fn panicking_observer_does_not_stop_the_relock() {
        let door = SimDoor::new();
        let log = door.log();
        let observer: ActuationObserver = Box::new(|_| panic!("observer bug"));
        let controller = DoorController::start(
            Box::new(door),
            settings(
                Duration::from_millis(50),
                Duration::ZERO,
                GrantWhileOpen::Extend,
            ),
            observer,
        )
        .unwrap();
        assert_eq!(
            controller.request_open("req-1", "alice"),
            GrantOutcome::Opened
        );
        assert!(log.wait_for(WAIT, |e| has_reason(e, ActuationReason::HoldElapsed)));
        controller.shutdown().unwrap();
    }

    #[test]
    fn start_fails_when_the_relay_cannot_lock() {
        let door = SimDoor::new();
        door.log().fail_next_locks(1);
        let result = DoorController::start(
            Box::new(door),
            settings(LONG_HOLD, Duration::ZERO, GrantWhileOpen::Extend),
            Box::new(|_| {}),
        );
        assert!(matches!(result, Err(DoorError::SimulatedFailure { .. })));
    }

    #[test]
    fn dropping_the_controller_without_shutdown_still_locks() {
        let (controller, log, _) =
            start_sim(settings(LONG_HOLD, Duration::ZERO, GrantWhileOpen::Extend));
        controller.request_open("req-1", "alice");
        assert!(log.wait_for(WAIT, unlocked));
        drop(controller);
        assert!(log.wait_for(WAIT, |e| has_reason(e, ActuationReason::ControllerDropped)));
        assert_eq!(log.current(), Some(RelayState::Locked));
    }

    #[test]
    fn shutdown_reports_a_relay_that_cannot_lock() {
        let (controller, log, _) =
            start_sim(settings(LONG_HOLD, Duration::ZERO, GrantWhileOpen::Extend));
        log.fail_next_locks(usize::MAX);
        assert!(controller.shutdown().is_err());
    }
}
