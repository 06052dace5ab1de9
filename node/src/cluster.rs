//! What makes nodes one cluster: trust between peers, the peer port, membership, discovery,
//! push replication and anti-entropy.
//!
//! - `trust`: the cluster secret, the cluster CA every node derives from it, node
//!   certificates, the mutual-TLS configurations of the peer port.
//! - `peer`: the peer port's HTTP server and client; both check the other side's stated
//!   cluster and environment on every exchange.
//! - `wire`: identity headers, the hello document, the binary encoding of register batches.
//! - `members`: the membership table (alive / suspect / dead / refused, backoff).
//! - `mdns`: discovery on the local network.
//! - this file: the tasks. A prober says hello to seeds and known peers (learning peers from
//!   their answers) and keeps the table current; one push task per live peer sends the
//!   registers of every local write as soon as it is durable (a slow peer lags on its own and
//!   is left to anti-entropy); an anti-entropy round with a random live peer every interval
//!   compares digests and exchanges only the registers that differ.
//!
//! Peer routes (all `POST`, bodies as in `wire` and `store::digest`):
//! `/peer/v1/hello` (JSON [`Hello`] both ways), `/peer/v1/push` (a register batch; answers
//! `{"applied": n}`), `/peer/v1/digest` (one anti-entropy request; answers its reply).
//!
//! Invariant: registers from peers enter the store only through `Db::merge` (the store's one
//! merge rule), and only from a peer that proved a certificate of the cluster CA and stated
//! our cluster and environment. Only local writes are pushed; anti-entropy carries the rest.

pub mod history;
pub mod mdns;
pub mod members;
pub mod peer;
pub mod trust;
pub mod wire;

use crate::db::Db;
use crate::store::digest::{self, Reply, Request, Session};
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use members::{Due, Members, Source};
use peer::{error_response, PeerClient, PeerError, Stated};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use trust::{NodeIdentity, PeerTls};
use wire::{Hello, PeerInfo};

/// How often the prober looks for seeds and peers that are due.
const PROBE_TICK: Duration = Duration::from_millis(200);
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
const DIGEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of registers in one push.
const PUSH_BYTES: usize = 4 << 20;
/// Most bytes of registers in one anti-entropy reply or push.
const DIGEST_BUDGET: usize = digest::DEFAULT_BUDGET;

/// What the cluster tasks need to know besides the database.
#[derive(Debug, Clone)]
pub struct Settings {
    pub me: NodeIdentity,
    pub api_port: u16,
    pub peer_port: u16,
    pub seeds: Vec<String>,
    pub anti_entropy_interval: Duration,
    pub retry_cap: Duration,
    pub push: bool,
    /// Largest request body the peer port accepts.
    pub max_body: usize,
    /// The data directory (for `cluster.contact`).
    pub data_dir: std::path::PathBuf,
    /// The tombstone grace period: a node away from its cluster for longer resyncs in full.
    pub tombstone_grace: Duration,
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
    stats: Stats,
    /// One client per peer address.
    clients: Mutex<HashMap<SocketAddr, Arc<PeerClient>>>,
    /// Peers with a running push task.
    pushing: Mutex<HashSet<u64>>,
    /// Since when this node runs without a long gap; stale after one.
    history: history::History,
    /// A stale node's resync is under way.
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
            history: history::History::open(&s.data_dir, s.tombstone_grace, crate::db::now_ms()),
            resyncing: false.into(),
            members: Members::new(s.me.node_id, &s.seeds, s.retry_cap),
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
            shared.s.me.clone(),
            shared.s.max_body,
            handler,
            cancel.clone(),
            tracker.clone(),
        ));
        tracker.spawn(probe_loop(shared.clone()));
        tracker.spawn(anti_entropy_loop(shared.clone()));
        Cluster { shared }
    }

    /// The members view (`GET /v1/members`).
    pub fn members_view(&self) -> serde_json::Value {
        let mut v = self.shared.members.view();
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
                    self.tls.client.clone(),
                ))
            })
            .clone()
    }

    fn hello(&self) -> Hello {
        Hello {
            peer_port: self.s.peer_port,
            api_port: self.s.api_port,
            history_ms: self.history.length_ms(crate::db::now_ms()),
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
            self.tracker.spawn(push_loop(shared, id));
        }
    }

    /// Records a failed exchange with `id`.
    fn failure(&self, id: u64, e: &PeerError) {
        if self.members.failure(id, &e.to_string()) {
            tracing::warn!(peer = %format!("{id:016x}"), error = %e, "peer is unreachable; retrying with backoff");
        } else {
            tracing::debug!(peer = %format!("{id:016x}"), error = %e, "peer exchange failed");
        }
    }

    /// Says hello to `addr`; returns who answered.
    async fn say_hello(self: &Arc<Self>, addr: SocketAddr) -> Result<Stated, PeerError> {
        let body = serde_json::to_vec(&self.hello()).expect("hello serialises");
        let (them, answer) = self
            .client(addr)
            .call("/peer/v1/hello", body.into(), HELLO_TIMEOUT)
            .await?;
        if let Ok(h) = serde_json::from_slice::<Hello>(&answer) {
            self.learn_listed(&h.peers);
            self.after_absence(&h);
        }
        Ok(them)
    }

    /// A stale node that meets a peer: resyncs in full if the peer's history is longer than
    /// the grace period (it may have collected tombstones this node never saw), else goes on.
    fn after_absence(self: &Arc<Self>, peer: &Hello) {
        use std::sync::atomic::Ordering::SeqCst;
        if !self.history.is_stale() || self.resyncing.swap(true, SeqCst) {
            return;
        }
        if u128::from(peer.history_ms) < self.s.tombstone_grace.as_millis() {
            tracing::info!("the first peer met after the long absence has no longer history; nothing to forget");
            self.history.resolved();
            self.resyncing.store(false, SeqCst);
            return;
        }
        let shared = self.clone();
        self.tracker.spawn(async move {
            match shared.db.reset().await {
                Ok(n) => {
                    tracing::warn!(forgotten = n, "forgot the registers held from before the long absence; resyncing in full from peers");
                    shared.history.resolved();
                }
                Err(e) => tracing::error!(error = %e, "cannot forget the registers from before the long absence"),
            }
            shared.resyncing.store(false, SeqCst);
        });
    }
}

/// Answers one peer request (identity already checked).
async fn handle(
    shared: Arc<Shared>,
    them: Stated,
    from: SocketAddr,
    method: Method,
    path: String,
    body: Bytes,
) -> Response<Full<Bytes>> {
    if method != Method::POST {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "peer routes take POST",
        );
    }
    let ok = |body: Vec<u8>| Response::new(Full::new(Bytes::from(body)));
    match path.as_str() {
        "/peer/v1/hello" => {
            let hello: Hello = match serde_json::from_slice(&body) {
                Ok(h) => h,
                Err(e) => {
                    return error_response(StatusCode::BAD_REQUEST, "bad_request", &e.to_string())
                }
            };
            let me = &shared.s.me;
            shared.members.learn(
                them.node_id,
                SocketAddr::new(from.ip(), hello.peer_port),
                Source::Inbound,
                &me.cluster,
                &me.env,
            );
            shared.contact(them.node_id);
            shared.learn_listed(&hello.peers);
            shared.after_absence(&hello);
            ok(serde_json::to_vec(&shared.hello()).expect("hello serialises"))
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
                Ok(n) => {
                    shared
                        .stats
                        .merged_registers
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    if shared.members.get(them.node_id).is_some() {
                        shared.contact(them.node_id);
                    }
                    ok(format!("{{\"applied\":{n}}}").into_bytes())
                }
                Err(e) => error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    &e.to_string(),
                ),
            }
        }
        "/peer/v1/digest" => digest_answer(&shared, &body).await,
        _ => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no such peer endpoint {path}"),
        ),
    }
}

/// Looks for seeds and peers that are due and probes each in its own task.
async fn probe_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(PROBE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        shared.history.tick(crate::db::now_ms());
        for due in shared.members.due() {
            let shared2 = shared.clone();
            shared.tracker.spawn(async move {
                tokio::select! {
                    _ = shared2.cancel.cancelled() => {}
                    _ = probe(&shared2, &due) => {}
                }
                shared2.members.probed(&due);
            });
        }
    }
}

async fn probe(shared: &Arc<Shared>, due: &Due) {
    match due {
        Due::Seed(target) => {
            let addrs: Vec<SocketAddr> = match tokio::net::lookup_host(target.as_str()).await {
                Ok(a) => a.collect(),
                Err(e) => {
                    shared
                        .members
                        .seed_result(target, Err(format!("cannot resolve: {e}")));
                    return;
                }
            };
            let mut last = String::from("resolved to no address");
            for addr in addrs {
                match shared.say_hello(addr).await {
                    Ok(them) if them.node_id == shared.s.me.node_id => {
                        shared.members.seed_result(target, Ok(them.node_id));
                        return;
                    }
                    Ok(them) => {
                        let me = &shared.s.me;
                        shared.members.learn(
                            them.node_id,
                            addr,
                            Source::Seed,
                            &me.cluster,
                            &me.env,
                        );
                        shared.contact(them.node_id);
                        shared.members.seed_result(target, Ok(them.node_id));
                        return;
                    }
                    Err(PeerError::Identity(why)) => {
                        tracing::warn!(seed = %target, "seed refused: {why}");
                        last = why;
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            shared.members.seed_result(target, Err(last));
        }
        Due::Peer(id, addr) => match shared.say_hello(*addr).await {
            Ok(them) if them.node_id == *id => shared.contact(*id),
            Ok(them) => {
                // Another node answers at that address now.
                shared.failure(
                    *id,
                    &PeerError::Identity(format!("{addr} is now node {:016x}", them.node_id)),
                );
                let me = &shared.s.me;
                shared
                    .members
                    .learn(them.node_id, *addr, Source::Peer, &me.cluster, &me.env);
            }
            Err(e) => shared.failure(*id, &e),
        },
    }
}

/// Pushes the registers of local writes to peer `id` while it is alive. Changes that pile up
/// while a push is in flight go together in the next one; if the peer fails or falls behind
/// the feed, what it missed is left to anti-entropy and the task ends.
async fn push_loop(shared: Arc<Shared>, id: u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut rx = shared.db.changes();
    let peer = format!("{id:016x}");
    'outer: loop {
        if !shared.members.is_alive(id) {
            break;
        }
        let first = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            r = rx.recv() => r,
            // Wake now and then to notice that the peer died.
            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
        };
        let mut batch = match first {
            Ok(c) => vec![c],
            Err(RecvError::Lagged(n)) => {
                tracing::debug!(%peer, missed = n, "push feed lagged; anti-entropy repairs");
                shared.members.with_peer(id, |p| p.needs_repair = true);
                continue;
            }
            Err(RecvError::Closed) => break,
        };
        let mut bytes: usize = batch[0]
            .iter()
            .map(|(k, r)| digest::register_len(k, r))
            .sum();
        while bytes < PUSH_BYTES {
            match rx.try_recv() {
                Ok(c) => {
                    bytes += c
                        .iter()
                        .map(|(k, r)| digest::register_len(k, r))
                        .sum::<usize>();
                    batch.push(c);
                }
                Err(TryRecvError::Lagged(_)) => {
                    shared.members.with_peer(id, |p| p.needs_repair = true);
                }
                Err(_) => break,
            }
        }
        if !shared.s.push {
            continue;
        }
        let n: usize = batch.iter().map(|c| c.len()).sum();
        let mut body = Vec::with_capacity(bytes + 8);
        digest::encode_register_iter(
            n,
            batch.iter().flat_map(|c| c.iter().map(|(k, r)| (&**k, r))),
            &mut body,
        );
        let since = Instant::now();
        shared
            .members
            .with_peer(id, |p| p.unacked_since = p.unacked_since.or(Some(since)));
        let client = match shared.members.get(id) {
            Some(p) => shared.client(p.addr),
            None => break,
        };
        let body_len = body.len();
        let result = tokio::select! {
            _ = shared.cancel.cancelled() => break 'outer,
            r = client.call("/peer/v1/push", body.into(), PUSH_TIMEOUT) => r,
        };
        match result {
            Ok(_) => {
                shared.stats.pushes.fetch_add(1, Relaxed);
                shared.stats.pushed_registers.fetch_add(n as u64, Relaxed);
                shared.stats.push_bytes.fetch_add(body_len as u64, Relaxed);
                shared.members.with_peer(id, |p| {
                    p.pushed += batch.len() as u64;
                    p.unacked_since = None;
                });
                shared.members.contact(id);
            }
            Err(e) => {
                shared.members.with_peer(id, |p| {
                    p.needs_repair = true;
                    p.unacked_since = None;
                });
                shared.failure(id, &e);
                break;
            }
        }
    }
    shared
        .pushing
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    tracing::debug!(%peer, "push task ended");
}

/// Every interval (with jitter), one anti-entropy round with a live peer: one that missed
/// pushes if there is one, else a random one.
async fn anti_entropy_loop(shared: Arc<Shared>) {
    loop {
        let base = shared.s.anti_entropy_interval;
        let jitter = base.mul_f64(random_unit() * 0.2);
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = tokio::time::sleep(base - base / 10 + jitter) => {}
        }
        let alive = shared.members.alive();
        if alive.is_empty() {
            continue;
        }
        let needy: Vec<(u64, SocketAddr)> = alive
            .iter()
            .copied()
            .filter(|(id, _)| shared.members.get(*id).is_some_and(|p| p.needs_repair))
            .collect();
        let pool = if needy.is_empty() { &alive } else { &needy };
        let (id, addr) = pool[(random_unit() * pool.len() as f64) as usize % pool.len()];
        if shared.history.is_stale() {
            continue;
        }
        let round = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            r = anti_entropy_round(&shared, id, addr) => r,
        };
        match round {
            Ok(equal) => {
                shared.members.contact(id);
                if equal {
                    shared.members.with_peer(id, |p| {
                        p.synced_at = Some(SystemTime::now());
                        p.needs_repair = false;
                    });
                }
            }
            Err(e) => shared.failure(id, &e),
        }
    }
}

/// A number in [0, 1) from the system random source.
fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Answers one anti-entropy request from the current store (off the async workers: a leaf
/// stage hashes every key).
async fn digest_answer(shared: &Arc<Shared>, body: &Bytes) -> Response<Full<Bytes>> {
    if shared.history.is_stale() {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "resyncing",
            "this node was away longer than the tombstone grace period and resyncs first",
        );
    }
    let req = match Request::decode(body) {
        Ok(r) => r,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    let db = shared.db.clone();
    let answered = tokio::task::spawn_blocking(move || {
        let st = db.read();
        digest::respond(&st.store, &req, DIGEST_BUDGET)
    })
    .await;
    match answered {
        Ok(Ok(reply)) => {
            let mut out = Vec::with_capacity(reply.encoded_len());
            reply.encode(&mut out);
            Response::new(Full::new(Bytes::from(out)))
        }
        Ok(Err(e)) => error_response(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
        Err(e) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

/// One anti-entropy round with peer `id` at `addr`: compares roots, descends to the buckets
/// that differ, merges what the peer has and we lack, pushes what we have and it lacks.
/// Returns whether the two stores were equal at the start.
async fn anti_entropy_round(
    shared: &Arc<Shared>,
    id: u64,
    addr: SocketAddr,
) -> Result<bool, PeerError> {
    use std::sync::atomic::Ordering::Relaxed;
    let salt = (random_unit() * (1u64 << 53) as f64) as u64 ^ id;
    let started = {
        let st = shared.db.read();
        Session::start(&st.store, salt, DIGEST_BUDGET, None)
    };
    let Some((mut session, mut req)) = started else {
        return Ok(true);
    };
    let my_root = shared.db.read().store.digest().root();
    let client = shared.client(addr);
    let mut first = true;
    let mut equal = false;
    shared.stats.digest_rounds.fetch_add(1, Relaxed);
    loop {
        let mut out = Vec::with_capacity(req.encoded_len());
        req.encode(&mut out);
        shared
            .stats
            .digest_bytes
            .fetch_add(out.len() as u64, Relaxed);
        let (_, answer) = client
            .call("/peer/v1/digest", out.into(), DIGEST_TIMEOUT)
            .await?;
        shared
            .stats
            .digest_bytes
            .fetch_add(answer.len() as u64, Relaxed);
        let reply = Reply::decode(&answer).map_err(|e| PeerError::Protocol(e.to_string()))?;
        if first {
            equal = matches!(&reply, Reply::Root(r) if *r == my_root);
            first = false;
        }
        let db = shared.db.clone();
        let (step, session_back) = tokio::task::spawn_blocking(move || {
            let st = db.read();
            let step = session.step(&st.store, reply);
            drop(st);
            (step, session)
        })
        .await
        .map_err(|e| PeerError::Protocol(e.to_string()))?;
        session = session_back;
        let step = step.map_err(|e| PeerError::Protocol(e.to_string()))?;
        if !step.merge.is_empty() {
            let n = shared.db.merge(step.merge).await.map_err(|e| {
                PeerError::Protocol(format!("cannot store what the peer sent: {e}"))
            })?;
            shared.stats.merged_registers.fetch_add(n as u64, Relaxed);
        }
        if !step.push.is_empty() {
            let mut out = Vec::with_capacity(digest::registers_len(&step.push));
            digest::encode_registers(&step.push, &mut out);
            shared
                .stats
                .digest_bytes
                .fetch_add(out.len() as u64, Relaxed);
            client
                .call("/peer/v1/push", out.into(), PUSH_TIMEOUT)
                .await?;
        }
        match step.next {
            Some(r) => req = r,
            None => break,
        }
    }
    tracing::debug!(peer = %format!("{id:016x}"), equal, "anti-entropy round done");
    Ok(equal)
}
