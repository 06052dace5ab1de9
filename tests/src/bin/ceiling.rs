//! `ceiling`: the benchmark's upper bound, the fastest thing a herd node could be. A bare hyper +
//! tokio-rustls HTTPS server that keeps `/v1/kv/<key>` bodies in a `HashMap`: no path grammar,
//! JSON parsing, versions, durability or replication, but the work every HTTPS key-value
//! endpoint must do (TLS, HTTP/1.1 keep-alive, a bearer-token check, reading a bounded body, a
//! JSON answer), so `herd-bench` can show how close a node comes to it.
//!
//! Must not know anything of herd beyond the URL shapes and JSON answers of `docs/api.md`.
//!
//! Usage: `ceiling [--addr 127.0.0.1:0] [--token bench] [--cert-out FILE]`. The first line on
//! stdout is `listening on https://ADDR`; `--cert-out` writes the self-signed certificate (PEM),
//! which a client passes as its CA.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::PrivatePkcs8KeyDer;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const USAGE: &str = "ceiling [--addr 127.0.0.1:0] [--token bench] [--cert-out FILE]";
/// Bodies above this are refused with 413, as a real node refuses them.
const MAX_BODY: usize = 1024 * 1024;
/// A client that has not finished the TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

struct State {
    /// The bearer token every request must carry.
    token: String,
    /// Stored bodies by path, and the revision of the last write (bumped under the same lock,
    /// so revisions are ordered like the writes).
    values: Mutex<(HashMap<String, Bytes>, u64)>,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ceiling: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let (mut addr, mut token, mut cert_out) =
        ("127.0.0.1:0".to_string(), "bench".to_string(), None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--addr" => addr = value()?,
            "--token" => token = value()?,
            "--cert-out" => cert_out = Some(value()?),
            _ => bail!("unknown argument {arg:?}; usage: {USAGE}"),
        }
    }
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("--addr {addr:?} is not ip:port"))?;

    let names = vec!["localhost".to_string(), addr.ip().to_string()];
    let certified =
        rcgen::generate_simple_self_signed(names).context("cannot make a certificate")?;
    if let Some(path) = cert_out {
        std::fs::write(&path, certified.cert.pem())
            .with_context(|| format!("cannot write {path}"))?;
    }
    let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key.into())?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));

    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on https://{}", listener.local_addr()?)?;
    stdout.flush()?;

    let state = Arc::new(State {
        token,
        values: Mutex::new((HashMap::new(), 0)),
    });
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors, typically: back off instead of spinning.
                eprintln!("ceiling: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, state) = (acceptor.clone(), Arc::clone(&state));
        tokio::spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return;
            };
            let service =
                hyper::service::service_fn(move |request| handle(Arc::clone(&state), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let auth = request.headers().get(header::AUTHORIZATION);
    let token = auth.and_then(|v| v.to_str().ok()?.strip_prefix("Bearer "));
    if token != Some(state.token.as_str()) {
        return Ok(error(StatusCode::UNAUTHORIZED, "unauthorized"));
    }
    let Some(key) = request.uri().path().strip_prefix("/v1/kv/") else {
        return Ok(error(StatusCode::NOT_FOUND, "not_found"));
    };
    let key = key.to_string();
    let answer = match *request.method() {
        Method::PUT => {
            let Ok(body) = Limited::new(request.into_body(), MAX_BODY).collect().await else {
                return Ok(error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));
            };
            let mut values = state.values.lock().unwrap_or_else(PoisonError::into_inner);
            values.0.insert(key, body.to_bytes());
            values.1 += 1;
            let revision = values.1;
            json(
                StatusCode::OK,
                format!(r#"{{"version":"{revision}","revision":{revision}}}"#),
            )
        }
        Method::GET => {
            let values = state.values.lock().unwrap_or_else(PoisonError::into_inner);
            match values.0.get(&key) {
                Some(body) => json(StatusCode::OK, body.clone()),
                None => error(StatusCode::NOT_FOUND, "not_found"),
            }
        }
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
    };
    Ok(answer)
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let json = header::HeaderValue::from_static("application/json");
    response.headers_mut().insert(header::CONTENT_TYPE, json);
    response
}

/// A JSON error as herd sends it; the message is the status reason.
fn error(status: StatusCode, code: &str) -> Response<Full<Bytes>> {
    let message = status.canonical_reason().unwrap_or("error").to_lowercase();
    json(
        status,
        format!(r#"{{"error":{{"code":"{code}","message":"{message}"}}}}"#),
    )
}
