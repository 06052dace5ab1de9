//! The inode table: which inode number stands for which path, what the kernel was told about
//! it, the files that live only in the mount (pending creations and scratch files), and what
//! watchers were last shown of each directory the kernel holds (its *listing*). Shared by the
//! request thread and the invalidation thread behind one mutex; knows nothing of the store or
//! of FUSE.
//!
//! Invariant: `by_path[p] == ino` if and only if `inodes[ino].path == Some(p)`.
//! Invariant: an inode stays in the table while the kernel holds a lookup on it or it has
//! local content; a path keeps its inode number for as long as its inode is in the table.
//! Invariant: only attached directory inodes have a listing; it goes when the inode detaches.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

/// An inode number as the kernel sees it.
pub(crate) type Ino = u64;

/// The root directory's inode number (fixed by FUSE).
pub(crate) const ROOT: Ino = 1;

/// What kind of file the kernel was told an inode is; a path that changes kind gets a new inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
}

/// A file that exists only in this mount.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Local {
    /// Created by `create` and not yet committed: an open handle commits it when it closes.
    Pending,
    /// An editor's or tool's scratch file: its content lives here and never reaches the store.
    Scratch {
        content: Vec<u8>,
        mtime: SystemTime,
        /// The key this file was renamed away from, whose deletion waits until this file is
        /// unlinked (unless the key is re-created first).
        origin: Option<Vec<String>>,
    },
}

/// One inode.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Inode {
    /// Where it is; `None` once unlinked or replaced (the kernel may still hold it).
    pub path: Option<Vec<String>>,
    /// The kind the kernel was told.
    pub kind: Kind,
    /// Lookups the kernel holds (`forget` gives them back).
    pub lookups: u64,
    /// Set when the file lives only in the mount.
    pub local: Option<Local>,
    /// A fingerprint of the content last served with the page cache enabled, so an open of
    /// unchanged content may keep the kernel's cached pages.
    pub served: Option<u64>,
}

/// What watchers of a directory were last shown of one of its names: local changes through
/// the mount show themselves, changes from elsewhere are replayed (`replay`), and both update
/// it, so a change is announced once and as what it is (created, modified, deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    pub kind: Kind,
    /// A fingerprint of a file's content, when known.
    pub content: Option<u64>,
}

/// A directory's names as watchers last saw them.
pub(crate) type Listing = BTreeMap<String, Seen>;

/// The two maps, path to inode and inode to path, and the listings.
#[derive(Debug)]
pub(crate) struct Table {
    /// Attached paths, ordered so a subtree is one range.
    by_path: BTreeMap<Vec<String>, Ino>,
    /// Every inode the kernel may still name.
    inodes: HashMap<Ino, Inode>,
    /// Listings of directories the kernel holds, from its first lookup on.
    listings: HashMap<Ino, Listing>,
    /// The next number to hand out (numbers are never reused).
    next: Ino,
}

impl Default for Table {
    fn default() -> Self {
        Self::new()
    }
}

impl Table {
    /// A table holding only the root.
    pub fn new() -> Self {
        let mut table = Table {
            by_path: BTreeMap::new(),
            inodes: HashMap::new(),
            listings: HashMap::new(),
            next: ROOT + 1,
        };
        table.by_path.insert(Vec::new(), ROOT);
        table.inodes.insert(ROOT, inode(Vec::new(), Kind::Dir));
        table
    }

    /// The inode at `path`, if it has one.
    pub fn ino(&self, path: &[String]) -> Option<Ino> {
        self.by_path.get(path).copied()
    }

    /// The inode's entry.
    pub fn get(&self, ino: Ino) -> Option<&Inode> {
        self.inodes.get(&ino)
    }

    /// The inode's entry, to change.
    pub fn get_mut(&mut self, ino: Ino) -> Option<&mut Inode> {
        self.inodes.get_mut(&ino)
    }

    /// The inode's path, `None` if unknown or detached.
    pub fn path(&self, ino: Ino) -> Option<&Vec<String>> {
        self.inodes.get(&ino)?.path.as_ref()
    }

    /// The inode for `path` as a `kind`: the existing one if it has that kind, else a new one
    /// (the old one, of another kind, is detached).
    pub fn intern(&mut self, path: &[String], kind: Kind) -> Ino {
        if let Some(ino) = self.ino(path) {
            if self.inodes.get(&ino).is_some_and(|i| i.kind == kind) {
                return ino;
            }
            self.detach_one(ino);
        }
        let ino = self.next;
        self.next += 1;
        self.by_path.insert(path.to_vec(), ino);
        self.inodes.insert(ino, inode(path.to_vec(), kind));
        ino
    }

    /// The kernel took one more lookup on the inode.
    pub fn looked_up(&mut self, ino: Ino) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.lookups += 1;
        }
    }

    /// The kernel gave back `n` lookups; the inode is dropped when none remain and it has no
    /// local content.
    pub fn forget(&mut self, ino: Ino, n: u64) {
        let Some(inode) = self.inodes.get_mut(&ino) else {
            return;
        };
        inode.lookups = inode.lookups.saturating_sub(n);
        let keep =
            ino == ROOT || inode.lookups > 0 || (inode.local.is_some() && inode.path.is_some());
        if !keep {
            self.detach_one(ino);
            self.inodes.remove(&ino);
        }
    }

    /// Detach the inodes at `path` and below (unlinked or replaced). Their local content goes
    /// with them; returns them with what they held.
    pub fn detach(&mut self, path: &[String]) -> Vec<(Ino, Option<Local>)> {
        let inos: Vec<Ino> = self.subtree(path).into_iter().map(|(_, ino)| ino).collect();
        inos.into_iter()
            .map(|ino| {
                self.detach_one(ino);
                let local = self.inodes.get_mut(&ino).and_then(|i| i.local.take());
                if self.inodes.get(&ino).is_some_and(|i| i.lookups == 0) {
                    self.inodes.remove(&ino);
                }
                (ino, local)
            })
            .collect()
    }

    /// Move the inodes at `from` and below to `to`; whatever was at `to` is detached first and
    /// returned as by [`Table::detach`].
    pub fn rename(&mut self, from: &[String], to: &[String]) -> Vec<(Ino, Option<Local>)> {
        let replaced = self.detach(to);
        for (old, ino) in self.subtree(from) {
            self.by_path.remove(&old);
            let mut new = to.to_vec();
            new.extend_from_slice(&old[from.len()..]);
            self.by_path.insert(new.clone(), ino);
            if let Some(inode) = self.inodes.get_mut(&ino) {
                inode.path = Some(new);
            }
        }
        replaced
    }

    /// The attached paths at `path` and below with their inodes, `path` first.
    pub fn subtree(&self, path: &[String]) -> Vec<(Vec<String>, Ino)> {
        self.by_path
            .range(path.to_vec()..)
            .take_while(|(p, _)| p.starts_with(path))
            .map(|(p, ino)| (p.clone(), *ino))
            .collect()
    }

    /// The attached local files directly inside `dir`: name, inode.
    pub fn local_children(&self, dir: &[String]) -> Vec<(String, Ino)> {
        self.subtree(dir)
            .into_iter()
            .filter(|(p, ino)| {
                p.len() == dir.len() + 1 && self.inodes.get(ino).is_some_and(|i| i.local.is_some())
            })
            .filter_map(|(mut p, ino)| Some((p.pop()?, ino)))
            .collect()
    }

    /// Every attached path with its inode.
    pub fn all(&self) -> Vec<(Vec<String>, Ino)> {
        self.subtree(&[])
    }

    /// The listing of the directory at `path`, if the kernel holds it.
    pub fn listing(&self, path: &[String]) -> Option<&Listing> {
        self.listings.get(&self.ino(path)?)
    }

    /// True if the attached directory `ino` has a listing.
    pub fn has_listing(&self, ino: Ino) -> bool {
        self.listings.contains_key(&ino)
    }

    /// Give the attached directory `ino` its first listing.
    pub fn set_listing(&mut self, ino: Ino, listing: Listing) {
        let dir = self.inodes.get(&ino);
        if dir.is_some_and(|i| i.kind == Kind::Dir && i.path.is_some()) {
            self.listings.insert(ino, listing);
        }
    }

    /// Watchers were shown `seen` at `path` (`None`: nothing there), if its directory has a
    /// listing.
    pub fn saw(&mut self, path: &[String], seen: Option<Seen>) {
        let Some((name, dir)) = path.split_last() else {
            return;
        };
        let Some(listing) = self.ino(dir).and_then(|ino| self.listings.get_mut(&ino)) else {
            return;
        };
        match seen {
            Some(seen) => listing.insert(name.clone(), seen),
            None => listing.remove(name),
        };
    }

    /// [`Table::saw`], if watchers were last shown `was` at `path`: a local change applied
    /// since (which updated the listing itself) is not overwritten by an older replay.
    pub fn saw_if(&mut self, path: &[String], was: Option<Seen>, seen: Option<Seen>) {
        let Some((name, dir)) = path.split_last() else {
            return;
        };
        let listed = self
            .ino(dir)
            .and_then(|ino| self.listings.get(&ino))
            .map(|listing| listing.get(name).copied());
        if listed == Some(was) {
            self.saw(path, seen);
        }
    }

    /// The attached paths at `path` and below whose directories have listings, `path` first.
    pub fn listed_subtree(&self, path: &[String]) -> Vec<Vec<String>> {
        self.subtree(path)
            .into_iter()
            .filter(|(_, ino)| self.listings.contains_key(ino))
            .map(|(p, _)| p)
            .collect()
    }

    fn detach_one(&mut self, ino: Ino) {
        self.listings.remove(&ino);
        if let Some(inode) = self.inodes.get_mut(&ino) {
            if let Some(path) = inode.path.take() {
                if self.by_path.get(&path) == Some(&ino) {
                    self.by_path.remove(&path);
                }
            }
        }
    }
}

fn inode(path: Vec<String>, kind: Kind) -> Inode {
    Inode {
        path: Some(path),
        kind,
        lookups: 0,
        local: None,
        served: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_path as p;

    /// The invariant tying the two maps together.
    fn check(t: &Table) {
        for (path, ino) in &t.by_path {
            assert_eq!(t.inodes[ino].path.as_ref(), Some(path));
        }
        for (ino, inode) in &t.inodes {
            if let Some(path) = &inode.path {
                assert_eq!(t.by_path.get(path), Some(ino));
            }
        }
    }

    #[test]
    fn paths_keep_their_inode_until_forgotten() {
        let mut t = Table::new();
        let a = t.intern(&p("a"), Kind::Dir);
        t.looked_up(a);
        let b = t.intern(&p("a/b"), Kind::File);
        t.looked_up(b);
        t.looked_up(b);
        assert_eq!(t.intern(&p("a/b"), Kind::File), b);
        assert_eq!(t.ino(&p("a/b")), Some(b));
        t.forget(b, 1);
        assert_eq!(t.ino(&p("a/b")), Some(b));
        t.forget(b, 1);
        assert_eq!(t.ino(&p("a/b")), None);
        assert!(t.get(b).is_none());
        t.forget(ROOT, 10);
        assert_eq!(t.ino(&[]), Some(ROOT));
        check(&t);
    }

    #[test]
    fn a_path_that_changes_kind_gets_a_new_inode() {
        let mut t = Table::new();
        let f = t.intern(&p("a"), Kind::File);
        t.looked_up(f);
        let d = t.intern(&p("a"), Kind::Dir);
        assert_ne!(f, d);
        assert_eq!(t.get(f).unwrap().path, None);
        assert_eq!(t.path(d), Some(&p("a")));
        check(&t);
    }

    #[test]
    fn rename_moves_a_subtree_and_detaches_the_target() {
        let mut t = Table::new();
        let a = t.intern(&p("a"), Kind::Dir);
        let ab = t.intern(&p("a/b"), Kind::File);
        let ab2 = t.intern(&p("ab"), Kind::File);
        t.looked_up(ab2);
        let c = t.intern(&p("c"), Kind::Dir);
        t.looked_up(c);
        let replaced = t.rename(&p("a"), &p("c"));
        assert_eq!(replaced, vec![(c, None)]);
        assert_eq!(t.path(a), Some(&p("c")));
        assert_eq!(t.path(ab), Some(&p("c/b")));
        assert_eq!(
            t.path(ab2),
            Some(&p("ab")),
            "a sibling sharing a prefix stays"
        );
        assert_eq!(t.get(c).unwrap().path, None);
        assert_eq!(t.ino(&p("a")), None);
        check(&t);
    }

    #[test]
    fn local_files_outlive_lookups_but_not_detach() {
        let mut t = Table::new();
        let s = t.intern(&p("d/.x.swp"), Kind::File);
        t.get_mut(s).unwrap().local = Some(Local::Pending);
        t.looked_up(s);
        t.forget(s, 1);
        assert_eq!(t.ino(&p("d/.x.swp")), Some(s));
        assert_eq!(t.local_children(&p("d")), vec![(".x.swp".to_owned(), s)]);
        assert!(t.local_children(&[]).is_empty());
        assert_eq!(t.detach(&p("d")), vec![(s, Some(Local::Pending))]);
        assert!(t.get(s).is_none());
        check(&t);
    }
}
