//! `herd watch --exec`: a command run at start and after changes settle, never twice at once,
//! told what changed; and `herd watch` (with or without `--exec`) following its node through a
//! restart and failing over to the next `--node`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::Method;
use serde_json::Value;
use tests::mount::put_json;
use tests::{herd_bin, wait_for, ChildNode, Cli};

const T: Duration = Duration::from_secs(20);

/// A `herd watch` child; killed when dropped.
struct Watcher(Child);

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `herd --data-dir DATA [EXTRA...] watch ARGS...`, stdout and stderr to files in `dir`, and
/// `$LOG` (for [`CMD`]) set to `dir/runs.log`.
fn spawn_watch(data: &Path, extra: &[&str], args: &[&str], dir: &Path) -> Watcher {
    let out = std::fs::File::create(dir.join("watch.out")).unwrap();
    let err = std::fs::File::create(dir.join("watch.err")).unwrap();
    let child = Command::new(herd_bin())
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .arg("watch")
        .args(args)
        .env("LOG", dir.join("runs.log"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("herd watch");
    Watcher(child)
}

/// The command's log: one JSON object per line, written by the command at its start
/// (`"start"`, with what herd gave it) and at its end (`"end"`).
const CMD: &str = r#"printf '{"start":"%s","revision":%s,"changed":"%s","stdin":%s}\n' "$HERD_REASON" "$HERD_REVISION" "$(printf %s "$HERD_CHANGED" | tr '\n' ,)" "$(cat)" >> "$LOG"; sleep 0.4; echo '{"end":1}' >> "$LOG"; case "$HERD_CHANGED" in *fail*) exit 3;; esac"#;

fn runs(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits until the log holds `n` finished runs; returns the runs' start lines.
async fn finished(log: &Path, n: usize) -> Vec<Value> {
    wait_for(&format!("{n} finished runs"), T, || async {
        let lines = runs(log);
        let ends = lines.iter().filter(|l| l.get("end").is_some()).count();
        (ends >= n).then(|| {
            lines
                .into_iter()
                .filter(|l| l.get("start").is_some())
                .collect()
        })
    })
    .await
}

fn reasons(starts: &[Value]) -> Vec<&str> {
    starts
        .iter()
        .map(|s| s["start"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn exec_runs_at_start_and_once_per_settled_burst_never_twice_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = ChildNode::start(&data).await.unwrap();
    let client = node.client();
    put_json(&client, "/app/a", "1").await;
    put_json(&client, "/other/x", "1").await;
    let log = dir.path().join("runs.log");
    let _w = spawn_watch(
        &data,
        &[],
        &["/app", "--exec", CMD, "--wait", "300ms:2s"],
        dir.path(),
    );
    let starts = finished(&log, 1).await;
    assert_eq!(reasons(&starts), ["start"]);
    assert_eq!(starts[0]["stdin"]["reason"], "start");
    assert_eq!(starts[0]["stdin"]["path"], "/app");

    // A burst within the quiet time, and a write outside /app: one run, told both paths.
    for i in 0..5 {
        put_json(&client, "/app/b", &i.to_string()).await;
    }
    put_json(&client, "/other/x", "2").await;
    let r = client
        .request(http::Method::DELETE, "/v1/kv/app/a", &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let starts = finished(&log, 2).await;
    assert_eq!(reasons(&starts), ["start", "change"]);
    assert_eq!(starts[1]["changed"], "/app/b,/app/a");
    let changes = &starts[1]["stdin"]["changes"];
    assert_eq!(
        changes,
        &serde_json::json!([{"type": "put", "path": "/app/b"}, {"type": "delete", "path": "/app/a"}])
    );
    let revision = starts[1]["revision"].as_u64().unwrap();
    assert_eq!(starts[1]["stdin"]["revision"], revision);

    // A change during a run waits for it to end; a failing run is logged and the watch goes on.
    put_json(&client, "/app/c", "1").await;
    wait_for("the third run to start", T, || async {
        (runs(&log)
            .iter()
            .filter(|l| l.get("start").is_some())
            .count()
            == 3)
            .then_some(())
    })
    .await;
    put_json(&client, "/app/fail", "1").await;
    put_json(&client, "/app/d", "1").await;
    let starts = finished(&log, 4).await;
    assert_eq!(reasons(&starts), ["start", "change", "change", "change"]);
    assert_eq!(starts[3]["changed"], "/app/fail,/app/d");
    wait_for("the failure in the log", T, || async {
        let err = std::fs::read_to_string(dir.path().join("watch.err")).unwrap_or_default();
        err.contains("failed: exit status: 3").then_some(())
    })
    .await;
    put_json(&client, "/app/e", "1").await;
    let starts = finished(&log, 5).await;
    assert_eq!(starts[4]["changed"], "/app/e");
    // Never two at once: starts and ends alternate.
    let kinds: Vec<bool> = runs(&log)
        .iter()
        .map(|l| l.get("start").is_some())
        .collect();
    for (i, is_start) in kinds.iter().enumerate() {
        assert_eq!(*is_start, i % 2 == 0, "runs overlapped: {kinds:?}");
    }
}

#[tokio::test]
async fn watch_follows_its_node_through_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut node = ChildNode::start_at(&data, &addr, &[]).await.unwrap();
    put_json(&node.client(), "/app/a", "1").await;
    let exec_dir = dir.path().join("exec");
    std::fs::create_dir_all(&exec_dir).unwrap();
    let log = exec_dir.join("runs.log");
    let _w = spawn_watch(
        &data,
        &[],
        &["/app", "--exec", CMD, "--wait", "0"],
        &exec_dir,
    );
    let _plain = spawn_watch(&data, &[], &["/app"], dir.path());
    finished(&log, 1).await;
    put_json(&node.client(), "/app/b", "2").await;
    finished(&log, 2).await;

    // Killed and started again on the same address: the watch comes back by itself and
    // resumes where it was (the node's change log survives the restart), so the write made
    // just after the restart is the only thing that runs the command again.
    node.kill9();
    node = ChildNode::start_at(&data, &addr, &[]).await.unwrap();
    put_json(&node.client(), "/app/c", "3").await;
    let starts = finished(&log, 3).await;
    assert_eq!(reasons(&starts), ["start", "change", "change"]);
    assert_eq!(starts[2]["changed"], "/app/c");
    let out = || std::fs::read_to_string(dir.path().join("watch.out")).unwrap_or_default();
    wait_for("the plain watch to print /app/c", T, || async {
        out().contains("put /app/c 3").then_some(())
    })
    .await;
    let text = out();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "put /app/a 1", "{text}");
    assert!(lines[1].starts_with("synced "), "{text}");
    // Nothing printed twice: the resume's `synced` line says it caught up.
    let puts: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("put "))
        .collect();
    assert_eq!(
        puts,
        ["put /app/a 1", "put /app/b 2", "put /app/c 3"],
        "{text}"
    );
    let err = std::fs::read_to_string(exec_dir.join("watch.err")).unwrap();
    assert!(!err.contains("starting over"), "{err}");

    // Restarted with a window of two events after three more writes: a resume from before
    // it gets 410 with what to do, and the watch starts over (one `resync` run).
    drop(_plain);
    node.stop();
    let config = dir.path().join("small.toml");
    std::fs::write(&config, "[storage]\nlog_events = 2\n").unwrap();
    let small = ["--config", config.to_str().unwrap()];
    node = ChildNode::start_at(&data, &addr, &small).await.unwrap();
    let c = node.client();
    let r = c.request(Method::GET, "/v1/kv/", &[], None).await.unwrap();
    let before: u64 = r.headers["x-herd-revision"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    for (k, v) in [("d", "4"), ("e", "5"), ("f", "6")] {
        put_json(&c, &format!("/app/{k}"), v).await;
    }
    let path = format!("/v1/watch/app?since={before}");
    let r = c.request(Method::GET, &path, &[], None).await.unwrap();
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, 410, "{body}");
    assert!(body.contains("watch again without since"), "{body}");
    // `herd watch --since` from there starts over: one `resync` run, then changes.
    let again = dir.path().join("again");
    std::fs::create_dir_all(&again).unwrap();
    let since = before.to_string();
    let args = ["/app", "--since", &since, "--exec", CMD, "--wait", "0"];
    let _w2 = spawn_watch(&data, &[], &args, &again);
    let starts = finished(&again.join("runs.log"), 1).await;
    assert_eq!(reasons(&starts), ["resync"]);
    put_json(&c, "/app/g", "7").await;
    let starts = finished(&again.join("runs.log"), 2).await;
    assert_eq!(reasons(&starts), ["resync", "change"]);
    let err = std::fs::read_to_string(again.join("watch.err")).unwrap();
    assert!(
        err.contains("starting over from the current state"),
        "{err}"
    );
}

#[tokio::test]
async fn watch_fails_over_to_the_next_node() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("cluster.secret");
    let init = Cli::new(["cluster", "init", "--out", secret.to_str().unwrap()]).run();
    assert_eq!(init.code, 0, "{init:?}");
    let port = |_: u8| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (pa, pb) = (port(0), port(1));
    let secret_arg = secret.to_str().unwrap().to_owned();
    let args = |own: u16, other: u16| -> Vec<String> {
        vec![
            "--cluster-secret".into(),
            secret_arg.clone(),
            "--peer-addr".into(),
            format!("127.0.0.1:{own}"),
            "--peer".into(),
            format!("127.0.0.1:{other}"),
        ]
    };
    let a_args = args(pa, pb);
    let b_args = args(pb, pa);
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    let mut a = ChildNode::start_with_args(&da, &refs(&a_args))
        .await
        .unwrap();
    let b = ChildNode::start_with_args(&db, &refs(&b_args))
        .await
        .unwrap();
    // A token made on A, used against both once B has it; one CA file trusting both.
    let token = Cli::new([
        "--data-dir",
        da.to_str().unwrap(),
        "token",
        "create",
        "watcher",
        "--role",
        "read",
    ])
    .run();
    assert_eq!(token.code, 0, "{token:?}");
    let token = token.stdout.trim().to_owned();
    put_json(&a.client(), "/app/a", "1").await;
    wait_for("B to have the write and the token", T, || async {
        let r = Cli::new([
            "--node",
            &b.url,
            "--ca-cert",
            db.join("tls/ca.crt").to_str().unwrap(),
            "--token",
            &token,
            "get",
            "/app/a",
        ])
        .run();
        (r.code == 0).then_some(())
    })
    .await;
    let bundle = dir.path().join("cas.pem");
    let mut pem = std::fs::read(da.join("tls/ca.crt")).unwrap();
    pem.extend(std::fs::read(db.join("tls/ca.crt")).unwrap());
    std::fs::write(&bundle, pem).unwrap();
    let log = dir.path().join("runs.log");
    let nodes = format!("{},{}", a.url, b.url);
    let extra = [
        "--node",
        &nodes,
        "--token",
        &token,
        "--ca-cert",
        bundle.to_str().unwrap(),
    ];
    let _w = spawn_watch(
        dir.path(),
        &extra,
        &["/app", "--exec", CMD, "--wait", "0"],
        dir.path(),
    );
    let starts = finished(&log, 1).await;
    assert_eq!(starts[0]["stdin"]["node"], a.url);
    // A goes away: the watch fails over to B, starts over there (revisions are per node), and
    // follows B's changes.
    a.kill9();
    let starts = finished(&log, 2).await;
    assert_eq!(reasons(&starts), ["start", "resync"]);
    assert_eq!(starts[1]["stdin"]["node"], b.url);
    put_json(&b.client(), "/app/b", "2").await;
    let starts = finished(&log, 3).await;
    assert_eq!(starts[2]["changed"], "/app/b");
    let err = std::fs::read_to_string(dir.path().join("watch.err")).unwrap();
    assert!(err.contains(&format!("failing over to {}", b.url)), "{err}");
}

#[test]
fn several_nodes_are_refused_outside_watch_and_a_bad_wait_is_refused() {
    let out = Cli::new(["--node", "https://a:1,https://b:2", "get", "/x"]).run();
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("only for `herd watch`"), "{out:?}");
    let out = Cli::new(["watch", "/", "--exec", "true", "--wait", "2s:1s"]).run();
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("MAX is shorter than MIN"), "{out:?}");
    let out = Cli::new(["watch", "/", "--wait", "1s"]).run();
    assert_eq!(out.code, 2, "--wait needs --exec: {out:?}");
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
