//! The `herd` binary: parses the command line and hands it to [`node::cli`], which owns every
//! command; this file only turns the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc malloc: the request path allocates small short-lived buffers on
/// every call, and glibc's arena locking and consolidation cost about a tenth of the CPU of a
/// write under load (measured with `perf`, see docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = node::cli::Args::parse();
    match node::cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => node::cli::report(&error),
    }
}
