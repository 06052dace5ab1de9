//! The few system calls the standard library lacks: unmounting, the process's identity and a
//! thread's id;
//! and what `/proc` says of a process that closes a file. The crate's only unsafe code; each
//! call is a plain libc function on owned arguments.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `umount2(dir, 0)`, or with `MNT_DETACH` when `lazy`.
pub(crate) fn unmount(dir: &Path, lazy: bool) -> io::Result<()> {
    let dir = CString::new(dir.as_os_str().as_bytes())?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: `dir` is a NUL-terminated string that outlives the call.
    let result = unsafe { libc::umount2(dir.as_ptr(), flags) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The effective user and group of this process.
pub(crate) fn identity() -> (u32, u32) {
    // SAFETY: `geteuid` and `getegid` take no arguments and cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// The calling thread's id: the `pid` FUSE reports for the requests it causes.
pub(crate) fn thread_id() -> u32 {
    // SAFETY: `gettid` takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    u32::try_from(tid).unwrap_or(0)
}

/// `PF_EXITING` in a task's flags (`/proc/PID/stat`, field 9): the task is in `do_exit`.
const PF_EXITING: u64 = 0x4;

/// True if the task `pid` is exiting because a signal killed it: `flush` requests it sends
/// then come from the kernel closing its files, not from the program. A task that exits by
/// itself (`exit`, `_exit`) has an exit code with no signal, and one that is not exiting, or
/// cannot be read, is taken as closing the file itself.
pub(crate) fn killed(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| killed_by_stat(&stat))
}

/// [`killed`] from the text of `/proc/PID/stat`.
fn killed_by_stat(stat: &str) -> bool {
    // The command name (field 2) is in parentheses and may hold spaces and parentheses: the
    // fields after it start after the last `)`, with the state (field 3).
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let (Some(flags), Some(exit_code)) = (field(9), field(52)) else {
        return false;
    };
    flags & PF_EXITING != 0 && exit_code & 0x7f != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(comm: &str, flags: u64, exit_code: u64) -> String {
        let mut fields = vec!["0".to_string(); 50];
        fields[0] = "S".into(); // field 3
        fields[6] = flags.to_string(); // field 9
        fields[49] = exit_code.to_string(); // field 52
        format!("1234 ({comm}) {}", fields.join(" "))
    }

    #[test]
    fn a_task_killed_by_a_signal_is_told_from_one_that_exits_or_lives() {
        assert!(killed_by_stat(&stat("cp", PF_EXITING | 0x40, 9)));
        assert!(killed_by_stat(&stat("a) (b", PF_EXITING, 15 | 0x80)));
        assert!(!killed_by_stat(&stat("cp", PF_EXITING, 0)));
        assert!(!killed_by_stat(&stat("cp", PF_EXITING, 1 << 8)));
        assert!(!killed_by_stat(&stat("cp", 0x40, 9)));
        assert!(!killed_by_stat("garbage"));
        // This process is alive, so it closes its files itself.
        assert!(!killed(std::process::id()));
    }
}
