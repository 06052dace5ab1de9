//! Anti-entropy digests: a summary of a store's registers kept up to date on every change, and the
//! reconciliation protocol that uses it so two replicas exchange only the registers they do not
//! share. Pure: no I/O, no clock, no randomness (the salt is a parameter); knows nothing of HTTP,
//! peers or tasks, and of the merge rule only that merging what the other side sends is safe.
//!
//! # The digest
//!
//! Every register is an *element*: a 64-bit hash of its key, version and kind ([`element`]). The
//! value is not hashed: two registers at the same key with the same version are identical. The
//! hash is FNV-1a 64 finished with the splitmix64 mixer ([`key_hash`]), written out here so it is
//! the same on every machine, process and Rust version. Elements fall into 2^16 *buckets* by the
//! top 16 bits of their key hash, and a bucket's *leaf* is the XOR of its elements, so adding or
//! removing a register costs one XOR (plus a count and a sum for the root): 512 KiB per store,
//! nothing per key. [`Store`] keeps its [`Digest`] on every insert and removal.
//!
//! Above the leaves sits a Merkle tree of fan-out 4: the root is level 0, level `l` has 4^l nodes,
//! and node `i` of level `l` is the XOR of the leaves `i·4^(8−l) .. (i+1)·4^(8−l)`, so the leaves
//! are level 8 ([`LEAF_LEVEL`]). The tree is never stored: one message names each leaf at most
//! once, so folding on demand ([`Digest::node`]) costs at most 2^16 XORs per message.
//!
//! # The protocol
//!
//! A requester A drives a [`Session`]; the responder B answers every [`Request`] with [`respond`]
//! from its current store alone and keeps nothing between requests. A round:
//!
//! 1. *Roots.* A sends its [`Root`] (register count and a 64-bit hash of all elements); B answers
//!    with its own. Equal roots end the round: 12 bytes each way for a store of 100,000 keys.
//! 2. *Descent.* A sends the hashes of the children (a few levels down) of the nodes known to
//!    differ, in order; B answers with one bit per hash: differs or not. A picks each next depth
//!    by estimating the bytes still to spend (see `plan`), from the count difference at first and
//!    then from the fraction of nodes found to differ.
//! 3. *Leaf stage.* A sends, for a chunk of the differing buckets, the element hashes it holds
//!    there; B answers with its registers there whose element A lacks, and one bit per element of
//!    A's that B lacks. A merges the former and pushes the latter to B. When either side is empty,
//!    A skips the descent and goes straight to this stage.
//!
//! Hashes on the wire are 32-bit truncations salted per round (`wire`), so a truncation collision,
//! which hides a difference for one round, is not repeated in the next. When roots differ but the
//! descent finds nothing (such a collision, or writes that landed between the messages) the round
//! just ends and the next one, with a new salt, tries again.
//!
//! Every message is bounded. A compare request holds at most 2^16 hashes (under 320 KiB), its
//! reply one bit each. A leaf-stage request names at most [`MAX_BUCKETS_PER_REQUEST`] buckets
//! and [`MAX_ELEMENTS_PER_REQUEST`] elements (under 300 KiB), and only as many buckets as hold
//! registers of A's worth the session's byte budget, which bounds A's push. Its reply stops
//! before the bucket that would take it past the responder's budget and lists the buckets it
//! left out as `incomplete`, which A asks for again (asking next for a little more than was
//! answered). A bucket is always answered whole, and the first one of a request always, so only
//! a single bucket larger than the budget makes a reply or push exceed it. A full sync of
//! 100,000 keys of 256 bytes is 30 messages each way with a 1 MiB budget.
//!
//! # Why the digest traffic is bounded by the difference
//!
//! With `d` differing buckets, the descent sends about 4 hashes (4.5 bytes each with their share
//! of bitmaps and node indices) per differing node per level, and the levels above the one with
//! about `d` nodes are skipped in one jump: roughly `18·d·log4(65536/d)` bytes. The leaf stage
//! then sends 4 bytes per element of A's in each differing bucket (`n/65536` on average for `n`
//! registers, more in a bucket known to differ) and one bit back. Only that last term depends on
//! the store's size: 1,000 differing keys among 100,000 cost 60,585 bytes of digest traffic in
//! 6 round trips beside the registers themselves (see the traffic test). Equal stores cost one
//! round trip of 12 bytes each way.
//!
//! A key held at different versions on both sides crosses both ways in the leaf stage (each side
//! lacks the other's element); merging drops the older copy. Avoiding that would take versions on
//! the wire for every element (20 bytes instead of 4).
//!
//! # Wire format
//!
//! Integers are little-endian; counts and lengths are LEB128 varints (shortest form only); a
//! strictly increasing index list is its count then, per index, the gap to the previous one
//! minus one; flags are a count then bitmap bytes (least significant bit first, unused bits 0).
//!
//! | message | bytes |
//! |---|---|
//! | `Request::Root`, `Reply::Root` | `1`, count, hash `u64` |
//! | `Request::Compare` | `2`, salt `u64`, parent level `u8`, level `u8`, parents (index list), one `u32` hash per child |
//! | `Request::Entries` | `3`, salt `u64`, bucket count, per bucket: gap, element count, `u32` elements |
//! | `Reply::Differ` | `2`, flags |
//! | `Reply::Entries` | `3`, registers ([`encode_registers`]), wanted flags, incomplete (index list) |
//!
//! A register is framed as key length, key, register length, [`Register::encode`] bytes.

use std::fmt;

use super::path;
use super::register::{DecodeError, Kind, Register};
use super::Store;

/// Bits of the key hash that pick a bucket.
pub const BUCKET_BITS: u32 = 16;
/// Number of buckets, the leaves of the tree.
pub const BUCKETS: usize = 1 << BUCKET_BITS;
/// The level of the leaves: the root is level 0 and each level has 4 times the nodes above it.
pub const LEAF_LEVEL: u8 = 8;
/// Most buckets one leaf-stage request names.
pub const MAX_BUCKETS_PER_REQUEST: usize = 4096;
/// Most element hashes one leaf-stage request carries (256 KiB of hashes).
pub const MAX_ELEMENTS_PER_REQUEST: usize = 1 << 16;
/// A byte budget that suits both a reply (in [`respond`]) and a push (in [`Session::start`]).
pub const DEFAULT_BUDGET: usize = 4 << 20;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// 2^64 / golden ratio: splitmix64's increment, added before each mix so zero words still move.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The splitmix64 finaliser: a bijection of `u64` in which every output bit depends on every
/// input bit. Used to finish FNV (whose top bits alone are poor) and to salt truncations.
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The stable hash of a key: FNV-1a 64 over its UTF-8 bytes, then [`mix64`]. Its top 16 bits
/// are the key's bucket.
pub fn key_hash(key: &str) -> u64 {
    let h = key.as_bytes().iter().fold(FNV_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    });
    mix64(h)
}

/// The element hash of a register at `key`: the key hash chained through [`mix64`] with the
/// version (millis, counter, node) and the kind (leaf 1, object 2, deleted 3).
pub fn element(key: &str, reg: &Register) -> u64 {
    element_of(key_hash(key), reg)
}

fn element_of(key_hash: u64, reg: &Register) -> u64 {
    let tag: u64 = match reg.kind {
        Kind::Leaf(_) => 1,
        Kind::Object => 2,
        Kind::Deleted => 3,
    };
    let v = reg.version;
    [v.millis, (u64::from(v.counter) << 8) | tag, v.node]
        .iter()
        .fold(key_hash, |h, &w| mix64(h.wrapping_add(GOLDEN) ^ w))
}

/// The bucket of a key hash: its top [`BUCKET_BITS`] bits.
pub fn bucket(key_hash: u64) -> u16 {
    // The shift leaves exactly 16 bits.
    (key_hash >> (64 - BUCKET_BITS)) as u16
}

/// A 64-bit hash as sent on the wire: 32 bits of it, salted by the round.
fn wire(salt: u64, h: u64) -> u32 {
    (mix64(h ^ salt) >> 32) as u32
}

/// A store's summary: one leaf per bucket plus the count, XOR and sum of all elements.
#[derive(Clone, PartialEq, Eq)]
pub struct Digest {
    /// The XOR of the elements in each bucket, indexed by bucket ([`BUCKETS`] of them).
    leaves: Box<[u64]>,
    /// Number of elements (registers).
    count: u64,
    /// XOR of every element: the tree's root, kept so a root costs no fold.
    xor: u64,
    /// Wrapping sum of every element: folded into the root hash so that it does not rest on XOR
    /// alone.
    sum: u64,
}

impl Default for Digest {
    fn default() -> Digest {
        Digest {
            leaves: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            xor: 0,
            sum: 0,
        }
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Digest")
            .field("root", &self.root())
            .finish_non_exhaustive()
    }
}

impl Digest {
    /// The digest of an empty store.
    pub fn new() -> Digest {
        Digest::default()
    }

    /// The digest of some registers, built from scratch.
    pub fn of<'a>(regs: impl IntoIterator<Item = (&'a str, &'a Register)>) -> Digest {
        let mut d = Digest::new();
        for (k, r) in regs {
            d.insert(k, r);
        }
        d
    }

    /// Adds a register that entered the store. Leaves and the XOR are toggles; the count and sum
    /// need to know the direction, hence a pair of methods rather than one `toggle`.
    pub fn insert(&mut self, key: &str, reg: &Register) {
        let kh = key_hash(key);
        let e = element_of(kh, reg);
        self.leaves[usize::from(bucket(kh))] ^= e;
        self.count += 1;
        self.xor ^= e;
        self.sum = self.sum.wrapping_add(e);
    }

    /// Removes a register that left the store (it must have been inserted).
    pub fn remove(&mut self, key: &str, reg: &Register) {
        let kh = key_hash(key);
        let e = element_of(kh, reg);
        self.leaves[usize::from(bucket(kh))] ^= e;
        self.count = self.count.saturating_sub(1);
        self.xor ^= e;
        self.sum = self.sum.wrapping_sub(e);
    }

    /// Number of registers summarised.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The root: what the first message of a round compares.
    pub fn root(&self) -> Root {
        Root {
            count: self.count,
            hash: mix64(self.xor) ^ self.sum,
        }
    }

    /// The leaf of one bucket: the XOR of its elements.
    pub fn leaf(&self, bucket: u16) -> u64 {
        self.leaves[usize::from(bucket)]
    }

    /// The hash of node `index` at `level` of the tree (see the module doc): the XOR of its
    /// leaves. Nodes outside the tree hash to 0.
    pub fn node(&self, level: u8, index: u64) -> u64 {
        let Some(shift) = LEAF_LEVEL.checked_sub(level) else {
            return 0;
        };
        let width = 1u64 << (2 * u32::from(shift));
        let range = index.checked_mul(width).and_then(|lo| {
            let hi = lo.checked_add(width)?;
            Some(usize::try_from(lo).ok()?..usize::try_from(hi).ok()?)
        });
        range
            .and_then(|r| self.leaves.get(r))
            .map_or(0, |ls| ls.iter().fold(0, |a, &l| a ^ l))
    }
}

/// The root of a digest: enough to tell two stores equal (or not) in one message.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Root {
    /// Number of registers.
    pub count: u64,
    /// A 64-bit hash of every element (XOR and sum combined).
    pub hash: u64,
}

impl Root {
    /// Appends the encoding: count as a varint, hash as 8 bytes little-endian.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, self.count);
        out.extend_from_slice(&self.hash.to_le_bytes());
    }

    /// Decodes what [`Root::encode`] wrote, and nothing more.
    pub fn decode(b: &[u8]) -> Result<Root, Error> {
        let mut r = Reader(b);
        let root = r.root()?;
        r.finish()?;
        Ok(root)
    }

    /// Length of the encoding in bytes.
    pub fn encoded_len(&self) -> usize {
        varint_len(self.count) + 8
    }
}

/// A message from the requester (a [`Session`]) to the responder ([`respond`]).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Request {
    /// The requester's root; the reply is the responder's ([`Reply::Root`]).
    Root(Root),
    /// Salted hashes of the nodes at `level` below each of `parents` (nodes at `parent_level`),
    /// parent after parent, children in index order: `4^(level − parent_level)` per parent. The
    /// reply says which differ ([`Reply::Differ`]).
    Compare {
        /// The round's salt of every truncated hash.
        salt: u64,
        /// Level of `parents`, below `level`.
        parent_level: u8,
        /// Level of the hashed nodes, at most [`LEAF_LEVEL`].
        level: u8,
        /// Node indices at `parent_level`, strictly increasing.
        parents: Vec<u32>,
        /// The requester's salted hashes of the children of `parents`, in order.
        hashes: Vec<u32>,
    },
    /// The requester's salted element hashes in some buckets; the reply carries what either side
    /// lacks there ([`Reply::Entries`]).
    Entries {
        /// The round's salt of every truncated hash.
        salt: u64,
        /// Buckets, strictly increasing.
        buckets: Vec<u16>,
        /// The requester's salted element hashes in each bucket (ascending within a bucket).
        elements: Vec<Vec<u32>>,
    },
}

/// A message from the responder to the requester, answering the last [`Request`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Reply {
    /// The responder's root.
    Root(Root),
    /// One flag per hash of a [`Request::Compare`], in order: true where the responder's node
    /// differs.
    Differ {
        /// Whether each hash of the request differs from the responder's.
        differ: Vec<bool>,
    },
    /// The answer to [`Request::Entries`].
    Entries {
        /// The responder's registers in the answered buckets whose element the requester lacks.
        registers: Vec<(Box<str>, Register)>,
        /// One flag per element of the request, in order: true where the responder lacks it.
        /// False throughout the `incomplete` buckets.
        wanted: Vec<bool>,
        /// Buckets of the request left out to keep within the byte budget (strictly
        /// increasing, never the first): ask again.
        incomplete: Vec<u16>,
    },
}

/// Why a message could not be decoded, a request answered, or a reply taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("message is truncated: expected {0}")]
    Truncated(&'static str),
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    #[error(transparent)]
    Register(#[from] DecodeError),
    #[error("reply does not answer the request: {0}")]
    Unexpected(&'static str),
    #[error("the session has already ended")]
    Finished,
}

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
    /// merge ([`encode_registers`]). At most the session's budget, unless one bucket is larger.
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
fn plan(level: u8, nodes: f64, diffs: f64, per_bucket: f64) -> (f64, u8) {
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

// The wire format (see the module doc): a tag byte, shared by the kinds of both directions.

const TAG_ROOT: u8 = 1;
const TAG_COMPARE: u8 = 2;
const TAG_ENTRIES: u8 = 3;
/// Encoded length of a register's head (see [`Register::encode`]): tag, millis, counter, node,
/// expiry.
const REGISTER_HEAD: usize = 1 + 8 + 4 + 8 + 8;
/// Fewest bytes a framed register can take: key length, register length, head.
const MIN_FRAMED_REGISTER: usize = 2 + REGISTER_HEAD;

impl Request {
    /// Appends the encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Request::Root(root) => {
                out.push(TAG_ROOT);
                root.encode(out);
            }
            Request::Compare {
                salt,
                parent_level,
                level,
                parents,
                hashes,
            } => {
                out.push(TAG_COMPARE);
                out.extend_from_slice(&salt.to_le_bytes());
                out.push(*parent_level);
                out.push(*level);
                put_varint(out, parents.len() as u64);
                put_gaps(out, parents.iter().map(|&p| u64::from(p)));
                for h in hashes {
                    out.extend_from_slice(&h.to_le_bytes());
                }
            }
            Request::Entries {
                salt,
                buckets,
                elements,
            } => {
                out.push(TAG_ENTRIES);
                out.extend_from_slice(&salt.to_le_bytes());
                put_varint(out, buckets.len() as u64);
                let mut prev = None;
                for (&b, els) in buckets.iter().zip(elements) {
                    put_varint(out, gap(prev, u64::from(b)));
                    prev = Some(u64::from(b));
                    put_varint(out, els.len() as u64);
                    for e in els {
                        out.extend_from_slice(&e.to_le_bytes());
                    }
                }
            }
        }
    }

    /// Length of the encoding in bytes: the traffic this request costs.
    pub fn encoded_len(&self) -> usize {
        match self {
            Request::Root(root) => 1 + root.encoded_len(),
            Request::Compare {
                parents, hashes, ..
            } => {
                1 + 8
                    + 2
                    + varint_len(parents.len() as u64)
                    + gaps_len(parents.iter().map(|&p| u64::from(p)))
                    + 4 * hashes.len()
            }
            Request::Entries {
                buckets, elements, ..
            } => {
                let mut prev = None;
                let mut n = 1 + 8 + varint_len(buckets.len() as u64);
                for (&b, els) in buckets.iter().zip(elements) {
                    n += varint_len(gap(prev, u64::from(b)));
                    prev = Some(u64::from(b));
                    n += varint_len(els.len() as u64) + 4 * els.len();
                }
                n
            }
        }
    }

    /// Decodes what [`Request::encode`] wrote, checking the shape documented on each variant.
    /// Hostile input gives an error; allocation is bounded by a small multiple of its length.
    pub fn decode(b: &[u8]) -> Result<Request, Error> {
        let mut r = Reader(b);
        let req = match r.u8("message tag")? {
            TAG_ROOT => Request::Root(r.root()?),
            TAG_COMPARE => {
                let salt = r.u64("salt")?;
                let parent_level = r.u8("parent level")?;
                let level = r.u8("level")?;
                if parent_level >= level || level > LEAF_LEVEL {
                    return Err(Error::Malformed("levels out of range"));
                }
                let n = r.count(1, "parents")?;
                let parents = r
                    .indices(n, 1 << (2 * u32::from(parent_level)), "parents")?
                    .into_iter()
                    .map(|p| p as u32)
                    .collect::<Vec<_>>();
                let per = 1usize << (2 * u32::from(level - parent_level));
                let total = n.saturating_mul(per);
                if total > r.0.len() / 4 {
                    return Err(Error::Truncated("a hash per child"));
                }
                let hashes = (0..total)
                    .map(|_| r.u32("hash"))
                    .collect::<Result<_, _>>()?;
                Request::Compare {
                    salt,
                    parent_level,
                    level,
                    parents,
                    hashes,
                }
            }
            TAG_ENTRIES => {
                let salt = r.u64("salt")?;
                let n = r.count(2, "buckets")?;
                let mut buckets = Vec::with_capacity(n);
                let mut elements = Vec::with_capacity(n);
                let mut prev = None;
                for _ in 0..n {
                    let b = r.index(&mut prev, BUCKETS as u64, "bucket")?;
                    buckets.push(b as u16);
                    let m = r.count(4, "elements")?;
                    let els = (0..m).map(|_| r.u32("element")).collect::<Result<_, _>>()?;
                    elements.push(els);
                }
                Request::Entries {
                    salt,
                    buckets,
                    elements,
                }
            }
            _ => return Err(Error::Malformed("unknown request tag")),
        };
        r.finish()?;
        Ok(req)
    }

    /// Checks the shape documented on each variant.
    fn validate(&self) -> Result<(), Error> {
        match self {
            Request::Root(_) => Ok(()),
            Request::Compare {
                parent_level,
                level,
                parents,
                hashes,
                ..
            } => {
                if parent_level >= level || *level > LEAF_LEVEL {
                    return Err(Error::Malformed("levels out of range"));
                }
                let limit = 1u64 << (2 * u32::from(*parent_level));
                if !increasing(parents) || parents.last().is_some_and(|&p| u64::from(p) >= limit) {
                    return Err(Error::Malformed("parents out of order or range"));
                }
                if hashes.len() != parents.len() << (2 * u32::from(level - parent_level)) {
                    return Err(Error::Malformed("one hash per child was expected"));
                }
                Ok(())
            }
            Request::Entries {
                buckets, elements, ..
            } => {
                if !increasing(buckets) || buckets.len() != elements.len() {
                    return Err(Error::Malformed("buckets out of order or without elements"));
                }
                Ok(())
            }
        }
    }
}

impl Reply {
    /// Appends the encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Root(root) => {
                out.push(TAG_ROOT);
                root.encode(out);
            }
            Reply::Differ { differ } => {
                out.push(TAG_COMPARE);
                put_bits(out, differ);
            }
            Reply::Entries {
                registers,
                wanted,
                incomplete,
            } => {
                out.push(TAG_ENTRIES);
                encode_registers(registers, out);
                put_bits(out, wanted);
                put_varint(out, incomplete.len() as u64);
                put_gaps(out, incomplete.iter().map(|&b| u64::from(b)));
            }
        }
    }

    /// Length of the encoding in bytes: the traffic this reply costs.
    pub fn encoded_len(&self) -> usize {
        match self {
            Reply::Root(root) => 1 + root.encoded_len(),
            Reply::Differ { differ } => 1 + bits_len(differ),
            Reply::Entries {
                registers,
                wanted,
                incomplete,
            } => {
                1 + registers_len(registers)
                    + bits_len(wanted)
                    + varint_len(incomplete.len() as u64)
                    + gaps_len(incomplete.iter().map(|&b| u64::from(b)))
            }
        }
    }

    /// The bytes of the encoding spent on registers (key and register, with their lengths):
    /// the payload, as opposed to the digest traffic.
    pub fn register_bytes(&self) -> usize {
        match self {
            Reply::Entries { registers, .. } => {
                registers.iter().map(|(k, r)| register_len(k, r)).sum()
            }
            _ => 0,
        }
    }

    /// Decodes what [`Reply::encode`] wrote. Hostile input gives an error; allocation is
    /// bounded by a small multiple of its length.
    pub fn decode(b: &[u8]) -> Result<Reply, Error> {
        let mut r = Reader(b);
        let reply = match r.u8("message tag")? {
            TAG_ROOT => Reply::Root(r.root()?),
            TAG_COMPARE => Reply::Differ { differ: r.bits()? },
            TAG_ENTRIES => {
                let registers = r.registers()?;
                let wanted = r.bits()?;
                let n = r.count(1, "incomplete buckets")?;
                let incomplete = r
                    .indices(n, BUCKETS as u64, "incomplete bucket")?
                    .into_iter()
                    .map(|b| b as u16)
                    .collect();
                Reply::Entries {
                    registers,
                    wanted,
                    incomplete,
                }
            }
            _ => return Err(Error::Malformed("unknown reply tag")),
        };
        r.finish()?;
        Ok(reply)
    }
}

/// Appends a batch of registers (a push): count, then key length, key, register length and
/// [`Register::encode`] bytes for each. The same framing carries the registers of a reply.
pub fn encode_registers(regs: &[(Box<str>, Register)], out: &mut Vec<u8>) {
    encode_register_iter(regs.len(), regs.iter().map(|(k, r)| (&**k, r)), out);
}

/// [`encode_registers`] for the `n` registers `regs` yields (they may live in several
/// collections, as a push of several writes' registers does).
pub fn encode_register_iter<'a>(
    n: usize,
    regs: impl Iterator<Item = (&'a str, &'a Register)>,
    out: &mut Vec<u8>,
) {
    put_varint(out, n as u64);
    for (k, r) in regs {
        put_varint(out, k.len() as u64);
        out.extend_from_slice(k.as_bytes());
        put_varint(out, register_body_len(r) as u64);
        let start = out.len();
        r.encode(out);
        debug_assert_eq!(out.len() - start, register_body_len(r));
    }
}

/// Length of [`encode_registers`]'s output.
pub fn registers_len(regs: &[(Box<str>, Register)]) -> usize {
    varint_len(regs.len() as u64) + regs.iter().map(|(k, r)| register_len(k, r)).sum::<usize>()
}

/// Decodes what [`encode_registers`] wrote; keys must follow the path grammar and limits, leaf
/// values must be JSON.
pub fn decode_registers(b: &[u8]) -> Result<Vec<(Box<str>, Register)>, Error> {
    let mut r = Reader(b);
    let regs = r.registers()?;
    r.finish()?;
    Ok(regs)
}

fn register_body_len(reg: &Register) -> usize {
    REGISTER_HEAD + reg.leaf().map_or(0, str::len)
}

/// Encoded length of one framed register.
pub fn register_len(key: &str, reg: &Register) -> usize {
    let body = register_body_len(reg);
    varint_len(key.len() as u64) + key.len() + varint_len(body as u64) + body
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// The gap stored for index `v` after `prev` (never panics, even out of order: such a list
/// fails to decode).
fn gap(prev: Option<u64>, v: u64) -> u64 {
    prev.map_or(v, |p| v.wrapping_sub(p).wrapping_sub(1))
}

fn put_gaps(out: &mut Vec<u8>, vs: impl Iterator<Item = u64>) {
    let mut prev = None;
    for v in vs {
        put_varint(out, gap(prev, v));
        prev = Some(v);
    }
}

fn gaps_len(vs: impl Iterator<Item = u64>) -> usize {
    let mut prev = None;
    vs.map(|v| {
        let n = varint_len(gap(prev, v));
        prev = Some(v);
        n
    })
    .sum()
}

fn put_bits(out: &mut Vec<u8>, bits: &[bool]) {
    put_varint(out, bits.len() as u64);
    for chunk in bits.chunks(8) {
        out.push(
            chunk
                .iter()
                .enumerate()
                .fold(0u8, |byte, (i, &b)| byte | (u8::from(b) << i)),
        );
    }
}

fn bits_len_of(n: usize) -> usize {
    varint_len(n as u64) + n.div_ceil(8)
}

fn bits_len(bits: &[bool]) -> usize {
    bits_len_of(bits.len())
}

/// A key as the store holds it: valid segments joined by NUL, within the path limits.
fn check_key(key: &str) -> Result<(), Error> {
    if key.is_empty() {
        return Ok(());
    }
    // Written as `/a/b`, the path is one byte longer than the key.
    if key.len() + 1 > path::MAX_PATH_BYTES {
        return Err(Error::Malformed("key is longer than the path limit"));
    }
    let mut segments = 0;
    for seg in key.split('\0') {
        if path::check_segment(seg).is_err() {
            return Err(Error::Malformed("key breaks the path grammar"));
        }
        segments += 1;
    }
    if segments > path::MAX_SEGMENTS {
        return Err(Error::Malformed("key has too many segments"));
    }
    Ok(())
}

fn increasing<T: Ord>(xs: &[T]) -> bool {
    xs.windows(2).all(|w| w[0] < w[1])
}

/// Reads a message front to back; every count is checked against the bytes left before
/// anything is allocated for it.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(Error::Truncated(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, Error> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, Error> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, Error> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(a))
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, Error> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8(what)?;
            if i == 9 && b > 1 {
                return Err(Error::Malformed("varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(Error::Malformed("varint is not in its shortest form"));
                }
                return Ok(v);
            }
        }
        Err(Error::Malformed("varint is longer than 10 bytes"))
    }

    /// A count of items that take at least `min_bytes` each in what is left.
    fn count(&mut self, min_bytes: usize, what: &'static str) -> Result<usize, Error> {
        let n = self.varint(what)?;
        match usize::try_from(n) {
            Ok(n) if n <= self.0.len() / min_bytes => Ok(n),
            _ => Err(Error::Truncated(what)),
        }
    }

    /// The next index of a strictly increasing list below `limit`.
    fn index(
        &mut self,
        prev: &mut Option<u64>,
        limit: u64,
        what: &'static str,
    ) -> Result<u64, Error> {
        let g = self.varint(what)?;
        let v = match *prev {
            None => Some(g),
            Some(p) => p.checked_add(1).and_then(|p| p.checked_add(g)),
        };
        match v {
            Some(v) if v < limit => {
                *prev = Some(v);
                Ok(v)
            }
            _ => Err(Error::Malformed("index out of range")),
        }
    }

    fn indices(&mut self, n: usize, limit: u64, what: &'static str) -> Result<Vec<u64>, Error> {
        let mut prev = None;
        (0..n).map(|_| self.index(&mut prev, limit, what)).collect()
    }

    fn root(&mut self) -> Result<Root, Error> {
        Ok(Root {
            count: self.varint("register count")?,
            hash: self.u64("root hash")?,
        })
    }

    fn bits(&mut self) -> Result<Vec<bool>, Error> {
        let n = self.varint("flag count")?;
        let n = usize::try_from(n)
            .ok()
            .filter(|n| n.div_ceil(8) <= self.0.len())
            .ok_or(Error::Truncated("flags"))?;
        let bytes = self.take(n.div_ceil(8), "flags")?;
        if n % 8 != 0 && bytes[n / 8] >> (n % 8) != 0 {
            return Err(Error::Malformed("unused flag bits are set"));
        }
        Ok((0..n).map(|i| bytes[i / 8] & (1 << (i % 8)) != 0).collect())
    }

    fn registers(&mut self) -> Result<Vec<(Box<str>, Register)>, Error> {
        let n = self.count(MIN_FRAMED_REGISTER, "registers")?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let len = self.count(1, "key")?;
            let key = std::str::from_utf8(self.take(len, "key")?)
                .map_err(|_| Error::Malformed("key is not UTF-8"))?;
            check_key(key)?;
            let len = self.count(1, "register")?;
            let reg = Register::decode(self.take(len, "register")?)?;
            if register_body_len(&reg) != len {
                return Err(Error::Malformed("register has trailing bytes"));
            }
            if let Kind::Leaf(text) = &reg.kind {
                serde_json::from_str::<serde::de::IgnoredAny>(text)
                    .map_err(|_| Error::Malformed("leaf value is not JSON"))?;
            }
            out.push((key.into(), reg));
        }
        Ok(out)
    }

    fn finish(self) -> Result<(), Error> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::Malformed("trailing bytes after the message"))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::*;
    use crate::store::Version;

    fn fnv1a(bytes: &[u8]) -> u64 {
        bytes.iter().fold(FNV_OFFSET, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
        })
    }

    fn leaf(text: &str, millis: u64, node: u64) -> Register {
        Register {
            kind: Kind::Leaf(text.into()),
            version: Version {
                millis,
                counter: 0,
                node,
            },
            expires: None,
        }
    }

    fn registers(s: &Store) -> Vec<(String, Register)> {
        s.registers()
            .map(|(k, r)| (k.to_owned(), r.clone()))
            .collect()
    }

    #[test]
    fn hashes_are_stable() {
        // Published vectors: FNV-1a 64 of "" and "a"; splitmix64's first output from seed 0.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(mix64(GOLDEN), 0xe220_a839_7b1d_cdaf);
        assert_eq!(key_hash("app\0db\0port"), mix64(fnv1a(b"app\0db\0port")));
        // Pinned: a change here breaks every mixed-version cluster.
        assert_eq!(key_hash("app\0db\0port"), PINNED_KEY_HASH);
        let r = Register {
            kind: Kind::Object,
            version: Version {
                millis: 1_763_712_000_123,
                counter: 7,
                node: 0x3f2a_9c1e_5b7d_4e60,
            },
            expires: None,
        };
        assert_eq!(element("app\0db\0port", &r), PINNED_ELEMENT);
        // The value does not count, the kind does.
        assert_eq!(
            element("a", &leaf("1", 5, 1)),
            element("a", &leaf("2", 5, 1))
        );
        let deleted = Register {
            kind: Kind::Deleted,
            ..leaf("1", 5, 1)
        };
        assert_ne!(element("a", &leaf("1", 5, 1)), element("a", &deleted));
    }

    const PINNED_KEY_HASH: u64 = 0x2833_e12b_7f9a_a903;
    const PINNED_ELEMENT: u64 = 0xa00d_92f8_b202_c8b5;

    #[test]
    fn tree_nodes_fold_their_leaves() {
        let s = Store::from_registers((0..500).map(|i| (format!("k{i}").into(), leaf("1", i, 1))));
        let d = s.digest();
        assert_eq!(d.count(), 500);
        let all = (0..BUCKETS).fold(0, |a, b| a ^ d.leaf(b as u16));
        assert_eq!(d.node(0, 0), all);
        for level in 0..LEAF_LEVEL {
            for i in [0u64, 1, 3] {
                let kids = (0..4).fold(0, |a, j| a ^ d.node(level + 1, 4 * i + j));
                assert_eq!(d.node(level, i), kids, "level {level} node {i}");
            }
        }
        assert_eq!(d.node(LEAF_LEVEL, 9), d.leaf(9));
        assert_eq!(d.node(1, 4), 0, "outside the tree");
        assert_eq!(d.node(9, 0), 0, "below the leaves");
    }

    #[test]
    fn register_lengths_match_the_encoding() {
        for r in [
            leaf("\"héllo\"", 1, 2),
            Register {
                kind: Kind::Object,
                ..leaf("", 1, 2)
            },
            Register {
                kind: Kind::Deleted,
                ..leaf("", 1, 2)
            },
        ] {
            let mut buf = Vec::new();
            r.encode(&mut buf);
            assert_eq!(buf.len(), register_body_len(&r));
        }
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert_eq!(buf.len(), varint_len(v));
            let mut r = Reader(&buf);
            assert_eq!(r.varint("v"), Ok(v));
        }
    }

    #[test]
    fn plan_descends_for_few_differences_and_lists_buckets_for_many() {
        assert_eq!(
            plan(0, 1.0, 65_536.0, 1.5).1,
            0,
            "dense: leaf stage at once"
        );
        assert!(
            plan(0, 1.0, 1.0, 1.5).1 > 1,
            "one difference: jump several levels"
        );
        assert!(
            plan(0, 1.0, 500.0, 1.5).1 >= 4,
            "skip the levels where all nodes differ"
        );
        assert_eq!(
            plan(7, 1000.0, 1000.0, 0.01).1,
            0,
            "near-empty buckets: list them"
        );
        assert_eq!(
            plan(7, 1000.0, 1000.0, 100.0).1,
            1,
            "full buckets: compare them"
        );
    }

    /// Keys in a small tree (three names, up to three levels) so writes cover each other often.
    fn arb_key() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..4)
            .prop_map(|segs| segs.join("\0"))
    }

    /// Writes as a cluster makes them: leaves (some with a TTL), objects and deletions, each
    /// with its own version.
    fn arb_writes(max: usize) -> impl Strategy<Value = Vec<(Box<str>, Register)>> {
        let kind = prop_oneof![
            3 => (0u8..4).prop_map(|n| Kind::Leaf(n.to_string().into())),
            1 => Just(Kind::Object),
            1 => Just(Kind::Deleted),
        ];
        let write = (arb_key(), kind, 1u64..4, prop::option::of(1u64..100));
        prop::collection::vec(write, 1..max).prop_map(|ws| {
            ws.into_iter()
                .enumerate()
                .map(|(i, (key, kind, node, ttl))| {
                    let expires = match kind {
                        Kind::Leaf(_) => ttl,
                        _ => None,
                    };
                    let version = Version {
                        millis: 10 + i as u64 / 2,
                        counter: (i % 2) as u32,
                        node,
                    };
                    let reg = Register {
                        kind,
                        version,
                        expires,
                    };
                    (key.into(), reg)
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// After any merges and removals the kept digest is the one rebuilt from scratch.
        #[test]
        fn digest_is_maintained_exactly(
            writes in arb_writes(40),
            ops in prop::collection::vec((any::<Index>(), any::<bool>()), 0..80),
        ) {
            let mut s = Store::new();
            for (i, merge) in ops {
                let (k, r) = &writes[i.index(writes.len())];
                if merge {
                    s.merge(k, r.clone());
                } else {
                    s.remove(k);
                }
                prop_assert_eq!(s.digest(), &Digest::of(s.registers()));
            }
            prop_assert_eq!(s.digest().count(), s.len() as u64);
            let loaded = Store::from_registers(writes);
            prop_assert_eq!(loaded.digest(), &Digest::of(loaded.registers()));
        }
    }

    /// Bytes counted over a round.
    #[derive(Debug, Default)]
    struct Traffic {
        round_trips: usize,
        request_bytes: usize,
        reply_bytes: usize,
        push_bytes: usize,
        /// Bytes of framed registers, in replies and pushes.
        register_bytes: usize,
        registers: usize,
        largest_reply: usize,
        /// Bytes of the largest push.
        largest_push: usize,
    }

    impl Traffic {
        /// Everything but the registers.
        fn digest_bytes(&self) -> usize {
            self.request_bytes + self.reply_bytes + self.push_bytes - self.register_bytes
        }
    }

    /// What happens to one exchange of a round.
    enum Fault {
        None,
        /// The reply is lost: the requester gives up the round.
        DropReply,
        /// The reply arrives twice.
        DuplicateReply,
        /// The request arrives twice (the responder answers both).
        DuplicateRequest,
        /// A write lands on the requester (true) or responder before the request is sent.
        Write(bool, Box<str>, Register),
    }

    fn through_request(req: &Request) -> (Request, usize) {
        let mut buf = Vec::new();
        req.encode(&mut buf);
        assert_eq!(buf.len(), req.encoded_len());
        let back = Request::decode(&buf).expect("a request decodes");
        assert_eq!(&back, req);
        (back, buf.len())
    }

    fn through_reply(reply: &Reply) -> (Reply, usize) {
        let mut buf = Vec::new();
        reply.encode(&mut buf);
        assert_eq!(buf.len(), reply.encoded_len());
        let back = Reply::decode(&buf).expect("a reply decodes");
        assert_eq!(&back, reply);
        (back, buf.len())
    }

    /// Merges a step's registers on the requester's side and pushes the others through the codec.
    fn deliver(a: &mut Store, b: &mut Store, step: Step, t: &mut Traffic) -> Option<Request> {
        for (k, r) in step.merge {
            a.merge(&k, r);
        }
        if !step.push.is_empty() {
            let mut buf = Vec::new();
            encode_registers(&step.push, &mut buf);
            assert_eq!(buf.len(), registers_len(&step.push));
            t.push_bytes += buf.len();
            t.largest_push = t.largest_push.max(buf.len());
            t.register_bytes += buf.len() - varint_len(step.push.len() as u64);
            t.registers += step.push.len();
            for (k, r) in decode_registers(&buf).expect("a push decodes") {
                b.merge(&k, r);
            }
        }
        step.next
    }

    /// One round of `a` against `b`, every message through the codec; `fault` decides the fate
    /// of each exchange. Returns whether the round ran to its end.
    fn round(
        a: &mut Store,
        b: &mut Store,
        salt: u64,
        budget: usize,
        t: &mut Traffic,
        mut fault: impl FnMut() -> Fault,
    ) -> bool {
        let Some((mut session, mut req)) = Session::start(a, salt, budget, None) else {
            return true;
        };
        loop {
            let f = fault();
            if let Fault::Write(on_a, k, r) = &f {
                let side = if *on_a { &mut *a } else { &mut *b };
                side.merge(k, r.clone());
            }
            let (sent, n) = through_request(&req);
            t.request_bytes += n;
            t.round_trips += 1;
            if matches!(f, Fault::DuplicateRequest) {
                respond(b, &sent, budget).expect("a session's request is well-formed");
            }
            let reply = respond(b, &sent, budget).expect("a session's request is well-formed");
            let (reply, n) = through_reply(&reply);
            t.reply_bytes += n;
            t.register_bytes += reply.register_bytes();
            t.largest_reply = t.largest_reply.max(n);
            if let Reply::Entries { registers, .. } = &reply {
                t.registers += registers.len();
            }
            let next = match f {
                Fault::DropReply => return false,
                Fault::DuplicateReply => {
                    let step = session.step(a, reply.clone()).expect("the reply fits");
                    deliver(a, b, step, t);
                    // The copy answers a request it was not for: either refused, or taken for
                    // what it says (safe: merging is idempotent).
                    match session.step(a, reply) {
                        Ok(step) => deliver(a, b, step, t),
                        Err(_) => return false,
                    }
                }
                _ => {
                    let step = session.step(a, reply).expect("the reply fits");
                    deliver(a, b, step, t)
                }
            };
            match next {
                Some(r) => req = r,
                None => {
                    assert!(session.is_done());
                    return true;
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Two stores holding any subsets, in any order and duplication, of the same writes end
        /// with the same registers and digests; lost and duplicated messages and writes during
        /// a round only delay that, and the first round without them converges.
        #[test]
        fn rounds_converge(
            writes in arb_writes(40),
            pick_a in prop::collection::vec(any::<Index>(), 0..60),
            pick_b in prop::collection::vec(any::<Index>(), 0..60),
            faults in prop::collection::vec((0u8..8, any::<Index>()), 0..16),
            salt in any::<u64>(),
            budget in prop_oneof![Just(1usize), Just(200), Just(DEFAULT_BUDGET)],
        ) {
            let mut expected = Store::new();
            let mut build = |picks: &[Index]| {
                let mut s = Store::new();
                for i in picks {
                    let (k, r) = &writes[i.index(writes.len())];
                    s.merge(k, r.clone());
                    expected.merge(k, r.clone());
                }
                s
            };
            let mut a = build(&pick_a);
            let mut b = build(&pick_b);
            let mut faults = faults.into_iter();
            let mut t = Traffic::default();
            for r in 0.. {
                prop_assert!(r < 100, "no convergence after 100 rounds");
                let faulty = faults.len() > 0;
                let done = round(&mut a, &mut b, salt.wrapping_add(r), budget, &mut t, || {
                    match faults.next() {
                        Some((0, _)) => Fault::DropReply,
                        Some((1, _)) => Fault::DuplicateReply,
                        Some((2, _)) => Fault::DuplicateRequest,
                        Some((w @ (3 | 4), i)) => {
                            let (k, reg) = writes[i.index(writes.len())].clone();
                            expected.merge(&k, reg.clone());
                            Fault::Write(w == 3, k, reg)
                        }
                        _ => Fault::None,
                    }
                });
                if !faulty {
                    prop_assert!(done);
                    break;
                }
            }
            prop_assert_eq!(registers(&a), registers(&expected));
            prop_assert_eq!(registers(&b), registers(&expected));
            prop_assert_eq!(a.digest(), b.digest());
        }
    }

    /// `/k/00000`, `/k/00001`, ... with 256-byte values, at version millis `millis(i)`.
    fn numbered(
        keys: impl Iterator<Item = u64>,
        millis: impl Fn(u64) -> u64,
    ) -> Vec<(Box<str>, Register)> {
        let value = format!("\"{}\"", "x".repeat(254));
        keys.map(|i| (format!("k\0{i:05}").into(), leaf(&value, millis(i), 1)))
            .collect()
    }

    #[test]
    fn traffic_grows_with_the_difference() {
        // A holds 100,000 keys; B misses 500 of them and holds older versions of 500 others.
        let n = 100_000;
        let started = Instant::now();
        let newer = |i: u64| {
            if i % 200 == 100 {
                3_000_000 + i
            } else {
                1_000_000 + i
            }
        };
        let mut a = Store::from_registers(numbered(0..n, newer));
        let mut b =
            Store::from_registers(numbered((0..n).filter(|i| i % 200 != 0), |i| 1_000_000 + i));
        let built = started.elapsed();
        let started = Instant::now();
        let mut t = Traffic::default();
        assert!(round(&mut a, &mut b, 7, DEFAULT_BUDGET, &mut t, || {
            Fault::None
        }));
        let took = started.elapsed();
        eprintln!(
            "1,000 of 100,000 keys differ: {} round trips, {} B of requests, {} B of replies, \
             {} B of pushes; {} registers in {} B; digest traffic {} B; built in {built:?}, \
             reconciled in {took:?}",
            t.round_trips,
            t.request_bytes,
            t.reply_bytes,
            t.push_bytes,
            t.registers,
            t.register_bytes,
            t.digest_bytes(),
        );
        assert_eq!(registers(&a), registers(&b));
        assert_eq!(a.digest(), b.digest());
        assert!(t.digest_bytes() < 64 * 1024, "{t:?}");
        // The 500 missing and 500 newer registers, plus B's 500 stale copies going the other way.
        assert!(t.registers >= 1000 && t.registers <= 1500, "{t:?}");

        // Equal stores: one exchange of roots.
        let mut t = Traffic::default();
        assert!(round(&mut a, &mut b, 8, DEFAULT_BUDGET, &mut t, || {
            Fault::None
        }));
        assert_eq!(t.round_trips, 1);
        assert!(t.request_bytes + t.reply_bytes <= 32, "{t:?}");
    }

    #[test]
    fn full_sync_pulls_into_an_empty_store_within_the_budget() {
        full_sync(true);
    }

    #[test]
    fn full_sync_pushes_to_an_empty_store_within_the_budget() {
        full_sync(false);
    }

    /// An empty store and one of 100,000 keys: the empty one requests everything (`pull`) or
    /// the full one pushes everything, every message within a 1 MiB budget.
    fn full_sync(pull: bool) {
        let n = 100_000;
        let budget = 1 << 20;
        let all = Store::from_registers(numbered(0..n, |i| 1_000_000 + i));
        let (mut a, mut b) = if pull {
            (Store::new(), all)
        } else {
            (all, Store::new())
        };
        let started = Instant::now();
        let mut t = Traffic::default();
        assert!(round(&mut a, &mut b, 9, budget, &mut t, || Fault::None));
        eprintln!(
            "full sync ({}) of 100,000 keys: {} round trips, largest reply {} B, \
             largest push {} B, digest traffic {} B, registers {} B, in {:?}",
            if pull { "pull" } else { "push" },
            t.round_trips,
            t.largest_reply,
            t.largest_push,
            t.digest_bytes(),
            t.register_bytes,
            started.elapsed(),
        );
        assert!(t.largest_reply <= budget, "{t:?}");
        assert!(t.largest_push <= budget, "{t:?}");
        assert_eq!(t.registers, n as usize);
        assert_eq!(registers(&a).len(), n as usize);
        assert_eq!(registers(&a), registers(&b));
        assert_eq!(a.digest(), b.digest());
    }

    /// One message of every kind, from a real round where possible.
    fn samples() -> (Vec<Request>, Vec<Reply>) {
        let a = Store::from_registers((0..40).map(|i| (format!("k{i}").into(), leaf("1", i, 1))));
        let b = Store::from_registers((20..60).map(|i| (format!("k{i}").into(), leaf("2", i, 2))));
        let (mut s, mut req) = Session::start(&a, 1, DEFAULT_BUDGET, None).unwrap();
        let (mut reqs, mut replies) = (Vec::new(), Vec::new());
        loop {
            let reply = respond(&b, &req, DEFAULT_BUDGET).unwrap();
            reqs.push(req);
            replies.push(reply.clone());
            match s.step(&a, reply).unwrap().next {
                Some(r) => req = r,
                None => break,
            }
        }
        replies.push(Reply::Entries {
            registers: vec![("a\0b".into(), leaf("[1]", 3, 4))],
            wanted: vec![true, false, true],
            incomplete: vec![7, 9],
        });
        let kinds = |r: &Request| std::mem::discriminant(r);
        for k in [
            Request::Root(Root::default()),
            Request::Compare {
                salt: 0,
                parent_level: 0,
                level: 1,
                parents: vec![0],
                hashes: vec![0; 4],
            },
            Request::Entries {
                salt: 0,
                buckets: vec![],
                elements: vec![],
            },
        ] {
            assert!(
                reqs.iter().any(|r| kinds(r) == kinds(&k)),
                "round lacks {k:?}"
            );
        }
        (reqs, replies)
    }

    fn encoded(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut buf = Vec::new();
        f(&mut buf);
        buf
    }

    #[test]
    fn truncated_or_extended_messages_are_rejected() {
        let (reqs, replies) = samples();
        let regs = vec![
            ("a".into(), leaf("1", 1, 1)),
            ("a\0b".into(), leaf("2", 2, 1)),
        ];
        type Decodes = fn(&[u8]) -> bool;
        let mut cases: Vec<(Vec<u8>, Decodes)> = Vec::new();
        for r in &reqs {
            cases.push((encoded(|b| r.encode(b)), |b| Request::decode(b).is_ok()));
        }
        for r in &replies {
            cases.push((encoded(|b| r.encode(b)), |b| Reply::decode(b).is_ok()));
        }
        cases.push((encoded(|b| encode_registers(&regs, b)), |b| {
            decode_registers(b).is_ok()
        }));
        cases.push((
            encoded(|b| {
                Root {
                    count: 300,
                    hash: 5,
                }
                .encode(b)
            }),
            |b| Root::decode(b).is_ok(),
        ));
        for (bytes, ok) in cases {
            assert!(ok(&bytes));
            for cut in 0..bytes.len() {
                assert!(!ok(&bytes[..cut]), "prefix {cut} of {bytes:?} decoded");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(!ok(&longer), "{longer:?} decoded");
        }
    }

    #[test]
    fn hostile_input_is_rejected_without_allocating() {
        let huge = |tag: u8, salt: bool| {
            let mut b = vec![tag];
            if salt {
                b.extend_from_slice(&[0; 8]);
            }
            put_varint(&mut b, u64::MAX >> 1);
            b
        };
        assert!(Request::decode(&huge(TAG_ENTRIES, true)).is_err());
        assert!(Reply::decode(&huge(TAG_COMPARE, false)).is_err());
        assert!(Reply::decode(&huge(TAG_ENTRIES, false)).is_err());
        assert!(decode_registers(&huge(TAG_ROOT, false)[1..]).is_err());
        // A compare whose parents claim 4^8 hashes each.
        let mut b = vec![TAG_COMPARE];
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&[0, 8, 1, 0]);
        assert!(Request::decode(&b).is_err());
        // Overlong and overflowing varints, unused flag bits, bad keys, unknown tags.
        assert!(Root::decode(&[0x80, 0x00, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(Root::decode(&[0xff; 18]).is_err());
        assert!(Reply::decode(&[TAG_COMPARE, 1, 0b10]).is_err());
        let deep = vec!["a"; path::MAX_SEGMENTS + 1].join("\0");
        for (key, text) in [
            ("a\0\0b", "1"),
            ("a\0..", "1"),
            (&*deep, "1"),
            ("a", "{nope"),
        ] {
            let bad = vec![(key.into(), leaf(text, 1, 1))];
            let bytes = encoded(|b| encode_registers(&bad, b));
            assert!(decode_registers(&bytes).is_err(), "{key:?} {text:?}");
        }
        assert!(Request::decode(&[9]).is_err());
        assert!(Reply::decode(&[]).is_err());
    }

    #[test]
    fn malformed_requests_get_an_error() {
        let s = Store::new();
        let compare = |parents: Vec<u32>, n: usize| Request::Compare {
            salt: 0,
            parent_level: 1,
            level: 2,
            parents,
            hashes: vec![0; n],
        };
        assert!(respond(&s, &compare(vec![0, 3], 8), 100).is_ok());
        assert!(
            respond(&s, &compare(vec![3, 0], 8), 100).is_err(),
            "out of order"
        );
        assert!(
            respond(&s, &compare(vec![4], 4), 100).is_err(),
            "outside the level"
        );
        assert!(
            respond(&s, &compare(vec![0], 3), 100).is_err(),
            "a hash short"
        );
        let entries = Request::Entries {
            salt: 0,
            buckets: vec![1, 1],
            elements: vec![vec![], vec![]],
        };
        assert!(respond(&s, &entries, 100).is_err());
    }

    proptest! {
        /// Any bytes: decoding never panics, and what decodes re-encodes to the same bytes.
        #[test]
        fn decode_is_total_and_canonical(
            pick in any::<Index>(),
            edits in prop::collection::vec((any::<Index>(), any::<u8>()), 0..3),
            noise in prop::collection::vec(any::<u8>(), 0..48),
        ) {
            let (reqs, replies) = samples();
            let mut inputs = vec![noise];
            let r = &reqs[pick.index(reqs.len())];
            let p = &replies[pick.index(replies.len())];
            for mut bytes in [encoded(|b| r.encode(b)), encoded(|b| p.encode(b))] {
                for (at, v) in &edits {
                    let i = at.index(bytes.len());
                    bytes[i] = *v;
                }
                inputs.push(bytes);
            }
            for bytes in inputs {
                if let Ok(m) = Request::decode(&bytes) {
                    prop_assert_eq!(encoded(|b| m.encode(b)), bytes.clone());
                }
                if let Ok(m) = Reply::decode(&bytes) {
                    prop_assert_eq!(encoded(|b| m.encode(b)), bytes.clone());
                }
            }
        }
    }
}
