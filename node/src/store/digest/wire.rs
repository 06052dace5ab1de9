//! The bytes of the protocol (see the wire format in the parent module's doc): encoding,
//! length and decoding of [`Root`], [`Request`] and [`Reply`], the register batch framing of
//! replies and pushes, and the bounded [`Reader`] every decoder goes through. Knows nothing of
//! what the messages mean to a session or a responder.

use super::{Error, Reply, Request, Root, BUCKETS, LEAF_LEVEL};
use crate::store::path;
use crate::store::register::{Kind, Register};

// The wire format (see the module doc): a tag byte, shared by the kinds of both directions.

pub(super) const TAG_ROOT: u8 = 1;
pub(super) const TAG_COMPARE: u8 = 2;
pub(super) const TAG_ENTRIES: u8 = 3;
/// Encoded length of a register's head (see [`Register::encode`]): tag, millis, counter, node,
/// expiry.
const REGISTER_HEAD: usize = 1 + 8 + 4 + 8 + 8;
/// Fewest bytes a framed register can take: key length, register length, head.
const MIN_FRAMED_REGISTER: usize = 2 + REGISTER_HEAD;

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
    pub(super) fn validate(&self) -> Result<(), Error> {
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

pub(super) fn register_body_len(reg: &Register) -> usize {
    REGISTER_HEAD + reg.leaf().map_or(0, str::len)
}

/// Encoded length of one framed register.
pub fn register_len(key: &str, reg: &Register) -> usize {
    let body = register_body_len(reg);
    varint_len(key.len() as u64) + key.len() + varint_len(body as u64) + body
}

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(super) fn varint_len(v: u64) -> usize {
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

pub(super) fn bits_len_of(n: usize) -> usize {
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
pub(super) struct Reader<'a>(pub(super) &'a [u8]);

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

    pub(super) fn varint(&mut self, what: &'static str) -> Result<u64, Error> {
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
