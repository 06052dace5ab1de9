//! `GET /v1/watch/{path}`: server-sent events from the change log and the live event feed.
//!
//! A watcher sees only what its token may read: an event at an ancestor of the watched path
//! that lies outside the token's prefix is cut to the watched path (the part of the value that
//! lands there, or a delete when nothing does). A stream ends with an `error` event as soon as
//! its token is revoked.
//!
//! The initial state of a watch (every leaf under the path, as events) takes memory until it is
//! sent: the node lets at most `watch_snapshot_bytes` of it wait to be sent at once. A watch
//! waits up to [`SNAPSHOT_WAIT`] for its share (503 `busy` after that) and gives it back event
//! by event as it sends; a watcher that stops reading is cut by the connection's write timeout.

use super::{authorize, query_param, ApiError, App, Body, Result};
use crate::auth::{Grant, Role};
use crate::db;
use crate::store::log::event_bytes;
use crate::store::path::key_contains;
use crate::store::{value, Event, EventKind, Path, INTERNAL};
use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Request, Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast::error::RecvError, mpsc, OwnedSemaphorePermit};

/// How often an idle stream sends a comment, so dead connections are noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a watch waits for room to send its initial state.
pub const SNAPSHOT_WAIT: Duration = Duration::from_secs(10);
/// The unit of `App::snapshots`: one permit is this many bytes.
pub const SNAPSHOT_UNIT: usize = 1024;
/// Events (or backlog chunks) handed to a connection and not yet taken by it: with the one
/// hyper is writing, this bounds what one connection holds beyond its socket's buffers.
const QUEUED_EVENTS: usize = 4;
/// The backlog (a replay or the initial state) is sent in chunks of about this many bytes, so
/// a slow watcher holds at most a few of them beyond its socket's buffers.
const BACKLOG_CHUNK: usize = 16 << 10;

pub async fn watch<B>(
    app: &Arc<App>,
    grant: &Grant,
    path: &Path,
    req: &Request<B>,
) -> Result<Response<Body>> {
    authorize(grant, Role::Read, path)?;
    let since = query_param(req.uri().query(), "since")
        .or_else(|| {
            req.headers()
                .get("last-event-id")
                .and_then(|v| v.to_str().ok())
        })
        .map(|s| {
            s.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("since: {s:?} is not a revision number"))
            })
        })
        .transpose()?;
    let slot = app
        .token_watchers
        .take(&grant.name, app.config.api.max_watchers_per_token)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_watchers",
                format!(
                    "token {:?} has {} watches open, the most one token may have",
                    grant.name, app.config.api.max_watchers_per_token
                ),
            )
        })?;
    let permit = app.watchers.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_watchers",
            format!(
                "the node serves at most {} watches",
                app.config.api.max_watchers
            ),
        )
    })?;
    let key: Box<str> = path.key().into();
    // A replay comes from the change log (bounded, shared); the current state is made anew.
    let room = match since {
        Some(_) => None,
        None => {
            let total = app.config.api.watch_snapshot_bytes.div_ceil(SNAPSHOT_UNIT);
            // The derived keys shown with the state count too (an estimate: they are taken
            // again once subscribed).
            let derived: usize = app
                .plugins
                .outputs()
                .leaves(path)
                .iter()
                .map(|(p, v)| p.key().len() + v.to_string().len())
                .sum();
            let units = (app.db.snapshot_bytes(&key) + derived)
                .div_ceil(SNAPSHOT_UNIT)
                .min(total);
            let wait = app.snapshots.clone().acquire_many_owned(units as u32);
            match tokio::time::timeout(SNAPSHOT_WAIT, wait).await {
                Ok(Ok(room)) => Some(room),
                _ => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "busy",
                        format!(
                            "the node is sending {} MiB of watches' initial state already \
                             (watch_snapshot_bytes); try again later",
                            app.config.api.watch_snapshot_bytes >> 20
                        ),
                    ))
                }
            }
        }
    };
    // The current state includes the derived keys (in the place of anything the store still
    // holds under their prefixes, as a read shows them), as they are at its revision.
    let outputs = app.plugins.outputs();
    let with_derived = |revision: u64, backlog: &mut Vec<Arc<Event>>| {
        let derived = outputs.leaves(path);
        if derived.is_empty() {
            return;
        }
        backlog.retain(|ev| !outputs.covers(&Path::from_key(&ev.key)));
        let first = backlog.len();
        for (i, (p, v)) in derived.into_iter().enumerate() {
            backlog.push(Arc::new(Event {
                revision,
                seq: (first + i) as u32,
                kind: EventKind::Put,
                key: p.key().into(),
                value: Some(v.to_string().into()),
                version: crate::store::Version::ZERO,
            }));
        }
    };
    let sub = app
        .db
        .subscribe_with(&key, since, with_derived)
        .map_err(|e| ApiError::new(StatusCode::GONE, "compacted", e.to_string()))?;
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUED_EVENTS);
    let app2 = app.clone();
    let grant = grant.clone();
    app.tracker.spawn(async move {
        let _permit = (permit, slot);
        app2.metrics.watcher_opened();
        stream(&app2, &grant, &key, sub, room, tx).await;
        app2.metrics.watcher_closed();
    });
    let mut resp = Response::new(Body::Stream(rx));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

fn visible_to(watched: &str, ev: &Event) -> bool {
    crate::store::path::key_related(watched, &ev.key)
        && (!watched.is_empty() || !crate::store::path::key_contains(INTERNAL, &ev.key))
}

/// `ev` as `grant` may see it while watching `watched` (an event already [`visible_to`] it):
/// as it is when the token may read the event's path; otherwise the event is at an ancestor of
/// the watched path, and is cut to the watched path.
fn cut(grant: &Grant, watched: &str, ev: &Arc<Event>) -> Arc<Event> {
    if key_contains(grant.prefix.key(), &ev.key) {
        return ev.clone();
    }
    let below = watched[ev.key.len()..].trim_start_matches('\0');
    let value = match (&ev.kind, &ev.value) {
        (EventKind::Put, Some(text)) => serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|mut v| {
                for seg in below.split('\0') {
                    v = v.as_object_mut()?.remove(seg)?;
                }
                Some(value::to_text(&v))
            }),
        _ => None,
    };
    let kind = match (&ev.kind, &value) {
        (EventKind::Put, None) => EventKind::Delete,
        (kind, _) => *kind,
    };
    Arc::new(Event {
        kind,
        key: watched.into(),
        value,
        ..**ev
    })
}

/// The error event that ends a stream.
fn error_frame(code: &str, message: &str) -> Bytes {
    let data = serde_json::json!({"type": "error", "code": code, "message": message});
    Bytes::from(format!("event: error\ndata: {data}\n\n"))
}

fn frame(ev: &Event) -> Bytes {
    Bytes::from(format!(
        "event: {}\nid: {}\ndata: {}\n\n",
        ev.kind.as_str(),
        ev.revision,
        ev.to_json()
    ))
}

/// Feeds one watcher until it disconnects, falls too far behind, its token is revoked, or the
/// node stops.
async fn stream(
    app: &App,
    grant: &Grant,
    key: &str,
    mut sub: db::Subscription,
    mut room: Option<OwnedSemaphorePermit>,
    tx: mpsc::Sender<Bytes>,
) {
    // A token revoked since the request was authenticated (while it waited for room, say) is
    // caught here; one revoked later, by the reload that follows.
    let mut reloads = app.tokens.reloads();
    let revoked = || error_frame("invalid_token", "the token was revoked");
    if !app.tokens.holds(grant) {
        let _ = tx.send(revoked()).await;
        return;
    }
    // The backlog goes out in chunks of many events (one TLS record and write each, not one
    // per event). Each event is dropped once in a chunk; the room held shrinks, as each chunk
    // is handed on, with what is left to send (a state larger than the whole room holds all of
    // it until only that much is left).
    let mut left: usize = sub.backlog.iter().map(|ev| event_bytes(ev)).sum();
    let mut chunked = 0;
    let mut chunk = BytesMut::new();
    for ev in std::mem::take(&mut sub.backlog) {
        if reloads.has_changed().unwrap_or(true) {
            reloads.borrow_and_update();
            if !app.tokens.holds(grant) {
                let _ = tx.send(revoked()).await;
                return;
            }
        }
        if visible_to(key, &ev) {
            chunk.extend_from_slice(&frame(&cut(grant, key, &ev)));
        }
        chunked += event_bytes(&ev);
        drop(ev);
        if chunk.len() >= BACKLOG_CHUNK {
            if tx.send(chunk.split().freeze()).await.is_err() {
                return;
            }
            left -= std::mem::take(&mut chunked);
            if let Some(room) = room.as_mut() {
                let keep = left.div_ceil(SNAPSHOT_UNIT);
                drop(room.split(room.num_permits().saturating_sub(keep)));
            }
        }
    }
    let cutoff = sub.revision;
    let synced = format!(
        "event: synced\nid: {cutoff}\ndata: {{\"type\":\"synced\",\"revision\":{cutoff}}}\n\n"
    );
    chunk.extend_from_slice(synced.as_bytes());
    if tx.send(chunk.freeze()).await.is_err() {
        return;
    }
    drop(room);
    // The newest (revision, seq) handled; everything at the cutoff came with the backlog.
    let mut last = (cutoff, u32::MAX);
    loop {
        let ev = tokio::select! {
            _ = app.cancel.cancelled() => return,
            _ = tx.closed() => return,
            changed = reloads.changed() => {
                if changed.is_err() || !app.tokens.holds(grant) {
                    let _ = tx.send(revoked()).await;
                    return;
                }
                continue;
            }
            _ = tokio::time::sleep(KEEP_ALIVE) => {
                if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                    return;
                }
                continue;
            }
            ev = sub.live.recv() => ev,
        };
        let evs = match ev {
            Ok(ev) => vec![ev],
            Err(RecvError::Closed) => return,
            Err(RecvError::Lagged(_)) => {
                // Too slow for the live feed: catch up from the change log, if it still has it.
                let from = if last.1 == u32::MAX {
                    last.0
                } else {
                    last.0.saturating_sub(1)
                };
                let replay = app.db.read().log.since(from);
                match replay {
                    Ok(evs) => evs,
                    Err(e) => {
                        let _ = tx.send(error_frame("compacted", &e.to_string())).await;
                        return;
                    }
                }
            }
        };
        for ev in evs {
            if (ev.revision, ev.seq) <= last {
                continue;
            }
            last = (ev.revision, ev.seq);
            if visible_to(key, &ev) && tx.send(frame(&cut(grant, key, &ev))).await.is_err() {
                return;
            }
        }
    }
}
