//! herd's test harness: real nodes with real TLS on loopback, shut down when dropped.
//!
//! - [`TestNode`]: a node started in-process (`node::node::start`) in a temp dir on
//!   `127.0.0.1:0`, with a client holding the bootstrap admin token.
//! - [`ChildNode`]: a `herd serve` child process (for crash tests and the CLI), found next to
//!   the test binary in the target directory (or at `$HERD_BIN`).
//! - [`Cli`]: runs the `herd` binary as a user would and captures its output.
//! - [`mount::MountedNode`]: a `herd serve --mount` child and shell commands run in its mount.
//! - [`faultfs::FaultMount`]: a fault-injecting FUSE file system to run a node's data directory
//!   on, for disk faults and power cuts.

pub mod cluster;
pub mod faultfs;
pub mod mount;
pub mod plugins;

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderName, Method};
use node::client::{Client, Response};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A test that cannot run here says why and stops (the caller returns after this), or fails
/// under `HERD_TEST_STRICT` (set by `tests/run.sh` under CI), where it must run.
pub fn skip(why: &str) {
    assert!(
        std::env::var_os("HERD_TEST_STRICT").is_none(),
        "{why} (HERD_TEST_STRICT is set, so this is a failure)"
    );
    eprintln!("SKIPPED: {why}");
}

/// Polls `f` every 10 ms until it returns `Some`, or fails after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A test configuration for a node in `dir` listening on an ephemeral loopback port.
pub fn test_config(dir: &Path) -> node::config::Config {
    let mut config = node::config::Config {
        data_dir: dir.to_path_buf(),
        ..node::config::Config::default()
    };
    config.api.addr = "127.0.0.1:0".parse().expect("literal address");
    config
}

/// A client for the node whose data dir is `dir`, with its admin token and CA.
pub fn admin_client(dir: &Path, url: &str) -> Client {
    let token = std::fs::read_to_string(dir.join("admin.token")).expect("admin.token exists");
    let ca = std::fs::read(dir.join("tls/ca.crt")).expect("tls/ca.crt exists");
    Client::new(url, Some(token.trim().to_owned()), &ca).expect("client")
}

/// An in-process node.
pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub handle: Option<node::node::NodeHandle>,
    pub url: String,
    /// Holds the bootstrap admin token.
    pub client: Client,
}

impl TestNode {
    pub async fn start() -> TestNode {
        TestNode::start_with(|_| {}).await
    }

    /// Starts a node after `tweak` adjusted its config.
    pub async fn start_with(tweak: impl FnOnce(&mut node::config::Config)) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(dir.path());
        tweak(&mut config);
        let handle = node::node::start(config).await.expect("node starts");
        let url = node::node::local_url(handle.api_addr);
        let client = admin_client(dir.path(), &url);
        TestNode {
            dir,
            handle: Some(handle),
            url,
            client,
        }
    }

    /// A client with another token (or none).
    pub fn client_with(&self, token: Option<&str>) -> Client {
        let ca = std::fs::read(self.dir.path().join("tls/ca.crt")).expect("ca");
        Client::new(&self.url, token.map(str::to_owned), &ca).expect("client")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client
            .request(Method::GET, path, &[], None)
            .await
            .expect("request")
    }

    pub async fn put(&self, path: &str, body: &str) -> Response {
        self.client
            .request(Method::PUT, path, &[], Some(Bytes::from(body.to_owned())))
            .await
            .expect("request")
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, String)],
        body: Option<&str>,
    ) -> Response {
        let body = body.map(|b| Bytes::from(b.to_owned()));
        self.client
            .request(method, path, headers, body)
            .await
            .expect("request")
    }

    /// The whole document.
    pub async fn doc(&self) -> serde_json::Value {
        self.get("/v1/kv/").await.json().expect("json document")
    }

    pub async fn shutdown(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }
}

/// The `herd` binary of this build.
pub fn herd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HERD_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/all-<hash> -> target/<profile>/herd
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("herd");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p node --bin herd`",
        bin.display()
    );
    bin
}

/// A `herd serve` child process on an ephemeral port.
pub struct ChildNode {
    pub dir: PathBuf,
    pub child: Child,
    pub url: String,
}

impl ChildNode {
    /// Starts `herd serve` on `dir` and waits until its API answers.
    pub async fn start(dir: &Path) -> anyhow::Result<ChildNode> {
        ChildNode::start_with_args(dir, &[]).await
    }

    /// Starts `herd serve ARGS` on `dir` and waits until its API answers.
    pub async fn start_with_args(dir: &Path, args: &[&str]) -> anyhow::Result<ChildNode> {
        ChildNode::start_at(dir, "127.0.0.1:0", args).await
    }

    /// As [`ChildNode::start_with_args`], with the API on `addr` (to restart on one address).
    pub async fn start_at(dir: &Path, addr: &str, args: &[&str]) -> anyhow::Result<ChildNode> {
        ChildNode::spawn(dir, addr, args, &[], Stdio::inherit()).await
    }

    /// As [`ChildNode::start_with_args`], with these environment variables (`LD_PRELOAD` of
    /// libfaketime, say).
    pub async fn start_with_env(
        dir: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> anyhow::Result<ChildNode> {
        ChildNode::spawn(dir, "127.0.0.1:0", args, envs, Stdio::inherit()).await
    }

    /// As [`ChildNode::start`], with the node's log in `log`, whose text a failed start's
    /// error ends with.
    pub async fn start_logged(dir: &Path, log: &Path) -> anyhow::Result<ChildNode> {
        let file = std::fs::File::create(log).context("create the log file")?;
        ChildNode::spawn(dir, "127.0.0.1:0", &[], &[], file.into())
            .await
            .map_err(|e| {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                anyhow::anyhow!("{e:#}: {text}")
            })
    }

    async fn spawn(
        dir: &Path,
        addr: &str,
        args: &[&str],
        envs: &[(&str, &str)],
        stderr: Stdio,
    ) -> anyhow::Result<ChildNode> {
        let _ = std::fs::remove_file(dir.join("node.json"));
        let child = Command::new(herd_bin())
            .args(["serve", "--api-addr", addr, "--data-dir"])
            .arg(dir)
            .args(args)
            .env("HERD_LOG", "warn")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("spawn herd serve")?;
        let mut node = ChildNode {
            dir: dir.to_path_buf(),
            child,
            url: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = node.child.try_wait()? {
                anyhow::bail!("herd serve exited early with {status}");
            }
            if let Ok(s) = std::fs::read_to_string(dir.join("node.json")) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&s) {
                    node.url = v["api"].as_str().unwrap_or_default().to_owned();
                    let c = admin_client(dir, &node.url);
                    // Alive, not healthy: a node may refuse writes from its first moments
                    // (a clock ahead of its peers'), and tests look at why.
                    if let Ok(r) = c.request(Method::GET, "/v1/livez", &[], None).await {
                        if r.status == 200 {
                            return Ok(node);
                        }
                    }
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "herd serve did not answer within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn client(&self) -> Client {
        admin_client(&self.dir, &self.url)
    }

    /// SIGTERM, then waits up to 10 s for a graceful exit (SIGKILL after that); the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
        None
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs the `herd` CLI.
pub struct Cli {
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub stdin: Option<String>,
}

/// What a CLI run printed and returned.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Cli {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(args: I) -> Cli {
        Cli {
            args: args.into_iter().map(Into::into).collect(),
            envs: Vec::new(),
            cwd: None,
            stdin: None,
        }
    }

    pub fn env(mut self, k: &str, v: &str) -> Cli {
        self.envs.push((k.into(), v.into()));
        self
    }

    pub fn cwd(mut self, dir: &Path) -> Cli {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    pub fn stdin(mut self, s: &str) -> Cli {
        self.stdin = Some(s.into());
        self
    }

    pub fn run(self) -> CliOutput {
        use std::io::Write;
        let mut cmd = Command::new(herd_bin());
        cmd.args(&self.args)
            .env_remove("HERD_TOKEN")
            .env_remove("HERD_NODE")
            .env_remove("HERD_DATA_DIR")
            .env_remove("HERD_CA_CERT");
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn herd");
        if let Some(input) = &self.stdin {
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(input.as_bytes())
                .expect("write stdin");
        }
        let out = child.wait_with_output().expect("herd runs");
        CliOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl TestNode {
    /// `host:port` of the node's API.
    pub fn addr(&self) -> String {
        self.url.trim_start_matches("https://").to_owned()
    }

    /// The node's CA certificate (PEM).
    pub fn ca(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("tls/ca.crt")).expect("ca")
    }

    /// The node's revision as `GET /v1/kv/` reports it in `X-Herd-Revision`.
    pub async fn revision(&self) -> u64 {
        let r = self.get("/v1/kv/").await;
        assert_eq!(r.status, 200, "GET /v1/kv/: {:?}", r.body);
        header_u64(&r, "x-herd-revision")
    }

    /// Creates a token with `role` (and `prefix`) through the API and returns its secret.
    pub async fn token(&self, name: &str, role: &str, prefix: Option<&str>) -> String {
        let mut body = serde_json::json!({"name": name, "role": role});
        if let Some(p) = prefix {
            body["prefix"] = p.into();
        }
        let r = self
            .send(Method::POST, "/v1/tokens", &[], Some(&body.to_string()))
            .await;
        assert_eq!(r.status, 201, "create token {name}: {:?}", r.body);
        r.json().expect("json")["token"]
            .as_str()
            .expect("token secret")
            .to_owned()
    }
}

/// A numeric response header.
pub fn header_u64(r: &Response, name: &str) -> u64 {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .expect("ascii header")
        .parse()
        .expect("numeric header")
}

/// The value of an `Authorization` header for basic auth.
pub fn basic_auth(user: &str, password: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}");
    let mut out = String::new();
    for chunk in input.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

/// A response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// The status line and headers, as sent.
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not json ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Reads one HTTP/1.1 response (with `Content-Length`, or up to EOF) from `stream`.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> anyhow::Result<RawResponse> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream
            .read(&mut chunk)
            .await
            .context("read response head")?;
        anyhow::ensure!(
            n > 0,
            "connection closed before a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("status line")?;
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    let mut body = buf[head_end..].to_vec();
    loop {
        if length.is_some_and(|len| body.len() >= len) {
            break;
        }
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            // A close without TLS close_notify ends the body as well.
            Err(_) if length.is_none() => break,
            Err(e) => return Err(e).context("read response body"),
        }
    }
    Ok(RawResponse { status, head, body })
}

/// Sends `request` as raw bytes over TLS (trusting `ca_pem`) to `addr` and reads the response.
/// For requests the client cannot express, such as a chunked body without `Content-Length`.
pub async fn raw_https(addr: &str, ca_pem: &[u8], request: &[u8]) -> anyhow::Result<RawResponse> {
    use tokio::io::AsyncWriteExt;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .context("connect")?;
    let connector = tokio_rustls::TlsConnector::from(node::tls::client_config(ca_pem)?);
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("literal name");
    let tls = connector
        .connect(name, tcp)
        .await
        .context("tls handshake")?;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let request = request.to_vec();
    // Write while reading: the server may answer (413) before it has read everything.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        let _ = wr.flush().await;
        wr
    });
    let response = tokio::time::timeout(Duration::from_secs(10), read_response(&mut rd))
        .await
        .context("no response within 10 s")??;
    writer.abort();
    Ok(response)
}

/// Sends `request` over TLS to `addr` and returns the connection without reading anything: a
/// client that stopped reading. Dropping it closes the connection.
pub async fn stalled_https(
    addr: &str,
    ca_pem: &[u8],
    request: &[u8],
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use tokio::io::AsyncWriteExt;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .context("connect")?;
    let connector = tokio_rustls::TlsConnector::from(node::tls::client_config(ca_pem)?);
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("literal name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .context("tls handshake")?;
    tls.write_all(request).await.context("write")?;
    tls.flush().await.context("flush")?;
    Ok(tls)
}

/// Sends `request` as plaintext to `addr` (an HTTPS port) and reads the response.
pub async fn raw_plaintext(addr: &str, request: &[u8]) -> anyhow::Result<RawResponse> {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .context("connect")?;
    tcp.write_all(request).await.context("write")?;
    tokio::time::timeout(Duration::from_secs(10), read_response(&mut tcp))
        .await
        .context("no response within 10 s")?
}

/// The next event of a watch, failing the test if none arrives within `timeout` or the stream
/// ends or fails.
pub async fn next_event(
    stream: &mut node::client::EventStream,
    timeout: Duration,
) -> node::client::SseEvent {
    match tokio::time::timeout(timeout, stream.next()).await {
        Err(_) => panic!("no watch event within {timeout:?}"),
        Ok(None) => panic!("the watch stream ended"),
        Ok(Some(Err(e))) => panic!("the watch stream failed: {e}"),
        Ok(Some(Ok(ev))) => ev,
    }
}

/// The next event of a watch as `(event type, data as JSON)`.
pub async fn next_json(stream: &mut node::client::EventStream) -> (String, serde_json::Value) {
    let ev = next_event(stream, Duration::from_secs(5)).await;
    let data = serde_json::from_str(&ev.data)
        .unwrap_or_else(|e| panic!("event data is not json ({e}): {:?}", ev.data));
    (ev.event, data)
}
