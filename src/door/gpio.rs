//! Raspberry Pi relay backend: drives one BCM GPIO pin through rppal, taking the pin straight
//! into its locked level (no glitch at start-up) and leaving it there when the process exits.

use super::{Door, DoorError};
use rppal::gpio::{Gpio, Level, OutputPin};

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
        Ok(GpioDoor { pin, active_low })
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

#[cfg(test)]
mod tests {
    use super::*;

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
