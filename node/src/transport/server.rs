//! The HTTPS server loop the client API and the peer port share: connection limits (in all and
//! per client address), the accept loop (backing off when accept fails), the TLS step, and one
//! HTTP/1.1 keep-alive connection per task that ends gracefully on shutdown.
//!
//! No client can take every connection: one address holds at most `max_per_client`, a response
//! write that makes no progress for `write` ends its connection (a client that stops reading),
//! and past either limit a few spare connections (two per address at most) are still accepted
//! and served as overloaded (short timeouts, one request each, for the server to answer
//! `/v1/health` and refuse the rest), so a health check keeps its answer; past those, a
//! connection is closed at once.
//!
//! Must not know about routes: each server passes a function that makes the service of one
//! connection.

use super::Body;
use crate::slots::Slots;
use http::{Request, Response};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connections accepted beyond `max_connections`, served as overloaded.
const SPARE_CONNECTIONS: usize = 16;
/// Spare connections one client address may hold: the rest are for others' health checks.
const SPARE_PER_CLIENT: usize = 2;
/// The handshake and header time of a spare connection.
const SPARE_TIMEOUT: Duration = Duration::from_secs(2);

/// Limits of one server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections from one client address at once; more are closed as soon as accepted.
    pub max_per_client: usize,
    /// Time for the TLS handshake.
    pub handshake: Duration,
    /// Time for a request's headers (also the idle time of a keep-alive connection).
    pub headers: Duration,
    /// Time a response write may make no progress before its connection is closed.
    pub write: Duration,
}

/// Serves `listener` until `cancel` fires; every connection task joins `tracker`. For each
/// accepted connection, `make(peer, overloaded)` gives the service that answers its requests
/// and a guard that lives as long as the connection (e.g. a metric's counter); `overloaded`
/// says the connection is a spare one, past `max_connections`. `what` names the server in
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
    M: Fn(SocketAddr, bool) -> (S, G),
    S: Fn(Request<Incoming>) -> F + Send + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
    G: Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let conns = Arc::new(Semaphore::new(limits.max_connections));
    let spare = Arc::new(Semaphore::new(SPARE_CONNECTIONS));
    let clients = Arc::new(Slots::<IpAddr>::default());
    let spare_clients = Arc::new(Slots::<IpAddr>::default());
    loop {
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
        // Past its address's share or the limit in all, a connection may still have a spare
        // place (answering only health checks); past that it is closed at once.
        let slot = clients.take(&peer.ip(), limits.max_per_client);
        let permit = match &slot {
            Some(_) => conns.clone().try_acquire_owned().ok(),
            None => None,
        };
        let spare_slot = match permit {
            Some(_) => None,
            None => spare_clients.take(&peer.ip(), SPARE_PER_CLIENT),
        };
        let (permit, overloaded) = match (permit, &spare_slot) {
            (Some(p), _) => (p, false),
            (None, Some(_)) => match spare.clone().try_acquire_owned() {
                Ok(p) => (p, true),
                Err(_) => {
                    tracing::debug!(%peer, "{what}: no connection left for this client; closed");
                    continue;
                }
            },
            (None, None) => {
                tracing::debug!(%peer, "{what}: no connection left for this client; closed");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (service, guard) = make(peer, overloaded);
        let (acceptor, cancel) = (acceptor.clone(), cancel.clone());
        let (handshake, headers) = if overloaded {
            (SPARE_TIMEOUT, SPARE_TIMEOUT)
        } else {
            (limits.handshake, limits.headers)
        };
        tracker.spawn(async move {
            let _held = (permit, slot, spare_slot, guard);
            let stream = match crate::tls::accept(&acceptor, tcp, handshake).await {
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
            let io = WriteTimeout {
                inner: stream,
                limit: limits.write,
                stalled: None,
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(headers)
                .keep_alive(!overloaded)
                .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
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

/// A stream whose writes fail once they have made no progress for `limit`: a client that
/// stops reading cannot hold its connection, and what is buffered for it, forever.
struct WriteTimeout<S> {
    inner: S,
    limit: Duration,
    /// Running while a write or flush waits.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteTimeout<S> {
    /// Called when a write or flush could not go on: fails once that has lasted `limit`.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {limit:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(&mut self, p: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match p {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.stalled(cx),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.progress(p, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.progress(p, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.inner).poll_flush(cx);
        this.progress(p, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
