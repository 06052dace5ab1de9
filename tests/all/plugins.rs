//! WebAssembly plugins on running nodes: the shipped plugins (C and Python) over REST, hostile
//! plugins contained, hot reload under load, restart from the compiled-code cache, and a plugin
//! installed on one node enforced on another. (The file view's side is in `mount.rs`.)

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tests::plugins::{hostile, install, installed, shipped};
use tests::{next_json, wait_for, Cli, TestNode};

const T: Duration = Duration::from_secs(30);

/// A request on any client, answered whatever its status.
async fn call(
    c: &node::client::Client,
    method: Method,
    path: &str,
    b: Option<&str>,
) -> node::client::Response {
    c.request(method, path, &[], b.map(|b| Bytes::from(b.to_owned())))
        .await
        .expect("request")
}

fn body(r: &node::client::Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The error object of a refused write, checked for status, code and plugin.
fn refused(r: &node::client::Response, status: u16, code: &str, plugin: &str) -> String {
    assert_eq!(r.status, status, "{}", body(r));
    let e = &r.json().expect("json error")["error"];
    assert_eq!(e["code"], code, "{}", body(r));
    assert_eq!(e["plugin"], plugin, "{}", body(r));
    e["message"].as_str().unwrap_or_default().to_owned()
}

const SCHEMA: &str = r#"{"guards": "/app/db", "schema": {
    "type": "object", "required": ["host", "port"], "additionalProperties": false,
    "properties": {
        "host": {"type": "string", "pattern": "^[a-z0-9.-]+$", "maxLength": 64},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "mode": {"enum": ["primary", "replica"]}
    }}}"#;

async fn schema_validator_guards_a_prefix(plugin: &str) {
    let n = TestNode::start().await;
    installed(
        &n.client,
        plugin,
        &shipped(plugin),
        json!({"prefixes": ["/app", "/schemas"], "hooks": ["validate"], "limits": {"memory": 32 << 20}}),
    )
    .await;
    assert_eq!(n.put("/v1/kv/schemas/app-db", SCHEMA).await.status, 200);
    // A schema that does not parse as one is itself refused.
    let r = n.put("/v1/kv/schemas/broken", r#"{"guards": 5}"#).await;
    refused(&r, 422, "plugin_rejected", plugin);

    let r = n
        .put("/v1/kv/app/db", r#"{"host": "db.local", "port": 5432}"#)
        .await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let r = n.put("/v1/kv/app/db/port", "70000").await;
    let m = refused(&r, 422, "plugin_rejected", plugin);
    assert!(m.contains("/app/db/port") && m.contains("65535"), "{m}");
    assert_eq!(n.get("/v1/kv/app/db/port").await.json().unwrap(), 5432);
    // dry_run runs the hooks too.
    let r = n
        .send(Method::PUT, "/v1/kv/app/db/port?dry_run", &[], Some("0"))
        .await;
    refused(&r, 422, "plugin_rejected", plugin);
    for (path, value, want) in [
        ("/v1/kv/app/db/host", r#""Bad Host!""#, "pattern"),
        ("/v1/kv/app/db/mode", r#""leader""#, "mode"),
        ("/v1/kv/app/db/extra", "1", "extra"),
        ("/v1/kv/app/db", r#"{"host": "x"}"#, "port"),
        ("/v1/kv/app/db/port", r#""5432""#, "integer"),
    ] {
        let r = n.put(path, value).await;
        let m = refused(&r, 422, "plugin_rejected", plugin);
        assert!(m.to_lowercase().contains(want), "{path}={value}: {m}");
    }
    // Deleting a required key is judged on the result: refused.
    let r = n
        .send(Method::DELETE, "/v1/kv/app/db/port", &[], None)
        .await;
    refused(&r, 422, "plugin_rejected", plugin);
    // A batch is judged as a whole: its reads see every op applied, and one bad op refuses all.
    let batch = json!({"ops": [
        {"op": "put", "path": "/app/db/port", "value": 6432},
        {"op": "put", "path": "/app/db/mode", "value": "replica"},
        {"op": "put", "path": "/app/other", "value": 1},
    ]});
    let r = n
        .send(Method::POST, "/v1/batch", &[], Some(&batch.to_string()))
        .await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let batch = json!({"ops": [
        {"op": "put", "path": "/app/db/port", "value": 7432},
        {"op": "put", "path": "/app/db/mode", "value": "leader"},
    ]});
    let r = n
        .send(Method::POST, "/v1/batch", &[], Some(&batch.to_string()))
        .await;
    refused(&r, 422, "plugin_rejected", plugin);
    assert_eq!(
        n.get("/v1/kv/app/db").await.json().unwrap(),
        json!({"host": "db.local", "port": 6432, "mode": "replica"})
    );
    // Keys outside the prefixes are not the plugin's business.
    assert_eq!(n.put("/v1/kv/elsewhere/port", "70000").await.status, 200);
    // The plugin is listed healthy, with its calls counted.
    let ls = n.get("/v1/plugins").await.json().unwrap();
    let p = &ls["plugins"][0];
    assert_eq!(p["name"], plugin);
    assert_eq!(p["state"], "healthy", "{ls}");
    assert!(p["calls"].as_u64().unwrap() > 5, "{ls}");
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_schema_validator_guards_a_prefix() {
    schema_validator_guards_a_prefix("json-schema").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_schema_validator_guards_a_prefix() {
    schema_validator_guards_a_prefix("json-schema-py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transform_normalises_before_validation_and_storage() {
    let n = TestNode::start().await;
    installed(
        &n.client,
        "normalize",
        &shipped("normalize"),
        json!({"prefixes": ["/app"], "hooks": ["transform"], "limits": {"memory": 32 << 20}}),
    )
    .await;
    let r = n.put("/v1/kv/app/db/host", r#""  DB.Example.COM. ""#).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(
        n.get("/v1/kv/app/db/host").await.json().unwrap(),
        "db.example.com"
    );
    // Inside an object written above the prefix's keys too.
    let r = n
        .put(
            "/v1/kv/app/web",
            r#"{"upstream_host": "WEB1.LOCAL", "name": "  front  "}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(
        n.get("/v1/kv/app/web").await.json().unwrap(),
        json!({"upstream_host": "web1.local", "name": "front"})
    );
    let r = n.put("/v1/kv/app/db/host", r#""bad host!""#).await;
    let m = refused(&r, 422, "plugin_rejected", "normalize");
    assert!(m.contains("not a valid host name"), "{m}");
    assert_eq!(
        n.get("/v1/kv/app/db/host").await.json().unwrap(),
        "db.example.com"
    );
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derive_renders_an_nginx_upstream_as_read_only_keys() {
    let n = TestNode::start().await;
    installed(
        &n.client,
        "nginx-upstream",
        &shipped("nginx-upstream"),
        json!({"prefixes": ["/services"], "hooks": ["derive"], "output": "/rendered/nginx", "limits": {"memory": 32 << 20}}),
    )
    .await;
    // A watcher of the rendered directory, from before anything is rendered.
    let mut watch = n.client.events("/v1/watch/rendered", &[]).await.unwrap();
    assert_eq!(next_json(&mut watch).await.0, "synced");
    let batch = json!({"ops": [
        {"op": "put", "path": "/services/web/a", "value": {"address": "10.0.0.5", "port": 8080, "weight": 2}},
        {"op": "put", "path": "/services/web/b", "value": {"address": "10.0.0.6", "port": 8080, "down": true}},
    ]});
    let r = n
        .send(Method::POST, "/v1/batch", &[], Some(&batch.to_string()))
        .await;
    assert_eq!(r.status, 200);
    let before = tests::header_u64(&r, "x-herd-revision") - 1;
    let want =
        "upstream web {\n    server 10.0.0.5:8080 weight=2;\n    server 10.0.0.6:8080 down;\n}\n";
    wait_for("the rendered upstream", T, || async {
        let r = n.get("/v1/kv/rendered/nginx/web.conf").await;
        (r.status == 200 && r.json().ok()? == want).then_some(())
    })
    .await;
    // The derive run is a put event in the stream, and in a replay from before it.
    let (kind, ev) = next_json(&mut watch).await;
    assert_eq!(
        (kind.as_str(), &ev["path"], &ev["value"]),
        ("put", &json!("/rendered/nginx/web.conf"), &json!(want))
    );
    let mut replay = n
        .client
        .events(&format!("/v1/watch/?since={before}"), &[])
        .await
        .unwrap();
    let mut paths = Vec::new();
    loop {
        let (kind, ev) = next_json(&mut replay).await;
        if kind == "synced" {
            break;
        }
        paths.push(ev["path"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        paths,
        [
            "/services/web/a",
            "/services/web/b",
            "/rendered/nginx/web.conf"
        ]
    );
    // A fresh watch's state, a read and an export of a directory above show them too.
    let mut fresh = n.client.events("/v1/watch/rendered", &[]).await.unwrap();
    let (kind, ev) = next_json(&mut fresh).await;
    assert_eq!(
        (kind.as_str(), &ev["path"]),
        ("put", &json!("/rendered/nginx/web.conf"))
    );
    let doc = n.get("/v1/kv/").await.json().unwrap();
    assert_eq!(doc["rendered"]["nginx"]["web.conf"], want, "{doc}");
    assert_eq!(doc["services"]["web"]["a"]["port"], 8080, "{doc}");
    let data = n.dir.path().display().to_string();
    let exported = Cli::new(["--data-dir", &data, "export", "/"]).run();
    assert_eq!(exported.code, 0, "{exported:?}");
    let exported: Value = serde_json::from_str(&exported.stdout).unwrap();
    assert_eq!(exported["rendered"]["nginx"]["web.conf"], want);
    // Imported back, the derived part is skipped (it is the node's to compute), the rest lands.
    let file = n.dir.path().join("export.json");
    std::fs::write(&file, exported.to_string()).unwrap();
    let imported = Cli::new(["--data-dir", &data, "import", file.to_str().unwrap()]).run();
    assert_eq!(imported.code, 0, "{imported:?}");
    assert!(
        imported.stderr.contains("skipped /rendered/nginx"),
        "{imported:?}"
    );
    let (kind, ev) = next_json(&mut watch).await;
    assert_eq!(
        (kind.as_str(), &ev["path"], &ev["value"]),
        ("put", &json!("/rendered"), &json!({}))
    );
    // A write above the output prefix replaces all below it for a watcher: the outputs are
    // announced again, so watchers and reads keep agreeing.
    let (kind, ev) = next_json(&mut watch).await;
    assert_eq!(
        (kind.as_str(), &ev["path"], &ev["value"]),
        ("put", &json!("/rendered/nginx/web.conf"), &json!(want))
    );
    let r = n.send(Method::DELETE, "/v1/kv/rendered", &[], None).await;
    assert_eq!(r.status, 200);
    let (kind, ev) = next_json(&mut watch).await;
    assert_eq!(
        (kind.as_str(), &ev["path"]),
        ("delete", &json!("/rendered"))
    );
    let (kind, ev) = next_json(&mut watch).await;
    assert_eq!(
        (kind.as_str(), &ev["path"]),
        ("put", &json!("/rendered/nginx/web.conf"))
    );
    let r = n.get("/v1/kv/rendered/nginx/web.conf").await;
    assert_eq!(r.json().unwrap(), want);
    // Listed next to the stored keys, and read-only to everybody.
    let keys = n.get("/v1/kv/?keys").await.json().unwrap();
    assert!(
        keys["keys"]
            .as_array()
            .unwrap()
            .contains(&json!("rendered/")),
        "{keys}"
    );
    let r = n.put("/v1/kv/rendered/nginx/web.conf", r#""mine""#).await;
    refused(&r, 403, "read_only", "nginx-upstream");
    let r = n.put("/v1/kv/rendered", r#"{"nginx": {"x": 1}}"#).await;
    refused(&r, 403, "read_only", "nginx-upstream");
    // A change of the inputs renders again.
    let r = n
        .send(Method::DELETE, "/v1/kv/services/web/b", &[], None)
        .await;
    assert_eq!(r.status, 200);
    let want = "upstream web {\n    server 10.0.0.5:8080 weight=2;\n}\n";
    wait_for("the upstream without b", T, || async {
        let r = n.get("/v1/kv/rendered/nginx/web.conf").await;
        (r.json().ok()? == want).then_some(())
    })
    .await;
    let (kind, ev) = next_json(&mut watch).await;
    assert_eq!((kind.as_str(), &ev["value"]), ("put", &json!(want)));
    // Removing the plugin removes its outputs, and says so to watchers.
    let r = n
        .send(Method::DELETE, "/v1/plugins/nginx-upstream", &[], None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(n.get("/v1/kv/rendered/nginx/web.conf").await.status, 404);
    let (kind, ev) = next_json(&mut watch).await;
    assert_eq!(
        (kind.as_str(), &ev["path"]),
        ("delete", &json!("/rendered/nginx"))
    );
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_render_from_plain_keys_and_a_broken_one_keeps_its_last_output() {
    let n = TestNode::start().await;
    installed(
        &n.client,
        "template",
        &shipped("template"),
        json!({"prefixes": ["/templates", "/services"], "hooks": ["derive"], "output": "/rendered", "limits": {"memory": 32 << 20}}),
    )
    .await;
    let data = n.dir.path().display().to_string();
    let herd = |args: &[&str]| {
        let mut all = vec!["--data-dir", data.as_str()];
        all.extend_from_slice(args);
        let out = Cli::new(all).run();
        assert_eq!(out.code, 0, "herd {args:?}: {out:?}");
        out.stdout
    };
    herd(&[
        "put",
        "/services/web",
        r#"{"address": "10.0.0.5", "port": 8080}"#,
    ]);
    herd(&["put", "/services/api", r#"{"address": "10.0.0.6"}"#]);
    // Installing a template is one put: a directory with the template and where it goes.
    let template = "upstream backend {\n{% for name, s in children('/services') %}\n    server {{ s.address }}:{{ s.port | default(80) }};\n{% endfor %}\n}\n";
    let value = json!({"template": template, "output": "nginx/upstream.conf"}).to_string();
    herd(&["put", "/templates/upstream", &value]);
    let want = |servers: &str| format!("upstream backend {{\n{servers}}}\n");
    let rendered = || async {
        n.get("/v1/kv/rendered/nginx/upstream.conf")
            .await
            .json()
            .ok()
    };
    let first = want("    server 10.0.0.6:80;\n    server 10.0.0.5:8080;\n");
    wait_for("the rendered upstream", T, || async {
        (rendered().await? == first).then_some(())
    })
    .await;
    let mut watch = n.client.events("/v1/watch/rendered", &[]).await.unwrap();
    assert_eq!(
        next_json(&mut watch).await.1["path"],
        "/rendered/nginx/upstream.conf"
    );
    assert_eq!(next_json(&mut watch).await.0, "synced");
    // A broken template keeps its last good output, and says why: a key beside the outputs
    // (in the watch stream), and the plugin's last error.
    herd(&["put", "/templates/upstream/template", "{% for x in %}"]);
    let (kind, ev) = next_json(&mut watch).await;
    // A new subtree is one put, as the store announces one.
    assert_eq!(
        (kind.as_str(), &ev["path"]),
        ("put", &json!("/rendered/.errors"))
    );
    let why = ev["value"]["upstream"].as_str().unwrap();
    assert!(why.starts_with("line 1:"), "{ev}");
    herd(&[
        "put",
        "/services/db",
        r#"{"address": "10.0.0.7", "port": 5432}"#,
    ]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rendered().await.unwrap(),
        first,
        "the last good output stays"
    );
    let ls = herd(&["plugin", "ls"]);
    assert!(ls.contains("/templates/upstream: line 1:"), "{ls}");
    // Fixed: rendered again with what changed meanwhile, and the error goes.
    herd(&["put", "/templates/upstream/template", template]);
    let (kind, ev) = next_json(&mut watch).await;
    let (kind2, ev2) = next_json(&mut watch).await;
    let mut got = [(kind, ev["path"].clone()), (kind2, ev2["path"].clone())];
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            ("delete".to_owned(), json!("/rendered/.errors")),
            ("put".to_owned(), json!("/rendered/nginx/upstream.conf"))
        ]
    );
    let second =
        want("    server 10.0.0.6:80;\n    server 10.0.0.7:5432;\n    server 10.0.0.5:8080;\n");
    assert_eq!(rendered().await.unwrap(), second);
    let ls = herd(&["plugin", "ls"]);
    assert!(!ls.contains("line 1:"), "{ls}");
    n.shutdown().await;
}

/// Puts `value` at `/other`, then checks that a watch resuming from revision `before` gets
/// that put first: nothing else (no derived key) changed since `before`.
async fn nothing_but_other_since(client: &node::client::Client, before: u64, value: &str) {
    let r = call(client, Method::PUT, "/v1/kv/other", Some(value)).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let last = tests::header_u64(&r, "x-herd-revision");
    let mut watch = client
        .events(&format!("/v1/watch/?since={before}"), &[])
        .await
        .unwrap();
    let (kind, ev) = next_json(&mut watch).await;
    assert_eq!(
        (kind.as_str(), &ev["path"], ev["revision"].as_u64()),
        ("put", &json!("/other"), Some(last)),
        "nothing but /other since the restart: {ev}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_template_keeps_its_last_output_across_a_restart_and_a_clean_restart_says_nothing()
{
    let dir = tempfile::tempdir().unwrap();
    let start = || async {
        let cfg = tests::test_config(dir.path());
        let h = node::node::start(cfg).await.expect("start");
        let url = node::node::local_url(h.api_addr);
        (h, tests::admin_client(dir.path(), &url))
    };
    let (h, client) = start().await;
    installed(
        &client,
        "template",
        &shipped("template"),
        json!({"prefixes": ["/templates", "/services"], "hooks": ["derive"], "output": "/rendered", "limits": {"memory": 32 << 20}}),
    )
    .await;
    let put = |c: &node::client::Client, p: &str, v: &str| {
        let (c, p, v) = (c.clone(), p.to_owned(), v.to_owned());
        async move {
            let r = c
                .request(Method::PUT, &p, &[], Some(Bytes::from(v)))
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", body(&r));
            tests::header_u64(&r, "x-herd-revision")
        }
    };
    let rendered = |c: &node::client::Client| {
        let c = c.clone();
        async move {
            let r = call(&c, Method::GET, "/v1/kv/rendered/web", None).await;
            (r.status == 200).then(|| r.json().ok()).flatten()
        }
    };
    put(&client, "/v1/kv/services/web", r#"{"port": 8080}"#).await;
    put(
        &client,
        "/v1/kv/templates/web",
        r#""port {{ store.services.web.port }}""#,
    )
    .await;
    wait_for("the first rendering", T, || async {
        (rendered(&client).await? == json!("port 8080")).then_some(())
    })
    .await;
    // A clean restart: the outputs are there from the start, and a watcher resuming from
    // before the restart is told nothing about them (nothing changed).
    let before = put(&client, "/v1/kv/other", "1").await;
    h.shutdown().await;
    // When the plugin's outputs were last made by a run (after `since`, the first run after
    // the restart has been applied, and announced if it changed anything).
    let ran_after = |c: &node::client::Client, since: u64| {
        let c = c.clone();
        async move {
            let r = call(&c, Method::GET, "/v1/plugins", None).await;
            let updated = r.json().ok()?["outputs"][0]["updated"].as_u64()?;
            (updated > since).then_some(())
        }
    };
    let restarted = node::clock::now_ms();
    let (h, client) = start().await;
    assert_eq!(
        rendered(&client).await,
        Some(json!("port 8080")),
        "served at once after the restart"
    );
    wait_for("the first run after the restart", T, || {
        ran_after(&client, restarted)
    })
    .await;
    nothing_but_other_since(&client, before, "2").await;
    // Broken, then restarted: the last good output stays, and the error is reported.
    put(&client, "/v1/kv/services/web/port", "9090").await;
    wait_for("the second rendering", T, || async {
        (rendered(&client).await? == json!("port 9090")).then_some(())
    })
    .await;
    put(
        &client,
        "/v1/kv/templates/web",
        r#""port {{ store.services.web.port ""#,
    )
    .await;
    let errors = |c: &node::client::Client| {
        let c = c.clone();
        async move {
            let r = call(&c, Method::GET, "/v1/kv/rendered/.errors/web", None).await;
            (r.status == 200).then_some(())
        }
    };
    wait_for("the error reported", T, || errors(&client)).await;
    let before = put(&client, "/v1/kv/other", "3").await;
    h.shutdown().await;
    let restarted = node::clock::now_ms();
    let (h, client) = start().await;
    // Once the plugin has run again (and found the template still broken), nothing changed:
    wait_for("the first run after the restart", T, || {
        ran_after(&client, restarted)
    })
    .await;
    let r = call(&client, Method::GET, "/v1/plugins", None).await;
    assert!(body(&r).contains("/templates/web: line 1"), "{}", body(&r));
    errors(&client).await.expect("the error key is still there");
    assert_eq!(
        rendered(&client).await,
        Some(json!("port 9090")),
        "the last good output outlives the restart"
    );
    nothing_but_other_since(&client, before, "4").await;
    // Removing the plugin forgets what it saved.
    let r = call(&client, Method::DELETE, "/v1/plugins/template", None).await;
    assert_eq!(r.status, 200);
    wait_for("the saved outputs forgotten", T, || async {
        (!dir.path().join("plugins/outputs/template.json").exists()).then_some(())
    })
    .await;
    h.shutdown().await;
}

/// Writes to `/busy/<i>` in a loop until stopped; counts successes and failures.
fn background_writer(n: &TestNode, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, u64)> {
    let client = n.client.clone();
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0, 0);
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let r = client
                .request(
                    Method::PUT,
                    &format!("/v1/kv/busy/{}", i % 50),
                    &[],
                    Some(Bytes::from(i.to_string())),
                )
                .await;
            match r {
                Ok(r) if r.status == 200 => ok += 1,
                _ => failed += 1,
            }
        }
        (ok, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_reject_only_their_writes() {
    let n = TestNode::start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = background_writer(&n, stop.clone());
    let cases = [
        ("loop", "time limit"),
        ("memory", "memory limit"),
        ("recursion", "stack"),
        ("trap", "trapped"),
    ];
    for (name, want) in cases {
        installed(
            &n.client,
            name,
            &hostile(name),
            json!({"prefixes": [format!("/{name}")], "hooks": ["validate"], "limits": {"memory": 8 << 20, "time_ms": 200, "output_bytes": 1 << 20, "stack": 128 << 10}}),
        )
        .await;
        for _ in 0..3 {
            let r = n.put(&format!("/v1/kv/{name}/k"), "1").await;
            let m = refused(&r, 422, "plugin_failed", name);
            assert!(m.contains(want), "{name}: {m}");
        }
        assert_eq!(n.get(&format!("/v1/kv/{name}/k")).await.status, 404);
        // Three failures in a row: unhealthy, with the last error, in the list and the status.
        let p = n.get(&format!("/v1/plugins/{name}")).await.json().unwrap();
        assert_eq!(p["state"], "unhealthy", "{p}");
        assert!(
            p["last_error"]["message"].as_str().unwrap().contains(want),
            "{p}"
        );
        let status = n.get("/v1/status").await.json().unwrap();
        let listed = status["plugins"].as_array().unwrap();
        assert!(
            listed
                .iter()
                .any(|x| x["name"] == name && x["state"] == "unhealthy"),
            "{status}"
        );
    }
    // A refusal message is cut to a sane size.
    installed(&n.client, "huge-error", &hostile("huge-error"), json!({"prefixes": ["/he"], "hooks": ["validate"], "limits": {"memory": 64 << 20, "time_ms": 1000, "output_bytes": 1 << 20}})).await;
    let r = n.put("/v1/kv/he/k", "1").await;
    let m = refused(&r, 422, "plugin_rejected", "huge-error");
    assert!(m.len() < 5000, "{} bytes", m.len());
    // A transform that answers something that is not JSON.
    installed(
        &n.client,
        "badjson",
        &hostile("badjson"),
        json!({"prefixes": ["/bj"], "hooks": ["transform"]}),
    )
    .await;
    let m = refused(
        &n.put("/v1/kv/bj/k", "1").await,
        422,
        "plugin_failed",
        "badjson",
    );
    assert!(m.contains("not valid JSON"), "{m}");
    // An import the contract does not give: refused at install, nothing stored.
    let r = install(
        &n.client,
        "evil",
        &hostile("evil-import"),
        json!({"prefixes": ["/evil"], "hooks": ["validate"]}),
    )
    .await;
    assert_eq!(r.status, 422, "{}", body(&r));
    assert!(body(&r).contains("does not give"), "{}", body(&r));
    assert_eq!(n.get("/v1/plugins/evil").await.status, 404);
    // A manifest naming a hook the component lacks: refused too.
    let r = install(
        &n.client,
        "nohook",
        &hostile("trap"),
        json!({"prefixes": ["/nh"], "hooks": ["derive"], "output": "/nh-out"}),
    )
    .await;
    assert_eq!(r.status, 422, "{}", body(&r));
    // Derives writing outside their prefix or too much keep no outputs and report it.
    for (name, want) in [
        ("outside", "outside its output prefix"),
        ("huge", "over its limit"),
    ] {
        installed(
            &n.client,
            name,
            &hostile(name),
            json!({"prefixes": [format!("/in-{name}")], "hooks": ["derive"], "output": format!("/out-{name}"), "limits": {"memory": 64 << 20, "time_ms": 2000, "output_bytes": 1 << 20}}),
        )
        .await;
        wait_for(&format!("{name}'s derive error"), T, || async {
            let p = n.get(&format!("/v1/plugins/{name}")).await.json().ok()?;
            p["last_error"]["message"]
                .as_str()?
                .contains(want)
                .then_some(())
        })
        .await;
        assert_eq!(n.get(&format!("/v1/kv/out-{name}")).await.status, 404);
        assert_eq!(n.get("/v1/kv/app/stolen").await.status, 404);
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = writer.await.unwrap();
    assert_eq!(failed, 0, "the other client's writes failed");
    assert!(ok > 0);
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_write_load_loses_no_write() {
    let n = TestNode::start().await;
    let manifest = json!({"prefixes": ["/hr"], "hooks": ["validate"]});
    installed(&n.client, "counter", &hostile("counter"), manifest.clone()).await;
    let m = refused(
        &n.put("/v1/kv/hr/x", r#""reject""#).await,
        422,
        "plugin_rejected",
        "counter",
    );
    assert_eq!(m, "rejected by plugin counter: rejected by counter v1");
    let stop = Arc::new(AtomicBool::new(false));
    let oks = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..4 {
        let client = n.client.clone();
        let (stop, oks) = (stop.clone(), oks.clone());
        writers.push(tokio::spawn(async move {
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                last += 1;
                let r = client
                    .request(
                        Method::PUT,
                        &format!("/v1/kv/hr/w{w}"),
                        &[],
                        Some(Bytes::from(last.to_string())),
                    )
                    .await
                    .unwrap();
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                oks.fetch_add(1, Ordering::Relaxed);
            }
            last
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Update to v2 while the writers run: no restart, no failed write.
    installed(&n.client, "counter", &hostile("counter2"), manifest).await;
    let m = refused(
        &n.put("/v1/kv/hr/x", r#""reject""#).await,
        422,
        "plugin_rejected",
        "counter",
    );
    assert_eq!(m, "rejected by plugin counter: rejected by counter v2");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for (w, h) in writers.into_iter().enumerate() {
        let last = h.await.unwrap();
        // Every acknowledged write is there: each writer's last value is stored.
        assert_eq!(
            n.get(&format!("/v1/kv/hr/w{w}")).await.json().unwrap(),
            json!(last)
        );
    }
    assert!(oks.load(Ordering::Relaxed) > 10);
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_enforces_plugins_from_the_compiled_cache() {
    let dir = tempfile::tempdir().unwrap();
    let start = || async {
        let cfg = tests::test_config(dir.path());
        let h = node::node::start(cfg).await.expect("start");
        let url = node::node::local_url(h.api_addr);
        (h, tests::admin_client(dir.path(), &url))
    };
    let (h, client) = start().await;
    tests::plugins::installed(
        &client,
        "json-schema",
        &shipped("json-schema"),
        json!({"prefixes": ["/app"], "hooks": ["validate"]}),
    )
    .await;
    let put = |c: &node::client::Client, p: &str, v: &str| {
        let (c, p, v) = (c.clone(), p.to_owned(), v.to_owned());
        async move {
            c.request(Method::PUT, &p, &[], Some(Bytes::from(v)))
                .await
                .unwrap()
        }
    };
    assert_eq!(
        put(&client, "/v1/kv/schemas/app-db", SCHEMA).await.status,
        200
    );
    h.shutdown().await;
    let (h, client) = start().await;
    // The very first write after the start is judged.
    let r = put(&client, "/v1/kv/app/db", r#"{"host": "h", "port": 0}"#).await;
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    let cache = std::fs::read_dir(dir.path().join("plugins/cache"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("cwasm".as_ref()))
        .count();
    assert_eq!(cache, 1, "one compiled file, reused");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_management_refuses_bad_requests() {
    let n = TestNode::start().await;
    let file = shipped("json-schema");
    // Unknown file, bad names, bad hooks, prefixes in /.herd, derive without output.
    let r = n
        .send(
            Method::PUT,
            "/v1/plugins/x",
            &[],
            Some(
                &json!({"sha256": "0".repeat(64), "prefixes": ["/a"], "hooks": ["validate"]})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(r.status, 400, "{}", body(&r));
    assert!(body(&r).contains("upload it first"));
    for (name, m) in [
        ("Bad", json!({"prefixes": ["/a"], "hooks": ["validate"]})),
        ("x", json!({"prefixes": ["/.herd"], "hooks": ["validate"]})),
        ("x", json!({"prefixes": ["/a"], "hooks": ["render"]})),
        ("x", json!({"prefixes": ["/a"], "hooks": ["derive"]})),
        (
            "x",
            json!({"prefixes": ["/a"], "hooks": ["validate"], "limits": {"memory": 1}}),
        ),
    ] {
        let r = install(&n.client, name, &file, m.clone()).await;
        assert_eq!(r.status, 400, "{name} {m}: {}", body(&r));
    }
    // Not WebAssembly.
    let r = n
        .send(
            Method::POST,
            "/v1/plugins/files",
            &[(http::header::CONTENT_TYPE, "application/wasm".into())],
            Some("hello"),
        )
        .await;
    assert_eq!(r.status, 400);
    // A read-only token may list but not install. (The node refuses before it reads the
    // body, so the body is kept small: a large one could still be in flight when the node
    // answers 403 and closes, and the client would see a broken pipe instead.)
    let ro = n.client_with(Some(&n.token("reader", "read", None).await));
    let r = ro
        .request(
            Method::POST,
            "/v1/plugins/files",
            &[(http::header::CONTENT_TYPE, "application/wasm".into())],
            Some(Bytes::from_static(b"\0asm\x01\0\0\0")),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    let r = call(
        &ro,
        Method::PUT,
        "/v1/plugins/x",
        Some(r#"{"sha256": "00", "prefixes": ["/a"], "hooks": ["validate"]}"#),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        ro.request(Method::GET, "/v1/plugins", &[], None)
            .await
            .unwrap()
            .status,
        200
    );
    // Add twice with If-None-Match: conflict; remove an unknown one: 404.
    installed(
        &n.client,
        "js",
        &file,
        json!({"prefixes": ["/a"], "hooks": ["validate"]}),
    )
    .await;
    assert!(
        n.get("/v1/plugins").await.json().unwrap()["plugins"]
            .as_array()
            .unwrap()
            .len()
            == 1
    );
    let r = n.send(Method::DELETE, "/v1/plugins/nope", &[], None).await;
    assert_eq!(r.status, 404);
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_installed_on_one_node_is_enforced_on_another() {
    let mut c = tests::cluster::TestCluster::start(2, |_, _| {}).await;
    c.wait_meshed(T).await;
    installed(
        &c.nodes[0].client,
        "json-schema",
        &shipped("json-schema"),
        json!({"prefixes": ["/app", "/schemas"], "hooks": ["validate"]}),
    )
    .await;
    installed(
        &c.nodes[0].client,
        "nginx-upstream",
        &shipped("nginx-upstream"),
        json!({"prefixes": ["/services"], "hooks": ["derive"], "output": "/rendered/nginx", "limits": {"memory": 32 << 20}}),
    )
    .await;
    let b = &c.nodes[1];
    // B fetches the files from A and compiles them: about 20 s in a debug build on two cores,
    // longer while the rest of the suite runs beside it.
    wait_for("both plugins healthy on B", 3 * T, || async {
        let ls = b.get("/v1/plugins").await.json().ok()?;
        let ps = ls["plugins"].as_array()?;
        (ps.len() == 2 && ps.iter().all(|p| p["state"] == "healthy")).then_some(())
    })
    .await;
    b.put("/v1/kv/schemas/app-db", SCHEMA).await;
    wait_for("the schema on A", T, || async {
        (c.nodes[0].get("/v1/kv/schemas/app-db").await.status == 200).then_some(())
    })
    .await;
    for node in &c.nodes {
        let r = call(
            &node.client,
            Method::PUT,
            "/v1/kv/app/db",
            Some(r#"{"host": "h", "port": 99999}"#),
        )
        .await;
        refused(&r, 422, "plugin_rejected", "json-schema");
    }
    // Derived keys are computed on each node from the replicated inputs.
    c.nodes[0]
        .put(
            "/v1/kv/services/api/a",
            r#"{"address": "10.1.0.1", "port": 9000}"#,
        )
        .await;
    for i in 0..2 {
        wait_for(&format!("the rendered upstream on node {i}"), T, || async {
            let r = c.nodes[i].get("/v1/kv/rendered/nginx/api.conf").await;
            (r.status == 200).then_some(())
        })
        .await;
    }
    // A component damaged on B's disk is fetched again from A, never compiled as it is.
    let ls = b.get("/v1/plugins").await.json().unwrap();
    let sha = ls["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "json-schema")
        .unwrap()["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    c.nodes[1].stop().await;
    let plugins = c.nodes[1].dir.path().join("plugins");
    let blob = plugins.join(format!("blobs/{sha}.wasm"));
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&blob, &bytes).unwrap();
    for e in std::fs::read_dir(plugins.join("cache")).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with(&sha) {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    c.nodes[1].restart().await;
    let b = &c.nodes[1];
    wait_for(
        "json-schema fetched again and healthy on B",
        3 * T,
        || async {
            let r = call(
                &b.client,
                Method::PUT,
                "/v1/kv/app/db",
                Some(r#"{"host": "h", "port": 99999}"#),
            )
            .await;
            (r.status == 422).then_some(())
        },
    )
    .await;
    assert_eq!(
        std::fs::read(&blob).unwrap()[middle],
        bytes[middle] ^ 1,
        "replaced"
    );
    // Removing on B removes on A.
    let r = call(&b.client, Method::DELETE, "/v1/plugins/json-schema", None).await;
    assert_eq!(r.status, 200);
    wait_for("the validator gone on A", T, || async {
        let r = call(
            &c.nodes[0].client,
            Method::PUT,
            "/v1/kv/app/db/port",
            Some("99999"),
        )
        .await;
        (r.status == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_hook_run_in_place_holds_up_no_other_client() {
    // Limits of 100 ms or less run the hook on the request's own task (no hand-off).
    let n = TestNode::start().await;
    installed(
        &n.client,
        "loop",
        &hostile("loop"),
        json!({"prefixes": ["/inline"], "hooks": ["validate"], "limits": {"time_ms": 50}}),
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = background_writer(&n, stop.clone());
    let mut pending = Vec::new();
    for i in 0..6 {
        let c = n.client.clone();
        pending.push(tokio::spawn(async move {
            call(&c, Method::PUT, &format!("/v1/kv/inline/{i}"), Some("1")).await
        }));
    }
    for p in pending {
        let m = refused(&p.await.unwrap(), 422, "plugin_failed", "loop");
        assert!(m.contains("time limit of 50ms"), "{m}");
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = writer.await.unwrap();
    assert_eq!(failed, 0);
    assert!(ok > 0);
    n.shutdown().await;
}
