//! Tidy checks of the source tree (as rust-analyzer's `tidy` tests do): every `.rs` file says
//! what it is in a `//!` header, no production file passes 700 lines, and every task and
//! thread is started where it is tracked (a node's through its `TaskTracker`, awaited at
//! shutdown; a few threads joined by their owner, listed here with the reason).

use std::path::{Path, PathBuf};

/// The most lines a production file may have (its `#[cfg(test)]` part not counted).
const MAX_PRODUCTION_LINES: usize = 700;

/// Files that may start a task or thread without the tracker, and why that is tracked anyway.
const SPAWNS_ALLOWED: &[(&str, &str)] = &[
    (
        "node/src/db.rs",
        "the writer and sync threads: the writer joins the sync thread, WriterHandle::join the writer",
    ),
    (
        "node/src/storage/checkpoint.rs",
        "the checkpoint thread, joined when the storage is dropped",
    ),
    (
        "node/src/db/journal.rs",
        "the change log's rewriting thread, joined by the next commit or when the journal is dropped",
    ),
    (
        "node/src/plugin/host.rs",
        "the epoch thread, stopped and joined when the last host clone is dropped",
    ),
    (
        "node/src/transport/pool.rs",
        "a command-line client's connection tasks, on the command's own runtime",
    ),
    (
        "node/src/cli/watch.rs",
        "`herd watch`'s signal listener, on the command's own runtime, which ends with it",
    ),
    (
        "node/src/cli/watch/exec.rs",
        "writing a command's stdin, ended by the write or the command's exit, on the command's own runtime",
    ),
    (
        "node/src/cluster/mdns.rs",
        "the bridge task, whose handle Discovery::shutdown awaits",
    ),
    (
        "fuse-mount/src/mount.rs",
        "the FUSE session thread, waited for by Mount::unmount",
    ),
    (
        "fuse-mount/src/invalidation.rs",
        "the invalidation thread, joined by Mount::unmount",
    ),
];

/// What starts a task or a thread outside a tracker.
const SPAWNS: &[&str] = &[
    "tokio::spawn(",
    "task::spawn(",
    "thread::spawn(",
    "thread::Builder::new()",
    "runtime.spawn(",
    "rt.spawn(",
    "handle.spawn(",
    "use tokio::spawn",
    "use std::thread::spawn",
    "Handle::current().spawn(",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace")
        .to_path_buf()
}

/// Every `.rs` file of the workspace's crates, relative to the root.
fn sources() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = root();
    let mut files = Vec::new();
    for krate in ["node", "fuse-mount", "tests", "plugins/tool"] {
        for dir in ["src", "all", "examples"] {
            let d = root.join(krate).join(dir);
            if d.is_dir() {
                walk(&d, &mut files);
            }
        }
    }
    let mut rel: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    rel.sort();
    assert!(rel.len() > 50, "found only {} source files", rel.len());
    rel
}

/// The production part of a file: its lines up to its inline `#[cfg(test)] mod ... {`. Test
/// files (a crate's `tests.rs` modules, the test crate) have none.
fn production(rel: &str, text: &str) -> Vec<String> {
    if rel.starts_with("tests/") || rel.ends_with("/tests.rs") || rel.contains("/tests/") {
        return Vec::new();
    }
    let lines: Vec<&str> = text.lines().collect();
    let test_module = |i: usize| {
        lines[i].trim() == "#[cfg(test)]"
            && lines[i + 1..]
                .iter()
                .find(|l| !l.trim().is_empty())
                .is_some_and(|l| l.starts_with("mod ") && l.trim_end().ends_with('{'))
    };
    let end = (0..lines.len())
        .find(|&i| test_module(i))
        .unwrap_or(lines.len());
    lines[..end].iter().map(|l| l.to_string()).collect()
}

#[test]
fn every_source_file_has_a_module_header() {
    let missing: Vec<String> = sources()
        .into_iter()
        .filter(|f| {
            let text = std::fs::read_to_string(root().join(f)).unwrap();
            !text.trim_start().starts_with("//!")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "these files do not start with a `//!` header saying what they hold: {missing:?}"
    );
}

#[test]
fn no_production_file_passes_700_lines() {
    let long: Vec<String> = sources()
        .into_iter()
        .filter_map(|f| {
            let text = std::fs::read_to_string(root().join(&f)).unwrap();
            let n = production(&f, &text).len();
            (n > MAX_PRODUCTION_LINES).then(|| format!("{f}: {n} lines"))
        })
        .collect();
    assert!(
        long.is_empty(),
        "split these files by what each part owns (at most {MAX_PRODUCTION_LINES} production lines): {long:?}"
    );
}

#[test]
fn tasks_and_threads_start_where_they_are_tracked() {
    let mut found = Vec::new();
    for f in sources() {
        let text = std::fs::read_to_string(root().join(&f)).unwrap();
        if SPAWNS_ALLOWED.iter().any(|(allowed, _)| *allowed == f) {
            continue;
        }
        for (i, line) in production(&f, &text).iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if SPAWNS.iter().any(|s| code.contains(s)) {
                found.push(format!("{f}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "start these through the node's TaskTracker (tracker.spawn, spawn_on), or list the file \
         in SPAWNS_ALLOWED with what joins them: {found:?}"
    );
    // The allowed files still start something (an entry that no longer does is stale).
    for (allowed, why) in SPAWNS_ALLOWED {
        let text = std::fs::read_to_string(root().join(allowed)).unwrap();
        assert!(
            production(allowed, &text).iter().any(|l| {
                let code = l.split("//").next().unwrap_or("");
                SPAWNS.iter().any(|s| code.contains(s))
            }),
            "{allowed} is allowed to spawn ({why}) but no longer does: remove it from the list"
        );
    }
}
