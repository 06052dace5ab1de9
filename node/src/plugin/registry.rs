//! The registry of installed plugins: one `Entry` per manifest (its checked manifest, its
//! loaded program behind the `Hooks` trait, its health), in hook order. The registry is a
//! snapshot: a reload builds a new one, writes in flight keep the one they started with.

use super::host::{CallError, Change, Derived, Program, StoreView};
use super::manifest::{Checked, Hook};
use crate::clock::now_ms;
use crate::store::Path;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// After this many failures in a row a plugin is reported unhealthy.
const UNHEALTHY_AFTER: u64 = 3;

/// The calls a loaded plugin answers. [`Program`] (a wasm component) is the real one; the
/// order of hooks, batch judging and health counting are tested with fakes.
pub trait Hooks: Send + Sync {
    fn validate(&self, view: Arc<dyn StoreView>, change: &Change) -> Result<(), CallError>;
    fn transform(&self, view: Arc<dyn StoreView>, change: &Change) -> Result<String, CallError>;
    fn derive(&self, view: Arc<dyn StoreView>, changed: &[String]) -> Result<Derived, CallError>;
}

impl Hooks for Program {
    fn validate(&self, view: Arc<dyn StoreView>, change: &Change) -> Result<(), CallError> {
        Program::validate(self, view, change)
    }

    fn transform(&self, view: Arc<dyn StoreView>, change: &Change) -> Result<String, CallError> {
        Program::transform(self, view, change)
    }

    fn derive(&self, view: Arc<dyn StoreView>, changed: &[String]) -> Result<Derived, CallError> {
        Program::derive(self, view, changed)
    }
}

/// Call counters and the last error of one plugin, kept across reloads of the same name.
#[derive(Debug, Default)]
pub struct Health {
    calls: AtomicU64,
    failures: AtomicU64,
    in_a_row: AtomicU64,
    last_error: Mutex<Option<(u64, String)>>,
    /// True if `last_error` is a successful run's report, not a failure.
    reported: std::sync::atomic::AtomicBool,
}

impl Health {
    pub(super) fn ok(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.in_a_row.store(0, Ordering::Relaxed);
    }

    /// A run that succeeded but reported problems (`Some`: its `error` lines), or none
    /// (`None`: a report from an earlier run is cleared; a failure stays).
    pub(super) fn reported(&self, problems: Option<&str>) {
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        match problems {
            Some(p) => {
                *last = Some((now_ms(), p.to_owned()));
                self.reported.store(true, Ordering::Relaxed);
            }
            None if self.reported.swap(false, Ordering::Relaxed) => *last = None,
            None => {}
        }
    }

    pub(super) fn failed(&self, message: &str) {
        self.reported.store(false, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.in_a_row.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((now_ms(), message.to_owned()));
    }

    pub fn healthy(&self) -> bool {
        self.in_a_row.load(Ordering::Relaxed) < UNHEALTHY_AFTER
    }
}

/// One installed plugin.
pub struct Entry {
    pub checked: Checked,
    pub program: Option<Arc<dyn Hooks>>,
    /// Why `program` is missing.
    pub load_error: Option<String>,
    pub health: Arc<Health>,
}

impl Entry {
    pub fn guards(&self, p: &Path) -> bool {
        self.checked
            .prefixes
            .iter()
            .any(|q| q.contains(p) || p.contains(q))
    }

    /// The entry as `herd plugin ls` and `/v1/plugins` show it.
    pub fn to_json(&self) -> Value {
        let h = &self.health;
        let last = h
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let state = if self.program.is_none() {
            "not_loaded"
        } else if h.healthy() {
            "healthy"
        } else {
            "unhealthy"
        };
        let mut v = serde_json::to_value(&self.checked.manifest).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("state".into(), state.into());
            m.insert("calls".into(), h.calls.load(Ordering::Relaxed).into());
            m.insert("failures".into(), h.failures.load(Ordering::Relaxed).into());
            let err = self
                .load_error
                .clone()
                .map(|e| serde_json::json!({"at": now_ms(), "message": e}))
                .or_else(|| last.map(|(at, e)| serde_json::json!({"at": at, "message": e})));
            m.insert("last_error".into(), err.unwrap_or(Value::Null));
        }
        v
    }
}

/// The installed plugins, in hook order (first install first).
#[derive(Default)]
pub struct Registry {
    pub entries: Vec<Arc<Entry>>,
}

impl Registry {
    /// The longest time limit of the write-path hooks (validate, transform).
    pub(super) fn max_time_ms(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.checked.has(Hook::Validate) || e.checked.has(Hook::Transform))
            .map(|e| e.checked.manifest.limits.time_ms)
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_failures_in_a_row_make_a_plugin_unhealthy_and_one_success_heals_it() {
        let h = Health::default();
        h.failed("trapped");
        h.failed("trapped");
        assert!(h.healthy(), "two failures in a row");
        h.ok();
        h.failed("trapped");
        h.failed("trapped");
        assert!(h.healthy(), "the success started the count again");
        h.failed("timed out");
        assert!(!h.healthy());
        assert_eq!(h.calls.load(Ordering::Relaxed), 6);
        assert_eq!(h.failures.load(Ordering::Relaxed), 5);
        let last = h.last_error.lock().unwrap().clone().unwrap();
        assert_eq!(last.1, "timed out");
        h.ok();
        assert!(h.healthy());
    }
}
