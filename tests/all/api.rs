//! The REST API end to end: reads, writes, preconditions, batches, and every bad input.

use http::{header, Method};
use serde_json::json;
use tests::TestNode;

#[tokio::test]
async fn put_get_delete_round_trip() {
    let n = TestNode::start().await;
    let r = n.put("/v1/kv/app/db/port", "5433").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let v = r.json().unwrap();
    assert!(v["version"].is_string() && v["revision"].is_u64());
    assert_eq!(r.headers[header::ETAG], format!("\"{}\"", v["version"].as_str().unwrap()));
    assert_eq!(n.get("/v1/kv/app/db/port").await.json().unwrap(), json!(5433));
    assert_eq!(n.doc().await, json!({"app": {"db": {"port": 5433}}}));
    let r = n.send(Method::DELETE, "/v1/kv/app/db", &[], None).await;
    assert_eq!(r.status, 200);
    assert_eq!(n.get("/v1/kv/app/db/port").await.status, 404);
    assert_eq!(n.get("/v1/kv/app/db/port").await.error_code().as_deref(), Some("not_found"));
    n.shutdown().await;
}
