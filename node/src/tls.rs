//! TLS material for the node's client API: the local CA and the API certificate under
//! `DATA/tls/` (or an operator's certificate), the rustls server and client configs, and the
//! accept step that turns a TCP connection into a TLS stream (refusing plaintext HTTP politely).
//!
//! Invariant: this module knows nothing of HTTP routing, tokens or the store. The only HTTP it
//! speaks is the fixed `400 tls_required` answer to a client that sent plaintext.
//!
//! Files (without an operator certificate):
//!
//! - `ca.key` (0600) and `ca.crt` (0644): the self-signed "herd local CA". Clients trust `ca.crt`,
//!   so it is created once and never replaced silently.
//! - `api.key` (0600) and `api.crt` (0644): the API certificate issued by that CA. It is reissued
//!   from the same CA when it is unreadable, does not verify under the CA, expires within 30 days,
//!   or lacks one of the wanted subject alternative names.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The only application protocol the API speaks.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Common name of the CA that a node creates for itself.
const CA_COMMON_NAME: &str = "herd local CA";
/// Common name of the API certificate; clients check the SANs, never this.
const API_COMMON_NAME: &str = "herd api";
/// Validity of the local CA and of the API certificates it issues.
const VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// An API certificate that expires sooner than this is reissued at start.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Certificates start being valid this long before "now", to tolerate clock skew.
const BACKDATE: Duration = Duration::from_secs(24 * 60 * 60);

/// The answer to a client that speaks plaintext HTTP to the HTTPS port.
const TLS_REQUIRED_BODY: &str =
    r#"{"error":{"code":"tls_required","message":"this port speaks HTTPS only; use https://"}}"#;
/// A TLS connection starts with a handshake record, content type 22.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// How much of a plaintext request is read (and discarded) before answering it.
const PLAINTEXT_READ_LIMIT: usize = 16 * 1024;
/// How long to wait for a plaintext client to close after the answer, so that unread request
/// bytes do not turn the close into a reset that would hide the answer.
const PLAINTEXT_LINGER: Duration = Duration::from_secs(1);

/// Errors while loading or creating TLS material. Each message is complete (it includes its
/// cause), so no variant exposes a `source()` that would print twice under `{:#}`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}: {cause}", path.display())]
    Read { path: PathBuf, cause: io::Error },

    #[error("cannot write {}: {cause}", path.display())]
    Write { path: PathBuf, cause: io::Error },

    #[error("cannot parse {}: {cause}", path.display())]
    Pem {
        path: PathBuf,
        cause: rustls::pki_types::pem::Error,
    },

    #[error("{} holds no certificate", path.display())]
    NoCertificate { path: PathBuf },

    #[error(
        "cannot reissue the api certificate: {} is missing (only {} is there); restore the \
         key, or remove {} to create a new CA (clients must then trust the new ca.crt)",
        key.display(), cert.display(), dir.display()
    )]
    CaKeyMissing {
        key: PathBuf,
        cert: PathBuf,
        dir: PathBuf,
    },

    #[error("cannot use CA key {}: {cause}", path.display())]
    CaKey { path: PathBuf, cause: rcgen::Error },

    #[error(
        "the CA certificate {} does not verify the api certificate issued with ca.key \
         (do ca.crt and ca.key belong together, and is the CA still valid?): {cause}",
        path.display()
    )]
    CaMismatch { path: PathBuf, cause: rustls::Error },

    #[error("cannot generate certificate: {0}")]
    Generate(rcgen::Error),

    #[error("subject alternative name {0:?} is neither an IP address nor a valid DNS name")]
    BadSan(String),

    #[error("{} and {} are not a usable certificate chain and key: {cause}", cert.display(), key.display())]
    OperatorCert {
        cert: PathBuf,
        key: PathBuf,
        cause: rustls::Error,
    },

    #[error("cannot build tls config: {0}")]
    Config(rustls::Error),

    #[error("cannot parse ca pem: {0}")]
    CaPem(rustls::pki_types::pem::Error),

    #[error("ca pem holds no certificate")]
    NoCaCertificate,

    #[error("ca certificate is not usable as a trust anchor: {0}")]
    TrustAnchor(rustls::Error),
}

/// Why a connection did not become a TLS stream. Per-connection and never fatal to the server:
/// log it at debug level and drop the connection.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("tls handshake did not finish within {0:?}")]
    Timeout(Duration),

    #[error("client sent plaintext http to the https port; answered 400 tls_required")]
    Plaintext,

    #[error("client closed the connection before the tls handshake")]
    Closed,

    #[error("cannot read from client before the tls handshake: {0}")]
    Io(io::Error),

    #[error("tls handshake failed: {0}")]
    Handshake(io::Error),
}

/// Loads (or, on first start, creates) the TLS material of the client API and builds the server
/// config: ALPN `http/1.1`, the ring provider, no client certificates.
///
/// With `operator` (`(cert chain pem, key pem)`) their files are used as they are and nothing is
/// written. Without it the node's own CA under `data_dir/tls/` issues the API certificate for
/// `localhost`, `127.0.0.1`, `::1`, the machine's hostname and `extra_sans` (IP addresses become
/// IP SANs, everything else DNS SANs).
pub fn load_or_create_api_tls(
    data_dir: &Path,
    operator: Option<(&Path, &Path)>,
    extra_sans: &[String],
) -> Result<Arc<ServerConfig>, Error> {
    match operator {
        Some((cert, key)) => {
            let (chain, key_der) = load_operator_material(cert, key)?;
            server_config(chain, key_der).map_err(|cause| Error::OperatorCert {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                cause,
            })
        }
        None => {
            let names = wanted_names(extra_sans)?;
            let (chain, key_der) = local_api_material(&data_dir.join("tls"), &names)?;
            server_config(chain, key_der).map_err(Error::Config)
        }
    }
}

/// A client config that trusts exactly the CA certificates in `ca_pem` (one or more PEM
/// certificates): ALPN `http/1.1`, the ring provider.
pub fn client_config(ca_pem: &[u8]) -> Result<Arc<ClientConfig>, Error> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.map_err(Error::CaPem)?)
            .map_err(Error::TrustAnchor)?;
    }
    if roots.is_empty() {
        return Err(Error::NoCaCertificate);
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(Error::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// Turns an accepted TCP connection into a TLS stream, all within `handshake_timeout`.
///
/// A client that speaks plaintext HTTP instead gets a plain `400` with the JSON error
/// `tls_required` (so `curl http://...` explains itself) and [`AcceptError::Plaintext`].
pub async fn accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    handshake_timeout: Duration,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, AcceptError> {
    match tokio::time::timeout(handshake_timeout, accept_within(acceptor, tcp)).await {
        Ok(result) => result,
        Err(_elapsed) => Err(AcceptError::Timeout(handshake_timeout)),
    }
}

async fn accept_within(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, AcceptError> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await.map_err(AcceptError::Io)? == 0 {
        return Err(AcceptError::Closed);
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        refuse_plaintext(tcp).await;
        return Err(AcceptError::Plaintext);
    }
    acceptor.accept(tcp).await.map_err(AcceptError::Handshake)
}

/// Reads the plaintext request head, answers `400 tls_required` and closes. Errors are ignored:
/// the client is already being turned away.
async fn refuse_plaintext(mut tcp: TcpStream) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while head.len() < PLAINTEXT_READ_LIMIT && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{}",
        TLS_REQUIRED_BODY.len(),
        TLS_REQUIRED_BODY
    );
    if tcp.write_all(response.as_bytes()).await.is_err() || tcp.shutdown().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(PLAINTEXT_LINGER, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

fn load_operator_material(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    let chain = read_chain(cert)?;
    let key_der = read_key(key)?;
    Ok((chain, key_der))
}

/// A subject alternative name the API certificate must carry.
struct WantedName {
    /// What the certificate must be valid for, as a client would check it.
    server_name: ServerName<'static>,
    /// The same name as written into the certificate.
    san: SanType,
}

/// `localhost`, the loopback addresses, the hostname and `extra_sans`, without duplicates.
fn wanted_names(extra_sans: &[String]) -> Result<Vec<WantedName>, Error> {
    let mut names: Vec<WantedName> = Vec::new();
    let mut push = |name: WantedName| {
        if !names.iter().any(|n| n.server_name == name.server_name) {
            names.push(name);
        }
    };
    for fixed in ["localhost", "127.0.0.1", "::1"] {
        push(wanted_name(fixed)?);
    }
    if let Some(host) = hostname() {
        match wanted_name(&host) {
            Ok(name) => push(name),
            Err(_) => tracing::warn!(
                hostname = %host,
                "hostname is not a valid DNS name; leaving it out of the api certificate"
            ),
        }
    }
    for extra in extra_sans {
        push(wanted_name(extra)?);
    }
    Ok(names)
}

fn wanted_name(raw: &str) -> Result<WantedName, Error> {
    let trimmed = raw.trim();
    // "[::1]" is how an IPv6 address appears in a URL.
    let unbracketed = trimmed
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(trimmed);
    let bad = || Error::BadSan(raw.to_string());
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(WantedName {
            server_name: ServerName::IpAddress(ip.into()),
            san: SanType::IpAddress(ip),
        });
    }
    let lower = trimmed.to_ascii_lowercase();
    let server_name = ServerName::try_from(lower.clone()).map_err(|_| bad())?;
    let san = SanType::DnsName(lower.try_into().map_err(|_| bad())?);
    Ok(WantedName { server_name, san })
}

/// The machine's hostname, if it has a usable one.
fn hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| fs::read_to_string(path).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty() && s != "(none)")
}

/// The API chain and key under `dir`, reusing what is there when it is still good.
fn local_api_material(
    dir: &Path,
    names: &[WantedName],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    fs::create_dir_all(dir).map_err(|cause| Error::Write {
        path: dir.to_path_buf(),
        cause,
    })?;
    let ca_cert = ensure_ca(dir)?;
    let api_crt = dir.join("api.crt");
    let api_key = dir.join("api.key");
    if api_crt.exists() && api_key.exists() {
        match reusable_api_material(&api_crt, &api_key, &ca_cert, names) {
            Ok(material) => return Ok(material),
            Err(reason) => tracing::info!(%reason, "reissuing the api certificate"),
        }
    }
    issue_api_material(dir, &ca_cert, names)
}

/// The CA certificate, creating the CA if there is none. An existing `ca.crt` is never
/// replaced; a `ca.key` without `ca.crt` (a crash during the first start) gets its certificate.
fn ensure_ca(dir: &Path) -> Result<CertificateDer<'static>, Error> {
    let ca_crt = dir.join("ca.crt");
    let ca_key = dir.join("ca.key");
    if ca_crt.exists() {
        let mut chain = read_chain(&ca_crt)?;
        return Ok(chain.swap_remove(0));
    }
    let key = if ca_key.exists() {
        read_ca_key(&ca_key)?
    } else {
        let key = KeyPair::generate().map_err(Error::Generate)?;
        write_atomic(&ca_key, key.serialize_pem().as_bytes(), 0o600)?;
        key
    };
    let cert = ca_params(CA_COMMON_NAME, VALIDITY)
        .self_signed(&key)
        .map_err(Error::Generate)?;
    write_atomic(&ca_crt, cert.pem().as_bytes(), 0o644)?;
    tracing::info!(path = %ca_crt.display(), "created the local CA; clients trust this file");
    Ok(cert.der().clone())
}

/// The existing API chain and key, or why they cannot be reused.
fn reusable_api_material(
    api_crt: &Path,
    api_key: &Path,
    ca_cert: &CertificateDer<'static>,
    names: &[WantedName],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain = read_chain(api_crt).map_err(|e| e.to_string())?;
    let key = read_key(api_key).map_err(|e| e.to_string())?;
    rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider())
        .map_err(|e| format!("api.key does not fit api.crt: {e}"))?;
    // `read_chain` never returns an empty chain.
    let parsed =
        ParsedCertificate::try_from(&chain[0]).map_err(|e| format!("cannot parse api.crt: {e}"))?;
    check_issued_by(&parsed, ca_cert, &chain[1..], now())
        .map_err(|e| format!("api.crt does not verify under ca.crt: {e}"))?;
    check_issued_by(
        &parsed,
        ca_cert,
        &chain[1..],
        now().saturating_add(RENEW_BEFORE),
    )
    .map_err(|_| {
        format!(
            "api.crt expires within {} days",
            RENEW_BEFORE.as_secs() / 86400
        )
    })?;
    for name in names {
        verify_server_name(&parsed, &name.server_name)
            .map_err(|_| format!("api.crt is not valid for {}", name.server_name.to_str()))?;
    }
    Ok((chain, key))
}

/// Issues a new API key and certificate from the CA under `dir` and writes them.
fn issue_api_material(
    dir: &Path,
    ca_cert: &CertificateDer<'static>,
    names: &[WantedName],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    let ca_key_path = dir.join("ca.key");
    if !ca_key_path.exists() {
        return Err(Error::CaKeyMissing {
            key: ca_key_path,
            cert: dir.join("ca.crt"),
            dir: dir.to_path_buf(),
        });
    }
    let issuer = Issuer::new(
        ca_params(CA_COMMON_NAME, VALIDITY),
        read_ca_key(&ca_key_path)?,
    );

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, API_COMMON_NAME);
    params.subject_alt_names = names.iter().map(|n| n.san.clone()).collect();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, VALIDITY);
    let key = KeyPair::generate().map_err(Error::Generate)?;
    let cert = params.signed_by(&key, &issuer).map_err(Error::Generate)?;

    // The CA parameters are rebuilt rather than parsed from ca.crt; prove the result chains.
    let parsed = ParsedCertificate::try_from(cert.der()).map_err(|cause| Error::CaMismatch {
        path: dir.join("ca.crt"),
        cause,
    })?;
    check_issued_by(&parsed, ca_cert, &[], now()).map_err(|cause| Error::CaMismatch {
        path: dir.join("ca.crt"),
        cause,
    })?;

    write_atomic(&dir.join("api.key"), key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(&dir.join("api.crt"), cert.pem().as_bytes(), 0o644)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((vec![cert.der().clone()], key_der))
}

/// The parameters of a CA named `common_name`. An [`Issuer`] needs only the subject, key
/// identifier method and key usages, so rebuilding these equals parsing the CA certificate
/// (checked after each issue of the API certificate; the cluster CA relies on it too).
pub(crate) fn ca_params(common_name: &str, validity: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, validity);
    params
}

/// Valid from a day before now (clock skew) until `validity` from now.
pub(crate) fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let since_epoch = now();
    params.not_before = epoch + since_epoch.saturating_sub(BACKDATE);
    params.not_after = epoch + since_epoch + validity;
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

fn check_issued_by(
    cert: &ParsedCertificate<'_>,
    ca_cert: &CertificateDer<'static>,
    intermediates: &[CertificateDer<'_>],
    at: Duration,
) -> Result<(), rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add(ca_cert.clone())?;
    verify_server_cert_signed_by_trust_anchor(
        cert,
        &roots,
        intermediates,
        UnixTime::since_unix_epoch(at),
        provider().signature_verification_algorithms.all,
    )
}

pub(crate) fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = fs::read(path).map_err(|cause| Error::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|cause| Error::Pem {
            path: path.to_path_buf(),
            cause,
        })?;
    if chain.is_empty() {
        return Err(Error::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let pem = fs::read(path).map_err(|cause| Error::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|cause| Error::Pem {
        path: path.to_path_buf(),
        cause,
    })
}

fn read_ca_key(path: &Path) -> Result<KeyPair, Error> {
    let pem = fs::read_to_string(path).map_err(|cause| Error::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    KeyPair::from_pem(&pem).map_err(|cause| Error::CaKey {
        path: path.to_path_buf(),
        cause,
    })
}

/// Writes `contents` to `path` with exactly `mode`, atomically: a temporary file in the same
/// directory is written, synced and renamed over `path`, then the directory is synced.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    let write_err = |cause| Error::Write {
        path: path.to_path_buf(),
        cause,
    };
    // A bare file name's parent is "", which cannot be opened to sync it.
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp"));
    // A leftover from a crash may have other permissions; start from scratch.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(write_err(e)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(write_err)?;
    // The umask may have cleared bits of `mode`; set it exactly.
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(write_err)?;
    file.write_all(contents).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(write_err)?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn api_cert(dir: &Path) -> CertificateDer<'static> {
        read_chain(&dir.join("tls/api.crt")).unwrap().remove(0)
    }

    fn valid_for(cert: &CertificateDer<'static>, name: &str) -> bool {
        let parsed = ParsedCertificate::try_from(cert).unwrap();
        let name = ServerName::try_from(name.to_string()).unwrap();
        verify_server_name(&parsed, &name).is_ok()
    }

    #[test]
    fn first_start_creates_ca_and_api_files_with_modes() {
        let data = tempfile::tempdir().unwrap();
        load_or_create_api_tls(data.path(), None, &[]).unwrap();
        let tls = data.path().join("tls");
        assert_eq!(mode(&tls.join("ca.key")), 0o600);
        assert_eq!(mode(&tls.join("api.key")), 0o600);
        assert_eq!(mode(&tls.join("ca.crt")), 0o644);
        assert_eq!(mode(&tls.join("api.crt")), 0o644);
        let leftovers: Vec<_> = fs::read_dir(&tls)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

        let cert = api_cert(data.path());
        for name in ["localhost", "127.0.0.1", "::1"] {
            assert!(valid_for(&cert, name), "api.crt not valid for {name}");
        }
        if let Some(host) = hostname() {
            if wanted_name(&host).is_ok() {
                assert!(valid_for(&cert, &host.to_ascii_lowercase()));
            }
        }
        let ca = read_chain(&tls.join("ca.crt")).unwrap().remove(0);
        let parsed = ParsedCertificate::try_from(&cert).unwrap();
        check_issued_by(&parsed, &ca, &[], now()).unwrap();
    }

    #[test]
    fn second_start_reuses_ca_and_api_cert() {
        let data = tempfile::tempdir().unwrap();
        load_or_create_api_tls(data.path(), None, &[]).unwrap();
        let tls = data.path().join("tls");
        let read = |name: &str| fs::read(tls.join(name)).unwrap();
        let before: Vec<_> = ["ca.crt", "ca.key", "api.crt", "api.key"].map(read).into();
        load_or_create_api_tls(data.path(), None, &[]).unwrap();
        let after: Vec<_> = ["ca.crt", "ca.key", "api.crt", "api.key"].map(read).into();
        assert_eq!(before, after);
    }

    #[test]
    fn new_san_reissues_api_cert_under_the_same_ca() {
        let data = tempfile::tempdir().unwrap();
        let tls = data.path().join("tls");
        load_or_create_api_tls(data.path(), None, &[]).unwrap();
        let ca_before = fs::read(tls.join("ca.crt")).unwrap();
        let api_before = fs::read(tls.join("api.crt")).unwrap();
        assert!(!valid_for(&api_cert(data.path()), "node1.example.com"));

        let extra = ["node1.example.com".to_string(), "10.1.2.3".to_string()];
        load_or_create_api_tls(data.path(), None, &extra).unwrap();
        assert_eq!(fs::read(tls.join("ca.crt")).unwrap(), ca_before);
        assert_ne!(fs::read(tls.join("api.crt")).unwrap(), api_before);
        let cert = api_cert(data.path());
        assert!(valid_for(&cert, "node1.example.com"));
        assert!(valid_for(&cert, "10.1.2.3"));
        assert!(valid_for(&cert, "localhost"));
        let ca = read_chain(&tls.join("ca.crt")).unwrap().remove(0);
        let parsed = ParsedCertificate::try_from(&cert).unwrap();
        check_issued_by(&parsed, &ca, &[], now()).unwrap();
        assert_eq!(mode(&tls.join("api.key")), 0o600);
    }

    #[test]
    fn unparseable_api_cert_is_reissued() {
        let data = tempfile::tempdir().unwrap();
        let tls = data.path().join("tls");
        load_or_create_api_tls(data.path(), None, &[]).unwrap();
        let ca_before = fs::read(tls.join("ca.crt")).unwrap();
        fs::write(tls.join("api.crt"), "not a certificate").unwrap();
        load_or_create_api_tls(data.path(), None, &[]).unwrap();
        assert_eq!(fs::read(tls.join("ca.crt")).unwrap(), ca_before);
        assert!(valid_for(&api_cert(data.path()), "localhost"));
    }

    #[test]
    fn missing_ca_key_is_fine_until_a_reissue_is_needed() {
        let data = tempfile::tempdir().unwrap();
        let tls = data.path().join("tls");
        load_or_create_api_tls(data.path(), None, &[]).unwrap();
        fs::remove_file(tls.join("ca.key")).unwrap();
        load_or_create_api_tls(data.path(), None, &[]).unwrap();
        let err =
            load_or_create_api_tls(data.path(), None, &["new.example".to_string()]).unwrap_err();
        assert!(matches!(err, Error::CaKeyMissing { .. }), "{err}");
        assert!(tls.join("ca.crt").exists());
    }

    #[test]
    fn bad_extra_san_is_rejected() {
        let data = tempfile::tempdir().unwrap();
        let err =
            load_or_create_api_tls(data.path(), None, &["not a name!".to_string()]).unwrap_err();
        assert!(matches!(err, Error::BadSan(_)), "{err}");
    }

    #[test]
    fn operator_material_is_used_and_ca_not_created() {
        let data = tempfile::tempdir().unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["op.example".to_string()]).unwrap();
        let cert = data.path().join("op.crt");
        let key = data.path().join("op.key");
        fs::write(&cert, certified.cert.pem()).unwrap();
        fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        load_or_create_api_tls(data.path(), Some((&cert, &key)), &[]).unwrap();
        assert!(!data.path().join("tls/ca.crt").exists());

        let other = KeyPair::generate().unwrap();
        fs::write(&key, other.serialize_pem()).unwrap();
        let err = load_or_create_api_tls(data.path(), Some((&cert, &key)), &[]).unwrap_err();
        assert!(matches!(err, Error::OperatorCert { .. }), "{err}");
    }

    #[test]
    fn client_config_rejects_pem_without_certificates() {
        assert!(matches!(client_config(b""), Err(Error::NoCaCertificate)));
        assert!(client_config(b"-----BEGIN CERTIFICATE-----\nnot base64!\n").is_err());
    }

    /// Starts a server with the node's config; returns its address and the outcome of `accept`.
    async fn serve_once(
        data: &Path,
    ) -> (
        std::net::SocketAddr,
        tokio::task::JoinHandle<Result<String, AcceptError>>,
    ) {
        let config = load_or_create_api_tls(data, None, &[]).unwrap();
        let acceptor = TlsAcceptor::from(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = accept(&acceptor, tcp, Duration::from_secs(5)).await?;
            let alpn = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.unwrap();
            tls.write_all(b"pong").await.unwrap();
            tls.shutdown().await.unwrap();
            Ok(format!(
                "{} {}",
                String::from_utf8_lossy(&buf),
                String::from_utf8_lossy(&alpn.unwrap_or_default())
            ))
        });
        (addr, server)
    }

    #[tokio::test]
    async fn client_config_from_ca_completes_a_handshake() {
        let data = tempfile::tempdir().unwrap();
        for server_name in ["localhost", "127.0.0.1"] {
            let (addr, server) = serve_once(data.path()).await;
            let ca_pem = fs::read(data.path().join("tls/ca.crt")).unwrap();
            let connector = TlsConnector::from(client_config(&ca_pem).unwrap());
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from(server_name.to_string()).unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN_HTTP1));
            tls.write_all(b"ping").await.unwrap();
            let mut answer = Vec::new();
            tls.read_to_end(&mut answer).await.unwrap();
            assert_eq!(answer, b"pong");
            assert_eq!(server.await.unwrap().unwrap(), "ping http/1.1");
        }
    }

    #[tokio::test]
    async fn client_with_another_ca_is_refused() {
        let data = tempfile::tempdir().unwrap();
        let (addr, server) = serve_once(data.path()).await;
        let other = tempfile::tempdir().unwrap();
        load_or_create_api_tls(other.path(), None, &[]).unwrap();
        let other_ca = fs::read(other.path().join("tls/ca.crt")).unwrap();
        let connector = TlsConnector::from(client_config(&other_ca).unwrap());
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        assert!(connector.connect(name, tcp).await.is_err());
        assert!(matches!(
            server.await.unwrap(),
            Err(AcceptError::Handshake(_))
        ));
    }

    #[tokio::test]
    async fn plaintext_http_gets_400_tls_required() {
        let data = tempfile::tempdir().unwrap();
        let (addr, server) = serve_once(data.path()).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /v1/health HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "tls_required");
        assert!(matches!(server.await.unwrap(), Err(AcceptError::Plaintext)));
    }

    #[tokio::test]
    async fn silent_client_times_out() {
        let data = tempfile::tempdir().unwrap();
        let acceptor = TlsAcceptor::from(load_or_create_api_tls(data.path(), None, &[]).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let result = accept(&acceptor, tcp, Duration::from_millis(50)).await;
        assert!(matches!(result, Err(AcceptError::Timeout(_))));
    }
}
