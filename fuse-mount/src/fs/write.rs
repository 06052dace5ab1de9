//! The write path. A handle opened for writing keeps a private buffer (the
//! current content, or empty when truncated); writes patch it; `flush`, `fsync` and `release`
//! commit a changed buffer as one `Put` of its decoded value. The first write of a handle that
//! could be the whole value is checked with the store at once, so tools that ignore errors at
//! `close()` (bash's `echo`) still see a rejection.
//!
//! Invariant: a handle whose write was refused never commits (the old value stays).

use std::time::SystemTime;

use super::open::{Handle, KeyHandle, SCRATCH_MAX};
use super::{control, lock, Errno, Found, Fs, Result, Stat};
use crate::backend::{Node, Op};
use crate::content::{decode, encode};
use crate::invalidation::Job;
use crate::table::{Ino, Local};

/// A write of a whole number of pages is taken as one chunk of a larger value, not checked
/// on its own.
const PAGE: usize = 4096;

impl Fs {
    /// `write` at `offset` (ignored with `O_APPEND`: the end of the buffer).
    pub fn write(&mut self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let len = u32::try_from(data.len()).map_err(|_| Errno(libc::EINVAL))?;
        let offset = usize::try_from(offset).map_err(|_| Errno(libc::EFBIG))?;
        let table = std::sync::Arc::clone(&self.table);
        let mut t = lock(&table);
        self.write_seq += 1;
        let seq = self.write_seq;
        let limit = self.backend.max_value_bytes() + 1;
        let Some(handle) = self.handles.get_mut(&fh) else {
            return Err(Errno(libc::EBADF));
        };
        let h = match handle {
            Handle::Scratch { ino, append } => {
                let Some(Local::Scratch { content, mtime, .. }) =
                    t.get_mut(*ino).and_then(|i| i.local.as_mut())
                else {
                    return Ok(len); // unlinked while open: the data goes nowhere
                };
                let start = if *append { content.len() } else { offset };
                if start + data.len() > SCRATCH_MAX {
                    return Err(Errno(libc::EFBIG));
                }
                patch(content, start, data);
                *mtime = SystemTime::now();
                return Ok(len);
            }
            Handle::Echo => return Ok(len), // the replaying thread never writes; nothing is kept
            Handle::Key(h) if h.writable => h,
            _ => return Err(Errno(libc::EBADF)),
        };
        if let Some(errno) = h.poisoned {
            return Err(Errno(errno));
        }
        let start = if h.append { h.buf.len() } else { offset };
        let end = start + data.len();
        let path = t.path(h.ino).cloned();
        if let Some(inode) = t.get_mut(h.ino) {
            inode.served = None; // the kernel's pages now hold unsaved data
        }
        // A pending file renamed to a scratch name: its buffer will land in local content.
        let local = t
            .get(h.ino)
            .is_some_and(|i| matches!(i.local, Some(Local::Scratch { .. })));
        drop(t);
        // Unlinked or replaced while open: nothing will be committed, nothing to check.
        let detached = path.is_none();
        let path = path.unwrap_or_default();
        if end > limit && !local && !detached {
            h.poisoned = Some(libc::EFBIG);
            let max = limit - 1;
            let message = format!("content of {end}+ bytes is over the value limit of {max} bytes");
            return Err(self.reject(&path, libc::EFBIG, &message));
        }
        patch(&mut h.buf, start, data);
        (h.dirty, h.modified, h.abandoned) = (true, true, false);
        h.writes += 1;
        h.seq = seq;
        let whole = h.writes == 1 && end == h.buf.len() && !data.len().is_multiple_of(PAGE);
        if !whole || local || detached {
            return Ok(len);
        }
        let refusal = match decode(&h.buf) {
            Err(e) => Some((libc::EINVAL, e.to_string())),
            Ok(value) => self
                .backend
                .check(&path, &value)
                .err()
                .map(|e| (e.kind.errno(), e.message)),
        };
        match refusal {
            None => Ok(len),
            Some((errno, message)) => {
                h.poisoned = Some(errno);
                Err(self.reject(&path, errno, &message))
            }
        }
    }

    /// `setattr`: a size truncates or extends (an open handle's buffer when `fh` is given,
    /// else the stored value at once); mode, owner and times are accepted and ignored.
    pub fn setattr(&mut self, ino: Ino, size: Option<u64>, fh: Option<u64>) -> Result<Stat> {
        let Some(size) = size else {
            return self.getattr(ino);
        };
        if fh.is_some_and(|fh| matches!(self.handles.get(&fh), Some(Handle::Echo))) {
            return self.echo_getattr(ino); // the replay's truncation changes nothing
        }
        let table = std::sync::Arc::clone(&self.table);
        let mut t = lock(&table);
        let path = t.path(ino).cloned().unwrap_or_default();
        if control::is_control(&path) {
            return Err(self.reject(&path, libc::EROFS, "/.herd is read-only"));
        }
        let size = usize::try_from(size).map_err(|_| Errno(libc::EFBIG))?;
        let found = self.resolve(&t, &path)?;
        if let Some(Found::Scratch(ino)) = found {
            if let Some(Local::Scratch { content, mtime, .. }) =
                t.get_mut(ino).and_then(|i| i.local.as_mut())
            {
                content.resize(size.min(SCRATCH_MAX), 0);
                *mtime = SystemTime::now();
            }
            drop(t);
            return self.getattr(ino);
        }
        if size > self.backend.max_value_bytes() + 1 {
            return Err(self.reject(&path, libc::EFBIG, "size is over the value limit"));
        }
        let open =
            fh.filter(|fh| matches!(self.handles.get(fh), Some(Handle::Key(k)) if k.ino == ino));
        let open = open.or_else(|| {
            let created = |k: &KeyHandle| k.ino == ino && k.created;
            self.handles
                .iter()
                .find_map(|(fh, h)| matches!(h, Handle::Key(k) if created(k)).then_some(*fh))
        });
        if let Some(Handle::Key(h)) = open.and_then(|fh| self.handles.get_mut(&fh)) {
            h.buf.resize(size, 0);
            (h.dirty, h.modified) = (true, true);
            self.write_seq += 1;
            h.seq = self.write_seq;
            if let Some(inode) = t.get_mut(ino) {
                inode.served = None;
            }
        } else {
            match found {
                Some(Found::Key(Node::Leaf { value, .. })) => {
                    let mut bytes = encode(&value);
                    bytes.resize(size, 0);
                    let value = decode(&bytes)
                        .map_err(|e| self.reject(&path, libc::EINVAL, &e.to_string()))?;
                    self.apply(&mut t, &path, vec![Op::Put(path.clone(), value)])?;
                    let _ = self.jobs.send(Job::Inode(ino));
                }
                Some(Found::Key(Node::Dir { .. })) => return Err(Errno(libc::EISDIR)),
                Some(_) => {}
                None => return Err(Errno(libc::ENOENT)),
            }
        }
        drop(t);
        self.getattr(ino)
    }

    /// `flush` (each `close`): commit a buffer the process changed; the error, if any, is the
    /// caller's. A created file whose write was refused disappears here already.
    /// `writer_killed` says whether the closing process was killed by a signal (see
    /// `sys::killed`; asked only when there is unsaved content): its unsaved content is then
    /// not committed, now or at `release`.
    pub fn flush(&mut self, fh: u64, writer_killed: impl FnOnce() -> bool) -> Result<()> {
        let Some(mut h) = self.take_key(fh) else {
            return Ok(());
        };
        if h.dirty && h.poisoned.is_none() && writer_killed() {
            h.abandoned = true;
            let path = lock(&self.table).path(h.ino).cloned().unwrap_or_default();
            self.reject(
                &path,
                libc::EIO,
                "the writing process was killed before it closed the file; what it wrote \
                 was not stored",
            );
        }
        let result = if h.modified {
            self.commit(&mut h)
        } else {
            Ok(())
        };
        if h.poisoned.is_some() {
            self.drop_pending(&h);
        }
        self.handles.insert(fh, Handle::Key(h));
        result
    }

    /// `fsync`: commit a changed buffer; the error, if any, is the caller's.
    pub fn fsync(&mut self, fh: u64) -> Result<()> {
        let Some(mut h) = self.take_key(fh) else {
            return Ok(());
        };
        let result = self.commit(&mut h);
        self.handles.insert(fh, Handle::Key(h));
        result
    }

    /// `release`: commit what is left, then forget the handle. A created file that never
    /// committed disappears.
    pub fn release(&mut self, fh: u64) -> Result<()> {
        let Some(Handle::Key(mut h)) = self.handles.remove(&fh) else {
            return Ok(()); // other kinds hold nothing to commit
        };
        let result = self.commit(&mut h);
        self.drop_pending(&h);
        result
    }

    /// Take a key handle out to work on it (the caller puts it back); other kinds stay.
    fn take_key(&mut self, fh: u64) -> Option<KeyHandle> {
        match self.handles.remove(&fh)? {
            Handle::Key(h) => Some(h),
            other => {
                self.handles.insert(fh, other);
                None
            }
        }
    }

    /// A created file that never committed, and never will through `h`, disappears unless
    /// another handle may still commit it.
    fn drop_pending(&mut self, h: &KeyHandle) {
        let others = self
            .handles
            .values()
            .any(|o| matches!(o, Handle::Key(k) if k.ino == h.ino && k.poisoned.is_none()));
        if !h.created || h.committed || others {
            return;
        }
        let mut t = lock(&self.table);
        let Some(path) = t.path(h.ino).cloned() else {
            return;
        };
        if matches!(
            t.get(h.ino).and_then(|i| i.local.as_ref()),
            Some(Local::Pending)
        ) {
            self.queue_entry(&t, &path);
            t.detach(&path);
        }
    }

    /// Commit a handle's buffer if it changed since the last commit.
    fn commit(&mut self, h: &mut KeyHandle) -> Result<()> {
        if !h.dirty || h.poisoned.is_some() || h.abandoned {
            return Ok(());
        }
        h.dirty = false;
        let table = std::sync::Arc::clone(&self.table);
        let mut t = lock(&table);
        let Some(path) = t.path(h.ino).cloned() else {
            return Ok(()); // unlinked or replaced while open: the data goes nowhere
        };
        let inode = t.get_mut(h.ino);
        match inode.and_then(|i| i.local.as_mut()) {
            Some(Local::Scratch { content, mtime, .. }) => {
                content.clone_from(&h.buf);
                *mtime = SystemTime::now();
                return Ok(());
            }
            // Created and never written (`touch`), and another handle has stored the key
            // meanwhile: it exists, which is all this handle had to say.
            None if h.created && !h.modified => return Ok(()),
            _ => {}
        }
        let value = decode(&h.buf).map_err(|e| self.reject(&path, libc::EINVAL, &e.to_string()))?;
        self.apply(&mut t, &path, vec![Op::Put(path.clone(), value)])?;
        h.committed = true;
        self.hidden.remove(&path);
        if let Some(inode) = t.get_mut(h.ino) {
            inode.served = None;
            if inode.local == Some(Local::Pending) {
                inode.local = None;
            }
        }
        let _ = self.jobs.send(Job::Inode(h.ino));
        Ok(())
    }

    /// The mount is going away: commit what open handles hold and carry out deferred
    /// deletions (their scratch files vanish with the mount).
    pub fn destroy(&mut self) {
        let fhs: Vec<u64> = self.handles.keys().copied().collect();
        for fh in fhs {
            let _ = self.release(fh);
        }
        for path in std::mem::take(&mut self.hidden) {
            self.delete_deferred(&path);
        }
    }
}

fn patch(buf: &mut Vec<u8>, start: usize, data: &[u8]) {
    let end = start + data.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[start..end].copy_from_slice(data);
}
