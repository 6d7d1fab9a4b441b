//! The one panic policy, in a test binary of its own because it installs the process's panic hook:
//! a panic anywhere drives the door locked first and latches the lockdown, then asks the daemon to
//! stop (for systemd to start a fresh process); a panic on the relay thread itself is locked by
//! that thread at once, without a restart and without a pause.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use facegate::daemon::install_panic_hook;
use facegate::door::sim::{SimDoor, SimLog};
use facegate::door::{
    DoorController, DoorReport, DoorSettings, GrantWhileOpen, InputSettings, LockedBecause,
    OpenCause, OpenRequest, RelayState,
};

/// Liveness bound for the relay thread; never a performance assertion.
const WAIT: Duration = Duration::from_secs(10);
/// "At once", against the 600 s hold a relay thread that waited would keep: wide enough for a loaded
/// two-core machine (a 700 ms bound failed under load), still far below the hold it guards against.
const AT_ONCE: Duration = Duration::from_secs(30);

fn start() -> (DoorController, SimLog, Arc<AtomicUsize>) {
    let door = SimDoor::new();
    let log = door.log();
    let settings = DoorSettings {
        hold: Duration::from_secs(600),
        cooldown: Duration::ZERO,
        grant_while_open: GrantWhileOpen::Extend,
        report_wait: WAIT,
        inputs: InputSettings::default(),
    };
    let controller = DoorController::start(Box::new(door), settings, Box::new(|_| {})).unwrap();
    let stops = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&stops);
    install_panic_hook(controller.lock_guard(), move || {
        counted.fetch_add(1, Ordering::SeqCst);
    });
    (controller, log, stops)
}

fn open(controller: &DoorController, id: &str) -> DoorReport {
    controller.request_open(OpenRequest {
        request_id: id.to_owned(),
        cause: OpenCause::Face {
            identity: "alice".to_owned(),
        },
        not_after: Instant::now() + Duration::from_secs(60),
    })
}

fn last(log: &SimLog) -> (RelayState, String) {
    let event = log.events().pop().unwrap();
    (event.state, event.reason)
}

#[test]
fn a_panic_locks_first_then_stops_the_daemon() {
    // As in the daemon: panics are reported through the non-blocking logger.
    facegate::logging::init();
    // A worker panics while the door is open: the hook locks it before anything else.
    let (controller, log, stops) = start();
    assert_eq!(open(&controller, "req-1"), DoorReport::Opened);
    let worker = std::thread::spawn(|| panic!("a worker bug (injected by a test)"));
    assert!(worker.join().is_err());
    assert_eq!(last(&log), (RelayState::Locked, "emergency".to_owned()));
    assert_eq!(
        stops.load(Ordering::SeqCst),
        1,
        "the daemon is asked to stop"
    );
    assert_eq!(
        open(&controller, "req-2"),
        DoorReport::Locked(LockedBecause::LockedDown)
    );
    controller.shutdown().unwrap();

    // The relay thread panics inside the backend: it locks as it unwinds, and stays down.
    let (controller, log, stops) = start();
    log.panic_on_next_unlock();
    let asked = Instant::now();
    assert_eq!(open(&controller, "req-3"), DoorReport::Fault);
    assert!(log.wait_for(WAIT, |events| events
        .iter()
        .any(|e| e.reason == "relay_panicked")));
    let relocked = log.events().pop().unwrap().at;
    assert!(
        relocked.duration_since(asked) < AT_ONCE,
        "locked after a pause"
    );
    assert!(
        stops.load(Ordering::SeqCst) >= 1,
        "the daemon is asked to stop"
    );
    assert!(!controller.is_available());
    assert_eq!(
        open(&controller, "req-4"),
        DoorReport::Locked(LockedBecause::LockedDown)
    );
    assert!(!log.events().iter().any(|e| e.state == RelayState::Unlocked));
    controller.shutdown().unwrap();
    assert_eq!(log.current(), Some(RelayState::Locked));
}
