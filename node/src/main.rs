//! The `herd` binary: parses the command line and hands it to [`node::cli`], which owns every
//! command; this file only turns the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = node::cli::Args::parse();
    match node::cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => node::cli::report(&error),
    }
}
