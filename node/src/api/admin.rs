//! Node endpoints: `/v1/health`, `/v1/status`, `/metrics`, and token management `/v1/tokens`.

use super::{
    json_response,
    metrics::{counter, gauge},
    ApiError, App, Body, Result,
};
use crate::auth::{self, Grant, Role};
use crate::config::Config;
use crate::db::Db;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

/// `/v1/health` and `/v1/readyz`: 200 while the node serves reads and writes; 503 with the
/// reason once its storage stopped taking writes (reads and watches go on from memory), or
/// while its clock is ahead of its peers' and it refuses to stamp writes.
pub fn health(app: &App) -> Response<Body> {
    match app.db.storage_stop() {
        None => match app.db.clock_ahead() {
            None => json_response(StatusCode::OK, r#"{"status":"ok"}"#),
            Some(why) => {
                let body = json!({"status": "failing", "reason": format!("clock: {why}")});
                json_response(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
            }
        },
        Some(stop) => {
            let body = json!({
                "status": "failing",
                "reason": format!("storage: {}", stop.why),
                "storage": storage_value(&app.db),
            });
            json_response(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
        }
    }
}

/// `/v1/livez`: 200 while the process answers at all. A node whose storage failed is alive
/// (restarting it is for an operator who has looked at the disk, not for a supervisor).
pub fn live() -> Response<Body> {
    json_response(StatusCode::OK, r#"{"status":"ok"}"#)
}

/// The storage's state, for status and health.
fn storage_value(db: &Db) -> serde_json::Value {
    match db.storage_stop() {
        None => json!({"state": "ok"}),
        Some(stop) => json!({
            "state": "failed",
            "cause": stop.cause.as_str(),
            "reason": stop.why,
            "since": stop.at_ms,
            "writes": if stop.resumable {
                "refused until the disk has room again (8 MiB free), then taken again by themselves; reads and watches are served from memory"
            } else {
                "refused until the node restarts (reads and watches are served from memory)"
            },
        }),
    }
}

/// The cluster view: this node, its peers (state, last seen, replication lag) and its seeds.
/// A node running alone lists no peers.
pub fn members(app: &App) -> Response<Body> {
    let body = match &app.cluster {
        Some(c) => c.members_view(),
        None => json!({
            "self": {"node_id": format!("{:016x}", app.db.node_id()), "cluster": app.config.cluster.name, "env": app.config.cluster.env, "peer_port": null},
            "members": [],
            "seeds": [],
            "clustering": "off: no cluster secret (see `herd cluster init`)",
        }),
    };
    json_response(StatusCode::OK, body.to_string())
}

/// `DELETE /v1/members/{id}`: removes a member from the cluster (see
/// `cluster::membership`).
pub async fn remove_member(app: &App, id: &str, force: bool) -> Result<Response<Body>> {
    use crate::cluster::removal::RemoveError;
    let Some(c) = &app.cluster else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_clustered",
            "this node runs alone (no cluster secret): it has no members to remove",
        ));
    };
    match c.remove_member(id, force).await {
        Ok(v) => Ok(json_response(StatusCode::OK, v.to_string())),
        Err(RemoveError::Db(e)) => Err(e.into()),
        Err(e) => {
            let (status, code) = match &e {
                RemoveError::BadId(_) | RemoveError::Ambiguous(..) => {
                    (StatusCode::BAD_REQUEST, "bad_request")
                }
                RemoveError::Unknown(_) => (StatusCode::NOT_FOUND, "not_found"),
                RemoveError::Itself => (StatusCode::CONFLICT, "is_self"),
                RemoveError::Already(..) => (StatusCode::CONFLICT, "already_removed"),
                RemoveError::Alive(_) => (StatusCode::CONFLICT, "member_alive"),
                RemoveError::Db(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            };
            Err(ApiError::new(status, code, e.to_string()))
        }
    }
}

pub fn status(app: &App) -> Response<Body> {
    let mut body = status_value(&app.db, &app.config, app.started);
    body["plugins"] = app.plugins.status();
    json_response(StatusCode::OK, body.to_string())
}

/// The node's status document (`GET /v1/status`, and `/.herd/status` in the file view).
pub fn status_value(db: &Db, c: &Config, started: Instant) -> serde_json::Value {
    let (revision, registers, tombstones, log_floor, log_events, log_bytes, root) = {
        let st = db.read();
        (
            st.revision,
            st.store.len(),
            st.store.tombstone_count(),
            st.log.floor(),
            st.log.len(),
            st.log.bytes(),
            st.store.digest().root(),
        )
    };
    json!({
        "node_id": format!("{:016x}", db.node_id()),
        "version": env!("CARGO_PKG_VERSION"),
        "revision": revision,
        "registers": registers,
        "tombstones": tombstones,
        "change_log": {"oldest_resumable_revision": log_floor, "events": log_events, "bytes": log_bytes},
        // Equal on two nodes exactly when they hold the same registers (anti-entropy's root).
        "digest": {"registers": root.count, "hash": format!("{:016x}", root.hash)},
        "uptime_seconds": started.elapsed().as_secs(),
        "storage": storage_value(db),
        "clock": {"now_ms": crate::clock::now_ms(), "refusing_writes": db.clock_ahead()},
        "api_addr": c.api.addr.to_string(),
        "data_dir": c.data_dir.display().to_string(),
        "limits": {
            "max_value_bytes": c.api.max_value_bytes,
            "max_batch_bytes": c.api.max_batch_bytes,
            "max_batch_ops": c.api.max_batch_ops,
            "max_connections": c.api.max_connections,
            "max_watchers": c.api.max_watchers,
        },
    })
}

pub fn metrics(app: &App) -> Response<Body> {
    let mut out = String::with_capacity(4096);
    app.metrics.render(&mut out);
    {
        let st = app.db.read();
        gauge(
            &mut out,
            "herd_revision",
            "The node's newest applied revision.",
            st.revision,
        );
        gauge(
            &mut out,
            "herd_registers",
            "Registers in the store (values, directories, tombstones).",
            st.store.len() as u64,
        );
        gauge(
            &mut out,
            "herd_tombstones",
            "Deletions and expiries kept for the grace period.",
            st.store.tombstone_count() as u64,
        );
    }
    gauge(
        &mut out,
        "herd_storage_writable",
        "1 while the storage takes writes; 0 while it refuses them after a failed log write or sync (see /v1/status).",
        u64::from(app.db.storage_stop().is_none()),
    );
    let w = app.db.stats();
    use std::sync::atomic::Ordering::Relaxed;
    counter(
        &mut out,
        "herd_commits_total",
        "Synced storage commits (each serves a group of writes).",
        w.commits.load(Relaxed),
    );
    counter(
        &mut out,
        "herd_committed_writes_total",
        "Write requests acknowledged by those commits.",
        w.committed_requests.load(Relaxed),
    );
    let secs = w.commit_micros.load(Relaxed) as f64 / 1e6;
    out.push_str(&format!(
        "# HELP herd_commit_seconds_total Time spent in synced storage commits.\n# TYPE herd_commit_seconds_total counter\nherd_commit_seconds_total {secs}\n"
    ));
    if let Some(c) = &app.cluster {
        let s = c.stats();
        for (name, help, v) in [
            (
                "herd_peer_pushes_total",
                "Pushes of local writes acknowledged by peers.",
                &s.pushes,
            ),
            (
                "herd_peer_pushed_registers_total",
                "Registers in those pushes.",
                &s.pushed_registers,
            ),
            (
                "herd_peer_push_bytes_total",
                "Bytes of those pushes' bodies.",
                &s.push_bytes,
            ),
            (
                "herd_anti_entropy_rounds_total",
                "Anti-entropy rounds this node started.",
                &s.digest_rounds,
            ),
            (
                "herd_anti_entropy_bytes_total",
                "Bytes of this node's anti-entropy rounds: requests, replies and repair pushes.",
                &s.digest_bytes,
            ),
            (
                "herd_merged_registers_total",
                "Registers from peers (pushes and repairs) that changed this node's store.",
                &s.merged_registers,
            ),
        ] {
            counter(&mut out, name, help, v.load(Relaxed));
        }
    }
    gauge(
        &mut out,
        "herd_uptime_seconds",
        "Seconds since the node started.",
        app.started.elapsed().as_secs(),
    );
    let mut r = Response::new(Body::full(out.into()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    role: Role,
    #[serde(default)]
    prefix: Option<String>,
}

/// `/v1/tokens` (rest = "") and `/v1/tokens/{name}`; the caller checked the admin role. A
/// token sees, creates and revokes only the tokens it manages (`auth::Grant::manages`).
pub async fn tokens(
    app: &Arc<App>,
    grant: &Grant,
    rest: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    match (req.method().clone(), rest) {
        (Method::GET, "") => {
            let list: Vec<_> = auth::list_managed(&app.db, grant)
                .into_iter()
                .map(|(name, r)| json!({"name": name, "role": r.role, "prefix": r.prefix, "created": r.created}))
                .collect();
            Ok(json_response(
                StatusCode::OK,
                json!({ "tokens": list }).to_string(),
            ))
        }
        (Method::POST, "") => {
            let body = Limited::new(req.into_body(), 64 * 1024)
                .collect()
                .await
                .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?
                .to_bytes();
            let v = crate::store::value::parse(&body)?;
            let t: NewToken = serde_json::from_value(v).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_json",
                    format!("not a token request: {e}"),
                )
            })?;
            let prefix = t.prefix.unwrap_or_else(|| "/".into());
            let secret =
                auth::create(&app.db, &app.tokens, grant, &t.name, t.role, &prefix).await?;
            let prefix = crate::store::Path::parse(&prefix)
                .map(|p| p.to_string())
                .unwrap_or(prefix);
            let body = json!({"name": t.name, "role": t.role, "prefix": prefix, "token": secret});
            Ok(json_response(StatusCode::CREATED, body.to_string()))
        }
        (Method::DELETE, name) if !name.is_empty() => {
            auth::revoke(&app.db, &app.tokens, grant, name).await?;
            Ok(json_response(
                StatusCode::OK,
                json!({ "revoked": name }).to_string(),
            ))
        }
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET or POST /v1/tokens, DELETE /v1/tokens/{name}",
        )),
    }
}
