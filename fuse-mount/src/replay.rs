//! Replay: the kernel raises inotify events only for operations that pass through the VFS, and
//! a FUSE invalidation is not one (`fuse_reverse_inval_*` never calls fsnotify, up to Linux
//! 6.18). So after a change from elsewhere (REST, a peer, a plugin's derived output, an
//! expiry) the invalidation thread re-enacts it on the mount itself: it opens, truncates and
//! closes a changed file (`IN_OPEN`, `IN_MODIFY`, `IN_CLOSE_WRITE`), creates a new file or
//! directory (`IN_CREATE`), and unlinks or removes a vanished one, deepest first (`IN_DELETE`,
//! and `IN_DELETE_SELF` for watched inodes). The request thread knows this thread by its id
//! (`Echo::is`) and answers its requests from the store and the act in progress without
//! changing anything (`fs/echo.rs`), so the events come from the kernel itself and are exactly
//! those a local process doing the same would cause.
//!
//! What to re-enact is decided against the listings (`table::Listing`): what watchers of each
//! directory the kernel holds were last shown. Local changes through the mount raise their own
//! events and update the listings as they are applied, so replaying their change finds nothing
//! to do; a change from elsewhere is announced once, as what it is. Paths below a directory the
//! kernel does not hold are skipped: nobody can watch them.
//!
//! Invariant: the table lock is never held during a system call on the mount or a call to the
//! store.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::backend::{self, Backend, Change, Node};
use crate::content::encode;
use crate::fs::{control_path, fingerprint};
use crate::invalidation::Kernel;
use crate::table::{Kind, Seen, Table};

/// One operation to re-enact on the mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Act {
    /// A new file (created, truncated, closed) or directory (made).
    Create { path: Vec<String>, seen: Seen },
    /// A file whose content changed (opened for writing, truncated, closed).
    Modify {
        path: Vec<String>,
        content: Option<u64>,
    },
    /// A file unlinked or a directory removed (its listed contents go first, as acts of their
    /// own).
    Delete { path: Vec<String>, kind: Kind },
}

impl Act {
    pub fn path(&self) -> &[String] {
        match self {
            Act::Create { path, .. } | Act::Modify { path, .. } | Act::Delete { path, .. } => path,
        }
    }

    /// What watchers are shown at its path once it is done.
    fn shows(&self) -> Option<Seen> {
        match self {
            Act::Create { seen, .. } => Some(*seen),
            Act::Modify { content, .. } => Some(Seen {
                kind: Kind::File,
                content: *content,
            }),
            Act::Delete { .. } => None,
        }
    }
}

/// An act with what watchers were shown at its path when it was planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Planned {
    pub act: Act,
    pub was: Option<Seen>,
}

/// The name the replaying thread looks up in the mount's root when it starts, to learn that
/// the request thread recognises it (`Echo::confirm`); never a key.
pub(crate) const PROBE: &str = ".herd-replay-probe-";

/// The replaying thread as the request thread sees it.
#[derive(Debug, Default)]
pub(crate) struct Echo {
    /// Its thread id (the `pid` FUSE reports for its requests); 0 before it starts.
    tid: AtomicU32,
    /// The act it is carrying out.
    act: Mutex<Option<Act>>,
    /// Set when the mount is going away: replay nothing more.
    stopping: AtomicBool,
    /// The mounted filesystem's device number, once the mount is live (0 before).
    dev: AtomicU64,
    /// Set when the request thread answered the replaying thread's probe as its own.
    confirmed: AtomicBool,
}

impl Echo {
    /// True if a request with this `pid` comes from the replaying thread.
    pub fn is(&self, pid: u32) -> bool {
        pid != 0 && self.tid.load(Ordering::Relaxed) == pid
    }

    /// The act in progress.
    pub fn act(&self) -> Option<Act> {
        self.act
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replay nothing more (the mount is being unmounted).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// The mount is live, as device `dev`.
    pub fn live(&self, dev: u64) {
        self.dev.store(dev, Ordering::Relaxed);
    }

    /// The request thread recognised the replaying thread's probe.
    pub fn confirm(&self) {
        self.confirmed.store(true, Ordering::Relaxed);
    }

    fn set_act(&self, act: Option<Act>) {
        *self.act.lock().unwrap_or_else(PoisonError::into_inner) = act;
    }
}

fn lock(table: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What is at `path` in the store as watchers would be shown it; `Err` if the store cannot
/// say (the change is then not replayed). A directory's value is not read.
fn state(backend: &dyn Backend, path: &[String]) -> Result<Option<Seen>, ()> {
    match backend.is_dir(path) {
        Ok(Some(true)) => {
            return Ok(Some(Seen {
                kind: Kind::Dir,
                content: None,
            }))
        }
        Ok(None) => return Ok(None),
        Err(e) if e.kind == backend::ErrorKind::NotFound => return Ok(None),
        Err(_) => return Err(()),
        Ok(Some(false)) => {}
    }
    match backend.get(path) {
        Ok(Some(Node::Leaf { value, .. })) => Ok(Some(Seen {
            kind: Kind::File,
            content: Some(fingerprint(&encode(&value))),
        })),
        Ok(Some(Node::Dir { .. })) => Ok(Some(Seen {
            kind: Kind::Dir,
            content: None,
        })),
        Ok(None) => Ok(None),
        Err(e) if e.kind == backend::ErrorKind::NotFound => Ok(None),
        Err(_) => Err(()),
    }
}

/// True if `path` is the mount's own (a local file, `/.herd`): the store's changes there are
/// not shown.
fn own(t: &Table, path: &[String]) -> bool {
    control_path(path)
        || t.ino(path)
            .and_then(|ino| t.get(ino))
            .is_some_and(|i| i.local.is_some())
}

/// The acts that show `change` to watchers, in order.
pub(crate) fn plan(table: &Mutex<Table>, backend: &dyn Backend, change: &Change) -> Vec<Planned> {
    let mut acts = Vec::new();
    match change {
        Change::All => resync(table, backend, &[], false, &mut acts),
        Change::Path(p) => plan_path(table, backend, p, &mut acts),
    }
    acts
}

/// Walks down from the root to the first level at which what watchers saw differs from the
/// store.
fn plan_path(table: &Mutex<Table>, backend: &dyn Backend, p: &[String], acts: &mut Vec<Planned>) {
    if p.is_empty() {
        return resync(table, backend, p, true, acts);
    }
    for i in 0..p.len() {
        let path = &p[..=i];
        let old = {
            let t = lock(table);
            if own(&t, path) {
                return;
            }
            match t.listing(&p[..i]) {
                Some(listing) => listing.get(&p[i]).copied(),
                None => return, // the kernel does not hold the directory: nobody watches it
            }
        };
        let Ok(new) = state(backend, path) else {
            return;
        };
        let last = i + 1 == p.len();
        if let (Some(o), Some(n)) = (old, new) {
            if o.kind == Kind::Dir && n.kind == Kind::Dir {
                if last {
                    resync(table, backend, path, true, acts);
                    return;
                }
                continue;
            }
        }
        compare(table, path, old, new, true, acts);
        return;
    }
}

/// The acts for one name whose old and new states are known (directories that stay
/// directories are left to their own listing). `unknown_changed`: a file whose old content is
/// unknown is announced as modified.
fn compare(
    table: &Mutex<Table>,
    path: &[String],
    old: Option<Seen>,
    new: Option<Seen>,
    unknown_changed: bool,
    acts: &mut Vec<Planned>,
) {
    match (old, new) {
        (None, None) => {}
        (None, Some(seen)) => acts.push(Planned {
            act: Act::Create {
                path: path.to_vec(),
                seen,
            },
            was: None,
        }),
        (Some(o), None) => delete(&lock(table), path, o, acts),
        (Some(o), Some(n)) if o.kind == Kind::Dir && n.kind == Kind::Dir => {}
        (Some(o), Some(n)) if o.kind == Kind::File && n.kind == Kind::File => {
            let changed = match o.content {
                Some(c) => Some(c) != n.content,
                None => unknown_changed,
            };
            if changed {
                acts.push(Planned {
                    act: Act::Modify {
                        path: path.to_vec(),
                        content: n.content,
                    },
                    was: old,
                });
            } else if o.content.is_none() {
                // Learn the content without announcing anything.
                lock(table).saw(path, Some(n));
            }
        }
        (Some(o), Some(n)) => {
            delete(&lock(table), path, o, acts);
            acts.push(Planned {
                act: Act::Create {
                    path: path.to_vec(),
                    seen: n,
                },
                was: None,
            });
        }
    }
}

/// Deleting `path`: what watchers saw below it first, deepest first, then `path` itself.
fn delete(t: &Table, path: &[String], was: Seen, acts: &mut Vec<Planned>) {
    if was.kind == Kind::Dir {
        if let Some(listing) = t.listing(path) {
            for (name, seen) in listing {
                let mut below = path.to_vec();
                below.push(name.clone());
                if !own(t, &below) {
                    delete(t, &below, *seen, acts);
                }
            }
        }
    }
    acts.push(Planned {
        act: Act::Delete {
            path: path.to_vec(),
            kind: was.kind,
        },
        was: Some(was),
    });
}

/// Compares every listed directory at `dir` and below with the store, parents first.
fn resync(
    table: &Mutex<Table>,
    backend: &dyn Backend,
    dir: &[String],
    unknown_changed: bool,
    acts: &mut Vec<Planned>,
) {
    let dirs = lock(table).listed_subtree(dir);
    let mut gone: Vec<Vec<String>> = Vec::new();
    for d in dirs {
        if gone.iter().any(|g| d.starts_with(g)) {
            continue;
        }
        let Some(listing) = lock(table).listing(&d).cloned() else {
            continue;
        };
        let listed = match backend.list(&d) {
            Ok(children) => children,
            Err(e) if e.kind == backend::ErrorKind::NotFound => Vec::new(),
            Err(_) => continue,
        };
        let mut names: std::collections::BTreeMap<String, Option<bool>> =
            listing.keys().map(|name| (name.clone(), None)).collect();
        for c in listed {
            names.insert(c.name, Some(c.is_dir));
        }
        for (name, is_dir) in names {
            let mut path = d.clone();
            path.push(name.clone());
            if own(&lock(table), &path) {
                continue;
            }
            let old = listing.get(&name).copied();
            let new = match is_dir {
                None => None,
                Some(true) => Some(Seen {
                    kind: Kind::Dir,
                    content: None,
                }),
                Some(false) => match state(backend, &path) {
                    Ok(new) => new,
                    Err(()) => continue,
                },
            };
            let before = acts.len();
            compare(table, &path, old, new, unknown_changed, acts);
            if acts[before..]
                .iter()
                .any(|a| matches!(&a.act, Act::Delete { path: p, .. } if p == &path))
            {
                gone.push(path);
            }
        }
    }
}

/// Carries out acts on the mount at `dir`, from the thread `Echo::is` recognises.
pub(crate) struct Replayer {
    dir: PathBuf,
    echo: Arc<Echo>,
    state: Start,
}

/// Whether the replayer can act.
enum Start {
    /// Not yet: the mount is not live.
    Waiting,
    /// The mount's root, held open: every act goes through it (`/proc/self/fd/N/...`), so it
    /// reaches this mount even if another is stacked on the mount point or it was detached.
    Ready(fs::File),
    /// Never: the mount point is not this mount, or the request thread does not know the
    /// replaying thread (its acts would then change the store). Warned once.
    Off,
}

impl Replayer {
    pub fn new(dir: &Path, echo: Arc<Echo>) -> Self {
        Replayer {
            dir: dir.to_path_buf(),
            echo,
            state: Start::Waiting,
        }
    }

    /// Plan and carry out what `changes` need, in order. `kernel` drops a stale entry that
    /// stands in the way of a creation.
    pub fn replay(
        &mut self,
        table: &Mutex<Table>,
        backend: &dyn Backend,
        kernel: &dyn Kernel,
        changes: &[Change],
    ) {
        let root = match self.start() {
            Some(root) => root,
            None => return,
        };
        let root = format!("/proc/self/fd/{}", root.as_raw_fd());
        for change in changes {
            if self.echo.stopping() {
                return;
            }
            for planned in plan(table, backend, change) {
                if self.echo.stopping() {
                    return;
                }
                self.perform(table, kernel, Path::new(&root), planned);
            }
        }
    }

    /// The mount's root once the mount is live and the request thread knows this thread.
    fn start(&mut self) -> Option<&fs::File> {
        if let Start::Waiting = self.state {
            let dev = self.echo.dev.load(Ordering::Relaxed);
            if dev == 0 {
                return None; // not live yet: the kernel holds nothing anyone could watch
            }
            self.state = match self.open(dev) {
                Ok(root) => Start::Ready(root),
                Err(why) => {
                    tracing::warn!(
                        dir = %self.dir.display(),
                        "inotify events for changes made elsewhere are off: {why}"
                    );
                    Start::Off
                }
            };
        }
        match &self.state {
            Start::Ready(root) => Some(root),
            _ => None,
        }
    }

    fn open(&self, dev: u64) -> Result<fs::File, String> {
        let root = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(&self.dir)
            .map_err(|e| format!("cannot open the mount point: {e}"))?;
        let meta = root.metadata().map_err(|e| e.to_string())?;
        if meta.dev() != dev {
            return Err("the mount point is no longer this mount".to_owned());
        }
        self.echo
            .tid
            .store(crate::sys::thread_id(), Ordering::Relaxed);
        static PROBES: AtomicU64 = AtomicU64::new(0);
        let n = PROBES.fetch_add(1, Ordering::Relaxed);
        let probe = format!(
            "/proc/self/fd/{}/{PROBE}{}-{n}",
            root.as_raw_fd(),
            std::process::id()
        );
        let _ = fs::symlink_metadata(probe);
        if !self.echo.confirmed.load(Ordering::Relaxed) {
            self.echo.tid.store(0, Ordering::Relaxed);
            return Err("the mount does not recognise its replaying thread".to_owned());
        }
        Ok(root)
    }

    /// One act: the system calls, then the listing (if watchers were still shown what the
    /// plan saw: a local change applied meanwhile updated it itself).
    fn perform(&self, table: &Mutex<Table>, kernel: &dyn Kernel, root: &Path, planned: Planned) {
        let Planned { act, was } = planned;
        let mut at = root.to_path_buf();
        at.extend(act.path());
        self.echo.set_act(Some(act.clone()));
        let result = match &act {
            Act::Create { seen, .. } if seen.kind == Kind::Dir => match fs::create_dir(&at) {
                // The kernel learnt of the directory before its creation got here (a lookup
                // in between). Its entry is not dropped (a shell inside would lose its
                // working directory): no IN_CREATE then, but the listing learns it.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                other => other,
            },
            Act::Create { path, .. } => match create(&at) {
                // The kernel learnt of the file before its creation got here (a lookup in
                // between, answered from the store): drop that entry and create again.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let parent = lock(table).ino(&path[..path.len() - 1]);
                    if let (Some(parent), Some(name)) = (parent, path.last()) {
                        let _ = kernel.inval_entry(parent, name);
                    }
                    match create(&at) {
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => touch(&at),
                        other => other,
                    }
                }
                other => other,
            },
            Act::Modify { .. } => touch(&at),
            Act::Delete {
                kind: Kind::File, ..
            } => fs::remove_file(&at),
            Act::Delete {
                kind: Kind::Dir, ..
            } => fs::remove_dir(&at),
        };
        self.echo.set_act(None);
        let done = match result {
            Ok(()) => true,
            // Already gone: watchers were told when it went.
            Err(e) if e.kind() == io::ErrorKind::NotFound && matches!(act, Act::Delete { .. }) => {
                true
            }
            Err(e) => {
                // Watchers still see what they saw: a later change of the path tries again.
                let path = act.path().join("/");
                tracing::warn!("replaying a change of /{path} on the mount failed: {e}");
                false
            }
        };
        if done {
            lock(table).saw_if(act.path(), was, act.shows());
        }
    }
}

impl Drop for Replayer {
    fn drop(&mut self) {
        // The thread's id may be reused by another process once it ends.
        self.echo.tid.store(0, Ordering::Relaxed);
    }
}

/// Create a new file and close it.
fn create(at: &Path) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(at)?
        .set_len(0)
}

/// Open for writing, truncate (the size is the daemon's, not the one asked) and close.
fn touch(at: &Path) -> io::Result<()> {
    OpenOptions::new().write(true).open(at)?.set_len(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Op;
    use crate::mem::MemBackend;
    use crate::table::Listing;
    use serde_json::json;

    use crate::test_path as p;

    fn file(v: serde_json::Value) -> Seen {
        Seen {
            kind: Kind::File,
            content: Some(fingerprint(&encode(&v))),
        }
    }

    const DIR: Seen = Seen {
        kind: Kind::Dir,
        content: None,
    };

    /// A table holding `dirs` (with listings of what `before` had there) over a store holding
    /// `after`; the acts `change` needs.
    fn acts(
        before: serde_json::Value,
        dirs: &[&str],
        after: serde_json::Value,
        change: Change,
    ) -> Vec<Act> {
        let old = MemBackend::new();
        old.apply(vec![Op::Put(Vec::new(), before)]).unwrap();
        let table = Mutex::new(Table::new());
        for dir in std::iter::once("").chain(dirs.iter().copied()) {
            let mut t = table.lock().unwrap();
            let ino = t.intern(&p(dir), Kind::Dir);
            t.looked_up(ino);
            let mut listing = Listing::new();
            for c in old.list(&p(dir)).unwrap() {
                let mut path = p(dir);
                path.push(c.name.clone());
                listing.insert(c.name, state(&old, &path).unwrap().unwrap());
            }
            t.set_listing(ino, listing);
        }
        let new = MemBackend::new();
        new.apply(vec![Op::Put(Vec::new(), after)]).unwrap();
        plan(&table, &new, &change)
            .into_iter()
            .map(|planned| planned.act)
            .collect()
    }

    fn path(s: &str) -> Change {
        Change::Path(p(s))
    }

    #[test]
    fn a_changed_file_is_modified_a_new_one_created_a_gone_one_deleted() {
        let before = json!({"app": {"x": 1, "y": 2}});
        let after = json!({"app": {"x": 3, "z": 4}});
        let got = acts(before.clone(), &["app"], after.clone(), path("app/x"));
        let content = Some(fingerprint(b"3\n"));
        assert_eq!(
            got,
            [Act::Modify {
                path: p("app/x"),
                content
            }]
        );
        let got = acts(before.clone(), &["app"], after.clone(), path("app/z"));
        let seen = file(json!(4));
        assert_eq!(
            got,
            [Act::Create {
                path: p("app/z"),
                seen
            }]
        );
        let got = acts(before, &["app"], after, path("app/y"));
        let kind = Kind::File;
        assert_eq!(
            got,
            [Act::Delete {
                path: p("app/y"),
                kind
            }]
        );
    }

    #[test]
    fn an_unchanged_value_or_an_unheld_directory_shows_nothing() {
        let store = json!({"app": {"x": 1}, "other": {"y": 1}});
        assert_eq!(
            acts(store.clone(), &["app"], store.clone(), path("app/x")),
            []
        );
        let after = json!({"app": {"x": 1}, "other": {"y": 2}});
        assert_eq!(acts(store, &["app"], after, path("other/y")), []);
    }

    #[test]
    fn a_new_directory_is_created_once_and_a_gone_one_emptied_first() {
        let before = json!({"a": 1});
        let after = json!({"a": 1, "d": {"e": {"f": 1}}});
        let got = acts(before, &[], after, path("d/e/f"));
        assert_eq!(
            got,
            [Act::Create {
                path: p("d"),
                seen: DIR
            }]
        );
        let before = json!({"d": {"e": {"f": 1}, "g": 2}});
        let got = acts(before, &["d", "d/e"], json!({}), path("d"));
        let del = |s: &str, kind| Act::Delete { path: p(s), kind };
        assert_eq!(
            got,
            [
                del("d/e/f", Kind::File),
                del("d/e", Kind::Dir),
                del("d/g", Kind::File),
                del("d", Kind::Dir)
            ]
        );
    }

    #[test]
    fn a_path_that_changes_kind_is_deleted_then_created() {
        let got = acts(json!({"a": 1}), &[], json!({"a": {"b": 2}}), path("a/b"));
        assert_eq!(
            got,
            [
                Act::Delete {
                    path: p("a"),
                    kind: Kind::File
                },
                Act::Create {
                    path: p("a"),
                    seen: DIR
                }
            ]
        );
    }

    #[test]
    fn an_object_put_over_a_directory_compares_what_is_listed() {
        let before = json!({"d": {"a": 1, "b": 2, "s": {"x": 1}}});
        let after = json!({"d": {"a": 1, "b": 3, "c": 4, "s": {"x": 1}}});
        let got = acts(before, &["d", "d/s"], after, path("d"));
        assert_eq!(
            got,
            [
                Act::Modify {
                    path: p("d/b"),
                    content: Some(fingerprint(b"3\n"))
                },
                Act::Create {
                    path: p("d/c"),
                    seen: file(json!(4))
                }
            ]
        );
    }

    #[test]
    fn a_resync_learns_unknown_contents_without_announcing_them() {
        let table = Mutex::new(Table::new());
        let mut listing = Listing::new();
        let unknown = Seen {
            kind: Kind::File,
            content: None,
        };
        listing.insert("a".to_owned(), unknown);
        listing.insert("b".to_owned(), unknown);
        table
            .lock()
            .unwrap()
            .set_listing(crate::table::ROOT, listing);
        let store = MemBackend::new();
        store
            .apply(vec![Op::Put(Vec::new(), json!({"a": 1, "c": 2}))])
            .unwrap();
        let got: Vec<Act> = plan(&table, &store, &Change::All)
            .into_iter()
            .map(|planned| planned.act)
            .collect();
        assert_eq!(
            got,
            [
                Act::Delete {
                    path: p("b"),
                    kind: Kind::File
                },
                Act::Create {
                    path: p("c"),
                    seen: file(json!(2))
                }
            ]
        );
        let t = table.lock().unwrap();
        assert_eq!(t.listing(&[]).unwrap()["a"], file(json!(1)));
    }
}
