//! Real mounts of the in-memory store (needs `/dev/fuse` and the right to mount; where that is
//! missing the tests say so and pass without checking anything).

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;
use crate::backend::Op;
use crate::mem::MemBackend;

use crate::test_path as p;

/// The store mounted on a fresh temporary directory, or `None` where FUSE is unavailable.
fn mounted(initial: Value) -> Option<(Arc<MemBackend>, Mount, tempfile::TempDir)> {
    let store = Arc::new(MemBackend::new());
    store.apply(vec![Op::Put(Vec::new(), initial)]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> = Arc::clone(&store) as Arc<dyn Backend>;
    match mount(backend, dir.path(), MountOptions::default()) {
        Ok(mount) => Some((store, mount, dir)),
        Err(e) if std::env::var_os("HERD_TEST_STRICT").is_some() => {
            panic!("cannot mount ({e}) and HERD_TEST_STRICT is set, so this is a failure")
        }
        Err(e) => {
            eprintln!("SKIPPED: FUSE is unavailable here ({e}); not checking mounts");
            None
        }
    }
}

/// Wait until `read` gives `expect`: the invalidation thread runs apart from the store.
fn eventually(what: &str, expect: &str, read: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = read();
        if got == expect {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {got:?}, expected {expect:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn cat(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| format!("<{e}>"))
}

#[test]
fn changes_made_elsewhere_reach_the_kernel_caches() {
    let Some((store, mount, dir)) = mounted(json!({"app": {"port": 1, "name": "web"}})) else {
        return;
    };
    let port = dir.path().join("app/port");
    assert_eq!(cat(&port), "1\n");
    assert_eq!(fs::metadata(&port).unwrap().len(), 2);
    store
        .apply(vec![Op::Put(p("app/port"), json!(12345))])
        .unwrap();
    eventually("a changed value", "12345\n", || cat(&port));
    assert_eq!(fs::metadata(&port).unwrap().len(), 6);
    store
        .apply(vec![Op::Put(p("app/port"), json!({"x": true}))])
        .unwrap();
    eventually("a leaf that became a directory", "true\n", || {
        cat(&port.join("x"))
    });
    assert!(fs::metadata(&port).unwrap().is_dir());
    store.apply(vec![Op::Delete(p("app"))]).unwrap();
    eventually("a deleted directory", "false", || {
        dir.path().join("app/name").exists().to_string()
    });
    mount.unmount().unwrap();
}

#[test]
fn files_written_through_the_mount_reach_the_store() {
    let Some((store, mount, dir)) = mounted(json!({})) else {
        return;
    };
    let d = dir.path();
    fs::create_dir_all(d.join("app/db")).unwrap();
    fs::write(d.join("app/db/port"), "5432\n").unwrap();
    fs::write(d.join("app/doc"), "{\"a\": [1, 2]}").unwrap();
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(d.join("app/db/port"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"1\n").unwrap();
    drop(f);
    fs::rename(d.join("app/db"), d.join("app/database")).unwrap();
    assert_eq!(
        store.read(&p("app")).unwrap(),
        Some(json!({"database": {"port": "5432\n1"}, "doc": {"a": [1, 2]}}))
    );
    assert_eq!(cat(&d.join("app/database/port")), "5432\n1\n");
    // `doc` became a directory when its object was written; the kernel drops its entry for
    // the file a moment later (the invalidation thread), so `rm -r` waits for that.
    eventually("doc shown as a directory", "true", || {
        fs::symlink_metadata(d.join("app/doc")).map_or(String::new(), |m| m.is_dir().to_string())
    });
    fs::remove_dir_all(d.join("app")).unwrap();
    assert_eq!(store.read(&[]).unwrap(), Some(json!({})));
    assert!(fs::write(d.join(".herd/status"), "x").is_err());
    mount.unmount().unwrap();
    assert!(!d.join(".herd").exists(), "unmounted");
}

#[test]
fn a_shell_inside_a_directory_survives_a_rewrite_of_it() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    let Some((store, mount, dir)) = mounted(json!({"app": {"port": 1}})) else {
        return;
    };
    let app = dir.path().join("app");
    let mut shell = Command::new("sh")
        .args([
            "-c",
            "cd \"$1\" && echo ready && read _ && readlink /proc/self/cwd && cat port",
            "sh",
        ])
        .arg(&app)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(shell.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    store
        .apply(vec![Op::Put(p("app"), json!({"port": 2}))])
        .unwrap();
    eventually("the rewritten directory", "2\n", || cat(&app.join("port")));
    writeln!(shell.stdin.take().unwrap()).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(shell.wait().unwrap().success());
    let app = fs::canonicalize(dir.path()).unwrap().join("app");
    assert_eq!(rest, format!("{}\n2\n", app.display()));
    mount.unmount().unwrap();
}
