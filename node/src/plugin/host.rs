//! The WebAssembly host: wasmtime engines (component model, cranelift, epoch interruption; one
//! per wasm stack limit in use),
//! the compiled-code cache on disk, and per plugin a pre-instantiated component with a small
//! pool of live instances. The contract's bindings are generated here, once.
//!
//! A call takes an idle instance (or instantiates one), sets its epoch deadline, runs the hook
//! and gives the instance back. A call that fails in any way (trap, timeout, memory cap, stack
//! overflow) drops its instance, so a broken instance never serves another call.

use super::blobs;
use super::manifest::{Hook, Limits};
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, InstancePre, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
});

pub use exports::herd::plugin::{deriver, transformer, validator};
pub use herd::plugin::log::Level;
pub use herd::plugin::types::{Change, Output};

/// How often the epoch advances: the granularity of time limits.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Most idle instances kept per plugin.
const MAX_IDLE: usize = 4;

/// What `store.get` and `store.list` see during one call.
pub trait StoreView: Send + Sync {
    fn get(&self, path: &str) -> Option<String>;
    fn list(&self, path: &str) -> Vec<String>;
}

/// A view of nothing: for loading and `herd plugin test` without a store.
pub struct EmptyView;

impl StoreView for EmptyView {
    fn get(&self, _: &str) -> Option<String> {
        None
    }
    fn list(&self, _: &str) -> Vec<String> {
        Vec::new()
    }
}

/// Per-instance host state.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    view: Arc<dyn StoreView>,
    plugin: Arc<str>,
    /// The `error` lines logged during the call in progress (a derive run reports them).
    errors: Vec<String>,
}

/// Most `error` lines a call keeps for its report.
const MAX_REPORTED: usize = 16;

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl herd::plugin::types::Host for HostState {}

impl herd::plugin::store::Host for HostState {
    fn get(&mut self, path: String) -> Option<String> {
        self.view.get(&path)
    }

    fn list(&mut self, path: String) -> Vec<String> {
        self.view.list(&path)
    }
}

impl herd::plugin::log::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let message = cut(message, MAX_MESSAGE);
        let plugin = &*self.plugin;
        match level {
            Level::Debug => tracing::debug!(target: "plugin", plugin, "{message}"),
            Level::Info => tracing::info!(target: "plugin", plugin, "{message}"),
            Level::Warn => tracing::warn!(target: "plugin", plugin, "{message}"),
            Level::Error => {
                tracing::error!(target: "plugin", plugin, "{message}");
                if self.errors.len() < MAX_REPORTED {
                    self.errors.push(message);
                }
            }
        }
    }
}

/// A fixed-seed random source: plugins get no entropy, so every node computes the same.
struct Fixed(u64);

impl rand::TryRng for Fixed {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.try_next_u64()? as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Ok(z ^ (z >> 31))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let v = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}

/// A clock stopped at the Unix epoch.
struct Frozen;

impl wasmtime_wasi::clocks::HostWallClock for Frozen {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::clocks::HostMonotonicClock for Frozen {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// WASI with nothing in it: no preopened directories, no sockets, no environment, closed
/// stdio, a frozen clock and a fixed-seed random source.
fn empty_wasi(env: &[(String, String)]) -> WasiCtx {
    WasiCtx::builder()
        .envs(env)
        .secure_random(Fixed(0x6865_7264))
        .insecure_random(Fixed(0x7769_6e64))
        .insecure_random_seed(0)
        .wall_clock(Frozen)
        .monotonic_clock(Frozen)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

/// The interfaces a plugin may import: the contract's and WASI's (linked empty).
fn import_allowed(name: &str) -> bool {
    const ALLOWED: &[&str] = &[
        "herd:plugin/",
        "wasi:cli/",
        "wasi:io/",
        "wasi:clocks/",
        "wasi:random/",
        "wasi:filesystem/",
        "wasi:sockets/",
    ];
    ALLOWED.iter().any(|a| name.starts_with(a))
}

/// How a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The plugin answered `err(message)`.
    Refused(String),
    /// The plugin could not answer: trap, timeout, memory cap, bad return.
    Failed(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Refused(m) | CallError::Failed(m) => f.write_str(m),
        }
    }
}

/// One engine and its linker; engines differ only in their wasm stack limit.
#[derive(Clone)]
struct Runtime {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
}

impl Runtime {
    fn new(stack: usize) -> wasmtime::Result<Runtime> {
        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(stack);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
        })
    }
}

/// Counts the guest calls in progress, so the epoch thread ticks only while guest code runs:
/// an idle node (or one without plugins) is not woken every [`EPOCH_TICK`].
#[derive(Default)]
struct Ticker {
    running: Mutex<usize>,
    started: Condvar,
    /// Set once the host is gone: the epoch thread ends.
    stopped: std::sync::atomic::AtomicBool,
}

impl Ticker {
    /// Marks guest code as running until the guard is dropped.
    fn enter(&self) -> Running<'_> {
        let mut n = self.running.lock().unwrap_or_else(|e| e.into_inner());
        *n += 1;
        if *n == 1 {
            self.started.notify_one();
        }
        Running(self)
    }

    /// Waits (up to `most`) until some guest code runs or the host is gone; true if some
    /// guest code runs.
    fn wait_running(&self, most: Duration) -> bool {
        let n = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let (n, _) = self
            .started
            .wait_timeout_while(n, most, |n| *n == 0 && !self.is_stopped())
            .unwrap_or_else(|e| e.into_inner());
        *n > 0
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Ends the epoch thread's wait at once.
    fn stop(&self) {
        let _n = self.running.lock().unwrap_or_else(|e| e.into_inner());
        self.stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.started.notify_all();
    }
}

/// The epoch thread, stopped and joined when the last clone of its host is dropped.
struct Epoch {
    ticker: Arc<Ticker>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Epoch {
    fn drop(&mut self) {
        self.ticker.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Guest code is running while this lives.
struct Running<'a>(&'a Ticker);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        *self.0.running.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
    }
}

/// The engines (one per stack limit in use) and the compiled-code cache every plugin shares.
#[derive(Clone)]
pub struct Host {
    runtimes: Arc<Mutex<HashMap<u64, Runtime>>>,
    ticker: Arc<Ticker>,
    _epoch: Arc<Epoch>,
    cache: PathBuf,
}

impl Host {
    /// A host whose compiled code is cached under `cache` (created if missing). A thread
    /// advances every engine's epoch every [`EPOCH_TICK`] while guest code runs, for as long
    /// as the host lives; the last clone's drop stops and joins it.
    pub fn new(cache: PathBuf) -> wasmtime::Result<Host> {
        std::fs::create_dir_all(&cache)?;
        let default = Limits::default().stack;
        let runtimes = Arc::new(Mutex::new(HashMap::from([(
            default,
            Runtime::new(default as usize)?,
        )])));
        let weak = Arc::downgrade(&runtimes);
        let ticker = Arc::new(Ticker::default());
        let ticks = ticker.clone();
        let thread = std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || loop {
                let running = ticks.wait_running(Duration::from_secs(1));
                if ticks.is_stopped() || weak.strong_count() == 0 {
                    return;
                }
                if !running {
                    continue;
                }
                std::thread::sleep(EPOCH_TICK);
                let Some(rts) = weak.upgrade() else { return };
                for rt in rts.lock().unwrap_or_else(|e| e.into_inner()).values() {
                    rt.engine.increment_epoch();
                }
            })?;
        Ok(Host {
            runtimes,
            _epoch: Arc::new(Epoch {
                ticker: ticker.clone(),
                thread: Some(thread),
            }),
            ticker,
            cache,
        })
    }

    /// The engine for a stack limit, made on first use.
    fn runtime(&self, stack: u64) -> wasmtime::Result<Runtime> {
        let mut rts = self.runtimes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rt) = rts.get(&stack) {
            return Ok(rt.clone());
        }
        let rt = Runtime::new(stack as usize)?;
        rts.insert(stack, rt.clone());
        Ok(rt)
    }

    /// The cached compilation of the component with this sha256, compiling `wasm` on a miss.
    /// Answers whether the cache was used.
    fn component(
        &self,
        engine: &Engine,
        sha256: &str,
        wasm: &FsPath,
    ) -> wasmtime::Result<(Component, bool)> {
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let file = self
            .cache
            .join(format!("{sha256}-{:016x}.cwasm", h.finish()));
        if file.exists() {
            match blobs::compiled_intact(&file) {
                true => match deserialize(engine, &file) {
                    Ok(c) => return Ok((c, true)),
                    Err(e) => {
                        tracing::warn!(file = %file.display(), error = %e, "compiled plugin unusable; compiling again")
                    }
                },
                false => tracing::warn!(
                    file = %file.display(),
                    "compiled plugin does not match its sha256 (damaged, or written by an earlier version); compiling again"
                ),
            }
        }
        let bytes = blobs::read(wasm, sha256).map_err(wasmtime::Error::msg)?;
        let component = Component::new(engine, &bytes)?;
        blobs::write_compiled(&file, &component.serialize()?)?;
        // Used from the file, as a cached one is: wasmtime then maps the initial memory
        // straight from it. Built in memory it would copy it into a sealed memfd, and sealing
        // fails (EBUSY) now and then while the kernel still holds the freshly written pages.
        match deserialize(engine, &file) {
            Ok(from_file) => Ok((from_file, false)),
            Err(_) => Ok((component, false)),
        }
    }

    /// Loads a plugin: compiles (or takes from the cache), checks its imports against the
    /// contract and that it exports every hook in `hooks`, and pre-instantiates it.
    pub fn load(
        &self,
        name: &str,
        sha256: &str,
        wasm: &FsPath,
        hooks: &[Hook],
        limits: Limits,
        env: Vec<(String, String)>,
    ) -> wasmtime::Result<Program> {
        let rt = self.runtime(limits.stack)?;
        let (component, cached) = self.component(&rt.engine, sha256, wasm)?;
        let ty = component.component_type();
        for (import, _) in ty.imports(&rt.engine) {
            if !import_allowed(import) {
                wasmtime::bail!("it imports `{import}`, which the plugin contract does not give");
            }
        }
        let pre = rt.linker.instantiate_pre(&component)?;
        let validate = validator::GuestIndices::new(&pre).ok();
        let transform = transformer::GuestIndices::new(&pre).ok();
        let derive = deriver::GuestIndices::new(&pre).ok();
        for hook in hooks {
            let present = match hook {
                Hook::Validate => validate.is_some(),
                Hook::Transform => transform.is_some(),
                Hook::Derive => derive.is_some(),
            };
            if !present {
                let iface = match hook {
                    Hook::Validate => "validator",
                    Hook::Transform => "transformer",
                    Hook::Derive => "deriver",
                };
                wasmtime::bail!(
                    "the manifest names the {hook} hook but the component does not export herd:plugin/{iface}"
                );
            }
        }
        Ok(Program {
            name: name.into(),
            env,
            engine: rt.engine.clone(),
            pre,
            indices: Indices {
                validate,
                transform,
                derive,
            },
            limits,
            idle: Mutex::new(Vec::new()),
            ticker: self.ticker.clone(),
            _epoch: self._epoch.clone(),
            cached,
        })
    }
}

/// Reading compiled code back is `unsafe` in wasmtime because the bytes are trusted to be
/// wasmtime's own output. They are: the node wrote them into its private data directory
/// (mode 0700) under a name that holds the component's sha256 and the engine's compatibility
/// hash, checked them against the sha256 it wrote beside them (bytes damaged on disk are
/// never run), and wasmtime checks the header and version again before it uses them.
#[allow(
    unsafe_code,
    reason = "compiled plugin cache written by this node only"
)]
fn deserialize(engine: &Engine, file: &FsPath) -> wasmtime::Result<Component> {
    // SAFETY: see the function's comment: the file is this node's own serialized output.
    unsafe { Component::deserialize_file(engine, file) }
}

#[derive(Clone)]
struct Indices {
    validate: Option<validator::GuestIndices>,
    transform: Option<transformer::GuestIndices>,
    derive: Option<deriver::GuestIndices>,
}

/// One live instance with its hooks looked up.
struct Slot {
    store: Store<HostState>,
    validate: Option<validator::Guest>,
    transform: Option<transformer::Guest>,
    derive: Option<deriver::Guest>,
}

/// A loaded plugin, ready to call.
pub struct Program {
    name: Arc<str>,
    /// The plugin's environment (`HERD_PLUGIN`, `HERD_OUTPUT`).
    env: Vec<(String, String)>,
    engine: Engine,
    pre: InstancePre<HostState>,
    indices: Indices,
    limits: Limits,
    idle: Mutex<Vec<Slot>>,
    ticker: Arc<Ticker>,
    /// Keeps the epoch thread running while the program can be called, host or not.
    _epoch: Arc<Epoch>,
    /// The compiled code came from the cache.
    pub cached: bool,
}

impl Program {
    fn instantiate(&self) -> wasmtime::Result<Slot> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory as usize)
            .instances(64)
            .tables(64)
            .memories(16)
            .table_elements(1 << 20)
            .trap_on_grow_failure(true)
            .build();
        let state = HostState {
            wasi: empty_wasi(&self.env),
            table: ResourceTable::new(),
            limits,
            view: Arc::new(EmptyView),
            errors: Vec::new(),
            plugin: self.name.clone(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.ticks());
        let instance = self.pre.instantiate(&mut store)?;
        let validate = match &self.indices.validate {
            Some(i) => Some(i.load(&mut store, &instance)?),
            None => None,
        };
        let transform = match &self.indices.transform {
            Some(i) => Some(i.load(&mut store, &instance)?),
            None => None,
        };
        let derive = match &self.indices.derive {
            Some(i) => Some(i.load(&mut store, &instance)?),
            None => None,
        };
        Ok(Slot {
            store,
            validate,
            transform,
            derive,
        })
    }

    fn ticks(&self) -> u64 {
        let tick = EPOCH_TICK.as_millis() as u64;
        self.limits.time_ms.div_ceil(tick) + 1
    }

    /// Instantiates once, so a plugin whose start traps or outgrows its limits fails at load.
    pub fn warm_up(&self) -> Result<(), CallError> {
        let _running = self.ticker.enter();
        let slot = self.instantiate().map_err(|e| self.failure(e))?;
        self.give_back(slot);
        Ok(())
    }

    fn take(&self) -> wasmtime::Result<Slot> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match idle {
            Some(s) => Ok(s),
            None => self.instantiate(),
        }
    }

    fn give_back(&self, slot: Slot) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(slot);
        }
    }

    /// Runs one hook call on an instance with `view` as its store.
    fn call<R>(
        &self,
        view: Arc<dyn StoreView>,
        f: impl FnOnce(&mut Slot) -> wasmtime::Result<Result<R, String>>,
    ) -> Result<R, CallError> {
        let _running = self.ticker.enter();
        let mut slot = self.take().map_err(|e| self.failure(e))?;
        slot.store.data_mut().view = view;
        slot.store.data_mut().errors.clear();
        slot.store.set_epoch_deadline(self.ticks());
        let r = f(&mut slot);
        slot.store.data_mut().view = Arc::new(EmptyView);
        match r {
            Ok(answer) => {
                self.give_back(slot);
                answer.map_err(|m| CallError::Refused(cut(m, MAX_MESSAGE)))
            }
            // The instance may be in any state after a trap: it is dropped with `slot`.
            Err(e) => Err(self.failure(e)),
        }
    }

    fn failure(&self, e: wasmtime::Error) -> CallError {
        let text = format!("{e:#}");
        let msg = match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => format!(
                "did not finish within its time limit of {}ms",
                self.limits.time_ms
            ),
            Some(Trap::StackOverflow) => "overflowed its stack (too deep recursion)".into(),
            Some(Trap::OutOfFuel) => "ran out of fuel".into(),
            _ if text.contains("growing memory") || text.contains("memory minimum size") => {
                format!(
                    "went over its memory limit of {} MiB",
                    self.limits.memory >> 20
                )
            }
            Some(t) => format!("trapped: {t}"),
            None => format!("failed: {}", first_line(&text)),
        };
        CallError::Failed(msg)
    }

    pub fn validate(&self, view: Arc<dyn StoreView>, change: &Change) -> Result<(), CallError> {
        self.call(view, |slot| match &slot.validate {
            Some(g) => g.call_validate(&mut slot.store, change),
            None => Ok(Ok(())),
        })
    }

    pub fn transform(
        &self,
        view: Arc<dyn StoreView>,
        change: &Change,
    ) -> Result<String, CallError> {
        self.call(view, |slot| match &slot.transform {
            Some(g) => g.call_transform(&mut slot.store, change),
            None => Ok(Ok(change.value.clone().unwrap_or_else(|| "null".into()))),
        })
    }

    /// A derive run: the outputs, and the `error` lines the plugin logged while computing
    /// them (problems it worked around, such as one template that did not render).
    pub fn derive(
        &self,
        view: Arc<dyn StoreView>,
        changed: &[String],
    ) -> Result<Derived, CallError> {
        self.call(view, |slot| {
            let outputs = match &slot.derive {
                Some(g) => g.call_derive(&mut slot.store, changed)?,
                None => Ok(Vec::new()),
            };
            let problems = std::mem::take(&mut slot.store.data_mut().errors);
            Ok(outputs.map(|outputs| Derived { outputs, problems }))
        })
    }

    pub fn has(&self, hook: Hook) -> bool {
        match hook {
            Hook::Validate => self.indices.validate.is_some(),
            Hook::Transform => self.indices.transform.is_some(),
            Hook::Derive => self.indices.derive.is_some(),
        }
    }
}

/// What a derive run returned.
#[derive(Debug, Default)]
pub struct Derived {
    pub outputs: Vec<Output>,
    /// The `error` lines logged during the run.
    pub problems: Vec<String>,
}

/// The longest message from a plugin passed on to a writer.
pub const MAX_MESSAGE: usize = 4096;

/// `s` cut to at most `max` bytes (on a character boundary), marked when cut.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push_str(" [cut]");
    }
    s
}

fn first_line(s: &str) -> &str {
    let line = s.lines().next().unwrap_or(s);
    match line.char_indices().nth(300) {
        Some((i, _)) => &line[..i],
        None => line,
    }
}
