//! The HTTPS backend of `herd mount DIR --node URL`: every read and write is a REST call to the
//! node (`docs/api.md`), and the node's watch stream of `/` drives cache invalidation.
//!
//! Must not judge paths or values: the node does (a write is first sent with `?dry_run` when the
//! file view asks whether it would be accepted).

use std::time::Duration;

use bytes::Bytes;
use fuse_mount::{Backend, Change, ChangeSink, Child, Error, ErrorKind, Node, Op, Segments};
use http::{header, Method, StatusCode};
use serde_json::{json, Value};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::paths::{api_path, KV};
use crate::client::{self, Client, Response};
use crate::store::Path;

/// The limit assumed when the node's status does not say.
const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;
/// The longest wait between attempts to reopen the watch stream.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A node reached over HTTPS.
pub struct Remote {
    client: Client,
    runtime: Handle,
    cancel: CancellationToken,
    /// The watch task joins it, so whoever mounted can wait for it.
    tracker: TaskTracker,
    max_value_bytes: usize,
}

impl Remote {
    /// Connects and reads the node's limits; fails if the node cannot be reached or the token
    /// cannot read. The watch task runs on `runtime`, joins `tracker` and ends with `cancel`.
    pub fn connect(
        client: Client,
        runtime: Handle,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) -> Result<Remote, Error> {
        let mut remote = Remote {
            client,
            runtime,
            cancel,
            tracker,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
        };
        let status = remote.call(Method::GET, "/v1/status", None)?.json();
        if let Ok(status) = status {
            if let Some(max) = status["limits"]["max_value_bytes"].as_u64() {
                remote.max_value_bytes = max as usize;
            }
        }
        remote.call(Method::GET, "/v1/kv/?keys", None)?;
        Ok(remote)
    }

    /// One request; a non-2xx answer becomes the [`Error`] for its status.
    fn call(&self, method: Method, url: &str, body: Option<String>) -> Result<Response, Error> {
        let headers = match body {
            Some(_) => vec![(header::CONTENT_TYPE, "application/json".to_string())],
            None => Vec::new(),
        };
        let client = self.client.clone();
        let url = url.to_owned();
        self.runtime
            .block_on(async move {
                client
                    .request(method, &url, &headers, body.map(Bytes::from))
                    .await
            })
            .and_then(Response::error_for_status)
            .map_err(error)
    }
}

/// `/v1/kv/a/b` for `["a", "b"]`, with every segment percent-encoded.
fn kv_url(segs: &Segments, query: &str) -> String {
    format!("{}{query}", api_path(KV, &store_path(segs)))
}

/// `/a/b` for `["a", "b"]`, as batch ops name paths.
fn store_path(segs: &Segments) -> String {
    format!("/{}", segs.join("/"))
}

/// The wall-clock millis of an `ETag: "<millis>-<counter>-<node>"`, 0 if there is none.
fn etag_millis(resp: &Response) -> u64 {
    resp.headers
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_matches('"').split('-').next()?.parse().ok())
        .unwrap_or(0)
}

/// True if the answer is a derived key (computed by a plugin on the node, read-only).
fn derived(resp: &Response) -> bool {
    resp.headers
        .get("x-herd-derived")
        .is_some_and(|v| v.as_bytes() == b"true")
}

/// The file-view error for a client error.
fn error(e: client::Error) -> Error {
    let kind = match &e {
        client::Error::Status { status, code, .. } => match (*status, code.as_deref()) {
            (StatusCode::NOT_FOUND, _) => ErrorKind::NotFound,
            (StatusCode::PAYLOAD_TOO_LARGE, _) => ErrorKind::TooBig,
            (StatusCode::INSUFFICIENT_STORAGE, _) => ErrorKind::NoSpace,
            (_, Some("reserved_path" | "read_only")) => ErrorKind::ReadOnly,
            (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, _) => ErrorKind::Denied,
            (StatusCode::CONFLICT | StatusCode::PRECONDITION_FAILED, _) => ErrorKind::Conflict,
            (s, _) if s.is_client_error() => ErrorKind::Invalid,
            _ => ErrorKind::Unavailable,
        },
        _ => ErrorKind::Unavailable,
    };
    let message = match &e {
        client::Error::Status { message, .. } => message.clone(),
        other => other.to_string(),
    };
    Error::new(kind, message)
}

impl Backend for Remote {
    fn get(&self, segs: &Segments) -> Result<Option<Node>, Error> {
        match self.call(Method::GET, &kv_url(segs, "?keys"), None) {
            Ok(resp) => {
                return Ok(Some(Node::Dir {
                    mtime_ms: etag_millis(&resp),
                    read_only: derived(&resp),
                }))
            }
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(None),
            // A leaf: `?keys` answers 409 `not_a_directory`.
            Err(e) if e.kind == ErrorKind::Conflict => {}
            Err(e) => return Err(e),
        }
        match self.call(Method::GET, &kv_url(segs, ""), None) {
            Ok(resp) => {
                let value = resp.json().map_err(error)?;
                Ok(Some(Node::Leaf {
                    value,
                    mtime_ms: etag_millis(&resp),
                    read_only: derived(&resp),
                }))
            }
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn list(&self, segs: &Segments) -> Result<Vec<Child>, Error> {
        let resp = self.call(Method::GET, &kv_url(segs, "?keys"), None)?;
        let answer = resp.json().map_err(error)?;
        let keys = answer["keys"].as_array().cloned().unwrap_or_default();
        Ok(keys
            .iter()
            .filter_map(Value::as_str)
            .map(|k| match k.strip_suffix('/') {
                Some(name) => Child {
                    name: name.to_owned(),
                    is_dir: true,
                },
                None => Child {
                    name: k.to_owned(),
                    is_dir: false,
                },
            })
            .collect())
    }

    fn read(&self, segs: &Segments) -> Result<Option<Value>, Error> {
        match self.call(Method::GET, &kv_url(segs, ""), None) {
            Ok(resp) => resp.json().map(Some).map_err(error),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn check(&self, segs: &Segments, v: &Value) -> Result<(), Error> {
        self.call(Method::PUT, &kv_url(segs, "?dry_run"), Some(v.to_string()))
            .map(drop)
    }

    fn apply(&self, ops: Vec<Op>) -> Result<(), Error> {
        match ops.as_slice() {
            [Op::Put(segs, v)] => self
                .call(Method::PUT, &kv_url(segs, ""), Some(v.to_string()))
                .map(drop),
            [Op::Delete(segs)] => self.call(Method::DELETE, &kv_url(segs, ""), None).map(drop),
            _ => {
                let ops: Vec<Value> = ops
                    .iter()
                    .map(|op| match op {
                        Op::Put(segs, v) => {
                            json!({"op": "put", "path": store_path(segs), "value": v})
                        }
                        Op::Delete(segs) => json!({"op": "delete", "path": store_path(segs)}),
                    })
                    .collect();
                let body = json!({ "ops": ops }).to_string();
                self.call(Method::POST, "/v1/batch", Some(body)).map(drop)
            }
        }
    }

    fn subscribe(&self, sink: ChangeSink) {
        let client = self.client.clone();
        let cancel = self.cancel.clone();
        let feed = async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = follow(client, sink) => {}
            }
        };
        self.tracker.spawn_on(feed, &self.runtime);
    }

    fn status(&self) -> Value {
        match self.call(Method::GET, "/v1/status", None) {
            Ok(resp) => resp
                .json()
                .unwrap_or_else(|e| json!({ "error": e.to_string() })),
            Err(e) => json!({ "error": e.message }),
        }
    }

    fn max_value_bytes(&self) -> usize {
        self.max_value_bytes
    }
}

/// Follows the node's watch stream of `/` forever, reopening it after failures. A gap that
/// cannot be replayed (410 `compacted`, or a restart of the node) starts again from the node's
/// current revision and invalidates everything.
async fn follow(client: Client, sink: ChangeSink) {
    let mut since: Option<u64> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let rev = match since {
            Some(rev) => Ok(rev),
            None => current_revision(&client).await,
        };
        let opened = match rev {
            Ok(rev) => {
                if since.is_none() {
                    since = Some(rev);
                    sink(Change::All);
                }
                client.events(&format!("/v1/watch/?since={rev}"), &[]).await
            }
            Err(e) => Err(e),
        };
        match opened {
            Ok(mut stream) => {
                while let Some(Ok(event)) = stream.next().await {
                    backoff = Duration::from_millis(100);
                    let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                    if let Some(rev) = event.id.as_deref().and_then(|id| id.parse().ok()) {
                        since = Some(rev);
                    }
                    match data["path"].as_str().map(Path::parse) {
                        Some(Ok(p)) => sink(Change::Path(p.segments().map(String::from).collect())),
                        Some(Err(_)) => sink(Change::All),
                        None => {}
                    }
                }
            }
            Err(e) if e.code() == Some("compacted") => {
                since = None;
                continue;
            }
            Err(e) => tracing::warn!(error = %e, "watch stream unavailable; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The node's newest revision, from `/v1/status`.
async fn current_revision(client: &Client) -> Result<u64, client::Error> {
    let resp = client
        .request(Method::GET, "/v1/status", &[], None)
        .await?
        .error_for_status()?;
    Ok(resp.json()?["revision"].as_u64().unwrap_or(0))
}
