//! What makes nodes one cluster: trust between peers, the peer port, membership, discovery,
//! push replication and anti-entropy.
//!
//! - `trust`: the cluster secret, the cluster CA every node derives from it, node
//!   certificates, the mutual-TLS configurations of the peer port.
//! - `peer`: the peer port's HTTP server and client (on `transport`); both check the other
//!   side's stated cluster and environment on every exchange.
//! - `wire`: identity headers, the protocol version, the hello document.
//! - `members`: the membership table (alive / suspect / dead / refused, backoff).
//! - `membership`: who is a member (records in the store), what every member holds (when
//!   tombstones may be collected), expiry, and a removed node's way back.
//! - `mdns`: discovery on the local network.
//! - `probe`: the prober: hello to seeds and known peers, learning peers from their answers.
//! - `push`: one task per live peer sending the registers of every local write once durable
//!   (a slow peer lags on its own and is left to anti-entropy).
//! - `repair`: the anti-entropy loop (a round with a random live peer every interval compares
//!   digests and exchanges only the registers that differ) and the answer to a peer's round.
//! - this file: settings, the shared state, starting the tasks, the peer routes, the members
//!   view, and plugin files for peers.
//!
//! Peer routes (all `POST`, bodies as in `wire` and `store::digest`):
//! `/peer/v1/hello` (JSON [`Hello`] both ways), `/peer/v1/push` (a register batch; answers
//! `{"applied": n}`), `/peer/v1/digest` (one anti-entropy request; answers its reply),
//! `/peer/v1/plugin-file` (a sha256; answers the plugin component's bytes).
//!
//! Invariant: registers from peers enter the store only through `Db::merge` (the store's one
//! merge rule), and only from a peer that proved a certificate of the cluster CA and stated
//! our cluster and environment. Only local writes are pushed; anti-entropy carries the rest.

pub mod clocks;
pub mod mdns;
pub mod members;
pub mod membership;
pub mod peer;
mod probe;
mod push;
pub mod removal;
mod repair;
pub mod roster;
pub mod trust;
pub mod wire;

use crate::db::Db;
use crate::store::digest;
use crate::transport::error_response;
use crate::transport::Body;
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use members::{Members, Source};
use peer::{PeerClient, PeerError, Stated};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use trust::{NodeIdentity, PeerTls};
use wire::{Hello, PeerInfo};

/// How often the prober looks for seeds and peers that are due.
const PROBE_TICK: Duration = Duration::from_millis(200);
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// One anti-entropy exchange (a reply of up to 4 MiB of registers) on a LAN; a round stuck
/// behind a silent cut blocks the next round no longer than this.
const DIGEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of registers in one push.
const PUSH_BYTES: usize = 4 << 20;
/// Most bytes of registers in one anti-entropy reply or push.
const DIGEST_BUDGET: usize = digest::DEFAULT_BUDGET;

/// What the cluster tasks need to know besides the database.
#[derive(Debug, Clone)]
pub struct Settings {
    pub me: NodeIdentity,
    pub peer_port: u16,
    pub seeds: Vec<String>,
    pub anti_entropy_interval: Duration,
    pub retry_cap: Duration,
    pub push: bool,
    /// Largest request body the peer port accepts.
    pub max_body: usize,
    /// The data directory (for `cluster.members`).
    pub data_dir: std::path::PathBuf,
    /// A member not heard from for this long is removed.
    pub member_expiry: Duration,
    /// The least age of a deletion before it is collected (for the members view).
    pub tombstone_grace: Duration,
    /// Peers whose clocks differ from this node's by more are refused (`clocks.rs`).
    pub max_clock_offset: Duration,
}

/// Counters of replication, for `/metrics` and the benchmark.
#[derive(Debug, Default)]
pub struct Stats {
    pub pushes: std::sync::atomic::AtomicU64,
    pub pushed_registers: std::sync::atomic::AtomicU64,
    pub push_bytes: std::sync::atomic::AtomicU64,
    pub digest_rounds: std::sync::atomic::AtomicU64,
    /// Bytes of anti-entropy requests sent and replies received, registers included.
    pub digest_bytes: std::sync::atomic::AtomicU64,
    /// Registers received by anti-entropy or pushes that changed this node's store.
    pub merged_registers: std::sync::atomic::AtomicU64,
}

/// The running cluster side of a node; cheap to share.
pub struct Cluster {
    shared: Arc<Shared>,
}

struct Shared {
    s: Settings,
    db: Db,
    tls: PeerTls,
    members: Members,
    clocks: Arc<clocks::Clocks>,
    stats: Stats,
    /// One client per peer address.
    clients: Mutex<HashMap<SocketAddr, Arc<PeerClient>>>,
    /// Peers with a running push task.
    pushing: Mutex<HashSet<u64>>,
    /// Acknowledgements, expiry counts, what this node shared (`membership.rs`).
    membership: membership::Membership,
    /// A removed node's reset is under way.
    resyncing: std::sync::atomic::AtomicBool,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Cluster {
    /// Starts the peer port on `listener` and the cluster's tasks (all joined to `tracker`,
    /// all ended by `cancel`).
    pub fn start(
        s: Settings,
        db: Db,
        tls: PeerTls,
        listener: TcpListener,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) -> Cluster {
        let shared = Arc::new(Shared {
            membership: membership::Membership::open(
                &s.data_dir,
                s.me.node_id,
                s.member_expiry,
                crate::clock::now_ms(),
            ),
            resyncing: false.into(),
            members: Members::new(s.me.node_id, &s.seeds, s.retry_cap),
            clocks: {
                let db = db.clone();
                let on_ahead = Box::new(move |why| db.refuse_stamps(why));
                Arc::new(clocks::Clocks::new(s.max_clock_offset, on_ahead))
            },
            s,
            db,
            tls,
            stats: Stats::default(),
            clients: Mutex::new(HashMap::new()),
            pushing: Mutex::new(HashSet::new()),
            cancel: cancel.clone(),
            tracker: tracker.clone(),
        });
        let handler = {
            let shared = shared.clone();
            move |them, from, method, path, body| {
                let shared = shared.clone();
                async move { handle(shared, them, from, method, path, body).await }
            }
        };
        tracker.spawn(peer::serve(
            listener,
            shared.tls.server.clone(),
            peer::Gate {
                me: shared.s.me.clone(),
                clocks: shared.clocks.clone(),
            },
            shared.s.max_body,
            handler,
            cancel.clone(),
            tracker.clone(),
        ));
        // Nothing is known to be held anywhere until a member says so.
        shared
            .db
            .set_held(shared.membership.held(&shared.member_records()));
        tracker.spawn(probe::probe_loop(shared.clone()));
        tracker.spawn(membership::membership_loop(shared.clone()));
        tracker.spawn(repair::anti_entropy_loop(shared.clone()));
        Cluster { shared }
    }

    /// The members view (`GET /v1/members`).
    pub fn members_view(&self) -> serde_json::Value {
        let mut v = self.shared.members.view();
        for m in v["members"].as_array_mut().into_iter().flatten() {
            let id = m["node_id"]
                .as_str()
                .and_then(|id| u64::from_str_radix(id, 16).ok());
            if let Some(o) = id.and_then(|id| self.shared.clocks.offset(id)) {
                m["clock_offset_ms"] = o.ms.into();
                m["clock_refused"] = self.shared.clocks.refuses(o.ms).into();
            }
        }
        self.add_records(&mut v);
        let me = &self.shared.s.me;
        v["self"] = serde_json::json!({
            "node_id": format!("{:016x}", me.node_id),
            "cluster": me.cluster,
            "env": me.env,
            "peer_port": self.shared.s.peer_port,
        });
        v
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// A peer found by discovery: learned if it is of our cluster and environment, else
    /// recorded as refused (and logged once).
    pub fn discovered(&self, them: &Stated, addr: SocketAddr) {
        let me = &self.shared.s.me;
        match peer::mismatch(me, them) {
            None => self.shared.members.learn(
                them.node_id,
                addr,
                Source::Mdns,
                &them.cluster,
                &them.env,
            ),
            Some(why) => {
                if self
                    .shared
                    .members
                    .refuse(them.node_id, addr, &them.cluster, &them.env, &why)
                {
                    tracing::warn!(%addr, "seen a node that will not be merged with: {why}");
                }
            }
        }
    }
}

impl Shared {
    fn client(&self, addr: SocketAddr) -> Arc<PeerClient> {
        let mut c = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        c.entry(addr)
            .or_insert_with(|| {
                Arc::new(PeerClient::new(
                    addr,
                    self.s.me.clone(),
                    self.clocks.clone(),
                    self.tls.client.clone(),
                    crate::transport::pool::Tasks::Node(self.tracker.clone(), self.cancel.clone()),
                ))
            })
            .clone()
    }

    /// This node's hello to (or answer to) `peer`, if known: it says whether this node
    /// records the peer as a member.
    fn hello(&self, peer: Option<u64>) -> Hello {
        let rejoined = self.membership.rejoined();
        Hello {
            peer_port: self.s.peer_port,
            rejoin: (rejoined != crate::store::Version::ZERO).then(|| rejoined.to_string()),
            you: peer
                .filter(|id| self.member(*id).is_member())
                .map(|_| wire::YOU_MEMBER.to_owned()),
            peers: self
                .members
                .alive()
                .into_iter()
                .map(|(id, addr)| PeerInfo {
                    id: format!("{id:016x}"),
                    addr,
                })
                .collect(),
        }
    }

    /// Learns the peers another node listed.
    fn learn_listed(&self, listed: &[PeerInfo]) {
        let me = &self.s.me;
        for p in listed {
            if let Ok(id) = u64::from_str_radix(&p.id, 16) {
                self.members
                    .learn(id, p.addr, Source::Peer, &me.cluster, &me.env);
            }
        }
    }

    /// Marks `id` alive after a successful exchange; starts pushing to it if it just became so.
    fn contact(self: &Arc<Self>, id: u64) {
        self.members.contact(id);
        let start = {
            let mut p = self.pushing.lock().unwrap_or_else(|e| e.into_inner());
            p.insert(id)
        };
        if start {
            let shared = self.clone();
            self.tracker.spawn(push::push_loop(shared, id));
        }
    }

    /// Records a failed exchange with `id`.
    fn failure(self: &Arc<Self>, id: u64, e: &PeerError) {
        if let PeerError::Removed {
            version, removals, ..
        } = e
        {
            self.members.failure(id, &e.to_string());
            self.removed_self(*version, removals);
            return;
        }
        // A refused clock is reachable, and logged by `clocks` when it starts and ends; a
        // removed peer was logged when it was removed.
        if let PeerError::Clock { .. } | PeerError::PeerRemoved(_) = e {
            self.members.failure(id, &e.to_string());
            return;
        }
        if self.members.failure(id, &e.to_string()) {
            tracing::warn!(peer = %format!("{id:016x}"), error = %e, "peer is unreachable; retrying with backoff");
        } else {
            tracing::debug!(peer = %format!("{id:016x}"), error = %e, "peer exchange failed");
        }
    }

    /// Says hello to `addr`; returns who answered.
    async fn say_hello(
        self: &Arc<Self>,
        addr: SocketAddr,
        peer: Option<u64>,
    ) -> Result<Stated, PeerError> {
        let body = serde_json::to_vec(&self.hello(peer)).expect("hello serialises");
        let (them, answer) = self
            .client(addr)
            .call("/peer/v1/hello", body.into(), HELLO_TIMEOUT)
            .await?;
        let hello = serde_json::from_slice::<Hello>(&answer)
            .map_err(|e| PeerError::Protocol(format!("hello: {e}")))?;
        // Recorded as a member before anything is exchanged with it.
        match self.admit(them.node_id, addr, None).await {
            Ok(()) => {}
            Err(membership::Refusal::Removed(version)) => {
                return Err(PeerError::PeerRemoved(format!(
                    "removed from the cluster (record {version}); waiting for it to rejoin"
                )))
            }
            Err(membership::Refusal::Unconfirmed) => {
                return Err(PeerError::PeerRemoved(
                    "removed from the cluster, as a peer said; waiting for the records".into(),
                ))
            }
            Err(membership::Refusal::Unavailable(e)) => {
                return Err(PeerError::Protocol(format!(
                    "cannot record it as a member: {e}"
                )))
            }
        }
        if hello.you.as_deref() == Some(wire::YOU_MEMBER) {
            self.membership.confirmed();
        }
        self.learn_listed(&hello.peers);
        Ok(them)
    }
}

/// The answer to a peer this node was told (in a 410) is removed, before its store knows: 503,
/// so the peer tries another node, which knows.
fn unconfirmed_response() -> Response<Body> {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "unconfirmed",
        "this node was told you were removed from the cluster and is getting the records back",
    )
}

/// The answer to a peer that was removed from the cluster: 410 `removed`, with the version of
/// the removal in `herd-removed` and every removal this node knows (`id:unix ms:1 if removed
/// now, 0 if back`) in `herd-removed-members`.
fn removed_response(shared: &Shared, version: crate::store::Version) -> Response<Body> {
    let mut r = error_response(
        StatusCode::GONE,
        "removed",
        "this node was removed from the cluster; it must forget what it holds from others and rejoin",
    );
    let removed: Vec<String> = shared
        .removals()
        .iter()
        .map(|(id, (at, now))| format!("{id:016x}:{at}:{}", u8::from(*now)))
        .collect();
    for (name, value) in [
        (wire::H_REMOVED, version.to_string()),
        (wire::H_REMOVED_MEMBERS, removed.join(",")),
    ] {
        if let Ok(v) = http::HeaderValue::from_str(&value) {
            r.headers_mut().insert(name, v);
        }
    }
    r
}

/// A plugin's component file, asked for by its sha256 (a peer saw a manifest it cannot load).
async fn plugin_file(shared: &Shared, body: &[u8]) -> Response<Body> {
    let sha = String::from_utf8_lossy(body).trim().to_owned();
    if crate::plugin::manifest::check_sha256(&sha).is_err() {
        return error_response(StatusCode::BAD_REQUEST, "bad_request", "expected a sha256");
    }
    let path = crate::plugin::blob_file(&shared.s.data_dir.join("plugins"), &sha);
    // A damaged copy is not handed on: the peer asks another.
    let read = tokio::task::spawn_blocking(move || crate::plugin::blobs::read(&path, &sha)).await;
    match read {
        Ok(Ok(bytes)) => Response::new(Body::full(Bytes::from(bytes))),
        Ok(Err(why)) => error_response(StatusCode::NOT_FOUND, "not_found", &why),
        Err(e) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

impl crate::plugin::Fetch for Cluster {
    fn fetch(
        &self,
        sha256: String,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Vec<u8>, crate::plugin::Error>> + Send>,
    > {
        let shared = self.shared.clone();
        Box::pin(async move {
            let mut errors = Vec::new();
            for (id, addr) in shared.members.alive() {
                match shared
                    .client(addr)
                    .call(
                        "/peer/v1/plugin-file",
                        sha256.clone().into(),
                        PLUGIN_FILE_TIMEOUT,
                    )
                    .await
                {
                    Ok((_, bytes)) => {
                        tracing::info!(peer = %format!("{id:016x}"), sha256, bytes = bytes.len(), "plugin file fetched");
                        return Ok(bytes.to_vec());
                    }
                    Err(e) => errors.push(format!("{id:016x}: {e}")),
                }
            }
            Err(crate::plugin::Error::Fetch(if errors.is_empty() {
                format!(
                    "its file (sha256 {sha256}) is not on this node and no peer is alive to ask"
                )
            } else {
                format!(
                    "its file (sha256 {sha256}) is on no live peer ({})",
                    errors.join("; ")
                )
            }))
        })
    }
}

/// How long fetching one plugin file from a peer may take.
const PLUGIN_FILE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Answers one peer request (identity already checked).
async fn handle(
    shared: Arc<Shared>,
    them: Stated,
    from: SocketAddr,
    method: Method,
    path: String,
    body: Bytes,
) -> Response<Body> {
    if method != Method::POST {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "peer routes take POST",
        );
    }
    let ok = |body: Vec<u8>| Response::new(Body::full(Bytes::from(body)));
    // A removed node is heard only when it says hello (and rejoins, if it reset itself).
    if path != "/peer/v1/hello" {
        let m = shared.member(them.node_id);
        if let Some(version) = m.removed() {
            return removed_response(&shared, version);
        }
        if shared
            .membership
            .told_removed(them.node_id, m.removal.is_some())
        {
            return unconfirmed_response();
        }
    }
    match path.as_str() {
        "/peer/v1/hello" => {
            let hello: Hello = match serde_json::from_slice(&body) {
                Ok(h) => h,
                Err(e) => {
                    return error_response(StatusCode::BAD_REQUEST, "bad_request", &e.to_string())
                }
            };
            let me = &shared.s.me;
            let addr = SocketAddr::new(from.ip(), hello.peer_port);
            let rejoin = hello.rejoin.as_deref().and_then(|v| v.parse().ok());
            if hello.you.as_deref() == Some(wire::YOU_MEMBER) {
                shared.membership.confirmed();
            }
            match shared.admit(them.node_id, addr, rejoin).await {
                Ok(()) => {}
                Err(membership::Refusal::Removed(version)) => {
                    return removed_response(&shared, version)
                }
                Err(membership::Refusal::Unconfirmed) => return unconfirmed_response(),
                Err(membership::Refusal::Unavailable(e)) => {
                    return error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        &format!("cannot record the sender as a member: {e}"),
                    )
                }
            }
            shared
                .members
                .learn(them.node_id, addr, Source::Inbound, &me.cluster, &me.env);
            shared.contact(them.node_id);
            shared.learn_listed(&hello.peers);
            ok(serde_json::to_vec(&shared.hello(Some(them.node_id))).expect("hello serialises"))
        }
        "/peer/v1/push" => {
            let regs = match digest::decode_registers(&body) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(peer = %format!("{:016x}", them.node_id), error = %e, "refused a push");
                    return error_response(StatusCode::BAD_REQUEST, "bad_request", &e.to_string());
                }
            };
            match shared.db.merge(regs).await {
                Ok(merged) => {
                    shared
                        .stats
                        .merged_registers
                        .fetch_add(merged.applied as u64, std::sync::atomic::Ordering::Relaxed);
                    if shared.members.get(them.node_id).is_some() {
                        shared.contact(them.node_id);
                    }
                    ok(serde_json::to_vec(&wire::PushAnswer::from(merged)).expect("serialises"))
                }
                Err(e) => error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    &e.to_string(),
                ),
            }
        }
        "/peer/v1/digest" => repair::digest_answer(&shared, them.node_id, &body).await,
        "/peer/v1/collected" => {
            let told = match serde_json::from_slice::<wire::Collected>(&body) {
                Ok(c) => c.registers(),
                Err(e) => {
                    return error_response(StatusCode::BAD_REQUEST, "bad_request", &e.to_string())
                }
            };
            match shared.db.collect_told(told).await {
                Ok(n) => ok(format!("{{\"collected\":{n}}}").into_bytes()),
                Err(e) => error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    &e.to_string(),
                ),
            }
        }
        "/peer/v1/plugin-file" => plugin_file(&shared, &body).await,
        _ => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no such peer endpoint {path}"),
        ),
    }
}
