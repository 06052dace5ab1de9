//! Access tokens: roles, path prefixes, and the cache that checks a bearer token quickly.
//!
//! Tokens live in the store itself under the reserved prefix `/.herd/tokens/<name>` (so they reach
//! every node of a cluster with the rest of the data) as `{"hash", "role", "prefix", "created"}`;
//! only the SHA-256 of a secret is ever stored. The cache maps hashes to grants and is rebuilt
//! from the store whenever something under that prefix changes.
//!
//! Must not know about HTTP; `api` maps its answers to statuses.

use crate::clock::now_ms;
use crate::db::{self, Condition, Db, WriteRequest};
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
    /// The secret's hash, to tell later whether the token still holds ([`Tokens::holds`]).
    hash: [u8; 32],
}

impl Grant {
    /// The grant of a writer inside the node itself (the in-process file view): it may write
    /// anywhere outside the reserved subtree, and plugins see `name` as its token. No token
    /// stands behind it.
    pub fn local(name: &str) -> Grant {
        Grant {
            name: name.into(),
            role: Role::Write,
            prefix: Path::root(),
            hash: [0; 32],
        }
    }

    /// True if the token may touch `p` (its prefix contains `p`).
    pub fn covers(&self, p: &Path) -> bool {
        self.prefix.contains(p)
    }

    /// True if this token may manage a token with `role` and `prefix`: an admin manages the
    /// tokens within its own prefix, and never grants more than its own role.
    pub fn manages(&self, role: Role, prefix: &Path) -> bool {
        self.role == Role::Admin && role <= self.role && self.covers(prefix)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("token name {0:?} is not valid: {1}")]
    BadName(String, String),
    #[error("prefix {0:?} is not valid: {1}")]
    BadPrefix(String, String),
    #[error("a token may not be limited to {0}: /.herd is the node's own")]
    ReservedPrefix(String),
    #[error("token {name:?} would reach {prefix}, outside this token's prefix {own}")]
    OutsidePrefix {
        name: String,
        prefix: String,
        own: String,
    },
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
#[derive(Clone)]
pub struct Tokens {
    cache: Arc<RwLock<HashMap<[u8; 32], Grant>>>,
    /// Counts reloads, so long-lived requests (watch streams) can check their token again.
    reloads: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for Tokens {
    fn default() -> Tokens {
        Tokens {
            cache: Arc::default(),
            reloads: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }
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

    /// True if `grant`'s token is still there, unchanged (not revoked, not replaced).
    pub fn holds(&self, grant: &Grant) -> bool {
        self.cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&grant.hash)
            .is_some_and(|g| {
                g.name == grant.name && g.role == grant.role && g.prefix == grant.prefix
            })
    }

    /// Changes each time the tokens are reloaded: then [`Tokens::holds`] may answer otherwise.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloads.subscribe()
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
                    hash: h,
                },
            );
        }
        *self.cache.write().unwrap_or_else(|e| e.into_inner()) = map;
        self.reloads.send_modify(|n| *n += 1);
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
                    Ok(ev) if crate::store::path::key_related(TOKENS_KEY, &ev.key) => self.reload(&db),
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

/// Every token record `by` may manage (see [`Grant::manages`]), by name.
pub fn list_managed(db: &Db, by: &Grant) -> Vec<(String, Record)> {
    list(db)
        .into_iter()
        .filter(|(_, r)| Path::parse(&r.prefix).is_ok_and(|p| by.manages(r.role, &p)))
        .collect()
}

/// Creates a token and returns its secret (the only time it is shown). `by` is the token
/// asking: it may create only what it [manages](Grant::manages).
pub async fn create(
    db: &Db,
    tokens: &Tokens,
    by: &Grant,
    name: &str,
    role: Role,
    prefix: &str,
) -> Result<String, Error> {
    let prefix_path =
        Path::parse(prefix).map_err(|e| Error::BadPrefix(prefix.into(), e.to_string()))?;
    if prefix_path.first() == Some(RESERVED) {
        return Err(Error::ReservedPrefix(prefix_path.to_string()));
    }
    if !by.manages(role, &prefix_path) {
        return Err(Error::OutsidePrefix {
            name: name.into(),
            prefix: prefix_path.to_string(),
            own: by.prefix.to_string(),
        });
    }
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

/// Revokes a token by name; `by` sees (and revokes) only the tokens it
/// [manages](Grant::manages): any other is answered as missing.
pub async fn revoke(db: &Db, tokens: &Tokens, by: &Grant, name: &str) -> Result<(), Error> {
    if !list_managed(db, by).iter().any(|(n, _)| n == name) {
        token_path(name)?;
        return Err(Error::NoSuchToken(name.into()));
    }
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
///
/// A token file from an earlier start is kept as it is. Its record is never written again: if
/// the token was revoked, it stays revoked (a warning says so) until an operator deletes
/// `admin.token` and restarts the node, which then makes a new one. The record is written
/// before the file, so a crash in between leaves no file and the next start makes both anew.
pub async fn bootstrap(db: &Db, tokens: &Tokens, data_dir: &std::path::Path) -> Result<(), Error> {
    let file = data_dir.join("admin.token");
    let name = format!("bootstrap-{:016x}", db.node_id());
    if let Ok(s) = std::fs::read_to_string(&file) {
        if !s.trim().is_empty() {
            let hash = hex(&hash(s.trim()));
            let intact = list(db).into_iter().any(|(n, r)| {
                n == name && r.hash == hash && r.role == Role::Admin && r.prefix == "/"
            });
            if !intact {
                tracing::warn!(
                    file = %file.display(),
                    token = %name,
                    "the bootstrap admin token in this file is not in the store (revoked, or the \
                     store was wiped) and is not restored; delete the file and restart the node \
                     to make a new one"
                );
            }
            tokens.reload(db);
            return Ok(());
        }
    }
    let secret = new_secret();
    let record = Record {
        hash: hex(&hash(&secret)),
        role: Role::Admin,
        prefix: "/".into(),
        created: now_ms(),
    };
    change(db, tokens, put_record(&name, &record)?, Condition::None).await?;
    write_private(&file, &format!("{secret}\n"))
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

    /// A database in a temporary directory, its writer handle, and an empty token cache.
    fn open() -> (tempfile::TempDir, Db, db::WriterHandle, Tokens) {
        let (dir, db, h) = db::open_for_tests(7);
        (dir, db, h, Tokens::default())
    }

    #[tokio::test]
    async fn create_check_revoke_and_bootstrap() {
        let (dir, db, _h, tokens) = open();
        bootstrap(&db, &tokens, dir.path()).await.unwrap();
        let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let root = tokens.check(admin.trim()).unwrap();
        assert_eq!(root.role, Role::Admin);
        // a second start keeps the same token
        bootstrap(&db, &tokens, dir.path()).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("admin.token")).unwrap(),
            admin
        );

        let s = create(&db, &tokens, &root, "ci", Role::Write, "/app")
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
            create(&db, &tokens, &root, "ci", Role::Read, "/").await,
            Err(Error::Exists(_))
        ));
        assert!(matches!(
            create(&db, &tokens, &root, "a/b", Role::Read, "/").await,
            Err(Error::BadName(..))
        ));
        assert!(matches!(
            create(&db, &tokens, &root, "internal", Role::Read, "/.herd/tokens").await,
            Err(Error::ReservedPrefix(_))
        ));
        assert!(tokens.check("herd_wrong").is_none());
        // only hashes are stored
        let mut doc = String::new();
        db.read().store.render("", now_ms(), &mut doc);
        assert!(!doc.contains(&s) && !doc.contains(admin.trim()));
        revoke(&db, &tokens, &root, "ci").await.unwrap();
        assert!(tokens.check(&s).is_none());
        assert!(matches!(
            revoke(&db, &tokens, &root, "ci").await,
            Err(Error::NoSuchToken(_))
        ));
        assert_eq!(list(&db).len(), 1);
    }

    #[tokio::test]
    async fn a_prefixed_admin_manages_only_tokens_within_its_prefix() {
        let (dir, db, _h, tokens) = open();
        bootstrap(&db, &tokens, dir.path()).await.unwrap();
        let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
        let root = tokens.check(admin.trim()).unwrap();
        let app = create(&db, &tokens, &root, "app-admin", Role::Admin, "/app")
            .await
            .unwrap();
        let app = tokens.check(&app).unwrap();
        create(&db, &tokens, &root, "other", Role::Read, "/other")
            .await
            .unwrap();
        for (role, prefix) in [
            (Role::Admin, "/"),
            (Role::Read, "/other"),
            (Role::Read, "/ap"),
        ] {
            let e = create(&db, &tokens, &app, "x", role, prefix)
                .await
                .unwrap_err();
            assert!(matches!(e, Error::OutsidePrefix { .. }), "{prefix}: {e}");
        }
        create(&db, &tokens, &app, "app-ci", Role::Write, "/app/ci")
            .await
            .unwrap();
        let mut seen: Vec<String> = list_managed(&db, &app)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        seen.sort();
        assert_eq!(seen, ["app-admin", "app-ci"]);
        let bootstrap_name = format!("bootstrap-{:016x}", db.node_id());
        for name in [bootstrap_name.as_str(), "other"] {
            assert!(matches!(
                revoke(&db, &tokens, &app, name).await,
                Err(Error::NoSuchToken(_))
            ));
        }
        assert!(tokens.check(admin.trim()).is_some());
        revoke(&db, &tokens, &app, "app-ci").await.unwrap();
    }

    #[tokio::test]
    async fn a_revoked_bootstrap_token_stays_revoked_across_restarts() {
        let (dir, db, _h, tokens) = open();
        bootstrap(&db, &tokens, dir.path()).await.unwrap();
        let file = dir.path().join("admin.token");
        let old = std::fs::read_to_string(&file).unwrap();
        let root = tokens.check(old.trim()).unwrap();
        let mut reloads = tokens.reloads();
        reloads.borrow_and_update();
        revoke(&db, &tokens, &root, &root.name).await.unwrap();
        assert!(reloads.has_changed().unwrap() && !tokens.holds(&root));
        // The next start keeps the file and does not bring the record back.
        bootstrap(&db, &tokens, dir.path()).await.unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), old);
        assert!(tokens.check(old.trim()).is_none());
        // Deleting the file is how an operator gets a new one.
        std::fs::remove_file(&file).unwrap();
        bootstrap(&db, &tokens, dir.path()).await.unwrap();
        let new = std::fs::read_to_string(&file).unwrap();
        assert_ne!(new, old);
        assert_eq!(tokens.check(new.trim()).unwrap().role, Role::Admin);
    }
}
