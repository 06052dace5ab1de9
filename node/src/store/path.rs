//! Store paths: the grammar of segments and the in-memory key encoding.
//!
//! A path such as `/app/db/port` is kept as its *key*: the segments joined by NUL (`app\0db\0port`,
//! the root is the empty key). NUL can never occur inside a segment and sorts before every other
//! byte, so a path and everything below it form one contiguous range of an ordered map.
//! This module knows nothing of registers, HTTP or storage.

use std::fmt;

/// Most segments a path may have.
pub const MAX_SEGMENTS: usize = 32;
/// Longest segment, in bytes of UTF-8.
pub const MAX_SEGMENT_BYTES: usize = 255;
/// Longest path, in bytes, written as `/a/b/c`.
pub const MAX_PATH_BYTES: usize = 1024;

/// Why a path or object key was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("empty path segment (\"//\") is not allowed")]
    EmptySegment,
    #[error("path segment {0:?} is not allowed")]
    DotSegment(String),
    #[error("path segment {0:?} must not contain '/'")]
    Slash(String),
    #[error("path segment must not contain NUL")]
    Nul,
    #[error("path segment is {0} bytes, the limit is {MAX_SEGMENT_BYTES}")]
    SegmentTooLong(usize),
    #[error("path has {0} segments, the limit is {MAX_SEGMENTS}")]
    TooManySegments(usize),
    #[error("path is {0} bytes, the limit is {MAX_PATH_BYTES}")]
    TooLong(usize),
    #[error("path must start with '/'")]
    NotAbsolute,
    #[error("path segment is not valid UTF-8")]
    InvalidUtf8,
    #[error("bad percent-encoding in path")]
    BadPercent,
}

/// Checks one segment (also used for the keys of JSON objects).
pub fn check_segment(seg: &str) -> Result<(), Error> {
    if seg.is_empty() {
        return Err(Error::EmptySegment);
    }
    if seg == "." || seg == ".." {
        return Err(Error::DotSegment(seg.to_owned()));
    }
    if seg.len() > MAX_SEGMENT_BYTES {
        return Err(Error::SegmentTooLong(seg.len()));
    }
    if seg.contains('/') {
        return Err(Error::Slash(seg.to_owned()));
    }
    if seg.contains('\0') {
        return Err(Error::Nul);
    }
    Ok(())
}

/// A valid path, held in key form.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Path {
    /// Segments joined by NUL; empty for the root.
    key: String,
}

impl Path {
    /// The root, the whole document.
    pub fn root() -> Path {
        Path { key: String::new() }
    }

    /// Parses `/a/b/c`. One trailing `/` is ignored; `/` alone is the root.
    pub fn parse(s: &str) -> Result<Path, Error> {
        let rest = s.strip_prefix('/').ok_or(Error::NotAbsolute)?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Ok(Path::root());
        }
        Path::from_segments(rest.split('/'))
    }

    /// Parses the raw (percent-encoded) path of a URL: each segment is decoded and then checked, so
    /// `%2e%2e` or `%2f` cannot sneak a `..` or a `/` past the grammar.
    /// `raw` is what follows the route's own `/` (`a/b` of `/v1/kv/a/b`), so a leading `/`
    /// is an empty segment (`/v1/kv//a`), refused like any other.
    pub fn parse_url(raw: &str) -> Result<Path, Error> {
        if raw.starts_with('/') {
            return Err(Error::EmptySegment);
        }
        let raw = raw.strip_suffix('/').unwrap_or(raw);
        if raw.is_empty() {
            return Ok(Path::root());
        }
        let mut segs = Vec::new();
        for seg in raw.split('/') {
            segs.push(percent_decode(seg)?);
        }
        Path::from_segments(segs.iter().map(String::as_str))
    }

    /// Builds a path from segments, checking each and the limits; a path over the length
    /// limit is reported with its whole length.
    pub fn from_segments<'a>(segs: impl IntoIterator<Item = &'a str>) -> Result<Path, Error> {
        let segs: Vec<&str> = segs.into_iter().collect();
        let mut p = Path::root();
        for seg in &segs {
            p = p.child(seg).map_err(|e| match e {
                Error::TooLong(_) => Error::TooLong(segs.iter().map(|s| 1 + s.len()).sum()),
                e => e,
            })?;
        }
        Ok(p)
    }

    /// The path of a child segment, checked.
    pub fn child(&self, seg: &str) -> Result<Path, Error> {
        check_segment(seg)?;
        let n = self.depth() + 1;
        if n > MAX_SEGMENTS {
            return Err(Error::TooManySegments(n));
        }
        // As written: `/` before each segment.
        let len = self.written_len() + 1 + seg.len();
        if len > MAX_PATH_BYTES {
            return Err(Error::TooLong(len));
        }
        let mut key = String::with_capacity(len);
        key.push_str(&self.key);
        if !self.key.is_empty() {
            key.push('\0');
        }
        key.push_str(seg);
        Ok(Path { key })
    }

    /// Rebuilds a path from a key produced by [`Path::key`] (keys in the store are always valid).
    pub fn from_key(key: &str) -> Path {
        Path {
            key: key.to_owned(),
        }
    }

    /// The key form: segments joined by NUL.
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn is_root(&self) -> bool {
        self.key.is_empty()
    }

    /// The length of the path as written (`/a/b`): the key with a `/` for each NUL, and one
    /// in front.
    fn written_len(&self) -> usize {
        if self.key.is_empty() {
            0
        } else {
            self.key.len() + 1
        }
    }

    /// Number of segments.
    pub fn depth(&self) -> usize {
        if self.key.is_empty() {
            0
        } else {
            self.key.bytes().filter(|&b| b == 0).count() + 1
        }
    }

    pub fn segments(&self) -> impl Iterator<Item = &str> {
        let key = self.key.as_str();
        key.split('\0').filter(move |_| !key.is_empty())
    }

    /// The first segment, if any.
    pub fn first(&self) -> Option<&str> {
        self.segments().next()
    }

    pub fn parent(&self) -> Option<Path> {
        if self.key.is_empty() {
            return None;
        }
        Some(match self.key.rfind('\0') {
            Some(i) => Path {
                key: self.key[..i].to_owned(),
            },
            None => Path::root(),
        })
    }

    /// True if `self` is `other` or one of its ancestors.
    pub fn contains(&self, other: &Path) -> bool {
        key_contains(&self.key, &other.key)
    }
}

/// True if key `a` is key `b` or an ancestor of it.
pub fn key_contains(a: &str, b: &str) -> bool {
    a.is_empty() || (b.starts_with(a) && (b.len() == a.len() || b.as_bytes()[a.len()] == 0))
}

/// True if a change at `changed` concerns a reader of `watched`: the same key, one below it, or
/// an ancestor (which replaces or deletes it).
pub fn key_related(watched: &str, changed: &str) -> bool {
    key_contains(watched, changed) || key_contains(changed, watched)
}

/// The keys of the proper ancestors of `key`, nearest first, the root last.
pub fn key_ancestors(key: &str) -> impl Iterator<Item = &str> {
    let mut cur = Some(key);
    std::iter::from_fn(move || {
        let k = cur?;
        if k.is_empty() {
            cur = None;
            return None;
        }
        let parent = match k.rfind('\0') {
            Some(i) => &k[..i],
            None => "",
        };
        cur = Some(parent);
        Some(parent)
    })
}

/// Writes a key as `/a/b/c` (the root as `/`).
pub fn display_key(key: &str, out: &mut String) {
    if key.is_empty() {
        out.push('/');
        return;
    }
    for seg in key.split('\0') {
        out.push('/');
        out.push_str(seg);
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(self.key.len() + 1);
        display_key(&self.key, &mut s);
        f.write_str(&s)
    }
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Path({self})")
    }
}

fn percent_decode(seg: &str) -> Result<String, Error> {
    if !seg.contains('%') {
        return Ok(seg.to_owned());
    }
    let bytes = seg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(Error::BadPercent)?;
            let hex = std::str::from_utf8(hex).map_err(|_| Error::BadPercent)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| Error::BadPercent)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::InvalidUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_displays() {
        let p = Path::parse("/app/db/port").unwrap();
        assert_eq!(p.key(), "app\0db\0port");
        assert_eq!(p.to_string(), "/app/db/port");
        assert_eq!(p.depth(), 3);
        assert_eq!(p.parent().unwrap().to_string(), "/app/db");
        assert_eq!(Path::parse("/").unwrap(), Path::root());
        assert_eq!(Path::parse("/a/").unwrap().to_string(), "/a");
        assert_eq!(Path::root().to_string(), "/");
        assert_eq!(Path::root().depth(), 0);
    }

    #[test]
    fn rejects_bad_paths() {
        assert_eq!(Path::parse("/a//b"), Err(Error::EmptySegment));
        assert_eq!(Path::parse("/a/../b"), Err(Error::DotSegment("..".into())));
        assert_eq!(Path::parse("/./b"), Err(Error::DotSegment(".".into())));
        assert_eq!(Path::parse("/a\0b"), Err(Error::Nul));
        assert_eq!(Path::parse("a"), Err(Error::NotAbsolute));
        assert!(matches!(
            Path::parse(&format!("/{}", "x".repeat(256))),
            Err(Error::SegmentTooLong(256))
        ));
        assert!(Path::parse(&format!("/{}", "x".repeat(255))).is_ok());
        let deep = "/a".repeat(33);
        assert_eq!(Path::parse(&deep), Err(Error::TooManySegments(33)));
        assert!(Path::parse(&"/a".repeat(32)).is_ok());
        let long = format!("/{}", vec!["y".repeat(200); 6].join("/"));
        assert_eq!(Path::parse(&long), Err(Error::TooLong(long.len())));
        // The limit is on the path as written, 1024 bytes with its slashes.
        let at_limit = format!(
            "/{}/{}",
            "a".repeat(255),
            vec!["b".repeat(255); 3].join("/")
        );
        assert_eq!(at_limit.len(), 1024);
        assert!(Path::parse(&at_limit).is_ok());
        let over = format!("{at_limit}/c");
        assert_eq!(Path::parse(&over), Err(Error::TooLong(1026)));
        // One trailing `/` is not part of the path.
        assert_eq!(
            Path::parse(&format!("{at_limit}/")).unwrap().to_string(),
            at_limit
        );
    }

    #[test]
    fn url_decoding_cannot_bypass_grammar() {
        assert_eq!(
            Path::parse_url("%2e%2e"),
            Err(Error::DotSegment("..".into()))
        );
        assert!(matches!(
            Path::parse_url("a/%2e%2e%2fb"),
            Err(Error::Slash(_))
        ));
        assert_eq!(Path::parse_url("a/%00"), Err(Error::Nul));
        assert_eq!(Path::parse_url("a/%zz"), Err(Error::BadPercent));
        assert_eq!(Path::parse_url("a/%ff"), Err(Error::InvalidUtf8));
        assert_eq!(Path::parse_url("caf%C3%A9").unwrap().to_string(), "/café");
        assert_eq!(Path::parse_url("").unwrap(), Path::root());
        // What follows `/v1/kv/`: a leading `/` is an empty segment.
        assert_eq!(Path::parse_url("/x"), Err(Error::EmptySegment));
        assert_eq!(Path::parse_url("/"), Err(Error::EmptySegment));
        assert_eq!(Path::parse_url("a//b"), Err(Error::EmptySegment));
        assert_eq!(Path::parse_url("a/b/").unwrap().to_string(), "/a/b");
    }

    #[test]
    fn containment_and_ancestors() {
        let a = Path::parse("/a").unwrap();
        let ab = Path::parse("/a/b").unwrap();
        let ax = Path::parse("/ax").unwrap();
        assert!(a.contains(&ab) && a.contains(&a) && Path::root().contains(&a));
        assert!(!a.contains(&ax) && !ab.contains(&a));
        let anc: Vec<&str> = key_ancestors("a\0b\0c").collect();
        assert_eq!(anc, vec!["a\0b", "a", ""]);
        assert_eq!(key_ancestors("").count(), 0);
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(segs in proptest::collection::vec("[^/\0]{1,12}", 0..8)) {
            prop_assume!(segs.iter().all(|s| s != "." && s != ".."));
            let p = Path::from_segments(segs.iter().map(String::as_str)).unwrap();
            prop_assert_eq!(Path::parse(&p.to_string()).unwrap(), p.clone());
            prop_assert_eq!(p.segments().count(), segs.len());
            prop_assert_eq!(p.depth(), segs.len());
        }

        #[test]
        fn subtree_is_a_contiguous_key_range(
            a in proptest::collection::vec("[a-c!]{1,2}", 1..4),
            b in proptest::collection::vec("[a-c!]{1,2}", 0..5),
        ) {
            // Keys in the subtree of `a` are exactly `a` and the keys in [a\0, a\x01).
            let (a, b) = (a.join("\0"), b.join("\0"));
            let lo = format!("{a}\0");
            let hi = format!("{a}\x01");
            let in_range = b == a || (b.as_str() >= lo.as_str() && b.as_str() < hi.as_str());
            prop_assert_eq!(key_contains(&a, &b), in_range);
        }
    }
}
