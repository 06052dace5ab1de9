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
//! This file holds the handle (`Db`: reads, subscriptions, sending requests to the writer) and
//! the state they share; `writer.rs` holds the writer thread and `sync.rs` the sync thread.
//!
//! Must not know about HTTP, TLS or the CLI.

mod journal;
mod sync;
mod writer;

use crate::clock::now_ms;
use crate::storage::{self, LogSync, Storage};
use crate::store::log::Compacted;
use crate::store::{
    path, ChangeLog, Event, EventKind, Hlc, Kind, Lookup, Op, Plan, Register, Registers, Store,
    Version,
};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};
use sync::sync_loop;
use tokio::sync::{broadcast, mpsc, oneshot};
use writer::{Origin, Planned, Synced, Writer};

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
    /// The data directory's file system is full: nothing was written.
    #[error("no space left for the write-ahead log, nothing was written: {0}")]
    NoSpace(String),
    /// The write's own log write or sync failed: it may be durable, and may come back when
    /// the node restarts.
    #[error("storage failure, the write may or may not have been stored (read the path again after the node restarts): {0}")]
    StorageUnknown(String),
    #[error("the node is shutting down")]
    ShuttingDown,
    /// This node's clock is ahead of its peers' by more than `max_clock_offset`: a version
    /// stamped now would win every conflict with their writes.
    #[error("this node refuses to stamp writes: {0}; fix its clock (NTP)")]
    ClockAhead(String),
}

impl From<storage::Error> for Error {
    fn from(e: storage::Error) -> Error {
        if e.outcome_unknown() {
            Error::StorageUnknown(e.to_string())
        } else if e.cause() == storage::Cause::NoSpace {
            Error::NoSpace(e.to_string())
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

/// What merging a peer's registers did.
#[derive(Debug, Default)]
pub struct Merged {
    /// Registers applied.
    pub applied: usize,
    /// Registers left out because this node collected the tombstones that cover them (key,
    /// the version sent): the sender is told, so it collects them too.
    pub collected: Vec<(Box<str>, Version)>,
}

/// Tunables of the database.
#[derive(Debug, Clone)]
pub struct Options {
    /// Events kept in the change log for watchers to resume from.
    pub log_events: usize,
    /// Bytes of events (keys and values) kept in the change log, at most.
    pub log_bytes: usize,
    /// The least time a deletion marker (or an expired leaf) is kept, in milliseconds, however
    /// soon every member holds it: a directory's ETag stays the newest version at or below it
    /// for that long, so it does not go back to a value a client may still hold.
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
    /// The newest version of this node's own writes in the store (what a peer that holds this
    /// state holds of them).
    pub own_high: Version,
    /// The change log's file, so that watchers resume across restarts.
    journal: journal::Journal,
}

impl State {
    /// Logs an event: in the window watchers resume from, and in its file.
    fn record(&mut self, ev: Arc<Event>) {
        self.journal.append(&ev);
        self.log.push(ev);
    }

    /// The node reached `revision`, every event of it recorded.
    fn reach(&mut self, revision: u64) {
        self.revision = revision;
        self.journal.flush(&self.log, revision);
    }
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
        oneshot::Sender<Result<Merged, Error>>,
    ),
    /// A peer collected these registers (key, version): collect them too.
    Collect(
        Vec<(Box<str>, Version)>,
        oneshot::Sender<Result<usize, Error>>,
    ),
    /// Announce due expiries and collect the tombstones every member holds.
    Housekeeping,
    /// Forget every register but this node's own writes newer than the version and those at
    /// or below the keys (a node removed from its cluster, before it rejoins).
    Reset(
        Version,
        &'static [&'static str],
        oneshot::Sender<Result<usize, Error>>,
    ),
    /// Derived keys changed (key, new compact JSON or `None` for gone): events, no registers.
    /// The function makes the change visible; it runs under the state lock, once the revision
    /// is committed, and answers whether the events are to be recorded.
    Derived(
        Vec<(Box<str>, Option<Box<str>>)>,
        Box<dyn FnOnce() -> bool + Send>,
        oneshot::Sender<Result<u64, Error>>,
    ),
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
    /// Set once the storage stops taking writes (see `storage::Stop`); replaced when the
    /// writer reopens the storage after a full disk had room again.
    stopped: RwLock<storage::Stopped>,
    /// Why local writes are refused for this node's clock, if they are (`refuse_stamps`).
    clock_ahead: RwLock<Option<String>>,
    /// The revision every member of the cluster is known to hold (see [`Db::set_held`]).
    held: AtomicU64,
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
        let stopped = storage.stopped();
        let max_version = loaded
            .registers
            .iter()
            .map(|(_, r)| r.version)
            .max()
            .unwrap_or(Version::ZERO);
        let clock = Hlc::new(node_id, loaded.high_water.max(max_version));
        let own_high = loaded
            .registers
            .iter()
            .map(|(_, r)| r.version)
            .filter(|v| v.node == node_id)
            .max()
            .unwrap_or(Version::ZERO);
        let store = Store::loaded(loaded.registers, loaded.revision.max(1));
        let log = ChangeLog::new(opts.log_events, opts.log_bytes, loaded.revision);
        let dir = file.parent().unwrap_or(std::path::Path::new("."));
        let (journal, log) = journal::Journal::open(dir, loaded.revision, log);
        // Expiries the window already announced are not announced again.
        let mut store = store;
        for ev in log.iter().filter(|ev| ev.kind == EventKind::Expire) {
            if store
                .register(&ev.key)
                .is_some_and(|r| r.version == ev.version)
            {
                store.announce_expiry(&ev.key);
            }
        }
        let state = State {
            store,
            revision: loaded.revision,
            log,
            own_high,
            journal,
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
            stopped: RwLock::new(stopped),
            clock_ahead: RwLock::new(None),
            held: AtomicU64::new(u64::MAX),
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
            resume_at: None,
            resume_backoff: Duration::ZERO,
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

    /// Why the storage stopped taking writes, if it did: reads and watches go on from memory,
    /// every write is refused until the node restarts and replays its log (or, after a full
    /// disk with nothing written, until the writer reopens the storage once there is room).
    pub fn storage_stop(&self) -> Option<storage::Stop> {
        let stopped = self.inner.stopped.read().unwrap_or_else(|e| e.into_inner());
        stopped.get().cloned()
    }

    /// Refuses local writes (`Some(why)`: this node's clock is ahead of its peers') or takes
    /// them again (`None`). Merges from peers and reads go on.
    pub fn refuse_stamps(&self, why: Option<String>) {
        *self
            .inner
            .clock_ahead
            .write()
            .unwrap_or_else(|e| e.into_inner()) = why;
    }

    /// Why local writes are refused for this node's clock, if they are.
    pub fn clock_ahead(&self) -> Option<String> {
        self.inner
            .clock_ahead
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The error every write gets now, if the storage stopped or the clock is ahead (for
    /// checks that store nothing: a dry run, a `write()` on the mount before its `close()`).
    pub fn writable(&self) -> Result<(), Error> {
        match self.storage_stop() {
            None => self
                .clock_ahead()
                .map_or(Ok(()), |why| Err(Error::ClockAhead(why))),
            // What a commit would be answered (nothing of this write is on the disk).
            Some(stop) => Err(storage::Error::Stopped {
                why: stop.why,
                cause: stop.cause,
                resumable: stop.resumable,
                appended: false,
            }
            .into()),
        }
    }

    /// Read access to the committed state.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        // A writer that panicked while holding the lock leaves the state as it was before that
        // group (apply is the last step), so reading on is safe.
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one change durably; answers once it is synced and visible.
    pub async fn write(&self, req: WriteRequest) -> Result<Written, Error> {
        self.ask(|reply| Command::Write(req, reply)).await
    }

    /// Sends the writer a command and waits for its answer.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Command,
    ) -> Result<T, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(command(reply))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Merges registers that came from a peer, durably, by the same rule as local writes:
    /// covered or duplicate registers are skipped (so merging is idempotent and commutative),
    /// and so is what a tombstone this node collected covers (listed in the answer, for the
    /// sender to collect too). Applied registers produce change events like local writes do,
    /// but are not fed back to [`Db::changes`].
    pub async fn merge(&self, regs: Vec<(Box<str>, Register)>) -> Result<Merged, Error> {
        if regs.is_empty() {
            return Ok(Merged::default());
        }
        self.ask(|reply| Command::Merge(regs, reply)).await
    }

    /// Collects the registers a peer said it collected (key, version), where this node holds
    /// exactly that version; answers how many. The peer collected them once every member held
    /// them, so no member can lack what they cover.
    pub async fn collect_told(&self, told: Vec<(Box<str>, Version)>) -> Result<usize, Error> {
        if told.is_empty() {
            return Ok(0);
        }
        self.ask(|reply| Command::Collect(told, reply)).await
    }

    /// Sets the revision every member of the cluster is known to have held (what this node
    /// held at that revision, or something newer): tombstones that arrived by then are
    /// collected at the next housekeeping. `u64::MAX` (the default) for a node alone.
    pub fn set_held(&self, revision: u64) {
        self.inner.held.store(revision, Relaxed);
    }

    /// Durably forgets every register except this node's own writes newer than `shared`
    /// (the ones no peer is known to have) and those at or below `keep` (keys in the store's
    /// encoding), and answers how many it forgot. For a node
    /// removed from its cluster: tombstones may have been collected without it, so what it
    /// holds from others must not be offered back; it takes everything again from its peers.
    /// Watchers get one `delete` of the root, then a `put` of each leaf kept.
    pub async fn reset(
        &self,
        shared: Version,
        keep: &'static [&'static str],
    ) -> Result<usize, Error> {
        self.ask(|reply| Command::Reset(shared, keep, reply)).await
    }

    /// Announces changes of derived keys (key, new compact JSON or `None` for gone) to
    /// watchers as one revision; the store is not touched and nothing is replicated. `apply`
    /// makes the change visible to reads (it runs under the state lock, so a watch started
    /// before the revision never sees its change, and one started after always does; it does
    /// not run if the revision cannot be committed); if it answers false (the change is no
    /// longer wanted), the revision has no events. Answers the revision.
    pub async fn derived(
        &self,
        changes: Vec<(Box<str>, Option<Box<str>>)>,
        apply: Box<dyn FnOnce() -> bool + Send>,
    ) -> Result<u64, Error> {
        self.ask(|reply| Command::Derived(changes, apply, reply))
            .await
    }

    /// Runs `f` under the state write lock: what it makes visible outside the store (derived
    /// keys) is seen by a watch either with its starting state or not at all.
    pub fn locked<R>(&self, f: impl FnOnce() -> R) -> R {
        let _st = self.inner.state.write().unwrap_or_else(|e| e.into_inner());
        f()
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
        self.subscribe_with(key, since, |_, _| {})
    }

    /// [`Db::subscribe`], with `more` adding to the current state (not to a replay) at its
    /// revision, under the same lock: what a read at that revision also shows (derived keys).
    pub fn subscribe_with(
        &self,
        key: &str,
        since: Option<u64>,
        more: impl FnOnce(u64, &mut Vec<Arc<Event>>),
    ) -> Result<Subscription, Compacted> {
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
                .filter(|e| path::key_related(key, &e.key))
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
        let mut backlog = backlog;
        if since.is_none() {
            more(st.revision, &mut backlog);
        }
        Ok(Subscription {
            backlog,
            revision: st.revision,
            live,
        })
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
impl Options {
    /// Small tunables for tests (a short change log, a small cache).
    pub fn for_tests() -> Options {
        Options {
            log_events: 100,
            log_bytes: 1 << 20,
            tombstone_grace_ms: 0,
            cache_bytes: 1 << 20,
        }
    }
}

/// A database of node `node_id` in a fresh temporary directory, for tests.
#[cfg(test)]
pub fn open_for_tests(node_id: u64) -> (tempfile::TempDir, Db, WriterHandle) {
    let dir = tempfile::tempdir().unwrap();
    let (db, h) = Db::open(&dir.path().join("s.redb"), node_id, Options::for_tests()).unwrap();
    (dir, db, h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Path;
    use serde_json::json;

    fn opts() -> Options {
        Options::for_tests()
    }

    /// The registers in memory, in key order.
    fn memory(db: &Db) -> Vec<(String, Register)> {
        db.read()
            .store
            .registers()
            .map(|(k, r)| (k.to_owned(), r.clone()))
            .collect()
    }

    /// What a restart would load after a power cut now: the live files copied to `image`
    /// (see [`crash_image`]), loaded, in key order.
    fn replayed_after_power_cut(
        live: &std::path::Path,
        image: &std::path::Path,
    ) -> Vec<(String, Register)> {
        crash_image(live, image);
        let mut storage = Storage::open(&image.join("s.redb"), 1 << 20).unwrap();
        let mut replayed: Vec<(String, Register)> = storage
            .load()
            .unwrap()
            .registers
            .into_iter()
            .map(|(k, r)| (k.into(), r))
            .collect();
        replayed.sort_by(|a, b| a.0.cmp(&b.0));
        replayed
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

    /// The events after a revision, as a watcher resuming from it gets them.
    fn resumed(db: &Db, since: u64) -> Result<Vec<String>, Compacted> {
        let sub = db.subscribe("", Some(since))?;
        Ok(sub
            .backlog
            .iter()
            .map(|e| format!("{}/{} {}", e.revision, e.seq, e.to_json()))
            .collect())
    }

    #[tokio::test]
    async fn watches_resume_across_a_restart_within_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.redb");
        let (db, h) = Db::open(&file, 1, opts()).unwrap();
        for i in 0..150 {
            db.write(put(&format!("/k/{}", i % 40), json!(i)))
                .await
                .unwrap();
        }
        db.write(WriteRequest {
            ops: vec![Op::Delete {
                path: Path::parse("/k/3").unwrap(),
            }],
            condition: Condition::None,
        })
        .await
        .unwrap();
        let peer = reg(Kind::Leaf("\"p\"".into()), now_ms() + 1000, 9);
        db.merge(vec![("m".into(), peer)]).await.unwrap();
        let floor = db.read().log.floor();
        assert!(floor > 0, "the test log keeps 100 events: older ones left");
        let before = resumed(&db, floor).unwrap();
        let late = resumed(&db, 140).unwrap();
        assert!(resumed(&db, floor - 1).is_err());
        drop(db);
        h.join();
        let (db, h) = Db::open(&file, 1, opts()).unwrap();
        assert_eq!(resumed(&db, floor).unwrap(), before);
        assert_eq!(resumed(&db, 140).unwrap(), late);
        assert!(
            resumed(&db, floor - 1).is_err(),
            "still compacted below the window"
        );
        // The window goes on from there, and again across the next restart.
        let w = db.write(put("/after", json!(1))).await.unwrap();
        let floor = db.read().log.floor();
        let after = resumed(&db, floor).unwrap();
        assert!(after
            .last()
            .unwrap()
            .starts_with(&format!("{}/0 ", w.revision)));
        drop(db);
        h.join();
        let (db, h) = Db::open(&file, 1, opts()).unwrap();
        assert_eq!(resumed(&db, floor).unwrap(), after);
        drop(db);
        h.join();
        // A file that stops short of the database's revision (a power cut) keeps nothing: a
        // resume gets 410 rather than a gap.
        let journal = dir.path().join(journal::FILE);
        let text = std::fs::read_to_string(&journal).unwrap();
        // Even with every event of the last revision there: without its mark, the revision
        // may have been cut short.
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[lines.len() - 2].contains(r#""k":"after""#));
        std::fs::write(&journal, lines[..lines.len() - 1].join("\n") + "\n").unwrap();
        let (db, _h) = Db::open(&file, 1, opts()).unwrap();
        let now = db.read().revision;
        assert_eq!(db.read().log.floor(), now);
        assert!(resumed(&db, floor).is_err());
        assert_eq!(resumed(&db, now).unwrap(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn the_window_survives_the_file_being_rewritten_while_writes_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.redb");
        let journal = dir.path().join(journal::FILE);
        let (db, h) = Db::open(&file, 1, opts()).unwrap();
        // The test window is 100 events: the file is rewritten (in a thread, swapped in by a
        // later commit) every 100 or so of these.
        let mut sizes = Vec::new();
        for i in 0..1000 {
            db.write(put(&format!("/k/{}", i % 70), json!(i)))
                .await
                .unwrap();
            if i % 50 == 0 {
                sizes.push(std::fs::metadata(&journal).unwrap().len());
            }
        }
        let biggest = *sizes.iter().max().unwrap();
        assert!(
            biggest < 4 * sizes[3],
            "the file is rewritten as it grows: {sizes:?}"
        );
        let floor = db.read().log.floor();
        let before = resumed(&db, floor).unwrap();
        assert_eq!(before.len(), 100);
        drop(db);
        h.join();
        let (db, _h) = Db::open(&file, 1, opts()).unwrap();
        assert_eq!(resumed(&db, floor).unwrap(), before);
    }

    #[tokio::test]
    async fn an_expiry_announced_before_a_restart_is_not_announced_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.redb");
        let (db, h) = Db::open(&file, 1, opts()).unwrap();
        let ttl = WriteRequest {
            ops: vec![Op::put(Path::parse("/t").unwrap(), &json!(1), Some(50)).unwrap()],
            condition: Condition::None,
        };
        let w = db.write(ttl).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        db.housekeeping().await;
        let expired = loop {
            let events = resumed(&db, w.revision).unwrap();
            if !events.is_empty() {
                break events;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(expired[0].contains(r#""type":"expire""#), "{expired:?}");
        drop(db);
        h.join();
        let (db, _h) = Db::open(&file, 1, opts()).unwrap();
        db.housekeeping().await;
        db.write(put("/after", json!(1))).await.unwrap();
        let events = resumed(&db, w.revision).unwrap();
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(events[1].contains(r#""path":"/after""#), "{events:?}");
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
        ];
        assert_eq!(db.merge(remote.clone()).await.unwrap().applied, 2);
        assert_eq!(doc(&db), json!({"a": {"y": 2}}));
        assert_eq!(
            db.merge(remote).await.unwrap().applied,
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
        // A reset keeps this node's own writes newer than what a peer was seen holding.
        assert!(db.reset(local.version, &[]).await.unwrap() >= 2);
        assert_eq!(doc(&db), json!({"b": 1}));
        assert!(db.reset(w.version, &[]).await.unwrap() >= 1);
        assert_eq!(doc(&db), json!({}));
        drop(db);
        h.join();
        let (db, _h) = Db::open(&file, 1, opts()).unwrap();
        assert_eq!(doc(&db), json!({}), "the reset is durable");
    }

    #[tokio::test]
    async fn a_value_collected_on_a_peers_word_is_announced_deleted() {
        let (_dir, db, _h) = open_for_tests(1);
        let w = db.write(put("/a", json!(1))).await.unwrap();
        let mut sub = db.subscribe("", None).unwrap();
        let told = vec![("a".into(), w.version), ("b".into(), w.version)];
        assert_eq!(db.collect_told(told).await.unwrap(), 1);
        let ev = sub.live.recv().await.unwrap();
        assert_eq!((ev.kind, &*ev.key), (EventKind::Delete, "a"));
        assert_eq!(doc(&db), json!({}));
        // Remembered as collected: the same register from a peer does not come back.
        let merged = db
            .merge(vec![(
                "a".into(),
                reg(Kind::Leaf("1".into()), w.version.millis, 1),
            )])
            .await
            .unwrap();
        assert_eq!(merged.applied, 0);
    }

    /// A put below a leaf turns the leaf into a directory (an `Object` register, which drops
    /// everything older below it), so it must be planned after a peer's register merged below
    /// that leaf in the same group, or the store would keep a register its `Object` covers
    /// (and the log would disagree with memory).
    #[tokio::test]
    async fn a_put_below_a_leaf_waits_for_a_peers_register_below_that_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("live/s.redb");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let (db, _h) = Db::open(&file, 1, opts()).unwrap();
        for i in 0..20 {
            let leaf = db.write(put(&format!("/t{i}"), json!(1))).await.unwrap();
            let peer = reg(Kind::Leaf("2".into()), leaf.version.millis + 1000, 9);
            let key: Box<str> = format!("t{i}\0b").into();
            // A write to keep the writer busy, so the merge and the put queue up together.
            let (busy, merged, local) = tokio::join!(
                db.write(put(&format!("/busy{i}"), json!(0))),
                async {
                    tokio::task::yield_now().await;
                    db.merge(vec![(key.clone(), peer.clone())]).await
                },
                async {
                    tokio::task::yield_now().await;
                    tokio::task::yield_now().await;
                    db.write(put(&format!("/t{i}/c"), json!(3))).await
                },
            );
            busy.unwrap();
            assert_eq!(merged.unwrap().applied, 1);
            let local = local.unwrap();
            assert!(
                local.version > peer.version,
                "the put orders after the merge"
            );
            // Planned after the merge, the put finds /t{i} a directory already (the peer's
            // register below the leaf shows through), so it adds /t{i}/c beside it.
            let mut s = String::new();
            db.read().store.render(&format!("t{i}"), now_ms(), &mut s);
            assert_eq!(s, r#"{"b":2,"c":3}"#, "round {i}");
            let st = db.read();
            for (k, r) in st.store.registers() {
                for a in path::key_ancestors(k) {
                    assert!(
                        st.store.register(a).is_none_or(|x| x.version <= r.version),
                        "round {i}: {k:?} is covered by {a:?} yet still stored"
                    );
                }
            }
        }
        let image = dir.path().join("image");
        let replayed = replayed_after_power_cut(file.parent().unwrap(), &image);
        assert_eq!(replayed, memory(&db));
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

    /// Copies a live node's files, as a power cut would leave them (every acknowledged group is
    /// synced; no checkpoint runs in so short a test, so the log holds them all).
    fn crash_image(from: &std::path::Path, to: &std::path::Path) {
        for entry in walk(from) {
            let rel = entry.strip_prefix(from).unwrap();
            let dest = to.join(rel);
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(&entry, &dest).unwrap();
        }
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    /// A random step: a local write or a peer's batch, at paths of one small tree.
    fn arb_step() -> impl proptest::strategy::Strategy<Value = (bool, u8, u8, i64)> {
        use proptest::prelude::*;
        (any::<bool>(), 0u8..7, 0u8..4, -3_000i64..3_000)
    }

    const KEYS: [&str; 7] = ["a", "a/b", "a/b/c", "a/d", "e", "e/f", "a/b/g"];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// Whatever mix of local writes and peers' batches a node took, the log on disk holds
        /// exactly the registers in memory: what a restart after a power cut replays is what
        /// readers saw, register for register (the memory and the log apply the same plans).
        #[test]
        fn what_the_log_replays_is_what_memory_holds(
            steps in proptest::collection::vec(arb_step(), 1..40),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("live/s.redb");
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            let (db, _h) = Db::open(&file, 1, opts()).unwrap();
            let now = now_ms() as i64;
            rt.block_on(async {
                for (i, (local, key, kind, skew)) in steps.into_iter().enumerate() {
                    let path = format!("/{}", KEYS[key as usize]);
                    if local {
                        let op = match kind {
                            0 => Op::Delete { path: Path::parse(&path).unwrap() },
                            1 => Op::put(Path::parse(&path).unwrap(), &json!({"x": i, "y": {"z": 1}}), None).unwrap(),
                            _ => Op::put(Path::parse(&path).unwrap(), &json!(i), None).unwrap(),
                        };
                        let _ = db.write(WriteRequest { ops: vec![op], condition: Condition::None }).await;
                    } else {
                        // A peer's batch: this register plus one at every key, around now.
                        let kinds = [Kind::Deleted, Kind::Object, Kind::Leaf(i.to_string().into())];
                        let mut batch = vec![(
                            Path::parse(&path).unwrap().key().into(),
                            reg(kinds[kind as usize % 3].clone(), (now + skew) as u64, 2 + i as u64),
                        )];
                        for (j, k) in KEYS.iter().enumerate().filter(|(j, _)| (j + i) % 3 == 0) {
                            let kind = kinds[(j + kind as usize) % 3].clone();
                            let millis = (now + skew + 37 * j as i64 - 100) as u64;
                            batch.push((Path::parse(&format!("/{k}")).unwrap().key().into(), reg(kind, millis, 2 + i as u64)));
                        }
                        db.merge(batch).await.unwrap();
                    }
                }
            });
            let image = dir.path().join("image");
            let replayed = replayed_after_power_cut(file.parent().unwrap(), &image);
            proptest::prop_assert_eq!(replayed, memory(&db));
        }
    }
}
