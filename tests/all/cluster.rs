//! Clusters of in-process nodes on loopback with static seeds: identity, push replication,
//! anti-entropy, restarts and catch-up. (mDNS and real partitions run in the namespace lab,
//! `tests/lab/cluster_test.py`.)

use http::Method;
use serde_json::json;
use std::time::Duration;
use tests::cluster::TestCluster;
use tests::wait_for;

const T: Duration = Duration::from_secs(20);

/// Waits until `path` on node `i` reads as `want`.
async fn wait_value(c: &TestCluster, i: usize, path: &str, want: serde_json::Value) {
    let n = &c.nodes[i];
    wait_for(&format!("{path} = {want} on node {i}"), T, || async {
        let r = n.get(&format!("/v1/kv{path}")).await;
        (r.status == 200 && r.json().ok()? == want).then_some(())
    })
    .await;
}

/// PUTs `body` at `path` on node `i` and returns the version it was given, as (millis,
/// counter, node id): the order of versions.
async fn version_of(c: &TestCluster, i: usize, path: &str, body: &str) -> (u64, u32, String) {
    let r = c.nodes[i]
        .client
        .request(
            Method::PUT,
            &format!("/v1/kv{path}"),
            &[],
            Some(bytes::Bytes::from(body.to_owned())),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let v = r.json().unwrap()["version"].as_str().unwrap().to_owned();
    let mut parts = v.splitn(3, '-');
    (
        parts.next().unwrap().parse().unwrap(),
        parts.next().unwrap().parse().unwrap(),
        parts.next().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_learn_each_other_and_push_every_write() {
    // Anti-entropy is slowed down so that what arrives here arrived by push.
    let c = TestCluster::start(3, |_, cfg| {
        cfg.cluster.anti_entropy_interval = Duration::from_secs(600)
    })
    .await;
    c.wait_meshed(T).await;
    let mut watch = c.nodes[1]
        .client
        .events("/v1/watch/app", &[])
        .await
        .expect("watch");
    // The initial state is empty: the first event after `synced` is the replicated write.
    loop {
        let ev = watch.next().await.expect("event").expect("event ok");
        if ev.event == "synced" {
            break;
        }
    }
    c.nodes[0].put("/v1/kv/app/x", "1").await;
    let ev = tokio::time::timeout(T, watch.next())
        .await
        .expect("an event in time")
        .expect("event")
        .expect("event ok");
    let data: serde_json::Value = serde_json::from_str(&ev.data).expect("json event");
    assert_eq!(
        (ev.event.as_str(), &data["path"], &data["value"]),
        ("put", &json!("/app/x"), &json!(1))
    );

    c.nodes[2]
        .put("/v1/kv/app/y", r#"{"a":[1,2],"b":"s"}"#)
        .await;
    for i in 0..3 {
        wait_value(&c, i, "/app/x", json!(1)).await;
        wait_value(&c, i, "/app/y", json!({"a": [1, 2], "b": "s"})).await;
    }
    // A delete and a subtree replace travel the same way.
    let r = c.nodes[1]
        .client
        .request(Method::DELETE, "/v1/kv/app/x", &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    c.nodes[0].put("/v1/kv/app/y", r#"{"c":true}"#).await;
    // Documents, not digests: the bootstrap tokens written before the nodes met are left to
    // anti-entropy, which this test slowed down.
    for i in 0..3 {
        wait_for("the same document", T, || async {
            (c.nodes[i].doc().await == json!({"app": {"y": {"c": true}}})).then_some(())
        })
        .await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_environment_is_refused_both_ways() {
    let mut c = TestCluster::start(1, |_, _| {}).await;
    let seed = c.nodes[0].peer_addr.to_string();
    let staging = c
        .add(vec![seed], |cfg| cfg.cluster.env = "staging".into())
        .await;
    c.nodes[0].put("/v1/kv/prod", "1").await;
    c.nodes[staging].put("/v1/kv/stage", "2").await;
    // The staging node reaches the seed, is told the environments differ, and records why.
    wait_for("the seed refusal", T, || async {
        let m = c.nodes[staging].members().await;
        let err = m["seeds"][0]["last_error"].as_str()?.to_owned();
        err.contains("environment").then_some(())
    })
    .await;
    // Several anti-entropy intervals later, neither has the other's data and neither lists
    // the other as a member.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(c.nodes[0].doc().await, json!({"prod": 1}));
    assert_eq!(c.nodes[staging].doc().await, json!({"stage": 2}));
    for (i, j) in [(0, staging), (staging, 0)] {
        let other = c.nodes[j].node_id();
        let m = c.nodes[i].members().await;
        let alive = m["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["node_id"] == other.as_str() && p["state"] == "alive");
        assert!(!alive, "node {i} lists node {j} as alive: {m}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_cluster_secret_gets_nothing() {
    let c = TestCluster::start(1, |_, _| {}).await;
    c.nodes[0].put("/v1/kv/secret", "1").await;
    // Another cluster's secret: its certificate is not from this cluster's CA.
    let seed = c.nodes[0].peer_addr.to_string();
    let other = TestCluster::start(1, |_, cfg| cfg.cluster.peers = vec![seed.clone()]).await;
    let i = 0;
    wait_for("the TLS refusal", T, || async {
        let m = other.nodes[i].members().await;
        let seed = m["seeds"]
            .as_array()?
            .iter()
            .find(|s| !s["last_error"].is_null())?
            .clone();
        Some(seed)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(other.nodes[i].get("/v1/kv/secret").await.status, 404);
    other.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pushes_anti_entropy_alone_converges() {
    let c = TestCluster::start(3, |_, cfg| cfg.cluster.push = false).await;
    c.wait_meshed(T).await;
    c.nodes[0].put("/v1/kv/a", "1").await;
    c.nodes[1].put("/v1/kv/b", r#"{"x":[1]}"#).await;
    // The same key on two nodes that have not seen each other's write: the higher version
    // wins everywhere (in the same millisecond the node ids decide, not the order in time).
    let v_first = version_of(&c, 2, "/same", "\"first\"").await;
    let v_second = version_of(&c, 0, "/same", "\"second\"").await;
    let winner = if v_second > v_first {
        "second"
    } else {
        "first"
    };
    let doc = c.wait_converged(T).await;
    assert_eq!(doc, json!({"a": 1, "b": {"x": [1]}, "same": winner}));
    // Tokens replicate too: node 0's admin token works on node 2.
    let token = std::fs::read_to_string(c.nodes[0].dir.path().join("admin.token")).unwrap();
    let ca = std::fs::read(c.nodes[2].dir.path().join("tls/ca.crt")).unwrap();
    let other = node::client::Client::new(&c.nodes[2].url, Some(token.trim().into()), &ca).unwrap();
    let r = other
        .request(Method::GET, "/v1/kv/a", &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up_and_a_deleted_key_stays_deleted() {
    let mut c = TestCluster::start(3, |_, _| {}).await;
    c.wait_meshed(T).await;
    c.nodes[0].put("/v1/kv/keep", "1").await;
    c.nodes[0].put("/v1/kv/gone", "1").await;
    c.wait_converged(T).await;
    c.nodes[2].stop().await;
    let r = c.nodes[1]
        .client
        .request(Method::DELETE, "/v1/kv/gone", &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    for i in 0..50 {
        c.nodes[i % 2]
            .put(&format!("/v1/kv/while/{i}"), &i.to_string())
            .await;
    }
    c.nodes[2].restart().await;
    let doc = c.wait_converged(T).await;
    assert_eq!(doc["while"].as_object().unwrap().len(), 50);
    assert!(doc.get("gone").is_none(), "{doc}");
    assert_eq!(doc["keep"], json!(1));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_catches_up_with_100k_keys() {
    let mut c = TestCluster::start(1, |_, _| {}).await;
    for chunk in 0..10 {
        let ops: Vec<serde_json::Value> = (0..10_000)
            .map(|i| json!({"op": "put", "path": format!("/keys/{chunk}/{i}"), "value": i}))
            .collect();
        let r = c.nodes[0]
            .client
            .request(
                Method::POST,
                "/v1/batch",
                &[],
                Some(json!({"ops": ops}).to_string().into()),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let seed = c.nodes[0].peer_addr.to_string();
    let started = std::time::Instant::now();
    let j = c.add(vec![seed], |_| {}).await;
    c.wait_converged(Duration::from_secs(60)).await;
    eprintln!("100,000 keys joined in {:?} (dev build)", started.elapsed());
    assert_eq!(
        c.nodes[j].get("/v1/kv/keys/9/9999").await.json().unwrap(),
        json!(9999)
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_waits_for_a_stopped_member_and_an_expired_one_rejoins_without_resurrecting() {
    // Seconds stand in for the default hour of grace and 30 days of member expiry.
    let mut c = TestCluster::start(3, |_, cfg| {
        cfg.storage.tombstone_grace = Duration::ZERO;
        cfg.cluster.member_expiry = Duration::from_secs(4);
    })
    .await;
    c.wait_meshed(T).await;
    c.nodes[0].put("/v1/kv/k", "1").await;
    c.nodes[0].put("/v1/kv/stays", "1").await;
    c.wait_converged(T).await;
    c.nodes[2].stop().await;
    let r = c.nodes[0]
        .client
        .request(Method::DELETE, "/v1/kv/k", &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let tombstones = |i: usize| {
        let c = &c;
        async move {
            let s = c.nodes[i].get("/v1/status").await.json().ok()?;
            s["tombstones"].as_u64()
        }
    };
    // Node 2 holds /k and has not said it holds the deletion: the deletion waits for it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        tombstones(0).await,
        Some(1),
        "collected before node 2 had it"
    );
    // Nodes 0 and 1 (a majority) remove node 2 after the expiry; the deletion goes.
    wait_for("the tombstone collected once node 2 expired", T, || async {
        (tombstones(0).await == Some(0) && tombstones(1).await == Some(0)).then_some(())
    })
    .await;
    let members = c.nodes[0].get("/v1/members").await.json().unwrap();
    let id = c.nodes[2].node_id();
    let entry = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node_id"] == id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(entry["state"], "removed", "{entry}");
    c.nodes[2].restart().await;
    let doc = c.wait_converged(T).await;
    assert_eq!(doc, json!({"stays": 1}), "the deleted key came back");
    wait_for("node 2 a member again", T, || async {
        let m = c.nodes[0].get("/v1/members").await.json().ok()?;
        let e = m["members"]
            .as_array()?
            .iter()
            .find(|m| m["node_id"] == id.as_str())?
            .clone();
        (e["state"] == "alive").then_some(())
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_gets_everything_back_and_spreads_no_emptiness() {
    let mut c = TestCluster::start(3, |_, _| {}).await;
    c.wait_meshed(T).await;
    for i in 0..20 {
        c.nodes[i % 3]
            .put(&format!("/v1/kv/k/{i}"), &i.to_string())
            .await;
    }
    let before = c.wait_converged(T).await;
    let id = c.nodes[2].node_id();
    c.nodes[2].wipe().await;
    c.nodes[2].restart().await;
    assert_eq!(c.nodes[2].node_id(), id, "the same id");
    c.nodes[2].put("/v1/kv/after", "1").await;
    let after = c.wait_converged(T).await;
    let mut want = before.clone();
    want["after"] = json!(1);
    assert_eq!(after, want);
    c.shutdown().await;
}

/// An operator CA (made here with rcgen) and node certificates it issued, written as PEM files.
fn operator_pki(
    dir: &std::path::Path,
    nodes: usize,
) -> (
    std::path::PathBuf,
    Vec<(std::path::PathBuf, std::path::PathBuf)>,
) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "operator CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut out = Vec::new();
    for i in 0..nodes {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["herd-peer".to_owned()]).unwrap();
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &issuer).unwrap();
        let (c, k) = (dir.join(format!("n{i}.crt")), dir.join(format!("n{i}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        out.push((c, k));
    }
    (ca_file, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_ca_replaces_the_cluster_secret() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, certs) = operator_pki(pki.path(), 2);
    let use_operator = |i: usize, cfg: &mut node::config::Config| {
        cfg.cluster.secret = None;
        cfg.cluster.ca = Some(ca.clone());
        cfg.cluster.cert = Some(certs[i].0.clone());
        cfg.cluster.key = Some(certs[i].1.clone());
    };
    let c = TestCluster::start(2, use_operator).await;
    c.wait_meshed(T).await;
    c.nodes[0].put("/v1/kv/op", "\"ca\"").await;
    wait_value(&c, 1, "/op", json!("ca")).await;
    c.shutdown().await;
}
