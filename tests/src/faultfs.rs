//! `faultfs`: a FUSE file system for disk-fault and power-loss tests, as LazyFS is for etcd's.
//! It passes through to a backing directory, keeps unsynced data in memory and, on command
//! over a Unix socket, fails writes or syncs with `EIO` or cuts the power (see [`fs`] for the
//! model). The device-mapper `error` and `flakey` targets would do the failing on a real block
//! device, but need a kernel with device-mapper, which this one may not have.
//!
//! - [`serve`]: the `faultfs` binary's body: mounts, then answers commands until `quit`.
//! - [`FaultMount`]: a test's handle on a `faultfs` child process.
//!
//! Commands, one per line, each answered with one line (`ok ...` or `error: ...`):
//! `normal`, `fail-writes [NAME]`, `fail-syncs [NAME]`, `flakey UP_MS DOWN_MS [NAME]` (with
//! NAME, only files of that name fail), `cut` (answers `ok KEPT LOST`, the pages written back
//! and dropped), `dirty` (`ok PAGES FILES`), `quit`.

pub mod disk;
pub mod fs;

use disk::{Mode, Shared};
use fs::FaultFs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Mounts `backing` at `mnt` and answers commands on `socket` until `quit`; unmounts on return.
pub fn serve(
    backing: &Path,
    mnt: &Path,
    socket: &Path,
    no_direct: bool,
    seed: u64,
) -> anyhow::Result<()> {
    let shared = Shared::new(seed);
    let fs = FaultFs::new(backing, no_direct, shared.clone())?;
    let options = [
        fuser::MountOption::FSName("faultfs".into()),
        fuser::MountOption::AutoUnmount,
        fuser::MountOption::AllowOther,
    ];
    let session = fuser::spawn_mount2(fs, mnt, &options)?;
    let _ = std::fs::remove_file(socket);
    // Bound only once mounted: the socket's existence tells the test the mount is ready.
    let listener = UnixListener::bind(socket)?;
    'serve: for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let Ok(mut out) = conn.try_clone() else {
            continue;
        };
        for line in BufReader::new(conn).lines() {
            let Ok(line) = line else { break };
            let answer = command(&shared, line.trim());
            // A controller that went away before the answer only misses the answer.
            let _ = writeln!(out, "{answer}");
            if line.trim() == "quit" {
                break 'serve;
            }
        }
    }
    drop(session);
    Ok(())
}

fn command(shared: &Arc<Shared>, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let ms = |s: &str| s.parse::<u64>().map(Duration::from_millis);
    match words.as_slice() {
        ["normal"] => shared.set_mode(Mode::Normal, None),
        ["fail-writes", only @ ..] if only.len() < 2 => {
            shared.set_mode(Mode::FailWrites, only.first().copied())
        }
        ["fail-syncs", only @ ..] if only.len() < 2 => {
            shared.set_mode(Mode::FailSyncs, only.first().copied())
        }
        ["flakey", up, down, only @ ..] if only.len() < 2 => match (ms(up), ms(down)) {
            (Ok(up), Ok(down)) => shared.set_mode(
                Mode::Flakey {
                    up,
                    down,
                    since: Instant::now(),
                },
                only.first().copied(),
            ),
            _ => return format!("error: bad durations in {line:?}"),
        },
        ["cut"] => {
            return match shared.cut() {
                Ok((kept, lost)) => format!("ok {kept} {lost}"),
                Err(e) => format!("error: writing back pages: {e}"),
            }
        }
        ["dirty"] => {
            let (pages, files) = shared.dirty();
            return format!("ok {pages} {files}");
        }
        ["quit"] => {}
        _ => return format!("error: unknown command {line:?}"),
    }
    "ok".into()
}

/// A `faultfs` child process with its file system mounted; unmounted and stopped when dropped.
pub struct FaultMount {
    child: Child,
    mnt: PathBuf,
    socket: PathBuf,
}

impl FaultMount {
    /// Mounts `backing` at `mnt` (both directories). `None` where FUSE cannot be mounted (no
    /// `/dev/fuse`, not root): the caller skips, unless `HERD_TEST_STRICT` is set.
    pub fn mount(backing: &Path, mnt: &Path, no_direct: bool, seed: u64) -> Option<FaultMount> {
        let bin = crate::herd_bin().with_file_name("faultfs");
        assert!(
            bin.exists(),
            "{} is missing: build the tests crate's binaries",
            bin.display()
        );
        let socket = mnt.with_extension("sock");
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new(bin);
        cmd.arg(backing).arg(mnt).arg(&socket);
        cmd.args(["--seed", &seed.to_string()]);
        if no_direct {
            cmd.arg("--no-direct");
        }
        let mut child = cmd.stdin(Stdio::null()).spawn().expect("faultfs starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                crate::skip(&format!(
                    "faultfs could not mount ({status}): FUSE needs /dev/fuse and root"
                ));
                return None;
            }
            assert!(Instant::now() < deadline, "faultfs did not mount in 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(FaultMount {
            child,
            mnt: mnt.to_path_buf(),
            socket,
        })
    }

    /// Sends one command and returns its answer; panics on an `error:` answer.
    pub fn command(&self, cmd: &str) -> String {
        let mut s = UnixStream::connect(&self.socket).expect("faultfs answers");
        writeln!(s, "{cmd}").unwrap();
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer).unwrap();
        assert!(answer.starts_with("ok"), "faultfs {cmd}: {answer}");
        answer.trim().to_owned()
    }

    /// Cuts the power: returns the pages written back and dropped.
    pub fn cut(&self) -> (usize, usize) {
        let answer = self.command("cut");
        let n: Vec<usize> = answer
            .split_whitespace()
            .skip(1)
            .map(|w| w.parse().unwrap())
            .collect();
        (n[0], n[1])
    }
}

impl Drop for FaultMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}
