//! Changes to the tree: mkdir, unlink, rmdir and rename, each one atomic `apply` of the store
//! (or none, for local scratch files). Renaming a key to a scratch name (an editor's backup
//! on save) copies its value into a local file and defers the key's deletion until that file
//! is unlinked, unless the key is re-created first, so peers never see the key vanish.

use serde_json::{Map, Value};

use super::open::{new_scratch, set_local};
use super::{child, control, fingerprint, lock, Errno, Found, Fs, Result, Stat};
use crate::backend::{self, Node, Op};
use crate::content::{decode, encode};
use crate::scratch::is_scratch;
use crate::table::{Ino, Kind, Local, Seen};

/// `renameat2` flags (linux/fs.h).
const RENAME_NOREPLACE: u32 = 1 << 0;
const RENAME_EXCHANGE: u32 = 1 << 1;
const RENAME_WHITEOUT: u32 = 1 << 2;

impl Fs {
    /// `mkdir`: stores an empty object.
    pub fn mkdir(&mut self, parent: Ino, name: &str) -> Result<Stat> {
        let table = std::sync::Arc::clone(&self.table);
        let mut t = lock(&table);
        let path = child(&self.dir_path(&t, parent)?, name);
        if control::is_control(&path) {
            return Err(self.reject(&path, libc::EROFS, "/.herd is read-only"));
        }
        if self.resolve(&t, &path)?.is_some() {
            return Err(Errno(libc::EEXIST));
        }
        if crate::documents::is_document(name) {
            let why = "a *.json key is a file (a JSON document), not a directory";
            return Err(self.reject(&path, libc::EPERM, why));
        }
        self.apply(
            &mut t,
            &path,
            vec![Op::Put(path.clone(), Value::Object(Map::new()))],
        )?;
        self.hidden.remove(&path);
        drop(t);
        self.lookup(parent, name)
    }

    /// `unlink`: deletes a key, or drops a local file (carrying out its deferred deletion).
    pub fn unlink(&mut self, parent: Ino, name: &str) -> Result<()> {
        let table = std::sync::Arc::clone(&self.table);
        let mut t = lock(&table);
        let path = child(t.path(parent).ok_or(Errno(libc::ENOENT))?, name);
        match self.resolve(&t, &path)?.ok_or(Errno(libc::ENOENT))? {
            Found::Control(_) => Err(self.reject(&path, libc::EROFS, "/.herd is read-only")),
            Found::Key(Node::Dir { .. }) => Err(Errno(libc::EISDIR)),
            Found::Key(Node::Leaf { .. }) => {
                self.apply(&mut t, &path, vec![Op::Delete(path.clone())])?;
                t.detach(&path);
                Ok(())
            }
            Found::Scratch(_) | Found::Pending(_) => {
                let dropped = t.detach(&path);
                drop(t);
                self.retire(dropped);
                Ok(())
            }
        }
    }

    /// `rmdir`: deletes an empty directory.
    pub fn rmdir(&mut self, parent: Ino, name: &str) -> Result<()> {
        let table = std::sync::Arc::clone(&self.table);
        let mut t = lock(&table);
        let path = child(t.path(parent).ok_or(Errno(libc::ENOENT))?, name);
        match self.resolve(&t, &path)?.ok_or(Errno(libc::ENOENT))? {
            Found::Control(_) => Err(self.reject(&path, libc::EROFS, "/.herd is read-only")),
            Found::Key(Node::Dir { .. }) => {
                if !self.children(&t, &path)?.is_empty() {
                    return Err(Errno(libc::ENOTEMPTY));
                }
                self.apply(&mut t, &path, vec![Op::Delete(path.clone())])?;
                self.hidden.retain(|h| !h.starts_with(&path));
                t.detach(&path);
                Ok(())
            }
            _ => Err(Errno(libc::ENOTDIR)),
        }
    }

    /// `rename` (`flags`: `RENAME_NOREPLACE` is honoured, exchange and whiteout are refused).
    pub fn rename(
        &mut self,
        parent: Ino,
        name: &str,
        new_parent: Ino,
        new_name: &str,
        flags: u32,
    ) -> Result<()> {
        if flags & (RENAME_EXCHANGE | RENAME_WHITEOUT) != 0 {
            return Err(Errno(libc::EINVAL));
        }
        let table = std::sync::Arc::clone(&self.table);
        let mut t = lock(&table);
        let from = child(t.path(parent).ok_or(Errno(libc::ENOENT))?, name);
        let to = child(&self.dir_path(&t, new_parent)?, new_name);
        if control::is_control(&from) || control::is_control(&to) {
            return Err(self.reject(&to, libc::EROFS, "/.herd is read-only"));
        }
        if from == to {
            return Ok(());
        }
        if to.starts_with(&from) {
            return Err(Errno(libc::EINVAL));
        }
        let src = self.resolve(&t, &from)?.ok_or(Errno(libc::ENOENT))?;
        let dst = self.resolve(&t, &to)?;
        if flags & RENAME_NOREPLACE != 0 && dst.is_some() {
            return Err(Errno(libc::EEXIST));
        }
        match (src.kind(), dst.as_ref().map(Found::kind)) {
            (Kind::Dir, Some(Kind::File)) => return Err(Errno(libc::ENOTDIR)),
            (Kind::File, Some(Kind::Dir)) => return Err(Errno(libc::EISDIR)),
            (Kind::Dir, Some(Kind::Dir)) if !self.children(&t, &to)?.is_empty() => {
                return Err(Errno(libc::ENOTEMPTY))
            }
            _ => {}
        }
        let to_local = matches!(dst, Some(Found::Scratch(_)))
            || (dst.is_none() && src.kind() == Kind::File && is_scratch(new_name));
        let replaced = match src {
            Found::Control(_) => return Err(Errno(libc::EROFS)),
            Found::Scratch(ino) if !to_local => {
                let (content, origin) = match t.get(ino).and_then(|i| i.local.clone()) {
                    Some(Local::Scratch {
                        content, origin, ..
                    }) => (content, origin),
                    _ => (Vec::new(), None),
                };
                if self.is_unchanged_backup(&to, origin.as_ref(), &content) {
                    let file = Seen {
                        kind: Kind::File,
                        content: Some(fingerprint(&content)),
                    };
                    t.saw(&to, Some(file));
                } else {
                    let value = decode(&content)
                        .map_err(|e| self.reject(&to, libc::EINVAL, &e.to_string()))?;
                    let mut ops = vec![Op::Put(to.clone(), value)];
                    let fired = origin.filter(|o| o != &to && self.hidden.contains(o));
                    if let Some(o) = &fired {
                        ops.push(Op::Delete(o.clone()));
                    }
                    self.apply(&mut t, &to, ops)?;
                    if let Some(o) = &fired {
                        self.hidden.remove(o);
                    }
                }
                self.hidden.remove(&to);
                let replaced = t.rename(&from, &to);
                if let Some(inode) = t.get_mut(ino) {
                    (inode.local, inode.served) = (None, None);
                }
                replaced
            }
            Found::Scratch(_) => t.rename(&from, &to),
            Found::Pending(ino) => {
                let replaced = t.rename(&from, &to);
                if to_local {
                    set_local(&mut t, ino, new_scratch(Vec::new(), None));
                }
                replaced
            }
            Found::Key(Node::Leaf { value, .. }) if to_local => {
                t.saw(&from, None);
                let replaced = t.rename(&from, &to);
                let ino = t.intern(&to, Kind::File);
                set_local(&mut t, ino, new_scratch(encode(&value), Some(from.clone())));
                self.hidden.insert(from);
                replaced
            }
            Found::Key(node) => {
                let value = match self.backend.read(&from) {
                    Ok(Some(value)) => value,
                    Ok(None) => return Err(Errno(libc::ENOENT)),
                    Err(e) => return Err(self.refused(&from, &e)),
                };
                let value = match node {
                    Node::Dir { .. } => self.without_hidden(&from, value),
                    Node::Leaf { .. } => value,
                };
                // A *.json file holds its object whole; under another name an object is a
                // directory (and a directory under a *.json name a file): the kind would
                // change under the kernel's feet.
                let doc = crate::documents::is_document;
                if value.is_object() && doc(name) != doc(new_name) {
                    let why = "renaming would turn a JSON document into a directory or back";
                    return Err(self.reject(&to, libc::EPERM, why));
                }
                let dir = matches!(node, Node::Dir { .. }).then(|| value.clone());
                self.apply(
                    &mut t,
                    &to,
                    vec![Op::Delete(from.clone()), Op::Put(to.clone(), value)],
                )?;
                self.hidden.retain(|h| !h.starts_with(&from));
                self.hidden.remove(&to);
                let replaced = t.rename(&from, &to);
                if let Some(value) = dir {
                    self.saw_object(&mut t, &to, &value);
                }
                replaced
            }
        };
        drop(t);
        self.retire(replaced);
        Ok(())
    }

    /// Is this a backup renamed back onto the key it came from, unchanged (an editor
    /// restoring after a failed save)? Then the key only needs to reappear: no write.
    fn is_unchanged_backup(
        &self,
        to: &[String],
        origin: Option<&Vec<String>>,
        content: &[u8],
    ) -> bool {
        origin.is_some_and(|o| o.as_slice() == to)
            && self.hidden.contains(to)
            && matches!(self.backend.get(to), Ok(Some(Node::Leaf { value, .. })) if encode(&value) == content)
    }

    /// A directory's value without the hidden keys below it (their deletion is due anyway).
    fn without_hidden(&self, dir: &[String], mut value: Value) -> Value {
        for hidden in self
            .hidden
            .iter()
            .filter(|h| h.starts_with(dir) && h.len() > dir.len())
        {
            let rel = &hidden[dir.len()..];
            let Some((last, parents)) = rel.split_last() else {
                continue;
            };
            let pointer: String = parents
                .iter()
                .map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1")))
                .collect();
            if let Some(obj) = value.pointer_mut(&pointer).and_then(Value::as_object_mut) {
                obj.remove(last.as_str());
            }
        }
        value
    }

    /// Local files that stopped existing: carry out the deletions they deferred.
    pub(super) fn retire(&mut self, dropped: Vec<(Ino, Option<Local>)>) {
        for (_, local) in dropped {
            if let Some(Local::Scratch {
                origin: Some(origin),
                ..
            }) = local
            {
                if self.hidden.remove(&origin) {
                    self.delete_deferred(&origin);
                }
            }
        }
    }

    /// Delete a key whose deletion was deferred; it may be gone already.
    pub(super) fn delete_deferred(&mut self, path: &[String]) {
        match self.backend.apply(vec![Op::Delete(path.to_vec())]) {
            Ok(()) => {}
            Err(e) if e.kind == backend::ErrorKind::NotFound => {}
            Err(e) => {
                self.refused(path, &e);
            }
        }
    }
}
