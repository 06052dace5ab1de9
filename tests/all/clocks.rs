//! Wrong clocks, with libfaketime (Debian `faketime`) preloaded into real `herd serve`
//! processes: two nodes on loopback whose clocks differ by two minutes refuse each other
//! (nothing merged, both directions, the offset shown in `herd members`), and it lifts once the
//! clock is fixed; a node whose clock jumps back an hour goes on issuing versions after the ones
//! it issued before. (A node ahead of most of three refuses to stamp writes: tests/lab.)

use http::Method;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use tests::{wait_for, ChildNode, Cli};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The environment that runs a node with its clock moved by `offset` (`+2m`, `-1h`); `None`
/// (the test skips) without libfaketime, unless `HERD_TEST_STRICT` is set.
fn faked(offset: &str) -> Option<[(&'static str, String); 2]> {
    if !Path::new(LIBFAKETIME).exists() {
        tests::skip(&format!(
            "{LIBFAKETIME} is missing (Debian package faketime)"
        ));
        return None;
    }
    Some([
        ("LD_PRELOAD", LIBFAKETIME.to_owned()),
        ("FAKETIME", offset.to_owned()),
    ])
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

async fn get(node: &ChildNode, path: &str) -> node::client::Response {
    node.client()
        .request(Method::GET, path, &[], None)
        .await
        .expect("the node answers")
}

async fn put(node: &ChildNode, path: &str, value: &str) -> node::client::Response {
    node.client()
        .request(Method::PUT, path, &[], Some(value.to_owned().into()))
        .await
        .expect("the node answers")
}

/// The member `id` in `node`'s members view, once `ok` holds for it.
async fn member_where(
    node: &ChildNode,
    id: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(what, Duration::from_secs(20), || async {
        let v: Value = get(node, "/v1/members").await.json().ok()?;
        let m = v["members"]
            .as_array()?
            .iter()
            .find(|m| m["node_id"] == id)?
            .clone();
        ok(&m).then_some(m)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_clocks_apart_refuse_each_other_until_the_clock_is_fixed() {
    let Some(ahead) = faked("+2m") else { return };
    let ahead: Vec<(&str, &str)> = ahead.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let root = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (root.path().join("a"), root.path().join("b"));
    let init = Cli::new([
        "cluster",
        "init",
        "--data-dir",
        &a_dir.display().to_string(),
    ])
    .run();
    assert_eq!(init.code, 0, "{init:?}");
    std::fs::create_dir_all(&b_dir).unwrap();
    std::fs::copy(a_dir.join("cluster.secret"), b_dir.join("cluster.secret")).unwrap();
    let (pa, pb) = (free_port(), free_port());
    let args = |me: u16, other: u16| {
        vec![
            "--peer-addr".to_owned(),
            format!("127.0.0.1:{me}"),
            "--peer".to_owned(),
            format!("127.0.0.1:{other}"),
            "--no-mdns".to_owned(),
        ]
    };
    let (a_args, b_args) = (args(pa, pb), args(pb, pa));
    let a_args: Vec<&str> = a_args.iter().map(String::as_str).collect();
    let b_args: Vec<&str> = b_args.iter().map(String::as_str).collect();
    let a = ChildNode::start_with_args(&a_dir, &a_args)
        .await
        .expect("a starts");
    let mut b = ChildNode::start_with_env(&b_dir, &b_args, &ahead)
        .await
        .expect("b starts, two minutes ahead");
    let id = |n: &ChildNode| {
        std::fs::read_to_string(n.dir.join("node.id"))
            .unwrap()
            .trim()
            .to_owned()
    };
    let (a_id, b_id) = (id(&a), id(&b));

    // Each side measures the other and refuses it, saying by how much.
    let refused = |m: &Value| m["clock_refused"] == true;
    let seen_by_a = member_where(&a, &b_id, "a refuses b's clock", refused).await;
    let offset = seen_by_a["clock_offset_ms"].as_i64().unwrap();
    assert!((115_000..125_000).contains(&offset), "{seen_by_a}");
    let seen_by_b = member_where(&b, &a_id, "b refuses a's clock", refused).await;
    let offset = seen_by_b["clock_offset_ms"].as_i64().unwrap();
    assert!((-125_000..-115_000).contains(&offset), "{seen_by_b}");
    let table = Cli::new(["members", "--data-dir", &a_dir.display().to_string()]).run();
    assert!(
        table.stdout.contains("refused (clock)") && table.stdout.contains("+12"),
        "{table:?}"
    );

    // With two nodes neither can tell whose clock is wrong: both take writes, and nothing
    // crosses. (Three nodes or more: the one ahead of most stamps none; tests/lab.)
    assert_eq!(put(&b, "/v1/kv/from/b", "1").await.status, 200);
    assert_eq!(put(&a, "/v1/kv/from/a", "1").await.status, 200);
    assert_eq!(get(&b, "/v1/health").await.status, 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(get(&b, "/v1/kv/from/a").await.status, 404, "nothing merged");
    assert_eq!(get(&a, "/v1/kv/from/b").await.status, 404, "nothing merged");

    // Fixed: the next probe finds the clocks together; b takes writes, both converge.
    b.stop();
    let b = ChildNode::start_with_args(&b_dir, &b_args)
        .await
        .expect("b restarts");
    member_where(&a, &b_id, "a takes b again", |m| m["state"] == "alive").await;
    wait_for("a's write on b", Duration::from_secs(20), || async {
        (get(&b, "/v1/kv/from/a").await.status == 200).then_some(())
    })
    .await;
    assert_eq!(put(&b, "/v1/kv/from/b", "2").await.status, 200);
    wait_for("b's write on a", Duration::from_secs(20), || async {
        let v: Value = get(&a, "/v1/kv/from").await.json().ok()?;
        (v == json!({"a": 1, "b": 2})).then_some(())
    })
    .await;
    assert_eq!(get(&b, "/v1/health").await.status, 200);
}

/// `<millis>-<counter>-<node>` as a comparable tuple.
fn version(v: &Value) -> (u64, u64) {
    let s = v["version"].as_str().expect("a version");
    let mut parts = s.split('-').map(|p| p.parse::<u64>().unwrap_or(0));
    (parts.next().unwrap(), parts.next().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_that_jumps_back_never_makes_versions_go_backwards() {
    let Some(behind) = faked("-1h") else { return };
    let behind: Vec<(&str, &str)> = behind.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut node = ChildNode::start(dir.path()).await.expect("starts");
    let before = version(&put(&node, "/v1/kv/k", "1").await.json().unwrap());
    node.kill9();
    let node = ChildNode::start_with_env(dir.path(), &[], &behind)
        .await
        .expect("starts an hour back");
    let mut last = before;
    for i in 0..50 {
        let r = put(&node, "/v1/kv/k", &i.to_string()).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let v = version(&r.json().unwrap());
        assert!(v > last, "{v:?} after {last:?}");
        last = v;
    }
    assert_eq!(last.0, before.0, "the same millisecond, counting on");
    let got: Value = get(&node, "/v1/kv/k").await.json().unwrap();
    assert_eq!(got, json!(49));
}
