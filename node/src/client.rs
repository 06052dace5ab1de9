//! The HTTPS client for a node's REST API, used by the `herd` CLI, the remote file view and the
//! test harness: requests over the transport's keep-alive pool (`transport::pool`), and
//! server-sent event streams.
//!
//! Invariant: this module knows only the HTTP contract of `docs/api.md` (status codes, the JSON
//! error body, the SSE wire format), never the store's internals or the server's routing.

pub mod paths;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use rustls::pki_types::ServerName;

use crate::transport::pool::{self, describe_chain, Dial, Pool};

/// How long opening a connection (TCP connect, TLS and HTTP handshakes) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections kept for reuse; more are closed when they come back.
const MAX_IDLE: usize = 8;
/// The longest error body quoted in an [`Error::Status`] message when it is not a JSON error.
const MAX_QUOTED_BODY: usize = 200;

/// Client errors. Each message is complete (it includes its cause), so no variant exposes a
/// `source()` that would print twice under `{:#}`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },

    #[error("cannot use the ca certificate: {0}")]
    Ca(crate::tls::Error),

    #[error("cannot connect to {url}: {cause}")]
    Connect { url: String, cause: String },

    #[error("cannot connect to {url}: no connection within {} s", .after.as_secs())]
    Timeout { url: String, after: Duration },

    #[error("tls handshake with {url} failed: {cause}")]
    Tls { url: String, cause: String },

    #[error("http exchange with {url} failed: {cause}")]
    Http { url: String, cause: String },

    #[error("bad request path {path:?}: {reason}")]
    BadPath { path: String, reason: String },

    #[error("bad value for header {name}: {reason}")]
    BadHeader { name: HeaderName, reason: String },

    #[error("response body is not json: {0}")]
    Json(serde_json::Error),

    /// The server answered with an unexpected status; `code` and `message` come from its JSON
    /// error body (`code` is `None` when the body was not a JSON error).
    #[error("server answered {status}{}: {message}", code_suffix(.code))]
    Status {
        status: StatusCode,
        code: Option<String>,
        message: String,
    },
}

impl Error {
    /// The stable error code of an [`Error::Status`], e.g. `"not_found"`.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Status { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

/// A complete response: status, headers and the whole body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value, Error> {
        serde_json::from_slice(&self.body).map_err(Error::Json)
    }

    /// `error.code` of a JSON error body (`{"error": {"code": ..., "message": ...}}`).
    pub fn error_code(&self) -> Option<String> {
        json_error(&self.body).map(|(code, _)| code)
    }

    /// `Ok(self)` for a 2xx status, else the [`Error::Status`] this response describes.
    pub fn error_for_status(self) -> Result<Response, Error> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(status_error(self.status, &self.body))
        }
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `"message"` when the event had none.
    pub event: String,
    /// The `id:` field of this event, if it had one.
    pub id: Option<String>,
    /// The `data:` lines joined by `\n`.
    pub data: String,
}

/// A client for one node. Cloning is cheap and clones share the connection pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.target.base_url)
            .field("token", &self.inner.authorization.is_some())
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// Where and how to connect, parsed from the base URL.
    target: Target,
    /// `Bearer <token>`, when a token was given; marked sensitive so it is never logged.
    authorization: Option<HeaderValue>,
    /// Keep-alive connections to the node, TLS with exactly the given CA as trust anchor.
    pool: Pool,
}

impl Client {
    /// A client for the node at `base_url` (`https://host:port`, an optional path prefix is kept)
    /// that trusts exactly the CA certificates in `ca_pem` and sends `token` as a bearer token.
    pub fn new(base_url: &str, token: Option<String>, ca_pem: &[u8]) -> Result<Client, Error> {
        let target = parse_base_url(base_url)?;
        let authorization = match token {
            Some(token) => {
                let mut value = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
                    Error::BadHeader {
                        name: AUTHORIZATION,
                        reason: "the token contains characters not allowed in a header".into(),
                    }
                })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let dial = Dial {
            target: pool::Target::Host(target.host.clone(), target.port),
            server_name: target.server_name.clone(),
            tls: crate::tls::client_config(ca_pem).map_err(Error::Ca)?,
            connect_timeout: CONNECT_TIMEOUT,
        };
        Ok(Client {
            inner: Arc::new(Inner {
                target,
                authorization,
                pool: Pool::new(dial, MAX_IDLE, pool::Tasks::Runtime),
            }),
        })
    }

    /// The base URL this client talks to, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.inner.target.base_url
    }

    /// Sends one request and reads the whole response. Any status is a successful response here;
    /// use [`Response::error_for_status`] to turn non-2xx answers into errors.
    ///
    /// `content-type: application/json` is sent with a body unless `headers` has a content type.
    /// A request whose keep-alive connection the server closed before it was written is sent
    /// again; a `GET` or `HEAD` that fails later is retried once on a new connection; a write
    /// is never sent twice (`transport::pool`).
    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(HeaderName, String)],
        body: Option<Bytes>,
    ) -> Result<Response, Error> {
        let request = self.build_request(method, path_and_query, headers, body)?;
        let response = self.inner.pool.send(request).await;
        let (parts, body) = response.map_err(|e| self.error(e))?.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|cause| self.http_error(&cause))?
            .to_bytes();
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Opens a server-sent event stream (`GET`, `accept: text/event-stream`); its connection
    /// closes when the stream is dropped. A status other than 200 is returned as
    /// [`Error::Status`].
    pub async fn events(
        &self,
        path_and_query: &str,
        headers: &[(HeaderName, String)],
    ) -> Result<EventStream, Error> {
        let mut with_accept = headers.to_vec();
        if !headers.iter().any(|(name, _)| name == ACCEPT) {
            with_accept.push((ACCEPT, "text/event-stream".to_string()));
        }
        let request = self.build_request(Method::GET, path_and_query, &with_accept, None)?;
        let response = self
            .inner
            .pool
            .send(request)
            .await
            .map_err(|e| self.error(e))?;
        if response.status() != StatusCode::OK {
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|cause| self.http_error(&cause))?
                .to_bytes();
            return Err(status_error(status, &body));
        }
        Ok(EventStream {
            body: response.into_body(),
            parser: SseParser::default(),
            finished: false,
            base_url: self.inner.target.base_url.clone(),
        })
    }

    fn build_request(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(HeaderName, String)],
        body: Option<Bytes>,
    ) -> Result<Request<Full<Bytes>>, Error> {
        let bad_path = |reason: &str| Error::BadPath {
            path: path_and_query.to_string(),
            reason: reason.to_string(),
        };
        if !path_and_query.starts_with('/') {
            return Err(bad_path("must start with '/'"));
        }
        let target = &self.inner.target;
        // The authority was checked to be header-safe text when the client was made.
        let authority = target.authority.to_str().unwrap_or_default();
        let uri: Uri = format!("https://{authority}{}{path_and_query}", target.prefix)
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad_path(&e.to_string()))?;
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(body.clone().unwrap_or_default()))
            .map_err(|e| bad_path(&e.to_string()))?;
        let map = request.headers_mut();
        for (name, value) in headers {
            let value = HeaderValue::try_from(value.as_str()).map_err(|_| Error::BadHeader {
                name: name.clone(),
                reason: "contains characters not allowed in a header".to_string(),
            })?;
            map.append(name.clone(), value);
        }
        if !map.contains_key(HOST) {
            map.insert(HOST, self.inner.target.authority.clone());
        }
        if let Some(authorization) = &self.inner.authorization {
            if !map.contains_key(AUTHORIZATION) {
                map.insert(AUTHORIZATION, authorization.clone());
            }
        }
        if body.is_some() && !map.contains_key(CONTENT_TYPE) {
            map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        Ok(request)
    }

    fn error(&self, e: pool::Error) -> Error {
        let url = self.inner.target.base_url.clone();
        match e {
            pool::Error::Connect(cause) => Error::Connect { url, cause },
            pool::Error::Tls(cause) => Error::Tls { url, cause },
            pool::Error::Timeout(after) => Error::Timeout { url, after },
            pool::Error::Http(cause) => Error::Http { url, cause },
        }
    }

    fn http_error(&self, cause: &hyper::Error) -> Error {
        Error::Http {
            url: self.inner.target.base_url.clone(),
            cause: describe_chain(cause),
        }
    }
}

/// A server-sent event stream on its own connection; dropping it closes the connection.
pub struct EventStream {
    /// The response body the events arrive in.
    body: Incoming,
    /// Turns body chunks into events.
    parser: SseParser,
    /// The body has ended or failed; no more chunks will come.
    finished: bool,
    /// For error messages.
    base_url: String,
}

impl EventStream {
    /// The next event, `None` when the server ended the stream (an event cut off by the end is
    /// dropped, as the SSE specification says), or an error if the connection failed.
    pub async fn next(&mut self) -> Option<Result<SseEvent, Error>> {
        self.next_within(None).await
    }

    /// As [`EventStream::next`], but a stream that brings nothing at all for `idle` (not even
    /// the server's keep-alive comments, every 15 s) has failed: its node went away without
    /// closing the connection.
    pub async fn next_within(&mut self, idle: Option<Duration>) -> Option<Result<SseEvent, Error>> {
        loop {
            if let Some(event) = self.parser.next_event() {
                return Some(Ok(event));
            }
            if self.finished {
                return None;
            }
            let frame = match idle {
                Some(idle) => match tokio::time::timeout(idle, self.body.frame()).await {
                    Ok(frame) => frame,
                    Err(_) => {
                        self.finished = true;
                        return Some(Err(Error::Http {
                            url: self.base_url.clone(),
                            cause: format!("nothing came for {} s", idle.as_secs()),
                        }));
                    }
                },
                None => self.body.frame().await,
            };
            match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.parser.feed(&data);
                    }
                }
                Some(Err(cause)) => {
                    self.finished = true;
                    return Some(Err(Error::Http {
                        url: self.base_url.clone(),
                        cause: describe_chain(&cause),
                    }));
                }
                None => self.finished = true,
            }
        }
    }

    /// The last `id:` the server sent on this stream (what a reconnect sends as
    /// `Last-Event-ID`).
    pub fn last_event_id(&self) -> Option<&str> {
        self.parser.last_event_id.as_deref()
    }
}

/// Incremental parser of the `text/event-stream` format: lines end with LF, CRLF or CR; a blank
/// line dispatches the event; lines starting with `:` are comments.
#[derive(Default)]
struct SseParser {
    /// Bytes of the current, not yet terminated line.
    line: Vec<u8>,
    /// The previous chunk ended in CR: a LF at the start of the next one ends no further line.
    after_cr: bool,
    /// A leading byte-order mark has been skipped (or there was none).
    started: bool,
    /// `event:` of the event being assembled.
    event: Option<String>,
    /// `id:` of the event being assembled.
    id: Option<String>,
    /// `data:` lines of the event being assembled, each followed by `\n`.
    data: String,
    /// The last `id:` seen on the stream, across events.
    last_event_id: Option<String>,
    /// Complete events not yet handed out.
    ready: VecDeque<SseEvent>,
}

impl SseParser {
    fn feed(&mut self, chunk: &[u8]) {
        if self.started {
            return self.feed_lines(chunk);
        }
        // Hold bytes back until it is clear whether the stream starts with a byte-order mark.
        const BOM: &[u8] = b"\xEF\xBB\xBF";
        self.line.extend_from_slice(chunk);
        if self.line.len() < BOM.len() && BOM.starts_with(&self.line) {
            return;
        }
        self.started = true;
        let held = std::mem::take(&mut self.line);
        self.feed_lines(held.strip_prefix(BOM).unwrap_or(&held));
    }

    fn feed_lines(&mut self, mut chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        if self.after_cr && chunk[0] == b'\n' {
            chunk = &chunk[1..];
        }
        self.after_cr = false;
        while let Some(end) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.line.extend_from_slice(&chunk[..end]);
            self.end_line();
            let cr = chunk[end] == b'\r';
            match chunk.get(end + 1) {
                Some(b'\n') if cr => chunk = &chunk[end + 2..],
                None if cr => {
                    self.after_cr = true;
                    chunk = &[];
                }
                _ => chunk = &chunk[end + 1..],
            }
        }
        self.line.extend_from_slice(chunk);
    }

    fn end_line(&mut self) {
        let line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_str(), ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => {
                self.id = Some(value.to_string());
                self.last_event_id = Some(value.to_string());
            }
            _ => {}
        }
    }

    fn dispatch(&mut self) {
        let event = self.event.take();
        let id = self.id.take();
        if self.data.is_empty() {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        self.ready.push_back(SseEvent {
            event: event.unwrap_or_else(|| "message".to_string()),
            id,
            data,
        });
    }

    fn next_event(&mut self) -> Option<SseEvent> {
        self.ready.pop_front()
    }
}

/// What a base URL says about where and how to connect.
struct Target {
    /// The base URL as given (without a trailing `/`), for error messages.
    base_url: String,
    /// Host to connect to: a DNS name or an IP address without brackets.
    host: String,
    /// Port to connect to (443 when the URL has none).
    port: u16,
    /// The name the server certificate must be valid for (sent as SNI unless an IP address).
    server_name: ServerName<'static>,
    /// Value of the `host` header: the URL's authority (also in the requests' absolute URIs).
    authority: HeaderValue,
    /// Path of the base URL without its trailing `/`, prepended to every request path.
    prefix: String,
}

fn parse_base_url(base_url: &str) -> Result<Target, Error> {
    let bad = |reason: &str| Error::BadUrl {
        url: base_url.to_string(),
        reason: reason.to_string(),
    };
    let uri: Uri = base_url
        .parse()
        .map_err(|_| bad("expected https://host:port"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") => return Err(bad("herd speaks https only; use https://")),
        Some(_) => return Err(bad("the scheme must be https")),
        None => return Err(bad("expected https://host:port")),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| bad("expected https://host:port"))?;
    if authority.as_str().contains('@') {
        return Err(bad(
            "user info in the url is not supported; pass a token instead",
        ));
    }
    if uri.query().is_some() {
        return Err(bad("the base url must not have a query"));
    }
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(bad("the host is missing"));
    }
    let server_name = ServerName::try_from(host.to_string())
        .map_err(|_| bad("the host is neither a DNS name nor an IP address"))?;
    let authority_value = HeaderValue::from_str(authority.as_str())
        .map_err(|_| bad("the host is not valid in a host header"))?;
    Ok(Target {
        base_url: base_url.trim_end_matches('/').to_string(),
        host: host.to_string(),
        port: authority.port_u16().unwrap_or(443),
        server_name,
        authority: authority_value,
        prefix: uri.path().trim_end_matches('/').to_string(),
    })
}

/// `(code, message)` of a JSON error body.
fn json_error(body: &[u8]) -> Option<(String, String)> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    let code = error.get("code")?.as_str()?.to_string();
    let message = error
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .to_string();
    Some((code, message))
}

fn status_error(status: StatusCode, body: &[u8]) -> Error {
    match json_error(body) {
        Some((code, message)) => Error::Status {
            status,
            code: Some(code),
            message,
        },
        None => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let message = match text.char_indices().nth(MAX_QUOTED_BODY) {
                Some((cut, _)) => format!("{}...", &text[..cut]),
                None if text.is_empty() => "empty body".to_string(),
                None => text.to_string(),
            };
            Error::Status {
                status,
                code: None,
                message,
            }
        }
    }
}

fn code_suffix(code: &Option<String>) -> String {
    match code {
        Some(code) => format!(" ({code})"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        for chunk in chunks {
            parser.feed(chunk);
            events.extend(std::iter::from_fn(|| parser.next_event()));
        }
        events
    }

    fn event(event: &str, id: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.to_string(),
            id: id.map(str::to_string),
            data: data.to_string(),
        }
    }

    const STREAM: &[u8] = b": keep-alive\n\
        event: put\nid: 41\ndata: {\"type\":\"put\",\"revision\":41}\n\n\
        data: line one\ndata: line two\n\n\
        : comment between events\n\
        event: synced\r\nid: 42\r\ndata: {\"type\":\"synced\"}\r\n\r\n\
        data:no space\rdata:  two spaces\r\r\
        event: delete\ndata\n\n\
        event: empty\n\n\
        data: cut off at the end";

    fn expected() -> Vec<SseEvent> {
        vec![
            event("put", Some("41"), "{\"type\":\"put\",\"revision\":41}"),
            event("message", None, "line one\nline two"),
            event("synced", Some("42"), "{\"type\":\"synced\"}"),
            event("message", None, "no space\n two spaces"),
            event("delete", None, ""),
        ]
    }

    #[test]
    fn sse_parses_events_comments_multiline_data_and_line_endings() {
        assert_eq!(parse(&[STREAM]), expected());
    }

    #[test]
    fn sse_events_split_across_chunks_at_every_byte() {
        for cut in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(cut);
            assert_eq!(parse(&[a, b]), expected(), "split at byte {cut}");
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(parse(&bytes), expected());
    }

    #[test]
    fn sse_crlf_split_between_cr_and_lf_ends_one_line() {
        let events = parse(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]);
        assert_eq!(events, vec![event("message", None, "a\nb")]);
    }

    #[test]
    fn sse_skips_a_leading_byte_order_mark_even_when_split() {
        let stream = b"\xEF\xBB\xBFdata: x\n\n";
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(
                parse(&[a, b]),
                vec![event("message", None, "x")],
                "cut {cut}"
            );
        }
    }

    #[test]
    fn sse_remembers_the_last_event_id() {
        let mut parser = SseParser::default();
        parser.feed(b"id: 7\ndata: a\n\ndata: b\n\n");
        assert_eq!(parser.next_event().unwrap().id.as_deref(), Some("7"));
        assert_eq!(parser.next_event().unwrap().id, None);
        assert_eq!(parser.last_event_id.as_deref(), Some("7"));
    }

    fn url_error(url: &str) -> String {
        match parse_base_url(url) {
            Ok(_) => panic!("{url} was accepted"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn base_url_must_be_https_with_a_host() {
        assert!(url_error("http://127.0.0.1:7440").contains("https only"));
        assert!(url_error("127.0.0.1:7440").contains("expected https://host:port"));
        assert!(url_error("ftp://host").contains("scheme must be https"));
        assert!(url_error("https://").contains("https://host:port"));
        assert!(url_error("https://u:p@host:1").contains("user info"));
        assert!(url_error("https://host:1/?a=b").contains("query"));
        assert!(url_error("not a url at all").starts_with("bad url \"not a url at all\""));
    }

    #[test]
    fn base_url_parts() {
        let target = parse_base_url("https://127.0.0.1:7440").unwrap();
        assert_eq!((target.host.as_str(), target.port), ("127.0.0.1", 7440));
        assert!(matches!(target.server_name, ServerName::IpAddress(_)));
        assert_eq!(target.authority, "127.0.0.1:7440");
        assert_eq!(target.prefix, "");

        let target = parse_base_url("https://[::1]:7440/").unwrap();
        assert_eq!(target.host, "::1");
        assert!(matches!(target.server_name, ServerName::IpAddress(_)));
        assert_eq!(target.authority, "[::1]:7440");
        assert_eq!(target.base_url, "https://[::1]:7440");

        let target = parse_base_url("https://node1.example/herd/").unwrap();
        assert_eq!((target.host.as_str(), target.port), ("node1.example", 443));
        assert!(matches!(target.server_name, ServerName::DnsName(_)));
        assert_eq!(target.prefix, "/herd");
    }

    #[test]
    fn status_error_carries_the_json_error() {
        let body = br#"{"error":{"code":"compacted","message":"revision 3 left the log"}}"#;
        let error = status_error(StatusCode::GONE, body);
        assert_eq!(error.code(), Some("compacted"));
        assert_eq!(
            error.to_string(),
            "server answered 410 Gone (compacted): revision 3 left the log"
        );
        let error = status_error(StatusCode::BAD_GATEWAY, b"<html>oops</html>");
        assert_eq!(error.code(), None);
        assert_eq!(
            error.to_string(),
            "server answered 502 Bad Gateway: <html>oops</html>"
        );
    }

    /// A TLS server on 127.0.0.1:0 with the node's TLS config, answering from a tiny router.
    /// Returns the base URL, the CA and a counter of accepted connections.
    mod server {
        use super::super::*;
        use hyper_util::rt::TokioIo;
        use std::io;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::net::TcpListener;
        use tokio::task::JoinHandle;

        pub struct TestServer {
            pub url: String,
            pub ca: Vec<u8>,
            pub connections: Arc<AtomicUsize>,
            _dir: tempfile::TempDir,
            task: JoinHandle<()>,
        }

        impl Drop for TestServer {
            fn drop(&mut self) {
                self.task.abort();
            }
        }

        async fn route(request: Request<Incoming>) -> hyper::Response<Full<Bytes>> {
            let auth = request
                .headers()
                .get(AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_string());
            let path = request.uri().path().to_string();
            let method = request.method().clone();
            let content_type = request
                .headers()
                .get(CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_string());
            let host = request.headers().get(HOST).cloned();
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let json = |status: u16, body: String| {
                hyper::Response::builder()
                    .status(status)
                    .header(CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap()
            };
            if auth.as_deref() != Some("Bearer secret") {
                return json(
                    401,
                    r#"{"error":{"code":"unauthorized","message":"no token"}}"#.into(),
                );
            }
            match (method.as_str(), path.as_str()) {
                ("PUT", "/v1/kv/echo") => json(
                    200,
                    serde_json::json!({
                        "body": String::from_utf8_lossy(&body),
                        "content_type": content_type,
                        "host": host.map(|h| h.to_str().unwrap().to_string()),
                    })
                    .to_string(),
                ),
                ("GET", "/v1/watch/app") => hyper::Response::builder()
                    .header(CONTENT_TYPE, "text/event-stream")
                    .body(Full::new(Bytes::from_static(
                        b": keep-alive\n\nevent: put\nid: 1\ndata: {\"a\":1}\n\n\
                          event: synced\nid: 1\ndata: {\"type\":\"synced\"}\n\n",
                    )))
                    .unwrap(),
                ("GET", "/v1/watch/old") => json(
                    410,
                    r#"{"error":{"code":"compacted","message":"start again"}}"#.into(),
                ),
                _ => json(
                    404,
                    r#"{"error":{"code":"not_found","message":"nothing here"}}"#.into(),
                ),
            }
        }

        /// `drop_second`: the second request on every connection is not answered; the server
        /// drops the connection instead, as a server does that closes an idle keep-alive
        /// connection just as a request arrives.
        pub async fn start(drop_second: bool) -> TestServer {
            let dir = tempfile::tempdir().unwrap();
            let config = crate::tls::load_or_create_api_tls(dir.path(), None, &[]).unwrap();
            let ca = std::fs::read(dir.path().join("tls/ca.crt")).unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("https://{}", listener.local_addr().unwrap());
            let connections = Arc::new(AtomicUsize::new(0));
            let counter = Arc::clone(&connections);
            let task = tokio::spawn(async move {
                loop {
                    let (tcp, _) = listener.accept().await.unwrap();
                    counter.fetch_add(1, Ordering::SeqCst);
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let Ok(tls) =
                            crate::tls::accept(&acceptor, tcp, Duration::from_secs(5)).await
                        else {
                            return;
                        };
                        let served = Arc::new(AtomicUsize::new(0));
                        let service = hyper::service::service_fn(move |request| {
                            let n = served.fetch_add(1, Ordering::SeqCst);
                            async move {
                                if drop_second && n == 1 {
                                    return Err(io::Error::other("dropping the connection"));
                                }
                                Ok(route(request).await)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
            TestServer {
                url,
                ca,
                connections,
                _dir: dir,
                task,
            }
        }
    }

    use std::sync::atomic::Ordering;

    #[tokio::test]
    async fn requests_reuse_one_keep_alive_connection() {
        let server = server::start(false).await;
        let client = Client::new(&server.url, Some("secret".into()), &server.ca).unwrap();
        for i in 0..5 {
            let body = Bytes::from(format!("{{\"n\":{i}}}"));
            let response = client
                .request(Method::PUT, "/v1/kv/echo", &[], Some(body))
                .await
                .unwrap();
            assert_eq!(response.status, StatusCode::OK);
            let json = response.json().unwrap();
            assert_eq!(json["body"], format!("{{\"n\":{i}}}"));
            assert_eq!(json["content_type"], "application/json");
            assert_eq!(json["host"], server.url.trim_start_matches("https://"));
        }
        assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn caller_content_type_and_error_codes() {
        let server = server::start(false).await;
        let client = Client::new(&server.url, Some("secret".into()), &server.ca).unwrap();
        let headers = [(CONTENT_TYPE, "text/plain".to_string())];
        let response = client
            .request(Method::PUT, "/v1/kv/echo", &headers, Some(Bytes::from("x")))
            .await
            .unwrap();
        assert_eq!(response.json().unwrap()["content_type"], "text/plain");

        let response = client
            .request(Method::GET, "/v1/kv/missing", &[], None)
            .await
            .unwrap();
        assert_eq!(response.status, StatusCode::NOT_FOUND);
        assert_eq!(response.error_code().as_deref(), Some("not_found"));
        let error = response.error_for_status().unwrap_err();
        assert_eq!(error.code(), Some("not_found"));

        let anonymous = Client::new(&server.url, None, &server.ca).unwrap();
        let response = anonymous
            .request(Method::GET, "/v1/kv/a", &[], None)
            .await
            .unwrap();
        assert_eq!(response.error_code().as_deref(), Some("unauthorized"));
    }

    #[tokio::test]
    async fn a_dropped_connection_is_retried_only_for_reads() {
        let server = server::start(true).await;
        let client = Client::new(&server.url, Some("secret".into()), &server.ca).unwrap();
        let get = || client.request(Method::GET, "/v1/kv/a", &[], None);
        assert_eq!(get().await.unwrap().status, StatusCode::NOT_FOUND);
        // Second request on connection 1 is dropped: the GET is retried on connection 2.
        assert_eq!(get().await.unwrap().status, StatusCode::NOT_FOUND);
        assert_eq!(server.connections.load(Ordering::SeqCst), 2);
        // Second request on connection 2 is dropped: a POST is not retried.
        let post = client.request(Method::POST, "/v1/batch", &[], Some(Bytes::from("{}")));
        let error = post.await.unwrap_err();
        assert!(matches!(error, Error::Http { .. }), "{error}");
        assert_eq!(server.connections.load(Ordering::SeqCst), 2);
        // Nor a PUT (idempotent in HTTP, but herd's server may have made the write).
        assert_eq!(get().await.unwrap().status, StatusCode::NOT_FOUND);
        let put = client.request(Method::PUT, "/v1/kv/echo", &[], Some(Bytes::from("1")));
        let error = put.await.unwrap_err();
        assert!(matches!(error, Error::Http { .. }), "{error}");
        assert_eq!(server.connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn events_stream_and_status_errors() {
        let server = server::start(false).await;
        let client = Client::new(&server.url, Some("secret".into()), &server.ca).unwrap();
        let mut stream = client.events("/v1/watch/app", &[]).await.unwrap();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first, event("put", Some("1"), "{\"a\":1}"));
        let second = stream.next().await.unwrap().unwrap();
        assert_eq!(second.event, "synced");
        assert!(stream.next().await.is_none());
        assert_eq!(stream.last_event_id(), Some("1"));

        match client.events("/v1/watch/old", &[]).await {
            Err(Error::Status {
                status,
                code,
                message,
            }) => {
                assert_eq!(status, StatusCode::GONE);
                assert_eq!(code.as_deref(), Some("compacted"));
                assert_eq!(message, "start again");
            }
            Err(other) => panic!("unexpected error: {other}"),
            Ok(_) => panic!("a 410 became a stream"),
        }
    }

    #[tokio::test]
    async fn connection_refused_names_the_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        drop(listener);
        let ca = {
            let dir = tempfile::tempdir().unwrap();
            crate::tls::load_or_create_api_tls(dir.path(), None, &[]).unwrap();
            std::fs::read(dir.path().join("tls/ca.crt")).unwrap()
        };
        let client = Client::new(&url, None, &ca).unwrap();
        let error = client
            .request(Method::GET, "/v1/health", &[], None)
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("cannot connect to {url}: connection refused")
        );
    }

    #[tokio::test]
    async fn wrong_ca_is_a_tls_error() {
        let server = server::start(false).await;
        let other = tempfile::tempdir().unwrap();
        crate::tls::load_or_create_api_tls(other.path(), None, &[]).unwrap();
        let other_ca = std::fs::read(other.path().join("tls/ca.crt")).unwrap();
        let client = Client::new(&server.url, None, &other_ca).unwrap();
        let error = client
            .request(Method::GET, "/v1/health", &[], None)
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Tls { .. }), "{error}");
        assert!(
            error.to_string().contains("invalid peer certificate"),
            "{error}"
        );
    }
}
