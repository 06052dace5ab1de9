//! Durable storage: a write-ahead log in front of one redb file.
//!
//! A commit is one record appended to the log ([`Storage::append`]) and synced (see `wal` for how;
//! [`LogSync::sync`], possibly on another thread than the one appending):
//! the sync is the point of acknowledgement. The registers it changed are also kept in memory ("dirty")
//! and a checkpoint thread writes them to redb in one synced transaction once they take
//! [`CHECKPOINT_DIRTY_BYTES`] of memory, the log since the last checkpoint passes
//! [`CHECKPOINT_LOG_BYTES`], or the oldest is [`CHECKPOINT_INTERVAL`] old; then the log segments it
//! covers are deleted. Checkpoints coalesce: a key written a thousand times
//! between two checkpoints is written to redb once, so redb's copy-on-write page rewrites are
//! paid per checkpoint instead of per commit. A load reads redb, then replays the log records
//! after the log sequence number that the last checkpoint stored, so a restart finds exactly
//! what was acknowledged.
//!
//! A failed log write or sync stops all later commits (fail-stop): after a failed `fsync` the
//! kernel may have dropped the pages, and the only trustworthy state is the one a restart
//! recovers from disk. A failure says whether the commit may have reached the disk
//! ([`Error::outcome_unknown`]): a refused write must leave no trace.
//!
//! A load refuses, naming the file, whatever would silently drop an acknowledged commit: a bad
//! log record that is not a torn tail (a whole record follows it, in its segment or a later
//! one), a gap in the log's sequence numbers, or a redb file that no longer meets the log
//! (rolled back, replaced, emptied or deleted: redb records the first log segment it does not
//! cover, and the segments before it are deleted only after that is durable). Knows nothing of
//! the merge rule, tasks or HTTP: it stores what it is given.

mod checkpoint;
mod record;
mod stop;
mod wal;

pub use stop::{Cause, Stop, Stopped};

use checkpoint::{read_redb, write_checkpoint, Checkpointer, Job, Redb};
use record::Record;

use crate::store::{Register, Version};
use redb::{Database, TableDefinition};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Registers by key (segments joined by NUL), plus the counters under [`META_KEY`] and
/// [`LSN_KEY`]: one table, so a checkpoint rewrites one B-tree.
const REGISTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("registers");
/// Where the counters live: no register key starts with NUL (segments are never empty).
const META_KEY: &str = "\0meta";
/// The last log record that redb holds (little-endian u64).
const LSN_KEY: &str = "\0lsn";
/// The first log segment redb does not cover (little-endian u64): every older one may be gone.
const WAL_NEXT_KEY: &str = "\0walnext";
/// The sum of [`entry_sum`] over every register (little-endian u64), kept by each checkpoint:
/// a start that reads other registers than the last checkpoint wrote (a damaged page) refuses.
const SUM_KEY: &str = "\0sum";
/// A checkpoint starts once the dirty registers take about this much memory (keys, encoded
/// registers and [`DIRTY_ENTRY_BYTES`] each): this bounds the memory they hold...
pub const CHECKPOINT_DIRTY_BYTES: u64 = 32 << 20;
/// ...or once this much log has been written since the last one: this bounds what a restart
/// replays. It is the larger bound because keys written again and again (the usual traffic of a
/// configuration store) grow the log but not the dirty registers, and a checkpoint costs the
/// same for a key written once or a thousand times...
pub const CHECKPOINT_LOG_BYTES: u64 = 64 << 20;
/// ...or once the oldest change not in redb is this old.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);
/// What a dirty entry costs beyond its key and encoded register, estimated: the map's slot (two
/// boxed slices, 32 bytes, plus a control byte and spare capacity) and allocator rounding.
const DIRTY_ENTRY_BYTES: u64 = 48;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open database {path}: {source}")]
    Open {
        path: String,
        source: redb::DatabaseError,
    },
    #[error("database read failed: {0}")]
    Read(String),
    #[error("database commit failed: {0}")]
    Commit(String),
    /// Writing a checkpoint to redb failed; everything it held is still in the log.
    #[error("writing a checkpoint to the database file failed: {why}")]
    Checkpoint { why: String, errno: Option<i32> },
    #[error("database holds a corrupt register at {key:?}: {source}")]
    Corrupt {
        key: String,
        source: crate::store::register::DecodeError,
    },
    #[error(transparent)]
    Log(#[from] wal::Error),
    #[error("write-ahead log record {lsn} is malformed: {why}")]
    BadRecord { lsn: u64, why: &'static str },
    #[error("write-ahead log segment {path} is damaged at byte {offset} ({why}); refusing to start rather than drop acknowledged records. Restore the data directory from a backup, or move it aside and let the node resync from its peers")]
    Damaged {
        path: String,
        offset: u64,
        why: String,
    },
    #[error("{0}; refusing to start rather than serve without acknowledged writes. Restore the data directory from a backup, or move it aside and let the node resync from its peers")]
    Gap(String),
    #[error("storage stopped after an earlier disk failure ({why}); {}", if *resumable { "writes are taken again once the disk has room" } else { "restart the node to recover what was acknowledged" })]
    Stopped {
        why: String,
        cause: Cause,
        /// See [`Stop::resumable`].
        resumable: bool,
        /// The commit may have reached the disk before the failure: it is in the page cache of
        /// a buffered log, or was part of the direct write that failed.
        appended: bool,
    },
}

impl Error {
    /// What kind of failure this is.
    pub fn cause(&self) -> Cause {
        match self {
            Error::Log(e) => Cause::of_errno(e.os_error()),
            Error::Checkpoint { errno, .. } => Cause::of_errno(*errno),
            Error::Stopped { cause, .. } => *cause,
            _ => Cause::Io,
        }
    }

    /// True if the commit that failed may be durable all the same: its own log write or sync
    /// failed, or it sits in the page cache of a buffered log. Otherwise nothing of it was
    /// written.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            Error::Log(wal::Error::Unsynced { .. }) | Error::Stopped { appended: true, .. }
        )
    }
}

fn read_err(e: impl std::fmt::Display) -> Error {
    Error::Read(e.to_string())
}

/// What a restart finds.
pub struct Loaded {
    pub registers: Vec<(Box<str>, Register)>,
    pub revision: u64,
    pub high_water: Version,
}

/// One group commit.
#[derive(Default)]
pub struct Commit<'a> {
    /// Keys to delete (applied before `puts`).
    pub removes: Vec<&'a str>,
    pub puts: Vec<(&'a str, &'a Register)>,
    /// The node's revision after this commit.
    pub revision: u64,
    /// The clock's high-water mark after this commit.
    pub high_water: Version,
}

/// Changes not yet in redb: key to encoded register, or `None` for a removal.
type Dirty = HashMap<Box<str>, Option<Box<[u8]>>, foldhash::fast::RandomState>;

/// The open database and its log.
pub struct Storage {
    /// `None` only after a [`Storage::reopen`] that failed.
    db: Option<Arc<Database>>,
    /// The database file.
    path: PathBuf,
    cache_bytes: usize,
    wal_dir: PathBuf,
    /// The segment being appended to; `None` until [`Storage::load`].
    log: Option<wal::Writer>,
    dirty: Dirty,
    /// The memory `dirty` takes, estimated (see [`CHECKPOINT_DIRTY_BYTES`]).
    dirty_bytes: u64,
    /// Log bytes written since the last checkpoint was handed off.
    dirty_log_bytes: u64,
    /// When the oldest change in `dirty` was made.
    dirty_since: Option<Instant>,
    /// The last log record written.
    lsn: u64,
    revision: u64,
    high_water: Version,
    checkpointer: Option<Checkpointer>,
    /// Why commits are refused, after a log failure; shared with [`LogSync`]s.
    stopped: Stopped,
    payload: Vec<u8>,
}

impl Storage {
    /// Opens (or creates) the database file and its log directory beside it (`<file>.wal`, e.g.
    /// `store.wal/`). `cache_bytes` bounds redb's page cache: the store keeps its own in-memory
    /// copy, so the cache only needs to hold the B-tree's upper levels.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Storage, Error> {
        // redb panics on some damaged files (one cut short, for one): a clean error instead.
        let db = std::panic::catch_unwind(|| {
            Database::builder().set_cache_size(cache_bytes).create(path)
        })
        .map_err(|panic| Error::Read(damaged(path, &panic)))?
        .map_err(|source| Error::Open {
            path: path.display().to_string(),
            source,
        })?;
        let wal_dir = path.with_extension("wal");
        std::fs::create_dir_all(&wal_dir)
            .map_err(|e| Error::Read(format!("cannot create {}: {e}", wal_dir.display())))?;
        Ok(Storage {
            db: Some(Arc::new(db)),
            path: path.to_path_buf(),
            cache_bytes,
            wal_dir,
            log: None,
            dirty: Dirty::default(),
            dirty_bytes: 0,
            dirty_log_bytes: 0,
            dirty_since: None,
            lsn: 0,
            revision: 0,
            high_water: Version::ZERO,
            checkpointer: None,
            stopped: Arc::default(),
            payload: Vec::with_capacity(64 << 10),
        })
    }

    /// Reads every register and the counters: redb's, then the log's records after them. The
    /// replayed changes stay dirty, so the next checkpoint writes them to redb. Must be called
    /// once, before the first commit.
    pub fn load(&mut self) -> Result<Loaded, Error> {
        if self.log.is_some() {
            return Err(Error::Read("the store is loaded already".into()));
        }
        let db = self.db()?;
        // After a panic the database is not used again: the load fails and it is dropped.
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_redb(&db)))
            .map_err(|panic| Error::Read(damaged(&self.path, &panic)))??;
        let Redb {
            mut registers,
            mut revision,
            mut high_water,
            mut lsn,
            wal_next,
            sum,
        } = read;
        if let Some((stored, found)) = sum.filter(|(stored, found)| stored != found) {
            return Err(Error::Read(format!(
                "{} is damaged: the registers it holds no longer add up to what its last checkpoint wrote (checksum {found:016x}, not {stored:016x}); refusing to start rather than serve damaged values. Restore the data directory from a backup, or move it aside and let the node resync from its peers",
                self.path.display()
            )));
        }
        let redb_lsn = lsn;

        let segments = wal::segments(&self.wal_dir)?;
        // Segments before `wal_next` were deleted once redb covered them: if the oldest one
        // left is later, redb is older than the checkpoint that deleted them.
        if let (Some((oldest, path)), Some(next)) = (segments.first(), wal_next) {
            if *oldest > next {
                return Err(Error::Gap(format!(
                    "{} covers the write-ahead log up to segment {next}, but the oldest segment \
                     left is {} (it was rolled back, replaced or damaged)",
                    self.path.display(),
                    path.display()
                )));
            }
        }
        let (mut replayed, mut replayed_bytes) = (0u64, 0u64);
        let (dirty, dirty_bytes) = (&mut self.dirty, &mut self.dirty_bytes);
        // A bad record ends the log only as a torn tail: nothing whole may follow it.
        let mut torn: Option<(&Path, wal::End)> = None;
        // The newest record read, and whether any was.
        let newest = std::cell::Cell::new((0u64, false));
        // A whole record after a bad one counts only if it reads as a later record.
        let follows = |payload: &[u8]| {
            Record::decode(payload)
                .is_ok_and(|r| r.lsn > newest.get().0 && r.for_each(|_, _| {}).is_ok())
        };
        for (_, path) in &segments {
            let end = wal::read_segment(
                path,
                |payload| {
                    let rec = Record::decode(payload)?;
                    newest.set((rec.lsn, true));
                    if let Some((torn_path, end)) = &torn {
                        return Err(Error::Damaged {
                            path: torn_path.display().to_string(),
                            offset: end.valid,
                            why: format!("record {} follows it in {}", rec.lsn, path.display()),
                        });
                    }
                    if rec.lsn <= lsn {
                        return Ok::<_, Error>(()); // in redb already
                    }
                    if rec.lsn != lsn + 1 {
                        return Err(Error::Gap(format!(
                            "the write-ahead log jumps from record {lsn} to record {} in {} \
                         (records, a segment or the database file's last checkpoint are missing)",
                            rec.lsn,
                            path.display()
                        )));
                    }
                    rec.for_each(|key, value| {
                        set_dirty(dirty, dirty_bytes, key, value);
                    })?;
                    (lsn, revision) = (rec.lsn, rec.revision);
                    high_water = high_water.max(rec.high_water);
                    replayed += 1;
                    replayed_bytes += wal::record_len(payload.len()) as u64;
                    Ok(())
                },
                follows,
            )?;
            if end.dropped == 0 {
                continue;
            }
            if let Some(resumes) = end.resumes {
                return Err(Error::Damaged {
                    path: path.display().to_string(),
                    offset: end.valid,
                    why: format!("a whole record follows it at byte {resumes}"),
                });
            }
            if !end.torn {
                return Err(Error::Damaged {
                    path: path.display().to_string(),
                    offset: end.valid,
                    why: "a record whole in length whose bytes changed: every sector of it \
                          holds data, which a write cut off by a crash cannot leave"
                        .into(),
                });
            }
            if let Some((torn_path, end)) = &torn {
                return Err(Error::Damaged {
                    path: torn_path.display().to_string(),
                    offset: end.valid,
                    why: format!(
                        "bytes that are not zero-fill follow it in {}",
                        path.display()
                    ),
                });
            }
            torn = Some((path, end));
        }
        // A new redb file with a log that holds no record: the log must start at segment 1, or
        // the checkpoints that deleted the earlier segments are gone with the file.
        if let (None, 0, false, Some((oldest, path))) =
            (wal_next, redb_lsn, newest.get().1, segments.first())
        {
            if *oldest > 1 {
                return Err(Error::Gap(format!(
                    "{} is new or empty, but the oldest write-ahead log segment is {} (the \
                     database file was deleted, emptied or replaced)",
                    self.path.display(),
                    path.display()
                )));
            }
        }
        if let Some((path, end)) = torn {
            tracing::warn!(
                segment = %path.display(),
                offset = end.valid,
                bytes = end.dropped,
                "the write-ahead log ends in a torn record (a write cut off by a crash, \
                 never acknowledged); dropped it"
            );
            // New writes go to a new segment, after which this one must read clean.
            wal::truncate(path, end.valid)?;
        }
        if replayed > 0 {
            registers.retain(|(k, _)| !self.dirty.contains_key(k));
            for (k, v) in &self.dirty {
                if let Some(b) = v {
                    let reg = Register::decode(b).map_err(|source| Error::Corrupt {
                        key: k.replace('\0', "/"),
                        source,
                    })?;
                    registers.push((k.clone(), reg));
                }
            }
            tracing::info!(
                records = replayed,
                keys = self.dirty.len(),
                "replayed the write-ahead log"
            );
            self.dirty_log_bytes = replayed_bytes;
            self.dirty_since = Some(Instant::now());
        }
        let next = segments
            .last()
            .map_or(1, |(seq, _)| seq + 1)
            .max(wal_next.unwrap_or(1));
        if replayed == 0 {
            // Segments with nothing to replay are covered by redb already: say so in redb
            // before deleting them, so the next load finds redb meeting the log.
            write_checkpoint(
                &db,
                &Job {
                    entries: Dirty::default(),
                    lsn,
                    revision,
                    high_water,
                    upto: next - 1,
                    covers: None,
                },
            )?;
            wal::remove_upto(&self.wal_dir, next - 1)?;
        }
        // Replayed segments stay until the first checkpoint covers them.
        let log = wal::Writer::create(&self.wal_dir, next)?;
        if !log.direct() {
            tracing::info!(
                dir = %self.wal_dir.display(),
                "this file system has no direct I/O: the write-ahead log is appended and \
                 synced with fdatasync, which costs more per write"
            );
        }
        self.log = Some(log);
        (self.lsn, self.revision, self.high_water) = (lsn, revision, high_water);
        self.checkpointer = Some(Checkpointer::start(
            db,
            self.wal_dir.clone(),
            self.stopped.clone(),
        )?);
        Ok(Loaded {
            registers,
            revision,
            high_water,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db(&self) -> Result<Arc<Database>, Error> {
        self.db
            .clone()
            .ok_or_else(|| Error::Read(format!("{} is closed", self.path.display())))
    }

    /// Closes the storage and opens and loads it again from what is on disk: after it stopped
    /// for want of space with nothing of the failed commit written ([`Stop::resumable`]), the
    /// log then holds exactly the commits that were synced. The new storage has a stop of its
    /// own ([`Storage::stopped`]). On an error the storage stays closed and refuses commits.
    pub fn reopen(&mut self) -> Result<Loaded, Error> {
        if let Some(c) = self.checkpointer.take() {
            drop(c.tx);
            let _ = c.thread.join();
        }
        self.log = None;
        // The last handle on the file (the checkpoint thread's went with it): redb closes it.
        self.db = None;
        let mut fresh = Storage::open(&self.path, self.cache_bytes)?;
        let loaded = fresh.load()?;
        *self = fresh;
        Ok(loaded)
    }

    /// The storage's stop: set once, when it stops taking writes.
    pub fn stopped(&self) -> Stopped {
        self.stopped.clone()
    }

    /// Makes one group commit durable: appends it to the log and syncs it before returning.
    pub fn commit(&mut self, c: &Commit<'_>) -> Result<(), Error> {
        self.append(c)?.sync()
    }

    /// Appends one group commit to the log without syncing it; it is durable (and may be
    /// acknowledged) once the returned handle's [`LogSync::sync`] has succeeded. Appends are
    /// durable in order: a sync covers everything appended before it.
    pub fn append(&mut self, c: &Commit<'_>) -> Result<LogSync, Error> {
        if let Some(stop) = self.stopped.get() {
            return Err(Error::Stopped {
                why: stop.why.clone(),
                cause: stop.cause,
                resumable: stop.resumable,
                appended: false,
            });
        }
        let Some(log) = self.log.as_mut() else {
            return Err(Error::Commit("the store was not loaded".into()));
        };
        let lsn = self.lsn + 1;
        let mut spans = Vec::with_capacity(c.puts.len());
        Record::encode(&mut self.payload, lsn, c, &mut spans);
        let framed = match log.append(&self.payload) {
            Ok(n) => n,
            Err(e) => {
                let e = Error::from(e);
                tracing::error!(error = %e, "write-ahead log append failed; refusing writes");
                let _ = self.stopped.set(Stop::of(&e));
                return Err(e);
            }
        };
        let sync = LogSync {
            segment: log.segment(),
            stopped: self.stopped.clone(),
        };
        (self.lsn, self.revision) = (lsn, c.revision);
        self.high_water = self.high_water.max(c.high_water);
        for k in &c.removes {
            set_dirty(&mut self.dirty, &mut self.dirty_bytes, k, None);
        }
        for ((k, _), (start, end)) in c.puts.iter().zip(spans) {
            let value = Some(&self.payload[start..end]);
            set_dirty(&mut self.dirty, &mut self.dirty_bytes, k, value);
        }
        self.dirty_log_bytes += framed as u64;
        let since = *self.dirty_since.get_or_insert_with(Instant::now);
        if self.dirty_bytes >= CHECKPOINT_DIRTY_BYTES
            || self.dirty_log_bytes >= CHECKPOINT_LOG_BYTES
            || since.elapsed() >= CHECKPOINT_INTERVAL
        {
            self.checkpoint();
        }
        Ok(sync)
    }

    /// Starts a checkpoint if the oldest change not in redb is due; called between commits.
    pub fn tick(&mut self) {
        if self
            .dirty_since
            .is_some_and(|t| t.elapsed() >= CHECKPOINT_INTERVAL)
        {
            self.checkpoint();
        }
    }

    /// Hands the dirty registers to the checkpoint thread and starts a new log segment; waits
    /// while the previous checkpoint is still being written.
    fn checkpoint(&mut self) {
        if self.stopped.get().is_some() || self.dirty_since.is_none() {
            return;
        }
        let (Some(log), Some(checkpointer)) = (self.log.as_mut(), &self.checkpointer) else {
            return;
        };
        // Everything appended so far, synced by the checkpoint thread before redb gets it.
        let covers = log.segment();
        let upto = match log.rotate() {
            Ok(seq) => seq,
            Err(e) => {
                let e = Error::from(e);
                tracing::error!(error = %e, "cannot start a new write-ahead log segment; refusing writes");
                let _ = self.stopped.set(Stop::of(&e));
                return;
            }
        };
        let job = Job {
            entries: std::mem::take(&mut self.dirty),
            lsn: self.lsn,
            revision: self.revision,
            high_water: self.high_water,
            upto,
            covers: Some(covers),
        };
        self.dirty_bytes = 0;
        self.dirty_log_bytes = 0;
        self.dirty_since = None;
        if checkpointer.tx.send(job).is_err() {
            tracing::error!("the checkpoint thread is gone; refusing all writes until restart");
            let _ = self
                .stopped
                .set(Stop::new("the checkpoint thread stopped", Cause::Io));
        }
    }
}

impl Drop for Storage {
    /// A clean shutdown checkpoints what is left, so the next start has no log to replay.
    fn drop(&mut self) {
        self.checkpoint();
        if let Some(c) = self.checkpointer.take() {
            drop(c.tx);
            let _ = c.thread.join();
        }
    }
}

/// Makes appended commits durable; usable from any thread.
#[derive(Clone)]
pub struct LogSync {
    segment: wal::Segment,
    stopped: Stopped,
}

impl LogSync {
    /// Syncs the log up to this commit. A failure stops the storage (see [`Stop`]).
    pub fn sync(&self) -> Result<(), Error> {
        if let Some(stop) = self.stopped.get() {
            return Err(Error::Stopped {
                why: stop.why.clone(),
                cause: stop.cause,
                resumable: stop.resumable,
                appended: self.segment.maybe_written(),
            });
        }
        self.segment.sync().map_err(|e| {
            let e = match e {
                // Another sync of this segment failed (the checkpoint thread's, say) before
                // the storage was marked stopped: this commit may be in what it wrote.
                wal::Error::Broken { .. } => {
                    let stop = Stop::of(&Error::Log(e));
                    Error::Stopped {
                        why: stop.why,
                        cause: stop.cause,
                        resumable: stop.resumable,
                        appended: self.segment.maybe_written(),
                    }
                }
                e => Error::from(e),
            };
            tracing::error!(error = %e, "write-ahead log sync failed; refusing writes");
            let _ = self.stopped.set(Stop::of(&e));
            e
        })
    }
}

/// Records a change not yet in redb, keeping `bytes` (the estimate of what `dirty` takes) in step.
fn set_dirty(dirty: &mut Dirty, bytes: &mut u64, key: &str, value: Option<&[u8]>) {
    let new = dirty_entry_bytes(key, value);
    let value = value.map(Into::into);
    match dirty.get_mut(key) {
        Some(slot) => {
            *bytes = *bytes - dirty_entry_bytes(key, slot.as_deref()) + new;
            *slot = value;
        }
        None => {
            *bytes += new;
            dirty.insert(key.into(), value);
        }
    }
}

fn dirty_entry_bytes(key: &str, value: Option<&[u8]>) -> u64 {
    (key.len() + value.map_or(0, <[u8]>::len)) as u64 + DIRTY_ENTRY_BYTES
}

/// The message for a panic inside redb while it read `path`.
fn damaged(path: &Path, panic: &Box<dyn std::any::Any + Send>) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    format!(
        "{} is damaged (redb failed reading it: {what}); restore the data directory from a \
         backup, or move it aside and let the node resync from its peers",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Kind;

    #[test]
    fn commits_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("store.redb");
        let v = Version {
            millis: 5,
            counter: 1,
            node: 7,
        };
        let a = Register {
            kind: Kind::Leaf("1".into()),
            version: v,
            expires: std::num::NonZeroU64::new(9),
        };
        let b = Register {
            kind: Kind::Deleted,
            version: v,
            expires: None,
        };
        {
            let mut s = Storage::open(&file, 1 << 20).unwrap();
            let empty = s.load().unwrap();
            assert!(empty.registers.is_empty());
            assert_eq!(empty.revision, 0);
            s.commit(&Commit {
                puts: vec![("a", &a), ("b", &b)],
                revision: 3,
                high_water: v,
                ..Commit::default()
            })
            .unwrap();
            s.commit(&Commit {
                removes: vec!["b"],
                revision: 4,
                high_water: v,
                ..Commit::default()
            })
            .unwrap();
        }
        let mut s = Storage::open(&file, 1 << 20).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.registers, vec![("a".into(), a)]);
        assert_eq!(l.revision, 4);
        assert_eq!(l.high_water, v);
    }

    fn leaf(text: &str, millis: u64) -> Register {
        Register {
            kind: Kind::Leaf(text.into()),
            version: Version {
                millis,
                counter: 0,
                node: 1,
            },
            expires: None,
        }
    }

    /// What a crash leaves: the files as they are now, copied while the storage is still open
    /// (so no final checkpoint runs).
    fn crash_image(dir: &Path, to: &Path) -> PathBuf {
        std::fs::copy(dir.join("store.redb"), to.join("store.redb")).unwrap();
        std::fs::create_dir_all(to.join("store.wal")).unwrap();
        for (_, p) in wal::segments(&dir.join("store.wal")).unwrap() {
            std::fs::copy(&p, to.join("store.wal").join(p.file_name().unwrap())).unwrap();
        }
        to.join("store.redb")
    }

    fn keys(l: &Loaded) -> Vec<(String, Register)> {
        let mut v: Vec<_> = l
            .registers
            .iter()
            .map(|(k, r)| (k.to_string(), r.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn a_crash_recovers_checkpointed_and_logged_commits_and_drops_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("store.redb");
        let mut s = Storage::open(&file, 1 << 20).unwrap();
        s.load().unwrap();
        let (a1, b1, a2, c2) = (leaf("1", 1), leaf("2", 2), leaf("3", 3), leaf("4", 4));
        s.commit(&Commit {
            puts: vec![("a", &a1), ("b", &b1)],
            revision: 1,
            high_water: b1.version,
            ..Commit::default()
        })
        .unwrap();
        s.checkpoint();
        // The checkpoint runs on its own thread; it deletes segment 1 when it is in redb.
        let t0 = Instant::now();
        while wal::segments(&s.wal_dir).unwrap()[0].0 == 1 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "checkpoint never finished"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        s.commit(&Commit {
            removes: vec!["b"],
            puts: vec![("a", &a2), ("c", &c2)],
            revision: 2,
            high_water: c2.version,
        })
        .unwrap();
        s.commit(&Commit {
            removes: vec!["c"],
            revision: 2,
            high_water: c2.version,
            ..Commit::default()
        })
        .unwrap();

        let image = tempfile::tempdir().unwrap();
        let copy = crash_image(dir.path(), image.path());
        // A record cut off by the crash: never acknowledged, so it must not come back.
        let last = wal::segments(&image.path().join("store.wal")).unwrap();
        let mut torn = std::fs::OpenOptions::new()
            .append(true)
            .open(&last.last().unwrap().1)
            .unwrap();
        std::io::Write::write_all(&mut torn, &[200, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(torn);

        let mut r = Storage::open(&copy, 1 << 20).unwrap();
        let l = r.load().unwrap();
        assert_eq!(keys(&l), vec![("a".to_string(), a2.clone())]);
        assert_eq!((l.revision, l.high_water), (2, c2.version));
        // Replayed changes count toward the checkpoint's memory bound like new ones.
        let replayed: u64 = r
            .dirty
            .iter()
            .map(|(k, v)| dirty_entry_bytes(k, v.as_deref()))
            .sum();
        assert!(!r.dirty.is_empty() && r.dirty_bytes == replayed);
        // A second crash before the next checkpoint: the torn segment is no longer the last
        // one, and still loads (the first load cut the torn record off).
        let again = tempfile::tempdir().unwrap();
        let copy2 = crash_image(image.path(), again.path());
        let l2 = Storage::open(&copy2, 1 << 20).unwrap().load().unwrap();
        assert_eq!(keys(&l2), vec![("a".to_string(), a2.clone())]);
        // The replayed changes reach redb with the next checkpoint (here: the clean drop).
        drop(r);
        let mut r = Storage::open(&copy, 1 << 20).unwrap();
        assert_eq!(keys(&r.load().unwrap()), vec![("a".to_string(), a2)]);
        assert_eq!(
            wal::segments(&image.path().join("store.wal"))
                .unwrap()
                .len(),
            1,
            "only the new, empty segment is left"
        );
    }

    /// A loaded storage in a temporary directory, and a register a little over 1 MiB.
    fn storage_and_big_register() -> (tempfile::TempDir, Storage, Register) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Storage::open(&dir.path().join("store.redb"), 1 << 20).unwrap();
        s.load().unwrap();
        let big = Register {
            kind: Kind::Leaf("x".repeat(1 << 20).into()),
            ..leaf("", 1)
        };
        (dir, s, big)
    }

    /// Commits `reg` at `key` alone.
    fn put(s: &mut Storage, key: &str, reg: &Register, revision: u64) {
        s.commit(&Commit {
            puts: vec![(key, reg)],
            revision,
            high_water: reg.version,
            ..Commit::default()
        })
        .unwrap();
    }

    #[test]
    fn a_checkpoint_starts_once_the_log_passes_its_size() {
        let (_dir, mut s, big) = storage_and_big_register();
        // One key written again and again: the dirty registers stay at one (a little over
        // 1 MiB), while each record adds a little over 1 MiB of log, so the 64th passes 64 MiB.
        assert_eq!(CHECKPOINT_LOG_BYTES, 64 << 20);
        for i in 1..=64 {
            put(&mut s, "a", &big, i);
            if i < 64 {
                assert!(s.dirty_log_bytes > i << 20, "{i}: {}", s.dirty_log_bytes);
                assert_eq!(s.dirty.len(), 1);
                assert!(s.dirty_bytes > 1 << 20 && s.dirty_bytes < 2 << 20);
            }
        }
        assert!(s.dirty_since.is_none() && s.dirty.is_empty() && s.dirty_bytes == 0);
    }

    #[test]
    fn a_checkpoint_starts_once_the_dirty_registers_pass_their_size() {
        let (_dir, mut s, big) = storage_and_big_register();
        // A new key each time: the dirty registers grow with the log and pass 32 MiB first.
        assert_eq!(CHECKPOINT_DIRTY_BYTES, 32 << 20);
        for i in 1..=32u64 {
            put(&mut s, &format!("k{i}"), &big, i);
            if i < 32 {
                assert_eq!(s.dirty.len() as u64, i);
                assert!(s.dirty_bytes > i << 20, "{i}: {}", s.dirty_bytes);
            }
        }
        assert!(s.dirty_since.is_none() && s.dirty.is_empty() && s.dirty_bytes == 0);
        // A removal replaces a key's entry: the estimate goes down by the register's size.
        let small = leaf("1", 2);
        put(&mut s, "a", &small, 33);
        let with_a = s.dirty_bytes;
        s.commit(&Commit {
            removes: vec!["a"],
            revision: 34,
            high_water: small.version,
            ..Commit::default()
        })
        .unwrap();
        assert_eq!(s.dirty.len(), 1);
        assert!(s.dirty_bytes < with_a, "{} < {with_a}", s.dirty_bytes);
        assert_eq!(s.dirty_bytes, 1 + DIRTY_ENTRY_BYTES);
    }

    /// Commits `n` single-key records, `k0`..; returns the registers written.
    fn put_many(s: &mut Storage, from: u64, n: u64) -> Vec<Register> {
        (from..from + n)
            .map(|i| {
                let r = leaf(&format!("\"value {i}\""), i + 1);
                put(s, &format!("k{i}"), &r, i + 1);
                r
            })
            .collect()
    }

    #[test]
    fn a_damaged_register_in_the_database_file_refuses_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("store.redb");
        {
            let mut s = Storage::open(&file, 1 << 20).unwrap();
            s.load().unwrap();
            put_many(&mut s, 1, 40);
        } // a clean shutdown checkpoints everything into redb
        let clean = std::fs::read(&file).unwrap();
        // Each load changes the directory (a checkpoint, a new segment): start from the
        // stopped node's files every time.
        let wal_dir = file.with_extension("wal");
        let segments: Vec<(std::path::PathBuf, Vec<u8>)> = wal::segments(&wal_dir)
            .unwrap()
            .into_iter()
            .map(|(_, p)| (p.clone(), std::fs::read(&p).unwrap()))
            .collect();
        let loads = |bytes: &[u8]| {
            std::fs::remove_dir_all(&wal_dir).unwrap();
            std::fs::create_dir(&wal_dir).unwrap();
            for (p, b) in &segments {
                std::fs::write(p, b).unwrap();
            }
            std::fs::write(&file, bytes).unwrap();
            Storage::open(&file, 1 << 20).and_then(|mut s| s.load().map(|l| l.registers.len()))
        };
        assert_eq!(loads(&clean).unwrap(), 40);
        // One bit of a live register flipped (a value, then a key): the file still opens and
        // reads, but not what the checkpoint wrote.
        let at = clean
            .windows(9)
            .position(|w| w == b"value 17\"")
            .expect("the value is in the file");
        for (what, offset) in [("value", at + 6), ("key", at - 12)] {
            let mut damaged = clean.clone();
            damaged[offset] ^= 1;
            match loads(&damaged) {
                Err(e) => {
                    let m = e.to_string();
                    assert!(m.contains("store.redb is damaged"), "{what}: {m}");
                }
                // A flip outside the register's bytes (the key guess missed) leaves it whole.
                Ok(n) if what == "key" => assert_eq!(n, 40),
                Ok(n) => panic!("a damaged {what} was loaded ({n} registers)"),
            }
        }
        assert_eq!(loads(&clean).unwrap(), 40, "the undamaged file still loads");
    }

    /// Waits until the checkpoint thread has deleted every segment but the newest.
    fn await_checkpoint(s: &Storage) {
        let t0 = Instant::now();
        while wal::segments(&s.wal_dir).unwrap().len() > 1 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "checkpoint never finished"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn load_err(file: &Path) -> Error {
        match Storage::open(file, 1 << 20).and_then(|mut s| s.load().map(drop)) {
            Ok(()) => panic!("{} loaded", file.display()),
            Err(e) => e,
        }
    }

    #[test]
    fn damage_inside_the_log_refuses_the_load_and_keeps_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Storage::open(&dir.path().join("store.redb"), 1 << 20).unwrap();
        s.load().unwrap();
        put_many(&mut s, 0, 200);
        let image = tempfile::tempdir().unwrap();
        let copy = crash_image(dir.path(), image.path());
        let segs = wal::segments(&image.path().join("store.wal")).unwrap();
        let seg = &segs.last().unwrap().1;
        let whole = std::fs::read(seg).unwrap();
        let middle = whole.iter().rposition(|&b| b != 0).unwrap() / 2;
        // One flipped bit, 64 bytes of garbage, 400 zeros: acknowledged records follow each.
        let flip = |b: &mut Vec<u8>| b[middle] ^= 1;
        let garbage = |b: &mut Vec<u8>| b[middle..middle + 64].fill(0xa5);
        let zeros = |b: &mut Vec<u8>| b[middle..middle + 400].fill(0);
        for damage in [&flip as &dyn Fn(&mut Vec<u8>), &garbage, &zeros] {
            let mut bad = whole.clone();
            damage(&mut bad);
            std::fs::write(seg, &bad).unwrap();
            let e = load_err(&copy);
            assert!(matches!(e, Error::Damaged { .. }), "{e}");
            assert!(e.to_string().contains(&seg.display().to_string()), "{e}");
            assert_eq!(
                std::fs::read(seg).unwrap(),
                bad,
                "the file is left as it was"
            );
        }
        // A byte flipped in the last record is not a tear: every sector of it holds data.
        let last = whole.iter().rposition(|&b| b != 0).unwrap();
        let mut flipped = whole.clone();
        flipped[last - 20] ^= 1;
        std::fs::write(seg, &flipped).unwrap();
        let e = load_err(&copy);
        assert!(e.to_string().contains("cannot leave"), "{e}");
        assert!(e.to_string().contains(&seg.display().to_string()), "{e}");
        // A torn tail (the last record cut short: the file ends inside it) is still dropped.
        let torn = &whole[..last - 20];
        std::fs::write(seg, torn).unwrap();
        let mut r = Storage::open(&copy, 1 << 20).unwrap();
        assert_eq!(r.load().unwrap().registers.len(), 199);
    }

    #[test]
    fn a_damaged_later_segment_after_a_torn_one_refuses_the_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Storage::open(&dir.path().join("store.redb"), 1 << 20).unwrap();
        s.load().unwrap();
        put_many(&mut s, 0, 3);
        let image = tempfile::tempdir().unwrap();
        let copy = crash_image(dir.path(), image.path());
        let wal_dir = image.path().join("store.wal");
        let first = wal::segments(&wal_dir).unwrap()[0].1.clone();
        let mut bytes = std::fs::read(&first).unwrap();
        // The last record is torn, so no whole record follows it in its own segment...
        let last = bytes.iter().rposition(|&b| b != 0).unwrap();
        bytes.truncate(last - 4);
        std::fs::write(&first, &bytes).unwrap();
        // ...but a later segment holds whole records: the bad one is not a torn tail.
        let later = wal_dir.join(format!("{:020}.log", 2));
        let rec = std::fs::read(
            wal::segments(&dir.path().join("store.wal")).unwrap()[0]
                .1
                .clone(),
        )
        .unwrap();
        std::fs::write(&later, &rec).unwrap();
        assert!(matches!(load_err(&copy), Error::Damaged { .. }));
        // An empty (zero-filled) later segment is what a crash just after a rotation leaves.
        std::fs::write(&later, vec![0u8; 4096]).unwrap();
        let mut r = Storage::open(&copy, 1 << 20).unwrap();
        assert_eq!(r.load().unwrap().registers.len(), 2);
    }

    #[test]
    fn a_database_file_that_no_longer_meets_the_log_refuses_the_load() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("store.redb");
        let mut s = Storage::open(&file, 1 << 20).unwrap();
        s.load().unwrap();
        put_many(&mut s, 0, 200);
        s.checkpoint();
        await_checkpoint(&s);
        // redb as of the first checkpoint, to put back later.
        let older = tempfile::tempdir().unwrap();
        crash_image(dir.path(), older.path());
        put_many(&mut s, 200, 10);
        s.checkpoint();
        await_checkpoint(&s);
        put_many(&mut s, 210, 5);
        let image = tempfile::tempdir().unwrap();
        let copy = crash_image(dir.path(), image.path());
        assert_eq!(
            Storage::open(&copy, 1 << 20)
                .unwrap()
                .load()
                .unwrap()
                .registers
                .len(),
            215
        );

        let check = |what: &str, change: &dyn Fn(&Path)| {
            let t = tempfile::tempdir().unwrap();
            let f = crash_image(image.path(), t.path());
            change(&f);
            let e = load_err(&f);
            assert!(
                matches!(e, Error::Gap(_)) && e.to_string().contains("store.redb"),
                "{what}: {e}"
            );
        };
        check("deleted", &|f| std::fs::remove_file(f).unwrap());
        let t = tempfile::tempdir().unwrap();
        let f = crash_image(image.path(), t.path());
        std::fs::write(&f, b"").unwrap();
        let e = load_err(&f);
        assert!(e.to_string().contains("store.redb"), "emptied: {e}");
        check("rolled back", &|f| {
            std::fs::copy(older.path().join("store.redb"), f).unwrap();
        });
        // Cut in half: redb may panic reading it; that is an error too, not a crash.
        let t = tempfile::tempdir().unwrap();
        let f = crash_image(image.path(), t.path());
        let len = std::fs::metadata(&f).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        let e = load_err(&f);
        assert!(e.to_string().contains("store.redb"), "{e}");

        // After a clean shutdown only an empty segment is left: redb still has to meet it.
        drop(s);
        let restarted = Storage::open(&file, 1 << 20).unwrap().load().unwrap();
        assert_eq!(restarted.registers.len(), 215);
        let t = tempfile::tempdir().unwrap();
        let f = crash_image(dir.path(), t.path());
        std::fs::remove_file(&f).unwrap();
        assert!(matches!(load_err(&f), Error::Gap(_)));
        // Restarts with nothing to replay keep redb and the log in step.
        for _ in 0..3 {
            let mut r = Storage::open(&file, 1 << 20).unwrap();
            assert_eq!(r.load().unwrap().registers.len(), 215);
        }
    }

    #[test]
    fn a_failed_log_stops_every_later_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Storage::open(&dir.path().join("store.redb"), 1 << 20).unwrap();
        s.load().unwrap();
        let _ = s.stopped.set(Stop::new("disk on fire", Cause::Io));
        let a = leaf("1", 1);
        let err = s
            .commit(&Commit {
                puts: vec![("a", &a)],
                revision: 1,
                high_water: a.version,
                ..Commit::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert!(!err.outcome_unknown(), "nothing of it was written");
    }
}
