//! Pure door timing rules (hold, extend-or-ignore, cooldown) kept free of threads and hardware so
//! every rule is covered by table tests; the relay thread only executes what these functions decide.

use super::inputs::InputSettings;
use serde::Serialize;
use std::time::{Duration, Instant};

/// What a granted decision does while the door is already open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantWhileOpen {
    /// Push the relock time to `now + hold`.
    Extend,
    /// Keep the original relock time.
    Ignore,
}

/// Timing settings of the door pulse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DoorSettings {
    /// How long the relay stays unlocked after a grant.
    pub hold: Duration,
    /// After the relay re-locks, grants within this time do not open the door again.
    pub cooldown: Duration,
    /// What a grant does while the door is open.
    pub grant_while_open: GrantWhileOpen,
    /// How long a caller of `DoorController::request_open` waits for the relay thread's report
    /// before answering `pending` (not used by the pure rules here).
    pub report_wait: Duration,
    /// The door contact and exit button (`door::inputs`).
    pub inputs: InputSettings,
}

/// The commanded state of the door, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoorState {
    /// Relay at its locked level; new grants are refused until `cooldown_until` (if any).
    Locked { cooldown_until: Option<Instant> },
    /// Relay commanded unlocked; it must re-lock at `until`.
    Open { until: Instant },
}

impl DoorState {
    /// Locked with no cooldown running: the state at start-up and after an emergency.
    pub(crate) const LOCKED: DoorState = DoorState::Locked {
        cooldown_until: None,
    };

    /// The instant at which [`on_tick`] has work to do, if any.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match *self {
            DoorState::Open { until } => Some(until),
            DoorState::Locked { .. } => None,
        }
    }
}

/// What a grant does to the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantOutcome {
    /// The door was locked and must now be unlocked.
    Opened,
    /// The door was open; its relock time moved later.
    Extended,
    /// The door was open and stays on its original schedule (`GrantWhileOpen::Ignore`).
    AlreadyOpen,
    /// The door re-locked less than `cooldown` ago; it stays locked.
    CoolingDown,
}

/// Why an open request left the door locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LockedBecause {
    /// The request reached the relay thread after its `not_after`.
    Expired,
    /// An emergency lock, a panic or shutdown latched the door locked until the process restarts.
    LockedDown,
    /// The relay is failing to lock (grants wait until a retry succeeds), or the relay thread
    /// cannot take requests.
    Unavailable,
    /// A lock command holds the door locked until it is cleared.
    HeldLocked,
}

impl LockedBecause {
    /// Stable snake_case name, identical to the serialized form.
    pub fn as_str(self) -> &'static str {
        match self {
            LockedBecause::Expired => "expired",
            LockedBecause::LockedDown => "locked_down",
            LockedBecause::Unavailable => "unavailable",
            LockedBecause::HeldLocked => "held_locked",
        }
    }
}

/// What the relay thread knows about itself when a request arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelayGate {
    /// Ready to carry out grants.
    Ready,
    /// Latched locked by an emergency lock, a panic or shutdown.
    LockedDown,
    /// A lock attempt failed and is being retried.
    LockFailing,
    /// Held locked by a lock command until it is cleared.
    HeldLocked,
}

/// What the relay must do after time passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TickAction {
    Nothing,
    Relock,
}

/// Applies a fresh granted decision at `now`.
///
/// An `Open` state counts as open until the relay thread has re-locked it through [`on_tick`],
/// even if `until` has just passed, so the door is never left unlocked without a pending relock.
pub(crate) fn on_grant(
    state: &DoorState,
    now: Instant,
    s: &DoorSettings,
) -> (DoorState, GrantOutcome) {
    match *state {
        DoorState::Open { until } => match s.grant_while_open {
            GrantWhileOpen::Extend => (
                DoorState::Open {
                    until: until.max(now + s.hold),
                },
                GrantOutcome::Extended,
            ),
            GrantWhileOpen::Ignore => (*state, GrantOutcome::AlreadyOpen),
        },
        DoorState::Locked {
            cooldown_until: Some(cooldown_until),
        } if now < cooldown_until => (*state, GrantOutcome::CoolingDown),
        DoorState::Locked { .. } => (
            DoorState::Open {
                until: now + s.hold,
            },
            GrantOutcome::Opened,
        ),
    }
}

/// Applies an open request that reaches the relay thread at `now`: a latched or failing relay and a
/// request past its `not_after` (the frame's time plus the maximum decision age) leave the door as
/// it is; anything else is a grant ([`on_grant`]). A request exactly at `not_after` is still fresh.
pub(crate) fn on_request(
    state: &DoorState,
    now: Instant,
    not_after: Instant,
    gate: RelayGate,
    s: &DoorSettings,
) -> (DoorState, Result<GrantOutcome, LockedBecause>) {
    let refused = match gate {
        RelayGate::LockedDown => Some(LockedBecause::LockedDown),
        RelayGate::LockFailing => Some(LockedBecause::Unavailable),
        RelayGate::HeldLocked => Some(LockedBecause::HeldLocked),
        RelayGate::Ready if now > not_after => Some(LockedBecause::Expired),
        RelayGate::Ready => None,
    };
    match refused {
        Some(because) => (*state, Err(because)),
        None => {
            let (next, outcome) = on_grant(state, now, s);
            (next, Ok(outcome))
        }
    }
}

/// Applies an exit-button press at `now`. Free egress is a safety rule: a lock command
/// (`held_locked`) and the cooldown do not refuse it; only a latched lockdown (emergency, panic,
/// shutdown: the process is stopping) and a relay that fails to lock do.
pub(crate) fn on_exit(
    state: &DoorState,
    now: Instant,
    gate: RelayGate,
    s: &DoorSettings,
) -> (DoorState, Result<GrantOutcome, LockedBecause>) {
    match (gate, *state) {
        (RelayGate::LockedDown, _) => (*state, Err(LockedBecause::LockedDown)),
        (RelayGate::LockFailing, _) => (*state, Err(LockedBecause::Unavailable)),
        (RelayGate::Ready | RelayGate::HeldLocked, DoorState::Open { until }) => (
            DoorState::Open {
                until: until.max(now + s.hold),
            },
            Ok(GrantOutcome::Extended),
        ),
        (RelayGate::Ready | RelayGate::HeldLocked, DoorState::Locked { .. }) => (
            DoorState::Open {
                until: now + s.hold,
            },
            Ok(GrantOutcome::Opened),
        ),
    }
}

/// Ends an open pulse at `now`, before its hold has elapsed (`door.relock_on`), starting the
/// cooldown from this moment; a locked door stays as it is.
pub(crate) fn relock_now(
    state: &DoorState,
    now: Instant,
    s: &DoorSettings,
) -> (DoorState, TickAction) {
    match *state {
        DoorState::Open { .. } => {
            let cooldown_until = (!s.cooldown.is_zero()).then(|| now + s.cooldown);
            (DoorState::Locked { cooldown_until }, TickAction::Relock)
        }
        DoorState::Locked { .. } => (*state, TickAction::Nothing),
    }
}

/// Applies the passing of time at `now`: ends the pulse when its hold has elapsed (starting the
/// cooldown from this moment, when the relay re-locks) and forgets an expired cooldown.
pub(crate) fn on_tick(
    state: &DoorState,
    now: Instant,
    s: &DoorSettings,
) -> (DoorState, TickAction) {
    match *state {
        DoorState::Open { until } if now >= until => relock_now(state, now, s),
        DoorState::Locked {
            cooldown_until: Some(cooldown_until),
        } if now >= cooldown_until => (DoorState::LOCKED, TickAction::Nothing),
        _ => (*state, TickAction::Nothing),
    }
}

/// How long the door stays busy with the last grant at `now`: open, then cooling down. `None` once
/// a new grant could open it again. Frames in this time need no recognition (`door.pause_while_open`).
pub(crate) fn busy_for(state: &DoorState, now: Instant, s: &DoorSettings) -> Option<Duration> {
    match *state {
        // Until the relay thread has re-locked, the door counts as open.
        DoorState::Open { until } => Some(
            (until + s.cooldown)
                .saturating_duration_since(now)
                .max(Duration::from_millis(1)),
        ),
        DoorState::Locked {
            cooldown_until: Some(cooldown_until),
        } if now < cooldown_until => Some(cooldown_until - now),
        DoorState::Locked { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD_MS: u64 = 3_000;
    const COOLDOWN_MS: u64 = 1_000;

    fn settings(grant_while_open: GrantWhileOpen, cooldown_ms: u64) -> DoorSettings {
        DoorSettings {
            hold: Duration::from_millis(HOLD_MS),
            cooldown: Duration::from_millis(cooldown_ms),
            grant_while_open,
            report_wait: Duration::ZERO,
            inputs: InputSettings::default(),
        }
    }

    /// States written with millisecond offsets from a common origin.
    #[derive(Debug, Clone, Copy)]
    enum At {
        Locked,
        CoolingUntil(u64),
        OpenUntil(u64),
    }

    fn state(origin: Instant, at: At) -> DoorState {
        let ms = |n| origin + Duration::from_millis(n);
        match at {
            At::Locked => DoorState::LOCKED,
            At::CoolingUntil(n) => DoorState::Locked {
                cooldown_until: Some(ms(n)),
            },
            At::OpenUntil(n) => DoorState::Open { until: ms(n) },
        }
    }

    #[test]
    fn grant_table() {
        use GrantOutcome::*;
        use GrantWhileOpen::{Extend, Ignore};
        let origin = Instant::now();
        // (name, state before, now ms, mode, expected state, expected outcome)
        #[rustfmt::skip]
        let table = [
            ("locked opens", At::Locked, 1_000, Extend, At::OpenUntil(4_000), Opened),
            ("locked opens in ignore mode", At::Locked, 0, Ignore, At::OpenUntil(3_000), Opened),
            ("open extends from now", At::OpenUntil(3_000), 2_000, Extend, At::OpenUntil(5_000), Extended),
            ("open ignore keeps schedule", At::OpenUntil(3_000), 2_000, Ignore, At::OpenUntil(3_000), AlreadyOpen),
            ("extend never shortens", At::OpenUntil(9_000), 1_000, Extend, At::OpenUntil(9_000), Extended),
            ("open past deadline not yet relocked still extends", At::OpenUntil(3_000), 3_500, Extend, At::OpenUntil(6_500), Extended),
            ("open past deadline in ignore mode", At::OpenUntil(3_000), 3_500, Ignore, At::OpenUntil(3_000), AlreadyOpen),
            ("cooldown refuses", At::CoolingUntil(5_000), 4_999, Extend, At::CoolingUntil(5_000), CoolingDown),
            ("cooldown over at its end", At::CoolingUntil(5_000), 5_000, Extend, At::OpenUntil(8_000), Opened),
            ("cooldown over after its end", At::CoolingUntil(5_000), 7_000, Ignore, At::OpenUntil(10_000), Opened),
        ];
        for (name, before, now_ms, mode, after, outcome) in table {
            let now = origin + Duration::from_millis(now_ms);
            let got = on_grant(&state(origin, before), now, &settings(mode, COOLDOWN_MS));
            assert_eq!(got, (state(origin, after), outcome), "{name}");
        }
    }

    #[test]
    fn request_table() {
        use GrantOutcome::{CoolingDown, Extended, Opened};
        use LockedBecause::{Expired, LockedDown, Unavailable};
        use RelayGate::{LockFailing, Ready};
        let origin = Instant::now();
        // (name, state before, now ms, not_after ms, gate, expected state, expected result)
        #[rustfmt::skip]
        let table = [
            ("fresh request opens", At::Locked, 1_000, 1_500, Ready, At::OpenUntil(4_000), Ok(Opened)),
            ("request at its not_after is still fresh", At::Locked, 1_500, 1_500, Ready, At::OpenUntil(4_500), Ok(Opened)),
            ("expired request leaves the door locked", At::Locked, 1_501, 1_500, Ready, At::Locked, Err(Expired)),
            ("expired request does not extend an open door", At::OpenUntil(3_000), 2_000, 1_000, Ready, At::OpenUntil(3_000), Err(Expired)),
            ("expired request during cooldown says expired", At::CoolingUntil(5_000), 4_000, 1_000, Ready, At::CoolingUntil(5_000), Err(Expired)),
            ("fresh request extends", At::OpenUntil(3_000), 2_000, 2_500, Ready, At::OpenUntil(5_000), Ok(Extended)),
            ("fresh request in cooldown", At::CoolingUntil(5_000), 4_000, 4_500, Ready, At::CoolingUntil(5_000), Ok(CoolingDown)),
            ("lockdown refuses a fresh request", At::Locked, 0, 1_000, RelayGate::LockedDown, At::Locked, Err(LockedDown)),
            ("a lock command refuses a fresh request", At::Locked, 0, 1_000, RelayGate::HeldLocked, At::Locked, Err(LockedBecause::HeldLocked)),
            ("lockdown wins over expiry", At::Locked, 2_000, 1_000, RelayGate::LockedDown, At::Locked, Err(LockedDown)),
            ("lockdown never extends", At::OpenUntil(3_000), 2_000, 2_500, RelayGate::LockedDown, At::OpenUntil(3_000), Err(LockedDown)),
            ("failing lock refuses", At::Locked, 0, 1_000, LockFailing, At::Locked, Err(Unavailable)),
        ];
        for (name, before, now_ms, not_after_ms, gate, after, result) in table {
            let ms = |n| origin + Duration::from_millis(n);
            let s = settings(GrantWhileOpen::Extend, COOLDOWN_MS);
            let got = on_request(
                &state(origin, before),
                ms(now_ms),
                ms(not_after_ms),
                gate,
                &s,
            );
            assert_eq!(got, (state(origin, after), result), "{name}");
        }
    }

    #[test]
    fn exit_table() {
        use GrantOutcome::{Extended, Opened};
        use LockedBecause::{LockedDown, Unavailable};
        use RelayGate::{HeldLocked, LockFailing, Ready};
        let origin = Instant::now();
        // (name, state before, now ms, gate, expected state, expected result)
        #[rustfmt::skip]
        let table = [
            ("exit opens a locked door", At::Locked, 1_000, Ready, At::OpenUntil(4_000), Ok(Opened)),
            ("exit opens during the cooldown", At::CoolingUntil(5_000), 4_000, Ready, At::OpenUntil(7_000), Ok(Opened)),
            ("exit opens during a lockdown by command (free egress)", At::Locked, 0, HeldLocked, At::OpenUntil(3_000), Ok(Opened)),
            ("exit extends an open door", At::OpenUntil(3_000), 2_000, Ready, At::OpenUntil(5_000), Ok(Extended)),
            ("exit never shortens", At::OpenUntil(9_000), 1_000, HeldLocked, At::OpenUntil(9_000), Ok(Extended)),
            ("a latched lockdown refuses (the process is stopping)", At::Locked, 0, RelayGate::LockedDown, At::Locked, Err(LockedDown)),
            ("a failing relay refuses", At::Locked, 0, LockFailing, At::Locked, Err(Unavailable)),
        ];
        for (name, before, now_ms, gate, after, result) in table {
            let s = settings(GrantWhileOpen::Ignore, COOLDOWN_MS);
            let now = origin + Duration::from_millis(now_ms);
            let got = on_exit(&state(origin, before), now, gate, &s);
            assert_eq!(got, (state(origin, after), result), "{name}");
        }
    }

    #[test]
    fn relock_now_ends_a_pulse_early_and_starts_the_cooldown() {
        let origin = Instant::now();
        let ms = |n| origin + Duration::from_millis(n);
        let s = settings(GrantWhileOpen::Extend, COOLDOWN_MS);
        let open = DoorState::Open { until: ms(3_000) };
        assert_eq!(
            relock_now(&open, ms(500), &s),
            (state(origin, At::CoolingUntil(1_500)), TickAction::Relock)
        );
        let locked = DoorState::LOCKED;
        assert_eq!(
            relock_now(&locked, ms(500), &s),
            (locked, TickAction::Nothing)
        );
    }

    #[test]
    fn tick_table() {
        use TickAction::{Nothing, Relock};
        let origin = Instant::now();
        // (name, state before, now ms, cooldown ms, expected state, expected action)
        #[rustfmt::skip]
        let table = [
            ("open before deadline stays", At::OpenUntil(3_000), 2_999, COOLDOWN_MS, At::OpenUntil(3_000), Nothing),
            ("open at deadline relocks with cooldown from now", At::OpenUntil(3_000), 3_000, COOLDOWN_MS, At::CoolingUntil(4_000), Relock),
            ("late tick starts cooldown at the real relock", At::OpenUntil(3_000), 3_200, COOLDOWN_MS, At::CoolingUntil(4_200), Relock),
            ("zero cooldown relocks without cooldown", At::OpenUntil(3_000), 3_000, 0, At::Locked, Relock),
            ("cooldown running stays", At::CoolingUntil(4_000), 3_999, COOLDOWN_MS, At::CoolingUntil(4_000), Nothing),
            ("cooldown expires", At::CoolingUntil(4_000), 4_000, COOLDOWN_MS, At::Locked, Nothing),
            ("locked stays locked", At::Locked, 10_000, COOLDOWN_MS, At::Locked, Nothing),
        ];
        for (name, before, now_ms, cooldown_ms, after, action) in table {
            let now = origin + Duration::from_millis(now_ms);
            let s = settings(GrantWhileOpen::Extend, cooldown_ms);
            let got = on_tick(&state(origin, before), now, &s);
            assert_eq!(got, (state(origin, after), action), "{name}");
        }
    }

    #[test]
    fn busy_table() {
        let origin = Instant::now();
        let ms = Duration::from_millis;
        // (name, state, now ms, cooldown ms, busy for)
        #[rustfmt::skip]
        let table = [
            ("open: the hold left plus the cooldown", At::OpenUntil(3_000), 1_000, COOLDOWN_MS, Some(ms(3_000))),
            ("open without cooldown", At::OpenUntil(3_000), 1_000, 0, Some(ms(2_000))),
            ("open past its deadline, not yet relocked", At::OpenUntil(3_000), 5_000, 0, Some(ms(1))),
            ("cooling down", At::CoolingUntil(4_000), 3_500, COOLDOWN_MS, Some(ms(500))),
            ("cooldown over", At::CoolingUntil(4_000), 4_000, COOLDOWN_MS, None),
            ("locked", At::Locked, 0, COOLDOWN_MS, None),
        ];
        for (name, at, now_ms, cooldown_ms, expected) in table {
            let s = settings(GrantWhileOpen::Extend, cooldown_ms);
            let got = busy_for(&state(origin, at), origin + ms(now_ms), &s);
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn full_cycle_grant_hold_relock_cooldown_then_open_again() {
        let origin = Instant::now();
        let ms = |n| origin + Duration::from_millis(n);
        let s = settings(GrantWhileOpen::Extend, COOLDOWN_MS);
        let (open, outcome) = on_grant(&DoorState::LOCKED, ms(0), &s);
        assert_eq!(outcome, GrantOutcome::Opened);
        assert_eq!(open.next_deadline(), Some(ms(HOLD_MS)));
        let (locked, action) = on_tick(&open, ms(HOLD_MS), &s);
        assert_eq!(action, TickAction::Relock);
        assert_eq!(locked.next_deadline(), None);
        assert_eq!(
            on_grant(&locked, ms(HOLD_MS + 10), &s).1,
            GrantOutcome::CoolingDown
        );
        assert_eq!(
            on_grant(&locked, ms(HOLD_MS + COOLDOWN_MS), &s).1,
            GrantOutcome::Opened
        );
    }
}
