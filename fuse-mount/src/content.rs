//! The bytes of a key's file: how a JSON leaf is shown when read and how written bytes become a
//! value. Pure functions; knows nothing of inodes, handles or the store.
//!
//! Reading (`encode`):
//! - a string whose text is not itself a JSON text gives its raw text plus `"\n"`
//!   (`"hi"` reads as `hi\n`, `""` as `\n`);
//! - a string whose text *is* a JSON text (`"8080"`, `"true"`, `"null"`, `"[1]"`, `" 7"`,
//!   `"\"x\""`...) gives its JSON-quoted form plus `"\n"` (`"8080"` reads as `"8080"\n`), because
//!   its raw text would be read back as a number, boolean, ... — this keeps every read
//!   round-trippable;
//! - any other value gives compact JSON plus `"\n"`.
//!
//! Writing (`decode`): one trailing `"\n"` is dropped; if the rest parses as JSON (the whole of
//! it, [`crate::json`] rules: `serde_json`'s, surrounding whitespace allowed, no object key given
//! twice) that value is stored, else the rest is stored as a string, which must be valid UTF-8.
//! Empty content is the empty string.
//!
//! The property that holds: `decode(&encode(v)) == Ok(v)` for every value that is not an object
//! (objects are directories and are never read as a file).

use std::fmt;

use serde_json::Value;

/// Written bytes that are neither JSON nor UTF-8 text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotUtf8;

impl fmt::Display for NotUtf8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("content is neither JSON nor UTF-8 text")
    }
}

impl std::error::Error for NotUtf8 {}

/// The bytes a file shows for `value` (see the module docs for the rule).
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = match value {
        Value::String(s) if !is_json_text(s) => s.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    };
    out.push(b'\n');
    out
}

/// The value written bytes stand for (see the module docs for the rule).
pub fn decode(bytes: &[u8]) -> Result<Value, NotUtf8> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(NotUtf8);
    };
    Ok(crate::json::parse(text).unwrap_or_else(|_| Value::String(text.to_owned())))
}

/// Would `text`, written raw, be read back as JSON rather than as this string?
fn is_json_text(text: &str) -> bool {
    crate::json::parse(text).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn check(value: Value, shown: &str) {
        assert_eq!(String::from_utf8(encode(&value)).unwrap(), shown);
        assert_eq!(decode(shown.as_bytes()), Ok(value));
    }

    #[test]
    fn examples_from_the_design() {
        assert_eq!(decode(b"8080\n"), Ok(json!(8080)));
        assert_eq!(decode(b"hi\n"), Ok(json!("hi")));
        assert_eq!(decode(b"\"8080\"\n"), Ok(json!("8080")));
        assert_eq!(decode(b"{\"a\":1}\n"), Ok(json!({"a": 1})));
        assert_eq!(decode(b""), Ok(json!("")));
        assert_eq!(decode(b"\n"), Ok(json!("")));
        assert_eq!(decode(b"\xff\xfe\n"), Err(NotUtf8));
        // Only one newline is dropped.
        assert_eq!(decode(b"hi\n\n"), Ok(json!("hi\n")));
    }

    #[test]
    fn strings_are_raw_unless_they_read_back_as_json() {
        check(json!("hi"), "hi\n");
        check(json!(""), "\n");
        check(json!("two\nlines"), "two\nlines\n");
        check(json!("ends\n"), "ends\n\n");
        check(json!("8080"), "\"8080\"\n");
        check(json!("true"), "\"true\"\n");
        check(json!("null"), "\"null\"\n");
        check(json!(" 7 "), "\" 7 \"\n");
        check(json!("8080\n"), "\"8080\\n\"\n");
        check(json!("\"q\""), "\"\\\"q\\\"\"\n");
        check(json!("{not json"), "{not json\n");
    }

    #[test]
    fn other_values_are_compact_json() {
        check(json!(8080), "8080\n");
        check(json!(-1.5), "-1.5\n");
        check(json!(true), "true\n");
        check(json!(null), "null\n");
        check(json!([1, "a", {"b": null}]), "[1,\"a\",{\"b\":null}]\n");
        // Needs serde_json's `float_roundtrip`: the default parser may be one ulp off.
        let float = json!(5.510874551353719e90);
        assert_eq!(decode(&encode(&float)), Ok(float));
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".*".prop_map(Value::String),
            // Strings that look like JSON or whitespace-padded JSON.
            prop_oneof![
                Just("8080".to_owned()),
                Just("true".to_owned()),
                Just("".to_owned()),
                Just("\n".to_owned()),
                Just(" null\n".to_owned()),
                "[ 0-9\\[\\]{}\",:.tfnrue\\n-]{0,12}",
            ]
            .prop_map(Value::String),
        ]
    }

    fn any_value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{0,3}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn every_non_object_round_trips(value in any_value()) {
            prop_assume!(!value.is_object());
            prop_assert_eq!(decode(&encode(&value)), Ok(value));
        }

        #[test]
        fn every_object_decodes_from_its_json(value in any_value()) {
            prop_assume!(value.is_object());
            prop_assert_eq!(decode(&encode(&value)), Ok(value));
        }
    }
}
