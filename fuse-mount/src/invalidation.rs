//! The invalidation thread: turns the store's changes (and the filesystem's own requests) into
//! kernel cache invalidations, then replays the changes on the mount so that the kernel raises
//! their inotify events (`replay`). It runs apart from the request thread because a
//! notification sent from inside a request handler can deadlock the kernel, and because the
//! replay's system calls are answered by the request thread.
//!
//! It takes the jobs queued so far as one batch: every invalidation first, so the kernel's
//! caches are right as soon as possible, then one replay per changed path (a path changed
//! several times in the batch is replayed once, against the store as it is then: the
//! replay compares what watchers saw with the store, so nothing is lost by coalescing). A
//! storm of changes therefore costs the replay at most one pass per distinct path, and the
//! mount keeps answering meanwhile: the replay waits on one request at a time.
//!
//! Invariant: the table lock is never held while talking to the kernel or the store.
//!
//! A changed path drops the kernel's cached attributes and pages of its inode and its known
//! descendants, and those of its ancestors when a name appeared, vanished or changed kind (a
//! file's new content leaves its directories' attributes alone, as on a local disk, so the
//! next path walk need not ask for them again); a directory entry is invalidated only when the
//! path's kind changed or it vanished (invalidating a directory that still exists would orphan
//! the working directory of every shell inside it).

use std::collections::HashSet;
use std::io;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use crate::backend::{Backend, Change};
use crate::fs::control_path;
use crate::replay::Replayer;
use crate::table::{Ino, Kind, Table};

/// The most jobs taken as one batch.
const BATCH: usize = 4096;

/// Work for the invalidation thread.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Job {
    /// The store changed.
    Change(Change),
    /// Drop the kernel's entry `name` in directory `parent`.
    Entry { parent: Ino, name: String },
    /// Drop the kernel's attributes and pages of an inode.
    Inode(Ino),
    /// End the thread.
    Stop,
}

/// One invalidation to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Inval {
    Inode(Ino),
    Entry(Ino, String),
}

/// Where invalidations go (the FUSE notifier; a recorder in tests).
pub(crate) trait Kernel: Send + 'static {
    fn inval_inode(&self, ino: Ino) -> io::Result<()>;
    fn inval_entry(&self, parent: Ino, name: &str) -> io::Result<()>;
}

/// Start the thread; it ends on [`Job::Stop`] or when every sender is gone. Without a
/// `replayer`, changes only invalidate.
pub(crate) fn spawn(
    table: Arc<Mutex<Table>>,
    backend: Arc<dyn Backend>,
    kernel: impl Kernel,
    jobs: Receiver<Job>,
    mut replayer: Option<Replayer>,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("herd-fuse-inval".to_owned())
        .spawn(move || {
            while let Ok(first) = jobs.recv() {
                let mut batch = vec![first];
                batch.extend(jobs.try_iter().take(BATCH - 1));
                let mut stop = false;
                let mut changes = Vec::new();
                let mut seen = HashSet::new();
                for job in batch {
                    let invals = match job {
                        Job::Stop => {
                            stop = true;
                            break;
                        }
                        Job::Change(change) => {
                            let invals = plan(&table, backend.as_ref(), &change);
                            if seen.insert(change.clone()) {
                                changes.push(change);
                            }
                            invals
                        }
                        Job::Entry { parent, name } => vec![Inval::Entry(parent, name)],
                        Job::Inode(ino) => vec![Inval::Inode(ino)],
                    };
                    send(&kernel, invals);
                }
                if let Some(replayer) = replayer.as_mut() {
                    replayer.replay(&table, backend.as_ref(), &kernel, &changes);
                }
                if stop {
                    break;
                }
            }
        })
}

fn send(kernel: &impl Kernel, invals: Vec<Inval>) {
    for inval in invals {
        let result = match &inval {
            Inval::Inode(ino) => kernel.inval_inode(*ino),
            Inval::Entry(parent, name) => kernel.inval_entry(*parent, name),
        };
        if let Err(e) = result {
            tracing::debug!("cache invalidation {inval:?} failed: {e}");
        }
    }
}

/// One inode the kernel may cache, as the table knew it.
struct Target {
    path: Vec<String>,
    ino: Ino,
    kind: Kind,
    parent: Option<Ino>,
    local: bool,
}

/// The invalidations a change needs.
pub(crate) fn plan(table: &Mutex<Table>, backend: &dyn Backend, change: &Change) -> Vec<Inval> {
    let (changed, targets) = {
        let mut t = table.lock().unwrap_or_else(PoisonError::into_inner);
        let (changed, mut paths) = match change {
            Change::All => (Vec::new(), t.all()),
            Change::Path(p) => {
                let mut paths: Vec<_> = (0..p.len())
                    .filter_map(|i| Some((p[..i].to_vec(), t.ino(&p[..i])?)))
                    .collect();
                paths.extend(t.subtree(p));
                (p.clone(), paths)
            }
        };
        paths.retain(|(p, _)| !control_path(p));
        let targets: Vec<Target> = paths
            .into_iter()
            .filter_map(|(path, ino)| {
                let inode = t.get_mut(ino)?;
                inode.served = None;
                let (kind, local) = (inode.kind, inode.local.is_some());
                let parent = path.split_last().and_then(|(_, parent)| t.ino(parent));
                Some(Target {
                    path,
                    ino,
                    kind,
                    parent,
                    local,
                })
            })
            .collect();
        (changed, targets)
    };
    let kind_now = |path: &[String]| match backend.is_dir(path) {
        Ok(Some(true)) => Ok(Some(Kind::Dir)),
        Ok(Some(false)) => Ok(Some(Kind::File)),
        Ok(None) => Ok(None),
        Err(_) => Err(()),
    };
    // Did a name appear, vanish or change kind? (Unknown to the kernel counts as appeared.)
    let renamed = match &change {
        Change::All => true,
        Change::Path(_) => match targets.iter().find(|t| t.path == changed) {
            Some(t) => kind_now(&t.path) != Ok(Some(t.kind)),
            None => true,
        },
    };
    let mut invals = Vec::new();
    let mut dropped: Vec<&[String]> = Vec::new();
    for target in &targets {
        if target.local {
            continue; // the mount's own files; the store does not know them
        }
        let ancestor_dir = target.path.len() < changed.len() && target.kind == Kind::Dir;
        if ancestor_dir && !renamed {
            continue;
        }
        invals.push(Inval::Inode(target.ino));
        let (Some(parent), Some(name)) = (target.parent, target.path.last()) else {
            continue;
        };
        if ancestor_dir || dropped.iter().any(|d| target.path.starts_with(d)) {
            continue;
        }
        let Ok(now) = kind_now(&target.path) else {
            continue;
        };
        if now != Some(target.kind) {
            invals.push(Inval::Entry(parent, name.clone()));
            dropped.push(&target.path);
        }
    }
    invals
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Op;
    use crate::mem::MemBackend;
    use serde_json::json;

    use crate::test_path as p;

    fn check(setup: &[(&str, Kind)], store: serde_json::Value, change: Change, expect: &[Inval]) {
        let backend = MemBackend::new();
        backend.apply(vec![Op::Put(Vec::new(), store)]).unwrap();
        let table = Mutex::new(Table::new());
        let mut inos = Vec::new();
        for (path, kind) in setup {
            inos.push(table.lock().unwrap().intern(&p(path), *kind));
        }
        assert_eq!(plan(&table, &backend, &change), expect);
    }

    #[test]
    fn a_changed_value_drops_its_attributes_not_its_directories_nor_entries() {
        // Inodes: a = 2, a/b = 3.
        let store = json!({"a": {"b": 1}});
        let setup = [("a", Kind::Dir), ("a/b", Kind::File)];
        check(&setup, store, Change::Path(p("a/b")), &[Inval::Inode(3)]);
        // A new name changes its directories.
        let store = json!({"a": {"b": 1, "c": 2}});
        let expect = [Inval::Inode(1), Inval::Inode(2)];
        check(&setup, store, Change::Path(p("a/c")), &expect);
    }

    #[test]
    fn a_deleted_or_retyped_path_drops_its_entry_once() {
        let setup = [("a", Kind::Dir), ("a/b", Kind::File), ("a/c", Kind::File)];
        let expect = [
            Inval::Inode(1),
            Inval::Inode(2),
            Inval::Entry(1, "a".to_owned()),
            Inval::Inode(3),
            Inval::Inode(4),
        ];
        check(&setup, json!({"x": 1}), Change::Path(p("a")), &expect);
        let expect = [
            Inval::Inode(1),
            Inval::Inode(2),
            Inval::Inode(3),
            Inval::Entry(2, "b".to_owned()),
        ];
        check(
            &setup[..2],
            json!({"a": {"b": {"c": 1}}}),
            Change::Path(p("a/b/c")),
            &expect,
        );
    }

    #[test]
    fn everything_known_is_checked_on_all() {
        let setup = [("a", Kind::File), ("b", Kind::File)];
        let expect = [
            Inval::Inode(1),
            Inval::Inode(2),
            Inval::Inode(3),
            Inval::Entry(1, "b".to_owned()),
        ];
        check(&setup, json!({"a": 1}), Change::All, &expect);
    }
}
