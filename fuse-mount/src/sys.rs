//! The few system calls the standard library lacks: unmounting and the process's identity.
//! The crate's only unsafe code; each call is a plain libc function on owned arguments.

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
