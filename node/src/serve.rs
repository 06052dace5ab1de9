//! The HTTPS server loop the client API and the peer port share: a connection limit, the accept
//! loop (backing off when accept fails), the TLS step, and one HTTP/1.1 keep-alive connection
//! per task that ends gracefully on shutdown.
//!
//! Must not know about routes: each server passes a function that makes the service of one
//! connection.

use crate::api::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Limits of one server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Time for the TLS handshake.
    pub handshake: Duration,
    /// Time for a request's headers (also the idle time of a keep-alive connection).
    pub headers: Duration,
}

/// Serves `listener` until `cancel` fires; every connection task joins `tracker`. For each
/// accepted connection, `make(peer)` gives the service that answers its requests and a guard
/// that lives as long as the connection (e.g. a metric's counter). `what` names the server in
/// logs.
pub async fn serve<M, S, F, G>(
    what: &'static str,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: Limits,
    make: M,
    cancel: CancellationToken,
    tracker: TaskTracker,
) where
    M: Fn(SocketAddr) -> (S, G),
    S: Fn(Request<Incoming>) -> F + Send + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
    G: Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let conns = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = conns.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "{what}: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (service, guard) = make(peer);
        let (acceptor, cancel) = (acceptor.clone(), cancel.clone());
        tracker.spawn(async move {
            let _held = (permit, guard);
            let stream = match crate::tls::accept(&acceptor, tcp, limits.handshake).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "{what}: connection refused before HTTP");
                    return;
                }
            };
            let svc = hyper::service::service_fn(move |req| {
                let answer = service(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.headers)
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "{what}: connection ended with an error");
                    }
                }
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}
