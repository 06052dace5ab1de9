//! What a plugin's `store.get` and `store.list` see: the committed store ([`Committed`]), or
//! the store as it will be once a write is accepted ([`After`]: the committed store with the
//! write's puts and deletes laid over it, in order). Keys under `/.herd` are never visible.

use super::host::StoreView;
use crate::db::{now_ms, Db};
use crate::store::{self, Path, INTERNAL};
use serde_json::{Map, Value};

fn user_path(s: &str) -> Option<Path> {
    let p = Path::parse(s).ok()?;
    (p.first() != Some(INTERNAL)).then_some(p)
}

fn committed_get(db: &Db, p: &Path) -> Option<String> {
    let mut out = String::new();
    db.read()
        .store
        .render(p.key(), now_ms(), &mut out)
        .then_some(out)
}

fn committed_list(db: &Db, p: &Path) -> Vec<String> {
    match db.read().store.children(p.key(), now_ms()) {
        Some(Ok(kids)) => kids
            .into_iter()
            .filter(|(n, _)| !(p.is_root() && n == INTERNAL))
            .map(|(n, dir)| if dir { format!("{n}/") } else { n })
            .collect(),
        _ => Vec::new(),
    }
}

/// The committed store.
pub struct Committed(pub Db);

impl StoreView for Committed {
    fn get(&self, path: &str) -> Option<String> {
        committed_get(&self.0, &user_path(path)?)
    }
    fn list(&self, path: &str) -> Vec<String> {
        user_path(path).map_or_else(Vec::new, |p| committed_list(&self.0, &p))
    }
}

/// One put (`Some`) or delete (`None`) of a write, as hooks see it.
#[derive(Debug, Clone)]
pub struct Write {
    pub path: Path,
    pub value: Option<Value>,
}

/// The committed store with `writes` applied in order.
pub struct After {
    pub db: Db,
    pub writes: Vec<Write>,
}

/// The segments of `inner` below `outer`, if `outer` contains it.
pub fn relative<'a>(outer: &Path, inner: &'a Path) -> Option<Vec<&'a str>> {
    outer
        .contains(inner)
        .then(|| inner.segments().skip(outer.depth()).collect())
}

/// The value at `rel` inside `v`.
pub fn at<'a>(v: &'a Value, rel: &[&str]) -> Option<&'a Value> {
    rel.iter().try_fold(v, |v, seg| v.as_object()?.get(*seg))
}

/// Sets (`Some`) or removes (`None`) the value at `rel` inside `v`, making objects on the way.
pub fn set_at(v: &mut Value, rel: &[&str], new: Option<Value>) {
    let Some((last, parents)) = rel.split_last() else {
        if let Some(n) = new {
            *v = n;
        }
        return;
    };
    let mut cur = v;
    for seg in parents {
        if !cur.is_object() {
            if new.is_none() {
                return;
            }
            *cur = Value::Object(Map::new());
        }
        let Value::Object(m) = cur else { return };
        cur = m
            .entry(seg.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    match new {
        Some(n) => {
            if !cur.is_object() {
                *cur = Value::Object(Map::new());
            }
            if let Value::Object(m) = cur {
                m.insert(last.to_string(), n);
            }
        }
        None => {
            if let Value::Object(m) = cur {
                m.remove(*last);
            }
        }
    }
}

impl After {
    /// The value at `p` once every write is applied.
    fn value(&self, p: &Path) -> Option<Value> {
        // The last write at or above `p` decides the base; later writes below `p` edit it.
        let start = self.writes.iter().rposition(|w| w.path.contains(p));
        let mut v = match start {
            Some(i) => {
                let w = &self.writes[i];
                let rel = relative(&w.path, p).unwrap_or_default();
                w.value.as_ref().and_then(|v| at(v, &rel)).cloned()
            }
            None => committed_get(&self.db, p).and_then(|t| serde_json::from_str(&t).ok()),
        };
        for w in &self.writes[start.map_or(0, |i| i + 1)..] {
            let Some(rel) = relative(p, &w.path) else {
                continue;
            };
            match (&mut v, &w.value) {
                (Some(base), new) => set_at(base, &rel, new.clone()),
                (None, Some(new)) => {
                    let mut base = Value::Object(Map::new());
                    set_at(&mut base, &rel, Some(new.clone()));
                    v = Some(base);
                }
                (None, None) => {}
            }
        }
        v
    }

    /// True if some write touches `p` or something below it.
    fn touches(&self, p: &Path) -> bool {
        self.writes
            .iter()
            .any(|w| w.path.contains(p) || p.contains(&w.path))
    }
}

impl StoreView for After {
    fn get(&self, path: &str) -> Option<String> {
        let p = user_path(path)?;
        if !self.touches(&p) {
            return committed_get(&self.db, &p);
        }
        self.value(&p).map(|v| store::value::to_text(&v).into())
    }

    fn list(&self, path: &str) -> Vec<String> {
        let Some(p) = user_path(path) else {
            return Vec::new();
        };
        if !self.touches(&p) {
            return committed_list(&self.db, &p);
        }
        match self.value(&p) {
            Some(Value::Object(m)) => {
                let mut names: Vec<String> = m
                    .iter()
                    .filter(|(k, _)| !(p.is_root() && k.as_str() == INTERNAL))
                    .map(|(k, v)| {
                        if v.is_object() {
                            format!("{k}/")
                        } else {
                            k.clone()
                        }
                    })
                    .collect();
                names.sort();
                names
            }
            _ => Vec::new(),
        }
    }
}
