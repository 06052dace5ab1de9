//! `GET /v1/watch/{path}`: server-sent events from the change log and the live event feed.

use super::{authorize, query_param, ApiError, App, Body, Result};
use crate::auth::{Grant, Role};
use crate::db;
use crate::store::{Event, Path, INTERNAL};
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast::error::RecvError, mpsc};

/// How often an idle stream sends a comment, so dead connections are noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub fn watch<B>(
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
    let permit = app.watchers.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_watchers",
            format!(
                "the node serves at most {} watches",
                app.config.max_watchers
            ),
        )
    })?;
    let key: Box<str> = path.key().into();
    let sub = app
        .db
        .subscribe(&key, since)
        .map_err(|e| ApiError::new(StatusCode::GONE, "compacted", e.to_string()))?;
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let app2 = app.clone();
    app.tracker.spawn(async move {
        let _permit = permit;
        app2.metrics.watcher_opened();
        stream(&app2, &key, sub, tx).await;
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
    db::related(watched, &ev.key)
        && (!watched.is_empty() || !crate::store::path::key_contains(INTERNAL, &ev.key))
}

fn frame(ev: &Event) -> Bytes {
    Bytes::from(format!(
        "event: {}\nid: {}\ndata: {}\n\n",
        ev.kind.as_str(),
        ev.revision,
        ev.to_json()
    ))
}

/// Feeds one watcher until it disconnects, falls too far behind, or the node stops.
async fn stream(app: &App, key: &str, mut sub: db::Subscription, tx: mpsc::Sender<Bytes>) {
    for ev in &sub.backlog {
        if visible_to(key, ev) && tx.send(frame(ev)).await.is_err() {
            return;
        }
    }
    let cutoff = sub.revision;
    let synced = format!(
        "event: synced\nid: {cutoff}\ndata: {{\"type\":\"synced\",\"revision\":{cutoff}}}\n\n"
    );
    if tx.send(Bytes::from(synced)).await.is_err() {
        return;
    }
    // The newest (revision, seq) handled; everything at the cutoff came with the backlog.
    let mut last = (cutoff, u32::MAX);
    loop {
        let ev = tokio::select! {
            _ = app.cancel.cancelled() => return,
            _ = tx.closed() => return,
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
                        let msg = format!(
                            "event: error\ndata: {{\"type\":\"error\",\"code\":\"compacted\",\"message\":\"{e}\"}}\n\n"
                        );
                        let _ = tx.send(Bytes::from(msg)).await;
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
            if visible_to(key, &ev) && tx.send(frame(&ev)).await.is_err() {
                return;
            }
        }
    }
}
