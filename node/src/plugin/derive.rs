//! Derived keys: one task per derive plugin follows the keys under its prefixes, calls
//! `derive` (debounced) and keeps the outputs it returns under the plugin's output prefix.
//! Outputs live in memory on each node ([`Outputs`]), are served read-only by the API and the
//! file view, and are never replicated; a derive that fails keeps the last good outputs.
//!
//! Each plugin's outputs are also saved in the data directory (`plugins/outputs/<name>.json`,
//! with the revision that announced them) after each announced change, so that a node starts
//! with the outputs it had: a plugin whose first run after a restart fails (a broken template)
//! still has its last good outputs, and reads them (its own output prefix, in its store view).

use super::host::{CallError, Output};
use super::view::{at, relative, set_at, Committed};
use super::{Plugins, Registry};
use crate::clock::now_ms;
use crate::store::Path;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

mod saved;
pub(super) use saved::forget_saved;
use saved::{save, seed_saved, Start};

/// How long a derive waits for more input changes before it runs.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

/// The outputs of one derive plugin.
#[derive(Debug, Clone)]
pub struct OutputSet {
    pub plugin: String,
    pub sha256: String,
    pub prefix: Path,
    /// The outputs as one JSON object tree relative to `prefix` (`None` before the first
    /// successful run).
    pub tree: Option<Value>,
    pub count: usize,
    pub updated_ms: u64,
    pub last_error: Option<String>,
}

/// Every derive plugin's outputs, by output prefix.
pub struct Outputs {
    sets: RwLock<BTreeMap<String, OutputSet>>,
    /// Output prefixes whose content changed, for the file view's cache invalidation.
    changed: broadcast::Sender<Path>,
    /// The running derive tasks, by plugin name: (what they run: sha256 and output, cancel).
    tasks: Mutex<HashMap<String, (String, CancellationToken)>>,
}

impl Default for Outputs {
    fn default() -> Outputs {
        Outputs {
            sets: RwLock::new(BTreeMap::new()),
            changed: broadcast::channel(256).0,
            tasks: Mutex::new(HashMap::new()),
        }
    }
}

/// What a read at a path finds among the outputs.
#[derive(Debug, PartialEq)]
pub enum Found {
    /// The path is not at or below any output prefix.
    Outside,
    /// At or below an output prefix, and nothing is there.
    Missing,
    Value(Value),
}

impl Outputs {
    pub fn subscribe(&self) -> broadcast::Receiver<Path> {
        self.changed.subscribe()
    }

    /// The derived value at `p`.
    pub fn get(&self, p: &Path) -> Found {
        let sets = self.sets.read().unwrap_or_else(|e| e.into_inner());
        for set in sets.values() {
            if let Some(rel) = relative(&set.prefix, p) {
                return match set.tree.as_ref().and_then(|t| at(t, &rel)) {
                    Some(v) => Found::Value(v.clone()),
                    None => Found::Missing,
                };
            }
        }
        Found::Outside
    }

    /// The first segments below `p` that lead to an output prefix (for listings of
    /// directories above an output prefix): name → true (always a directory).
    pub fn dirs_below(&self, p: &Path) -> Vec<String> {
        let sets = self.sets.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<String> = sets
            .values()
            .filter(|s| s.tree.is_some() && s.prefix != *p)
            .filter_map(|s| relative(p, &s.prefix)?.first().map(|n| n.to_string()))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The output prefixes (for `/v1/plugins` and listings).
    pub fn sets(&self) -> Vec<OutputSet> {
        self.sets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Drops the outputs of plugins no longer installed (or moved to another prefix); answers
    /// the deletions watchers are to be told of.
    pub(super) fn retain(&self, reg: &Registry) -> Vec<(Path, Option<Value>)> {
        let mut gone = Vec::new();
        let mut changes = Vec::new();
        self.sets
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|key, set| {
                let keep = reg.entries.iter().any(|e| {
                    e.checked.manifest.name == set.plugin
                        && e.checked.output.as_ref().map(|o| o.key()) == Some(key.as_str())
                });
                if !keep {
                    gone.push(set.prefix.clone());
                    diff(&set.prefix, set.tree.as_ref(), None, &mut changes);
                }
                keep
            });
        for p in gone {
            let _ = self.changed.send(p);
        }
        changes
    }

    /// True if `p` is at or below an output prefix.
    pub fn covers(&self, p: &Path) -> bool {
        let sets = self.sets.read().unwrap_or_else(|e| e.into_inner());
        sets.values().any(|set| relative(&set.prefix, p).is_some())
    }

    /// Every derived leaf at or below `p`, and at the output prefixes below it, with its
    /// value (for a watch's initial state).
    pub fn leaves(&self, p: &Path) -> Vec<(Path, Value)> {
        let sets = self.sets.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for set in sets.values() {
            let Some(tree) = &set.tree else { continue };
            if let Some(rel) = relative(&set.prefix, p) {
                match at(tree, &rel) {
                    Some(v) if rel.is_empty() && v.as_object().is_some_and(|m| m.is_empty()) => {}
                    Some(v) => flatten(p, v, &mut out),
                    None => {}
                }
            } else if relative(p, &set.prefix).is_some() {
                // No outputs at all is nothing, not an empty directory.
                if tree.as_object().is_some_and(|m| m.is_empty()) {
                    continue;
                }
                flatten(&set.prefix, tree, &mut out);
            }
        }
        out
    }

    /// True if an output prefix with outputs is strictly below `p`.
    pub fn has_below(&self, p: &Path) -> bool {
        let sets = self.sets.read().unwrap_or_else(|e| e.into_inner());
        sets.values().any(|set| {
            set.tree.is_some() && relative(p, &set.prefix).is_some_and(|r| !r.is_empty())
        })
    }

    /// The outputs under prefixes strictly below `p`, laid into `doc` (what `p` holds in the
    /// store) where they go: a read of a directory above an output prefix shows them.
    /// Answers whether anything was laid in.
    pub fn overlay(&self, p: &Path, doc: &mut Value) -> bool {
        let sets = self.sets.read().unwrap_or_else(|e| e.into_inner());
        let mut laid = false;
        for set in sets.values() {
            let Some(tree) = &set.tree else { continue };
            let Some(rel) = relative(p, &set.prefix).filter(|r| !r.is_empty()) else {
                continue;
            };
            if !doc.is_object() {
                *doc = Value::Object(Map::new());
            }
            set_at(doc, &rel, Some(tree.clone()));
            laid = true;
        }
        laid
    }

    /// Starts a set with outputs saved before a restart (nothing is announced: watchers were
    /// told of them then).
    fn seed(&self, plugin: &str, sha256: &str, prefix: &Path, tree: Value, updated_ms: u64) {
        let mut sets = self.sets.write().unwrap_or_else(|e| e.into_inner());
        sets.insert(
            prefix.key().to_owned(),
            OutputSet {
                plugin: plugin.to_owned(),
                sha256: sha256.to_owned(),
                prefix: prefix.clone(),
                count: count(&tree),
                tree: Some(tree),
                updated_ms,
                last_error: None,
            },
        );
        drop(sets);
        let _ = self.changed.send(prefix.clone());
    }

    /// The changes from the current outputs under `prefix` to `tree`, for watchers.
    fn changes(&self, prefix: &Path, tree: &Value) -> Vec<(Path, Option<Value>)> {
        let sets = self.sets.read().unwrap_or_else(|e| e.into_inner());
        let empty = Value::Object(Map::new());
        let old = sets
            .get(prefix.key())
            .and_then(|s| s.tree.as_ref())
            .unwrap_or(&empty);
        let mut changes = Vec::new();
        diff(prefix, Some(old), Some(tree), &mut changes);
        changes
    }

    /// The entry of `prefix`, made if missing.
    fn entry<'a>(
        sets: &'a mut BTreeMap<String, OutputSet>,
        plugin: &str,
        sha256: &str,
        prefix: &Path,
    ) -> &'a mut OutputSet {
        let set = sets
            .entry(prefix.key().to_owned())
            .or_insert_with(|| OutputSet {
                plugin: plugin.to_owned(),
                sha256: sha256.to_owned(),
                prefix: prefix.clone(),
                tree: None,
                count: 0,
                updated_ms: 0,
                last_error: None,
            });
        set.plugin = plugin.to_owned();
        set.sha256 = sha256.to_owned();
        set
    }

    /// Records a derive run's outputs (`count` of them, laid out as `tree`).
    fn set(&self, plugin: &str, sha256: &str, prefix: &Path, tree: Value, count: usize) {
        let mut sets = self.sets.write().unwrap_or_else(|e| e.into_inner());
        let set = Outputs::entry(&mut sets, plugin, sha256, prefix);
        let changed = set.tree.as_ref() != Some(&tree);
        set.tree = Some(tree);
        set.count = count;
        set.updated_ms = now_ms();
        set.last_error = None;
        drop(sets);
        if changed {
            let _ = self.changed.send(prefix.clone());
        }
    }

    /// Records a failed derive run: the outputs stay.
    fn failed(&self, plugin: &str, sha256: &str, prefix: &Path, error: String) {
        let mut sets = self.sets.write().unwrap_or_else(|e| e.into_inner());
        Outputs::entry(&mut sets, plugin, sha256, prefix).last_error = Some(error);
    }
}

/// The number of leaves in an output tree.
fn count(tree: &Value) -> usize {
    let mut out = Vec::new();
    flatten(&Path::root(), tree, &mut out);
    out.len()
}

/// The changes from `old` to `new` at `p`, as the store would announce them: objects on both
/// sides are compared name by name; anything else that differs is a put of the new value (a
/// whole new subtree in one event) or a delete (a whole subtree gone in one event).
pub fn diff(
    p: &Path,
    old: Option<&Value>,
    new: Option<&Value>,
    out: &mut Vec<(Path, Option<Value>)>,
) {
    match (old, new) {
        (Some(Value::Object(o)), Some(Value::Object(n))) => {
            for (name, ov) in o {
                if !n.contains_key(name) {
                    if let Ok(child) = p.child(name) {
                        diff(&child, Some(ov), None, out);
                    }
                }
            }
            for (name, nv) in n {
                if let Ok(child) = p.child(name) {
                    diff(&child, o.get(name), Some(nv), out);
                }
            }
        }
        (Some(_), None) => out.push((p.clone(), None)),
        (old, Some(new)) if old != Some(new) => out.push((p.clone(), Some(new.clone()))),
        _ => {}
    }
}

/// The leaves of `v` (at `p`), with their paths; an empty object counts as a leaf.
fn flatten(p: &Path, v: &Value, out: &mut Vec<(Path, Value)>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (name, child) in m {
                if let Ok(c) = p.child(name) {
                    flatten(&c, child, out);
                }
            }
        }
        leaf => out.push((p.clone(), leaf.clone())),
    }
}

/// How soon a derive run whose outputs could not be announced (the database refused the
/// revision: a storage failure) runs again.
const RETRY: Duration = Duration::from_secs(1);

/// Tells watchers of derived keys that changed (one revision for the lot), `apply` making them
/// visible to reads at that revision; answers the revision. An error means watchers were not
/// told and `apply` did not run.
pub async fn announce(
    plugins: &Plugins,
    changes: Vec<(Path, Option<Value>)>,
    apply: Box<dyn FnOnce() -> bool + Send>,
) -> Result<u64, crate::db::Error> {
    let events = changes
        .into_iter()
        .map(|(p, v)| (p.key().into(), v.map(|v| v.to_string().into())))
        .collect();
    plugins.db().derived(events, apply).await
}

/// `tree` under `prefix` announced whole: a delete of the prefix (whatever watchers were told
/// before, or missed), then every output.
fn whole(prefix: &Path, tree: &Value) -> Vec<(Path, Option<Value>)> {
    let mut changes = vec![(prefix.clone(), None)];
    diff(
        prefix,
        Some(&Value::Object(Map::new())),
        Some(tree),
        &mut changes,
    );
    changes
}

/// Checks a derive's outputs and builds their tree: every path under `prefix`, every value
/// valid JSON, the total within `limit` bytes.
pub fn build_tree(prefix: &Path, outputs: &[Output], limit: u64) -> Result<Value, String> {
    let total: u64 = outputs
        .iter()
        .map(|o| (o.path.len() + o.value.len()) as u64)
        .sum();
    if total > limit {
        return Err(format!(
            "returned {total} bytes of outputs, over its limit of {limit} bytes"
        ));
    }
    let mut tree = Value::Object(Map::new());
    // Every path returned, to refuse one at or below another (a key cannot be both a value
    // and a directory).
    let mut taken = std::collections::HashSet::new();
    for o in outputs {
        let p =
            Path::parse(&o.path).map_err(|e| format!("returned a bad path {:?}: {e}", o.path))?;
        if !taken.insert(p.key().to_owned()) {
            return Err(format!("returned {p} twice"));
        }
        let Some(rel) = relative(prefix, &p).filter(|r| !r.is_empty()) else {
            return Err(format!(
                "returned {p}, which is outside its output prefix {prefix}"
            ));
        };
        let v = crate::store::value::parse(o.value.as_bytes())
            .map_err(|e| format!("returned a value for {p} that is not valid JSON: {e}"))?;
        set_at(&mut tree, &rel, Some(v));
    }
    for key in &taken {
        let p = Path::from_key(key);
        let mut outer = p.parent();
        while let Some(o) = outer {
            if taken.contains(o.key()) {
                return Err(format!("returned both {o} and {p}, which is inside it"));
            }
            outer = o.parent();
        }
    }
    Ok(tree)
}

/// Starts a derive task for each derive plugin that has none (or runs another version) and
/// stops the tasks of plugins that are gone.
pub(super) fn reconcile(plugins: &Plugins, reg: &Registry) {
    let outputs = plugins.outputs();
    let mut tasks = outputs.tasks.lock().unwrap_or_else(|e| e.into_inner());
    // A task runs one file for one output prefix: either changing ends it.
    let runs = |m: &super::manifest::Manifest| format!("{}:{:?}", m.sha256, m.output);
    tasks.retain(|name, (what, cancel)| {
        let keep = reg.entries.iter().any(|e| {
            &e.checked.manifest.name == name
                && &runs(&e.checked.manifest) == what
                && e.program.is_some()
        });
        if !keep {
            cancel.cancel();
        }
        keep
    });
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    for e in &reg.entries {
        let m = &e.checked.manifest;
        if !e.checked.has(super::Hook::Derive) || e.program.is_none() || tasks.contains_key(&m.name)
        {
            continue;
        }
        // A child of the node's token: a task started while the node shuts down ends at once.
        let cancel = plugins.cancel().child_token();
        tasks.insert(m.name.clone(), (runs(m), cancel.clone()));
        let start = match &e.checked.output {
            Some(prefix) => seed_saved(plugins, &m.name, &m.sha256, prefix),
            None => Start::Nothing,
        };
        plugins
            .tracker()
            .spawn_on(run(plugins.clone(), e.clone(), cancel, start), &rt);
    }
}

/// Stops every derive task (shutdown).
pub(super) fn stop_all(plugins: &Plugins) {
    let mut tasks = plugins
        .outputs()
        .tasks
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    for (_, (_, c)) in tasks.drain() {
        c.cancel();
    }
}

async fn run(plugins: Plugins, entry: Arc<super::Entry>, cancel: CancellationToken, start: Start) {
    let (Some(program), Some(prefix)) = (entry.program.clone(), entry.checked.output.clone())
    else {
        return;
    };
    let name = entry.checked.manifest.name.clone();
    let sha = entry.checked.manifest.sha256.clone();
    let limit = entry.checked.manifest.limits.output_bytes;
    let db = plugins.db().clone();
    let Ok(mut sub) = db.subscribe("", None) else {
        return;
    };
    let mut changed: Vec<String> = Vec::new();
    let mut first = true;
    // Outputs saved before a restart are served from the start. If the change log (kept
    // across restarts) told watchers of anything at the prefix after they were announced,
    // they are announced whole at once, replacing whatever watchers were told; so are the
    // first outputs when nothing was saved and the change log mentions the prefix. (Nothing
    // saved and nothing in the log: a new plugin or node, announced as puts; or a save that
    // failed long enough ago that the window has moved on, where a key the plugin no longer
    // makes is not announced as deleted to a watcher resuming across the restart.)
    let told = {
        let related = |k: &str| {
            let p = Path::from_key(k);
            relative(&prefix, &p).is_some() || relative(&p, &prefix).is_some()
        };
        let st = db.read();
        st.log
            .iter()
            .filter(|e| related(&e.key))
            .map(|e| e.revision)
            .max()
    };
    let mut replace = match start {
        Start::Memory => false,
        Start::Saved(s) => told.is_some_and(|t| t > s),
        Start::Nothing => told.is_some(),
    };
    if replace && matches!(start, Start::Saved(_)) {
        if let Found::Value(tree) = plugins.outputs().get(&prefix) {
            let shown = cancel.clone();
            let apply = Box::new(move || !shown.is_cancelled());
            if let Ok(revision) = announce(&plugins, whole(&prefix, &tree), apply).await {
                replace = false;
                save(&plugins, &name, &prefix, tree, revision, &cancel).await;
            }
        }
    }
    // A store event at or above the output prefix (a delete or put of a parent, a reset)
    // tells watchers that everything below it changed, derived keys included: the outputs
    // are then announced again whole.
    let above = |p: &Path| relative(p, &prefix).is_some();
    let mut shadowed = false;
    // The last run's outputs could not be announced (the database refused the revision): when
    // to run again.
    let mut retry: Option<tokio::time::Instant> = None;
    loop {
        if !first {
            // Wait for an input change (or the time to try again), then for the burst to
            // settle.
            loop {
                let ev = tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep_until(retry.unwrap_or_else(tokio::time::Instant::now)), if retry.is_some() => break,
                    ev = sub.live.recv() => ev,
                };
                match ev {
                    Ok(ev) => {
                        let p = Path::from_key(&ev.key);
                        if above(&p) {
                            shadowed = true;
                        }
                        // Derived keys are not inputs (plugins read the store).
                        if entry.guards(&p) && !plugins.outputs().covers(&p) {
                            changed.push(p.to_string());
                            break;
                        }
                        if shadowed {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(DEBOUNCE) => {}
            }
            while let Ok(ev) = sub.live.try_recv() {
                let p = Path::from_key(&ev.key);
                shadowed |= above(&p);
                if entry.guards(&p) && !plugins.outputs().covers(&p) {
                    changed.push(p.to_string());
                }
            }
        }
        first = false;
        changed.sort();
        changed.dedup();
        let args = std::mem::take(&mut changed);
        // The plugin reads its own output prefix as its outputs (its last good run's).
        let own = match plugins.outputs().get(&prefix) {
            Found::Value(tree) => Some((prefix.clone(), tree)),
            _ => None,
        };
        let view = Arc::new(Committed {
            db: db.clone(),
            own,
        });
        let p2 = program.clone();
        let passed = args.clone();
        let result = tokio::task::spawn_blocking(move || p2.derive(view, &passed)).await;
        let result = match result {
            Ok(Ok(run)) => build_tree(&prefix, &run.outputs, limit)
                .map(|t| (t, run.outputs.len(), run.problems)),
            Ok(Err(CallError::Refused(m))) => Err(format!("refused: {m}")),
            Ok(Err(CallError::Failed(m))) => Err(m),
            Err(e) => Err(format!("derive task failed: {e}")),
        };
        if cancel.is_cancelled() {
            return;
        }
        let (tree, n, problems) = match result {
            Ok(ok) => ok,
            Err(e) => {
                tracing::warn!(
                    plugin = name,
                    error = e,
                    "derive failed; keeping the last good outputs"
                );
                entry.health.failed(&e);
                plugins.outputs().failed(&name, &sha, &prefix, e);
                continue;
            }
        };
        entry.health.ok();
        // Problems the plugin worked around (it logged them as errors): its last error until
        // a run without any.
        let report = (!problems.is_empty()).then(|| problems.join("; "));
        entry.health.reported(report.as_deref());
        let changes = if replace {
            whole(&prefix, &tree)
        } else if shadowed {
            let mut changes = Vec::new();
            diff(
                &prefix,
                Some(&Value::Object(Map::new())),
                Some(&tree),
                &mut changes,
            );
            changes
        } else {
            plugins.outputs().changes(&prefix, &tree)
        };
        let kept = tree.clone();
        // A task stopped meanwhile (the plugin updated or removed) changes nothing.
        let apply = {
            let (plugins, name, sha, prefix) =
                (plugins.clone(), name.clone(), sha.clone(), prefix.clone());
            let cancel = cancel.clone();
            move || {
                if cancel.is_cancelled() {
                    return false;
                }
                plugins.outputs().set(&name, &sha, &prefix, tree, n);
                true
            }
        };
        if changes.is_empty() {
            apply();
            (replace, shadowed, retry) = (false, false, None);
            continue;
        }
        match announce(&plugins, changes, Box::new(apply)).await {
            Ok(revision) => {
                (replace, shadowed, retry) = (false, false, None);
                save(&plugins, &name, &prefix, kept, revision, &cancel).await;
            }
            Err(e) => {
                if retry.is_none() {
                    tracing::warn!(
                        plugin = name,
                        error = %e,
                        "the outputs changed but watchers could not be told; running again shortly"
                    );
                }
                // Nothing was applied: the next run compares with what watchers know.
                retry = Some(tokio::time::Instant::now() + RETRY);
                changed = args;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn out(path: &str, value: &str) -> Output {
        Output {
            path: path.into(),
            value: value.into(),
        }
    }

    #[test]
    fn a_diff_is_what_the_store_would_announce() {
        let p = Path::parse("/r").unwrap();
        let old = json!({"a": 1, "b": {"c": 2, "d": 3}, "gone": {"x": 1}, "same": "s"});
        let new = json!({"a": 2, "b": {"c": 2, "e": 4}, "new": {"y": {"z": 1}}, "same": "s"});
        let mut out = Vec::new();
        diff(&p, Some(&old), Some(&new), &mut out);
        let got: Vec<(String, Option<Value>)> =
            out.into_iter().map(|(p, v)| (p.to_string(), v)).collect();
        assert_eq!(
            got,
            [
                ("/r/gone".to_owned(), None),
                ("/r/a".to_owned(), Some(json!(2))),
                ("/r/b/d".to_owned(), None),
                ("/r/b/e".to_owned(), Some(json!(4))),
                ("/r/new".to_owned(), Some(json!({"y": {"z": 1}}))),
            ]
        );
        let mut none = Vec::new();
        diff(&p, Some(&new), Some(&new), &mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn outputs_must_stay_under_the_prefix_be_json_and_fit() {
        let prefix = Path::parse("/rendered/nginx").unwrap();
        let tree = build_tree(
            &prefix,
            &[
                out("/rendered/nginx/web.conf", r#""upstream""#),
                out("/rendered/nginx/x/y", "1"),
            ],
            1 << 20,
        )
        .unwrap();
        assert_eq!(tree, json!({"web.conf": "upstream", "x": {"y": 1}}));
        let err = |outs: &[Output], limit| build_tree(&prefix, outs, limit).unwrap_err();
        assert!(err(&[out("/etc/passwd", "1")], 1 << 20).contains("outside its output prefix"));
        assert!(err(&[out("/rendered/nginx", "1")], 1 << 20).contains("outside"));
        assert!(err(&[out("/rendered/nginx/a", "{nope")], 1 << 20).contains("not valid JSON"));
        assert!(err(&[out("/rendered/nginx/a", "1")], 4).contains("over its limit"));
        assert!(err(&[out("no-slash", "1")], 1 << 20).contains("bad path"));
        let nested = [
            out("/rendered/nginx/a", "1"),
            out("/rendered/nginx/a/b", "2"),
        ];
        assert!(err(&nested, 1 << 20).contains("inside it"));
        let twice = [out("/rendered/nginx/a", "1"), out("/rendered/nginx/a", "2")];
        assert!(err(&twice, 1 << 20).contains("twice"));
    }

    #[test]
    fn reads_find_outputs_and_the_directories_above_them() {
        let outputs = Outputs::default();
        let prefix = Path::parse("/rendered/nginx").unwrap();
        let p = |s: &str| Path::parse(s).unwrap();
        assert_eq!(outputs.get(&p("/rendered/nginx/web.conf")), Found::Outside);
        outputs.set("nginx", "sha", &prefix, json!({"web.conf": "u"}), 1);
        assert_eq!(
            outputs.get(&p("/rendered/nginx/web.conf")),
            Found::Value(json!("u"))
        );
        assert_eq!(outputs.get(&p("/rendered/nginx/other")), Found::Missing);
        assert_eq!(outputs.get(&p("/app")), Found::Outside);
        assert_eq!(outputs.dirs_below(&Path::root()), vec!["rendered"]);
        assert_eq!(outputs.dirs_below(&p("/rendered")), vec!["nginx"]);
        // A failed run keeps the last good outputs.
        outputs.failed("nginx", "sha", &prefix, "boom".into());
        assert_eq!(
            outputs.get(&p("/rendered/nginx/web.conf")),
            Found::Value(json!("u"))
        );
        assert_eq!(outputs.sets()[0].last_error.as_deref(), Some("boom"));
    }
}
