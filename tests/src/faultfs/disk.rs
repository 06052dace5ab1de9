//! The disk under `faultfs`: the backing directory, with written data kept in memory until it
//! is synced, as a disk's volatile cache and the page cache do together, and operations failing
//! on command.
//!
//! - **Durable** is what is in the backing directory. A write through a handle opened with
//!   `O_DSYNC` or `O_SYNC` (herd's direct log) goes straight there; any other write stays in
//!   memory, in whole pages, until an `fsync` or `fdatasync` of that file writes its pages
//!   back. Reads see the pages in memory over the backing file.
//! - **A power cut** ([`Shared::cut`]) writes back a random half of the pages in memory (a
//!   disk writes back cached data in any order, and some of it before the cut), drops the rest,
//!   and freezes the file system: every later operation fails with `EIO`.
//! - **Metadata** (create, mkdir, unlink, rename, truncate) reaches the backing directory at
//!   once, as if every directory were synced after each change. So this file system cannot
//!   find a missing directory sync, only lost or torn data.
//! - **Faults** ([`Mode`]): every write and sync failing with `EIO` (a dead disk, the
//!   device-mapper `error` target), only syncs failing (a failed `fsync`, whose pages the
//!   kernel then drops, as Linux does), or writes failing in periodic windows (the `flakey`
//!   target). Reads keep working in all of them.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The unit data is kept in memory and written back in.
pub const PAGE: u64 = 4096;

/// Which operations fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nothing fails.
    Normal,
    /// Every write, sync and change of metadata fails with `EIO`.
    FailWrites,
    /// Syncs (and writes through a synced handle) fail with `EIO`; the pages they would have
    /// written back are dropped.
    FailSyncs,
    /// As `FailWrites` for `down` out of every `up + down`, starting with `up`.
    Flakey {
        up: Duration,
        down: Duration,
        since: Instant,
    },
    /// After a power cut: everything fails with `EIO`.
    Frozen,
}

/// A file's data not yet durable.
pub(super) struct Dirty {
    /// The backing file, open for writing back (the name may change or go meanwhile).
    pub(super) file: Arc<File>,
    pub(super) pages: BTreeMap<u64, Vec<u8>>,
    /// The file's size as its writers see it.
    pub(super) size: u64,
}

impl Dirty {
    /// Writes the page at `at` to the backing file, up to the file's size.
    fn write_back(&self, at: u64, page: &[u8]) -> io::Result<()> {
        let end = (self.size - at).min(PAGE) as usize;
        self.file.write_all_at(&page[..end], at)
    }
}

/// Reads from `file` at `at` until `buf` is full or the file ends (the rest stays as it was).
pub(super) fn read_full(file: &File, buf: &mut [u8], at: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], at + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(())
}

/// What the file system and its controller share.
pub struct Shared {
    pub(super) state: Mutex<State>,
}

pub(super) struct State {
    mode: Mode,
    /// Faults hit only the files of this name, if set (a power cut hits everything).
    only: Option<OsString>,
    /// By inode number of the backing file.
    pub(super) dirty: HashMap<u64, Dirty>,
    /// For the power cut's choice of pages (xorshift).
    rng: u64,
}

pub(super) fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    /// The error `op` on a file named `name` fails with now, if it does.
    pub(super) fn fails(&self, op: Op, name: Option<&OsStr>) -> Option<libc::c_int> {
        if self.mode != Mode::Frozen && self.only.is_some() && self.only.as_deref() != name {
            return None;
        }
        let failing = match self.mode {
            Mode::Normal => false,
            Mode::Frozen => true,
            Mode::FailWrites => op != Op::Read,
            Mode::FailSyncs => op == Op::Sync,
            Mode::Flakey { up, down, since } => {
                let period = (up + down).as_nanos().max(1);
                op != Op::Read && since.elapsed().as_nanos() % period >= up.as_nanos()
            }
        };
        failing.then_some(libc::EIO)
    }
}

/// What an operation does to the disk, for [`Shared::fails`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Read,
    Write,
    Sync,
}

impl Shared {
    pub fn new(seed: u64) -> Arc<Shared> {
        Arc::new(Shared {
            state: Mutex::new(State {
                mode: Mode::Normal,
                only: None,
                dirty: HashMap::new(),
                rng: seed | 1,
            }),
        })
    }

    /// Sets the faults, for files named `only` or all of them.
    pub fn set_mode(&self, mode: Mode, only: Option<&str>) {
        let mut s = lock(&self.state);
        s.mode = mode;
        s.only = only.map(OsString::from);
    }

    /// Pages in memory and the files they belong to.
    pub fn dirty(&self) -> (usize, usize) {
        let s = lock(&self.state);
        (s.dirty.values().map(|d| d.pages.len()).sum(), s.dirty.len())
    }

    /// Cuts the power: writes back a random half of the pages in memory, drops the rest and
    /// freezes. Returns (pages written back, pages dropped).
    pub fn cut(&self) -> io::Result<(usize, usize)> {
        let mut s = lock(&self.state);
        s.mode = Mode::Frozen;
        let (mut kept, mut lost) = (0, 0);
        let mut rng = s.rng;
        for d in std::mem::take(&mut s.dirty).into_values() {
            for (at, page) in &d.pages {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                if rng & 1 == 0 {
                    lost += 1;
                    continue;
                }
                kept += 1;
                d.write_back(*at, page)?;
            }
        }
        Ok((kept, lost))
    }

    /// The error `op` on a file named `name` fails with now, if it does.
    pub(super) fn fails(&self, op: Op, name: Option<&OsStr>) -> Option<libc::c_int> {
        lock(&self.state).fails(op, name)
    }

    /// The state, locked, if `op` on a file named `name` does not fail now: held while the
    /// operation runs, so that a power cut comes before it or after it, never in between.
    pub(super) fn gate(
        &self,
        op: Op,
        name: Option<&OsStr>,
    ) -> Result<MutexGuard<'_, State>, libc::c_int> {
        let s = lock(&self.state);
        match s.fails(op, name) {
            Some(e) => Err(e),
            None => Ok(s),
        }
    }

    /// Writes back the pages of one file; on a failing sync drops them instead.
    pub(super) fn sync(&self, ino: u64, name: &OsStr) -> Result<(), libc::c_int> {
        let mut s = lock(&self.state);
        let failing = s.fails(Op::Sync, Some(name));
        let Some(d) = s.dirty.remove(&ino) else {
            return failing.map_or(Ok(()), Err);
        };
        if let Some(e) = failing {
            return Err(e);
        }
        for (at, page) in &d.pages {
            d.write_back(*at, page).map_err(super::fs::errno)?;
        }
        if d.file.metadata().map_err(super::fs::errno)?.len() != d.size {
            d.file.set_len(d.size).map_err(super::fs::errno)?;
        }
        Ok(())
    }
}
