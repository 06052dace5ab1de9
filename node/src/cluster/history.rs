//! A node's continuous history: since when it has been running without a gap longer than the
//! tombstone grace period. Tombstones are collected after the grace period, so a node that was
//! down for longer may hold registers whose deletion the others have already forgotten; offered
//! back, they would come back to life. Such a node is *stale*: it answers no digest request and
//! starts no anti-entropy round until it has met a peer. If that peer has a history longer than
//! the grace period (it may have collected tombstones this node never saw), this node forgets
//! its registers and resyncs in full; otherwise nobody can have collected anything from the
//! absence and it simply goes on.
//!
//! `DATA/cluster.history` holds two Unix-millisecond times, "since last", rewritten at most
//! once a minute while the node runs.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the file is rewritten: a minute, or a quarter of a (test-sized) grace period.
const WRITE_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct State {
    since_ms: u64,
    written: Option<Instant>,
    stale: bool,
}

#[derive(Debug)]
pub struct History {
    file: PathBuf,
    write_every: Duration,
    state: Mutex<State>,
}

impl History {
    /// Reads the history file; a node that was down longer than `grace` starts stale (and its
    /// history starts now).
    pub fn open(data_dir: &std::path::Path, grace: Duration, now_ms: u64) -> History {
        let file = data_dir.join("cluster.history");
        let recorded = std::fs::read_to_string(&file).ok().and_then(|t| {
            let mut it = t.split_whitespace().map(|x| x.parse::<u64>().ok());
            Some((it.next()??, it.next()??))
        });
        let grace_ms = grace.as_millis() as u64;
        let (since_ms, stale) = match recorded {
            Some((since, last)) if now_ms.saturating_sub(last) <= grace_ms => (since, false),
            Some((_, last)) => {
                tracing::warn!(
                    down_hours = now_ms.saturating_sub(last) / 3_600_000,
                    "this node was down for longer than the tombstone grace period; it holds \
                     back its registers until it meets a peer, and resyncs in full if that peer \
                     may have forgotten deletions meanwhile"
                );
                (now_ms, true)
            }
            None => (now_ms, false),
        };
        let h = History {
            file,
            write_every: WRITE_EVERY.min(grace / 4),
            state: Mutex::new(State {
                since_ms,
                written: None,
                stale,
            }),
        };
        h.tick(now_ms);
        h
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that the node is running (on disk at most once a minute).
    pub fn tick(&self, now_ms: u64) {
        let mut st = self.lock();
        if st.written.is_some_and(|t| t.elapsed() < self.write_every) {
            return;
        }
        let text = format!("{} {now_ms}\n", st.since_ms);
        match crate::tls::write_atomic(&self.file, text.as_bytes(), 0o644) {
            Ok(()) => st.written = Some(Instant::now()),
            Err(e) => tracing::warn!(error = %e, "cannot record the node's history"),
        }
    }

    pub fn is_stale(&self) -> bool {
        self.lock().stale
    }

    /// How long this node's continuous history is (0 while stale).
    pub fn length_ms(&self, now_ms: u64) -> u64 {
        let st = self.lock();
        if st.stale {
            0
        } else {
            now_ms.saturating_sub(st.since_ms)
        }
    }

    /// The node has dealt with its absence (resynced or found nothing to fear).
    pub fn resolved(&self) {
        self.lock().stale = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_gap_makes_a_node_stale_and_a_short_one_keeps_its_history() {
        let dir = tempfile::tempdir().unwrap();
        let grace = Duration::from_secs(100);
        let h = History::open(dir.path(), grace, 1_000_000);
        assert!(!h.is_stale(), "a new node has nothing to fear");
        assert_eq!(h.length_ms(1_050_000), 50_000);
        drop(h);
        let h = History::open(dir.path(), grace, 1_090_000);
        assert!(!h.is_stale());
        assert_eq!(h.length_ms(1_090_000), 90_000, "the history goes on");
        drop(h);
        let h = History::open(dir.path(), grace, 1_090_000 + 100_001);
        assert!(h.is_stale());
        assert_eq!(h.length_ms(1_300_000), 0);
        h.resolved();
        assert!(!h.is_stale());
    }
}
