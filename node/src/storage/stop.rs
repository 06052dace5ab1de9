//! Why the storage stopped taking writes ([`Stop`]): set once, shared by the writer, the sync
//! and checkpoint threads and whoever reports the node's health.

use super::{wal, Error};
use std::sync::{Arc, OnceLock};

/// Why the storage stopped taking writes, as operators act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The file system is full (`ENOSPC`, `EDQUOT`).
    NoSpace,
    /// The file system is read-only (`EROFS`: remounted after errors, say).
    ReadOnly,
    /// Any other failure to write or sync (`EIO`, a lost thread).
    Io,
}

impl Cause {
    pub(super) fn of_errno(errno: Option<i32>) -> Cause {
        match errno {
            Some(libc::ENOSPC | libc::EDQUOT) => Cause::NoSpace,
            Some(libc::EROFS) => Cause::ReadOnly,
            _ => Cause::Io,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::NoSpace => "no_space",
            Cause::ReadOnly => "read_only",
            Cause::Io => "io_error",
        }
    }
}

/// The failure that stopped the storage, and when.
#[derive(Debug, Clone)]
pub struct Stop {
    pub why: String,
    pub cause: Cause,
    /// Nothing of the failed commit reached the disk, and it failed for want of space: once
    /// there is room, the storage can be reopened from the log ([`Storage::reopen`]) rather
    /// than wait for a restart.
    pub resumable: bool,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl Stop {
    pub(super) fn new(why: impl std::fmt::Display, cause: Cause) -> Stop {
        Stop {
            why: why.to_string(),
            cause,
            resumable: false,
            at_ms: crate::clock::now_ms(),
        }
    }

    pub(super) fn of(e: &Error) -> Stop {
        let mut stop = Stop::new(e, e.cause());
        let nothing_written = match e {
            Error::Log(wal::Error::Io { .. }) => true,
            Error::Log(wal::Error::Broken { first, .. }) => first.nothing_written,
            // The log holds everything the checkpoint did: a reopen replays it.
            Error::Checkpoint { .. } => true,
            Error::Stopped { resumable, .. } => *resumable,
            _ => false,
        };
        stop.resumable = stop.cause == Cause::NoSpace && nothing_written;
        stop
    }

    /// Stops `stopped` (if it is not stopped already) for good: a reopened storage that does
    /// not meet what memory holds.
    pub fn fatal(stopped: &Stopped, why: impl std::fmt::Display) {
        let _ = stopped.set(Stop::new(why, Cause::Io));
    }
}

/// Set once, when the storage stops; shared with the checkpoint thread and whoever reports
/// the node's health.
pub type Stopped = Arc<OnceLock<Stop>>;
