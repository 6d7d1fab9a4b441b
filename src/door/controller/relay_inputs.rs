//! The door's inputs on the relay thread: readings from the backends go through the pure
//! `door::inputs` state machine, and what it decides (report, unlock for the exit button, relock)
//! is carried out here. Nothing here blocks: pure rules, the relay, `try_send`.

use super::{ActuationReason, DoorEvent, OpenCause, OpenRequest, RelayLoop};
use crate::door::inputs::{
    on_input, ContactState, Happening, InputAction, InputReport, InputSignal, InputStatus, Notice,
};
use crate::door::policy::{on_exit, relock_now, TickAction};
use crate::sync::lock_recovering;
use chrono::Utc;
use std::time::Instant;

impl RelayLoop<'_> {
    /// A reading from a backend; an exit press gets its request id here.
    pub(super) fn input_signal(&mut self, signal: InputSignal) {
        let happening = match signal {
            InputSignal::Contact(level) => Happening::Contact(level),
            InputSignal::ContactFault => Happening::ContactFault,
            InputSignal::ExitPressed => {
                self.exits += 1;
                Happening::Exit {
                    request_id: format!(
                        "exit-{}-{:04x}",
                        Utc::now().format("%Y%m%dT%H%M%S%3f"),
                        self.exits & 0xffff
                    ),
                }
            }
        };
        self.feed(happening);
    }

    /// Runs the inputs' state machine, publishes its status and carries out what it decides.
    pub(super) fn feed(&mut self, happening: Happening) {
        let settings = self.shared.settings.inputs;
        let (next, actions) = on_input(&self.input_state, happening, Instant::now(), &settings);
        self.input_state = next;
        *lock_recovering(&self.shared.published_inputs) = InputStatus {
            contact: self.input_state.contact(),
            alarm: self.input_state.alarm(),
        };
        for action in actions {
            match action {
                InputAction::Report(notice) => self.report_input(notice),
                InputAction::UnlockForExit { request_id } => self.exit(request_id),
                InputAction::Relock => self.relock_for_input(),
            }
        }
    }

    fn report_input(&self, notice: Notice) {
        let (request_id, cause) = notice
            .unlock
            .map_or((None, None), |u| (Some(u.request_id), Some(u.cause)));
        self.reporter.report(DoorEvent::Input(InputReport {
            event: notice.event,
            request_id,
            cause,
            contact: self.input_state.contact(),
            alarm: notice.alarm,
            active_alarm: self.input_state.alarm(),
            at: Utc::now(),
        }));
    }

    /// Free egress: the exit button unlocks even while a lock command holds the door.
    pub(super) fn exit(&mut self, request_id: String) {
        let now = Instant::now();
        let request = OpenRequest {
            request_id,
            cause: OpenCause::Exit,
            not_after: now,
        };
        let (next, verdict) = on_exit(&self.state, now, self.gate(), &self.shared.settings);
        self.carry_out(request, next, verdict, ActuationReason::Exit);
    }

    /// `relock_on = "open"` or `"close"`: ends the pulse now.
    pub(super) fn relock_for_input(&mut self) {
        let reason = match self.input_state.contact() {
            ContactState::Open => ActuationReason::RelockOnOpen,
            ContactState::Closed | ContactState::Unknown => ActuationReason::RelockOnClose,
        };
        let (next, action) = relock_now(&self.state, Instant::now(), &self.shared.settings);
        self.set_state(next);
        if action == TickAction::Relock {
            let pulse = self.pulse.take();
            self.lock(reason, pulse.as_ref());
        }
    }
}
