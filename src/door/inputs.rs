//! The door's inputs (door contact, exit button) as a pure state machine: debounce, forced versus
//! opened after an unlock, held open and cleared, the exit button's unlock and the `relock_on`
//! choices, each a function of (state, what happened, now) → (state, actions). Backends only read
//! the lines; the relay thread only carries out the actions.

use super::OpenCause;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::{Duration, Instant};

/// An opening this soon after the relay relocked still belongs to that unlock: the person was
/// already pulling the handle as the relay clicked.
pub(crate) const RELOCK_GRACE: Duration = Duration::from_secs(1);
/// An opening this soon after an exit press is someone leaving, not a forced door, even when the
/// relay did not unlock (the handle opens a locked door from the inside).
pub(crate) const EXIT_GRACE: Duration = Duration::from_secs(10);

/// One reading of the door contact, after the configured `open_level` is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactLevel {
    Open,
    Closed,
}

/// What a backend reports about its input lines (from its own thread, never the relay thread's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputSignal {
    /// The contact line read this level (raw: bounce included).
    Contact(ContactLevel),
    /// The contact line cannot be read.
    ContactFault,
    /// The exit button line went to its pressed level (raw: chatter included).
    ExitPressed,
}

/// The contact as the door believes it, after the debounce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContactState {
    Open,
    Closed,
    /// Not read yet, not fitted, or faulty.
    Unknown,
}

impl ContactState {
    pub fn as_str(self) -> &'static str {
        match self {
            ContactState::Open => "open",
            ContactState::Closed => "closed",
            ContactState::Unknown => "unknown",
        }
    }
}

/// An alarm waiting for the admin (or, for `held`, for the door to close).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Alarm {
    /// Opened while locked, without an exit press just before.
    Forced,
    /// Open for longer than `door.held_open_alarm_s`.
    Held,
}

impl Alarm {
    pub fn as_str(self) -> &'static str {
        match self {
            Alarm::Forced => "forced",
            Alarm::Held => "held",
        }
    }

    /// The alarm `as_str` names.
    pub fn parse(text: &str) -> Option<Alarm> {
        [Alarm::Forced, Alarm::Held]
            .into_iter()
            .find(|alarm| alarm.as_str() == text)
    }
}

/// What the inputs tell the building; each is audited (`"kind": "door_input"`), counted and
/// published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InputEventKind {
    /// The door opened after an unlock (or an exit press), naming the request and its cause.
    Opened,
    Closed,
    /// The door opened while locked, with no exit press just before.
    Forced,
    /// The door has been open for longer than `door.held_open_alarm_s`.
    Held,
    /// A held-open door closed again.
    HeldCleared,
    /// The exit button was pressed.
    Exit,
    /// The contact cannot be read: its state is unknown and the door relocks on its timer.
    ContactFault,
    /// The admin acknowledged the active alarm.
    Acknowledged,
}

impl InputEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InputEventKind::Opened => "opened",
            InputEventKind::Closed => "closed",
            InputEventKind::Forced => "forced",
            InputEventKind::Held => "held",
            InputEventKind::HeldCleared => "held_cleared",
            InputEventKind::Exit => "exit",
            InputEventKind::ContactFault => "contact_fault",
            InputEventKind::Acknowledged => "acknowledged",
        }
    }
}

/// When the relay locks again after an unlock (`door.relock_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RelockOn {
    /// When the hold time ends.
    Timer,
    /// As soon as the door opens (the hold time still ends a pulse nobody used).
    Open,
    /// As soon as the door closes again after opening (the hold time ends a pulse nobody used).
    Close,
}

/// The inputs' settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputSettings {
    /// A contact change counts once the line has kept its new level this long.
    pub contact_debounce: Duration,
    /// Presses closer together than this are one press.
    pub exit_debounce: Duration,
    pub relock_on: RelockOn,
    /// An open door raises `held` after this long.
    pub held_after: Duration,
}

impl Default for InputSettings {
    fn default() -> Self {
        InputSettings {
            contact_debounce: Duration::from_millis(50),
            exit_debounce: Duration::from_millis(50),
            relock_on: RelockOn::Timer,
            held_after: Duration::from_secs(30),
        }
    }
}

/// The unlock the relay carries out (or carried out last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unlock {
    pub request_id: String,
    pub cause: OpenCause,
}

/// What happens to the inputs' state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happening {
    Contact(ContactLevel),
    ContactFault,
    /// An exit press, with the request id its unlock will carry.
    Exit {
        request_id: String,
    },
    /// The relay unlocked for this request.
    Unlocked(Unlock),
    /// The relay locked again (for whatever reason).
    Relocked,
    /// The admin acknowledged this alarm, the one their page showed.
    Acknowledge(Alarm),
    /// Time passed.
    Tick,
}

/// One event for the building.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub event: InputEventKind,
    /// For `opened`, `closed` and `exit`: the unlock (request id and cause) it belongs to.
    pub unlock: Option<Unlock>,
    /// For `forced`, `held`, `held_cleared` and `acknowledged`: which alarm.
    pub alarm: Option<Alarm>,
}

impl Notice {
    fn of(event: InputEventKind) -> Notice {
        Notice {
            event,
            unlock: None,
            alarm: None,
        }
    }
}

/// One event of the door's inputs (`door::inputs`), for the audit log, metrics and MQTT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InputReport {
    pub event: InputEventKind,
    /// For `opened`, `closed` and `exit`: the request of the unlock it belongs to.
    pub request_id: Option<String>,
    #[serde(flatten)]
    pub cause: Option<OpenCause>,
    /// The contact after this event.
    pub contact: ContactState,
    /// The alarm this event is about (`forced`, `held`, `held_cleared`, `acknowledged`).
    pub alarm: Option<Alarm>,
    /// The alarm waiting for the admin after this event.
    pub active_alarm: Option<Alarm>,
    pub at: DateTime<Utc>,
}

/// What the door's inputs say now, for `/healthz`, `/metrics` and the admin page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct InputStatus {
    pub contact: ContactState,
    pub alarm: Option<Alarm>,
}

/// What the relay thread must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputAction {
    Report(Notice),
    /// Unlock for the exit press (free egress: `door::policy::on_exit`).
    UnlockForExit {
        request_id: String,
    },
    /// Lock now (`relock_on = "open"` or `"close"`).
    Relock,
}

/// The inputs' state, kept by the relay thread.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InputState {
    /// The debounced contact; `None` is unknown.
    contact: Option<ContactLevel>,
    /// A raw contact level that differs from `contact`, and since when the line has held it.
    pending: Option<(ContactLevel, Instant)>,
    /// Set after a contact fault, until the line reads again.
    faulty: bool,
    /// The last accepted exit press.
    last_exit: Option<(Instant, String)>,
    /// The relay's current unlock, and whether the door opened during it.
    unlocked: Option<(Unlock, bool)>,
    /// The last unlock and when the relay relocked after it.
    relocked: Option<(Unlock, Instant)>,
    /// When the current opening began (while the contact is open).
    open_since: Option<Instant>,
    /// `held` was raised for the current opening.
    held_raised: bool,
    forced_alarm: bool,
    held_alarm: bool,
}

impl InputState {
    /// The contact as the door believes it.
    pub fn contact(&self) -> ContactState {
        match self.contact {
            Some(ContactLevel::Open) => ContactState::Open,
            Some(ContactLevel::Closed) => ContactState::Closed,
            None => ContactState::Unknown,
        }
    }

    /// The alarm waiting for the admin: forced outranks held.
    pub fn alarm(&self) -> Option<Alarm> {
        if self.forced_alarm {
            Some(Alarm::Forced)
        } else if self.held_alarm {
            Some(Alarm::Held)
        } else {
            None
        }
    }

    /// With `relock_on = "close"`: the door opened during the unlock and is still open, so the
    /// hold time does not relock it; the closing will. Not past the held-open alarm: a contact that
    /// never reads closed again (a cut wire reads open, a magnet knocked off the leaf, a lost
    /// reading) would keep the lock released for good, so from then on the timer relocks.
    pub fn keeps_unlocked(&self, s: &InputSettings) -> bool {
        s.relock_on == RelockOn::Close
            && self.contact == Some(ContactLevel::Open)
            && !self.held_raised
            && self.unlocked.as_ref().is_some_and(|(_, opened)| *opened)
    }

    /// The instant at which a [`Happening::Tick`] has work to do, if any.
    pub fn next_deadline(&self, s: &InputSettings) -> Option<Instant> {
        let settle = self.pending.map(|(_, since)| since + s.contact_debounce);
        let held = self
            .open_since
            .filter(|_| !self.held_raised)
            .map(|since| since + s.held_after);
        match (settle, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Applies `happening` at `now`.
pub fn on_input(
    state: &InputState,
    happening: Happening,
    now: Instant,
    s: &InputSettings,
) -> (InputState, Vec<InputAction>) {
    let mut next = state.clone();
    let mut actions = Vec::new();
    next.advance(now, s, &mut actions);
    match happening {
        Happening::Contact(level) => {
            next.faulty = false;
            if next.contact == Some(level) {
                // Bounced back before the change settled.
                next.pending = None;
            } else if next.pending.map(|(pending, _)| pending) != Some(level) {
                next.pending = Some((level, now));
            }
            // A zero debounce accepts at once.
            next.advance(now, s, &mut actions);
        }
        Happening::ContactFault => {
            if !next.faulty {
                next.faulty = true;
                next.contact = None;
                next.pending = None;
                next.open_since = None;
                actions.push(InputAction::Report(Notice::of(
                    InputEventKind::ContactFault,
                )));
            }
        }
        Happening::Exit { request_id } => {
            let chatter = next
                .last_exit
                .as_ref()
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) < s.exit_debounce);
            if !chatter {
                next.last_exit = Some((now, request_id.clone()));
                actions.push(InputAction::Report(Notice {
                    unlock: Some(exit_unlock(&request_id)),
                    ..Notice::of(InputEventKind::Exit)
                }));
                actions.push(InputAction::UnlockForExit { request_id });
            }
        }
        Happening::Unlocked(unlock) => {
            next.unlocked = Some((unlock, false));
        }
        Happening::Relocked => {
            if let Some((unlock, _)) = next.unlocked.take() {
                next.relocked = Some((unlock, now));
            }
        }
        Happening::Acknowledge(alarm) => {
            // Only the alarm the admin saw: one raised since (forced after a held door closed, say)
            // waits for its own acknowledgement. Acknowledging forced on a door that still stands
            // open leaves held active, to be acknowledged or cleared by the closing in its turn.
            let active = match alarm {
                Alarm::Forced => &mut next.forced_alarm,
                Alarm::Held => &mut next.held_alarm,
            };
            if std::mem::take(active) {
                actions.push(InputAction::Report(Notice {
                    alarm: Some(alarm),
                    ..Notice::of(InputEventKind::Acknowledged)
                }));
            }
        }
        Happening::Tick => {}
    }
    (next, actions)
}

fn exit_unlock(request_id: &str) -> Unlock {
    Unlock {
        request_id: request_id.to_owned(),
        cause: OpenCause::Exit,
    }
}

impl InputState {
    /// Settles a debounced contact change and raises `held`, as far as `now`.
    fn advance(&mut self, now: Instant, s: &InputSettings, actions: &mut Vec<InputAction>) {
        if let Some((level, since)) = self.pending {
            if now >= since + s.contact_debounce {
                self.pending = None;
                let at = (since + s.contact_debounce).min(now);
                match level {
                    ContactLevel::Open => self.opened(at, s, actions),
                    ContactLevel::Closed => self.closed(s, actions),
                }
            }
        }
        if let Some(since) = self.open_since {
            if !self.held_raised && now >= since + s.held_after {
                self.held_raised = true;
                self.held_alarm = true;
                actions.push(InputAction::Report(Notice {
                    alarm: Some(Alarm::Held),
                    ..Notice::of(InputEventKind::Held)
                }));
            }
        }
    }

    fn opened(&mut self, at: Instant, s: &InputSettings, actions: &mut Vec<InputAction>) {
        // An open door first seen at start-up or after a fault: nobody saw it open.
        let unseen = self.contact.is_none();
        self.contact = Some(ContactLevel::Open);
        self.open_since = Some(at);
        // A `held` still active (the door was held open, then the contact failed and read open
        // again) stays raised, so that the closing clears it; otherwise the held timer starts.
        self.held_raised = self.held_alarm;
        let recent_exit = self
            .last_exit
            .as_ref()
            .filter(|(pressed, _)| at.saturating_duration_since(*pressed) <= EXIT_GRACE)
            .map(|(_, request_id)| exit_unlock(request_id));
        let unlock = if let Some((unlock, opened)) = &mut self.unlocked {
            *opened = true;
            if s.relock_on == RelockOn::Open {
                actions.push(InputAction::Relock);
            }
            Some(unlock.clone())
        } else {
            self.relocked
                .as_ref()
                .filter(|(_, relocked)| at.saturating_duration_since(*relocked) <= RELOCK_GRACE)
                .map(|(unlock, _)| unlock.clone())
                .or(recent_exit)
        };
        if unlock.is_some() {
            // One unlock, relock or exit press lets one opening in: a later one within the graces
            // is not covered by it.
            self.last_exit = None;
            self.relocked = None;
        }
        let notice = match unlock {
            Some(unlock) => Notice {
                unlock: Some(unlock),
                ..Notice::of(InputEventKind::Opened)
            },
            None if unseen => Notice::of(InputEventKind::Opened),
            None => {
                self.forced_alarm = true;
                Notice {
                    alarm: Some(Alarm::Forced),
                    ..Notice::of(InputEventKind::Forced)
                }
            }
        };
        actions.push(InputAction::Report(notice));
    }

    fn closed(&mut self, s: &InputSettings, actions: &mut Vec<InputAction>) {
        self.contact = Some(ContactLevel::Closed);
        self.open_since = None;
        let unlock = self.unlocked.as_ref().map(|(unlock, _)| unlock.clone());
        actions.push(InputAction::Report(Notice {
            unlock,
            ..Notice::of(InputEventKind::Closed)
        }));
        if std::mem::take(&mut self.held_raised) {
            self.held_alarm = false;
            actions.push(InputAction::Report(Notice {
                alarm: Some(Alarm::Held),
                ..Notice::of(InputEventKind::HeldCleared)
            }));
        }
        if s.relock_on == RelockOn::Close && self.unlocked.as_ref().is_some_and(|(_, o)| *o) {
            actions.push(InputAction::Relock);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ContactLevel::{Closed, Open};

    const DEBOUNCE_MS: u64 = 50;
    const HELD_MS: u64 = 30_000;

    fn settings(relock_on: RelockOn) -> InputSettings {
        InputSettings {
            contact_debounce: Duration::from_millis(DEBOUNCE_MS),
            exit_debounce: Duration::from_millis(DEBOUNCE_MS),
            relock_on,
            held_after: Duration::from_millis(HELD_MS),
        }
    }

    /// One scenario: (name, relock_on, steps, expected actions, contact at the end, alarm at the end).
    type Scenario = (
        &'static str,
        RelockOn,
        Vec<(u64, Step)>,
        Vec<&'static str>,
        ContactState,
        Option<Alarm>,
    );

    /// A step of a scenario, at a millisecond offset from its start.
    #[derive(Debug, Clone)]
    enum Step {
        Contact(ContactLevel),
        Fault,
        Exit,
        Grant,
        Relock,
        Ack(Alarm),
        Tick,
    }

    /// What a scenario's actions look like, compactly: `opened:req`, `forced`, `exit:x1`,
    /// `unlock_exit`, `relock`, `held`, ...
    fn word(action: &InputAction) -> String {
        match action {
            InputAction::Report(notice) => {
                let mut word = notice.event.as_str().to_owned();
                if let Some(unlock) = &notice.unlock {
                    word.push(':');
                    word.push_str(&unlock.request_id);
                }
                word
            }
            InputAction::UnlockForExit { .. } => "unlock_exit".into(),
            InputAction::Relock => "relock".into(),
        }
    }

    /// Runs `steps` from a closed door and returns the actions as words and the final state.
    fn run(relock_on: RelockOn, steps: &[(u64, Step)]) -> (Vec<String>, InputState) {
        let origin = Instant::now();
        let s = settings(relock_on);
        let mut state = on_input(
            &InputState::default(),
            Happening::Contact(Closed),
            origin,
            &settings(relock_on),
        )
        .0;
        state = on_input(
            &state,
            Happening::Tick,
            origin + Duration::from_millis(DEBOUNCE_MS),
            &s,
        )
        .0;
        let start = origin + Duration::from_millis(1_000);
        let mut words = Vec::new();
        let mut exits = 0;
        for (ms, step) in steps {
            let happening = match step {
                Step::Contact(level) => Happening::Contact(*level),
                Step::Fault => Happening::ContactFault,
                Step::Exit => {
                    exits += 1;
                    Happening::Exit {
                        request_id: format!("x{exits}"),
                    }
                }
                Step::Grant => Happening::Unlocked(Unlock {
                    request_id: "req".into(),
                    cause: OpenCause::Face {
                        identity: "alice".into(),
                    },
                }),
                Step::Relock => Happening::Relocked,
                Step::Ack(alarm) => Happening::Acknowledge(*alarm),
                Step::Tick => Happening::Tick,
            };
            let (next, actions) =
                on_input(&state, happening, start + Duration::from_millis(*ms), &s);
            state = next;
            words.extend(actions.iter().map(word));
        }
        (words, state)
    }

    #[test]
    fn input_table() {
        use RelockOn::{Close, Timer};
        use Step::*;
        #[rustfmt::skip]
        let table: Vec<Scenario> = vec![
            ("opening while locked is forced", Timer,
                vec![(0, Contact(Open)), (60, Tick)],
                vec!["forced"], ContactState::Open, Some(Alarm::Forced)),
            ("a bounce shorter than the debounce is nothing", Timer,
                vec![(0, Contact(Open)), (10, Contact(Closed)), (20, Contact(Open)), (30, Contact(Closed)), (200, Tick)],
                vec![], ContactState::Closed, None),
            ("chatter then a steady level: one change, timed from the last edge", Timer,
                vec![(0, Contact(Open)), (10, Contact(Closed)), (20, Contact(Open)), (60, Tick), (69, Tick), (70, Tick)],
                vec!["forced"], ContactState::Open, Some(Alarm::Forced)),
            ("a repeated reading does not restart the debounce", Timer,
                vec![(0, Contact(Open)), (30, Contact(Open)), (50, Tick)],
                vec!["forced"], ContactState::Open, Some(Alarm::Forced)),
            ("flapping slower than the debounce: every change counts", Timer,
                vec![(0, Grant), (0, Contact(Open)), (100, Contact(Closed)), (200, Contact(Open)), (300, Contact(Closed)), (400, Tick)],
                vec!["opened:req", "closed:req", "opened:req", "closed:req"], ContactState::Closed, None),
            ("opening during the hold is opened under the grant", Timer,
                vec![(0, Grant), (500, Contact(Open)), (600, Tick)],
                vec!["opened:req"], ContactState::Open, None),
            ("opening just after the relock still belongs to the grant", Timer,
                vec![(0, Grant), (3_000, Relock), (3_500, Contact(Open)), (3_600, Tick)],
                vec!["opened:req"], ContactState::Open, None),
            ("opening long after the relock is forced", Timer,
                vec![(0, Grant), (3_000, Relock), (5_000, Contact(Open)), (5_100, Tick)],
                vec!["forced"], ContactState::Open, Some(Alarm::Forced)),
            ("exit unlocks, and the opening after it is not forced", Timer,
                vec![(0, Exit), (500, Contact(Open)), (600, Tick)],
                vec!["exit:x1", "unlock_exit", "opened:x1"], ContactState::Open, None),
            ("exit chatter is one press", Timer,
                vec![(0, Exit), (10, Exit), (40, Exit), (200, Exit)],
                vec!["exit:x1", "unlock_exit", "exit:x4", "unlock_exit"], ContactState::Closed, None),
            // The relay refuses nothing here: free egress (door::policy::on_exit opens in a lockdown).
            ("exit during a lockdown still asks for the unlock; the opening is the exit's", Timer,
                vec![(0, Exit), (2_000, Contact(Open)), (2_100, Tick)],
                vec!["exit:x1", "unlock_exit", "opened:x1"], ContactState::Open, None),
            // Regression: the graces were never used up, so a door pulled open again soon after
            // someone left (or just after a relock) was `opened`, not `forced`.
            ("an exit press covers one opening: the next one is forced", Timer,
                vec![(0, Exit), (500, Contact(Open)), (600, Tick), (2_000, Contact(Closed)), (2_100, Tick), (3_000, Relock), (6_000, Contact(Open)), (6_100, Tick)],
                vec!["exit:x1", "unlock_exit", "opened:x1", "closed", "forced"], ContactState::Open, Some(Alarm::Forced)),
            ("the relock's grace covers one opening", Timer,
                vec![(0, Grant), (3_000, Relock), (3_200, Contact(Open)), (3_300, Tick), (3_400, Contact(Closed)), (3_500, Tick), (3_700, Contact(Open)), (3_800, Tick)],
                vec!["opened:req", "closed", "forced"], ContactState::Open, Some(Alarm::Forced)),
            ("an opening long after an exit press is forced", Timer,
                vec![(0, Exit), (20_000, Contact(Open)), (20_100, Tick)],
                vec!["exit:x1", "unlock_exit", "forced"], ContactState::Open, Some(Alarm::Forced)),
            ("relock_on open: the opening relocks at once", RelockOn::Open,
                vec![(0, Grant), (500, Contact(Open)), (550, Tick)],
                vec!["relock", "opened:req"], ContactState::Open, None),
            ("relock_on open: a pulse nobody used ends on its timer", RelockOn::Open,
                vec![(0, Grant), (3_000, Relock), (10_000, Tick)],
                vec![], ContactState::Closed, None),
            ("relock_on close: the closing relocks", Close,
                vec![(0, Grant), (500, Contact(Open)), (5_000, Contact(Closed)), (5_100, Tick)],
                vec!["opened:req", "closed:req", "relock"], ContactState::Closed, None),
            ("relock_on close: closing without an opening does not relock", Close,
                vec![(0, Grant), (500, Contact(Closed)), (600, Tick)],
                vec![], ContactState::Closed, None),
            ("relock_on timer: the opening and closing never relock", Timer,
                vec![(0, Grant), (500, Contact(Open)), (1_000, Contact(Closed)), (1_100, Tick)],
                vec!["opened:req", "closed:req"], ContactState::Closed, None),
            ("a door left open raises held once, closing clears it", Timer,
                vec![(0, Grant), (100, Contact(Open)), (30_000, Tick), (30_149, Tick), (30_150, Tick), (40_000, Tick), (50_000, Contact(Closed)), (50_100, Tick)],
                vec!["opened:req", "held", "closed:req", "held_cleared"], ContactState::Closed, None),
            ("a forced door left open: held too, and forced stays until acknowledged", Timer,
                vec![(0, Contact(Open)), (31_000, Tick), (40_000, Contact(Closed)), (40_100, Tick)],
                vec!["forced", "held", "closed", "held_cleared"], ContactState::Closed, Some(Alarm::Forced)),
            ("acknowledging ends the alarm, once", Timer,
                vec![(0, Contact(Open)), (100, Tick), (200, Ack(Alarm::Forced)), (300, Ack(Alarm::Forced))],
                vec!["forced", "acknowledged"], ContactState::Open, None),
            ("acknowledging a held door: held_cleared still follows the closing", Timer,
                vec![(0, Grant), (100, Contact(Open)), (31_000, Ack(Alarm::Held)), (32_000, Contact(Closed)), (32_100, Tick)],
                vec!["opened:req", "held", "acknowledged", "closed:req", "held_cleared"], ContactState::Closed, None),
            ("a fault makes the contact unknown once; the next reading ends it", Timer,
                vec![(0, Fault), (10, Fault), (100, Contact(Closed)), (200, Tick)],
                vec!["contact_fault", "closed"], ContactState::Closed, None),
            // Regression: the acknowledgement ended whatever was active by then: an admin whose page
            // showed `held` (the door then closed, and was forced) silently ended `forced`.
            ("acknowledging the held alarm the page showed leaves a later forced active", Timer,
                vec![(0, Grant), (100, Contact(Open)), (31_000, Tick), (32_000, Relock), (33_000, Contact(Closed)), (33_100, Tick), (40_000, Contact(Open)), (40_100, Tick), (41_000, Ack(Alarm::Held))],
                vec!["opened:req", "held", "closed", "held_cleared", "forced"], ContactState::Open, Some(Alarm::Forced)),
            // Regression: acknowledging `forced` also ended `held`, silently, while the door stood open.
            ("acknowledging forced on a door still open leaves held active", Timer,
                vec![(0, Contact(Open)), (31_000, Tick), (32_000, Ack(Alarm::Forced))],
                vec!["forced", "held", "acknowledged"], ContactState::Open, Some(Alarm::Held)),
            ("after forced is acknowledged, the closing clears held", Timer,
                vec![(0, Contact(Open)), (31_000, Tick), (32_000, Ack(Alarm::Forced)), (40_000, Contact(Closed)), (40_100, Tick)],
                vec!["forced", "held", "acknowledged", "closed", "held_cleared"], ContactState::Closed, None),
            // Regression: a held door whose contact failed and read open again kept `held` active
            // after it closed.
            ("held through a contact fault is cleared by the closing", Timer,
                vec![(0, Grant), (100, Contact(Open)), (31_000, Tick), (32_000, Fault), (33_000, Contact(Open)), (33_100, Tick), (34_000, Contact(Closed)), (34_100, Tick)],
                vec!["opened:req", "held", "contact_fault", "opened:req", "closed:req", "held_cleared"], ContactState::Closed, None),
            ("a fault stops the held timer", Timer,
                vec![(0, Grant), (100, Contact(Open)), (200, Fault), (60_000, Tick)],
                vec!["opened:req", "contact_fault"], ContactState::Unknown, None),
        ];
        for (name, relock_on, steps, expected, contact, alarm) in table {
            let (words, state) = run(relock_on, &steps);
            assert_eq!(words, expected, "{name}");
            assert_eq!(state.contact(), contact, "{name}");
            assert_eq!(state.alarm(), alarm, "{name}");
        }
    }

    /// Regression guard: a door standing open when the daemon starts (or when a faulty contact reads
    /// again) was not seen opening; it is `opened` without a cause, never `forced`. Held still counts.
    #[test]
    fn a_door_first_seen_open_is_opened_not_forced() {
        let origin = Instant::now();
        let s = settings(RelockOn::Timer);
        let ms = |n| origin + Duration::from_millis(n);
        let (bouncing, _) = on_input(&InputState::default(), Happening::Contact(Open), ms(0), &s);
        let (open, actions) = on_input(&bouncing, Happening::Tick, ms(DEBOUNCE_MS), &s);
        assert_eq!(
            actions.iter().map(word).collect::<Vec<_>>(),
            ["opened"],
            "at start-up"
        );
        assert_eq!((open.contact(), open.alarm()), (ContactState::Open, None));
        let (held, actions) = on_input(&open, Happening::Tick, ms(DEBOUNCE_MS + HELD_MS), &s);
        assert_eq!(actions.iter().map(word).collect::<Vec<_>>(), ["held"]);
        let (faulty, _) = on_input(&held, Happening::ContactFault, ms(40_000), &s);
        let (reading, _) = on_input(&faulty, Happening::Contact(Open), ms(41_000), &s);
        let (_, actions) = on_input(&reading, Happening::Tick, ms(41_000 + DEBOUNCE_MS), &s);
        assert_eq!(
            actions.iter().map(word).collect::<Vec<_>>(),
            ["opened"],
            "after a fault"
        );
    }

    #[test]
    fn relock_on_close_keeps_the_relay_unlocked_only_while_the_opened_door_is_open() {
        use Step::*;
        let s = settings(RelockOn::Close);
        let (_, before_opening) = run(RelockOn::Close, &[(0, Grant)]);
        assert!(
            !before_opening.keeps_unlocked(&s),
            "nobody came: the timer relocks"
        );
        let (_, open) = run(
            RelockOn::Close,
            &[(0, Grant), (100, Contact(Open)), (200, Tick)],
        );
        assert!(open.keeps_unlocked(&s));
        assert!(!open.keeps_unlocked(&settings(RelockOn::Timer)));
        let (_, faulty) = run(
            RelockOn::Close,
            &[(0, Grant), (100, Contact(Open)), (200, Tick), (300, Fault)],
        );
        assert!(
            !faulty.keeps_unlocked(&s),
            "a contact that cannot be read hands the relock back to the timer"
        );
        // Regression: a contact that never read closed again (a cut wire reads open) kept a
        // maglock released until a restart; the held-open alarm hands the relock to the timer.
        let (words, never_closed) = run(
            RelockOn::Close,
            &[
                (0, Grant),
                (100, Contact(Open)),
                (200, Tick),
                (HELD_MS + 1_000, Tick),
            ],
        );
        assert_eq!(words, ["opened:req", "held"]);
        assert!(
            !never_closed.keeps_unlocked(&s),
            "held open: the timer relocks"
        );
    }

    #[test]
    fn deadlines_cover_the_debounce_and_the_held_alarm() {
        let origin = Instant::now();
        let s = settings(RelockOn::Timer);
        let ms = |n| origin + Duration::from_millis(n);
        let state = InputState::default();
        assert_eq!(state.next_deadline(&s), None);
        let (bouncing, _) = on_input(&state, Happening::Contact(Open), ms(0), &s);
        assert_eq!(bouncing.next_deadline(&s), Some(ms(DEBOUNCE_MS)));
        let (open, _) = on_input(&bouncing, Happening::Tick, ms(DEBOUNCE_MS), &s);
        assert_eq!(open.next_deadline(&s), Some(ms(DEBOUNCE_MS + HELD_MS)));
        let (held, _) = on_input(&open, Happening::Tick, ms(DEBOUNCE_MS + HELD_MS), &s);
        assert_eq!(held.next_deadline(&s), None, "held is raised once");
    }

    #[test]
    fn nothing_but_an_exit_press_asks_for_an_unlock() {
        use Step::*;
        let steps = [
            (0, Contact(Open)),
            (100, Tick),
            (200, Contact(Closed)),
            (300, Tick),
            (400, Fault),
            (500, Ack(Alarm::Forced)),
            (600, Grant),
            (700, Contact(Open)),
            (800, Tick),
            (900, Relock),
            (1_000, Contact(Closed)),
            (31_000, Tick),
        ];
        for relock_on in [RelockOn::Timer, RelockOn::Open, RelockOn::Close] {
            let (words, _) = run(relock_on, &steps);
            assert!(!words.iter().any(|w| w == "unlock_exit"), "{words:?}");
        }
    }
}
