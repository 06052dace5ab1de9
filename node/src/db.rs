//! The live database of one node: the store behind a lock, the change log, the event fan-out,
//! the single writer thread that plans and logs every change, and the sync thread that makes
//! groups durable and applies them.
//!
//! Write path: callers send requests to the writer thread; it drains whatever is queued, checks
//! preconditions and plans each request against the committed state (stamping versions and
//! revisions), and appends the whole group to the write-ahead log as one record. The sync thread
//! then syncs the log, and only then applies the group to the in-memory store, appends the
//! events and answers. While a sync is under way the writer holds back: the requests that arrive
//! meanwhile queue up, and once the sync is done the writer plans them all as the next group
//! while the sync thread applies and answers the last one. So readers never see a write that is
//! not durable, concurrent writers share fsyncs, and a loaded writer wakes once per sync instead
//! of once per arriving request. Two requests whose paths
//! overlap (one contains the other) never share a group, and a request that overlaps a group
//! still being synced waits until that group is applied, so planning against the committed state
//! is exact.
//!
//! Must not know about HTTP, TLS or the CLI.

use crate::storage::{self, LogSync, Storage};
use crate::store::log::Compacted;
use crate::store::{
    path, ChangeLog, Event, EventKind, Hlc, Kind, Lookup, Op, Register, Registers, Store, Version,
};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Most requests planned into one group commit.
const MAX_GROUP: usize = 1024;
/// A log sync at least this slow is reported as a warning, with how many writes waited for it...
const SLOW_SYNC: Duration = Duration::from_millis(100);
/// ...at most once in this long (the next report sums up the slow syncs in between), so a disk
/// that is always slow does not log on every commit.
const SLOW_SYNC_REPORT: Duration = Duration::from_secs(60);
/// Local writes the replication feed holds for a slow reader before that reader lags (and is
/// then repaired by anti-entropy instead).
const CHANGE_FEED: usize = 8192;

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why a write was refused. Nothing of a refused write is stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("nothing at {0}")]
    NotFound(String),
    #[error("{path} is at version {current}, not {expected}")]
    PreconditionFailed {
        path: String,
        expected: Version,
        current: String,
    },
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("nothing at {0}, and If-Match: * asks for something there")]
    NothingToMatch(String),
    #[error("paths {0} and {1} overlap; one batch may not write a path and a path inside it")]
    Overlap(String, String),
    #[error("storage failure, nothing was written: {0}")]
    Storage(String),
    /// The write's own log write or sync failed: it may be durable, and may come back when
    /// the node restarts.
    #[error("storage failure, the write may or may not have been stored (read the path again after the node restarts): {0}")]
    StorageUnknown(String),
    #[error("the node is shutting down")]
    ShuttingDown,
}

impl From<storage::Error> for Error {
    fn from(e: storage::Error) -> Error {
        if e.outcome_unknown() {
            Error::StorageUnknown(e.to_string())
        } else {
            Error::Storage(e.to_string())
        }
    }
}

/// A precondition on a single-path write, checked on this node just before it is planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    None,
    /// The path's current ETag must be this version.
    IfMatch(Version),
    /// Nothing may be visible at the path.
    IfNoneMatch,
    /// Something must be visible at the path (`If-Match: *`).
    IfExists,
}

/// One atomic change: every op gets the same version and revision.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    pub ops: Vec<Op>,
    pub condition: Condition,
}

/// What an acknowledged write was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub version: Version,
    pub revision: u64,
}

/// Tunables of the database.
#[derive(Debug, Clone)]
pub struct Options {
    /// Events kept in the change log for watchers to resume from.
    pub log_events: usize,
    /// Bytes of events (keys and values) kept in the change log, at most.
    pub log_bytes: usize,
    /// How long deletion markers (and expired leaves) are kept, in milliseconds.
    pub tombstone_grace_ms: u64,
    /// redb page cache, in bytes.
    pub cache_bytes: usize,
}

/// The committed state that readers see.
#[derive(Debug)]
pub struct State {
    pub store: Store,
    /// The newest applied revision.
    pub revision: u64,
    pub log: ChangeLog,
}

/// A watcher's starting point and its live feed.
pub struct Subscription {
    /// Events to send first (the replay after `since`, or the current state as puts).
    pub backlog: Vec<Arc<Event>>,
    /// The revision the backlog brings the watcher to.
    pub revision: u64,
    /// Live events; those at or below `revision` are already covered by the backlog.
    pub live: broadcast::Receiver<Arc<Event>>,
}

enum Command {
    Write(WriteRequest, oneshot::Sender<Result<Written, Error>>),
    /// Registers from a peer, merged by the store's rule; answers how many were applied.
    Merge(
        Vec<(Box<str>, Register)>,
        oneshot::Sender<Result<usize, Error>>,
    ),
    /// Announce due expiries and collect old tombstones.
    Housekeeping,
    /// Forget every register (a node away longer than the tombstone grace period).
    Reset(oneshot::Sender<Result<usize, Error>>),
}

/// Counters of the write path, for `/metrics`.
#[derive(Debug, Default)]
pub struct WriteStats {
    /// Synced commits made.
    pub commits: AtomicU64,
    /// Requests answered by those commits.
    pub committed_requests: AtomicU64,
    /// Time spent in storage commits, in microseconds.
    pub commit_micros: AtomicU64,
}

struct Inner {
    state: RwLock<State>,
    /// The last group (numbered by the writer from 1) that the sync thread has made durable.
    synced: Mark,
    /// The last group that the sync thread has applied.
    applied: Mark,
    stats: WriteStats,
    events: broadcast::Sender<Arc<Event>>,
    /// The registers of every local write once applied, for pushing to peers.
    changes: broadcast::Sender<Change>,
    node_id: u64,
}

/// A group number that only grows, and a way to wait for it.
#[derive(Default)]
struct Mark {
    seq: Mutex<u64>,
    changed: Condvar,
}

impl Mark {
    fn get(&self) -> u64 {
        *self.seq.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, seq: u64) {
        *self.seq.lock().unwrap_or_else(|e| e.into_inner()) = seq;
        self.changed.notify_all();
    }

    /// Waits until the mark reaches `seq`; answers the mark.
    fn wait_for(&self, seq: u64) -> u64 {
        let mut guard = self.seq.lock().unwrap_or_else(|e| e.into_inner());
        while *guard < seq {
            guard = self.changed.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        *guard
    }
}

/// The registers one local write produced, as replicated to peers.
pub type Change = Arc<[(Box<str>, Register)]>;

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
    tx: mpsc::Sender<Command>,
}

/// Joins the writer thread when the last sender is gone.
pub struct WriterHandle {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WriterHandle {
    /// Waits for the writer to finish what it has queued. Every `Db` clone must be dropped
    /// first, or this waits forever.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Db {
    /// Opens the database file, loads the store and starts the writer thread.
    pub fn open(
        file: &std::path::Path,
        node_id: u64,
        opts: Options,
    ) -> Result<(Db, WriterHandle), storage::Error> {
        let mut storage = Storage::open(file, opts.cache_bytes)?;
        let loaded = storage.load()?;
        let max_version = loaded
            .registers
            .iter()
            .map(|(_, r)| r.version)
            .max()
            .unwrap_or(Version::ZERO);
        let clock = Hlc::new(node_id, loaded.high_water.max(max_version));
        let store = Store::from_registers(loaded.registers);
        let state = State {
            store,
            revision: loaded.revision,
            log: ChangeLog::new(opts.log_events, opts.log_bytes, loaded.revision),
        };
        let (events, _) = broadcast::channel(4096);
        let (changes, _) = broadcast::channel(CHANGE_FEED);
        let inner = Arc::new(Inner {
            state: RwLock::new(state),
            synced: Mark::default(),
            applied: Mark::default(),
            stats: WriteStats::default(),
            events,
            changes,
            node_id,
        });
        let (tx, rx) = mpsc::channel(4096);
        let (sync_tx, sync_rx) = std::sync::mpsc::channel();
        let sync_inner = inner.clone();
        let syncer = std::thread::Builder::new()
            .name("herd-sync".into())
            .spawn(move || sync_loop(&sync_inner, sync_rx))
            .map_err(|e| storage::Error::Read(format!("cannot start sync thread: {e}")))?;
        let writer = Writer {
            inner: inner.clone(),
            storage,
            clock,
            revision: loaded.revision,
            opts,
            sync_tx: Some(sync_tx),
            syncer: Some(syncer),
            sent: 0,
            inflight: VecDeque::new(),
        };
        let thread = std::thread::Builder::new()
            .name("herd-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| storage::Error::Read(format!("cannot start writer thread: {e}")))?;
        Ok((
            Db { inner, tx },
            WriterHandle {
                thread: Some(thread),
            },
        ))
    }

    pub fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    pub fn stats(&self) -> &WriteStats {
        &self.inner.stats
    }

    /// Read access to the committed state.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        // A writer that panicked while holding the lock leaves the state as it was before that
        // group (apply is the last step), so reading on is safe.
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one change durably; answers once it is synced and visible.
    pub async fn write(&self, req: WriteRequest) -> Result<Written, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Write(req, reply))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Merges registers that came from a peer, durably, by the same rule as local writes:
    /// covered or duplicate registers are skipped (so merging is idempotent and commutative),
    /// and tombstones older than the grace period are ignored (this node has collected or will
    /// collect them). Answers how many registers were applied. Applied registers produce
    /// change events like local writes do, but are not fed back to [`Db::changes`].
    pub async fn merge(&self, regs: Vec<(Box<str>, Register)>) -> Result<usize, Error> {
        if regs.is_empty() {
            return Ok(0);
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Merge(regs, reply))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Durably forgets every register and answers how many there were. For a node that was
    /// cut off from its cluster for longer than the tombstone grace period: what it holds may
    /// have been deleted elsewhere with the tombstones already collected, so it must not offer
    /// it back; it starts empty and takes everything again from its peers. Watchers get one
    /// `delete` of the root.
    pub async fn reset(&self) -> Result<usize, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Reset(reply))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// The feed of local writes' registers, once each is durable and applied. A reader that
    /// falls more than a few thousand writes behind gets `Lagged` and must resynchronise.
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    /// Asks the writer to announce expiries and collect tombstones that are due.
    pub async fn housekeeping(&self) {
        let _ = self.tx.send(Command::Housekeeping).await;
    }

    /// About the memory the initial state of a watch of `key` takes as events (see
    /// `store::log::event_bytes`).
    pub fn snapshot_bytes(&self, key: &str) -> usize {
        let st = self.read();
        st.store
            .leaves(key, now_ms())
            .iter()
            .map(|(k, v, _)| k.len() + v.len() + crate::store::log::EVENT_OVERHEAD)
            .sum()
    }

    /// Starts a watch of `key`: a replay after `since`, or the current state, plus live events.
    pub fn subscribe(&self, key: &str, since: Option<u64>) -> Result<Subscription, Compacted> {
        let st = self.read();
        let live = self.inner.events.subscribe();
        let backlog = match since {
            Some(after) if after > st.revision => {
                // A revision this node has not reached: revisions are per node, so the watcher
                // must start again from the current state.
                return Err(Compacted {
                    requested: after,
                    floor: st.log.floor(),
                });
            }
            Some(after) => st
                .log
                .since(after)?
                .into_iter()
                .filter(|e| related(key, &e.key))
                .collect(),
            None => {
                let now = now_ms();
                st.store
                    .leaves(key, now)
                    .into_iter()
                    .enumerate()
                    .map(|(i, (k, v, version))| {
                        Arc::new(Event {
                            revision: st.revision,
                            seq: i as u32,
                            kind: EventKind::Put,
                            key: k.into(),
                            value: Some(v.into()),
                            version,
                        })
                    })
                    .collect()
            }
        };
        Ok(Subscription {
            backlog,
            revision: st.revision,
            live,
        })
    }
}

/// True if an event at `event_key` concerns a watch of `watched`: the same path, one below it,
/// or an ancestor (which replaces or deletes it).
pub fn related(watched: &str, event_key: &str) -> bool {
    path::key_contains(watched, event_key) || path::key_contains(event_key, watched)
}

/// Who waits for a planned request.
enum Origin {
    /// A local write: its events are planned, its registers feed replication.
    Local(oneshot::Sender<Result<Written, Error>>),
    /// A merge from a peer: its events are made once applied (an object register shows what
    /// its subtree holds then).
    Remote(oneshot::Sender<Result<usize, Error>>),
}

impl Origin {
    /// Answers with what the request was given and how many registers it applied.
    fn answer(self, result: Result<(Written, usize), Error>) {
        match self {
            Origin::Local(reply) => {
                let _ = reply.send(result.map(|(w, _)| w));
            }
            Origin::Remote(reply) => {
                let _ = reply.send(result.map(|(_, n)| n));
            }
        }
    }
}

/// One planned request inside a group.
struct Planned {
    regs: Vec<(Box<str>, Register)>,
    removes: Vec<Box<str>>,
    events: Vec<Arc<Event>>,
    written: Written,
    origin: Origin,
}

#[derive(Default)]
struct Group {
    planned: Vec<Planned>,
    /// Keys written by the group.
    touched: HashSet<Box<str>, foldhash::fast::RandomState>,
    /// Proper ancestors of the keys written by the group.
    ancestors: HashSet<Box<str>, foldhash::fast::RandomState>,
}

impl Group {
    /// True if a write at `key` could read or write something this group writes.
    fn overlaps(&self, key: &str) -> bool {
        self.touched.contains(key)
            || self.ancestors.contains(key)
            || path::key_ancestors(key).any(|a| self.touched.contains(a))
    }

    fn touch(&mut self, key: &str) {
        self.touched.insert(key.into());
        for a in path::key_ancestors(key) {
            // Checked before inserting, so a key whose ancestors are known allocates nothing.
            if self.ancestors.contains(a) {
                break;
            }
            self.ancestors.insert(a.into());
        }
    }
}

/// A group appended to the log, on its way through the sync thread.
struct Synced {
    seq: u64,
    sync: LogSync,
    planned: Vec<Planned>,
    last_revision: u64,
}

/// The single owner of all mutation.
struct Writer {
    inner: Arc<Inner>,
    storage: Storage,
    clock: Hlc,
    /// The last revision handed out (committed or in the current group).
    revision: u64,
    opts: Options,
    sync_tx: Option<std::sync::mpsc::Sender<Synced>>,
    syncer: Option<std::thread::JoinHandle<()>>,
    /// Groups handed to the sync thread so far.
    sent: u64,
    /// The keys of groups handed to the sync thread and perhaps not applied yet, by number.
    inflight: VecDeque<(u64, Group)>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut cmds = Vec::with_capacity(MAX_GROUP);
        let mut full = false;
        loop {
            // Hold back while the sync thread writes the last group: whatever arrives meanwhile
            // becomes the next group at once, and the senders wake nobody. A full group means
            // more may be queued: that is planned without waiting.
            if !full {
                self.inner.synced.wait_for(self.sent);
            }
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            cmds.push(first);
            while cmds.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(c) => cmds.push(c),
                    Err(_) => break,
                }
            }
            full = cmds.len() == MAX_GROUP;
            let mut group = Group::default();
            for cmd in cmds.drain(..) {
                match cmd {
                    Command::Write(req, reply) => {
                        let overlaps =
                            |g: &Group| req.ops.iter().any(|op| g.overlaps(op.path().key()));
                        if overlaps(&group) {
                            self.flush(std::mem::take(&mut group));
                        }
                        self.wait_for_inflight(overlaps);
                        match self.plan(req) {
                            Ok((regs, removes, events, written)) => {
                                for (k, _) in &regs {
                                    group.touch(k);
                                }
                                group.planned.push(Planned {
                                    regs,
                                    removes,
                                    events,
                                    written,
                                    origin: Origin::Local(reply),
                                });
                            }
                            Err(e) => {
                                let _ = reply.send(Err(e));
                            }
                        }
                    }
                    Command::Merge(regs, reply) => {
                        let overlaps = |g: &Group| regs.iter().any(|(k, _)| g.overlaps(k));
                        if overlaps(&group) {
                            self.flush(std::mem::take(&mut group));
                        }
                        self.wait_for_inflight(overlaps);
                        match self.plan_remote(regs) {
                            Some((regs, removes, written)) => {
                                for (k, _) in &regs {
                                    group.touch(k);
                                }
                                group.planned.push(Planned {
                                    regs,
                                    removes,
                                    events: Vec::new(),
                                    written,
                                    origin: Origin::Remote(reply),
                                });
                            }
                            None => {
                                let _ = reply.send(Ok(0));
                            }
                        }
                    }
                    Command::Housekeeping => {
                        self.flush(std::mem::take(&mut group));
                        self.wait_for_inflight(|_| true);
                        self.housekeeping();
                    }
                    Command::Reset(reply) => {
                        self.flush(std::mem::take(&mut group));
                        self.wait_for_inflight(|_| true);
                        let _ = reply.send(self.reset());
                    }
                }
            }
            self.flush(group);
        }
        // The sync thread finishes what it was given, then the storage checkpoints on drop.
        drop(self.sync_tx.take());
        if let Some(t) = self.syncer.take() {
            let _ = t.join();
        }
        tracing::debug!("writer stopped");
    }

    /// Waits until the newest in-flight group for which `overlaps` is true has been applied.
    fn wait_for_inflight(&mut self, overlaps: impl Fn(&Group) -> bool) {
        self.forget_applied(self.inner.applied.get());
        let Some(wanted) = self
            .inflight
            .iter()
            .rev()
            .find(|(_, g)| overlaps(g))
            .map(|(seq, _)| *seq)
        else {
            return;
        };
        let applied = self.inner.applied.wait_for(wanted);
        self.forget_applied(applied);
    }

    /// Drops the in-flight groups numbered up to `applied`.
    fn forget_applied(&mut self, applied: u64) {
        while self
            .inflight
            .front()
            .is_some_and(|(seq, _)| *seq <= applied)
        {
            self.inflight.pop_front();
        }
    }

    fn state(&self) -> RwLockReadGuard<'_, State> {
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    #[allow(
        clippy::type_complexity,
        reason = "a private tuple consumed right at the call site"
    )]
    fn plan(
        &mut self,
        req: WriteRequest,
    ) -> Result<
        (
            Vec<(Box<str>, Register)>,
            Vec<Box<str>>,
            Vec<Arc<Event>>,
            Written,
        ),
        Error,
    > {
        let now = now_ms();
        let st = self.inner.state.read().unwrap_or_else(|e| e.into_inner());
        for (i, a) in req.ops.iter().enumerate() {
            for b in &req.ops[i + 1..] {
                if a.path().contains(b.path()) || b.path().contains(a.path()) {
                    return Err(Error::Overlap(a.path().to_string(), b.path().to_string()));
                }
            }
        }
        for op in &req.ops {
            let key = op.path().key();
            match req.condition {
                Condition::IfMatch(expected) => {
                    let cur = st.store.etag(key, now);
                    if cur != Some(expected) {
                        return Err(Error::PreconditionFailed {
                            path: op.path().to_string(),
                            expected,
                            current: cur.map_or("absent".into(), |v| v.to_string()),
                        });
                    }
                }
                Condition::IfNoneMatch => {
                    if st.store.lookup(key, now) != Lookup::Missing {
                        return Err(Error::AlreadyExists(op.path().to_string()));
                    }
                }
                Condition::IfExists => {
                    if st.store.lookup(key, now) == Lookup::Missing {
                        return Err(Error::NothingToMatch(op.path().to_string()));
                    }
                }
                Condition::None => {}
            }
            if matches!(op, Op::Delete { .. }) && st.store.lookup(key, now) == Lookup::Missing {
                return Err(Error::NotFound(op.path().to_string()));
            }
        }
        let version = self.clock.tick(now);
        let revision = self.revision + 1;
        let mut regs: Registers = Vec::new();
        let mut events = Vec::with_capacity(req.ops.len());
        // Ops of a batch do not overlap, so only a register outside an op's path, the `Object`
        // that turns a leaf above it into a directory, can be planned twice (by two ops under
        // that leaf): it is kept once.
        let mut above = HashSet::<Box<str>, foldhash::fast::RandomState>::default();
        for (seq, op) in req.ops.into_iter().enumerate() {
            let key: Box<str> = op.path().key().into();
            let (planned, value) = st.store.plan_local(op, version, now);
            regs.extend(
                planned
                    .into_iter()
                    .filter(|(k, _)| path::key_contains(&key, k) || above.insert(k.clone())),
            );
            let kind = match value {
                Some(_) => EventKind::Put,
                None => EventKind::Delete,
            };
            events.push(Arc::new(Event {
                revision,
                seq: seq as u32,
                kind,
                key,
                value,
                version,
            }));
        }
        let removes = st.store.plan_removals(&regs);
        drop(st);
        self.revision = revision;
        Ok((regs, removes, events, Written { version, revision }))
    }

    /// Plans registers from a peer against the committed state: keeps those no committed or
    /// other incoming register covers, in version order, and lists the committed keys they
    /// cover. `None` if nothing would change.
    #[allow(
        clippy::type_complexity,
        reason = "a private tuple consumed right at the call site"
    )]
    fn plan_remote(
        &mut self,
        mut regs: Vec<(Box<str>, Register)>,
    ) -> Option<(Vec<(Box<str>, Register)>, Vec<Box<str>>, Written)> {
        let now = now_ms();
        let floor = now.saturating_sub(self.opts.tombstone_grace_ms);
        regs.sort_by(|a, b| a.1.version.cmp(&b.1.version).then_with(|| a.0.cmp(&b.0)));
        let st = self.inner.state.read().unwrap_or_else(|e| e.into_inner());
        let mut accepted: std::collections::BTreeMap<Box<str>, Register> = Default::default();
        let mut removes = Vec::new();
        for (k, r) in regs {
            if past_grace(&r, floor) {
                continue;
            }
            let covered_here = accepted.get(&k).is_some_and(|c| c.version >= r.version)
                || path::key_ancestors(&k)
                    .any(|a| accepted.get(a).is_some_and(|c| c.version > r.version));
            if covered_here {
                continue;
            }
            let Some(rm) = st.store.plan_merge(&k, &r) else {
                continue;
            };
            let below: Vec<Box<str>> = accepted
                .range::<str, _>((std::ops::Bound::Excluded(&*k), std::ops::Bound::Unbounded))
                .take_while(|(x, _)| path::key_contains(&k, x))
                .filter(|(_, c)| c.version < r.version)
                .map(|(x, _)| x.clone())
                .collect();
            for x in below {
                accepted.remove(&x);
            }
            removes.extend(rm);
            self.clock.observe(r.version);
            accepted.insert(k, r);
        }
        drop(st);
        if accepted.is_empty() {
            return None;
        }
        let mut regs: Vec<(Box<str>, Register)> = accepted.into_iter().collect();
        regs.sort_by(|a, b| a.1.version.cmp(&b.1.version).then_with(|| a.0.cmp(&b.0)));
        self.revision += 1;
        let written = Written {
            version: self.clock.high_water(),
            revision: self.revision,
        };
        Some((regs, removes, written))
    }

    /// Appends a group to the log and hands it to the sync thread, which syncs, applies and
    /// answers it.
    fn flush(&mut self, mut group: Group) {
        let planned = std::mem::take(&mut group.planned);
        let Some(last) = planned.last() else {
            return;
        };
        let last_revision = last.written.revision;
        let commit = storage::Commit {
            removes: planned
                .iter()
                .flat_map(|p| p.removes.iter().map(|k| &**k))
                .collect(),
            puts: planned
                .iter()
                .flat_map(|p| p.regs.iter().map(|(k, r)| (&**k, r)))
                .collect(),
            revision: last_revision,
            high_water: self.clock.high_water(),
        };
        let appended = self.storage.append(&commit);
        drop(commit);
        let sync = match appended {
            Ok(sync) => sync,
            Err(e) => {
                tracing::error!(error = %e, "group commit failed; its writes are refused");
                self.revision = planned[0].written.revision - 1;
                let e = Error::from(e);
                for p in planned {
                    p.origin.answer(Err(e.clone()));
                }
                return;
            }
        };
        self.sent += 1;
        self.inflight.push_back((self.sent, group));
        if let Some(tx) = &self.sync_tx {
            // Only fails if the sync thread panicked; the callers then see `ShuttingDown`.
            let _ = tx.send(Synced {
                seq: self.sent,
                sync,
                planned,
                last_revision,
            });
        }
    }

    /// Removes every register durably (see [`Db::reset`]).
    fn reset(&mut self) -> Result<usize, Error> {
        let keys: Vec<Box<str>> = self
            .state()
            .store
            .registers()
            .map(|(k, _)| k.into())
            .collect();
        let revision = self.revision + 1;
        let commit = storage::Commit {
            removes: keys.iter().map(|k| &**k).collect(),
            puts: Vec::new(),
            revision,
            high_water: self.clock.high_water(),
        };
        self.storage.commit(&commit)?;
        self.revision = revision;
        let mut st = self.inner.state.write().unwrap_or_else(|e| e.into_inner());
        st.store = Store::new();
        let ev = Arc::new(Event {
            revision,
            seq: 0,
            kind: EventKind::Delete,
            key: "".into(),
            value: None,
            version: self.clock.high_water(),
        });
        st.log.push(ev.clone());
        let _ = self.inner.events.send(ev);
        st.revision = revision;
        Ok(keys.len())
    }

    /// Announces expiries that are due and collects tombstones past the grace period.
    fn housekeeping(&mut self) {
        self.storage.tick();
        let now = now_ms();
        let (due, old) = {
            let st = self.state();
            (
                st.store.due_expiries(now),
                st.store.due_tombstones(now, self.opts.tombstone_grace_ms),
            )
        };
        if due.is_empty() && old.is_empty() {
            return;
        }
        let revision = if due.is_empty() {
            self.revision
        } else {
            self.revision + 1
        };
        let commit = storage::Commit {
            removes: old.iter().map(|k| &**k).collect(),
            puts: Vec::new(),
            revision,
            high_water: self.clock.high_water(),
        };
        if let Err(e) = self.storage.commit(&commit) {
            tracing::error!(error = %e, "housekeeping commit failed; will retry");
            return;
        }
        self.revision = revision;
        let mut st = self.inner.state.write().unwrap_or_else(|e| e.into_inner());
        for k in &old {
            st.store.remove(k);
        }
        let mut seq = 0;
        for (k, version) in due {
            if st.store.announce_expiry(&k) {
                let ev = Arc::new(Event {
                    revision,
                    seq,
                    kind: EventKind::Expire,
                    key: k,
                    value: None,
                    version,
                });
                seq += 1;
                st.log.push(ev.clone());
                let _ = self.inner.events.send(ev);
            }
        }
        st.revision = revision;
        if !old.is_empty() {
            tracing::debug!(
                collected = old.len(),
                "tombstones past the grace period collected"
            );
        }
    }
}

/// The sync thread: syncs the log for the groups it finds queued (one, unless the writer had
/// more than a full group), each up to its own record, then applies those that are durable in
/// order and answers their requests.
fn sync_loop(inner: &Inner, rx: std::sync::mpsc::Receiver<Synced>) {
    /// However this thread ends (a panic included), the writer must not wait for it: its
    /// sends then fail, and their callers see `ShuttingDown`.
    struct Gone<'a>(&'a Inner);
    impl Drop for Gone<'_> {
        fn drop(&mut self) {
            self.0.synced.set(u64::MAX);
            self.0.applied.set(u64::MAX);
        }
    }
    let _gone = Gone(inner);
    let mut slow = SlowSyncs::default();
    let mut batch = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        batch.extend(rx.try_iter());
        let t0 = Instant::now();
        // Each group's sync writes its own record and nothing after it, so a failure leaves
        // the groups before it durable and nothing of those after it written (with direct I/O).
        let synced: Vec<Result<(), storage::Error>> = batch.iter().map(|s| s.sync.sync()).collect();
        let last_seq = batch.last().map_or(0, |s| s.seq);
        // The writer plans the next group while this one is applied and answered.
        inner.synced.set(last_seq);
        let now = Instant::now();
        let took = now - t0;
        let requests: usize = batch.iter().map(|s| s.planned.len()).sum();
        let slow_report = slow.note(took, requests, now);
        let stats = &inner.stats;
        stats
            .commit_micros
            .fetch_add(took.as_micros() as u64, Relaxed);
        stats.commits.fetch_add(1, Relaxed);
        stats.committed_requests.fetch_add(requests as u64, Relaxed);
        let mut replies = Vec::with_capacity(requests);
        let feed = inner.changes.receiver_count() > 0;
        let mut st = inner.state.write().unwrap_or_else(|e| e.into_inner());
        for (s, result) in batch.drain(..).zip(synced) {
            match result {
                Ok(()) => {
                    for p in s.planned {
                        apply(inner, &mut st, p, feed, &mut replies);
                    }
                    st.revision = s.last_revision;
                }
                Err(e) => {
                    tracing::error!(error = %e, "group commit failed; its writes are refused");
                    let e = Error::from(e);
                    for p in s.planned {
                        replies.push((p.origin, Err(e.clone())));
                    }
                }
            }
        }
        drop(st);
        inner.applied.set(last_seq);
        for (origin, result) in replies {
            origin.answer(result);
        }
        // Logged once the writes that waited have their answers.
        if let Some(r) = slow_report {
            tracing::warn!(
                syncs = r.syncs,
                slowest_ms = r.slowest.as_millis() as u64,
                writes = r.writes,
                "slow write-ahead log syncs: every write in them waited that long for the disk"
            );
        }
    }
}

/// Slow log syncs not reported yet.
#[derive(Debug, Default)]
struct SlowSyncs {
    syncs: u64,
    slowest: Duration,
    writes: usize,
    reported: Option<Instant>,
}

impl SlowSyncs {
    /// Counts a sync that took `took` for `writes` writes; answers what to report, if it is time.
    fn note(&mut self, took: Duration, writes: usize, now: Instant) -> Option<SlowSyncs> {
        if took < SLOW_SYNC {
            return None;
        }
        self.syncs += 1;
        self.slowest = self.slowest.max(took);
        self.writes += writes;
        if self
            .reported
            .is_some_and(|at| now.duration_since(at) < SLOW_SYNC_REPORT)
        {
            return None;
        }
        let next = SlowSyncs {
            reported: Some(now),
            ..SlowSyncs::default()
        };
        Some(std::mem::replace(self, next))
    }
}

/// Answers waiting for the end of a sync batch.
type Replies = Vec<(Origin, Result<(Written, usize), Error>)>;

/// Applies one planned request to the committed state: merges its registers, logs and
/// broadcasts its events, feeds a local write's registers to replication.
fn apply(inner: &Inner, st: &mut State, p: Planned, feed: bool, replies: &mut Replies) {
    let Planned {
        regs,
        removes,
        events,
        written,
        origin,
    } = p;
    let mut events = events;
    let mut applied = 0;
    match &origin {
        Origin::Local(_) => {
            if feed {
                let _ = inner.changes.send(regs.clone().into());
            }
            // Planned against this state (overlapping writes wait for each other), so the
            // plan's removals hold and the registers need no second planning.
            st.store.apply_planned(&removes, regs);
        }
        Origin::Remote(_) => {
            let mut keys = Vec::with_capacity(regs.len());
            for (k, r) in regs {
                let version = r.version;
                if st.store.merge(&k, r) {
                    keys.push((k, version));
                }
            }
            // Events once every register is in, so an object shows what its subtree holds.
            let now = now_ms();
            for (seq, (k, version)) in keys.into_iter().enumerate() {
                let (kind, value) = match st.store.register(&k).map(|r| &r.kind) {
                    Some(Kind::Leaf(text)) => (EventKind::Put, Some(text.clone())),
                    Some(Kind::Object) => {
                        let mut out = String::new();
                        st.store.render(&k, now, &mut out);
                        (EventKind::Put, Some(out.into()))
                    }
                    Some(Kind::Deleted) | None => (EventKind::Delete, None),
                };
                events.push(Arc::new(Event {
                    revision: written.revision,
                    seq: seq as u32,
                    kind,
                    key: k,
                    value,
                    version,
                }));
            }
            applied = events.len();
        }
    }
    for ev in events {
        st.log.push(ev.clone());
        let _ = inner.events.send(ev);
    }
    replies.push((origin, Ok((written, applied))));
}

/// True if a register from a peer is a tombstone (a deletion or an expired leaf) whose grace
/// period ended before `floor`: this node collects such registers, so it must not take them
/// back from a peer that has not collected them yet.
fn past_grace(r: &Register, floor: u64) -> bool {
    match (&r.kind, r.expires) {
        (Kind::Deleted, _) => r.version.millis < floor,
        (_, Some(t)) => t.get() < floor,
        _ => false,
    }
}

/// How long until housekeeping is next needed: the next expiry, at most `max`.
pub fn next_housekeeping(db: &Db, max: Duration) -> Duration {
    let next = db.read().store.next_expiry();
    match next {
        Some(t) => Duration::from_millis(t.saturating_sub(now_ms())).min(max),
        None => max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Path;
    use serde_json::json;

    fn opts() -> Options {
        Options {
            log_events: 100,
            log_bytes: 1 << 20,
            tombstone_grace_ms: 7 * 24 * 3600 * 1000,
            cache_bytes: 1 << 20,
        }
    }

    fn put(p: &str, v: serde_json::Value) -> WriteRequest {
        WriteRequest {
            ops: vec![Op::put(Path::parse(p).unwrap(), &v, None).unwrap()],
            condition: Condition::None,
        }
    }

    fn doc(db: &Db) -> serde_json::Value {
        let mut s = String::new();
        db.read().store.render("", now_ms(), &mut s);
        serde_json::from_str(&s).unwrap()
    }

    #[test]
    fn slow_syncs_are_reported_at_once_then_summed_up_once_a_minute() {
        let (ms, t0) = (Duration::from_millis, Instant::now());
        let mut slow = SlowSyncs::default();
        assert!(slow.note(ms(99), 5, t0).is_none(), "not slow");
        let first = slow
            .note(ms(150), 3, t0)
            .expect("the first slow sync is reported");
        assert_eq!((first.syncs, first.slowest, first.writes), (1, ms(150), 3));
        assert!(slow.note(ms(400), 1, t0 + ms(1_000)).is_none());
        assert!(slow.note(ms(120), 2, t0 + ms(30_000)).is_none());
        assert!(
            slow.note(ms(10), 9, t0 + ms(61_000)).is_none(),
            "fast syncs are not counted"
        );
        let next = slow
            .note(ms(101), 4, t0 + ms(61_000))
            .expect("a minute later");
        assert_eq!((next.syncs, next.slowest, next.writes), (3, ms(400), 7));
        assert!(slow.note(ms(200), 1, t0 + ms(62_000)).is_none());
    }

    #[tokio::test]
    async fn concurrent_writes_share_commits_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.redb");
        let (db, h) = Db::open(&file, 1, opts()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                db.write(put(&format!("/k/{i}"), json!(i))).await
            }));
        }
        let mut revs = HashSet::new();
        for t in tasks {
            assert!(revs.insert(t.await.unwrap().unwrap().revision));
        }
        assert_eq!(revs.len(), 200);
        let w = db.write(put("/k/0", json!("last"))).await.unwrap();
        assert_eq!(w.revision, 201);
        let before = doc(&db);
        drop(db);
        h.join();
        let (db, _h) = Db::open(&file, 1, opts()).unwrap();
        assert_eq!(doc(&db), before);
        assert_eq!(db.read().revision, 201);
        let w2 = db.write(put("/k/1", json!(1))).await.unwrap();
        assert!(w2.version > w.version && w2.revision == 202);
    }

    #[tokio::test]
    async fn preconditions_and_overlaps() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _h) = Db::open(&dir.path().join("s.redb"), 1, opts()).unwrap();
        let w = db.write(put("/a", json!(1))).await.unwrap();
        let mut req = put("/a", json!(2));
        req.condition = Condition::IfMatch(Version {
            millis: 1,
            counter: 0,
            node: 1,
        });
        assert!(matches!(
            db.write(req.clone()).await,
            Err(Error::PreconditionFailed { .. })
        ));
        req.condition = Condition::IfMatch(w.version);
        db.write(req).await.unwrap();
        let mut req = put("/a", json!(3));
        req.condition = Condition::IfNoneMatch;
        assert!(matches!(db.write(req).await, Err(Error::AlreadyExists(_))));
        let del = WriteRequest {
            ops: vec![Op::Delete {
                path: Path::parse("/nope").unwrap(),
            }],
            condition: Condition::None,
        };
        assert!(matches!(db.write(del).await, Err(Error::NotFound(_))));
        let batch = WriteRequest {
            ops: vec![
                Op::put(Path::parse("/b").unwrap(), &json!(1), None).unwrap(),
                Op::Delete {
                    path: Path::parse("/b/c").unwrap(),
                },
            ],
            condition: Condition::None,
        };
        assert!(matches!(db.write(batch).await, Err(Error::Overlap(..))));
        assert_eq!(doc(&db), json!({"a": 2}));
    }

    #[tokio::test]
    async fn a_batch_under_one_leaf_turns_it_into_a_directory_once() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _h) = Db::open(&dir.path().join("s.redb"), 1, opts()).unwrap();
        db.write(put("/a", json!(1))).await.unwrap();
        let mut feed = db.changes();
        let batch = WriteRequest {
            ops: vec![
                Op::put(Path::parse("/a/x").unwrap(), &json!("x"), None).unwrap(),
                Op::put(Path::parse("/a/y").unwrap(), &json!("y"), None).unwrap(),
            ],
            condition: Condition::None,
        };
        let w = db.write(batch).await.unwrap();
        assert_eq!(doc(&db), json!({"a": {"x": "x", "y": "y"}}));
        let change = feed.recv().await.unwrap();
        let keys: Vec<&str> = change.iter().map(|(k, _)| &**k).collect();
        assert_eq!(
            keys,
            ["a", "a\0x", "a\0y"],
            "the leaf's Object register once"
        );
        assert!(change.iter().all(|(_, r)| r.version == w.version));
        assert_eq!(change[0].1.kind, Kind::Object);
    }

    fn reg(kind: Kind, millis: u64, node: u64) -> Register {
        Register {
            kind,
            version: Version {
                millis,
                counter: 0,
                node,
            },
            expires: None,
        }
    }

    #[tokio::test]
    async fn merging_a_peers_registers_is_idempotent_durable_and_watched() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.redb");
        let (db, h) = Db::open(&file, 1, opts()).unwrap();
        let mut feed = db.changes();
        let local = db.write(put("/a/x", json!(1))).await.unwrap();
        assert_eq!(
            feed.recv().await.unwrap().len(),
            1,
            "local writes feed replication"
        );
        let mut sub = db.subscribe("", None).unwrap();
        let now = now_ms();
        // An object at /a newer than the local write replaces /a/x; its child comes along.
        let remote = vec![
            ("a\0y".into(), reg(Kind::Leaf("2".into()), now + 1000, 9)),
            ("a".into(), reg(Kind::Object, now + 1000, 9)),
            // Covered by the object in the same batch.
            ("a\0z".into(), reg(Kind::Leaf("3".into()), now - 1000, 9)),
            // A deletion older than the grace period is not taken back.
            ("old".into(), reg(Kind::Deleted, 1, 9)),
        ];
        assert_eq!(db.merge(remote.clone()).await.unwrap(), 2);
        assert_eq!(doc(&db), json!({"a": {"y": 2}}));
        assert_eq!(
            db.merge(remote).await.unwrap(),
            0,
            "merging again changes nothing"
        );
        let ev = sub.live.recv().await.unwrap();
        assert_eq!((&*ev.key, ev.value.as_deref()), ("a", Some(r#"{"y":2}"#)));
        let ev = sub.live.recv().await.unwrap();
        assert_eq!((&*ev.key, ev.value.as_deref()), ("a\0y", Some("2")));
        assert!(
            feed.try_recv().is_err(),
            "merged registers are not pushed again"
        );
        // A later local write orders after the merged version.
        let w = db.write(put("/b", json!(1))).await.unwrap();
        assert!(w.version > local.version && w.version.millis >= now + 1000);
        let before = doc(&db);
        let digest = db.read().store.digest().root();
        drop((db, feed, sub));
        h.join();
        let (db, h) = Db::open(&file, 1, opts()).unwrap();
        assert_eq!(doc(&db), before);
        assert_eq!(db.read().store.digest().root(), digest);
        assert!(db.reset().await.unwrap() >= 3);
        assert_eq!(doc(&db), json!({}));
        drop(db);
        h.join();
        let (db, _h) = Db::open(&file, 1, opts()).unwrap();
        assert_eq!(doc(&db), json!({}), "the reset is durable");
    }

    #[tokio::test]
    async fn watchers_get_backlog_then_live_events() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _h) = Db::open(&dir.path().join("s.redb"), 1, opts()).unwrap();
        db.write(put("/app/x", json!(1))).await.unwrap();
        db.write(put("/other", json!(1))).await.unwrap();
        let mut sub = db.subscribe("app", None).unwrap();
        assert_eq!(sub.backlog.len(), 1);
        assert_eq!(sub.revision, 2);
        db.write(put("/app/y", json!(2))).await.unwrap();
        let ev = sub.live.recv().await.unwrap();
        assert_eq!((&*ev.key, ev.revision), ("app\0y", 3));
        let replay = db.subscribe("app", Some(1)).unwrap();
        assert_eq!(
            replay
                .backlog
                .iter()
                .map(|e| e.revision)
                .collect::<Vec<_>>(),
            vec![3]
        );
    }
}
