//! HTTPS transport, shared by the client API and the peer port: the server loop (`server`:
//! limits, accept, TLS, HTTP/1.1 connections, graceful shutdown), the response body type
//! (`body`), the one keep-alive client pool (`pool`, on hyper-util's pooled client) and the
//! JSON forms both servers answer with.
//!
//! Must not know about routes, the store or the cluster: the API (`api`) and the peer port
//! (`cluster::peer`) bring their own.

pub mod body;
pub mod pool;
pub mod server;

pub use body::Body;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

/// A JSON response.
pub fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Body::full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The JSON error body of both servers: `{"error":{"code":...,"message":...}}`, with the
/// plugin that refused a write when there is one (`docs/api.md`).
pub fn error_body(code: &str, message: &str, plugin: Option<&str>) -> String {
    let mut s = String::with_capacity(64 + message.len());
    s.push_str("{\"error\":{\"code\":");
    crate::store::push_json_string(&mut s, code);
    s.push_str(",\"message\":");
    crate::store::push_json_string(&mut s, message);
    if let Some(p) = plugin {
        s.push_str(",\"plugin\":");
        crate::store::push_json_string(&mut s, p);
    }
    s.push_str("}}");
    s
}

/// A response with a JSON error body.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json_response(status, error_body(code, message, None))
}
