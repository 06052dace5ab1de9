//! The sync thread: makes each group the writer appended durable (a sync up to its own
//! record), then applies the durable groups to the committed state in order, broadcasts their
//! events, feeds replication and answers their requests; slow syncs are reported.

use super::*;

/// The sync thread: syncs the log for the groups it finds queued (one, unless the writer had
/// more than a full group), each up to its own record, then applies those that are durable in
/// order and answers their requests.
pub(super) fn sync_loop(inner: &Inner, rx: std::sync::mpsc::Receiver<Synced>) {
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
                    st.reach(s.last_revision);
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
type Replies = Vec<(Origin, Result<(Written, Merged), Error>)>;

/// Applies one planned request to the committed state: merges its registers, logs and
/// broadcasts its events, feeds a local write's registers to replication.
fn apply(inner: &Inner, st: &mut State, p: Planned, feed: bool, replies: &mut Replies) {
    let Planned {
        plan,
        events,
        written,
        origin,
    } = p;
    let mut events = events;
    let mut merged = Merged::default();
    match &origin {
        Origin::Local(_) => {
            if feed {
                let _ = inner.changes.send(plan.puts.clone().into());
            }
            st.own_high = st.own_high.max(written.version);
            st.store.apply(plan, written.revision);
        }
        Origin::Remote(_) => {
            let keys: Vec<(Box<str>, Version)> = plan
                .puts
                .iter()
                .map(|(k, r)| (k.clone(), r.version))
                .collect();
            // Planned against this state (overlapping requests wait for each other), so the
            // plan is applied as it was logged.
            let mut plan = plan;
            merged.collected = std::mem::take(&mut plan.collected);
            st.store.apply(plan, written.revision);
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
            merged.applied = events.len();
        }
    }
    for ev in events {
        st.record(ev.clone());
        let _ = inner.events.send(ev);
    }
    replies.push((origin, Ok((written, merged))));
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
