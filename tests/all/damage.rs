//! Bytes flipped on disk, in every file of a stopped node's data directory in turn: the node
//! either refuses to start with a message naming the file, or starts and serves exactly what was
//! acknowledged (a damaged cache is rebuilt, a damaged plugin file is reported and never run).

use http::Method;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tests::plugins::{hostile, installed};
use tests::ChildNode;

/// Every file under `dir`, relative to it.
fn files(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    let mut rel: Vec<PathBuf> = out
        .into_iter()
        .map(|p| p.strip_prefix(dir).unwrap().to_path_buf())
        .collect();
    rel.sort();
    rel
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

/// A data directory with registers in `store.redb` (a clean stop checkpointed them) and more
/// in the log only (a kill -9 after them), and a plugin with its compiled code cached.
async fn base(dir: &Path) -> Value {
    let mut node = ChildNode::start(dir).await.expect("starts");
    let c = node.client();
    let manifest = json!({"prefixes": ["/app"], "hooks": ["validate"]});
    installed(&c, "counter", &hostile("counter"), manifest).await;
    for i in 0..40 {
        let r = c
            .request(
                Method::PUT,
                &format!("/v1/kv/app/k{i}"),
                &[],
                Some(i.to_string().into()),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    node.stop();
    let mut node = ChildNode::start(dir).await.expect("restarts");
    let c = node.client();
    for i in 0..20 {
        let value = json!({"n": i, "text": "x".repeat(i * 40)}).to_string();
        let r = c
            .request(
                Method::PUT,
                &format!("/v1/kv/app/w{i}"),
                &[],
                Some(value.into()),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let doc: Value = c
        .request(Method::GET, "/v1/kv/app", &[], None)
        .await
        .unwrap()
        .json()
        .unwrap();
    node.kill9();
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_any_file_is_refused_or_repaired_never_served() {
    let root = tempfile::tempdir().unwrap();
    let base_dir = root.path().join("base");
    let expected = base(&base_dir).await;
    let token = std::fs::read_to_string(base_dir.join("admin.token")).unwrap();
    let trial = root.path().join("trial");
    let log = root.path().join("herd.log");
    let (mut refused, mut served) = (Vec::new(), Vec::new());
    for rel in files(&base_dir) {
        let name = rel.display().to_string();
        // node.json only tells clients where the node listens; it is written at every start.
        if name == "node.json" {
            continue;
        }
        let bytes = std::fs::read(base_dir.join(&rel)).unwrap();
        let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let mut at: Vec<usize> = [used / 5, used / 2, used * 4 / 5, used.saturating_sub(1)]
            .into_iter()
            .filter(|&a| a < bytes.len())
            .collect();
        at.dedup();
        for at in at {
            copy_dir(&base_dir, &trial);
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            std::fs::write(trial.join(&rel), &bad).unwrap();
            // The compiled code is the cache of the component: without it, the component
            // itself is read (and checked).
            if name.starts_with("plugins/blobs/") {
                std::fs::remove_dir_all(trial.join("plugins/cache")).unwrap();
            }
            let what = format!("{name}, byte {at} of {}", bytes.len());
            let node = match ChildNode::start_logged(&trial, &log).await {
                Err(e) => {
                    let e = format!("{e:#}");
                    let file = trial.join(&rel).display().to_string();
                    assert!(e.contains(&file), "{what}: the refusal names the file: {e}");
                    refused.push(what);
                    continue;
                }
                Ok(node) => node,
            };
            // The harness's client reads the token from the directory: the original one (a
            // flipped bootstrap token is not in the store; the node's log says how to make one).
            std::fs::write(trial.join("admin.token"), &token).unwrap();
            let c = node.client();
            let get = |path: &'static str| {
                let c = c.clone();
                async move { c.request(Method::GET, path, &[], None).await.unwrap() }
            };
            let doc: Value = get("/v1/kv/app").await.json().unwrap_or(Value::Null);
            assert_eq!(doc, expected, "{what}: served as acknowledged");
            assert_eq!(get("/v1/health").await.status, 200, "{what}: healthy");
            let plugin: Value = get("/v1/plugins/counter").await.json().unwrap();
            if name.starts_with("plugins/blobs/") {
                assert_eq!(plugin["state"], "not_loaded", "{what}: {plugin}");
                let message = plugin["last_error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains("is damaged"), "{what}: {plugin}");
            } else {
                assert_eq!(plugin["state"], "healthy", "{what}: {plugin}");
                let r = c
                    .request(Method::PUT, "/v1/kv/app/x", &[], Some("\"reject\"".into()))
                    .await
                    .unwrap();
                assert_eq!(r.status, 422, "{what}: the plugin runs");
            }
            served.push(what);
            drop(node);
        }
    }
    eprintln!(
        "flipped bytes: {} starts refused, naming the file: {refused:?}\n{} served exactly \
         what was acknowledged: {served:?}",
        refused.len(),
        served.len()
    );
    assert!(
        refused.iter().any(|w| w.starts_with("store.wal/")),
        "a flip in the log's records is found"
    );
}
