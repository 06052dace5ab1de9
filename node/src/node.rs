//! The composition root: `start(config)` opens the data directory, loads the store, prepares TLS
//! and tokens, binds the API and spawns every task; `NodeHandle::shutdown()` stops them all and
//! waits. Every task goes through one `CancellationToken` and one `TaskTracker`.

use crate::api::{self, App, Metrics};
use crate::auth::{self, Tokens};
use crate::cluster::mdns::{self, Discovery};
use crate::cluster::peer::Stated;
use crate::cluster::trust::{ClusterSecret, NodeIdentity, PeerTls};
use crate::cluster::{self, Cluster};
use crate::config::Config;
use crate::db::{self, Db, WriterHandle};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A running node.
pub struct NodeHandle {
    /// The address the API listens on (with the real port when 0 was asked for).
    pub api_addr: SocketAddr,
    /// The node's stable id.
    pub node_id: u64,
    /// The live database, for in-process users (tests, the later file view).
    pub db: Db,
    cancel: CancellationToken,
    tracker: TaskTracker,
    writer: WriterHandle,
    /// The file view, when `config.mount.dir` asked for one.
    mount: Option<fuse_mount::Mount>,
    /// The peer port's address, when clustering is on.
    pub peer_addr: Option<SocketAddr>,
    /// The cluster side (peers, replication), when clustering is on.
    pub cluster: Option<Arc<Cluster>>,
    discovery: Option<Discovery>,
    /// Installed plugins and derived keys.
    pub plugins: crate::plugin::Plugins,
}

impl NodeHandle {
    /// Stops accepting, ends every connection and task, and waits for the writer to finish.
    pub async fn shutdown(self) {
        let NodeHandle {
            cancel,
            tracker,
            writer,
            db,
            mount,
            discovery,
            cluster,
            plugins,
            ..
        } = self;
        if let Some(d) = discovery {
            d.shutdown().await;
        }
        if let Some(mount) = mount {
            let dir = mount.dir().display().to_string();
            match tokio::task::spawn_blocking(move || mount.unmount()).await {
                Ok(Ok(())) => tracing::info!(dir, "file view unmounted"),
                Ok(Err(e)) => tracing::warn!(dir, error = %e, "cannot unmount the file view"),
                Err(e) => tracing::warn!(dir, error = %e, "the unmount task failed"),
            }
        }
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
        // The writer ends once every handle to the database is gone.
        drop(cluster);
        drop(plugins);
        drop(db);
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    }
}

/// Reads the node id from `DATA/node.id`, making one on first start.
fn node_id(data_dir: &Path) -> anyhow::Result<u64> {
    let file = data_dir.join("node.id");
    match std::fs::read_to_string(&file) {
        Ok(s) => u64::from_str_radix(s.trim(), 16)
            .with_context(|| format!("{} does not hold a node id", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut b = [0u8; 8];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
                .map_err(|_| anyhow::anyhow!("the system random source failed"))?;
            let id = u64::from_le_bytes(b);
            auth::write_private(&file, &format!("{id:016x}\n"))?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", file.display())),
    }
}

/// The URL a client on this machine uses for an API bound to `addr`.
pub fn local_url(addr: SocketAddr) -> String {
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("https://{host}:{}", addr.port())
}

/// The peer port's trust, if the node is configured for a cluster: the operator's CA and
/// certificate, or the cluster secret (`--cluster-secret`, or `DATA/cluster.secret` when that
/// file exists). `None`: the node runs alone.
fn peer_trust(config: &Config, me: &NodeIdentity) -> anyhow::Result<Option<PeerTls>> {
    if let (Some(ca), Some(cert), Some(key)) = (
        &config.cluster.ca,
        &config.cluster.cert,
        &config.cluster.key,
    ) {
        let ca_cert = crate::tls::read_chain(ca)?
            .into_iter()
            .next()
            .with_context(|| format!("{} holds no certificate", ca.display()))?;
        let chain = crate::tls::read_chain(cert)?;
        let key = crate::tls::read_key(key)?;
        return Ok(Some(
            PeerTls::new(ca_cert, chain, key).context("cannot use the operator's peer CA")?,
        ));
    }
    let secret_file = match &config.cluster.secret {
        Some(f) => f.clone(),
        None => {
            let f = config.data_dir.join("cluster.secret");
            if !f.exists() {
                if !config.cluster.peers.is_empty() {
                    anyhow::bail!(
                        "seed peers are configured but there is no cluster secret: copy the \
                         cluster's secret to {} (or pass --cluster-secret; `herd cluster init` \
                         makes a new one)",
                        f.display()
                    );
                }
                return Ok(None);
            }
            f
        }
    };
    let secret = ClusterSecret::read(&secret_file)?;
    Ok(Some(
        PeerTls::from_secret(&secret, me).context("cannot issue this node's peer certificate")?,
    ))
}

/// Starts a node; returns once it answers on its API.
pub async fn start(config: Config) -> anyhow::Result<NodeHandle> {
    config.validate()?;
    // Bind first so a taken port fails fast; connections wait in the backlog until the store is
    // loaded, because nothing accepts them before.
    let listener = TcpListener::bind(config.api.addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.api.addr))?;
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let id = node_id(&data_dir)?;
    let opts = db::Options {
        log_events: config.storage.log_events,
        log_bytes: config.storage.log_bytes,
        tombstone_grace_ms: config.storage.tombstone_grace.as_millis() as u64,
        cache_bytes: config.storage.cache_bytes,
    };
    let file = data_dir.join("store.redb");
    let loading = Instant::now();
    let (db, writer) = tokio::task::spawn_blocking(move || Db::open(&file, id, opts))
        .await
        .context("the loading task failed")?
        .context("cannot open the store")?;
    let registers = db.read().store.len();
    tracing::info!(
        registers,
        took_ms = loading.elapsed().as_millis() as u64,
        "store loaded"
    );

    let operator = match (&config.api.tls_cert, &config.api.tls_key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        _ => None,
    };
    let tls = crate::tls::load_or_create_api_tls(&data_dir, operator, &config.api.tls_san)
        .context("cannot set up TLS")?;
    let tokens = Tokens::default();
    auth::bootstrap(&db, &tokens, &data_dir)
        .await
        .context("cannot set up the bootstrap token")?;

    // Every task the node starts from here on joins `tracker`; `cancel` ends them.
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    // Plugins are loaded (from the compiled-code cache) before the API opens, so no write
    // slips past a plugin across a restart.
    let plugins =
        crate::plugin::Plugins::open(&data_dir, db.clone(), tracker.clone(), cancel.clone())
            .context("cannot start the plugin host")?;
    plugins.reload().await;

    let api_addr = listener.local_addr()?;
    let me = NodeIdentity {
        node_id: id,
        cluster: config.cluster.name.clone(),
        env: config.cluster.env.clone(),
    };
    let peer_tls = peer_trust(&config, &me)?;
    let peer_listener = match &peer_tls {
        Some(_) => Some(
            TcpListener::bind(config.cluster.addr)
                .await
                .with_context(|| {
                    format!("cannot listen on the peer port {}", config.cluster.addr)
                })?,
        ),
        None => None,
    };
    let peer_addr = match &peer_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let info = serde_json::json!({"api": local_url(api_addr), "node_id": format!("{id:016x}"), "pid": std::process::id(), "peer_addr": peer_addr.map(|a| a.to_string())});
    std::fs::write(data_dir.join("node.json"), format!("{info}\n"))
        .context("cannot write node.json")?;

    let config = Arc::new(config);
    let mount = match &config.mount.dir {
        None => None,
        Some(dir) => {
            let backend = crate::mount::Local::new(
                db.clone(),
                plugins.clone(),
                config.clone(),
                tokio::runtime::Handle::current(),
                cancel.clone(),
                tracker.clone(),
            );
            let dir = dir.clone();
            let read_only_mount = config.mount.read_only;
            let mounted = tokio::task::spawn_blocking(move || {
                let opts = fuse_mount::MountOptions {
                    read_only: read_only_mount,
                    ..Default::default()
                };
                fuse_mount::mount(Arc::new(backend), &dir, opts)
                    .with_context(|| format!("cannot mount the file view at {}", dir.display()))
            })
            .await
            .context("the mount task failed")??;
            tracing::info!(dir = %mounted.dir().display(), "file view mounted");
            Some(mounted)
        }
    };
    let (cluster, discovery) = match (peer_tls, peer_listener, peer_addr) {
        (Some(tls), Some(listener), Some(peer_addr)) => {
            let settings = cluster::Settings {
                me: me.clone(),
                peer_port: peer_addr.port(),
                seeds: config.cluster.peers.clone(),
                anti_entropy_interval: config.cluster.anti_entropy_interval,
                retry_cap: config.cluster.retry_max,
                push: config.cluster.push,
                max_body: (64 << 20).max(2 * config.api.max_batch_bytes),
                data_dir: data_dir.clone(),
                member_expiry: config.cluster.member_expiry,
                tombstone_grace: config.storage.tombstone_grace,
                max_clock_offset: config.cluster.max_clock_offset,
            };
            let c = Arc::new(Cluster::start(
                settings,
                db.clone(),
                tls,
                listener,
                cancel.clone(),
                tracker.clone(),
            ));
            let discovery = if config.cluster.mdns {
                let announce = mdns::Announce {
                    node_id: id,
                    cluster: me.cluster.clone(),
                    env: me.env.clone(),
                    api_port: api_addr.port(),
                    peer_port: peer_addr.port(),
                };
                let (d, found) = Discovery::start(&announce, &config.cluster.mdns_interfaces)
                    .context("cannot start mDNS discovery (use --no-mdns to run without it)")?;
                tracker.spawn(follow_discovery(c.clone(), found, cancel.clone()));
                Some(d)
            } else {
                None
            };
            plugins.set_fetch(c.clone());
            tracing::info!(peer_addr = %peer_addr, cluster = %me.cluster, env = %me.env, mdns = config.cluster.mdns, seeds = config.cluster.peers.len(), "peer port open");
            (Some(c), discovery)
        }
        _ => {
            tracing::info!("no cluster secret: running alone (see `herd cluster init`)");
            (None, None)
        }
    };
    let app = Arc::new(App {
        admission: crate::admission::Admission::new(
            db.clone(),
            plugins.clone(),
            config.api.max_value_bytes,
        ),
        db: db.clone(),
        tokens: tokens.clone(),
        watchers: Arc::new(Semaphore::new(config.api.max_watchers)),
        token_watchers: Arc::default(),
        snapshots: Arc::new(Semaphore::new(
            config.api.watch_snapshot_bytes.div_ceil(api::SNAPSHOT_UNIT),
        )),
        config,
        metrics: Metrics::default(),
        cancel: cancel.clone(),
        tracker: tracker.clone(),
        started: Instant::now(),
        cluster: cluster.clone(),
        plugins: plugins.clone(),
    });
    tracker.spawn(api::serve(
        listener,
        tls,
        app,
        cancel.clone(),
        tracker.clone(),
    ));
    tracker.spawn(tokens.follow(db.clone(), cancel.clone()));
    tracker.spawn(plugins.clone().follow(cancel.clone()));
    tracker.spawn(housekeeping(db.clone(), cancel.clone()));
    tracing::info!(node_id = %format!("{id:016x}"), api = %local_url(api_addr), data_dir = %data_dir.display(), "herd node started");
    Ok(NodeHandle {
        api_addr,
        node_id: id,
        db,
        cancel,
        tracker,
        writer,
        mount,
        peer_addr,
        cluster,
        discovery,
        plugins,
    })
}

/// Hands the peers mDNS finds to the cluster, which learns or refuses them.
async fn follow_discovery(
    cluster: Arc<Cluster>,
    mut found: tokio::sync::mpsc::Receiver<mdns::Found>,
    cancel: CancellationToken,
) {
    loop {
        let f = tokio::select! {
            _ = cancel.cancelled() => return,
            f = found.recv() => match f { Some(f) => f, None => return },
        };
        let Some(addr) = f.peer_addrs.first().copied() else {
            continue;
        };
        let them = Stated {
            node_id: f.node_id,
            cluster: f.cluster,
            env: f.env,
            proto: f.proto,
            time_ms: None,
        };
        cluster.discovered(&them, addr);
    }
}

/// Announces expiries when they are due and collects old tombstones.
async fn housekeeping(db: Db, cancel: CancellationToken) {
    loop {
        let wait = db::next_housekeeping(&db, Duration::from_secs(1));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => db.housekeeping().await,
        }
    }
}

/// Runs a node until SIGINT or SIGTERM, then shuts it down gracefully.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let node = start(config).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    node.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
