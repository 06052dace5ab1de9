//! Write admission: the one place that decides whether a client's write may be made and what
//! it stores. The REST API (`api/kv.rs`: PUT, DELETE, batch) and the file view (`mount.rs`)
//! parse what their clients sent (HTTP bodies and headers, files) into [`Asked`] writes and
//! hand them here, so a write through the mount is judged like one through the API by
//! construction. The checks, in order:
//!
//! 1. the writer and the paths: the token's role, its prefix, the reserved `/.herd` subtree and
//!    the root ([`Admission::authorize`]), and for a prefixed token, no value above the prefix
//!    that a put would turn into a directory;
//! 2. the plugins that guard the paths: read-only derived outputs, transforms, then
//!    validators (`plugin::judge`);
//! 3. the values as they will be stored: a time to live on leaves only and nesting depth
//!    (checked before the plugins run too), the key grammar (while exploding into
//!    `store::Op`s) and the value size limit.
//!
//! Preconditions (`If-Match`, create-only, a delete of something missing) are checked last, by
//! the writer thread against the committed state, because only there are they exact.
//!
//! Must not know about HTTP or FUSE: refusals are [`Refusal`]s, which each front end maps to
//! its own form (a status and JSON error, an errno).

use crate::auth::{Grant, Role, RESERVED};
use crate::clock::now_ms;
use crate::db::{self, Condition, Db, WriteRequest, Written};
use crate::plugin::view::Write;
use crate::plugin::{Plugins, Rejection};
use crate::store::{path, value, Lookup, Op, Path};
use serde_json::Value;

/// One write as a client asked for it: a put of `value` (with a time to live in milliseconds)
/// or, with no value, a delete.
#[derive(Debug, Clone)]
pub struct Asked {
    pub path: Path,
    pub value: Option<Value>,
    pub ttl_ms: Option<u64>,
}

impl Asked {
    pub fn put(path: Path, value: Value, ttl_ms: Option<u64>) -> Asked {
        Asked {
            path,
            value: Some(value),
            ttl_ms,
        }
    }

    pub fn delete(path: Path) -> Asked {
        Asked {
            path,
            value: None,
            ttl_ms: None,
        }
    }
}

/// Why a write was not admitted. Nothing of it is stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// The token's role does not allow writing.
    #[error("{0}")]
    Role(String),
    /// The path is outside the token's prefix, or a put would replace a value above it.
    #[error("{0}")]
    OutsidePrefix(String),
    /// The path is in the node's own subtree.
    #[error("{0} is reserved for the node itself")]
    Reserved(Path),
    /// The root itself cannot be replaced or deleted.
    #[error(
        "the root cannot be replaced or deleted as a whole; write below it (herd import does this)"
    )]
    Root,
    /// The request does not make sense (a time to live on an object).
    #[error("{0}")]
    Invalid(String),
    /// A value breaks the value grammar (a key, the depth).
    #[error(transparent)]
    Value(#[from] value::Error),
    #[error("value of {len} bytes is over the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("{0}")]
    Plugin(Rejection),
    /// The writer thread refused it (a precondition, storage).
    #[error(transparent)]
    Db(#[from] db::Error),
}

/// What a write needs to be judged: the store (for the value above a prefix), the plugins and
/// the value size limit. Cheap to clone.
#[derive(Clone)]
pub struct Admission {
    db: Db,
    plugins: Plugins,
    max_value_bytes: usize,
}

impl From<Rejection> for Refusal {
    fn from(r: Rejection) -> Refusal {
        Refusal::Plugin(r)
    }
}

impl Admission {
    pub fn new(db: Db, plugins: Plugins, max_value_bytes: usize) -> Admission {
        Admission {
            db,
            plugins,
            max_value_bytes,
        }
    }

    /// Step 1 for one path: may `grant` write at `p`? A front end may call it before reading a
    /// request's body, so a forbidden request is refused at once; [`Admission::judge`] checks
    /// again.
    pub fn authorize(&self, grant: &Grant, p: &Path, put: bool) -> Result<(), Refusal> {
        check_role(grant, Role::Write)?;
        check_path(grant, p)?;
        if p.is_root() {
            return Err(Refusal::Root);
        }
        if put {
            self.no_leaf_above(grant)?;
        }
        Ok(())
    }

    /// A put at or below a prefixed token's prefix must leave everything outside it as it is:
    /// a put below a leaf turns that leaf into a directory, which a token may do only within
    /// its prefix.
    fn no_leaf_above(&self, grant: &Grant) -> Result<(), Refusal> {
        if grant.prefix.is_root() {
            return Ok(());
        }
        let st = self.db.read();
        let now = now_ms();
        let leaf = path::key_ancestors(grant.prefix.key())
            .find(|key| matches!(st.store.lookup(key, now), Lookup::Leaf(_)));
        match leaf {
            None => Ok(()),
            Some(key) => Err(Refusal::OutsidePrefix(format!(
                "token {:?} is limited to {}, below the value at {}: a write there would \
                 replace that value, which is outside the prefix",
                grant.name,
                grant.prefix,
                Path::from_key(key)
            ))),
        }
    }

    /// Judges a request on the caller's task (plugins run where their time limits allow):
    /// answers the request the writer thread is to apply. `numbered` names the op a refusal
    /// concerns, as a batch's refusals do ("op 2: ...").
    pub async fn judge(
        &self,
        grant: &Grant,
        asked: Vec<Asked>,
        condition: Condition,
        numbered: bool,
    ) -> Result<WriteRequest, Refusal> {
        let (writes, ttls) = self.before(grant, asked, numbered)?;
        let (writes, judged) = if self.plugins.concerned(writes.iter().map(|w| &w.path)) {
            (self.plugins.judge(writes, &grant.name).await?, true)
        } else {
            (writes, false)
        };
        self.after(writes, ttls, condition, numbered, judged)
    }

    /// [`Admission::judge`] on the calling thread (the file view's threads).
    pub fn judge_now(
        &self,
        grant: &Grant,
        asked: Vec<Asked>,
        condition: Condition,
    ) -> Result<WriteRequest, Refusal> {
        let (writes, ttls) = self.before(grant, asked, false)?;
        let (writes, judged) = if self.plugins.concerned(writes.iter().map(|w| &w.path)) {
            (self.plugins.judge_now(writes, &grant.name)?, true)
        } else {
            (writes, false)
        };
        self.after(writes, ttls, condition, false, judged)
    }

    /// Judges a request and makes it; answers once it is durable.
    pub async fn write(
        &self,
        grant: &Grant,
        asked: Vec<Asked>,
        condition: Condition,
        numbered: bool,
    ) -> Result<Written, Refusal> {
        let req = self.judge(grant, asked, condition, numbered).await?;
        Ok(self.db.write(req).await?)
    }

    /// Step 1 for every write, the cheap value checks before any plugin runs (step 3 checks
    /// them again on the values the plugins leave), and the writes as plugins see them.
    #[allow(
        clippy::type_complexity,
        reason = "a private pair consumed by the caller"
    )]
    fn before(
        &self,
        grant: &Grant,
        asked: Vec<Asked>,
        numbered: bool,
    ) -> Result<(Vec<Write>, Vec<Option<u64>>), Refusal> {
        let mut writes = Vec::with_capacity(asked.len());
        let mut ttls = Vec::with_capacity(asked.len());
        for (i, a) in asked.into_iter().enumerate() {
            self.authorize(grant, &a.path, a.value.is_some())?;
            if let Some(v) = &a.value {
                shape(i, v, a.ttl_ms, numbered)?;
            }
            writes.push(Write {
                path: a.path,
                value: a.value,
            });
            ttls.push(a.ttl_ms);
        }
        Ok((writes, ttls))
    }

    /// Step 3: the values as judged, exploded into ops within the limits. Their shape was
    /// checked before the plugins; it is checked again only if plugins may have rewritten them.
    fn after(
        &self,
        writes: Vec<Write>,
        ttls: Vec<Option<u64>>,
        condition: Condition,
        numbered: bool,
        judged: bool,
    ) -> Result<WriteRequest, Refusal> {
        let mut ops = Vec::with_capacity(writes.len());
        for (i, (w, ttl_ms)) in writes.into_iter().zip(ttls).enumerate() {
            let Some(v) = w.value else {
                ops.push(Op::Delete { path: w.path });
                continue;
            };
            if judged {
                shape(i, &v, ttl_ms, numbered)?;
            }
            let op = Op::put(w.path, &v, ttl_ms)?;
            if let Op::Put { text, .. } = &op {
                if text.len() > self.max_value_bytes {
                    return Err(Refusal::TooLarge {
                        len: text.len(),
                        limit: self.max_value_bytes,
                    });
                }
            }
            ops.push(op);
        }
        Ok(WriteRequest { ops, condition })
    }
}

/// May `grant` act with `role`? The API's reads and token calls ask this too.
pub fn check_role(grant: &Grant, role: Role) -> Result<(), Refusal> {
    if grant.role >= role {
        return Ok(());
    }
    Err(Refusal::Role(
        format!(
            "token {:?} has role {:?}; this needs {:?}",
            grant.name, grant.role, role
        )
        .to_lowercase(),
    ))
}

/// May `grant` touch `p`: not the node's reserved subtree, and inside the token's prefix. The
/// API's reads and watches ask this too.
pub fn check_path(grant: &Grant, p: &Path) -> Result<(), Refusal> {
    if p.first() == Some(RESERVED) {
        return Err(Refusal::Reserved(p.clone()));
    }
    if !grant.covers(p) {
        return Err(Refusal::OutsidePrefix(format!(
            "token {:?} is limited to {}; {p} is outside it",
            grant.name, grant.prefix
        )));
    }
    Ok(())
}

/// A value's shape as the store takes it: a time to live on leaves only, nesting within
/// `value::MAX_DEPTH`. `numbered` names the op (`i`) in the refusal, as a batch's refusals do.
fn shape(i: usize, v: &Value, ttl_ms: Option<u64>, numbered: bool) -> Result<(), Refusal> {
    if ttl_ms.is_some() && v.is_object() {
        let why = "ttl applies to leaf values only, not to objects";
        return Err(Refusal::Invalid(if numbered {
            format!("op {i}: {why}")
        } else {
            why.into()
        }));
    }
    if value::depth(v) > value::MAX_DEPTH {
        return Err(value::Error::TooDeep.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn open() -> (tempfile::TempDir, Db, Admission) {
        let (dir, db, _writer) = crate::db::open_for_tests(1);
        let plugins = Plugins::open(
            dir.path(),
            db.clone(),
            Default::default(),
            Default::default(),
        )
        .unwrap();
        let admission = Admission::new(db.clone(), plugins, 64);
        (dir, db, admission)
    }

    fn p(s: &str) -> Path {
        Path::parse(s).unwrap()
    }

    #[tokio::test]
    async fn the_writer_and_the_paths_are_checked_first() {
        let (_dir, db, adm) = open().await;
        let mut reader = Grant::local("reader");
        reader.role = Role::Read;
        let put = |path: &str| vec![Asked::put(p(path), json!(1), None)];
        let judge = |g: &Grant, asked| adm.judge_now(g, asked, Condition::None);
        assert!(matches!(
            judge(&reader, put("/a")),
            Err(Refusal::Role(m)) if m.contains("role read")
        ));
        let anyone = Grant::local("ops");
        assert!(matches!(
            judge(&anyone, put("/.herd/tokens/x")),
            Err(Refusal::Reserved(_))
        ));
        assert!(matches!(
            judge(&anyone, vec![Asked::delete(Path::root())]),
            Err(Refusal::Root)
        ));
        let mut app = Grant::local("app");
        app.prefix = p("/app/x");
        assert!(matches!(
            judge(&app, put("/other")),
            Err(Refusal::OutsidePrefix(_))
        ));
        assert!(judge(&app, put("/app/x/y")).is_ok());
        // A value above the prefix: a put there would turn it into a directory, a delete
        // below it changes nothing outside the prefix.
        adm.write(
            &anyone,
            vec![Asked::put(p("/app"), json!(1), None)],
            Condition::None,
            false,
        )
        .await
        .unwrap();
        assert!(matches!(
            judge(&app, put("/app/x/y")),
            Err(Refusal::OutsidePrefix(m)) if m.contains("below the value at /app")
        ));
        assert!(judge(&app, vec![Asked::delete(p("/app/x/y"))]).is_ok());
        let mut s = String::new();
        db.read().store.render("", now_ms(), &mut s);
        assert_eq!(s, r#"{"app":1}"#, "nothing refused was stored");
    }

    #[tokio::test]
    async fn values_are_checked_as_they_will_be_stored() {
        let (_dir, _db, adm) = open().await;
        let g = Grant::local("ops");
        let judge = |asked, numbered| at_once(adm.judge(&g, asked, Condition::IfExists, numbered));
        let req = judge(
            vec![
                Asked::put(p("/a"), json!({"b": 1}), None),
                Asked::delete(p("/c")),
                Asked::put(p("/d"), json!("x"), Some(1000)),
            ],
            true,
        )
        .unwrap();
        assert_eq!(req.condition, Condition::IfExists);
        let paths: Vec<String> = req.ops.iter().map(|o| o.path().to_string()).collect();
        assert_eq!(paths, ["/a", "/c", "/d"]);
        let ttl_on_object = vec![
            Asked::delete(p("/c")),
            Asked::put(p("/a"), json!({"b": 1}), Some(1000)),
        ];
        assert!(matches!(
            judge(ttl_on_object.clone(), true),
            Err(Refusal::Invalid(m)) if m == "op 1: ttl applies to leaf values only, not to objects"
        ));
        assert!(matches!(
            judge(ttl_on_object, false),
            Err(Refusal::Invalid(m)) if m == "ttl applies to leaf values only, not to objects"
        ));
        assert!(matches!(
            judge(
                vec![Asked::put(p("/a"), json!({"bad/key": 1}), None)],
                false
            ),
            Err(Refusal::Value(value::Error::Key { .. }))
        ));
        let mut deep = json!(1);
        for _ in 0..=value::MAX_DEPTH {
            deep = json!({ "k": deep });
        }
        assert!(matches!(
            judge(vec![Asked::put(p("/a"), deep, None)], false),
            Err(Refusal::Value(value::Error::TooDeep))
        ));
        assert!(matches!(
            judge(
                vec![Asked::put(p("/a"), json!("x".repeat(63)), None)],
                false
            ),
            Err(Refusal::TooLarge { len: 65, limit: 64 })
        ));
    }

    /// Runs a future that never waits (no plugin is installed) to its end.
    fn at_once<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let waker = std::task::Waker::noop();
        match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("judging waited"),
        }
    }
}
