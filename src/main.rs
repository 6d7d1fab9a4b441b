//! The facegate binary: parse the command line, set up logging, hand over to `cli`.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    match cli::run(cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            log::error!("{err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
