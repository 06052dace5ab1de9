//! The change log: the node's numbered changes (revisions), bounded, for watchers to resume from.
//!
//! Every change the node applies gets the next revision; the events of one change (a batch) share
//! it. The log keeps the newest events up to a capacity and knows the *floor*: every event with a
//! revision above the floor is still here, so a resume from below it is refused ("compacted")
//! instead of silently skipping changes. Knows nothing of tasks or HTTP.

use super::path::display_key;
use super::version::Version;
use std::collections::VecDeque;
use std::sync::Arc;

/// What happened at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
    Expire,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Put => "put",
            EventKind::Delete => "delete",
            EventKind::Expire => "expire",
        }
    }
}

/// One visible change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub revision: u64,
    /// Position among the events of the same revision (a batch has several), from 0.
    pub seq: u32,
    pub kind: EventKind,
    /// Key of the path (see `path`).
    pub key: Box<str>,
    /// For puts, the compact JSON written at the path.
    pub value: Option<Box<str>>,
    pub version: Version,
}

impl Event {
    /// The event as one line of JSON, as the watch stream sends it.
    pub fn to_json(&self) -> String {
        let mut s =
            String::with_capacity(96 + self.key.len() + self.value.as_ref().map_or(0, |v| v.len()));
        s.push_str("{\"type\":\"");
        s.push_str(self.kind.as_str());
        s.push_str("\",\"path\":");
        let mut p = String::with_capacity(self.key.len() + 1);
        display_key(&self.key, &mut p);
        super::push_json_string(&mut s, &p);
        if let Some(v) = &self.value {
            s.push_str(",\"value\":");
            s.push_str(v);
        }
        s.push_str(&format!(
            ",\"version\":\"{}\",\"revision\":{}}}",
            self.version, self.revision
        ));
        s
    }
}

/// A resume point that has left the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot resume from revision {requested}: this node's change log holds the revisions after {floor} up to its current one (revisions are per node); watch again without since")]
pub struct Compacted {
    pub requested: u64,
    pub floor: u64,
}

/// What an event in the log is counted as beyond its key and value: the `Event` and its
/// `Arc` (about 80 bytes), the queue's slot and allocator rounding.
pub const EVENT_OVERHEAD: usize = 128;

/// The bounded log: at most `capacity` events and `max_bytes` of them, whichever is reached first.
#[derive(Debug)]
pub struct ChangeLog {
    events: VecDeque<Arc<Event>>,
    /// Most events kept.
    capacity: usize,
    /// Most bytes kept (keys, values and [`EVENT_OVERHEAD`] per event).
    max_bytes: usize,
    /// The bytes the events take, counted as for `max_bytes`.
    bytes: usize,
    /// Every event with a revision above this is in the log.
    floor: u64,
}

/// What `ev` is counted as in memory bounds (the change log's, watches' initial state).
pub fn event_bytes(ev: &Event) -> usize {
    ev.key.len() + ev.value.as_ref().map_or(0, |v| v.len()) + EVENT_OVERHEAD
}

impl ChangeLog {
    /// An empty log whose history starts after `revision` (the node's revision at start).
    pub fn new(capacity: usize, max_bytes: usize, revision: u64) -> ChangeLog {
        ChangeLog {
            events: VecDeque::new(),
            capacity: capacity.max(1),
            max_bytes,
            bytes: 0,
            floor: revision,
        }
    }

    /// Appends an event (revisions must not decrease), evicting whole revisions when full.
    pub fn push(&mut self, ev: Arc<Event>) {
        debug_assert!(self.events.back().is_none_or(|b| b.revision <= ev.revision));
        self.bytes += event_bytes(&ev);
        self.events.push_back(ev);
        while self.events.len() > self.capacity || self.bytes > self.max_bytes {
            let Some(old) = self.events.pop_front() else {
                break;
            };
            self.bytes -= event_bytes(&old);
            self.floor = self.floor.max(old.revision);
            while let Some(same) = self.events.pop_front_if(|e| e.revision == old.revision) {
                self.bytes -= event_bytes(&same);
            }
        }
    }

    /// The bytes the events take, as counted against the byte bound.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Events with a revision above `after`, or `Compacted` if some are gone.
    pub fn since(&self, after: u64) -> Result<Vec<Arc<Event>>, Compacted> {
        if after < self.floor {
            return Err(Compacted {
                requested: after,
                floor: self.floor,
            });
        }
        let start = self.events.partition_point(|e| e.revision <= after);
        Ok(self.events.range(start..).cloned().collect())
    }

    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// The most events and bytes it keeps.
    pub fn limits(&self) -> (usize, usize) {
        (self.capacity, self.max_bytes)
    }

    /// The events held, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Event>> {
        self.events.iter()
    }

    /// An empty log with the same limits whose history starts after `floor`.
    pub fn restarted(&self, floor: u64) -> ChangeLog {
        ChangeLog::new(self.capacity, self.max_bytes, floor)
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(rev: u64) -> Arc<Event> {
        Arc::new(Event {
            revision: rev,
            seq: 0,
            kind: EventKind::Put,
            key: "a\0b".into(),
            value: Some("1".into()),
            version: Version::ZERO,
        })
    }

    #[test]
    fn resumes_and_compacts_whole_revisions() {
        let mut log = ChangeLog::new(3, usize::MAX, 10);
        assert_eq!(log.since(10).unwrap().len(), 0);
        assert!(log.since(9).is_err());
        for r in [11, 12, 12, 13] {
            log.push(ev(r));
        }
        // capacity 3: revision 11 left, floor is 11
        assert_eq!(log.floor(), 11);
        assert_eq!(log.since(11).unwrap().len(), 3);
        assert_eq!(log.since(12).unwrap().len(), 1);
        assert_eq!(
            log.since(10),
            Err(Compacted {
                requested: 10,
                floor: 11
            })
        );
        log.push(ev(14));
        // evicting one event of revision 12 evicts both
        assert_eq!(log.floor(), 12);
        assert_eq!(
            log.since(12)
                .unwrap()
                .iter()
                .map(|e| e.revision)
                .collect::<Vec<_>>(),
            vec![13, 14]
        );
    }

    #[test]
    fn the_log_is_bounded_by_bytes_too() {
        let big = |rev| {
            Arc::new(Event {
                value: Some("x".repeat(1000).into()),
                ..(*ev(rev)).clone()
            })
        };
        let one = event_bytes(&big(1));
        let mut log = ChangeLog::new(1000, 3 * one, 0);
        for r in 1..=10 {
            log.push(big(r));
            assert!(log.bytes() <= 3 * one, "{}", log.bytes());
        }
        assert_eq!((log.len(), log.floor(), log.bytes()), (3, 7, 3 * one));
        // Small events still fill the log by count.
        let mut log = ChangeLog::new(4, 1 << 20, 0);
        for r in 1..=10 {
            log.push(ev(r));
        }
        assert_eq!((log.len(), log.floor()), (4, 6));
        assert_eq!(log.bytes(), 4 * event_bytes(&ev(1)));
    }

    #[test]
    fn event_json() {
        assert_eq!(
            ev(5).to_json(),
            r#"{"type":"put","path":"/a/b","value":1,"version":"0-0-0000000000000000","revision":5}"#
        );
    }
}
