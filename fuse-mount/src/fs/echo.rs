//! The replaying thread's requests (see `replay`): it re-enacts changes made elsewhere on the
//! mount so that the kernel raises their inotify events. Its requests are answered from the
//! store and the act in progress, and change nothing: nothing reaches the store, nothing is
//! rejected, handles hold nothing. A name is shown as it was before the act: absent while it
//! is being created, present (as the kind it had, with the directories above it) while it is
//! being deleted.
//!
//! Every answer shows the owner's write permission and is not to be cached: the kernel checks
//! permissions (`default_permissions`) before asking, and re-reads attributes when it refuses,
//! so a read-only key or a read-only mount does not stop a replay by a daemon that is not
//! root, while everyone else's next access asks again and sees the real mode.

use std::sync::Arc;
use std::time::SystemTime;

use super::{child, lock, Errno, Fs, Handle, Opened, Result, Stat};
use crate::replay::{Act, PROBE};
use crate::table::{Ino, Kind, ROOT};

/// Attributes of a name the store no longer has (or does not have yet), not to be cached.
fn ghost(ino: Ino, kind: Kind) -> Stat {
    let dir = kind == Kind::Dir;
    Stat {
        ino,
        kind,
        size: 0,
        mtime: SystemTime::now(),
        perm: if dir { 0o755 } else { 0o644 },
        nlink: 1,
        volatile: true,
    }
}

/// What the replaying thread is shown of `stat`.
fn echoed(mut stat: Stat) -> Stat {
    stat.perm |= 0o200;
    stat.volatile = true;
    stat
}

impl Fs {
    /// True if a request with this `pid` comes from the replaying thread.
    pub fn is_echo(&self, pid: u32) -> bool {
        self.echo.is(pid)
    }

    /// `lookup` by the replaying thread.
    pub fn echo_lookup(&mut self, parent: Ino, name: &str) -> Result<Stat> {
        let table = Arc::clone(&self.table);
        let mut t = lock(&table);
        if parent == ROOT && name.starts_with(PROBE) {
            self.echo.confirm();
            return Err(Errno(libc::ENOENT));
        }
        let path = child(t.path(parent).ok_or(Errno(libc::ENOENT))?, name);
        match self.echo.act() {
            Some(Act::Create { path: p, .. }) if p == path => Err(Errno(libc::ENOENT)),
            Some(Act::Delete { path: p, kind }) if p.starts_with(&path) => {
                let kind = if p == path { kind } else { Kind::Dir };
                let ino = t.intern(&path, kind);
                t.looked_up(ino);
                Ok(ghost(ino, kind))
            }
            _ => {
                drop(t);
                self.lookup(parent, name).map(echoed)
            }
        }
    }

    /// `getattr` (and `setattr`, which changes nothing) by the replaying thread: a name being
    /// deleted still answers.
    pub fn echo_getattr(&mut self, ino: Ino) -> Result<Stat> {
        match self.getattr(ino) {
            Ok(stat) => Ok(echoed(stat)),
            Err(e) => match lock(&self.table).get(ino) {
                Some(inode) => Ok(ghost(ino, inode.kind)),
                None => Err(e),
            },
        }
    }

    /// `open` by the replaying thread: a handle that holds and commits nothing.
    pub fn echo_open(&mut self, ino: Ino) -> Result<Opened> {
        if lock(&self.table).get(ino).is_none() {
            return Err(Errno(libc::ENOENT));
        }
        Ok(Opened {
            fh: self.add_handle(Handle::Echo),
            flags: 0,
        })
    }

    /// `create` by the replaying thread: the file the store now holds, opened.
    pub fn echo_create(&mut self, parent: Ino, name: &str) -> Result<(Stat, Opened)> {
        let stat = self.echo_made(parent, name, Kind::File)?;
        let fh = self.add_handle(Handle::Echo);
        Ok((stat, Opened { fh, flags: 0 }))
    }

    /// `mkdir` by the replaying thread: the directory the store now holds.
    pub fn echo_mkdir(&mut self, parent: Ino, name: &str) -> Result<Stat> {
        self.echo_made(parent, name, Kind::Dir)
    }

    /// `unlink` and `rmdir` by the replaying thread: the name goes from the table only. A
    /// directory holding a file of the mount's own (one being written, an editor's scratch
    /// file) stays, as a local disk would refuse to remove it: `ENOTEMPTY`.
    pub fn echo_remove(&mut self, parent: Ino, name: &str) -> Result<()> {
        let mut t = lock(&self.table);
        let path = child(t.path(parent).ok_or(Errno(libc::ENOENT))?, name);
        let holds_local = t
            .subtree(&path)
            .iter()
            .any(|(_, ino)| t.get(*ino).is_some_and(|i| i.local.is_some()));
        if holds_local {
            return Err(Errno(libc::ENOTEMPTY));
        }
        t.detach(&path);
        Ok(())
    }

    /// A name made by the replaying thread, with its attributes as the store has them.
    fn echo_made(&mut self, parent: Ino, name: &str, kind: Kind) -> Result<Stat> {
        let table = Arc::clone(&self.table);
        let mut t = lock(&table);
        let path = child(t.path(parent).ok_or(Errno(libc::ENOENT))?, name);
        let found = self.resolve(&t, &path)?;
        let ino = t.intern(&path, kind);
        self.held(&mut t, ino, &path);
        let stat = match found {
            Some(found) if found.kind() == kind => self.stat(&t, ino, &found),
            _ => ghost(ino, kind),
        };
        Ok(echoed(stat))
    }
}
