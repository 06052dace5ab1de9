//! inotify on the mount for changes made elsewhere: REST writes, a peer's writes, expiries and
//! plugins' derived outputs raise on the mount the events a local process making the same
//! change would (`inotifywait`, `entr`), with the new content readable when they arrive; the
//! mount's own writes are not announced twice.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tests::cluster::TestCluster;
use tests::mount::{is_mounted, lazy_unmount, put_json, require_fuse, sh_in, MountedNode};
use tests::{wait_for, ChildNode, Cli};

const T: Duration = Duration::from_secs(10);

/// The events inotify reports for changes (not the watcher's own reads).
const EVENTS: &str = "modify,close_write,create,delete,delete_self,moved_from,moved_to";

/// A child process whose stdout lines are collected as they come.
struct Lines {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Lines {
    /// Runs `script` with bash in `dir`; returns once its stderr has said `ready` (if given).
    fn spawn(dir: &Path, script: &str, ready: Option<&str>) -> Lines {
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .process_group(0) // its own group, so that dropping it ends the whole pipeline
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bash runs");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        let wait = ready.is_some();
        let ready = ready.map(str::to_owned);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if ready.as_deref().is_some_and(|r| line.contains(r)) {
                    let _ = tx.send(());
                }
                eprintln!("[watcher] {line}");
            }
        });
        if wait {
            rx.recv_timeout(T).expect("the watcher is ready");
        }
        Lines { child, lines }
    }

    /// `inotifywait -m -r` on `dir`, lines `PATH EVENTS` with paths relative to `dir`.
    fn inotifywait(dir: &Path) -> Lines {
        let script = format!("exec inotifywait -m -r -e {EVENTS} --format '%w%f %e' .");
        Lines::spawn(dir, &script, Some("Watches established"))
    }

    fn now(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until the lines end with `want` (after those already there at `from`).
    async fn expect(&self, from: usize, want: &[&str]) -> usize {
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        let what = format!("lines {want:?}");
        let got = wait_for(&what, T, || async {
            let now = self.now();
            (now.len() >= from + want.len()).then_some(now)
        })
        .await;
        assert_eq!(got[from..], want[..], "all lines: {got:#?}");
        from + want.len()
    }

    /// No more lines come within a short while.
    async fn quiet(&self, from: usize) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = self.now();
        assert_eq!(now.len(), from, "unexpected lines: {:#?}", &now[from..]);
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// The events of a file whose content changed elsewhere.
fn modified(name: &str) -> [String; 2] {
    [
        format!("./{name} MODIFY"),
        format!("./{name} CLOSE_WRITE,CLOSE"),
    ]
}

/// The events of a file created elsewhere.
fn created(name: &str) -> [String; 3] {
    [
        format!("./{name} CREATE"),
        format!("./{name} MODIFY"),
        format!("./{name} CLOSE_WRITE,CLOSE"),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn rest_writes_raise_the_events_a_local_process_would_and_local_writes_raise_them_once() {
    if !require_fuse("rest_writes_raise_inotify_events") {
        return;
    }
    let m = MountedNode::start().await;
    m.put("/app", r#"{"x": 1, "y": 2}"#).await;
    let w = Lines::inotifywait(&m.mnt.join("app"));
    let mut n = 0;

    m.put("/app/x", "2").await;
    n = w.expect(n, &strs(&modified("x"))).await;
    m.put("/app/z", r#""new""#).await;
    n = w.expect(n, &strs(&created("z"))).await;
    m.delete("/app/y").await;
    n = w.expect(n, &["./y DELETE"]).await;
    m.put("/app/d", r#"{"e": 1}"#).await;
    n = w.expect(n, &["./d CREATE,ISDIR"]).await;
    // inotifywait now watches d: a key made inside it is created there.
    tokio::time::sleep(Duration::from_millis(200)).await;
    m.put("/app/d/f", "1").await;
    n = w.expect(n, &strs(&created("d/f"))).await;
    // A directory removed elsewhere is emptied first, as `rm -r` would.
    m.delete("/app/d").await;
    n = w
        .expect(
            n,
            &[
                "./d/e DELETE",
                "./d/f DELETE",
                "./d/ DELETE_SELF",
                "./d DELETE,ISDIR",
            ],
        )
        .await;
    // A key that becomes a directory: the file goes, the directory comes.
    m.put("/app/x", r#"{"k": 1}"#).await;
    n = w.expect(n, &["./x DELETE", "./x CREATE,ISDIR"]).await;
    // The value a key already holds, written again over REST: a new version on the watch
    // stream, but the file's content did not change, so nothing is raised.
    m.put("/app/z", r#""new""#).await;
    w.quiet(n).await;

    // Through the mount: the kernel raises the writer's own events, and the replay of its
    // change adds none.
    m.ok("printf 5 > app/z && touch app/t && rm app/t && mkdir app/e && mv app/z app/w");
    n = w
        .expect(
            n,
            &[
                "./z MODIFY",
                "./z MODIFY",
                "./z CLOSE_WRITE,CLOSE",
                "./t CREATE",
                "./t CLOSE_WRITE,CLOSE",
                "./t DELETE",
                "./e CREATE,ISDIR",
                "./z MOVED_FROM",
                "./w MOVED_TO",
            ],
        )
        .await;
    w.quiet(n).await;
}

#[tokio::test]
async fn a_program_reading_on_each_event_reads_the_new_value() {
    if !require_fuse("a_program_reading_on_each_event") {
        return;
    }
    let m = MountedNode::start().await;
    m.put("/app/port", "8000").await;
    let reader = Lines::spawn(
        &m.mnt,
        "inotifywait -m -e close_write --format %f app | while read f; do echo \"$f=$(cat app/$f)\"; done",
        Some("Watches established"),
    );
    let mut n = 0;
    for port in 8001..8021 {
        m.put("/app/port", &port.to_string()).await;
        n = reader.expect(n, &[&format!("port={port}")]).await;
    }
    // A storm: 2,000 distinct keys written as fast as REST takes them; every one is created on
    // the mount, and the mount answers meanwhile.
    let w = Lines::inotifywait(&m.mnt.join("app"));
    let client = m.client.clone();
    let writer = tokio::spawn(async move {
        for i in 0..2000 {
            put_json(&client, &format!("/app/k{i}"), &i.to_string()).await;
        }
    });
    while !writer.is_finished() {
        let out = m.sh("cat app/port");
        assert_eq!(out.stdout, "8020\n", "{out:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writer.await.unwrap();
    let created = wait_for("2,000 creations", Duration::from_secs(60), || async {
        let c: Vec<String> = w
            .now()
            .into_iter()
            .filter(|l| l.ends_with(" CREATE"))
            .collect();
        (c.len() >= 2000).then_some(c)
    })
    .await;
    let mut names: Vec<&str> = created.iter().map(|l| &l[2..l.len() - 7]).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 2000, "each key created exactly once");
    assert_eq!(m.ok("cat app/k1999"), "1999\n");
}

#[tokio::test]
async fn expiries_and_derived_outputs_raise_events() {
    if !require_fuse("expiries_and_derived_outputs_raise_events") {
        return;
    }
    let m = MountedNode::start().await;
    m.put("/app/keep", "1").await;
    let w = Lines::inotifywait(&m.mnt.join("app"));
    let r = m
        .client
        .request(
            http::Method::PUT,
            "/v1/kv/app/lease?ttl=500ms",
            &[],
            Some(bytes::Bytes::from("1")),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let n = w.expect(0, &strs(&created("lease"))).await;
    w.expect(n, &["./lease DELETE"]).await;

    tests::plugins::installed(
        &m.client,
        "nginx-upstream",
        &tests::plugins::shipped("nginx-upstream"),
        serde_json::json!({"prefixes": ["/services"], "hooks": ["derive"], "output": "/rendered/nginx", "limits": {"memory": 33554432}}),
    )
    .await;
    m.put(
        "/services/web/a",
        r#"{"address": "10.0.0.5", "port": 8080}"#,
    )
    .await;
    wait_for("the rendered file", Duration::from_secs(30), || async {
        m.sh("cat rendered/nginx/web.conf")
            .stdout
            .contains("10.0.0.5")
            .then_some(())
    })
    .await;
    let w = Lines::inotifywait(&m.mnt.join("rendered/nginx"));
    m.put(
        "/services/web/b",
        r#"{"address": "10.0.0.6", "port": 8080}"#,
    )
    .await;
    let n = w.expect(0, &strs(&modified("web.conf"))).await;
    assert!(m.ok("cat rendered/nginx/web.conf").contains("10.0.0.6"));
    m.put(
        "/services/api/a",
        r#"{"address": "10.0.0.7", "port": 9000}"#,
    )
    .await;
    w.expect(n, &strs(&created("api.conf"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_writes_raise_events_on_the_mount_of_another_node() {
    if !require_fuse("a_peers_writes_raise_events") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let at = mnt.clone();
    let mut c = TestCluster::start(2, move |i, cfg| {
        if i == 1 {
            cfg.mount.dir = Some(at.clone());
        }
    })
    .await;
    c.wait_meshed(Duration::from_secs(20)).await;
    put_json(&c.nodes[0].client, "/app/x", "1").await;
    wait_for("the write on node 1's mount", T, || async {
        (sh_in(&mnt, "cat app/x").stdout == "1\n").then_some(())
    })
    .await;
    let w = Lines::inotifywait(&mnt.join("app"));
    put_json(&c.nodes[0].client, "/app/x", "2").await;
    let n = w.expect(0, &strs(&modified("x"))).await;
    put_json(&c.nodes[0].client, "/app/y", "3").await;
    w.expect(n, &strs(&created("y"))).await;
    assert_eq!(sh_in(&mnt, "cat app/y").stdout, "3\n");
    drop(w);
    for node in &mut c.nodes {
        node.stop().await;
    }
    if is_mounted(&mnt) {
        lazy_unmount(&mnt);
    }
}

#[tokio::test]
async fn herd_mount_raises_events_and_entr_reruns_on_each_change() {
    if !require_fuse("herd_mount_raises_events") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = ChildNode::start(&dir.path().join("data")).await.unwrap();
    let client = node.client();
    let data = dir.path().join("data").display().to_string();
    let reader = Cli::new([
        "--data-dir",
        &data,
        "token",
        "create",
        "reader",
        "--role",
        "read",
    ])
    .run();
    assert_eq!(reader.code, 0, "{reader:?}");
    let token = reader.stdout.trim().to_owned();
    put_json(&client, "/app/port", "8000").await;
    // A read-only mount with a read-only token: the replay still raises events.
    let mnt: PathBuf = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut mount = KillOnDrop(
        Command::new(tests::herd_bin())
            .args([
                "--data-dir",
                &data,
                "--token",
                &token,
                "mount",
                "--read-only",
            ])
            .arg(&mnt)
            .env("HERD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("herd mount"),
    );
    wait_for("the mount", T, || async {
        (sh_in(&mnt, "cat app/port").stdout == "8000\n").then_some(())
    })
    .await;
    let entr = Lines::spawn(&mnt, "echo app/port | exec entr -n -p cat app/port", None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let w = Lines::inotifywait(&mnt.join("app"));
    let mut seen = 0;
    let mut n = 0;
    for port in 8001..8004 {
        put_json(&client, "/app/port", &port.to_string()).await;
        n = w.expect(n, &strs(&modified("port"))).await;
        seen = entr.expect(seen, &[&port.to_string()]).await;
        // entr watches the file again once its command has run; a change before that is
        // missed by entr itself, on any filesystem.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    put_json(&client, "/app/new", "1").await;
    n = w.expect(n, &strs(&created("new"))).await;
    let r = client
        .request(http::Method::DELETE, "/v1/kv/app/new", &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    n = w.expect(n, &["./new DELETE"]).await;
    // Writes through the read-only mount fail and modify nothing. (The kernel opens the file
    // before the daemon refuses its truncation, so closing it raises `IN_CLOSE_WRITE`: a
    // limitation the README states.)
    let out = sh_in(&mnt, "echo 1 > app/port");
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    assert_eq!(sh_in(&mnt, "cat app/port").stdout, "8003\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = &w.now()[n..];
    assert!(
        after.iter().all(|l| l == "./port CLOSE_WRITE,CLOSE"),
        "{after:?}"
    );
    // A plugin's derived output on the node: in the remote mount, followed through the watch
    // stream (derived keys are events too).
    tests::plugins::installed(
        &client,
        "nginx-upstream",
        &tests::plugins::shipped("nginx-upstream"),
        serde_json::json!({"prefixes": ["/services"], "hooks": ["derive"], "output": "/rendered/nginx", "limits": {"memory": 33554432}}),
    )
    .await;
    put_json(
        &client,
        "/services/web/a",
        r#"{"address": "10.0.0.5", "port": 8080}"#,
    )
    .await;
    wait_for(
        "the rendered file on the remote mount",
        Duration::from_secs(30),
        || async {
            sh_in(&mnt, "cat rendered/nginx/web.conf")
                .stdout
                .contains("10.0.0.5")
                .then_some(())
        },
    )
    .await;
    // `cat` can see the file before the mount has re-enacted its creation (the lookup asks
    // the node); that re-enactment's IN_CREATE may still reach the watcher (late under load,
    // but before the modification, which comes later in the watch stream).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rendered = Lines::inotifywait(&mnt.join("rendered/nginx"));
    put_json(
        &client,
        "/services/web/b",
        r#"{"address": "10.0.0.6", "port": 8080}"#,
    )
    .await;
    let want = modified("web.conf");
    let got = wait_for("the rendered file's events", T, || async {
        let now = rendered.now();
        now.ends_with(&want).then_some(now)
    })
    .await;
    // Re-enacted late, the creation shows as a whole (or with the change folded into it).
    let before = &got[..got.len() - want.len()];
    assert!(
        before.is_empty() || before == ["./web.conf CREATE"] || before == created("web.conf"),
        "only the modification (after, perhaps, the creation's late re-enactment): {got:#?}"
    );
    assert!(sh_in(&mnt, "cat rendered/nginx/web.conf")
        .stdout
        .contains("10.0.0.6"));
    drop((w, entr, rendered));
    let _ = Command::new("kill")
        .args(["-TERM", &mount.0.id().to_string()])
        .status();
    assert!(mount.0.wait().unwrap().success());
    assert!(!is_mounted(&mnt));
}

/// A child process killed (and reaped) when the test ends, also by a panic.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
