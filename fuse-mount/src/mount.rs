//! Mounting and unmounting: clears a stale mount left by a crash, starts the FUSE session
//! thread and the invalidation thread, subscribes to the store's changes, and stops all of it
//! again. Knows nothing of what the filesystem does.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use std::os::unix::fs::MetadataExt;

use fuser::{MountOption, Session, SessionUnmounter};

use crate::backend::{Backend, Change, ChangeSink};
use crate::fs::Fs;
use crate::invalidation::{self, Job};
use crate::kernel::Adapter;
use crate::replay::{Echo, Replayer};
use crate::sys;
use crate::table::{Ino, Table};

#[cfg(test)]
mod tests;

/// How long `unmount` waits for the session to end before detaching a busy mount lazily.
const SESSION_END: Duration = Duration::from_secs(5);

/// How a mount is set up.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Let users other than the mounting one use the mount (`allow_other`; for a non-root
    /// mounter it needs `user_allow_other` in `/etc/fuse.conf`). Default: false.
    pub allow_other: bool,
    /// The name shown as the mount's source in `mount` and `df`. Default: `herd`.
    pub fs_name: String,
    /// How long the kernel may cache names and attributes. Changes are pushed to the kernel as
    /// they happen, so this only bounds staleness if a notification is lost. Default: 60 s.
    pub ttl: Duration,
    /// A read-only view: every change through the mount fails with `EROFS` (the mount itself
    /// shows as `rw` in `mount`: the daemon refuses each change), and the kernel
    /// serves `open`, `read` and `close` of unchanged keys from its caches without asking this
    /// process (the daemon answers `open` and `flush` with `ENOSYS`, which the kernel remembers),
    /// so reads cost about what they cost on a local disk. Changes made elsewhere still show
    /// in the next read. Default: false.
    pub read_only: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: false,
            fs_name: "herd".to_owned(),
            ttl: Duration::from_secs(60),
            read_only: false,
        }
    }
}

/// A live mount; unmounted by [`Mount::unmount`] or on drop.
pub struct Mount {
    /// The mount point.
    dir: PathBuf,
    /// The device number of the mounted filesystem (tells whether `dir` is still ours).
    dev: u64,
    /// Unmounts through `fuser` (plain `umount`, or `fusermount3` when not root).
    unmounter: SessionUnmounter,
    /// The thread running the FUSE session loop; `None` once stopped.
    session: Option<JoinHandle<io::Result<()>>>,
    /// Signalled when the session thread ends.
    session_done: Receiver<()>,
    /// The thread sending cache invalidations.
    invalidator: Option<JoinHandle<()>>,
    /// Work for the invalidation thread (to stop it).
    jobs: Sender<Job>,
    /// The replay, told to stop first when unmounting.
    echo: Arc<Echo>,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount").field("dir", &self.dir).finish()
    }
}

/// Mounts `backend` at `dir`; a stale mount left by a crash at `dir` ("Transport endpoint is
/// not connected") is detected and lazily unmounted first. Returns when the mount is live.
pub fn mount(backend: Arc<dyn Backend>, dir: &Path, opts: MountOptions) -> io::Result<Mount> {
    clear_stale(dir)?;
    // `*.json` keys are files whatever they hold (see `documents`).
    let backend: Arc<dyn Backend> = Arc::new(crate::documents::Documents(backend));
    let at = std::path::absolute(dir)?;
    let (uid, gid) = sys::identity();
    let table = Arc::new(Mutex::new(Table::new()));
    let (jobs, job_rx) = mpsc::channel();
    let echo = Arc::new(Echo::default());
    let fs = Fs::new(
        Arc::clone(&backend),
        Arc::clone(&table),
        jobs.clone(),
        Arc::clone(&echo),
        uid,
        gid,
    );
    let mut options = vec![
        MountOption::FSName(opts.fs_name.clone()),
        MountOption::Subtype("herd".to_owned()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        // Also when read-only: the daemon refuses changes itself, so that the replay can
        // raise inotify events (see `kernel::Adapter::read_only`).
        MountOption::RW,
    ];
    if opts.allow_other {
        options.push(MountOption::AllowOther);
    }
    let mut session = Session::new(Adapter::new(fs, opts.ttl, opts.read_only), dir, &options)?;
    let notifier = session.notifier();
    let unmounter = session.unmount_callable();
    let replayer = Replayer::new(&at, Arc::clone(&echo));
    let invalidator = match invalidation::spawn(
        table,
        Arc::clone(&backend),
        Notifier(notifier),
        job_rx,
        Some(replayer),
    ) {
        Ok(handle) => handle,
        Err(e) => {
            session.unmount();
            return Err(e);
        }
    };
    let (done_tx, session_done) = mpsc::channel();
    let session_echo = Arc::clone(&echo);
    let spawned = thread::Builder::new()
        .name("herd-fuse".to_owned())
        .spawn(move || {
            let result = session.run();
            // Unmounted (perhaps from outside): nothing answers the replay any more.
            session_echo.stop();
            drop(session); // runs `destroy` and releases the device before we say we are done
            let _ = done_tx.send(());
            result
        });
    let mut mount = Mount {
        dir: dir.to_path_buf(),
        dev: 0,
        unmounter,
        session: None,
        session_done,
        invalidator: Some(invalidator),
        jobs: jobs.clone(),
        echo,
    };
    match spawned {
        Ok(handle) => mount.session = Some(handle),
        Err(e) => {
            let _ = mount.shutdown();
            return Err(e);
        }
    }
    let live = jobs.clone();
    let sink: ChangeSink = Arc::new(move |change: Change| {
        // Only queues: the sink may run inside `apply` on the request thread.
        let _ = jobs.send(Job::Change(change));
    });
    backend.subscribe(sink);
    // The first request waits for the session's INIT: when it answers, the mount is live.
    match std::fs::metadata(dir) {
        Ok(meta) => {
            mount.dev = meta.dev();
            // The replay may start; it compares whatever the kernel came to hold meanwhile.
            mount.echo.live(meta.dev());
            let _ = live.send(Job::Change(Change::All));
        }
        Err(e) => {
            let _ = mount.shutdown();
            let message = format!("the new mount at {} does not answer: {e}", dir.display());
            return Err(io::Error::new(e.kind(), message));
        }
    }
    tracing::info!(dir = %dir.display(), "mounted");
    Ok(mount)
}

impl Mount {
    /// The mount point.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Unmount and wait for the session to end. A busy mount (open files, a shell inside) is
    /// detached lazily: it disappears from the tree at once and the session ends when the last
    /// open file closes.
    pub fn unmount(mut self) -> io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<()> {
        let mut result = Ok(());
        // The replay's files on the mount would keep it busy: stop it first.
        self.echo.stop();
        let stopped = self.invalidator.take().map(|invalidator| {
            let _ = self.jobs.send(Job::Stop);
            if invalidator.join().is_err() {
                tracing::warn!("invalidation thread panicked");
            }
        });
        if let Some(session) = self.session.take() {
            // fuser's own unmount first, while the session still answers: it knows whether it
            // has to go through fusermount3. Still mounted afterwards means busy: detach.
            let _ = self.unmounter.unmount();
            let ours = |m: std::fs::Metadata| self.dev != 0 && m.dev() == self.dev;
            if std::fs::metadata(&self.dir).is_ok_and(ours) {
                result = detach(&self.dir);
            }
            match self.session_done.recv_timeout(SESSION_END) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => match session.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!("fuse session ended with an error: {e}"),
                    Err(_) => tracing::warn!("fuse session thread panicked"),
                },
                Err(RecvTimeoutError::Timeout) => {
                    // Still serving files opened before the lazy unmount; it ends by itself
                    // when they close. Joining here could wait forever.
                    tracing::warn!(dir = %self.dir.display(), "mount still busy; the session ends when its last file closes");
                }
            }
        }
        if stopped.is_none() {
            return result; // stopped before
        }
        if result.is_ok() {
            tracing::info!(dir = %self.dir.display(), "unmounted");
        }
        result
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(dir = %self.dir.display(), "unmount failed: {e}");
        }
    }
}

/// Detach `dir` lazily (through `fusermount3` when not root).
fn detach(dir: &Path) -> io::Result<()> {
    match sys::unmount(dir, true) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => fusermount_unmount(dir),
        // Already gone (someone ran `fusermount3 -u`): the session ends by itself.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        other => other,
    }
}

fn fusermount_unmount(dir: &Path) -> io::Result<()> {
    let status = std::process::Command::new("fusermount3")
        .args([
            OsStr::new("-u"),
            OsStr::new("-z"),
            OsStr::new("--"),
            dir.as_os_str(),
        ])
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "fusermount3 -u {} failed: {status}",
            dir.display()
        )))
    }
}

/// A mount whose daemon died answers every request with `ENOTCONN`: detach it. (`stat` alone
/// may be answered from the kernel's cache; opening the directory always asks the daemon.)
fn clear_stale(dir: &Path) -> io::Result<()> {
    match std::fs::metadata(dir).and_then(|_| std::fs::read_dir(dir)) {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOTCONN) | Some(libc::ECONNABORTED)
            ) =>
        {
            tracing::warn!(dir = %dir.display(), "unmounting a stale mount left by a crash");
            detach(dir)
        }
        _ => Ok(()),
    }
}

/// The FUSE notifier as the invalidation thread's kernel.
struct Notifier(fuser::Notifier);

impl invalidation::Kernel for Notifier {
    fn inval_inode(&self, ino: Ino) -> io::Result<()> {
        self.0.inval_inode(ino, 0, 0)
    }

    fn inval_entry(&self, parent: Ino, name: &str) -> io::Result<()> {
        self.0.inval_entry(parent, OsStr::new(name))
    }
}
