//! Disk faults on a running node. A full file system (a size-limited tmpfs under the data
//! directory) refuses writes with 507 `no_space` over REST and `ENOSPC` on the mount, says so in
//! `/v1/health`, `/v1/readyz`, `/v1/status` and `/metrics`, and keeps serving reads and watches;
//! once space is back the node takes writes again by itself, and after a restart every
//! acknowledged write is there and no refused one is.
//!
//! A file system gone read-only (ext4 on a loop device after an error) and I/O errors (from
//! `faultfs`: every write failing, only syncs failing, writes failing half of the time) refuse
//! writes with 503 until a restart, even once the disk works again: a failed sync is never
//! retried as if it had worked.

use http::Method;
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tests::faultfs::FaultMount;
use tests::{next_json, ChildNode};

/// A tmpfs of a given size, unmounted when dropped. `None` (the test skips) without root,
/// unless `HERD_TEST_STRICT` is set.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(SmallFs(dir));
        }
        tests::skip("mounting a small tmpfs needs root");
        None
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// One request to `c`, answered whatever its status.
async fn call(
    c: &node::client::Client,
    method: Method,
    path: String,
    body: Option<String>,
) -> node::client::Response {
    c.request(method, &path, &[], body.map(bytes::Bytes::from))
        .await
        .expect("the node answers")
}

/// Fills the file system at `dir` with one file, to the last byte it takes.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![7u8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    for _ in 0..64 {
        let _ = f.write_all(&[7u8; 1024]);
    }
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_visibly_and_loses_nothing_acknowledged() {
    let Some(fs) = SmallFs::mount("32m") else {
        return;
    };
    // The log finds a full disk before writing only with direct I/O, which tmpfs has since
    // Linux 6.6; without it the refusal is `outcome_unknown` and takes a restart.
    let direct = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .custom_flags(libc::O_DIRECT)
            .open(fs.path().join("probe"))
            .is_ok()
    };
    if !direct {
        tests::skip("tmpfs has no direct I/O here (Linux before 6.6)");
        return;
    }
    let data = fs.path().join("data");
    let mnt_dir = tempfile::tempdir().unwrap();
    let mnt = mnt_dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mnt_arg = mnt.display().to_string();
    let mut node = ChildNode::start_with_args(&data, &["--mount", &mnt_arg])
        .await
        .expect("node starts");
    let c = node.client();
    let call = |method, path: &str, body| call(&c, method, path.to_owned(), body);
    assert_eq!(
        call(Method::PUT, "/v1/kv/app/a", Some("1".into()))
            .await
            .status,
        200
    );
    let filler = fill(fs.path());
    // The log claimed some space ahead: writes go on for a while, then are refused.
    let value = format!("\"{}\"", "x".repeat(4000));
    let mut acknowledged = Vec::new();
    let refused = loop {
        let i = acknowledged.len();
        assert!(i < 20_000, "the disk never filled up");
        let r = call(
            Method::PUT,
            &format!("/v1/kv/fill/k{i}"),
            Some(value.clone()),
        )
        .await;
        if r.status != 200 {
            break r;
        }
        acknowledged.push(i);
    };
    assert_eq!(refused.status, 507, "{:?}", refused.body);
    let e = refused.json().unwrap();
    assert_eq!(e["error"]["code"], "no_space", "{e}");
    // Every later write is refused the same way, through the mount too.
    let r = call(Method::PUT, "/v1/kv/app/b", Some("2".into())).await;
    assert_eq!(r.status, 507);
    let e = std::fs::write(mnt.join("app/c"), "3\n").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("echo 3 > {}/app/c", mnt.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("No space left"), "{stderr}");
    // Reads and a new watch are served from memory.
    assert_eq!(
        call(Method::GET, "/v1/kv/app/a", None)
            .await
            .json()
            .unwrap(),
        json!(1)
    );
    assert_eq!(std::fs::read_to_string(mnt.join("app/a")).unwrap(), "1\n");
    let mut watch = c.events("/v1/watch/app", &[]).await.unwrap();
    let (kind, ev) = next_json(&mut watch).await;
    assert_eq!((kind.as_str(), &ev["path"]), ("put", &json!("/app/a")));
    assert_eq!(next_json(&mut watch).await.0, "synced");
    // Health says why; liveness does not.
    for probe in ["/v1/health", "/v1/readyz"] {
        let r = call(Method::GET, probe, None).await;
        assert_eq!(r.status, 503, "{probe}");
        let h = r.json().unwrap();
        assert_eq!(h["status"], "failing", "{h}");
        assert!(
            h["reason"].as_str().unwrap().contains("No space left"),
            "{h}"
        );
    }
    assert_eq!(call(Method::GET, "/v1/livez", None).await.status, 200);
    let status = call(Method::GET, "/v1/status", None).await.json().unwrap();
    assert_eq!(status["storage"]["state"], "failed", "{status}");
    assert_eq!(status["storage"]["cause"], "no_space", "{status}");
    let metrics = call(Method::GET, "/metrics", None).await;
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(metrics.contains("\nherd_storage_writable 0\n"), "{metrics}");
    // Space back: the node reopens its storage from the log (which holds exactly what was
    // acknowledged) and takes writes again by itself; the watch goes on.
    std::fs::remove_file(&filler).unwrap();
    tests::wait_for("writes taken again", Duration::from_secs(20), || async {
        let r = call(Method::GET, "/v1/health", None).await;
        (r.status == 200).then_some(())
    })
    .await;
    let r = call(Method::PUT, "/v1/kv/app/d", Some("4".into())).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let (kind, ev) = next_json(&mut watch).await;
    assert_eq!((kind.as_str(), &ev["path"]), ("put", &json!("/app/d")));
    std::fs::write(mnt.join("app/f"), "6\n").unwrap();
    let status = call(Method::GET, "/v1/status", None).await.json().unwrap();
    assert_eq!(status["storage"]["state"], "ok", "{status}");
    drop(watch);
    node.stop();
    let node = ChildNode::start_with_args(&data, &["--mount", &mnt_arg])
        .await
        .expect("the node starts again once space is back");
    let c = node.client();
    let doc = c
        .request(Method::GET, "/v1/kv/", &[], None)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        doc["app"],
        json!({"a": 1, "d": 4, "f": 6}),
        "every acknowledged write, and no refused one"
    );
    let fill = doc["fill"].as_object().cloned().unwrap_or_default();
    for i in &acknowledged {
        assert_eq!(
            fill.get(&format!("k{i}")),
            Some(&json!("x".repeat(4000))),
            "acknowledged write k{i}"
        );
    }
    assert_eq!(fill.len(), acknowledged.len(), "only acknowledged writes");
    let r = c
        .request(Method::PUT, "/v1/kv/app/e", &[], Some("5".into()))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "writes are taken again");
    let health = c
        .request(Method::GET, "/v1/health", &[], None)
        .await
        .unwrap();
    assert_eq!(health.status, 200);
}

/// An ext4 file system on a loop device (mounted `errors=remount-ro`, as root file systems
/// commonly are), whose kernel error the test triggers: ext4 then remounts it read-only at once,
/// open files or not, as after a real disk error.
struct Ext4 {
    image: tempfile::TempDir,
    mnt: tempfile::TempDir,
}

impl Ext4 {
    fn mount() -> Option<Ext4> {
        let image = tempfile::tempdir().unwrap();
        let mnt = tempfile::tempdir().unwrap();
        let file = image.path().join("disk.img");
        std::fs::File::create(&file)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let made = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&file)
            .status()
            .is_ok_and(|s| s.success());
        let fs = Ext4 { image, mnt };
        if made && fs.attach() {
            return Some(fs);
        }
        tests::skip("mounting an ext4 image on a loop device needs root and mkfs.ext4");
        None
    }

    fn attach(&self) -> bool {
        Command::new("mount")
            .args(["-o", "loop,errors=remount-ro"])
            .arg(self.image.path().join("disk.img"))
            .arg(self.mnt.path())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn path(&self) -> &Path {
        self.mnt.path()
    }

    /// Makes the kernel find an error in the file system: it is read-only from then on.
    fn fail(&self) {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let here = self.mnt.path().display().to_string();
        let dev = mounts
            .lines()
            .find(|l| l.split(' ').nth(1) == Some(here.as_str()))
            .and_then(|l| l.split(' ').next())
            .and_then(|d| d.rsplit('/').next())
            .expect("the loop device")
            .to_owned();
        std::fs::write(format!("/sys/fs/ext4/{dev}/trigger_fs_error"), "1").unwrap();
    }

    /// Unmounts, repairs (as a reboot would) and mounts again, writable.
    fn repair(&self) {
        let _ = Command::new("umount").arg(self.mnt.path()).status();
        let _ = Command::new("fsck.ext4")
            .args(["-p", "-f"])
            .arg(self.image.path().join("disk.img"))
            .status();
        assert!(self.attach(), "the repaired file system mounts again");
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.mnt.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_system_gone_read_only_stops_writes_until_a_restart() {
    let Some(fs) = Ext4::mount() else {
        return;
    };
    let data = fs.path().join("data");
    // Repaired only once the node is stopped: an ext4 in use is not unmounted.
    refused_until_restart(&data, || fs.fail(), "read_only", || {}, || fs.repair()).await;
}

/// I/O errors from the disk, through `faultfs` (as the device-mapper `error` and `flakey`
/// targets would give them): every write and sync failing with the log written directly,
/// only syncs failing with the log buffered (the pages of a failed `fsync` are dropped, as
/// Linux does), and writes failing half of the time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_errors_stop_writes_until_a_restart() {
    for (mode, no_direct) in [
        ("fail-writes", false),
        ("fail-syncs", true),
        ("flakey 100 100", false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (backing, mnt) = (dir.path().join("disk"), dir.path().join("mnt"));
        std::fs::create_dir(&backing).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let Some(fs) = FaultMount::mount(&backing, &mnt, no_direct, 1) else {
            return;
        };
        eprintln!(
            "{mode}, the log written {}",
            if no_direct { "buffered" } else { "directly" }
        );
        let data = mnt.join("data");
        let fail = || {
            fs.command(mode);
        };
        let heal = || {
            fs.command("normal");
        };
        refused_until_restart(&data, fail, "io_error", heal, || {}).await;
    }
}

/// A checkpoint that cannot be written (`store.redb` failing its syncs, the log working) stops
/// writes as a failed log does, at the first checkpoint (10 s after the first write), and loses
/// nothing: the log holds what the checkpoint did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_checkpoint_stops_writes_until_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (backing, mnt) = (dir.path().join("disk"), dir.path().join("mnt"));
    std::fs::create_dir(&backing).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let Some(fs) = FaultMount::mount(&backing, &mnt, false, 1) else {
        return;
    };
    let fail = || {
        fs.command("fail-syncs store.redb");
    };
    let heal = || {
        fs.command("normal");
    };
    refused_until_restart(&mnt.join("data"), fail, "io_error", heal, || {}).await;
}

/// A disk that fails under a running node (`fail`): writes are refused from the first failure
/// on (503, health says `cause`), reads go on, and writes stay refused after the disk works
/// again (`heal`, while the node runs) until a restart (after `repair`, while it is stopped),
/// which has every acknowledged write and no refused one.
async fn refused_until_restart(
    data: &Path,
    fail: impl FnOnce(),
    cause: &str,
    heal: impl FnOnce(),
    repair: impl FnOnce(),
) {
    let mut node = ChildNode::start(data).await.expect("node starts");
    let c = node.client();
    let call = |method, path: &str, body| call(&c, method, path.to_owned(), body);
    assert_eq!(
        call(Method::PUT, "/v1/kv/app/a", Some("1".into()))
            .await
            .status,
        200
    );
    fail();
    // The first write after the failure is refused, or one soon after (a kernel may let a
    // direct overwrite of blocks claimed already through; a flakey disk works half the time).
    let mut refused = None;
    let mut acknowledged = Vec::new();
    let start = std::time::Instant::now();
    for i in 0.. {
        if start.elapsed() > Duration::from_secs(30) {
            break;
        }
        let r = call(Method::PUT, &format!("/v1/kv/app/b{i}"), Some("2".into())).await;
        if r.status != 200 {
            refused = Some((i, r));
            break;
        }
        acknowledged.push(i);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (refused_at, r) = refused.expect("writes are refused on a failing disk");
    assert_eq!(r.status, 503, "{:?}", r.body);
    let code = r.json().unwrap()["error"]["code"].clone();
    assert!(code == "unavailable" || code == "outcome_unknown", "{code}");
    let health = call(Method::GET, "/v1/health", None).await;
    assert_eq!(health.status, 503);
    let h = health.json().unwrap();
    assert_eq!(h["storage"]["cause"], cause, "{h}");
    assert_eq!(
        call(Method::GET, "/v1/kv/app/a", None)
            .await
            .json()
            .unwrap(),
        json!(1),
        "reads go on"
    );
    heal();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        call(Method::PUT, "/v1/kv/app/c", Some("3".into()))
            .await
            .status,
        503,
        "a failed disk is not waited out, even once it works again: it takes a restart"
    );
    node.stop();
    repair();
    let node = ChildNode::start(data).await.expect("restarts");
    let c = node.client();
    let app = c
        .request(Method::GET, "/v1/kv/app", &[], None)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(app["a"], json!(1), "the acknowledged write is there");
    assert!(app.get("c").is_none(), "{app}");
    for i in &acknowledged {
        assert_eq!(app[format!("b{i}")], json!(2), "acknowledged b{i}: {app}");
    }
    if code == "unavailable" {
        let b = format!("b{refused_at}");
        assert!(
            app.get(&b).is_none(),
            "{b} was refused as not written: {app}"
        );
    }
    let r = c
        .request(Method::PUT, "/v1/kv/app/d", &[], Some("4".into()))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}
