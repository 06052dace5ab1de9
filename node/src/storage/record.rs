//! The write-ahead log's record of a group commit, and the counters' encoding that redb's
//! metadata rows share. Pure byte layouts; knows nothing of files or redb.

use super::{Commit, Error};
use crate::store::Version;

/// One log record: a group commit.
///
/// Payload: lsn (u64), the counters as [`encode_meta`] writes them, the removed keys
/// (`u32` count, then `u32` length + bytes each), the put registers (`u32` count, then key as
/// above and `u32` length + [`Register::encode`] bytes each). Little-endian throughout.
pub(super) struct Record<'a> {
    pub(super) lsn: u64,
    pub(super) revision: u64,
    pub(super) high_water: Version,
    body: &'a [u8],
}

impl<'a> Record<'a> {
    /// Encodes `c` into `out`; `spans` gets each put register's byte range in `out`.
    pub(super) fn encode(
        out: &mut Vec<u8>,
        lsn: u64,
        c: &Commit<'_>,
        spans: &mut Vec<(usize, usize)>,
    ) {
        out.clear();
        out.extend_from_slice(&lsn.to_le_bytes());
        out.extend_from_slice(&encode_meta(c.revision, c.high_water));
        out.extend_from_slice(&(c.removes.len() as u32).to_le_bytes());
        for k in &c.removes {
            put_bytes(out, k.as_bytes());
        }
        out.extend_from_slice(&(c.puts.len() as u32).to_le_bytes());
        for (k, r) in &c.puts {
            put_bytes(out, k.as_bytes());
            let len_at = out.len();
            out.extend_from_slice(&[0; 4]);
            r.encode(out);
            let len = (out.len() - len_at - 4) as u32;
            out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
            spans.push((len_at + 4, out.len()));
        }
    }

    pub(super) fn decode(b: &'a [u8]) -> Result<Record<'a>, Error> {
        let bad = |why| Error::BadRecord { lsn: 0, why };
        if b.len() < 8 + 28 {
            return Err(bad("shorter than its header"));
        }
        let lsn = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
        let (revision, high_water) = decode_meta(&b[8..36])?;
        Ok(Record {
            lsn,
            revision,
            high_water,
            body: &b[36..],
        })
    }

    /// Calls `f` with each change in order: removals (`None`), then puts.
    pub(super) fn for_each(
        &self,
        mut f: impl FnMut(&'a str, Option<&'a [u8]>),
    ) -> Result<(), Error> {
        let mut c = Cursor {
            rest: self.body,
            lsn: self.lsn,
        };
        for _ in 0..c.len()? {
            f(c.key()?, None);
        }
        for _ in 0..c.len()? {
            let k = c.key()?;
            let n = c.len()?;
            f(k, Some(c.take(n)?));
        }
        if !c.rest.is_empty() {
            return Err(c.bad("trailing bytes"));
        }
        Ok(())
    }
}

/// Reads a record's body front to back.
struct Cursor<'a> {
    rest: &'a [u8],
    lsn: u64,
}

impl<'a> Cursor<'a> {
    fn bad(&self, why: &'static str) -> Error {
        Error::BadRecord { lsn: self.lsn, why }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.rest.len() < n {
            return Err(self.bad("truncated"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn len(&mut self) -> Result<usize, Error> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
    }

    fn key(&mut self) -> Result<&'a str, Error> {
        let n = self.len()?;
        let b = self.take(n)?;
        std::str::from_utf8(b).map_err(|_| self.bad("a key is not UTF-8"))
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

pub(super) fn decode_u64(b: &[u8], what: &str) -> Result<u64, Error> {
    b.try_into()
        .map(u64::from_le_bytes)
        .map_err(|_| Error::Read(format!("the {what} record has the wrong size")))
}

/// The counters: revision, then the clock's high-water mark (millis, counter, node).
pub(super) fn encode_meta(revision: u64, hw: Version) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[..8].copy_from_slice(&revision.to_le_bytes());
    b[8..16].copy_from_slice(&hw.millis.to_le_bytes());
    b[16..20].copy_from_slice(&hw.counter.to_le_bytes());
    b[20..].copy_from_slice(&hw.node.to_le_bytes());
    b
}

pub(super) fn decode_meta(b: &[u8]) -> Result<(u64, Version), Error> {
    let b: &[u8; 28] = b
        .try_into()
        .map_err(|_| Error::Read("the counters record has the wrong size".into()))?;
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8-byte slice"));
    let counter = u32::from_le_bytes(b[16..20].try_into().expect("4-byte slice"));
    Ok((
        u64_at(0),
        Version {
            millis: u64_at(8),
            counter,
            node: u64_at(20),
        },
    ))
}
