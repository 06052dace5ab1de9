//! Registers: what the store holds at one path, and their byte encoding for durable storage.
//!
//! A register is a leaf value (compact JSON text), an object marker, or a deletion marker, stamped
//! with the version of the write that made it. Knows nothing of the map that holds registers.

use super::version::Version;
use std::num::NonZeroU64;

/// What a register says about its path.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Kind {
    /// A leaf value: any JSON value but an object, as compact JSON text.
    Leaf(Box<str>),
    /// The path is an object (a directory) and everything older below it is replaced.
    Object,
    /// The path and everything older below it are deleted (a tombstone).
    Deleted,
}

/// One register: kind, version and, for leaves, an optional expiry time.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Register {
    pub kind: Kind,
    pub version: Version,
    /// Wall-clock milliseconds after which a leaf is no longer visible; each node decides this
    /// locally, so no delete is ever written for an expiry.
    pub expires: Option<NonZeroU64>,
}

impl Register {
    /// True if the register shows something (a live leaf or an object) at time `now_ms`.
    pub fn is_visible(&self, now_ms: u64) -> bool {
        match self.kind {
            Kind::Leaf(_) => self.expires.is_none_or(|t| t.get() > now_ms),
            Kind::Object => true,
            Kind::Deleted => false,
        }
    }

    /// The leaf's JSON text, if it is a leaf.
    pub fn leaf(&self) -> Option<&str> {
        match &self.kind {
            Kind::Leaf(v) => Some(v),
            _ => None,
        }
    }

    /// Encodes for durable storage: tag, millis, counter, node, expiry (0 = none), leaf text.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let tag = match self.kind {
            Kind::Leaf(_) => 1u8,
            Kind::Object => 2,
            Kind::Deleted => 3,
        };
        out.push(tag);
        out.extend_from_slice(&self.version.millis.to_le_bytes());
        out.extend_from_slice(&self.version.counter.to_le_bytes());
        out.extend_from_slice(&self.version.node.to_le_bytes());
        out.extend_from_slice(&self.expires.map_or(0, NonZeroU64::get).to_le_bytes());
        if let Kind::Leaf(v) = &self.kind {
            out.extend_from_slice(v.as_bytes());
        }
    }

    /// Decodes what [`Register::encode`] wrote.
    pub fn decode(b: &[u8]) -> Result<Register, DecodeError> {
        const HEAD: usize = 1 + 8 + 4 + 8 + 8;
        if b.len() < HEAD {
            return Err(DecodeError("register record is truncated"));
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8-byte slice"));
        let counter = u32::from_le_bytes(b[9..13].try_into().expect("4-byte slice"));
        let version = Version {
            millis: u64_at(1),
            counter,
            node: u64_at(13),
        };
        let expires = NonZeroU64::new(u64_at(21));
        let kind = match b[0] {
            1 => {
                let text = std::str::from_utf8(&b[HEAD..])
                    .map_err(|_| DecodeError("leaf value is not UTF-8"))?;
                Kind::Leaf(text.into())
            }
            2 => Kind::Object,
            3 => Kind::Deleted,
            _ => return Err(DecodeError("unknown register tag")),
        };
        Ok(Register {
            kind,
            version,
            expires,
        })
    }
}

/// A stored register could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt register: {0}")]
pub struct DecodeError(&'static str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let v = Version {
            millis: 17,
            counter: 3,
            node: 0xabcdef,
        };
        for r in [
            Register {
                kind: Kind::Leaf("\"héllo\"".into()),
                version: v,
                expires: NonZeroU64::new(99),
            },
            Register {
                kind: Kind::Object,
                version: v,
                expires: None,
            },
            Register {
                kind: Kind::Deleted,
                version: v,
                expires: None,
            },
        ] {
            let mut buf = Vec::new();
            r.encode(&mut buf);
            assert_eq!(Register::decode(&buf).unwrap(), r);
        }
        assert!(Register::decode(&[1, 2, 3]).is_err());
        let mut buf = Vec::new();
        Register {
            kind: Kind::Object,
            version: v,
            expires: None,
        }
        .encode(&mut buf);
        buf[0] = 9;
        assert!(Register::decode(&buf).is_err());
    }

    /// A register sits in every entry of the store's map, so its size is memory per key (the
    /// benchmark's budget is 300 bytes a key): the expiry takes no tag beside its time.
    #[test]
    fn a_register_is_56_bytes() {
        assert_eq!(std::mem::size_of::<Option<NonZeroU64>>(), 8);
        assert_eq!(std::mem::size_of::<Register>(), 56);
    }

    #[test]
    fn visibility() {
        let v = Version::ZERO;
        let leaf = |e: Option<u64>| Register {
            kind: Kind::Leaf("1".into()),
            version: v,
            expires: e.and_then(NonZeroU64::new),
        };
        assert!(leaf(None).is_visible(5));
        assert!(leaf(Some(6)).is_visible(5));
        assert!(!leaf(Some(5)).is_visible(5));
        assert!(Register {
            kind: Kind::Object,
            version: v,
            expires: None
        }
        .is_visible(5));
        assert!(!Register {
            kind: Kind::Deleted,
            version: v,
            expires: None
        }
        .is_visible(5));
    }
}
