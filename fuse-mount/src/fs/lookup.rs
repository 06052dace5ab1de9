//! What the kernel sees of paths: lookups, attributes, directory listings (the store's
//! children merged with local files, hidden keys left out, `/.herd` added at the root) and the
//! `user.herd.error` extended attribute.

use std::sync::Arc;
use std::time::SystemTime;

use super::{child, control, lock, DirEntry, Errno, Fs, Handle, Opened, Result, Stat, ERROR_XATTR};
use crate::table::{Ino, Kind, ROOT};

impl Fs {
    /// `lookup`: the child `name` of directory `parent`; takes a lookup on its inode.
    pub fn lookup(&mut self, parent: Ino, name: &str) -> Result<Stat> {
        let table = Arc::clone(&self.table);
        let mut t = lock(&table);
        let path = child(t.path(parent).ok_or(Errno(libc::ENOENT))?, name);
        let found = self.resolve(&t, &path)?.ok_or(Errno(libc::ENOENT))?;
        let ino = t.intern(&path, found.kind());
        self.held(&mut t, ino, &path);
        Ok(self.stat(&t, ino, &found))
    }

    /// `forget`: the kernel dropped `n` lookups of `ino`.
    pub fn forget(&mut self, ino: Ino, n: u64) {
        lock(&self.table).forget(ino, n);
    }

    /// `getattr`.
    pub fn getattr(&mut self, ino: Ino) -> Result<Stat> {
        let table = Arc::clone(&self.table);
        let t = lock(&table);
        let inode = t.get(ino).ok_or(Errno(libc::ENOENT))?;
        let Some(path) = inode.path.clone() else {
            // Unlinked or replaced but still open: what the open handles hold.
            let mut stat = Stat {
                ino,
                kind: inode.kind,
                size: self.dirty_len(ino).unwrap_or(0) as u64,
                mtime: SystemTime::now(),
                perm: 0o644,
                nlink: 0,
                volatile: false,
            };
            if inode.kind == Kind::Dir {
                stat.perm = 0o755;
            }
            return Ok(stat);
        };
        let found = self.resolve(&t, &path)?.ok_or(Errno(libc::ENOENT))?;
        if found.kind() != inode.kind {
            // The path changed kind under this inode: make the kernel look it up again.
            self.queue_entry(&t, &path);
            return Err(Errno(libc::ENOENT));
        }
        Ok(self.stat(&t, ino, &found))
    }

    /// `opendir`: a snapshot of the directory's entries.
    pub fn opendir(&mut self, ino: Ino) -> Result<Opened> {
        let table = Arc::clone(&self.table);
        let mut t = lock(&table);
        let path = self.dir_path(&t, ino)?;
        let parent = match path.split_last() {
            Some((_, parent)) => t.ino(parent).unwrap_or(ROOT),
            None => ROOT,
        };
        let mut entries = vec![
            DirEntry {
                ino,
                kind: Kind::Dir,
                name: ".".to_owned(),
            },
            DirEntry {
                ino: parent,
                kind: Kind::Dir,
                name: "..".to_owned(),
            },
        ];
        let names = match control::Node::at(&path) {
            Some(node) => node.children(),
            None => self.children(&t, &path)?,
        };
        for (name, kind) in names {
            let ino = t.intern(&child(&path, &name), kind);
            entries.push(DirEntry { ino, kind, name });
        }
        Ok(Opened {
            fh: self.add_handle(Handle::Dir(entries)),
            flags: 0,
        })
    }

    /// `readdir`: the entries from `offset` on; entry `i` has offset `i + 1`.
    pub fn readdir(&self, fh: u64, offset: usize) -> Result<&[DirEntry]> {
        match self.handles.get(&fh) {
            Some(Handle::Dir(entries)) => Ok(entries.get(offset..).unwrap_or(&[])),
            _ => Err(Errno(libc::EBADF)),
        }
    }

    /// `releasedir`.
    pub fn releasedir(&mut self, fh: u64) {
        self.handles.remove(&fh);
    }

    /// `getxattr`: only `user.herd.error`, the path's last error.
    pub fn getxattr(&self, ino: Ino, name: &str) -> Result<Vec<u8>> {
        let t = lock(&self.table);
        let path = t.path(ino).ok_or(Errno(libc::ENODATA))?;
        match self.rejections.last(path) {
            Some(error) if name == ERROR_XATTR => Ok(error.as_bytes().to_vec()),
            _ => Err(Errno(libc::ENODATA)),
        }
    }

    /// `listxattr`: NUL-terminated names.
    pub fn listxattr(&self, ino: Ino) -> Vec<u8> {
        let t = lock(&self.table);
        match t.path(ino) {
            Some(path) if self.rejections.last(path).is_some() => {
                format!("{ERROR_XATTR}\0").into_bytes()
            }
            _ => Vec::new(),
        }
    }
}
