//! Judging a write by the plugins that guard its paths: derived outputs are read-only, then
//! every transform (in install order) rewrites the writes, each seeing the writes as rewritten
//! so far, then every validator judges the final writes against the store as it will be after
//! them. One refusal or failure rejects the whole request. Each call counts towards its
//! plugin's health.

use super::host::{CallError, Change, StoreView};
use super::manifest::Hook;
use super::registry::{Entry, Hooks, Registry};
use super::view::{at, relative, set_at, After, Write};
use crate::clock::now_ms;
use crate::db::Db;
use crate::store::Path;
use std::sync::Arc;

/// Why a write was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// A plugin refused it with a message for the writer.
    Refused { plugin: String, message: String },
    /// A plugin could not judge it (trap, timeout, memory, bad answer).
    Failed { plugin: String, message: String },
    /// A plugin that guards the path is installed but not loaded on this node.
    Unavailable { plugin: String, message: String },
    /// The write touches a derived plugin's output prefix.
    ReadOnly { plugin: String, path: String },
}

impl Rejection {
    pub fn plugin(&self) -> &str {
        match self {
            Rejection::Refused { plugin, .. }
            | Rejection::Failed { plugin, .. }
            | Rejection::Unavailable { plugin, .. }
            | Rejection::ReadOnly { plugin, .. } => plugin,
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::Refused { plugin, message } => {
                write!(f, "rejected by plugin {plugin}: {message}")
            }
            Rejection::Failed { plugin, message } => {
                write!(f, "plugin {plugin} {message}; the write is rejected")
            }
            Rejection::Unavailable { plugin, message } => {
                write!(f, "plugin {plugin} is not available on this node ({message}); the write is rejected")
            }
            Rejection::ReadOnly { plugin, path } => {
                write!(f, "{path} is derived by plugin {plugin} and is read-only")
            }
        }
    }
}

/// Runs the hooks of `reg` that a write concerns. `token` names the writer.
pub fn judge(
    reg: &Registry,
    db: &Db,
    mut writes: Vec<Write>,
    token: &str,
) -> Result<Vec<Write>, Rejection> {
    if reg.entries.is_empty() {
        return Ok(writes);
    }
    // Derived outputs are read-only.
    for w in &writes {
        for e in &reg.entries {
            let Some(o) = &e.checked.output else { continue };
            let hits = o.contains(&w.path)
                || (w.value.is_some()
                    && relative(&w.path, o)
                        .is_some_and(|rel| w.value.as_ref().and_then(|v| at(v, &rel)).is_some()));
            if hits {
                return Err(Rejection::ReadOnly {
                    plugin: e.checked.manifest.name.clone(),
                    path: o.to_string(),
                });
            }
        }
    }
    // Transforms rewrite the writes, so each sees the writes as rewritten so far.
    for e in reg
        .entries
        .iter()
        .filter(|e| e.checked.has(Hook::Transform))
    {
        for i in 0..writes.len() {
            if !e.guards(&writes[i].path) {
                continue;
            }
            let program = program(e)?;
            for (at_path, change) in changes_for(db, e, &writes[i], token) {
                if change.value.is_none() {
                    continue;
                }
                let view = Arc::new(After {
                    db: db.clone(),
                    writes: writes.clone(),
                });
                let out = program
                    .transform(view, &change)
                    .map_err(|err| fail(e, err))?;
                let v = crate::store::value::parse(out.as_bytes()).map_err(|err| {
                    fail(
                        e,
                        CallError::Failed(format!(
                            "returned a value that is not valid JSON: {err}"
                        )),
                    )
                })?;
                e.health.ok();
                let w = &mut writes[i];
                let rel = relative(&w.path, &at_path).unwrap_or_default();
                match &mut w.value {
                    Some(base) => set_at(base, &rel, Some(v)),
                    None => w.value = Some(v),
                }
            }
        }
    }
    // Validators judge the final writes: one view of them serves every call.
    let view: Arc<dyn StoreView> = Arc::new(After {
        db: db.clone(),
        writes: writes.clone(),
    });
    for e in reg.entries.iter().filter(|e| e.checked.has(Hook::Validate)) {
        for w in writes.iter().filter(|w| e.guards(&w.path)) {
            let program = program(e)?;
            for (_, change) in changes_for(db, e, w, token) {
                program
                    .validate(view.clone(), &change)
                    .map_err(|err| fail(e, err))?;
                e.health.ok();
            }
        }
    }
    Ok(writes)
}

fn program(e: &Entry) -> Result<&Arc<dyn Hooks>, Rejection> {
    e.program.as_ref().ok_or_else(|| Rejection::Unavailable {
        plugin: e.checked.manifest.name.clone(),
        message: e
            .load_error
            .clone()
            .unwrap_or_else(|| "not loaded yet".into()),
    })
}

fn fail(e: &Entry, err: CallError) -> Rejection {
    let plugin = e.checked.manifest.name.clone();
    match err {
        CallError::Refused(message) => {
            e.health.ok();
            Rejection::Refused { plugin, message }
        }
        CallError::Failed(message) => {
            e.health.failed(&message);
            tracing::warn!(plugin, error = message, "plugin failed; write rejected");
            Rejection::Failed { plugin, message }
        }
    }
}

/// The changes one write makes for one plugin: at the write's path when a prefix contains it,
/// or at each of the plugin's prefixes below the write's path with the part of the value there.
fn changes_for(db: &Db, e: &Entry, w: &Write, token: &str) -> Vec<(Path, Change)> {
    let mut at_paths: Vec<Path> = Vec::new();
    if e.checked.prefixes.iter().any(|q| q.contains(&w.path)) {
        at_paths.push(w.path.clone());
    } else {
        at_paths.extend(
            e.checked
                .prefixes
                .iter()
                .filter(|q| w.path.contains(q))
                .cloned(),
        );
    }
    at_paths
        .into_iter()
        .map(|p| {
            let rel = relative(&w.path, &p).unwrap_or_default();
            let value = w
                .value
                .as_ref()
                .and_then(|v| at(v, &rel))
                .map(|v| crate::store::value::to_text(v).into());
            let st = db.read();
            let mut old = String::new();
            let has_old = st.store.render(p.key(), now_ms(), &mut old);
            let version = has_old.then(|| st.store.newest_version(p.key()).to_string());
            drop(st);
            let change = Change {
                path: p.to_string(),
                value,
                old: has_old.then_some(old),
                version,
                token: token.to_owned(),
            };
            (p, change)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Condition, WriteRequest};
    use crate::plugin::host::Derived;
    use crate::plugin::manifest::Manifest;
    use crate::plugin::registry::Health;
    use crate::store::Op;
    use serde_json::{json, Value};
    use std::sync::Mutex;

    /// What the fake programs were asked, in order: (plugin, hook, path, value).
    type Calls = Arc<Mutex<Vec<(String, &'static str, String, Option<String>)>>>;

    /// A plugin program without wasm: a transform appends its name to string values; a
    /// validator refuses the value "bad", fails (as a trap would) on "trap", and refuses a
    /// value different from what its view of the store after the write shows.
    struct Fake {
        name: String,
        calls: Calls,
    }

    impl Hooks for Fake {
        fn validate(&self, view: Arc<dyn StoreView>, c: &Change) -> Result<(), CallError> {
            self.record("validate", c);
            match c.value.as_deref() {
                Some("\"bad\"") => Err(CallError::Refused("bad is not allowed".into())),
                Some("\"trap\"") => Err(CallError::Failed("trapped: unreachable".into())),
                v if v.map(str::to_owned) != view.get(&c.path) => Err(CallError::Refused(format!(
                    "the view shows {:?}",
                    view.get(&c.path)
                ))),
                _ => Ok(()),
            }
        }

        fn transform(&self, _: Arc<dyn StoreView>, c: &Change) -> Result<String, CallError> {
            self.record("transform", c);
            let v: Value = serde_json::from_str(c.value.as_deref().unwrap_or("null")).unwrap();
            Ok(match v {
                Value::String(s) => json!(format!("{s}+{}", self.name)).to_string(),
                other => other.to_string(),
            })
        }

        fn derive(&self, _: Arc<dyn StoreView>, _: &[String]) -> Result<Derived, CallError> {
            Ok(Derived::default())
        }
    }

    impl Fake {
        fn record(&self, hook: &'static str, c: &Change) {
            self.calls.lock().unwrap().push((
                self.name.clone(),
                hook,
                c.path.clone(),
                c.value.clone(),
            ));
        }
    }

    fn entry(name: &str, hooks: &[&str], prefix: &str, calls: &Calls) -> Arc<Entry> {
        let output = hooks.contains(&"derive").then_some("/rendered");
        let m: Manifest = serde_json::from_value(json!({
            "name": name,
            "sha256": "0".repeat(64),
            "prefixes": [prefix],
            "hooks": hooks,
            "output": output,
        }))
        .unwrap();
        Arc::new(Entry {
            checked: m.check().unwrap(),
            program: Some(Arc::new(Fake {
                name: name.into(),
                calls: calls.clone(),
            })),
            load_error: None,
            health: Arc::new(Health::default()),
        })
    }

    fn write(path: &str, v: Value) -> Write {
        Write {
            path: Path::parse(path).unwrap(),
            value: Some(v),
        }
    }

    async fn db() -> (tempfile::TempDir, Db) {
        let (dir, db, _writer) = crate::db::open_for_tests(1);
        let op = Op::put(Path::parse("/app/port").unwrap(), &json!(80), None).unwrap();
        db.write(WriteRequest {
            ops: vec![op],
            condition: Condition::None,
        })
        .await
        .unwrap();
        (dir, db)
    }

    #[tokio::test]
    async fn transforms_run_in_install_order_then_validators_judge_the_result() {
        let (_dir, db) = db().await;
        let calls = Calls::default();
        let reg = Registry {
            entries: vec![
                entry("first", &["transform", "validate"], "/app", &calls),
                entry("second", &["transform"], "/app/name", &calls),
            ],
        };
        let out = judge(&reg, &db, vec![write("/app/name", json!("x"))], "ops").unwrap();
        assert_eq!(out[0].value, Some(json!("x+first+second")));
        let calls = calls.lock().unwrap().clone();
        let seen: Vec<_> = calls
            .iter()
            .map(|(p, h, path, v)| (p.as_str(), *h, path.as_str(), v.as_deref()))
            .collect();
        assert_eq!(
            seen,
            [
                ("first", "transform", "/app/name", Some("\"x\"")),
                ("second", "transform", "/app/name", Some("\"x+first\"")),
                ("first", "validate", "/app/name", Some("\"x+first+second\"")),
            ]
        );
        assert!(reg.entries.iter().all(|e| e.health.healthy()));
    }

    #[tokio::test]
    async fn a_batch_is_judged_whole_and_a_write_above_a_prefix_is_judged_at_the_prefix() {
        let (_dir, db) = db().await;
        let calls = Calls::default();
        let reg = Registry {
            entries: vec![entry("guard", &["validate"], "/app/name", &calls)],
        };
        // A write of /app carries the value at /app/name: the plugin sees that part, with the
        // old value and version of what was there.
        let out = judge(
            &reg,
            &db,
            vec![
                write("/app", json!({"name": "web", "port": 81})),
                write("/other", json!("bad")),
            ],
            "ops",
        )
        .unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(
            calls.lock().unwrap().clone(),
            [(
                "guard".to_string(),
                "validate",
                "/app/name".to_string(),
                Some("\"web\"".to_string())
            )],
            "only the guarded path is judged"
        );
        for _ in 0..3 {
            let refused = judge(
                &reg,
                &db,
                vec![write("/other", json!(1)), write("/app/name", json!("bad"))],
                "ops",
            )
            .unwrap_err();
            assert_eq!(
                refused,
                Rejection::Refused {
                    plugin: "guard".into(),
                    message: "bad is not allowed".into()
                }
            );
        }
        assert!(
            reg.entries[0].health.healthy(),
            "a refusal is an answer, not a failure"
        );
    }

    #[tokio::test]
    async fn failures_count_towards_health_and_outputs_are_read_only() {
        let (_dir, db) = db().await;
        let calls = Calls::default();
        let derived = entry("render", &["derive"], "/app", &calls);
        let reg = Registry {
            entries: vec![entry("guard", &["validate"], "/app", &calls), derived],
        };
        for _ in 0..3 {
            let e = judge(&reg, &db, vec![write("/app/x", json!("trap"))], "ops").unwrap_err();
            assert!(matches!(e, Rejection::Failed { .. }), "{e}");
        }
        assert!(!reg.entries[0].health.healthy());
        judge(&reg, &db, vec![write("/app/x", json!("ok"))], "ops").unwrap();
        assert!(reg.entries[0].health.healthy());
        for w in [
            write("/rendered/a", json!(1)),
            write("/", json!({"rendered": {"a": 1}})),
        ] {
            assert_eq!(
                judge(&reg, &db, vec![w], "ops").unwrap_err(),
                Rejection::ReadOnly {
                    plugin: "render".into(),
                    path: "/rendered".into()
                }
            );
        }
        let mut missing = entry("gone", &["validate"], "/app", &calls);
        let m = Arc::get_mut(&mut missing).unwrap();
        m.program = None;
        m.load_error = Some("its file is not on this node".into());
        let reg = Registry {
            entries: vec![missing],
        };
        let e = judge(&reg, &db, vec![write("/app/x", json!(1))], "ops").unwrap_err();
        assert_eq!(
            e,
            Rejection::Unavailable {
                plugin: "gone".into(),
                message: "its file is not on this node".into()
            }
        );
    }
}
