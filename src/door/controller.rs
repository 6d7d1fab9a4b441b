//! Owns the relay on one thread: carries out open requests with the pure policy, re-locks after the
//! hold, and drives the relay locked on every error, panic, emergency and shutdown (fail-secure,
//! never relying on Drop). Between an unlock and its relock the relay thread only drives the
//! backend and hands reports to bounded channels; logging, audit and metrics happen on the
//! `door-reports` thread, so a slow disk or a stalled journal cannot keep the door open.
//! The door's inputs reach the relay thread on a queue of their own and go through the pure
//! `door::inputs` state machine there, so an opening can relock at once (`relock_on = "open"`).

use super::inputs::{
    Alarm, ContactState, Happening, InputEventKind, InputReport, InputSignal, InputState,
    InputStatus, Unlock,
};
use super::policy::{
    on_request, on_tick, DoorSettings, DoorState, GrantOutcome, LockedBecause, RelayGate,
    TickAction,
};
use super::{Door, DoorError, InputSink, RelayState};
use crate::ratelimit::RateLimitedLog;
use crate::sync::lock_recovering;
use chrono::{DateTime, Utc};
use crossbeam_channel::{select, Receiver, RecvTimeoutError, Sender, TrySendError};
use serde::{Serialize, Serializer};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

mod relay_inputs;

/// First pause before retrying a failed lock; doubles up to [`LOCK_RETRY_MAX`].
const LOCK_RETRY_INITIAL: Duration = Duration::from_millis(100);
const LOCK_RETRY_MAX: Duration = Duration::from_secs(2);
/// How often a repeated lock failure is logged.
const LOCK_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Bounded wait for a mutex on the emergency path: attempts × pause ≈ 1 s.
const EMERGENCY_TRY_LOCK_ATTEMPTS: u32 = 200;
const EMERGENCY_TRY_LOCK_PAUSE: Duration = Duration::from_millis(5);
const EMERGENCY_LOCK_ATTEMPTS: u32 = 3;
/// Lock attempts when stopping (shutdown, panic, or the controller dropped without shutdown).
const FINAL_LOCK_ATTEMPTS: u32 = 5;
const FINAL_LOCK_PAUSE: Duration = Duration::from_millis(100);
/// Open requests waiting for the relay thread; more are refused (`locked`, unavailable).
const COMMAND_QUEUE: usize = 32;
/// Reports waiting for the `door-reports` thread; more are dropped and counted.
const REPORT_QUEUE: usize = 256;
/// Input readings waiting for the relay thread; more (a chattering line) are dropped and counted.
const INPUT_QUEUE: usize = 64;
/// How long shutdown waits for the reports already queued to be handed to the observer.
const REPORT_DRAIN_LIMIT: Duration = Duration::from_secs(1);

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
    /// Locked by the relay thread after it panicked; the door stays locked down.
    RelayPanicked,
    /// Locked by [`DoorController::shutdown`].
    Shutdown,
    /// Locked because the controller was dropped without [`DoorController::shutdown`].
    ControllerDropped,
    /// Locked by [`LockGuardHandle::emergency_lock`] (not reported to the observer).
    Emergency,
    /// Locked by [`super::lock_once`] (`facegate door lock`).
    LockCommand,
    /// Locked by [`DoorController::hold_locked`] (a remote `lock` command).
    Lockdown,
    /// Unlocked for the exit button.
    Exit,
    /// Locked as the door opened (`door.relock_on = "open"`).
    RelockOnOpen,
    /// Locked as the door closed (`door.relock_on = "close"`).
    RelockOnClose,
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
            ActuationReason::RelayPanicked => "relay_panicked",
            ActuationReason::Shutdown => "shutdown",
            ActuationReason::ControllerDropped => "controller_dropped",
            ActuationReason::Emergency => "emergency",
            ActuationReason::LockCommand => "lock_command",
            ActuationReason::Lockdown => "lockdown",
            ActuationReason::Exit => "exit",
            ActuationReason::RelockOnOpen => "relock_on_open",
            ActuationReason::RelockOnClose => "relock_on_close",
        }
    }
}

/// Who or what asks for the door; serialized flat into reports as `"by": "face", "identity": ...`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum OpenCause {
    /// A recognised, enrolled person.
    Face { identity: String },
    /// A verified remote `unlock` command, and who sent it.
    Command { origin: String },
    /// A visitor code, named by kind and place in `facegate codes show`, never by its digits.
    Code {
        code_kind: &'static str,
        code_index: usize,
    },
    /// The building admin's test pulse from the admin page.
    Admin,
    /// The exit button (free egress).
    Exit,
}

impl fmt::Display for OpenCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenCause::Face { identity } => write!(f, "face {identity:?}"),
            OpenCause::Command { origin } => write!(f, "command from {origin:?}"),
            OpenCause::Code {
                code_kind,
                code_index,
            } => write!(f, "code {code_kind} {code_index}"),
            OpenCause::Admin => write!(f, "admin test pulse"),
            OpenCause::Exit => write!(f, "exit button"),
        }
    }
}

/// One request to open the door, as the relay thread receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRequest {
    /// The request id of the decision, carried into every report about it.
    pub request_id: String,
    pub cause: OpenCause,
    /// The relay thread drops the request (the door stays locked) once this instant has passed:
    /// the time of the frame plus `door.max_decision_age_ms`.
    pub not_after: Instant,
}

/// What the relay did with one open request, as far as the caller could learn in time.
/// Serialized as its [`DoorReport::as_str`] word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoorReport {
    /// The relay thread unlocked the door for this request.
    Opened,
    /// The door was open; this request moved its relock later.
    Extended,
    /// The door was open and keeps its schedule (`grant_while_open = "ignore"`).
    AlreadyOpen,
    /// The door re-locked less than `cooldown_ms` ago and stays locked.
    CoolingDown,
    /// The door stays locked, for the reason given.
    Locked(LockedBecause),
    /// The unlock failed; the relay was driven locked again.
    Fault,
    /// The relay thread did not report within `door.report_wait_ms`; the outcome is reported
    /// later (log and audit) under the request id.
    Pending,
}

impl DoorReport {
    /// The word the answer, the log and the audit line use.
    pub fn as_str(self) -> &'static str {
        match self {
            DoorReport::Opened => "opened",
            DoorReport::Extended => "extended",
            DoorReport::AlreadyOpen => "already_open",
            DoorReport::CoolingDown => "cooling_down",
            DoorReport::Locked(_) => "locked",
            DoorReport::Fault => "fault",
            DoorReport::Pending => "pending",
        }
    }

    /// The door surely did not open for this request (a relay that has not reported yet may still).
    pub fn stayed_locked(self) -> bool {
        matches!(
            self,
            DoorReport::CoolingDown | DoorReport::Locked(_) | DoorReport::Fault
        )
    }

    /// The reason behind [`DoorReport::Locked`].
    pub(crate) fn locked_because(self) -> Option<LockedBecause> {
        match self {
            DoorReport::Locked(because) => Some(because),
            _ => None,
        }
    }

    /// The word, or for `locked` its reason: the detail logs and audit lines keep.
    pub fn detail(self) -> &'static str {
        self.locked_because()
            .map_or(self.as_str(), LockedBecause::as_str)
    }
}

impl From<GrantOutcome> for DoorReport {
    fn from(outcome: GrantOutcome) -> Self {
        match outcome {
            GrantOutcome::Opened => DoorReport::Opened,
            GrantOutcome::Extended => DoorReport::Extended,
            GrantOutcome::AlreadyOpen => DoorReport::AlreadyOpen,
            GrantOutcome::CoolingDown => DoorReport::CoolingDown,
        }
    }
}

impl Serialize for DoorReport {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// One attempt to drive the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actuation {
    /// The request that opened the door, for `Granted`, `HoldElapsed` and `UnlockFailed`.
    pub request_id: Option<String>,
    #[serde(flatten)]
    pub cause: Option<OpenCause>,
    /// The level the relay was driven (or asked) to.
    pub state: RelayState,
    pub at: DateTime<Utc>,
    pub reason: ActuationReason,
    /// `None` when the backend reported success; the failure otherwise.
    pub error: Option<String>,
}

/// An open request the relay thread handled without unlocking for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestHandled {
    pub request_id: String,
    #[serde(flatten)]
    pub cause: OpenCause,
    pub at: DateTime<Utc>,
    /// What became of the request (never `opened`: that is an [`Actuation`]).
    pub door: DoorReport,
    /// For `locked`, why (`expired`, `locked_down`, `unavailable`).
    pub because: Option<LockedBecause>,
}

/// What the controller reports, in order, to the observer on the `door-reports` thread.
/// Serialized with `"kind": "door"` (an actuation), `"kind": "door_request"` or
/// `"kind": "door_input"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind")]
pub enum DoorEvent {
    #[serde(rename = "door")]
    Actuation(Actuation),
    #[serde(rename = "door_request")]
    Request(RequestHandled),
    #[serde(rename = "door_input")]
    Input(InputReport),
}

/// Called on the `door-reports` thread for each [`DoorEvent`] (never on the relay thread), except
/// for the emergency path, which reports nothing. It may block: the relay does not wait for it;
/// reports that find the queue full are dropped and counted ([`DoorController::dropped_reports`]).
pub type DoorObserver = Box<dyn FnMut(&DoorEvent) + Send>;

enum Command {
    Open {
        request: OpenRequest,
        reply: Sender<DoorReport>,
    },
    /// Lock now, ending any pulse ([`DoorController::hold_locked`]).
    LockNow,
    /// The admin acknowledged this alarm, the one their page showed.
    AcknowledgeAlarm(Alarm),
}

struct Shared {
    door: Mutex<Box<dyn Door>>,
    settings: DoorSettings,
    /// Set by an emergency lock, a relay-thread panic or shutdown: the relay never unlocks again.
    locked_down: AtomicBool,
    /// Set by [`DoorController::hold_locked`] until [`DoorController::release_hold`]: no unlocking.
    held_locked: AtomicBool,
    /// Set by shutdown, so that the relay thread ends without locking on its own.
    stopping: AtomicBool,
    /// Set while the last lock attempt failed: grants are refused until a lock succeeds.
    relay_fault: AtomicBool,
    relay_thread: OnceLock<ThreadId>,
    /// Reports dropped because the `door-reports` queue was full.
    dropped_reports: Arc<AtomicU64>,
    /// A copy of the relay loop's state, for read-only queries (`busy_for`).
    published_state: Mutex<DoorState>,
    /// A copy of the inputs' state, for read-only queries (`input_status`).
    published_inputs: Mutex<InputStatus>,
    /// Set when the relay thread ends: the backends' input readers may stop.
    inputs_closed: Arc<AtomicBool>,
    /// Input readings dropped because the relay thread's input queue was full.
    dropped_inputs: Arc<AtomicU64>,
}

/// The sending side of the report queue: never blocks.
#[derive(Clone)]
struct Reporter {
    events: Sender<DoorEvent>,
    dropped: Arc<AtomicU64>,
}

impl Reporter {
    fn report(&self, event: DoorEvent) {
        if let Err(TrySendError::Full(_)) = self.events.try_send(event) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn request_handled(&self, request: &OpenRequest, door: DoorReport) {
        self.report(DoorEvent::Request(RequestHandled {
            request_id: request.request_id.clone(),
            cause: request.cause.clone(),
            at: Utc::now(),
            door,
            because: door.locked_because(),
        }));
    }
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
        request: Option<&OpenRequest>,
        reporter: &Reporter,
    ) -> Result<(), DoorError> {
        let result = {
            let mut door = lock_recovering(&self.door);
            match to {
                RelayState::Locked => door.set_locked(reason.as_str()),
                RelayState::Unlocked if self.locked_down.load(Ordering::SeqCst) => {
                    return Err(DoorError::LockedDown)
                }
                // Free egress: a lock command never keeps the exit button from opening.
                RelayState::Unlocked
                    if reason != ActuationReason::Exit
                        && self.held_locked.load(Ordering::SeqCst) =>
                {
                    return Err(DoorError::HeldLocked)
                }
                RelayState::Unlocked => door.set_unlocked(reason.as_str()),
            }
        };
        reporter.report(DoorEvent::Actuation(Actuation {
            request_id: request.map(|r| r.request_id.clone()),
            cause: request.map(|r| r.cause.clone()),
            state: to,
            at: Utc::now(),
            reason,
            error: result.as_ref().err().map(ToString::to_string),
        }));
        result
    }

    /// Locks with a few bounded retries; used when the relay thread or the controller stops.
    /// Each failed attempt is reported; nothing here logs.
    fn final_lock(&self, reason: ActuationReason, reporter: &Reporter) -> Result<(), DoorError> {
        let mut attempt = 1;
        loop {
            match self.actuate(RelayState::Locked, reason, None, reporter) {
                Ok(()) => return Ok(()),
                Err(error) if attempt >= FINAL_LOCK_ATTEMPTS => return Err(error),
                Err(_) => {
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
    /// Locks the relay now and latches a lockdown: every later request is answered
    /// `locked` (`locked_down`) until the process restarts. Never blocks for more than about a
    /// second per attempt; returns whether the backend confirmed the lock. Reports nothing to the
    /// observer (it may run inside a panic hook).
    pub(crate) fn emergency_lock(&self) -> bool {
        let shared = &self.shared;
        shared.locked_down.store(true, Ordering::SeqCst);
        if shared.relay_thread.get() == Some(&thread::current().id()) {
            // A panic hook on the relay thread, which may hold the door mutex: the relay thread
            // drives the relay locked as soon as the panic has unwound (see `run_relay_thread`).
            log::error!(
                "emergency lock on the door relay thread: it locks the relay as it unwinds"
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

/// The door: one relay thread owning the hardware, fed by [`Self::request_open`], and one
/// `door-reports` thread handing what the relay did to the observer.
pub struct DoorController {
    shared: Arc<Shared>,
    commands: Sender<Command>,
    reporter: Reporter,
    relay: JoinHandle<()>,
    /// Disconnects when the `door-reports` thread ends.
    reports_done: Receiver<()>,
}

impl DoorController {
    /// Drives `door` locked (failing start-up if it cannot), then starts the relay and report
    /// threads.
    pub fn start(
        mut door: Box<dyn Door>,
        settings: DoorSettings,
        observer: DoorObserver,
    ) -> Result<DoorController, DoorError> {
        door.set_locked(ActuationReason::Startup.as_str())?;
        log::info!("door: {} locked at start-up", door.describe());
        let (input_sink, inputs) = crossbeam_channel::bounded(INPUT_QUEUE);
        let inputs_closed = Arc::new(AtomicBool::new(false));
        let dropped_inputs = Arc::new(AtomicU64::new(0));
        door.watch_inputs(InputSink {
            sender: input_sink,
            dropped: Arc::clone(&dropped_inputs),
            closed: Arc::clone(&inputs_closed),
        });
        let shared = Arc::new(Shared {
            door: Mutex::new(door),
            settings,
            locked_down: AtomicBool::new(false),
            held_locked: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            relay_fault: AtomicBool::new(false),
            relay_thread: OnceLock::new(),
            dropped_reports: Arc::default(),
            published_state: Mutex::new(DoorState::LOCKED),
            published_inputs: Mutex::new(InputStatus {
                contact: ContactState::Unknown,
                alarm: None,
            }),
            inputs_closed,
            dropped_inputs,
        });
        let (events, received_events) = crossbeam_channel::bounded(REPORT_QUEUE);
        let reporter = Reporter {
            events,
            dropped: Arc::clone(&shared.dropped_reports),
        };
        reporter.report(DoorEvent::Actuation(Actuation {
            request_id: None,
            cause: None,
            state: RelayState::Locked,
            at: Utc::now(),
            reason: ActuationReason::Startup,
            error: None,
        }));
        let (done, reports_done) = crossbeam_channel::bounded::<()>(0);
        thread::Builder::new()
            .name("door-reports".to_owned())
            .spawn(move || {
                let _done = done;
                run_report_thread(received_events, observer);
            })
            .map_err(DoorError::Thread)?;
        let (commands, received) = crossbeam_channel::bounded(COMMAND_QUEUE);
        let thread_shared = Arc::clone(&shared);
        let thread_reporter = reporter.clone();
        let relay = thread::Builder::new()
            .name("door-relay".to_owned())
            .spawn(move || run_relay_thread(thread_shared, received, inputs, thread_reporter))
            .map_err(DoorError::Thread)?;
        Ok(DoorController {
            shared,
            commands,
            reporter,
            relay,
            reports_done,
        })
    }

    /// Hands a granted decision to the relay thread and waits at most `report_wait` for what the
    /// relay did. Never blocks longer, and never answers [`DoorReport::Opened`] unless the relay
    /// thread reported the unlock. A request that finds the relay thread's queue full or the
    /// thread gone is refused (`locked`, unavailable) and reported.
    pub fn request_open(&self, request: OpenRequest) -> DoorReport {
        let refuse = |request: &OpenRequest, because| {
            let report = DoorReport::Locked(because);
            self.reporter.request_handled(request, report);
            report
        };
        if self.shared.locked_down.load(Ordering::SeqCst) {
            return refuse(&request, LockedBecause::LockedDown);
        }
        if self.shared.held_locked.load(Ordering::SeqCst) {
            return refuse(&request, LockedBecause::HeldLocked);
        }
        let (reply, answer) = crossbeam_channel::bounded(1);
        if let Err(refused) = self.commands.try_send(Command::Open { request, reply }) {
            let Command::Open { request, .. } = refused.into_inner() else {
                unreachable!("an open request was sent");
            };
            return refuse(&request, LockedBecause::Unavailable);
        }
        match answer.recv_timeout(self.shared.settings.report_wait) {
            Ok(report) => report,
            Err(RecvTimeoutError::Timeout) => DoorReport::Pending,
            // The relay thread ended without answering: it is not working.
            Err(RecvTimeoutError::Disconnected) => DoorReport::Fault,
        }
    }

    /// How long the door stays open or cooling down after the last grant (read-only).
    pub(crate) fn busy_for(&self, now: Instant) -> Option<Duration> {
        super::policy::busy_for(
            &lock_recovering(&self.shared.published_state),
            now,
            &self.shared.settings,
        )
    }

    /// Is the relay commanded unlocked right now (as the relay thread last published)? For status
    /// displays only.
    pub fn is_open(&self) -> bool {
        matches!(
            *lock_recovering(&self.shared.published_state),
            DoorState::Open { .. }
        )
    }

    /// False after an emergency lock or a relay-thread panic, while held locked, and while a
    /// failed lock is being retried.
    pub fn is_available(&self) -> bool {
        !self.shared.locked_down.load(Ordering::SeqCst)
            && !self.shared.held_locked.load(Ordering::SeqCst)
            && !self.shared.relay_fault.load(Ordering::SeqCst)
    }

    /// Locks now (ending a pulse) and keeps the door locked, every request answered `locked`
    /// (`held_locked`), until [`Self::release_hold`]. Waits at most a second for room in the relay
    /// thread's queue; unlocking is refused from the moment this is called either way.
    pub(crate) fn hold_locked(&self) {
        self.shared.held_locked.store(true, Ordering::SeqCst);
        if self
            .commands
            .send_timeout(Command::LockNow, Duration::from_secs(1))
            .is_err()
        {
            log::error!("the relay thread did not take the lock command; grants are refused, an open door relocks at the end of its hold");
        }
    }

    /// What the door's inputs say now (as the relay thread last published).
    pub fn input_status(&self) -> InputStatus {
        *lock_recovering(&self.shared.published_inputs)
    }

    /// Acknowledges `alarm`, the one the admin page showed; an `acknowledged` event follows if it
    /// is still active. Never blocks: a full relay queue drops it (the admin tries again).
    pub(crate) fn acknowledge_alarm(&self, alarm: Alarm) -> bool {
        self.commands
            .try_send(Command::AcknowledgeAlarm(alarm))
            .is_ok()
    }

    /// Input readings dropped so far because the relay thread fell behind (for /metrics).
    pub(crate) fn dropped_inputs(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.shared.dropped_inputs)
    }

    /// Ends [`Self::hold_locked`]: the door stays locked and opens again on the next grant.
    pub(crate) fn release_hold(&self) {
        self.shared.held_locked.store(false, Ordering::SeqCst);
    }

    #[cfg(test)]
    pub(crate) fn is_held_locked(&self) -> bool {
        self.shared.held_locked.load(Ordering::SeqCst)
    }

    /// Reports dropped so far because the observer fell behind (for /metrics).
    pub(crate) fn dropped_reports(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.shared.dropped_reports)
    }

    /// A handle for a panic hook or signal thread; see [`LockGuardHandle::emergency_lock`].
    pub fn lock_guard(&self) -> LockGuardHandle {
        LockGuardHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Same as `self.lock_guard().emergency_lock()`.
    pub(crate) fn emergency_lock(&self) -> bool {
        self.lock_guard().emergency_lock()
    }

    /// Stops the relay thread, drives the relay locked explicitly (a few bounded retries), then
    /// gives the report thread up to a second to hand over what is queued. Returns the last lock
    /// error if the relay could not be confirmed locked.
    pub fn shutdown(self) -> Result<(), DoorError> {
        let DoorController {
            shared,
            commands,
            reporter,
            relay,
            reports_done,
        } = self;
        shared.locked_down.store(true, Ordering::SeqCst);
        shared.stopping.store(true, Ordering::SeqCst);
        drop(commands);
        if relay.join().is_err() {
            log::error!("door relay thread ended with a panic");
        }
        let locked = shared.final_lock(ActuationReason::Shutdown, &reporter);
        drop(reporter);
        if reports_done.recv_timeout(REPORT_DRAIN_LIMIT) == Err(RecvTimeoutError::Timeout) {
            log::error!("door reports still queued at shutdown were not all handed over");
        }
        locked
    }
}

/// The relay thread. One panic policy: a panic here latches the lockdown and drives the relay
/// locked at once, then the thread ends (the daemon's panic hook stops the process for systemd to
/// restart; requests meanwhile are answered `locked`).
fn run_relay_thread(
    shared: Arc<Shared>,
    commands: Receiver<Command>,
    inputs: Receiver<InputSignal>,
    reporter: Reporter,
) {
    let _ = shared.relay_thread.set(thread::current().id());
    // The reply of the request being handled lives out here, so that a panic cannot answer it
    // before the relay is locked.
    let mut in_flight = None;
    let run = catch_unwind(AssertUnwindSafe(|| {
        RelayLoop::new(&shared, &commands, inputs, &reporter, &mut in_flight).run()
    }));
    shared.inputs_closed.store(true, Ordering::SeqCst);
    if run.is_err() {
        shared.locked_down.store(true, Ordering::SeqCst);
        // Failures are reported; the relay stays latched either way.
        let _ = shared.final_lock(ActuationReason::RelayPanicked, &reporter);
        if let Some(reply) = in_flight.take() {
            let _ = reply.try_send(DoorReport::Fault);
        }
        for (request, reply) in commands.try_iter().filter_map(|command| match command {
            Command::Open { request, reply } => Some((request, reply)),
            Command::LockNow | Command::AcknowledgeAlarm(_) => None,
        }) {
            let report = DoorReport::Locked(LockedBecause::LockedDown);
            reporter.request_handled(&request, report);
            let _ = reply.try_send(report);
        }
    }
}

/// Logs what the relay did and hands it to the observer; a panicking observer is logged and the
/// thread carries on. Ends when every reporter is gone.
fn run_report_thread(events: Receiver<DoorEvent>, mut observer: DoorObserver) {
    let lock_failures = RateLimitedLog::new(LOCK_FAILURE_LOG_INTERVAL);
    for event in events {
        log_event(&event, &lock_failures);
        if catch_unwind(AssertUnwindSafe(|| observer(&event))).is_err() {
            log::error!("door observer panicked on {event:?}; the relay keeps working");
        }
    }
}

fn log_event(event: &DoorEvent, lock_failures: &RateLimitedLog) {
    match event {
        DoorEvent::Actuation(a) => {
            let request_id = a.request_id.as_deref().unwrap_or("-");
            let cause = a.cause.as_ref().map_or(String::new(), |c| format!(" {c}"));
            let line = format!(
                "door state={} reason={} request_id={request_id}{cause}",
                a.state.as_str(),
                a.reason.as_str(),
            );
            match (&a.error, a.state) {
                (None, _) => log::info!("{line}"),
                (Some(error), RelayState::Unlocked) => {
                    log::error!("{line} failed: {error:?}; the door stays locked")
                }
                (Some(error), RelayState::Locked) => {
                    lock_failures.error(format!(
                        "{line} failed: {error:?}; retrying until it locks, grants are refused meanwhile"
                    ));
                }
            }
        }
        DoorEvent::Request(r) => {
            let level = match r.door {
                DoorReport::Locked(_) => log::Level::Warn,
                _ => log::Level::Info,
            };
            log::log!(
                level,
                "door request_id={} {}: {}",
                r.request_id,
                r.cause,
                r.door.detail()
            );
        }
        DoorEvent::Input(input) => {
            let level = match input.event {
                InputEventKind::Forced | InputEventKind::Held | InputEventKind::ContactFault => {
                    log::Level::Warn
                }
                _ => log::Level::Info,
            };
            let cause = input
                .cause
                .as_ref()
                .map_or(String::new(), |c| format!(" {c}"));
            log::log!(
                level,
                "door input event={} contact={} request_id={}{cause}",
                input.event.as_str(),
                input.contact.as_str(),
                input.request_id.as_deref().unwrap_or("-"),
            );
        }
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
    /// The backends' input readings; `never()` once their readers are gone.
    inputs: Receiver<InputSignal>,
    input_state: InputState,
    /// Numbers the exit presses' request ids.
    exits: u64,
    reporter: &'a Reporter,
    /// The reply to the request being handled.
    in_flight: &'a mut Option<Sender<DoorReport>>,
    state: DoorState,
    /// Who opened the current pulse, for the relock report.
    pulse: Option<OpenRequest>,
    /// Present while the relay failed to lock and must be retried.
    lock_retry: Option<LockRetry>,
}

impl<'a> RelayLoop<'a> {
    fn new(
        shared: &'a Shared,
        commands: &'a Receiver<Command>,
        inputs: Receiver<InputSignal>,
        reporter: &'a Reporter,
        in_flight: &'a mut Option<Sender<DoorReport>>,
    ) -> Self {
        // A relay thread restarted after a panic starts from locked; so does what it publishes.
        *lock_recovering(&shared.published_state) = DoorState::LOCKED;
        RelayLoop {
            shared,
            commands,
            inputs,
            input_state: InputState::default(),
            exits: 0,
            reporter,
            in_flight,
            state: DoorState::LOCKED,
            pulse: None,
            lock_retry: None,
        }
    }

    /// The next instant at which [`Self::tick`] has work: the relock (unless the closing will
    /// relock), a lock retry, a contact settling or the held-open alarm.
    fn next_deadline(&self) -> Option<Instant> {
        let inputs = &self.shared.settings.inputs;
        let relock = self
            .state
            .next_deadline()
            .filter(|_| !self.input_state.keeps_unlocked(inputs));
        [
            relock,
            self.lock_retry.map(|r| r.at),
            self.input_state.next_deadline(inputs),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn run(mut self) {
        loop {
            let timer = self
                .next_deadline()
                .map_or_else(crossbeam_channel::never, crossbeam_channel::at);
            let received = select! {
                recv(self.commands) -> command => command.map_err(|_| RecvTimeoutError::Disconnected),
                recv(self.inputs) -> signal => {
                    match signal {
                        Ok(signal) => self.input_signal(signal),
                        Err(_) => self.inputs = crossbeam_channel::never(),
                    }
                    Err(RecvTimeoutError::Timeout)
                }
                recv(timer) -> _ => Err(RecvTimeoutError::Timeout),
            };
            match received {
                Ok(Command::Open { request, reply }) => {
                    *self.in_flight = Some(reply);
                    let report = self.open(request);
                    if let Some(reply) = self.in_flight.take() {
                        // A caller that stopped waiting has answered `pending`; the report went out.
                        let _ = reply.try_send(report);
                    }
                }
                Ok(Command::LockNow) => {
                    self.set_state(DoorState::LOCKED);
                    let pulse = self.pulse.take();
                    self.lock(ActuationReason::Lockdown, pulse.as_ref());
                }
                Ok(Command::AcknowledgeAlarm(alarm)) => self.feed(Happening::Acknowledge(alarm)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    if !self.shared.stopping.load(Ordering::SeqCst) {
                        // Dropped without shutdown; failures are reported.
                        let _ = self
                            .shared
                            .final_lock(ActuationReason::ControllerDropped, self.reporter);
                    }
                    return;
                }
            }
            self.tick();
        }
    }

    fn tick(&mut self) {
        self.feed(Happening::Tick);
        let now = Instant::now();
        // `relock_on = "close"`: the closing relocks this pulse, not the hold's end. A lock retry
        // still happens on time.
        let (next, action) = if self
            .input_state
            .keeps_unlocked(&self.shared.settings.inputs)
        {
            (self.state, TickAction::Nothing)
        } else {
            on_tick(&self.state, now, &self.shared.settings)
        };
        self.set_state(next);
        if action == TickAction::Relock {
            let pulse = self.pulse.take();
            self.lock(ActuationReason::HoldElapsed, pulse.as_ref());
        } else if self.lock_retry.is_some_and(|retry| now >= retry.at) {
            self.lock(ActuationReason::LockRetry, None);
        }
    }

    fn set_state(&mut self, next: DoorState) {
        self.state = next;
        *lock_recovering(&self.shared.published_state) = next;
    }

    fn gate(&self) -> RelayGate {
        if self.shared.locked_down.load(Ordering::SeqCst) {
            RelayGate::LockedDown
        } else if self.shared.held_locked.load(Ordering::SeqCst) {
            RelayGate::HeldLocked
        } else if self.lock_retry.is_some() {
            RelayGate::LockFailing
        } else {
            RelayGate::Ready
        }
    }

    fn open(&mut self, request: OpenRequest) -> DoorReport {
        let (next, verdict) = on_request(
            &self.state,
            Instant::now(),
            request.not_after,
            self.gate(),
            &self.shared.settings,
        );
        self.carry_out(request, next, verdict, ActuationReason::Granted)
    }

    /// Unlocks for `request` when the policy says so (`unlock_reason`), and reports what became of it.
    fn carry_out(
        &mut self,
        request: OpenRequest,
        next: DoorState,
        verdict: Result<GrantOutcome, LockedBecause>,
        unlock_reason: ActuationReason,
    ) -> DoorReport {
        let report = match verdict {
            Ok(GrantOutcome::Opened) => {
                let unlocked = self.shared.actuate(
                    RelayState::Unlocked,
                    unlock_reason,
                    Some(&request),
                    self.reporter,
                );
                match unlocked {
                    Ok(()) => {
                        self.set_state(next);
                        self.feed(Happening::Unlocked(Unlock {
                            request_id: request.request_id.clone(),
                            cause: request.cause.clone(),
                        }));
                        self.pulse = Some(request);
                        return DoorReport::Opened;
                    }
                    Err(DoorError::LockedDown) => DoorReport::Locked(LockedBecause::LockedDown),
                    Err(DoorError::HeldLocked) => DoorReport::Locked(LockedBecause::HeldLocked),
                    Err(_) => {
                        self.lock(ActuationReason::UnlockFailed, Some(&request));
                        return DoorReport::Fault;
                    }
                }
            }
            Ok(outcome) => {
                self.set_state(next);
                DoorReport::from(outcome)
            }
            Err(because) => DoorReport::Locked(because),
        };
        self.reporter.request_handled(&request, report);
        report
    }

    fn lock(&mut self, reason: ActuationReason, request: Option<&OpenRequest>) {
        match self
            .shared
            .actuate(RelayState::Locked, reason, request, self.reporter)
        {
            Ok(()) => {
                self.lock_retry = None;
                self.shared.relay_fault.store(false, Ordering::SeqCst);
                self.feed(Happening::Relocked);
            }
            Err(_) => {
                let delay = self.lock_retry.map_or(LOCK_RETRY_INITIAL, |retry| {
                    (retry.delay * 2).min(LOCK_RETRY_MAX)
                });
                self.lock_retry = Some(LockRetry {
                    at: Instant::now() + delay,
                    delay,
                });
                self.shared.relay_fault.store(true, Ordering::SeqCst);
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

    type Reports = Arc<Mutex<Vec<DoorEvent>>>;

    fn settings(hold: Duration, cooldown: Duration, mode: GrantWhileOpen) -> DoorSettings {
        DoorSettings {
            hold,
            cooldown,
            grant_while_open: mode,
            report_wait: WAIT,
            inputs: crate::door::InputSettings::default(),
        }
    }

    fn recording(reports: &Reports) -> DoorObserver {
        let sink = Arc::clone(reports);
        Box::new(move |event: &DoorEvent| lock_recovering(&sink).push(event.clone()))
    }

    fn start_with(door: SimDoor, settings: DoorSettings) -> (DoorController, SimLog, Reports) {
        let log = door.log();
        let reports: Reports = Arc::default();
        let controller =
            DoorController::start(Box::new(door), settings, recording(&reports)).unwrap();
        (controller, log, reports)
    }

    fn start_sim(settings: DoorSettings) -> (DoorController, SimLog, Reports) {
        start_with(SimDoor::new(), settings)
    }

    fn request(id: &str, not_after: Instant) -> OpenRequest {
        OpenRequest {
            request_id: id.to_owned(),
            cause: OpenCause::Face {
                identity: "alice".to_owned(),
            },
            not_after,
        }
    }

    /// A fresh request (a minute to live).
    fn open(controller: &DoorController, id: &str) -> DoorReport {
        controller.request_open(request(id, Instant::now() + Duration::from_secs(60)))
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

    fn relocked(events: &[SimEvent]) -> bool {
        has_reason(events, ActuationReason::HoldElapsed)
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

    fn actuations(reports: &Reports) -> Vec<Actuation> {
        lock_recovering(reports)
            .iter()
            .filter_map(|event| match event {
                DoorEvent::Actuation(actuation) => Some(actuation.clone()),
                DoorEvent::Request(_) | DoorEvent::Input(_) => None,
            })
            .collect()
    }

    fn handled(reports: &Reports, id: &str) -> Option<RequestHandled> {
        lock_recovering(reports)
            .iter()
            .find_map(|event| match event {
                DoorEvent::Request(handled) if handled.request_id == id => Some(handled.clone()),
                _ => None,
            })
    }

    /// Time from the unlock to the relock after the hold, from the relay's own record.
    fn pulse_length(events: &[SimEvent]) -> Duration {
        let unlock = events.iter().find(|e| e.state == RelayState::Unlocked);
        let relock = events
            .iter()
            .find(|e| e.reason == ActuationReason::HoldElapsed.as_str());
        relock.unwrap().at.duration_since(unlock.unwrap().at)
    }

    #[test]
    fn grant_unlocks_then_relocks_after_hold() {
        let hold = Duration::from_millis(100);
        let (controller, log, reports) =
            start_sim(settings(hold, Duration::ZERO, GrantWhileOpen::Extend));
        let requested_at = Instant::now();
        assert_eq!(open(&controller, "req-1"), DoorReport::Opened);
        assert!(log.wait_for(WAIT, relocked));
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
        let reports = actuations(&reports);
        let relock = &reports[2];
        assert_eq!(relock.reason, ActuationReason::HoldElapsed);
        assert_eq!(relock.request_id.as_deref(), Some("req-1"));
        assert_eq!(
            relock.cause,
            Some(OpenCause::Face {
                identity: "alice".into()
            })
        );
        assert_eq!(relock.error, None);
        assert_eq!(reports.last().unwrap().reason, ActuationReason::Shutdown);
    }

    #[test]
    fn hold_locked_ends_a_pulse_at_once_and_refuses_grants_until_released() {
        let (controller, log, reports) =
            start_sim(settings(LONG_HOLD, Duration::ZERO, GrantWhileOpen::Extend));
        assert_eq!(open(&controller, "req-1"), DoorReport::Opened);
        controller.hold_locked();
        assert!(log.wait_for(WAIT, |e| has_reason(e, ActuationReason::Lockdown)));
        assert_eq!(log.current(), Some(RelayState::Locked));
        assert!(controller.is_held_locked() && !controller.is_available());
        assert_eq!(
            controller.busy_for(Instant::now()),
            None,
            "a held door is not open: frames are decided, not paused"
        );
        assert_eq!(
            open(&controller, "req-2"),
            DoorReport::Locked(LockedBecause::HeldLocked)
        );
        assert!(wait_until(|| handled(&reports, "req-2").is_some()));
        controller.release_hold();
        assert_eq!(open(&controller, "req-3"), DoorReport::Opened);
        assert_eq!(unlock_count(&log.events()), 2);
        controller.shutdown().unwrap();
        assert_eq!(log.current(), Some(RelayState::Locked));
    }

    #[test]
    fn request_open_reports_the_unlock_before_the_relock() {
        let (controller, log, _) =
            start_sim(settings(LONG_HOLD, Duration::ZERO, GrantWhileOpen::Extend));
        assert_eq!(open(&controller, "req-1"), DoorReport::Opened);
        // `opened` means the relay already reported the unlock.
        assert!(unlocked(&log.events()));
        assert!(!relocked(&log.events()));
        controller.shutdown().unwrap();
        assert_eq!(log.current(), Some(RelayState::Locked));
    }

    #[test]
    fn grant_while_open_extend_moves_the_relock_later() {
        let hold = Duration::from_secs(2);
        let (controller, log, _) =
            start_sim(settings(hold, Duration::ZERO, GrantWhileOpen::Extend));
        assert_eq!(open(&controller, "req-1"), DoorReport::Opened);
        thread::sleep(Duration::from_millis(150));
        let extended_at = Instant::now();
        assert_eq!(open(&controller, "req-2"), DoorReport::Extended);
        assert!(log.wait_for(WAIT, relocked));
        let events = log.events();
        assert_eq!(unlock_count(&events), 1);
        assert!(events.last().unwrap().at >= extended_at + hold);
        controller.shutdown().unwrap();
    }

    #[test]
    fn grant_while_open_ignore_keeps_a_single_pulse() {
        let hold = Duration::from_secs(2);
        let (controller, log, _) =
            start_sim(settings(hold, Duration::ZERO, GrantWhileOpen::Ignore));
        assert_eq!(open(&controller, "req-1"), DoorReport::Opened);
        assert_eq!(open(&controller, "req-2"), DoorReport::AlreadyOpen);
        assert!(log.wait_for(WAIT, relocked));
        assert_eq!(unlock_count(&log.events()), 1);
        controller.shutdown().unwrap();
    }

    #[test]
    fn busy_for_follows_the_relay_through_hold_and_cooldown() {
        let (controller, log, _) = start_sim(settings(
            Duration::from_millis(50),
            LONG_HOLD,
            GrantWhileOpen::Extend,
        ));
        assert_eq!(controller.busy_for(Instant::now()), None, "locked at rest");
        assert_eq!(open(&controller, "req-1"), DoorReport::Opened);
        let open_for = controller.busy_for(Instant::now()).unwrap();
        assert!(
            open_for > LONG_HOLD - WAIT,
            "hold plus cooldown: {open_for:?}"
        );
        assert!(log.wait_for(WAIT, relocked));
        assert!(wait_until(|| controller
            .busy_for(Instant::now())
            .is_some_and(|d| d <= LONG_HOLD)));
        assert_eq!(
            controller.busy_for(Instant::now() + LONG_HOLD),
            None,
            "after the cooldown"
        );
        controller.shutdown().unwrap();
    }

    #[test]
    fn cooldown_refuses_a_grant_right_after_the_relock() {
        let (controller, log, reports) = start_sim(settings(
            Duration::from_millis(50),
            LONG_HOLD,
            GrantWhileOpen::Extend,
        ));
        assert_eq!(open(&controller, "req-1"), DoorReport::Opened);
        assert!(log.wait_for(WAIT, relocked));
        assert_eq!(open(&controller, "req-2"), DoorReport::CoolingDown);
        controller.shutdown().unwrap();
        assert_eq!(unlock_count(&log.events()), 1);
        assert_eq!(
            handled(&reports, "req-2").map(|h| h.door),
            Some(DoorReport::CoolingDown)
        );
    }

    #[test]
    fn shutdown_during_a_pulse_leaves_the_door_locked() {
        let (controller, log, _) =
            start_sim(settings(LONG_HOLD, Duration::ZERO, GrantWhileOpen::Extend));
        assert_eq!(open(&controller, "req-1"), DoorReport::Opened);
        controller.shutdown().unwrap();
        let last = log.events().pop().unwrap();
        assert_eq!(
            (last.state, last.reason.as_str()),
            (RelayState::Locked, "shutdown")
        );
    }

    #[test]
    fn emergency_lock_during_a_pulse_locks_and_refuses_later_grants() {
        let (controller, log, reports) =
            start_sim(settings(LONG_HOLD, Duration::ZERO, GrantWhileOpen::Extend));
        assert_eq!(open(&controller, "req-1"), DoorReport::Opened);
        let guard = controller.lock_guard();
        let from_signal_thread = thread::spawn(move || guard.emergency_lock());
        assert!(from_signal_thread.join().unwrap());
        let last = log.events().pop().unwrap();
        assert_eq!(
            (last.state, last.reason.as_str()),
            (RelayState::Locked, "emergency")
        );
        let refused = DoorReport::Locked(LockedBecause::LockedDown);
        assert_eq!(open(&controller, "req-2"), refused);
        assert!(!controller.is_available());
        controller.shutdown().unwrap();
        assert_eq!(unlock_count(&log.events()), 1);
        assert_eq!(handled(&reports, "req-2").map(|h| h.door), Some(refused));
    }

    /// Regression: the answer said `opened` while a failed unlock left the door locked.
    #[test]
    fn an_unlock_that_fails_is_reported_as_a_fault_not_opened() {
        let (controller, log, reports) =
            start_sim(settings(LONG_HOLD, Duration::ZERO, GrantWhileOpen::Extend));
        log.set_unlock_failing(true);
        assert_eq!(open(&controller, "req-1"), DoorReport::Fault);
        assert!(!unlocked(&log.events()));
        assert_eq!(log.current(), Some(RelayState::Locked));
        assert!(wait_until(|| actuations(&reports)
            .iter()
            .any(|a| a.reason == ActuationReason::UnlockFailed)));
        let failed_unlock = actuations(&reports)
            .into_iter()
            .find(|a| a.state == RelayState::Unlocked)
            .unwrap();
        assert!(failed_unlock.error.is_some());
        assert_eq!(failed_unlock.request_id.as_deref(), Some("req-1"));
        log.set_unlock_failing(false);
        assert_eq!(open(&controller, "req-2"), DoorReport::Opened);
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
        assert_eq!(open(&controller, "req-1"), DoorReport::Opened);
        assert!(log.wait_for(WAIT, |e| has_reason(e, ActuationReason::LockRetry)));
        assert!(wait_until(|| actuations(&reports)
            .iter()
            .filter(|a| a.state == RelayState::Locked && a.error.is_some())
            .count()
            == 2));
        assert!(wait_until(|| controller.is_available()));
        controller.shutdown().unwrap();
    }

    #[test]
    fn a_relay_panic_locks_at_once_and_latches_the_lockdown() {
        let (controller, log, _) =
            start_sim(settings(LONG_HOLD, Duration::ZERO, GrantWhileOpen::Extend));
        log.panic_on_next_unlock();
        assert_eq!(open(&controller, "req-1"), DoorReport::Fault);
        // `fault` is answered only once the relay thread has locked.
        let last = log.events().pop().unwrap();
        assert_eq!(last.reason, ActuationReason::RelayPanicked.as_str());
        assert!(!unlocked(&log.events()));
        assert!(!controller.is_available());
        assert_eq!(
            open(&controller, "req-2"),
            DoorReport::Locked(LockedBecause::LockedDown)
        );
        controller.shutdown().unwrap();
        assert_eq!(log.current(), Some(RelayState::Locked));
        assert!(!unlocked(&log.events()));
    }

    #[test]
    fn panicking_observer_does_not_stop_the_relock() {
        let door = SimDoor::new();
        let log = door.log();
        let observer: DoorObserver = Box::new(|_| panic!("observer bug"));
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
        assert_eq!(open(&controller, "req-1"), DoorReport::Opened);
        assert!(log.wait_for(WAIT, relocked));
        controller.shutdown().unwrap();
    }

    /// Regression: a 2 s stall in the audit write kept the door unlocked for 2.0 s with a 300 ms hold.
    /// The sink stalls 5 s and the bounds are half that: wide for a loaded machine, far below the defect.
    #[test]
    fn an_audit_sink_that_stalls_does_not_delay_the_answer_or_the_relock() {
        const STALL: Duration = Duration::from_secs(5);
        let hold = Duration::from_millis(300);
        let door = SimDoor::new();
        let log = door.log();
        let stalling: DoorObserver = Box::new(|_| thread::sleep(STALL));
        let controller = DoorController::start(
            Box::new(door),
            settings(hold, Duration::ZERO, GrantWhileOpen::Extend),
            stalling,
        )
        .unwrap();
        let asked_at = Instant::now();
        assert_eq!(open(&controller, "req-1"), DoorReport::Opened);
        assert!(
            asked_at.elapsed() < STALL / 2,
            "the answer waited on the sink"
        );
        assert!(log.wait_for(WAIT, relocked));
        let pulse = pulse_length(&log.events());
        assert!(
            pulse >= hold && pulse < hold + STALL / 2,
            "hold {hold:?} but the door stayed unlocked for {pulse:?}"
        );
        controller.shutdown().unwrap();
    }

    /// Regression: a grant decided while the relay thread was busy unlocked 2.8 s later, past the
    /// maximum decision age.
    #[test]
    fn a_relay_thread_held_busy_past_the_maximum_age_drops_the_late_open() {
        let hold = Duration::from_millis(50);
        let (controller, log, reports) = start_sim(DoorSettings {
            report_wait: Duration::from_millis(100),
            ..settings(hold, Duration::ZERO, GrantWhileOpen::Extend)
        });
        // The relock at the end of the first pulse keeps the relay thread busy for a few seconds. The
        // late request is sent only once the relay thread is inside that relock: a fixed sleep let it
        // arrive before the relock on a loaded machine (answered `extended`).
        log.stall_next_lock(Duration::from_secs(3));
        assert_eq!(open(&controller, "req-1"), DoorReport::Opened);
        assert!(wait_until(|| log.lock_stalls_begun() == 1));
        let max_age = Duration::from_millis(300);
        let late = controller.request_open(request("req-2", Instant::now() + max_age));
        assert_eq!(late, DoorReport::Pending, "the relay thread is busy");
        assert!(wait_until(|| handled(&reports, "req-2").is_some()));
        let dropped = handled(&reports, "req-2").unwrap();
        assert_eq!(dropped.door, DoorReport::Locked(LockedBecause::Expired));
        assert_eq!(dropped.because, Some(LockedBecause::Expired));
        assert_eq!(unlock_count(&log.events()), 1, "{:?}", log.events());
        controller.shutdown().unwrap();
        assert_eq!(unlock_count(&log.events()), 1);
    }

    #[test]
    fn door_reports_serialize_as_their_word_and_events_carry_their_kind() {
        let words = [
            (DoorReport::Opened, "opened"),
            (DoorReport::Extended, "extended"),
            (DoorReport::AlreadyOpen, "already_open"),
            (DoorReport::CoolingDown, "cooling_down"),
            (DoorReport::Locked(LockedBecause::Expired), "locked"),
            (DoorReport::Fault, "fault"),
            (DoorReport::Pending, "pending"),
        ];
        for (report, word) in words {
            assert_eq!(serde_json::to_value(report).unwrap(), word);
        }
        let event = DoorEvent::Request(RequestHandled {
            request_id: "r1".into(),
            cause: OpenCause::Face {
                identity: "alice".into(),
            },
            at: Utc::now(),
            door: DoorReport::Locked(LockedBecause::Expired),
            because: Some(LockedBecause::Expired),
        });
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["kind"], "door_request");
        assert_eq!(json["by"], "face");
        assert_eq!(json["identity"], "alice");
        assert_eq!(json["door"], "locked");
        assert_eq!(json["because"], "expired");
    }

    /// Regression: with `relock_on = "close"` and the opened door still open, a failed lock (a lock
    /// command) was never retried and the relay thread spun on the passed retry deadline.
    #[test]
    fn a_failed_lock_is_retried_while_relock_on_close_waits_for_the_closing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("inputs");
        let contact = crate::door::InputLine {
            gpio_pin: 0,
            active_high: true,
            debounce: Duration::ZERO,
        };
        let wiring = crate::door::InputWiring {
            contact: Some(contact),
            exit_button: None,
        };
        let door = SimDoor::new().with_inputs(wiring, file.clone());
        let inputs = crate::door::InputSettings {
            relock_on: crate::door::RelockOn::Close,
            ..crate::door::InputSettings::default()
        };
        let (controller, log, _) = start_with(
            door,
            DoorSettings {
                inputs,
                ..settings(LONG_HOLD, Duration::ZERO, GrantWhileOpen::Extend)
            },
        );
        assert!(wait_until(
            || controller.input_status().contact == ContactState::Closed
        ));
        assert_eq!(open(&controller, "req-1"), DoorReport::Opened);
        std::fs::write(&file, "contact open\n").unwrap();
        assert!(wait_until(
            || controller.input_status().contact == ContactState::Open
        ));
        log.fail_next_locks(1);
        controller.hold_locked();
        assert!(log.wait_for(WAIT, |e| has_reason(e, ActuationReason::LockRetry)));
        assert_eq!(log.current(), Some(RelayState::Locked));
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
        assert_eq!(open(&controller, "req-1"), DoorReport::Opened);
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
