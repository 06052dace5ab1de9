//! The write-ahead log: numbered segment files of checksummed records in one directory.
//!
//! A record is `[u32 payload length][u32 crc32 of the payload][payload]`, little-endian, and a
//! payload is never empty, so eight zero bytes where a record should start mark the end of the
//! log. Records are made durable before a commit is acknowledged, in one of two ways:
//!
//! - **Direct** (where the file system supports it, e.g. ext4 and xfs): the segment is opened
//!   with `O_DIRECT | O_DSYNC` and kept zero-filled ahead of its end, so a sync is one aligned
//!   `pwrite` of the blocks that changed (the last, partly filled block is written again with
//!   the next sync) that overwrites zeros: no file size or block allocation to journal, no page
//!   cache copy, and one write-and-flush instead of a `write` plus an `fdatasync` with its
//!   journal commit. The zeroed stretch grows as the log does (doubling from 16 KiB up to 1 MiB
//!   at a time), so zero-filling writes at most as much again as the log itself.
//! - **Buffered** (elsewhere, e.g. tmpfs before Linux 6.6): a sync appends the records with
//!   `write` and syncs them with `fdatasync`.
//!
//! A sync writes the records up to the one it was asked for and nothing after it, and a direct
//! sync that needs more zeroed file zero-fills it with a write of its own first, so a sync that
//! fails for want of space has written nothing of its record ([`Error::Io`]); only a failure of
//! the record's own write leaves its outcome unknown ([`Error::Unsynced`]).
//!
//! So a crash can tear only the last record written, and what follows a torn record is zeros or
//! pieces of that record: reading stops at the first bad record and reports where, and whether
//! a whole record follows it (which a crash cannot explain: that is damage). Whether a bad
//! record is a torn tail is for `storage` to decide. Knows nothing of what the payload means.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The header in front of every payload: length and checksum.
const HEADER: usize = 8;

/// The bytes a record with a payload of `payload` bytes takes in the log.
pub fn record_len(payload: usize) -> usize {
    HEADER + payload
}
/// Larger payloads are refused on write and treated as a torn record on read.
pub const MAX_RECORD: usize = 1 << 30;
/// Direct writes start, end and sit in memory at multiples of this (the largest logical block
/// size of common disks).
const BLOCK: usize = 4096;
/// How much of a new segment is zero-filled; the zeroed stretch then doubles up to
/// [`ZERO_STEP_MAX`] at a time.
const ZERO_FIRST: u64 = 16 << 10;
const ZERO_STEP_MAX: u64 = 1 << 20;
/// Buffers grown past this by a large record are given back after it.
const KEEP_BUFFER: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing of the record being written reached the file.
    #[error("write-ahead log {path}: {source}")]
    Io { path: String, source: io::Error },
    /// The record's own write or sync failed: it may or may not be on the disk.
    #[error("write-ahead log {path}: {source} (the record may or may not have reached the disk)")]
    Unsynced { path: String, source: io::Error },
    #[error("write-ahead log record of {0} bytes: records hold 1 byte to 1 GiB")]
    BadSize(usize),
    /// An earlier sync of the segment failed: no sync is tried again (after a failed `fsync`
    /// the kernel may have dropped the pages it could not write and report the next sync as a
    /// success; and a record refused as not written must stay unwritten), so the records after
    /// it never become durable in this process.
    #[error("write-ahead log {path}: not written again after an earlier failure ({})", .first.why)]
    Broken { path: String, first: Failure },
}

/// The first failed sync of a segment, as later syncs report it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub why: String,
    pub errno: Option<i32>,
    /// Nothing of the records it was syncing reached the file (it was an [`Error::Io`]).
    pub nothing_written: bool,
}

impl Error {
    /// The operating system's error number behind it, if any.
    pub fn os_error(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } | Error::Unsynced { source, .. } => source.raw_os_error(),
            Error::Broken { first, .. } => first.errno,
            Error::BadSize(_) => None,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The segment files in `dir`, as (sequence number, path), oldest first.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, Error> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((seq, entry.path()));
    }
    out.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(out)
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.log"))
}

/// What reading a segment found after its whole records.
#[derive(Debug, PartialEq, Eq)]
pub struct End {
    /// Bytes of whole records, from the start of the file: where the first bad record starts,
    /// if there is one.
    pub valid: u64,
    /// Bytes after them that are not zero-fill: a bad record and whatever follows it.
    pub dropped: usize,
    /// Where the first whole record after the bad one starts, if one does: a crash tears only
    /// the last record written, so this means the segment was damaged, not torn.
    pub resumes: Option<u64>,
    /// A write cut off by a crash can leave the bad record as it is (see [`tear_explains`]);
    /// false for a record whole in length whose bytes were changed, which is damage.
    pub torn: bool,
}

/// The smallest unit a disk writes whole: a crash leaves each one as it was or as written.
const SECTOR: usize = 512;

/// Whether a crash can leave the bad record at `at` as found: the file ends inside it, or some
/// sector's part of it is all zeros (never written: the log's zero-fill, or past the end of a
/// buffered file). A record whose every sector holds data but whose checksum fails was written
/// whole and changed since: damage. (A damaged length field is not told from a tear.)
pub fn tear_explains(data: &[u8], at: usize) -> bool {
    let Some(h) = data.get(at..at + HEADER) else {
        return true;
    };
    let len = u32::from_le_bytes(h[..4].try_into().expect("4 bytes")) as usize;
    let span = if len == 0 || len > MAX_RECORD {
        HEADER
    } else {
        HEADER + len
    };
    if data.len() - at < span {
        return true;
    }
    let mut from = at;
    while from < at + span {
        let to = ((from / SECTOR + 1) * SECTOR).min(at + span);
        if data[from..to].iter().all(|&b| b == 0) {
            return true;
        }
        from = to;
    }
    false
}

/// The payload's length if a whole record (plausible length, matching checksum) starts at `at`.
fn whole_record(data: &[u8], at: usize) -> Option<usize> {
    let h = data.get(at..at + HEADER)?;
    let len = u32::from_le_bytes(h[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(h[4..].try_into().expect("4 bytes"));
    (len > 0
        && len <= MAX_RECORD
        && data.len() - at >= HEADER + len
        && crc32fast::hash(&data[at + HEADER..at + HEADER + len]) == crc)
        .then_some(len)
}

/// How many payload bytes the search for a whole record after a bad one may checksum; past
/// that the bad record is reported as followed by one (damage, refused), never as torn.
const RESUME_SEARCH_BYTES: usize = 1 << 30;

/// Calls `f` with each whole record's payload in `path`, in order, up to the first bad record.
/// Zeros after the last record are the zero-filled stretch ahead of the log's end. After a bad
/// record, every later offset is tried for a whole record whose payload `follows` accepts (the
/// caller's check that it is a record that comes later in the log, not bytes inside the torn
/// one that happen to look like a record).
pub fn read_segment<E: From<Error>>(
    path: &Path,
    mut f: impl FnMut(&[u8]) -> Result<(), E>,
    follows: impl Fn(&[u8]) -> bool,
) -> Result<End, E> {
    let data = fs::read(path).map_err(io_err(path))?;
    // Past the last nonzero byte there is nothing but zero-fill.
    let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let mut at = 0;
    while at < end {
        let Some(len) = whole_record(&data, at) else {
            // Slow, but only on a bad record, and bounded.
            let mut budget = RESUME_SEARCH_BYTES;
            let resumes = (at + 1..end)
                .find(|&i| {
                    let h = &data[i..(i + HEADER).min(data.len())];
                    let len = h.get(..4).map_or(0, |l| {
                        u32::from_le_bytes(l.try_into().expect("4 bytes")) as usize
                    });
                    if len == 0 || data.len() - i < HEADER + len {
                        return false;
                    }
                    if budget < len {
                        return true;
                    }
                    budget -= len;
                    whole_record(&data, i)
                        .is_some_and(|len| follows(&data[i + HEADER..i + HEADER + len]))
                })
                .map(|i| i as u64);
            return Ok(End {
                valid: at as u64,
                dropped: end - at,
                resumes,
                torn: tear_explains(&data, at),
            });
        };
        f(&data[at + HEADER..at + HEADER + len])?;
        at += HEADER + len;
    }
    Ok(End {
        valid: at as u64,
        dropped: 0,
        resumes: None,
        torn: false,
    })
}

/// Cuts a torn record off the end of a segment, so that it reads clean once it is no longer
/// the last one.
pub fn truncate(path: &Path, valid: u64) -> Result<(), Error> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    f.set_len(valid).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Deletes the segments numbered `upto` and below.
pub fn remove_upto(dir: &Path, upto: u64) -> Result<(), Error> {
    for (seq, path) in segments(dir)? {
        if seq <= upto {
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// One open segment, shared by the [`Writer`] and the [`Segment`] handles that sync it.
/// Appended records stay in memory until a sync writes them, in either mode, so a record
/// reaches the file only in the write of its own sync.
struct Log {
    path: PathBuf,
    file: File,
    /// Written with `O_DIRECT | O_DSYNC` over zero-filled space; otherwise appended with
    /// `write` and synced with `fdatasync` (the file system refused direct I/O).
    direct: bool,
    /// The records not yet known durable.
    tail: Mutex<Tail>,
    /// Held for the whole of a sync, so syncs never overlap (a later one could otherwise be
    /// overtaken by an earlier one writing the same last block).
    io: Mutex<Io>,
    /// The end of the furthest record write started, failed or not: records up to here may be
    /// on the disk, records after it are only in memory.
    attempted: AtomicU64,
    /// Set when a sync failed: no sync is tried again.
    broken: std::sync::OnceLock<Failure>,
}

struct Tail {
    /// Bytes from file offset `start` to the log's end; with direct I/O `start` is a multiple
    /// of [`BLOCK`].
    bytes: Vec<u8>,
    start: u64,
    /// How many of `bytes` are durable already (the start of a partly written block).
    synced: usize,
}

struct Io {
    /// Scratch for aligned writes.
    buf: Vec<u8>,
    /// The file is zero-filled up to here.
    zeroed: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `len` rounded up to a whole number of blocks.
fn blocks(len: u64) -> u64 {
    len.div_ceil(BLOCK as u64) * BLOCK as u64
}

impl Log {
    /// Makes the records up to byte `upto` of the segment durable, and nothing after them.
    fn sync(&self, upto: u64) -> Result<(), Error> {
        let mut io = lock(&self.io);
        {
            let t = lock(&self.tail);
            if upto <= t.start + t.synced as u64 {
                return Ok(()); // durable already
            }
        }
        if let Some(first) = self.broken.get() {
            return Err(Error::Broken {
                path: self.path.display().to_string(),
                first: first.clone(),
            });
        }
        let result = self.sync_locked(&mut io, upto);
        if let Err(e) = &result {
            let _ = self.broken.set(Failure {
                why: e.to_string(),
                errno: e.os_error(),
                nothing_written: matches!(e, Error::Io { .. }),
            });
        }
        result
    }

    fn sync_locked(&self, io: &mut Io, upto: u64) -> Result<(), Error> {
        let Io { buf, zeroed } = io;
        // Only a sync drains the tail, and syncs hold `io`: `start` and the bytes up to `upto`
        // stay as they are while the writer appends after them.
        let (start, len) = {
            let t = lock(&self.tail);
            if upto <= t.start + t.synced as u64 {
                return Ok(());
            }
            (t.start, (upto - t.start) as usize)
        };
        if !self.direct {
            buf.clear();
            buf.extend_from_slice(&lock(&self.tail).bytes[..len]);
            self.attempted.fetch_max(upto, Ordering::Relaxed);
            (&self.file)
                .write_all(buf)
                .and_then(|()| self.file.sync_data())
                .map_err(unsynced(&self.path))?;
            let mut t = lock(&self.tail);
            t.bytes.drain(..len);
            t.start += len as u64;
            if buf.capacity() > KEEP_BUFFER {
                *buf = Vec::new();
            }
            return Ok(());
        }
        let end = start + blocks(len as u64);
        if end > *zeroed {
            // Zero-fill ahead with a write of its own: if the file system is out of space, this
            // write fails and nothing of the record has been written.
            let upto = blocks(end.max(*zeroed + (*zeroed).clamp(ZERO_FIRST, ZERO_STEP_MAX)));
            let n = (upto - *zeroed) as usize;
            let at = aligned(buf, n);
            buf[at..at + n].fill(0);
            self.file
                .write_all_at(&buf[at..at + n], *zeroed)
                .map_err(io_err(&self.path))?;
            *zeroed = upto;
        }
        let total = (end - start) as usize;
        let at = aligned(buf, total);
        buf[at..at + len].copy_from_slice(&lock(&self.tail).bytes[..len]);
        buf[at + len..at + total].fill(0);
        self.attempted.fetch_max(upto, Ordering::Relaxed);
        self.file
            .write_all_at(&buf[at..at + total], start)
            .map_err(unsynced(&self.path))?;
        if buf.len() > KEEP_BUFFER {
            *buf = Vec::new();
        }
        let mut t = lock(&self.tail);
        // Whole blocks are done with; the last, partial one is written again next time.
        let full = len / BLOCK * BLOCK;
        t.bytes.drain(..full);
        if t.bytes.capacity() > KEEP_BUFFER {
            t.bytes.shrink_to(2 * BLOCK);
        }
        t.start += full as u64;
        t.synced = len - full;
        Ok(())
    }
}

/// Grows `buf` to hold `n` bytes from a block-aligned offset, and returns that offset.
fn aligned(buf: &mut Vec<u8>, n: usize) -> usize {
    if buf.len() < n + BLOCK {
        *buf = vec![0; n + BLOCK];
    }
    buf.as_ptr().align_offset(BLOCK)
}

fn unsynced(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Unsynced {
        path: path.display().to_string(),
        source,
    }
}

/// The segment being appended to.
pub struct Writer {
    dir: PathBuf,
    log: Arc<Log>,
    seq: u64,
    /// Whether to try direct I/O for new segments.
    try_direct: bool,
    /// Bytes appended to this segment.
    len: u64,
}

impl Writer {
    /// Starts a new, empty segment numbered `seq`, written directly where the file system
    /// allows it.
    pub fn create(dir: &Path, seq: u64) -> Result<Writer, Error> {
        Writer::create_as(dir, seq, true)
    }

    fn create_as(dir: &Path, seq: u64, try_direct: bool) -> Result<Writer, Error> {
        let path = segment_path(dir, seq);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let direct = if try_direct {
            open_direct(&path)?
        } else {
            None
        };
        let (file, direct, zeroed) = match direct {
            Some((file, zeroed)) => (file, true, zeroed),
            None => (file, false, 0),
        };
        let log = Log {
            path,
            file,
            direct,
            tail: Mutex::new(Tail {
                bytes: Vec::new(),
                start: 0,
                synced: 0,
            }),
            io: Mutex::new(Io {
                buf: Vec::new(),
                zeroed,
            }),
            attempted: AtomicU64::new(0),
            broken: std::sync::OnceLock::new(),
        };
        // The new name must survive a crash before anything in it is acknowledged.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
        Ok(Writer {
            dir: dir.to_path_buf(),
            log: Arc::new(log),
            seq,
            try_direct,
            len: 0,
        })
    }

    #[cfg(test)]
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// True if this segment is written with direct I/O.
    pub fn direct(&self) -> bool {
        self.log.direct
    }

    /// Appends one record, framing `payload`; the [`Segment`] returned by [`Writer::segment`]
    /// after it makes it durable. Returns the record's size in the log.
    pub fn append(&mut self, payload: &[u8]) -> Result<usize, Error> {
        if payload.is_empty() || payload.len() > MAX_RECORD {
            return Err(Error::BadSize(payload.len()));
        }
        let mut t = lock(&self.log.tail);
        t.bytes
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        t.bytes
            .extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        t.bytes.extend_from_slice(payload);
        drop(t);
        self.len += record_len(payload.len()) as u64;
        Ok(record_len(payload.len()))
    }

    /// A handle that syncs what has been appended to this segment so far, and nothing later.
    pub fn segment(&self) -> Segment {
        Segment {
            log: self.log.clone(),
            upto: self.len,
        }
    }

    /// Closes this segment (its [`Segment`] handles still sync what is left in it) and starts
    /// the next one. Returns the number of the closed segment.
    pub fn rotate(&mut self) -> Result<u64, Error> {
        let next = Writer::create_as(&self.dir, self.seq + 1, self.try_direct)?;
        Ok(std::mem::replace(self, next).seq)
    }
}

/// Opens `path` (new and empty) for direct I/O and zero-fills its first stretch; `None` if the
/// file system does not support direct I/O.
fn open_direct(path: &Path) -> Result<Option<(File, u64)>, Error> {
    // Linux answers EINVAL where a file system has no direct I/O; some answer EOPNOTSUPP.
    let unsupported =
        |e: &io::Error| matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP));
    let file = match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if unsupported(&e) => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let zeros = vec![0u8; ZERO_FIRST as usize + BLOCK];
    let at = zeros.as_ptr().align_offset(BLOCK);
    match file.write_all_at(&zeros[at..at + ZERO_FIRST as usize], 0) {
        Ok(()) => Ok(Some((file, ZERO_FIRST))),
        Err(e) if unsupported(&e) => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// The records of a segment up to some point, to sync, possibly from another thread than the
/// one appending.
#[derive(Clone)]
pub struct Segment {
    log: Arc<Log>,
    /// The end of the last record this handle syncs.
    upto: u64,
}

impl Segment {
    /// Makes the records up to this handle's point durable (with buffered I/O, everything
    /// appended so far).
    pub fn sync(&self) -> Result<(), Error> {
        self.log.sync(self.upto)
    }

    /// True if the records up to this handle's point may have reached the disk: a write of
    /// them was started (it may have failed). Otherwise they are only in memory.
    pub fn maybe_written(&self) -> bool {
        self.upto <= self.log.attempted.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(path: &Path) -> Result<(Vec<Vec<u8>>, End), Error> {
        let mut out = Vec::new();
        let end = read_segment(
            path,
            |p| {
                out.push(p.to_vec());
                Ok::<_, Error>(())
            },
            |_| true,
        )?;
        Ok((out, end))
    }

    /// A directory on the disk the build runs on: `/tmp` may be a tmpfs, which has no direct
    /// I/O.
    fn disk_dir() -> tempfile::TempDir {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-tmp");
        fs::create_dir_all(&base).unwrap();
        tempfile::tempdir_in(base).unwrap()
    }

    #[test]
    fn a_tear_leaves_a_sector_of_zeros_or_a_cut_file_and_a_flip_neither() {
        // A record from byte 500 to 1100: parts in sectors 0, 1 and 2.
        let payload: Vec<u8> = (0..592u32).map(|i| (i % 251) as u8 + 1).collect();
        let mut data = vec![7u8; 500];
        data.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        data.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        data.extend_from_slice(&payload);
        data.resize(2048, 0);
        let whole = data.clone();
        type Damage<'a> = &'a dyn Fn(&mut Vec<u8>);
        let cases: [(&str, Damage, bool); 6] = [
            (
                "its last sector never written",
                &|d| d[1024..1100].fill(0),
                true,
            ),
            (
                "its middle sector never written",
                &|d| d[512..1024].fill(0),
                true,
            ),
            ("its header never written", &|d| d[500..512].fill(0), true),
            ("the file cut inside it", &|d| d.truncate(900), true),
            ("a byte flipped", &|d| d[700] ^= 1, false),
            (
                "a run of bytes changed",
                &|d| d[1030..1090].fill(0xa5),
                false,
            ),
        ];
        for (what, damage, torn) in cases {
            let mut d = whole.clone();
            damage(&mut d);
            assert_eq!(tear_explains(&d, 500), torn, "{what}");
        }
        // Zeros in only part of a sector are data, not a tear.
        let mut d = whole.clone();
        d[1000..1020].fill(0);
        assert!(!tear_explains(&d, 500));
    }

    #[test]
    fn records_round_trip_and_a_bad_record_is_torn_only_if_no_whole_record_follows() {
        for direct in [true, false] {
            let dir = disk_dir();
            let mut w = Writer::create_as(dir.path(), 1, direct).unwrap();
            assert_eq!(w.direct(), direct);
            let records = [b"one".to_vec(), vec![0u8; 9], vec![7u8; 1000]];
            for r in &records {
                w.append(r).unwrap();
            }
            assert!(matches!(w.append(b""), Err(Error::BadSize(0))));
            // Appended records reach the file only with their sync, in either mode.
            let (recs, _) = read_all(&segment_path(dir.path(), 1)).unwrap();
            assert!(recs.is_empty());
            w.segment().sync().unwrap();
            let content = records.iter().map(|r| r.len() + HEADER).sum::<usize>();
            let written = fs::metadata(segment_path(dir.path(), 1)).unwrap().len();
            if direct {
                // Zero-filled ahead, in whole blocks.
                assert_eq!(written, ZERO_FIRST);
            } else {
                assert_eq!(written, content as u64);
            }
            let first = w.rotate().unwrap();
            assert_eq!((first, w.seq()), (1, 2));
            w.append(b"two").unwrap();
            let segs = segments(dir.path()).unwrap();
            assert_eq!(segs.iter().map(|s| s.0).collect::<Vec<_>>(), vec![1, 2]);
            let (recs, end) = read_all(&segs[0].1).unwrap();
            assert_eq!(recs, records);
            assert_eq!(
                end,
                End {
                    valid: content as u64,
                    dropped: 0,
                    resumes: None,
                    torn: false,
                }
            );

            // Every possible torn tail of the last segment, followed by nothing or by zero-fill:
            // the records wholly before the cut survive, and nothing but records as written.
            let whole = fs::read(&segs[0].1).unwrap();
            for cut in 0..content {
                for fill in [0, 100] {
                    let mut torn = whole[..cut].to_vec();
                    torn.resize(cut + fill, 0);
                    fs::write(&segs[1].1, &torn).unwrap();
                    let (recs, end) = read_all(&segs[1].1).unwrap();
                    let mut ends = records.iter().scan(0, |at, r| {
                        *at += r.len() + HEADER;
                        Some(*at)
                    });
                    let survivors = ends.by_ref().take_while(|e| *e <= cut).count();
                    // A record whose missing end is all zeros reads whole from the zero-fill:
                    // it is the record as written, so that is right too.
                    assert!(recs.len() >= survivors, "cut {cut}");
                    assert_eq!(recs, records[..recs.len()], "cut {cut}");
                    let valid: usize = recs.iter().map(|r| r.len() + HEADER).sum();
                    assert_eq!(end.valid, valid as u64);
                    assert!(end.dropped <= (cut + fill).saturating_sub(valid));
                    // Only pieces of the last record follow a torn one: never a whole record.
                    assert_eq!(end.resumes, None, "cut {cut}");
                    // Truncated, the torn segment reads clean.
                    truncate(&segs[1].1, end.valid).unwrap();
                    let (again, end) = read_all(&segs[1].1).unwrap();
                    assert_eq!((again, end.dropped), (recs, 0));
                }
            }
            // A flipped byte is caught by the checksum; the whole records after it are found,
            // which no crash can explain.
            let second = (records[0].len() + HEADER) as u64;
            for at in [HEADER + 1, 0, 4, 5] {
                let mut bad = whole.clone();
                bad[at] ^= 1;
                fs::write(&segs[1].1, &bad).unwrap();
                let (recs, end) = read_all(&segs[1].1).unwrap();
                assert_eq!(recs.len(), 0);
                assert_eq!((end.valid, end.resumes), (0, Some(second)), "flip at {at}");
            }
            // Garbage after the last record is reported, with nothing whole after it.
            let mut trailing = whole[..content].to_vec();
            trailing.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            fs::write(&segs[1].1, &trailing).unwrap();
            let (recs, end) = read_all(&segs[1].1).unwrap();
            assert_eq!(recs, records);
            assert_eq!((end.valid, end.dropped), (content as u64, 10));
            assert_eq!(end.resumes, None);

            remove_upto(dir.path(), 1).unwrap();
            assert_eq!(segments(dir.path()).unwrap().len(), 1);
        }
    }

    /// A tmpfs of `size` mounted on a temporary directory, unmounted when dropped; `None`
    /// (after saying why) where this process cannot mount, unless `HERD_TEST_STRICT` is set.
    struct SmallFs(tempfile::TempDir);

    impl SmallFs {
        fn mount(size: &str) -> Option<SmallFs> {
            let dir = tempfile::tempdir().unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Some(SmallFs(dir));
            }
            let why = "mounting a small tmpfs needs root";
            assert!(
                std::env::var_os("HERD_TEST_STRICT").is_none(),
                "{why} (HERD_TEST_STRICT is set, so this is a failure)"
            );
            eprintln!("SKIPPED: {why}");
            None
        }
    }

    impl Drop for SmallFs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.0.path())
                .status();
        }
    }

    #[test]
    fn a_sync_refused_for_want_of_space_leaves_no_trace_of_its_record() {
        let Some(fs) = SmallFs::mount("64k") else {
            return;
        };
        let mut w = Writer::create(fs.0.path(), 1).unwrap();
        assert!(w.direct(), "tmpfs takes direct I/O since Linux 6.6");
        let path = segment_path(fs.0.path(), 1);
        let mut durable = Vec::new();
        let failed = loop {
            let rec = vec![durable.len() as u8 | 1; 5000];
            w.append(&rec).unwrap();
            match w.segment().sync() {
                Ok(()) => durable.push(rec),
                Err(e) => break e,
            }
            assert!(durable.len() < 100, "the file system never filled up");
        };
        // Out of space while zero-filling ahead: nothing of the record was written...
        assert!(
            matches!(&failed, Error::Io { source, .. }
            if source.raw_os_error() == Some(libc::ENOSPC)),
            "{failed}"
        );
        // (no write of it was even started, which is how later failures answer for it)...
        assert!(!w.segment().maybe_written());
        // ...so the file holds exactly the records whose sync succeeded.
        let (recs, end) = read_all(&path).unwrap();
        assert_eq!(recs, durable);
        assert_eq!(end.dropped, 0);
    }

    #[test]
    fn a_failed_sync_is_never_tried_again_even_once_space_is_back() {
        let Some(fs) = SmallFs::mount("64k") else {
            return;
        };
        // Buffered I/O: out of space, part of the record may be in the file (the outcome is
        // unknown); a retry would append it again after the torn part.
        let filler = fs.0.path().join("filler");
        let mut w = Writer::create_as(fs.0.path(), 1, false).unwrap();
        assert!(!w.direct());
        let path = segment_path(fs.0.path(), 1);
        std::fs::write(&filler, vec![1u8; 16 << 10]).unwrap();
        let failed = loop {
            w.append(&[7u8; 5000]).unwrap();
            if let Err(e) = w.segment().sync() {
                break e;
            }
        };
        assert!(matches!(failed, Error::Unsynced { .. }), "{failed}");
        let size = std::fs::metadata(&path).unwrap().len();
        std::fs::remove_file(&filler).unwrap();
        // Space is back, and the same sync (or a later one) still fails, writing nothing.
        for _ in 0..2 {
            let again = w.segment().sync().unwrap_err();
            assert!(matches!(again, Error::Broken { .. }), "{again}");
            assert!(again.to_string().contains("No space left"), "{again}");
        }
        w.append(&[8u8; 100]).unwrap();
        assert!(matches!(w.segment().sync(), Err(Error::Broken { .. })));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
    }

    #[test]
    fn direct_syncs_write_only_what_changed_and_zero_fill_ahead() {
        let dir = disk_dir();
        let mut w = Writer::create(dir.path(), 1).unwrap();
        assert!(
            w.direct(),
            "this disk takes direct I/O, so the log must use it"
        );
        let path = segment_path(dir.path(), 1);
        let mut expect: Vec<Vec<u8>> = Vec::new();
        let mut durable = 0;
        // Records of many sizes: inside one block, across block boundaries, and one larger than
        // a zero-fill step.
        let sizes = [1, 300, 4088, 4096, 5000, 17, 3 << 20, 12, 8191, 1];
        for (i, &n) in sizes.iter().enumerate() {
            let rec: Vec<u8> = (0..n).map(|j| (i * 31 + j) as u8 | 1).collect();
            w.append(&rec).unwrap();
            // Appended is not yet written: the file still ends with the previous sync.
            assert_eq!(read_all(&path).unwrap().0, expect[..durable]);
            expect.push(rec);
            if i % 3 != 1 {
                let seg = w.segment();
                seg.sync().unwrap();
                durable = expect.len();
                assert_eq!(read_all(&path).unwrap().0, expect);
                // A second sync with nothing new writes nothing.
                seg.sync().unwrap();
            }
        }
        w.segment().sync().unwrap();
        let (recs, end) = read_all(&path).unwrap();
        assert_eq!(recs, expect);
        let len = fs::metadata(&path).unwrap().len();
        assert_eq!(len % BLOCK as u64, 0);
        assert!(len >= end.valid, "zero-filled at least to the end");
        assert!(
            len <= 2 * end.valid + ZERO_FIRST,
            "zero-fill is at most the log again: {len} for {}",
            end.valid
        );
        // A handle syncs the records appended before it was taken, and none after.
        w.append(b"last words").unwrap();
        let seg = w.segment();
        w.append(b"after").unwrap();
        seg.sync().unwrap();
        expect.push(b"last words".to_vec());
        assert_eq!(read_all(&path).unwrap().0, expect);
        // It still syncs the old segment after a rotation.
        let after = w.segment();
        w.rotate().unwrap();
        after.sync().unwrap();
        expect.push(b"after".to_vec());
        assert_eq!(read_all(&path).unwrap().0, expect);
    }
}
