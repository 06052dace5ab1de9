//! The write-ahead log: numbered segment files of checksummed records in one directory.
//!
//! A record is `[u32 payload length][u32 crc32 of the payload][payload]`, little-endian. Records
//! are appended and synced (`fdatasync`) before a commit is acknowledged. Only the segment being
//! written when a crash happens can end in a torn record: reading stops there and drops the tail,
//! which was never acknowledged. A bad record anywhere else is corruption and refuses the load.
//! Knows nothing of what the payload means (see `storage` for that).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The header in front of every payload: length and checksum.
const HEADER: usize = 8;
/// Larger payloads are refused on write and treated as a torn record on read.
pub const MAX_RECORD: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("write-ahead log {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("write-ahead log segment {path} is corrupt at byte {offset} (it is not the last segment, so this is not a torn write)")]
    Corrupt { path: String, offset: usize },
    #[error("write-ahead log record of {0} bytes is over the limit")]
    TooLarge(usize),
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

/// Calls `f` with each whole record's payload in `path`, in order. A torn or corrupt record ends
/// the segment when `last` is true (the bytes after it are reported as dropped) and is an error
/// otherwise. Returns how many trailing bytes were dropped.
pub fn read_segment<E: From<Error>>(
    path: &Path,
    last: bool,
    mut f: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<usize, E> {
    let data = fs::read(path).map_err(io_err(path))?;
    let mut at = 0;
    while at < data.len() {
        let whole = data.len() - at >= HEADER && {
            let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().expect("4 bytes"));
            len <= MAX_RECORD
                && data.len() - at - HEADER >= len
                && crc32fast::hash(&data[at + HEADER..at + HEADER + len]) == crc
        };
        if !whole {
            if last {
                return Ok(data.len() - at);
            }
            return Err(Error::Corrupt {
                path: path.display().to_string(),
                offset: at,
            }
            .into());
        }
        let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        f(&data[at + HEADER..at + HEADER + len])?;
        at += HEADER + len;
    }
    Ok(0)
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

/// The segment being appended to.
pub struct Writer {
    dir: PathBuf,
    /// Shared with [`Segment`]s that sync it from another thread.
    file: Arc<File>,
    seq: u64,
}

impl Writer {
    /// Starts a new, empty segment numbered `seq`.
    pub fn create(dir: &Path, seq: u64) -> Result<Writer, Error> {
        let path = segment_path(dir, seq);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        // The new name must survive a crash before anything in it is acknowledged.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
        Ok(Writer {
            dir: dir.to_path_buf(),
            file: Arc::new(file),
            seq,
        })
    }

    #[cfg(test)]
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Appends one record, framing `payload`; [`Segment::sync`] makes it durable. `buf` is
    /// scratch space.
    pub fn append(&mut self, payload: &[u8], buf: &mut Vec<u8>) -> Result<(), Error> {
        if payload.len() > MAX_RECORD {
            return Err(Error::TooLarge(payload.len()));
        }
        buf.clear();
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        buf.extend_from_slice(payload);
        (&*self.file)
            .write_all(buf)
            .map_err(io_err(&segment_path(&self.dir, self.seq)))?;
        Ok(())
    }

    /// A handle that syncs what has been appended to this segment so far (and later).
    pub fn segment(&self) -> Segment {
        Segment {
            file: self.file.clone(),
            path: segment_path(&self.dir, self.seq),
        }
    }

    /// Closes this segment (everything in it is synced already) and starts the next one.
    /// Returns the number of the closed segment.
    pub fn rotate(&mut self) -> Result<u64, Error> {
        let next = Writer::create(&self.dir, self.seq + 1)?;
        Ok(std::mem::replace(self, next).seq)
    }
}

/// A segment to sync, possibly from another thread than the one appending.
#[derive(Clone)]
pub struct Segment {
    file: Arc<File>,
    path: PathBuf,
}

impl Segment {
    /// Syncs the segment's data (`fdatasync`).
    pub fn sync(&self) -> Result<(), Error> {
        self.file.sync_data().map_err(io_err(&self.path))
    }

    /// True if both handles sync the same segment.
    pub fn same(&self, other: &Segment) -> bool {
        Arc::ptr_eq(&self.file, &other.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(path: &Path, last: bool) -> Result<(Vec<Vec<u8>>, usize), Error> {
        let mut out = Vec::new();
        let dropped = read_segment(path, last, |p| {
            out.push(p.to_vec());
            Ok::<_, Error>(())
        })?;
        Ok((out, dropped))
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_dropped_only_from_the_last_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path(), 1).unwrap();
        let mut buf = Vec::new();
        w.append(b"one", &mut buf).unwrap();
        w.append(b"", &mut buf).unwrap();
        w.append(&[7u8; 1000], &mut buf).unwrap();
        w.segment().sync().unwrap();
        let written = fs::metadata(segment_path(dir.path(), 1)).unwrap().len();
        assert_eq!(written, 3 * 8 + 3 + 1000);
        let first = w.rotate().unwrap();
        assert_eq!((first, w.seq()), (1, 2));
        w.append(b"two", &mut buf).unwrap();
        let segs = segments(dir.path()).unwrap();
        assert_eq!(segs.iter().map(|s| s.0).collect::<Vec<_>>(), vec![1, 2]);
        let (recs, dropped) = read_all(&segs[0].1, false).unwrap();
        assert_eq!(recs, vec![b"one".to_vec(), vec![], vec![7u8; 1000]]);
        assert_eq!(dropped, 0);

        // Every possible torn tail of the last segment: whole records survive, the rest is dropped.
        let whole = fs::read(&segs[0].1).unwrap();
        for cut in 0..whole.len() {
            fs::write(&segs[1].1, &whole[..cut]).unwrap();
            let (recs, dropped) = read_all(&segs[1].1, true).unwrap();
            let kept: usize = recs.iter().map(|r| r.len() + 8).sum();
            assert_eq!(kept + dropped, cut);
            assert!(recs.len() <= 3);
        }
        // A flipped byte is caught by the checksum.
        let mut bad = whole.clone();
        bad[8 + 1] ^= 1;
        fs::write(&segs[1].1, &bad).unwrap();
        assert_eq!(read_all(&segs[1].1, true).unwrap().0.len(), 0);
        // ...and is an error in a segment that is not the last.
        assert!(matches!(
            read_all(&segs[1].1, false),
            Err(Error::Corrupt { offset: 0, .. })
        ));

        remove_upto(dir.path(), 1).unwrap();
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
    }
}
