//! The REST API end to end: reads, writes, the leaf/directory rule, preconditions, batches,
//! tokens, node endpoints, and every bad input (each refused with its status and code, leaving
//! the document and the revision as they were).

use bytes::Bytes;
use http::{header, HeaderName, Method, StatusCode};
use node::client::{Client, Response};
use serde_json::{json, Value};
use std::time::Duration;
use tests::{basic_auth, header_u64, raw_https, raw_plaintext, TestNode};

#[tokio::test]
async fn put_get_delete_round_trip() {
    let n = TestNode::start().await;
    let r = n.put("/v1/kv/app/db/port", "5433").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let v = r.json().unwrap();
    assert!(v["version"].is_string() && v["revision"].is_u64());
    assert_eq!(
        r.headers[header::ETAG],
        format!("\"{}\"", v["version"].as_str().unwrap())
    );
    assert_eq!(
        n.get("/v1/kv/app/db/port").await.json().unwrap(),
        json!(5433)
    );
    assert_eq!(n.doc().await, json!({"app": {"db": {"port": 5433}}}));
    let r = n.send(Method::DELETE, "/v1/kv/app/db", &[], None).await;
    assert_eq!(r.status, 200);
    assert_eq!(n.get("/v1/kv/app/db/port").await.status, 404);
    assert_eq!(
        n.get("/v1/kv/app/db/port").await.error_code().as_deref(),
        Some("not_found")
    );
    n.shutdown().await;
}

fn ok(r: &Response) -> Value {
    assert!(
        r.status.is_success(),
        "expected success, got {} {:?}",
        r.status,
        r.body
    );
    r.json().expect("json body")
}

fn keys(r: &Response) -> Value {
    ok(r)["keys"].clone()
}

#[tokio::test]
async fn dry_run_checks_a_put_and_stores_nothing() {
    let n = TestNode::start().await;
    let rev = n.revision().await;
    let r = n.put("/v1/kv/app/port?dry_run", "8080").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json().unwrap(), json!({"dry_run": true}));
    assert_eq!(n.get("/v1/kv/app/port").await.status, 404);
    let r = n.put("/v1/kv/app/port?dry_run", r#"{"a/b": 1}"#).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json().unwrap()["error"]["code"], "bad_key");
    let r = n.put("/v1/kv/.herd/x?dry_run", "1").await;
    assert_eq!(r.status, 403);
    assert_eq!(n.revision().await, rev, "a dry run never writes");
}

#[tokio::test]
async fn leaves_and_directories_follow_the_visibility_rule() {
    let n = TestNode::start().await;
    // A leaf with a newer write below it becomes a directory.
    ok(&n.put("/v1/kv/a", "1").await);
    ok(&n.put("/v1/kv/a/b", "2").await);
    assert_eq!(n.doc().await, json!({"a": {"b": 2}}));
    assert_eq!(ok(&n.get("/v1/kv/a").await), json!({"b": 2}));

    // An object replaces the whole subtree.
    ok(&n
        .put("/v1/kv/a", r#"{"x": 1, "y": {"z": true}, "e": {}}"#)
        .await);
    assert_eq!(
        n.doc().await,
        json!({"a": {"x": 1, "y": {"z": true}, "e": {}}})
    );
    assert_eq!(n.get("/v1/kv/a/b").await.status, 404);
    assert_eq!(ok(&n.get("/v1/kv/a/y/z").await), json!(true));
    // An empty object is an empty directory.
    assert_eq!(ok(&n.get("/v1/kv/a/e").await), json!({}));
    assert_eq!(keys(&n.get("/v1/kv/a/e?keys").await), json!([]));

    // Writes inside the new object merge with it.
    ok(&n.put("/v1/kv/a/y/w", r#""s""#).await);
    assert_eq!(ok(&n.get("/v1/kv/a/y").await), json!({"w": "s", "z": true}));

    // Listing: directories end with '/', byte order; a leaf is not a directory.
    assert_eq!(
        keys(&n.get("/v1/kv/a?keys").await),
        json!(["e/", "x", "y/"])
    );
    assert_eq!(
        keys(&n.get("/v1/kv/a/?keys").await),
        json!(["e/", "x", "y/"])
    );
    let r = n.get("/v1/kv/a/x?keys").await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (StatusCode::CONFLICT, Some("not_a_directory"))
    );
    let r = n.get("/v1/kv/nothing?keys").await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    // Other JSON values are leaves.
    ok(&n.put("/v1/kv/v/arr", "[1, [2, {\"k\": null}]]").await);
    ok(&n.put("/v1/kv/v/str", r#""hi""#).await);
    ok(&n.put("/v1/kv/v/nul", "null").await);
    ok(&n.put("/v1/kv/v/f", "-1.5e3").await);
    ok(&n.put("/v1/kv/v/big", "18446744073709551615").await);
    ok(&n.put("/v1/kv/v/neg", "-9223372036854775808").await);
    assert_eq!(
        ok(&n.get("/v1/kv/v").await),
        json!({"arr": [1, [2, {"k": null}]], "big": 18446744073709551615u64, "f": -1500.0,
               "neg": i64::MIN, "nul": null, "str": "hi"})
    );
    assert_eq!(
        keys(&n.get("/v1/kv/v?keys").await),
        json!(["arr", "big", "f", "neg", "nul", "str"])
    );

    // The limits themselves are accepted: 64 levels, a 255-byte segment, 32 segments.
    let deep = format!("{}{}", "[".repeat(64), "]".repeat(64));
    ok(&n.put("/v1/kv/deep", &deep).await);
    let long = "s".repeat(255);
    ok(&n.put(&format!("/v1/kv/{long}"), "1").await);
    let many = vec!["m"; 32].join("/");
    ok(&n.put(&format!("/v1/kv/{many}"), "1").await);
    assert_eq!(ok(&n.get(&format!("/v1/kv/{many}")).await), json!(1));
    // A JSON content type with parameters is JSON.
    let charset = [(
        header::CONTENT_TYPE,
        "application/json; charset=utf-8".to_owned(),
    )];
    ok(&n
        .send(Method::PUT, "/v1/kv/v/ct", &charset, Some("7"))
        .await);
    assert_eq!(ok(&n.get("/v1/kv/v/ct").await), json!(7));
    ok(&n.send(Method::DELETE, "/v1/kv/v/ct", &[], None).await);
    // Percent-encoded segments are decoded: a space, UTF-8.
    ok(&n.put("/v1/kv/enc/a%20b/%C3%A9", "1").await);
    assert_eq!(ok(&n.get("/v1/kv/enc").await), json!({"a b": {"é": 1}}));

    // Deleting removes the subtree; deleting nothing is 404.
    ok(&n.send(Method::DELETE, "/v1/kv/a", &[], None).await);
    assert_eq!(n.get("/v1/kv/a").await.status, 404);
    assert_eq!(n.get("/v1/kv/a/y/w").await.status, 404);
    let r = n.send(Method::DELETE, "/v1/kv/a", &[], None).await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    // A write below a deleted directory starts afresh.
    ok(&n.put("/v1/kv/a/new", "3").await);
    assert_eq!(ok(&n.get("/v1/kv/a").await), json!({"new": 3}));

    // The root lists everything but the node's own `.herd`.
    let root = keys(&n.get("/v1/kv/?keys").await);
    let names: Vec<&str> = root
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(names.contains(&"a/") && names.contains(&"v/"), "{names:?}");
    assert!(!names.iter().any(|k| k.starts_with(".herd")), "{names:?}");
    assert_eq!(ok(&n.get("/v1/kv").await), n.doc().await);
    n.shutdown().await;
}

fn etag(r: &Response) -> String {
    r.headers[header::ETAG].to_str().unwrap().to_owned()
}

fn version_of(r: &Response) -> String {
    ok(r)["version"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn etags_preconditions_and_revisions() {
    let n = TestNode::start().await;
    let start_rev = n.revision().await;
    let r1 = n.put("/v1/kv/cfg", "1").await;
    let v1 = version_of(&r1);
    assert_eq!(ok(&r1)["revision"], json!(start_rev + 1));
    assert_eq!(header_u64(&r1, "x-herd-revision"), start_rev + 1);
    let g = n.get("/v1/kv/cfg").await;
    assert_eq!(etag(&g), format!("\"{v1}\""));
    assert_eq!(header_u64(&g, "x-herd-revision"), start_rev + 1);

    // If-Match with the current version (quoted or not) applies the write.
    let if_match = |v: &str| vec![(header::IF_MATCH, v.to_owned())];
    let r2 = n
        .send(
            Method::PUT,
            "/v1/kv/cfg",
            &if_match(&format!("\"{v1}\"")),
            Some("2"),
        )
        .await;
    let v2 = version_of(&r2);
    assert!(v2 != v1);
    let r3 = n
        .send(Method::PUT, "/v1/kv/cfg", &if_match(&v2), Some("3"))
        .await;
    let v3 = version_of(&r3);
    assert_eq!(ok(&r3)["revision"], json!(start_rev + 3));

    // A stale one is refused and changes nothing.
    let r = n
        .send(Method::PUT, "/v1/kv/cfg", &if_match(&v1), Some("4"))
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (StatusCode::PRECONDITION_FAILED, Some("precondition_failed"))
    );
    let r = n
        .send(Method::DELETE, "/v1/kv/cfg", &if_match(&v2), None)
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (StatusCode::PRECONDITION_FAILED, Some("precondition_failed"))
    );
    assert_eq!(ok(&n.get("/v1/kv/cfg").await), json!(3));
    assert_eq!(n.revision().await, start_rev + 3);
    // If-Match on a missing path fails too.
    let r = n
        .send(Method::PUT, "/v1/kv/missing", &if_match(&v3), Some("1"))
        .await;
    assert_eq!(r.error_code().as_deref(), Some("precondition_failed"));
    assert_eq!(n.get("/v1/kv/missing").await.status, 404);

    // If-None-Match: * creates only.
    let none_match = vec![(header::IF_NONE_MATCH, "*".to_owned())];
    ok(&n
        .send(Method::PUT, "/v1/kv/once", &none_match, Some("\"first\""))
        .await);
    let r = n
        .send(Method::PUT, "/v1/kv/once", &none_match, Some("\"second\""))
        .await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (StatusCode::PRECONDITION_FAILED, Some("already_exists"))
    );
    // Also when a directory is there.
    let r = n.send(Method::PUT, "/v1/kv/cfg2/x", &[], Some("1")).await;
    ok(&r);
    let r = n
        .send(Method::PUT, "/v1/kv/cfg2", &none_match, Some("1"))
        .await;
    assert_eq!(r.error_code().as_deref(), Some("already_exists"));
    assert_eq!(ok(&n.get("/v1/kv/once").await), json!("first"));

    // A directory's ETag is the newest version in its subtree, deletions included.
    let vx = version_of(&n.put("/v1/kv/d/x", "1").await);
    assert_eq!(etag(&n.get("/v1/kv/d").await), format!("\"{vx}\""));
    let vy = version_of(&n.put("/v1/kv/d/y", "2").await);
    assert_eq!(etag(&n.get("/v1/kv/d").await), format!("\"{vy}\""));
    let vdel = version_of(&n.send(Method::DELETE, "/v1/kv/d/y", &[], None).await);
    assert_eq!(etag(&n.get("/v1/kv/d").await), format!("\"{vdel}\""));
    // DELETE with the current ETag works.
    ok(&n
        .send(Method::DELETE, "/v1/kv/d", &if_match(&vdel), None)
        .await);
    assert_eq!(n.get("/v1/kv/d").await.status, 404);
    n.shutdown().await;
}

#[tokio::test]
async fn batches_are_atomic() {
    let n = TestNode::start().await;
    ok(&n.put("/v1/kv/old", r#"{"gone": 1, "kept": 2}"#).await);
    let before = n.revision().await;
    let batch = json!({"ops": [
        {"op": "put", "path": "/b/one", "value": 1},
        {"op": "put", "path": "/b/two", "value": {"deep": [1, 2]}},
        {"op": "put", "path": "/b/ttl", "value": "t", "ttl": "1h"},
        {"op": "delete", "path": "/old/gone"},
    ]});
    let r = n
        .send(Method::POST, "/v1/batch", &[], Some(&batch.to_string()))
        .await;
    let body = ok(&r);
    let version = body["version"].as_str().unwrap().to_owned();
    assert_eq!(
        body["revision"],
        json!(before + 1),
        "one revision for the whole batch"
    );
    assert_eq!(n.revision().await, before + 1);
    assert_eq!(
        n.doc().await,
        json!({"b": {"one": 1, "two": {"deep": [1, 2]}, "ttl": "t"}, "old": {"kept": 2}})
    );
    for p in ["/v1/kv/b/one", "/v1/kv/b/two", "/v1/kv/b/ttl"] {
        assert_eq!(
            etag(&n.get(p).await),
            format!("\"{version}\""),
            "{p} has the batch's version"
        );
    }
    assert_eq!(
        etag(&n.get("/v1/kv/old").await),
        format!("\"{version}\""),
        "the delete has it too"
    );

    // One bad op anywhere refuses the whole batch; nothing of it becomes visible.
    let doc = n.doc().await;
    let rev = n.revision().await;
    let good = json!({"op": "put", "path": "/b/new", "value": 9});
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"op": "put", "path": "/b/../x", "value": 1}),
            400,
            "bad_path",
        ),
        (
            json!({"op": "put", "path": "b/relative", "value": 1}),
            400,
            "bad_path",
        ),
        (
            json!({"op": "put", "path": "/b/k", "value": {"a/b": 1}}),
            400,
            "bad_key",
        ),
        (json!({"op": "put", "path": "/b/k"}), 400, "bad_request"),
        (json!({"op": "frob", "path": "/b/k"}), 400, "bad_request"),
        (
            json!({"op": "delete", "path": "/b/one", "value": 1}),
            400,
            "bad_request",
        ),
        (
            json!({"op": "put", "path": "/b/k", "value": 1, "ttl": "soon"}),
            400,
            "bad_request",
        ),
        (
            json!({"op": "put", "path": "/b/k", "value": {"o": 1}, "ttl": "1s"}),
            400,
            "bad_request",
        ),
        (
            json!({"op": "put", "path": "/b/new/inner", "value": 1}),
            400,
            "bad_request",
        ),
        (
            json!({"op": "put", "path": "/.herd/x", "value": 1}),
            403,
            "reserved_path",
        ),
        (json!({"op": "delete", "path": "/"}), 403, "reserved_path"),
        (
            json!({"op": "delete", "path": "/no/such/thing"}),
            404,
            "not_found",
        ),
        (
            json!({"op": "put", "path": "/b/k", "value": 1, "extra": true}),
            400,
            "bad_json",
        ),
    ];
    for (bad, status, code) in cases {
        for ops in [
            vec![good.clone(), bad.clone()],
            vec![bad.clone(), good.clone()],
        ] {
            let body = json!({ "ops": ops }).to_string();
            let r = n.send(Method::POST, "/v1/batch", &[], Some(&body)).await;
            assert_eq!(
                (r.status.as_u16(), r.error_code().as_deref()),
                (status, Some(code)),
                "batch {body}: {:?}",
                r.body
            );
            assert_eq!(n.doc().await, doc, "batch {body} left a trace");
            assert_eq!(n.revision().await, rev, "batch {body} took a revision");
        }
    }
    for (body, code) in [
        (r#"{"ops": []}"#, "bad_request"),
        (
            r#"{"ops": [{"op": "put", "path": "/x", "value": 1}]"#,
            "bad_json",
        ),
        (r#"{"ops": 1}"#, "bad_json"),
        (r#"[]"#, "bad_json"),
        (r#"[{"op": "put", "path": "/x", "value": 1}]"#, "bad_json"),
        (
            r#"{"ops": [{"op": "put", "path": "/x", "value": 1e400}]}"#,
            "number_out_of_range",
        ),
        ("", "empty_body"),
    ] {
        let r = n.send(Method::POST, "/v1/batch", &[], Some(body)).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_deref()),
            (400, Some(code)),
            "batch {body}"
        );
        assert_eq!(n.doc().await, doc);
    }
    // A bare array of ops is the likeliest slip: the message shows the shape.
    let r = n
        .send(
            Method::POST,
            "/v1/batch",
            &[],
            Some(r#"[{"op": "put", "path": "/x"}]"#),
        )
        .await;
    let message = r.json().unwrap()["error"]["message"].to_string();
    assert!(message.contains(r#"{\"ops\": ["#), "{message}");
    let r = n.send(Method::GET, "/v1/batch", &[], None).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_deref()),
        (405, Some("method_not_allowed"))
    );
    assert_eq!(n.revision().await, rev);
    n.shutdown().await;
}

/// One request of the bad-input table.
struct Bad {
    what: &'static str,
    client: Client,
    method: Method,
    path: String,
    headers: Vec<(HeaderName, String)>,
    body: Option<Bytes>,
    status: u16,
    code: &'static str,
}

/// The largest value the bad-input node accepts, so bodies over it stay small.
const SMALL_LIMIT: usize = 4096;

#[tokio::test]
async fn every_bad_input_is_refused_and_changes_nothing() {
    let n = TestNode::start_with(|c| c.api.max_value_bytes = SMALL_LIMIT).await;
    let reader = n.client_with(Some(&n.token("reader", "read", None).await));
    let scoped = n.client_with(Some(&n.token("scoped", "write", Some("/app")).await));
    let anonymous = n.client_with(None);
    let wrong = n.client_with(Some(
        "herd_0000000000000000000000000000000000000000000000000000000000000000",
    ));
    let admin = n.client.clone();
    ok(&n
        .put("/v1/kv/app", r#"{"name": "shop", "port": 8080}"#)
        .await);
    ok(&n.put("/v1/kv/other", "1").await);
    let stale = version_of(&n.put("/v1/kv/app/port", "8080").await);
    ok(&n.put("/v1/kv/app/port", "8081").await);
    let doc = n.doc().await;
    let rev = n.revision().await;

    let seg256 = "s".repeat(256);
    let long_key = vec!["k".repeat(250); 5].join("/");
    let segs33 = vec!["m"; 33].join("/");
    let too_deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
    let far_too_deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
    let big = format!("\"{}\"", "x".repeat(SMALL_LIMIT));
    let basic_wrong = basic_auth("me", "herd_not_a_token");

    let put = |what, client: &Client, path: &str, body: &[u8], status, code| Bad {
        what,
        client: client.clone(),
        method: Method::PUT,
        path: path.to_owned(),
        headers: Vec::new(),
        body: Some(Bytes::copy_from_slice(body)),
        status,
        code,
    };
    let req = |what, client: &Client, method: Method, path: &str, status, code| Bad {
        what,
        client: client.clone(),
        method,
        path: path.to_owned(),
        headers: Vec::new(),
        body: None,
        status,
        code,
    };
    let with = |mut bad: Bad, name: HeaderName, value: &str| {
        bad.headers.push((name, value.to_owned()));
        bad
    };
    let batch = |what, client: &Client, body: Value, status, code| Bad {
        what,
        client: client.clone(),
        method: Method::POST,
        path: "/v1/batch".to_owned(),
        headers: Vec::new(),
        body: Some(Bytes::from(body.to_string())),
        status,
        code,
    };
    let cases = vec![
        // Bodies.
        put(
            "malformed json",
            &admin,
            "/v1/kv/app/x",
            br#"{"a":"#,
            400,
            "bad_json",
        ),
        put(
            "bare word",
            &admin,
            "/v1/kv/app/x",
            b"hello",
            400,
            "bad_json",
        ),
        put(
            "trailing garbage",
            &admin,
            "/v1/kv/app/x",
            br#"{"a":1} x"#,
            400,
            "bad_json",
        ),
        put(
            "two values",
            &admin,
            "/v1/kv/app/x",
            b"1 2",
            400,
            "bad_json",
        ),
        put(
            "invalid utf-8",
            &admin,
            "/v1/kv/app/x",
            b"\"\xff\xfe\"",
            400,
            "invalid_utf8",
        ),
        put(
            "1e400",
            &admin,
            "/v1/kv/app/x",
            b"1e400",
            400,
            "number_out_of_range",
        ),
        put(
            "-1e400 inside",
            &admin,
            "/v1/kv/app/x",
            br#"{"n": [-1e400]}"#,
            400,
            "number_out_of_range",
        ),
        put(
            "30-digit integer",
            &admin,
            "/v1/kv/app/x",
            b"123456789012345678901234567890",
            400,
            "number_out_of_range",
        ),
        put(
            "u64::MAX + 1",
            &admin,
            "/v1/kv/app/x",
            b"18446744073709551616",
            400,
            "number_out_of_range",
        ),
        put(
            "65 levels",
            &admin,
            "/v1/kv/app/x",
            too_deep.as_bytes(),
            400,
            "too_deep",
        ),
        put(
            "1000 levels",
            &admin,
            "/v1/kv/app/x",
            far_too_deep.as_bytes(),
            400,
            "too_deep",
        ),
        put("empty body", &admin, "/v1/kv/app/x", b"", 400, "empty_body"),
        put(
            "blank body",
            &admin,
            "/v1/kv/app/x",
            b" \n",
            400,
            "empty_body",
        ),
        req(
            "no body",
            &admin,
            Method::PUT,
            "/v1/kv/app/x",
            400,
            "empty_body",
        ),
        with(
            put(
                "text/plain",
                &admin,
                "/v1/kv/app/x",
                b"1",
                415,
                "unsupported_media_type",
            ),
            header::CONTENT_TYPE,
            "text/plain",
        ),
        with(
            put(
                "form content type",
                &admin,
                "/v1/kv/app/x",
                b"1",
                415,
                "unsupported_media_type",
            ),
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        ),
        put(
            "body over the limit",
            &admin,
            "/v1/kv/app/x",
            big.as_bytes(),
            413,
            "payload_too_large",
        ),
        put(
            "key with a slash",
            &admin,
            "/v1/kv/app/x",
            br#"{"a/b": 1}"#,
            400,
            "bad_key",
        ),
        put(
            "key ..",
            &admin,
            "/v1/kv/app/x",
            br#"{"..": 1}"#,
            400,
            "bad_key",
        ),
        put(
            "key .",
            &admin,
            "/v1/kv/app/x",
            br#"{"ok": {".": 1}}"#,
            400,
            "bad_key",
        ),
        put(
            "empty key",
            &admin,
            "/v1/kv/app/x",
            br#"{"": 1}"#,
            400,
            "bad_key",
        ),
        put(
            "key with NUL",
            &admin,
            "/v1/kv/app/x",
            br#"{"a\u0000b": 1}"#,
            400,
            "bad_key",
        ),
        put(
            "key of 256 bytes",
            &admin,
            "/v1/kv/app/x",
            format!("{{\"{seg256}\": 1}}").as_bytes(),
            400,
            "bad_key",
        ),
        // Paths.
        put("..", &admin, "/v1/kv/app/../other", b"1", 400, "bad_path"),
        put(
            "trailing ..",
            &admin,
            "/v1/kv/app/..",
            b"1",
            400,
            "bad_path",
        ),
        put(".", &admin, "/v1/kv/app/./x", b"1", 400, "bad_path"),
        put("//", &admin, "/v1/kv/app//x", b"1", 400, "bad_path"),
        put("NUL", &admin, "/v1/kv/app/a%00b", b"1", 400, "bad_path"),
        put(
            "%2e%2e%2f",
            &admin,
            "/v1/kv/app/%2e%2e%2fother",
            b"1",
            400,
            "bad_path",
        ),
        put("%2e%2e", &admin, "/v1/kv/app/%2e%2e", b"1", 400, "bad_path"),
        put("%2F", &admin, "/v1/kv/app/a%2Fb", b"1", 400, "bad_path"),
        put(
            "bad percent",
            &admin,
            "/v1/kv/app/a%zz",
            b"1",
            400,
            "bad_path",
        ),
        put(
            "invalid utf-8 in path",
            &admin,
            "/v1/kv/app/a%ff",
            b"1",
            400,
            "bad_path",
        ),
        put(
            "256-byte segment",
            &admin,
            &format!("/v1/kv/app/{seg256}"),
            b"1",
            400,
            "bad_path",
        ),
        put(
            "path over 1024 bytes",
            &admin,
            &format!("/v1/kv/{long_key}"),
            b"1",
            400,
            "bad_path",
        ),
        put(
            "33 segments",
            &admin,
            &format!("/v1/kv/{segs33}"),
            b"1",
            400,
            "bad_path",
        ),
        req(
            "GET ..",
            &admin,
            Method::GET,
            "/v1/kv/app/../other",
            400,
            "bad_path",
        ),
        req(
            "DELETE ..",
            &admin,
            Method::DELETE,
            "/v1/kv/app/..",
            400,
            "bad_path",
        ),
        // Reserved places.
        put(
            "PUT under /.herd",
            &admin,
            "/v1/kv/.herd/tokens/mine",
            b"{}",
            403,
            "reserved_path",
        ),
        put(
            "PUT under /.herd, percent-encoded",
            &admin,
            "/v1/kv/%2Eherd/tokens/mine",
            b"{}",
            403,
            "reserved_path",
        ),
        req(
            "GET /.herd",
            &admin,
            Method::GET,
            "/v1/kv/.herd",
            403,
            "reserved_path",
        ),
        req(
            "GET /.herd/tokens",
            &admin,
            Method::GET,
            "/v1/kv/.herd/tokens?keys",
            403,
            "reserved_path",
        ),
        req(
            "DELETE /.herd",
            &admin,
            Method::DELETE,
            "/v1/kv/.herd",
            403,
            "reserved_path",
        ),
        put(
            "PUT the root",
            &admin,
            "/v1/kv/",
            br#"{"a": 1}"#,
            403,
            "reserved_path",
        ),
        put(
            "PUT the root without /",
            &admin,
            "/v1/kv",
            br#"{"a": 1}"#,
            403,
            "reserved_path",
        ),
        req(
            "DELETE the root",
            &admin,
            Method::DELETE,
            "/v1/kv/",
            403,
            "reserved_path",
        ),
        // Authentication and authorisation.
        req(
            "no token",
            &anonymous,
            Method::GET,
            "/v1/kv/app",
            401,
            "unauthorized",
        ),
        put(
            "no token, write",
            &anonymous,
            "/v1/kv/app/x",
            b"1",
            401,
            "unauthorized",
        ),
        with(
            req(
                "unknown scheme",
                &anonymous,
                Method::GET,
                "/v1/kv/app",
                401,
                "unauthorized",
            ),
            header::AUTHORIZATION,
            "Token abc",
        ),
        req(
            "wrong token",
            &wrong,
            Method::GET,
            "/v1/kv/app",
            401,
            "invalid_token",
        ),
        put(
            "wrong token, write",
            &wrong,
            "/v1/kv/app/x",
            b"1",
            401,
            "invalid_token",
        ),
        with(
            req(
                "wrong basic password",
                &anonymous,
                Method::GET,
                "/v1/kv/app",
                401,
                "invalid_token",
            ),
            header::AUTHORIZATION,
            &basic_wrong,
        ),
        req(
            "no token, status",
            &anonymous,
            Method::GET,
            "/v1/status",
            401,
            "unauthorized",
        ),
        req(
            "no token, metrics",
            &anonymous,
            Method::GET,
            "/metrics",
            401,
            "unauthorized",
        ),
        req(
            "no token, tokens",
            &anonymous,
            Method::GET,
            "/v1/tokens",
            401,
            "unauthorized",
        ),
        req(
            "no token, watch",
            &anonymous,
            Method::GET,
            "/v1/watch/app",
            401,
            "unauthorized",
        ),
        batch(
            "no token, batch",
            &anonymous,
            json!({"ops": [{"op": "put", "path": "/x", "value": 1}]}),
            401,
            "unauthorized",
        ),
        put(
            "read token writes",
            &reader,
            "/v1/kv/app/x",
            b"1",
            403,
            "forbidden",
        ),
        req(
            "read token deletes",
            &reader,
            Method::DELETE,
            "/v1/kv/app/port",
            403,
            "forbidden",
        ),
        batch(
            "read token batch",
            &reader,
            json!({"ops": [{"op": "put", "path": "/x", "value": 1}]}),
            403,
            "forbidden",
        ),
        req(
            "read token lists tokens",
            &reader,
            Method::GET,
            "/v1/tokens",
            403,
            "forbidden",
        ),
        put(
            "outside prefix, PUT",
            &scoped,
            "/v1/kv/other",
            b"2",
            403,
            "outside_prefix",
        ),
        put(
            "outside prefix, sibling name",
            &scoped,
            "/v1/kv/apps",
            b"2",
            403,
            "outside_prefix",
        ),
        req(
            "outside prefix, GET",
            &scoped,
            Method::GET,
            "/v1/kv/other",
            403,
            "outside_prefix",
        ),
        req(
            "outside prefix, GET root",
            &scoped,
            Method::GET,
            "/v1/kv/",
            403,
            "outside_prefix",
        ),
        req(
            "outside prefix, DELETE",
            &scoped,
            Method::DELETE,
            "/v1/kv/other",
            403,
            "outside_prefix",
        ),
        req(
            "outside prefix, watch",
            &scoped,
            Method::GET,
            "/v1/watch/other",
            403,
            "outside_prefix",
        ),
        batch(
            "outside prefix, batch",
            &scoped,
            json!({"ops": [{"op": "put", "path": "/app/ok", "value": 1}, {"op": "delete", "path": "/other"}]}),
            403,
            "outside_prefix",
        ),
        // Preconditions and odd requests.
        with(
            put(
                "stale If-Match",
                &admin,
                "/v1/kv/app/port",
                b"1",
                412,
                "precondition_failed",
            ),
            header::IF_MATCH,
            &stale,
        ),
        with(
            req(
                "stale If-Match delete",
                &admin,
                Method::DELETE,
                "/v1/kv/app/port",
                412,
                "precondition_failed",
            ),
            header::IF_MATCH,
            &stale,
        ),
        with(
            put(
                "If-Match not a version",
                &admin,
                "/v1/kv/app/port",
                b"1",
                400,
                "bad_request",
            ),
            header::IF_MATCH,
            "\"yesterday\"",
        ),
        with(
            put(
                "If-None-Match on a value",
                &admin,
                "/v1/kv/app/port",
                b"1",
                412,
                "already_exists",
            ),
            header::IF_NONE_MATCH,
            "*",
        ),
        with(
            put(
                "If-None-Match with a tag",
                &admin,
                "/v1/kv/app/y",
                b"1",
                400,
                "bad_request",
            ),
            header::IF_NONE_MATCH,
            "\"abc\"",
        ),
        req(
            "DELETE of nothing",
            &admin,
            Method::DELETE,
            "/v1/kv/app/nothing",
            404,
            "not_found",
        ),
        put(
            "ttl abc",
            &admin,
            "/v1/kv/app/x?ttl=abc",
            b"1",
            400,
            "bad_request",
        ),
        req(
            "POST on a key",
            &admin,
            Method::POST,
            "/v1/kv/app/x",
            405,
            "method_not_allowed",
        ),
        req(
            "unknown endpoint",
            &admin,
            Method::GET,
            "/v1/nope",
            404,
            "not_found",
        ),
        put(
            "PUT /v1/tokens",
            &admin,
            "/v1/tokens",
            b"{}",
            405,
            "method_not_allowed",
        ),
        batch("batch without ops", &admin, json!({}), 400, "bad_json"),
    ];
    let cases = cases.into_iter().chain([
        Bad {
            what: "token without a role",
            client: admin.clone(),
            method: Method::POST,
            path: "/v1/tokens".into(),
            headers: Vec::new(),
            body: Some(Bytes::from(r#"{"name": "x"}"#)),
            status: 400,
            code: "bad_json",
        },
        Bad {
            what: "token with a bad prefix",
            client: admin.clone(),
            method: Method::POST,
            path: "/v1/tokens".into(),
            headers: Vec::new(),
            body: Some(Bytes::from(
                r#"{"name": "x", "role": "read", "prefix": "/a/../b"}"#,
            )),
            status: 400,
            code: "bad_request",
        },
        Bad {
            what: "token name taken",
            client: admin.clone(),
            method: Method::POST,
            path: "/v1/tokens".into(),
            headers: Vec::new(),
            body: Some(Bytes::from(r#"{"name": "reader", "role": "admin"}"#)),
            status: 409,
            code: "conflict",
        },
        Bad {
            what: "revoke an unknown token",
            client: admin.clone(),
            method: Method::DELETE,
            path: "/v1/tokens/nobody".into(),
            headers: Vec::new(),
            body: None,
            status: 404,
            code: "not_found",
        },
    ]);
    let mut failures = Vec::new();
    for bad in cases {
        let r = bad
            .client
            .request(
                bad.method.clone(),
                &bad.path,
                &bad.headers,
                bad.body.clone(),
            )
            .await
            .expect("request");
        let got = (r.status.as_u16(), r.error_code());
        if got != (bad.status, Some(bad.code.to_owned())) {
            failures.push(format!(
                "{}: {} {}: expected {} {}, got {} {:?}",
                bad.what,
                bad.method,
                bad.path.chars().take(80).collect::<String>(),
                bad.status,
                bad.code,
                got.0,
                String::from_utf8_lossy(&r.body)
            ));
        }
        if n.doc().await != doc || n.revision().await != rev {
            failures.push(format!("{}: the store changed", bad.what));
        }
    }
    assert!(
        failures.is_empty(),
        "{} bad inputs misbehaved:\n{}",
        failures.len(),
        failures.join("\n")
    );
    n.shutdown().await;
}

/// `PUT` with a chunked body (no `Content-Length`), sent raw.
fn chunked_put(path: &str, token: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(1000) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    req
}

#[tokio::test]
async fn chunked_bodies_are_limited_too() {
    let n = TestNode::start_with(|c| c.api.max_value_bytes = SMALL_LIMIT).await;
    let token = std::fs::read_to_string(n.dir.path().join("admin.token")).unwrap();
    let token = token.trim();
    // Under the limit, a chunked body is accepted.
    let fits = format!("\"{}\"", "a".repeat(SMALL_LIMIT - 10));
    let r = raw_https(
        &n.addr(),
        &n.ca(),
        &chunked_put("/v1/kv/fits", token, fits.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        ok(&n.get("/v1/kv/fits").await),
        json!("a".repeat(SMALL_LIMIT - 10))
    );
    let doc = n.doc().await;
    let rev = n.revision().await;
    // Over it, the body is refused however it is sent.
    for size in [SMALL_LIMIT + 1, 4 * SMALL_LIMIT] {
        let big = format!("\"{}\"", "b".repeat(size));
        let r = raw_https(
            &n.addr(),
            &n.ca(),
            &chunked_put("/v1/kv/big", token, big.as_bytes()),
        )
        .await
        .unwrap();
        assert_eq!(
            r.status,
            413,
            "{size} bytes: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["error"]["code"], "payload_too_large");
    }
    assert_eq!(n.doc().await, doc);
    assert_eq!(n.revision().await, rev);
    n.shutdown().await;
}

#[tokio::test]
async fn plaintext_http_gets_tls_required() {
    let n = TestNode::start().await;
    let r = raw_plaintext(&n.addr(), b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.head);
    assert!(
        String::from_utf8_lossy(&r.body).contains("tls_required"),
        "{:?}",
        r.body
    );
    assert_eq!(r.json()["error"]["code"], "tls_required");
    // The node still serves TLS clients afterwards.
    assert_eq!(n.get("/v1/health").await.status, 200);
    n.shutdown().await;
}

#[tokio::test]
async fn tokens_roles_and_node_endpoints() {
    let n = TestNode::start().await;
    let anonymous = n.client_with(None);

    // Health needs no token; status and metrics need one (any role).
    let r = anonymous
        .request(Method::GET, "/v1/health", &[], None)
        .await
        .unwrap();
    assert_eq!((r.status.as_u16(), ok(&r)), (200, json!({"status": "ok"})));

    // Tokens: create (admin only), list without secrets, revoke.
    let r = n
        .send(
            Method::POST,
            "/v1/tokens",
            &[],
            Some(r#"{"name": "ci", "role": "write", "prefix": "/app/"}"#),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let created = r.json().unwrap();
    assert_eq!(
        (&created["name"], &created["role"], &created["prefix"]),
        (&json!("ci"), &json!("write"), &json!("/app"))
    );
    let ci_secret = created["token"].as_str().unwrap().to_owned();
    assert!(ci_secret.starts_with("herd_"), "{ci_secret}");
    let ci = n.client_with(Some(&ci_secret));
    let reader_secret = n.token("viewer", "read", None).await;
    let reader = n.client_with(Some(&reader_secret));

    ok(&ci
        .request(Method::PUT, "/v1/kv/app/x", &[], Some(Bytes::from("1")))
        .await
        .unwrap());
    let r = ci
        .request(
            Method::POST,
            "/v1/tokens",
            &[],
            Some(Bytes::from(r#"{"name": "mine", "role": "admin"}"#)),
        )
        .await
        .unwrap();
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_deref()),
        (403, Some("forbidden"))
    );
    let r = ci
        .request(Method::DELETE, "/v1/tokens/viewer", &[], None)
        .await
        .unwrap();
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_deref()),
        (403, Some("forbidden"))
    );

    let r = n.get("/v1/tokens").await;
    let list = ok(&r);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    let tokens = list["tokens"].as_array().unwrap();
    let names: Vec<&str> = tokens.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(
        names.contains(&"ci") && names.contains(&"viewer"),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("bootstrap-")),
        "{names:?}"
    );
    for t in tokens {
        let mut fields: Vec<&str> = t.as_object().unwrap().keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["created", "name", "prefix", "role"], "{t}");
    }
    let admin_secret = std::fs::read_to_string(n.dir.path().join("admin.token")).unwrap();
    for secret in [
        ci_secret.as_str(),
        reader_secret.as_str(),
        admin_secret.trim(),
    ] {
        assert!(!text.contains(secret), "a secret is listed");
    }
    assert!(!text.contains("hash"), "hashes are listed: {text}");
    // Neither the document nor the listing of the root shows the tokens.
    let root = n.doc().await;
    assert!(root.get(".herd").is_none(), "{root}");
    assert_eq!(root, json!({"app": {"x": 1}}));
    assert_eq!(keys(&n.get("/v1/kv/?keys").await), json!(["app/"]));

    // Basic auth with the token as the password.
    let r = anonymous
        .request(
            Method::GET,
            "/v1/kv/app/x",
            &[(header::AUTHORIZATION, basic_auth("anyone", &reader_secret))],
            None,
        )
        .await
        .unwrap();
    assert_eq!(ok(&r), json!(1));
    let r = anonymous
        .request(
            Method::PUT,
            "/v1/kv/app/y",
            &[(header::AUTHORIZATION, basic_auth("", &ci_secret))],
            Some(Bytes::from("2")),
        )
        .await
        .unwrap();
    ok(&r);
    assert_eq!(ok(&n.get("/v1/kv/app/y").await), json!(2));

    // Status and metrics with a read token.
    let status = ok(&reader
        .request(Method::GET, "/v1/status", &[], None)
        .await
        .unwrap());
    assert_eq!(
        status["node_id"].as_str().map(str::len),
        Some(16),
        "{status}"
    );
    assert_eq!(status["revision"], json!(n.revision().await));
    let m = reader
        .request(Method::GET, "/metrics", &[], None)
        .await
        .unwrap();
    assert_eq!(m.status, 200);
    let metrics = String::from_utf8_lossy(&m.body);
    assert!(metrics.contains("herd_http_requests_total"), "{metrics}");

    // Revocation takes effect at once.
    let r = n.send(Method::DELETE, "/v1/tokens/ci", &[], None).await;
    assert_eq!(ok(&r), json!({"revoked": "ci"}));
    let r = ci
        .request(Method::GET, "/v1/kv/app/x", &[], None)
        .await
        .unwrap();
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_deref()),
        (401, Some("invalid_token"))
    );
    let r = ci
        .request(Method::PUT, "/v1/kv/app/x", &[], Some(Bytes::from("5")))
        .await
        .unwrap();
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_deref()),
        (401, Some("invalid_token"))
    );
    assert_eq!(ok(&n.get("/v1/kv/app/x").await), json!(1));
    let names: Vec<String> = ok(&n.get("/v1/tokens").await)["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(!names.contains(&"ci".to_owned()), "{names:?}");
    // The other tokens still work.
    assert_eq!(
        ok(&reader
            .request(Method::GET, "/v1/kv/app/x", &[], None)
            .await
            .unwrap()),
        json!(1)
    );
    n.shutdown().await;
}

#[tokio::test]
async fn a_prefixed_admin_manages_only_tokens_within_its_prefix() {
    let n = TestNode::start().await;
    let app = n.token("app-admin", "admin", Some("/app")).await;
    let app = n.client_with(Some(&app));
    n.token("viewer", "read", None).await;
    let post = |body: &'static str| {
        let app = app.clone();
        async move {
            let r = app
                .request(Method::POST, "/v1/tokens", &[], Some(Bytes::from(body)))
                .await
                .unwrap();
            (r.status.as_u16(), r.error_code())
        }
    };
    // No wider prefix (the default is the root), no reserved one.
    for body in [
        r#"{"name": "x", "role": "admin"}"#,
        r#"{"name": "x", "role": "read", "prefix": "/other"}"#,
        r#"{"name": "x", "role": "read", "prefix": "/application"}"#,
    ] {
        assert_eq!(
            post(body).await,
            (403, Some("outside_prefix".into())),
            "{body}"
        );
    }
    let r = n
        .send(
            Method::POST,
            "/v1/tokens",
            &[],
            Some(r#"{"name": "x", "role": "read", "prefix": "/.herd/tokens"}"#),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_deref()),
        (403, Some("reserved_path"))
    );
    assert_eq!(
        post(r#"{"name": "app-ci", "role": "write", "prefix": "/app/ci"}"#).await,
        (201, None)
    );
    // It lists only what it manages, and cannot see or revoke the rest.
    let r = app
        .request(Method::GET, "/v1/tokens", &[], None)
        .await
        .unwrap();
    let mut names: Vec<String> = ok(&r)["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["app-admin", "app-ci"]);
    let all = ok(&n.get("/v1/tokens").await);
    let bootstrap = all["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .find(|n| n.starts_with("bootstrap-"))
        .unwrap()
        .to_owned();
    for name in [bootstrap.as_str(), "viewer"] {
        let r = app
            .request(Method::DELETE, &format!("/v1/tokens/{name}"), &[], None)
            .await
            .unwrap();
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_deref()),
            (404, Some("not_found")),
            "{name}"
        );
    }
    assert_eq!(
        n.get("/v1/tokens").await.status,
        200,
        "the bootstrap token still works"
    );
    let r = app
        .request(Method::DELETE, "/v1/tokens/app-ci", &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    // Node-wide information needs a token without a prefix, whatever its role.
    let reader = n.token("app-reader", "read", Some("/app")).await;
    let reader = n.client_with(Some(&reader));
    let viewer = n.token("root-reader", "read", None).await;
    let viewer = n.client_with(Some(&viewer));
    for url in ["/v1/status", "/metrics", "/v1/members", "/v1/plugins"] {
        for c in [&app, &reader] {
            let r = c.request(Method::GET, url, &[], None).await.unwrap();
            assert_eq!(
                (r.status.as_u16(), r.error_code().as_deref()),
                (403, Some("outside_prefix")),
                "{url}"
            );
        }
        let r = viewer.request(Method::GET, url, &[], None).await.unwrap();
        assert_eq!(r.status, 200, "{url}");
    }
    n.shutdown().await;
}

/// A gauge from `/metrics`.
async fn gauge(n: &TestNode, name: &str) -> u64 {
    let text = String::from_utf8(n.get("/metrics").await.body.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn one_client_cannot_take_every_connection_and_health_still_answers() {
    let n = TestNode::start_with(|c| {
        c.api.max_connections = 8;
        c.api.max_connections_per_client = 4;
        c.api.write_timeout = Duration::from_secs(2);
        c.api.handshake_timeout = Duration::from_secs(30);
    })
    .await;
    // Idle connections (no TLS handshake yet) from this address fill its share, its two spare
    // connections (closed after 2 s without a request), and as many again.
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(tokio::net::TcpStream::connect(n.addr()).await.unwrap());
    }
    // A health check still gets an answer on a spare connection, once the idle ones that
    // held them are closed (at once from another address).
    let health = tests::wait_for("a health answer", Duration::from_secs(10), || async {
        let r = raw_https(
            &n.addr(),
            &n.ca(),
            b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        )
        .await
        .ok()?;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(health.json(), json!({"status": "ok"}));
    let admin = std::fs::read_to_string(n.dir.path().join("admin.token")).unwrap();
    let get = format!(
        "GET /v1/kv/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\r\n",
        admin.trim()
    );
    let busy = raw_https(&n.addr(), &n.ca(), get.as_bytes()).await.unwrap();
    assert_eq!(
        (busy.status, busy.json()["error"]["code"].clone()),
        (503, json!("busy"))
    );
    // Closing them gives the address its share back.
    drop(idle);
    wait_for_ok(&n.client).await;

    // A client that asks for a large value and never reads is cut after the write timeout.
    let value = format!("\"{}\"", "x".repeat(1000 << 10));
    for i in 0..16 {
        let r = n
            .send(Method::PUT, &format!("/v1/kv/big/{i}"), &[], Some(&value))
            .await;
        assert_eq!(r.status, 200);
    }
    let before = gauge(&n, "herd_http_connections").await;
    let big = format!(
        "GET /v1/kv/big HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\r\n",
        admin.trim()
    );
    let _stalled = tests::stalled_https(&n.addr(), &n.ca(), big.as_bytes())
        .await
        .unwrap();
    tests::wait_for(
        "the stalled client to be counted",
        Duration::from_secs(5),
        || async { (gauge(&n, "herd_http_connections").await > before).then_some(()) },
    )
    .await;
    tests::wait_for(
        "the stalled client to be cut",
        Duration::from_secs(10),
        || async { (gauge(&n, "herd_http_connections").await <= before).then_some(()) },
    )
    .await;
    n.shutdown().await;
}

/// Polls `GET /v1/kv/` until it answers 200 (the server notices closed connections
/// asynchronously).
async fn wait_for_ok(c: &Client) {
    tests::wait_for("a connection place", Duration::from_secs(15), || async {
        let r = c.request(Method::GET, "/v1/kv/", &[], None).await.ok()?;
        (r.status == 200).then_some(())
    })
    .await
}

#[tokio::test]
async fn smaller_mismatches_are_refused_as_documented() {
    let n = TestNode::start().await;
    let code = |r: &Response| (r.status.as_u16(), r.error_code());
    // An empty segment is refused, also at the start.
    for url in ["/v1/kv//x", "/v1/kv/a//b", "/v1/watch//x"] {
        let r = n.send(Method::PUT, url, &[], Some("1")).await;
        assert_eq!(code(&r).1.as_deref(), Some("bad_path"), "{url}");
    }
    assert_eq!(n.get("/v1/kv/x").await.status, 404, "nothing was stored");
    // The path-length error gives the whole path's length.
    let long = format!("/v1/kv/{}", vec!["y".repeat(200); 6].join("/"));
    let r = n.send(Method::PUT, &long, &[], Some("1")).await;
    let message = r.json().unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("path is 1206 bytes"), "{message}");
    // A key given twice in one object, anywhere in a body.
    for (url, body) in [
        ("/v1/kv/d", r#"{"a":1,"a":2}"#),
        ("/v1/kv/d", r#"{"x":{"b":1,"b":1}}"#),
        (
            "/v1/batch",
            r#"{"ops":[{"op":"put","path":"/d","value":1,"value":2}]}"#,
        ),
    ] {
        let method = if url == "/v1/batch" {
            Method::POST
        } else {
            Method::PUT
        };
        let r = n.send(method, url, &[], Some(body)).await;
        assert_eq!(code(&r), (400, Some("bad_json".into())), "{body}");
        let message = r.json().unwrap()["error"]["message"].to_string();
        assert!(message.contains("duplicate key"), "{message}");
    }
    assert_eq!(n.get("/v1/kv/d").await.status, 404, "nothing was stored");
    // If-Match compares strongly: `*` needs something there, a weak tag never matches.
    let star = [(header::IF_MATCH, "*".to_string())];
    let r = n.send(Method::PUT, "/v1/kv/m", &star, Some("1")).await;
    assert_eq!(code(&r), (412, Some("precondition_failed".into())));
    ok(&n.send(Method::PUT, "/v1/kv/m", &[], Some("1")).await);
    let r = n.send(Method::PUT, "/v1/kv/m", &star, Some("2")).await;
    let version = version_of(&r);
    let weak = [(header::IF_MATCH, format!("W/\"{version}\""))];
    let r = n.send(Method::PUT, "/v1/kv/m", &weak, Some("3")).await;
    assert_eq!(code(&r), (412, Some("precondition_failed".into())));
    let r = n.send(Method::DELETE, "/v1/kv/m", &weak, None).await;
    assert_eq!(code(&r), (412, Some("precondition_failed".into())));
    assert_eq!(ok(&n.get("/v1/kv/m").await), json!(2));
    n.shutdown().await;
}

#[tokio::test]
async fn a_prefixed_writer_cannot_replace_a_value_above_its_prefix() {
    let n = TestNode::start().await;
    ok(&n
        .send(Method::PUT, "/v1/kv/team", &[], Some(r#""a leaf""#))
        .await);
    let sub = n.token("sub-writer", "write", Some("/team/sub")).await;
    let sub = n.client_with(Some(&sub));
    let put = |url: &'static str, body: &'static str| {
        let sub = sub.clone();
        async move {
            sub.request(Method::PUT, url, &[], Some(Bytes::from(body)))
                .await
                .unwrap()
        }
    };
    let r = put("/v1/kv/team/sub/x", "1").await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_deref()),
        (403, Some("outside_prefix"))
    );
    let r = sub
        .request(
            Method::POST,
            "/v1/batch",
            &[],
            Some(Bytes::from(
                r#"{"ops":[{"op":"put","path":"/team/sub/x","value":1}]}"#,
            )),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(ok(&n.get("/v1/kv/team").await), json!("a leaf"));
    // Once the value above is a directory, the token writes within its prefix as usual.
    ok(&n
        .send(Method::PUT, "/v1/kv/team", &[], Some(r#"{"other": 1}"#))
        .await);
    ok(&put("/v1/kv/team/sub/x", "1").await);
    assert_eq!(
        ok(&n.get("/v1/kv/team").await),
        json!({"other": 1, "sub": {"x": 1}})
    );
    n.shutdown().await;
}
