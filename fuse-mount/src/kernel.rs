//! The FUSE adapter: `fuser`'s `Filesystem` over [`Fs`]. Each callback converts its arguments,
//! calls one `Fs` method and replies exactly once; nothing else happens here. Requests of the
//! replaying thread (`Fs::is_echo`) go to the `echo_*` methods, which change nothing.

use std::ffi::OsStr;
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow,
};

use crate::fs::{Errno, Fs, Opened, Stat};
use crate::table::Kind;

/// The filesystem as `fuser` drives it.
pub(crate) struct Adapter {
    /// The logic.
    fs: Fs,
    /// How long the kernel may cache entries and attributes (changes are pushed).
    ttl: Duration,
    /// A read-only mount: files are never opened through the daemon (see
    /// `MountOptions::read_only`), so reads come without a handle, and every change but the
    /// replay's fails with `EROFS` here (the mount itself is not `ro`, or the replay could not
    /// raise inotify events on it).
    read_only: bool,
}

impl Adapter {
    pub fn new(fs: Fs, ttl: Duration, read_only: bool) -> Self {
        Adapter { fs, ttl, read_only }
    }

    fn attr(&self, s: &Stat) -> (Duration, FileAttr) {
        let (uid, gid) = self.fs.owner();
        let attr = FileAttr {
            ino: s.ino,
            size: s.size,
            blocks: s.size.div_ceil(512),
            atime: s.mtime,
            mtime: s.mtime,
            ctime: s.mtime,
            crtime: s.mtime,
            kind: file_type(s.kind),
            // A read-only mount shows no write permission, except to the replay and on
            // `/.herd` (their answers are the volatile ones: see `fs/echo.rs`).
            perm: if self.read_only && !s.volatile {
                s.perm & !0o222
            } else {
                s.perm
            },
            nlink: s.nlink,
            uid,
            gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        };
        (if s.volatile { Duration::ZERO } else { self.ttl }, attr)
    }

    fn entry(&self, result: Result<Stat, Errno>, reply: ReplyEntry) {
        match result {
            Ok(stat) => {
                let (ttl, attr) = self.attr(&stat);
                reply.entry(&ttl, &attr, 0);
            }
            Err(Errno(e)) => reply.error(e),
        }
    }

    /// True if `req` would change a read-only mount (the replay may: it changes nothing).
    fn refused(&self, req: &Request<'_>) -> bool {
        self.read_only && !self.fs.is_echo(req.pid())
    }

    /// The errno for a change the replay never makes (rename, mknod): `EPERM` if the
    /// replaying thread asks, `EROFS` on a read-only mount; `None` to go on.
    fn never_echoed(&self, req: &Request<'_>) -> Option<i32> {
        if self.fs.is_echo(req.pid()) {
            Some(libc::EPERM)
        } else if self.read_only {
            Some(libc::EROFS)
        } else {
            None
        }
    }

    fn reply_attr(&self, result: Result<Stat, Errno>, reply: ReplyAttr) {
        match result {
            Ok(stat) => {
                let (ttl, attr) = self.attr(&stat);
                reply.attr(&ttl, &attr);
            }
            Err(Errno(e)) => reply.error(e),
        }
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
    }
}

/// Longest file name, in bytes: a store path segment's limit (and `statfs`'s `namelen`).
const NAME_MAX: usize = 255;

/// A name as UTF-8 (store keys are text), at most [`NAME_MAX`] bytes.
fn utf8(name: &OsStr) -> Result<&str, Errno> {
    if name.len() > NAME_MAX {
        return Err(Errno(libc::ENAMETOOLONG));
    }
    name.to_str().ok_or(Errno(libc::EINVAL))
}

fn empty(result: Result<(), Errno>, reply: ReplyEmpty) {
    match result {
        Ok(()) => reply.ok(),
        Err(Errno(e)) => reply.error(e),
    }
}

fn opened(result: Result<Opened, Errno>, reply: ReplyOpen) {
    match result {
        Ok(o) => reply.opened(o.fh, o.flags),
        Err(Errno(e)) => reply.error(e),
    }
}

impl Filesystem for Adapter {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        // O_TRUNC arrives with `open` instead of as a separate truncating `setattr`. Not on a
        // read-only mount: there the kernel does not ask the daemon to open, and would truncate
        // its cached size to 0 for an `O_TRUNC` open before any write is refused, while a
        // truncating `setattr` is refused at once (`EROFS`).
        if !self.read_only {
            if let Err(missing) = config.add_capabilities(fuser::consts::FUSE_ATOMIC_O_TRUNC) {
                tracing::debug!("kernel lacks capabilities {missing:#x}");
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        self.fs.destroy();
    }

    fn lookup(&mut self, req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let result = match name.to_str() {
            _ if name.len() > NAME_MAX => Err(Errno(libc::ENAMETOOLONG)),
            Some(name) if self.fs.is_echo(req.pid()) => self.fs.echo_lookup(parent, name),
            Some(name) => self.fs.lookup(parent, name),
            None => Err(Errno(libc::ENOENT)),
        };
        self.entry(result, reply);
    }

    fn forget(&mut self, _req: &Request<'_>, ino: u64, nlookup: u64) {
        self.fs.forget(ino, nlookup);
    }

    fn getattr(&mut self, req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        let result = if self.fs.is_echo(req.pid()) {
            self.fs.echo_getattr(ino)
        } else {
            self.fs.getattr(ino)
        };
        self.reply_attr(result, reply);
    }

    fn setattr(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        if self.refused(req) {
            return reply.error(libc::EROFS);
        }
        let result = if self.fs.is_echo(req.pid()) {
            self.fs.echo_getattr(ino)
        } else {
            self.fs.setattr(ino, size, fh)
        };
        self.reply_attr(result, reply);
    }

    fn mknod(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if let Some(errno) = self.never_echoed(req) {
            return reply.error(errno);
        }
        let result = utf8(name).and_then(|name| self.fs.mknod(parent, name, mode));
        self.entry(result, reply);
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        if self.refused(req) {
            return reply.error(libc::EROFS);
        }
        let echo = self.fs.is_echo(req.pid());
        let result = utf8(name).and_then(|name| match echo {
            true => self.fs.echo_mkdir(parent, name),
            false => self.fs.mkdir(parent, name),
        });
        self.entry(result, reply);
    }

    fn unlink(&mut self, req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        if self.refused(req) {
            return reply.error(libc::EROFS);
        }
        let echo = self.fs.is_echo(req.pid());
        let result = utf8(name).and_then(|name| match echo {
            true => self.fs.echo_remove(parent, name),
            false => self.fs.unlink(parent, name),
        });
        empty(result, reply);
    }

    fn rmdir(&mut self, req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        if self.refused(req) {
            return reply.error(libc::EROFS);
        }
        let echo = self.fs.is_echo(req.pid());
        let result = utf8(name).and_then(|name| match echo {
            true => self.fs.echo_remove(parent, name),
            false => self.fs.rmdir(parent, name),
        });
        empty(result, reply);
    }

    fn rename(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        if let Some(errno) = self.never_echoed(req) {
            return reply.error(errno);
        }
        let result = utf8(name).and_then(|name| {
            let newname = utf8(newname)?;
            self.fs.rename(parent, name, newparent, newname, flags)
        });
        empty(result, reply);
    }

    fn open(&mut self, req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if self.read_only {
            // The kernel stops sending `open` (and `release`) for files on this mount and keeps
            // their page cache across opens; invalidations still drop it when a key changes.
            // Writes through such an open file are refused by `write` and `setattr`.
            return reply.error(libc::ENOSYS);
        }
        if self.fs.is_echo(req.pid()) {
            return opened(self.fs.echo_open(ino), reply);
        }
        opened(self.fs.open(ino, flags), reply);
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let offset = u64::try_from(offset).unwrap_or(0);
        let data = if self.read_only {
            self.fs.read_unopened(ino, offset, size)
        } else {
            self.fs.read(fh, offset, size)
        };
        match data {
            Ok(data) => reply.data(&data),
            Err(Errno(e)) => reply.error(e),
        }
    }

    fn write(
        &mut self,
        req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        if self.refused(req) {
            return reply.error(libc::EROFS);
        }
        let offset = u64::try_from(offset).unwrap_or(0);
        match self.fs.write(fh, offset, data) {
            Ok(written) => reply.written(written),
            Err(Errno(e)) => reply.error(e),
        }
    }

    fn flush(&mut self, req: &Request<'_>, _ino: u64, fh: u64, _lock: u64, reply: ReplyEmpty) {
        if self.read_only {
            // Nothing to commit on a read-only mount; the kernel stops sending `flush`.
            return reply.error(libc::ENOSYS);
        }
        empty(self.fs.flush(fh, || crate::sys::killed(req.pid())), reply);
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        empty(self.fs.release(fh), reply);
    }

    fn fsync(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _data: bool, reply: ReplyEmpty) {
        empty(self.fs.fsync(fh), reply);
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        opened(self.fs.opendir(ino), reply);
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let start = usize::try_from(offset).unwrap_or(0);
        match self.fs.readdir(fh, start) {
            Ok(entries) => {
                for (i, e) in entries.iter().enumerate() {
                    let next = i64::try_from(start + i + 1).unwrap_or(i64::MAX);
                    if reply.add(e.ino, next, file_type(e.kind), &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(Errno(e)) => reply.error(e),
        }
    }

    fn releasedir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh);
        reply.ok();
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _data: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        // Nothing here is backed by blocks: report a roomy, empty filesystem.
        const BLOCKS: u64 = 1 << 20;
        const FILES: u64 = 1 << 20;
        reply.statfs(
            BLOCKS,
            BLOCKS,
            BLOCKS,
            FILES,
            FILES,
            4096,
            NAME_MAX as u32,
            4096,
        );
    }

    fn setxattr(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(libc::ENOTSUP);
    }

    fn getxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        let result = match name.to_str() {
            Some(name) => self.fs.getxattr(ino, name),
            None => Err(Errno(libc::ENODATA)),
        };
        match result {
            Ok(value) => xattr(&value, size, reply),
            Err(Errno(e)) => reply.error(e),
        }
    }

    fn listxattr(&mut self, _req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        xattr(&self.fs.listxattr(ino), size, reply);
    }

    fn removexattr(&mut self, _req: &Request<'_>, _ino: u64, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(libc::ENOTSUP);
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if self.refused(req) {
            return reply.error(libc::EROFS);
        }
        let echo = self.fs.is_echo(req.pid());
        let result = utf8(name).and_then(|name| match echo {
            true => self.fs.echo_create(parent, name),
            false => self.fs.create(parent, name, flags),
        });
        match result {
            Ok((stat, opened)) => {
                let (ttl, attr) = self.attr(&stat);
                reply.created(&ttl, &attr, 0, opened.fh, opened.flags);
            }
            Err(Errno(e)) => reply.error(e),
        }
    }
}

/// Reply with an xattr value or list: its size when asked for 0 bytes, `ERANGE` if too small.
fn xattr(value: &[u8], size: u32, reply: ReplyXattr) {
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    if size == 0 {
        reply.size(len);
    } else if len > size {
        reply.error(libc::ERANGE);
    } else {
        reply.data(value);
    }
}
