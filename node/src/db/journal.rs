//! The change log on disk, so that watchers resume across restarts: `changes.log` beside the
//! database holds the events of the retained window, one JSON line each, appended after the
//! commit they belong to is durable and applied, then a line marking the revision complete
//! (events after the last mark are a revision cut short, and are not trusted).
//!
//! It is not the source of truth and is not synced per commit: the write-ahead log is. A
//! restart keeps the window only if the file reaches exactly the revision the database
//! recovered (after `kill -9` it does: the lines are in the page cache before the next commit).
//! Otherwise (a power cut, a torn or damaged file, a disk that refused a write) the window
//! starts again at the recovered revision, so a resume from before it gets `410` and never a
//! silent gap.
//!
//! The file grows by appending; once it holds twice the window (by events or bytes), it is
//! rewritten from the in-memory log: a thread writes the window as it was then to a temporary
//! file and syncs it, while appends go on to the old file; the next commit after the thread is
//! done appends the events since to the new file and renames it over the old. Only that last
//! step runs under the state lock, so readers and writers never wait for a whole window to be
//! written. The same rewrite (done in place) happens at every start. So the file's size stays
//! within about twice the configured window.

use crate::store::{ChangeLog, Event, EventKind, Version};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The file's name in the data directory.
pub const FILE: &str = "changes.log";
/// The first line's format tag.
const FORMAT: u32 = 1;
/// After a failed write, how long until the file is rewritten from memory again.
const RETRY: Duration = Duration::from_secs(10);

#[derive(Serialize, Deserialize)]
struct Header {
    herd_change_log: u32,
    /// Every event with a revision above this follows.
    floor: u64,
}

/// One line after the header: an event, or (without `t`) a revision reached with no event.
#[derive(Serialize, Deserialize)]
struct Line<'a> {
    r: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    s: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<&'a str>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    k: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ver: Option<String>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    v: Option<std::borrow::Cow<'a, str>>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Writes one line of JSON.
fn write_line(out: &mut impl Write, line: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    out.write_all(b"\n")
}

impl<'a> Line<'a> {
    /// The mark of a revision complete.
    fn mark(revision: u64) -> Line<'a> {
        Line {
            r: revision,
            s: 0,
            t: None,
            k: None,
            ver: None,
            v: None,
        }
    }

    fn of(ev: &'a Event) -> Line<'a> {
        Line {
            r: ev.revision,
            s: ev.seq,
            t: Some(ev.kind.as_str()),
            k: Some((&*ev.key).into()),
            ver: Some(ev.version.to_string()),
            v: ev.value.as_deref().map(Into::into),
        }
    }

    fn event(self) -> Result<Option<Event>, String> {
        let Some(t) = self.t else {
            return Ok(None);
        };
        let kind = match t {
            "put" => EventKind::Put,
            "delete" => EventKind::Delete,
            "expire" => EventKind::Expire,
            other => return Err(format!("unknown event type {other:?}")),
        };
        let version: Version = self
            .ver
            .ok_or("an event without a version")?
            .parse()
            .map_err(|e| format!("{e:?}"))?;
        Ok(Some(Event {
            revision: self.r,
            seq: self.s,
            kind,
            key: self.k.ok_or("an event without a key")?.into(),
            value: self.v.map(Into::into),
            version,
        }))
    }
}

/// The open file, appended to under the state lock.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    /// `None` after a failed write, until a rewrite succeeds.
    out: Option<BufWriter<File>>,
    /// The last revision written (an event's or a mark's).
    last: u64,
    /// The last revision marked complete.
    marked: u64,
    /// Event lines and bytes in the file, to know when to rewrite it.
    lines: usize,
    bytes: u64,
    /// Rewrite once the file holds this many event lines or bytes.
    max_lines: usize,
    max_bytes: u64,
    /// When a write last failed.
    failed: Option<Instant>,
    /// A rewrite under way in its thread.
    rewriting: Option<Rewrite>,
}

/// A rewrite under way: the thread answers the new file, holding the window up to `upto`.
#[derive(Debug)]
struct Rewrite {
    upto: u64,
    thread: Option<JoinHandle<io::Result<BufWriter<File>>>>,
}

impl Drop for Journal {
    /// Waits for a rewrite under way, so that a database opened again in this process never
    /// shares the temporary file with it.
    fn drop(&mut self) {
        if let Some(t) = self.rewriting.as_mut().and_then(|r| r.thread.take()) {
            let _ = t.join();
        }
    }
}

impl Journal {
    /// Reads the window kept in `dir` for a database recovered at `revision` and starts the
    /// file again from it. Never fails: a window that cannot be read or written is lost (and
    /// said so), which only costs resuming watchers a `410`.
    pub fn open(dir: &Path, revision: u64, mut log: ChangeLog) -> (Journal, ChangeLog) {
        let path = dir.join(FILE);
        match read(&path, revision, &mut log) {
            Ok(Some(n)) => tracing::info!(
                events = n,
                oldest_resumable_revision = log.floor(),
                "change log loaded: watchers resume across the restart"
            ),
            Ok(None) => {}
            Err(why) => {
                tracing::warn!(
                    file = %path.display(),
                    "change log not kept across the restart ({why}): watchers resuming from before revision {revision} must watch again"
                );
                // Never read again, even if the rewrite below fails and a later start
                // recovers the revision it happens to end at.
                let _ = fs::remove_file(&path);
            }
        }
        let (max_lines, max_bytes) = log.limits();
        let mut journal = Journal {
            path,
            out: None,
            last: revision,
            marked: revision,
            lines: 0,
            bytes: 0,
            max_lines: max_lines.saturating_mul(2),
            max_bytes: (max_bytes as u64).saturating_mul(2),
            failed: None,
            rewriting: None,
        };
        let _ = fs::remove_file(journal.tmp());
        let window: Vec<Arc<Event>> = log.iter().cloned().collect();
        let written = write_window(&journal.path, log.floor(), &window, revision)
            .and_then(|out| journal.swap(out, &log, revision));
        match written {
            Ok(()) => {}
            Err(e) => journal.fail(&e),
        }
        (journal, log)
    }

    /// Appends an event (buffered until [`Journal::flush`]).
    pub fn append(&mut self, ev: &Event) {
        let Some(out) = self.out.as_mut() else {
            return;
        };
        let written = write_line(out, &Line::of(ev));
        self.lines += 1;
        self.bytes += crate::store::log::event_bytes(ev) as u64;
        self.last = ev.revision;
        if let Err(e) = written {
            self.fail(&e);
        }
    }

    /// The node reached `revision`, every event of it appended: marks it complete. Then hands
    /// the lines to the kernel, and rewrites the file from `log` once it has grown past twice
    /// the window (or to recover from a failed write).
    pub fn flush(&mut self, log: &ChangeLog, revision: u64) {
        if revision > self.marked {
            if let Some(out) = self.out.as_mut() {
                if let Err(e) = write_line(out, &Line::mark(revision)) {
                    self.fail(&e);
                }
            }
            self.last = revision;
            self.marked = revision;
        }
        if let Some(out) = self.out.as_mut() {
            if let Err(e) = out.flush() {
                self.fail(&e);
            }
        }
        if let Some(r) = self.rewriting.as_mut() {
            let Some(thread) = r.thread.take_if(|t| t.is_finished()) else {
                return;
            };
            let upto = r.upto;
            match thread.join() {
                // The window moved past the new file's end while it was written (more than a
                // window of events meanwhile): it would have a gap. The old file is whole;
                // another rewrite starts below.
                Ok(Ok(_)) if log.floor() > upto => {
                    let _ = fs::remove_file(self.tmp());
                    self.rewriting = None;
                }
                Ok(Ok(out)) => {
                    if let Err(e) = self.swap(out, log, revision) {
                        self.rewrite_failed(&e);
                    }
                }
                // The old file is still whole (and appended to, unless that failed too): try
                // again later.
                Ok(Err(e)) => self.rewrite_failed(&e),
                Err(_) => self.rewrite_failed(&io::Error::other("the rewriting thread panicked")),
            }
            if self.rewriting.take().is_some() {
                return;
            }
        }
        let grown = self.lines > self.max_lines || self.bytes > self.max_bytes;
        let due = self.failed.is_none_or(|at| at.elapsed() >= RETRY);
        if (grown || self.out.is_none()) && due {
            self.rewrite(log, revision);
        }
    }

    /// A rewrite failed: the file in use stays; the next attempt waits [`RETRY`].
    fn rewrite_failed(&mut self, e: &io::Error) {
        tracing::warn!(
            file = %self.path.display(),
            "cannot rewrite the change log ({e}); trying again in {}s",
            RETRY.as_secs()
        );
        let _ = fs::remove_file(self.tmp());
        self.failed = Some(Instant::now());
    }

    /// The temporary file a rewrite writes.
    fn tmp(&self) -> PathBuf {
        self.path.with_extension("log.new")
    }

    fn fail(&mut self, e: &io::Error) {
        if self.out.is_some() {
            tracing::warn!(
                file = %self.path.display(),
                "cannot write the change log ({e}); a restart before it is rewritten loses the resumable window"
            );
        }
        self.out = None;
        self.failed = Some(Instant::now());
    }

    /// Starts writing the window held in memory (up to `revision`) to a new file, in a
    /// thread; [`Journal::flush`] swaps it in once written.
    fn rewrite(&mut self, log: &ChangeLog, revision: u64) {
        // The events are shared, not copied: this holds the lock for a few pointers each.
        let window: Vec<Arc<Event>> = log.iter().cloned().collect();
        let (floor, path) = (log.floor(), self.path.clone());
        let spawned = std::thread::Builder::new()
            .name("herd-changes-log".into())
            .spawn(move || write_window(&path, floor, &window, revision));
        match spawned {
            Ok(thread) => {
                self.rewriting = Some(Rewrite {
                    upto: revision,
                    thread: Some(thread),
                })
            }
            Err(e) => self.rewrite_failed(&e),
        }
    }

    /// Finishes a rewrite: appends to `out` (the window up to the rewrite's revision, or to
    /// `revision` at a start) what was logged since, marks `revision`, and renames the new
    /// file over the old.
    fn swap(&mut self, mut out: BufWriter<File>, log: &ChangeLog, revision: u64) -> io::Result<()> {
        let upto = self.rewriting.as_ref().map_or(revision, |r| r.upto);
        if revision > upto {
            for ev in log.iter().filter(|ev| ev.revision > upto) {
                write_line(&mut out, &Line::of(ev))?;
            }
            write_line(&mut out, &Line::mark(revision))?;
        }
        out.flush()?;
        fs::rename(self.tmp(), &self.path)?;
        self.out = Some(out);
        self.failed = None;
        self.lines = log.len();
        self.bytes = log.bytes() as u64;
        self.last = revision;
        self.marked = revision;
        Ok(())
    }
}

/// Writes the events of `window` (above `floor`, ending at `revision`) to the temporary file
/// beside `path`, synced, and answers it open for appending.
fn write_window(
    path: &Path,
    floor: u64,
    window: &[Arc<Event>],
    revision: u64,
) -> io::Result<BufWriter<File>> {
    let tmp = path.with_extension("log.new");
    let result = (|| {
        let mut out = BufWriter::with_capacity(1 << 16, File::create(&tmp)?);
        write_line(
            &mut out,
            &Header {
                herd_change_log: FORMAT,
                floor,
            },
        )?;
        for ev in window {
            write_line(&mut out, &Line::of(ev))?;
        }
        write_line(&mut out, &Line::mark(revision))?;
        out.flush()?;
        // Synced before the rename so that a power cut leaves the old file or the whole new
        // one; the rename itself need not be durable (the file is never trusted beyond what
        // its marks prove, and a lost rename only costs the window).
        out.get_ref().sync_data()?;
        Ok(out)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Loads the window in `path` into `log` (empty, starting at `revision`) if the file reaches
/// exactly `revision`. `Ok(None)`: no file (a new node, or one from before this file existed).
fn read(path: &Path, revision: u64, log: &mut ChangeLog) -> Result<Option<usize>, String> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut lines = BufReader::with_capacity(1 << 16, file).lines();
    let header: Header = match lines.next() {
        Some(Ok(line)) => serde_json::from_str(&line).map_err(|e| format!("bad header: {e}"))?,
        Some(Err(e)) => return Err(e.to_string()),
        None => return Err("empty file".into()),
    };
    if header.herd_change_log != FORMAT {
        return Err(format!("unknown format {}", header.herd_change_log));
    }
    if header.floor > revision {
        return Err(format!(
            "it starts after revision {}, beyond the database's {revision}",
            header.floor
        ));
    }
    let mut events = Vec::new();
    let mut last = header.floor;
    // The last revision marked complete, and how many events precede its mark.
    let (mut marked, mut complete) = (header.floor, 0);
    for (i, line) in lines.enumerate() {
        // A torn or damaged line ends what can be trusted; the check below decides.
        let Ok(line) = line else { break };
        let Ok(parsed) = serde_json::from_str::<Line<'_>>(&line) else {
            tracing::debug!(
                line = i + 2,
                "change log line unreadable; reading stops there"
            );
            break;
        };
        if parsed.r < last {
            return Err(format!("revision {} after {last}", parsed.r));
        }
        last = parsed.r;
        let r = parsed.r;
        match parsed.event() {
            Ok(Some(ev)) => events.push(ev),
            Ok(None) => (marked, complete) = (r, events.len()),
            Err(why) => return Err(why),
        }
    }
    // Events after the last mark belong to a revision whose mark never made it: cut short.
    events.truncate(complete);
    let last = marked;
    if last != revision {
        return Err(format!(
            "it ends at revision {last} but the database recovered revision {revision} (a power cut, or a disk that refused a write)"
        ));
    }
    let n = events.len();
    *log = log.restarted(header.floor);
    for ev in events {
        if ev.revision > header.floor {
            log.push(Arc::new(ev));
        }
    }
    Ok(Some(n))
}
