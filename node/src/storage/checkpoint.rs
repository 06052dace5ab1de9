//! redb's side of storage: the checkpoint thread that writes the registers changed since the
//! last checkpoint in one synced transaction (after syncing the log records it covers, and with
//! the first log segment it no longer needs), and the read of everything redb holds at a load.

use super::record::{decode_meta, decode_u64, encode_meta};
use super::{read_err, wal, Dirty, Error, LSN_KEY, META_KEY, REGISTERS, SUM_KEY, WAL_NEXT_KEY};
use crate::store::{Register, Version};
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

/// Dirty registers on their way to redb, and the log segments they cover.
pub(super) struct Job {
    pub(super) entries: Dirty,
    pub(super) lsn: u64,
    pub(super) revision: u64,
    pub(super) high_water: Version,
    /// Segments numbered up to this one hold only records up to `lsn`.
    pub(super) upto: u64,
    /// The log records the job holds, some maybe not yet synced: they are synced before redb
    /// gets them, so redb never holds a write whose sync failed (answered as not written).
    pub(super) covers: Option<wal::Segment>,
}

/// The thread that writes checkpoints to redb, one at a time, off the writer's path.
pub(super) struct Checkpointer {
    pub(super) tx: mpsc::SyncSender<Job>,
    pub(super) thread: std::thread::JoinHandle<()>,
}

impl Checkpointer {
    pub(super) fn start(
        db: Arc<Database>,
        wal_dir: PathBuf,
        stopped: super::Stopped,
    ) -> Result<Checkpointer, Error> {
        // One job queued behind the one being written: the writer waits beyond that, which
        // bounds the memory that dirty registers take.
        let (tx, rx) = mpsc::sync_channel::<Job>(1);
        let thread = std::thread::Builder::new()
            .name("herd-checkpoint".into())
            .spawn(move || {
                for job in rx {
                    // Never after a failure: the records it covers may include one whose sync
                    // failed (refused to its writer), which must not reach redb. The log does
                    // not sync again after a failure either.
                    if stopped.get().is_some() {
                        continue;
                    }
                    if let Some(Err(e)) = job.covers.as_ref().map(wal::Segment::sync) {
                        let e = super::Error::from(e);
                        tracing::error!(error = %e, "write-ahead log sync failed before a checkpoint; refusing writes");
                        let _ = stopped.set(super::Stop::of(&e));
                        continue;
                    }
                    let t0 = Instant::now();
                    match write_checkpoint(&db, &job) {
                        Ok(()) => {
                            tracing::debug!(
                                keys = job.entries.len(),
                                lsn = job.lsn,
                                millis = t0.elapsed().as_millis() as u64,
                                "checkpoint written"
                            );
                            if let Err(e) = wal::remove_upto(&wal_dir, job.upto) {
                                tracing::warn!(error = %e, "cannot delete checkpointed log segments; they are skipped on replay");
                            }
                        }
                        // redb answers every later call with `PreviousIo` after an I/O error,
                        // and a failing disk is the likely cause: stop, as for the log. What
                        // the checkpoint held is in the log, which a reopen or restart replays.
                        Err(e) => {
                            tracing::error!(error = %e, "checkpoint failed; refusing writes (its changes stay in the log)");
                            let _ = stopped.set(super::Stop::of(&e));
                        }
                    }
                }
            })
            .map_err(|e| Error::Read(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer { tx, thread })
    }
}

/// A failed checkpoint, with the OS error behind it if there is one.
fn checkpoint_err(e: impl Into<redb::Error>) -> Error {
    let e: redb::Error = e.into();
    let errno = match &e {
        redb::Error::Io(io) => io.raw_os_error(),
        _ => None,
    };
    Error::Checkpoint {
        why: e.to_string(),
        errno,
    }
}

/// Writes a checkpoint's registers and counters to redb in one synced transaction.
pub(super) fn write_checkpoint(db: &Database, job: &Job) -> Result<(), Error> {
    let mut entries: Vec<(&str, Option<&[u8]>)> = job
        .entries
        .iter()
        .map(|(k, v)| (&**k, v.as_deref()))
        .collect();
    // In key order, B-tree pages are visited once each.
    entries.sort_unstable_by_key(|(k, _)| *k);
    let mut tx = db.begin_write().map_err(checkpoint_err)?;
    tx.set_durability(Durability::Immediate);
    {
        let mut regs = tx.open_table(REGISTERS).map_err(checkpoint_err)?;
        // The sum so far; a file from before the sum was kept gets it computed once.
        let stored = regs
            .get(SUM_KEY)
            .map_err(checkpoint_err)?
            .map(|v| decode_u64(v.value(), "checksum"))
            .transpose()?;
        let mut sum = match stored {
            Some(sum) => sum,
            None => {
                let mut sum = 0u64;
                for row in regs.iter().map_err(checkpoint_err)? {
                    let (k, v) = row.map_err(checkpoint_err)?;
                    if !k.value().starts_with('\0') {
                        sum = sum.wrapping_add(entry_sum(k.value(), v.value()));
                    }
                }
                sum
            }
        };
        for (k, v) in entries {
            let old = match v {
                Some(b) => {
                    sum = sum.wrapping_add(entry_sum(k, b));
                    regs.insert(k, b)
                }
                None => regs.remove(k),
            }
            .map_err(checkpoint_err)?;
            if let Some(old) = old {
                sum = sum.wrapping_sub(entry_sum(k, old.value()));
            }
        }
        regs.insert(SUM_KEY, sum.to_le_bytes().as_slice())
            .map_err(checkpoint_err)?;
        regs.insert(
            META_KEY,
            encode_meta(job.revision, job.high_water).as_slice(),
        )
        .map_err(checkpoint_err)?;
        regs.insert(LSN_KEY, job.lsn.to_le_bytes().as_slice())
            .map_err(checkpoint_err)?;
        regs.insert(WAL_NEXT_KEY, (job.upto + 1).to_le_bytes().as_slice())
            .map_err(checkpoint_err)?;
    }
    tx.commit().map_err(checkpoint_err)
}

/// What redb holds.
pub(super) struct Redb {
    pub(super) registers: Vec<(Box<str>, Register)>,
    pub(super) revision: u64,
    pub(super) high_water: Version,
    pub(super) lsn: u64,
    /// `None` in a new file, or one written before this was recorded.
    pub(super) wal_next: Option<u64>,
    /// The sum the last checkpoint wrote and the sum of what was read (`None` in a file from
    /// before the sum was kept).
    pub(super) sum: Option<(u64, u64)>,
}

/// What one register adds to the checkpoint's sum: two CRC-32s of its key and value (a
/// damaged byte changes the sum but for a 1 in 2^32 chance).
pub(super) fn entry_sum(key: &str, value: &[u8]) -> u64 {
    let mut a = crc32fast::Hasher::new();
    a.update(key.as_bytes());
    a.update(&[0]);
    a.update(value);
    let mut b = crc32fast::Hasher::new();
    b.update(value);
    b.update(&[0xff]);
    b.update(key.as_bytes());
    (u64::from(b.finalize()) << 32) | u64::from(a.finalize())
}

pub(super) fn read_redb(db: &Database) -> Result<Redb, Error> {
    let tx = db.begin_read().map_err(read_err)?;
    let mut r = Redb {
        registers: Vec::new(),
        revision: 0,
        high_water: Version::ZERO,
        lsn: 0,
        wal_next: None,
        sum: None,
    };
    let mut found = 0u64;
    let mut stored = None;
    match tx.open_table(REGISTERS) {
        Ok(table) => {
            r.registers.reserve(table.len().map_err(read_err)? as usize);
            for row in table.iter().map_err(read_err)? {
                let (k, v) = row.map_err(read_err)?;
                match k.value() {
                    META_KEY => (r.revision, r.high_water) = decode_meta(v.value())?,
                    LSN_KEY => r.lsn = decode_u64(v.value(), "log position")?,
                    WAL_NEXT_KEY => r.wal_next = Some(decode_u64(v.value(), "next segment")?),
                    SUM_KEY => stored = Some(decode_u64(v.value(), "checksum")?),
                    key if key.starts_with('\0') => {}
                    key => {
                        found = found.wrapping_add(entry_sum(key, v.value()));
                        let reg = Register::decode(v.value()).map_err(|source| Error::Corrupt {
                            key: key.replace('\0', "/"),
                            source,
                        })?;
                        r.registers.push((Box::<str>::from(key), reg));
                    }
                }
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(read_err(e)),
    }
    r.sum = stored.map(|stored| (stored, found));
    Ok(r)
}
