//! Plugin management: `/v1/plugins` (list), `/v1/plugins/files` (upload a component),
//! `/v1/plugins/{name}` (show, install or update, remove).
//!
//! Installing is two calls: the component's bytes go to `POST /v1/plugins/files`
//! (`application/wasm`), which answers their sha256; the manifest naming that sha256 goes to
//! `PUT /v1/plugins/{name}`. The node loads and checks the plugin before it stores the manifest,
//! so a plugin that does not load is refused (422) and nothing changes.

use super::{json_response, ApiError, App, Body, Result};
use crate::auth::{Grant, Role};
use crate::clock::now_ms;
use crate::db::{Condition, WriteRequest};
use crate::plugin::manifest::{self, Manifest, MAX_PLUGIN_BYTES};
use crate::plugin::MANIFESTS;
use crate::store::{Op, Path};
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use std::sync::Arc;

pub async fn route(
    app: &Arc<App>,
    grant: &Grant,
    rest: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    match (req.method().clone(), rest) {
        (Method::GET, "") => {
            super::require(grant, Role::Read)?;
            super::require_node_wide(grant)?;
            Ok(list(app))
        }
        (_, "") => Err(super::method_not_allowed("GET")),
        (Method::POST, "files") => {
            authorize_admin(grant)?;
            upload(app, req).await
        }
        (_, "files") => Err(super::method_not_allowed("POST")),
        (method, name) => {
            manifest::check_name(name).map_err(ApiError::bad_request)?;
            match method {
                Method::GET => {
                    super::require(grant, Role::Read)?;
                    super::require_node_wide(grant)?;
                    show(app, name)
                }
                Method::PUT => {
                    authorize_admin(grant)?;
                    install(app, grant, name, req).await
                }
                Method::DELETE => {
                    authorize_admin(grant)?;
                    remove(app, name).await
                }
                _ => Err(super::method_not_allowed("GET, PUT, DELETE")),
            }
        }
    }
}

/// Plugins act on the whole cluster: managing them takes an admin token without a prefix.
fn authorize_admin(grant: &Grant) -> Result<()> {
    super::require(grant, Role::Admin)?;
    if !grant.prefix.is_root() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {:?} is limited to {}; managing plugins needs an admin token for the whole tree",
                grant.name, grant.prefix
            ),
        ));
    }
    Ok(())
}

fn list(app: &App) -> Response<Body> {
    let reg = app.plugins.registry();
    let plugins: Vec<_> = reg.entries.iter().map(|e| e.to_json()).collect();
    let outputs: Vec<_> = app
        .plugins
        .outputs()
        .sets()
        .into_iter()
        .map(|s| {
            json!({"plugin": s.plugin, "prefix": s.prefix.to_string(), "keys": s.count,
                   "updated": s.updated_ms, "last_error": s.last_error})
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({"plugins": plugins, "outputs": outputs, "hooks": app.plugins.hook_time()})
            .to_string(),
    )
}

fn no_such(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no plugin named {name}"),
    )
}

fn show(app: &App, name: &str) -> Result<Response<Body>> {
    let reg = app.plugins.registry();
    let e = reg
        .entries
        .iter()
        .find(|e| e.checked.manifest.name == name)
        .ok_or_else(|| no_such(name))?;
    Ok(json_response(StatusCode::OK, e.to_json().to_string()))
}

async fn upload(app: &Arc<App>, req: Request<Incoming>) -> Result<Response<Body>> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct != "application/wasm" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the component as application/wasm",
        ));
    }
    let body = super::kv::read_body(app, req, MAX_PLUGIN_BYTES).await?;
    if !body.starts_with(b"\0asm") {
        return Err(ApiError::bad_request(
            "not a WebAssembly file (no \\0asm header)",
        ));
    }
    let plugins = app.plugins.clone();
    let bytes = body.clone();
    let sha = tokio::task::spawn_blocking(move || plugins.put_blob(&bytes))
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .map_err(|e| unavailable(format!("cannot store the file: {e}")))?;
    Ok(json_response(
        StatusCode::OK,
        json!({"sha256": sha, "size": body.len()}).to_string(),
    ))
}

fn unavailable(msg: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", msg)
}

fn manifest_path(name: &str) -> Path {
    Path::parse(MANIFESTS)
        .and_then(|p| p.child(name))
        .expect("a checked plugin name is a valid segment")
}

/// The stored manifest of `name`, if any.
fn stored(app: &App, name: &str) -> Option<Manifest> {
    crate::plugin::read_manifest(&app.db, name).and_then(|r| r.ok())
}

async fn install(
    app: &Arc<App>,
    grant: &Grant,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let create_only = req.headers().get(header::IF_NONE_MATCH).is_some();
    let update_only = req.headers().get(header::IF_MATCH).is_some();
    super::kv::check_content_type(req.headers())?;
    let body = super::kv::read_body(app, req, 64 << 10).await?;
    let mut m: Manifest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_manifest", e.to_string()))?;
    if !m.name.is_empty() && m.name != name {
        return Err(ApiError::bad_request(format!(
            "the manifest names {:?} but the URL names {name:?}",
            m.name
        )));
    }
    let old = stored(app, name);
    match (&old, create_only, update_only) {
        (Some(_), true, _) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("a plugin named {name} is already installed (use update)"),
            ))
        }
        (None, _, true) => return Err(no_such(name)),
        _ => {}
    }
    m.name = name.to_owned();
    m.installed = old.as_ref().map_or_else(now_ms, |o| o.installed);
    m.by = grant.name.clone();
    let checked = m
        .clone()
        .check()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_manifest", e))?;
    if let Some(o) = &checked.output {
        let reg = app.plugins.registry();
        if let Some(other) = reg.entries.iter().find(|e| {
            e.checked.manifest.name != name
                && e.checked
                    .output
                    .as_ref()
                    .is_some_and(|x| x.contains(o) || o.contains(x))
        }) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "the output prefix {o} overlaps that of plugin {}",
                    other.checked.manifest.name
                ),
            ));
        }
    }
    if !app.plugins.blob_path(&m.sha256).exists() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_file",
            format!(
                "no plugin file with sha256 {} on this node; upload it first (POST /v1/plugins/files)",
                m.sha256
            ),
        ));
    }
    app.plugins.check_loadable(&checked).await.map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_plugin",
            format!("plugin {name} cannot be used: {e:#}"),
        )
    })?;
    let value = serde_json::to_value(&m).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let op = Op::put(manifest_path(name), &value, None)?;
    let w = app
        .db
        .write(WriteRequest {
            ops: vec![op],
            condition: Condition::None,
        })
        .await?;
    app.plugins.reload().await;
    tracing::info!(
        plugin = name,
        sha256 = m.sha256,
        by = grant.name,
        "plugin installed"
    );
    let reg = app.plugins.registry();
    let entry = reg
        .entries
        .iter()
        .find(|e| e.checked.manifest.name == name)
        .map(|e| e.to_json())
        .unwrap_or_else(|| serde_json::to_value(&m).unwrap_or_default());
    Ok(json_response(
        if old.is_some() {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        json!({"plugin": entry, "version": w.version.to_string(), "revision": w.revision})
            .to_string(),
    ))
}

async fn remove(app: &Arc<App>, name: &str) -> Result<Response<Body>> {
    if stored(app, name).is_none() {
        return Err(no_such(name));
    }
    let w = app
        .db
        .write(WriteRequest {
            ops: vec![Op::Delete {
                path: manifest_path(name),
            }],
            condition: Condition::None,
        })
        .await?;
    app.plugins.reload().await;
    tracing::info!(plugin = name, "plugin removed");
    Ok(json_response(
        StatusCode::OK,
        json!({"removed": name, "version": w.version.to_string(), "revision": w.revision})
            .to_string(),
    ))
}
