//! The writer thread: the single owner of all mutation. It drains queued requests into a
//! group, checks preconditions and plans each request against the committed state (stamping
//! versions and revisions), appends the group to the write-ahead log as one record and hands it
//! to the sync thread; it also runs housekeeping (expiry events, tombstone collection) and
//! resets. Must not apply anything to the committed state before its group is durable.

use super::*;

/// Who waits for a planned request.
pub(super) enum Origin {
    /// A local write: its events are planned, its registers feed replication.
    Local(oneshot::Sender<Result<Written, Error>>),
    /// A merge from a peer: its events are made once applied (an object register shows what
    /// its subtree holds then).
    Remote(oneshot::Sender<Result<Merged, Error>>),
}

impl Origin {
    /// Answers with what the request was given and what the merge did.
    pub(super) fn answer(self, result: Result<(Written, Merged), Error>) {
        match self {
            Origin::Local(reply) => {
                let _ = reply.send(result.map(|(w, _)| w));
            }
            Origin::Remote(reply) => {
                let _ = reply.send(result.map(|(_, m)| m));
            }
        }
    }
}

/// One planned request inside a group.
pub(super) struct Planned {
    /// What the request changes: appended to the log as it is, then applied to memory as it is.
    pub(super) plan: Plan,
    pub(super) events: Vec<Arc<Event>>,
    pub(super) written: Written,
    pub(super) origin: Origin,
}

#[derive(Default)]
pub(super) struct Group {
    pub(super) planned: Vec<Planned>,
    /// Keys written by the group.
    pub(super) touched: HashSet<Box<str>, foldhash::fast::RandomState>,
    /// Proper ancestors of the keys written by the group.
    pub(super) ancestors: HashSet<Box<str>, foldhash::fast::RandomState>,
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

/// The first and longest waits between attempts to reopen a storage that failed to reopen.
const RESUME_BACKOFF: Duration = Duration::from_secs(2);
const RESUME_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Free space a file system must have before a storage stopped for want of it is reopened.
const ROOM_TO_RESUME: usize = 8 << 20;

/// True if this process can write [`ROOM_TO_RESUME`] bytes beside the database file `path`
/// (found by writing them to a probe file, removed again: quotas and reserved blocks count).
fn has_room(path: &std::path::Path) -> bool {
    use std::io::Write;
    let probe = path.with_extension("room-probe");
    let written = std::fs::File::create(&probe).and_then(|mut f| {
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..ROOM_TO_RESUME / chunk.len() {
            f.write_all(&chunk)?;
        }
        f.sync_data()
    });
    let _ = std::fs::remove_file(&probe);
    written.is_ok()
}

/// A group appended to the log, on its way through the sync thread.
pub(super) struct Synced {
    pub(super) seq: u64,
    pub(super) sync: LogSync,
    pub(super) planned: Vec<Planned>,
    pub(super) last_revision: u64,
}

/// The single owner of all mutation.
pub(super) struct Writer {
    pub(super) inner: Arc<Inner>,
    pub(super) storage: Storage,
    pub(super) clock: Hlc,
    /// The last revision handed out (committed or in the current group).
    pub(super) revision: u64,
    pub(super) opts: Options,
    pub(super) sync_tx: Option<std::sync::mpsc::Sender<Synced>>,
    pub(super) syncer: Option<std::thread::JoinHandle<()>>,
    /// Groups handed to the sync thread so far.
    pub(super) sent: u64,
    /// The keys of groups handed to the sync thread and perhaps not applied yet, by number.
    pub(super) inflight: VecDeque<(u64, Group)>,
    /// After a failed reopen of a storage stopped for want of space: when to try again, and
    /// the wait before that.
    pub(super) resume_at: Option<Instant>,
    pub(super) resume_backoff: Duration,
}

impl Writer {
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Command>) {
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
                        let above = self.leaves_above(&req);
                        let overlaps = |g: &Group| {
                            req.ops.iter().any(|op| g.overlaps(op.path().key()))
                                || above.iter().any(|k| g.overlaps(k))
                        };
                        if overlaps(&group) {
                            self.flush(std::mem::take(&mut group));
                        }
                        self.wait_for_inflight(overlaps);
                        match self.plan(req) {
                            Ok((plan, events, written)) => {
                                for (k, _) in &plan.puts {
                                    group.touch(k);
                                }
                                group.planned.push(Planned {
                                    plan,
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
                            Ok((plan, written)) => {
                                for (k, _) in &plan.puts {
                                    group.touch(k);
                                }
                                group.planned.push(Planned {
                                    plan,
                                    events: Vec::new(),
                                    written,
                                    origin: Origin::Remote(reply),
                                });
                            }
                            Err(collected) => {
                                let _ = reply.send(Ok(Merged {
                                    applied: 0,
                                    collected,
                                }));
                            }
                        }
                    }
                    Command::Collect(told, reply) => {
                        self.flush(std::mem::take(&mut group));
                        self.wait_for_inflight(|_| true);
                        let _ = reply.send(self.collect_told(&told));
                    }
                    Command::Housekeeping => {
                        self.flush(std::mem::take(&mut group));
                        self.wait_for_inflight(|_| true);
                        self.resume();
                        self.housekeeping();
                    }
                    Command::Reset(shared, keep, reply) => {
                        self.flush(std::mem::take(&mut group));
                        self.wait_for_inflight(|_| true);
                        let _ = reply.send(self.reset(shared, keep));
                    }
                    Command::Derived(changes, apply, reply) => {
                        self.flush(std::mem::take(&mut group));
                        self.wait_for_inflight(|_| true);
                        let _ = reply.send(self.derived(changes, apply));
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

    /// The keys above a local request's puts that hold a register other than a directory's:
    /// a put below such a key may turn it into a directory (an `Object` register that drops
    /// everything below it), so the request writes there too, and must not share a group with
    /// (or be planned before the end of) a request that wrote below it. Usually none: a
    /// directory's parents hold no register or an `Object` one.
    fn leaves_above(&self, req: &WriteRequest) -> Vec<Box<str>> {
        let st = self.state();
        let mut out = Vec::new();
        for op in &req.ops {
            if let Op::Put { path, .. } = op {
                out.extend(
                    path::key_ancestors(path.key())
                        .filter(|a| st.store.register(a).is_some_and(|r| r.kind != Kind::Object))
                        .map(Box::<str>::from),
                );
            }
        }
        out
    }

    fn state(&self) -> RwLockReadGuard<'_, State> {
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks a local request's preconditions and plans it against the committed state: its
    /// registers (stamped with a new version), what they drop, and its events.
    fn plan(&mut self, req: WriteRequest) -> Result<(Plan, Vec<Arc<Event>>, Written), Error> {
        let ahead = self
            .inner
            .clock_ahead
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(why) = ahead {
            return Err(Error::ClockAhead(why));
        }
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
        for (seq, op) in req.ops.into_iter().enumerate() {
            let key: Box<str> = op.path().key().into();
            let (planned, value) = st.store.plan_local(op, version, now);
            regs.extend(planned);
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
        // Ops of a batch do not overlap, so the only register two of them can both produce is
        // the `Object` that turns a leaf above them into a directory: the plan keeps it once.
        // Nothing else is left out, since the clock has seen every version here.
        let produced = regs.len();
        let plan = st.store.plan(regs);
        debug_assert!(
            plan.puts.len() <= produced && plan.puts.iter().all(|(_, r)| r.version == version),
            "a local write is never covered"
        );
        drop(st);
        self.revision = revision;
        Ok((plan, events, Written { version, revision }))
    }

    /// Plans registers from a peer against the committed state by the store's merge rule, and
    /// moves the clock past what enters. If nothing would change: the registers left out as
    /// collected here.
    fn plan_remote(&mut self, regs: Registers) -> Result<(Plan, Written), crate::store::Named> {
        let plan = self.state().store.plan(regs);
        if plan.puts.is_empty() {
            return Err(plan.collected);
        }
        for (_, r) in &plan.puts {
            self.clock.observe(r.version);
        }
        self.revision += 1;
        let written = Written {
            version: self.clock.high_water(),
            revision: self.revision,
        };
        Ok((plan, written))
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
                .flat_map(|p| p.plan.removes.iter().map(|k| &**k))
                .collect(),
            puts: planned
                .iter()
                .flat_map(|p| p.plan.puts.iter().map(|(k, r)| (&**k, r)))
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

    /// Removes every register but this node's own newer than `shared`, durably (see
    /// [`Db::reset`]).
    fn reset(&mut self, shared: Version, keep: &[&str]) -> Result<usize, Error> {
        let me = self.inner.node_id;
        let own = |k: &str, r: &Register| {
            (r.version.node == me && r.version > shared)
                || keep
                    .iter()
                    .any(|base| crate::store::path::key_contains(base, k))
        };
        let (keys, kept): (Vec<Box<str>>, Registers) = {
            let st = self.state();
            let keys = st
                .store
                .registers()
                .filter(|(k, r)| !own(k, r))
                .map(|(k, _)| k.into())
                .collect();
            let kept = st
                .store
                .registers()
                .filter(|(k, r)| own(k, r))
                .map(|(k, r)| (k.into(), r.clone()))
                .collect();
            (keys, kept)
        };
        let revision = self.commit_removal(&keys)?;
        let now = now_ms();
        let mut st = self.inner.state.write().unwrap_or_else(|e| e.into_inner());
        st.store = Store::loaded(kept, revision);
        let mut events = vec![Arc::new(Event {
            revision,
            seq: 0,
            kind: EventKind::Delete,
            key: "".into(),
            value: None,
            version: self.clock.high_water(),
        })];
        for (k, text, version) in st.store.leaves("", now) {
            events.push(Arc::new(Event {
                revision,
                seq: events.len() as u32,
                kind: EventKind::Put,
                key: k.into(),
                value: Some(text.into()),
                version,
            }));
        }
        for ev in events {
            st.record(ev.clone());
            let _ = self.inner.events.send(ev);
        }
        st.reach(revision);
        Ok(keys.len())
    }

    /// Commits a revision of its own that removes the registers at `keys` (none: an empty
    /// revision, for the events that follow); answers the revision.
    fn commit_removal(&mut self, keys: &[Box<str>]) -> Result<u64, storage::Error> {
        let revision = self.revision + 1;
        let commit = storage::Commit {
            removes: keys.iter().map(|k| &**k).collect(),
            puts: Vec::new(),
            revision,
            high_water: self.clock.high_water(),
        };
        self.storage.commit(&commit)?;
        self.revision = revision;
        Ok(revision)
    }

    /// Collects the registers a peer collected, where this node holds the same version (see
    /// [`Db::collect_told`]).
    fn collect_told(&mut self, told: &[(Box<str>, Version)]) -> Result<usize, Error> {
        let keys = self.state().store.collected_by_peer(told);
        if keys.is_empty() {
            return Ok(0);
        }
        self.collect(&keys)?;
        Ok(keys.len())
    }

    /// Removes tombstones durably as one new revision and remembers them as collected at that
    /// revision. Watchers were told of deletions and expiries; a value that was still visible
    /// (a peer collected a deletion above it that this node never had) is announced deleted.
    fn collect(&mut self, keys: &[Box<str>]) -> Result<u64, Error> {
        let revision = self.commit_removal(keys)?;
        let now = now_ms();
        let mut st = self.inner.state.write().unwrap_or_else(|e| e.into_inner());
        let visible: Vec<(Box<str>, Version)> = keys
            .iter()
            .filter_map(|k| {
                let r = st.store.register(k)?;
                (r.is_visible(now) && r.leaf().is_some()).then(|| (k.clone(), r.version))
            })
            .collect();
        st.store.collect(keys, revision);
        for (seq, (key, version)) in visible.into_iter().enumerate() {
            let ev = Arc::new(Event {
                revision,
                seq: seq as u32,
                kind: EventKind::Delete,
                key,
                value: None,
                version,
            });
            st.record(ev.clone());
            let _ = self.inner.events.send(ev);
        }
        st.reach(revision);
        Ok(revision)
    }

    /// Announces changes of derived keys as one revision: the revision is committed (so it is
    /// never handed out twice), the registers are untouched (derived keys are not stored).
    fn derived(
        &mut self,
        changes: Vec<(Box<str>, Option<Box<str>>)>,
        apply: Box<dyn FnOnce() -> bool + Send>,
    ) -> Result<u64, Error> {
        let revision = self.revision + 1;
        let version = self.clock.tick(now_ms());
        let commit = storage::Commit {
            removes: Vec::new(),
            puts: Vec::new(),
            revision,
            high_water: self.clock.high_water(),
        };
        self.storage.commit(&commit)?;
        self.revision = revision;
        let mut st = self.inner.state.write().unwrap_or_else(|e| e.into_inner());
        let changes = if apply() { changes } else { Vec::new() };
        for (seq, (key, value)) in changes.into_iter().enumerate() {
            let kind = match value {
                Some(_) => EventKind::Put,
                None => EventKind::Delete,
            };
            let ev = Arc::new(Event {
                revision,
                seq: seq as u32,
                kind,
                key,
                value,
                version,
            });
            st.record(ev.clone());
            let _ = self.inner.events.send(ev);
        }
        st.reach(revision);
        Ok(revision)
    }

    /// After the storage stopped for want of space, with nothing of the failed commit written:
    /// once the file system has room again, reopens the storage from the log and takes writes
    /// again, if what the log holds is exactly what memory holds (every group sent to the
    /// sync thread has been answered: the caller waited for them).
    fn resume(&mut self) {
        let stop = self.storage.stopped().get().cloned();
        if !stop.is_some_and(|s| s.resumable)
            || self.resume_at.is_some_and(|t| Instant::now() < t)
            || !has_room(self.storage.path())
        {
            return;
        }
        let loaded = match self.storage.reopen() {
            Ok(loaded) => loaded,
            Err(e) => {
                // Each attempt reopens and replays the whole store: back off.
                self.resume_backoff =
                    (self.resume_backoff * 2).clamp(RESUME_BACKOFF, RESUME_BACKOFF_MAX);
                self.resume_at = Some(Instant::now() + self.resume_backoff);
                tracing::warn!(error = %e, retry_in = ?self.resume_backoff, "the disk has room again, but the storage could not be reopened");
                return;
            }
        };
        (self.resume_at, self.resume_backoff) = (None, Duration::ZERO);
        let (revision, root) = {
            let st = self.state();
            (st.revision, st.store.digest().root())
        };
        let reloaded = crate::store::Store::from_registers(loaded.registers);
        let stopped = self.storage.stopped();
        if loaded.revision != revision || reloaded.digest().root() != root {
            let why = format!(
                "the log reopened after a full disk holds revision {} and memory revision {revision}, or other registers: the node serves memory and takes no writes; restart it, or move the data directory aside and let it resync from its peers",
                loaded.revision
            );
            tracing::error!("{why}");
            storage::Stop::fatal(&stopped, why);
        } else {
            self.revision = revision;
            self.clock.observe(loaded.high_water);
            tracing::warn!(revision, "the disk has room again: writes are taken again");
        }
        *self
            .inner
            .stopped
            .write()
            .unwrap_or_else(|e| e.into_inner()) = stopped;
    }

    /// Announces expiries that are due, collects the tombstones every member is known to
    /// hold, and forgets the collected ones every member was seen without.
    fn housekeeping(&mut self) {
        self.storage.tick();
        let now = now_ms();
        let held = self.inner.held.load(Relaxed);
        let (due, old) = {
            let mut st = self.inner.state.write().unwrap_or_else(|e| e.into_inner());
            st.store.forget_collected(held);
            let floor = now.saturating_sub(self.opts.tombstone_grace_ms);
            (
                st.store.due_expiries(now),
                st.store.due_tombstones(held, floor),
            )
        };
        if !old.is_empty() {
            match self.collect(&old) {
                Ok(_) => tracing::debug!(
                    collected = old.len(),
                    "tombstones every member holds collected"
                ),
                Err(e) => tracing::error!(error = %e, "collecting tombstones failed; will retry"),
            }
        }
        if due.is_empty() {
            return;
        }
        let revision = match self.commit_removal(&[]) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "housekeeping commit failed; will retry");
                return;
            }
        };
        let mut st = self.inner.state.write().unwrap_or_else(|e| e.into_inner());
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
                st.record(ev.clone());
                let _ = self.inner.events.send(ev);
            }
        }
        st.reach(revision);
    }
}
