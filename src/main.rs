//! The facegate binary: parse the command line, set up logging, hand over to `cli`.

mod cli;

use clap::Parser;
use std::time::Duration;

/// How long the last log lines may take to reach stderr before the process exits.
const LOG_FLUSH_LIMIT: Duration = Duration::from_secs(2);

fn main() -> std::process::ExitCode {
    facegate::logging::init();
    let code = match cli::run(cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            log::error!("{err:#}");
            std::process::ExitCode::FAILURE
        }
    };
    facegate::logging::flush(LOG_FLUSH_LIMIT);
    code
}
