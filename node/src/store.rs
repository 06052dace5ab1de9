//! The store: a set of registers, at most one per path, and the one rule that decides what is
//! visible (README "Consistency model, in plain words").
//!
//! A register at path P with version v *covers* P and everything below P that is older than v.
//! [`Store::plan`] is the only place that rule is written, and registers enter only through its
//! plans ([`Store::apply`]): a plan drops what its registers cover and leaves out registers that
//! are already covered, so the set of registers is always the set of uncovered ones among
//! everything ever merged, whatever the order or duplication of arrivals (merging is idempotent
//! and commutative). Local writes and replicated registers are planned alike.
//!
//! Pure: time is a parameter, nothing here does I/O or knows about HTTP, storage or tasks.

pub mod digest;
pub mod log;
pub mod path;
pub mod register;
mod tombstones;
pub mod value;
pub mod version;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroU64;
use std::ops::Bound;

pub use digest::Digest;
pub use log::{ChangeLog, Event, EventKind};
pub use path::Path;
pub use register::{Kind, Register};
pub use version::{Hlc, Version};

/// The top-level segment that holds the node's own data (tokens). It replicates like any other
/// key, but the document views (`render` and `children` of the root) leave it out.
pub const INTERNAL: &str = ".herd";

fn is_internal(key: &str) -> bool {
    path::key_contains(INTERNAL, key)
}

/// Registers by key, as a write plans them.
pub type Registers = Vec<(Box<str>, Register)>;

/// Registers named by key and version (the ones a tombstone collected here covers).
pub type Named = Vec<(Box<str>, Version)>;

/// One local write operation, already validated and exploded (the CPU-heavy part happens on the
/// caller's thread, not under the store's lock).
#[derive(Debug, Clone)]
pub enum Op {
    Put {
        path: Path,
        /// The value exploded into registers, parents first; the first entry is `path` itself.
        tree: Vec<(Box<str>, Kind)>,
        /// The compact JSON of the whole value, for the change event.
        text: Box<str>,
        /// Time to live of a leaf value, in milliseconds.
        ttl_ms: Option<u64>,
    },
    Delete {
        path: Path,
    },
}

impl Op {
    /// A put of `v` at `path`; fails if an object key breaks the path grammar.
    pub fn put(path: Path, v: &serde_json::Value, ttl_ms: Option<u64>) -> Result<Op, value::Error> {
        let mut tree = Vec::new();
        value::explode(&path, v, &mut tree)?;
        let text = match tree.as_slice() {
            [(_, Kind::Leaf(t))] => t.clone(),
            _ => value::to_text(v),
        };
        Ok(Op::Put {
            path,
            tree,
            text,
            ttl_ms,
        })
    }

    pub fn path(&self) -> &Path {
        match self {
            Op::Put { path, .. } | Op::Delete { path } => path,
        }
    }
}

/// What merging a batch of registers changes (made by [`Store::plan`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The registers that enter, in version order (then key order); a key's parents come
    /// before it within one version.
    pub puts: Registers,
    /// Keys of the registers here that the puts drop (applied first; a key a put replaces in
    /// place is not listed).
    pub removes: Vec<Box<str>>,
    /// Registers of the batch left out because a tombstone this store collected covers them
    /// (see [`Store::collect`]): their sender is told, so it collects them too.
    pub collected: Named,
}

/// What a path shows at a moment.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// Nothing visible at or below the path.
    Missing,
    /// A leaf value.
    Leaf(&'a Register),
    /// A directory (an object register, or anything visible below the path).
    Dir,
}

/// The registers and the indexes kept beside them.
#[derive(Debug, Default, Clone)]
pub struct Store {
    /// Every uncovered register, by key (see [`path`] for the key encoding).
    regs: BTreeMap<Box<str>, Register>,
    /// Kept in step with `regs`: every register in it is [`Indexes::add`]ed once.
    ix: Indexes,
    /// Tombstones collected here (key → their version and the revision of the collection),
    /// remembered until every member has been seen without them: what they cover does not
    /// enter again, and a peer that sends it is told to collect it (see [`Plan::collected`]).
    collected: BTreeMap<Box<str>, (Version, u64)>,
}

/// What is derived from the registers, so that nothing needs a scan.
#[derive(Debug, Default, Clone)]
struct Indexes {
    /// Leaves that carry an expiry, by (expiry, key), so expiries are found without a scan.
    expiries: BTreeSet<(u64, Box<str>)>,
    /// Tombstones waiting to be collected by (arrival, key): deletion markers, and expired
    /// leaves once announced, so a collection needs no scan.
    tombstones: BTreeSet<(u64, Box<str>)>,
    /// When each deletion marker or expiring leaf entered the store: the revision of its
    /// arrival (the loaded revision for what was loaded from disk). A tombstone is collected
    /// once every member was seen holding everything this store held at a revision at or after
    /// its arrival.
    arrivals: HashMap<Box<str>, u64>,
    /// The anti-entropy summary of the registers.
    digest: Digest,
}

impl Indexes {
    /// Adds a register that enters the store at revision `arrival`.
    fn add(&mut self, key: &str, reg: &Register, arrival: u64) {
        self.digest.insert(key, reg);
        if let Some(t) = reg.expires {
            self.expiries.insert((t.get(), key.into()));
        }
        if reg.kind == Kind::Deleted || reg.expires.is_some() {
            self.arrivals.insert(key.into(), arrival);
        }
        if reg.kind == Kind::Deleted {
            self.tombstones.insert((arrival, key.into()));
        }
    }

    /// Removes a register that leaves the store. Before [`Indexes::add`] of its successor at
    /// the same key: both may have the same (time, key) entry.
    fn remove(&mut self, key: &str, reg: &Register) {
        self.digest.remove(key, reg);
        if let Some(t) = reg.expires {
            self.expiries.remove(&(t.get(), Box::<str>::from(key)));
        }
        if let Some(a) = self.arrivals.remove(key) {
            self.tombstones.remove(&(a, key.into()));
        }
    }
}

/// The keys strictly below `key`: the range `[key\0, key\x01)`, or everything but the root.
fn below_bounds(key: &str) -> (Bound<String>, Bound<String>) {
    if key.is_empty() {
        (Bound::Excluded(String::new()), Bound::Unbounded)
    } else {
        (
            Bound::Included(format!("{key}\0")),
            Bound::Excluded(format!("{key}\x01")),
        )
    }
}

fn as_str(b: &Bound<String>) -> Bound<&str> {
    b.as_ref().map(String::as_str)
}

impl Store {
    pub fn new() -> Store {
        Store::default()
    }

    /// Builds a store from registers loaded from disk (any order; covered ones are dropped),
    /// with arrival 0 (for a store only compared, never collected from).
    pub fn from_registers(regs: impl IntoIterator<Item = (Box<str>, Register)>) -> Store {
        Store::loaded(regs, 0)
    }

    /// Builds a store from registers loaded from disk, as having arrived at revision `arrival`
    /// (the loaded revision: a tombstone is collected only once every member was seen holding
    /// what this store holds at or after it).
    pub fn loaded(regs: impl IntoIterator<Item = (Box<str>, Register)>, arrival: u64) -> Store {
        let mut s = Store {
            regs: regs.into_iter().collect(),
            ..Store::default()
        };
        let keys: Vec<(Box<str>, Register)> =
            s.regs.iter().map(|(k, r)| (k.clone(), r.clone())).collect();
        for (k, r) in &keys {
            s.ix.add(k, r, arrival);
        }
        // Registers on disk were stored uncovered; re-check anyway so the invariant holds even
        // for a store written by an older version.
        for (k, r) in keys {
            if s.covered_by_ancestor(&k, &r) {
                s.remove(&k);
            }
        }
        s
    }

    /// Number of registers (visible or not).
    pub fn len(&self) -> usize {
        self.regs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.regs.is_empty()
    }

    pub fn register(&self, key: &str) -> Option<&Register> {
        self.regs.get(key)
    }

    /// The anti-entropy digest of the registers (see [`digest`]).
    pub fn digest(&self) -> &Digest {
        &self.ix.digest
    }

    /// Every register, in key order.
    pub fn registers(&self) -> impl Iterator<Item = (&str, &Register)> {
        self.regs.iter().map(|(k, r)| (&**k, r))
    }

    fn below<'s, 'k>(
        &'s self,
        key: &'k str,
    ) -> impl Iterator<Item = (&'s str, &'s Register)> + use<'s, 'k> {
        // Keys below `key` start with `key` and a NUL separator, the smallest byte, so they
        // directly follow `key` in order: no bound needs building.
        self.regs
            .range::<str, _>((Bound::Excluded(key), Bound::Unbounded))
            .map(|(k, r)| (&**k, r))
            .take_while(move |(k, _)| path::key_contains(key, k))
    }

    fn has_visible_below(&self, key: &str, now: u64) -> bool {
        self.below(key).any(|(_, r)| r.is_visible(now))
    }

    fn is_covered(&self, key: &str, reg: &Register) -> bool {
        self.regs
            .get(key)
            .is_some_and(|cur| cur.version >= reg.version)
            || self.covered_by_ancestor(key, reg)
    }

    fn covered_by_ancestor(&self, key: &str, reg: &Register) -> bool {
        path::key_ancestors(key).any(|a| self.regs.get(a).is_some_and(|r| r.version > reg.version))
    }

    /// Plans merging a batch of registers, a local write's or a peer's, in any order and with
    /// duplicates: **the merge rule**, the only place it is written. A register enters unless
    /// it is covered (by a register here or in the batch at its key that is at least as new,
    /// or at an ancestor that is newer, or by a tombstone collected here, which is listed in
    /// [`Plan::collected`]); one that enters drops the older registers below it. The plan is
    /// what merging the registers one at a time leaves, and it is applied as it is, by
    /// [`Store::apply`] to memory and by the storage to its log and database file, so both hold
    /// the same registers.
    pub fn plan(&self, mut batch: Registers) -> Plan {
        // In version order, a register can only be covered by one already taken, and only
        // drops taken ones.
        batch.sort_by(|a, b| a.1.version.cmp(&b.1.version).then_with(|| a.0.cmp(&b.0)));
        let mut taken: BTreeMap<Box<str>, Register> = BTreeMap::new();
        let mut removes = Vec::new();
        let mut collected = Vec::new();
        for (k, r) in batch {
            let covered_in_batch = taken.get(&k).is_some_and(|c| c.version >= r.version)
                || path::key_ancestors(&k)
                    .any(|a| taken.get(a).is_some_and(|c| c.version > r.version));
            if covered_in_batch || self.is_covered(&k, &r) {
                continue;
            }
            if self.covered_by_collected(&k, &r) {
                collected.push((k, r.version));
                continue;
            }
            // A taken ancestor of the same version (a local write's tree) listed already
            // everything here below `k` that `r` drops.
            let listed = path::key_ancestors(&k)
                .any(|a| taken.get(a).is_some_and(|c| c.version == r.version));
            if !listed {
                removes.extend(
                    self.below(&k)
                        .filter(|(_, old)| old.version < r.version)
                        .map(|(x, _)| Box::<str>::from(x)),
                );
            }
            let dropped: Vec<Box<str>> = taken
                .range::<str, _>((Bound::Excluded(&*k), Bound::Unbounded))
                .take_while(|(x, _)| path::key_contains(&k, x))
                .filter(|(_, c)| c.version < r.version)
                .map(|(x, _)| x.clone())
                .collect();
            for x in dropped {
                taken.remove(&x);
            }
            taken.insert(k, r);
        }
        let mut puts: Registers = taken.into_iter().collect();
        puts.sort_by(|a, b| a.1.version.cmp(&b.1.version).then_with(|| a.0.cmp(&b.0)));
        Plan {
            puts,
            removes,
            collected,
        }
    }

    /// Applies a plan made by [`Store::plan`] against this same state, at revision `arrival`:
    /// removes what it drops, then puts its registers. The plan is exact as long as nothing
    /// at, above or below its keys changed since it was made, which the writer guarantees
    /// (overlapping requests wait for each other).
    pub fn apply(&mut self, plan: Plan, arrival: u64) {
        for k in &plan.removes {
            self.remove(k);
        }
        for (k, r) in plan.puts {
            self.replace(k, r, arrival);
        }
    }

    /// Merges one register by [`Store::plan`]'s rule (the tests' way to build a store one
    /// register at a time; the node plans whole requests). Returns whether it entered (false:
    /// it was covered, or a duplicate).
    #[cfg(test)]
    pub fn merge(&mut self, key: &str, reg: Register) -> bool {
        let plan = self.plan(vec![(key.into(), reg)]);
        let entered = !plan.puts.is_empty();
        self.apply(plan, 0);
        entered
    }

    /// Puts `reg` at `key` in place of whatever register was there.
    fn replace(&mut self, key: Box<str>, reg: Register, arrival: u64) {
        match self.regs.get_mut(&*key) {
            Some(slot) => {
                self.ix.remove(&key, slot);
                self.ix.add(&key, &reg, arrival);
                *slot = reg;
            }
            None => {
                self.ix.add(&key, &reg, arrival);
                self.regs.insert(key, reg);
            }
        }
    }

    /// Removes a register and its index entries.
    pub fn remove(&mut self, key: &str) -> Option<Register> {
        let reg = self.regs.remove(key)?;
        self.ix.remove(key, &reg);
        Some(reg)
    }

    /// What `key` shows at `now`.
    pub fn lookup(&self, key: &str, now: u64) -> Lookup<'_> {
        if key.is_empty() {
            return Lookup::Dir;
        }
        match self.regs.get(key) {
            Some(r) if r.kind == Kind::Object => Lookup::Dir,
            Some(r) if r.is_visible(now) => {
                if self.has_visible_below(key, now) {
                    Lookup::Dir
                } else {
                    Lookup::Leaf(r)
                }
            }
            _ if self.has_visible_below(key, now) => Lookup::Dir,
            _ => Lookup::Missing,
        }
    }

    /// The entity tag of a path: the newest version at or below it (deletions included), or
    /// `None` if nothing is visible there.
    pub fn etag(&self, key: &str, now: u64) -> Option<Version> {
        if self.lookup(key, now) == Lookup::Missing {
            return None;
        }
        Some(self.newest_version(key))
    }

    /// The newest version at or below `key` (deletions included), whatever is visible there;
    /// [`Store::etag`] for a path known to exist.
    pub fn newest_version(&self, key: &str) -> Version {
        let own = self.regs.get(key).map(|r| r.version);
        let root = key.is_empty();
        let below = self
            .below(key)
            .filter(|(k, _)| !(root && is_internal(k)))
            .map(|(_, r)| r.version)
            .max();
        own.max(below).unwrap_or(Version::ZERO)
    }

    /// For a local write at `key`: the nearest ancestor that shows as a leaf, which the write
    /// must turn into a directory (an `Object` register in the same batch), so that removing the
    /// new key later leaves an empty directory instead of bringing the old leaf back.
    pub fn leaf_ancestor<'k>(&self, key: &'k str, now: u64) -> Option<&'k str> {
        for a in path::key_ancestors(key) {
            if let Some(r) = self.regs.get(a) {
                if r.kind == Kind::Object {
                    return None;
                }
                if r.is_visible(now) {
                    return (!self.has_visible_below(a, now)).then_some(a);
                }
            }
        }
        None
    }

    /// The registers a local write produces at `version`: the value's registers (or a deletion
    /// marker), preceded by an `Object` register for an ancestor that showed as a leaf. Takes
    /// the op, so its values move into the registers uncopied; gives back a put's JSON text
    /// (for its change event), `None` for a delete.
    pub fn plan_local(&self, op: Op, version: Version, now: u64) -> (Registers, Option<Box<str>>) {
        match op {
            Op::Put {
                path,
                tree,
                text,
                ttl_ms,
            } => {
                let mut out = Vec::with_capacity(tree.len() + 1);
                if let Some(a) = self.leaf_ancestor(path.key(), now) {
                    out.push((
                        a.into(),
                        Register {
                            kind: Kind::Object,
                            version,
                            expires: None,
                        },
                    ));
                }
                for (k, kind) in tree {
                    let expires = match kind {
                        // At least 1 ms from now, so never 0.
                        Kind::Leaf(_) => {
                            ttl_ms.and_then(|t| NonZeroU64::new(now.saturating_add(t.max(1))))
                        }
                        _ => None,
                    };
                    out.push((
                        k,
                        Register {
                            kind,
                            version,
                            expires,
                        },
                    ));
                }
                (out, Some(text))
            }
            Op::Delete { path } => (
                vec![(
                    path.key().into(),
                    Register {
                        kind: Kind::Deleted,
                        version,
                        expires: None,
                    },
                )],
                None,
            ),
        }
    }

    /// Writes the JSON of what `key` shows into `out`; false if nothing is there.
    pub fn render(&self, key: &str, now: u64, out: &mut String) -> bool {
        match self.lookup(key, now) {
            Lookup::Missing => return false,
            Lookup::Leaf(r) => {
                out.push_str(r.leaf().unwrap_or("null"));
                return true;
            }
            Lookup::Dir => {}
        }
        let prefix_len = if key.is_empty() { 0 } else { key.len() + 1 };
        let root = key.is_empty();
        let mut items = self
            .below(key)
            .filter(|(k, r)| r.is_visible(now) && !(root && is_internal(k)))
            .peekable();
        // Open directories below `key`, as relative keys; `first[i]` is whether level i has
        // had no member written yet.
        let mut open: Vec<&str> = Vec::new();
        let mut first: Vec<bool> = vec![true];
        out.push('{');
        while let Some((k, reg)) = items.next() {
            let rel = &k[prefix_len..];
            // Close directories that do not contain this key.
            while let Some(top) = open.last() {
                if path::key_contains(top, rel) {
                    break;
                }
                open.pop();
                first.pop();
                out.push('}');
            }
            // Open the implied directories between the innermost open one and this key.
            let base = open.last().map_or(0, |t| t.len() + 1);
            let mut seg_start = base;
            for (i, b) in rel.bytes().enumerate().skip(base) {
                if b == 0 {
                    open_member(out, &mut first, &rel[seg_start..i]);
                    out.push('{');
                    open.push(&rel[..i]);
                    first.push(true);
                    seg_start = i + 1;
                }
            }
            let name = &rel[seg_start..];
            let is_dir = reg.kind == Kind::Object
                || items
                    .peek()
                    .is_some_and(|(next, _)| path::key_contains(k, next));
            open_member(out, &mut first, name);
            if is_dir {
                out.push('{');
                open.push(rel);
                first.push(true);
            } else {
                out.push_str(reg.leaf().unwrap_or("null"));
            }
        }
        for _ in 0..open.len() + 1 {
            out.push('}');
        }
        true
    }

    /// The visible children of a directory: (name, is_directory), in key order. `None` if the
    /// path is missing, `Some(Err(()))` if it is a leaf.
    pub fn children(&self, key: &str, now: u64) -> Option<Result<Vec<(String, bool)>, ()>> {
        match self.lookup(key, now) {
            Lookup::Missing => return None,
            Lookup::Leaf(_) => return Some(Err(())),
            Lookup::Dir => {}
        }
        let prefix = if key.is_empty() {
            String::new()
        } else {
            format!("{key}\0")
        };
        let end = below_bounds(key).1;
        let mut lo = Bound::Included(prefix.clone());
        let mut out = Vec::new();
        loop {
            let next = self
                .regs
                .range::<str, _>((as_str(&lo), as_str(&end)))
                .find(|(_, r)| r.is_visible(now));
            let Some((k, r)) = next else { break };
            let rel = &k[prefix.len()..];
            let child = rel.split('\0').next().unwrap_or(rel);
            let child_key = format!("{prefix}{child}");
            if key.is_empty() && child == INTERNAL {
                lo = Bound::Excluded(format!("{child_key}\x01"));
                continue;
            }
            let is_dir = rel.len() > child.len()
                || r.kind == Kind::Object
                || self.has_visible_below(&child_key, now);
            out.push((child.to_owned(), is_dir));
            lo = Bound::Excluded(format!("{child_key}\x01"));
        }
        Some(Ok(out))
    }

    /// Every visible leaf at or below `key` (for a watch's initial state): key, JSON, version.
    pub fn leaves(&self, key: &str, now: u64) -> Vec<(&str, &str, Version)> {
        let own = self.regs.get_key_value(key).map(|(k, r)| (&**k, r));
        own.into_iter()
            .chain(self.below(key))
            .filter(|(k, r)| {
                r.is_visible(now) && r.leaf().is_some() && !self.has_visible_below(k, now)
            })
            .map(|(k, r)| (k, r.leaf().unwrap_or("null"), r.version))
            .collect()
    }
}

fn open_member(out: &mut String, first: &mut [bool], name: &str) {
    let level = first.len() - 1;
    if !first[level] {
        out.push(',');
    }
    first[level] = false;
    push_json_string(out, name);
    out.push(':');
}

/// Appends `s` as a JSON string literal.
pub fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests;
