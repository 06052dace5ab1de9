//! The two sides of a round: [`respond`], the responder's answer to one request from its store
//! alone, and [`Session`], the requester's state from one request to the next, with [`plan`],
//! which picks how far to descend. Knows the messages as values only, not their bytes.

use super::wire::{bits_len_of, register_len};
use super::{
    bucket, element_of, key_hash, wire, Error, Reply, Request, Root, BUCKETS, LEAF_LEVEL,
    MAX_BUCKETS_PER_REQUEST, MAX_ELEMENTS_PER_REQUEST,
};
use crate::store::register::Register;
use crate::store::Store;

/// Answers one request from `store` alone. The registers of an entries reply stop before the
/// bucket that would take the encoded reply past `budget_bytes` (the first bucket is always
/// answered); other replies are small whatever the budget. Fails only on a request that breaks
/// the shape documented on [`Request`] (never one from [`Request::decode`] or a [`Session`]).
///
/// Cost: a compare folds at most 2^16 leaves; an entries request scans every key of the store
/// once (hashing each), because the store keeps no per-bucket index.
pub fn respond(store: &Store, req: &Request, budget_bytes: usize) -> Result<Reply, Error> {
    req.validate()?;
    Ok(match req {
        Request::Root(_) => Reply::Root(store.digest().root()),
        Request::Compare {
            salt,
            parent_level,
            level,
            parents,
            hashes,
        } => {
            let shift = 2 * u32::from(level - parent_level);
            let d = store.digest();
            let children = parents
                .iter()
                .flat_map(|&p| (0..1u64 << shift).map(move |j| (u64::from(p) << shift) | j));
            let differ = children
                .zip(hashes)
                .map(|(c, &h)| wire(*salt, d.node(*level, c)) != h)
                .collect();
            Reply::Differ { differ }
        }
        Request::Entries {
            salt,
            buckets,
            elements,
        } => entries_reply(store, *salt, buckets, elements, budget_bytes),
    })
}

/// The registers of `store` in `buckets` (strictly increasing), grouped by bucket in that
/// order, with their salted elements: one scan of the store.
fn scan<'s>(
    store: &'s Store,
    salt: u64,
    buckets: &[u16],
) -> Vec<Vec<(u32, &'s str, &'s Register)>> {
    let mut found = vec![Vec::new(); buckets.len()];
    if buckets.is_empty() {
        return found;
    }
    let mut marked = vec![0u64; BUCKETS / 64];
    for &b in buckets {
        marked[usize::from(b / 64)] |= 1 << (b % 64);
    }
    for (k, r) in store.registers() {
        let kh = key_hash(k);
        let b = bucket(kh);
        if marked[usize::from(b / 64)] & (1 << (b % 64)) == 0 {
            continue;
        }
        if let Ok(i) = buckets.binary_search(&b) {
            found[i].push((wire(salt, element_of(kh, r)), k, r));
        }
    }
    for f in &mut found {
        f.sort_unstable_by_key(|e| e.0);
    }
    found
}

fn entries_reply(
    store: &Store,
    salt: u64,
    buckets: &[u16],
    elements: &[Vec<u32>],
    budget: usize,
) -> Reply {
    let found = scan(store, salt, buckets);
    let n: usize = elements.iter().map(Vec::len).sum();
    // Everything but the registers, at its largest: tag, register count, the wanted bitmap and
    // an incomplete list of every bucket.
    let fixed = 1 + 10 + bits_len_of(n) + 10 + 3 * buckets.len();
    let room = budget.saturating_sub(fixed);
    let mut registers = Vec::new();
    let mut wanted = Vec::with_capacity(n);
    let mut incomplete = Vec::new();
    let mut used = 0;
    for (i, (theirs, mine)) in elements.iter().zip(found).enumerate() {
        let mut sorted = theirs.clone();
        sorted.sort_unstable();
        let lacking: Vec<_> = mine
            .iter()
            .filter(|m| sorted.binary_search(&m.0).is_err())
            .collect();
        let size: usize = lacking.iter().map(|m| register_len(m.1, m.2)).sum();
        if !incomplete.is_empty() || (i > 0 && used + size > room) {
            incomplete.push(buckets[i]);
            wanted.extend(std::iter::repeat_n(false, theirs.len()));
            continue;
        }
        used += size;
        registers.extend(lacking.iter().map(|m| (Box::<str>::from(m.1), m.2.clone())));
        wanted.extend(
            theirs
                .iter()
                .map(|w| mine.binary_search_by_key(w, |m| m.0).is_err()),
        );
    }
    Reply::Entries {
        registers,
        wanted,
        incomplete,
    }
}

/// What one step of a session yields.
#[derive(Debug, Default)]
pub struct Step {
    /// Registers the responder holds and the requester lacks: merge them locally (through the
    /// usual durable write path). The session does not need them merged before its next step.
    pub merge: Vec<(Box<str>, Register)>,
    /// Registers of the requester's that the responder lacks: send them to the responder to
    /// merge ([`encode_registers`](super::encode_registers)). At most the session's budget,
    /// unless one bucket is larger.
    pub push: Vec<(Box<str>, Register)>,
    /// The next request to send, or `None`: the round is over.
    pub next: Option<Request>,
}

/// The requester's side of one round. Each step takes the reply to the last request and the
/// local store as it is now (it may have changed in between: the round stays correct, only
/// some differences may wait for the next round).
#[derive(Debug)]
pub struct Session {
    /// Salts every truncated hash of this round; the caller picks a new one each round.
    salt: u64,
    /// Bound on the bytes of registers one step pushes.
    budget: usize,
    /// Buckets to name in the next leaf-stage request: sized after the last reply so that
    /// buckets the responder had no room for are not named again and again.
    chunk: usize,
    /// What the last request was, so the reply can be read.
    stage: Stage,
}

#[derive(Debug)]
enum Stage {
    /// Sent our root.
    Root,
    /// Sent the hashes of the children at `level` of `parents` (nodes at `parent_level`).
    Compare {
        parent_level: u8,
        level: u8,
        parents: Vec<u32>,
    },
    /// Sent our elements in `sent` (bucket and the keys of the elements, in the order sent);
    /// `todo` holds the differing buckets not asked yet, largest first.
    Entries {
        sent: Vec<(u16, Vec<Box<str>>)>,
        todo: Vec<u16>,
    },
    /// The round is over.
    Done,
}

/// Estimated bytes per hash sent in the descent: the hash, its bit in the reply and a share of
/// its parent's index.
const HASH_BYTES: f64 = 4.5;
/// Estimated bytes per bucket named in the leaf stage, beside its elements: index and count.
const BUCKET_BYTES: f64 = 2.0;
/// Bytes per element of the requester's in the leaf stage: the hash and its bit in the reply.
const ELEMENT_BYTES: f64 = 4.125;
/// What one more round trip is worth in bytes, so equal byte counts favour fewer messages.
const ROUND_TRIP_BYTES: f64 = 256.0;

/// What to do next from `nodes` differing nodes at `level` thought to hold `diffs` differing
/// buckets, with `per_bucket` of our elements per bucket: `(estimated bytes, 0)` for the leaf
/// stage over every bucket below them, `(estimated bytes, k)` to compare the nodes `k` levels
/// down. Explores every sequence of jumps (at most 2^8).
pub(super) fn plan(level: u8, nodes: f64, diffs: f64, per_bucket: f64) -> (f64, u8) {
    let below = nodes * 4f64.powi(i32::from(LEAF_LEVEL - level));
    let messages = (below / MAX_BUCKETS_PER_REQUEST as f64).ceil();
    let leaf = below * (BUCKET_BYTES + ELEMENT_BYTES * per_bucket) + ROUND_TRIP_BYTES * messages;
    let mut best = (leaf, 0);
    for k in 1..=LEAF_LEVEL - level {
        let sent = nodes * 4f64.powi(i32::from(k));
        // Differing buckets spread over the sent nodes: the expected number hit.
        let hit = sent * (1.0 - (-diffs / sent).exp());
        let cost = sent * HASH_BYTES + ROUND_TRIP_BYTES + plan(level + k, hit, diffs, per_bucket).0;
        if cost < best.0 {
            best = (cost, k);
        }
    }
    best
}

impl Session {
    /// Starts a round from `local`: returns the session and its first request, or `None` when
    /// there is nothing to do (`theirs`, the responder's root if already known, equals ours).
    /// Without `theirs` the first request is our root. `salt` must differ from round to round
    /// (any random `u64`); `budget_bytes` bounds the registers of one step's push.
    pub fn start(
        local: &Store,
        salt: u64,
        budget_bytes: usize,
        theirs: Option<Root>,
    ) -> Option<(Session, Request)> {
        let mut s = Session {
            salt,
            budget: budget_bytes,
            chunk: MAX_BUCKETS_PER_REQUEST,
            stage: Stage::Done,
        };
        let req = match theirs {
            None => {
                s.stage = Stage::Root;
                Request::Root(local.digest().root())
            }
            Some(r) => s.after_root(local, r)?,
        };
        Some((s, req))
    }

    /// True once the round is over (the last step returned no request, or an error).
    pub fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    /// Takes the reply to the last request. An error (a reply of the wrong shape, or a step
    /// after the end) ends the round; nothing is lost, the next round starts over.
    pub fn step(&mut self, local: &Store, reply: Reply) -> Result<Step, Error> {
        let stage = std::mem::replace(&mut self.stage, Stage::Done);
        let mut merge = Vec::new();
        let mut push = Vec::new();
        let next = match (stage, reply) {
            (Stage::Root, Reply::Root(theirs)) => self.after_root(local, theirs),
            (
                Stage::Compare {
                    parent_level,
                    level,
                    parents,
                },
                Reply::Differ { differ },
            ) => self.after_compare(local, parent_level, level, &parents, &differ)?,
            (
                Stage::Entries { sent, mut todo },
                Reply::Entries {
                    registers,
                    wanted,
                    incomplete,
                },
            ) => {
                push = pushes(local, &sent, &wanted, &incomplete)?;
                merge = registers;
                // Ask for a little more than was answered, or twice as much if all was.
                let answered = sent.len() - incomplete.len();
                self.chunk = if incomplete.is_empty() {
                    self.chunk.saturating_mul(2)
                } else {
                    answered + answered / 8
                }
                .clamp(1, MAX_BUCKETS_PER_REQUEST);
                todo.extend(incomplete.iter().rev());
                self.entries(local, todo)
            }
            (Stage::Done, _) => return Err(Error::Finished),
            _ => return Err(Error::Unexpected("wrong kind of reply")),
        };
        Ok(Step { merge, push, next })
    }

    fn after_root(&mut self, local: &Store, theirs: Root) -> Option<Request> {
        let d = local.digest();
        let mine = d.root();
        if mine == theirs {
            return None;
        }
        if mine.count == 0 || theirs.count == 0 {
            // One side is empty: every bucket holding anything differs, skip the descent.
            let todo = (0..=u16::MAX)
                .rev()
                .filter(|&b| mine.count == 0 || d.leaf(b) != 0)
                .collect();
            return self.entries(local, todo);
        }
        let diffs = mine.count.abs_diff(theirs.count).clamp(1, BUCKETS as u64) as f64;
        self.descend(local, 0, vec![0], diffs)
    }

    fn after_compare(
        &mut self,
        local: &Store,
        parent_level: u8,
        level: u8,
        parents: &[u32],
        differ: &[bool],
    ) -> Result<Option<Request>, Error> {
        let shift = 2 * u32::from(level - parent_level);
        if differ.len() != parents.len() << shift {
            return Err(Error::Unexpected("one flag per hash was expected"));
        }
        let children = parents
            .iter()
            .flat_map(|&p| (0..1u32 << shift).map(move |j| (p << shift) | j));
        let nodes: Vec<u32> = children
            .zip(differ)
            .filter(|(_, &d)| d)
            .map(|(c, _)| c)
            .collect();
        if nodes.is_empty() {
            return Ok(None);
        }
        // Poisson estimate of the differing buckets below the sent nodes from the fraction that
        // differ (when all do, as if half a node had not).
        let sent = differ.len() as f64;
        let found = (nodes.len() as f64).min(sent - 0.5);
        let diffs = -sent * (1.0 - found / sent).ln();
        Ok(self.descend(local, level, nodes, diffs))
    }

    /// The next request from the differing `nodes` at `level`: a compare further down or the
    /// leaf stage over every bucket below them, whichever [`plan`] finds cheaper.
    fn descend(
        &mut self,
        local: &Store,
        level: u8,
        nodes: Vec<u32>,
        diffs: f64,
    ) -> Option<Request> {
        let d = local.digest();
        let shift_to_leaves = 2 * u32::from(LEAF_LEVEL - level);
        let below = (nodes.len() as f64) * (1u64 << shift_to_leaves) as f64;
        let per_bucket = d.count() as f64 / BUCKETS as f64;
        let (_, k) = plan(
            level,
            nodes.len() as f64,
            diffs.clamp(nodes.len() as f64, below),
            per_bucket,
        );
        if k == 0 {
            let todo = nodes
                .iter()
                .rev()
                .flat_map(|&n| {
                    let lo = n << shift_to_leaves;
                    (lo..lo + (1 << shift_to_leaves)).rev()
                })
                .map(|b| b as u16)
                .collect();
            return self.entries(local, todo);
        }
        let child_level = level + k;
        let shift = 2 * u32::from(k);
        let hashes = nodes
            .iter()
            .flat_map(|&p| (0..1u64 << shift).map(move |j| (u64::from(p) << shift) | j))
            .map(|c| wire(self.salt, d.node(child_level, c)))
            .collect();
        self.stage = Stage::Compare {
            parent_level: level,
            level: child_level,
            parents: nodes.clone(),
        };
        Some(Request::Compare {
            salt: self.salt,
            parent_level: level,
            level: child_level,
            parents: nodes,
            hashes,
        })
    }

    /// The next leaf-stage request: the smallest buckets of `todo` (largest first) up to the
    /// per-request limits, with our elements there.
    fn entries(&mut self, local: &Store, mut todo: Vec<u16>) -> Option<Request> {
        if todo.is_empty() {
            return None;
        }
        let take = todo.len().min(self.chunk);
        let mut buckets: Vec<u16> = todo.drain(todo.len() - take..).rev().collect();
        let mut found = scan(local, self.salt, &buckets);
        // Keep within the element limit and the push budget (at least one bucket).
        let (mut n, mut count, mut bytes) = (0, 0, 0);
        for f in &found {
            let size: usize = f.iter().map(|e| register_len(e.1, e.2)).sum();
            if n > 0 && (count + f.len() > MAX_ELEMENTS_PER_REQUEST || bytes + size > self.budget) {
                break;
            }
            (n, count, bytes) = (n + 1, count + f.len(), bytes + size);
        }
        todo.extend(buckets[n..].iter().rev());
        buckets.truncate(n);
        found.truncate(n);
        let elements = found
            .iter()
            .map(|f| f.iter().map(|e| e.0).collect())
            .collect();
        let sent = buckets
            .iter()
            .zip(&found)
            .map(|(&b, f)| (b, f.iter().map(|e| Box::<str>::from(e.1)).collect()))
            .collect();
        self.stage = Stage::Entries { sent, todo };
        Some(Request::Entries {
            salt: self.salt,
            buckets,
            elements,
        })
    }
}

/// The registers to push for an entries reply: our current register at the key of each wanted
/// element (a newer one if it changed since; none if it is gone).
fn pushes(
    local: &Store,
    sent: &[(u16, Vec<Box<str>>)],
    wanted: &[bool],
    incomplete: &[u16],
) -> Result<Vec<(Box<str>, Register)>, Error> {
    if wanted.len() != sent.iter().map(|s| s.1.len()).sum::<usize>() {
        return Err(Error::Unexpected("one flag per element was expected"));
    }
    if !sent.is_empty() && incomplete.len() >= sent.len() {
        return Err(Error::Unexpected("no bucket was answered"));
    }
    let mut inc = incomplete.iter().peekable();
    let mut flags = wanted.iter();
    let mut out = Vec::new();
    for (b, keys) in sent {
        let skip = inc.next_if(|&&i| i == *b).is_some();
        for (key, &w) in keys.iter().zip(flags.by_ref()) {
            if w && !skip {
                if let Some(r) = local.register(key) {
                    out.push((key.clone(), r.clone()));
                }
            }
        }
    }
    if inc.next().is_some() {
        return Err(Error::Unexpected("incomplete bucket was not asked for"));
    }
    Ok(out)
}
