//! The one HTTPS client pool: hyper-util's pooled client (keep-alive HTTP/1.1 connections,
//! reused while they stay open, dropped after [`IDLE_TIMEOUT`]) over a connector that dials one
//! fixed address and makes the TLS handshake with the caller's rustls configuration. The REST
//! API client (`client`) dials its base URL's host and checks the node's CA; a peer client
//! (`cluster::peer`) dials a peer's address and checks the cluster's CA.
//!
//! Timeouts: opening a connection (TCP, TLS) is bounded here; a whole call is bounded by its
//! caller, who knows what it waits for (a watch stream waits for ever).

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long an idle connection is kept: less than the servers' idle time (the API's header
/// timeout, 10 s by default; the peer port's 30 s), so a connection is seldom reused just as the
/// server closes it (and a request that meets such a close before it is written is resent).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(8);

/// Why a call failed. Messages are complete phrases ("connection refused"), for the caller to
/// prefix with what it called.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// No TCP connection.
    #[error("{0}")]
    Connect(String),
    /// The TLS handshake failed (a certificate that does not check, for one).
    #[error("{0}")]
    Tls(String),
    /// No connection within the connect timeout.
    #[error("no connection within {} s", .0.as_secs())]
    Timeout(Duration),
    /// The HTTP exchange failed after the connection was made.
    #[error("{0}")]
    Http(String),
}

/// Where a pool connects.
#[derive(Debug, Clone)]
pub enum Target {
    /// A DNS name or an IP address (without brackets), resolved at every connection.
    Host(String, u16),
    /// An address (an IPv6 link-local one keeps its scope).
    Addr(std::net::SocketAddr),
}

/// Where to connect and how to check the server.
#[derive(Clone)]
pub struct Dial {
    pub target: Target,
    /// The name the server's certificate must be valid for (sent as SNI unless an address).
    pub server_name: ServerName<'static>,
    pub tls: Arc<rustls::ClientConfig>,
    /// Time for TCP connect and the TLS handshake.
    pub connect_timeout: Duration,
}

/// Keep-alive connections to one server. Cheap to clone; clones share the connections.
#[derive(Clone)]
pub struct Pool {
    client: Client<Connector, Full<Bytes>>,
    tasks: Tasks,
}

/// Where the pool's tasks (one per connection, and the idle reaper) run: in a node, on its
/// tracker, each dropped (its connection closed) when the node's `cancel` fires, so shutdown
/// waits for them and they end at once; in a command-line client, on the runtime, which ends
/// with the command.
#[derive(Clone)]
pub enum Tasks {
    Node(TaskTracker, CancellationToken),
    Runtime,
}

impl<F> hyper::rt::Executor<F> for Tasks
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        match self {
            Tasks::Node(tracker, cancel) => {
                let cancel = cancel.clone();
                tracker.spawn(async move {
                    tokio::select! {
                        _ = fut => {}
                        _ = cancel.cancelled() => {}
                    }
                });
            }
            Tasks::Runtime => {
                tokio::spawn(fut);
            }
        }
    }
}

impl Pool {
    /// A pool that keeps at most `max_idle` idle connections, its tasks on `tasks`.
    pub fn new(dial: Dial, max_idle: usize, tasks: Tasks) -> Pool {
        let connector = Connector {
            tls: TlsConnector::from(dial.tls.clone()),
            dial: Arc::new(dial),
        };
        let client = Client::builder(tasks.clone())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(max_idle)
            // Callers set `host` themselves (a peer's is the cluster's name, not an address).
            .set_host(false)
            .build(connector);
        Pool { client, tasks }
    }

    /// Sends a request whose URI is absolute (`https://authority/path`; the authority keys
    /// the pool, the connection always goes to the dialled address) and answers with the
    /// response head; the body streams. A request whose keep-alive connection closed before
    /// the request was written is sent again on another (hyper-util does this); a read-only
    /// request (`GET`, `HEAD`) that fails later on an open connection is sent once more on a
    /// new one. A write is never sent twice: the server may have made it.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, Error> {
        if let Tasks::Node(_, cancel) = &self.tasks {
            if cancel.is_cancelled() {
                return Err(Error::Connect("this node is shutting down".into()));
            }
        }
        let retry = req.method().is_safe().then(|| copy(&req));
        match (self.client.request(req).await, retry) {
            (Ok(resp), _) => Ok(resp),
            (Err(e), Some(again)) if !e.is_connect() => {
                tracing::debug!(error = %describe_chain(&e), "request failed on an open connection; sending it again");
                self.client.request(again).await.map_err(error)
            }
            (Err(e), _) => Err(error(e)),
        }
    }
}

/// A copy of a request whose body is in memory, for a second try.
fn copy(req: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut c = Request::new(req.body().clone());
    *c.method_mut() = req.method().clone();
    *c.uri_mut() = req.uri().clone();
    *c.version_mut() = req.version();
    *c.headers_mut() = req.headers().clone();
    c
}

/// The pool's error for a failed request: the connector's own error when connecting failed.
fn error(e: hyper_util::client::legacy::Error) -> Error {
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(c) = s.downcast_ref::<Error>() {
            return c.clone();
        }
        source = s.source();
    }
    Error::Http(describe_chain(&e))
}

/// Dials the one address of its pool, whatever the request's URI says.
#[derive(Clone)]
struct Connector {
    dial: Arc<Dial>,
    tls: TlsConnector,
}

impl tower_service::Service<Uri> for Connector {
    type Response = Stream;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (dial, tls) = (self.dial.clone(), self.tls.clone());
        Box::pin(async move {
            let open = async {
                let tcp = match &dial.target {
                    Target::Host(host, port) => TcpStream::connect((host.as_str(), *port)).await,
                    Target::Addr(addr) => TcpStream::connect(addr).await,
                }
                .map_err(|e| Error::Connect(describe_io(&e)))?;
                // Requests are small and latency matters more than packet count.
                let _ = tcp.set_nodelay(true);
                let stream = tls
                    .connect(dial.server_name.clone(), tcp)
                    .await
                    .map_err(|e| Error::Tls(describe_io(&e)))?;
                Ok(Stream(TokioIo::new(stream)))
            };
            tokio::time::timeout(dial.connect_timeout, open)
                .await
                .map_err(|_| Error::Timeout(dial.connect_timeout))?
        })
    }
}

/// A TLS connection as the pooled client drives it.
struct Stream(TokioIo<TlsStream<TcpStream>>);

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// An I/O error as a short lowercase phrase ("connection refused"), with the innermost cause of
/// a wrapped error (such as a TLS certificate error) spelled out.
pub fn describe_io(error: &io::Error) -> String {
    if let Some(inner) = error.get_ref() {
        return inner.to_string();
    }
    let text = error.to_string();
    let text = match text.find(" (os error") {
        Some(cut) => &text[..cut],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// An error and its causes joined by `: `, skipping a cause that repeats the previous text.
pub fn describe_chain(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        let text = match cause.downcast_ref::<io::Error>() {
            Some(io_error) => describe_io(io_error),
            None => cause.to_string(),
        };
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_read_as_lowercase_phrases() {
        let refused = io::Error::from_raw_os_error(111);
        assert_eq!(describe_io(&refused), "connection refused");
        let wrapped = io::Error::other("invalid peer certificate: UnknownIssuer");
        assert_eq!(
            describe_io(&wrapped),
            "invalid peer certificate: UnknownIssuer"
        );
    }
}
