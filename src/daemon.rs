//! The door daemon's wiring (in progress).

use anyhow::{bail, Result};

use crate::config::Config;

pub fn run(_config: Config) -> Result<()> {
    bail!("serve is not implemented yet")
}

pub fn lock_door(_config: &Config) -> Result<()> {
    bail!("door lock is not implemented yet")
}
