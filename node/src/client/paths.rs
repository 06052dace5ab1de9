//! The URL paths of the REST API (`docs/api.md`): the prefixes of its calls, and how a store
//! path becomes a URL path. Pure functions.

/// URL prefix of the key-value calls.
pub const KV: &str = "/v1/kv";
/// URL prefix of watch streams.
pub const WATCH: &str = "/v1/watch";

/// The store path as typed, with a leading `/` added when it is missing (`app/x` → `/app/x`).
pub fn store_path(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

/// The URL path of a store path under an API prefix such as `/v1/kv`: every segment
/// percent-encoded, empty segments and a trailing `/` kept for the node to judge.
pub fn api_path(prefix: &str, path: &str) -> String {
    let path = store_path(path);
    let segments: Vec<String> = path.split('/').map(encode_component).collect();
    format!("{prefix}{}", segments.join("/"))
}

/// Percent-encodes everything except the unreserved characters `A-Za-z0-9-._~`.
pub fn encode_component(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_get_a_leading_slash_and_encoded_segments() {
        assert_eq!(api_path("/v1/kv", "/app/db/port"), "/v1/kv/app/db/port");
        assert_eq!(api_path("/v1/kv", "app/db"), "/v1/kv/app/db");
        assert_eq!(api_path("/v1/kv", "/"), "/v1/kv/");
        assert_eq!(api_path("/v1/kv", ""), "/v1/kv/");
        assert_eq!(api_path("/v1/watch", "/a b/ü"), "/v1/watch/a%20b/%C3%BC");
        assert_eq!(api_path("/v1/kv", "/a?b#c%d"), "/v1/kv/a%3Fb%23c%25d");
        assert_eq!(api_path("/v1/kv", "/A-z_0.9~"), "/v1/kv/A-z_0.9~");
        // Not judged here: the node answers bad_path for these.
        assert_eq!(api_path("/v1/kv", "/a//b/"), "/v1/kv/a//b/");
        assert_eq!(api_path("/v1/kv", "/../x"), "/v1/kv/../x");
        assert_eq!(api_path("/v1/kv", "/a+b:c@d"), "/v1/kv/a%2Bb%3Ac%40d");
    }
}
