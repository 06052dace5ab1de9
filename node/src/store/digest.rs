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
//! nothing per key. [`Store`](super::Store) keeps its [`Digest`] on every insert and removal.
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

use super::register::{DecodeError, Kind, Register};

mod session;
#[cfg(test)]
mod tests;
mod wire;

pub use session::{respond, Session, Step};
pub use wire::{
    decode_registers, encode_register_iter, encode_registers, register_len, registers_len,
};

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
