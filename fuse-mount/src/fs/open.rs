//! Opening files: the kinds of handle, `open` (a key's content is fixed in the handle at
//! open, so one open sees one value), `create` (new files stay pending, scratch names local),
//! `mknod` and `read`.

use std::time::SystemTime;

use serde_json::Value;

use super::{child, control, fingerprint, lock, Errno, Found, Fs, Opened, Result, Stat};
use super::{FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE, FOPEN_NOFLUSH};
use crate::backend::{Node, Op};
use crate::content::encode;
use crate::scratch::is_scratch;
use crate::table::{Ino, Kind, Local};

/// Local scratch files larger than this are refused (`EFBIG`): they live in memory.
pub(super) const SCRATCH_MAX: usize = 64 << 20;

/// An open file or directory.
#[derive(Debug)]
pub(crate) enum Handle {
    /// A key of the store (or a pending creation).
    Key(KeyHandle),
    /// A local scratch file: reads and writes go straight to its content in the table.
    Scratch { ino: Ino, append: bool },
    /// Generated content, fixed at open (`/.herd` files).
    Snapshot(Vec<u8>),
    /// A directory listing, fixed at open.
    Dir(Vec<super::DirEntry>),
    /// Opened by the replaying thread: holds nothing and commits nothing.
    Echo,
}

/// An open key.
#[derive(Debug)]
pub(crate) struct KeyHandle {
    pub(super) ino: Ino,
    /// The content as this handle sees it: fixed at open, patched by writes.
    pub(super) buf: Vec<u8>,
    /// Opened for writing.
    pub(super) writable: bool,
    /// Opened with `O_APPEND`: every write goes to the end.
    pub(super) append: bool,
    /// Changed since the last commit (by a write, a truncation, or being new).
    pub(super) dirty: bool,
    /// Changed by the process itself (`write`, `ftruncate`), not only by `O_TRUNC` or
    /// creation: only such a handle commits at `flush`. Bash opens, `dup2`s and closes the
    /// first descriptor before `echo` writes; committing the empty content at that first
    /// close would store "" before the real value is known.
    pub(super) modified: bool,
    /// Writes so far (only the first is checked on its own).
    pub(super) writes: u64,
    /// Set when a write was refused: later writes fail the same way and nothing commits.
    pub(super) poisoned: Option<i32>,
    /// This handle created the file, which stays pending until a commit succeeds.
    pub(super) created: bool,
    /// A commit of this handle succeeded.
    pub(super) committed: bool,
    /// When this handle last wrote (orders unsaved buffers).
    pub(super) seq: u64,
    /// The last close of this handle came from a process killed by a signal, after its last
    /// write: the kernel closed its files for it, and what it wrote may be cut short, so
    /// nothing commits unless a later write (another descriptor of the same open file) says
    /// otherwise.
    pub(super) abandoned: bool,
}

impl KeyHandle {
    /// A write was refused: this handle will never commit.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    pub(super) fn new(ino: Ino, buf: Vec<u8>, writable: bool, append: bool) -> Self {
        KeyHandle {
            ino,
            buf,
            writable,
            append,
            dirty: false,
            modified: false,
            writes: 0,
            poisoned: None,
            created: false,
            committed: false,
            seq: 0,
            abandoned: false,
        }
    }
}

impl Fs {
    /// `open`: `flags` as given to `open(2)` (with `O_TRUNC`: FUSE_ATOMIC_O_TRUNC is on).
    pub fn open(&mut self, ino: Ino, flags: i32) -> Result<Opened> {
        let table = std::sync::Arc::clone(&self.table);
        let mut t = lock(&table);
        let path = t.path(ino).cloned().ok_or(Errno(libc::ENOENT))?;
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let trunc = write && flags & libc::O_TRUNC != 0;
        let append = flags & libc::O_APPEND != 0;
        let (handle, fopen) = match self.resolve(&t, &path)? {
            Some(Found::Control(node)) => {
                if write {
                    return Err(self.reject(&path, libc::EROFS, "/.herd is read-only"));
                }
                if node == control::Node::Dir {
                    return Err(Errno(libc::EISDIR));
                }
                (
                    Handle::Snapshot(self.control_content(node)),
                    FOPEN_DIRECT_IO,
                )
            }
            Some(Found::Scratch(ino)) => {
                if let (true, Some(Local::Scratch { content, mtime, .. })) =
                    (trunc, t.get_mut(ino).and_then(|i| i.local.as_mut()))
                {
                    content.clear();
                    *mtime = SystemTime::now();
                }
                (Handle::Scratch { ino, append }, 0)
            }
            Some(Found::Pending(ino)) => {
                let mut h = KeyHandle::new(ino, Vec::new(), write, append);
                h.dirty = trunc;
                (Handle::Key(h), 0)
            }
            Some(Found::Key(Node::Dir { .. })) => return Err(Errno(libc::EISDIR)),
            Some(Found::Key(Node::Leaf {
                value, read_only, ..
            })) => {
                if write && read_only {
                    if let Err(e) = self.backend.check(&path, &value) {
                        return Err(self.refused(&path, &e));
                    }
                }
                let content = encode(&value);
                let fp = fingerprint(&content);
                let mut fopen = if write { 0 } else { FOPEN_NOFLUSH };
                if let Some(inode) = t.get_mut(ino) {
                    if !trunc && inode.served == Some(fp) {
                        fopen |= FOPEN_KEEP_CACHE;
                    }
                    inode.served = (!trunc).then_some(fp);
                }
                let buf = if trunc { Vec::new() } else { content };
                let mut h = KeyHandle::new(ino, buf, write, append);
                h.dirty = trunc;
                (Handle::Key(h), fopen)
            }
            None if write => {
                // Gone from the store while the kernel still knew it: writing re-creates it.
                if let Some(inode) = t.get_mut(ino) {
                    inode.local = Some(Local::Pending);
                }
                let mut h = KeyHandle::new(ino, Vec::new(), true, append);
                (h.created, h.dirty) = (true, true);
                (Handle::Key(h), 0)
            }
            None => return Err(Errno(libc::ENOENT)),
        };
        drop(t);
        Ok(Opened {
            fh: self.add_handle(handle),
            flags: fopen,
        })
    }

    /// `create`: a new file `name` in `parent`, opened with `flags`. A scratch name becomes a
    /// local file; any other name stays pending (not in the store) until its handle commits.
    pub fn create(&mut self, parent: Ino, name: &str, flags: i32) -> Result<(Stat, Opened)> {
        let table = std::sync::Arc::clone(&self.table);
        let mut t = lock(&table);
        let dir = self.dir_path(&t, parent)?;
        let path = child(&dir, name);
        if control::is_control(&path) {
            return Err(self.reject(&path, libc::EROFS, "/.herd is read-only"));
        }
        if let Some(found) = self.resolve(&t, &path)? {
            if flags & libc::O_EXCL != 0 {
                return Err(Errno(libc::EEXIST));
            }
            let ino = t.intern(&path, found.kind());
            self.held(&mut t, ino, &path);
            drop(t);
            let opened = self.open(ino, flags)?;
            return Ok((self.getattr(ino)?, opened));
        }
        let append = flags & libc::O_APPEND != 0;
        let ino = t.intern(&path, Kind::File);
        t.looked_up(ino);
        let handle = if is_scratch(name) {
            set_local(&mut t, ino, new_scratch(Vec::new(), None));
            Handle::Scratch { ino, append }
        } else {
            set_local(&mut t, ino, Local::Pending);
            let mut h = KeyHandle::new(ino, Vec::new(), true, append);
            (h.created, h.dirty) = (true, true);
            Handle::Key(h)
        };
        drop(t);
        let fh = self.add_handle(handle);
        let stat = self.getattr(ino)?;
        Ok((stat, Opened { fh, flags: 0 }))
    }

    /// `mknod`: only regular files; stored at once as the empty string (scratch names stay
    /// local).
    pub fn mknod(&mut self, parent: Ino, name: &str, mode: u32) -> Result<Stat> {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Errno(libc::EPERM));
        }
        let table = std::sync::Arc::clone(&self.table);
        let mut t = lock(&table);
        let path = child(&self.dir_path(&t, parent)?, name);
        if control::is_control(&path) {
            return Err(self.reject(&path, libc::EROFS, "/.herd is read-only"));
        }
        if self.resolve(&t, &path)?.is_some() {
            return Err(Errno(libc::EEXIST));
        }
        if is_scratch(name) {
            let ino = t.intern(&path, Kind::File);
            set_local(&mut t, ino, new_scratch(Vec::new(), None));
        } else {
            self.apply(
                &mut t,
                &path,
                vec![Op::Put(path.clone(), Value::String(String::new()))],
            )?;
            self.hidden.remove(&path);
        }
        drop(t);
        self.lookup(parent, name)
    }

    /// `read` of a file the kernel did not open through us (read-only mounts): its current
    /// content.
    pub fn read_unopened(&mut self, ino: Ino, offset: u64, size: u32) -> Result<Vec<u8>> {
        let table = std::sync::Arc::clone(&self.table);
        let t = lock(&table);
        let path = t.path(ino).cloned().ok_or(Errno(libc::ENOENT))?;
        let content = match self.resolve(&t, &path)? {
            Some(Found::Control(node)) => self.control_content(node),
            Some(Found::Key(Node::Leaf { value, .. })) => encode(&value),
            Some(Found::Key(Node::Dir { .. })) => return Err(Errno(libc::EISDIR)),
            Some(Found::Scratch(_) | Found::Pending(_)) => Vec::new(),
            None => return Err(Errno(libc::ENOENT)),
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(content.len());
        let end = start.saturating_add(size as usize).min(content.len());
        Ok(content[start..end].to_vec())
    }

    /// `read` from an open file.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let slice = |bytes: &[u8]| {
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let end = start.saturating_add(size as usize).min(bytes.len());
            bytes[start..end].to_vec()
        };
        match self.handles.get(&fh) {
            Some(Handle::Key(k)) => Ok(slice(&k.buf)),
            Some(Handle::Snapshot(bytes)) => Ok(slice(bytes)),
            Some(Handle::Scratch { ino, .. }) => {
                let t = lock(&self.table);
                match t.get(*ino).and_then(|i| i.local.as_ref()) {
                    Some(Local::Scratch { content, .. }) => Ok(slice(content)),
                    _ => Ok(Vec::new()),
                }
            }
            Some(Handle::Dir(_)) => Err(Errno(libc::EISDIR)),
            Some(Handle::Echo) => Ok(Vec::new()),
            None => Err(Errno(libc::EBADF)),
        }
    }
}

pub(super) fn new_scratch(content: Vec<u8>, origin: Option<Vec<String>>) -> Local {
    Local::Scratch {
        content,
        mtime: SystemTime::now(),
        origin,
    }
}

pub(super) fn set_local(t: &mut crate::table::Table, ino: Ino, local: Local) {
    if let Some(inode) = t.get_mut(ino) {
        inode.local = Some(local);
    }
}
