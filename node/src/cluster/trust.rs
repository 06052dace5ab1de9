//! Trust between peers: the cluster secret, the cluster CA every node derives from it, the node
//! certificate each node issues itself at start, and the mutual-TLS configurations of the peer
//! port.
//!
//! The secret is 32 random bytes in a file (`herd cluster init` writes one, mode 0600) that the
//! operator copies to every node. HKDF-SHA256 turns it into the seed of an Ed25519 key: the
//! cluster CA's key. Each node builds the CA certificate from that key (same subject, same key,
//! so every node's copy verifies every other node's certificates) and signs a fresh node
//! certificate with it at every start. Nothing but the secret has to be distributed, and a node
//! without it can neither connect to a peer nor accept a peer's connection.

use crate::tls;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How a secret file starts; the version names the derivation below.
const SECRET_PREFIX: &str = "herd-cluster-secret-v1:";
/// HKDF salt and info of the CA key derivation (v1).
const CA_SALT: &[u8] = b"herd cluster CA v1";
const CA_INFO: &[u8] = b"ed25519 seed";
/// PKCS#8 v1 wrapping of a raw Ed25519 seed (RFC 8410): this prefix, then the 32 bytes.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const CA_COMMON_NAME: &str = "herd cluster CA";
/// The name every node certificate is valid for, and that peers connect to: peers are told
/// apart by the node id they state in the exchange, not by host names.
pub const PEER_SERVER_NAME: &str = "herd-peer";
/// The application protocol of the peer port.
pub const ALPN_PEER: &[u8] = b"herd-peer/1";
/// Node certificates are valid this long; a node issues a new one at every start.
const NODE_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Every node builds its own copy of the cluster CA certificate with this validity (peers
/// check node certificates against the CA's key and subject only).
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read cluster secret {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "cluster secret {} is readable by other users (mode {mode:o}); run `chmod 600 {}`",
        path.display(), path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("cluster secret {}: {why} (a secret file holds one line \"{SECRET_PREFIX}<64 hex digits>\", as `herd cluster init` writes it)", path.display())]
    Malformed { path: PathBuf, why: &'static str },
    #[error("{} exists already; a new secret would split the cluster (use --force to replace it)", .0.display())]
    Exists(PathBuf),
    #[error("no system randomness: {0}")]
    Random(String),
    #[error(transparent)]
    Write(#[from] tls::Error),
    #[error("cannot make the cluster certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("cannot build the peer TLS configuration: {0}")]
    Tls(String),
}

/// The shared secret that makes nodes one cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret([u8; 32]);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    /// A new random secret.
    pub fn generate() -> Result<ClusterSecret, Error> {
        let mut b = [0u8; 32];
        SystemRandom::new()
            .fill(&mut b)
            .map_err(|e| Error::Random(e.to_string()))?;
        Ok(ClusterSecret(b))
    }

    /// The file's text: one line.
    pub fn encode(&self) -> String {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        format!("{SECRET_PREFIX}{hex}\n")
    }

    fn parse(text: &str, path: &Path) -> Result<ClusterSecret, Error> {
        let bad = |why| Error::Malformed {
            path: path.to_path_buf(),
            why,
        };
        let hex = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| bad("it does not start with the herd secret marker"))?;
        if hex.len() != 64 {
            return Err(bad("it does not hold exactly 64 hex digits"));
        }
        let mut b = [0u8; 32];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| bad("it holds a character that is not a hex digit"))?;
        }
        Ok(ClusterSecret(b))
    }

    /// Reads a secret file; refuses one that other users can read.
    pub fn read(path: &Path) -> Result<ClusterSecret, Error> {
        let read_err = |cause| Error::Read {
            path: path.to_path_buf(),
            cause,
        };
        let mode = std::fs::metadata(path)
            .map_err(read_err)?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        ClusterSecret::parse(&text, path)
    }

    /// Writes a new random secret to `path` (mode 0600). Refuses to replace an existing file
    /// unless `force`.
    pub fn create(path: &Path, force: bool) -> Result<ClusterSecret, Error> {
        if !force && path.exists() {
            return Err(Error::Exists(path.to_path_buf()));
        }
        let secret = ClusterSecret::generate()?;
        tls::write_atomic(path, secret.encode().as_bytes(), 0o600)?;
        Ok(secret)
    }

    /// The cluster CA's key: the same on every node that holds this secret.
    fn ca_key(&self) -> Result<KeyPair, Error> {
        struct Seed;
        impl hkdf::KeyType for Seed {
            fn len(&self) -> usize {
                32
            }
        }
        let mut seed = [0u8; 32];
        hkdf::Salt::new(hkdf::HKDF_SHA256, CA_SALT)
            .extract(&self.0)
            .expand(&[CA_INFO], Seed)
            .and_then(|okm| okm.fill(&mut seed))
            .map_err(|_| Error::Tls("HKDF failed".into()))?;
        let mut der = ED25519_PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&seed);
        Ok(KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(der),
            &rcgen::PKCS_ED25519,
        )?)
    }
}

/// Who this node is to its peers; written into its node certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    pub node_id: u64,
    pub cluster: String,
    pub env: String,
}

/// The peer port's TLS: a server that requires a client certificate from the cluster CA, and a
/// client that presents this node's certificate and trusts only the cluster CA.
#[derive(Clone)]
pub struct PeerTls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    /// This node's copy of the cluster CA certificate.
    pub ca_cert: CertificateDer<'static>,
}

impl PeerTls {
    /// Derives the cluster CA from `secret` and issues this node's certificate under it.
    pub fn from_secret(secret: &ClusterSecret, me: &NodeIdentity) -> Result<PeerTls, Error> {
        let (ca_cert, chain, key) = issue(secret, me)?;
        PeerTls::new(ca_cert, chain, key)
    }
}

/// The cluster CA certificate (this node's copy), and a new node certificate chain and key.
#[allow(
    clippy::type_complexity,
    reason = "a private triple consumed right at the call sites"
)]
fn issue(
    secret: &ClusterSecret,
    me: &NodeIdentity,
) -> Result<
    (
        CertificateDer<'static>,
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
    ),
    Error,
> {
    let ca_key = secret.ca_key()?;
    let ca_cert = tls::ca_params(CA_COMMON_NAME, CA_VALIDITY)
        .self_signed(&ca_key)?
        .der()
        .clone();
    let issuer = Issuer::new(tls::ca_params(CA_COMMON_NAME, CA_VALIDITY), ca_key);

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("herd node {:016x}", me.node_id));
    params.subject_alt_names = vec![
        SanType::DnsName(PEER_SERVER_NAME.try_into()?),
        SanType::URI(
            format!(
                "herd://{}/{}/{:016x}",
                uri_part(&me.cluster),
                uri_part(&me.env),
                me.node_id
            )
            .try_into()?,
        ),
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    tls::set_validity(&mut params, NODE_CERT_VALIDITY);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let chain = vec![cert.der().clone()];
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((ca_cert, chain, key_der))
}

impl PeerTls {
    /// The peer TLS configurations for a trust anchor and this node's chain and key.
    pub fn new(
        ca_cert: CertificateDer<'static>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<PeerTls, Error> {
        let tls_err = |e: rustls::Error| Error::Tls(e.to_string());
        let mut roots = RootCertStore::empty();
        roots.add(ca_cert.clone()).map_err(tls_err)?;
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), tls::provider())
            .build()
            .map_err(|e| Error::Tls(e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(tls_err)?;
        server.alpn_protocols = vec![ALPN_PEER.to_vec()];
        let mut client = ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(tls_err)?;
        client.alpn_protocols = vec![ALPN_PEER.to_vec()];
        Ok(PeerTls {
            server: Arc::new(server),
            client: Arc::new(client),
            ca_cert,
        })
    }
}

/// Keeps names URI-safe in the certificate (they are informational there).
fn uri_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._~".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    fn node(secret: &ClusterSecret, id: u64) -> PeerTls {
        PeerTls::from_secret(
            secret,
            &NodeIdentity {
                node_id: id,
                cluster: "site 1".into(),
                env: "testing".into(),
            },
        )
        .unwrap()
    }

    /// One request and answer over the peer TLS; `Err` says which side failed.
    async fn exchange(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Result<(), String> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serve = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = TlsAcceptor::from(server)
                .accept(tcp)
                .await
                .map_err(|e| format!("server: {e}"))?;
            let mut b = [0u8; 4];
            tls.read_exact(&mut b)
                .await
                .map_err(|e| format!("server: {e}"))?;
            tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
            tls.shutdown().await.map_err(|e| e.to_string())
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let client_side = async {
            let name = ServerName::try_from(PEER_SERVER_NAME).unwrap();
            let mut tls = TlsConnector::from(client)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("client: {e}"))?;
            tls.write_all(b"ping")
                .await
                .map_err(|e| format!("client: {e}"))?;
            let mut b = [0u8; 4];
            tls.read_exact(&mut b)
                .await
                .map_err(|e| format!("client: {e}"))?;
            Ok::<_, String>(b)
        }
        .await;
        match (serve.await.unwrap(), client_side) {
            (Ok(()), Ok(b)) if &b == b"pong" => Ok(()),
            (served, answered) => Err(format!("{served:?}; {answered:?}")),
        }
    }

    #[tokio::test]
    async fn nodes_with_the_same_secret_connect_and_others_are_refused_both_ways() {
        let (a, b) = (
            ClusterSecret::generate().unwrap(),
            ClusterSecret::generate().unwrap(),
        );
        let (a1, a2, b1) = (node(&a, 1), node(&a, 2), node(&b, 3));
        exchange(a1.server.clone(), a2.client.clone())
            .await
            .unwrap();
        exchange(a2.server.clone(), a1.client.clone())
            .await
            .unwrap();

        // Another cluster's node as client: the server refuses its certificate (even when the
        // client trusts the server).
        let (_, b_chain, b_key) = issue(
            &b,
            &NodeIdentity {
                node_id: 4,
                cluster: "c".into(),
                env: "e".into(),
            },
        )
        .unwrap();
        let foreign = PeerTls::new(a1.ca_cert.clone(), b_chain, b_key).unwrap();
        let err = exchange(a1.server.clone(), foreign.client.clone())
            .await
            .unwrap_err();
        assert!(err.contains("server: invalid peer certificate"), "{err}");
        // ...and as server: the client refuses its certificate.
        let err = exchange(b1.server.clone(), a1.client.clone())
            .await
            .unwrap_err();
        assert!(err.contains("client: invalid peer certificate"), "{err}");

        // A client without any certificate gets nothing.
        let mut roots = RootCertStore::empty();
        roots.add(a1.ca_cert.clone()).unwrap();
        let anonymous = ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        assert!(exchange(a1.server.clone(), Arc::new(anonymous))
            .await
            .is_err());
    }

    #[test]
    fn the_ca_key_is_derived_from_the_secret_alone() {
        let s = ClusterSecret::generate().unwrap();
        let again = ClusterSecret::parse(&s.encode(), Path::new("x")).unwrap();
        assert_eq!(s, again);
        assert_eq!(
            s.ca_key().unwrap().public_key_raw(),
            again.ca_key().unwrap().public_key_raw()
        );
        let other = ClusterSecret::generate().unwrap();
        assert_ne!(
            s.ca_key().unwrap().public_key_raw(),
            other.ca_key().unwrap().public_key_raw()
        );
    }

    #[test]
    fn secret_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.secret");
        let s = ClusterSecret::create(&path, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(ClusterSecret::read(&path).unwrap(), s);
        assert!(matches!(
            ClusterSecret::create(&path, false),
            Err(Error::Exists(_))
        ));
        assert_ne!(ClusterSecret::create(&path, true).unwrap(), s);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            ClusterSecret::read(&path),
            Err(Error::Exposed { mode: 0o644, .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        for bad in [
            "",
            "herd-cluster-secret-v1:abc",
            &format!("herd-cluster-secret-v2:{}", "0".repeat(64)),
            &format!("herd-cluster-secret-v1:{}", "g".repeat(64)),
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = ClusterSecret::read(&path).unwrap_err();
            assert!(matches!(err, Error::Malformed { .. }), "{bad:?}: {err}");
        }
    }
}
