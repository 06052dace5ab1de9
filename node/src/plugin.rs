//! WebAssembly plugins (DESIGN.md §7): the registry of installed plugins, the write-path hooks
//! (`transform` then `validate`, on the node that receives a write) and the derived keys.
//!
//! Manifests live in the store at `/.herd/plugins/<name>`, so installing on one node reaches
//! every node by replication; the component itself is kept under `DATA/plugins/blobs/` by its
//! sha256 and fetched from a peer when a node sees a manifest whose file it lacks. Every change
//! under `/.herd/plugins` reloads the registry: plugins whose sha256, hooks and limits did not
//! change keep their loaded program; a write takes the registry snapshot current when it starts,
//! so writes in flight finish on the version they started with.

pub mod derive;
pub mod host;
pub mod manifest;
pub mod view;

use crate::clock::now_ms;
use crate::db::Db;
use crate::store::Path;
use host::{CallError, Change, Host, Program, StoreView};
use manifest::{Checked, Hook, Manifest};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use view::{at, relative, set_at, After, Write};

/// Where manifests live in the store.
pub const MANIFESTS: &str = "/.herd/plugins";

/// How often a node retries loading plugins it could not load (file not fetched yet).
const RETRY_LOAD: std::time::Duration = std::time::Duration::from_secs(2);

/// After this many failures in a row a plugin is reported unhealthy.
const UNHEALTHY_AFTER: u64 = 3;

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

/// Call counters and the last error of one plugin, kept across reloads of the same name.
#[derive(Debug, Default)]
pub struct Health {
    calls: AtomicU64,
    failures: AtomicU64,
    in_a_row: AtomicU64,
    last_error: Mutex<Option<(u64, String)>>,
}

impl Health {
    fn ok(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.in_a_row.store(0, Ordering::Relaxed);
    }

    fn failed(&self, message: &str) {
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
    pub program: Option<Arc<Program>>,
    /// Why `program` is missing.
    pub load_error: Option<String>,
    pub health: Arc<Health>,
}

impl Entry {
    fn guards(&self, p: &Path) -> bool {
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
    fn max_time_ms(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.checked.has(Hook::Validate) || e.checked.has(Hook::Transform))
            .map(|e| e.checked.manifest.limits.time_ms)
            .max()
            .unwrap_or(0)
    }
}

/// Write-path hooks whose time limits are all within this run on the request's own task.
const INLINE_TIME_MS: u64 = 100;

/// A source of plugin files this node lacks (the cluster's peers).
pub trait Fetch: Send + Sync {
    fn fetch(
        &self,
        sha256: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Vec<u8>>> + Send>>;
}

struct Inner {
    host: Host,
    db: Db,
    dir: PathBuf,
    registry: RwLock<Arc<Registry>>,
    health: Mutex<HashMap<String, Arc<Health>>>,
    reload: tokio::sync::Mutex<()>,
    fetch: RwLock<Option<Arc<dyn Fetch>>>,
    outputs: derive::Outputs,
    /// Loaded programs by [`program_key`]: kept across reloads while a manifest uses them,
    /// and filled by the install check so the reload after an install does not load again.
    programs: Mutex<HashMap<String, Arc<Program>>>,
    /// Writes that ran hooks, and the time the hooks added to them in all (ns).
    judged: AtomicU64,
    judge_nanos: AtomicU64,
}

/// What a loaded program depends on: the name (its log lines), the file, the hooks and limits.
fn program_key(m: &Manifest) -> String {
    format!("{}:{}:{:?}:{:?}", m.name, m.sha256, m.hooks, m.limits)
}

/// The plugin side of a node. Cheap to clone.
#[derive(Clone)]
pub struct Plugins {
    inner: Arc<Inner>,
}

/// Where the component with this sha256 is kept under a node's `DATA/plugins` directory.
pub fn blob_file(plugins_dir: &std::path::Path, sha256: &str) -> PathBuf {
    plugins_dir.join("blobs").join(format!("{sha256}.wasm"))
}

/// The stored manifest of plugin `name`, if any (not checked).
pub fn read_manifest(db: &Db, name: &str) -> Option<Result<Manifest, String>> {
    let p = Path::parse(MANIFESTS).ok()?.child(name).ok()?;
    let mut text = String::new();
    db.read()
        .store
        .render(p.key(), now_ms(), &mut text)
        .then(|| serde_json::from_str(&text).map_err(|e| e.to_string()))
}

/// The hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Plugins {
    /// Plugins of the node whose data directory is `data_dir` (files under `plugins/`).
    pub fn open(data_dir: &std::path::Path, db: Db) -> anyhow::Result<Plugins> {
        let dir = data_dir.join("plugins");
        std::fs::create_dir_all(dir.join("blobs"))?;
        let host = Host::new(dir.join("cache")).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        Ok(Plugins {
            inner: Arc::new(Inner {
                host,
                db,
                dir,
                registry: RwLock::new(Arc::new(Registry::default())),
                health: Mutex::new(HashMap::new()),
                reload: tokio::sync::Mutex::new(()),
                fetch: RwLock::new(None),
                outputs: derive::Outputs::default(),
                programs: Mutex::new(HashMap::new()),
                judged: AtomicU64::new(0),
                judge_nanos: AtomicU64::new(0),
            }),
        })
    }

    pub fn host(&self) -> &Host {
        &self.inner.host
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// Where peers' files come from once clustering is up.
    pub fn set_fetch(&self, f: Arc<dyn Fetch>) {
        *self.inner.fetch.write().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.inner
            .registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn outputs(&self) -> &derive::Outputs {
        &self.inner.outputs
    }

    /// The file of the component with this sha256.
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        blob_file(&self.inner.dir, sha256)
    }

    /// Stores a component file (synced, then renamed into place) and answers its sha256.
    pub fn put_blob(&self, bytes: &[u8]) -> anyhow::Result<String> {
        use std::io::Write as _;
        let sha = sha256_hex(bytes);
        let path = self.blob_path(&sha);
        if path.exists() {
            return Ok(sha);
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(sha)
    }

    /// Loads a manifest's component now (compiling it unless cached) and checks it: the
    /// install and update calls use this so a bad plugin is refused before it is stored. The
    /// program is kept for the reload that follows the install.
    pub async fn check_loadable(&self, checked: &Checked) -> anyhow::Result<()> {
        self.load(checked).await.map(drop)
    }

    /// The program of a manifest: the one already loaded for the same key, or a new one.
    async fn load(&self, checked: &Checked) -> anyhow::Result<Arc<Program>> {
        let m = &checked.manifest;
        let key = program_key(m);
        let loaded = self
            .inner
            .programs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if let Some(p) = loaded {
            return Ok(p);
        }
        let path = self.blob_path(&m.sha256);
        if !path.exists() {
            let fetch = self
                .inner
                .fetch
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let Some(fetch) = fetch else {
                anyhow::bail!("its file (sha256 {}) is not on this node", m.sha256);
            };
            let bytes = fetch.fetch(m.sha256.clone()).await?;
            if sha256_hex(&bytes) != m.sha256 {
                anyhow::bail!("a peer sent a file whose sha256 is not {}", m.sha256);
            }
            self.put_blob(&bytes)?;
        }
        let host = self.inner.host.clone();
        let (name, sha, hooks, limits) =
            (m.name.clone(), m.sha256.clone(), m.hooks.clone(), m.limits);
        let program = tokio::task::spawn_blocking(move || {
            let p = host
                .load(&name, &sha, &path, &hooks, limits)
                .map_err(|e| anyhow::anyhow!("{e:#}"))?;
            p.warm_up().map_err(|e| anyhow::anyhow!("its start {e}"))?;
            anyhow::Ok(p)
        })
        .await??;
        let program = Arc::new(program);
        tracing::info!(
            plugin = m.name,
            sha256 = m.sha256,
            cached = program.cached,
            "plugin loaded"
        );
        self.inner
            .programs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, program.clone());
        Ok(program)
    }

    /// The manifests in the store, checked; broken ones are logged and skipped.
    fn manifests(&self) -> Vec<Checked> {
        let db = &self.inner.db;
        let base = Path::parse(MANIFESTS).expect("valid path");
        let names = match db.read().store.children(base.key(), now_ms()) {
            Some(Ok(kids)) => kids,
            _ => return Vec::new(),
        };
        let mut out = Vec::new();
        for (name, _) in names {
            let Some(read) = read_manifest(db, &name) else {
                continue;
            };
            match read.and_then(Manifest::check) {
                Ok(c) if c.manifest.name == name => out.push(c),
                Ok(_) => tracing::warn!(plugin = name, "manifest names another plugin; ignored"),
                Err(e) => tracing::warn!(plugin = name, error = e, "unreadable manifest ignored"),
            }
        }
        out.sort_by(|a, b| {
            (a.manifest.installed, &a.manifest.name).cmp(&(b.manifest.installed, &b.manifest.name))
        });
        out
    }

    /// Brings the registry in line with the manifests in the store.
    pub async fn reload(&self) {
        let _one = self.inner.reload.lock().await;
        let mut entries = Vec::new();
        for checked in self.manifests() {
            let name = checked.manifest.name.clone();
            let health = self
                .inner
                .health
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(name.clone())
                .or_default()
                .clone();
            let (program, load_error) = match self.load(&checked).await {
                Ok(p) => (Some(p), None),
                Err(e) => {
                    tracing::warn!(plugin = name, error = %format!("{e:#}"), "plugin not loaded");
                    (None, Some(format!("{e:#}")))
                }
            };
            entries.push(Arc::new(Entry {
                checked,
                program,
                load_error,
                health,
            }));
        }
        // Programs no manifest uses any more are dropped (writes in flight keep theirs).
        let used: std::collections::HashSet<String> = entries
            .iter()
            .map(|e| program_key(&e.checked.manifest))
            .collect();
        self.inner
            .programs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| used.contains(k));
        let new = Arc::new(Registry { entries });
        *self
            .inner
            .registry
            .write()
            .unwrap_or_else(|e| e.into_inner()) = new.clone();
        self.inner.outputs.retain(&new);
        derive::reconcile(self, &new);
    }

    /// Follows `/.herd/plugins` and reloads on every change; returns when `cancel` fires.
    pub async fn follow(self, cancel: tokio_util::sync::CancellationToken) {
        let key = Path::parse(MANIFESTS).expect("valid path");
        let mut sub = match self.inner.db.subscribe(key.key(), None) {
            Ok(s) => s,
            Err(_) => return,
        };
        self.reload().await;
        let mut retry = tokio::time::interval(RETRY_LOAD);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    derive::stop_all(&self);
                    return;
                }
                _ = retry.tick() => {
                    // A plugin whose file is still on its way from a peer is tried again.
                    if self.registry().entries.iter().all(|e| e.program.is_some()) {
                        continue;
                    }
                }
                ev = sub.live.recv() => match ev {
                    Ok(ev) if !crate::store::path::key_related(key.key(), &ev.key) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    _ => {}
                }
            }
            // Coalesce a burst of manifest changes into one reload.
            while sub.live.try_recv().is_ok() {}
            self.reload().await;
        }
    }

    /// True if some plugin could be concerned by a write at any of `paths`.
    pub fn concerned<'a>(&self, paths: impl IntoIterator<Item = &'a Path>) -> bool {
        let reg = self.registry();
        if reg.entries.is_empty() {
            return false;
        }
        paths.into_iter().any(|p| {
            reg.entries.iter().any(|e| {
                e.guards(p)
                    || e.checked
                        .output
                        .as_ref()
                        .is_some_and(|o| o.contains(p) || p.contains(o))
            })
        })
    }

    /// Runs every hook a write concerns, on a blocking thread: transforms rewrite `writes`,
    /// validators judge the result. `token` names the writer.
    pub async fn judge(&self, writes: Vec<Write>, token: &str) -> Result<Vec<Write>, Rejection> {
        if !self.concerned(writes.iter().map(|w| &w.path)) {
            return Ok(writes);
        }
        // Hooks bounded by a short time limit run right here: the call is cheaper than any
        // hand-off (block_in_place cost 50-100 µs a write here, the C validator itself less
        // than that), and a runaway hook holds this worker for at most the limit while the
        // runtime's other worker steals its queued tasks. Longer limits hand the worker's
        // tasks over first (block_in_place), or run on a blocking thread.
        if self.registry().max_time_ms() <= INLINE_TIME_MS {
            return self.judge_now(writes, token);
        }
        if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        {
            return tokio::task::block_in_place(|| self.judge_now(writes, token));
        }
        let me = self.clone();
        let token = token.to_owned();
        match tokio::task::spawn_blocking(move || me.judge_now(writes, &token)).await {
            Ok(r) => r,
            Err(e) => Err(Rejection::Failed {
                plugin: "?".into(),
                message: format!("hook task failed: {e}"),
            }),
        }
    }

    /// [`Plugins::judge`] on the calling thread (the file view's threads).
    pub fn judge_now(&self, writes: Vec<Write>, token: &str) -> Result<Vec<Write>, Rejection> {
        let start = std::time::Instant::now();
        let r = self.run_hooks(writes, token);
        self.inner.judged.fetch_add(1, Ordering::Relaxed);
        self.inner
            .judge_nanos
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }

    /// Writes that ran hooks on this node, and the mean time the hooks added to each (µs).
    pub fn hook_time(&self) -> Value {
        let n = self.inner.judged.load(Ordering::Relaxed);
        let ns = self.inner.judge_nanos.load(Ordering::Relaxed);
        serde_json::json!({
            "writes": n,
            "total_us": ns / 1000,
            "mean_us": if n == 0 { 0.0 } else { ns as f64 / n as f64 / 1000.0 },
        })
    }

    fn run_hooks(&self, mut writes: Vec<Write>, token: &str) -> Result<Vec<Write>, Rejection> {
        let reg = self.registry();
        if reg.entries.is_empty() {
            return Ok(writes);
        }
        // Derived outputs are read-only.
        for w in &writes {
            for e in &reg.entries {
                let Some(o) = &e.checked.output else { continue };
                let hits = o.contains(&w.path)
                    || (w.value.is_some()
                        && relative(&w.path, o).is_some_and(|rel| {
                            w.value.as_ref().and_then(|v| at(v, &rel)).is_some()
                        }));
                if hits {
                    return Err(Rejection::ReadOnly {
                        plugin: e.checked.manifest.name.clone(),
                        path: o.to_string(),
                    });
                }
            }
        }
        let db = self.inner.db.clone();
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
                let program = self.program(e)?;
                for (at_path, change) in changes_for(&db, e, &writes[i], token) {
                    if change.value.is_none() {
                        continue;
                    }
                    let view = Arc::new(After {
                        db: db.clone(),
                        writes: writes.clone(),
                    });
                    let out = program
                        .transform(view, &change)
                        .map_err(|err| self.fail(e, err))?;
                    let v = crate::store::value::parse(out.as_bytes()).map_err(|err| {
                        self.fail(
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
                let program = self.program(e)?;
                for (_, change) in changes_for(&db, e, w, token) {
                    program
                        .validate(view.clone(), &change)
                        .map_err(|err| self.fail(e, err))?;
                    e.health.ok();
                }
            }
        }
        Ok(writes)
    }

    fn program<'a>(&self, e: &'a Entry) -> Result<&'a Arc<Program>, Rejection> {
        e.program.as_ref().ok_or_else(|| Rejection::Unavailable {
            plugin: e.checked.manifest.name.clone(),
            message: e
                .load_error
                .clone()
                .unwrap_or_else(|| "not loaded yet".into()),
        })
    }

    fn fail(&self, e: &Entry, err: CallError) -> Rejection {
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

    /// The plugins as `/v1/status` shows them.
    pub fn status(&self) -> Value {
        let reg = self.registry();
        Value::Array(
            reg.entries
                .iter()
                .map(|e| {
                    let v = e.to_json();
                    serde_json::json!({
                        "name": e.checked.manifest.name,
                        "state": v["state"],
                        "last_error": v["last_error"],
                    })
                })
                .collect(),
        )
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
