//! The `herd` command line end to end against a `herd serve` child: finding the node through
//! `--data-dir` or `./herd-data`, and through explicit `--node/--token/--ca-cert` (or their
//! variables); every client command; and the error cases, each with its exit code, a message on
//! stderr and nothing on stdout.

use http::Method;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tests::{herd_bin, wait_for, ChildNode, Cli, CliOutput};

/// A node in `<tmp>/herd-data`, so `<tmp>` is a working directory where discovery finds it.
struct Setup {
    cwd: tempfile::TempDir,
    node: ChildNode,
}

impl Setup {
    async fn start() -> Setup {
        let cwd = tempfile::tempdir().unwrap();
        let node = ChildNode::start(&cwd.path().join("herd-data"))
            .await
            .expect("herd serve starts");
        Setup { cwd, node }
    }

    fn data(&self) -> PathBuf {
        self.cwd.path().join("herd-data")
    }

    fn ca(&self) -> String {
        self.data().join("tls/ca.crt").display().to_string()
    }

    fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data().join("admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// `herd --data-dir DATA <args>`, run from an unrelated directory.
    fn herd(&self, args: &[&str]) -> CliOutput {
        let data = self.data().display().to_string();
        let mut all = vec!["--data-dir", data.as_str()];
        all.extend_from_slice(args);
        Cli::new(all).cwd(Path::new("/")).run()
    }

    /// `herd <args>` run in the directory that holds `herd-data`.
    fn herd_here(&self, args: &[&str]) -> CliOutput {
        Cli::new(args.iter().copied()).cwd(self.cwd.path()).run()
    }

    /// The document through the API, for checking what the CLI did.
    async fn doc(&self) -> Value {
        self.node
            .client()
            .request(Method::GET, "/v1/kv/", &[], None)
            .await
            .unwrap()
            .json()
            .unwrap()
    }
}

/// Asserts success and returns stdout.
#[track_caller]
fn ok(out: CliOutput) -> String {
    assert_eq!(out.code, 0, "{out:?}");
    out.stdout
}

/// Asserts a failure with `code`: a message on stderr mentioning `needle`, nothing on stdout.
#[track_caller]
fn fails(out: CliOutput, code: i32, needle: &str) -> String {
    assert_eq!(out.code, code, "{out:?}");
    assert_eq!(out.stdout, "", "{out:?}");
    assert!(out.stderr.starts_with("error: "), "{out:?}");
    assert!(
        out.stderr.contains(needle),
        "stderr should mention {needle:?}: {out:?}"
    );
    out.stderr
}

/// A printed version: `<millis>-<counter>-<16 hex digits>` and a newline.
#[track_caller]
fn assert_version(stdout: &str) {
    let v = stdout
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("no newline: {stdout:?}"));
    let parts: Vec<&str> = v.split('-').collect();
    assert!(
        parts.len() == 3
            && parts[0].parse::<u64>().is_ok()
            && parts[1].parse::<u64>().is_ok()
            && parts[2].len() == 16
            && u64::from_str_radix(parts[2], 16).is_ok(),
        "not a version: {stdout:?}"
    );
}

#[tokio::test]
async fn key_value_commands_with_discovery() {
    let s = Setup::start().await;

    // put: numbers, strings, quoted strings, JSON, negative numbers; each prints its version.
    assert_version(&ok(s.herd(&["put", "/app/port", "8080"])));
    assert_version(&ok(s.herd_here(&["put", "app/name", "hello world"])));
    ok(s.herd(&["put", "/app/quoted", "\"8080\""]));
    ok(s.herd(&[
        "put",
        "/app/db",
        r#"{"host": "db1", "port": 5432, "tags": ["a", "b"]}"#,
    ]));
    ok(s.herd(&["put", "/app/neg", "-5"]));
    ok(s.herd(&["put", "/app/flag", "true"]));
    // From a file (one trailing newline dropped) and from stdin.
    let files = tempfile::tempdir().unwrap();
    let text = files.path().join("motd");
    std::fs::write(&text, "welcome\n").unwrap();
    let list = files.path().join("list.json");
    std::fs::write(&list, "[1, 2, 3]\n").unwrap();
    ok(s.herd(&["put", "/app/motd", "-f", text.to_str().unwrap()]));
    ok(s.herd(&["put", "/app/list", "--file", list.to_str().unwrap()]));
    ok(Cli::new(["put", "/app/stdin", "-f", "-"])
        .cwd(s.cwd.path())
        .stdin("{\"from\": \"stdin\"}\n")
        .run());

    assert_eq!(
        s.doc().await,
        json!({"app": {
            "port": 8080, "name": "hello world", "quoted": "8080", "neg": -5, "flag": true,
            "db": {"host": "db1", "port": 5432, "tags": ["a", "b"]},
            "motd": "welcome", "list": [1, 2, 3], "stdin": {"from": "stdin"},
        }})
    );

    // get: a string raw (or quoted with --json), other leaves as JSON, directories as JSON.
    assert_eq!(ok(s.herd(&["get", "/app/port"])), "8080\n");
    assert_eq!(ok(s.herd_here(&["get", "/app/name"])), "hello world\n");
    assert_eq!(
        ok(s.herd(&["get", "--json", "/app/name"])),
        "\"hello world\"\n"
    );
    assert_eq!(ok(s.herd(&["get", "/app/quoted"])), "8080\n");
    assert_eq!(ok(s.herd(&["get", "/app/quoted", "--json"])), "\"8080\"\n");
    assert_eq!(ok(s.herd(&["get", "/app/list"])), "[1,2,3]\n");
    assert_eq!(ok(s.herd(&["get", "/app/neg"])), "-5\n");
    let db: Value = serde_json::from_str(&ok(s.herd(&["get", "/app/db"]))).unwrap();
    assert_eq!(db, json!({"host": "db1", "port": 5432, "tags": ["a", "b"]}));

    // ls: children in byte order, directories with '/'; the root hides `.herd`.
    assert_eq!(
        ok(s.herd(&["ls", "/app"])),
        "db/\nflag\nlist\nmotd\nname\nneg\nport\nquoted\nstdin/\n"
    );
    assert_eq!(ok(s.herd_here(&["ls"])), "app/\n");

    // rm prints the deletion's version; the key is gone.
    assert_version(&ok(s.herd(&["rm", "/app/neg"])));
    fails(s.herd(&["get", "/app/neg"]), 3, "not_found");
    fails(s.herd(&["rm", "/app/neg"]), 3, "not_found");

    // Compare-and-set through the CLI.
    let version = ok(s.herd(&["put", "/app/port", "8081"]));
    fails(
        s.herd(&[
            "put",
            "/app/port",
            "1",
            "--if-match",
            "1-0-0000000000000001",
        ]),
        4,
        "precondition_failed",
    );
    ok(s.herd(&["put", "/app/port", "8082", "--if-match", version.trim()]));
    fails(
        s.herd(&["put", "/app/port", "1", "--create"]),
        4,
        "already_exists",
    );
    assert_eq!(ok(s.herd(&["get", "/app/port"])), "8082\n");

    // export is the whole document (or a subtree) as JSON.
    let exported: Value = serde_json::from_str(&ok(s.herd(&["export"]))).unwrap();
    assert_eq!(exported, s.doc().await);
    let sub: Value = serde_json::from_str(&ok(s.herd(&["export", "/app/db"]))).unwrap();
    assert_eq!(sub, db);

    // status is the node's status as JSON.
    let status: Value = serde_json::from_str(&ok(s.herd_here(&["status"]))).unwrap();
    assert!(
        status["node_id"].is_string() && status["revision"].as_u64().unwrap() > 0,
        "{status}"
    );
}

#[tokio::test]
async fn put_with_a_ttl_expires() {
    let s = Setup::start().await;
    ok(s.herd(&["put", "/session/x", "token-1", "--ttl", "1s"]));
    assert_eq!(ok(s.herd(&["get", "/session/x"])), "token-1\n");
    // Awaited: `herd get` to report not found once the second has passed.
    wait_for("the ttl to expire", Duration::from_secs(5), || async {
        (s.herd(&["get", "/session/x"]).code == 3).then_some(())
    })
    .await;
    fails(
        s.herd(&["put", "/session/y", "1", "--ttl", "soon"]),
        7,
        "ttl",
    );
    fails(
        s.herd(&["put", "/session/y", "{\"a\": 1}", "--ttl", "1h"]),
        7,
        "ttl",
    );
    assert_eq!(s.doc().await, json!({}));
}

#[tokio::test]
async fn import_a_store_json_and_export_it_back() {
    let s = Setup::start().await;
    ok(s.herd(&["put", "/local/only", "1"]));
    // A key/value store's dump: a nested object of services, flags and settings.
    let store = json!({
        "services": {
            "billing": {"url": "https://billing.internal:8443", "timeout_ms": 2500, "retries": 3},
            "search": {"url": "http://10.0.4.7:9200", "replicas": ["10.0.4.8", "10.0.4.9"]},
        },
        "feature_flags": {"new_checkout": true, "dark_mode": false, "rollout_percent": 12.5},
        "shop": {"id": "berlin-03", "opening_hours": {"mon": "08:00-20:00", "sun": null}},
        "version": 41,
    });
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("store.json");
    std::fs::write(&file, serde_json::to_string_pretty(&store).unwrap()).unwrap();
    let out = s.herd(&["import", file.to_str().unwrap()]);
    assert_version(&out.stdout);
    assert!(out.stderr.contains("imported 4 keys"), "{out:?}");
    let mut expected = store.clone();
    expected["local"] = json!({"only": 1});
    assert_eq!(s.doc().await, expected);
    assert_eq!(
        ok(s.herd(&["get", "/services/search/replicas"])),
        "[\"10.0.4.8\",\"10.0.4.9\"]\n"
    );
    assert_eq!(ok(s.herd(&["get", "/shop/id"])), "berlin-03\n");

    // --replace also deletes the top-level keys the file does not name, in the same batch.
    let out = s.herd_here(&["import", "--replace", file.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("removed 1 keys"), "{out:?}");
    assert_eq!(s.doc().await, store);
    let exported: Value = serde_json::from_str(&ok(s.herd(&["export"]))).unwrap();
    assert_eq!(exported, store);
    // The node's own tokens survived the replace: the admin token still works.
    assert_eq!(ok(s.herd(&["get", "/version"])), "41\n");

    // Unusable import files change nothing.
    let not_object = files.path().join("list.json");
    std::fs::write(&not_object, "[1, 2]").unwrap();
    fails(
        s.herd(&["import", not_object.to_str().unwrap()]),
        7,
        "object",
    );
    let broken = files.path().join("broken.json");
    std::fs::write(&broken, "{\"a\": ").unwrap();
    fails(s.herd(&["import", broken.to_str().unwrap()]), 7, "not json");
    let bad_key = files.path().join("bad_key.json");
    std::fs::write(&bad_key, r#"{"ok": {"a/b": 1}}"#).unwrap();
    fails(s.herd(&["import", bad_key.to_str().unwrap()]), 7, "bad_key");
    let out = s.herd(&["import", "/no/such/file.json"]);
    assert!(
        out.code != 0 && out.stdout.is_empty() && out.stderr.contains("/no/such/file.json"),
        "{out:?}"
    );
    assert_eq!(s.doc().await, store);
}

#[tokio::test]
async fn tokens_and_explicit_connection_flags() {
    let s = Setup::start().await;
    let elsewhere = tempfile::tempdir().unwrap();
    let (url, ca) = (s.node.url.clone(), s.ca());
    // Explicit flags from a directory with no herd-data.
    let remote = |token: &str, args: &[&str]| {
        let mut all = vec![
            "--node",
            url.as_str(),
            "--token",
            token,
            "--ca-cert",
            ca.as_str(),
        ];
        all.extend_from_slice(args);
        Cli::new(all).cwd(elsewhere.path()).run()
    };
    let admin = s.admin_token();
    ok(remote(&admin, &["put", "/app/x", "1"]));
    // The same through the environment variables.
    let out = Cli::new(["get", "/app/x"])
        .env("HERD_NODE", &url)
        .env("HERD_TOKEN", &admin)
        .env("HERD_CA_CERT", &ca)
        .cwd(elsewhere.path())
        .run();
    assert_eq!(ok(out), "1\n");

    // token create prints only the secret on stdout.
    let out = s.herd(&[
        "token", "create", "ci", "--role", "write", "--prefix", "/app",
    ]);
    let secret = ok(out).trim().to_owned();
    assert!(
        secret.starts_with("herd_") && !secret.contains(char::is_whitespace),
        "{secret:?}"
    );
    let reader = ok(s.herd(&["token", "create", "viewer", "--role", "read"]))
        .trim()
        .to_owned();
    fails(
        s.herd(&["token", "create", "ci", "--role", "read"]),
        4,
        "conflict",
    );

    ok(remote(&secret, &["put", "/app/y", "2"]));
    assert_eq!(ok(remote(&reader, &["get", "/app/y"])), "2\n");
    fails(
        remote(&secret, &["put", "/other", "1"]),
        5,
        "outside_prefix",
    );
    fails(remote(&reader, &["put", "/app/y", "3"]), 5, "forbidden");
    fails(remote(&secret, &["token", "list"]), 5, "forbidden");

    // token list: a table with every token, never a secret.
    let table = ok(s.herd(&["token", "list"]));
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "ROLE", "PREFIX", "CREATED"]);
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert!(
        rows.iter().any(|r| r[..3] == ["ci", "write", "/app"]),
        "{table}"
    );
    assert!(
        rows.iter().any(|r| r[..3] == ["viewer", "read", "/"]),
        "{table}"
    );
    assert!(
        rows.iter()
            .any(|r| r[0].starts_with("bootstrap-") && r[1] == "admin"),
        "{table}"
    );
    for secret in [&secret, &reader, &admin] {
        assert!(
            !table.contains(secret.as_str()),
            "a secret is listed: {table}"
        );
    }

    // token revoke: the token stops working at once.
    ok(s.herd(&["token", "revoke", "ci"]));
    fails(remote(&secret, &["get", "/app/y"]), 5, "invalid_token");
    fails(s.herd(&["token", "revoke", "ci"]), 3, "ci");
    assert!(!ok(s.herd(&["token", "list"])).contains("ci "));
    assert_eq!(s.doc().await, json!({"app": {"x": 1, "y": 2}}));
}

#[tokio::test]
async fn errors_exit_non_zero_with_a_message_and_no_output() {
    let s = Setup::start().await;
    ok(s.herd(&["put", "/app/x", "1"]));
    let empty = tempfile::tempdir().unwrap();
    let (url, ca) = (s.node.url.clone(), s.ca());
    let in_empty = |args: &[&str]| Cli::new(args.iter().copied()).cwd(empty.path()).run();

    // Not found.
    fails(s.herd(&["get", "/app/nothing"]), 3, "not_found");
    fails(s.herd(&["ls", "/nothing"]), 3, "not_found");
    // Bad paths and values: the node's reason.
    fails(s.herd(&["get", "/app/../x"]), 7, "bad_path");
    fails(s.herd(&["put", "/app//x", "1"]), 7, "bad_path");
    fails(s.herd(&["put", "/.herd/x", "1"]), 5, "reserved_path");
    fails(
        s.herd(&["put", "/app/x", "123456789012345678901234567890"]),
        7,
        "number_out_of_range",
    );
    fails(s.herd(&["put", "/app/x", r#"{"a/b": 1}"#]), 7, "bad_key");
    fails(s.herd(&["ls", "/app/x"]), 4, "not_a_directory");
    // No token.
    let out = fails(
        in_empty(&["--node", &url, "--ca-cert", &ca, "get", "/app/x"]),
        5,
        "unauthorized",
    );
    assert!(out.contains("hint: "), "{out}");
    // A wrong token.
    fails(
        in_empty(&[
            "--node",
            &url,
            "--ca-cert",
            &ca,
            "--token",
            "herd_wrong",
            "get",
            "/app/x",
        ]),
        5,
        "invalid_token",
    );
    // An unreachable node: a port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = fails(
        in_empty(&[
            "--node",
            &format!("https://{closed}"),
            "--ca-cert",
            &ca,
            "get",
            "/app/x",
        ]),
        6,
        "connect",
    );
    assert!(out.contains(&closed.to_string()), "{out}");
    // A node whose certificate the given CA did not issue.
    let other = tempfile::tempdir().unwrap();
    node::tls::load_or_create_api_tls(other.path(), None, &[]).unwrap();
    let other_ca = other.path().join("tls/ca.crt").display().to_string();
    fails(
        in_empty(&[
            "--node",
            &url,
            "--ca-cert",
            &other_ca,
            "--token",
            "x",
            "get",
            "/app/x",
        ]),
        6,
        "tls",
    );
    // No node to talk to at all, and a data directory without a node.
    fails(in_empty(&["get", "/app/x"]), 1, "no node");
    fails(
        in_empty(&["--data-dir", "nowhere", "get", "/app/x"]),
        1,
        "node.json",
    );
    // Usage errors.
    let out = in_empty(&["token", "create", "x", "--role", "root"]);
    assert_eq!((out.code, out.stdout.as_str()), (2, ""), "{out:?}");
    let out = in_empty(&["put", "/a"]);
    assert_eq!((out.code, out.stdout.as_str()), (2, ""), "{out:?}");
    // Nothing of the failed commands was written.
    assert_eq!(s.doc().await, json!({"app": {"x": 1}}));
}

#[tokio::test]
async fn watch_prints_the_state_then_changes() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let s = Setup::start().await;
    ok(s.herd(&["put", "/app/x", "1"]));
    let mut child = tokio::process::Command::new(herd_bin())
        .args(["--data-dir", s.data().to_str().unwrap(), "watch", "/app"])
        .env_remove("HERD_TOKEN")
        .env_remove("HERD_NODE")
        .env_remove("HERD_CA_CERT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .expect("a line within 5 s")
            .unwrap()
            .expect("a line")
    };
    assert_eq!(next().await, "put /app/x 1");
    assert!(next().await.starts_with("synced "));
    ok(s.herd(&["put", "/other", "1"]));
    ok(s.herd(&["put", "/app/y", r#"{"a": "b"}"#]));
    assert_eq!(next().await, r#"put /app/y {"a":"b"}"#);
    ok(s.herd(&["rm", "/app/x"]));
    assert_eq!(next().await, "delete /app/x");
    child.kill().await.unwrap();
}

#[test]
fn cluster_init_writes_a_private_secret_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herd-data/cluster.secret");
    let out = ok(Cli::new(["cluster", "init"]).cwd(dir.path()).run());
    assert_eq!(out, "herd-data/cluster.secret\n");
    let first = std::fs::read_to_string(&path).unwrap();
    assert!(first.starts_with("herd-cluster-secret-v1:"), "{first:?}");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A second init would split the cluster: refused, the secret unchanged.
    fails(
        Cli::new(["cluster", "init"]).cwd(dir.path()).run(),
        1,
        "exists already",
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), first);

    let out = ok(Cli::new([
        "cluster",
        "init",
        "--force",
        "--out",
        path.to_str().unwrap(),
    ])
    .cwd(dir.path())
    .run());
    assert_eq!(out, format!("{}\n", path.display()));
    assert_ne!(std::fs::read_to_string(&path).unwrap(), first);

    // A bare file name is a file of the current directory.
    let out = ok(Cli::new(["cluster", "init", "--out", "bare.secret"])
        .cwd(dir.path())
        .run());
    assert_eq!(out, "bare.secret\n");
    assert!(std::fs::read_to_string(dir.path().join("bare.secret"))
        .unwrap()
        .starts_with("herd-cluster-secret-v1:"));
}

#[tokio::test]
async fn plugin_commands_install_list_update_test_and_remove() {
    let s = Setup::start().await;
    let schema = tests::plugins::shipped("json-schema").display().to_string();
    let counter = tests::plugins::hostile("counter").display().to_string();
    let counter2 = tests::plugins::hostile("counter2").display().to_string();
    let out = s.herd(&[
        "plugin",
        "add",
        &schema,
        "--name",
        "schema",
        "--prefix",
        "/app,/schemas",
        "--hooks",
        "validate",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("installed plugin schema"),
        "{}",
        out.stderr
    );
    // Adding the same name again is a conflict.
    let again = s.herd(&[
        "plugin", "add", &schema, "--name", "schema", "--prefix", "/x", "--hooks", "validate",
    ]);
    assert_eq!(again.code, 4, "{}", again.stderr);
    let put = s.herd(&[
        "put",
        "/schemas/port",
        r#"{"guards": "/app/port", "schema": {"type": "integer", "maximum": 65535}}"#,
    ]);
    assert_eq!(put.code, 0, "{}", put.stderr);
    // A refused write: the plugin's name and message on stderr, exit 7, nothing stored.
    let bad = s.herd(&["put", "/app/port", "70000"]);
    assert_eq!(bad.code, 7, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("schema") && bad.stderr.contains("65535"),
        "{}",
        bad.stderr
    );
    assert!(bad.stdout.is_empty());
    assert_eq!(s.herd(&["put", "/app/port", "8080"]).code, 0);
    let ls = s.herd(&["plugin", "ls"]);
    assert_eq!(ls.code, 0, "{}", ls.stderr);
    assert!(
        ls.stdout.starts_with("NAME") && ls.stdout.contains("healthy"),
        "{}",
        ls.stdout
    );
    let json = s.herd(&["plugin", "ls", "--json"]);
    let v: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["plugins"][0]["prefixes"], json!(["/app", "/schemas"]));
    // update: a new file, the other fields kept.
    let add = s.herd(&[
        "plugin", "add", &counter, "--name", "counter", "--prefix", "/c", "--hooks", "validate",
    ]);
    assert_eq!(add.code, 0, "{}", add.stderr);
    let r = s.herd(&["put", "/c/x", r#""reject""#]);
    assert!(r.stderr.contains("counter v1"), "{}", r.stderr);
    let up = s.herd(&["plugin", "update", "--name", "counter", &counter2]);
    assert_eq!(up.code, 0, "{}", up.stderr);
    let r = s.herd(&["put", "/c/x", r#""reject""#]);
    assert!(r.stderr.contains("counter v2"), "{}", r.stderr);
    // test: no node needed.
    let store = s.cwd.path().join("doc.json");
    std::fs::write(
        &store,
        r#"{"schemas": {"p": {"guards": "/a/p", "schema": {"maximum": 10}}}}"#,
    )
    .unwrap();
    let store = store.display().to_string();
    let t = Cli::new([
        "plugin", "test", &schema, "--store", &store, "--path", "/a/p", "--value", "11",
    ])
    .run();
    assert_eq!(t.code, 7, "{}", t.stderr);
    assert!(
        t.stderr.contains("rejected") && t.stderr.contains("maximum 10"),
        "{}",
        t.stderr
    );
    let t = Cli::new([
        "plugin", "test", &schema, "--store", &store, "--path", "/a/p", "--value", "9",
    ])
    .run();
    assert_eq!(
        (t.code, t.stdout.as_str()),
        (0, "accepted\n"),
        "{}",
        t.stderr
    );
    // rm, and an unknown name.
    assert_eq!(s.herd(&["plugin", "rm", "schema"]).code, 0);
    assert_eq!(s.herd(&["put", "/app/port", "70000"]).code, 0);
    assert_eq!(s.herd(&["plugin", "rm", "schema"]).code, 3);
    // A file that is not a component.
    let junk = s.cwd.path().join("junk.wasm");
    std::fs::write(&junk, "hello").unwrap();
    let j = s.herd(&[
        "plugin",
        "add",
        &junk.display().to_string(),
        "--name",
        "j",
        "--prefix",
        "/j",
        "--hooks",
        "validate",
    ]);
    assert_eq!(j.code, 7, "{}", j.stderr);
}
