//! Plugins for the tests, built from source on this machine by the project's own build script
//! (`plugins/build.sh`): the shipped plugins (C and Python) and the hostile ones under
//! `tests/plugins/`. Each set is built once per test run; the script skips up-to-date files.

use bytes::Bytes;
use http::{header, Method};
use node::client::{Client, Response};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
}

fn build(args: &[&str], out: &Path) -> PathBuf {
    let status = Command::new("bash")
        .arg(repo().join("plugins/build.sh"))
        .args(args)
        .arg("--out")
        .arg(out)
        .current_dir(repo())
        .status()
        .expect("bash runs");
    assert!(
        status.success(),
        "plugins/build.sh {args:?} failed ({status}); the plugin toolchains are installed by tests/run.sh"
    );
    out.to_path_buf()
}

/// The file of shipped plugin `name` (e.g. `json-schema`, `normalize`).
pub fn shipped(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| build(&[], &target_dir().join("plugins")));
    let f = dir.join(format!("{name}.wasm"));
    assert!(f.exists(), "{} was not built", f.display());
    f
}

/// The file of test plugin `name` from `tests/plugins/`.
pub fn hostile(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        build(
            &["--c-dir", "tests/plugins"],
            &target_dir().join("test-plugins"),
        )
    });
    let f = dir.join(format!("{name}.wasm"));
    assert!(f.exists(), "{} was not built", f.display());
    f
}

/// Uploads `file` and installs it as `name` with `manifest` (prefixes, hooks, ...); answers
/// the install call's response.
pub async fn install(client: &Client, name: &str, file: &Path, mut manifest: Value) -> Response {
    let bytes = std::fs::read(file).expect("plugin file");
    let r = client
        .request(
            Method::POST,
            "/v1/plugins/files",
            &[(header::CONTENT_TYPE, "application/wasm".into())],
            Some(Bytes::from(bytes)),
        )
        .await
        .expect("upload");
    assert_eq!(
        r.status,
        200,
        "upload: {}",
        String::from_utf8_lossy(&r.body)
    );
    manifest["sha256"] = r.json().expect("json")["sha256"].clone();
    client
        .request(
            Method::PUT,
            &format!("/v1/plugins/{name}"),
            &[],
            Some(Bytes::from(manifest.to_string())),
        )
        .await
        .expect("install")
}

/// [`install`] that must succeed.
pub async fn installed(client: &Client, name: &str, file: &Path, manifest: Value) {
    let r = install(client, name, file, manifest).await;
    assert!(
        r.status == 201 || r.status == 200,
        "install {name}: {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
}
