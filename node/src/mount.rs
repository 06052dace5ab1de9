//! The file view's two backends (`fuse_mount::Backend`): [`Local`] reads the node's own store
//! and writes through its database (`herd serve --mount DIR`); [`remote::Remote`] talks to any
//! node over HTTPS and follows its watch stream (`herd mount DIR --node URL`).
//!
//! Both judge writes exactly as the REST API does (path grammar, reserved `/.herd`, value limits,
//! size); the file view itself knows none of these rules.

pub mod remote;

use std::sync::Arc;
use std::time::Instant;

use fuse_mount::{Backend, Change, ChangeSink, Child, Error, ErrorKind, Node, Op, Segments};
use serde_json::Value;
use tokio::runtime::Handle;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::auth;
use crate::config::Config;
use crate::db::{self, now_ms, Condition, Db, WriteRequest};
use crate::store::{self, path, value, Lookup, Path, INTERNAL};

/// The in-process backend: reads take the store's read lock, writes go through the writer.
pub struct Local {
    db: Db,
    config: Arc<Config>,
    runtime: Handle,
    cancel: CancellationToken,
    started: Instant,
}

impl Local {
    /// `runtime` runs the writes and the change feed; `cancel` ends the feed.
    pub fn new(db: Db, config: Arc<Config>, runtime: Handle, cancel: CancellationToken) -> Local {
        Local {
            db,
            config,
            runtime,
            cancel,
            started: Instant::now(),
        }
    }
}

/// The store path of a file-view path; the reserved `/.herd` subtree is not part of the view.
fn to_path(segs: &Segments) -> Result<Path, Error> {
    let p = Path::from_segments(segs.iter().map(String::as_str))
        .map_err(|e| Error::new(ErrorKind::Invalid, e.to_string()))?;
    if p.first() == Some(auth::RESERVED) {
        return Err(Error::new(
            ErrorKind::ReadOnly,
            format!("{p} is reserved for the node itself"),
        ));
    }
    Ok(p)
}

/// Checks a put as the REST API does and turns it into a store op.
pub fn put_op(segs: &Segments, v: &Value, max_value_bytes: usize) -> Result<store::Op, Error> {
    let p = to_path(segs)?;
    if p.is_root() {
        return Err(Error::new(
            ErrorKind::Invalid,
            "the root itself cannot be replaced; write a key below it",
        ));
    }
    if value::depth(v) > value::MAX_DEPTH {
        return Err(Error::new(
            ErrorKind::Invalid,
            value::Error::TooDeep.to_string(),
        ));
    }
    // Numbers in a `Value` are already within 64 bits or finite; the key grammar is checked
    // while the value is exploded.
    let op =
        store::Op::put(p, v, None).map_err(|e| Error::new(ErrorKind::Invalid, e.to_string()))?;
    let size = match &op {
        store::Op::Put { text, .. } => text.len(),
        store::Op::Delete { .. } => 0,
    };
    if size > max_value_bytes {
        return Err(Error::new(
            ErrorKind::TooBig,
            format!("value of {size} bytes is over the limit of {max_value_bytes} bytes"),
        ));
    }
    Ok(op)
}

/// The errno-level kind of a refused database write.
pub fn db_error(e: db::Error) -> Error {
    let kind = match e {
        db::Error::NotFound(_) => ErrorKind::NotFound,
        db::Error::PreconditionFailed { .. } | db::Error::AlreadyExists(_) => ErrorKind::Conflict,
        db::Error::Overlap(..) => ErrorKind::Invalid,
        db::Error::Storage(_) | db::Error::ShuttingDown => ErrorKind::Unavailable,
    };
    Error::new(kind, e.to_string())
}

/// The segments of a store key.
fn segments(key: &str) -> Vec<String> {
    Path::from_key(key).segments().map(String::from).collect()
}

impl Backend for Local {
    fn get(&self, segs: &Segments) -> Result<Option<Node>, Error> {
        let p = to_path(segs)?;
        let st = self.db.read();
        let node = match st.store.lookup(p.key(), now_ms()) {
            Lookup::Missing => None,
            Lookup::Leaf(r) => {
                let text = match &r.kind {
                    store::Kind::Leaf(t) => t,
                    _ => return Ok(None),
                };
                let value = serde_json::from_str(text).map_err(|e| {
                    Error::new(
                        ErrorKind::Unavailable,
                        format!("stored value unreadable: {e}"),
                    )
                })?;
                Some(Node::Leaf {
                    value,
                    mtime_ms: r.version.millis,
                    read_only: false,
                })
            }
            Lookup::Dir => Some(Node::Dir {
                mtime_ms: st.store.newest_version(p.key()).millis,
                read_only: false,
            }),
        };
        Ok(node)
    }

    fn list(&self, segs: &Segments) -> Result<Vec<Child>, Error> {
        let p = to_path(segs)?;
        let st = self.db.read();
        match st.store.children(p.key(), now_ms()) {
            None => Err(Error::new(ErrorKind::NotFound, format!("nothing at {p}"))),
            Some(Err(())) => Err(Error::new(
                ErrorKind::Invalid,
                format!("{p} is a value, not a directory"),
            )),
            Some(Ok(kids)) => Ok(kids
                .into_iter()
                .filter(|(name, _)| !(p.is_root() && name == auth::RESERVED))
                .map(|(name, is_dir)| Child { name, is_dir })
                .collect()),
        }
    }

    fn read(&self, segs: &Segments) -> Result<Option<Value>, Error> {
        let p = to_path(segs)?;
        let mut text = String::new();
        if !self.db.read().store.render(p.key(), now_ms(), &mut text) {
            return Ok(None);
        }
        serde_json::from_str(&text).map(Some).map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("stored value unreadable: {e}"),
            )
        })
    }

    fn check(&self, segs: &Segments, v: &Value) -> Result<(), Error> {
        put_op(segs, v, self.config.max_value_bytes).map(drop)
    }

    fn apply(&self, ops: Vec<Op>) -> Result<(), Error> {
        let mut planned = Vec::with_capacity(ops.len());
        for op in &ops {
            planned.push(match op {
                Op::Put(segs, v) => put_op(segs, v, self.config.max_value_bytes)?,
                Op::Delete(segs) => store::Op::Delete {
                    path: to_path(segs)?,
                },
            });
        }
        let req = WriteRequest {
            ops: planned,
            condition: Condition::None,
        };
        let db = self.db.clone();
        self.runtime
            .block_on(async move { db.write(req).await })
            .map(drop)
            .map_err(db_error)
    }

    fn subscribe(&self, sink: ChangeSink) {
        let db = self.db.clone();
        let cancel = self.cancel.clone();
        self.runtime.spawn(async move {
            let revision = db.read().revision;
            let Ok(mut sub) = db.subscribe("", Some(revision)) else {
                sink(Change::All);
                return;
            };
            loop {
                let event = tokio::select! {
                    _ = cancel.cancelled() => return,
                    e = sub.live.recv() => e,
                };
                match event {
                    Ok(ev) if path::key_contains(INTERNAL, &ev.key) => {}
                    Ok(ev) => sink(Change::Path(segments(&ev.key))),
                    Err(RecvError::Lagged(_)) => sink(Change::All),
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }

    fn status(&self) -> Value {
        crate::api::status_value(&self.db, &self.config, self.started)
    }

    fn max_value_bytes(&self) -> usize {
        self.config.max_value_bytes
    }
}
