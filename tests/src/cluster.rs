//! In-process clusters on loopback: every node a real `node::node::start` with its own data
//! dir, peer port and HTTPS API on `127.0.0.1`, one shared cluster secret, static seed peers
//! (never mDNS: multicast stays off outside the namespace lab in `tests/lab/`).

use crate::{admin_client, wait_for};
use node::client::Client;
use node::config::Config;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Logs of the nodes on stderr when `HERD_TEST_LOG` names a level or filter (e.g. `debug`).
pub fn init_logging() {
    if let Ok(filter) = std::env::var("HERD_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// One node of a [`TestCluster`]; can be stopped and started again on the same data dir.
pub struct ClusterNode {
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub handle: Option<node::node::NodeHandle>,
    pub url: String,
    pub client: Client,
    pub peer_addr: SocketAddr,
}

impl ClusterNode {
    async fn start(dir: tempfile::TempDir, config: Config) -> ClusterNode {
        let handle = node::node::start(config.clone())
            .await
            .expect("node starts");
        let url = node::node::local_url(handle.api_addr);
        let client = admin_client(dir.path(), &url);
        let peer_addr = handle.peer_addr.expect("clustering is on");
        ClusterNode {
            dir,
            config,
            handle: Some(handle),
            url,
            client,
            peer_addr,
        }
    }

    /// Stops the node gracefully (its data dir stays).
    pub async fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }

    /// Starts the node again on its data dir, its peer port and its seeds.
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut config = self.config.clone();
        config.cluster.addr = self.peer_addr;
        let handle = node::node::start(config).await.expect("node restarts");
        self.url = node::node::local_url(handle.api_addr);
        self.client = admin_client(self.dir.path(), &self.url);
        self.handle = Some(handle);
    }

    /// Stops the node and deletes its data dir but its node id, as a disk replaced under it.
    pub async fn wipe(&mut self) {
        self.stop().await;
        for entry in std::fs::read_dir(self.dir.path()).expect("data dir") {
            let path = entry.expect("entry").path();
            if path.file_name().is_some_and(|n| n == "node.id") {
                continue;
            }
            if path.is_dir() {
                std::fs::remove_dir_all(&path).expect("remove");
            } else {
                std::fs::remove_file(&path).expect("remove");
            }
        }
    }

    pub fn node_id(&self) -> String {
        let id = std::fs::read_to_string(self.dir.path().join("node.id")).expect("node.id");
        id.trim().to_owned()
    }

    pub async fn get(&self, path: &str) -> node::client::Response {
        self.client
            .request(http::Method::GET, path, &[], None)
            .await
            .expect("request")
    }

    /// PUT that must succeed.
    pub async fn put(&self, path: &str, body: &str) {
        let r = self
            .client
            .request(
                http::Method::PUT,
                path,
                &[],
                Some(bytes::Bytes::from(body.to_owned())),
            )
            .await
            .expect("request");
        assert_eq!(
            r.status,
            200,
            "PUT {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }

    /// The whole document.
    pub async fn doc(&self) -> serde_json::Value {
        self.get("/v1/kv/").await.json().expect("json document")
    }

    /// The store's digest as `/v1/status` reports it.
    pub async fn digest(&self) -> serde_json::Value {
        let s = self.get("/v1/status").await.json().expect("status");
        s["digest"].clone()
    }

    pub async fn members(&self) -> serde_json::Value {
        self.get("/v1/members").await.json().expect("members")
    }
}

/// Several nodes sharing one cluster secret.
pub struct TestCluster {
    pub nodes: Vec<ClusterNode>,
    /// Holds the cluster secret.
    pub secret_dir: tempfile::TempDir,
}

impl TestCluster {
    /// The secret file of the cluster.
    pub fn secret(&self) -> PathBuf {
        self.secret_dir.path().join("cluster.secret")
    }

    /// Starts `n` nodes: the first alone, every other one with the first as its seed (they
    /// learn each other from it). `tweak` adjusts node `i`'s config before it starts.
    pub async fn start(n: usize, tweak: impl Fn(usize, &mut Config)) -> TestCluster {
        init_logging();
        let secret_dir = tempfile::tempdir().expect("temp dir");
        node::cluster::trust::ClusterSecret::create(
            &secret_dir.path().join("cluster.secret"),
            false,
        )
        .expect("cluster secret");
        let mut c = TestCluster {
            nodes: Vec::new(),
            secret_dir,
        };
        for i in 0..n {
            let seeds = match c.nodes.first() {
                Some(first) => vec![first.peer_addr.to_string()],
                None => Vec::new(),
            };
            c.add(seeds, |cfg| tweak(i, cfg)).await;
        }
        c
    }

    /// Starts one more node with `seeds`.
    pub async fn add(&mut self, seeds: Vec<String>, tweak: impl FnOnce(&mut Config)) -> usize {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = crate::test_config(dir.path());
        config.cluster.secret = Some(self.secret());
        config.cluster.addr = "127.0.0.1:0".parse().expect("literal");
        config.cluster.mdns = false;
        config.cluster.peers = seeds;
        config.cluster.anti_entropy_interval = Duration::from_millis(300);
        config.cluster.retry_max = Duration::from_secs(2);
        tweak(&mut config);
        self.nodes.push(ClusterNode::start(dir, config).await);
        self.nodes.len() - 1
    }

    /// Waits until every running node sees every other running node alive.
    pub async fn wait_meshed(&self, timeout: Duration) {
        let running: Vec<&ClusterNode> = self.nodes.iter().filter(|n| n.handle.is_some()).collect();
        let ids: Vec<String> = running.iter().map(|n| n.node_id()).collect();
        for n in &running {
            let me = n.node_id();
            wait_for("every peer alive", timeout, || async {
                let m = n.members().await;
                let alive: Vec<String> = m["members"]
                    .as_array()?
                    .iter()
                    .filter(|p| p["state"] == "alive")
                    .filter_map(|p| p["node_id"].as_str().map(str::to_owned))
                    .collect();
                ids.iter()
                    .filter(|id| **id != me)
                    .all(|id| alive.contains(id))
                    .then_some(())
            })
            .await;
        }
    }

    /// Waits until every running node has the same digest and document; returns the document.
    pub async fn wait_converged(&self, timeout: Duration) -> serde_json::Value {
        let running: Vec<&ClusterNode> = self.nodes.iter().filter(|n| n.handle.is_some()).collect();
        wait_for("all nodes converged", timeout, || async {
            let first = running[0].digest().await;
            for n in &running[1..] {
                if n.digest().await != first {
                    return None;
                }
            }
            let doc = running[0].doc().await;
            for n in &running[1..] {
                if n.doc().await != doc {
                    return None;
                }
            }
            Some(doc)
        })
        .await
    }

    pub async fn shutdown(mut self) {
        for n in &mut self.nodes {
            n.stop().await;
        }
    }
}
