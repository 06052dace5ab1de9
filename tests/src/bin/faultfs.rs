//! `faultfs`: mounts a fault-injecting pass-through of a directory for the disk-fault and
//! power-loss tests (see `tests::faultfs`).
//!
//! Usage: `faultfs BACKING MOUNTPOINT SOCKET [--seed N] [--no-direct]`. Commands go to the
//! Unix socket SOCKET, which exists once the file system is mounted.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "faultfs BACKING MOUNTPOINT SOCKET [--seed N] [--no-direct]";

fn main() -> ExitCode {
    let mut paths: Vec<PathBuf> = Vec::new();
    let (mut seed, mut no_direct) = (1u64, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--no-direct" => no_direct = true,
            "--seed" => match args.next().and_then(|s| s.parse().ok()) {
                Some(s) => seed = s,
                None => {
                    eprintln!("error: --seed needs a number\nusage: {USAGE}");
                    return ExitCode::from(2);
                }
            },
            _ => paths.push(a.into()),
        }
    }
    let [backing, mnt, socket] = paths.as_slice() else {
        eprintln!("usage: {USAGE}");
        return ExitCode::from(2);
    };
    match tests::faultfs::serve(backing, mnt, socket, no_direct, seed) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: faultfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}
