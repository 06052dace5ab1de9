//! Time to live: a leaf written with `?ttl=` is readable until it expires, then gone with an
//! `expire` event; a renewal before expiry keeps it; a ttl on an object or a bad ttl is refused.

use http::Method;
use node::client::EventStream;
use serde_json::{json, Value};
use std::time::Duration;
use tests::{next_json, wait_for, TestNode};

/// `(version, revision)` of an acknowledged PUT.
async fn put(n: &TestNode, path_and_query: &str, body: &str) -> (String, u64) {
    let r = n.put(&format!("/v1/kv{path_and_query}"), body).await;
    assert_eq!(r.status, 200, "PUT {path_and_query}: {:?}", r.body);
    let v = r.json().unwrap();
    (
        v["version"].as_str().unwrap().to_owned(),
        v["revision"].as_u64().unwrap(),
    )
}

/// Skips the initial state of a fresh watch, up to and including `synced`.
async fn skip_to_synced(s: &mut EventStream) {
    loop {
        if next_json(s).await.0 == "synced" {
            return;
        }
    }
}

async fn next_of(s: &mut EventStream) -> (String, String, Value) {
    let (kind, data) = next_json(s).await;
    (
        kind,
        data["path"].as_str().unwrap_or_default().to_owned(),
        data,
    )
}

#[tokio::test]
async fn a_leaf_with_a_ttl_expires_with_an_event() {
    let n = TestNode::start().await;
    let mut s = n.client.events("/v1/watch/t", &[]).await.unwrap();
    skip_to_synced(&mut s).await;
    let (version, revision) = put(&n, "/t/k?ttl=1s", r#""short""#).await;
    put(&n, "/t/stays", "1").await;
    assert_eq!(n.get("/v1/kv/t/k").await.json().unwrap(), json!("short"));

    let (kind, path, _) = next_of(&mut s).await;
    assert_eq!((kind.as_str(), path.as_str()), ("put", "/t/k"));
    let (kind, path, _) = next_of(&mut s).await;
    assert_eq!((kind.as_str(), path.as_str()), ("put", "/t/stays"));
    // The expiry is announced on the watch ...
    let (kind, path, data) = next_of(&mut s).await;
    assert_eq!((kind.as_str(), path.as_str()), ("expire", "/t/k"), "{data}");
    assert_eq!(
        data["version"].as_str(),
        Some(version.as_str()),
        "the expired write's version"
    );
    let expire_revision = data["revision"].as_u64().unwrap();
    assert!(expire_revision > revision, "{data}");
    assert!(data.get("value").is_none(), "{data}");
    // ... and the value is gone (it must already be: the event follows the expiry time).
    let r = n.get("/v1/kv/t/k").await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_deref()),
        (404, Some("not_found"))
    );
    assert_eq!(n.get("/v1/kv/t").await.json().unwrap(), json!({"stays": 1}));
    assert_eq!(
        n.get("/v1/kv/t?keys").await.json().unwrap(),
        json!({"keys": ["stays"]})
    );
    // A replay from before the expiry includes it.
    let mut replay = n
        .client
        .events(&format!("/v1/watch/t/k?since={revision}"), &[])
        .await
        .unwrap();
    let (kind, path, data) = next_of(&mut replay).await;
    assert_eq!(
        (kind.as_str(), path.as_str(), data["revision"].as_u64()),
        ("expire", "/t/k", Some(expire_revision))
    );
    assert_eq!(next_of(&mut replay).await.0, "synced");
    n.shutdown().await;
}

#[tokio::test]
async fn expiry_is_visible_to_readers_within_the_deadline() {
    let n = TestNode::start().await;
    put(&n, "/gone?ttl=1s", "42").await;
    assert_eq!(n.get("/v1/kv/gone").await.json().unwrap(), json!(42));
    // Awaited: the GET to answer 404 once the second has passed.
    wait_for("/gone to expire", Duration::from_secs(5), || async {
        (n.get("/v1/kv/gone").await.status == 404).then_some(())
    })
    .await;
    assert_eq!(n.doc().await, json!({}));
    n.shutdown().await;
}

#[tokio::test]
async fn a_renewal_before_expiry_keeps_the_value() {
    let n = TestNode::start().await;
    let mut s = n.client.events("/v1/watch/", &[]).await.unwrap();
    skip_to_synced(&mut s).await;
    // Two seconds leave ample time for the renewals below, even on a loaded machine.
    put(&n, "/renewed?ttl=2s", "1").await;
    put(&n, "/made-permanent?ttl=2s", "1").await;
    // Written after the two above with the same ttl: it expires after them.
    put(&n, "/marker?ttl=2s", "0").await;
    put(&n, "/renewed?ttl=30s", "2").await;
    put(&n, "/made-permanent", "2").await;
    for p in [
        "/renewed",
        "/made-permanent",
        "/marker",
        "/renewed",
        "/made-permanent",
    ] {
        let (kind, path, _) = next_of(&mut s).await;
        assert_eq!((kind.as_str(), path.as_str()), ("put", p));
    }
    // Awaited: the marker's expiry, which proves the first ttl of the others has passed too.
    // No expiry of the renewed keys may come before it.
    let (kind, path, data) = next_of(&mut s).await;
    assert_eq!(
        (kind.as_str(), path.as_str()),
        ("expire", "/marker"),
        "{data}"
    );
    assert_eq!(n.get("/v1/kv/renewed").await.json().unwrap(), json!(2));
    assert_eq!(
        n.get("/v1/kv/made-permanent").await.json().unwrap(),
        json!(2)
    );
    assert_eq!(n.doc().await, json!({"renewed": 2, "made-permanent": 2}));
    // And nothing else was announced meanwhile.
    let w = put(&n, "/after", "1").await;
    let (kind, path, data) = next_of(&mut s).await;
    assert_eq!(
        (kind.as_str(), path.as_str(), data["revision"].as_u64()),
        ("put", "/after", Some(w.1))
    );
    n.shutdown().await;
}

#[tokio::test]
async fn bad_ttls_are_refused() {
    let n = TestNode::start().await;
    put(&n, "/keep", "1").await;
    let doc = n.doc().await;
    let rev = n.revision().await;
    for (q, body) in [
        ("/o?ttl=30s", r#"{"a": 1}"#),
        ("/o?ttl=30s", "{}"),
        ("/k?ttl=abc", "1"),
        ("/k?ttl=0s", "1"),
        ("/k?ttl=0", "1"),
        ("/k?ttl=", "1"),
        ("/k?ttl=-1s", "1"),
        ("/k?ttl=5y", "1"),
        // Below one millisecond: would be stored as 0 and expire at once.
        ("/k?ttl=0.5ms", "1"),
        ("/k?ttl=0.0001", "1"),
        ("/keep?ttl=1x", "2"),
    ] {
        let r = n.put(&format!("/v1/kv{q}"), body).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_deref()),
            (400, Some("bad_request")),
            "PUT {q} {body}"
        );
        assert_eq!(n.doc().await, doc, "PUT {q} left a trace");
    }
    let batch = r#"{"ops": [{"op": "put", "path": "/k", "value": 1, "ttl": "0.1ms"}]}"#;
    let r = n.send(Method::POST, "/v1/batch", &[], Some(batch)).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_deref()),
        (400, Some("bad_request"))
    );
    assert_eq!(n.doc().await, doc);
    assert_eq!(n.revision().await, rev);
    // Every documented unit is accepted.
    for ttl in ["500ms", "30s", "5m", "2h", "1d", "45"] {
        let r = n.put(&format!("/v1/kv/units/{ttl}?ttl={ttl}"), "1").await;
        assert_eq!(r.status, 200, "ttl {ttl}: {:?}", r.body);
    }
    let r = n.send(Method::GET, "/v1/kv/units/1d", &[], None).await;
    assert_eq!(r.json().unwrap(), json!(1));
    n.shutdown().await;
}
