//! How command-line input becomes request parts: store paths into URL paths, `put` values into
//! JSON bodies, versions into precondition headers. Pure functions.
//!
//! Must not validate paths or values: the node does, and its error is what the user sees.

/// `text` with every control character (C0, DEL, C1) and bidirectional control written as an
/// escape (`\n`, `\t`, `\r`, `\x1b`, `\u{9b}`, `\u{202e}`), so a key or name shown to a person
/// can neither split a line, reach the terminal as a command, nor reorder what it shows. A
/// backslash is shown as it is.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    // Bidirectional controls reorder what follows them on the line (U+202E shows `txt.exe` as
    // `exe.txt`): they are escaped too.
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(hidden) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if hidden(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.into()
}

pub use crate::client::paths::{api_path, encode_component, store_path};

/// The JSON body for a `put` value: the text itself when it parses as JSON (`8080`, `true`,
/// `{"a":1}`, `"8080"`), else the text as a JSON string (`hi` → `"hi"`). Valid JSON is sent as
/// typed, not re-serialised, so the node judges numbers and keys exactly as given.
pub fn put_body(text: &str) -> String {
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
        text.to_string()
    } else {
        serde_json::Value::String(text.to_string()).to_string()
    }
}

/// File content as a value: one trailing newline dropped (`echo 8080 > f` holds `8080\n`).
pub fn strip_one_newline(text: &str) -> &str {
    text.strip_suffix('\n').unwrap_or(text)
}

/// An `If-Match` header value for a version, quoted once whether or not it was typed quoted.
pub fn if_match(version: &str) -> String {
    let bare = version
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(version);
    format!("\"{bare}\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn printable_escapes_every_control_character() {
        assert_eq!(printable("plain/ünïcode"), "plain/ünïcode");
        assert_eq!(
            printable("a\nb\tc\rd\u{1b}[2J\u{7f}\u{9b}"),
            "a\\nb\\tc\\rd\\x1b[2J\\x7f\\u{9b}"
        );
        assert_eq!(printable("doc\u{202e}txt.exe"), "doc\\u{202e}txt.exe");
        for c in (0..0x20u32).chain(0x7f..0xa0).filter_map(char::from_u32) {
            let shown = printable(&c.to_string()).into_owned();
            assert!(!shown.chars().any(char::is_control), "{c:?} -> {shown:?}");
        }
    }

    fn stored(text: &str) -> Value {
        serde_json::from_str(&put_body(text)).unwrap()
    }

    #[test]
    fn put_values_are_json_when_they_parse_else_strings() {
        assert_eq!(stored("8080"), json!(8080));
        assert_eq!(stored("-1.5"), json!(-1.5));
        assert_eq!(stored("hi"), json!("hi"));
        assert_eq!(stored("\"8080\""), json!("8080"));
        assert_eq!(stored("true"), json!(true));
        assert_eq!(stored("null"), json!(null));
        assert_eq!(stored("[1, 2]"), json!([1, 2]));
        assert_eq!(stored("{\"a\": {\"b\": 1}}"), json!({"a": {"b": 1}}));
        assert_eq!(stored(""), json!(""));
        assert_eq!(stored("hello world"), json!("hello world"));
        assert_eq!(stored("{not json"), json!("{not json"));
        assert_eq!(stored("8080 8081"), json!("8080 8081"));
        assert_eq!(
            stored("line\nbreak \"q\" \\"),
            json!("line\nbreak \"q\" \\")
        );
        // Valid JSON goes out byte for byte, so the node sees numbers as typed.
        assert_eq!(
            put_body("100000000000000000000000"),
            "100000000000000000000000"
        );
        assert_eq!(put_body(" 1 "), " 1 ");
    }

    #[test]
    fn file_content_loses_exactly_one_newline() {
        assert_eq!(strip_one_newline("8080\n"), "8080");
        assert_eq!(strip_one_newline("a\n\n"), "a\n");
        assert_eq!(strip_one_newline("a"), "a");
        assert_eq!(stored(strip_one_newline("\"8080\"\n")), json!("8080"));
        assert_eq!(stored(strip_one_newline("hi\n")), json!("hi"));
    }

    #[test]
    fn if_match_is_quoted_once() {
        assert_eq!(if_match("1-0-ab"), "\"1-0-ab\"");
        assert_eq!(if_match("\"1-0-ab\""), "\"1-0-ab\"");
    }
}
