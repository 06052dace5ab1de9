//! The herd file view: the store as a FUSE filesystem. Objects are directories, leaves are
//! files; reading a file shows its value, writing one stores a value (see [`content`] for the
//! exact encoding), and changes made elsewhere reach the kernel's caches as they happen.
//!
//! It knows the store only through the [`Backend`] trait, which `node` implements in-process
//! and over HTTPS; this crate never depends on `node`.
//!
//! Layout:
//! - [`backend`]: the trait the store implements, and its error kinds (each maps to one errno).
//! - [`content`]: how a value is shown as file bytes and how written bytes become a value.
//! - [`scratch`]: which new file names are scratch files (hidden files, editors' and tools'
//!   temporaries), kept in memory only ([`SCRATCH_RULES`]).
//! - `documents`: keys named `*.json` are files whatever they hold (an object included).
//! - `table`: inode numbers for paths, and the mount's local files.
//! - `fs`: the filesystem's logic without FUSE types (handles, the write path, rename and the
//!   deferred deletion of keys renamed to backups, `/.herd`), tested without a mount.
//! - `rejections`: the record behind `/.herd/errors` and the `user.herd.error` xattr.
//! - `invalidation`: the thread turning changes into kernel cache invalidations, and then
//!   into inotify events by replaying them on the mount (`replay`).
//! - `kernel`: the `fuser` adapter, one `fs` call per request.
//! - [`mount()`](mount()): mounting, stale-mount recovery, unmounting ([`Mount`]).
//! - [`mem`]: an in-memory backend for tests and `examples/memfs.rs`.
//!
//! Writes: a handle opened for writing buffers the whole content and commits it as one
//! atomic update when it is flushed (each `close`, once the process wrote or truncated
//! through it), synced or released, so nobody sees a partial value; with several writers the
//! last to close wins. A handle changed only by `O_TRUNC` or by being created commits at
//! release: bash opens, `dup2`s and closes a descriptor before `echo` writes, and that first
//! close must not store "". Writes go through (no writeback cache). The first write of a handle
//! that ends at the end of its buffer and is not a whole number of 4 KiB pages (so it is
//! likely the whole value, as with `echo` or a small `cp`) is checked with the store at once
//! and refused by `write()` itself, because bash's `echo` ignores errors seen only at
//! `close()`. A handle that was refused never commits: the old value stays.
//!
//! Scratch names (exactly these; a name already in the store stays a key): any hidden name
//! `.NAME` (rsync's `.NAME.XXXXXX`, vim's swap files, emacs' `.#NAME`, atomic-write helpers
//! given a hidden prefix), `NAME~` (backups), `4913` + 123·k for k < 10 (vim's write probe),
//! `#NAME#` (emacs), `sed` + 6 letters or digits (`sed -i`). Nothing else: not `*.tmp`, not
//! `*.bak`. A put of the value a key already holds is not sent to the store (see `Fs::apply`).
//!
//! New files stay local until their first commit (a `touch` commits the empty string), so no
//! empty key appears while `cp` or an editor is still writing. Scratch files (see
//! [`SCRATCH_RULES`]) never reach the store; renaming one onto a key stores its content
//! (`sed -i`, editors, rsync, `os.replace`). Renaming a key to a scratch name (vim's backup on save) keeps its value
//! in a local file and defers deleting the key until that file is unlinked, unless the key is
//! written again first, so peers never see the key disappear during a save.
//!
//! Rejections (from the store, or content that is neither JSON nor UTF-8) are logged with
//! `tracing::warn!`, listed in `/.herd/errors` (last 100) and readable per path with
//! `getfattr -n user.herd.error FILE` until the path is written successfully. Ordinary
//! filesystem answers (`ENOENT`, `EEXIST`, `ENOTEMPTY`...) are not rejections.

pub mod backend;
pub mod content;
mod documents;
mod fs;
mod invalidation;
pub mod json;
mod kernel;
pub mod mem;
mod mount;
mod rejections;
mod replay;
pub mod scratch;
#[allow(
    unsafe_code,
    reason = "umount2, geteuid and gettid have no safe std wrapper"
)]
mod sys;
mod table;

pub use backend::{Backend, Change, ChangeSink, Child, Error, ErrorKind, Node, Op, Segments};
pub use mount::{mount, Mount, MountOptions};
pub use scratch::SCRATCH_RULES;

/// `["a", "b"]` for `"/a/b"`: how the crate's tests name paths.
#[cfg(test)]
pub(crate) fn test_path(s: &str) -> Vec<String> {
    s.split('/')
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}
