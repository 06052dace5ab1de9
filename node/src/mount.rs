//! The file view's two backends (`fuse_mount::Backend`): [`Local`] reads the node's own store
//! and writes through its database (`herd serve --mount DIR`); [`remote::Remote`] talks to any
//! node over HTTPS and follows its watch stream (`herd mount DIR --node URL`).
//!
//! Both judge writes exactly as the REST API does: [`Local`] through the same
//! [`Admission`](crate::admission::Admission) the API's handlers call, [`remote::Remote`] by
//! asking the API itself; the file view knows none of these rules.

pub mod remote;

use std::sync::Arc;
use std::time::Instant;

use fuse_mount::{Backend, Change, ChangeSink, Child, Error, ErrorKind, Node, Op, Segments};
use serde_json::Value;
use tokio::runtime::Handle;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{Admission, Asked, Refusal};
use crate::auth::{self, Grant};
use crate::clock::now_ms;
use crate::config::Config;
use crate::db::{self, Condition, Db};
use crate::plugin::derive::Found;
use crate::plugin::{Plugins, Rejection};
use crate::store::{self, path, Lookup, Path, INTERNAL};

/// The token name plugins see for writes through the in-process file view.
const MOUNT_WRITER: &str = "mount";

/// The errno-level kind of a plugin's refusal: `EINVAL` for a refused or failed write,
/// `EROFS` for a derived key.
pub fn rejection(r: Rejection) -> Error {
    let kind = match &r {
        Rejection::Refused { .. } | Rejection::Failed { .. } => ErrorKind::Invalid,
        Rejection::Unavailable { .. } => ErrorKind::Unavailable,
        Rejection::ReadOnly { .. } => ErrorKind::ReadOnly,
    };
    Error::new(kind, r.to_string())
}

/// A derived value as the file view shows it (read-only).
fn derived_node(v: &Value) -> Node {
    let mtime_ms = crate::clock::now_ms();
    if v.is_object() {
        Node::Dir {
            mtime_ms,
            read_only: true,
        }
    } else {
        Node::Leaf {
            value: v.clone(),
            mtime_ms,
            read_only: true,
        }
    }
}

/// The in-process backend: reads take the store's read lock, writes go through the writer.
pub struct Local {
    db: Db,
    plugins: Plugins,
    admission: Admission,
    /// Who the file view writes as.
    grant: Grant,
    config: Arc<Config>,
    runtime: Handle,
    cancel: CancellationToken,
    /// The node's tracker: the change-feed tasks join it.
    tracker: TaskTracker,
    started: Instant,
}

impl Local {
    /// `runtime` runs the writes and the change feed, whose tasks join `tracker`; `cancel`
    /// ends the feed.
    pub fn new(
        db: Db,
        plugins: Plugins,
        config: Arc<Config>,
        runtime: Handle,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) -> Local {
        Local {
            admission: Admission::new(db.clone(), plugins.clone(), config.api.max_value_bytes),
            grant: Grant::local(MOUNT_WRITER),
            db,
            plugins,
            config,
            runtime,
            cancel,
            tracker,
            started: Instant::now(),
        }
    }
}

impl Local {
    /// What the derived outputs show at `p`, in the store's place: `Some(None)` for nothing
    /// there, `None` when `p` is outside every output (the store answers).
    fn derived(&self, p: &Path) -> Option<Option<Value>> {
        match self.plugins.outputs().get(p) {
            Found::Outside => None,
            Found::Missing => Some(None),
            Found::Value(v) => Some(Some(v)),
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

/// The errno-level kind of a refused write.
pub fn refusal(r: Refusal) -> Error {
    let kind = match r {
        Refusal::Plugin(r) => return rejection(r),
        Refusal::Db(e) => return db_error(e),
        Refusal::Role(_) | Refusal::OutsidePrefix(_) => ErrorKind::Denied,
        Refusal::Reserved(_) => ErrorKind::ReadOnly,
        Refusal::Root | Refusal::Invalid(_) | Refusal::Value(_) => ErrorKind::Invalid,
        Refusal::TooLarge { .. } => ErrorKind::TooBig,
    };
    Error::new(kind, r.to_string())
}

/// The errno-level kind of a refused database write.
pub fn db_error(e: db::Error) -> Error {
    let kind = match e {
        db::Error::NotFound(_) => ErrorKind::NotFound,
        db::Error::PreconditionFailed { .. }
        | db::Error::AlreadyExists(_)
        | db::Error::NothingToMatch(_) => ErrorKind::Conflict,
        db::Error::Overlap(..) => ErrorKind::Invalid,
        db::Error::NoSpace(_) => ErrorKind::NoSpace,
        db::Error::Storage(_)
        | db::Error::StorageUnknown(_)
        | db::Error::ShuttingDown
        | db::Error::ClockAhead(_) => ErrorKind::Unavailable,
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
        if let Some(found) = self.derived(&p) {
            return Ok(found.map(|v| derived_node(&v)));
        }
        let derived_dirs = self.plugins.outputs().dirs_below(&p);
        let st = self.db.read();
        let node = match st.store.lookup(p.key(), now_ms()) {
            Lookup::Missing if !derived_dirs.is_empty() => Some(Node::Dir {
                mtime_ms: 0,
                read_only: false,
            }),
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

    fn is_dir(&self, segs: &Segments) -> Result<Option<bool>, Error> {
        let p = to_path(segs)?;
        if let Some(found) = self.derived(&p) {
            return Ok(found.map(|v| v.is_object()));
        }
        let derived_dirs = self.plugins.outputs().dirs_below(&p);
        let st = self.db.read();
        Ok(match st.store.lookup(p.key(), now_ms()) {
            Lookup::Missing => (!derived_dirs.is_empty()).then_some(true),
            Lookup::Leaf(r) => matches!(r.kind, store::Kind::Leaf(_)).then_some(false),
            Lookup::Dir => Some(true),
        })
    }

    fn list(&self, segs: &Segments) -> Result<Vec<Child>, Error> {
        let p = to_path(segs)?;
        if let Some(found) = self.derived(&p) {
            return match found {
                None => Err(Error::new(ErrorKind::NotFound, format!("nothing at {p}"))),
                Some(Value::Object(m)) => Ok(m
                    .iter()
                    .map(|(k, v)| Child {
                        name: k.clone(),
                        is_dir: v.is_object(),
                    })
                    .collect()),
                Some(_) => Err(Error::new(
                    ErrorKind::Invalid,
                    format!("{p} is a value, not a directory"),
                )),
            };
        }
        let derived_dirs = self.plugins.outputs().dirs_below(&p);
        let st = self.db.read();
        let listed = st.store.children(p.key(), now_ms());
        let listed = match (listed, derived_dirs.is_empty()) {
            (None, false) => Some(Ok(Vec::new())),
            (l, _) => l,
        };
        let mut kids = match listed {
            None => Err(Error::new(ErrorKind::NotFound, format!("nothing at {p}"))),
            Some(Err(())) => Err(Error::new(
                ErrorKind::Invalid,
                format!("{p} is a value, not a directory"),
            )),
            Some(Ok(kids)) => Ok(kids
                .into_iter()
                .filter(|(name, _)| !(p.is_root() && name == auth::RESERVED))
                .map(|(name, is_dir)| Child { name, is_dir })
                .collect::<Vec<_>>()),
        }?;
        for d in derived_dirs {
            if !kids.iter().any(|c| c.name == d) {
                kids.push(Child {
                    name: d,
                    is_dir: true,
                });
            }
        }
        Ok(kids)
    }

    fn read(&self, segs: &Segments) -> Result<Option<Value>, Error> {
        let p = to_path(segs)?;
        if let Some(found) = self.derived(&p) {
            return Ok(found);
        }
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
        let asked = vec![Asked::put(to_path(segs)?, v.clone(), None)];
        self.admission
            .judge_now(&self.grant, asked, Condition::None)
            .map_err(refusal)?;
        // A disk that refuses writes fails `write()` itself, as a full local disk would.
        self.db.writable().map_err(db_error)
    }

    fn apply(&self, ops: Vec<Op>) -> Result<(), Error> {
        let asked = ops
            .into_iter()
            .map(|op| match op {
                Op::Put(segs, v) => Ok(Asked::put(to_path(&segs)?, v, None)),
                Op::Delete(segs) => Ok(Asked::delete(to_path(&segs)?)),
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let req = self
            .admission
            .judge_now(&self.grant, asked, Condition::None)
            .map_err(refusal)?;
        let db = self.db.clone();
        self.runtime
            .block_on(async move { db.write(req).await })
            .map(drop)
            .map_err(db_error)
    }

    fn subscribe(&self, sink: ChangeSink) {
        let db = self.db.clone();
        let cancel = self.cancel.clone();
        let mut derived = self.plugins.outputs().subscribe();
        {
            let sink = sink.clone();
            let cancel = cancel.clone();
            self.tracker.spawn_on(
                async move {
                    loop {
                        let changed = tokio::select! {
                            _ = cancel.cancelled() => return,
                            c = derived.recv() => c,
                        };
                        match changed {
                            Ok(p) => sink(Change::Path(p.segments().map(String::from).collect())),
                            Err(RecvError::Lagged(_)) => sink(Change::All),
                            Err(RecvError::Closed) => return,
                        }
                    }
                },
                &self.runtime,
            );
        }
        // Every change, in order. A burst larger than the live feed holds (a big batch or
        // import) is caught up from the change log, so each changed path still reaches the
        // mount (and its inotify replay); only a gap the log no longer holds is `Change::All`.
        let feed = async move {
            let mut since = db.read().revision;
            loop {
                let mut sub = match db.subscribe("", Some(since)) {
                    Ok(sub) => sub,
                    Err(_) => {
                        // The revision first: a change made while the mount resyncs is then
                        // delivered again rather than missed.
                        since = db.read().revision;
                        sink(Change::All);
                        continue;
                    }
                };
                let backlog = std::mem::take(&mut sub.backlog);
                for ev in backlog {
                    if !path::key_contains(INTERNAL, &ev.key) {
                        sink(Change::Path(segments(&ev.key)));
                    }
                    // Resume from before this revision: a lag in its middle delivers it again
                    // whole (a path delivered twice is replayed once).
                    since = ev.revision.saturating_sub(1);
                }
                loop {
                    let event = tokio::select! {
                        _ = cancel.cancelled() => return,
                        e = sub.live.recv() => e,
                    };
                    match event {
                        Ok(ev) => {
                            if !path::key_contains(INTERNAL, &ev.key) {
                                sink(Change::Path(segments(&ev.key)));
                            }
                            since = since.max(ev.revision.saturating_sub(1));
                        }
                        Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => return,
                    }
                }
            }
        };
        self.tracker.spawn_on(feed, &self.runtime);
    }

    fn status(&self) -> Value {
        let mut v = crate::api::status_value(&self.db, &self.config, self.started);
        v["plugins"] = self.plugins.status();
        v
    }

    fn max_value_bytes(&self) -> usize {
        self.config.api.max_value_bytes
    }
}
