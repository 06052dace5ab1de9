//! What the file view needs from a store. `node` implements it twice: in-process over its
//! database (`herd serve --mount DIR`) and over HTTPS with a watch-fed mirror (`herd mount DIR`).
//! This crate never depends on `node`.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

/// A path in the document as its segments: `["app", "port"]` is `/app/port`, `[]` the root.
pub type Segments = [String];

/// What is visible at a path.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// A leaf: any JSON value except an object.
    Leaf {
        value: Value,
        /// Wall-clock milliseconds of the version that wrote it (becomes `st_mtime`).
        mtime_ms: u64,
        /// The writer may not change it (derived key, token without write permission, ...).
        read_only: bool,
    },
    /// An object: a directory.
    Dir { mtime_ms: u64, read_only: bool },
}

/// One child of a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    pub name: String,
    pub is_dir: bool,
}

/// One part of an atomic change.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Replace whatever is at the path (leaf or subtree) with this value; an object becomes a
    /// directory with its members.
    Put(Vec<String>, Value),
    /// Remove the path and everything below it.
    Delete(Vec<String>),
}

/// What changed in the store, for cache invalidation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// The value at this path, or something below it, changed (put, delete, expiry).
    Path(Vec<String>),
    /// Anything may have changed (e.g. the watch stream was resumed from scratch).
    All,
}

/// Called by the backend for every change, from any thread.
pub type ChangeSink = Arc<dyn Fn(Change) + Send + Sync>;

/// Why the store refused or failed an operation; each kind maps to one errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Nothing at the path (`ENOENT`).
    NotFound,
    /// The path or value breaks the grammar, or a plugin rejected it (`EINVAL`).
    Invalid,
    /// The value is over the size limit (`EFBIG`).
    TooBig,
    /// The key is read-only: reserved or derived (`EROFS`).
    ReadOnly,
    /// The token may not do this (`EACCES`).
    Denied,
    /// A precondition or concurrent change got in the way (`EAGAIN`).
    Conflict,
    /// The node cannot be reached or is shutting down (`EIO`).
    Unavailable,
    /// The node's disk is full: nothing was written (`ENOSPC`).
    NoSpace,
}

impl ErrorKind {
    /// The errno a file operation fails with.
    pub fn errno(self) -> i32 {
        match self {
            ErrorKind::NotFound => libc::ENOENT,
            ErrorKind::Invalid => libc::EINVAL,
            ErrorKind::TooBig => libc::EFBIG,
            ErrorKind::ReadOnly => libc::EROFS,
            ErrorKind::Denied => libc::EACCES,
            ErrorKind::Conflict => libc::EAGAIN,
            ErrorKind::Unavailable => libc::EIO,
            ErrorKind::NoSpace => libc::ENOSPC,
        }
    }
}

/// A refused or failed operation, with the reason to log and show in `user.herd.error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// The store as the file view sees it. Calls block; the filesystem calls them from its own
/// threads, never from an async runtime.
pub trait Backend: Send + Sync + 'static {
    /// What is visible at the path, `None` if nothing.
    fn get(&self, path: &Segments) -> Result<Option<Node>, Error>;

    /// Whether something is at the path and what: `Some(true)` a directory, `Some(false)` a
    /// leaf, `None` nothing. As `get`, without what `get` must compute (a value, a directory's
    /// time), for backends that can tell more cheaply.
    fn is_dir(&self, path: &Segments) -> Result<Option<bool>, Error> {
        Ok(self.get(path)?.map(|node| matches!(node, Node::Dir { .. })))
    }

    /// The children of a directory, sorted by name. `NotFound` if nothing is at the path,
    /// `Invalid` if it is a leaf.
    fn list(&self, path: &Segments) -> Result<Vec<Child>, Error>;

    /// The whole subtree at the path as one JSON value (used to move directories).
    fn read(&self, path: &Segments) -> Result<Option<Value>, Error>;

    /// Would `apply(vec![Op::Put(path, value)])` be accepted now? Checks everything a write
    /// checks (grammar, size, permissions, plugins) and stores nothing.
    fn check(&self, path: &Segments, value: &Value) -> Result<(), Error>;

    /// Apply the ops as one atomic change (one version): all or nothing, durable when it
    /// returns `Ok`.
    fn apply(&self, ops: Vec<Op>) -> Result<(), Error>;

    /// Start delivering changes to `sink` until the backend is dropped.
    fn subscribe(&self, sink: ChangeSink);

    /// The node's status as JSON, shown read-only at `/.herd/status`.
    fn status(&self) -> Value;

    /// The largest value the store accepts, in bytes of JSON.
    fn max_value_bytes(&self) -> usize;
}
