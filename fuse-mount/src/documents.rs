//! JSON documents: a key whose name ends in `.json` is always a *file* on the mount, even when
//! it holds an object. Tools that copy trees of configuration files (rsync, configuration
//! management, `tar`, `install`) expect a file to stay a file; without this rule a file
//! `app.json` holding an object would come back as a directory, and the next copy of the same
//! tree would fail (rsync exit 23). So such a key reads as its whole value (compact JSON), and
//! writing it stores the value as usual: an object is still a subtree in the store, visible as
//! one over REST and to watchers (`GET /app.json/db/port` works). Other names keep the rule of
//! the view: an object is a directory.
//!
//! The rule is applied by wrapping the backend ([`Documents`]), so every part of the file view
//! (lookups, listings, the write path, invalidation and the inotify replay) sees one answer.

use std::sync::Arc;

use serde_json::Value;

use crate::backend::{Backend, Change, ChangeSink, Child, Error, ErrorKind, Node, Op, Segments};

/// True if a key with this name is shown as a file whatever it holds.
pub fn is_document(name: &str) -> bool {
    name.len() > ".json".len() && name.ends_with(".json")
}

/// The index of the first segment of `path` that is a document, if any.
fn document_at(path: &Segments) -> Option<usize> {
    path.iter().position(|s| is_document(s))
}

/// A backend whose `*.json` keys are files (see the module docs).
pub(crate) struct Documents(pub Arc<dyn Backend>);

impl Documents {
    /// Inside a document (`app.json/db`): not a path of the view.
    fn inside(path: &Segments) -> bool {
        document_at(path).is_some_and(|i| i + 1 < path.len())
    }
}

impl Backend for Documents {
    fn get(&self, path: &Segments) -> Result<Option<Node>, Error> {
        if Self::inside(path) {
            return Ok(None);
        }
        match self.0.get(path)? {
            Some(Node::Dir {
                mtime_ms,
                read_only,
            }) if path.last().is_some_and(|n| is_document(n)) => {
                let Some(value) = self.0.read(path)? else {
                    return Ok(None);
                };
                Ok(Some(Node::Leaf {
                    value,
                    mtime_ms,
                    read_only,
                }))
            }
            other => Ok(other),
        }
    }

    fn is_dir(&self, path: &Segments) -> Result<Option<bool>, Error> {
        if Self::inside(path) {
            return Ok(None);
        }
        let found = self.0.is_dir(path)?;
        Ok(match path.last() {
            Some(n) if is_document(n) => found.map(|_| false),
            _ => found,
        })
    }

    fn list(&self, path: &Segments) -> Result<Vec<Child>, Error> {
        if Self::inside(path) {
            return Err(Error::new(ErrorKind::NotFound, "inside a JSON document"));
        }
        if path.last().is_some_and(|n| is_document(n)) {
            return Err(Error::new(
                ErrorKind::Invalid,
                "a *.json key is a file, not a directory",
            ));
        }
        let mut children = self.0.list(path)?;
        for c in &mut children {
            if is_document(&c.name) {
                c.is_dir = false;
            }
        }
        Ok(children)
    }

    fn read(&self, path: &Segments) -> Result<Option<Value>, Error> {
        self.0.read(path)
    }

    fn check(&self, path: &Segments, value: &Value) -> Result<(), Error> {
        self.0.check(path, value)
    }

    fn apply(&self, ops: Vec<Op>) -> Result<(), Error> {
        self.0.apply(ops)
    }

    fn subscribe(&self, sink: ChangeSink) {
        // A change inside a document is a change of the document's file.
        self.0.subscribe(Arc::new(move |change| match change {
            Change::Path(mut p) => {
                if let Some(i) = document_at(&p) {
                    p.truncate(i + 1);
                }
                sink(Change::Path(p))
            }
            Change::All => sink(Change::All),
        }));
    }

    fn status(&self) -> Value {
        self.0.status()
    }

    fn max_value_bytes(&self) -> usize {
        self.0.max_value_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemBackend;
    use crate::test_path as p;
    use serde_json::json;

    #[test]
    fn a_json_named_key_is_a_file_whatever_it_holds() {
        let mem = Arc::new(MemBackend::new());
        mem.apply(vec![Op::Put(
            Vec::new(),
            json!({"app.json": {"db": {"port": 1}}, "dir": {"x.json": [1], "y": 2}, ".json": {}}),
        )])
        .unwrap();
        let d = Documents(mem);
        match d.get(&p("app.json")).unwrap() {
            Some(Node::Leaf { value, .. }) => assert_eq!(value, json!({"db": {"port": 1}})),
            other => panic!("{other:?}"),
        }
        assert_eq!(d.is_dir(&p("app.json")).unwrap(), Some(false));
        assert_eq!(d.get(&p("app.json/db")).unwrap(), None);
        assert_eq!(d.is_dir(&p("app.json/db")).unwrap(), None);
        assert_eq!(d.list(&p("app.json")).unwrap_err().kind, ErrorKind::Invalid);
        let root = d.list(&[]).unwrap();
        let kinds: Vec<(&str, bool)> = root.iter().map(|c| (c.name.as_str(), c.is_dir)).collect();
        assert_eq!(kinds, [(".json", true), ("app.json", false), ("dir", true)]);
        assert_eq!(d.is_dir(&p("dir")).unwrap(), Some(true));
    }
}
