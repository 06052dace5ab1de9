//! Versions: hybrid logical clock stamps that totally order every write in a cluster.
//!
//! A version is (wall-clock milliseconds, logical counter, node id). The clock never goes
//! backwards: it follows the wall clock when that moves ahead, counts up when it does not, and
//! absorbs versions seen from elsewhere. Time is always a parameter; nothing here reads a clock.

use std::fmt;
use std::str::FromStr;

/// A write's stamp. Ordered by millis, then counter, then node id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version {
    /// Wall-clock milliseconds since the Unix epoch when the write was stamped (or later, if the
    /// clock had already seen a later time).
    pub millis: u64,
    /// Tie-breaker among writes stamped within the same millisecond.
    pub counter: u32,
    /// The node that stamped it; two nodes never produce the same version.
    pub node: u64,
}

impl Version {
    pub const ZERO: Version = Version {
        millis: 0,
        counter: 0,
        node: 0,
    };
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{:016x}", self.millis, self.counter, self.node)
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{self}")
    }
}

/// A string that is not a version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a version (expected <millis>-<counter>-<16 hex digits>)")]
pub struct ParseError(String);

impl FromStr for Version {
    type Err = ParseError;

    /// Parses `<millis>-<counter>-<node hex>`; surrounding quotes (as in an ETag) are accepted.
    fn from_str(s: &str) -> Result<Version, ParseError> {
        let t = s.trim();
        let t = t.strip_prefix("W/").unwrap_or(t);
        let t = t
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or(t);
        let bad = || ParseError(s.to_owned());
        let mut parts = t.splitn(3, '-');
        let millis = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let counter = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let node = parts
            .next()
            .filter(|p| p.len() == 16)
            .and_then(|p| u64::from_str_radix(p, 16).ok())
            .ok_or_else(bad)?;
        Ok(Version {
            millis,
            counter,
            node,
        })
    }
}

/// The node's hybrid logical clock.
#[derive(Debug, Clone)]
pub struct Hlc {
    /// The newest version this clock has issued or observed (its high-water mark).
    last: Version,
    /// This node's id, stamped into every version it issues.
    node: u64,
}

impl Hlc {
    /// A clock for `node` that will never issue anything at or below `high_water`.
    pub fn new(node: u64, high_water: Version) -> Hlc {
        Hlc {
            last: high_water,
            node,
        }
    }

    /// Issues a new version, strictly greater than everything issued or observed so far.
    pub fn tick(&mut self, now_ms: u64) -> Version {
        let next = if now_ms > self.last.millis {
            Version {
                millis: now_ms,
                counter: 0,
                node: self.node,
            }
        } else if self.last.counter == u32::MAX {
            Version {
                millis: self.last.millis + 1,
                counter: 0,
                node: self.node,
            }
        } else {
            Version {
                millis: self.last.millis,
                counter: self.last.counter + 1,
                node: self.node,
            }
        };
        self.last = next;
        next
    }

    /// Absorbs a version seen from elsewhere so later ticks order after it.
    pub fn observe(&mut self, v: Version) {
        if v > self.last {
            self.last = v;
        }
    }

    /// The high-water mark, to persist.
    pub fn high_water(&self) -> Version {
        self.last
    }

    pub fn node(&self) -> u64 {
        self.node
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn display_parse_round_trip() {
        let v = Version {
            millis: 1_763_712_000_123,
            counter: 7,
            node: 0x3f2a_9c1e_5b7d_4e60,
        };
        assert_eq!(v.to_string(), "1763712000123-7-3f2a9c1e5b7d4e60");
        assert_eq!(v.to_string().parse::<Version>().unwrap(), v);
        assert_eq!(format!("\"{v}\"").parse::<Version>().unwrap(), v);
        assert!("12-x-00".parse::<Version>().is_err());
        assert!("12-1-abc".parse::<Version>().is_err());
        assert!("".parse::<Version>().is_err());
    }

    #[test]
    fn never_goes_backwards() {
        let mut c = Hlc::new(1, Version::ZERO);
        let a = c.tick(100);
        let b = c.tick(90); // wall clock stepped back
        let d = c.tick(100);
        assert!(a < b && b < d);
        assert_eq!(b.millis, 100);
        c.observe(Version {
            millis: 500,
            counter: 3,
            node: 2,
        });
        let e = c.tick(200);
        assert!(
            e > Version {
                millis: 500,
                counter: 3,
                node: 2
            }
        );
        let mut restarted = Hlc::new(1, c.high_water());
        assert!(restarted.tick(0) > e);
    }

    proptest! {
        #[test]
        fn ticks_strictly_increase(times in proptest::collection::vec(0u64..1000, 1..200)) {
            let mut c = Hlc::new(9, Version::ZERO);
            let mut prev = Version::ZERO;
            for t in times {
                let v = c.tick(t);
                prop_assert!(v > prev);
                prev = v;
            }
        }
    }
}
