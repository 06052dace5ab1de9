//! The file view under test: a `herd serve --mount DIR` child process, shell commands run inside
//! the mount as a user would type them, and the store checked over REST.
//!
//! FUSE needs root and `/dev/fuse`. Without them a test says so and stops; with
//! `HERD_TEST_STRICT=1` (set by `tests/run.sh` under CI) it fails instead.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use http::Method;
use node::client::Client;
use serde_json::Value;

use crate::ChildNode;

/// Why FUSE mounts cannot be tested here, if they cannot.
pub fn fuse_unavailable() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("FUSE mount tests need root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("FUSE mount tests need /dev/fuse".into());
    }
    None
}

/// True if the test may go on; prints why not (or panics under `HERD_TEST_STRICT`).
pub fn require_fuse(test: &str) -> bool {
    match fuse_unavailable() {
        None => true,
        Some(why) if std::env::var_os("HERD_TEST_STRICT").is_some() => {
            panic!("{test}: {why} (HERD_TEST_STRICT is set, so this is a failure)")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

/// What a shell command did.
#[derive(Debug)]
pub struct Sh {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A node with its store mounted, both removed when dropped.
pub struct MountedNode {
    pub node: ChildNode,
    /// The mount point.
    pub mnt: PathBuf,
    pub client: Client,
    _dir: tempfile::TempDir,
}

impl MountedNode {
    /// `herd serve --mount` in a fresh temp dir; waits until the mount answers.
    pub async fn start() -> MountedNode {
        MountedNode::start_with_args(&[]).await
    }

    /// As [`MountedNode::start`], with more `herd serve` flags.
    pub async fn start_with_args(args: &[&str]) -> MountedNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir_all(&mnt).expect("mount dir");
        let mnt_arg = mnt.to_str().expect("utf-8 temp path").to_owned();
        let mut all = vec!["--mount", &mnt_arg];
        all.extend_from_slice(args);
        let node = ChildNode::start_with_args(&data, &all)
            .await
            .expect("herd serve --mount starts");
        let client = node.client();
        let m = MountedNode {
            node,
            mnt,
            client,
            _dir: dir,
        };
        assert!(
            is_mounted(&m.mnt),
            "{} is not a mount point after start",
            m.mnt.display()
        );
        m
    }

    /// Runs a bash script in the mount directory (`$M` is the mount point too).
    pub fn sh(&self, script: &str) -> Sh {
        sh_in(&self.mnt, script)
    }

    /// Runs a script that must succeed; returns its stdout.
    pub fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert_eq!(out.code, 0, "`{script}` failed: {out:?}");
        out.stdout
    }

    /// The value at a store path over REST, `None` if nothing is there.
    pub async fn get(&self, path: &str) -> Option<Value> {
        let r = self
            .client
            .request(Method::GET, &format!("/v1/kv{path}"), &[], None)
            .await
            .expect("GET answers");
        match r.status.as_u16() {
            200 => Some(r.json().expect("json")),
            404 => None,
            s => panic!("GET {path}: {s} {}", String::from_utf8_lossy(&r.body)),
        }
    }

    /// Writes a JSON value at a store path over REST.
    pub async fn put(&self, path: &str, json: &str) {
        put_json(&self.client, path, json).await;
    }

    /// Deletes a store path over REST.
    pub async fn delete(&self, path: &str) {
        let r = self
            .client
            .request(Method::DELETE, &format!("/v1/kv{path}"), &[], None)
            .await
            .expect("DELETE answers");
        assert_eq!(r.status, 200, "DELETE {path}: {:?}", r.body);
    }

    /// Stops the node with SIGTERM; it must unmount and exit cleanly.
    pub fn stop(&mut self) {
        let status = self.node.stop();
        assert!(
            status.is_some_and(|s| s.success()),
            "herd serve --mount did not exit cleanly on SIGTERM: {status:?}"
        );
    }
}

impl Drop for MountedNode {
    fn drop(&mut self) {
        self.node.stop();
        if is_mounted(&self.mnt) {
            lazy_unmount(&self.mnt);
        }
    }
}

/// `PUT /v1/kv{path}` of a JSON text, which must succeed.
pub async fn put_json(client: &Client, path: &str, json: &str) {
    let r = client
        .request(
            Method::PUT,
            &format!("/v1/kv{path}"),
            &[(http::header::CONTENT_TYPE, "application/json".into())],
            Some(bytes::Bytes::from(json.to_owned())),
        )
        .await
        .expect("PUT answers");
    assert_eq!(r.status, 200, "PUT {path}: {:?}", r.body);
}

/// Runs a bash script in `dir`, with `$M` set to `dir`.
pub fn sh_in(dir: &Path, script: &str) -> Sh {
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("M", dir)
        .stdin(Stdio::null())
        .output()
        .expect("bash runs");
    Sh {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// True if `dir` is a mount point (per /proc/self/mountinfo).
pub fn is_mounted(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = dir.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == want))
}

/// `umount -l`, for cleaning up after a failed test.
pub fn lazy_unmount(dir: &Path) {
    let _ = Command::new("umount").arg("-l").arg(dir).status();
    std::thread::sleep(Duration::from_millis(50));
}
