//! The peer port's transport: an HTTP/1.1 server behind mutual TLS (a client certificate from
//! the cluster CA is required before any byte of HTTP), and the client one node uses to call
//! another (a few keep-alive connections per peer).
//!
//! Every request and every response carries the sender's identity (`herd-node`,
//! `herd-cluster`, `herd-env`, `herd-proto`) and clock (`herd-time`); each side checks the
//! other's and refuses a different cluster or environment (403 `wrong_cluster`), so two
//! clusters never exchange data even when they share a secret by mistake, and a clock off by
//! more than `max_clock_offset` (409 `clock_offset`, see `clocks.rs`). Routes and their meaning
//! live in `cluster.rs`.

use super::clocks::{self, Clocks};
use super::trust::{NodeIdentity, PEER_SERVER_NAME};
use super::wire::{H_CLUSTER, H_ENV, H_NODE, H_PROTO, H_TIME, PROTO};
use crate::clock::now_ms;
use crate::transport::pool::{self, Dial, Pool};
use crate::transport::server::Limits;
use crate::transport::{error_response, Body};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use rustls::pki_types::ServerName;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Time for a peer's TCP connect and TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle connections kept per peer.
const MAX_IDLE: usize = 4;
/// Most simultaneous inbound peer connections.
const MAX_PEER_CONNECTIONS: usize = 256;
/// Time a peer may take for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a peer may take for a request's headers, and keep an idle connection open.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Time an answer's write may make no progress (a peer that stopped reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest round trip whose answer's clock is measured (`clocks.rs`): its error is at most
/// half of it.
const MEASURE_ROUND_TRIP_MS: u64 = 2_000;

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("tls handshake failed: {0}")]
    Tls(String),
    #[error("http exchange failed: {0}")]
    Http(String),
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The peer is of another cluster or environment (or states no identity).
    #[error("{0}")]
    Identity(String),
    /// The peer's answer does not follow the protocol.
    #[error("bad answer: {0}")]
    Protocol(String),
    /// The peer's clock is off by more than `max_clock_offset` (measured by either side).
    #[error("{why}")]
    Clock { node: u64, why: String },
    /// The peer was removed from the cluster and has not rejoined: nothing is exchanged with
    /// it until it says hello having reset itself.
    #[error("{0}")]
    PeerRemoved(String),
    /// The peer holds this node's removal from the cluster (its version).
    #[error("removed from the cluster: {why}")]
    Removed {
        node: u64,
        version: crate::store::Version,
        /// Every removal the peer knows: (node, when it was written, Unix ms, removed now).
        removals: Vec<(u64, u64, bool)>,
        why: String,
    },
    #[error("peer answered {status}: {message}")]
    Status { status: StatusCode, message: String },
}

/// The identity another node stated in its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stated {
    pub node_id: u64,
    pub cluster: String,
    pub env: String,
    pub proto: u32,
    /// Its clock when it sent the message, if it said.
    pub time_ms: Option<u64>,
}

/// Reads the identity headers; `None` if any is missing or malformed.
pub fn stated(h: &HeaderMap) -> Option<Stated> {
    let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
    Some(Stated {
        node_id: u64::from_str_radix(get(H_NODE)?, 16).ok()?,
        cluster: get(H_CLUSTER)?.to_owned(),
        env: get(H_ENV)?.to_owned(),
        proto: get(H_PROTO)?.parse().ok()?,
        time_ms: get(H_TIME).and_then(|t| t.parse().ok()),
    })
}

/// Why `them` may not exchange data with `me`, if it may not.
pub fn mismatch(me: &NodeIdentity, them: &Stated) -> Option<String> {
    if them.cluster != me.cluster {
        Some(format!(
            "node {:016x} is in cluster {:?}, this node in {:?}",
            them.node_id, them.cluster, me.cluster
        ))
    } else if them.env != me.env {
        Some(format!(
            "node {:016x} is in environment {:?}, this node in {:?}",
            them.node_id, them.env, me.env
        ))
    } else if them.proto != PROTO {
        Some(format!(
            "node {:016x} speaks peer protocol {}, this node {PROTO}",
            them.node_id, them.proto
        ))
    } else {
        None
    }
}

/// Adds this node's identity headers.
pub fn state_identity(me: &NodeIdentity, h: &mut HeaderMap) {
    let v = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("invalid"));
    h.insert(H_NODE, v(&format!("{:016x}", me.node_id)));
    h.insert(H_CLUSTER, v(&me.cluster));
    h.insert(H_ENV, v(&me.env));
    h.insert(H_PROTO, v(&PROTO.to_string()));
    h.insert(H_TIME, v(&now_ms().to_string()));
}

/// What a peer's message must pass besides TLS: this node's identity (the same cluster and
/// environment) and clock (within `max_clock_offset`).
pub struct Gate {
    pub me: NodeIdentity,
    pub clocks: Arc<Clocks>,
}

/// Serves the peer port until `cancel` fires. `handle` answers one request whose sender's
/// identity and clock have passed `gate`; `max_body` bounds request bodies.
pub async fn serve<H, F>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    gate: Gate,
    max_body: usize,
    handle: H,
    cancel: CancellationToken,
    tracker: TaskTracker,
) where
    H: Fn(Stated, SocketAddr, Method, String, Bytes) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let (me, clocks) = (Arc::new(gate.me), gate.clocks);
    let limits = Limits {
        max_connections: MAX_PEER_CONNECTIONS,
        max_per_client: MAX_PEER_CONNECTIONS / 4,
        handshake: HANDSHAKE_TIMEOUT,
        headers: HEADER_TIMEOUT,
        write: WRITE_TIMEOUT,
    };
    let make = |from: SocketAddr, overloaded: bool| {
        let (me, clocks, handle) = (me.clone(), clocks.clone(), handle.clone());
        let service = move |req: Request<hyper::body::Incoming>| {
            let (me, clocks, handle) = (me.clone(), clocks.clone(), handle.clone());
            async move {
                let mut resp = if overloaded {
                    error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "busy",
                        "the peer port serves as many connections as it may",
                    )
                } else {
                    route(&me, &clocks, from, max_body, handle, req).await
                };
                state_identity(&me, resp.headers_mut());
                resp
            }
        };
        (service, ())
    };
    crate::transport::server::serve("peer port", listener, tls, limits, make, cancel, tracker)
        .await;
}

async fn route<H, F>(
    me: &NodeIdentity,
    clocks: &Clocks,
    from: SocketAddr,
    max_body: usize,
    handle: H,
    req: Request<hyper::body::Incoming>,
) -> Response<Body>
where
    H: Fn(Stated, SocketAddr, Method, String, Bytes) -> F,
    F: Future<Output = Response<Body>>,
{
    let Some(them) = stated(req.headers()) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "no_identity",
            "peer requests must state herd-node, herd-cluster, herd-env and herd-proto",
        );
    };
    if let Some(why) = mismatch(me, &them) {
        tracing::warn!(%from, "refused a peer request: {why}");
        return error_response(StatusCode::FORBIDDEN, "wrong_cluster", &why);
    }
    if let Some(t) = them.time_ms {
        let now = now_ms();
        if let Err(why) = clocks.check(them.node_id, clocks::offset_ms(t, now, now), now) {
            return error_response(StatusCode::CONFLICT, "clock_offset", &why);
        }
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let body = match Limited::new(req.into_body(), max_body).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!("peer request body: {e}"),
            )
        }
    };
    handle(them, from, method, path, body).await
}

/// Calls one peer address; keeps a few connections open between calls.
pub struct PeerClient {
    addr: SocketAddr,
    me: NodeIdentity,
    clocks: Arc<Clocks>,
    pool: Pool,
}

impl PeerClient {
    /// A client of the peer at `addr`; its connections' tasks run on `tasks`.
    pub fn new(
        addr: SocketAddr,
        me: NodeIdentity,
        clocks: Arc<Clocks>,
        tls: Arc<rustls::ClientConfig>,
        tasks: pool::Tasks,
    ) -> PeerClient {
        let dial = Dial {
            target: pool::Target::Addr(addr),
            server_name: ServerName::try_from(PEER_SERVER_NAME).expect("a valid DNS name"),
            tls,
            connect_timeout: CONNECT_TIMEOUT,
        };
        PeerClient {
            addr,
            me,
            clocks,
            pool: Pool::new(dial, MAX_IDLE, tasks),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends `body` to `path` (POST) and returns the peer's stated identity and its answer.
    /// Any status but 200 is an error; a different cluster or environment in the answer too.
    pub async fn call(
        &self,
        path: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(Stated, Bytes), PeerError> {
        tokio::time::timeout(timeout, self.call_within(path, body))
            .await
            .map_err(|_| PeerError::Timeout(timeout))?
    }

    async fn call_within(&self, path: &str, body: Bytes) -> Result<(Stated, Bytes), PeerError> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        // The authority only keys the pool: every connection goes to `addr`.
        *req.uri_mut() = format!("https://{}{path}", self.addr)
            .parse()
            .map_err(|_| PeerError::Status {
                status: StatusCode::BAD_REQUEST,
                message: format!("bad peer path {path}"),
            })?;
        req.headers_mut().insert(
            http::header::HOST,
            HeaderValue::from_static(PEER_SERVER_NAME),
        );
        state_identity(&self.me, req.headers_mut());
        let sent = now_ms();
        let resp = self.pool.send(req).await.map_err(|e| match e {
            pool::Error::Connect(m) => PeerError::Connect(m),
            pool::Error::Tls(m) => PeerError::Tls(m),
            pool::Error::Timeout(t) => PeerError::Timeout(t),
            pool::Error::Http(m) => PeerError::Http(m),
        })?;
        // The answer's clock was read before its headers were sent: the round trip ends here.
        let received = now_ms();
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| PeerError::Http(pool::describe_chain(&e)))?
            .to_bytes();
        let Some(them) = stated(&parts.headers) else {
            return Err(PeerError::Identity(format!(
                "{} answered without stating its identity (status {})",
                self.addr, parts.status
            )));
        };
        if let Some(why) = mismatch(&self.me, &them) {
            return Err(PeerError::Identity(why));
        }
        // Measured here too, whatever the status: a refusal is answered with the clock that
        // caused it, and the answer of a peer whose clock is off is dropped.
        // A slow round trip (a connection being set up, a long answer) says little of the
        // offset: not measured then.
        let quick = received.saturating_sub(sent) <= MEASURE_ROUND_TRIP_MS;
        if let (Some(t), true) = (them.time_ms, quick) {
            let offset = clocks::offset_ms(t, sent, received);
            if let Err(why) = self.clocks.check(them.node_id, offset, received) {
                let node = them.node_id;
                return Err(PeerError::Clock { node, why });
            }
        }
        if parts.status != StatusCode::OK {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
            if parts.status == StatusCode::FORBIDDEN {
                return Err(PeerError::Identity(message));
            }
            let removal = parts
                .headers
                .get(super::wire::H_REMOVED)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            if let (StatusCode::GONE, Some(version)) = (parts.status, removal) {
                let removals = parts
                    .headers
                    .get(super::wire::H_REMOVED_MEMBERS)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .split(',')
                    .filter_map(|e| {
                        let mut f = e.trim().split(':');
                        let id = u64::from_str_radix(f.next()?, 16).ok()?;
                        let at = f.next()?.parse().ok()?;
                        Some((id, at, f.next() != Some("0")))
                    })
                    .collect();
                return Err(PeerError::Removed {
                    node: them.node_id,
                    version,
                    removals,
                    why: message,
                });
            }
            if parts.status == StatusCode::CONFLICT {
                let node = them.node_id;
                return Err(PeerError::Clock { node, why: message });
            }
            return Err(PeerError::Status {
                status: parts.status,
                message,
            });
        }
        Ok((them, body))
    }
}
