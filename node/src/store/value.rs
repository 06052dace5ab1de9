//! Incoming JSON values: strict parsing, limits, and explosion into registers.
//!
//! A body is accepted only if it is non-empty UTF-8, one JSON value with nothing after it and no
//! object key given twice (`fuse_mount::json`, the rule the file view uses too), every number
//! representable without loss (integers within i64/u64, finite floats), nesting within the limit,
//! and every object key a valid path segment. Knows nothing of HTTP or storage.

use super::path::{self, Path};
use super::register::Kind;
use serde_json::Value;

/// Deepest nesting of arrays and objects accepted in one value.
pub const MAX_DEPTH: usize = 64;

/// Why a value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("body is empty, expected a JSON value")]
    Empty,
    #[error("body is not valid UTF-8")]
    InvalidUtf8,
    #[error("body is not valid JSON: {0}")]
    Syntax(String),
    #[error(
        "number {0} cannot be stored exactly (integers must fit in 64 bits, floats must be finite)"
    )]
    NumberOutOfRange(String),
    #[error("value nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("object key {key:?} under {at}: {source}")]
    Key {
        key: String,
        at: String,
        source: path::Error,
    },
}

/// Parses a request body into a JSON value, strictly.
pub fn parse(body: &[u8]) -> Result<Value, Error> {
    let text = std::str::from_utf8(body).map_err(|_| Error::InvalidUtf8)?;
    if text.trim().is_empty() {
        return Err(Error::Empty);
    }
    let value: Value = fuse_mount::json::parse(text).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("recursion limit") {
            Error::TooDeep
        } else if msg.contains("number out of range") {
            Error::NumberOutOfRange(first_number_out_of_range(text).unwrap_or_default())
        } else {
            Error::Syntax(msg)
        }
    })?;
    if let Some(n) = first_number_out_of_range(text) {
        return Err(Error::NumberOutOfRange(n));
    }
    if depth(&value) > MAX_DEPTH {
        return Err(Error::TooDeep);
    }
    Ok(value)
}

/// Nesting depth: scalars are 0, `[]` and `{}` are 1.
pub fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Scans valid JSON text for a number token that serde_json would round or reject.
fn first_number_out_of_range(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let tok = &text[start..i];
                let ok = if tok.contains(['.', 'e', 'E']) {
                    // Finite, and not a non-zero literal that underflows to zero (`1e-400`).
                    let mantissa = tok.split(['e', 'E']).next().unwrap_or(tok);
                    let nonzero = mantissa.bytes().any(|c| matches!(c, b'1'..=b'9'));
                    tok.parse::<f64>()
                        .is_ok_and(|f| f.is_finite() && (f != 0.0 || !nonzero))
                } else {
                    tok.parse::<i64>().is_ok() || tok.parse::<u64>().is_ok()
                };
                if !ok {
                    return Some(tok.to_owned());
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// Compact JSON text of a value (how leaves are stored).
pub fn to_text(v: &Value) -> Box<str> {
    // Serialising a Value into a String cannot fail: keys are strings and numbers are finite.
    serde_json::to_string(v)
        .expect("a serde_json::Value always serialises")
        .into_boxed_str()
}

/// Explodes a value written at `at` into (key, kind) pairs, parents before children: an object
/// becomes an `Object` register plus its members, anything else one leaf.
pub fn explode(at: &Path, v: &Value, out: &mut Vec<(Box<str>, Kind)>) -> Result<(), Error> {
    match v {
        Value::Object(members) => {
            out.push((at.key().into(), Kind::Object));
            for (k, child) in members {
                let p = at.child(k).map_err(|source| Error::Key {
                    key: k.clone(),
                    at: at.to_string(),
                    source,
                })?;
                explode(&p, child, out)?;
            }
        }
        other => out.push((at.key().into(), Kind::Leaf(to_text(other)))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_good_json() {
        assert_eq!(parse(b"5433").unwrap(), serde_json::json!(5433));
        assert_eq!(
            parse(b" {\"a\": [1, 2.5, \"x\"]} \n").unwrap(),
            serde_json::json!({"a": [1, 2.5, "x"]})
        );
        assert_eq!(
            parse(b"18446744073709551615").unwrap(),
            serde_json::json!(u64::MAX)
        );
        assert_eq!(
            parse(b"-9223372036854775808").unwrap(),
            serde_json::json!(i64::MIN)
        );
        assert_eq!(
            parse(b"\"1e999 in a string\"").unwrap(),
            serde_json::json!("1e999 in a string")
        );
    }

    #[test]
    fn rejects_bad_json() {
        assert_eq!(parse(b""), Err(Error::Empty));
        assert_eq!(parse(b"  \n"), Err(Error::Empty));
        assert_eq!(parse(b"\xff\xfe"), Err(Error::InvalidUtf8));
        assert!(matches!(parse(b"{\"a\":1} x"), Err(Error::Syntax(_))));
        assert!(matches!(parse(b"{\"a\":"), Err(Error::Syntax(_))));
        assert!(matches!(parse(b"1e400"), Err(Error::NumberOutOfRange(_))));
        assert_eq!(
            parse(b"[1e-400]"),
            Err(Error::NumberOutOfRange("1e-400".into()))
        );
        assert_eq!(parse(b"0.0e-400").unwrap(), serde_json::json!(0.0));
        assert_eq!(
            parse(b"[123456789012345678901234567890]"),
            Err(Error::NumberOutOfRange(
                "123456789012345678901234567890".into()
            ))
        );
        assert_eq!(
            parse(b"-9223372036854775809"),
            Err(Error::NumberOutOfRange("-9223372036854775809".into()))
        );
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(parse(deep.as_bytes()), Err(Error::TooDeep));
        let deeper = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(parse(deeper.as_bytes()), Err(Error::TooDeep));
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(parse(ok.as_bytes()).is_ok());
    }

    #[test]
    fn explodes_objects_parents_first() {
        let at = Path::parse("/a").unwrap();
        let mut out = Vec::new();
        explode(
            &at,
            &serde_json::json!({"x": 1, "y": {"z": "s"}, "e": {}}),
            &mut out,
        )
        .unwrap();
        let keys: Vec<_> = out.iter().map(|(k, _)| k.replace('\0', "/")).collect();
        assert_eq!(keys, vec!["a", "a/e", "a/x", "a/y", "a/y/z"]);
        assert_eq!(out[2].1, Kind::Leaf("1".into()));
        assert_eq!(out[4].1, Kind::Leaf("\"s\"".into()));
    }

    #[test]
    fn rejects_bad_object_keys() {
        let at = Path::parse("/a").unwrap();
        for bad in [
            r#"{"..": 1}"#,
            r#"{"x/y": 1}"#,
            r#"{"": 1}"#,
            r#"{"ok": {".": 2}}"#,
        ] {
            let v = parse(bad.as_bytes()).unwrap();
            let err = explode(&at, &v, &mut Vec::new()).unwrap_err();
            assert!(matches!(err, Error::Key { .. }), "{bad}: {err}");
        }
    }
}
