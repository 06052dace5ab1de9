//! The HTTPS REST API server: accept loop with connection limits, routing, authentication, and
//! the one mapping from every error to an HTTP status and a stable JSON error code.
//!
//! Handlers live in `api/kv.rs` (keys, batches), `api/watch.rs` (server-sent events) and
//! `api/admin.rs` (status, health, metrics, tokens). Must not know how the store is persisted.

mod admin;
pub use admin::status_value;
mod kv;
mod metrics;
mod plugins;
mod watch;

pub use crate::transport::{json_response, Body};
pub use metrics::Metrics;
pub use watch::SNAPSHOT_UNIT;

use crate::auth::{self, Grant, Role, Tokens};
use crate::config::Config;
use crate::db::{self, Db};
use crate::plugin;
use crate::store::{path, value, Path};
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Everything a request handler may use.
pub struct App {
    pub db: Db,
    pub tokens: Tokens,
    pub config: Arc<Config>,
    pub metrics: Metrics,
    /// Permits for watch streams (`max_watchers`).
    pub watchers: Arc<Semaphore>,
    /// Watch streams open per token (`max_watchers_per_token`).
    pub token_watchers: Arc<crate::slots::Slots<String>>,
    /// Room for watches' initial state waiting to be sent (`watch_snapshot_bytes`), in units
    /// of `watch::SNAPSHOT_UNIT` bytes.
    pub snapshots: Arc<Semaphore>,
    /// Fires on shutdown; long-lived responses (watches) end with it.
    pub cancel: CancellationToken,
    /// Every task a handler spawns (watch feeds) joins this, so shutdown waits for them.
    pub tracker: TaskTracker,
    pub started: Instant,
    /// The cluster side, when clustering is on.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Installed plugins and derived keys.
    pub plugins: crate::plugin::Plugins,
    /// Judges every client write (PUT, DELETE, batch) before the writer gets it.
    pub admission: crate::admission::Admission,
}

/// An error answer: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The plugin that refused the request, if one did.
    pub plugin: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            plugin: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn into_response(self) -> Response<Body> {
        let body = crate::transport::error_body(self.code, &self.message, self.plugin.as_deref());
        json_response(self.status, body)
    }
}

impl From<path::Error> for ApiError {
    fn from(e: path::Error) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_path", e.to_string())
    }
}

impl From<value::Error> for ApiError {
    fn from(e: value::Error) -> ApiError {
        let code = match e {
            value::Error::Empty => "empty_body",
            value::Error::InvalidUtf8 => "invalid_utf8",
            value::Error::Syntax(_) => "bad_json",
            value::Error::NumberOutOfRange(_) => "number_out_of_range",
            value::Error::TooDeep => "too_deep",
            value::Error::Key { .. } => "bad_key",
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
    }
}

impl From<db::Error> for ApiError {
    fn from(e: db::Error) -> ApiError {
        let (status, code) = match e {
            db::Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            db::Error::PreconditionFailed { .. } => {
                (StatusCode::PRECONDITION_FAILED, "precondition_failed")
            }
            db::Error::AlreadyExists(_) => (StatusCode::PRECONDITION_FAILED, "already_exists"),
            db::Error::NothingToMatch(_) => {
                (StatusCode::PRECONDITION_FAILED, "precondition_failed")
            }
            db::Error::Overlap(..) => (StatusCode::BAD_REQUEST, "bad_request"),
            db::Error::Storage(_) | db::Error::ShuttingDown => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            db::Error::StorageUnknown(_) => (StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown"),
            db::Error::NoSpace(_) => (StatusCode::INSUFFICIENT_STORAGE, "no_space"),
            db::Error::ClockAhead(_) => (StatusCode::SERVICE_UNAVAILABLE, "clock_ahead"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<plugin::Rejection> for ApiError {
    fn from(r: plugin::Rejection) -> ApiError {
        let (status, code) = match &r {
            plugin::Rejection::Refused { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "plugin_rejected")
            }
            plugin::Rejection::Failed { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "plugin_failed"),
            plugin::Rejection::Unavailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "plugin_unavailable")
            }
            plugin::Rejection::ReadOnly { .. } => (StatusCode::FORBIDDEN, "read_only"),
        };
        let mut e = ApiError::new(status, code, r.to_string());
        e.plugin = Some(r.plugin().to_owned());
        e
    }
}

impl From<crate::admission::Refusal> for ApiError {
    fn from(r: crate::admission::Refusal) -> ApiError {
        use crate::admission::Refusal;
        let message = r.to_string();
        match r {
            Refusal::Role(_) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", message),
            Refusal::OutsidePrefix(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "outside_prefix", message)
            }
            Refusal::Reserved(_) | Refusal::Root => {
                ApiError::new(StatusCode::FORBIDDEN, "reserved_path", message)
            }
            Refusal::Invalid(_) => ApiError::bad_request(message),
            Refusal::Value(e) => e.into(),
            Refusal::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
            }
            Refusal::Plugin(r) => r.into(),
            Refusal::Db(e) => e.into(),
        }
    }
}

impl From<auth::Error> for ApiError {
    fn from(e: auth::Error) -> ApiError {
        match e {
            auth::Error::Db(d) => d.into(),
            auth::Error::Exists(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            auth::Error::NoSuchToken(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            auth::Error::BadName(..) | auth::Error::BadPrefix(..) => {
                ApiError::bad_request(e.to_string())
            }
            auth::Error::ReservedPrefix(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "reserved_path", e.to_string())
            }
            auth::Error::OutsidePrefix { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "outside_prefix", e.to_string())
            }
            auth::Error::File { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
        }
    }
}

pub type Result<T> = std::result::Result<T, ApiError>;

/// Serves the API on `listener` until `cancel` fires; every connection task joins `tracker`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Arc<App>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let limits = crate::transport::server::Limits {
        max_connections: app.config.api.max_connections,
        max_per_client: app.config.api.max_connections_per_client,
        handshake: app.config.api.handshake_timeout,
        headers: app.config.api.handshake_timeout,
        write: app.config.api.write_timeout,
    };
    let make = |_peer, overloaded| {
        app.metrics.connection_opened();
        let app = app.clone();
        let guard = OpenConnection(app.clone());
        (move |req| handle(app.clone(), req, overloaded), guard)
    };
    crate::transport::server::serve("api", listener, tls, limits, make, cancel, tracker).await;
}

/// Counts an open connection in the metrics while it lives.
struct OpenConnection(Arc<App>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.metrics.connection_closed();
    }
}

/// Answers one request; never fails (errors become JSON error responses). On a connection
/// past the limit (`overloaded`) only the health probes are answered.
async fn handle(app: Arc<App>, req: Request<Incoming>, overloaded: bool) -> Response<Body> {
    let start = Instant::now();
    let method = req.method().clone();
    let probe = matches!(req.uri().path(), "/v1/health" | "/v1/readyz" | "/v1/livez");
    let routed = if overloaded && !probe {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!(
                "the node serves {} connections already; try again later",
                app.config.api.max_connections
            ),
        ))
    } else {
        route(&app, req).await
    };
    let resp = match routed {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    app.metrics.observe(&method, resp.status(), start.elapsed());
    resp
}

async fn route(app: &Arc<App>, req: Request<Incoming>) -> Result<Response<Body>> {
    let raw_path = req.uri().path().to_owned();
    if let Some(rest) = strip_route(&raw_path, "/v1/kv") {
        let path = Path::parse_url(rest)?;
        let grant = authenticate(app, &req)?;
        return match *req.method() {
            Method::GET | Method::HEAD => kv::get(app, &grant, &path, &req),
            Method::PUT => kv::put(app, &grant, path, req).await,
            Method::DELETE => kv::delete(app, &grant, path, &req).await,
            _ => Err(method_not_allowed("GET, PUT, DELETE")),
        };
    }
    if let Some(rest) = strip_route(&raw_path, "/v1/watch") {
        let path = Path::parse_url(rest)?;
        let grant = authenticate(app, &req)?;
        if req.method() != Method::GET {
            return Err(method_not_allowed("GET"));
        }
        return watch::watch(app, &grant, &path, &req).await;
    }
    if let Some(rest) = strip_route(&raw_path, "/v1/plugins") {
        let grant = authenticate(app, &req)?;
        return plugins::route(app, &grant, rest, req).await;
    }
    if let Some(rest) = strip_route(&raw_path, "/v1/tokens") {
        let grant = authenticate(app, &req)?;
        require(&grant, Role::Admin)?;
        return admin::tokens(app, &grant, rest, req).await;
    }
    match raw_path.as_str() {
        "/v1/batch" => {
            let grant = authenticate(app, &req)?;
            if req.method() != Method::POST {
                return Err(method_not_allowed("POST"));
            }
            kv::batch(app, &grant, req).await
        }
        "/v1/health" | "/v1/readyz" => Ok(admin::health(app)),
        "/v1/livez" => Ok(admin::live()),
        "/v1/members" => {
            require_node_wide(&authenticate(app, &req)?)?;
            if req.method() != Method::GET {
                return Err(method_not_allowed("GET"));
            }
            Ok(admin::members(app))
        }
        _ if raw_path.starts_with("/v1/members/") => {
            let grant = authenticate(app, &req)?;
            require(&grant, Role::Admin)?;
            require_node_wide(&grant)?;
            if req.method() != Method::DELETE {
                return Err(method_not_allowed("DELETE"));
            }
            let id = &raw_path["/v1/members/".len()..];
            let force = match query_param(req.uri().query(), "force") {
                None | Some("false" | "0") => false,
                Some("" | "true" | "1") => true,
                Some(other) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("force={other:?}: expected true or false"),
                    ))
                }
            };
            admin::remove_member(app, id, force).await
        }
        "/v1/status" => {
            require_node_wide(&authenticate(app, &req)?)?;
            Ok(admin::status(app))
        }
        "/metrics" => {
            require_node_wide(&authenticate(app, &req)?)?;
            Ok(admin::metrics(app))
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such endpoint {raw_path}"),
        )),
    }
}

/// `"/v1/kv/a/b"` with route `"/v1/kv"` gives `Some("a/b")`; `"/v1/kv"` gives `Some("")`.
fn strip_route<'a>(path: &'a str, route: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(route)?;
    if rest.is_empty() {
        Some("")
    } else {
        rest.strip_prefix('/')
    }
}

pub(crate) fn method_not_allowed(allowed: &str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("method not allowed here; use {allowed}"),
    )
}

/// Checks the bearer token (or the basic-auth password).
fn authenticate<B>(app: &App, req: &Request<B>) -> Result<Grant> {
    let Some(h) = req.headers().get(header::AUTHORIZATION) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a token is required (Authorization: Bearer <token>)",
        ));
    };
    let h = h.to_str().unwrap_or("");
    let secret = if let Some(t) = h
        .strip_prefix("Bearer ")
        .or_else(|| h.strip_prefix("bearer "))
    {
        Some(t.trim().to_owned())
    } else if let Some(b) = h
        .strip_prefix("Basic ")
        .or_else(|| h.strip_prefix("basic "))
    {
        decode_basic_password(b.trim())
    } else {
        None
    };
    let Some(secret) = secret else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the Authorization header must be Bearer <token> or Basic",
        ));
    };
    app.tokens.check(&secret).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the token is unknown or revoked",
        )
    })
}

/// The password of a basic-auth credential (`user:password`, base64, padded or not).
fn decode_basic_password(b64: &str) -> Option<String> {
    use base64::engine::{general_purpose, DecodePaddingMode, GeneralPurpose};
    use base64::Engine as _;
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        general_purpose::GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let bytes = LENIENT.decode(b64.trim()).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    text.split_once(':').map(|(_, p)| p.to_owned())
}

/// Requires at least `role`.
pub fn require(grant: &Grant, role: Role) -> Result<()> {
    Ok(crate::admission::check_role(grant, role)?)
}

/// Requires at least `role` on path `p`: the role, a prefix that covers `p`, and `p` not reserved.
pub fn authorize(grant: &Grant, role: Role, p: &Path) -> Result<()> {
    require(grant, role)?;
    require_path(grant, p)
}

/// Requires a token without a prefix: node-wide information (status, metrics, members,
/// plugins) describes the whole store, not a part of it.
pub fn require_node_wide(grant: &Grant) -> Result<()> {
    if grant.prefix.is_root() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "outside_prefix",
        format!(
            "token {:?} is limited to {}; node-wide information needs a token without a prefix",
            grant.name, grant.prefix
        ),
    ))
}

/// Requires that the token's prefix covers `p` and that `p` is not reserved.
pub fn require_path(grant: &Grant, p: &Path) -> Result<()> {
    Ok(crate::admission::check_path(grant, p)?)
}

/// The value of a query parameter (`?keys`, `?ttl=30s`); `Some("")` for a bare flag.
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_params() {
        assert_eq!(strip_route("/v1/kv/a/b", "/v1/kv"), Some("a/b"));
        assert_eq!(strip_route("/v1/kv", "/v1/kv"), Some(""));
        assert_eq!(strip_route("/v1/kvx", "/v1/kv"), None);
        assert_eq!(query_param(Some("keys"), "keys"), Some(""));
        assert_eq!(query_param(Some("a=1&ttl=30s"), "ttl"), Some("30s"));
        assert_eq!(query_param(None, "ttl"), None);
    }

    #[test]
    fn basic_auth_password() {
        // "user:herd_secret"
        assert_eq!(
            decode_basic_password("dXNlcjpoZXJkX3NlY3JldA==").as_deref(),
            Some("herd_secret")
        );
        assert_eq!(decode_basic_password("!!!"), None);
        assert_eq!(
            decode_basic_password("dXNlcjpoZXJkX3NlY3JldA").as_deref(),
            Some("herd_secret"),
            "without padding"
        );
        assert_eq!(decode_basic_password("dXNlcg=="), None, "no colon");
    }
}
