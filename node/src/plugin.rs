//! WebAssembly plugins (the contract is `wit/herd.wit`, the guide is the README): the registry
//! of installed plugins (`registry`), the write-path hooks (`judge`: `transform` then
//! `validate`, on the node that receives a write), the derived keys (`derive`), the component
//! files (`blobs`) and the wasm host (`host`). This file loads and reloads them and decides
//! where a write's hooks run.
//!
//! Manifests live in the store at `/.herd/plugins/<name>`, so installing on one node reaches
//! every node by replication; the component itself is kept under `DATA/plugins/blobs/` by its
//! sha256 and fetched from a peer when a node sees a manifest whose file it lacks. Every change
//! under `/.herd/plugins` reloads the registry: plugins whose sha256, hooks and limits did not
//! change keep their loaded program; a write takes the registry snapshot current when it starts,
//! so writes in flight finish on the version they started with.

pub mod blobs;
pub mod derive;
pub mod host;
pub mod judge;
pub mod manifest;
pub mod registry;
pub mod view;

use crate::clock::now_ms;
use crate::db::Db;
use crate::store::Path;
pub use blobs::{blob_file, sha256_hex};
use host::{Host, Program};
pub use judge::Rejection;
pub use manifest::Hook;
use manifest::{Checked, Manifest};
pub use registry::{Entry, Health, Hooks, Registry};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use view::Write;

/// Why a plugin could not be stored or loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("its file (sha256 {0}) is not on this node")]
    NotHere(String),
    #[error("{0}")]
    Fetch(String),
    #[error("a peer sent a file whose sha256 is not {0}")]
    WrongFile(String),
    /// Compiling, linking or starting the component failed.
    #[error("{0}")]
    Load(String),
}

/// Where manifests live in the store.
pub const MANIFESTS: &str = "/.herd/plugins";

/// How often a node retries loading plugins it could not load (file not fetched yet).
const RETRY_LOAD: std::time::Duration = std::time::Duration::from_secs(2);

/// Write-path hooks whose time limits are all within this run on the request's own task.
const INLINE_TIME_MS: u64 = 100;

/// A source of plugin files this node lacks (the cluster's peers).
pub trait Fetch: Send + Sync {
    fn fetch(
        &self,
        sha256: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<u8>, Error>> + Send>>;
}

struct Inner {
    host: Host,
    db: Db,
    /// The node's tracker and cancel token: derive tasks join the one and end with the other
    /// (each under a child token of its own), so shutdown ends them and waits for them.
    tracker: tokio_util::task::TaskTracker,
    cancel: tokio_util::sync::CancellationToken,
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
    format!(
        "{}:{}:{:?}:{:?}:{:?}",
        m.name, m.sha256, m.hooks, m.limits, m.output
    )
}

/// A plugin's environment: its name, and where a derive plugin's outputs go (the same on every
/// node, so every node computes the same).
pub fn environment(name: &str, output: Option<&str>) -> Vec<(String, String)> {
    let mut env = vec![("HERD_PLUGIN".to_owned(), name.to_owned())];
    if let Some(o) = output {
        env.push(("HERD_OUTPUT".to_owned(), o.to_owned()));
    }
    env
}

/// The plugin side of a node. Cheap to clone.
#[derive(Clone)]
pub struct Plugins {
    inner: Arc<Inner>,
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

impl Plugins {
    /// Plugins of the node whose data directory is `data_dir` (files under `plugins/`).
    pub fn open(
        data_dir: &std::path::Path,
        db: Db,
        tracker: tokio_util::task::TaskTracker,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Result<Plugins, Error> {
        let dir = data_dir.join("plugins");
        let blobs = dir.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(|source| Error::Io {
            what: "create",
            path: blobs,
            source,
        })?;
        let host = Host::new(dir.join("cache")).map_err(|e| Error::Load(format!("{e:#}")))?;
        Ok(Plugins {
            inner: Arc::new(Inner {
                host,
                db,
                tracker,
                cancel,
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

    pub(crate) fn tracker(&self) -> &tokio_util::task::TaskTracker {
        &self.inner.tracker
    }

    pub(crate) fn cancel(&self) -> &tokio_util::sync::CancellationToken {
        &self.inner.cancel
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

    /// The plugins' directory in the data directory.
    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.inner.dir
    }

    pub fn outputs(&self) -> &derive::Outputs {
        &self.inner.outputs
    }

    /// The file of the component with this sha256.
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        blob_file(&self.inner.dir, sha256)
    }

    /// Stores a component file (synced, then renamed into place) and answers its sha256.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<String, Error> {
        blobs::put(&self.inner.dir, bytes)
    }

    /// Loads a manifest's component now (compiling it unless cached) and checks it: the
    /// install and update calls use this so a bad plugin is refused before it is stored. The
    /// program is kept for the reload that follows the install.
    pub async fn check_loadable(&self, checked: &Checked) -> Result<(), Error> {
        self.load(checked).await.map(drop)
    }

    /// The program of a manifest: the one already loaded for the same key, or a new one.
    async fn load(&self, checked: &Checked) -> Result<Arc<Program>, Error> {
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
        // Checked against its sha256 (bytes damaged on disk are never compiled); a file
        // missing or damaged here is fetched from a peer.
        let local = match path.exists() {
            true => {
                let (file, sha) = (path.clone(), m.sha256.clone());
                tokio::task::spawn_blocking(move || blobs::read(&file, &sha).map(drop))
                    .await
                    .map_err(|e| Error::Load(format!("the reading task failed: {e}")))?
            }
            false => Err(String::new()),
        };
        if let Err(damaged) = local {
            let fetch = self
                .inner
                .fetch
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let Some(fetch) = fetch else {
                return Err(match damaged.is_empty() {
                    true => Error::NotHere(m.sha256.clone()),
                    false => Error::Load(damaged),
                });
            };
            if !damaged.is_empty() {
                tracing::warn!(plugin = m.name, "{damaged}; fetching it again from a peer");
            }
            let bytes = fetch.fetch(m.sha256.clone()).await?;
            if sha256_hex(&bytes) != m.sha256 {
                return Err(Error::WrongFile(m.sha256.clone()));
            }
            self.put_blob(&bytes)?;
        }
        let host = self.inner.host.clone();
        let (name, sha, hooks, limits) =
            (m.name.clone(), m.sha256.clone(), m.hooks.clone(), m.limits);
        let env = environment(&m.name, m.output.as_deref());
        let program = tokio::task::spawn_blocking(move || {
            let p = host
                .load(&name, &sha, &path, &hooks, limits, env)
                .map_err(|e| Error::Load(format!("{e:#}")))?;
            p.warm_up()
                .map_err(|e| Error::Load(format!("its start {e}")))?;
            Ok::<_, Error>(p)
        })
        .await
        .map_err(|e| Error::Load(format!("the loading task failed: {e}")))??;
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
                Ok(p) => (Some(p as Arc<dyn Hooks>), None),
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
        // Tasks of plugins gone or changed stop first: none of their runs applies after this.
        derive::reconcile(self, &new);
        let gone = self.inner.outputs.retain(&new);
        let derivers: Vec<&str> = new
            .entries
            .iter()
            .filter(|e| e.checked.has(Hook::Derive))
            .map(|e| e.checked.manifest.name.as_str())
            .collect();
        derive::forget_saved(self, &derivers);
        // Already gone from reads: a watch started meanwhile is told of a delete of what it
        // never saw, which changes nothing for it.
        let nothing = Box::new(|| true);
        if gone.is_empty() {
            return;
        }
        if let Err(e) = derive::announce(self, gone, nothing).await {
            // Not retried: a watcher that missed these deletes still sees reads and a fresh
            // watch without the removed plugin's outputs.
            tracing::warn!(error = %e, "a removed plugin's outputs are gone but watchers could not be told");
        }
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
        let r = judge::judge(&self.registry(), &self.inner.db, writes, token);
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
