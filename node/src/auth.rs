//! Access tokens: roles, path prefixes, and the cache that checks a bearer token quickly.
//!
//! Tokens live in the store itself under the reserved prefix `/.herd/tokens/<name>` (so they reach
//! every node of a cluster with the rest of the data) as `{"hash", "role", "prefix", "created"}`;
//! only the SHA-256 of a secret is ever stored. The cache maps hashes to grants and is rebuilt
//! from the store whenever something under that prefix changes.
//!
//! Must not know about HTTP; `api` maps its answers to statuses.

use crate::db::{self, now_ms, Condition, Db, WriteRequest};
use crate::store::{Op, Path};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The store key under which tokens live.
pub const TOKENS_KEY: &str = ".herd\0tokens";
/// The reserved top-level segment.
pub const RESERVED: &str = crate::store::INTERNAL;

/// What a token may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Write,
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("role {s:?} is not one of read, write, admin")),
        }
    }
}

/// A token's record in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// Hex SHA-256 of the secret.
    pub hash: String,
    pub role: Role,
    /// The path the token is limited to (itself and below), `/` for everything.
    pub prefix: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created: u64,
}

/// A verified token.
#[derive(Debug, Clone)]
pub struct Grant {
    pub name: String,
    pub role: Role,
    pub prefix: Path,
}

impl Grant {
    /// True if the token may touch `p` (its prefix contains `p`).
    pub fn covers(&self, p: &Path) -> bool {
        self.prefix.contains(p)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("token name {0:?} is not valid: {1}")]
    BadName(String, String),
    #[error("prefix {0:?} is not valid: {1}")]
    BadPrefix(String, String),
    #[error("a token named {0:?} already exists")]
    Exists(String),
    #[error("no token named {0:?}")]
    NoSuchToken(String),
    #[error(transparent)]
    Db(#[from] db::Error),
    #[error("cannot write {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
}

/// Hash → grant, rebuilt from the store.
#[derive(Clone, Default)]
pub struct Tokens {
    cache: Arc<RwLock<HashMap<[u8; 32], Grant>>>,
}

/// SHA-256 of a secret.
pub fn hash(secret: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A new random secret: `herd_` and 64 hex digits (256 bits).
pub fn new_secret() -> String {
    let mut b = [0u8; 32];
    // The system RNG failing means the OS cannot give randomness at all; nothing is safe then.
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("system random source");
    format!("herd_{}", hex(&b))
}

fn token_path(name: &str) -> Result<Path, Error> {
    Path::from_segments([RESERVED, "tokens", name])
        .map_err(|e| Error::BadName(name.into(), e.to_string()))
}

impl Tokens {
    /// Looks up a presented secret.
    pub fn check(&self, secret: &str) -> Option<Grant> {
        let h = hash(secret);
        self.cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&h)
            .cloned()
    }

    /// Rebuilds the cache from the records in the store.
    pub fn reload(&self, db: &Db) {
        let records = list(db);
        let mut map = HashMap::with_capacity(records.len());
        for (name, r) in records {
            let (Some(h), Ok(prefix)) = (unhex(&r.hash), Path::parse(&r.prefix)) else {
                tracing::warn!(token = %name, "ignoring a malformed token record");
                continue;
            };
            map.insert(
                h,
                Grant {
                    name,
                    role: r.role,
                    prefix,
                },
            );
        }
        *self.cache.write().unwrap_or_else(|e| e.into_inner()) = map;
    }

    /// Keeps the cache in step with the store until `cancel` fires.
    pub async fn follow(self, db: Db, cancel: tokio_util::sync::CancellationToken) {
        let mut live = db.subscribe(TOKENS_KEY, None).map(|s| s.live).ok();
        self.reload(&db);
        let Some(rx) = live.as_mut() else { return };
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                ev = rx.recv() => match ev {
                    Ok(ev) if db::related(TOKENS_KEY, &ev.key) => self.reload(&db),
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.reload(&db),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

/// Every token record, by name.
pub fn list(db: &Db) -> Vec<(String, Record)> {
    let st = db.read();
    let now = now_ms();
    let Some(Ok(names)) = st.store.children(TOKENS_KEY, now) else {
        return Vec::new();
    };
    names
        .into_iter()
        .filter_map(|(name, _)| {
            let mut json = String::new();
            st.store
                .render(&format!("{TOKENS_KEY}\0{name}"), now, &mut json);
            Some((name, serde_json::from_str(&json).ok()?))
        })
        .collect()
}

/// The write that stores `record` as token `name`.
fn put_record(name: &str, record: &Record) -> Result<Op, Error> {
    let value = serde_json::to_value(record).expect("a token record always serialises");
    Ok(Op::put(token_path(name)?, &value, None).expect("token record keys are valid segments"))
}

/// Applies one token change and refreshes the cache, so the change holds for the next request.
async fn change(db: &Db, tokens: &Tokens, op: Op, condition: Condition) -> Result<(), db::Error> {
    db.write(WriteRequest {
        ops: vec![op],
        condition,
    })
    .await?;
    tokens.reload(db);
    Ok(())
}

/// Creates a token and returns its secret (the only time it is shown).
pub async fn create(
    db: &Db,
    tokens: &Tokens,
    name: &str,
    role: Role,
    prefix: &str,
) -> Result<String, Error> {
    let prefix_path =
        Path::parse(prefix).map_err(|e| Error::BadPrefix(prefix.into(), e.to_string()))?;
    let secret = new_secret();
    let record = Record {
        hash: hex(&hash(&secret)),
        role,
        prefix: prefix_path.to_string(),
        created: now_ms(),
    };
    match change(
        db,
        tokens,
        put_record(name, &record)?,
        Condition::IfNoneMatch,
    )
    .await
    {
        Ok(()) => Ok(secret),
        Err(db::Error::AlreadyExists(_)) => Err(Error::Exists(name.into())),
        Err(e) => Err(e.into()),
    }
}

/// Revokes a token by name.
pub async fn revoke(db: &Db, tokens: &Tokens, name: &str) -> Result<(), Error> {
    let op = Op::Delete {
        path: token_path(name)?,
    };
    match change(db, tokens, op, Condition::None).await {
        Ok(()) => Ok(()),
        Err(db::Error::NotFound(_)) => Err(Error::NoSuchToken(name.into())),
        Err(e) => Err(e.into()),
    }
}

/// Makes sure the bootstrap admin token exists: `DATA/admin.token` (mode 0600) and its record.
/// A token file from an earlier start is kept; its record is restored if the store lost it.
pub async fn bootstrap(db: &Db, tokens: &Tokens, data_dir: &std::path::Path) -> Result<(), Error> {
    let file = data_dir.join("admin.token");
    let name = format!("bootstrap-{:016x}", db.node_id());
    let secret = match std::fs::read_to_string(&file) {
        Ok(s) if !s.trim().is_empty() => s.trim().to_owned(),
        _ => {
            let s = new_secret();
            write_private(&file, &format!("{s}\n"))?;
            s
        }
    };
    let hash = hex(&hash(&secret));
    let current = list(db)
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, r)| r);
    let intact =
        current.is_some_and(|r| r.hash == hash && r.role == Role::Admin && r.prefix == "/");
    if intact {
        tokens.reload(db);
        return Ok(());
    }
    let record = Record {
        hash,
        role: Role::Admin,
        prefix: "/".into(),
        created: now_ms(),
    };
    change(db, tokens, put_record(&name, &record)?, Condition::None).await?;
    Ok(())
}

/// Writes a file readable by its owner only, atomically.
pub fn write_private(path: &std::path::Path, content: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| Error::File {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(content.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn create_check_revoke_and_bootstrap() {
        let dir = tempfile::tempdir().unwrap();
        let opts = db::Options {
            log_events: 100,
            tombstone_grace_ms: 1000,
            cache_bytes: 1 << 20,
        };
        let (db, _h) = Db::open(&dir.path().join("s.redb"), 7, opts).unwrap();
        let tokens = Tokens::default();
        bootstrap(&db, &tokens, dir.path()).await.unwrap();
        let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(tokens.check(admin.trim()).unwrap().role, Role::Admin);
        // a second start keeps the same token
        bootstrap(&db, &tokens, dir.path()).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("admin.token")).unwrap(),
            admin
        );

        let s = create(&db, &tokens, "ci", Role::Write, "/app")
            .await
            .unwrap();
        let g = tokens.check(&s).unwrap();
        assert_eq!(
            (g.role, g.prefix.to_string()),
            (Role::Write, "/app".to_string())
        );
        assert!(
            g.covers(&Path::parse("/app/x").unwrap()) && !g.covers(&Path::parse("/other").unwrap())
        );
        assert!(matches!(
            create(&db, &tokens, "ci", Role::Read, "/").await,
            Err(Error::Exists(_))
        ));
        assert!(matches!(
            create(&db, &tokens, "a/b", Role::Read, "/").await,
            Err(Error::BadName(..))
        ));
        assert!(tokens.check("herd_wrong").is_none());
        // only hashes are stored
        let mut doc = String::new();
        db.read().store.render("", now_ms(), &mut doc);
        assert!(!doc.contains(&s) && !doc.contains(admin.trim()));
        revoke(&db, &tokens, "ci").await.unwrap();
        assert!(tokens.check(&s).is_none());
        assert!(matches!(
            revoke(&db, &tokens, "ci").await,
            Err(Error::NoSuchToken(_))
        ));
        assert_eq!(list(&db).len(), 1);
    }
}
