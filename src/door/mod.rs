//! The door relay: the hardware abstraction, its backends (GPIO, simulated), the pure timing policy
//! and the controller thread that pulses the relay and keeps it locked on every error path; and the
//! door's inputs (contact, exit button), read by the same backends into the relay thread's pure
//! input state machine.

mod controller;
pub mod gpio;
pub mod inputs;
pub mod policy;
pub mod sim;

pub use controller::{
    Actuation, ActuationReason, DoorController, DoorEvent, DoorObserver, DoorReport,
    LockGuardHandle, OpenCause, OpenRequest, RequestHandled,
};
pub use inputs::{
    Alarm, ContactState, InputEventKind, InputReport, InputSettings, InputStatus, RelockOn,
};
pub use policy::{DoorSettings, DoorState, GrantOutcome, GrantWhileOpen, LockedBecause};

use crossbeam_channel::{Sender, TrySendError};
use inputs::InputSignal;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The door hardware: the relay, and the input lines wired next to it. Implementations drive their
/// output immediately; `reason` is a short label for journals and debug logs.
pub trait Door: Send {
    fn set_locked(&mut self, reason: &str) -> Result<(), DoorError>;
    fn set_unlocked(&mut self, reason: &str) -> Result<(), DoorError>;
    /// One line for start-up logs, e.g. "GPIO relay on BCM 17 (active-high: locked = low)".
    fn describe(&self) -> String;
    /// Starts reading the wired inputs (contact, exit button) on threads of the backend's own,
    /// reporting every reading to `sink`: first the contact's current level, then each change. An
    /// input that cannot be read is reported as [`InputSignal::ContactFault`] (contact) or logged
    /// (exit button); it never stops the relay.
    fn watch_inputs(&mut self, sink: InputSink);
}

/// One input line as wired (`[door.contact]`, `[door.exit_button]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLine {
    /// BCM number (the GPIO backend only).
    pub gpio_pin: u8,
    /// The level that means open (contact) or pressed (button) is high.
    pub active_high: bool,
    pub debounce: Duration,
}

/// The door's input lines; `None` for an input that is not fitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InputWiring {
    pub contact: Option<InputLine>,
    pub exit_button: Option<InputLine>,
}

/// Where a backend reports its input readings: the relay thread's bounded input queue. Never
/// blocks; a reading that finds the queue full is dropped and counted.
#[derive(Debug, Clone)]
pub struct InputSink {
    sender: Sender<InputSignal>,
    dropped: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
}

impl InputSink {
    pub(crate) fn send(&self, signal: InputSignal) {
        if let Err(TrySendError::Full(_)) = self.sender.try_send(signal) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// True once the relay thread no longer reads inputs: a reader thread may end.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// The two levels a relay can be driven to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayState {
    Locked,
    Unlocked,
}

impl RelayState {
    pub fn as_str(self) -> &'static str {
        match self {
            RelayState::Locked => "locked",
            RelayState::Unlocked => "unlocked",
        }
    }
}

/// Which relay backend to build; the configuration module maps `[door]` settings onto this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BackendKind {
    /// A relay on BCM pin `pin`; `active_low` is true for relay boards energised by a low pin.
    Gpio {
        pin: u8,
        active_low: bool,
        inputs: InputWiring,
    },
    /// The simulated relay, optionally journaling each actuation as a JSON line to `journal`, with
    /// its inputs read from the lines appended to `inputs_file`.
    Sim {
        journal: Option<PathBuf>,
        inputs: InputWiring,
        inputs_file: PathBuf,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DoorError {
    #[error(
        "GPIO unavailable: {cause}. On a Raspberry Pi, check that the user is in the gpio group and \
         /dev/gpiomem exists; elsewhere use door.backend = \"sim\""
    )]
    GpioUnavailable { cause: String },
    #[error(
        "GPIO pin {pin} cannot be used: {cause}. Check that door.gpio_pin is a BCM GPIO number \
         (not a header position) and that no other program holds the pin"
    )]
    GpioPin { pin: u8, cause: String },
    #[error(
        "cannot write the simulated relay journal {}: {cause}. Check that its directory exists \
         and is writable",
        path.display()
    )]
    Journal {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("simulated relay failure while trying to {action} (injected by a test)")]
    SimulatedFailure { action: &'static str },
    #[error(
        "the door is locked down after an emergency lock or shutdown and will not unlock; \
         restart facegate to resume"
    )]
    LockedDown,
    #[error("the door is held locked by a lock command; send `clear` to let it open again")]
    HeldLocked,
    #[error("cannot start the door relay thread: {0}. The system may be out of memory or threads")]
    Thread(std::io::Error),
}

/// Builds the relay backend described by `kind`. A GPIO backend drives its pin to the locked
/// level as part of construction.
pub(crate) fn build_backend(kind: &BackendKind) -> Result<Box<dyn Door>, DoorError> {
    Ok(match kind {
        BackendKind::Gpio {
            pin,
            active_low,
            inputs,
        } => Box::new(gpio::GpioDoor::open(*pin, *active_low)?.with_inputs(*inputs)),
        BackendKind::Sim {
            journal,
            inputs,
            inputs_file,
        } => {
            let door = match journal {
                None => sim::SimDoor::new(),
                Some(path) => sim::SimDoor::with_journal(path)?,
            };
            Box::new(
                door.with_faults_from_env()
                    .with_inputs(*inputs, inputs_file.clone()),
            )
        }
    })
}

/// Builds the backend and drives it locked once (`facegate door lock`, run by systemd
/// `ExecStopPost` so the relay ends locked after any exit, even SIGKILL).
pub(crate) fn lock_once(kind: &BackendKind) -> Result<(), DoorError> {
    let mut door = build_backend(kind)?;
    door.set_locked(ActuationReason::LockCommand.as_str())?;
    log::info!("{} driven locked", door.describe());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_once_with_sim_journal_writes_one_locked_line() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("relay.jsonl");
        lock_once(&BackendKind::Sim {
            journal: Some(journal.clone()),
            inputs: InputWiring::default(),
            inputs_file: dir.path().join("inputs"),
        })
        .unwrap();
        let text = std::fs::read_to_string(&journal).unwrap();
        let entries: Vec<sim::SimJournalEntry> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].state, RelayState::Locked);
        assert_eq!(entries[0].reason, "lock_command");
    }

    #[test]
    fn build_backend_describes_sim() {
        let door = build_backend(&BackendKind::Sim {
            journal: None,
            inputs: InputWiring::default(),
            inputs_file: PathBuf::from("unused"),
        })
        .unwrap();
        assert_eq!(door.describe(), "simulated relay");
    }

    #[test]
    fn gpio_fails_with_guidance_and_never_claims_a_real_pin() {
        // BCM 99 does not exist: off a Pi the GPIO is missing altogether, on a Pi the pin is refused.
        let error = gpio::GpioDoor::open(99, false)
            .err()
            .expect("BCM 99 is never usable");
        let message = error.to_string();
        if std::path::Path::new("/dev/gpiomem").exists() {
            assert!(
                matches!(error, DoorError::GpioPin { pin: 99, .. }),
                "{message}"
            );
            assert!(message.contains("door.gpio_pin"), "{message}");
        } else {
            assert!(message.starts_with("GPIO unavailable: "), "{message}");
            assert!(message.contains("door.backend = \"sim\""), "{message}");
        }
    }
}
