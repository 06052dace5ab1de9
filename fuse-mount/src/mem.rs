//! An in-memory [`Backend`]: one JSON document behind a mutex, with the store's rules that the
//! file view relies on (atomic batches, a size limit, reserved `/.herd`, read-only paths, a
//! pluggable validator standing in for plugins). For tests and the `memfs` example; knows
//! nothing of FUSE.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::backend::{Backend, Change, ChangeSink, Child, Error, ErrorKind, Node, Op, Segments};

/// A validator: `Err` refuses a put of this value at this path (like a plugin would).
pub type Validator = Box<dyn Fn(&Segments, &Value) -> Result<(), Error> + Send + Sync>;

/// The in-memory store.
pub struct MemBackend {
    /// The document, its modification times and subscribers.
    state: Mutex<State>,
    /// The largest value accepted, in bytes of compact JSON.
    max_value_bytes: usize,
    /// Refuses values as a plugin would.
    validator: Option<Validator>,
}

#[derive(Default)]
struct State {
    /// The whole document (always an object).
    root: Map<String, Value>,
    /// Milliseconds of the last put or delete of each path (it covers what is below).
    written: BTreeMap<Vec<String>, u64>,
    /// Milliseconds of the last change strictly below each directory.
    changed_below: BTreeMap<Vec<String>, u64>,
    /// Paths (and what is below them) that refuse writes.
    read_only: BTreeSet<Vec<String>>,
    /// Who to tell about changes.
    sinks: Vec<ChangeSink>,
}

impl Default for MemBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemBackend {
    /// An empty store accepting values up to 1 MiB.
    pub fn new() -> Self {
        MemBackend {
            state: Mutex::new(State::default()),
            max_value_bytes: 1 << 20,
            validator: None,
        }
    }

    /// Set the value size limit in bytes.
    pub fn with_max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// Refuse puts the validator refuses.
    pub fn with_validator(mut self, validator: Validator) -> Self {
        self.validator = Some(validator);
        self
    }

    /// Make `path` and everything below it read-only (`EROFS` on write).
    pub fn set_read_only(&self, path: &Segments) {
        self.lock().read_only.insert(path.to_vec());
    }

    /// The modification time of a path: its last write or an ancestor's, and for a
    /// directory also the last change below it.
    fn mtime(state: &State, path: &Segments, dir: bool) -> u64 {
        let own = (0..=path.len())
            .filter_map(|i| state.written.get(&path[..i]))
            .max()
            .copied()
            .unwrap_or(0);
        let below = if dir {
            state.changed_below.get(path).copied().unwrap_or(0)
        } else {
            0
        };
        own.max(below)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn validate(&self, state: &State, path: &Segments, value: Option<&Value>) -> Result<(), Error> {
        if path.first().is_some_and(|s| s == ".herd") {
            return Err(Error::new(ErrorKind::ReadOnly, "/.herd is reserved"));
        }
        if let Some(bad) = path
            .iter()
            .find(|s| s.is_empty() || *s == "." || *s == ".." || s.contains('\0'))
        {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("key segment {bad:?} is not allowed"),
            ));
        }
        if state
            .read_only
            .iter()
            .any(|ro| path.starts_with(ro) || ro.starts_with(path))
        {
            return Err(Error::new(ErrorKind::ReadOnly, "the key is read-only"));
        }
        if let Some(value) = value {
            let size = value.to_string().len();
            if size > self.max_value_bytes {
                let limit = self.max_value_bytes;
                return Err(Error::new(
                    ErrorKind::TooBig,
                    format!("value is {size} bytes, the limit is {limit}"),
                ));
            }
            if let Some(validator) = &self.validator {
                validator(path, value)?;
            }
        }
        Ok(())
    }
}

fn lookup<'a>(root: &'a Map<String, Value>, path: &Segments) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(root.get(first)?, |v, s| v.as_object()?.get(s))
}

fn put(root: &mut Map<String, Value>, path: &Segments, value: Value) {
    let Some((last, parents)) = path.split_last() else {
        if let Value::Object(map) = value {
            *root = map;
        }
        return;
    };
    let mut at = root;
    for segment in parents {
        let slot = at.entry(segment.clone()).or_insert_with(|| json!({}));
        if !slot.is_object() {
            *slot = json!({});
        }
        let Value::Object(map) = slot else { return };
        at = map;
    }
    at.insert(last.clone(), value);
}

fn delete(root: &mut Map<String, Value>, path: &Segments) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut at = root;
    for segment in parents {
        match at.get_mut(segment) {
            Some(Value::Object(map)) => at = map,
            _ => return false,
        }
    }
    at.remove(last).is_some()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Backend for MemBackend {
    fn get(&self, path: &Segments) -> Result<Option<Node>, Error> {
        let state = self.lock();
        let read_only = state.read_only.iter().any(|ro| path.starts_with(ro));
        if path.is_empty() {
            let mtime_ms = Self::mtime(&state, path, true);
            return Ok(Some(Node::Dir {
                mtime_ms,
                read_only,
            }));
        }
        Ok(lookup(&state.root, path).map(|v| match v {
            Value::Object(_) => Node::Dir {
                mtime_ms: Self::mtime(&state, path, true),
                read_only,
            },
            leaf => Node::Leaf {
                value: leaf.clone(),
                mtime_ms: Self::mtime(&state, path, false),
                read_only,
            },
        }))
    }

    fn list(&self, path: &Segments) -> Result<Vec<Child>, Error> {
        let state = self.lock();
        let map = if path.is_empty() {
            &state.root
        } else {
            match lookup(&state.root, path) {
                Some(Value::Object(map)) => map,
                Some(_) => return Err(Error::new(ErrorKind::Invalid, "not a directory")),
                None => return Err(Error::new(ErrorKind::NotFound, "nothing at the path")),
            }
        };
        let mut children: Vec<Child> = map
            .iter()
            .map(|(name, v)| Child {
                name: name.clone(),
                is_dir: v.is_object(),
            })
            .collect();
        children.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(children)
    }

    fn read(&self, path: &Segments) -> Result<Option<Value>, Error> {
        let state = self.lock();
        if path.is_empty() {
            return Ok(Some(Value::Object(state.root.clone())));
        }
        Ok(lookup(&state.root, path).cloned())
    }

    fn check(&self, path: &Segments, value: &Value) -> Result<(), Error> {
        let state = self.lock();
        self.validate(&state, path, Some(value))
    }

    fn apply(&self, ops: Vec<Op>) -> Result<(), Error> {
        tracing::debug!(?ops, "memory store: apply");
        let (changes, sinks) = {
            let mut state = self.lock();
            let mut root = state.root.clone();
            let mut changes = Vec::new();
            for op in &ops {
                match op {
                    Op::Put(path, value) => {
                        self.validate(&state, path, Some(value))?;
                        if path.is_empty() && !value.is_object() {
                            return Err(Error::new(
                                ErrorKind::Invalid,
                                "the root must be an object",
                            ));
                        }
                        put(&mut root, path, value.clone());
                        changes.push(path.clone());
                    }
                    Op::Delete(path) => {
                        self.validate(&state, path, None)?;
                        if !delete(&mut root, path) {
                            return Err(Error::new(ErrorKind::NotFound, "nothing at the path"));
                        }
                        changes.push(path.clone());
                    }
                }
            }
            state.root = root;
            let now = now_ms();
            for path in &changes {
                state.written.insert(path.clone(), now);
                for i in 0..path.len() {
                    state.changed_below.insert(path[..i].to_vec(), now);
                }
            }
            (changes, state.sinks.clone())
        };
        for path in changes {
            for sink in &sinks {
                sink(Change::Path(path.clone()));
            }
        }
        Ok(())
    }

    fn subscribe(&self, sink: ChangeSink) {
        self.lock().sinks.push(sink);
    }

    fn status(&self) -> Value {
        let state = self.lock();
        json!({ "backend": "memory", "top_level_keys": state.root.len() })
    }

    fn max_value_bytes(&self) -> usize {
        self.max_value_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_path as p;

    #[test]
    fn batches_are_all_or_nothing() {
        let b = MemBackend::new();
        b.apply(vec![Op::Put(p("a/b"), json!(1))]).unwrap();
        let err = b.apply(vec![Op::Delete(p("a/b")), Op::Put(p(".herd/x"), json!(2))]);
        assert_eq!(err.unwrap_err().kind, ErrorKind::ReadOnly);
        assert_eq!(b.read(&p("a")).unwrap(), Some(json!({"b": 1})));
        b.apply(vec![Op::Delete(p("a/b")), Op::Put(p("c"), json!(2))])
            .unwrap();
        assert_eq!(b.read(&[]).unwrap(), Some(json!({"a": {}, "c": 2})));
    }

    #[test]
    fn a_put_below_a_leaf_makes_it_a_directory() {
        let b = MemBackend::new();
        b.apply(vec![Op::Put(p("a"), json!(1))]).unwrap();
        b.apply(vec![Op::Put(p("a/b"), json!(2))]).unwrap();
        assert!(matches!(b.get(&p("a")).unwrap(), Some(Node::Dir { .. })));
        assert_eq!(
            b.list(&p("a")).unwrap(),
            vec![Child {
                name: "b".into(),
                is_dir: false
            }]
        );
    }

    #[test]
    fn limits_and_validator_refuse() {
        let b = MemBackend::new()
            .with_max_value_bytes(4)
            .with_validator(Box::new(|_, v| match v.as_str() {
                Some("no") => Err(Error::new(ErrorKind::Invalid, "no")),
                _ => Ok(()),
            }));
        assert_eq!(
            b.check(&p("a"), &json!("12345")).unwrap_err().kind,
            ErrorKind::TooBig
        );
        assert_eq!(
            b.check(&p("a"), &json!("no")).unwrap_err().kind,
            ErrorKind::Invalid
        );
        b.set_read_only(&p("ro"));
        assert_eq!(
            b.check(&p("ro/x"), &json!(1)).unwrap_err().kind,
            ErrorKind::ReadOnly
        );
        assert!(b.check(&p("a"), &json!(1)).is_ok());
    }
}
