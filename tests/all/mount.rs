//! The file view on a real FUSE mount (`herd serve --mount`, `herd mount`), driven through the
//! shell tools people use, with the store checked over REST.

use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;
use tests::mount::{is_mounted, lazy_unmount, put_json, require_fuse, sh_in, MountedNode};
use tests::{wait_for, ChildNode, Cli};

#[tokio::test]
async fn files_read_as_documented_and_writes_store_json_or_strings() {
    if !require_fuse("files_read_as_documented") {
        return;
    }
    let m = MountedNode::start().await;
    m.put("/app", r#"{"name":"web","port":8080,"tags":["a","b"],"db":{"host":"db1"},"on":true,"none":null,"q":"8080"}"#).await;

    assert_eq!(m.ok("cat app/name"), "web\n");
    assert_eq!(m.ok("cat app/port"), "8080\n");
    assert_eq!(m.ok("cat app/tags"), "[\"a\",\"b\"]\n");
    assert_eq!(m.ok("cat app/on app/none"), "true\nnull\n");
    assert_eq!(
        m.ok("LC_ALL=C ls app"),
        "db\nname\nnone\non\nport\nq\ntags\n"
    );
    assert_eq!(m.ok("head -c 2 app/name"), "we");
    assert_eq!(m.ok("stat -c '%s %F' app/port"), "5 regular file\n");
    assert_eq!(m.ok("stat -c '%F' app/db"), "directory\n");
    // mtime is the version's time: within a minute of now.
    let mtime: u64 = m.ok("stat -c %Y app/port").trim().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(mtime.abs_diff(now) < 60, "mtime {mtime} vs now {now}");
    // A string that would read back as another type is shown quoted, so it round-trips.
    assert_eq!(m.ok("cat app/q"), "\"8080\"\n");

    m.ok("echo 9090 > app/port");
    assert_eq!(m.get("/app/port").await, Some(json!(9090)));
    m.ok("echo hi > app/greet");
    assert_eq!(m.get("/app/greet").await, Some(json!("hi")));
    m.ok("echo '\"8080\"' > app/sport");
    assert_eq!(m.get("/app/sport").await, Some(json!("8080")));
    m.ok("printf 'x y' > app/p");
    assert_eq!(m.get("/app/p").await, Some(json!("x y")));
    m.ok("echo more >> app/name");
    assert_eq!(m.get("/app/name").await, Some(json!("web\nmore")));
    m.ok("echo t | tee app/t > /dev/null");
    assert_eq!(m.get("/app/t").await, Some(json!("t")));
    m.ok("python3 -c 'open(\"app/py\", \"w\").write(\"[1, 2]\\n\")'");
    assert_eq!(m.get("/app/py").await, Some(json!([1, 2])));
    // An object written into a file turns the key into a directory.
    m.ok(r#"echo '{"a":1,"b":{"c":true}}' > app/obj"#);
    assert_eq!(m.get("/app/obj").await, Some(json!({"a":1,"b":{"c":true}})));
    m.ok("test -d app/obj && test -f app/obj/b/c");
    assert_eq!(m.ok("cat app/obj/b/c"), "true\n");
}

#[tokio::test]
async fn files_behave_as_on_a_local_disk_for_common_tools() {
    if !require_fuse("files_behave_as_on_a_local_disk") {
        return;
    }
    let m = MountedNode::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path().display().to_string();
    m.put("/svc", r#"{"a":"alpha","b":2,"sub":{"c":"gamma"}}"#)
        .await;

    // cp in (a JSON document onto a new key imports a subtree) and out.
    std::fs::write(
        scratch.path().join("doc.json"),
        r#"{"x":{"y":[1,2]},"z":"zed"}"#,
    )
    .unwrap();
    m.ok(&format!("cp {s}/doc.json imported"));
    assert_eq!(
        m.get("/imported").await,
        Some(json!({"x":{"y":[1,2]},"z":"zed"}))
    );
    m.ok(&format!("cp svc/a {s}/a.out"));
    assert_eq!(
        std::fs::read_to_string(scratch.path().join("a.out")).unwrap(),
        "alpha\n"
    );

    // mv: rename, over an existing key, and of a whole directory.
    m.ok("mv svc/a svc/a2");
    assert_eq!(m.get("/svc/a").await, None);
    assert_eq!(m.get("/svc/a2").await, Some(json!("alpha")));
    m.ok("mv svc/a2 svc/b");
    assert_eq!(m.get("/svc/b").await, Some(json!("alpha")));
    m.ok("mv svc/sub moved");
    assert_eq!(m.get("/svc/sub").await, None);
    assert_eq!(m.get("/moved").await, Some(json!({"c":"gamma"})));

    // mkdir, mkdir -p, rmdir, rm, rm -r.
    m.ok("mkdir empty && mkdir -p deep/er/est");
    assert_eq!(m.get("/empty").await, Some(json!({})));
    assert_eq!(m.get("/deep").await, Some(json!({"er":{"est":{}}})));
    let out = m.sh("rmdir deep");
    assert_ne!(out.code, 0, "rmdir of a non-empty directory must fail");
    assert!(out.stderr.contains("not empty"), "{out:?}");
    m.ok("rmdir deep/er/est && rmdir empty");
    assert_eq!(m.get("/empty").await, None);
    assert_eq!(m.get("/deep").await, Some(json!({"er":{}})));
    m.ok("rm svc/b && rm -r moved deep");
    assert_eq!(m.get("/svc/b").await, None);
    assert_eq!(m.get("/moved").await, None);

    // touch makes an empty key and leaves an existing value alone; truncate empties one.
    m.ok("touch new && touch svc/c");
    assert_eq!(m.get("/new").await, Some(json!("")));
    m.ok("echo keep > kept && touch kept");
    assert_eq!(m.get("/kept").await, Some(json!("keep")));
    m.ok("truncate -s 0 kept");
    assert_eq!(m.get("/kept").await, Some(json!("")));

    // ls -la, stat, find, grep -r, diff -r against a copy.
    let listing = m.ok("ls -la svc");
    assert!(listing.contains(" c\n"), "{listing}");
    assert_eq!(
        m.ok("find . -path ./.herd -prune -o -type f -print | sort"),
        "./imported/x/y\n./imported/z\n./kept\n./new\n./svc/c\n"
    );
    assert_eq!(
        m.ok("grep -r zed --exclude-dir=.herd ."),
        "./imported/z:zed\n"
    );
    m.ok(&format!(
        "cp -r imported {s}/copy && diff -r imported {s}/copy"
    ));

    // sed -i and vim save through their temporary files, which never become keys.
    m.ok("echo 'listen 80' > conf && sed -i 's/80/8080/' conf");
    assert_eq!(m.get("/conf").await, Some(json!("listen 8080")));
    m.ok("vim -Es -u NONE -i NONE -c 's/8080/9090/' -c 'wq' conf");
    assert_eq!(m.get("/conf").await, Some(json!("listen 9090")));
    m.ok("vim -Es -u NONE -i NONE -c 'set backup' -c 's/9090/7070/' -c 'w' -c 'q' conf");
    assert_eq!(m.get("/conf").await, Some(json!("listen 7070")));
    let doc = m.get("/").await.unwrap();
    let keys: Vec<&String> = doc.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["conf", "imported", "kept", "new", "svc"], "{doc}");
}

/// The node's revision: it moves with every change the store makes.
async fn revision(m: &MountedNode) -> u64 {
    let resp = m
        .client
        .request(Method::GET, "/v1/status", &[], None)
        .await
        .unwrap();
    resp.json().unwrap()["revision"].as_u64().unwrap()
}

/// Tools that save through a hidden temporary renamed over the key (rsync, Python's tempfile
/// and os.replace) make one write of the key and never show the temporary; a second `rsync -a`
/// of an unchanged tree, which rewrites every file, changes nothing.
#[tokio::test]
async fn hidden_temporaries_and_unchanged_rewrites_change_nothing() {
    if !require_fuse("hidden_temporaries_and_unchanged_rewrites_change_nothing") {
        return;
    }
    let m = MountedNode::start().await;
    let src = tempfile::tempdir().unwrap();
    let s = src.path().display();
    sh_in(
        src.path(),
        "mkdir -p app && echo 8080 > app/port && echo web > app/name && echo '\"8080\"' > app/quoted \
         && printf '{\\n  \"db\": {\"port\": 5432}\\n}\\n' > app/app.json",
    );
    let before = revision(&m).await;
    m.ok(&format!("rsync -a {s}/ ./"));
    let after_first = revision(&m).await;
    assert_eq!(
        after_first - before,
        5,
        "one write per directory and file, none for temporaries"
    );
    assert_eq!(
        m.get("/app").await,
        Some(
            json!({"port": 8080, "name": "web", "quoted": "8080", "app.json": {"db": {"port": 5432}}})
        )
    );
    // A *.json file holding an object stays a file on the mount (its object is a subtree for
    // REST and watchers), so tools that copy files keep finding a file.
    assert_eq!(m.ok("cat app/app.json"), "{\"db\":{\"port\":5432}}\n");
    assert_eq!(m.get("/app/app.json/db/port").await, Some(json!(5432)));
    let out = m.sh("mkdir app/new.json");
    assert_ne!(out.code, 0, "{out:?}");
    m.ok(&format!(
        "rsync -a {s}/ ./ && rsync -a --checksum {s}/ ./ && touch -d 2001-01-01 app/port"
    ));
    assert_eq!(
        revision(&m).await,
        after_first,
        "unchanged rewrites change nothing"
    );
    m.ok("python3 -c 'import os, tempfile\n\
         fd, tmp = tempfile.mkstemp(dir=\"app\", prefix=\".port.\")\n\
         os.write(fd, b\"9090\\n\"); os.close(fd); os.replace(tmp, \"app/port\")'");
    assert_eq!(
        revision(&m).await,
        after_first + 1,
        "one write of the final key"
    );
    assert_eq!(m.get("/app/port").await, Some(json!(9090)));
    assert_eq!(m.ok("ls -A app"), "app.json\nname\nport\nquoted\n");
    assert_eq!(m.ok("test -f app/app.json && echo file"), "file\n");
}

#[tokio::test]
async fn rejected_writes_fail_the_writing_command_and_keep_the_old_value() {
    if !require_fuse("rejected_writes_fail_the_writing_command") {
        return;
    }
    let m = MountedNode::start_with_args(&["--max-value-bytes", "1000"]).await;
    m.put("/app/port", "8080").await;
    let scratch = tempfile::tempdir().unwrap();
    let big = scratch.path().join("big");
    std::fs::write(&big, "a".repeat(5000)).unwrap();
    let big = big.display();

    let attempts = [
        "echo \"$(head -c 3000 /dev/zero | tr '\\0' a)\" > app/port".to_owned(),
        "/bin/echo \"$(head -c 3000 /dev/zero | tr '\\0' a)\" > app/port".to_owned(),
        "printf '%03000d' 0 > app/port".to_owned(),
        format!("cat {big} > app/port"),
        format!("tee app/port < {big} > /dev/null"),
        format!("cp {big} app/port"),
        // Key grammar inside an object, and a reserved control file.
        r#"echo '{"a/b":1}' > app/port"#.to_owned(),
        "echo 1 > .herd/status".to_owned(),
    ];
    for script in &attempts {
        let out = m.sh(script);
        assert_ne!(out.code, 0, "`{script}` must fail: {out:?}");
        assert_eq!(
            m.get("/app/port").await,
            Some(json!(8080)),
            "after `{script}`"
        );
    }
    // The reason is logged and readable: as an extended attribute and in /.herd/errors.
    let reason = m.ok(
        "python3 -c 'import os; print(os.getxattr(\"app/port\", \"user.herd.error\").decode())'",
    );
    assert!(
        reason.contains("limit") || reason.contains("key"),
        "{reason}"
    );
    let errors = m.ok("cat .herd/errors");
    assert!(errors.contains("/app/port"), "{errors}");
    // Nothing of the rejected writes is in the store.
    assert_eq!(m.get("/app").await, Some(json!({"port": 8080})));
}

#[tokio::test]
async fn changes_made_elsewhere_show_in_the_next_read() {
    if !require_fuse("changes_made_elsewhere_show") {
        return;
    }
    let m = MountedNode::start().await;
    m.put("/app/port", "1").await;
    assert_eq!(m.ok("cat app/port && ls app"), "1\nport\n");
    for i in 2..20 {
        m.put("/app/port", &i.to_string()).await;
        m.put(&format!("/app/k{i}"), "true").await;
        let t0 = Instant::now();
        // The next read after the REST write: invalidation is pushed, so it is at most a few
        // milliseconds behind; allow a generous bound for a loaded CI machine.
        loop {
            let out = m.ok(&format!("cat app/port; test -f app/k{i} && echo yes"));
            if out == format!("{i}\nyes\n") {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(2),
                "stale after 2 s: {out:?}"
            );
        }
    }
    m.delete("/app/port").await;
    wait_for(
        "the deleted key to vanish",
        Duration::from_secs(2),
        || async { (m.sh("test -e app/port").code != 0).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_large_file_and_concurrent_writers_each_make_whole_values() {
    if !require_fuse("a_large_file_and_concurrent_writers") {
        return;
    }
    let m = MountedNode::start_with_args(&["--max-value-bytes", "4194304"]).await;
    let scratch = tempfile::tempdir().unwrap();
    let text: String = (0..(1 << 20))
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    std::fs::write(scratch.path().join("big.txt"), &text).unwrap();
    let mut watch = m
        .client
        .events("/v1/watch/big", &[])
        .await
        .expect("watch opens");
    m.ok(&format!(
        "cp {} big",
        scratch.path().join("big.txt").display()
    ));
    assert_eq!(m.get("/big").await, Some(json!(text)));
    // Exactly one change event, with the whole value.
    let mut puts = 0;
    let deadline = Instant::now() + Duration::from_millis(500);
    while let Ok(Some(Ok(ev))) = tokio::time::timeout_at(deadline.into(), watch.next()).await {
        let data: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
        if data["type"] == "put" {
            assert_eq!(data["value"].as_str().map(str::len), Some(text.len()));
            puts += 1;
        }
    }
    assert_eq!(puts, 1, "a 1 MiB cp must be one update");

    // Four writers, each writing whole 64 KiB values of its own letter in many write() calls.
    let script = r#"for w in a b c d; do (for i in $(seq 20); do python3 -c "
import sys
with open('shared', 'w') as f:
    for _ in range(64): f.write(sys.argv[1] * 1024)
" $w; done) & done; wait"#;
    let writers = m.sh(script);
    assert_eq!(writers.code, 0, "{writers:?}");
    let v = m.get("/shared").await.unwrap();
    let s = v.as_str().unwrap();
    assert_eq!(s.len(), 65536);
    let first = s.as_bytes()[0];
    assert!(
        s.bytes().all(|b| b == first),
        "a mixed value: writers interleaved"
    );
    assert_eq!(m.ok("cat shared").len(), 65537);
}

#[tokio::test]
async fn herd_mount_follows_a_node_over_https_and_honours_the_token() {
    if !require_fuse("herd_mount_follows_a_node") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = ChildNode::start(&dir.path().join("data")).await.unwrap();
    let client = node.client();
    let mnt = dir.path().join("mnt");
    let ro_mnt = dir.path().join("ro");
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&ro_mnt).unwrap();
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
    let reader_token = reader.stdout.trim().to_owned();

    let mut rw = spawn_mount(&data, &mnt, None);
    let mut ro = spawn_mount(&data, &ro_mnt, Some(&reader_token));
    wait_for("both mounts", Duration::from_secs(10), || async {
        (is_mounted(&mnt) && is_mounted(&ro_mnt)).then_some(())
    })
    .await;

    put_json(&client, "/app/port", "8080").await;
    let out = sh_in(&mnt, "cat app/port");
    assert_eq!(out.stdout, "8080\n", "{out:?}");
    let out = sh_in(&mnt, "echo 9090 > app/port && echo '{\"a\":1}' > app/obj");
    assert_eq!(out.code, 0, "{out:?}");
    let r = client
        .request(http::Method::GET, "/v1/kv/app", &[], None)
        .await
        .unwrap();
    assert_eq!(r.json().unwrap(), json!({"port": 9090, "obj": {"a": 1}}));
    // Freshness through the watch stream.
    put_json(&client, "/app/port", "7070").await;
    wait_for(
        "the remote mount to see 7070",
        Duration::from_secs(2),
        || async { (sh_in(&mnt, "cat app/port").stdout == "7070\n").then_some(()) },
    )
    .await;
    // A read-only token reads but cannot write: EACCES, and nothing changes.
    assert_eq!(sh_in(&ro_mnt, "cat app/port").stdout, "7070\n");
    let out = sh_in(&ro_mnt, "echo 1 > app/port");
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("Permission denied"), "{out:?}");
    let out = sh_in(&mnt, "cat app/port");
    assert_eq!(out.stdout, "7070\n");

    // SIGTERM unmounts and exits cleanly.
    for (child, dir) in [(&mut rw, &mnt), (&mut ro, &ro_mnt)] {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = child.wait().unwrap();
        assert!(status.success(), "herd mount exit: {status}");
        assert!(!is_mounted(dir), "{} still mounted", dir.display());
    }
}

fn spawn_mount(data: &str, dir: &std::path::Path, token: Option<&str>) -> std::process::Child {
    let mut cmd = std::process::Command::new(tests::herd_bin());
    cmd.args(["--data-dir", data]);
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    cmd.arg("mount")
        .arg(dir)
        .env("HERD_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn herd mount")
}

#[tokio::test]
async fn a_stale_mount_left_by_a_crash_is_replaced_on_the_next_start() {
    if !require_fuse("a_stale_mount_left_by_a_crash") {
        return;
    }
    let mut m = MountedNode::start().await;
    m.ok("echo 1 > x");
    m.node.kill9();
    // The mount is left behind, dead.
    let out = sh_in(
        std::path::Path::new("/"),
        &format!("cat {}/x", m.mnt.display()),
    );
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("not connected"), "{out:?}");
    let data = m.node.dir.clone();
    let mnt = m.mnt.to_str().unwrap().to_owned();
    m.node = ChildNode::start_with_args(&data, &["--mount", &mnt])
        .await
        .unwrap();
    assert_eq!(m.ok("cat x"), "1\n");
    m.stop();
    assert!(!is_mounted(&m.mnt), "unmounted on SIGTERM");
    if is_mounted(&m.mnt) {
        lazy_unmount(&m.mnt);
    }
}

#[tokio::test]
async fn a_read_only_mount_serves_reads_follows_changes_and_refuses_writes() {
    if !require_fuse("a_read_only_mount") {
        return;
    }
    let m = MountedNode::start_with_args(&["--mount-read-only"]).await;
    m.put("/app", r#"{"port":8080,"name":"web"}"#).await;
    for _ in 0..3 {
        assert_eq!(m.ok("cat app/port app/name"), "8080\nweb\n");
    }
    m.put("/app/port", "9090").await;
    wait_for(
        "the read-only mount to see 9090",
        Duration::from_secs(2),
        || async { (m.ok("cat app/port") == "9090\n").then_some(()) },
    )
    .await;
    let modes = m.ok("stat -c %a app app/port");
    assert_eq!(
        modes, "555\n444\n",
        "a read-only mount shows no write permission"
    );
    for script in [
        "echo 1 > app/port",
        "touch app/new",
        "mkdir d",
        "rm app/name",
        "mv app/name app/x",
    ] {
        let out = m.sh(script);
        assert_ne!(out.code, 0, "`{script}` must fail: {out:?}");
        assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    }
    assert_eq!(
        m.get("/app").await,
        Some(json!({"port": 9090, "name": "web"}))
    );
}

#[tokio::test]
async fn plugins_refuse_writes_with_einval_and_derived_keys_are_read_only_files() {
    if !require_fuse("plugins_refuse_writes_with_einval") {
        return;
    }
    let m = MountedNode::start().await;
    tests::plugins::installed(
        &m.client,
        "json-schema",
        &tests::plugins::shipped("json-schema"),
        serde_json::json!({"prefixes": ["/app", "/schemas"], "hooks": ["validate"]}),
    )
    .await;
    tests::plugins::installed(
        &m.client,
        "nginx-upstream",
        &tests::plugins::shipped("nginx-upstream"),
        serde_json::json!({"prefixes": ["/services"], "hooks": ["derive"], "output": "/rendered/nginx", "limits": {"memory": 33554432}}),
    )
    .await;
    m.put(
        "/schemas/app-db",
        r#"{"guards": "/app/db", "schema": {"properties": {"port": {"type": "integer", "minimum": 1, "maximum": 65535}}}}"#,
    )
    .await;
    m.put("/app/db/port", "5432").await;
    // Bash's builtin echo gets the refusal from write(): EINVAL, and the old value stays.
    let r = m.sh("echo 70000 > app/db/port");
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("Invalid argument"), "{}", r.stderr);
    assert_eq!(m.get("/app/db/port").await, Some(serde_json::json!(5432)));
    let why = m.ok(
        "python3 -c 'import os; print(os.getxattr(\"app/db/port\", \"user.herd.error\").decode())'",
    );
    assert!(
        why.contains("json-schema") && why.contains("65535"),
        "{why}"
    );
    assert!(m.ok("cat .herd/errors").contains("65535"));
    m.ok("echo 6432 > app/db/port");
    assert_eq!(m.get("/app/db/port").await, Some(serde_json::json!(6432)));
    // The Python plugins through the mount: the normaliser rewrites what `echo` writes, the
    // Python schema validator refuses with EINVAL.
    for (name, manifest) in [
        (
            "normalize",
            serde_json::json!({"prefixes": ["/norm"], "hooks": ["transform"], "limits": {"memory": 33554432}}),
        ),
        (
            "json-schema-py",
            serde_json::json!({"prefixes": ["/py"], "hooks": ["validate"], "limits": {"memory": 33554432}}),
        ),
    ] {
        tests::plugins::installed(&m.client, name, &tests::plugins::shipped(name), manifest).await;
    }
    m.put(
        "/schemas/py-port",
        r#"{"guards": "/py/port", "schema": {"type": "integer", "maximum": 10}}"#,
    )
    .await;
    m.ok("mkdir -p norm py && echo ' DB.LOCAL. ' > norm/host && echo 7 > py/port");
    assert_eq!(
        m.get("/norm/host").await,
        Some(serde_json::json!("db.local"))
    );
    assert_eq!(m.ok("cat norm/host"), "db.local\n");
    let r = m.sh("echo 11 > py/port");
    assert!(
        r.code != 0 && r.stderr.contains("Invalid argument"),
        "{}",
        r.stderr
    );
    assert_eq!(m.get("/py/port").await, Some(serde_json::json!(7)));
    // The derived upstream is a read-only file next to the stored keys.
    m.put(
        "/services/web/a",
        r#"{"address": "10.0.0.5", "port": 8080}"#,
    )
    .await;
    tests::wait_for(
        "the rendered file",
        std::time::Duration::from_secs(30),
        || async {
            let text = m.sh("cat rendered/nginx/web.conf").stdout;
            (text.starts_with("upstream web {") && text.contains("server 10.0.0.5:8080;"))
                .then_some(())
        },
    )
    .await;
    assert!(m.ok("ls rendered/nginx").contains("web.conf"));
    let r = m.sh("echo mine > rendered/nginx/web.conf");
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("Read-only file system"), "{}", r.stderr);
    // A new registration re-renders it (the kernel's cache is invalidated).
    m.put(
        "/services/web/b",
        r#"{"address": "10.0.0.6", "port": 8080}"#,
    )
    .await;
    tests::wait_for(
        "the re-rendered file",
        std::time::Duration::from_secs(30),
        || async {
            m.sh("cat rendered/nginx/web.conf")
                .stdout
                .contains("10.0.0.6")
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_writer_killed_mid_write_leaves_the_old_value() {
    if !require_fuse("a_writer_killed_mid_write") {
        return;
    }
    let m = MountedNode::start().await;
    m.put("/app", r#"{"ip":"10.0.0.1"}"#).await;
    // A writer that is killed after writing part of the value: the kernel closes its file
    // (flush, release) on its way out, which must not store the part.
    let killed = m.ok(
        "python3 -c 'import os, signal; fd = os.open(\"app/ip\", os.O_WRONLY | os.O_TRUNC); \
         os.write(fd, b\"10.0.0.\"); os.kill(os.getpid(), signal.SIGKILL)'; echo $?",
    );
    assert_eq!(killed, "137\n", "killed by SIGKILL");
    assert_eq!(m.get("/app/ip").await, Some(json!("10.0.0.1")));
    let reason = m.ok("getfattr --only-values -n user.herd.error app/ip 2>/dev/null || python3 -c 'import os; print(os.getxattr(\"app/ip\", \"user.herd.error\").decode())'");
    assert!(reason.contains("killed"), "{reason}");
    // A writer that exits without closing (the kernel closes for it too) has written what it
    // meant to: that is stored.
    m.ok(
        "python3 -c 'import os; fd = os.open(\"app/ip\", os.O_WRONLY | os.O_TRUNC); \
         os.write(fd, b\"10.0.0.2\"); os._exit(0)'",
    );
    assert_eq!(m.get("/app/ip").await, Some(json!("10.0.0.2")));
}

#[tokio::test]
async fn a_name_over_255_bytes_is_too_long() {
    if !require_fuse("a_name_over_255_bytes") {
        return;
    }
    let m = MountedNode::start().await;
    let out = m.sh(&format!("echo 1 > {}", "n".repeat(300)));
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("File name too long"), "{out:?}");
    let out = m.sh(&format!("mkdir {}", "d".repeat(256)));
    assert!(out.stderr.contains("File name too long"), "{out:?}");
    m.ok(&format!("echo 1 > {}", "n".repeat(255)));
    assert_eq!(
        m.get(&format!("/{}", "n".repeat(255))).await,
        Some(json!(1))
    );
}
