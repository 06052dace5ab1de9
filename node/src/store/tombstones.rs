//! Expiries and tombstones: leaves whose time runs out, and deletions (and expired leaves) kept
//! until every member holds them, then collected and remembered until every member was seen
//! without them (see `cluster::membership` for who decides when).

use super::*;

/// When a tombstone was made: a deletion's stamp, an expired leaf's expiry (Unix ms).
fn made_ms(r: &Register) -> Option<u64> {
    match (&r.kind, r.expires) {
        (Kind::Deleted, _) => Some(r.version.millis),
        (_, Some(t)) => Some(t.get()),
        _ => None,
    }
}

impl Store {
    /// Number of deletion markers and announced expiries not collected yet.
    pub fn tombstone_count(&self) -> usize {
        self.ix.tombstones.len()
    }

    /// When the oldest tombstone waiting was made (or expired), Unix ms.
    pub fn oldest_tombstone_ms(&self) -> Option<u64> {
        self.ix
            .tombstones
            .iter()
            .filter_map(|(_, k)| made_ms(self.regs.get(k)?))
            .min()
    }

    /// Number of collected tombstones still remembered (see [`Store::collect`]).
    pub fn collected_count(&self) -> usize {
        self.collected.len()
    }

    /// True if a tombstone collected here covers a register (as it would if it were still
    /// here).
    pub(super) fn covered_by_collected(&self, key: &str, reg: &Register) -> bool {
        self.collected
            .get(key)
            .is_some_and(|(v, _)| *v >= reg.version)
            || path::key_ancestors(key)
                .any(|a| self.collected.get(a).is_some_and(|(v, _)| *v > reg.version))
    }

    /// Leaves whose expiry is at or before `now` and not yet announced: (key, version).
    pub fn due_expiries(&self, now: u64) -> Vec<(Box<str>, Version)> {
        self.ix
            .expiries
            .range((
                Bound::Unbounded,
                Bound::Excluded((now + 1, Box::<str>::from(""))),
            ))
            .filter_map(|(_, k)| self.regs.get(k).map(|r| (k.clone(), r.version)))
            .collect()
    }

    /// The earliest expiry not yet announced.
    pub fn next_expiry(&self) -> Option<u64> {
        self.ix.expiries.first().map(|(t, _)| *t)
    }

    /// Marks an expiry as announced: the leaf stays (it still covers older writes) and joins
    /// the tombstones, collected like a deletion.
    pub fn announce_expiry(&mut self, key: &str) -> bool {
        let Some(t) = self
            .regs
            .get(key)
            .and_then(|r| r.expires)
            .map(NonZeroU64::get)
        else {
            return false;
        };
        if self.ix.expiries.remove(&(t, key.into())) {
            let arrival = self.ix.arrivals.get(key).copied().unwrap_or(0);
            self.ix.tombstones.insert((arrival, key.into()));
            true
        } else {
            false
        }
    }

    /// Tombstones (deletions and announced expiries) that arrived at or before revision
    /// `held` (the one every member is known to have held, see `cluster::membership`) and
    /// were made (or expired) before `floor`.
    pub fn due_tombstones(&self, held: u64, floor: u64) -> Vec<Box<str>> {
        let end = match held.checked_add(1) {
            Some(next) => Bound::Excluded((next, Box::<str>::from(""))),
            None => Bound::Unbounded,
        };
        self.ix
            .tombstones
            .range((Bound::Unbounded, end))
            .filter(|(_, k)| {
                self.regs
                    .get(k)
                    .and_then(made_ms)
                    .is_some_and(|t| t < floor)
            })
            .map(|(_, k)| k.clone())
            .collect()
    }

    /// Collects tombstones (registers at `keys`) at revision `revision`: they leave the store
    /// and are remembered as collected (see [`Store::forget_collected`]).
    pub fn collect(&mut self, keys: &[Box<str>], revision: u64) {
        for k in keys {
            if let Some(r) = self.remove(k) {
                self.collected.insert(k.clone(), (r.version, revision));
            }
        }
    }

    /// The registers a peer says it collected (key, version) that are here at exactly that
    /// version: the ones this store may collect on its word.
    pub fn collected_by_peer(&self, told: &[(Box<str>, Version)]) -> Vec<Box<str>> {
        told.iter()
            .filter(|(k, v)| self.regs.get(k).is_some_and(|r| r.version == *v))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Forgets the collected tombstones collected at or before revision `held`: every member
    /// has since been seen without them, so none can send them back.
    pub fn forget_collected(&mut self, held: u64) {
        self.collected.retain(|_, (_, at)| *at > held);
    }
}
