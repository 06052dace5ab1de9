//! The filesystem's logic, free of FUSE types: every operation is a method returning
//! `Result<T, Errno>` that the kernel adapter calls once per request. It owns open handles, the
//! deferred deletions and the rejection record, and shares the inode table with the
//! invalidation thread.
//!
//! Invariant: it never talks to the kernel; cache invalidations it needs are queued as
//! [`Job`]s for the invalidation thread, so no request handler waits on the kernel.
//!
//! Children: `lookup` (names, attributes, listings, xattrs), `open` (handles, open, create,
//! read), `write` (the write path and commits), `namespace` (mkdir, unlink, rmdir, rename),
//! `control` (the synthesized `/.herd` directory), `echo` (the requests of the replaying
//! thread, answered without changing anything).

mod control;
mod echo;
mod lookup;
mod namespace;
mod open;
#[cfg(test)]
mod tests;
mod write;

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::backend::{self, Backend, Node};
use crate::content::encode;
use crate::invalidation::Job;
use crate::rejections::Rejections;
use crate::replay::Echo;
use crate::table::{Ino, Kind, Listing, Local, Seen, Table, ROOT};

pub(crate) use control::is_control as control_path;
pub(crate) use open::Handle;

/// An errno to answer a request with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Errno(pub i32);

/// What every operation returns.
pub(crate) type Result<T> = std::result::Result<T, Errno>;

/// `FOPEN_KEEP_CACHE`: the kernel may keep the pages it cached for this file.
pub(crate) const FOPEN_KEEP_CACHE: u32 = 1 << 1;
/// `FOPEN_DIRECT_IO`: reads bypass the page cache (for generated content).
pub(crate) const FOPEN_DIRECT_IO: u32 = 1 << 0;
/// `FOPEN_NOFLUSH`: the kernel need not send `flush` when a reader closes.
pub(crate) const FOPEN_NOFLUSH: u32 = 1 << 5;

/// The name of the extended attribute holding a path's last error.
pub(crate) const ERROR_XATTR: &str = "user.herd.error";

/// The attributes of a file, as the adapter turns them into a `stat`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stat {
    pub ino: Ino,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    pub nlink: u32,
    /// Generated content that changes without notice: not to be cached by the kernel.
    pub volatile: bool,
}

/// An opened file or directory: the handle number and the `FOPEN_*` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Opened {
    pub fh: u64,
    pub flags: u32,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DirEntry {
    pub ino: Ino,
    pub kind: Kind,
    pub name: String,
}

/// What is at a path, from the mount's point of view.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Found {
    /// A file or directory of `/.herd`.
    Control(control::Node),
    /// A local scratch file.
    Scratch(Ino),
    /// A created file not yet committed.
    Pending(Ino),
    /// What the store holds.
    Key(Node),
}

impl Found {
    fn kind(&self) -> Kind {
        match self {
            Found::Control(node) => node.kind(),
            Found::Scratch(_) | Found::Pending(_) => Kind::File,
            Found::Key(Node::Leaf { .. }) => Kind::File,
            Found::Key(Node::Dir { .. }) => Kind::Dir,
        }
    }
}

/// The filesystem.
pub(crate) struct Fs {
    /// The store.
    backend: Arc<dyn Backend>,
    /// Inodes, shared with the invalidation thread.
    table: Arc<Mutex<Table>>,
    /// Work for the invalidation thread.
    jobs: Sender<Job>,
    /// The replaying thread's act in progress.
    echo: Arc<Echo>,
    /// Open files and directories by handle number.
    handles: HashMap<u64, Handle>,
    /// The next handle number (never reused).
    next_fh: u64,
    /// Orders writes across handles, so `stat` shows the newest unsaved buffer.
    write_seq: u64,
    /// Keys renamed to a scratch name whose deletion is deferred; they look absent.
    hidden: BTreeSet<Vec<String>>,
    /// Rejected operations, for `/.herd/errors` and `user.herd.error`.
    rejections: Rejections,
    /// Owner shown for every file (the mounting process's).
    uid: u32,
    gid: u32,
}

/// Lock the table, surviving a panic in another holder (the table stays consistent per call).
fn lock(table: &Mutex<Table>) -> MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

fn child(parent: &[String], name: &str) -> Vec<String> {
    let mut path = parent.to_vec();
    path.push(name.to_owned());
    path
}

fn millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A fingerprint of file content.
pub(crate) fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

impl Fs {
    /// A filesystem over `backend`; files belong to `uid`/`gid`.
    pub fn new(
        backend: Arc<dyn Backend>,
        table: Arc<Mutex<Table>>,
        jobs: Sender<Job>,
        echo: Arc<Echo>,
        uid: u32,
        gid: u32,
    ) -> Self {
        let fs = Fs {
            backend,
            table,
            jobs,
            echo,
            handles: HashMap::new(),
            next_fh: 1,
            write_seq: 0,
            hidden: BTreeSet::new(),
            rejections: Rejections::default(),
            uid,
            gid,
        };
        let root = fs.store_listing(&[]);
        lock(&fs.table).set_listing(ROOT, root);
        fs
    }

    /// What the store holds in directory `path`, as its first listing (contents unknown).
    fn store_listing(&self, path: &[String]) -> Listing {
        let Ok(children) = self.backend.list(path) else {
            return Listing::new();
        };
        children
            .into_iter()
            .filter(|c| {
                let control = path.is_empty() && c.name == control::DIR;
                !control && !self.hidden.contains(&child(path, &c.name))
            })
            .map(|c| {
                let kind = if c.is_dir { Kind::Dir } else { Kind::File };
                (
                    c.name,
                    Seen {
                        kind,
                        content: None,
                    },
                )
            })
            .collect()
    }

    /// The kernel took a lookup on `ino` at `path`: a directory it did not hold gets its
    /// first listing.
    fn held(&self, t: &mut Table, ino: Ino, path: &[String]) {
        t.looked_up(ino);
        if t.get(ino).is_some_and(|i| i.kind == Kind::Dir) && !t.has_listing(ino) {
            t.set_listing(ino, self.store_listing(path));
        }
    }

    /// The owner every file shows.
    pub fn owner(&self) -> (u32, u32) {
        (self.uid, self.gid)
    }

    /// Record a rejection (log, `/.herd/errors`, `user.herd.error`) and return its errno.
    fn reject(&mut self, path: &[String], errno: i32, message: &str) -> Errno {
        self.rejections
            .record(SystemTime::now(), path, errno, message);
        Errno(errno)
    }

    /// [`Fs::reject`] for an error of the store.
    fn refused(&mut self, path: &[String], e: &backend::Error) -> Errno {
        self.reject(path, e.kind.errno(), &e.message)
    }

    /// Apply `ops` to the store; a refusal is recorded against `path`. A put of the value the
    /// key already holds is left out, and a change left with nothing is not sent: tools that
    /// rewrite unchanged files (configuration management, `rsync`, editors saving unchanged
    /// buffers) then make no new version, no event and no replication.
    ///
    /// The caller holds the table lock (`t`) throughout, so the listings say what the local
    /// process showed watchers before the replay of this change looks at them (`replay`).
    fn apply(&mut self, t: &mut Table, path: &[String], ops: Vec<backend::Op>) -> Result<()> {
        let ops: Vec<backend::Op> = ops.into_iter().filter(|op| !self.holds(op)).collect();
        if ops.is_empty() {
            self.rejections.clear(path);
            return Ok(());
        }
        let shown: Vec<(Vec<String>, Option<Seen>)> =
            ops.iter().filter_map(|op| shown(t, op)).collect();
        match self.backend.apply(ops) {
            Ok(()) => {
                for (path, seen) in shown {
                    t.saw(&path, seen);
                }
                self.rejections.clear(path);
                Ok(())
            }
            Err(e) => Err(self.refused(path, &e)),
        }
    }

    /// A local process renamed a directory holding `value` to `path` (its inodes, and the
    /// listings the kernel holds, moved with it): those listings now show what the directory
    /// holds, contents included, so the replay of the change announces nothing the process
    /// did not do itself.
    fn saw_object(&self, t: &mut Table, path: &[String], value: &serde_json::Value) {
        for dir in t.listed_subtree(path) {
            let node = dir[path.len()..]
                .iter()
                .try_fold(value, |node, name| node.get(name));
            let Some(object) = node.and_then(|node| node.as_object()) else {
                continue;
            };
            let listing: Listing = object
                .iter()
                .filter(|(name, _)| !self.hidden.contains(&child(&dir, name)))
                .map(|(name, v)| {
                    let seen = match v {
                        serde_json::Value::Object(_) => Seen {
                            kind: Kind::Dir,
                            content: None,
                        },
                        leaf => Seen {
                            kind: Kind::File,
                            content: Some(fingerprint(&encode(leaf))),
                        },
                    };
                    (name.clone(), seen)
                })
                .collect();
            if let Some(ino) = t.ino(&dir) {
                t.set_listing(ino, listing);
            }
        }
    }

    /// True if `op` puts the value its key already holds (JSON equality: `8080` and `8080.0`
    /// differ, as they do in the store).
    fn holds(&self, op: &backend::Op) -> bool {
        match op {
            backend::Op::Put(path, value) => {
                matches!(self.backend.read(path), Ok(Some(current)) if &current == value)
            }
            backend::Op::Delete(_) => false,
        }
    }

    fn add_handle(&mut self, handle: Handle) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, handle);
        fh
    }

    /// What is at `path` (`None`: nothing visible).
    fn resolve(&self, t: &Table, path: &[String]) -> Result<Option<Found>> {
        if control::is_control(path) {
            return Ok(control::Node::at(path).map(Found::Control));
        }
        if let Some(inode) = t.ino(path).and_then(|ino| Some((ino, t.get(ino)?))) {
            match inode.1.local {
                Some(Local::Pending) => return Ok(Some(Found::Pending(inode.0))),
                Some(Local::Scratch { .. }) => return Ok(Some(Found::Scratch(inode.0))),
                None => {}
            }
        }
        if self.hidden.contains(path) {
            return Ok(None);
        }
        match self.backend.get(path) {
            Ok(Some(node)) => Ok(Some(Found::Key(node))),
            Ok(None) if path.is_empty() => Ok(Some(Found::Key(Node::Dir {
                mtime_ms: 0,
                read_only: false,
            }))),
            Ok(None) => Ok(None),
            Err(e) if e.kind == backend::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Errno(e.kind.errno())),
        }
    }

    /// The path of an attached inode, and the path's directory contents must be a directory.
    fn dir_path(&self, t: &Table, ino: Ino) -> Result<Vec<String>> {
        let path = t.path(ino).cloned().ok_or(Errno(libc::ENOENT))?;
        match self.resolve(t, &path)? {
            Some(found) if found.kind() == Kind::Dir => Ok(path),
            Some(_) => Err(Errno(libc::ENOTDIR)),
            None => Err(Errno(libc::ENOENT)),
        }
    }

    /// The length of the newest unsaved buffer open on `ino`.
    fn dirty_len(&self, ino: Ino) -> Option<usize> {
        self.handles
            .values()
            .filter_map(|h| match h {
                Handle::Key(k) if k.ino == ino && k.dirty && !k.is_poisoned() => Some(k),
                _ => None,
            })
            .max_by_key(|k| k.seq)
            .map(|k| k.buf.len())
    }

    fn stat(&self, t: &Table, ino: Ino, found: &Found) -> Stat {
        let file = |size: usize, mtime, perm| Stat {
            ino,
            kind: Kind::File,
            size: size as u64,
            mtime,
            perm,
            nlink: 1,
            volatile: false,
        };
        let now = SystemTime::now();
        match found {
            Found::Control(node) => self.control_stat(ino, *node),
            Found::Scratch(_) => match t.get(ino).and_then(|i| i.local.as_ref()) {
                Some(Local::Scratch { content, mtime, .. }) => file(content.len(), *mtime, 0o644),
                _ => file(0, now, 0o644),
            },
            Found::Pending(_) => file(self.dirty_len(ino).unwrap_or(0), now, 0o644),
            Found::Key(Node::Leaf {
                value,
                mtime_ms,
                read_only,
            }) => {
                let perm = if *read_only { 0o444 } else { 0o644 };
                match self.dirty_len(ino) {
                    Some(len) => file(len, now, perm),
                    None => file(encode(value).len(), millis(*mtime_ms), perm),
                }
            }
            // A directory's link count is 1, "not counted" (as btrfs reports): counting its
            // subdirectories would cost a listing at every `stat`.
            Found::Key(Node::Dir {
                mtime_ms,
                read_only,
            }) => Stat {
                ino,
                kind: Kind::Dir,
                size: 0,
                mtime: millis(*mtime_ms),
                perm: if *read_only { 0o555 } else { 0o755 },
                nlink: 1,
                volatile: false,
            },
        }
    }

    /// Ask the invalidation thread to drop the kernel's entry for `path`.
    fn queue_entry(&self, t: &Table, path: &[String]) {
        if let Some((name, parent)) = path.split_last() {
            if let Some(parent) = t.ino(parent) {
                let _ = self.jobs.send(Job::Entry {
                    parent,
                    name: name.clone(),
                });
            }
        }
    }

    /// The names in directory `path` and their kinds: the store's (without `/.herd` at the root
    /// and without hidden keys), then local files, then `/.herd` itself.
    fn children(&self, t: &Table, path: &[String]) -> Result<BTreeMap<String, Kind>> {
        let mut names = BTreeMap::new();
        let listed = match self.backend.list(path) {
            Ok(listed) => listed,
            Err(e) if e.kind == backend::ErrorKind::NotFound && path.is_empty() => Vec::new(),
            Err(e) => return Err(Errno(e.kind.errno())),
        };
        for c in listed {
            if (path.is_empty() && c.name == control::DIR)
                || self.hidden.contains(&child(path, &c.name))
            {
                continue;
            }
            names.insert(c.name, if c.is_dir { Kind::Dir } else { Kind::File });
        }
        for (name, _) in t.local_children(path) {
            names.insert(name, Kind::File);
        }
        if path.is_empty() {
            names.insert(control::DIR.to_owned(), Kind::Dir);
        }
        Ok(names)
    }
}

/// What a local process showed watchers by causing `op`: a file with this content, a
/// directory, or nothing; `None` to leave the listing as it is. An object written into a file
/// still shows a file: the replay of the change then shows it becoming a directory.
fn shown(t: &Table, op: &backend::Op) -> Option<(Vec<String>, Option<Seen>)> {
    match op {
        backend::Op::Put(path, serde_json::Value::Object(_))
            if !path
                .last()
                .is_some_and(|n| crate::documents::is_document(n)) =>
        {
            let (name, dir) = path.split_last()?;
            let listed = t.listing(dir).and_then(|l| l.get(name));
            if listed.is_some_and(|s| s.kind == Kind::File) {
                return None;
            }
            let dir = Seen {
                kind: Kind::Dir,
                content: None,
            };
            Some((path.clone(), Some(dir)))
        }
        backend::Op::Put(path, leaf) => {
            let file = Seen {
                kind: Kind::File,
                content: Some(fingerprint(&encode(leaf))),
            };
            Some((path.clone(), Some(file)))
        }
        backend::Op::Delete(path) => Some((path.clone(), None)),
    }
}
