//! Raspberry Pi backend: drives the relay's BCM GPIO pin through rppal, taking the pin straight
//! into its locked level (no glitch at start-up) and leaving it there when the process exits; reads
//! the door contact and the exit button on input pins with pull-ups, interrupt-driven (rppal's
//! asynchronous interrupts, with the kernel's debounce), never polled.

use super::inputs::{ContactLevel, InputSignal};
use super::{Door, DoorError, InputLine, InputSink, InputWiring};
use rppal::gpio::{Event, Gpio, InputPin, Level, OutputPin, Trigger};

/// The output level that keeps the door locked. An active-high relay is energised by a high pin,
/// so locked = low; an active-low relay board is energised by a low pin, so locked = high.
pub(crate) fn locked_level(active_low: bool) -> Level {
    if active_low {
        Level::High
    } else {
        Level::Low
    }
}

/// The output level that unlocks the door: the opposite of [`locked_level`].
pub(crate) fn unlocked_level(active_low: bool) -> Level {
    !locked_level(active_low)
}

/// The GPIO relay backend (`door.backend = "gpio"`).
pub(crate) struct GpioDoor {
    pin: OutputPin,
    active_low: bool,
    inputs: InputWiring,
    /// The input pins being watched: their interrupt threads live as long as they do.
    watched: Vec<InputPin>,
}

/// The contact reading for a line `level`, given which level means open.
fn contact_level(level: Level, open_high: bool) -> ContactLevel {
    if (level == Level::High) == open_high {
        ContactLevel::Open
    } else {
        ContactLevel::Closed
    }
}

/// The level an interrupt event leaves the line at.
fn level_after(event: &Event) -> Option<Level> {
    match event.trigger {
        Trigger::RisingEdge => Some(Level::High),
        Trigger::FallingEdge => Some(Level::Low),
        Trigger::Disabled | Trigger::Both => None,
    }
}

/// Claims `line` as an input with its pull-up on, interrupt-driven with the kernel's debounce.
fn watch_line(
    gpio: &Gpio,
    line: &InputLine,
    trigger: Trigger,
    callback: impl FnMut(Event) + Send + 'static,
) -> Result<InputPin, String> {
    let mut pin = gpio
        .get(line.gpio_pin)
        .map_err(|error| error.to_string())?
        .into_input_pullup();
    let debounce = (!line.debounce.is_zero()).then_some(line.debounce);
    pin.set_async_interrupt(trigger, debounce, callback)
        .map_err(|error| error.to_string())?;
    Ok(pin)
}

impl GpioDoor {
    /// Claims BCM pin `bcm_pin` as an output already at its locked level.
    pub fn open(bcm_pin: u8, active_low: bool) -> Result<Self, DoorError> {
        let gpio = Gpio::new().map_err(|error| DoorError::GpioUnavailable {
            cause: error.to_string(),
        })?;
        let pin = gpio.get(bcm_pin).map_err(|error| DoorError::GpioPin {
            pin: bcm_pin,
            cause: error.to_string(),
        })?;
        let mut pin = match locked_level(active_low) {
            Level::High => pin.into_output_high(),
            Level::Low => pin.into_output_low(),
        };
        // Keep driving the locked level after the process exits instead of floating the pin.
        pin.set_reset_on_drop(false);
        Ok(GpioDoor {
            pin,
            active_low,
            inputs: InputWiring::default(),
            watched: Vec::new(),
        })
    }

    /// The input lines [`Door::watch_inputs`] reads.
    pub fn with_inputs(mut self, inputs: InputWiring) -> Self {
        self.inputs = inputs;
        self
    }

    fn watch_contact(&mut self, gpio: &Gpio, line: &InputLine, sink: &InputSink) {
        let open_high = line.active_high;
        let events = sink.clone();
        let watched = watch_line(gpio, line, Trigger::Both, move |event| {
            if let Some(level) = level_after(&event) {
                events.send(InputSignal::Contact(contact_level(level, open_high)));
            }
        });
        match watched {
            Ok(pin) => {
                sink.send(InputSignal::Contact(contact_level(pin.read(), open_high)));
                log::info!(
                    "door contact on BCM {} (open = {})",
                    line.gpio_pin,
                    level_name(open_high)
                );
                self.watched.push(pin);
            }
            Err(cause) => {
                log::error!(
                    "door contact on BCM {} cannot be read: {cause}. Check door.contact.gpio_pin; \
                     the door relocks on its timer",
                    line.gpio_pin
                );
                sink.send(InputSignal::ContactFault);
            }
        }
    }

    fn watch_exit_button(&mut self, gpio: &Gpio, line: &InputLine, sink: &InputSink) {
        let trigger = if line.active_high {
            Trigger::RisingEdge
        } else {
            Trigger::FallingEdge
        };
        let events = sink.clone();
        match watch_line(gpio, line, trigger, move |_| {
            events.send(InputSignal::ExitPressed)
        }) {
            Ok(pin) => {
                log::info!(
                    "exit button on BCM {} (pressed = {})",
                    line.gpio_pin,
                    level_name(line.active_high)
                );
                self.watched.push(pin);
            }
            Err(cause) => log::error!(
                "exit button on BCM {} cannot be read: {cause}. Check door.exit_button.gpio_pin; \
                 until then the button does not unlock",
                line.gpio_pin
            ),
        }
    }

    fn drive(&mut self, level: Level, reason: &str) {
        self.pin.write(level);
        log::debug!("GPIO {} driven {level} ({reason})", self.pin.pin());
    }
}

impl Door for GpioDoor {
    fn set_locked(&mut self, reason: &str) -> Result<(), DoorError> {
        self.drive(locked_level(self.active_low), reason);
        Ok(())
    }

    fn set_unlocked(&mut self, reason: &str) -> Result<(), DoorError> {
        self.drive(unlocked_level(self.active_low), reason);
        Ok(())
    }

    fn watch_inputs(&mut self, sink: InputSink) {
        let InputWiring {
            contact,
            exit_button,
        } = self.inputs;
        if contact.is_none() && exit_button.is_none() {
            return;
        }
        let gpio = match Gpio::new() {
            Ok(gpio) => gpio,
            Err(error) => {
                log::error!("the door's inputs cannot be read: GPIO unavailable ({error})");
                if contact.is_some() {
                    sink.send(InputSignal::ContactFault);
                }
                return;
            }
        };
        if let Some(line) = &contact {
            self.watch_contact(&gpio, line, &sink);
        }
        if let Some(line) = &exit_button {
            self.watch_exit_button(&gpio, line, &sink);
        }
    }

    fn describe(&self) -> String {
        let (relay, locked) = if self.active_low {
            ("active-low", "high")
        } else {
            ("active-high", "low")
        };
        format!(
            "GPIO relay on BCM {} ({relay}: locked = {locked})",
            self.pin.pin()
        )
    }
}

fn level_name(high: bool) -> &'static str {
    if high {
        "high"
    } else {
        "low"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_levels_follow_the_configured_open_level() {
        // (line level, open_high, reading)
        let table = [
            (Level::High, true, ContactLevel::Open),
            (Level::Low, true, ContactLevel::Closed),
            (Level::High, false, ContactLevel::Closed),
            (Level::Low, false, ContactLevel::Open),
        ];
        for (level, open_high, reading) in table {
            assert_eq!(
                contact_level(level, open_high),
                reading,
                "{level} {open_high}"
            );
        }
        let rising = Event {
            trigger: Trigger::RisingEdge,
            ..Event::default()
        };
        assert_eq!(level_after(&rising), Some(Level::High));
    }

    #[test]
    fn locked_and_unlocked_levels_follow_relay_polarity() {
        // (active_low, locked level, unlocked level)
        let table = [
            (false, Level::Low, Level::High),
            (true, Level::High, Level::Low),
        ];
        for (active_low, locked, unlocked) in table {
            assert_eq!(locked_level(active_low), locked, "active_low={active_low}");
            assert_eq!(
                unlocked_level(active_low),
                unlocked,
                "active_low={active_low}"
            );
        }
    }
}
