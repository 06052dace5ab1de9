//! What a plugin's `store.get` and `store.list` see: the committed store ([`Committed`]), or
//! the store as it will be once a write is accepted ([`After`]: the committed store with the
//! write's puts and deletes laid over it, in order). Keys under `/.herd` are never visible.

use super::host::StoreView;
use crate::clock::now_ms;
use crate::db::Db;
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
pub struct Committed {
    pub db: Db,
    /// A derive plugin's output prefix and its current outputs: what it reads there (not
    /// whatever the store may hold under it).
    pub own: Option<(Path, Value)>,
}

impl Committed {
    /// What the plugin reads at `p` if `p` is at or below its output prefix.
    fn own(&self, p: &Path) -> Option<Option<&Value>> {
        let (prefix, tree) = self.own.as_ref()?;
        let rel = relative(prefix, p)?;
        Some(at(tree, &rel))
    }
}

impl StoreView for Committed {
    fn get(&self, path: &str) -> Option<String> {
        let p = user_path(path)?;
        match self.own(&p) {
            Some(v) => v.map(|v| store::value::to_text(v).into()),
            None => committed_get(&self.db, &p),
        }
    }
    fn list(&self, path: &str) -> Vec<String> {
        let Some(p) = user_path(path) else {
            return Vec::new();
        };
        match self.own(&p) {
            Some(v) => v.map_or_else(Vec::new, child_names),
            None => committed_list(&self.db, &p),
        }
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
        if new.is_none() {
            // A removal never creates anything on its way.
            match cur.as_object_mut().and_then(|m| m.get_mut(*seg)) {
                Some(next) => cur = next,
                None => return,
            }
            continue;
        }
        if !cur.is_object() {
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
        let mut names = self.value(&p).as_ref().map_or_else(Vec::new, child_names);
        if p.is_root() {
            names.retain(|n| n.trim_end_matches('/') != INTERNAL);
        }
        names
    }
}

/// The children of an object value as `store.list` and `?keys` name them: sorted, objects with
/// a trailing `/`. Empty for anything but an object.
pub fn child_names(v: &Value) -> Vec<String> {
    let Value::Object(m) = v else {
        return Vec::new();
    };
    let mut names: Vec<String> = m
        .iter()
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_edited_at_relative_paths() {
        let mut v = json!({"db": {"port": 1}});
        set_at(&mut v, &["db", "host"], Some(json!("h")));
        set_at(&mut v, &["web", "tls", "on"], Some(json!(true)));
        set_at(&mut v, &["db", "port"], None);
        set_at(&mut v, &["nothing", "here"], None);
        assert_eq!(
            v,
            json!({"db": {"host": "h"}, "web": {"tls": {"on": true}}})
        );
        assert_eq!(at(&v, &["web", "tls"]), Some(&json!({"on": true})));
        assert_eq!(at(&v, &["db", "host", "deeper"]), None);
        // A leaf in the way becomes an object; the empty path replaces the whole value.
        let mut leaf = json!(5);
        set_at(&mut leaf, &["a"], Some(json!(1)));
        assert_eq!(leaf, json!({"a": 1}));
        set_at(&mut leaf, &[], Some(json!("x")));
        assert_eq!(leaf, json!("x"));
    }

    #[test]
    fn relative_paths_are_segment_wise() {
        let p = |s: &str| Path::parse(s).unwrap();
        assert_eq!(
            relative(&p("/app"), &p("/app/db/port")),
            Some(vec!["db", "port"])
        );
        assert_eq!(relative(&p("/app"), &p("/app")), Some(vec![]));
        assert_eq!(relative(&p("/app/db"), &p("/app/dbx")), None);
        assert_eq!(relative(&p("/app/db"), &p("/app")), None);
    }

    #[test]
    fn child_names_mark_directories_and_sort() {
        assert_eq!(
            child_names(&json!({"b": 1, "a": {"x": 1}, "c": []})),
            vec!["a/", "b", "c"]
        );
        assert!(child_names(&json!("leaf")).is_empty());
    }
}
