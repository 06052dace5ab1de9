//! Key handlers: `GET`/`PUT`/`DELETE /v1/kv/{path}` and `POST /v1/batch`.
//!
//! The request body is validated and exploded into registers here, on the connection's task,
//! so the single writer only plans and commits.

use super::{authorize, json_response, query_param, require, ApiError, App, Body, Result};
use crate::admission::Asked;
use crate::auth::{Grant, Role};
use crate::clock::now_ms;
use crate::config::parse_duration;
use crate::db::{Condition, Written};
use crate::plugin::derive::Found;
use crate::store::{value, Path, Version};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use std::sync::Arc;

pub fn get<B>(
    app: &Arc<App>,
    grant: &Grant,
    path: &Path,
    req: &Request<B>,
) -> Result<Response<Body>> {
    authorize(grant, Role::Read, path)?;
    match app.plugins.outputs().get(path) {
        Found::Outside => {}
        Found::Missing => return Err(not_found(path)),
        Found::Value(v) => return Ok(derived(path, v, req)),
    }
    let now = now_ms();
    let st = app.db.read();
    let key = path.key();
    if query_param(req.uri().query(), "keys").is_some() {
        let derived_dirs = app.plugins.outputs().dirs_below(path);
        let kids = match st.store.children(key, now) {
            // Nothing stored here, but an output prefix below: a directory of derived keys.
            None if !derived_dirs.is_empty() => Vec::new(),
            None => return Err(not_found(path)),
            Some(Err(())) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "not_a_directory",
                    format!("{path} is a value, not a directory"),
                ))
            }
            Some(Ok(k)) => k,
        };
        let mut kids = kids;
        for d in derived_dirs {
            if !kids.iter().any(|(n, _)| *n == d) {
                kids.push((d, true));
            }
        }
        kids.sort();
        let mut s = String::from("{\"keys\":[");
        for (i, (name, dir)) in kids.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let n = if *dir {
                format!("{name}/")
            } else {
                name.clone()
            };
            crate::store::push_json_string(&mut s, &n);
        }
        s.push_str("]}");
        return Ok(with_revision(json_response(StatusCode::OK, s), st.revision));
    }
    let mut s = String::new();
    let found = st.store.render(key, now, &mut s);
    // render() found something there, so the newest version is its ETag.
    let etag = found.then(|| st.store.newest_version(key));
    let revision = st.revision;
    drop(st);
    // Derived keys below show where they go. Their content has no version: no ETag then.
    let outputs = app.plugins.outputs();
    if outputs.has_below(path) {
        let mut overlaid = match found {
            true => serde_json::from_str(&s).unwrap_or(serde_json::Value::Null),
            false => serde_json::Value::Null,
        };
        outputs.overlay(path, &mut overlaid);
        let mut resp = with_revision(
            json_response(StatusCode::OK, overlaid.to_string()),
            revision,
        );
        resp.headers_mut()
            .insert("x-herd-derived", HeaderValue::from_static("partly"));
        return Ok(resp);
    }
    if !found {
        return Err(not_found(path));
    }
    let mut resp = with_revision(json_response(StatusCode::OK, s), revision);
    if let Some(etag) = etag {
        set_etag(resp.headers_mut(), etag);
    }
    Ok(resp)
}

pub async fn put(
    app: &Arc<App>,
    grant: &Grant,
    path: Path,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    // Refused before the body is read; `Admission::judge` checks again with the rest.
    app.admission.authorize(grant, &path, true)?;
    let ttl_ms = match query_param(req.uri().query(), "ttl") {
        None => None,
        Some(t) => Some(parse_ttl(t)?),
    };
    let dry_run = query_param(req.uri().query(), "dry_run").is_some();
    let condition = condition(req.headers(), true)?;
    check_content_type(req.headers())?;
    let body = read_body(app, req, app.config.api.max_value_bytes).await?;
    let v = value::parse(&body)?;
    let asked = vec![Asked::put(path, v, ttl_ms)];
    let judged = app.admission.judge(grant, asked, condition, false).await?;
    if dry_run {
        // Everything a write checks has been checked; nothing is stored.
        app.db.writable()?;
        return Ok(json_response(StatusCode::OK, r#"{"dry_run":true}"#));
    }
    Ok(written(app.db.write(judged).await?))
}

pub async fn delete<B>(
    app: &Arc<App>,
    grant: &Grant,
    path: Path,
    req: &Request<B>,
) -> Result<Response<Body>> {
    app.admission.authorize(grant, &path, false)?;
    let condition = condition(req.headers(), false)?;
    let asked = vec![Asked::delete(path)];
    Ok(written(
        app.admission.write(grant, asked, condition, false).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    ops: Vec<BatchOp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchOp {
    op: String,
    path: String,
    #[serde(default)]
    value: Option<serde_json::Value>,
    #[serde(default)]
    ttl: Option<String>,
}

pub async fn batch(
    app: &Arc<App>,
    grant: &Grant,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    require(grant, Role::Write)?;
    check_content_type(req.headers())?;
    let body = read_body(app, req, app.config.api.max_batch_bytes).await?;
    // Parse strictly first (numbers, depth, UTF-8), then into the batch shape.
    let raw = value::parse(&body)?;
    // serde would read an array as the struct's fields in order, with a puzzling message.
    let batch = if raw.is_object() {
        serde_json::from_value::<Batch>(raw).map_err(|e| e.to_string())
    } else {
        Err(
            r#"a batch is an object, {"ops": [{"op": "put", "path": ..., "value": ...}, ...]}"#
                .into(),
        )
    }
    .map_err(|why| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("not a batch: {why}"),
        )
    })?;
    if batch.ops.is_empty() {
        return Err(ApiError::bad_request("a batch needs at least one op"));
    }
    if batch.ops.len() > app.config.api.max_batch_ops {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "batch has {} ops, the limit is {}",
                batch.ops.len(),
                app.config.api.max_batch_ops
            ),
        ));
    }
    let mut asked = Vec::with_capacity(batch.ops.len());
    for (i, b) in batch.ops.into_iter().enumerate() {
        let path = Path::parse(&b.path).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_path", format!("op {i}: {e}"))
        })?;
        match (b.op.as_str(), b.value) {
            ("put", Some(v)) => {
                let ttl_ms = b.ttl.as_deref().map(parse_ttl).transpose()?;
                asked.push(Asked::put(path, v, ttl_ms));
            }
            ("put", None) => {
                return Err(ApiError::bad_request(format!("op {i}: put needs a value")))
            }
            ("delete", None) if b.ttl.is_none() => asked.push(Asked::delete(path)),
            ("delete", _) => {
                return Err(ApiError::bad_request(format!(
                    "op {i}: delete takes no value or ttl"
                )))
            }
            (other, _) => {
                return Err(ApiError::bad_request(format!(
                    "op {i}: unknown op {other:?} (expected put or delete)"
                )))
            }
        }
    }
    let w = app
        .admission
        .write(grant, asked, Condition::None, true)
        .await?;
    Ok(written(w))
}

/// A derived key (read-only, computed on this node by a derive plugin).
fn derived<B>(path: &Path, v: serde_json::Value, req: &Request<B>) -> Response<Body> {
    if query_param(req.uri().query(), "keys").is_some() {
        if !v.is_object() {
            return ApiError::new(
                StatusCode::CONFLICT,
                "not_a_directory",
                format!("{path} is a value, not a directory"),
            )
            .into_response();
        }
        let names = crate::plugin::view::child_names(&v);
        let mut resp = json_response(
            StatusCode::OK,
            serde_json::json!({ "keys": names }).to_string(),
        );
        resp.headers_mut()
            .insert("x-herd-derived", HeaderValue::from_static("true"));
        return resp;
    }
    let mut resp = json_response(StatusCode::OK, value::to_text(&v).to_string());
    resp.headers_mut()
        .insert("x-herd-derived", HeaderValue::from_static("true"));
    resp
}

fn written(w: Written) -> Response<Body> {
    let body = format!(
        "{{\"version\":\"{}\",\"revision\":{}}}",
        w.version, w.revision
    );
    let mut resp = with_revision(json_response(StatusCode::OK, body), w.revision);
    set_etag(resp.headers_mut(), w.version);
    resp
}

fn set_etag(h: &mut HeaderMap, v: Version) {
    if let Ok(val) = HeaderValue::from_str(&format!("\"{v}\"")) {
        h.insert(header::ETAG, val);
    }
}

fn with_revision(mut resp: Response<Body>, revision: u64) -> Response<Body> {
    resp.headers_mut()
        .insert("x-herd-revision", HeaderValue::from(revision));
    resp
}

fn not_found(path: &Path) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("nothing at {path}"),
    )
}

fn parse_ttl(t: &str) -> Result<u64> {
    let d = parse_duration(t).map_err(|e| ApiError::bad_request(format!("ttl: {e}")))?;
    // Expiry is kept in whole milliseconds: a shorter ttl would be 0 and expire at once.
    if d.as_millis() == 0 {
        return Err(ApiError::bad_request("ttl must be at least 1ms"));
    }
    Ok(d.as_millis() as u64)
}

/// Reads `If-Match` / `If-None-Match`. `If-Match` compares strongly (RFC 9110): `*` asks for
/// the path to exist, and a weak tag (`W/"..."`) never matches.
fn condition(h: &HeaderMap, allow_none_match: bool) -> Result<Condition> {
    if let Some(v) = h.get(header::IF_MATCH) {
        let s = v
            .to_str()
            .map_err(|_| ApiError::bad_request("If-Match is not text"))?
            .trim();
        if s == "*" {
            return Ok(Condition::IfExists);
        }
        if s.starts_with("W/") {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                format!(
                    "If-Match: {s} is a weak tag, which never matches (versions are strong tags)"
                ),
            ));
        }
        let version: Version = s.parse().map_err(|e: crate::store::version::ParseError| {
            ApiError::bad_request(format!("If-Match: {e}"))
        })?;
        return Ok(Condition::IfMatch(version));
    }
    if let Some(v) = h.get(header::IF_NONE_MATCH) {
        if allow_none_match && v.as_bytes() == b"*" {
            return Ok(Condition::IfNoneMatch);
        }
        return Err(ApiError::bad_request(
            "If-None-Match only supports * (create only) on PUT",
        ));
    }
    Ok(Condition::None)
}

/// A missing content type is taken as JSON; anything else than JSON is refused.
pub(super) fn check_content_type(h: &HeaderMap) -> Result<()> {
    let Some(ct) = h.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("content type {essence:?} is not accepted; send application/json"),
        ))
    }
}

fn too_large(len: usize, limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("body is {len} bytes, the limit is {limit}"),
    )
}

/// Reads a body of at most `limit` bytes within the body timeout.
pub(super) async fn read_body(app: &App, req: Request<Incoming>, limit: usize) -> Result<Bytes> {
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
    {
        if len > limit {
            return Err(too_large(len, limit));
        }
    }
    let collect = Limited::new(req.into_body(), limit).collect();
    match tokio::time::timeout(app.config.api.body_timeout, collect).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "the request body did not arrive in time",
        )),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("body is larger than the limit of {limit} bytes"),
            ))
        }
        Ok(Err(e)) => Err(ApiError::bad_request(format!(
            "cannot read the request body: {e}"
        ))),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}
