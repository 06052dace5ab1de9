//! Watches over server-sent events: the initial state, live events for the path, below it and
//! for its ancestors (none for unrelated paths), resuming with `?since=` and `Last-Event-ID`,
//! batches sharing a revision, `410 compacted`, and the watcher limit.

use http::{HeaderName, Method, StatusCode};
use node::client::{Client, Error, EventStream};
use serde_json::{json, Value};
use std::time::Duration;
use tests::{next_json, wait_for, TestNode};

/// `(version, revision)` of an acknowledged write.
async fn write(n: &TestNode, method: Method, path: &str, body: Option<&str>) -> (String, u64) {
    let r = n
        .send(method.clone(), &format!("/v1/kv{path}"), &[], body)
        .await;
    assert_eq!(r.status, 200, "{method} {path}: {:?}", r.body);
    let v = r.json().unwrap();
    (
        v["version"].as_str().unwrap().to_owned(),
        v["revision"].as_u64().unwrap(),
    )
}

async fn put(n: &TestNode, path: &str, body: &str) -> (String, u64) {
    write(n, Method::PUT, path, Some(body)).await
}

async fn delete(n: &TestNode, path: &str) -> (String, u64) {
    write(n, Method::DELETE, path, None).await
}

async fn watch(c: &Client, path_and_query: &str, headers: &[(HeaderName, String)]) -> EventStream {
    c.events(path_and_query, headers)
        .await
        .unwrap_or_else(|e| panic!("watch {path_and_query}: {e}"))
}

/// Reads the next event and checks its type and path; returns its data.
async fn expect(s: &mut EventStream, kind: &str, path: &str) -> Value {
    let (event, data) = next_json(s).await;
    assert_eq!(
        (event.as_str(), data["type"].as_str(), data["path"].as_str()),
        (kind, Some(kind), Some(path)),
        "{data}"
    );
    data
}

/// Reads the next event and checks it is a put of `value` at `path`, written as `written`.
async fn expect_put(s: &mut EventStream, path: &str, value: Value, written: &(String, u64)) {
    let data = expect(s, "put", path).await;
    assert_eq!(data["value"], value, "{data}");
    assert_eq!(
        (
            data["version"].as_str().unwrap(),
            data["revision"].as_u64().unwrap()
        ),
        (written.0.as_str(), written.1)
    );
}

async fn expect_delete(s: &mut EventStream, path: &str, written: &(String, u64)) {
    let data = expect(s, "delete", path).await;
    assert!(data.get("value").is_none(), "{data}");
    assert_eq!(
        (
            data["version"].as_str().unwrap(),
            data["revision"].as_u64().unwrap()
        ),
        (written.0.as_str(), written.1)
    );
}

async fn expect_synced(s: &mut EventStream, revision: u64) {
    let (event, data) = next_json(s).await;
    assert_eq!(event, "synced", "{data}");
    assert_eq!(data, json!({"type": "synced", "revision": revision}));
}

#[tokio::test]
async fn initial_state_then_live_events_for_path_descendants_and_ancestors() {
    let n = TestNode::start().await;
    let c1 = put(&n, "/app/b/c", "2").await;
    let c2 = put(&n, "/app/b/list", "[1, {\"k\": \"v\"}]").await;
    put(&n, "/app/a", "1").await;
    put(&n, "/other", "1").await;
    let rev = n.revision().await;

    // Watching a leaf: its own value is the initial state.
    let mut leaf = watch(&n.client, "/v1/watch/app/b/c", &[]).await;
    let data = expect(&mut leaf, "put", "/app/b/c").await;
    assert_eq!(
        (&data["value"], data["version"].as_str()),
        (&json!(2), Some(c1.0.as_str()))
    );
    expect_synced(&mut leaf, rev).await;
    drop(leaf);

    let mut s = watch(&n.client, "/v1/watch/app/b", &[]).await;
    // The current state, one put per leaf under the path, then `synced`.
    let data = expect(&mut s, "put", "/app/b/c").await;
    assert_eq!(
        (&data["value"], data["version"].as_str()),
        (&json!(2), Some(c1.0.as_str()))
    );
    let data = expect(&mut s, "put", "/app/b/list").await;
    assert_eq!(
        (&data["value"], data["version"].as_str()),
        (&json!([1, {"k": "v"}]), Some(c2.0.as_str()))
    );
    expect_synced(&mut s, rev).await;

    // Unrelated writes (a sibling, a sibling whose name starts alike, another tree) send nothing:
    // the next event is the related write made after them.
    put(&n, "/app/a", "2").await;
    put(&n, "/app/bb", "2").await;
    put(&n, "/app/bb/c", "2").await;
    put(&n, "/other", "2").await;
    let w = put(&n, "/app/b/c", "3").await;
    let ev = tests::next_event(&mut s, Duration::from_secs(5)).await;
    assert_eq!(
        ev.id.as_deref(),
        Some(w.1.to_string().as_str()),
        "the id is the revision"
    );
    let data: Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(
        (ev.event.as_str(), &data["path"], &data["value"]),
        ("put", &json!("/app/b/c"), &json!(3))
    );

    // Below the path.
    let w = put(&n, "/app/b/d/e", r#""deep""#).await;
    expect_put(&mut s, "/app/b/d/e", json!("deep"), &w).await;
    let w = delete(&n, "/app/b/d").await;
    expect_delete(&mut s, "/app/b/d", &w).await;
    // The path itself, replaced by an object.
    let w = put(&n, "/app/b", r#"{"x": 1}"#).await;
    expect_put(&mut s, "/app/b", json!({"x": 1}), &w).await;
    // An ancestor replacing it, then deleting it.
    put(&n, "/other/more", "1").await;
    let w = put(&n, "/app", r#"{"b": 7, "z": 0}"#).await;
    expect_put(&mut s, "/app", json!({"b": 7, "z": 0}), &w).await;
    let w = delete(&n, "/app/b").await;
    expect_delete(&mut s, "/app/b", &w).await;
    put(&n, "/app/z", "1").await;
    let w = delete(&n, "/app").await;
    expect_delete(&mut s, "/app", &w).await;
    n.shutdown().await;
}

#[tokio::test]
async fn watching_the_root_hides_the_nodes_own_keys() {
    let n = TestNode::start().await;
    let w0 = put(&n, "/a", "1").await;
    let mut s = watch(&n.client, "/v1/watch/", &[]).await;
    expect_put(&mut s, "/a", json!(1), &w0).await;
    expect_synced(&mut s, n.revision().await).await;
    n.token("someone", "read", None).await;
    let w = put(&n, "/b", "2").await;
    expect_put(&mut s, "/b", json!(2), &w).await;
    // Watching inside `.herd` is refused.
    match n.client.events("/v1/watch/.herd/tokens", &[]).await {
        Err(Error::Status { status, code, .. }) => {
            assert_eq!(
                (status, code.as_deref()),
                (StatusCode::FORBIDDEN, Some("reserved_path"))
            );
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a watch of /.herd was accepted"),
    }
    n.shutdown().await;
}

#[tokio::test]
async fn since_and_last_event_id_replay_exactly_the_later_changes() {
    let n = TestNode::start().await;
    put(&n, "/app/a", "1").await;
    let (_, mark) = put(&n, "/app/b", "1").await;
    // After the mark: changes to the path (and one elsewhere that must not appear).
    let w1 = put(&n, "/app/a", "2").await;
    put(&n, "/elsewhere", "1").await;
    let w2 = delete(&n, "/app/b").await;
    let w3 = put(&n, "/app/c", r#"{"d": true}"#).await;

    let since = format!("/v1/watch/app?since={mark}");
    let last_event_id = [(HeaderName::from_static("last-event-id"), mark.to_string())];
    let mut live = None;
    for how in ["?since", "Last-Event-ID"] {
        let now = n.revision().await;
        let mut s = match how {
            "?since" => watch(&n.client, &since, &[]).await,
            _ => watch(&n.client, "/v1/watch/app", &last_event_id).await,
        };
        expect_put(&mut s, "/app/a", json!(2), &w1).await;
        expect_delete(&mut s, "/app/b", &w2).await;
        expect_put(&mut s, "/app/c", json!({"d": true}), &w3).await;
        // The second resume also replays the live write the first one saw.
        if let Some(w) = &live {
            expect_put(&mut s, "/app/live", json!(0), w).await;
        }
        expect_synced(&mut s, now).await;
        // Then live events; a later write proves nothing else was queued before it.
        let w = put(&n, "/app/live", "0").await;
        expect_put(&mut s, "/app/live", json!(0), &w).await;
        live = Some(w);
    }

    // Resuming at the newest revision replays nothing.
    let now = n.revision().await;
    let mut s = watch(&n.client, &format!("/v1/watch/app?since={now}"), &[]).await;
    expect_synced(&mut s, now).await;
    let w = put(&n, "/app/a", "3").await;
    expect_put(&mut s, "/app/a", json!(3), &w).await;

    let r = n
        .send(Method::GET, "/v1/watch/app?since=abc", &[], None)
        .await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_deref()),
        (400, Some("bad_request"))
    );
    n.shutdown().await;
}

#[tokio::test]
async fn a_batch_is_one_revision_in_the_stream() {
    let n = TestNode::start().await;
    put(&n, "/b/old", "1").await;
    let mut s = watch(&n.client, "/v1/watch/b", &[]).await;
    expect(&mut s, "put", "/b/old").await;
    expect_synced(&mut s, n.revision().await).await;
    let batch = json!({"ops": [
        {"op": "put", "path": "/b/x", "value": 1},
        {"op": "put", "path": "/unrelated", "value": 1},
        {"op": "put", "path": "/b/y", "value": {"z": "w"}},
        {"op": "delete", "path": "/b/old"},
    ]});
    let r = n
        .send(Method::POST, "/v1/batch", &[], Some(&batch.to_string()))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let v = r.json().unwrap();
    let written = (
        v["version"].as_str().unwrap().to_owned(),
        v["revision"].as_u64().unwrap(),
    );
    expect_put(&mut s, "/b/x", json!(1), &written).await;
    expect_put(&mut s, "/b/y", json!({"z": "w"}), &written).await;
    expect_delete(&mut s, "/b/old", &written).await;
    let w = put(&n, "/b/after", "1").await;
    assert_eq!(w.1, written.1 + 1);
    expect_put(&mut s, "/b/after", json!(1), &w).await;
    n.shutdown().await;
}

fn status_of(result: Result<EventStream, Error>) -> (StatusCode, Option<String>) {
    match result {
        Err(Error::Status { status, code, .. }) => (status, code),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("the watch was accepted"),
    }
}

#[tokio::test]
async fn a_revision_that_left_the_log_is_compacted() {
    let n = TestNode::start_with(|c| c.storage.log_events = 5).await;
    let mut written = Vec::new();
    for i in 0..12 {
        written.push(put(&n, &format!("/k/{i}"), &i.to_string()).await);
    }
    let now = n.revision().await;
    // The log holds the newest 5 changes: resuming right before them replays all 5.
    let mut s = watch(&n.client, &format!("/v1/watch/k?since={}", now - 5), &[]).await;
    for (i, w) in written.iter().enumerate().skip(7) {
        expect_put(&mut s, &format!("/k/{i}"), json!(i), w).await;
    }
    expect_synced(&mut s, now).await;
    // Anything older is refused, never a silent gap; so is a revision this node has not reached
    // (revisions are per node).
    for since in [1, now - 8, now - 6, now + 1, 999_999] {
        let r = n
            .client
            .events(&format!("/v1/watch/k?since={since}"), &[])
            .await;
        assert_eq!(
            status_of(r),
            (StatusCode::GONE, Some("compacted".into())),
            "since {since}"
        );
        let header = [(HeaderName::from_static("last-event-id"), since.to_string())];
        let r = n.client.events("/v1/watch/k", &header).await;
        assert_eq!(
            status_of(r),
            (StatusCode::GONE, Some("compacted".into())),
            "Last-Event-ID {since}"
        );
    }
    // Without since, the full state is still available.
    let mut s = watch(&n.client, "/v1/watch/k", &[]).await;
    let mut paths: Vec<String> = (0..12).map(|i| format!("/k/{i}")).collect();
    paths.sort();
    for p in &paths {
        // The current state is stamped with the revision it was read at (the resume point).
        let i: usize = p["/k/".len()..].parse().unwrap();
        expect_put(&mut s, p, json!(i), &(written[i].0.clone(), now)).await;
    }
    expect_synced(&mut s, now).await;
    n.shutdown().await;
}

#[tokio::test]
async fn too_many_watchers_get_429() {
    let n = TestNode::start_with(|c| c.api.max_watchers = 2).await;
    let mut first = watch(&n.client, "/v1/watch/a", &[]).await;
    expect_synced(&mut first, n.revision().await).await;
    let mut second = watch(&n.client, "/v1/watch/b", &[]).await;
    expect_synced(&mut second, n.revision().await).await;
    let r = n.client.events("/v1/watch/c", &[]).await;
    assert_eq!(
        status_of(r),
        (
            StatusCode::TOO_MANY_REQUESTS,
            Some("too_many_watchers".into())
        )
    );
    // Ordinary requests are not affected.
    put(&n, "/a", "1").await;
    // A closed watch frees its place (the server notices the disconnect asynchronously).
    drop(first);
    let mut third = wait_for(
        "a watcher place to be freed",
        Duration::from_secs(5),
        || async { n.client.events("/v1/watch/c", &[]).await.ok() },
    )
    .await;
    expect_synced(&mut third, n.revision().await).await;
    let w = put(&n, "/b", "1").await;
    expect_put(&mut second, "/b", json!(1), &w).await;
    n.shutdown().await;
}

#[tokio::test]
async fn one_token_cannot_take_every_watcher_place() {
    let n = TestNode::start_with(|c| {
        c.api.max_watchers = 4;
        c.api.max_watchers_per_token = 2;
    })
    .await;
    let hog = n.token("hog", "read", None).await;
    let hog = n.client_with(Some(&hog));
    let mut held = Vec::new();
    for p in ["a", "b"] {
        let mut s = watch(&hog, &format!("/v1/watch/{p}"), &[]).await;
        expect_synced(&mut s, n.revision().await).await;
        held.push(s);
    }
    let r = hog.events("/v1/watch/c", &[]).await;
    assert_eq!(
        status_of(r),
        (
            StatusCode::TOO_MANY_REQUESTS,
            Some("too_many_watchers".into())
        )
    );
    // Another token (here the admin) still gets its watches.
    let mut admin = watch(&n.client, "/v1/watch/c", &[]).await;
    expect_synced(&mut admin, n.revision().await).await;
    // A closed watch gives its token's place back.
    drop(held.pop());
    let mut again = wait_for(
        "the token's watcher place to be freed",
        Duration::from_secs(5),
        || async { hog.events("/v1/watch/c", &[]).await.ok() },
    )
    .await;
    expect_synced(&mut again, n.revision().await).await;
    n.shutdown().await;
}

#[tokio::test]
async fn a_watch_shows_only_what_its_token_may_read() {
    let n = TestNode::start().await;
    let sub = n.token("r-sub", "read", Some("/team/sub")).await;
    let sub = n.client_with(Some(&sub));
    let first = put(&n, "/team", r#"{"sub":{"a":1},"secret":"S"}"#).await;
    assert_eq!(
        sub.request(Method::GET, "/v1/kv/team", &[], None)
            .await
            .unwrap()
            .status,
        403
    );
    let mut s = watch(&sub, "/v1/watch/team/sub", &[]).await;
    expect(&mut s, "put", "/team/sub/a").await;
    expect_synced(&mut s, first.1).await;
    // An admin's write of the ancestor shows as the part inside the token's prefix...
    let w = put(&n, "/team", r#"{"sub":{"a":2},"secret":"S2"}"#).await;
    expect_put(&mut s, "/team/sub", json!({"a": 2}), &w).await;
    // ...or as a delete of the watched path when nothing lands there.
    let gone = put(&n, "/team", r#"{"other":1,"secret":"S3"}"#).await;
    expect_delete(&mut s, "/team/sub", &gone).await;
    let leaf = put(&n, "/team", r#""S4""#).await;
    expect_delete(&mut s, "/team/sub", &leaf).await;
    let batch = n
        .send(
            Method::POST,
            "/v1/batch",
            &[],
            Some(r#"{"ops":[{"op":"put","path":"/team","value":{"sub":{"b":3},"secret":"S5"}}]}"#),
        )
        .await;
    assert_eq!(batch.status, 200, "{:?}", batch.body);
    let (event, data) = next_json(&mut s).await;
    assert_eq!(event, "put");
    assert_eq!(
        (data["path"].clone(), data["value"].clone()),
        (json!("/team/sub"), json!({"b": 3})),
        "{data}"
    );
    let deleted = delete(&n, "/team").await;
    expect_delete(&mut s, "/team/sub", &deleted).await;
    // A replay after `since` is cut the same way: no secret in anything the stream sends.
    let mut replay = watch(&sub, &format!("/v1/watch/team/sub?since={}", first.1), &[]).await;
    let mut seen = 0;
    loop {
        let (event, data) = next_json(&mut replay).await;
        if event == "synced" {
            break;
        }
        seen += 1;
        assert_eq!(data["path"], "/team/sub", "{data}");
        assert!(!data.to_string().contains("S2") && !data.to_string().contains("S5"));
    }
    assert_eq!(seen, 5);
    // A token that may read the ancestor still sees the whole value.
    let mut admin = watch(&n.client, "/v1/watch/team/sub", &[]).await;
    expect_synced(&mut admin, deleted.1).await;
    let w = put(&n, "/team", r#"{"sub":1,"secret":"S6"}"#).await;
    expect_put(&mut admin, "/team", json!({"sub": 1, "secret": "S6"}), &w).await;
    expect_put(&mut s, "/team/sub", json!(1), &w).await;
    n.shutdown().await;
}

#[tokio::test]
async fn revoking_a_token_ends_its_watch_streams() {
    let n = TestNode::start().await;
    let secret = n.token("watcher", "read", Some("/app")).await;
    let c = n.client_with(Some(&secret));
    let mut s = watch(&c, "/v1/watch/app", &[]).await;
    expect_synced(&mut s, n.revision().await).await;
    let other = n.token("other", "read", Some("/app")).await;
    let mut kept = watch(&n.client_with(Some(&other)), "/v1/watch/app", &[]).await;
    expect_synced(&mut kept, n.revision().await).await;
    let r = n
        .send(Method::DELETE, "/v1/tokens/watcher", &[], None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let (event, data) = next_json(&mut s).await;
    assert_eq!(
        (event.as_str(), &data["code"]),
        ("error", &json!("invalid_token"))
    );
    let end = tokio::time::timeout(Duration::from_secs(5), s.next()).await;
    assert!(matches!(end, Ok(None)), "the stream ends after the error");
    // Other tokens' streams go on.
    let w = put(&n, "/app/x", "1").await;
    expect_put(&mut kept, "/app/x", json!(1), &w).await;
    n.shutdown().await;
}

/// A node with 24 values of about 1 MiB under `/big` (more than loopback's socket buffers hold)
/// and `room` bytes for watches' initial state.
async fn big_state(room: usize, write_timeout: Duration) -> TestNode {
    let n = TestNode::start_with(|c| {
        c.api.watch_snapshot_bytes = room;
        c.api.write_timeout = write_timeout;
    })
    .await;
    let value = format!("\"{}\"", "x".repeat(1000 << 10));
    for i in 0..24 {
        put(&n, &format!("/big/{i:02}"), &value).await;
    }
    n
}

/// Starts a watch of `/big` that never reads.
async fn stalled_watch(n: &TestNode) -> impl Send {
    let admin = std::fs::read_to_string(n.dir.path().join("admin.token")).unwrap();
    let request = format!(
        "GET /v1/watch/big HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\r\n",
        admin.trim()
    );
    tests::stalled_https(&n.addr(), &n.ca(), request.as_bytes())
        .await
        .unwrap()
}

async fn open_watchers(n: &TestNode) -> u64 {
    let text = String::from_utf8(n.get("/metrics").await.body.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("herd_watchers "))
        .unwrap()
        .parse()
        .unwrap()
}

/// Reads a whole watch of `/big`: 24 puts, then `synced`.
async fn read_big(s: &mut EventStream) {
    for i in 0..24 {
        expect(s, "put", &format!("/big/{i:02}")).await;
    }
    let (event, _) = next_json(s).await;
    assert_eq!(event, "synced");
}

#[tokio::test]
async fn watchers_that_stop_reading_hold_no_more_than_the_room_for_initial_state() {
    let n = big_state(4 << 20, Duration::from_secs(30)).await;
    let stalled = stalled_watch(&n).await;
    wait_for(
        "the stalled watch to open",
        Duration::from_secs(5),
        || async { (open_watchers(&n).await == 1).then_some(()) },
    )
    .await;
    // Its state is larger than the room: it holds all of it while it does not read, so another
    // watch with a state to send waits, then is told to come back later.
    let r = n.client.events("/v1/watch/big", &[]).await;
    assert_eq!(
        status_of(r),
        (StatusCode::SERVICE_UNAVAILABLE, Some("busy".into()))
    );
    // A watch with nothing to send yet (no state) needs no room.
    let mut empty = watch(&n.client, "/v1/watch/nothing", &[]).await;
    expect_synced(&mut empty, n.revision().await).await;
    // Once the stalled client goes, its room is given back.
    drop(stalled);
    let mut s = wait_for(
        "the room to be given back",
        Duration::from_secs(10),
        || async { n.client.events("/v1/watch/big", &[]).await.ok() },
    )
    .await;
    read_big(&mut s).await;
    n.shutdown().await;
}

#[tokio::test]
async fn a_watcher_that_stops_reading_is_cut_after_the_write_timeout() {
    let n = big_state(4 << 20, Duration::from_secs(2)).await;
    let _stalled = stalled_watch(&n).await;
    wait_for(
        "the stalled watch to open",
        Duration::from_secs(5),
        || async { (open_watchers(&n).await == 1).then_some(()) },
    )
    .await;
    // The reader waits for room (less than the 10 s a watch waits) until the stalled one is cut.
    let mut s = watch(&n.client, "/v1/watch/big", &[]).await;
    read_big(&mut s).await;
    drop(s);
    wait_for(
        "the stalled watch to be cut",
        Duration::from_secs(10),
        || async { (open_watchers(&n).await == 0).then_some(()) },
    )
    .await;
    n.shutdown().await;
}
