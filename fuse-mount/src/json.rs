//! The JSON text herd accepts, in a request body and in a file written through the mount alike:
//! `serde_json`'s grammar (its recursion limit included), with no object naming a key twice.
//! `serde_json` keeps the last of a repeated key and drops the others without a word; a
//! configuration store must not lose what it was given, so such text is refused.
//!
//! Pure; knows nothing of the store, HTTP or files.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;

/// Parses one JSON text (surrounding whitespace allowed) into a value; an object that names a
/// key twice is an error saying which key and where.
pub fn parse(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str::<Strict>(text).map(|s| s.0)
}

/// A value parsed with [`StrictVisitor`].
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

/// serde_json's own value visitor, but refusing a repeated object key.
struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if members.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "duplicate key {key:?} in an object"
                )));
            }
            let Strict(v) = map.next_value()?;
            members.insert(key, v);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn a_repeated_key_is_refused_anywhere() {
        for text in [
            r#"{"a":1,"a":2}"#,
            r#"{"x":{"b":true,"c":0,"b":false}}"#,
            r#"[1,{"k":"v","k":"v"}]"#,
            r#"{"\u0061":1,"a":2}"#,
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with("duplicate key"), "{text}: {e}");
        }
        assert_eq!(parse(r#" {"a":{"a":1}} "#).unwrap(), json!({"a": {"a": 1}}));
    }

    #[test]
    fn deep_nesting_hits_the_recursion_limit_as_before() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(parse(&deep)
            .unwrap_err()
            .to_string()
            .contains("recursion limit"));
    }

    proptest! {
        /// Without repeated keys, the same value as serde_json's own parser.
        #[test]
        fn agrees_with_serde_json(text in r#"[\[\]{}":,0-9a-c.e\-tfrnul ]{0,40}"#) {
            let ours = parse(&text);
            let theirs = serde_json::from_str::<Value>(&text);
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(a), Ok(_)) => prop_assert!(a.to_string().starts_with("duplicate key"), "{}", a),
                (Ok(_), Err(_)) => prop_assert!(false, "accepted what serde_json refuses: {}", text),
                (Err(_), Err(_)) => {}
            }
        }
    }
}
